// CPU unscale-and-check-for-inf: one pass per tensor, in the arithmetic PyTorch uses
// (value in f32, or f64 for f64 tensors, times the f32 reciprocal of the scale).
#include "kernels/cpu/amp.h"

#include <cmath>

#include "kernels/amp_math.h"
#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

/// Returns true when any of the n values was not finite.
template <class T>
bool unscale_typed(T* x, int64_t n, float inv_scale) {
  using C = compute_t<T>;
  const C inv = static_cast<C>(inv_scale);
  const bool scale = inv_scale != 1.0f;
  bool bad = false;
#pragma omp parallel for schedule(static) reduction(|| : bad) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    const C v = static_cast<C>(x[i]);
    bad = bad || !std::isfinite(v);
    if (scale) x[i] = static_cast<T>(v * inv);
  }
  return bad;
}

}  // namespace

void amp_unscale_check_finite(DType dtype, void* const* tensors, const int64_t* numel, int64_t count, float inv_scale,
                              const float* scale, float* found_inf) {
  if (scale != nullptr) inv_scale = amp_inverse_scale(*scale);
  const bool known = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    bool bad = false;
    for (int64_t i = 0; i < count; ++i) {
      if (numel[i] > 0) bad = unscale_typed(static_cast<T*>(tensors[i]), numel[i], inv_scale) || bad;
    }
    if (bad) *found_inf = 1.0f;
  });
  if (!known) unreachable_dtype("amp_unscale_check_finite", dtype);
}

void amp_update_scale(float* scale, int64_t* growth_tracker, int64_t* skipped_steps, const float* const* found_inf,
                      const bool* stepped, int64_t count, double growth_factor, double backoff_factor,
                      int64_t growth_interval) {
  bool found = false;
  for (int64_t i = 0; i < count; ++i) {
    const bool bad = *found_inf[i] != 0.0f;
    found = found || bad;
    if (bad && stepped[i]) ++*skipped_steps;
  }
  *scale = amp_next_scale(*scale, growth_tracker, found, growth_factor, backoff_factor, growth_interval);
}

}  // namespace tandem::kernels::cpu
