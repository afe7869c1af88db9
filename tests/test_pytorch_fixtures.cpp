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
using tandem::testing::fixture_tensor;
using tandem::testing::load_fixture;

namespace {

constexpr double kAtol = 1e-12;
constexpr double kRtol = 1e-6;

}  // namespace

TEST(PyTorchFixtures, LinearForwardBackward) {
  json j = load_fixture("linear.json");
  Tensor x = fixture_tensor(j["input"]).set_requires_grad(true);
  nn::Linear fc(5, 6);
  fc.to(DType::kF64);
  nn::StateDict sd{{"weight", fixture_tensor(j["weight"])}, {"bias", fixture_tensor(j["bias"])}};
  fc.load_state_dict(sd);
  Tensor y = fc(x);
  EXPECT_TRUE(all_close(y, fixture_tensor(j["output"]), kAtol, kRtol));
  y.backward(fixture_tensor(j["grad_output"]));
  EXPECT_TRUE(all_close(x.grad(), fixture_tensor(j["grad_input"]), kAtol, kRtol));
  EXPECT_TRUE(all_close(fc.weight().grad(), fixture_tensor(j["grad_weight"]), kAtol, kRtol));
  EXPECT_TRUE(all_close(fc.bias().grad(), fixture_tensor(j["grad_bias"]), kAtol, kRtol));
}

TEST(PyTorchFixtures, CrossEntropyLabelSmoothingIgnoreIndex) {
  json j = load_fixture("cross_entropy.json");
  Tensor logits = fixture_tensor(j["logits"]);
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
    Tensor loss = cross_entropy(x, fixture_tensor(c["targets"], /*integer=*/true), o);
    const double want = c["loss"];
    EXPECT_NEAR(loss.item(), want, kAtol + kRtol * std::abs(want));
    loss.backward();
    EXPECT_TRUE(all_close(x.grad(), fixture_tensor(c["grad_logits"]), kAtol, kRtol));
  }
}

TEST(PyTorchFixtures, SGDFiveStepsMomentumWeightDecay) {
  json j = load_fixture("sgd.json");
  for (const json& c : j["cases"]) {
    const bool nesterov = c["nesterov"];
    SCOPED_TRACE(nesterov ? "nesterov" : "classical momentum");
    std::vector<Tensor> params;
    for (const json& p : j["initial_params"]) params.push_back(fixture_tensor(p).set_requires_grad(true));
    optim::SGD opt(params, {.lr = j["lr"], .momentum = j["momentum"], .dampening = j["dampening"],
                            .weight_decay = j["weight_decay"], .nesterov = nesterov});
    const json& grads = j["grads"];
    ASSERT_EQ(grads.size(), 5u);
    for (size_t k = 0; k < grads.size(); ++k) {
      for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(fixture_tensor(grads[k][i]));
      opt.step();
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_TRUE(all_close(params[i], fixture_tensor(c["params_after_step"][k][i]), kAtol, kRtol))
            << "step " << k + 1 << " param " << i;
      }
    }
    optim::OptimizerState st = opt.state_dict();
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_TRUE(all_close(st.tensors.at("momentum_buffer." + std::to_string(i)),
                            fixture_tensor(c["momentum_buffers"][i]), kAtol, kRtol));
    }
  }
}
