// Tests of optim/: SGD against hand-computed updates (momentum, dampening, weight
// decay, Nesterov), parameter groups, zero_grad, state dict save/restore, and capturable
// steps (first step decided from a count in memory) against the host path.
#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "optim/sgd.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::optim;
using tandem::testing::param;
using tandem::testing::set_grad;

namespace {

/// Reference torch.optim.SGD on scalars.
struct ScalarSGD {
  double p, buf = 0;
  bool first = true;
  void step(double g, const SGDOptions& o) {
    if (o.weight_decay != 0) g += o.weight_decay * p;
    if (o.momentum != 0) {
      buf = first ? g : o.momentum * buf + (1 - o.dampening) * g;
      first = false;
      g = o.nesterov ? g + o.momentum * buf : buf;
    }
    p -= o.lr * g;
  }
};

void check_against_scalar(const SGDOptions& o, DType dtype, double tol) {
  std::vector<double> init{1.0, -2.0, 0.25};
  std::vector<std::vector<double>> grads{{0.5, -1.0, 2.0}, {0.1, 0.3, -0.7}, {-0.4, 0.2, 0.9}};
  Tensor p = param(init, dtype);
  SGD opt({p}, o);
  std::vector<ScalarSGD> ref;
  for (double v : init) ref.push_back({v});
  for (const auto& g : grads) {
    set_grad(p, g);
    opt.step();
    for (size_t i = 0; i < ref.size(); ++i) ref[i].step(g[i], o);
  }
  auto got = p.to_vector<double>();
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i].p, tol * (1 + std::abs(ref[i].p))) << i;
}

}  // namespace

TEST(SGD, PlainStep) {
  Tensor p = param({1.0, 2.0});
  SGD opt({p}, {.lr = 0.1});
  set_grad(p, {0.5, -1.0});
  opt.step();
  EXPECT_EQ(p.to_vector<double>(), (std::vector<double>{1.0 - 0.1 * 0.5, 2.0 + 0.1}));
  EXPECT_EQ(opt.step_count(), 1);
}

TEST(SGD, MomentumFirstStepSeedsBufferWithGradient) {
  // Step 1: b = g; p -= lr·b.  Step 2: b = 0.9·b + g.
  Tensor p = param({1.0});
  SGD opt({p}, {.lr = 0.1, .momentum = 0.9});
  set_grad(p, {2.0});
  opt.step();
  EXPECT_DOUBLE_EQ(p.item(), 1.0 - 0.1 * 2.0);
  set_grad(p, {1.0});
  opt.step();
  EXPECT_DOUBLE_EQ(p.item(), 0.8 - 0.1 * (0.9 * 2.0 + 1.0));
}

TEST(SGD, MatchesReferenceAcrossOptions) {
  const std::vector<SGDOptions> cases{
      {.lr = 0.1},
      {.lr = 0.05, .weight_decay = 0.01},
      {.lr = 0.1, .momentum = 0.9},
      {.lr = 0.1, .momentum = 0.9, .dampening = 0.5},
      {.lr = 0.1, .momentum = 0.9, .weight_decay = 5e-4},
      {.lr = 0.1, .momentum = 0.9, .weight_decay = 5e-4, .nesterov = true},
  };
  for (const auto& o : cases) {
    check_against_scalar(o, DType::kF64, 1e-14);
    check_against_scalar(o, DType::kF32, 1e-6);
  }
}

TEST(SGD, ManyTensorsSplitOverThreadsMatchTheScalarReference) {
  // As Adam's test: pieces of several tensors over one OpenMP team, each element
  // updated once with its own tensor's lr and weight decay; tensor 1 starts its
  // momentum a step late.
  const std::vector<int64_t> sizes{70000, 3, 1100000, 65536};
  std::vector<Tensor> params;
  for (size_t i = 0; i < sizes.size(); ++i)
    params.push_back(tandem::testing::random_tensor({sizes[i]}, 500 + i).set_requires_grad(true));
  SGD opt(std::vector<ParamGroup>{{.params = {params[0], params[1]}, .lr = 0.1, .weight_decay = 0.01},
                                  {.params = {params[2], params[3]}, .lr = 0.2, .weight_decay = 0.0}},
          {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  const SGDOptions first{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true};
  const SGDOptions second{.lr = 0.2, .momentum = 0.9, .weight_decay = 0.0, .nesterov = true};
  std::vector<std::vector<ScalarSGD>> ref(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i)
    for (double v : params[i].to_vector<double>()) ref[i].push_back({v});
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (i == 1 && step == 0) continue;
      Tensor g = tandem::testing::random_tensor({sizes[i]}, 600 + 10 * step + i);
      params[i].set_grad(g);
      const std::vector<double> gv = g.to_vector<double>();
      for (size_t k = 0; k < gv.size(); ++k) ref[i][k].step(gv[k], i < 2 ? first : second);
    }
    opt.step();
    opt.zero_grad();
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<double> want;
    for (const auto& r : ref[i]) want.push_back(r.p);
    EXPECT_TRUE(tandem::testing::all_close(params[i], Tensor::from_vector(want, {sizes[i]}), 1e-14, 1e-14)) << "tensor " << i;
  }
}

TEST(SGD, SkipsParametersWithoutGradient) {
  Tensor a = param({1.0, 2.0});
  Tensor b = param({3.0});
  Tensor frozen = Tensor::from_vector(std::vector<double>{5.0}, {1});  // requires no grad: fine
  SGD opt({a, b, frozen}, {.lr = 0.5, .momentum = 0.9});
  set_grad(a, {1.0, 1.0});
  opt.step();
  EXPECT_EQ(a.to_vector<double>(), (std::vector<double>{0.5, 1.5}));
  EXPECT_EQ(b.item(), 3.0);
  EXPECT_EQ(frozen.item(), 5.0);
  // b's first gradient arrives later: its buffer starts from that gradient.
  set_grad(b, {2.0});
  opt.step();
  EXPECT_DOUBLE_EQ(b.item(), 3.0 - 0.5 * 2.0);
  EXPECT_DOUBLE_EQ(a.to_vector<double>()[0], 0.5 - 0.5 * (0.9 * 1.0 + 1.0));  // a kept its gradient
}

TEST(SGD, ParamGroupsHaveTheirOwnLrAndWeightDecay) {
  Tensor a = param({1.0});
  Tensor b = param({1.0});
  SGD opt(std::vector<ParamGroup>{{.params = {a}, .lr = std::nullopt, .weight_decay = std::nullopt},
                                  {.params = {b}, .lr = 0.5, .weight_decay = 0.1}},
          {.lr = 0.1});
  set_grad(a, {1.0});
  set_grad(b, {1.0});
  opt.step();
  EXPECT_DOUBLE_EQ(a.item(), 0.9);
  EXPECT_DOUBLE_EQ(b.item(), 1.0 - 0.5 * (1.0 + 0.1));
  EXPECT_DOUBLE_EQ(opt.lr(), 0.1);
  opt.set_lr(0.2);
  EXPECT_DOUBLE_EQ(opt.param_groups()[1].lr.value(), 0.2);
}

TEST(SGD, ZeroGrad) {
  Tensor p = param({1.0, 2.0});
  SGD opt({p}, {.lr = 0.1});
  set_grad(p, {3.0, 4.0});
  opt.zero_grad(/*set_to_none=*/false);
  ASSERT_TRUE(p.grad().defined());
  EXPECT_EQ(p.grad().to_vector<double>(), (std::vector<double>{0.0, 0.0}));
  opt.zero_grad();
  EXPECT_FALSE(p.grad().defined());
}

TEST(SGD, WorksWithAutograd) {
  // Minimise (w - 3)^2: converges to 3.
  Tensor w = param({0.0});
  SGD opt({w}, {.lr = 0.1, .momentum = 0.5});
  for (int i = 0; i < 100; ++i) {
    opt.zero_grad();
    Tensor loss = sum(square(w - 3.0));
    loss.backward();
    opt.step();
  }
  EXPECT_NEAR(w.item(), 3.0, 1e-6);
}

TEST(SGD, StateDictRoundTrip) {
  SGDOptions o{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true};
  Tensor a = param({1.0, -1.0}), b = param({0.5});
  SGD opt({a, b}, o);
  for (int k = 0; k < 2; ++k) {
    set_grad(a, {0.3 * k + 0.1, -0.2});
    set_grad(b, {0.7});
    opt.step();
  }
  OptimizerState saved = opt.state_dict();
  EXPECT_EQ(saved.tensors.size(), 2u);
  EXPECT_TRUE(saved.tensors.count("momentum_buffer.0"));
  EXPECT_EQ(saved.scalars.at("step_count"), 2.0);

  Tensor a2 = a.detach().clone().set_requires_grad(true), b2 = b.detach().clone().set_requires_grad(true);
  SGD restored({a2, b2}, {.lr = 1.0, .momentum = 0.9, .nesterov = true});
  restored.load_state_dict(saved);
  EXPECT_DOUBLE_EQ(restored.lr(), 0.1);
  EXPECT_EQ(restored.step_count(), 2);
  // The restored buffers are copies, not aliases.
  EXPECT_FALSE(restored.state_dict().tensors.at("momentum_buffer.0").data_ptr() ==
               saved.tensors.at("momentum_buffer.0").data_ptr());
  set_grad(a, {0.4, 0.4});
  set_grad(b, {-0.1});
  set_grad(a2, {0.4, 0.4});
  set_grad(b2, {-0.1});
  opt.step();
  restored.step();
  EXPECT_EQ(a.to_vector<double>(), a2.to_vector<double>());
  EXPECT_EQ(b.to_vector<double>(), b2.to_vector<double>());
}

TEST(SGD, CapturableStepsMatchHostStepsExactly) {
  // capturable decides each parameter's first step from a count on its device and reads
  // the lr from there; the result must be the host path's bit for bit: momentum with
  // dampening (where the first step differs), Nesterov, f32 and f64, a parameter that
  // misses steps, lr changes (set_lr, and an assignment to the group picked up at the
  // next step), and state-dict trips both ways mid-run.
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (bool nesterov : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + (nesterov ? " nesterov" : " dampening"));
      const SGDOptions o{.lr = 0.1, .momentum = 0.9, .dampening = nesterov ? 0.0 : 0.3, .weight_decay = 1e-3,
                         .nesterov = nesterov};
      auto make = [&](bool capturable, std::vector<Tensor>& params) {
        params = {tandem::testing::random_tensor({3, 4}, 1, dtype).set_requires_grad(true),
                  tandem::testing::random_tensor({7}, 2, dtype).set_requires_grad(true)};
        SGDOptions with = o;
        with.capturable = capturable;
        return std::make_unique<SGD>(params, with);
      };
      std::vector<Tensor> host_params, dev_params;
      auto host = make(false, host_params), captured = make(true, dev_params);
      EXPECT_TRUE(captured->capturable());
      EXPECT_FALSE(host->capturable());
      for (int k = 0; k < 6; ++k) {
        // The second parameter starts at step 2.
        tandem::testing::step_in_lockstep(host_params, *host, dev_params, *captured, k,
                                          [&](size_t i) { return i == 0 || k >= 2; });
        if (k == 0) {
          // Only the first parameter has a buffer; the count of the second stays at 0.
          EXPECT_EQ(captured->state_dict().tensors.size(), 1u);
          captured->load_state_dict(captured->state_dict());
        }
        if (k == 2) {
          // A load goes into the buffers that exist (a captured graph holds their addresses).
          const OptimizerState before = captured->state_dict();
          captured->load_state_dict(host->state_dict());
          EXPECT_EQ(captured->state_dict().tensors.at("momentum_buffer.0").data_ptr(),
                    before.tensors.at("momentum_buffer.0").data_ptr());
        }
        if (k == 3) host->load_state_dict(captured->state_dict());
        if (k == 1) {
          host->set_lr(0.05);
          captured->set_lr(0.05);
        }
        if (k == 4) {
          host->param_groups()[0].lr = 0.2;
          captured->param_groups()[0].lr = 0.2;
        }
      }
      const OptimizerState a = host->state_dict(), b = captured->state_dict();
      EXPECT_EQ(a.scalars, b.scalars);
      ASSERT_EQ(a.tensors.size(), b.tensors.size());
      for (const auto& [name, t] : a.tensors) EXPECT_EQ(b.tensors.at(name).to_vector<double>(), t.to_vector<double>());
    }
  }
}

TEST(Optimizer, SetGroupLrChecksItsArguments) {
  Tensor a = param({1.0, 2.0}), b = param({3.0});
  SGD opt(std::vector<ParamGroup>{{.params = {a}, .lr = std::nullopt, .weight_decay = std::nullopt},
                                  {.params = {b}, .lr = 0.5, .weight_decay = std::nullopt}},
          {.lr = 0.1, .capturable = true});
  opt.set_group_lr(1, 0.25);
  EXPECT_EQ(opt.param_groups()[0].lr, 0.1);
  EXPECT_EQ(opt.param_groups()[1].lr, 0.25);
  opt.set_lr(0.3);
  EXPECT_EQ(opt.param_groups()[1].lr, 0.3);
  tandem::testing::expect_invalid([&] { opt.set_group_lr(2, 0.1); }, {"group index below 2", "got 2"});
  tandem::testing::expect_invalid([&] { opt.set_group_lr(0, -1.0); }, {"lr >= 0", "-1"});
  tandem::testing::expect_invalid([&] { opt.set_lr(std::nan("")); }, {"lr >= 0", "nan"});
  EXPECT_EQ(opt.param_groups()[0].lr, 0.3);
  // A saved negative lr is one of the problems a load lists, and changes nothing.
  OptimizerState state = opt.state_dict();
  state.scalars["param_groups.1.lr"] = -0.5;
  tandem::testing::expect_invalid([&] { opt.load_state_dict(state); }, {"param_groups.1.lr: expected >= 0"});
  EXPECT_EQ(opt.param_groups()[1].lr, 0.3);
}

TEST(SGD, LoadStateDictListsEveryProblem) {
  Tensor a = param({1.0, 2.0});
  SGD opt({a}, {.lr = 0.1, .momentum = 0.9});
  OptimizerState bad;
  bad.tensors["momentum_buffer.0"] = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3});
  bad.tensors["momentum_buffer.7"] = Tensor::from_vector(std::vector<double>{1}, {1});
  bad.scalars["step_count"] = 3;
  try {
    opt.load_state_dict(bad);
    FAIL();
  } catch (const std::invalid_argument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("momentum_buffer.0: expected shape [2], got [3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected tensor momentum_buffer.7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing scalar param_groups.0.lr"), std::string::npos) << msg;
  }
  EXPECT_EQ(opt.step_count(), 0);
}

TEST(SGD, OptionErrors) {
  Tensor p = param({1.0});
  try {
    SGD opt({p}, {.lr = 0.1, .nesterov = true});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("momentum > 0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("got momentum 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SGD({p}, {.lr = -1.0}), std::invalid_argument);
  EXPECT_THROW(SGD({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}), std::invalid_argument);
  EXPECT_THROW(SGD({Tensor()}, {.lr = 0.1}), std::invalid_argument);
}

TEST(SGD, AParameterListedTwiceIsRefused) {
  // Stepped twice, and raced over by the multi-tensor kernels: PyTorch refuses it too.
  Tensor a = param({1.0, 2.0}), b = param({3.0});
  tandem::testing::expect_invalid([&] { SGD({a, b, a}, {.lr = 0.1}); },
                                  {"[Optimizer]", "each parameter once", "index 2 of group 0", "first at index 0 of group 0"});
  tandem::testing::expect_invalid(
      [&] {
        SGD(std::vector<ParamGroup>{{.params = {a}, .lr = std::nullopt, .weight_decay = std::nullopt},
                                    {.params = {b, a}, .lr = std::nullopt, .weight_decay = std::nullopt}},
            {.lr = 0.1});
      },
      {"index 1 of group 1", "first at index 0 of group 0"});
  Tensor same = a;  // another handle of the same tensor
  EXPECT_THROW(SGD({a, same}, {.lr = 0.1}), std::invalid_argument);
  EXPECT_NO_THROW(SGD({a, b}, {.lr = 0.1}));
}

TEST(SGD, UnsupportedDtypeNamesOpDeviceAndDtype) {
  Tensor p = param({1.0, 2.0});
  SGD opt({p}, {.lr = 0.1});
  Tensor g = Tensor::from_vector(std::vector<double>{1, 2}, {2});
  p.set_grad(g);  // matching: fine
  opt.step();
  // f16 parameters have no SGD kernel: the error names op, device and dtype.
  Tensor h = param({1.0}, DType::kF16);
  set_grad(h, {1.0});
  SGD half_opt({h}, {.lr = 0.1});
  try {
    half_opt.step();
    FAIL();
  } catch (const std::invalid_argument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("sgd"), std::string::npos) << msg;
    EXPECT_NE(msg.find("float16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cpu"), std::string::npos) << msg;
  }
}
