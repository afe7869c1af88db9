// CUDA graphs: ops and a whole training step (forward, backward, capturable SGD under
// an lr schedule or AdamW, f16 with a capturable GradScaler) captured once and replayed on new data
// against the same work run eagerly; the private pool keeping the graph's memory from
// eager tensors and returning it after reset; and the errors.
// Skips without a device, and under TANDEM_CUDA_CACHING_ALLOCATOR=0 (gpu-check's
// memcheck stage), where capture is refused by design.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/graph.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/philox.h"
#include "layers/activation.h"
#include "layers/linear.h"
#include "layers/sequential.h"
#include "optim/adam.h"
#include "optim/grad_scaler.h"
#include "optim/schedule.h"
#include "optim/sgd.h"
#include "test_util.h"

namespace tandem::cuda {
namespace {

using testing::all_close;
using testing::random_indices;
using testing::random_tensor;

const Device kGpu = Device::cuda(0);

class CudaGraph : public ::testing::Test {
 protected:
  void SetUp() override {
    TANDEM_REQUIRE_CUDA();
    if (const char* v = std::getenv("TANDEM_CUDA_CACHING_ALLOCATOR"); v != nullptr && std::string(v) == "0")
      GTEST_SKIP() << "TANDEM_CUDA_CACHING_ALLOCATOR=0: graph capture needs the caching allocator";
  }
};

TEST_F(CudaGraph, ReplayRecomputesCapturedOpsOnNewInputs) {
  const Tensor w = random_tensor({16, 32}, 1, DType::kF32, kGpu), b = random_tensor({16}, 2, DType::kF32, kGpu);
  Tensor x = random_tensor({8, 32}, 3, DType::kF32, kGpu);
  autograd::NoGradGuard no_grad;
  (void)linear(x, w, b, Activation::kGelu);  // warm-up: cuBLASLt's heuristic, first allocations
  synchronize(0);

  Graph graph;
  graph.capture_begin();
  const Tensor y = linear(x, w, b, Activation::kGelu) * 2.0 + 1.0;
  graph.capture_end();
  EXPECT_TRUE(graph.captured());
  for (uint64_t seed : {4u, 5u, 6u}) {
    const Tensor xn = random_tensor({8, 32}, seed, DType::kF32);
    x.copy_(xn);
    graph.replay();
    const Tensor want = linear(xn, w.cpu(), b.cpu(), Activation::kGelu) * 2.0 + 1.0;
    EXPECT_TRUE(all_close(y.cpu(), want, 1e-5, 1e-5)) << "seed " << seed;
  }
}

std::shared_ptr<nn::Sequential> make_mlp() {
  manual_seed(11);
  auto model = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(20, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 5)});
  model->to(kGpu);
  return model;
}

/// f16 mixed precision for expect_replays_match_eager_steps: each side's scaler (both
/// capturable), and a batch whose input holds an inf (its step must be skipped).
struct Fp16Scaling {
  optim::GradScaler* eager = nullptr;
  optim::GradScaler* captured = nullptr;
  uint64_t inf_batch = 0;
};

/// Trains `eager` and `captured` (the same MLP) with their optimizers: two eager warm-up
/// steps on both (optimizer state and every first allocation exist before the capture,
/// as they must), then `replays` batches, stepped eagerly on one and by replaying a
/// captured step on the other; each replay's loss and the final parameters must agree.
/// With `fp16`, forward and loss run under f16 autocast and the steps go through the
/// scalers. `after_step` runs after each step of both (an lr schedule stepping both).
void expect_replays_match_eager_steps(nn::Module& eager, optim::Optimizer& eager_opt, nn::Module& captured,
                                      optim::Optimizer& captured_opt, int replays, const Fp16Scaling& fp16 = {},
                                      double tolerance = 1e-6, const std::function<void()>& after_step = nullptr) {
  auto batch = [&](uint64_t seed) {
    Tensor x = random_tensor({16, 20}, seed, DType::kF32, kGpu);
    if (fp16.eager != nullptr && seed == fp16.inf_batch) x.narrow(0, 3, 1).fill_(std::numeric_limits<double>::infinity());
    return std::pair{x, random_indices({16}, 5, seed + 100, kGpu)};
  };
  auto step = [](nn::Module& model, optim::Optimizer& opt, optim::GradScaler* scaler, const Tensor& x,
                 const Tensor& y) {
    opt.zero_grad();
    Tensor loss;
    {
      AutocastGuard guard(DType::kF16, scaler != nullptr);
      loss = cross_entropy(model.forward(x), y);
    }
    if (scaler == nullptr) {
      loss.backward();
      opt.step();
      return loss;
    }
    scaler->scale(loss).backward();
    scaler->step(opt);
    scaler->update();
    return loss;
  };
  for (uint64_t seed : {1u, 2u}) {
    auto [x, y] = batch(seed);
    step(eager, eager_opt, fp16.eager, x, y);
    step(captured, captured_opt, fp16.captured, x, y);
    if (after_step) after_step();
  }
  Tensor static_x = Tensor::empty({16, 20}, {.dtype = DType::kF32, .device = kGpu});
  Tensor static_y = Tensor::empty({16}, {.dtype = DType::kI64, .device = kGpu});
  captured_opt.zero_grad();  // set to none: the captured backward writes fresh gradients
  synchronize(0);
  Graph graph;
  graph.capture_begin();
  const Tensor static_loss = step(captured, captured_opt, fp16.captured, static_x, static_y);
  graph.capture_end();
  for (uint64_t seed = 3; seed < 3 + static_cast<uint64_t>(replays); ++seed) {
    auto [x, y] = batch(seed);
    static_x.copy_(x);
    static_y.copy_(y);
    graph.replay();
    const Tensor want_loss = step(eager, eager_opt, fp16.eager, x, y);
    if (after_step) after_step();
    if (fp16.eager != nullptr && seed == fp16.inf_batch) {
      // Its first layer's weight gradient holds inf·0 = NaN (the loss itself may stay
      // finite: ReLU maps NaN to 0), so both steps were skipped on the device.
      EXPECT_EQ(fp16.captured->skipped_steps(), 1) << "the inf batch";
      EXPECT_EQ(fp16.eager->skipped_steps(), 1) << "the inf batch";
      continue;
    }
    EXPECT_TRUE(all_close(static_loss.cpu(), want_loss.cpu(), tolerance, tolerance)) << "seed " << seed;
  }
  const auto pe = eager.parameters(), pc = captured.parameters();
  ASSERT_EQ(pe.size(), pc.size());
  for (size_t i = 0; i < pe.size(); ++i) EXPECT_TRUE(all_close(pc[i].cpu(), pe[i].cpu(), tolerance, tolerance)) << i;
}

TEST_F(CudaGraph, CapturedTrainingStepFollowsAnLrScheduleAcrossReplays) {
  // Capturable SGD reads its lr from the device: the schedule, stepped between replays,
  // writes it there, so every replay uses the lr of its own step.
  auto eager = make_mlp(), captured = make_mlp();
  const optim::SGDOptions options{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-4, .capturable = true};
  optim::SGD eager_opt(eager->parameters(), options), captured_opt(captured->parameters(), options);
  optim::StepLR eager_schedule(eager_opt, 2, 0.5), captured_schedule(captured_opt, 2, 0.5);
  expect_replays_match_eager_steps(*eager, eager_opt, *captured, captured_opt, 5, {}, 1e-6, [&] {
    eager_schedule.step();
    captured_schedule.step();
  });
  EXPECT_EQ(captured_opt.lr(), 0.1 * 0.125);
}

TEST_F(CudaGraph, OptimizerStepsThatCannotReplayAreRefusedInACapture) {
  auto model = make_mlp();
  const Tensor x = random_tensor({16, 20}, 1, DType::kF32, kGpu);
  const Tensor y = random_indices({16}, 5, 2, kGpu);
  auto capture_step = [&](optim::Optimizer& opt, const std::function<void()>& inside) {
    opt.zero_grad();
    synchronize(0);
    Graph graph;
    graph.capture_begin();
    cross_entropy(model->forward(x), y).backward();
    try {
      inside();
    } catch (...) {
      // Nothing illegal was queued: the capture ends cleanly and is thrown away.
      graph.capture_end();
      throw;
    }
    graph.capture_end();
  };
  // Not capturable: its lr and first-step decisions would be fixed in the graph.
  optim::SGD plain(model->parameters(), {.lr = 0.1, .momentum = 0.9});
  testing::expect_logic_error([&] { capture_step(plain, [&] { plain.step(); }); },
                              {"capturable = true", "CUDA-graph capture"});
  // Capturable, but no parameter has stepped: its state would be made at every replay.
  optim::AdamW adamw(model->parameters(), {.lr = 1e-2, .capturable = true});
  testing::expect_logic_error([&] { capture_step(adamw, [&] { adamw.step(); }); },
                              {"stepped once before a CUDA-graph capture", "parameter 0"});
  // After an eager step it captures; the lr changes between replays, not inside one.
  adamw.zero_grad();
  cross_entropy(model->forward(x), y).backward();
  adamw.step();
  testing::expect_logic_error([&] { capture_step(adamw, [&] { adamw.set_lr(0.5); }); },
                              {"set_group_lr", "between replays"});
  capture_step(adamw, [&] { adamw.step(); });
}

TEST_F(CudaGraph, CapturedAdamWStepCountsOnAcrossReplays) {
  // Capturable AdamW: the step counts live on the device, so each replay applies the
  // bias corrections of its own step, as the eager steps do.
  auto eager = make_mlp(), captured = make_mlp();
  const optim::AdamWOptions options{.lr = 1e-2, .betas = {0.9, 0.95}, .weight_decay = 0.1, .capturable = true};
  optim::AdamW eager_opt(eager->parameters(), options), captured_opt(captured->parameters(), options);
  expect_replays_match_eager_steps(*eager, eager_opt, *captured, captured_opt, 5);
  EXPECT_EQ(captured_opt.param_step(0), 7);
}

TEST_F(CudaGraph, CapturedFp16StepWithCapturableScalerSkipsOnTheDevice) {
  // f16 autocast with a capturable GradScaler and capturable SGD: the scale, the inf
  // check, the skip and the scale update all happen on the device, so one replay (the
  // batch holding an inf) skips its step and backs the scale off exactly as the eager
  // steps do, and the next replays unscale by the new scale.
  auto eager = make_mlp(), captured = make_mlp();
  const optim::SGDOptions options{.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .capturable = true};
  optim::SGD eager_opt(eager->parameters(), options), captured_opt(captured->parameters(), options);
  optim::GradScaler eager_scaler({.growth_interval = 2, .capturable = true});
  optim::GradScaler captured_scaler({.growth_interval = 2, .capturable = true});
  expect_replays_match_eager_steps(*eager, eager_opt, *captured, captured_opt, 6,
                                   {.eager = &eager_scaler, .captured = &captured_scaler, .inf_batch = 5}, 1e-3);
  EXPECT_EQ(captured_scaler.skipped_steps(), 1);
  EXPECT_EQ(captured_scaler.get_scale(), eager_scaler.get_scale());
  EXPECT_EQ(captured_scaler.growth_tracker(), eager_scaler.growth_tracker());
}

TEST_F(CudaGraph, DropoutDrawsFreshMasksOnEveryReplay) {
  // Dropout inside a graph: each replay reserves the capture's blocks from the device's
  // generator and draws from there, so replay r equals the same dropout run on the CPU
  // from the generator state replay r started at (the kernels are bit-identical).
  const Tensor x = random_tensor({1000}, 12, DType::kF32, kGpu);
  Generator& gen = default_generator(kGpu);
  gen.set_state({.seed = 1234, .offset = 50});
  synchronize(0);
  Graph graph;
  Tensor y;
  {
    autograd::NoGradGuard no_grad;
    graph.capture_begin();
    y = dropout(x, 0.3, /*training=*/true);
    graph.capture_end();
  }
  EXPECT_EQ(graph.random_blocks(), kernels::philox_blocks(1000));
  EXPECT_EQ(gen.state().offset, 50u) << "the capture drew nothing from the real state";
  Tensor previous;
  for (int r = 0; r < 3; ++r) {
    const uint64_t offset = gen.state().offset;
    graph.replay();
    Generator cpu_gen(0);
    cpu_gen.set_state({.seed = 1234, .offset = offset});
    const Tensor want = dropout(x.cpu(), 0.3, true, &cpu_gen);
    const Tensor got = y.cpu();
    EXPECT_TRUE(all_close(got, want, 0, 0)) << "replay " << r;
    if (previous.defined()) {
      EXPECT_FALSE(all_close(got, previous, 0, 0)) << "replay " << r << " repeated a mask";
    }
    previous = got;
  }
  EXPECT_EQ(gen.state().offset, 50u + 3 * kernels::philox_blocks(1000));
}

TEST_F(CudaGraph, PrivatePoolKeepsGraphMemoryAndReturnsItAfterReset) {
  Tensor x = random_tensor({1 << 20}, 7, DType::kF32, kGpu);
  synchronize(0);
  auto graph = std::make_unique<Graph>();
  graph->capture_begin();
  Tensor doubled = x * 2.0;
  Tensor scratch = doubled + 1.0;  // freed inside the capture, reused by the next op
  scratch = Tensor();
  Tensor out = doubled * 3.0;
  graph->capture_end();
  doubled = Tensor();

  // Eager tensors made now must not land on the graph's memory, free or not.
  Tensor eager = random_tensor({1 << 20}, 8, DType::kF32, kGpu);
  const Tensor eager_before = eager.cpu();
  graph->replay();
  EXPECT_TRUE(all_close(eager.cpu(), eager_before, 0, 0));
  EXPECT_TRUE(all_close(out.cpu(), x.cpu() * 6.0, 1e-6, 1e-6));

  const int64_t reserved = memory_stats(0).reserved_bytes;
  graph->reset();
  out = Tensor();  // the last tensor allocated in the capture
  EXPECT_LT(memory_stats(0).reserved_bytes, reserved) << "the pool's segments go back once the graph and its "
                                                         "tensors are gone";
}

TEST_F(CudaGraph, MisuseAndIllegalCapturesAreReported) {
  Graph graph;
  EXPECT_THROW(graph.replay(), std::logic_error);
  EXPECT_THROW(graph.capture_end(), std::logic_error);
  Tensor x = random_tensor({64}, 9, DType::kF32, kGpu);
  synchronize(0);
  graph.capture_begin();
  EXPECT_THROW(graph.capture_begin(), std::logic_error);
  // Reading a value to the host synchronises: illegal in a capture, which it invalidates.
  EXPECT_THROW((void)x.sum().item(), std::runtime_error);
  EXPECT_THROW(graph.capture_end(), std::runtime_error);
  EXPECT_FALSE(graph.captured());
  graph.reset();
  // The stream and the graph work again afterwards.
  graph.capture_begin();
  Tensor y = x + 1.0;
  graph.capture_end();
  graph.replay();
  EXPECT_TRUE(all_close(y.cpu(), x.cpu() + 1.0, 0, 0));
}

}  // namespace
}  // namespace tandem::cuda
