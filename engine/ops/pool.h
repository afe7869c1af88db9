// 2-D pooling over NCHW tensors, as torch.nn.functional: max_pool2d, avg_pool2d and
// adaptive_avg_pool2d. CPU loops and hand-written CUDA kernels.
#pragma once

#include <optional>

#include "engine/ops/conv.h"
#include "engine/tensor.h"

namespace tandem {

struct MaxPool2dOptions {
  std::optional<Int2> stride = std::nullopt;  // the kernel size when unset; a pair as Int2{h, w}
  Int2 padding = 0;            // implicit -inf on each side, at most half the kernel
  Int2 dilation = 1;
  bool ceil_mode = false;      // round the output size up (windows must still start inside)
};

/// Maximum over each kernel window (N, C, H, W) -> (N, C, OH, OW),
/// OH = ⌊(H + 2·pad − dil·(k − 1) − 1) / stride⌋ + 1 (⌈⌉ with ceil_mode). The gradient
/// goes to the element that was the maximum (argmax indices are saved for backward).
Tensor max_pool2d(const Tensor& x, Int2 kernel_size, const MaxPool2dOptions& options = {});

struct AvgPool2dOptions {
  std::optional<Int2> stride = std::nullopt;  // the kernel size when unset; a pair as Int2{h, w}
  Int2 padding = 0;               // implicit zeros on each side, at most half the kernel
  bool ceil_mode = false;
  bool count_include_pad = true;  // padding zeros count in the divisor
};

/// Mean over each kernel window, with PyTorch's divisor rules (count_include_pad
/// counts padding up to the padded edge; otherwise only input elements count).
Tensor avg_pool2d(const Tensor& x, Int2 kernel_size, const AvgPool2dOptions& options = {});

/// Mean over adaptive windows giving an (N, C, oh, ow) output: output row i averages input
/// rows [⌊i·H/oh⌋, ⌈(i+1)·H/oh⌉), likewise for columns.
Tensor adaptive_avg_pool2d(const Tensor& x, Int2 output_size);

}  // namespace tandem
