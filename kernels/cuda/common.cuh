// Helpers shared by the .cu files: launch geometry, grid-stride loops and the
// compute type of each storage type (f16/bf16 compute in f32).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/cuda/check.h"
#include "kernels/common.h"

namespace tandem::kernels::cuda {

inline constexpr int kBlockSize = 256;

/// Blocks for n elements at `per_thread` elements per thread, capped so a
/// grid-stride loop covers the rest (the cap keeps 2^31 grids out of reach).
inline unsigned int grid_for(int64_t n, int per_thread = 1, int block = kBlockSize) {
  int64_t threads = (n + per_thread - 1) / per_thread;
  int64_t blocks = (threads + block - 1) / block;
  if (blocks < 1) blocks = 1;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;
  return static_cast<unsigned int>(blocks);
}

/// V elements of T moved as one load or store (16 bytes for V = 16 / sizeof(T)).
template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// compute_t, visit_floating and visit_all come from kernels/common.h (namespace
// tandem::kernels); Half and BFloat16 convert on the device too.

}  // namespace tandem::kernels::cuda
