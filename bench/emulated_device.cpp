#include "bench/emulated_device.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "engine/autograd.h"
#include "engine/ops/factory.h"

namespace tandem::bench {
namespace {

/// Waits `seconds` without using a core (the device is busy, the host is not).
void device_busy(double seconds) {
  if (seconds > 0) std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

void check_step(const EmulatedStep& step) {
  const double shares = step.forward_share + step.backward_share + step.optimizer_share;
  if (step.step_ms <= 0 || step.forward_share < 0 || step.backward_share < 0 || step.optimizer_share < 0 ||
      shares > 1.0 + 1e-9) {
    throw std::invalid_argument("[EmulatedStep] expected step_ms > 0 and non-negative shares summing to at most 1, "
                                "got step_ms " + std::to_string(step.step_ms) + ", shares " +
                                std::to_string(step.forward_share) + " / " + std::to_string(step.backward_share) +
                                " / " + std::to_string(step.optimizer_share));
  }
}

}  // namespace

EmulatedDeviceModel::EmulatedDeviceModel(const nn::Module& real, const EmulatedStep& step, int64_t classes)
    : classes_(classes) {
  check_step(step);
  const auto named = real.named_parameters();
  if (named.empty()) throw std::invalid_argument("[EmulatedDeviceModel] expected a model with parameters, got none");
  for (const auto& [name, p] : named) {
    std::string flat = name;
    std::replace(flat.begin(), flat.end(), '.', '_');
    register_parameter(flat, p.detach().clone());
    zero_grads_.push_back(zeros(p.shape(), {.dtype = p.dtype(), .device = p.device()}));
  }
  const double nodes = static_cast<double>(named.size());
  node_forward_s_ = step.step_ms * 1e-3 * step.forward_share / nodes;
  node_backward_s_ = step.step_ms * 1e-3 * step.backward_share / nodes;
}

Tensor EmulatedDeviceModel::forward(const Tensor& input) {
  if (input.dim() < 1)
    throw std::invalid_argument("[EmulatedDeviceModel] expected an input with a batch dimension, got a 0-dim tensor");
  const std::vector<Tensor> params = parameters();
  Tensor h = zeros({input.size(0), classes_}, {.device = params.front().device()});
  for (size_t i = 0; i < params.size(); ++i) {
    device_busy(node_forward_s_);
    Tensor out = h.detach();
    const bool input_needs_grad = h.requires_grad();
    const double wait = node_backward_s_;
    Tensor zero = zero_grads_[i];
    autograd::record("EmulatedNode", {h, params[i]}, {out},
                     [wait, zero, input_needs_grad](std::vector<Tensor>& grads) -> std::vector<Tensor> {
                       device_busy(wait);
                       return {input_needs_grad ? grads[0] : Tensor(), zero};
                     });
    h = out;
  }
  return h;
}

EmulatedOptimizer::EmulatedOptimizer(std::vector<Tensor> params, const EmulatedStep& step)
    : Optimizer(0.0, 0.0), step_s_(0.0) {
  check_step(step);
  step_s_ = step.step_ms * 1e-3 * step.optimizer_share;
  optim::ParamGroup group;
  group.params = std::move(params);
  add_param_group(std::move(group));
}

void EmulatedOptimizer::step() { device_busy(step_s_); }

}  // namespace tandem::bench
