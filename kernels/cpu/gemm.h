// Matrix products on the host through Eigen's GEMM (parallelised with OpenMP when the
// kernels library is built with it), plus the row broadcast linear() uses to put its
// bias into the output before a GEMM that accumulates onto it.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace tandem::kernels::cpu {

/// Row-major C = alpha·op(A)·op(B) (+ C when `accumulate`), with op(X) = Xᵀ when the
/// trans flag is set. C is m×n, op(A) m×k, op(B) k×n; lda/ldb/ldc are row pitches of
/// the stored matrices in elements. f32 and f64 natively; f16 and bf16 convert to f32,
/// multiply and round back.
void gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, bool accumulate, void* c, int64_t ldc);

/// gemm over `batch` matrices spaced stride_a / stride_b / stride_c elements apart
/// (a stride of 0 reuses one matrix for every batch entry).
void gemm_strided_batched(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                          const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                          bool accumulate, void* c, int64_t ldc, int64_t stride_c, int64_t batch);

/// out[r, :] = row for r in [0, rows): how linear() puts its bias in place before an
/// accumulating GEMM.
void broadcast_rows(DType dtype, void* out, const void* row, int64_t rows, int64_t cols);

}  // namespace tandem::kernels::cpu
