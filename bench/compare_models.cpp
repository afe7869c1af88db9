// tandem-compare: the Tandem side of bench/compare_pytorch. Trains the MLP or the CNN
// (Fashion-MNIST) or ResNet-18 (synthetic 3x32x32) with SGD, or a GPT (GPT-2 small, or
// nanoGPT's 6-layer character-level size; random tokens) with AdamW, through the public
// API, in f32 or mixed precision (--precision) and optionally with activation
// checkpointing, and prints one JSON line: samples/s, test accuracy, peak memory, and
// with --breakdown where the time went.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <optional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_models.h"
#include "data/dataloader.h"
#include "data/dataset.h"
#include "data/fashion_mnist.h"
#include "data/synthetic.h"
#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/nn.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape.h"
#include "engine/random.h"
#include "engine/storage.h"
#include "engine/cuda/graph.h"
#include "engine/ops/factory.h"
#include "layers/checkpoint.h"
#include "layers/models/gpt.h"
#include "layers/sequential.h"
#include "optim/adam.h"
#include "optim/grad_scaler.h"
#include "optim/sgd.h"
#include "train/loss.h"

namespace {

using namespace tandem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Waits for queued device work, so a wall-clock interval covers all of it.
void synchronize(Device device) {
  if (device.is_cuda()) cuda::synchronize(device.index);
}

// Fraction of `dataset` that `model` classifies correctly, in batches of 1000.
double accuracy(nn::Module& model, const std::shared_ptr<const data::Dataset>& dataset, Device device) {
  autograd::NoGradGuard no_grad;
  model.eval();
  data::DataLoader loader(dataset, {.batch_size = 1000, .shuffle = false, .device = device});
  Tensor correct;
  for (data::Batch& batch : loader) {
    const Tensor hits = eq(argmax(model(batch.input), 1), batch.target).to(DType::kI64).sum();
    correct = correct.defined() ? add(correct, hits) : hits;
  }
  model.train();
  return correct.item() / static_cast<double>(dataset->size());
}

// Accumulates wall-clock milliseconds per named phase; with a CUDA device each
// interval ends with a synchronisation, so queued kernels count where they were issued.
class PhaseTimer {
 public:
  explicit PhaseTimer(Device device) : device_(device) {}
  /// Starts timing the next phase.
  void start() { start_ = Clock::now(); }
  /// Ends the current phase, adding its time to `name`, and starts the next one.
  void lap(const std::string& name) {
    synchronize(device_);
    const auto now = Clock::now();
    ms_[name] += std::chrono::duration<double, std::milli>(now - start_).count();
    start_ = now;
  }
  const std::map<std::string, double>& totals() const { return ms_; }

 private:
  Device device_;
  Clock::time_point start_;
  std::map<std::string, double> ms_;
};

// Bytes held by tensors on `device` now and at their peak since the last reset: the
// caching allocator's statistics on CUDA, the host allocator's on the CPU.
struct MemoryReading {
  int64_t allocated = 0;
  int64_t peak = 0;
};
MemoryReading read_memory(Device device) {
  if (device.is_cuda()) {
    const cuda::MemoryStats stats = cuda::memory_stats(device.index);
    return {stats.allocated_bytes, stats.peak_allocated_bytes};
  }
  const HostMemoryStats stats = host_memory_stats();
  return {stats.allocated_bytes, stats.peak_allocated_bytes};
}
void reset_peak_memory(Device device) {
  if (device.is_cuda()) {
    cuda::reset_peak_memory_stats(device.index);
  } else {
    reset_host_peak_memory_stats();
  }
}

// One training step of a Sequential model with each child's forward and backward timed
// on its own: every child's input is a detached leaf that requires grad, and the
// backward pass runs segment by segment from the loss down, passing each leaf's
// gradient on. Only the first child skips its input gradient, exactly as in a normal
// step, so the arithmetic is the same; the extra work is one detach per child. Forward
// and loss run under `autocast` and the loss is scaled by `scaler`, as in a normal step.
Tensor sequential_step_by_layer(nn::Sequential& model, const data::Batch& batch, optim::Optimizer& optimizer,
                                optim::GradScaler& scaler, std::optional<DType> autocast, PhaseTimer& timer,
                                std::vector<double>& forward_ms, std::vector<double>& backward_ms, Device device) {
  AutocastGuard guard(autocast.value_or(DType::kBF16), autocast.has_value());
  const size_t n = model.size();
  std::vector<Tensor> inputs(n), outputs(n);
  Tensor x = batch.input;
  for (size_t i = 0; i < n; ++i) {
    inputs[i] = i == 0 ? x : x.detach().set_requires_grad(true);
    const auto start = Clock::now();
    outputs[i] = (*model[i])(inputs[i]);
    synchronize(device);
    forward_ms[i] += std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    x = outputs[i];
  }
  // The loss gets its own leaf too, so its backward (softmax - one-hot) is booked to it.
  const Tensor logits = x.detach().set_requires_grad(true);
  timer.start();
  Tensor loss = cross_entropy(logits, batch.target);
  timer.lap("loss");
  optimizer.zero_grad();
  timer.lap("zero_grad");
  scaler.scale(loss).backward();
  timer.lap("loss_backward");
  Tensor grad = logits.grad();
  for (size_t i = n; i-- > 0;) {
    // A child before any parameter (the MLP's Flatten on the data) has nothing to do.
    if (!outputs[i].requires_grad()) break;
    const auto start = Clock::now();
    outputs[i].backward(grad);
    synchronize(device);
    backward_ms[i] += std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    if (i > 0) grad = inputs[i].grad();
  }
  timer.start();
  scaler.step(optimizer);
  scaler.update();
  timer.lap("step");
  return loss;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Trains a model with Tandem and prints samples/s (and test accuracy) as JSON."};
  std::string model_name = "mlp";
  std::string device_text = "cpu";
  std::string data_dir = data::kFashionMnistDefaultDir;
  int64_t epochs = 1;
  int64_t batch_size = 0;
  uint64_t seed = 0;
  int64_t max_batches = 0;
  int64_t steps = 20;
  int64_t warmup_steps = -1;
  std::string breakdown = "none";
  int prefetch_depth = data::DataLoaderOptions{}.prefetch_depth;
  std::string precision = "fp32";
  bool grad_checkpoint = false;
  bool tf32 = false;
  bool unfused = false;
  bool cuda_graph = false;
  app.add_option("--model", model_name,
                 "mlp, cnn (Fashion-MNIST), resnet18 (3x32x32 synthetic images), gpt2 (GPT-2 small, 1024 "
                 "positions) or gpt-mini (6 layers, 384 wide, 256 positions); the GPTs on random tokens")
      ->capture_default_str()
      ->check(CLI::IsMember(std::vector<std::string>(std::begin(bench::kBenchModels), std::end(bench::kBenchModels))));
  app.add_option("--device", device_text, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--epochs", epochs, "training epochs (mlp, cnn)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--data", data_dir, "directory of the Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--batch-size", batch_size, "samples per batch (0: 128 for mlp and cnn, 32 for resnet18, 8 for the GPTs)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--steps", steps, "timed steps of resnet18 and the GPTs")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--warmup-steps", warmup_steps, "untimed steps before timing (-1: 0 for mlp and cnn, 3 otherwise)")
      ->capture_default_str()
      ->check(CLI::Range(-1, 1000000));
  app.add_option("--seed", seed, "seed of initialisation, shuffling and synthetic data")->capture_default_str();
  app.add_option("--prefetch-depth", prefetch_depth, "batches the loader's thread gathers ahead (0: no thread)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-batches", max_batches, "stop training after this many timed batches (0: no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--breakdown", breakdown,
                 "none; phases (loader, forward, loss, zero_grad, backward, step, synchronised on CUDA); "
                 "layers (phases, and forward/backward per child of a Sequential model: mlp, cnn; the children run one "
                 "by one, so unfused)")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "phases", "layers"}));
  app.add_option("--precision", precision,
                 "fp32; bf16 or fp16: forward and loss under AutocastGuard (f32 master weights), fp16 with "
                 "optim::GradScaler dynamic loss scaling")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_flag("--grad-checkpoint", grad_checkpoint,
               "activation checkpointing: mlp, cnn in round(sqrt(layers)) segments; resnet18 one segment per "
               "block of each stage, the GPTs one per transformer block (the last segment of each Sequential "
               "is not recomputed)");
  app.add_flag("--tf32", tf32,
               "f32 matrix products and convolutions on TF32 tensor cores (cuda::set_allow_tf32; as PyTorch's "
               "allow_tf32 flags; no effect on the CPU)");
  app.add_flag("--unfused", unfused,
               "run each Linear and its ReLU/GELU as two ops (Sequential models, the GPTs' feed-forward) instead "
               "of one linear() with the activation in its epilogue, to measure the fusion");
  app.add_flag("--cuda-graph", cuda_graph,
               "capture the training step (forward, loss, backward, optimizer step) in a CUDA graph once two eager "
               "steps have warmed it up, then replay it for every batch of the captured shape (others run eagerly); "
               "cuda; the optimizer (SGD, the GPTs' AdamW) and fp16's GradScaler run capturable, deciding on the "
               "device. The two eager steps and the capture are timed unless --warmup-steps covers them");
  CLI11_PARSE(app, argc, argv);

  try {
    const Device device = Device::parse(device_text);
    cuda::set_allow_tf32(tf32);
    const bool fashion = model_name == "mlp" || model_name == "cnn";
    const bool gpt = bench::is_gpt(model_name);
    if (batch_size == 0) batch_size = fashion ? 128 : gpt ? 8 : 32;
    if (warmup_steps < 0) warmup_steps = fashion ? 0 : 3;
    if (!fashion) epochs = 1;
    manual_seed(seed);

    // Loading and normalising the data set is not part of the timed training loop.
    const auto load_start = Clock::now();
    std::shared_ptr<const data::Dataset> train_set, test_set;
    if (fashion) {
      train_set = std::make_shared<data::FashionMNIST>(data_dir, data::Split::kTrain);
      test_set = std::make_shared<data::FashionMNIST>(data_dir, data::Split::kTest);
    } else if (gpt) {
      // Exactly the batches needed: the warm-up ones, then the timed ones.
      auto [inputs, targets] = bench::random_token_sequences((warmup_steps + steps) * batch_size,
                                                             bench::gpt_options(model_name), seed);
      train_set = std::make_shared<data::TensorDataset>(inputs, targets);
    } else {
      train_set = std::make_shared<data::SyntheticImages>((warmup_steps + steps) * batch_size, Shape{3, 32, 32}, 10,
                                                          seed);
    }
    const double load_s = seconds_since(load_start);

    std::shared_ptr<nn::Module> model = bench::make_bench_model(model_name);
    model->to(device);
    auto* sequential = dynamic_cast<nn::Sequential*>(model.get());
    if (breakdown == "layers" && sequential == nullptr) {
      throw std::invalid_argument("[tandem-compare] expected --breakdown layers with a Sequential model (mlp, cnn), "
                                  "got " + model_name + "; use --breakdown phases");
    }
    // Running the children one by one would bypass the checkpointed segments.
    if (breakdown == "layers" && grad_checkpoint) {
      throw std::invalid_argument("[tandem-compare] expected --breakdown none or phases with --grad-checkpoint, "
                                  "got layers (it runs each child on its own, past the checkpointed segments)");
    }
    if (cuda_graph) {
      // The optimizer and the fp16 scaler run capturable (step counts, scale and skip
      // decisions on the device); dropout's draws are graph-safe (engine/random.h).
      std::string why;
      if (!device.is_cuda()) why = "a CUDA device (--device cuda)";
      else if (breakdown != "none") why = "--breakdown none";
      if (!why.empty()) throw std::invalid_argument("[tandem-compare] --cuda-graph expects " + why);
    }
    if (unfused) {
      for (const auto& [name, m] : model->named_modules()) {
        if (auto* seq = dynamic_cast<nn::Sequential*>(m.get())) seq->set_fuse_activations(false);
        if (auto* ff = dynamic_cast<nn::FeedForward*>(m.get())) ff->set_fuse_activation(false);
      }
    }
    const int64_t checkpoint_segments = grad_checkpoint ? nn::enable_grad_checkpointing(*model) : 0;
    std::optional<DType> autocast;
    if (precision == "bf16") autocast = DType::kBF16;
    if (precision == "fp16") autocast = DType::kF16;
    // Disabled for fp32 and bf16: scale() returns the loss and step() just steps.
    optim::GradScaler scaler({.enabled = precision == "fp16", .capturable = cuda_graph});
    // SGD for the classifiers; AdamW (nanoGPT's lr 6e-4, betas (0.9, 0.95), weight decay 0.1) for the GPTs.
    std::unique_ptr<optim::Optimizer> optimizer_owner;
    if (gpt) {
      optimizer_owner = std::make_unique<optim::AdamW>(
          model->parameters(),
          optim::AdamWOptions{.lr = 6e-4, .betas = {0.9, 0.95}, .weight_decay = 0.1, .capturable = cuda_graph});
    } else {
      optimizer_owner = std::make_unique<optim::SGD>(
          model->parameters(),
          optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4, .capturable = cuda_graph});
    }
    optim::Optimizer& optimizer = *optimizer_owner;
    data::DataLoader loader(
        train_set,
        {.batch_size = batch_size, .shuffle = true, .seed = seed, .prefetch_depth = prefetch_depth, .device = device});

    PhaseTimer timer(device);
    std::vector<double> layer_forward_ms(sequential ? sequential->size() : 0);
    std::vector<double> layer_backward_ms(layer_forward_ms.size());

    // The timed region is the training loop itself: the loader's per-batch gather (and
    // host-to-device copy), forward, backward and the optimizer step. Warm-up steps
    // (first-touch allocations, the allocator's cache) run before it starts.
    // Peak memory covers every training step, warm-up included, from the bytes held
    // before the first one (data set, parameters): gradients, optimizer state,
    // activations and batches all count toward it.
    synchronize(device);
    reset_peak_memory(device);
    const MemoryReading memory_before = read_memory(device);
    auto train_start = Clock::now();
    int64_t samples = 0, batches = 0, seen = 0;
    Tensor last_loss;
    // --cuda-graph: the captured step, its static input and target (the loader's batch
    // is copied into them), and its loss.
    cuda::Graph graph;
    Tensor static_input, static_target, static_loss;
    int64_t eager_steps = 0;
    constexpr int64_t kEagerStepsBeforeCapture = 2;
    for (int64_t epoch = 0; epoch < epochs && (max_batches == 0 || batches < max_batches); ++epoch) {
      timer.start();
      for (data::Batch& batch : loader) {
        if (max_batches > 0 && batches == max_batches) break;
        const bool timed = seen++ >= warmup_steps;
        const bool time_phases = timed && breakdown != "none";
        if (time_phases) timer.lap("loader");
        Tensor loss;
        const bool replayable = graph.captured() && batch.input.shape() == static_input.shape() &&
                                batch.target.shape() == static_target.shape();
        const bool capture_now = cuda_graph && !graph.captured() && eager_steps >= kEagerStepsBeforeCapture &&
                                 batch.input.size(0) == batch_size;
        if (capture_now) {
          static_input = empty_like(batch.input);
          static_target = empty_like(batch.target);
          optimizer.zero_grad();  // to none: the captured backward writes fresh gradients
          synchronize(device);
          graph.capture_begin();
          {
            AutocastGuard guard(autocast.value_or(DType::kBF16), autocast.has_value());
            static_loss = train::prediction_loss((*model)(static_input), static_target);
          }
          scaler.scale(static_loss).backward();
          scaler.step(optimizer);
          scaler.update();
          graph.capture_end();
        }
        if (capture_now || replayable) {
          static_input.copy_(batch.input);
          static_target.copy_(batch.target);
          graph.replay();  // the capture itself ran nothing: this is the step
          loss = static_loss;
        } else if (breakdown == "layers" && timed) {
          loss = sequential_step_by_layer(*sequential, batch, optimizer, scaler, autocast, timer, layer_forward_ms,
                                          layer_backward_ms, device);
        } else {
          timer.start();
          {
            AutocastGuard guard(autocast.value_or(DType::kBF16), autocast.has_value());
            Tensor logits = (*model)(batch.input);
            if (time_phases) timer.lap("forward");
            loss = train::prediction_loss(logits, batch.target);
            if (time_phases) timer.lap("loss");
          }
          optimizer.zero_grad();
          if (time_phases) timer.lap("zero_grad");
          scaler.scale(loss).backward();
          if (time_phases) timer.lap("backward");
          scaler.step(optimizer);
          scaler.update();
          if (time_phases) timer.lap("step");
          ++eager_steps;
        }
        last_loss = loss.detach();
        if (!timed) {
          if (seen == warmup_steps) {
            synchronize(device);
            train_start = Clock::now();
          }
          timer.start();
          continue;
        }
        ++batches;
        samples += batch.input.size(0);
        timer.start();
      }
    }
    synchronize(device);
    const double train_s = seconds_since(train_start);
    const MemoryReading memory_after = read_memory(device);

    nlohmann::json result = {
        {"framework", "tandem"},
        {"model", model_name},
        {"samples_per_s", static_cast<double>(samples) / train_s},
        {"test_acc", fashion ? nlohmann::json(accuracy(*model, test_set, device)) : nlohmann::json(nullptr)},
        {"epochs", epochs},
        {"device", device.str()},
        {"batch_size", batch_size},
        {"train_steps", batches},
        {"warmup_steps", warmup_steps},
        {"train_seconds", train_s},
        {"load_seconds", load_s},
        {"final_loss", last_loss.item()},
        {"prefetch_depth", prefetch_depth},
        {"precision", precision},
        {"tf32", tf32},
        {"fused_activations", !unfused && breakdown != "layers"},
        {"cuda_graph", cuda_graph},
        {"grad_checkpoint", grad_checkpoint},
        {"checkpoint_segments", checkpoint_segments},
        {"skipped_steps", scaler.skipped_steps()},
        {"peak_mem_bytes", memory_after.peak},
        {"mem_before_bytes", memory_before.allocated},
        {"peak_mem_delta_bytes", memory_after.peak - memory_before.allocated},
        {"memory_source", device.is_cuda() ? "cuda::memory_stats peak_allocated_bytes"
                                           : "host_memory_stats peak_allocated_bytes (Tandem host allocator)"},
        {"omp_num_threads", std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "default"},
    };
    if (gpt) {
      result["sequence_length"] = bench::gpt_options(model_name).block_size;
      result["tokens_per_s"] = static_cast<double>(samples * bench::gpt_options(model_name).block_size) / train_s;
    }
    if (breakdown != "none") {
      nlohmann::json phases = timer.totals();
      if (breakdown == "layers") {
        nlohmann::json layers = nlohmann::json::array();
        double forward = 0, backward = 0;
        for (size_t i = 0; i < layer_forward_ms.size(); ++i) {
          layers.push_back({{"name", std::to_string(i) + " " + (*sequential)[i]->name()},
                            {"forward_ms", layer_forward_ms[i]},
                            {"backward_ms", layer_backward_ms[i]}});
          forward += layer_forward_ms[i];
          backward += layer_backward_ms[i];
        }
        phases["forward"] = forward;
        phases["backward"] = backward;
        result["layers_ms"] = layers;
      }
      result["phases_ms"] = phases;
    }
    std::printf("%s\n", result.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem-compare: %s\n", e.what());
    return 1;
  }
  return 0;
}
