// Compares Tandem with PyTorch reference values stored in tests/fixtures/*.json by
// tests/make_fixtures.py (Linear forward/backward, cross-entropy with label smoothing
// and ignore_index, five SGD steps with momentum and weight decay), all in f64.
#include <nlohmann/json.hpp>

#include <fstream>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/linear.h"
#include "optim/sgd.h"
#include "test_util.h"

using namespace tandem;
using json = nlohmann::json;
using tandem::testing::all_close;

namespace {

constexpr double kAtol = 1e-12;
constexpr double kRtol = 1e-6;

json load_fixture(const std::string& name) {
  std::ifstream f(tandem::testing::fixture_path(name));
  if (!f) throw std::runtime_error("cannot open fixture " + tandem::testing::fixture_path(name));
  return json::parse(f);
}

/// {"shape": [...], "data": [...]} as an f64 tensor (int64 when `integer`).
Tensor tensor_of(const json& j, bool integer = false) {
  Shape shape = j.at("shape").get<Shape>();
  if (integer) return Tensor::from_vector(j.at("data").get<std::vector<int64_t>>(), shape);
  return Tensor::from_vector(j.at("data").get<std::vector<double>>(), shape);
}

}  // namespace

TEST(PyTorchFixtures, LinearForwardBackward) {
  json j = load_fixture("linear.json");
  Tensor x = tensor_of(j["input"]).set_requires_grad(true);
  nn::Linear fc(5, 6);
  fc.to(DType::kF64);
  nn::StateDict sd{{"weight", tensor_of(j["weight"])}, {"bias", tensor_of(j["bias"])}};
  fc.load_state_dict(sd);
  Tensor y = fc(x);
  EXPECT_TRUE(all_close(y, tensor_of(j["output"]), kAtol, kRtol));
  y.backward(tensor_of(j["grad_output"]));
  EXPECT_TRUE(all_close(x.grad(), tensor_of(j["grad_input"]), kAtol, kRtol));
  EXPECT_TRUE(all_close(fc.weight().grad(), tensor_of(j["grad_weight"]), kAtol, kRtol));
  EXPECT_TRUE(all_close(fc.bias().grad(), tensor_of(j["grad_bias"]), kAtol, kRtol));
}

TEST(PyTorchFixtures, CrossEntropyLabelSmoothingIgnoreIndex) {
  json j = load_fixture("cross_entropy.json");
  Tensor logits = tensor_of(j["logits"]);
  ASSERT_FALSE(j["cases"].empty());
  for (const json& c : j["cases"]) {
    const std::string reduction = c["reduction"];
    SCOPED_TRACE(reduction + " ignore_index " + std::to_string(c["ignore_index"].get<int64_t>()) + " smoothing " +
                 std::to_string(c["label_smoothing"].get<double>()));
    CrossEntropyOptions o;
    o.reduction = reduction == "sum" ? Reduction::kSum : Reduction::kMean;
    o.ignore_index = c["ignore_index"];
    o.label_smoothing = c["label_smoothing"];
    Tensor x = logits.detach().clone().set_requires_grad(true);
    Tensor loss = cross_entropy(x, tensor_of(c["targets"], /*integer=*/true), o);
    const double want = c["loss"];
    EXPECT_NEAR(loss.item(), want, kAtol + kRtol * std::abs(want));
    loss.backward();
    EXPECT_TRUE(all_close(x.grad(), tensor_of(c["grad_logits"]), kAtol, kRtol));
  }
}

TEST(PyTorchFixtures, SGDFiveStepsMomentumWeightDecay) {
  json j = load_fixture("sgd.json");
  for (const json& c : j["cases"]) {
    const bool nesterov = c["nesterov"];
    SCOPED_TRACE(nesterov ? "nesterov" : "classical momentum");
    std::vector<Tensor> params;
    for (const json& p : j["initial_params"]) params.push_back(tensor_of(p).set_requires_grad(true));
    optim::SGD opt(params, {.lr = j["lr"], .momentum = j["momentum"], .dampening = j["dampening"],
                            .weight_decay = j["weight_decay"], .nesterov = nesterov});
    const json& grads = j["grads"];
    ASSERT_EQ(grads.size(), 5u);
    for (size_t k = 0; k < grads.size(); ++k) {
      for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(tensor_of(grads[k][i]));
      opt.step();
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_TRUE(all_close(params[i], tensor_of(c["params_after_step"][k][i]), kAtol, kRtol))
            << "step " << k + 1 << " param " << i;
      }
    }
    optim::OptimizerState st = opt.state_dict();
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_TRUE(all_close(st.tensors.at("momentum_buffer." + std::to_string(i)),
                            tensor_of(c["momentum_buffers"][i]), kAtol, kRtol));
    }
  }
}
