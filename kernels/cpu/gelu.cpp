// GELU over f32 arrays through Eigen array expressions, which evaluate with SIMD
// packets (erf: Eigen's rational approximation; exp: its packet exp).
#include "kernels/cpu/gelu.h"

#include <algorithm>

// GCC 12 flags Eigen's AVX-512 pmin/pmax (inlined here from the erf clamp) with
// -Wmaybe-uninitialized (-Wuninitialized at lower optimisation): a false positive on
// the intrinsics' undefined pass-through operand of their masked forms.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "kernels/cpu/parallel.h"
#include "kernels/elementwise_math.h"

namespace tandem::kernels::cpu {
namespace {

using ConstArray = Eigen::Map<const Eigen::ArrayXf>;
using Array = Eigen::Map<Eigen::ArrayXf>;

// Pieces of the arrays handed to OpenMP threads when they are large enough.
constexpr int64_t kPiece = int64_t{1} << 16;

template <class Fn>
void over_pieces(int64_t n, Fn&& fn) {
  const int64_t pieces = (n + kPiece - 1) / kPiece;
#pragma omp parallel for if (n > kParallelMinElements)
  for (int64_t p = 0; p < pieces; ++p) {
    const int64_t begin = p * kPiece;
    fn(begin, std::min(n, begin + kPiece) - begin);
  }
}

}  // namespace

void gelu_f32(float* y, const float* x, int64_t n) {
  over_pieces(n, [&](int64_t begin, int64_t len) {
    const ConstArray in(x + begin, len);
    Array(y + begin, len) = 0.5f * in * (1.0f + (in * static_cast<float>(kInvSqrt2)).erf());
  });
}

void gelu_grad_f32(float* dx, const float* dy, const float* x, int64_t n) {
  over_pieces(n, [&](int64_t begin, int64_t len) {
    const ConstArray in(x + begin, len), grad(dy + begin, len);
    const auto cdf = 0.5f * (1.0f + (in * static_cast<float>(kInvSqrt2)).erf());
    const auto pdf = static_cast<float>(kInvSqrt2Pi) * (-0.5f * in.square()).exp();
    Array(dx + begin, len) = grad * (cdf + in * pdf);
  });
}

}  // namespace tandem::kernels::cpu

#pragma GCC diagnostic pop
