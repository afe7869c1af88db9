// The scaling model of `tandem-bench scaling`: ring all-reduce cost, the one-channel
// bucket schedule against backward, and the link presets with their sources.
#include "bench/scaling_model.h"

#include <algorithm>
#include <stdexcept>

namespace tandem::bench {

const std::vector<LinkPreset>& link_presets() {
  // Bus bandwidth is nccl-tests' busbw (algbw · 2(n-1)/n for all-reduce), so the ring
  // formula below uses it directly. Figures are ring all-reduce at large messages.
  static const std::vector<LinkPreset> presets = {
      {"nvlink4", 370.0, 5.0,
       "NVLink 4 / NVSwitch, 8x H100 SXM (450 GB/s per direction per GPU). nccl-tests all_reduce_perf "
       "busbw at large sizes is reported at 460-480 GB/s with NVLink SHARP (docs.alayanew.com, "
       "'NCCL-tests in practice', 2026); 370 GB/s is the plain-ring figure issue 8 asks for, below that. "
       "alpha: a few us per collective inside one node"},
      {"pcie5", 28.0, 8.0,
       "PCIe Gen 5 x16 (64 GB/s per direction raw) without NVLink: nccl-tests busbw 35-45 GB/s reported "
       "for 8x H100 PCIe (same source); 28 GB/s (issue 8) allows for GPUs behind shared switches / "
       "across the CPU root complex"},
      {"ib200", 23.0, 8.0,
       "InfiniBand HDR 200 Gb/s (25 GB/s) with one NIC per GPU across nodes: NVIDIA reports 192 GB/s "
       "all-reduce busbw for DGX A100 with 8x 200 Gb/s NICs, 24 GB/s per NIC (github.com/NVIDIA/nccl "
       "issue 1576), and 12.2 GB/s for one 100 Gb/s NIC as 'as good as you can get' (NVIDIA/nccl-tests "
       "issue 29); alpha 5-10 us for inter-node latency"},
  };
  return presets;
}

const LinkPreset& find_link_preset(const std::string& name) {
  std::string known;
  for (const LinkPreset& p : link_presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  throw std::invalid_argument("[scaling_model] expected a link preset (" + known + "), got '" + name + "'");
}

double ring_allreduce_s(double nbytes, int ranks, double busbw_gbps, double alpha_us) {
  if (ranks < 1) throw std::invalid_argument("[ring_allreduce_s] expected ranks >= 1, got " + std::to_string(ranks));
  if (nbytes < 0) throw std::invalid_argument("[ring_allreduce_s] expected nbytes >= 0, got " + std::to_string(nbytes));
  if (!(busbw_gbps > 0))
    throw std::invalid_argument("[ring_allreduce_s] expected busbw_gbps > 0, got " + std::to_string(busbw_gbps));
  if (ranks == 1) return 0.0;  // DDP skips the collective at world size 1
  const double n = ranks;
  return alpha_us * 1e-6 + 2.0 * (n - 1.0) / n * nbytes / (busbw_gbps * 1e9);
}

CommSchedule schedule_buckets(const std::vector<BucketReady>& buckets, const std::vector<double>& cost_s,
                              double backward_end_s) {
  if (buckets.size() != cost_s.size())
    throw std::invalid_argument("[schedule_buckets] expected one cost per bucket (" + std::to_string(buckets.size()) +
                                "), got " + std::to_string(cost_s.size()));
  CommSchedule s;
  double channel_free = 0.0;  // the reducer's all-reduces run one after another, in bucket order
  double hidden = 0.0;
  double last_done = backward_end_s;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const double start = std::max(buckets[i].ready_s, channel_free);
    const double done = start + cost_s[i];
    s.start_s.push_back(start);
    s.done_s.push_back(done);
    s.comm_s += cost_s[i];
    hidden += std::max(0.0, std::min(done, backward_end_s) - start);
    channel_free = done;
    last_done = std::max(last_done, done);
  }
  s.exposed_s = std::max(0.0, last_done - backward_end_s);
  s.hidden_fraction = s.comm_s > 0 ? hidden / s.comm_s : 1.0;
  return s;
}

double measured_hidden_fraction(const std::vector<double>& ready_s, const std::vector<double>& done_s,
                                double backward_end_s) {
  if (ready_s.size() != done_s.size())
    throw std::invalid_argument("[measured_hidden_fraction] expected as many done as ready times (" +
                                std::to_string(ready_s.size()) + "), got " + std::to_string(done_s.size()));
  double total = 0.0, hidden = 0.0;
  for (size_t i = 0; i < ready_s.size(); ++i) {
    const double span = std::max(0.0, done_s[i] - ready_s[i]);
    total += span;
    hidden += std::clamp(backward_end_s - ready_s[i], 0.0, span);
  }
  return total > 0 ? hidden / total : 1.0;
}

Prediction predict_iteration(const IterationProfile& profile, int ranks, double busbw_gbps, double alpha_us) {
  std::vector<double> cost;
  for (const BucketReady& b : profile.buckets) cost.push_back(ring_allreduce_s(b.nbytes, ranks, busbw_gbps, alpha_us));
  const double end = profile.backward_end_s >= 0 ? profile.backward_end_s : profile.backward_s;
  const CommSchedule s = schedule_buckets(profile.buckets, cost, end);
  Prediction p;
  p.ranks = ranks;
  p.comm_s = s.comm_s;
  p.exposed_s = s.exposed_s;
  p.hidden_fraction = s.hidden_fraction;
  p.step_s = profile.forward_s + profile.backward_s + s.exposed_s + profile.optimizer_s;
  const double single = profile.forward_s + profile.backward_s + profile.optimizer_s;
  p.speedup = p.step_s > 0 ? ranks * single / p.step_s : 1.0;
  p.efficiency = p.speedup / ranks;
  return p;
}

std::pair<double, double> fit_alpha_busbw(const std::vector<double>& bytes, const std::vector<double>& seconds,
                                          int ranks) {
  if (bytes.size() != seconds.size() || bytes.size() < 2 || ranks < 2)
    throw std::invalid_argument("[fit_alpha_busbw] expected >= 2 (bytes, seconds) pairs and ranks >= 2, got " +
                                std::to_string(bytes.size()) + " bytes, " + std::to_string(seconds.size()) +
                                " times, ranks " + std::to_string(ranks));
  const double n = ranks;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  const double m = static_cast<double>(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    const double x = 2.0 * (n - 1.0) / n * bytes[i];
    sx += x;
    sy += seconds[i];
    sxx += x * x;
    sxy += x * seconds[i];
  }
  const double det = m * sxx - sx * sx;
  if (!(det > 0)) throw std::invalid_argument("[fit_alpha_busbw] expected two distinct message sizes, got one");
  const double slope = (m * sxy - sx * sy) / det;  // seconds per byte on the bus
  const double alpha = (sy - slope * sx) / m;
  if (!(slope > 0))
    throw std::invalid_argument("[fit_alpha_busbw] expected time to grow with size, got slope " + std::to_string(slope));
  return {std::max(0.0, alpha) * 1e6, 1.0 / slope / 1e9};
}

}  // namespace tandem::bench
