// CPU 2-D convolution (NCHW, weight (O, C/groups, kh, kw)) by im2col + GEMM
// (kernels/cpu/gemm.h), over blocks of samples sized so the GEMMs are wide but the
// column matrix stays in cache, with the blocks split across OpenMP threads. f32 and
// f64; the engine widens f16/bf16.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/window2d.h"

namespace tandem::kernels::cpu {

/// Unfolds `channels` planes of one sample, x (channels, in_h, in_w), into the column
/// matrix cols (channels·kh·kw, out_h·out_w): row (c, i, j) holds, for every output
/// position (oh, ow), x[c, oh·sh − ph + i·dh, ow·sw − pw + j·dw], or 0 in the padding.
template <class T>
void im2col(const T* x, const Window2d& g, int64_t channels, T* cols);

/// The adjoint of im2col: x (channels, in_h, in_w) = Σ of every column entry into the
/// input element it was read from (padding entries are dropped). Overwrites x.
template <class T>
void col2im(const T* cols, const Window2d& g, int64_t channels, T* x);

/// y (N, O, out_h, out_w) = conv2d(x, w) + bias: per block of samples and group,
/// y[n, g] = W_g · im2col(x[n, g]), with the bias rows written first and the GEMM
/// accumulating onto them. `bias` may be null. f32 and f64.
void conv2d_forward(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                    const void* w, const void* bias, void* y);

/// Gradients of conv2d_forward in one pass over the batch; any of dx, dw, db may be null
/// (not wanted):
///   dw_g = Σ_n dy[n, g] · im2col(x[n, g])ᵀ,  dx[n, g] = col2im(W_gᵀ · dy[n, g]),
///   db[o] = Σ_{n, p} dy[n, o, p].
/// Every wanted gradient is overwritten. f32 and f64.
void conv2d_backward(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                     const void* w, const void* dy, void* dx, void* dw, void* db);

}  // namespace tandem::kernels::cpu
