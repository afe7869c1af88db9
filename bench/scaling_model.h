// The scaling model of `tandem-bench scaling` (issue 8): ring all-reduce cost per DDP
// bucket, the reducer's one-channel schedule of those all-reduces against backward, and
// the link presets (NVLink 4, PCIe 5, InfiniBand 200 Gb/s) with their sources.
// Plain arithmetic on measured timelines: no engine types, so tests can build it alone.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace tandem::bench {

/// A link's all-reduce figures: bus bandwidth as nccl-tests reports it (busbw, GB/s =
/// 1e9 bytes/s) and the per-collective latency alpha (microseconds).
struct LinkPreset {
  std::string name;
  double busbw_gbps = 0.0;
  double alpha_us = 0.0;
  std::string source;  // where the figures come from
};

/// nvlink4, pcie5, ib200 (see scaling_model.cpp for the figures and sources).
const std::vector<LinkPreset>& link_presets();
/// The preset named `name`; throws std::invalid_argument naming the known presets.
const LinkPreset& find_link_preset(const std::string& name);

/// Ring all-reduce of `nbytes` over `ranks` ranks: alpha + 2(n-1)/n · S / busbw seconds
/// (0 for one rank, which skips the collective). Throws std::invalid_argument for
/// ranks < 1, nbytes < 0 or busbw <= 0.
double ring_allreduce_s(double nbytes, int ranks, double busbw_gbps, double alpha_us);

/// One DDP bucket in one iteration: its size and when its last gradient arrived,
/// in seconds after backward started.
struct BucketReady {
  double nbytes = 0.0;
  double ready_s = 0.0;
};

/// The all-reduces of one backward on one communication channel.
struct CommSchedule {
  std::vector<double> start_s, done_s;  // per bucket, seconds after backward started
  double comm_s = 0.0;                  // sum of the all-reduce costs
  double exposed_s = 0.0;               // max(0, last done - backward end)
  /// Fraction of all-reduce time before backward ended: Σ max(0, min(done, end) - start) / Σ cost.
  double hidden_fraction = 1.0;
};

/// Schedules the buckets as the reducer launches them: in bucket order on one channel,
/// bucket i starting at max(ready_i, done_{i-1}) and taking cost_s[i]. Throws
/// std::invalid_argument when the two lists differ in length.
CommSchedule schedule_buckets(const std::vector<BucketReady>& buckets, const std::vector<double>& cost_s,
                              double backward_end_s);

/// Measured hidden fraction of a timeline: Σ over buckets of the part of [ready, done]
/// before backward_end, over Σ (done - ready); 1 when no bucket took any time.
double measured_hidden_fraction(const std::vector<double>& ready_s, const std::vector<double>& done_s,
                                double backward_end_s);

/// A measured iteration (medians, seconds): the compute the model keeps fixed per rank.
struct IterationProfile {
  double forward_s = 0.0;
  double backward_s = 0.0;  // backward compute (no exposed communication)
  /// When the reducer's finalisation starts (the all-reduces' deadline), after backward
  /// started; < 0: backward_s. The rest of backward_s is finalisation work.
  double backward_end_s = -1.0;
  double optimizer_s = 0.0;
  std::vector<BucketReady> buckets;  // bucket order
};

/// The model's iteration at `ranks` ranks on a link.
struct Prediction {
  int ranks = 1;
  double step_s = 0.0;
  double exposed_s = 0.0;
  double comm_s = 0.0;
  double hidden_fraction = 1.0;
  double speedup = 1.0;     // ranks · step(1) / step(n), at a fixed batch per rank
  double efficiency = 1.0;  // speedup / ranks
};

/// step(n) = forward + backward + exposed(n) + optimizer, with exposed(n) from
/// schedule_buckets (deadline backward_end_s) and ring_allreduce_s per bucket.
Prediction predict_iteration(const IterationProfile& profile, int ranks, double busbw_gbps, double alpha_us);

/// Least-squares fit of t = alpha + x / busbw over (x = 2(n-1)/n · bytes, t seconds)
/// points; returns {alpha_us, busbw_gbps}. Needs two distinct x values.
std::pair<double, double> fit_alpha_busbw(const std::vector<double>& bytes, const std::vector<double>& seconds,
                                          int ranks);

}  // namespace tandem::bench
