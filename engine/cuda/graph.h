// CUDA graphs: the work queued on a stream captured once and replayed with one launch,
// as torch.cuda.CUDAGraph. Memory allocated during a capture comes from a pool private
// to the graph (the caching allocator's private pools), so the addresses the graph's
// kernels use stay theirs for as long as it lives.
#pragma once

#include <cstdint>

#include "engine/cuda/runtime.h"

// As in kernels/cuda/stream.h: the runtime's handle types, declared exactly as CUDA's
// driver_types.h does, so this header needs no toolkit.
struct CUgraph_st;
struct CUgraphExec_st;
typedef struct CUgraph_st* cudaGraph_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;

namespace tandem::cuda {

/// One captured graph. Between capture_begin and capture_end, the work the calling
/// thread queues on the current stream of the current device is recorded, not run;
/// replay() runs it. The work must be what replay should repeat: no host
/// synchronisation (Tensor::item, Stream::synchronize), host-side values that change
/// between replays are baked in, and inputs and outputs are the tensors that existed at
/// capture (copy new data into the inputs, read the outputs after replay). Warm the
/// work up once before capturing (first-use allocations, cuDNN's algorithm search).
/// Random draws from the device's default generator (dropout) are graph-safe: each
/// replay advances the generator and draws new numbers; the seed is the capture's.
class Graph {
 public:
  Graph() = default;
  /// reset().
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  /// Starts capturing the current stream of the current device (thread-local capture
  /// mode: other threads are not affected). Allocations on the captured streams come
  /// from `pool` (another graph's pool() or graph_pool_handle(), to share memory between
  /// graphs replayed in capture order) or, for 0, from a pool of this graph's own.
  /// Throws std::logic_error if this graph already holds a capture (or a failed one:
  /// reset() first), if another capture into `pool` is in progress, or if the caching
  /// allocator is off (TANDEM_CUDA_CACHING_ALLOCATOR=0).
  void capture_begin(MempoolId pool = 0);
  /// Ends the capture and instantiates the graph; a capture that failed (an illegal
  /// call inside it) throws here with CUDA's error, and the graph stays empty until
  /// reset() gives up its pool.
  void capture_end();
  /// Launches the graph on the stream it was captured on (ordered after what is
  /// already queued there).
  void replay();
  /// Frees the graph and gives up its pool: the pool's memory returns once the tensors
  /// allocated in the capture are gone too.
  void reset();

  bool captured() const { return exec_ != nullptr; }
  /// Philox blocks the captured work draws per replay (dropout, random fills) from the
  /// device's default generator; each replay reserves that many and draws fresh numbers.
  uint64_t random_blocks() const { return rng_blocks_; }
  MempoolId pool() const { return pool_; }
  /// The stream the graph was captured on (and replays on).
  Stream stream() const { return stream_; }

 private:
  Stream stream_;
  MempoolId pool_ = 0;
  bool capturing_ = false;
  bool holds_pool_ = false;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  // The default generator's offset base for this graph's draws (device memory, written
  // before each replay), and the blocks one replay draws.
  uint64_t* rng_base_ = nullptr;
  uint64_t rng_blocks_ = 0;
  bool rng_capturing_ = false;
};

}  // namespace tandem::cuda
