// Storage: one allocation of raw bytes on a device, shared by the tensors that view it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "engine/device.h"

namespace tandem {

class Storage {
 public:
  using Deleter = std::function<void(void*)>;

  /// Allocates `nbytes` on `device` (64-byte aligned on the host; from the caching
  /// allocator on the device's current stream for CUDA). `pinned` asks for
  /// page-locked host memory, which makes host-to-device copies asynchronous; it
  /// falls back to ordinary memory in a build or on a machine without CUDA.
  Storage(size_t nbytes, Device device, bool pinned = false);
  /// Adopts memory owned elsewhere; `deleter` runs when the last tensor lets go.
  Storage(void* data, size_t nbytes, Device device, Deleter deleter);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  bool pinned() const { return pinned_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  bool pinned_ = false;
  Deleter deleter_;
};

/// Host allocator statistics: bytes currently held by tensors and the peak since
/// start; allocations served, and how many of them needed new memory from the system
/// (the rest reused a cached block, see host_empty_cache).
struct HostMemoryStats {
  int64_t allocated_bytes = 0;
  int64_t peak_allocated_bytes = 0;
  int64_t num_allocs = 0;
  int64_t num_system_allocs = 0;
  int64_t cached_bytes = 0;
};
HostMemoryStats host_memory_stats();
/// Restarts the host peak from the bytes allocated now (as cuda::reset_peak_memory_stats).
void reset_host_peak_memory_stats();
/// Returns the host blocks kept for reuse to the system.
void host_empty_cache();

/// When on, every new Storage is filled with 0xFF bytes (NaN for floating types)
/// before use, so a kernel that leaves part of its output unwritten is caught by
/// tests instead of passing on stale or zeroed memory. Off by default.
void set_poison_allocations(bool on);
bool poison_allocations();

/// "20.00 MiB": a byte count for people (errors, reports).
std::string format_bytes(int64_t bytes);

}  // namespace tandem
