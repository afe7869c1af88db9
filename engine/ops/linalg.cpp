// Matrix products: matmul, bmm, linear and scaled dot-product attention. Every product
// is one GEMM call with transpose flags (Eigen on the CPU, cuBLAS on CUDA); backward
// rules are products of the same kind with other flags, so no transpose is ever
// materialised.
#include "engine/ops/linalg.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape.h"
#include "kernels/bias_activation_math.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/bias_activation.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/bias_activation.h"
#include "kernels/cuda/gemm.h"

namespace tandem {
namespace {

void check_operands(const char* op, const Tensor& a, const Tensor& b, const char* name_a, const char* name_b) {
  check_defined(op, a, name_a);
  check_defined(op, b, name_b);
  check_same_device(op, a, b);
  check_same_dtype(op, a, b);
  if (!is_floating(a.dtype())) throw_unsupported(op, a.device(), a.dtype());
}

/// Runs out = alpha·op(a)·op(b) (+ out when `accumulate`) for 2-D operands, or 3-D operands
/// with one batch dim, all contiguous. Shapes are checked by the callers.
void gemm_into(const Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, bool accumulate,
               double alpha = 1.0) {
  const int64_t batch = a.dim() == 3 ? a.size(0) : 1;
  const int64_t a_rows = a.size(-2), a_cols = a.size(-1);
  const int64_t b_rows = b.size(-2), b_cols = b.size(-1);
  const int64_t m = trans_a ? a_cols : a_rows;
  const int64_t k = trans_a ? a_rows : a_cols;
  const int64_t n = trans_b ? b_rows : b_cols;
  const int64_t stride_a = a_rows * a_cols, stride_b = b_rows * b_cols, stride_c = m * n;
  const DType dtype = a.dtype();
  dispatch_device(
      "matmul", a.device(),
      [&] {
        kernels::cpu::gemm_strided_batched(dtype, trans_a, trans_b, m, n, k, alpha, a.data_ptr(), a_cols, stride_a,
                                           b.data_ptr(), b_cols, stride_b, accumulate, out.data_ptr(), n, stride_c,
                                           batch);
      },
      [&](auto) {
        kernels::cuda::gemm_strided_batched(dtype, trans_a, trans_b, m, n, k, alpha, a.data_ptr(), a_cols, stride_a,
                                            b.data_ptr(), b_cols, stride_b, accumulate, out.data_ptr(), n, stride_c,
                                            batch, cuda_stream(a.device()));
      });
}

/// op(a)·op(b) for two 2-D or two 3-D tensors of equal batch, op(x) = xᵀ (of the last
/// two dims) when its flag is set. The product every op of this file reduces to; its
/// backward is again products of this kind with the flags rearranged.
Tensor matmul_trans(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b) {
  const int64_t m = trans_a ? a.size(-1) : a.size(-2);
  const int64_t n = trans_b ? b.size(-2) : b.size(-1);
  Shape out_shape = a.dim() == 3 ? Shape{a.size(0), m, n} : Shape{m, n};
  Tensor out = Tensor::empty(out_shape, {.dtype = a.dtype(), .device = a.device()});
  gemm_into(out, a, trans_a, b, trans_b, /*accumulate=*/false);

  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  autograd::record("matmul", {a, b}, {out},
                   [a = a.detach(), b = b.detach(), trans_a, trans_b, need_a, need_b](std::vector<Tensor>& grads) {
                     const Tensor& g = grads[0];
                     Tensor ga, gb;
                     // C = op(A)·op(B):  d op(A) = dC·op(B)ᵀ,  d op(B) = op(A)ᵀ·dC.
                     if (need_a) ga = trans_a ? matmul_trans(b, trans_b, g, true) : matmul_trans(g, false, b, !trans_b);
                     if (need_b) gb = trans_b ? matmul_trans(g, true, a, trans_a) : matmul_trans(a, !trans_a, g, false);
                     return std::vector<Tensor>{ga, gb};
                   });
  return out;
}

// In place: scores -> attention weights (forward, backward = false), or the weights'
// gradient -> the scores' gradient (backward = true, reading the saved weights p).
void attention_softmax(const Tensor& x, const Tensor& p, bool backward, int64_t t_q, int64_t t_k, double scale,
                       bool causal) {
  const int64_t batch = x.size(0);
  dispatch_device(
      "scaled_dot_product_attention", x.device(),
      [&] {
        if (backward) {
          kernels::cpu::attention_softmax_backward(x.data_ptr(), x.data_ptr(), p.data_ptr(), x.dtype(), batch, t_q,
                                                   t_k, scale, causal);
        } else {
          kernels::cpu::attention_softmax_forward(x.data_ptr(), x.data_ptr(), x.dtype(), batch, t_q, t_k, scale,
                                                  causal);
        }
      },
      [&](auto) {
        if (backward) {
          kernels::cuda::attention_softmax_backward(x.data_ptr(), x.data_ptr(), p.data_ptr(), x.dtype(), batch, t_q,
                                                    t_k, scale, causal, cuda_stream(x.device()));
        } else {
          kernels::cuda::attention_softmax_forward(x.data_ptr(), x.data_ptr(), x.dtype(), batch, t_q, t_k, scale,
                                                   causal, cuda_stream(x.device()));
        }
      });
}

[[noreturn]] void throw_inner_mismatch(const char* op, const Tensor& a, const Tensor& b) {
  throw std::invalid_argument(op_prefix(op) + "expected a.shape[-1] == b.shape[-2], got " + shape_str(a.shape()) +
                              " and " + shape_str(b.shape()));
}

/// out2 (rows, out) = act(x2·Wᵀ + bias) in one GEMM whose epilogue adds the bias and
/// applies act (kNone or kRelu): cuBLASLt on CUDA. False, with nothing done, on the CPU
/// and where cuBLASLt has no algorithm for the case; the caller then runs its own passes.
bool gemm_epilogue_into(const Tensor& out2, const Tensor& x2, const Tensor& weight, const Tensor& bias,
                        Activation activation) {
  bool done = false;
  dispatch_device(
      "linear", x2.device(), [] {},
      [&](auto) {
        const size_t ws_bytes = kernels::cuda::linear_epilogue_workspace_bytes(x2.dtype());
        if (ws_bytes == 0) return;
        Tensor ws = Tensor::empty({static_cast<int64_t>(ws_bytes)}, {.dtype = DType::kU8, .device = x2.device()});
        done = kernels::cuda::linear_epilogue(x2.dtype(), activation, x2.size(0), weight.size(0), weight.size(1),
                                              x2.data_ptr(), weight.data_ptr(),
                                              bias.defined() ? bias.data_ptr() : nullptr, out2.data_ptr(),
                                              ws.data_ptr(), ws_bytes, cuda_stream(x2.device()));
      });
  return done;
}

/// linear() with an activation: h = x·Wᵀ (beta = 0), then one pass adds the bias and
/// applies the activation (in place for ReLU, whose backward needs only the output;
/// into a new tensor for the GELUs, whose backward needs h). On CUDA the GEMM's own
/// epilogue does that pass where cuBLASLt can: all of it for ReLU, the bias for the
/// GELUs. Backward turns dy into dh and the bias gradient in one pass, then runs the two
/// products of linear().
Tensor linear_activation(const Tensor& x, const Tensor& x2, const Tensor& weight, const Tensor& bias,
                         Activation activation, const Shape& out_shape) {
  const int64_t rows = x2.size(0), out_features = weight.size(0);
  const TensorOptions opts{.dtype = x.dtype(), .device = x.device()};
  Tensor h = Tensor::empty(out_shape, opts);
  const Tensor h2 = Tensor::from_storage(h.storage(), {rows, out_features}, h.dtype(), h.offset());
  const bool saves_input = kernels::activation_saves_input(activation);
  Tensor y = saves_input ? Tensor::empty(out_shape, opts) : h;
  const bool all_in_gemm = !saves_input && gemm_epilogue_into(h2, x2, weight, bias, activation);
  if (!all_in_gemm) {
    const bool bias_in_gemm = bias.defined() && gemm_epilogue_into(h2, x2, weight, bias, Activation::kNone);
    if (!bias_in_gemm) gemm_into(h2, x2, false, weight, /*trans_b=*/true, /*accumulate=*/false);
    const void* b = bias.defined() && !bias_in_gemm ? bias.data_ptr() : nullptr;
    dispatch_device(
        "linear", x.device(),
        [&] {
          kernels::cpu::bias_activation_forward(activation, x.dtype(), y.data_ptr(), h.data_ptr(), b, rows,
                                                out_features);
        },
        [&](auto) {
          kernels::cuda::bias_activation_forward(activation, x.dtype(), y.data_ptr(), h.data_ptr(), b, rows,
                                                 out_features, cuda_stream(x.device()));
        });
  }

  const bool need_x = x.requires_grad(), need_w = weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  autograd::record(
      "linear", {x, weight, bias}, {y},
      [x2 = x2.detach(), w = weight.detach(), saved = saves_input ? h : y.detach(), x_shape = x.shape(), rows,
       out_features, activation, need_x, need_w, need_b](std::vector<Tensor>& grads) {
        const Tensor& g = grads[0];
        const TensorOptions gopts{.dtype = g.dtype(), .device = g.device()};
        Tensor dh = Tensor::empty({rows, out_features}, gopts);
        Tensor gb = need_b ? Tensor::empty({out_features}, gopts) : Tensor();
        void* gb_ptr = need_b ? gb.data_ptr() : nullptr;
        dispatch_device(
            "linear", g.device(),
            [&] {
              kernels::cpu::bias_activation_backward(activation, g.dtype(), dh.data_ptr(), gb_ptr, g.data_ptr(),
                                                     saved.data_ptr(), rows, out_features);
            },
            [&](auto) {
              const size_t ws_bytes =
                  need_b ? kernels::cuda::bias_activation_backward_workspace_bytes(g.dtype(), rows, out_features) : 0;
              Tensor ws = ws_bytes ? Tensor::empty({static_cast<int64_t>(ws_bytes)},
                                                   {.dtype = DType::kU8, .device = g.device()})
                                   : Tensor();
              kernels::cuda::bias_activation_backward(activation, g.dtype(), dh.data_ptr(), gb_ptr, g.data_ptr(),
                                                      saved.data_ptr(), rows, out_features,
                                                      ws_bytes ? ws.data_ptr() : nullptr, cuda_stream(g.device()));
            });
        Tensor gx, gw;
        if (need_x) gx = reshape(matmul_trans(dh, false, w, false), x_shape);  // dx = dh·W
        if (need_w) gw = matmul_trans(dh, true, x2, false);                    // dW = dhᵀ·x
        return std::vector<Tensor>{gx, gw, gb};
      });
  return y;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  if (autocast_active()) {  // autocast: low precision (f32 accumulation inside the GEMM)
    Tensor al = autocast_to_low(a), bl = autocast_to_low(b);
    if (!al.is_same(a) || !bl.is_same(b)) return matmul(al, bl);
  }
  check_operands("matmul", a, b, "a", "b");
  const bool a2 = a.dim() == 2, a3 = a.dim() == 3, b2 = b.dim() == 2, b3 = b.dim() == 3;
  if (!((a2 && b2) || (a3 && b3) || (a3 && b2)))
    throw std::invalid_argument(
        "[matmul] expected operands (M,K)@(K,N), (B,M,K)@(B,K,N) or (B,M,K)@(K,N), got " + shape_str(a.shape()) +
        " and " + shape_str(b.shape()));
  if (a.size(-1) != b.size(-2)) throw_inner_mismatch("matmul", a, b);
  if (a3 && b3) return bmm(a, b);
  if (a3) {
    // (B,M,K)@(K,N) is one (B·M,K)@(K,N) GEMM on a storage-sharing view: a single
    // large product instead of B small ones, and dB comes out already summed over B.
    const int64_t batch = a.size(0), m = a.size(1);
    Tensor flat = matmul_trans(reshape(a, {batch * m, a.size(2)}), false, b, false);
    return reshape(flat, {batch, m, b.size(1)});
  }
  return matmul_trans(a, false, b, false);
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  if (autocast_active()) {  // autocast: low precision
    Tensor al = autocast_to_low(a), bl = autocast_to_low(b);
    if (!al.is_same(a) || !bl.is_same(b)) return bmm(al, bl);
  }
  check_operands("bmm", a, b, "a", "b");
  if (a.dim() != 3 || b.dim() != 3)
    throw std::invalid_argument("[bmm] expected 3-D operands (B,M,K)@(B,K,N), got " + shape_str(a.shape()) + " and " +
                                shape_str(b.shape()));
  if (a.size(0) != b.size(0))
    throw std::invalid_argument("[bmm] expected equal batch sizes a.shape[0] == b.shape[0], got " +
                                shape_str(a.shape()) + " and " + shape_str(b.shape()));
  if (a.size(2) != b.size(1)) throw_inner_mismatch("bmm", a, b);
  return matmul_trans(a, false, b, false);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Activation activation) {
  if (autocast_active()) {  // autocast: low precision, bias included
    Tensor xl = autocast_to_low(x), wl = autocast_to_low(weight), bl = autocast_to_low(bias);
    if (!xl.is_same(x) || !wl.is_same(weight) || !bl.is_same(bias)) return linear(xl, wl, bl, activation);
  }
  check_operands("linear", x, weight, "x", "weight");
  if (weight.dim() != 2)
    throw std::invalid_argument("[linear] expected weight of 2 dims (out, in), got shape " + shape_str(weight.shape()));
  if (x.dim() < 1 || x.size(-1) != weight.size(1))
    throw std::invalid_argument("[linear] expected x of shape (..., " + std::to_string(weight.size(1)) +
                                ") to match weight (out, in), got x " + shape_str(x.shape()) + " and weight " +
                                shape_str(weight.shape()));
  const int64_t in = weight.size(1), out_features = weight.size(0);
  if (bias.defined()) {
    check_same_device("linear", x, bias);
    check_same_dtype("linear", x, bias);
    if (bias.dim() != 1 || bias.size(0) != out_features)
      throw std::invalid_argument("[linear] expected bias of shape [" + std::to_string(out_features) +
                                  "] to match weight " + shape_str(weight.shape()) + ", got " +
                                  shape_str(bias.shape()));
  }
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  // x (..., in) is a (rows, in) matrix as it lies in memory.
  Tensor x2 = Tensor::from_storage(x.storage(), {rows, in}, x.dtype(), x.offset());
  if (activation != Activation::kNone) return linear_activation(x, x2, weight, bias, activation, out_shape);

  // y = x·Wᵀ (+ b) is one GEMM: with a bias, its rows go into y first and the GEMM
  // accumulates onto them (beta = 1), saving a separate pass over y.
  Tensor y = Tensor::empty(out_shape, {.dtype = x.dtype(), .device = x.device()});
  Tensor y2 = Tensor::from_storage(y.storage(), {rows, out_features}, y.dtype(), y.offset());
  // On CUDA, cuBLASLt adds the bias in the GEMM's epilogue where it can.
  const bool bias_in_gemm = bias.defined() && gemm_epilogue_into(y2, x2, weight, bias, Activation::kNone);
  if (bias.defined() && !bias_in_gemm) {
    dispatch_device(
        "linear", x.device(),
        [&] { kernels::cpu::broadcast_rows(x.dtype(), y.data_ptr(), bias.data_ptr(), rows, out_features); },
        [&](auto) {
          kernels::cuda::broadcast_rows(x.dtype(), y.data_ptr(), bias.data_ptr(), rows, out_features,
                                        cuda_stream(x.device()));
        });
  }
  if (!bias_in_gemm) gemm_into(y2, x2, false, weight, /*trans_b=*/true, /*accumulate=*/bias.defined());

  const bool need_x = x.requires_grad(), need_w = weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  autograd::record("linear", {x, weight, bias}, {y},
                   [x2 = x2.detach(), w = weight.detach(), x_shape = x.shape(), rows, out_features, need_x, need_w,
                    need_b](std::vector<Tensor>& grads) {
                     Tensor g2 = reshape(grads[0], {rows, out_features});
                     Tensor gx, gw, gb;
                     if (need_x) gx = reshape(matmul_trans(g2, false, w, false), x_shape);  // dx = dy·W
                     if (need_w) gw = matmul_trans(g2, true, x2, false);                    // dW = dyᵀ·x
                     if (need_b) gb = sum(g2, {0});                                         // db = Σ_rows dy
                     return std::vector<Tensor>{gx, gw, gb};
                   });
  return y;
}

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool is_causal,
                                    std::optional<double> scale) {
  constexpr const char* kOp = "scaled_dot_product_attention";
  if (autocast_active()) {  // autocast: low precision (the softmax accumulates in f32 regardless)
    Tensor ql = autocast_to_low(q), kl = autocast_to_low(k), vl = autocast_to_low(v);
    if (!ql.is_same(q) || !kl.is_same(k) || !vl.is_same(v)) return scaled_dot_product_attention(ql, kl, vl, is_causal, scale);
  }
  check_operands(kOp, q, k, "q", "k");
  check_operands(kOp, q, v, "q", "v");
  const auto shapes = [&] { return shape_str(q.shape()) + ", " + shape_str(k.shape()) + " and " + shape_str(v.shape()); };
  if (q.dim() < 2 || k.dim() != q.dim() || v.dim() != q.dim())
    throw std::invalid_argument(op_prefix(kOp) +
                                "expected q (..., Tq, E), k (..., Tk, E) and v (..., Tk, Ev) with the same number "
                                "(>= 2) of dims, got " + shapes());
  int64_t batch = 1;
  for (int64_t d = 0; d + 2 < q.dim(); ++d) {
    if (k.size(d) != q.size(d) || v.size(d) != q.size(d))
      throw std::invalid_argument(op_prefix(kOp) + "expected equal leading dims of q, k and v, got " + shapes());
    batch *= q.size(d);
  }
  const int64_t t_q = q.size(-2), e = q.size(-1), t_k = k.size(-2), e_v = v.size(-1);
  if (k.size(-1) != e || v.size(-2) != t_k)
    throw std::invalid_argument(op_prefix(kOp) + "expected k (..., Tk, E) to match q's E = " + std::to_string(e) +
                                " and v (..., Tk, Ev) k's Tk = " + std::to_string(t_k) + ", got " + shapes());
  if (t_k == 0 || e == 0)
    throw std::invalid_argument(op_prefix(kOp) + "expected at least one key and E >= 1, got " + shapes());
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(e));
  if (!std::isfinite(s)) throw std::invalid_argument(op_prefix(kOp) + "expected a finite scale, got " + std::to_string(s));

  // (batch, T, E) views of the contiguous operands.
  const auto as3 = [batch](const Tensor& t) {
    return Tensor::from_storage(t.storage(), {batch, t.size(-2), t.size(-1)}, t.dtype(), t.offset());
  };
  const Tensor q3 = as3(q), k3 = as3(k), v3 = as3(v);
  const TensorOptions like{.dtype = q.dtype(), .device = q.device()};
  Tensor p = Tensor::empty({batch, t_q, t_k}, like);
  Shape out_shape = q.shape();
  out_shape.back() = e_v;
  Tensor out = Tensor::empty(out_shape, like);
  if (p.numel() > 0) {
    // Scaled scores s·q·kᵀ: scaling inside the GEMM keeps f16 scores sqrt(E) further
    // from overflow than scaling after it (as PyTorch's math path scales q and k first).
    gemm_into(p, q3, false, k3, /*trans_b=*/true, false, /*alpha=*/s);
    attention_softmax(p, p, /*backward=*/false, t_q, t_k, 1.0, is_causal);
    gemm_into(as3(out), p, false, v3, false, false);
  }

  const bool need_q = q.requires_grad(), need_k = k.requires_grad(), need_v = v.requires_grad();
  autograd::record(
      kOp, {q, k, v}, {out},
      [q3 = q3.detach(), k3 = k3.detach(), v3 = v3.detach(), p, shapes = std::vector<Shape>{q.shape(), k.shape(), v.shape()},
       t_q, t_k, s, is_causal, need_q, need_k, need_v](std::vector<Tensor>& grads) {
        const TensorOptions like{.dtype = p.dtype(), .device = p.device()};
        const int64_t batch = p.size(0);
        const Tensor g = Tensor::from_storage(grads[0].storage(), {batch, t_q, v3.size(2)}, grads[0].dtype(),
                                              grads[0].offset());
        Tensor gq, gk, gv;
        if (p.numel() == 0) {  // no queries: nothing flows back
          if (need_q) gq = zeros(shapes[0], like);
          if (need_k) gk = zeros(shapes[1], like);
          if (need_v) gv = zeros(shapes[2], like);
          return std::vector<Tensor>{gq, gk, gv};
        }
        // Each gradient is computed into a (batch, T, E) view of its full-shaped tensor.
        const auto into = [&like](const Shape& shape, const Tensor& view_of, Tensor& grad) {
          grad = Tensor::empty(shape, like);
          return Tensor::from_storage(grad.storage(), view_of.shape(), grad.dtype(), 0);
        };
        if (need_v) gemm_into(into(shapes[2], v3, gv), p, true, g, false, false);  // dV = Pᵀ·dO
        if (need_q || need_k) {
          Tensor ds = Tensor::empty(p.shape(), like);
          gemm_into(ds, g, false, v3, true, false);                               // dP = dO·Vᵀ
          attention_softmax(ds, p, /*backward=*/true, t_q, t_k, s, is_causal);    // dS (scale included)
          if (need_q) gemm_into(into(shapes[0], q3, gq), ds, false, k3, false, false);  // dQ = dS·K
          if (need_k) gemm_into(into(shapes[1], k3, gk), ds, true, q3, false, false);   // dK = dSᵀ·Q
        }
        return std::vector<Tensor>{gq, gk, gv};
      });
  return out;
}

Tensor Tensor::matmul(const Tensor& other) const { return tandem::matmul(*this, other); }

}  // namespace tandem
