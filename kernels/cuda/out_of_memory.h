// The error a device allocation throws when the caching allocator cannot satisfy it
// even after returning its cache to the driver. Here, below the engine, so that kernels
// that can do with less memory (cuDNN's algorithm search) can catch exactly this and
// nothing else. Includable without the CUDA toolkit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace tandem::kernels::cuda {

/// The message states the request and the allocator's allocated and reserved bytes;
/// the trainer adds the per-device batch size (tandem::cuda::OutOfMemoryError).
class OutOfMemoryError : public std::runtime_error {
 public:
  OutOfMemoryError(const std::string& message, size_t requested_bytes, int64_t allocated_bytes, int64_t reserved_bytes)
      : std::runtime_error(message),
        requested_bytes(requested_bytes),
        allocated_bytes(allocated_bytes),
        reserved_bytes(reserved_bytes) {}
  size_t requested_bytes;
  int64_t allocated_bytes;
  int64_t reserved_bytes;
};

}  // namespace tandem::kernels::cuda
