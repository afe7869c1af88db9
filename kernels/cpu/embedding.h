// Embedding lookup on the host: a row gather, and its gradient, a scatter-add of
// gradient rows into the rows that were picked.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// out[i, :] = weight[indices[i], :] for i in [0, n), weight (num_rows, dim).
/// Returns the position of the first index outside [0, num_rows) (whose row, and the
/// rows after it, are left unwritten), or -1 when all are valid.
int64_t embedding_forward(DType dtype, void* out, const void* weight, const int64_t* indices, int64_t n,
                          int64_t num_rows, int64_t dim);

/// grad_acc[indices[i], :] += grad_out[i, :] for every i whose index is not
/// `padding_idx` (and lies in [0, num_rows)). grad_out has `dtype`; grad_acc holds its
/// accumulation type (f32 for f16/bf16, so repeated indices are summed without
/// rounding at every step) and must be zero-filled by the caller.
void embedding_backward(DType dtype, void* grad_acc, const void* grad_out, const int64_t* indices, int64_t n,
                        int64_t num_rows, int64_t dim, int64_t padding_idx);

}  // namespace tandem::kernels::cpu
