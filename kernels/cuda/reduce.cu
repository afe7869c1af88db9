// CUDA reductions over (outer, n, inner). inner == 1 reduces each row with one
// block (warp shuffles, then shared memory across warps); long rows with few
// outer entries are split over several blocks whose partials a second kernel
// adds. inner > 1 gives each thread one (o, i) column, so loads coalesce across i;
// when there are too few columns to fill the GPU (a bias gradient: sum over a batch
// of 16k rows into 768 columns), n is split into chunks too, and a second kernel adds
// the chunks' partials in order (deterministic, like the row split).
#include "kernels/cuda/reduce.h"

#include <type_traits>

#include "kernels/convert.h"
#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

template <class T>
using acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, std::conditional_t<std::is_same_v<T, double>, double, float>>;
template <class T>
using sum_out_t = std::conditional_t<std::is_integral_v<T>, int64_t, T>;

template <class A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nwarps ? warp_sums[threadIdx.x] : A(0);
  if (warp == 0) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;  // valid in thread 0
}

// One block per (row, part): partial[row * parts + part] (or out when parts == 1).
// Rows on gridDim.x (up to 2^31 - 1; gridDim.y stops at 65535), parts on gridDim.y.
template <class T, class A, class Out>
__global__ void sum_rows_kernel(Out* __restrict__ out, A* __restrict__ partial, const T* __restrict__ in, int64_t n,
                                int parts, double scale) {
  const int64_t row = blockIdx.x;
  const int part = blockIdx.y;
  const int64_t chunk = (n + parts - 1) / parts;
  const int64_t begin = part * chunk;
  const int64_t end = min(n, begin + chunk);
  const T* p = in + row * n;
  A acc = 0;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) acc += convert<A>(p[k]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    if (parts == 1) out[row] = convert<Out>(static_cast<A>(acc * static_cast<A>(scale)));
    else partial[row * parts + part] = acc;
  }
}

template <class A, class Out>
__global__ void sum_partials_kernel(Out* __restrict__ out, const A* __restrict__ partial, int parts, double scale) {
  const int64_t row = blockIdx.x;
  A acc = 0;
  for (int k = threadIdx.x; k < parts; k += blockDim.x) acc += partial[row * parts + k];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[row] = convert<Out>(static_cast<A>(acc * static_cast<A>(scale)));
}

template <class T, class A, class Out>
__global__ void sum_columns_kernel(Out* __restrict__ out, const T* __restrict__ in, int64_t outer, int64_t n,
                                   int64_t inner, double scale) {
  const int64_t total = outer * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const int64_t o = t / inner, i = t % inner;
    const T* p = in + o * n * inner + i;
    A acc = 0;
    for (int64_t k = 0; k < n; ++k) acc += convert<A>(p[k * inner]);
    out[t] = convert<Out>(static_cast<A>(acc * static_cast<A>(scale)));
  }
}

// Column sums split over n: a block of kTileColumns x kTileLanes threads takes 32
// consecutive columns t = o * inner + i (coalesced when inner >= 32) and one chunk of
// n; its lanes stride through the chunk's rows, then add up in shared memory in lane
// order. partial[chunk * total + t].

template <class T, class A>
__global__ void sum_columns_partial_kernel(A* __restrict__ partial, const T* __restrict__ in, int64_t outer, int64_t n,
                                           int64_t inner, int64_t chunk) {
  __shared__ A lanes[kTileLanes][kTileColumns];
  const int64_t total = outer * inner;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kTileColumns + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = min(n, begin + chunk);
  A acc = 0;
  if (t < total) {
    const int64_t o = t / inner, i = t % inner;
    const T* p = in + o * n * inner + i;
    for (int64_t k = begin + threadIdx.y; k < end; k += kTileLanes) acc += convert<A>(p[k * inner]);
  }
  lanes[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && t < total) {
    A sum = lanes[0][threadIdx.x];
    for (int l = 1; l < kTileLanes; ++l) sum += lanes[l][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * total + t] = sum;
  }
}

// Chunks of n for a column sum: 1 (one thread per column) while the columns fill the
// GPU or n is short; else row_chunks' split.
int column_chunks(int64_t outer, int64_t n, int64_t inner) {
  const int64_t total = outer * inner;
  if (inner == 1 || total >= 65536 || n < 256) return 1;
  return row_chunks(n, (total + kTileColumns - 1) / kTileColumns);
}

// Splits rows when there are too few of them to fill the GPU.
int row_parts(int64_t outer, int64_t n, int64_t inner) {
  if (inner != 1 || outer >= 256 || n < 16384) return 1;
  int64_t parts = (n + 8191) / 8192;
  return static_cast<int>(parts > 1024 ? 1024 : parts);
}

template <class C>
__device__ bool greater_or_nan(C v, int64_t k, C best, int64_t best_k) {
  if constexpr (std::is_integral_v<C>) {
    return v > best || (v == best && k < best_k);
  } else {
    // NaN is the largest value; among equals the lowest index wins.
    bool vn = isnan(v), bn = isnan(best);
    if (bn) return vn && k < best_k;
    if (vn) return true;
    return v > best || (v == best && k < best_k);
  }
}

template <class T>
__global__ void max_rows_kernel(T* __restrict__ values, int64_t* __restrict__ indices, const T* __restrict__ in,
                                int64_t n) {
  using C = std::conditional_t<std::is_integral_v<T>, int64_t, compute_t<T>>;
  __shared__ C s_val[kBlockSize];
  __shared__ int64_t s_idx[kBlockSize];
  const int64_t row = blockIdx.x;
  const T* p = in + row * n;
  C best = convert<C>(p[0]);
  int64_t best_k = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    C v = convert<C>(p[k]);
    if (greater_or_nan(v, k, best, best_k)) {
      best = v;
      best_k = k;
    }
  }
  s_val[threadIdx.x] = best;
  s_idx[threadIdx.x] = best_k;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && greater_or_nan(s_val[threadIdx.x + s], s_idx[threadIdx.x + s], s_val[threadIdx.x],
                                          s_idx[threadIdx.x])) {
      s_val[threadIdx.x] = s_val[threadIdx.x + s];
      s_idx[threadIdx.x] = s_idx[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (values) values[row] = p[s_idx[0]];
    indices[row] = s_idx[0];
  }
}

template <class T>
__global__ void max_columns_kernel(T* __restrict__ values, int64_t* __restrict__ indices, const T* __restrict__ in,
                                   int64_t outer, int64_t n, int64_t inner) {
  using C = std::conditional_t<std::is_integral_v<T>, int64_t, compute_t<T>>;
  const int64_t total = outer * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const int64_t o = t / inner, i = t % inner;
    const T* p = in + o * n * inner + i;
    C best = convert<C>(p[0]);
    int64_t best_k = 0;
    for (int64_t k = 1; k < n; ++k) {
      C v = convert<C>(p[k * inner]);
      if (greater_or_nan(v, k, best, best_k)) {
        best = v;
        best_k = k;
      }
    }
    if (values) values[t] = p[best_k * inner];
    indices[t] = best_k;
  }
}

}  // namespace

size_t sum_workspace_bytes(DType dtype, int64_t outer, int64_t n, int64_t inner) {
  const size_t acc_bytes = (dtype == DType::kF64 || !is_floating(dtype)) ? 8 : 4;
  const int chunks = column_chunks(outer, n, inner);
  if (chunks > 1) return static_cast<size_t>(outer * inner) * chunks * acc_bytes;
  const int parts = row_parts(outer, n, inner);
  if (parts == 1) return 0;
  return static_cast<size_t>(outer) * parts * acc_bytes;
}

void sum(DType dtype, void* out, const void* in, int64_t outer, int64_t n, int64_t inner, double scale,
         void* workspace, cudaStream_t stream) {
  if (outer * inner == 0) return;
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    using Out = sum_out_t<T>;
    Out* o = static_cast<Out*>(out);
    const T* x = static_cast<const T*>(in);
    if (n == 0) {
      CUDA_CHECK(cudaMemsetAsync(o, 0, static_cast<size_t>(outer * inner) * sizeof(Out), stream));
      return;
    }
    if (inner == 1) {
      int parts = row_parts(outer, n, inner);
      dim3 grid(static_cast<unsigned>(outer), parts);
      sum_rows_kernel<T, A, Out><<<grid, kBlockSize, 0, stream>>>(o, static_cast<A*>(workspace), x, n, parts, scale);
      CUDA_CHECK_LAUNCH();
      if (parts > 1) {
        sum_partials_kernel<A, Out><<<static_cast<unsigned>(outer), kBlockSize, 0, stream>>>(
            o, static_cast<const A*>(workspace), parts, scale);
        CUDA_CHECK_LAUNCH();
      }
    } else if (const int chunks = column_chunks(outer, n, inner); chunks > 1) {
      const int64_t total = outer * inner;
      const int64_t chunk = (n + chunks - 1) / chunks;
      A* partial = static_cast<A*>(workspace);
      dim3 grid(static_cast<unsigned>((total + kTileColumns - 1) / kTileColumns), static_cast<unsigned>(chunks));
      sum_columns_partial_kernel<T, A><<<grid, dim3(kTileColumns, kTileLanes), 0, stream>>>(partial, x, outer, n,
                                                                                         inner, chunk);
      CUDA_CHECK_LAUNCH();
      sum_column_chunks_kernel<A, Out><<<grid_for(total), kBlockSize, 0, stream>>>(o, partial, total, chunks, scale);
      CUDA_CHECK_LAUNCH();
    } else {
      sum_columns_kernel<T, A, Out><<<grid_for(outer * inner), kBlockSize, 0, stream>>>(o, x, outer, n, inner, scale);
      CUDA_CHECK_LAUNCH();
    }
  });
}

void max(DType dtype, void* values, int64_t* indices, const void* in, int64_t outer, int64_t n, int64_t inner,
         cudaStream_t stream) {
  if (outer * inner == 0 || n == 0) return;
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (inner == 1) {
      max_rows_kernel<T><<<static_cast<unsigned>(outer), kBlockSize, 0, stream>>>(static_cast<T*>(values), indices,
                                                                                 static_cast<const T*>(in), n);
    } else {
      max_columns_kernel<T><<<grid_for(outer * inner), kBlockSize, 0, stream>>>(
          static_cast<T*>(values), indices, static_cast<const T*>(in), outer, n, inner);
    }
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::kernels::cuda
