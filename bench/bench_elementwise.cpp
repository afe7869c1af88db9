// Element-wise benchmarks: unary relu / gelu / exp and binary add (same shape and a
// bias row broadcast over a matrix), on the CPU (items/s, bytes/s) and, when a device
// is present, on CUDA (GB/s and % of the measured device-to-device copy bandwidth).
#include <cstdint>
#include <functional>
#include <string>

#include "bench/bench_common.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"

namespace tandem::bench {
namespace {

using UnaryOp = std::function<Tensor(const Tensor&)>;

// Columns of the broadcast-add matrix: a typical hidden width (bias of a Linear layer).
constexpr int64_t kBiasCols = 4096;

UnaryOp unary_op(const std::string& name) {
  if (name == "relu") return [](const Tensor& x) { return relu(x); };
  if (name == "gelu") return [](const Tensor& x) { return gelu(x); };
  return [](const Tensor& x) { return exp(x); };
}

// ---- CPU -------------------------------------------------------------------------------

void cpu_unary(benchmark::State& state, const std::string& name) {
  const int64_t n = state.range(0);
  const Tensor x = randn({n});
  const UnaryOp op = unary_op(name);
  for (auto _ : state) benchmark::DoNotOptimize(op(x));
  set_cpu_throughput(state, 2.0 * 4.0 * static_cast<double>(n), static_cast<double>(n));  // read x, write y
}

void cpu_add(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = randn({n}), b = randn({n});
  for (auto _ : state) benchmark::DoNotOptimize(add(a, b));
  set_cpu_throughput(state, 3.0 * 4.0 * static_cast<double>(n), static_cast<double>(n));
}

void cpu_add_bias(benchmark::State& state) {
  const int64_t rows = state.range(0) / kBiasCols;
  const Tensor a = randn({rows, kBiasCols}), bias = randn({kBiasCols});
  for (auto _ : state) benchmark::DoNotOptimize(add(a, bias));
  const double n = static_cast<double>(rows * kBiasCols);
  set_cpu_throughput(state, 4.0 * (2.0 * n + kBiasCols), n);
}

// 64 Ki elements (256 KiB: cache-resident) and 4 Mi elements (16 MiB: memory-bound).
void cpu_sizes(benchmark::internal::Benchmark* b) { b->Arg(int64_t{1} << 16)->Arg(int64_t{1} << 22); }

void register_cpu() {
  for (const char* name : {"relu", "gelu", "exp"})
    cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", name, DType::kF32).c_str(),
                                              guarded([name](benchmark::State& s) { cpu_unary(s, name); })))
        ->Apply(cpu_sizes);
  cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", "add", DType::kF32).c_str(), guarded(cpu_add)))
      ->Apply(cpu_sizes);
  cpu_settings(benchmark::RegisterBenchmark(bench_name("cpu", "add_bias", DType::kF32).c_str(), guarded(cpu_add_bias)))
      ->Apply(cpu_sizes);
}

// ---- CUDA ------------------------------------------------------------------------------

TensorOptions cuda_options(DType dtype) { return {.dtype = dtype, .device = Device::cuda(0)}; }

Tensor cuda_randn(const Shape& shape, DType dtype) { return randn(shape, cuda_options(DType::kF32)).to(dtype); }

void cuda_unary(benchmark::State& state, const std::string& name, DType dtype) {
  const int64_t n = kCudaBandwidthElements;
  const Tensor x = cuda_randn({n}, dtype);
  const UnaryOp op = unary_op(name);
  Tensor y;
  run_cuda_bandwidth(state, 2.0 * static_cast<double>(x.nbytes()), [&] { y = op(x); });
}

void cuda_add(benchmark::State& state, DType dtype) {
  const int64_t n = kCudaBandwidthElements;
  const Tensor a = cuda_randn({n}, dtype), b = cuda_randn({n}, dtype);
  Tensor y;
  run_cuda_bandwidth(state, 3.0 * static_cast<double>(a.nbytes()), [&] { y = add(a, b); });
}

void cuda_add_bias(benchmark::State& state, DType dtype) {
  const int64_t rows = kCudaBandwidthElements / kBiasCols;
  const Tensor a = cuda_randn({rows, kBiasCols}, dtype), bias = cuda_randn({kBiasCols}, dtype);
  Tensor y;
  run_cuda_bandwidth(state, 2.0 * static_cast<double>(a.nbytes()) + static_cast<double>(bias.nbytes()),
                     [&] { y = add(a, bias); });
}

void register_cuda() {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const char* name : {"relu", "gelu", "exp"})
      cuda_settings(
          benchmark::RegisterBenchmark(bench_name("cuda", name, dtype).c_str(),
                                       guarded([name, dtype](benchmark::State& s) { cuda_unary(s, name, dtype); })));
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "add", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_add(s, dtype); })));
    cuda_settings(benchmark::RegisterBenchmark(bench_name("cuda", "add_bias", dtype).c_str(),
                                               guarded([dtype](benchmark::State& s) { cuda_add_bias(s, dtype); })));
  }
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  tandem::bench::register_cpu();
  return tandem::bench::benchmark_main(argc, argv, "bench_elementwise", tandem::bench::register_cuda);
}
