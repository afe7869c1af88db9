// Automatic mixed precision: AutocastGuard (thread-local, nestable) and the per-op
// cast policy of PyTorch's torch.autocast. Inside an enabled guard, matrix products and
// convolutions run in f16/bf16 and numerically sensitive ops (softmax, norms, losses,
// reductions) in f32; the casts are ordinary differentiable to(dtype) ops, so f32
// parameters stay f32 (master weights) and receive f32 gradients.
//
// Policy (what each op does with its floating inputs while autocast is active):
//   low precision (f32/f16/bf16 cast to the guard's dtype; f64 untouched):
//       matmul, bmm, linear, conv2d, scaled_dot_product_attention
//   f32 (f16/bf16 cast up to f32; the output is f32):
//       softmax, log_softmax, cross_entropy, mse_loss, layer_norm, sum, mean, exp, log
//   input dtype (no casts): everything else, including element-wise ops, activations,
//       dropout, pooling, embedding (output in the weight's dtype), max/argmax, and
//       batch_norm, which accepts f16/bf16 input with f32 weight, bias and running
//       statistics, computes in f32 and returns the input's dtype (as cuDNN does under
//       torch.autocast on CUDA).
//   Binary element-wise ops given one f16/bf16 operand and one of another floating
//   dtype promote both to the wider type (f16 with bf16 gives f32), with or without a
//   guard, as PyTorch's type promotion does.
#pragma once

#include "engine/tensor.h"

namespace tandem {

/// Enables (or, with enabled = false, disables) autocast to `dtype` (kF16 or kBF16) on
/// this thread for its lifetime, restoring the previous state on exit. Guards nest.
/// Autocast does not apply inside a backward pass unless a guard is opened there (as
/// an activation-checkpoint recompute does to replay its forward's precision).
class AutocastGuard {
 public:
  /// Throws std::invalid_argument unless dtype is kF16 or kBF16.
  explicit AutocastGuard(DType dtype, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool prev_enabled_;
  DType prev_dtype_;
  bool prev_opened_in_backward_;
};

/// Whether the innermost guard on this thread enables autocast (false with no guard).
bool autocast_enabled();
/// The innermost guard's dtype on this thread (kF16 when no guard has set one, as
/// torch.get_autocast_dtype("cuda")). AutocastGuard(autocast_dtype(), autocast_enabled())
/// re-enters the current state.
DType autocast_dtype();

// ---- hooks used by the ops of engine/ops/ --------------------------------------------------

/// True when ops called now follow the policy: autocast is enabled and this thread is
/// not running a backward pass (or the innermost guard was opened inside it).
bool autocast_active();
/// For ops the policy runs in low precision: an f32, f16 or bf16 tensor cast to the
/// autocast dtype; any other tensor (f64, integers, undefined) returned as it is.
Tensor autocast_to_low(const Tensor& x);
/// For ops the policy runs in f32: an f16 or bf16 tensor cast to f32; any other returned as it is.
Tensor autocast_to_f32(const Tensor& x);

}  // namespace tandem
