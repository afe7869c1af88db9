// Flatten layer: merges dims start_dim..end_dim (by default all but the batch dim).
#pragma once

#include "layers/module.h"

namespace tandem::nn {

class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1) : start_dim_(start_dim), end_dim_(end_dim) {}
  /// (N, C, H, W) -> (N, C·H·W) with the defaults; shares storage with the input.
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Flatten"; }
  std::shared_ptr<Module> clone() const override;

 private:
  int64_t start_dim_;
  int64_t end_dim_;
};

}  // namespace tandem::nn
