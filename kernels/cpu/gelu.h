// GELU (erf form) and its gradient over contiguous f32 arrays, vectorised through
// Eigen's packet erf and exp: glibc's erff and expf are scalar calls that GCC does not
// vectorise, and were most of a GPT feed-forward's element-wise time. Used by the
// element-wise kernels and the fused bias + activation epilogue for float.
#pragma once

#include <cstdint>

namespace tandem::kernels::cpu {

/// y[i] = x[i]·Φ(x[i]) = 0.5·x·(1 + erf(x/√2)). Eigen's erf is a rational approximation
/// within a few ulp of erff on [-4, 4] (±1 outside), so results may differ from the
/// scalar formula in the last bits.
void gelu_f32(float* y, const float* x, int64_t n);

/// dx[i] = dy[i]·(Φ(x[i]) + x[i]·φ(x[i])); dx may alias dy.
void gelu_grad_f32(float* dx, const float* dy, const float* x, int64_t n);

}  // namespace tandem::kernels::cpu
