// Default Philox generators, one for the CPU and one per CUDA device.
#include "engine/random.h"

#include <array>
#include <stdexcept>
#include <string>

#include "kernels/philox.h"

namespace tandem {

void Generator::manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = {seed, 0};
}

PhiloxState Generator::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (capture_base_ != nullptr) return {state_.seed, capture_used_, capture_base_};
  return state_;
}

void Generator::set_state(PhiloxState state) {
  std::lock_guard<std::mutex> lock(mutex_);
  // A state belongs to the capture it was taken in, or to no capture.
  if (state.offset_base != capture_base_ || (capture_base_ != nullptr && state.seed != state_.seed)) {
    throw std::logic_error(std::string("[Generator::set_state] expected a state taken ") +
                           (capture_base_ != nullptr ? "during the current CUDA graph capture"
                                                     : "outside CUDA graph captures") +
                           ", got one taken " + (state.offset_base != nullptr ? "during a capture" : "outside one") +
                           (capture_base_ != nullptr && state.offset_base == capture_base_ ? " with another seed" : ""));
  }
  if (capture_base_ != nullptr) capture_used_ = state.offset;
  else state_ = state;
}

PhiloxState Generator::reserve(int64_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t blocks = kernels::philox_blocks(n);
  if (capture_base_ != nullptr) {
    const PhiloxState s{state_.seed, capture_used_, capture_base_};
    capture_used_ += blocks;
    return s;
  }
  PhiloxState s = state_;
  state_.offset += blocks;
  return s;
}

PhiloxState Generator::reserve_blocks(uint64_t blocks) {
  std::lock_guard<std::mutex> lock(mutex_);
  PhiloxState s = state_;
  state_.offset += blocks;
  return s;
}

void Generator::begin_graph_capture(const uint64_t* base) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (base == nullptr) throw std::invalid_argument("[Generator::begin_graph_capture] expected a device counter, got null");
  if (capture_base_ != nullptr)
    throw std::logic_error("[Generator::begin_graph_capture] expected no capture in progress, got one");
  capture_base_ = base;
  capture_used_ = 0;
}

uint64_t Generator::end_graph_capture() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (capture_base_ == nullptr)
    throw std::logic_error("[Generator::end_graph_capture] expected a capture in progress, got none");
  capture_base_ = nullptr;
  return capture_used_;
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
