// Gradient-norm kernels for clip_grad_norm on the CPU: the p-th power sum (or the
// maximum magnitude) of a tensor, accumulated in f64, and in-place scaling.
#pragma once

#include <cstdint>
#include <limits>

#include "kernels/dtype.h"

namespace tandem::kernels {

/// How a norm of order p accumulates: Σx² (p = 2), max|x| (p = ∞), else Σ|x|^p.
enum class NormKind { kSquares, kMaxAbs, kPower };

/// The accumulation used for norm order `norm_type` (> 0 or +∞).
inline NormKind norm_kind(double norm_type) {
  if (norm_type == 2.0) return NormKind::kSquares;
  if (norm_type == std::numeric_limits<double>::infinity()) return NormKind::kMaxAbs;
  return NormKind::kPower;
}

}  // namespace tandem::kernels

namespace tandem::kernels::cpu {

/// Σ|x_i|^p over n floating elements in f64 (Σx² for p = 2, max|x_i| for p = ∞, 0 for
/// n = 0); NaN propagates. The norm is the result^(1/p) (the result itself for ∞).
double norm_accumulate(DType dtype, const void* x, int64_t n, double norm_type);

/// x *= factor in place on n floating elements.
void scale_inplace(DType dtype, void* x, int64_t n, double factor);

}  // namespace tandem::kernels::cpu
