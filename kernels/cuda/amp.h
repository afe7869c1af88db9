// Fused multi-tensor unscale-and-check-for-inf on CUDA for the GradScaler: one launch
// multiplies a whole gradient list by 1/scale and raises a device-side found-inf flag,
// as PyTorch's _amp_foreach_non_finite_check_and_unscale_ (no host synchronisation).
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// kernels::cpu::amp_unscale_check_finite for `count` floating tensors of `dtype` on
/// the current device: x = x·inv_scale in place (f32 arithmetic, f64 for f64 tensors;
/// no write when inv_scale == 1) and *found_inf = 1 (a device f32) when any value was
/// ±inf or NaN before scaling; the flag is never cleared here. With `scale` (a device
/// f32) not null, every block computes inv_scale from it when it runs (a captured
/// graph unscales by the scale of the moment). One launch unless more than
/// kAmpMaxTensors tensors or kAmpMaxBlocks 64Ki-element chunks are given.
void amp_unscale_check_finite(DType dtype, void* const* tensors, const int64_t* numel, int64_t count, float inv_scale,
                              const float* scale, float* found_inf, cudaStream_t stream);

/// kernels::cpu::amp_update_scale on the current device, one thread (device pointers;
/// the found_inf and stepped arrays are host arrays of at most kAmpMaxUpdateFlags).
void amp_update_scale(float* scale, int64_t* growth_tracker, int64_t* skipped_steps, const float* const* found_inf,
                      const bool* stepped, int64_t count, double growth_factor, double backoff_factor,
                      int64_t growth_interval, cudaStream_t stream);

inline constexpr int kAmpMaxUpdateFlags = 32;

/// Launches amp_unscale_check_finite makes for tensors of these sizes (for tests).
int64_t amp_unscale_check_finite_launches(const int64_t* numel, int64_t count);

inline constexpr int kAmpMaxTensors = 128;
inline constexpr int kAmpMaxBlocks = 320;

}  // namespace tandem::kernels::cuda
