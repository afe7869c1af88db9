// SGD update as torch.optim.SGD computes it, fused into one pass over each tensor:
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

/// One tensor of a multi-tensor SGD step (CPU or CUDA pointers, one dtype for all).
struct SGDTensorRef {
  void* param = nullptr;
  const void* grad = nullptr;
  void* momentum = nullptr;  // null when μ = 0
  int64_t numel = 0;
  double lr = 0.0;            // per tensor, so groups with different lr share a launch
  double weight_decay = 0.0;
  // Capturable steps: when set, the lr is read from this memory (one f64 on the tensor's
  // device) when the kernel runs instead of `lr`, so a step captured in a CUDA graph
  // follows a schedule (Optimizer::set_group_lr writes it). All tensors or none.
  const double* lr_ptr = nullptr;
  bool first_step = false;  // seed the momentum buffer with the gradient
  // Capturable steps: when set, the first step is decided from this count (on the
  // tensor's device; 0 means no step yet) instead of `first_step`, and the caller adds
  // 1 after the step (increment_step_counts), so a step captured in a CUDA graph, or
  // skipped on the device by a GradScaler, seeds the buffer when it really runs first.
  const double* step_count = nullptr;
};

}  // namespace tandem::kernels

namespace tandem::kernels::cpu {

/// One SGD step on each of `count` tensors (f32 or f64), in place on the parameters
/// and momentum buffers, with shared μ, dampening and Nesterov flag and each tensor's
/// own lr and weight decay:
///   g = grad + wd·p;  b = first_step ? g : μ·b + (1-dampening)·g;
///   g = nesterov ? g + μ·b : b;  p = p - lr·g.
/// The momentum buffer is unused (may be null) when μ = 0. The elements of all tensors
/// are split in chunks over one OpenMP team (for_each_tensor_piece). `found_inf`: null,
/// or a flag (f32): when it is nonzero nothing is written (GradScaler's skipped step).
void sgd_multi_tensor(DType dtype, const SGDTensorRef* tensors, int64_t count, double momentum, double dampening,
                      bool nesterov, const float* found_inf);

}  // namespace tandem::kernels::cpu
