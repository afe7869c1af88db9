// CPU fused cross-entropy (log-softmax + NLL with label smoothing) on logits (N, C)
// and int64 targets (N). Per-row losses and log-sum-exps are kept in the compute
// type (f32 for f32/f16/bf16 logits, f64 for f64) so reductions do not round twice.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// Per row i with t = target[i] != ignore_index:
///   lse[i] = log Σ_c exp(x_ic);  loss[i] = (1−ε)(lse − x_it) + ε(lse − mean_c x_ic)
/// and loss[i] = 0 for ignored rows. `row_loss` and `lse` are compute-type arrays.
/// Targets must already be validated (in [0, C) or ignore_index).
void cross_entropy_forward(void* row_loss, void* lse, const void* logits, const int64_t* targets, DType dtype,
                           int64_t n, int64_t c, int64_t ignore_index, double label_smoothing);

/// out (a scalar of `dtype`) = Σ_i row_loss[i], divided by the number of
/// non-ignored rows when `mean`; denom (a compute-type scalar) receives that divisor
/// (1 for a sum) for the backward pass.
void cross_entropy_reduce(void* out, void* denom, const void* row_loss, const int64_t* targets, DType dtype,
                          int64_t n, int64_t ignore_index, bool mean);

/// dx_ic = (softmax_ic − (1−ε)[c == t_i] − ε/C) · g_i / denom, zero for ignored rows.
/// g_i = grad[i] (dtype) when `grad_per_row`, else grad[0]; denom is the compute-type
/// scalar from cross_entropy_reduce, or null for 1.
void cross_entropy_backward(void* dx, const void* logits, const void* lse, const int64_t* targets, const void* grad,
                            bool grad_per_row, const void* denom, DType dtype, int64_t n, int64_t c,
                            int64_t ignore_index, double label_smoothing);

}  // namespace tandem::kernels::cpu
