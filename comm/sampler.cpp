// DistributedSampler: padding, truncation and sharding of one epoch's order.
#include "comm/sampler.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace tandem::data {

DistributedSampler::DistributedSampler(int64_t dataset_size, int num_replicas, int rank,
                                       DistributedSamplerOptions options)
    : dataset_size_(dataset_size), num_replicas_(num_replicas), rank_(rank), options_(options) {
  if (dataset_size < 0)
    throw std::invalid_argument("[DistributedSampler] expected a dataset size >= 0, got " +
                                std::to_string(dataset_size));
  if (num_replicas < 1)
    throw std::invalid_argument("[DistributedSampler] expected num_replicas >= 1, got " +
                                std::to_string(num_replicas));
  if (rank < 0 || rank >= num_replicas)
    throw std::invalid_argument("[DistributedSampler] expected a rank in [0, " + std::to_string(num_replicas) +
                                "), got " + std::to_string(rank));
  if (options.evaluation && options.drop_last)
    throw std::invalid_argument(
        "[DistributedSampler] evaluation mode keeps every sample; expected drop_last = false, got true");
  const int64_t r = num_replicas;
  if (options.evaluation) {
    size_ = dataset_size / r + (rank < dataset_size % r ? 1 : 0);
  } else if (options.drop_last) {
    size_ = dataset_size / r;
  } else {
    size_ = (dataset_size + r - 1) / r;
  }
}

std::vector<int64_t> DistributedSampler::epoch_order(int64_t epoch) const {
  if (options_.shuffle) return shuffled_indices(dataset_size_, options_.seed + static_cast<uint64_t>(epoch));
  std::vector<int64_t> order(static_cast<size_t>(dataset_size_));
  std::iota(order.begin(), order.end(), int64_t{0});
  return order;
}

std::vector<int64_t> DistributedSampler::indices(int64_t epoch) const {
  std::vector<int64_t> order = epoch_order(epoch);
  const int64_t n = dataset_size_;
  const int64_t r = num_replicas_;
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(size_));
  if (options_.evaluation) {
    // Contiguous shards, the first n mod R one longer: concatenated in rank order they
    // are exactly `order`, so no sample is seen twice or missed.
    const int64_t base = n / r;
    const int64_t extra = n % r;
    const int64_t begin = rank_ * base + std::min<int64_t>(rank_, extra);
    out.assign(order.begin() + begin, order.begin() + begin + size_);
    return out;
  }
  // Position p of the padded order is order[p mod n]: padding repeats the head, and
  // wraps again when R exceeds n (as PyTorch's sampler does). Truncation (drop_last)
  // simply stops at size_ * R <= n.
  for (int64_t k = 0; k < size_; ++k) {
    const int64_t p = rank_ + k * r;
    out.push_back(order[static_cast<size_t>(p % n)]);
  }
  return out;
}

}  // namespace tandem::data
