// Normalisation layers: BatchNorm1d / BatchNorm2d (parameters and buffers named and
// ordered as PyTorch's, so state dicts match) and LayerNorm.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "layers/module.h"

namespace tandem::nn {

struct BatchNormOptions {
  double eps = 1e-5;
  /// Weight of the newest batch in the running statistics; nullopt gives the cumulative
  /// average (1/num_batches_tracked), as PyTorch's momentum=None.
  std::optional<double> momentum = 0.1;
  bool affine = true;               // learnable weight (ones) and bias (zeros)
  bool track_running_stats = true;  // running_mean, running_var, num_batches_tracked buffers
};

class BatchNormBase;

/// Training-mode batch norm whose statistics span more than this process's batch.
/// comm::SyncBatchNorm implements it (layers cannot depend on comm) and
/// comm::convert_sync_batchnorm installs it into existing batch-norm layers in place,
/// so parents that hold typed pointers to their layers see the change.
class BatchNormSync {
 public:
  virtual ~BatchNormSync() = default;
  /// Normalises `input` with the statistics of the whole distributed batch and updates
  /// `bn`'s running statistics (if tracked) with weight `momentum` for the new batch.
  virtual Tensor forward(const BatchNormBase& bn, const Tensor& input, double momentum) = 0;
};

/// What BatchNorm1d and BatchNorm2d share (comm::SyncBatchNorm converts any of them).
/// Training normalises with the batch statistics and updates the running ones; eval
/// uses the running statistics (the batch ones when they are not tracked).
class BatchNormBase : public Module {
 public:
  Tensor forward(const Tensor& input) override;

  int64_t num_features() const { return num_features_; }
  const BatchNormOptions& options() const { return options_; }
  /// Undefined when !affine.
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  /// Undefined when !track_running_stats.
  const Tensor& running_mean() const { return running_mean_; }
  const Tensor& running_var() const { return running_var_; }
  /// int64 scalar: training forwards seen.
  const Tensor& num_batches_tracked() const { return num_batches_tracked_; }

  /// Routes training-mode forwards through `sync` (null restores the local statistics).
  void set_sync(std::shared_ptr<BatchNormSync> sync) { sync_ = std::move(sync); }
  const std::shared_ptr<BatchNormSync>& sync() const { return sync_; }

 protected:
  BatchNormBase(int64_t num_features, const BatchNormOptions& options);
  /// Throws unless the input has a rank this layer accepts.
  virtual void check_input(const Tensor& input) const = 0;

 private:
  int64_t num_features_;
  BatchNormOptions options_;
  Tensor weight_, bias_, running_mean_, running_var_, num_batches_tracked_;
  std::shared_ptr<BatchNormSync> sync_;
};

/// Batch norm over (N, C) or (N, C, L) input.
class BatchNorm1d : public BatchNormBase {
 public:
  explicit BatchNorm1d(int64_t num_features, const BatchNormOptions& options = {})
      : BatchNormBase(num_features, options) {}
  std::string name() const override { return "BatchNorm1d"; }
  std::shared_ptr<Module> clone() const override;

 protected:
  void check_input(const Tensor& input) const override;
};

/// Batch norm over (N, C, H, W) input, per channel.
class BatchNorm2d : public BatchNormBase {
 public:
  explicit BatchNorm2d(int64_t num_features, const BatchNormOptions& options = {})
      : BatchNormBase(num_features, options) {}
  std::string name() const override { return "BatchNorm2d"; }
  std::shared_ptr<Module> clone() const override;

 protected:
  void check_input(const Tensor& input) const override;
};

/// Layer norm over the trailing dims `normalized_shape`, with a learnable per-element
/// weight (ones) and bias (zeros) when `elementwise_affine`.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5, bool elementwise_affine = true);
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "LayerNorm"; }
  std::shared_ptr<Module> clone() const override;

  const Shape& normalized_shape() const { return normalized_shape_; }
  double eps() const { return eps_; }
  /// Undefined when !elementwise_affine.
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

 private:
  Shape normalized_shape_;
  double eps_;
  Tensor weight_, bias_;
};

}  // namespace tandem::nn
