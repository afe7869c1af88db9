// Mixed-precision gradient unscaling on the CPU, the twin of kernels/cuda/amp.cu:
// multiply every gradient by 1/scale in place and raise a found-inf flag when any
// value (before unscaling) is infinite or NaN, as torch._amp_foreach_non_finite_check_and_unscale_.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// For each of `count` floating tensors of `dtype`: x = x·inv_scale in place, computed
/// in f32 (f64 for f64 tensors) and skipped when inv_scale == 1; sets *found_inf = 1
/// when any x was ±inf or NaN before scaling (never clears it). Tensors of 0 elements
/// are ignored.
void amp_unscale_check_finite(DType dtype, void* const* tensors, const int64_t* numel, int64_t count, float inv_scale,
                              float* found_inf);

}  // namespace tandem::kernels::cpu
