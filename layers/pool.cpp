// Pooling layers over the pooling ops.
#include "layers/pool.h"

namespace tandem::nn {

Tensor MaxPool2d::forward(const Tensor& input) { return max_pool2d(input, kernel_size_, options_); }

Tensor AvgPool2d::forward(const Tensor& input) { return avg_pool2d(input, kernel_size_, options_); }

Tensor AdaptiveAvgPool2d::forward(const Tensor& input) { return adaptive_avg_pool2d(input, output_size_); }

}  // namespace tandem::nn
