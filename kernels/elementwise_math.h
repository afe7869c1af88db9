// The scalar math behind the element-wise kernels, written once for host and
// device so the CPU and CUDA paths compute the same formulas. C is the compute
// type (float or double).
#pragma once

#include <cmath>
#include <type_traits>

#include "kernels/elementwise.h"
#include "kernels/half.h"

namespace tandem::kernels {

template <class C>
TANDEM_HOST_DEVICE inline C m_exp(C x) {
  if constexpr (std::is_same_v<C, float>) return expf(x); else return exp(x);
}
template <class C>
TANDEM_HOST_DEVICE inline C m_log(C x) {
  if constexpr (std::is_same_v<C, float>) return logf(x); else return log(x);
}
template <class C>
TANDEM_HOST_DEVICE inline C m_sqrt(C x) {
  if constexpr (std::is_same_v<C, float>) return sqrtf(x); else return sqrt(x);
}
template <class C>
TANDEM_HOST_DEVICE inline C m_tanh(C x) {
  if constexpr (std::is_same_v<C, float>) return tanhf(x); else return tanh(x);
}
template <class C>
TANDEM_HOST_DEVICE inline C m_erf(C x) {
  if constexpr (std::is_same_v<C, float>) return erff(x); else return erf(x);
}

// GELU constants: 1/sqrt(2), 1/sqrt(2π), sqrt(2/π).
inline constexpr double kInvSqrt2 = 0.70710678118654752440;
inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;
inline constexpr double kSqrt2OverPi = 0.79788456080286535588;

template <UnaryOp Op, class C>
TANDEM_HOST_DEVICE inline C unary_apply(C x) {
  if constexpr (Op == UnaryOp::kNeg) return -x;
  if constexpr (Op == UnaryOp::kExp) return m_exp(x);
  if constexpr (Op == UnaryOp::kLog) return m_log(x);
  if constexpr (Op == UnaryOp::kSqrt) return m_sqrt(x);
  if constexpr (Op == UnaryOp::kRelu) return x > C(0) ? x : C(0);
  if constexpr (Op == UnaryOp::kGelu) return C(0.5) * x * (C(1) + m_erf(x * C(kInvSqrt2)));
  if constexpr (Op == UnaryOp::kGeluTanh) {
    C inner = C(kSqrt2OverPi) * (x + C(0.044715) * x * x * x);
    return C(0.5) * x * (C(1) + m_tanh(inner));
  }
  if constexpr (Op == UnaryOp::kTanh) return m_tanh(x);
  // 1/(1+e^-x) overflows gracefully: e^-x -> inf gives 0, the right limit.
  if constexpr (Op == UnaryOp::kSigmoid) return C(1) / (C(1) + m_exp(-x));
  if constexpr (Op == UnaryOp::kSquare) return x * x;
}

/// dy · f'(s), with s the saved input or output (see UnaryGradOp).
template <UnaryGradOp Op, class C>
TANDEM_HOST_DEVICE inline C unary_grad_apply(C dy, C s) {
  if constexpr (Op == UnaryGradOp::kRelu) return s > C(0) ? dy : C(0);
  if constexpr (Op == UnaryGradOp::kGelu) {
    // d/dx x·Φ(x) = Φ(x) + x·φ(x)
    C cdf = C(0.5) * (C(1) + m_erf(s * C(kInvSqrt2)));
    C pdf = C(kInvSqrt2Pi) * m_exp(C(-0.5) * s * s);
    return dy * (cdf + s * pdf);
  }
  if constexpr (Op == UnaryGradOp::kGeluTanh) {
    C x2 = s * s;
    C inner = C(kSqrt2OverPi) * (s + C(0.044715) * x2 * s);
    C t = m_tanh(inner);
    C dinner = C(kSqrt2OverPi) * (C(1) + C(3 * 0.044715) * x2);
    return dy * (C(0.5) * (C(1) + t) + C(0.5) * s * (C(1) - t * t) * dinner);
  }
  if constexpr (Op == UnaryGradOp::kTanhFromOutput) return dy * (C(1) - s * s);
  if constexpr (Op == UnaryGradOp::kSigmoidFromOutput) return dy * s * (C(1) - s);
}

template <BinaryOp Op, class C>
TANDEM_HOST_DEVICE inline C binary_apply(C a, C b, C alpha) {
  if constexpr (Op == BinaryOp::kAdd) return a + alpha * b;
  if constexpr (Op == BinaryOp::kSub) return a - b;
  if constexpr (Op == BinaryOp::kMul) return a * b;
  if constexpr (Op == BinaryOp::kDiv) return a / b;
  if constexpr (Op == BinaryOp::kEq) return a == b;
}

template <ScalarOp Op, class C>
TANDEM_HOST_DEVICE inline C scalar_apply(C a, C s) {
  if constexpr (Op == ScalarOp::kAdd) return a + s;
  if constexpr (Op == ScalarOp::kMul) return a * s;
  if constexpr (Op == ScalarOp::kRsub) return s - a;
  if constexpr (Op == ScalarOp::kRdiv) return s / a;
}

}  // namespace tandem::kernels
