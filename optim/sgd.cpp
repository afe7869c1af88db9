// SGD: argument checks, grouping of parameters by (device, dtype), and dispatch to
// the fused kernels (kernels/cpu/sgd.cpp, kernels/cuda/sgd.cu).
#include "optim/sgd.h"

#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "kernels/cpu/sgd.h"
#include "kernels/cuda/sgd.h"

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

void SGD::step() {
  autograd::NoGradGuard no_grad;
  std::vector<Tensor>& buffers = state("momentum_buffer");

  // Checks every parameter before any update; then builds every batch's kernel argument
  // list (allocating momentum buffers) before any launch. `batches` keeps the tensors alive.
  std::vector<DeviceBatch> batches = grads_by_device("SGD", "sgd");
  std::vector<std::vector<kernels::SGDTensorRef>> refs_of(batches.size());
  for (size_t b = 0; b < batches.size(); ++b) {
    for (GradItem& item : batches[b].items) {
      kernels::SGDTensorRef ref;
      ref.param = item.param.data_ptr();
      ref.grad = item.grad.data_ptr();
      ref.numel = item.param.numel();
      ref.lr = item.lr;
      ref.weight_decay = item.weight_decay;
      if (options_.momentum != 0.0) {
        Tensor& buf = buffers[item.flat];
        // Uninitialised is fine: a parameter's first step writes its buffer.
        ref.first_step = !buf.defined();
        if (ref.first_step) {
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
    dispatch_device(
        "sgd", device,
        [&] {
          kernels::cpu::sgd_multi_tensor(dtype, refs.data(), static_cast<int64_t>(refs.size()), options_.momentum,
                                         options_.dampening, options_.nesterov);
        },
        [&](auto) {
          kernels::cuda::sgd_multi_tensor(dtype, refs.data(), static_cast<int64_t>(refs.size()), options_.momentum,
                                          options_.dampening, options_.nesterov, cuda_stream(device));
        });
  }
  ++step_count_;
}

}  // namespace tandem::optim
