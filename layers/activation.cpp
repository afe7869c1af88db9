// Activation layers forward to the element-wise ops.
#include "layers/activation.h"

#include "engine/ops/elementwise.h"

namespace tandem::nn {

Tensor ReLU::forward(const Tensor& input) { return relu(input); }
Tensor GELU::forward(const Tensor& input) { return gelu(input, tanh_approximation_); }
Tensor Tanh::forward(const Tensor& input) { return tanh(input); }
Tensor Sigmoid::forward(const Tensor& input) { return sigmoid(input); }

std::shared_ptr<Module> ReLU::clone() const {
  return clone_via([] { return std::make_shared<ReLU>(); });
}
std::shared_ptr<Module> GELU::clone() const {
  return clone_via([this] { return std::make_shared<GELU>(tanh_approximation_); });
}
std::shared_ptr<Module> Tanh::clone() const {
  return clone_via([] { return std::make_shared<Tanh>(); });
}
std::shared_ptr<Module> Sigmoid::clone() const {
  return clone_via([] { return std::make_shared<Sigmoid>(); });
}

}  // namespace tandem::nn
