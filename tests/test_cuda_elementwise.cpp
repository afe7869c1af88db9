// CUDA parity for the element-wise ops, reductions, casts and fills: each result
// against the CPU path on the same random data, with device outputs poisoned.
#include <gtest/gtest.h>

#include "engine/ops.h"
#include "test_util.h"

using namespace tandem;
using tandem::testing::all_close;
using tandem::testing::random_tensor;
using tandem::testing::random_indices;

namespace {

class CudaElementwise : public ::testing::Test {
 protected:
  void SetUp() override {
    TANDEM_REQUIRE_CUDA();
    set_poison_allocations(true);
  }
  void TearDown() override { set_poison_allocations(false); }
};

const Device kGpu = Device::cuda(0);

// Tolerance by dtype for element-wise math.
double tol(DType d) {
  switch (d) {
    case DType::kF64: return 1e-12;
    case DType::kF32: return 1e-5;
    default: return 1e-2;
  }
}

}  // namespace

TEST_F(CudaElementwise, UnaryForwardAndBackwardMatchCpu) {
  using Fn = Tensor (*)(const Tensor&);
  std::vector<std::pair<const char*, Fn>> ops = {
      {"neg", [](const Tensor& x) { return neg(x); }},       {"exp", [](const Tensor& x) { return exp(x); }},
      {"relu", [](const Tensor& x) { return relu(x); }},     {"gelu", [](const Tensor& x) { return gelu(x); }},
      {"gelu_tanh", [](const Tensor& x) { return gelu(x, true); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }},     {"sigmoid", [](const Tensor& x) { return sigmoid(x); }},
      {"square", [](const Tensor& x) { return square(x); }},
      {"log", [](const Tensor& x) { return log(x + 2.0); }}, {"sqrt", [](const Tensor& x) { return sqrt(x + 2.0); }}};
  for (DType d : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
    // Odd length and an offset view exercise the unaligned and tail paths.
    for (int64_t n : {int64_t{1}, int64_t{1000003}}) {
      Tensor base = random_tensor({n + 1}, 21, d);
      Tensor x_cpu = Tensor::from_storage(base.storage(), {n}, d, 1).clone().set_requires_grad(true);
      Tensor x_gpu = Tensor::from_storage(base.to(kGpu).storage(), {n}, d, 1).clone().set_requires_grad(true);
      for (auto& [name, f] : ops) {
        SCOPED_TRACE(std::string(name) + " " + std::string(dtype_name(d)) + " n=" + std::to_string(n));
        Tensor y_cpu = f(x_cpu), y_gpu = f(x_gpu);
        EXPECT_TRUE(all_close(y_gpu, y_cpu, tol(d), tol(d)));
        Tensor g = random_tensor({n}, 22, d);
        x_cpu.set_grad(Tensor());
        x_gpu.set_grad(Tensor());
        y_cpu.backward(g);
        y_gpu.backward(g.to(kGpu));
        EXPECT_TRUE(all_close(x_gpu.grad(), x_cpu.grad(), tol(d), tol(d)));
      }
    }
  }
}

TEST_F(CudaElementwise, BinaryBroadcastMatchesCpu) {
  std::vector<std::pair<Shape, Shape>> cases = {
      {{1000, 257}, {1000, 257}}, {{1000, 257}, {257}}, {{1000, 257}, {1000, 1}}, {{4, 1, 6, 7}, {5, 1, 7}}, {{3}, {}}};
  for (DType d : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (auto& [sa, sb] : cases) {
      SCOPED_TRACE(shape_str(sa) + " op " + shape_str(sb) + " " + std::string(dtype_name(d)));
      Tensor a = random_tensor(sa, 23, d).set_requires_grad(true);
      Tensor b = random_tensor(sb, 24, d, Device::cpu(), 0.5, 1.5).set_requires_grad(true);
      Tensor ag = a.detach().to(kGpu).set_requires_grad(true), bg = b.detach().to(kGpu).set_requires_grad(true);
      Tensor yc = (a + b) * a / b - b, yg = (ag + bg) * ag / bg - bg;
      EXPECT_TRUE(all_close(yg, yc, tol(d), tol(d)));
      yc.sum().backward();
      yg.sum().backward();
      EXPECT_TRUE(all_close(ag.grad(), a.grad(), tol(d) * 10, tol(d) * 10));
      EXPECT_TRUE(all_close(bg.grad(), b.grad(), tol(d) * 10, tol(d) * 10));
      EXPECT_TRUE(all_close(eq(ag, ag), eq(a, a)));
    }
  }
}

TEST_F(CudaElementwise, ReductionsMatchCpu) {
  std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{5000000}, {0}}, {{300, 1000}, {1}}, {{300, 1000}, {0}}, {{8, 9, 10}, {0, 2}}, {{3, 200000}, {1}},
      // More rows than gridDim.y allows (65535): rows go on gridDim.x.
      {{70000, 3}, {1}},
      // Few columns over many rows (a bias gradient; a column sum split into chunks of rows).
      {{16384, 768}, {0}}, {{4, 5000, 40}, {1}}, {{3000, 5}, {0}}};
  for (auto& [shape, dims] : cases) {
    SCOPED_TRACE(shape_str(shape));
    Tensor x = random_tensor(shape, 25, DType::kF32);
    Tensor xg = x.to(kGpu);
    EXPECT_LT(tandem::testing::relative_error(sum(xg, dims), sum(x, dims)), 1e-5);
    EXPECT_LT(tandem::testing::relative_error(mean(xg, dims), mean(x, dims)), 1e-5);
    int64_t d = dims.back();
    EXPECT_TRUE(all_close(max(xg, d).values, max(x, d).values));
    EXPECT_TRUE(all_close(argmax(xg, d), argmax(x, d)));
  }
  Tensor b = eq(random_indices({100001}, 3, 26), random_indices({100001}, 3, 27));
  EXPECT_EQ(sum(b.to(kGpu)).item<int64_t>(), sum(b).item<int64_t>());
}

TEST_F(CudaElementwise, CastsFillsAndCopiesMatchCpu) {
  Tensor x = random_tensor({1001}, 28, DType::kF64, Device::cpu(), -300, 300);
  for (DType from : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16, DType::kI32, DType::kI64, DType::kU8, DType::kBool}) {
    for (DType to : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16, DType::kI32, DType::kI64, DType::kU8, DType::kBool}) {
      SCOPED_TRACE(std::string(dtype_name(from)) + " -> " + std::string(dtype_name(to)));
      Tensor src = from == DType::kU8 ? (x.to(DType::kI64) + 0).to(DType::kF64) : x;
      Tensor c = src.to(from);
      EXPECT_TRUE(all_close(c.to(kGpu).to(to), c.to(to), 0, 0));
    }
  }
  EXPECT_TRUE(all_close(full({77}, 3.5, {.device = kGpu}), full({77}, 3.5)));
  EXPECT_TRUE(all_close(arange(0.0, 10.0, 0.5, {.dtype = DType::kF32, .device = kGpu}),
                        arange(0.0, 10.0, 0.5, {.dtype = DType::kF32})));
  Tensor round_trip = x.to(kGpu).cpu();
  EXPECT_TRUE(all_close(round_trip, x, 0, 0));
}
