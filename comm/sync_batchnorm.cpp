// SyncBatchNorm over a ProcessGroup, composed of engine/ops/norm.h's batch-norm pieces
// with the collectives in between (the algorithm of PyTorch's
// torch/nn/modules/_functions.py SyncBatchNorm), and convert_sync_batchnorm.
#include "comm/sync_batchnorm.h"

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "engine/ops/norm.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape.h"

namespace tandem::comm {
namespace {

// Statistics of the whole distributed batch: mean and invstd in the input's statistics
// dtype (for the element-wise passes), the same at the precision they were computed in
// (f64 after a merge; for the running statistics), and the values per channel over all ranks.
struct GlobalStats {
  Tensor mean, invstd;
  Tensor exact_mean, exact_invstd;
  int64_t count = 0;
};

std::string counts_str(const std::vector<int64_t>& counts) {
  std::string s = "[";
  for (size_t i = 0; i < counts.size(); ++i) s += (i ? ", " : "") + std::to_string(counts[i]);
  return s + "]";
}

// A per-channel parameter in the statistics dtype, outside the graph (undefined stays undefined).
Tensor as_stat(const Tensor& t, DType stat) {
  if (!t.defined()) return t;
  autograd::NoGradGuard no_grad;
  return t.detach().to(stat);
}

// All-gathers every rank's [mean(C), invstd(C), count] and merges them with the
// parallel-variance formula. The payload is f64 whatever the input's dtype: the count
// stays exact far beyond f32's 2^24, and the merge's cancellation (var_r + (m_r − mean)²)
// costs nothing at this size. Reading the counts back is the one host synchronisation
// (on CUDA): the count-per-channel check must be decided identically on every rank, and
// the backward pass and the running-variance correction take the count as a number.
GlobalStats gather_stats(ProcessGroup& group, const BatchNormStats& local, int64_t local_count, int64_t c,
                         double eps, const std::string& prefix) {
  autograd::NoGradGuard no_grad;
  const int world = group.size();
  const Device device = local.mean.device();
  const TensorOptions f64 = {.dtype = DType::kF64, .device = device};
  // An empty batch has invstd 0 (an infinite variance); replacing it by 1 keeps the
  // merge finite, where its weight (count 0) removes it anyway.
  Tensor invstd = local.invstd;
  if (local_count == 0) invstd.fill_(1.0);
  const Tensor mine = cat({local.mean.to(DType::kF64), invstd.to(DType::kF64),
                           full({1}, static_cast<double>(local_count), f64)});
  // Rank r's row of one (world, 2C + 1) buffer: NCCL gathers straight into packed outputs.
  const Tensor gathered = Tensor::empty({world, 2 * c + 1}, f64);
  std::vector<Tensor> rows;
  rows.reserve(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) rows.push_back(gathered.narrow(0, r, 1).view({2 * c + 1}));
  group.all_gather(rows, mine)->wait();

  const Tensor counts = narrow(gathered, 1, 2 * c, 1);  // (world, 1)
  std::vector<int64_t> per_rank;
  int64_t total = 0;
  for (double v : counts.to_vector<double>()) {
    per_rank.push_back(static_cast<int64_t>(v));
    total += per_rank.back();
  }
  if (total <= 1)
    throw std::invalid_argument(prefix + "expected more than 1 value per channel when training, got " +
                                std::to_string(total) + " over " + std::to_string(world) +
                                " ranks (values per channel by rank: " + counts_str(per_rank) + ")");

  // mean = Σ n_r·m_r / N;  var = Σ n_r·(var_r + (m_r − mean)²) / N, var_r = 1/invstd_r² − eps.
  const double inv_n = 1.0 / static_cast<double>(total);
  const Tensor means = narrow(gathered, 1, 0, c);    // (world, C)
  const Tensor invstds = narrow(gathered, 1, c, c);  // (world, C)
  GlobalStats g;
  g.count = total;
  g.exact_mean = mul(sum(mul(means, counts), {0}), inv_n);
  const Tensor vars = add(rdiv(square(invstds), 1.0), -eps);
  const Tensor m2 = sum(mul(add(vars, square(sub(means, g.exact_mean))), counts), {0});
  g.exact_invstd = rdiv(sqrt(add(mul(m2, inv_n), eps)), 1.0);
  const DType stat = local.mean.dtype();
  g.mean = g.exact_mean.to(stat);
  g.invstd = g.exact_invstd.to(stat);
  return g;
}

}  // namespace

// ---- ProcessGroupBatchNormSync ---------------------------------------------------------------

ProcessGroupBatchNormSync::ProcessGroupBatchNormSync(std::shared_ptr<ProcessGroup> group) : group_(std::move(group)) {
  if (!group_) throw std::invalid_argument("[SyncBatchNorm] expected a process group, got null");
}

Tensor ProcessGroupBatchNormSync::forward(const nn::BatchNormBase& bn, const Tensor& input, double momentum) {
  // Appended piece by piece: "[" + name() + "] " trips GCC 12's -Wrestrict false positive.
  std::string prefix = "[";
  prefix.append(bn.name()).append("] ");
  if (!input.defined()) throw std::invalid_argument(prefix + "argument 'input' is an undefined tensor");
  if (input.dim() < 2)
    throw std::invalid_argument(prefix + "expected input of at least 2 dims (N, C, ...), got shape " +
                                shape_str(input.shape()));
  const int64_t c = input.size(1);
  if (c != bn.num_features())
    throw std::invalid_argument(prefix + "expected input with " + std::to_string(bn.num_features()) +
                                " channels (dim 1, num_features), got input shape " + shape_str(input.shape()));
  const double eps = bn.options().eps;
  const int64_t local_count = input.numel() / c;
  const Tensor xd = input.detach();
  const DType stat = batch_norm_stat_dtype(input.dtype());

  const BatchNormStats local = batch_norm_stats(xd, eps);
  GlobalStats g;
  if (group_->size() == 1) {
    // Alone, the local statistics are the global ones: no collective, no host read.
    if (local_count <= 1)
      throw std::invalid_argument(prefix + "expected more than 1 value per channel when training, got " +
                                  std::to_string(local_count) + " (input shape " + shape_str(input.shape()) + ")");
    g.mean = g.exact_mean = local.mean;
    g.invstd = g.exact_invstd = local.invstd;
    g.count = local_count;
  } else {
    g = gather_stats(*group_, local, local_count, c, eps, prefix);
  }
  if (bn.running_mean().defined())
    batch_norm_update_running_stats(bn.running_mean(), bn.running_var(), g.exact_mean, g.exact_invstd, momentum, eps,
                                    g.count);

  const Tensor& weight = bn.weight();
  const Tensor& bias = bn.bias();
  const Tensor w = as_stat(weight, stat);
  Tensor y = batch_norm_elemt(xd, g.mean, g.invstd, w, as_stat(bias, stat));

  const bool need_x = input.requires_grad();
  const bool need_w = weight.defined() && weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  const DType w_dtype = weight.defined() ? weight.dtype() : stat;
  const DType b_dtype = bias.defined() ? bias.dtype() : stat;
  autograd::record("sync_batch_norm", {input, weight, bias}, {y},
                   [xd, w, mean = g.mean, invstd = g.invstd, count = g.count, group = group_, c, need_x, need_w,
                    need_b, w_dtype, b_dtype](std::vector<Tensor>& grads) {
                     const Tensor& dy = grads[0];
                     // The weight and bias gradients are this rank's sums, as in PyTorch: DDP
                     // averages them across ranks like every other gradient.
                     BatchNormBackwardReduce r = batch_norm_backward_reduce(dy, xd, mean, invstd, need_w, need_b);
                     Tensor gx, gw, gb;
                     if (need_x) {
                       Tensor sum_dy = r.sum_dy, sum_dy_xmu = r.sum_dy_xmu;
                       if (group->size() > 1) {
                         // Both sums in one collective; every rank joins, empty ones with zeros.
                         Tensor both = cat({r.sum_dy, r.sum_dy_xmu});
                         group->all_reduce(both, ReduceOp::kSum)->wait();
                         sum_dy = narrow(both, 0, 0, c);
                         sum_dy_xmu = narrow(both, 0, c, c);
                       }
                       gx = batch_norm_backward_elemt(dy, xd, mean, invstd, w, sum_dy, sum_dy_xmu, count);
                     }
                     if (need_w) gw = r.grad_weight.to(w_dtype);
                     if (need_b) gb = r.grad_bias.to(b_dtype);
                     return std::vector<Tensor>{gx, gw, gb};
                   });
  return y;
}

// ---- SyncBatchNorm -------------------------------------------------------------------------

SyncBatchNorm::SyncBatchNorm(int64_t num_features, std::shared_ptr<ProcessGroup> group,
                             const nn::BatchNormOptions& options)
    : BatchNormBase(num_features, options), group_(std::move(group)) {
  if (!group_) throw std::invalid_argument("[SyncBatchNorm] expected a process group, got null");
  set_sync(std::make_shared<ProcessGroupBatchNormSync>(group_));
}

void SyncBatchNorm::check_input(const Tensor& input) const {
  if (input.dim() < 2)
    throw std::invalid_argument("[SyncBatchNorm] expected input of at least 2 dims (N, C, ...), got shape " +
                                shape_str(input.shape()));
}

// ---- conversion -----------------------------------------------------------------------------

std::shared_ptr<nn::Module> convert_sync_batchnorm(std::shared_ptr<nn::Module> module,
                                                   std::shared_ptr<ProcessGroup> group, int* converted) {
  if (!module) throw std::invalid_argument("[convert_sync_batchnorm] expected a module, got null");
  if (!group) throw std::invalid_argument("[convert_sync_batchnorm] expected a process group, got null");
  // The sync holds only the group, so every layer can share one.
  auto sync = std::make_shared<ProcessGroupBatchNormSync>(std::move(group));
  int n = 0;
  for (const auto& entry : module->named_modules()) {
    if (auto* bn = dynamic_cast<nn::BatchNormBase*>(entry.second.get())) {
      bn->set_sync(sync);
      ++n;
    }
  }
  if (converted) *converted = n;
  return module;
}

int count_sync_batchnorm(nn::Module& module) {
  int n = 0;
  for (const auto& entry : module.named_modules()) {
    auto* bn = dynamic_cast<nn::BatchNormBase*>(entry.second.get());
    if (bn && bn->sync()) ++n;
  }
  return n;
}

}  // namespace tandem::comm
