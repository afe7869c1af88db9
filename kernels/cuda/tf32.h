// Whether f32 matrix products (cuBLAS) and convolutions (cuDNN) may run on TF32
// tensor cores: inputs rounded to a 10-bit mantissa, f32 accumulation, several times
// the f32 throughput on Ampere and Hopper. PyTorch's torch.backends.cuda.matmul.allow_tf32
// and torch.backends.cudnn.allow_tf32 in one switch. Off by default, so f32 results stay
// comparable with the CPU's; read at every call. Includable without the CUDA toolkit.
#pragma once

#include <atomic>

namespace tandem::kernels::cuda {

/// The process-wide switch (tandem::cuda::set_allow_tf32 sets it).
inline std::atomic<bool>& tf32_allowed() {
  static std::atomic<bool> allowed{false};
  return allowed;
}

}  // namespace tandem::kernels::cuda
