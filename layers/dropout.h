// Dropout layer: zeroes elements with probability p in training mode, identity in eval.
#pragma once

#include "layers/module.h"

namespace tandem::nn {

class Dropout : public Module {
 public:
  /// p in [0, 1).
  explicit Dropout(double p = 0.5);
  /// Scales kept elements by 1/(1-p) while training; returns the input unchanged in eval mode.
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Dropout"; }
  std::shared_ptr<Module> clone() const override;
  double p() const { return p_; }

 private:
  double p_;
};

}  // namespace tandem::nn
