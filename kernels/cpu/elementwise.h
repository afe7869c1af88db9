// CPU element-wise kernels: unary math and its gradients, broadcasting binary ops,
// scalar ops. Floating dtypes compute in compute_t (f32 for f16/bf16); add, sub,
// mul and eq also take i32/i64 (eq takes every dtype).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/elementwise.h"

namespace tandem::kernels::cpu {

void unary(UnaryOp op, DType dtype, void* out, const void* in, int64_t n);
void unary_grad(UnaryGradOp op, DType dtype, void* dx, const void* dy, const void* saved, int64_t n);
/// out has the layout's extents; for kEq, out is bool.
void binary(BinaryOp op, DType dtype, void* out, const void* a, const void* b, double alpha,
            const BroadcastLayout& layout, int64_t n);
void scalar(ScalarOp op, DType dtype, void* out, const void* a, double s, int64_t n);

/// out (contiguous, the layout's extents) = in broadcast: out[i] = in[Σ ik·a_strides[k]].
void broadcast_copy(DType dtype, void* out, const void* in, const BroadcastLayout& layout, int64_t n);

}  // namespace tandem::kernels::cpu
