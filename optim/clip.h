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

/// clip_grad_norm without a host synchronisation, as torch.nn.utils.clip_grad_norm_
/// (which returns a tensor): the accumulators, the norm and the factor stay on the
/// gradients' device and the scale kernels read the factor there, so a training step
/// that clips can run ahead of the GPU or be captured in a CUDA graph. Returns the norm
/// before clipping as a 0-dim f64 tensor on that device (read it when needed; 0 without
/// gradients). Same values as clip_grad_norm. Throws std::invalid_argument for the
/// same bad arguments, or when the gradients are on more than one device.
Tensor clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0);

}  // namespace tandem::optim
