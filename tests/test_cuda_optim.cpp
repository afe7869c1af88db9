// GPU tests of optim/: the fused multi-tensor SGD launch against the CPU kernel
// (f32 and f64, many tensors, multi-chunk and oversized tensors, capturable counts),
// its launch plan, a step skipped on the device, device-mismatch errors; plus the
// DataLoader's pinned, asynchronous copies to CUDA.
#include <memory>
#include <stdexcept>

#include "data/dataloader.h"
#include "engine/ops.h"
#include "kernels/cuda/sgd.h"
#include "optim/sgd.h"
#include "tandem/config.h"
#include "test_util.h"

using namespace tandem;
using tandem::testing::all_close;
using tandem::testing::random_tensor;

namespace {

/// Runs `steps` SGD steps on CPU and CUDA copies of the same random parameters and
/// gradients and compares parameters after every step and momentum buffers at the end.
void compare_cpu_cuda(const std::vector<Shape>& shapes, DType dtype, const optim::SGDOptions& o, int steps,
                      double atol, double rtol) {
  auto make = [&](std::vector<Tensor> params) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::SGD>(params, o);
  };
  tandem::testing::compare_optimizer_cpu_cuda(shapes, dtype, make, steps, atol, rtol, /*compare_scalars=*/false);
}

}  // namespace

TEST(CudaSGD, MatchesCpuF32AndF64) {
  TANDEM_REQUIRE_CUDA();
  std::vector<Shape> shapes{{7}, {33, 5}, {65536 * 3 + 11}, {1}, {256, 784}};
  for (bool nesterov : {false, true}) {
    optim::SGDOptions o{.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4, .nesterov = nesterov};
    compare_cpu_cuda(shapes, DType::kF64, o, 3, 1e-13, 1e-12);
    compare_cpu_cuda(shapes, DType::kF32, o, 3, 1e-6, 1e-5);
  }
  compare_cpu_cuda(shapes, DType::kF32, {.lr = 0.1}, 2, 1e-6, 1e-5);
  compare_cpu_cuda(shapes, DType::kF32, {.lr = 0.1, .momentum = 0.5, .dampening = 0.3}, 3, 1e-6, 1e-5);
}

TEST(CudaSGD, CapturableMatchesCpu) {
  TANDEM_REQUIRE_CUDA();
  // The first step decided from device counts; 100 tensors need several of the smaller
  // capturable argument structs.
  std::vector<Shape> shapes{{7}, {33, 5}, {65536 * 3 + 11}};
  for (int i = 0; i < 100; ++i) shapes.push_back({(i * 37) % 500 + 1});
  const optim::SGDOptions o{.lr = 0.05, .momentum = 0.9, .dampening = 0.2, .weight_decay = 5e-4, .capturable = true};
  compare_cpu_cuda(shapes, DType::kF32, o, 3, 1e-6, 1e-5);
  compare_cpu_cuda(shapes, DType::kF64, o, 3, 1e-13, 1e-12);
}

TEST(CudaSGD, StepUnlessSkipsOnTheDevice) {
  TANDEM_REQUIRE_CUDA();
  const Device gpu = Device::cuda();
  Tensor p = random_tensor({1000}, 1, DType::kF32, gpu).set_requires_grad(true);
  p.set_grad(random_tensor({1000}, 2, DType::kF32, gpu));
  optim::SGD opt({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.5, .capturable = true});
  const Tensor before = p.cpu();
  opt.step_unless(full({1}, 1.0, {.dtype = DType::kF32, .device = gpu}));
  EXPECT_TRUE(all_close(p.cpu(), before, 0.0, 0.0)) << "a raised flag changes nothing";
  EXPECT_TRUE(opt.state_dict().tensors.empty()) << "the skipped first step left no momentum";
  opt.step_unless(zeros({1}, {.dtype = DType::kF32, .device = gpu}));
  // The first step that runs seeds the buffer with the gradient, undamped.
  EXPECT_TRUE(all_close(p.cpu(), before - 0.1 * p.grad().cpu(), 1e-6, 1e-6));
  EXPECT_TRUE(all_close(opt.state_dict().tensors.at("momentum_buffer.0").cpu(), p.grad().cpu(), 0.0, 0.0));
  try {
    opt.step_unless(zeros({1}));
    FAIL() << "expected a device mismatch error";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("[SGD::step_unless] expected found_inf on the device of the gradients (cuda:0), got cpu"),
              std::string::npos)
        << msg;
  }
}

TEST(CudaSGD, ManyTensorsAndOversizedTensor) {
  TANDEM_REQUIRE_CUDA();
  // 100 tensors (more than one argument struct holds) and one tensor of more chunks
  // than one launch's block map, so a tensor continues into the next launch.
  std::vector<Shape> shapes;
  for (int i = 0; i < 100; ++i) shapes.push_back({(i * 37) % 500 + 1});
  shapes.push_back({int64_t(kernels::cuda::kSGDMaxBlocks + 10) * kernels::cuda::kSGDChunkSize + 5});
  compare_cpu_cuda(shapes, DType::kF32, {.lr = 0.01, .momentum = 0.9, .weight_decay = 1e-4}, 2, 1e-6, 1e-5);
}

TEST(CudaSGD, ParamGroupsWithDifferentLrShareALaunch) {
  TANDEM_REQUIRE_CUDA();
  Tensor a = random_tensor({100}, 1, DType::kF32, Device::cuda()).set_requires_grad(true);
  Tensor b = random_tensor({100}, 2, DType::kF32, Device::cuda()).set_requires_grad(true);
  Tensor a0 = a.cpu(), b0 = b.cpu();
  Tensor g = random_tensor({100}, 3, DType::kF32, Device::cuda());
  a.set_grad(g);
  b.set_grad(g);
  optim::SGD opt(std::vector<optim::ParamGroup>{{.params = {a}, .lr = 0.1, .weight_decay = std::nullopt},
                                                {.params = {b}, .lr = 0.3, .weight_decay = 0.01}},
                 {.lr = 1.0});
  opt.step();
  Tensor gc = g.cpu();
  EXPECT_TRUE(all_close(a.cpu(), a0 - 0.1 * gc, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(b.cpu(), b0 - 0.3 * (gc + 0.01 * b0), 1e-6, 1e-5));
}

TEST(CudaSGD, GradientOnAnotherDeviceIsNamed) {
  TANDEM_REQUIRE_CUDA();
  Tensor p = random_tensor({4}, 1, DType::kF32, Device::cuda()).set_requires_grad(true);
  optim::SGD opt({p}, {.lr = 0.1});
  try {
    // Either set_grad or step may refuse; both must name the two devices.
    p.set_grad(random_tensor({4}, 2, DType::kF32));
    opt.step();
    FAIL() << "expected a device mismatch error";
  } catch (const std::exception& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("cuda:0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cpu"), std::string::npos) << msg;
  }
}

TEST(CudaSGD, LaunchPlan) {
#if TANDEM_CUDA
  // Host-side packing only: runs without a GPU in a CUDA build.
  using kernels::cuda::SGDTensorRef;
  using kernels::cuda::kSGDChunkSize;
  using kernels::cuda::sgd_multi_tensor_launches;
  auto refs = [](std::vector<int64_t> sizes) {
    std::vector<SGDTensorRef> out;
    for (int64_t n : sizes) out.push_back({.numel = n});
    return out;
  };
  auto launches = [](const std::vector<SGDTensorRef>& r) {
    return sgd_multi_tensor_launches(r.data(), static_cast<int64_t>(r.size()));
  };
  EXPECT_EQ(launches(refs({})), 0);
  EXPECT_EQ(launches(refs({0, 0})), 0);
  EXPECT_EQ(launches(refs({10, 20, 30})), 1);  // an MLP's four tensors: one launch
  EXPECT_EQ(launches(refs(std::vector<int64_t>(48, 5))), 1);
  EXPECT_EQ(launches(refs(std::vector<int64_t>(49, 5))), 2);
  EXPECT_EQ(launches(refs(std::vector<int64_t>(96, 5))), 2);
  EXPECT_EQ(launches(refs({320 * kSGDChunkSize})), 1);
  EXPECT_EQ(launches(refs({320 * kSGDChunkSize + 1})), 2);
  EXPECT_EQ(launches(refs({200 * kSGDChunkSize, 200 * kSGDChunkSize})), 2);
  // With lr and step-count addresses (capturable) a struct holds fewer tensors.
  const double count = 0.0, lr = 0.1;
  auto counted = [&](std::vector<int64_t> sizes) {
    std::vector<SGDTensorRef> out = refs(std::move(sizes));
    for (SGDTensorRef& r : out) {
      r.step_count = &count;
      r.lr_ptr = &lr;
    }
    return out;
  };
  EXPECT_EQ(launches(counted(std::vector<int64_t>(kernels::cuda::kSGDCapturableMaxTensors, 5))), 1);
  EXPECT_EQ(launches(counted(std::vector<int64_t>(kernels::cuda::kSGDCapturableMaxTensors + 1, 5))), 2);
  std::vector<SGDTensorRef> mixed = counted({5, 5});
  mixed[1].lr_ptr = nullptr;
  EXPECT_THROW(launches(mixed), std::logic_error);
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

// The DataLoader's CUDA path lives here, with the other GPU tests of this area's owner.
TEST(CudaDataLoader, DeliversBatchesOnTheDevice) {
  TANDEM_REQUIRE_CUDA();
  const int64_t n = 50;
  Tensor x = random_tensor({n, 3, 4}, 7, DType::kF32);
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = i;
  auto ds = std::make_shared<data::TensorDataset>(x, Tensor::from_vector(labels, {n}));
  data::DataLoader cpu_loader(ds, {.batch_size = 8, .seed = 3});
  data::DataLoader gpu_loader(ds, {.batch_size = 8, .seed = 3, .device = Device::cuda()});
  std::vector<data::Batch> want;
  for (data::Batch& b : cpu_loader) want.push_back(b);
  size_t k = 0;
  for (data::Batch& b : gpu_loader) {
    ASSERT_LT(k, want.size());
    EXPECT_TRUE(b.input.is_cuda());
    EXPECT_TRUE(b.target.is_cuda());
    EXPECT_TRUE(all_close(b.input.cpu(), want[k].input, 0, 0));
    EXPECT_EQ(b.target.cpu().to_vector<int64_t>(), want[k].target.to_vector<int64_t>());
    ++k;
  }
  EXPECT_EQ(k, want.size());
}
