// CPU gradient-norm kernels: f64 accumulation (an f32 sum of squares over millions of
// elements would lose digits), OpenMP only above the parallel threshold.
#include "kernels/cpu/norm2.h"

#include <cmath>

#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

template <class T>
double accumulate_typed(const T* x, int64_t n, double p) {
  const NormKind kind = norm_kind(p);
  if (kind == NormKind::kMaxAbs) {
    double m = 0.0;
    bool nan = false;
#pragma omp parallel for schedule(static) reduction(max : m) reduction(|| : nan) if (n >= kParallelMinElements)
    for (int64_t i = 0; i < n; ++i) {
      const double a = std::abs(static_cast<double>(static_cast<compute_t<T>>(x[i])));
      if (a != a) nan = true;
      m = a > m ? a : m;
    }
    return nan ? std::nan("") : m;
  }
  double s = 0.0;
  if (kind == NormKind::kSquares) {
#pragma omp parallel for schedule(static) reduction(+ : s) if (n >= kParallelMinElements)
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(static_cast<compute_t<T>>(x[i]));
      s += v * v;
    }
  } else {
#pragma omp parallel for schedule(static) reduction(+ : s) if (n >= kParallelMinElements)
    for (int64_t i = 0; i < n; ++i) s += std::pow(std::abs(static_cast<double>(static_cast<compute_t<T>>(x[i]))), p);
  }
  return s;
}

template <class T>
void scale_typed(T* x, int64_t n, double factor) {
  using C = compute_t<T>;
  const C f = static_cast<C>(factor);
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>(static_cast<C>(x[i]) * f);
}

}  // namespace

double norm_accumulate(DType dtype, const void* x, int64_t n, double norm_type) {
  double out = 0.0;
  if (!visit_floating(dtype, [&](auto tag) {
        using T = decltype(tag);
        out = accumulate_typed(static_cast<const T*>(x), n, norm_type);
      })) {
    unreachable_dtype("norm_accumulate", dtype);
  }
  return out;
}

void scale_inplace(DType dtype, void* x, int64_t n, double factor) {
  if (!visit_floating(dtype, [&](auto tag) {
        using T = decltype(tag);
        scale_typed(static_cast<T*>(x), n, factor);
      })) {
    unreachable_dtype("scale_inplace", dtype);
  }
}

void clip_norm_finish(const double* const* parts, int64_t count, double norm_type, double max_norm, double* total,
                      double* factor) {
  const NormKind kind = norm_kind(norm_type);
  double acc = 0.0;
  for (int64_t i = 0; i < count; ++i) acc = norm_combine(kind, acc, *parts[i]);
  *total = norm_from_accumulator(kind, acc, norm_type);
  *factor = clip_factor(max_norm, *total);
}

}  // namespace tandem::kernels::cpu
