// Deterministic column sums over many rows, shared by the reductions and the fused
// bias gradient: blocks of kTileColumns x kTileLanes threads each sum one chunk of
// rows for their columns into partial[chunk * cols + col], then
// sum_column_chunks_kernel adds the chunks in order.
#pragma once

#include <cstdint>

#include "kernels/convert.h"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {

inline constexpr int kTileColumns = 32;
inline constexpr int kTileLanes = 8;

/// Chunks of `rows` for `tiles` column tiles: enough chunks of >= 64 rows for ~1024
/// blocks in all (the H100 holds ~1056 blocks of 256 threads), at least 1.
inline int row_chunks(int64_t rows, int64_t tiles) {
  int64_t chunks = (1024 + tiles - 1) / tiles;
  chunks = chunks < rows / 64 ? chunks : rows / 64;
  return static_cast<int>(chunks < 1 ? 1 : chunks);
}

/// out[t] = scale · Σ_c partial[c * total + t], chunks added in order.
template <class A, class Out>
__global__ void sum_column_chunks_kernel(Out* __restrict__ out, const A* __restrict__ partial, int64_t total,
                                         int chunks, double scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    A acc = 0;
    for (int c = 0; c < chunks; ++c) acc += partial[c * total + t];
    out[t] = convert<Out>(static_cast<A>(acc * static_cast<A>(scale)));
  }
}

}  // namespace tandem::kernels::cuda
