// Normalisation ops: batch norm (with its four kernels exposed as functions, for
// comm::SyncBatchNorm to all-reduce between them) and layer norm.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace tandem {

/// Batch normalisation of x (N, C, ...) per channel (dim 1):
/// y = (x − mean)·invstd·weight + bias, invstd = 1/sqrt(var + eps). Training uses the
/// batch's mean and biased variance and, when running_mean/running_var are defined,
/// updates them in place: r ← (1 − momentum)·r + momentum·batch, with the unbiased
/// variance (count/(count − 1)). Eval uses the running statistics. weight and bias may
/// be undefined (affine = false). Gradients flow to x, weight and bias, as PyTorch's.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);

/// Layer normalisation over the trailing dims `normalized_shape` of x:
/// y = (x − mean)·rstd·weight + bias with the biased variance; weight and bias (shape
/// normalized_shape, x's dtype) may be undefined.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);

// ---- batch-norm pieces ------------------------------------------------------------------
// The kernels batch_norm composes, as PyTorch's native SyncBatchNorm uses them. None is
// recorded by autograd. x and dy are (N, C, ...) with x's dtype; per-channel vectors
// (C) are in batch_norm_stat_dtype(x.dtype()) — weight and bias may come in any floating
// dtype and are converted. count is the number of values per channel (N·∏spatial,
// summed over ranks for SyncBatchNorm).

/// The dtype of per-channel statistics for input `dtype`: f64 for f64, else f32.
DType batch_norm_stat_dtype(DType dtype);

struct BatchNormStats {
  Tensor mean;    // (C)
  Tensor invstd;  // (C): 1/sqrt(biased var + eps)
};
/// Per-channel mean and inverse std of x (0 and 0 for a channel with no values).
BatchNormStats batch_norm_stats(const Tensor& x, double eps);

/// y = (x − mean)·invstd·weight + bias per channel (undefined weight 1, bias 0).
Tensor batch_norm_elemt(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& weight,
                        const Tensor& bias);

struct BatchNormBackwardReduce {
  Tensor sum_dy;       // (C): Σ dy
  Tensor sum_dy_xmu;   // (C): Σ dy·(x − mean)
  Tensor grad_weight;  // (C): sum_dy_xmu·invstd, when asked for
  Tensor grad_bias;    // (C): sum_dy, when asked for
};
/// Per-channel sums of the backward pass, plus the weight and bias gradients if asked for.
BatchNormBackwardReduce batch_norm_backward_reduce(const Tensor& dy, const Tensor& x, const Tensor& mean,
                                                   const Tensor& invstd, bool weight_grad, bool bias_grad);

/// dx = (dy − sum_dy/count − (x − mean)·invstd²·sum_dy_xmu/count)·invstd·weight. Undefined
/// sums count as 0 (the eval-mode gradient dy·invstd·weight); undefined weight as 1.
Tensor batch_norm_backward_elemt(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                 const Tensor& weight, const Tensor& sum_dy, const Tensor& sum_dy_xmu, int64_t count);

/// In place: running_mean ← (1 − momentum)·running_mean + momentum·mean and running_var
/// likewise with the unbiased variance (1/invstd² − eps)·count/(count − 1). Does nothing
/// when count is 0; count 1 (no unbiased variance) throws.
void batch_norm_update_running_stats(const Tensor& running_mean, const Tensor& running_var, const Tensor& mean,
                                     const Tensor& invstd, double momentum, double eps, int64_t count);

}  // namespace tandem
