// Multi-tensor SGD: the launch plan of multi_tensor.cuh packs (param, grad, momentum)
// of up to kSGDMaxTensors tensors with their lr, weight decay and first-step flag
// into one kernel argument struct; each block updates one 64Ki-element chunk.
#include "kernels/cuda/sgd.h"

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

// Lists: param, grad, momentum. 48·(3·8 + 8 + 2·8 + 1) + 320·(1 + 4) = 3952 bytes,
// under the classic 4 KiB limit on kernel arguments.
using SGDLaunchArgs = TensorListArgs<3, kSGDMaxTensors, kSGDMaxBlocks, SGDMeta>;
static_assert(sizeof(SGDLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

// __grid_constant__ keeps the struct in parameter memory even though it is indexed
// by a run-time value (otherwise each thread would copy it to local memory).
template <class T>
__global__ void __launch_bounds__(kSGDBlockSize)
    sgd_multi_tensor_kernel(const __grid_constant__ SGDLaunchArgs args, T mu, T keep, bool use_mu, bool nesterov) {
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  T* __restrict__ p = static_cast<T*>(args.ptr[0][t]);
  const T* __restrict__ grad = static_cast<const T*>(args.ptr[1][t]);
  T* __restrict__ buf = static_cast<T*>(args.ptr[2][t]);
  const bool first_step = args.meta.first_step[t] != 0;
  const T lr = static_cast<T>(args.meta.lr[t]), wd = static_cast<T>(args.meta.weight_decay[t]);
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
int64_t fill_sgd_slot(const SGDTensorRef* tensors, int64_t i, SGDLaunchArgs& args, int slot) {
  const SGDTensorRef& ref = tensors[i];
  args.ptr[0][slot] = ref.param;
  args.ptr[1][slot] = const_cast<void*>(ref.grad);
  args.ptr[2][slot] = ref.momentum;
  args.meta.lr[slot] = ref.lr;
  args.meta.weight_decay[slot] = ref.weight_decay;
  args.meta.first_step[slot] = ref.first_step ? 1 : 0;
  return ref.numel;
}

}  // namespace

void sgd_multi_tensor(DType dtype, const SGDTensorRef* tensors, int64_t count, double momentum, double dampening,
                      bool nesterov, cudaStream_t stream) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    plan_tensor_list_launches<SGDLaunchArgs>(
        count, [&](int64_t i, SGDLaunchArgs& args, int slot) { return fill_sgd_slot(tensors, i, args, slot); },
        [&](const SGDLaunchArgs& args, int blocks, int64_t) {
          sgd_multi_tensor_kernel<T><<<blocks, kSGDBlockSize, 0, stream>>>(
              args, static_cast<T>(momentum), static_cast<T>(1.0 - dampening), momentum != 0.0, nesterov);
          CUDA_CHECK_LAUNCH();
        });
  };
  switch (dtype) {
    case DType::kF32: run(float{}); return;
    case DType::kF64: run(double{}); return;
    default: unreachable_dtype("sgd_multi_tensor", dtype);
  }
}

int64_t sgd_multi_tensor_launches(const SGDTensorRef* tensors, int64_t count) {
  int64_t launches = 0;
  plan_tensor_list_launches<SGDLaunchArgs>(
      count, [&](int64_t i, SGDLaunchArgs& args, int slot) { return fill_sgd_slot(tensors, i, args, slot); },
      [&](const SGDLaunchArgs&, int, int64_t) { ++launches; });
  return launches;
}

}  // namespace tandem::kernels::cuda
