// CUDA reductions over the middle axis of an (outer, n, inner) view; the same
// contract as kernels/cpu/reduce.h except that floating sums accumulate in f32
// (f64 for f64) with a tree order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// Scratch bytes sum() needs for this shape (0 when it needs none).
size_t sum_workspace_bytes(DType dtype, int64_t outer, int64_t n, int64_t inner);
void sum(DType dtype, void* out, const void* in, int64_t outer, int64_t n, int64_t inner, double scale,
         void* workspace, cudaStream_t stream);
void max(DType dtype, void* values, int64_t* indices, const void* in, int64_t outer, int64_t n, int64_t inner,
         cudaStream_t stream);

}  // namespace tandem::kernels::cuda
