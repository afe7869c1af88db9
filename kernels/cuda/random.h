// CUDA random fills from a Philox stream (seed, offset), bit-identical to
// kernels/cpu/random.h: f32 draws, scaled in f64 with one fma, then converted.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// out_i = low + (high − low)·u_i, u_i = philox_uniform(word i%4 of block offset + i/4).
/// `offset_base`, when not null, is device memory holding a count of blocks added to
/// `offset` when the kernel runs (a CUDA graph's draws, engine/random.h).
void uniform_fill(void* out, DType dtype, int64_t n, double low, double high, uint64_t seed, uint64_t offset,
                  const uint64_t* offset_base, cudaStream_t stream);

/// out_i = mean + std·z_i, z_i = philox_normal(block offset + i/4, i%4); offset_base as above.
void normal_fill(void* out, DType dtype, int64_t n, double mean, double std, uint64_t seed, uint64_t offset,
                 const uint64_t* offset_base, cudaStream_t stream);

/// *counter = value on `stream`: a CUDA graph's Philox offset base, written before each
/// replay (ordered with it, no host synchronisation).
void store_philox_offset(uint64_t* counter, uint64_t value, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
