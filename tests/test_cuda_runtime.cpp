// The CUDA runtime layer on a real GPU: streams are Tandem's own non-blocking ones,
// events order work across streams, the caching allocator reuses memory (no
// cudaMalloc in a steady loop) and defers reuse after record_stream, and pinned
// memory round-trips through the device. Skips with the reason when there is no GPU.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/cuda/runtime.h"
#include "tandem/config.h"
#include "test_util.h"

#if TANDEM_CUDA
#include <cuda_runtime.h>
#endif

namespace tandem::cuda {
namespace {

#if TANDEM_CUDA

#define ASSERT_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

// A gate that holds a stream at a host function until the test opens it: work
// queued behind it cannot start, which makes "not yet" deterministic instead of a
// race against a long kernel.
struct Gate {
  std::atomic<bool> open{false};
  static void CUDART_CB wait_open(void* self) {
    auto* gate = static_cast<Gate*>(self);
    while (!gate->open.load()) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  void close_on(Stream stream) { ASSERT_CUDA(cudaLaunchHostFunc(stream.handle(), &Gate::wait_open, this)); }
};

TEST(CudaRuntime, DeviceDiscovery) {
  TANDEM_REQUIRE_CUDA();
  EXPECT_GT(device_count(), 0);
  EXPECT_EQ(unavailable_reason(), "");
  EXPECT_NO_THROW(check_device(0, "test"));
  try {
    check_device(device_count(), "my_op");
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[my_op] expected a CUDA device index in [0, " +
                                         std::to_string(device_count()) + "), got " + std::to_string(device_count())),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(check_device(-1, "my_op"), std::invalid_argument);
  {
    DeviceGuard guard(device_count() - 1);
    EXPECT_EQ(current_device(), device_count() - 1);
  }
}

TEST(CudaRuntime, StreamsAreNonBlockingAndNotTheLegacyStream) {
  TANDEM_REQUIRE_CUDA();
  const Stream main = default_stream(0);
  EXPECT_EQ(main.device(), 0);
  EXPECT_NE(main.handle(), nullptr);
  EXPECT_NE(main.handle(), cudaStreamLegacy);
  EXPECT_NE(main.handle(), cudaStreamPerThread);
  EXPECT_EQ(current_stream(0), main);
  EXPECT_EQ(default_stream(0), main);  // created once

  unsigned int flags = 0;
  ASSERT_CUDA(cudaStreamGetFlags(main.handle(), &flags));
  EXPECT_EQ(flags & cudaStreamNonBlocking, unsigned(cudaStreamNonBlocking));

  // Pools hand out distinct non-blocking streams round-robin; high priority ones
  // have a higher (numerically lower) priority.
  const Stream a = pool_stream(0), b = pool_stream(0), high = pool_stream(0, true);
  EXPECT_NE(a, b);
  EXPECT_NE(a, main);
  int normal_priority = 0, high_priority = 0;
  ASSERT_CUDA(cudaStreamGetPriority(a.handle(), &normal_priority));
  ASSERT_CUDA(cudaStreamGetPriority(high.handle(), &high_priority));
  int least = 0, greatest = 0;
  ASSERT_CUDA(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  EXPECT_EQ(normal_priority, least);
  EXPECT_EQ(high_priority, greatest);
  ASSERT_CUDA(cudaStreamGetFlags(high.handle(), &flags));
  EXPECT_EQ(flags & cudaStreamNonBlocking, unsigned(cudaStreamNonBlocking));
}

TEST(CudaRuntime, CurrentStreamIsPerThreadAndRestoredByTheGuard) {
  TANDEM_REQUIRE_CUDA();
  const Stream side = pool_stream(0);
  {
    StreamGuard guard(side);
    EXPECT_EQ(current_stream(0), side);
    Stream seen_by_other_thread;
    std::thread([&] { seen_by_other_thread = current_stream(0); }).join();
    EXPECT_EQ(seen_by_other_thread, default_stream(0));
  }
  EXPECT_EQ(current_stream(0), default_stream(0));
}

TEST(CudaRuntime, EventsOrderWorkAcrossStreams) {
  TANDEM_REQUIRE_CUDA();
  const size_t n = 64 << 20;
  const Stream producer = pool_stream(0), consumer = pool_stream(0);
  ASSERT_NE(producer, consumer);
  void* src = device_alloc(0, n, producer.handle());
  void* dst = device_alloc(0, n, producer.handle());
  auto* host = static_cast<unsigned char*>(pinned_alloc(n));
  ASSERT_CUDA(cudaMemsetAsync(src, 0x11, n, producer.handle()));
  ASSERT_CUDA(cudaStreamSynchronize(producer.handle()));

  // producer: [gate] -> src = 0x5A -> record; consumer: wait -> copy src to host.
  Gate gate;
  gate.close_on(producer);
  ASSERT_CUDA(cudaMemsetAsync(src, 0x5A, n, producer.handle()));
  Event ready;
  ready.record(producer);
  EXPECT_TRUE(ready.recorded());
  ready.wait(consumer);
  memcpy_async(host, src, n, consumer);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(ready.query());
  EXPECT_FALSE(consumer.query()) << "the consumer ran ahead of the event it waits for";
  gate.open = true;
  consumer.synchronize();
  EXPECT_TRUE(ready.query());
  for (size_t i = 0; i < n; i += 4099) ASSERT_EQ(host[i], 0x5A) << "at byte " << i;
  ASSERT_EQ(host[n - 1], 0x5A);

  pinned_record_stream(host, consumer);
  pinned_free(host);
  device_free(src);
  device_free(dst);
}

TEST(CudaRuntime, TimingEventsMeasureElapsedTime) {
  TANDEM_REQUIRE_CUDA();
  const Stream stream = current_stream(0);
  Event start(true), stop(true), plain;
  void* buffer = device_alloc(0, 32 << 20);
  start.record(stream);
  ASSERT_CUDA(cudaMemsetAsync(buffer, 1, 32 << 20, stream.handle()));
  stop.record(stream);
  plain.record(stream);
  stop.synchronize();
  EXPECT_GE(stop.elapsed_ms(start), 0.0f);
  EXPECT_THROW(plain.elapsed_ms(start), std::invalid_argument);
  Event moved = std::move(stop);
  EXPECT_TRUE(moved.recorded());
  EXPECT_FALSE(stop.recorded());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  device_free(buffer);
}

TEST(CudaRuntime, SteadyLoopDoesNoCudaMalloc) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  const std::vector<size_t> sizes = {4, 1000, 65536, 1 << 20, 3 << 20, 25 << 20, 100 << 20};
  int64_t allocs_after_first = 0;
  for (int iteration = 0; iteration < 20; ++iteration) {
    std::vector<void*> ptrs;
    for (size_t size : sizes) {
      ptrs.push_back(device_alloc(0, size));
      ASSERT_CUDA(cudaMemsetAsync(ptrs.back(), iteration, size, current_stream(0).handle()));
    }
    for (void* p : ptrs) device_free(p);
    if (iteration == 0) allocs_after_first = memory_stats(0).num_device_allocs;
  }
  const MemoryStats stats = memory_stats(0);
  EXPECT_EQ(stats.num_device_allocs, allocs_after_first);
  EXPECT_GE(stats.reserved_bytes, int64_t(128 << 20));
  EXPECT_GE(stats.peak_allocated_bytes, int64_t(128 << 20));
  synchronize(0);

  // empty_cache hands every unused segment back.
  empty_cache();
  const MemoryStats after = memory_stats(0);
  EXPECT_EQ(after.allocated_bytes, 0);
  EXPECT_EQ(after.reserved_bytes, 0);
  EXPECT_GT(after.num_device_frees, stats.num_device_frees);
  reset_peak_memory_stats(0);
  EXPECT_EQ(memory_stats(0).peak_allocated_bytes, memory_stats(0).allocated_bytes);
}

TEST(CudaRuntime, RecordStreamDefersReuseUntilTheOtherStreamIsDone) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  empty_cache();  // a known starting point: no cached blocks
  const Stream main = current_stream(0), side = pool_stream(0);
  const size_t n = 8 << 20;
  void* block = device_alloc(0, n, main.handle());
  void* other = device_alloc(0, n, side.handle());
  // Cache a second block for `main` now: no cudaMalloc may run while the gate holds
  // a stream (the runtime is allowed to synchronise inside it).
  device_free(device_alloc(0, n, main.handle()));
  const int64_t allocs = memory_stats(0).num_device_allocs;

  // The side stream reads `block` after a gate; meanwhile its owner frees it.
  Gate gate;
  gate.close_on(side);
  ASSERT_CUDA(cudaMemcpyAsync(other, block, n, cudaMemcpyDeviceToDevice, side.handle()));
  record_stream(block, side);
  device_free(block);

  void* next = device_alloc(0, n, main.handle());
  EXPECT_NE(next, block) << "reused while the side stream may still read it";
  EXPECT_EQ(memory_stats(0).num_device_allocs, allocs);

  gate.open = true;
  side.synchronize();
  void* again = device_alloc(0, n, main.handle());  // `block` is the only free block
  EXPECT_EQ(again, block) << "once the side stream is done the block is reusable";
  EXPECT_EQ(memory_stats(0).num_device_allocs, allocs);
  device_free(again);
  device_free(next);
  device_free(other);
  EXPECT_THROW(record_stream(block, side), std::invalid_argument);  // freed: not live
  int host = 0;
  EXPECT_THROW(device_free(&host), std::invalid_argument);
}

TEST(CudaRuntime, OutOfMemoryIsAClearError) {
  TANDEM_REQUIRE_CUDA();
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t ooms = memory_stats(0).num_ooms;
  try {
    device_alloc(0, total_bytes * 2);
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("[device_alloc] out of memory on cuda:0"), std::string::npos) << message;
    EXPECT_NE(message.find(std::to_string(total_bytes * 2) + " bytes"), std::string::npos) << message;
    EXPECT_NE(message.find("reserved"), std::string::npos) << message;
  }
  EXPECT_EQ(memory_stats(0).num_ooms, ooms + 1);
  void* p = device_alloc(0, 1 << 20);  // still usable
  EXPECT_NE(p, nullptr);
  device_free(p);
}

TEST(CudaRuntime, PinnedCopyRoundTrip) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  const size_t n = (16 << 20) + 12345;
  const Stream stream = pool_stream(0);
  auto* in = static_cast<unsigned char*>(pinned_alloc(n));
  auto* out = static_cast<unsigned char*>(pinned_alloc(n));
  cudaPointerAttributes attributes{};
  ASSERT_CUDA(cudaPointerGetAttributes(&attributes, in));
  EXPECT_EQ(attributes.type, cudaMemoryTypeHost);  // page-locked, not pageable
  for (size_t i = 0; i < n; ++i) in[i] = static_cast<unsigned char>(i * 131 + 7);
  std::memset(out, 0xFF, n);

  void* device = device_alloc(0, n, stream.handle());
  memcpy_async(device, in, n, stream);
  memcpy_async(out, device, n, stream);
  pinned_record_stream(in, stream);
  pinned_record_stream(out, stream);
  stream.synchronize();
  EXPECT_EQ(std::memcmp(in, out, n), 0);
  record_stream(device, stream);  // same as its allocation stream: nothing to wait for
  device_free(device);
  pinned_free(in);

  // A pinned block read by a queued copy is not reused before the copy is done.
  // Everything needed while the gate is closed is allocated before it (no
  // cudaMalloc or cudaHostAlloc while a stream is held).
  empty_cache();
  in = static_cast<unsigned char*>(pinned_alloc(n));
  pinned_free(pinned_alloc(n));  // a cached spare
  void* scratch = device_alloc(0, n, stream.handle());
  Gate gate;
  gate.close_on(stream);
  memcpy_async(scratch, in, n, stream);
  pinned_record_stream(in, stream);
  pinned_free(in);
  void* next = pinned_alloc(n);
  EXPECT_NE(next, in);
  gate.open = true;
  stream.synchronize();
  void* again = pinned_alloc(n);  // `in` is the only free block that fits
  EXPECT_EQ(again, in);
  pinned_free(again);
  pinned_free(next);
  pinned_free(out);
  device_free(scratch);
  memcpy_async(nullptr, nullptr, 0, stream);  // nothing to copy is fine
}

#else  // !TANDEM_CUDA

TEST(CudaRuntime, SkippedWithoutCuda) {
  TANDEM_REQUIRE_CUDA();
  FAIL() << "a build without CUDA reported a CUDA device";
}

#endif

}  // namespace
}  // namespace tandem::cuda
