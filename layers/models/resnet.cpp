// BasicBlock and ResNet-18: construction, torchvision's initialisation of the
// convolutions, and the forward passes.
#include "layers/models/resnet.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "layers/conv.h"
#include "layers/linear.h"
#include "layers/norm.h"
#include "layers/pool.h"

namespace tandem::nn {

BasicBlock::BasicBlock(int64_t in_channels, int64_t out_channels, int64_t stride) {
  if (in_channels < 1 || out_channels < 1 || stride < 1) {
    throw std::invalid_argument("[BasicBlock] expected in_channels, out_channels and stride >= 1, got " +
                                std::to_string(in_channels) + ", " + std::to_string(out_channels) + " and " +
                                std::to_string(stride));
  }
  conv1_ = register_module("conv1", std::make_shared<Conv2d>(in_channels, out_channels, 3,
                                                             Conv2dOptions{.stride = stride, .padding = 1}, false));
  bn1_ = register_module("bn1", std::make_shared<BatchNorm2d>(out_channels));
  conv2_ = register_module("conv2", std::make_shared<Conv2d>(out_channels, out_channels, 3,
                                                             Conv2dOptions{.stride = 1, .padding = 1}, false));
  bn2_ = register_module("bn2", std::make_shared<BatchNorm2d>(out_channels));
  if (stride != 1 || in_channels != out_channels) {
    downsample_ = register_module(
        "downsample", std::make_shared<Sequential>(std::initializer_list<std::shared_ptr<Module>>{
                          std::make_shared<Conv2d>(in_channels, out_channels, 1, Conv2dOptions{.stride = stride}, false),
                          std::make_shared<BatchNorm2d>(out_channels)}));
  }
}

Tensor BasicBlock::forward(const Tensor& input) {
  Tensor out = relu(bn1_->forward(conv1_->forward(input)));
  out = bn2_->forward(conv2_->forward(out));
  return relu(add(out, downsample_ ? downsample_->forward(input) : input));
}

std::shared_ptr<Module> BasicBlock::clone() const {
  return clone_via([this] {
    return std::make_shared<BasicBlock>(conv1_->in_channels(), conv1_->out_channels(), conv1_->options().stride.h);
  });
}

namespace models {

std::shared_ptr<Module> ResNet18::clone() const {
  return clone_via([this] { return std::make_shared<ResNet18>(options_); });
}

ResNet18::ResNet18(const ResNetOptions& options) : options_(options) {
  if (options.in_channels != 1 && options.in_channels != 3) {
    throw std::invalid_argument("[ResNet18] expected in_channels 1 or 3, got " + std::to_string(options.in_channels));
  }
  if (options.num_classes < 1) {
    throw std::invalid_argument("[ResNet18] expected num_classes >= 1, got " + std::to_string(options.num_classes));
  }
  conv1_ = register_module("conv1", std::make_shared<Conv2d>(options.in_channels, 64, 3,
                                                             Conv2dOptions{.stride = 1, .padding = 1}, false));
  bn1_ = register_module("bn1", std::make_shared<BatchNorm2d>(64));
  const int64_t widths[4] = {64, 128, 256, 512};
  int64_t in = 64;
  for (int i = 0; i < 4; ++i) {
    auto stage = std::make_shared<Sequential>();
    // The first stage keeps the stem's resolution; each later one halves it.
    stage->push_back(std::make_shared<BasicBlock>(in, widths[i], i == 0 ? 1 : 2));
    stage->push_back(std::make_shared<BasicBlock>(widths[i], widths[i], 1));
    layers_[i] = register_module("layer" + std::to_string(i + 1), stage);
    in = widths[i];
  }
  avgpool_ = register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(1));
  fc_ = register_module("fc", std::make_shared<Linear>(512, options.num_classes));

  // torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu") for every
  // convolution: keeps activations' variance through the deep ReLU stack better
  // than the layer default. Convolution weights are the only 4-dim parameters.
  autograd::NoGradGuard no_grad;
  for (auto& [name, p] : named_parameters()) {
    if (p.dim() != 4) continue;
    const double fan_out = static_cast<double>(fan_in_out(p).second);
    normal_(p, 0.0, std::sqrt(2.0 / fan_out));
  }
}

Tensor ResNet18::forward(const Tensor& input) {
  Tensor x = relu(bn1_->forward(conv1_->forward(input)));
  for (auto& stage : layers_) x = stage->forward(x);
  x = avgpool_->forward(x);
  return fc_->forward(x.flatten(1));
}

}  // namespace models
}  // namespace tandem::nn
