// CUDA element-wise kernels. Same-shape cases move 16 bytes per load and store
// (float4-sized vectors) when every pointer is 16-byte aligned; broadcast cases
// decode the output index against the collapsed layout (usually 1-2 dims).
#include "kernels/cuda/elementwise.h"

#include "kernels/cuda/common.cuh"
#include "kernels/elementwise_math.h"

namespace tandem::kernels::cuda {
namespace {

// out[i] = f(in[i]); V elements per thread per step.
template <int V, class T, class F>
__global__ void map1_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / V;
  for (int64_t i = tid; i < nvec; i += stride) {
    Vec<T, V> x = reinterpret_cast<const Vec<T, V>*>(in)[i];
    Vec<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) y.v[k] = f(x.v[k]);
    reinterpret_cast<Vec<T, V>*>(out)[i] = y;
  }
  for (int64_t i = nvec * V + tid; i < n; i += stride) out[i] = f(in[i]);
}

// out[i] = f(a[i], b[i]); V elements per thread per step.
template <int V, class T, class Out, class F>
__global__ void map2_kernel(Out* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / V;
  for (int64_t i = tid; i < nvec; i += stride) {
    Vec<T, V> x = reinterpret_cast<const Vec<T, V>*>(a)[i];
    Vec<T, V> y = reinterpret_cast<const Vec<T, V>*>(b)[i];
    Vec<Out, V> z;
#pragma unroll
    for (int k = 0; k < V; ++k) z.v[k] = f(x.v[k], y.v[k]);
    reinterpret_cast<Vec<Out, V>*>(out)[i] = z;
  }
  for (int64_t i = nvec * V + tid; i < n; i += stride) out[i] = f(a[i], b[i]);
}

template <class T, class Out, class F>
__global__ void broadcast2_kernel(Out* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b,
                                  BroadcastLayout L, int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t rem = i, ia = 0, ib = 0;
    for (int d = L.ndim - 1; d >= 0; --d) {
      int64_t idx = rem % L.sizes[d];
      rem /= L.sizes[d];
      ia += idx * L.a_strides[d];
      ib += idx * L.b_strides[d];
    }
    out[i] = f(a[ia], b[ib]);
  }
}

template <class T>
__global__ void broadcast1_kernel(T* __restrict__ out, const T* __restrict__ in, BroadcastLayout L, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t rem = i, ia = 0;
    for (int d = L.ndim - 1; d >= 0; --d) {
      ia += (rem % L.sizes[d]) * L.a_strides[d];
      rem /= L.sizes[d];
    }
    out[i] = in[ia];
  }
}

template <class T, class F>
void launch_map1(T* out, const T* in, int64_t n, F f, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int V = 16 / sizeof(T);
  if (aligned16(out) && aligned16(in)) {
    map1_kernel<V><<<grid_for(n, V), kBlockSize, 0, stream>>>(out, in, n, f);
  } else {
    map1_kernel<1><<<grid_for(n), kBlockSize, 0, stream>>>(out, in, n, f);
  }
  CUDA_CHECK_LAUNCH();
}

template <class T, class Out, class F>
void launch_map2(Out* out, const T* a, const T* b, const BroadcastLayout& L, int64_t n, F f, cudaStream_t stream) {
  if (n == 0) return;
  if (L.same_shape) {
    constexpr int V = 16 / sizeof(T);
    // The vector width follows the input type; outputs of a smaller type (bool)
    // are then stored V at a time, which needs V-element alignment of `out`.
    if (aligned16(a) && aligned16(b) && reinterpret_cast<uintptr_t>(out) % (sizeof(Out) * V) == 0) {
      map2_kernel<V><<<grid_for(n, V), kBlockSize, 0, stream>>>(out, a, b, n, f);
    } else {
      map2_kernel<1><<<grid_for(n), kBlockSize, 0, stream>>>(out, a, b, n, f);
    }
  } else {
    broadcast2_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(out, a, b, L, n, f);
  }
  CUDA_CHECK_LAUNCH();
}

template <UnaryOp Op, class T>
struct UnaryFn {
  __device__ T operator()(T x) const { return static_cast<T>(unary_apply<Op, compute_t<T>>(static_cast<compute_t<T>>(x))); }
};

template <UnaryGradOp Op, class T>
struct UnaryGradFn {
  __device__ T operator()(T dy, T s) const {
    using C = compute_t<T>;
    return static_cast<T>(unary_grad_apply<Op, C>(static_cast<C>(dy), static_cast<C>(s)));
  }
};

template <BinaryOp Op, class T, class Out>
struct BinaryFn {
  compute_t<T> alpha;
  __device__ Out operator()(T a, T b) const {
    using C = compute_t<T>;
    return static_cast<Out>(binary_apply<Op, C>(static_cast<C>(a), static_cast<C>(b), alpha));
  }
};

template <ScalarOp Op, class T>
struct ScalarFn {
  compute_t<T> s;
  __device__ T operator()(T a) const {
    using C = compute_t<T>;
    return static_cast<T>(scalar_apply<Op, C>(static_cast<C>(a), s));
  }
};

template <class T>
void unary_typed(UnaryOp op, T* out, const T* in, int64_t n, cudaStream_t st) {
  switch (op) {
#define TANDEM_UNARY_CASE(NAME) \
  case UnaryOp::NAME: return launch_map1(out, in, n, UnaryFn<UnaryOp::NAME, T>{}, st);
    TANDEM_UNARY_CASE(kNeg)
    TANDEM_UNARY_CASE(kExp)
    TANDEM_UNARY_CASE(kLog)
    TANDEM_UNARY_CASE(kSqrt)
    TANDEM_UNARY_CASE(kRelu)
    TANDEM_UNARY_CASE(kGelu)
    TANDEM_UNARY_CASE(kGeluTanh)
    TANDEM_UNARY_CASE(kTanh)
    TANDEM_UNARY_CASE(kSigmoid)
    TANDEM_UNARY_CASE(kSquare)
#undef TANDEM_UNARY_CASE
  }
}

template <class T>
void unary_grad_typed(UnaryGradOp op, T* dx, const T* dy, const T* s, int64_t n, cudaStream_t st) {
  BroadcastLayout same;
  same.same_shape = true;
  switch (op) {
#define TANDEM_GRAD_CASE(NAME) \
  case UnaryGradOp::NAME: return launch_map2(dx, dy, s, same, n, UnaryGradFn<UnaryGradOp::NAME, T>{}, st);
    TANDEM_GRAD_CASE(kRelu)
    TANDEM_GRAD_CASE(kGelu)
    TANDEM_GRAD_CASE(kGeluTanh)
    TANDEM_GRAD_CASE(kTanhFromOutput)
    TANDEM_GRAD_CASE(kSigmoidFromOutput)
#undef TANDEM_GRAD_CASE
  }
}

template <class T>
void binary_typed(BinaryOp op, void* out, const T* a, const T* b, double alpha, const BroadcastLayout& L, int64_t n,
                  cudaStream_t st) {
  using C = compute_t<T>;
  T* o = static_cast<T*>(out);
  const C al = static_cast<C>(alpha);
  switch (op) {
    case BinaryOp::kAdd: return launch_map2(o, a, b, L, n, BinaryFn<BinaryOp::kAdd, T, T>{al}, st);
    case BinaryOp::kSub: return launch_map2(o, a, b, L, n, BinaryFn<BinaryOp::kSub, T, T>{al}, st);
    case BinaryOp::kMul: return launch_map2(o, a, b, L, n, BinaryFn<BinaryOp::kMul, T, T>{al}, st);
    case BinaryOp::kDiv: return launch_map2(o, a, b, L, n, BinaryFn<BinaryOp::kDiv, T, T>{al}, st);
    case BinaryOp::kEq:
      return launch_map2(static_cast<bool*>(out), a, b, L, n, BinaryFn<BinaryOp::kEq, T, bool>{al}, st);
  }
}

template <class T>
void scalar_typed(ScalarOp op, T* out, const T* a, double s, int64_t n, cudaStream_t st) {
  const compute_t<T> sc = static_cast<compute_t<T>>(s);
  switch (op) {
    case ScalarOp::kAdd: return launch_map1(out, a, n, ScalarFn<ScalarOp::kAdd, T>{sc}, st);
    case ScalarOp::kMul: return launch_map1(out, a, n, ScalarFn<ScalarOp::kMul, T>{sc}, st);
    case ScalarOp::kRsub: return launch_map1(out, a, n, ScalarFn<ScalarOp::kRsub, T>{sc}, st);
    case ScalarOp::kRdiv: return launch_map1(out, a, n, ScalarFn<ScalarOp::kRdiv, T>{sc}, st);
  }
}

}  // namespace

void unary(UnaryOp op, DType dtype, void* out, const void* in, int64_t n, cudaStream_t stream) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    unary_typed(op, static_cast<T*>(out), static_cast<const T*>(in), n, stream);
  });
  if (!ok) unreachable_dtype("cuda::unary", dtype);
}

void unary_grad(UnaryGradOp op, DType dtype, void* dx, const void* dy, const void* saved, int64_t n,
                cudaStream_t stream) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    unary_grad_typed(op, static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(saved), n, stream);
  });
  if (!ok) unreachable_dtype("cuda::unary_grad", dtype);
}

void binary(BinaryOp op, DType dtype, void* out, const void* a, const void* b, double alpha,
            const BroadcastLayout& layout, int64_t n, cudaStream_t stream) {
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, uint8_t>) {
      if (op != BinaryOp::kEq) unreachable_dtype("cuda::binary", dtype);
      launch_map2(static_cast<bool*>(out), static_cast<const T*>(a), static_cast<const T*>(b), layout, n,
                  BinaryFn<BinaryOp::kEq, T, bool>{compute_t<T>(0)}, stream);
    } else {
      binary_typed(op, out, static_cast<const T*>(a), static_cast<const T*>(b), alpha, layout, n, stream);
    }
  });
}

void scalar(ScalarOp op, DType dtype, void* out, const void* a, double s, int64_t n, cudaStream_t stream) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    scalar_typed(op, static_cast<T*>(out), static_cast<const T*>(a), s, n, stream);
  });
  if (!ok) unreachable_dtype("cuda::scalar", dtype);
}

void broadcast_copy(DType dtype, void* out, const void* in, const BroadcastLayout& layout, int64_t n,
                    cudaStream_t stream) {
  if (n == 0) return;
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    broadcast1_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(in), layout, n);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::kernels::cuda
