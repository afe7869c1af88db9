// CPU dropout with a Philox mask that is recomputed, not stored: element i is kept
// iff philox_uniform(word i%4 of philox_block(seed, offset + i/4)) >= p.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// out_i = keep_i ? x_i·scale : 0. The forward passes x and scale = 1/(1−p); the
/// backward passes dy and the same (p, seed, offset, scale) to regenerate the mask.
void dropout_apply(void* out, const void* x, DType dtype, int64_t n, double p, double scale, uint64_t seed,
                   uint64_t offset);

}  // namespace tandem::kernels::cpu
