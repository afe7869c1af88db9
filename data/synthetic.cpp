// SyntheticImages: labels, class prototypes and noise each come from their own
// Philox counter range (tagged in the third counter word), so all three are
// independent and any sample can be computed on its own.
#include "data/synthetic.h"

#include <stdexcept>
#include <string>

#include "kernels/philox.h"

namespace tandem::data {
namespace {

// Philox counter layout: c0 = block within one image (an image has far fewer than
// 2^34 elements), (c1, c2) = sample index or class, c3 = which stream.
constexpr uint32_t kLabelTag = 1, kPrototypeTag = 2, kNoiseTag = 3;

kernels::PhiloxBlock draw(uint64_t seed, uint32_t tag, uint64_t who, uint64_t block) {
  return kernels::philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(who >> 32),
                                static_cast<uint32_t>(who), tag, static_cast<uint32_t>(seed),
                                static_cast<uint32_t>(seed >> 32));
}

}  // namespace

SyntheticImages::SyntheticImages(int64_t n, Shape shape, int64_t num_classes, uint64_t seed, double noise)
    : n_(n), shape_(std::move(shape)), num_classes_(num_classes), seed_(seed), noise_(static_cast<float>(noise)) {
  if (n < 0) throw std::invalid_argument("[SyntheticImages] expected n >= 0 samples, got " + std::to_string(n));
  if (shape_.empty()) throw std::invalid_argument("[SyntheticImages] expected an image shape of rank >= 1, got []");
  for (int64_t d : shape_) {
    if (d < 1) {
      throw std::invalid_argument("[SyntheticImages] expected every image dimension >= 1, got shape " +
                                  shape_str(shape_));
    }
  }
  if (num_classes < 1) {
    throw std::invalid_argument("[SyntheticImages] expected num_classes >= 1, got " + std::to_string(num_classes));
  }
  if (!(noise >= 0.0)) {
    throw std::invalid_argument("[SyntheticImages] expected noise >= 0, got " + std::to_string(noise));
  }
  numel_ = shape_numel(shape_);
  if (numel_ > (int64_t{1} << 34)) {
    throw std::invalid_argument("[SyntheticImages] expected at most 2^34 elements per image, got shape " +
                                shape_str(shape_));
  }
}

void SyntheticImages::check_index(int64_t index) const {
  if (index < 0 || index >= n_) {
    throw std::out_of_range("[SyntheticImages] expected indices in [0, " + std::to_string(n_) + "), got " +
                            std::to_string(index));
  }
}

int64_t SyntheticImages::label(int64_t index) const {
  check_index(index);
  // One 32-bit word modulo num_classes: the bias is below num_classes / 2^32.
  uint32_t word = draw(seed_, kLabelTag, static_cast<uint64_t>(index), 0).w[0];
  return static_cast<int64_t>(word % static_cast<uint64_t>(num_classes_));
}

void SyntheticImages::image(int64_t index, float* out) const {
  const int64_t k = label(index);
  const auto who = static_cast<uint64_t>(index);
  for (int64_t b = 0; b * 4 < numel_; ++b) {
    kernels::PhiloxBlock proto = draw(seed_, kPrototypeTag, static_cast<uint64_t>(k), static_cast<uint64_t>(b));
    kernels::PhiloxBlock eps = draw(seed_, kNoiseTag, who, static_cast<uint64_t>(b));
    for (int j = 0; j < 4 && b * 4 + j < numel_; ++j) {
      float mean = 2.0f * kernels::philox_uniform(proto.w[j]) - 1.0f;
      out[b * 4 + j] = mean + noise_ * kernels::philox_normal(eps, j);
    }
  }
}

void SyntheticImages::gather(std::span<const int64_t> indices, Batch& out) const {
  const auto n = static_cast<int64_t>(indices.size());
  Shape want_input{n};
  want_input.insert(want_input.end(), shape_.begin(), shape_.end());
  auto bad = [](const Tensor& t, const Shape& shape, DType dtype) {
    return !t.defined() || !t.is_cpu() || t.dtype() != dtype || t.shape() != shape;
  };
  auto describe = [](const Tensor& t) {
    return t.defined() ? t.device().str() + " " + std::string(dtype_name(t.dtype())) + " " + shape_str(t.shape())
                       : std::string("an undefined tensor");
  };
  if (bad(out.input, want_input, DType::kF32)) {
    throw std::invalid_argument("[SyntheticImages::gather] expected batch.input a CPU float32 tensor of shape " +
                                shape_str(want_input) + ", got " + describe(out.input));
  }
  if (bad(out.target, Shape{n}, DType::kI64)) {
    throw std::invalid_argument("[SyntheticImages::gather] expected batch.target a CPU int64 tensor of shape " +
                                shape_str({n}) + ", got " + describe(out.target));
  }
  float* x = out.input.data<float>();
  int64_t* y = out.target.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    y[i] = label(indices[static_cast<size_t>(i)]);
    image(indices[static_cast<size_t>(i)], x + i * numel_);
  }
}

}  // namespace tandem::data
