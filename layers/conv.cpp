// Conv2d: argument checks, PyTorch's initialisation and the forward through conv2d.
#include "layers/conv.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/ops/factory.h"

namespace tandem::nn {

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, Int2 kernel_size, const Conv2dOptions& options, bool bias)
    : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), options_(options) {
  const int64_t groups = options.groups;
  if (in_channels < 1 || out_channels < 1 || kernel_size.h < 1 || kernel_size.w < 1 || groups < 1) {
    throw std::invalid_argument("[Conv2d] expected in_channels, out_channels, kernel_size and groups >= 1, got " +
                                std::to_string(in_channels) + ", " + std::to_string(out_channels) + ", " +
                                int2_str(kernel_size) + " and " + std::to_string(groups));
  }
  if (in_channels % groups != 0 || out_channels % groups != 0) {
    throw std::invalid_argument("[Conv2d] expected groups to divide in_channels and out_channels, got groups " +
                                std::to_string(groups) + " for " + std::to_string(in_channels) + " and " +
                                std::to_string(out_channels));
  }
  autograd::NoGradGuard no_grad;
  Tensor w = Tensor::empty({out_channels, in_channels / groups, kernel_size.h, kernel_size.w});
  // a = sqrt(5) with the leaky-ReLU gain gives bound = 1/sqrt(fan_in), PyTorch's default.
  kaiming_uniform_(w, std::sqrt(5.0));
  weight_ = register_parameter("weight", w);
  if (bias) {
    const double fan_in = static_cast<double>(in_channels / groups * kernel_size.h * kernel_size.w);
    const double bound = 1.0 / std::sqrt(fan_in);
    Tensor b = Tensor::empty({out_channels});
    uniform_(b, -bound, bound);
    bias_ = register_parameter("bias", b);
  }
}

Tensor Conv2d::forward(const Tensor& input) { return conv2d(input, weight_, bias_, options_); }

std::shared_ptr<Module> Conv2d::clone() const {
  return clone_via([this] {
    return std::make_shared<Conv2d>(in_channels_, out_channels_, kernel_size_, options_, bias_.defined());
  });
}

}  // namespace tandem::nn
