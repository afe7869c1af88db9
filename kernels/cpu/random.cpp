// CPU twins of kernels/cuda/random.cu. The affine map uses std::fma so that the host
// compiler's contraction choices cannot make CPU results differ from the GPU's.
#include "kernels/cpu/random.h"
#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/common.h"
#include "kernels/philox.h"

namespace tandem::kernels::cpu {
namespace {


// f64 stays f64; every other type goes through f32 first (the draw's precision), so
// f16/bf16 results equal the f32 result rounded, on CPU and GPU alike.
template <class T>
T from_scaled(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<T>(static_cast<float>(v));
  }
}

template <class T, bool kNormal>
void fill_typed(T* out, int64_t n, double a, double b, uint64_t seed, uint64_t offset) {
  const int64_t blocks = static_cast<int64_t>(philox_blocks(n));
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const PhiloxBlock r = philox_block(seed, offset + static_cast<uint64_t>(blk));
    const int64_t end = std::min<int64_t>(4, n - 4 * blk);
    for (int64_t w = 0; w < end; ++w) {
      // uniform: a = scale (high − low), b = low; normal: a = std, b = mean.
      const float z = kNormal ? philox_normal(r, static_cast<int>(w)) : philox_uniform(r.w[w]);
      out[4 * blk + w] = from_scaled<T>(std::fma(a, static_cast<double>(z), b));
    }
  }
}

}  // namespace

void uniform_fill(void* out, DType dtype, int64_t n, double low, double high, uint64_t seed, uint64_t offset) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        fill_typed<T, false>(static_cast<T*>(out), n, high - low, low, seed, offset);
      }))
    unreachable_dtype("uniform_fill", dtype);
}

void normal_fill(void* out, DType dtype, int64_t n, double mean, double std, uint64_t seed, uint64_t offset) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        fill_typed<T, true>(static_cast<T*>(out), n, std, mean, seed, offset);
      }))
    unreachable_dtype("normal_fill", dtype);
}

}  // namespace tandem::kernels::cpu
