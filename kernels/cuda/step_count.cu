// Step counts of capturable optimizers: the count pointers travel in the kernel
// arguments, one thread per count.
#include "kernels/cuda/step_count.h"

#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

// 256·8 + 8 + 4 bytes, under the classic 4 KiB kernel-argument limit.
struct StepCountArgs {
  double* count[kStepCountsPerLaunch];
  const float* found_inf;
  int n;
};
static_assert(sizeof(StepCountArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

__global__ void increment_step_counts_kernel(const __grid_constant__ StepCountArgs args) {
  if (args.found_inf != nullptr && *args.found_inf != 0.0f) return;
  if (static_cast<int>(threadIdx.x) < args.n) *args.count[threadIdx.x] += 1.0;
}

}  // namespace

void increment_step_counts(double* const* counts, int64_t count, const float* found_inf, cudaStream_t stream) {
  for (int64_t first = 0; first < count; first += kStepCountsPerLaunch) {
    StepCountArgs args{};
    args.found_inf = found_inf;
    args.n = static_cast<int>(count - first < kStepCountsPerLaunch ? count - first : kStepCountsPerLaunch);
    for (int i = 0; i < args.n; ++i) args.count[i] = counts[first + i];
    increment_step_counts_kernel<<<1, kStepCountsPerLaunch, 0, stream>>>(args);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace tandem::kernels::cuda
