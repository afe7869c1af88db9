// Matrix products: matmul, bmm and linear. Every product is one GEMM call with
// transpose flags (Eigen on the CPU, cuBLAS on CUDA); backward rules are products of
// the same kind with other flags, so no transpose is ever materialised.
#include "engine/ops/linalg.h"

#include <stdexcept>
#include <string>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape.h"
#include "kernels/cpu/gemm.h"
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

/// Runs out = op(a)·op(b) (+ out when `accumulate`) for 2-D operands, or 3-D operands
/// with one batch dim, all contiguous. Shapes are checked by the callers.
void gemm_into(const Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, bool accumulate) {
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
        kernels::cpu::gemm_strided_batched(dtype, trans_a, trans_b, m, n, k, 1.0, a.data_ptr(), a_cols, stride_a,
                                           b.data_ptr(), b_cols, stride_b, accumulate, out.data_ptr(), n, stride_c,
                                           batch);
      },
      [&](auto) {
        kernels::cuda::gemm_strided_batched(dtype, trans_a, trans_b, m, n, k, 1.0, a.data_ptr(), a_cols, stride_a,
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

[[noreturn]] void throw_inner_mismatch(const char* op, const Tensor& a, const Tensor& b) {
  throw std::invalid_argument(op_prefix(op) + "expected a.shape[-1] == b.shape[-2], got " + shape_str(a.shape()) +
                              " and " + shape_str(b.shape()));
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

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (autocast_active()) {  // autocast: low precision, bias included
    Tensor xl = autocast_to_low(x), wl = autocast_to_low(weight), bl = autocast_to_low(bias);
    if (!xl.is_same(x) || !wl.is_same(weight) || !bl.is_same(bias)) return linear(xl, wl, bl);
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
  Tensor y = Tensor::empty(out_shape, {.dtype = x.dtype(), .device = x.device()});

  // x (..., in) is a (rows, in) matrix as it lies in memory; y = x·Wᵀ (+ b) is one GEMM.
  // With a bias, its rows go into y first and the GEMM accumulates onto them (beta = 1),
  // saving a separate pass over y.
  Tensor x2 = Tensor::from_storage(x.storage(), {rows, in}, x.dtype(), x.offset());
  Tensor y2 = Tensor::from_storage(y.storage(), {rows, out_features}, y.dtype(), y.offset());
  if (bias.defined()) {
    dispatch_device(
        "linear", x.device(),
        [&] { kernels::cpu::broadcast_rows(x.dtype(), y.data_ptr(), bias.data_ptr(), rows, out_features); },
        [&](auto) {
          kernels::cuda::broadcast_rows(x.dtype(), y.data_ptr(), bias.data_ptr(), rows, out_features,
                                        cuda_stream(x.device()));
        });
  }
  gemm_into(y2, x2, false, weight, /*trans_b=*/true, /*accumulate=*/bias.defined());

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

Tensor Tensor::matmul(const Tensor& other) const { return tandem::matmul(*this, other); }

}  // namespace tandem
