// Matrix products on the GPU through cuBLAS (f32 Sgemm, f64 Dgemm, f16/bf16 GemmEx
// with f32 accumulation), in row-major terms, plus the bias row broadcast of linear().
// Includable without the CUDA toolkit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"
#include "kernels/elementwise.h"

namespace tandem::kernels::cuda {

/// Row-major C = alpha·op(A)·op(B) (+ C when `accumulate`) on the current device,
/// as kernels::cpu::gemm. Runs on `stream` with this thread's cuBLAS handle for the
/// current device. f32 uses full-precision FP32 math, or TF32 tensor cores when
/// tf32_allowed() (kernels/cuda/tf32.h).
void gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, bool accumulate, void* c, int64_t ldc, cudaStream_t stream);

/// gemm over `batch` matrices spaced stride_a / stride_b / stride_c elements apart
/// (a stride of 0 reuses one matrix for every batch entry).
void gemm_strided_batched(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                          const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                          bool accumulate, void* c, int64_t ldc, int64_t stride_c, int64_t batch,
                          cudaStream_t stream);

/// Scratch bytes linear_epilogue needs for `dtype` (cuBLASLt's workspace), or 0 when
/// it never serves that dtype (f64: cuBLASLt's epilogues take f32, f16 and bf16).
size_t linear_epilogue_workspace_bytes(DType dtype);

/// Row-major y (rows, out) = act(x (rows, in)·Wᵀ + bias) for W (out, in) in one cuBLASLt
/// call with `workspace` of linear_epilogue_workspace_bytes(dtype) bytes, the bias and activation applied by the GEMM's epilogue instead of separate
/// passes: act kNone (bias required) or kRelu (bias optional). Returns false, having
/// launched nothing, when cuBLASLt offers no algorithm for the case (the dtype, the
/// shape or the pointers' alignment; asked once per case and remembered, with a note on
/// stderr the first time); the caller then runs gemm and its own bias pass.
bool linear_epilogue(DType dtype, Activation act, int64_t rows, int64_t out, int64_t in, const void* x,
                     const void* w, const void* bias, void* y, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

/// out[r, :] = row for r in [0, rows) (any dtype): the bias of linear() put in place
/// before an accumulating GEMM.
void broadcast_rows(DType dtype, void* out, const void* row, int64_t rows, int64_t cols, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
