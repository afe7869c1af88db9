// Device: where a tensor lives, `cpu` or `cuda:N`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kernels/dtype.h"

namespace tandem {

enum class DeviceType : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::kCPU, 0}; }
  static constexpr Device cuda(int index = 0) { return {DeviceType::kCUDA, index}; }
  /// Parses "cpu", "cuda" (device 0) or "cuda:N"; throws std::invalid_argument otherwise.
  static Device parse(std::string_view text);

  constexpr bool is_cpu() const { return type == DeviceType::kCPU; }
  constexpr bool is_cuda() const { return type == DeviceType::kCUDA; }
  std::string str() const;
  friend constexpr bool operator==(Device a, Device b) { return a.type == b.type && a.index == b.index; }
};

/// Parses "float32"/"f32", "float16"/"f16", "bfloat16"/"bf16", "float64"/"f64", "int32", "int64", "uint8", "bool".
DType parse_dtype(std::string_view text);

}  // namespace tandem
