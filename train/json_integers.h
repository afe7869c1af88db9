// Integer fields of the checkpoint and safetensors headers, read from JSON that may be
// damaged. nlohmann's get<uint64_t>() on a float (1e52) or get<int64_t>() on a huge
// value converts with a plain cast, which is undefined behaviour for out-of-range
// floats, so every such field is checked to be an integer that fits before it is read
// (the fuzzer found a data_offsets entry of 1.6e52). Internal to train/.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"

namespace tandem::train::detail {

/// `j` as an unsigned integer of at most `max`; std::invalid_argument otherwise, naming
/// `what` and the value found.
inline uint64_t json_unsigned(const nlohmann::json& j, const std::string& what,
                              uint64_t max = std::numeric_limits<uint64_t>::max()) {
  if (!j.is_number_unsigned() || j.get<uint64_t>() > max) {
    throw std::invalid_argument("expected " + what + " to be an integer in [0, " + std::to_string(max) + "], got " +
                                j.dump());
  }
  return j.get<uint64_t>();
}

/// `j` as a list of unsigned integers (json_unsigned each).
inline std::vector<uint64_t> json_unsigned_list(const nlohmann::json& j, const std::string& what) {
  if (!j.is_array()) throw std::invalid_argument("expected " + what + " to be a list of integers, got " + j.dump());
  std::vector<uint64_t> out;
  for (const nlohmann::json& v : j) out.push_back(json_unsigned(v, what + " entry"));
  return out;
}

/// `j` as a shape: a list of integers that fit in int64 (negative ones are kept, for
/// the caller's "negative extent" message).
inline Shape json_shape(const nlohmann::json& j) {
  if (!j.is_array()) throw std::invalid_argument("expected shape to be a list of integers, got " + j.dump());
  Shape out;
  for (const nlohmann::json& v : j) {
    const bool fits = v.is_number_integer() &&
                      (!v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX));
    if (!fits) throw std::invalid_argument("expected shape extents to be 64-bit integers, got " + j.dump());
    out.push_back(v.get<int64_t>());
  }
  return out;
}

}  // namespace tandem::train::detail
