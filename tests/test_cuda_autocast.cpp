// Autocast and half precision on CUDA against the CPU: every op of the table under each
// guard gives the same output dtype and close values and gradients on both devices
// (cuBLAS/cuDNN with f32 accumulation against the CPU's f32-accumulating kernels), half
// kernels match the CPU's on the same inputs, and an MLP and the CNN under autocast give
// the same loss and f32 parameter gradients on both. Allocations are poisoned. Skips
// without a CUDA device.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "autocast_cases.h"
#include "engine/autocast.h"
#include "layers/models/cnn.h"
#include "layers/models/mlp.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::case_cotangent;
using testing::case_inputs;
using testing::CudaParityTest;
using testing::expected_dtype;
using testing::half_tolerance;
using testing::op_cases;
using testing::OpCase;
using testing::random_indices;
using testing::random_tensor;
using testing::relative_error;

const Device kGpu = Device::cuda(0);
constexpr DType kHalfTypes[] = {DType::kF16, DType::kBF16};

std::vector<Tensor> to_gpu_leaves(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(x.detach().to(kGpu).set_requires_grad(true));
  return out;
}

/// Runs case `c` on the CPU and on the GPU (inside a `guard` guard when `autocast`),
/// with inputs in `input`; outputs and gradients must have the same dtypes on both and
/// agree within `tol` (relative error of the whole tensor).
void expect_same_on_gpu(const OpCase& c, bool autocast, DType guard, DType input, uint64_t seed, double tol) {
  SCOPED_TRACE(c.name + (autocast ? " under " + std::string(dtype_name(guard)) : std::string(" without autocast")) +
               " with " + std::string(dtype_name(input)) + " inputs");
  std::vector<Tensor> xc = case_inputs(c, input, Device::cpu(), seed);
  std::vector<Tensor> xg = to_gpu_leaves(xc);
  Tensor yc, yg;
  {
    AutocastGuard g(guard, autocast);
    yc = c.fn(xc);
    yg = c.fn(xg);
  }
  ASSERT_EQ(yg.dtype(), yc.dtype());
  ASSERT_TRUE(yg.is_cuda());
  if (autocast) {
    EXPECT_EQ(yg.dtype(), expected_dtype(c, guard, input));
  }
  EXPECT_LE(relative_error(yg.cpu(), yc), tol);
  Tensor ct = case_cotangent(yc, seed + 1);
  yc.backward(ct);
  yg.backward(ct.to(kGpu));
  for (size_t i = 0; i < xc.size(); ++i) {
    ASSERT_TRUE(xg[i].grad().defined()) << "input " << i;
    EXPECT_EQ(xg[i].grad().dtype(), input) << "gradient of input " << i;
    EXPECT_LE(relative_error(xg[i].grad().cpu(), xc[i].grad()), 2 * tol) << "gradient of input " << i;
  }
}

class CudaAutocast : public CudaParityTest {};

TEST_F(CudaAutocast, PolicyMatchesTheCpuOpByOp) {
  uint64_t seed = 5000;
  for (const OpCase& c : op_cases())
    for (DType guard : kHalfTypes)
      for (DType input : {DType::kF32, guard})
        expect_same_on_gpu(c, true, guard, input, seed += 10, 4 * half_tolerance(guard));
}

TEST_F(CudaAutocast, HalfKernelsMatchTheCpu) {
  uint64_t seed = 6000;
  for (const OpCase& c : op_cases())
    for (DType half : kHalfTypes) expect_same_on_gpu(c, false, half, half, seed += 10, 2 * half_tolerance(half));
}

TEST_F(CudaAutocast, GuardIsPerThreadAndDeviceIndependent) {
  // The guard is not tied to a device: the same guard drives CPU and CUDA ops.
  AutocastGuard g(DType::kBF16);
  Tensor a = random_tensor({4, 8}, 1, DType::kF32, kGpu), b = random_tensor({8, 3}, 2, DType::kF32, kGpu);
  EXPECT_EQ(matmul(a, b).dtype(), DType::kBF16);
  EXPECT_EQ(softmax(matmul(a, b)).dtype(), DType::kF32);
  EXPECT_EQ(matmul(a.cpu(), b.cpu()).dtype(), DType::kBF16);
}

/// One forward and backward under `half` autocast on the CPU and on a GPU copy of the
/// model: same logits dtype, close loss and parameter gradients (all f32).
void expect_model_same_on_gpu(nn::Module& model, const Tensor& x, const Tensor& t, DType half, double tol) {
  SCOPED_TRACE(model.name() + " under " + std::string(dtype_name(half)));
  std::shared_ptr<nn::Module> gpu = model.clone();
  gpu->to(kGpu);
  Tensor lc, lg;
  {
    AutocastGuard g(half);
    Tensor yc = model(x), yg = (*gpu)(x.to(kGpu));
    EXPECT_EQ(yc.dtype(), half);
    EXPECT_EQ(yg.dtype(), half);
    lc = cross_entropy(yc, t);
    lg = cross_entropy(yg, t.to(kGpu));
  }
  lc.backward();
  lg.backward();
  EXPECT_NEAR(lg.item(), lc.item(), tol * std::abs(lc.item()));
  const auto pc = model.named_parameters(), pg = gpu->named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) {
    ASSERT_EQ(pg[i].second.grad().dtype(), DType::kF32) << pg[i].first;
    const Tensor& w = pc[i].second.grad();
    const double norm = std::sqrt(sum(square(w.to(DType::kF64))).item());
    EXPECT_LE(relative_error(pg[i].second.grad().cpu(), w) * norm, tol * (norm + 1e-2)) << pc[i].first;
  }
}

TEST_F(CudaAutocast, ModelsMatchTheCpu) {
  for (DType half : kHalfTypes) {
    const double tol = half == DType::kF16 ? 1e-2 : 1e-1;
    manual_seed(41);
    nn::models::MLP mlp({.in = 64, .hidden = {48, 32}, .out = 10});
    expect_model_same_on_gpu(mlp, random_tensor({16, 64}, 1, DType::kF32), random_indices({16}, 10, 2), half, tol);
    manual_seed(42);
    nn::models::CNN cnn({.in_channels = 1, .num_classes = 10, .image_size = 12, .hidden = 32});
    expect_model_same_on_gpu(cnn, random_tensor({8, 1, 12, 12}, 3, DType::kF32), random_indices({8}, 10, 4), half,
                             tol);
  }
}

}  // namespace
}  // namespace tandem
