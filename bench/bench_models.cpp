// Benchmark models: construction and data.
#include "bench/bench_models.h"

#include <random>
#include <stdexcept>
#include <vector>

#include "layers/models/cnn.h"
#include "layers/models/mlp.h"
#include "layers/models/resnet.h"

namespace tandem::bench {

bool is_gpt(const std::string& model) { return model == "gpt-mini" || model == "gpt2"; }

nn::models::GPTOptions gpt_options(const std::string& model) {
  if (model == "gpt2") return nn::models::GPTOptions::gpt2_small();
  if (model == "gpt-mini") return nn::models::GPTOptions::gpt_mini();
  throw std::invalid_argument("[bench] expected gpt-mini or gpt2, got " + model);
}

std::shared_ptr<nn::Module> make_bench_model(const std::string& model) {
  if (model == "mlp") return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 784, .hidden = {256}, .out = 10});
  if (model == "cnn") return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = 1, .image_size = 28});
  if (model == "resnet18")
    return std::make_shared<nn::models::ResNet18>(nn::models::ResNetOptions{.in_channels = 3, .num_classes = 10});
  if (is_gpt(model)) return std::make_shared<nn::models::GPT>(gpt_options(model));
  throw std::invalid_argument("[bench] expected model mlp, cnn, resnet18, gpt-mini or gpt2, got " + model);
}

std::pair<Tensor, Tensor> random_token_sequences(int64_t n, const nn::models::GPTOptions& o, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> token(0, o.vocab_size - 1);
  std::vector<int64_t> inputs(static_cast<size_t>(n * o.block_size)), targets(inputs.size());
  for (int64_t i = 0; i < n; ++i) {
    int64_t next = token(rng);
    for (int64_t t = 0; t < o.block_size; ++t) {
      const size_t k = static_cast<size_t>(i * o.block_size + t);
      inputs[k] = next;
      targets[k] = next = token(rng);
    }
  }
  return {Tensor::from_vector(inputs, {n, o.block_size}), Tensor::from_vector(targets, {n, o.block_size})};
}

}  // namespace tandem::bench
