// CUDA element-wise kernels (16-byte vectorised when aligned): the same contract as
// kernels/cpu/elementwise.h, launched on `stream`.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"
#include "kernels/elementwise.h"

namespace tandem::kernels::cuda {

void unary(UnaryOp op, DType dtype, void* out, const void* in, int64_t n, cudaStream_t stream);
void unary_grad(UnaryGradOp op, DType dtype, void* dx, const void* dy, const void* saved, int64_t n,
                cudaStream_t stream);
void binary(BinaryOp op, DType dtype, void* out, const void* a, const void* b, double alpha,
            const BroadcastLayout& layout, int64_t n, cudaStream_t stream);
void scalar(ScalarOp op, DType dtype, void* out, const void* a, double s, int64_t n, cudaStream_t stream);

/// out (contiguous, the layout's extents) = in broadcast: out[i] = in[Σ ik·a_strides[k]].
void broadcast_copy(DType dtype, void* out, const void* in, const BroadcastLayout& layout, int64_t n,
                    cudaStream_t stream);

}  // namespace tandem::kernels::cuda
