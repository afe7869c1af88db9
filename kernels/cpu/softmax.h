// CPU softmax and log-softmax along one dim of a contiguous tensor, seen as an
// (outer, n, inner) block: element (o, j, i) lives at (o·n + j)·inner + i.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// y = softmax(x) (or log_softmax when `log`) along the middle extent n.
void softmax_forward(void* y, const void* x, DType dtype, int64_t outer, int64_t n, int64_t inner, bool log);

/// softmax:     dx = y·(dy − Σ_j dy·y)
/// log_softmax: dx = dy − exp(y)·Σ_j dy
void softmax_backward(void* dx, const void* dy, const void* y, DType dtype, int64_t outer, int64_t n, int64_t inner,
                      bool log);

}  // namespace tandem::kernels::cpu
