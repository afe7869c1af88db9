// Activation layers forward to the element-wise ops.
#include "layers/activation.h"

#include "engine/ops/elementwise.h"

namespace tandem::nn {

Tensor ReLU::forward(const Tensor& input) { return relu(input); }
Tensor GELU::forward(const Tensor& input) { return gelu(input, tanh_approximation_); }
Tensor Tanh::forward(const Tensor& input) { return tanh(input); }
Tensor Sigmoid::forward(const Tensor& input) { return sigmoid(input); }

}  // namespace tandem::nn
