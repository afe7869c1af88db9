// Layer lists shared by the activation-checkpointing tests (CPU and CUDA): an MLP as a
// flat list of layers, a plain Sequential over them, and the same layers in
// checkpointed blocks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/random.h"
#include "layers/activation.h"
#include "layers/checkpoint.h"
#include "layers/dropout.h"
#include "layers/linear.h"
#include "layers/sequential.h"

namespace tandem::nn::checkpoint_test {

/// (Linear -> ReLU [-> Dropout]) x depth, then a Linear head; as a flat list of layers.
inline std::vector<std::shared_ptr<Module>> mlp_layers(int depth, int64_t width, double p, uint64_t seed) {
  manual_seed(seed);
  std::vector<std::shared_ptr<Module>> layers;
  for (int i = 0; i < depth; ++i) {
    layers.push_back(std::make_shared<Linear>(width, width));
    layers.push_back(std::make_shared<ReLU>());
    if (p > 0.0) layers.push_back(std::make_shared<Dropout>(p));
  }
  layers.push_back(std::make_shared<Linear>(width, 3));
  return layers;
}

/// The layers in a Sequential, shared (not copied).
inline std::shared_ptr<Sequential> plain_of(const std::vector<std::shared_ptr<Module>>& layers) {
  auto s = std::make_shared<Sequential>();
  for (const auto& m : layers) s->push_back(m);
  return s;
}

/// The same layers (shared, not copied), each run of `per_block` layers checkpointed.
inline std::shared_ptr<Sequential> blocks_of(const std::vector<std::shared_ptr<Module>>& layers, size_t per_block) {
  auto s = std::make_shared<Sequential>();
  for (size_t i = 0; i < layers.size(); i += per_block) {
    auto block = std::make_shared<Sequential>();
    for (size_t j = i; j < std::min(layers.size(), i + per_block); ++j) block->push_back(layers[j]);
    s->push_back(std::make_shared<Checkpointed>(block));
  }
  return s;
}

}  // namespace tandem::nn::checkpoint_test
