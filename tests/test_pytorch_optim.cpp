// optim/ against PyTorch values (tests/fixtures_optim.py): five Adam and AdamW steps in
// f64 (parameters, moments, per-parameter step counts), every LR schedule's sequence
// over 30+ steps with two parameter groups, and clip_grad_norm for 2, inf and 3 norms.
#include <cmath>
#include <limits>
#include <memory>

#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "optim/sgd.h"
#include "test_util.h"

using namespace tandem;
using json = nlohmann::json;
using tandem::testing::all_close;
using tandem::testing::fixture_tensor;
using tandem::testing::load_fixture;

namespace {

constexpr double kAtol = 1e-14;
constexpr double kRtol = 1e-12;

std::unique_ptr<optim::Adam> make_adam(const json& c, std::vector<Tensor> params) {
  const std::array<double, 2> betas{c["betas"][0].get<double>(), c["betas"][1].get<double>()};
  if (c["optimizer"] == "AdamW") {
    return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = c["lr"], .betas = betas, .eps = c["eps"],
                                                                      .weight_decay = c["weight_decay"],
                                                                      .amsgrad = c["amsgrad"]});
  }
  return std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = c["lr"], .betas = betas, .eps = c["eps"],
                                                                  .weight_decay = c["weight_decay"],
                                                                  .amsgrad = c["amsgrad"]});
}

}  // namespace

TEST(PyTorchOptim, AdamAndAdamWFiveSteps) {
  json j = load_fixture("adam.json");
  ASSERT_EQ(j["cases"].size(), 5u);
  for (const json& c : j["cases"]) {
    SCOPED_TRACE(c.dump().substr(0, 120));
    std::vector<Tensor> params;
    for (const json& p : j["initial_params"]) params.push_back(fixture_tensor(p).set_requires_grad(true));
    auto opt = make_adam(c, params);
    EXPECT_EQ(opt->decoupled_weight_decay(), c["optimizer"] == "AdamW");
    const json& grads = j["grads"];
    ASSERT_EQ(grads.size(), 5u);
    for (size_t k = 0; k < grads.size(); ++k) {
      for (size_t i = 0; i < params.size(); ++i) {
        params[i].set_grad(grads[k][i].is_null() ? Tensor() : fixture_tensor(grads[k][i]));
      }
      opt->step();
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_TRUE(all_close(params[i], fixture_tensor(c["params_after_step"][k][i]), kAtol, kRtol))
            << "step " << k + 1 << " param " << i;
      }
    }
    optim::OptimizerState st = opt->state_dict();
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string idx = std::to_string(i);
      EXPECT_TRUE(all_close(st.tensors.at("exp_avg." + idx), fixture_tensor(c["exp_avg"][i]), kAtol, kRtol));
      EXPECT_TRUE(all_close(st.tensors.at("exp_avg_sq." + idx), fixture_tensor(c["exp_avg_sq"][i]), kAtol, kRtol));
      if (c["amsgrad"]) {
        EXPECT_TRUE(all_close(st.tensors.at("max_exp_avg_sq." + idx), fixture_tensor(c["max_exp_avg_sq"][i]),
                              kAtol, kRtol));
      } else {
        EXPECT_FALSE(st.tensors.count("max_exp_avg_sq." + idx));
      }
      EXPECT_EQ(st.scalars.at("step." + idx), c["step"][i].get<double>()) << "param " << i;
      EXPECT_EQ(opt->param_step(i), static_cast<int64_t>(c["step"][i].get<double>()));
    }
  }
}

TEST(PyTorchOptim, ScheduleSequences) {
  json j = load_fixture("schedule.json");
  ASSERT_EQ(j["cases"].size(), 6u);
  for (const json& c : j["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    std::vector<optim::ParamGroup> groups;
    for (const json& lr : c["group_lrs"]) {
      groups.push_back({.params = {Tensor::from_vector(std::vector<double>{0.0}, {1}).set_requires_grad(true)},
                        .lr = lr.get<double>(), .weight_decay = std::nullopt});
    }
    optim::SGD opt(groups, {.lr = c["group_lrs"][0].get<double>()});
    std::unique_ptr<optim::LRScheduler> sched;
    if (name == "warmup_cosine") {
      auto cosine = std::make_unique<optim::CosineAnnealingLR>(opt, c["T_max"].get<int64_t>(), c["eta_min"]);
      sched = std::make_unique<optim::WarmupThen>(opt, c["start_factor"], c["warmup_iters"], std::move(cosine));
    } else if (name == "warmup_step") {
      // The general composition, built as PyTorch's: warm-up first, then the rest.
      std::vector<std::unique_ptr<optim::LRScheduler>> parts;
      parts.push_back(std::make_unique<optim::LinearWarmup>(opt, c["start_factor"], c["warmup_iters"]));
      parts.push_back(std::make_unique<optim::StepLR>(opt, c["step_size"], c["gamma"]));
      sched = std::make_unique<optim::SequentialLR>(opt, std::move(parts),
                                                    std::vector<int64_t>{c["warmup_iters"].get<int64_t>()});
    } else if (name == "linear") {
      sched = std::make_unique<optim::LinearWarmup>(opt, c["start_factor"], c["warmup_iters"]);
    } else if (name == "step") {
      sched = std::make_unique<optim::StepLR>(opt, c["step_size"], c["gamma"]);
    } else if (name == "cosine") {
      sched = std::make_unique<optim::CosineAnnealingLR>(opt, c["T_max"], c["eta_min"]);
    } else if (name == "lambda") {
      sched = std::make_unique<optim::LambdaLR>(
          opt, [](int64_t e) { return std::pow(0.95, static_cast<double>(e)) / (1.0 + 0.1 * static_cast<double>(e)); });
    } else {
      FAIL() << "unknown case " << name;
    }
    const json& lrs = c["lrs"];
    ASSERT_GE(lrs.size(), 31u);
    for (size_t k = 0; k < lrs.size(); ++k) {
      if (k > 0) sched->step();
      EXPECT_EQ(sched->last_epoch(), static_cast<int64_t>(k));
      for (size_t g = 0; g < 2; ++g) {
        const double want = lrs[k][g];
        EXPECT_NEAR(opt.param_groups()[g].lr.value(), want, kAtol + kRtol * std::abs(want))
            << "epoch " << k << " group " << g;
        EXPECT_DOUBLE_EQ(sched->get_lr()[g], opt.param_groups()[g].lr.value());
      }
    }
  }
}

TEST(PyTorchOptim, ClipGradNorm) {
  json j = load_fixture("clip_grad_norm.json");
  ASSERT_EQ(j["cases"].size(), 5u);
  for (const json& c : j["cases"]) {
    const double norm_type =
        c["norm_type"].is_string() ? std::numeric_limits<double>::infinity() : c["norm_type"].get<double>();
    SCOPED_TRACE("norm_type " + std::to_string(norm_type) + " max_norm " + std::to_string(c["max_norm"].get<double>()));
    std::vector<Tensor> params;
    for (const json& g : j["grads"]) {
      Tensor p = fixture_tensor(g).set_requires_grad(true);
      p.set_grad(fixture_tensor(g));
      params.push_back(p);
    }
    // A parameter without a gradient is skipped.
    params.push_back(Tensor::from_vector(std::vector<double>{1.0, 2.0}, {2}).set_requires_grad(true));
    const double total = optim::clip_grad_norm(params, c["max_norm"], norm_type);
    const double want = c["total_norm"];
    EXPECT_NEAR(total, want, kAtol + kRtol * want);
    for (size_t i = 0; i < c["grads_after"].size(); ++i) {
      EXPECT_TRUE(all_close(params[i].grad(), fixture_tensor(c["grads_after"][i]), kAtol, kRtol)) << "grad " << i;
    }
    EXPECT_FALSE(params.back().grad().defined());
  }
}
