// CUDA parity for matrix products, shape ops and embedding: every op and every
// backward on the GPU against the CPU path, on random data with outputs poisoned.
// Skips with the reason when no CUDA device is present.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::kFloatTypes;
using testing::random_tensor;
using testing::Tolerance;

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

class CudaLinalg : public testing::CudaParityTest {};

Tolerance tolerance_for(DType dt) {
  switch (dt) {
    case DType::kF64: return {1e-12, 1e-10};
    case DType::kF32: return {1e-5, 1e-4};
    case DType::kF16: return {2e-2, 1e-2};
    default: return {5e-2, 3e-2};  // bf16
  }
}

/// testing::expect_cuda_parity with this file's tolerances.
void expect_parity(const Fn& fn, const std::vector<Shape>& shapes, DType dt, uint64_t seed) {
  testing::expect_cuda_parity(fn, shapes, dt, seed, tolerance_for(dt));
}

// ---- matrix products -------------------------------------------------------------------

TEST_F(CudaLinalg, Matmul2D) {
  for (DType dt : kFloatTypes)
    expect_parity([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); }, {{17, 33}, {33, 9}}, dt, 1);
}

TEST_F(CudaLinalg, MatmulBatched) {
  for (DType dt : kFloatTypes) {
    expect_parity([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); }, {{3, 8, 5}, {3, 5, 7}}, dt, 2);
    expect_parity([](const std::vector<Tensor>& t) { return bmm(t[0], t[1]); }, {{4, 6, 16}, {4, 16, 3}}, dt, 3);
  }
}

TEST_F(CudaLinalg, Matmul3DTimes2D) {
  for (DType dt : kFloatTypes)
    expect_parity([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); }, {{2, 5, 8}, {8, 6}}, dt, 4);
}

TEST_F(CudaLinalg, LinearWithAndWithoutBias) {
  for (DType dt : kFloatTypes) {
    expect_parity([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); }, {{9, 12}, {5, 12}, {5}},
                  dt, 5);
    expect_parity([](const std::vector<Tensor>& t) { return linear(t[0], t[1]); }, {{9, 12}, {5, 12}}, dt, 6);
    expect_parity([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); },
                  {{2, 3, 12}, {5, 12}, {5}}, dt, 7);
  }
}

TEST_F(CudaLinalg, LinearWithFusedActivation) {
  using kernels::Activation;
  for (DType dt : kFloatTypes) {
    for (Activation act : {Activation::kRelu, Activation::kGelu, Activation::kGeluTanh}) {
      const Fn with_bias = [act](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2], act); };
      const Fn no_bias = [act](const std::vector<Tensor>& t) { return linear(t[0], t[1], Tensor(), act); };
      // 40 and 64 columns: 16-byte vectors for every type; 13 columns: the scalar
      // kernels; 700 rows: several row chunks, whose partials a second kernel adds;
      // 3 rows: one chunk, written directly.
      expect_parity(with_bias, {{9, 12}, {40, 12}, {40}}, dt, 13);
      expect_parity(with_bias, {{2, 3, 12}, {13, 12}, {13}}, dt, 14);
      expect_parity(with_bias, {{700, 24}, {64, 24}, {64}}, dt, 15);
      expect_parity(no_bias, {{700, 24}, {64, 24}}, dt, 16);
      expect_parity(with_bias, {{3, 8}, {1024, 8}, {1024}}, dt, 17);
    }
  }
}

TEST_F(CudaLinalg, LinearEpilogueWithUnalignedOperands) {
  // Views one element into their storage: cuBLASLt chooses its algorithms (or has none)
  // by pointer alignment, and the fused kernels fall back from 16-byte vectors; either
  // way the result must be the CPU's.
  using kernels::Activation;
  const Device cuda = Device::cuda(0);
  for (DType dt : kFloatTypes) {
    const Tolerance tol = tolerance_for(dt);
    for (Activation act : {Activation::kNone, Activation::kRelu, Activation::kGelu}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + ", activation " + std::to_string(static_cast<int>(act)));
      const Tensor xs = random_tensor({1, 1 + 9 * 16}, 18, dt), ws = random_tensor({1, 1 + 40 * 16}, 19, dt),
                   bs = random_tensor({41}, 20, dt);
      auto view = [](const Tensor& t, const Shape& shape) { return t.narrow(-1, 1, t.size(-1) - 1).reshape(shape); };
      const Tensor want = linear(view(xs, {9, 16}), view(ws, {40, 16}), view(bs, {40}), act);
      const Tensor got = linear(view(xs.to(cuda), {9, 16}), view(ws.to(cuda), {40, 16}), view(bs.to(cuda), {40}), act);
      EXPECT_TRUE(all_close(got.cpu(), want, tol.atol, tol.rtol));
    }
  }
}

TEST_F(CudaLinalg, ScaledDotProductAttention) {
  for (DType dt : kFloatTypes) {
    for (bool causal : {false, true}) {
      const Fn fn = [causal](const std::vector<Tensor>& t) {
        return scaled_dot_product_attention(t[0], t[1], t[2], causal);
      };
      expect_parity(fn, {{2, 3, 17, 8}, {2, 3, 17, 8}, {2, 3, 17, 8}}, dt, 9);   // warp per row
      expect_parity(fn, {{2, 5, 16}, {2, 40, 16}, {2, 40, 4}}, dt, 10);          // more keys than queries
    }
  }
  // Rows longer than 1024 keys take the block-per-row kernels; more queries than keys
  // give rows that see every key.
  const Fn causal = [](const std::vector<Tensor>& t) { return scaled_dot_product_attention(t[0], t[1], t[2], true); };
  for (DType dt : kFloatTypes) expect_parity(causal, {{1, 1100, 16}, {1, 1100, 16}, {1, 1100, 16}}, dt, 11);
  for (DType dt : kFloatTypes) expect_parity(causal, {{2, 40, 8}, {2, 9, 8}, {2, 9, 8}}, dt, 12);
}

TEST_F(CudaLinalg, LinearMlpSizedIsFullFp32) {
  // No TF32: a 784-deep f32 product must stay within f32 accumulation error.
  expect_parity([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); },
                {{128, 784}, {256, 784}, {256}}, DType::kF32, 8);
}

TEST_F(CudaLinalg, Tf32IsOffByDefaultAndTradesPrecisionWhenAllowed) {
  // A 1024-deep f32 product: strict FP32 stays within accumulation error of the CPU;
  // TF32 (10-bit mantissa inputs) lands about 1e-4..1e-3 away, measurably further.
  if (const char* o = std::getenv("NVIDIA_TF32_OVERRIDE"); o != nullptr && std::string(o) == "0")
    GTEST_SKIP() << "NVIDIA_TF32_OVERRIDE=0 turns TF32 off in the libraries";
  EXPECT_FALSE(cuda::allow_tf32());
  Tensor a = random_tensor({512, 1024}, 40, DType::kF32), b = random_tensor({1024, 384}, 41, DType::kF32);
  const Tensor want = matmul(a, b);
  const double strict = testing::relative_error(matmul(a.to(Device::cuda()), b.to(Device::cuda())).cpu(), want);
  double tf32 = 0;
  {
    cuda::AllowTf32Guard on(true);
    tf32 = testing::relative_error(matmul(a.to(Device::cuda()), b.to(Device::cuda())).cpu(), want);
  }
  EXPECT_LT(strict, 1e-5);
  EXPECT_LT(tf32, 5e-3);
  EXPECT_GT(tf32, 10 * strict) << "TF32 allowed, yet the product is as exact as strict FP32";
  // Back off: strict again.
  EXPECT_LT(testing::relative_error(matmul(a.to(Device::cuda()), b.to(Device::cuda())).cpu(), want), 1e-5);
}

TEST_F(CudaLinalg, EmptyInnerDimGivesZeros) {
  Tensor a = Tensor::empty({3, 0}, {.device = Device::cuda()}), b = Tensor::empty({0, 4}, {.device = Device::cuda()});
  EXPECT_TRUE(all_close(matmul(a, b).cpu(), zeros({3, 4})));
}

// ---- shape ops -------------------------------------------------------------------------

TEST_F(CudaLinalg, ViewOps) {
  expect_parity([](const std::vector<Tensor>& t) { return reshape(t[0], {6, -1}) * 2.0; }, {{2, 3, 4}}, DType::kF32,
                10);
  expect_parity([](const std::vector<Tensor>& t) { return squeeze(unsqueeze(flatten(t[0], 1), 0), 0) * 2.0; },
                {{2, 3, 4}}, DType::kF32, 11);
}

TEST_F(CudaLinalg, TransposeAndPermute) {
  for (DType dt : kFloatTypes) {
    expect_parity([](const std::vector<Tensor>& t) { return transpose(t[0], 0, 1); }, {{33, 65}}, dt, 12);
    expect_parity([](const std::vector<Tensor>& t) { return permute(t[0], {2, 0, 3, 1}); }, {{2, 3, 5, 7}}, dt, 13);
    expect_parity([](const std::vector<Tensor>& t) { return permute(t[0], {0, 2, 3, 1}); }, {{2, 3, 1, 7}}, dt, 14);
  }
  for (DType dt : {DType::kF32, DType::kF16}) {  // tiled path: odd sizes, several tiles, a batch dim
    expect_parity([](const std::vector<Tensor>& t) { return transpose(t[0], 1, 2); }, {{5, 70, 45}}, dt, 24);
    expect_parity([](const std::vector<Tensor>& t) { return transpose(t[0], 0, 1); }, {{130, 67}}, dt, 25);
  }
  Tensor big = arange(3 * 40 * 33).reshape({3, 40, 33});  // 8-byte words through the tiles
  EXPECT_EQ(transpose(big.to(Device::cuda()), 1, 2).cpu().to_vector<int64_t>(),
            transpose(big, 1, 2).to_vector<int64_t>());
  Tensor i = arange(24).reshape({2, 3, 4});
  EXPECT_EQ(permute(i.to(Device::cuda()), {2, 1, 0}).cpu().to_vector<int64_t>(),
            permute(i, {2, 1, 0}).to_vector<int64_t>());
}

TEST_F(CudaLinalg, Narrow) {
  for (DType dt : kFloatTypes) {
    expect_parity([](const std::vector<Tensor>& t) { return narrow(t[0], 0, 2, 3) * 1.0; }, {{6, 5}}, dt, 15);
    expect_parity([](const std::vector<Tensor>& t) { return narrow(t[0], 1, 1, 3); }, {{4, 6, 5}}, dt, 16);
    expect_parity([](const std::vector<Tensor>& t) { return narrow(t[0], 2, 3, 1); }, {{4, 3, 5}}, dt, 17);
  }
}

TEST_F(CudaLinalg, CatAndChunk) {
  for (DType dt : kFloatTypes) {
    expect_parity([](const std::vector<Tensor>& t) { return cat({t[0], t[1], t[2]}, 1); },
                  {{3, 2, 4}, {3, 5, 4}, {3, 1, 4}}, dt, 18);
    expect_parity([](const std::vector<Tensor>& t) { return cat({t[0], t[1]}, 0); }, {{2, 8}, {3, 8}}, dt, 19);
    expect_parity(
        [](const std::vector<Tensor>& t) {
          std::vector<Tensor> p = chunk(t[0], 3, 1);
          return cat({p[2], p[0] * 2.0, p[1]}, 1);
        },
        {{3, 7}}, dt, 20);
  }
}

// ---- embedding -------------------------------------------------------------------------------

TEST_F(CudaLinalg, EmbeddingForwardAndBackward) {
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{4, 0, 4, 7, 4, 2, 9, 0}, {2, 4});
  Tensor idx_gpu = idx.to(Device::cuda());
  for (DType dt : kFloatTypes) {
    for (int64_t padding : {int64_t{-1}, int64_t{4}}) {
      Tensor w = random_tensor({10, 6}, 21, dt);
      Tensor wg = w.to(Device::cuda());
      w.set_requires_grad(true);
      wg.set_requires_grad(true);
      Tensor y = embedding(w, idx, padding), yg = embedding(wg, idx_gpu, padding);
      EXPECT_TRUE(all_close(yg.cpu(), y, 0.0, 0.0)) << dtype_name(dt);  // a gather is exact
      Tensor dy = random_tensor(y.shape(), 22, dt);
      y.backward(dy);
      yg.backward(dy.to(Device::cuda()));
      const Tolerance tol = tolerance_for(dt);
      EXPECT_TRUE(all_close(wg.grad().cpu(), w.grad(), tol.atol, tol.rtol)) << dtype_name(dt);
    }
  }
}

TEST_F(CudaLinalg, EmbeddingOutOfRangeIsAZeroRowOnCuda) {
  Tensor w = random_tensor({4, 3}, 23, DType::kF32, Device::cuda());
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{1, 17, -3}, {3}, Device::cuda());
  std::vector<double> y = embedding(w, idx).cpu().to_vector<double>();
  for (int j = 3; j < 9; ++j) EXPECT_EQ(y[j], 0.0);
}

TEST_F(CudaLinalg, DeviceMismatchNamesBothDevices) {
  Tensor cpu = random_tensor({2, 3}, 30, DType::kF32);
  Tensor gpu = random_tensor({3, 2}, 31, DType::kF32, Device::cuda());
  auto expect_devices = [](const std::function<void()>& fn, const char* op) {
    try {
      fn();
      ADD_FAILURE() << "expected std::invalid_argument from " << op;
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(op), std::string::npos) << what;
      EXPECT_NE(what.find("cpu"), std::string::npos) << what;
      EXPECT_NE(what.find("cuda:0"), std::string::npos) << what;
    }
  };
  expect_devices([&] { matmul(cpu, gpu); }, "[matmul]");
  expect_devices([&] { linear(cpu, gpu.reshape({2, 3})); }, "[linear]");
  expect_devices([&] { cat({cpu, gpu.reshape({2, 3})}, 0); }, "[cat]");
  expect_devices([&] { embedding(gpu, Tensor::from_vector(std::vector<int64_t>{0}, {1})); }, "[embedding]");
}

}  // namespace
}  // namespace tandem
