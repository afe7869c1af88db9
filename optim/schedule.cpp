// LR schedules: the LRScheduler bookkeeping (base lrs, last_epoch, state dict) and the
// closed forms of each schedule. Closed forms rather than PyTorch's recursive updates,
// so a restored last_epoch reproduces the sequence; they agree to rounding.
#include "optim/schedule.h"
#include "optim/number_text.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>
#include <stdexcept>

namespace tandem::optim {
namespace {

[[noreturn]] void fail(const char* op, const std::string& expected, const std::string& got) {
  throw std::invalid_argument(std::string("[") + op + "] expected " + expected + ", got " + got);
}

std::vector<double> group_lrs(const Optimizer& optimizer) {
  std::vector<double> lrs;
  for (const ParamGroup& g : optimizer.param_groups()) lrs.push_back(g.lr.value());
  return lrs;
}

void check_warmup(const char* op, double start_factor, int64_t warmup_iters) {
  if (!(start_factor > 0.0 && start_factor <= 1.0)) fail(op, "start_factor in (0, 1]", number_text(start_factor));
  if (warmup_iters < 1) fail(op, "warmup_iters >= 1", std::to_string(warmup_iters));
}

}  // namespace

// ---- LRScheduler ---------------------------------------------------------------------

LRScheduler::LRScheduler(Optimizer& optimizer) : base_lrs_(group_lrs(optimizer)), optimizer_(&optimizer) {}

void LRScheduler::start() {
  last_epoch_ = 0;
  apply();
}

void LRScheduler::step() {
  ++last_epoch_;
  apply();
}

std::vector<double> LRScheduler::get_lr() const {
  std::vector<double> lrs;
  lrs.reserve(base_lrs_.size());
  for (double base : base_lrs_) lrs.push_back(lr_at(base, last_epoch_));
  return lrs;
}

void LRScheduler::apply() {
  std::vector<ParamGroup>& groups = optimizer_->param_groups();
  if (groups.size() != base_lrs_.size()) {
    fail(name(), std::to_string(base_lrs_.size()) + " parameter groups as when the scheduler was made",
         std::to_string(groups.size()));
  }
  const std::vector<double> lrs = get_lr();
  // Through set_group_lr: a capturable optimizer's device copies follow.
  for (size_t g = 0; g < groups.size(); ++g) optimizer_->set_group_lr(g, lrs[g]);
}

SchedulerState LRScheduler::state_dict() const {
  SchedulerState out;
  out["last_epoch"] = static_cast<double>(last_epoch_);
  for (size_t g = 0; g < base_lrs_.size(); ++g) out["base_lrs." + std::to_string(g)] = base_lrs_[g];
  return out;
}

void LRScheduler::load_state_dict(const SchedulerState& state) {
  std::vector<std::string> problems;
  std::set<std::string> known{"last_epoch"};
  auto epoch = state.find("last_epoch");
  if (epoch == state.end()) {
    problems.push_back("missing last_epoch");
  } else if (!(epoch->second >= 0.0 && epoch->second == std::floor(epoch->second))) {
    problems.push_back("last_epoch: expected an integer >= 0, got " + number_text(epoch->second));
  }
  std::vector<double> base(base_lrs_.size());
  for (size_t g = 0; g < base.size(); ++g) {
    const std::string key = "base_lrs." + std::to_string(g);
    known.insert(key);
    auto it = state.find(key);
    if (it == state.end()) {
      problems.push_back("missing " + key);
    } else if (!(it->second >= 0.0)) {
      problems.push_back(key + ": expected >= 0, got " + number_text(it->second));
    } else {
      base[g] = it->second;
    }
  }
  for (const auto& [key, value] : state) {
    if (!known.count(key)) problems.push_back("unexpected " + key);
  }
  if (!problems.empty()) {
    std::string msg = std::string("[") + name() + "::load_state_dict] state does not match this scheduler (" +
                      std::to_string(base_lrs_.size()) + " groups): ";
    for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw std::invalid_argument(msg);
  }
  base_lrs_ = std::move(base);
  last_epoch_ = static_cast<int64_t>(epoch->second);
  apply();
}

// ---- schedules -------------------------------------------------------------------------

LinearWarmup::LinearWarmup(Optimizer& optimizer, double start_factor, int64_t warmup_iters)
    : LRScheduler(optimizer), start_factor_(start_factor), warmup_iters_(warmup_iters) {
  check_warmup("LinearWarmup", start_factor, warmup_iters);
  start();
}

double LinearWarmup::lr_at(double base_lr, int64_t epoch) const {
  const double progress = static_cast<double>(std::min(epoch, warmup_iters_)) / static_cast<double>(warmup_iters_);
  return base_lr * (start_factor_ + (1.0 - start_factor_) * progress);
}

StepLR::StepLR(Optimizer& optimizer, int64_t step_size, double gamma)
    : LRScheduler(optimizer), step_size_(step_size), gamma_(gamma) {
  if (step_size < 1) fail("StepLR", "step_size >= 1", std::to_string(step_size));
  if (!(gamma > 0.0)) fail("StepLR", "gamma > 0", number_text(gamma));
  start();
}

double StepLR::lr_at(double base_lr, int64_t epoch) const {
  return base_lr * std::pow(gamma_, static_cast<double>(epoch / step_size_));
}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min)
    : LRScheduler(optimizer), t_max_(T_max), eta_min_(eta_min) {
  if (T_max < 1) fail("CosineAnnealingLR", "T_max >= 1", std::to_string(T_max));
  if (!(eta_min >= 0.0)) fail("CosineAnnealingLR", "eta_min >= 0", number_text(eta_min));
  start();
}

double CosineAnnealingLR::lr_at(double base_lr, int64_t epoch) const {
  const double phase = std::numbers::pi * static_cast<double>(epoch) / static_cast<double>(t_max_);
  return eta_min_ + (base_lr - eta_min_) * (1.0 + std::cos(phase)) / 2.0;
}

LambdaLR::LambdaLR(Optimizer& optimizer, std::function<double(int64_t)> factor)
    : LRScheduler(optimizer), factor_(std::move(factor)) {
  if (!factor_) fail("LambdaLR", "a function of the epoch", "an empty std::function");
  start();
}

double LambdaLR::lr_at(double base_lr, int64_t epoch) const { return base_lr * factor_(epoch); }

// ---- composition -------------------------------------------------------------------------

SequentialLR::SequentialLR(Optimizer& optimizer, std::vector<std::unique_ptr<LRScheduler>> schedulers,
                           std::vector<int64_t> milestones)
    : SequentialLR(optimizer, std::move(schedulers), std::move(milestones), 0, "SequentialLR") {}

SequentialLR::SequentialLR(Optimizer& optimizer, std::vector<std::unique_ptr<LRScheduler>> schedulers,
                           std::vector<int64_t> milestones, size_t base_index, const char* name)
    : LRScheduler(optimizer), name_(name), schedulers_(std::move(schedulers)), milestones_(std::move(milestones)) {
  if (schedulers_.empty()) fail(name_, "at least one scheduler", "none");
  for (size_t i = 0; i < schedulers_.size(); ++i) {
    if (!schedulers_[i]) fail(name_, "defined schedulers", "a null scheduler at index " + std::to_string(i));
    if (&schedulers_[i]->optimizer() != &optimizer) {
      fail(name_, "every scheduler to drive the optimizer passed in",
           "scheduler " + std::to_string(i) + " on another optimizer");
    }
  }
  if (milestones_.size() + 1 != schedulers_.size()) {
    fail(name_, "one milestone fewer than schedulers (" + std::to_string(schedulers_.size() - 1) + ")",
         std::to_string(milestones_.size()) + " milestones");
  }
  for (size_t i = 0; i < milestones_.size(); ++i) {
    const int64_t previous = i == 0 ? 0 : milestones_[i - 1];
    if (milestones_[i] <= previous) {
      fail(name_, "milestones >= 1 and strictly increasing",
           "milestone " + std::to_string(milestones_[i]) + " at index " + std::to_string(i) + " after " +
               std::to_string(previous));
    }
  }
  base_lrs_ = schedulers_[base_index]->base_lrs();
  start();
}

double SequentialLR::lr_at(double base_lr, int64_t epoch) const {
  const size_t k = static_cast<size_t>(std::upper_bound(milestones_.begin(), milestones_.end(), epoch) -
                                       milestones_.begin());
  const int64_t offset = k == 0 ? 0 : milestones_[k - 1];
  return schedulers_[k]->lr_at(base_lr, epoch - offset);
}

namespace {

std::vector<std::unique_ptr<LRScheduler>> warmup_children(Optimizer& optimizer, double start_factor,
                                                          int64_t warmup_iters, std::unique_ptr<LRScheduler> after) {
  check_warmup("WarmupThen", start_factor, warmup_iters);
  if (!after) fail("WarmupThen", "a schedule to follow the warm-up", "null");
  std::vector<std::unique_ptr<LRScheduler>> out;
  out.push_back(std::make_unique<LinearWarmup>(optimizer, start_factor, warmup_iters));
  out.push_back(std::move(after));
  return out;
}

}  // namespace

WarmupThen::WarmupThen(Optimizer& optimizer, double start_factor, int64_t warmup_iters,
                       std::unique_ptr<LRScheduler> after)
    : SequentialLR(optimizer, warmup_children(optimizer, start_factor, warmup_iters, std::move(after)),
                   {warmup_iters}, /*base_index=*/1, "WarmupThen") {}

double scaled_lr(double base_lr, int64_t world_size, int64_t accumulation) {
  if (!(base_lr >= 0.0) || !std::isfinite(base_lr)) fail("scaled_lr", "a finite base_lr >= 0", number_text(base_lr));
  if (world_size < 1) fail("scaled_lr", "world_size >= 1", std::to_string(world_size));
  if (accumulation < 1) fail("scaled_lr", "accumulation >= 1", std::to_string(accumulation));
  return base_lr * static_cast<double>(world_size) * static_cast<double>(accumulation);
}

}  // namespace tandem::optim
