// Tandem's BatchNorm2d and LayerNorm against PyTorch (values in tests/fixtures/
// batch_norm.json and layer_norm.json, written by tests/fixtures_norm.py): outputs,
// gradients of input, weight and bias, and BatchNorm2d's running statistics over
// several training steps and an eval step, in f64.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "layers/norm.h"
#include "test_util.h"

namespace tandem {
namespace {

using json = nlohmann::json;
using testing::all_close;
using testing::fixture_tensor;
using testing::load_fixture;

constexpr double kAtol = 1e-12;
constexpr double kRtol = 1e-9;

TEST(PyTorchNorm, BatchNorm2dTrainingStepsThenEval) {
  const json j = load_fixture("batch_norm.json");
  ASSERT_EQ(j["cases"].size(), 2u);
  for (const json& c : j["cases"]) {
    const bool affine = c["affine"];
    nn::BatchNormOptions options{.eps = 1e-5, .affine = affine};
    if (c["momentum"].is_null()) {
      options.momentum = std::nullopt;
    } else {
      options.momentum = c["momentum"].get<double>();
    }
    SCOPED_TRACE(affine ? "momentum 0.1, affine" : "momentum None, no affine");
    nn::BatchNorm2d bn(3, options);
    bn.to(DType::kF64);

    // Same state-dict keys, in PyTorch's order.
    std::vector<std::string> keys;
    for (const auto& [name, t] : bn.state_dict()) keys.push_back(name);
    EXPECT_EQ(keys, c["state_dict_keys"].get<std::vector<std::string>>());

    nn::StateDict sd;
    for (const auto& [name, t] : c["initial_state"].items())
      sd.emplace_back(name, name == "num_batches_tracked" ? Tensor::from_vector<int64_t>({t["data"][0].get<int64_t>()}, {})
                                                          : fixture_tensor(t));
    bn.load_state_dict(sd);

    int step = 0;
    for (const json& s : c["steps"]) {
      SCOPED_TRACE("step " + std::to_string(step++));
      bn.train(s["training"].get<bool>());
      bn.zero_grad();
      Tensor x = fixture_tensor(s["input"]).set_requires_grad(true);
      Tensor y = bn(x);
      EXPECT_TRUE(all_close(y, fixture_tensor(s["output"]), kAtol, kRtol));
      y.backward(fixture_tensor(s["grad_output"]));
      EXPECT_TRUE(all_close(x.grad(), fixture_tensor(s["grad_input"]), kAtol, kRtol));
      if (affine) {
        EXPECT_TRUE(all_close(bn.weight().grad(), fixture_tensor(s["grad_weight"]), kAtol, kRtol));
        EXPECT_TRUE(all_close(bn.bias().grad(), fixture_tensor(s["grad_bias"]), kAtol, kRtol));
      }
      EXPECT_TRUE(all_close(bn.running_mean(), fixture_tensor(s["running_mean"]), kAtol, kRtol));
      EXPECT_TRUE(all_close(bn.running_var(), fixture_tensor(s["running_var"]), kAtol, kRtol));
      EXPECT_EQ(bn.num_batches_tracked().item<int64_t>(), s["num_batches_tracked"].get<int64_t>());
    }
  }
}

TEST(PyTorchNorm, LayerNormForwardBackward) {
  const json j = load_fixture("layer_norm.json");
  ASSERT_EQ(j["cases"].size(), 2u);
  for (const json& c : j["cases"]) {
    const Shape normalized_shape = c["normalized_shape"].get<Shape>();
    const bool affine = c["affine"];
    SCOPED_TRACE("normalized_shape " + shape_str(normalized_shape));
    nn::LayerNorm ln(normalized_shape, 1e-5, affine);
    ln.to(DType::kF64);
    if (affine) ln.load_state_dict({{"weight", fixture_tensor(c["weight"])}, {"bias", fixture_tensor(c["bias"])}});
    Tensor x = fixture_tensor(c["input"]).set_requires_grad(true);
    Tensor y = ln(x);
    EXPECT_TRUE(all_close(y, fixture_tensor(c["output"]), kAtol, kRtol));
    y.backward(fixture_tensor(c["grad_output"]));
    EXPECT_TRUE(all_close(x.grad(), fixture_tensor(c["grad_input"]), kAtol, kRtol));
    if (affine) {
      EXPECT_TRUE(all_close(ln.weight().grad(), fixture_tensor(c["grad_weight"]), kAtol, kRtol));
      EXPECT_TRUE(all_close(ln.bias().grad(), fixture_tensor(c["grad_bias"]), kAtol, kRtol));
    }
  }
}

}  // namespace
}  // namespace tandem
