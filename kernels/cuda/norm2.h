// Multi-tensor gradient norm and scaling on CUDA, for clip_grad_norm: per-chunk
// partial sums in one launch, one reduction launch, and one launch that scales them all;
// and the clip's end on the device (norm and factor never read by the host).
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

/// Doubles of device workspace multi_tensor_norm needs for tensors of these sizes
/// (1 for the result plus one partial per 64Ki-element chunk).
int64_t multi_tensor_norm_workspace(const int64_t* numel, int64_t count);

/// workspace[0] = Σ over all tensors of Σ|x|^p in f64 (Σx² for p = 2, max|x| for
/// p = ∞; NaN propagates), as kernels::cpu::norm_accumulate, for `count` floating
/// tensors of `dtype` on the current device. No host synchronisation: the caller
/// reads workspace[0] when it needs it. `workspace` holds
/// multi_tensor_norm_workspace(numel, count) doubles.
void multi_tensor_norm(DType dtype, const void* const* tensors, const int64_t* numel, int64_t count, double norm_type,
                       double* workspace, cudaStream_t stream);

/// x *= factor for `count` floating tensors of `dtype`, in as few launches as the
/// argument structs allow.
void multi_tensor_scale(DType dtype, void* const* tensors, const int64_t* numel, int64_t count, double factor,
                        cudaStream_t stream);

/// multi_tensor_scale by the factor at `factor` (device memory) read when the kernels
/// run; blocks write nothing when it is 1 (x·1 = x), as after clip_norm_finish.
void multi_tensor_scale_by(DType dtype, void* const* tensors, const int64_t* numel, int64_t count,
                           const double* factor, cudaStream_t stream);

/// kernels::cpu::clip_norm_finish on the device, one thread: `parts` is a host array
/// of at most kClipMaxParts device pointers (each a multi_tensor_norm workspace[0]);
/// total and factor are device pointers. No host synchronisation.
void clip_norm_finish(const double* const* parts, int64_t count, double norm_type, double max_norm, double* total,
                      double* factor, cudaStream_t stream);

inline constexpr int kClipMaxParts = 16;

/// Launches multi_tensor_norm makes for these sizes, the final reduction included (for tests).
int64_t multi_tensor_norm_launches(const int64_t* numel, int64_t count);

inline constexpr int kNormMaxTensors = 128;
inline constexpr int kNormMaxBlocks = 320;

}  // namespace tandem::kernels::cuda
