// The caching allocator's policy (see caching_allocator.h). Plain host C++: it never
// calls CUDA itself, which is why it builds, and is tested, without the toolkit.
#include "engine/cuda/caching_allocator.h"

#include "engine/storage.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <utility>

namespace tandem::cuda {

// A block is a piece of a segment. The blocks of one segment form a doubly linked
// list in address order, so a freed block can merge with free neighbours.
struct CachingAllocator::Block {
  Block() = default;
  Block(char* ptr_in, size_t size_in, cudaStream_t stream_in, bool small_in)
      : ptr(ptr_in), size(size_in), stream(stream_in), small(small_in) {}

  char* ptr = nullptr;
  size_t size = 0;
  cudaStream_t stream = nullptr;  // the stream it was allocated for: the pool it returns to
  bool small = false;             // lives in the small pool
  bool allocated = false;
  int pending_events = 0;  // record_stream events still to complete before reuse
  bool deferred = false;   // freed during a capture; its events are recorded when it ends
  PrivatePool* owner = nullptr;  // the private pool of its segment, null for the shared cache
  Block* prev = nullptr;
  Block* next = nullptr;
  std::vector<Stream> stream_uses;  // other streams that used it (record_stream)

  // A block that is neither held nor waiting for events is in its pool.
  bool in_pool() const { return !allocated && pending_events == 0 && !deferred; }
  // The only block of its segment, and free: the segment can go back to the backend.
  bool whole_free_segment() const { return in_pool() && prev == nullptr && next == nullptr; }
};

// A pool private to CUDA graphs: its segments serve only allocations routed to it.
struct CachingAllocator::PrivatePool {
  explicit PrivatePool(MempoolId id_in) : id(id_in) {}
  MempoolId id;
  Pool small;
  Pool large;
  int users = 0;          // graphs holding it: begin_allocate_to_pool calls not yet released
  int64_t segments = 0;   // segments it holds
};

bool CachingAllocator::BlockOrder::operator()(const Block* a, const Block* b) const {
  auto sa = reinterpret_cast<uintptr_t>(a->stream), sb = reinterpret_cast<uintptr_t>(b->stream);
  if (sa != sb) return sa < sb;
  if (a->size != b->size) return a->size < b->size;
  return reinterpret_cast<uintptr_t>(a->ptr) < reinterpret_cast<uintptr_t>(b->ptr);
}

CachingAllocator::CachingAllocator(std::unique_ptr<AllocatorBackend> backend, std::string name, std::string op,
                                   bool caching)
    : backend_(std::move(backend)), name_(std::move(name)), op_(std::move(op)), caching_(caching) {}

CachingAllocator::~CachingAllocator() {
  // Only tests destroy allocators (the process-wide ones are never destroyed, so no
  // cudaFree runs after the CUDA runtime has shut down).
  synchronize_events();
  if (!segments_.empty()) backend_->synchronize();
  for (auto& [address, head] : segments_) {
    backend_->raw_free(head->ptr);
    for (Block* block = head; block != nullptr;) {
      Block* next = block->next;
      delete block;
      block = next;
    }
  }
  for (auto& [device, events] : spare_events_)
    for (cudaEvent_t event : events) backend_->event_destroy(event);
}

size_t CachingAllocator::round_size(size_t nbytes) {
  if (nbytes < kMinBlockSize) return kMinBlockSize;
  return (nbytes + kMinBlockSize - 1) / kMinBlockSize * kMinBlockSize;
}

size_t CachingAllocator::segment_size(size_t rounded) {
  if (rounded <= kSmallSize) return kSmallSegment;
  return (rounded + kLargeRound - 1) / kLargeRound * kLargeRound;
}

void* CachingAllocator::allocate(size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return nullptr;
  if (nbytes > kMaxRequest)
    throw std::invalid_argument("[" + op_ + "] expected a size of at most 2^56 bytes, got " + std::to_string(nbytes));
  std::lock_guard<std::mutex> lock(mutex_);
  // Blocks freed after use on other streams become reusable here, once those
  // streams have passed the events recorded at the free (not while capturing:
  // querying events then is illegal).
  PrivatePool* owner = capturing() ? routed_pool(stream) : nullptr;
  if (!capturing()) process_events();

  if (!caching_) {
    Block* block = new Block(static_cast<char*>(alloc_segment(nbytes, nbytes)), nbytes, stream, /*small=*/false);
    segments_.emplace(reinterpret_cast<uintptr_t>(block->ptr), block);
    block->allocated = true;
    live_blocks_.emplace(block->ptr, block);
    stats_.allocated_bytes += static_cast<int64_t>(block->size);
    stats_.num_alloc_requests += 1;
    update_peaks();
    return block->ptr;
  }
  const size_t size = round_size(nbytes);
  const bool small = size <= kSmallSize;
  Pool& pool = pool_for(small, owner);
  Block* block = find_free_block(pool, stream, size);
  if (block == nullptr) {
    const size_t seg = segment_size(size);
    void* ptr = alloc_segment(seg, nbytes);
    block = new Block(static_cast<char*>(ptr), seg, stream, small);
    block->owner = owner;
    if (owner != nullptr) owner->segments += 1;
    segments_.emplace(reinterpret_cast<uintptr_t>(ptr), block);
  }
  // Keep the tail as a separate free block only when it is worth it: any whole
  // 512 B in the small pool, more than 1 MiB in the large one (a smaller tail
  // would only be useful to requests that belong to the small pool anyway).
  const size_t rest = block->size - size;
  if (small ? rest >= kMinBlockSize : rest > kSmallSize) split_block(block, size, pool);

  block->allocated = true;
  live_blocks_.emplace(block->ptr, block);
  stats_.allocated_bytes += static_cast<int64_t>(block->size);
  stats_.num_alloc_requests += 1;
  update_peaks();
  return block->ptr;
}

CachingAllocator::Pool& CachingAllocator::pool_for(bool small, PrivatePool* owner) {
  if (owner != nullptr) return small ? owner->small : owner->large;
  return small ? small_pool_ : large_pool_;
}

CachingAllocator::PrivatePool* CachingAllocator::routed_pool(cudaStream_t stream) {
  const uint64_t id = backend_->capture_id(stream);
  if (id == 0) return nullptr;
  for (const auto& [capture, pool] : routes_)
    if (capture == id) return pool;
  return nullptr;
}

CachingAllocator::Block* CachingAllocator::find_free_block(Pool& pool, cudaStream_t stream, size_t size) {
  Block key;
  key.stream = stream;
  key.size = size;
  auto it = pool.lower_bound(&key);
  if (it == pool.end() || (*it)->stream != stream) return nullptr;
  Block* block = *it;
  pool.erase(it);
  return block;
}

void* CachingAllocator::alloc_segment(size_t size, size_t requested) {
  void* ptr = backend_->raw_alloc(size);
  if (ptr == nullptr && !capturing()) {
    // Cached but unused segments may be what stands in the way (fragments of
    // other sizes, or other streams' pools): give them back and try once more.
    // Not during a capture, where neither synchronising nor freeing is allowed.
    release_cached_segments();
    ptr = backend_->raw_alloc(size);
  }
  if (ptr == nullptr) {
    stats_.num_ooms += 1;
    throw OutOfMemoryError("[" + op_ + "] out of memory on " + name_ + ": could not allocate a segment of " +
                               format_bytes(static_cast<int64_t>(size)) + " for a request of " +
                               std::to_string(requested) + " bytes, " +
                               (capturing() ? "during a CUDA graph capture (the cache cannot be freed then); "
                                            : "even after freeing the cache; ") +
                               stats_text(),
                           requested, stats_.allocated_bytes, stats_.reserved_bytes);
  }
  stats_.reserved_bytes += static_cast<int64_t>(size);
  stats_.num_device_allocs += 1;
  update_peaks();
  return ptr;
}

void CachingAllocator::split_block(Block* block, size_t size, Pool& pool) {
  Block* rest = new Block(block->ptr + size, block->size - size, block->stream, block->small);
  rest->owner = block->owner;
  rest->prev = block;
  rest->next = block->next;
  if (rest->next != nullptr) rest->next->prev = rest;
  block->next = rest;
  block->size = size;
  pool.insert(rest);
}

bool CachingAllocator::free(void* ptr) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_blocks_.find(ptr);
  if (it == live_blocks_.end()) return false;
  Block* block = it->second;
  live_blocks_.erase(it);
  block->allocated = false;
  stats_.allocated_bytes -= static_cast<int64_t>(block->size);
  if (capturing() && !block->stream_uses.empty()) {
    // An event recorded now on a stream under capture would become part of the
    // graph: the block waits, out of every pool, until the capture ends.
    block->deferred = true;
    deferred_frees_.push_back(block);
    return true;
  }
  return_block(block);
  return true;
}

void CachingAllocator::return_block(Block* block) {
  // Other streams may still be reading or writing the block: record an event on
  // each, and reuse the block only when all have completed (process_events). Its
  // own stream needs nothing, as the next user of the block on it is queued after.
  std::vector<PendingEvent> events;
  for (const Stream& stream : block->stream_uses) {
    cudaEvent_t event = take_event(stream.device());
    events.push_back({event, stream.device(), block});
    backend_->event_record(event, stream);
  }
  block->stream_uses.clear();
  if (events.empty()) {
    free_block(block);
  } else {
    block->pending_events = static_cast<int>(events.size());
    pending_events_.insert(pending_events_.end(), events.begin(), events.end());
  }
}

void CachingAllocator::free_block(Block* block) {
  if (!caching_) {
    // Segments are never split in this mode; cudaFree waits for queued work itself.
    segments_.erase(reinterpret_cast<uintptr_t>(block->ptr));
    backend_->raw_free(block->ptr);
    stats_.reserved_bytes -= static_cast<int64_t>(block->size);
    stats_.num_device_frees += 1;
    delete block;
    return;
  }
  Pool& pool = pool_for(block->small, block->owner);
  // Merge with free neighbours of the same segment (the lower block survives, so
  // a segment's first block never goes away).
  if (Block* next = block->next; next != nullptr && next->in_pool()) {
    pool.erase(next);
    block->size += next->size;
    block->next = next->next;
    if (block->next != nullptr) block->next->prev = block;
    delete next;
  }
  if (Block* prev = block->prev; prev != nullptr && prev->in_pool()) {
    pool.erase(prev);  // before its size, part of the pool's key, changes
    prev->size += block->size;
    prev->next = block->next;
    if (prev->next != nullptr) prev->next->prev = prev;
    delete block;
    block = prev;
  }
  pool.insert(block);
  // The last block of a released private pool's segment: nothing can use it again.
  if (block->owner != nullptr && block->owner->users == 0 && block->whole_free_segment() && !capturing())
    release_unused_private_segments();
}

bool CachingAllocator::record_stream(void* ptr, Stream stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_blocks_.find(ptr);
  if (it == live_blocks_.end()) return false;
  Block* block = it->second;
  if (stream.handle() == block->stream) return true;
  auto& uses = block->stream_uses;
  if (std::find(uses.begin(), uses.end(), stream) == uses.end()) uses.push_back(stream);
  return true;
}

bool CachingAllocator::owns(void* ptr) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_blocks_.count(ptr) != 0;
}

void CachingAllocator::process_events() {
  for (auto it = pending_events_.begin(); it != pending_events_.end();) {
    if (!backend_->event_query(it->event)) {
      ++it;
      continue;
    }
    spare_events_[it->device].push_back(it->event);
    if (--it->block->pending_events == 0) free_block(it->block);
    it = pending_events_.erase(it);
  }
}

void CachingAllocator::synchronize_events() {
  for (const PendingEvent& pending : pending_events_) {
    backend_->event_synchronize(pending.event);
    spare_events_[pending.device].push_back(pending.event);
    if (--pending.block->pending_events == 0) free_block(pending.block);
  }
  pending_events_.clear();
}

cudaEvent_t CachingAllocator::take_event(int device) {
  auto& spare = spare_events_[device];
  if (spare.empty()) return backend_->event_create(device);
  cudaEvent_t event = spare.back();
  spare.pop_back();
  return event;
}

void CachingAllocator::release_cached_segments() {
  synchronize_events();
  free_whole_segments(/*released_pools_only=*/false);
}

void CachingAllocator::release_unused_private_segments() { free_whole_segments(/*released_pools_only=*/true); }

void CachingAllocator::free_whole_segments(bool released_pools_only) {
  std::vector<Block*> unused;
  for (auto& [address, head] : segments_) {
    // A private pool's segments stay while a graph holds the pool.
    const bool released = head->owner != nullptr && head->owner->users == 0;
    const bool held = head->owner != nullptr && !released;
    if ((released_pools_only ? released : !held) && head->whole_free_segment()) unused.push_back(head);
  }
  if (unused.empty()) return;
  // A cached block may still be read by work queued on its own stream before the
  // free (or by a graph's last replay); make sure all of it has finished before the
  // memory goes back.
  backend_->synchronize();
  for (Block* head : unused) {
    pool_for(head->small, head->owner).erase(head);
    segments_.erase(reinterpret_cast<uintptr_t>(head->ptr));
    backend_->raw_free(head->ptr);
    stats_.reserved_bytes -= static_cast<int64_t>(head->size);
    stats_.num_device_frees += 1;
    if (PrivatePool* owner = head->owner; owner != nullptr && --owner->segments == 0) private_pools_.erase(owner->id);
    delete head;
  }
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  // During a capture nothing may be synchronised or freed; the cache stays.
  if (capturing()) return;
  release_cached_segments();
}

void CachingAllocator::begin_allocate_to_pool(MempoolId pool, uint64_t capture_id) {
  if (pool == 0) throw std::invalid_argument("[" + op_ + "] expected a private pool id > 0, got 0");
  if (capture_id == 0) throw std::invalid_argument("[" + op_ + "] expected a capture id > 0, got 0");
  std::lock_guard<std::mutex> lock(mutex_);
  if (!caching_) {
    throw std::logic_error("[" + op_ + "] CUDA graph capture needs the caching allocator on " + name_ +
                           ", which TANDEM_CUDA_CACHING_ALLOCATOR=0 turned off");
  }
  for (const auto& [capture, routed] : routes_) {
    if (capture == capture_id)
      throw std::logic_error("[" + op_ + "] capture " + std::to_string(capture_id) + " already allocates to pool " +
                             std::to_string(routed->id));
    // Two captures interleaving their allocations in one pool would hand each other
    // blocks the other's replay still writes.
    if (routed->id == pool)
      throw std::logic_error("[" + op_ + "] pool " + std::to_string(pool) + " already serves capture " +
                             std::to_string(capture) + "; captures sharing a pool must run one after another");
  }
  std::unique_ptr<PrivatePool>& entry = private_pools_[pool];
  if (entry == nullptr) entry = std::make_unique<PrivatePool>(pool);
  entry->users += 1;
  routes_.emplace_back(capture_id, entry.get());
}

void CachingAllocator::note_capture_begin() {
  std::lock_guard<std::mutex> lock(mutex_);
  foreign_captures_ += 1;
}

void CachingAllocator::note_capture_end() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (foreign_captures_ == 0) throw std::logic_error("[" + op_ + "] note_capture_end without note_capture_begin");
  foreign_captures_ -= 1;
  if (!capturing()) process_deferred_frees();
}

void CachingAllocator::end_allocate_to_pool(MempoolId pool) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::erase_if(routes_, [pool](const auto& route) { return route.second->id == pool; });
  if (!capturing()) process_deferred_frees();
}

void CachingAllocator::release_pool(MempoolId pool) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = private_pools_.find(pool);
  if (it == private_pools_.end() || it->second->users == 0)
    throw std::logic_error("[" + op_ + "] release_pool of pool " + std::to_string(pool) + ", which no graph holds");
  PrivatePool* owner = it->second.get();
  owner->users -= 1;
  if (owner->users > 0) return;
  std::erase_if(routes_, [owner](const auto& route) { return route.second == owner; });
  if (owner->segments == 0) {
    private_pools_.erase(it);
    return;
  }
  if (!capturing()) {
    process_deferred_frees();
    release_unused_private_segments();
  }
}

void CachingAllocator::process_deferred_frees() {
  std::vector<Block*> blocks;
  blocks.swap(deferred_frees_);
  for (Block* block : blocks) {
    block->deferred = false;
    return_block(block);
  }
}

MemoryStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

std::vector<SegmentSnapshot> CachingAllocator::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<SegmentSnapshot> result;
  for (const auto& [address, head] : segments_) {
    SegmentSnapshot segment;
    segment.address = address;
    segment.stream = head->stream;
    segment.small = head->small;
    segment.pool = head->owner != nullptr ? head->owner->id : 0;
    for (const Block* block = head; block != nullptr; block = block->next) {
      segment.size += block->size;
      segment.blocks.push_back({block->size, block->allocated, block->pending_events > 0 || block->deferred});
    }
    result.push_back(std::move(segment));
  }
  return result;
}

std::string CachingAllocator::stats_text() const {
  return "allocated " + format_bytes(stats_.allocated_bytes) + ", reserved " + format_bytes(stats_.reserved_bytes) +
         " (" + std::to_string(stats_.num_device_allocs - stats_.num_device_frees) + " segments)";
}

void CachingAllocator::update_peaks() {
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
}

}  // namespace tandem::cuda
