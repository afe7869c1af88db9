// CPU kernels that create or convert data: dtype casts, constant fills, ranges.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// dst[i] = convert(src[i]) for n elements (a memcpy when the dtypes match).
void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n);
/// out[i] = value converted to dtype.
void fill(DType dtype, void* out, double value, int64_t n);
/// out[i] = start + i·step converted to dtype.
void arange(DType dtype, void* out, double start, double step, int64_t n);

}  // namespace tandem::kernels::cpu
