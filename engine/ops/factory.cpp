// Constant and range factories (the random ones live in engine/ops/random.cpp).
#include <cmath>
#include <stdexcept>

#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/copy.h"
#include "kernels/cuda/copy.h"

namespace tandem {

Tensor full(const Shape& shape, double value, const TensorOptions& options) {
  TensorOptions opts = options;
  opts.requires_grad = false;
  Tensor t = Tensor::empty(shape, opts);
  t.fill_(value);
  if (options.requires_grad) t.set_requires_grad(true);
  return t;
}

Tensor zeros(const Shape& shape, const TensorOptions& options) { return full(shape, 0.0, options); }
Tensor ones(const Shape& shape, const TensorOptions& options) { return full(shape, 1.0, options); }
Tensor empty_like(const Tensor& x) { return Tensor::empty(x.shape(), {.dtype = x.dtype(), .device = x.device()}); }
Tensor zeros_like(const Tensor& x) { return zeros(x.shape(), {.dtype = x.dtype(), .device = x.device()}); }
Tensor ones_like(const Tensor& x) { return ones(x.shape(), {.dtype = x.dtype(), .device = x.device()}); }
Tensor scalar_tensor(double value, const TensorOptions& options) { return full({}, value, options); }

Tensor arange(int64_t end, const TensorOptions& options) { return arange(0.0, static_cast<double>(end), 1.0, options); }

Tensor arange(double start, double end, double step, const TensorOptions& options) {
  if (step == 0.0 || !std::isfinite(start) || !std::isfinite(end) || !std::isfinite(step))
    throw std::invalid_argument("[arange] expected finite start/end and a non-zero step, got start " +
                                std::to_string(start) + ", end " + std::to_string(end) + ", step " +
                                std::to_string(step));
  double count = std::ceil((end - start) / step);
  int64_t n = count > 0 ? static_cast<int64_t>(count) : 0;
  Tensor t = Tensor::empty({n}, {.dtype = options.dtype, .device = options.device});
  dispatch_device(
      "arange", options.device, [&] { kernels::cpu::arange(options.dtype, t.data_ptr(), start, step, n); },
      [&](auto) { kernels::cuda::arange(options.dtype, t.data_ptr(), start, step, n, cuda_stream(options.device)); });
  if (options.requires_grad) t.set_requires_grad(true);
  return t;
}

}  // namespace tandem
