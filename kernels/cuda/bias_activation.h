// CUDA fused bias + activation epilogue of linear(): the same contract as
// kernels/cpu/bias_activation.h, launched on `stream`, except that the bias gradient
// accumulates in f32 (f64 for f64) and needs scratch memory for its row chunks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/dtype.h"
#include "kernels/elementwise.h"

namespace tandem::kernels::cuda {

/// hidden[r, c] += bias[c] (no bias when null), then out[r, c] = act(hidden[r, c]);
/// `out` may be `hidden`. 16-byte vectorised when cols allows and pointers are aligned.
void bias_activation_forward(Activation act, DType dtype, void* out, void* hidden, const void* bias, int64_t rows,
                             int64_t cols, cudaStream_t stream);

/// Scratch bytes bias_activation_backward needs with a bias gradient (0 when none).
size_t bias_activation_backward_workspace_bytes(DType dtype, int64_t rows, int64_t cols);

/// dhidden = dout · act'(saved) and, when `bias_grad` is not null, its column sums in
/// the same pass (row chunks added in order: deterministic). `saved` as on the CPU.
void bias_activation_backward(Activation act, DType dtype, void* dhidden, void* bias_grad, const void* dout,
                              const void* saved, int64_t rows, int64_t cols, void* workspace, cudaStream_t stream);

}  // namespace tandem::kernels::cuda
