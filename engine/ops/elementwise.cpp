// Element-wise ops: checks, broadcasting, dispatch and backward rules.
#include "engine/ops/elementwise.h"

#include <stdexcept>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/reduce.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/elementwise.h"

namespace tandem {
namespace {

using kernels::BinaryOp;
using kernels::ScalarOp;
using kernels::UnaryGradOp;
using kernels::UnaryOp;

Tensor unary_kernel(const char* op, UnaryOp code, const Tensor& x) {
  check_defined(op, x);
  check_floating(op, x);
  Tensor out = Tensor::empty(x.shape(), {.dtype = x.dtype(), .device = x.device()});
  dispatch_device(
      op, x.device(), [&] { kernels::cpu::unary(code, x.dtype(), out.data_ptr(), x.data_ptr(), x.numel()); },
      [&](auto) {
        kernels::cuda::unary(code, x.dtype(), out.data_ptr(), x.data_ptr(), x.numel(), cuda_stream(x.device()));
      });
  return out;
}

// dx = dy · f'(saved); not itself differentiable (no double backward through these).
Tensor unary_grad_kernel(UnaryGradOp code, const Tensor& dy, const Tensor& saved) {
  Tensor dx = Tensor::empty(dy.shape(), {.dtype = dy.dtype(), .device = dy.device()});
  dispatch_device(
      "unary_grad", dy.device(),
      [&] { kernels::cpu::unary_grad(code, dy.dtype(), dx.data_ptr(), dy.data_ptr(), saved.data_ptr(), dy.numel()); },
      [&](auto) {
        kernels::cuda::unary_grad(code, dy.dtype(), dx.data_ptr(), dy.data_ptr(), saved.data_ptr(), dy.numel(),
                                  cuda_stream(dy.device()));
      });
  return dx;
}

bool is_half(DType t) { return t == DType::kF16 || t == DType::kBF16; }

/// The dtype a binary op on a and b computes in when one of them is f16/bf16 and the
/// other a different floating dtype: the wider of the two, and f32 for f16 with bf16
/// (neither holds the other), as PyTorch's promotion. Returns false for any other pair:
/// those must match exactly, so that an f32/f64 mix-up in a reference or gradient check
/// still fails loudly. Mixes arise naturally under autocast (a bf16 linear output added
/// to an f32 residual) and must work there.
bool half_promotion(const Tensor& a, const Tensor& b, DType& to) {
  if (!a.defined() || !b.defined()) return false;
  const DType da = a.dtype(), db = b.dtype();
  if (da == db || !is_floating(da) || !is_floating(db) || !(is_half(da) || is_half(db))) return false;
  if (is_half(da) && is_half(db)) to = DType::kF32;
  else to = is_half(da) ? db : da;
  return true;
}

void check_binary(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, "a");
  check_defined(op, b, "b");
  check_same_device(op, a, b);
  check_same_dtype(op, a, b);
}

Tensor binary_kernel(const char* op, BinaryOp code, const Tensor& a, const Tensor& b, double alpha, DType out_dtype) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  if (shape.size() > static_cast<size_t>(kernels::kMaxDims))
    throw std::invalid_argument(op_prefix(op) + "expected at most " + std::to_string(kernels::kMaxDims) +
                                " dims, got shape " + shape_str(shape));
  kernels::BroadcastLayout layout =
      kernels::make_broadcast_layout(a.shape().data(), static_cast<int>(a.dim()), b.shape().data(),
                                     static_cast<int>(b.dim()), shape.data(), static_cast<int>(shape.size()));
  Tensor out = Tensor::empty(shape, {.dtype = out_dtype, .device = a.device()});
  const int64_t n = out.numel();
  dispatch_device(
      op, a.device(),
      [&] { kernels::cpu::binary(code, a.dtype(), out.data_ptr(), a.data_ptr(), b.data_ptr(), alpha, layout, n); },
      [&](auto) {
        kernels::cuda::binary(code, a.dtype(), out.data_ptr(), a.data_ptr(), b.data_ptr(), alpha, layout, n,
                              cuda_stream(a.device()));
      });
  return out;
}

void check_arithmetic(const char* op, const Tensor& a, bool allow_int) {
  if (is_floating(a.dtype())) return;
  if (allow_int && (a.dtype() == DType::kI32 || a.dtype() == DType::kI64)) return;
  throw std::invalid_argument(op_prefix(op) + "expected a floating dtype" + (allow_int ? " or int32/int64" : "") +
                              ", got " + std::string(dtype_name(a.dtype())));
}

Tensor scalar_kernel(const char* op, ScalarOp code, const Tensor& a, double s) {
  check_defined(op, a);
  check_floating(op, a);
  Tensor out = Tensor::empty(a.shape(), {.dtype = a.dtype(), .device = a.device()});
  dispatch_device(
      op, a.device(), [&] { kernels::cpu::scalar(code, a.dtype(), out.data_ptr(), a.data_ptr(), s, a.numel()); },
      [&](auto) {
        kernels::cuda::scalar(code, a.dtype(), out.data_ptr(), a.data_ptr(), s, a.numel(), cuda_stream(a.device()));
      });
  return out;
}

}  // namespace

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t ea = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t eb = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (ea != eb && ea != 1 && eb != 1)
      throw std::invalid_argument(op_prefix(op) + "shapes " + shape_str(a) + " and " + shape_str(b) +
                                  " cannot be broadcast: dim " + std::to_string(static_cast<int64_t>(i) -
                                                                                static_cast<int64_t>(n)) +
                                  " has extents " + std::to_string(ea) + " and " + std::to_string(eb));
    out[i] = ea == 1 ? eb : ea;
  }
  return out;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  check_defined("broadcast_to", x);
  if (x.shape() == shape) return x;
  if (broadcast_shapes(x.shape(), shape, "broadcast_to") != shape)
    throw std::invalid_argument("[broadcast_to] cannot broadcast shape " + shape_str(x.shape()) + " to " +
                                shape_str(shape));
  if (shape.size() > static_cast<size_t>(kernels::kMaxDims))
    throw std::invalid_argument("[broadcast_to] expected at most 8 dims, got shape " + shape_str(shape));
  kernels::BroadcastLayout layout =
      kernels::make_broadcast_layout(x.shape().data(), static_cast<int>(x.dim()), x.shape().data(),
                                     static_cast<int>(x.dim()), shape.data(), static_cast<int>(shape.size()));
  Tensor out = Tensor::empty(shape, {.dtype = x.dtype(), .device = x.device()});
  if (layout.same_shape) {
    out.copy_(x);  // same element count: only extent-1 dims were added
  } else {
    dispatch_device(
        "broadcast_to", x.device(),
        [&] { kernels::cpu::broadcast_copy(x.dtype(), out.data_ptr(), x.data_ptr(), layout, out.numel()); },
        [&](auto) {
          kernels::cuda::broadcast_copy(x.dtype(), out.data_ptr(), x.data_ptr(), layout, out.numel(),
                                        cuda_stream(x.device()));
        });
  }
  Shape from = x.shape();
  autograd::record("broadcast_to", {x}, {out}, [from](std::vector<Tensor>& g) { return std::vector<Tensor>{sum_to(g[0], from)}; });
  return out;
}

// ---- unary ----------------------------------------------------------------------------------

Tensor neg(const Tensor& x) {
  Tensor out = unary_kernel("neg", UnaryOp::kNeg, x);
  autograd::record("neg", {x}, {out}, [](std::vector<Tensor>& g) { return std::vector<Tensor>{neg(g[0])}; });
  return out;
}

// Under autocast, exp and log of f16/bf16 inputs run in f32 (PyTorch's f32 list), since
// exp overflows f16 above 11 and log loses the relative precision of small inputs.
Tensor exp(const Tensor& x) {
  if (autocast_active() && x.defined() && is_half(x.dtype())) return exp(autocast_to_f32(x));
  Tensor out = unary_kernel("exp", UnaryOp::kExp, x);
  autograd::record("exp", {x}, {out}, [y = out.detach()](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0] * y}; });
  return out;
}

Tensor log(const Tensor& x) {
  if (autocast_active() && x.defined() && is_half(x.dtype())) return log(autocast_to_f32(x));
  Tensor out = unary_kernel("log", UnaryOp::kLog, x);
  autograd::record("log", {x}, {out}, [x](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0] / x}; });
  return out;
}

Tensor sqrt(const Tensor& x) {
  Tensor out = unary_kernel("sqrt", UnaryOp::kSqrt, x);
  // d sqrt(x) = 1 / (2 sqrt(x))
  autograd::record("sqrt", {x}, {out}, [y = out.detach()](std::vector<Tensor>& g) {
    return std::vector<Tensor>{g[0] / (y * 2.0)};
  });
  return out;
}

Tensor relu(const Tensor& x) {
  Tensor out = unary_kernel("relu", UnaryOp::kRelu, x);
  // The output is as good as the input for the sign test, and saving it lets the
  // input be freed when nothing else needs it.
  autograd::record("relu", {x}, {out}, [y = out.detach()](std::vector<Tensor>& g) {
    return std::vector<Tensor>{unary_grad_kernel(UnaryGradOp::kRelu, g[0], y)};
  });
  return out;
}

Tensor gelu(const Tensor& x, bool tanh_approximation) {
  Tensor out = unary_kernel("gelu", tanh_approximation ? UnaryOp::kGeluTanh : UnaryOp::kGelu, x);
  UnaryGradOp code = tanh_approximation ? UnaryGradOp::kGeluTanh : UnaryGradOp::kGelu;
  autograd::record("gelu", {x}, {out}, [x, code](std::vector<Tensor>& g) {
    return std::vector<Tensor>{unary_grad_kernel(code, g[0], x)};
  });
  return out;
}

Tensor tanh(const Tensor& x) {
  Tensor out = unary_kernel("tanh", UnaryOp::kTanh, x);
  autograd::record("tanh", {x}, {out}, [y = out.detach()](std::vector<Tensor>& g) {
    return std::vector<Tensor>{unary_grad_kernel(UnaryGradOp::kTanhFromOutput, g[0], y)};
  });
  return out;
}

Tensor sigmoid(const Tensor& x) {
  Tensor out = unary_kernel("sigmoid", UnaryOp::kSigmoid, x);
  autograd::record("sigmoid", {x}, {out}, [y = out.detach()](std::vector<Tensor>& g) {
    return std::vector<Tensor>{unary_grad_kernel(UnaryGradOp::kSigmoidFromOutput, g[0], y)};
  });
  return out;
}

Tensor square(const Tensor& x) {
  Tensor out = unary_kernel("square", UnaryOp::kSquare, x);
  autograd::record("square", {x}, {out}, [x](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0] * x * 2.0}; });
  return out;
}

// ---- binary -----------------------------------------------------------------------------------

Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  if (DType to; half_promotion(a, b, to)) return add(a.to(to), b.to(to), alpha);
  check_binary("add", a, b);
  check_arithmetic("add", a, true);
  Tensor out = binary_kernel("add", BinaryOp::kAdd, a, b, alpha, a.dtype());
  bool need_a = a.requires_grad(), need_b = b.requires_grad();
  autograd::record("add", {a, b}, {out}, [sa = a.shape(), sb = b.shape(), alpha, need_a, need_b](std::vector<Tensor>& g) {
    return std::vector<Tensor>{need_a ? sum_to(g[0], sa) : Tensor(),
                               need_b ? sum_to(alpha == 1.0 ? g[0] : g[0] * alpha, sb) : Tensor()};
  });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  if (DType to; half_promotion(a, b, to)) return sub(a.to(to), b.to(to));
  check_binary("sub", a, b);
  check_arithmetic("sub", a, true);
  Tensor out = binary_kernel("sub", BinaryOp::kSub, a, b, 1.0, a.dtype());
  bool need_a = a.requires_grad(), need_b = b.requires_grad();
  autograd::record("sub", {a, b}, {out}, [sa = a.shape(), sb = b.shape(), need_a, need_b](std::vector<Tensor>& g) {
    return std::vector<Tensor>{need_a ? sum_to(g[0], sa) : Tensor(), need_b ? sum_to(neg(g[0]), sb) : Tensor()};
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  if (DType to; half_promotion(a, b, to)) return mul(a.to(to), b.to(to));
  check_binary("mul", a, b);
  check_arithmetic("mul", a, true);
  Tensor out = binary_kernel("mul", BinaryOp::kMul, a, b, 1.0, a.dtype());
  bool need_a = a.requires_grad(), need_b = b.requires_grad();
  // Save only what the needed gradients use.
  autograd::record("mul", {a, b}, {out},
                   [sa = a.shape(), sb = b.shape(), a = need_b ? a.detach() : Tensor(),
                    b = need_a ? b.detach() : Tensor()](std::vector<Tensor>& g) {
                     return std::vector<Tensor>{b.defined() ? sum_to(g[0] * b, sa) : Tensor(),
                                                a.defined() ? sum_to(g[0] * a, sb) : Tensor()};
                   });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  if (DType to; half_promotion(a, b, to)) return div(a.to(to), b.to(to));
  check_binary("div", a, b);
  check_arithmetic("div", a, false);
  Tensor out = binary_kernel("div", BinaryOp::kDiv, a, b, 1.0, a.dtype());
  bool need_a = a.requires_grad(), need_b = b.requires_grad();
  // d(a/b)/db = -a/b² = -out/b
  autograd::record("div", {a, b}, {out},
                   [sa = a.shape(), sb = b.shape(), b = b.detach(), y = need_b ? out.detach() : Tensor(),
                    need_a](std::vector<Tensor>& g) {
                     return std::vector<Tensor>{need_a ? sum_to(g[0] / b, sa) : Tensor(),
                                                y.defined() ? sum_to(neg(g[0] * y / b), sb) : Tensor()};
                   });
  return out;
}

Tensor add(const Tensor& a, double b) {
  Tensor out = scalar_kernel("add", ScalarOp::kAdd, a, b);
  autograd::record("add", {a}, {out}, [](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; });
  return out;
}

Tensor mul(const Tensor& a, double b) {
  Tensor out = scalar_kernel("mul", ScalarOp::kMul, a, b);
  autograd::record("mul", {a}, {out}, [b](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0] * b}; });
  return out;
}

Tensor rsub(const Tensor& a, double b) {
  Tensor out = scalar_kernel("rsub", ScalarOp::kRsub, a, b);
  autograd::record("rsub", {a}, {out}, [](std::vector<Tensor>& g) { return std::vector<Tensor>{neg(g[0])}; });
  return out;
}

Tensor rdiv(const Tensor& a, double b) {
  Tensor out = scalar_kernel("rdiv", ScalarOp::kRdiv, a, b);
  // d(b/a)/da = -b/a² = -out/a
  autograd::record("rdiv", {a}, {out}, [a, y = out.detach()](std::vector<Tensor>& g) {
    return std::vector<Tensor>{neg(g[0] * y / a)};
  });
  return out;
}

Tensor eq(const Tensor& a, const Tensor& b) {
  check_binary("eq", a, b);
  return binary_kernel("eq", BinaryOp::kEq, a, b, 1.0, DType::kBool);
}

// ---- in place ---------------------------------------------------------------------------------

Tensor& add_(Tensor& self, const Tensor& other, double alpha) {
  check_binary("add_", self, other);
  check_arithmetic("add_", self, true);
  Shape shape = broadcast_shapes(self.shape(), other.shape(), "add_");
  if (shape != self.shape())
    throw std::invalid_argument("[add_] expected 'other' to broadcast to the shape of self " +
                                shape_str(self.shape()) + ", got " + shape_str(other.shape()));
  kernels::BroadcastLayout layout =
      kernels::make_broadcast_layout(self.shape().data(), static_cast<int>(self.dim()), other.shape().data(),
                                     static_cast<int>(other.dim()), shape.data(), static_cast<int>(shape.size()));
  const int64_t n = self.numel();
  dispatch_device(
      "add_", self.device(),
      [&] {
        kernels::cpu::binary(BinaryOp::kAdd, self.dtype(), self.data_ptr(), self.data_ptr(), other.data_ptr(), alpha,
                             layout, n);
      },
      [&](auto) {
        kernels::cuda::binary(BinaryOp::kAdd, self.dtype(), self.data_ptr(), self.data_ptr(), other.data_ptr(), alpha,
                              layout, n, cuda_stream(self.device()));
      });
  return self;
}

Tensor& mul_(Tensor& self, double value) {
  check_defined("mul_", self);
  check_floating("mul_", self);
  dispatch_device(
      "mul_", self.device(),
      [&] { kernels::cpu::scalar(ScalarOp::kMul, self.dtype(), self.data_ptr(), self.data_ptr(), value, self.numel()); },
      [&](auto) {
        kernels::cuda::scalar(ScalarOp::kMul, self.dtype(), self.data_ptr(), self.data_ptr(), value, self.numel(),
                              cuda_stream(self.device()));
      });
  return self;
}

Tensor Tensor::exp() const { return tandem::exp(*this); }
Tensor Tensor::log() const { return tandem::log(*this); }
Tensor Tensor::relu() const { return tandem::relu(*this); }

}  // namespace tandem
