// CPU pooling loops, one NCHW plane at a time (planes are independent, so threads
// never write to the same plane and the backward scatters need no atomics). Sums are
// taken in compute_t (f32 for f16/bf16); backward scatters into an f32 plane for the
// narrow types and rounds once.
#include "kernels/cpu/pool.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/common.h"
#include "kernels/cpu/parallel.h"

namespace tandem::kernels::cpu {
namespace {

bool parallel_planes(const Window2d& g) {
  return g.batch * g.channels > 1 && g.batch * g.channels * (g.in_plane() + g.out_plane()) >= kParallelMinElements;
}

/// Runs f(plane) for every (n, c) plane, in parallel when there is enough work.
template <class F>
void for_each_plane(const Window2d& g, F&& f) {
  const int64_t planes = g.batch * g.channels;
  const bool parallel = parallel_planes(g);
  (void)parallel;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t p = 0; p < planes; ++p) f(p);
}

/// Backward helper: gives `body` a compute-type accumulator for one input plane that
/// starts at zero, then stores it into dx (in place for f32/f64).
template <class T, class Body>
void scatter_plane(T* dx_plane, int64_t size, std::vector<compute_t<T>>& scratch, Body&& body) {
  using C = compute_t<T>;
  if constexpr (std::is_same_v<T, C>) {
    std::fill(dx_plane, dx_plane + size, T(0));
    body(dx_plane);
  } else {
    scratch.assign(static_cast<size_t>(size), C(0));
    body(scratch.data());
    for (int64_t i = 0; i < size; ++i) dx_plane[i] = static_cast<T>(scratch[i]);
  }
}

// The input range [start, end) of window `o` along one axis of an average pool, and
// its divisor length: PyTorch clips the window to the padded extent for the divisor
// (count_include_pad), then to the input.
struct AvgSpan {
  int64_t start, end, padded_len;
};

AvgSpan avg_span(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t in) {
  int64_t start = o * stride - pad;
  int64_t end = std::min(start + kernel, in + pad);
  const int64_t padded_len = end - start;
  start = std::max<int64_t>(start, 0);
  end = std::min(end, in);
  return {start, end, padded_len};
}

int64_t adaptive_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
int64_t adaptive_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

/// The taps k in [lo, hi) of a window starting at `start` (step `dilation`) that land
/// inside [0, extent).
struct TapRange {
  int64_t lo, hi;
};

TapRange taps_inside(int64_t start, int64_t dilation, int64_t kernel, int64_t extent) {
  const int64_t lo = start >= 0 ? 0 : (-start + dilation - 1) / dilation;
  const int64_t hi = extent - start <= 0 ? 0 : std::min(kernel, (extent - start + dilation - 1) / dilation);
  return {lo, std::max(lo, hi)};
}

/// The running maximum's update: take v when larger or NaN (NaN propagates, as in
/// PyTorch), as selects rather than branches, which a coin-flip comparison on random
/// data would mispredict half the time.
template <class C>
inline void take_max(C v, int64_t k, C& best, int64_t& best_index) {
  const bool take = (v > best) | (v != v);  // bitwise |: no short-circuit branch
  best = take ? v : best;
  best_index = take ? k : best_index;
}

template <class T>
void max_forward_typed(const Window2d& g, const T* x, T* y, int64_t* indices) {
  using C = compute_t<T>;
  // 2x2 windows at stride 2 without padding (the CNN's pooling): every window lies
  // inside the input, so the four taps are read unconditionally.
  const bool pairs = g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 &&
                     g.pad_w == 0 && g.dilation_h == 1 && g.dilation_w == 1 && 2 * g.out_h <= g.in_h &&
                     2 * g.out_w <= g.in_w;
  for_each_plane(g, [&](int64_t plane) {
    const T* xp = x + plane * g.in_plane();
    T* yp = y + plane * g.out_plane();
    int64_t* ip = indices + plane * g.out_plane();
    if (pairs) {
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t r0 = 2 * oh * g.in_w, r1 = r0 + g.in_w;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t k = r0 + 2 * ow;
          C best = static_cast<C>(xp[k]);
          int64_t best_index = k;
          take_max(static_cast<C>(xp[k + 1]), k + 1, best, best_index);
          take_max(static_cast<C>(xp[r1 + 2 * ow]), r1 + 2 * ow, best, best_index);
          take_max(static_cast<C>(xp[r1 + 2 * ow + 1]), r1 + 2 * ow + 1, best, best_index);
          yp[oh * g.out_w + ow] = static_cast<T>(best);
          ip[oh * g.out_w + ow] = best_index;
        }
      }
      return;
    }
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t h0 = oh * g.stride_h - g.pad_h;
      const TapRange th = taps_inside(h0, g.dilation_h, g.kernel_h, g.in_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t w0 = ow * g.stride_w - g.pad_w;
        const TapRange tw = taps_inside(w0, g.dilation_w, g.kernel_w, g.in_w);
        // Start from the first tap inside the input (it stands in when all are -inf).
        if (th.lo == th.hi || tw.lo == tw.hi) {  // every tap in the padding: nothing to take
          yp[oh * g.out_w + ow] = static_cast<T>(-std::numeric_limits<C>::infinity());
          ip[oh * g.out_w + ow] = 0;
          continue;
        }
        int64_t best_index = (h0 + th.lo * g.dilation_h) * g.in_w + w0 + tw.lo * g.dilation_w;
        C best = static_cast<C>(xp[best_index]);
        for (int64_t i = th.lo; i < th.hi; ++i) {
          const int64_t row = (h0 + i * g.dilation_h) * g.in_w + w0;
          for (int64_t j = tw.lo; j < tw.hi; ++j) {
            const int64_t k = row + j * g.dilation_w;
            take_max(static_cast<C>(xp[k]), k, best, best_index);
          }
        }
        yp[oh * g.out_w + ow] = static_cast<T>(best);
        ip[oh * g.out_w + ow] = best_index;
      }
    }
  });
}

template <class T>
void max_backward_typed(const Window2d& g, const T* dy, const int64_t* indices, T* dx) {
  for_each_plane(g, [&](int64_t plane) {
    std::vector<compute_t<T>> scratch;
    const T* dyp = dy + plane * g.out_plane();
    const int64_t* ip = indices + plane * g.out_plane();
    scatter_plane(dx + plane * g.in_plane(), g.in_plane(), scratch, [&](auto* acc) {
      for (int64_t o = 0; o < g.out_plane(); ++o) acc[ip[o]] += static_cast<compute_t<T>>(dyp[o]);
    });
  });
}

template <class T>
void avg_forward_typed(const Window2d& g, bool count_include_pad, const T* x, T* y) {
  using C = compute_t<T>;
  for_each_plane(g, [&](int64_t plane) {
    const T* xp = x + plane * g.in_plane();
    T* yp = y + plane * g.out_plane();
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const AvgSpan sh = avg_span(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const AvgSpan sw = avg_span(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w);
        C s = 0;
        for (int64_t ih = sh.start; ih < sh.end; ++ih)
          for (int64_t iw = sw.start; iw < sw.end; ++iw) s += static_cast<C>(xp[ih * g.in_w + iw]);
        const int64_t divisor =
            count_include_pad ? sh.padded_len * sw.padded_len : (sh.end - sh.start) * (sw.end - sw.start);
        yp[oh * g.out_w + ow] = static_cast<T>(s / static_cast<C>(divisor));
      }
    }
  });
}

template <class T>
void avg_backward_typed(const Window2d& g, bool count_include_pad, const T* dy, T* dx) {
  using C = compute_t<T>;
  for_each_plane(g, [&](int64_t plane) {
    std::vector<C> scratch;
    const T* dyp = dy + plane * g.out_plane();
    scatter_plane(dx + plane * g.in_plane(), g.in_plane(), scratch, [&](auto* acc) {
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const AvgSpan sh = avg_span(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h);
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const AvgSpan sw = avg_span(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w);
          const int64_t divisor =
              count_include_pad ? sh.padded_len * sw.padded_len : (sh.end - sh.start) * (sw.end - sw.start);
          const C v = static_cast<C>(dyp[oh * g.out_w + ow]) / static_cast<C>(divisor);
          for (int64_t ih = sh.start; ih < sh.end; ++ih)
            for (int64_t iw = sw.start; iw < sw.end; ++iw) acc[ih * g.in_w + iw] += v;
        }
      }
    });
  });
}

template <class T>
void adaptive_forward_typed(const Window2d& g, const T* x, T* y) {
  using C = compute_t<T>;
  for_each_plane(g, [&](int64_t plane) {
    const T* xp = x + plane * g.in_plane();
    T* yp = y + plane * g.out_plane();
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t h0 = adaptive_start(oh, g.in_h, g.out_h), h1 = adaptive_end(oh, g.in_h, g.out_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t w0 = adaptive_start(ow, g.in_w, g.out_w), w1 = adaptive_end(ow, g.in_w, g.out_w);
        C s = 0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) s += static_cast<C>(xp[ih * g.in_w + iw]);
        yp[oh * g.out_w + ow] = static_cast<T>(s / static_cast<C>((h1 - h0) * (w1 - w0)));
      }
    }
  });
}

template <class T>
void adaptive_backward_typed(const Window2d& g, const T* dy, T* dx) {
  using C = compute_t<T>;
  for_each_plane(g, [&](int64_t plane) {
    std::vector<C> scratch;
    const T* dyp = dy + plane * g.out_plane();
    scatter_plane(dx + plane * g.in_plane(), g.in_plane(), scratch, [&](auto* acc) {
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.in_h, g.out_h), h1 = adaptive_end(oh, g.in_h, g.out_h);
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t w0 = adaptive_start(ow, g.in_w, g.out_w), w1 = adaptive_end(ow, g.in_w, g.out_w);
          const C v = static_cast<C>(dyp[oh * g.out_w + ow]) / static_cast<C>((h1 - h0) * (w1 - w0));
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) acc[ih * g.in_w + iw] += v;
        }
      }
    });
  });
}

template <class F>
void visit(const char* kernel, DType dtype, F&& f) {
  if (!visit_floating(dtype, f)) unreachable_dtype(kernel, dtype);
}

}  // namespace

void max_pool2d_forward(DType dtype, const Window2d& g, const void* x, void* y, int64_t* indices) {
  visit("max_pool2d_forward", dtype, [&](auto tag) {
    using T = decltype(tag);
    max_forward_typed(g, static_cast<const T*>(x), static_cast<T*>(y), indices);
  });
}

void max_pool2d_backward(DType dtype, const Window2d& g, const void* dy, const int64_t* indices, void* dx) {
  visit("max_pool2d_backward", dtype, [&](auto tag) {
    using T = decltype(tag);
    max_backward_typed(g, static_cast<const T*>(dy), indices, static_cast<T*>(dx));
  });
}

void avg_pool2d_forward(DType dtype, const Window2d& g, bool count_include_pad, const void* x, void* y) {
  visit("avg_pool2d_forward", dtype, [&](auto tag) {
    using T = decltype(tag);
    avg_forward_typed(g, count_include_pad, static_cast<const T*>(x), static_cast<T*>(y));
  });
}

void avg_pool2d_backward(DType dtype, const Window2d& g, bool count_include_pad, const void* dy, void* dx) {
  visit("avg_pool2d_backward", dtype, [&](auto tag) {
    using T = decltype(tag);
    avg_backward_typed(g, count_include_pad, static_cast<const T*>(dy), static_cast<T*>(dx));
  });
}

void adaptive_avg_pool2d_forward(DType dtype, const Window2d& g, const void* x, void* y) {
  visit("adaptive_avg_pool2d_forward", dtype, [&](auto tag) {
    using T = decltype(tag);
    adaptive_forward_typed(g, static_cast<const T*>(x), static_cast<T*>(y));
  });
}

void adaptive_avg_pool2d_backward(DType dtype, const Window2d& g, const void* dy, void* dx) {
  visit("adaptive_avg_pool2d_backward", dtype, [&](auto tag) {
    using T = decltype(tag);
    adaptive_backward_typed(g, static_cast<const T*>(dy), static_cast<T*>(dx));
  });
}

}  // namespace tandem::kernels::cpu
