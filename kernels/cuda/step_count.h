// Per-parameter step counts of capturable optimizers on CUDA: one small launch moves
// many counts on after a step, read by the step kernels at run time so that a step
// captured in a CUDA graph replays with the count of the moment.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"

namespace tandem::kernels::cuda {

/// kernels::cpu::increment_step_counts on the GPU (device pointers; `found_inf` null or
/// a device f32 flag): one launch per kStepCountsPerLaunch counts.
void increment_step_counts(double* const* counts, int64_t count, const float* found_inf, cudaStream_t stream);

inline constexpr int kStepCountsPerLaunch = 256;

}  // namespace tandem::kernels::cuda
