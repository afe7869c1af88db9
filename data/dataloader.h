// DataLoader: splits each epoch's index order into batches, gathers them on a
// background thread (bounded queue) and delivers them, copied asynchronously from
// pinned memory when the target device is CUDA. Iterate with range-for; the loader
// remembers (epoch, position) so a run can stop and resume mid-epoch.
#pragma once

#include <cstdint>
#include <iterator>
#include <memory>
#include <vector>

#include "data/dataset.h"
#include "data/sampler.h"
#include "engine/device.h"

namespace tandem::data {

struct DataLoaderOptions {
  int64_t batch_size = 64;
  /// Visit samples in a new Philox permutation each epoch (seed + epoch); otherwise in order.
  bool shuffle = true;
  uint64_t seed = 0;
  /// Drop the last, smaller batch of an epoch.
  bool drop_last = false;
  /// Batches gathered ahead by a background thread; 0 gathers on the consumer's thread.
  int prefetch_depth = 2;
  /// Where batches are delivered. For CUDA, batches are gathered into pinned host
  /// memory and copied with non_blocking = true on the consumer's current stream.
  Device device = Device::cpu();
};

/// Where a loader stands: the epoch, and how many of its batches were handed out.
struct LoaderState {
  int64_t epoch = 0;
  int64_t position = 0;
};

class DataLoader {
 public:
  /// Iterates over the batches of one epoch; compares equal to std::default_sentinel at the end.
  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Batch;
    using difference_type = std::ptrdiff_t;

    explicit Iterator(DataLoader* loader) : loader_(loader) {}
    Batch& operator*() const { return loader_->current_; }
    Batch* operator->() const { return &loader_->current_; }
    Iterator& operator++() {
      loader_->advance();
      return *this;
    }
    bool operator==(std::default_sentinel_t) const { return loader_->done_; }

   private:
    DataLoader* loader_;
  };

  /// `sampler` chooses the index order (DistributedSampler, say); when null, a
  /// RandomSampler(dataset size, options.seed) or SequentialSampler per options.shuffle.
  DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options = {},
             std::shared_ptr<const Sampler> sampler = nullptr);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  /// Batches per epoch: ceil(n / batch_size), or floor with drop_last.
  int64_t num_batches() const;
  const Dataset& dataset() const { return *dataset_; }
  const DataLoaderOptions& options() const { return options_; }

  /// Starts iterating at batch position() of epoch(). When the loop runs to the end
  /// the epoch counts as done: epoch() advances by one and position() returns to 0,
  /// so consecutive loops see new permutations. A loop left early (break) leaves
  /// position() at the number of batches handed out, and the next begin() resumes
  /// there. Starting an iteration abandons any earlier one.
  Iterator begin();
  std::default_sentinel_t end() const { return {}; }

  int64_t epoch() const { return epoch_; }
  /// Selects the epoch (and so its permutation) and rewinds to its first batch.
  void set_epoch(int64_t epoch);
  /// Batches of the current epoch already handed out.
  int64_t position() const { return position_; }
  /// Skips to batch `position` of the current epoch, in [0, num_batches()].
  void set_position(int64_t position);
  LoaderState state() const { return {epoch_, position_}; }
  void load_state(const LoaderState& state);

 private:
  /// One pass over part of an epoch: its index order and the prefetch thread.
  struct Run;

  void stop_run();
  void advance();
  /// Gathers batch `k` of `order` into (pinned, when the target is CUDA) host memory.
  Batch gather_batch(const std::vector<int64_t>& order, int64_t k) const;

  std::shared_ptr<const Dataset> dataset_;
  std::shared_ptr<const Sampler> sampler_;
  DataLoaderOptions options_;
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  std::unique_ptr<Run> run_;
  Batch current_;
  bool done_ = true;
};

}  // namespace tandem::data
