// Fused multi-tensor Adam / AdamW on CUDA: one launch updates many tensors (params,
// grads, both moments and the AMSGrad maximum), as PyTorch's fused optimizers do.
#pragma once

#include <cstdint>

#include "kernels/cpu/adam.h"
#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// One tensor of a multi-tensor Adam step (kernels/cpu/adam.h): device pointers here.
using kernels::AdamTensorRef;

/// kernels::cpu::adam_multi_tensor on the GPU: the step on `count` tensors of `dtype`
/// (f32 or f64), all on the current device, each with its own lr, weight decay and
/// step count and the shared β1, β2, eps, AMSGrad and decoupled (AdamW) flags. One
/// launch unless more than kAdamMaxTensors tensors or kAdamMaxBlocks chunks are given.
/// With step_count and lr_ptr set (all tensors or none), the kernel reads the lr and the
/// step counts from device memory and computes the bias corrections from them. `found_inf` (null, or a device f32 flag): every
/// block reads it and writes nothing when it is nonzero.
void adam_multi_tensor(DType dtype, const AdamTensorRef* tensors, int64_t count, double beta1, double beta2,
                       double eps, bool amsgrad, bool decoupled_weight_decay, const float* found_inf,
                       cudaStream_t stream);


/// Launches needed for these tensors (for tests: one per full argument struct).
int64_t adam_multi_tensor_launches(const AdamTensorRef* tensors, int64_t count);

inline constexpr int kAdamMaxTensors = 32;
inline constexpr int kAdamMaxBlocks = 320;
inline constexpr int64_t kAdamChunkSize = 65536;

}  // namespace tandem::kernels::cuda
