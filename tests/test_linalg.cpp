// Matrix products (matmul, bmm, linear) and scaled dot-product attention: values
// against brute-force loops, finite-difference gradient checks in f64, f16/bf16 on the
// CPU, and argument errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autocast.h"
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

// ---- linear with a fused activation ----------------------------------------------------

constexpr Activation kActivations[] = {Activation::kRelu, Activation::kGelu, Activation::kGeluTanh};

/// The unfused composition the fused epilogue must equal.
Tensor linear_then_activation(const Tensor& x, const Tensor& w, const Tensor& b, Activation act) {
  Tensor h = linear(x, w, b);
  switch (act) {
    case Activation::kRelu: return relu(h);
    case Activation::kGelu: return gelu(h);
    case Activation::kGeluTanh: return gelu(h, /*tanh_approximation=*/true);
    case Activation::kNone: break;
  }
  return h;
}

/// Output and every gradient of the fused op against the composition, same inputs and dy.
void expect_fused_matches_composition(const Shape& x_shape, int64_t out, bool with_bias, Activation act, DType dt,
                                      uint64_t seed, double tol) {
  SCOPED_TRACE("activation " + std::to_string(static_cast<int>(act)) + ", " + std::string(dtype_name(dt)) + ", x " +
               shape_str(x_shape) + (with_bias ? ", bias" : ", no bias"));
  auto leaves = [&] {
    std::vector<Tensor> t = {random_tensor(x_shape, seed, dt), random_tensor({out, x_shape.back()}, seed + 1, dt),
                             with_bias ? random_tensor({out}, seed + 2, dt) : Tensor()};
    for (Tensor& v : t)
      if (v.defined()) v.set_requires_grad(true);
    return t;
  };
  std::vector<Tensor> a = leaves(), b = leaves();
  Tensor ya = linear(a[0], a[1], a[2], act), yb = linear_then_activation(b[0], b[1], b[2], act);
  ASSERT_EQ(ya.shape(), yb.shape());
  ASSERT_EQ(ya.dtype(), dt);
  EXPECT_TRUE(all_close(ya, yb, tol, tol));
  Tensor dy = random_tensor(ya.shape(), seed + 3, dt);
  ya.backward(dy);
  yb.backward(dy);
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].defined()) {
      EXPECT_TRUE(all_close(a[i].grad(), b[i].grad(), tol, tol)) << "gradient of input " << i;
    }
  }
}

TEST(LinearActivation, EqualsLinearThenActivation) {
  for (Activation act : kActivations) {
    for (bool with_bias : {true, false}) {
      expect_fused_matches_composition({7, 12}, 5, with_bias, act, DType::kF64, 100, 1e-12);
      expect_fused_matches_composition({2, 3, 12}, 8, with_bias, act, DType::kF32, 101, 1e-5);
    }
    // f16/bf16: the pre-activation is rounded as linear()'s output would be; the sum
    // order of the product's bias differs, hence a tolerance of a few ulps.
    expect_fused_matches_composition({6, 16}, 9, true, act, DType::kF16, 102, 1e-2);
    expect_fused_matches_composition({6, 16}, 9, true, act, DType::kBF16, 103, 5e-2);
  }
}

TEST(LinearActivation, BiasGradientOverManyRowBlocks) {
  // 1000 rows span eight of the CPU kernel's 128-row blocks plus a partial one; big
  // enough (> 2^20 elements) to split over threads.
  for (Activation act : kActivations) {
    expect_fused_matches_composition({1000, 8}, 37, true, act, DType::kF64, 104, 1e-11);
    expect_fused_matches_composition({4, 300, 16}, 1024, true, act, DType::kF32, 105, 1e-4);
  }
}

TEST(LinearActivation, ReluKeepsOnlyTheOutputForBackward) {
  // ReLU's epilogue runs in place: the output is the saved tensor, and the gradient is
  // dy where the output is positive.
  Tensor x = leaf({5, 6}, 106), w = leaf({4, 6}, 107), b = leaf({4}, 108);
  Tensor y = linear(x, w, b, Activation::kRelu);
  Tensor dy = random_tensor({5, 4}, 109);
  y.backward(dy);
  std::vector<double> yv = y.to_vector<double>(), dyv = dy.to_vector<double>(), db(4, 0.0);
  for (int r = 0; r < 5; ++r)
    for (int o = 0; o < 4; ++o) db[o] += yv[r * 4 + o] > 0 ? dyv[r * 4 + o] : 0.0;
  EXPECT_TRUE(all_close(b.grad(), Tensor::from_vector(db, {4}), 1e-12, 1e-12));
  EXPECT_GE(*std::min_element(yv.begin(), yv.end()), 0.0);
}

TEST(LinearActivationGrad, EveryActivation) {
  for (Activation act : kActivations) {
    SCOPED_TRACE(static_cast<int>(act));
    auto fn = [act](const std::vector<Tensor>& t) { return linear(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), act); };
    EXPECT_TRUE(gradcheck(fn, {leaf({5, 4}, 110), leaf({3, 4}, 111), leaf({3}, 112)}));
    EXPECT_TRUE(gradcheck(fn, {leaf({5, 4}, 113), leaf({3, 4}, 114)}));
    EXPECT_TRUE(gradcheck(fn, {leaf({2, 3, 4}, 115), leaf({5, 4}, 116), leaf({5}, 117)}));
    EXPECT_TRUE(gradcheck(fn, {leaf({4}, 118), leaf({3, 4}, 119), leaf({3}, 120)}));
    Tensor x = random_tensor({6, 4}, 121);  // data: only W and b learn
    EXPECT_TRUE(gradcheck([x, act](const std::vector<Tensor>& t) { return linear(x, t[0], t[1], act); },
                          {leaf({3, 4}, 122), leaf({3}, 123)}));
  }
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
  // The fused epilogue checks the same things first.
  expect_invalid([&] { linear(x, w, Tensor(), Activation::kGelu); }, {"[linear]", "[4, 3]", "[5, 6]"});
  expect_invalid([&] { linear(x, w2, b, Activation::kRelu); }, {"[linear]", "bias of shape [5]", "[4]"});
  Tensor xi = arange(12).reshape({4, 3});
  expect_invalid([&] { linear(xi, arange(6).reshape({2, 3}), Tensor(), Activation::kRelu); }, {"[linear]", "int64"});
}

TEST(LinalgErrors, UndefinedOperand) {
  expect_invalid([&] { matmul(Tensor(), random_tensor({2, 2}, 87)); }, {"[matmul]", "'a'"});
}


// ---- scaled dot-product attention ------------------------------------------------------

/// softmax(q·kᵀ·scale, masked)·v by the definition, in f64 on the host, for (..., T, E).
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  const int64_t t_q = q.size(-2), e = q.size(-1), t_k = k.size(-2), e_v = v.size(-1);
  const int64_t batch = q.numel() / (t_q * e);
  std::vector<double> qv = q.to_vector<double>(), kv = k.to_vector<double>(), vv = v.to_vector<double>();
  std::vector<double> out(batch * t_q * e_v, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < t_q; ++i) {
      const int64_t n = causal ? std::min(i + 1, t_k) : t_k;
      std::vector<double> w(n);
      double m = -INFINITY, sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < e; ++c) dot += qv[(b * t_q + i) * e + c] * kv[(b * t_k + j) * e + c];
        w[j] = dot * scale;
        m = std::max(m, w[j]);
      }
      for (double& x : w) sum += (x = std::exp(x - m));
      for (int64_t j = 0; j < n; ++j)
        for (int64_t c = 0; c < e_v; ++c) out[(b * t_q + i) * e_v + c] += w[j] / sum * vv[(b * t_k + j) * e_v + c];
    }
  Shape shape = q.shape();
  shape.back() = e_v;
  return Tensor::from_vector(out, shape);
}

using Sdpa = std::function<Tensor(const std::vector<Tensor>&)>;
Sdpa sdpa(bool causal, std::optional<double> scale = std::nullopt) {
  return [causal, scale](const std::vector<Tensor>& t) { return scaled_dot_product_attention(t[0], t[1], t[2], causal, scale); };
}

TEST(Attention, MatchesDefinition) {
  for (DType dt : {DType::kF64, DType::kF32}) {
    const double tol = dt == DType::kF64 ? 1e-12 : 1e-5;
    for (bool causal : {false, true}) {
      // (B, H, T, E) as a transformer calls it, and 3-D (batch, T, E).
      Tensor q = random_tensor({2, 3, 5, 4}, 100, dt), k = random_tensor({2, 3, 5, 4}, 101, dt),
             v = random_tensor({2, 3, 5, 6}, 102, dt);
      EXPECT_TRUE(all_close(scaled_dot_product_attention(q, k, v, causal),
                            reference_attention(q, k, v, causal, 0.5), tol, tol))
          << "causal " << causal;
      Tensor q3 = random_tensor({4, 7, 8}, 103, dt), k3 = random_tensor({4, 7, 8}, 104, dt),
             v3 = random_tensor({4, 7, 8}, 105, dt);
      EXPECT_TRUE(all_close(scaled_dot_product_attention(q3, k3, v3, causal, 0.3),
                            reference_attention(q3, k3, v3, causal, 0.3), tol, tol));
    }
  }
}

TEST(Attention, CausalWithMoreKeysThanQueriesIsTopLeftAligned) {
  // PyTorch's is_causal masks with tril(ones(Tq, Tk)): query i sees keys 0..i.
  Tensor q = random_tensor({2, 3, 4}, 106), k = random_tensor({2, 6, 4}, 107), v = random_tensor({2, 6, 2}, 108);
  EXPECT_TRUE(all_close(scaled_dot_product_attention(q, k, v, true), reference_attention(q, k, v, true, 0.5), 1e-12,
                        1e-12));
  // The first query sees only the first key: its output is that key's value.
  Tensor out = scaled_dot_product_attention(q, k, v, true);
  EXPECT_TRUE(all_close(narrow(narrow(out, 1, 0, 1), 0, 0, 1), narrow(narrow(v, 1, 0, 1), 0, 0, 1), 1e-15, 0));
}

TEST(Attention, CausalWithMoreQueriesThanKeysSeesEveryKeyPastTk) {
  // tril(ones(Tq, Tk)) with Tq > Tk: rows i >= Tk - 1 attend to every key.
  Tensor q = random_tensor({2, 6, 4}, 150), k = random_tensor({2, 3, 4}, 151), v = random_tensor({2, 3, 5}, 152);
  Tensor causal = scaled_dot_product_attention(q, k, v, true);
  EXPECT_TRUE(all_close(causal, reference_attention(q, k, v, true, 0.5), 1e-12, 1e-12));
  EXPECT_TRUE(all_close(narrow(causal, 1, 2, 4), narrow(scaled_dot_product_attention(q, k, v, false), 1, 2, 4), 1e-15, 0));
  EXPECT_TRUE(gradcheck(sdpa(true), {leaf({2, 6, 4}, 153), leaf({2, 3, 4}, 154), leaf({2, 3, 5}, 155)}));
}

TEST(Attention, HalfScoresAreScaledBeforeTheyAreStored) {
  // Raw f16 scores q·kᵀ = 64·32·32 = 65536 overflow f16 (max 65504); scaled by 1/8 they fit.
  Tensor q = full({1, 1, 64}, 32.0, {.dtype = DType::kF16}), k = full({1, 2, 64}, 32.0, {.dtype = DType::kF16});
  Tensor v = random_tensor({1, 2, 3}, 156, DType::kF16);
  Tensor out = scaled_dot_product_attention(q, k, v);
  for (float x : out.to_vector<float>()) EXPECT_TRUE(std::isfinite(x)) << x;
  EXPECT_TRUE(all_close(out, mean(v, {1}, true), 1e-3, 1e-3));  // equal scores: the mean of the values
}

TEST(Attention, MatchesComposedOps) {
  // softmax(q·kᵀ·scale + mask)·v from matmul, transpose, add and softmax.
  Tensor q = random_tensor({3, 6, 5}, 109), k = random_tensor({3, 6, 5}, 110), v = random_tensor({3, 6, 5}, 111);
  std::vector<double> mask(36);
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) mask[i * 6 + j] = j <= i ? 0.0 : -INFINITY;
  Tensor scores = add(mul(bmm(q, transpose(k, 1, 2)), 0.25), Tensor::from_vector(mask, {6, 6}));
  EXPECT_TRUE(all_close(scaled_dot_product_attention(q, k, v, true, 0.25), bmm(softmax(scores, -1), v), 1e-12, 1e-12));
}

TEST(Attention, HalfPrecisionOnCpu) {
  Tensor q = random_tensor({2, 9, 8}, 112), k = random_tensor({2, 9, 8}, 113), v = random_tensor({2, 9, 8}, 114);
  Tensor want = reference_attention(q, k, v, true, 1 / std::sqrt(8.0));
  for (DType dt : {DType::kF16, DType::kBF16}) {
    Tensor got = scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), true);
    EXPECT_EQ(got.dtype(), dt);
    EXPECT_LT(testing::relative_error(got, want), dt == DType::kF16 ? 3e-3 : 2e-2) << dtype_name(dt);
  }
}

TEST(Attention, AutocastRunsInLowPrecision) {
  Tensor q = random_tensor({2, 4, 8}, 115, DType::kF32), k = random_tensor({2, 4, 8}, 116, DType::kF32),
         v = random_tensor({2, 4, 8}, 117, DType::kF32);
  q.set_requires_grad(true);
  Tensor out;
  {
    AutocastGuard guard(DType::kBF16);
    out = scaled_dot_product_attention(q, k, v, true);
  }
  EXPECT_EQ(out.dtype(), DType::kBF16);
  EXPECT_LT(testing::relative_error(out, reference_attention(q, k, v, true, 1 / std::sqrt(8.0))), 2e-2);
  sum(out.to(DType::kF32)).backward();
  EXPECT_EQ(q.grad().dtype(), DType::kF32);  // through the differentiable cast
}

TEST(AttentionGrad, FiniteDifferences) {
  for (bool causal : {false, true}) {
    EXPECT_TRUE(gradcheck(sdpa(causal), {leaf({2, 4, 3}, 120), leaf({2, 4, 3}, 121), leaf({2, 4, 5}, 122)}))
        << "causal " << causal;
    EXPECT_TRUE(gradcheck(sdpa(causal, 0.7), {leaf({2, 2, 3, 4}, 123), leaf({2, 2, 5, 4}, 124), leaf({2, 2, 5, 2}, 125)}))
        << "causal " << causal;
  }
  EXPECT_TRUE(gradcheck(sdpa(true), {leaf({1, 3}, 126), leaf({1, 3}, 127), leaf({1, 3}, 128)}));  // 2-D, one query
}

TEST(AttentionGrad, OnlySomeOperandsRequireGrad) {
  Tensor k = random_tensor({2, 4, 3}, 130), v = random_tensor({2, 4, 3}, 131), q = random_tensor({2, 4, 3}, 132);
  EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& t) { return scaled_dot_product_attention(t[0], k, v, true); },
                        {leaf({2, 4, 3}, 133)}));
  EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& t) { return scaled_dot_product_attention(q, k, t[0], true); },
                        {leaf({2, 4, 3}, 134)}));
  EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& t) { return scaled_dot_product_attention(q, t[0], v, false); },
                        {leaf({2, 4, 3}, 135)}));
}

TEST(AttentionGrad, NoQueriesGivesEmptyOutputAndZeroGradients) {
  Tensor q = leaf({2, 0, 3}, 136), k = leaf({2, 4, 3}, 137), v = leaf({2, 4, 5}, 138);
  Tensor out = scaled_dot_product_attention(q, k, v, true);
  EXPECT_EQ(out.shape(), (Shape{2, 0, 5}));
  sum(out).backward();
  EXPECT_TRUE(all_close(k.grad(), zeros({2, 4, 3}, {.dtype = DType::kF64}), 0, 0));
  EXPECT_TRUE(all_close(v.grad(), zeros({2, 4, 5}, {.dtype = DType::kF64}), 0, 0));
}

TEST(AttentionErrors, ShapesDtypesAndScale) {
  Tensor q = random_tensor({2, 4, 3}, 140), k = random_tensor({2, 4, 3}, 141), v = random_tensor({2, 4, 5}, 142);
  expect_invalid([&] { scaled_dot_product_attention(random_tensor({3}, 143), k, v); },
                 {"[scaled_dot_product_attention]", "same number", "[3], [2, 4, 3] and [2, 4, 5]"});
  expect_invalid([&] { scaled_dot_product_attention(q, random_tensor({2, 4, 2}, 144), v); },
                 {"[scaled_dot_product_attention]", "E = 3", "[2, 4, 3], [2, 4, 2] and [2, 4, 5]"});
  expect_invalid([&] { scaled_dot_product_attention(q, k, random_tensor({2, 3, 5}, 145)); },
                 {"[scaled_dot_product_attention]", "Tk = 4", "[2, 3, 5]"});
  expect_invalid([&] { scaled_dot_product_attention(q, random_tensor({3, 4, 3}, 146), random_tensor({3, 4, 5}, 147)); },
                 {"[scaled_dot_product_attention]", "leading dims", "[2, 4, 3], [3, 4, 3]"});
  expect_invalid([&] { scaled_dot_product_attention(q, random_tensor({2, 0, 3}, 148), random_tensor({2, 0, 5}, 149)); },
                 {"[scaled_dot_product_attention]", "at least one key"});
  expect_invalid([&] { scaled_dot_product_attention(q, k.to(DType::kF32), v); },
                 {"[scaled_dot_product_attention]", "float64", "float32"});
  expect_invalid([&] { scaled_dot_product_attention(q, k, v, false, INFINITY); },
                 {"[scaled_dot_product_attention]", "finite scale", "inf"});
  Tensor qi = arange(6).reshape({2, 3});
  expect_invalid([&] { scaled_dot_product_attention(qi, qi, qi); }, {"[scaled_dot_product_attention]", "int64"});
}

}  // namespace
}  // namespace tandem
