// Matrix products (matmul, bmm, linear): values against a brute-force triple loop,
// finite-difference gradient checks in f64, f16/bf16 on the CPU, and argument errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::expect_invalid;
using testing::gradcheck;
using testing::random_tensor;

/// C[b] = A[b]·B[b] by the definition, in f64 on the host; `b` may be 2-D (shared).
Tensor reference_matmul(const Tensor& a, const Tensor& b) {
  const bool batched = a.dim() == 3;
  const int64_t batch = batched ? a.size(0) : 1, m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const bool b_batched = b.dim() == 3;
  std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>(), cv(batch * m * n, 0.0);
  for (int64_t s = 0; s < batch; ++s)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p)
          acc += av[s * m * k + i * k + p] * bv[(b_batched ? s * k * n : 0) + p * n + j];
        cv[s * m * n + i * n + j] = acc;
      }
  return Tensor::from_vector(cv, batched ? Shape{batch, m, n} : Shape{m, n});
}

/// y = x·Wᵀ + b by the definition, for x of any leading shape.
Tensor reference_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / in;
  std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(), yv(rows * out);
  std::vector<double> bv = b.defined() ? b.to_vector<double>() : std::vector<double>(out, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = bv[o];
      for (int64_t i = 0; i < in; ++i) acc += xv[r * in + i] * wv[o * in + i];
      yv[r * out + o] = acc;
    }
  Shape shape = x.shape();
  shape.back() = out;
  return Tensor::from_vector(yv, shape);
}


Tensor leaf(const Shape& shape, uint64_t seed, DType dtype = DType::kF64) {
  Tensor t = random_tensor(shape, seed, dtype);
  t.set_requires_grad(true);
  return t;
}

// ---- forward values ------------------------------------------------------------------

TEST(Matmul, TwoDMatchesTripleLoop) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor a = random_tensor({5, 7}, 1, dt), b = random_tensor({7, 3}, 2, dt);
    EXPECT_TRUE(all_close(matmul(a, b), reference_matmul(a, b), 1e-5, 1e-5));
    EXPECT_TRUE(all_close(a.matmul(b), reference_matmul(a, b), 1e-5, 1e-5));
  }
}

TEST(Matmul, BatchedMatchesTripleLoop) {
  Tensor a = random_tensor({4, 5, 6}, 3), b = random_tensor({4, 6, 2}, 4);
  EXPECT_TRUE(all_close(matmul(a, b), reference_matmul(a, b), 1e-12, 1e-12));
  EXPECT_TRUE(all_close(bmm(a, b), reference_matmul(a, b), 1e-12, 1e-12));
}

TEST(Matmul, ThreeDTimesTwoDMatchesTripleLoop) {
  Tensor a = random_tensor({3, 4, 5}, 5, DType::kF32), b = random_tensor({5, 6}, 6, DType::kF32);
  Tensor c = matmul(a, b);
  EXPECT_EQ(c.shape(), (Shape{3, 4, 6}));
  EXPECT_TRUE(all_close(c, reference_matmul(a, b), 1e-5, 1e-5));
}

TEST(Matmul, ManySmallBatchesMatchTripleLoop) {
  // Small products take the one-product-per-thread path of the CPU batched GEMM.
  Tensor a = random_tensor({64, 3, 4}, 7), b = random_tensor({64, 4, 5}, 8);
  EXPECT_TRUE(all_close(bmm(a, b), reference_matmul(a, b), 1e-12, 1e-12));
}

TEST(Matmul, LargeProductMatchesTripleLoop) {
  // Big enough for Eigen's blocked, multi-threaded GEMM kernel.
  Tensor a = random_tensor({130, 300}, 9, DType::kF32), b = random_tensor({300, 70}, 10, DType::kF32);
  EXPECT_TRUE(all_close(matmul(a, b), reference_matmul(a, b), 1e-4, 1e-4));
}

TEST(CpuGemm, EveryTransposeAndThreadSplitMatchesTripleLoop) {
  // Big enough to be split across threads, along n (n >= m) or along m, with extents
  // that are not multiples of the slab alignment; accumulate adds onto C.
  struct Case {
    int64_t m, n, k;
  };
  for (Case cs : {Case{37, 301, 450}, Case{290, 45, 333}}) {
    const int64_t m = cs.m, n = cs.n, k = cs.k;
    for (int flags = 0; flags < 8; ++flags) {
      const bool ta = flags & 1, tb = flags & 2, acc = flags & 4;
      std::vector<double> a = random_tensor({m * k}, 90 + flags).to_vector<double>();
      std::vector<double> b = random_tensor({k * n}, 100 + flags).to_vector<double>();
      std::vector<double> c = random_tensor({m * n}, 110 + flags).to_vector<double>();
      std::vector<double> want = c;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double sum = 0;
          for (int64_t p = 0; p < k; ++p)
            sum += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
          want[i * n + j] = (acc ? c[i * n + j] : 0.0) + 0.5 * sum;
        }
      kernels::cpu::gemm(DType::kF64, ta, tb, m, n, k, 0.5, a.data(), ta ? m : k, b.data(), tb ? k : n, acc, c.data(),
                         n);
      double worst = 0;
      for (size_t i = 0; i < c.size(); ++i) worst = std::max(worst, std::abs(c[i] - want[i]));
      EXPECT_LT(worst, 1e-11) << "m=" << m << " n=" << n << " trans_a=" << ta << " trans_b=" << tb
                              << " accumulate=" << acc;
    }
  }
}

TEST(Matmul, EmptyInnerDimGivesZeros) {
  set_poison_allocations(true);
  Tensor a = Tensor::empty({3, 0}), b = Tensor::empty({0, 4});
  Tensor c = matmul(a, b);
  set_poison_allocations(false);
  EXPECT_TRUE(all_close(c, zeros({3, 4})));
}

TEST(Matmul, HalfPrecisionOnCpuRoundsF32Product) {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    Tensor a = random_tensor({6, 9}, 11, dt), b = random_tensor({9, 4}, 12, dt);
    Tensor c = matmul(a, b);
    EXPECT_EQ(c.dtype(), dt);
    // Inputs are exactly representable; only the final rounding differs from f64.
    EXPECT_TRUE(all_close(c, reference_matmul(a, b), 1e-2, dt == DType::kF16 ? 2e-3 : 1e-2));
  }
}

TEST(Linear, MatchesDefinitionWithAndWithoutBias) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor x = random_tensor({8, 5}, 13, dt), w = random_tensor({3, 5}, 14, dt), b = random_tensor({3}, 15, dt);
    EXPECT_TRUE(all_close(linear(x, w, b), reference_linear(x, w, b), 1e-5, 1e-5));
    EXPECT_TRUE(all_close(linear(x, w), reference_linear(x, w, Tensor()), 1e-5, 1e-5));
  }
}

TEST(Linear, ThreeDInputKeepsLeadingDims) {
  Tensor x = random_tensor({2, 4, 5}, 16), w = random_tensor({3, 5}, 17), b = random_tensor({3}, 18);
  Tensor y = linear(x, w, b);
  EXPECT_EQ(y.shape(), (Shape{2, 4, 3}));
  EXPECT_TRUE(all_close(y, reference_linear(x, w, b), 1e-12, 1e-12));
}

TEST(Linear, HalfPrecisionOnCpu) {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    Tensor x = random_tensor({4, 8}, 19, dt), w = random_tensor({3, 8}, 20, dt), b = random_tensor({3}, 21, dt);
    EXPECT_TRUE(all_close(linear(x, w, b), reference_linear(x, w, b), 1e-2, 1e-2));
  }
}

TEST(Linear, BackwardValuesMatchFormulas) {
  // dx = dy·W, dW = dyᵀ·x, db = Σ_rows dy, checked against reference products.
  Tensor x = leaf({6, 4}, 22), w = leaf({3, 4}, 23), b = leaf({3}, 24);
  Tensor dy = random_tensor({6, 3}, 25);
  linear(x, w, b).backward(dy);
  EXPECT_TRUE(all_close(x.grad(), reference_matmul(dy, w), 1e-12, 1e-12));
  Tensor dy_t = transpose(dy, 0, 1);
  EXPECT_TRUE(all_close(w.grad(), reference_matmul(dy_t, x.detach()), 1e-12, 1e-12));
  std::vector<double> dyv = dy.to_vector<double>(), db(3, 0.0);
  for (int r = 0; r < 6; ++r)
    for (int o = 0; o < 3; ++o) db[o] += dyv[r * 3 + o];
  EXPECT_TRUE(all_close(b.grad(), Tensor::from_vector(db, {3}), 1e-12, 1e-12));
}

// ---- gradients -----------------------------------------------------------------------

TEST(MatmulGrad, TwoD) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); },
                        {leaf({3, 4}, 30), leaf({4, 5}, 31)}));
}

TEST(MatmulGrad, Batched) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); },
                        {leaf({2, 3, 4}, 32), leaf({2, 4, 2}, 33)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return bmm(t[0], t[1]); },
                        {leaf({3, 2, 3}, 34), leaf({3, 3, 4}, 35)}));
}

TEST(MatmulGrad, ThreeDTimesTwoD) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); },
                        {leaf({2, 3, 4}, 36), leaf({4, 5}, 37)}));
}

TEST(MatmulGrad, OnlyOneOperandRequiresGrad) {
  Tensor b = random_tensor({4, 5}, 39);
  EXPECT_TRUE(gradcheck([b](const std::vector<Tensor>& t) { return matmul(t[0], b); }, {leaf({3, 4}, 38)}));
  Tensor a = random_tensor({3, 4}, 40);
  EXPECT_TRUE(gradcheck([a](const std::vector<Tensor>& t) { return matmul(a, t[0]); }, {leaf({4, 5}, 41)}));
}

TEST(MatmulGrad, ChainedProducts) {
  // Gradients flowing through a product into another product (A·B)·C.
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return matmul(matmul(t[0], t[1]), t[2]); },
                        {leaf({2, 3}, 42), leaf({3, 4}, 43), leaf({4, 2}, 44)}));
}

TEST(LinearGrad, WithBias) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); },
                        {leaf({5, 4}, 50), leaf({3, 4}, 51), leaf({3}, 52)}));
}

TEST(LinearGrad, WithoutBias) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return linear(t[0], t[1]); },
                        {leaf({5, 4}, 53), leaf({3, 4}, 54)}));
}

TEST(LinearGrad, ThreeDInput) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); },
                        {leaf({2, 3, 4}, 55), leaf({5, 4}, 56), leaf({5}, 57)}));
}

TEST(LinearGrad, OneDInput) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); },
                        {leaf({4}, 61), leaf({3, 4}, 62), leaf({3}, 63)}));
}

TEST(LinearGrad, InputWithoutGrad) {
  // The first layer of a network: x is data, only W and b learn.
  Tensor x = random_tensor({6, 4}, 58);
  EXPECT_TRUE(gradcheck([x](const std::vector<Tensor>& t) { return linear(x, t[0], t[1]); },
                        {leaf({3, 4}, 59), leaf({3}, 60)}));
}

// ---- errors ----------------------------------------------------------------------------

TEST(LinalgErrors, InnerDimensionMismatchNamesBothShapes) {
  Tensor a = random_tensor({2, 3}, 70), b = random_tensor({4, 5}, 71);
  expect_invalid([&] { matmul(a, b); }, {"[matmul]", "a.shape[-1] == b.shape[-2]", "[2, 3] and [4, 5]"});
  Tensor a3 = random_tensor({2, 2, 3}, 72), b3 = random_tensor({2, 4, 5}, 73);
  expect_invalid([&] { bmm(a3, b3); }, {"[bmm]", "[2, 2, 3] and [2, 4, 5]"});
}

TEST(LinalgErrors, UnsupportedRanks) {
  Tensor v = random_tensor({3}, 74), m = random_tensor({3, 2}, 75);
  expect_invalid([&] { matmul(v, m); }, {"[matmul]", "(M,K)@(K,N)", "[3] and [3, 2]"});
  Tensor m3 = random_tensor({2, 3, 3}, 76);
  expect_invalid([&] { matmul(m, m3); }, {"[matmul]", "[3, 2] and [2, 3, 3]"});
  expect_invalid([&] { bmm(m, m); }, {"[bmm]", "3-D", "[3, 2] and [3, 2]"});
}

TEST(LinalgErrors, BatchMismatch) {
  Tensor a = random_tensor({2, 3, 4}, 77), b = random_tensor({3, 4, 5}, 78);
  expect_invalid([&] { matmul(a, b); }, {"[bmm]", "batch", "[2, 3, 4] and [3, 4, 5]"});
}

TEST(LinalgErrors, DtypeMismatchNamesBoth) {
  Tensor a = random_tensor({2, 3}, 79, DType::kF32), b = random_tensor({3, 2}, 80, DType::kF64);
  expect_invalid([&] { matmul(a, b); }, {"[matmul]", "float32", "float64"});
  expect_invalid([&] { linear(a, random_tensor({2, 3}, 81, DType::kF64)); }, {"[linear]", "float32", "float64"});
}

TEST(LinalgErrors, IntegerDtypeUnsupported) {
  Tensor a = arange(6).reshape({2, 3}), b = arange(6).reshape({3, 2});
  expect_invalid([&] { matmul(a, b); }, {"[matmul]", "int64", "cpu"});
}

TEST(LinalgErrors, LinearShapes) {
  Tensor x = random_tensor({4, 3}, 82), w = random_tensor({5, 6}, 83);
  expect_invalid([&] { linear(x, w); }, {"[linear]", "[4, 3]", "[5, 6]"});
  Tensor w1 = random_tensor({5}, 84);
  expect_invalid([&] { linear(x, w1); }, {"[linear]", "weight of 2 dims", "[5]"});
  Tensor w2 = random_tensor({5, 3}, 85), b = random_tensor({4}, 86);
  expect_invalid([&] { linear(x, w2, b); }, {"[linear]", "bias of shape [5]", "[4]"});
}

TEST(LinalgErrors, UndefinedOperand) {
  expect_invalid([&] { matmul(Tensor(), random_tensor({2, 2}, 87)); }, {"[matmul]", "'a'"});
}

}  // namespace
}  // namespace tandem
