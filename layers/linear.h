// Linear (fully connected) layer: y = x·Wᵀ + b, initialised as torch.nn.Linear.
#pragma once

#include "engine/ops/linalg.h"
#include "layers/module.h"

namespace tandem::nn {

class Linear : public Module {
 public:
  /// Weight (out, in) from kaiming_uniform_(a = sqrt(5)), i.e. U(±1/sqrt(in)); bias
  /// (out) from U(±1/sqrt(in)); both drawn from the CPU default generator.
  Linear(int64_t in_features, int64_t out_features, bool bias = true);

  /// x of shape (..., in) -> (..., out).
  Tensor forward(const Tensor& input) override;
  /// act(forward(x)) with bias and activation fused into one pass (linear()).
  Tensor forward(const Tensor& input, Activation activation);
  std::string name() const override { return "Linear"; }
  std::shared_ptr<Module> clone() const override;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  /// Handles sharing the registered parameters (Module::to updates them in place).
  const Tensor& weight() const { return weight_; }
  /// Undefined when built without bias.
  const Tensor& bias() const { return bias_; }

 private:
  int64_t in_features_;
  int64_t out_features_;
  Tensor weight_;
  Tensor bias_;
};

}  // namespace tandem::nn
