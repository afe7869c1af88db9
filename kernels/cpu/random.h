// CPU random fills from a Philox stream (seed, offset): element i takes word i%4 of
// block offset + i/4. Values are drawn in f32 (uniform: 24-bit, normal: Box-Muller in
// f64 rounded to f32), scaled in f64 with one fused multiply-add and then converted
// to the output dtype, so CPU and CUDA give identical bits for every dtype.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// out_i = low + (high − low)·u_i, u_i = philox_uniform(...) in [0, 1).
void uniform_fill(void* out, DType dtype, int64_t n, double low, double high, uint64_t seed, uint64_t offset);

/// out_i = mean + std·z_i, z_i = philox_normal(...).
void normal_fill(void* out, DType dtype, int64_t n, double mean, double std, uint64_t seed, uint64_t offset);

}  // namespace tandem::kernels::cpu
