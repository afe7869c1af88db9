// Data movement behind the shape ops: permuted copies (transpose, permute) and 2-D
// strided block copies (cat, narrow and its gradient). Dtype-agnostic: only the
// element size matters.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// Most dims a permuted copy handles (after the engine merges dims that stay adjacent).
inline constexpr int kMaxPermuteDims = 8;

/// out = in with dims reordered: out.shape[i] = in_shape[dims[i]], both contiguous;
/// `ndim` <= kMaxPermuteDims.
void permute_copy(DType dtype, void* out, const void* in, int ndim, const int64_t* in_shape, const int64_t* dims);

/// Copies `rows` rows of `cols` elements: dst[r·dst_pitch + j] = src[r·src_pitch + j]
/// (pitches in elements). How cat writes each input into its slab of the output and
/// how a narrowed copy is gathered.
void copy_2d(DType dtype, void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t rows,
             int64_t cols);

}  // namespace tandem::kernels::cpu
