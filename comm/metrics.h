// Metrics across ranks: each rank accumulates sums and counts over its shard, and
// one all-reduce adds them, so distributed accuracy is computed from global totals
// (never a mean of per-rank means) and equals the single-process value exactly.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/process_group.h"
#include "engine/device.h"

namespace tandem::comm {

/// Sums over samples (not means), so they add across ranks.
struct MetricSums {
  double loss_sum = 0.0;  // sum over samples of the per-sample loss
  int64_t correct = 0;    // samples predicted correctly
  int64_t count = 0;      // samples seen

  /// loss_sum / count (0 when count is 0).
  double mean_loss() const { return count > 0 ? loss_sum / static_cast<double>(count) : 0.0; }
  /// correct / count (0 when count is 0).
  double accuracy() const { return count > 0 ? static_cast<double>(correct) / static_cast<double>(count) : 0.0; }
};

/// Element-wise sum of `values` over all ranks (every rank passes the same length),
/// with one all-reduce of an f64 tensor on `device` (a CUDA device for nccl groups).
/// Integers below 2^53 are summed exactly.
std::vector<double> all_reduce_sums(ProcessGroup& group, const std::vector<double>& values,
                                    Device device = Device::cpu());

/// The sums of every rank's loss_sum, correct and count (one all-reduce).
MetricSums all_reduce_metrics(ProcessGroup& group, const MetricSums& local, Device device = Device::cpu());

}  // namespace tandem::comm
