// SGD update as torch.optim.SGD computes it, fused into one pass over a tensor:
// weight decay, momentum buffer (Nesterov optional) and the parameter step.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels {

/// SGD hyperparameters shared by the CPU and CUDA kernels.
struct SGDHyper {
  double lr = 0.0;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

}  // namespace tandem::kernels

namespace tandem::kernels::cpu {

/// One SGD step on n elements (f32 or f64), in place on `param` and `momentum_buf`:
///   g = grad + wd·p;  b = first_step ? g : μ·b + (1-dampening)·g;
///   g = nesterov ? g + μ·b : b;  p = p - lr·g.
/// `momentum_buf` is unused (may be null) when μ = 0.
void sgd_step(DType dtype, void* param, const void* grad, void* momentum_buf, bool first_step, int64_t n,
              const SGDHyper& hyper);

}  // namespace tandem::kernels::cpu
