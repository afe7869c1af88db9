// GradScaler: option checks, the per-optimizer stage machine, grouping of gradients by
// (device, dtype) for the fused unscale kernels (kernels/cpu/amp.cpp,
// kernels/cuda/amp.cu), and PyTorch's scale-update rule (kernels/amp_math.h), applied
// on the host or, capturable, by a kernel to the state on the device.
#include "optim/grad_scaler.h"

#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <tuple>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "kernels/amp_math.h"
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

Tensor GradScaler::scale(const Tensor& loss) {
  if (!options_.enabled) return loss;
  check_defined("GradScaler::scale", loss, "loss");
  check_floating("GradScaler::scale", loss, "loss");
  if (!options_.capturable) return mul(loss, scale_);
  use_device("::scale", loss.device(), "the loss");
  return mul(loss, loss.dtype() == DType::kF64 ? scale_t_.to(DType::kF64) : scale_t_);
}

void GradScaler::use_device(const char* where, Device device, const std::string& what) {
  if (!scale_t_.defined()) {
    scale_t_ = full({}, scale_, {.dtype = DType::kF32, .device = device});
    growth_tracker_t_ = full({}, static_cast<double>(growth_tracker_), {.dtype = DType::kI64, .device = device});
    skipped_steps_t_ = full({}, static_cast<double>(skipped_steps_), {.dtype = DType::kI64, .device = device});
  } else if (scale_t_.device() != device) {
    fail(where, what + " on " + scale_t_.device().str() + ", where the capturable scaler keeps its state",
         device.str());
  }
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
  if (options_.capturable && records_.size() > static_cast<size_t>(kMaxOptimizers)) {
    records_.erase(&optimizer);
    fail("::unscale", "at most " + std::to_string(kMaxOptimizers) + " optimizers per update() when capturable",
         "one more");
  }

  std::map<GroupKey, GradList> lists;
  for (const ParamGroup& group : optimizer.param_groups()) {
    for (const Tensor& p : group.params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (!is_floating(g.dtype())) throw_unsupported("GradScaler::unscale", g.device(), g.dtype());
      const Device d = g.device();
      if (options_.capturable) use_device("::unscale", d, "every gradient");
      GradList& list = lists[GroupKey{d.type, d.index, g.dtype()}];
      list.ptrs.push_back(g.data_ptr());
      list.numel.push_back(g.numel());
      list.grads.push_back(std::move(g));
    }
  }

  // One flag per device, shared by that device's dtype groups (the kernels only ever
  // raise it). The reciprocal is taken in f64 and rounded to f32, as PyTorch does.
  const float inv_scale = kernels::amp_inverse_scale(static_cast<float>(scale_));
  // Capturable: the kernels read the scale from the device when they run.
  // (Defined whenever there is a gradient to unscale: use_device made it.)
  const float* scale_ptr =
      options_.capturable && scale_t_.defined() ? static_cast<const float*>(scale_t_.data_ptr()) : nullptr;
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
        [&] {
          kernels::cpu::amp_unscale_check_finite(dtype, list.ptrs.data(), list.numel.data(), count, inv_scale,
                                                 scale_ptr, found);
        },
        [&](auto) {
          kernels::cuda::amp_unscale_check_finite(dtype, list.ptrs.data(), list.numel.data(), count, inv_scale,
                                                  scale_ptr, found, cuda_stream(device));
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
  if (options_.capturable) {
    if (!optimizer.capturable()) {
      fail("::step",
           "an optimizer that skips its step on the device when the scaler is capturable (SGD, Adam or AdamW "
           "constructed with capturable = true)",
           "one that does not");
    }
    record.stage = Stage::kStepped;
    optimizer.step_unless(record.found_inf.front());
    return true;
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
  if (options_.capturable) {
    update_on_device();
    return;
  }
  bool any_checked = false, any_inf = false;
  for (auto& [opt, record] : records_) {
    if (record.stage == Stage::kReady || record.found_inf.empty()) continue;
    any_checked = true;
    any_inf = found_inf(record) || any_inf;
  }
  if (!any_checked) {
    fail("::update", "step(optimizer) (or unscale(optimizer)) since the last update()", "none");
  }
  scale_ = kernels::amp_next_scale(static_cast<float>(scale_), &growth_tracker_, any_inf, options_.growth_factor,
                                   options_.backoff_factor, options_.growth_interval);
  records_.clear();
}

void GradScaler::update_on_device() {
  static_assert(kMaxOptimizers <= kernels::cuda::kAmpMaxUpdateFlags, "one update kernel takes every flag");
  std::array<const float*, kMaxOptimizers> flags{};
  std::array<bool, kMaxOptimizers> stepped{};
  int64_t n = 0;
  for (auto& [opt, record] : records_) {
    if (record.stage == Stage::kReady || record.found_inf.empty()) continue;
    flags[static_cast<size_t>(n)] = static_cast<const float*>(record.found_inf.front().data_ptr());
    stepped[static_cast<size_t>(n)] = record.stage == Stage::kStepped;
    ++n;  // unscale() keeps records_ within kMaxOptimizers
  }
  if (n == 0) fail("::update", "step(optimizer) (or unscale(optimizer)) since the last update()", "none");
  auto* scale = static_cast<float*>(scale_t_.data_ptr());
  auto* tracker = static_cast<int64_t*>(growth_tracker_t_.data_ptr());
  auto* skipped = static_cast<int64_t*>(skipped_steps_t_.data_ptr());
  const Device device = scale_t_.device();
  dispatch_device(
      "GradScaler::update", device,
      [&] {
        kernels::cpu::amp_update_scale(scale, tracker, skipped, flags.data(), stepped.data(), n,
                                       options_.growth_factor, options_.backoff_factor, options_.growth_interval);
      },
      [&](auto) {
        kernels::cuda::amp_update_scale(scale, tracker, skipped, flags.data(), stepped.data(), n,
                                        options_.growth_factor, options_.backoff_factor, options_.growth_interval,
                                        cuda_stream(device));
      });
  records_.clear();
}

double GradScaler::get_scale() const {
  if (!options_.enabled) return 1.0;
  return scale_t_.defined() ? scale_t_.item() : scale_;
}

int64_t GradScaler::growth_tracker() const {
  return growth_tracker_t_.defined() ? static_cast<int64_t>(growth_tracker_t_.item()) : growth_tracker_;
}

int64_t GradScaler::skipped_steps() const {
  return skipped_steps_t_.defined() ? static_cast<int64_t>(skipped_steps_t_.item()) : skipped_steps_;
}

std::vector<Tensor> GradScaler::found_inf_flags(const Optimizer& optimizer) const {
  auto it = records_.find(&optimizer);
  if (it == records_.end()) return {};
  return it->second.found_inf;
}

GradScalerState GradScaler::state_dict() const {
  if (!options_.enabled) return {};
  return {{"scale", get_scale()},
          {"growth_tracker", static_cast<double>(growth_tracker())},
          {"growth_factor", options_.growth_factor},
          {"backoff_factor", options_.backoff_factor},
          {"growth_interval", static_cast<double>(options_.growth_interval)},
          {"skipped_steps", static_cast<double>(skipped_steps())}};
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
  if (scale_t_.defined()) {
    // In place: a captured graph holds these addresses.
    scale_t_.fill_(scale_);
    growth_tracker_t_.fill_(static_cast<double>(growth_tracker_));
    skipped_steps_t_.fill_(static_cast<double>(skipped_steps_));
  }
}

}  // namespace tandem::optim
