// Datasets: indexable collections of (input, target) samples that copy a list of
// samples straight into preallocated batch tensors, and the in-memory TensorDataset.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/tensor.h"

namespace tandem::data {

/// Which part of a data set with a fixed train/test split to load.
enum class Split { kTrain, kTest };

/// A batch of samples: inputs stacked along dim 0, targets likewise.
struct Batch {
  Tensor input;
  Tensor target;
};

class Dataset {
 public:
  virtual ~Dataset() = default;

  /// Number of samples.
  virtual int64_t size() const = 0;
  /// Shape of one sample's input (without the batch dim), and its dtype.
  virtual Shape input_shape() const = 0;
  virtual DType input_dtype() const = 0;
  /// Shape of one sample's target (empty for a class index), and its dtype.
  virtual Shape target_shape() const = 0;
  virtual DType target_dtype() const = 0;

  /// Copies samples `indices` into rows 0..indices.size()-1 of out.input and
  /// out.target, which must be CPU tensors of shape (indices.size(), ...) with the
  /// dataset's dtypes (allocate them with allocate_batch). Must be safe to call
  /// from another thread than the one that built the dataset (the loader's prefetch thread).
  virtual void gather(std::span<const int64_t> indices, Batch& out) const = 0;

  /// Allocates CPU tensors for a batch of `batch_size` samples, page-locked when `pinned`.
  Batch allocate_batch(int64_t batch_size, bool pinned = false) const;
  /// allocate_batch + gather.
  Batch get_batch(std::span<const int64_t> indices, bool pinned = false) const;

 protected:
  /// For gather(): throws std::invalid_argument unless out.input and out.target are CPU
  /// tensors that hold `n` samples of this data set's shapes and dtypes.
  void check_batch(size_t n, const Batch& out) const;
};

/// Samples held in memory: row i of `inputs` and of `targets` is sample i.
class TensorDataset : public Dataset {
 public:
  /// `inputs` and `targets` must be CPU tensors with the same extent of dim 0 (>= 0 samples).
  TensorDataset(Tensor inputs, Tensor targets);

  int64_t size() const override { return inputs_.size(0); }
  Shape input_shape() const override;
  DType input_dtype() const override { return inputs_.dtype(); }
  Shape target_shape() const override;
  DType target_dtype() const override { return targets_.dtype(); }
  /// One memcpy per sample and tensor.
  void gather(std::span<const int64_t> indices, Batch& out) const override;

  const Tensor& inputs() const { return inputs_; }
  const Tensor& targets() const { return targets_; }

 private:
  Tensor inputs_;
  Tensor targets_;
};

}  // namespace tandem::data
