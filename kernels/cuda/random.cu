// CUDA random fills: one thread per Philox block (four elements). The affine map is an
// explicit fma in f64, which is correctly rounded on both sides, so the result does
// not depend on nvcc's or the host compiler's contraction of a*z + b.
#include "kernels/cuda/random.h"

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/philox.h"

namespace tandem::kernels::cuda {
namespace {

// f64 stays f64; every other type rounds to f32 first, as the CPU twin does.
template <class T>
__device__ T from_scaled(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<T>(static_cast<float>(v));
  }
}

template <class T, bool kNormal>
__global__ void random_fill_kernel(T* out, int64_t n, double a, double b, uint64_t seed, uint64_t offset,
                                   const uint64_t* __restrict__ offset_base) {
  if (offset_base != nullptr) offset += *offset_base;
  const int64_t blocks = (n + 3) / 4;
  for (int64_t blk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; blk < blocks;
       blk += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock r = philox_block(seed, offset + static_cast<uint64_t>(blk));
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = 4 * blk + w;
      if (i >= n) break;
      const float z = kNormal ? philox_normal(r, w) : philox_uniform(r.w[w]);
      out[i] = from_scaled<T>(fma(a, static_cast<double>(z), b));
    }
  }
}

template <bool kNormal>
void launch_fill(const char* name, void* out, DType dtype, int64_t n, double a, double b, uint64_t seed,
                 uint64_t offset, const uint64_t* offset_base, cudaStream_t stream) {
  if (n == 0) return;
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        random_fill_kernel<T, kNormal>
            <<<grid_for(n, 4), kBlockSize, 0, stream>>>(static_cast<T*>(out), n, a, b, seed, offset, offset_base);
        CUDA_CHECK_LAUNCH();
      }))
    unreachable_dtype(name, dtype);
}

__global__ void store_philox_offset_kernel(uint64_t* counter, uint64_t value) { *counter = value; }

}  // namespace

void uniform_fill(void* out, DType dtype, int64_t n, double low, double high, uint64_t seed, uint64_t offset,
                  const uint64_t* offset_base, cudaStream_t stream) {
  launch_fill<false>("uniform_fill", out, dtype, n, high - low, low, seed, offset, offset_base, stream);
}

void normal_fill(void* out, DType dtype, int64_t n, double mean, double std, uint64_t seed, uint64_t offset,
                 const uint64_t* offset_base, cudaStream_t stream) {
  launch_fill<true>("normal_fill", out, dtype, n, std, mean, seed, offset, offset_base, stream);
}

void store_philox_offset(uint64_t* counter, uint64_t value, cudaStream_t stream) {
  store_philox_offset_kernel<<<1, 1, 0, stream>>>(counter, value);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
