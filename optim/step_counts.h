// The step counts of capturable optimizers (SGD, Adam, AdamW), moved on after a step by
// one launch per device: shared by optim/sgd.cpp and optim/adam.cpp.
#pragma once

#include <vector>

#include "engine/dispatch.h"
#include "kernels/cpu/step_count.h"
#include "kernels/cuda/step_count.h"

namespace tandem::optim {

/// Adds 1 to the step count of every ref (kernels::SGDTensorRef or AdamTensorRef with
/// step_count set) on `device`, after their step in stream order; nothing when
/// `found_inf` (null or that device's flag) is nonzero when the kernel runs.
template <class Ref>
void increment_step_counts(Device device, const std::vector<Ref>& refs, const float* found_inf) {
  std::vector<double*> counts;
  for (const Ref& ref : refs) counts.push_back(const_cast<double*>(ref.step_count));
  const auto n = static_cast<int64_t>(counts.size());
  dispatch_device(
      "increment_step_counts", device, [&] { kernels::cpu::increment_step_counts(counts.data(), n, found_inf); },
      [&](auto) { kernels::cuda::increment_step_counts(counts.data(), n, found_inf, cuda_stream(device)); });
}

}  // namespace tandem::optim
