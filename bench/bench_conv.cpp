// Convolution benchmarks: conv2d forward, and forward + backward, for the CNN's two
// convolutions at batch 128 (1→32 on 28x28 and 32→64 on 14x14, 3x3, pad 1) and a
// ResNet-18 3x3 64→64 convolution on 32x32; CPU (GFLOP/s) and, when a device is present,
// CUDA through cuDNN (TFLOP/s, event-timed).
#include <cstdint>
#include <functional>

#include "bench/bench_common.h"
#include "engine/ops/conv.h"
#include "engine/ops/factory.h"

namespace tandem::bench {
namespace {

// One 3x3, padding-1 convolution: x (N, C, H, H) -> (N, O, H, H).
struct ConvShape {
  int64_t n, c, o, h;
  bool input_grad;  // whether x needs a gradient (not for the first layer)
};

constexpr ConvShape kCnnConv1 = {128, 1, 32, 28, false};
constexpr ConvShape kCnnConv2 = {128, 32, 64, 14, true};
constexpr ConvShape kResNetConv = {128, 64, 64, 32, true};

ConvShape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), state.range(3), state.range(4) != 0};
}

double forward_flops(const ConvShape& s) { return 2.0 * static_cast<double>(s.n * s.o * s.h * s.h * s.c * 9); }

// Forward, weight gradient, and input gradient when x needs one: the same MACs each.
double fwd_bwd_flops(const ConvShape& s) { return forward_flops(s) * (s.input_grad ? 3.0 : 2.0); }

// Parameters and inputs of one conv forward + backward, on `options`' device and dtype.
struct ConvSetup {
  Tensor x, weight, bias, grad_out;

  ConvSetup(const ConvShape& s, const TensorOptions& options) {
    const TensorOptions f32 = {.device = options.device};
    x = randn({s.n, s.c, s.h, s.h}, f32).to(options.dtype);
    weight = randn({s.o, s.c, 3, 3}, f32).to(options.dtype);
    bias = randn({s.o}, f32).to(options.dtype);
    grad_out = randn({s.n, s.o, s.h, s.h}, f32).to(options.dtype);
    x.set_requires_grad(s.input_grad);
    weight.set_requires_grad(true);
    bias.set_requires_grad(true);
  }

  Tensor forward() const { return conv2d(x, weight, bias, {.padding = 1}); }

  void step() {
    // Gradients are dropped each step, as an optimizer's zero_grad(set_to_none) does.
    weight.set_grad(Tensor());
    bias.set_grad(Tensor());
    if (x.requires_grad()) x.set_grad(Tensor());
    forward().backward(grad_out);
  }
};

void apply_shapes(benchmark::internal::Benchmark* b, bool with_resnet) {
  b->ArgNames({"N", "C", "O", "H", "dx"});
  for (const ConvShape& s : {kCnnConv1, kCnnConv2}) b->Args({s.n, s.c, s.o, s.h, s.input_grad});
  if (with_resnet) b->Args({kResNetConv.n, kResNetConv.c, kResNetConv.o, kResNetConv.h, kResNetConv.input_grad});
}

// ---- CPU -------------------------------------------------------------------------------

void cpu_forward(benchmark::State& state) {
  const ConvShape s = shape_of(state);
  ConvSetup setup(s, {});
  for (auto _ : state) benchmark::DoNotOptimize(setup.forward());
  set_cpu_flops(state, forward_flops(s));
}

void cpu_fwd_bwd(benchmark::State& state) {
  const ConvShape s = shape_of(state);
  ConvSetup setup(s, {});
  for (auto _ : state) setup.step();
  set_cpu_flops(state, fwd_bwd_flops(s));
}

void register_cpu() {
  // The ResNet layer (7.7 GFLOP forward + backward) takes about a second per step on
  // 2 cores: run it a few times only.
  for (const bool resnet : {false, true}) {
    auto* fwd = benchmark::RegisterBenchmark(bench_name("cpu", "conv2d_fwd", DType::kF32).c_str(), guarded(cpu_forward));
    auto* both =
        benchmark::RegisterBenchmark(bench_name("cpu", "conv2d_fwd_bwd", DType::kF32).c_str(), guarded(cpu_fwd_bwd));
    for (auto* b : {fwd, both}) {
      if (resnet) {
        b->ArgNames({"N", "C", "O", "H", "dx"})
            ->Args({kResNetConv.n, kResNetConv.c, kResNetConv.o, kResNetConv.h, kResNetConv.input_grad})
            ->Iterations(3)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      } else {
        cpu_settings(b)->Apply([](benchmark::internal::Benchmark* bb) { apply_shapes(bb, false); });
      }
    }
  }
}

// ---- CUDA ------------------------------------------------------------------------------

void cuda_forward(benchmark::State& state, DType dtype) {
  const ConvShape s = shape_of(state);
  ConvSetup setup(s, {.dtype = dtype, .device = Device::cuda(0)});
  Tensor y;
  run_cuda_flops(state, forward_flops(s), [&] { y = setup.forward(); }, 10);
}

void cuda_fwd_bwd(benchmark::State& state, DType dtype) {
  const ConvShape s = shape_of(state);
  ConvSetup setup(s, {.dtype = dtype, .device = Device::cuda(0)});
  run_cuda_flops(state, fwd_bwd_flops(s), [&] { setup.step(); }, 5);
}

void register_cuda() {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "conv2d_fwd", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_forward(s, dtype); })))
        ->Apply([](benchmark::internal::Benchmark* b) { apply_shapes(b, true); });
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "conv2d_fwd_bwd", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_fwd_bwd(s, dtype); })))
        ->Apply([](benchmark::internal::Benchmark* b) { apply_shapes(b, true); });
  }
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  tandem::bench::register_cpu();
  return tandem::bench::benchmark_main(argc, argv, "bench_conv", tandem::bench::register_cuda);
}
