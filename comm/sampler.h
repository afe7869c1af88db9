// DistributedSampler: the share of a data set one rank visits each epoch. Training
// mode pads (or truncates) one permutation so every rank gets the same number of
// samples; evaluation mode splits the data set exactly, so metrics are exact.
#pragma once

#include <cstdint>
#include <vector>

#include "data/sampler.h"

namespace tandem::data {

struct DistributedSamplerOptions {
  /// Visit a Philox permutation seeded with seed + epoch (the same on every rank);
  /// otherwise 0, 1, ..., n-1.
  bool shuffle = true;
  uint64_t seed = 0;
  /// Training mode: drop the tail that does not fill every rank equally, instead of
  /// padding it by repeating the head of the order.
  bool drop_last = false;
  /// Never pad or drop: contiguous shards of the order whose sizes differ by at most
  /// one, so the union over ranks is exactly the data set (validation).
  bool evaluation = false;
};

/// Rank `rank`'s indices: the order padded to a multiple of num_replicas by repeating
/// its head (or truncated, with drop_last), then every num_replicas-th element from
/// position rank. The epoch is the argument of indices(); a DataLoader passes its own
/// (DataLoader::set_epoch), so consecutive epochs reshuffle the same way on every rank.
class DistributedSampler : public Sampler {
 public:
  DistributedSampler(int64_t dataset_size, int num_replicas, int rank, DistributedSamplerOptions options = {});

  /// Indices per epoch for this rank: ceil(n/R) (floor with drop_last); in evaluation
  /// mode n/R, plus one on the first n mod R ranks.
  int64_t size() const override { return size_; }
  std::vector<int64_t> indices(int64_t epoch) const override;

  int64_t dataset_size() const { return dataset_size_; }
  int num_replicas() const { return num_replicas_; }
  int rank() const { return rank_; }
  const DistributedSamplerOptions& options() const { return options_; }

 private:
  /// The whole data set's order for `epoch`, before padding and sharding.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

  int64_t dataset_size_;
  int num_replicas_;
  int rank_;
  DistributedSamplerOptions options_;
  int64_t size_ = 0;
};

}  // namespace tandem::data
