// Multi-tensor SGD: the launch plan of multi_tensor.cuh packs (param, grad, momentum)
// of up to kSGDMaxTensors tensors with their lr, weight decay and first-step flag (or,
// capturable, the addresses of their lr and step count) into one kernel argument
// struct; each block updates one 64Ki-element chunk.
#include "kernels/cuda/sgd.h"

#include <stdexcept>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/multi_tensor.cuh"

namespace tandem::kernels::cuda {
namespace {

constexpr int kSGDBlockSize = 512;
static_assert(kSGDChunkSize == kMultiTensorChunkSize, "sgd.h states the chunk size of multi_tensor.cuh");

/// Per-tensor scalars: struct of arrays, so the one-byte flags pack tightly.
struct SGDMeta {
  double lr[kSGDMaxTensors];
  double weight_decay[kSGDMaxTensors];
  unsigned char first_step[kSGDMaxTensors];
  void move(int from, int to) {
    lr[to] = lr[from];
    weight_decay[to] = weight_decay[from];
    first_step[to] = first_step[from];
  }
};

/// Capturable steps: the lr and the first step are read from device memory when the
/// kernel runs, so they are right in every replay of a captured graph. step_count is
/// null without momentum (no first step to decide).
struct SGDCapturableMeta {
  const double* lr[kSGDCapturableMaxTensors];
  double weight_decay[kSGDCapturableMaxTensors];
  const double* step_count[kSGDCapturableMaxTensors];
  void move(int from, int to) {
    lr[to] = lr[from];
    weight_decay[to] = weight_decay[from];
    step_count[to] = step_count[from];
  }
};

// Lists: param, grad, momentum. 48·(3·8 + 8 + 2·8 + 1) + 320·(1 + 4) = 3952 bytes, and
// 40·(3·8 + 8 + 3·8) + 320·(1 + 4) = 3840 with lr and step-count addresses, under the
// classic 4 KiB limit on kernel arguments.
using SGDLaunchArgs = TensorListArgs<3, kSGDMaxTensors, kSGDMaxBlocks, SGDMeta>;
using SGDCapturableLaunchArgs = TensorListArgs<3, kSGDCapturableMaxTensors, kSGDMaxBlocks, SGDCapturableMeta>;
static_assert(sizeof(SGDLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");
static_assert(sizeof(SGDCapturableLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

__device__ bool is_first_step(const SGDLaunchArgs& args, int t) { return args.meta.first_step[t] != 0; }
__device__ bool is_first_step(const SGDCapturableLaunchArgs& args, int t) { return *args.meta.step_count[t] == 0.0; }
__device__ double lr_of(const SGDLaunchArgs& args, int t) { return args.meta.lr[t]; }
__device__ double lr_of(const SGDCapturableLaunchArgs& args, int t) { return *args.meta.lr[t]; }

// __grid_constant__ keeps the struct in parameter memory even though it is indexed
// by a run-time value (otherwise each thread would copy it to local memory).
template <class T, class Args>
__global__ void __launch_bounds__(kSGDBlockSize)
    sgd_multi_tensor_kernel(const __grid_constant__ Args args, T mu, T keep, bool use_mu, bool nesterov,
                            const float* __restrict__ found_inf) {
  // A skipped step (GradScaler found an inf/NaN gradient): every block reads the flag.
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  T* __restrict__ p = static_cast<T*>(args.ptr[0][t]);
  const T* __restrict__ grad = static_cast<const T*>(args.ptr[1][t]);
  T* __restrict__ buf = static_cast<T*>(args.ptr[2][t]);
  const bool first_step = use_mu && is_first_step(args, t);
  const T lr = static_cast<T>(lr_of(args, t)), wd = static_cast<T>(args.meta.weight_decay[t]);
  const bool use_wd = args.meta.weight_decay[t] != 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kSGDBlockSize) {
    T g = grad[i];
    T w = p[i];
    if (use_wd) g = g + wd * w;
    if (use_mu) {
      T b = first_step ? g : mu * buf[i] + keep * g;
      buf[i] = b;
      g = nesterov ? g + mu * b : b;
    }
    p[i] = w - lr * g;
  }
}

/// Stores tensor i of `tensors` in `slot`; returns its size.
template <class Args>
int64_t fill_sgd_slot(const SGDTensorRef* tensors, int64_t i, Args& args, int slot) {
  const SGDTensorRef& ref = tensors[i];
  args.ptr[0][slot] = ref.param;
  args.ptr[1][slot] = const_cast<void*>(ref.grad);
  args.ptr[2][slot] = ref.momentum;
  args.meta.weight_decay[slot] = ref.weight_decay;
  if constexpr (std::is_same_v<Args, SGDLaunchArgs>) {
    args.meta.lr[slot] = ref.lr;
    args.meta.first_step[slot] = ref.first_step ? 1 : 0;
  } else {
    args.meta.lr[slot] = ref.lr_ptr;
    args.meta.step_count[slot] = ref.step_count;
  }
  return ref.numel;
}

/// Plans the launches of `tensors` with argument struct Args: launch(args, blocks).
template <class Args, class Launch>
void plan_sgd(const SGDTensorRef* tensors, int64_t count, Launch&& launch) {
  plan_tensor_list_launches<Args>(
      count, [&](int64_t i, Args& args, int slot) { return fill_sgd_slot(tensors, i, args, slot); },
      [&](const Args& args, int blocks, int64_t) { launch(args, blocks); });
}

/// Whether the step is capturable: the tensors carry lr addresses (all or none) and,
/// with momentum, step counts (all or none: anything else is a caller bug).
bool is_capturable(const SGDTensorRef* tensors, int64_t count, bool use_momentum) {
  const bool capturable = count > 0 && tensors[0].lr_ptr != nullptr;
  for (int64_t i = 0; i < count; ++i) {
    if ((tensors[i].lr_ptr != nullptr) != capturable)
      throw std::logic_error("[sgd_multi_tensor] expected every tensor or none to have an lr_ptr");
    if (use_momentum && (tensors[i].step_count != nullptr) != capturable)
      throw std::logic_error("[sgd_multi_tensor] expected a step_count with each lr_ptr when momentum is used");
  }
  return capturable;
}

}  // namespace

void sgd_multi_tensor(DType dtype, const SGDTensorRef* tensors, int64_t count, double momentum, double dampening,
                      bool nesterov, const float* found_inf, cudaStream_t stream) {
  const bool capturable = is_capturable(tensors, count, momentum != 0.0);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](const auto& args, int blocks) {
      using Args = std::remove_cvref_t<decltype(args)>;
      sgd_multi_tensor_kernel<T, Args><<<blocks, kSGDBlockSize, 0, stream>>>(
          args, static_cast<T>(momentum), static_cast<T>(1.0 - dampening), momentum != 0.0, nesterov, found_inf);
      CUDA_CHECK_LAUNCH();
    };
    if (capturable) plan_sgd<SGDCapturableLaunchArgs>(tensors, count, launch);
    else plan_sgd<SGDLaunchArgs>(tensors, count, launch);
  };
  switch (dtype) {
    case DType::kF32: run(float{}); return;
    case DType::kF64: run(double{}); return;
    default: unreachable_dtype("sgd_multi_tensor", dtype);
  }
}

int64_t sgd_multi_tensor_launches(const SGDTensorRef* tensors, int64_t count) {
  int64_t launches = 0;
  auto counted = [&](const auto&, int) { ++launches; };
  if (is_capturable(tensors, count, /*use_momentum=*/false)) plan_sgd<SGDCapturableLaunchArgs>(tensors, count, counted);
  else plan_sgd<SGDLaunchArgs>(tensors, count, counted);
  return launches;
}

}  // namespace tandem::kernels::cuda
