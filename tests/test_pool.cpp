// Pooling on the CPU: max_pool2d, avg_pool2d and adaptive_avg_pool2d against brute-force
// references (padding, stride, dilation, ceil_mode, count_include_pad), f64 gradient
// checks on random data (no ties), NaN propagation, f16/bf16, argument errors mirroring
// PyTorch's, and the layers.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/pool.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::expect_invalid;
using testing::gradcheck;
using testing::random_tensor;

/// PyTorch's output size, written independently: floor or ceil of the window count, and
/// with ceil_mode no window may start past the input plus its left padding.
int64_t expected_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const double span = static_cast<double>(in + 2 * p - d * (k - 1) - 1) / static_cast<double>(s);
  int64_t out = static_cast<int64_t>(ceil_mode ? std::ceil(span) : std::floor(span)) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

struct Pool {
  Int2 k, s, p, d = 1;
  bool ceil_mode = false;
};

/// Max over each window, padding excluded, by definition.
Tensor reference_max(const Tensor& x, const Pool& o) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh_n = expected_size(h, o.k.h, o.s.h, o.p.h, o.d.h, o.ceil_mode);
  const int64_t ow_n = expected_size(w, o.k.w, o.s.w, o.p.w, o.d.w, o.ceil_mode);
  std::vector<double> xv = x.to_vector<double>(), y;
  for (int64_t pl = 0; pl < n * c; ++pl)
    for (int64_t oh = 0; oh < oh_n; ++oh)
      for (int64_t ow = 0; ow < ow_n; ++ow) {
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < o.k.h; ++i)
          for (int64_t j = 0; j < o.k.w; ++j) {
            const int64_t ih = oh * o.s.h - o.p.h + i * o.d.h, iw = ow * o.s.w - o.p.w + j * o.d.w;
            if (ih >= 0 && ih < h && iw >= 0 && iw < w) m = std::max(m, xv[(pl * h + ih) * w + iw]);
          }
        y.push_back(m);
      }
  return Tensor::from_vector(y, {n, c, oh_n, ow_n});
}

/// Mean over each window. The divisor, per PyTorch: with count_include_pad the window
/// clipped to the padded input [−p, in + p), else the elements inside the input.
Tensor reference_avg(const Tensor& x, const Pool& o, bool count_include_pad) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh_n = expected_size(h, o.k.h, o.s.h, o.p.h, 1, o.ceil_mode);
  const int64_t ow_n = expected_size(w, o.k.w, o.s.w, o.p.w, 1, o.ceil_mode);
  std::vector<double> xv = x.to_vector<double>(), y;
  for (int64_t pl = 0; pl < n * c; ++pl)
    for (int64_t oh = 0; oh < oh_n; ++oh)
      for (int64_t ow = 0; ow < ow_n; ++ow) {
        double s = 0;
        int64_t inside = 0, padded = 0;
        for (int64_t i = 0; i < o.k.h; ++i)
          for (int64_t j = 0; j < o.k.w; ++j) {
            const int64_t ih = oh * o.s.h - o.p.h + i, iw = ow * o.s.w - o.p.w + j;
            if (ih < h + o.p.h && iw < w + o.p.w) ++padded;
            if (ih >= 0 && ih < h && iw >= 0 && iw < w) {
              s += xv[(pl * h + ih) * w + iw];
              ++inside;
            }
          }
        y.push_back(s / static_cast<double>(count_include_pad ? padded : inside));
      }
  return Tensor::from_vector(y, {n, c, oh_n, ow_n});
}

/// Adaptive mean: rows [⌊i·H/oh⌋, ⌈(i+1)·H/oh⌉), in floating point.
Tensor reference_adaptive(const Tensor& x, Int2 out) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  std::vector<double> xv = x.to_vector<double>(), y;
  for (int64_t pl = 0; pl < n * c; ++pl)
    for (int64_t oh = 0; oh < out.h; ++oh)
      for (int64_t ow = 0; ow < out.w; ++ow) {
        const auto h0 = static_cast<int64_t>(std::floor(static_cast<double>(oh * h) / out.h));
        const auto h1 = static_cast<int64_t>(std::ceil(static_cast<double>((oh + 1) * h) / out.h));
        const auto w0 = static_cast<int64_t>(std::floor(static_cast<double>(ow * w) / out.w));
        const auto w1 = static_cast<int64_t>(std::ceil(static_cast<double>((ow + 1) * w) / out.w));
        double s = 0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) s += xv[(pl * h + ih) * w + iw];
        y.push_back(s / static_cast<double>((h1 - h0) * (w1 - w0)));
      }
  return Tensor::from_vector(y, {n, c, out.h, out.w});
}

struct PoolCase {
  std::string name;
  Shape x;
  Pool o;
};

std::vector<PoolCase> max_cases() {
  return {
      {"2x2 (the CNN's)", {2, 3, 8, 6}, {2, 2, 0}},
      {"odd input floors", {1, 2, 7, 5}, {2, 2, 0}},
      {"3x3 stride 2 padding 1", {2, 2, 7, 8}, {3, 2, 1}},
      {"stride 1 overlapping", {1, 2, 5, 5}, {3, 1, 0}},
      {"dilation 2", {1, 2, 9, 8}, {3, 1, 1, 2}},
      {"non-square", {1, 2, 9, 7}, {{3, 2}, {2, 1}, {1, 0}, {1, 2}}},
      {"ceil_mode", {1, 2, 7, 6}, {3, 2, 0, 1, true}},
      {"ceil_mode with padding", {1, 1, 6, 6}, {3, 2, 1, 1, true}},
  };
}

std::vector<PoolCase> avg_cases() {
  return {
      {"2x2", {2, 3, 8, 6}, {2, 2, 0}},
      {"3x3 stride 2 padding 1", {2, 2, 7, 8}, {3, 2, 1}},
      {"stride 1 overlapping", {1, 2, 5, 6}, {3, 1, 1}},
      {"non-square", {1, 2, 9, 7}, {{3, 2}, {2, 1}, {1, 0}}},
      {"ceil_mode", {1, 2, 7, 6}, {3, 2, 0, 1, true}},
      {"ceil_mode with padding", {1, 1, 6, 7}, {3, 2, 1, 1, true}},
  };
}

MaxPool2dOptions max_options(const Pool& o) {
  return {.stride = o.s, .padding = o.p, .dilation = o.d, .ceil_mode = o.ceil_mode};
}

AvgPool2dOptions avg_options(const Pool& o, bool include_pad) {
  return {.stride = o.s, .padding = o.p, .ceil_mode = o.ceil_mode, .count_include_pad = include_pad};
}

// ---- max_pool2d ----------------------------------------------------------------------------

TEST(MaxPool2d, MatchesBruteForce) {
  uint64_t seed = 1;
  for (const PoolCase& cs : max_cases()) {
    SCOPED_TRACE(cs.name);
    for (DType dt : {DType::kF64, DType::kF32}) {
      Tensor x = random_tensor(cs.x, seed++, dt);
      EXPECT_TRUE(all_close(max_pool2d(x, cs.o.k, max_options(cs.o)), reference_max(x, cs.o), 0, 0))
          << dtype_name(dt);
    }
  }
}

TEST(MaxPool2d, StrideDefaultsToKernel) {
  Tensor x = random_tensor({1, 1, 6, 6}, 20);
  Tensor y = max_pool2d(x, 3);
  EXPECT_EQ(y.shape(), (Shape{1, 1, 2, 2}));
  EXPECT_TRUE(all_close(y, reference_max(x, {3, 3, 0}), 0, 0));
}

TEST(MaxPool2d, Gradcheck) {
  uint64_t seed = 50;
  for (const PoolCase& cs : max_cases()) {
    SCOPED_TRACE(cs.name);
    // Random values in [-1, 1): ties (where the gradient is not defined) have probability 0.
    Tensor x = random_tensor(cs.x, seed++).set_requires_grad(true);
    const MaxPool2dOptions o = max_options(cs.o);
    const Int2 k = cs.o.k;
    EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& t) { return max_pool2d(t[0], k, o); }, {x}));
  }
}

TEST(MaxPool2d, GradientGoesToTheMaximum) {
  Tensor x = Tensor::from_vector<double>({1, 5, 2, 3, 9, 0, 4, 7, 6, 8, 2, 1, 0, 3, 5, 4}, {1, 1, 4, 4});
  x.set_requires_grad(true);
  Tensor y = max_pool2d(x, 2);
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{9, 7, 8, 5}));
  y.backward(Tensor::from_vector<double>({1, 2, 3, 4}, {1, 1, 2, 2}));
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{0, 0, 0, 0, 1, 0, 0, 2, 0, 3, 0, 0, 0, 0, 4, 0}));
}

TEST(MaxPool2d, NanPropagates) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor x = Tensor::from_vector<double>({1, nan, 2, 3, 4, 5, 6, 7}, {1, 1, 2, 4});
  std::vector<double> y = max_pool2d(x, 2).to_vector<double>();
  ASSERT_EQ(y.size(), 2u);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], 7.0);
}

TEST(MaxPool2d, HalfAndBFloat16) {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    Tensor x = random_tensor({2, 3, 6, 6}, 30, dt);
    Tensor y = max_pool2d(x, 3, {.stride = 2, .padding = 1});
    EXPECT_EQ(y.dtype(), dt);
    EXPECT_TRUE(all_close(y.to(DType::kF64), reference_max(x, {3, 2, 1}), 0, 0)) << dtype_name(dt);
  }
}

// ---- avg_pool2d ----------------------------------------------------------------------------

TEST(AvgPool2d, MatchesBruteForce) {
  uint64_t seed = 100;
  for (const PoolCase& cs : avg_cases()) {
    for (bool include_pad : {true, false}) {
      SCOPED_TRACE(cs.name + (include_pad ? ", count_include_pad" : ", exclude pad"));
      for (DType dt : {DType::kF64, DType::kF32}) {
        Tensor x = random_tensor(cs.x, seed++, dt);
        const double tol = dt == DType::kF64 ? 1e-12 : 1e-6;
        EXPECT_TRUE(all_close(avg_pool2d(x, cs.o.k, avg_options(cs.o, include_pad)),
                              reference_avg(x, cs.o, include_pad), tol, tol))
            << dtype_name(dt);
      }
    }
  }
}

TEST(AvgPool2d, Gradcheck) {
  uint64_t seed = 150;
  for (const PoolCase& cs : avg_cases()) {
    for (bool include_pad : {true, false}) {
      SCOPED_TRACE(cs.name + (include_pad ? ", count_include_pad" : ", exclude pad"));
      Tensor x = random_tensor(cs.x, seed++).set_requires_grad(true);
      const AvgPool2dOptions o = avg_options(cs.o, include_pad);
      const Int2 k = cs.o.k;
      EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& t) { return avg_pool2d(t[0], k, o); }, {x}));
    }
  }
}

TEST(AvgPool2d, HalfAndBFloat16) {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    Tensor x = random_tensor({2, 3, 6, 6}, 160, dt);
    Tensor y = avg_pool2d(x, 2);
    EXPECT_EQ(y.dtype(), dt);
    EXPECT_TRUE(all_close(y.to(DType::kF64), reference_avg(x, {2, 2, 0}, true), 1e-2, 1e-2)) << dtype_name(dt);
  }
}

// ---- adaptive_avg_pool2d ---------------------------------------------------------------------

TEST(AdaptiveAvgPool2d, MatchesBruteForce) {
  struct Case {
    Shape x;
    Int2 out;
  };
  uint64_t seed = 200;
  for (const Case& cs : {Case{{2, 3, 7, 7}, 3}, Case{{1, 2, 5, 7}, {2, 4}}, Case{{2, 2, 6, 6}, 1},
                         Case{{1, 2, 4, 4}, 4}, Case{{1, 1, 3, 5}, {5, 7}}, Case{{1, 2, 10, 9}, {4, 3}}}) {
    SCOPED_TRACE(shape_str(cs.x) + " -> " + int2_str(cs.out));
    Tensor x = random_tensor(cs.x, seed++);
    EXPECT_TRUE(all_close(adaptive_avg_pool2d(x, cs.out), reference_adaptive(x, cs.out), 1e-12, 1e-12));
    Tensor xg = random_tensor(cs.x, seed++).set_requires_grad(true);
    const Int2 out = cs.out;
    EXPECT_TRUE(gradcheck([out](const std::vector<Tensor>& t) { return adaptive_avg_pool2d(t[0], out); }, {xg}));
  }
}

TEST(AdaptiveAvgPool2d, GlobalPoolIsTheMean) {
  Tensor x = random_tensor({3, 4, 5, 6}, 250, DType::kF32);
  EXPECT_TRUE(all_close(adaptive_avg_pool2d(x, 1), mean(x, {2, 3}, /*keepdim=*/true), 1e-6, 1e-5));
}

// ---- errors ------------------------------------------------------------------------------------

TEST(Pool, ErrorsNameExpectedAndGot) {
  Tensor x = random_tensor({2, 3, 8, 8}, 300);
  expect_invalid([&] { max_pool2d(random_tensor({3, 28, 28}, 301), 2); },
                 {"[max_pool2d]", "expected input of 4 dims (N,C,H,W), got shape [3, 28, 28]"});
  expect_invalid([&] { avg_pool2d(random_tensor({28, 28}, 302), 2); }, {"[avg_pool2d]", "4 dims", "[28, 28]"});
  expect_invalid([&] { adaptive_avg_pool2d(random_tensor({3, 8, 8}, 303), 2); },
                 {"[adaptive_avg_pool2d]", "4 dims", "[3, 8, 8]"});
  expect_invalid([&] { max_pool2d(x, 3, {.padding = 2}); },
                 {"[max_pool2d]", "padding at most half the kernel size", "padding 2x2", "kernel 3x3"});
  expect_invalid([&] { avg_pool2d(x, 2, {.padding = {0, 2}}); }, {"[avg_pool2d]", "half the kernel", "0x2"});
  expect_invalid([&] { max_pool2d(x, 0); }, {"[max_pool2d]", "kernel_size >= 1", "got 0x0"});
  expect_invalid([&] { max_pool2d(x, 2, {.stride = 0}); }, {"[max_pool2d]", "stride >= 1", "got 0x0"});
  expect_invalid([&] { max_pool2d(x, 2, {.dilation = {1, 0}}); }, {"[max_pool2d]", "dilation >= 1", "got 1x0"});
  expect_invalid([&] { avg_pool2d(x, 2, {.padding = -1}); }, {"[avg_pool2d]", "padding >= 0", "got -1x-1"});
  expect_invalid([&] { max_pool2d(random_tensor({1, 1, 3, 3}, 304), 4, {.padding = 0}); },
                 {"[max_pool2d]", "kernel no larger than the padded input", "kernel 4x4", "padded input 3x3"});
  expect_invalid([&] { max_pool2d(random_tensor({1, 1, 4, 4}, 305), 3, {.dilation = 2}); },
                 {"[max_pool2d]", "kernel 5x5", "padded input 4x4"});
  expect_invalid([&] { adaptive_avg_pool2d(x, {0, 2}); }, {"[adaptive_avg_pool2d]", "output_size >= 1", "got 0x2"});
  expect_invalid([&] { max_pool2d(x.to(DType::kI64), 2); }, {"[max_pool2d]", "int64"});
}

// ---- layers --------------------------------------------------------------------------------------

TEST(PoolLayers, ForwardAndNoParameters) {
  Tensor x = random_tensor({2, 3, 9, 9}, 400, DType::kF32);
  nn::MaxPool2d max(2);
  nn::AvgPool2d avg(3, {.stride = 2, .padding = 1, .count_include_pad = false});
  nn::AdaptiveAvgPool2d adaptive({2, 3});
  EXPECT_TRUE(max.parameters().empty());
  EXPECT_EQ(max(x).shape(), (Shape{2, 3, 4, 4}));
  EXPECT_EQ(avg(x).shape(), (Shape{2, 3, 5, 5}));
  EXPECT_EQ(adaptive(x).shape(), (Shape{2, 3, 2, 3}));
  EXPECT_TRUE(all_close(max(x), max_pool2d(x, 2), 0, 0));
  EXPECT_TRUE(all_close(avg(x), avg_pool2d(x, 3, {.stride = 2, .padding = 1, .count_include_pad = false}), 0, 0));
  EXPECT_EQ(max.name(), "MaxPool2d");
  EXPECT_EQ(adaptive.name(), "AdaptiveAvgPool2d");
}

}  // namespace
}  // namespace tandem
