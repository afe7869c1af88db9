// Small convolutional classifier: two (Conv 3x3 -> BatchNorm -> ReLU -> MaxPool 2)
// stages, then Flatten -> Linear -> ReLU -> Linear.
#pragma once

#include "layers/sequential.h"

namespace tandem::nn::models {

struct CNNOptions {
  int64_t in_channels = 1;
  int64_t num_classes = 10;
  /// Height and width of the (square) input; each pooling halves it, rounding down.
  int64_t image_size = 28;
  /// Width of the hidden linear layer.
  int64_t hidden = 128;
};

/// conv(in→32,3,pad 1)-BN-ReLU-maxpool2 - conv(32→64,3,pad 1)-BN-ReLU-maxpool2 -
/// flatten - linear(64·(s/4)²→128)-ReLU - linear(128→classes); 421,834 parameters for
/// 1x28x28 (Fashion-MNIST), 545,290 for 3x32x32 (CIFAR-10). A Sequential, so names
/// ("0.weight", "1.running_mean", "9.weight", ...) match the same torch.nn.Sequential.
class CNN : public Sequential {
 public:
  explicit CNN(const CNNOptions& options = {});
  std::string name() const override { return "CNN"; }
  std::shared_ptr<Module> clone() const override;
  const CNNOptions& options() const { return options_; }
  /// Input width of the first linear layer: 64 · (image_size / 4)².
  int64_t flatten_features() const;

 private:
  CNNOptions options_;
};

}  // namespace tandem::nn::models
