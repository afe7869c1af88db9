// CPU SGD step: one fused pass per tensor, arithmetic in the parameter's own type
// (as PyTorch's CPU path), parallel over large tensors.
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
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
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

}  // namespace

void sgd_step(DType dtype, void* param, const void* grad, void* momentum_buf, bool first_step, int64_t n,
              const SGDHyper& hyper) {
  switch (dtype) {
    case DType::kF32:
      sgd_typed(static_cast<float*>(param), static_cast<const float*>(grad), static_cast<float*>(momentum_buf),
                first_step, n, hyper);
      return;
    case DType::kF64:
      sgd_typed(static_cast<double*>(param), static_cast<const double*>(grad), static_cast<double*>(momentum_buf),
                first_step, n, hyper);
      return;
    default: unreachable_dtype("sgd_step", dtype);
  }
}

}  // namespace tandem::kernels::cpu
