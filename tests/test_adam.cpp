// Tests of Adam, AdamW and clip_grad_norm on the CPU: updates against a scalar
// reference (f32 and f64, L2 and decoupled decay, AMSGrad), per-parameter step counts,
// parameter groups, state dict round trips and their errors, option errors, and the
// global gradient norm (2, inf, p), its clipping and its non-finite handling.
#include <cmath>
#include <memory>
#include <string>
#include <limits>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::optim;
using tandem::testing::all_close;
using tandem::testing::expect_invalid;
using tandem::testing::param;
using tandem::testing::random_tensor;
using tandem::testing::set_grad;

namespace {

/// torch.optim.Adam / AdamW on one scalar, in f64.
struct ScalarAdam {
  double p, m = 0, v = 0, v_max = 0;
  int64_t t = 0;
  void step(double g, const AdamOptions& o, bool decoupled) {
    ++t;
    if (decoupled) {
      p *= 1 - o.lr * o.weight_decay;
    } else {
      g += o.weight_decay * p;
    }
    m = o.betas[0] * m + (1 - o.betas[0]) * g;
    v = o.betas[1] * v + (1 - o.betas[1]) * g * g;
    v_max = std::max(v_max, v);
    const double v_hat = o.amsgrad ? v_max : v;
    const double bc1 = 1 - std::pow(o.betas[0], t), bc2 = 1 - std::pow(o.betas[1], t);
    p -= o.lr / bc1 * m / (std::sqrt(v_hat) / std::sqrt(bc2) + o.eps);
  }
};

void check_against_scalar(const AdamOptions& o, bool decoupled, DType dtype, double tol) {
  std::vector<double> init{1.0, -2.0, 0.25};
  std::vector<std::vector<double>> grads{{0.5, -1.0, 2.0}, {0.1, 0.3, -0.7}, {-0.4, 0.2, 0.9}, {0.05, -0.6, 0.1}};
  Tensor p = param(init, dtype);
  std::unique_ptr<Adam> opt;
  if (decoupled) {
    opt = std::make_unique<AdamW>(std::vector<Tensor>{p}, AdamWOptions{.lr = o.lr, .betas = o.betas, .eps = o.eps,
                                                                       .weight_decay = o.weight_decay,
                                                                       .amsgrad = o.amsgrad});
  } else {
    opt = std::make_unique<Adam>(std::vector<Tensor>{p}, o);
  }
  std::vector<ScalarAdam> ref;
  for (double v : init) ref.push_back({v});
  for (const auto& g : grads) {
    set_grad(p, g);
    opt->step();
    for (size_t i = 0; i < ref.size(); ++i) ref[i].step(g[i], o, decoupled);
  }
  auto got = p.to_vector<double>();
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i].p, tol * (1 + std::abs(ref[i].p))) << i;
  EXPECT_EQ(opt->step_count(), 4);
}

}  // namespace

TEST(Adam, MatchesScalarReferenceAcrossOptions) {
  const std::vector<AdamOptions> options{
      {},
      {.lr = 0.1, .betas = {0.8, 0.95}, .eps = 1e-6},
      {.lr = 0.05, .weight_decay = 0.1},
      {.lr = 0.05, .betas = {0.5, 0.9}, .weight_decay = 0.01, .amsgrad = true},
      {.lr = 0.01, .betas = {0.0, 0.0}, .eps = 0.0},
  };
  for (const AdamOptions& o : options) {
    for (bool decoupled : {false, true}) {
      SCOPED_TRACE(std::string(decoupled ? "AdamW" : "Adam") + " lr " + std::to_string(o.lr));
      check_against_scalar(o, decoupled, DType::kF64, 1e-13);
      check_against_scalar(o, decoupled, DType::kF32, 2e-6);
    }
  }
}

TEST(Adam, ManyTensorsSplitOverThreadsMatchTheScalarReference) {
  // 1.24M elements in four tensors, two of them over the 64Ki-element piece size and
  // together over the parallel threshold: every element must get its own tensor's lr,
  // weight decay and step count exactly once, whichever thread runs its piece.
  const std::vector<int64_t> sizes{70000, 3, 1100000, 65536};
  std::vector<Tensor> params;
  for (size_t i = 0; i < sizes.size(); ++i) params.push_back(random_tensor({sizes[i]}, 300 + i).set_requires_grad(true));
  AdamW opt(std::vector<ParamGroup>{{.params = {params[0], params[1]}, .lr = 0.01, .weight_decay = 0.1},
                                    {.params = {params[2], params[3]}, .lr = 0.03, .weight_decay = 0.02}},
            {.betas = {0.9, 0.95}});
  const AdamOptions first{.lr = 0.01, .betas = {0.9, 0.95}, .weight_decay = 0.1};
  const AdamOptions second{.lr = 0.03, .betas = {0.9, 0.95}, .weight_decay = 0.02};
  std::vector<std::vector<ScalarAdam>> ref(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i)
    for (double v : params[i].to_vector<double>()) ref[i].push_back({v});
  for (int step = 0; step < 2; ++step) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      // Tensor 1 skips the first step: its step count, and so its bias correction, lags.
      if (i == 1 && step == 0) continue;
      Tensor g = random_tensor({sizes[i]}, 400 + 10 * step + i);
      params[i].set_grad(g);
      const std::vector<double> gv = g.to_vector<double>();
      for (size_t k = 0; k < gv.size(); ++k) ref[i][k].step(gv[k], i < 2 ? first : second, true);
    }
    opt.step();
    opt.zero_grad();
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<double> want;
    for (const auto& r : ref[i]) want.push_back(r.p);
    EXPECT_TRUE(all_close(params[i], Tensor::from_vector(want, {sizes[i]}), 1e-13, 1e-13)) << "tensor " << i;
  }
}

TEST(Adam, FirstStepMovesEachElementByLr) {
  // With zero decay, m̂ = g and v̂ = g² on step 1: every element moves by lr·sign(g) (eps aside).
  Tensor p = param({1.0, -1.0, 3.0});
  Adam opt({p}, {.lr = 0.1, .eps = 0.0});
  set_grad(p, {2.0, -0.001, 50.0});
  opt.step();
  EXPECT_TRUE(all_close(p, Tensor::from_vector(std::vector<double>{0.9, -0.9, 2.9}, {3}), 1e-15, 1e-14));
}

TEST(Adam, AdamWDecaysParametersWithoutGradientInfluence) {
  // Decoupled decay: with a zero gradient the parameter only shrinks by (1 - lr·wd).
  Tensor p = param({2.0, -4.0});
  AdamW opt({p}, {.lr = 0.1, .weight_decay = 0.5});
  set_grad(p, {0.0, 0.0});
  opt.step();
  EXPECT_TRUE(all_close(p, Tensor::from_vector(std::vector<double>{1.9, -3.8}, {2}), 1e-15, 1e-14));
  EXPECT_DOUBLE_EQ(AdamW({param({1.0})}).param_groups()[0].weight_decay.value(), 1e-2);
  EXPECT_DOUBLE_EQ(Adam({param({1.0})}).param_groups()[0].weight_decay.value(), 0.0);
}

TEST(Adam, SkippedParametersKeepTheirOwnStepCount) {
  Tensor a = param({1.0, 2.0}), b = param({-1.0});
  Adam opt({a, b}, {.lr = 0.01});
  set_grad(a, {0.1, 0.2});
  opt.step();  // b has no gradient: untouched, no state
  EXPECT_EQ(b.to_vector<double>(), std::vector<double>{-1.0});
  EXPECT_EQ(opt.param_step(0), 1);
  EXPECT_EQ(opt.param_step(1), 0);
  OptimizerState st = opt.state_dict();
  EXPECT_TRUE(st.tensors.count("exp_avg.0"));
  EXPECT_FALSE(st.tensors.count("exp_avg.1"));
  EXPECT_FALSE(st.scalars.count("step.1"));
  set_grad(b, {0.5});
  opt.step();
  EXPECT_EQ(opt.param_step(0), 2);
  EXPECT_EQ(opt.param_step(1), 1);
  // b's first update is bias-corrected as a first step: it moves by lr.
  EXPECT_NEAR(b.item(), -1.01, 1e-9);
}

TEST(Adam, ParamGroupsHaveTheirOwnLrAndWeightDecay) {
  Tensor a = param({1.0}), b = param({1.0});
  AdamW opt(std::vector<ParamGroup>{{.params = {a}, .lr = 0.1, .weight_decay = std::nullopt},
                                    {.params = {b}, .lr = 0.2, .weight_decay = 0.5}},
            {.lr = 1.0, .weight_decay = 0.0});
  set_grad(a, {0.0});
  set_grad(b, {0.0});
  opt.step();
  EXPECT_DOUBLE_EQ(a.item(), 1.0);
  EXPECT_DOUBLE_EQ(b.item(), 1.0 - 0.2 * 0.5);
}

TEST(Adam, WorksWithAutograd) {
  Tensor w = param({0.0});
  Adam opt({w}, {.lr = 0.1});
  for (int i = 0; i < 300; ++i) {
    opt.zero_grad();
    Tensor d = w - 3.0;
    Tensor loss = (d * d).sum();
    loss.backward();
    opt.step();
  }
  EXPECT_NEAR(w.item(), 3.0, 1e-2);
}

TEST(Adam, StateDictRoundTripResumesTheSameSequence) {
  for (bool amsgrad : {false, true}) {
    SCOPED_TRACE(amsgrad ? "amsgrad" : "plain");
    AdamOptions o{.lr = 0.05, .betas = {0.8, 0.9}, .weight_decay = 1e-2, .amsgrad = amsgrad};
    Tensor a = random_tensor({3, 4}, 1).set_requires_grad(true), b = random_tensor({5}, 2).set_requires_grad(true);
    Adam opt({a, b}, o);
    for (int k = 0; k < 3; ++k) {
      a.set_grad(random_tensor({3, 4}, 10 + k));
      if (k != 0) b.set_grad(random_tensor({5}, 20 + k));  // b misses step 1
      opt.step();
    }
    OptimizerState saved = opt.state_dict();
    EXPECT_EQ(saved.scalars.at("step.0"), 3.0);
    EXPECT_EQ(saved.scalars.at("step.1"), 2.0);
    EXPECT_EQ(saved.tensors.count("max_exp_avg_sq.0"), amsgrad ? 1u : 0u);

    Tensor a2 = a.detach().clone().set_requires_grad(true), b2 = b.detach().clone().set_requires_grad(true);
    Adam restored({a2, b2}, {.lr = 1.0, .betas = {0.8, 0.9}, .weight_decay = 1e-2, .amsgrad = amsgrad});
    restored.load_state_dict(saved);
    EXPECT_DOUBLE_EQ(restored.lr(), 0.05);
    EXPECT_EQ(restored.param_step(1), 2);
    for (int k = 3; k < 6; ++k) {
      for (Tensor* p : {&a, &a2}) p->set_grad(random_tensor({3, 4}, 10 + k));
      for (Tensor* p : {&b, &b2}) p->set_grad(random_tensor({5}, 20 + k));
      opt.step();
      restored.step();
      EXPECT_EQ(a.to_vector<double>(), a2.to_vector<double>()) << "step " << k;
      EXPECT_EQ(b.to_vector<double>(), b2.to_vector<double>()) << "step " << k;
    }
  }
}

TEST(Adam, CapturableStepsMatchHostStepsExactly) {
  // capturable keeps each step count and each group's lr in tensors that the kernels
  // read (and the counts increment); the result must be the host path's, bit for bit,
  // including a parameter that misses steps, two groups under a StepLR schedule, both
  // decays (AdamW's factor 1 - lr·wd from the device lr), AMSGrad, f32 and f64, and a
  // state-dict trip.
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (bool decoupled : {false, true}) {
      for (bool amsgrad : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + (decoupled ? " AdamW" : " Adam") + (amsgrad ? " amsgrad" : ""));
        auto make = [&](bool capturable, std::vector<Tensor>& params) {
          params = {random_tensor({3, 4}, 1, dtype).set_requires_grad(true),
                    random_tensor({7}, 2, dtype).set_requires_grad(true)};
          std::vector<ParamGroup> groups{{.params = {params[0]}, .lr = std::nullopt, .weight_decay = std::nullopt},
                                         {.params = {params[1]}, .lr = 0.02, .weight_decay = 0.3}};
          const AdamOptions o{.lr = 0.05, .betas = {0.8, 0.9}, .weight_decay = 1e-2, .amsgrad = amsgrad,
                              .capturable = capturable};
          if (decoupled) {
            return std::unique_ptr<Adam>(new AdamW(groups, {.lr = o.lr, .betas = o.betas, .weight_decay = o.weight_decay,
                                                            .amsgrad = amsgrad, .capturable = capturable}));
          }
          return std::make_unique<Adam>(groups, o);
        };
        std::vector<Tensor> host_params, dev_params;
        auto host = make(false, host_params), captured = make(true, dev_params);
        StepLR host_schedule(*host, 2, 0.5), captured_schedule(*captured, 2, 0.5);
        for (int k = 0; k < 6; ++k) {
          // The second parameter misses the first step.
          tandem::testing::step_in_lockstep(host_params, *host, dev_params, *captured, k,
                                            [&](size_t i) { return i == 0 || k > 0; });
          if (k == 2) captured->load_state_dict(captured->state_dict());  // counts written back in place
          host_schedule.step();
          captured_schedule.step();
        }
        EXPECT_EQ(captured->param_groups()[1].lr, 0.02 * 0.125);
        EXPECT_EQ(captured->param_step(0), 6);
        EXPECT_EQ(captured->param_step(1), 5);
        const OptimizerState a = host->state_dict(), b = captured->state_dict();
        EXPECT_EQ(a.scalars, b.scalars);
      }
    }
  }
}

TEST(Adam, LoadStateDictListsEveryProblem) {
  Tensor a = param({1.0, 2.0}), b = param({3.0});
  Adam opt({a, b}, {.lr = 0.1});
  set_grad(a, {1.0, 1.0});
  set_grad(b, {1.0});
  opt.step();
  OptimizerState good = opt.state_dict();

  OptimizerState bad = good;
  bad.scalars.erase("step.0");  // moments without a step count
  bad.scalars["step.1"] = 0.5;  // not a step count
  bad.scalars["step.9"] = 1;    // no such parameter
  bad.tensors.erase("exp_avg_sq.1");
  expect_invalid([&] { opt.load_state_dict(bad); },
                 {"[Adam::load_state_dict]", "missing scalar step.0", "step.1: expected a step count >= 1, got 0.5",
                  "unexpected scalar step.9"});
  OptimizerState missing = good;
  missing.tensors.erase("exp_avg_sq.1");
  expect_invalid([&] { opt.load_state_dict(missing); }, {"missing tensor exp_avg_sq.1"});
  // Shapes are the base class's check.
  OptimizerState shapes = good;
  shapes.tensors["exp_avg.0"] = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3});
  expect_invalid([&] { opt.load_state_dict(shapes); }, {"exp_avg.0: expected shape [2], got [3]"});
  // AMSGrad state does not load into a plain Adam.
  Tensor c = param({1.0});
  Adam ams({c}, {.amsgrad = true});
  set_grad(c, {1.0});
  ams.step();
  Adam plain({param({1.0})});
  expect_invalid([&] { plain.load_state_dict(ams.state_dict()); }, {"unexpected tensor max_exp_avg_sq.0"});
  // Nothing changed by the failed loads.
  EXPECT_EQ(opt.param_step(0), 1);
  opt.load_state_dict(good);
  EXPECT_EQ(opt.param_step(1), 1);
}

TEST(Adam, OptionErrors) {
  Tensor p = param({1.0});
  expect_invalid([&] { Adam({p}, {.lr = -1e-3}); }, {"[Adam]", "lr >= 0", "got -0.001"});
  expect_invalid([&] { Adam({p}, {.betas = {1.0, 0.999}}); }, {"[Adam]", "betas[0] in [0, 1)", "got 1"});
  expect_invalid([&] { Adam({p}, {.betas = {0.9, -0.1}}); }, {"betas[1] in [0, 1)", "got -0.1"});
  expect_invalid([&] { Adam({p}, {.eps = -1e-8}); }, {"eps >= 0", "got -1e-08"});
  expect_invalid([&] { Adam({p}, {.weight_decay = -0.1}); }, {"weight_decay >= 0", "got -0.1"});
  expect_invalid([&] { AdamW({p}, {.betas = {0.9, 1.5}}); }, {"[AdamW]", "betas[1] in [0, 1)", "got 1.5"});
  expect_invalid([&] { AdamW({p}, {.lr = std::nan("")}); }, {"[AdamW]", "lr >= 0", "got nan"});
  EXPECT_THROW(Adam({Tensor()}), std::invalid_argument);
  // A group's own lr is checked too.
  EXPECT_THROW(Adam(std::vector<ParamGroup>{{.params = {p}, .lr = -1.0, .weight_decay = std::nullopt}}),
               std::invalid_argument);
}

TEST(Adam, UnsupportedDtypeNamesOpDeviceAndDtype) {
  // (Gradients of another dtype, shape or device are refused by set_grad already.)
  Tensor h = param({1.0}, DType::kF16);
  set_grad(h, {1.0});
  Adam half_opt({h});
  try {
    half_opt.step();
    FAIL();
  } catch (const std::invalid_argument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("adam"), std::string::npos) << msg;
    EXPECT_NE(msg.find("float16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cpu"), std::string::npos) << msg;
  }
}

// ---- clip_grad_norm -------------------------------------------------------------------

namespace {

std::vector<Tensor> params_with_grads(DType dtype, uint64_t seed) {
  std::vector<Tensor> out;
  for (const Shape& s : std::vector<Shape>{{3, 4}, {7}, {2, 2, 2}}) {
    Tensor p = random_tensor(s, seed, dtype).set_requires_grad(true);
    p.set_grad(random_tensor(s, seed + 100, dtype));
    out.push_back(p);
    ++seed;
  }
  return out;
}

double reference_norm(const std::vector<Tensor>& params, double p) {
  double acc = 0;
  for (const Tensor& t : params) {
    for (double v : t.grad().to_vector<double>()) acc = std::isinf(p) ? std::max(acc, std::abs(v)) : acc + std::pow(std::abs(v), p);
  }
  return std::isinf(p) ? acc : std::pow(acc, 1.0 / p);
}

}  // namespace

TEST(ClipGradNorm, NormsMatchReferenceAndClipScalesEveryGradient) {
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dtype : {DType::kF64, DType::kF32, DType::kBF16}) {
    for (double p : {2.0, 1.0, 3.5, inf}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " p=" + std::to_string(p));
      const double tol = dtype == DType::kF64 ? 1e-13 : dtype == DType::kF32 ? 1e-6 : 1e-2;
      std::vector<Tensor> params = params_with_grads(dtype, 5);
      std::vector<Tensor> before;
      for (const Tensor& t : params) before.push_back(t.grad().to(DType::kF64).clone());
      const double want = reference_norm(params, p);
      // Not clipped: max_norm above the norm leaves the gradients as they were.
      EXPECT_NEAR(clip_grad_norm(params, want * 2, p), want, 1e-12 * want);
      for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(all_close(params[i].grad().to(DType::kF64), before[i], 0, 0));
      // Clipped to half: every gradient scaled by max_norm / (norm + 1e-6).
      const double max_norm = want / 2;
      EXPECT_NEAR(clip_grad_norm(params, max_norm, p), want, 1e-12 * want);
      const double coef = max_norm / (want + 1e-6);
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_TRUE(all_close(params[i].grad().to(DType::kF64), before[i] * coef, tol, tol)) << i;
      }
      EXPECT_NEAR(reference_norm(params, p), want * coef, tol * 10 * max_norm);
    }
  }
}

TEST(ClipGradNorm, LargeTensorUsesTheParallelPathAndMixedDtypesCombine) {
  // Above kParallelMinElements (2^20), plus an f32 tensor: two dtype groups combine.
  Tensor big = random_tensor({(int64_t{1} << 20) + 3}, 1).set_requires_grad(true);
  big.set_grad(random_tensor(big.shape(), 2));
  Tensor small = random_tensor({10}, 3, DType::kF32).set_requires_grad(true);
  small.set_grad(random_tensor({10}, 4, DType::kF32));
  std::vector<Tensor> params{big, small};
  double want2 = 0, want_inf = 0;
  for (const Tensor& t : params) {
    for (double v : t.grad().to_vector<double>()) {
      want2 += v * v;
      want_inf = std::max(want_inf, std::abs(v));
    }
  }
  EXPECT_NEAR(clip_grad_norm(params, 1e9), std::sqrt(want2), 1e-9 * std::sqrt(want2));
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 1e9, std::numeric_limits<double>::infinity()), want_inf);
}

TEST(ClipGradNorm, NoGradientsAndZeroMaxNorm) {
  Tensor p = param({1.0, 2.0});
  EXPECT_EQ(clip_grad_norm({p}, 1.0), 0.0);
  EXPECT_EQ(clip_grad_norm({}, 1.0), 0.0);
  set_grad(p, {3.0, 4.0});
  EXPECT_DOUBLE_EQ(clip_grad_norm({p}, 0.0), 5.0);
  EXPECT_EQ(p.grad().to_vector<double>(), (std::vector<double>{0.0, 0.0}));
}

TEST(ClipGradNorm, NonFiniteNorm) {
  Tensor p = param({1.0, 2.0});
  set_grad(p, {std::nan(""), 1.0});
  try {
    clip_grad_norm({p}, 1.0, 2.0, /*error_if_nonfinite=*/true);
    FAIL();
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("[clip_grad_norm] expected a finite total norm of order 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("got nan"), std::string::npos) << msg;
  }
  EXPECT_EQ(p.grad().to_vector<double>()[1], 1.0);  // untouched
  set_grad(p, {std::numeric_limits<double>::infinity(), 1.0});
  try {
    clip_grad_norm({p}, 1.0, std::numeric_limits<double>::infinity(), true);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("order inf of the gradients, got inf"), std::string::npos) << e.what();
  }
  // Without the flag, as PyTorch: a NaN norm makes every gradient NaN.
  set_grad(p, {std::nan(""), 1.0});
  EXPECT_TRUE(std::isnan(clip_grad_norm({p}, 1.0)));
  EXPECT_TRUE(std::isnan(p.grad().to_vector<double>()[1]));
  // The max propagates NaN too.
  set_grad(p, {1.0, std::nan("")});
  EXPECT_TRUE(std::isnan(clip_grad_norm({p}, 1.0, std::numeric_limits<double>::infinity())));
}

TEST(ClipGradNormOnDevice, SameNormsAndGradientsAsClipGradNorm) {
  // The device variant keeps the accumulators, norm and factor in tensors; its values
  // must be clip_grad_norm's exactly: every order, mixed dtypes, clipped or not, NaN.
  const double inf = std::numeric_limits<double>::infinity();
  for (double p : {2.0, 1.0, 3.5, inf}) {
    for (double fraction : {2.0, 0.5}) {
      SCOPED_TRACE("p=" + std::to_string(p) + " max_norm = norm * " + std::to_string(fraction));
      std::vector<Tensor> a = params_with_grads(DType::kF32, 5), b = params_with_grads(DType::kF32, 5);
      a.push_back(random_tensor({33}, 7, DType::kBF16).set_requires_grad(true));
      a.back().set_grad(random_tensor({33}, 8, DType::kBF16));
      b.push_back(a.back().detach().clone().set_requires_grad(true));
      b.back().set_grad(a.back().grad().clone());
      const double max_norm = reference_norm(a, p) * fraction;
      const double want = clip_grad_norm(a, max_norm, p);
      const Tensor got = clip_grad_norm_on_device(b, max_norm, p);
      EXPECT_EQ(got.dim(), 0);
      EXPECT_EQ(got.dtype(), DType::kF64);
      EXPECT_EQ(got.item(), want);
      for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(all_close(b[i].grad(), a[i].grad(), 0, 0)) << i;
    }
  }
  Tensor q = param({1.0, 2.0});
  EXPECT_EQ(clip_grad_norm_on_device({q}, 1.0).item(), 0.0) << "no gradients";
  EXPECT_EQ(clip_grad_norm_on_device({}, 1.0).item(), 0.0);
  set_grad(q, {std::nan(""), 1.0});
  EXPECT_TRUE(std::isnan(clip_grad_norm_on_device({q}, 1.0).item()));
  EXPECT_TRUE(std::isnan(q.grad().to_vector<double>()[1])) << "a NaN norm scales every gradient to NaN";
  expect_invalid([&] { clip_grad_norm_on_device({q}, -1.0); }, {"[clip_grad_norm]", "max_norm >= 0", "got -1"});
  expect_invalid([&] { clip_grad_norm_on_device({q}, 1.0, 0.0); }, {"norm_type > 0 (or infinity)", "got 0"});
}

TEST(ClipGradNorm, ArgumentErrors) {
  Tensor p = param({1.0});
  set_grad(p, {1.0});
  expect_invalid([&] { clip_grad_norm({p}, -1.0); }, {"[clip_grad_norm]", "max_norm >= 0", "got -1"});
  expect_invalid([&] { clip_grad_norm({p}, 1.0, 0.0); }, {"norm_type > 0 (or infinity)", "got 0"});
  expect_invalid([&] { clip_grad_norm({p}, 1.0, -std::numeric_limits<double>::infinity()); }, {"got -inf"});
  expect_invalid([&] { clip_grad_norm({p, Tensor()}, 1.0); }, {"clip_grad_norm", "undefined"});
}
