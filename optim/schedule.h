// Learning-rate schedules as torch.optim.lr_scheduler: a scheduler owns a step count
// (last_epoch) and the base lr of each parameter group, and on step() writes the lr of
// its closed form into the optimizer. Call step() per iteration or per epoch (the
// caller chooses). Also the linear scaling rule for data-parallel training.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace tandem::optim {

/// A scheduler's state as data: "last_epoch" and "base_lrs.<g>" per parameter group.
using SchedulerState = std::map<std::string, double>;

class LRScheduler {
 public:
  virtual ~LRScheduler() = default;
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;

  /// last_epoch += 1, then sets every group's lr to get_lr(). Throws std::invalid_argument
  /// if the optimizer's number of groups changed since the scheduler was made.
  void step();
  /// The lr of each group at last_epoch: lr_at(base_lrs()[g], last_epoch()).
  std::vector<double> get_lr() const;
  /// The schedule's closed form: the lr at `epoch` (>= 0) of a group whose base lr is `base_lr`.
  virtual double lr_at(double base_lr, int64_t epoch) const = 0;

  /// Number of step() calls since construction (0 right after it, as PyTorch).
  int64_t last_epoch() const { return last_epoch_; }
  /// Each group's lr when the scheduler was made (PyTorch's initial_lr).
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  Optimizer& optimizer() const { return *optimizer_; }

  /// {"last_epoch", "base_lrs.<g>"}.
  SchedulerState state_dict() const;
  /// Restores state_dict() output (of a scheduler over as many groups) and sets the
  /// optimizer's lrs for the restored epoch. Throws std::invalid_argument listing every problem.
  void load_state_dict(const SchedulerState& state);

 protected:
  /// Records the optimizer's current lrs as base lrs; the optimizer must outlive the scheduler.
  explicit LRScheduler(Optimizer& optimizer);
  /// PyTorch's initial step: last_epoch = 0 and the lrs of epoch 0 applied. Each
  /// concrete scheduler calls it at the end of its constructor (lr_at is virtual).
  void start();
  /// Name for error messages, e.g. "StepLR".
  virtual const char* name() const = 0;

  std::vector<double> base_lrs_;

 private:
  void apply();

  Optimizer* optimizer_;
  int64_t last_epoch_ = 0;
};

/// torch.optim.lr_scheduler.LinearLR with end_factor 1: the lr rises linearly from
/// start_factor·base to base over `warmup_iters` steps, then stays at base:
/// lr = base·(start + (1 - start)·min(epoch, warmup_iters)/warmup_iters).
class LinearWarmup : public LRScheduler {
 public:
  /// Throws std::invalid_argument unless 0 < start_factor <= 1 and warmup_iters >= 1.
  LinearWarmup(Optimizer& optimizer, double start_factor, int64_t warmup_iters);
  double lr_at(double base_lr, int64_t epoch) const override;

 protected:
  const char* name() const override { return "LinearWarmup"; }

 private:
  double start_factor_;
  int64_t warmup_iters_;
};

/// torch.optim.lr_scheduler.StepLR: lr = base·gamma^⌊epoch/step_size⌋.
class StepLR : public LRScheduler {
 public:
  /// Throws std::invalid_argument unless step_size >= 1 and gamma > 0.
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1);
  double lr_at(double base_lr, int64_t epoch) const override;

 protected:
  const char* name() const override { return "StepLR"; }

 private:
  int64_t step_size_;
  double gamma_;
};

/// torch.optim.lr_scheduler.CosineAnnealingLR (its closed form, periodic past T_max):
/// lr = eta_min + (base - eta_min)·(1 + cos(π·epoch/T_max))/2.
class CosineAnnealingLR : public LRScheduler {
 public:
  /// Throws std::invalid_argument unless T_max >= 1 and eta_min >= 0.
  CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min = 0.0);
  double lr_at(double base_lr, int64_t epoch) const override;

 protected:
  const char* name() const override { return "CosineAnnealingLR"; }

 private:
  int64_t t_max_;
  double eta_min_;
};

/// torch.optim.lr_scheduler.LambdaLR with one function for every group: lr = base·f(epoch).
class LambdaLR : public LRScheduler {
 public:
  /// Throws std::invalid_argument if `factor` is empty.
  LambdaLR(Optimizer& optimizer, std::function<double(int64_t)> factor);
  double lr_at(double base_lr, int64_t epoch) const override;

 protected:
  const char* name() const override { return "LambdaLR"; }

 private:
  std::function<double(int64_t)> factor_;
};

/// torch.optim.lr_scheduler.SequentialLR: schedulers[i] runs from milestones[i-1]
/// (0 for the first) with its own epoch counted from there, so epoch e uses
/// schedulers[k].lr_at(base, e - milestones[k-1]) where k = #{milestones <= e}. Every
/// scheduler takes the base lrs of schedulers[0] (PyTorch's initial_lr): make
/// schedulers[0] first, before the others change the optimizer's lrs.
class SequentialLR : public LRScheduler {
 public:
  /// Throws std::invalid_argument unless every scheduler is defined and drives
  /// `optimizer`, milestones.size() == schedulers.size() - 1 and the milestones are >= 1
  /// and strictly increasing.
  SequentialLR(Optimizer& optimizer, std::vector<std::unique_ptr<LRScheduler>> schedulers,
               std::vector<int64_t> milestones);
  double lr_at(double base_lr, int64_t epoch) const override;

 protected:
  /// As the public constructor, with the base lrs of schedulers[base_index]; `name`
  /// prefixes the errors.
  SequentialLR(Optimizer& optimizer, std::vector<std::unique_ptr<LRScheduler>> schedulers,
               std::vector<int64_t> milestones, size_t base_index, const char* name);
  const char* name() const override { return name_; }

 private:
  const char* name_;
  std::vector<std::unique_ptr<LRScheduler>> schedulers_;
  std::vector<int64_t> milestones_;
};

/// Linear warm-up then another schedule, as SequentialLR([LinearLR(start_factor,
/// total_iters=warmup_iters), after], milestones=[warmup_iters]): epochs
/// [0, warmup_iters) warm up, then `after` runs from its own epoch 0. The base lrs are
/// those of `after` (make it on the optimizer first, e.g. a CosineAnnealingLR with
/// T_max = total - warmup_iters).
class WarmupThen : public SequentialLR {
 public:
  /// Throws std::invalid_argument as LinearWarmup, or if `after` is null or drives another optimizer.
  WarmupThen(Optimizer& optimizer, double start_factor, int64_t warmup_iters, std::unique_ptr<LRScheduler> after);
};

/// The linear scaling rule (Goyal et al. 2017): base_lr·world_size·accumulation, the lr
/// for a global batch world_size·accumulation times the one base_lr was tuned for.
/// Throws std::invalid_argument unless base_lr >= 0, world_size >= 1 and accumulation >= 1.
double scaled_lr(double base_lr, int64_t world_size, int64_t accumulation = 1);

}  // namespace tandem::optim
