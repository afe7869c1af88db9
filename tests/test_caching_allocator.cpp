// The caching allocator's policy, driven through a fake host-memory backend (no GPU
// needed): rounding, segment sizes, reuse, splitting, coalescing, per-stream pools,
// record_stream deferral, out-of-memory recovery, private pools for CUDA graph captures
// and statistics. Also the public
// runtime API's answers on a machine (or build) without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/cuda/caching_allocator.h"
#include "engine/cuda/runtime.h"

namespace tandem::cuda {
namespace {

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * 1024;

// What the fake backend did, shared with the test so it can be read after the
// allocator (which owns the backend) is gone.
struct FakeEvent {
  int device = 0;
  Stream stream;
  bool done = true;
};

struct FakeState {
  size_t capacity = size_t{1} << 40;  // raw_alloc fails beyond this many bytes in use
  size_t used = 0;
  std::map<void*, size_t> live;  // segments handed out and not yet freed
  int64_t raw_allocs = 0;
  int64_t raw_frees = 0;
  int64_t synchronizes = 0;
  std::vector<FakeEvent*> events;  // every event created, destroyed or not
  int64_t events_created = 0;
  int64_t events_destroyed = 0;
  int64_t records = 0;
  int64_t queries = 0;
  std::map<cudaStream_t, uint64_t> capturing;  // streams under a graph capture, and its id

  /// Marks every event recorded on `stream` as passed, as if the stream caught up.
  void complete(Stream stream) {
    for (FakeEvent* event : events)
      if (event->stream == stream) event->done = true;
  }
  ~FakeState() {
    for (FakeEvent* event : events) delete event;
  }
};

class FakeBackend final : public AllocatorBackend {
 public:
  explicit FakeBackend(std::shared_ptr<FakeState> state) : state_(std::move(state)) {}

  void* raw_alloc(size_t nbytes) override {
    if (state_->used + nbytes > state_->capacity) return nullptr;
    // aligned_alloc wants a multiple of the alignment (the uncached mode asks for exact sizes).
    void* ptr = std::aligned_alloc(512, (nbytes + 511) / 512 * 512);
    if (ptr == nullptr) throw std::bad_alloc();
    state_->live[ptr] = nbytes;
    state_->used += nbytes;
    state_->raw_allocs += 1;
    return ptr;
  }
  void raw_free(void* ptr) override {
    auto it = state_->live.find(ptr);
    if (it == state_->live.end()) throw std::logic_error("raw_free of a pointer the fake never handed out");
    state_->used -= it->second;
    state_->live.erase(it);
    state_->raw_frees += 1;
    std::free(ptr);
  }
  void synchronize() override { state_->synchronizes += 1; }
  cudaEvent_t event_create(int device) override {
    auto* event = new FakeEvent{device, Stream(), true};
    state_->events.push_back(event);
    state_->events_created += 1;
    return reinterpret_cast<cudaEvent_t>(event);
  }
  void event_record(cudaEvent_t event, Stream stream) override {
    FakeEvent* fake = from(event);
    if (fake->device != stream.device()) throw std::logic_error("event recorded on another device's stream");
    fake->stream = stream;
    fake->done = false;
    state_->records += 1;
  }
  bool event_query(cudaEvent_t event) override {
    state_->queries += 1;
    return from(event)->done;
  }
  void event_synchronize(cudaEvent_t event) override { from(event)->done = true; }
  void event_destroy(cudaEvent_t event) override {
    from(event)->stream = Stream();
    state_->events_destroyed += 1;
  }
  uint64_t capture_id(cudaStream_t stream) override {
    auto it = state_->capturing.find(stream);
    return it == state_->capturing.end() ? 0 : it->second;
  }

 private:
  static FakeEvent* from(cudaEvent_t event) { return reinterpret_cast<FakeEvent*>(event); }
  std::shared_ptr<FakeState> state_;
};

cudaStream_t fake_stream(uintptr_t id) { return reinterpret_cast<cudaStream_t>(0x1000 * id); }

class CachingAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override { reset(); }
  void reset() {
    allocator.reset();
    state = std::make_shared<FakeState>();
    allocator = std::make_unique<CachingAllocator>(std::make_unique<FakeBackend>(state), "cuda:0", "device_alloc");
  }
  // Blocks of the segment that holds `ptr`, as (size, state) pairs; state is 'A'
  // (allocated), 'F' (free) or 'P' (pending record_stream events).
  std::vector<std::pair<size_t, char>> blocks_of(const void* ptr) const {
    auto address = reinterpret_cast<uintptr_t>(ptr);
    for (const SegmentSnapshot& segment : allocator->snapshot()) {
      if (address < segment.address || address >= segment.address + segment.size) continue;
      std::vector<std::pair<size_t, char>> result;
      for (const auto& block : segment.blocks)
        result.emplace_back(block.size, block.allocated ? 'A' : block.pending ? 'P' : 'F');
      return result;
    }
    return {};
  }

  std::shared_ptr<FakeState> state;
  std::unique_ptr<CachingAllocator> allocator;
  const cudaStream_t s1 = fake_stream(1);
  const cudaStream_t s2 = fake_stream(2);
  const cudaStream_t s3 = fake_stream(3);
};

using Blocks = std::vector<std::pair<size_t, char>>;

TEST_F(CachingAllocatorTest, RoundsSizesTo512Bytes) {
  EXPECT_EQ(CachingAllocator::round_size(0), 512u);
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(512), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size(kMiB + 1), kMiB + 512);
}

TEST_F(CachingAllocatorTest, SegmentSizes) {
  // Small requests (<= 1 MiB) share 2 MiB segments; larger ones get their size
  // rounded up to a multiple of 2 MiB.
  EXPECT_EQ(CachingAllocator::segment_size(512), 2 * kMiB);
  EXPECT_EQ(CachingAllocator::segment_size(kMiB), 2 * kMiB);
  EXPECT_EQ(CachingAllocator::segment_size(kMiB + 512), 2 * kMiB);
  EXPECT_EQ(CachingAllocator::segment_size(2 * kMiB), 2 * kMiB);
  EXPECT_EQ(CachingAllocator::segment_size(2 * kMiB + 512), 4 * kMiB);
  EXPECT_EQ(CachingAllocator::segment_size(11 * kMiB), 12 * kMiB);
  EXPECT_EQ(CachingAllocator::segment_size(20 * kMiB), 20 * kMiB);
}

TEST_F(CachingAllocatorTest, ZeroBytesAllocatesNothing) {
  EXPECT_EQ(allocator->allocate(0, s1), nullptr);
  EXPECT_EQ(state->raw_allocs, 0);
  EXPECT_EQ(allocator->stats().num_alloc_requests, 0);
}

TEST_F(CachingAllocatorTest, FirstAllocationCreatesOneSmallSegment) {
  void* p = allocator->allocate(1000, s1);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 512, 0u);
  EXPECT_EQ(state->raw_allocs, 1);
  EXPECT_EQ(state->live.begin()->second, 2 * kMiB);

  MemoryStats stats = allocator->stats();
  EXPECT_EQ(stats.allocated_bytes, 1024);
  EXPECT_EQ(stats.reserved_bytes, int64_t(2 * kMiB));
  EXPECT_EQ(stats.peak_allocated_bytes, 1024);
  EXPECT_EQ(stats.peak_reserved_bytes, int64_t(2 * kMiB));
  EXPECT_EQ(stats.num_device_allocs, 1);
  EXPECT_EQ(stats.num_device_frees, 0);
  EXPECT_EQ(stats.num_alloc_requests, 1);
  EXPECT_EQ(stats.num_ooms, 0);
  EXPECT_EQ(blocks_of(p), (Blocks{{1024, 'A'}, {2 * kMiB - 1024, 'F'}}));

  EXPECT_TRUE(allocator->free(p));
  stats = allocator->stats();
  EXPECT_EQ(stats.allocated_bytes, 0);
  EXPECT_EQ(stats.reserved_bytes, int64_t(2 * kMiB));  // cached, not returned
  EXPECT_EQ(stats.peak_allocated_bytes, 1024);
  EXPECT_EQ(state->raw_frees, 0);
  EXPECT_EQ(blocks_of(p), (Blocks{{2 * kMiB, 'F'}}));
}

TEST_F(CachingAllocatorTest, SmallRequestsFillASegmentBeforeTakingAnother) {
  // 2048 blocks of 1 KiB fill one 2 MiB segment exactly; the next needs a new one.
  std::vector<char*> ptrs;
  for (int i = 0; i < 2048; ++i) ptrs.push_back(static_cast<char*>(allocator->allocate(1000, s1)));
  EXPECT_EQ(state->raw_allocs, 1);
  std::vector<char*> sorted = ptrs;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 1; i < sorted.size(); ++i) EXPECT_EQ(sorted[i] - sorted[i - 1], 1024);  // disjoint and dense
  EXPECT_EQ(blocks_of(ptrs[0]).size(), 2048u);

  ptrs.push_back(static_cast<char*>(allocator->allocate(1, s1)));
  EXPECT_EQ(state->raw_allocs, 2);
  EXPECT_EQ(allocator->stats().reserved_bytes, int64_t(4 * kMiB));
  EXPECT_EQ(allocator->stats().allocated_bytes, int64_t(2 * kMiB + 512));
  for (char* p : ptrs) EXPECT_TRUE(allocator->free(p));
  EXPECT_EQ(allocator->stats().allocated_bytes, 0);
}

TEST_F(CachingAllocatorTest, SteadyLoopDoesNoRawAllocationsAfterTheFirstIteration) {
  const std::vector<size_t> sizes = {1000, 4 * kKiB, 300 * kKiB, kMiB, kMiB + kMiB / 2, 5 * kMiB, 13 * kMiB, 7, 64};
  int64_t raw_after_first = 0;
  for (int iteration = 0; iteration < 50; ++iteration) {
    std::vector<void*> ptrs;
    for (size_t size : sizes) {
      ptrs.push_back(allocator->allocate(size, s1));
      std::memset(ptrs.back(), iteration, size);  // the whole request is usable
    }
    // Free in a different order each time: reuse must not depend on it.
    std::rotate(ptrs.begin(), ptrs.begin() + iteration % ptrs.size(), ptrs.end());
    for (void* p : ptrs) ASSERT_TRUE(allocator->free(p));
    if (iteration == 0) raw_after_first = state->raw_allocs;
  }
  EXPECT_EQ(state->raw_allocs, raw_after_first);
  MemoryStats stats = allocator->stats();
  EXPECT_EQ(stats.num_device_allocs, raw_after_first);
  EXPECT_EQ(stats.num_alloc_requests, int64_t(50 * sizes.size()));
  EXPECT_EQ(stats.allocated_bytes, 0);
}

TEST_F(CachingAllocatorTest, LargeBlocksSplitOnlyWhenTheRestExceedsOneMiB) {
  // 11 MiB takes a 12 MiB segment; the 1 MiB rest is too small to keep apart.
  void* a = allocator->allocate(11 * kMiB, s1);
  EXPECT_EQ(blocks_of(a), (Blocks{{12 * kMiB, 'A'}}));
  EXPECT_EQ(allocator->stats().allocated_bytes, int64_t(12 * kMiB));  // the whole block is held
  allocator->free(a);

  // 4 MiB is best served by that cached block, which now splits (rest 8 MiB > 1 MiB).
  void* b = allocator->allocate(4 * kMiB, s1);
  EXPECT_EQ(b, a);
  EXPECT_EQ(blocks_of(b), (Blocks{{4 * kMiB, 'A'}, {8 * kMiB, 'F'}}));
  void* c = allocator->allocate(8 * kMiB, s1);
  EXPECT_EQ(c, static_cast<char*>(a) + 4 * kMiB);
  EXPECT_EQ(blocks_of(b), (Blocks{{4 * kMiB, 'A'}, {8 * kMiB, 'A'}}));
  EXPECT_EQ(state->raw_allocs, 1);
  EXPECT_EQ(allocator->stats().allocated_bytes, int64_t(12 * kMiB));

  // A small request never takes a block from the large pool.
  void* d = allocator->allocate(512, s1);
  EXPECT_EQ(state->raw_allocs, 2);
  EXPECT_EQ(blocks_of(d), (Blocks{{512, 'A'}, {2 * kMiB - 512, 'F'}}));
  allocator->free(b);
  allocator->free(c);
  allocator->free(d);
}

TEST_F(CachingAllocatorTest, BestFitPicksTheSmallestFreeBlock) {
  void* big = allocator->allocate(8 * kMiB, s1);
  void* mid = allocator->allocate(4 * kMiB, s1);
  void* tiny = allocator->allocate(2 * kMiB, s1);
  allocator->free(big);
  allocator->free(mid);
  allocator->free(tiny);
  EXPECT_EQ(allocator->allocate(3 * kMiB, s1), mid);  // 4 MiB fits best (unsplit: rest 1 MiB)
  EXPECT_EQ(allocator->allocate(kMiB + 512, s1), tiny);
  EXPECT_EQ(allocator->allocate(5 * kMiB, s1), big);
  EXPECT_EQ(state->raw_allocs, 3);
}

TEST_F(CachingAllocatorTest, FreeCoalescesWithFreeNeighbours) {
  char* a = static_cast<char*>(allocator->allocate(1024, s1));
  char* b = static_cast<char*>(allocator->allocate(1024, s1));
  char* c = static_cast<char*>(allocator->allocate(1024, s1));
  ASSERT_EQ(b, a + 1024);
  ASSERT_EQ(c, b + 1024);
  const size_t rest = 2 * kMiB - 3 * 1024;
  EXPECT_EQ(blocks_of(a), (Blocks{{1024, 'A'}, {1024, 'A'}, {1024, 'A'}, {rest, 'F'}}));

  allocator->free(b);  // both neighbours held: no merge
  EXPECT_EQ(blocks_of(a), (Blocks{{1024, 'A'}, {1024, 'F'}, {1024, 'A'}, {rest, 'F'}}));
  // The hole is the best fit for its own size.
  EXPECT_EQ(allocator->allocate(1000, s1), b);
  allocator->free(b);

  allocator->free(a);  // merges with the free block above it
  EXPECT_EQ(blocks_of(a), (Blocks{{2048, 'F'}, {1024, 'A'}, {rest, 'F'}}));
  allocator->free(c);  // merges with both sides: the segment is whole again
  EXPECT_EQ(blocks_of(a), (Blocks{{2 * kMiB, 'F'}}));

  // The whole segment serves a request as large as it can hold in the small pool.
  EXPECT_EQ(allocator->allocate(kMiB, s1), a);
  EXPECT_EQ(state->raw_allocs, 1);
}

TEST_F(CachingAllocatorTest, StreamsHaveSeparatePools) {
  void* p1 = allocator->allocate(4096, s1);
  void* q1 = allocator->allocate(6 * kMiB, s1);
  allocator->free(p1);
  allocator->free(q1);

  // Cached blocks of s1 are not handed to s2 (its kernels are not ordered after s1's).
  void* p2 = allocator->allocate(4096, s2);
  void* q2 = allocator->allocate(6 * kMiB, s2);
  EXPECT_NE(p2, p1);
  EXPECT_NE(q2, q1);
  EXPECT_EQ(state->raw_allocs, 4);

  // ...but s1 gets its own back.
  EXPECT_EQ(allocator->allocate(4096, s1), p1);
  EXPECT_EQ(allocator->allocate(6 * kMiB, s1), q1);
  EXPECT_EQ(state->raw_allocs, 4);

  // And the other way round (pools are ordered by stream, so both directions count).
  void* r3 = allocator->allocate(2 * kMiB, s3);
  allocator->free(r3);
  void* r1 = allocator->allocate(2 * kMiB, s1);
  EXPECT_NE(r1, r3);
  allocator->free(r1);
  EXPECT_EQ(state->raw_allocs, 6);

  for (const SegmentSnapshot& segment : allocator->snapshot()) {
    if (segment.stream == s3 || reinterpret_cast<void*>(segment.address) == r1) continue;
    auto address = reinterpret_cast<uintptr_t>(segment.stream == s1 ? p1 : p2);
    auto large = reinterpret_cast<uintptr_t>(segment.stream == s1 ? q1 : q2);
    EXPECT_TRUE(segment.address == address || segment.address == large);
  }
}

TEST_F(CachingAllocatorTest, RecordStreamDefersReuseUntilTheEventCompletes) {
  void* p = allocator->allocate(1000, s1);
  EXPECT_TRUE(allocator->record_stream(p, Stream(0, s2)));
  EXPECT_TRUE(allocator->free(p));
  EXPECT_EQ(state->records, 1);
  EXPECT_EQ(allocator->stats().allocated_bytes, 0);  // no longer held by its owner
  EXPECT_EQ(blocks_of(p), (Blocks{{1024, 'P'}, {2 * kMiB - 1024, 'F'}}));

  // s2 may still be reading p: the next allocation on s1 must not get it.
  void* q = allocator->allocate(1000, s1);
  EXPECT_NE(q, p);
  EXPECT_EQ(blocks_of(p), (Blocks{{1024, 'P'}, {1024, 'A'}, {2 * kMiB - 2048, 'F'}}));
  allocator->free(q);
  EXPECT_EQ(blocks_of(p), (Blocks{{1024, 'P'}, {2 * kMiB - 1024, 'F'}}));

  // Once s2 passes the event, the next allocation returns p's block to the pool
  // (merged with its free neighbour) and can hand it out.
  state->complete(Stream(0, s2));
  EXPECT_EQ(allocator->allocate(1000, s1), p);
  EXPECT_EQ(blocks_of(p), (Blocks{{1024, 'A'}, {2 * kMiB - 1024, 'F'}}));
  EXPECT_EQ(state->raw_allocs, 1);
}

TEST_F(CachingAllocatorTest, WithoutCachingEveryTensorHasItsOwnExactSegment) {
  CachingAllocator uncached(std::make_unique<FakeBackend>(state), "cuda:0", "device_alloc", /*caching=*/false);
  void* a = uncached.allocate(1000, s1);
  void* b = uncached.allocate(3, s1);
  EXPECT_EQ(state->raw_allocs, 2);
  EXPECT_EQ(uncached.stats().reserved_bytes, 1003);  // exact sizes: no rounding, no 2 MiB segments
  EXPECT_TRUE(uncached.free(a));
  EXPECT_EQ(state->raw_frees, 1);                     // returned at once
  // A block used on another stream goes back only after that stream's event.
  EXPECT_TRUE(uncached.record_stream(b, Stream(0, s2)));
  EXPECT_TRUE(uncached.free(b));
  EXPECT_EQ(state->raw_frees, 1);
  state->complete(Stream(0, s2));
  uncached.allocate(8, s1);  // processes completed events
  EXPECT_EQ(state->raw_frees, 2);
  EXPECT_EQ(uncached.stats().reserved_bytes, 8);
  EXPECT_EQ(uncached.stats().num_device_allocs, 3);
}

TEST_F(CachingAllocatorTest, RecordStreamWaitsForEveryStreamItNames) {
  void* p = allocator->allocate(3 * kMiB, s1);
  allocator->record_stream(p, Stream(0, s2));
  allocator->record_stream(p, Stream(0, s2));  // the same stream twice: one event
  allocator->record_stream(p, Stream(0, s3));
  allocator->record_stream(p, Stream(0, s1));  // its own stream: nothing to wait for
  allocator->free(p);
  EXPECT_EQ(state->records, 2);

  state->complete(Stream(0, s2));
  void* q = allocator->allocate(3 * kMiB, s1);
  EXPECT_NE(q, p);  // s3 is still behind
  state->complete(Stream(0, s3));
  EXPECT_EQ(allocator->allocate(3 * kMiB, s1), p);
  allocator->free(q);
}

TEST_F(CachingAllocatorTest, RecordStreamOnOtherDevicesUsesTheirEvents) {
  void* p = allocator->allocate(1000, s1);
  allocator->record_stream(p, Stream(1, s2));
  allocator->free(p);  // the fake checks the event was created on device 1
  ASSERT_EQ(state->events.size(), 1u);
  EXPECT_EQ(state->events[0]->device, 1);
}

TEST_F(CachingAllocatorTest, EventsAreReused) {
  for (int i = 0; i < 20; ++i) {
    void* p = allocator->allocate(1000, s1);
    allocator->record_stream(p, Stream(0, s2));
    allocator->free(p);
    state->complete(Stream(0, s2));
  }
  void* p = allocator->allocate(1000, s1);  // processes the last event
  allocator->free(p);
  EXPECT_EQ(state->records, 20);
  EXPECT_EQ(state->events_created, 1);
}

TEST_F(CachingAllocatorTest, UnknownPointersAreRefused) {
  int host = 0;
  EXPECT_FALSE(allocator->free(&host));
  EXPECT_FALSE(allocator->record_stream(&host, Stream(0, s2)));
  EXPECT_FALSE(allocator->owns(&host));
  void* p = allocator->allocate(100, s1);
  EXPECT_TRUE(allocator->owns(p));
  EXPECT_FALSE(allocator->owns(static_cast<char*>(p) + 512));  // inside a block is not a block
  EXPECT_TRUE(allocator->free(p));
  EXPECT_FALSE(allocator->free(p));  // double free
  EXPECT_FALSE(allocator->owns(p));
}

TEST_F(CachingAllocatorTest, OutOfMemoryFreesTheCacheAndRetries) {
  state->capacity = 8 * kMiB;
  void* cached = allocator->allocate(3 * kMiB, s1);  // 4 MiB segment
  allocator->free(cached);
  void* held = allocator->allocate(1000, s2);  // 2 MiB segment
  EXPECT_EQ(allocator->stats().reserved_bytes, int64_t(6 * kMiB));

  // 6 MiB does not fit next to 6 MiB reserved; dropping the cached 4 MiB makes room.
  void* big = allocator->allocate(6 * kMiB, s1);
  ASSERT_NE(big, nullptr);
  MemoryStats stats = allocator->stats();
  EXPECT_EQ(stats.num_device_allocs, 3);
  EXPECT_EQ(stats.num_device_frees, 1);
  EXPECT_EQ(stats.reserved_bytes, int64_t(8 * kMiB));
  EXPECT_EQ(stats.num_ooms, 0);
  EXPECT_EQ(state->synchronizes, 1);  // before handing cached memory back
  EXPECT_EQ(state->live.count(cached), 0u);
  allocator->free(held);
  allocator->free(big);
}

TEST_F(CachingAllocatorTest, OutOfMemoryAfterRetryThrowsWithStats) {
  state->capacity = 8 * kMiB;
  void* a = allocator->allocate(6 * kMiB, s1);
  void* b = allocator->allocate(1000, s1);
  try {
    allocator->allocate(3 * kMiB + 5, s1);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    EXPECT_EQ(e.requested_bytes, 3 * kMiB + 5);
    EXPECT_EQ(e.reserved_bytes, int64_t(8 * kMiB));
    const std::string message = e.what();
    EXPECT_NE(message.find("[device_alloc]"), std::string::npos) << message;
    EXPECT_NE(message.find("out of memory on cuda:0"), std::string::npos) << message;
    EXPECT_NE(message.find("4.00 MiB"), std::string::npos) << message;        // the segment
    EXPECT_NE(message.find("3145733 bytes"), std::string::npos) << message;   // the request
    EXPECT_NE(message.find("allocated 6.00 MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("reserved 8.00 MiB"), std::string::npos) << message;
  }
  MemoryStats stats = allocator->stats();
  EXPECT_EQ(stats.num_ooms, 1);
  EXPECT_EQ(stats.allocated_bytes, int64_t(6 * kMiB + 1024));
  EXPECT_EQ(stats.num_alloc_requests, 2);

  // The allocator is still usable: free something and the request succeeds.
  allocator->free(a);
  void* c = allocator->allocate(3 * kMiB + 5, s1);
  EXPECT_EQ(c, a);  // from the cached 6 MiB block, split (rest 2 MiB)
  allocator->free(b);
  allocator->free(c);
}

TEST_F(CachingAllocatorTest, OutOfMemoryWaitsForPendingBlocks) {
  state->capacity = 4 * kMiB;
  void* p = allocator->allocate(3 * kMiB, s1);
  allocator->record_stream(p, Stream(0, s2));
  allocator->free(p);
  // The event has not completed; only waiting for it (event_synchronize) frees the
  // segment, which the out-of-memory path does before giving up.
  void* q = allocator->allocate(4 * kMiB, s2);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(allocator->stats().num_device_frees, 1);
  EXPECT_EQ(allocator->stats().reserved_bytes, int64_t(4 * kMiB));
}

TEST_F(CachingAllocatorTest, HugeRequestsAreCallerMistakes) {
  try {
    allocator->allocate(size_t{1} << 60, s1);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[device_alloc] expected a size of at most 2^56 bytes, got 1152921504606846976"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(state->raw_allocs, 0);
}

TEST_F(CachingAllocatorTest, StatsPeaksAndEmptyCache) {
  void* a = allocator->allocate(5 * kMiB, s1);  // 6 MiB segment, unsplit
  void* b = allocator->allocate(100, s1);       // 2 MiB segment
  MemoryStats stats = allocator->stats();
  EXPECT_EQ(stats.allocated_bytes, int64_t(6 * kMiB + 512));
  EXPECT_EQ(stats.reserved_bytes, int64_t(8 * kMiB));
  EXPECT_EQ(stats.peak_allocated_bytes, int64_t(6 * kMiB + 512));
  EXPECT_EQ(stats.peak_reserved_bytes, int64_t(8 * kMiB));

  allocator->free(a);
  stats = allocator->stats();
  EXPECT_EQ(stats.allocated_bytes, 512);
  EXPECT_EQ(stats.peak_allocated_bytes, int64_t(6 * kMiB + 512));

  allocator->reset_peak_stats();
  stats = allocator->stats();
  EXPECT_EQ(stats.peak_allocated_bytes, 512);
  EXPECT_EQ(stats.peak_reserved_bytes, int64_t(8 * kMiB));  // reserved is still 8 MiB

  // empty_cache returns the unused 6 MiB segment, keeps the one b lives in.
  allocator->empty_cache();
  stats = allocator->stats();
  EXPECT_EQ(stats.reserved_bytes, int64_t(2 * kMiB));
  EXPECT_EQ(stats.num_device_frees, 1);
  EXPECT_EQ(state->live.size(), 1u);
  EXPECT_EQ(state->synchronizes, 1);
  allocator->reset_peak_stats();
  EXPECT_EQ(allocator->stats().peak_reserved_bytes, int64_t(2 * kMiB));

  allocator->free(b);
  allocator->empty_cache();
  stats = allocator->stats();
  EXPECT_EQ(stats.reserved_bytes, 0);
  EXPECT_EQ(stats.allocated_bytes, 0);
  EXPECT_EQ(stats.num_device_allocs, 2);
  EXPECT_EQ(stats.num_device_frees, 2);
  EXPECT_EQ(stats.num_alloc_requests, 2);
  EXPECT_TRUE(state->live.empty());

  allocator->empty_cache();  // nothing cached: no needless synchronisation
  EXPECT_EQ(state->synchronizes, 2);
}

TEST_F(CachingAllocatorTest, EmptyCacheWaitsForPendingBlocks) {
  void* p = allocator->allocate(1000, s1);
  allocator->record_stream(p, Stream(0, s2));
  allocator->free(p);
  allocator->empty_cache();
  EXPECT_EQ(allocator->stats().reserved_bytes, 0);
  EXPECT_TRUE(state->live.empty());
}

TEST_F(CachingAllocatorTest, DestructorReturnsEverything) {
  allocator->allocate(1000, s1);  // still held: the destructor frees the segment anyway
  void* p = allocator->allocate(7 * kMiB, s2);
  allocator->record_stream(p, Stream(0, s3));
  allocator->free(p);
  allocator->free(allocator->allocate(30 * kMiB, s1));
  allocator.reset();
  EXPECT_TRUE(state->live.empty());
  EXPECT_EQ(state->raw_frees, state->raw_allocs);
  EXPECT_EQ(state->events_destroyed, state->events_created);
}

// Random allocations and frees on three streams with random record_stream calls,
// checking after every step that live blocks never overlap, that the statistics
// match the blocks, that the backend holds exactly the reserved bytes, and that no
// two free blocks of a segment sit side by side (coalescing missed).
TEST_F(CachingAllocatorTest, RandomWorkloadKeepsInvariants) {
  std::mt19937_64 rng(1234);
  const cudaStream_t streams[] = {s1, s2, s3};
  struct Live {
    size_t size;
    unsigned char tag;
    cudaStream_t stream;
  };
  std::map<char*, Live> live;
  auto random_size = [&] {
    switch (rng() % 4) {
      case 0: return size_t(1 + rng() % 2048);
      case 1: return size_t(1 + rng() % kMiB);
      case 2: return size_t(kMiB + rng() % (4 * kMiB));
      default: return size_t(1 + rng() % (12 * kMiB));
    }
  };
  auto check = [&] {
    int64_t reserved = 0, allocated = 0;
    for (const SegmentSnapshot& segment : allocator->snapshot()) {
      reserved += int64_t(segment.size);
      // Every live block in the segment was allocated for the segment's stream.
      auto first = live.lower_bound(reinterpret_cast<char*>(segment.address));
      auto last = live.lower_bound(reinterpret_cast<char*>(segment.address + segment.size));
      for (auto it = first; it != last; ++it) ASSERT_EQ(it->second.stream, segment.stream);
      ASSERT_EQ(state->live.at(reinterpret_cast<void*>(segment.address)), segment.size);
      bool previous_free = false;
      for (const auto& block : segment.blocks) {
        const bool free = !block.allocated && !block.pending;
        ASSERT_FALSE(free && previous_free) << "adjacent free blocks were not merged";
        previous_free = free;
        if (block.allocated) allocated += int64_t(block.size);
      }
    }
    MemoryStats stats = allocator->stats();
    ASSERT_EQ(stats.reserved_bytes, reserved);
    ASSERT_EQ(size_t(reserved), state->used);
    ASSERT_EQ(stats.allocated_bytes, allocated);
    ASSERT_LE(stats.allocated_bytes, stats.peak_allocated_bytes);
    ASSERT_LE(stats.reserved_bytes, stats.peak_reserved_bytes);
    char* end = nullptr;
    for (auto& [ptr, info] : live) {
      ASSERT_GE(ptr, end) << "live blocks overlap";
      end = ptr + info.size;
      ASSERT_EQ((unsigned char)ptr[0], info.tag);
      ASSERT_EQ((unsigned char)ptr[info.size - 1], info.tag);
    }
  };

  for (int step = 0; step < 3000; ++step) {
    const unsigned action = rng() % 10;
    if (action < 4 || live.empty()) {
      const size_t size = random_size();
      const cudaStream_t stream = streams[rng() % 3];
      char* p = static_cast<char*>(allocator->allocate(size, stream));
      const auto tag = static_cast<unsigned char>(rng());
      p[0] = static_cast<char>(tag);
      p[size - 1] = static_cast<char>(tag);
      ASSERT_TRUE(live.emplace(p, Live{size, tag, stream}).second) << "handed out twice";
    } else if (action < 8) {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      if (rng() % 3 == 0) allocator->record_stream(it->first, Stream(0, streams[rng() % 3]));
      ASSERT_TRUE(allocator->free(it->first));
      live.erase(it);
    } else {
      state->complete(Stream(0, streams[rng() % 3]));
    }
    if (step % 500 == 250) allocator->empty_cache();
    check();
    if (HasFatalFailure()) return;
  }
  for (auto& [ptr, info] : live) allocator->free(ptr);
  allocator->empty_cache();
  EXPECT_EQ(allocator->stats().reserved_bytes, 0);
  EXPECT_EQ(allocator->stats().allocated_bytes, 0);
  EXPECT_TRUE(state->live.empty());
}

TEST_F(CachingAllocatorTest, ThreadsShareOneAllocator) {
  std::vector<std::thread> threads;
  for (uintptr_t t = 0; t < 4; ++t) {
    threads.emplace_back([this, t] {
      const cudaStream_t stream = fake_stream(10 + t);
      for (int i = 0; i < 2000; ++i) {
        const size_t size = 512 * (1 + (i * 7 + t) % 64);
        auto* p = static_cast<unsigned char*>(allocator->allocate(size, stream));
        std::memset(p, int(t), size);
        for (size_t k = 0; k < size; k += 511) ASSERT_EQ(p[k], t);  // nobody else wrote here
        allocator->free(p);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  MemoryStats stats = allocator->stats();
  EXPECT_EQ(stats.allocated_bytes, 0);
  EXPECT_EQ(stats.num_alloc_requests, 8000);
  EXPECT_EQ(stats.num_device_allocs, 4);  // one small segment per stream
}

// ---- the public runtime API without a device ----------------------------------------

// ---- private pools for CUDA graph captures -------------------------------------------

/// The private pool of the segment holding `ptr` (0: the shared cache), -1 if none does.
int64_t pool_of(const CachingAllocator& allocator, const void* ptr) {
  const auto address = reinterpret_cast<uintptr_t>(ptr);
  for (const SegmentSnapshot& segment : allocator.snapshot())
    if (address >= segment.address && address < segment.address + segment.size) return static_cast<int64_t>(segment.pool);
  return -1;
}

TEST_F(CachingAllocatorTest, CaptureAllocatesFromItsPrivatePoolOnly) {
  void* shared = allocator->allocate(kKiB, s1);
  allocator->free(shared);  // a free block on s1 in the shared cache
  const int64_t raw_before = state->raw_allocs;

  state->capturing[s1] = 7;
  allocator->begin_allocate_to_pool(/*pool=*/1, /*capture_id=*/7);
  void* a = allocator->allocate(kKiB, s1);
  EXPECT_NE(a, shared) << "a capture must not take blocks of the shared cache";
  EXPECT_EQ(state->raw_allocs, raw_before + 1);
  EXPECT_EQ(pool_of(*allocator, a), 1);
  allocator->free(a);
  void* b = allocator->allocate(kKiB, s1);  // freed in the capture: reused in capture order
  EXPECT_EQ(b, a);
  void* other = allocator->allocate(kKiB, s2);  // s2 takes no part in the capture
  EXPECT_EQ(pool_of(*allocator, other), 0);
  allocator->end_allocate_to_pool(1);
  state->capturing.clear();

  // After the capture the private blocks stay out of everyone else's reach, free or not.
  allocator->free(b);
  void* eager = allocator->allocate(kKiB, s1);
  EXPECT_EQ(eager, shared);
  void* eager2 = allocator->allocate(kKiB, s1);
  EXPECT_EQ(pool_of(*allocator, eager2), 0);
  EXPECT_NE(eager2, a);
  for (void* p : {eager, eager2, other}) allocator->free(p);
  allocator->release_pool(1);
}

TEST_F(CachingAllocatorTest, ReleasedPoolReturnsSegmentsWhenTheirBlocksAreFree) {
  state->capturing[s1] = 3;
  allocator->begin_allocate_to_pool(5, 3);
  void* big = allocator->allocate(4 * kMiB, s1);  // outlives the graph, as a static output would
  void* small = allocator->allocate(kKiB, s1);
  allocator->free(small);
  allocator->end_allocate_to_pool(5);
  state->capturing.clear();
  EXPECT_EQ(state->live.size(), 2u);

  allocator->empty_cache();  // the graph still holds the pool: nothing goes
  EXPECT_EQ(state->live.size(), 2u);
  const int64_t syncs = state->synchronizes;
  allocator->release_pool(5);
  EXPECT_EQ(state->live.size(), 1u) << "the free segment goes back at release";
  EXPECT_GT(state->synchronizes, syncs) << "after the graph's last replay has finished";
  allocator->free(big);
  EXPECT_TRUE(state->live.empty()) << "the last block of a released pool takes its segment with it";
  EXPECT_EQ(allocator->stats().reserved_bytes, 0);
  EXPECT_THROW(allocator->release_pool(5), std::logic_error);
}

TEST_F(CachingAllocatorTest, PoolSharedByTwoGraphsLivesUntilBothRelease) {
  for (uint64_t capture : {11u, 12u}) {
    state->capturing[s1] = capture;
    allocator->begin_allocate_to_pool(2, capture);
    allocator->free(allocator->allocate(kKiB, s1));
    allocator->end_allocate_to_pool(2);
  }
  state->capturing.clear();
  EXPECT_EQ(state->live.size(), 1u) << "the second capture reused the first one's freed block";
  allocator->release_pool(2);
  EXPECT_EQ(state->live.size(), 1u);
  allocator->release_pool(2);
  EXPECT_TRUE(state->live.empty());
}

TEST_F(CachingAllocatorTest, CaptureNeitherQueriesEventsNorFrees) {
  void* used_elsewhere = allocator->allocate(kKiB, s1);
  allocator->record_stream(used_elsewhere, Stream(0, s2));
  void* cached = allocator->allocate(4 * kMiB, s1);
  allocator->free(cached);

  state->capturing[s1] = 9;
  allocator->begin_allocate_to_pool(4, 9);
  const int64_t queries = state->queries, records = state->records, frees = state->raw_frees;
  void* a = allocator->allocate(kKiB, s1);
  allocator->record_stream(a, Stream(0, s2));
  allocator->free(a);  // would need an event on s2: deferred to the end of the capture
  EXPECT_EQ(blocks_of(a).front(), std::make_pair(kKiB, 'P')) << "a deferred free is not reusable";
  void* b = allocator->allocate(kKiB, s1);
  EXPECT_NE(b, a) << "a block waiting for another stream is not reused";
  allocator->free(used_elsewhere);
  allocator->empty_cache();
  EXPECT_EQ(state->queries, queries);
  EXPECT_EQ(state->records, records);
  EXPECT_EQ(state->raw_frees, frees);
  allocator->free(b);
  allocator->end_allocate_to_pool(4);
  state->capturing.clear();
  EXPECT_EQ(state->records, records + 2) << "both deferred frees record their event on s2 after the capture";
  allocator->release_pool(4);
}

TEST_F(CachingAllocatorTest, CaptureElsewhereKeepsThisCacheStillToo) {
  // Pinned memory, or another device's cache, while some device captures: the
  // capturing thread may call in, so nothing may query or record events or free.
  void* used_elsewhere = allocator->allocate(kKiB, s1);
  allocator->record_stream(used_elsewhere, Stream(0, s2));
  allocator->free(allocator->allocate(4 * kMiB, s1));
  allocator->note_capture_begin();
  const int64_t queries = state->queries, records = state->records;
  allocator->free(used_elsewhere);
  allocator->free(allocator->allocate(kKiB, s1));
  allocator->empty_cache();
  EXPECT_EQ(state->queries, queries);
  EXPECT_EQ(state->records, records);
  EXPECT_EQ(state->raw_frees, 0);
  allocator->note_capture_end();
  EXPECT_EQ(state->records, records + 1) << "the deferred free records its event once the capture is over";
  allocator->empty_cache();
  EXPECT_EQ(state->raw_frees, 2) << "both segments: empty_cache waits for the deferred free's event now";
}

TEST_F(CachingAllocatorTest, OutOfMemoryDuringACaptureKeepsTheCache) {
  state->capacity = 8 * kMiB;
  allocator->free(allocator->allocate(6 * kMiB, s1));
  state->capturing[s2] = 1;
  allocator->begin_allocate_to_pool(1, 1);
  const int64_t syncs = state->synchronizes;
  try {
    allocator->allocate(4 * kMiB, s2);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    EXPECT_NE(std::string(e.what()).find("during a CUDA graph capture"), std::string::npos) << e.what();
  }
  EXPECT_EQ(state->synchronizes, syncs);
  EXPECT_EQ(state->raw_frees, 0);
  allocator->end_allocate_to_pool(1);
  allocator->release_pool(1);
}

TEST_F(CachingAllocatorTest, CaptureArgumentErrors) {
  EXPECT_THROW(allocator->begin_allocate_to_pool(0, 1), std::invalid_argument);
  EXPECT_THROW(allocator->begin_allocate_to_pool(1, 0), std::invalid_argument);
  allocator->begin_allocate_to_pool(1, 1);
  EXPECT_THROW(allocator->begin_allocate_to_pool(2, 1), std::logic_error);  // one pool per capture
  EXPECT_THROW(allocator->begin_allocate_to_pool(1, 2), std::logic_error);  // one capture at a time per pool
  allocator->end_allocate_to_pool(1);
  allocator->release_pool(1);
  EXPECT_THROW(allocator->release_pool(3), std::logic_error);
  EXPECT_THROW(allocator->note_capture_end(), std::logic_error);
  CachingAllocator uncached(std::make_unique<FakeBackend>(state), "cuda:0", "device_alloc", /*caching=*/false);
  try {
    uncached.begin_allocate_to_pool(1, 1);
    FAIL() << "expected std::logic_error";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("TANDEM_CUDA_CACHING_ALLOCATOR"), std::string::npos) << e.what();
  }
}

TEST(CudaRuntimeWithoutDevice, ReportsNoDeviceAndWhy) {
  if (is_available()) GTEST_SKIP() << "a CUDA device is present; tests/test_cuda_runtime.cpp covers it";
  EXPECT_EQ(device_count(), 0);
  EXPECT_FALSE(is_available());
  const std::string reason = unavailable_reason();
  EXPECT_FALSE(reason.empty());
  // Either the build has no CUDA, or the runtime said why (e.g. no driver: error 35).
  EXPECT_TRUE(reason.find("built without CUDA") != std::string::npos ||
              reason.find("cudaGetDeviceCount") != std::string::npos)
      << reason;
}

TEST(CudaRuntimeWithoutDevice, DeviceFunctionsThrowNamingTheReason) {
  if (is_available()) GTEST_SKIP() << "a CUDA device is present";
  const std::string reason = unavailable_reason();
  auto expect_invalid = [&](auto&& call, const std::string& op) {
    try {
      call();
      ADD_FAILURE() << op << " did not throw";
    } catch (const std::invalid_argument& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("[" + op + "]"), std::string::npos) << message;
      EXPECT_NE(message.find("expected a CUDA device"), std::string::npos) << message;
      EXPECT_NE(message.find(reason), std::string::npos) << message;
    }
  };
  expect_invalid([] { check_device(0, "my_op"); }, "my_op");
  expect_invalid([] { device_alloc(0, 16); }, "device_alloc");
  expect_invalid([] { memory_stats(0); }, "memory_stats");
  expect_invalid([] { current_stream(0); }, "current_stream");
  expect_invalid([] { pool_stream(0, true); }, "pool_stream");
  expect_invalid([] { DeviceGuard guard(0); }, "DeviceGuard");
  expect_invalid([] { pinned_alloc(16); }, "pinned_alloc");
  expect_invalid([] { synchronize(0); }, "synchronize");
  int host = 0;
  EXPECT_THROW(device_free(&host), std::invalid_argument);
  EXPECT_THROW(pinned_free(&host), std::invalid_argument);
  // Nothing to do is not an error.
  EXPECT_NO_THROW(device_free(nullptr));
  EXPECT_NO_THROW(pinned_free(nullptr));
  EXPECT_NO_THROW(empty_cache());
  Event event;
  EXPECT_TRUE(event.query());
  EXPECT_FALSE(event.recorded());
}

}  // namespace
}  // namespace tandem::cuda
