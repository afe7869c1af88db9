// DistributedDataParallel on the GPU: NCCL at world size 1 and the local backend with
// two ranks sharing one GPU, each matching one process trained on the whole batch
// (on the GPU, and on the CPU within f32 tolerance); and a DDP training step captured in
// a CUDA graph over NCCL.
#include <memory>
#include <string>
#include <vector>

#include "comm/ddp.h"
#include "comm/launch.h"
#include "comm/local.h"
#include "comm/store.h"
#include "engine/cuda/graph.h"
#include "engine/cuda/runtime.h"
#include "optim/sgd.h"
#include "ddp_test_support.h"
#include "tandem/config.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using namespace ddp_test;
using namespace std::chrono_literals;

TEST(CudaDDP, LocalBackendTwoRanksOnOneGpuMatchOneProcess) {
  TANDEM_REQUIRE_CUDA();
  for (Kind k : {Kind::kMLP, Kind::kCNN, Kind::kUnused}) {
    SCOPED_TRACE(kind_name(k));
    const int world = 2;
    auto want_gpu = reference(k, world, k == Kind::kCNN, Device::cuda(0));
    auto want_cpu = reference(k, world, k == Kind::kCNN);
    std::vector<std::shared_ptr<nn::Module>> models;
    for (int r = 0; r < world; ++r) models.push_back(make_model(k, rank_seed(r)));
    auto groups = make_local_group(world);
    std::vector<std::vector<std::pair<std::string, Tensor>>> got(world);
    tandem::testing::run_ranks(world, [&](int r) {
      got[static_cast<size_t>(r)] = ddp_train(k, models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)],
                                              {.first_bucket_cap_mb = 0.001, .find_unused_parameters = k == Kind::kUnused},
                                              Device::cuda(0));
    });
    // cuDNN picks its convolution algorithms per shape (batch B per rank against 2B),
    // and they round differently from each other and from the CPU (test_cuda_conv
    // allows 1e-4..1e-3): 1e-4 for the CNN after 5 steps. A DDP mistake (a missing
    // average, a stale bucket) is off by orders of magnitude more.
    const double tol = k == Kind::kCNN ? 1e-4 : kTol;
    for (int r = 0; r < world; ++r) {
      expect_same_state(got[static_cast<size_t>(r)], want_gpu, "rank " + std::to_string(r) + " vs GPU reference", tol);
      expect_same_state(got[static_cast<size_t>(r)], want_cpu, "rank " + std::to_string(r) + " vs CPU reference", tol);
    }
  }
}

// At world size 1 DDP issues no collective (as PyTorch's does not), so this checks
// DDP's CUDA path over an NCCL group; NCCL's own stream ordering is tested in
// test_cuda_comm_nccl, and DDP's on the GPU with two local ranks above.
TEST(CudaDDP, NcclWorldSizeOneEqualsThePlainModel) {
  TANDEM_REQUIRE_CUDA();
  if (!TANDEM_NCCL) GTEST_SKIP() << "built without NCCL";
  auto pg = make_nccl_group(make_hash_store(30s), 0, 1);
  for (Kind k : {Kind::kMLP, Kind::kCNN}) {
    SCOPED_TRACE(kind_name(k));
    auto want = reference(k, 1, false, Device::cuda(0));
    auto got = ddp_train(k, make_model(k, 7), pg, {.first_bucket_cap_mb = 0.001}, Device::cuda(0));
    expect_same_state(got, want, "nccl world size 1");
  }
}

TEST(CudaDDP, NcclTrainingStepCapturedInACudaGraphMatchesEagerSteps) {
  // The whole DDP step (forward, backward with the reducer's hooks, SGD) captured after
  // two eager iterations and replayed for the remaining steps: the same parameters as
  // the plain model trained eagerly. A capture before the buckets are rebuilt is refused.
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  if (!TANDEM_NCCL) GTEST_SKIP() << "built without NCCL";
  const Device gpu = Device::cuda(0);
  auto pg = make_nccl_group(make_hash_store(30s), 0, 1);
  auto want = reference(Kind::kMLP, 1, false, gpu);
  auto model = make_model(Kind::kMLP, 7);
  model->to(gpu);
  DistributedDataParallel ddp(model, pg, {.first_bucket_cap_mb = 0.001});
  optim::SGDOptions options = sgd_options();
  options.capturable = true;  // the first step is decided on the device
  optim::SGD opt(ddp.parameters(), options);
  auto step = [&](const Batch& b) {
    opt.zero_grad();
    Tensor loss = loss_of(Kind::kMLP, ddp.forward(b.x), b.y);
    loss.backward();
    opt.step();
  };
  {
    Batch b = global_batch(Kind::kMLP, 0, kBatch, gpu);
    cuda::synchronize(0);
    cuda::Graph early;
    early.capture_begin();
    const Tensor keep = b.x + 1.0;  // the capture holds some work
    tandem::testing::expect_invalid([&] { (void)ddp.forward(b.x); },
                                    {"[DistributedDataParallel] expected two synchronised iterations run eagerly",
                                     "got a capture at iteration 1"});
    early.capture_end();
  }
  for (int s = 0; s < 2; ++s) step(global_batch(Kind::kMLP, s, kBatch, gpu));
  ASSERT_TRUE(ddp.buckets_rebuilt());
  Batch static_batch = global_batch(Kind::kMLP, 2, kBatch, gpu);
  opt.zero_grad();
  cuda::synchronize(0);
  cuda::Graph graph;
  graph.capture_begin();
  step(static_batch);
  graph.capture_end();
  for (int s = 2; s < kSteps; ++s) {
    Batch b = global_batch(Kind::kMLP, s, kBatch, gpu);
    static_batch.x.copy_(b.x);
    static_batch.y.copy_(b.y);
    graph.replay();
  }
  expect_same_state(snapshot(*model), want, "DDP step replayed from a CUDA graph");
}

TEST(CudaDDP, GlooRejectsCudaParameters) {
  TANDEM_REQUIRE_CUDA();
  if (!TANDEM_GLOO) GTEST_SKIP() << "built without gloo";
  auto pg = make_gloo_group(make_hash_store(5s), 0, 1, {.timeout = 5s});
  auto model = make_model(Kind::kMLP, 1);
  model->to(Device::cuda(0));
  tandem::testing::expect_invalid([&] { DistributedDataParallel ddp(model, pg); }, {"gloo", "CPU", "cuda"});
}

}  // namespace
}  // namespace tandem::comm
