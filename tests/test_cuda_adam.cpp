// GPU tests of the optim/ additions: the fused multi-tensor Adam / AdamW launch against
// the CPU kernel (f32 and f64, AMSGrad, many tensors, multi-chunk and oversized
// tensors, a parameter that misses steps, capturable counts, a step skipped on the
// device), the multi-tensor norm and scale of
// clip_grad_norm against the CPU path, and the host-side launch plans.
#include <cmath>
#include <functional>
#include <limits>

#include "engine/ops.h"
#include "kernels/cuda/adam.h"
#include "kernels/cuda/norm2.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "tandem/config.h"
#include "test_util.h"

using namespace tandem;
using tandem::testing::all_close;
using tandem::testing::random_tensor;

namespace {

/// Runs `steps` steps of Adam (AdamW when decoupled) on CPU and CUDA copies of the same
/// random parameters and gradients; compares parameters after every step and the state at the end.
void compare_cpu_cuda(const std::vector<Shape>& shapes, DType dtype, const optim::AdamOptions& o, bool decoupled,
                      int steps, double atol, double rtol) {
  auto make = [&](std::vector<Tensor> params) -> std::unique_ptr<optim::Optimizer> {
    if (!decoupled) return std::make_unique<optim::Adam>(params, o);
    return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = o.lr, .betas = o.betas, .eps = o.eps,
                                                                       .weight_decay = o.weight_decay,
                                                                       .amsgrad = o.amsgrad,
                                                                       .capturable = o.capturable});
  };
  tandem::testing::compare_optimizer_cpu_cuda(shapes, dtype, make, steps, atol, rtol, /*compare_scalars=*/true);
}

}  // namespace

TEST(CudaAdam, MatchesCpuF32AndF64) {
  TANDEM_REQUIRE_CUDA();
  std::vector<Shape> shapes{{7}, {33, 5}, {65536 * 3 + 11}, {1}, {256, 784}};
  for (bool decoupled : {false, true}) {
    for (bool amsgrad : {false, true}) {
      SCOPED_TRACE(std::string(decoupled ? "AdamW" : "Adam") + (amsgrad ? " amsgrad" : ""));
      optim::AdamOptions o{.lr = 0.01, .betas = {0.8, 0.95}, .eps = 1e-6, .weight_decay = 0.05, .amsgrad = amsgrad};
      compare_cpu_cuda(shapes, DType::kF64, o, decoupled, 4, 1e-12, 1e-11);
      compare_cpu_cuda(shapes, DType::kF32, o, decoupled, 4, 1e-5, 1e-4);
    }
  }
  compare_cpu_cuda(shapes, DType::kF32, {}, false, 3, 1e-5, 1e-4);  // defaults, no weight decay
}

TEST(CudaAdam, CapturableMatchesCpu) {
  // Step counts on the device: the kernel computes the bias corrections from them (f64
  // pow on the GPU) and a second launch increments them; many tensors span launches.
  TANDEM_REQUIRE_CUDA();
  std::vector<Shape> shapes{{7}, {33, 5}, {65536 * 3 + 11}, {1}};
  for (int i = 0; i < 40; ++i) shapes.push_back({(i * 53) % 300 + 1});
  for (bool decoupled : {false, true}) {
    optim::AdamOptions o{.lr = 0.01, .betas = {0.8, 0.95}, .eps = 1e-6, .weight_decay = 0.05, .amsgrad = decoupled,
                         .capturable = true};
    compare_cpu_cuda(shapes, DType::kF64, o, decoupled, 4, 1e-12, 1e-11);
    compare_cpu_cuda(shapes, DType::kF32, o, decoupled, 4, 1e-5, 1e-4);
  }
}

TEST(CudaAdam, StepUnlessSkipsOnTheDeviceStepCountsIncluded) {
  TANDEM_REQUIRE_CUDA();
  const Device gpu = Device::cuda();
  Tensor p = random_tensor({5000}, 1, DType::kF32, gpu).set_requires_grad(true);
  Tensor q = p.detach().cpu().set_requires_grad(true);
  const Tensor g = random_tensor({5000}, 2, DType::kF32, gpu);
  optim::AdamW opt({p}, {.lr = 0.01, .amsgrad = true, .capturable = true});
  optim::AdamW want({q}, {.lr = 0.01, .amsgrad = true});
  p.set_grad(g);
  q.set_grad(g.cpu());
  const Tensor before = p.cpu();
  opt.step_unless(full({1}, 1.0, {.dtype = DType::kF32, .device = gpu}));
  EXPECT_TRUE(all_close(p.cpu(), before, 0.0, 0.0)) << "a raised flag changes nothing";
  EXPECT_EQ(opt.param_step(0), 0);
  EXPECT_TRUE(opt.state_dict().tensors.empty()) << "no moments before a step that ran";
  for (int k = 0; k < 3; ++k) {
    opt.step_unless(zeros({1}, {.dtype = DType::kF32, .device = gpu}));
    want.step();
  }
  EXPECT_EQ(opt.param_step(0), 3);
  EXPECT_TRUE(all_close(p.cpu(), q.detach(), 1e-6, 1e-5));
}

TEST(CudaAdam, ManyTensorsAndOversizedTensor) {
  TANDEM_REQUIRE_CUDA();
  // 70 tensors (more than one argument struct holds) and one tensor of more chunks
  // than one launch's block map, so a tensor continues into the next launch.
  std::vector<Shape> shapes;
  for (int i = 0; i < 70; ++i) shapes.push_back({(i * 37) % 500 + 1});
  shapes.push_back({int64_t(kernels::cuda::kAdamMaxBlocks + 10) * kernels::cuda::kAdamChunkSize + 5});
  compare_cpu_cuda(shapes, DType::kF32, {.lr = 1e-3, .weight_decay = 1e-4, .amsgrad = true}, true, 2, 1e-5, 1e-4);
}

TEST(CudaAdam, ParamGroupsWithDifferentLrShareALaunch) {
  TANDEM_REQUIRE_CUDA();
  Tensor a = random_tensor({100}, 1, DType::kF64, Device::cuda()).set_requires_grad(true);
  Tensor b = random_tensor({100}, 2, DType::kF64, Device::cuda()).set_requires_grad(true);
  Tensor a0 = a.cpu(), b0 = b.cpu();
  Tensor g = random_tensor({100}, 3, DType::kF64, Device::cuda());
  a.set_grad(g);
  b.set_grad(g);
  optim::AdamW opt(std::vector<optim::ParamGroup>{{.params = {a}, .lr = 0.1, .weight_decay = 0.0},
                                                  {.params = {b}, .lr = 0.3, .weight_decay = 0.5}},
                   {.eps = 0.0});
  opt.step();
  // First step, no eps: p = p·(1 - lr·wd) - lr·sign(g).
  Tensor gc = g.cpu();
  Tensor sign = gc / sqrt(gc * gc);
  EXPECT_TRUE(all_close(a.cpu(), a0 - 0.1 * sign, 1e-12, 1e-12));
  EXPECT_TRUE(all_close(b.cpu(), b0 * (1 - 0.3 * 0.5) - 0.3 * sign, 1e-12, 1e-12));
}

TEST(CudaAdam, LaunchPlan) {
#if TANDEM_CUDA
  // Host-side packing only: runs without a GPU in a CUDA build.
  using kernels::cuda::AdamTensorRef;
  using kernels::cuda::kAdamChunkSize;
  auto launches = [](std::vector<int64_t> sizes) {
    std::vector<AdamTensorRef> refs;
    for (int64_t n : sizes) refs.push_back({.numel = n});
    return kernels::cuda::adam_multi_tensor_launches(refs.data(), static_cast<int64_t>(refs.size()));
  };
  EXPECT_EQ(launches({}), 0);
  EXPECT_EQ(launches({0, 0}), 0);
  EXPECT_EQ(launches({10, 20, 30, 40}), 1);  // an MLP's four tensors: one launch
  EXPECT_EQ(launches(std::vector<int64_t>(32, 5)), 1);
  EXPECT_EQ(launches(std::vector<int64_t>(33, 5)), 2);
  EXPECT_EQ(launches({320 * kAdamChunkSize}), 1);
  EXPECT_EQ(launches({320 * kAdamChunkSize + 1}), 2);
  // ResNet-18's 62 parameter tensors (11.2M elements): 3 launches, not 62.
  std::vector<int64_t> resnet(62, 11'200'000 / 62);
  EXPECT_LE(launches(resnet), 3);

  std::vector<int64_t> sizes(200, 5);
  EXPECT_EQ(kernels::cuda::multi_tensor_norm_launches(sizes.data(), 128), 2);  // one partials launch + reduction
  EXPECT_EQ(kernels::cuda::multi_tensor_norm_launches(sizes.data(), 129), 3);
  EXPECT_EQ(kernels::cuda::multi_tensor_norm_workspace(sizes.data(), 200), 201);
  std::vector<int64_t> none{0};
  EXPECT_EQ(kernels::cuda::multi_tensor_norm_launches(none.data(), 1), 0);
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

namespace {

/// Random parameters of `shapes` (parameter i in dtype_of(i)) with random gradients, on
/// the CPU and as copies on the GPU.
void cpu_and_cuda_params(const std::vector<Shape>& shapes, const std::function<DType(size_t)>& dtype_of,
                         std::vector<Tensor>& cpu, std::vector<Tensor>& gpu) {
  for (size_t i = 0; i < shapes.size(); ++i) {
    const DType dtype = dtype_of(i);
    Tensor g = random_tensor(shapes[i], 10 + i, dtype);
    Tensor pc = random_tensor(shapes[i], 5000 + i, dtype).set_requires_grad(true);
    Tensor pg = pc.to(Device::cuda()).detach().set_requires_grad(true);
    pc.set_grad(g.clone());
    pg.set_grad(g.to(Device::cuda()));
    cpu.push_back(pc);
    gpu.push_back(pg);
  }
}

}  // namespace

TEST(CudaClipGradNorm, MatchesCpuAcrossDtypesAndNorms) {
  TANDEM_REQUIRE_CUDA();
  set_poison_allocations(true);
  const double inf = std::numeric_limits<double>::infinity();
  // 150 tensors (more than one argument struct) plus a multi-launch tensor.
  std::vector<Shape> shapes;
  for (int i = 0; i < 150; ++i) shapes.push_back({(i * 53) % 900 + 1});
  shapes.push_back({int64_t(kernels::cuda::kNormMaxBlocks + 3) * 65536 + 17});
  for (DType dtype : {DType::kF64, DType::kF32, DType::kBF16, DType::kF16}) {
    for (double p : {2.0, inf, 3.0, 1.0}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " p=" + std::to_string(p));
      std::vector<Tensor> cpu_params, gpu_params;
      cpu_and_cuda_params(shapes, [&](size_t) { return dtype; }, cpu_params, gpu_params);
      const double want = optim::clip_grad_norm(cpu_params, 1e30, p);  // no clipping
      const double got = optim::clip_grad_norm(gpu_params, 1e30, p);
      EXPECT_NEAR(got, want, 1e-10 * want);  // both accumulate in f64; only the order differs
      const double max_norm = want / 3;
      const double cpu_clip = optim::clip_grad_norm(cpu_params, max_norm, p);
      const double gpu_clip = optim::clip_grad_norm(gpu_params, max_norm, p);
      EXPECT_NEAR(gpu_clip, cpu_clip, 1e-10 * want);
      const double tol = dtype == DType::kF64 ? 1e-14 : dtype == DType::kF32 ? 1e-6 : 1e-2;
      for (size_t i = 0; i < shapes.size(); ++i) {
        ASSERT_TRUE(all_close(gpu_params[i].grad().cpu(), cpu_params[i].grad(), tol, tol)) << "tensor " << i;
      }
    }
  }
  set_poison_allocations(false);
}

TEST(CudaClipGradNorm, NanAndMixedDevices) {
  TANDEM_REQUIRE_CUDA();
  Tensor p = random_tensor({1000}, 1, DType::kF32, Device::cuda()).set_requires_grad(true);
  std::vector<double> values(1000, 0.5);
  values[777] = std::nan("");
  p.set_grad(Tensor::from_vector(values, {1000}).to(DType::kF32).to(Device::cuda()));
  EXPECT_TRUE(std::isnan(optim::clip_grad_norm({p}, 1e9)));
  p.set_grad(Tensor::from_vector(values, {1000}).to(DType::kF32).to(Device::cuda()));
  EXPECT_TRUE(std::isnan(optim::clip_grad_norm({p}, 1e9, std::numeric_limits<double>::infinity())));
  EXPECT_THROW(optim::clip_grad_norm({p}, 1.0, 2.0, true), std::runtime_error);
  // A CPU and a CUDA gradient: one global norm over both.
  Tensor c = Tensor::from_vector(std::vector<double>{3.0}, {1}).set_requires_grad(true);
  c.set_grad(Tensor::from_vector(std::vector<double>{3.0}, {1}));
  Tensor d = Tensor::from_vector(std::vector<double>{4.0}, {1}, Device::cuda()).set_requires_grad(true);
  d.set_grad(Tensor::from_vector(std::vector<double>{4.0}, {1}, Device::cuda()));
  EXPECT_DOUBLE_EQ(optim::clip_grad_norm({c, d}, 1.0), 5.0);
  EXPECT_NEAR(c.grad().item(), 3.0 / (5.0 + 1e-6), 1e-15);
  EXPECT_NEAR(d.grad().item(), 4.0 / (5.0 + 1e-6), 1e-15);
}

TEST(CudaClipGradNorm, OnDeviceMatchesTheHostPathAndReadsNothingBack) {
  TANDEM_REQUIRE_CUDA();
  set_poison_allocations(true);
  const double inf = std::numeric_limits<double>::infinity();
  // Two dtype groups on the GPU (f32 and bf16), several launches' worth of tensors.
  std::vector<Shape> shapes;
  for (int i = 0; i < 150; ++i) shapes.push_back({(i * 53) % 900 + 1});
  for (double p : {2.0, inf, 3.0}) {
    for (double fraction : {3.0, 1.0 / 3.0}) {
      SCOPED_TRACE("p=" + std::to_string(p) + " max_norm = norm * " + std::to_string(fraction));
      std::vector<Tensor> host, device;
      cpu_and_cuda_params(shapes, [](size_t i) { return i % 3 == 0 ? DType::kBF16 : DType::kF32; }, host, device);
      std::vector<Tensor> probe;  // the norm, measured on copies
      for (const Tensor& t : host) {
        probe.push_back(t.detach().clone().set_requires_grad(true));
        probe.back().set_grad(t.grad().clone());
      }
      const double max_norm = optim::clip_grad_norm(probe, 1e30, p) * fraction;
      const double want = optim::clip_grad_norm(host, max_norm, p);
      const Tensor got = optim::clip_grad_norm_on_device(device, max_norm, p);
      EXPECT_EQ(got.device(), Device::cuda());
      EXPECT_NEAR(got.item(), want, 1e-10 * want);  // f64 accumulation in another order
      for (size_t i = 0; i < shapes.size(); ++i) {
        const double tol = device[i].dtype() == DType::kBF16 ? 1e-2 : 1e-6;
        ASSERT_TRUE(all_close(device[i].grad().cpu(), host[i].grad(), tol, tol)) << "tensor " << i;
      }
    }
  }
  // Gradients on two devices: refused (the norm would need the host).
  Tensor c = Tensor::from_vector(std::vector<double>{3.0}, {1}).set_requires_grad(true);
  c.set_grad(Tensor::from_vector(std::vector<double>{3.0}, {1}));
  Tensor d = Tensor::from_vector(std::vector<double>{4.0}, {1}, Device::cuda()).set_requires_grad(true);
  d.set_grad(Tensor::from_vector(std::vector<double>{4.0}, {1}, Device::cuda()));
  tandem::testing::expect_invalid([&] { (void)optim::clip_grad_norm_on_device({c, d}, 1.0); },
                                  {"[clip_grad_norm_on_device] expected every gradient on one device", "cuda:0"});
}
