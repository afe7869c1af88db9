// CPU convolution: im2col / col2im and the GEMMs of forward and backward, over blocks of
// samples: small feature maps are unfolded several samples side by side so each GEMM has
// at least 128 columns (one 4x4 sample alone gives 16); large ones go one sample at a
// time. Each OpenMP thread takes whole blocks and keeps its own column buffer (at most
// 8 MiB); the weight and bias gradients are summed per thread and then added up in
// thread order, so a run is deterministic for a given thread count. A 1x1 kernel with
// stride 1 and no padding needs no unfold: one sample's column matrix is x itself (read
// in place), a block's is its samples' planes copied side by side.
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

/// im2col / col2im (conv.h) with the column matrix's rows `ld` elements apart, so a
/// sample's columns can sit inside a wider matrix holding a block of samples.
template <class T>
void im2col_pitched(const T* x, const Window2d& g, int64_t channels, T* cols, int64_t ld);
template <class T>
void col2im_pitched(const T* cols, const Window2d& g, int64_t channels, T* x, int64_t ld);

/// Columns a blocked GEMM should have at least: below this, per-sample GEMMs on small
/// feature maps (16 columns for a 4x4 map) are thin, and Wᵀ · dy in particular runs far
/// below the GEMM's peak. Measured on the 2-core AVX-512 VM with ResNet-18's shapes at
/// batch 32: 128 beat 64, 256 and 512 (wider blocks made the dW GEMM, which already
/// did well as a sum of rank-16 updates, slower again as the column buffer left L2).
constexpr int64_t kMinBlockColumns = 128;
/// Upper bound on one thread's column buffer in bytes (it and the GEMM reading it should
/// stay in the outer caches).
constexpr int64_t kMaxBlockBytes = int64_t{8} << 20;

/// Samples per im2col + GEMM: enough that the GEMM has kMinBlockColumns columns, no
/// more than the column-buffer bound allows, and no more than a fair share of the
/// batch per thread (so every thread still gets a block). 1 for feature maps already
/// large enough, which then take the one-sample path with no gather/scatter copies.
int64_t block_samples(int64_t batch, int64_t rows, int64_t plane, int64_t elem_size, int threads) {
  int64_t b = (kMinBlockColumns + plane - 1) / plane;
  b = std::min(b, kMaxBlockBytes / std::max<int64_t>(1, rows * plane * elem_size));
  b = std::min(b, (batch + threads - 1) / threads);
  return std::max<int64_t>(1, b);
}

/// The threads an `omp parallel if (parallel)` region will run with.
int max_threads_if(bool parallel) {
#if defined(_OPENMP)
  if (parallel) return omp_get_max_threads();
#endif
  (void)parallel;
  return 1;
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
  const int threads = max_threads_if(parallel);
  const int64_t bs = block_samples(g.batch, k, p, static_cast<int64_t>(sizeof(T)), threads);
  const int64_t blocks = (g.batch + bs - 1) / bs;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    if (bs == 1) {
      std::unique_ptr<T[]> cols(direct ? nullptr : new T[static_cast<size_t>(k * p)]);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < g.batch; ++n) {
        for (int64_t gi = 0; gi < groups; ++gi) {
          const T* xg = x + n * x_sample + gi * cg * g.in_plane();
          T* yg = y + n * y_sample + gi * og * p;
          const T* src = xg;
          if (!direct) {
            im2col_pitched(xg, g, cg, cols.get(), p);
            src = cols.get();
          }
          if (bias != nullptr) {
            for (int64_t o = 0; o < og; ++o) std::fill(yg + o * p, yg + (o + 1) * p, bias[gi * og + o]);
          }
          gemm(dtype, false, false, og, p, k, 1.0, w + gi * og * k, k, src, p, bias != nullptr, yg, p);
        }
      }
    } else {
      // Blocked: cols (k, bs·p) holds the block's samples side by side (sample-major
      // columns), so one GEMM gives out (og, bs·p), scattered into NCHW with the bias.
      const int64_t ld = bs * p;
      std::unique_ptr<T[]> cols(new T[static_cast<size_t>(k * ld)]);
      std::unique_ptr<T[]> out(new T[static_cast<size_t>(og * ld)]);
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * bs, nb = std::min(bs, g.batch - n0), cols_n = nb * p;
        for (int64_t gi = 0; gi < groups; ++gi) {
          for (int64_t s = 0; s < nb; ++s) {
            const T* xg = x + (n0 + s) * x_sample + gi * cg * g.in_plane();
            if (direct) {
              for (int64_t c = 0; c < cg; ++c) std::copy(xg + c * p, xg + (c + 1) * p, cols.get() + c * cols_n + s * p);
            } else {
              im2col_pitched(xg, g, cg, cols.get() + s * p, cols_n);
            }
          }
          gemm(dtype, false, false, og, cols_n, k, 1.0, w + gi * og * k, k, cols.get(), cols_n, false, out.get(),
               cols_n);
          for (int64_t s = 0; s < nb; ++s) {
            T* yg = y + (n0 + s) * y_sample + gi * og * p;
            for (int64_t o = 0; o < og; ++o) {
              const T* r = out.get() + o * cols_n + s * p;
              T* d = yg + o * p;
              if (bias != nullptr) {
                const T b = bias[gi * og + o];
                for (int64_t i = 0; i < p; ++i) d[i] = r[i] + b;
              } else {
                std::copy(r, r + p, d);
              }
            }
          }
        }
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
  const int threads = max_threads_if(parallel);
  const int64_t bs = block_samples(g.batch, k, p, static_cast<int64_t>(sizeof(T)), threads);
  const int64_t blocks = (g.batch + bs - 1) / bs;
  // Per-thread sums of dW and db, added up in thread order below.
  std::vector<std::vector<T>> dw_part(dw != nullptr ? threads : 0), db_part(db != nullptr ? threads : 0);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    int tid = 0;
#if defined(_OPENMP)
    tid = omp_get_thread_num();
#endif
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
    if (bs == 1) {
      std::unique_ptr<T[]> cols((dw != nullptr && !direct) ? new T[static_cast<size_t>(k * p)] : nullptr);
      std::unique_ptr<T[]> dcols((dx != nullptr && !direct) ? new T[static_cast<size_t>(k * p)] : nullptr);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < g.batch; ++n) {
        for (int64_t gi = 0; gi < groups; ++gi) {
          const T* xg = x + n * x_sample + gi * cg * g.in_plane();
          const T* dyg = dy + n * y_sample + gi * og * p;
          const T* wg = w + gi * og * k;
          if (dw_local != nullptr) {  // dW_g += dy_g · colsᵀ
            const T* src = xg;
            if (!direct) {
              im2col_pitched(xg, g, cg, cols.get(), p);
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
              col2im_pitched(dcols.get(), g, cg, dxg, p);
            }
          }
          if (db_local != nullptr) {
            for (int64_t o = 0; o < og; ++o) db_local[gi * og + o] += row_sum(dyg + o * p, p);
          }
        }
      }
    } else {
      // Blocked: dy of the block's samples gathered into dyb (og, bs·p), sample-major
      // like the columns, so dW_g += dyb · colsᵀ and dcols = W_gᵀ · dyb are one GEMM
      // each per block instead of one per sample.
      const int64_t ld = bs * p;
      std::unique_ptr<T[]> cols(dw != nullptr ? new T[static_cast<size_t>(k * ld)] : nullptr);
      std::unique_ptr<T[]> dcols(dx != nullptr ? new T[static_cast<size_t>(k * ld)] : nullptr);
      std::unique_ptr<T[]> dyb(new T[static_cast<size_t>(og * ld)]);
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * bs, nb = std::min(bs, g.batch - n0), cols_n = nb * p;
        for (int64_t gi = 0; gi < groups; ++gi) {
          const T* wg = w + gi * og * k;
          for (int64_t s = 0; s < nb; ++s) {
            const T* dyg = dy + (n0 + s) * y_sample + gi * og * p;
            for (int64_t o = 0; o < og; ++o) std::copy(dyg + o * p, dyg + (o + 1) * p, dyb.get() + o * cols_n + s * p);
          }
          if (dw_local != nullptr) {  // dW_g += dyb · colsᵀ
            for (int64_t s = 0; s < nb; ++s) {
              const T* xg = x + (n0 + s) * x_sample + gi * cg * g.in_plane();
              if (direct) {
                for (int64_t c = 0; c < cg; ++c)
                  std::copy(xg + c * p, xg + (c + 1) * p, cols.get() + c * cols_n + s * p);
              } else {
                im2col_pitched(xg, g, cg, cols.get() + s * p, cols_n);
              }
            }
            gemm(dtype, false, true, og, k, cols_n, 1.0, dyb.get(), cols_n, cols.get(), cols_n, true,
                 dw_local + gi * og * k, k);
          }
          if (dx != nullptr) {  // dx_g = col2im(W_gᵀ · dyb), one sample's columns at a time
            gemm(dtype, true, false, k, cols_n, og, 1.0, wg, k, dyb.get(), cols_n, false, dcols.get(), cols_n);
            for (int64_t s = 0; s < nb; ++s) {
              T* dxg = dx + (n0 + s) * x_sample + gi * cg * g.in_plane();
              if (direct) {
                for (int64_t c = 0; c < cg; ++c)
                  std::copy(dcols.get() + c * cols_n + s * p, dcols.get() + c * cols_n + (s + 1) * p, dxg + c * p);
              } else {
                col2im_pitched(dcols.get() + s * p, g, cg, dxg, cols_n);
              }
            }
          }
          if (db_local != nullptr) {
            for (int64_t s = 0; s < nb; ++s) {
              const T* dyg = dy + (n0 + s) * y_sample + gi * og * p;
              for (int64_t o = 0; o < og; ++o) db_local[gi * og + o] += row_sum(dyg + o * p, p);
            }
          }
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

template <class T>
void im2col_pitched(const T* x, const Window2d& g, int64_t channels, T* cols, int64_t ld) {
  const int64_t plane = g.in_plane(), out_plane = g.out_plane(), out_w = g.out_w;
  const bool block = same_width(g);
  for_each_tap(g, channels, [&](int64_t row, int64_t c, const Tap& t) {
    T* dst = cols + row * ld;
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
void col2im_pitched(const T* cols, const Window2d& g, int64_t channels, T* x, int64_t ld) {
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
    const T* src = cols + row * ld;
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

}  // namespace

template <class T>
void im2col(const T* x, const Window2d& g, int64_t channels, T* cols) {
  im2col_pitched(x, g, channels, cols, g.out_plane());
}

template <class T>
void col2im(const T* cols, const Window2d& g, int64_t channels, T* x) {
  col2im_pitched(cols, g, channels, x, g.out_plane());
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
