// CUDA kernels that create or convert data: dtype casts, constant fills, ranges, byte fills.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n, cudaStream_t stream);
void fill(DType dtype, void* out, double value, int64_t n, cudaStream_t stream);
void arange(DType dtype, void* out, double start, double step, int64_t n, cudaStream_t stream);
/// Sets nbytes bytes to `value` (cudaMemsetAsync).
void fill_bytes(void* out, int value, size_t nbytes, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
