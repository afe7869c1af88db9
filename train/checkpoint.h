// Tandem's checkpoint file (docs/CHECKPOINT.md): magic and version, a JSON header with
// the tensor table and free-form metadata, then 64-byte aligned raw little-endian
// tensor data, each tensor with its CRC32. Data only: reading never executes anything.
// Saves are atomic (temporary file, fsync, rename, directory fsync); loads check every
// offset against the file size and every CRC, naming the file and the tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"

namespace tandem::train {

/// The first 8 bytes of every checkpoint file.
inline constexpr char kCheckpointMagic[8] = {'T', 'A', 'N', 'D', 'E', 'M', 'C', 'K'};
/// The format version this build writes and reads.
inline constexpr uint32_t kCheckpointVersion = 1;
/// Alignment of the data section and of every tensor in it.
inline constexpr uint64_t kCheckpointAlignment = 64;

/// Named tensors in file order.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

/// One row of the tensor table.
struct CheckpointEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t offset = 0;  // from the start of the file
  uint64_t length = 0;  // bytes
  uint32_t crc32 = 0;
};

/// What the header says, checked against the file's size.
struct CheckpointHeader {
  uint32_t version = kCheckpointVersion;
  uint64_t file_size = 0;
  std::vector<CheckpointEntry> tensors;
  nlohmann::json metadata;
};

/// A loaded checkpoint: CPU tensors in file order and the metadata.
struct Checkpoint {
  NamedTensors tensors;
  nlohmann::json metadata;
  /// The tensor named `name`; throws std::out_of_range naming it when absent.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
};

/// Writes `tensors` (any device; copied to the host) and `metadata` to `path`
/// atomically: a crash leaves either the old file or the new one. Names must be
/// unique and non-empty. Throws std::runtime_error naming the file on I/O failure.
void save_checkpoint(const std::filesystem::path& path, const NamedTensors& tensors,
                     const nlohmann::json& metadata = nlohmann::json::object());

/// Reads and checks the header (magic, version, header CRC, every tensor's dtype,
/// shape, length and bounds) without reading tensor data.
CheckpointHeader read_checkpoint_header(const std::filesystem::path& path);

/// Reads the whole file, verifying everything read_checkpoint_header checks plus
/// every tensor's CRC32. Tensors come back on the CPU.
Checkpoint load_checkpoint(const std::filesystem::path& path);

/// All of load_checkpoint's checks without keeping the tensors; throws the first failure.
void verify_checkpoint(const std::filesystem::path& path);

/// CRC-32 (zlib's polynomial) of `n` bytes, continuing from `crc`.
uint32_t crc32_bytes(const void* data, uint64_t n, uint32_t crc = 0);

}  // namespace tandem::train
