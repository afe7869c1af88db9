// Random factories and in-place initialisers (declared in engine/ops/factory.h):
// uniform and normal draws from a Philox Generator, identical on CPU and CUDA, and
// the Kaiming / Xavier initialisations of torch.nn.init. Values are drawn in f32
// (24-bit uniforms, Box-Muller normals rounded to f32) and mapped to low + (high-low)·u
// or mean + std·z with one f64 fma: f64 tensors keep that f64 result (f32-precision
// draws, exact scaling), f32 tensors round it once, f16/bf16 round the f32 value.
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/random.h"
#include "kernels/cuda/random.h"

namespace tandem {
namespace {

std::string format_double(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

void check_floating_dtype(const char* op, DType dtype) {
  if (!is_floating(dtype))
    throw std::invalid_argument(op_prefix(op) +
                                "expected a floating dtype (float32, float64, float16, bfloat16), got " +
                                std::string(dtype_name(dtype)));
}

// Fills `t` from `gen` (the device's default generator when null) with U[p0, p1)
// or, when `normal`, N(mean p0, std p1). Not recorded by autograd.
void fill_random(const char* op, Tensor& t, bool normal, double p0, double p1, Generator* gen) {
  check_defined(op, t, "tensor");
  check_floating_dtype(op, t.dtype());
  if (t.numel() == 0) return;
  const PhiloxState s = (gen ? *gen : default_generator(t.device())).reserve(t.numel());
  dispatch_device(
      op, t.device(),
      [&] {
        if (s.offset_base != nullptr)
          throw std::logic_error(op_prefix(op) + "expected a CPU generator's draw on the CPU, got one reserved in a "
                                                  "CUDA graph capture");
        if (normal)
          kernels::cpu::normal_fill(t.data_ptr(), t.dtype(), t.numel(), p0, p1, s.seed, s.offset);
        else
          kernels::cpu::uniform_fill(t.data_ptr(), t.dtype(), t.numel(), p0, p1, s.seed, s.offset);
      },
      [&](auto) {
        cudaStream_t stream = cuda_stream(t.device());
        if (normal)
          kernels::cuda::normal_fill(t.data_ptr(), t.dtype(), t.numel(), p0, p1, s.seed, s.offset, s.offset_base,
                                     stream);
        else
          kernels::cuda::uniform_fill(t.data_ptr(), t.dtype(), t.numel(), p0, p1, s.seed, s.offset, s.offset_base,
                                      stream);
      });
}

void check_uniform_range(const char* op, double low, double high) {
  if (!(low <= high) || !std::isfinite(low) || !std::isfinite(high))
    throw std::invalid_argument(op_prefix(op) + "expected finite low <= high, got low=" + format_double(low) +
                                " and high=" + format_double(high));
}

void check_std(const char* op, double std) {
  if (!(std >= 0.0) || !std::isfinite(std))
    throw std::invalid_argument(op_prefix(op) + "expected a finite std >= 0, got " + format_double(std));
}

// A new tensor of `shape` filled by fill_random, marked requires_grad afterwards if asked.
Tensor make_random(const char* op, const Shape& shape, const TensorOptions& options, bool normal, double p0,
                   double p1, Generator* gen) {
  check_floating_dtype(op, options.dtype);
  TensorOptions plain = options;
  plain.requires_grad = false;
  Tensor t = Tensor::empty(shape, plain);
  fill_random(op, t, normal, p0, p1, gen);
  if (options.requires_grad) t.set_requires_grad(true);
  return t;
}

std::pair<int64_t, int64_t> fans(const char* op, const Tensor& w) {
  check_defined(op, w, "weight");
  if (w.dim() < 2)
    throw std::invalid_argument(op_prefix(op) + "expected a tensor of at least 2 dims (out, in, ...), got shape " +
                                shape_str(w.shape()));
  int64_t receptive = 1;
  for (int64_t d = 2; d < w.dim(); ++d) receptive *= w.size(d);
  return {w.size(1) * receptive, w.size(0) * receptive};
}

// torch.nn.init.calculate_gain for the nonlinearities Tandem names.
double gain(Nonlinearity nl, double a) {
  switch (nl) {
    case Nonlinearity::kLinear:
    case Nonlinearity::kSigmoid: return 1.0;
    case Nonlinearity::kTanh: return 5.0 / 3.0;
    case Nonlinearity::kReLU: return std::sqrt(2.0);
    case Nonlinearity::kLeakyReLU: return std::sqrt(2.0 / (1.0 + a * a));
  }
  return 1.0;
}

}  // namespace

Tensor rand(const Shape& shape, const TensorOptions& options, Generator* gen) {
  return make_random("rand", shape, options, false, 0.0, 1.0, gen);
}

Tensor uniform(const Shape& shape, double low, double high, const TensorOptions& options, Generator* gen) {
  check_uniform_range("uniform", low, high);
  return make_random("uniform", shape, options, false, low, high, gen);
}

Tensor randn(const Shape& shape, const TensorOptions& options, Generator* gen) {
  return make_random("randn", shape, options, true, 0.0, 1.0, gen);
}

Tensor normal(const Shape& shape, double mean, double std, const TensorOptions& options, Generator* gen) {
  check_std("normal", std);
  if (!std::isfinite(mean))
    throw std::invalid_argument("[normal] expected a finite mean, got " + format_double(mean));
  return make_random("normal", shape, options, true, mean, std, gen);
}

Tensor& uniform_(Tensor& t, double low, double high, Generator* gen) {
  check_uniform_range("uniform_", low, high);
  fill_random("uniform_", t, false, low, high, gen);
  return t;
}

Tensor& normal_(Tensor& t, double mean, double std, Generator* gen) {
  check_std("normal_", std);
  if (!std::isfinite(mean))
    throw std::invalid_argument("[normal_] expected a finite mean, got " + format_double(mean));
  fill_random("normal_", t, true, mean, std, gen);
  return t;
}

std::pair<int64_t, int64_t> fan_in_out(const Tensor& weight) { return fans("fan_in_out", weight); }

Tensor& kaiming_uniform_(Tensor& w, double a, Nonlinearity nl, Generator* gen) {
  const auto [fan_in, fan_out] = fans("kaiming_uniform_", w);
  (void)fan_out;
  if (w.numel() == 0) return w;  // nothing to draw; fan_in may be 0 (as torch: a no-op)
  const double bound = std::sqrt(3.0) * gain(nl, a) / std::sqrt(static_cast<double>(fan_in));
  fill_random("kaiming_uniform_", w, false, -bound, bound, gen);
  return w;
}

Tensor& kaiming_normal_(Tensor& w, double a, Nonlinearity nl, Generator* gen) {
  const auto [fan_in, fan_out] = fans("kaiming_normal_", w);
  (void)fan_out;
  if (w.numel() == 0) return w;
  const double std = gain(nl, a) / std::sqrt(static_cast<double>(fan_in));
  fill_random("kaiming_normal_", w, true, 0.0, std, gen);
  return w;
}

Tensor& xavier_uniform_(Tensor& w, double gain_value, Generator* gen) {
  const auto [fan_in, fan_out] = fans("xavier_uniform_", w);
  if (w.numel() == 0) return w;
  const double bound = gain_value * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  fill_random("xavier_uniform_", w, false, -bound, bound, gen);
  return w;
}

Tensor& xavier_normal_(Tensor& w, double gain_value, Generator* gen) {
  const auto [fan_in, fan_out] = fans("xavier_normal_", w);
  if (w.numel() == 0) return w;
  const double std = gain_value * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out));
  fill_random("xavier_normal_", w, true, 0.0, std, gen);
  return w;
}

}  // namespace tandem
