// Pooling layers (no parameters): MaxPool2d, AvgPool2d and AdaptiveAvgPool2d, as their
// torch.nn namesakes.
#pragma once

#include "engine/ops/pool.h"
#include "layers/module.h"

namespace tandem::nn {

class MaxPool2d : public Module {
 public:
  /// Stride defaults to the kernel size.
  explicit MaxPool2d(Int2 kernel_size, const MaxPool2dOptions& options = {})
      : kernel_size_(kernel_size), options_(options) {}
  /// (N, C, H, W) -> (N, C, OH, OW).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "MaxPool2d"; }
  std::shared_ptr<Module> clone() const override;

 private:
  Int2 kernel_size_;
  MaxPool2dOptions options_;
};

class AvgPool2d : public Module {
 public:
  /// Stride defaults to the kernel size; padding counts in the divisor by default.
  explicit AvgPool2d(Int2 kernel_size, const AvgPool2dOptions& options = {})
      : kernel_size_(kernel_size), options_(options) {}
  /// (N, C, H, W) -> (N, C, OH, OW).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "AvgPool2d"; }
  std::shared_ptr<Module> clone() const override;

 private:
  Int2 kernel_size_;
  AvgPool2dOptions options_;
};

class AdaptiveAvgPool2d : public Module {
 public:
  /// Output (oh, ow) whatever the input size; 1 gives global average pooling.
  explicit AdaptiveAvgPool2d(Int2 output_size) : output_size_(output_size) {}
  /// (N, C, H, W) -> (N, C, oh, ow).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "AdaptiveAvgPool2d"; }
  std::shared_ptr<Module> clone() const override;

 private:
  Int2 output_size_;
};

}  // namespace tandem::nn
