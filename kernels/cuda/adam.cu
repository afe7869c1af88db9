// Multi-tensor Adam: the launch plan of multi_tensor.cuh packs (param, grad, m, v,
// v̂max) of up to kAdamMaxTensors tensors with their host-computed step size, bias
// correction and weight-decay coefficient; each block updates one 64Ki-element chunk.
#include "kernels/cuda/adam.h"

#include "kernels/cpu/adam.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/multi_tensor.cuh"

namespace tandem::kernels::cuda {
namespace {

constexpr int kAdamBlockSize = 512;
static_assert(kAdamChunkSize == kMultiTensorChunkSize, "adam.h states the chunk size of multi_tensor.cuh");

/// Per-tensor scalars (kernels::AdamCoefficients), computed on the host in f64 so the
/// kernel does no pow() and each tensor keeps its own step count.
struct AdamMeta {
  double step_size[kAdamMaxTensors];
  double bias_correction2_sqrt[kAdamMaxTensors];
  double weight_decay[kAdamMaxTensors];
  void move(int from, int to) {
    step_size[to] = step_size[from];
    bias_correction2_sqrt[to] = bias_correction2_sqrt[from];
    weight_decay[to] = weight_decay[from];
  }
};

// Lists: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq.
// 32·(5·8 + 8) + 320·(1 + 4) + 32·3·8 = 3904 bytes, under the classic 4 KiB limit.
using AdamLaunchArgs = TensorListArgs<5, kAdamMaxTensors, kAdamMaxBlocks, AdamMeta>;
static_assert(sizeof(AdamLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

/// Shared hyperparameters in the compute type.
template <class T>
struct AdamShared {
  T beta1, beta2, keep1, keep2, eps;
  bool amsgrad, decoupled;
};

// Same operation order as kernels/cpu/adam.cpp (PyTorch's single-tensor path);
// __grid_constant__ keeps the argument struct in parameter memory.
template <class T>
__global__ void __launch_bounds__(kAdamBlockSize)
    adam_multi_tensor_kernel(const __grid_constant__ AdamLaunchArgs args, AdamShared<T> s) {
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  T* __restrict__ p = static_cast<T*>(args.ptr[0][t]);
  const T* __restrict__ grad = static_cast<const T*>(args.ptr[1][t]);
  T* __restrict__ m = static_cast<T*>(args.ptr[2][t]);
  T* __restrict__ v = static_cast<T*>(args.ptr[3][t]);
  T* __restrict__ v_max = static_cast<T*>(args.ptr[4][t]);
  const T neg_step_size = static_cast<T>(-args.meta.step_size[t]);
  const T bc2_sqrt = static_cast<T>(args.meta.bias_correction2_sqrt[t]);
  const T wd = static_cast<T>(args.meta.weight_decay[t]);
  // Decoupled: wd is the factor 1 - lr·wd (1 means no decay); L2: the coefficient.
  const bool decoupled = s.decoupled && args.meta.weight_decay[t] != 1.0;
  const bool l2 = !s.decoupled && args.meta.weight_decay[t] != 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kAdamBlockSize) {
    T g = grad[i];
    T w = p[i];
    if (decoupled) w = w * wd;
    if (l2) g = g + wd * w;
    const T mi = m[i] * s.beta1 + s.keep1 * g;
    const T vi = v[i] * s.beta2 + s.keep2 * g * g;
    m[i] = mi;
    v[i] = vi;
    T v_hat = vi;
    if (s.amsgrad) {
      const T old = v_max[i];
      v_hat = (vi > old || vi != vi) ? vi : old;  // NaN propagates, as torch.maximum
      v_max[i] = v_hat;
    }
    const T denom = sqrt(v_hat) / bc2_sqrt + s.eps;
    p[i] = w + neg_step_size * mi / denom;
  }
}

/// Stores tensor i in `slot` with its coefficients; returns its size.
int64_t fill_adam_slot(const AdamTensorRef& ref, const AdamHyper& shared, AdamLaunchArgs& args, int slot) {
  args.ptr[0][slot] = ref.param;
  args.ptr[1][slot] = const_cast<void*>(ref.grad);
  args.ptr[2][slot] = ref.exp_avg;
  args.ptr[3][slot] = ref.exp_avg_sq;
  args.ptr[4][slot] = ref.max_exp_avg_sq;
  AdamHyper h = shared;
  h.lr = ref.lr;
  h.weight_decay = ref.weight_decay;
  h.step = ref.step;
  const AdamCoefficients c = adam_coefficients(h);
  args.meta.step_size[slot] = c.step_size;
  args.meta.bias_correction2_sqrt[slot] = c.bias_correction2_sqrt;
  args.meta.weight_decay[slot] = c.weight_decay;
  return ref.numel;
}

}  // namespace

void adam_multi_tensor(DType dtype, const AdamTensorRef* tensors, int64_t count, double beta1, double beta2,
                       double eps, bool amsgrad, bool decoupled_weight_decay, cudaStream_t stream) {
  const AdamHyper shared{.beta1 = beta1, .beta2 = beta2, .eps = eps, .decoupled_weight_decay = decoupled_weight_decay,
                         .amsgrad = amsgrad};
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const AdamShared<T> s{static_cast<T>(beta1), static_cast<T>(beta2), static_cast<T>(1.0 - beta1),
                          static_cast<T>(1.0 - beta2), static_cast<T>(eps), amsgrad, decoupled_weight_decay};
    plan_tensor_list_launches<AdamLaunchArgs>(
        count,
        [&](int64_t i, AdamLaunchArgs& args, int slot) { return fill_adam_slot(tensors[i], shared, args, slot); },
        [&](const AdamLaunchArgs& args, int blocks, int64_t) {
          adam_multi_tensor_kernel<T><<<blocks, kAdamBlockSize, 0, stream>>>(args, s);
          CUDA_CHECK_LAUNCH();
        });
  };
  switch (dtype) {
    case DType::kF32: run(float{}); return;
    case DType::kF64: run(double{}); return;
    default: unreachable_dtype("adam_multi_tensor", dtype);
  }
}

int64_t adam_multi_tensor_launches(const AdamTensorRef* tensors, int64_t count) {
  int64_t launches = 0;
  const AdamHyper shared{};
  plan_tensor_list_launches<AdamLaunchArgs>(
      count, [&](int64_t i, AdamLaunchArgs& args, int slot) { return fill_adam_slot(tensors[i], shared, args, slot); },
      [&](const AdamLaunchArgs&, int, int64_t) { ++launches; });
  return launches;
}

}  // namespace tandem::kernels::cuda
