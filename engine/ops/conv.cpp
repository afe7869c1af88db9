// conv2d: argument checks, output shape, device dispatch (im2col + GEMM on the CPU,
// cuDNN on CUDA) and the backward rule, which computes the wanted gradients of x,
// weight and bias with dedicated kernels (one fused pass over the batch on the CPU).
// f16/bf16 on the CPU run in f32 and round once.
#include "engine/ops/conv.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "kernels/cpu/conv.h"
#include "kernels/cuda/conv.h"
#include "kernels/window2d.h"
#include "tandem/config.h"

namespace tandem {
namespace {

constexpr const char* kOp = "conv2d";

struct ConvPlan {
  kernels::Window2d g;
  int64_t out_channels = 0;
  int64_t groups = 1;
};

std::string str(int64_t v) { return std::to_string(v); }

void check_pair(const char* what, const Int2& v, int64_t min) {
  if (v.h < min || v.w < min)
    throw std::invalid_argument(op_prefix(kOp) + "expected " + what + " >= " + str(min) + ", got " + int2_str(v));
}

ConvPlan plan_conv(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dOptions& o) {
  check_defined(kOp, x, "input");
  check_defined(kOp, weight, "weight");
  if (x.dim() != 4)
    throw std::invalid_argument(op_prefix(kOp) + "expected input of 4 dims (N,C,H,W), got shape " +
                                shape_str(x.shape()));
  if (weight.dim() != 4)
    throw std::invalid_argument(op_prefix(kOp) + "expected weight of 4 dims (O,C/groups,kh,kw), got shape " +
                                shape_str(weight.shape()));
  check_floating(kOp, x, "input");
  check_same_dtype(kOp, x, weight);
  check_same_device(kOp, x, weight);
  check_pair("stride", o.stride, 1);
  check_pair("dilation", o.dilation, 1);
  check_pair("padding", o.padding, 0);
  const int64_t c = x.size(1), out = weight.size(0), groups = o.groups;
  if (groups < 1) throw std::invalid_argument(op_prefix(kOp) + "expected groups >= 1, got " + str(groups));
  if (c % groups != 0 || out % groups != 0)
    throw std::invalid_argument(op_prefix(kOp) + "expected groups to divide the input channels C and the output "
                                "channels O, got groups " + str(groups) + ", C " + str(c) + " (input " +
                                shape_str(x.shape()) + "), O " + str(out) + " (weight " +
                                shape_str(weight.shape()) + ")");
  if (weight.size(1) * groups != c)
    throw std::invalid_argument(op_prefix(kOp) + "expected input with C = weight.shape[1]·groups = " +
                                str(weight.size(1) * groups) + " channels (weight " + shape_str(weight.shape()) +
                                ", groups " + str(groups) + "), got input of shape " + shape_str(x.shape()) +
                                " with C = " + str(c));
  if (bias.defined()) {
    check_same_dtype(kOp, x, bias);
    check_same_device(kOp, x, bias);
    if (bias.dim() != 1 || bias.size(0) != out)
      throw std::invalid_argument(op_prefix(kOp) + "expected bias of shape [" + str(out) + "] to match weight " +
                                  shape_str(weight.shape()) + ", got " + shape_str(bias.shape()));
  }
  kernels::Window2d g;
  g.batch = x.size(0);
  g.channels = c;
  g.in_h = x.size(2);
  g.in_w = x.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = o.stride.h;
  g.stride_w = o.stride.w;
  g.pad_h = o.padding.h;
  g.pad_w = o.padding.w;
  g.dilation_h = o.dilation.h;
  g.dilation_w = o.dilation.w;
  const int64_t eff_h = o.dilation.h * (g.kernel_h - 1) + 1, eff_w = o.dilation.w * (g.kernel_w - 1) + 1;
  const int64_t padded_h = g.in_h + 2 * g.pad_h, padded_w = g.in_w + 2 * g.pad_w;
  if (g.kernel_h < 1 || g.kernel_w < 1 || eff_h > padded_h || eff_w > padded_w)
    throw std::invalid_argument(op_prefix(kOp) + "expected a kernel no larger than the padded input, got kernel " +
                                int2_str({eff_h, eff_w}) + " (weight " + shape_str(weight.shape()) + ", dilation " +
                                int2_str(o.dilation) + ") and padded input " + int2_str({padded_h, padded_w}) +
                                " (input " + shape_str(x.shape()) + ", padding " + int2_str(o.padding) + ")");
  g.out_h = (padded_h - eff_h) / g.stride_h + 1;
  g.out_w = (padded_w - eff_w) / g.stride_w + 1;
  return {g, out, groups};
}

/// Narrow CPU dtypes compute in f32: returns t as f32 (t itself when it already is).
Tensor widen(const Tensor& t) { return t.dtype() == DType::kF32 || t.dtype() == DType::kF64 ? t : t.to(DType::kF32); }

/// Copies the f32 result back into the caller's narrow-dtype tensor.
void store(Tensor& dst, const Tensor& wide) {
  if (!wide.is_same(dst)) dst.copy_(wide);
}

/// A wide twin of `t` to compute into (t itself for f32/f64).
Tensor wide_like(const Tensor& t) {
  if (!t.defined() || t.dtype() == DType::kF32 || t.dtype() == DType::kF64) return t;
  return Tensor::empty(t.shape(), {.dtype = DType::kF32, .device = t.device()});
}

void* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

/// Workspace for cuDNN from the caching allocator; the blocks are kept until the
/// holder goes out of scope, after the launches that use them were queued.
struct WorkspaceHolder {
  Device device;
  std::vector<Tensor> blocks;
  kernels::cuda::WorkspaceFn fn() {
    return [this](size_t bytes) -> void* {
      if (bytes == 0) return nullptr;
      blocks.push_back(Tensor::empty({static_cast<int64_t>(bytes)}, {.dtype = DType::kU8, .device = device}));
      return blocks.back().data_ptr();
    };
  }
};

[[noreturn]] void throw_no_cudnn() {
  throw std::invalid_argument(op_prefix(kOp) + "needs cuDNN, this build has none (configure with TANDEM_CUDNN=ON)");
}

void conv_forward(const ConvPlan& p, const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  dispatch_device(
      kOp, x.device(),
      [&] {
        autograd::NoGradGuard no_grad;
        Tensor xw = widen(x), ww = widen(w), bw = b.defined() ? widen(b) : Tensor(), yw = wide_like(y);
        kernels::cpu::conv2d_forward(xw.dtype(), p.g, p.out_channels, p.groups, xw.data_ptr(), ww.data_ptr(),
                                     ptr_or_null(bw), yw.data_ptr());
        store(y, yw);
      },
      [&](auto) {
        if constexpr (!TANDEM_CUDNN) throw_no_cudnn();
        WorkspaceHolder ws{x.device(), {}};
        kernels::cuda::conv2d_forward(x.dtype(), p.g, p.out_channels, p.groups, x.data_ptr(), w.data_ptr(),
                                      ptr_or_null(b), y.data_ptr(), ws.fn(), cuda_stream(x.device()));
      });
}

/// Fills the defined ones of dx, dw, db.
void conv_backward(const ConvPlan& p, const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx, Tensor& dw,
                   Tensor& db) {
  dispatch_device(
      "conv2d_backward", x.device(),
      [&] {
        autograd::NoGradGuard no_grad;
        Tensor xw = widen(x), ww = widen(w), dyw = widen(dy);
        Tensor dxw = wide_like(dx), dww = wide_like(dw), dbw = wide_like(db);
        kernels::cpu::conv2d_backward(xw.dtype(), p.g, p.out_channels, p.groups, xw.data_ptr(), ww.data_ptr(),
                                      dyw.data_ptr(), ptr_or_null(dxw), ptr_or_null(dww), ptr_or_null(dbw));
        if (dx.defined()) store(dx, dxw);
        if (dw.defined()) store(dw, dww);
        if (db.defined()) store(db, dbw);
      },
      [&](auto) {
        if constexpr (!TANDEM_CUDNN) throw_no_cudnn();
        cudaStream_t stream = cuda_stream(x.device());
        WorkspaceHolder ws{x.device(), {}};
        if (dx.defined())
          kernels::cuda::conv2d_backward_data(x.dtype(), p.g, p.out_channels, p.groups, w.data_ptr(), dy.data_ptr(),
                                              dx.data_ptr(), ws.fn(), stream);
        if (dw.defined())
          kernels::cuda::conv2d_backward_filter(x.dtype(), p.g, p.out_channels, p.groups, x.data_ptr(),
                                                dy.data_ptr(), dw.data_ptr(), ws.fn(), stream);
        if (db.defined())
          kernels::cuda::conv2d_backward_bias(x.dtype(), p.g.batch, p.out_channels, p.g.out_plane(), dy.data_ptr(),
                                              db.data_ptr(), stream);
      });
}

}  // namespace

std::string int2_str(const Int2& v) { return std::to_string(v.h) + "x" + std::to_string(v.w); }

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dOptions& options) {
  if (autocast_active()) {  // autocast: low precision, bias included
    Tensor xl = autocast_to_low(x), wl = autocast_to_low(weight), bl = autocast_to_low(bias);
    if (!xl.is_same(x) || !wl.is_same(weight) || !bl.is_same(bias)) return conv2d(xl, wl, bl, options);
  }
  const ConvPlan p = plan_conv(x, weight, bias, options);
  const TensorOptions out_options{.dtype = x.dtype(), .device = x.device()};
  Tensor y = Tensor::empty({p.g.batch, p.out_channels, p.g.out_h, p.g.out_w}, out_options);
  if (y.numel() > 0) conv_forward(p, x.detach(), weight.detach(), bias.defined() ? bias.detach() : Tensor(), y);

  const bool need_x = x.requires_grad(), need_w = weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  autograd::record(kOp, {x, weight, bias}, {y},
                   [p, x = x.detach(), w = weight.detach(), need_x, need_w, need_b](std::vector<Tensor>& grads) {
                     const Tensor& dy = grads[0];
                     const TensorOptions o{.dtype = x.dtype(), .device = x.device()};
                     Tensor dx = need_x ? Tensor::empty(x.shape(), o) : Tensor();
                     Tensor dw = need_w ? Tensor::empty(w.shape(), o) : Tensor();
                     Tensor db = need_b ? Tensor::empty({p.out_channels}, o) : Tensor();
                     if (dy.numel() > 0) {
                       conv_backward(p, x, w, dy, dx, dw, db);
                     } else {  // empty batch (or output): nothing flows back
                       for (Tensor* t : {&dx, &dw, &db})
                         if (t->defined()) t->zero_();
                     }
                     return std::vector<Tensor>{dx, dw, db};
                   });
  return y;
}

}  // namespace tandem
