// Resume from a training checkpoint equals the uninterrupted run, bit for bit on the
// CPU: model, optimizer moments, schedule, dropout's random stream and the data
// loader's place in the epoch all come back. Also under DDP (local backend), the world
// size rule, and errors.
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/ddp.h"
#include "comm/local.h"
#include "comm/sampler.h"
#include "data/dataloader.h"
#include "data/dataset.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/models/mlp.h"
#include "optim/adam.h"
#include "optim/schedule.h"
#include "optim/sgd.h"
#include "test_util.h"
#include "train/state.h"

namespace tandem::train {
namespace {

using tandem::testing::TempDir;

constexpr int64_t kSamples = 64;
constexpr int64_t kBatch = 8;  // 8 batches per epoch
constexpr int kEpochs = 3;

std::shared_ptr<data::TensorDataset> dataset() {
  return std::make_shared<data::TensorDataset>(
      tandem::testing::random_tensor({kSamples, 12}, 11, DType::kF32, Device::cpu(), -1.0, 1.0),
      tandem::testing::random_indices({kSamples}, 5, 12));
}

/// One training job; `init_seed` varies the initial weights (a resumed job must not
/// depend on them).
struct Job {
  std::shared_ptr<nn::models::MLP> model;
  std::unique_ptr<optim::Optimizer> optimizer;
  std::unique_ptr<optim::LRScheduler> scheduler;
  std::unique_ptr<data::DataLoader> loader;
  int64_t global_step = 0;

  Job(bool adam, uint64_t init_seed, std::shared_ptr<const data::Sampler> sampler = nullptr) {
    manual_seed(init_seed);
    model = std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 12, .hidden = {16, 16}, .out = 5, .dropout = 0.3});
    if (adam) {
      optimizer = std::make_unique<optim::AdamW>(model->parameters(), optim::AdamWOptions{.lr = 0.01});
    } else {
      optimizer = std::make_unique<optim::SGD>(model->parameters(),
                                               optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3});
    }
    scheduler = std::make_unique<optim::StepLR>(*optimizer, 5, 0.5);
    loader = std::make_unique<data::DataLoader>(dataset(), data::DataLoaderOptions{.batch_size = kBatch, .seed = 3},
                                                std::move(sampler));
  }

  TrainingObjects objects() { return {.model = model.get(), .optimizer = optimizer.get(), .scheduler = scheduler.get(), .loader = loader.get()}; }

  /// Trains to the end of kEpochs; calls `at_step(global_step)` after each step.
  void run(nn::Module& net, const std::function<void(int64_t)>& at_step = nullptr) {
    while (loader->epoch() < kEpochs) {
      for (data::Batch& b : *loader) {
        optimizer->zero_grad();
        cross_entropy(net.forward(b.input), b.target).backward();
        optimizer->step();
        scheduler->step();
        ++global_step;
        if (at_step) at_step(global_step);
      }
    }
  }
};

std::vector<std::pair<std::string, Tensor>> final_state(Job& job) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, t] : job.model->state_dict()) out.emplace_back(n, t.clone());
  for (auto& [n, t] : job.optimizer->state_dict().tensors)
    if (t.defined()) out.emplace_back("optimizer." + n, t.clone());
  return out;
}

void expect_bitwise_equal(const std::vector<std::pair<std::string, Tensor>>& got,
                          const std::vector<std::pair<std::string, Tensor>>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_TRUE(tandem::testing::all_close(got[i].second, want[i].second, 0.0, 0.0)) << got[i].first;
  }
}

class Resume : public ::testing::TestWithParam<bool> {};

TEST_P(Resume, MidEpochCheckpointContinuesBitForBit) {
  const bool adam = GetParam();
  TempDir dir;
  const auto path = dir.path() / "ckpt-11.tck";
  // Step 11 is batch 3 of epoch 1 (0-based): the loader must resume inside an epoch.
  Job straight(adam, 1);
  straight.run(*straight.model, [&](int64_t step) {
    if (step == 11)
      save_training_checkpoint(path, straight.objects(), {.epoch = straight.loader->epoch(), .global_step = step,
                                                          .config = {{"lr", 0.1}}, .extra = {{"best", 0.5}}});
  });
  auto want = final_state(straight);

  Job resumed(adam, 99);  // different initial weights, overwritten by the checkpoint
  manual_seed(12345);     // a different random stream, restored by the checkpoint
  TrainProgress p = load_training_checkpoint(path, resumed.objects());
  EXPECT_EQ(p.global_step, 11);
  EXPECT_EQ(p.epoch, 1);
  EXPECT_EQ(p.config["lr"], 0.1);
  EXPECT_EQ(p.extra["best"], 0.5);
  EXPECT_EQ(resumed.loader->epoch(), 1);
  EXPECT_EQ(resumed.loader->position(), 3);
  resumed.global_step = p.global_step;
  resumed.run(*resumed.model);
  EXPECT_EQ(resumed.global_step, kEpochs * kSamples / kBatch);
  expect_bitwise_equal(final_state(resumed), want);
  EXPECT_DOUBLE_EQ(resumed.optimizer->lr(), straight.optimizer->lr());
}

INSTANTIATE_TEST_SUITE_P(SgdAndAdamW, Resume, ::testing::Values(false, true));

TEST(ResumeDDP, TwoRanksResumeLikeTheUninterruptedRun) {
  constexpr int kWorld = 2;
  TempDir dir;
  const auto path = dir.path() / "ckpt-5.tck";
  auto run = [&](bool resume) {
    auto groups = comm::make_local_group(kWorld);
    std::vector<std::unique_ptr<Job>> jobs;
    for (int r = 0; r < kWorld; ++r)
      jobs.push_back(std::make_unique<Job>(false, resume ? 50 + r : 1 + r,
                                           std::make_shared<data::DistributedSampler>(kSamples, kWorld, r)));
    std::vector<std::vector<std::pair<std::string, Tensor>>> states(kWorld);
    tandem::testing::run_ranks(kWorld, [&](int r) {
      Job& job = *jobs[static_cast<size_t>(r)];
      // The rank threads share the CPU generator, so dropout is off here (eval mode);
      // the single-process test covers the random streams.
      job.model->eval();
      comm::DistributedDataParallel ddp(job.model, groups[static_cast<size_t>(r)]);
      if (resume) {
        TrainingObjects o = job.objects();
        o.rng_devices = {};
        TrainProgress p = load_training_checkpoint(path, o, kWorld);
        job.global_step = p.global_step;
      }
      job.run(ddp, [&](int64_t step) {
        if (!resume && step == 5 && r == 0) {
          TrainingObjects o = job.objects();
          o.rng_devices = {};
          save_training_checkpoint(path, o, {.epoch = job.loader->epoch(), .global_step = step, .world_size = kWorld});
        }
      });
      states[static_cast<size_t>(r)] = final_state(job);
    });
    return states;
  };
  auto want = run(false);
  auto got = run(true);
  for (int r = 0; r < kWorld; ++r) expect_bitwise_equal(got[static_cast<size_t>(r)], want[static_cast<size_t>(r)]);
}

TEST(ResumeErrors, WorldSizeChangeIsRefusedMidEpochAndAcceptedAtEpochEnd) {
  TempDir dir;
  Job job(false, 1);
  int64_t steps = 0;
  for (data::Batch& b : *job.loader) {
    job.optimizer->zero_grad();
    cross_entropy(job.model->forward(b.input), b.target).backward();
    job.optimizer->step();
    if (++steps == 3) break;
  }
  save_training_checkpoint(dir.path() / "mid.tck", job.objects(), {.global_step = 3, .world_size = 4});
  Job other(false, 2);
  tandem::testing::expect_invalid([&] { load_training_checkpoint(dir.path() / "mid.tck", other.objects(), 2); },
                                  {"world size it was saved with (4)", "got 2", "batch 3 of epoch 0",
                                   "end of an epoch"});
  // At an epoch boundary the sampler re-shards: accepted.
  job.loader->set_epoch(1);
  save_training_checkpoint(dir.path() / "end.tck", job.objects(), {.epoch = 1, .global_step = 8, .world_size = 4});
  TrainProgress p = load_training_checkpoint(dir.path() / "end.tck", other.objects(), 2);
  EXPECT_EQ(p.world_size, 4);
  EXPECT_EQ(other.loader->epoch(), 1);
}

TEST(ResumeErrors, NumbersThatAreNotIntegersAreNamedNotCast) {
  // A crafted checkpoint (valid CRCs) whose counters are floats or negative: a clear
  // error before anything is loaded, not an out-of-range conversion.
  TempDir dir;
  Job job(false, 1);
  save_training_checkpoint(dir.path() / "t.tck", job.objects(), {.epoch = 1, .global_step = 8});
  const Checkpoint good = load_checkpoint(dir.path() / "t.tck");
  auto expect_rejected = [&](const std::function<void(nlohmann::json&)>& edit, const std::vector<std::string>& pieces) {
    nlohmann::json meta = good.metadata;
    edit(meta);
    save_checkpoint(dir.path() / "bad.tck", good.tensors, meta);
    Job fresh(false, 1);
    tandem::testing::expect_invalid([&] { load_training_checkpoint(dir.path() / "bad.tck", fresh.objects()); },
                                    pieces);
  };
  expect_rejected([](nlohmann::json& m) { m["progress"]["global_step"] = 1.6e52; },
                  {"malformed \"progress\" metadata", "expected global_step to be an integer", "1.6e+52"});
  expect_rejected([](nlohmann::json& m) { m["progress"]["world_size"] = -2; },
                  {"malformed \"progress\" metadata", "world_size", "-2"});
  expect_rejected([](nlohmann::json& m) { m["loader"]["position"] = 2.5; },
                  {"malformed \"loader\" metadata", "loader position", "2.5"});
  expect_rejected([](nlohmann::json& m) { m["rng"]["cpu"]["offset"] = -1; },
                  {"malformed \"rng\" metadata for cpu", "rng offset", "-1"});
}

TEST(ResumeErrors, CheckpointWithoutTrainingStateOrWithAnotherModel) {
  TempDir dir;
  save_checkpoint(dir.path() / "plain.tck", {{"x", Tensor::empty({1})}});
  Job job(false, 1);
  tandem::testing::expect_invalid([&] { load_training_checkpoint(dir.path() / "plain.tck", job.objects()); },
                                  {"expected a training checkpoint", "got a checkpoint without training state"});
  save_training_checkpoint(dir.path() / "t.tck", job.objects(), {});
  manual_seed(1);
  nn::models::MLP wider({.in = 12, .hidden = {32}, .out = 5});
  TrainingObjects o{.model = &wider};
  EXPECT_THROW(load_training_checkpoint(dir.path() / "t.tck", o), std::invalid_argument);
}

TEST(ResumeFiles, ListCheckpointsOrdersBySteps) {
  TempDir dir;
  for (const char* name : {"ckpt-10.tck", "ckpt-9.tck", "ckpt-100.tck", "other-5.tck", "ckpt-x.tck"})
    tandem::testing::write_raw(dir.path() / name, {});
  auto list = list_checkpoints(dir.path());
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].filename(), "ckpt-9.tck");
  EXPECT_EQ(list[2].filename(), "ckpt-100.tck");
  EXPECT_TRUE(list_checkpoints(dir.path() / "missing").empty());
}

}  // namespace
}  // namespace tandem::train
