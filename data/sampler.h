// Samplers: the order in which a DataLoader visits a dataset's indices in each epoch.
// Shuffling is Fisher-Yates driven by Philox, so an order is the same on every platform.
#pragma once

#include <cstdint>
#include <vector>

namespace tandem::data {

/// A permutation of [0, n) by Fisher-Yates, drawing from the Philox stream keyed by `seed`
/// (draw k uses 64 bits, words 2k and 2k+1 of the stream).
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed);

class Sampler {
 public:
  virtual ~Sampler() = default;
  /// Number of indices each epoch yields.
  virtual int64_t size() const = 0;
  /// The indices to visit in `epoch`, in order.
  virtual std::vector<int64_t> indices(int64_t epoch) const = 0;
};

/// 0, 1, ..., n-1 in every epoch.
class SequentialSampler : public Sampler {
 public:
  explicit SequentialSampler(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  std::vector<int64_t> indices(int64_t epoch) const override;

 private:
  int64_t n_;
};

/// A new permutation each epoch: shuffled_indices(n, seed + epoch).
class RandomSampler : public Sampler {
 public:
  RandomSampler(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  int64_t size() const override { return n_; }
  std::vector<int64_t> indices(int64_t epoch) const override;

 private:
  int64_t n_;
  uint64_t seed_;
};

}  // namespace tandem::data
