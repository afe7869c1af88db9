// Generator: a Philox stream (seed, offset). Every draw reserves a range of 128-bit
// blocks and advances the offset, so a draw can be replayed exactly by restoring
// (seed, offset) - how activation checkpointing reproduces dropout masks. During a CUDA
// graph capture, draws are reserved relative to a counter in device memory that each
// replay sets, so replays draw fresh numbers (as PyTorch's graph-safe Philox offsets).
#pragma once

#include <cstdint>
#include <mutex>

#include "engine/device.h"

namespace tandem {

struct PhiloxState {
  uint64_t seed = 0;
  uint64_t offset = 0;  // in 128-bit blocks (4 draws each)
  // Set for draws reserved during a CUDA graph capture: device memory holding a block
  // count that kernels add to `offset` when they run (Graph::replay writes it).
  const uint64_t* offset_base = nullptr;
};

class Generator {
 public:
  explicit Generator(uint64_t seed = 0x5eed) : state_{seed, 0} {}
  void manual_seed(uint64_t seed);
  PhiloxState state() const;
  void set_state(PhiloxState state);
  /// Reserves the blocks for `n` draws and returns the state to draw them from.
  PhiloxState reserve(int64_t n);
  /// Advances the offset by `blocks` and returns the state before: a graph replay's draws.
  PhiloxState reserve_blocks(uint64_t blocks);

  /// For cuda::Graph: until end_graph_capture, reserve() hands out offsets relative to the
  /// device counter `base` (from 0), state() and set_state() work on that relative
  /// position (so activation checkpointing replays its masks inside the graph), and the
  /// generator's own state does not move. Throws std::logic_error if already capturing.
  void begin_graph_capture(const uint64_t* base);
  /// Ends the capture; returns the blocks its draws used (what each replay reserves).
  uint64_t end_graph_capture();

 private:
  mutable std::mutex mutex_;
  PhiloxState state_;
  const uint64_t* capture_base_ = nullptr;  // set while a graph capture draws from this generator
  uint64_t capture_used_ = 0;               // blocks reserved by the capture so far
};

/// The default generator of a device (one for the CPU, one per CUDA device).
Generator& default_generator(Device device);
/// Seeds the default generators of every device.
void manual_seed(uint64_t seed);

}  // namespace tandem
