// Element-wise ops: unary math, binary arithmetic with NumPy broadcasting (and
// scalar forms), comparisons and the in-place updates optimizers and autograd use.
#pragma once

#include "engine/tensor.h"

namespace tandem {

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor relu(const Tensor& x);
/// GELU: x·Φ(x) with the exact erf form, or the tanh approximation when `tanh_approximation`.
Tensor gelu(const Tensor& x, bool tanh_approximation = false);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor square(const Tensor& x);

/// a + alpha·b with broadcasting. Operands must share dtype and device.
Tensor add(const Tensor& a, const Tensor& b, double alpha = 1.0);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
/// b - a
Tensor rsub(const Tensor& a, double b);
/// b / a
Tensor rdiv(const Tensor& a, double b);

/// Element-wise equality, as bool, with broadcasting (not differentiable).
Tensor eq(const Tensor& a, const Tensor& b);

/// x broadcast (NumPy rules) to `shape`, materialised; the backward sums back.
Tensor broadcast_to(const Tensor& x, const Shape& shape);

/// The shape `a` and `b` broadcast to; throws naming both shapes if they cannot.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op = "broadcast");

// In-place updates, never recorded by autograd (use under NoGradGuard or on leaves'
// .grad). `self` must already have the broadcast shape.
Tensor& add_(Tensor& self, const Tensor& other, double alpha = 1.0);
Tensor& mul_(Tensor& self, double value);

inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double b) { return add(a, b); }
inline Tensor operator+(double a, const Tensor& b) { return add(b, a); }
inline Tensor operator-(const Tensor& a, double b) { return add(a, -b); }
inline Tensor operator-(double a, const Tensor& b) { return rsub(b, a); }
inline Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
inline Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
inline Tensor operator/(const Tensor& a, double b) { return mul(a, 1.0 / b); }
inline Tensor operator/(double a, const Tensor& b) { return rdiv(b, a); }

}  // namespace tandem
