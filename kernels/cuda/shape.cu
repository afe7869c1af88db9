// GPU permuted copies and 2-D strided block copies. A swap of the last two dims (the
// common case: kᵀ in attention, (N,C,HW)->(N,HW,C)) goes through 32x32 shared-memory
// tiles so both the reads and the writes are coalesced; other permutations use one
// thread per output element, decomposing its index over the output shape. Block
// copies move the widest aligned word.
#include "kernels/cuda/shape.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

/// Passed by value as a kernel argument (well under the 4 KiB parameter limit).
struct PermuteParams {
  int ndim;
  int64_t out_shape[kMaxPermuteDims];
  int64_t src_stride[kMaxPermuteDims];  // input stride of each output dim
};

template <class Word>
__global__ void permute_kernel(Word* __restrict__ out, const Word* __restrict__ in, PermuteParams p, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rest = i, src = 0;
    for (int d = p.ndim - 1; d >= 0; --d) {
      const int64_t extent = p.out_shape[d];
      src += (rest % extent) * p.src_stride[d];
      rest /= extent;
    }
    out[i] = in[src];
  }
}

template <class Word>
__global__ void copy_2d_kernel(Word* __restrict__ dst, int64_t dst_pitch, const Word* __restrict__ src,
                               int64_t src_pitch, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, j = i - r * cols;
    dst[r * dst_pitch + j] = src[r * src_pitch + j];
  }
}

constexpr int kTile = 32;
constexpr int kTileRows = 8;  // threads per tile column; each moves kTile / kTileRows elements

/// out[b, c, r] = in[b, r, c] for in of shape (batch, rows, cols). Blocks of
/// kTile x kTileRows threads walk tiles with grid-stride loops over all three grid
/// dims; the loop bounds depend only on the block index, so every thread of a block
/// reaches each __syncthreads().
template <class Word>
__global__ void transpose_tiled_kernel(Word* __restrict__ out, const Word* __restrict__ in, int64_t batch,
                                       int64_t rows, int64_t cols) {
  __shared__ Word tile[kTile][kTile + 1];  // +1 column: no bank conflicts on the transposed read
  const int64_t plane = rows * cols;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const Word* src = in + b * plane;
    Word* dst = out + b * plane;
    for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile; r0 < rows;
         r0 += static_cast<int64_t>(gridDim.y) * kTile) {
      for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile; c0 < cols;
           c0 += static_cast<int64_t>(gridDim.x) * kTile) {
        for (int j = threadIdx.y; j < kTile; j += kTileRows) {
          const int64_t r = r0 + j, c = c0 + threadIdx.x;
          if (r < rows && c < cols) tile[j][threadIdx.x] = src[r * cols + c];
        }
        __syncthreads();
        for (int j = threadIdx.y; j < kTile; j += kTileRows) {
          const int64_t c = c0 + j, r = r0 + threadIdx.x;
          if (c < cols && r < rows) dst[c * rows + r] = tile[threadIdx.x][j];
        }
        __syncthreads();  // the tile is reused by the next iteration
      }
    }
  }
}

template <class Word>
void launch_transpose_tiled(void* out, const void* in, int64_t batch, int64_t rows, int64_t cols,
                            cudaStream_t stream) {
  auto blocks = [](int64_t n, int64_t cap) {
    return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(n, 1), cap));
  };
  const dim3 grid(blocks((cols + kTile - 1) / kTile, 1 << 20), blocks((rows + kTile - 1) / kTile, 65535),
                  blocks(batch, 65535));
  const dim3 block(kTile, kTileRows);
  transpose_tiled_kernel<Word><<<grid, block, 0, stream>>>(static_cast<Word*>(out), static_cast<const Word*>(in),
                                                           batch, rows, cols);
  CUDA_CHECK_LAUNCH();
}

template <class Word>
void launch_permute(void* out, const void* in, const PermuteParams& p, int64_t n, cudaStream_t stream) {
  permute_kernel<Word><<<grid_for(n), kBlockSize, 0, stream>>>(static_cast<Word*>(out), static_cast<const Word*>(in),
                                                               p, n);
  CUDA_CHECK_LAUNCH();
}

template <class Word>
void launch_copy_2d(void* dst, int64_t dst_pitch_bytes, const void* src, int64_t src_pitch_bytes, int64_t rows,
                    int64_t row_bytes, cudaStream_t stream) {
  constexpr int64_t w = sizeof(Word);
  const int64_t n = rows * (row_bytes / w);
  copy_2d_kernel<Word><<<grid_for(n), kBlockSize, 0, stream>>>(static_cast<Word*>(dst), dst_pitch_bytes / w,
                                                               static_cast<const Word*>(src), src_pitch_bytes / w,
                                                               rows, row_bytes / w);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void permute_copy(DType dtype, void* out, const void* in, int ndim, const int64_t* in_shape, const int64_t* dims,
                  cudaStream_t stream) {
  if (ndim < 0 || ndim > kMaxPermuteDims)
    throw std::logic_error("[permute_copy] expected at most " + std::to_string(kMaxPermuteDims) + " dims, got " +
                           std::to_string(ndim));
  PermuteParams p{};
  p.ndim = ndim;
  int64_t in_strides[kMaxPermuteDims];
  int64_t stride = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    in_strides[d] = stride;
    stride *= in_shape[d];
  }
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) {
    p.out_shape[i] = in_shape[dims[i]];
    p.src_stride[i] = in_strides[dims[i]];
    n *= p.out_shape[i];
  }
  if (n == 0) return;
  // A swap of the last two dims, with or without one leading batch dim.
  const bool swap_2d = ndim == 2 && dims[0] == 1 && dims[1] == 0;
  const bool swap_batched = ndim == 3 && dims[0] == 0 && dims[1] == 2 && dims[2] == 1;
  if (swap_2d || swap_batched) {
    const int64_t batch = swap_batched ? in_shape[0] : 1;
    const int64_t rows = in_shape[ndim - 2], cols = in_shape[ndim - 1];
    switch (dtype_size(dtype)) {
      case 1: launch_transpose_tiled<uint8_t>(out, in, batch, rows, cols, stream); return;
      case 2: launch_transpose_tiled<uint16_t>(out, in, batch, rows, cols, stream); return;
      case 4: launch_transpose_tiled<uint32_t>(out, in, batch, rows, cols, stream); return;
      case 8: launch_transpose_tiled<uint64_t>(out, in, batch, rows, cols, stream); return;
      default: unreachable_dtype("permute_copy", dtype);
    }
  }
  switch (dtype_size(dtype)) {
    case 1: launch_permute<uint8_t>(out, in, p, n, stream); return;
    case 2: launch_permute<uint16_t>(out, in, p, n, stream); return;
    case 4: launch_permute<uint32_t>(out, in, p, n, stream); return;
    case 8: launch_permute<uint64_t>(out, in, p, n, stream); return;
    default: unreachable_dtype("permute_copy", dtype);
  }
}

void copy_2d(DType dtype, void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t rows,
             int64_t cols, cudaStream_t stream) {
  const int64_t elem = static_cast<int64_t>(dtype_size(dtype));
  const int64_t row_bytes = cols * elem;
  if (rows == 0 || row_bytes == 0) return;
  const int64_t dst_pitch_bytes = dst_pitch * elem, src_pitch_bytes = src_pitch * elem;
  // The widest word that divides every byte count and both addresses: cat of f32
  // rows of 64 elements then moves 16 bytes per thread instead of 4.
  const uint64_t bits = static_cast<uint64_t>(row_bytes) | static_cast<uint64_t>(dst_pitch_bytes) |
                        static_cast<uint64_t>(src_pitch_bytes) | reinterpret_cast<uintptr_t>(dst) |
                        reinterpret_cast<uintptr_t>(src);
  if (bits % 16 == 0) {
    launch_copy_2d<uint4>(dst, dst_pitch_bytes, src, src_pitch_bytes, rows, row_bytes, stream);
  } else if (bits % 8 == 0) {
    launch_copy_2d<uint2>(dst, dst_pitch_bytes, src, src_pitch_bytes, rows, row_bytes, stream);
  } else if (bits % 4 == 0) {
    launch_copy_2d<uint32_t>(dst, dst_pitch_bytes, src, src_pitch_bytes, rows, row_bytes, stream);
  } else if (bits % 2 == 0) {
    launch_copy_2d<uint16_t>(dst, dst_pitch_bytes, src, src_pitch_bytes, rows, row_bytes, stream);
  } else {
    launch_copy_2d<uint8_t>(dst, dst_pitch_bytes, src, src_pitch_bytes, rows, row_bytes, stream);
  }
}

}  // namespace tandem::kernels::cuda
