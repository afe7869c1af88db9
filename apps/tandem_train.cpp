// tandem-train: trains a model on Fashion-MNIST with whatever device is present and
// ends with one JSON line of results. Every bad flag or missing file gets a one-line
// error and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "tandem.h"

using namespace tandem;

namespace {

struct Config {
  std::string model = "mlp";
  int64_t epochs = 1;
  int64_t batch_size = 128;
  double lr = 0.05;
  double momentum = 0.9;
  double weight_decay = 5e-4;
  std::string device = "auto";
  uint64_t seed = 0;
  std::string data = data::kFashionMnistDefaultDir;
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
  CLI::App app{"Train a model on Fashion-MNIST with Tandem."};
  app.add_option("--model", cfg.model, "Model to train")->check(CLI::IsMember({"mlp"}))->capture_default_str();
  app.add_option("--epochs", cfg.epochs, "Epochs")->check(kPositive)->capture_default_str();
  app.add_option("--batch-size", cfg.batch_size, "Samples per batch")->check(kPositive)->capture_default_str();
  app.add_option("--lr", cfg.lr, "Learning rate")->check(kPositive)->capture_default_str();
  app.add_option("--momentum", cfg.momentum, "SGD momentum")->check(kUnitInterval)->capture_default_str();
  app.add_option("--weight-decay", cfg.weight_decay, "L2 weight decay")->check(kNonNegative)->capture_default_str();
  app.add_option("--device", cfg.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--seed", cfg.seed, "Seed for initialisation and shuffling")->capture_default_str();
  app.add_option("--data", cfg.data, "Directory holding the Fashion-MNIST IDX files")->capture_default_str();
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

  Device device;
  try {
    device = resolve_device(cfg.device);
  } catch (const std::invalid_argument& e) {
    fail(std::string("--device: ") + e.what());
  }
  if (!std::filesystem::is_directory(cfg.data))
    fail("--data " + cfg.data + ": no such directory (install Debian's dataset-fashion-mnist or pass --data DIR)");

  try {
    manual_seed(cfg.seed);
    auto train_set = std::make_shared<data::FashionMNIST>(cfg.data, data::Split::kTrain);
    auto test_set = std::make_shared<data::FashionMNIST>(cfg.data, data::Split::kTest);
    data::DataLoader train_loader(train_set, {.batch_size = cfg.batch_size, .shuffle = true, .seed = cfg.seed,
                                              .device = device});
    data::DataLoader test_loader(test_set, {.batch_size = 1000, .shuffle = false, .device = device});

    auto model = std::make_shared<nn::models::MLP>();
    model->to(device);
    optim::SGD optimizer(model->parameters(),
                         {.lr = cfg.lr, .momentum = cfg.momentum, .weight_decay = cfg.weight_decay});

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
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        ++step;
        if (step % read_every == 0 || step == train_loader.num_batches()) {
          last_loss = loss.item();
          if (!std::isfinite(last_loss))
            fail("loss became " + std::to_string(last_loss) + " at epoch " + std::to_string(epoch + 1) + " step " +
                     std::to_string(step) + "; try a lower --lr",
                 3);
        }
        progress.update(step, last_loss, batch.target.numel());
      }
      if (device.is_cuda()) cuda::synchronize(device.index);
      double seconds = progress.epoch_seconds();
      samples_per_s = progress.samples_per_second();
      total_seconds += seconds;
      total_samples += train_set->size();
      result = evaluate(*model, test_loader);
      char summary[200];
      std::snprintf(summary, sizeof(summary), "epoch %lld/%lld  train_loss %.4f  test_loss %.4f  test_acc %.4f  %.0f samples/s  %s",
                    static_cast<long long>(epoch + 1), static_cast<long long>(cfg.epochs), last_loss, result.loss,
                    result.accuracy, samples_per_s, train::format_duration(seconds).c_str());
      progress.end_epoch(summary);
      if (metrics) {
        metrics->write({{"epoch", epoch + 1},
                        {"train_loss", last_loss},
                        {"test_loss", result.loss},
                        {"test_acc", result.accuracy},
                        {"samples_per_s", samples_per_s},
                        {"epoch_seconds", seconds}});
      }
    }
    std::printf("%s\n", train::to_json({{"model", cfg.model},
                                        {"epochs", cfg.epochs},
                                        {"device", device.str()},
                                        {"batch_size", cfg.batch_size},
                                        {"lr", cfg.lr},
                                        {"test_acc", result.accuracy},
                                        {"test_loss", result.loss},
                                        {"train_samples_per_s", total_seconds > 0 ? total_samples / total_seconds : 0.0}})
                            .c_str());
  } catch (const std::exception& e) {
    fail(e.what(), 1);
  }
  return 0;
}
