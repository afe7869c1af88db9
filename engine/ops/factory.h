// Factories: constant fills, ranges and random tensors (Philox, identical on CPU and CUDA).
#pragma once

#include "engine/random.h"
#include "engine/tensor.h"

namespace tandem {

Tensor zeros(const Shape& shape, const TensorOptions& options = {});
Tensor ones(const Shape& shape, const TensorOptions& options = {});
Tensor full(const Shape& shape, double value, const TensorOptions& options = {});
Tensor empty_like(const Tensor& x);
Tensor zeros_like(const Tensor& x);
Tensor ones_like(const Tensor& x);
/// A 0-dim tensor holding `value`.
Tensor scalar_tensor(double value, const TensorOptions& options = {});
/// [0, 1, ..., end-1]
Tensor arange(int64_t end, const TensorOptions& options = {.dtype = DType::kI64});
/// start, start+step, ... while < end (> end for a negative step).
Tensor arange(double start, double end, double step, const TensorOptions& options = {.dtype = DType::kI64});

/// Uniform in [low, high), drawn from `gen` (the device's default generator when null).
Tensor rand(const Shape& shape, const TensorOptions& options = {}, Generator* gen = nullptr);
Tensor uniform(const Shape& shape, double low, double high, const TensorOptions& options = {},
               Generator* gen = nullptr);
/// Normal with the given mean and standard deviation.
Tensor randn(const Shape& shape, const TensorOptions& options = {}, Generator* gen = nullptr);
Tensor normal(const Shape& shape, double mean, double std, const TensorOptions& options = {},
              Generator* gen = nullptr);

// In-place initialisers (not recorded by autograd), as torch.nn.init.
Tensor& uniform_(Tensor& t, double low, double high, Generator* gen = nullptr);
Tensor& normal_(Tensor& t, double mean, double std, Generator* gen = nullptr);

enum class Nonlinearity { kLinear, kReLU, kLeakyReLU, kTanh, kSigmoid };
/// fan_in and fan_out of a weight (dim 1 and dim 0 times the receptive field).
std::pair<int64_t, int64_t> fan_in_out(const Tensor& weight);
/// He initialisation: U(-b, b), b = gain·sqrt(3/fan_in); `a` is the leaky slope.
Tensor& kaiming_uniform_(Tensor& w, double a = 0.0, Nonlinearity nl = Nonlinearity::kLeakyReLU,
                         Generator* gen = nullptr);
/// N(0, gain/sqrt(fan_in)).
Tensor& kaiming_normal_(Tensor& w, double a = 0.0, Nonlinearity nl = Nonlinearity::kLeakyReLU,
                        Generator* gen = nullptr);
/// U(-b, b), b = gain·sqrt(6/(fan_in+fan_out)).
Tensor& xavier_uniform_(Tensor& w, double gain = 1.0, Generator* gen = nullptr);
/// N(0, gain·sqrt(2/(fan_in+fan_out))).
Tensor& xavier_normal_(Tensor& w, double gain = 1.0, Generator* gen = nullptr);

}  // namespace tandem
