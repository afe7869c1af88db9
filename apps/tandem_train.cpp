// tandem-train: trains a model (MLP, CNN, ResNet-18) on Fashion-MNIST, CIFAR-10 or
// synthetic images with whatever device is present, and ends with one JSON line of
// results. Every bad flag or missing file gets a one-line error and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "tandem.h"

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
  std::string metrics;
  int64_t log_every = 100;
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

Datasets make_datasets(const Config& cfg) {
  if (cfg.dataset == "synthetic") {
    Shape shape = parse_shape(cfg.synthetic_shape);
    // The test split draws other samples from the same class prototypes (same seed,
    // indices past the training ones would need a larger n: use an offset seed's noise).
    auto train = std::make_shared<data::SyntheticImages>(cfg.synthetic_samples, shape, 10, cfg.seed);
    auto test = std::make_shared<data::SyntheticImages>(std::max<int64_t>(cfg.synthetic_samples / 5, 1), shape, 10, cfg.seed);
    return {train, test};
  }
  std::string dir = cfg.data;
  if (dir.empty()) dir = cfg.dataset == "cifar10" ? data::kCifar10DefaultDir : data::kFashionMnistDefaultDir;
  if (!std::filesystem::is_directory(dir)) {
    fail("--data " + dir + ": no such directory (" +
         (cfg.dataset == "cifar10" ? std::string("unpack CIFAR-10's binary version there")
                                   : std::string("install Debian's dataset-fashion-mnist or pass --data DIR")) +
         ")");
  }
  if (cfg.dataset == "cifar10")
    return {std::make_shared<data::CIFAR10>(dir, data::Split::kTrain), std::make_shared<data::CIFAR10>(dir, data::Split::kTest)};
  return {std::make_shared<data::FashionMNIST>(dir, data::Split::kTrain),
          std::make_shared<data::FashionMNIST>(dir, data::Split::kTest)};
}

std::shared_ptr<nn::Module> make_model(const Config& cfg, const Shape& input) {
  const int64_t channels = input[0], size = input[1];
  if (cfg.model == "mlp") return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = shape_numel(input)});
  if (cfg.model == "cnn") {
    if (input[1] != input[2] || size < 4)
      fail("--model cnn: expected square images of at least 4x4, got shape " + shape_str(input));
    return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = channels, .image_size = size});
  }
  return std::make_shared<nn::models::ResNet18>(nn::models::ResNetOptions{.in_channels = channels});
}

std::unique_ptr<optim::Optimizer> make_optimizer(const Config& cfg, const std::vector<Tensor>& params) {
  if (cfg.optimizer == "adam")
    return std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = cfg.lr.value_or(1e-3),
                                                                    .weight_decay = cfg.weight_decay.value_or(0.0)});
  if (cfg.optimizer == "adamw")
    return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = cfg.lr.value_or(1e-3),
                                                                      .weight_decay = cfg.weight_decay.value_or(1e-2)});
  return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = cfg.lr.value_or(0.05),
                                                                .momentum = cfg.momentum,
                                                                .weight_decay = cfg.weight_decay.value_or(5e-4)});
}

// The schedule is stepped once per optimizer step; epoch-based settings are
// converted to steps. Warm-up rises linearly from 10% of the lr.
std::unique_ptr<optim::LRScheduler> make_schedule(const Config& cfg, optim::Optimizer& opt, int64_t steps_per_epoch) {
  const int64_t total = cfg.epochs * steps_per_epoch;
  const int64_t warmup = cfg.warmup_epochs > 0 ? cfg.warmup_epochs * steps_per_epoch : cfg.warmup_steps;
  if (warmup >= total && cfg.schedule != "constant")
    fail("--warmup-epochs/--warmup-steps: the warm-up (" + std::to_string(warmup) + " steps) must be shorter than the run (" +
         std::to_string(total) + " steps)");
  constexpr double kWarmupStart = 0.1;
  std::unique_ptr<optim::LRScheduler> after;
  if (cfg.schedule == "step") {
    int64_t every = cfg.step_size > 0 ? cfg.step_size : std::max<int64_t>(1, cfg.epochs / 3);
    after = std::make_unique<optim::StepLR>(opt, every * steps_per_epoch, cfg.gamma);
  } else if (cfg.schedule == "cosine") {
    after = std::make_unique<optim::CosineAnnealingLR>(opt, total - warmup);
  }
  if (warmup == 0) return after;
  if (!after) return std::make_unique<optim::LinearWarmup>(opt, kWarmupStart, warmup);
  return std::make_unique<optim::WarmupThen>(opt, kWarmupStart, warmup, std::move(after));
}

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
};

// Loss and accuracy over a whole split: sums and counts, never means of means.
EvalResult evaluate(nn::Module& model, data::DataLoader& loader) {
  autograd::NoGradGuard no_grad;
  model.eval();
  Device device = loader.options().device;
  Tensor loss_sum = zeros({}, {.device = device});
  Tensor correct = zeros({}, {.dtype = DType::kI64, .device = device});
  int64_t count = 0;
  for (data::Batch& batch : loader) {
    Tensor logits = model(batch.input);
    loss_sum = loss_sum + cross_entropy(logits, batch.target, {.reduction = Reduction::kSum});
    correct = correct + sum(eq(argmax(logits, 1), batch.target));
    count += batch.target.numel();
  }
  model.train();
  return {loss_sum.item() / static_cast<double>(count), correct.item() / static_cast<double>(count)};
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"Train a model with Tandem and print one JSON line of results."};
  app.add_option("--model", cfg.model, "Model")->check(CLI::IsMember({"mlp", "cnn", "resnet18"}))->capture_default_str();
  app.add_option("--dataset", cfg.dataset, "Data set")
      ->check(CLI::IsMember({"fashion-mnist", "cifar10", "synthetic"}))
      ->capture_default_str();
  app.add_option("--data", cfg.data, "Directory of the data set's files (default: /usr/share/datasets/fashion-mnist "
                                     "for fashion-mnist, ./cifar-10-batches-bin for cifar10)");
  app.add_option("--epochs", cfg.epochs, "Epochs")->check(kPositive)->capture_default_str();
  app.add_option("--batch-size", cfg.batch_size, "Samples per batch")->check(kPositive)->capture_default_str();
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
  app.add_option("--device", cfg.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--seed", cfg.seed, "Seed for initialisation and shuffling")->capture_default_str();
  app.add_option("--synthetic-samples", cfg.synthetic_samples, "Training samples of --dataset synthetic")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--synthetic-shape", cfg.synthetic_shape, "Image shape C,H,W of --dataset synthetic")->capture_default_str();
  app.add_option("--metrics", cfg.metrics, "Write per-epoch metrics to this JSON Lines file");
  app.add_option("--log-every", cfg.log_every, "Steps between log lines when not on a terminal")
      ->check(kPositive)
      ->capture_default_str();
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

  Device device;
  try {
    device = resolve_device(cfg.device);
  } catch (const std::invalid_argument& e) {
    fail(std::string("--device: ") + e.what());
  }

  try {
    manual_seed(cfg.seed);
    Datasets sets = make_datasets(cfg);
    data::DataLoader train_loader(sets.train, {.batch_size = cfg.batch_size, .shuffle = true, .seed = cfg.seed,
                                               .device = device});
    data::DataLoader test_loader(sets.test, {.batch_size = 1000, .shuffle = false, .device = device});

    std::shared_ptr<nn::Module> model = make_model(cfg, sets.train->input_shape());
    model->to(device);
    std::vector<Tensor> params = model->parameters();
    std::unique_ptr<optim::Optimizer> optimizer = make_optimizer(cfg, params);
    std::unique_ptr<optim::LRScheduler> schedule = make_schedule(cfg, *optimizer, train_loader.num_batches());

    std::optional<train::MetricsWriter> metrics;
    if (!cfg.metrics.empty()) metrics.emplace(cfg.metrics);
    train::Progress progress({.out = stderr, .log_every = cfg.log_every, .terminal = std::nullopt});
    // Reading the loss synchronises a GPU; read it every step on the CPU only.
    const int64_t read_every = device.is_cuda() ? 20 : 1;

    EvalResult result;
    double samples_per_s = 0, total_seconds = 0;
    int64_t total_samples = 0;
    for (int64_t epoch = 0; epoch < cfg.epochs; ++epoch) {
      progress.start_epoch(epoch, cfg.epochs, train_loader.num_batches());
      int64_t step = 0;
      double last_loss = NAN;
      for (data::Batch& batch : train_loader) {
        Tensor loss = cross_entropy((*model)(batch.input), batch.target);
        optimizer->zero_grad();
        loss.backward();
        if (cfg.clip_grad_norm > 0) optim::clip_grad_norm(params, cfg.clip_grad_norm);
        optimizer->step();
        if (schedule) schedule->step();
        ++step;
        if (step % read_every == 0 || step == train_loader.num_batches()) {
          last_loss = loss.item();
          if (!std::isfinite(last_loss))
            fail("loss became " + std::to_string(last_loss) + " at epoch " + std::to_string(epoch + 1) + " step " +
                     std::to_string(step) + "; try a lower --lr or --clip-grad-norm",
                 3);
        }
        progress.update(step, last_loss, batch.target.numel());
      }
      if (device.is_cuda()) cuda::synchronize(device.index);
      double seconds = progress.epoch_seconds();
      samples_per_s = progress.samples_per_second();
      total_seconds += seconds;
      total_samples += sets.train->size();
      result = evaluate(*model, test_loader);
      char summary[220];
      std::snprintf(summary, sizeof(summary),
                    "epoch %lld/%lld  train_loss %.4f  test_loss %.4f  test_acc %.4f  lr %.3g  %.0f samples/s  %s",
                    static_cast<long long>(epoch + 1), static_cast<long long>(cfg.epochs), last_loss, result.loss,
                    result.accuracy, optimizer->lr(), samples_per_s, train::format_duration(seconds).c_str());
      progress.end_epoch(summary);
      if (metrics) {
        metrics->write({{"epoch", epoch + 1},
                        {"train_loss", last_loss},
                        {"test_loss", result.loss},
                        {"test_acc", result.accuracy},
                        {"lr", optimizer->lr()},
                        {"samples_per_s", samples_per_s},
                        {"epoch_seconds", seconds}});
      }
    }
    std::printf("%s\n", train::to_json({{"model", cfg.model},
                                        {"dataset", cfg.dataset},
                                        {"epochs", cfg.epochs},
                                        {"device", device.str()},
                                        {"batch_size", cfg.batch_size},
                                        {"optimizer", cfg.optimizer},
                                        {"schedule", cfg.schedule},
                                        {"test_acc", result.accuracy},
                                        {"test_loss", result.loss},
                                        {"train_samples_per_s", total_seconds > 0 ? total_samples / total_seconds : 0.0}})
                            .c_str());
  } catch (const std::exception& e) {
    fail(e.what(), 1);
  }
  return 0;
}
