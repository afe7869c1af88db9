// The loss scaler's arithmetic, shared by the host scaler (optim/grad_scaler.cpp) and
// the CPU and CUDA kernels that keep its state in memory, so that every path takes the
// same f32 values: the reciprocal used to unscale and PyTorch's scale-update rule.
#pragma once

#include <cstdint>

#include "kernels/half.h"  // TANDEM_HOST_DEVICE

namespace tandem::kernels {

/// 1/scale as PyTorch takes it: in f64, rounded to f32.
TANDEM_HOST_DEVICE inline float amp_inverse_scale(float scale) {
  return static_cast<float>(1.0 / static_cast<double>(scale));
}

/// The scale after one update, as torch._amp_update_scale_: found (an inf/NaN this
/// iteration): scale·backoff and the tracker restarts; else the tracker counts one
/// more finite step and, on reaching growth_interval, restarts while the scale grows
/// by growth_factor unless that overflows f32 (the scale then stays). Products in f64.
TANDEM_HOST_DEVICE inline float amp_next_scale(float scale, int64_t* growth_tracker, bool found, double growth_factor,
                                               double backoff_factor, int64_t growth_interval) {
  if (found) {
    *growth_tracker = 0;
    return static_cast<float>(static_cast<double>(scale) * backoff_factor);
  }
  if (*growth_tracker + 1 >= growth_interval) {
    *growth_tracker = 0;
    const float grown = static_cast<float>(static_cast<double>(scale) * growth_factor);
    // Finite test without <cmath> (host and device alike): false for inf and NaN.
    return (grown <= 3.402823466e38f && grown >= -3.402823466e38f) ? grown : scale;
  }
  ++*growth_tracker;
  return scale;
}

}  // namespace tandem::kernels
