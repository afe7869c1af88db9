// Tests of bench/scaling_model.{h,cpp}: the ring all-reduce cost, the one-channel bucket
// schedule on hand-made timelines, the measured hidden fraction, the alpha/busbw fit and
// the link presets of `tandem-bench scaling --model-links`.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "bench/scaling_model.h"

namespace tandem::bench {
namespace {

TEST(ScalingModel, RingAllReduceCostIsAlphaPlusTwoNMinusOneOverNBytesOverBusbw) {
  // 100 MB over 8 ranks at 100 GB/s with 10 us: 10e-6 + 2·7/8·1e8/1e11 = 1.76 ms.
  EXPECT_NEAR(ring_allreduce_s(1e8, 8, 100.0, 10.0), 10e-6 + 1.75e-3, 1e-12);
  // Two ranks: factor 1.
  EXPECT_NEAR(ring_allreduce_s(2e9, 2, 20.0, 0.0), 0.1, 1e-12);
  // One rank: DDP skips the collective.
  EXPECT_EQ(ring_allreduce_s(1e8, 1, 100.0, 10.0), 0.0);
  // The bandwidth term approaches 2·S/busbw as n grows.
  EXPECT_LT(ring_allreduce_s(1e9, 64, 100.0, 0.0), 2e-2);
  EXPECT_GT(ring_allreduce_s(1e9, 64, 100.0, 0.0), 1.9e-2);
}

TEST(ScalingModel, RingAllReduceRejectsBadArguments) {
  try {
    ring_allreduce_s(1.0, 0, 1.0, 0.0);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("expected ranks >= 1, got 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ring_allreduce_s(-1.0, 2, 1.0, 0.0), std::invalid_argument);
  try {
    ring_allreduce_s(1.0, 2, 0.0, 0.0);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("expected busbw_gbps > 0"), std::string::npos) << e.what();
  }
}

TEST(ScalingModel, ScheduleRunsBucketsInOrderOnOneChannel) {
  // Backward ends at 10. Bucket 0 ready at 1 (cost 4: 1..5); bucket 1 ready at 3 waits
  // for the channel (5..8); bucket 2 ready at 9 (9..12): exposed 2.
  const std::vector<BucketReady> buckets = {{100, 1.0}, {100, 3.0}, {100, 9.0}};
  const CommSchedule s = schedule_buckets(buckets, {4.0, 3.0, 3.0}, 10.0);
  ASSERT_EQ(s.start_s.size(), 3u);
  EXPECT_DOUBLE_EQ(s.start_s[0], 1.0);
  EXPECT_DOUBLE_EQ(s.done_s[0], 5.0);
  EXPECT_DOUBLE_EQ(s.start_s[1], 5.0);
  EXPECT_DOUBLE_EQ(s.done_s[1], 8.0);
  EXPECT_DOUBLE_EQ(s.start_s[2], 9.0);
  EXPECT_DOUBLE_EQ(s.done_s[2], 12.0);
  EXPECT_DOUBLE_EQ(s.comm_s, 10.0);
  EXPECT_DOUBLE_EQ(s.exposed_s, 2.0);
  // Hidden: 4 + 3 + 1 of 10.
  EXPECT_DOUBLE_EQ(s.hidden_fraction, 0.8);
}

TEST(ScalingModel, ScheduleWithOneBucketAtTheEndHidesNothing) {
  const CommSchedule s = schedule_buckets({{100, 10.0}}, {2.5}, 10.0);
  EXPECT_DOUBLE_EQ(s.exposed_s, 2.5);
  EXPECT_DOUBLE_EQ(s.hidden_fraction, 0.0);
}

TEST(ScalingModel, ScheduleFinishingBeforeBackwardEndExposesNothing) {
  const CommSchedule s = schedule_buckets({{100, 1.0}, {100, 2.0}}, {1.0, 1.0}, 10.0);
  EXPECT_DOUBLE_EQ(s.exposed_s, 0.0);
  EXPECT_DOUBLE_EQ(s.hidden_fraction, 1.0);
  // No buckets: nothing to hide, nothing exposed.
  const CommSchedule none = schedule_buckets({}, {}, 10.0);
  EXPECT_DOUBLE_EQ(none.exposed_s, 0.0);
  EXPECT_DOUBLE_EQ(none.hidden_fraction, 1.0);
}

TEST(ScalingModel, ScheduleRejectsMismatchedCosts) {
  try {
    schedule_buckets({{100, 1.0}}, {1.0, 2.0}, 10.0);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("expected one cost per bucket (1), got 2"), std::string::npos) << e.what();
  }
}

TEST(ScalingModel, MeasuredHiddenFractionCountsTheSpanBeforeBackwardEnd) {
  // Spans [1, 5] (all before 10) and [8, 12] (2 of 4 before): 6 of 8.
  EXPECT_DOUBLE_EQ(measured_hidden_fraction({1.0, 8.0}, {5.0, 12.0}, 10.0), 0.75);
  // World size 1: ready == done, nothing to hide.
  EXPECT_DOUBLE_EQ(measured_hidden_fraction({1.0}, {1.0}, 10.0), 1.0);
  EXPECT_THROW(measured_hidden_fraction({1.0}, {}, 10.0), std::invalid_argument);
}

TEST(ScalingModel, PredictionAddsExposedCommunicationToTheMeasuredCompute) {
  IterationProfile p;
  p.forward_s = 0.004;
  p.backward_s = 0.008;
  p.optimizer_s = 0.001;
  // 40 MB ready at 2 ms, 4 MB at the end of backward.
  p.buckets = {{40e6, 0.002}, {4e6, 0.008}};
  const Prediction one = predict_iteration(p, 1, 100.0, 5.0);
  EXPECT_DOUBLE_EQ(one.step_s, 0.013);
  EXPECT_DOUBLE_EQ(one.efficiency, 1.0);
  // 4 ranks at 100 GB/s: bucket 0 costs 5e-6 + 1.5·4e7/1e11 = 0.605 ms (hidden), bucket
  // 1 costs 5e-6 + 1.5·4e6/1e11 = 0.065 ms after backward: exposed 0.065 ms.
  const Prediction four = predict_iteration(p, 4, 100.0, 5.0);
  EXPECT_NEAR(four.exposed_s, 65e-6, 1e-12);
  EXPECT_NEAR(four.step_s, 0.013 + 65e-6, 1e-12);
  EXPECT_NEAR(four.efficiency, 0.013 / (0.013 + 65e-6), 1e-12);
  EXPECT_NEAR(four.speedup, 4 * four.efficiency, 1e-12);
  EXPECT_NEAR(four.hidden_fraction, 0.605 / 0.670, 1e-9);
}

TEST(ScalingModel, PredictionUsesTheReducersDeadlineWhenGiven) {
  // One bucket ready at 7 ms; finalisation starts at 8 ms, backward work ends at 9 ms.
  IterationProfile p;
  p.forward_s = 0.002;
  p.backward_s = 0.009;
  p.backward_end_s = 0.008;
  p.buckets = {{1e6, 0.007}};
  // Two ranks at 1 GB/s, no alpha: 1 ms, from 7 to 8 ms: nothing exposed.
  EXPECT_NEAR(predict_iteration(p, 2, 1.0, 0.0).exposed_s, 0.0, 1e-15);
  // 2 ms from 7 to 9 ms: 1 ms after the deadline.
  EXPECT_NEAR(predict_iteration(p, 2, 0.5, 0.0).exposed_s, 0.001, 1e-12);
  EXPECT_NEAR(predict_iteration(p, 2, 0.5, 0.0).step_s, 0.012, 1e-12);
}

TEST(ScalingModel, FitRecoversAlphaAndBusbw) {
  const double alpha_us = 30.0, busbw = 2.5;
  std::vector<double> bytes = {1e4, 1e5, 1e6, 4e6}, t;
  for (double b : bytes) t.push_back(ring_allreduce_s(b, 3, busbw, alpha_us));
  const auto [a, bw] = fit_alpha_busbw(bytes, t, 3);
  EXPECT_NEAR(a, alpha_us, 1e-6);
  EXPECT_NEAR(bw, busbw, 1e-9);
  EXPECT_THROW(fit_alpha_busbw({1e4, 1e4}, {1e-3, 1e-3}, 2), std::invalid_argument);
  EXPECT_THROW(fit_alpha_busbw({1e4}, {1e-3}, 2), std::invalid_argument);
}

TEST(ScalingModel, PresetsHoldTheDocumentedFigures) {
  EXPECT_DOUBLE_EQ(find_link_preset("nvlink4").busbw_gbps, 370.0);
  EXPECT_DOUBLE_EQ(find_link_preset("pcie5").busbw_gbps, 28.0);
  EXPECT_DOUBLE_EQ(find_link_preset("ib200").busbw_gbps, 23.0);
  for (const LinkPreset& p : link_presets()) {
    EXPECT_GT(p.alpha_us, 0.0) << p.name;
    EXPECT_LE(p.alpha_us, 10.0) << p.name;
    EXPECT_FALSE(p.source.empty()) << p.name;
  }
  try {
    find_link_preset("nvlink9");
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("(nvlink4, pcie5, ib200), got 'nvlink9'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tandem::bench
