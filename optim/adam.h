// Adam and AdamW exactly as torch.optim.Adam / AdamW (bias correction, per-parameter
// step counts, L2 or decoupled weight decay, optional AMSGrad); each step is one fused
// kernel pass per tensor on the CPU and one multi-tensor launch per (device, dtype) on CUDA.
#pragma once

#include <array>
#include <vector>

#include "optim/optimizer.h"

namespace tandem::optim {

/// Adam's hyperparameters; weight decay is L2 (added to the gradient).
struct AdamOptions {
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
  /// As torch's capturable=True with a tensor lr: each parameter's step count and each
  /// group's lr live in one-element f64 tensors on the device, which the step kernels
  /// read (and the counts increment), so a step() captured in a CUDA graph after one
  /// eager step replays with the right bias corrections and follows an lr schedule
  /// (set_lr / set_group_lr write the device lr between replays). Weight decay, betas
  /// and eps are read at capture and stay fixed in the graph.
  bool capturable = false;
};

/// AdamW's hyperparameters; weight decay is decoupled (p *= 1 - lr·wd), default 1e-2 as torch.
struct AdamWOptions {
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
  /// See AdamOptions::capturable.
  bool capturable = false;
};

class Adam : public Optimizer {
 public:
  /// One group holding `params`. Throws std::invalid_argument for lr < 0, eps < 0,
  /// weight_decay < 0 or a beta outside [0, 1).
  Adam(std::vector<Tensor> params, const AdamOptions& options = {});
  /// Several groups; a group's unset lr / weight_decay take the options' values.
  Adam(std::vector<ParamGroup> groups, const AdamOptions& options = {});

  /// Per parameter with a gradient: t += 1; g += wd·p (AdamW: p *= 1 - lr·wd);
  /// m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²; v̂ = amsgrad ? max(v̂, v) : v;
  /// p -= lr/(1-β1^t) · m / (sqrt(v̂)/sqrt(1-β2^t) + eps). Moments start at zero.
  void step() override;
  bool capturable() const override { return options_.capturable; }
  /// See Optimizer::step_unless: a skipped step leaves the step counts too.
  void step_unless(const Tensor& found_inf) override;

  const AdamOptions& options() const { return options_; }
  /// True for AdamW (decoupled weight decay).
  bool decoupled_weight_decay() const { return decoupled_; }
  /// Step count of parameter `flat` (index over all groups in order); 0 before its first
  /// update. Capturable: read from the device (a synchronisation), so graph replays count.
  int64_t param_step(size_t flat) const;

  /// The base state plus per-parameter scalars "step.<i>" (PyTorch's state["step"]),
  /// tensors "exp_avg.<i>", "exp_avg_sq.<i>" and with AMSGrad "max_exp_avg_sq.<i>", for
  /// the parameters stepped so far (capturable: as the device counts say).
  OptimizerState state_dict() const override;
  /// Restores state_dict() output; every stepped parameter needs its step and moments.
  void load_state_dict(const OptimizerState& state) override;

 protected:
  Adam(std::vector<ParamGroup> groups, const AdamOptions& options, bool decoupled_weight_decay);
  std::vector<std::string> state_kinds() const override;

 private:
  const char* name() const { return decoupled_ ? "AdamW" : "Adam"; }
  /// step() and step_unless(): the kernels skip when found_inf is defined and nonzero.
  void step_impl(const Tensor& found_inf);

  AdamOptions options_;
  bool decoupled_;
  std::vector<int64_t> steps_;  // per parameter over all groups
  // Capturable: per parameter, its step count as a one-element f64 tensor on its device
  // (undefined until its first step); steps_ then only seeds them.
  std::vector<Tensor> step_counts_;
};

/// Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW.
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, const AdamWOptions& options = {});
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options = {});
};

}  // namespace tandem::optim
