// CPU Adam step: one fused pass per tensor, arithmetic in the parameter's own type
// with the operation order of PyTorch's single-tensor path, parallel over large tensors.
#include "kernels/cpu/adam.h"

#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

template <class T>
void adam_typed(T* p, const T* grad, T* m, T* v, T* v_max, int64_t n, const AdamHyper& h) {
  const AdamCoefficients c = adam_coefficients(h);
  const T beta1 = static_cast<T>(h.beta1), beta2 = static_cast<T>(h.beta2);
  const T keep1 = static_cast<T>(1.0 - h.beta1), keep2 = static_cast<T>(1.0 - h.beta2);
  const T eps = static_cast<T>(h.eps), wd = static_cast<T>(c.weight_decay);
  const T neg_step_size = static_cast<T>(-c.step_size), bc2_sqrt = static_cast<T>(c.bias_correction2_sqrt);
  const bool decoupled = h.decoupled_weight_decay && h.weight_decay != 0.0;
  const bool l2 = !h.decoupled_weight_decay && h.weight_decay != 0.0;
  const bool amsgrad = h.amsgrad;
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    T w = p[i];
    if (decoupled) w = w * wd;
    if (l2) g = g + wd * w;
    const T mi = m[i] * beta1 + keep1 * g;
    const T vi = v[i] * beta2 + keep2 * g * g;
    m[i] = mi;
    v[i] = vi;
    T v_hat = vi;
    if (amsgrad) {
      // NaN propagates, as torch.maximum does.
      v_hat = (vi > v_max[i] || vi != vi) ? vi : v_max[i];
      v_max[i] = v_hat;
    }
    const T denom = std::sqrt(v_hat) / bc2_sqrt + eps;
    p[i] = w + neg_step_size * mi / denom;
  }
}

}  // namespace

void adam_step(DType dtype, void* param, const void* grad, void* exp_avg, void* exp_avg_sq, void* max_exp_avg_sq,
               int64_t n, const AdamHyper& hyper) {
  switch (dtype) {
    case DType::kF32:
      adam_typed(static_cast<float*>(param), static_cast<const float*>(grad), static_cast<float*>(exp_avg),
                 static_cast<float*>(exp_avg_sq), static_cast<float*>(max_exp_avg_sq), n, hyper);
      return;
    case DType::kF64:
      adam_typed(static_cast<double*>(param), static_cast<const double*>(grad), static_cast<double*>(exp_avg),
                 static_cast<double*>(exp_avg_sq), static_cast<double*>(max_exp_avg_sq), n, hyper);
      return;
    default: unreachable_dtype("adam_step", dtype);
  }
}

}  // namespace tandem::kernels::cpu
