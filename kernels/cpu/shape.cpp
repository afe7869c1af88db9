// Host permuted and strided copies, on raw bytes of the element size.
#include "kernels/cpu/shape.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels::cpu {
namespace {

/// Walks the output in order with an odometer over its outer dims; the innermost
/// output dim is a strided read of the input.
template <class Word>
void permute_typed(Word* out, const Word* in, int ndim, const int64_t* in_shape, const int64_t* dims) {
  int64_t in_strides[kMaxPermuteDims];
  int64_t stride = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    in_strides[d] = stride;
    stride *= in_shape[d];
  }
  int64_t out_shape[kMaxPermuteDims], src_stride[kMaxPermuteDims];
  int64_t total = 1;
  for (int i = 0; i < ndim; ++i) {
    out_shape[i] = in_shape[dims[i]];
    src_stride[i] = in_strides[dims[i]];
    total *= out_shape[i];
  }
  if (total == 0) return;
  if (ndim == 0) {
    out[0] = in[0];
    return;
  }
  const int64_t inner = out_shape[ndim - 1];
  const int64_t inner_stride = src_stride[ndim - 1];
  int64_t counter[kMaxPermuteDims] = {};
  int64_t src = 0;
  for (int64_t base = 0; base < total; base += inner) {
    for (int64_t j = 0; j < inner; ++j) out[base + j] = in[src + j * inner_stride];
    // Advance the odometer over dims 0..ndim-2.
    for (int d = ndim - 2; d >= 0; --d) {
      src += src_stride[d];
      if (++counter[d] < out_shape[d]) break;
      src -= src_stride[d] * out_shape[d];
      counter[d] = 0;
    }
  }
}

}  // namespace

void permute_copy(DType dtype, void* out, const void* in, int ndim, const int64_t* in_shape, const int64_t* dims) {
  if (ndim < 0 || ndim > kMaxPermuteDims)
    throw std::logic_error("[permute_copy] expected at most " + std::to_string(kMaxPermuteDims) + " dims, got " +
                           std::to_string(ndim));
  switch (dtype_size(dtype)) {
    case 1: permute_typed(static_cast<uint8_t*>(out), static_cast<const uint8_t*>(in), ndim, in_shape, dims); return;
    case 2: permute_typed(static_cast<uint16_t*>(out), static_cast<const uint16_t*>(in), ndim, in_shape, dims); return;
    case 4: permute_typed(static_cast<uint32_t*>(out), static_cast<const uint32_t*>(in), ndim, in_shape, dims); return;
    case 8: permute_typed(static_cast<uint64_t*>(out), static_cast<const uint64_t*>(in), ndim, in_shape, dims); return;
    default: unreachable_dtype("permute_copy", dtype);
  }
}

void copy_2d(DType dtype, void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t rows,
             int64_t cols) {
  const size_t elem = dtype_size(dtype);
  const size_t row_bytes = static_cast<size_t>(cols) * elem;
  if (rows == 0 || row_bytes == 0) return;
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  if (dst_pitch == cols && src_pitch == cols) {  // both dense: one block
    std::memcpy(d, s, row_bytes * static_cast<size_t>(rows));
    return;
  }
  for (int64_t r = 0; r < rows; ++r) std::memcpy(d + r * dst_pitch * elem, s + r * src_pitch * elem, row_bytes);
}

}  // namespace tandem::kernels::cpu
