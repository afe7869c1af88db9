// Adam / AdamW update as torch.optim.Adam and AdamW compute it, fused into one pass
// over a tensor: weight decay (L2 or decoupled), both moments, optional AMSGrad
// maximum, bias correction and the parameter step.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels {

/// Adam hyperparameters of one tensor's step, shared by the CPU and CUDA kernels.
struct AdamHyper {
  double lr = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  // AdamW: p *= 1 - lr·wd instead of g += wd·p
  bool amsgrad = false;
  int64_t step = 1;  // this tensor's step count, already incremented (>= 1)
};

/// The scalars a step needs, computed once per tensor in f64 as PyTorch does in Python.
struct AdamCoefficients {
  double step_size;              // lr / (1 - β1^step)
  double bias_correction2_sqrt;  // sqrt(1 - β2^step)
  double weight_decay;           // decoupled: the factor 1 - lr·wd; else the L2 coefficient wd
};

/// One tensor of a multi-tensor Adam step (CPU or CUDA pointers, one dtype for all).
struct AdamTensorRef {
  void* param = nullptr;
  const void* grad = nullptr;
  void* exp_avg = nullptr;
  void* exp_avg_sq = nullptr;
  void* max_exp_avg_sq = nullptr;  // null without AMSGrad
  int64_t numel = 0;
  double lr = 0.0;  // per tensor, so groups with different lr share a launch
  double weight_decay = 0.0;
  // Capturable steps: when set, the lr is read from this memory (one f64 on the tensor's
  // device) when the kernel runs instead of `lr` (see SGDTensorRef::lr_ptr). Set for all
  // tensors or none, together with step_count.
  const double* lr_ptr = nullptr;
  int64_t step = 1;  // this tensor's step count, already incremented (bias correction)
  // Capturable steps: when set, the step count is read from this memory (on the tensor's
  // device) as *step_count + 1 instead of `step`, and the caller adds 1 to it after the
  // step (increment_step_counts), so a step captured in a CUDA graph replays with the
  // count of the moment rather than the one of the capture.
  const double* step_count = nullptr;
};

/// Coefficients of `h` (bias corrections use the tensor's own step count).
inline AdamCoefficients adam_coefficients(const AdamHyper& h) {
  const double step = static_cast<double>(h.step);
  return {h.lr / (1.0 - std::pow(h.beta1, step)), std::sqrt(1.0 - std::pow(h.beta2, step)),
          h.decoupled_weight_decay ? 1.0 - h.lr * h.weight_decay : h.weight_decay};
}

}  // namespace tandem::kernels

namespace tandem::kernels::cpu {

/// One Adam step on each of `count` tensors (f32 or f64), in place on the parameters
/// and moments, with shared β1, β2, eps, AMSGrad and decoupled (AdamW) flags and each
/// tensor's own lr, weight decay and step count t:
///   AdamW: p = p·(1 - lr·wd);  Adam: g = g + wd·p;
///   m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²;  AMSGrad: v̂ = max(v̂, v), else v̂ = v;
///   p = p - lr/(1-β1^t) · m / (sqrt(v̂)/sqrt(1-β2^t) + eps).
/// `max_exp_avg_sq` is unused (may be null) without AMSGrad. The elements of all
/// tensors are split in chunks over one OpenMP team, so a model of many small tensors
/// (none large enough to split on its own) still uses every core.
/// `found_inf`: null, or a flag (f32, host memory here): when it is nonzero nothing is
/// written (GradScaler's skipped step, decided without the host reading the flag).
void adam_multi_tensor(DType dtype, const AdamTensorRef* tensors, int64_t count, double beta1, double beta2, double eps,
                       bool amsgrad, bool decoupled_weight_decay, const float* found_inf);


}  // namespace tandem::kernels::cpu
