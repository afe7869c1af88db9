// CUDA parity for conv2d (cuDNN) and the pooling kernels: forward and every gradient on
// the GPU against the CPU path, for f32/f64/f16/bf16, on random data with outputs
// poisoned. Skips with the reason when no CUDA device is present.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "kernels/cuda/conv.h"
#include "layers/conv.h"
#include "tandem/config.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::kFloatTypes;
using testing::random_tensor;
using testing::Tolerance;

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

class CudaConv : public testing::CudaParityTest {};

// cuDNN may pick Winograd or FFT algorithms, whose f32 rounding differs from a direct
// sum by more than a GEMM's does.
Tolerance tolerance_for(DType dt) {
  switch (dt) {
    case DType::kF64: return {1e-10, 1e-9};
    case DType::kF32: return {1e-4, 1e-3};
    case DType::kF16: return {3e-2, 1e-2};
    default: return {8e-2, 3e-2};  // bf16
  }
}

/// testing::expect_cuda_parity with this file's tolerances.
void expect_parity(const Fn& fn, const std::vector<Shape>& shapes, DType dt, uint64_t seed) {
  testing::expect_cuda_parity(fn, shapes, dt, seed, tolerance_for(dt));
}

struct ConvCase {
  std::string name;
  Shape x, w;
  Conv2dOptions options;
  bool bias;
};

TEST_F(CudaConv, Conv2dEveryCaseAndDtype) {
  if (!TANDEM_CUDNN) GTEST_SKIP() << "this build has no cuDNN";
  const std::vector<ConvCase> cases = {
      {"cnn conv2 shape", {4, 32, 14, 14}, {64, 32, 3, 3}, {.padding = 1}, true},
      {"stride 2 padding 1", {2, 3, 9, 8}, {5, 3, 3, 3}, {.stride = 2, .padding = 1}, true},
      {"dilation 2", {2, 2, 9, 9}, {3, 2, 3, 3}, {.padding = 2, .dilation = 2}, true},
      {"groups 2", {2, 4, 7, 7}, {6, 2, 3, 3}, {.padding = 1, .groups = 2}, true},
      {"depthwise", {2, 8, 8, 8}, {8, 1, 3, 3}, {.padding = 1, .groups = 8}, false},
      {"1x1 stride 2 no bias", {2, 16, 8, 8}, {32, 16, 1, 1}, {.stride = 2}, false},
      {"non-square", {1, 3, 9, 8}, {4, 3, 2, 3}, {.stride = {2, 1}, .padding = {1, 0}, .dilation = {1, 2}}, true},
  };
  uint64_t seed = 1;
  for (const ConvCase& cs : cases) {
    SCOPED_TRACE(cs.name);
    std::vector<Shape> shapes{cs.x, cs.w};
    if (cs.bias) shapes.push_back({cs.w[0]});
    const Conv2dOptions o = cs.options;
    for (DType dt : kFloatTypes) {
      expect_parity([o](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), o); },
                    shapes, dt, seed);
      seed += 10;
    }
  }
}

TEST_F(CudaConv, Conv2dRepeatedCallsReuseTheCachedAlgorithm) {
  if (!TANDEM_CUDNN) GTEST_SKIP() << "this build has no cuDNN";
  // The second and third calls take the cached algorithm (no search) and must agree
  // with the first exactly.
  Tensor x = random_tensor({8, 16, 16, 16}, 500, DType::kF32, Device::cuda());
  Tensor w = random_tensor({32, 16, 3, 3}, 501, DType::kF32, Device::cuda());
  Tensor b = random_tensor({32}, 502, DType::kF32, Device::cuda());
  Tensor first = conv2d(x, w, b, {.padding = 1}).cpu();
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(all_close(conv2d(x, w, b, {.padding = 1}).cpu(), first, 0, 0));
}

TEST_F(CudaConv, Conv2dWithTf32AllowedStaysCloseAndStrictModeComesBack) {
  if (!TANDEM_CUDNN) GTEST_SKIP() << "this build has no cuDNN";
  // Whether cuDNN then picks a tensor-core algorithm is its choice; either way the
  // result stays within TF32 error, and switching back gives strict FP32 again (the
  // algorithm cache keeps the two modes apart).
  Tensor x = random_tensor({16, 64, 32, 32}, 520, DType::kF32);
  Tensor w = random_tensor({64, 64, 3, 3}, 521, DType::kF32);
  const Tensor want = conv2d(x, w, Tensor(), {.padding = 1});
  const Tensor xg = x.to(Device::cuda()), wg = w.to(Device::cuda());
  double tf32 = 0;
  {
    cuda::AllowTf32Guard on(true);
    tf32 = testing::relative_error(conv2d(xg, wg, Tensor(), {.padding = 1}).cpu(), want);
  }
  const double strict = testing::relative_error(conv2d(xg, wg, Tensor(), {.padding = 1}).cpu(), want);
  EXPECT_LT(tf32, 5e-3);
  EXPECT_LT(strict, 1e-5) << "TF32 was " << tf32;
}

TEST_F(CudaConv, Conv2dLayerOnTheGpu) {
  if (!TANDEM_CUDNN) GTEST_SKIP() << "this build has no cuDNN";
  nn::Conv2d conv(3, 8, 3, {.stride = 2, .padding = 1});
  Tensor x = random_tensor({4, 3, 16, 16}, 510, DType::kF32);
  Tensor y_cpu = conv(x);
  conv.to(Device::cuda());
  Tensor y_gpu = conv(x.to(Device::cuda()));
  EXPECT_EQ(y_gpu.shape(), (Shape{4, 8, 8, 8}));
  EXPECT_TRUE(all_close(y_gpu.cpu(), y_cpu, 1e-4, 1e-3));
}

TEST_F(CudaConv, MaxPool2d) {
  for (DType dt : kFloatTypes) {
    expect_parity([](const std::vector<Tensor>& t) { return max_pool2d(t[0], 2); }, {{4, 8, 14, 14}}, dt, 600);
    expect_parity([](const std::vector<Tensor>& t) { return max_pool2d(t[0], 3, {.stride = 2, .padding = 1}); },
                  {{2, 3, 9, 8}}, dt, 610);
    expect_parity(
        [](const std::vector<Tensor>& t) {
          return max_pool2d(t[0], {3, 2}, {.stride = Int2{2, 1}, .padding = 1, .dilation = {2, 1}, .ceil_mode = true});
        },
        {{2, 3, 9, 8}}, dt, 620);
  }
}

TEST_F(CudaConv, AvgPool2d) {
  for (DType dt : kFloatTypes) {
    for (bool include_pad : {true, false}) {
      expect_parity([](const std::vector<Tensor>& t) { return avg_pool2d(t[0], 2); }, {{4, 8, 14, 14}}, dt, 700);
      expect_parity(
          [include_pad](const std::vector<Tensor>& t) {
            return avg_pool2d(t[0], 3, {.stride = 2, .padding = 1, .ceil_mode = true, .count_include_pad = include_pad});
          },
          {{2, 3, 9, 8}}, dt, 710);
      expect_parity(
          [include_pad](const std::vector<Tensor>& t) {
            return avg_pool2d(t[0], {3, 2}, {.stride = 1, .padding = {1, 0}, .count_include_pad = include_pad});
          },
          {{2, 3, 7, 6}}, dt, 720);
    }
  }
}

TEST_F(CudaConv, AdaptiveAvgPool2d) {
  for (DType dt : kFloatTypes) {
    expect_parity([](const std::vector<Tensor>& t) { return adaptive_avg_pool2d(t[0], 1); }, {{4, 16, 8, 8}}, dt, 800);
    expect_parity([](const std::vector<Tensor>& t) { return adaptive_avg_pool2d(t[0], {3, 4}); }, {{2, 3, 7, 9}}, dt,
                  810);
    expect_parity([](const std::vector<Tensor>& t) { return adaptive_avg_pool2d(t[0], {5, 6}); }, {{2, 3, 3, 4}}, dt,
                  820);
  }
}

}  // namespace
}  // namespace tandem
