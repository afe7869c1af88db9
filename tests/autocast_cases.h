// The op table shared by the autocast and half-precision tests (CPU and CUDA): every op
// the autocast policy names, plus the element-wise, reduction, pooling and other ops a
// mixed-precision model runs in its input dtype, each with the dtype autocast must give
// its output. Integer arguments (targets, indices) and f32 per-channel tensors are built
// inside the case on the inputs' device, so a case runs unchanged on CPU and CUDA.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/autocast.h"
#include "test_util.h"

namespace tandem::testing {

/// What autocast does with a case's output dtype.
enum class Expect {
  kLow,    // the guard's dtype, whatever the inputs (matrix products, convolutions)
  kF32,    // f32, whatever the inputs (softmax, norms, losses, reductions)
  kInput,  // the dtype of the floating inputs (everything else)
};

struct OpCase {
  std::string name;
  std::vector<Shape> shapes;  // floating inputs, random in [low, high)
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  Expect expect;
  double low = -1.0;
  double high = 1.0;
};

/// The output dtype `c` must have under a guard of `guard` with inputs of `input`.
inline DType expected_dtype(const OpCase& c, DType guard, DType input) {
  switch (c.expect) {
    case Expect::kLow: return guard;
    case Expect::kF32: return DType::kF32;
    case Expect::kInput: return input;
  }
  return input;
}

/// The cases, in policy order.
inline std::vector<OpCase> op_cases() {
  using V = const std::vector<Tensor>&;
  auto targets = [](const Tensor& like) { return Tensor::from_vector<int64_t>({0, 4, 2, 1, 3, 4}, {6}, like.device()); };
  auto f32_channel = [](const std::vector<double>& v, const Tensor& like) {
    return Tensor::from_vector<double>(v, {static_cast<int64_t>(v.size())}).to(DType::kF32).to(like.device());
  };
  std::vector<OpCase> cases = {
      // ---- low precision ----
      {"matmul", {{6, 32}, {32, 5}}, [](V x) { return matmul(x[0], x[1]); }, Expect::kLow},
      {"matmul_3d_2d", {{2, 4, 32}, {32, 5}}, [](V x) { return matmul(x[0], x[1]); }, Expect::kLow},
      {"bmm", {{2, 4, 16}, {2, 16, 3}}, [](V x) { return bmm(x[0], x[1]); }, Expect::kLow},
      {"linear", {{3, 4, 16}, {8, 16}, {8}}, [](V x) { return linear(x[0], x[1], x[2]); }, Expect::kLow},
      {"linear_gelu", {{3, 4, 16}, {8, 16}, {8}},
       [](V x) { return linear(x[0], x[1], x[2], Activation::kGelu); }, Expect::kLow},
      {"linear_relu", {{6, 16}, {8, 16}, {8}}, [](V x) { return linear(x[0], x[1], x[2], Activation::kRelu); },
       Expect::kLow},
      {"conv2d", {{2, 3, 8, 8}, {4, 3, 3, 3}, {4}},
       [](V x) { return conv2d(x[0], x[1], x[2], {.stride = 1, .padding = 1}); }, Expect::kLow},
      {"conv2d_strided_groups", {{2, 4, 9, 9}, {6, 2, 3, 3}},
       [](V x) { return conv2d(x[0], x[1], Tensor(), {.stride = 2, .padding = {1, 0}, .groups = 2}); }, Expect::kLow},
      // ---- f32 ----
      {"softmax", {{4, 10}}, [](V x) { return softmax(x[0], -1); }, Expect::kF32, -3.0, 3.0},
      {"log_softmax", {{5, 4}}, [](V x) { return log_softmax(x[0], 0); }, Expect::kF32, -3.0, 3.0},
      {"cross_entropy", {{6, 5}}, [targets](V x) { return cross_entropy(x[0], targets(x[0])); }, Expect::kF32, -3.0,
       3.0},
      {"cross_entropy_smoothing_none", {{6, 5}},
       [targets](V x) {
         return cross_entropy(x[0], targets(x[0]), {.reduction = Reduction::kNone, .label_smoothing = 0.1});
       },
       Expect::kF32, -3.0, 3.0},
      {"mse_loss", {{4, 5}, {4, 5}}, [](V x) { return mse_loss(x[0], x[1]); }, Expect::kF32},
      {"layer_norm", {{3, 8}, {8}, {8}}, [](V x) { return layer_norm(x[0], {8}, x[1], x[2]); }, Expect::kF32},
      {"sum", {{5, 7}}, [](V x) { return sum(x[0]); }, Expect::kF32},
      {"sum_dim", {{5, 7}}, [](V x) { return sum(x[0], {1}); }, Expect::kF32},
      {"mean", {{5, 7}}, [](V x) { return mean(x[0]); }, Expect::kF32},
      {"mean_dim_keepdim", {{5, 7}}, [](V x) { return mean(x[0], {0}, true); }, Expect::kF32},
      {"exp", {{4, 5}}, [](V x) { return exp(x[0]); }, Expect::kF32, -2.0, 2.0},
      {"log", {{4, 5}}, [](V x) { return log(x[0]); }, Expect::kF32, 0.1, 2.0},
      // ---- input dtype ----
      {"neg", {{4, 5}}, [](V x) { return neg(x[0]); }, Expect::kInput},
      {"sqrt", {{4, 5}}, [](V x) { return sqrt(x[0]); }, Expect::kInput, 0.1, 2.0},
      {"relu", {{4, 5}}, [](V x) { return relu(x[0]); }, Expect::kInput},
      {"gelu", {{4, 5}}, [](V x) { return gelu(x[0]); }, Expect::kInput, -3.0, 3.0},
      {"gelu_tanh", {{4, 5}}, [](V x) { return gelu(x[0], true); }, Expect::kInput, -3.0, 3.0},
      {"tanh", {{4, 5}}, [](V x) { return tanh(x[0]); }, Expect::kInput, -2.0, 2.0},
      {"sigmoid", {{4, 5}}, [](V x) { return sigmoid(x[0]); }, Expect::kInput, -3.0, 3.0},
      {"square", {{4, 5}}, [](V x) { return square(x[0]); }, Expect::kInput},
      {"add_broadcast", {{4, 5}, {5}}, [](V x) { return add(x[0], x[1], 0.5); }, Expect::kInput},
      {"sub", {{4, 5}, {4, 1}}, [](V x) { return x[0] - x[1]; }, Expect::kInput},
      {"mul_broadcast", {{3, 1, 5}, {4, 5}}, [](V x) { return x[0] * x[1]; }, Expect::kInput},
      {"div", {{4, 5}, {4, 5}}, [](V x) { return x[0] / x[1]; }, Expect::kInput, 0.5, 1.5},
      {"scalar_ops", {{4, 5}}, [](V x) { return 2.0 - (x[0] * 1.5 + 0.25); }, Expect::kInput},
      {"rdiv", {{4, 5}}, [](V x) { return 1.0 / x[0]; }, Expect::kInput, 0.5, 1.5},
      {"max_dim", {{4, 6}}, [](V x) { return max(x[0], 1).values; }, Expect::kInput},
      {"transpose_reshape", {{3, 4}}, [](V x) { return x[0].transpose(0, 1).reshape({2, 6}) * 2.0; }, Expect::kInput},
      {"dropout", {{8, 9}},
       [](V x) {
         Generator gen(1234);  // the same mask on every call
         return dropout(x[0], 0.3, true, &gen);
       },
       Expect::kInput},
      {"max_pool2d", {{2, 3, 8, 8}}, [](V x) { return max_pool2d(x[0], 2); }, Expect::kInput},
      {"avg_pool2d", {{2, 3, 8, 8}}, [](V x) { return avg_pool2d(x[0], 3, {.stride = 2, .padding = 1}); },
       Expect::kInput},
      {"adaptive_avg_pool2d", {{2, 3, 7, 7}}, [](V x) { return adaptive_avg_pool2d(x[0], 3); }, Expect::kInput},
      {"batch_norm_train", {{4, 3, 5}},
       [f32_channel](V x) {
         // f32 affine parameters and running statistics with an input of any dtype.
         Tensor w = f32_channel({1.5, 0.5, -1.0}, x[0]), b = f32_channel({0.1, -0.2, 0.3}, x[0]);
         Tensor rm = f32_channel({0.0, 0.1, 0.2}, x[0]), rv = f32_channel({1.0, 0.9, 1.1}, x[0]);
         return batch_norm(x[0], w, b, rm, rv, true);
       },
       Expect::kInput},
      {"batch_norm_eval", {{4, 3, 2, 2}},
       [f32_channel](V x) {
         Tensor w = f32_channel({1.5, 0.5, -1.0}, x[0]), b = f32_channel({0.1, -0.2, 0.3}, x[0]);
         Tensor rm = f32_channel({0.0, 0.1, 0.2}, x[0]), rv = f32_channel({1.0, 0.9, 1.1}, x[0]);
         return batch_norm(x[0], w, b, rm, rv, false);
       },
       Expect::kInput},
      {"embedding", {{10, 6}},
       [](V x) {
         Tensor idx = Tensor::from_vector<int64_t>({3, 0, 9, 3, 5, 1}, {2, 3}, x[0].device());
         return embedding(x[0], idx);
       },
       Expect::kInput},
  };
  return cases;
}

/// Random inputs of case `c` in `dtype` on `device`, each a leaf requiring grad.
inline std::vector<Tensor> case_inputs(const OpCase& c, DType dtype, Device device, uint64_t seed) {
  std::vector<Tensor> xs;
  for (size_t i = 0; i < c.shapes.size(); ++i)
    xs.push_back(random_tensor(c.shapes[i], seed + 17 * i, dtype, device, c.low, c.high).set_requires_grad(true));
  return xs;
}

/// Fresh f32 leaves holding the same values as `xs` (exactly: f16/bf16 widen without rounding).
inline std::vector<Tensor> widened_leaves(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(x.detach().to(DType::kF32).set_requires_grad(true));
  return out;
}

/// A fixed cotangent for `out` (values in [0.5, 1.5), never zero), in out's dtype.
inline Tensor case_cotangent(const Tensor& out, uint64_t seed) {
  return random_tensor(out.shape(), seed, DType::kF32, out.device(), 0.5, 1.5).to(out.dtype());
}

/// Relative tolerance for results computed with f32 accumulation and `dtype` inputs or
/// outputs: f16 ~1e-3, bf16 ~1e-2 (a few units in the last place of each).
inline double half_tolerance(DType dtype) {
  switch (dtype) {
    case DType::kF16: return 1e-3;
    case DType::kBF16: return 1e-2;
    case DType::kF64: return 1e-12;
    default: return 1e-5;
  }
}

}  // namespace tandem::testing
