// Reduction of metric sums and counts across ranks through a small f64 all-reduce.
#include "comm/metrics.h"

#include <stdexcept>
#include <string>

#include "engine/tensor.h"

namespace tandem::comm {

namespace {

// f64 holds every integer up to 2^53 exactly, so counts survive the round trip.
constexpr int64_t kMaxExactCount = int64_t{1} << 53;

void check_exact(const char* name, int64_t value) {
  if (value < -kMaxExactCount || value > kMaxExactCount)
    throw std::invalid_argument(std::string("[all_reduce_metrics] expected |") + name +
                                "| <= 2^53 (exact in f64), got " + std::to_string(value));
}

}  // namespace

std::vector<double> all_reduce_sums(ProcessGroup& group, const std::vector<double>& values, Device device) {
  if (values.empty()) return {};
  Tensor t = Tensor::from_vector(values, {static_cast<int64_t>(values.size())}, device);
  group.all_reduce(t, ReduceOp::kSum)->wait();
  // On CUDA wait() orders the current stream after the collective; to_vector copies on
  // that stream, so the host reads the reduced values.
  return t.to_vector<double>();
}

MetricSums all_reduce_metrics(ProcessGroup& group, const MetricSums& local, Device device) {
  check_exact("correct", local.correct);
  check_exact("count", local.count);
  std::vector<double> sums = all_reduce_sums(
      group, {local.loss_sum, static_cast<double>(local.correct), static_cast<double>(local.count)}, device);
  MetricSums total;
  total.loss_sum = sums[0];
  total.correct = static_cast<int64_t>(sums[1]);
  total.count = static_cast<int64_t>(sums[2]);
  // A global total can pass 2^53 even when each rank's share does not.
  check_exact("total count", total.count);
  return total;
}

}  // namespace tandem::comm
