// Tests of comm::DataParallel on the CPU listed 2, 3 and 4 times: the MLP matches one
// big batch and the CNN (batch norm) matches the per-chunk computation torch's
// DataParallel does, over 5 SGD-momentum steps; small and uneven batches; eval and
// no-grad; errors. Also autograd::alias_with_history, the primitive it rests on.
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/data_parallel.h"
#include "data_parallel_util.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/linear.h"
#include "layers/sequential.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::testing;
using comm::DataParallel;

namespace {

std::vector<Device> cpus(int n) { return std::vector<Device>(static_cast<size_t>(n), Device::cpu()); }

}  // namespace

// ---- autograd::alias_with_history ---------------------------------------------------------

TEST(AliasWithHistory, TargetTakesDataAndGraphPositionInPlace) {
  Tensor q = random_tensor({3}, 1).set_requires_grad(true);
  Tensor target = random_tensor({2, 2}, 2).set_requires_grad(true);
  Tensor holder = target;  // another handle, as a layer's member holds a parameter
  Tensor source = q * 3.0;
  autograd::alias_with_history(target, source);
  EXPECT_EQ(holder.shape(), (Shape{3}));
  EXPECT_EQ(holder.data_ptr(), source.data_ptr());
  EXPECT_FALSE(holder.is_leaf());
  EXPECT_TRUE(holder.requires_grad());
  EXPECT_EQ(holder.grad_fn(), source.grad_fn());
  (holder * holder).sum().backward();
  // d/dq sum((3q)²) = 18 q
  EXPECT_TRUE(all_close(q.grad(), q.detach() * 18.0, 1e-12, 1e-12));
  EXPECT_FALSE(holder.grad().defined());
}

TEST(AliasWithHistory, LeafSourceReceivesTheGradient) {
  Tensor p = random_tensor({4}, 3).set_requires_grad(true);
  Tensor target = random_tensor({4}, 4).set_requires_grad(true);
  autograd::alias_with_history(target, p);
  EXPECT_FALSE(target.is_leaf());
  (target * 2.0).sum().backward();
  ASSERT_TRUE(p.grad().defined());
  EXPECT_TRUE(all_close(p.grad(), full({4}, 2.0, {.dtype = DType::kF64}), 0.0, 0.0));
  EXPECT_FALSE(target.grad().defined());
}

TEST(AliasWithHistory, SourceWithoutGradMakesAPlainLeaf) {
  Tensor target = random_tensor({4}, 5).set_requires_grad(true);
  Tensor source = random_tensor({2}, 6);
  autograd::alias_with_history(target, source);
  EXPECT_TRUE(target.is_leaf());
  EXPECT_FALSE(target.requires_grad());
  EXPECT_TRUE(all_close(target, source, 0.0, 0.0));
  EXPECT_THROW(autograd::alias_with_history(target, Tensor()), std::invalid_argument);
}

TEST(AliasWithHistory, Gradcheck) {
  // f(a, b) = alias(t, a·b) ⊙ b: the alias must be transparent to differentiation.
  Tensor a = random_tensor({2, 3}, 7).set_requires_grad(true);
  Tensor b = random_tensor({2, 3}, 8).set_requires_grad(true);
  EXPECT_TRUE(gradcheck(
      [](const std::vector<Tensor>& in) {
        Tensor t = Tensor::empty({1}, {.dtype = DType::kF64});
        autograd::alias_with_history(t, in[0] * in[1]);
        return t * in[1];
      },
      {a, b}));
}

// ---- equivalence ----------------------------------------------------------------------------

TEST(DataParallel, MlpMatchesOneBigBatch) {
  for (int n : {2, 3, 4}) {
    SCOPED_TRACE("devices " + std::to_string(n));
    expect_data_parallel_matches_plain(
        {.make = make_test_mlp, .sample_shape = {3, 4}, .batch = 12, .devices = cpus(n)});
  }
}

TEST(DataParallel, MlpMatchesInFloat32) {
  expect_data_parallel_matches_plain(
      {.make = make_test_mlp, .sample_shape = {12}, .batch = 16, .devices = cpus(4), .dtype = DType::kF32});
}

TEST(DataParallel, CnnWithBatchNormMatchesPerChunkComputation) {
  for (int n : {2, 3, 4}) {
    SCOPED_TRACE("devices " + std::to_string(n));
    expect_data_parallel_matches_plain(
        {.make = make_test_cnn, .sample_shape = {1, 8, 8}, .batch = 12, .devices = cpus(n), .per_chunk = true});
  }
}

TEST(DataParallel, BatchNotDivisibleByDevices) {
  // 7 rows over 3 devices: chunks 3, 3, 1; over 4: 2, 2, 2, 1.
  for (int n : {3, 4}) {
    SCOPED_TRACE("devices " + std::to_string(n));
    expect_data_parallel_matches_plain({.make = make_test_mlp, .sample_shape = {12}, .batch = 7, .devices = cpus(n)});
    expect_data_parallel_matches_plain(
        {.make = make_test_cnn, .sample_shape = {1, 8, 8}, .batch = 7, .devices = cpus(n), .per_chunk = true});
  }
}

TEST(DataParallel, SmallBatchUsesFewerReplicas) {
  // B < n: one row per replica, B replicas. 5 rows over 4 devices: ceil(5/4) = 2 rows
  // per chunk, so 3 replicas, as torch's scatter gives.
  expect_data_parallel_matches_plain({.make = make_test_mlp, .sample_shape = {12}, .batch = 2, .devices = cpus(4)});
  expect_data_parallel_matches_plain({.make = make_test_mlp, .sample_shape = {12}, .batch = 5, .devices = cpus(4)});
  expect_data_parallel_matches_plain(
      {.make = make_test_mlp, .sample_shape = {12}, .batch = 1, .devices = cpus(3), .steps = 2});
  expect_data_parallel_matches_plain(
      {.make = make_test_cnn, .sample_shape = {1, 8, 8}, .batch = 3, .devices = cpus(4), .per_chunk = true});
}

TEST(DataParallel, BatchNormRunningStatsComeFromReplicaZeroOnly) {
  manual_seed(3);
  auto model = make_test_cnn();
  model->to(DType::kF64);
  auto lone = model->clone();
  DataParallel dp(model, cpus(3));
  Tensor x = random_tensor({9, 1, 8, 8}, 11);
  dp.forward(x);
  lone->forward(x.narrow(0, 0, 3));
  nn::StateDict got = model->state_dict();
  nn::StateDict want = lone->state_dict();
  int buffers = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i].first.find("running") == std::string::npos && want[i].first.find("num_batches") == std::string::npos)
      continue;
    ++buffers;
    EXPECT_TRUE(all_close(got[i].second, want[i].second, 1e-12, 1e-12)) << want[i].first;
  }
  EXPECT_EQ(buffers, 6);
}

TEST(DataParallel, EvalModeMatchesFullBatchAndNoGradRecordsNothing) {
  manual_seed(5);
  auto ref = make_test_cnn();
  ref->to(DType::kF64);
  Tensor warm = random_tensor({6, 1, 8, 8}, 12);
  ref->forward(warm);  // running statistics away from their initial values
  auto model = ref->clone();
  DataParallel dp(model, cpus(3));
  dp.eval();
  ref->eval();
  Tensor x = random_tensor({7, 1, 8, 8}, 13);
  EXPECT_TRUE(relatively_close(dp.forward(x), ref->forward(x), 1e-12, "eval output"));
  autograd::NoGradGuard no_grad;
  Tensor y = dp.forward(x);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(relatively_close(y, ref->forward(x), 1e-12, "no-grad output"));
}

TEST(DataParallel, ReplicasFollowTheModuleWhenItChanges) {
  // After Module::to(dtype) the replicas are re-made from the module's new tensors.
  manual_seed(6);
  auto ref = make_test_mlp();
  auto model = ref->clone();
  DataParallel dp(model, cpus(2));
  Tensor x32 = random_tensor({6, 12}, 14, DType::kF32);
  EXPECT_TRUE(relatively_close(dp.forward(x32), ref->forward(x32), 1e-6, "f32"));
  dp.to(DType::kF64);
  ref->to(DType::kF64);
  Tensor x64 = random_tensor({6, 12}, 15);
  Tensor y = dp.forward(x64);
  EXPECT_EQ(y.dtype(), DType::kF64);
  EXPECT_TRUE(relatively_close(y, ref->forward(x64), 1e-12, "f64"));
  // load_state_dict writes in place: no re-make needed, the next forward copies it.
  nn::StateDict sd = ref->state_dict();
  for (auto& [name, t] : sd) t = t.detach() * 0.5;
  dp.module()->load_state_dict(sd);
  ref->load_state_dict(sd);
  EXPECT_TRUE(relatively_close(dp.forward(x64), ref->forward(x64), 1e-12, "after load_state_dict"));
}

TEST(DataParallel, StateDictAndParametersAreTheModules) {
  auto model = make_test_mlp();
  DataParallel dp(model, cpus(2));
  EXPECT_EQ(dp.parameters().size(), model->parameters().size());
  EXPECT_TRUE(dp.parameters()[0].is_same(model->parameters()[0]));
  EXPECT_EQ(dp.state_dict()[0].first, "module." + model->state_dict()[0].first);
  EXPECT_EQ(dp.devices().size(), 2u);
  EXPECT_TRUE(dp.output_device() == Device::cpu());
  EXPECT_EQ(dp.module().get(), model.get());
}

TEST(DataParallel, InputThatRequiresGradGetsItsGradient) {
  // DataParallel inside a larger graph: the scatter's backward is a gather.
  manual_seed(8);
  auto ref = make_test_mlp();
  ref->to(DType::kF64);
  DataParallel dp(ref->clone(), cpus(3));
  Tensor x1 = random_tensor({7, 12}, 16).set_requires_grad(true);
  Tensor x2 = x1.detach().clone().set_requires_grad(true);
  Tensor w = random_tensor({7, 5}, 17);
  (dp.forward(x1) * w).sum().backward();
  (ref->forward(x2) * w).sum().backward();
  EXPECT_TRUE(relatively_close(x1.grad(), x2.grad(), 1e-12, "input grad"));
}

TEST(DataParallel, RecordsPhaseTimings) {
  DataParallel dp(make_test_mlp(), cpus(2));
  dp.forward(random_tensor({4, 12}, 18, DType::kF32));
  comm::DataParallelStats s = dp.last_forward_stats();
  EXPECT_EQ(s.replicas, 2);
  EXPECT_GE(s.scatter_s, 0.0);
  EXPECT_GE(s.replicate_s, 0.0);
  EXPECT_GT(s.apply_s, 0.0);
  EXPECT_GE(s.gather_s, 0.0);
}

TEST(DataParallel, ReplicasRunOnThreadsOfTheirOwnWithTheCallersGradMode) {
  struct Probe {
    std::mutex mutex;
    std::set<std::thread::id> threads;
    int grad_on = 0;
  };
  class ThreadProbe : public nn::Module {
   public:
    explicit ThreadProbe(std::shared_ptr<Probe> probe) : probe_(std::move(probe)) {
      w = register_parameter("w", ones({1}, {.dtype = DType::kF64}));
    }
    Tensor forward(const Tensor& x) override {
      std::lock_guard<std::mutex> lock(probe_->mutex);
      probe_->threads.insert(std::this_thread::get_id());
      if (autograd::grad_enabled()) ++probe_->grad_on;
      return x * w;
    }
    std::string name() const override { return "ThreadProbe"; }
    std::shared_ptr<nn::Module> clone() const override {
      return clone_via([this] { return std::make_shared<ThreadProbe>(probe_); });
    }
    Tensor w;

   private:
    std::shared_ptr<Probe> probe_;
  };
  auto probe = std::make_shared<Probe>();
  DataParallel dp(std::make_shared<ThreadProbe>(probe), cpus(3));
  {
    autograd::NoGradGuard no_grad;
    dp.forward(random_tensor({3, 2}, 19));
  }
  EXPECT_EQ(probe->threads.size(), 3u);
  EXPECT_TRUE(probe->threads.count(std::this_thread::get_id()));  // replica 0 runs on the caller's
  EXPECT_EQ(probe->grad_on, 0);
  dp.forward(random_tensor({3, 2}, 19));
  EXPECT_EQ(probe->grad_on, 3);
}

// ---- errors ---------------------------------------------------------------------------------

TEST(DataParallel, ConstructionErrors) {
  if (cuda::device_count() == 0) {
    expect_invalid([] { DataParallel(make_test_mlp(), {}); }, {"[DataParallel]", "at least one device", "CUDA"});
  }
  expect_invalid([] { DataParallel(nullptr, cpus(2)); }, {"[DataParallel]", "module", "null"});
  expect_invalid([] { DataParallel(make_test_mlp(), {Device::cpu(), Device::cuda(0)}); },
                 {"[DataParallel]", "devices of one type", "cpu", "cuda:0"});
  expect_invalid([] { DataParallel(make_test_mlp(), cpus(2), Device::cuda(99)); },
                 {"[DataParallel]", "output device", "cuda:99"});
}

TEST(DataParallel, ModuleWithoutCloneIsReportedAtConstruction) {
  class NoClone : public nn::Module {
   public:
    NoClone() { register_parameter("w", ones({2})); }
    std::string name() const override { return "NoClone"; }
  };
  auto model = std::make_shared<nn::Sequential>(
      std::initializer_list<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(2, 2), std::make_shared<NoClone>()});
  expect_invalid([&] { DataParallel(model, cpus(2)); }, {"NoClone", "clone()", "DataParallel"});
  // One device needs no replica, so no clone either.
  EXPECT_NO_THROW(DataParallel(model, cpus(1)));
}

TEST(DataParallel, ForwardErrors) {
  DataParallel dp(make_test_mlp(), cpus(2));
  expect_invalid([&] { dp.forward(Tensor::empty({0, 12})); }, {"[DataParallel]", "at least one row", "[0, 12]"});
  expect_invalid([&] { dp.forward(full({}, 1.0)); }, {"[DataParallel]", "at least one row", "[]"});
  EXPECT_THROW(dp.forward(Tensor()), std::invalid_argument);
}

namespace {

/// Fails on a chunk of one row; returns a scalar on a chunk of three rows.
class Fussy : public nn::Module {
 public:
  Fussy() { w = register_parameter("w", ones({1})); }
  Tensor forward(const Tensor& x) override {
    if (x.size(0) == 1) throw std::invalid_argument("[Fussy] expected more than one row, got 1");
    if (x.size(0) == 3) return (x * w).sum();
    return x * w;
  }
  std::string name() const override { return "Fussy"; }
  std::shared_ptr<nn::Module> clone() const override {
    return clone_via([] { return std::make_shared<Fussy>(); });
  }
  Tensor w;
};

}  // namespace

TEST(DataParallel, ReplicaErrorIsRethrownWithItsIndex) {
  DataParallel dp(std::make_shared<Fussy>(), cpus(2));
  // 3 rows over 2 devices: chunks of 2 and 1, so replica 1 fails.
  expect_invalid([&] { dp.forward(random_tensor({3, 2}, 20, DType::kF32)); },
                 {"[DataParallel] replica 1 on cpu failed", "[Fussy] expected more than one row, got 1"});
  // 6 rows: chunks of 3, replicas return scalars, which cannot be gathered.
  expect_invalid([&] { dp.forward(random_tensor({6, 2}, 21, DType::kF32)); },
                 {"[DataParallel]", "batch dim to gather", "shape []", "replica 0"});
  // Still usable afterwards.
  EXPECT_EQ(dp.forward(random_tensor({4, 2}, 22, DType::kF32)).shape(), (Shape{4, 2}));
}
