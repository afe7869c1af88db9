// CUDA softmax of attention scores (see kernels/cpu/attention.h for the contract).
// Launchers only; includable from host code without the CUDA toolkit.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// p = softmax(scale·s) along each of the batch·t_q rows of t_k scores; with `causal`
/// row i keeps columns j <= i and the rest are 0. p may alias s.
void attention_softmax_forward(void* p, const void* s, DType dtype, int64_t batch, int64_t t_q, int64_t t_k,
                               double scale, bool causal, cudaStream_t stream);

/// ds = scale·p·(dp − Σ_j dp·p) along each row (0 where masked). ds may alias dp.
void attention_softmax_backward(void* ds, const void* dp, const void* p, DType dtype, int64_t batch, int64_t t_q,
                                int64_t t_k, double scale, bool causal, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
