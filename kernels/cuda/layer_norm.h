// CUDA layer-norm kernels: x is seen as (rows, cols), each row normalised over its
// cols elements. Launchers only; includable from host code without the CUDA toolkit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"

namespace tandem::kernels::cuda {

// Types and formulas as kernels/cpu/layer_norm.h: x, y, weight, bias and gradients
// have `dtype`; mean and rstd the statistics type (f64 for f64 input, else f32).

/// Bytes of device scratch layer_norm_backward needs for dweight/dbias (0 when neither).
size_t layer_norm_backward_workspace_bytes(DType dtype, int64_t rows, int64_t cols);

/// One warp (cols ≤ 1024) or one 512-thread block per row: two-pass mean and variance,
/// saves mean and rstd, writes y = (x − mean)·rstd·weight + bias (null weight 1, bias 0).
void layer_norm_forward(void* y, void* mean, void* rstd, const void* x, const void* weight, const void* bias,
                        DType dtype, int64_t rows, int64_t cols, double eps, cudaStream_t stream);

/// dx per row (warp or block per row, as forward); dweight = Σ_rows dy·x̂ and
/// dbias = Σ_rows dy in two stages (column tiles × row chunks into `workspace`, then a
/// per-column sum over chunks in order). Any of dx, dweight, dbias may be null.
void layer_norm_backward(void* dx, void* dweight, void* dbias, void* workspace, const void* dy, const void* x,
                         const void* mean, const void* rstd, const void* weight, DType dtype, int64_t rows,
                         int64_t cols, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
