// Group reductions and launch geometry shared by the row-wise kernels (softmax,
// cross-entropy, layer norm, attention): a group of kThreads threads along threadIdx.x
// cooperates on one row, either one warp (kThreads == 32, kWarpRowsPerBlock rows per
// block along threadIdx.y) for rows of up to kWarpRowMax elements, or the whole block
// of kBlockRowThreads threads for longer ones.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {

inline constexpr int kWarpRowsPerBlock = 8;  // warp-per-row kernels: 8 rows, 256 threads
inline constexpr int kBlockRowThreads = 512;
inline constexpr int64_t kWarpRowMax = 1024;

/// Shared-memory slots group_reduce needs for a group of kThreads threads.
template <int kThreads>
constexpr int group_smem_slots() {
  return kThreads > 32 ? kThreads / 32 : 1;
}

/// Blocks for one group per row at `rows_per_block` rows per block, capped like grid_for.
inline unsigned int grid_for_rows(int64_t rows, int rows_per_block) { return grid_for(rows, 1, rows_per_block); }

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
