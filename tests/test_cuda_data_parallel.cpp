// GPU tests of comm::DataParallel: one GPU listed twice (and three times) trains the
// MLP and the CNN exactly as the plain model on the GPU and on the CPU; outputs can be
// gathered to the CPU; with two GPUs, replicas on another device copy parameters
// there and back; the module must start on devices[0]. Skips without a CUDA device.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "comm/data_parallel.h"
#include "data_parallel_util.h"
#include "engine/cuda/runtime.h"
#include "engine/storage.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::testing;
using comm::DataParallel;

namespace {

const Device kGpu = Device::cuda(0);

class CudaDataParallel : public ::testing::Test {
 protected:
  void SetUp() override { set_poison_allocations(true); }
  void TearDown() override { set_poison_allocations(false); }
};

}  // namespace

TEST_F(CudaDataParallel, OneGpuListedTwiceMatchesPlainModelOnTheGpu) {
  TANDEM_REQUIRE_CUDA();
  for (int n : {2, 3}) {
    SCOPED_TRACE("devices " + std::to_string(n));
    std::vector<Device> devices(static_cast<size_t>(n), kGpu);
    expect_data_parallel_matches_plain(
        {.make = make_test_mlp, .sample_shape = {12}, .batch = 11, .devices = devices, .reference_device = kGpu});
    expect_data_parallel_matches_plain({.make = make_test_cnn, .sample_shape = {1, 8, 8}, .batch = 11,
                                        .devices = devices, .reference_device = kGpu, .per_chunk = true});
  }
}

TEST_F(CudaDataParallel, OneGpuListedTwiceMatchesPlainModelOnTheCpu) {
  TANDEM_REQUIRE_CUDA();
  const std::vector<Device> devices{kGpu, kGpu};
  expect_data_parallel_matches_plain({.make = make_test_mlp, .sample_shape = {12}, .batch = 9, .devices = devices});
  expect_data_parallel_matches_plain(
      {.make = make_test_cnn, .sample_shape = {1, 8, 8}, .batch = 9, .devices = devices, .per_chunk = true});
}

TEST_F(CudaDataParallel, Float32OnOneGpuListedTwice) {
  TANDEM_REQUIRE_CUDA();
  // f32 on the GPU sums in another order than on the CPU: a looser tolerance.
  expect_data_parallel_matches_plain({.make = make_test_cnn, .sample_shape = {1, 8, 8}, .batch = 8,
                                      .devices = {kGpu, kGpu}, .reference_device = kGpu, .per_chunk = true,
                                      .dtype = DType::kF32, .tol = 1e-4, .atol = 1e-6});
}

TEST_F(CudaDataParallel, TwoGpusMatchPlainModel) {
  TANDEM_REQUIRE_CUDA();
  if (cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices, found " << cuda::device_count();
  const std::vector<Device> devices{Device::cuda(0), Device::cuda(1)};
  expect_data_parallel_matches_plain(
      {.make = make_test_mlp, .sample_shape = {12}, .batch = 10, .devices = devices, .reference_device = kGpu});
  expect_data_parallel_matches_plain({.make = make_test_cnn, .sample_shape = {1, 8, 8}, .batch = 10,
                                      .devices = devices, .reference_device = kGpu, .per_chunk = true});
}

TEST_F(CudaDataParallel, GathersToTheCpu) {
  TANDEM_REQUIRE_CUDA();
  manual_seed(4);
  auto ref = make_test_mlp();
  ref->to(DType::kF64);
  auto model = ref->clone();
  model->to(kGpu);
  DataParallel dp(model, {kGpu, kGpu}, Device::cpu());
  Tensor x = random_tensor({6, 12}, 30);
  Tensor y = dp.forward(x.to(kGpu));
  EXPECT_TRUE(y.device() == Device::cpu());
  Tensor want = ref->forward(x);
  EXPECT_TRUE(relatively_close(y, want, 1e-10, "output"));
  y.sum().backward();
  want.sum().backward();
  EXPECT_TRUE(relatively_close(model->parameters()[0].grad().cpu(), ref->parameters()[0].grad(), 1e-10, "grad"));
}

TEST_F(CudaDataParallel, ModuleMustStartOnTheFirstDevice) {
  TANDEM_REQUIRE_CUDA();
  expect_invalid([] { DataParallel(make_test_mlp(), {kGpu, kGpu}); },
                 {"[DataParallel]", "devices[0] = cuda:0", "\"1.weight\" on cpu"});
  auto model = make_test_mlp();
  model->to(kGpu);
  DataParallel dp(model, {kGpu, kGpu});
  model->to(Device::cpu());
  expect_invalid([&] { dp.forward(random_tensor({4, 12}, 31, DType::kF32)); }, {"devices[0] = cuda:0", "on cpu"});
}
