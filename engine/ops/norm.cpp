// Batch norm and layer norm: argument checks, dispatch to kernels/{cpu,cuda}/
// {batch,layer}_norm and the backward rules. batch_norm is composed of the four
// batch-norm pieces (stats, elemt, backward_reduce, backward_elemt) that
// comm::SyncBatchNorm also calls, with its all-reduces in between.
#include "engine/ops/norm.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/batch_norm.h"
#include "kernels/cpu/layer_norm.h"
#include "kernels/cuda/batch_norm.h"
#include "kernels/cuda/layer_norm.h"

namespace tandem {
namespace {

// (n, c, inner) view of a batch-norm input (N, C, ...).
struct ChannelView {
  int64_t n = 0, c = 0, inner = 1;
  int64_t count() const { return n * inner; }
};

ChannelView channel_view(const Tensor& x) {
  ChannelView v;
  v.n = x.size(0);
  v.c = x.size(1);
  for (int64_t d = 2; d < x.dim(); ++d) v.inner *= x.size(d);
  return v;
}

// Device scratch for the two-stage CUDA reductions, from the caching allocator.
Tensor workspace(size_t bytes, Device device) {
  return Tensor::empty({static_cast<int64_t>(bytes)}, {.dtype = DType::kU8, .device = device});
}

const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* ptr_or_null(Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// A per-channel vector in the statistics dtype (converted if needed; undefined stays undefined).
Tensor as_stat(const Tensor& t, DType stat) {
  if (!t.defined()) return t;
  autograd::NoGradGuard no_grad;
  return t.detach().to(stat);
}

void check_batch_norm_input(const char* op, const Tensor& x) {
  check_defined(op, x);
  if (x.dim() < 2)
    throw std::invalid_argument(op_prefix(op) + "expected input of at least 2 dims (N, C, ...), got shape " +
                                shape_str(x.shape()));
  check_floating(op, x);
}

// A per-channel argument: 1-D of x's channel count, floating, on x's device.
void check_channel_vector(const char* op, const Tensor& t, const char* name, const Tensor& x) {
  if (!t.defined()) return;
  const int64_t c = x.size(1);
  if (t.dim() != 1 || t.size(0) != c)
    throw std::invalid_argument(op_prefix(op) + "expected " + name + " of shape [" + std::to_string(c) +
                                "] to match the " + std::to_string(c) + " channels of input shape " +
                                shape_str(x.shape()) + ", got " + name + " of shape " + shape_str(t.shape()));
  check_floating(op, t, name);
  check_same_device(op, x, t);
}

}  // namespace

// ---- batch-norm pieces ------------------------------------------------------------------------

DType batch_norm_stat_dtype(DType dtype) { return dtype == DType::kF64 ? DType::kF64 : DType::kF32; }

BatchNormStats batch_norm_stats(const Tensor& x, double eps) {
  const char* op = "batch_norm_stats";
  check_batch_norm_input(op, x);
  const ChannelView v = channel_view(x);
  const TensorOptions so = {.dtype = batch_norm_stat_dtype(x.dtype()), .device = x.device()};
  BatchNormStats s{Tensor::empty({v.c}, so), Tensor::empty({v.c}, so)};
  dispatch_device(
      op, x.device(),
      [&] { kernels::cpu::batch_norm_stats(s.mean.data_ptr(), s.invstd.data_ptr(), x.data_ptr(), x.dtype(), v.n, v.c, v.inner, eps); },
      [&](auto) {
        Tensor ws = workspace(kernels::cuda::batch_norm_workspace_bytes(x.dtype(), v.n, v.c, v.inner), x.device());
        kernels::cuda::batch_norm_stats(s.mean.data_ptr(), s.invstd.data_ptr(), ws.data_ptr(), x.data_ptr(), x.dtype(),
                                        v.n, v.c, v.inner, eps, cuda_stream(x.device()));
      });
  return s;
}

Tensor batch_norm_elemt(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& weight,
                        const Tensor& bias) {
  const char* op = "batch_norm_elemt";
  check_batch_norm_input(op, x);
  const DType stat = batch_norm_stat_dtype(x.dtype());
  check_defined(op, mean, "mean");
  check_defined(op, invstd, "invstd");
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, {&invstd, "invstd"}, {&weight, "weight"}, {&bias, "bias"}})
    check_channel_vector(op, *t, name, x);
  const Tensor m = as_stat(mean, stat), is = as_stat(invstd, stat), w = as_stat(weight, stat), b = as_stat(bias, stat);
  const ChannelView v = channel_view(x);
  Tensor y = Tensor::empty(x.shape(), {.dtype = x.dtype(), .device = x.device()});
  dispatch_device(
      op, x.device(),
      [&] {
        kernels::cpu::batch_norm_elemt(y.data_ptr(), x.data_ptr(), m.data_ptr(), is.data_ptr(), ptr_or_null(w),
                                       ptr_or_null(b), x.dtype(), v.n, v.c, v.inner);
      },
      [&](auto) {
        kernels::cuda::batch_norm_elemt(y.data_ptr(), x.data_ptr(), m.data_ptr(), is.data_ptr(), ptr_or_null(w),
                                        ptr_or_null(b), x.dtype(), v.n, v.c, v.inner, cuda_stream(x.device()));
      });
  return y;
}

namespace {
// grad_output must match the input in shape, dtype and device.
void check_grad_output(const char* op, const Tensor& dy, const Tensor& x) {
  check_defined(op, dy, "grad_output");
  if (dy.shape() != x.shape())
    throw std::invalid_argument(op_prefix(op) + "expected grad_output of the input's shape " + shape_str(x.shape()) +
                                ", got " + shape_str(dy.shape()));
  check_same_dtype(op, x, dy);
  check_same_device(op, x, dy);
}
}  // namespace

BatchNormBackwardReduce batch_norm_backward_reduce(const Tensor& dy, const Tensor& x, const Tensor& mean,
                                                   const Tensor& invstd, bool weight_grad, bool bias_grad) {
  const char* op = "batch_norm_backward_reduce";
  check_batch_norm_input(op, x);
  check_grad_output(op, dy, x);
  check_defined(op, mean, "mean");
  check_defined(op, invstd, "invstd");
  check_channel_vector(op, mean, "mean", x);
  check_channel_vector(op, invstd, "invstd", x);
  const DType stat = batch_norm_stat_dtype(x.dtype());
  const Tensor m = as_stat(mean, stat), is = as_stat(invstd, stat);
  const ChannelView v = channel_view(x);
  const TensorOptions so = {.dtype = stat, .device = x.device()};
  BatchNormBackwardReduce r;
  r.sum_dy = Tensor::empty({v.c}, so);
  r.sum_dy_xmu = Tensor::empty({v.c}, so);
  if (weight_grad) r.grad_weight = Tensor::empty({v.c}, so);
  if (bias_grad) r.grad_bias = Tensor::empty({v.c}, so);
  dispatch_device(
      op, x.device(),
      [&] {
        kernels::cpu::batch_norm_backward_reduce(r.sum_dy.data_ptr(), r.sum_dy_xmu.data_ptr(), ptr_or_null(r.grad_weight),
                                                 ptr_or_null(r.grad_bias), dy.data_ptr(), x.data_ptr(), m.data_ptr(),
                                                 is.data_ptr(), x.dtype(), v.n, v.c, v.inner);
      },
      [&](auto) {
        Tensor ws = workspace(kernels::cuda::batch_norm_workspace_bytes(x.dtype(), v.n, v.c, v.inner), x.device());
        kernels::cuda::batch_norm_backward_reduce(r.sum_dy.data_ptr(), r.sum_dy_xmu.data_ptr(),
                                                  ptr_or_null(r.grad_weight), ptr_or_null(r.grad_bias), ws.data_ptr(),
                                                  dy.data_ptr(), x.data_ptr(), m.data_ptr(), is.data_ptr(), x.dtype(),
                                                  v.n, v.c, v.inner, cuda_stream(x.device()));
      });
  return r;
}

Tensor batch_norm_backward_elemt(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                 const Tensor& weight, const Tensor& sum_dy, const Tensor& sum_dy_xmu, int64_t count) {
  const char* op = "batch_norm_backward_elemt";
  check_batch_norm_input(op, x);
  check_grad_output(op, dy, x);
  check_defined(op, mean, "mean");
  check_defined(op, invstd, "invstd");
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, {&invstd, "invstd"}, {&weight, "weight"},
                                {&sum_dy, "sum_dy"}, {&sum_dy_xmu, "sum_dy_xmu"}})
    check_channel_vector(op, *t, name, x);
  if (count < 0) throw std::invalid_argument(op_prefix(op) + "expected count >= 0, got " + std::to_string(count));
  const DType stat = batch_norm_stat_dtype(x.dtype());
  const Tensor m = as_stat(mean, stat), is = as_stat(invstd, stat), w = as_stat(weight, stat);
  const Tensor sdy = as_stat(sum_dy, stat), sdyx = as_stat(sum_dy_xmu, stat);
  const ChannelView v = channel_view(x);
  Tensor dx = Tensor::empty(x.shape(), {.dtype = x.dtype(), .device = x.device()});
  dispatch_device(
      op, x.device(),
      [&] {
        kernels::cpu::batch_norm_backward_elemt(dx.data_ptr(), dy.data_ptr(), x.data_ptr(), m.data_ptr(), is.data_ptr(),
                                                ptr_or_null(w), ptr_or_null(sdy), ptr_or_null(sdyx), count, x.dtype(),
                                                v.n, v.c, v.inner);
      },
      [&](auto) {
        kernels::cuda::batch_norm_backward_elemt(dx.data_ptr(), dy.data_ptr(), x.data_ptr(), m.data_ptr(),
                                                 is.data_ptr(), ptr_or_null(w), ptr_or_null(sdy), ptr_or_null(sdyx),
                                                 count, x.dtype(), v.n, v.c, v.inner, cuda_stream(x.device()));
      });
  return dx;
}

void batch_norm_update_running_stats(const Tensor& running_mean, const Tensor& running_var, const Tensor& mean,
                                     const Tensor& invstd, double momentum, double eps, int64_t count) {
  const char* op = "batch_norm_update_running_stats";
  if (count == 0) return;
  if (count == 1)
    throw std::invalid_argument(op_prefix(op) + "expected count > 1 (an unbiased variance needs two values), got 1");
  autograd::NoGradGuard no_grad;
  // The unbiased variance from the saved inverse std: var = 1/invstd² − eps, ·n/(n − 1).
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  if (running_mean.defined()) {
    Tensor rm = running_mean;
    mul_(rm, 1.0 - momentum);
    add_(rm, mean.detach().to(rm.dtype()), momentum);
  }
  if (running_var.defined()) {
    Tensor rv = running_var;
    Tensor var = mul(add(rdiv(square(invstd.detach()), 1.0), -eps), unbias);
    mul_(rv, 1.0 - momentum);
    add_(rv, var.to(rv.dtype()), momentum);
  }
}

// ---- batch_norm ----------------------------------------------------------------------------------

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps) {
  const char* op = "batch_norm";
  check_batch_norm_input(op, x);
  check_channel_vector(op, weight, "weight", x);
  check_channel_vector(op, bias, "bias", x);
  check_channel_vector(op, running_mean, "running_mean", x);
  check_channel_vector(op, running_var, "running_var", x);
  if (running_mean.defined() != running_var.defined())
    throw std::invalid_argument(op_prefix(op) + "expected running_mean and running_var both defined or both undefined, got " +
                                (running_mean.defined() ? "only running_mean" : "only running_var"));
  if (!training && !running_mean.defined())
    throw std::invalid_argument(op_prefix(op) +
                                "expected running_mean and running_var in eval mode (training = false), got none");
  if (!(eps >= 0.0)) throw std::invalid_argument(op_prefix(op) + "expected eps >= 0, got " + std::to_string(eps));
  const ChannelView v = channel_view(x);
  if (training && v.count() == 1)
    throw std::invalid_argument(op_prefix(op) + "expected more than 1 value per channel when training, got input size " +
                                shape_str(x.shape()));

  const DType stat = batch_norm_stat_dtype(x.dtype());
  const Tensor xd = x.detach();
  Tensor mean, invstd;
  if (training) {
    BatchNormStats s = batch_norm_stats(xd, eps);
    mean = s.mean;
    invstd = s.invstd;
    if (running_mean.defined())
      batch_norm_update_running_stats(running_mean, running_var, mean, invstd, momentum, eps, v.count());
  } else {
    autograd::NoGradGuard no_grad;
    mean = as_stat(running_mean, stat);
    invstd = rdiv(sqrt(add(as_stat(running_var, stat), eps)), 1.0);
  }
  const Tensor w = as_stat(weight, stat);
  Tensor y = batch_norm_elemt(xd, mean, invstd, w, as_stat(bias, stat));

  const bool need_x = x.requires_grad();
  const bool need_w = weight.defined() && weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  const DType w_dtype = weight.defined() ? weight.dtype() : stat;
  const DType b_dtype = bias.defined() ? bias.dtype() : stat;
  autograd::record(op, {x, weight, bias}, {y},
                   [xd, w, mean, invstd, training, count = v.count(), need_x, need_w, need_b, w_dtype,
                    b_dtype](std::vector<Tensor>& g) {
                     const Tensor& dy = g[0];
                     Tensor gx, gw, gb;
                     BatchNormBackwardReduce r;
                     // Eval mode treats mean and invstd as constants: dx needs no sums.
                     if (training || need_w || need_b)
                       r = batch_norm_backward_reduce(dy, xd, mean, invstd, need_w, need_b);
                     if (need_x) {
                       gx = training ? batch_norm_backward_elemt(dy, xd, mean, invstd, w, r.sum_dy, r.sum_dy_xmu, count)
                                     : batch_norm_backward_elemt(dy, xd, mean, invstd, w, Tensor(), Tensor(), count);
                     }
                     if (need_w) gw = r.grad_weight.to(w_dtype);
                     if (need_b) gb = r.grad_bias.to(b_dtype);
                     return std::vector<Tensor>{gx, gw, gb};
                   });
  return y;
}

// ---- layer_norm ----------------------------------------------------------------------------------

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  if (autocast_active()) {  // autocast: f32 (input and affine parameters), f32 output
    Tensor xw = autocast_to_f32(x), ww = autocast_to_f32(weight), bw = autocast_to_f32(bias);
    if (!xw.is_same(x) || !ww.is_same(weight) || !bw.is_same(bias)) return layer_norm(xw, normalized_shape, ww, bw, eps);
  }
  const char* op = "layer_norm";
  check_defined(op, x);
  check_floating(op, x);
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  if (k == 0)
    throw std::invalid_argument(op_prefix(op) + "expected normalized_shape of at least 1 dim, got []");
  const Shape& s = x.shape();
  if (x.dim() < k || !std::equal(normalized_shape.begin(), normalized_shape.end(), s.end() - k))
    throw std::invalid_argument(op_prefix(op) + "expected input with trailing dims " + shape_str(normalized_shape) +
                                " (normalized_shape), got input shape " + shape_str(s));
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, {&bias, "bias"}}) {
    if (!t->defined()) continue;
    if (t->shape() != normalized_shape)
      throw std::invalid_argument(op_prefix(op) + "expected " + name + " of normalized_shape " +
                                  shape_str(normalized_shape) + ", got " + name + " of shape " + shape_str(t->shape()));
    check_same_dtype(op, x, *t);
    check_same_device(op, x, *t);
  }
  if (!(eps >= 0.0)) throw std::invalid_argument(op_prefix(op) + "expected eps >= 0, got " + std::to_string(eps));

  const int64_t cols = shape_numel(normalized_shape);
  int64_t rows = 1;
  for (int64_t d = 0; d < x.dim() - k; ++d) rows *= s[d];
  const TensorOptions so = {.dtype = batch_norm_stat_dtype(x.dtype()), .device = x.device()};
  Tensor y = Tensor::empty(s, {.dtype = x.dtype(), .device = x.device()});
  Tensor mean = Tensor::empty({rows}, so), rstd = Tensor::empty({rows}, so);
  const Tensor xd = x.detach(), wd = weight.defined() ? weight.detach() : Tensor();
  if (x.numel() > 0) {
    dispatch_device(
        op, x.device(),
        [&] {
          kernels::cpu::layer_norm_forward(y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), xd.data_ptr(),
                                           ptr_or_null(wd), ptr_or_null(bias), x.dtype(), rows, cols, eps);
        },
        [&](auto) {
          kernels::cuda::layer_norm_forward(y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), xd.data_ptr(),
                                            ptr_or_null(wd), ptr_or_null(bias), x.dtype(), rows, cols, eps,
                                            cuda_stream(x.device()));
        });
  }

  const bool need_x = x.requires_grad();
  const bool need_w = weight.defined() && weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  autograd::record(op, {x, weight, bias}, {y},
                   [xd, wd, mean, rstd, rows, cols, normalized_shape, need_x, need_w, need_b](std::vector<Tensor>& g) {
                     const Tensor& dy = g[0];
                     const TensorOptions o = {.dtype = xd.dtype(), .device = xd.device()};
                     Tensor gx, gw, gb;
                     if (need_x) gx = Tensor::empty(xd.shape(), o);
                     if (need_w) gw = Tensor::empty(normalized_shape, o);
                     if (need_b) gb = Tensor::empty(normalized_shape, o);
                     if (xd.numel() == 0) {
                       // No rows: the parameter gradients are sums of nothing.
                       if (need_w) gw.zero_();
                       if (need_b) gb.zero_();
                       return std::vector<Tensor>{gx, gw, gb};
                     }
                     dispatch_device(
                         "layer_norm_backward", xd.device(),
                         [&] {
                           kernels::cpu::layer_norm_backward(ptr_or_null(gx), ptr_or_null(gw), ptr_or_null(gb),
                                                             dy.data_ptr(), xd.data_ptr(), mean.data_ptr(),
                                                             rstd.data_ptr(), ptr_or_null(wd), xd.dtype(), rows, cols);
                         },
                         [&](auto) {
                           Tensor ws;
                           if (need_w || need_b)
                             ws = workspace(kernels::cuda::layer_norm_backward_workspace_bytes(xd.dtype(), rows, cols),
                                            xd.device());
                           kernels::cuda::layer_norm_backward(ptr_or_null(gx), ptr_or_null(gw), ptr_or_null(gb),
                                                              ptr_or_null(ws), dy.data_ptr(), xd.data_ptr(),
                                                              mean.data_ptr(), rstd.data_ptr(), ptr_or_null(wd),
                                                              xd.dtype(), rows, cols, cuda_stream(xd.device()));
                         });
                     return std::vector<Tensor>{gx, gw, gb};
                   });
  return y;
}

}  // namespace tandem
