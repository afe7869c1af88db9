// f16 and bf16 storage types usable on the host (and in device code, where the
// CUDA kernels reinterpret them as __half / __nv_bfloat16). Conversions round to
// nearest even, as the hardware does, so CPU and GPU casts agree bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TANDEM_HOST_DEVICE __host__ __device__
#else
#define TANDEM_HOST_DEVICE
#endif

namespace tandem {

TANDEM_HOST_DEVICE inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

TANDEM_HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

/// IEEE 754 binary16.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  TANDEM_HOST_DEVICE explicit Half(float f) : bits(from_float(f)) {}
  TANDEM_HOST_DEVICE operator float() const { return to_float(bits); }

  TANDEM_HOST_DEVICE static uint16_t from_float(float f) {
    uint32_t x = float_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) {  // inf or nan; keep nan quiet
      return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    }
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
    if (abs < 0x38800000u) {  // subnormal or zero in f16
      // Scale into the subnormal range with one float add, which rounds to nearest even.
      float shifted = bits_float(abs) + 0.5f;
      return static_cast<uint16_t>(sign | (float_bits(shifted) - 0x3f000000u));
    }
    uint32_t mant_odd = (abs >> 13) & 1u;
    abs += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return static_cast<uint16_t>(sign | (abs >> 13));
  }
  TANDEM_HOST_DEVICE static float to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
      // subnormal: value = mant * 2^-24, exact in float
      float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
      return sign ? -v : v;
    }
    return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  }
};

/// bfloat16: the upper half of an IEEE binary32.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  TANDEM_HOST_DEVICE explicit BFloat16(float f) : bits(from_float(f)) {}
  TANDEM_HOST_DEVICE operator float() const { return bits_float(static_cast<uint32_t>(bits) << 16); }

  TANDEM_HOST_DEVICE static uint16_t from_float(float f) {
    uint32_t x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
    x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
    return static_cast<uint16_t>(x >> 16);
  }
};

}  // namespace tandem
