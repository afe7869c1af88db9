// CUDA dropout: each thread evaluates one Philox block and handles its four elements,
// so a block is computed once and the keep test matches the CPU twin exactly.
#include "kernels/cuda/dropout.h"

#include "kernels/cuda/common.cuh"
#include "kernels/philox.h"

namespace tandem::kernels::cuda {
namespace {

template <class T>
__global__ void dropout_apply_kernel(T* out, const T* x, int64_t n, double p, double scale, uint64_t seed,
                                     uint64_t offset, const uint64_t* __restrict__ offset_base) {
  using A = compute_t<T>;
  const A s = static_cast<A>(scale);
  if (offset_base != nullptr) offset += *offset_base;
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock r = philox_block(seed, offset + static_cast<uint64_t>(b));
    const int64_t base = 4 * b;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = base + w;
      if (i >= n) break;
      const bool keep = static_cast<double>(philox_uniform(r.w[w])) >= p;
      out[i] = keep ? static_cast<T>(static_cast<A>(x[i]) * s) : static_cast<T>(A(0));
    }
  }
}

}  // namespace

void dropout_apply(void* out, const void* x, DType dtype, int64_t n, double p, double scale, uint64_t seed,
                   uint64_t offset, const uint64_t* offset_base, cudaStream_t stream) {
  if (n == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        dropout_apply_kernel<T><<<grid_for(n, 4), kBlockSize, 0, stream>>>(static_cast<T*>(out),
                                                                           static_cast<const T*>(x), n, p, scale,
                                                                           seed, offset, offset_base);
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype("dropout_apply", dtype);
}

}  // namespace tandem::kernels::cuda
