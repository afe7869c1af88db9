// The geometry shared by 2-D convolution and pooling kernels (CPU and CUDA): an NCHW
// input, a kernel window slid with stride, zero padding and dilation, and the output
// extent the engine computed from them. Plain data, so CUDA headers can include it.
#pragma once

#include <cstdint>

namespace tandem::kernels {

struct Window2d {
  int64_t batch = 0, channels = 0;  // N and C of the input
  int64_t in_h = 0, in_w = 0;
  int64_t out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;

  constexpr int64_t in_plane() const { return in_h * in_w; }
  constexpr int64_t out_plane() const { return out_h * out_w; }
};

}  // namespace tandem::kernels
