// CUDA softmax and log-softmax along one dim, seen as an (outer, n, inner) block.
// Launchers only; includable from host code without the CUDA toolkit.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// y = softmax(x) (or log_softmax when `log`) along the middle extent n.
void softmax_forward(void* y, const void* x, DType dtype, int64_t outer, int64_t n, int64_t inner, bool log,
                     cudaStream_t stream);

/// softmax: dx = y·(dy − Σ dy·y);  log_softmax: dx = dy − exp(y)·Σ dy.
void softmax_backward(void* dx, const void* dy, const void* y, DType dtype, int64_t outer, int64_t n, int64_t inner,
                      bool log, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
