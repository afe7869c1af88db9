// Type visitation shared by the CPU kernels: calls f(T{}) with the C++ type of a dtype.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/dtype.h"
#include "kernels/half.h"

namespace tandem::kernels {

template <class T>
struct Compute {
  using type = T;
};
template <>
struct Compute<Half> {
  using type = float;
};
template <>
struct Compute<BFloat16> {
  using type = float;
};
/// The type arithmetic on T is done in (f32 for f16 and bf16).
template <class T>
using compute_t = typename Compute<T>::type;

/// Calls f(T{}) for the floating dtypes; returns false for others.
template <class F>
bool visit_floating(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); return true;
    case DType::kF64: f(double{}); return true;
    case DType::kF16: f(Half{}); return true;
    case DType::kBF16: f(BFloat16{}); return true;
    default: return false;
  }
}

/// Calls f(T{}) for every dtype.
template <class F>
void visit_all(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); return;
    case DType::kF64: f(double{}); return;
    case DType::kF16: f(Half{}); return;
    case DType::kBF16: f(BFloat16{}); return;
    case DType::kI32: f(int32_t{}); return;
    case DType::kI64: f(int64_t{}); return;
    case DType::kU8: f(uint8_t{}); return;
    case DType::kBool: f(bool{}); return;
  }
}

/// Kernels are called only after the engine has checked dtypes; reaching this is a bug.
[[noreturn]] inline void unreachable_dtype(const char* kernel, DType dtype) {
  throw std::logic_error(std::string("[") + kernel + "] kernel called with unsupported dtype " +
                         std::string(dtype_name(dtype)));
}

}  // namespace tandem::kernels
