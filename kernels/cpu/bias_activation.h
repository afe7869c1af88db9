// CPU twin of the fused bias + activation epilogue of linear(): one pass over the
// product's (rows, cols) output instead of a bias broadcast before the product and an
// activation pass after it; backward computes the activation gradient and the bias
// gradient (its column sums) in the same pass.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/elementwise.h"

namespace tandem::kernels::cpu {

/// hidden[r, c] += bias[c] (no bias when null), then out[r, c] = act(hidden[r, c]), for
/// row-major (rows, cols) matrices. `out` may be `hidden` (in place) when backward does
/// not need the pre-activation (kNone, kRelu).
void bias_activation_forward(Activation act, DType dtype, void* out, void* hidden, const void* bias, int64_t rows,
                             int64_t cols);

/// dhidden = dout · act'(h) and, when `bias_grad` is not null, bias_grad[c] =
/// Σ_r dhidden[r, c] (accumulated in f64; rows are taken in fixed blocks, so the result
/// does not depend on the thread count). `saved` is the output for kNone/kRelu and the
/// pre-activation h for the GELUs (activation_saves_input).
void bias_activation_backward(Activation act, DType dtype, void* dhidden, void* bias_grad, const void* dout,
                              const void* saved, int64_t rows, int64_t cols);

}  // namespace tandem::kernels::cpu
