// Shared test helpers: deterministic random tensors, element-wise comparison with
// the first mismatch reported, an f64 finite-difference gradient check, and the
// skip used by every GPU test when no CUDA device is present.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/tensor.h"

/// Skips the current test with the reason CUDA cannot be used (no build, no driver, no GPU).
#define TANDEM_REQUIRE_CUDA()                                                              \
  do {                                                                                      \
    if (!::tandem::cuda::is_available())                                                    \
      GTEST_SKIP() << "no CUDA device: " << ::tandem::cuda::unavailable_reason();           \
  } while (0)

namespace tandem::testing {

/// Uniform values in [low, high) from a private Philox stream keyed by `seed`
/// (never zeros), created on the CPU in f64 and then converted.
Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::kF64, Device device = Device::cpu(),
                     double low = -1.0, double high = 1.0);
/// Random int64 values in [0, high).
Tensor random_indices(const Shape& shape, int64_t high, uint64_t seed, Device device = Device::cpu());

/// Checks shapes match and |got - want| <= atol + rtol·|want| element-wise; reports
/// the number of mismatches and the first one (index, got, want).
::testing::AssertionResult all_close(const Tensor& got, const Tensor& want, double atol = 1e-6, double rtol = 1e-5);
/// ‖got - want‖ / ‖want‖ (both converted to f64 on the CPU).
double relative_error(const Tensor& got, const Tensor& want);

/// Finite-difference check of every input that requires grad: compares the
/// analytical vector-Jacobian product for a random cotangent with central
/// differences (step eps) in f64. `fn` must be deterministic.
::testing::AssertionResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                     const std::vector<Tensor>& inputs, double eps = 1e-6, double atol = 1e-6,
                                     double rtol = 1e-4);

/// Runs `fn`, expects std::invalid_argument, and checks its message contains every piece.
void expect_invalid(const std::function<void()>& fn, const std::vector<std::string>& pieces);

/// Path of a fixture file under tests/fixtures.
std::string fixture_path(const std::string& name);
/// Parses tests/fixtures/<name> (written by tests/make_fixtures.py).
nlohmann::json load_fixture(const std::string& name);
/// A fixture tensor {"shape": [...], "data": [...]} as f64 (int64 when `integer`).
Tensor fixture_tensor(const nlohmann::json& j, bool integer = false);

}  // namespace tandem::testing
