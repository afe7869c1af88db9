// Neural-network ops: softmax / log-softmax along any dim, fused cross-entropy, MSE
// (composed from element-wise ops and reductions) and dropout with a Philox mask
// that backward regenerates from the saved (seed, offset). Embedding lives in
// engine/ops/embedding.cpp.
#include "engine/ops/nn.h"

#include <sstream>
#include <stdexcept>
#include <string>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/dropout.h"
#include "kernels/cuda/softmax.h"

namespace tandem {
namespace {

// The (outer, n, inner) view of `shape` around `dim`: element (o, j, i) is at
// (o·n + j)·inner + i in a contiguous tensor. A 0-dim tensor is one row of one.
struct SoftmaxView {
  int64_t outer = 1, n = 1, inner = 1;
};

SoftmaxView softmax_view(const Shape& shape, int64_t dim) {
  SoftmaxView v;
  if (shape.empty()) return v;
  for (int64_t d = 0; d < dim; ++d) v.outer *= shape[d];
  v.n = shape[dim];
  for (int64_t d = dim + 1; d < static_cast<int64_t>(shape.size()); ++d) v.inner *= shape[d];
  return v;
}

// Gradient of softmax (log = false) or log_softmax (log = true) from the saved output y.
Tensor softmax_grad(const char* op, const Tensor& dy, const Tensor& y, int64_t dim, bool log) {
  const SoftmaxView v = softmax_view(y.shape(), dim);
  Tensor dx = Tensor::empty(y.shape(), {.dtype = y.dtype(), .device = y.device()});
  if (y.numel() == 0) return dx;
  dispatch_device(
      op, y.device(),
      [&] { kernels::cpu::softmax_backward(dx.data_ptr(), dy.data_ptr(), y.data_ptr(), y.dtype(), v.outer, v.n, v.inner, log); },
      [&](auto) {
        kernels::cuda::softmax_backward(dx.data_ptr(), dy.data_ptr(), y.data_ptr(), y.dtype(), v.outer, v.n, v.inner,
                                        log, cuda_stream(y.device()));
      });
  return dx;
}

Tensor softmax_impl(const char* op, const Tensor& x, int64_t dim, bool log) {
  check_defined(op, x);
  check_floating(op, x);
  dim = normalize_dim(op, dim, x.dim());
  const SoftmaxView v = softmax_view(x.shape(), dim);
  Tensor y = Tensor::empty(x.shape(), {.dtype = x.dtype(), .device = x.device()});
  if (x.numel() > 0) {
    dispatch_device(
        op, x.device(),
        [&] { kernels::cpu::softmax_forward(y.data_ptr(), x.data_ptr(), x.dtype(), v.outer, v.n, v.inner, log); },
        [&](auto) {
          kernels::cuda::softmax_forward(y.data_ptr(), x.data_ptr(), x.dtype(), v.outer, v.n, v.inner, log,
                                         cuda_stream(x.device()));
        });
  }
  autograd::record(op, {x}, {y}, [op, saved = y.detach(), dim, log](std::vector<Tensor>& g) {
    return std::vector<Tensor>{softmax_grad(op, g[0], saved, dim, log)};
  });
  return y;
}

// The dtype per-row losses, log-sum-exps and the mean's divisor are kept in.
DType compute_dtype(DType t) { return t == DType::kF64 ? DType::kF64 : DType::kF32; }

std::string format_double(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// CPU only: the GPU cannot throw from a kernel, so there invalid targets give NaN.
void check_targets_in_range(const Tensor& targets, int64_t c, int64_t ignore_index) {
  const int64_t* t = targets.data<int64_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) {
    if (t[i] == ignore_index || (t[i] >= 0 && t[i] < c)) continue;
    throw std::invalid_argument("[cross_entropy] expected targets in [0, " + std::to_string(c) + ") or ignore_index " +
                                std::to_string(ignore_index) + ", got " + std::to_string(t[i]) + " at row " +
                                std::to_string(i));
  }
}

}  // namespace

// Under autocast, softmax, log_softmax, cross_entropy and mse_loss take f32 inputs and
// return f32: exp/log of half inputs loses too much and the losses feed the scaler.
Tensor softmax(const Tensor& x, int64_t dim) {
  return softmax_impl("softmax", autocast_active() ? autocast_to_f32(x) : x, dim, false);
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  return softmax_impl("log_softmax", autocast_active() ? autocast_to_f32(x) : x, dim, true);
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const CrossEntropyOptions& options) {
  if (autocast_active()) {
    Tensor wide = autocast_to_f32(logits);
    if (!wide.is_same(logits)) return cross_entropy(wide, targets, options);
  }
  const char* op = "cross_entropy";
  check_defined(op, logits, "logits");
  check_defined(op, targets, "targets");
  if (logits.dim() != 2)
    throw std::invalid_argument(op_prefix(op) + "expected logits of 2 dims (N, C), got shape " +
                                shape_str(logits.shape()));
  check_floating(op, logits, "logits");
  if (targets.dim() != 1)
    throw std::invalid_argument(op_prefix(op) + "expected targets of 1 dim (N), got shape " +
                                shape_str(targets.shape()));
  check_dtype(op, targets, {DType::kI64}, "targets");
  check_same_device(op, logits, targets);
  const int64_t n = logits.size(0), c = logits.size(1);
  if (targets.size(0) != n)
    throw std::invalid_argument(op_prefix(op) + "expected targets of shape [" + std::to_string(n) +
                                "] to match logits of shape " + shape_str(logits.shape()) + ", got targets of shape " +
                                shape_str(targets.shape()));
  if (c < 1)
    throw std::invalid_argument(op_prefix(op) + "expected at least one class, got logits of shape " +
                                shape_str(logits.shape()));
  const double eps = options.label_smoothing;
  if (!(eps >= 0.0 && eps <= 1.0))
    throw std::invalid_argument(op_prefix(op) + "expected label_smoothing in [0, 1], got " + format_double(eps));
  if (logits.is_cpu()) check_targets_in_range(targets, c, options.ignore_index);

  const DType dtype = logits.dtype(), ct = compute_dtype(dtype);
  const Device device = logits.device();
  const Tensor x = logits.detach();
  Tensor row_loss = Tensor::empty({n}, {.dtype = ct, .device = device});
  Tensor lse = Tensor::empty({n}, {.dtype = ct, .device = device});
  const bool reduce = options.reduction != Reduction::kNone;
  const bool mean = options.reduction == Reduction::kMean;
  Tensor out, denom;
  if (reduce) {
    out = Tensor::empty({}, {.dtype = dtype, .device = device});
    denom = Tensor::empty({}, {.dtype = ct, .device = device});
  }
  dispatch_device(
      op, device,
      [&] {
        kernels::cpu::cross_entropy_forward(row_loss.data_ptr(), lse.data_ptr(), x.data_ptr(),
                                            targets.data<int64_t>(), dtype, n, c, options.ignore_index, eps);
        if (reduce)
          kernels::cpu::cross_entropy_reduce(out.data_ptr(), denom.data_ptr(), row_loss.data_ptr(),
                                             targets.data<int64_t>(), dtype, n, options.ignore_index, mean);
      },
      [&](auto) {
        cudaStream_t stream = cuda_stream(device);
        kernels::cuda::cross_entropy_forward(row_loss.data_ptr(), lse.data_ptr(), x.data_ptr(),
                                             targets.data<int64_t>(), dtype, n, c, options.ignore_index, eps, stream);
        if (reduce)
          kernels::cuda::cross_entropy_reduce(out.data_ptr(), denom.data_ptr(), row_loss.data_ptr(),
                                              targets.data<int64_t>(), dtype, n, options.ignore_index, mean, stream);
      });
  if (!reduce) {
    // Per-row losses were accumulated in the compute type; f16/bf16 round once here.
    autograd::NoGradGuard no_grad;
    out = row_loss.to(dtype);
  }

  const int64_t ignore_index = options.ignore_index;
  autograd::record(op, {logits}, {out},
                   [x, t = targets.detach(), lse, denom, reduce, ignore_index, eps](std::vector<Tensor>& g) {
                     const Tensor& grad = g[0];
                     const int64_t n = x.size(0), c = x.size(1);
                     Tensor dx = Tensor::empty(x.shape(), {.dtype = x.dtype(), .device = x.device()});
                     const void* denom_ptr = denom.defined() ? denom.data_ptr() : nullptr;
                     dispatch_device(
                         "cross_entropy_backward", x.device(),
                         [&] {
                           kernels::cpu::cross_entropy_backward(dx.data_ptr(), x.data_ptr(), lse.data_ptr(),
                                                                t.data<int64_t>(), grad.data_ptr(), !reduce, denom_ptr,
                                                                x.dtype(), n, c, ignore_index, eps);
                         },
                         [&](auto) {
                           kernels::cuda::cross_entropy_backward(dx.data_ptr(), x.data_ptr(), lse.data_ptr(),
                                                                 t.data<int64_t>(), grad.data_ptr(), !reduce,
                                                                 denom_ptr, x.dtype(), n, c, ignore_index, eps,
                                                                 cuda_stream(x.device()));
                         });
                     return std::vector<Tensor>{dx};
                   });
  return out;
}

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  if (autocast_active()) {
    Tensor in = autocast_to_f32(input), tg = autocast_to_f32(target);
    if (!in.is_same(input) || !tg.is_same(target)) return mse_loss(in, tg, reduction);
  }
  const char* op = "mse_loss";
  check_defined(op, input, "input");
  check_defined(op, target, "target");
  // No broadcasting: a (N, 1) prediction against an (N) target is almost always a bug.
  if (input.shape() != target.shape())
    throw std::invalid_argument(op_prefix(op) + "expected target of the same shape as input " +
                                shape_str(input.shape()) + ", got " + shape_str(target.shape()));
  check_floating(op, input, "input");
  check_same_dtype(op, input, target);
  check_same_device(op, input, target);
  Tensor d = sub(input, target);
  Tensor sq = mul(d, d);
  switch (reduction) {
    case Reduction::kNone: return sq;
    case Reduction::kSum: return sum(sq);
    case Reduction::kMean: return mean(sq);
  }
  return sq;
}

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  const char* op = "dropout";
  check_defined(op, x);
  if (!(p >= 0.0 && p <= 1.0))
    throw std::invalid_argument(op_prefix(op) + "expected p in [0, 1], got " + format_double(p));
  check_floating(op, x);
  if (!training || p == 0.0) return x;

  // p == 1 drops everything whatever the draw, so it consumes no random numbers
  // (as PyTorch); the kernel writes zeros, not x·0, so infinite inputs give 0.
  PhiloxState state{};
  if (p < 1.0) state = (gen ? *gen : default_generator(x.device())).reserve(x.numel());
  const double scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;

  auto apply = [p, scale, state](const Tensor& in) {
    Tensor out = Tensor::empty(in.shape(), {.dtype = in.dtype(), .device = in.device()});
    if (in.numel() == 0) return out;
    dispatch_device(
        "dropout", in.device(),
        [&] {
          if (state.offset_base != nullptr)
            throw std::logic_error("[dropout] expected a CPU generator's draw on the CPU, got one reserved in a CUDA "
                                   "graph capture");
          kernels::cpu::dropout_apply(out.data_ptr(), in.data_ptr(), in.dtype(), in.numel(), p, scale, state.seed,
                                      state.offset);
        },
        [&](auto) {
          kernels::cuda::dropout_apply(out.data_ptr(), in.data_ptr(), in.dtype(), in.numel(), p, scale, state.seed,
                                       state.offset, state.offset_base, cuda_stream(in.device()));
        });
    return out;
  };
  Tensor out = apply(x);
  // The mask is a pure function of (seed, offset): backward applies the same mask and
  // scale to the incoming gradient instead of keeping an N-element mask alive.
  autograd::record(op, {x}, {out}, [apply](std::vector<Tensor>& g) { return std::vector<Tensor>{apply(g[0])}; });
  return out;
}

}  // namespace tandem
