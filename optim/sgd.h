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
  /// As AdamOptions::capturable: each group's lr lives on the device (set_lr and
  /// schedules write it), and with momentum each parameter's count of steps lives in a
  /// one-element f64 tensor on its device, from which the kernel decides the first step
  /// (the one that seeds the momentum buffer) when it runs. A step() captured in a CUDA
  /// graph after one eager step then replays right, and step_unless() works (a
  /// GradScaler skip on the device, even of the first step, is no step at all).
  bool capturable = false;
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
  bool capturable() const override { return options_.capturable; }
  /// See Optimizer::step_unless.
  void step_unless(const Tensor& found_inf) override;

  const SGDOptions& options() const { return options_; }

  /// The base state with tensors "momentum_buffer.<i>" of the parameters stepped so far
  /// (capturable: as the device counts say, a synchronisation).
  OptimizerState state_dict() const override;
  /// Restores state_dict() output (capturable counts follow: a parameter with a
  /// momentum buffer has stepped).
  void load_state_dict(const OptimizerState& state) override;

 protected:
  std::vector<std::string> state_kinds() const override { return {"momentum_buffer"}; }

 private:
  /// step() and step_unless(): the kernels skip when found_inf is defined and nonzero.
  void step_impl(const Tensor& found_inf);

  SGDOptions options_;
  // Capturable with momentum: per parameter, its step count as a one-element f64 tensor
  // on its device (undefined until its first step).
  std::vector<Tensor> step_counts_;
};

}  // namespace tandem::optim
