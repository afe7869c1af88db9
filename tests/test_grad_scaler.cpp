// GradScaler: the scale trajectory over scripted finite / inf / NaN iterations against
// PyTorch's rule (tests/fixtures/grad_scaler.json), unscaling, skipped steps that leave
// parameters and optimizer state untouched, clip-after-unscale, state round trip,
// pass-through when disabled, errors, the capturable scaler (state and skips on the
// device) against the host one, the CPU unscale kernel, and the same skip decision on
// every rank under DDP (local threads and gloo worker processes, 2 and 3 ranks).
#include <chrono>
#include <functional>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "comm/ddp.h"
#include "comm/local.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/cpu/amp.h"
#include "layers/models/mlp.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/grad_scaler.h"
#include "optim/sgd.h"
#include "tandem/config.h"
#include "ddp_test_support.h"
#include "test_util.h"

namespace tandem::optim {
namespace {

using namespace std::chrono_literals;
using tandem::testing::all_close;
using tandem::testing::expect_invalid;
using tandem::testing::random_tensor;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Sets p's gradient to `g`·scale, with element 1 replaced by inf or NaN for event 'I' / 'N'.
void set_scaled_grad(Tensor& p, const Tensor& g, double scale, char event) {
  Tensor grad = mul(g, scale).to(DType::kF64);
  if (event == 'I') grad.narrow(0, 1, 1).fill_(kInf);
  if (event == 'N') grad.narrow(0, 1, 1).fill_(kNaN);
  p.set_grad(grad.to(p.dtype()));
}

/// Host f64 copies of every parameter.
std::vector<Tensor> copies(const std::vector<Tensor>& params) {
  std::vector<Tensor> out;
  for (const Tensor& p : params) out.push_back(p.detach().to(DType::kF64).clone());
  return out;
}

void expect_bitwise_equal(const std::vector<Tensor>& got, const std::vector<Tensor>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(all_close(got[i], want[i], 0.0, 0.0)) << what << " tensor " << i;
}

// ---- scale trajectory against PyTorch's rule ------------------------------------------

TEST(GradScalerFixture, ScaleTrajectoryMatchesPyTorchRule) {
  const nlohmann::json fixture = tandem::testing::load_fixture("grad_scaler.json");
  ASSERT_FALSE(fixture["cases"].empty());
  for (const auto& c : fixture["cases"]) {
    const auto& o = c["options"];
    const GradScalerOptions options{.init_scale = o["init_scale"].get<double>(),
                                    .growth_factor = o["growth_factor"].get<double>(),
                                    .backoff_factor = o["backoff_factor"].get<double>(),
                                    .growth_interval = o["growth_interval"].get<int64_t>()};
    const std::string events = c["events"].get<std::string>();
    const std::vector<double> scales = c["scale_after_update"].get<std::vector<double>>();
    const std::vector<int64_t> trackers = c["growth_tracker_after_update"].get<std::vector<int64_t>>();
    ASSERT_EQ(scales.size(), events.size());
    SCOPED_TRACE("init_scale " + std::to_string(options.init_scale) + ", events " + events.substr(0, 40));

    GradScaler scaler(options);
    Tensor p = random_tensor({3}, 1, DType::kF32).set_requires_grad(true);
    SGD opt({p}, {.lr = 0.1, .momentum = 0.9});
    const Tensor g = random_tensor({3}, 2, DType::kF32);
    int64_t skipped = 0;
    for (size_t i = 0; i < events.size(); ++i) {
      // The trajectory depends only on which iterations hold an inf/NaN, not on the
      // gradient values, so they are left unscaled (3e38·g would overflow f32).
      set_scaled_grad(p, g, 1.0, events[i]);
      const bool stepped = scaler.step(opt);
      EXPECT_EQ(stepped, events[i] == 'F') << "iteration " << i;
      skipped += events[i] == 'F' ? 0 : 1;
      scaler.update();
      ASSERT_EQ(scaler.get_scale(), scales[i]) << "iteration " << i << " event " << events[i];
      ASSERT_EQ(scaler.growth_tracker(), trackers[i]) << "iteration " << i;
    }
    EXPECT_EQ(scaler.skipped_steps(), skipped);
  }
}

// ---- scaling and unscaling ----------------------------------------------------------------

TEST(GradScaler, ScaledBackwardGivesScaledGradientsAndUnscaleRestoresThem) {
  // Two dtypes in one optimizer: two kernel groups sharing the CPU's found-inf flag.
  Tensor a = random_tensor({4, 3}, 3, DType::kF32).set_requires_grad(true);
  Tensor b = random_tensor({5}, 4, DType::kF64).set_requires_grad(true);
  const Tensor xa = random_tensor({4, 3}, 5, DType::kF32), xb = random_tensor({5}, 6, DType::kF64);
  SGD opt({a, b}, {.lr = 0.1});
  GradScaler scaler;
  Tensor loss = add(mul(a, xa).sum().to(DType::kF64), mul(b, xb).sum());
  Tensor scaled = scaler.scale(loss);
  EXPECT_EQ(scaled.item(), loss.item() * 65536.0);
  scaled.backward();
  // 2^16 is a power of two: scaling and unscaling are exact.
  EXPECT_TRUE(all_close(a.grad(), mul(xa, 65536.0), 0.0, 0.0));
  EXPECT_TRUE(all_close(b.grad(), mul(xb, 65536.0), 0.0, 0.0));
  scaler.unscale(opt);
  EXPECT_TRUE(all_close(a.grad(), xa, 0.0, 0.0));
  EXPECT_TRUE(all_close(b.grad(), xb, 0.0, 0.0));
  const std::vector<Tensor> flags = scaler.found_inf_flags(opt);
  ASSERT_EQ(flags.size(), 1u) << "one flag per device";
  EXPECT_EQ(flags[0].item(), 0.0);
  EXPECT_TRUE(scaler.step(opt));
  scaler.update();
  EXPECT_TRUE(scaler.found_inf_flags(opt).empty());
}

TEST(GradScaler, TrainingWithTheScalerEqualsPlainTrainingBitForBit) {
  using comm::ddp_test::Kind;
  auto plain = comm::ddp_test::make_model(Kind::kMLP, 7);
  auto scaled = comm::ddp_test::make_model(Kind::kMLP, 7);
  SGD plain_opt(plain->parameters(), {.lr = 0.1, .momentum = 0.9});
  SGD scaled_opt(scaled->parameters(), {.lr = 0.1, .momentum = 0.9});
  GradScaler scaler({.growth_interval = 2});  // the scale grows twice on the way
  for (int s = 0; s < 5; ++s) {
    auto batch = comm::ddp_test::global_batch(Kind::kMLP, s, 8);
    plain_opt.zero_grad();
    cross_entropy(plain->forward(batch.x), batch.y).backward();
    plain_opt.step();
    scaled_opt.zero_grad();
    scaler.scale(cross_entropy(scaled->forward(batch.x), batch.y)).backward();
    EXPECT_TRUE(scaler.step(scaled_opt));
    scaler.update();
  }
  EXPECT_EQ(scaler.get_scale(), 65536.0 * 4);
  // Power-of-two scales commute with rounding, so the two runs agree exactly.
  expect_bitwise_equal(copies(scaled->parameters()), copies(plain->parameters()), "MLP");
}

// ---- skipped steps ------------------------------------------------------------------------

void check_skip_leaves_state(const std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>)>& make,
                             const std::string& what) {
  SCOPED_TRACE(what);
  Tensor w = random_tensor({4, 3}, 10, DType::kF32).set_requires_grad(true);
  Tensor v = random_tensor({6}, 11, DType::kF32).set_requires_grad(true);
  std::unique_ptr<Optimizer> opt = make({w, v});
  GradScaler scaler;
  const Tensor gw = random_tensor({4, 3}, 12, DType::kF32), gv = random_tensor({6}, 13, DType::kF32);

  auto iterate = [&](char event) {
    opt->zero_grad();
    w.set_grad(mul(gw, scaler.get_scale()));
    set_scaled_grad(v, gv, scaler.get_scale(), event);
    const bool stepped = scaler.step(*opt);
    scaler.update();
    return stepped;
  };
  ASSERT_TRUE(iterate('F'));  // creates the momentum / moments
  for (char event : {'I', 'N'}) {
    const std::vector<Tensor> before = copies({w, v});
    const OptimizerState state = opt->state_dict();
    const int64_t steps = opt->step_count();
    EXPECT_FALSE(iterate(event)) << event;
    expect_bitwise_equal(copies({w, v}), before, std::string("parameters after a skipped ") + event);
    const OptimizerState after = opt->state_dict();
    EXPECT_EQ(after.scalars, state.scalars);
    ASSERT_EQ(after.tensors.size(), state.tensors.size());
    for (const auto& [name, t] : state.tensors) {
      EXPECT_TRUE(all_close(after.tensors.at(name), t, 0.0, 0.0)) << name << " after a skipped " << event;
    }
    EXPECT_EQ(opt->step_count(), steps);
  }
  EXPECT_EQ(scaler.skipped_steps(), 2);
  EXPECT_EQ(scaler.get_scale(), 65536.0 / 4);
  // The next finite iteration steps with unscaled gradients again.
  const std::vector<Tensor> before = copies({w, v});
  EXPECT_TRUE(iterate('F'));
  EXPECT_FALSE(all_close(copies({w})[0], before[0], 0.0, 0.0));
}

TEST(GradScaler, SkippedStepLeavesParametersAndSGDMomentumUnchanged) {
  check_skip_leaves_state(
      [](std::vector<Tensor> p) { return std::make_unique<SGD>(std::move(p), SGDOptions{.lr = 0.1, .momentum = 0.9}); },
      "SGD");
}

TEST(GradScaler, SkippedStepLeavesParametersAndAdamMomentsAndStepCountsUnchanged) {
  check_skip_leaves_state([](std::vector<Tensor> p) { return std::make_unique<AdamW>(std::move(p)); }, "AdamW");
}

TEST(GradScaler, OneOptimizerWithAnInfSkipsTheOtherStepsAndTheScaleBacksOff) {
  Tensor a = random_tensor({3}, 20, DType::kF32).set_requires_grad(true);
  Tensor b = random_tensor({3}, 21, DType::kF32).set_requires_grad(true);
  SGD opt_a({a}, {.lr = 0.1}), opt_b({b}, {.lr = 0.1});
  GradScaler scaler;
  set_scaled_grad(a, random_tensor({3}, 22, DType::kF32), 65536.0, 'F');
  set_scaled_grad(b, random_tensor({3}, 23, DType::kF32), 65536.0, 'I');
  EXPECT_TRUE(scaler.step(opt_a));
  EXPECT_FALSE(scaler.step(opt_b));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 32768.0);
  EXPECT_EQ(scaler.skipped_steps(), 1);
}

// ---- clipping after unscale ---------------------------------------------------------------

TEST(GradScaler, ClipGradNormAfterUnscaleSeesTheTrueGradients) {
  Tensor w = random_tensor({5, 4}, 30, DType::kF32).set_requires_grad(true);
  Tensor v = random_tensor({7}, 31, DType::kF32).set_requires_grad(true);
  Tensor w_ref = w.detach().clone().set_requires_grad(true), v_ref = v.detach().clone().set_requires_grad(true);
  const Tensor gw = random_tensor({5, 4}, 32, DType::kF32), gv = random_tensor({7}, 33, DType::kF32);
  SGD opt({w, v}, {.lr = 0.5}), ref_opt({w_ref, v_ref}, {.lr = 0.5});
  GradScaler scaler;

  w.set_grad(mul(gw, scaler.get_scale()));
  v.set_grad(mul(gv, scaler.get_scale()));
  scaler.unscale(opt);
  const double norm = clip_grad_norm({w, v}, 0.5);
  EXPECT_TRUE(scaler.step(opt));  // uses the unscaled, clipped gradients; no second unscale
  scaler.update();

  w_ref.set_grad(gw.clone());
  v_ref.set_grad(gv.clone());
  const double ref_norm = clip_grad_norm({w_ref, v_ref}, 0.5);
  ref_opt.step();
  EXPECT_EQ(norm, ref_norm);
  EXPECT_GT(norm, 0.5) << "the test must actually clip";
  expect_bitwise_equal(copies({w, v}), copies({w_ref, v_ref}), "parameters");
}

// ---- state ------------------------------------------------------------------------------------

TEST(GradScaler, StateDictRoundTripContinuesTheSameTrajectory) {
  const GradScalerOptions options{.init_scale = 1000.0, .growth_factor = 1.7, .backoff_factor = 0.3,
                                  .growth_interval = 2};
  GradScaler first(options);
  Tensor p = random_tensor({3}, 40, DType::kF32).set_requires_grad(true);
  SGD opt({p}, {.lr = 0.01});
  const Tensor g = random_tensor({3}, 41, DType::kF32);
  auto iterate = [&](GradScaler& scaler, char event) {
    set_scaled_grad(p, g, 1.0, event);
    scaler.step(opt);
    scaler.update();
  };
  for (char e : std::string("FFFNF")) iterate(first, e);
  const GradScalerState saved = first.state_dict();
  EXPECT_EQ(saved.at("growth_tracker"), 1.0);
  EXPECT_EQ(saved.at("skipped_steps"), 1.0);
  EXPECT_EQ(saved.at("growth_interval"), 2.0);
  EXPECT_EQ(saved.at("growth_factor"), 1.7);
  EXPECT_EQ(saved.at("backoff_factor"), 0.3);
  EXPECT_EQ(saved.at("scale"), first.get_scale());

  GradScaler second;  // defaults: everything comes from the state
  second.load_state_dict(saved);
  EXPECT_EQ(second.state_dict(), saved);
  EXPECT_EQ(second.options().growth_interval, 2);
  for (char e : std::string("FFIFFF")) {
    iterate(first, e);
    iterate(second, e);
    EXPECT_EQ(second.get_scale(), first.get_scale());
    EXPECT_EQ(second.growth_tracker(), first.growth_tracker());
  }
  EXPECT_EQ(second.skipped_steps(), 2);
}

TEST(GradScaler, LoadStateDictRejectsBadStatesNamingEveryProblem) {
  GradScaler scaler;
  expect_invalid([&] { scaler.load_state_dict({}); }, {"[GradScaler::load_state_dict] expected", "got an empty state"});
  GradScalerState state = GradScaler().state_dict();
  state.erase("scale");
  state["growth_tracker"] = -1.0;
  state["bogus"] = 1.0;
  expect_invalid([&] { scaler.load_state_dict(state); },
                 {"[GradScaler::load_state_dict] expected", "missing scale", "unexpected bogus", "growth_tracker = -1"});
  state = GradScaler().state_dict();
  state["backoff_factor"] = 2.0;
  expect_invalid([&] { scaler.load_state_dict(state); }, {"backoff_factor in (0, 1)", "got 2"});
  EXPECT_EQ(scaler.get_scale(), 65536.0) << "a failed load changes nothing";
}

// ---- disabled --------------------------------------------------------------------------

TEST(GradScaler, DisabledIsAPassThrough) {
  GradScaler scaler({.enabled = false});
  EXPECT_FALSE(scaler.is_enabled());
  Tensor p = random_tensor({3}, 50, DType::kF32).set_requires_grad(true);
  SGD opt({p}, {.lr = 0.1});
  Tensor loss = mul(p, p).sum();
  EXPECT_TRUE(scaler.scale(loss).is_same(loss));
  EXPECT_EQ(scaler.get_scale(), 1.0);
  set_scaled_grad(p, random_tensor({3}, 51, DType::kF32), 1.0, 'I');
  const Tensor grad_before = p.grad().clone();
  scaler.unscale(opt);
  scaler.unscale(opt);  // no stage checks either
  EXPECT_TRUE(all_close(p.grad().narrow(0, 0, 1), grad_before.narrow(0, 0, 1), 0.0, 0.0));
  EXPECT_TRUE(scaler.step(opt)) << "steps unconditionally, as optimizer.step()";
  EXPECT_EQ(opt.step_count(), 1);
  scaler.update();
  scaler.update();
  EXPECT_EQ(scaler.skipped_steps(), 0);
  EXPECT_TRUE(scaler.state_dict().empty());
  scaler.load_state_dict({});  // a no-op
}

// ---- errors ------------------------------------------------------------------------------

TEST(GradScalerErrors, BadOptions) {
  expect_invalid([] { GradScaler s({.init_scale = 0.0}); }, {"[GradScaler] expected init_scale finite and > 0", "got 0"});
  expect_invalid([] { GradScaler s({.init_scale = kInf}); }, {"init_scale finite and > 0", "got inf"});
  expect_invalid([] { GradScaler s({.growth_factor = 1.0}); }, {"[GradScaler] expected growth_factor > 1", "got 1"});
  expect_invalid([] { GradScaler s({.backoff_factor = 1.0}); }, {"expected backoff_factor in (0, 1)", "got 1"});
  expect_invalid([] { GradScaler s({.backoff_factor = 0.0}); }, {"expected backoff_factor in (0, 1)", "got 0"});
  expect_invalid([] { GradScaler s({.growth_interval = 0}); }, {"expected growth_interval >= 1", "got 0"});
}

TEST(GradScalerErrors, CallsOutOfOrderBeforeUpdate) {
  Tensor p = random_tensor({3}, 60, DType::kF32).set_requires_grad(true);
  SGD opt({p}, {.lr = 0.1});
  GradScaler scaler;
  expect_invalid([&] { scaler.update(); },
                 {"[GradScaler::update] expected step(optimizer) (or unscale(optimizer)) since the last update()",
                  "got none"});
  expect_invalid([&] { scaler.step(opt); },
                 {"[GradScaler::step] expected at least one parameter of the optimizer with a gradient", "got none"});
  scaler = GradScaler();
  set_scaled_grad(p, random_tensor({3}, 61, DType::kF32), 65536.0, 'F');
  scaler.unscale(opt);
  expect_invalid([&] { scaler.unscale(opt); },
                 {"[GradScaler::unscale] expected one unscale(optimizer) per update()", "got a second call"});
  EXPECT_TRUE(scaler.step(opt));
  expect_invalid([&] { scaler.step(opt); },
                 {"[GradScaler::step] expected one step(optimizer) per update()", "got a second call"});
  expect_invalid([&] { scaler.unscale(opt); },
                 {"[GradScaler::unscale] expected unscale(optimizer) before step(optimizer)", "got a call after step()"});
  scaler.update();
  set_scaled_grad(p, random_tensor({3}, 61, DType::kF32), 65536.0, 'F');
  EXPECT_TRUE(scaler.step(opt)) << "update() starts a new iteration";
  scaler.update();
  expect_invalid([&] { scaler.update(); }, {"[GradScaler::update] expected", "got none"});
  expect_invalid([&] { (void)scaler.scale(Tensor()); }, {"[GradScaler::scale]", "loss"});
}

// ---- capturable: state and decisions on the device ----------------------------------------

using MakeOptimizer = std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>, bool capturable)>;

/// Scripted iterations with a host scaler and a capturable one side by side, each with
/// its own copy of the parameters and optimizer: every step, the scale, tracker and
/// skipped count, and the optimizer state must agree bit for bit.
void check_capturable_matches_host(const MakeOptimizer& make, const std::string& what) {
  SCOPED_TRACE(what);
  const std::vector<Shape> shapes = {{4, 3}, {6}, {5}};
  std::vector<Tensor> host_p, cap_p;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Tensor init = random_tensor(shapes[i], 80 + i, DType::kF32);
    host_p.push_back(init.clone().set_requires_grad(true));
    cap_p.push_back(init.clone().set_requires_grad(true));
  }
  std::unique_ptr<Optimizer> host_opt = make(host_p, false), cap_opt = make(cap_p, true);
  GradScaler host({.growth_interval = 2}), cap({.growth_interval = 2, .capturable = true});
  // The first iteration is skipped: no parameter has stepped yet (SGD must seed its
  // momentum at the first step that runs). The scale grows twice on the way.
  const std::string events = "IFFFNFFIFFF";
  for (size_t s = 0; s < events.size(); ++s) {
    const std::string step = "iteration " + std::to_string(s) + " (" + events[s] + ")";
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (i == 2 && s % 2 == 1) {  // a parameter without a gradient now and then
        host_p[i].set_grad(Tensor());
        cap_p[i].set_grad(Tensor());
        continue;
      }
      const Tensor g = random_tensor(shapes[i], 90 + 10 * s + i, DType::kF32);
      const char event = i == 1 ? events[s] : 'F';
      set_scaled_grad(host_p[i], g, host.get_scale(), event);
      set_scaled_grad(cap_p[i], g, cap.get_scale(), event);
    }
    EXPECT_EQ(host.step(*host_opt), events[s] == 'F') << step;
    EXPECT_TRUE(cap.step(*cap_opt)) << step;
    host.update();
    cap.update();
    expect_bitwise_equal(copies(cap_p), copies(host_p), step);
    EXPECT_EQ(cap.get_scale(), host.get_scale()) << step;
    EXPECT_EQ(cap.growth_tracker(), host.growth_tracker()) << step;
  }
  EXPECT_EQ(host.skipped_steps(), 3);
  EXPECT_EQ(cap.skipped_steps(), 3);
  EXPECT_EQ(cap.state_dict(), host.state_dict());
  // step_count() counts calls: the capturable optimizer was called for skipped steps too.
  EXPECT_EQ(host_opt->step_count(), 8);
  EXPECT_EQ(cap_opt->step_count(), 11);
  OptimizerState want = host_opt->state_dict(), got = cap_opt->state_dict();
  want.scalars.erase("step_count");
  got.scalars.erase("step_count");
  EXPECT_EQ(got.scalars, want.scalars);
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (const auto& [name, t] : want.tensors) {
    ASSERT_TRUE(got.tensors.count(name)) << name;
    EXPECT_TRUE(all_close(got.tensors.at(name), t, 0.0, 0.0)) << name;
  }
}

TEST(GradScalerCapturable, MatchesTheHostScalerWithSGD) {
  check_capturable_matches_host(
      [](std::vector<Tensor> p, bool capturable) {
        return std::make_unique<SGD>(
            std::move(p),
            SGDOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.25, .weight_decay = 1e-3, .capturable = capturable});
      },
      "SGD with momentum and dampening");
  check_capturable_matches_host(
      [](std::vector<Tensor> p, bool capturable) {
        return std::make_unique<SGD>(std::move(p), SGDOptions{.lr = 0.1, .capturable = capturable});
      },
      "SGD without momentum");
}

TEST(GradScalerCapturable, MatchesTheHostScalerWithAdamAndAdamW) {
  check_capturable_matches_host(
      [](std::vector<Tensor> p, bool capturable) {
        return std::make_unique<Adam>(std::move(p), AdamOptions{.weight_decay = 1e-2, .capturable = capturable});
      },
      "Adam");
  check_capturable_matches_host(
      [](std::vector<Tensor> p, bool capturable) {
        return std::make_unique<AdamW>(std::move(p), AdamWOptions{.amsgrad = true, .capturable = capturable});
      },
      "AdamW with AMSGrad");
}

TEST(GradScalerCapturable, ScalesTheLossByTheScaleOnItsDevice) {
  GradScaler host, cap({.capturable = true});
  EXPECT_FALSE(cap.scale_tensor().defined()) << "no device before the first loss";
  const Tensor loss = random_tensor({}, 5, DType::kF32);
  EXPECT_TRUE(all_close(cap.scale(loss), host.scale(loss), 0.0, 0.0));
  ASSERT_TRUE(cap.scale_tensor().defined());
  EXPECT_EQ(cap.scale_tensor().dtype(), DType::kF32);
  EXPECT_EQ(cap.scale_tensor().item(), 65536.0);
  const Tensor loss64 = random_tensor({}, 6, DType::kF64);
  EXPECT_EQ(cap.scale(loss64).dtype(), DType::kF64);
  EXPECT_TRUE(all_close(cap.scale(loss64), host.scale(loss64), 0.0, 0.0));
  // A half loss is promoted: 65536 does not fit in f16.
  const Tensor half_loss = loss.to(DType::kF16);
  const Tensor scaled = cap.scale(half_loss);
  EXPECT_EQ(scaled.dtype(), DType::kF32);
  EXPECT_EQ(scaled.item(), half_loss.item() * 65536.0);
  // Differentiable: the backward pass sees the scale.
  Tensor w = random_tensor({3}, 7, DType::kF32).set_requires_grad(true);
  cap.scale(sum(w)).backward();
  EXPECT_TRUE(all_close(w.grad(), full({3}, 65536.0), 0.0, 0.0));
}

TEST(GradScalerCapturable, StateRoundTripsAndLoadsInPlace) {
  GradScaler cap({.growth_interval = 3, .capturable = true});
  const GradScalerState before_use = {{"scale", 512.0},          {"growth_tracker", 2.0}, {"growth_factor", 4.0},
                                      {"backoff_factor", 0.25},  {"growth_interval", 3.0}, {"skipped_steps", 7.0}};
  cap.load_state_dict(before_use);  // seeds the device state made by the first scale()
  (void)cap.scale(random_tensor({}, 1, DType::kF32));
  EXPECT_EQ(cap.state_dict(), before_use);
  const void* address = cap.scale_tensor().data_ptr();
  GradScalerState later = before_use;
  later["scale"] = 2048.0;
  later["skipped_steps"] = 9.0;
  cap.load_state_dict(later);
  EXPECT_EQ(cap.scale_tensor().data_ptr(), address) << "a captured graph holds the address";
  EXPECT_EQ(cap.state_dict(), later);
  EXPECT_TRUE(cap.options().capturable);
  // The next finite iteration reaches the interval (tracker 2 + 1 = 3): 2048 · 4.
  Tensor p = random_tensor({3}, 2, DType::kF32).set_requires_grad(true);
  SGD opt({p}, {.lr = 0.1, .capturable = true});
  set_scaled_grad(p, random_tensor({3}, 3, DType::kF32), cap.get_scale(), 'F');
  cap.step(opt);
  cap.update();
  EXPECT_EQ(cap.get_scale(), 8192.0);
  EXPECT_EQ(cap.growth_tracker(), 0);
  EXPECT_EQ(cap.skipped_steps(), 9);
}

TEST(GradScalerCapturable, NeedsAnOptimizerThatSkipsOnTheDevice) {
  Tensor p = random_tensor({3}, 40, DType::kF32).set_requires_grad(true);
  SGD plain({p}, {.lr = 0.1});
  GradScaler cap({.capturable = true});
  set_scaled_grad(p, random_tensor({3}, 41, DType::kF32), 65536.0, 'F');
  const std::vector<Tensor> before = copies({p});
  expect_invalid([&] { cap.step(plain); },
                 {"[GradScaler::step] expected an optimizer that skips its step on the device",
                  "capturable = true", "got one that does not"});
  expect_bitwise_equal(copies({p}), before, "parameters after the refused step");
}

TEST(GradScalerCapturable, OneUpdateTakesAtMostKMaxOptimizers) {
  GradScaler cap({.capturable = true});
  std::vector<Tensor> params;
  std::vector<std::unique_ptr<SGD>> opts;
  for (int i = 0; i <= GradScaler::kMaxOptimizers; ++i) {
    params.push_back(random_tensor({2}, 100 + static_cast<uint64_t>(i), DType::kF32).set_requires_grad(true));
    params.back().set_grad(random_tensor({2}, 200 + static_cast<uint64_t>(i), DType::kF32));
    opts.push_back(std::make_unique<SGD>(std::vector<Tensor>{params.back()}, SGDOptions{.lr = 0.1, .capturable = true}));
  }
  for (int i = 0; i < GradScaler::kMaxOptimizers; ++i) cap.step(*opts[static_cast<size_t>(i)]);
  expect_invalid([&] { cap.step(*opts.back()); },
                 {"[GradScaler::unscale] expected at most 32 optimizers per update() when capturable", "got one more"});
  cap.update();  // the 32 that stepped
  EXPECT_EQ(cap.get_scale(), 65536.0);
  cap.step(*opts.back());  // a new iteration takes it
  cap.update();
}

TEST(OptimizerStepUnless, ErrorsNameWhatWasExpected) {
  Tensor p = random_tensor({3}, 50, DType::kF32).set_requires_grad(true);
  p.set_grad(random_tensor({3}, 51, DType::kF32));
  SGD plain({p}, {.lr = 0.1});
  SGD sgd({p}, {.lr = 0.1, .momentum = 0.9, .capturable = true});
  AdamW adamw({p}, {.capturable = true});
  const Tensor flag = zeros({1});
  EXPECT_FALSE(plain.capturable());
  EXPECT_TRUE(sgd.capturable());
  expect_invalid([&] { plain.step_unless(flag); },
                 {"[Optimizer::step_unless] expected an optimizer that skips its step on the device",
                  "got one that does not"});
  expect_invalid([&] { sgd.step_unless(zeros({1}, {.dtype = DType::kF64})); },
                 {"[SGD::step_unless] expected found_inf to be a float32 tensor of one element", "got float64 [1]"});
  expect_invalid([&] { adamw.step_unless(zeros({2})); },
                 {"[AdamW::step_unless] expected found_inf to be a float32 tensor of one element", "got float32 [2]"});
  expect_invalid([&] { sgd.step_unless(Tensor()); }, {"SGD::step_unless", "found_inf"});
  // A raised flag: nothing moves; a clear one: the step runs.
  const std::vector<Tensor> before = copies({p});
  sgd.step_unless(full({1}, 1.0f));
  expect_bitwise_equal(copies({p}), before, "after a flagged step");
  sgd.step_unless(flag);
  EXPECT_FALSE(all_close(copies({p})[0], before[0], 0.0, 0.0));
}

// ---- the CPU kernel ---------------------------------------------------------------------

TEST(AmpKernelCpu, UnscalesEveryFloatingTypeAndFlagsInfAndNaN) {
  for (DType dt : tandem::testing::kFloatTypes) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    // Values already in dt, so ×0.25 (a power of two) is exact in every type.
    Tensor a = random_tensor({1000}, 70, dt, Device::cpu(), -100.0, 100.0);
    Tensor b = random_tensor({7}, 71, dt, Device::cpu(), -100.0, 100.0);
    const Tensor a0 = a.clone(), b0 = b.clone();
    std::vector<void*> ptrs = {a.data_ptr(), b.data_ptr(), nullptr};
    std::vector<int64_t> numel = {1000, 7, 0};
    float found = 0.0f;
    kernels::cpu::amp_unscale_check_finite(dt, ptrs.data(), numel.data(), 3, 0.25f, nullptr, &found);
    EXPECT_EQ(found, 0.0f);
    EXPECT_TRUE(all_close(a, mul(a0, 0.25), 0.0, 0.0));
    EXPECT_TRUE(all_close(b, mul(b0, 0.25), 0.0, 0.0));
    for (double bad : {kInf, -kInf, kNaN}) {
      Tensor c = b0.clone();
      c.narrow(0, 3, 1).fill_(bad);
      void* ptr = c.data_ptr();
      const int64_t n = 7;
      found = 0.0f;
      kernels::cpu::amp_unscale_check_finite(dt, &ptr, &n, 1, 1.0f, nullptr, &found);
      EXPECT_EQ(found, 1.0f) << bad;
      // inv_scale 1 leaves every value as it was.
      EXPECT_TRUE(all_close(c.narrow(0, 0, 3), b0.narrow(0, 0, 3), 0.0, 0.0));
    }
    // The kernel only raises the flag; clearing it is the caller's job.
    found = 1.0f;
    kernels::cpu::amp_unscale_check_finite(dt, ptrs.data(), numel.data(), 2, 0.5f, nullptr, &found);
    EXPECT_EQ(found, 1.0f);
  }
}

// ---- under DDP: every rank makes the same skip decision -----------------------------------

namespace ddp = comm::ddp_test;

constexpr int kDdpSteps = 5;

/// Where a non-finite value is injected: into `rank`'s loss at `step` (the gradient that
/// DDP averages then carries it to every rank). `rank` -1 means the one-process reference.
struct Injection {
  int step;
  int rank;
  double factor;
};

std::vector<Injection> injections(int world) { return {{1, world - 1, kInf}, {3, 0, kNaN}}; }

/// Skips and scales every rank must see: steps 1 and 3 skipped, the scale halved after each.
const std::vector<bool> kWantStepped = {true, false, true, false, true};
const std::vector<double> kWantScale = {65536.0, 32768.0, 32768.0, 16384.0, 16384.0};

/// What one run observed.
struct ScalerRun {
  std::vector<bool> stepped;
  std::vector<double> scale;
  std::vector<std::pair<std::string, Tensor>> state;
};

/// kDdpSteps scaled SGD steps. With rank -1: one process on the whole global batch,
/// every injection multiplied into its loss (the reference); else rank `rank` of
/// `world` on its rows of the batch, each injection only into its own rank's loss.
ScalerRun scaled_training(nn::Module& model, nn::Module& forward_module, int world, int rank) {
  SGD opt(forward_module.parameters(), ddp::sgd_options());
  GradScaler scaler;
  ScalerRun run;
  const int64_t start = rank < 0 ? 0 : rank * ddp::kBatch;
  const int64_t n = rank < 0 ? world * ddp::kBatch : ddp::kBatch;
  for (int s = 0; s < kDdpSteps; ++s) {
    auto b = ddp::global_batch(ddp::Kind::kMLP, s, world * ddp::kBatch);
    opt.zero_grad();
    Tensor loss = cross_entropy(forward_module.forward(ddp::rows(b.x, start, n)), ddp::rows(b.y, start, n));
    for (const Injection& inj : injections(world))
      if (inj.step == s && (rank < 0 || inj.rank == rank)) loss = mul(loss, inj.factor);
    scaler.scale(loss).backward();
    run.stepped.push_back(scaler.step(opt));
    scaler.update();
    run.scale.push_back(scaler.get_scale());
  }
  run.state = ddp::snapshot(model);
  return run;
}

ScalerRun scaler_reference(int world) {
  auto model = ddp::make_model(ddp::Kind::kMLP, 7);
  return scaled_training(*model, *model, world, -1);
}

/// Rank `pg->rank()`'s side under DDP. Each rank's model starts from its own
/// initialisation (DDP broadcasts rank 0's); make it before starting rank threads, as
/// the seed is process-wide.
std::shared_ptr<nn::Module> rank_model(int rank) { return ddp::make_model(ddp::Kind::kMLP, ddp::rank_seed(rank)); }

ScalerRun scaler_ddp(std::shared_ptr<nn::Module> model, std::shared_ptr<comm::ProcessGroup> pg) {
  comm::DistributedDataParallel ddp_model(model, pg);
  return scaled_training(*model, ddp_model, pg->size(), pg->rank());
}

void expect_same_decisions(const ScalerRun& got, const std::string& what) {
  EXPECT_EQ(got.stepped, kWantStepped) << what;
  EXPECT_EQ(got.scale, kWantScale) << what;
}

class GradScalerDDPLocal : public ::testing::TestWithParam<int> {};

TEST_P(GradScalerDDPLocal, InfOrNaNOnOneRankMakesEveryRankSkip) {
  const int world = GetParam();
  const ScalerRun want = scaler_reference(world);
  expect_same_decisions(want, "reference");
  auto groups = comm::make_local_group(world);
  std::vector<std::shared_ptr<nn::Module>> models;
  for (int r = 0; r < world; ++r) models.push_back(rank_model(r));
  std::vector<ScalerRun> got(static_cast<size_t>(world));
  tandem::testing::run_ranks(world, [&](int r) {
    got[static_cast<size_t>(r)] = scaler_ddp(models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)]);
  });
  for (int r = 0; r < world; ++r) {
    const std::string what = "rank " + std::to_string(r) + " of " + std::to_string(world);
    expect_same_decisions(got[static_cast<size_t>(r)], what);
    ddp::expect_same_state(got[static_cast<size_t>(r)].state, want.state, what + " vs one process");
    // Every rank applied the same averaged gradients: parameters agree exactly.
    for (size_t i = 0; i < got[0].state.size(); ++i) {
      EXPECT_TRUE(all_close(got[static_cast<size_t>(r)].state[i].second, got[0].state[i].second, 0.0, 0.0))
          << what << " " << got[0].state[i].first;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, GradScalerDDPLocal, ::testing::Values(2, 3));

TEST(GradScalerDDPGlooWorker, InfOrNaNOnOneRank) {
  TANDEM_WORKER_ONLY();
  auto pg = tandem::testing::worker_gloo_group(30s);
  const std::string what = "gloo rank " + std::to_string(pg->rank()) + " of " + std::to_string(pg->size());
  const ScalerRun got = scaler_ddp(rank_model(pg->rank()), pg);
  expect_same_decisions(got, what);
  ddp::expect_same_state(got.state, scaler_reference(pg->size()).state, what + " vs one process");
  // Parameters equal across ranks: compare with rank 0's, broadcast.
  for (const auto& [name, t] : got.state) {
    Tensor rank0 = t.to(DType::kF64).clone();
    pg->broadcast(rank0, 0)->wait();
    EXPECT_TRUE(all_close(t, rank0, 0.0, 0.0)) << what << " " << name;
  }
}

class GradScalerDDPGloo : public ::testing::TestWithParam<int> {};

TEST_P(GradScalerDDPGloo, InfOrNaNOnOneRankMakesEveryRankSkip) {
  if (tandem::testing::is_worker()) GTEST_SKIP();
  if (!TANDEM_GLOO) GTEST_SKIP() << "built without gloo";
  tandem::testing::expect_all_ok(
      tandem::testing::run_workers("GradScalerDDPGlooWorker.InfOrNaNOnOneRank", GetParam(), 60s));
}

INSTANTIATE_TEST_SUITE_P(Ranks, GradScalerDDPGloo, ::testing::Values(2, 3));

}  // namespace
}  // namespace tandem::optim
