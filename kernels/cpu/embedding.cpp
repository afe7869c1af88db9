// Host embedding gather and scatter-add.
#include "kernels/cpu/embedding.h"

#include <cstring>

#include "kernels/common.h"

namespace tandem::kernels::cpu {

int64_t embedding_forward(DType dtype, void* out, const void* weight, const int64_t* indices, int64_t n,
                          int64_t num_rows, int64_t dim) {
  const size_t row_bytes = static_cast<size_t>(dim) * dtype_size(dtype);
  auto* dst = static_cast<char*>(out);
  const auto* src = static_cast<const char*>(weight);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = indices[i];
    if (row < 0 || row >= num_rows) return i;
    std::memcpy(dst + i * row_bytes, src + row * row_bytes, row_bytes);
  }
  return -1;
}

void embedding_backward(DType dtype, void* grad_acc, const void* grad_out, const int64_t* indices, int64_t n,
                        int64_t num_rows, int64_t dim, int64_t padding_idx) {
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = compute_t<T>;
    auto* acc = static_cast<Acc*>(grad_acc);
    const T* dy = static_cast<const T*>(grad_out);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row = indices[i];
      if (row == padding_idx || row < 0 || row >= num_rows) continue;
      Acc* dst = acc + row * dim;
      const T* src = dy + i * dim;
      for (int64_t j = 0; j < dim; ++j) dst[j] += static_cast<Acc>(src[j]);
    }
  });
  if (!ok) unreachable_dtype("embedding_backward", dtype);
}

}  // namespace tandem::kernels::cpu
