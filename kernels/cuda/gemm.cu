// cuBLAS wrapper for row-major matrix products. cuBLAS is column-major, and a
// row-major matrix is its transpose seen column-major, so row-major C = op(A)·op(B)
// is computed as column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands and m with n,
// keep the trans flags. Handles are per thread and per device (cuBLAS handles must not
// be used by two threads at once) and return to a pool when their thread exits.
#include "kernels/cuda/gemm.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/handle_pool.h"
#include "kernels/cuda/tf32.h"

namespace tandem::kernels::cuda {

namespace {

/// A cuBLAS handle; its math mode is set per call (f32 on TF32 tensor cores only when
/// allowed, so by default GPU results stay comparable with the CPU's).
cublasHandle_t create_cublas_handle() {
  cublasHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasCreate(&handle));
  CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  return handle;
}

/// The calling thread's handle for the current device, bound to `stream`.
cublasHandle_t handle_for(cudaStream_t stream) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cublasHandle_t handle = HandlePool<cublasHandle_t, create_cublas_handle>::get(device);
  // Set on every call: the same handle serves whichever stream is current, and
  // cublasSetStream also puts the handle back on cuBLAS's default workspace.
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  // Per call too: the switch may change between calls (it affects f32 routines only).
  CUBLAS_CHECK(cublasSetMathMode(handle, tf32_allowed().load() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  return handle;
}

cublasOperation_t op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

cudaDataType_t cuda_data_type(DType dtype) {
  switch (dtype) {
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF32: return CUDA_R_32F;
    case DType::kF64: return CUDA_R_64F;
    default: unreachable_dtype("gemm", dtype);
  }
}

cublasLtHandle_t create_cublaslt_handle() {
  cublasLtHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&handle));
  return handle;
}

/// Owns a cuBLASLt descriptor for the length of one call.
template <class Desc, cublasStatus_t (*Destroy)(Desc)>
struct LtDescriptor {
  Desc desc = nullptr;
  LtDescriptor() = default;
  LtDescriptor(const LtDescriptor&) = delete;
  LtDescriptor& operator=(const LtDescriptor&) = delete;
  ~LtDescriptor() {
    if (desc) Destroy(desc);
  }
};
using MatmulDesc = LtDescriptor<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using LayoutDesc = LtDescriptor<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using PreferenceDesc = LtDescriptor<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

/// The largest power of two (up to 256, cuBLASLt's default assumption) dividing the
/// address: told to the heuristic, which otherwise assumes 256-byte operands, and so
/// part of the cache key.
uint32_t alignment_of(const void* p) {
  if (p == nullptr) return 256;
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 1;
  while (align < 256 && address % (2 * align) == 0) align *= 2;
  return align;
}

/// One linear_epilogue case: device, dtype, epilogue, TF32, m, n, k and the alignments
/// of x, W, bias and y.
using EpilogueKey = std::tuple<int, int, int, bool, int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t>;

/// cuBLASLt's heuristic answer for a case, asked once: the algorithm, or none.
struct EpilogueChoice {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};

std::mutex& epilogue_cache_mutex() {
  static std::mutex mutex;
  return mutex;
}
std::map<EpilogueKey, EpilogueChoice>& epilogue_cache() {
  static auto* cache = new std::map<EpilogueKey, EpilogueChoice>;  // leaked: may be used during exit
  return *cache;
}

template <class Word>
__global__ void broadcast_rows_kernel(Word* __restrict__ out, const Word* __restrict__ row, int64_t rows,
                                      int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = row[i % cols];
  }
}

}  // namespace

void gemm_strided_batched(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                          const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                          bool accumulate, void* c, int64_t ldc, int64_t stride_c, int64_t batch,
                          cudaStream_t stream) {
  if (m == 0 || n == 0 || batch == 0) return;
  const size_t elem = dtype_size(dtype);
  if (k == 0) {  // an empty sum; cuBLAS would only scale C by beta, which may read poison
    if (!accumulate) {
      for (int64_t i = 0; i < batch; ++i) {
        CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(c) + i * stride_c * elem, ldc * elem, 0, n * elem, m, stream));
      }
    }
    return;
  }
  cublasHandle_t handle = handle_for(stream);
  // Row-major C = op(A)·op(B)  <=>  column-major Cᵀ = op(B)ᵀ·op(A)ᵀ (see the top of the file).
  const cublasOperation_t op_first = op(trans_b);
  const cublasOperation_t op_second = op(trans_a);
  switch (dtype) {
    case DType::kF32: {
      const float alpha32 = static_cast<float>(alpha), beta32 = accumulate ? 1.0f : 0.0f;
      const auto* a32 = static_cast<const float*>(a);
      const auto* b32 = static_cast<const float*>(b);
      auto* c32 = static_cast<float*>(c);
      if (batch == 1) {
        CUBLAS_CHECK(cublasSgemm_64(handle, op_first, op_second, n, m, k, &alpha32, b32, ldb, a32, lda, &beta32, c32,
                                    ldc));
      } else {
        CUBLAS_CHECK(cublasSgemmStridedBatched_64(handle, op_first, op_second, n, m, k, &alpha32, b32, ldb, stride_b,
                                                  a32, lda, stride_a, &beta32, c32, ldc, stride_c, batch));
      }
      return;
    }
    case DType::kF64: {
      const double beta64 = accumulate ? 1.0 : 0.0;
      const auto* a64 = static_cast<const double*>(a);
      const auto* b64 = static_cast<const double*>(b);
      auto* c64 = static_cast<double*>(c);
      if (batch == 1) {
        CUBLAS_CHECK(cublasDgemm_64(handle, op_first, op_second, n, m, k, &alpha, b64, ldb, a64, lda, &beta64, c64,
                                    ldc));
      } else {
        CUBLAS_CHECK(cublasDgemmStridedBatched_64(handle, op_first, op_second, n, m, k, &alpha, b64, ldb, stride_b,
                                                  a64, lda, stride_a, &beta64, c64, ldc, stride_c, batch));
      }
      return;
    }
    case DType::kF16:
    case DType::kBF16: {
      // Half-precision storage, f32 accumulation (tensor cores). Split-K kernels may
      // round their partial sums to the half type (CUBLAS_DEFAULT_MATH allows it, as
      // PyTorch does by default), so tests compare with half-precision tolerances.
      const float alpha32 = static_cast<float>(alpha), beta32 = accumulate ? 1.0f : 0.0f;
      const cudaDataType_t type = cuda_data_type(dtype);
      if (batch == 1) {
        CUBLAS_CHECK(cublasGemmEx_64(handle, op_first, op_second, n, m, k, &alpha32, b, type, ldb, a, type, lda,
                                     &beta32, c, type, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      } else {
        CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(handle, op_first, op_second, n, m, k, &alpha32, b, type, ldb,
                                                   stride_b, a, type, lda, stride_a, &beta32, c, type, ldc, stride_c,
                                                   batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
      return;
    }
    default: unreachable_dtype("gemm", dtype);
  }
}

void gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, bool accumulate, void* c, int64_t ldc, cudaStream_t stream) {
  gemm_strided_batched(dtype, trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, accumulate, c, ldc, 0, 1,
                       stream);
}

size_t linear_epilogue_workspace_bytes(DType dtype) {
  // 4 MiB, as cuBLAS's own default workspace on Hopper; the caller's allocator caches it.
  const bool served = dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
  return served ? size_t{4} << 20 : 0;
}

bool linear_epilogue(DType dtype, Activation act, int64_t rows, int64_t out, int64_t in, const void* x,
                     const void* w, const void* bias, void* y, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  if (linear_epilogue_workspace_bytes(dtype) == 0 || rows == 0 || out == 0 || in == 0) return false;
  // No preference tells the heuristic the bias's alignment, and the epilogue's vector
  // loads need 16 bytes; PyTorch also keeps very long dimensions off this path.
  constexpr int64_t kMaxDim = int64_t{65535} * 32;
  if (alignment_of(bias) < 16 || rows >= kMaxDim || out >= kMaxDim || in >= kMaxDim) return false;
  cublasLtEpilogue_t epilogue;
  if (act == Activation::kNone && bias != nullptr) epilogue = CUBLASLT_EPILOGUE_BIAS;
  else if (act == Activation::kRelu) epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
  else return false;  // the GELUs: cuBLASLt's is the tanh form only, and the caller needs h for backward

  // Column-major view (see the top of the file): yᵀ (out x rows) = W (as Wᵀ stored
  // column-major, transposed) · xᵀ, so m = out, n = rows, k = in, and the bias runs
  // along D's rows, as cuBLASLt's epilogue wants it.
  const int64_t m = out, n = rows, k = in;
  const bool tf32 = dtype == DType::kF32 && tf32_allowed().load();
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cudaDataType_t type = cuda_data_type(dtype);
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cublasLtHandle_t handle = HandlePool<cublasLtHandle_t, create_cublaslt_handle>::get(device);

  MatmulDesc op_desc;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_desc.desc, compute, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_desc.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_desc.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_desc.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (bias != nullptr) {
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_desc.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const int32_t bias_type = type;
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(op_desc.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  LayoutDesc a_desc, b_desc, d_desc;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_desc.desc, type, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_desc.desc, type, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d_desc.desc, type, static_cast<uint64_t>(m), static_cast<uint64_t>(n), m));

  const uint32_t align_a = alignment_of(w), align_b = alignment_of(x), align_d = alignment_of(y);
  const EpilogueKey key{device, static_cast<int>(dtype), static_cast<int>(epilogue), tf32, m, n, k,
                        align_a, align_b, align_d};
  EpilogueChoice choice;
  {
    std::lock_guard<std::mutex> lock(epilogue_cache_mutex());
    auto it = epilogue_cache().find(key);
    if (it != epilogue_cache().end()) {
      choice = it->second;
    } else {
      PreferenceDesc pref;
      CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.desc));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.desc, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &workspace_bytes, sizeof(workspace_bytes)));
      // C is D (y) here.
      const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d}};
      for (const auto& [attribute, bytes] : alignments)
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.desc, attribute, &bytes, sizeof(bytes)));
      cublasLtMatmulHeuristicResult_t result{};
      int returned = 0;
      const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, op_desc.desc, a_desc.desc, b_desc.desc,
                                                                   d_desc.desc, d_desc.desc, pref.desc, 1, &result,
                                                                   &returned);
      // NOT_SUPPORTED is the heuristic's "no algorithm" answer; anything else is a failure.
      if (status != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(status);
      choice.found = status == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
      if (choice.found) choice.algo = result.algo;
      else
        std::fprintf(stderr,
                     "[linear] note: cuBLASLt has no epilogue algorithm for %s (%lld x %lld) x (%lld x %lld)ᵀ; "
                     "using a GEMM and a separate bias pass for this shape\n",
                     std::string(dtype_name(dtype)).c_str(), static_cast<long long>(rows),
                     static_cast<long long>(in), static_cast<long long>(out), static_cast<long long>(in));
      epilogue_cache().emplace(key, choice);
    }
  }
  if (!choice.found) return false;
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle, op_desc.desc, &alpha, w, a_desc.desc, x, b_desc.desc, &beta, y, d_desc.desc, y,
                              d_desc.desc, &choice.algo, workspace, workspace_bytes, stream));
  return true;
}

void broadcast_rows(DType dtype, void* out, const void* row, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  auto launch = [&](auto word) {
    using Word = decltype(word);
    broadcast_rows_kernel<Word><<<grid_for(n), kBlockSize, 0, stream>>>(static_cast<Word*>(out),
                                                                         static_cast<const Word*>(row), rows, cols);
    CUDA_CHECK_LAUNCH();
  };
  switch (dtype_size(dtype)) {
    case 1: launch(uint8_t{}); break;
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: unreachable_dtype("broadcast_rows", dtype);
  }
}

}  // namespace tandem::kernels::cuda
