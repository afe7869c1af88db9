// Helpers shared by the Google Benchmark programs: run settings for CPU and CUDA
// benchmarks, CUDA-event timing with the results as GB/s, % of the measured
// device-to-device copy bandwidth and TFLOP/s, and a main() that registers the CUDA
// benchmarks only when a device is present (and says why they were skipped otherwise).
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "kernels/dtype.h"

namespace tandem::bench {

/// f32 elements of each operand of a CUDA bandwidth benchmark: 32 Mi elements = 128 MiB,
/// far above H100's 50 MB L2, so the kernels stream from HBM.
inline constexpr int64_t kCudaBandwidthElements = int64_t{1} << 25;

/// "<device>/<op>/<dtype>", e.g. "cuda/relu/bfloat16".
std::string bench_name(std::string_view device, std::string_view op, DType dtype);

/// Wraps a benchmark body so that an exception (an op with no kernel for some dtype, say)
/// marks only that benchmark as failed, with the message, instead of ending the program.
std::function<void(benchmark::State&)> guarded(std::function<void(benchmark::State&)> body);

/// CPU settings: short runs (the CPU suite must stay at a minute or two on 2 cores) and
/// wall-clock time, since OpenMP workers do part of the work off the timing thread.
benchmark::internal::Benchmark* cpu_settings(benchmark::internal::Benchmark* b);

/// CUDA settings: manual (event) time, 5 repetitions reported as aggregates (read the
/// _median rows).
benchmark::internal::Benchmark* cuda_settings(benchmark::internal::Benchmark* b);

/// Device-to-device copy bandwidth of cuda:0 in GB/s (bytes read + written per second),
/// from a Tensor::copy_ of 256 MiB between two CUDA tensors, median of 20 event-timed
/// copies. Measured on the first call, then cached.
double cuda_copy_bandwidth_gbps();

/// Runs the benchmark loop of a CUDA op: each iteration times `inner` calls of `fn` on
/// cuda:0's current stream between two events (several calls per pair of events hide the
/// host's launch gap) and reports the per-call time as manual time.
/// Returns the total measured device seconds per call, summed over iterations.
double run_cuda_loop(benchmark::State& state, int inner, const std::function<void()>& fn);

/// run_cuda_loop plus counters GB/s and pct_of_copy_bw for `bytes` moved per call.
void run_cuda_bandwidth(benchmark::State& state, double bytes, const std::function<void()>& fn, int inner = 10);

/// run_cuda_loop plus a TFLOP/s counter for `flops` per call.
void run_cuda_flops(benchmark::State& state, double flops, const std::function<void()>& fn, int inner = 3);

/// Sets CPU counters for `bytes` and `items` per iteration (bytes/s and items/s).
void set_cpu_throughput(benchmark::State& state, double bytes, double items);

/// Sets a GFLOP/s rate counter for `flops` per iteration.
void set_cpu_flops(benchmark::State& state, double flops);

/// The main() of a benchmark program: registers the CPU benchmarks (done statically by
/// the program) and, when a CUDA device is usable, calls `register_cuda` and measures
/// the copy ceiling once; otherwise prints why the CUDA benchmarks were skipped.
int benchmark_main(int argc, char** argv, const char* program, const std::function<void()>& register_cuda);

}  // namespace tandem::bench
