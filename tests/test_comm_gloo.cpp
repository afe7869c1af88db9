// Tests of the gloo backend with real worker processes (testing::run_workers
// re-executes this binary once per rank). Workers check every collective against
// values computed locally.
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "comm/gloo.h"
#include "comm/store.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using namespace std::chrono_literals;
using tandem::testing::env_int;
using tandem::testing::expect_all_ok;
using tandem::testing::is_worker;
using tandem::testing::run_workers;
using tandem::testing::worker_gloo_group;
using tandem::testing::worker_store;

// ---- values and checks --------------------------------------------------------------

/// Rank r's element i: small integers (exact in every dtype, sums of 4 ranks too),
/// different ranks winning max/min at different i, never all zero.
double value(DType dtype, int r, int64_t i) {
  int64_t v = (i + 3 * r) % 11;
  return dtype == DType::kU8 ? static_cast<double>(v + 1) : static_cast<double>(v - 5);
}

Tensor rank_tensor(DType dtype, int r, int64_t n, int64_t salt = 0) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = value(dtype, r, i + salt);
  return Tensor::from_vector(v, {n}).to(dtype);
}

double tolerance(DType dtype) {
  switch (dtype) {
    case DType::kF16: return 2e-3;
    case DType::kBF16: return 1e-2;
    case DType::kF32: return 1e-6;
    case DType::kF64: return 1e-12;
    default: return 0.0;
  }
}

/// Compares every element with want(i) to the dtype's tolerance; reports the first miss.
::testing::AssertionResult matches(const Tensor& got, const std::function<double(int64_t)>& want, const std::string& what) {
  std::vector<double> g = got.to_vector<double>();
  const double tol = tolerance(got.dtype());
  for (size_t i = 0; i < g.size(); ++i) {
    double w = want(static_cast<int64_t>(i));
    if (std::abs(g[i] - w) > tol * (1.0 + std::abs(w))) {
      return ::testing::AssertionFailure() << what << " " << dtype_name(got.dtype()) << "[" << g.size() << "] element "
                                           << i << ": got " << g[i] << ", want " << w;
    }
  }
  return ::testing::AssertionSuccess();
}

double reduce_expected(DType dtype, ReduceOp op, int world, int64_t i, int64_t salt = 0) {
  double acc = value(dtype, 0, i + salt);
  for (int r = 1; r < world; ++r) {
    double v = value(dtype, r, i + salt);
    if (op == ReduceOp::kSum || op == ReduceOp::kAvg) acc += v;
    if (op == ReduceOp::kMax) acc = std::max(acc, v);
    if (op == ReduceOp::kMin) acc = std::min(acc, v);
  }
  if (op == ReduceOp::kAvg) acc /= world;
  return acc;
}

/// Every collective on one dtype and element count, checked on this rank.
void check_collectives(ProcessGroup& pg, DType dtype, int64_t n, bool all_ops = true) {
  const int rank = pg.rank(), world = pg.size();
  const std::string tag = std::to_string(world) + " ranks";
  std::vector<ReduceOp> ops = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin};
  if (is_floating(dtype)) ops.push_back(ReduceOp::kAvg);
  if (!all_ops) ops = {ReduceOp::kSum};
  for (ReduceOp op : ops) {
    Tensor t = rank_tensor(dtype, rank, n);
    pg.all_reduce(t, op)->wait();
    EXPECT_TRUE(matches(t, [&](int64_t i) { return reduce_expected(dtype, op, world, i); },
                        std::string("all_reduce ") + reduce_op_name(op) + " " + tag));
  }
  if (!all_ops) return;

  const int root = world - 1;
  Tensor b = rank_tensor(dtype, rank, n);
  pg.broadcast(b, root)->wait();
  EXPECT_TRUE(matches(b, [&](int64_t i) { return value(dtype, root, i); }, "broadcast " + tag));

  std::vector<Tensor> outs;
  for (int r = 0; r < world; ++r) outs.push_back(Tensor::empty({n}, {.dtype = dtype}));
  pg.all_gather(outs, rank_tensor(dtype, rank, n))->wait();
  for (int r = 0; r < world; ++r)
    EXPECT_TRUE(matches(outs[r], [&](int64_t i) { return value(dtype, r, i); }, "all_gather out " + std::to_string(r) + " " + tag));

  // Input j of rank r holds value(r, i + j*n), so the reduction of everyone's input
  // `rank` is reduce_expected at offset rank*n.
  std::vector<ReduceOp> rs_ops = {ReduceOp::kSum, ReduceOp::kMax};
  if (is_floating(dtype)) rs_ops.push_back(ReduceOp::kAvg);
  for (ReduceOp op : rs_ops) {
    std::vector<Tensor> ins;
    for (int j = 0; j < world; ++j) ins.push_back(rank_tensor(dtype, rank, n, j * n));
    Tensor out = Tensor::empty({n}, {.dtype = dtype});
    pg.reduce_scatter(out, ins, op)->wait();
    EXPECT_TRUE(matches(out, [&](int64_t i) { return reduce_expected(dtype, op, world, i, rank * n); },
                        std::string("reduce_scatter ") + reduce_op_name(op) + " " + tag));
  }
}

// ---- worker-only tests (started by the tests below) ----------------------------------

TEST(GlooWorker, Collectives) {
  TANDEM_WORKER_ONLY();
  auto pg = worker_gloo_group(20s);
  ASSERT_EQ(pg->backend(), "gloo");
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI32, DType::kI64, DType::kU8})
    for (int64_t n : {0, 1, 7}) check_collectives(*pg, dtype, n);
  check_collectives(*pg, DType::kF32, 1'000'003);
  check_collectives(*pg, DType::kBF16, 1'000'003, /*all_ops=*/false);
  pg->barrier()->wait();
}

TEST(GlooWorker, CoalescedAndAsync) {
  TANDEM_WORKER_ONLY();
  auto pg = worker_gloo_group(20s);
  const int rank = pg->rank(), world = pg->size();
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
    // Several sizes, one of them empty, reduced as one collective.
    std::vector<int64_t> sizes = {7, 1, 0, 13};
    std::vector<Tensor> list;
    for (size_t k = 0; k < sizes.size(); ++k) list.push_back(rank_tensor(dtype, rank, sizes[k], 100 * k));
    pg->all_reduce(list, ReduceOp::kSum)->wait();
    for (size_t k = 0; k < sizes.size(); ++k)
      EXPECT_TRUE(matches(list[k], [&](int64_t i) { return reduce_expected(dtype, ReduceOp::kSum, world, i, 100 * k); },
                          "coalesced all_reduce item " + std::to_string(k)));
    std::vector<Tensor> blist;
    for (size_t k = 0; k < sizes.size(); ++k) blist.push_back(rank_tensor(dtype, rank, sizes[k], 100 * k));
    pg->broadcast(blist, 0)->wait();
    for (size_t k = 0; k < sizes.size(); ++k)
      EXPECT_TRUE(matches(blist[k], [&](int64_t i) { return value(dtype, 0, i + 100 * k); },
                          "coalesced broadcast item " + std::to_string(k)));
  }
  // Issue several collectives before waiting; they complete in issue order, and
  // waiting out of order is fine.
  std::vector<Tensor> ts;
  std::vector<WorkPtr> works;
  for (int k = 0; k < 5; ++k) {
    ts.push_back(rank_tensor(DType::kF32, rank, 1000, k));
    works.push_back(pg->all_reduce(ts.back(), ReduceOp::kMax));
  }
  works.push_back(pg->barrier());
  for (auto it = works.rbegin(); it != works.rend(); ++it) (*it)->wait();
  for (int k = 0; k < 5; ++k) {
    EXPECT_TRUE(works[k]->is_completed());
    EXPECT_TRUE(matches(ts[k], [&](int64_t i) { return reduce_expected(DType::kF32, ReduceOp::kMax, world, i, k); },
                        "async all_reduce " + std::to_string(k)));
  }
}

/// Rank TANDEM_GLOO_TEST_DYING exits in the middle of a sequence of all-reduces; the
/// others must fail with an error naming the op, themselves and the dead rank, in
/// about the timeout.
TEST(GlooWorker, PeerDiesMidSequence) {
  TANDEM_WORKER_ONLY();
  const auto timeout = 2000ms;
  const int dying = env_int("TANDEM_GLOO_TEST_DYING");
  auto pg = worker_gloo_group(timeout);
  const int rank = pg->rank();
  for (int step = 0; step < 3; ++step) {
    Tensor t = rank_tensor(DType::kF32, rank, 100'000, step);
    pg->all_reduce(t)->wait();
  }
  if (rank == dying) _exit(7);
  const auto start = std::chrono::steady_clock::now();
  Tensor t = rank_tensor(DType::kF32, rank, 100'000);
  try {
    pg->all_reduce(t)->wait();
    ADD_FAILURE() << "all_reduce with a dead peer succeeded";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    std::printf("rank %d reported: %s\n", rank, msg.c_str());
    EXPECT_NE(msg.find("[all_reduce] rank " + std::to_string(rank) + ": peer rank " + std::to_string(dying) +
                       " failed or timed out after 2000 ms"),
              std::string::npos)
        << msg;
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, 3 * timeout) << "the failure took too long to surface";
  // The group stays failed: the next collective errors at once.
  try {
    pg->barrier()->wait();
    ADD_FAILURE() << "barrier after a failure succeeded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("failed in an earlier collective"), std::string::npos) << e.what();
  }
}

/// Debug mode: rank 1 all-reduces one element more than rank 0; both ranks report
/// the mismatch instead of exchanging mismatched buffers.
TEST(GlooWorker, DebugModeReportsMismatch) {
  TANDEM_WORKER_ONLY();
  ProcessGroupOptions options;
  options.timeout = 5s;
  options.debug = true;
  auto pg = make_gloo_group(worker_store(5s), env_int("RANK"), env_int("WORLD_SIZE"), options);
  Tensor ok = rank_tensor(DType::kF32, pg->rank(), 7);
  pg->all_reduce(ok)->wait();
  Tensor t = rank_tensor(DType::kF32, pg->rank(), 7 + pg->rank());
  try {
    pg->all_reduce(t)->wait();
    ADD_FAILURE() << "mismatched all_reduce passed the debug check";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("debug check"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 1 issued all_reduce(float32, 8 elements)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 0 issued all_reduce(float32, 7 elements)"), std::string::npos) << msg;
  }
}

// ---- tests run by ctest ---------------------------------------------------------------

class GlooWorldSize : public ::testing::TestWithParam<int> {};

TEST_P(GlooWorldSize, EveryCollectiveDtypeAndSize) {
  if (is_worker()) GTEST_SKIP();
  expect_all_ok(run_workers("GlooWorker.Collectives", GetParam(), 45s));
}

TEST_P(GlooWorldSize, CoalescedListsAndAsyncWork) {
  if (is_worker()) GTEST_SKIP();
  expect_all_ok(run_workers("GlooWorker.CoalescedAndAsync", GetParam(), 30s));
}

INSTANTIATE_TEST_SUITE_P(Ranks, GlooWorldSize, ::testing::Values(1, 2, 3, 4));

class GlooFailure : public ::testing::TestWithParam<int> {};

TEST_P(GlooFailure, DeadPeerIsNamedOnEverySurvivor) {
  if (is_worker()) GTEST_SKIP();
  const int dying = GetParam();
  std::vector<int> status =
      run_workers("GlooWorker.PeerDiesMidSequence", 3, 20s, {"TANDEM_GLOO_TEST_DYING=" + std::to_string(dying)});
  for (int r = 0; r < 3; ++r) {
    if (r == dying) {
      EXPECT_EQ(status[r], 7) << "rank " << r << " should have exited with status 7";
    } else {
      EXPECT_EQ(status[r], 0) << "rank " << r << " did not report the dead peer " << dying << " as expected";
    }
  }
}

// Rank 2 is an ordinary peer; rank 0 also hosts the store.
INSTANTIATE_TEST_SUITE_P(DyingRank, GlooFailure, ::testing::Values(2, 0));

TEST(GlooDebug, MismatchIsReportedOnEveryRank) {
  if (is_worker()) GTEST_SKIP();
  expect_all_ok(run_workers("GlooWorker.DebugModeReportsMismatch", 2, 20s));
}

// ---- argument errors (one process, world size 1) ---------------------------------------

std::shared_ptr<ProcessGroup> solo_group() { return make_gloo_group(make_hash_store(5s), 0, 1, {.timeout = 5s}); }

TEST(GlooArguments, BadInputsNameWhatWasExpected) {
  if (is_worker()) GTEST_SKIP();
  auto pg = solo_group();
  Tensor t = rank_tensor(DType::kF32, 0, 4);
  testing::expect_invalid([&] { pg->broadcast(t, 1); }, {"[broadcast]", "root", "[0, 1)", "got 1"});
  testing::expect_invalid([&] { pg->all_gather({t, t}, t); }, {"[all_gather]", "1", "got 2"});
  testing::expect_invalid([&] { pg->reduce_scatter(t, {rank_tensor(DType::kF32, 0, 5)}); },
                          {"[reduce_scatter]", "[4]", "[5]"});
  testing::expect_invalid([&] { pg->all_reduce(std::vector<Tensor>{}); }, {"[all_reduce]", "got"});
}

TEST(GlooArguments, CudaTensorsPointToOtherBackends) {
  if (is_worker()) GTEST_SKIP();
  TANDEM_REQUIRE_CUDA();
  auto pg = solo_group();
  Tensor t = rank_tensor(DType::kF32, 0, 4).to(Device::cuda());
  testing::expect_invalid([&] { pg->all_reduce(t); }, {"[all_reduce]", "gloo", "CPU", "cuda", "nccl", "local"});
}

TEST(GlooSolo, WorldSizeOneIsIdentity) {
  if (is_worker()) GTEST_SKIP();
  auto pg = solo_group();
  Tensor t = rank_tensor(DType::kF64, 0, 9);
  pg->all_reduce(t, ReduceOp::kAvg)->wait();
  EXPECT_TRUE(matches(t, [](int64_t i) { return value(DType::kF64, 0, i); }, "solo avg"));
  pg->barrier()->wait();
}

}  // namespace
}  // namespace tandem::comm
