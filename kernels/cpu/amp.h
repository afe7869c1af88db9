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
/// are ignored. With `scale` not null, inv_scale is not used: the scale is read from
/// that memory (f32) when the kernel runs and inv_scale = f32(1 / f64(*scale)), as
/// PyTorch's GradScaler computes it on the device.
void amp_unscale_check_finite(DType dtype, void* const* tensors, const int64_t* numel, int64_t count, float inv_scale,
                              const float* scale, float* found_inf);

/// The scaler's update applied to its state in memory (kernels::amp_next_scale, as
/// PyTorch's _amp_update_scale_) with found = any *found_inf[i] != 0 (i < count); also
/// adds to *skipped_steps the number of i with stepped[i] and *found_inf[i] != 0 (the
/// optimizer steps those flags skipped).
void amp_update_scale(float* scale, int64_t* growth_tracker, int64_t* skipped_steps, const float* const* found_inf,
                      const bool* stepped, int64_t count, double growth_factor, double backoff_factor,
                      int64_t growth_interval);

}  // namespace tandem::kernels::cpu
