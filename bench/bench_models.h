// The models the training benchmarks share (tandem-compare, tandem-bench): names,
// construction and random token data for the GPTs (their loss: train::prediction_loss).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "engine/tensor.h"
#include "layers/models/gpt.h"
#include "layers/module.h"

namespace tandem::bench {

/// mlp (784-256-10), cnn (1x28x28, 10 classes), resnet18 (3x32x32, 10 classes), and the
/// GPTs: gpt-mini (nanoGPT's shakespeare_char size: 6 layers, 6 heads, 384 wide, 256
/// positions, 65 symbols) and gpt2 (GPT-2 small).
inline constexpr const char* kBenchModels[] = {"mlp", "cnn", "resnet18", "gpt-mini", "gpt2"};

bool is_gpt(const std::string& model);
/// The GPT sizes above; throws std::invalid_argument for another name.
nn::models::GPTOptions gpt_options(const std::string& model);

/// A fresh model on the CPU from the current default generator; throws
/// std::invalid_argument naming the known models for another name.
std::shared_ptr<nn::Module> make_bench_model(const std::string& model);

/// `n` sequences of block_size + 1 uniform random tokens from `seed`: the inputs are the
/// first block_size tokens, the targets the last block_size (next-token prediction);
/// both int64 (n, block_size) on the CPU.
std::pair<Tensor, Tensor> random_token_sequences(int64_t n, const nn::models::GPTOptions& options, uint64_t seed);

}  // namespace tandem::bench
