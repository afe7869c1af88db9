// Element conversion between any two storage types, shared by the CPU and CUDA
// cast kernels: f16/bf16 go through f32; bool is "not zero".
#pragma once

#include <type_traits>

#include "kernels/half.h"

namespace tandem::kernels {

template <class T>
inline constexpr bool is_reduced_float_v = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

template <class Dst, class Src>
TANDEM_HOST_DEVICE inline Dst convert(Src x) {
  if constexpr (std::is_same_v<Dst, Src>) {
    return x;
  } else if constexpr (std::is_same_v<Dst, bool>) {
    if constexpr (is_reduced_float_v<Src>) return static_cast<float>(x) != 0.0f;
    else return x != Src(0);
  } else if constexpr (is_reduced_float_v<Src>) {
    return convert<Dst>(static_cast<float>(x));
  } else if constexpr (is_reduced_float_v<Dst>) {
    return Dst(static_cast<float>(x));
  } else {
    return static_cast<Dst>(x);
  }
}

}  // namespace tandem::kernels
