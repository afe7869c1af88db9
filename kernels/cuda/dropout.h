// CUDA dropout with a Philox mask recomputed from (seed, offset) rather than stored;
// the mask is bit-identical to kernels/cpu/dropout.h for the same state.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// out_i = keep_i ? x_i·scale : 0, keep_i = philox_uniform(word i%4 of block offset + i/4) >= p.
/// `offset_base`, when not null, is device memory holding a count of blocks added to
/// `offset` when the kernel runs (a CUDA graph's draws, engine/random.h).
void dropout_apply(void* out, const void* x, DType dtype, int64_t n, double p, double scale, uint64_t seed,
                   uint64_t offset, const uint64_t* offset_base, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
