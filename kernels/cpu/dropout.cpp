// CPU twin of kernels/cuda/dropout.cu: one Philox block per four elements, the same
// keep test (u >= p, compared in f64) so CPU and GPU masks agree bit for bit.
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/parallel.h"

#include <algorithm>

#include "kernels/common.h"
#include "kernels/philox.h"

namespace tandem::kernels::cpu {
namespace {


template <class T>
void apply_typed(T* out, const T* x, int64_t n, double p, double scale, uint64_t seed, uint64_t offset) {
  using C = compute_t<T>;
  const C s = static_cast<C>(scale);
  const int64_t blocks = static_cast<int64_t>(philox_blocks(n));
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t b = 0; b < blocks; ++b) {
    const PhiloxBlock r = philox_block(seed, offset + static_cast<uint64_t>(b));
    const int64_t end = std::min<int64_t>(4, n - 4 * b);
    for (int64_t w = 0; w < end; ++w) {
      const int64_t i = 4 * b + w;
      const bool keep = static_cast<double>(philox_uniform(r.w[w])) >= p;
      // Dropped elements are written as 0, not x·0, so p = 1 (scale 0) and
      // infinite inputs give 0 rather than NaN.
      out[i] = keep ? static_cast<T>(static_cast<C>(x[i]) * s) : static_cast<T>(C(0));
    }
  }
}

}  // namespace

void dropout_apply(void* out, const void* x, DType dtype, int64_t n, double p, double scale, uint64_t seed,
                   uint64_t offset) {
  if (!visit_floating(dtype, [&](auto t) {
        using T = decltype(t);
        apply_typed(static_cast<T*>(out), static_cast<const T*>(x), n, p, scale, seed, offset);
      }))
    unreachable_dtype("dropout_apply", dtype);
}

}  // namespace tandem::kernels::cpu
