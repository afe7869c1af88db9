// Reading and writing the safetensors format (an 8-byte little-endian header length,
// a JSON header mapping names to dtype, shape and data offsets, then the raw bytes),
// so weights move between Tandem and PyTorch's safetensors loader.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "train/checkpoint.h"

namespace tandem::train {

/// Named tensors and the string-to-string "__metadata__" of a safetensors file.
struct SafetensorsFile {
  NamedTensors tensors;
  std::map<std::string, std::string> metadata;
};

/// Writes `tensors` (any device) in file order, back to back, with the header padded
/// to a multiple of 8 bytes. Atomic like save_checkpoint.
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Reads a safetensors file with every offset checked against the file; tensors come
/// back in offset order on the CPU. Dtypes other than F64, F32, F16, BF16, I64, I32,
/// U8 and BOOL are an error naming the tensor.
SafetensorsFile load_safetensors(const std::filesystem::path& path);

}  // namespace tandem::train
