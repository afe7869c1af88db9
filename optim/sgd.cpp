// SGD: argument checks, grouping of parameters by (device, dtype), and dispatch to
// the fused kernels (kernels/cpu/sgd.cpp, kernels/cuda/sgd.cu).
#include "optim/sgd.h"

#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

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

using GroupKey = std::tuple<DeviceType, int, DType>;

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

  // Every check runs before any update, so a bad parameter leaves all of them untouched.
  struct Item {
    Tensor param, grad;
    size_t flat;
    double lr, weight_decay;
  };
  std::vector<Item> items;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& group = groups_[g];
    for (size_t i = 0; i < group.params.size(); ++i) {
      const Tensor& p = group.params[i];
      Tensor grad = p.grad();
      if (!grad.defined()) continue;
      const std::string where = "parameter " + std::to_string(i) + " of group " + std::to_string(g) + " (shape " +
                                shape_str(p.shape()) + ")";
      if (!(grad.device() == p.device())) {
        throw std::invalid_argument("[SGD] expected the gradient of " + where + " on " + p.device().str() +
                                    " like the parameter, got it on " + grad.device().str());
      }
      if (grad.dtype() != p.dtype() || grad.shape() != p.shape()) {
        throw std::invalid_argument("[SGD] expected the gradient of " + where + " to be " +
                                    std::string(dtype_name(p.dtype())) + " " + shape_str(p.shape()) + ", got " +
                                    std::string(dtype_name(grad.dtype())) + " " + shape_str(grad.shape()));
      }
      if (p.dtype() != DType::kF32 && p.dtype() != DType::kF64) throw_unsupported("sgd", p.device(), p.dtype());
      items.push_back({p, grad, flat_index(g, i), group.lr.value(), group.weight_decay.value()});
    }
  }

  // One kernel argument list per (device, dtype); `items` keeps the tensors alive.
  std::map<GroupKey, std::vector<kernels::cuda::SGDTensorRef>> by_device;
  for (Item& item : items) {
    kernels::cuda::SGDTensorRef ref;
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
    const Device d = item.param.device();
    by_device[GroupKey{d.type, d.index, item.param.dtype()}].push_back(ref);
  }

  for (auto& [key, refs] : by_device) {
    const Device device{std::get<0>(key), std::get<1>(key)};
    const DType dtype = std::get<2>(key);
    dispatch_device(
        "sgd", device,
        [&] {
          for (const auto& ref : refs) {
            kernels::SGDHyper hyper{.lr = ref.lr, .momentum = options_.momentum, .dampening = options_.dampening,
                                    .weight_decay = ref.weight_decay, .nesterov = options_.nesterov};
            kernels::cpu::sgd_step(dtype, ref.param, ref.grad, ref.momentum, ref.first_step, ref.numel, hyper);
          }
        },
        [&](auto) {
          kernels::cuda::sgd_multi_tensor(dtype, refs.data(), static_cast<int64_t>(refs.size()), options_.momentum,
                                          options_.dampening, options_.nesterov, cuda_stream(device));
        });
  }
  ++step_count_;
}

}  // namespace tandem::optim
