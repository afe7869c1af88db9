// Element-wise ops and reductions: values, broadcasting, f64 finite-difference
// gradients and error messages.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/ops.h"
#include "test_util.h"

using namespace tandem;
using tandem::testing::all_close;
using tandem::testing::gradcheck;
using tandem::testing::random_tensor;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  return random_tensor(s, seed, DType::kF64, Device::cpu(), lo, hi).set_requires_grad(true);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Unary, ValuesMatchTheFormulas) {
  Tensor x = Tensor::from_vector<double>({-1.5, -0.25, 0.5, 2.0}, {4});
  std::vector<double> v = x.to_vector<double>();
  auto check = [&](const Tensor& got, double (*f)(double)) {
    std::vector<double> g = got.to_vector<double>();
    for (size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(g[i], f(v[i]), 1e-12) << i;
  };
  check(neg(x), [](double a) { return -a; });
  check(exp(x), [](double a) { return std::exp(a); });
  check(tanh(x), [](double a) { return std::tanh(a); });
  check(sigmoid(x), [](double a) { return 1 / (1 + std::exp(-a)); });
  check(relu(x), [](double a) { return a > 0 ? a : 0; });
  check(gelu(x), [](double a) { return 0.5 * a * (1 + std::erf(a / std::sqrt(2.0))); });
  check(gelu(x, true), [](double a) {
    return 0.5 * a * (1 + std::tanh(std::sqrt(2 / M_PI) * (a + 0.044715 * a * a * a)));
  });
  check(square(x), [](double a) { return a * a; });
  Tensor p = Tensor::from_vector<double>({0.5, 2.0, 9.0}, {3});
  EXPECT_TRUE(all_close(log(p), Tensor::from_vector<double>({std::log(0.5), std::log(2.0), std::log(9.0)}, {3})));
  EXPECT_TRUE(all_close(sqrt(p), Tensor::from_vector<double>({std::sqrt(0.5), std::sqrt(2.0), 3.0}, {3})));
}

TEST(Unary, F32AndHalfTypesComputeToo) {
  Tensor x = random_tensor({64}, 1, DType::kF32);
  EXPECT_TRUE(all_close(tanh(x), tanh(x.to(DType::kF64)), 1e-6, 1e-6));
  EXPECT_TRUE(all_close(exp(x.to(DType::kBF16)), exp(x.to(DType::kF64)), 0, 1e-2));
  EXPECT_TRUE(all_close(exp(x.to(DType::kF16)), exp(x.to(DType::kF64)), 0, 2e-3));
}

TEST(Unary, F32GeluIsWithinAFewUlpsOfTheF64Formula) {
  // f32 GELU and its gradient run through Eigen's vectorised erf/exp (kernels/cpu/gelu.h):
  // within a few ulps of the exact values everywhere, tails included (erf saturates
  // past |x| = 4), over an array long enough for the vector loops and their remainders.
  std::vector<double> values;
  for (int i = -1203; i <= 1203; ++i) values.push_back(i * 0.01);  // -12.03 .. 12.03
  Tensor x = Tensor::from_vector<double>(values, {static_cast<int64_t>(values.size())});
  Tensor x32 = x.to(DType::kF32).detach();
  x32.set_requires_grad(true);
  Tensor y = gelu(x32);
  Tensor dy = random_tensor(y.shape(), 4, DType::kF32);
  y.backward(dy);
  const std::vector<double> xs = x32.detach().to_vector<double>(), ys = y.to_vector<double>(),
                            dys = dy.to_vector<double>(), dxs = x32.grad().to_vector<double>();
  for (size_t i = 0; i < xs.size(); ++i) {
    const double a = xs[i], cdf = 0.5 * (1 + std::erf(a / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * a * a) / std::sqrt(2 * M_PI);
    EXPECT_NEAR(ys[i], a * cdf, 1e-6 + 4e-7 * std::abs(a * cdf)) << "x = " << a;
    EXPECT_NEAR(dxs[i], dys[i] * (cdf + a * pdf), 1e-6 + 4e-7 * std::abs(dys[i])) << "x = " << a;
  }
}

TEST(Unary, Gradcheck) {
  Tensor x = rnd({3, 4}, 2);
  Tensor pos = rnd({3, 4}, 3, 0.2, 2.0);
  EXPECT_TRUE(gradcheck([](auto& in) { return neg(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return exp(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return log(in[0]); }, {pos}));
  EXPECT_TRUE(gradcheck([](auto& in) { return sqrt(in[0]); }, {pos}));
  EXPECT_TRUE(gradcheck([](auto& in) { return relu(in[0]); }, {x}));  // random data avoids the kink at 0
  EXPECT_TRUE(gradcheck([](auto& in) { return gelu(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return gelu(in[0], true); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return tanh(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return sigmoid(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return square(in[0]); }, {x}));
}

TEST(Unary, RejectsIntegerInputs) {
  std::string msg = message_of([] { exp(arange(3)); });
  EXPECT_NE(msg.find("[exp]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("int64"), std::string::npos) << msg;
}

TEST(Binary, BroadcastingFollowsNumPy) {
  Tensor a = arange(0.0, 6.0, 1.0, {.dtype = DType::kF64});  // [6]
  Tensor m = Tensor::from_storage(a.storage(), {2, 3}, DType::kF64);
  Tensor row = Tensor::from_vector<double>({10, 20, 30}, {3});
  Tensor col = Tensor::from_vector<double>({100, 200}, {2, 1});
  EXPECT_EQ((m + row).to_vector<double>(), (std::vector<double>{10, 21, 32, 13, 24, 35}));
  EXPECT_EQ((m + col).to_vector<double>(), (std::vector<double>{100, 101, 102, 203, 204, 205}));
  EXPECT_EQ((row + col).shape(), (Shape{2, 3}));
  EXPECT_EQ((row * col).to_vector<double>(), (std::vector<double>{1000, 2000, 3000, 2000, 4000, 6000}));
  EXPECT_EQ((m - 1.0).to_vector<double>(), (std::vector<double>{-1, 0, 1, 2, 3, 4}));
  EXPECT_EQ((1.0 - m).to_vector<double>(), (std::vector<double>{1, 0, -1, -2, -3, -4}));
  EXPECT_EQ((12.0 / (m + 1.0)).to_vector<double>(), (std::vector<double>{12, 6, 4, 3, 2.4, 2}));
  EXPECT_EQ(add(m, row, -1.0).to_vector<double>(), (std::vector<double>{-10, -19, -28, -7, -16, -25}));
  Tensor scalar = scalar_tensor(2.0, {.dtype = DType::kF64});
  EXPECT_EQ((m * scalar).to_vector<double>(), (std::vector<double>{0, 2, 4, 6, 8, 10}));
}

TEST(Binary, BroadcastOverMiddleAndLeadingDims) {
  Tensor a = random_tensor({2, 3, 4, 5}, 4);
  Tensor b = random_tensor({3, 1, 5}, 5);
  Tensor got = a * b;
  std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>(), gv = got.to_vector<double>();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < 5; ++l) {
          size_t ia = ((i * 3 + j) * 4 + k) * 5 + l, ib = j * 5 + l;
          EXPECT_DOUBLE_EQ(gv[ia], av[ia] * bv[ib]);
        }
}

TEST(Binary, Gradcheck) {
  Tensor a = rnd({3, 4}, 6), b = rnd({3, 4}, 7), row = rnd({4}, 8), col = rnd({3, 1}, 9);
  Tensor den = rnd({3, 4}, 10, 0.5, 2.0), den_row = rnd({4}, 11, 0.5, 2.0);
  EXPECT_TRUE(gradcheck([](auto& in) { return in[0] + in[1]; }, {a, b}));
  EXPECT_TRUE(gradcheck([](auto& in) { return add(in[0], in[1], 0.5); }, {a, row}));
  EXPECT_TRUE(gradcheck([](auto& in) { return in[0] - in[1]; }, {a, col}));
  EXPECT_TRUE(gradcheck([](auto& in) { return in[0] * in[1]; }, {row, col}));
  EXPECT_TRUE(gradcheck([](auto& in) { return in[0] / in[1]; }, {a, den}));
  EXPECT_TRUE(gradcheck([](auto& in) { return in[0] / in[1]; }, {col, den_row}));
  EXPECT_TRUE(gradcheck([](auto& in) { return in[0] * 3.0 + 1.0; }, {a}));
  EXPECT_TRUE(gradcheck([](auto& in) { return 2.0 - in[0]; }, {a}));
  EXPECT_TRUE(gradcheck([](auto& in) { return 2.0 / in[0]; }, {den}));
  EXPECT_TRUE(gradcheck([](auto& in) { return broadcast_to(in[0], {2, 3, 4}); }, {row}));
}

TEST(Binary, OnlyRequestedGradientsAreComputed) {
  Tensor a = rnd({3}, 12);
  Tensor b = random_tensor({3}, 13);  // no grad
  (a * b).sum().backward();
  EXPECT_TRUE(all_close(a.grad(), b));
  EXPECT_FALSE(b.grad().defined());
}

TEST(Binary, ErrorsNameBothSides) {
  Tensor a = zeros({2, 3}), b = zeros({4});
  std::string msg = message_of([&] { a + b; });
  EXPECT_NE(msg.find("[add]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[4]"), std::string::npos) << msg;
  msg = message_of([&] { a* zeros({2, 3}, {.dtype = DType::kF64}); });
  EXPECT_NE(msg.find("float32"), std::string::npos) << msg;
  EXPECT_NE(msg.find("float64"), std::string::npos) << msg;
  EXPECT_THROW(div(arange(3), arange(3)), std::invalid_argument);
  EXPECT_THROW(a + Tensor(), std::invalid_argument);
}

TEST(Binary, IntegerArithmeticAndEquality) {
  Tensor a = arange(4), b = Tensor::from_vector<int64_t>({0, 5, 2, 7}, {4});
  EXPECT_EQ((a + b).to_vector<int64_t>(), (std::vector<int64_t>{0, 6, 4, 10}));
  EXPECT_EQ(eq(a, b).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 1, 0}));
  EXPECT_EQ(eq(a, b).dtype(), DType::kBool);
  EXPECT_EQ(eq(a, b).sum().item<int64_t>(), 2);
}

TEST(Binary, InPlaceUpdates) {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  add_(a, Tensor::from_vector<float>({10, 20}, {2}), 0.5f);
  EXPECT_EQ(a.to_vector<float>(), (std::vector<float>{6, 12, 8, 14}));
  mul_(a, 2.0);
  EXPECT_EQ(a.to_vector<float>(), (std::vector<float>{12, 24, 16, 28}));
  EXPECT_THROW(add_(a, zeros({3})), std::invalid_argument);
  Tensor small = zeros({2});
  EXPECT_THROW(add_(small, zeros({2, 2})), std::invalid_argument);
}

TEST(Reduce, SumMeanOverDims) {
  Tensor x = Tensor::from_storage(arange(0.0, 24.0, 1.0, {.dtype = DType::kF64}).storage(), {2, 3, 4}, DType::kF64);
  EXPECT_DOUBLE_EQ(sum(x).item(), 276.0);
  EXPECT_DOUBLE_EQ(mean(x).item(), 11.5);
  EXPECT_EQ(sum(x).dim(), 0);
  Tensor s1 = sum(x, {1});
  EXPECT_EQ(s1.shape(), (Shape{2, 4}));
  EXPECT_EQ(s1.to_vector<double>(), (std::vector<double>{12, 15, 18, 21, 48, 51, 54, 57}));
  EXPECT_EQ(sum(x, {1}, true).shape(), (Shape{2, 1, 4}));
  Tensor s02 = sum(x, {0, -1});
  EXPECT_EQ(s02.shape(), (Shape{3}));
  EXPECT_EQ(s02.to_vector<double>(), (std::vector<double>{60, 92, 124}));  // Σ_i Σ_k (12i + 4j + k) = 32j + 60
  EXPECT_EQ(mean(x, {2}).to_vector<double>(), (std::vector<double>{1.5, 5.5, 9.5, 13.5, 17.5, 21.5}));
  EXPECT_EQ(x.sum(0).shape(), (Shape{3, 4}));
}

TEST(Reduce, SumOfIntegersAndBoolsIsInt64) {
  Tensor b = Tensor::from_vector<bool>({true, false, true, true}, {4});
  Tensor s = sum(b);
  EXPECT_EQ(s.dtype(), DType::kI64);
  EXPECT_EQ(s.item<int64_t>(), 3);
  EXPECT_THROW(mean(arange(3)), std::invalid_argument);
}

TEST(Reduce, MaxAndArgmax) {
  Tensor x = Tensor::from_vector<double>({1, 7, 3, 7, -2, 0}, {2, 3});
  MaxResult r = max(x, 1);
  EXPECT_EQ(r.values.to_vector<double>(), (std::vector<double>{7, 7}));
  EXPECT_EQ(r.indices.to_vector<int64_t>(), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(argmax(x, 0).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 0}));
  EXPECT_EQ(argmax(x, -1, true).shape(), (Shape{2, 1}));
  EXPECT_DOUBLE_EQ(max(x).item(), 7.0);
  Tensor n = Tensor::from_vector<double>({1, NAN, 3}, {3});
  EXPECT_TRUE(std::isnan(max(n).item()));
  EXPECT_THROW(max(zeros({0})), std::invalid_argument);
  EXPECT_THROW(max(x, 2), std::invalid_argument);
}

TEST(Reduce, Gradcheck) {
  Tensor x = rnd({2, 3, 4}, 14);
  EXPECT_TRUE(gradcheck([](auto& in) { return sum(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return sum(in[0], {1}); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return sum(in[0], {0, 2}, true); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return mean(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return mean(in[0], {-1}); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return max(in[0], 1).values; }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return max(in[0], 2, true).values; }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return max(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](auto& in) { return sum_to(in[0], {3, 1}); }, {x}));
}

TEST(Reduce, DimErrorsNameTheRange) {
  std::string msg = message_of([] { sum(zeros({2, 3}), {2}); });
  EXPECT_NE(msg.find("[sum]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[-2, 1]"), std::string::npos) << msg;
  EXPECT_THROW(sum(zeros({2, 3}), {1, -1}), std::invalid_argument);
}

TEST(Factory, FillsAndRanges) {
  EXPECT_EQ(ones({2}, {.dtype = DType::kI32}).to_vector<int32_t>(), (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(full({3}, 2.5).to_vector<float>(), (std::vector<float>{2.5f, 2.5f, 2.5f}));
  EXPECT_EQ(arange(2.0, 3.0, 0.25, {.dtype = DType::kF32}).to_vector<float>(),
            (std::vector<float>{2.0f, 2.25f, 2.5f, 2.75f}));
  EXPECT_EQ(arange(5.0, 0.0, -2.0).to_vector<int64_t>(), (std::vector<int64_t>{5, 3, 1}));
  EXPECT_EQ(arange(0).numel(), 0);
  EXPECT_THROW(arange(0.0, 1.0, 0.0), std::invalid_argument);
  EXPECT_TRUE(zeros({2}, {.requires_grad = true}).requires_grad());
}

TEST(Binary, EmptyTensorsBroadcastAndReduce) {
  Tensor a = zeros({0, 3}, {.dtype = DType::kF64, .requires_grad = true});
  Tensor b = ones({3}, {.dtype = DType::kF64, .requires_grad = true});
  Tensor y = a * b + b;
  EXPECT_EQ(y.shape(), (Shape{0, 3}));
  y.sum().backward();
  EXPECT_EQ(a.grad().shape(), (Shape{0, 3}));
  EXPECT_EQ(b.grad().to_vector<double>(), (std::vector<double>{0, 0, 0}));
  EXPECT_EQ(broadcast_to(b.detach(), {0, 3}).numel(), 0);
}
