// SyncBatchNorm on CUDA tensors: two local-backend ranks sharing cuda:0, with uneven
// batches (one empty), against BatchNorm2d on the CPU over the concatenated batch:
// outputs, input gradients, weight and bias gradients summed over ranks, running stats.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "comm/local.h"
#include "comm/sync_batchnorm.h"
#include "layers/norm.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using tandem::testing::all_close;
using tandem::testing::random_tensor;
using tandem::testing::run_ranks;

class CudaSyncBatchNorm : public tandem::testing::CudaParityTest {};

// What one rank brings back to the main thread, on the CPU.
struct RankResult {
  std::vector<Tensor> y, grad_x;
  Tensor grad_w, grad_b, running_mean, running_var;
};

TEST_F(CudaSyncBatchNorm, TwoRanksOnOneGpuMatchBatchNormOnCpu) {
  const int64_t c = 3;
  const Shape spatial = {5, 4};
  const int steps = 2;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kF16}) {
    for (const std::vector<int64_t>& batches : {std::vector<int64_t>{3, 2}, std::vector<int64_t>{0, 4}}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + ", batches [" + std::to_string(batches[0]) + ", " +
                   std::to_string(batches[1]) + "]");
      const int64_t total = batches[0] + batches[1];
      const Shape full = {total, c, spatial[0], spatial[1]};
      // The inputs rounded to `dtype` once, so CPU f64 and the GPU see the same values.
      std::vector<Tensor> xs, dys;
      for (int s = 0; s < steps; ++s) {
        xs.push_back(random_tensor(full, 10 + s, dtype, Device::cpu(), -2.0, 3.0));
        dys.push_back(random_tensor(full, 20 + s, dtype));
      }
      const Tensor w0 = random_tensor({c}, 7, DType::kF32, Device::cpu(), 0.5, 2.0);
      const Tensor b0 = random_tensor({c}, 8, DType::kF32);

      // Reference: one BatchNorm2d over the whole batch, in f64 on the CPU.
      nn::BatchNorm2d ref(c);
      ref.to(DType::kF64);
      {
        autograd::NoGradGuard no_grad;
        Tensor w = ref.weight(), b = ref.bias();
        w.copy_(w0);
        b.copy_(b0);
      }
      std::vector<Tensor> ref_y, ref_gx;
      for (int s = 0; s < steps; ++s) {
        Tensor x = xs[s].to(DType::kF64);
        x.set_requires_grad(true);
        Tensor y = ref.forward(x);
        y.backward(dys[s].to(DType::kF64));
        ref_y.push_back(y.detach());
        ref_gx.push_back(x.grad());
      }

      auto groups = make_local_group(2);
      std::vector<RankResult> results(2);
      run_ranks(2, [&](int r) {
        const int64_t offset = r == 0 ? 0 : batches[0], n = batches[r];
        SyncBatchNorm bn(c, groups[r]);
        bn.to(Device::cuda());
        bn.to(dtype);
        {
          autograd::NoGradGuard no_grad;
          Tensor w = bn.weight(), b = bn.bias();
          w.copy_(w0);
          b.copy_(b0);
        }
        RankResult& out = results[r];
        for (int s = 0; s < steps; ++s) {
          Tensor x = xs[s].narrow(0, offset, n).detach().to(Device::cuda());
          x.set_requires_grad(true);
          Tensor y = bn.forward(x);
          y.backward(dys[s].narrow(0, offset, n).to(Device::cuda()));
          out.y.push_back(y.detach().cpu());
          out.grad_x.push_back(x.grad().cpu());
        }
        out.grad_w = bn.weight().grad().cpu();
        out.grad_b = bn.bias().grad().cpu();
        out.running_mean = bn.running_mean().cpu();
        out.running_var = bn.running_var().cpu();
        EXPECT_EQ(bn.num_batches_tracked().item<int64_t>(), steps);
      });

      const double atol = dtype == DType::kF64 ? 1e-11 : dtype == DType::kF32 ? 1e-5 : 2e-2;
      const double rtol = dtype == DType::kF64 ? 1e-9 : dtype == DType::kF32 ? 1e-4 : 2e-2;
      for (int r = 0; r < 2; ++r) {
        const int64_t offset = r == 0 ? 0 : batches[0], n = batches[r];
        for (int s = 0; s < steps; ++s) {
          EXPECT_TRUE(all_close(results[r].y[s].to(DType::kF64), ref_y[s].narrow(0, offset, n), atol, rtol))
              << "output, rank " << r << " step " << s;
          EXPECT_TRUE(all_close(results[r].grad_x[s].to(DType::kF64), ref_gx[s].narrow(0, offset, n), atol, rtol))
              << "input gradient, rank " << r << " step " << s;
        }
        EXPECT_TRUE(all_close(results[r].running_mean.to(DType::kF64), ref.running_mean(), atol, rtol)) << "rank " << r;
        EXPECT_TRUE(all_close(results[r].running_var.to(DType::kF64), ref.running_var(), atol, rtol)) << "rank " << r;
      }
      // Gradients accumulated over the steps; summed over ranks they are the reference's.
      // (f16 parameters hold their gradients in f16, hence the tolerance above.)
      const Tensor gw = add(results[0].grad_w.to(DType::kF64), results[1].grad_w.to(DType::kF64));
      const Tensor gb = add(results[0].grad_b.to(DType::kF64), results[1].grad_b.to(DType::kF64));
      EXPECT_TRUE(all_close(gw, ref.weight().grad(), atol * 10, rtol)) << "weight gradient";
      EXPECT_TRUE(all_close(gb, ref.bias().grad(), atol * 10, rtol)) << "bias gradient";
    }
  }
}

}  // namespace
}  // namespace tandem::comm
