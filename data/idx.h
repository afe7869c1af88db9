// Reader for the IDX format of (Fashion-)MNIST: a big-endian header (magic
// 0x0000 08 NN, then NN u32 dimensions) followed by the u8 elements, gzipped or raw.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tandem::data {

/// The contents of an IDX file: its dimensions and its u8 elements in row-major order.
struct IdxArray {
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

/// Reads an IDX file of u8 elements (type byte 0x08), gzipped or raw. Throws
/// std::runtime_error naming the file when it cannot be opened, the magic or rank
/// is wrong, a dimension is 0, or it holds fewer or more bytes than the header promises.
IdxArray read_idx(const std::string& path);

}  // namespace tandem::data
