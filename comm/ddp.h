// DistributedDataParallel: one process per device; every rank holds a full replica of
// the model and the gradients are averaged across ranks during backward. Gradients go
// into flat per-(dtype, device) buckets whose averaging all-reduce is launched from
// the parameters' post-accumulate hooks as soon as a bucket is full, so communication
// overlaps the rest of backward (DESIGN.md §4).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/process_group.h"
#include "layers/module.h"

namespace tandem::comm {

struct DDPOptions {
  /// Cap of every bucket but the first, in MiB of gradient.
  double bucket_cap_mb = 25.0;
  /// Cap of the first bucket (the last layers' gradients, ready first), so the first
  /// all-reduce starts early in backward.
  double first_bucket_cap_mb = 1.0;
  /// Walk the autograd graph after each forward and treat parameters it does not
  /// reach as ready (models whose forward skips some parameters).
  bool find_unused_parameters = false;
  /// Make each parameter's .grad a view into its bucket, saving one copy each way
  /// and the memory of a second gradient.
  bool gradient_as_bucket_view = true;
  /// Broadcast buffers (batch-norm running statistics) from rank 0 before each forward.
  bool broadcast_buffers = true;
  /// The set of used parameters and their ready order are the same every iteration:
  /// learned in iteration 1, then no graph walk and no used-parameter exchange.
  bool static_graph = false;
};

/// A bucket's layout: which parameters (indices into module()->parameters() of those
/// that require grad) it holds, in bucket order, and its size.
struct BucketInfo {
  std::vector<int64_t> params;
  int64_t numel = 0;
  size_t nbytes = 0;
  DType dtype = DType::kF32;
  Device device = Device::cpu();
};

/// One bucket's timeline in the last synchronised backward, in seconds on the host's
/// steady clock (std::chrono::steady_clock's epoch), for benchmarks and the scaling model.
struct BucketTiming {
  int bucket = 0;
  size_t nbytes = 0;
  /// When its last gradient arrived and its all-reduce was launched (at world size 1,
  /// when it would have been).
  double ready_s = 0.0;
  /// When waiting for its all-reduce returned at the end of backward (ready_s at world
  /// size 1): an upper bound on the collective's completion.
  double done_s = 0.0;
};

/// Timings of the last synchronised iteration, for benchmarks (host wall clock).
struct DDPIterationStats {
  /// From the first gradient hook to the end-of-backward finalisation.
  double backward_reduce_window_s = 0.0;
  /// Waiting for all-reduces after backward had finished (communication not hidden).
  double exposed_comm_s = 0.0;
  /// Buckets whose all-reduce was launched before backward finished, and all buckets.
  int buckets_launched_during_backward = 0;
  int buckets = 0;
  /// Steady-clock seconds of the first gradient hook and of the end of backward (when
  /// finalisation started), and every bucket's timeline in launch order.
  double first_hook_s = 0.0;
  double backward_end_s = 0.0;
  std::vector<BucketTiming> timeline;
};

class DistributedDataParallel : public nn::Module {
 public:
  /// Wraps `module` (registered as child "module", so state-dict keys gain the prefix
  /// "module." as in PyTorch). Checks that every rank holds the same parameters
  /// (count, shapes and dtypes; the error names the first mismatch and the ranks),
  /// then broadcasts parameters and buffers from rank 0. All parameters must sit on
  /// one device, the one the group's backend can reduce.
  DistributedDataParallel(std::shared_ptr<nn::Module> module, std::shared_ptr<ProcessGroup> group,
                          DDPOptions options = {});
  ~DistributedDataParallel() override;

  /// Broadcasts buffers (if asked), rebuilds buckets after the first iteration, runs
  /// the module and, when grad mode is on and not inside no_sync(), prepares the
  /// reduction of the coming backward.
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "DistributedDataParallel"; }

  /// Broadcasts the module's buffers from rank 0 now (what every forward does with
  /// broadcast_buffers): before evaluating the wrapped module directly, so every rank
  /// uses rank 0's batch-norm statistics. A collective: every rank must call it.
  void sync_buffers();

  /// The wrapped module.
  const std::shared_ptr<nn::Module>& module() const { return module_; }
  const std::shared_ptr<ProcessGroup>& process_group() const { return group_; }
  const DDPOptions& options() const { return options_; }

  /// While alive, forwards prepare no reduction: backward only accumulates local
  /// gradients, and the next synchronised backward reduces the accumulated sums.
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(DistributedDataParallel& ddp);
    ~NoSyncGuard();
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    DistributedDataParallel& ddp_;
    bool previous_;
  };
  /// `auto guard = ddp.no_sync();` for gradient accumulation.
  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(*this); }

  /// The current bucket layout, bucket 0 first (the first to be reduced).
  std::vector<BucketInfo> buckets() const;
  /// True once the buckets were rebuilt in the observed gradient-ready order.
  bool buckets_rebuilt() const;
  /// Timings of the last synchronised backward.
  DDPIterationStats last_iteration_stats() const;

  class Reducer;  // comm/ddp.cpp

 private:
  std::shared_ptr<nn::Module> module_;
  std::shared_ptr<ProcessGroup> group_;
  DDPOptions options_;
  bool require_sync_ = true;
  std::unique_ptr<Reducer> reducer_;
};

}  // namespace tandem::comm
