// Tests of optim/schedule.h: closed forms at their corner epochs, warm-up composition,
// state dict round trips (a resumed run continues the same sequence), load errors,
// argument errors, and the linear scaling rule.
#include <cmath>
#include <memory>
#include <numbers>
#include <stdexcept>

#include "optim/schedule.h"
#include "optim/sgd.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::optim;
using tandem::testing::expect_invalid;

namespace {

/// An SGD over one parameter per lr, one group each.
std::unique_ptr<SGD> make_optimizer(const std::vector<double>& lrs) {
  std::vector<ParamGroup> groups;
  for (double lr : lrs) {
    groups.push_back({.params = {Tensor::from_vector(std::vector<double>{0.0}, {1}).set_requires_grad(true)},
                      .lr = lr, .weight_decay = std::nullopt});
  }
  return std::make_unique<SGD>(groups, SGDOptions{.lr = lrs.front()});
}

std::unique_ptr<LRScheduler> warmup_cosine(Optimizer& opt) {
  return std::make_unique<WarmupThen>(opt, 0.1, 4, std::make_unique<CosineAnnealingLR>(opt, 20, 1e-3));
}

}  // namespace

TEST(Schedule, ConstructionAppliesEpochZeroAndStepAdvances) {
  auto opt = make_optimizer({0.1});
  LinearWarmup warmup(*opt, 0.25, 4);
  EXPECT_EQ(warmup.last_epoch(), 0);
  EXPECT_DOUBLE_EQ(opt->lr(), 0.025);
  EXPECT_EQ(warmup.base_lrs(), std::vector<double>{0.1});
  for (int k = 1; k <= 6; ++k) {
    warmup.step();
    EXPECT_EQ(warmup.last_epoch(), k);
    EXPECT_DOUBLE_EQ(opt->lr(), 0.1 * (0.25 + 0.75 * std::min(k, 4) / 4.0)) << k;
  }
}

TEST(Schedule, ClosedForms) {
  auto opt = make_optimizer({1.0});
  StepLR step(*opt, 3, 0.5);
  EXPECT_DOUBLE_EQ(step.lr_at(1.0, 2), 1.0);
  EXPECT_DOUBLE_EQ(step.lr_at(1.0, 3), 0.5);
  EXPECT_DOUBLE_EQ(step.lr_at(2.0, 7), 0.5);
  CosineAnnealingLR cosine(*opt, 10, 0.1);
  EXPECT_DOUBLE_EQ(cosine.lr_at(1.0, 0), 1.0);
  EXPECT_DOUBLE_EQ(cosine.lr_at(1.0, 5), 0.55);
  EXPECT_DOUBLE_EQ(cosine.lr_at(1.0, 10), 0.1);
  EXPECT_DOUBLE_EQ(cosine.lr_at(1.0, 15), 0.55);  // periodic past T_max, as PyTorch
  LambdaLR lambda(*opt, [](int64_t e) { return 1.0 / static_cast<double>(e + 1); });
  EXPECT_DOUBLE_EQ(lambda.lr_at(0.3, 2), 0.1);
}

TEST(Schedule, WarmupThenMatchesSequentialComposition) {
  // WarmupThen and the general SequentialLR built the PyTorch way give one sequence.
  auto opt_a = make_optimizer({0.1, 0.02});
  auto opt_b = make_optimizer({0.1, 0.02});
  auto a = warmup_cosine(*opt_a);
  std::vector<std::unique_ptr<LRScheduler>> parts;
  parts.push_back(std::make_unique<LinearWarmup>(*opt_b, 0.1, 4));
  parts.push_back(std::make_unique<CosineAnnealingLR>(*opt_b, 20, 1e-3));
  SequentialLR b(*opt_b, std::move(parts), {4});
  EXPECT_EQ(b.base_lrs(), (std::vector<double>{0.1, 0.02}));
  for (int k = 0; k < 30; ++k) {
    if (k) {
      a->step();
      b.step();
    }
    EXPECT_EQ(a->get_lr(), b.get_lr()) << k;
    EXPECT_DOUBLE_EQ(opt_a->param_groups()[1].lr.value(), opt_b->param_groups()[1].lr.value());
  }
  // Epoch 4 is the cosine's epoch 0: the base lr; epoch 3 is still warming up.
  EXPECT_DOUBLE_EQ(a->lr_at(0.1, 4), 0.1);
  EXPECT_DOUBLE_EQ(a->lr_at(0.1, 3), 0.1 * (0.1 + 0.9 * 0.75));
}

TEST(Schedule, StateDictRoundTripResumesTheSameSequence) {
  auto opt = make_optimizer({0.1, 0.02});
  auto sched = warmup_cosine(*opt);
  std::vector<std::vector<double>> uninterrupted;
  for (int k = 0; k < 25; ++k) {
    if (k) sched->step();
    uninterrupted.push_back(sched->get_lr());
  }

  auto opt1 = make_optimizer({0.1, 0.02});
  auto first = warmup_cosine(*opt1);
  for (int k = 1; k < 10; ++k) first->step();
  SchedulerState saved = first->state_dict();
  EXPECT_EQ(saved.at("last_epoch"), 9.0);
  EXPECT_EQ(saved.at("base_lrs.1"), 0.02);

  // A fresh run (its optimizer's lrs already changed by its own warm-up) resumes at epoch 9.
  auto opt2 = make_optimizer({0.1, 0.02});
  auto resumed = warmup_cosine(*opt2);
  resumed->load_state_dict(saved);
  EXPECT_EQ(resumed->last_epoch(), 9);
  EXPECT_EQ(resumed->get_lr(), uninterrupted[9]);
  EXPECT_DOUBLE_EQ(opt2->param_groups()[0].lr.value(), uninterrupted[9][0]);
  for (int k = 10; k < 25; ++k) {
    resumed->step();
    EXPECT_EQ(resumed->get_lr(), uninterrupted[k]) << k;
  }
}

TEST(Schedule, LoadStateDictListsEveryProblem) {
  auto opt = make_optimizer({0.1, 0.02});
  StepLR sched(*opt, 2);
  SchedulerState bad{{"last_epoch", -1.0}, {"base_lrs.0", 0.1}, {"base_lrs.5", 0.1}};
  expect_invalid([&] { sched.load_state_dict(bad); },
                 {"[StepLR::load_state_dict]", "last_epoch: expected an integer >= 0, got -1", "missing base_lrs.1",
                  "unexpected base_lrs.5"});
  EXPECT_EQ(sched.last_epoch(), 0);
  expect_invalid([&] { sched.load_state_dict({{"base_lrs.0", 0.1}, {"base_lrs.1", -2.0}}); },
                 {"missing last_epoch", "base_lrs.1: expected >= 0, got -2"});
}

TEST(Schedule, GroupAddedAfterConstructionIsAnError) {
  auto opt = make_optimizer({0.1});
  CosineAnnealingLR sched(*opt, 10);
  opt->add_param_group({.params = {Tensor::from_vector(std::vector<double>{0.0}, {1})}, .lr = 0.5,
                        .weight_decay = std::nullopt});
  expect_invalid([&] { sched.step(); },
                 {"[CosineAnnealingLR] expected 1 parameter groups as when the scheduler was made", "got 2"});
}

TEST(Schedule, ArgumentErrors) {
  auto opt = make_optimizer({0.1});
  expect_invalid([&] { CosineAnnealingLR(*opt, 0); }, {"[CosineAnnealingLR] expected T_max >= 1, got 0"});
  expect_invalid([&] { CosineAnnealingLR(*opt, -5); }, {"T_max >= 1, got -5"});
  expect_invalid([&] { CosineAnnealingLR(*opt, 5, -0.1); }, {"eta_min >= 0, got -0.1"});
  expect_invalid([&] { StepLR(*opt, 0); }, {"[StepLR] expected step_size >= 1, got 0"});
  expect_invalid([&] { StepLR(*opt, 3, 0.0); }, {"[StepLR] expected gamma > 0, got 0"});
  expect_invalid([&] { LinearWarmup(*opt, 0.0, 5); }, {"[LinearWarmup] expected start_factor in (0, 1], got 0"});
  expect_invalid([&] { LinearWarmup(*opt, 1.5, 5); }, {"start_factor in (0, 1], got 1.5"});
  expect_invalid([&] { LinearWarmup(*opt, 0.1, 0); }, {"warmup_iters >= 1, got 0"});
  expect_invalid([&] { LambdaLR(*opt, nullptr); }, {"[LambdaLR] expected a function of the epoch"});
  expect_invalid([&] { WarmupThen(*opt, 0.1, 3, nullptr); }, {"[WarmupThen] expected a schedule", "got null"});
  expect_invalid([&] { WarmupThen(*opt, 0.1, -1, std::make_unique<StepLR>(*opt, 2)); },
                 {"[WarmupThen] expected warmup_iters >= 1, got -1"});

  auto other = make_optimizer({0.1});
  expect_invalid([&] { WarmupThen(*opt, 0.1, 3, std::make_unique<StepLR>(*other, 2)); },
                 {"[WarmupThen] expected every scheduler to drive the optimizer passed in", "scheduler 1"});
  auto two = [&] {
    std::vector<std::unique_ptr<LRScheduler>> s;
    s.push_back(std::make_unique<StepLR>(*opt, 2));
    s.push_back(std::make_unique<StepLR>(*opt, 3));
    return s;
  };
  expect_invalid([&] { SequentialLR(*opt, two(), {}); },
                 {"[SequentialLR] expected one milestone fewer than schedulers (1)", "got 0 milestones"});
  expect_invalid([&] { SequentialLR(*opt, two(), {0}); },
                 {"milestones >= 1 and strictly increasing", "milestone 0 at index 0"});
  auto three = two();
  three.push_back(std::make_unique<StepLR>(*opt, 4));
  expect_invalid([&] { SequentialLR(*opt, std::move(three), {5, 5}); }, {"milestone 5 at index 1 after 5"});
  expect_invalid([&] { SequentialLR(*opt, {}, {}); }, {"expected at least one scheduler, got none"});
}

TEST(Schedule, ScaledLr) {
  EXPECT_DOUBLE_EQ(scaled_lr(0.1, 8, 4), 3.2);
  EXPECT_DOUBLE_EQ(scaled_lr(0.1, 1), 0.1);
  expect_invalid([] { scaled_lr(0.1, 0, 1); }, {"[scaled_lr] expected world_size >= 1, got 0"});
  expect_invalid([] { scaled_lr(0.1, 2, 0); }, {"[scaled_lr] expected accumulation >= 1, got 0"});
  expect_invalid([] { scaled_lr(-0.1, 2, 1); }, {"[scaled_lr] expected a finite base_lr >= 0, got -0.1"});
  expect_invalid([] { scaled_lr(std::nan(""), 2, 1); }, {"got nan"});
}
