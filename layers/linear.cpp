// Linear: PyTorch's initialisation and the forward through the linear op.
#include "layers/linear.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/ops/factory.h"
#include "engine/ops/linalg.h"

namespace tandem::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : in_features_(in_features), out_features_(out_features) {
  if (in_features < 1 || out_features < 1) {
    throw std::invalid_argument("[Linear] expected in_features >= 1 and out_features >= 1, got " +
                                std::to_string(in_features) + " and " + std::to_string(out_features));
  }
  autograd::NoGradGuard no_grad;
  Tensor w = Tensor::empty({out_features, in_features});
  // a = sqrt(5) with the leaky-ReLU gain gives bound = 1/sqrt(fan_in), PyTorch's default.
  kaiming_uniform_(w, std::sqrt(5.0));
  weight_ = register_parameter("weight", w);
  if (bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    Tensor b = Tensor::empty({out_features});
    uniform_(b, -bound, bound);
    bias_ = register_parameter("bias", b);
  }
}

Tensor Linear::forward(const Tensor& input) { return linear(input, weight_, bias_); }

Tensor Linear::forward(const Tensor& input, Activation activation) {
  return linear(input, weight_, bias_, activation);
}

std::shared_ptr<Module> Linear::clone() const {
  return clone_via([this] { return std::make_shared<Linear>(in_features_, out_features_, bias_.defined()); });
}

}  // namespace tandem::nn
