// CPU casts, fills and ranges.
#include "kernels/cpu/copy.h"

#include <cstring>

#include "kernels/common.h"
#include "kernels/convert.h"

namespace tandem::kernels::cpu {

void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n) {
  if (src_dtype == dst_dtype) {
    if (n > 0 && dst != src) std::memmove(dst, src, static_cast<size_t>(n) * dtype_size(src_dtype));
    return;
  }
  visit_all(src_dtype, [&](auto stag) {
    using S = decltype(stag);
    visit_all(dst_dtype, [&](auto dtag) {
      using D = decltype(dtag);
      const S* s = static_cast<const S*>(src);
      D* d = static_cast<D*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = convert<D>(s[i]);
    });
  });
}

void fill(DType dtype, void* out, double value, int64_t n) {
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T v = convert<T>(value);
    T* o = static_cast<T*>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = v;
  });
}

void arange(DType dtype, void* out, double start, double step, int64_t n) {
  visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = convert<T>(start + static_cast<double>(i) * step);
  });
}

}  // namespace tandem::kernels::cpu
