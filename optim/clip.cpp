// clip_grad_norm: checks, grouping of gradients by (device, dtype), the norm kernels
// (kernels/cpu/norm2.cpp, kernels/cuda/norm2.cu) and the scale of every gradient; the
// norm and factor combined on the host, or, clip_grad_norm_on_device, in memory.
#include "optim/clip.h"

#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/norm2.h"
#include "kernels/cuda/norm2.h"
#include "kernels/norm_math.h"
#include "optim/number_text.h"

namespace tandem::optim {
namespace {

using GroupKey = std::tuple<DeviceType, int, DType>;

/// Gradients of one (device, dtype): pointers and sizes as the kernels take them.
struct GradList {
  std::vector<Tensor> grads;  // keeps the storage alive
  std::vector<void*> ptrs;
  std::vector<int64_t> numel;
};

}  // namespace

namespace {

void check_clip_args(double max_norm, double norm_type) {
  if (!(norm_type > 0.0)) {
    throw std::invalid_argument("[clip_grad_norm] expected norm_type > 0 (or infinity), got " + number_text(norm_type));
  }
  if (!(max_norm >= 0.0)) throw std::invalid_argument("[clip_grad_norm] expected max_norm >= 0, got " + number_text(max_norm));
}

/// The defined gradients of `params` by (device, dtype), checked.
std::map<GroupKey, GradList> gradients_by_group(const std::vector<Tensor>& params) {
  std::map<GroupKey, GradList> lists;
  for (size_t i = 0; i < params.size(); ++i) {
    check_defined("clip_grad_norm", params[i], "parameter");
    Tensor g = params[i].grad();
    if (!g.defined()) continue;
    if (g.dtype() != DType::kF32 && g.dtype() != DType::kF64 && g.dtype() != DType::kF16 &&
        g.dtype() != DType::kBF16) {
      throw_unsupported("clip_grad_norm", g.device(), g.dtype());
    }
    const Device d = g.device();
    GradList& list = lists[GroupKey{d.type, d.index, g.dtype()}];
    list.ptrs.push_back(g.data_ptr());
    list.numel.push_back(g.numel());
    list.grads.push_back(std::move(g));
  }
  return lists;
}

Device device_of(const GroupKey& key) { return Device{std::get<0>(key), std::get<1>(key)}; }

/// Σ|g|^p (or max|g|) over one group's gradients on the CPU, in f64.
double cpu_accumulator(const GradList& list, DType dtype, double norm_type) {
  const kernels::NormKind kind = kernels::norm_kind(norm_type);
  double part = 0.0;
  for (size_t i = 0; i < list.grads.size(); ++i) {
    part = kernels::norm_combine(kind, part, kernels::cpu::norm_accumulate(dtype, list.ptrs[i], list.numel[i], norm_type));
  }
  return part;
}

/// A group's accumulator on the GPU: workspace[0] of a fresh multi_tensor_norm workspace.
Tensor cuda_accumulator(const GradList& list, Device device, DType dtype, double norm_type) {
  const int64_t count = static_cast<int64_t>(list.ptrs.size());
  const int64_t size = kernels::cuda::multi_tensor_norm_workspace(list.numel.data(), count);
  Tensor workspace = Tensor::empty({size}, {.dtype = DType::kF64, .device = device});
  kernels::cuda::multi_tensor_norm(dtype, list.ptrs.data(), list.numel.data(), count, norm_type,
                                   static_cast<double*>(workspace.data_ptr()), cuda_stream(device));
  return workspace;
}

}  // namespace

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, double norm_type, bool error_if_nonfinite) {
  const double inf = std::numeric_limits<double>::infinity();
  check_clip_args(max_norm, norm_type);
  std::map<GroupKey, GradList> lists = gradients_by_group(params);

  // Accumulate per (device, dtype), then combine on the host.
  const kernels::NormKind kind = kernels::norm_kind(norm_type);
  double acc = 0.0;
  for (auto& [key, list] : lists) {
    const Device device = device_of(key);
    const DType dtype = std::get<2>(key);
    double part = 0.0;
    dispatch_device(
        "clip_grad_norm", device, [&] { part = cpu_accumulator(list, dtype, norm_type); },
        [&](auto) {
          // The one synchronisation of this group.
          part = cuda_accumulator(list, device, dtype, norm_type).narrow(0, 0, 1).item();
        });
    acc = kernels::norm_combine(kind, acc, part);
  }
  const double total = kernels::norm_from_accumulator(kind, acc, norm_type);
  if (error_if_nonfinite && !std::isfinite(total)) {
    throw std::runtime_error("[clip_grad_norm] expected a finite total norm of order " +
                             (norm_type == inf ? std::string("inf") : number_text(norm_type)) +
                             " of the gradients, got " + number_text(total) +
                             "; pass error_if_nonfinite = false to clip anyway");
  }
  // PyTorch multiplies by min(coef, 1) unconditionally; skipping the ×1 changes no
  // value. A NaN norm still scales (every gradient becomes NaN), as in PyTorch.
  const double factor = kernels::clip_factor(max_norm, total);
  if (factor == 1.0) return total;
  autograd::NoGradGuard no_grad;
  for (auto& [key, list] : lists) {
    const Device device = device_of(key);
    const DType dtype = std::get<2>(key);
    dispatch_device(
        "clip_grad_norm", device,
        [&] {
          for (size_t i = 0; i < list.grads.size(); ++i) {
            kernels::cpu::scale_inplace(dtype, list.ptrs[i], list.numel[i], factor);
          }
        },
        [&](auto) {
          kernels::cuda::multi_tensor_scale(dtype, list.ptrs.data(), list.numel.data(),
                                            static_cast<int64_t>(list.ptrs.size()), factor, cuda_stream(device));
        });
  }
  return total;
}

Tensor clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  check_clip_args(max_norm, norm_type);
  std::map<GroupKey, GradList> lists = gradients_by_group(params);
  Device device = params.empty() ? Device::cpu() : params.front().device();
  if (!lists.empty()) device = device_of(lists.begin()->first);
  for (const auto& [key, list] : lists) {
    if (device_of(key) != device) {
      throw std::invalid_argument("[clip_grad_norm_on_device] expected every gradient on one device, got " +
                                  device.str() + " and " + device_of(key).str() + " (use clip_grad_norm)");
    }
  }
  if (lists.size() > static_cast<size_t>(kernels::cuda::kClipMaxParts)) {
    throw std::invalid_argument("[clip_grad_norm_on_device] expected gradients of at most " +
                                std::to_string(kernels::cuda::kClipMaxParts) + " dtypes, got " +
                                std::to_string(lists.size()));
  }
  autograd::NoGradGuard no_grad;
  const TensorOptions f64{.dtype = DType::kF64, .device = device};
  Tensor total = zeros({}, f64);
  Tensor factor = Tensor::empty({}, f64);
  if (lists.empty()) return total;
  // One accumulator per dtype, then the norm and the factor in memory, then the scale
  // reading the factor: nothing is read back to the host.
  std::vector<Tensor> parts;
  std::vector<const double*> part_ptrs;
  for (auto& [key, list] : lists) {
    const DType dtype = std::get<2>(key);
    dispatch_device(
        "clip_grad_norm_on_device", device,
        [&] { parts.push_back(full({1}, cpu_accumulator(list, dtype, norm_type), f64)); },
        [&](auto) { parts.push_back(cuda_accumulator(list, device, dtype, norm_type)); });
    part_ptrs.push_back(static_cast<const double*>(parts.back().data_ptr()));
  }
  auto* total_ptr = static_cast<double*>(total.data_ptr());
  auto* factor_ptr = static_cast<double*>(factor.data_ptr());
  const auto n = static_cast<int64_t>(part_ptrs.size());
  dispatch_device(
      "clip_grad_norm_on_device", device,
      [&] { kernels::cpu::clip_norm_finish(part_ptrs.data(), n, norm_type, max_norm, total_ptr, factor_ptr); },
      [&](auto) {
        kernels::cuda::clip_norm_finish(part_ptrs.data(), n, norm_type, max_norm, total_ptr, factor_ptr,
                                        cuda_stream(device));
      });
  for (auto& [key, list] : lists) {
    const DType dtype = std::get<2>(key);
    dispatch_device(
        "clip_grad_norm_on_device", device,
        [&] {
          if (*factor_ptr == 1.0) return;
          for (size_t i = 0; i < list.grads.size(); ++i) {
            kernels::cpu::scale_inplace(dtype, list.ptrs[i], list.numel[i], *factor_ptr);
          }
        },
        [&](auto) {
          kernels::cuda::multi_tensor_scale_by(dtype, list.ptrs.data(), list.numel.data(),
                                               static_cast<int64_t>(list.ptrs.size()), factor_ptr,
                                               cuda_stream(device));
        });
  }
  return total;
}

}  // namespace tandem::optim
