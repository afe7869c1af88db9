// CPU multi-tensor SGD step: one fused pass per element, arithmetic in the parameter's
// own type (as PyTorch's CPU path); the elements of all tensors are split in chunks
// over one OpenMP team.
#include "kernels/cpu/sgd.h"
#include "kernels/cpu/parallel.h"

#include "kernels/common.h"

namespace tandem::kernels::cpu {
namespace {

template <class T>
void sgd_typed(T* p, const T* grad, T* buf, bool first_step, int64_t n, const SGDHyper& h) {
  const T lr = static_cast<T>(h.lr), mu = static_cast<T>(h.momentum), wd = static_cast<T>(h.weight_decay);
  const T keep = static_cast<T>(1.0 - h.dampening);
  const bool use_wd = h.weight_decay != 0.0, use_mu = h.momentum != 0.0, nesterov = h.nesterov;
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    if (use_wd) g = g + wd * p[i];
    if (use_mu) {
      // The first step seeds the buffer with the gradient itself, undamped (torch.optim.SGD).
      T b = first_step ? g : mu * buf[i] + keep * g;
      buf[i] = b;
      g = nesterov ? g + mu * b : b;
    }
    p[i] = p[i] - lr * g;
  }
}

template <class T>
void sgd_multi_typed(const SGDTensorRef* tensors, int64_t count, double momentum, double dampening, bool nesterov) {
  for_each_tensor_piece(
      count, [&](int64_t t) { return tensors[t].numel; },
      [&](int64_t t, int64_t b, int64_t e) {
        const SGDTensorRef& r = tensors[t];
        const SGDHyper h{.lr = r.lr_ptr != nullptr ? *r.lr_ptr : r.lr,
                         .momentum = momentum,
                         .dampening = dampening,
                         .weight_decay = r.weight_decay,
                         .nesterov = nesterov};
        T* buf = r.momentum != nullptr ? static_cast<T*>(r.momentum) + b : nullptr;
        const bool first_step = r.step_count != nullptr ? *r.step_count == 0.0 : r.first_step;
        sgd_typed(static_cast<T*>(r.param) + b, static_cast<const T*>(r.grad) + b, buf, first_step, e - b, h);
      });
}

}  // namespace

void sgd_multi_tensor(DType dtype, const SGDTensorRef* tensors, int64_t count, double momentum, double dampening,
                      bool nesterov, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  switch (dtype) {
    case DType::kF32: sgd_multi_typed<float>(tensors, count, momentum, dampening, nesterov); return;
    case DType::kF64: sgd_multi_typed<double>(tensors, count, momentum, dampening, nesterov); return;
    default: unreachable_dtype("sgd_multi_tensor", dtype);
  }
}

}  // namespace tandem::kernels::cpu
