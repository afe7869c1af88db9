// Compares conv2d / nn::Conv2d and the pooling layers with PyTorch reference values in
// tests/fixtures/{conv2d,pool2d}.json (written by tests/fixtures_conv.py): forward and
// every gradient, in f64.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/conv.h"
#include "layers/pool.h"
#include "test_util.h"

namespace tandem {
namespace {

using json = nlohmann::json;
using testing::all_close;
using testing::fixture_tensor;
using testing::load_fixture;

constexpr double kAtol = 1e-12;
constexpr double kRtol = 1e-9;

Int2 pair(const json& j) { return {j[0].get<int64_t>(), j[1].get<int64_t>()}; }

TEST(PyTorchConv, Conv2dForwardAndAllGradients) {
  const json j = load_fixture("conv2d.json");
  ASSERT_FALSE(j["cases"].empty());
  for (const json& c : j["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const Tensor w = fixture_tensor(c["weight"]);
    const bool has_bias = c.contains("bias");
    const Conv2dOptions o{.stride = pair(c["stride"]), .padding = pair(c["padding"]),
                          .dilation = pair(c["dilation"]), .groups = c["groups"].get<int64_t>()};
    nn::Conv2d conv(w.size(1) * o.groups, w.size(0), {w.size(2), w.size(3)}, o, has_bias);
    conv.to(DType::kF64);
    nn::StateDict sd{{"weight", w}};
    if (has_bias) sd.emplace_back("bias", fixture_tensor(c["bias"]));
    conv.load_state_dict(sd);

    Tensor x = fixture_tensor(c["input"]).set_requires_grad(true);
    Tensor y = conv(x);
    EXPECT_TRUE(all_close(y, fixture_tensor(c["output"]), kAtol, kRtol));
    y.backward(fixture_tensor(c["grad_output"]));
    EXPECT_TRUE(all_close(x.grad(), fixture_tensor(c["grad_input"]), kAtol, kRtol));
    EXPECT_TRUE(all_close(conv.weight().grad(), fixture_tensor(c["grad_weight"]), kAtol, kRtol));
    if (has_bias) {
      EXPECT_TRUE(all_close(conv.bias().grad(), fixture_tensor(c["grad_bias"]), kAtol, kRtol));
    }
  }
}

/// Runs `layer` on the case's input and compares output and input gradient.
void expect_pool_case(nn::Module& layer, const json& c) {
  Tensor x = fixture_tensor(c["input"]).set_requires_grad(true);
  Tensor y = layer(x);
  EXPECT_TRUE(all_close(y, fixture_tensor(c["output"]), kAtol, kRtol));
  y.backward(fixture_tensor(c["grad_output"]));
  EXPECT_TRUE(all_close(x.grad(), fixture_tensor(c["grad_input"]), kAtol, kRtol));
}

TEST(PyTorchConv, MaxPool2d) {
  const json j = load_fixture("pool2d.json");
  ASSERT_FALSE(j["max_pool2d"].empty());
  for (const json& c : j["max_pool2d"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    nn::MaxPool2d pool(pair(c["kernel"]), {.stride = pair(c["stride"]), .padding = pair(c["padding"]),
                                           .dilation = pair(c["dilation"]), .ceil_mode = c["ceil_mode"].get<bool>()});
    expect_pool_case(pool, c);
  }
}

TEST(PyTorchConv, AvgPool2d) {
  const json j = load_fixture("pool2d.json");
  ASSERT_FALSE(j["avg_pool2d"].empty());
  for (const json& c : j["avg_pool2d"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    nn::AvgPool2d pool(pair(c["kernel"]), {.stride = pair(c["stride"]), .padding = pair(c["padding"]),
                                           .ceil_mode = c["ceil_mode"].get<bool>(),
                                           .count_include_pad = c["count_include_pad"].get<bool>()});
    expect_pool_case(pool, c);
  }
}

TEST(PyTorchConv, AdaptiveAvgPool2d) {
  const json j = load_fixture("pool2d.json");
  ASSERT_FALSE(j["adaptive_avg_pool2d"].empty());
  for (const json& c : j["adaptive_avg_pool2d"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    nn::AdaptiveAvgPool2d pool(pair(c["output_size"]));
    expect_pool_case(pool, c);
  }
}

}  // namespace
}  // namespace tandem
