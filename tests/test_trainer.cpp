// train::Trainer: a thin loop, so proven by equivalence — with the hand-written loop,
// accumulation with one larger batch, DDP over two local ranks with one process on
// the whole batch, activation checkpointing with plain training, and a resumed run
// with the uninterrupted one, for a classifier and a GPT — plus checkpoint files,
// metrics logs, early stop on a diverging loss and configuration errors.
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/local.h"
#include "data/dataloader.h"
#include "data/dataset.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/models/gpt.h"
#include "layers/models/mlp.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/sgd.h"
#include "test_util.h"
#include "train/loss.h"
#include "train/state.h"
#include "train/trainer.h"

namespace tandem::train {
namespace {

using tandem::testing::TempDir;

constexpr int64_t kSamples = 64;

std::shared_ptr<data::TensorDataset> dataset(uint64_t seed, int64_t n = kSamples) {
  return std::make_shared<data::TensorDataset>(
      tandem::testing::random_tensor({n, 12}, seed, DType::kF32, Device::cpu(), -1.0, 1.0),
      tandem::testing::random_indices({n}, 5, seed + 1));
}

std::shared_ptr<nn::models::MLP> mlp(double dropout = 0.0) {
  manual_seed(42);
  return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 12, .hidden = {16, 16}, .out = 5, .dropout = dropout});
}

TrainerConfig base_config() {
  TrainerConfig c;
  c.epochs = 2;
  c.batch_size = 8;
  c.seed = 5;
  c.optimizer = {.name = "sgd", .lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3};
  c.logging.progress = false;
  c.logging.log_every_steps = 0;
  c.checkpoint.best_metric = "";
  return c;
}

std::vector<Tensor> params_of(nn::Module& m) {
  std::vector<Tensor> out;
  for (const Tensor& p : m.parameters()) out.push_back(p.clone());
  return out;
}

void expect_params(const std::vector<Tensor>& got, const std::vector<Tensor>& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (rtol == 0.0) {
      EXPECT_TRUE(tandem::testing::all_close(got[i], want[i], 0.0, 0.0)) << what << " parameter " << i;
    } else {
      EXPECT_LE(tandem::testing::relative_error(got[i], want[i]), rtol) << what << " parameter " << i << " " << shape_str(want[i].shape());
    }
  }
}

/// Trains one epoch of `first` from a fresh mlp(), checkpointing into `dir`, then trains
/// `model` with `rest` resumed from that checkpoint to rest.epochs; returns the last
/// epoch's metrics of the resumed run.
EpochMetrics train_resumed_after_one_epoch(TrainerConfig first, TrainerConfig rest, const TempDir& dir,
                                           const std::shared_ptr<nn::models::MLP>& model,
                                           const std::shared_ptr<data::TensorDataset>& train,
                                           const std::shared_ptr<data::TensorDataset>& val) {
  first.epochs = 1;
  first.checkpoint.dir = dir.path().string();
  Trainer(first, mlp(), train, val).fit();
  rest.checkpoint.dir = dir.path().string();
  rest.checkpoint.resume = "auto";
  Trainer resumed(rest, model, train, val);
  resumed.fit();
  return resumed.history().back();
}

TEST(Trainer, EqualsTheHandWrittenLoopBitForBit) {
  auto train = dataset(1), val = dataset(2, 16);
  auto model = mlp(0.2);
  Trainer trainer(base_config(), model, train, val);
  trainer.fit();
  ASSERT_EQ(trainer.history().size(), 2u);
  EXPECT_EQ(trainer.global_step(), 2 * kSamples / 8);

  auto ref = mlp(0.2);
  manual_seed(5);  // what the Trainer seeds for the run
  optim::SGD opt(ref->parameters(), {.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3});
  data::DataLoader loader(train, {.batch_size = 8, .shuffle = true, .seed = 5});
  for (int e = 0; e < 2; ++e) {
    for (data::Batch& b : loader) {
      cross_entropy(ref->forward(b.input), b.target).backward();
      opt.step();
      opt.zero_grad();
    }
  }
  expect_params(params_of(*model), params_of(*ref), 0.0, "trainer vs loop");
  // Validation covers the whole set once.
  EXPECT_EQ(trainer.history().back().val_samples, 16);
  EXPECT_GT(trainer.history().back().val_acc, 0.0);
}

TEST(Trainer, ClippingEqualsTheHandWrittenLoopWithClipGradNorm) {
  // The Trainer clips on the device (no host read of the norm); the hand-written loop
  // uses clip_grad_norm, which reads it: the same parameters, bit for bit.
  auto train = dataset(1), val = dataset(2, 16);
  TrainerConfig c = base_config();
  c.optimizer.clip_grad_norm = 0.05;  // small enough to clip every step
  auto model = mlp();
  Trainer(c, model, train, val).fit();

  auto ref = mlp();
  manual_seed(5);
  optim::SGD opt(ref->parameters(), {.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3});
  data::DataLoader loader(train, {.batch_size = 8, .shuffle = true, .seed = 5});
  int clipped = 0;
  for (int e = 0; e < 2; ++e) {
    for (data::Batch& b : loader) {
      cross_entropy(ref->forward(b.input), b.target).backward();
      clipped += optim::clip_grad_norm(ref->parameters(), 0.05) > 0.05;
      opt.step();
      opt.zero_grad();
    }
  }
  EXPECT_GT(clipped, 0) << "the test must clip";
  expect_params(params_of(*model), params_of(*ref), 0.0, "trainer vs loop, clipped");
}

TEST(Trainer, AccumulationOfFourMicroBatchesEqualsOneBatchFourTimesLarger) {
  auto train = dataset(3), val = dataset(4, 8);
  TrainerConfig big = base_config();
  big.batch_size = 32;
  auto a = mlp();
  Trainer(big, a, train, val).fit();
  TrainerConfig small = base_config();
  small.batch_size = 8;
  small.accumulate = 4;
  auto b = mlp();
  Trainer t(small, b, train, val);
  t.fit();
  EXPECT_EQ(t.global_step(), 2 * kSamples / 32);
  expect_params(params_of(*b), params_of(*a), 1e-5, "accumulate 4 x 8 vs 32");
}

TEST(Trainer, ActivationCheckpointingChangesNothingOnTheCpu) {
  auto train = dataset(5), val = dataset(6, 8);
  auto a = mlp(0.3);
  Trainer(base_config(), a, train, val).fit();
  TrainerConfig c = base_config();
  c.grad_checkpoint = true;
  auto b = mlp(0.3);
  Trainer(c, b, train, val).fit();
  expect_params(params_of(*b), params_of(*a), 0.0, "checkpointed vs plain");
}

TEST(Trainer, DdpOverTwoLocalRanksEqualsOneProcessWithTheWholeBatch) {
  auto train = dataset(7), val = dataset(8, 10);
  TrainerConfig single = base_config();
  single.batch_size = 16;
  auto want_model = mlp();
  Trainer(single, want_model, train, val).fit();
  auto want = params_of(*want_model);

  auto groups = comm::make_local_group(2);
  std::vector<std::shared_ptr<nn::models::MLP>> models = {mlp(), mlp()};
  std::vector<std::vector<Tensor>> got(2);
  std::vector<EpochMetrics> last(2);
  TempDir logs;
  tandem::testing::run_ranks(2, [&](int r) {
    TrainerConfig c = base_config();
    c.strategy.mode = "ddp";
    c.batch_size = 8;
    // Step records reduce over both ranks; only rank 0 writes.
    c.logging.jsonl = (logs.path() / "m.jsonl").string();
    c.logging.log_every_steps = 2;
    Trainer t(c, models[static_cast<size_t>(r)], train, val, groups[static_cast<size_t>(r)]);
    EXPECT_EQ(t.world_size(), 2);
    t.fit();
    got[static_cast<size_t>(r)] = params_of(*models[static_cast<size_t>(r)]);
    last[static_cast<size_t>(r)] = t.history().back();
  });
  for (int r = 0; r < 2; ++r) expect_params(got[static_cast<size_t>(r)], want, 1e-5, "ddp rank " + std::to_string(r));
  // Metrics are over the whole validation set, the same on both ranks.
  EXPECT_EQ(last[0].val_samples, 10);
  EXPECT_DOUBLE_EQ(last[0].val_acc, last[1].val_acc);
  std::ifstream in(logs.path() / "m.jsonl");
  int step_records = 0;
  for (std::string line; std::getline(in, line);) step_records += nlohmann::json::parse(line)["kind"] == "step";
  EXPECT_EQ(step_records, 4) << "8 steps, every 2nd, written once";
}

// ---- sequence models -----------------------------------------------------------------------

/// n sequences of 8 tokens of a 11-symbol vocabulary and their next tokens.
std::shared_ptr<data::TensorDataset> token_dataset(uint64_t seed, int64_t n) {
  Tensor seq = tandem::testing::random_indices({n, 9}, 11, seed);
  return std::make_shared<data::TensorDataset>(seq.narrow(1, 0, 8), seq.narrow(1, 1, 8));
}

std::shared_ptr<nn::models::GPT> tiny_gpt() {
  manual_seed(43);
  return std::make_shared<nn::models::GPT>(
      nn::models::GPTOptions{.vocab_size = 11, .block_size = 8, .n_layer = 2, .n_head = 2, .n_embd = 16});
}

TrainerConfig gpt_config() {
  TrainerConfig c = base_config();
  c.optimizer = {.name = "adamw", .lr = 1e-2, .weight_decay = 0.1};
  return c;
}

TEST(PredictionLoss, FlattensSequencesAndCountsEveryPosition) {
  Tensor logits = tandem::testing::random_tensor({3, 4, 5}, 60);
  Tensor targets = tandem::testing::random_indices({3, 4}, 5, 61);
  Tensor flat = cross_entropy(reshape(logits, {12, 5}), reshape(targets, {12}), {.reduction = Reduction::kSum});
  EXPECT_DOUBLE_EQ(prediction_loss(logits, targets, Reduction::kSum).item(), flat.item());
  EXPECT_DOUBLE_EQ(prediction_loss(logits, targets).item(), flat.item() / 12);
  const Tensor hits = sum(eq(argmax(reshape(logits, {12, 5}), 1), reshape(targets, {12})));
  EXPECT_EQ(correct_predictions(logits, targets).item<int64_t>(), hits.item<int64_t>());
  // Classifiers are unchanged.
  Tensor l2 = tandem::testing::random_tensor({6, 5}, 62), t2 = tandem::testing::random_indices({6}, 5, 63);
  EXPECT_DOUBLE_EQ(prediction_loss(l2, t2).item(), cross_entropy(l2, t2).item());
  tandem::testing::expect_invalid([&] { prediction_loss(logits, t2); },
                                  {"[prediction_loss]", "(N, T, V) with (N, T)", "[3, 4, 5] and [6]"});
  tandem::testing::expect_invalid([&] { correct_predictions(logits, tandem::testing::random_indices({3, 5}, 5, 64)); },
                                  {"[correct_predictions]", "[3, 4, 5] and [3, 5]"});
}

TEST(Trainer, GptEqualsTheHandWrittenLoopBitForBit) {
  auto train = token_dataset(20, 32), val = token_dataset(21, 12);
  auto model = tiny_gpt();
  Trainer trainer(gpt_config(), model, train, val);
  trainer.fit();
  EXPECT_EQ(trainer.global_step(), 2 * 32 / 8);

  auto ref = tiny_gpt();
  manual_seed(5);
  optim::AdamW opt(ref->parameters(), {.lr = 1e-2, .weight_decay = 0.1});
  data::DataLoader loader(train, {.batch_size = 8, .shuffle = true, .seed = 5});
  for (int e = 0; e < 2; ++e) {
    for (data::Batch& b : loader) {
      Tensor logits = ref->forward(b.input);
      cross_entropy(reshape(logits, {-1, 11}), reshape(b.target, {-1})).backward();
      opt.step();
      opt.zero_grad();
    }
  }
  expect_params(params_of(*model), params_of(*ref), 0.0, "trainer vs loop");
  // Validation is per token: 12 sequences of 8.
  const EpochMetrics& last = trainer.history().back();
  EXPECT_EQ(last.val_samples, 12 * 8);
  autograd::NoGradGuard no_grad;
  ref->eval();
  const data::Batch all = val->get_batch(std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  const Tensor logits = ref->forward(all.input);
  EXPECT_NEAR(last.val_loss, prediction_loss(logits, all.target).item(), 1e-6);
  EXPECT_DOUBLE_EQ(last.val_acc, correct_predictions(logits, all.target).item() / 96.0);
}

TEST(Trainer, GptDdpOverTwoLocalRanksEqualsOneProcessWithTheWholeBatch) {
  // SGD, not AdamW: the key bias of c_attn has an exactly zero gradient (softmax ignores
  // a shift shared by all scores of a query), so what it gets is rounding noise, which
  // Adam's normalisation turns into full-size steps of either sign; summing the batch in
  // two halves rounds differently. SGD keeps noise noise-sized.
  auto train = token_dataset(22, 32), val = token_dataset(23, 6);
  const auto gpt_sgd = [] {
    TrainerConfig c = gpt_config();
    c.optimizer = {.name = "sgd", .lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3};
    return c;
  };
  TrainerConfig single = gpt_sgd();
  single.batch_size = 16;
  auto want_model = tiny_gpt();
  Trainer(single, want_model, train, val).fit();
  const auto want = params_of(*want_model);

  auto groups = comm::make_local_group(2);
  std::vector<std::shared_ptr<nn::models::GPT>> models = {tiny_gpt(), tiny_gpt()};
  std::vector<std::vector<Tensor>> got(2);
  tandem::testing::run_ranks(2, [&](int r) {
    TrainerConfig c = gpt_sgd();
    c.strategy.mode = "ddp";
    c.batch_size = 8;
    Trainer t(c, models[static_cast<size_t>(r)], train, val, groups[static_cast<size_t>(r)]);
    t.fit();
    got[static_cast<size_t>(r)] = params_of(*models[static_cast<size_t>(r)]);
  });
  for (int r = 0; r < 2; ++r) expect_params(got[static_cast<size_t>(r)], want, 1e-5, "gpt ddp rank " + std::to_string(r));
}

TEST(Trainer, ResumeAutoContinuesLikeTheUninterruptedRun) {
  TempDir dir;
  auto train = dataset(9), val = dataset(10, 8);
  auto straight = mlp(0.2);
  TrainerConfig c = base_config();
  c.epochs = 3;
  Trainer(c, straight, train, val).fit();

  TrainerConfig first = base_config();
  first.epochs = 1;  // "interrupted" after one epoch
  first.checkpoint.dir = dir.path().string();
  first.checkpoint.every_steps = 3;
  first.checkpoint.keep_last = 2;
  first.checkpoint.best_metric = "val_acc";
  auto a = mlp(0.2);
  Trainer(first, a, train, val).fit();
  auto files = list_checkpoints(dir.path());
  ASSERT_EQ(files.size(), 2u) << "keep_last 2";
  EXPECT_EQ(files.back().filename(), "ckpt-8.tck");  // the epoch end (8 steps)
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "best.tck"));

  TrainerConfig rest = c;
  rest.checkpoint.dir = dir.path().string();
  rest.checkpoint.resume = "auto";
  manual_seed(777);  // another random stream: the checkpoint restores the run's
  auto b = std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 12, .hidden = {16, 16}, .out = 5, .dropout = 0.2});
  Trainer resumed(rest, b, train, val);
  EXPECT_EQ(resumed.resumed_from(), (dir.path() / "ckpt-8.tck").string());
  EXPECT_EQ(resumed.global_step(), 8);
  resumed.fit();
  EXPECT_EQ(resumed.history().size(), 3u);
  expect_params(params_of(*b), params_of(*straight), 0.0, "resumed vs straight");
}

/// A validation set whose every batch fails: a run over it dies at its first epoch end.
class FailingDataset : public data::TensorDataset {
 public:
  using data::TensorDataset::TensorDataset;
  void gather(std::span<const int64_t>, data::Batch&) const override {
    throw std::runtime_error("validation data unavailable");
  }
};

TEST(Trainer, ResumeFromAStepCheckpointAtTheEpochsLastBatchFinishesThatEpoch) {
  // every_steps 8 divides the 8-step epoch: the step checkpoint of step 8 is written at
  // the last batch, before validation and the epoch-end checkpoint. A run that dies in
  // between (here: its validation data fails) leaves that step checkpoint, with every
  // batch of epoch 1 handed out; resuming must finish epoch 1, not replay a whole epoch.
  TempDir dir;
  auto train = dataset(11), val = dataset(12, 8);
  auto straight = mlp(0.2);
  Trainer(base_config(), straight, train, val).fit();  // 2 epochs, 16 steps

  TrainerConfig c = base_config();
  c.checkpoint.dir = dir.path().string();
  c.checkpoint.every_steps = 8;
  const Tensor x = tandem::testing::random_tensor({8, 12}, 12, DType::kF32, Device::cpu(), -1.0, 1.0);
  auto failing = std::make_shared<FailingDataset>(x, tandem::testing::random_indices({8}, 5, 13));
  auto a = mlp(0.2);
  EXPECT_THROW(Trainer(c, a, train, failing).fit(), std::runtime_error);
  ASSERT_TRUE(std::filesystem::exists(dir.path() / "ckpt-8.tck"));

  c.checkpoint.resume = "auto";
  auto b = mlp(0.2);
  Trainer resumed(c, b, train, val);
  EXPECT_EQ(resumed.global_step(), 8);
  resumed.fit();
  EXPECT_EQ(resumed.global_step(), 16) << "epoch 1 replayed";
  ASSERT_EQ(resumed.history().size(), 2u);
  expect_params(params_of(*b), params_of(*straight), 0.0, "resumed vs straight");
}

TEST(Trainer, Fp16ResumeRestoresTheLossScalerToo) {
  TempDir dir;
  auto train = dataset(17), val = dataset(18, 8);
  TrainerConfig c = base_config();
  c.epochs = 2;
  c.precision = {.use_amp = true, .amp_dtype = DType::kF16, .scaler = {.init_scale = 1024.0, .growth_interval = 3}};
  auto straight = mlp();
  Trainer s(c, straight, train, val);
  s.fit();
  EXPECT_GT(s.history().back().loss_scale, 1024.0) << "the scale grows every 3 finite steps";

  auto b = mlp();
  const EpochMetrics last = train_resumed_after_one_epoch(c, c, dir, b, train, val);
  EXPECT_EQ(last.loss_scale, s.history().back().loss_scale);
  expect_params(params_of(*b), params_of(*straight), 0.0, "fp16 resumed vs straight");
}

TEST(Trainer, Fp16WithTheScalerOnTheDeviceMatchesTheHostScaler) {
  // A scale far too large for f16 makes the first steps overflow: both scalers skip
  // them and back off alike. The device scaler (what the Trainer uses on CUDA) must give
  // the same parameters and metrics, and resume from the host scaler's checkpoint.
  TempDir dir;
  auto train = dataset(21), val = dataset(22, 8);
  TrainerConfig c = base_config();
  c.epochs = 2;
  c.precision = {.use_amp = true, .amp_dtype = DType::kF16, .scaler = {.init_scale = 1e12, .growth_interval = 3}};
  auto host = mlp();
  Trainer h(c, host, train, val);
  h.fit();
  EXPECT_GT(h.history().front().skipped_steps, 0) << "the test must skip steps";

  TrainerConfig on_device = c;
  on_device.precision.scaler.capturable = true;
  auto dev = mlp();
  Trainer d(on_device, dev, train, val);
  d.fit();
  expect_params(params_of(*dev), params_of(*host), 0.0, "device scaler vs host scaler");
  for (size_t e = 0; e < h.history().size(); ++e) {
    EXPECT_EQ(d.history()[e].skipped_steps, h.history()[e].skipped_steps) << "epoch " << e;
    EXPECT_EQ(d.history()[e].loss_scale, h.history()[e].loss_scale) << "epoch " << e;
  }

  auto r = mlp();
  (void)train_resumed_after_one_epoch(c, on_device, dir, r, train, val);
  expect_params(params_of(*r), params_of(*host), 0.0, "device scaler resumed from a host-scaler checkpoint");
}

TEST(Trainer, Bf16AutocastTrainsCloseToFp32) {
  auto train = dataset(19), val = dataset(20, 16);
  auto a = mlp();
  Trainer(base_config(), a, train, val).fit();
  TrainerConfig c = base_config();
  c.precision = {.use_amp = true, .amp_dtype = DType::kBF16};
  auto b = mlp();
  Trainer t(c, b, train, val);
  t.fit();
  EXPECT_EQ(t.history().back().loss_scale, 1.0) << "bf16 needs no loss scaling";
  for (const Tensor& p : b->parameters()) EXPECT_EQ(p.dtype(), DType::kF32) << "master weights stay f32";
  const auto pa = params_of(*a), pb = params_of(*b);
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_LE(tandem::testing::relative_error(pb[i], pa[i]), 0.05) << i;
}

TEST(Trainer, MetricsLogsHoldStepsAndEpochs) {
  TempDir dir;
  TrainerConfig c = base_config();
  c.logging.jsonl = (dir.path() / "m.jsonl").string();
  c.logging.csv = (dir.path() / "m.csv").string();
  c.logging.log_every_steps = 4;
  Trainer(c, mlp(), dataset(11), dataset(12, 8)).fit();
  std::ifstream in(dir.path() / "m.jsonl");
  int steps = 0, epochs = 0;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["kind"] == "step") {
      ++steps;
      EXPECT_TRUE(j.contains("forward_ms") && j.contains("backward_ms") && j.contains("optimizer_ms"));
    }
    if (j["kind"] == "epoch") {
      ++epochs;
      EXPECT_TRUE(j.contains("val_acc") && j.contains("train_loss") && j.contains("data_ms"));
    }
  }
  EXPECT_EQ(steps, 4);  // 16 steps, every 4th
  EXPECT_EQ(epochs, 2);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "m.csv"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "m-epochs.csv"));
}

TEST(Trainer, DivergingLossStopsWithAClearMessage) {
  TrainerConfig c = base_config();
  c.optimizer.lr = 1e30;
  c.optimizer.weight_decay = 0;
  Trainer t(c, mlp(), dataset(13), dataset(14, 8));
  try {
    t.fit();
    ADD_FAILURE() << "expected TrainingDiverged";
  } catch (const TrainingDiverged& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("the loss became"), std::string::npos) << m;
    EXPECT_NE(m.find("lower learning rate"), std::string::npos) << m;
  }
}

/// A model whose forward runs out of device memory (what the caching allocator throws).
class OutOfMemoryModel : public nn::Module {
 public:
  OutOfMemoryModel() { register_parameter("w", ones({1})); }
  Tensor forward(const Tensor&) override {
    throw cuda::OutOfMemoryError("[device_alloc] out of memory on cuda:0: could not allocate 2.00 GiB", size_t{2} << 30,
                                 int64_t{70} << 30, int64_t{78} << 30);
  }
};

TEST(Trainer, OutOfMemoryNamesTheBatchPerDeviceAndWhatToDo) {
  TrainerConfig c = base_config();
  c.batch_size = 8;
  Trainer t(c, std::make_shared<OutOfMemoryModel>(), dataset(21), dataset(22, 8));
  try {
    t.fit();
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of memory on cuda:0"), std::string::npos) << m;
    EXPECT_NE(m.find("batch per device is 8 samples"), std::string::npos) << m;
    EXPECT_NE(m.find("accumulation"), std::string::npos) << m;
    EXPECT_NE(m.find("activation checkpointing"), std::string::npos) << m;
  }
}

TEST(Trainer, Tf32SwitchIsLeftAloneUnlessTheConfigSetsIt) {
  // A process-wide switch (cuda::set_allow_tf32); the guard restores it afterwards.
  EXPECT_FALSE(cuda::allow_tf32());
  auto train = dataset(30), val = dataset(31, 8);
  {
    cuda::AllowTf32Guard on(true);
    Trainer(base_config(), mlp(), train, val);
    EXPECT_TRUE(cuda::allow_tf32()) << "a default config must not reset what the program chose";
    TrainerConfig off = base_config();
    off.precision.allow_tf32 = false;
    Trainer(off, mlp(), train, val);
    EXPECT_FALSE(cuda::allow_tf32());
    TrainerConfig tf32 = base_config();
    tf32.precision.allow_tf32 = true;
    Trainer(tf32, mlp(), train, val);
    EXPECT_TRUE(cuda::allow_tf32());
    EXPECT_EQ(tf32.to_json()["precision"]["allow_tf32"], true);
    EXPECT_TRUE(base_config().to_json()["precision"]["allow_tf32"].is_null());
  }
  EXPECT_FALSE(cuda::allow_tf32());
}

TEST(Trainer, ConfigurationErrorsNameTheOption) {
  auto train = dataset(15), val = dataset(16, 8);
  auto expect = [&](const std::function<void(TrainerConfig&)>& edit, const std::vector<std::string>& pieces) {
    TrainerConfig c = base_config();
    edit(c);
    tandem::testing::expect_invalid([&] { Trainer(c, mlp(), train, val); }, pieces);
  };
  expect([](TrainerConfig& c) { c.epochs = 0; }, {"epochs", ">= 1", "got 0"});
  expect([](TrainerConfig& c) { c.accumulate = 0; }, {"accumulate", "got 0"});
  expect([](TrainerConfig& c) { c.strategy.mode = "fsdp"; }, {"strategy.mode", "\"fsdp\""});
  expect([](TrainerConfig& c) { c.strategy.mode = "dp"; }, {"strategy.devices", "dp", "none"});
  expect([](TrainerConfig& c) { c.strategy.sync_bn = true; }, {"strategy.sync_bn", "\"single\""});
  expect([](TrainerConfig& c) { c.optimizer.name = "lamb"; }, {"optimizer.name", "\"lamb\""});
  expect([](TrainerConfig& c) { c.schedule.name = "cosine"; c.schedule.warmup_steps = 100; },
         {"schedule.warmup_steps", "16 optimizer steps", "got 100"});
  expect([](TrainerConfig& c) { c.checkpoint.resume = "auto"; }, {"checkpoint.dir", "got \"\""});
  TempDir used;
  tandem::testing::write_raw(used.path() / "ckpt-12.tck", {});
  expect([&](TrainerConfig& c) { c.checkpoint.dir = used.path().string(); },
         {"checkpoint.dir", "without checkpoints for a new run", "resume \"auto\" continues", "holding ckpt-12.tck"});
  expect([](TrainerConfig& c) { c.precision.use_amp = true; c.precision.amp_dtype = DType::kF64; },
         {"precision.amp_dtype", "float64"});
  tandem::testing::expect_invalid([&] { Trainer(base_config(), nullptr, train, val); }, {"model", "null"});
  // CUDA graphs: a CUDA device, and no part that reads values on the host per step.
  auto graphed = [](TrainerConfig& c) {
    c.cuda_graph = true;
    c.strategy.devices = {Device::cpu()};
  };
  expect([&](TrainerConfig& c) { graphed(c); }, {"[Trainer] cuda_graph: expected a CUDA device, got cpu"});
  expect([&](TrainerConfig& c) { graphed(c); c.grad_checkpoint = true; }, {"cuda_graph", "grad_checkpoint off"});
  expect([&](TrainerConfig& c) { graphed(c); c.strategy.mode = "dp"; c.strategy.devices = {Device::cpu(), Device::cpu()}; },
         {"cuda_graph", "DataParallel", "got \"dp\""});
  auto local = comm::make_local_group(1);
  TrainerConfig ddp = base_config();
  graphed(ddp);
  ddp.strategy.mode = "ddp";
  tandem::testing::expect_invalid([&] { Trainer(ddp, mlp(), train, val, local[0]); },
                                  {"cuda_graph", "the nccl backend", "got \"local\""});
  ddp.strategy.ddp.find_unused_parameters = true;
  tandem::testing::expect_invalid([&] { Trainer(ddp, mlp(), train, val, local[0]); },
                                  {"cuda_graph", "find_unused_parameters off"});
}

}  // namespace
}  // namespace tandem::train
