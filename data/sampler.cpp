// Sequential and Philox-shuffled index orders.
#include "data/sampler.h"

#include <numeric>
#include <utility>

#include "kernels/philox.h"

namespace tandem::data {

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  uint64_t draw = 0;
  for (int64_t i = n - 1; i > 0; --i, ++draw) {
    kernels::PhiloxBlock block = kernels::philox_block(seed, draw / 2);
    int w = static_cast<int>(draw % 2) * 2;
    // 64 random bits reduced modulo i+1: the bias is below 2^-32 for any n that fits in memory.
    uint64_t r = (static_cast<uint64_t>(block.w[w]) << 32) | block.w[w + 1];
    auto j = static_cast<int64_t>(r % static_cast<uint64_t>(i + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

std::vector<int64_t> SequentialSampler::indices(int64_t /*epoch*/) const {
  std::vector<int64_t> order(static_cast<size_t>(n_));
  std::iota(order.begin(), order.end(), int64_t{0});
  return order;
}

std::vector<int64_t> RandomSampler::indices(int64_t epoch) const {
  return shuffled_indices(n_, seed_ + static_cast<uint64_t>(epoch));
}

}  // namespace tandem::data
