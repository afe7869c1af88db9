// Adam / AdamW: argument checks, per-parameter step counts and moments, grouping of
// parameters by (device, dtype), and dispatch to the fused kernels
// (kernels/cpu/adam.cpp, kernels/cuda/adam.cu).
#include "optim/adam.h"

#include <cmath>
#include <set>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/adam.h"
#include "kernels/cuda/adam.h"
#include "optim/step_counts.h"
#include "optim/number_text.h"

namespace tandem::optim {
namespace {

void check_options(const char* name, const AdamOptions& o) {
  auto fail = [&](const std::string& expected, double got) {
    throw std::invalid_argument(std::string("[") + name + "] expected " + expected + ", got " + number_text(got));
  };
  if (!(o.lr >= 0.0)) fail("lr >= 0", o.lr);
  if (!(o.eps >= 0.0)) fail("eps >= 0", o.eps);
  if (!(o.betas[0] >= 0.0 && o.betas[0] < 1.0)) fail("betas[0] in [0, 1)", o.betas[0]);
  if (!(o.betas[1] >= 0.0 && o.betas[1] < 1.0)) fail("betas[1] in [0, 1)", o.betas[1]);
  if (!(o.weight_decay >= 0.0)) fail("weight_decay >= 0", o.weight_decay);
}

AdamOptions as_adam_options(const AdamWOptions& o) {
  return {.lr = o.lr,
          .betas = o.betas,
          .eps = o.eps,
          .weight_decay = o.weight_decay,
          .amsgrad = o.amsgrad,
          .capturable = o.capturable};
}

const std::string kStepPrefix = "step.";

}  // namespace

Adam::Adam(std::vector<Tensor> params, const AdamOptions& options)
    : Adam(std::vector<ParamGroup>{ParamGroup{
               .params = std::move(params), .lr = std::nullopt, .weight_decay = std::nullopt}},
           options, false) {}

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& options) : Adam(std::move(groups), options, false) {}

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& options, bool decoupled_weight_decay)
    : Optimizer(options.lr, options.weight_decay), options_(options), decoupled_(decoupled_weight_decay) {
  check_options(name(), options_);
  for (ParamGroup& g : groups) add_param_group(std::move(g));
}

AdamW::AdamW(std::vector<Tensor> params, const AdamWOptions& options)
    : Adam(std::vector<ParamGroup>{ParamGroup{
               .params = std::move(params), .lr = std::nullopt, .weight_decay = std::nullopt}},
           as_adam_options(options), true) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options)
    : Adam(std::move(groups), as_adam_options(options), true) {}

std::vector<std::string> Adam::state_kinds() const {
  if (options_.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

void Adam::step() { step_impl(Tensor()); }

void Adam::step_unless(const Tensor& found_inf) {
  if (!options_.capturable) Optimizer::step_unless(found_inf);
  check_defined((std::string(name()) + "::step_unless").c_str(), found_inf, "found_inf");
  step_impl(found_inf);
}

void Adam::step_impl(const Tensor& found_inf) {
  autograd::NoGradGuard no_grad;
  std::vector<Tensor>& exp_avg = state("exp_avg");
  std::vector<Tensor>& exp_avg_sq = state("exp_avg_sq");
  std::vector<Tensor>* max_exp_avg_sq = options_.amsgrad ? &state("max_exp_avg_sq") : nullptr;
  steps_.resize(flat_index(groups_.size(), 0), 0);
  if (options_.capturable) step_counts_.resize(steps_.size());

  // Checks every parameter before any update; then builds every batch's kernel argument
  // list (allocating moments) before any launch. `batches` and the state keep the tensors alive.
  std::vector<DeviceBatch> batches = grads_by_device(name(), "adam");
  const float* skip_if = found_inf_ptr(name(), found_inf, batches);
  std::vector<std::vector<kernels::AdamTensorRef>> refs_of(batches.size());
  for (size_t b = 0; b < batches.size(); ++b) {
    const bool in_capture = capturing(batches[b].device);
    for (GradItem& item : batches[b].items) {
      if (in_capture) {
        const bool no_state =
            !exp_avg[item.flat].defined() || (options_.capturable && !step_counts_[item.flat].defined());
        check_captured_step(name(), no_state, "parameter " + std::to_string(item.flat));
      }
      const TensorOptions like{.dtype = item.param.dtype(), .device = item.param.device()};
      Tensor& m = exp_avg[item.flat];
      Tensor& v = exp_avg_sq[item.flat];
      if (!m.defined()) m = zeros(item.param.shape(), like);
      if (!v.defined()) v = zeros(item.param.shape(), like);
      kernels::AdamTensorRef ref;
      ref.param = item.param.data_ptr();
      ref.grad = item.grad.data_ptr();
      ref.exp_avg = m.data_ptr();
      ref.exp_avg_sq = v.data_ptr();
      if (max_exp_avg_sq) {
        Tensor& v_max = (*max_exp_avg_sq)[item.flat];
        if (!v_max.defined()) v_max = zeros(item.param.shape(), like);
        ref.max_exp_avg_sq = v_max.data_ptr();
      }
      ref.numel = item.param.numel();
      ref.lr = item.lr;
      ref.weight_decay = item.weight_decay;
      ref.step = ++steps_[item.flat];
      if (options_.capturable) {
        ref.lr_ptr = lr_on_device(name(), item.group, batches[b].device);
        Tensor& count = step_counts_[item.flat];
        if (!count.defined()) count = full({1}, static_cast<double>(ref.step - 1), {.dtype = DType::kF64, .device = item.param.device()});
        ref.step_count = count.data<double>();
      }
      refs_of[b].push_back(ref);
    }
  }

  const double beta1 = options_.betas[0], beta2 = options_.betas[1];
  for (size_t b = 0; b < batches.size(); ++b) {
    const Device device = batches[b].device;
    const DType dtype = batches[b].dtype;
    const std::vector<kernels::AdamTensorRef>& refs = refs_of[b];
    const auto n = static_cast<int64_t>(refs.size());
    dispatch_device(
        "adam", device,
        [&] {
          kernels::cpu::adam_multi_tensor(dtype, refs.data(), n, beta1, beta2, options_.eps, options_.amsgrad,
                                          decoupled_, skip_if);
        },
        [&](auto) {
          kernels::cuda::adam_multi_tensor(dtype, refs.data(), n, beta1, beta2, options_.eps, options_.amsgrad,
                                           decoupled_, skip_if, cuda_stream(device));
        });
    // After the step read them (stream order): the counts move on by one.
    if (options_.capturable) increment_step_counts(device, refs, skip_if);
  }
  ++step_count_;
}

int64_t Adam::param_step(size_t flat) const {
  if (flat < step_counts_.size() && step_counts_[flat].defined()) return static_cast<int64_t>(step_counts_[flat].item());
  return flat < steps_.size() ? steps_[flat] : 0;
}

OptimizerState Adam::state_dict() const {
  OptimizerState out = Optimizer::state_dict();
  for (size_t i = 0; i < steps_.size(); ++i) {
    // Capturable counts are read from their device: graph replays step them there.
    const int64_t step = param_step(i);
    if (step > 0) {
      out.scalars[kStepPrefix + std::to_string(i)] = static_cast<double>(step);
    } else {
      // Every step of it skipped (step_unless): its zero moments are no state yet.
      for (const std::string& kind : state_kinds()) out.tensors.erase(kind + "." + std::to_string(i));
    }
  }
  return out;
}

void Adam::load_state_dict(const OptimizerState& saved) {
  const size_t total = flat_index(groups_.size(), 0);
  // A parameter has been stepped iff it has a step count; then it must have its moments.
  std::vector<std::string> problems;
  std::vector<int64_t> steps(total, 0);
  OptimizerState base = saved;
  for (auto it = base.scalars.begin(); it != base.scalars.end();) {
    if (it->first.rfind(kStepPrefix, 0) != 0) {
      ++it;
      continue;
    }
    const std::string index = it->first.substr(kStepPrefix.size());
    const double value = it->second;
    size_t flat = total;
    if (!index.empty() && index.size() < 19 && index.find_first_not_of("0123456789") == std::string::npos) {
      flat = static_cast<size_t>(std::stoull(index));
    }
    if (flat >= total) {
      problems.push_back("unexpected scalar " + it->first);
    } else if (!(value >= 1.0 && value == std::floor(value))) {
      problems.push_back("scalar " + it->first + ": expected a step count >= 1, got " + number_text(value));
    } else {
      steps[flat] = static_cast<int64_t>(value);
    }
    it = base.scalars.erase(it);
  }
  for (size_t i = 0; i < total; ++i) {
    const std::string index = std::to_string(i);
    bool any_tensor = false;
    for (const std::string& kind : state_kinds()) {
      const bool has_tensor = saved.tensors.count(kind + "." + index) > 0;
      any_tensor = any_tensor || has_tensor;
      if (steps[i] > 0 && !has_tensor) problems.push_back("missing tensor " + kind + "." + index);
    }
    if (any_tensor && !saved.scalars.count(kStepPrefix + index)) problems.push_back("missing scalar step." + index);
  }
  if (!problems.empty()) {
    std::string msg = std::string("[") + name() + "::load_state_dict] state does not match this optimizer (" +
                      std::to_string(total) + " parameters): ";
    for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw std::invalid_argument(msg);
  }
  Optimizer::load_state_dict(base);  // checks the rest; throws before changing anything
  steps_ = std::move(steps);
  // Capturable counts keep their tensors, as the base keeps the buffers' (a captured graph
  // holds their addresses): a graph captured before the load replays with the loaded state.
  for (size_t i = 0; i < step_counts_.size(); ++i) {
    if (step_counts_[i].defined()) step_counts_[i].fill_(static_cast<double>(steps_[i]));
  }
}

}  // namespace tandem::optim
