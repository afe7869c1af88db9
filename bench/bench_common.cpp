// Shared benchmark helpers: run settings, CUDA-event timing, the device-to-device copy
// ceiling that CUDA bandwidth figures are compared against, and the programs' main().
#include "bench/bench_common.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "engine/ops/factory.h"
#include "engine/tensor.h"
#include "tandem/config.h"

#if TANDEM_CUDA
#include <cuda_runtime.h>
#endif

namespace tandem::bench {

std::string bench_name(std::string_view device, std::string_view op, DType dtype) {
  std::string name(device);
  name.append("/").append(op).append("/").append(dtype_name(dtype));
  return name;
}

std::function<void(benchmark::State&)> guarded(std::function<void(benchmark::State&)> body) {
  return [body = std::move(body)](benchmark::State& state) {
    try {
      body(state);
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
    }
  };
}

benchmark::internal::Benchmark* cpu_settings(benchmark::internal::Benchmark* b) {
  return b->MinTime(0.1)->MinWarmUpTime(0.02)->UseRealTime()->Unit(benchmark::kMicrosecond);
}

benchmark::internal::Benchmark* cuda_settings(benchmark::internal::Benchmark* b) {
  return b->UseManualTime()->Repetitions(5)->ReportAggregatesOnly(true)->MinTime(0.05)->Unit(benchmark::kMicrosecond);
}

double run_cuda_loop(benchmark::State& state, int inner, const std::function<void()>& fn) {
  const cuda::Stream stream = cuda::current_stream(0);
  // One untimed call first: the caching allocator reaches its steady state (no
  // cudaMalloc inside the timed region) and lazily created handles exist.
  fn();
  stream.synchronize();
  cuda::Event start(true), stop(true);
  double total_s = 0.0;
  for (auto _ : state) {
    start.record(stream);
    for (int i = 0; i < inner; ++i) fn();
    stop.record(stream);
    stop.synchronize();
    const double per_call_s = stop.elapsed_ms(start) * 1e-3 / inner;
    state.SetIterationTime(per_call_s);
    total_s += per_call_s;
  }
  return total_s;
}

void run_cuda_bandwidth(benchmark::State& state, double bytes, const std::function<void()>& fn, int inner) {
  const double total_s = run_cuda_loop(state, inner, fn);
  const double gbps = bytes * static_cast<double>(state.iterations()) / total_s * 1e-9;
  state.counters["GB/s"] = gbps;
  state.counters["pct_of_copy_bw"] = 100.0 * gbps / cuda_copy_bandwidth_gbps();
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
}

void run_cuda_flops(benchmark::State& state, double flops, const std::function<void()>& fn, int inner) {
  const double total_s = run_cuda_loop(state, inner, fn);
  state.counters["TFLOP/s"] = flops * static_cast<double>(state.iterations()) / total_s * 1e-12;
}

void set_cpu_throughput(benchmark::State& state, double bytes, double items) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
  state.SetItemsProcessed(static_cast<int64_t>(items) * state.iterations());
}

void set_cpu_flops(benchmark::State& state, double flops) {
  state.counters["FLOP/s"] =
      benchmark::Counter(flops * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

double cuda_copy_bandwidth_gbps() {
  static const double gbps = [] {
    // 64 Mi f32 = 256 MiB per tensor: large enough that the copy streams from HBM.
    const Shape shape = {int64_t{1} << 26};
    Tensor src = ones(shape, {.device = Device::cuda(0)});
    Tensor dst = zeros(shape, {.device = Device::cuda(0)});
    const cuda::Stream stream = cuda::current_stream(0);
    for (int i = 0; i < 3; ++i) dst.copy_(src);
    stream.synchronize();
    std::vector<double> seconds;
    for (int i = 0; i < 20; ++i) {
      cuda::Event start(true), stop(true);
      start.record(stream);
      dst.copy_(src);
      stop.record(stream);
      stop.synchronize();
      seconds.push_back(stop.elapsed_ms(start) * 1e-3);
    }
    std::nth_element(seconds.begin(), seconds.begin() + 10, seconds.end());
    // A copy reads and writes every byte once.
    return 2.0 * static_cast<double>(src.nbytes()) / seconds[10] * 1e-9;
  }();
  return gbps;
}

namespace {

std::string cuda_device_name() {
#if TANDEM_CUDA
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) return prop.name;
#endif
  return "unknown";
}

}  // namespace

int benchmark_main(int argc, char** argv, const char* program, const std::function<void()>& register_cuda) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (cuda::is_available()) {
    register_cuda();
    const double ceiling = cuda_copy_bandwidth_gbps();
    benchmark::AddCustomContext("cuda_device", cuda_device_name());
    benchmark::AddCustomContext("cuda_copy_bandwidth_GBps", std::to_string(ceiling));
    std::fprintf(stderr, "%s: cuda:0 is %s; device-to-device copy ceiling %.1f GB/s (read+write)\n", program,
                 cuda_device_name().c_str(), ceiling);
  } else {
    const std::string reason = kBuiltWithCuda ? cuda::unavailable_reason() : "this build of Tandem has no CUDA";
    std::fprintf(stderr, "%s: CUDA benchmarks skipped: %s\n", program, reason.c_str());
    benchmark::AddCustomContext("cuda", "skipped: " + reason);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace tandem::bench
