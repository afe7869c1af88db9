// Host GEMM through Eigen. Operands are mapped in place as row-major matrices with an
// outer stride, and transposes are Eigen expressions, so no operand is ever copied
// (except f16/bf16, which are widened to f32 first).
//
// Threads: each OpenMP thread runs a single-threaded Eigen GEMM on its own slab of C
// (a block of columns, or of rows), so the threads meet once, at the end of the
// region, instead of at every packing step as in Eigen's own parallel GEMM. Only
// products of kParallelMinMacs or more are split (kernels/cpu/parallel.h).
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#define EIGEN_DONT_PARALLELIZE

// GCC 12 reports false (maybe-)uninitialized warnings inside its own AVX-512
// intrinsics once Eigen's packet code is inlined; the pragma must cover the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

#include "kernels/common.h"

namespace tandem::kernels::cpu {
namespace {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
void gemm_typed(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  MatrixMap<T> out(c, m, n, Eigen::OuterStride<>(ldc));
  if (k == 0) {  // an empty sum: Eigen would not touch C, but C = 0 is the answer
    if (!accumulate) out.setZero();
    return;
  }
  // The stored shapes: A is m×k, or k×m when it enters transposed (likewise B).
  ConstMatrixMap<T> am(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
  ConstMatrixMap<T> bm(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
  // noalias(): C never overlaps A or B, so Eigen may write the product straight into
  // C instead of into a temporary that is copied afterwards.
  auto run = [&](const auto& op_a, const auto& op_b) {
    if (accumulate) {
      out.noalias() += alpha * op_a * op_b;
    } else {
      out.noalias() = alpha * op_a * op_b;
    }
  };
  if (trans_a) {
    if (trans_b) run(am.transpose(), bm.transpose());
    else run(am.transpose(), bm);
  } else {
    if (trans_b) run(am, bm.transpose());
    else run(am, bm);
  }
}

/// Slab boundaries are rounded to this many columns/rows, a multiple of Eigen's
/// register-block widths, so every slab runs full-width micro-kernels.
constexpr int64_t kSlabAlign = 16;

/// gemm_typed split across the OpenMP threads into slabs of C along its larger side.
template <class T>
void gemm_threaded(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                   const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc) {
#if defined(_OPENMP)
  const bool split_n = n >= m;
  const int64_t extent = split_n ? n : m;
  const bool big = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) >= kParallelMinMacs;
  const int threads = (big && !omp_in_parallel()) ? omp_get_max_threads() : 1;
  const int64_t parts = std::min<int64_t>(threads, extent / kSlabAlign);
  if (parts > 1) {
    auto boundary = [&](int64_t p) {
      return p == parts ? extent : (extent * p / parts) / kSlabAlign * kSlabAlign;
    };
#pragma omp parallel for num_threads(static_cast<int>(parts)) schedule(static, 1)
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t begin = boundary(p), len = boundary(p + 1) - begin;
      if (split_n) {  // columns [begin, begin+len) of C need the same columns of op(B)
        const T* b_slab = trans_b ? b + begin * ldb : b + begin;
        gemm_typed<T>(trans_a, trans_b, m, len, k, alpha, a, lda, b_slab, ldb, accumulate, c + begin, ldc);
      } else {  // rows [begin, begin+len) of C need the same rows of op(A)
        const T* a_slab = trans_a ? a + begin : a + begin * lda;
        gemm_typed<T>(trans_a, trans_b, len, n, k, alpha, a_slab, lda, b, ldb, accumulate, c + begin * ldc, ldc);
      }
    }
    return;
  }
#endif
  gemm_typed<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
}

/// Copies a rows×cols matrix with row pitch `ld` into a dense f32 buffer.
template <class T>
std::vector<float> widen(const T* x, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) out[r * cols + j] = static_cast<float>(x[r * ld + j]);
  return out;
}

/// f16/bf16: widen to f32, multiply, round the result back once.
template <class T>
void gemm_narrow(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const T* a, int64_t lda,
                 const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  std::vector<float> a32 = widen(a, trans_a ? k : m, trans_a ? m : k, lda);
  std::vector<float> b32 = widen(b, trans_b ? n : k, trans_b ? k : n, ldb);
  std::vector<float> c32 = accumulate ? widen(c, m, n, ldc) : std::vector<float>(static_cast<size_t>(m * n));
  gemm_threaded<float>(trans_a, trans_b, m, n, k, alpha, a32.data(), trans_a ? m : k, b32.data(),
                       trans_b ? k : n, accumulate, c32.data(), n);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) c[r * ldc + j] = T(c32[r * n + j]);
}

template <class T>
void gemm_dispatch(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    gemm_threaded<T>(trans_a, trans_b, m, n, k, static_cast<T>(alpha), a, lda, b, ldb, accumulate, c, ldc);
  } else {
    gemm_narrow<T>(trans_a, trans_b, m, n, k, static_cast<float>(alpha), a, lda, b, ldb, accumulate, c, ldc);
  }
}

}  // namespace

void gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, bool accumulate, void* c, int64_t ldc) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    gemm_dispatch<T>(trans_a, trans_b, m, n, k, alpha, static_cast<const T*>(a), lda, static_cast<const T*>(b), ldb,
                     accumulate, static_cast<T*>(c), ldc);
  });
  if (!ok) unreachable_dtype("gemm", dtype);
}

void gemm_strided_batched(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                          const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                          bool accumulate, void* c, int64_t ldc, int64_t stride_c, int64_t batch) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* at = static_cast<const T*>(a);
    const T* bt = static_cast<const T*>(b);
    T* ct = static_cast<T*>(c);
    // Many small products: whole products per thread. Large products are split
    // inside gemm_threaded instead (which sees omp_in_parallel() here and stays serial).
#if defined(_OPENMP)
    const double work = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
    const bool across_batch = batch > 1 && work < kParallelMinMacs &&
                              work * static_cast<double>(batch) >= kParallelMinMacs;
#pragma omp parallel for schedule(static) if (across_batch)
#endif
    for (int64_t i = 0; i < batch; ++i) {
      gemm_dispatch<T>(trans_a, trans_b, m, n, k, alpha, at + i * stride_a, lda, bt + i * stride_b, ldb, accumulate,
                       ct + i * stride_c, ldc);
    }
  });
  if (!ok) unreachable_dtype("gemm_strided_batched", dtype);
}

void broadcast_rows(DType dtype, void* out, const void* row, int64_t rows, int64_t cols) {
  const size_t row_bytes = static_cast<size_t>(cols) * dtype_size(dtype);
  auto* dst = static_cast<char*>(out);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * row_bytes, row, row_bytes);
}

}  // namespace tandem::kernels::cpu
