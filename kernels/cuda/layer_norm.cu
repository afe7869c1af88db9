// CUDA layer norm. Forward and dx: one group per row (a warp for rows of up to 1024
// elements, 8 rows per block; a 512-thread block beyond), reducing with shuffles as
// the softmax kernels do; the row is re-read for each pass (it is in L1/L2 by then).
// dweight/dbias reduce over rows, which a per-row group cannot do without atomics:
// stage 1 gives each (32-column tile, row chunk) block a partial sum per column,
// stage 2 sums a column's chunks in order, so the result is deterministic.
#include "kernels/cuda/layer_norm.h"

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce_group.cuh"

namespace tandem::kernels::cuda {
namespace {

// Stage 1 of dweight/dbias: 32 columns × 8 row lanes per block; rows split into at
// most kMaxRowChunks chunks of at least kMinChunkRows rows.
constexpr int kTileCols = 32;
constexpr int kTileRows = 8;
constexpr int64_t kMaxRowChunks = 256;
constexpr int64_t kMinChunkRows = 32;

__device__ inline float rsqrt_a(float v) { return rsqrtf(v); }
__device__ inline double rsqrt_a(double v) { return rsqrt(v); }

template <class T, int kThreads>
__global__ void layer_norm_forward_kernel(T* y, compute_t<T>* mean, compute_t<T>* rstd, const T* x, const T* weight,
                                          const T* bias, int64_t rows, int64_t cols, double eps) {
  using A = compute_t<T>;
  __shared__ A smem[group_smem_slots<kThreads>()];
  const int tid = threadIdx.x;
  // The row is uniform across a group, so whole groups leave the loop together.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    A s = 0;
    for (int64_t j = tid; j < cols; j += kThreads) s += static_cast<A>(xr[j]);
    const A m = group_reduce<kThreads>(s, SumOp{}, smem) / static_cast<A>(cols);
    // Second pass over the (cached) row: Σ (x − mean)² does not cancel like Σx² − n·mean².
    A ss = 0;
    for (int64_t j = tid; j < cols; j += kThreads) {
      const A d = static_cast<A>(xr[j]) - m;
      ss += d * d;
    }
    const A is = rsqrt_a(group_reduce<kThreads>(ss, SumOp{}, smem) / static_cast<A>(cols) + static_cast<A>(eps));
    if (tid == 0) {
      mean[row] = m;
      rstd[row] = is;
    }
    for (int64_t j = tid; j < cols; j += kThreads) {
      A v = (static_cast<A>(xr[j]) - m) * is;
      if (weight) v *= static_cast<A>(weight[j]);
      if (bias) v += static_cast<A>(bias[j]);
      yr[j] = static_cast<T>(v);
    }
  }
}

template <class T, int kThreads>
__global__ void layer_norm_backward_dx_kernel(T* dx, const T* dy, const T* x, const compute_t<T>* mean,
                                              const compute_t<T>* rstd, const T* weight, int64_t rows, int64_t cols) {
  using A = compute_t<T>;
  __shared__ A smem[group_smem_slots<kThreads>()];
  const int tid = threadIdx.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t base = row * cols;
    const A m = mean[row], is = rstd[row];
    A sg = 0, sgx = 0;
    for (int64_t j = tid; j < cols; j += kThreads) {
      const A g = static_cast<A>(dy[base + j]) * (weight ? static_cast<A>(weight[j]) : A(1));
      sg += g;
      sgx += g * (static_cast<A>(x[base + j]) - m) * is;
    }
    const A mg = group_reduce<kThreads>(sg, SumOp{}, smem) / static_cast<A>(cols);
    const A mgx = group_reduce<kThreads>(sgx, SumOp{}, smem) / static_cast<A>(cols);
    for (int64_t j = tid; j < cols; j += kThreads) {
      const A g = static_cast<A>(dy[base + j]) * (weight ? static_cast<A>(weight[j]) : A(1));
      const A xhat = (static_cast<A>(x[base + j]) - m) * is;
      dx[base + j] = static_cast<T>((g - mg - xhat * mgx) * is);
    }
  }
}

// Block (tile, chunk): per column of the tile, Σ dy·x̂ and Σ dy over the chunk's rows,
// written to partial_w / partial_b[chunk·cols + col].
template <class T>
__global__ void layer_norm_backward_params_partial_kernel(compute_t<T>* partial_w, compute_t<T>* partial_b,
                                                          const T* dy, const T* x, const compute_t<T>* mean,
                                                          const compute_t<T>* rstd, int64_t rows, int64_t cols,
                                                          int64_t chunk_rows) {
  using A = compute_t<T>;
  __shared__ A s_w[kTileRows][kTileCols + 1], s_b[kTileRows][kTileCols + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t lo = chunk * chunk_rows, hi = min(rows, lo + chunk_rows);
  A aw = 0, ab = 0;
  if (col < cols) {
    for (int64_t r = lo + threadIdx.y; r < hi; r += kTileRows) {
      const A g = static_cast<A>(dy[r * cols + col]);
      aw += g * (static_cast<A>(x[r * cols + col]) - mean[r]) * rstd[r];
      ab += g;
    }
  }
  s_w[threadIdx.y][threadIdx.x] = aw;
  s_b[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    for (int k = 1; k < kTileRows; ++k) {
      aw += s_w[k][threadIdx.x];
      ab += s_b[k][threadIdx.x];
    }
    partial_w[chunk * cols + col] = aw;
    partial_b[chunk * cols + col] = ab;
  }
}

template <class T>
__global__ void layer_norm_backward_params_merge_kernel(T* dweight, T* dbias, const compute_t<T>* partial_w,
                                                        const compute_t<T>* partial_b, int64_t cols, int64_t chunks) {
  using A = compute_t<T>;
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; col < cols;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A aw = 0, ab = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      aw += partial_w[k * cols + col];
      ab += partial_b[k * cols + col];
    }
    if (dweight) dweight[col] = static_cast<T>(aw);
    if (dbias) dbias[col] = static_cast<T>(ab);
  }
}

struct RowChunks {
  int64_t rows = 0;   // rows per chunk
  int64_t count = 0;  // chunks (none empty)
};

RowChunks row_chunks(int64_t rows) {
  RowChunks c;
  if (rows == 0) return c;
  const int64_t want = std::clamp<int64_t>((rows + kMinChunkRows - 1) / kMinChunkRows, 1, kMaxRowChunks);
  c.rows = (rows + want - 1) / want;
  c.count = (rows + c.rows - 1) / c.rows;
  return c;
}

size_t stat_size(DType dtype) { return dtype == DType::kF64 ? sizeof(double) : sizeof(float); }

}  // namespace

size_t layer_norm_backward_workspace_bytes(DType dtype, int64_t rows, int64_t cols) {
  return static_cast<size_t>(2 * row_chunks(rows).count * cols) * stat_size(dtype);
}

void layer_norm_forward(void* y, void* mean, void* rstd, const void* x, const void* weight, const void* bias,
                        DType dtype, int64_t rows, int64_t cols, double eps, cudaStream_t stream) {
  if (rows * cols == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        T* yp = static_cast<T*>(y);
        A* mp = static_cast<A*>(mean);
        A* rp = static_cast<A*>(rstd);
        const T* xp = static_cast<const T*>(x);
        const T* wp = static_cast<const T*>(weight);
        const T* bp = static_cast<const T*>(bias);
        if (cols <= kWarpRowMax) {
          layer_norm_forward_kernel<T, 32><<<grid_for_rows(rows, kWarpRowsPerBlock), dim3(32, kWarpRowsPerBlock), 0,
                                             stream>>>(yp, mp, rp, xp, wp, bp, rows, cols, eps);
        } else {
          layer_norm_forward_kernel<T, kBlockRowThreads>
              <<<grid_for_rows(rows, 1), dim3(kBlockRowThreads, 1), 0, stream>>>(yp, mp, rp, xp, wp, bp, rows, cols,
                                                                                  eps);
        }
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("layer_norm_forward", dtype);
}

void layer_norm_backward(void* dx, void* dweight, void* dbias, void* workspace, const void* dy, const void* x,
                         const void* mean, const void* rstd, const void* weight, DType dtype, int64_t rows,
                         int64_t cols, cudaStream_t stream) {
  if (cols == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        using A = compute_t<T>;
        const T* dyp = static_cast<const T*>(dy);
        const T* xp = static_cast<const T*>(x);
        const A* mp = static_cast<const A*>(mean);
        const A* rp = static_cast<const A*>(rstd);
        if (dx && rows > 0) {
          T* dxp = static_cast<T*>(dx);
          const T* wp = static_cast<const T*>(weight);
          if (cols <= kWarpRowMax) {
            layer_norm_backward_dx_kernel<T, 32><<<grid_for_rows(rows, kWarpRowsPerBlock),
                                                   dim3(32, kWarpRowsPerBlock), 0, stream>>>(dxp, dyp, xp, mp, rp, wp,
                                                                                            rows, cols);
          } else {
            layer_norm_backward_dx_kernel<T, kBlockRowThreads>
                <<<grid_for_rows(rows, 1), dim3(kBlockRowThreads, 1), 0, stream>>>(dxp, dyp, xp, mp, rp, wp, rows,
                                                                                    cols);
          }
          CUDA_CHECK_LAUNCH();
        }
        if (dweight || dbias) {
          const RowChunks chunks = row_chunks(rows);
          A* partial_w = static_cast<A*>(workspace);
          A* partial_b = partial_w + chunks.count * cols;
          if (chunks.count > 0) {
            const dim3 grid(static_cast<unsigned>((cols + kTileCols - 1) / kTileCols),
                            static_cast<unsigned>(chunks.count));
            layer_norm_backward_params_partial_kernel<T><<<grid, dim3(kTileCols, kTileRows), 0, stream>>>(
                partial_w, partial_b, dyp, xp, mp, rp, rows, cols, chunks.rows);
            CUDA_CHECK_LAUNCH();
          }
          // With no rows the merge sums no chunks and writes zeros.
          layer_norm_backward_params_merge_kernel<T><<<grid_for(cols), kBlockSize, 0, stream>>>(
              static_cast<T*>(dweight), static_cast<T*>(dbias), partial_w, partial_b, cols, chunks.count);
          CUDA_CHECK_LAUNCH();
        }
      }))
    unreachable_dtype("layer_norm_backward", dtype);
}

}  // namespace tandem::kernels::cuda
