// Normalisation layers over engine/ops/norm.h: the batch-norm modules keep PyTorch's
// bookkeeping (num_batches_tracked, momentum=None as a cumulative average, batch
// statistics in eval when running ones are not tracked); LayerNorm holds its affine
// parameters.
#include "layers/norm.h"

#include <stdexcept>
#include <string>
#include <utility>

#include "engine/autograd.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "engine/ops/norm.h"

namespace tandem::nn {

BatchNormBase::BatchNormBase(int64_t num_features, const BatchNormOptions& options)
    : num_features_(num_features), options_(options) {
  if (num_features < 1)
    throw std::invalid_argument("[BatchNorm] expected num_features >= 1, got " + std::to_string(num_features));
  if (!(options.eps >= 0.0))
    throw std::invalid_argument("[BatchNorm] expected eps >= 0, got " + std::to_string(options.eps));
  // Registration order is PyTorch's: weight, bias, running_mean, running_var, num_batches_tracked.
  if (options.affine) {
    weight_ = register_parameter("weight", ones({num_features}));
    bias_ = register_parameter("bias", zeros({num_features}));
  }
  if (options.track_running_stats) {
    running_mean_ = register_buffer("running_mean", zeros({num_features}));
    running_var_ = register_buffer("running_var", ones({num_features}));
    num_batches_tracked_ = register_buffer("num_batches_tracked", zeros({}, {.dtype = DType::kI64}));
  }
}

Tensor BatchNormBase::forward(const Tensor& input) {
  if (!input.defined())
    throw std::invalid_argument("[" + name() + "] argument 'input' is an undefined tensor");
  check_input(input);
  if (input.size(1) != num_features_)
    throw std::invalid_argument("[" + name() + "] expected input with " + std::to_string(num_features_) +
                                " channels (dim 1, num_features), got input shape " + shape_str(input.shape()));
  const bool track = options_.track_running_stats;
  double factor = options_.momentum.value_or(0.0);
  if (is_training() && track) {
    autograd::NoGradGuard no_grad;
    add_(num_batches_tracked_, ones({}, {.dtype = DType::kI64, .device = num_batches_tracked_.device()}));
    // Cumulative average: the k-th batch gets weight 1/k (reads the counter: a device sync
    // on CUDA, paid only in this rarely used mode).
    if (!options_.momentum) factor = 1.0 / num_batches_tracked_.item();
  }
  if (sync_ && is_training()) return sync_->forward(*this, input, factor);
  // Without tracked statistics both modes normalise with the batch's own.
  const bool use_batch_stats = is_training() || !track;
  return batch_norm(input, weight_, bias_, track ? running_mean_ : Tensor(), track ? running_var_ : Tensor(),
                    use_batch_stats, factor, options_.eps);
}

void BatchNorm1d::check_input(const Tensor& input) const {
  if (input.dim() != 2 && input.dim() != 3)
    throw std::invalid_argument("[BatchNorm1d] expected input of 2 or 3 dims (N, C) or (N, C, L), got shape " +
                                shape_str(input.shape()));
}

void BatchNorm2d::check_input(const Tensor& input) const {
  if (input.dim() != 4)
    throw std::invalid_argument("[BatchNorm2d] expected input of 4 dims (N, C, H, W), got shape " +
                                shape_str(input.shape()));
}

LayerNorm::LayerNorm(Shape normalized_shape, double eps, bool elementwise_affine)
    : normalized_shape_(std::move(normalized_shape)), eps_(eps) {
  if (normalized_shape_.empty())
    throw std::invalid_argument("[LayerNorm] expected normalized_shape of at least 1 dim, got []");
  for (int64_t d : normalized_shape_) {
    if (d < 1)
      throw std::invalid_argument("[LayerNorm] expected positive extents in normalized_shape, got " +
                                  shape_str(normalized_shape_));
  }
  if (!(eps >= 0.0)) throw std::invalid_argument("[LayerNorm] expected eps >= 0, got " + std::to_string(eps));
  if (elementwise_affine) {
    weight_ = register_parameter("weight", ones(normalized_shape_));
    bias_ = register_parameter("bias", zeros(normalized_shape_));
  }
}

Tensor LayerNorm::forward(const Tensor& input) { return layer_norm(input, normalized_shape_, weight_, bias_, eps_); }

// The copies are built through the constructor, so a BatchNormSync hook set on the
// original is not carried over: a replica normalises with its own batch statistics.
std::shared_ptr<Module> BatchNorm1d::clone() const {
  return clone_via([this] { return std::make_shared<BatchNorm1d>(num_features(), options()); });
}
std::shared_ptr<Module> BatchNorm2d::clone() const {
  return clone_via([this] { return std::make_shared<BatchNorm2d>(num_features(), options()); });
}
std::shared_ptr<Module> LayerNorm::clone() const {
  return clone_via([this] { return std::make_shared<LayerNorm>(normalized_shape_, eps_, weight_.defined()); });
}

}  // namespace tandem::nn
