// ResNet-18 for small images (He et al. 2016, CIFAR variant): a 3x3 stride-1 stem
// without max-pool, four stages of two BasicBlocks (64, 128, 256, 512 channels,
// stride 2 from the second stage on), global average pooling and a linear head.
#pragma once

#include <memory>

#include "layers/module.h"
#include "layers/sequential.h"

namespace tandem::nn {

class Conv2d;
class BatchNorm2d;
class AdaptiveAvgPool2d;
class Linear;

/// The two-convolution residual block: y = relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x)),
/// where s is the identity, or a 1x1 convolution + BatchNorm ("downsample") when the
/// stride or the channel count changes. Convolutions have no bias (BatchNorm follows).
class BasicBlock : public Module {
 public:
  BasicBlock(int64_t in_channels, int64_t out_channels, int64_t stride = 1);
  /// x (N, in, H, W) -> (N, out, ceil(H/stride), ceil(W/stride)).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "BasicBlock"; }
  std::shared_ptr<Module> clone() const override;

  /// Null when the shortcut is the identity.
  const std::shared_ptr<Sequential>& downsample() const { return downsample_; }

 private:
  std::shared_ptr<Conv2d> conv1_;
  std::shared_ptr<BatchNorm2d> bn1_;
  std::shared_ptr<Conv2d> conv2_;
  std::shared_ptr<BatchNorm2d> bn2_;
  std::shared_ptr<Sequential> downsample_;
};

namespace models {

struct ResNetOptions {
  /// 1 (grey) or 3 (colour).
  int64_t in_channels = 3;
  int64_t num_classes = 10;
};

/// Parameter names follow torchvision's ResNet (conv1, bn1, layer1.0.conv1,
/// layer2.0.downsample.0, fc, ...). 11,173,962 parameters for 3 channels and 10 classes.
/// Convolution weights start N(0, sqrt(2/fan_out)) as in torchvision.
class ResNet18 : public Module {
 public:
  explicit ResNet18(const ResNetOptions& options = {});
  /// x (N, C, H, W) -> logits (N, num_classes); any H, W >= 1 (32x32 for CIFAR-10).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "ResNet18"; }
  std::shared_ptr<Module> clone() const override;
  const ResNetOptions& options() const { return options_; }

 private:
  ResNetOptions options_;
  std::shared_ptr<Conv2d> conv1_;
  std::shared_ptr<BatchNorm2d> bn1_;
  std::shared_ptr<Sequential> layers_[4];
  std::shared_ptr<AdaptiveAvgPool2d> avgpool_;
  std::shared_ptr<Linear> fc_;
};

}  // namespace models
}  // namespace tandem::nn
