// Embedding: a row gather from weight (V, D) by int64 indices of any shape, and its
// gradient, a scatter-add into a zero (V, D) tensor that skips padding_idx.
//
// On the CPU an index outside [0, V) is an std::invalid_argument naming it. On CUDA
// indices are not checked (that would cost a host sync per lookup; PyTorch uses a
// device-side assert): an out-of-range index reads as a zero row and receives no
// gradient, and never touches memory outside the weight.
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "engine/ops/nn.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cuda/embedding.h"

namespace tandem {

Tensor embedding(const Tensor& weight, const Tensor& indices, int64_t padding_idx) {
  check_defined("embedding", weight, "weight");
  check_defined("embedding", indices, "indices");
  check_dim("embedding", weight, 2, "(V, D)");
  check_dtype("embedding", indices, {DType::kI64}, "indices");
  check_same_device("embedding", weight, indices);
  const Device device = weight.device();
  const DType dtype = weight.dtype();
  if (!is_floating(dtype)) throw_unsupported("embedding", device, dtype);
  const int64_t num_rows = weight.size(0), dim = weight.size(1);
  if (padding_idx >= num_rows)
    throw std::invalid_argument("[embedding] expected padding_idx < " + std::to_string(num_rows) +
                                " (the number of rows of weight " + shape_str(weight.shape()) + ") or negative, got " +
                                std::to_string(padding_idx));
  const int64_t n = indices.numel();
  Shape out_shape = indices.shape();
  out_shape.push_back(dim);
  Tensor out = Tensor::empty(out_shape, {.dtype = dtype, .device = device});
  const auto* idx = static_cast<const int64_t*>(indices.data_ptr());
  dispatch_device(
      "embedding", device,
      [&] {
        const int64_t bad = kernels::cpu::embedding_forward(dtype, out.data_ptr(), weight.data_ptr(), idx, n,
                                                            num_rows, dim);
        if (bad >= 0)
          throw std::invalid_argument("[embedding] expected indices in [0, " + std::to_string(num_rows) +
                                      ") (V = " + std::to_string(num_rows) + "), got " + std::to_string(idx[bad]) +
                                      " at flat position " + std::to_string(bad));
      },
      [&](auto) {
        kernels::cuda::embedding_forward(dtype, out.data_ptr(), weight.data_ptr(), idx, n, num_rows, dim,
                                         cuda_stream(device));
      });

  autograd::record(
      "embedding", {weight}, {out},
      [indices = indices.detach(), num_rows, dim, padding_idx, dtype, device](std::vector<Tensor>& grads) {
        const Tensor& g = grads[0];
        // f16/bf16 gradients accumulate in f32 and round once, so a row picked many
        // times is not rounded at every addition.
        const DType acc_dtype = (dtype == DType::kF16 || dtype == DType::kBF16) ? DType::kF32 : dtype;
        Tensor acc = zeros({num_rows, dim}, {.dtype = acc_dtype, .device = device});
        const auto* idx = static_cast<const int64_t*>(indices.data_ptr());
        const int64_t n = indices.numel();
        dispatch_device(
            "embedding_backward", device,
            [&] {
              kernels::cpu::embedding_backward(dtype, acc.data_ptr(), g.data_ptr(), idx, n, num_rows, dim,
                                               padding_idx);
            },
            [&](auto) {
              kernels::cuda::embedding_backward(dtype, acc.data_ptr(), g.data_ptr(), idx, n, num_rows, dim,
                                                padding_idx, cuda_stream(device));
            });
        return std::vector<Tensor>{acc.to(dtype)};
      });
  return out;
}

}  // namespace tandem
