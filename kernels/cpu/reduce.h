// CPU reductions over the middle axis of an (outer, n, inner) view.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// out[o, i] = scale · Σ_k in[o, k, i]. Floating inputs accumulate in f64 and write
/// their own dtype; integer and bool inputs write int64.
void sum(DType dtype, void* out, const void* in, int64_t outer, int64_t n, int64_t inner, double scale);
/// values[o, i] = max_k in[o, k, i] and indices[o, i] = the first k attaining it
/// (NaN counts as the largest value). `values` may be null (argmax only).
void max(DType dtype, void* values, int64_t* indices, const void* in, int64_t outer, int64_t n, int64_t inner);

}  // namespace tandem::kernels::cpu
