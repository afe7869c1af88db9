// Activation checkpointing on the GPU: checkpointed gradients equal the plain graph's
// on the GPU (dropout masks replayed from the CUDA generator) and the CPU's within f32
// tolerance, the CUDA generator ends where the forward left it, DDP (local backend, two
// ranks on one GPU) matches one process, and the caching allocator's peak for a
// 16-layer MLP drops by at least 40%.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "comm/local.h"
#include "ddp_test_support.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/storage.h"
#include "layers/activation.h"
#include "layers/checkpoint.h"
#include "layers/dropout.h"
#include "layers/linear.h"
#include "layers/sequential.h"
#include "checkpoint_test_support.h"
#include "test_util.h"

namespace tandem::nn {
namespace {

using tandem::testing::all_close;
using tandem::testing::random_tensor;

const Device kGpu = Device::cuda(0);

using namespace checkpoint_test;

// Input gradient, then every parameter gradient, as CPU copies.
std::vector<Tensor> gradients(Module& model, const Tensor& x_data, uint64_t seed) {
  auto params = model.parameters();
  for (Tensor p : params) p.set_grad(Tensor());
  manual_seed(seed);
  Tensor x = x_data.detach().clone().set_requires_grad(true);
  Tensor y = model.forward(x);
  sum(mul(y, y)).backward();
  std::vector<Tensor> out{x.grad().cpu()};
  for (const Tensor& p : params) out.push_back(p.grad().cpu());
  return out;
}

TEST(CudaActivationCheckpoint, GradientsMatchPlainOnGpuAndCpu) {
  TANDEM_REQUIRE_CUDA();
  set_poison_allocations(true);
  for (double p : {0.0, 0.3}) {
    SCOPED_TRACE("dropout " + std::to_string(p));
    auto layers = mlp_layers(4, 32, p, 5);
    auto plain = plain_of(layers);
    auto ckpt = blocks_of(layers, 3);
    Tensor x = random_tensor({16, 32}, 9, DType::kF32);
    auto want_cpu = gradients(*plain, x, 11);
    plain->to(kGpu);
    auto want_gpu = gradients(*plain, x.to(kGpu), 11);
    auto got_gpu = gradients(*ckpt, x.to(kGpu), 11);
    ASSERT_EQ(got_gpu.size(), want_gpu.size());
    for (size_t i = 0; i < want_gpu.size(); ++i) {
      // Same kernels on the same data and the same dropout masks.
      EXPECT_TRUE(all_close(got_gpu[i], want_gpu[i], 1e-6, 1e-6)) << "tensor " << i << " vs GPU plain";
      // The CPU draws its own masks; compare devices without dropout.
      if (p == 0.0) {
        EXPECT_TRUE(all_close(got_gpu[i], want_cpu[i], 1e-4, 1e-4)) << "tensor " << i << " vs CPU plain";
      }
    }
  }
  set_poison_allocations(false);
}

TEST(CudaActivationCheckpoint, CudaGeneratorEndsWhereTheForwardLeftIt) {
  TANDEM_REQUIRE_CUDA();
  Tensor x = random_tensor({1000}, 12, DType::kF32, kGpu).set_requires_grad(true);
  manual_seed(77);
  Tensor y = checkpoint([](const Tensor& in) { return dropout(in, 0.5); }, x);
  const PhiloxState before_backward = default_generator(kGpu).state();
  sum(y).backward();
  const PhiloxState after_backward = default_generator(kGpu).state();
  EXPECT_GT(before_backward.offset, 0u);
  EXPECT_EQ(after_backward.offset, before_backward.offset);
  EXPECT_TRUE(all_close(x.grad(), div(y.detach(), x.detach()), 1e-6, 1e-6));
}

TEST(CudaActivationCheckpoint, DDPTwoRanksOnOneGpuMatchOneProcess) {
  TANDEM_REQUIRE_CUDA();
  namespace ddp = tandem::comm::ddp_test;
  const int world = 2;
  auto want = ddp::reference(ddp::Kind::kMLP, world, false, kGpu);
  std::vector<std::shared_ptr<Module>> models;
  for (int r = 0; r < world; ++r) {
    auto mlp = std::dynamic_pointer_cast<Sequential>(ddp::make_model(ddp::Kind::kMLP, ddp::rank_seed(r)));
    auto s = std::make_shared<Sequential>();
    for (const auto& m : *mlp) s->push_back(std::make_shared<Checkpointed>(m));
    models.push_back(s);
  }
  auto groups = comm::make_local_group(world);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(world);
  tandem::testing::run_ranks(world, [&](int r) {
    const auto k = static_cast<size_t>(r);
    got[k] = ddp::ddp_train(ddp::Kind::kMLP, models[k], groups[k], {}, kGpu);
  });
  for (int r = 0; r < world; ++r)
    ddp::expect_same_state(got[static_cast<size_t>(r)], want, "checkpointed rank " + std::to_string(r));
}

TEST(CudaActivationCheckpoint, SixteenLayerMLPPeakDropsByAtLeast40Percent) {
  TANDEM_REQUIRE_CUDA();
  // As the CPU test: 16 x (Linear 1024 -> ReLU), batch 1024, blocks of 4 layers.
  auto layers = mlp_layers(16, 1024, 0.0, 21);
  auto plain = plain_of(layers);
  auto ckpt = blocks_of(layers, 8);
  plain->to(kGpu);
  Tensor x = random_tensor({1024, 1024}, 22, DType::kF32, kGpu);
  auto peak = [&](Module& model) {
    auto step = [&] { sum(model.forward(x)).backward(); };
    step();
    model.zero_grad(/*set_to_none=*/false);
    cuda::synchronize(0);
    cuda::reset_peak_memory_stats(0);
    const int64_t baseline = cuda::memory_stats(0).allocated_bytes;
    step();
    cuda::synchronize(0);
    return cuda::memory_stats(0).peak_allocated_bytes - baseline;
  };
  const int64_t p = peak(*plain), c = peak(*ckpt);
  std::cout << "[ peak ] CUDA plain " << format_bytes(p) << ", checkpointed " << format_bytes(c) << "\n";
  EXPECT_LE(static_cast<double>(c), 0.6 * static_cast<double>(p))
      << "plain " << format_bytes(p) << ", checkpointed " << format_bytes(c);
}

}  // namespace
}  // namespace tandem::nn
