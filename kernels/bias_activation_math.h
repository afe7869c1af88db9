// The per-element math of the fused bias + activation epilogue, shared by the CPU
// and CUDA kernels: the activation and its derivative, from the pre-activation h
// (GELUs) or the output (ReLU: h > 0 exactly where the output is > 0).
#pragma once

#include <type_traits>

#include "kernels/elementwise_math.h"

namespace tandem::kernels {

/// act(h).
template <Activation Act, class C>
TANDEM_HOST_DEVICE inline C activation_apply(C h) {
  if constexpr (Act == Activation::kNone) return h;
  if constexpr (Act == Activation::kRelu) return unary_apply<UnaryOp::kRelu, C>(h);
  if constexpr (Act == Activation::kGelu) return unary_apply<UnaryOp::kGelu, C>(h);
  if constexpr (Act == Activation::kGeluTanh) return unary_apply<UnaryOp::kGeluTanh, C>(h);
}

/// True when backward reads the pre-activation rather than the output.
TANDEM_HOST_DEVICE constexpr bool activation_saves_input(Activation act) {
  return act == Activation::kGelu || act == Activation::kGeluTanh;
}

/// dy · act'(h), with `saved` the output y for kNone/kRelu and h for the GELUs.
template <Activation Act, class C>
TANDEM_HOST_DEVICE inline C activation_grad(C dy, C saved) {
  if constexpr (Act == Activation::kNone) return dy;
  if constexpr (Act == Activation::kRelu) return unary_grad_apply<UnaryGradOp::kRelu, C>(dy, saved);
  if constexpr (Act == Activation::kGelu) return unary_grad_apply<UnaryGradOp::kGelu, C>(dy, saved);
  if constexpr (Act == Activation::kGeluTanh) return unary_grad_apply<UnaryGradOp::kGeluTanh, C>(dy, saved);
}

/// Calls f(std::integral_constant<Activation, act>{}) so kernels are instantiated per activation.
template <class F>
inline void visit_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kNone: f(std::integral_constant<Activation, Activation::kNone>{}); return;
    case Activation::kRelu: f(std::integral_constant<Activation, Activation::kRelu>{}); return;
    case Activation::kGelu: f(std::integral_constant<Activation, Activation::kGelu>{}); return;
    case Activation::kGeluTanh: f(std::integral_constant<Activation, Activation::kGeluTanh>{}); return;
  }
}

}  // namespace tandem::kernels
