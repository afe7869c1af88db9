// CUDA fused cross-entropy on logits (N, C) and int64 targets (N). Launchers only;
// the contracts match kernels/cpu/cross_entropy.h (per-row loss and lse in the
// compute type) except for targets outside [0, C): the device cannot throw, so
// such rows get a NaN loss and NaN gradients instead of an out-of-bounds read.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// lse[i] = log Σ_c exp(x_ic);  row_loss[i] = (1−ε)(lse − x_it) + ε(lse − mean_c x_ic), 0 when ignored.
void cross_entropy_forward(void* row_loss, void* lse, const void* logits, const int64_t* targets, DType dtype,
                           int64_t n, int64_t c, int64_t ignore_index, double label_smoothing, cudaStream_t stream);

/// out (scalar, dtype) = Σ row_loss [/ count of non-ignored rows when `mean`]; denom
/// (compute-type scalar) = that divisor, or 1. Writes both even for n == 0.
void cross_entropy_reduce(void* out, void* denom, const void* row_loss, const int64_t* targets, DType dtype,
                          int64_t n, int64_t ignore_index, bool mean, cudaStream_t stream);

/// dx_ic = (softmax_ic − (1−ε)[c == t_i] − ε/C) · g_i / denom, zero for ignored rows.
void cross_entropy_backward(void* dx, const void* logits, const void* lse, const int64_t* targets, const void* grad,
                            bool grad_per_row, const void* denom, DType dtype, int64_t n, int64_t c,
                            int64_t ignore_index, double label_smoothing, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
