// Matrix products: matmul (2-D, batched 3-D, and 3-D x 2-D), linear (act(x·Wᵀ + b)), and
// scaled dot-product attention (two products around a softmax). CPU through Eigen,
// CUDA through cuBLAS.
#pragma once

#include <optional>

#include "engine/tensor.h"
#include "kernels/elementwise.h"

namespace tandem {

/// (M,K)@(K,N) -> (M,N); (B,M,K)@(B,K,N) -> (B,M,N); (B,M,K)@(K,N) -> (B,M,N).
Tensor matmul(const Tensor& a, const Tensor& b);
/// Batched product of 3-D tensors (B,M,K)@(B,K,N).
Tensor bmm(const Tensor& a, const Tensor& b);
/// What linear() applies after the product: kNone, kRelu, kGelu (erf) or kGeluTanh.
using Activation = kernels::Activation;

/// y = act(x·Wᵀ + b) for x of shape (..., in), W (out, in), b (out) or undefined.
/// With an activation, bias and activation are one pass after the product (a fused
/// epilogue) and backward computes the activation and bias gradients in one pass;
/// equal to linear() followed by relu() or gelu() up to rounding.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              Activation activation = Activation::kNone);

/// PyTorch's F.scaled_dot_product_attention without dropout or an explicit mask:
/// softmax(q·kᵀ·scale)·v for q (..., Tq, E), k (..., Tk, E), v (..., Tk, Ev) with equal
/// leading dims (batch, heads, ...), giving (..., Tq, Ev). `scale` defaults to
/// 1/sqrt(E). With `is_causal`, query i attends to keys 0..i (PyTorch's top-left
/// alignment). The attention weights (..., Tq, Tk) are kept for backward, as in
/// PyTorch's math path: memory grows with Tq·Tk. Under autocast it runs in the low
/// precision; the softmax accumulates in f32 either way.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool is_causal = false,
                                    std::optional<double> scale = std::nullopt);

}  // namespace tandem
