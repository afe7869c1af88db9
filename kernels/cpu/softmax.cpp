// CPU twins of kernels/cuda/softmax.cu. Max and sums are taken in compute_t (f32 for
// f16/bf16/f32, f64 for f64), as on the GPU, so the two agree to rounding.
#include "kernels/cpu/softmax.h"
#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/common.h"

namespace tandem::kernels::cpu {
namespace {

// Rows below this many elements in total are not worth waking the OpenMP team for.

template <class T>
void forward_typed(T* y, const T* x, int64_t outer, int64_t n, int64_t inner, bool log) {
  using C = compute_t<T>;
  const int64_t lines = outer * inner;
#pragma omp parallel for schedule(static) if (lines * n >= kParallelMinElements)
  for (int64_t line = 0; line < lines; ++line) {
    const int64_t o = line / inner, i = line % inner;
    const T* xl = x + o * n * inner + i;
    T* yl = y + o * n * inner + i;
    C m = -std::numeric_limits<C>::infinity();
    for (int64_t j = 0; j < n; ++j) m = std::max(m, static_cast<C>(xl[j * inner]));
    // A row of -inf has no finite maximum; shifting by 0 keeps exp() from producing
    // NaN out of (-inf) - (-inf) and gives the same NaN/0 PyTorch does.
    const C shift = std::isinf(m) ? C(0) : m;
    C s = 0;
    for (int64_t j = 0; j < n; ++j) s += std::exp(static_cast<C>(xl[j * inner]) - shift);
    if (log) {
      const C lse = shift + std::log(s);
      for (int64_t j = 0; j < n; ++j) yl[j * inner] = static_cast<T>(static_cast<C>(xl[j * inner]) - lse);
    } else {
      const C inv = C(1) / s;
      for (int64_t j = 0; j < n; ++j) yl[j * inner] = static_cast<T>(std::exp(static_cast<C>(xl[j * inner]) - shift) * inv);
    }
  }
}

template <class T>
void backward_typed(T* dx, const T* dy, const T* y, int64_t outer, int64_t n, int64_t inner, bool log) {
  using C = compute_t<T>;
  const int64_t lines = outer * inner;
#pragma omp parallel for schedule(static) if (lines * n >= kParallelMinElements)
  for (int64_t line = 0; line < lines; ++line) {
    const int64_t o = line / inner, i = line % inner;
    const int64_t base = o * n * inner + i;
    C s = 0;
    if (log) {
      for (int64_t j = 0; j < n; ++j) s += static_cast<C>(dy[base + j * inner]);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = base + j * inner;
        dx[k] = static_cast<T>(static_cast<C>(dy[k]) - std::exp(static_cast<C>(y[k])) * s);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) s += static_cast<C>(dy[base + j * inner]) * static_cast<C>(y[base + j * inner]);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = base + j * inner;
        dx[k] = static_cast<T>(static_cast<C>(y[k]) * (static_cast<C>(dy[k]) - s));
      }
    }
  }
}

}  // namespace

void softmax_forward(void* y, const void* x, DType dtype, int64_t outer, int64_t n, int64_t inner, bool log) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        forward_typed(static_cast<T*>(y), static_cast<const T*>(x), outer, n, inner, log);
      }))
    unreachable_dtype("softmax_forward", dtype);
}

void softmax_backward(void* dx, const void* dy, const void* y, DType dtype, int64_t outer, int64_t n, int64_t inner,
                      bool log) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        backward_typed(static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(y), outer, n, inner, log);
      }))
    unreachable_dtype("softmax_backward", dtype);
}

}  // namespace tandem::kernels::cpu
