// Multi-tensor unscale-and-check-for-inf: the launch plan of multi_tensor.cuh packs up
// to kAmpMaxTensors gradient pointers; each block scales one 64Ki-element chunk and, if
// any of its values was not finite, one thread writes 1 to the found-inf flag. The
// scale update is one thread over the scaler's state.
#include "kernels/cuda/amp.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/amp_math.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/multi_tensor.cuh"

namespace tandem::kernels::cuda {
namespace {

constexpr int kAmpBlockSize = 512;

// One list. 128·(8 + 8) + 320·(1 + 4) + 1 = 3649 bytes, under the classic 4 KiB limit.
using AmpLaunchArgs = TensorListArgs<1, kAmpMaxTensors, kAmpMaxBlocks>;
static_assert(sizeof(AmpLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

// The test is on the value before scaling (as PyTorch): a finite value times 1/scale
// stays finite, and NaN·x or inf·x must be reported whatever the scale is. Blocks
// write the flag only when they saw a bad value, so concurrent writers all store the
// same 1 and the common all-finite case issues no global write at all.
template <class T>
__global__ void __launch_bounds__(kAmpBlockSize)
    amp_unscale_kernel(const __grid_constant__ AmpLaunchArgs args, float inv_scale, const float* __restrict__ scale,
                       float* __restrict__ found_inf) {
  using C = compute_t<T>;
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  T* __restrict__ x = static_cast<T*>(args.ptr[0][t]);
  if (scale != nullptr) inv_scale = amp_inverse_scale(*scale);
  const C inv = static_cast<C>(inv_scale);
  const bool rescale = inv_scale != 1.0f;
  int bad = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kAmpBlockSize) {
    const C v = static_cast<C>(x[i]);
    bad |= !isfinite(v);
    if (rescale) x[i] = static_cast<T>(v * inv);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1.0f;
}

struct AmpUpdateArgs {
  const float* found_inf[kAmpMaxUpdateFlags];
  bool stepped[kAmpMaxUpdateFlags];
  int count;
};
static_assert(sizeof(AmpUpdateArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

__global__ void amp_update_scale_kernel(float* scale, int64_t* growth_tracker, int64_t* skipped_steps,
                                        const __grid_constant__ AmpUpdateArgs args, double growth_factor,
                                        double backoff_factor, int64_t growth_interval) {
  bool found = false;
  for (int i = 0; i < args.count; ++i) {
    const bool bad = *args.found_inf[i] != 0.0f;
    found = found || bad;
    if (bad && args.stepped[i]) ++*skipped_steps;
  }
  *scale = amp_next_scale(*scale, growth_tracker, found, growth_factor, backoff_factor, growth_interval);
}

template <class Launch>
void plan(void* const* tensors, const int64_t* numel, int64_t count, Launch&& launch) {
  plan_tensor_list_launches<AmpLaunchArgs>(
      count,
      [&](int64_t i, AmpLaunchArgs& args, int slot) {
        args.ptr[0][slot] = tensors[i];
        return numel[i];
      },
      launch);
}

}  // namespace

void amp_unscale_check_finite(DType dtype, void* const* tensors, const int64_t* numel, int64_t count, float inv_scale,
                              const float* scale, float* found_inf, cudaStream_t stream) {
  const bool known = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    plan(tensors, numel, count, [&](const AmpLaunchArgs& args, int blocks, int64_t) {
      amp_unscale_kernel<T><<<blocks, kAmpBlockSize, 0, stream>>>(args, inv_scale, scale, found_inf);
      CUDA_CHECK_LAUNCH();
    });
  });
  if (!known) unreachable_dtype("amp_unscale_check_finite", dtype);
}

void amp_update_scale(float* scale, int64_t* growth_tracker, int64_t* skipped_steps, const float* const* found_inf,
                      const bool* stepped, int64_t count, double growth_factor, double backoff_factor,
                      int64_t growth_interval, cudaStream_t stream) {
  if (count < 0 || count > kAmpMaxUpdateFlags)
    throw std::logic_error("[amp_update_scale] expected at most " + std::to_string(kAmpMaxUpdateFlags) +
                           " found-inf flags, got " + std::to_string(count));
  AmpUpdateArgs args{};
  args.count = static_cast<int>(count);
  for (int64_t i = 0; i < count; ++i) {
    args.found_inf[i] = found_inf[i];
    args.stepped[i] = stepped[i];
  }
  amp_update_scale_kernel<<<1, 1, 0, stream>>>(scale, growth_tracker, skipped_steps, args, growth_factor,
                                               backoff_factor, growth_interval);
  CUDA_CHECK_LAUNCH();
}

int64_t amp_unscale_check_finite_launches(const int64_t* numel, int64_t count) {
  int64_t launches = 0;
  std::vector<void*> none(static_cast<size_t>(count), nullptr);
  plan(none.data(), numel, count, [&](const AmpLaunchArgs&, int, int64_t) { ++launches; });
  return launches;
}

}  // namespace tandem::kernels::cuda
