// SGD: argument checks, grouping of parameters by (device, dtype), and dispatch to
// the fused kernels (kernels/cpu/sgd.cpp, kernels/cuda/sgd.cu).
#include "optim/sgd.h"

#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/sgd.h"
#include "kernels/cuda/sgd.h"
#include "optim/step_counts.h"

namespace tandem::optim {
namespace {

void check_options(const SGDOptions& o) {
  auto non_negative = [](const char* name, double v) {
    if (!(v >= 0.0)) {
      throw std::invalid_argument(std::string("[SGD] expected ") + name + " >= 0, got " + std::to_string(v));
    }
  };
  non_negative("lr", o.lr);
  non_negative("momentum", o.momentum);
  non_negative("weight_decay", o.weight_decay);
  if (o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0)) {
    throw std::invalid_argument("[SGD] expected momentum > 0 and dampening = 0 for Nesterov, got momentum " +
                                std::to_string(o.momentum) + " and dampening " + std::to_string(o.dampening));
  }
}

}  // namespace

SGD::SGD(std::vector<Tensor> params, const SGDOptions& options)
    : SGD(std::vector<ParamGroup>{ParamGroup{
              .params = std::move(params), .lr = std::nullopt, .weight_decay = std::nullopt}},
          options) {}

SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& options)
    : Optimizer(options.lr, options.weight_decay), options_(options) {
  check_options(options_);
  for (ParamGroup& g : groups) add_param_group(std::move(g));
}

void SGD::step() { step_impl(Tensor()); }

void SGD::step_unless(const Tensor& found_inf) {
  if (!options_.capturable) Optimizer::step_unless(found_inf);
  check_defined("SGD::step_unless", found_inf, "found_inf");
  step_impl(found_inf);
}

void SGD::step_impl(const Tensor& found_inf) {
  autograd::NoGradGuard no_grad;
  std::vector<Tensor>& buffers = state("momentum_buffer");
  const bool counted = options_.capturable && options_.momentum != 0.0;
  if (counted) step_counts_.resize(flat_index(groups_.size(), 0));

  // Checks every parameter before any update; then builds every batch's kernel argument
  // list (allocating momentum buffers) before any launch. `batches` keeps the tensors alive.
  std::vector<DeviceBatch> batches = grads_by_device("SGD", "sgd");
  const float* skip_if = found_inf_ptr("SGD", found_inf, batches);
  std::vector<std::vector<kernels::SGDTensorRef>> refs_of(batches.size());
  for (size_t b = 0; b < batches.size(); ++b) {
    const bool in_capture = capturing(batches[b].device);
    for (GradItem& item : batches[b].items) {
      if (in_capture)
        check_captured_step("SGD",
                            counted && (!buffers[item.flat].defined() || !step_counts_[item.flat].defined()),
                            "parameter " + std::to_string(item.flat));
      kernels::SGDTensorRef ref;
      ref.param = item.param.data_ptr();
      ref.grad = item.grad.data_ptr();
      ref.numel = item.param.numel();
      ref.lr = item.lr;
      if (options_.capturable) ref.lr_ptr = lr_on_device("SGD", item.group, batches[b].device);
      ref.weight_decay = item.weight_decay;
      if (options_.momentum != 0.0) {
        Tensor& buf = buffers[item.flat];
        // Uninitialised is fine: a parameter's first step writes its buffer.
        ref.first_step = !buf.defined();
        if (counted) {
          // A loaded buffer means the parameter has stepped before.
          Tensor& count = step_counts_[item.flat];
          if (!count.defined()) count = full({1}, buf.defined() ? 1.0 : 0.0, {.dtype = DType::kF64, .device = item.param.device()});
          ref.step_count = count.data<double>();
        }
        if (!buf.defined()) {
          buf = Tensor::empty(item.param.shape(), {.dtype = item.param.dtype(), .device = item.param.device()});
        }
        ref.momentum = buf.data_ptr();
      }
      refs_of[b].push_back(ref);
    }
  }

  for (size_t b = 0; b < batches.size(); ++b) {
    const Device device = batches[b].device;
    const DType dtype = batches[b].dtype;
    const std::vector<kernels::SGDTensorRef>& refs = refs_of[b];
    const auto n = static_cast<int64_t>(refs.size());
    dispatch_device(
        "sgd", device,
        [&] {
          kernels::cpu::sgd_multi_tensor(dtype, refs.data(), n, options_.momentum, options_.dampening,
                                         options_.nesterov, skip_if);
        },
        [&](auto) {
          kernels::cuda::sgd_multi_tensor(dtype, refs.data(), n, options_.momentum, options_.dampening,
                                          options_.nesterov, skip_if, cuda_stream(device));
        });
    if (counted) increment_step_counts(device, refs, skip_if);
  }
  ++step_count_;
}

OptimizerState SGD::state_dict() const {
  OptimizerState out = Optimizer::state_dict();
  // A capturable parameter whose steps were all skipped holds an unwritten buffer.
  for (size_t i = 0; i < step_counts_.size(); ++i) {
    if (step_counts_[i].defined() && step_counts_[i].item() == 0.0) out.tensors.erase("momentum_buffer." + std::to_string(i));
  }
  return out;
}

void SGD::load_state_dict(const OptimizerState& saved) {
  Optimizer::load_state_dict(saved);
  // Capturable counts keep their tensors, as the base keeps the buffers' (a captured graph
  // holds their addresses): a graph captured before the load replays with the loaded state.
  std::vector<Tensor>& buffers = state("momentum_buffer");
  for (size_t i = 0; i < step_counts_.size(); ++i) {
    if (step_counts_[i].defined()) step_counts_[i].fill_(i < buffers.size() && buffers[i].defined() ? 1.0 : 0.0);
  }
}

}  // namespace tandem::optim
