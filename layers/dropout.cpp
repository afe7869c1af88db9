// Dropout layer over the dropout op (mask from the device's default Philox generator).
#include "layers/dropout.h"

#include <stdexcept>
#include <string>

#include "engine/ops/nn.h"

namespace tandem::nn {

Dropout::Dropout(double p) : p_(p) {
  if (!(p >= 0.0 && p < 1.0)) throw std::invalid_argument("[Dropout] expected p in [0, 1), got " + std::to_string(p));
}

Tensor Dropout::forward(const Tensor& input) {
  if (!is_training() || p_ == 0.0) return input;
  return dropout(input, p_, /*training=*/true);
}

std::shared_ptr<Module> Dropout::clone() const {
  return clone_via([this] { return std::make_shared<Dropout>(p_); });
}

}  // namespace tandem::nn
