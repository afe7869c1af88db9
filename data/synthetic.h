// SyntheticImages: a data set of any image shape whose samples are computed from
// their index with Philox, so it needs no memory or files - for benchmarks and for
// tests that need something a model can learn.
#pragma once

#include <cstdint>

#include "data/dataset.h"

namespace tandem::data {

/// Sample i has label y_i uniform in [0, num_classes) and image
/// x_i = prototype[y_i] + noise · ε_i, where prototype[k] is uniform in [-1, 1) per
/// element and ε_i is standard normal: a fixed class-dependent mean, so a model can fit
/// it. Every value depends only on (seed, i), never on the order of gathering.
class SyntheticImages : public Dataset {
 public:
  /// `n` >= 0 samples of f32 images of `shape` (C, H, W) - any rank >= 1 works - and
  /// int64 labels in [0, num_classes), num_classes >= 1; `noise` >= 0.
  SyntheticImages(int64_t n, Shape shape, int64_t num_classes, uint64_t seed = 0, double noise = 1.0);

  int64_t size() const override { return n_; }
  Shape input_shape() const override { return shape_; }
  DType input_dtype() const override { return DType::kF32; }
  Shape target_shape() const override { return {}; }
  DType target_dtype() const override { return DType::kI64; }
  /// Computes each requested sample into its row of `out`.
  void gather(std::span<const int64_t> indices, Batch& out) const override;

  int64_t num_classes() const { return num_classes_; }
  /// The label of sample `index`.
  int64_t label(int64_t index) const;
  /// Writes the image of sample `index` (shape_numel(input_shape()) floats) to `out`.
  void image(int64_t index, float* out) const;

 private:
  void check_index(int64_t index) const;

  int64_t n_;
  Shape shape_;
  int64_t numel_;
  int64_t num_classes_;
  uint64_t seed_;
  float noise_;
};

}  // namespace tandem::data
