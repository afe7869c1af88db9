// Dataset helpers and TensorDataset's per-sample memcpy gather.
#include "data/dataset.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace tandem::data {
namespace {

Shape with_batch_dim(int64_t batch, const Shape& sample) {
  Shape shape{batch};
  shape.insert(shape.end(), sample.begin(), sample.end());
  return shape;
}

/// Checks that `t` can hold `n` samples of `sample` shape and `dtype` on the CPU.
void check_batch_tensor(const Tensor& t, const char* name, size_t n, const Shape& sample, DType dtype) {
  Shape want = with_batch_dim(static_cast<int64_t>(n), sample);
  if (!t.defined() || !t.is_cpu() || t.dtype() != dtype || t.shape() != want) {
    throw std::invalid_argument(std::string("[Dataset::gather] expected batch.") + name + " a CPU " +
                                std::string(dtype_name(dtype)) + " tensor of shape " + shape_str(want) + ", got " +
                                (t.defined() ? t.device().str() + " " + std::string(dtype_name(t.dtype())) + " " +
                                                   shape_str(t.shape())
                                             : std::string("an undefined tensor")));
  }
}

}  // namespace

Batch Dataset::allocate_batch(int64_t batch_size, bool pinned) const {
  Batch b;
  b.input = Tensor::empty(with_batch_dim(batch_size, input_shape()), {.dtype = input_dtype(), .pinned = pinned});
  b.target = Tensor::empty(with_batch_dim(batch_size, target_shape()), {.dtype = target_dtype(), .pinned = pinned});
  return b;
}

void Dataset::check_batch(size_t n, const Batch& out) const {
  check_batch_tensor(out.input, "input", n, input_shape(), input_dtype());
  check_batch_tensor(out.target, "target", n, target_shape(), target_dtype());
}

Batch Dataset::get_batch(std::span<const int64_t> indices, bool pinned) const {
  Batch b = allocate_batch(static_cast<int64_t>(indices.size()), pinned);
  gather(indices, b);
  return b;
}

TensorDataset::TensorDataset(Tensor inputs, Tensor targets) : inputs_(std::move(inputs)), targets_(std::move(targets)) {
  if (!inputs_.defined() || !targets_.defined()) {
    throw std::invalid_argument("[TensorDataset] expected defined inputs and targets, got an undefined tensor");
  }
  if (!inputs_.is_cpu() || !targets_.is_cpu()) {
    throw std::invalid_argument("[TensorDataset] expected CPU tensors, got inputs on " + inputs_.device().str() +
                                " and targets on " + targets_.device().str());
  }
  if (inputs_.dim() < 1 || targets_.dim() < 1 || inputs_.size(0) != targets_.size(0)) {
    throw std::invalid_argument("[TensorDataset] expected inputs and targets with the same extent of dim 0, got " +
                                shape_str(inputs_.shape()) + " and " + shape_str(targets_.shape()));
  }
}

Shape TensorDataset::input_shape() const { return Shape(inputs_.shape().begin() + 1, inputs_.shape().end()); }
Shape TensorDataset::target_shape() const { return Shape(targets_.shape().begin() + 1, targets_.shape().end()); }

void TensorDataset::gather(std::span<const int64_t> indices, Batch& out) const {
  check_batch(indices.size(), out);
  const int64_t n = size();
  const size_t in_row = inputs_.nbytes() / static_cast<size_t>(std::max<int64_t>(n, 1));
  const size_t tg_row = targets_.nbytes() / static_cast<size_t>(std::max<int64_t>(n, 1));
  const auto* in_src = static_cast<const unsigned char*>(inputs_.data_ptr());
  const auto* tg_src = static_cast<const unsigned char*>(targets_.data_ptr());
  auto* in_dst = static_cast<unsigned char*>(out.input.data_ptr());
  auto* tg_dst = static_cast<unsigned char*>(out.target.data_ptr());
  for (size_t i = 0; i < indices.size(); ++i) {
    int64_t idx = indices[i];
    if (idx < 0 || idx >= n) {
      throw std::out_of_range("[TensorDataset::gather] expected indices in [0, " + std::to_string(n) + "), got " +
                              std::to_string(idx));
    }
    std::memcpy(in_dst + i * in_row, in_src + static_cast<size_t>(idx) * in_row, in_row);
    std::memcpy(tg_dst + i * tg_row, tg_src + static_cast<size_t>(idx) * tg_row, tg_row);
  }
}

}  // namespace tandem::data
