// CUDA fused bias + activation. Forward: one grid-stride pass, V = 16 / sizeof(T)
// elements per load when every row is a whole number of vectors. Backward: tiles of
// kTileColumns x kTileLanes threads (V columns per thread) walk one chunk of rows,
// write dh and keep per-column sums, which are added across lanes in shared memory
// and across chunks by sum_column_chunks_kernel, in a fixed order.
#include "kernels/cuda/bias_activation.h"

#include <type_traits>

#include "kernels/bias_activation_math.h"
#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// `out` and `hidden` may alias (in place), so neither is __restrict__.
template <Activation Act, int V, class T>
__global__ void bias_activation_forward_kernel(T* out, T* hidden, const T* __restrict__ bias, int64_t n, int64_t cols,
                                               bool keep_hidden) {
  using C = compute_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n / V; i += stride) {
    const int64_t e = i * V;
    Vec<T, V> h = *reinterpret_cast<const Vec<T, V>*>(hidden + e);
    Vec<T, V> y;
    if (bias) {
      const Vec<T, V> b = *reinterpret_cast<const Vec<T, V>*>(bias + e % cols);
#pragma unroll
      for (int k = 0; k < V; ++k) h.v[k] = static_cast<T>(static_cast<C>(h.v[k]) + static_cast<C>(b.v[k]));
    }
#pragma unroll
    for (int k = 0; k < V; ++k) y.v[k] = static_cast<T>(activation_apply<Act, C>(static_cast<C>(h.v[k])));
    if (keep_hidden && bias) *reinterpret_cast<Vec<T, V>*>(hidden + e) = h;
    *reinterpret_cast<Vec<T, V>*>(out + e) = y;
  }
}

// Block (kTileColumns, kTileLanes); blockIdx.x picks kTileColumns * V columns,
// blockIdx.y a chunk of `chunk` rows. With kSum, the block's column sums go to
// bias_grad (one chunk) or partial[chunk * cols + col].
template <Activation Act, int V, bool kSum, class T>
__global__ void bias_activation_backward_kernel(T* __restrict__ dh, T* __restrict__ bias_grad,
                                                acc_t<T>* __restrict__ partial, const T* __restrict__ dy,
                                                const T* __restrict__ saved, int64_t rows, int64_t cols,
                                                int64_t chunk) {
  using C = compute_t<T>;
  using A = acc_t<T>;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * kTileColumns + threadIdx.x) * V;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = min(rows, begin + chunk);
  A acc[V] = {};
  if (col < cols) {
    for (int64_t r = begin + threadIdx.y; r < end; r += kTileLanes) {
      const int64_t e = r * cols + col;
      const Vec<T, V> g = *reinterpret_cast<const Vec<T, V>*>(dy + e);
      const Vec<T, V> s = *reinterpret_cast<const Vec<T, V>*>(saved + e);
      Vec<T, V> d;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        d.v[k] = static_cast<T>(activation_grad<Act, C>(static_cast<C>(g.v[k]), static_cast<C>(s.v[k])));
        if constexpr (kSum) acc[k] += static_cast<A>(static_cast<C>(d.v[k]));
      }
      *reinterpret_cast<Vec<T, V>*>(dh + e) = d;
    }
  }
  if constexpr (kSum) {
    __shared__ A lanes[kTileLanes][kTileColumns * V];
#pragma unroll
    for (int k = 0; k < V; ++k) lanes[threadIdx.y][threadIdx.x * V + k] = acc[k];
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A sum = lanes[0][threadIdx.x * V + k];
        for (int l = 1; l < kTileLanes; ++l) sum += lanes[l][threadIdx.x * V + k];
        if (gridDim.y == 1) bias_grad[col + k] = static_cast<T>(sum);
        else partial[static_cast<int64_t>(blockIdx.y) * cols + col + k] = sum;
      }
    }
  }
}

// Vector width for rows of `cols` elements: 16 bytes when a row holds whole vectors.
template <class T>
constexpr int row_vector_width(int64_t cols) {
  constexpr int kV = 16 / sizeof(T);
  return cols % kV == 0 ? kV : 1;
}

// Row chunks of the backward grid; depends on the shape only, so the workspace size
// can be asked for before the pointers are known.
template <class T>
int backward_chunks(int64_t rows, int64_t cols) {
  const int64_t per_tile = static_cast<int64_t>(kTileColumns) * row_vector_width<T>(cols);
  return row_chunks(rows, (cols + per_tile - 1) / per_tile);
}

template <Activation Act, class T>
void forward_typed(T* out, T* hidden, const T* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t n = rows * cols;
  const bool keep_hidden = out != hidden;
  constexpr int kV = 16 / sizeof(T);
  if (row_vector_width<T>(cols) == kV && aligned16(out) && aligned16(hidden) && (!bias || aligned16(bias))) {
    bias_activation_forward_kernel<Act, kV><<<grid_for(n, kV), kBlockSize, 0, stream>>>(out, hidden, bias, n, cols,
                                                                                        keep_hidden);
  } else {
    bias_activation_forward_kernel<Act, 1><<<grid_for(n), kBlockSize, 0, stream>>>(out, hidden, bias, n, cols,
                                                                                   keep_hidden);
  }
  CUDA_CHECK_LAUNCH();
}

template <Activation Act, int V, class T>
void launch_backward(T* dh, T* bias_grad, void* workspace, const T* dy, const T* saved, int64_t rows, int64_t cols,
                     cudaStream_t stream) {
  using A = acc_t<T>;
  const int chunks = backward_chunks<T>(rows, cols);
  const int64_t chunk = (rows + chunks - 1) / chunks;
  const int64_t per_tile = static_cast<int64_t>(kTileColumns) * V;
  const dim3 grid(static_cast<unsigned>((cols + per_tile - 1) / per_tile), static_cast<unsigned>(chunks));
  const dim3 block(kTileColumns, kTileLanes);
  A* partial = static_cast<A*>(workspace);
  if (bias_grad) {
    bias_activation_backward_kernel<Act, V, true, T><<<grid, block, 0, stream>>>(dh, bias_grad, partial, dy, saved, rows,
                                                                             cols, chunk);
    CUDA_CHECK_LAUNCH();
    if (chunks > 1) {
      sum_column_chunks_kernel<A, T><<<grid_for(cols), kBlockSize, 0, stream>>>(bias_grad, partial, cols, chunks, 1.0);
      CUDA_CHECK_LAUNCH();
    }
  } else {
    bias_activation_backward_kernel<Act, V, false, T><<<grid, block, 0, stream>>>(dh, nullptr, nullptr, dy, saved, rows,
                                                                              cols, chunk);
    CUDA_CHECK_LAUNCH();
  }
}

template <Activation Act, class T>
void backward_typed(T* dh, T* bias_grad, void* workspace, const T* dy, const T* saved, int64_t rows, int64_t cols,
                    cudaStream_t stream) {
  constexpr int kV = 16 / sizeof(T);
  if (row_vector_width<T>(cols) == kV && aligned16(dh) && aligned16(dy) && aligned16(saved)) {
    launch_backward<Act, kV>(dh, bias_grad, workspace, dy, saved, rows, cols, stream);
  } else {
    launch_backward<Act, 1>(dh, bias_grad, workspace, dy, saved, rows, cols, stream);
  }
}

}  // namespace

void bias_activation_forward(Activation act, DType dtype, void* out, void* hidden, const void* bias, int64_t rows,
                             int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return;
  const bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    visit_activation(act, [&](auto a) {
      forward_typed<decltype(a)::value>(static_cast<T*>(out), static_cast<T*>(hidden), static_cast<const T*>(bias),
                                        rows, cols, stream);
    });
  });
  if (!ok) unreachable_dtype("cuda::bias_activation_forward", dtype);
}

size_t bias_activation_backward_workspace_bytes(DType dtype, int64_t rows, int64_t cols) {
  size_t bytes = 0;
  visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int chunks = backward_chunks<T>(rows, cols);
    if (chunks > 1) bytes = static_cast<size_t>(chunks) * static_cast<size_t>(cols) * sizeof(acc_t<T>);
  });
  return bytes;
}

void bias_activation_backward(Activation act, DType dtype, void* dhidden, void* bias_grad, const void* dout,
                              const void* saved, int64_t rows, int64_t cols, void* workspace, cudaStream_t stream) {
  if (cols == 0) return;
  if (rows == 0) {
    if (bias_grad) CUDA_CHECK(cudaMemsetAsync(bias_grad, 0, static_cast<size_t>(cols) * dtype_size(dtype), stream));
    return;
  }
  const bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    visit_activation(act, [&](auto a) {
      backward_typed<decltype(a)::value>(static_cast<T*>(dhidden), static_cast<T*>(bias_grad), workspace,
                                         static_cast<const T*>(dout), static_cast<const T*>(saved), rows, cols,
                                         stream);
    });
  });
  if (!ok) unreachable_dtype("cuda::bias_activation_backward", dtype);
}

}  // namespace tandem::kernels::cuda
