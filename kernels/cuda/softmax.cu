// CUDA softmax / log-softmax. Along the last dim (inner == 1) a warp (n ≤ 1024) or a
// 512-thread block (larger n) owns a row and reduces with shuffles; along another dim
// each thread owns one (outer, inner) line, so neighbouring threads read neighbouring
// addresses. Max and sums are in f32 (f64 for f64), as in the CPU twin.
#include "kernels/cuda/softmax.h"

#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce_group.cuh"

namespace tandem::kernels::cuda {
namespace {

template <class T, int kThreads>
__global__ void softmax_rows_forward_kernel(T* y, const T* x, int64_t rows, int64_t n, bool log) {
  using A = compute_t<T>;
  __shared__ A smem[group_smem_slots<kThreads>()];
  const int tid = threadIdx.x;
  // The row index is uniform across a group, so whole groups leave the loop together.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const T* xr = x + row * n;
    T* yr = y + row * n;
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t j = tid; j < n; j += kThreads) m = MaxOp{}(m, static_cast<A>(xr[j]));
    m = group_reduce<kThreads>(m, MaxOp{}, smem);
    // All -inf: shift by 0 so exp() sees -inf, not (-inf) - (-inf) = NaN (CPU does the same).
    const A shift = isinf(m) ? A(0) : m;
    A s = 0;
    for (int64_t j = tid; j < n; j += kThreads) s += exp_a(static_cast<A>(xr[j]) - shift);
    s = group_reduce<kThreads>(s, SumOp{}, smem);
    if (log) {
      const A lse = shift + log_a(s);
      for (int64_t j = tid; j < n; j += kThreads) yr[j] = static_cast<T>(static_cast<A>(xr[j]) - lse);
    } else {
      const A inv = A(1) / s;
      for (int64_t j = tid; j < n; j += kThreads) yr[j] = static_cast<T>(exp_a(static_cast<A>(xr[j]) - shift) * inv);
    }
  }
}

template <class T, int kThreads>
__global__ void softmax_rows_backward_kernel(T* dx, const T* dy, const T* y, int64_t rows, int64_t n, bool log) {
  using A = compute_t<T>;
  __shared__ A smem[group_smem_slots<kThreads>()];
  const int tid = threadIdx.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t base = row * n;
    A s = 0;
    if (log) {
      for (int64_t j = tid; j < n; j += kThreads) s += static_cast<A>(dy[base + j]);
    } else {
      for (int64_t j = tid; j < n; j += kThreads) s += static_cast<A>(dy[base + j]) * static_cast<A>(y[base + j]);
    }
    s = group_reduce<kThreads>(s, SumOp{}, smem);
    for (int64_t j = tid; j < n; j += kThreads) {
      const A g = static_cast<A>(dy[base + j]), v = static_cast<A>(y[base + j]);
      dx[base + j] = static_cast<T>(log ? g - exp_a(v) * s : v * (g - s));
    }
  }
}

template <class T>
__global__ void softmax_lines_forward_kernel(T* y, const T* x, int64_t lines, int64_t n, int64_t inner, bool log) {
  using A = compute_t<T>;
  for (int64_t line = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; line < lines;
       line += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = line / inner, i = line - o * inner;
    const T* xl = x + o * n * inner + i;
    T* yl = y + o * n * inner + i;
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t j = 0; j < n; ++j) m = MaxOp{}(m, static_cast<A>(xl[j * inner]));
    const A shift = isinf(m) ? A(0) : m;
    A s = 0;
    for (int64_t j = 0; j < n; ++j) s += exp_a(static_cast<A>(xl[j * inner]) - shift);
    if (log) {
      const A lse = shift + log_a(s);
      for (int64_t j = 0; j < n; ++j) yl[j * inner] = static_cast<T>(static_cast<A>(xl[j * inner]) - lse);
    } else {
      const A inv = A(1) / s;
      for (int64_t j = 0; j < n; ++j) yl[j * inner] = static_cast<T>(exp_a(static_cast<A>(xl[j * inner]) - shift) * inv);
    }
  }
}

template <class T>
__global__ void softmax_lines_backward_kernel(T* dx, const T* dy, const T* y, int64_t lines, int64_t n, int64_t inner,
                                              bool log) {
  using A = compute_t<T>;
  for (int64_t line = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; line < lines;
       line += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = line / inner, i = line - o * inner;
    const int64_t base = o * n * inner + i;
    A s = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = base + j * inner;
      s += log ? static_cast<A>(dy[k]) : static_cast<A>(dy[k]) * static_cast<A>(y[k]);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = base + j * inner;
      const A g = static_cast<A>(dy[k]), v = static_cast<A>(y[k]);
      dx[k] = static_cast<T>(log ? g - exp_a(v) * s : v * (g - s));
    }
  }
}

}  // namespace

void softmax_forward(void* y, const void* x, DType dtype, int64_t outer, int64_t n, int64_t inner, bool log,
                     cudaStream_t stream) {
  if (outer * n * inner == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        T* yp = static_cast<T*>(y);
        const T* xp = static_cast<const T*>(x);
        if (inner == 1 && n <= kWarpRowMax) {
          softmax_rows_forward_kernel<T, 32><<<grid_for_rows(outer, kWarpRowsPerBlock), dim3(32, kWarpRowsPerBlock),
                                               0, stream>>>(yp, xp, outer, n, log);
        } else if (inner == 1) {
          softmax_rows_forward_kernel<T, kBlockRowThreads>
              <<<grid_for_rows(outer, 1), dim3(kBlockRowThreads, 1), 0, stream>>>(yp, xp, outer, n, log);
        } else {
          const int64_t lines = outer * inner;
          softmax_lines_forward_kernel<T><<<grid_for(lines), kBlockSize, 0, stream>>>(yp, xp, lines, n, inner, log);
        }
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("softmax_forward", dtype);
}

void softmax_backward(void* dx, const void* dy, const void* y, DType dtype, int64_t outer, int64_t n, int64_t inner,
                      bool log, cudaStream_t stream) {
  if (outer * n * inner == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        T* dxp = static_cast<T*>(dx);
        const T* dyp = static_cast<const T*>(dy);
        const T* yp = static_cast<const T*>(y);
        if (inner == 1 && n <= kWarpRowMax) {
          softmax_rows_backward_kernel<T, 32><<<grid_for_rows(outer, kWarpRowsPerBlock),
                                                dim3(32, kWarpRowsPerBlock), 0, stream>>>(dxp, dyp, yp, outer, n, log);
        } else if (inner == 1) {
          softmax_rows_backward_kernel<T, kBlockRowThreads>
              <<<grid_for_rows(outer, 1), dim3(kBlockRowThreads, 1), 0, stream>>>(dxp, dyp, yp, outer, n, log);
        } else {
          const int64_t lines = outer * inner;
          softmax_lines_backward_kernel<T>
              <<<grid_for(lines), kBlockSize, 0, stream>>>(dxp, dyp, yp, lines, n, inner, log);
        }
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("softmax_backward", dtype);
}

}  // namespace tandem::kernels::cuda
