// Conv2d layer: 2-D convolution with a learned weight (O, C/groups, kh, kw) and an
// optional bias (O), initialised as torch.nn.Conv2d.
#pragma once

#include "engine/ops/conv.h"
#include "layers/module.h"

namespace tandem::nn {

class Conv2d : public Module {
 public:
  /// Weight from kaiming_uniform_(a = sqrt(5)), i.e. U(±1/sqrt(fan_in)) with
  /// fan_in = in/groups·kh·kw; bias from U(±1/sqrt(fan_in)); both drawn from the CPU
  /// default generator. `kernel_size` 3 means 3x3.
  Conv2d(int64_t in_channels, int64_t out_channels, Int2 kernel_size, const Conv2dOptions& options = {},
         bool bias = true);

  /// (N, in, H, W) -> (N, out, OH, OW).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Conv2d"; }
  std::shared_ptr<Module> clone() const override;

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  Int2 kernel_size() const { return kernel_size_; }
  const Conv2dOptions& options() const { return options_; }
  /// Handles sharing the registered parameters (Module::to updates them in place).
  const Tensor& weight() const { return weight_; }
  /// Undefined when built without bias.
  const Tensor& bias() const { return bias_; }

 private:
  int64_t in_channels_;
  int64_t out_channels_;
  Int2 kernel_size_;
  Conv2dOptions options_;
  Tensor weight_;
  Tensor bias_;
};

}  // namespace tandem::nn
