// tandem-compare-mlp: the Tandem side of bench/compare_pytorch. Trains the
// 784-256-ReLU-10 MLP on Fashion-MNIST (batch 128, SGD lr 0.05 momentum 0.9 weight
// decay 5e-4, cross-entropy, reshuffled each epoch) with the public API only, and
// prints one JSON line: training samples/s, test accuracy, epochs, device.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "data/dataloader.h"
#include "data/fashion_mnist.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/nn.h"
#include "engine/ops/reduce.h"
#include "engine/random.h"
#include "layers/models/mlp.h"
#include "optim/sgd.h"

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Trains the Fashion-MNIST MLP with Tandem and prints samples/s and test accuracy as JSON."};
  std::string device_text = "cpu";
  std::string data_dir = data::kFashionMnistDefaultDir;
  int64_t epochs = 1;
  int64_t batch_size = 128;
  uint64_t seed = 0;
  int64_t max_batches = 0;
  int prefetch_depth = data::DataLoaderOptions{}.prefetch_depth;
  app.add_option("--device", device_text, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--epochs", epochs, "training epochs")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--data", data_dir, "directory of the Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--batch-size", batch_size, "samples per batch")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of initialisation and shuffling")->capture_default_str();
  app.add_option("--prefetch-depth", prefetch_depth, "batches the loader's thread gathers ahead (0: no thread)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-batches", max_batches, "stop training after this many batches (0: no limit; for profiling)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);

  try {
    const Device device = Device::parse(device_text);
    manual_seed(seed);

    // Loading and normalising the data set is not part of the timed training loop.
    const auto load_start = Clock::now();
    auto train_set = std::make_shared<data::FashionMNIST>(data_dir, data::Split::kTrain);
    auto test_set = std::make_shared<data::FashionMNIST>(data_dir, data::Split::kTest);
    const double load_s = seconds_since(load_start);

    auto model = std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 784, .hidden = {256}, .out = 10});
    model->to(device);
    optim::SGD optimizer(model->parameters(), {.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4});
    data::DataLoader loader(
        train_set,
        {.batch_size = batch_size, .shuffle = true, .seed = seed, .prefetch_depth = prefetch_depth, .device = device});

    // The timed region is the training loop itself: the loader's per-batch gather (and
    // host-to-device copy), forward, backward and the optimizer step.
    synchronize(device);
    const auto train_start = Clock::now();
    int64_t samples = 0, batches = 0;
    Tensor last_loss;
    for (int64_t epoch = 0; epoch < epochs && (max_batches == 0 || batches < max_batches); ++epoch) {
      for (data::Batch& batch : loader) {
        if (max_batches > 0 && batches == max_batches) break;
        ++batches;
        Tensor loss = cross_entropy((*model)(batch.input), batch.target);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        samples += batch.input.size(0);
        last_loss = loss.detach();
      }
    }
    synchronize(device);
    const double train_s = seconds_since(train_start);

    const double test_acc = accuracy(*model, test_set, device);
    const nlohmann::json result = {
        {"framework", "tandem"},
        {"samples_per_s", static_cast<double>(samples) / train_s},
        {"test_acc", test_acc},
        {"epochs", epochs},
        {"device", device.str()},
        {"batch_size", batch_size},
        {"train_seconds", train_s},
        {"load_seconds", load_s},
        {"final_loss", last_loss.item()},
        {"prefetch_depth", prefetch_depth},
        {"omp_num_threads", std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "default"},
    };
    std::printf("%s\n", result.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem-compare-mlp: %s\n", e.what());
    return 1;
  }
  return 0;
}
