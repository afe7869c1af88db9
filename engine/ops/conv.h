// 2-D convolution over NCHW tensors with stride, padding, dilation and groups, as
// torch.nn.functional.conv2d. CPU by im2col + GEMM, CUDA through cuDNN.
#pragma once

#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace tandem {

/// A (height, width) pair that a single number initialises to (n, n), so options read
/// like PyTorch's: {.stride = 2, .padding = {1, 0}}.
struct Int2 {
  int64_t h = 0;
  int64_t w = 0;
  constexpr Int2() = default;
  constexpr Int2(int64_t v) : h(v), w(v) {}  // NOLINT(google-explicit-constructor): 3 means 3x3
  constexpr Int2(int64_t h_, int64_t w_) : h(h_), w(w_) {}
  friend constexpr bool operator==(const Int2& a, const Int2& b) { return a.h == b.h && a.w == b.w; }
};

/// "3x3"
std::string int2_str(const Int2& v);

struct Conv2dOptions {
  Int2 stride = 1;
  Int2 padding = 0;   // zeros on each side
  Int2 dilation = 1;  // spacing between kernel taps
  int64_t groups = 1; // C and O split into this many independent convolutions
};

/// y (N, O, OH, OW) = conv2d(x (N, C, H, W), weight (O, C/groups, kh, kw)) + bias (O),
/// OH = ⌊(H + 2·pad − dil·(kh − 1) − 1) / stride⌋ + 1 (likewise OW). `bias` may be
/// undefined. Differentiable in x, weight and bias (first order).
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(), const Conv2dOptions& options = {});

}  // namespace tandem
