// CPU twins of kernels/cuda/cross_entropy.cu: one pass per row for the log-sum-exp
// and the loss, a reduction in f64, and a backward that recomputes softmax from the
// saved log-sum-exp instead of storing the (N, C) probabilities.
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/common.h"

namespace tandem::kernels::cpu {
namespace {


template <class T>
void forward_typed(compute_t<T>* row_loss, compute_t<T>* lse_out, const T* logits, const int64_t* targets, int64_t n,
                   int64_t c, int64_t ignore_index, double eps) {
  using C = compute_t<T>;
  const C keep = static_cast<C>(1.0 - eps), smooth = static_cast<C>(eps);
#pragma omp parallel for schedule(static) if (n * c >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    const T* x = logits + i * c;
    C m = -std::numeric_limits<C>::infinity();
    for (int64_t j = 0; j < c; ++j) m = std::max(m, static_cast<C>(x[j]));
    const C shift = std::isinf(m) ? C(0) : m;  // all -inf: avoid (-inf) - (-inf)
    C s = 0, total = 0;
    for (int64_t j = 0; j < c; ++j) {
      const C v = static_cast<C>(x[j]);
      s += std::exp(v - shift);
      total += v;
    }
    const C lse = shift + std::log(s);
    lse_out[i] = lse;
    const int64_t t = targets[i];
    if (t == ignore_index) {
      row_loss[i] = 0;
      continue;
    }
    C loss = keep * (lse - static_cast<C>(x[t]));
    // Skip the smoothing term when ε = 0 so an infinite logit elsewhere in the row
    // cannot turn 0·inf into NaN, as PyTorch's unsmoothed path never computes it.
    if (eps != 0.0) loss += smooth * (lse - total / static_cast<C>(c));
    row_loss[i] = loss;
  }
}

template <class T>
void reduce_typed(T* out, compute_t<T>* denom, const compute_t<T>* row_loss, const int64_t* targets, int64_t n,
                  int64_t ignore_index, bool mean) {
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    total += static_cast<double>(row_loss[i]);
    count += targets[i] != ignore_index;
  }
  // With every row ignored a mean is 0/0 = NaN, as in PyTorch.
  const double d = mean ? static_cast<double>(count) : 1.0;
  *out = static_cast<T>(static_cast<compute_t<T>>(total / d));
  *denom = static_cast<compute_t<T>>(d);
}

template <class T>
void backward_typed(T* dx, const T* logits, const compute_t<T>* lse, const int64_t* targets, const T* grad,
                    bool grad_per_row, const compute_t<T>* denom, int64_t n, int64_t c, int64_t ignore_index,
                    double eps) {
  using C = compute_t<T>;
  const C keep = static_cast<C>(1.0 - eps), smooth = static_cast<C>(eps / static_cast<double>(c));
  const C inv_denom = denom ? C(1) / *denom : C(1);
#pragma omp parallel for schedule(static) if (n * c >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    T* d = dx + i * c;
    const int64_t t = targets[i];
    if (t == ignore_index) {
      std::fill(d, d + c, static_cast<T>(0.0f));
      continue;
    }
    const C g = static_cast<C>(grad[grad_per_row ? i : 0]) * inv_denom;
    const T* x = logits + i * c;
    for (int64_t j = 0; j < c; ++j) {
      C p = std::exp(static_cast<C>(x[j]) - lse[i]) - smooth;
      if (j == t) p -= keep;
      d[j] = static_cast<T>(p * g);
    }
  }
}

}  // namespace

void cross_entropy_forward(void* row_loss, void* lse, const void* logits, const int64_t* targets, DType dtype,
                           int64_t n, int64_t c, int64_t ignore_index, double label_smoothing) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using C = compute_t<T>;
        forward_typed(static_cast<C*>(row_loss), static_cast<C*>(lse), static_cast<const T*>(logits), targets, n, c,
                      ignore_index, label_smoothing);
      }))
    unreachable_dtype("cross_entropy_forward", dtype);
}

void cross_entropy_reduce(void* out, void* denom, const void* row_loss, const int64_t* targets, DType dtype,
                          int64_t n, int64_t ignore_index, bool mean) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using C = compute_t<T>;
        reduce_typed(static_cast<T*>(out), static_cast<C*>(denom), static_cast<const C*>(row_loss), targets, n,
                     ignore_index, mean);
      }))
    unreachable_dtype("cross_entropy_reduce", dtype);
}

void cross_entropy_backward(void* dx, const void* logits, const void* lse, const int64_t* targets, const void* grad,
                            bool grad_per_row, const void* denom, DType dtype, int64_t n, int64_t c,
                            int64_t ignore_index, double label_smoothing) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using C = compute_t<T>;
        backward_typed(static_cast<T*>(dx), static_cast<const T*>(logits), static_cast<const C*>(lse), targets,
                       static_cast<const T*>(grad), grad_per_row, static_cast<const C*>(denom), n, c, ignore_index,
                       label_smoothing);
      }))
    unreachable_dtype("cross_entropy_backward", dtype);
}

}  // namespace tandem::kernels::cpu
