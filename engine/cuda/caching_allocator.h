// The caching allocator's policy, separate from the driver: size rounding, segments,
// per-stream best-fit pools, block splitting and coalescing, record_stream deferral,
// private pools for CUDA graph captures, and statistics. It talks to memory and events only through AllocatorBackend, so
// the same code serves device memory (cudaMalloc), pinned host memory (cudaHostAlloc)
// and the tests, which drive it with a fake host-memory backend and no GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/cuda/runtime.h"
#include "kernels/cuda/stream.h"

namespace tandem::cuda {

/// What the allocator needs from the driver. All calls come with the allocator's
/// lock held, so a backend needs no locking of its own.
class AllocatorBackend {
 public:
  virtual ~AllocatorBackend() = default;
  /// A new segment of `nbytes`, or nullptr when the memory is exhausted (other
  /// failures throw).
  virtual void* raw_alloc(size_t nbytes) = 0;
  virtual void raw_free(void* ptr) = 0;
  /// Waits until no queued work can touch cached segments, before they are freed.
  virtual void synchronize() = 0;
  /// A new event on `device` (timing disabled).
  virtual cudaEvent_t event_create(int device) = 0;
  virtual void event_record(cudaEvent_t event, Stream stream) = 0;
  /// True when the work before the event's last record has finished.
  virtual bool event_query(cudaEvent_t event) = 0;
  virtual void event_synchronize(cudaEvent_t event) = 0;
  virtual void event_destroy(cudaEvent_t event) = 0;
  /// The id of the CUDA graph capture that `stream` takes part in, 0 when it is not
  /// capturing (asked only while some capture routes allocations to a private pool).
  virtual uint64_t capture_id(cudaStream_t /*stream*/) { return 0; }
};


/// One segment as seen by snapshot(): its blocks in address order.
struct SegmentSnapshot {
  struct BlockInfo {
    size_t size = 0;
    bool allocated = false;  // held by a caller
    bool pending = false;    // freed, waiting for record_stream events (or for a capture to end)
  };
  uintptr_t address = 0;
  size_t size = 0;
  cudaStream_t stream = nullptr;
  bool small = false;    // from the small pool (2 MiB segments)
  MempoolId pool = 0;    // the private pool it belongs to, 0 for the shared cache
  std::vector<BlockInfo> blocks;
};

/// A caching allocator for one device (or for pinned host memory). Thread-safe.
class CachingAllocator {
 public:
  static constexpr size_t kMinBlockSize = 512;             // every size is rounded to a multiple of this
  static constexpr size_t kSmallSize = 1 << 20;            // requests up to 1 MiB use the small pool
  static constexpr size_t kSmallSegment = 2 << 20;         // small pool segments are 2 MiB
  static constexpr size_t kLargeRound = 2 << 20;           // large segments are multiples of 2 MiB
  static constexpr size_t kMaxRequest = size_t{1} << 56;  // larger requests are caller mistakes

  /// `name` appears in errors ("cuda:0", "pinned host memory"); `op` is the public
  /// entry point named in them ("device_alloc", "pinned_alloc"). With `caching`
  /// false every request gets a segment of exactly its size, returned to the backend
  /// as soon as it is free (after any record_stream events), so memory checkers see
  /// every out-of-bounds access; for debugging only.
  CachingAllocator(std::unique_ptr<AllocatorBackend> backend, std::string name, std::string op,
                   bool caching = true);
  /// Returns every segment (cached or still allocated) and event to the backend.
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  /// nbytes rounded up to a multiple of kMinBlockSize (at least one block).
  static size_t round_size(size_t nbytes);
  /// Size of the segment obtained from the backend for a rounded request.
  static size_t segment_size(size_t rounded);

  /// A block of at least `nbytes` (nullptr for 0) that may be used on `stream`.
  /// Throws std::runtime_error (naming size and stats) when memory is exhausted even
  /// after returning the cache to the backend.
  void* allocate(size_t nbytes, cudaStream_t stream);
  /// Returns `ptr` to the cache; false (and nothing happens) if it is not a live
  /// block of this allocator.
  bool free(void* ptr);
  /// Marks `ptr` as used on `stream` too; false if it is not a live block here.
  bool record_stream(void* ptr, Stream stream);
  /// True if `ptr` is a live block of this allocator.
  bool owns(void* ptr) const;

  /// Waits for pending record_stream events, then frees every unused segment.
  void empty_cache();
  MemoryStats stats() const;
  /// Peaks restart from the current values.
  void reset_peak_stats();
  /// The segments in address order, for tests and debugging.
  std::vector<SegmentSnapshot> snapshot() const;

  // ---- CUDA graphs ----------------------------------------------------------------
  // A graph replays its kernels on the addresses they had at capture, so the memory a
  // capture allocates must stay out of everyone else's reach while the graph lives:
  // it comes from a private pool, whose freed blocks only later allocations of
  // captures into the same pool reuse (in capture order, which replay repeats).

  /// Routes allocations on streams taking part in capture `capture_id`
  /// (AllocatorBackend::capture_id) to private pool `pool` (made on first use) until
  /// end_allocate_to_pool. Each call counts as one user of the pool (a graph), undone by
  /// release_pool. While any capture is routed, nothing waits for or queries events
  /// (illegal while capturing): frees that need record_stream events are deferred to
  /// the end of the capture, and no segment goes back to the backend. Throws
  /// std::logic_error when caching is off (there is then no pool to keep).
  void begin_allocate_to_pool(MempoolId pool, uint64_t capture_id);
  /// Stops routing the capture of `pool`.
  void end_allocate_to_pool(MempoolId pool);
  /// A capture this allocator routes nothing for is in progress (on another device, or
  /// any capture for the pinned-memory cache): the thread capturing may still call in,
  /// so behave as during an own capture (no event queries or records, no frees) until
  /// the matching note_capture_end.
  void note_capture_begin();
  void note_capture_end();
  /// One user of `pool` (a graph) is gone; when none is left, the pool's segments go
  /// back to the backend as soon as all their blocks are free (tensors allocated in the
  /// capture may outlive the graph).
  void release_pool(MempoolId pool);

 private:
  struct Block;
  struct PrivatePool;
  // Pools order blocks by (stream, size, address): lower_bound on (stream, size)
  // finds the best fit on that stream, and blocks of other streams are never seen.
  struct BlockOrder {
    bool operator()(const Block* a, const Block* b) const;
  };
  using Pool = std::set<Block*, BlockOrder>;
  struct PendingEvent {
    cudaEvent_t event;
    int device;
    Block* block;
  };

  Block* find_free_block(Pool& pool, cudaStream_t stream, size_t size);
  /// The pool a block of `small` size for `owner` (null: the shared cache) goes to.
  Pool& pool_for(bool small, PrivatePool* owner);
  /// The private pool that allocations on `stream` are routed to now, or null.
  PrivatePool* routed_pool(cudaStream_t stream);
  /// Frees the segments of released private pools whose blocks are all free.
  void release_unused_private_segments();
  /// Returns to the backend every segment whose blocks are all free: of the shared cache
  /// and released private pools, or (`released_pools_only`) of released pools alone.
  void free_whole_segments(bool released_pools_only);
  /// Records the record_stream events of frees deferred during captures.
  void process_deferred_frees();
  bool capturing() const { return !routes_.empty() || foreign_captures_ > 0; }
  void* alloc_segment(size_t size, size_t requested);
  void split_block(Block* block, size_t size, Pool& pool);
  void free_block(Block* block);
  /// Records events for the streams that used a freed block, then pools it (at once,
  /// or when the events have passed).
  void return_block(Block* block);
  void process_events();
  void synchronize_events();
  void release_cached_segments();
  cudaEvent_t take_event(int device);
  std::string stats_text() const;
  void update_peaks();

  std::unique_ptr<AllocatorBackend> backend_;
  std::string name_;
  std::string op_;
  bool caching_;
  mutable std::mutex mutex_;
  Pool small_pool_;
  Pool large_pool_;
  std::unordered_map<void*, Block*> live_blocks_;
  // First block of every segment, by address. Merges keep the lower block, so a
  // segment's first block lives as long as the segment.
  std::map<uintptr_t, Block*> segments_;
  std::deque<PendingEvent> pending_events_;
  std::map<MempoolId, std::unique_ptr<PrivatePool>> private_pools_;
  std::vector<std::pair<uint64_t, PrivatePool*>> routes_;  // (capture id, pool) being captured
  std::vector<Block*> deferred_frees_;  // freed during a capture, events still to record
  int foreign_captures_ = 0;             // note_capture_begin calls not yet ended
  std::unordered_map<int, std::vector<cudaEvent_t>> spare_events_;  // by device, for reuse
  MemoryStats stats_;
};

}  // namespace tandem::cuda
