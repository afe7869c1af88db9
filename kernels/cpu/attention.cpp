// CPU twins of kernels/cuda/attention.cu. Maxima and sums are taken in compute_t
// (f32 for f16/bf16/f32, f64 for f64), as on the GPU.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/attention_mask.h"
#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

template <class T>
void forward_typed(T* p, const T* s, int64_t batch, int64_t t_q, int64_t t_k, double scale, bool causal) {
  using C = compute_t<T>;
  const C sc = static_cast<C>(scale);
  const int64_t rows = batch * t_q;
#pragma omp parallel for schedule(static) if (rows * t_k >= kParallelMinElements)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = attention_row_extent(row % t_q, t_k, causal);
    const T* sr = s + row * t_k;
    T* pr = p + row * t_k;
    C m = -std::numeric_limits<C>::infinity();
    for (int64_t j = 0; j < n; ++j) m = std::max(m, sc * static_cast<C>(sr[j]));
    // A row of -inf scores has no finite maximum; shifting by 0 gives PyTorch's NaN.
    const C shift = std::isinf(m) ? C(0) : m;
    C sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(sc * static_cast<C>(sr[j]) - shift);
    const C inv = C(1) / sum;
    for (int64_t j = 0; j < n; ++j) pr[j] = static_cast<T>(std::exp(sc * static_cast<C>(sr[j]) - shift) * inv);
    for (int64_t j = n; j < t_k; ++j) pr[j] = T(0);
  }
}

template <class T>
void backward_typed(T* ds, const T* dp, const T* p, int64_t batch, int64_t t_q, int64_t t_k, double scale,
                    bool causal) {
  using C = compute_t<T>;
  const C sc = static_cast<C>(scale);
  const int64_t rows = batch * t_q;
#pragma omp parallel for schedule(static) if (rows * t_k >= kParallelMinElements)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = attention_row_extent(row % t_q, t_k, causal);
    const int64_t base = row * t_k;
    C dot = 0;
    for (int64_t j = 0; j < n; ++j) dot += static_cast<C>(dp[base + j]) * static_cast<C>(p[base + j]);
    for (int64_t j = 0; j < n; ++j) {
      const C pj = static_cast<C>(p[base + j]);
      ds[base + j] = static_cast<T>(sc * pj * (static_cast<C>(dp[base + j]) - dot));
    }
    for (int64_t j = n; j < t_k; ++j) ds[base + j] = T(0);
  }
}

}  // namespace

void attention_softmax_forward(void* p, const void* s, DType dtype, int64_t batch, int64_t t_q, int64_t t_k,
                               double scale, bool causal) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        forward_typed(static_cast<T*>(p), static_cast<const T*>(s), batch, t_q, t_k, scale, causal);
      }))
    unreachable_dtype("attention_softmax_forward", dtype);
}

void attention_softmax_backward(void* ds, const void* dp, const void* p, DType dtype, int64_t batch, int64_t t_q,
                                int64_t t_k, double scale, bool causal) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        backward_typed(static_cast<T*>(ds), static_cast<const T*>(dp), static_cast<const T*>(p), batch, t_q, t_k,
                       scale, causal);
      }))
    unreachable_dtype("attention_softmax_backward", dtype);
}

}  // namespace tandem::kernels::cpu
