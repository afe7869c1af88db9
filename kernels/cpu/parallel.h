// When CPU kernels split work across OpenMP threads. A parallel region costs a
// fork/join plus, with libgomp's default wait policy, workers that keep spinning
// after it and compete with the main and data-loader threads; below these sizes
// that costs more than a second core gains (measured on the 2-core development
// machine with the MLP of bench/compare_pytorch, see bench/RESULTS.md).
#pragma once

#include <cstdint>

namespace tandem::kernels::cpu {

/// Element-wise and reduction loops: elements touched.
inline constexpr int64_t kParallelMinElements = int64_t{1} << 20;
/// Matrix products: multiply-adds (m·n·k).
inline constexpr double kParallelMinMacs = static_cast<double>(int64_t{1} << 26);

}  // namespace tandem::kernels::cpu
