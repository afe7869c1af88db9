// CUDA fused cross-entropy: a warp (C ≤ 1024) or a 512-thread block per row computes
// max, Σ exp and Σ x in two passes over the row; a one-block kernel reduces the
// per-row losses in f64 on the device (no host round trip for the count of
// non-ignored rows); the backward is element-wise, recomputing softmax from the lse.
#include "kernels/cuda/cross_entropy.h"

#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce_group.cuh"

namespace tandem::kernels::cuda {
namespace {

constexpr int kReduceThreads = 256;

template <class T, int kThreads>
__global__ void cross_entropy_forward_kernel(compute_t<T>* row_loss, compute_t<T>* lse_out, const T* logits,
                                             const int64_t* targets, int64_t n, int64_t c, int64_t ignore_index,
                                             double eps) {
  using A = compute_t<T>;
  __shared__ A smem[group_smem_slots<kThreads>()];
  const int tid = threadIdx.x;
  const A keep = static_cast<A>(1.0 - eps), smooth = static_cast<A>(eps);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const T* x = logits + row * c;
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t j = tid; j < c; j += kThreads) m = MaxOp{}(m, static_cast<A>(x[j]));
    m = group_reduce<kThreads>(m, MaxOp{}, smem);
    const A shift = isinf(m) ? A(0) : m;  // all -inf: avoid (-inf) - (-inf)
    A s = 0, total = 0;
    for (int64_t j = tid; j < c; j += kThreads) {
      const A v = static_cast<A>(x[j]);
      s += exp_a(v - shift);
      total += v;
    }
    s = group_reduce<kThreads>(s, SumOp{}, smem);
    total = group_reduce<kThreads>(total, SumOp{}, smem);
    if (tid != 0) continue;
    const A lse = shift + log_a(s);
    lse_out[row] = lse;
    const int64_t t = targets[row];
    if (t == ignore_index) {
      row_loss[row] = 0;
    } else if (t < 0 || t >= c) {
      row_loss[row] = std::numeric_limits<A>::quiet_NaN();
    } else {
      A loss = keep * (lse - static_cast<A>(x[t]));
      if (eps != 0.0) loss += smooth * (lse - total / static_cast<A>(c));  // as the CPU twin: no 0·inf
      row_loss[row] = loss;
    }
  }
}

template <class T>
__global__ void cross_entropy_reduce_kernel(T* out, compute_t<T>* denom, const compute_t<T>* row_loss,
                                            const int64_t* targets, int64_t n, int64_t ignore_index, bool mean) {
  __shared__ double smem_sum[kReduceThreads / 32];
  __shared__ long long smem_count[kReduceThreads / 32];
  double total = 0;
  long long count = 0;
  for (int64_t i = threadIdx.x; i < n; i += kReduceThreads) {
    total += static_cast<double>(row_loss[i]);
    count += targets[i] != ignore_index;
  }
  total = group_reduce<kReduceThreads>(total, SumOp{}, smem_sum);
  count = group_reduce<kReduceThreads>(count, SumOp{}, smem_count);
  if (threadIdx.x == 0) {
    // Every row ignored under a mean: 0/0 = NaN, as in PyTorch.
    const double d = mean ? static_cast<double>(count) : 1.0;
    *out = static_cast<T>(static_cast<compute_t<T>>(total / d));
    *denom = static_cast<compute_t<T>>(d);
  }
}

template <class T>
__global__ void cross_entropy_backward_kernel(T* dx, const T* logits, const compute_t<T>* lse, const int64_t* targets,
                                              const T* grad, bool grad_per_row, const compute_t<T>* denom, int64_t n,
                                              int64_t c, int64_t ignore_index, double eps) {
  using A = compute_t<T>;
  const A keep = static_cast<A>(1.0 - eps), smooth = static_cast<A>(eps / static_cast<double>(c));
  const A inv_denom = denom ? A(1) / *denom : A(1);
  const int64_t total = n * c;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / c, j = k - i * c;
    const int64_t t = targets[i];
    A d;
    if (t == ignore_index) {
      d = 0;
    } else if (t < 0 || t >= c) {
      d = std::numeric_limits<A>::quiet_NaN();
    } else {
      const A g = static_cast<A>(grad[grad_per_row ? i : 0]) * inv_denom;
      A p = exp_a(static_cast<A>(logits[k]) - lse[i]) - smooth;
      if (j == t) p -= keep;
      d = p * g;
    }
    dx[k] = static_cast<T>(d);
  }
}

}  // namespace

void cross_entropy_forward(void* row_loss, void* lse, const void* logits, const int64_t* targets, DType dtype,
                           int64_t n, int64_t c, int64_t ignore_index, double label_smoothing, cudaStream_t stream) {
  if (n == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        A* rl = static_cast<A*>(row_loss);
        A* ls = static_cast<A*>(lse);
        const T* x = static_cast<const T*>(logits);
        if (c <= kWarpRowMax) {
          cross_entropy_forward_kernel<T, 32><<<grid_for(n, 1, kWarpRowsPerBlock), dim3(32, kWarpRowsPerBlock), 0,
                                                stream>>>(rl, ls, x, targets, n, c, ignore_index, label_smoothing);
        } else {
          cross_entropy_forward_kernel<T, kBlockRowThreads><<<grid_for(n, 1, 1), dim3(kBlockRowThreads, 1), 0,
                                                              stream>>>(rl, ls, x, targets, n, c, ignore_index,
                                                                        label_smoothing);
        }
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("cross_entropy_forward", dtype);
}

void cross_entropy_reduce(void* out, void* denom, const void* row_loss, const int64_t* targets, DType dtype,
                          int64_t n, int64_t ignore_index, bool mean, cudaStream_t stream) {
  // One block even for n == 0: the scalar outputs must still be written (0 or NaN).
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        cross_entropy_reduce_kernel<T><<<1, kReduceThreads, 0, stream>>>(
            static_cast<T*>(out), static_cast<A*>(denom), static_cast<const A*>(row_loss), targets, n, ignore_index,
            mean);
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("cross_entropy_reduce", dtype);
}

void cross_entropy_backward(void* dx, const void* logits, const void* lse, const int64_t* targets, const void* grad,
                            bool grad_per_row, const void* denom, DType dtype, int64_t n, int64_t c,
                            int64_t ignore_index, double label_smoothing, cudaStream_t stream) {
  if (n * c == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        cross_entropy_backward_kernel<T><<<grid_for(n * c), kBlockSize, 0, stream>>>(
            static_cast<T*>(dx), static_cast<const T*>(logits), static_cast<const A*>(lse), targets,
            static_cast<const T*>(grad), grad_per_row, static_cast<const A*>(denom), n, c, ignore_index,
            label_smoothing);
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("cross_entropy_backward", dtype);
}

}  // namespace tandem::kernels::cuda
