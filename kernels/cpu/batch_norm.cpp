// CPU twins of kernels/cuda/batch_norm.cu. Channel sums run in f64 with four
// independent accumulators (so the loop is not one long dependency chain); the
// variance takes a second pass over the channel, Σ (x − mean)², which stays exact
// where Σx² − n·mean² would cancel. Channels (reductions) or planes (element-wise
// passes) are split across OpenMP threads above kParallelMinElements.
#include "kernels/cpu/batch_norm.h"

#include <cmath>

#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

// Σ f(v[k]) over k < len, in f64.
template <class T, class F>
double sum_plane(const T* v, int64_t len, F f) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= len; k += 4) {
    s0 += f(static_cast<double>(v[k]));
    s1 += f(static_cast<double>(v[k + 1]));
    s2 += f(static_cast<double>(v[k + 2]));
    s3 += f(static_cast<double>(v[k + 3]));
  }
  for (; k < len; ++k) s0 += f(static_cast<double>(v[k]));
  return (s0 + s1) + (s2 + s3);
}

template <class T>
void stats_typed(compute_t<T>* mean, compute_t<T>* invstd, const T* x, int64_t n, int64_t c, int64_t inner,
                 double eps) {
  using A = compute_t<T>;
  const int64_t count = n * inner;
#pragma omp parallel for schedule(static) if (n * c * inner >= kParallelMinElements)
  for (int64_t ch = 0; ch < c; ++ch) {
    if (count == 0) {
      mean[ch] = A(0);
      invstd[ch] = A(0);
      continue;
    }
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += sum_plane(x + (i * c + ch) * inner, inner, [](double v) { return v; });
    const double m = s / static_cast<double>(count);
    double ss = 0;
    for (int64_t i = 0; i < n; ++i)
      ss += sum_plane(x + (i * c + ch) * inner, inner, [m](double v) { return (v - m) * (v - m); });
    mean[ch] = static_cast<A>(m);
    invstd[ch] = static_cast<A>(1.0 / std::sqrt(ss / static_cast<double>(count) + eps));
  }
}

template <class T>
void elemt_typed(T* y, const T* x, const compute_t<T>* mean, const compute_t<T>* invstd, const compute_t<T>* weight,
                 const compute_t<T>* bias, int64_t n, int64_t c, int64_t inner) {
  using A = compute_t<T>;
  const int64_t planes = n * c;
#pragma omp parallel for schedule(static) if (planes * inner >= kParallelMinElements)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t ch = p % c;
    const A m = mean[ch];
    const A scale = invstd[ch] * (weight ? weight[ch] : A(1));
    const A shift = bias ? bias[ch] : A(0);
    const T* xp = x + p * inner;
    T* yp = y + p * inner;
    for (int64_t k = 0; k < inner; ++k) yp[k] = static_cast<T>((static_cast<A>(xp[k]) - m) * scale + shift);
  }
}

template <class T>
void backward_reduce_typed(compute_t<T>* sum_dy, compute_t<T>* sum_dy_xmu, compute_t<T>* grad_weight,
                           compute_t<T>* grad_bias, const T* dy, const T* x, const compute_t<T>* mean,
                           const compute_t<T>* invstd, int64_t n, int64_t c, int64_t inner) {
  using A = compute_t<T>;
#pragma omp parallel for schedule(static) if (n * c * inner >= kParallelMinElements)
  for (int64_t ch = 0; ch < c; ++ch) {
    const double m = static_cast<double>(mean[ch]);
    double sdy = 0, sdyx = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t base = (i * c + ch) * inner;
      const T* dyp = dy + base;
      const T* xp = x + base;
      // One pass over the plane for both sums, two accumulators each.
      double a0 = 0, a1 = 0, b0 = 0, b1 = 0;
      int64_t k = 0;
      for (; k + 2 <= inner; k += 2) {
        const double g0 = static_cast<double>(dyp[k]), g1 = static_cast<double>(dyp[k + 1]);
        a0 += g0;
        a1 += g1;
        b0 += g0 * (static_cast<double>(xp[k]) - m);
        b1 += g1 * (static_cast<double>(xp[k + 1]) - m);
      }
      if (k < inner) {
        const double g = static_cast<double>(dyp[k]);
        a0 += g;
        b0 += g * (static_cast<double>(xp[k]) - m);
      }
      sdy += a0 + a1;
      sdyx += b0 + b1;
    }
    sum_dy[ch] = static_cast<A>(sdy);
    sum_dy_xmu[ch] = static_cast<A>(sdyx);
    if (grad_weight) grad_weight[ch] = static_cast<A>(sdyx * static_cast<double>(invstd[ch]));
    if (grad_bias) grad_bias[ch] = static_cast<A>(sdy);
  }
}

template <class T>
void backward_elemt_typed(T* dx, const T* dy, const T* x, const compute_t<T>* mean, const compute_t<T>* invstd,
                          const compute_t<T>* weight, const compute_t<T>* sum_dy, const compute_t<T>* sum_dy_xmu,
                          int64_t count, int64_t n, int64_t c, int64_t inner) {
  using A = compute_t<T>;
  const int64_t planes = n * c;
  const A inv_count = count > 0 ? A(1) / static_cast<A>(count) : A(0);
#pragma omp parallel for schedule(static) if (planes * inner >= kParallelMinElements)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t ch = p % c;
    const A m = mean[ch], is = invstd[ch];
    const A mean_dy = sum_dy ? sum_dy[ch] * inv_count : A(0);
    const A k_xmu = sum_dy_xmu ? sum_dy_xmu[ch] * inv_count * is * is : A(0);
    const A scale = is * (weight ? weight[ch] : A(1));
    const T* dyp = dy + p * inner;
    const T* xp = x + p * inner;
    T* dxp = dx + p * inner;
    for (int64_t k = 0; k < inner; ++k)
      dxp[k] = static_cast<T>((static_cast<A>(dyp[k]) - mean_dy - (static_cast<A>(xp[k]) - m) * k_xmu) * scale);
  }
}

}  // namespace

void batch_norm_stats(void* mean, void* invstd, const void* x, DType dtype, int64_t n, int64_t c, int64_t inner,
                      double eps) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        stats_typed(static_cast<A*>(mean), static_cast<A*>(invstd), static_cast<const T*>(x), n, c, inner, eps);
      }))
    unreachable_dtype("batch_norm_stats", dtype);
}

void batch_norm_elemt(void* y, const void* x, const void* mean, const void* invstd, const void* weight,
                      const void* bias, DType dtype, int64_t n, int64_t c, int64_t inner) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        elemt_typed(static_cast<T*>(y), static_cast<const T*>(x), static_cast<const A*>(mean),
                    static_cast<const A*>(invstd), static_cast<const A*>(weight), static_cast<const A*>(bias), n, c,
                    inner);
      }))
    unreachable_dtype("batch_norm_elemt", dtype);
}

void batch_norm_backward_reduce(void* sum_dy, void* sum_dy_xmu, void* grad_weight, void* grad_bias, const void* dy,
                                const void* x, const void* mean, const void* invstd, DType dtype, int64_t n, int64_t c,
                                int64_t inner) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        backward_reduce_typed(static_cast<A*>(sum_dy), static_cast<A*>(sum_dy_xmu), static_cast<A*>(grad_weight),
                              static_cast<A*>(grad_bias), static_cast<const T*>(dy), static_cast<const T*>(x),
                              static_cast<const A*>(mean), static_cast<const A*>(invstd), n, c, inner);
      }))
    unreachable_dtype("batch_norm_backward_reduce", dtype);
}

void batch_norm_backward_elemt(void* dx, const void* dy, const void* x, const void* mean, const void* invstd,
                               const void* weight, const void* sum_dy, const void* sum_dy_xmu, int64_t count,
                               DType dtype, int64_t n, int64_t c, int64_t inner) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        backward_elemt_typed(static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(x),
                             static_cast<const A*>(mean), static_cast<const A*>(invstd), static_cast<const A*>(weight),
                             static_cast<const A*>(sum_dy), static_cast<const A*>(sum_dy_xmu), count, n, c, inner);
      }))
    unreachable_dtype("batch_norm_backward_elemt", dtype);
}

}  // namespace tandem::kernels::cpu
