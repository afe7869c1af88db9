// SyncBatchNorm: training-mode batch norm whose statistics span the batches of every
// rank of a ProcessGroup (one all-gather forward, one all-reduce backward), and
// convert_sync_batchnorm, which switches the batch norms of an existing model to it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "comm/process_group.h"
#include "layers/norm.h"

namespace tandem::comm {

/// The nn::BatchNormSync over a ProcessGroup (what SyncBatchNorm and
/// convert_sync_batchnorm install). Forward: per-rank mean, invstd and count, one
/// all_gather of [mean, invstd, count] in f64, merged with the parallel-variance formula
/// (mean = Σ n_r·m_r / N, var = Σ n_r·(var_r + (m_r − mean)²) / N); the running variance
/// gets the unbiased var·N/(N − 1). Backward: one all_reduce of [Σ dy, Σ dy·(x − mean)]
/// before the element-wise pass; weight and bias gradients stay local (as PyTorch's,
/// DDP averages them like any gradient). Ranks with an empty batch join every collective.
/// Every rank of the group must run the same layers in the same order.
class ProcessGroupBatchNormSync : public nn::BatchNormSync {
 public:
  explicit ProcessGroupBatchNormSync(std::shared_ptr<ProcessGroup> group);
  /// Normalises with the statistics of the whole distributed batch (see the class doc).
  Tensor forward(const nn::BatchNormBase& bn, const Tensor& input, double momentum) override;
  const std::shared_ptr<ProcessGroup>& group() const { return group_; }

 private:
  std::shared_ptr<ProcessGroup> group_;
};

/// Batch norm over (N, C, ...) input of any rank >= 2 whose training-mode statistics
/// are those of the batch of every rank of `group` together (PyTorch's
/// nn.SyncBatchNorm). Eval mode uses the running statistics and communicates nothing.
/// Parameters and buffers are named as BatchNorm2d's, so state dicts interchange.
class SyncBatchNorm : public nn::BatchNormBase {
 public:
  SyncBatchNorm(int64_t num_features, std::shared_ptr<ProcessGroup> group, const nn::BatchNormOptions& options = {});
  std::string name() const override { return "SyncBatchNorm"; }
  const std::shared_ptr<ProcessGroup>& group() const { return group_; }

 protected:
  void check_input(const Tensor& input) const override;

 private:
  std::shared_ptr<ProcessGroup> group_;
};

/// Makes every batch norm (nn::BatchNormBase: BatchNorm1d, BatchNorm2d, SyncBatchNorm) of
/// `module`'s tree synchronise over `group`, and returns `module`. The layers are changed
/// in place (their sync is set) rather than replaced by SyncBatchNorm objects, because
/// parents such as BasicBlock and ResNet18 call their batch norms through typed member
/// pointers that a swapped child would not reach; parameters, buffers, names and state
/// dicts stay as they were. `converted`, if given, receives the number of layers changed.
std::shared_ptr<nn::Module> convert_sync_batchnorm(std::shared_ptr<nn::Module> module,
                                                   std::shared_ptr<ProcessGroup> group, int* converted = nullptr);

/// Number of batch norms in `module`'s tree whose training forward synchronises over a
/// process group (installed by SyncBatchNorm or convert_sync_batchnorm).
int count_sync_batchnorm(nn::Module& module);

}  // namespace tandem::comm
