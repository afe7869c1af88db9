// CNN construction: the layer stack and the flatten width it implies.
#include "layers/models/cnn.h"

#include <memory>
#include <stdexcept>
#include <string>

#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/flatten.h"
#include "layers/linear.h"
#include "layers/norm.h"
#include "layers/pool.h"

namespace tandem::nn::models {

CNN::CNN(const CNNOptions& options) : options_(options) {
  if (options.in_channels < 1 || options.num_classes < 1 || options.hidden < 1) {
    throw std::invalid_argument("[CNN] expected in_channels, num_classes and hidden >= 1, got " +
                                std::to_string(options.in_channels) + ", " + std::to_string(options.num_classes) +
                                " and " + std::to_string(options.hidden));
  }
  // Two 2x2 poolings must leave at least one pixel.
  if (options.image_size < 4) {
    throw std::invalid_argument("[CNN] expected image_size >= 4 (two 2x2 poolings), got " +
                                std::to_string(options.image_size));
  }
  const Conv2dOptions same{.stride = 1, .padding = 1};
  push_back(std::make_shared<Conv2d>(options.in_channels, 32, 3, same));
  push_back(std::make_shared<BatchNorm2d>(32));
  push_back(std::make_shared<ReLU>());
  push_back(std::make_shared<MaxPool2d>(2));
  push_back(std::make_shared<Conv2d>(32, 64, 3, same));
  push_back(std::make_shared<BatchNorm2d>(64));
  push_back(std::make_shared<ReLU>());
  push_back(std::make_shared<MaxPool2d>(2));
  push_back(std::make_shared<Flatten>());
  push_back(std::make_shared<Linear>(flatten_features(), options.hidden));
  push_back(std::make_shared<ReLU>());
  push_back(std::make_shared<Linear>(options.hidden, options.num_classes));
}

int64_t CNN::flatten_features() const {
  const int64_t side = options_.image_size / 2 / 2;
  return 64 * side * side;
}

std::shared_ptr<Module> CNN::clone() const {
  return clone_via([this] { return std::make_shared<CNN>(options_); });
}

}  // namespace tandem::nn::models
