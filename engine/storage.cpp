// Storage allocation: 64-byte aligned host memory, pinned host memory and CUDA
// device memory from the caching allocator.
#include "engine/storage.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>
#include <stdexcept>

#include "engine/cuda/runtime.h"
#include "kernels/cuda/copy.h"
#include "tandem/config.h"

namespace tandem {
namespace {

std::atomic<int64_t> g_host_allocated{0};
std::atomic<int64_t> g_host_peak{0};
std::atomic<int64_t> g_host_allocs{0};
std::atomic<int64_t> g_host_system_allocs{0};
std::atomic<bool> g_poison{false};

// Cache-line (and AVX-512) alignment for every host buffer.
constexpr size_t kHostAlignment = 64;

// Large host blocks are kept after free and reused for the next request of the same
// rounded size. glibc serves blocks above its mmap threshold with fresh mmap/munmap,
// so a training loop that frees and re-makes its activations every step pays page
// faults on every touch (measured: a fifth of the CNN's CPU step; bench/RESULTS.md).
// Small blocks stay with malloc, which caches them itself.
constexpr size_t kHostCacheMinBlock = size_t{1} << 20;
constexpr size_t kHostCacheRound = size_t{1} << 16;
constexpr size_t kHostCacheMaxBytes = size_t{1} << 30;  // beyond this, frees go to the system

struct HostCache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // by rounded size
  size_t cached_bytes = 0;
};

// Leaked on purpose: tensors may be freed during static destruction.
HostCache& host_cache() {
  static HostCache* cache = new HostCache;
  return *cache;
}

size_t host_rounded(size_t nbytes) {
  size_t round = nbytes >= kHostCacheMinBlock ? kHostCacheRound : kHostAlignment;
  size_t rounded = (nbytes + round - 1) / round * round;
  return rounded == 0 ? kHostAlignment : rounded;
}

void* host_alloc(size_t nbytes) {
  const size_t rounded = host_rounded(nbytes);
  void* p = nullptr;
  if (rounded >= kHostCacheMinBlock) {
    HostCache& cache = host_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto it = cache.free_blocks.find(rounded);
    if (it != cache.free_blocks.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      cache.cached_bytes -= rounded;
    }
  }
  if (p == nullptr) {
    p = std::aligned_alloc(kHostAlignment, rounded);
    if (!p) throw std::bad_alloc();
    g_host_system_allocs.fetch_add(1);
  }
  int64_t now = g_host_allocated.fetch_add(static_cast<int64_t>(nbytes)) + static_cast<int64_t>(nbytes);
  int64_t peak = g_host_peak.load();
  while (now > peak && !g_host_peak.compare_exchange_weak(peak, now)) {
  }
  g_host_allocs.fetch_add(1);
  return p;
}

void host_free(void* p, size_t nbytes) {
  g_host_allocated.fetch_sub(static_cast<int64_t>(nbytes));
  const size_t rounded = host_rounded(nbytes);
  if (rounded >= kHostCacheMinBlock) {
    HostCache& cache = host_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    if (cache.cached_bytes + rounded <= kHostCacheMaxBytes) {
      cache.free_blocks[rounded].push_back(p);
      cache.cached_bytes += rounded;
      return;
    }
  }
  std::free(p);
}

}  // namespace

Storage::Storage(size_t nbytes, Device device, bool pinned) : nbytes_(nbytes), device_(device) {
  if (device.is_cuda()) {
    cuda::check_device(device.index, "storage");
    data_ = cuda::device_alloc(device.index, nbytes);
    deleter_ = [](void* p) { cuda::device_free(p); };
    if (g_poison.load()) {
      if constexpr (kBuiltWithCuda) {
        // The fill runs on this device's stream, so on this device (the caller's current
        // device may be another GPU).
        cuda::DeviceGuard guard(device.index);
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
    deleter_ = [nbytes](void* p) { host_free(p, nbytes); };
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
  HostCache& cache = host_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return {g_host_allocated.load(), g_host_peak.load(), g_host_allocs.load(), g_host_system_allocs.load(),
          static_cast<int64_t>(cache.cached_bytes)};
}

void reset_host_peak_memory_stats() { g_host_peak.store(g_host_allocated.load()); }

void host_empty_cache() {
  HostCache& cache = host_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  for (auto& [size, blocks] : cache.free_blocks)
    for (void* p : blocks) std::free(p);
  cache.free_blocks.clear();
  cache.cached_bytes = 0;
}

void set_poison_allocations(bool on) { g_poison.store(on); }
bool poison_allocations() { return g_poison.load(); }

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return text;
}

}  // namespace tandem
