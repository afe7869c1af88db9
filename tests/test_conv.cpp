// conv2d and nn::Conv2d on the CPU: values against a brute-force seven-loop reference
// (stride, padding, dilation, groups, depthwise, 1x1, non-square, no bias), f64
// finite-difference gradient checks, the batch-parallel path against per-slice runs,
// im2col/col2im adjointness, f16/bf16, argument errors and the layer's initialisation.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/conv.h"
#include "layers/conv.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::expect_invalid;
using testing::gradcheck;
using testing::random_tensor;

/// y[n, o, oh, ow] = b[o] + Σ_{c in group, i, j} x[n, c, oh·s − p + i·d, ...]·w[o, c', i, j], by definition.
Tensor reference_conv(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dOptions& o) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t out = w.size(0), cg = w.size(1), kh = w.size(2), kw = w.size(3);
  const int64_t og = out / o.groups;
  const int64_t oh_n = (h + 2 * o.padding.h - o.dilation.h * (kh - 1) - 1) / o.stride.h + 1;
  const int64_t ow_n = (wd + 2 * o.padding.w - o.dilation.w * (kw - 1) - 1) / o.stride.w + 1;
  std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>();
  std::vector<double> bv = b.defined() ? b.to_vector<double>() : std::vector<double>(out, 0.0);
  std::vector<double> y(n * out * oh_n * ow_n);
  for (int64_t s = 0; s < n; ++s)
    for (int64_t oc = 0; oc < out; ++oc) {
      const int64_t grp = oc / og;
      for (int64_t oh = 0; oh < oh_n; ++oh)
        for (int64_t ow = 0; ow < ow_n; ++ow) {
          double acc = bv[oc];
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t ih = oh * o.stride.h - o.padding.h + i * o.dilation.h;
                const int64_t iw = ow * o.stride.w - o.padding.w + j * o.dilation.w;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                const int64_t cin = grp * cg + ci;
                acc += xv[((s * c + cin) * h + ih) * wd + iw] * wv[((oc * cg + ci) * kh + i) * kw + j];
              }
          y[((s * out + oc) * oh_n + oh) * ow_n + ow] = acc;
        }
    }
  return Tensor::from_vector(y, {n, out, oh_n, ow_n});
}

struct ConvCase {
  std::string name;
  Shape x, w;
  Conv2dOptions options;
  bool bias = true;
};

std::vector<ConvCase> conv_cases() {
  return {
      {"basic 3x3", {2, 3, 6, 5}, {4, 3, 3, 3}, {}, true},
      {"padding 1", {2, 3, 5, 5}, {4, 3, 3, 3}, {.padding = 1}, true},
      {"stride 2 padding 1", {2, 2, 7, 6}, {3, 2, 3, 3}, {.stride = 2, .padding = 1}, true},
      {"dilation 2", {1, 2, 7, 8}, {3, 2, 3, 3}, {.padding = 2, .dilation = 2}, true},
      {"groups 2", {2, 4, 5, 5}, {6, 2, 3, 3}, {.padding = 1, .groups = 2}, true},
      {"depthwise", {2, 3, 5, 6}, {3, 1, 3, 3}, {.padding = 1, .groups = 3}, true},
      {"depthwise multiplier 2", {1, 2, 5, 5}, {4, 1, 3, 3}, {.stride = 2, .groups = 2}, true},
      {"no bias", {2, 3, 5, 5}, {2, 3, 3, 3}, {.padding = 1}, false},
      {"1x1", {2, 5, 4, 3}, {3, 5, 1, 1}, {}, true},
      {"1x1 stride 2", {2, 3, 5, 5}, {4, 3, 1, 1}, {.stride = 2}, true},
      {"non-square kernel, stride, padding", {2, 2, 7, 6}, {3, 2, 2, 3}, {.stride = {2, 1}, .padding = {0, 1}}, true},
      {"non-square dilation", {1, 2, 8, 9}, {2, 2, 3, 2}, {.stride = {1, 2}, .padding = {1, 2}, .dilation = {2, 3}}, true},
      {"stride larger than kernel", {1, 2, 9, 9}, {2, 2, 2, 2}, {.stride = 3}, true},
      {"kernel equals padded input", {2, 2, 3, 3}, {3, 2, 5, 5}, {.padding = 1}, true},
  };
}

// ---- forward values ---------------------------------------------------------------------

TEST(Conv2d, ForwardMatchesBruteForce) {
  uint64_t seed = 1;
  for (const ConvCase& cs : conv_cases()) {
    SCOPED_TRACE(cs.name);
    for (DType dt : {DType::kF64, DType::kF32}) {
      Tensor x = random_tensor(cs.x, seed++, dt), w = random_tensor(cs.w, seed++, dt);
      Tensor b = cs.bias ? random_tensor({cs.w[0]}, seed++, dt) : Tensor();
      Tensor y = conv2d(x, w, b, cs.options);
      const double tol = dt == DType::kF64 ? 1e-12 : 1e-5;
      EXPECT_TRUE(all_close(y, reference_conv(x, w, b, cs.options), tol, tol)) << dtype_name(dt);
    }
  }
}

TEST(Conv2d, HalfAndBFloat16RunInFloat) {
  const Conv2dOptions o{.padding = 1};
  for (DType dt : {DType::kF16, DType::kBF16}) {
    Tensor x = random_tensor({2, 3, 6, 6}, 40, dt), w = random_tensor({4, 3, 3, 3}, 41, dt);
    Tensor b = random_tensor({4}, 42, dt);
    Tensor y = conv2d(x, w, b, o);
    EXPECT_EQ(y.dtype(), dt);
    // The reference sees the same rounded inputs; the output is rounded once.
    EXPECT_TRUE(all_close(y.to(DType::kF64), reference_conv(x, w, b, o), 2e-2, 2e-2)) << dtype_name(dt);
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    conv2d(x, w, b, o).sum().backward();
    EXPECT_EQ(x.grad().dtype(), dt);
    EXPECT_EQ(w.grad().dtype(), dt);
  }
}

TEST(Conv2d, EmptyBatchGivesEmptyOutputAndZeroWeightGradient) {
  Tensor x = random_tensor({0, 3, 5, 5}, 50).set_requires_grad(true);
  Tensor w = random_tensor({4, 3, 3, 3}, 51).set_requires_grad(true);
  Tensor b = random_tensor({4}, 52).set_requires_grad(true);
  Tensor y = conv2d(x, w, b, {.padding = 1});
  EXPECT_EQ(y.shape(), (Shape{0, 4, 5, 5}));
  y.backward(zeros(y.shape(), {.dtype = DType::kF64}));
  EXPECT_TRUE(all_close(w.grad(), zeros({4, 3, 3, 3}, {.dtype = DType::kF64})));
  EXPECT_TRUE(all_close(b.grad(), zeros({4}, {.dtype = DType::kF64})));
}

// ---- gradients ----------------------------------------------------------------------------

TEST(Conv2d, GradcheckEveryCase) {
  uint64_t seed = 100;
  for (const ConvCase& cs : conv_cases()) {
    SCOPED_TRACE(cs.name);
    std::vector<Tensor> in{random_tensor(cs.x, seed++).set_requires_grad(true),
                           random_tensor(cs.w, seed++).set_requires_grad(true)};
    if (cs.bias) in.push_back(random_tensor({cs.w[0]}, seed++).set_requires_grad(true));
    const Conv2dOptions o = cs.options;
    EXPECT_TRUE(gradcheck(
        [o](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), o); }, in));
  }
}

TEST(Conv2d, GradientOfOnlySomeInputs) {
  // Only x, only the weight, only the bias: the others get no gradient.
  const Conv2dOptions o{.stride = 2, .padding = 1};
  Tensor x = random_tensor({2, 2, 5, 5}, 200), w = random_tensor({3, 2, 3, 3}, 201), b = random_tensor({3}, 202);
  for (int which = 0; which < 3; ++which) {
    Tensor xs = x.detach().clone(), ws = w.detach().clone(), bs = b.detach().clone();
    Tensor& target = which == 0 ? xs : (which == 1 ? ws : bs);
    target.set_requires_grad(true);
    std::vector<Tensor> in{xs, ws, bs};
    EXPECT_TRUE(gradcheck([o](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t[2], o); }, in))
        << "input " << which;
  }
}

TEST(Conv2d, BatchParallelPathMatchesPerSliceRuns) {
  // 16·64·(32·9)·(16·16) multiply-adds: enough for the batch to be split across threads
  // (when OpenMP has more than one). Per-sample slices stay on the serial path; the
  // weight and bias gradients of the whole batch are the sums over the slices.
  const Conv2dOptions o{.padding = 1};
  Tensor x = random_tensor({16, 32, 16, 16}, 300, DType::kF32).set_requires_grad(true);
  Tensor w = random_tensor({64, 32, 3, 3}, 301, DType::kF32, Device::cpu(), -0.1, 0.1).set_requires_grad(true);
  Tensor b = random_tensor({64}, 302, DType::kF32).set_requires_grad(true);
  Tensor dy = random_tensor({16, 64, 16, 16}, 303, DType::kF32);
  Tensor y = conv2d(x, w, b, o);
  y.backward(dy);

  std::vector<Tensor> ys, dxs;
  Tensor dw_sum = zeros(w.shape()), db_sum = zeros(b.shape());
  for (int64_t s = 0; s < 16; s += 4) {
    Tensor xs = narrow(x.detach(), 0, s, 4).clone().set_requires_grad(true);
    Tensor ws = w.detach().clone().set_requires_grad(true), bs = b.detach().clone().set_requires_grad(true);
    Tensor part = conv2d(xs, ws, bs, o);
    part.backward(narrow(dy, 0, s, 4).clone());
    ys.push_back(part.detach());
    dxs.push_back(xs.grad());
    dw_sum = dw_sum + ws.grad();
    db_sum = db_sum + bs.grad();
  }
  EXPECT_TRUE(all_close(y, cat(ys, 0), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(x.grad(), cat(dxs, 0), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(w.grad(), dw_sum, 1e-3, 1e-4));
  EXPECT_TRUE(all_close(b.grad(), db_sum, 1e-3, 1e-4));
}

TEST(Conv2d, BackwardMatchesReferenceAtCnnShape) {
  // The CNN's second conv (32→64, 3x3, pad 1, 14x14) at a small batch: the weight
  // gradient against Σ_n dy·im2col(x)ᵀ written out by definition.
  const Conv2dOptions o{.padding = 1};
  Tensor x = random_tensor({2, 32, 14, 14}, 310).set_requires_grad(true);
  Tensor w = random_tensor({64, 32, 3, 3}, 311).set_requires_grad(true);
  Tensor dy = random_tensor({2, 64, 14, 14}, 312);
  conv2d(x, w, Tensor(), o).backward(dy);
  std::vector<double> xv = x.detach().to_vector<double>(), dyv = dy.to_vector<double>(), want(64 * 32 * 9, 0.0);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t oc = 0; oc < 64; ++oc)
      for (int64_t c = 0; c < 32; ++c)
        for (int64_t i = 0; i < 3; ++i)
          for (int64_t j = 0; j < 3; ++j) {
            double acc = 0;
            for (int64_t oh = 0; oh < 14; ++oh)
              for (int64_t ow = 0; ow < 14; ++ow) {
                const int64_t ih = oh - 1 + i, iw = ow - 1 + j;
                if (ih < 0 || ih >= 14 || iw < 0 || iw >= 14) continue;
                acc += dyv[((n * 64 + oc) * 14 + oh) * 14 + ow] * xv[((n * 32 + c) * 14 + ih) * 14 + iw];
              }
            want[((oc * 32 + c) * 3 + i) * 3 + j] += acc;
          }
  EXPECT_TRUE(all_close(w.grad(), Tensor::from_vector(want, {64, 32, 3, 3}), 1e-10, 1e-10));
}

TEST(Im2col, Col2imIsItsAdjoint) {
  // <col2im(c), x> = <c, im2col(x)> for every geometry: col2im sums exactly the entries
  // im2col copied.
  kernels::Window2d g;
  g.batch = 1;
  g.channels = 2;
  g.in_h = 7;
  g.in_w = 6;
  g.kernel_h = 3;
  g.kernel_w = 2;
  g.stride_h = 2;
  g.stride_w = 1;
  g.pad_h = 1;
  g.pad_w = 2;
  g.dilation_h = 2;
  g.dilation_w = 1;
  g.out_h = (7 + 2 - 2 * 2 - 1) / 2 + 1;
  g.out_w = (6 + 4 - 1 * 1 - 1) / 1 + 1;
  const int64_t rows = 2 * 3 * 2, cols_n = g.out_h * g.out_w;
  std::vector<double> x = random_tensor({2 * 7 * 6}, 400).to_vector<double>();
  std::vector<double> c = random_tensor({rows * cols_n}, 401).to_vector<double>();
  std::vector<double> cols(rows * cols_n), back(x.size());
  kernels::cpu::im2col(x.data(), g, 2, cols.data());
  kernels::cpu::col2im(c.data(), g, 2, back.data());
  double lhs = 0, rhs = 0;
  for (size_t i = 0; i < x.size(); ++i) lhs += back[i] * x[i];
  for (size_t i = 0; i < c.size(); ++i) rhs += c[i] * cols[i];
  EXPECT_NEAR(lhs, rhs, 1e-12 * (std::abs(lhs) + 1));
}

// ---- errors ------------------------------------------------------------------------------

TEST(Conv2d, ErrorsNameExpectedAndGot) {
  Tensor x = random_tensor({2, 4, 8, 8}, 500), w = random_tensor({6, 4, 3, 3}, 501);
  expect_invalid([&] { conv2d(random_tensor({3, 28, 28}, 502), w); },
                 {"[conv2d]", "expected input of 4 dims (N,C,H,W), got shape [3, 28, 28]"});
  expect_invalid([&] { conv2d(x, random_tensor({6, 4, 3}, 503)); }, {"[conv2d]", "weight of 4 dims", "[6, 4, 3]"});
  expect_invalid([&] { conv2d(random_tensor({2, 3, 8, 8}, 504), w); },
                 {"[conv2d]", "C = weight.shape[1]·groups = 4", "[6, 4, 3, 3]", "groups 1", "[2, 3, 8, 8]", "C = 3"});
  expect_invalid([&] { conv2d(x, random_tensor({6, 2, 3, 3}, 505), Tensor(), {.groups = 3}); },
                 {"[conv2d]", "groups to divide", "groups 3", "C 4", "O 6"});
  expect_invalid([&] { conv2d(x, random_tensor({5, 2, 3, 3}, 506), Tensor(), {.groups = 2}); },
                 {"[conv2d]", "groups to divide", "groups 2", "O 5"});
  expect_invalid([&] { conv2d(x, w, Tensor(), {.groups = 0}); }, {"[conv2d]", "groups >= 1", "got 0"});
  expect_invalid([&] { conv2d(random_tensor({1, 4, 2, 2}, 507), random_tensor({6, 4, 5, 5}, 508), Tensor(), {.padding = 1}); },
                 {"[conv2d]", "kernel no larger than the padded input", "kernel 5x5", "padded input 4x4"});
  expect_invalid([&] { conv2d(random_tensor({1, 4, 4, 4}, 509), w, Tensor(), {.dilation = 3}); },
                 {"[conv2d]", "kernel 7x7", "dilation 3x3", "padded input 4x4"});
  expect_invalid([&] { conv2d(x, w, Tensor(), {.stride = {1, 0}}); }, {"[conv2d]", "stride >= 1", "got 1x0"});
  expect_invalid([&] { conv2d(x, w, Tensor(), {.dilation = 0}); }, {"[conv2d]", "dilation >= 1", "got 0x0"});
  expect_invalid([&] { conv2d(x, w, Tensor(), {.padding = {-1, 0}}); }, {"[conv2d]", "padding >= 0", "got -1x0"});
  expect_invalid([&] { conv2d(x, w, random_tensor({5}, 510)); }, {"[conv2d]", "bias of shape [6]", "got [5]"});
  expect_invalid([&] { conv2d(x, w.to(DType::kF32)); }, {"[conv2d]", "float64", "float32"});
  expect_invalid([&] { conv2d(x.to(DType::kI64), w.to(DType::kI64)); }, {"[conv2d]", "int64"});
  expect_invalid([&] { conv2d(Tensor(), w); }, {"[conv2d]", "undefined"});
}

// ---- layer -------------------------------------------------------------------------------

TEST(Conv2dLayer, ShapesParametersAndInitBounds) {
  manual_seed(7);
  nn::Conv2d conv(4, 6, 3, {.padding = 1, .groups = 2});
  ASSERT_EQ(conv.parameters().size(), 2u);
  EXPECT_EQ(conv.weight().shape(), (Shape{6, 2, 3, 3}));
  EXPECT_EQ(conv.bias().shape(), (Shape{6}));
  EXPECT_EQ(conv.num_parameters(), 6 * 2 * 9 + 6);
  // fan_in = 2·3·3 = 18: weight and bias within ±1/sqrt(18).
  const double bound = 1.0 / std::sqrt(18.0);
  for (const Tensor& p : conv.parameters()) {
    for (float v : p.to_vector<float>()) {
      EXPECT_LE(std::abs(v), bound);
    }
  }
  Tensor y = conv(random_tensor({2, 4, 7, 5}, 600, DType::kF32));
  EXPECT_EQ(y.shape(), (Shape{2, 6, 7, 5}));

  nn::Conv2d plain(3, 2, {1, 2}, {.stride = 2}, /*bias=*/false);
  EXPECT_FALSE(plain.bias().defined());
  EXPECT_EQ(plain.parameters().size(), 1u);
  EXPECT_EQ(plain(random_tensor({1, 3, 5, 5}, 601, DType::kF32)).shape(), (Shape{1, 2, 3, 2}));

  auto names = conv.named_parameters();
  EXPECT_EQ(names[0].first, "weight");
  EXPECT_EQ(names[1].first, "bias");
}

TEST(Conv2dLayer, RejectsBadConfiguration) {
  expect_invalid([] { nn::Conv2d(0, 4, 3); }, {"[Conv2d]", ">= 1", "got 0, 4, 3x3"});
  expect_invalid([] { nn::Conv2d(4, 6, 3, {.groups = 4}); }, {"[Conv2d]", "groups to divide", "groups 4", "4 and 6"});
}

}  // namespace
}  // namespace tandem
