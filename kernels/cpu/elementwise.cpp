// CPU element-wise kernels. Loops are written so the compiler vectorises the
// contiguous cases; large arrays are split across cores with OpenMP.
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/parallel.h"

#include <type_traits>

#include "kernels/common.h"
#include "kernels/elementwise_math.h"

namespace tandem::kernels::cpu {
namespace {


template <UnaryOp Op, class T>
void unary_loop(T* out, const T* in, int64_t n) {
  using C = compute_t<T>;
#pragma omp parallel for simd if (n > kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(unary_apply<Op, C>(static_cast<C>(in[i])));
}

template <UnaryGradOp Op, class T>
void unary_grad_loop(T* dx, const T* dy, const T* s, int64_t n) {
  using C = compute_t<T>;
#pragma omp parallel for simd if (n > kParallelMinElements)
  for (int64_t i = 0; i < n; ++i)
    dx[i] = static_cast<T>(unary_grad_apply<Op, C>(static_cast<C>(dy[i]), static_cast<C>(s[i])));
}

template <BinaryOp Op, class T, class Out>
void binary_loop(Out* out, const T* a, const T* b, double alpha_d, const BroadcastLayout& L, int64_t n) {
  using C = compute_t<T>;
  const C alpha = static_cast<C>(alpha_d);
  auto f = [alpha](T x, T y) { return static_cast<Out>(binary_apply<Op, C>(static_cast<C>(x), static_cast<C>(y), alpha)); };
  if (L.same_shape) {
#pragma omp parallel for simd if (n > kParallelMinElements)
    for (int64_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
    return;
  }
  // Rows of the innermost collapsed dim; the outer index is decoded once per row.
  const int last = L.ndim - 1;
  const int64_t inner = L.sizes[last], sa = L.a_strides[last], sb = L.b_strides[last];
  const int64_t rows = n / inner;
#pragma omp parallel for if (n > kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, oa = 0, ob = 0;
    for (int d = last - 1; d >= 0; --d) {
      int64_t idx = rem % L.sizes[d];
      rem /= L.sizes[d];
      oa += idx * L.a_strides[d];
      ob += idx * L.b_strides[d];
    }
    Out* o = out + r * inner;
    const T* pa = a + oa;
    const T* pb = b + ob;
    if (sa == 1 && sb == 1) {
      for (int64_t i = 0; i < inner; ++i) o[i] = f(pa[i], pb[i]);
    } else if (sa == 1 && sb == 0) {
      const T y = pb[0];
      for (int64_t i = 0; i < inner; ++i) o[i] = f(pa[i], y);
    } else if (sa == 0 && sb == 1) {
      const T x = pa[0];
      for (int64_t i = 0; i < inner; ++i) o[i] = f(x, pb[i]);
    } else {
      for (int64_t i = 0; i < inner; ++i) o[i] = f(pa[i * sa], pb[i * sb]);
    }
  }
}

template <ScalarOp Op, class T>
void scalar_loop(T* out, const T* a, double s_d, int64_t n) {
  using C = compute_t<T>;
  const C s = static_cast<C>(s_d);
#pragma omp parallel for simd if (n > kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(scalar_apply<Op, C>(static_cast<C>(a[i]), s));
}

template <class T>
void unary_typed(UnaryOp op, T* out, const T* in, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (op == UnaryOp::kGelu) return gelu_f32(out, in, n);  // vectorised erf
  }
  switch (op) {
    case UnaryOp::kNeg: return unary_loop<UnaryOp::kNeg>(out, in, n);
    case UnaryOp::kExp: return unary_loop<UnaryOp::kExp>(out, in, n);
    case UnaryOp::kLog: return unary_loop<UnaryOp::kLog>(out, in, n);
    case UnaryOp::kSqrt: return unary_loop<UnaryOp::kSqrt>(out, in, n);
    case UnaryOp::kRelu: return unary_loop<UnaryOp::kRelu>(out, in, n);
    case UnaryOp::kGelu: return unary_loop<UnaryOp::kGelu>(out, in, n);
    case UnaryOp::kGeluTanh: return unary_loop<UnaryOp::kGeluTanh>(out, in, n);
    case UnaryOp::kTanh: return unary_loop<UnaryOp::kTanh>(out, in, n);
    case UnaryOp::kSigmoid: return unary_loop<UnaryOp::kSigmoid>(out, in, n);
    case UnaryOp::kSquare: return unary_loop<UnaryOp::kSquare>(out, in, n);
  }
}

template <class T>
void unary_grad_typed(UnaryGradOp op, T* dx, const T* dy, const T* s, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (op == UnaryGradOp::kGelu) return gelu_grad_f32(dx, dy, s, n);  // vectorised erf and exp
  }
  switch (op) {
    case UnaryGradOp::kRelu: return unary_grad_loop<UnaryGradOp::kRelu>(dx, dy, s, n);
    case UnaryGradOp::kGelu: return unary_grad_loop<UnaryGradOp::kGelu>(dx, dy, s, n);
    case UnaryGradOp::kGeluTanh: return unary_grad_loop<UnaryGradOp::kGeluTanh>(dx, dy, s, n);
    case UnaryGradOp::kTanhFromOutput: return unary_grad_loop<UnaryGradOp::kTanhFromOutput>(dx, dy, s, n);
    case UnaryGradOp::kSigmoidFromOutput: return unary_grad_loop<UnaryGradOp::kSigmoidFromOutput>(dx, dy, s, n);
  }
}

template <class T>
void binary_typed(BinaryOp op, void* out, const T* a, const T* b, double alpha, const BroadcastLayout& L, int64_t n) {
  T* o = static_cast<T*>(out);
  switch (op) {
    case BinaryOp::kAdd: return binary_loop<BinaryOp::kAdd>(o, a, b, alpha, L, n);
    case BinaryOp::kSub: return binary_loop<BinaryOp::kSub>(o, a, b, alpha, L, n);
    case BinaryOp::kMul: return binary_loop<BinaryOp::kMul>(o, a, b, alpha, L, n);
    case BinaryOp::kDiv: return binary_loop<BinaryOp::kDiv>(o, a, b, alpha, L, n);
    case BinaryOp::kEq: return binary_loop<BinaryOp::kEq>(static_cast<bool*>(out), a, b, alpha, L, n);
  }
}

template <class T>
void scalar_typed(ScalarOp op, T* out, const T* a, double s, int64_t n) {
  switch (op) {
    case ScalarOp::kAdd: return scalar_loop<ScalarOp::kAdd>(out, a, s, n);
    case ScalarOp::kMul: return scalar_loop<ScalarOp::kMul>(out, a, s, n);
    case ScalarOp::kRsub: return scalar_loop<ScalarOp::kRsub>(out, a, s, n);
    case ScalarOp::kRdiv: return scalar_loop<ScalarOp::kRdiv>(out, a, s, n);
  }
}

}  // namespace

void unary(UnaryOp op, DType dtype, void* out, const void* in, int64_t n) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    unary_typed(op, static_cast<T*>(out), static_cast<const T*>(in), n);
  });
  if (!ok) unreachable_dtype("cpu::unary", dtype);
}

void unary_grad(UnaryGradOp op, DType dtype, void* dx, const void* dy, const void* saved, int64_t n) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    unary_grad_typed(op, static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(saved), n);
  });
  if (!ok) unreachable_dtype("cpu::unary_grad", dtype);
}

void binary(BinaryOp op, DType dtype, void* out, const void* a, const void* b, double alpha,
            const BroadcastLayout& layout, int64_t n) {
  if (n == 0) return;  // a zero extent would divide the row count by zero below
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, uint8_t>) {
      // Integers of one byte support only comparison.
      if (op != BinaryOp::kEq) unreachable_dtype("cpu::binary", dtype);
      binary_loop<BinaryOp::kEq>(static_cast<bool*>(out), static_cast<const T*>(a), static_cast<const T*>(b), alpha,
                                 layout, n);
    } else {
      binary_typed(op, out, static_cast<const T*>(a), static_cast<const T*>(b), alpha, layout, n);
    }
  });
}

void scalar(ScalarOp op, DType dtype, void* out, const void* a, double s, int64_t n) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    scalar_typed(op, static_cast<T*>(out), static_cast<const T*>(a), s, n);
  });
  if (!ok) unreachable_dtype("cpu::scalar", dtype);
}

void broadcast_copy(DType dtype, void* out, const void* in, const BroadcastLayout& L, int64_t n) {
  if (n == 0) return;
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    const T* x = static_cast<const T*>(in);
    const int last = L.ndim - 1;
    const int64_t inner = L.sizes[last], sa = L.a_strides[last];
    const int64_t rows = n / inner;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t rem = r, oa = 0;
      for (int d = last - 1; d >= 0; --d) {
        oa += (rem % L.sizes[d]) * L.a_strides[d];
        rem /= L.sizes[d];
      }
      for (int64_t i = 0; i < inner; ++i) o[r * inner + i] = x[oa + i * sa];
    }
  });
}

}  // namespace tandem::kernels::cpu
