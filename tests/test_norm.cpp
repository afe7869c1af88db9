// CPU tests of batch norm and layer norm: values against references computed here by
// plain loops, running-statistics updates, the batch-norm pieces composed the way
// SyncBatchNorm composes them, f64 finite-difference gradient checks, the layers'
// bookkeeping, low-precision inputs and the argument errors.
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "layers/norm.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::expect_invalid;
using testing::gradcheck;
using testing::random_tensor;

// Per-channel mean and biased variance of x (N, C, ...) in f64, by plain loops.
void reference_stats(const Tensor& x, std::vector<double>& mean, std::vector<double>& var) {
  const int64_t n = x.size(0), c = x.size(1), inner = x.numel() / (n * c);
  const std::vector<double> v = x.to_vector<double>();
  mean.assign(c, 0.0);
  var.assign(c, 0.0);
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < inner; ++k) mean[ch] += v[(i * c + ch) * inner + k];
    mean[ch] /= static_cast<double>(n * inner);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < inner; ++k) {
        const double d = v[(i * c + ch) * inner + k] - mean[ch];
        var[ch] += d * d;
      }
    var[ch] /= static_cast<double>(n * inner);
  }
}

// (x − mean)/sqrt(var + eps)·w + b per channel, in f64.
Tensor reference_batch_norm(const Tensor& x, const std::vector<double>& mean, const std::vector<double>& var,
                            const std::vector<double>& w, const std::vector<double>& b, double eps) {
  const int64_t n = x.size(0), c = x.size(1), inner = x.numel() / (n * c);
  std::vector<double> v = x.to_vector<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t k = 0; k < inner; ++k) {
        double& e = v[(i * c + ch) * inner + k];
        e = (e - mean[ch]) / std::sqrt(var[ch] + eps) * (w.empty() ? 1.0 : w[ch]) + (b.empty() ? 0.0 : b[ch]);
      }
  return Tensor::from_vector(v, x.shape());
}

// Layer norm of x over its last `cols` elements per row, in f64.
Tensor reference_layer_norm(const Tensor& x, int64_t cols, const std::vector<double>& w, const std::vector<double>& b,
                            double eps) {
  std::vector<double> v = x.to_vector<double>();
  const int64_t rows = x.numel() / cols;
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, s = 0;
    for (int64_t j = 0; j < cols; ++j) m += v[r * cols + j];
    m /= static_cast<double>(cols);
    for (int64_t j = 0; j < cols; ++j) s += (v[r * cols + j] - m) * (v[r * cols + j] - m);
    const double is = 1.0 / std::sqrt(s / static_cast<double>(cols) + eps);
    for (int64_t j = 0; j < cols; ++j) {
      double& e = v[r * cols + j];
      e = (e - m) * is * (w.empty() ? 1.0 : w[j]) + (b.empty() ? 0.0 : b[j]);
    }
  }
  return Tensor::from_vector(v, x.shape());
}

// ---- batch_norm values ----------------------------------------------------------------------

TEST(BatchNorm, TrainingMatchesReferenceAndUpdatesRunningStats) {
  Tensor x = random_tensor({4, 3, 5, 6}, 1, DType::kF64, Device::cpu(), -2.0, 3.0);
  Tensor w = random_tensor({3}, 2, DType::kF64, Device::cpu(), 0.5, 1.5);
  Tensor b = random_tensor({3}, 3);
  Tensor rm = random_tensor({3}, 4), rv = random_tensor({3}, 5, DType::kF64, Device::cpu(), 0.5, 2.0);
  const std::vector<double> rm0 = rm.to_vector<double>(), rv0 = rv.to_vector<double>();
  std::vector<double> mean, var;
  reference_stats(x, mean, var);
  Tensor y = batch_norm(x, w, b, rm, rv, /*training=*/true, 0.1, 1e-5);
  EXPECT_TRUE(all_close(y, reference_batch_norm(x, mean, var, w.to_vector<double>(), b.to_vector<double>(), 1e-5),
                        1e-13, 1e-12));
  const double count = 4 * 5 * 6;
  std::vector<double> want_m(3), want_v(3);
  for (int ch = 0; ch < 3; ++ch) {
    want_m[ch] = 0.9 * rm0[ch] + 0.1 * mean[ch];
    want_v[ch] = 0.9 * rv0[ch] + 0.1 * var[ch] * count / (count - 1);  // unbiased
  }
  EXPECT_TRUE(all_close(rm, Tensor::from_vector(want_m, {3}), 1e-14, 1e-12));
  EXPECT_TRUE(all_close(rv, Tensor::from_vector(want_v, {3}), 1e-14, 1e-12));
}

TEST(BatchNorm, EvalUsesRunningStatsAndLeavesThemAlone) {
  Tensor x = random_tensor({3, 4, 7}, 10);
  Tensor rm = random_tensor({4}, 11), rv = random_tensor({4}, 12, DType::kF64, Device::cpu(), 0.5, 2.0);
  Tensor w = random_tensor({4}, 13), b = random_tensor({4}, 14);
  const std::vector<double> rm0 = rm.to_vector<double>(), rv0 = rv.to_vector<double>();
  Tensor y = batch_norm(x, w, b, rm, rv, /*training=*/false, 0.1, 1e-3);
  EXPECT_TRUE(all_close(y, reference_batch_norm(x, rm0, rv0, w.to_vector<double>(), b.to_vector<double>(), 1e-3),
                        1e-13, 1e-12));
  EXPECT_EQ(rm.to_vector<double>(), rm0);
  EXPECT_EQ(rv.to_vector<double>(), rv0);
}

TEST(BatchNorm, TwoDimInputAndNoAffineNoRunningStats) {
  Tensor x = random_tensor({8, 5}, 20, DType::kF64, Device::cpu(), -3.0, 1.0);
  std::vector<double> mean, var;
  reference_stats(x, mean, var);
  EXPECT_TRUE(all_close(batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5),
                        reference_batch_norm(x, mean, var, {}, {}, 1e-5), 1e-13, 1e-12));
}

TEST(BatchNorm, StatsAreAccurateForLargeMeanInF32) {
  // Values 1000 + U(-1, 1): a one-pass Σx² − n·mean² in f32 loses the variance entirely.
  Tensor x64 = add(random_tensor({16, 2, 32, 32}, 30), 1000.0);
  std::vector<double> mean, var;
  reference_stats(x64, mean, var);
  BatchNormStats s = batch_norm_stats(x64.to(DType::kF32), 0.0);
  EXPECT_EQ(s.mean.dtype(), DType::kF32);
  // Compare with the statistics of the f32-rounded input (rounding moves them by ~1e-5).
  std::vector<double> mean32, var32;
  reference_stats(x64.to(DType::kF32).to(DType::kF64), mean32, var32);
  for (int ch = 0; ch < 2; ++ch) {
    EXPECT_NEAR(s.mean.to_vector<double>()[ch], mean32[ch], 1e-4);
    EXPECT_NEAR(s.invstd.to_vector<double>()[ch], 1.0 / std::sqrt(var32[ch]), 1e-5 / std::sqrt(var32[ch]));
  }
}

TEST(BatchNorm, LowPrecisionInputsUseF32Statistics) {
  Tensor x = random_tensor({4, 3, 6, 6}, 40, DType::kF64, Device::cpu(), -2.0, 2.0);
  Tensor w = random_tensor({3}, 41), b = random_tensor({3}, 42);
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    Tensor xr = x.to(t).to(DType::kF64);
    Tensor want = batch_norm(xr, w, b, Tensor(), Tensor(), true, 0.1, 1e-5);
    // f32 weights with f16/bf16 input (mixed precision) are allowed.
    Tensor got = batch_norm(x.to(t), w.to(DType::kF32), b.to(DType::kF32), Tensor(), Tensor(), true, 0.1, 1e-5);
    EXPECT_EQ(got.dtype(), t);
    const double tol = t == DType::kF32 ? 1e-5 : (t == DType::kF16 ? 4e-3 : 3e-2);
    EXPECT_TRUE(all_close(got.to(DType::kF64), want, tol, tol)) << dtype_name(t);
  }
}

TEST(BatchNorm, EmptyBatchGivesEmptyOutputAndKeepsRunningStats) {
  Tensor x = Tensor::empty({0, 3, 4, 4}, {.dtype = DType::kF64});
  Tensor rm = zeros({3}, {.dtype = DType::kF64}), rv = ones({3}, {.dtype = DType::kF64});
  Tensor y = batch_norm(x, Tensor(), Tensor(), rm, rv, true, 0.1, 1e-5);
  EXPECT_EQ(y.shape(), (Shape{0, 3, 4, 4}));
  EXPECT_EQ(rm.to_vector<double>(), (std::vector<double>{0, 0, 0}));
  EXPECT_EQ(rv.to_vector<double>(), (std::vector<double>{1, 1, 1}));
  BatchNormStats s = batch_norm_stats(x, 1e-5);
  EXPECT_EQ(s.mean.to_vector<double>(), (std::vector<double>{0, 0, 0}));
  EXPECT_EQ(s.invstd.to_vector<double>(), (std::vector<double>{0, 0, 0}));
}

// ---- batch-norm pieces ------------------------------------------------------------------------

TEST(BatchNormPieces, BackwardSplitAcrossTwoShardsMatchesWholeBatch) {
  // What SyncBatchNorm does on two ranks: global statistics, per-shard backward sums
  // added together (the all-reduce), then each shard's dx with the global count.
  Tensor x = random_tensor({6, 3, 4}, 50, DType::kF64, Device::cpu(), -1.0, 2.0).set_requires_grad(true);
  Tensor w = random_tensor({3}, 51).set_requires_grad(true);
  Tensor b = random_tensor({3}, 52).set_requires_grad(true);
  Tensor g = random_tensor({6, 3, 4}, 53);
  batch_norm(x, w, b, Tensor(), Tensor(), true, 0.1, 1e-5).backward(g);

  Tensor xd = x.detach();
  BatchNormStats s = batch_norm_stats(xd, 1e-5);
  std::vector<Tensor> xs = chunk(xd, 2, 0), gs = chunk(g, 2, 0);
  BatchNormBackwardReduce r0 = batch_norm_backward_reduce(gs[0], xs[0], s.mean, s.invstd, true, true);
  BatchNormBackwardReduce r1 = batch_norm_backward_reduce(gs[1], xs[1], s.mean, s.invstd, true, true);
  Tensor sum_dy = add(r0.sum_dy, r1.sum_dy), sum_dy_xmu = add(r0.sum_dy_xmu, r1.sum_dy_xmu);
  const int64_t count = 6 * 4;
  Tensor dx = cat({batch_norm_backward_elemt(gs[0], xs[0], s.mean, s.invstd, w, sum_dy, sum_dy_xmu, count),
                   batch_norm_backward_elemt(gs[1], xs[1], s.mean, s.invstd, w, sum_dy, sum_dy_xmu, count)},
                  0);
  EXPECT_TRUE(all_close(dx, x.grad(), 1e-14, 1e-12));
  EXPECT_TRUE(all_close(add(r0.grad_weight, r1.grad_weight), w.grad(), 1e-14, 1e-12));
  EXPECT_TRUE(all_close(add(r0.grad_bias, r1.grad_bias), b.grad(), 1e-14, 1e-12));
  // And the forward: elemt with the global statistics, shard by shard.
  Tensor y = cat({batch_norm_elemt(xs[0], s.mean, s.invstd, w, b), batch_norm_elemt(xs[1], s.mean, s.invstd, w, b)}, 0);
  EXPECT_TRUE(all_close(y, batch_norm(xd, w.detach(), b.detach(), Tensor(), Tensor(), true, 0.1, 1e-5), 1e-14, 1e-12));
}

TEST(BatchNormPieces, UpdateRunningStatsUsesUnbiasedVariance) {
  Tensor rm = Tensor::from_vector<double>({1.0, 2.0}, {2}), rv = Tensor::from_vector<double>({1.0, 1.0}, {2});
  Tensor mean = Tensor::from_vector<double>({3.0, -1.0}, {2});
  const double eps = 1e-5;
  Tensor invstd = Tensor::from_vector<double>({1.0 / std::sqrt(4.0 + eps), 1.0 / std::sqrt(0.5 + eps)}, {2});
  batch_norm_update_running_stats(rm, rv, mean, invstd, 0.25, eps, 5);
  EXPECT_TRUE(all_close(rm, Tensor::from_vector<double>({0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.25}, {2}), 1e-15, 1e-13));
  EXPECT_TRUE(all_close(rv, Tensor::from_vector<double>({0.75 + 0.25 * 4 * 5 / 4, 0.75 + 0.25 * 0.5 * 5 / 4}, {2}),
                        1e-12, 1e-10));
  expect_invalid([&] { batch_norm_update_running_stats(rm, rv, mean, invstd, 0.1, eps, 1); },
                 {"[batch_norm_update_running_stats]", "count > 1", "got 1"});
}

// ---- batch_norm gradients ------------------------------------------------------------------------

TEST(BatchNorm, GradcheckTrainingFourDimAffine) {
  Tensor x = random_tensor({3, 2, 3, 2}, 60).set_requires_grad(true);
  Tensor w = random_tensor({2}, 61, DType::kF64, Device::cpu(), 0.5, 1.5).set_requires_grad(true);
  Tensor b = random_tensor({2}, 62).set_requires_grad(true);
  EXPECT_TRUE(gradcheck(
      [](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), true, 0.1, 1e-5); },
      {x, w, b}));
}

TEST(BatchNorm, GradcheckTrainingTwoDimAndWithoutAffine) {
  Tensor x2 = random_tensor({5, 3}, 70).set_requires_grad(true);
  Tensor w = random_tensor({3}, 71).set_requires_grad(true), b = random_tensor({3}, 72).set_requires_grad(true);
  EXPECT_TRUE(gradcheck(
      [](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), true, 0.1, 1e-5); },
      {x2, w, b}));
  Tensor x4 = random_tensor({2, 3, 2, 3}, 73).set_requires_grad(true);
  EXPECT_TRUE(gradcheck(
      [](const std::vector<Tensor>& in) { return batch_norm(in[0], Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); },
      {x4}));
  // Running statistics do not change the training gradient (updated in place only).
  Tensor x3 = random_tensor({4, 2, 3}, 74).set_requires_grad(true);
  Tensor rm = zeros({2}, {.dtype = DType::kF64}), rv = ones({2}, {.dtype = DType::kF64});
  EXPECT_TRUE(gradcheck(
      [rm, rv](const std::vector<Tensor>& in) { return batch_norm(in[0], Tensor(), Tensor(), rm, rv, true, 0.1, 1e-5); },
      {x3}));
}

TEST(BatchNorm, GradcheckEvalMode) {
  Tensor x = random_tensor({3, 2, 4}, 80).set_requires_grad(true);
  Tensor w = random_tensor({2}, 81).set_requires_grad(true), b = random_tensor({2}, 82).set_requires_grad(true);
  Tensor rm = random_tensor({2}, 83), rv = random_tensor({2}, 84, DType::kF64, Device::cpu(), 0.5, 1.5);
  EXPECT_TRUE(gradcheck(
      [rm, rv](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], rm, rv, false, 0.1, 1e-5); },
      {x, w, b}));
  Tensor x_only = random_tensor({3, 2, 4}, 85).set_requires_grad(true);
  EXPECT_TRUE(gradcheck(
      [rm, rv](const std::vector<Tensor>& in) { return batch_norm(in[0], Tensor(), Tensor(), rm, rv, false, 0.1, 1e-5); },
      {x_only}));
}

TEST(BatchNorm, WeightGradientInWeightDtype) {
  Tensor x = random_tensor({4, 3}, 90, DType::kF16);
  Tensor w = ones({3}).set_requires_grad(true), b = zeros({3}).set_requires_grad(true);
  sum(batch_norm(x, w, b, Tensor(), Tensor(), true, 0.1, 1e-5).to(DType::kF32)).backward();
  EXPECT_EQ(w.grad().dtype(), DType::kF32);
  EXPECT_EQ(b.grad().dtype(), DType::kF32);
}

// ---- batch_norm errors ------------------------------------------------------------------------------

TEST(BatchNorm, Errors) {
  Tensor x = random_tensor({2, 4, 3}, 100);
  Tensor c4 = ones({4}, {.dtype = DType::kF64}), c5 = ones({5}, {.dtype = DType::kF64});
  expect_invalid([&] { batch_norm(random_tensor({4}, 101), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); },
                 {"[batch_norm]", "at least 2 dims (N, C, ...)", "got shape [4]"});
  expect_invalid([&] { batch_norm(x, c5, Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); },
                 {"[batch_norm]", "weight of shape [4]", "4 channels", "[2, 4, 3]", "got weight of shape [5]"});
  expect_invalid([&] { batch_norm(x, c4, c5, Tensor(), Tensor(), true, 0.1, 1e-5); }, {"bias of shape [4]", "[5]"});
  expect_invalid([&] { batch_norm(x, Tensor(), Tensor(), c5, c4, true, 0.1, 1e-5); },
                 {"running_mean of shape [4]", "got running_mean of shape [5]"});
  expect_invalid([&] { batch_norm(x, Tensor(), Tensor(), c4, c5, false, 0.1, 1e-5); },
                 {"running_var of shape [4]", "got running_var of shape [5]"});
  expect_invalid([&] { batch_norm(x, Tensor(), Tensor(), c4, Tensor(), true, 0.1, 1e-5); },
                 {"[batch_norm]", "both defined", "only running_mean"});
  expect_invalid([&] { batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), false, 0.1, 1e-5); },
                 {"[batch_norm]", "eval mode", "got none"});
  expect_invalid([&] { batch_norm(random_tensor({1, 4}, 102), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); },
                 {"[batch_norm]", "expected more than 1 value per channel when training, got input size [1, 4]"});
  // One value per channel is fine in eval mode.
  EXPECT_NO_THROW(batch_norm(random_tensor({1, 4}, 103), Tensor(), Tensor(), c4, c4, false, 0.1, 1e-5));
  expect_invalid([&] { batch_norm(Tensor::from_vector<int64_t>({1, 2, 3, 4}, {2, 2}), Tensor(), Tensor(), Tensor(),
                                  Tensor(), true, 0.1, 1e-5); },
                 {"[batch_norm]", "floating", "int64"});
  expect_invalid([&] { batch_norm(Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); },
                 {"[batch_norm]", "undefined"});
}

// ---- layer_norm -----------------------------------------------------------------------------------------

TEST(LayerNorm, MatchesReference) {
  Tensor x = random_tensor({2, 3, 4, 5}, 110, DType::kF64, Device::cpu(), -2.0, 4.0);
  Tensor w = random_tensor({4, 5}, 111), b = random_tensor({4, 5}, 112);
  EXPECT_TRUE(all_close(layer_norm(x, {4, 5}, w, b, 1e-5),
                        reference_layer_norm(x, 20, w.to_vector<double>(), b.to_vector<double>(), 1e-5), 1e-13, 1e-12));
  EXPECT_TRUE(all_close(layer_norm(x, {5}), reference_layer_norm(x, 5, {}, {}, 1e-5), 1e-13, 1e-12));
  EXPECT_TRUE(all_close(layer_norm(x, {2, 3, 4, 5}), reference_layer_norm(x, 120, {}, {}, 1e-5), 1e-13, 1e-12));
}

TEST(LayerNorm, LowPrecisionAndLargeMean) {
  Tensor x = add(random_tensor({7, 300}, 120), 500.0);
  Tensor w = random_tensor({300}, 121), b = random_tensor({300}, 122);
  Tensor want = reference_layer_norm(x.to(DType::kF32).to(DType::kF64), 300, w.to(DType::kF32).to_vector<double>(),
                                     b.to(DType::kF32).to_vector<double>(), 1e-5);
  Tensor got = layer_norm(x.to(DType::kF32), {300}, w.to(DType::kF32), b.to(DType::kF32));
  EXPECT_TRUE(all_close(got.to(DType::kF64), want, 1e-4, 1e-4));
  Tensor h = random_tensor({3, 64}, 123, DType::kBF16);
  Tensor wh = random_tensor({64}, 124, DType::kBF16), bh = random_tensor({64}, 125, DType::kBF16);
  Tensor want_h = layer_norm(h.to(DType::kF64), {64}, wh.to(DType::kF64), bh.to(DType::kF64));
  EXPECT_TRUE(all_close(layer_norm(h, {64}, wh, bh).to(DType::kF64), want_h, 3e-2, 3e-2));
}

TEST(LayerNorm, Gradcheck) {
  Tensor x = random_tensor({3, 2, 4}, 130).set_requires_grad(true);
  Tensor w = random_tensor({2, 4}, 131).set_requires_grad(true), b = random_tensor({2, 4}, 132).set_requires_grad(true);
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return layer_norm(in[0], {2, 4}, in[1], in[2]); },
                        {x, w, b}));
  Tensor w1 = random_tensor({4}, 133).set_requires_grad(true);
  EXPECT_TRUE(
      gradcheck([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}, in[1], Tensor()); }, {x, w1}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}); }, {x}));
  // Only the parameters need gradients.
  Tensor xc = random_tensor({5, 6}, 134);
  Tensor w6 = random_tensor({6}, 135).set_requires_grad(true), b6 = random_tensor({6}, 136).set_requires_grad(true);
  EXPECT_TRUE(
      gradcheck([xc](const std::vector<Tensor>& in) { return layer_norm(xc, {6}, in[0], in[1]); }, {w6, b6}));
}

TEST(LayerNorm, EmptyRowsGiveZeroParameterGradients) {
  Tensor x = Tensor::empty({0, 4}, {.dtype = DType::kF64}).set_requires_grad(true);
  Tensor w = ones({4}, {.dtype = DType::kF64}).set_requires_grad(true);
  Tensor b = zeros({4}, {.dtype = DType::kF64}).set_requires_grad(true);
  Tensor y = layer_norm(x, {4}, w, b);
  EXPECT_EQ(y.shape(), (Shape{0, 4}));
  y.backward(Tensor::empty({0, 4}, {.dtype = DType::kF64}));
  EXPECT_EQ(w.grad().to_vector<double>(), (std::vector<double>{0, 0, 0, 0}));
  EXPECT_EQ(b.grad().to_vector<double>(), (std::vector<double>{0, 0, 0, 0}));
}

TEST(LayerNorm, Errors) {
  Tensor x = random_tensor({2, 3, 4}, 140);
  expect_invalid([&] { layer_norm(x, {3}); },
                 {"[layer_norm]", "trailing dims [3]", "normalized_shape", "got input shape [2, 3, 4]"});
  expect_invalid([&] { layer_norm(x, {1, 2, 3, 4}); }, {"[layer_norm]", "[1, 2, 3, 4]", "[2, 3, 4]"});
  expect_invalid([&] { layer_norm(x, {}); }, {"[layer_norm]", "at least 1 dim", "got []"});
  expect_invalid([&] { layer_norm(x, {4}, random_tensor({3}, 141)); },
                 {"[layer_norm]", "weight of normalized_shape [4]", "got weight of shape [3]"});
  expect_invalid([&] { layer_norm(x, {3, 4}, Tensor(), random_tensor({4}, 142)); },
                 {"[layer_norm]", "bias of normalized_shape [3, 4]", "got bias of shape [4]"});
  expect_invalid([&] { layer_norm(x, {4}, random_tensor({4}, 143, DType::kF32)); }, {"[layer_norm]", "float64", "float32"});
  expect_invalid([&] { layer_norm(Tensor::from_vector<int64_t>({1, 2}, {2}), {2}); }, {"[layer_norm]", "floating"});
}

// ---- layers ------------------------------------------------------------------------------------------------

TEST(BatchNormLayer, ParametersBuffersAndStateDictOrder) {
  nn::BatchNorm2d bn(4);
  std::vector<std::string> keys;
  for (const auto& [name, t] : bn.state_dict()) keys.push_back(name);
  EXPECT_EQ(keys, (std::vector<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}));
  EXPECT_EQ(bn.parameters().size(), 2u);
  EXPECT_EQ(bn.weight().to_vector<float>(), std::vector<float>(4, 1.f));
  EXPECT_EQ(bn.bias().to_vector<float>(), std::vector<float>(4, 0.f));
  EXPECT_EQ(bn.running_var().to_vector<float>(), std::vector<float>(4, 1.f));
  EXPECT_EQ(bn.num_batches_tracked().dtype(), DType::kI64);
  bn.to(DType::kF64);
  EXPECT_EQ(bn.running_mean().dtype(), DType::kF64);
  EXPECT_EQ(bn.num_batches_tracked().dtype(), DType::kI64);  // counters keep their type

  nn::BatchNorm2d plain(4, {.affine = false, .track_running_stats = false});
  EXPECT_TRUE(plain.state_dict().empty());
}

TEST(BatchNormLayer, TrainCountsBatchesAndEvalUsesRunningStats) {
  nn::BatchNorm2d bn(3);
  bn.to(DType::kF64);
  Tensor x = random_tensor({4, 3, 2, 2}, 150, DType::kF64, Device::cpu(), 1.0, 3.0);
  bn(x);
  bn(x);
  EXPECT_EQ(bn.num_batches_tracked().item<int64_t>(), 2);
  std::vector<double> mean, var;
  reference_stats(x, mean, var);
  const std::vector<double> rm = bn.running_mean().to_vector<double>();
  for (int ch = 0; ch < 3; ++ch) EXPECT_NEAR(rm[ch], (1 - 0.9 * 0.9) * mean[ch], 1e-14);
  bn.eval();
  Tensor y = bn(x);
  EXPECT_EQ(bn.num_batches_tracked().item<int64_t>(), 2);
  EXPECT_TRUE(all_close(y, reference_batch_norm(x, rm, bn.running_var().to_vector<double>(), {}, {}, 1e-5), 1e-13,
                        1e-12));
}

TEST(BatchNormLayer, CumulativeAverageWithoutMomentum) {
  nn::BatchNorm2d bn(2, {.momentum = std::nullopt});
  bn.to(DType::kF64);
  Tensor a = random_tensor({3, 2, 2, 2}, 160), b = random_tensor({3, 2, 2, 2}, 161);
  bn(a);
  bn(b);
  std::vector<double> ma, va, mb, vb;
  reference_stats(a, ma, va);
  reference_stats(b, mb, vb);
  const std::vector<double> rm = bn.running_mean().to_vector<double>();
  for (int ch = 0; ch < 2; ++ch) EXPECT_NEAR(rm[ch], (ma[ch] + mb[ch]) / 2, 1e-14);
}

TEST(BatchNormLayer, UntrackedStatisticsUseTheBatchInEval) {
  nn::BatchNorm2d bn(2, {.track_running_stats = false});
  bn.to(DType::kF64);
  bn.eval();
  Tensor x = random_tensor({3, 2, 2, 2}, 170);
  std::vector<double> mean, var;
  reference_stats(x, mean, var);
  EXPECT_TRUE(all_close(bn(x), reference_batch_norm(x, mean, var, {}, {}, 1e-5), 1e-13, 1e-12));
}

TEST(BatchNormLayer, Errors) {
  nn::BatchNorm2d bn(3);
  expect_invalid([&] { bn(random_tensor({2, 3, 4}, 180, DType::kF32)); },
                 {"[BatchNorm2d]", "4 dims (N, C, H, W)", "[2, 3, 4]"});
  expect_invalid([&] { bn(random_tensor({2, 5, 2, 2}, 181, DType::kF32)); },
                 {"[BatchNorm2d]", "3 channels", "[2, 5, 2, 2]"});
  nn::BatchNorm1d bn1(3);
  expect_invalid([&] { bn1(random_tensor({2, 3, 4, 4}, 182, DType::kF32)); }, {"[BatchNorm1d]", "2 or 3 dims"});
  expect_invalid([&] { nn::BatchNorm2d bad(0); }, {"num_features >= 1", "got 0"});
}

TEST(LayerNormLayer, ParametersAndForward) {
  nn::LayerNorm ln({3, 4});
  EXPECT_EQ(ln.parameters().size(), 2u);
  EXPECT_EQ(ln.weight().shape(), (Shape{3, 4}));
  Tensor x = random_tensor({2, 3, 4}, 190, DType::kF32);
  EXPECT_TRUE(all_close(ln(x).to(DType::kF64), reference_layer_norm(x.to(DType::kF64), 12, {}, {}, 1e-5), 1e-5, 1e-5));
  nn::LayerNorm plain({4}, 1e-6, false);
  EXPECT_TRUE(plain.parameters().empty());
  expect_invalid([] { nn::LayerNorm bad({}); }, {"[LayerNorm]", "at least 1 dim"});
}

}  // namespace
}  // namespace tandem
