// engine/cuda/runtime.h for CUDA builds: device discovery, per-device streams and
// events, and the process-wide caching allocators (one per device, one for pinned
// host memory) wired to the CUDA runtime through AllocatorBackend.
#include "engine/cuda/runtime.h"

#include <array>
#include <cstdlib>
#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include <cuda_runtime.h>

#include "engine/cuda/caching_allocator.h"
#include "kernels/cuda/check.h"

namespace tandem::cuda {

namespace {

using kernels::cuda::throw_cuda_error;

struct DeviceInfo {
  int count = 0;
  std::string reason;  // why count is 0
};

// Asked once: the answer does not change during a run, and on a machine without a
// driver every call would fail the same way (error 35, cudaErrorInsufficientDriver).
const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    DeviceInfo result;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // keep the failure from surfacing in a later check
      result.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err) + " (" +
                      std::to_string(static_cast<int>(err)) + ")";
    } else if (count == 0) {
      result.reason = "cudaGetDeviceCount found no CUDA device";
    } else {
      result.count = count;
    }
    return result;
  }();
  return info;
}

/// Throws std::invalid_argument naming `what` when no device can be used at all.
void require_cuda(const char* what) {
  if (device_count() == 0)
    throw std::invalid_argument(std::string("[") + what + "] expected a CUDA device, but none can be used: " +
                                unavailable_reason());
}

/// True for cudaSuccess, false for cudaErrorNotReady, throws for anything else.
bool ready(cudaError_t err, const char* call) {
  if (err == cudaSuccess) return true;
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();  // "not ready" is an answer, not an error to report later
    return false;
  }
  throw_cuda_error(call, cudaGetErrorString(err), static_cast<int>(err), __FILE__, __LINE__);
}

// Events of the allocators: created without timing (cheaper to record and query).
class EventBackend : public AllocatorBackend {
 public:
  cudaEvent_t event_create(int device) override {
    DeviceGuard guard(device);
    cudaEvent_t event = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    return event;
  }
  void event_record(cudaEvent_t event, Stream stream) override {
    DeviceGuard guard(stream.device());
    CUDA_CHECK(cudaEventRecord(event, stream.handle()));
  }
  bool event_query(cudaEvent_t event) override { return ready(cudaEventQuery(event), "cudaEventQuery(event)"); }
  void event_synchronize(cudaEvent_t event) override { CUDA_CHECK(cudaEventSynchronize(event)); }
  void event_destroy(cudaEvent_t event) override { CUDA_CHECK(cudaEventDestroy(event)); }
};

class DeviceMemoryBackend final : public EventBackend {
 public:
  explicit DeviceMemoryBackend(int device) : device_(device) {}
  void* raw_alloc(size_t nbytes) override {
    DeviceGuard guard(device_);
    void* ptr = nullptr;
    // cudaMalloc is not allowed from a thread capturing a graph in the default modes;
    // a new segment during a capture is safe (it is not part of the graph), so this
    // call runs in relaxed mode, as PyTorch's allocator does.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    cudaError_t err = cudaMalloc(&ptr, nbytes);
    CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // out of memory is reported by the allocator, with its stats
      return nullptr;
    }
    if (err != cudaSuccess) throw_cuda_error("cudaMalloc(&ptr, nbytes)", cudaGetErrorString(err), err, __FILE__, __LINE__);
    return ptr;
  }
  void raw_free(void* ptr) override {
    DeviceGuard guard(device_);
    CUDA_CHECK(cudaFree(ptr));
  }
  void synchronize() override {
    DeviceGuard guard(device_);
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  uint64_t capture_id(cudaStream_t stream) override {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    unsigned long long id = 0;
    CUDA_CHECK(cudaStreamGetCaptureInfo(stream, &status, &id));
    return status == cudaStreamCaptureStatusActive ? id : 0;
  }

 private:
  int device_;
};

class PinnedMemoryBackend final : public EventBackend {
 public:
  void* raw_alloc(size_t nbytes) override {
    void* ptr = nullptr;
    // Relaxed capture mode, as for cudaMalloc above. Portable: page-locked for every
    // device, so one cache serves all of them.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    cudaError_t err = cudaHostAlloc(&ptr, nbytes, cudaHostAllocPortable);
    CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return nullptr;
    }
    if (err != cudaSuccess)
      throw_cuda_error("cudaHostAlloc(&ptr, nbytes, cudaHostAllocPortable)", cudaGetErrorString(err), err, __FILE__,
                       __LINE__);
    return ptr;
  }
  void raw_free(void* ptr) override { CUDA_CHECK(cudaFreeHost(ptr)); }
  // Copies that read a cached pinned block were all waited for through its events
  // before it entered the cache, so nothing is left to wait for.
  void synchronize() override {}
};

// The pinned cache keys every block by this pseudo-stream, a value no real stream
// has (the legacy stream is 0x0, per-thread 0x2): all host users share one pool,
// and every real stream that record_stream names gets an event on free.
const cudaStream_t kHostStream = reinterpret_cast<cudaStream_t>(~uintptr_t{0});

constexpr int kStreamsPerPool = 32;

struct DeviceState {
  std::once_flag default_once;
  cudaStream_t default_stream = nullptr;
  std::once_flag pools_once;
  std::array<std::array<cudaStream_t, kStreamsPerPool>, 2> pools{};  // [0] normal, [1] high priority
  std::array<std::atomic<uint32_t>, 2> next_in_pool{};
  std::unique_ptr<CachingAllocator> allocator;
};

// TANDEM_CUDA_CACHING_ALLOCATOR=0 turns caching off (one exact-size cudaMalloc per
// tensor, freed at once) so that compute-sanitizer sees every out-of-bounds access;
// scripts/gpu-check sets it for its memcheck stage. Read once, at first use.
bool caching_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("TANDEM_CUDA_CACHING_ALLOCATOR");
    return v == nullptr || std::string(v) != "0";
  }();
  return enabled;
}

// Per-device state lives for the whole process and is never destroyed, so that no
// cudaFree or cudaStreamDestroy runs after the CUDA runtime has shut down at exit.
DeviceState& device_state(int device) {
  static DeviceState* states = [] {
    const int count = device_count();
    auto* result = new DeviceState[count > 0 ? count : 1];
    for (int i = 0; i < count; ++i)
      result[i].allocator = std::make_unique<CachingAllocator>(std::make_unique<DeviceMemoryBackend>(i),
                                                               "cuda:" + std::to_string(i), "device_alloc",
                                                               caching_enabled());
    return result;
  }();
  return states[device];
}

CachingAllocator& pinned_allocator() {
  static CachingAllocator* allocator =
      new CachingAllocator(std::make_unique<PinnedMemoryBackend>(), "pinned host memory", "pinned_alloc",
                           caching_enabled());
  return *allocator;
}

// The current stream of each device for this thread; device -1 means "the default".
thread_local std::vector<Stream> tls_current_streams;

std::string pointer_text(const void* ptr) {
  char text[32];
  std::snprintf(text, sizeof(text), "%p", ptr);
  return text;
}

}  // namespace

// ---- devices --------------------------------------------------------------------

int device_count() { return device_info().count; }

std::string unavailable_reason() { return device_info().reason; }

std::string pci_bus_id(int index) {
  check_device(index, "pci_bus_id");
  char id[32] = {};
  CUDA_CHECK(cudaDeviceGetPCIBusId(id, sizeof(id), index));
  return id;
}

void check_device(int index, const char* what) {
  const int count = device_count();
  if (count == 0)
    throw std::invalid_argument(std::string("[") + what + "] expected a CUDA device (cuda:" + std::to_string(index) +
                                "), but none can be used: " + unavailable_reason());
  if (index < 0 || index >= count)
    throw std::invalid_argument(std::string("[") + what + "] expected a CUDA device index in [0, " +
                                std::to_string(count) + "), got " + std::to_string(index));
}

int current_device() {
  require_cuda("current_device");
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void set_device(int index) {
  check_device(index, "set_device");
  CUDA_CHECK(cudaSetDevice(index));
}

DeviceGuard::DeviceGuard(int index) {
  check_device(index, "DeviceGuard");
  previous_ = current_device();
  if (index != previous_) CUDA_CHECK(cudaSetDevice(index));
}

DeviceGuard::~DeviceGuard() {
  // Cannot throw from a destructor; switching back to a device that was current a
  // moment ago does not fail in practice.
  int device = -1;
  if (cudaGetDevice(&device) == cudaSuccess && device != previous_) (void)cudaSetDevice(previous_);
}

// ---- streams --------------------------------------------------------------------

void Stream::synchronize() const {
  if (device_ < 0) throw std::invalid_argument("[Stream::synchronize] expected a stream of a CUDA device, got an empty Stream");
  DeviceGuard guard(device_);  // a null handle means the legacy stream of the current device
  CUDA_CHECK(cudaStreamSynchronize(handle_));
}

bool Stream::query() const {
  if (device_ < 0) throw std::invalid_argument("[Stream::query] expected a stream of a CUDA device, got an empty Stream");
  DeviceGuard guard(device_);
  return ready(cudaStreamQuery(handle_), "cudaStreamQuery(handle_)");
}

bool Stream::is_capturing() const {
  if (device_ < 0) throw std::invalid_argument("[Stream::is_capturing] expected a stream of a CUDA device, got an empty Stream");
  DeviceGuard guard(device_);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(handle_, &status));
  return status != cudaStreamCaptureStatusNone;
}

Stream default_stream(int device) {
  check_device(device, "default_stream");
  DeviceState& state = device_state(device);
  // Non-blocking: the legacy default stream would serialise with every other
  // blocking stream on the device and defeat communication/computation overlap.
  std::call_once(state.default_once, [&] {
    DeviceGuard guard(device);
    CUDA_CHECK(cudaStreamCreateWithFlags(&state.default_stream, cudaStreamNonBlocking));
  });
  return Stream(device, state.default_stream);
}

Stream current_stream(int device) {
  check_device(device, "current_stream");
  if (static_cast<size_t>(device) < tls_current_streams.size() && tls_current_streams[device].device() >= 0)
    return tls_current_streams[device];
  return default_stream(device);
}

Stream pool_stream(int device, bool high_priority) {
  check_device(device, "pool_stream");
  DeviceState& state = device_state(device);
  std::call_once(state.pools_once, [&] {
    DeviceGuard guard(device);
    int least = 0, greatest = 0;  // numerically, greatest priority is the lowest value
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    for (int p = 0; p < 2; ++p)
      for (cudaStream_t& stream : state.pools[p])
        CUDA_CHECK(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, p == 0 ? least : greatest));
  });
  const int p = high_priority ? 1 : 0;
  const uint32_t index = state.next_in_pool[p].fetch_add(1, std::memory_order_relaxed) % kStreamsPerPool;
  return Stream(device, state.pools[p][index]);
}

void set_current_stream(Stream stream) {
  check_device(stream.device(), "set_current_stream");
  if (tls_current_streams.size() <= static_cast<size_t>(stream.device()))
    tls_current_streams.resize(device_count());
  tls_current_streams[stream.device()] = stream;
}

StreamGuard::StreamGuard(Stream stream) : previous_(current_stream(stream.device())) { set_current_stream(stream); }

StreamGuard::~StreamGuard() { tls_current_streams[previous_.device()] = previous_; }

// ---- events ---------------------------------------------------------------------

Event::~Event() {
  if (handle_ != nullptr) (void)cudaEventDestroy(handle_);  // a destructor cannot report failure
}

Event::Event(Event&& other) noexcept : timing_(other.timing_), device_(other.device_), handle_(other.handle_) {
  other.device_ = -1;
  other.handle_ = nullptr;
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) (void)cudaEventDestroy(handle_);
    timing_ = other.timing_;
    device_ = other.device_;
    handle_ = other.handle_;
    other.device_ = -1;
    other.handle_ = nullptr;
  }
  return *this;
}

void Event::record(Stream stream) {
  check_device(stream.device(), "Event::record");
  DeviceGuard guard(stream.device());
  if (handle_ == nullptr) {
    CUDA_CHECK(cudaEventCreateWithFlags(&handle_, timing_ ? cudaEventDefault : cudaEventDisableTiming));
    device_ = stream.device();
  } else if (stream.device() != device_) {
    throw std::invalid_argument("[Event::record] expected a stream on cuda:" + std::to_string(device_) +
                                " (the event's device), got a stream on cuda:" + std::to_string(stream.device()));
  }
  CUDA_CHECK(cudaEventRecord(handle_, stream.handle()));
}

void Event::wait(Stream stream) const {
  if (handle_ == nullptr) return;  // nothing recorded: nothing to wait for
  check_device(stream.device(), "Event::wait");
  DeviceGuard guard(stream.device());
  CUDA_CHECK(cudaStreamWaitEvent(stream.handle(), handle_, 0));
}

void Event::synchronize() const {
  if (handle_ != nullptr) CUDA_CHECK(cudaEventSynchronize(handle_));
}

bool Event::query() const {
  if (handle_ == nullptr) return true;
  return ready(cudaEventQuery(handle_), "cudaEventQuery(handle_)");
}

float Event::elapsed_ms(const Event& start) const {
  if (!timing_ || !start.timing_)
    throw std::invalid_argument(std::string("[Event::elapsed_ms] expected two events created with enable_timing, got ") +
                                (start.timing_ ? "a start with timing" : "a start without timing") + " and " +
                                (timing_ ? "an end with timing" : "an end without timing"));
  if (handle_ == nullptr || start.handle_ == nullptr)
    throw std::invalid_argument("[Event::elapsed_ms] expected two recorded events, got an unrecorded " +
                                std::string(start.handle_ == nullptr ? "start" : "end"));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.handle_, handle_));
  return ms;
}

void synchronize(int device) {
  check_device(device, "synchronize");
  DeviceGuard guard(device);
  CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- caching allocator ------------------------------------------------------------

MemoryStats memory_stats(int device) {
  check_device(device, "memory_stats");
  return device_state(device).allocator->stats();
}

void reset_peak_memory_stats(int device) {
  check_device(device, "reset_peak_memory_stats");
  device_state(device).allocator->reset_peak_stats();
}

void empty_cache() {
  for (int i = 0; i < device_count(); ++i) device_state(i).allocator->empty_cache();
  if (device_count() > 0) pinned_allocator().empty_cache();
}

// The other caches must also keep still while a capture is in progress: the capturing
// thread may free pinned or other-device memory, and may not query or record events.
void for_other_caches(int device, void (CachingAllocator::*note)()) {
  for (int d = 0; d < device_count(); ++d)
    if (d != device) (device_state(d).allocator.get()->*note)();
  (pinned_allocator().*note)();
}

void begin_allocate_to_pool(int device, MempoolId pool, uint64_t capture_id) {
  check_device(device, "begin_allocate_to_pool");
  device_state(device).allocator->begin_allocate_to_pool(pool, capture_id);
  for_other_caches(device, &CachingAllocator::note_capture_begin);
}

void end_allocate_to_pool(int device, MempoolId pool) {
  check_device(device, "end_allocate_to_pool");
  device_state(device).allocator->end_allocate_to_pool(pool);
  for_other_caches(device, &CachingAllocator::note_capture_end);
}

void release_pool(int device, MempoolId pool) {
  check_device(device, "release_pool");
  device_state(device).allocator->release_pool(pool);
}

void* device_alloc(int device, size_t nbytes, cudaStream_t stream) {
  check_device(device, "device_alloc");
  if (nbytes == 0) return nullptr;
  if (stream == nullptr) stream = current_stream(device).handle();
  return device_state(device).allocator->allocate(nbytes, stream);
}

void device_free(void* ptr) {
  if (ptr == nullptr) return;
  // Each device's allocator knows its own blocks; with at most a handful of devices,
  // asking each is cheaper than a global map behind a global lock.
  for (int i = 0; i < device_count(); ++i)
    if (device_state(i).allocator->free(ptr)) return;
  throw std::invalid_argument("[device_free] expected a pointer returned by device_alloc, got " + pointer_text(ptr));
}

void record_stream(void* ptr, Stream stream) {
  check_device(stream.device(), "record_stream");
  for (int i = 0; i < device_count(); ++i)
    if (device_state(i).allocator->record_stream(ptr, stream)) return;
  throw std::invalid_argument("[record_stream] expected a live pointer returned by device_alloc, got " +
                              pointer_text(ptr));
}

void* pinned_alloc(size_t nbytes) {
  require_cuda("pinned_alloc");
  if (nbytes == 0) return nullptr;
  return pinned_allocator().allocate(nbytes, kHostStream);
}

void pinned_free(void* ptr) {
  if (ptr == nullptr) return;
  if (device_count() > 0 && pinned_allocator().free(ptr)) return;
  throw std::invalid_argument("[pinned_free] expected a pointer returned by pinned_alloc, got " + pointer_text(ptr));
}

void pinned_record_stream(void* ptr, Stream stream) {
  check_device(stream.device(), "pinned_record_stream");
  if (!pinned_allocator().record_stream(ptr, stream))
    throw std::invalid_argument("[pinned_record_stream] expected a live pointer returned by pinned_alloc, got " +
                                pointer_text(ptr));
}

void memcpy_async(void* dst, const void* src, size_t nbytes, Stream stream) {
  check_device(stream.device(), "memcpy_async");
  if (nbytes == 0) return;
  DeviceGuard guard(stream.device());
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream.handle()));
}

}  // namespace tandem::cuda
