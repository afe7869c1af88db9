// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11), the counter-based generator cuRAND and PyTorch use. A stream is (seed,
// offset): element i of a draw takes word i%4 of block offset + i/4, so any element
// can be computed on its own, in any order, on CPU or GPU, with the same result.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/half.h"

namespace tandem::kernels {

struct PhiloxBlock {
  uint32_t w[4];
};

TANDEM_HOST_DEVICE inline uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

/// One Philox4x32-10 block for a 128-bit counter and 64-bit key.
TANDEM_HOST_DEVICE inline PhiloxBlock philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                    uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo32(kM0, c0, &hi0);
    uint32_t lo1 = mulhilo32(kM1, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

/// The block `block` of the stream keyed by `seed`.
TANDEM_HOST_DEVICE inline PhiloxBlock philox_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

/// Uniform in [0, 1) with 24 random bits: exactly representable in f32.
TANDEM_HOST_DEVICE inline float philox_uniform(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

/// Standard normals by Box-Muller on words (2p, 2p+1) of a block; element j uses
/// the cosine for even j and the sine for odd j. Computed in f64 and rounded once,
/// so CPU and GPU give the same f32.
TANDEM_HOST_DEVICE inline float philox_normal(const PhiloxBlock& b, int j) {
  int p = j & 2;
  // u1 in (0, 1] so the log is finite; u2 in [0, 1).
  double u1 = (static_cast<double>(b.w[p]) + 1.0) * (1.0 / 4294967296.0);
  double u2 = static_cast<double>(b.w[p + 1]) * (1.0 / 4294967296.0);
  double r = std::sqrt(-2.0 * std::log(u1));
  double theta = 6.283185307179586476925 * u2;
  return static_cast<float>((j & 1) ? r * std::sin(theta) : r * std::cos(theta));
}

/// Number of 128-bit blocks a draw of n elements consumes.
TANDEM_HOST_DEVICE inline uint64_t philox_blocks(int64_t n) { return static_cast<uint64_t>((n + 3) / 4); }

}  // namespace tandem::kernels
