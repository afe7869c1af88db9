// Matrix products: matmul (2-D, batched 3-D, and 3-D x 2-D), and linear (x·Wᵀ + b).
// CPU through Eigen, CUDA through cuBLAS.
#pragma once

#include "engine/tensor.h"

namespace tandem {

/// (M,K)@(K,N) -> (M,N); (B,M,K)@(B,K,N) -> (B,M,N); (B,M,K)@(K,N) -> (B,M,N).
Tensor matmul(const Tensor& a, const Tensor& b);
/// Batched product of 3-D tensors (B,M,K)@(B,K,N).
Tensor bmm(const Tensor& a, const Tensor& b);
/// y = x·Wᵀ + b for x of shape (..., in), W (out, in), b (out) or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

}  // namespace tandem
