// Default Philox generators, one for the CPU and one per CUDA device.
#include "engine/random.h"

#include <array>
#include <stdexcept>

#include "kernels/philox.h"

namespace tandem {

void Generator::manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = {seed, 0};
}

PhiloxState Generator::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

void Generator::set_state(PhiloxState state) {
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = state;
}

PhiloxState Generator::reserve(int64_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  PhiloxState s = state_;
  state_.offset += kernels::philox_blocks(n);
  return s;
}

namespace {
// Enough for any node; a device index past it is rejected with a clear message.
constexpr int kMaxCudaDevices = 64;
Generator g_cpu_generator;
std::array<Generator, kMaxCudaDevices> g_cuda_generators;
}  // namespace

Generator& default_generator(Device device) {
  if (device.is_cpu()) return g_cpu_generator;
  if (device.index < 0 || device.index >= kMaxCudaDevices)
    throw std::invalid_argument("[default_generator] expected a CUDA device index in [0, 64), got " +
                                std::to_string(device.index));
  return g_cuda_generators[static_cast<size_t>(device.index)];
}

void manual_seed(uint64_t seed) {
  g_cpu_generator.manual_seed(seed);
  for (Generator& g : g_cuda_generators) g.manual_seed(seed);
}

}  // namespace tandem
