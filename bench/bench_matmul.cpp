// Matrix-product benchmarks: matmul, and linear forward + backward, for the layer
// shapes of the 784-256-10 MLP at batch 128 and for square 1024/2048/4096 matrices;
// linear with a ReLU/GELU fused into its epilogue against linear then the activation op
// (MLP and GPT feed-forward shapes); causal scaled dot-product attention forward +
// backward at GPT shapes. CPU (FLOP/s) and, when a device is present, CUDA (TFLOP/s,
// event-timed).
#include <cstdint>
#include <functional>

#include "bench/bench_common.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "engine/ops/linalg.h"

namespace tandem::bench {
namespace {

// One shape: (M, K) @ (K, N); for linear, x (M, K), W (N, K), b (N).
struct GemmShape {
  int64_t m, k, n;
  bool input_grad;  // whether linear's x needs a gradient (not for the first layer)
};

constexpr GemmShape kMlpLayer1 = {128, 784, 256, false};
constexpr GemmShape kMlpLayer2 = {128, 256, 10, true};

GemmShape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), state.range(3) != 0};
}

double matmul_flops(const GemmShape& s) { return 2.0 * static_cast<double>(s.m * s.k * s.n); }

// Forward, grad of W, and grad of x when it needs one: 2·M·N·K each.
double linear_flops(const GemmShape& s) { return matmul_flops(s) * (s.input_grad ? 3.0 : 2.0); }

// Parameters and inputs of one linear forward + backward, on `options`' device and dtype.
struct LinearSetup {
  Tensor x, weight, bias, grad_out;

  LinearSetup(const GemmShape& s, const TensorOptions& options) {
    const TensorOptions f32 = {.device = options.device};
    x = randn({s.m, s.k}, f32).to(options.dtype);
    weight = randn({s.n, s.k}, f32).to(options.dtype);
    bias = randn({s.n}, f32).to(options.dtype);
    grad_out = randn({s.m, s.n}, f32).to(options.dtype);
    x.set_requires_grad(s.input_grad);
    weight.set_requires_grad(true);
    bias.set_requires_grad(true);
  }

  /// One forward + backward; with an activation, fused into linear() or (`fused` false)
  /// as linear() then the activation op.
  void step(Activation act = Activation::kNone, bool fused = true) {
    // Gradients are dropped (set_to_none) each step, as an optimizer's zero_grad does,
    // so backward writes them instead of accumulating.
    weight.set_grad(Tensor());
    bias.set_grad(Tensor());
    if (x.requires_grad()) x.set_grad(Tensor());
    Tensor y;
    if (fused || act == Activation::kNone) y = linear(x, weight, bias, act);
    else if (act == Activation::kRelu) y = relu(linear(x, weight, bias));
    else y = gelu(linear(x, weight, bias), act == Activation::kGeluTanh);
    y.backward(grad_out);
  }
};

// Linear + activation shapes: the MLP's first layer (ReLU) and the GPT feed-forward's
// c_fc (GELU) at batch 8: gpt-mini (256 x 384 -> 1536) on the CPU, GPT-2 small (1024 x
// 768 -> 3072) on CUDA. Args: M, K, N, dx, activation (1 ReLU, 2 GELU), fused.
void apply_activation_shapes(benchmark::internal::Benchmark* b, bool gpt2) {
  b->ArgNames({"M", "K", "N", "dx", "act", "fused"});
  for (int fused : {1, 0}) {
    b->Args({kMlpLayer1.m, kMlpLayer1.k, kMlpLayer1.n, 0, static_cast<int>(Activation::kRelu), fused});
    if (gpt2) b->Args({8 * 1024, 768, 3072, 1, static_cast<int>(Activation::kGelu), fused});
    else b->Args({8 * 256, 384, 1536, 1, static_cast<int>(Activation::kGelu), fused});
  }
}

Activation activation_of(const benchmark::State& state) { return static_cast<Activation>(state.range(4)); }

// Causal attention of (batch·heads, T, D) queries, keys and values, forward + backward:
// the scores and ·v products forward, four products backward, 2·T²·D each per sequence
// (counted in full: the masked half is computed too), softmax passes not counted.
struct AttentionSetup {
  Tensor q, k, v, grad_out;

  AttentionSetup(int64_t bh, int64_t t, int64_t d, const TensorOptions& options) {
    const TensorOptions f32 = {.device = options.device};
    for (Tensor* x : {&q, &k, &v}) {
      *x = randn({bh, t, d}, f32).to(options.dtype);
      x->set_requires_grad(true);
    }
    grad_out = randn({bh, t, d}, f32).to(options.dtype);
  }

  void step() {
    for (Tensor* x : {&q, &k, &v}) x->set_grad(Tensor());
    scaled_dot_product_attention(q, k, v, /*is_causal=*/true).backward(grad_out);
  }
};

double attention_flops(const benchmark::State& state) {
  const auto bh = static_cast<double>(state.range(0)), t = static_cast<double>(state.range(1)),
             d = static_cast<double>(state.range(2));
  return 6.0 * 2.0 * bh * t * t * d;
}

void apply_shapes(benchmark::internal::Benchmark* b, bool with_4096) {
  b->ArgNames({"M", "K", "N", "dx"});
  for (const GemmShape& s : {kMlpLayer1, kMlpLayer2}) b->Args({s.m, s.k, s.n, s.input_grad});
  for (int64_t n : {1024, 2048}) b->Args({n, n, n, 1});
  if (with_4096) b->Args({4096, 4096, 4096, 1});
}

// ---- CPU -------------------------------------------------------------------------------

void cpu_matmul(benchmark::State& state) {
  const GemmShape s = shape_of(state);
  const Tensor a = randn({s.m, s.k}), b = randn({s.k, s.n});
  for (auto _ : state) benchmark::DoNotOptimize(matmul(a, b));
  set_cpu_flops(state, matmul_flops(s));
}

void cpu_linear(benchmark::State& state) {
  const GemmShape s = shape_of(state);
  LinearSetup setup(s, {});
  for (auto _ : state) setup.step();
  set_cpu_flops(state, linear_flops(s));
}

void cpu_linear_activation(benchmark::State& state) {
  const GemmShape s = shape_of(state);
  LinearSetup setup(s, {});
  for (auto _ : state) setup.step(activation_of(state), state.range(5) != 0);
  set_cpu_flops(state, linear_flops(s));
}

void cpu_attention(benchmark::State& state) {
  AttentionSetup setup(state.range(0), state.range(1), state.range(2), {});
  for (auto _ : state) setup.step();
  set_cpu_flops(state, attention_flops(state));
}

void register_cpu() {
  // 4096³ takes about half a second per product on 2 cores: matmul runs it once, linear
  // (3 GEMMs) not at all.
  cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", "matmul", DType::kF32).c_str(), guarded(cpu_matmul)))
      ->Apply([](benchmark::internal::Benchmark* b) { apply_shapes(b, false); });
  benchmark::RegisterBenchmark(bench_name("cpu", "matmul", DType::kF32).c_str(), guarded(cpu_matmul))
      ->ArgNames({"M", "K", "N", "dx"})
      ->Args({4096, 4096, 4096, 1})
      ->Iterations(1)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  cpu_settings(
      benchmark::RegisterBenchmark(bench_name("cpu", "linear_fwd_bwd", DType::kF32).c_str(), guarded(cpu_linear)))
      ->Apply([](benchmark::internal::Benchmark* b) { apply_shapes(b, false); });
  cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", "linear_activation_fwd_bwd", DType::kF32).c_str(),
                                            guarded(cpu_linear_activation)))
      ->Apply([](benchmark::internal::Benchmark* b) { apply_activation_shapes(b, false); });
  // gpt-mini's attention at batch 8: 8 x 6 heads of 256 positions x 64.
  cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", "attention_causal_fwd_bwd", DType::kF32).c_str(),
                                            guarded(cpu_attention)))
      ->ArgNames({"BH", "T", "D"})
      ->Args({48, 256, 64});
}

// ---- CUDA ------------------------------------------------------------------------------

// Small products finish in microseconds: time more of them per pair of events.
int inner_calls(double flops) { return flops < 1e10 ? 20 : 3; }

void cuda_matmul(benchmark::State& state, DType dtype) {
  const GemmShape s = shape_of(state);
  const TensorOptions f32 = {.device = Device::cuda(0)};
  const Tensor a = randn({s.m, s.k}, f32).to(dtype), b = randn({s.k, s.n}, f32).to(dtype);
  Tensor c;
  run_cuda_flops(
      state, matmul_flops(s), [&] { c = matmul(a, b); }, inner_calls(matmul_flops(s)));
}

void cuda_linear(benchmark::State& state, DType dtype) {
  const GemmShape s = shape_of(state);
  LinearSetup setup(s, {.dtype = dtype, .device = Device::cuda(0)});
  run_cuda_flops(
      state, linear_flops(s), [&] { setup.step(); }, inner_calls(linear_flops(s)));
}

void cuda_linear_activation(benchmark::State& state, DType dtype) {
  const GemmShape s = shape_of(state);
  LinearSetup setup(s, {.dtype = dtype, .device = Device::cuda(0)});
  const Activation act = activation_of(state);
  const bool fused = state.range(5) != 0;
  run_cuda_flops(
      state, linear_flops(s), [&] { setup.step(act, fused); }, inner_calls(linear_flops(s)));
}

void cuda_attention(benchmark::State& state, DType dtype) {
  AttentionSetup setup(state.range(0), state.range(1), state.range(2), {.dtype = dtype, .device = Device::cuda(0)});
  run_cuda_flops(state, attention_flops(state), [&] { setup.step(); });
}

void register_cuda() {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "matmul", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_matmul(s, dtype); })))
        ->Apply([](benchmark::internal::Benchmark* b) { apply_shapes(b, true); });
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "linear_fwd_bwd", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_linear(s, dtype); })))
        ->Apply([](benchmark::internal::Benchmark* b) { apply_shapes(b, true); });
    cuda_settings(
        benchmark::RegisterBenchmark(bench_name("cuda", "linear_activation_fwd_bwd", dtype).c_str(),
                                     guarded([dtype](benchmark::State& s) { cuda_linear_activation(s, dtype); })))
        ->Apply([](benchmark::internal::Benchmark* b) { apply_activation_shapes(b, true); });
    // GPT-2 small's attention at batch 8 (8 x 12 heads of 1024 x 64), and gpt-mini's.
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "attention_causal_fwd_bwd", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_attention(s, dtype); })))
        ->ArgNames({"BH", "T", "D"})
        ->Args({96, 1024, 64})
        ->Args({48, 256, 64});
  }
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  tandem::bench::register_cpu();
  return tandem::bench::benchmark_main(argc, argv, "bench_matmul", tandem::bench::register_cuda);
}
