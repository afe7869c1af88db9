// Broadcast layout construction (shared by the CPU and CUDA binary kernels).
#include "kernels/elementwise.h"

namespace tandem::kernels {

BroadcastLayout make_broadcast_layout(const int64_t* a_shape, int a_ndim, const int64_t* b_shape, int b_ndim,
                                      const int64_t* out_shape, int out_ndim) {
  // Right-align both inputs against the output; a dim of extent 1 facing a larger
  // output extent is broadcast (stride 0).
  int64_t sizes[kMaxDims], as[kMaxDims], bs[kMaxDims];
  int64_t a_stride = 1, b_stride = 1;
  bool same = true;
  for (int d = out_ndim - 1; d >= 0; --d) {
    int ad = d - (out_ndim - a_ndim), bd = d - (out_ndim - b_ndim);
    int64_t ae = ad >= 0 ? a_shape[ad] : 1, be = bd >= 0 ? b_shape[bd] : 1;
    sizes[d] = out_shape[d];
    as[d] = (ae == out_shape[d] && ae != 1) ? a_stride : 0;
    bs[d] = (be == out_shape[d] && be != 1) ? b_stride : 0;
    if (ae != out_shape[d] || be != out_shape[d]) same = false;
    a_stride *= ae;
    b_stride *= be;
  }
  BroadcastLayout layout;
  if (same || a_ndim + b_ndim == 0) {
    layout.same_shape = true;
    layout.ndim = 1;
    int64_t n = 1;
    for (int d = 0; d < out_ndim; ++d) n *= out_shape[d];
    layout.sizes[0] = n;
    layout.a_strides[0] = layout.b_strides[0] = 1;
    return layout;
  }
  // Collapse neighbours d-1, d when, for both inputs, stepping over dim d-1 equals
  // stepping sizes[d] times over dim d (contiguous or jointly broadcast).
  int n = 0;
  for (int d = 0; d < out_ndim; ++d) {
    if (sizes[d] == 1) continue;  // extent-1 dims index nothing
    if (n > 0 && as[d] * sizes[d] == layout.a_strides[n - 1] && bs[d] * sizes[d] == layout.b_strides[n - 1]) {
      layout.sizes[n - 1] *= sizes[d];
      layout.a_strides[n - 1] = as[d];
      layout.b_strides[n - 1] = bs[d];
      continue;
    }
    layout.sizes[n] = sizes[d];
    layout.a_strides[n] = as[d];
    layout.b_strides[n] = bs[d];
    ++n;
  }
  if (n == 0) {  // every extent is 1
    layout.sizes[0] = 1;
    layout.a_strides[0] = layout.b_strides[0] = 0;
    n = 1;
  }
  layout.ndim = n;
  return layout;
}

}  // namespace tandem::kernels
