// Pooling layers over the pooling ops.
#include "layers/pool.h"

namespace tandem::nn {

Tensor MaxPool2d::forward(const Tensor& input) { return max_pool2d(input, kernel_size_, options_); }

Tensor AvgPool2d::forward(const Tensor& input) { return avg_pool2d(input, kernel_size_, options_); }

Tensor AdaptiveAvgPool2d::forward(const Tensor& input) { return adaptive_avg_pool2d(input, output_size_); }

std::shared_ptr<Module> MaxPool2d::clone() const {
  return clone_via([this] { return std::make_shared<MaxPool2d>(kernel_size_, options_); });
}
std::shared_ptr<Module> AvgPool2d::clone() const {
  return clone_via([this] { return std::make_shared<AvgPool2d>(kernel_size_, options_); });
}
std::shared_ptr<Module> AdaptiveAvgPool2d::clone() const {
  return clone_via([this] { return std::make_shared<AdaptiveAvgPool2d>(output_size_); });
}

}  // namespace tandem::nn
