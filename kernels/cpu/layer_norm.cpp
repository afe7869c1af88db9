// CPU twins of kernels/cuda/layer_norm.cu. Rows are independent and split across
// OpenMP threads; the per-column weight and bias gradients split the columns
// instead, each thread summing all rows of its columns in f64 (rows in order, so the
// result does not depend on the thread count).
#include "kernels/cpu/layer_norm.h"

#include <algorithm>
#include <cmath>

#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

// Columns per task of the weight/bias gradient: its accumulators stay on the stack.
constexpr int64_t kColumnBlock = 256;

template <class T>
void forward_typed(T* y, compute_t<T>* mean, compute_t<T>* rstd, const T* x, const T* weight, const T* bias,
                   int64_t rows, int64_t cols, double eps) {
  using A = compute_t<T>;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(xr[j]);
    const double m = cols > 0 ? s / static_cast<double>(cols) : 0.0;
    double ss = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double d = static_cast<double>(xr[j]) - m;
      ss += d * d;
    }
    const double is = 1.0 / std::sqrt((cols > 0 ? ss / static_cast<double>(cols) : 0.0) + eps);
    mean[r] = static_cast<A>(m);
    rstd[r] = static_cast<A>(is);
    // The element-wise pass uses the rounded statistics, as the GPU does.
    const A ma = static_cast<A>(m), ia = static_cast<A>(is);
    for (int64_t j = 0; j < cols; ++j) {
      A v = (static_cast<A>(xr[j]) - ma) * ia;
      if (weight) v *= static_cast<A>(weight[j]);
      if (bias) v += static_cast<A>(bias[j]);
      yr[j] = static_cast<T>(v);
    }
  }
}

template <class T>
void backward_typed(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const compute_t<T>* mean,
                    const compute_t<T>* rstd, const T* weight, int64_t rows, int64_t cols) {
  using A = compute_t<T>;
  if (dx) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      const T* dyr = dy + r * cols;
      T* dxr = dx + r * cols;
      const double m = static_cast<double>(mean[r]), is = static_cast<double>(rstd[r]);
      double sg = 0, sgx = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const double g = static_cast<double>(dyr[j]) * (weight ? static_cast<double>(weight[j]) : 1.0);
        sg += g;
        sgx += g * (static_cast<double>(xr[j]) - m) * is;
      }
      const A mg = static_cast<A>(sg / static_cast<double>(cols));
      const A mgx = static_cast<A>(sgx / static_cast<double>(cols));
      const A ma = mean[r], ia = rstd[r];
      for (int64_t j = 0; j < cols; ++j) {
        const A g = static_cast<A>(dyr[j]) * (weight ? static_cast<A>(weight[j]) : A(1));
        const A xhat = (static_cast<A>(xr[j]) - ma) * ia;
        dxr[j] = static_cast<T>((g - mg - xhat * mgx) * ia);
      }
    }
  }
  if (dweight || dbias) {
    const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t j0 = b * kColumnBlock, len = std::min(kColumnBlock, cols - j0);
      double acc_w[kColumnBlock] = {}, acc_b[kColumnBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols + j0;
        const T* dyr = dy + r * cols + j0;
        const double m = static_cast<double>(mean[r]), is = static_cast<double>(rstd[r]);
        for (int64_t j = 0; j < len; ++j) {
          const double g = static_cast<double>(dyr[j]);
          acc_w[j] += g * (static_cast<double>(xr[j]) - m) * is;
          acc_b[j] += g;
        }
      }
      for (int64_t j = 0; j < len; ++j) {
        if (dweight) dweight[j0 + j] = static_cast<T>(acc_w[j]);
        if (dbias) dbias[j0 + j] = static_cast<T>(acc_b[j]);
      }
    }
  }
}

}  // namespace

void layer_norm_forward(void* y, void* mean, void* rstd, const void* x, const void* weight, const void* bias,
                        DType dtype, int64_t rows, int64_t cols, double eps) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        forward_typed(static_cast<T*>(y), static_cast<A*>(mean), static_cast<A*>(rstd), static_cast<const T*>(x),
                      static_cast<const T*>(weight), static_cast<const T*>(bias), rows, cols, eps);
      }))
    unreachable_dtype("layer_norm_forward", dtype);
}

void layer_norm_backward(void* dx, void* dweight, void* dbias, const void* dy, const void* x, const void* mean,
                         const void* rstd, const void* weight, DType dtype, int64_t rows, int64_t cols) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        backward_typed(static_cast<T*>(dx), static_cast<T*>(dweight), static_cast<T*>(dbias),
                       static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const A*>(mean),
                       static_cast<const A*>(rstd), static_cast<const T*>(weight), rows, cols);
      }))
    unreachable_dtype("layer_norm_backward", dtype);
}

}  // namespace tandem::kernels::cpu
