// Fused multi-tensor SGD on CUDA: one launch updates many tensors (params, grads,
// momentum buffers), as PyTorch's multi_tensor_apply does for its fused optimizers.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// One tensor of a multi-tensor SGD step: device pointers of the same dtype.
struct SGDTensorRef {
  void* param = nullptr;
  const void* grad = nullptr;
  void* momentum = nullptr;  // null when μ = 0
  int64_t numel = 0;
  double lr = 0.0;            // per tensor, so groups with different lr share a launch
  double weight_decay = 0.0;
  bool first_step = false;  // seed the momentum buffer with the gradient
};

/// The SGD step of kernels::cpu::sgd_step applied to `count` tensors of `dtype`
/// (f32 or f64), all on the current device, each with its own lr and weight decay
/// and the shared momentum μ, dampening and Nesterov flag. As few launches as
/// possible: one unless more than kSGDMaxTensors tensors or kSGDMaxBlocks chunks are given.
void sgd_multi_tensor(DType dtype, const SGDTensorRef* tensors, int64_t count, double momentum, double dampening,
                      bool nesterov, cudaStream_t stream);

/// Launches needed for these tensors (for tests: one per full argument struct).
int64_t sgd_multi_tensor_launches(const SGDTensorRef* tensors, int64_t count);

inline constexpr int kSGDMaxTensors = 48;
inline constexpr int kSGDMaxBlocks = 320;
inline constexpr int64_t kSGDChunkSize = 65536;

}  // namespace tandem::kernels::cuda
