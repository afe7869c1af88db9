// Element-wise op codes and the broadcast layout shared by the CPU and CUDA
// element-wise kernels (kernels/cpu/elementwise.h, kernels/cuda/elementwise.h).
#pragma once

#include <cstdint>

namespace tandem::kernels {

enum class UnaryOp : uint8_t { kNeg, kExp, kLog, kSqrt, kRelu, kGelu, kGeluTanh, kTanh, kSigmoid, kSquare };

/// dx = dy · f'(saved), where `saved` is the op's input x (relu, gelu) or its output y (tanh, sigmoid).
enum class UnaryGradOp : uint8_t { kRelu, kGelu, kGeluTanh, kTanhFromOutput, kSigmoidFromOutput };

/// The activation of linear()'s fused bias epilogue (kernels/{cpu,cuda}/bias_activation):
/// y = act(x·Wᵀ + b) in one pass after the product. kGelu is the erf form, kGeluTanh
/// PyTorch's approximate="tanh".
enum class Activation : uint8_t { kNone, kRelu, kGelu, kGeluTanh };

/// out = a op b; kAdd computes a + alpha·b; kEq writes bool.
enum class BinaryOp : uint8_t { kAdd, kSub, kMul, kDiv, kEq };

/// out = a op s for a scalar s: kAdd a+s, kMul a·s, kRsub s−a, kRdiv s/a.
enum class ScalarOp : uint8_t { kAdd, kMul, kRsub, kRdiv };

inline constexpr int kMaxDims = 8;

/// How a contiguous output of extents `sizes` indexes its two inputs: element
/// (i0, ..., i{n-1}) reads a[Σ ik·a_strides[k]] and b[Σ ik·b_strides[k]]; a stride
/// of 0 is a broadcast dim. Dims are collapsed where possible, so most cases have
/// ndim <= 2. `same_shape` marks the case a, b and out are all the same flat array.
struct BroadcastLayout {
  int ndim = 0;
  bool same_shape = false;
  int64_t sizes[kMaxDims] = {};
  int64_t a_strides[kMaxDims] = {};
  int64_t b_strides[kMaxDims] = {};
};

/// Builds the layout for broadcasting a (a_ndim extents) and b to `out` (right-aligned,
/// as NumPy). The caller has validated that the shapes broadcast and out_ndim <= kMaxDims.
BroadcastLayout make_broadcast_layout(const int64_t* a_shape, int a_ndim, const int64_t* b_shape, int b_ndim,
                                      const int64_t* out_shape, int out_ndim);

}  // namespace tandem::kernels
