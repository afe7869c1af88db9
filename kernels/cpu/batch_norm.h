// CPU batch-norm kernels, split the way PyTorch's native SyncBatchNorm splits them:
// per-channel statistics, the element-wise normalise pass, the backward per-channel
// reduction and the element-wise backward pass. x is seen as (n, c, inner) with
// channel ch of sample i at x[(i·c + ch)·inner .. +inner).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

// Element tensors (x, y, dy, dx) have `dtype`; every per-channel vector (mean, invstd,
// weight, bias, sums, gradients) has the statistics type: f64 for f64 input, else f32.
// Sums over a channel are taken in f64 (two passes for the variance).

/// mean[ch] = Σ x / count, invstd[ch] = 1 / sqrt(Σ (x − mean)² / count + eps), count = n·inner
/// (the biased variance). With count 0 both are 0.
void batch_norm_stats(void* mean, void* invstd, const void* x, DType dtype, int64_t n, int64_t c, int64_t inner,
                      double eps);

/// y = (x − mean[ch])·invstd[ch]·weight[ch] + bias[ch]; a null weight is 1, a null bias 0.
void batch_norm_elemt(void* y, const void* x, const void* mean, const void* invstd, const void* weight,
                      const void* bias, DType dtype, int64_t n, int64_t c, int64_t inner);

/// sum_dy[ch] = Σ dy, sum_dy_xmu[ch] = Σ dy·(x − mean[ch]); when non-null also
/// grad_weight = sum_dy_xmu·invstd and grad_bias = sum_dy.
void batch_norm_backward_reduce(void* sum_dy, void* sum_dy_xmu, void* grad_weight, void* grad_bias, const void* dy,
                                const void* x, const void* mean, const void* invstd, DType dtype, int64_t n, int64_t c,
                                int64_t inner);

/// dx = (dy − sum_dy/count − (x − mean)·invstd²·sum_dy_xmu/count)·invstd·weight, with the
/// (global) element count per channel `count`. A null weight is 1; null sums are 0, which
/// gives the eval-mode gradient dy·invstd·weight.
void batch_norm_backward_elemt(void* dx, const void* dy, const void* x, const void* mean, const void* invstd,
                               const void* weight, const void* sum_dy, const void* sum_dy_xmu, int64_t count,
                               DType dtype, int64_t n, int64_t c, int64_t inner);

}  // namespace tandem::kernels::cpu
