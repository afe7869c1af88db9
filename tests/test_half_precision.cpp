// f16 and bf16 kernels on the CPU against f32 references: every op of the autocast
// table (matrix products, convolutions, softmax, losses, norms, reductions, element-wise,
// pooling, dropout, embedding) run on half inputs, forward and backward, compared with
// the same op in f32 on the same (exactly widened) values, so the difference measures
// the half kernel alone: f32 accumulation and one rounding of the result. Also the casts.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "autocast_cases.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::case_cotangent;
using testing::case_inputs;
using testing::half_tolerance;
using testing::op_cases;
using testing::OpCase;
using testing::random_tensor;
using testing::widened_leaves;

constexpr DType kHalfTypes[] = {DType::kF16, DType::kBF16};

/// Runs `c` on half inputs (no autocast) and on f32 copies of the same values; the
/// output keeps the half dtype and matches within rtol = atol = half_tolerance; the
/// input gradients (one or two more roundings of intermediates) within twice that.
void expect_half_matches_f32(const OpCase& c, DType half, uint64_t seed) {
  SCOPED_TRACE(c.name + " " + std::string(dtype_name(half)));
  std::vector<Tensor> xh = case_inputs(c, half, Device::cpu(), seed);
  std::vector<Tensor> xf = widened_leaves(xh);
  Tensor yh = c.fn(xh), yf = c.fn(xf);
  ASSERT_EQ(yh.dtype(), half);
  ASSERT_EQ(yf.dtype(), DType::kF32);
  const double tol = half_tolerance(half);
  EXPECT_TRUE(all_close(yh.to(DType::kF32), yf, tol, tol));

  Tensor gh = case_cotangent(yh, seed + 1);
  yh.backward(gh);
  yf.backward(gh.to(DType::kF32));
  for (size_t i = 0; i < xh.size(); ++i) {
    ASSERT_TRUE(xh[i].grad().defined()) << "input " << i;
    EXPECT_EQ(xh[i].grad().dtype(), half) << "input " << i;
    EXPECT_TRUE(all_close(xh[i].grad().to(DType::kF32), xf[i].grad(), 2 * tol, 2 * tol)) << "gradient of input " << i;
  }
}

TEST(HalfPrecision, EveryOpMatchesF32OnTheSameValues) {
  uint64_t seed = 100;
  for (const OpCase& c : op_cases())
    for (DType half : kHalfTypes) expect_half_matches_f32(c, half, seed += 10);
}

TEST(HalfPrecision, LargeGemmAccumulatesInF32) {
  // k = 4096 terms: a half accumulator would drift by ~sqrt(k)·eps relative; f32
  // accumulation leaves only the final rounding.
  for (DType half : kHalfTypes) {
    Tensor a = random_tensor({8, 4096}, 1, half, Device::cpu(), 0.0, 1.0);
    Tensor b = random_tensor({4096, 8}, 2, half, Device::cpu(), 0.0, 1.0);
    Tensor ref = matmul(a.to(DType::kF64), b.to(DType::kF64));
    Tensor got = matmul(a, b);
    const double eps = half == DType::kF16 ? 0x1p-11 : 0x1p-8;
    EXPECT_TRUE(all_close(got.to(DType::kF64), ref, 0.0, eps)) << dtype_name(half);  // within one ulp
  }
}

TEST(HalfPrecision, LongSumAccumulatesInF32) {
  for (DType half : kHalfTypes) {
    Tensor x = random_tensor({40000}, 3, half, Device::cpu(), 0.5, 1.0);  // sum ~30000 < 65504
    Tensor ref = sum(x.to(DType::kF64));
    const double eps = half == DType::kF16 ? 0x1p-11 : 0x1p-8;
    EXPECT_TRUE(all_close(sum(x).to(DType::kF64), ref, 0.0, eps)) << dtype_name(half);
    EXPECT_TRUE(all_close(mean(x).to(DType::kF64), mean(x.to(DType::kF64)), 0.0, eps)) << dtype_name(half);
  }
}

TEST(HalfPrecision, CastsRoundToNearestEvenAndRoundTrip) {
  // Values exactly representable in f16 and bf16 round-trip bit for bit; others round
  // to nearest even, as the scalar conversions (and the GPU) do.
  Tensor x = Tensor::from_vector<float>({0.0f, -0.0f, 1.0f, -2.5f, 0.1f, 65504.0f, 70000.0f, 1e-8f, 3.14159f,
                                         1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 1e30f},
                                        {12});
  Tensor h = x.to(DType::kF16), bf = x.to(DType::kBF16);
  std::vector<float> xs = x.to_vector<float>();
  std::vector<float> hs = h.to_vector<float>(), bs = bf.to_vector<float>();
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_EQ(hs[i], static_cast<float>(Half(xs[i]))) << "f16 element " << i;
    EXPECT_EQ(bs[i], static_cast<float>(BFloat16(xs[i]))) << "bf16 element " << i;
  }
  EXPECT_EQ(hs[9], 1.0f);                  // a tie rounds to the even neighbour
  EXPECT_EQ(hs[10], 1.0f + 4 * 0x1p-11f);  // and here up, to the even one
  EXPECT_TRUE(std::isinf(hs[6]));          // beyond the f16 range
  EXPECT_EQ(bs[11], static_cast<float>(BFloat16(1e30f)));  // bf16 keeps the f32 range
  // Round trips through the wider types are exact.
  EXPECT_TRUE(all_close(h.to(DType::kF32).to(DType::kF16).to(DType::kF32), h.to(DType::kF32), 0, 0));
  EXPECT_TRUE(all_close(bf.to(DType::kF64).to(DType::kBF16).to(DType::kF32), bf.to(DType::kF32), 0, 0));
  // f16 <-> bf16 goes through f32: the result equals the scalar conversion of the f32 value.
  std::vector<float> hb = h.to(DType::kBF16).to_vector<float>();
  for (size_t i = 0; i < hs.size(); ++i) EXPECT_EQ(hb[i], static_cast<float>(BFloat16(hs[i]))) << "element " << i;
}

TEST(HalfPrecision, CastIsDifferentiableBothWays) {
  for (DType half : kHalfTypes) {
    Tensor x = random_tensor({3, 4}, 7, DType::kF32).set_requires_grad(true);
    Tensor y = x.to(half);
    EXPECT_EQ(y.dtype(), half);
    Tensor g = random_tensor({3, 4}, 8, half);
    y.backward(g);
    ASSERT_EQ(x.grad().dtype(), DType::kF32);
    EXPECT_TRUE(all_close(x.grad(), g.to(DType::kF32), 0, 0));  // widening is exact
  }
}

TEST(HalfPrecision, MixedHalfOperandsPromote) {
  // One f16/bf16 operand with another floating dtype promotes to the wider one (f32 for
  // f16 with bf16), gradients come back in each operand's own dtype.
  struct Mix {
    DType a, b, out;
  };
  for (const Mix& m : {Mix{DType::kBF16, DType::kF32, DType::kF32}, Mix{DType::kF32, DType::kF16, DType::kF32},
                       Mix{DType::kF16, DType::kBF16, DType::kF32}, Mix{DType::kF64, DType::kBF16, DType::kF64}}) {
    SCOPED_TRACE(std::string(dtype_name(m.a)) + " with " + std::string(dtype_name(m.b)));
    Tensor a = random_tensor({3, 4}, 11, m.a).set_requires_grad(true);
    Tensor b = random_tensor({4}, 12, m.b, Device::cpu(), 0.5, 1.5).set_requires_grad(true);
    const Tensor a64 = a.detach().to(DType::kF64), b64 = b.detach().to(DType::kF64);
    const double tol = half_tolerance(m.out);
    for (auto [name, got, want] : {std::tuple{"add", a + b, a64 + b64}, std::tuple{"sub", a - b, a64 - b64},
                                   std::tuple{"mul", a * b, a64 * b64}, std::tuple{"div", a / b, a64 / b64}}) {
      EXPECT_EQ(got.dtype(), m.out) << name;
      EXPECT_TRUE(all_close(got.to(DType::kF64), want, tol, tol)) << name;
    }
    ((a * b) + (a - b)).sum().backward();
    EXPECT_EQ(a.grad().dtype(), m.a);
    EXPECT_EQ(b.grad().dtype(), m.b);
  }
  // f32 with f64 (no half operand) still has to match, as before.
  testing::expect_invalid([] { zeros({2}) + zeros({2}, {.dtype = DType::kF64}); }, {"[add]", "float32", "float64"});
}

}  // namespace
}  // namespace tandem
