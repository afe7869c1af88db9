// Softmax-family benchmarks: softmax and log_softmax (forward, and forward + backward)
// over the last dim, and fused cross-entropy forward + backward, on the CPU
// (items/s, bytes/s) and, when a device is present, on CUDA (GB/s, % of copy bandwidth).
// Bytes are the minimum a fused implementation must move (each operand read or
// written once), so a percentage below the element-wise ops' shows unfused passes.
#include <cstdint>
#include <string>

#include "bench/bench_common.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "engine/ops/nn.h"

namespace tandem::bench {
namespace {

enum class Kind { kSoftmax, kLogSoftmax };

const char* kind_name(Kind kind, bool backward) {
  if (kind == Kind::kSoftmax) return backward ? "softmax_fwd_bwd" : "softmax";
  return backward ? "log_softmax_fwd_bwd" : "log_softmax";
}

Tensor apply(Kind kind, const Tensor& x) { return kind == Kind::kSoftmax ? softmax(x, -1) : log_softmax(x, -1); }

// Forward reads x and writes y; backward reads y and dy and writes dx.
double softmax_bytes(int64_t numel, DType dtype, bool backward) {
  return static_cast<double>(numel * static_cast<int64_t>(dtype_size(dtype))) * (backward ? 5.0 : 2.0);
}

// Forward reads the logits; backward reads them again and writes their gradient.
double cross_entropy_bytes(int64_t numel, DType dtype) {
  return 3.0 * static_cast<double>(numel * static_cast<int64_t>(dtype_size(dtype)));
}

Tensor random_targets(int64_t rows, int64_t classes, Device device) {
  return (rand({rows}) * static_cast<double>(classes)).to(DType::kI64).to(device);
}

// One benchmark step on (rows, cols) data: forward only, or forward + backward.
struct SoftmaxSetup {
  Tensor x, grad_out;

  SoftmaxSetup(int64_t rows, int64_t cols, const TensorOptions& options, bool backward) {
    const TensorOptions f32 = {.device = options.device};
    x = randn({rows, cols}, f32).to(options.dtype);
    if (backward) {
      x.set_requires_grad(true);
      grad_out = randn({rows, cols}, f32).to(options.dtype);
    }
  }

  Tensor forward(Kind kind) const { return apply(kind, x); }
  void forward_backward(Kind kind) {
    x.set_grad(Tensor());
    apply(kind, x).backward(grad_out);
  }
};

struct CrossEntropySetup {
  Tensor logits, targets;

  CrossEntropySetup(int64_t rows, int64_t cols, const TensorOptions& options) {
    logits = randn({rows, cols}, {.device = options.device}).to(options.dtype);
    logits.set_requires_grad(true);
    targets = random_targets(rows, cols, options.device);
  }

  void step() {
    logits.set_grad(Tensor());
    cross_entropy(logits, targets).backward();
  }
};

// ---- CPU -------------------------------------------------------------------------------

void cpu_softmax(benchmark::State& state, Kind kind, bool backward) {
  const int64_t rows = state.range(0), cols = state.range(1);
  SoftmaxSetup setup(rows, cols, {}, backward);
  for (auto _ : state) {
    if (backward) {
      setup.forward_backward(kind);
    } else {
      benchmark::DoNotOptimize(setup.forward(kind));
    }
  }
  set_cpu_throughput(state, softmax_bytes(rows * cols, DType::kF32, backward), static_cast<double>(rows * cols));
}

void cpu_cross_entropy(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  CrossEntropySetup setup(rows, cols, {});
  for (auto _ : state) setup.step();
  set_cpu_throughput(state, cross_entropy_bytes(rows * cols, DType::kF32), static_cast<double>(rows * cols));
}

// The MLP's logits (128 x 10), an ImageNet-sized classifier and a language-model vocabulary.
void cpu_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols"})->Args({128, 10})->Args({256, 1000})->Args({32, 32768});
}

void register_cpu() {
  for (Kind kind : {Kind::kSoftmax, Kind::kLogSoftmax}) {
    for (bool backward : {false, true}) {
      cpu_settings(benchmark::RegisterBenchmark(
                       bench_name("cpu", kind_name(kind, backward), DType::kF32).c_str(),
                       guarded([kind, backward](benchmark::State& s) { cpu_softmax(s, kind, backward); })))
          ->Apply(cpu_shapes);
    }
  }
  cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", "cross_entropy_fwd_bwd", DType::kF32).c_str(),
                                            guarded(cpu_cross_entropy)))
      ->Apply(cpu_shapes);
}

// ---- CUDA ------------------------------------------------------------------------------

// 32 Mi elements (128 MiB in f32) in each shape: short rows, ImageNet classes, and a
// GPT-2 vocabulary padded to 50304; plus the MLP's logits for launch latency.
void cuda_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols"})
      ->Args({kCudaBandwidthElements / 1024, 1024})
      ->Args({kCudaBandwidthElements / 1000, 1000})
      ->Args({kCudaBandwidthElements / 50304, 50304})
      ->Args({128, 10});
}

void cuda_softmax(benchmark::State& state, Kind kind, bool backward, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1);
  SoftmaxSetup setup(rows, cols, {.dtype = dtype, .device = Device::cuda(0)}, backward);
  Tensor y;
  run_cuda_bandwidth(state, softmax_bytes(rows * cols, dtype, backward), [&] {
    if (backward) {
      setup.forward_backward(kind);
    } else {
      y = setup.forward(kind);
    }
  });
}

void cuda_cross_entropy(benchmark::State& state, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1);
  CrossEntropySetup setup(rows, cols, {.dtype = dtype, .device = Device::cuda(0)});
  run_cuda_bandwidth(state, cross_entropy_bytes(rows * cols, dtype), [&] { setup.step(); });
}

void register_cuda() {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (Kind kind : {Kind::kSoftmax, Kind::kLogSoftmax}) {
      for (bool backward : {false, true}) {
        cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", kind_name(kind, backward), dtype).c_str(),
                                                   guarded([kind, backward, dtype](benchmark::State& s) {
                                                     cuda_softmax(s, kind, backward, dtype);
                                                   })))
            ->Apply(cuda_shapes);
      }
    }
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "cross_entropy_fwd_bwd", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_cross_entropy(s, dtype); })))
        ->Apply(cuda_shapes);
  }
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  tandem::bench::register_cpu();
  return tandem::bench::benchmark_main(argc, argv, "bench_softmax", tandem::bench::register_cuda);
}
