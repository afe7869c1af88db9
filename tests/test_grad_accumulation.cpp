// Gradient accumulation, the pattern of docs/MIXED_PRECISION.md: K micro-batches with
// the loss divided by K and one optimizer (and LR schedule) step per K equal one batch
// K times larger (f32, relative 1e-5), for an MLP and CNNs, without DDP and under DDP
// (2 local ranks, micro-batches 1..K-1 inside no_sync()), with and without a GradScaler.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/ddp.h"
#include "comm/local.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/flatten.h"
#include "layers/linear.h"
#include "layers/models/cnn.h"
#include "layers/models/mlp.h"
#include "layers/pool.h"
#include "layers/sequential.h"
#include "optim/grad_scaler.h"
#include "optim/schedule.h"
#include "optim/sgd.h"
#include "ddp_test_support.h"
#include "test_util.h"

namespace tandem::optim {
namespace {

namespace ddp = comm::ddp_test;

constexpr int kK = 4;              // micro-batches per optimizer step
constexpr int64_t kMicro = 4;      // samples per micro-batch (per rank)
constexpr int kOptimizerSteps = 3;

enum class Model {
  kMLP,
  kCNN,        // models::CNN with its batch norms in eval mode (see below)
  kConvStack,  // conv-relu-pool-linear, no batch norm, in training mode
};

const char* model_name(Model m) { return m == Model::kMLP ? "MLP" : m == Model::kCNN ? "CNN" : "ConvStack"; }

std::shared_ptr<nn::Module> make_model(Model m, uint64_t seed) {
  manual_seed(seed);
  if (m == Model::kMLP) return ddp::make_model(ddp::Kind::kMLP, seed);
  if (m == Model::kCNN) {
    // Batch norm in training mode normalises each micro-batch by its own statistics, so
    // accumulation is not equivalent to one large batch (in PyTorch neither). In eval
    // mode it is a fixed affine map and the equivalence holds for every parameter.
    auto cnn = std::make_shared<nn::models::CNN>(
        nn::models::CNNOptions{.in_channels = 1, .num_classes = 5, .image_size = 8, .hidden = 16});
    cnn->eval();
    return cnn;
  }
  auto seq = std::make_shared<nn::Sequential>();
  seq->push_back(std::make_shared<nn::Conv2d>(1, 6, 3, Conv2dOptions{.stride = 1, .padding = 1}));
  seq->push_back(std::make_shared<nn::ReLU>());
  seq->push_back(std::make_shared<nn::MaxPool2d>(2));
  seq->push_back(std::make_shared<nn::Flatten>());
  seq->push_back(std::make_shared<nn::Linear>(6 * 4 * 4, 5));
  return seq;
}

ddp::Kind data_kind(Model m) { return m == Model::kMLP ? ddp::Kind::kMLP : ddp::Kind::kCNN; }

/// One process, one optimizer step per batch of `batch` samples, LR schedule per step.
std::vector<std::pair<std::string, Tensor>> one_large_batch(Model m, int64_t batch) {
  auto model = make_model(m, 7);
  SGD opt(model->parameters(), ddp::sgd_options());
  StepLR schedule(opt, /*step_size=*/2, /*gamma=*/0.5);
  for (int s = 0; s < kOptimizerSteps; ++s) {
    auto b = ddp::global_batch(data_kind(m), s, batch);
    opt.zero_grad();
    cross_entropy(model->forward(b.x), b.y).backward();
    opt.step();
    schedule.step();
  }
  return ddp::snapshot(*model);
}

/// The accumulation loop on one rank: rank `rank` of `world` takes rows
/// [rank·K·B, (rank+1)·K·B) of each global batch as K micro-batches. With `ddp_model`,
/// micro-batches 1..K-1 run inside no_sync(); with `scaler`, losses are scaled and the
/// scaler steps and updates once per optimizer step.
std::vector<std::pair<std::string, Tensor>> accumulate(Model m, nn::Module& model, nn::Module& forward_module,
                                                       comm::DistributedDataParallel* ddp_model, int rank, int world,
                                                       GradScaler* scaler) {
  SGD opt(forward_module.parameters(), ddp::sgd_options());
  StepLR schedule(opt, /*step_size=*/2, /*gamma=*/0.5);
  for (int s = 0; s < kOptimizerSteps; ++s) {
    auto b = ddp::global_batch(data_kind(m), s, world * kK * kMicro);
    opt.zero_grad();
    for (int micro = 0; micro < kK; ++micro) {
      const int64_t start = (rank * kK + micro) * kMicro;
      auto run = [&] {
        Tensor loss = cross_entropy(forward_module.forward(ddp::rows(b.x, start, kMicro)), ddp::rows(b.y, start, kMicro));
        loss = mul(loss, 1.0 / kK);  // the mean over K micro-batches, as over one large batch
        (scaler ? scaler->scale(loss) : loss).backward();
      };
      // Only the last micro-batch's backward all-reduces, the accumulated sum.
      if (ddp_model && micro < kK - 1) {
        auto no_sync = ddp_model->no_sync();
        run();
      } else {
        run();
      }
    }
    if (scaler) {
      EXPECT_TRUE(scaler->step(opt));
      scaler->update();
    } else {
      opt.step();
    }
    schedule.step();  // per optimizer step, not per micro-batch
  }
  EXPECT_DOUBLE_EQ(opt.lr(), ddp::sgd_options().lr * 0.5) << "StepLR after 3 optimizer steps";
  return ddp::snapshot(model);
}

struct Case {
  Model model;
  bool scaler;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return std::string(model_name(info.param.model)) + (info.param.scaler ? "WithGradScaler" : "");
}

class GradAccumulation : public ::testing::TestWithParam<Case> {};

TEST_P(GradAccumulation, KMicroBatchesEqualOneBatchKTimesLarger) {
  const Case c = GetParam();
  const auto want = one_large_batch(c.model, kK * kMicro);
  auto model = make_model(c.model, 7);
  std::optional<GradScaler> scaler;
  if (c.scaler) scaler.emplace(GradScalerOptions{.growth_interval = 2});
  const auto got = accumulate(c.model, *model, *model, nullptr, 0, 1, scaler ? &*scaler : nullptr);
  ddp::expect_same_state(got, want, std::string(model_name(c.model)) + " accumulated");
  if (scaler) {
    EXPECT_EQ(scaler->get_scale(), 65536.0 * 2) << "one update per optimizer step, not per micro-batch";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GradAccumulation,
                         ::testing::Values(Case{Model::kMLP, false}, Case{Model::kCNN, false},
                                           Case{Model::kConvStack, false}, Case{Model::kMLP, true},
                                           Case{Model::kCNN, true}),
                         case_name);

class GradAccumulationDDP : public ::testing::TestWithParam<Case> {};

TEST_P(GradAccumulationDDP, TwoRanksWithNoSyncEqualOneProcessWithTheWholeBatch) {
  constexpr int kWorld = 2;
  const Case c = GetParam();
  const auto want = one_large_batch(c.model, kWorld * kK * kMicro);
  std::vector<std::shared_ptr<nn::Module>> models = {make_model(c.model, 7), make_model(c.model, 8)};
  auto groups = comm::make_local_group(kWorld);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(kWorld);
  tandem::testing::run_ranks(kWorld, [&](int r) {
    auto& model = models[static_cast<size_t>(r)];
    comm::DistributedDataParallel ddp_model(model, groups[static_cast<size_t>(r)]);
    std::optional<GradScaler> scaler;
    if (c.scaler) scaler.emplace();
    got[static_cast<size_t>(r)] = accumulate(c.model, *model, ddp_model, &ddp_model, r, kWorld, scaler ? &*scaler : nullptr);
  });
  for (int r = 0; r < kWorld; ++r) {
    ddp::expect_same_state(got[static_cast<size_t>(r)], want,
                           std::string(model_name(c.model)) + " DDP rank " + std::to_string(r));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GradAccumulationDDP,
                         ::testing::Values(Case{Model::kMLP, false}, Case{Model::kConvStack, false},
                                           Case{Model::kMLP, true}, Case{Model::kCNN, true}),
                         case_name);

}  // namespace
}  // namespace tandem::optim
