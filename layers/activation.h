// Parameter-free activation layers: ReLU, GELU, Tanh, Sigmoid.
#pragma once

#include "layers/module.h"

namespace tandem::nn {

/// max(x, 0)
class ReLU : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "ReLU"; }
  std::shared_ptr<Module> clone() const override;
};

/// x·Φ(x) (exact erf form), or the tanh approximation when `tanh_approximation`.
class GELU : public Module {
 public:
  explicit GELU(bool tanh_approximation = false) : tanh_approximation_(tanh_approximation) {}
  Tensor forward(const Tensor& input) override;
  bool tanh_approximation() const { return tanh_approximation_; }
  std::string name() const override { return "GELU"; }
  std::shared_ptr<Module> clone() const override;

 private:
  bool tanh_approximation_;
};

class Tanh : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Tanh"; }
  std::shared_ptr<Module> clone() const override;
};

/// 1 / (1 + exp(-x))
class Sigmoid : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Sigmoid"; }
  std::shared_ptr<Module> clone() const override;
};

}  // namespace tandem::nn
