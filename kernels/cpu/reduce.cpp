// CPU reductions. Sums accumulate in double (int64 for integers) so results do not
// depend on the summation order for the sizes we meet in practice.
#include "kernels/cpu/reduce.h"
#include "kernels/cpu/parallel.h"

#include <cmath>
#include <vector>

#include "kernels/common.h"
#include "kernels/convert.h"

namespace tandem::kernels::cpu {
namespace {

template <class T, class Acc, class Out>
void sum_typed(Out* out, const T* in, int64_t outer, int64_t n, int64_t inner, double scale) {
  if (inner == 1) {
#pragma omp parallel for if (outer * n > kParallelMinElements && outer > 1)
    for (int64_t o = 0; o < outer; ++o) {
      const T* row = in + o * n;
      Acc acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += convert<Acc>(row[k]);
      out[o] = convert<Out>(static_cast<Acc>(acc * static_cast<Acc>(scale)));
    }
    return;
  }
  std::vector<Acc> acc(static_cast<size_t>(inner));
  for (int64_t o = 0; o < outer; ++o) {
    std::fill(acc.begin(), acc.end(), Acc(0));
    for (int64_t k = 0; k < n; ++k) {
      const T* row = in + (o * n + k) * inner;
      for (int64_t i = 0; i < inner; ++i) acc[i] += convert<Acc>(row[i]);
    }
    for (int64_t i = 0; i < inner; ++i) out[o * inner + i] = convert<Out>(static_cast<Acc>(acc[i] * static_cast<Acc>(scale)));
  }
}

template <class C>
inline bool greater_or_nan(C v, C best) {
  // NaN propagates, as in PyTorch: the first NaN wins and nothing beats it.
  if (std::isnan(best)) return false;
  return v > best || std::isnan(v);
}

template <class T>
void max_typed(T* values, int64_t* indices, const T* in, int64_t outer, int64_t n, int64_t inner) {
  using C = std::conditional_t<std::is_integral_v<T>, int64_t, compute_t<T>>;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      const T* p = in + o * n * inner + i;
      C best = convert<C>(p[0]);
      int64_t arg = 0;
      for (int64_t k = 1; k < n; ++k) {
        C v = convert<C>(p[k * inner]);
        bool better;
        if constexpr (std::is_integral_v<C>) better = v > best;
        else better = greater_or_nan(v, best);
        if (better) {
          best = v;
          arg = k;
        }
      }
      if (values) values[o * inner + i] = p[arg * inner];
      indices[o * inner + i] = arg;
    }
  }
}

}  // namespace

void sum(DType dtype, void* out, const void* in, int64_t outer, int64_t n, int64_t inner, double scale) {
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_integral_v<T>) {
      sum_typed<T, int64_t>(static_cast<int64_t*>(out), static_cast<const T*>(in), outer, n, inner, scale);
    } else {
      sum_typed<T, double>(static_cast<T*>(out), static_cast<const T*>(in), outer, n, inner, scale);
    }
  });
}

void max(DType dtype, void* values, int64_t* indices, const void* in, int64_t outer, int64_t n, int64_t inner) {
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    max_typed<T>(static_cast<T*>(values), indices, static_cast<const T*>(in), outer, n, inner);
  });
}

}  // namespace tandem::kernels::cpu
