// Storage allocation: 64-byte aligned host memory, pinned host memory and CUDA
// device memory from the caching allocator.
#include "engine/storage.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "engine/cuda/runtime.h"
#include "kernels/cuda/copy.h"
#include "tandem/config.h"

namespace tandem {
namespace {

std::atomic<int64_t> g_host_allocated{0};
std::atomic<int64_t> g_host_peak{0};
std::atomic<int64_t> g_host_allocs{0};
std::atomic<bool> g_poison{false};

// Cache-line (and AVX-512) alignment for every host buffer.
constexpr size_t kHostAlignment = 64;

void* host_alloc(size_t nbytes) {
  size_t rounded = (nbytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
  if (rounded == 0) rounded = kHostAlignment;
  void* p = std::aligned_alloc(kHostAlignment, rounded);
  if (!p) throw std::bad_alloc();
  int64_t now = g_host_allocated.fetch_add(static_cast<int64_t>(nbytes)) + static_cast<int64_t>(nbytes);
  int64_t peak = g_host_peak.load();
  while (now > peak && !g_host_peak.compare_exchange_weak(peak, now)) {
  }
  g_host_allocs.fetch_add(1);
  return p;
}

}  // namespace

Storage::Storage(size_t nbytes, Device device, bool pinned) : nbytes_(nbytes), device_(device) {
  if (device.is_cuda()) {
    cuda::check_device(device.index, "storage");
    data_ = cuda::device_alloc(device.index, nbytes);
    deleter_ = [](void* p) { cuda::device_free(p); };
    if (g_poison.load()) {
      if constexpr (kBuiltWithCuda) {
        kernels::cuda::fill_bytes(data_, 0xff, nbytes, cuda::current_stream(device.index).handle());
      }
    }
    return;
  }
  if (pinned && cuda::is_available()) {
    data_ = cuda::pinned_alloc(nbytes);
    pinned_ = true;
    deleter_ = [](void* p) { cuda::pinned_free(p); };
  } else {
    data_ = host_alloc(nbytes);
    deleter_ = [nbytes](void* p) {
      g_host_allocated.fetch_sub(static_cast<int64_t>(nbytes));
      std::free(p);
    };
  }
  if (g_poison.load()) std::memset(data_, 0xff, nbytes);
}

Storage::Storage(void* data, size_t nbytes, Device device, Deleter deleter)
    : data_(data), nbytes_(nbytes), device_(device), deleter_(std::move(deleter)) {}

Storage::~Storage() {
  // A destructor cannot throw; a failing free (a CUDA error from earlier async
  // work, typically) is reported once here rather than ending the process.
  try {
    if (deleter_ && data_) deleter_(data_);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem: freeing %zu bytes on %s failed: %s\n", nbytes_, device_.str().c_str(), e.what());
  }
}

HostMemoryStats host_memory_stats() {
  return {g_host_allocated.load(), g_host_peak.load(), g_host_allocs.load()};
}

void set_poison_allocations(bool on) { g_poison.store(on); }
bool poison_allocations() { return g_poison.load(); }

}  // namespace tandem
