// When CPU kernels split work across OpenMP threads. A parallel region costs a
// fork/join plus, with libgomp's default wait policy, workers that keep spinning
// after it and compete with the main and data-loader threads; below these sizes
// that costs more than a second core gains (measured on the 2-core development
// machine with the MLP of bench/compare_pytorch, see bench/RESULTS.md).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace tandem::kernels::cpu {

/// Element-wise and reduction loops: elements touched.
inline constexpr int64_t kParallelMinElements = int64_t{1} << 20;
/// Matrix products: multiply-adds (m·n·k).
inline constexpr double kParallelMinMacs = static_cast<double>(int64_t{1} << 26);

/// Elements per piece when the elements of many tensors are split over threads: large
/// enough that a piece's loop dominates its scheduling, small enough to balance.
inline constexpr int64_t kMultiTensorChunk = int64_t{1} << 16;

/// Calls fn(t, begin, end) on consecutive pieces of at most kMultiTensorChunk elements
/// of every tensor t < count (numel(t) elements each), the pieces split over one OpenMP
/// team when the tensors hold kParallelMinElements or more together: the multi-tensor
/// optimizer steps, so a model of many small tensors still uses every core.
template <class Numel, class Fn>
void for_each_tensor_piece(int64_t count, Numel&& numel, Fn&& fn) {
  struct Piece {
    int64_t tensor, begin, end;
  };
  std::vector<Piece> pieces;
  int64_t total = 0;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t n = numel(t);
    for (int64_t b = 0; b < n; b += kMultiTensorChunk) pieces.push_back({t, b, std::min(n, b + kMultiTensorChunk)});
    total += n;
  }
  const auto n_pieces = static_cast<int64_t>(pieces.size());
#pragma omp parallel for schedule(static) if (total >= kParallelMinElements)
  for (int64_t k = 0; k < n_pieces; ++k) {
    const Piece& piece = pieces[static_cast<size_t>(k)];
    fn(piece.tensor, piece.begin, piece.end);
  }
}

}  // namespace tandem::kernels::cpu
