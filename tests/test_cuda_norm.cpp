// GPU tests of batch norm and layer norm: every kernel (the four batch-norm pieces,
// layer-norm forward and backward) and both ops with their backward rules, compared
// with the CPU twins on random data with poisoned outputs, over shapes that take each
// launch path (few and many channels, split and unsplit reductions, warp- and
// block-per-row layer norm, many rows for the two-stage parameter gradients).
// Skips without a CUDA device.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "layers/norm.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::random_tensor;

const Device kGpu = Device::cuda(0);

class CudaNorm : public ::testing::Test {
 protected:
  void SetUp() override { set_poison_allocations(true); }
  void TearDown() override { set_poison_allocations(false); }
};

// Element-wise outputs: one rounding of the storage type apart at most.
double elem_tol(DType d) {
  switch (d) {
    case DType::kF64: return 1e-11;
    case DType::kF32: return 2e-5;
    case DType::kF16: return 4e-3;
    default: return 3e-2;
  }
}
// Per-channel statistics and sums (f32 on the GPU against f64 sums on the CPU).
double stat_tol(DType d) { return d == DType::kF64 ? 1e-11 : 2e-4; }

std::string what(const char* piece, DType d, const Shape& s) {
  return std::string(piece) + " " + std::string(dtype_name(d)) + " " + shape_str(s);
}

const std::vector<Shape> kBatchNormShapes = {
    {4, 3, 5, 5},      // small
    {128, 32, 14, 14}, // CNN-like: few channels, reduction split over n
    {8, 256, 4, 4},    // many channels, tiny planes
    {2, 2, 40, 40},    // planes longer than a block row
    {300, 5},          // 2-D (BatchNorm1d), inner 1
    {3, 4, 7},         // 3-D
    {1, 3, 2, 2},
};

TEST_F(CudaNorm, BatchNormPiecesMatchCpu) {
  TANDEM_REQUIRE_CUDA();
  uint64_t seed = 1;
  for (DType d : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
    const DType sd = batch_norm_stat_dtype(d);
    for (const Shape& shape : kBatchNormShapes) {
      const int64_t c = shape[1];
      Tensor x = random_tensor(shape, seed++, d, Device::cpu(), -2.0, 3.0);
      Tensor dy = random_tensor(shape, seed++, d);
      Tensor w = random_tensor({c}, seed++, sd, Device::cpu(), 0.5, 1.5), b = random_tensor({c}, seed++, sd);
      Tensor xg = x.to(kGpu), dyg = dy.to(kGpu), wg = w.to(kGpu), bg = b.to(kGpu);

      BatchNormStats sc = batch_norm_stats(x, 1e-5), sg = batch_norm_stats(xg, 1e-5);
      EXPECT_TRUE(all_close(sg.mean.cpu(), sc.mean, stat_tol(d), stat_tol(d))) << what("stats mean", d, shape);
      EXPECT_TRUE(all_close(sg.invstd.cpu(), sc.invstd, stat_tol(d), stat_tol(d))) << what("stats invstd", d, shape);

      // From here on both devices use the CPU's statistics, so each piece is compared alone.
      Tensor mg = sc.mean.to(kGpu), ig = sc.invstd.to(kGpu);
      for (bool affine : {true, false}) {
        Tensor wc = affine ? w : Tensor(), bc = affine ? b : Tensor();
        Tensor wgc = affine ? wg : Tensor(), bgc = affine ? bg : Tensor();
        EXPECT_TRUE(all_close(batch_norm_elemt(xg, mg, ig, wgc, bgc).cpu(),
                              batch_norm_elemt(x, sc.mean, sc.invstd, wc, bc), elem_tol(d), elem_tol(d)))
            << what(affine ? "elemt affine" : "elemt", d, shape);
      }

      BatchNormBackwardReduce rc = batch_norm_backward_reduce(dy, x, sc.mean, sc.invstd, true, true);
      BatchNormBackwardReduce rg = batch_norm_backward_reduce(dyg, xg, mg, ig, true, true);
      const double rt = stat_tol(d) * 10;  // sums of up to 10^5 terms
      EXPECT_TRUE(all_close(rg.sum_dy.cpu(), rc.sum_dy, rt, rt)) << what("sum_dy", d, shape);
      EXPECT_TRUE(all_close(rg.sum_dy_xmu.cpu(), rc.sum_dy_xmu, rt, rt)) << what("sum_dy_xmu", d, shape);
      EXPECT_TRUE(all_close(rg.grad_weight.cpu(), rc.grad_weight, rt, rt)) << what("grad_weight", d, shape);
      EXPECT_TRUE(all_close(rg.grad_bias.cpu(), rc.grad_bias, rt, rt)) << what("grad_bias", d, shape);
      BatchNormBackwardReduce rn = batch_norm_backward_reduce(dyg, xg, mg, ig, false, false);
      EXPECT_FALSE(rn.grad_weight.defined());

      const int64_t count = x.numel() / c;
      Tensor sdy = rc.sum_dy.to(kGpu), sdyx = rc.sum_dy_xmu.to(kGpu);
      EXPECT_TRUE(all_close(batch_norm_backward_elemt(dyg, xg, mg, ig, wg, sdy, sdyx, count).cpu(),
                            batch_norm_backward_elemt(dy, x, sc.mean, sc.invstd, w, rc.sum_dy, rc.sum_dy_xmu, count),
                            elem_tol(d), elem_tol(d)))
          << what("backward_elemt", d, shape);
      EXPECT_TRUE(all_close(batch_norm_backward_elemt(dyg, xg, mg, ig, Tensor(), Tensor(), Tensor(), count).cpu(),
                            batch_norm_backward_elemt(dy, x, sc.mean, sc.invstd, Tensor(), Tensor(), Tensor(), count),
                            elem_tol(d), elem_tol(d)))
          << what("backward_elemt eval", d, shape);
    }
  }
}

TEST_F(CudaNorm, BatchNormStatsOfEmptyBatchAreZero) {
  TANDEM_REQUIRE_CUDA();
  Tensor x = Tensor::empty({0, 3, 4, 4}, {.device = kGpu});
  BatchNormStats s = batch_norm_stats(x, 1e-5);
  EXPECT_EQ(s.mean.cpu().to_vector<float>(), std::vector<float>(3, 0.f));
  EXPECT_EQ(s.invstd.cpu().to_vector<float>(), std::vector<float>(3, 0.f));
}

TEST_F(CudaNorm, BatchNormOpMatchesCpuInTrainAndEval) {
  TANDEM_REQUIRE_CUDA();
  uint64_t seed = 500;
  for (DType d : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (const Shape& shape : {Shape{16, 8, 6, 6}, Shape{64, 3}}) {
      const int64_t c = shape[1];
      Tensor rm = random_tensor({c}, seed++, DType::kF32), rv = random_tensor({c}, seed++, DType::kF32, Device::cpu(), 0.5, 2.0);
      Tensor rmg = rm.to(kGpu), rvg = rv.to(kGpu);
      for (bool training : {true, false}) {
        Tensor xc = random_tensor(shape, seed++, d, Device::cpu(), -1.0, 2.0).set_requires_grad(true);
        Tensor xg = xc.detach().to(kGpu).set_requires_grad(true);
        Tensor wc = random_tensor({c}, seed++, DType::kF32).set_requires_grad(true);
        Tensor bc = random_tensor({c}, seed++, DType::kF32).set_requires_grad(true);
        Tensor wg = wc.detach().to(kGpu).set_requires_grad(true), bg = bc.detach().to(kGpu).set_requires_grad(true);
        Tensor g = random_tensor(shape, seed++, d);
        Tensor yc = batch_norm(xc, wc, bc, rm, rv, training, 0.1, 1e-5);
        Tensor yg = batch_norm(xg, wg, bg, rmg, rvg, training, 0.1, 1e-5);
        const std::string tag = what(training ? "batch_norm train" : "batch_norm eval", d, shape);
        EXPECT_TRUE(all_close(yg.cpu(), yc, elem_tol(d) * 2, elem_tol(d) * 2)) << tag;
        EXPECT_TRUE(all_close(rmg.cpu(), rm, 1e-5, 1e-5)) << tag << " running_mean";
        EXPECT_TRUE(all_close(rvg.cpu(), rv, 1e-5, 1e-5)) << tag << " running_var";
        yc.backward(g);
        yg.backward(g.to(kGpu));
        EXPECT_TRUE(all_close(xg.grad().cpu(), xc.grad(), elem_tol(d) * 5, elem_tol(d) * 5)) << tag << " dx";
        EXPECT_TRUE(all_close(wg.grad().cpu(), wc.grad(), 2e-3, 2e-3)) << tag << " dweight";
        EXPECT_TRUE(all_close(bg.grad().cpu(), bc.grad(), 2e-3, 2e-3)) << tag << " dbias";
      }
    }
  }
}

TEST_F(CudaNorm, LayerNormMatchesCpu) {
  TANDEM_REQUIRE_CUDA();
  struct Case {
    Shape shape;
    Shape normalized;
  };
  // Warp per row (cols ≤ 1024), block per row (more), many rows (several row chunks
  // in the parameter gradients), a single row, a multi-dim normalized_shape.
  const std::vector<Case> cases = {{{37, 10}, {10}},      {{8, 1024}, {1024}}, {{4, 3000}, {3000}},
                                   {{5000, 64}, {64}},    {{1, 768}, {768}},   {{2, 3, 4, 5}, {4, 5}},
                                   {{4, 128, 768}, {768}}};
  uint64_t seed = 900;
  for (DType d : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
    for (const Case& cs : cases) {
      for (bool affine : {true, false}) {
        Tensor xc = random_tensor(cs.shape, seed++, d, Device::cpu(), -2.0, 3.0).set_requires_grad(true);
        Tensor xg = xc.detach().to(kGpu).set_requires_grad(true);
        Tensor wc, bc, wg, bg;
        if (affine) {
          wc = random_tensor(cs.normalized, seed++, d, Device::cpu(), 0.5, 1.5).set_requires_grad(true);
          bc = random_tensor(cs.normalized, seed++, d).set_requires_grad(true);
          wg = wc.detach().to(kGpu).set_requires_grad(true);
          bg = bc.detach().to(kGpu).set_requires_grad(true);
        }
        Tensor g = random_tensor(cs.shape, seed++, d);
        Tensor yc = layer_norm(xc, cs.normalized, wc, bc), yg = layer_norm(xg, cs.normalized, wg, bg);
        const std::string tag = what(affine ? "layer_norm affine" : "layer_norm", d, cs.shape);
        EXPECT_TRUE(all_close(yg.cpu(), yc, elem_tol(d) * 2, elem_tol(d) * 2)) << tag;
        yc.backward(g);
        yg.backward(g.to(kGpu));
        EXPECT_TRUE(all_close(xg.grad().cpu(), xc.grad(), elem_tol(d) * 5, elem_tol(d) * 5)) << tag << " dx";
        if (affine) {
          // Column sums over up to 5000 rows, rounded once to the storage type.
          const double pt = d == DType::kF64 ? 1e-10 : (d == DType::kF32 ? 1e-3 : elem_tol(d) * 2);
          EXPECT_TRUE(all_close(wg.grad().cpu(), wc.grad(), pt, pt)) << tag << " dweight";
          EXPECT_TRUE(all_close(bg.grad().cpu(), bc.grad(), pt, pt)) << tag << " dbias";
        }
      }
    }
  }
}

TEST_F(CudaNorm, LayerNormOnlyParameterGradients) {
  TANDEM_REQUIRE_CUDA();
  Tensor x = random_tensor({300, 40}, 2000, DType::kF32);
  Tensor wc = random_tensor({40}, 2001, DType::kF32).set_requires_grad(true);
  Tensor wg = wc.detach().to(kGpu).set_requires_grad(true);
  Tensor g = random_tensor({300, 40}, 2002, DType::kF32);
  layer_norm(x, {40}, wc).backward(g);
  layer_norm(x.to(kGpu), {40}, wg).backward(g.to(kGpu));
  EXPECT_TRUE(all_close(wg.grad().cpu(), wc.grad(), 1e-4, 1e-4));
}

TEST_F(CudaNorm, BatchNorm2dLayerOnGpuTracksLikeCpu) {
  TANDEM_REQUIRE_CUDA();
  nn::BatchNorm2d cpu_bn(4), gpu_bn(4);
  gpu_bn.to(kGpu);
  for (uint64_t step = 0; step < 3; ++step) {
    Tensor x = random_tensor({8, 4, 5, 5}, 3000 + step, DType::kF32, Device::cpu(), -1.0, 3.0);
    EXPECT_TRUE(all_close(gpu_bn(x.to(kGpu)).cpu(), cpu_bn(x), 1e-4, 1e-4)) << "step " << step;
  }
  EXPECT_TRUE(all_close(gpu_bn.running_mean().cpu(), cpu_bn.running_mean(), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(gpu_bn.running_var().cpu(), cpu_bn.running_var(), 1e-5, 1e-5));
  EXPECT_EQ(gpu_bn.num_batches_tracked().cpu().item<int64_t>(), 3);
}

}  // namespace
}  // namespace tandem
