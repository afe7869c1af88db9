// CPU multi-tensor Adam step: one fused pass per element, arithmetic in the parameter's
// own type with the operation order of PyTorch's single-tensor path; the elements of
// all tensors are split in chunks over one OpenMP team.
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

template <class T>
void adam_multi_typed(const AdamTensorRef* tensors, int64_t count, const AdamHyper& shared) {
  for_each_tensor_piece(
      count, [&](int64_t t) { return tensors[t].numel; },
      [&](int64_t t, int64_t b, int64_t e) {
        const AdamTensorRef& r = tensors[t];
        AdamHyper h = shared;
        h.lr = r.lr_ptr != nullptr ? *r.lr_ptr : r.lr;
        h.weight_decay = r.weight_decay;
        h.step = r.step_count != nullptr ? static_cast<int64_t>(*r.step_count) + 1 : r.step;
        T* v_max = r.max_exp_avg_sq != nullptr ? static_cast<T*>(r.max_exp_avg_sq) + b : nullptr;
        adam_typed(static_cast<T*>(r.param) + b, static_cast<const T*>(r.grad) + b, static_cast<T*>(r.exp_avg) + b,
                   static_cast<T*>(r.exp_avg_sq) + b, v_max, e - b, h);
      });
}

}  // namespace

void adam_multi_tensor(DType dtype, const AdamTensorRef* tensors, int64_t count, double beta1, double beta2, double eps,
                       bool amsgrad, bool decoupled_weight_decay, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  const AdamHyper shared{.beta1 = beta1, .beta2 = beta2, .eps = eps, .decoupled_weight_decay = decoupled_weight_decay,
                         .amsgrad = amsgrad};
  switch (dtype) {
    case DType::kF32: adam_multi_typed<float>(tensors, count, shared); return;
    case DType::kF64: adam_multi_typed<double>(tensors, count, shared); return;
    default: unreachable_dtype("adam_multi_tensor", dtype);
  }
}


}  // namespace tandem::kernels::cpu
