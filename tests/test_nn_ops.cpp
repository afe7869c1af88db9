// CPU tests of the neural-network ops: softmax / log-softmax, fused cross-entropy,
// MSE and dropout, against references computed here by hand, f64 finite-difference
// gradient checks, and the argument errors.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/philox.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::expect_invalid;
using testing::gradcheck;
using testing::random_indices;
using testing::random_tensor;


// Reference softmax / log-softmax along `dim` of a contiguous f64 tensor, by plain loops.
Tensor reference_softmax(const Tensor& x, int64_t dim, bool log) {
  const Shape& s = x.shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= s[d];
  for (int64_t d = dim + 1; d < static_cast<int64_t>(s.size()); ++d) inner *= s[d];
  const int64_t n = s[dim];
  std::vector<double> v = x.to_vector<double>(), out(v.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double m = -INFINITY, z = 0;
      for (int64_t j = 0; j < n; ++j) m = std::max(m, v[(o * n + j) * inner + i]);
      for (int64_t j = 0; j < n; ++j) z += std::exp(v[(o * n + j) * inner + i] - m);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = (o * n + j) * inner + i;
        out[k] = log ? v[k] - m - std::log(z) : std::exp(v[k] - m) / z;
      }
    }
  return Tensor::from_vector(out, s);
}

// ---- softmax / log_softmax --------------------------------------------------------------

TEST(Softmax, MatchesReferenceAlongEveryDim) {
  Tensor x = random_tensor({3, 4, 5}, 1, DType::kF64, Device::cpu(), -4.0, 4.0);
  for (int64_t dim : {0, 1, 2}) {
    EXPECT_TRUE(all_close(softmax(x, dim), reference_softmax(x, dim, false), 1e-14, 1e-12)) << "dim " << dim;
    EXPECT_TRUE(all_close(log_softmax(x, dim), reference_softmax(x, dim, true), 1e-14, 1e-12)) << "dim " << dim;
  }
  EXPECT_TRUE(all_close(softmax(x, -1), reference_softmax(x, 2, false), 1e-14, 1e-12));
  EXPECT_TRUE(all_close(log_softmax(x, -3), reference_softmax(x, 0, true), 1e-14, 1e-12));
}

TEST(Softmax, KnownValues) {
  // softmax([1, 2, 3]) = e^k / (e + e² + e³)
  Tensor x = Tensor::from_vector<double>({1, 2, 3}, {3});
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_TRUE(all_close(softmax(x), Tensor::from_vector<double>({std::exp(1.0) / z, std::exp(2.0) / z, std::exp(3.0) / z}, {3}),
                        1e-15, 1e-13));
  EXPECT_TRUE(all_close(log_softmax(x), Tensor::from_vector<double>({1 - std::log(z), 2 - std::log(z), 3 - std::log(z)}, {3}),
                        1e-15, 1e-13));
}

TEST(Softmax, LargeLogitsDoNotOverflow) {
  Tensor x = Tensor::from_vector<float>({1000.f, 1001.f, 999.f, -1e30f}, {4});
  std::vector<float> y = softmax(x).to_vector<float>();
  const double z = 1 + std::exp(1.0) + std::exp(-1.0);
  EXPECT_NEAR(y[0], 1 / z, 1e-6);
  EXPECT_NEAR(y[1], std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(y[2], std::exp(-1.0) / z, 1e-6);
  EXPECT_EQ(y[3], 0.0f);
}

TEST(Softmax, NegativeInfinityIsMaskedOut) {
  const double inf = std::numeric_limits<double>::infinity();
  Tensor x = Tensor::from_vector<double>({-inf, 0.0, -inf, std::log(3.0)}, {4});
  std::vector<double> y = softmax(x).to_vector<double>();
  EXPECT_EQ(y[0], 0.0);
  EXPECT_NEAR(y[1], 0.25, 1e-15);
  EXPECT_EQ(y[2], 0.0);
  EXPECT_NEAR(y[3], 0.75, 1e-15);
  std::vector<double> ly = log_softmax(x).to_vector<double>();
  EXPECT_EQ(ly[0], -inf);
  EXPECT_NEAR(ly[1], std::log(0.25), 1e-15);
}

TEST(Softmax, LowPrecisionDTypesComputeInF32) {
  Tensor x = random_tensor({6, 33}, 2, DType::kF64, Device::cpu(), -3.0, 3.0);
  EXPECT_TRUE(all_close(softmax(x.to(DType::kF32), 1).to(DType::kF64), reference_softmax(x, 1, false), 1e-6, 1e-5));
  EXPECT_TRUE(all_close(log_softmax(x.to(DType::kF32), 1).to(DType::kF64), reference_softmax(x, 1, true), 1e-6, 1e-5));
  // Inputs rounded to f16/bf16 change the answer more than the kernel does, so compare
  // against the reference on the rounded inputs.
  for (DType t : {DType::kF16, DType::kBF16}) {
    Tensor xr = x.to(t).to(DType::kF64);
    const double tol = t == DType::kF16 ? 2e-3 : 1e-2;
    EXPECT_TRUE(all_close(softmax(x.to(t), 1).to(DType::kF64), reference_softmax(xr, 1, false), tol, tol));
    EXPECT_TRUE(all_close(log_softmax(x.to(t), 1).to(DType::kF64), reference_softmax(xr, 1, true), tol, tol));
  }
}

TEST(Softmax, ZeroDimAndEmptyTensors) {
  Tensor s = Tensor::from_vector<double>({2.5}, {});
  EXPECT_EQ(softmax(s).item(), 1.0);
  EXPECT_EQ(log_softmax(s, 0).item(), 0.0);
  Tensor e = Tensor::empty({0, 4}, {.dtype = DType::kF32});
  EXPECT_EQ(softmax(e, 1).shape(), (Shape{0, 4}));
  EXPECT_EQ(log_softmax(e, 0).shape(), (Shape{0, 4}));
}

TEST(Softmax, GradcheckAlongSeveralDims) {
  for (int64_t dim : {0, 1, 2, -1}) {
    Tensor x = random_tensor({3, 4, 5}, 10 + static_cast<uint64_t>(dim + 1), DType::kF64, Device::cpu(), -2.0, 2.0);
    x.set_requires_grad(true);
    EXPECT_TRUE(gradcheck([dim](const std::vector<Tensor>& in) { return softmax(in[0], dim); }, {x})) << "dim " << dim;
    EXPECT_TRUE(gradcheck([dim](const std::vector<Tensor>& in) { return log_softmax(in[0], dim); }, {x})) << "dim " << dim;
  }
  Tensor v = random_tensor({7}, 20).set_requires_grad(true);
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return softmax(in[0]); }, {v}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return log_softmax(in[0]); }, {v}));
}

TEST(Softmax, BackwardKnownFormula) {
  // For y = softmax(x) and seed g: dx = y·(g − Σ g·y).
  Tensor x = random_tensor({2, 5}, 30).set_requires_grad(true);
  Tensor g = random_tensor({2, 5}, 31);
  Tensor y = softmax(x, 1);
  y.backward(g);
  std::vector<double> yv = y.to_vector<double>(), gv = g.to_vector<double>(), want(10);
  for (int r = 0; r < 2; ++r) {
    double s = 0;
    for (int j = 0; j < 5; ++j) s += gv[r * 5 + j] * yv[r * 5 + j];
    for (int j = 0; j < 5; ++j) want[r * 5 + j] = yv[r * 5 + j] * (gv[r * 5 + j] - s);
  }
  EXPECT_TRUE(all_close(x.grad(), Tensor::from_vector(want, {2, 5}), 1e-15, 1e-12));
}

TEST(Softmax, Errors) {
  Tensor x = random_tensor({2, 3}, 40);
  expect_invalid([&] { softmax(x, 2); }, {"[softmax]", "dim 2", "[-2, 1]"});
  expect_invalid([&] { log_softmax(x, -3); }, {"[log_softmax]", "dim -3"});
  Tensor i = Tensor::from_vector<int64_t>({1, 2}, {2});
  expect_invalid([&] { softmax(i); }, {"[softmax]", "floating", "int64"});
  expect_invalid([&] { softmax(Tensor()); }, {"[softmax]", "undefined"});
}

// ---- cross_entropy ------------------------------------------------------------------------

// PyTorch's definition, written out: per row (1−ε)(lse − x_t) + ε(lse − mean x), ignored
// rows 0; mean divides by the number of non-ignored rows.
struct CeReference {
  std::vector<double> rows;
  double sum = 0;
  int64_t count = 0;
};

CeReference reference_cross_entropy(const Tensor& logits, const std::vector<int64_t>& targets, int64_t ignore_index,
                                    double eps) {
  const int64_t n = logits.size(0), c = logits.size(1);
  std::vector<double> x = logits.to(DType::kF64).to_vector<double>();
  CeReference r;
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] == ignore_index) {
      r.rows.push_back(0.0);
      continue;
    }
    double m = -INFINITY, z = 0, mean = 0;
    for (int64_t j = 0; j < c; ++j) m = std::max(m, x[i * c + j]);
    for (int64_t j = 0; j < c; ++j) {
      z += std::exp(x[i * c + j] - m);
      mean += x[i * c + j] / static_cast<double>(c);
    }
    const double lse = m + std::log(z);
    const double loss = (1 - eps) * (lse - x[i * c + targets[i]]) + eps * (lse - mean);
    r.rows.push_back(loss);
    r.sum += loss;
    ++r.count;
  }
  return r;
}

TEST(CrossEntropy, KnownValue) {
  // -log softmax([1, 2, 3])[2] = log(e + e² + e³) − 3 = 0.40760596444437...
  Tensor logits = Tensor::from_vector<double>({1, 2, 3}, {1, 3});
  Tensor t = Tensor::from_vector<int64_t>({2}, {1});
  EXPECT_NEAR(cross_entropy(logits, t).item(), 0.4076059644443803, 1e-15);
  // With ε = 0.1: 0.9·0.40760596 + 0.1·(3.40760596 − 2) = 0.50757...
  EXPECT_NEAR(cross_entropy(logits, t, {.label_smoothing = 0.1}).item(),
              0.9 * 0.4076059644443803 + 0.1 * (3.4076059644443803 - 2.0), 1e-14);
}

TEST(CrossEntropy, MatchesReferenceForEveryReduction) {
  const int64_t n = 9, c = 7;
  Tensor logits = random_tensor({n, c}, 50, DType::kF64, Device::cpu(), -3.0, 3.0);
  std::vector<int64_t> tv = random_indices({n}, c, 51).to_vector<int64_t>();
  tv[2] = -100;
  tv[5] = -100;
  Tensor t = Tensor::from_vector(tv, {n});
  for (double eps : {0.0, 0.25, 1.0}) {
    CeReference r = reference_cross_entropy(logits, tv, -100, eps);
    Tensor none = cross_entropy(logits, t, {.reduction = Reduction::kNone, .label_smoothing = eps});
    EXPECT_EQ(none.shape(), (Shape{n}));
    EXPECT_TRUE(all_close(none, Tensor::from_vector(r.rows, {n}), 1e-13, 1e-12)) << "eps " << eps;
    EXPECT_NEAR(cross_entropy(logits, t, {.reduction = Reduction::kSum, .label_smoothing = eps}).item(), r.sum, 1e-12);
    Tensor mean = cross_entropy(logits, t, {.label_smoothing = eps});
    EXPECT_EQ(mean.dim(), 0);
    EXPECT_NEAR(mean.item(), r.sum / static_cast<double>(r.count), 1e-12) << "eps " << eps;
  }
}

TEST(CrossEntropy, CustomIgnoreIndexAndAllIgnored) {
  Tensor logits = random_tensor({4, 3}, 52);
  Tensor t = Tensor::from_vector<int64_t>({1, 0, 1, 2}, {4});
  CeReference r = reference_cross_entropy(logits, {1, 0, 1, 2}, 1, 0.0);
  EXPECT_NEAR(cross_entropy(logits, t, {.ignore_index = 1}).item(), r.sum / 2.0, 1e-13);
  // Every row ignored: mean is 0/0 = NaN (as PyTorch), sum is 0.
  Tensor all = Tensor::from_vector<int64_t>({-100, -100, -100, -100}, {4});
  EXPECT_TRUE(std::isnan(cross_entropy(logits, all).item()));
  EXPECT_EQ(cross_entropy(logits, all, {.reduction = Reduction::kSum}).item(), 0.0);
}

TEST(CrossEntropy, LowPrecisionLogits) {
  Tensor logits = random_tensor({16, 10}, 53, DType::kF64, Device::cpu(), -4.0, 4.0);
  Tensor t = random_indices({16}, 10, 54);
  const std::vector<int64_t> tv = t.to_vector<int64_t>();
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    Tensor ld = logits.to(d);
    CeReference r = reference_cross_entropy(ld, tv, -100, 0.1);
    Tensor loss = cross_entropy(ld, t, {.label_smoothing = 0.1});
    EXPECT_EQ(loss.dtype(), d);
    const double tol = d == DType::kF32 ? 1e-6 : (d == DType::kF16 ? 2e-3 : 2e-2);
    EXPECT_NEAR(loss.item(), r.sum / 16.0, tol * (1 + r.sum / 16.0)) << dtype_name(d);
    Tensor none = cross_entropy(ld, t, {.reduction = Reduction::kNone});
    EXPECT_EQ(none.dtype(), d);
  }
}

TEST(CrossEntropy, Gradcheck) {
  const int64_t n = 6, c = 5;
  std::vector<int64_t> plain = random_indices({n}, c, 60).to_vector<int64_t>();
  std::vector<int64_t> ignored = plain;
  ignored[1] = -100;
  ignored[4] = -100;
  struct Case {
    Reduction reduction;
    bool ignore;
    double eps;
  };
  for (const Case& k : std::vector<Case>{{Reduction::kMean, false, 0.0},
                                         {Reduction::kSum, false, 0.0},
                                         {Reduction::kNone, false, 0.0},
                                         {Reduction::kMean, true, 0.0},
                                         {Reduction::kSum, true, 0.0},
                                         {Reduction::kNone, true, 0.0},
                                         {Reduction::kMean, false, 0.2},
                                         {Reduction::kNone, false, 0.2},
                                         {Reduction::kMean, true, 0.2},
                                         {Reduction::kSum, true, 0.2},
                                         {Reduction::kNone, true, 0.2}}) {
    Tensor logits = random_tensor({n, c}, 61, DType::kF64, Device::cpu(), -2.0, 2.0).set_requires_grad(true);
    Tensor t = Tensor::from_vector(k.ignore ? ignored : plain, {n});
    CrossEntropyOptions o{.reduction = k.reduction, .label_smoothing = k.eps};
    EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], t, o); }, {logits}))
        << "reduction " << static_cast<int>(k.reduction) << " ignore " << k.ignore << " eps " << k.eps;
  }
}

TEST(CrossEntropy, IgnoredRowsGetZeroGradient) {
  Tensor logits = random_tensor({3, 4}, 62).set_requires_grad(true);
  Tensor t = Tensor::from_vector<int64_t>({1, -100, 3}, {3});
  cross_entropy(logits, t, {.label_smoothing = 0.3}).backward();
  std::vector<double> g = logits.grad().to_vector<double>();
  for (int j = 0; j < 4; ++j) EXPECT_EQ(g[4 + j], 0.0);
  // Each non-ignored row of (softmax − target distribution) sums to zero.
  double row0 = 0;
  for (int j = 0; j < 4; ++j) row0 += g[j];
  EXPECT_NEAR(row0, 0.0, 1e-15);
}

TEST(CrossEntropy, Errors) {
  Tensor logits = random_tensor({4, 3}, 70);
  Tensor t = Tensor::from_vector<int64_t>({0, 1, 2, 0}, {4});
  expect_invalid([&] { cross_entropy(random_tensor({4, 3, 2}, 71), t); }, {"[cross_entropy]", "2 dims (N, C)", "[4, 3, 2]"});
  expect_invalid([&] { cross_entropy(logits, Tensor::from_vector<int64_t>({0, 1, 2, 0}, {2, 2})); },
                 {"[cross_entropy]", "1 dim", "[2, 2]"});
  expect_invalid([&] { cross_entropy(logits, Tensor::from_vector<int32_t>({0, 1, 2, 0}, {4})); },
                 {"[cross_entropy]", "int64", "int32"});
  expect_invalid([&] { cross_entropy(logits, Tensor::from_vector<int64_t>({0, 1, 2}, {3})); },
                 {"[cross_entropy]", "[4, 3]", "[3]"});
  expect_invalid([&] { cross_entropy(logits, Tensor::from_vector<int64_t>({0, 1, 3, 0}, {4})); },
                 {"[cross_entropy]", "[0, 3)", "got 3", "row 2"});
  expect_invalid([&] { cross_entropy(logits, Tensor::from_vector<int64_t>({0, -1, 2, 0}, {4})); },
                 {"[cross_entropy]", "got -1", "row 1"});
  expect_invalid([&] { cross_entropy(logits, t, {.label_smoothing = 1.5}); }, {"[cross_entropy]", "label_smoothing", "1.5"});
  expect_invalid([&] { cross_entropy(logits, t, {.label_smoothing = -0.1}); }, {"[cross_entropy]", "label_smoothing", "-0.1"});
  expect_invalid([&] { cross_entropy(logits.to(DType::kI64), t); }, {"[cross_entropy]", "floating", "int64"});
}

// ---- mse_loss ------------------------------------------------------------------------------

TEST(MseLoss, ValuesForEveryReduction) {
  Tensor a = Tensor::from_vector<double>({1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_vector<double>({0, 2, 5, 1}, {2, 2});
  EXPECT_DOUBLE_EQ(mse_loss(a, b).item(), (1 + 0 + 4 + 9) / 4.0);
  EXPECT_DOUBLE_EQ(mse_loss(a, b, Reduction::kSum).item(), 14.0);
  EXPECT_TRUE(all_close(mse_loss(a, b, Reduction::kNone), Tensor::from_vector<double>({1, 0, 4, 9}, {2, 2}), 0, 0));
}

TEST(MseLoss, Gradcheck) {
  for (Reduction r : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) {
    Tensor a = random_tensor({3, 4}, 80).set_requires_grad(true);
    Tensor b = random_tensor({3, 4}, 81).set_requires_grad(true);
    EXPECT_TRUE(gradcheck([r](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], r); }, {a, b}));
  }
}

TEST(MseLoss, Errors) {
  Tensor a = random_tensor({3, 1}, 82);
  expect_invalid([&] { mse_loss(a, random_tensor({3}, 83)); }, {"[mse_loss]", "[3, 1]", "[3]"});
  expect_invalid([&] { mse_loss(a, random_tensor({3, 1}, 84, DType::kF32)); }, {"[mse_loss]", "float64", "float32"});
}

// ---- dropout --------------------------------------------------------------------------------

TEST(Dropout, MaskMatchesPhilox) {
  const int64_t n = 1001;  // not a multiple of 4: the last block is partial
  const double p = 0.3;
  Generator gen(1234);
  gen.set_state({1234, 17});
  Tensor x = full({n}, 1.0, {.dtype = DType::kF32});
  Tensor y = dropout(x, p, true, &gen);
  EXPECT_EQ(gen.state().offset, 17u + kernels::philox_blocks(n));
  std::vector<float> got = y.to_vector<float>();
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const kernels::PhiloxBlock b = kernels::philox_block(1234, 17 + static_cast<uint64_t>(i / 4));
    const bool keep = static_cast<double>(kernels::philox_uniform(b.w[i % 4])) >= p;
    ASSERT_EQ(got[i], keep ? scale : 0.0f) << "element " << i;
    kept += keep;
  }
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 0.06);
}

TEST(Dropout, ScalesKeptElementsAndPreservesTheMean) {
  Generator gen(7);
  Tensor x = random_tensor({200000}, 90, DType::kF32, Device::cpu(), 1.0, 2.0);
  Tensor y = dropout(x, 0.5, true, &gen);
  std::vector<float> xv = x.to_vector<float>(), yv = y.to_vector<float>();
  double sx = 0, sy = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    ASSERT_TRUE(yv[i] == 0.0f || yv[i] == xv[i] * 2.0f) << i;
    sx += xv[i];
    sy += yv[i];
  }
  EXPECT_NEAR(sy / sx, 1.0, 0.01);
}

TEST(Dropout, EvalAndZeroProbabilityReturnTheInput) {
  Tensor x = random_tensor({5, 5}, 91);
  EXPECT_TRUE(dropout(x, 0.5, false).is_same(x));
  EXPECT_TRUE(dropout(x, 0.0, true).is_same(x));
}

TEST(Dropout, ProbabilityOneGivesZerosAndZeroGradient) {
  Generator gen(8);
  Tensor x = random_tensor({3, 4}, 92).set_requires_grad(true);
  Tensor y = dropout(x, 1.0, true, &gen);
  EXPECT_EQ(gen.state().offset, 0u);  // p = 1 draws nothing
  EXPECT_TRUE(all_close(y, zeros({3, 4}, {.dtype = DType::kF64}), 0, 0));
  sum(y).backward();
  EXPECT_TRUE(all_close(x.grad(), zeros({3, 4}, {.dtype = DType::kF64}), 0, 0));
}

TEST(Dropout, BackwardReusesTheForwardMask) {
  Generator gen(9);
  Tensor x = random_tensor({7, 9}, 93).set_requires_grad(true);
  Tensor y = dropout(x, 0.4, true, &gen);
  gen.manual_seed(1);  // backward must not read the generator again
  sum(y).backward();
  std::vector<double> xv = x.to_vector<double>(), yv = y.to_vector<double>(), g = x.grad().to_vector<double>();
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_DOUBLE_EQ(g[i], yv[i] == 0.0 ? 0.0 : 1.0 / 0.6) << i;
}

TEST(Dropout, Gradcheck) {
  Generator gen(10);
  const PhiloxState start{10, 5};
  Tensor x = random_tensor({4, 6}, 94).set_requires_grad(true);
  // Re-seeding inside the function makes every evaluation use the same mask.
  EXPECT_TRUE(gradcheck(
      [&](const std::vector<Tensor>& in) {
        gen.set_state(start);
        return dropout(in[0], 0.35, true, &gen);
      },
      {x}));
}

TEST(Dropout, LowPrecisionDTypes) {
  for (DType d : {DType::kF16, DType::kBF16, DType::kF64}) {
    Generator g1(11), g2(11);
    Tensor x = random_tensor({257}, 95, DType::kF32);
    std::vector<float> ref = dropout(x, 0.25, true, &g1).to_vector<float>();
    std::vector<float> got = dropout(x.to(d), 0.25, true, &g2).to(DType::kF32).to_vector<float>();
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_EQ(ref[i] == 0.0f, got[i] == 0.0f) << dtype_name(d) << " " << i;
  }
}

TEST(Dropout, Errors) {
  Tensor x = random_tensor({3}, 96);
  expect_invalid([&] { dropout(x, 1.5); }, {"[dropout]", "[0, 1]", "1.5"});
  expect_invalid([&] { dropout(x, -0.5); }, {"[dropout]", "-0.5"});
  expect_invalid([&] { dropout(Tensor::from_vector<int64_t>({1, 2}, {2}), 0.5); }, {"[dropout]", "floating", "int64"});
}

}  // namespace
}  // namespace tandem
