// Multi-tensor SGD: the host packs (param, grad, momentum, numel) of up to
// kSGDMaxTensors tensors and a block -> (tensor, chunk) map of up to kSGDMaxBlocks
// entries into one kernel argument struct; each block updates one 64Ki-element chunk.
#include "kernels/cuda/sgd.h"

#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

constexpr int kSGDBlockSize = 512;

// 48·(3·8 + 3·8 + 1) + 320·(1 + 4) = 3952 bytes, under the classic 4 KiB limit on kernel arguments.
struct SGDLaunchArgs {
  void* param[kSGDMaxTensors];
  const void* grad[kSGDMaxTensors];
  void* momentum[kSGDMaxTensors];
  int64_t numel[kSGDMaxTensors];
  double lr[kSGDMaxTensors];
  double weight_decay[kSGDMaxTensors];
  unsigned char first_step[kSGDMaxTensors];
  unsigned char block_tensor[kSGDMaxBlocks];
  int32_t block_chunk[kSGDMaxBlocks];
};
static_assert(sizeof(SGDLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");
static_assert(kSGDMaxTensors <= 256, "block_tensor is one byte");

// __grid_constant__ keeps the struct in parameter memory even though it is indexed
// by a run-time value (otherwise each thread would copy it to local memory).
template <class T>
__global__ void __launch_bounds__(kSGDBlockSize)
    sgd_multi_tensor_kernel(const __grid_constant__ SGDLaunchArgs args, T mu, T keep, bool use_mu, bool nesterov) {
  const int t = args.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(args.block_chunk[blockIdx.x]) * kSGDChunkSize;
  const int64_t end = min(begin + kSGDChunkSize, args.numel[t]);
  T* __restrict__ p = static_cast<T*>(args.param[t]);
  const T* __restrict__ grad = static_cast<const T*>(args.grad[t]);
  T* __restrict__ buf = static_cast<T*>(args.momentum[t]);
  const bool first_step = args.first_step[t] != 0;
  const T lr = static_cast<T>(args.lr[t]), wd = static_cast<T>(args.weight_decay[t]);
  const bool use_wd = args.weight_decay[t] != 0.0;
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

/// Packs tensors into argument structs and calls launch(args, blocks) whenever a
/// struct is full or the tensors run out. A tensor cut off by a full block map
/// continues as tensor 0 of the next struct.
template <class Launch>
void plan_launches(const SGDTensorRef* tensors, int64_t count, Launch&& launch) {
  SGDLaunchArgs args{};
  int nt = 0, nb = 0;
  for (int64_t i = 0; i < count; ++i) {
    const SGDTensorRef& ref = tensors[i];
    if (ref.numel == 0) continue;
    args.param[nt] = ref.param;
    args.grad[nt] = ref.grad;
    args.momentum[nt] = ref.momentum;
    args.numel[nt] = ref.numel;
    args.lr[nt] = ref.lr;
    args.weight_decay[nt] = ref.weight_decay;
    args.first_step[nt] = ref.first_step ? 1 : 0;
    ++nt;
    const int64_t chunks = (ref.numel + kSGDChunkSize - 1) / kSGDChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      args.block_tensor[nb] = static_cast<unsigned char>(nt - 1);
      args.block_chunk[nb] = static_cast<int32_t>(c);
      ++nb;
      const bool tensor_done = c == chunks - 1;
      if (nb == kSGDMaxBlocks || (tensor_done && nt == kSGDMaxTensors)) {
        launch(args, nb);
        nb = 0;
        if (tensor_done) {
          nt = 0;
        } else {
          args.param[0] = args.param[nt - 1];
          args.grad[0] = args.grad[nt - 1];
          args.momentum[0] = args.momentum[nt - 1];
          args.numel[0] = args.numel[nt - 1];
          args.lr[0] = args.lr[nt - 1];
          args.weight_decay[0] = args.weight_decay[nt - 1];
          args.first_step[0] = args.first_step[nt - 1];
          nt = 1;
        }
      }
    }
  }
  if (nb > 0) launch(args, nb);
}

}  // namespace

void sgd_multi_tensor(DType dtype, const SGDTensorRef* tensors, int64_t count, double momentum, double dampening,
                      bool nesterov, cudaStream_t stream) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    plan_launches(tensors, count, [&](const SGDLaunchArgs& args, int blocks) {
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
  plan_launches(tensors, count, [&](const SGDLaunchArgs&, int) { ++launches; });
  return launches;
}

}  // namespace tandem::kernels::cuda
