// The arithmetic of clip_grad_norm shared by the host path (optim/clip.cpp) and the
// kernels that finish it on the device (kernels/{cpu,cuda}/norm2): how accumulators of
// several tensor groups combine, the norm they give, and the clip coefficient.
#pragma once

#include <cmath>
#include <limits>

#include "kernels/half.h"  // TANDEM_HOST_DEVICE

namespace tandem::kernels {

/// How a norm of order p accumulates: Σx² (p = 2), max|x| (p = ∞), else Σ|x|^p.
enum class NormKind { kSquares, kMaxAbs, kPower };

/// The accumulation used for norm order `norm_type` (> 0 or +∞).
inline NormKind norm_kind(double norm_type) {
  if (norm_type == 2.0) return NormKind::kSquares;
  if (norm_type == std::numeric_limits<double>::infinity()) return NormKind::kMaxAbs;
  return NormKind::kPower;
}

/// Two accumulators combined: their sum, or for kMaxAbs the maximum (NaN propagates,
/// so a NaN gradient anywhere makes the norm NaN, as in PyTorch).
TANDEM_HOST_DEVICE inline double norm_combine(NormKind kind, double a, double b) {
  if (kind == NormKind::kMaxAbs) return (b > a || b != b) ? b : a;
  return a + b;
}

/// The norm of order p from its accumulator: sqrt, the p-th root, or itself for ∞.
TANDEM_HOST_DEVICE inline double norm_from_accumulator(NormKind kind, double acc, double p) {
  if (kind == NormKind::kMaxAbs) return acc;
  if (kind == NormKind::kSquares) return sqrt(acc);
  return pow(acc, 1.0 / p);
}

/// The factor clip_grad_norm scales every gradient by: min(max_norm / (norm + 1e-6), 1),
/// NaN for a NaN norm (every gradient then becomes NaN, as in PyTorch).
TANDEM_HOST_DEVICE inline double clip_factor(double max_norm, double total) {
  const double coef = max_norm / (total + 1e-6);
  return coef < 1.0 || coef != coef ? coef : 1.0;
}

}  // namespace tandem::kernels
