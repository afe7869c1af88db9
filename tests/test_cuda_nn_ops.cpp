// GPU tests of the neural-network and random ops: every forward and backward is
// compared with its CPU twin on random data with poisoned outputs, dropout masks and
// rand/randn draws must match the CPU bit for bit. Skips without a CUDA device.
#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::random_indices;
using testing::random_tensor;

const Device kGpu = Device::cuda(0);

class CudaNnOps : public ::testing::Test {
 protected:
  void SetUp() override { set_poison_allocations(true); }
  void TearDown() override { set_poison_allocations(false); }
};

double tol_for(DType d) {
  switch (d) {
    case DType::kF64: return 1e-12;
    case DType::kF32: return 1e-5;
    case DType::kF16: return 2e-3;
    default: return 1.6e-2;
  }
}

// Bitwise equality of two tensors of the same dtype (CPU copies compared byte by byte).
::testing::AssertionResult bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return ::testing::AssertionFailure() << "shape/dtype differ";
  Tensor ha = a.cpu(), hb = b.cpu();
  const size_t es = dtype_size(a.dtype());
  const auto* pa = static_cast<const unsigned char*>(ha.data_ptr());
  const auto* pb = static_cast<const unsigned char*>(hb.data_ptr());
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(pa + i * es, pb + i * es, es) != 0) return ::testing::AssertionFailure() << "first difference at element " << i;
  return ::testing::AssertionSuccess();
}

// Forward and backward of `op` on CPU and GPU for input x (and cotangent g) compared.
template <class Op>
void compare_unary(Op op, const Shape& shape, DType dtype, uint64_t seed, const char* what) {
  const double tol = tol_for(dtype);
  Tensor xc = random_tensor(shape, seed, dtype, Device::cpu(), -4.0, 4.0).set_requires_grad(true);
  Tensor xg = xc.detach().to(kGpu).set_requires_grad(true);
  Tensor g = random_tensor(shape, seed + 1, dtype);
  Tensor yc = op(xc), yg = op(xg);
  EXPECT_TRUE(all_close(yg.cpu(), yc, tol, tol)) << what << " forward " << dtype_name(dtype) << " " << shape_str(shape);
  yc.backward(g);
  yg.backward(g.to(kGpu));
  EXPECT_TRUE(all_close(xg.grad().cpu(), xc.grad(), tol, tol))
      << what << " backward " << dtype_name(dtype) << " " << shape_str(shape);
}

TEST_F(CudaNnOps, SoftmaxMatchesCpu) {
  TANDEM_REQUIRE_CUDA();
  // Warp-per-row (n ≤ 1024), block-per-row (larger n) and strided (inner > 1) paths.
  const std::vector<std::pair<Shape, int64_t>> cases = {
      {{37, 10}, 1}, {{5, 1024}, -1}, {{3, 3000}, 1}, {{2, 50257}, 1}, {{4, 7, 9}, 1}, {{6, 5, 3}, 0}, {{11}, 0}, {{1000, 3}, 1}};
  for (DType d : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
    uint64_t seed = 100;
    for (const auto& [shape, dim] : cases) {
      compare_unary([dim](const Tensor& x) { return softmax(x, dim); }, shape, d, seed++, "softmax");
      compare_unary([dim](const Tensor& x) { return log_softmax(x, dim); }, shape, d, seed++, "log_softmax");
    }
  }
}

TEST_F(CudaNnOps, CrossEntropyMatchesCpu) {
  TANDEM_REQUIRE_CUDA();
  struct Case {
    int64_t n, c;
  };
  for (const Case& k : std::vector<Case>{{64, 10}, {7, 1000}, {5, 3000}, {3, 50257}, {1, 1}}) {
    for (DType d : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
      for (Reduction r : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) {
        for (double eps : {0.0, 0.1}) {
          std::vector<int64_t> tv = random_indices({k.n}, k.c, 300 + k.c).to_vector<int64_t>();
          if (k.n > 2) tv[1] = -100;
          Tensor tc = Tensor::from_vector(tv, {k.n});
          CrossEntropyOptions o{.reduction = r, .label_smoothing = eps};
          Tensor xc = random_tensor({k.n, k.c}, 400 + k.n, d, Device::cpu(), -5.0, 5.0).set_requires_grad(true);
          Tensor xg = xc.detach().to(kGpu).set_requires_grad(true);
          Tensor lc = cross_entropy(xc, tc, o), lg = cross_entropy(xg, tc.to(kGpu), o);
          const double tol = tol_for(d) * 4;
          EXPECT_TRUE(all_close(lg.cpu(), lc, tol, tol)) << "forward n=" << k.n << " c=" << k.c << " " << dtype_name(d);
          Tensor g = random_tensor(lc.shape(), 500, d, Device::cpu(), 0.5, 1.5);
          lc.backward(g);
          lg.backward(g.to(kGpu));
          EXPECT_TRUE(all_close(xg.grad().cpu(), xc.grad(), tol, tol))
              << "backward n=" << k.n << " c=" << k.c << " " << dtype_name(d) << " eps " << eps;
        }
      }
    }
  }
}

TEST_F(CudaNnOps, CrossEntropyAllIgnoredAndEmpty) {
  TANDEM_REQUIRE_CUDA();
  Tensor x = random_tensor({3, 4}, 600, DType::kF32, kGpu);
  Tensor t = Tensor::from_vector<int64_t>({-100, -100, -100}, {3}, kGpu);
  EXPECT_TRUE(std::isnan(cross_entropy(x, t).item()));
  EXPECT_EQ(cross_entropy(x, t, {.reduction = Reduction::kSum}).item(), 0.0);
  Tensor e = Tensor::empty({0, 4}, {.device = kGpu});
  Tensor te = Tensor::empty({0}, {.dtype = DType::kI64, .device = kGpu});
  EXPECT_EQ(cross_entropy(e, te, {.reduction = Reduction::kSum}).item(), 0.0);
}

TEST_F(CudaNnOps, MseLossMatchesCpu) {
  TANDEM_REQUIRE_CUDA();
  Tensor ac = random_tensor({33, 17}, 700).set_requires_grad(true);
  Tensor bc = random_tensor({33, 17}, 701);
  Tensor ag = ac.detach().to(kGpu).set_requires_grad(true);
  Tensor lc = mse_loss(ac, bc), lg = mse_loss(ag, bc.to(kGpu));
  EXPECT_TRUE(all_close(lg.cpu(), lc, 1e-12, 1e-12));
  lc.backward();
  lg.backward();
  EXPECT_TRUE(all_close(ag.grad().cpu(), ac.grad(), 1e-12, 1e-12));
}

TEST_F(CudaNnOps, DropoutMaskIsBitIdentical) {
  TANDEM_REQUIRE_CUDA();
  for (DType d : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
    for (int64_t n : {1, 5, 4096, 1000003}) {
      Generator gc(31), gg(31);
      gc.set_state({31, 12345});
      gg.set_state({31, 12345});
      Tensor xc = random_tensor({n}, 800, d).set_requires_grad(true);
      Tensor xg = xc.detach().to(kGpu).set_requires_grad(true);
      Tensor yc = dropout(xc, 0.3, true, &gc), yg = dropout(xg, 0.3, true, &gg);
      EXPECT_TRUE(bit_equal(yg, yc)) << dtype_name(d) << " n=" << n;
      Tensor g = random_tensor({n}, 801, d);
      yc.backward(g);
      yg.backward(g.to(kGpu));
      EXPECT_TRUE(bit_equal(xg.grad(), xc.grad())) << dtype_name(d) << " n=" << n;
    }
  }
}

TEST_F(CudaNnOps, RandAndRandnAreBitIdentical) {
  TANDEM_REQUIRE_CUDA();
  for (DType d : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
    for (int64_t n : {1, 7, 1 << 18}) {
      Generator gc(55), gg(55);
      EXPECT_TRUE(bit_equal(rand({n}, {.dtype = d, .device = kGpu}, &gg), rand({n}, {.dtype = d}, &gc)))
          << "rand " << dtype_name(d) << " n=" << n;
      EXPECT_TRUE(bit_equal(uniform({n}, -0.3, 0.7, {.dtype = d, .device = kGpu}, &gg),
                            uniform({n}, -0.3, 0.7, {.dtype = d}, &gc)))
          << "uniform " << dtype_name(d) << " n=" << n;
      EXPECT_TRUE(bit_equal(randn({n}, {.dtype = d, .device = kGpu}, &gg), randn({n}, {.dtype = d}, &gc)))
          << "randn " << dtype_name(d) << " n=" << n;
      EXPECT_TRUE(bit_equal(normal({n}, 2.0, 0.1, {.dtype = d, .device = kGpu}, &gg),
                            normal({n}, 2.0, 0.1, {.dtype = d}, &gc)))
          << "normal " << dtype_name(d) << " n=" << n;
    }
  }
}

TEST_F(CudaNnOps, InitialisersMatchCpu) {
  TANDEM_REQUIRE_CUDA();
  Generator gc(66), gg(66);
  Tensor wc = Tensor::empty({64, 32, 3, 3});
  Tensor wg = Tensor::empty({64, 32, 3, 3}, {.device = kGpu});
  kaiming_uniform_(wc, 0.0, Nonlinearity::kReLU, &gc);
  kaiming_uniform_(wg, 0.0, Nonlinearity::kReLU, &gg);
  EXPECT_TRUE(bit_equal(wg, wc));
  xavier_normal_(wc, 1.0, &gc);
  xavier_normal_(wg, 1.0, &gg);
  EXPECT_TRUE(bit_equal(wg, wc));
}

}  // namespace
}  // namespace tandem
