// Activation checkpointing (layers/checkpoint.h): checkpointed forward/backward gives
// bit-for-bit the gradients of the plain graph on CPU (dropout included), nested
// regions, the generator and buffer bookkeeping, DDP over the local backend, errors,
// and the host-allocator peak of a 16-layer MLP.
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "comm/local.h"
#include "ddp_test_support.h"
#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/storage.h"
#include "layers/activation.h"
#include "layers/checkpoint.h"
#include "layers/dropout.h"
#include "layers/linear.h"
#include "layers/models/gpt.h"
#include "layers/models/mlp.h"
#include "layers/norm.h"
#include "layers/sequential.h"
#include "checkpoint_test_support.h"
#include "test_util.h"

namespace tandem::nn {
namespace {

using tandem::testing::all_close;
using tandem::testing::random_tensor;

using namespace checkpoint_test;

struct Grads {
  Tensor out, input_grad;
  std::vector<Tensor> params;
  PhiloxState generator_after;
};

// One forward/backward from a fixed generator state; every gradient is cloned.
Grads run(Module& model, const std::vector<Tensor>& params, const Tensor& x_data, bool input_grad) {
  for (Tensor p : params) p.set_grad(Tensor());
  manual_seed(1234);
  Tensor x = x_data.detach().clone();
  if (input_grad) x.set_requires_grad(true);
  Tensor out = model.forward(x);
  sum(mul(out, out)).backward();
  Grads g;
  g.out = out.detach();
  if (input_grad) g.input_grad = x.grad().clone();
  for (const Tensor& p : params) g.params.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
  g.generator_after = default_generator(Device::cpu()).state();
  return g;
}

void expect_identical(const Grads& got, const Grads& want) {
  EXPECT_TRUE(all_close(got.out, want.out, 0.0, 0.0)) << "output";
  if (want.input_grad.defined()) {
    EXPECT_TRUE(all_close(got.input_grad, want.input_grad, 0.0, 0.0)) << "input grad";
  }
  ASSERT_EQ(got.params.size(), want.params.size());
  for (size_t i = 0; i < want.params.size(); ++i) {
    ASSERT_TRUE(got.params[i].defined()) << "parameter " << i << " got no gradient";
    EXPECT_TRUE(all_close(got.params[i], want.params[i], 0.0, 0.0)) << "parameter " << i;
  }
  EXPECT_EQ(got.generator_after.seed, want.generator_after.seed);
  EXPECT_EQ(got.generator_after.offset, want.generator_after.offset);
}

void check_blocks_match_plain(double p, size_t per_block, bool input_grad) {
  auto layers = mlp_layers(4, 24, p, 5);
  auto plain = plain_of(layers);
  auto ckpt = blocks_of(layers, per_block);
  auto params = plain->parameters();
  Tensor x = random_tensor({16, 24}, 9, DType::kF32);
  Grads want = run(*plain, params, x, input_grad);
  Grads got = run(*ckpt, params, x, input_grad);
  expect_identical(got, want);
}

// ---- gradients equal the plain graph's, bit for bit ---------------------------------------

TEST(ActivationCheckpoint, BlocksGiveBitIdenticalGradients) { check_blocks_match_plain(0.0, 2, true); }

TEST(ActivationCheckpoint, EveryLayerCheckpointedGivesBitIdenticalGradients) {
  check_blocks_match_plain(0.0, 1, true);
}

TEST(ActivationCheckpoint, DropoutMasksAreReplayedExactly) {
  check_blocks_match_plain(0.3, 3, true);
  check_blocks_match_plain(0.5, 1, true);
}

TEST(ActivationCheckpoint, FirstRegionWhoseInputNeedsNoGradStillTrainsItsParameters) {
  // The batch does not require grad: the parameters alone make the region recorded.
  check_blocks_match_plain(0.2, 3, false);
}

TEST(ActivationCheckpoint, NestedRegionsGiveBitIdenticalGradients) {
  auto layers = mlp_layers(4, 16, 0.25, 6);
  auto plain = plain_of(layers);
  // Two outer regions, each made of checkpointed inner regions.
  auto outer = std::make_shared<Sequential>();
  outer->push_back(std::make_shared<Checkpointed>(blocks_of({layers.begin(), layers.begin() + 6}, 3)));
  outer->push_back(std::make_shared<Checkpointed>(blocks_of({layers.begin() + 6, layers.end()}, 2)));
  auto params = plain->parameters();
  ASSERT_EQ(outer->parameters().size(), params.size());
  Tensor x = random_tensor({8, 16}, 10, DType::kF32);
  expect_identical(run(*outer, params, x, true), run(*plain, params, x, true));
}

TEST(ActivationCheckpoint, ResidualRegionAndRetainedGraph) {
  // y = x + block(x): x is used inside and outside the region. A second backward over
  // a retained graph recomputes again and doubles every gradient, as the plain graph.
  manual_seed(3);
  auto block = plain_of({std::make_shared<Linear>(8, 8), std::make_shared<Tanh>(), std::make_shared<Linear>(8, 8)});
  auto ck = std::make_shared<Checkpointed>(block);
  auto params = block->parameters();
  Tensor data = random_tensor({5, 8}, 11, DType::kF64);
  block->to(DType::kF64);
  auto pass = [&](Module& m) {
    for (Tensor p : params) p.set_grad(Tensor());
    Tensor x = data.clone().set_requires_grad(true);
    Tensor loss = sum(exp(add(x, m.forward(x))));
    loss.backward(Tensor(), /*retain_graph=*/true);
    loss.backward();
    std::vector<Tensor> g{x.grad().clone()};
    for (const Tensor& p : params) g.push_back(p.grad().clone());
    return g;
  };
  auto want = pass(*block);
  auto got = pass(*ck);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(all_close(got[i], want[i], 0.0, 0.0)) << i;
}

TEST(ActivationCheckpoint, RecomputationReplaysTheForwardsAutocastState) {
  // Forward under bf16 autocast, backward outside it (the usual loop): the recomputation
  // must run in bf16 again, or its graph would not be the forward's.
  auto layers = mlp_layers(3, 16, 0.0, 8);
  auto plain = plain_of(layers);
  auto ckpt = blocks_of(layers, 2);
  auto params = plain->parameters();
  Tensor data = random_tensor({8, 16}, 18, DType::kF32);
  auto pass = [&](Module& m) {
    for (Tensor p : params) p.set_grad(Tensor());
    Tensor x = data.clone().set_requires_grad(true);
    Tensor loss;
    {
      AutocastGuard autocast(DType::kBF16);
      loss = sum(m.forward(x));
    }
    loss.backward();
    std::vector<Tensor> g{x.grad().clone()};
    for (const Tensor& p : params) g.push_back(p.grad().clone());
    return g;
  };
  auto want = pass(*plain);
  auto got = pass(*ckpt);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].dtype(), DType::kF32) << i;
    EXPECT_TRUE(all_close(got[i], want[i], 0.0, 0.0)) << i;
  }
}

// ---- the function form ------------------------------------------------------------------------

TEST(ActivationCheckpoint, FunctionWithSeveralInputsAndOutputs) {
  // Outputs: a differentiable one, one the loss ignores, indices (no history), and an
  // input returned as it is. Input b needs no gradient.
  Tensor a_data = random_tensor({4, 6}, 1), b = random_tensor({4, 6}, 2), w_data = random_tensor({6, 6}, 3);
  auto fn = [](const Tensor& a, const Tensor& bb, const Tensor& w) {
    Tensor h = tanh(matmul(a, w));
    return std::vector<Tensor>{mul(h, bb), exp(h), argmax(h, 1), a};
  };
  auto loss_of = [](const std::vector<Tensor>& o) { return add(sum(o[0]), sum(mul(o[3], o[3]))); };

  Tensor a1 = a_data.clone().set_requires_grad(true), w1 = w_data.clone().set_requires_grad(true);
  loss_of(fn(a1, b, w1)).backward();

  Tensor a2 = a_data.clone().set_requires_grad(true), w2 = w_data.clone().set_requires_grad(true);
  std::vector<Tensor> outs = checkpoint(
      [&](const std::vector<Tensor>& in) { return fn(in[0], in[1], w2); }, {a2, b}, {w2});
  ASSERT_EQ(outs.size(), 4u);
  EXPECT_TRUE(outs[0].requires_grad());
  EXPECT_EQ(outs[2].dtype(), DType::kI64);
  EXPECT_FALSE(outs[2].requires_grad());
  EXPECT_FALSE(outs[3].is_same(a2)) << "an input returned as an output must get a new handle";
  EXPECT_TRUE(a2.is_leaf());
  loss_of(outs).backward();
  EXPECT_TRUE(all_close(a2.grad(), a1.grad(), 0.0, 0.0));
  EXPECT_TRUE(all_close(w2.grad(), w1.grad(), 0.0, 0.0));
  EXPECT_FALSE(b.grad().defined());
}

TEST(ActivationCheckpoint, GradcheckThroughTheRegion) {
  auto f = [](const std::vector<Tensor>& in) {
    const Tensor& w = in[1];
    return checkpoint([w](const Tensor& x) { return tanh(matmul(x, w)); }, in[0], {w});
  };
  EXPECT_TRUE(tandem::testing::gradcheck(
      f, {random_tensor({2, 3}, 5).set_requires_grad(true), random_tensor({3, 3}, 4).set_requires_grad(true)}));
}

TEST(ActivationCheckpoint, EvaluationAndNoGradJustCallTheFunction) {
  int calls = 0;
  Tensor w = random_tensor({3, 3}, 6).set_requires_grad(true);
  auto fn = [&](const Tensor& x) {
    ++calls;
    return matmul(x, w);
  };
  Tensor x = random_tensor({2, 3}, 7);
  {
    autograd::NoGradGuard no_grad;
    Tensor y = checkpoint(fn, x, {w});
    EXPECT_FALSE(y.requires_grad());
  }
  // Nothing listed needs grad: a plain call, whose graph reaches the unlisted w.
  Tensor y = checkpoint(fn, x);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_NE(y.grad_fn()->name(), "checkpoint");
  EXPECT_EQ(calls, 2);
  // Recorded: one forward now, one recomputation in backward.
  Tensor z = checkpoint(fn, x, {w});
  EXPECT_EQ(z.grad_fn()->name(), "checkpoint");
  EXPECT_EQ(calls, 3);
  sum(z).backward();
  EXPECT_EQ(calls, 4);
  EXPECT_TRUE(w.grad().defined());
}

TEST(ActivationCheckpoint, RegionKeepsOnlyItsInputs) {
  // Intermediates die with the forward: the output's graph holds the input, no more.
  Tensor w = random_tensor({64, 64}, 8, DType::kF32).set_requires_grad(true);
  Tensor x = random_tensor({64, 64}, 9, DType::kF32).set_requires_grad(true);
  reset_host_peak_memory_stats();
  const int64_t before = host_memory_stats().allocated_bytes;
  Tensor y = checkpoint([&](const Tensor& in) { return tanh(tanh(tanh(matmul(in, w)))); }, x, {w});
  const int64_t kept = host_memory_stats().allocated_bytes - before;
  EXPECT_EQ(kept, static_cast<int64_t>(y.nbytes())) << "only the output is new; got " << format_bytes(kept);
}

TEST(ActivationCheckpoint, GeneratorEndsWhereTheForwardLeftIt) {
  Tensor x = random_tensor({32}, 12, DType::kF32).set_requires_grad(true);
  manual_seed(77);
  Tensor y = checkpoint([](const Tensor& in) { return dropout(in, 0.5); }, x);
  const PhiloxState after_forward = default_generator(Device::cpu()).state();
  Tensor later = dropout(random_tensor({8}, 13, DType::kF32), 0.5);  // draws between forward and backward
  const PhiloxState before_backward = default_generator(Device::cpu()).state();
  sum(y).backward();
  const PhiloxState after_backward = default_generator(Device::cpu()).state();
  EXPECT_GT(after_forward.offset, 0u);
  EXPECT_EQ(after_backward.offset, before_backward.offset);
  EXPECT_EQ(after_backward.seed, before_backward.seed);
  // The gradient is the forward's mask times the scale.
  EXPECT_TRUE(all_close(x.grad(), div(y.detach(), x.detach()), 1e-6, 1e-6));
}

TEST(ActivationCheckpoint, NonDeterministicFunctionIsReported) {
  int calls = 0;
  Tensor x = random_tensor({4}, 14).set_requires_grad(true);
  auto outs = checkpoint(
      [&](const std::vector<Tensor>& in) {
        ++calls;
        if (calls == 1) return std::vector<Tensor>{exp(in[0])};
        return std::vector<Tensor>{exp(in[0]), exp(in[0])};
      },
      {x});
  try {
    sum(outs[0]).backward();
    FAIL() << "expected std::logic_error";
  } catch (const std::logic_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("[checkpoint] expected the recomputation to return 1 outputs"), std::string::npos) << msg;
    EXPECT_NE(msg.find("got 2"), std::string::npos) << msg;
  }
}

TEST(ActivationCheckpoint, EmptyFunctionAndNullModuleAreRejected) {
  tandem::testing::expect_invalid([] { checkpoint(CheckpointFn(), {Tensor()}); },
                                  {"[checkpoint] expected a function", "empty std::function"});
  tandem::testing::expect_invalid([] { checkpoint(std::function<Tensor(const Tensor&)>(), Tensor()); },
                                  {"[checkpoint] expected a function", "empty std::function"});
  tandem::testing::expect_invalid([] { Checkpointed c(nullptr); }, {"[Checkpointed] expected a module", "got null"});
}

// ---- the Checkpointed wrapper -------------------------------------------------------------------

TEST(Checkpointed, StateDictAndParametersAreTheWrappedModules) {
  manual_seed(1);
  auto inner = plain_of({std::make_shared<Linear>(4, 6), std::make_shared<BatchNorm1d>(6), std::make_shared<ReLU>()});
  auto wrapped = std::make_shared<Checkpointed>(inner);
  auto want = inner->state_dict(), got = wrapped->state_dict();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_TRUE(got[i].second.storage() == want[i].second.storage()) << want[i].first;
  }
  auto params = wrapped->parameters(), inner_params = inner->parameters();
  ASSERT_EQ(params.size(), inner_params.size());
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(params[i].is_same(inner_params[i]));

  // A leaf module: its own tensors sit at the top level.
  auto lin = std::make_shared<Linear>(3, 2);
  Checkpointed cl(lin);
  EXPECT_EQ(cl.named_parameters()[0].first, "weight");
  EXPECT_TRUE(cl.named_parameters()[0].second.is_same(lin->named_parameters()[0].second));

  // Moves and mode changes reach the wrapped module's own tensors and flags.
  Checkpointed bn_wrapper(std::make_shared<BatchNorm1d>(3));
  bn_wrapper.to(DType::kF64);
  for (auto& [name, t] : bn_wrapper.module()->named_buffers())
    if (is_floating(t.dtype())) {
      EXPECT_EQ(t.dtype(), DType::kF64) << name;
    }
  bn_wrapper.eval();
  EXPECT_FALSE(bn_wrapper.module()->is_training());

  // Loading through the wrapper writes the wrapped module's tensors.
  nn::StateDict sd = inner->state_dict();
  nn::StateDict changed;
  for (auto& [name, t] : sd) {
    Tensor bumped = add(t.to(DType::kF64), scalar_tensor(1.0, {.dtype = DType::kF64}));
    changed.emplace_back(name, bumped.to(t.dtype()));
  }
  wrapped->load_state_dict(changed);
  auto after = inner->state_dict();
  for (size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(all_close(after[i].second, changed[i].second, 0.0, 0.0));

  auto copy = wrapped->clone();
  EXPECT_EQ(copy->name(), "Checkpointed");
  EXPECT_EQ(copy->state_dict().size(), want.size());
  EXPECT_FALSE(copy->parameters()[0].is_same(params[0]));
}

TEST(Checkpointed, BatchNormRunningStatisticsUpdateOncePerForward) {
  manual_seed(2);
  auto make = [] {
    return plain_of({std::make_shared<Linear>(5, 7), std::make_shared<BatchNorm1d>(7), std::make_shared<ReLU>()});
  };
  auto plain = make();
  auto base = make();
  base->load_state_dict(plain->state_dict());
  auto ck = std::make_shared<Checkpointed>(base);
  Tensor x = random_tensor({6, 5}, 15, DType::kF32);
  for (int step = 0; step < 2; ++step) {
    sum(plain->forward(x)).backward();
    sum(ck->forward(x)).backward();
  }
  auto want = plain->state_dict(), got = ck->state_dict();
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_TRUE(all_close(got[i].second, want[i].second, 0.0, 0.0)) << want[i].first;
  auto pw = plain->parameters(), pg = ck->parameters();
  for (size_t i = 0; i < pw.size(); ++i) EXPECT_TRUE(all_close(pg[i].grad(), pw[i].grad(), 0.0, 0.0)) << i;
}

// ---- Sequential::set_checkpoint_segments --------------------------------------------------------

TEST(SequentialSegments, GiveBitIdenticalGradientsAndKeepTheKeys) {
  for (int segments : {1, 2, 3, 13}) {
    SCOPED_TRACE("segments " + std::to_string(segments));
    auto layers = mlp_layers(4, 20, 0.3, 23);  // 13 children
    auto plain = plain_of(layers);
    auto ckpt = plain_of(layers);  // the same layer objects
    auto want_keys = plain->state_dict();
    ckpt->set_checkpoint_segments(segments);
    EXPECT_EQ(ckpt->checkpoint_segments(), segments);
    auto got_keys = ckpt->state_dict();
    ASSERT_EQ(got_keys.size(), want_keys.size());
    for (size_t i = 0; i < want_keys.size(); ++i) EXPECT_EQ(got_keys[i].first, want_keys[i].first);
    auto params = plain->parameters();
    Tensor x = random_tensor({12, 20}, 24, DType::kF32);
    expect_identical(run(*ckpt, params, x, false), run(*plain, params, x, false));
  }
}

TEST(SequentialSegments, MLPModelKeepsItsStateDictAndModes) {
  auto mlp = std::make_shared<models::MLP>(models::MLPOptions{.in = 6, .hidden = {8, 8}, .out = 3});
  auto want = mlp->state_dict();
  mlp->set_checkpoint_segments(2);
  auto got = mlp->state_dict();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i].first, want[i].first);
  mlp->eval();
  EXPECT_FALSE(mlp->is_training());
  mlp->set_checkpoint_segments(0);
  EXPECT_EQ(mlp->checkpoint_segments(), 0);
}

TEST(SequentialSegments, TheTrainersRuleForModels) {
  auto mlp = std::make_shared<models::MLP>(models::MLPOptions{.in = 6, .hidden = {8, 8}, .out = 3});  // 5 layers
  EXPECT_EQ(enable_grad_checkpointing(*mlp), 2);
  EXPECT_EQ(mlp->checkpoint_segments(), 2);
  // Not a Sequential: each Sequential child one segment per block; here none.
  Linear plain(3, 3);
  EXPECT_EQ(enable_grad_checkpointing(plain), 0);
  // A GPT's blocks sit under a ModuleDict (transformer.h): one segment per block.
  models::GPT gpt({.vocab_size = 7, .block_size = 4, .n_layer = 3, .n_head = 1, .n_embd = 4});
  EXPECT_EQ(enable_grad_checkpointing(gpt), 3);
  EXPECT_EQ(gpt.blocks()->checkpoint_segments(), 3);
}

TEST(SequentialSegments, SegmentCountIsChecked) {
  auto seq = plain_of({std::make_shared<ReLU>(), std::make_shared<ReLU>()});
  tandem::testing::expect_invalid([&] { seq->set_checkpoint_segments(-1); },
                                  {"[Sequential] checkpoint segments", "expected >= 0", "got -1"});
  seq->set_checkpoint_segments(5);
  EXPECT_EQ(seq->checkpoint_segments(), 2);
}

// ---- nested backward and end-of-backward callbacks ------------------------------------------------

TEST(ActivationCheckpoint, CallbacksQueuedInTheRecomputationRunAfterTheOuterBackward) {
  // A hook queues a callback from inside the nested backward; it must run once the
  // outer pass has finished every node (after the input's gradient arrived).
  Tensor w = random_tensor({3, 3}, 16).set_requires_grad(true);
  Tensor x = random_tensor({2, 3}, 17).set_requires_grad(true);
  std::vector<std::string> events;
  w.register_post_accumulate_grad_hook([&](const Tensor&) {
    events.push_back("w");
    autograd::queue_callback([&] { events.push_back("callback"); });
  });
  x.register_post_accumulate_grad_hook([&](const Tensor&) { events.push_back("x"); });
  Tensor y = checkpoint([&](const Tensor& in) { return matmul(in, w); }, x, {w});
  sum(y).backward();
  EXPECT_EQ(events, (std::vector<std::string>{"w", "x", "callback"}));
}

// ---- DDP ------------------------------------------------------------------------------------------

namespace ddp = tandem::comm::ddp_test;

// The test MLP (Flatten, Linear, ReLU, ...) with every layer checkpointed; its state-dict
// keys are the plain MLP's.
std::shared_ptr<Module> checkpointed_mlp(uint64_t seed) {
  auto mlp = std::dynamic_pointer_cast<Sequential>(ddp::make_model(ddp::Kind::kMLP, seed));
  auto s = std::make_shared<Sequential>();
  for (const auto& m : *mlp) s->push_back(std::make_shared<Checkpointed>(m));
  return s;
}

std::vector<std::vector<std::pair<std::string, Tensor>>> ddp_states(bool checkpointed, comm::DDPOptions options) {
  const int world = 2;
  std::vector<std::shared_ptr<Module>> models;
  for (int r = 0; r < world; ++r) {
    const uint64_t seed = ddp::rank_seed(r);
    models.push_back(checkpointed ? checkpointed_mlp(seed) : ddp::make_model(ddp::Kind::kMLP, seed));
  }
  auto groups = comm::make_local_group(world);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(world);
  tandem::testing::run_ranks(world, [&](int r) {
    const auto k = static_cast<size_t>(r);
    got[k] = ddp::ddp_train(ddp::Kind::kMLP, models[k], groups[k], options);
  });
  return got;
}

void check_ddp(comm::DDPOptions options) {
  auto plain = ddp_states(false, options);
  auto ckpt = ddp_states(true, options);
  auto want = ddp::reference(ddp::Kind::kMLP, 2, false);
  for (size_t r = 0; r < 2; ++r) {
    ASSERT_EQ(ckpt[r].size(), plain[r].size());
    for (size_t i = 0; i < plain[r].size(); ++i) {
      EXPECT_EQ(ckpt[r][i].first, plain[r][i].first);
      EXPECT_TRUE(all_close(ckpt[r][i].second, plain[r][i].second, 0.0, 0.0))
          << "rank " << r << " " << plain[r][i].first << ": checkpointed DDP differs from plain DDP";
    }
    ddp::expect_same_state(ckpt[r], want, "checkpointed DDP rank " + std::to_string(r));
  }
}

TEST(ActivationCheckpointDDP, MatchesPlainDDPBitForBitAndOneProcess) { check_ddp({}); }

TEST(ActivationCheckpointDDP, WithTinyBucketsAndFindUnusedParameters) {
  check_ddp({.bucket_cap_mb = 400.0 / (1 << 20), .first_bucket_cap_mb = 100.0 / (1 << 20),
             .find_unused_parameters = true});
}

TEST(ActivationCheckpointDDP, WithStaticGraph) { check_ddp({.static_graph = true}); }

// ---- memory -------------------------------------------------------------------------------------

struct PeakRun {
  int64_t peak_over_baseline = 0;
  double seconds = 0.0;
};

// One steady-state training step (gradients already allocated, zeroed in place), its
// host-allocator peak above what was allocated before the forward, and its time.
PeakRun measure_step(Module& model, const Tensor& x) {
  auto step = [&] {
    Tensor out = model.forward(x);
    sum(out).backward();
  };
  step();
  model.zero_grad(/*set_to_none=*/false);
  reset_host_peak_memory_stats();
  const int64_t baseline = host_memory_stats().allocated_bytes;
  const auto start = std::chrono::steady_clock::now();
  step();
  PeakRun r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.peak_over_baseline = host_memory_stats().peak_allocated_bytes - baseline;
  return r;
}

double percent_lower(int64_t plain, int64_t other) {
  return 100.0 * (1.0 - static_cast<double>(other) / static_cast<double>(plain));
}

TEST(ActivationCheckpointMemory, SixteenLayerMLPPeakDropsByAtLeast40Percent) {
  // 16 x (Linear 1024 -> ReLU), batch 1024: an activation and a weight gradient are
  // 4 MiB each. Without checkpointing every layer keeps its input (the ReLU output is
  // shared with the next Linear), 16 activations; checkpointing blocks of 4 layers keeps
  // the block inputs plus one block's activations while it is recomputed. (Every layer
  // checkpointed alone would keep 16 inputs: no saving in this MLP.)
  constexpr int kDepth = 16;
  constexpr int64_t kWidth = 1024, kBatch = 1024;
  auto layers = mlp_layers(kDepth, kWidth, 0.0, 21);
  auto plain = plain_of(layers);
  auto blocks = blocks_of(layers, 8);  // Checkpointed((Linear, ReLU) x 4) x 4, and the head
  auto segments = plain_of(layers);  // the same layers, in 4 segments
  segments->set_checkpoint_segments(4);
  Tensor x = random_tensor({kBatch, kWidth}, 22, DType::kF32);
  PeakRun p = measure_step(*plain, x);
  PeakRun b = measure_step(*blocks, x);
  PeakRun s = measure_step(*segments, x);
  std::cout << "[ peak ] plain " << format_bytes(p.peak_over_baseline) << " in " << p.seconds << " s\n"
            << "[ peak ] Checkpointed blocks " << format_bytes(b.peak_over_baseline) << " in " << b.seconds << " s ("
            << percent_lower(p.peak_over_baseline, b.peak_over_baseline) << "% lower, time x" << b.seconds / p.seconds
            << ")\n"
            << "[ peak ] Sequential in 4 segments " << format_bytes(s.peak_over_baseline) << " in " << s.seconds
            << " s (" << percent_lower(p.peak_over_baseline, s.peak_over_baseline) << "% lower, time x"
            << s.seconds / p.seconds << ")\n";
  EXPECT_GE(percent_lower(p.peak_over_baseline, b.peak_over_baseline), 40.0)
      << "plain " << format_bytes(p.peak_over_baseline) << ", blocks " << format_bytes(b.peak_over_baseline);
  EXPECT_GE(percent_lower(p.peak_over_baseline, s.peak_over_baseline), 40.0)
      << "plain " << format_bytes(p.peak_over_baseline) << ", segments " << format_bytes(s.peak_over_baseline);
}

}  // namespace
}  // namespace tandem::nn
