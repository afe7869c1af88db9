// Pooling ops: argument checks and output sizes as PyTorch computes them (including
// ceil_mode's "the last window must start inside the input or its left padding"),
// device dispatch, and backward rules that call the pooling backward kernels (max pool
// keeps its int64 argmax indices for that).
#include "engine/ops/pool.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "kernels/cpu/pool.h"
#include "kernels/cuda/pool.h"
#include "kernels/window2d.h"

namespace tandem {
namespace {

std::string str(int64_t v) { return std::to_string(v); }

void check_input(const char* op, const Tensor& x) {
  check_defined(op, x, "input");
  if (x.dim() != 4)
    throw std::invalid_argument(op_prefix(op) + "expected input of 4 dims (N,C,H,W), got shape " +
                                shape_str(x.shape()));
  check_floating(op, x, "input");
}

void check_at_least(const char* op, const char* what, const Int2& v, int64_t min) {
  if (v.h < min || v.w < min)
    throw std::invalid_argument(op_prefix(op) + "expected " + what + " >= " + str(min) + ", got " + int2_str(v));
}

/// PyTorch's pooling_output_shape: floor (or ceil) division, and with ceil_mode the
/// last window dropped when it would start in the right padding.
int64_t pooled_size(int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation, bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // Floor division (span may be negative when the window does not fit).
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

kernels::Window2d plan_pool(const char* op, const Tensor& x, Int2 kernel, const std::optional<Int2>& stride_opt,
                            Int2 padding, Int2 dilation, bool ceil_mode) {
  check_input(op, x);
  const Int2 stride = stride_opt.value_or(kernel);
  check_at_least(op, "kernel_size", kernel, 1);
  check_at_least(op, "stride", stride, 1);
  check_at_least(op, "dilation", dilation, 1);
  check_at_least(op, "padding", padding, 0);
  if (padding.h > kernel.h / 2 || padding.w > kernel.w / 2)
    throw std::invalid_argument(op_prefix(op) + "expected padding at most half the kernel size, got padding " +
                                int2_str(padding) + " for kernel " + int2_str(kernel));
  kernels::Window2d g;
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.in_h = x.size(2);
  g.in_w = x.size(3);
  g.kernel_h = kernel.h;
  g.kernel_w = kernel.w;
  g.stride_h = stride.h;
  g.stride_w = stride.w;
  g.pad_h = padding.h;
  g.pad_w = padding.w;
  g.dilation_h = dilation.h;
  g.dilation_w = dilation.w;
  g.out_h = pooled_size(g.in_h, kernel.h, padding.h, stride.h, dilation.h, ceil_mode);
  g.out_w = pooled_size(g.in_w, kernel.w, padding.w, stride.w, dilation.w, ceil_mode);
  if (g.out_h < 1 || g.out_w < 1) {
    const Int2 eff{dilation.h * (kernel.h - 1) + 1, dilation.w * (kernel.w - 1) + 1};
    throw std::invalid_argument(op_prefix(op) + "expected a kernel no larger than the padded input, got kernel " +
                                int2_str(eff) + " (dilated) and padded input " +
                                int2_str({g.in_h + 2 * padding.h, g.in_w + 2 * padding.w}) + " (input " +
                                shape_str(x.shape()) + ", padding " + int2_str(padding) + ")");
  }
  return g;
}

Tensor empty_output(const Tensor& x, const kernels::Window2d& g) {
  return Tensor::empty({g.batch, g.channels, g.out_h, g.out_w}, {.dtype = x.dtype(), .device = x.device()});
}

}  // namespace

Tensor max_pool2d(const Tensor& x, Int2 kernel_size, const MaxPool2dOptions& options) {
  const char* op = "max_pool2d";
  const kernels::Window2d g =
      plan_pool(op, x, kernel_size, options.stride, options.padding, options.dilation, options.ceil_mode);
  Tensor y = empty_output(x, g);
  Tensor indices = Tensor::empty(y.shape(), {.dtype = DType::kI64, .device = x.device()});
  if (y.numel() > 0) {
    dispatch_device(
        op, x.device(),
        [&] { kernels::cpu::max_pool2d_forward(x.dtype(), g, x.data_ptr(), y.data_ptr(), indices.data<int64_t>()); },
        [&](auto) {
          kernels::cuda::max_pool2d_forward(x.dtype(), g, x.data_ptr(), y.data_ptr(), indices.data<int64_t>(),
                                            cuda_stream(x.device()));
        });
  }
  autograd::record(op, {x}, {y}, [g, indices, x_shape = x.shape()](std::vector<Tensor>& grads) {
    const Tensor& dy = grads[0];
    Tensor dx = Tensor::empty(x_shape, {.dtype = dy.dtype(), .device = dy.device()});
    if (dx.numel() == 0) return std::vector<Tensor>{dx};
    if (dy.numel() == 0) return std::vector<Tensor>{dx.zero_()};
    dispatch_device(
        "max_pool2d_backward", dy.device(),
        [&] { kernels::cpu::max_pool2d_backward(dy.dtype(), g, dy.data_ptr(), indices.data<int64_t>(), dx.data_ptr()); },
        [&](auto) {
          kernels::cuda::max_pool2d_backward(dy.dtype(), g, dy.data_ptr(), indices.data<int64_t>(), dx.data_ptr(),
                                             cuda_stream(dy.device()));
        });
    return std::vector<Tensor>{dx};
  });
  return y;
}

Tensor avg_pool2d(const Tensor& x, Int2 kernel_size, const AvgPool2dOptions& options) {
  const char* op = "avg_pool2d";
  const kernels::Window2d g = plan_pool(op, x, kernel_size, options.stride, options.padding, 1, options.ceil_mode);
  const bool include_pad = options.count_include_pad;
  Tensor y = empty_output(x, g);
  if (y.numel() > 0) {
    dispatch_device(
        op, x.device(),
        [&] { kernels::cpu::avg_pool2d_forward(x.dtype(), g, include_pad, x.data_ptr(), y.data_ptr()); },
        [&](auto) {
          kernels::cuda::avg_pool2d_forward(x.dtype(), g, include_pad, x.data_ptr(), y.data_ptr(),
                                            cuda_stream(x.device()));
        });
  }
  autograd::record(op, {x}, {y}, [g, include_pad, x_shape = x.shape()](std::vector<Tensor>& grads) {
    const Tensor& dy = grads[0];
    Tensor dx = Tensor::empty(x_shape, {.dtype = dy.dtype(), .device = dy.device()});
    if (dx.numel() == 0) return std::vector<Tensor>{dx};
    if (dy.numel() == 0) return std::vector<Tensor>{dx.zero_()};
    dispatch_device(
        "avg_pool2d_backward", dy.device(),
        [&] { kernels::cpu::avg_pool2d_backward(dy.dtype(), g, include_pad, dy.data_ptr(), dx.data_ptr()); },
        [&](auto) {
          kernels::cuda::avg_pool2d_backward(dy.dtype(), g, include_pad, dy.data_ptr(), dx.data_ptr(),
                                             cuda_stream(dy.device()));
        });
    return std::vector<Tensor>{dx};
  });
  return y;
}

Tensor adaptive_avg_pool2d(const Tensor& x, Int2 output_size) {
  const char* op = "adaptive_avg_pool2d";
  check_input(op, x);
  check_at_least(op, "output_size", output_size, 1);
  if (x.size(2) < 1 || x.size(3) < 1)
    throw std::invalid_argument(op_prefix(op) + "expected an input of non-zero height and width, got shape " +
                                shape_str(x.shape()));
  kernels::Window2d g;
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.in_h = x.size(2);
  g.in_w = x.size(3);
  g.out_h = output_size.h;
  g.out_w = output_size.w;
  Tensor y = empty_output(x, g);
  if (y.numel() > 0) {
    dispatch_device(
        op, x.device(), [&] { kernels::cpu::adaptive_avg_pool2d_forward(x.dtype(), g, x.data_ptr(), y.data_ptr()); },
        [&](auto) {
          kernels::cuda::adaptive_avg_pool2d_forward(x.dtype(), g, x.data_ptr(), y.data_ptr(),
                                                     cuda_stream(x.device()));
        });
  }
  autograd::record(op, {x}, {y}, [g, x_shape = x.shape()](std::vector<Tensor>& grads) {
    const Tensor& dy = grads[0];
    Tensor dx = Tensor::empty(x_shape, {.dtype = dy.dtype(), .device = dy.device()});
    if (dx.numel() == 0) return std::vector<Tensor>{dx};
    dispatch_device(
        "adaptive_avg_pool2d_backward", dy.device(),
        [&] { kernels::cpu::adaptive_avg_pool2d_backward(dy.dtype(), g, dy.data_ptr(), dx.data_ptr()); },
        [&](auto) {
          kernels::cuda::adaptive_avg_pool2d_backward(dy.dtype(), g, dy.data_ptr(), dx.data_ptr(),
                                                      cuda_stream(dy.device()));
        });
    return std::vector<Tensor>{dx};
  });
  return y;
}

}  // namespace tandem
