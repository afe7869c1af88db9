// CUDA batch-norm kernels, split as PyTorch's native SyncBatchNorm splits them:
// per-channel statistics, the element-wise normalise pass, the backward per-channel
// reduction and the element-wise backward pass. x is seen as (n, c, inner).
// Launchers only; includable from host code without the CUDA toolkit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

// Element tensors have `dtype`; per-channel vectors have the statistics type (f64 for
// f64 input, else f32), as in kernels/cpu/batch_norm.h, whose formulas these follow.
// Channel reductions run in two stages (blocks over slices of n, then a per-channel
// merge in slice order), so results are deterministic; `workspace` holds the partials.

/// Bytes of device scratch that batch_norm_stats and batch_norm_backward_reduce need.
size_t batch_norm_workspace_bytes(DType dtype, int64_t n, int64_t c, int64_t inner);

/// mean[ch] and invstd[ch] = 1 / sqrt(biased var + eps), by Welford's method in the
/// statistics type (partials merged with Chan's formula). With count 0 both are 0.
void batch_norm_stats(void* mean, void* invstd, void* workspace, const void* x, DType dtype, int64_t n, int64_t c,
                      int64_t inner, double eps, cudaStream_t stream);

/// y = (x − mean[ch])·invstd[ch]·weight[ch] + bias[ch]; a null weight is 1, a null bias 0.
void batch_norm_elemt(void* y, const void* x, const void* mean, const void* invstd, const void* weight,
                      const void* bias, DType dtype, int64_t n, int64_t c, int64_t inner, cudaStream_t stream);

/// sum_dy[ch] = Σ dy, sum_dy_xmu[ch] = Σ dy·(x − mean[ch]); when non-null also
/// grad_weight = sum_dy_xmu·invstd and grad_bias = sum_dy.
void batch_norm_backward_reduce(void* sum_dy, void* sum_dy_xmu, void* grad_weight, void* grad_bias, void* workspace,
                                const void* dy, const void* x, const void* mean, const void* invstd, DType dtype,
                                int64_t n, int64_t c, int64_t inner, cudaStream_t stream);

/// dx = (dy − sum_dy/count − (x − mean)·invstd²·sum_dy_xmu/count)·invstd·weight; a null
/// weight is 1, null sums are 0 (the eval-mode gradient dy·invstd·weight).
void batch_norm_backward_elemt(void* dx, const void* dy, const void* x, const void* mean, const void* invstd,
                               const void* weight, const void* sum_dy, const void* sum_dy_xmu, int64_t count,
                               DType dtype, int64_t n, int64_t c, int64_t inner, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
