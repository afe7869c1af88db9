// GradScaler: option checks, the per-optimizer stage machine, grouping of gradients by
// (device, dtype) for the fused unscale kernels (kernels/cpu/amp.cpp,
// kernels/cuda/amp.cu), and PyTorch's scale-update rule on the host.
#include "optim/grad_scaler.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <tuple>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/amp.h"
#include "kernels/cuda/amp.h"
#include "optim/number_text.h"

namespace tandem::optim {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& expected, const std::string& got) {
  throw std::invalid_argument("[GradScaler" + where + "] expected " + expected + ", got " + got);
}

void check_options(const GradScalerOptions& o) {
  if (!(std::isfinite(o.init_scale) && o.init_scale > 0.0)) fail("", "init_scale finite and > 0", number_text(o.init_scale));
  if (!(std::isfinite(o.growth_factor) && o.growth_factor > 1.0)) fail("", "growth_factor > 1", number_text(o.growth_factor));
  if (!(o.backoff_factor > 0.0 && o.backoff_factor < 1.0)) fail("", "backoff_factor in (0, 1)", number_text(o.backoff_factor));
  if (o.growth_interval < 1) fail("", "growth_interval >= 1", std::to_string(o.growth_interval));
}

/// PyTorch keeps the scale in an f32 tensor; every value it takes is rounded to f32.
double as_f32(double v) { return static_cast<double>(static_cast<float>(v)); }

using GroupKey = std::tuple<DeviceType, int, DType>;

/// Gradients of one (device, dtype): pointers and sizes as the kernels take them.
struct GradList {
  std::vector<Tensor> grads;  // keeps the storage alive across the launch
  std::vector<void*> ptrs;
  std::vector<int64_t> numel;
};

const char* const kStateKeys[] = {"scale", "growth_tracker", "growth_factor", "backoff_factor", "growth_interval",
                                  "skipped_steps"};

}  // namespace

GradScaler::GradScaler(const GradScalerOptions& options) : options_(options) {
  check_options(options_);
  scale_ = as_f32(options_.init_scale);
}

Tensor GradScaler::scale(const Tensor& loss) const {
  if (!options_.enabled) return loss;
  check_defined("GradScaler::scale", loss, "loss");
  check_floating("GradScaler::scale", loss, "loss");
  return mul(loss, scale_);
}

void GradScaler::unscale(Optimizer& optimizer) {
  if (!options_.enabled) return;
  OptimizerRecord& record = records_[&optimizer];
  if (record.stage == Stage::kUnscaled) {
    fail("::unscale", "one unscale(optimizer) per update()", "a second call for this optimizer before update()");
  }
  if (record.stage == Stage::kStepped) {
    fail("::unscale", "unscale(optimizer) before step(optimizer)", "a call after step() and before update()");
  }

  std::map<GroupKey, GradList> lists;
  for (const ParamGroup& group : optimizer.param_groups()) {
    for (const Tensor& p : group.params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (!is_floating(g.dtype())) throw_unsupported("GradScaler::unscale", g.device(), g.dtype());
      const Device d = g.device();
      GradList& list = lists[GroupKey{d.type, d.index, g.dtype()}];
      list.ptrs.push_back(g.data_ptr());
      list.numel.push_back(g.numel());
      list.grads.push_back(std::move(g));
    }
  }

  // One flag per device, shared by that device's dtype groups (the kernels only ever
  // raise it). The reciprocal is taken in f64 and rounded to f32, as PyTorch does.
  const float inv_scale = static_cast<float>(1.0 / scale_);
  std::map<std::pair<DeviceType, int>, Tensor> flags;
  autograd::NoGradGuard no_grad;
  for (auto& [key, list] : lists) {
    const Device device{std::get<0>(key), std::get<1>(key)};
    const DType dtype = std::get<2>(key);
    Tensor& flag = flags[{device.type, device.index}];
    if (!flag.defined()) flag = zeros({1}, {.dtype = DType::kF32, .device = device});
    float* found = static_cast<float*>(flag.data_ptr());
    const int64_t count = static_cast<int64_t>(list.ptrs.size());
    dispatch_device(
        "GradScaler::unscale", device,
        [&] { kernels::cpu::amp_unscale_check_finite(dtype, list.ptrs.data(), list.numel.data(), count, inv_scale, found); },
        [&](auto) {
          kernels::cuda::amp_unscale_check_finite(dtype, list.ptrs.data(), list.numel.data(), count, inv_scale, found,
                                                  cuda_stream(device));
        });
  }
  record.found_inf.clear();
  for (auto& [device, flag] : flags) record.found_inf.push_back(flag);
  record.found_inf_read = false;
  record.stage = Stage::kUnscaled;
}

bool GradScaler::found_inf(OptimizerRecord& record) const {
  if (!record.found_inf_read) {
    bool any = false;
    for (const Tensor& flag : record.found_inf) any = any || flag.item() != 0.0;  // host synchronisation
    record.found_inf_value = any;
    record.found_inf_read = true;
  }
  return record.found_inf_value;
}

bool GradScaler::step(Optimizer& optimizer) {
  if (!options_.enabled) {
    optimizer.step();
    return true;
  }
  {
    auto it = records_.find(&optimizer);
    if (it != records_.end() && it->second.stage == Stage::kStepped) {
      fail("::step", "one step(optimizer) per update()", "a second call for this optimizer before update()");
    }
  }
  OptimizerRecord& record = records_[&optimizer];
  if (record.stage == Stage::kReady) unscale(optimizer);
  if (record.found_inf.empty()) {
    fail("::step", "at least one parameter of the optimizer with a gradient (run backward first)", "none");
  }
  record.stage = Stage::kStepped;
  if (found_inf(record)) {
    ++skipped_steps_;
    return false;
  }
  optimizer.step();
  return true;
}

void GradScaler::update() {
  if (!options_.enabled) return;
  bool any_checked = false, any_inf = false;
  for (auto& [opt, record] : records_) {
    if (record.stage == Stage::kReady || record.found_inf.empty()) continue;
    any_checked = true;
    any_inf = found_inf(record) || any_inf;
  }
  if (!any_checked) {
    fail("::update", "step(optimizer) (or unscale(optimizer)) since the last update()", "none");
  }
  if (any_inf) {
    scale_ = as_f32(scale_ * options_.backoff_factor);
    growth_tracker_ = 0;
  } else if (growth_tracker_ + 1 >= options_.growth_interval) {
    // Growth stops short of f32 infinity: the scale stays where it is.
    const float grown = static_cast<float>(scale_ * options_.growth_factor);
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  } else {
    ++growth_tracker_;
  }
  records_.clear();
}

std::vector<Tensor> GradScaler::found_inf_flags(const Optimizer& optimizer) const {
  auto it = records_.find(&optimizer);
  if (it == records_.end()) return {};
  return it->second.found_inf;
}

GradScalerState GradScaler::state_dict() const {
  if (!options_.enabled) return {};
  return {{"scale", scale_},
          {"growth_tracker", static_cast<double>(growth_tracker_)},
          {"growth_factor", options_.growth_factor},
          {"backoff_factor", options_.backoff_factor},
          {"growth_interval", static_cast<double>(options_.growth_interval)},
          {"skipped_steps", static_cast<double>(skipped_steps_)}};
}

void GradScaler::load_state_dict(const GradScalerState& state) {
  if (!options_.enabled) return;
  if (state.empty()) {
    fail("::load_state_dict", "a state saved by an enabled GradScaler",
         "an empty state (saved by a disabled one?)");
  }
  std::string problems;
  auto note = [&](const std::string& p) { problems += (problems.empty() ? "" : "; ") + p; };
  for (const char* key : kStateKeys) {
    if (!state.count(key)) note(std::string("missing ") + key);
  }
  for (const auto& [key, value] : state) {
    bool known = false;
    for (const char* k : kStateKeys) known = known || key == k;
    if (!known) note("unexpected " + key);
  }
  auto count_at = [&](const char* key, double min) {
    auto it = state.find(key);
    if (it == state.end()) return int64_t{0};
    const double v = it->second;
    if (!(v >= min && v == std::floor(v) && v < 9.0e15)) {
      note(std::string(key) + " = " + number_text(v) + " (expected an integer >= " + number_text(min) + ")");
      return int64_t{0};
    }
    return static_cast<int64_t>(v);
  };
  const int64_t tracker = count_at("growth_tracker", 0);
  const int64_t interval = count_at("growth_interval", 1);
  const int64_t skipped = count_at("skipped_steps", 0);
  GradScalerOptions loaded = options_;
  if (problems.empty()) {
    loaded.init_scale = state.at("scale");
    loaded.growth_factor = state.at("growth_factor");
    loaded.backoff_factor = state.at("backoff_factor");
    loaded.growth_interval = interval;
    try {
      check_options(loaded);
    } catch (const std::invalid_argument& e) {
      note(e.what());
    }
  }
  if (!problems.empty()) {
    fail("::load_state_dict", "a state from GradScaler::state_dict()", problems);
  }
  options_ = loaded;
  scale_ = as_f32(loaded.init_scale);
  growth_tracker_ = tracker;
  skipped_steps_ = skipped;
}

}  // namespace tandem::optim
