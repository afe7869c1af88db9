// Tests of bench/emulated_device.{h,cpp}, the emulated accelerator of
// `tandem-bench scaling --emulate-step-ms`: it holds the real model's parameters, its
// forward and backward take at least their share of the step, its gradients arrive one
// parameter at a time in reverse order with the parameters' shapes, and DDP over it
// forms the real model's buckets.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/emulated_device.h"
#include "comm/ddp.h"
#include "comm/local.h"
#include "engine/ops.h"
#include "layers/models/cnn.h"
#include "layers/models/mlp.h"

namespace tandem::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::shared_ptr<nn::Module> small_cnn() {
  manual_seed(3);
  return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = 1, .image_size = 28});
}

TEST(EmulatedDevice, HoldsTheRealModelsParametersInOrder) {
  auto real = small_cnn();
  EmulatedDeviceModel emulated(*real, EmulatedStep{10.0});
  const auto want = real->named_parameters();
  const auto got = emulated.named_parameters();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    std::string flat = want[i].first;
    std::replace(flat.begin(), flat.end(), '.', '_');
    EXPECT_EQ(got[i].first, flat);
    EXPECT_EQ(got[i].second.shape(), want[i].second.shape());
    EXPECT_EQ(got[i].second.dtype(), want[i].second.dtype());
    EXPECT_TRUE(got[i].second.requires_grad());
    EXPECT_EQ(got[i].second.to_vector<float>(), want[i].second.to_vector<float>()) << want[i].first;
  }
  EXPECT_EQ(emulated.num_parameters(), real->num_parameters());
}

TEST(EmulatedDevice, ForwardAndBackwardTakeTheirSharesAndGradientsArriveInReverseOrder) {
  auto real = small_cnn();
  const EmulatedStep step{40.0};  // forward 12 ms, backward 24 ms
  EmulatedDeviceModel emulated(*real, step);
  std::vector<Tensor> params = emulated.parameters();
  std::vector<size_t> arrival;
  for (size_t i = 0; i < params.size(); ++i)
    params[i].register_post_accumulate_grad_hook([&arrival, i](Tensor&) { arrival.push_back(i); });

  const Tensor x = randn({5, 1, 28, 28});
  auto t0 = Clock::now();
  Tensor logits = emulated(x);
  const double forward_s = seconds_since(t0);
  EXPECT_EQ(logits.shape(), (Shape{5, 10}));
  EXPECT_GE(forward_s, step.step_ms * step.forward_share * 1e-3);

  Tensor loss = cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4}, {5}));
  t0 = Clock::now();
  loss.backward();
  const double backward_s = seconds_since(t0);
  EXPECT_GE(backward_s, step.step_ms * step.backward_share * 1e-3);

  ASSERT_EQ(arrival.size(), params.size());
  for (size_t k = 0; k < arrival.size(); ++k) EXPECT_EQ(arrival[k], params.size() - 1 - k);
  for (const Tensor& p : params) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().shape(), p.shape());
  }
}

TEST(EmulatedDevice, OptimizerWaitsItsShareAndLeavesParametersAlone) {
  auto real = small_cnn();
  EmulatedDeviceModel emulated(*real, EmulatedStep{50.0});
  EmulatedOptimizer optimizer(emulated.parameters(), EmulatedStep{50.0});
  const std::vector<float> before = emulated.parameters()[0].to_vector<float>();
  cross_entropy(emulated(randn({2, 1, 28, 28})), Tensor::from_vector(std::vector<int64_t>{1, 2}, {2})).backward();
  const auto t0 = Clock::now();
  optimizer.step();
  EXPECT_GE(seconds_since(t0), 5e-3);
  EXPECT_EQ(emulated.parameters()[0].to_vector<float>(), before);
  optimizer.zero_grad();
  EXPECT_FALSE(emulated.parameters()[0].grad().defined());
}

TEST(EmulatedDevice, DdpFormsTheRealModelsBuckets) {
  // Same parameters in the same order: the same bucket layout, and a full iteration
  // (hooks, bucket all-reduces, finalisation) runs at world size 1.
  manual_seed(5);
  auto real = std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 784, .hidden = {256, 128}, .out = 10});
  auto emulated = std::make_shared<EmulatedDeviceModel>(*real, EmulatedStep{5.0});
  const comm::DDPOptions options{.bucket_cap_mb = 0.25, .first_bucket_cap_mb = 0.1};
  comm::DistributedDataParallel ddp_real(real, comm::make_local_group(1)[0], options);
  comm::DistributedDataParallel ddp_emulated(emulated, comm::make_local_group(1)[0], options);
  ASSERT_EQ(ddp_emulated.buckets().size(), ddp_real.buckets().size());
  for (size_t b = 0; b < ddp_real.buckets().size(); ++b)
    EXPECT_EQ(ddp_emulated.buckets()[b].nbytes, ddp_real.buckets()[b].nbytes) << "bucket " << b;
  cross_entropy(ddp_emulated(randn({4, 784})), Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3}, {4})).backward();
  EXPECT_EQ(ddp_emulated.last_iteration_stats().timeline.size(), ddp_real.buckets().size());
}

TEST(EmulatedDevice, RejectsBadStepsAndModelsWithoutParameters) {
  auto real = small_cnn();
  for (const EmulatedStep& bad : {EmulatedStep{0.0}, EmulatedStep{-1.0}, EmulatedStep{10.0, 0.5, 0.5, 0.5},
                                  EmulatedStep{10.0, -0.1, 0.6, 0.1}}) {
    try {
      EmulatedDeviceModel m(*real, bad);
      FAIL() << "expected std::invalid_argument";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("expected step_ms > 0"), std::string::npos) << e.what();
    }
    EXPECT_THROW(EmulatedOptimizer(real->parameters(), bad), std::invalid_argument);
  }
  struct NoParameters : nn::Module {};
  try {
    EmulatedDeviceModel m(NoParameters{}, EmulatedStep{10.0});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("expected a model with parameters, got none"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tandem::bench
