// Multi-layer perceptron: Flatten -> (Linear -> ReLU [-> Dropout]) x hidden -> Linear.
#pragma once

#include <vector>

#include "layers/sequential.h"

namespace tandem::nn::models {

struct MLPOptions {
  int64_t in = 784;
  std::vector<int64_t> hidden = {256};
  int64_t out = 10;
  /// Dropout after each hidden activation; 0 adds none.
  double dropout = 0.0;
};

/// A Sequential, so its parameter names ("1.weight", "1.bias", "3.weight", ...) match
/// a torch.nn.Sequential built the same way.
class MLP : public Sequential {
 public:
  explicit MLP(const MLPOptions& options = {});
  std::string name() const override { return "MLP"; }
  std::shared_ptr<Module> clone() const override;
  const MLPOptions& options() const { return options_; }

 private:
  MLPOptions options_;
};

}  // namespace tandem::nn::models
