// CUDA 2-D pooling over NCHW planes, twins of kernels/cpu/pool.h: max (with int64 argmax
// indices), average and adaptive average. Forward runs one thread per output element;
// backward one thread per input element, gathering from the windows that cover it
// (no atomics, deterministic). Includable without the CUDA toolkit.
#pragma once

#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"
#include "kernels/window2d.h"

namespace tandem::kernels::cuda {

/// y[n, c, oh, ow] = max over the window (padding never wins, NaN does);
/// indices[...] = ih·in_w + iw of the maximum (the first one on ties).
void max_pool2d_forward(DType dtype, const Window2d& g, const void* x, void* y, int64_t* indices,
                        cudaStream_t stream);
/// dx[i] = Σ of dy over the outputs whose saved index is i.
void max_pool2d_backward(DType dtype, const Window2d& g, const void* dy, const int64_t* indices, void* dx,
                         cudaStream_t stream);

/// y = Σ window / divisor, divisor = window size clipped to the padded input when
/// `count_include_pad`, else the number of input elements inside it (dilation 1).
void avg_pool2d_forward(DType dtype, const Window2d& g, bool count_include_pad, const void* x, void* y,
                        cudaStream_t stream);
/// dx[i] = Σ over windows containing i of dy / divisor.
void avg_pool2d_backward(DType dtype, const Window2d& g, bool count_include_pad, const void* dy, void* dx,
                         cudaStream_t stream);

/// Output (oh, ow) averages rows [⌊oh·H/OH⌋, ⌈(oh+1)·H/OH⌉) and the same for columns.
void adaptive_avg_pool2d_forward(DType dtype, const Window2d& g, const void* x, void* y, cudaStream_t stream);
/// dx[i] = Σ over the adaptive windows containing i of dy / window size.
void adaptive_avg_pool2d_backward(DType dtype, const Window2d& g, const void* dy, void* dx, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
