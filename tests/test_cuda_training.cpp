// Training end to end on the GPU: the Trainer on CUDA against the same run on the
// CPU, no cudaMalloc once a training loop is warm (fp32, bf16, fp16 with the scaler;
// SGD and AdamW; MLP, CNN, ResNet-18, GPT), a GPT's AdamW steps and generation on CUDA
// against the CPU, and tandem-train itself on Fashion-MNIST with every strategy and
// precision one GPU can run (the README's main job), and on a text.
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/launch.h"
#include "comm/store.h"
#include "data/dataset.h"
#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/activation.h"
#include "layers/linear.h"
#include "layers/models/cnn.h"
#include "layers/models/gpt.h"
#include "layers/models/mlp.h"
#include "layers/models/resnet.h"
#include "layers/norm.h"
#include "layers/sequential.h"
#include "optim/adam.h"
#include "optim/grad_scaler.h"
#include "optim/sgd.h"
#include "tandem/config.h"
#include "ddp_test_support.h"
#include "test_util.h"
#include "train/trainer.h"

namespace tandem::train {
namespace {

using tandem::testing::random_indices;
using tandem::testing::random_tensor;

const Device kGpu = Device::cuda(0);

// scripts/gpu-check runs every GPU test binary again under compute-sanitizer with
// TANDEM_MEMCHECK=1, where kernels run 10-100x slower: whole training runs skip there
// (the short ones in this file still run).
#define SKIP_UNDER_MEMCHECK()                                                                     \
  do {                                                                                            \
    if (const char* m = std::getenv("TANDEM_MEMCHECK"); m != nullptr && std::string(m) == "1")    \
      GTEST_SKIP() << "TANDEM_MEMCHECK=1: a full training run is too slow under compute-sanitizer"; \
  } while (0)

std::shared_ptr<data::TensorDataset> images(int64_t n, const Shape& sample, uint64_t seed) {
  Shape shape = {n};
  shape.insert(shape.end(), sample.begin(), sample.end());
  return std::make_shared<data::TensorDataset>(random_tensor(shape, seed, DType::kF32, Device::cpu(), -1.0, 1.0),
                                               random_indices({n}, 10, seed + 1));
}

TrainerConfig quiet_config(Device device) {
  TrainerConfig c;
  c.epochs = 1;
  c.batch_size = 16;
  c.seed = 3;
  c.strategy.devices = {device};
  c.optimizer = {.name = "sgd", .lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4};
  c.logging.progress = false;
  c.logging.log_every_steps = 0;
  c.logging.gpu_monitor = false;
  c.checkpoint.best_metric = "";
  return c;
}

TEST(CudaTraining, TrainerOnTheGpuMatchesTheCpu) {
  TANDEM_REQUIRE_CUDA();
  // 10 SGD steps with momentum (and batch norm for the CNN); f32 without TF32 on both
  // sides. cuDNN's convolution algorithms round differently from the CPU's unfold GEMM.
  struct Case {
    std::string name;
    Shape sample;
    double tol;
    std::function<std::shared_ptr<nn::Module>()> make;
  };
  const std::vector<Case> cases = {
      {"mlp", {1, 28, 28}, 1e-5,
       [] { return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 784, .hidden = {64}, .out = 10}); }},
      // 1e-3: cuDNN's algorithms round differently from the CPU's unfold GEMM, and batch
      // norm divides by batch statistics over 10 momentum steps; not yet measured on a
      // GPU. A wrong gradient or update is off by far more.
      {"cnn", {1, 28, 28}, 1e-3,
       [] { return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = 1, .image_size = 28}); }},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    auto train = images(160, k.sample, 11), val = images(48, k.sample, 12);
    manual_seed(7);
    auto on_cpu = k.make();
    manual_seed(7);
    auto on_gpu = k.make();
    Trainer cpu(quiet_config(Device::cpu()), on_cpu, train, val);
    Trainer gpu(quiet_config(kGpu), on_gpu, train, val);
    EXPECT_TRUE(gpu.device().is_cuda());
    const EpochMetrics c = cpu.fit().back();
    const EpochMetrics g = gpu.fit().back();
    EXPECT_EQ(gpu.global_step(), 10);
    const auto pc = on_cpu->named_parameters(), pg = on_gpu->named_parameters();
    ASSERT_EQ(pc.size(), pg.size());
    for (size_t i = 0; i < pc.size(); ++i) {
      EXPECT_TRUE(pg[i].second.is_cuda()) << pg[i].first;
      EXPECT_LE(tandem::testing::relative_error(pg[i].second.cpu(), pc[i].second), k.tol) << pg[i].first;
    }
    EXPECT_NEAR(g.train_loss, c.train_loss, 1e-3 * std::abs(c.train_loss));
    EXPECT_NEAR(g.val_loss, c.val_loss, 1e-3 * std::abs(c.val_loss));
    EXPECT_EQ(g.val_samples, 48);
  }
}

/// Trains `make()`'s model twice on the GPU from the same seed, eagerly and with
/// cuda_graph, under `edit`'s configuration, and expects the same run: parameters within
/// `tol` (capturable optimizers compute AdamW's bias corrections on the device), the same
/// steps and epoch losses. `train` has a smaller last batch, which runs eagerly.
void expect_graphed_trainer_matches_eager(const std::string& what, const std::function<std::shared_ptr<nn::Module>()>& make,
                                          const std::shared_ptr<data::TensorDataset>& train,
                                          const std::shared_ptr<data::TensorDataset>& val,
                                          const std::function<void(TrainerConfig&)>& edit, double tol,
                                          std::shared_ptr<comm::ProcessGroup> group = nullptr) {
  SCOPED_TRACE(what);
  TrainerConfig eager_config = quiet_config(kGpu);
  eager_config.epochs = 2;
  edit(eager_config);
  TrainerConfig graph_config = eager_config;
  graph_config.cuda_graph = true;
  if (group) graph_config.strategy.mode = "ddp";
  manual_seed(7);
  auto eager_model = make();
  manual_seed(7);
  auto graph_model = make();
  // One after the other: each Trainer seeds the generators when it is made, so the
  // graphed run's dropout starts where the eager run's did.
  Trainer eager(eager_config, eager_model, train, val);
  const std::vector<EpochMetrics> want = eager.fit();
  Trainer graphed(graph_config, graph_model, train, val, std::move(group));
  const std::vector<EpochMetrics> got = graphed.fit();
  EXPECT_EQ(graphed.global_step(), eager.global_step());
  ASSERT_EQ(got.size(), want.size());
  for (size_t e = 0; e < want.size(); ++e) {
    EXPECT_NEAR(got[e].train_loss, want[e].train_loss, 10 * tol * std::abs(want[e].train_loss)) << "epoch " << e;
    EXPECT_NEAR(got[e].val_loss, want[e].val_loss, 10 * tol * std::abs(want[e].val_loss)) << "epoch " << e;
    EXPECT_EQ(got[e].skipped_steps, want[e].skipped_steps) << "epoch " << e;
    EXPECT_EQ(got[e].lr, want[e].lr) << "epoch " << e;
  }
  const auto pe = eager_model->named_parameters(), pg = graph_model->named_parameters();
  ASSERT_EQ(pe.size(), pg.size());
  for (size_t i = 0; i < pe.size(); ++i)
    EXPECT_LE(tandem::testing::relative_error(pg[i].second.cpu(), pe[i].second.cpu()), tol) << pg[i].first;
}

TEST(CudaTraining, TrainerWithCudaGraphsMatchesTheEagerTrainer) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  SKIP_UNDER_MEMCHECK();
  // 170 samples in batches of 16: after three eager warm-up steps the full batches
  // replay, and each epoch's last (10 samples) runs eagerly.
  auto train = images(170, {1, 28, 28}, 41), val = images(40, {1, 28, 28}, 42);
  auto mlp = [](double dropout) {
    return [dropout] {
      return std::make_shared<nn::models::MLP>(
          nn::models::MLPOptions{.in = 784, .hidden = {64, 32}, .out = 10, .dropout = dropout});
    };
  };
  auto cnn = [] {
    return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = 1, .image_size = 28, .hidden = 32});
  };
  // SGD under warm-up and cosine: the lr reaches the replays through the device copy.
  expect_graphed_trainer_matches_eager("mlp sgd cosine", mlp(0.0), train, val, [](TrainerConfig& c) {
    c.schedule = {.name = "cosine", .warmup_steps = 4};
  }, 1e-5);
  // Two micro-batches per step (one graph that accumulates, one that steps), clipping.
  expect_graphed_trainer_matches_eager("mlp adamw accumulate 2 clip", mlp(0.0), train, val, [](TrainerConfig& c) {
    c.accumulate = 2;
    c.optimizer = {.name = "adamw", .lr = 1e-3, .weight_decay = 0.01, .clip_grad_norm = 0.5};
  }, 1e-5);
  // Dropout draws in bf16: each replay takes the next blocks of the generator, as eager steps do.
  expect_graphed_trainer_matches_eager("mlp dropout bf16 adamw", mlp(0.2), train, val, [](TrainerConfig& c) {
    c.precision = {.use_amp = true, .amp_dtype = DType::kBF16};
    c.optimizer = {.name = "adamw", .lr = 1e-3, .weight_decay = 0.01};
  }, 1e-4);
  // Batch norm's running statistics, f16 with the device-side scaler (skips included).
  expect_graphed_trainer_matches_eager("cnn sgd fp16", cnn, train, val, [](TrainerConfig& c) {
    c.precision = {.use_amp = true, .amp_dtype = DType::kF16};
  }, 1e-3);
}

TEST(CudaTraining, TrainerWithCudaGraphsOverNcclDdpMatchesTheEagerTrainer) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  SKIP_UNDER_MEMCHECK();
  // World size 1: the captured step holds DDP's bucketing (captured after its rebuild);
  // with two micro-batches per step, one replay runs under no_sync.
#if TANDEM_NCCL
  auto train = images(170, {1, 28, 28}, 43), val = images(40, {1, 28, 28}, 44);
  auto group = comm::make_nccl_group(comm::make_hash_store(std::chrono::seconds(30)), 0, 1);
  expect_graphed_trainer_matches_eager("ddp nccl", [] {
    return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 784, .hidden = {64}, .out = 10});
  }, train, val, [](TrainerConfig& c) { c.accumulate = 2; }, 1e-5, group);
#else
  GTEST_SKIP() << "built without NCCL";
#endif
}

TEST(CudaTraining, TrainerWithCudaGraphsRefusesStepsThatCannotReplay) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  auto data = std::make_shared<data::TensorDataset>(random_tensor({96, 6}, 51, DType::kF32), random_indices({96}, 3, 52));
  TrainerConfig c = quiet_config(kGpu);
  c.cuda_graph = true;
  // A parameter outside the forward: zeroed in place, it would still be stepped.
  manual_seed(3);
  Trainer unused(c, std::make_shared<comm::ddp_test::UnusedBranch>(), data, nullptr);
  tandem::testing::expect_error<std::runtime_error>(
      "std::runtime_error", [&] { unused.fit(); }, {"cuda_graph", "'unused.weight'", "after 3 steps"});
  // Batch norm's cumulative average reads its batch count on the host: the capture fails.
  manual_seed(3);
  auto cumulative = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(6, 8), std::make_shared<nn::BatchNorm1d>(8, nn::BatchNormOptions{.momentum = std::nullopt}),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(8, 3)});
  Trainer host_read(c, cumulative, data, nullptr);
  tandem::testing::expect_error<std::runtime_error>(
      "std::runtime_error", [&] { host_read.fit(); }, {"cuda_graph: capturing the training step failed"});
}

TEST(CudaTraining, NoCudaMallocOnceTheLoopIsWarm) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  struct Case {
    std::string name;
    Shape sample;
    std::string precision;  // fp32, bf16, fp16
    bool adamw;
    std::function<std::shared_ptr<nn::Module>()> make;
  };
  auto mlp = [] { return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 784, .hidden = {256}, .out = 10}); };
  auto cnn = [] { return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = 1, .image_size = 28}); };
  auto resnet = [] { return std::make_shared<nn::models::ResNet18>(nn::models::ResNetOptions{}); };
  const std::vector<Case> cases = {
      {"mlp sgd fp32", {1, 28, 28}, "fp32", false, mlp},     {"cnn sgd fp32", {1, 28, 28}, "fp32", false, cnn},
      {"cnn adamw bf16", {1, 28, 28}, "bf16", true, cnn},    {"cnn sgd fp16+scaler", {1, 28, 28}, "fp16", false, cnn},
      {"resnet18 sgd fp32", {3, 32, 32}, "fp32", false, resnet},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    manual_seed(1);
    std::shared_ptr<nn::Module> model = k.make();
    model->to(kGpu);
    std::unique_ptr<optim::Optimizer> opt;
    if (k.adamw) {
      opt = std::make_unique<optim::AdamW>(model->parameters());
    } else {
      opt = std::make_unique<optim::SGD>(model->parameters(), optim::SGDOptions{.lr = 0.01, .momentum = 0.9});
    }
    optim::GradScaler scaler(optim::GradScalerOptions{.enabled = k.precision == "fp16"});
    auto data = images(32, k.sample, 21);
    // The baseline after step 4, not 2: fp16 may skip its first steps (scale overflow),
    // and SGD's momentum buffers appear at the first step taken.
    int64_t allocs_when_warm = 0;
    for (int step = 0; step < 8; ++step) {
      // A fresh host batch each step, as a loader delivers it.
      Tensor x = data->inputs().narrow(0, (step % 2) * 16, 16).to(kGpu);
      Tensor y = data->targets().narrow(0, (step % 2) * 16, 16).to(kGpu);
      opt->zero_grad();
      Tensor loss;
      {
        std::optional<AutocastGuard> amp;
        if (k.precision != "fp32") amp.emplace(k.precision == "fp16" ? DType::kF16 : DType::kBF16);
        loss = cross_entropy((*model)(x), y);
      }
      scaler.scale(loss).backward();
      scaler.step(*opt);
      scaler.update();
      EXPECT_TRUE(std::isfinite(loss.item())) << "step " << step;
      if (step == 3) allocs_when_warm = cuda::memory_stats(0).num_device_allocs;
    }
    EXPECT_EQ(cuda::memory_stats(0).num_device_allocs, allocs_when_warm)
        << "cudaMalloc in steps 5-8: the caching allocator did not serve a warm loop from its cache";
    if (k.precision == "fp16") {
      EXPECT_LT(scaler.skipped_steps(), 4);
    }
  }
}

TEST(CudaTraining, GptAdamWStepsMatchTheCpuAndStayInTheCache) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();
  const nn::models::GPTOptions options{.vocab_size = 64, .block_size = 32, .n_layer = 2, .n_head = 4, .n_embd = 64};
  const Tensor tokens = random_indices({8, 33}, 64, 31);
  const Tensor input = tokens.narrow(1, 0, 32), targets = tokens.narrow(1, 1, 32);
  const auto lm_loss = [](const Tensor& logits, const Tensor& t) {
    return cross_entropy(reshape(logits, {-1, logits.size(2)}), reshape(t, {-1}));
  };
  // Runs 8 AdamW steps on `device` (under autocast to `amp` unless f32); returns the
  // losses and checks that steps 5-8 allocate no device memory.
  const auto run = [&](Device device, DType amp, nn::models::GPT& model) {
    model.to(device);
    optim::AdamW opt(model.parameters(), {.lr = 1e-3});
    const Tensor x = input.to(device), y = targets.to(device);
    std::vector<double> losses;
    int64_t allocs_when_warm = 0;
    for (int step = 0; step < 8; ++step) {
      opt.zero_grad();
      Tensor loss;
      {
        std::optional<AutocastGuard> guard;
        if (amp != DType::kF32) guard.emplace(amp);
        loss = lm_loss(model(x), y);
      }
      loss.backward();
      opt.step();
      losses.push_back(loss.item());
      if (device.is_cuda() && step == 3) allocs_when_warm = cuda::memory_stats(0).num_device_allocs;
    }
    if (device.is_cuda()) {
      EXPECT_EQ(cuda::memory_stats(0).num_device_allocs, allocs_when_warm) << "cudaMalloc in steps 5-8";
    }
    return losses;
  };
  manual_seed(5);
  nn::models::GPT on_cpu(options);
  manual_seed(5);
  nn::models::GPT on_gpu(options);
  manual_seed(5);
  nn::models::GPT on_gpu_bf16(options);
  const std::vector<double> cpu = run(Device::cpu(), DType::kF32, on_cpu);
  const std::vector<double> gpu = run(kGpu, DType::kF32, on_gpu);
  const std::vector<double> bf16 = run(kGpu, DType::kBF16, on_gpu_bf16);
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_NEAR(gpu[i], cpu[i], 1e-4 * cpu[i]) << "step " << i;
    EXPECT_NEAR(bf16[i], cpu[i], 3e-2 * cpu[i]) << "step " << i;
  }
  const auto pc = on_cpu.named_parameters(), pg = on_gpu.named_parameters();
  for (size_t i = 0; i < pc.size(); ++i)
    EXPECT_LE(tandem::testing::relative_error(pg[i].second.cpu(), pc[i].second), 1e-4) << pg[i].first;
}

TEST(CudaTraining, GptGenerationOnTheGpuMatchesTheCpu) {
  // Greedy decoding in f64 with random weights (no near-ties): the cached steps, then
  // the sliding window past block_size 16, give the CPU's tokens.
  TANDEM_REQUIRE_CUDA();
  manual_seed(8);
  nn::models::GPT on_cpu({.vocab_size = 40, .block_size = 16, .n_layer = 2, .n_head = 4, .n_embd = 32});
  on_cpu.to(DType::kF64);
  {
    autograd::NoGradGuard no_grad;
    uint64_t seed = 70;
    for (auto& [name, p] : on_cpu.named_parameters()) p.copy_(random_tensor(p.shape(), seed++, DType::kF64));
  }
  auto on_gpu = std::dynamic_pointer_cast<nn::models::GPT>(on_cpu.clone());
  on_gpu->to(kGpu);
  const nn::models::GenerateOptions greedy{.max_new_tokens = 24, .temperature = 0.0};
  const std::vector<int64_t> prompt{3, 14, 15, 9, 2};
  EXPECT_EQ(on_gpu->generate(prompt, greedy), on_cpu.generate(prompt, greedy));
  // Seeded sampling draws from the same distribution with the same generator.
  const nn::models::GenerateOptions sampled{.max_new_tokens = 24, .temperature = 1.0, .top_k = 10, .seed = 5};
  EXPECT_EQ(on_gpu->generate(prompt, sampled), on_cpu.generate(prompt, sampled));
}

// ---- tandem-train on the GPU -----------------------------------------------------------------

struct TrainRun {
  int status = -1;
  std::string output;
  nlohmann::json result;  // tandem-train's one-line JSON summary (null when missing)
};

/// Runs tandem-train with `args` on Fashion-MNIST (stdout and stderr together, at most
/// `timeout_s` seconds) and parses its JSON summary.
TrainRun tandem_train(const std::string& args, int timeout_s = 120,
                      const std::string& data = TANDEM_FASHION_MNIST_DIR) {
  const std::string binary = std::string(TANDEM_BINARY_DIR) + "/apps/tandem-train";
  TrainRun run;
  const std::string command =
      "timeout " + std::to_string(timeout_s) + " '" + binary + "' --data '" + data + "' " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe) != nullptr) run.output += buffer;
  const int status = pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  // The summary is the last line that parses as a JSON object with a test accuracy
  // (a library may print after it).
  size_t begin = 0;
  while (begin < run.output.size()) {
    size_t end = run.output.find('\n', begin);
    if (end == std::string::npos) end = run.output.size();
    const std::string line = run.output.substr(begin, end - begin);
    if (!line.empty() && line.front() == '{') {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("test_acc")) run.result = j;
    }
    begin = end + 1;
  }
  return run;
}

#define REQUIRE_TANDEM_TRAIN()                                                                          \
  do {                                                                                                  \
    TANDEM_REQUIRE_CUDA();                                                                              \
    SKIP_UNDER_MEMCHECK();                                                                              \
    if (!std::filesystem::exists(std::string(TANDEM_BINARY_DIR) + "/apps/tandem-train"))                \
      GTEST_SKIP() << "tandem-train not built (TANDEM_BUILD_APPS=OFF)";                                 \
    if (!std::filesystem::exists(std::string(TANDEM_FASHION_MNIST_DIR) + "/train-images-idx3-ubyte.gz") && \
        !std::filesystem::exists(std::string(TANDEM_FASHION_MNIST_DIR) + "/train-images-idx3-ubyte"))      \
      GTEST_SKIP() << "Fashion-MNIST not in " << TANDEM_FASHION_MNIST_DIR;                              \
  } while (0)

/// Checks a finished run: exit 0, on a GPU, test accuracy at least `min_acc`.
void expect_trained(const TrainRun& run, double min_acc) {
  ASSERT_EQ(run.status, 0) << run.output;
  ASSERT_TRUE(run.result.is_object()) << "no JSON summary line:\n" << run.output;
  EXPECT_NE(run.result["device"].get<std::string>().find("cuda"), std::string::npos) << run.result.dump();
  EXPECT_GE(run.result["test_acc"].get<double>(), min_acc) << run.result.dump();
}

/// One tandem-train run on Fashion-MNIST (or synthetic images): its flags, the least
/// test accuracy, and fields its JSON summary must hold. One run per test, so each stays
/// well inside ctest's per-test limit (gpu-check: 150 s).
struct TrainCase {
  std::string name;
  std::string args;
  double min_acc;
  nlohmann::json expect;  // summary fields and their values
};

/// Names a case by its flags in gtest's output (instead of the struct's bytes).
void PrintTo(const TrainCase& c, std::ostream* os) { *os << "tandem-train " << c.args; }

class CudaTandemTrain : public ::testing::TestWithParam<TrainCase> {};

TEST_P(CudaTandemTrain, TrainsOnTheGpu) {
  REQUIRE_TANDEM_TRAIN();
  const TrainCase& c = GetParam();
  const TrainRun run = tandem_train(c.args);
  expect_trained(run, c.min_acc);
  for (const auto& [key, value] : c.expect.items()) EXPECT_EQ(run.result[key], value) << key;
}

TEST(CudaTraining, TandemTrainGptOnTextInBf16) {
  // The CPU ctest tandem_train_gpt_text_cpu's run, on the GPU in bf16 with the cached
  // sampling at the end: it learns the generated text's sentence and writes it back.
  REQUIRE_TANDEM_TRAIN();
  const std::string text = std::string(TANDEM_BINARY_DIR) + "/tests/quick_brown_fox.txt";
  if (!std::filesystem::exists(text)) GTEST_SKIP() << text << " not generated (configure the tests)";
  const TrainRun run = tandem_train(
      "--model gpt-mini --dataset text --n-layer 2 --n-head 2 --n-embd 64 --block-size 64 --batch-size 16 "
      "--optimizer adamw --lr 3e-3 --epochs 3 --temperature 0 --sample-tokens 120 --device cuda --precision bf16",
      120, text);
  expect_trained(run, 0.8);
  EXPECT_NE(run.result["sample"].get<std::string>().find("quick brown fox"), std::string::npos) << run.result.dump();
}

INSTANTIATE_TEST_SUITE_P(
    CudaTraining, CudaTandemTrain,
    ::testing::Values(
        // The CPU ctest tandem_train_cnn_two_epochs_cpu checks the same 0.88.
        TrainCase{"CnnReachesTheReadmeAccuracyInTwoEpochs", "--model cnn --epochs 2 --device cuda", 0.88, {}},
        TrainCase{"Bf16", "--model cnn --epochs 1 --device cuda --precision bf16", 0.85, {{"precision", "bf16"}}},
        TrainCase{"Fp16WithLossScaling", "--model cnn --epochs 1 --device cuda --precision fp16", 0.85,
                  {{"precision", "fp16"}}},
        TrainCase{"Tf32", "--model cnn --epochs 1 --device cuda --tf32", 0.85, {{"tf32", true}}},
        TrainCase{"DataParallelWithTheGpuListedTwice", "--model cnn --epochs 1 --device cuda --strategy dp --devices 2",
                  0.85, {{"strategy", "dp"}}},
        // Ranks as threads of one process; 64 per rank, 128 in all as the single-GPU runs.
        TrainCase{"DdpTwoLocalRanksSharingTheGpu",
                  "--model cnn --epochs 1 --device cuda --strategy ddp --devices 2 --backend local --batch-size 64",
                  0.85, {{"strategy", "ddp"}, {"world_size", 2}}},
        // One rank in this process over NCCL, as on a one-GPU node.
        TrainCase{"DdpOverNcclAtWorldSizeOne", "--model cnn --epochs 1 --device cuda --strategy ddp --devices 1", 0.85,
                  {{"backend", "nccl"}}},
        // The README's main job replayed as CUDA graphs, f16 scaler and DDP over NCCL included.
        TrainCase{"CudaGraphFp16", "--model cnn --epochs 1 --device cuda --cuda-graph --precision fp16", 0.85,
                  {{"cuda_graph", true}}},
        TrainCase{"CudaGraphDdpOverNcclWithAccumulation",
                  "--model cnn --epochs 1 --device cuda --cuda-graph --strategy ddp --devices 1 --accumulate 2 "
                  "--batch-size 64",
                  0.85, {{"cuda_graph", true}, {"backend", "nccl"}}},
        TrainCase{"CheckpointingWithAccumulation",
                  "--model cnn --epochs 1 --device cuda --grad-checkpoint --accumulate 2 --batch-size 64", 0.85, {}},
        // Random images: it runs end to end (accuracy is chance there).
        TrainCase{"ResNet18Bf16",
                  "--model resnet18 --dataset synthetic --synthetic-shape 3,32,32 --synthetic-samples 1024 "
                  "--batch-size 64 --epochs 1 --device cuda --precision bf16",
                  0.0, {}}),
    [](const ::testing::TestParamInfo<TrainCase>& info) { return info.param.name; });

}  // namespace
}  // namespace tandem::train
