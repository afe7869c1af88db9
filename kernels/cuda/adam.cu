// Multi-tensor Adam: the launch plan of multi_tensor.cuh packs (param, grad, m, v,
// v̂max) of up to kAdamMaxTensors tensors with their host-computed step size, bias
// correction and weight-decay coefficient (or, capturable, the addresses of their lr
// and step count, and their weight decay); each block updates one 64Ki-element chunk.
#include "kernels/cuda/adam.h"

#include <stdexcept>
#include <type_traits>

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

/// Capturable steps: the lr and the step counts are read from device memory at run time
/// (and the bias corrections and AdamW's decay factor computed from them), so they are
/// right in every replay of a captured graph. weight_decay is the option itself.
struct AdamCapturableMeta {
  const double* lr[kAdamMaxTensors];
  const double* step_count[kAdamMaxTensors];
  double weight_decay[kAdamMaxTensors];
  void move(int from, int to) {
    lr[to] = lr[from];
    step_count[to] = step_count[from];
    weight_decay[to] = weight_decay[from];
  }
};

// Lists: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq.
// 32·(5·8 + 8) + 320·(1 + 4) + 32·3·8 = 3904 bytes, under the classic 4 KiB limit.
using AdamLaunchArgs = TensorListArgs<5, kAdamMaxTensors, kAdamMaxBlocks, AdamMeta>;
using AdamCapturableLaunchArgs = TensorListArgs<5, kAdamMaxTensors, kAdamMaxBlocks, AdamCapturableMeta>;
static_assert(sizeof(AdamLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");
static_assert(sizeof(AdamCapturableLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

/// Shared hyperparameters in the compute type (β1, β2 also in f64 for the capturable
/// bias corrections, computed in f64 as on the host).
template <class T>
struct AdamShared {
  T beta1, beta2, keep1, keep2, eps;
  bool amsgrad, decoupled;
  double beta1_f64, beta2_f64;
};

/// The step size lr/(1-β1^t), sqrt(1-β2^t) and the weight-decay coefficient (AdamW:
/// the factor 1 - lr·wd) of tensor slot t.
template <class T>
__device__ void adam_step_coefficients(const AdamLaunchArgs& args, const AdamShared<T>&, int t, double& step_size,
                                       double& bc2_sqrt, double& weight_decay) {
  step_size = args.meta.step_size[t];
  bc2_sqrt = args.meta.bias_correction2_sqrt[t];
  weight_decay = args.meta.weight_decay[t];
}
template <class T>
__device__ void adam_step_coefficients(const AdamCapturableLaunchArgs& args, const AdamShared<T>& s, int t,
                                       double& step_size, double& bc2_sqrt, double& weight_decay) {
  // Every thread reads the same lr and count (cached loads) and does the same two pow().
  const double lr = *args.meta.lr[t];
  const double step = *args.meta.step_count[t] + 1.0;
  step_size = lr / (1.0 - pow(s.beta1_f64, step));
  bc2_sqrt = sqrt(1.0 - pow(s.beta2_f64, step));
  // Rounded as the host's adam_coefficients: the product first (no fused multiply-add).
  const double wd = args.meta.weight_decay[t];
  weight_decay = s.decoupled ? __dsub_rn(1.0, __dmul_rn(lr, wd)) : wd;
}

// Same operation order as kernels/cpu/adam.cpp (PyTorch's single-tensor path);
// __grid_constant__ keeps the argument struct in parameter memory.
template <class T, class Args>
__global__ void __launch_bounds__(kAdamBlockSize)
    adam_multi_tensor_kernel(const __grid_constant__ Args args, AdamShared<T> s, const float* __restrict__ found_inf) {
  // A skipped step (GradScaler found an inf/NaN gradient): every block reads the flag.
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  T* __restrict__ p = static_cast<T*>(args.ptr[0][t]);
  const T* __restrict__ grad = static_cast<const T*>(args.ptr[1][t]);
  T* __restrict__ m = static_cast<T*>(args.ptr[2][t]);
  T* __restrict__ v = static_cast<T*>(args.ptr[3][t]);
  T* __restrict__ v_max = static_cast<T*>(args.ptr[4][t]);
  double step_size_f64, bc2_sqrt_f64, wd_f64;
  adam_step_coefficients(args, s, t, step_size_f64, bc2_sqrt_f64, wd_f64);
  const T neg_step_size = static_cast<T>(-step_size_f64);
  const T bc2_sqrt = static_cast<T>(bc2_sqrt_f64);
  const T wd = static_cast<T>(wd_f64);
  // Decoupled: wd is the factor 1 - lr·wd (1 means no decay); L2: the coefficient.
  const bool decoupled = s.decoupled && wd_f64 != 1.0;
  const bool l2 = !s.decoupled && wd_f64 != 0.0;
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

/// The tensor's five pointers and its hyperparameters (step count included) into `slot`.
template <class Args>
AdamHyper fill_adam_pointers(const AdamTensorRef& ref, const AdamHyper& shared, Args& args, int slot) {
  args.ptr[0][slot] = ref.param;
  args.ptr[1][slot] = const_cast<void*>(ref.grad);
  args.ptr[2][slot] = ref.exp_avg;
  args.ptr[3][slot] = ref.exp_avg_sq;
  args.ptr[4][slot] = ref.max_exp_avg_sq;
  AdamHyper h = shared;
  h.lr = ref.lr;
  h.weight_decay = ref.weight_decay;
  h.step = ref.step;
  return h;
}

/// Stores tensor i in `slot` with its coefficients; returns its size.
int64_t fill_adam_slot(const AdamTensorRef& ref, const AdamHyper& shared, AdamLaunchArgs& args, int slot) {
  const AdamCoefficients c = adam_coefficients(fill_adam_pointers(ref, shared, args, slot));
  args.meta.step_size[slot] = c.step_size;
  args.meta.bias_correction2_sqrt[slot] = c.bias_correction2_sqrt;
  args.meta.weight_decay[slot] = c.weight_decay;
  return ref.numel;
}

/// fill_adam_slot for capturable steps: the addresses of the lr and the step count, and
/// the weight decay itself (the kernel computes AdamW's factor from the lr it reads).
int64_t fill_adam_slot(const AdamTensorRef& ref, const AdamHyper& shared, AdamCapturableLaunchArgs& args, int slot) {
  (void)fill_adam_pointers(ref, shared, args, slot);
  args.meta.lr[slot] = ref.lr_ptr;
  args.meta.step_count[slot] = ref.step_count;
  args.meta.weight_decay[slot] = ref.weight_decay;
  return ref.numel;
}

}  // namespace

void adam_multi_tensor(DType dtype, const AdamTensorRef* tensors, int64_t count, double beta1, double beta2,
                       double eps, bool amsgrad, bool decoupled_weight_decay, const float* found_inf,
                       cudaStream_t stream) {
  const AdamHyper shared{.beta1 = beta1, .beta2 = beta2, .eps = eps, .decoupled_weight_decay = decoupled_weight_decay,
                         .amsgrad = amsgrad};
  if (count == 0) return;
  const bool capturable = tensors[0].step_count != nullptr;
  for (int64_t i = 0; i < count; ++i) {
    if ((tensors[i].step_count != nullptr) != capturable || (tensors[i].lr_ptr != nullptr) != capturable)
      throw std::logic_error("[adam_multi_tensor] expected every tensor or none to have a step_count and an lr_ptr");
  }
  auto launch_all = [&](auto args_tag, const auto& s) {
    using Args = decltype(args_tag);
    using T = std::remove_cvref_t<decltype(s.beta1)>;
    plan_tensor_list_launches<Args>(
        count, [&](int64_t i, Args& args, int slot) { return fill_adam_slot(tensors[i], shared, args, slot); },
        [&](const Args& args, int blocks, int64_t) {
          adam_multi_tensor_kernel<T, Args><<<blocks, kAdamBlockSize, 0, stream>>>(args, s, found_inf);
          CUDA_CHECK_LAUNCH();
        });
  };
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const AdamShared<T> s{static_cast<T>(beta1), static_cast<T>(beta2),      static_cast<T>(1.0 - beta1),
                          static_cast<T>(1.0 - beta2), static_cast<T>(eps), amsgrad, decoupled_weight_decay, beta1,
                          beta2};
    if (capturable) launch_all(AdamCapturableLaunchArgs{}, s);
    else launch_all(AdamLaunchArgs{}, s);
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
