// CPU softmax of attention scores: the scaled, optionally causal softmax between the
// two matrix products of scaled_dot_product_attention. Scores are `batch` blocks of
// t_q rows by t_k columns; with `causal`, row i keeps columns j <= i (PyTorch's
// top-left alignment, tril(ones(t_q, t_k))) and the rest are exactly 0.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// p = softmax(scale·s) along each row, masked as above. p may alias s.
void attention_softmax_forward(void* p, const void* s, DType dtype, int64_t batch, int64_t t_q, int64_t t_k,
                               double scale, bool causal);

/// ds = scale·p·(dp − Σ_j dp·p) along each row (0 where masked). ds may alias dp.
void attention_softmax_backward(void* ds, const void* dp, const void* p, DType dtype, int64_t batch, int64_t t_q,
                                int64_t t_k, double scale, bool causal);

}  // namespace tandem::kernels::cpu
