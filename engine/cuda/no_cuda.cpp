// engine/cuda/runtime.h for builds without CUDA (TANDEM_CUDA=OFF): there is no
// device, so queries answer "none" and everything that needs a device throws
// std::invalid_argument saying why.
#include <stdexcept>
#include <string>

#include "engine/cuda/graph.h"
#include "engine/cuda/runtime.h"

namespace tandem::cuda {

namespace {

constexpr const char* kReason = "Tandem was built without CUDA (TANDEM_CUDA=OFF)";

[[noreturn]] void no_cuda(const char* what) {
  throw std::invalid_argument(std::string("[") + what + "] expected a CUDA device, but " + kReason);
}

}  // namespace

int device_count() { return 0; }
std::string unavailable_reason() { return kReason; }
std::string pci_bus_id(int index) {
  check_device(index, "pci_bus_id");
  return {};
}

void check_device(int index, const char* what) {
  throw std::invalid_argument(std::string("[") + what + "] expected a CUDA device (cuda:" + std::to_string(index) +
                              "), but " + kReason);
}

int current_device() { no_cuda("current_device"); }
void set_device(int index) { check_device(index, "set_device"); }

DeviceGuard::DeviceGuard(int index) : previous_(-1) { check_device(index, "DeviceGuard"); }
DeviceGuard::~DeviceGuard() = default;

void Stream::synchronize() const { no_cuda("Stream::synchronize"); }
bool Stream::query() const { no_cuda("Stream::query"); }
bool Stream::is_capturing() const { no_cuda("Stream::is_capturing"); }

Stream current_stream(int device) {
  check_device(device, "current_stream");
  return {};
}
Stream default_stream(int device) {
  check_device(device, "default_stream");
  return {};
}
Stream pool_stream(int device, bool /*high_priority*/) {
  check_device(device, "pool_stream");
  return {};
}
void set_current_stream(Stream stream) { check_device(stream.device(), "set_current_stream"); }

StreamGuard::StreamGuard(Stream stream) { check_device(stream.device(), "StreamGuard"); }
StreamGuard::~StreamGuard() = default;

// An Event can be made (it is created lazily) but never recorded, so the queries
// on an unrecorded event answer as they do in a CUDA build.
Event::~Event() = default;
Event::Event(Event&& other) noexcept : timing_(other.timing_), device_(other.device_), handle_(other.handle_) {}
Event& Event::operator=(Event&& other) noexcept {
  timing_ = other.timing_;
  device_ = other.device_;
  handle_ = other.handle_;
  return *this;
}
void Event::record(Stream stream) { check_device(stream.device(), "Event::record"); }
void Event::wait(Stream /*stream*/) const {}
void Event::synchronize() const {}
bool Event::query() const { return true; }
float Event::elapsed_ms(const Event& /*start*/) const { no_cuda("Event::elapsed_ms"); }

void synchronize(int device) { check_device(device, "synchronize"); }

MemoryStats memory_stats(int device) {
  check_device(device, "memory_stats");
  return {};
}
void reset_peak_memory_stats(int device) { check_device(device, "reset_peak_memory_stats"); }
void empty_cache() {}  // nothing is ever cached

void* device_alloc(int device, size_t /*nbytes*/, cudaStream_t /*stream*/) {
  check_device(device, "device_alloc");
  return nullptr;
}
void device_free(void* ptr) {
  if (ptr != nullptr) no_cuda("device_free");
}
void record_stream(void* /*ptr*/, Stream stream) { check_device(stream.device(), "record_stream"); }

void* pinned_alloc(size_t /*nbytes*/) { no_cuda("pinned_alloc"); }
void pinned_free(void* ptr) {
  if (ptr != nullptr) no_cuda("pinned_free");
}
void pinned_record_stream(void* /*ptr*/, Stream stream) { check_device(stream.device(), "pinned_record_stream"); }

void memcpy_async(void* /*dst*/, const void* /*src*/, size_t /*nbytes*/, Stream stream) {
  check_device(stream.device(), "memcpy_async");
}

// ---- CUDA graphs --------------------------------------------------------------------

MempoolId graph_pool_handle() { no_cuda("graph_pool_handle"); }
void begin_allocate_to_pool(int device, MempoolId, uint64_t) { check_device(device, "begin_allocate_to_pool"); }
void end_allocate_to_pool(int device, MempoolId) { check_device(device, "end_allocate_to_pool"); }
void release_pool(int device, MempoolId) { check_device(device, "release_pool"); }

Graph::~Graph() = default;
void Graph::capture_begin(MempoolId) { no_cuda("Graph::capture_begin"); }
void Graph::capture_end() { no_cuda("Graph::capture_end"); }
void Graph::replay() { no_cuda("Graph::replay"); }
void Graph::reset() {}  // nothing can have been captured

}  // namespace tandem::cuda
