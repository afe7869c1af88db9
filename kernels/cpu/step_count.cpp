// CPU step counts of capturable optimizers: a loop over the counts.
#include "kernels/cpu/step_count.h"

namespace tandem::kernels::cpu {

void increment_step_counts(double* const* counts, int64_t count, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  for (int64_t i = 0; i < count; ++i) *counts[i] += 1.0;
}

}  // namespace tandem::kernels::cpu
