// GPU tests of the GradScaler: the fused multi-tensor unscale-and-check-for-inf kernel
// against its CPU twin (f32, f64, f16, bf16; many tensors and chunks, so more than one
// launch; inf, -inf and NaN anywhere), its launch plan, and whole scaled training steps
// on CUDA against the CPU, including a skipped step whose flag stays on the device; the
// capturable scaler (state and decisions on the GPU) and its update kernel.
#include <limits>
#include <string>
#include <vector>

#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/cpu/amp.h"
#include "kernels/cuda/amp.h"
#include "layers/models/mlp.h"
#include "engine/random.h"
#include "optim/grad_scaler.h"
#include "optim/sgd.h"
#include "tandem/config.h"
#include "test_util.h"

namespace tandem::optim {
namespace {

using tandem::testing::all_close;
using tandem::testing::random_tensor;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

class CudaGradScaler : public tandem::testing::CudaParityTest {};

#if TANDEM_CUDA

/// Runs the CPU twin on host copies and the CUDA kernel on device copies of `tensors`
/// (random, any sizes), then compares every tensor bit for bit and the two flags. With
/// `scale` > 0 both kernels read that scale from memory instead of taking inv_scale.
void compare_kernel(const std::vector<Tensor>& tensors, float inv_scale, const std::string& what, float scale = 0.0f) {
  SCOPED_TRACE(what);
  const Device gpu = Device::cuda(0);
  const DType dt = tensors.at(0).dtype();
  std::vector<Tensor> host, dev;
  std::vector<void*> host_ptrs, dev_ptrs;
  std::vector<int64_t> numel;
  for (const Tensor& t : tensors) {
    host.push_back(t.clone());
    dev.push_back(t.to(gpu));
    host_ptrs.push_back(host.back().data_ptr());
    dev_ptrs.push_back(dev.back().data_ptr());
    numel.push_back(t.numel());
  }
  float host_found = 0.0f;
  const Tensor dev_scale = full({}, scale, {.dtype = DType::kF32, .device = gpu});
  const float* host_scale_ptr = scale > 0.0f ? &scale : nullptr;
  const float* dev_scale_ptr = scale > 0.0f ? static_cast<const float*>(dev_scale.data_ptr()) : nullptr;
  // With the scale in memory, the inv_scale argument must be ignored by both.
  const float given_inv_scale = scale > 0.0f ? 123.0f : inv_scale;
  kernels::cpu::amp_unscale_check_finite(dt, host_ptrs.data(), numel.data(), static_cast<int64_t>(numel.size()),
                                         given_inv_scale, host_scale_ptr, &host_found);
  Tensor dev_found = zeros({1}, {.dtype = DType::kF32, .device = gpu});
  kernels::cuda::amp_unscale_check_finite(dt, dev_ptrs.data(), numel.data(), static_cast<int64_t>(numel.size()),
                                          given_inv_scale, dev_scale_ptr, static_cast<float*>(dev_found.data_ptr()),
                                          cuda_stream(gpu));
  EXPECT_EQ(dev_found.item(), static_cast<double>(host_found));
  for (size_t i = 0; i < host.size(); ++i) {
    // Same f32 (f64) product and the same round-to-nearest-even conversion: exact.
    EXPECT_TRUE(all_close(dev[i].cpu(), host[i], 0.0, 0.0)) << "tensor " << i;
  }
}

#endif

TEST_F(CudaGradScaler, KernelMatchesCpuTwinForEveryFloatingType) {
#if TANDEM_CUDA
  for (DType dt : tandem::testing::kFloatTypes) {
    std::vector<Tensor> ts;
    uint64_t seed = 100;
    for (int64_t n : {int64_t{1}, int64_t{513}, int64_t{65536}, int64_t{65536 * 3 + 7}, int64_t{1000}}) {
      ts.push_back(random_tensor({n}, seed++, dt, Device::cpu(), -1000.0, 1000.0));
    }
    const std::string name(dtype_name(dt));
    compare_kernel(ts, 1.0f / 65536.0f, name + " finite, power-of-two scale");
    compare_kernel(ts, static_cast<float>(1.0 / 1000.0), name + " finite, scale 1000");
    compare_kernel(ts, 1.0f, name + " inv_scale 1");
    compare_kernel(ts, 0.0f, name + " scale 1000 read from memory", 1000.0f);
    compare_kernel(ts, 0.0f, name + " scale 1 read from memory", 1.0f);
    for (double bad : {kInf, -kInf, kNaN}) {
      for (size_t where : {size_t{0}, size_t{3}}) {
        std::vector<Tensor> with_bad;
        for (const Tensor& t : ts) with_bad.push_back(t.clone());
        // Deep inside the 3-chunk tensor (its last chunk), or at the very first element.
        with_bad[where].narrow(0, where == 3 ? 65536 * 3 + 2 : 0, 1).fill_(bad);
        compare_kernel(with_bad, 0.5f, name + " with " + std::to_string(bad) + " in tensor " + std::to_string(where));
      }
    }
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

TEST_F(CudaGradScaler, ManyTensorsNeedSeveralLaunchesAndStillMatch) {
#if TANDEM_CUDA
  // 300 tensors (> kAmpMaxTensors) plus one of > kAmpMaxBlocks chunks.
  std::vector<Tensor> ts;
  std::vector<int64_t> numel;
  for (int i = 0; i < 300; ++i) {
    ts.push_back(random_tensor({1 + 37 * i}, 200 + static_cast<uint64_t>(i), DType::kF32));
    numel.push_back(1 + 37 * i);
  }
  const int64_t big = int64_t(kernels::cuda::kAmpMaxBlocks + 5) * 65536 + 3;
  ts.push_back(random_tensor({big}, 999, DType::kF32));
  numel.push_back(big);
  EXPECT_GE(kernels::cuda::amp_unscale_check_finite_launches(numel.data(), static_cast<int64_t>(numel.size())), 4);
  compare_kernel(ts, 1.0f / 1024.0f, "finite");
  // A bad value in the last launch only, then in a middle one.
  ts.back().narrow(0, big - 1, 1).fill_(kInf);
  compare_kernel(ts, 1.0f / 1024.0f, "inf in the last launch");
  ts.back().narrow(0, big - 1, 1).fill_(1.0);
  ts[200].narrow(0, 5, 1).fill_(kNaN);
  compare_kernel(ts, 1.0f / 1024.0f, "NaN in a middle launch");
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

TEST(CudaGradScalerPlan, LaunchCountFollowsTheArgumentStructCapacity) {
#if TANDEM_CUDA
  // Host-side packing only: runs without a GPU in a CUDA build.
  auto launches = [](std::vector<int64_t> sizes) {
    return kernels::cuda::amp_unscale_check_finite_launches(sizes.data(), static_cast<int64_t>(sizes.size()));
  };
  const int max_tensors = kernels::cuda::kAmpMaxTensors, max_blocks = kernels::cuda::kAmpMaxBlocks;
  EXPECT_EQ(launches({}), 0);
  EXPECT_EQ(launches({0, 0}), 0);
  EXPECT_EQ(launches({10, 20, 30, 40}), 1);  // an MLP's gradients: one launch
  EXPECT_EQ(launches(std::vector<int64_t>(static_cast<size_t>(max_tensors), 5)), 1);
  EXPECT_EQ(launches(std::vector<int64_t>(static_cast<size_t>(max_tensors) + 1, 5)), 2);
  EXPECT_EQ(launches({int64_t(max_blocks) * 65536}), 1);
  EXPECT_EQ(launches({int64_t(max_blocks) * 65536 + 1}), 2);
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

/// `steps` scaled SGD steps of an MLP on `device`; the loss of step `inf_step` is made
/// inf. The optimizer is capturable when the scaler is.
std::vector<Tensor> train(Device device, int steps, int inf_step, std::vector<bool>& stepped, GradScaler& scaler) {
  manual_seed(5);
  nn::models::MLP model({.in = 12, .hidden = {64, 32}, .out = 5});
  model.to(device);
  SGD opt(model.parameters(), {.lr = 0.1, .momentum = 0.9, .dampening = 0.25,
                               .capturable = scaler.options().capturable});
  for (int s = 0; s < steps; ++s) {
    Tensor x = random_tensor({16, 12}, 300 + static_cast<uint64_t>(s), DType::kF32, device);
    Tensor y = tandem::testing::random_indices({16}, 5, 400 + static_cast<uint64_t>(s), device);
    opt.zero_grad();
    Tensor loss = cross_entropy(model.forward(x), y);
    if (s == inf_step) loss = mul(loss, kInf);
    scaler.scale(loss).backward();
    scaler.unscale(opt);
    for (const Tensor& flag : scaler.found_inf_flags(opt)) EXPECT_EQ(flag.device(), device);
    stepped.push_back(scaler.step(opt));
    scaler.update();
  }
  std::vector<Tensor> out;
  for (const Tensor& p : model.parameters()) out.push_back(p.detach().cpu().clone());
  return out;
}

TEST_F(CudaGradScaler, ScaledTrainingOnCudaMatchesTheCpuIncludingASkippedStep) {
  GradScaler cpu_scaler({.growth_interval = 2}), gpu_scaler({.growth_interval = 2});
  std::vector<bool> cpu_stepped, gpu_stepped;
  const std::vector<Tensor> want = train(Device::cpu(), 6, 3, cpu_stepped, cpu_scaler);
  const std::vector<Tensor> got = train(Device::cuda(0), 6, 3, gpu_stepped, gpu_scaler);
  EXPECT_EQ(gpu_stepped, (std::vector<bool>{true, true, true, false, true, true}));
  EXPECT_EQ(gpu_stepped, cpu_stepped);
  EXPECT_EQ(gpu_scaler.get_scale(), cpu_scaler.get_scale());
  EXPECT_EQ(gpu_scaler.skipped_steps(), 1);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(all_close(got[i], want[i], 1e-5, 1e-4)) << "parameter " << i;
}

TEST_F(CudaGradScaler, CapturableScalerOnCudaMatchesTheHostScalerOnTheCpu) {
  // The inf comes at the first step, so the capturable SGD must skip its seeding step on
  // the device and seed at the next one; the decisions stay on the GPU throughout.
  GradScaler cpu_scaler({.growth_interval = 2}), gpu_scaler({.growth_interval = 2, .capturable = true});
  std::vector<bool> cpu_stepped, gpu_stepped;
  const std::vector<Tensor> want = train(Device::cpu(), 6, 0, cpu_stepped, cpu_scaler);
  const std::vector<Tensor> got = train(Device::cuda(0), 6, 0, gpu_stepped, gpu_scaler);
  EXPECT_EQ(cpu_stepped, (std::vector<bool>{false, true, true, true, true, true}));
  EXPECT_EQ(gpu_scaler.scale_tensor().device(), Device::cuda(0));
  EXPECT_EQ(gpu_scaler.get_scale(), cpu_scaler.get_scale());
  EXPECT_EQ(gpu_scaler.growth_tracker(), cpu_scaler.growth_tracker());
  EXPECT_EQ(gpu_scaler.skipped_steps(), 1);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(all_close(got[i], want[i], 1e-5, 1e-4)) << "parameter " << i;
}

TEST_F(CudaGradScaler, UpdateKernelMatchesItsCpuTwin) {
#if TANDEM_CUDA
  const Device gpu = Device::cuda(0);
  struct Case {
    float scale;
    int64_t tracker;
    std::vector<float> flags;
    std::vector<char> stepped;
  };
  const std::vector<Case> cases = {
      {65536.0f, 0, {0.0f}, {1}},                  // a finite step: the tracker counts
      {65536.0f, 1, {0.0f, 0.0f}, {1, 1}},         // the interval reached: growth
      {65536.0f, 1, {1.0f}, {1}},                  // inf: back off, reset
      {3.0e38f, 1, {0.0f}, {1}},                   // growth would overflow f32: kept
      {1024.0f, 1, {0.0f, 1.0f, 1.0f}, {1, 0, 1}},  // one unscaled-only optimizer is not a skipped step
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const Case& k = cases[c];
    std::vector<Tensor> dev_flags;
    std::vector<const float*> host_ptrs, dev_ptrs;
    for (const float& f : k.flags) {
      host_ptrs.push_back(&f);
      dev_flags.push_back(full({1}, f, {.dtype = DType::kF32, .device = gpu}));
      dev_ptrs.push_back(static_cast<const float*>(dev_flags.back().data_ptr()));
    }
    const bool* stepped = reinterpret_cast<const bool*>(k.stepped.data());
    const auto n = static_cast<int64_t>(k.flags.size());
    float host_scale = k.scale;
    int64_t host_tracker = k.tracker, host_skipped = 5;
    kernels::cpu::amp_update_scale(&host_scale, &host_tracker, &host_skipped, host_ptrs.data(), stepped, n, 2.0, 0.5, 2);
    Tensor scale = full({}, k.scale, {.dtype = DType::kF32, .device = gpu});
    Tensor tracker = full({}, static_cast<double>(k.tracker), {.dtype = DType::kI64, .device = gpu});
    Tensor skipped = full({}, 5.0, {.dtype = DType::kI64, .device = gpu});
    kernels::cuda::amp_update_scale(static_cast<float*>(scale.data_ptr()), static_cast<int64_t*>(tracker.data_ptr()),
                                    static_cast<int64_t*>(skipped.data_ptr()), dev_ptrs.data(), stepped, n, 2.0, 0.5,
                                    2, cuda_stream(gpu));
    EXPECT_EQ(scale.item(), static_cast<double>(host_scale));
    EXPECT_EQ(tracker.item(), static_cast<double>(host_tracker));
    EXPECT_EQ(skipped.item(), static_cast<double>(host_skipped));
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
}  // namespace tandem::optim
