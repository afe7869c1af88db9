// The CUDA runtime as the engine sees it: device discovery, per-device streams and
// events, the caching allocator and pinned host memory. Every function here exists
// in every build; a build without CUDA links engine/cuda/no_cuda.cpp, where they
// report "no CUDA device" or throw "built without CUDA".
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/out_of_memory.h"
#include "kernels/cuda/stream.h"
#include "kernels/cuda/tf32.h"

namespace tandem::cuda {

/// Number of usable CUDA devices: 0 when the build has no CUDA, there is no driver
/// (cudaErrorInsufficientDriver on a GPU-less machine) or no GPU. Never throws.
int device_count();
inline bool is_available() { return device_count() > 0; }
/// Why no CUDA device can be used (the failing call and its error), empty when one can.
std::string unavailable_reason();
/// Throws std::invalid_argument naming `what` unless device `index` exists.
void check_device(int index, const char* what);
/// The device's PCI bus id ("0000:3b:00.0"), how NVML and nvidia-smi name it.
std::string pci_bus_id(int index);

int current_device();
void set_device(int index);

/// Lets f32 matrix products and convolutions on the GPU use TF32 tensor cores (inputs
/// rounded to a 10-bit mantissa, f32 accumulation), as PyTorch's
/// torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 together.
/// Off by default; process-wide; takes effect at the next call; no effect on the CPU.
inline void set_allow_tf32(bool on) { kernels::cuda::tf32_allowed().store(on); }
inline bool allow_tf32() { return kernels::cuda::tf32_allowed().load(); }

/// Sets the TF32 switch for its lifetime and restores the previous setting.
class AllowTf32Guard {
 public:
  explicit AllowTf32Guard(bool on) : previous_(allow_tf32()) { set_allow_tf32(on); }
  ~AllowTf32Guard() { set_allow_tf32(previous_); }
  AllowTf32Guard(const AllowTf32Guard&) = delete;
  AllowTf32Guard& operator=(const AllowTf32Guard&) = delete;

 private:
  bool previous_;
};

/// Makes `index` the current device for the life of the guard.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
};

/// A CUDA stream on a device. Not owning: streams come from per-device pools and live
/// for the whole process, as in PyTorch, so handles can be copied freely.
class Stream {
 public:
  Stream() = default;
  Stream(int device, cudaStream_t handle) : device_(device), handle_(handle) {}
  int device() const { return device_; }
  cudaStream_t handle() const { return handle_; }
  /// Blocks the host until all work queued on the stream is done.
  void synchronize() const;
  /// True if all queued work is done.
  bool query() const;
  /// True while the stream is being captured into a CUDA graph: work queued on it is
  /// recorded, not run, and nothing may wait for it on the host.
  bool is_capturing() const;
  friend bool operator==(const Stream& a, const Stream& b) { return a.handle_ == b.handle_ && a.device_ == b.device_; }

 private:
  int device_ = -1;
  cudaStream_t handle_ = nullptr;
};

/// The device's compute stream for this thread (a non-blocking stream Tandem creates,
/// never the legacy default stream, unless changed with set_current_stream).
Stream current_stream(int device);
/// The device's default compute stream (the one current_stream starts as).
Stream default_stream(int device);
/// A stream from the device's round-robin pool of non-blocking streams (for
/// communication, copies, replicas). `high_priority` picks the high-priority pool.
Stream pool_stream(int device, bool high_priority = false);
void set_current_stream(Stream stream);

/// Sets the current stream of its device for the life of the guard.
class StreamGuard {
 public:
  explicit StreamGuard(Stream stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream previous_;
};

/// A CUDA event (created lazily on first record). Moving transfers ownership.
class Event {
 public:
  explicit Event(bool enable_timing = false) : timing_(enable_timing) {}
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  /// Records the event at the current end of `stream`.
  void record(Stream stream);
  /// Makes `stream` wait (on the device, not the host) until the event has happened.
  void wait(Stream stream) const;
  void synchronize() const;
  bool query() const;
  /// Milliseconds between `start` and this event; both need enable_timing.
  float elapsed_ms(const Event& start) const;
  bool recorded() const { return handle_ != nullptr; }

 private:
  bool timing_;
  int device_ = -1;
  cudaEvent_t handle_ = nullptr;
};

/// Blocks until all work on the device is done. For tests and benchmarks, not hot paths.
void synchronize(int device);

// ---- caching allocator -----------------------------------------------------------

/// Statistics of the caching allocator for one device (bytes unless named otherwise).
struct MemoryStats {
  int64_t allocated_bytes = 0;       // held by live tensors
  int64_t reserved_bytes = 0;        // obtained from cudaMalloc, cached or not
  int64_t peak_allocated_bytes = 0;  // since start or reset_peak_memory_stats
  int64_t peak_reserved_bytes = 0;
  int64_t num_device_allocs = 0;     // cudaMalloc calls
  int64_t num_device_frees = 0;      // cudaFree calls
  int64_t num_alloc_requests = 0;    // allocations served, cached or not
  int64_t num_ooms = 0;
};
MemoryStats memory_stats(int device);
void reset_peak_memory_stats(int device);

/// A device allocation the caching allocator could not satisfy even after returning
/// its cache to the driver. The message states the request and the allocator's
/// allocated and reserved bytes; the trainer adds the per-device batch size. Defined
/// with the kernels, which catch it (kernels/cuda/out_of_memory.h).
using OutOfMemoryError = kernels::cuda::OutOfMemoryError;
/// Returns every cached, unused block to the driver.
void empty_cache();

/// Allocates `nbytes` on `device` for use on `stream` (the device's current stream
/// when null). Memory is reused only on that stream unless record_stream says otherwise.
void* device_alloc(int device, size_t nbytes, cudaStream_t stream = nullptr);
void device_free(void* ptr);
/// Tells the allocator `ptr`'s block is also used on `stream`: on free it is not
/// reused until that stream's work, as of the free, has finished.
void record_stream(void* ptr, Stream stream);

/// Page-locked host memory, cached the same way (freed blocks wait for the events
/// of the copies that used them before reuse).
void* pinned_alloc(size_t nbytes);
void pinned_free(void* ptr);
/// Records that pinned `ptr` is read by a copy queued on `stream`.
void pinned_record_stream(void* ptr, Stream stream);

/// cudaMemcpyAsync with cudaMemcpyDefault on `stream`.
void memcpy_async(void* dst, const void* src, size_t nbytes, Stream stream);

// ---- private pools of CUDA graphs (engine/cuda/graph.h) ------------------------------

/// A memory pool private to CUDA graphs (0: none, the shared cache).
using MempoolId = uint64_t;
/// A new pool id, for graphs that share one pool (Graph::capture_begin), as
/// torch.cuda.graph_pool_handle().
MempoolId graph_pool_handle();
/// The caching allocator of `device` routes allocations on streams taking part in
/// capture `capture_id` to `pool` (CachingAllocator::begin_allocate_to_pool); for Graph.
void begin_allocate_to_pool(int device, MempoolId pool, uint64_t capture_id);
void end_allocate_to_pool(int device, MempoolId pool);
void release_pool(int device, MempoolId pool);

}  // namespace tandem::cuda
