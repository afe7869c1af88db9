// Group reductions shared by the row-wise kernels (softmax, cross-entropy): a group
// of kThreads threads along threadIdx.x cooperates on one row, either one warp
// (kThreads == 32, several rows per block along threadIdx.y) or the whole block.
#pragma once

#include <cuda_runtime.h>

namespace tandem::kernels::cuda {

struct SumOp {
  template <class A>
  __device__ A operator()(A a, A b) const { return a + b; }
};
struct MaxOp {
  template <class A>
  __device__ A operator()(A a, A b) const { return a > b ? a : b; }  // NaN-free inputs; see callers
};

template <class A, class Op>
__device__ A warp_reduce(A v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// Reduces v over the kThreads threads of the group; every thread gets the result.
/// For block groups `smem` must hold kThreads/32 values; the leading barrier keeps a
/// reduction from overwriting slots the previous one is still reading.
template <int kThreads, class A, class Op>
__device__ A group_reduce(A v, Op op, A* smem) {
  v = warp_reduce(v, op);
  if constexpr (kThreads > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
    for (int w = 1; w < kThreads / 32; ++w) v = op(v, smem[w]);
  }
  return v;
}

__device__ inline float exp_a(float v) { return expf(v); }
__device__ inline double exp_a(double v) { return exp(v); }
__device__ inline float log_a(float v) { return logf(v); }
__device__ inline double log_a(double v) { return log(v); }

}  // namespace tandem::kernels::cuda
