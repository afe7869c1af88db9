// The local backend on CPU tensors, one thread per rank: every collective against
// values computed here, over dtypes, sizes and world sizes 1-4; coalesced lists;
// argument errors; timeouts naming the missing rank; the debug-mode check.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/collective_util.h"
#include "comm/debug_check.h"
#include "comm/local.h"
#include "comm/store.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using tandem::testing::expect_invalid;

const std::vector<DType> kDTypes = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI32, DType::kI64};
const std::vector<int64_t> kSizes = {0, 1, 7};
constexpr int64_t kBig = 1'000'003;

using tandem::testing::run_ranks;

// Values that are small integers (or halves), exact in every dtype tested, so sums
// and averages are known exactly: value(i) = a + i % 5.
std::vector<double> pattern(double a, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = a + static_cast<double>(i % 5);
  return v;
}

Tensor make(const std::vector<double>& values, const Shape& shape, DType dtype) {
  return Tensor::from_vector(values, shape).to(dtype);
}

// Exact comparison reporting the first differing element (the values are exact).
::testing::AssertionResult equals(const Tensor& got, const std::vector<double>& want) {
  std::vector<double> g = got.to_vector<double>();
  if (g.size() != want.size())
    return ::testing::AssertionFailure() << "size " << g.size() << " != " << want.size();
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i] != want[i])
      return ::testing::AssertionFailure() << "element " << i << ": got " << g[i] << ", want " << want[i] << " ("
                                           << dtype_name(got.dtype()) << ")";
  return ::testing::AssertionSuccess();
}

// The all_reduce of pattern(r + 1, n) over `size` ranks.
std::vector<double> reduced_pattern(ReduceOp op, int size, int64_t n) {
  const double s = size;
  std::vector<double> v(static_cast<size_t>(n));
  switch (op) {
    case ReduceOp::kSum:  // Σ_r (r+1+m) = size(size+1)/2 + size·m
    case ReduceOp::kAvg:
      for (int64_t i = 0; i < n; ++i) {
        const double sum = s * (s + 1) / 2 + s * static_cast<double>(i % 5);
        v[static_cast<size_t>(i)] = op == ReduceOp::kSum ? sum : sum / s;
      }
      return v;
    case ReduceOp::kMax: return pattern(s, n);
    case ReduceOp::kMin: return pattern(1, n);
  }
  return {};
}

std::string case_name(const char* op, DType dtype, int64_t n, int size) {
  return std::string(op) + " " + std::string(dtype_name(dtype)) + " n=" + std::to_string(n) + " world=" + std::to_string(size);
}

void check_all_reduce(ReduceOp op, DType dtype, int64_t n, int size) {
  auto group = make_local_group(size);
  run_ranks(size, [&](int r) {
    Tensor t = make(pattern(r + 1, n), {n}, dtype);
    group[static_cast<size_t>(r)]->all_reduce(t, op)->wait();
    EXPECT_TRUE(equals(t, reduced_pattern(op, size, n))) << case_name(reduce_op_name(op), dtype, n, size);
  });
}

TEST(CommLocal, AllReduceEveryOpDTypeSizeAndWorldSize) {
  for (int size = 1; size <= 4; ++size)
    for (DType dtype : kDTypes)
      for (int64_t n : kSizes)
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
          if (op == ReduceOp::kAvg && !is_floating(dtype)) continue;  // rejected, see AvgOnIntegersIsRejected
          check_all_reduce(op, dtype, n, size);
        }
}

TEST(CommLocal, AllReduceLargeBuffers) {
  check_all_reduce(ReduceOp::kSum, DType::kF32, kBig, 4);
  check_all_reduce(ReduceOp::kAvg, DType::kBF16, kBig, 4);
  check_all_reduce(ReduceOp::kMax, DType::kI64, kBig, 3);
  check_all_reduce(ReduceOp::kMin, DType::kF16, kBig, 2);
}

TEST(CommLocal, AllReduceIsBitwiseIdenticalOnEveryRank) {
  // Rounding-prone random values: every rank must still get the same bits, the sum
  // taken in rank order.
  const int size = 3;
  const int64_t n = 1000;
  auto group = make_local_group(size);
  std::vector<Tensor> results(size);
  run_ranks(size, [&](int r) {
    Tensor t = tandem::testing::random_tensor({n}, 100 + static_cast<uint64_t>(r), DType::kF32);
    group[static_cast<size_t>(r)]->all_reduce(t)->wait();
    results[static_cast<size_t>(r)] = t;
  });
  std::vector<float> want(static_cast<size_t>(n), 0.0f);
  for (int r = 0; r < size; ++r) {
    std::vector<float> v = tandem::testing::random_tensor({n}, 100 + static_cast<uint64_t>(r), DType::kF32).to_vector<float>();
    for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] += v[static_cast<size_t>(i)];
  }
  for (int r = 0; r < size; ++r) EXPECT_EQ(results[static_cast<size_t>(r)].to_vector<float>(), want) << "rank " << r;
}

TEST(CommLocal, AllReduceCoalescedListOfMixedSizes) {
  const std::vector<Shape> shapes = {{3, 2}, {}, {0}, {7}, {1, 1, 4}};
  for (int size = 1; size <= 4; ++size)
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64})
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
        auto group = make_local_group(size);
        run_ranks(size, [&](int r) {
          std::vector<Tensor> list;
          for (size_t j = 0; j < shapes.size(); ++j)
            list.push_back(make(pattern((r + 1) * (static_cast<double>(j) + 1), shape_numel(shapes[j])), shapes[j], dtype));
          group[static_cast<size_t>(r)]->all_reduce(list, op)->wait();
          for (size_t j = 0; j < shapes.size(); ++j) {
            const int64_t n = shape_numel(shapes[j]);
            const double s = size, f = static_cast<double>(j) + 1;
            // Σ_r ((r+1)f + m) = f·s(s+1)/2 + s·m;  max: s·f + m
            std::vector<double> want(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i)
              want[static_cast<size_t>(i)] = op == ReduceOp::kSum ? f * s * (s + 1) / 2 + s * static_cast<double>(i % 5)
                                                                  : s * f + static_cast<double>(i % 5);
            EXPECT_EQ(list[j].shape(), shapes[j]);
            EXPECT_TRUE(equals(list[j], want)) << "tensor " << j << " " << case_name(reduce_op_name(op), dtype, n, size);
          }
        });
      }
}

void check_broadcast(DType dtype, int64_t n, int size) {
  for (int root = 0; root < size; ++root) {
    auto group = make_local_group(size);
    run_ranks(size, [&](int r) {
      Tensor t = make(pattern(r + 1, n), {n}, dtype);
      group[static_cast<size_t>(r)]->broadcast(t, root)->wait();
      EXPECT_TRUE(equals(t, pattern(root + 1, n))) << case_name("broadcast", dtype, n, size) << " root " << root;
    });
  }
}

TEST(CommLocal, BroadcastFromEveryRoot) {
  for (int size = 1; size <= 4; ++size)
    for (DType dtype : kDTypes)
      for (int64_t n : kSizes) check_broadcast(dtype, n, size);
  check_broadcast(DType::kF64, kBig, 3);
}

TEST(CommLocal, BroadcastCoalescedList) {
  const int size = 3, root = 2;
  auto group = make_local_group(size);
  run_ranks(size, [&](int r) {
    std::vector<Tensor> list = {make(pattern(r + 1, 5), {5}, DType::kF16), make(pattern(10 * (r + 1), 12), {3, 4}, DType::kF16)};
    group[static_cast<size_t>(r)]->broadcast(list, root)->wait();
    EXPECT_TRUE(equals(list[0], pattern(root + 1, 5)));
    EXPECT_TRUE(equals(list[1], pattern(10 * (root + 1), 12)));
  });
}

void check_all_gather(DType dtype, int64_t n, int size) {
  auto group = make_local_group(size);
  run_ranks(size, [&](int r) {
    // Each rank's content differs (its own offset), so a misplaced block shows.
    Tensor input = make(pattern(7.0 * r + 1, n), {n}, dtype);
    std::vector<Tensor> outputs;
    for (int k = 0; k < size; ++k) outputs.push_back(make(pattern(-1, n), {n}, dtype));
    group[static_cast<size_t>(r)]->all_gather(outputs, input)->wait();
    for (int k = 0; k < size; ++k)
      EXPECT_TRUE(equals(outputs[static_cast<size_t>(k)], pattern(7.0 * k + 1, n)))
          << case_name("all_gather", dtype, n, size) << " block " << k;
    EXPECT_TRUE(equals(input, pattern(7.0 * r + 1, n)));
  });
}

TEST(CommLocal, AllGatherEveryDTypeSizeAndWorldSize) {
  for (int size = 1; size <= 4; ++size)
    for (DType dtype : kDTypes)
      for (int64_t n : kSizes) check_all_gather(dtype, n, size);
  check_all_gather(DType::kI32, kBig, 2);
}

void check_reduce_scatter(ReduceOp op, DType dtype, int64_t n, int size) {
  auto group = make_local_group(size);
  run_ranks(size, [&](int r) {
    // inputs[j] on rank r holds (r+1)(j+1) + m: each block differs, so rank j must
    // receive exactly block j reduced.
    std::vector<Tensor> inputs;
    for (int j = 0; j < size; ++j) inputs.push_back(make(pattern((r + 1.0) * (j + 1.0), n), {n}, dtype));
    Tensor output = make(pattern(-1, n), {n}, dtype);
    group[static_cast<size_t>(r)]->reduce_scatter(output, inputs, op)->wait();
    const double s = size, f = r + 1.0;
    std::vector<double> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const double m = static_cast<double>(i % 5);
      switch (op) {
        case ReduceOp::kSum: want[static_cast<size_t>(i)] = f * s * (s + 1) / 2 + s * m; break;
        case ReduceOp::kAvg: want[static_cast<size_t>(i)] = (f * s * (s + 1) / 2 + s * m) / s; break;
        case ReduceOp::kMax: want[static_cast<size_t>(i)] = s * f + m; break;
        case ReduceOp::kMin: want[static_cast<size_t>(i)] = f + m; break;
      }
    }
    EXPECT_TRUE(equals(output, want)) << case_name("reduce_scatter", dtype, n, size) << " " << reduce_op_name(op);
  });
}

TEST(CommLocal, ReduceScatterEveryOpDTypeSizeAndWorldSize) {
  for (int size = 1; size <= 4; ++size)
    for (DType dtype : kDTypes)
      for (int64_t n : kSizes)
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
          if (op == ReduceOp::kAvg && !is_floating(dtype)) continue;
          check_reduce_scatter(op, dtype, n, size);
        }
  check_reduce_scatter(ReduceOp::kSum, DType::kF32, kBig, 4);
}

TEST(CommLocal, ReduceScatterOutputMayAliasOwnInput) {
  // A common layout: each rank's output is its own block of the input buffer.
  const int size = 3;
  const int64_t n = 4;
  auto group = make_local_group(size);
  run_ranks(size, [&](int r) {
    std::vector<Tensor> inputs;
    for (int j = 0; j < size; ++j) inputs.push_back(make(pattern((r + 1.0) * (j + 1.0), n), {n}, DType::kF32));
    Tensor output = inputs[static_cast<size_t>(r)];
    group[static_cast<size_t>(r)]->reduce_scatter(output, inputs)->wait();
    std::vector<double> want(static_cast<size_t>(n));  // f·s(s+1)/2 + s·m with f = r+1, s = 3
    for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] = (r + 1.0) * 6 + 3.0 * static_cast<double>(i % 5);
    EXPECT_TRUE(equals(output, want)) << "rank " << r;
  });
}

TEST(CommLocal, BarrierHoldsEveryRankUntilAllArrive) {
  const int size = 4, rounds = 20;
  auto group = make_local_group(size);
  std::atomic<int> arrived{0};
  run_ranks(size, [&](int r) {
    for (int round = 0; round < rounds; ++round) {
      if (r == round % size) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // a late rank
      arrived.fetch_add(1);
      group[static_cast<size_t>(r)]->barrier()->wait();
      EXPECT_GE(arrived.load(), (round + 1) * size) << "rank " << r << " left barrier " << round << " early";
    }
  });
}

TEST(CommLocal, WorkIsCompletedAndGroupReportsItself) {
  auto group = make_local_group(2);
  EXPECT_EQ(group.size(), 2u);
  EXPECT_EQ(group[1]->rank(), 1);
  EXPECT_EQ(group[1]->size(), 2);
  EXPECT_EQ(group[0]->backend(), "local");
  run_ranks(2, [&](int r) {
    Tensor t = make(pattern(1, 3), {3}, DType::kF32);
    WorkPtr work = group[static_cast<size_t>(r)]->all_reduce(t);
    EXPECT_TRUE(work->is_completed());
    work->wait();
    work->wait();  // waiting twice is harmless
  });
}

// ---- argument errors -----------------------------------------------------------------

TEST(CommLocal, ArgumentErrorsNameTheOpAndWhatWasWrong) {
  auto group = make_local_group(2);
  ProcessGroup& pg = *group[0];
  Tensor f = make(pattern(1, 3), {3}, DType::kF32);
  Tensor d = make(pattern(1, 3), {3}, DType::kF64);
  Tensor i = make(pattern(1, 3), {3}, DType::kI32);
  Tensor four = make(pattern(1, 4), {4}, DType::kF32);

  expect_invalid([&] { pg.all_reduce(std::vector<Tensor>{}); }, {"[all_reduce]", "at least one tensor", "empty"});
  expect_invalid([&] { pg.all_reduce(std::vector<Tensor>{f, Tensor()}); }, {"[all_reduce]", "tensors[1]", "undefined"});
  expect_invalid([&] { pg.all_reduce(std::vector<Tensor>{f, d}); }, {"[all_reduce]", "tensors[1]", "float32", "float64"});
  expect_invalid([&] { pg.all_reduce(i, ReduceOp::kAvg); }, {"[all_reduce]", "floating dtype for avg", "int32"});
  expect_invalid([&] { pg.broadcast(f, 2); }, {"[broadcast]", "root in [0, 2)", "got 2"});
  expect_invalid([&] { pg.broadcast(f, -1); }, {"[broadcast]", "root in [0, 2)", "got -1"});
  expect_invalid([&] { pg.all_gather({f}, f); }, {"[all_gather]", "2 outputs", "got 1"});
  expect_invalid([&] { pg.all_gather({f, four}, f); }, {"[all_gather]", "outputs[1]", "[3]", "[4]"});
  expect_invalid([&] { pg.all_gather({f, d}, f); }, {"[all_gather]", "outputs[1]", "float32", "float64"});
  expect_invalid([&] { pg.all_gather({f, f}, Tensor()); }, {"[all_gather]", "input", "undefined"});
  expect_invalid([&] { pg.reduce_scatter(f, {f, f, f}); }, {"[reduce_scatter]", "2 inputs", "got 3"});
  expect_invalid([&] { pg.reduce_scatter(f, {d, f}); }, {"[reduce_scatter]", "inputs[0]", "float32", "float64"});
  expect_invalid([&] { pg.reduce_scatter(i, {i, i}, ReduceOp::kAvg); }, {"[reduce_scatter]", "avg", "int32"});
  expect_invalid([&] { make_local_group(0); }, {"[make_local_group]", ">= 1", "got 0"});
  expect_invalid([&] { make_local_group(2, {.timeout = std::chrono::milliseconds(0)}); }, {"positive timeout", "0 ms"});
}

TEST(CommLocal, GroupStaysUsableAfterAnArgumentError) {
  auto group = make_local_group(2);
  run_ranks(2, [&](int r) {
    Tensor t = make(pattern(r + 1, 7), {7}, DType::kF32);
    EXPECT_THROW(group[static_cast<size_t>(r)]->broadcast(t, 5), std::invalid_argument);
    group[static_cast<size_t>(r)]->all_reduce(t)->wait();
    EXPECT_TRUE(equals(t, reduced_pattern(ReduceOp::kSum, 2, 7)));
  });
}

// ---- helpers of collective_util.h ---------------------------------------------------

TEST(CommUtil, FlattenAndUnflattenRoundTrip) {
  std::vector<Tensor> list = {make(pattern(1, 6), {2, 3}, DType::kF16), make({9}, {}, DType::kF16),
                              make({}, {0}, DType::kF16), make(pattern(20, 4), {4}, DType::kF16)};
  Tensor flat = flatten_tensors(list);
  EXPECT_EQ(flat.shape(), Shape({11}));
  std::vector<double> want = pattern(1, 6);
  want.push_back(9);
  for (double v : pattern(20, 4)) want.push_back(v);
  EXPECT_TRUE(equals(flat, want));
  flat.fill_(3.0);
  unflatten_into(flat, list);
  for (const Tensor& t : list) EXPECT_TRUE(equals(t, std::vector<double>(static_cast<size_t>(t.numel()), 3.0)));
  expect_invalid([&] { unflatten_into(make(pattern(1, 3), {3}, DType::kF16), list); }, {"[unflatten_into]", "11", "got 3"});
}

TEST(CommUtil, ReduceIntoEveryDTypeAndOp) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI32, DType::kI64, DType::kU8}) {
    Tensor a = make({1, 5, 3, 2}, {4}, dtype);
    Tensor b = make({4, 2, 3, 7}, {4}, dtype);
    Tensor s = a.clone(), mx = a.clone(), mn = a.clone();
    reduce_into(s, b, ReduceOp::kSum);
    reduce_into(mx, b, ReduceOp::kMax);
    reduce_into(mn, b, ReduceOp::kMin);
    EXPECT_TRUE(equals(s, {5, 7, 6, 9})) << dtype_name(dtype);
    EXPECT_TRUE(equals(mx, {4, 5, 3, 7})) << dtype_name(dtype);
    EXPECT_TRUE(equals(mn, {1, 2, 3, 2})) << dtype_name(dtype);
  }
  // Integer sums wrap instead of invoking undefined behaviour.
  Tensor big = Tensor::from_vector<int32_t>({2147483647}, {1});
  reduce_into(big, Tensor::from_vector<int32_t>({1}, {1}), ReduceOp::kSum);
  EXPECT_EQ(big.to_vector<int32_t>()[0], -2147483647 - 1);
  // NaN wins max and min, as in PyTorch.
  Tensor x = Tensor::from_vector<float>({1.0f, std::nanf("")}, {2});
  Tensor y = Tensor::from_vector<float>({std::nanf(""), 2.0f}, {2});
  Tensor m = x.clone();
  reduce_into(m, y, ReduceOp::kMax);
  EXPECT_TRUE(std::isnan(m.to_vector<float>()[0]));
  EXPECT_TRUE(std::isnan(m.to_vector<float>()[1]));
  expect_invalid([&] { reduce_into(x, make({1, 2, 3}, {3}, DType::kF32), ReduceOp::kSum); }, {"[reduce_into]", "[2]", "[3]"});
}

// ---- failure behaviour -------------------------------------------------------------------

TEST(CommLocal, TimeoutNamesTheMissingRankAndOpOnEverySurvivor) {
  const int size = 3;
  auto group = make_local_group(size, {.timeout = std::chrono::milliseconds(200)});
  std::vector<std::string> errors(size);
  const auto start = std::chrono::steady_clock::now();
  run_ranks(2, [&](int r) {  // rank 2 never joins
    Tensor t = make(pattern(1, 7), {7}, DType::kF32);
    WorkPtr work = group[static_cast<size_t>(r)]->all_reduce(t);
    EXPECT_TRUE(work->is_completed());
    try {
      work->wait();
    } catch (const std::runtime_error& e) {
      errors[static_cast<size_t>(r)] = e.what();
    }
  });
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, std::chrono::seconds(3));
  for (int r = 0; r < 2; ++r) {
    const std::string& e = errors[static_cast<size_t>(r)];
    EXPECT_NE(e.find("[all_reduce]"), std::string::npos) << e;
    EXPECT_NE(e.find("waiting for rank(s) 2"), std::string::npos) << e;
    EXPECT_NE(e.find("timed out after 200 ms"), std::string::npos) << e;
    EXPECT_NE(e.find("collective #1"), std::string::npos) << e;
  }
  // The late rank, and any later collective, fails at once with the same reason.
  Tensor t = make(pattern(1, 7), {7}, DType::kF32);
  try {
    group[2]->barrier()->wait();
    ADD_FAILURE() << "expected the broken group to fail";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("waiting for rank(s) 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[barrier] rank 2"), std::string::npos) << e.what();
  }
}

TEST(CommLocal, MismatchedCollectivesFailOnEveryRankWithoutDebugMode) {
  // The local backend always compares deposits (it would read out of bounds
  // otherwise); the group stays usable afterwards.
  const int size = 2;
  auto group = make_local_group(size, {.timeout = std::chrono::milliseconds(2000)});
  std::vector<std::string> errors(size);
  run_ranks(size, [&](int r) {
    ProcessGroup& pg = *group[static_cast<size_t>(r)];
    Tensor t = make(pattern(r + 1, 7), {7}, DType::kF32);
    WorkPtr work = r == 0 ? pg.all_reduce(t) : pg.broadcast(t, 0);
    try {
      work->wait();
    } catch (const std::runtime_error& e) {
      errors[static_cast<size_t>(r)] = e.what();
    }
    Tensor u = make(pattern(r + 1, 5), {5}, DType::kF32);
    pg.all_reduce(u)->wait();
    EXPECT_TRUE(equals(u, reduced_pattern(ReduceOp::kSum, size, 5)));
  });
  for (int r = 0; r < size; ++r)
    EXPECT_NE(errors[static_cast<size_t>(r)].find("rank 1 issued broadcast(root 0, float32 on cpu, 1 tensor(s), 7 elements) "
                                                   "but rank 0 issued all_reduce(sum, float32 on cpu, 1 tensor(s), 7 "
                                                   "elements) as collective #1"),
              std::string::npos)
        << errors[static_cast<size_t>(r)];
}

// ---- debug mode ----------------------------------------------------------------------------

// Runs one collective per rank chosen by `issue` in a debug-mode group after `good`
// matching all_reduces, and returns each rank's error text ("" if none).
std::vector<std::string> debug_errors(int size, int good, const std::function<WorkPtr(ProcessGroup&, int)>& issue) {
  auto group = make_local_group(size, {.timeout = std::chrono::milliseconds(2000), .debug = true});
  std::vector<std::string> errors(static_cast<size_t>(size));
  run_ranks(size, [&](int r) {
    ProcessGroup& pg = *group[static_cast<size_t>(r)];
    for (int g = 0; g < good; ++g) {
      Tensor t = make(pattern(1, 3), {3}, DType::kF32);
      pg.all_reduce(t)->wait();
    }
    try {
      issue(pg, r)->wait();
    } catch (const std::runtime_error& e) {
      errors[static_cast<size_t>(r)] = e.what();
    }
  });
  return errors;
}

void expect_on_every_rank(const std::vector<std::string>& errors, const std::string& text) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_NE(errors[r].find(text), std::string::npos) << "rank " << r << ": " << errors[r];
}

TEST(CommLocalDebug, CatchesOpMismatch) {
  auto errors = debug_errors(2, 2, [](ProcessGroup& pg, int r) {
    Tensor t = make(pattern(1, 7), {7}, DType::kF32);
    return r == 1 ? pg.all_reduce(t) : pg.broadcast(t, 0);
  });
  EXPECT_NE(errors[1].find("[all_reduce] debug check: "), std::string::npos) << errors[1];
  EXPECT_NE(errors[0].find("[broadcast] debug check: "), std::string::npos) << errors[0];
  expect_on_every_rank(errors, "rank 1 issued all_reduce(float32, 7 elements) but rank 0 issued broadcast(float32, 7 "
                               "elements) as collective #3");
}

TEST(CommLocalDebug, CatchesDTypeMismatch) {
  auto errors = debug_errors(3, 0, [](ProcessGroup& pg, int r) {
    return pg.all_reduce(make(pattern(1, 7), {7}, r == 2 ? DType::kBF16 : DType::kF32));
  });
  expect_on_every_rank(errors, "rank 2 issued all_reduce(bfloat16, 7 elements) but rank 0 issued all_reduce(float32, 7 "
                               "elements) as collective #1");
}

TEST(CommLocalDebug, CatchesNumelMismatchAndReportsTheLowestRank) {
  auto errors = debug_errors(4, 1, [](ProcessGroup& pg, int r) {
    const int64_t n = r >= 2 ? 6 : 7;  // ranks 2 and 3 disagree; rank 2 is reported
    return pg.all_reduce(make(pattern(1, n), {n}, DType::kF32));
  });
  expect_on_every_rank(errors, "rank 2 issued all_reduce(float32, 6 elements) but rank 0 issued all_reduce(float32, 7 "
                               "elements) as collective #2");
}

TEST(CommLocalDebug, CatchesBarrierAgainstCollective) {
  auto errors = debug_errors(2, 0, [](ProcessGroup& pg, int r) {
    return r == 0 ? pg.barrier() : pg.all_reduce(make(pattern(1, 1), {1}, DType::kI64));
  });
  expect_on_every_rank(errors, "rank 1 issued all_reduce(int64, 1 element) but rank 0 issued barrier() as collective #1");
}

TEST(CommLocalDebug, MatchingCollectivesPassAndGroupStaysUsable) {
  auto errors = debug_errors(3, 3, [](ProcessGroup& pg, int r) {
    std::vector<Tensor> outputs;
    for (int k = 0; k < 3; ++k) outputs.push_back(make(pattern(0, 2), {2}, DType::kF64));
    return pg.all_gather(outputs, make(pattern(r, 2), {2}, DType::kF64));
  });
  for (const std::string& e : errors) EXPECT_EQ(e, "");
}

TEST(CommLocalDebug, EnabledByEnvironment) {
  ::setenv("TANDEM_DISTRIBUTED_DEBUG", "1", 1);
  EXPECT_TRUE(debug_from_env());
  auto group = make_local_group(2);
  ::unsetenv("TANDEM_DISTRIBUTED_DEBUG");
  EXPECT_FALSE(debug_from_env());
  EXPECT_TRUE(group[0]->options().debug);
}

TEST(CommDebugChecker, TimeoutNamesTheRanksThatNeverPublished) {
  auto store = make_hash_store(std::chrono::milliseconds(150));
  DebugChecker rank0(store, 0, 3);
  DebugChecker rank1(store, 1, 3);
  std::string error;
  std::thread t([&] {
    EXPECT_THROW(rank1.check("all_reduce", DType::kF32, 7), std::runtime_error);  // rank 2 is missing for it too
  });
  try {
    rank0.check("all_reduce", DType::kF32, 7);
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  t.join();
  EXPECT_NE(error.find("[all_reduce] debug check: rank 0"), std::string::npos) << error;
  EXPECT_NE(error.find("rank(s) 2 to issue collective #1"), std::string::npos) << error;
}

}  // namespace
}  // namespace tandem::comm
