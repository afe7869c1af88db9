// MLP construction.
#include "layers/models/mlp.h"

#include <memory>
#include <stdexcept>
#include <string>

#include "layers/activation.h"
#include "layers/dropout.h"
#include "layers/flatten.h"
#include "layers/linear.h"

namespace tandem::nn::models {

MLP::MLP(const MLPOptions& options) : options_(options) {
  push_back(std::make_shared<Flatten>());
  int64_t width = options.in;
  for (int64_t h : options.hidden) {
    if (h < 1) throw std::invalid_argument("[MLP] expected hidden widths >= 1, got " + std::to_string(h));
    push_back(std::make_shared<Linear>(width, h));
    push_back(std::make_shared<ReLU>());
    if (options.dropout > 0.0) push_back(std::make_shared<Dropout>(options.dropout));
    width = h;
  }
  push_back(std::make_shared<Linear>(width, options.out));
}

std::shared_ptr<Module> MLP::clone() const {
  return clone_via([this] { return std::make_shared<MLP>(options_); });
}

}  // namespace tandem::nn::models
