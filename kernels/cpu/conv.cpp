// CPU convolution: im2col / col2im and the per-sample GEMMs of forward and backward.
// Each OpenMP thread takes whole samples and keeps its own column buffer (a few hundred
// KiB for the CNN's layers, so it stays in L2 between the unfold and the GEMM that
// reads it); the weight and bias gradients are summed per thread and then added up in
// thread order, so a run is deterministic for a given thread count. A 1x1 kernel with
// stride 1 and no padding reads x directly: its column matrix is x itself.
#include "kernels/cpu/conv.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "kernels/common.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

/// The output columns [lo, hi) whose input column ow·stride + offset lies inside
/// [0, extent); columns outside read padding.
struct ValidRange {
  int64_t lo, hi;
};

ValidRange valid_range(int64_t offset, int64_t stride, int64_t extent, int64_t out) {
  int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  int64_t hi = extent - offset <= 0 ? 0 : (extent - offset + stride - 1) / stride;
  lo = std::min(lo, out);
  hi = std::clamp(hi, lo, out);
  return {lo, hi};
}

/// The unfold of one (channel, kernel tap) pair: output rows [oh.lo, oh.hi) and
/// columns [ow.lo, ow.hi) read inside the image, at input (oh·sh + off_h, ow·sw + off_w).
struct Tap {
  int64_t off_h, off_w;
  ValidRange oh, ow;
};

/// Calls f(row, tap) for every row (c, i, j) of the column matrix.
template <class F>
void for_each_tap(const Window2d& g, int64_t channels, F&& f) {
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t off_h = i * g.dilation_h - g.pad_h;
      const ValidRange oh = valid_range(off_h, g.stride_h, g.in_h, g.out_h);
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const int64_t off_w = j * g.dilation_w - g.pad_w;
        f((c * g.kernel_h + i) * g.kernel_w + j, c, Tap{off_h, off_w, oh, valid_range(off_w, g.stride_w, g.in_w, g.out_w)});
      }
    }
  }
}

/// Stride 1 with out_w == in_w ("same" width, e.g. 3x3 with padding 1): the valid rows
/// of a tap are then one contiguous stretch of the input plane shifted by
/// off_h·in_w + off_w, so they move as one block; only the first/last columns of each
/// row (which read padding) need fixing up. Rows are otherwise as short as a feature
/// map is wide, and per-row copies cost more than the data they move.
bool same_width(const Window2d& g) { return g.stride_h == 1 && g.stride_w == 1 && g.out_w == g.in_w; }

/// Σ row[0..n) with 16 independent partial sums: one vector add per 16 elements
/// instead of a chain of dependent scalar adds (the compiler may not reorder a float
/// sum by itself).
template <class T>
T row_sum(const T* row, int64_t n) {
  constexpr int kLanes = 16;
  T part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += row[i + l];
  T s = 0;
  for (; i < n; ++i) s += row[i];
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

template <class T>
void forward_typed(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const T* x, const T* w,
                   const T* bias, T* y) {
  const int64_t cg = g.channels / groups, og = out_channels / groups;
  const int64_t k = cg * g.kernel_h * g.kernel_w, p = g.out_plane();
  const int64_t x_sample = g.channels * g.in_plane(), y_sample = out_channels * p;
  const bool direct = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 &&
                      g.pad_w == 0;
  const double macs = static_cast<double>(g.batch) * static_cast<double>(y_sample) * static_cast<double>(k);
  const bool parallel = g.batch > 1 && macs >= kParallelMinMacs;
  (void)parallel;
#pragma omp parallel if (parallel)
  {
    std::unique_ptr<T[]> cols(direct ? nullptr : new T[static_cast<size_t>(k * p)]);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.batch; ++n) {
      for (int64_t gi = 0; gi < groups; ++gi) {
        const T* xg = x + n * x_sample + gi * cg * g.in_plane();
        T* yg = y + n * y_sample + gi * og * p;
        const T* src = xg;
        if (!direct) {
          im2col(xg, g, cg, cols.get());
          src = cols.get();
        }
        if (bias != nullptr) {
          for (int64_t o = 0; o < og; ++o) std::fill(yg + o * p, yg + (o + 1) * p, bias[gi * og + o]);
        }
        gemm(dtype, false, false, og, p, k, 1.0, w + gi * og * k, k, src, p, bias != nullptr, yg, p);
      }
    }
  }
}

template <class T>
void backward_typed(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const T* x, const T* w,
                    const T* dy, T* dx, T* dw, T* db) {
  const int64_t cg = g.channels / groups, og = out_channels / groups;
  const int64_t k = cg * g.kernel_h * g.kernel_w, p = g.out_plane();
  const int64_t x_sample = g.channels * g.in_plane(), y_sample = out_channels * p;
  const int64_t w_numel = out_channels * k;
  const bool direct = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 &&
                      g.pad_w == 0;
  const double macs = static_cast<double>(g.batch) * static_cast<double>(y_sample) * static_cast<double>(k);
  const bool parallel = g.batch > 1 && macs >= kParallelMinMacs;
  int threads = 1;
#if defined(_OPENMP)
  if (parallel) threads = omp_get_max_threads();
#endif
  // Per-thread sums of dW and db, added up in thread order below.
  std::vector<std::vector<T>> dw_part(dw != nullptr ? threads : 0), db_part(db != nullptr ? threads : 0);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    int tid = 0;
#if defined(_OPENMP)
    tid = omp_get_thread_num();
#endif
    std::unique_ptr<T[]> cols((dw != nullptr && !direct) ? new T[static_cast<size_t>(k * p)] : nullptr);
    std::unique_ptr<T[]> dcols((dx != nullptr && !direct) ? new T[static_cast<size_t>(k * p)] : nullptr);
    T* dw_local = nullptr;
    T* db_local = nullptr;
    if (dw != nullptr) {
      dw_part[tid].assign(static_cast<size_t>(w_numel), T(0));
      dw_local = dw_part[tid].data();
    }
    if (db != nullptr) {
      db_part[tid].assign(static_cast<size_t>(out_channels), T(0));
      db_local = db_part[tid].data();
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.batch; ++n) {
      for (int64_t gi = 0; gi < groups; ++gi) {
        const T* xg = x + n * x_sample + gi * cg * g.in_plane();
        const T* dyg = dy + n * y_sample + gi * og * p;
        const T* wg = w + gi * og * k;
        if (dw_local != nullptr) {  // dW_g += dy_g · colsᵀ
          const T* src = xg;
          if (!direct) {
            im2col(xg, g, cg, cols.get());
            src = cols.get();
          }
          gemm(dtype, false, true, og, k, p, 1.0, dyg, p, src, p, true, dw_local + gi * og * k, k);
        }
        if (dx != nullptr) {  // dx_g = col2im(W_gᵀ · dy_g)
          T* dxg = dx + n * x_sample + gi * cg * g.in_plane();
          if (direct) {
            gemm(dtype, true, false, k, p, og, 1.0, wg, k, dyg, p, false, dxg, p);
          } else {
            gemm(dtype, true, false, k, p, og, 1.0, wg, k, dyg, p, false, dcols.get(), p);
            col2im(dcols.get(), g, cg, dxg);
          }
        }
        if (db_local != nullptr) {
          for (int64_t o = 0; o < og; ++o) db_local[gi * og + o] += row_sum(dyg + o * p, p);
        }
      }
    }
  }
  auto reduce = [](std::vector<std::vector<T>>& parts, T* out, int64_t count) {
    std::copy(parts[0].begin(), parts[0].end(), out);
    for (size_t t = 1; t < parts.size(); ++t)
      for (int64_t i = 0; i < count; ++i) out[i] += parts[t][i];
  };
  if (dw != nullptr) reduce(dw_part, dw, w_numel);
  if (db != nullptr) reduce(db_part, db, out_channels);
}

}  // namespace

template <class T>
void im2col(const T* x, const Window2d& g, int64_t channels, T* cols) {
  const int64_t plane = g.in_plane(), out_plane = g.out_plane(), out_w = g.out_w;
  const bool block = same_width(g);
  for_each_tap(g, channels, [&](int64_t row, int64_t c, const Tap& t) {
    T* dst = cols + row * out_plane;
    const T* xc = x + c * plane;
    const int64_t t0 = t.oh.lo * out_w, t1 = t.oh.hi * out_w;
    std::fill(dst, dst + t0, T(0));  // rows that read the top/bottom padding
    std::fill(dst + t1, dst + out_plane, T(0));
    if (block) {
      // dst[k] = xc[k + shift] for k in [t0, t1), clipped to the plane; the clipped
      // entries and the padding columns are zeroed after.
      const int64_t shift = t.off_h * g.in_w + t.off_w;
      const int64_t s0 = std::clamp(-shift, t0, t1), s1 = std::clamp(plane - shift, s0, t1);
      std::fill(dst + t0, dst + s0, T(0));
      std::copy(xc + s0 + shift, xc + s1 + shift, dst + s0);
      std::fill(dst + s1, dst + t1, T(0));
      if (t.ow.lo > 0 || t.ow.hi < out_w) {
        for (int64_t oh = t.oh.lo; oh < t.oh.hi; ++oh) {
          T* r = dst + oh * out_w;
          for (int64_t ow = 0; ow < t.ow.lo; ++ow) r[ow] = T(0);
          for (int64_t ow = t.ow.hi; ow < out_w; ++ow) r[ow] = T(0);
        }
      }
      return;
    }
    for (int64_t oh = t.oh.lo; oh < t.oh.hi; ++oh) {
      T* r = dst + oh * out_w;
      const T* src = xc + (oh * g.stride_h + t.off_h) * g.in_w;  // src[ow·sw + off_w] for ow in [lo, hi)
      for (int64_t ow = 0; ow < t.ow.lo; ++ow) r[ow] = T(0);
      for (int64_t ow = t.ow.lo; ow < t.ow.hi; ++ow) r[ow] = src[ow * g.stride_w + t.off_w];
      for (int64_t ow = t.ow.hi; ow < out_w; ++ow) r[ow] = T(0);
    }
  });
}

template <class T>
void col2im(const T* cols, const Window2d& g, int64_t channels, T* x) {
  const int64_t plane = g.in_plane(), out_plane = g.out_plane(), out_w = g.out_w;
  std::fill(x, x + channels * plane, T(0));
  const bool block = same_width(g);
  // For the block path: which output columns of a row read inside the image, per
  // kernel column j, laid out over a whole output plane so the add below is one
  // branch-free (select) loop over a contiguous stretch.
  std::vector<std::vector<unsigned char>> inside;
  if (block) {
    inside.resize(static_cast<size_t>(g.kernel_w));
    for (int64_t j = 0; j < g.kernel_w; ++j) {
      const ValidRange r = valid_range(j * g.dilation_w - g.pad_w, 1, g.in_w, out_w);
      inside[j].resize(static_cast<size_t>(out_plane));
      for (int64_t k = 0; k < out_plane; ++k) inside[j][k] = (k % out_w >= r.lo && k % out_w < r.hi) ? 1 : 0;
    }
  }
  for_each_tap(g, channels, [&](int64_t row, int64_t c, const Tap& t) {
    const T* src = cols + row * out_plane;
    T* xc = x + c * plane;
    if (block) {
      const int64_t t0 = t.oh.lo * out_w, t1 = t.oh.hi * out_w;
      const int64_t shift = t.off_h * g.in_w + t.off_w;
      const int64_t s0 = std::clamp(-shift, t0, t1), s1 = std::clamp(plane - shift, s0, t1);
      const unsigned char* m = inside[(row % (g.kernel_h * g.kernel_w)) % g.kernel_w].data();
      for (int64_t k = s0; k < s1; ++k) xc[k + shift] += m[k] ? src[k] : T(0);
      return;
    }
    for (int64_t oh = t.oh.lo; oh < t.oh.hi; ++oh) {
      const T* r = src + oh * out_w;
      T* dst = xc + (oh * g.stride_h + t.off_h) * g.in_w;
      for (int64_t ow = t.ow.lo; ow < t.ow.hi; ++ow) dst[ow * g.stride_w + t.off_w] += r[ow];
    }
  });
}

template void im2col<float>(const float*, const Window2d&, int64_t, float*);
template void im2col<double>(const double*, const Window2d&, int64_t, double*);
template void col2im<float>(const float*, const Window2d&, int64_t, float*);
template void col2im<double>(const double*, const Window2d&, int64_t, double*);

void conv2d_forward(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                    const void* w, const void* bias, void* y) {
  switch (dtype) {
    case DType::kF32:
      forward_typed(dtype, g, out_channels, groups, static_cast<const float*>(x), static_cast<const float*>(w),
                    static_cast<const float*>(bias), static_cast<float*>(y));
      return;
    case DType::kF64:
      forward_typed(dtype, g, out_channels, groups, static_cast<const double*>(x), static_cast<const double*>(w),
                    static_cast<const double*>(bias), static_cast<double*>(y));
      return;
    default: unreachable_dtype("conv2d_forward", dtype);
  }
}

void conv2d_backward(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                     const void* w, const void* dy, void* dx, void* dw, void* db) {
  switch (dtype) {
    case DType::kF32:
      backward_typed(dtype, g, out_channels, groups, static_cast<const float*>(x), static_cast<const float*>(w),
                     static_cast<const float*>(dy), static_cast<float*>(dx), static_cast<float*>(dw),
                     static_cast<float*>(db));
      return;
    case DType::kF64:
      backward_typed(dtype, g, out_channels, groups, static_cast<const double*>(x), static_cast<const double*>(w),
                     static_cast<const double*>(dy), static_cast<double*>(dx), static_cast<double*>(dw),
                     static_cast<double*>(db));
      return;
    default: unreachable_dtype("conv2d_backward", dtype);
  }
}

}  // namespace tandem::kernels::cpu
