// GPU data movement behind the shape ops: permuted copies (transpose, permute) and
// 2-D strided block copies (cat, narrow). Includable without the CUDA toolkit.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// Most dims a permuted copy handles (after the engine merges dims that stay adjacent).
inline constexpr int kMaxPermuteDims = 8;

/// out = in with dims reordered: out.shape[i] = in_shape[dims[i]], both contiguous;
/// `ndim` <= kMaxPermuteDims.
void permute_copy(DType dtype, void* out, const void* in, int ndim, const int64_t* in_shape, const int64_t* dims,
                  cudaStream_t stream);

/// Copies `rows` rows of `cols` elements: dst[r·dst_pitch + j] = src[r·src_pitch + j]
/// (pitches in elements), with the widest word (up to 16 bytes) alignment allows.
void copy_2d(DType dtype, void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t rows,
             int64_t cols, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
