// CPU fused bias + activation: rows split over OpenMP threads; the bias gradient
// sums fixed blocks of rows into f64 partials that are added in block order.
#include "kernels/cpu/bias_activation.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/bias_activation_math.h"
#include "kernels/common.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

// Rows per block of the bias-gradient partials: fixed, so the summation order (and
// the result) is the same for any number of threads.
constexpr int64_t kRowsPerBlock = 128;

template <Activation Act, class T>
void forward_typed(T* out, T* hidden, const T* bias, int64_t rows, int64_t cols) {
  using C = compute_t<T>;
  const bool keep_hidden = out != hidden;
  if constexpr (Act == Activation::kGelu && std::is_same_v<T, float>) {
    // The bias in place, then the vectorised GELU (gelu.h) row by row.
#pragma omp parallel for if (rows * cols > kParallelMinElements)
    for (int64_t r = 0; r < rows; ++r) {
      float* h = hidden + r * cols;
      if (bias) {
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) h[c] += bias[c];
      }
      gelu_f32(out + r * cols, h, cols);
    }
    return;
  }
#pragma omp parallel for if (rows * cols > kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    T* h = hidden + r * cols;
    T* y = out + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      // The pre-activation is rounded to T first, as the separate linear output would
      // be, so f16/bf16 results match linear() followed by the activation.
      const T pre = bias ? static_cast<T>(static_cast<C>(h[c]) + static_cast<C>(bias[c])) : h[c];
      if (keep_hidden) h[c] = pre;
      y[c] = static_cast<T>(activation_apply<Act, C>(static_cast<C>(pre)));
    }
  }
}

// dh = dy · act'(s) over rows [begin, end); with kSum, acc[c] += Σ_r dh[r, c].
template <Activation Act, bool kSum, class T>
void grad_rows(T* dh, const T* dy, const T* s, int64_t begin, int64_t end, int64_t cols, double* acc) {
  using C = compute_t<T>;
  if constexpr (Act == Activation::kGelu && std::is_same_v<T, float>) {
    gelu_grad_f32(dh + begin * cols, dy + begin * cols, s + begin * cols, (end - begin) * cols);  // vectorised
    if constexpr (kSum) {
      for (int64_t r = begin; r < end; ++r) {
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) acc[c] += static_cast<double>(dh[r * cols + c]);
      }
    }
    return;
  }
  for (int64_t r = begin; r < end; ++r) {
    const int64_t base = r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const T g = static_cast<T>(activation_grad<Act, C>(static_cast<C>(dy[base + c]), static_cast<C>(s[base + c])));
      dh[base + c] = g;
      if constexpr (kSum) acc[c] += static_cast<double>(static_cast<C>(g));
    }
  }
}

template <Activation Act, class T>
void backward_typed(T* dh, T* bias_grad, const T* dy, const T* s, int64_t rows, int64_t cols) {
  const bool parallel = rows * cols > kParallelMinElements;
  if (!bias_grad) {
#pragma omp parallel for if (parallel)
    for (int64_t r = 0; r < rows; ++r) grad_rows<Act, false>(dh, dy, s, r, r + 1, cols, nullptr);
    return;
  }
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<double> partial(static_cast<size_t>(blocks * cols), 0.0);
#pragma omp parallel for if (parallel)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kRowsPerBlock, end = std::min(rows, begin + kRowsPerBlock);
    grad_rows<Act, true>(dh, dy, s, begin, end, cols, partial.data() + b * cols);
  }
  for (int64_t c = 0; c < cols; ++c) {
    double sum = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sum += partial[static_cast<size_t>(b * cols + c)];
    bias_grad[c] = static_cast<T>(sum);
  }
}

}  // namespace

void bias_activation_forward(Activation act, DType dtype, void* out, void* hidden, const void* bias, int64_t rows,
                             int64_t cols) {
  const bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    visit_activation(act, [&](auto a) {
      forward_typed<decltype(a)::value>(static_cast<T*>(out), static_cast<T*>(hidden), static_cast<const T*>(bias),
                                        rows, cols);
    });
  });
  if (!ok) unreachable_dtype("cpu::bias_activation_forward", dtype);
}

void bias_activation_backward(Activation act, DType dtype, void* dhidden, void* bias_grad, const void* dout,
                              const void* saved, int64_t rows, int64_t cols) {
  const bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    visit_activation(act, [&](auto a) {
      backward_typed<decltype(a)::value>(static_cast<T*>(dhidden), static_cast<T*>(bias_grad),
                                         static_cast<const T*>(dout), static_cast<const T*>(saved), rows, cols);
    });
  });
  if (!ok) unreachable_dtype("cpu::bias_activation_backward", dtype);
}

}  // namespace tandem::kernels::cpu
