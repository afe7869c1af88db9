// Generator: a Philox stream (seed, offset). Every draw reserves a range of 128-bit
// blocks and advances the offset, so a draw can be replayed exactly by restoring
// (seed, offset) - how activation checkpointing reproduces dropout masks.
#pragma once

#include <cstdint>
#include <mutex>

#include "engine/device.h"

namespace tandem {

struct PhiloxState {
  uint64_t seed = 0;
  uint64_t offset = 0;  // in 128-bit blocks (4 draws each)
};

class Generator {
 public:
  explicit Generator(uint64_t seed = 0x5eed) : state_{seed, 0} {}
  void manual_seed(uint64_t seed);
  PhiloxState state() const;
  void set_state(PhiloxState state);
  /// Reserves the blocks for `n` draws and returns the state to draw them from.
  PhiloxState reserve(int64_t n);

 private:
  mutable std::mutex mutex_;
  PhiloxState state_;
};

/// The default generator of a device (one for the CPU, one per CUDA device).
Generator& default_generator(Device device);
/// Seeds the default generators of every device.
void manual_seed(uint64_t seed);

}  // namespace tandem
