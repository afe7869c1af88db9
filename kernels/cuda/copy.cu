// CUDA casts, fills and ranges.
#include "kernels/cuda/copy.h"

#include "kernels/convert.h"
#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

template <class S, class D>
__global__ void cast_kernel(D* __restrict__ dst, const S* __restrict__ src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = convert<D>(src[i]);
}

template <class T>
__global__ void fill_kernel(T* __restrict__ out, T value, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = value;
}

template <class T>
__global__ void arange_kernel(T* __restrict__ out, double start, double step, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = convert<T>(start + static_cast<double>(i) * step);
}

}  // namespace

void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (src_dtype == dst_dtype) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * dtype_size(src_dtype), cudaMemcpyDeviceToDevice,
                               stream));
    return;
  }
  visit_all(src_dtype, [&](auto stag) {
    using S = decltype(stag);
    visit_all(dst_dtype, [&](auto dtag) {
      using D = decltype(dtag);
      cast_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(static_cast<D*>(dst), static_cast<const S*>(src), n);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void fill(DType dtype, void* out, double value, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(static_cast<T*>(out), convert<T>(value), n);
    CUDA_CHECK_LAUNCH();
  });
}

void arange(DType dtype, void* out, double start, double step, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    arange_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(static_cast<T*>(out), start, step, n);
    CUDA_CHECK_LAUNCH();
  });
}

void fill_bytes(void* out, int value, size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return;
  CUDA_CHECK(cudaMemsetAsync(out, value, nbytes, stream));
}

}  // namespace tandem::kernels::cuda
