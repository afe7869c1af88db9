// Normalisation benchmarks: batch norm (training forward, forward + backward, eval
// forward) at the CNN's and ResNet-18's (CIFAR, batch 128) activation shapes, and layer
// norm forward and forward + backward at transformer shapes, on the CPU and, when a
// device is present, on CUDA (GB/s and % of copy bandwidth). Bytes count every pass the
// algorithm makes over the data: batch-norm training forward reads x twice (statistics,
// then normalise) and writes y; its backward reads dy and x twice and writes dx; layer
// norm reads x and writes y, and its backward reads dy and x and writes dx.
#include <cstdint>
#include <string>

#include "bench/bench_common.h"
#include "engine/ops/factory.h"
#include "engine/ops/norm.h"

namespace tandem::bench {
namespace {

enum class BnMode { kTrainForward, kTrainForwardBackward, kEvalForward };

const char* bn_name(BnMode mode) {
  switch (mode) {
    case BnMode::kTrainForward: return "batch_norm_train";
    case BnMode::kTrainForwardBackward: return "batch_norm_train_fwd_bwd";
    case BnMode::kEvalForward: return "batch_norm_eval";
  }
  return "batch_norm";
}

double bn_bytes(int64_t numel, DType dtype, BnMode mode) {
  const double e = static_cast<double>(numel * static_cast<int64_t>(dtype_size(dtype)));
  switch (mode) {
    case BnMode::kTrainForward: return 3.0 * e;
    case BnMode::kTrainForwardBackward: return 8.0 * e;
    case BnMode::kEvalForward: return 2.0 * e;
  }
  return e;
}

double ln_bytes(int64_t numel, DType dtype, bool backward) {
  return static_cast<double>(numel * static_cast<int64_t>(dtype_size(dtype))) * (backward ? 5.0 : 2.0);
}

// A BatchNorm2d's tensors (f32 parameters and statistics, as under mixed precision).
struct BatchNormSetup {
  Tensor x, weight, bias, running_mean, running_var, grad_out;

  BatchNormSetup(const Shape& shape, DType dtype, Device device, bool backward) {
    const TensorOptions f32 = {.device = device};
    x = randn(shape, f32).to(dtype);
    weight = ones({shape[1]}, f32);
    bias = zeros({shape[1]}, f32);
    running_mean = zeros({shape[1]}, f32);
    running_var = ones({shape[1]}, f32);
    if (backward) {
      x.set_requires_grad(true);
      weight.set_requires_grad(true);
      bias.set_requires_grad(true);
      grad_out = randn(shape, f32).to(dtype);
    }
  }

  Tensor step(BnMode mode) {
    const bool training = mode != BnMode::kEvalForward;
    Tensor y = batch_norm(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5);
    if (mode == BnMode::kTrainForwardBackward) {
      x.set_grad(Tensor());
      weight.set_grad(Tensor());
      bias.set_grad(Tensor());
      y.backward(grad_out);
    }
    return y;
  }
};

struct LayerNormSetup {
  Tensor x, weight, bias, grad_out;

  LayerNormSetup(int64_t rows, int64_t cols, DType dtype, Device device, bool backward) {
    const TensorOptions f32 = {.device = device};
    x = randn({rows, cols}, f32).to(dtype);
    weight = ones({cols}, f32).to(dtype);
    bias = zeros({cols}, f32).to(dtype);
    if (backward) {
      x.set_requires_grad(true);
      weight.set_requires_grad(true);
      bias.set_requires_grad(true);
      grad_out = randn({rows, cols}, f32).to(dtype);
    }
  }

  Tensor step(bool backward) {
    Tensor y = layer_norm(x, {x.size(1)}, weight, bias, 1e-5);
    if (backward) {
      x.set_grad(Tensor());
      weight.set_grad(Tensor());
      bias.set_grad(Tensor());
      y.backward(grad_out);
    }
    return y;
  }
};

Shape bn_shape(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), state.range(2)};
}

// ---- CPU -------------------------------------------------------------------------------

void cpu_batch_norm(benchmark::State& state, BnMode mode) {
  const Shape shape = bn_shape(state);
  BatchNormSetup setup(shape, DType::kF32, Device::cpu(), mode == BnMode::kTrainForwardBackward);
  for (auto _ : state) benchmark::DoNotOptimize(setup.step(mode));
  const int64_t numel = shape_numel(shape);
  set_cpu_throughput(state, bn_bytes(numel, DType::kF32, mode), static_cast<double>(numel));
}

void cpu_layer_norm(benchmark::State& state, bool backward) {
  const int64_t rows = state.range(0), cols = state.range(1);
  LayerNormSetup setup(rows, cols, DType::kF32, Device::cpu(), backward);
  for (auto _ : state) benchmark::DoNotOptimize(setup.step(backward));
  set_cpu_throughput(state, ln_bytes(rows * cols, DType::kF32, backward), static_cast<double>(rows * cols));
}

// The CNN's two BatchNorm2d inputs at batch 128 (Fashion-MNIST) and ResNet-18's first stage.
void cpu_bn_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "c", "hw"})->Args({128, 32, 28})->Args({128, 64, 14})->Args({128, 64, 32});
}

void cpu_ln_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols"})->Args({128, 1024})->Args({2048, 768});
}

void register_cpu() {
  for (BnMode mode : {BnMode::kTrainForward, BnMode::kTrainForwardBackward, BnMode::kEvalForward}) {
    cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", bn_name(mode), DType::kF32).c_str(),
                                              guarded([mode](benchmark::State& s) { cpu_batch_norm(s, mode); })))
        ->Apply(cpu_bn_shapes);
  }
  for (bool backward : {false, true}) {
    cpu_settings(benchmark::RegisterBenchmark(
                     bench_name("cpu", backward ? "layer_norm_fwd_bwd" : "layer_norm", DType::kF32).c_str(),
                     guarded([backward](benchmark::State& s) { cpu_layer_norm(s, backward); })))
        ->Apply(cpu_ln_shapes);
  }
}

// ---- CUDA ------------------------------------------------------------------------------

// ResNet-18 (CIFAR stem) at batch 128: one shape per stage; plus the CNN's first BN.
void cuda_bn_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "c", "hw"})
      ->Args({128, 64, 32})
      ->Args({128, 128, 16})
      ->Args({128, 256, 8})
      ->Args({128, 512, 4})
      ->Args({128, 32, 28});
}

// GPT-2 small (8 × 1024 tokens, 768), a wider model, and 32 Mi elements in long rows.
void cuda_ln_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols"})
      ->Args({8192, 768})
      ->Args({8192, 1024})
      ->Args({4096, 4096})
      ->Args({kCudaBandwidthElements / 8192, 8192});
}

void cuda_batch_norm(benchmark::State& state, BnMode mode, DType dtype) {
  const Shape shape = bn_shape(state);
  BatchNormSetup setup(shape, dtype, Device::cuda(0), mode == BnMode::kTrainForwardBackward);
  Tensor y;
  run_cuda_bandwidth(state, bn_bytes(shape_numel(shape), dtype, mode), [&] { y = setup.step(mode); });
}

void cuda_layer_norm(benchmark::State& state, bool backward, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1);
  LayerNormSetup setup(rows, cols, dtype, Device::cuda(0), backward);
  Tensor y;
  run_cuda_bandwidth(state, ln_bytes(rows * cols, dtype, backward), [&] { y = setup.step(backward); });
}

void register_cuda() {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (BnMode mode : {BnMode::kTrainForward, BnMode::kTrainForwardBackward, BnMode::kEvalForward}) {
      cuda_settings(benchmark::RegisterBenchmark(
                        bench_name("cuda", bn_name(mode), dtype).c_str(),
                        guarded([mode, dtype](benchmark::State& s) { cuda_batch_norm(s, mode, dtype); })))
          ->Apply(cuda_bn_shapes);
    }
    for (bool backward : {false, true}) {
      cuda_settings(benchmark::RegisterBenchmark(
                        bench_name("cuda", backward ? "layer_norm_fwd_bwd" : "layer_norm", dtype).c_str(),
                        guarded([backward, dtype](benchmark::State& s) { cuda_layer_norm(s, backward, dtype); })))
          ->Apply(cuda_ln_shapes);
    }
  }
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  tandem::bench::register_cpu();
  return tandem::bench::benchmark_main(argc, argv, "bench_norm", tandem::bench::register_cuda);
}
