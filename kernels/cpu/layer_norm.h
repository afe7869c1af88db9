// CPU layer-norm kernels: x is seen as (rows, cols) and each row is normalised over
// its cols elements (the trailing normalized_shape), then scaled and shifted per column.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

// x, y, dy, dx, weight, bias, dweight and dbias have `dtype`; the saved per-row mean
// and rstd have the statistics type (f64 for f64 input, else f32). Sums run in f64.

/// Per row: mean, rstd = 1 / sqrt(Σ (x − mean)² / cols + eps), and
/// y = (x − mean)·rstd·weight[j] + bias[j]; a null weight is 1, a null bias 0.
void layer_norm_forward(void* y, void* mean, void* rstd, const void* x, const void* weight, const void* bias,
                        DType dtype, int64_t rows, int64_t cols, double eps);

/// With x̂ = (x − mean)·rstd and g = dy·weight: dx = rstd·(g − mean_j(g) − x̂·mean_j(g·x̂)),
/// dweight[j] = Σ_rows dy·x̂, dbias[j] = Σ_rows dy. Any of dx, dweight, dbias may be null
/// (not computed); a null weight is 1.
void layer_norm_backward(void* dx, void* dweight, void* dbias, const void* dy, const void* x, const void* mean,
                         const void* rstd, const void* weight, DType dtype, int64_t rows, int64_t cols);

}  // namespace tandem::kernels::cpu
