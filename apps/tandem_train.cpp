// tandem-train: trains a model (MLP, CNN, ResNet-18) on Fashion-MNIST, CIFAR-10 or
// synthetic images, or a GPT on a text file (character level), on one device, several devices of one process (dp) or one process
// per device (ddp, spawning its own workers or joining a launcher's job), and ends with
// one JSON line of results from rank 0. Every bad flag or missing file gets a one-line
// error and a non-zero exit status.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/data_parallel.h"
#include "comm/ddp.h"
#include "comm/spawn.h"
#include "comm/sync_batchnorm.h"
#include "tandem.h"
#include "train/trainer.h"

using namespace tandem;

namespace {

struct Config {
  std::string model = "cnn";
  std::string dataset = "fashion-mnist";
  int64_t epochs = 1;
  int64_t batch_size = 128;
  std::string optimizer = "sgd";
  std::optional<double> lr;            // sgd 0.05, adam/adamw 1e-3
  double momentum = 0.9;
  std::optional<double> weight_decay;  // sgd 5e-4, adam 0, adamw 1e-2
  std::string schedule = "constant";
  int64_t step_size = 0;  // epochs between step decays; 0: a third of the run
  double gamma = 0.1;
  int64_t warmup_epochs = 0;
  int64_t warmup_steps = 0;
  double clip_grad_norm = 0;  // 0: no clipping
  std::string device = "auto";
  uint64_t seed = 0;
  std::string data;  // default per data set
  int64_t synthetic_samples = 10000;
  std::string synthetic_shape = "1,28,28";
  // GPTs on --dataset text: the preset's sizes unless given.
  std::optional<int64_t> block_size, n_layer, n_head, n_embd;
  double dropout = 0.0;
  int64_t sample_tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 40;
  std::string metrics;
  int64_t log_every = 100;
  // Multi-device training.
  std::string strategy = "single";
  std::optional<int> devices;  // default: see --devices
  std::string backend = "auto";
  bool sync_bn = false;
  std::optional<double> bucket_cap_mb;  // DDPOptions' default
  bool find_unused_parameters = false;
  bool static_graph = false;
  bool no_broadcast_buffers = false;
  std::string scale_lr = "none";
  // Precision, accumulation, activation checkpointing.
  std::string precision = "fp32";
  bool tf32 = false;
  int64_t accumulate = 1;
  bool grad_checkpoint = false;
  bool cuda_graph = false;
  // Checkpoints and logs.
  std::string checkpoint_dir;
  int64_t checkpoint_every = 0;
  int keep_last = 3;
  std::string resume;
  std::string metrics_csv;
  int64_t metrics_every_steps = 0;
};

// Set by a spawning tandem-train in its workers: "1" when its stderr is a terminal,
// so rank 0 redraws one progress line in place as a single process would.
constexpr const char* kTerminalVar = "TANDEM_TRAIN_STDERR_IS_TERMINAL";

// An error that ends the run with `status`; thrown where fail() cannot be called
// (training may run on several threads of one process).
struct RunError : std::runtime_error {
  RunError(const std::string& message, int status) : std::runtime_error(message), status(status) {}
  int status;
};

// A validator that parses the value as a number and checks it with `ok`,
// saying what was expected and what was got.
CLI::Validator number_check(const std::string& expected, bool (*ok)(double)) {
  return CLI::Validator(
      [expected, ok](std::string& text) -> std::string {
        size_t used = 0;
        double v = 0;
        try {
          v = std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != text.size()) return "expected a number, got \"" + text + "\"";
        if (!ok(v)) return "expected " + expected + ", got " + text;
        return std::string();
      },
      expected);
}
const CLI::Validator kPositive = number_check("a value > 0", [](double v) { return v > 0; });
const CLI::Validator kNonNegative = number_check("a value >= 0", [](double v) { return v >= 0; });
const CLI::Validator kUnitInterval = number_check("a value in [0, 1)", [](double v) { return v >= 0 && v < 1; });

[[noreturn]] void fail(const std::string& message, int status = 2) {
  std::fprintf(stderr, "tandem-train: error: %s\n", message.c_str());
  std::exit(status);
}

Device resolve_device(const std::string& name) {
  if (name == "auto") return cuda::is_available() ? Device::cuda(0) : Device::cpu();
  Device d = Device::parse(name);
  if (d.is_cuda() && d.index >= cuda::device_count()) {
    if (cuda::device_count() == 0) fail("--device " + name + ": no CUDA device (" + cuda::unavailable_reason() + ")");
    fail("--device " + name + ": only " + std::to_string(cuda::device_count()) + " CUDA device(s) present");
  }
  return d;
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != part.size() || v < 1) fail("--synthetic-shape: expected C,H,W with positive extents, got \"" + text + "\"");
    shape.push_back(v);
  }
  if (shape.size() != 3) fail("--synthetic-shape: expected three extents C,H,W, got \"" + text + "\"");
  return shape;
}

struct Datasets {
  std::shared_ptr<data::Dataset> train, test;
};

bool is_gpt(const Config& cfg) { return cfg.model == "gpt-mini" || cfg.model == "gpt2"; }

// The GPT of --model with --block-size/--n-layer/--n-head/--n-embd/--dropout applied
// (vocab_size is the data set's).
nn::models::GPTOptions gpt_options(const Config& cfg) {
  nn::models::GPTOptions o =
      cfg.model == "gpt2" ? nn::models::GPTOptions::gpt2_small() : nn::models::GPTOptions::gpt_mini();
  o.block_size = cfg.block_size.value_or(o.block_size);
  o.n_layer = cfg.n_layer.value_or(o.n_layer);
  o.n_head = cfg.n_head.value_or(o.n_head);
  o.n_embd = cfg.n_embd.value_or(o.n_embd);
  o.dropout = cfg.dropout;
  if (o.n_embd % o.n_head != 0)
    fail("--n-embd " + std::to_string(o.n_embd) + " must be a multiple of --n-head " + std::to_string(o.n_head));
  return o;
}

// The data set's directory (the text file for --dataset text); fails naming it when it
// does not exist.
std::string data_dir(const Config& cfg) {
  if (cfg.dataset == "text") {
    if (cfg.data.empty()) fail("--dataset text needs --data FILE (a text file; any bytes are characters)");
    if (!std::filesystem::is_regular_file(cfg.data)) fail("--data " + cfg.data + ": no such file");
    return cfg.data;
  }
  std::string dir = cfg.data;
  if (dir.empty()) dir = cfg.dataset == "cifar10" ? data::kCifar10DefaultDir : data::kFashionMnistDefaultDir;
  if (!std::filesystem::is_directory(dir)) {
    fail("--data " + dir + ": no such directory (" +
         (cfg.dataset == "cifar10" ? std::string("unpack CIFAR-10's binary version there")
                                   : std::string("install Debian's dataset-fashion-mnist or pass --data DIR")) +
         ")");
  }
  return dir;
}

Datasets make_datasets(const Config& cfg) {
  if (cfg.dataset == "synthetic") {
    Shape shape = parse_shape(cfg.synthetic_shape);
    // The test split draws other samples from the same class prototypes (same seed,
    // indices past the training ones would need a larger n: use an offset seed's noise).
    auto train = std::make_shared<data::SyntheticImages>(cfg.synthetic_samples, shape, 10, cfg.seed);
    auto test = std::make_shared<data::SyntheticImages>(std::max<int64_t>(cfg.synthetic_samples / 5, 1), shape, 10, cfg.seed);
    return {train, test};
  }
  const std::string dir = data_dir(cfg);
  if (cfg.dataset == "text") {
    const data::CharTextOptions o{.block_size = gpt_options(cfg).block_size};
    return {std::make_shared<data::CharText>(dir, data::Split::kTrain, o),
            std::make_shared<data::CharText>(dir, data::Split::kTest, o)};
  }
  if (cfg.dataset == "cifar10")
    return {std::make_shared<data::CIFAR10>(dir, data::Split::kTrain), std::make_shared<data::CIFAR10>(dir, data::Split::kTest)};
  return {std::make_shared<data::FashionMNIST>(dir, data::Split::kTrain),
          std::make_shared<data::FashionMNIST>(dir, data::Split::kTest)};
}

std::shared_ptr<nn::Module> make_model(const Config& cfg, const Datasets& sets) {
  if (is_gpt(cfg)) {
    nn::models::GPTOptions o = gpt_options(cfg);
    o.vocab_size = dynamic_cast<const data::CharText&>(*sets.train).vocab_size();
    return std::make_shared<nn::models::GPT>(o);
  }
  const Shape input = sets.train->input_shape();
  const int64_t channels = input[0], size = input[1];
  if (cfg.model == "mlp") return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = shape_numel(input)});
  if (cfg.model == "cnn") {
    if (input[1] != input[2] || size < 4)
      fail("--model cnn: expected square images of at least 4x4, got shape " + shape_str(input));
    return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = channels, .image_size = size});
  }
  return std::make_shared<nn::models::ResNet18>(nn::models::ResNetOptions{.in_channels = channels});
}

// How the run is laid out, decided from the flags (and the launcher's environment)
// before any data is loaded.
struct Plan {
  std::string strategy = "single";
  /// ddp: "nccl", "gloo" or "local"; "none" otherwise.
  std::string backend = "none";
  /// ddp: ranks (processes, or threads with the local backend); dp: replicas; single: 1.
  int devices = 1;
  /// dp: the replicas' devices.
  std::vector<Device> dp_devices;
  /// single: the device; dp: the first replica's; ddp: the kind (each rank picks its GPU).
  Device device;
  /// Samples per optimizer step over all ranks/replicas.
  int64_t global_batch = 0;
  /// --scale-lr linear: the lr is multiplied by this (the world size).
  int64_t lr_scale = 1;
};

// Where one rank trains: its group (ddp only), its rank and its device.
struct RankContext {
  std::shared_ptr<comm::ProcessGroup> group;
  int rank = 0;
  int world_size = 1;
  Device device;
};

// The Trainer's configuration for this rank from the flags and the plan.
train::TrainerConfig trainer_config(const Config& cfg, const Plan& plan, const RankContext& ctx, int64_t train_size) {
  train::TrainerConfig t;
  t.epochs = cfg.epochs;
  t.batch_size = cfg.batch_size;
  t.val_batch_size = 1000;
  t.accumulate = cfg.accumulate;
  t.grad_checkpoint = cfg.grad_checkpoint;
  t.cuda_graph = cfg.cuda_graph;
  t.seed = cfg.seed;
  auto& s = t.strategy;
  s.mode = plan.strategy;
  if (plan.strategy == "dp") {
    s.devices = plan.dp_devices;
  } else {
    s.devices = {ctx.device};
  }
  s.sync_bn = cfg.sync_bn;
  s.ddp.find_unused_parameters = cfg.find_unused_parameters;
  s.ddp.static_graph = cfg.static_graph;
  s.ddp.broadcast_buffers = !cfg.no_broadcast_buffers;
  if (cfg.bucket_cap_mb) s.ddp.bucket_cap_mb = *cfg.bucket_cap_mb;
  t.precision.use_amp = cfg.precision != "fp32";
  t.precision.amp_dtype = cfg.precision == "fp16" ? DType::kF16 : DType::kBF16;
  if (cfg.tf32) t.precision.allow_tf32 = true;
  auto& o = t.optimizer;
  o.name = cfg.optimizer;
  o.lr = cfg.lr.value_or(cfg.optimizer == "sgd" ? 0.05 : 1e-3);
  o.momentum = cfg.momentum;
  o.weight_decay = cfg.weight_decay.value_or(cfg.optimizer == "sgd" ? 5e-4 : cfg.optimizer == "adam" ? 0.0 : 1e-2);
  o.clip_grad_norm = cfg.clip_grad_norm;
  // Optimizer steps per epoch, for epoch-based settings.
  const int64_t shard = plan.strategy == "ddp" ? (train_size + ctx.world_size - 1) / ctx.world_size : train_size;
  const int64_t steps_per_epoch = ((shard + cfg.batch_size - 1) / cfg.batch_size + cfg.accumulate - 1) / cfg.accumulate;
  auto& sc = t.schedule;
  sc.name = cfg.schedule;
  sc.warmup_steps = cfg.warmup_epochs > 0 ? cfg.warmup_epochs * steps_per_epoch : cfg.warmup_steps;
  sc.step_size_epochs = cfg.step_size > 0 ? cfg.step_size : std::max<int64_t>(1, cfg.epochs / 3);
  sc.gamma = cfg.gamma;
  sc.scale_lr_linear = cfg.scale_lr == "linear";
  if (sc.warmup_steps >= cfg.epochs * steps_per_epoch && cfg.schedule != "constant")
    throw RunError("--warmup-epochs/--warmup-steps: the warm-up (" + std::to_string(sc.warmup_steps) +
                       " steps) must be shorter than the run (" + std::to_string(cfg.epochs * steps_per_epoch) +
                       " steps)",
                   2);
  auto& k = t.checkpoint;
  k.dir = cfg.checkpoint_dir;
  k.every_steps = cfg.checkpoint_every;
  k.keep_last = cfg.keep_last;
  k.resume = cfg.resume;
  if (k.dir.empty()) k.best_metric = "";
  auto& l = t.logging;
  l.jsonl = cfg.metrics;
  l.csv = cfg.metrics_csv;
  l.log_every_steps = cfg.metrics_every_steps;
  l.progress_every = cfg.log_every;
  if (const char* term = std::getenv(kTerminalVar)) l.terminal = std::string(term) == "1";
  return t;
}

// Trains `model` as one rank of `plan` (the only rank for single and dp) with the
// Trainer. Only rank 0 prints progress and the final JSON line. Throws RunError or any
// library error.
void train_rank(const Config& cfg, const Plan& plan, const Datasets& sets, std::shared_ptr<nn::Module> model,
                const RankContext& ctx) {
  train::Trainer trainer(trainer_config(cfg, plan, ctx, sets.train->size()), model, sets.train, sets.test, ctx.group);
  try {
    trainer.fit();
  } catch (const train::TrainingDiverged& e) {
    throw RunError(e.what(), 3);
  }
  if (trainer.rank() != 0) return;
  // A language model writes a sample, continuing the test split's first character.
  std::string sample;
  if (auto* gpt = dynamic_cast<nn::models::GPT*>(model.get()); gpt != nullptr && cfg.sample_tokens > 0) {
    const auto& text = dynamic_cast<const data::CharText&>(*sets.test);
    sample = text.decode(gpt->generate({text.tokens().front()}, {.max_new_tokens = cfg.sample_tokens,
                                                                 .temperature = cfg.temperature,
                                                                 .top_k = cfg.top_k,
                                                                 .seed = cfg.seed}));
    std::fprintf(stderr, "sample (%lld tokens, temperature %g, top-k %lld):\n%s\n", static_cast<long long>(cfg.sample_tokens),
                 cfg.temperature, static_cast<long long>(cfg.top_k), sample.c_str());
    std::fflush(stderr);
  }
  const auto& history = trainer.history();
  const train::EpochMetrics& last = history.back();
  double seconds = 0, samples = 0;
  int64_t skipped = 0;
  for (const auto& e : history) {
    seconds += e.seconds;
    samples += e.samples_per_s * e.seconds;
    skipped += e.skipped_steps;
  }
  std::printf("%s\n", train::to_json({{"model", cfg.model},
                                      {"dataset", cfg.dataset},
                                      {"epochs", cfg.epochs},
                                      {"strategy", plan.strategy},
                                      {"world_size", static_cast<int64_t>(trainer.world_size())},
                                      {"backend", plan.backend},
                                      {"devices", static_cast<int64_t>(plan.devices)},
                                      {"device", trainer.device().str()},
                                      {"batch_size", cfg.batch_size},
                                      {"accumulate", cfg.accumulate},
                                      {"global_batch_size", plan.global_batch * cfg.accumulate},
                                      {"precision", cfg.precision},
                                      {"tf32", cfg.tf32},
                                      {"grad_checkpoint", cfg.grad_checkpoint},
                                      {"cuda_graph", cfg.cuda_graph},
                                      {"optimizer", cfg.optimizer},
                                      {"lr", last.lr},
                                      {"schedule", cfg.schedule},
                                      {"test_acc", last.val_acc},
                                      {"test_loss", last.val_loss},
                                      {"test_samples", last.val_samples},
                                      {"skipped_steps", skipped},
                                      {"loss_scale", last.loss_scale},
                                      {"resumed_from", trainer.resumed_from()},
                                      {"train_samples_per_s", seconds > 0 ? samples / seconds : 0.0},
                                      {"sample", sample}})
                          .c_str());
  std::fflush(stdout);
}

// The device kind for dp and ddp: "auto", "cpu" or "cuda" (ranks and replicas pick
// their own index).
Device resolve_device_kind(const Config& cfg) {
  if (cfg.device.rfind("cuda:", 0) == 0)
    fail("--device " + cfg.device + ": with --strategy " + cfg.strategy +
         " every rank or replica picks its own GPU; expected auto, cpu or cuda");
  return resolve_device(cfg.device);
}

// Checks the flags that only some strategies take, and lays the run out.
Plan make_plan(const Config& cfg, const CLI::App& app) {
  Plan plan;
  plan.strategy = cfg.strategy;
  const bool is_ddp = cfg.strategy == "ddp";
  const char* ddp_only[] = {"--backend", "--sync-bn", "--bucket-cap-mb", "--find-unused-parameters",
                            "--static-graph", "--no-broadcast-buffers", "--scale-lr"};
  if (!is_ddp) {
    for (const char* flag : ddp_only)
      if (app.count(flag) > 0) {
        std::string why;
        if (cfg.strategy == "dp" && std::string(flag) == "--backend")
          why = " (dp runs its replicas as threads of one process and needs no backend)";
        if (cfg.strategy == "dp" && std::string(flag) == "--scale-lr")
          why = " (with dp, --batch-size is already the global batch)";
        fail(std::string(flag) + " applies to --strategy ddp only, got --strategy " + cfg.strategy + why);
      }
  }
  if (cfg.strategy == "single") {
    if (cfg.devices) fail("--devices applies to --strategy dp or ddp, got --strategy single");
    plan.device = resolve_device(cfg.device);
    plan.global_batch = cfg.batch_size;
    return plan;
  }
  plan.device = resolve_device_kind(cfg);
  if (cfg.strategy == "dp") {
    if (!cfg.devices && !plan.device.is_cuda())
      fail("--strategy dp on the CPU needs --devices N (N replicas on the CPU, for tests)");
    plan.devices = cfg.devices.value_or(cuda::device_count());
    // More replicas than GPUs list GPUs again (one GPU listed twice is DataParallel's
    // test on a one-GPU machine).
    for (int i = 0; i < plan.devices; ++i)
      plan.dp_devices.push_back(plan.device.is_cuda() ? Device::cuda(i % cuda::device_count()) : Device::cpu());
    plan.device = plan.dp_devices[0];
    plan.global_batch = cfg.batch_size;
    return plan;
  }
  // ddp
  comm::LaunchEnv env;
  try {
    env = comm::launch_env();
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }
  if (env.launcher != "none") {
    if (cfg.devices && *cfg.devices != env.world_size)
      fail("--devices " + std::to_string(*cfg.devices) + " does not match the launcher's world size " +
           std::to_string(env.world_size) + " (" + env.launcher + "); omit --devices under a launcher");
    if (cfg.backend == "local" && env.world_size > 1)
      fail("--backend local runs ranks as threads of one process; it cannot join a launcher's job of " +
           std::to_string(env.world_size) + " processes (use gloo or nccl)");
    plan.devices = env.world_size;
  } else {
    plan.devices = cfg.devices.value_or(plan.device.is_cuda() ? cuda::device_count() : 1);
  }
  plan.backend = cfg.backend;
  if (plan.backend == "auto") plan.backend = plan.device.is_cuda() ? "nccl" : "gloo";
  if (plan.backend != "local") {
    try {
      comm::resolve_backend(plan.backend, plan.devices);
    } catch (const std::invalid_argument& e) {
      fail(std::string("--backend ") + plan.backend + ": " + e.what());
    }
  }
  if (plan.backend == "nccl" && !plan.device.is_cuda())
    fail("--backend nccl reduces CUDA tensors; expected --device cuda or auto, got --device " + cfg.device);
  if (plan.backend == "gloo" && plan.device.is_cuda())
    fail("--backend gloo reduces CPU tensors; expected --device cpu with gloo, got --device " + cfg.device +
         " (use --backend nccl or local for GPUs)");
  plan.global_batch = cfg.batch_size * plan.devices;
  if (cfg.scale_lr == "linear") plan.lr_scale = plan.devices;
  return plan;
}

// The device of rank `rank` (its LOCAL_RANK for processes): one GPU each, round robin.
Device rank_device(const Plan& plan, int local_rank) {
  return plan.device.is_cuda() ? Device::cuda(local_rank % cuda::device_count()) : Device::cpu();
}

// ddp without a launcher: this program again, once per rank, with the torchrun-style
// environment; rank 0's output is passed on as is, other ranks' only when it is an error.
int spawn_ranks(const Plan& plan, int argc, char** argv) {
  comm::SpawnOptions options;
  options.nproc = plan.devices;
  options.name = "tandem-train";
  options.output = comm::WorkerOutput::kRankZeroOnly;
  options.grace_s = 5;
  // A MASTER_PORT of our own environment is honoured, else the kernel picks a free one.
  const char* port = std::getenv("MASTER_PORT");
  options.master_port = port != nullptr ? std::atoi(port) : 0;
  if (const char* addr = std::getenv("MASTER_ADDR")) options.master_addr = addr;
  options.command.push_back(std::filesystem::read_symlink("/proc/self/exe").string());
  for (int i = 1; i < argc; ++i) options.command.emplace_back(argv[i]);
  // Each CPU rank runs its own OpenMP team; without a limit N teams of all cores each
  // would oversubscribe the machine (torchrun sets OMP_NUM_THREADS=1 for the same reason).
  if (std::getenv("OMP_NUM_THREADS") == nullptr && !plan.device.is_cuda()) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    options.env.emplace_back("OMP_NUM_THREADS", std::to_string(std::max(1u, cores / static_cast<unsigned>(plan.devices))));
  }
  options.env.emplace_back(kTerminalVar, isatty(STDERR_FILENO) ? "1" : "0");
  return comm::run_workers(options);
}

// ddp with the local backend: one thread per rank, each with its own model (made here,
// one after another, since the global generator is shared) and its own group member.
void run_local_ranks(const Config& cfg, const Plan& plan, const Datasets& sets) {
  std::vector<std::shared_ptr<nn::Module>> models;
  for (int r = 0; r < plan.devices; ++r) {
    manual_seed(cfg.seed);
    models.push_back(make_model(cfg, sets));
  }
  auto groups = comm::make_local_group(plan.devices);
  std::vector<std::thread> threads;
  for (int r = 0; r < plan.devices; ++r) {
    threads.emplace_back([&, r] {
      try {
        train_rank(cfg, plan, sets, models[r], {groups[r], r, plan.devices, rank_device(plan, r)});
      } catch (const std::exception& e) {
        // The other ranks would wait in their next collective until it times out: the
        // first error ends the process.
        const int status = dynamic_cast<const RunError*>(&e) ? static_cast<const RunError&>(e).status : 1;
        // Prefixed as the output of spawned ranks is.
        const std::string prefix = r > 0 ? "[rank " + std::to_string(r) + "] " : "";
        std::fflush(stdout);
        std::fprintf(stderr, "%standem-train: error: %s\n", prefix.c_str(), e.what());
        std::fflush(stderr);
        _exit(status);
      }
    });
  }
  for (auto& t : threads) t.join();
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"Train a model with Tandem and print one JSON line of results."};
  app.add_option("--model", cfg.model,
                 "Model: mlp, cnn, resnet18 (image data sets), or gpt-mini (6 layers, 6 heads, 384 wide, 256 "
                 "positions) or gpt2 (GPT-2 small) with --dataset text")
      ->check(CLI::IsMember({"mlp", "cnn", "resnet18", "gpt-mini", "gpt2"}))
      ->capture_default_str();
  app.add_option("--dataset", cfg.dataset, "Data set; text: a character-level language model of --data FILE")
      ->check(CLI::IsMember({"fashion-mnist", "cifar10", "synthetic", "text"}))
      ->capture_default_str();
  app.add_option("--data", cfg.data, "Directory of the data set's files (default: /usr/share/datasets/fashion-mnist "
                                     "for fashion-mnist, ./cifar-10-batches-bin for cifar10); the file for text");
  app.add_option("--epochs", cfg.epochs, "Epochs")->check(kPositive)->capture_default_str();
  app.add_option("--batch-size", cfg.batch_size,
                 "Samples per batch: per rank with --strategy ddp (as PyTorch DDP: the global batch is "
                 "devices x batch size), the global batch with single and dp")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--optimizer", cfg.optimizer, "Optimizer")->check(CLI::IsMember({"sgd", "adam", "adamw"}))->capture_default_str();
  app.add_option("--lr", cfg.lr, "Learning rate (default 0.05 for sgd, 1e-3 for adam and adamw)")->check(kPositive);
  app.add_option("--momentum", cfg.momentum, "SGD momentum")->check(kUnitInterval)->capture_default_str();
  app.add_option("--weight-decay", cfg.weight_decay, "Weight decay (default 5e-4 for sgd, 0 for adam, 1e-2 for adamw)")
      ->check(kNonNegative);
  app.add_option("--schedule", cfg.schedule, "Learning-rate schedule, stepped every optimizer step")
      ->check(CLI::IsMember({"constant", "step", "cosine"}))
      ->capture_default_str();
  app.add_option("--step-size", cfg.step_size, "Epochs between decays of --schedule step (default: a third of the run)")
      ->check(kPositive);
  app.add_option("--gamma", cfg.gamma, "Decay factor of --schedule step")->check(kPositive)->capture_default_str();
  auto* warmup_epochs = app.add_option("--warmup-epochs", cfg.warmup_epochs, "Linear warm-up from 10% of the lr, in epochs")
                            ->check(kPositive);
  app.add_option("--warmup-steps", cfg.warmup_steps, "Linear warm-up from 10% of the lr, in optimizer steps")
      ->check(kPositive)
      ->excludes(warmup_epochs);
  app.add_option("--clip-grad-norm", cfg.clip_grad_norm, "Clip the global L2 norm of the gradients to this value")
      ->check(kPositive);
  app.add_option("--device", cfg.device,
                 "auto, cpu, cuda or cuda:N (dp and ddp: auto, cpu or cuda; each rank or replica picks its GPU)")
      ->capture_default_str();
  app.add_option("--seed", cfg.seed, "Seed for initialisation and shuffling")->capture_default_str();
  app.add_option("--synthetic-samples", cfg.synthetic_samples, "Training samples of --dataset synthetic")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--synthetic-shape", cfg.synthetic_shape, "Image shape C,H,W of --dataset synthetic")->capture_default_str();
  app.add_option("--metrics", cfg.metrics, "Write per-epoch metrics to this JSON Lines file (rank 0)");
  app.add_option("--log-every", cfg.log_every, "Steps between log lines when not on a terminal")
      ->check(kPositive)
      ->capture_default_str();
  const std::string lm = "Language models (--model gpt-mini or gpt2, --dataset text)";
  app.add_option("--block-size", cfg.block_size, "Context in characters (default: the model's, 256 or 1024)")
      ->check(kPositive)
      ->group(lm);
  app.add_option("--n-layer", cfg.n_layer, "Transformer blocks (default: the model's)")->check(kPositive)->group(lm);
  app.add_option("--n-head", cfg.n_head, "Attention heads (default: the model's)")->check(kPositive)->group(lm);
  app.add_option("--n-embd", cfg.n_embd, "Width, a multiple of --n-head (default: the model's)")->check(kPositive)->group(lm);
  app.add_option("--dropout", cfg.dropout, "After the embeddings and on each residual branch")
      ->check(kUnitInterval)
      ->capture_default_str()
      ->group(lm);
  app.add_option("--sample-tokens", cfg.sample_tokens,
                 "Characters to generate after training (rank 0, on stderr and in the JSON line); 0: none")
      ->check(kNonNegative)
      ->capture_default_str()
      ->group(lm);
  app.add_option("--temperature", cfg.temperature, "Sampling temperature (0: greedy)")
      ->check(kNonNegative)
      ->capture_default_str()
      ->group(lm);
  app.add_option("--top-k", cfg.top_k, "Sample among the k most likely characters (0: all)")
      ->check(kNonNegative)
      ->capture_default_str()
      ->group(lm);
  const std::string multi = "Multi-device training";
  app.add_option("--strategy", cfg.strategy,
                 "single: one device; dp: DataParallel, one process driving --devices replicas; ddp: "
                 "DistributedDataParallel, one process per device")
      ->check(CLI::IsMember({"single", "dp", "ddp"}))
      ->capture_default_str()
      ->group(multi);
  app.add_option("--devices", cfg.devices,
                 "ddp: ranks to start when no launcher (tandemrun, torchrun, srun, mpirun) started this "
                 "process, spawning this program once per rank (under a launcher: omit, or its world size); "
                 "dp: replicas, the CUDA devices in turn, or N copies of the CPU when there is no GPU (useful "
                 "for tests only). Default: the number of GPUs; without one, ddp runs 1 rank and dp needs --devices")
      ->check(number_check("an integer >= 1", [](double v) { return v >= 1; }))
      ->group(multi);
  app.add_option("--backend", cfg.backend,
                 "ddp: auto (nccl for GPUs, gloo for the CPU), nccl, gloo, or local (ranks as threads of "
                 "this process)")
      ->check(CLI::IsMember({"auto", "nccl", "gloo", "local"}))
      ->capture_default_str()
      ->group(multi);
  app.add_flag("--sync-bn", cfg.sync_bn, "ddp: batch-norm statistics over the batches of all ranks")->group(multi);
  app.add_option("--bucket-cap-mb", cfg.bucket_cap_mb, "ddp: gradient bucket size in MiB (default 25)")
      ->check(kPositive)
      ->group(multi);
  app.add_flag("--find-unused-parameters", cfg.find_unused_parameters,
               "ddp: find the parameters each forward leaves unused")
      ->group(multi);
  app.add_flag("--static-graph", cfg.static_graph, "ddp: the same parameters are used in the same order every step")
      ->group(multi);
  app.add_flag("--no-broadcast-buffers", cfg.no_broadcast_buffers,
               "ddp: keep each rank's buffers (batch-norm running statistics) instead of rank 0's")
      ->group(multi);
  app.add_option("--scale-lr", cfg.scale_lr, "ddp: linear multiplies the lr by the world size (Goyal et al.)")
      ->check(CLI::IsMember({"none", "linear"}))
      ->capture_default_str()
      ->group(multi);
  const std::string amp = "Precision, accumulation, activation checkpointing";
  app.add_option("--precision", cfg.precision,
                 "fp32, or bf16/fp16 autocast (matrix products and convolutions in half precision, f32 master "
                 "weights; fp16 also scales the loss dynamically and reports skipped steps)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str()
      ->group(amp);
  app.add_flag("--tf32", cfg.tf32,
               "f32 matrix products and convolutions on the GPU may use TF32 tensor cores (faster, 10-bit mantissa "
               "inputs; as PyTorch's allow_tf32 flags)")
      ->group(amp);
  app.add_option("--accumulate", cfg.accumulate,
                 "Micro-batches of --batch-size per optimizer step (the loss is divided by it; ddp reduces "
                 "gradients once per step)")
      ->check(kPositive)
      ->capture_default_str()
      ->group(amp);
  app.add_flag("--grad-checkpoint", cfg.grad_checkpoint,
               "Recompute activations in backward instead of keeping them (less memory, more compute)")
      ->group(amp);
  app.add_flag("--cuda-graph", cfg.cuda_graph,
               "On CUDA, replay each micro-batch's forward, backward, all-reduce and optimizer step as one captured "
               "CUDA graph after three eager steps (full batches; a smaller last batch runs eagerly)")
      ->group(amp);
  const std::string ck = "Checkpoints and logs";
  app.add_option("--checkpoint-dir", cfg.checkpoint_dir,
                 "Save the full training state here at every epoch end (ckpt-<step>.tck, and best.tck by test accuracy)")
      ->group(ck);
  app.add_option("--checkpoint-every", cfg.checkpoint_every, "Also save every N optimizer steps")
      ->check(kPositive)
      ->group(ck);
  app.add_option("--keep-last", cfg.keep_last, "Step checkpoints kept (0: all)")
      ->check(kNonNegative)
      ->capture_default_str()
      ->group(ck);
  app.add_option("--resume", cfg.resume,
                 "auto: continue from the newest checkpoint in --checkpoint-dir if there is one; or a checkpoint file")
      ->group(ck);
  app.add_option("--metrics-csv", cfg.metrics_csv,
                 "Write metrics as CSV too (steps to this file, epochs to its -epochs twin)")
      ->group(ck);
  app.add_option("--metrics-every-steps", cfg.metrics_every_steps,
                 "Also log a metrics record every N optimizer steps, with the step-time breakdown")
      ->check(kPositive)
      ->group(ck);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::printf("%s", app.help().c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    fail(what.empty() ? "invalid arguments" : what);
  }
  if (cfg.optimizer != "sgd" && app.count("--momentum") > 0) fail("--momentum applies to --optimizer sgd only");
  if (is_gpt(cfg) != (cfg.dataset == "text"))
    fail(is_gpt(cfg) ? "--model " + cfg.model + " is a language model: expected --dataset text, got --dataset " + cfg.dataset
                     : "--dataset text trains a language model: expected --model gpt-mini or gpt2, got --model " + cfg.model);
  for (const char* flag : {"--block-size", "--n-layer", "--n-head", "--n-embd", "--dropout", "--sample-tokens",
                           "--temperature", "--top-k"})
    if (!is_gpt(cfg) && app.count(flag) > 0) fail(std::string(flag) + " applies to --model gpt-mini or gpt2 only");
  if (is_gpt(cfg)) gpt_options(cfg);  // --n-embd against --n-head, before any work
  if (cfg.resume == "auto" && cfg.checkpoint_dir.empty()) fail("--resume auto needs --checkpoint-dir");
  if (!cfg.resume.empty() && cfg.resume != "auto" && !std::filesystem::is_regular_file(cfg.resume))
    fail("--resume " + cfg.resume + ": no such checkpoint file");
  if (cfg.checkpoint_every > 0 && cfg.checkpoint_dir.empty()) fail("--checkpoint-every needs --checkpoint-dir");

  Plan plan;
  try {
    plan = make_plan(cfg, app);
  } catch (const std::invalid_argument& e) {
    fail(std::string("--device: ") + e.what());
  }
  if (cfg.cuda_graph) {
    // The Trainer refuses the rest (sync BN, unused parameters); these are the flags'.
    if (!plan.device.is_cuda())
      fail("--cuda-graph replays CUDA graphs: expected a GPU (--device cuda or auto), got " + plan.device.str());
    if (plan.strategy == "dp") fail("--cuda-graph applies to --strategy single or ddp, got --strategy dp");
    if (cfg.grad_checkpoint)
      fail("--cuda-graph and --grad-checkpoint cannot be combined (recomputation is not capturable)");
    if (plan.strategy == "ddp" && plan.backend != "nccl")
      fail("--cuda-graph with --strategy ddp needs --backend nccl, got --backend " + plan.backend);
  }
  // What can be checked before workers start is checked once, here.
  if (cfg.dataset == "synthetic") {
    parse_shape(cfg.synthetic_shape);
  } else {
    data_dir(cfg);
  }

  try {
    const bool ddp = plan.strategy == "ddp";
    if (ddp && plan.backend != "local" && plan.devices > 1 && comm::launch_env().launcher == "none")
      return spawn_ranks(plan, argc, argv);

    manual_seed(cfg.seed);
    Datasets sets = make_datasets(cfg);
    if (ddp && plan.backend == "local") {
      run_local_ranks(cfg, plan, sets);
      return 0;
    }
    std::shared_ptr<nn::Module> model = make_model(cfg, sets);
    RankContext ctx;
    ctx.device = plan.device;
    if (ddp) {
      // A launcher's rank, or world size 1 (an in-process store, no port taken).
      ctx.group = comm::init({.backend = plan.backend});
      ctx.rank = ctx.group->rank();
      ctx.world_size = ctx.group->size();
      ctx.device = rank_device(plan, comm::launch_env().local_rank);
    }
    train_rank(cfg, plan, sets, model, ctx);
  } catch (const RunError& e) {
    fail(e.what(), e.status);
  } catch (const std::exception& e) {
    fail(e.what(), 1);
  }
  return 0;
}
