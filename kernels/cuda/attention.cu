// CUDA attention softmax. A warp owns a row of up to 1024 scores (8 rows per block),
// a 512-thread block a longer one; maxima and sums reduce with shuffles in f32 (f64
// for f64), as in the CPU twin. Masked columns are written as 0 without being read.
// Every thread reads and writes only its own columns, so the output may alias the input.
#include "kernels/cuda/attention.h"

#include <limits>

#include "kernels/attention_mask.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce_group.cuh"

namespace tandem::kernels::cuda {
namespace {

template <class T, int kThreads>
__global__ void attention_softmax_forward_kernel(T* p, const T* s, int64_t rows, int64_t t_q, int64_t t_k,
                                                 compute_t<T> scale, bool causal) {
  using A = compute_t<T>;
  __shared__ A smem[group_smem_slots<kThreads>()];
  const int tid = threadIdx.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t n = attention_row_extent(row % t_q, t_k, causal);
    const T* sr = s + row * t_k;
    T* pr = p + row * t_k;
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t j = tid; j < n; j += kThreads) m = MaxOp{}(m, scale * static_cast<A>(sr[j]));
    m = group_reduce<kThreads>(m, MaxOp{}, smem);
    const A shift = isinf(m) ? A(0) : m;
    A sum = 0;
    for (int64_t j = tid; j < n; j += kThreads) sum += exp_a(scale * static_cast<A>(sr[j]) - shift);
    sum = group_reduce<kThreads>(sum, SumOp{}, smem);
    const A inv = A(1) / sum;
    for (int64_t j = tid; j < n; j += kThreads) pr[j] = static_cast<T>(exp_a(scale * static_cast<A>(sr[j]) - shift) * inv);
    for (int64_t j = n + tid; j < t_k; j += kThreads) pr[j] = T(0);
  }
}

template <class T, int kThreads>
__global__ void attention_softmax_backward_kernel(T* ds, const T* dp, const T* p, int64_t rows, int64_t t_q,
                                                  int64_t t_k, compute_t<T> scale, bool causal) {
  using A = compute_t<T>;
  __shared__ A smem[group_smem_slots<kThreads>()];
  const int tid = threadIdx.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t n = attention_row_extent(row % t_q, t_k, causal);
    const int64_t base = row * t_k;
    A dot = 0;
    for (int64_t j = tid; j < n; j += kThreads) dot += static_cast<A>(dp[base + j]) * static_cast<A>(p[base + j]);
    dot = group_reduce<kThreads>(dot, SumOp{}, smem);
    for (int64_t j = tid; j < n; j += kThreads) {
      const A pj = static_cast<A>(p[base + j]);
      ds[base + j] = static_cast<T>(scale * pj * (static_cast<A>(dp[base + j]) - dot));
    }
    for (int64_t j = n + tid; j < t_k; j += kThreads) ds[base + j] = T(0);
  }
}

}  // namespace

void attention_softmax_forward(void* p, const void* s, DType dtype, int64_t batch, int64_t t_q, int64_t t_k,
                               double scale, bool causal, cudaStream_t stream) {
  const int64_t rows = batch * t_q;
  if (rows * t_k == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        T* pp = static_cast<T*>(p);
        const T* sp = static_cast<const T*>(s);
        if (t_k <= kWarpRowMax) {
          attention_softmax_forward_kernel<T, 32><<<grid_for_rows(rows, kWarpRowsPerBlock),
                                                    dim3(32, kWarpRowsPerBlock), 0, stream>>>(
              pp, sp, rows, t_q, t_k, static_cast<A>(scale), causal);
        } else {
          attention_softmax_forward_kernel<T, kBlockRowThreads>
              <<<grid_for_rows(rows, 1), dim3(kBlockRowThreads, 1), 0, stream>>>(pp, sp, rows, t_q, t_k,
                                                                               static_cast<A>(scale), causal);
        }
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("attention_softmax_forward", dtype);
}

void attention_softmax_backward(void* ds, const void* dp, const void* p, DType dtype, int64_t batch, int64_t t_q,
                                int64_t t_k, double scale, bool causal, cudaStream_t stream) {
  const int64_t rows = batch * t_q;
  if (rows * t_k == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        T* dsp = static_cast<T*>(ds);
        const T* dpp = static_cast<const T*>(dp);
        const T* pp = static_cast<const T*>(p);
        if (t_k <= kWarpRowMax) {
          attention_softmax_backward_kernel<T, 32><<<grid_for_rows(rows, kWarpRowsPerBlock),
                                                     dim3(32, kWarpRowsPerBlock), 0, stream>>>(
              dsp, dpp, pp, rows, t_q, t_k, static_cast<A>(scale), causal);
        } else {
          attention_softmax_backward_kernel<T, kBlockRowThreads>
              <<<grid_for_rows(rows, 1), dim3(kBlockRowThreads, 1), 0, stream>>>(dsp, dpp, pp, rows, t_q, t_k,
                                                                               static_cast<A>(scale), causal);
        }
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("attention_softmax_backward", dtype);
}

}  // namespace tandem::kernels::cuda
