// Tests of data::DistributedSampler (padding, truncation, striding, reshuffling,
// evaluation shards, use inside a DataLoader) and of comm/metrics.h (sums and counts
// reduced across ranks give the single-process accuracy exactly).
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <memory>
#include <set>
#include <thread>

#include "comm/local.h"
#include "comm/metrics.h"
#include "comm/sampler.h"
#include "data/dataloader.h"
#include "data/dataset.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::data;

namespace {

/// The padded (or truncated) order of one epoch, rebuilt from every rank's shard:
/// position rank + k*R holds shard[rank][k].
std::vector<int64_t> interleave(int64_t n, int replicas, DistributedSamplerOptions options, int64_t epoch) {
  std::vector<std::vector<int64_t>> shards;
  for (int r = 0; r < replicas; ++r) shards.push_back(DistributedSampler(n, replicas, r, options).indices(epoch));
  std::vector<int64_t> order;
  for (size_t k = 0; k < shards[0].size(); ++k)
    for (int r = 0; r < replicas; ++r) order.push_back(shards[static_cast<size_t>(r)][k]);
  return order;
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  return v;
}

const std::vector<int64_t> kSizes = {0, 1, 2, 7, 10, 64, 101};
const std::vector<int> kReplicas = {1, 2, 3, 4, 8};

}  // namespace

// ---- training mode --------------------------------------------------------------------------

TEST(DistributedSampler, TrainingShardsHaveEqualSizes) {
  for (int64_t n : kSizes)
    for (int replicas : kReplicas)
      for (int r = 0; r < replicas; ++r) {
        DistributedSampler s(n, replicas, r);
        const int64_t want = (n + replicas - 1) / replicas;
        EXPECT_EQ(s.size(), want) << "n=" << n << " R=" << replicas << " rank=" << r;
        EXPECT_EQ(static_cast<int64_t>(s.indices(3).size()), want) << "n=" << n << " R=" << replicas;
      }
}

TEST(DistributedSampler, UnionOfShardsCoversTheDataSet) {
  for (int64_t n : kSizes)
    for (int replicas : kReplicas) {
      std::vector<int64_t> all = interleave(n, replicas, {.seed = 5}, 2);
      std::set<int64_t> seen(all.begin(), all.end());
      EXPECT_EQ(static_cast<int64_t>(seen.size()), n) << "n=" << n << " R=" << replicas;
      if (n > 0) {
        EXPECT_EQ(*seen.begin(), 0);
        EXPECT_EQ(*seen.rbegin(), n - 1);
      }
    }
}

TEST(DistributedSampler, PaddingRepeatsTheHeadOfThePermutation) {
  // n = 10, R = 4: 12 positions, the last two repeat the first two of the permutation.
  std::vector<int64_t> padded = interleave(10, 4, {.seed = 9}, 1);
  std::vector<int64_t> perm = shuffled_indices(10, 9 + 1);
  ASSERT_EQ(padded.size(), 12u);
  EXPECT_EQ(std::vector<int64_t>(padded.begin(), padded.begin() + 10), perm);
  EXPECT_EQ(padded[10], perm[0]);
  EXPECT_EQ(padded[11], perm[1]);

  // Without shuffling the shards are visible by hand: 0..9, 0, 1 strided by 4.
  EXPECT_EQ(DistributedSampler(10, 4, 0, {.shuffle = false}).indices(0), (std::vector<int64_t>{0, 4, 8}));
  EXPECT_EQ(DistributedSampler(10, 4, 2, {.shuffle = false}).indices(0), (std::vector<int64_t>{2, 6, 0}));
  EXPECT_EQ(DistributedSampler(10, 4, 3, {.shuffle = false}).indices(0), (std::vector<int64_t>{3, 7, 1}));
}

TEST(DistributedSampler, PaddingWrapsWhenReplicasOutnumberSamples) {
  // n = 2, R = 5: positions 0..4 hold 0, 1, 0, 1, 0.
  EXPECT_EQ(interleave(2, 5, {.shuffle = false}, 0), (std::vector<int64_t>{0, 1, 0, 1, 0}));
  // An empty data set gives every rank nothing.
  EXPECT_TRUE(DistributedSampler(0, 3, 1).indices(0).empty());
}

TEST(DistributedSampler, ShardsAreStridedByRank) {
  std::vector<int64_t> perm = shuffled_indices(23, 4);
  for (int r = 0; r < 3; ++r) {
    std::vector<int64_t> shard = DistributedSampler(23, 3, r, {.seed = 4}).indices(0);
    for (size_t k = 0; k < shard.size(); ++k)
      EXPECT_EQ(shard[k], perm[(static_cast<size_t>(r) + 3 * k) % 23]) << "rank " << r << " k " << k;
  }
}

TEST(DistributedSampler, DropLastTruncatesWithoutDuplicates) {
  for (int64_t n : kSizes)
    for (int replicas : kReplicas) {
      DistributedSamplerOptions options{.seed = 2, .drop_last = true};
      EXPECT_EQ(DistributedSampler(n, replicas, 0, options).size(), n / replicas);
      std::vector<int64_t> all = interleave(n, replicas, options, 0);
      ASSERT_EQ(static_cast<int64_t>(all.size()), n / replicas * replicas) << "n=" << n << " R=" << replicas;
      // The first size*R elements of the permutation, each once.
      std::vector<int64_t> perm = shuffled_indices(n, 2);
      EXPECT_EQ(all, std::vector<int64_t>(perm.begin(), perm.begin() + static_cast<int64_t>(all.size())));
    }
}

TEST(DistributedSampler, ReshufflesPerEpochAndIsDeterministic) {
  DistributedSampler a(100, 4, 1, {.seed = 11});
  DistributedSampler b(100, 4, 1, {.seed = 11});
  DistributedSampler c(100, 4, 1, {.seed = 12});
  EXPECT_EQ(a.indices(0), a.indices(0));  // across calls
  EXPECT_EQ(a.indices(0), b.indices(0));  // across instances (every rank agrees on the permutation)
  EXPECT_EQ(a.indices(5), b.indices(5));
  EXPECT_NE(a.indices(0), a.indices(1));  // new epoch, new order
  EXPECT_NE(a.indices(0), c.indices(0));  // new seed, new order
  // seed + epoch: seed 11 at epoch 1 is seed 12 at epoch 0.
  EXPECT_EQ(a.indices(1), c.indices(0));
  // Without shuffling every epoch is the same.
  DistributedSampler s(100, 4, 1, {.shuffle = false});
  EXPECT_EQ(s.indices(0), s.indices(7));
}

// ---- evaluation mode ------------------------------------------------------------------------

TEST(DistributedSampler, EvaluationCoversExactlyWithoutDuplicates) {
  for (bool shuffle : {false, true})
    for (int64_t n : kSizes)
      for (int replicas : kReplicas) {
        DistributedSamplerOptions options{.shuffle = shuffle, .seed = 3, .evaluation = true};
        std::vector<int64_t> concatenated;
        int64_t smallest = n, largest = 0;
        for (int r = 0; r < replicas; ++r) {
          DistributedSampler s(n, replicas, r, options);
          std::vector<int64_t> shard = s.indices(1);
          EXPECT_EQ(static_cast<int64_t>(shard.size()), s.size());
          smallest = std::min<int64_t>(smallest, s.size());
          largest = std::max<int64_t>(largest, s.size());
          concatenated.insert(concatenated.end(), shard.begin(), shard.end());
        }
        EXPECT_LE(largest - smallest, 1) << "n=" << n << " R=" << replicas;
        // Shards in rank order are the epoch's order itself: every sample exactly once.
        EXPECT_EQ(concatenated, shuffle ? shuffled_indices(n, 3 + 1) : iota(n)) << "n=" << n << " R=" << replicas;
      }
}

TEST(DistributedSampler, EvaluationShardSizes) {
  // 10 samples over 4 ranks: 3, 3, 2, 2 in order.
  DistributedSamplerOptions eval{.shuffle = false, .evaluation = true};
  EXPECT_EQ(DistributedSampler(10, 4, 0, eval).indices(0), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(DistributedSampler(10, 4, 1, eval).indices(0), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(DistributedSampler(10, 4, 2, eval).indices(0), (std::vector<int64_t>{6, 7}));
  EXPECT_EQ(DistributedSampler(10, 4, 3, eval).indices(0), (std::vector<int64_t>{8, 9}));
  // More ranks than samples: the last ranks get nothing rather than a duplicate.
  EXPECT_EQ(DistributedSampler(2, 4, 1, eval).indices(0), (std::vector<int64_t>{1}));
  EXPECT_TRUE(DistributedSampler(2, 4, 3, eval).indices(0).empty());
}

// ---- errors ----------------------------------------------------------------------------------

TEST(DistributedSampler, RejectsBadArguments) {
  tandem::testing::expect_invalid([] { DistributedSampler(10, 4, 4); }, {"[DistributedSampler]", "rank in [0, 4)", "got 4"});
  tandem::testing::expect_invalid([] { DistributedSampler(10, 4, -1); }, {"rank in [0, 4)", "got -1"});
  tandem::testing::expect_invalid([] { DistributedSampler(10, 0, 0); }, {"num_replicas >= 1", "got 0"});
  tandem::testing::expect_invalid([] { DistributedSampler(-1, 2, 0); }, {"dataset size >= 0", "got -1"});
  tandem::testing::expect_invalid([] { DistributedSampler(10, 2, 0, {.drop_last = true, .evaluation = true}); },
                          {"evaluation", "drop_last = false", "got true"});
}

// ---- inside a DataLoader ---------------------------------------------------------------------

namespace {

/// Sample i has input i (f64) and target i (int64).
std::shared_ptr<TensorDataset> index_dataset(int64_t n) {
  std::vector<double> x(static_cast<size_t>(n));
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    x[static_cast<size_t>(i)] = static_cast<double>(i);
    y[static_cast<size_t>(i)] = i;
  }
  return std::make_shared<TensorDataset>(Tensor::from_vector(x, {n, 1}), Tensor::from_vector(y, {n}));
}

std::vector<int64_t> run_epoch(DataLoader& loader) {
  std::vector<int64_t> seen;
  for (Batch& b : loader) {
    auto t = b.target.to_vector<int64_t>();
    auto x = b.input.to_vector<double>();
    for (size_t i = 0; i < t.size(); ++i) EXPECT_EQ(x[i], static_cast<double>(t[i]));
    seen.insert(seen.end(), t.begin(), t.end());
  }
  return seen;
}

}  // namespace

TEST(DistributedSampler, DrivesADataLoaderPerEpoch) {
  auto ds = index_dataset(29);
  std::multiset<int64_t> epoch0;
  for (int r = 0; r < 3; ++r) {
    auto sampler = std::make_shared<DistributedSampler>(29, 3, r, DistributedSamplerOptions{.seed = 6});
    DataLoader loader(ds, {.batch_size = 4}, sampler);
    EXPECT_EQ(loader.num_batches(), 3);  // 10 samples per rank
    std::vector<int64_t> first = run_epoch(loader);
    EXPECT_EQ(first, sampler->indices(0));
    // The loader's epoch drives the sampler: the next loop is epoch 1's shard.
    EXPECT_EQ(run_epoch(loader), sampler->indices(1));
    loader.set_epoch(0);
    EXPECT_EQ(run_epoch(loader), first);
    epoch0.insert(first.begin(), first.end());
  }
  // 30 positions over 29 samples: one sample (the head of the permutation) twice.
  EXPECT_EQ(epoch0.size(), 30u);
  EXPECT_EQ(std::set<int64_t>(epoch0.begin(), epoch0.end()).size(), 29u);
  EXPECT_EQ(epoch0.count(shuffled_indices(29, 6)[0]), 2u);
}

TEST(DistributedSampler, EvaluationDrivesADataLoader) {
  auto ds = index_dataset(10);
  std::vector<int64_t> all;
  for (int r = 0; r < 4; ++r) {
    auto sampler = std::make_shared<DistributedSampler>(
        10, 4, r, DistributedSamplerOptions{.shuffle = false, .evaluation = true});
    DataLoader loader(ds, {.batch_size = 2, .shuffle = false}, sampler);
    std::vector<int64_t> shard = run_epoch(loader);
    all.insert(all.end(), shard.begin(), shard.end());
  }
  EXPECT_EQ(all, iota(10));
}

// ---- metrics ---------------------------------------------------------------------------------

namespace {

/// A stand-in for a real backend: ranks are threads; all_reduce (sum, CPU f64 only)
/// meets every rank at a barrier. Enough to test metric reduction on its own.
class ThreadWorld {
 public:
  explicit ThreadWorld(int size) : size_(size), slots_(static_cast<size_t>(size)), barrier_(size) {}
  int size() const { return size_; }

  void sum(int rank, Tensor t) {
    slots_[static_cast<size_t>(rank)] = t.to_vector<double>();
    barrier_.arrive_and_wait();
    std::vector<double> total(slots_[0].size(), 0.0);
    for (const auto& s : slots_)
      for (size_t i = 0; i < s.size(); ++i) total[i] += s[i];
    barrier_.arrive_and_wait();  // nobody overwrites a slot before everyone has read it
    t.copy_(Tensor::from_vector(total, t.shape()));
  }

 private:
  int size_;
  std::vector<std::vector<double>> slots_;
  std::barrier<> barrier_;
};

class DoneWork : public comm::Work {
 public:
  void wait() override {}
  bool is_completed() override { return true; }
};

class ThreadGroup : public comm::ProcessGroup {
 public:
  ThreadGroup(ThreadWorld& world, int rank) : ProcessGroup(rank, world.size(), {}), world_(world) {}
  std::string backend() const override { return "test"; }
  comm::WorkPtr all_reduce(const std::vector<Tensor>& tensors, comm::ReduceOp op) override {
    EXPECT_EQ(tensors.size(), 1u);
    EXPECT_EQ(op, comm::ReduceOp::kSum);
    EXPECT_EQ(tensors[0].dtype(), DType::kF64);
    world_.sum(rank(), tensors[0]);
    return std::make_shared<DoneWork>();
  }
  comm::WorkPtr broadcast(const std::vector<Tensor>&, int) override { throw std::logic_error("unused"); }
  comm::WorkPtr all_gather(const std::vector<Tensor>&, const Tensor&) override { throw std::logic_error("unused"); }
  comm::WorkPtr reduce_scatter(const Tensor&, const std::vector<Tensor>&, comm::ReduceOp) override {
    throw std::logic_error("unused");
  }
  comm::WorkPtr barrier() override { throw std::logic_error("unused"); }

 private:
  ThreadWorld& world_;
};

/// Per-sample loss and correctness of a made-up model on `n` samples.
double sample_loss(int64_t i) { return 0.1 + static_cast<double>((i * 37) % 17) / 7.0; }
bool sample_correct(int64_t i) { return (i * 13) % 5 < 3; }

}  // namespace

TEST(Metrics, DistributedAccuracyEqualsSingleProcessExactly) {
  const int64_t n = 103;
  comm::MetricSums single;
  for (int64_t i = 0; i < n; ++i) {
    single.loss_sum += sample_loss(i);
    single.correct += sample_correct(i) ? 1 : 0;
    single.count += 1;
  }
  for (int replicas : {1, 2, 3, 4}) {
    ThreadWorld world(replicas);
    std::vector<comm::MetricSums> results(static_cast<size_t>(replicas));
    std::vector<std::thread> threads;
    for (int r = 0; r < replicas; ++r) {
      threads.emplace_back([&, r] {
        ThreadGroup group(world, r);
        DistributedSampler sampler(n, replicas, r, {.seed = 1, .evaluation = true});
        comm::MetricSums local;
        for (int64_t i : sampler.indices(0)) {
          local.loss_sum += sample_loss(i);
          local.correct += sample_correct(i) ? 1 : 0;
          local.count += 1;
        }
        results[static_cast<size_t>(r)] = comm::all_reduce_metrics(group, local);
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < replicas; ++r) {
      const comm::MetricSums& got = results[static_cast<size_t>(r)];
      EXPECT_EQ(got.count, n) << "R=" << replicas << " rank " << r;
      EXPECT_EQ(got.correct, single.correct) << "R=" << replicas << " rank " << r;
      EXPECT_EQ(got.accuracy(), single.accuracy()) << "R=" << replicas << " rank " << r;
      // Loss sums add in another order: equal up to rounding.
      EXPECT_NEAR(got.loss_sum, single.loss_sum, 1e-12 * single.loss_sum);
      EXPECT_NEAR(got.mean_loss(), single.mean_loss(), 1e-12);
    }
  }
}

TEST(Metrics, AllReduceSumsAddsEveryRanksVector) {
  ThreadWorld world(3);
  std::vector<std::vector<double>> results(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r)
    threads.emplace_back([&, r] {
      ThreadGroup group(world, r);
      results[static_cast<size_t>(r)] = comm::all_reduce_sums(group, {1.0 * r, 0.5, -2.0 * r, 1e15});
    });
  for (auto& t : threads) t.join();
  for (const auto& v : results) EXPECT_EQ(v, (std::vector<double>{3.0, 1.5, -6.0, 3e15}));
}

TEST(Metrics, EmptyCountsAndErrors) {
  comm::MetricSums none;
  EXPECT_EQ(none.accuracy(), 0.0);
  EXPECT_EQ(none.mean_loss(), 0.0);
  ThreadWorld world(1);
  ThreadGroup group(world, 0);
  EXPECT_TRUE(comm::all_reduce_sums(group, {}).empty());
  comm::MetricSums huge{.loss_sum = 0.0, .correct = 0, .count = (int64_t{1} << 53) + 1};
  tandem::testing::expect_invalid([&] { comm::all_reduce_metrics(group, huge); }, {"[all_reduce_metrics]", "count", "2^53"});
}

TEST(Metrics, LocalBackendGivesTheSingleProcessAccuracy) {
  const int64_t n = 57;
  comm::MetricSums single;
  for (int64_t i = 0; i < n; ++i) {
    single.loss_sum += sample_loss(i);
    single.correct += sample_correct(i) ? 1 : 0;
    single.count += 1;
  }
  for (int replicas : {1, 2, 3, 4}) {
    auto groups = comm::make_local_group(replicas, {.timeout = std::chrono::seconds(10)});
    std::vector<comm::MetricSums> results(static_cast<size_t>(replicas));
    std::vector<std::thread> threads;
    for (int r = 0; r < replicas; ++r)
      threads.emplace_back([&, r] {
        DistributedSampler sampler(n, replicas, r, {.seed = 2, .evaluation = true});
        comm::MetricSums local;
        for (int64_t i : sampler.indices(0)) {
          local.loss_sum += sample_loss(i);
          local.correct += sample_correct(i) ? 1 : 0;
          local.count += 1;
        }
        results[static_cast<size_t>(r)] = comm::all_reduce_metrics(*groups[static_cast<size_t>(r)], local);
      });
    for (auto& t : threads) t.join();
    for (const comm::MetricSums& got : results) {
      EXPECT_EQ(got.count, n) << "R=" << replicas;
      EXPECT_EQ(got.correct, single.correct) << "R=" << replicas;
      EXPECT_EQ(got.accuracy(), single.accuracy()) << "R=" << replicas;
      EXPECT_NEAR(got.loss_sum, single.loss_sum, 1e-12 * single.loss_sum);
    }
  }
}
