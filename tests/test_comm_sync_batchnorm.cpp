// SyncBatchNorm and convert_sync_batchnorm on CPU tensors: over 1-4 local-backend ranks
// (threads) and 2-4 gloo worker processes with uneven batches (one rank empty), each
// rank's outputs, gradients and running statistics match one BatchNorm2d over the
// concatenated batch; collectives are counted (one all-gather forward, one all-reduce
// backward, none in eval); models convert; errors name what was expected.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "comm/local.h"
#include "comm/sync_batchnorm.h"
#include "layers/models/cnn.h"
#include "layers/models/resnet.h"
#include "layers/norm.h"
#include "layers/sequential.h"
#include "tandem/config.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using namespace std::chrono_literals;
using tandem::testing::all_close;
using tandem::testing::expect_all_ok;
using tandem::testing::expect_invalid;
using tandem::testing::is_worker;
using tandem::testing::random_tensor;
using tandem::testing::run_ranks;
using tandem::testing::run_workers;
using tandem::testing::worker_gloo_group;

/// Forwards to another group and counts the collectives issued through it.
class CountingGroup : public ProcessGroup {
 public:
  explicit CountingGroup(std::shared_ptr<ProcessGroup> inner)
      : ProcessGroup(inner->rank(), inner->size(), inner->options()), inner_(std::move(inner)) {}
  using ProcessGroup::all_reduce;
  using ProcessGroup::broadcast;
  std::string backend() const override { return inner_->backend(); }
  WorkPtr all_reduce(const std::vector<Tensor>& tensors, ReduceOp op) override {
    ++all_reduces;
    return inner_->all_reduce(tensors, op);
  }
  WorkPtr broadcast(const std::vector<Tensor>& tensors, int root) override {
    ++others;
    return inner_->broadcast(tensors, root);
  }
  WorkPtr all_gather(const std::vector<Tensor>& outputs, const Tensor& input) override {
    ++all_gathers;
    return inner_->all_gather(outputs, input);
  }
  WorkPtr reduce_scatter(const Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    ++others;
    return inner_->reduce_scatter(output, inputs, op);
  }
  WorkPtr barrier() override {
    ++others;
    return inner_->barrier();
  }
  int total() const { return all_reduces + all_gathers + others; }

  int all_reduces = 0, all_gathers = 0, others = 0;

 private:
  std::shared_ptr<ProcessGroup> inner_;
};

// ---- one rank against the single-process reference ------------------------------------

enum class Layer { kSync, kConvertedBN2d, kConvertedBN1d };

struct Case {
  std::string label;
  Shape features;  // (C, spatial...)
  Layer layer = Layer::kSync;
  nn::BatchNormOptions options = {};
  bool input_grad = true;
  DType dtype = DType::kF64;
  int steps = 3;
};

/// Uneven batches per rank, one of them empty from 3 ranks on.
std::vector<int64_t> batches_for(int world) {
  switch (world) {
    case 1: return {3};
    case 2: return {3, 1};
    case 3: return {2, 0, 3};
    default: return {1, 3, 0, 2};
  }
}

/// The layer under test on this rank and its batch-norm base (for parameters and buffers).
std::pair<std::shared_ptr<nn::Module>, nn::BatchNormBase*> make_layer(const Case& k, std::shared_ptr<ProcessGroup> pg) {
  const int64_t c = k.features[0];
  if (k.layer == Layer::kSync) {
    auto m = std::make_shared<SyncBatchNorm>(c, pg, k.options);
    return {m, m.get()};
  }
  std::shared_ptr<nn::BatchNormBase> bn;
  if (k.layer == Layer::kConvertedBN2d) bn = std::make_shared<nn::BatchNorm2d>(c, k.options);
  else bn = std::make_shared<nn::BatchNorm1d>(c, k.options);
  auto seq = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{bn});
  int converted = -1;
  std::shared_ptr<nn::Module> out = convert_sync_batchnorm(seq, pg, &converted);
  EXPECT_EQ(out.get(), seq.get());
  EXPECT_EQ(converted, 1);
  return {out, bn.get()};
}

/// Gives the layer and the reference the same non-trivial weight and bias.
void set_affine(nn::BatchNormBase& a, nn::BatchNormBase& b, DType dtype) {
  if (!a.options().affine) return;
  autograd::NoGradGuard no_grad;
  const int64_t c = a.num_features();
  Tensor w = random_tensor({c}, 7, dtype, Device::cpu(), 0.5, 2.0), bias = random_tensor({c}, 8, dtype);
  for (nn::BatchNormBase* m : {&a, &b}) {
    Tensor mw = m->weight(), mb = m->bias();
    mw.copy_(w);
    mb.copy_(bias);
  }
}

/// Runs `k` on this rank of `base` and checks it against nn::BatchNorm2d on the whole batch
/// (as (N, C, ∏spatial, 1)), which every rank computes for itself.
void check_rank(const std::shared_ptr<ProcessGroup>& base, const Case& k) {
  SCOPED_TRACE(k.label + ", rank " + std::to_string(base->rank()) + " of " + std::to_string(base->size()) + " (" +
               base->backend() + ")");
  auto pg = std::make_shared<CountingGroup>(base);
  const int rank = pg->rank(), world = pg->size();
  const std::vector<int64_t> batches = batches_for(world);
  int64_t total = 0, offset = 0;
  for (int r = 0; r < world; ++r) {
    if (r < rank) offset += batches[r];
    total += batches[r];
  }
  const int64_t n = batches[rank];
  const int64_t c = k.features[0];
  const int64_t inner = shape_numel(k.features) / c;
  Shape full = {total}, mine = {n};
  full.insert(full.end(), k.features.begin(), k.features.end());
  mine.insert(mine.end(), k.features.begin(), k.features.end());

  auto [module, bn] = make_layer(k, pg);
  nn::BatchNorm2d ref(c, k.options);
  module->to(k.dtype);
  ref.to(k.dtype);
  set_affine(*bn, ref, k.dtype);
  const bool affine = k.options.affine;
  const double atol = k.dtype == DType::kF64 ? 1e-11 : 2e-5, rtol = k.dtype == DType::kF64 ? 1e-9 : 1e-4;

  for (int step = 0; step < k.steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    // Same seeds on every rank: every rank knows the whole batch and takes its rows.
    Tensor x_full = random_tensor(full, 100 + step, k.dtype, Device::cpu(), -2.0, 3.0);
    Tensor dy_full = random_tensor(full, 200 + step, k.dtype);
    Tensor x = x_full.narrow(0, offset, n).detach().clone();
    Tensor dy = dy_full.narrow(0, offset, n).detach().clone();
    if (k.input_grad) x.set_requires_grad(true);
    x_full.set_requires_grad(k.input_grad);

    Tensor y_ref = ref.forward(x_full.reshape({total, c, inner, 1})).reshape(full);
    y_ref.backward(dy_full);

    const int gathers = pg->all_gathers, reduces = pg->all_reduces;
    Tensor y = module->forward(x);
    EXPECT_EQ(pg->all_gathers - gathers, world > 1 ? 1 : 0) << "all_gathers in one training forward";
    if (y.requires_grad()) y.backward(dy);
    // PyTorch's rule: the all-reduce serves the input gradient only.
    EXPECT_EQ(pg->all_reduces - reduces, world > 1 && k.input_grad ? 1 : 0) << "all_reduces in one backward";
    EXPECT_EQ(pg->others, 0);

    EXPECT_EQ(y.shape(), mine);
    EXPECT_TRUE(all_close(y, y_ref.narrow(0, offset, n), atol, rtol)) << "output";
    if (k.input_grad) {
      ASSERT_TRUE(x.grad().defined());
      EXPECT_TRUE(all_close(x.grad(), x_full.grad().narrow(0, offset, n), atol, rtol)) << "input gradient";
    }
    if (affine) {
      // Each rank's weight and bias gradients are its own sums; over the ranks they
      // add up to the single-process gradient.
      for (auto [got, want, what] : {std::tuple{bn->weight().grad(), ref.weight().grad(), "weight"},
                                     std::tuple{bn->bias().grad(), ref.bias().grad(), "bias"}}) {
        ASSERT_TRUE(got.defined()) << what;
        Tensor summed = got.clone();
        base->all_reduce(summed)->wait();
        EXPECT_TRUE(all_close(summed, want, atol, rtol)) << what << " gradient summed over ranks";
      }
    }
    module->zero_grad();
    ref.zero_grad();
  }

  if (k.options.track_running_stats) {
    EXPECT_TRUE(all_close(bn->running_mean(), ref.running_mean(), atol, rtol)) << "running_mean";
    EXPECT_TRUE(all_close(bn->running_var(), ref.running_var(), atol, rtol)) << "running_var";
    EXPECT_EQ(bn->num_batches_tracked().item<int64_t>(), k.steps);
  }

  // Eval mode communicates nothing: the running statistics, or (untracked) this rank's
  // own batch statistics as PyTorch's SyncBatchNorm, which syncs only in training.
  module->eval();
  ref.eval();
  Tensor x = random_tensor(mine, 300, k.dtype, Device::cpu(), -2.0, 3.0);
  const int before = pg->total();
  if (k.options.track_running_stats || n * inner != 1) {
    Tensor y = module->forward(x);
    Tensor want = ref.forward(x.reshape({n, c, inner, 1})).reshape(mine);
    EXPECT_TRUE(all_close(y, want, atol, rtol)) << "eval output";
  }
  EXPECT_EQ(pg->total(), before) << "collectives in eval mode";
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> v;
    v.push_back({.label = "SyncBatchNorm 4-D", .features = {3, 4, 5}});
    v.push_back({.label = "SyncBatchNorm 5-D, eps 1e-3", .features = {2, 2, 3, 2}, .options = {.eps = 1e-3}});
    v.push_back({.label = "converted BatchNorm2d", .features = {3, 2, 3}, .layer = Layer::kConvertedBN2d});
    v.push_back({.label = "converted BatchNorm1d (N, C)", .features = {5}, .layer = Layer::kConvertedBN1d});
    v.push_back({.label = "converted BatchNorm1d (N, C, L)", .features = {4, 3}, .layer = Layer::kConvertedBN1d});
    v.push_back({.label = "momentum None", .features = {3, 2, 2}, .options = {.momentum = std::nullopt}, .steps = 4});
    v.push_back({.label = "affine false", .features = {3, 2, 2}, .options = {.affine = false}});
    v.push_back({.label = "track_running_stats false", .features = {3, 2, 2},
                 .options = {.track_running_stats = false}});
    v.push_back({.label = "input needs no gradient", .features = {3, 2, 2}, .input_grad = false});
    v.push_back({.label = "float32", .features = {4, 3, 3}, .dtype = DType::kF32});
    return v;
  }();
  return all;
}

// ---- local backend ----------------------------------------------------------------------

class SyncBatchNormLocal : public ::testing::TestWithParam<int> {};

TEST_P(SyncBatchNormLocal, MatchesBatchNormOverTheWholeBatch) {
  const int world = GetParam();
  for (const Case& k : cases()) {
    auto groups = make_local_group(world);
    run_ranks(world, [&](int r) { check_rank(groups[r], k); });
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, SyncBatchNormLocal, ::testing::Values(1, 2, 3, 4));

// ---- gloo worker processes --------------------------------------------------------------

TEST(SyncBatchNormGlooWorker, MatchesBatchNormOverTheWholeBatch) {
  TANDEM_WORKER_ONLY();
  auto pg = worker_gloo_group(20s);
  for (const Case& k : cases()) check_rank(pg, k);
  pg->barrier()->wait();
}

class SyncBatchNormGloo : public ::testing::TestWithParam<int> {};

TEST_P(SyncBatchNormGloo, MatchesBatchNormOverTheWholeBatch) {
  if (is_worker()) GTEST_SKIP();
  if (!TANDEM_GLOO) GTEST_SKIP() << "built without Gloo";
  expect_all_ok(run_workers("SyncBatchNormGlooWorker.MatchesBatchNormOverTheWholeBatch", GetParam(), 60s));
}

INSTANTIATE_TEST_SUITE_P(Ranks, SyncBatchNormGloo, ::testing::Values(2, 3, 4));

// ---- models -----------------------------------------------------------------------------

using StateDictKeys = std::vector<std::string>;

TEST(ConvertSyncBatchNorm, ResNet18ConvertsEveryBatchNormInPlace) {
  if (is_worker()) GTEST_SKIP();
  auto groups = make_local_group(2);
  run_ranks(2, [&](int r) {
    std::shared_ptr<nn::Module> model = std::make_shared<nn::models::ResNet18>();
    const StateDictKeys before = [&] {
      std::vector<std::string> names;
      for (auto& [name, t] : model->state_dict()) names.push_back(name);
      return names;
    }();
    EXPECT_EQ(count_sync_batchnorm(*model), 0);
    int converted = 0;
    // Stem + two per BasicBlock (8) + three downsample shortcuts.
    EXPECT_EQ(convert_sync_batchnorm(model, groups[r], &converted).get(), model.get());
    EXPECT_EQ(converted, 20);
    EXPECT_EQ(count_sync_batchnorm(*model), 20);
    std::vector<std::string> after;
    for (auto& [name, t] : model->state_dict()) after.push_back(name);
    EXPECT_EQ(after, before) << "conversion must not rename parameters or buffers";
    // One image per rank at 8x8: layer4 works on 1x1 maps, one value per channel per
    // rank, which only the synchronised statistics (two values) can normalise.
    Tensor x = random_tensor({1, 3, 8, 8}, 40 + r, DType::kF32);
    Tensor y = model->forward(x);
    EXPECT_EQ(y.shape(), (Shape{1, 10}));
    for (float v : y.to_vector<float>()) EXPECT_TRUE(std::isfinite(v));
  });
}

/// A converted CNN on two ranks trains like the plain CNN on the concatenated batch:
/// same outputs, and the convolution and linear gradients (summed over ranks) match.
TEST(ConvertSyncBatchNorm, CnnOnTwoRanksMatchesTheWholeBatch) {
  if (is_worker()) GTEST_SKIP();
  const nn::models::CNNOptions opts = {.in_channels = 2, .num_classes = 3, .image_size = 8, .hidden = 6};
  auto ref = std::make_shared<nn::models::CNN>(opts);
  ref->to(DType::kF64);
  const std::vector<int64_t> batches = {3, 2};
  Tensor x_full = random_tensor({5, 2, 8, 8}, 11);
  Tensor dy_full = random_tensor({5, 3}, 12);
  Tensor y_ref = ref->forward(x_full);
  y_ref.backward(dy_full);
  auto groups = make_local_group(2);
  run_ranks(2, [&](int r) {
    auto model = std::make_shared<nn::models::CNN>(opts);
    model->to(DType::kF64);
    model->load_state_dict(ref->state_dict());
    int converted = 0;
    convert_sync_batchnorm(model, groups[r], &converted);
    EXPECT_EQ(converted, 2);
    const int64_t offset = r == 0 ? 0 : batches[0];
    Tensor y = model->forward(x_full.narrow(0, offset, batches[r]).clone());
    y.backward(dy_full.narrow(0, offset, batches[r]).clone());
    EXPECT_TRUE(all_close(y, y_ref.narrow(0, offset, batches[r]), 1e-11, 1e-9));
    auto params = model->named_parameters();
    auto want = ref->named_parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor g = params[i].second.grad().clone();
      groups[r]->all_reduce(g)->wait();
      EXPECT_TRUE(all_close(g, want[i].second.grad(), 1e-10, 1e-8)) << params[i].first;
    }
  });
}

// ---- errors -----------------------------------------------------------------------------

TEST(SyncBatchNormErrors, OneValuePerChannelFailsOnEveryRank) {
  if (is_worker()) GTEST_SKIP();
  // 1 value in total, and none at all: every rank decides from the gathered counts, so
  // all of them throw and none is left waiting in a collective.
  for (const std::vector<int64_t>& batches : {std::vector<int64_t>{1, 0, 0}, std::vector<int64_t>{0, 0, 0}}) {
    auto groups = make_local_group(3);
    const int64_t total = batches[0] + batches[1] + batches[2];
    run_ranks(3, [&](int r) {
      SyncBatchNorm bn(4, groups[r]);
      Tensor x = random_tensor({batches[r], 4}, 5 + r);
      // Appended, not "lit" + std::string: GCC 12 gives a false -Wrestrict on the latter.
      std::string got = "got ", by_rank = "[";
      got.append(std::to_string(total)).append(" over 3 ranks");
      by_rank.append(std::to_string(batches[0])).append(", 0, 0]");
      expect_invalid([&] { bn.forward(x); },
                     {"[SyncBatchNorm]", "expected more than 1 value per channel when training", got, by_rank});
      // The group is still in step: a valid forward works afterwards.
      Tensor ok = random_tensor({2, 4}, 9 + r);
      EXPECT_EQ(bn.forward(ok).shape(), (Shape{2, 4}));
    });
  }
  // Alone: a converted BatchNorm2d with one value per channel.
  auto solo = make_local_group(1);
  auto seq = std::make_shared<nn::Sequential>(
      std::initializer_list<std::shared_ptr<nn::Module>>{std::make_shared<nn::BatchNorm2d>(3)});
  convert_sync_batchnorm(seq, solo[0]);
  expect_invalid([&] { seq->forward(random_tensor({1, 3, 1, 1}, 3)); },
                 {"[BatchNorm2d]", "expected more than 1 value per channel when training", "got 1",
                  "[1, 3, 1, 1]"});
}

TEST(SyncBatchNormErrors, BadArgumentsNameWhatWasExpected) {
  if (is_worker()) GTEST_SKIP();
  auto solo = make_local_group(1);
  expect_invalid([] { SyncBatchNorm(3, nullptr); }, {"[SyncBatchNorm]", "expected a process group, got null"});
  expect_invalid([&] { SyncBatchNorm(0, solo[0]); }, {"num_features >= 1", "got 0"});
  SyncBatchNorm bn(3, solo[0]);
  expect_invalid([&] { bn.forward(random_tensor({6}, 1)); },
                 {"[SyncBatchNorm]", "expected input of at least 2 dims (N, C, ...)", "got shape [6]"});
  expect_invalid([&] { bn.forward(random_tensor({2, 4, 2}, 1)); },
                 {"[SyncBatchNorm]", "expected input with 3 channels", "got input shape [2, 4, 2]"});
  expect_invalid([&] { convert_sync_batchnorm(nullptr, solo[0]); },
                 {"[convert_sync_batchnorm]", "expected a module, got null"});
  expect_invalid([&] { convert_sync_batchnorm(std::make_shared<nn::BatchNorm1d>(2), nullptr); },
                 {"[convert_sync_batchnorm]", "expected a process group, got null"});
  // A converted layer keeps its own input check.
  auto bn2 = std::make_shared<nn::BatchNorm2d>(3);
  convert_sync_batchnorm(bn2, solo[0]);
  expect_invalid([&] { bn2->forward(random_tensor({2, 3, 4}, 1)); }, {"[BatchNorm2d]", "expected input of 4 dims"});
}

TEST(SyncBatchNormLayer, NameStateDictAndSyncRemoval) {
  if (is_worker()) GTEST_SKIP();
  auto solo = make_local_group(1);
  SyncBatchNorm bn(3, solo[0]);
  EXPECT_EQ(bn.name(), "SyncBatchNorm");
  EXPECT_EQ(bn.group().get(), solo[0].get());
  std::vector<std::string> names;
  for (auto& [name, t] : bn.state_dict()) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}));
  EXPECT_EQ(count_sync_batchnorm(bn), 1);
  // Removing the sync gives plain local batch norm, which a world of one equals.
  auto plain = std::make_shared<nn::BatchNorm2d>(3);
  auto synced = std::make_shared<nn::BatchNorm2d>(3);
  convert_sync_batchnorm(synced, solo[0]);
  Tensor x = random_tensor({4, 3, 2, 2}, 2);
  EXPECT_TRUE(all_close(synced->forward(x), plain->forward(x), 1e-12, 1e-10));
  synced->set_sync(nullptr);
  EXPECT_EQ(count_sync_batchnorm(*synced), 0);
  EXPECT_TRUE(all_close(synced->forward(x), plain->forward(x), 1e-12, 1e-10));
  EXPECT_TRUE(all_close(synced->running_var(), plain->running_var(), 1e-12, 1e-10));
}

}  // namespace
}  // namespace tandem::comm
