// Stochastic gradient descent with momentum, dampening, weight decay and Nesterov,
// exactly as torch.optim.SGD; each step is one fused kernel pass per tensor on the
// CPU and one multi-tensor launch per (device, dtype) on CUDA.
#pragma once

#include <vector>

#include "optim/optimizer.h"

namespace tandem::optim {

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  /// One group holding `params`. Throws std::invalid_argument for negative lr,
  /// momentum or weight decay, or Nesterov without momentum or with dampening.
  SGD(std::vector<Tensor> params, const SGDOptions& options);
  /// Several groups; a group's unset lr / weight_decay take the options' values.
  SGD(std::vector<ParamGroup> groups, const SGDOptions& options);

  /// g = grad + wd·p; b = μ·b + (1-dampening)·g (b = g on a parameter's first step);
  /// g = nesterov ? g + μ·b : b; p -= lr·g. Parameters without a gradient are skipped.
  void step() override;

  const SGDOptions& options() const { return options_; }

 protected:
  std::vector<std::string> state_kinds() const override { return {"momentum_buffer"}; }

 private:
  SGDOptions options_;
};

}  // namespace tandem::optim
