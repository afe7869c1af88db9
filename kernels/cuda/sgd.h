// Fused multi-tensor SGD on CUDA: one launch updates many tensors (params, grads,
// momentum buffers), as PyTorch's multi_tensor_apply does for its fused optimizers.
#pragma once

#include <cstdint>

#include "kernels/cpu/sgd.h"
#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// One tensor of a multi-tensor SGD step (kernels/cpu/sgd.h): device pointers here.
using kernels::SGDTensorRef;

/// kernels::cpu::sgd_multi_tensor on the GPU: the step on `count` tensors of `dtype`
/// (f32 or f64), all on the current device, each with its own lr and weight decay
/// and the shared momentum μ, dampening and Nesterov flag. As few launches as
/// possible: one unless more than kSGDMaxTensors tensors (kSGDCapturableMaxTensors with
/// lr addresses, set for all tensors or none, and then with momentum step counts too)
/// or kSGDMaxBlocks chunks are given.
/// `found_inf` (null, or a device f32 flag): every block reads it and writes nothing
/// when it is nonzero.
void sgd_multi_tensor(DType dtype, const SGDTensorRef* tensors, int64_t count, double momentum, double dampening,
                      bool nesterov, const float* found_inf, cudaStream_t stream);

/// Launches needed for these tensors (for tests: one per full argument struct).
int64_t sgd_multi_tensor_launches(const SGDTensorRef* tensors, int64_t count);

inline constexpr int kSGDMaxTensors = 48;
inline constexpr int kSGDCapturableMaxTensors = 40;
inline constexpr int kSGDMaxBlocks = 320;
inline constexpr int64_t kSGDChunkSize = 65536;

}  // namespace tandem::kernels::cuda
