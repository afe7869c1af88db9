// The local backend on CUDA tensors (skipped without a GPU): every collective
// against the CPU backend's results on random data, ranks spread over the GPUs
// present, results read back through the caller's stream after wait(); a CUDA graph
// capture refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/local.h"
#include "engine/cuda/graph.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using tandem::testing::random_tensor;

using tandem::testing::run_ranks;

Device device_of(int rank) { return Device::cuda(rank % cuda::device_count()); }

// Random but exactly summable data: integers in [1, 9] (never zero), any dtype.
Tensor data(const Shape& shape, uint64_t seed, DType dtype, Device device) {
  Tensor x = random_tensor(shape, seed, DType::kF64, Device::cpu(), 1.0, 9.0);
  std::vector<double> v = x.to_vector<double>();
  for (double& e : v) e = static_cast<double>(static_cast<int>(e));
  return Tensor::from_vector(v, shape).to(dtype).to(device);
}

double tolerance(DType dtype) { return dtype == DType::kF16 || dtype == DType::kBF16 ? 1e-2 : 1e-6; }

class CudaCommLocal : public ::testing::Test {
 protected:
  void SetUp() override { set_poison_allocations(true); }
  void TearDown() override { set_poison_allocations(false); }
};

TEST_F(CudaCommLocal, AllReduceMatchesCpu) {
  TANDEM_REQUIRE_CUDA();
  for (int size = 1; size <= 4; ++size)
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI32, DType::kI64})
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1'000'003}})
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
          if (op == ReduceOp::kAvg && !is_floating(dtype)) continue;
          if (n > 1000 && dtype != DType::kF32) continue;  // the large size once
          auto cpu_group = make_local_group(size);
          auto gpu_group = make_local_group(size);
          std::vector<Tensor> want(static_cast<size_t>(size)), got(static_cast<size_t>(size));
          run_ranks(size, [&](int r) {
            Tensor host = data({n}, 10 + static_cast<uint64_t>(r), dtype, Device::cpu());
            Tensor dev = host.to(device_of(r));
            cpu_group[static_cast<size_t>(r)]->all_reduce(host, op)->wait();
            gpu_group[static_cast<size_t>(r)]->all_reduce(dev, op)->wait();
            want[static_cast<size_t>(r)] = host;
            got[static_cast<size_t>(r)] = dev.cpu();  // ordered after the collective by wait()
          });
          for (int r = 0; r < size; ++r)
            EXPECT_TRUE(tandem::testing::all_close(got[static_cast<size_t>(r)].to(DType::kF64),
                                                   want[static_cast<size_t>(r)].to(DType::kF64), tolerance(dtype), tolerance(dtype)))
                << reduce_op_name(op) << " " << dtype_name(dtype) << " n=" << n << " world=" << size << " rank " << r;
        }
}

TEST_F(CudaCommLocal, CoalescedAllReduceAndBroadcast) {
  TANDEM_REQUIRE_CUDA();
  const int size = 3;
  const std::vector<Shape> shapes = {{3, 2}, {}, {0}, {7}};
  auto group = make_local_group(size);
  run_ranks(size, [&](int r) {
    std::vector<Tensor> sums, bcast;
    for (size_t j = 0; j < shapes.size(); ++j) {
      sums.push_back(data(shapes[j], 100 * j + static_cast<uint64_t>(r), DType::kF32, device_of(r)));
      bcast.push_back(data(shapes[j], 200 * j + static_cast<uint64_t>(r), DType::kF32, device_of(r)));
    }
    group[static_cast<size_t>(r)]->all_reduce(sums)->wait();
    group[static_cast<size_t>(r)]->broadcast(bcast, 1)->wait();
    for (size_t j = 0; j < shapes.size(); ++j) {
      Tensor want = zeros(shapes[j], {.dtype = DType::kF32});
      for (int k = 0; k < size; ++k) want = want + data(shapes[j], 100 * j + static_cast<uint64_t>(k), DType::kF32, Device::cpu());
      EXPECT_TRUE(tandem::testing::all_close(sums[j].cpu(), want)) << "tensor " << j << " rank " << r;
      EXPECT_TRUE(tandem::testing::all_close(bcast[j].cpu(), data(shapes[j], 200 * j + 1, DType::kF32, Device::cpu())))
          << "tensor " << j << " rank " << r;
    }
  });
}

TEST_F(CudaCommLocal, BroadcastAllGatherReduceScatter) {
  TANDEM_REQUIRE_CUDA();
  for (int size = 1; size <= 4; ++size)
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
      const int64_t n = 7;
      auto group = make_local_group(size);
      run_ranks(size, [&](int r) {
        const Device dev = device_of(r);
        ProcessGroup& pg = *group[static_cast<size_t>(r)];
        // broadcast from the last rank
        Tensor b = data({n}, 30 + static_cast<uint64_t>(r), dtype, dev);
        pg.broadcast(b, size - 1)->wait();
        EXPECT_TRUE(tandem::testing::all_close(b.cpu(), data({n}, 30 + static_cast<uint64_t>(size - 1), dtype, Device::cpu())));
        // all_gather
        Tensor in = data({n}, 40 + static_cast<uint64_t>(r), dtype, dev);
        std::vector<Tensor> outs;
        for (int k = 0; k < size; ++k) outs.push_back(Tensor::empty({n}, {.dtype = dtype, .device = dev}));
        pg.all_gather(outs, in)->wait();
        for (int k = 0; k < size; ++k)
          EXPECT_TRUE(tandem::testing::all_close(outs[static_cast<size_t>(k)].cpu(),
                                                 data({n}, 40 + static_cast<uint64_t>(k), dtype, Device::cpu())));
        // reduce_scatter (sum and max)
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
          std::vector<Tensor> ins;
          for (int j = 0; j < size; ++j) ins.push_back(data({n}, 1000 * static_cast<uint64_t>(r) + static_cast<uint64_t>(j), dtype, dev));
          Tensor out = Tensor::empty({n}, {.dtype = dtype, .device = dev});
          pg.reduce_scatter(out, ins, op)->wait();
          std::vector<double> want(static_cast<size_t>(n), op == ReduceOp::kSum ? 0.0 : -1e300);
          for (int k = 0; k < size; ++k) {
            std::vector<double> v = data({n}, 1000 * static_cast<uint64_t>(k) + static_cast<uint64_t>(r), dtype, Device::cpu()).to_vector<double>();
            for (int64_t i = 0; i < n; ++i) {
              double& w = want[static_cast<size_t>(i)];
              w = op == ReduceOp::kSum ? w + v[static_cast<size_t>(i)] : std::max(w, v[static_cast<size_t>(i)]);
            }
          }
          EXPECT_EQ(out.cpu().to_vector<double>(), want) << reduce_op_name(op) << " " << dtype_name(dtype) << " rank " << r;
        }
      });
    }
}

TEST_F(CudaCommLocal, WaitOrdersTheCallersStreamAfterTheCollective) {
  TANDEM_REQUIRE_CUDA();
  // Producer work queued just before the call, and a consumer just after wait(),
  // both on the caller's stream: the result must reflect both orderings, repeatedly.
  const int size = 2;
  const int64_t n = 1 << 22;
  auto group = make_local_group(size);
  run_ranks(size, [&](int r) {
    Tensor t = Tensor::empty({n}, {.dtype = DType::kF32, .device = device_of(r)});
    for (int it = 0; it < 5; ++it) {
      t.fill_(static_cast<double>(r + it));
      group[static_cast<size_t>(r)]->all_reduce(t)->wait();
      Tensor doubled = t * 2.0;
      std::vector<float> v = doubled.cpu().to_vector<float>();
      const float want = 2.0f * static_cast<float>(0 + it + 1 + it);
      EXPECT_EQ(v.front(), want) << "iteration " << it;
      EXPECT_EQ(v.back(), want) << "iteration " << it;
    }
  });
}

TEST_F(CudaCommLocal, MixedCpuAndCudaRanksAreReported) {
  TANDEM_REQUIRE_CUDA();
  auto group = make_local_group(2, {.timeout = std::chrono::milliseconds(5000)});
  std::vector<std::string> errors(2);
  run_ranks(2, [&](int r) {
    Tensor t = data({3}, 1, DType::kF32, r == 0 ? Device::cpu() : device_of(r));
    try {
      group[static_cast<size_t>(r)]->all_reduce(t)->wait();
    } catch (const std::runtime_error& e) {
      errors[static_cast<size_t>(r)] = e.what();
    }
  });
  for (const std::string& e : errors) EXPECT_NE(e.find("float32 on cuda"), std::string::npos) << e;
}

TEST_F(CudaCommLocal, UnsupportedReductionDTypeIsRejected) {
  TANDEM_REQUIRE_CUDA();
  auto group = make_local_group(1);
  Tensor t = Tensor::empty({3}, {.dtype = DType::kU8, .device = Device::cuda(0)});
  tandem::testing::expect_invalid([&] { group[0]->all_reduce(t); }, {"[all_reduce]", "uint8"});
}

TEST_F(CudaCommLocal, CollectivesRefuseACudaGraphCapture) {
  TANDEM_REQUIRE_CUDA();
  TANDEM_REQUIRE_CACHING_ALLOCATOR();  // graph capture needs it
  auto group = make_local_group(1);
  Tensor t = data({16}, 1, DType::kF32, Device::cuda(0));
  cuda::synchronize(0);
  cuda::Graph graph;
  graph.capture_begin();
  const Tensor keep = t + 1.0;  // the capture holds some work
  tandem::testing::expect_invalid([&] { group[0]->all_reduce(t); },
                                  {"[all_reduce] expected no CUDA graph capture on the calling stream",
                                   "use nccl inside graphs", "got one in progress"});
  graph.capture_end();
  graph.replay();
  EXPECT_TRUE(tandem::testing::all_close(keep.cpu(), t.cpu() + 1.0, 0.0, 0.0));
  group[0]->all_reduce(t)->wait();  // eagerly, the group still works
}

}  // namespace
}  // namespace tandem::comm
