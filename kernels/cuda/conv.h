// 2-D convolution on the GPU through cuDNN (NCHW, groups, f32/f64/f16/bf16 with f32
// accumulation for the narrow types), plus the bias add and bias gradient kernels.
// The algorithm of each pass is chosen once per (device, dtype, shapes, options) by
// cudnnFind*Ex and cached. Includable without the CUDA toolkit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"
#include "kernels/window2d.h"

namespace tandem::kernels::cuda {

/// Returns `bytes` of device memory on the current device, usable on the call's stream
/// until the launching function returns (the engine hands out caching-allocator blocks,
/// whose stream-ordered reuse makes freeing right after the launch safe).
using WorkspaceFn = std::function<void*(size_t bytes)>;

/// True when this build links cuDNN (otherwise every conv2d_* below throws).
bool conv2d_has_cudnn();

/// y = conv2d(x, w) (+ bias when not null) on the current device.
void conv2d_forward(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                    const void* w, const void* bias, void* y, const WorkspaceFn& workspace, cudaStream_t stream);

/// dx = the gradient of conv2d with respect to x (overwritten).
void conv2d_backward_data(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* w,
                          const void* dy, void* dx, const WorkspaceFn& workspace, cudaStream_t stream);

/// dw = the gradient of conv2d with respect to the weight (overwritten).
void conv2d_backward_filter(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                            const void* dy, void* dw, const WorkspaceFn& workspace, cudaStream_t stream);

/// db[o] = Σ_{n, p} dy[n, o, p] (overwritten), accumulated in f32 (f64 for f64).
/// Needs no cuDNN.
void conv2d_backward_bias(DType dtype, int64_t batch, int64_t out_channels, int64_t plane, const void* dy, void* db,
                          cudaStream_t stream);

}  // namespace tandem::kernels::cuda
