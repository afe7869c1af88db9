// Embedding lookup on the GPU: a row gather and an atomic scatter-add for its
// gradient. Includable without the CUDA toolkit.
//
// Indices are not validated on the device (a check would need a host sync per call):
// an index outside [0, num_rows) yields a zero row in the forward and contributes
// nothing to the gradient, so a bad index never reads or writes out of bounds.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// out[i, :] = weight[indices[i], :] for i in [0, n) (zeros for an out-of-range index).
void embedding_forward(DType dtype, void* out, const void* weight, const int64_t* indices, int64_t n,
                       int64_t num_rows, int64_t dim, cudaStream_t stream);

/// grad_acc[indices[i], :] += grad_out[i, :] with atomicAdd, skipping `padding_idx`
/// and out-of-range indices. grad_acc holds the accumulation type (f32 for f16/bf16)
/// and must be zero-filled by the caller. Summation order varies between runs.
void embedding_backward(DType dtype, void* grad_acc, const void* grad_out, const int64_t* indices, int64_t n,
                        int64_t num_rows, int64_t dim, int64_t padding_idx, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
