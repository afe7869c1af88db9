// DistributedDataParallel, proven by equivalence: N ranks with batch B each (local
// threads, and gloo worker processes; MLP, CNN, a GPT with a tied embedding) end 5 SGD-momentum steps with the parameters of
// one process trained on the concatenated batch N·B. Also: bucket assignment and
// rebuild, overlap of the first all-reduce with backward, no_sync accumulation,
// unused parameters (flag, static graph, and the error without them), and the
// start-up check across ranks.
#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "comm/ddp.h"
#include "comm/local.h"
#include "comm/sync_batchnorm.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/activation.h"
#include "layers/linear.h"
#include "layers/models/cnn.h"
#include "layers/models/mlp.h"
#include "layers/sequential.h"
#include "optim/sgd.h"
#include "tandem/config.h"
#include "ddp_test_support.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using namespace std::chrono_literals;
using tandem::testing::run_ranks;

using namespace ddp_test;

void check_local_equivalence(Kind k, int world, DDPOptions options) {
  const bool per_rank_bn = k == Kind::kCNN;
  auto want = reference(k, world, per_rank_bn);
  std::vector<std::shared_ptr<nn::Module>> models;
  for (int r = 0; r < world; ++r) models.push_back(make_model(k, rank_seed(r)));
  auto groups = make_local_group(world);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(static_cast<size_t>(world));
  run_ranks(world, [&](int r) { got[static_cast<size_t>(r)] = ddp_train(k, models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)], options); });
  for (int r = 0; r < world; ++r)
    expect_same_state(got[static_cast<size_t>(r)], want, std::string(kind_name(k)) + " rank " + std::to_string(r) + " of " + std::to_string(world));
}

// ---- equivalence over the local backend ------------------------------------------------

class DDPLocal : public ::testing::TestWithParam<int> {};

TEST_P(DDPLocal, MLPMatchesOneProcessWithTheWholeBatch) {
  check_local_equivalence(Kind::kMLP, GetParam(), {});
}

TEST_P(DDPLocal, MLPWithoutBucketViewsAndWithTinyBuckets) {
  check_local_equivalence(Kind::kMLP, GetParam(),
                          {.bucket_cap_mb = 400.0 / (1 << 20), .first_bucket_cap_mb = 100.0 / (1 << 20),
                           .gradient_as_bucket_view = false});
}

TEST_P(DDPLocal, CNNWithBatchNormAndBroadcastBuffers) {
  check_local_equivalence(Kind::kCNN, GetParam(), {.first_bucket_cap_mb = 0.01});
}

TEST_P(DDPLocal, UnusedBranchWithFindUnusedParameters) {
  check_local_equivalence(Kind::kUnused, GetParam(), {.find_unused_parameters = true});
}

TEST_P(DDPLocal, UnusedBranchWithStaticGraph) {
  check_local_equivalence(Kind::kUnused, GetParam(), {.static_graph = true});
}

TEST_P(DDPLocal, GPTWithTiedEmbeddingAndSeveralBuckets) {
  // The embedding's gradient comes from the lookup and from the head; its all-reduce
  // must wait for both.
  check_local_equivalence(Kind::kGPT, GetParam(), {.bucket_cap_mb = 2000.0 / (1 << 20), .first_bucket_cap_mb = 500.0 / (1 << 20)});
}

TEST_P(DDPLocal, CNNWithSyncBatchNormMatchesOneProcessExactly) {
  // With synchronised statistics, batch norm over N ranks is batch norm over the whole
  // batch: parameters and running statistics match the plain CNN on N·B samples.
  const int world = GetParam();
  auto want = reference(Kind::kCNN, world, /*per_rank_bn=*/false);
  std::vector<std::shared_ptr<nn::Module>> models;
  for (int r = 0; r < world; ++r) models.push_back(make_model(Kind::kCNN, rank_seed(r)));
  auto groups = make_local_group(world);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(static_cast<size_t>(world));
  run_ranks(world, [&](int r) {
    int converted = 0;
    auto model = convert_sync_batchnorm(models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)], &converted);
    EXPECT_EQ(converted, 2);
    got[static_cast<size_t>(r)] = ddp_train(Kind::kCNN, model, groups[static_cast<size_t>(r)], {.first_bucket_cap_mb = 0.01});
  });
  for (int r = 0; r < world; ++r)
    expect_same_state(got[static_cast<size_t>(r)], want, "SyncBN CNN rank " + std::to_string(r) + " of " + std::to_string(world));
}

INSTANTIATE_TEST_SUITE_P(Ranks, DDPLocal, ::testing::Values(2, 3, 4));

TEST(DDPLocalSolo, WorldSizeOneEqualsThePlainModel) { check_local_equivalence(Kind::kMLP, 1, {}); }

// ---- equivalence over gloo worker processes ----------------------------------------------

void gloo_worker(Kind k, bool sync_bn = false) {
  auto pg = tandem::testing::worker_gloo_group(30s);
  auto want = reference(k, pg->size(), k == Kind::kCNN && !sync_bn);
  auto model = make_model(k, rank_seed(pg->rank()));
  if (sync_bn) convert_sync_batchnorm(model, pg);
  auto got = ddp_train(k, model, pg, {.first_bucket_cap_mb = 0.001, .find_unused_parameters = k == Kind::kUnused});
  expect_same_state(got, want, std::string(kind_name(k)) + " gloo rank " + std::to_string(pg->rank()));
}

TEST(DDPGlooWorker, MLP) {
  TANDEM_WORKER_ONLY();
  gloo_worker(Kind::kMLP);
}
TEST(DDPGlooWorker, CNN) {
  TANDEM_WORKER_ONLY();
  gloo_worker(Kind::kCNN);
}
TEST(DDPGlooWorker, CNNSyncBatchNorm) {
  TANDEM_WORKER_ONLY();
  gloo_worker(Kind::kCNN, /*sync_bn=*/true);
}
TEST(DDPGlooWorker, Unused) {
  TANDEM_WORKER_ONLY();
  gloo_worker(Kind::kUnused);
}

class DDPGloo : public ::testing::TestWithParam<int> {};

TEST_P(DDPGloo, MLPCNNSyncBNAndUnusedBranchMatchOneProcess) {
  if (tandem::testing::is_worker()) GTEST_SKIP();
  if (!TANDEM_GLOO) GTEST_SKIP() << "built without gloo";
  for (const char* test : {"DDPGlooWorker.MLP", "DDPGlooWorker.CNN", "DDPGlooWorker.CNNSyncBatchNorm", "DDPGlooWorker.Unused"}) {
    SCOPED_TRACE(test);
    tandem::testing::expect_all_ok(tandem::testing::run_workers(test, GetParam(), 60s));
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, DDPGloo, ::testing::Values(2, 3, 4));

// ---- a group that logs what it is asked to do ---------------------------------------------

/// Forwards to another group and appends every collective to a shared log.
class LoggingGroup final : public ProcessGroup {
 public:
  LoggingGroup(std::shared_ptr<ProcessGroup> inner, std::function<void(const std::string&)> log)
      : ProcessGroup(inner->rank(), inner->size(), inner->options()), inner_(std::move(inner)), log_(std::move(log)) {}
  std::string backend() const override { return inner_->backend(); }
  WorkPtr all_reduce(const std::vector<Tensor>& t, ReduceOp op) override {
    log_("all_reduce " + std::to_string(t.front().numel()));
    return inner_->all_reduce(t, op);
  }
  WorkPtr broadcast(const std::vector<Tensor>& t, int root) override {
    log_("broadcast");
    return inner_->broadcast(t, root);
  }
  WorkPtr all_gather(const std::vector<Tensor>& out, const Tensor& in) override {
    log_("all_gather");
    return inner_->all_gather(out, in);
  }
  WorkPtr reduce_scatter(const Tensor& out, const std::vector<Tensor>& in, ReduceOp op) override {
    log_("reduce_scatter");
    return inner_->reduce_scatter(out, in, op);
  }
  WorkPtr barrier() override { return inner_->barrier(); }

 private:
  std::shared_ptr<ProcessGroup> inner_;
  std::function<void(const std::string&)> log_;
};

std::vector<int64_t> sorted(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  return v;
}

/// 4 Linear layers of 16x16 (+bias): 1088 bytes of gradient per layer.
std::shared_ptr<nn::Sequential> four_layers() {
  manual_seed(3);
  return std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(16, 16), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(16, 16),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(16, 16), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(16, 16)});
}

TEST(DDPBuckets, ReverseOrderWithFirstAndLaterCaps) {
  auto model = four_layers();
  auto pg = make_local_group(1)[0];
  // Parameters (weight 1024 B, bias 64 B) in reverse: 3.bias(7), 3.weight(6), 2.bias(5), ...
  // A bucket closes once it holds at least its cap: the first (1000 B) after 7 and 6
  // (1088 B); the next (2000 B) after 5, 4, 3, 2 (2176 B); the rest form the last.
  DistributedDataParallel ddp(model, pg, {.bucket_cap_mb = 2000.0 / (1 << 20), .first_bucket_cap_mb = 1000.0 / (1 << 20)});
  std::vector<BucketInfo> b = ddp.buckets();
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0].params, (std::vector<int64_t>{7, 6}));
  EXPECT_EQ(b[1].params, (std::vector<int64_t>{5, 4, 3, 2}));
  EXPECT_EQ(b[2].params, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(b[0].nbytes, 1088u);
  EXPECT_EQ(b[1].numel, 2 * (256 + 16));
}

TEST(DDPBuckets, DefaultCapsGiveOneSmallModelOneBucket) {
  auto pg = make_local_group(1)[0];
  DistributedDataParallel ddp(four_layers(), pg);
  ASSERT_EQ(ddp.buckets().size(), 1u);
  EXPECT_EQ(ddp.buckets()[0].params, (std::vector<int64_t>{7, 6, 5, 4, 3, 2, 1, 0}));
  EXPECT_EQ(ddp.buckets()[0].dtype, DType::kF32);
}

TEST(DDPBuckets, RebuiltInReadyOrderWithRankZerosLayout) {
  // Rank 0 applies a then b, rank 1 b then a: their gradients become ready in different
  // orders, and both must adopt rank 0's.
  std::vector<std::shared_ptr<nn::Module>> models = {std::make_shared<Swappable>(true), std::make_shared<Swappable>(false)};
  auto groups = make_local_group(2);
  std::vector<std::vector<BucketInfo>> before(2), after(2);
  run_ranks(2, [&](int r) {
    const double one_layer = 1088.0 / (1 << 20);
    DistributedDataParallel ddp(models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)],
                                {.bucket_cap_mb = one_layer, .first_bucket_cap_mb = one_layer});
    before[static_cast<size_t>(r)] = ddp.buckets();
    for (int s = 0; s < 2; ++s) {
      Tensor x = tandem::testing::random_tensor({3, 16}, 5 + static_cast<uint64_t>(s), DType::kF32);
      ddp.forward(x).sum().backward();
    }
    EXPECT_TRUE(ddp.buckets_rebuilt());
    after[static_cast<size_t>(r)] = ddp.buckets();
  });
  // Parameters: a.weight 0, a.bias 1, b.weight 2, b.bias 3, head.weight 4, head.bias 5.
  // Before: reverse order, each 16x16 layer its own bucket.
  EXPECT_EQ(before[0][0].params, (std::vector<int64_t>{5, 4}));
  EXPECT_EQ(before[0][1].params, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(before[0][2].params, (std::vector<int64_t>{1, 0}));
  // Rank 0 (a first): backward reaches head, then b, then a: the same as the reverse order.
  // Rank 1 alone would have put a before b; it adopts rank 0's layout instead.
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(after[static_cast<size_t>(r)].size(), 3u) << "rank " << r;
    EXPECT_EQ(sorted(after[static_cast<size_t>(r)][0].params), (std::vector<int64_t>{4, 5})) << "rank " << r;
    EXPECT_EQ(sorted(after[static_cast<size_t>(r)][1].params), (std::vector<int64_t>{2, 3})) << "rank " << r;
    EXPECT_EQ(sorted(after[static_cast<size_t>(r)][2].params), (std::vector<int64_t>{0, 1})) << "rank " << r;
  }
}

TEST(DDPBuckets, RebuildFollowsObservedOrderNotRegistration) {
  // Registered a, b, head; applied b first: the ready order is head, a, b.
  auto pg = make_local_group(1)[0];
  auto model = std::make_shared<Swappable>(false);
  const double one_layer = 1088.0 / (1 << 20);
  DistributedDataParallel ddp(model, pg, {.bucket_cap_mb = one_layer, .first_bucket_cap_mb = one_layer});
  for (int s = 0; s < 2; ++s) ddp.forward(tandem::testing::random_tensor({3, 16}, 9, DType::kF32)).sum().backward();
  std::vector<BucketInfo> b = ddp.buckets();
  ASSERT_EQ(b.size(), 3u);
  EXPECT_TRUE(ddp.buckets_rebuilt());
  EXPECT_EQ(sorted(b[1].params), (std::vector<int64_t>{0, 1}));  // a's gradient arrives before b's
  EXPECT_EQ(sorted(b[2].params), (std::vector<int64_t>{2, 3}));
}

TEST(DDPOverlap, FirstAllReduceIsLaunchedBeforeBackwardReachesTheFirstLayer) {
  auto groups = make_local_group(2);
  std::mutex mu;
  std::vector<std::vector<std::string>> logs(2);
  std::vector<DDPIterationStats> stats(2);
  run_ranks(2, [&](int r) {
    auto& log = logs[static_cast<size_t>(r)];
    auto pg = std::make_shared<LoggingGroup>(groups[static_cast<size_t>(r)], [&mu, &log](const std::string& s) {
      std::lock_guard<std::mutex> lock(mu);
      log.push_back(s);
    });
    auto model = four_layers();
    const double one_layer = 1088.0 / (1 << 20);
    DistributedDataParallel ddp(model, pg, {.bucket_cap_mb = one_layer, .first_bucket_cap_mb = one_layer});
    // Registered after DDP's: runs once DDP has handled the first layer's weight, one of
    // the last two gradients of backward.
    Tensor first_weight = (*model)[0]->parameters()[0];
    first_weight.register_post_accumulate_grad_hook([&mu, &log](Tensor&) {
      std::lock_guard<std::mutex> lock(mu);
      log.push_back("first layer weight ready");
    });
    {
      std::lock_guard<std::mutex> lock(mu);
      log.clear();
    }
    ddp.forward(tandem::testing::random_tensor({5, 16}, 1, DType::kF32)).sum().backward();
    stats[static_cast<size_t>(r)] = ddp.last_iteration_stats();
  });
  for (int r = 0; r < 2; ++r) {
    const auto& log = logs[static_cast<size_t>(r)];
    auto first_reduce = std::find_if(log.begin(), log.end(), [](const std::string& s) { return s.rfind("all_reduce", 0) == 0; });
    auto first_layer = std::find(log.begin(), log.end(), "first layer weight ready");
    ASSERT_NE(first_reduce, log.end()) << "rank " << r;
    ASSERT_NE(first_layer, log.end()) << "rank " << r;
    EXPECT_LT(first_reduce - log.begin(), first_layer - log.begin()) << "rank " << r;
    // The three later layers' buckets are already on their way; the first layer's
    // goes once its bias has arrived too.
    EXPECT_GE(std::count_if(log.begin(), first_layer, [](const std::string& s) { return s.rfind("all_reduce", 0) == 0; }), 3)
        << "rank " << r;
    const DDPIterationStats& s = stats[static_cast<size_t>(r)];
    EXPECT_EQ(s.buckets, 4);
    EXPECT_EQ(s.buckets_launched_during_backward, 4);
    // The timeline: buckets in launch order, each ready within backward, done after ready.
    ASSERT_EQ(s.timeline.size(), 4u);
    for (size_t b = 0; b < 4; ++b) {
      EXPECT_EQ(s.timeline[b].nbytes, 1088u);
      EXPECT_GE(s.timeline[b].ready_s, s.first_hook_s);
      EXPECT_LE(s.timeline[b].ready_s, s.backward_end_s);
      EXPECT_GE(s.timeline[b].done_s, s.timeline[b].ready_s);
      if (b > 0) {
        EXPECT_GE(s.timeline[b].ready_s, s.timeline[b - 1].ready_s);
      }
    }
  }
}

// ---- no_sync accumulation -----------------------------------------------------------------

TEST(DDPNoSync, KMinusOneLocalMicroBatchesThenASyncedOneEqualOneLargeBatch) {
  constexpr int kWorld = 2, kMicro = 3;
  // Reference: one process, world·micro·B samples per step.
  auto ref = make_model(Kind::kMLP, 7);
  optim::SGD ref_opt(ref->parameters(), sgd_options());
  for (int s = 0; s < 2; ++s) {
    Batch b = global_batch(Kind::kMLP, s, kWorld * kMicro * kBatch);
    ref_opt.zero_grad();
    cross_entropy(ref->forward(b.x), b.y).backward();
    ref_opt.step();
  }
  auto want = snapshot(*ref);

  std::vector<std::shared_ptr<nn::Module>> models = {make_model(Kind::kMLP, 7), make_model(Kind::kMLP, 8)};
  auto groups = make_local_group(kWorld);
  std::vector<int> reduces(kWorld, 0);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(kWorld);
  run_ranks(kWorld, [&](int r) {
    int& count = reduces[static_cast<size_t>(r)];
    auto pg = std::make_shared<LoggingGroup>(groups[static_cast<size_t>(r)], [&count](const std::string& s) {
      if (s.rfind("all_reduce", 0) == 0) ++count;
    });
    DistributedDataParallel ddp(models[static_cast<size_t>(r)], pg);
    optim::SGD opt(ddp.parameters(), sgd_options());
    for (int s = 0; s < 2; ++s) {
      Batch b = global_batch(Kind::kMLP, s, kWorld * kMicro * kBatch);
      const int64_t base = r * kMicro * kBatch;
      opt.zero_grad();
      for (int m = 0; m < kMicro; ++m) {
        auto micro = [&] {
          Tensor out = ddp.forward(rows(b.x, base + m * kBatch, kBatch));
          mul(cross_entropy(out, rows(b.y, base + m * kBatch, kBatch)), scalar_tensor(1.0 / kMicro)).backward();
        };
        if (m < kMicro - 1) {
          auto guard = ddp.no_sync();
          micro();
        } else {
          micro();
        }
      }
      opt.step();
    }
    got[static_cast<size_t>(r)] = snapshot(*models[static_cast<size_t>(r)]);
  });
  for (int r = 0; r < kWorld; ++r) {
    expect_same_state(got[static_cast<size_t>(r)], want, "no_sync rank " + std::to_string(r));
    EXPECT_EQ(reduces[static_cast<size_t>(r)], 2) << "one all-reduce per step (one bucket), none inside no_sync";
  }
}

// ---- errors ------------------------------------------------------------------------------

TEST(DDPErrors, ParameterWithoutGradientIsNamedAtTheNextIteration) {
  auto groups = make_local_group(2);
  std::vector<std::shared_ptr<nn::Module>> models = {make_model(Kind::kUnused, 1), make_model(Kind::kUnused, 1)};
  std::vector<std::string> messages(2);
  run_ranks(2, [&](int r) {
    DistributedDataParallel ddp(models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)]);
    Tensor x = tandem::testing::random_tensor({2, 6}, 3, DType::kF32);
    ddp.forward(x).sum().backward();  // does not hang
    try {
      ddp.forward(x);
    } catch (const std::runtime_error& e) {
      messages[static_cast<size_t>(r)] = e.what();
    }
  });
  for (const std::string& m : messages) {
    EXPECT_NE(m.find("unused.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("unused.bias"), std::string::npos) << m;
    EXPECT_NE(m.find("find_unused_parameters"), std::string::npos) << m;
  }
}

TEST(DDPErrors, MismatchedModelsFailAtConstructionNamingTheParameterAndRanks) {
  auto groups = make_local_group(3);
  std::vector<std::shared_ptr<nn::Module>> models;
  for (int r = 0; r < 3; ++r) {
    manual_seed(1);
    models.push_back(std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 12, .hidden = {r == 2 ? 9 : 16}, .out = 5}));
  }
  std::vector<std::string> messages(3);
  run_ranks(3, [&](int r) {
    try {
      DistributedDataParallel ddp(models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)]);
    } catch (const std::invalid_argument& e) {
      messages[static_cast<size_t>(r)] = e.what();
    }
  });
  // Every rank fails; the message names the first differing parameter and both shapes.
  for (int r = 0; r < 3; ++r) {
    const std::string& m = messages[static_cast<size_t>(r)];
    EXPECT_NE(m.find("same parameters"), std::string::npos) << m;
    EXPECT_NE(m.find(".weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[9, 12]"), std::string::npos) << m;
    EXPECT_NE(m.find("[16, 12]"), std::string::npos) << m;
    EXPECT_NE(m.find("rank 2"), std::string::npos) << m;
  }
}

TEST(DDPErrors, DifferentParameterCountsAreReported) {
  auto groups = make_local_group(2);
  std::vector<std::shared_ptr<nn::Module>> models = {
      make_model(Kind::kMLP, 1), std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 12, .hidden = {16}, .out = 5})};
  std::vector<std::string> messages(2);
  run_ranks(2, [&](int r) {
    try {
      DistributedDataParallel ddp(models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)]);
    } catch (const std::invalid_argument& e) {
      messages[static_cast<size_t>(r)] = e.what();
    }
  });
  EXPECT_NE(messages[0].find("6 parameter tensors on rank 0 and 4 on rank 1"), std::string::npos) << messages[0];
  EXPECT_NE(messages[1].find("4 parameter tensors on rank 1 and 6 on rank 0"), std::string::npos) << messages[1];
}

TEST(DDPErrors, BadArguments) {
  auto pg = make_local_group(1)[0];
  tandem::testing::expect_invalid([&] { DistributedDataParallel(nullptr, pg); }, {"expected a module", "null"});
  tandem::testing::expect_invalid([&] { DistributedDataParallel(four_layers(), nullptr); }, {"process group", "null"});
  tandem::testing::expect_invalid([&] { DistributedDataParallel(four_layers(), pg, {.bucket_cap_mb = 0}); },
                                  {"bucket_cap_mb > 0", "got 0"});
  auto frozen = four_layers();
  for (Tensor& p : frozen->parameters()) p.set_requires_grad(false);
  tandem::testing::expect_invalid([&] { DistributedDataParallel(frozen, pg); }, {"require grad", "got none"});
}

TEST(DDPErrors, ReadyTwiceSuggestsStaticGraph) {
  // A hook that runs backward again through the same parameter (what a reentrant
  // activation checkpoint does) delivers its gradient twice.
  auto pg = make_local_group(1)[0];
  auto model = four_layers();
  DistributedDataParallel ddp(model, pg);
  Tensor x = tandem::testing::random_tensor({2, 16}, 4, DType::kF32);
  Tensor out = ddp.forward(x);
  Tensor extra = (*model)[6]->forward(x).sum();  // the last layer again, outside DDP
  Tensor w = (*model)[6]->parameters()[0];
  bool fired = false;
  w.register_post_accumulate_grad_hook([&](Tensor&) {
    if (fired) return;
    fired = true;
    extra.backward();
  });
  try {
    out.sum().backward();
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("marked ready twice"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("static_graph"), std::string::npos) << e.what();
  }
}

TEST(DDPModule, SyncBuffersGivesEveryRankRankZerosStatistics) {
  auto groups = make_local_group(3);
  std::vector<std::shared_ptr<nn::Module>> models;
  for (int r = 0; r < 3; ++r) models.push_back(make_model(Kind::kCNN, 1));
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(3);
  run_ranks(3, [&](int r) {
    DistributedDataParallel ddp(models[static_cast<size_t>(r)], groups[static_cast<size_t>(r)]);
    // Each rank updates its running statistics from its own batch, outside DDP.
    models[static_cast<size_t>(r)]->forward(global_batch(Kind::kCNN, r, 4).x);
    ddp.sync_buffers();
    got[static_cast<size_t>(r)] = snapshot(*models[static_cast<size_t>(r)]);
  });
  for (int r = 1; r < 3; ++r) expect_same_state(got[static_cast<size_t>(r)], got[0], "rank " + std::to_string(r));
}

TEST(DDPModule, StateDictKeysGainTheModulePrefix) {
  auto pg = make_local_group(1)[0];
  DistributedDataParallel ddp(four_layers(), pg);
  nn::StateDict sd = ddp.state_dict();
  ASSERT_FALSE(sd.empty());
  EXPECT_EQ(sd.front().first, "module.0.weight");
  EXPECT_EQ(ddp.parameters().size(), 8u);
}

}  // namespace
}  // namespace tandem::comm
