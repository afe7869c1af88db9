// Per-parameter step counts kept in tensor memory by capturable optimizers (Adam's
// bias corrections, SGD's first step): moved on after each step, unless the step was
// skipped for an inf/NaN gradient. The twin of kernels/cuda/step_count.cu.
#pragma once

#include <cstdint>

namespace tandem::kernels::cpu {

/// *counts[i] += 1 for i < count, after their step; nothing when `found_inf` is not
/// null and *found_inf != 0 (the step was skipped, so the counts stay).
void increment_step_counts(double* const* counts, int64_t count, const float* found_inf);

}  // namespace tandem::kernels::cpu
