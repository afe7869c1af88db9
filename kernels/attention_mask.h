// The causal mask of scaled_dot_product_attention, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "kernels/half.h"  // TANDEM_HOST_DEVICE

namespace tandem::kernels {

/// Columns query row i attends to among t_k keys: all of them, or with `causal`
/// min(i + 1, t_k) (PyTorch's top-left alignment, tril(ones(t_q, t_k))).
TANDEM_HOST_DEVICE inline int64_t attention_row_extent(int64_t i, int64_t t_k, bool causal) {
  return causal ? (i + 1 < t_k ? i + 1 : t_k) : t_k;
}

}  // namespace tandem::kernels
