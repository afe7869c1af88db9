// CUDA batch norm. Channel reductions: grid (c, slices), each block a 2-D tile of
// threads (x along the contiguous inner extent, y along n) over one channel and one
// contiguous slice of n; per-thread Welford (statistics) or plain sums (backward)
// are merged across the block, written as partials, and a second kernel merges the
// slices of each channel in order. Splitting n keeps the GPU busy when channels are
// few (a CNN's 32 channels); merging in a fixed order keeps results deterministic.
// Element-wise passes are flat grid-stride loops with 32-bit indices where they fit.
#include "kernels/cuda/batch_norm.h"

#include <algorithm>
#include <climits>

#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

constexpr int kReduceThreads = 512;
constexpr int kReduceWarps = kReduceThreads / 32;
// Blocks the channel reductions aim for: a few waves on H100's 132 SMs.
constexpr int64_t kTargetReduceBlocks = 1024;

// Threads along inner: a power of two from 32 to 512 covering inner (rest along n).
int threads_along_inner(int64_t inner) {
  int tx = 32;
  while (tx < kReduceThreads && tx < inner) tx *= 2;
  return tx;
}

// How the n extent is cut into slices, one block row of the grid per slice.
struct Slices {
  int64_t per = 1;    // samples per slice
  int64_t count = 1;  // number of slices (none empty)
};

Slices slices_for(int64_t n, int64_t c, int64_t inner) {
  const int64_t ty = kReduceThreads / threads_along_inner(inner);
  const int64_t want = std::max<int64_t>(1, std::min((kTargetReduceBlocks + c - 1) / c, (n + ty - 1) / ty));
  Slices s;
  s.per = std::max<int64_t>(1, (n + want - 1) / want);
  s.count = std::max<int64_t>(1, (n + s.per - 1) / s.per);
  return s;
}

template <class A>
struct Welford {
  A mean;
  A m2;
  int64_t n;
};

// Chan et al.'s pairwise merge of two partial (mean, M2, count) triples.
template <class A>
__device__ Welford<A> welford_merge(const Welford<A>& a, const Welford<A>& b) {
  const int64_t n = a.n + b.n;
  if (n == 0) return a;
  const A delta = b.mean - a.mean;
  const A wb = static_cast<A>(b.n) / static_cast<A>(n);
  return {a.mean + delta * wb, a.m2 + b.m2 + delta * delta * static_cast<A>(a.n) * wb, n};
}

template <class A>
__device__ Welford<A> welford_shfl_down(const Welford<A>& w, int offset) {
  return {__shfl_down_sync(0xffffffffu, w.mean, offset), __shfl_down_sync(0xffffffffu, w.m2, offset),
          static_cast<int64_t>(__shfl_down_sync(0xffffffffu, static_cast<long long>(w.n), offset))};
}

// Merges the Welford triples of a kReduceThreads block; thread 0 gets the result.
template <class A>
__device__ Welford<A> block_welford(Welford<A> w) {
  __shared__ A s_mean[kReduceWarps], s_m2[kReduceWarps];
  __shared__ int64_t s_n[kReduceWarps];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (int o = 16; o > 0; o >>= 1) w = welford_merge(w, welford_shfl_down(w, o));
  if (lane == 0) {
    s_mean[warp] = w.mean;
    s_m2[warp] = w.m2;
    s_n[warp] = w.n;
  }
  __syncthreads();
  if (warp == 0) {
    w = lane < kReduceWarps ? Welford<A>{s_mean[lane], s_m2[lane], s_n[lane]} : Welford<A>{A(0), A(0), 0};
    for (int o = 16; o > 0; o >>= 1) w = welford_merge(w, welford_shfl_down(w, o));
  }
  return w;
}

// Sums two values over a kReduceThreads block; thread 0 gets the result.
template <class A>
__device__ void block_sum2(A& a, A& b) {
  __shared__ A s_a[kReduceWarps], s_b[kReduceWarps];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  if (lane == 0) {
    s_a[warp] = a;
    s_b[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kReduceWarps ? s_a[lane] : A(0);
    b = lane < kReduceWarps ? s_b[lane] : A(0);
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, o);
      b += __shfl_down_sync(0xffffffffu, b, o);
    }
  }
}

// Block (ch, slice): Welford over samples [slice·per, +per) of channel ch; writes the
// slice's (mean, M2) to partial[(slice·c + ch)·2 ..]. Its count is recomputed exactly
// by the merge kernel from the slice bounds.
template <class T>
__global__ void batch_norm_stats_partial_kernel(compute_t<T>* partial, const T* x, int64_t n, int64_t c,
                                                int64_t inner, int64_t per) {
  using A = compute_t<T>;
  const int64_t ch = blockIdx.x, slice = blockIdx.y;
  const int64_t lo = slice * per, hi = min(n, lo + per);
  Welford<A> w{A(0), A(0), 0};
  for (int64_t i = lo + threadIdx.y; i < hi; i += blockDim.y) {
    const T* plane = x + (i * c + ch) * inner;
    for (int64_t k = threadIdx.x; k < inner; k += blockDim.x) {
      const A v = static_cast<A>(plane[k]);
      ++w.n;
      const A delta = v - w.mean;
      w.mean += delta / static_cast<A>(w.n);
      w.m2 += delta * (v - w.mean);
    }
  }
  w = block_welford(w);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    partial[(slice * c + ch) * 2] = w.mean;
    partial[(slice * c + ch) * 2 + 1] = w.m2;
  }
}

template <class A>
__global__ void batch_norm_stats_merge_kernel(A* mean, A* invstd, const A* partial, int64_t n, int64_t c,
                                              int64_t inner, int64_t per, int64_t slices, double eps) {
  for (int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; ch < c;
       ch += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Welford<A> w{A(0), A(0), 0};
    for (int64_t s = 0; s < slices; ++s) {
      const int64_t rows = min(n, (s + 1) * per) - s * per;
      w = welford_merge(w, Welford<A>{partial[(s * c + ch) * 2], partial[(s * c + ch) * 2 + 1], rows * inner});
    }
    mean[ch] = w.mean;
    invstd[ch] = A(1) / sqrt(w.m2 / static_cast<A>(w.n) + static_cast<A>(eps));
  }
}

template <class T>
__global__ void batch_norm_backward_partial_kernel(compute_t<T>* partial, const T* dy, const T* x,
                                                   const compute_t<T>* mean, int64_t n, int64_t c, int64_t inner,
                                                   int64_t per) {
  using A = compute_t<T>;
  const int64_t ch = blockIdx.x, slice = blockIdx.y;
  const int64_t lo = slice * per, hi = min(n, lo + per);
  const A m = mean[ch];
  A sdy = 0, sdyx = 0;
  for (int64_t i = lo + threadIdx.y; i < hi; i += blockDim.y) {
    const int64_t base = (i * c + ch) * inner;
    for (int64_t k = threadIdx.x; k < inner; k += blockDim.x) {
      const A g = static_cast<A>(dy[base + k]);
      sdy += g;
      sdyx += g * (static_cast<A>(x[base + k]) - m);
    }
  }
  block_sum2(sdy, sdyx);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    partial[(slice * c + ch) * 2] = sdy;
    partial[(slice * c + ch) * 2 + 1] = sdyx;
  }
}

template <class A>
__global__ void batch_norm_backward_merge_kernel(A* sum_dy, A* sum_dy_xmu, A* grad_weight, A* grad_bias,
                                                 const A* partial, const A* invstd, int64_t c, int64_t slices) {
  for (int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; ch < c;
       ch += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A sdy = 0, sdyx = 0;
    for (int64_t s = 0; s < slices; ++s) {
      sdy += partial[(s * c + ch) * 2];
      sdyx += partial[(s * c + ch) * 2 + 1];
    }
    sum_dy[ch] = sdy;
    sum_dy_xmu[ch] = sdyx;
    if (grad_weight) grad_weight[ch] = sdyx * invstd[ch];
    if (grad_bias) grad_bias[ch] = sdy;
  }
}

// I is uint32_t when every index (plus one grid stride) fits, else int64_t: 64-bit
// division by inner and c costs several times the 32-bit one.
template <class T, class I>
__global__ void batch_norm_elemt_kernel(T* y, const T* x, const compute_t<T>* mean, const compute_t<T>* invstd,
                                        const compute_t<T>* weight, const compute_t<T>* bias, I total, I c, I inner) {
  using A = compute_t<T>;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    const I ch = (i / inner) % c;
    const A scale = invstd[ch] * (weight ? weight[ch] : A(1));
    const A shift = bias ? bias[ch] : A(0);
    y[i] = static_cast<T>((static_cast<A>(x[i]) - mean[ch]) * scale + shift);
  }
}

template <class T, class I>
__global__ void batch_norm_backward_elemt_kernel(T* dx, const T* dy, const T* x, const compute_t<T>* mean,
                                                 const compute_t<T>* invstd, const compute_t<T>* weight,
                                                 const compute_t<T>* sum_dy, const compute_t<T>* sum_dy_xmu,
                                                 compute_t<T> inv_count, I total, I c, I inner) {
  using A = compute_t<T>;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    const I ch = (i / inner) % c;
    const A is = invstd[ch];
    const A mean_dy = sum_dy ? sum_dy[ch] * inv_count : A(0);
    const A k_xmu = sum_dy_xmu ? sum_dy_xmu[ch] * inv_count * is * is : A(0);
    const A scale = is * (weight ? weight[ch] : A(1));
    dx[i] = static_cast<T>((static_cast<A>(dy[i]) - mean_dy - (static_cast<A>(x[i]) - mean[ch]) * k_xmu) * scale);
  }
}

// Calls f(I{}) with the narrowest index type that is safe for `total` elements.
template <class F>
void with_index_type(int64_t total, F&& f) {
  if (total <= INT_MAX) {
    f(uint32_t{});
  } else {
    f(int64_t{});
  }
}

size_t stat_size(DType dtype) { return dtype == DType::kF64 ? sizeof(double) : sizeof(float); }

}  // namespace

size_t batch_norm_workspace_bytes(DType dtype, int64_t n, int64_t c, int64_t inner) {
  const Slices s = slices_for(n, c, inner);
  return static_cast<size_t>(s.count * c * 2) * stat_size(dtype);
}

void batch_norm_stats(void* mean, void* invstd, void* workspace, const void* x, DType dtype, int64_t n, int64_t c,
                      int64_t inner, double eps, cudaStream_t stream) {
  if (c == 0) return;
  if (n * inner == 0) {
    // No values: statistics of 0 (what SyncBatchNorm's empty ranks contribute).
    CUDA_CHECK(cudaMemsetAsync(mean, 0, static_cast<size_t>(c) * stat_size(dtype), stream));
    CUDA_CHECK(cudaMemsetAsync(invstd, 0, static_cast<size_t>(c) * stat_size(dtype), stream));
    return;
  }
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        const Slices s = slices_for(n, c, inner);
        const int tx = threads_along_inner(inner);
        A* partial = static_cast<A*>(workspace);
        batch_norm_stats_partial_kernel<T><<<dim3(static_cast<unsigned>(c), static_cast<unsigned>(s.count)),
                                             dim3(tx, kReduceThreads / tx), 0, stream>>>(
            partial, static_cast<const T*>(x), n, c, inner, s.per);
        CUDA_CHECK_LAUNCH();
        batch_norm_stats_merge_kernel<A><<<grid_for(c), kBlockSize, 0, stream>>>(
            static_cast<A*>(mean), static_cast<A*>(invstd), partial, n, c, inner, s.per, s.count, eps);
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("batch_norm_stats", dtype);
}

void batch_norm_elemt(void* y, const void* x, const void* mean, const void* invstd, const void* weight,
                      const void* bias, DType dtype, int64_t n, int64_t c, int64_t inner, cudaStream_t stream) {
  const int64_t total = n * c * inner;
  if (total == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        with_index_type(total, [&](auto index) {
          using I = decltype(index);
          batch_norm_elemt_kernel<T, I><<<grid_for(total), kBlockSize, 0, stream>>>(
              static_cast<T*>(y), static_cast<const T*>(x), static_cast<const A*>(mean),
              static_cast<const A*>(invstd), static_cast<const A*>(weight), static_cast<const A*>(bias),
              static_cast<I>(total), static_cast<I>(c), static_cast<I>(inner));
          CUDA_CHECK_LAUNCH();
        });
      }))
    unreachable_dtype("batch_norm_elemt", dtype);
}

void batch_norm_backward_reduce(void* sum_dy, void* sum_dy_xmu, void* grad_weight, void* grad_bias, void* workspace,
                                const void* dy, const void* x, const void* mean, const void* invstd, DType dtype,
                                int64_t n, int64_t c, int64_t inner, cudaStream_t stream) {
  if (c == 0) return;
  if (n * inner == 0) {
    const size_t bytes = static_cast<size_t>(c) * stat_size(dtype);
    for (void* p : {sum_dy, sum_dy_xmu, grad_weight, grad_bias})
      if (p) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
    return;
  }
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        const Slices s = slices_for(n, c, inner);
        const int tx = threads_along_inner(inner);
        A* partial = static_cast<A*>(workspace);
        batch_norm_backward_partial_kernel<T><<<dim3(static_cast<unsigned>(c), static_cast<unsigned>(s.count)),
                                                dim3(tx, kReduceThreads / tx), 0, stream>>>(
            partial, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const A*>(mean), n, c, inner,
            s.per);
        CUDA_CHECK_LAUNCH();
        batch_norm_backward_merge_kernel<A><<<grid_for(c), kBlockSize, 0, stream>>>(
            static_cast<A*>(sum_dy), static_cast<A*>(sum_dy_xmu), static_cast<A*>(grad_weight),
            static_cast<A*>(grad_bias), partial, static_cast<const A*>(invstd), c, s.count);
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("batch_norm_backward_reduce", dtype);
}

void batch_norm_backward_elemt(void* dx, const void* dy, const void* x, const void* mean, const void* invstd,
                               const void* weight, const void* sum_dy, const void* sum_dy_xmu, int64_t count,
                               DType dtype, int64_t n, int64_t c, int64_t inner, cudaStream_t stream) {
  const int64_t total = n * c * inner;
  if (total == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        const A inv_count = count > 0 ? A(1) / static_cast<A>(count) : A(0);
        with_index_type(total, [&](auto index) {
          using I = decltype(index);
          batch_norm_backward_elemt_kernel<T, I><<<grid_for(total), kBlockSize, 0, stream>>>(
              static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const A*>(mean),
              static_cast<const A*>(invstd), static_cast<const A*>(weight), static_cast<const A*>(sum_dy),
              static_cast<const A*>(sum_dy_xmu), inv_count, static_cast<I>(total), static_cast<I>(c),
              static_cast<I>(inner));
          CUDA_CHECK_LAUNCH();
        });
      }))
    unreachable_dtype("batch_norm_backward_elemt", dtype);
}

}  // namespace tandem::kernels::cuda
