// Gradient-norm kernels for clip_grad_norm on the CPU: the p-th power sum (or the
// maximum magnitude) of a tensor, accumulated in f64, and in-place scaling.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/norm_math.h"

namespace tandem::kernels::cpu {

/// Σ|x_i|^p over n floating elements in f64 (Σx² for p = 2, max|x_i| for p = ∞, 0 for
/// n = 0); NaN propagates. The norm is the result^(1/p) (the result itself for ∞).
double norm_accumulate(DType dtype, const void* x, int64_t n, double norm_type);

/// x *= factor in place on n floating elements.
void scale_inplace(DType dtype, void* x, int64_t n, double factor);

/// The end of clip_grad_norm kept in memory (twin of kernels::cuda::clip_norm_finish):
/// *total = the norm of order norm_type from the `count` accumulators *parts[i]
/// (norm_combine, norm_from_accumulator) and *factor = clip_factor(max_norm, *total).
void clip_norm_finish(const double* const* parts, int64_t count, double norm_type, double max_norm, double* total,
                      double* factor);

}  // namespace tandem::kernels::cpu
