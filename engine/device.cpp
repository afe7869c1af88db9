// Device and dtype parsing and printing.
#include "engine/device.h"

#include <charconv>
#include <stdexcept>

namespace tandem {

Device Device::parse(std::string_view text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.starts_with("cuda:")) {
    std::string_view num = text.substr(5);
    int index = -1;
    auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), index);
    if (ec == std::errc() && ptr == num.data() + num.size() && index >= 0) return cuda(index);
  }
  throw std::invalid_argument("[device] expected \"cpu\", \"cuda\" or \"cuda:N\", got \"" + std::string(text) + "\"");
}

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

DType parse_dtype(std::string_view text) {
  struct Name {
    std::string_view a, b;
    DType t;
  };
  static constexpr Name kNames[] = {
      {"float32", "f32", DType::kF32},  {"float16", "f16", DType::kF16}, {"bfloat16", "bf16", DType::kBF16},
      {"float64", "f64", DType::kF64},  {"int32", "i32", DType::kI32},   {"int64", "i64", DType::kI64},
      {"uint8", "u8", DType::kU8},      {"bool", "bool", DType::kBool}};
  for (const Name& n : kNames) {
    if (text == n.a || text == n.b) return n.t;
  }
  throw std::invalid_argument("[dtype] unknown dtype \"" + std::string(text) +
                              "\"; expected one of float32, float16, bfloat16, float64, int32, int64, uint8, bool");
}

}  // namespace tandem
