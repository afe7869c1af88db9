// Matrix products on the host through Eigen's GEMM (parallelised with OpenMP when the
// kernels library is built with it), plus the row broadcast linear() uses to put its
// bias into the output before a GEMM that accumulates onto it.
#pragma once

#include <cstdint>
#include <functional>

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

/// One product of gemm_query_blocks: sizes, transposes and the element offsets of its
/// sub-matrices within a batch entry of A, B and C.
struct BlockProduct {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t a_offset = 0, b_offset = 0, c_offset = 0;
  bool accumulate = false;
};

/// For every batch entry (entries spread over OpenMP threads when the products are
/// large enough together; each entry's products in order on one thread) and every block
/// of `block` rows [r0, r0 + rows) of `rows_total` (the last block first): the product
/// plan(r0, rows, first) on A, B and C at that entry (strides in elements, pitches
/// lda/ldb/ldc). Causal attention's products per query block (engine/ops/linalg.cpp):
/// the blocks' products are too small for gemm_strided_batched to parallelise well.
void gemm_query_blocks(DType dtype, int64_t batch, int64_t rows_total, int64_t block, double alpha, const void* a,
                       int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b, void* c, int64_t ldc,
                       int64_t stride_c, const std::function<BlockProduct(int64_t r0, int64_t rows, bool first)>& plan);

/// out[r, :] = row for r in [0, rows): how linear() puts its bias in place before an
/// accumulating GEMM.
void broadcast_rows(DType dtype, void* out, const void* row, int64_t rows, int64_t cols);

}  // namespace tandem::kernels::cpu
