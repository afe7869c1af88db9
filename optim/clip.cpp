// clip_grad_norm: checks, grouping of gradients by (device, dtype), the norm kernels
// (kernels/cpu/norm2.cpp, kernels/cuda/norm2.cu) and the scale of every gradient.
#include "optim/clip.h"

#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "kernels/cpu/norm2.h"
#include "kernels/cuda/norm2.h"
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

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, double norm_type, bool error_if_nonfinite) {
  const double inf = std::numeric_limits<double>::infinity();
  if (!(norm_type > 0.0)) {
    throw std::invalid_argument("[clip_grad_norm] expected norm_type > 0 (or infinity), got " + number_text(norm_type));
  }
  if (!(max_norm >= 0.0)) throw std::invalid_argument("[clip_grad_norm] expected max_norm >= 0, got " + number_text(max_norm));

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

  // Accumulate per (device, dtype), then combine on the host: Σ of the power sums, or
  // the maximum (a NaN anywhere makes the total NaN, as in PyTorch).
  const kernels::NormKind kind = kernels::norm_kind(norm_type);
  double acc = 0.0;
  for (auto& [key, list] : lists) {
    const Device device{std::get<0>(key), std::get<1>(key)};
    const DType dtype = std::get<2>(key);
    double part = 0.0;
    dispatch_device(
        "clip_grad_norm", device,
        [&] {
          for (size_t i = 0; i < list.grads.size(); ++i) {
            const double v = kernels::cpu::norm_accumulate(dtype, list.ptrs[i], list.numel[i], norm_type);
            part = kind == kernels::NormKind::kMaxAbs ? ((v > part || v != v) ? v : part) : part + v;
          }
        },
        [&](auto) {
          const int64_t count = static_cast<int64_t>(list.ptrs.size());
          const int64_t size = kernels::cuda::multi_tensor_norm_workspace(list.numel.data(), count);
          Tensor workspace = Tensor::empty({size}, {.dtype = DType::kF64, .device = device});
          kernels::cuda::multi_tensor_norm(dtype, list.ptrs.data(), list.numel.data(), count, norm_type,
                                           static_cast<double*>(workspace.data_ptr()), cuda_stream(device));
          part = workspace.narrow(0, 0, 1).item();  // the one synchronisation of this group
        });
    acc = kind == kernels::NormKind::kMaxAbs ? ((part > acc || part != part) ? part : acc) : acc + part;
  }
  const double total = kind == kernels::NormKind::kMaxAbs  ? acc
                       : kind == kernels::NormKind::kSquares ? std::sqrt(acc)
                                                             : std::pow(acc, 1.0 / norm_type);
  if (error_if_nonfinite && !std::isfinite(total)) {
    throw std::runtime_error("[clip_grad_norm] expected a finite total norm of order " +
                             (norm_type == inf ? std::string("inf") : number_text(norm_type)) +
                             " of the gradients, got " + number_text(total) +
                             "; pass error_if_nonfinite = false to clip anyway");
  }

  const double clip_coef = max_norm / (total + 1e-6);
  // PyTorch multiplies by min(coef, 1) unconditionally; skipping the ×1 changes no
  // value. A NaN norm still scales (every gradient becomes NaN), as in PyTorch.
  if (clip_coef >= 1.0) return total;
  autograd::NoGradGuard no_grad;
  for (auto& [key, list] : lists) {
    const Device device{std::get<0>(key), std::get<1>(key)};
    const DType dtype = std::get<2>(key);
    dispatch_device(
        "clip_grad_norm", device,
        [&] {
          for (size_t i = 0; i < list.grads.size(); ++i) {
            kernels::cpu::scale_inplace(dtype, list.ptrs[i], list.numel[i], clip_coef);
          }
        },
        [&](auto) {
          kernels::cuda::multi_tensor_scale(dtype, list.ptrs.data(), list.numel.data(),
                                            static_cast<int64_t>(list.ptrs.size()), clip_coef, cuda_stream(device));
        });
  }
  return total;
}

}  // namespace tandem::optim
