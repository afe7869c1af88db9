// Error checks for CUDA, cuBLAS, cuDNN and NCCL calls: a failure throws
// std::runtime_error with the call as written, the error text, file and line.
#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

namespace tandem::kernels::cuda {

[[noreturn]] inline void throw_cuda_error(const char* call, const char* what, int code, const char* file, int line) {
  throw std::runtime_error(std::string(call) + " failed: " + what + " (" + std::to_string(code) + ") at " + file + ":" +
                           std::to_string(line));
}

/// Text of a cuBLAS status (cublasGetStatusString exists only in newer releases).
const char* cublas_status_string(int status);

}  // namespace tandem::kernels::cuda

#define CUDA_CHECK(call)                                                                                   \
  do {                                                                                                     \
    cudaError_t tandem_err_ = (call);                                                                      \
    if (tandem_err_ != cudaSuccess)                                                                        \
      ::tandem::kernels::cuda::throw_cuda_error(#call, cudaGetErrorString(tandem_err_),                    \
                                                static_cast<int>(tandem_err_), __FILE__, __LINE__);        \
  } while (0)

/// After a kernel launch: catches bad launch configurations immediately.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(call)                                                                                 \
  do {                                                                                                     \
    int tandem_status_ = static_cast<int>(call);                                                           \
    if (tandem_status_ != 0)                                                                               \
      ::tandem::kernels::cuda::throw_cuda_error(                                                           \
          #call, ::tandem::kernels::cuda::cublas_status_string(tandem_status_), tandem_status_, __FILE__, \
          __LINE__);                                                                                       \
  } while (0)

/// For cuDNN calls; the including .cu/.cpp file includes <cudnn.h> itself (this header
/// does not, so it stays usable in builds without cuDNN).
#define CUDNN_CHECK(call)                                                                                  \
  do {                                                                                                     \
    cudnnStatus_t tandem_cudnn_status_ = (call);                                                           \
    if (tandem_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                                      \
      ::tandem::kernels::cuda::throw_cuda_error(#call, cudnnGetErrorString(tandem_cudnn_status_),          \
                                                static_cast<int>(tandem_cudnn_status_), __FILE__, __LINE__); \
  } while (0)

/// For NCCL calls; the including .cpp file includes <nccl.h> itself (this header does
/// not, so it stays usable in builds without NCCL).
#define NCCL_CHECK(call)                                                                                   \
  do {                                                                                                     \
    ncclResult_t tandem_nccl_result_ = (call);                                                             \
    if (tandem_nccl_result_ != ncclSuccess)                                                                \
      ::tandem::kernels::cuda::throw_cuda_error(#call, ncclGetErrorString(tandem_nccl_result_),            \
                                                static_cast<int>(tandem_nccl_result_), __FILE__, __LINE__); \
  } while (0)
