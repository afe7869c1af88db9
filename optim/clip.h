// Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_: one norm over
// the gradients of all parameters, and one scale of all of them when it is too large.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace tandem::optim {

/// Total norm of order `norm_type` (> 0, or +∞ for max|g|) over every defined gradient
/// of `params`, ‖(‖g_1‖, ‖g_2‖, ...)‖; when max_norm / (norm + 1e-6) < 1 each gradient
/// is scaled by that factor in place. Returns the norm before clipping (0 without
/// gradients). On CUDA: one multi-tensor norm and one scale launch per (device, dtype)
/// and one host synchronisation per (device, dtype) to read the norm. With
/// error_if_nonfinite a NaN or infinite norm throws std::runtime_error (gradients untouched).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0,
                      bool error_if_nonfinite = false);

}  // namespace tandem::optim
