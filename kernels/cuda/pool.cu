// CUDA pooling kernels, twins of kernels/cpu/pool.cpp. Forward: one thread per output
// element. Backward: one thread per input element that gathers from the few windows
// covering it (for max pool, those whose saved argmax is this element), so there are
// no atomics, f16/bf16 sum in f32, and the result is deterministic.
#include "kernels/cuda/pool.h"

#include <cuda/std/limits>

#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

#define TANDEM_GRID_STRIDE(i, n)                                                                  \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n);         \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

/// Outputs along one axis whose window (start o·stride − pad, extent `span`) covers
/// input position i: [lo, hi).
struct OutRange {
  int64_t lo, hi;
};

__device__ __forceinline__ OutRange covering(int64_t i, int64_t pad, int64_t span, int64_t stride, int64_t out) {
  const int64_t ip = i + pad;
  const int64_t lo = ip < span ? 0 : (ip - span) / stride + 1;
  return {lo, min64(ip / stride + 1, out)};
}

// PyTorch's average-pool window along one axis: the divisor length is clipped to the
// padded extent, the summed range to the input.
struct AvgSpan {
  int64_t start, end, padded_len;
};

__device__ __forceinline__ AvgSpan avg_span(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t in) {
  int64_t start = o * stride - pad;
  int64_t end = min64(start + kernel, in + pad);
  const int64_t padded_len = end - start;
  return {max64(start, 0), min64(end, in), padded_len};
}

__device__ __forceinline__ int64_t avg_divisor(const AvgSpan& h, const AvgSpan& w, bool count_include_pad) {
  return count_include_pad ? h.padded_len * w.padded_len : (h.end - h.start) * (w.end - w.start);
}

__device__ __forceinline__ int64_t adaptive_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
__device__ __forceinline__ int64_t adaptive_end(int64_t o, int64_t in, int64_t out) {
  return ((o + 1) * in + out - 1) / out;
}

template <class T>
__global__ void max_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ indices,
                                   Window2d g, int64_t total) {
  using A = compute_t<T>;
  TANDEM_GRID_STRIDE(idx, total) {
    const int64_t ow = idx % g.out_w, oh = (idx / g.out_w) % g.out_h, plane = idx / g.out_plane();
    const T* xp = x + plane * g.in_plane();
    const int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
    A best = -::cuda::std::numeric_limits<A>::infinity();
    int64_t best_index = -1;
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t ih = h0 + i * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const int64_t iw = w0 + j * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        const A v = static_cast<A>(xp[ih * g.in_w + iw]);
        // The first valid element stands in when all are -inf; NaN propagates.
        if (best_index < 0 || v > best || isnan(v)) {
          best = v;
          best_index = ih * g.in_w + iw;
        }
      }
    }
    y[idx] = static_cast<T>(best);
    indices[idx] = best_index;
  }
}

template <class T>
__global__ void max_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ indices, T* __restrict__ dx,
                                    Window2d g, int64_t total) {
  using A = compute_t<T>;
  const int64_t span_h = g.dilation_h * (g.kernel_h - 1) + 1, span_w = g.dilation_w * (g.kernel_w - 1) + 1;
  TANDEM_GRID_STRIDE(idx, total) {
    const int64_t iw = idx % g.in_w, ih = (idx / g.in_w) % g.in_h, plane = idx / g.in_plane();
    const int64_t self = ih * g.in_w + iw;
    const OutRange rh = covering(ih, g.pad_h, span_h, g.stride_h, g.out_h);
    const OutRange rw = covering(iw, g.pad_w, span_w, g.stride_w, g.out_w);
    const T* dyp = dy + plane * g.out_plane();
    const int64_t* ip = indices + plane * g.out_plane();
    A s = 0;
    for (int64_t oh = rh.lo; oh < rh.hi; ++oh)
      for (int64_t ow = rw.lo; ow < rw.hi; ++ow) {
        const int64_t o = oh * g.out_w + ow;
        if (ip[o] == self) s += static_cast<A>(dyp[o]);
      }
    dx[idx] = static_cast<T>(s);
  }
}

template <class T>
__global__ void avg_forward_kernel(const T* __restrict__ x, T* __restrict__ y, Window2d g, bool count_include_pad,
                                   int64_t total) {
  using A = compute_t<T>;
  TANDEM_GRID_STRIDE(idx, total) {
    const int64_t ow = idx % g.out_w, oh = (idx / g.out_w) % g.out_h, plane = idx / g.out_plane();
    const T* xp = x + plane * g.in_plane();
    const AvgSpan sh = avg_span(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h);
    const AvgSpan sw = avg_span(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w);
    A s = 0;
    for (int64_t ih = sh.start; ih < sh.end; ++ih)
      for (int64_t iw = sw.start; iw < sw.end; ++iw) s += static_cast<A>(xp[ih * g.in_w + iw]);
    y[idx] = static_cast<T>(s / static_cast<A>(avg_divisor(sh, sw, count_include_pad)));
  }
}

template <class T>
__global__ void avg_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, Window2d g, bool count_include_pad,
                                    int64_t total) {
  using A = compute_t<T>;
  TANDEM_GRID_STRIDE(idx, total) {
    const int64_t iw = idx % g.in_w, ih = (idx / g.in_w) % g.in_h, plane = idx / g.in_plane();
    const OutRange rh = covering(ih, g.pad_h, g.kernel_h, g.stride_h, g.out_h);
    const OutRange rw = covering(iw, g.pad_w, g.kernel_w, g.stride_w, g.out_w);
    const T* dyp = dy + plane * g.out_plane();
    A s = 0;
    for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
      const AvgSpan sh = avg_span(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h);
      if (ih < sh.start || ih >= sh.end) continue;
      for (int64_t ow = rw.lo; ow < rw.hi; ++ow) {
        const AvgSpan sw = avg_span(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w);
        if (iw < sw.start || iw >= sw.end) continue;
        s += static_cast<A>(dyp[oh * g.out_w + ow]) / static_cast<A>(avg_divisor(sh, sw, count_include_pad));
      }
    }
    dx[idx] = static_cast<T>(s);
  }
}

template <class T>
__global__ void adaptive_forward_kernel(const T* __restrict__ x, T* __restrict__ y, Window2d g, int64_t total) {
  using A = compute_t<T>;
  TANDEM_GRID_STRIDE(idx, total) {
    const int64_t ow = idx % g.out_w, oh = (idx / g.out_w) % g.out_h, plane = idx / g.out_plane();
    const T* xp = x + plane * g.in_plane();
    const int64_t h0 = adaptive_start(oh, g.in_h, g.out_h), h1 = adaptive_end(oh, g.in_h, g.out_h);
    const int64_t w0 = adaptive_start(ow, g.in_w, g.out_w), w1 = adaptive_end(ow, g.in_w, g.out_w);
    A s = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) s += static_cast<A>(xp[ih * g.in_w + iw]);
    y[idx] = static_cast<T>(s / static_cast<A>((h1 - h0) * (w1 - w0)));
  }
}

template <class T>
__global__ void adaptive_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, Window2d g, int64_t total) {
  using A = compute_t<T>;
  TANDEM_GRID_STRIDE(idx, total) {
    const int64_t iw = idx % g.in_w, ih = (idx / g.in_w) % g.in_h, plane = idx / g.in_plane();
    // Output rows whose window [start, end) holds ih: [⌊ih·OH/H⌋, ⌈(ih+1)·OH/H⌉).
    const int64_t oh0 = (ih * g.out_h) / g.in_h, oh1 = min64(((ih + 1) * g.out_h + g.in_h - 1) / g.in_h, g.out_h);
    const int64_t ow0 = (iw * g.out_w) / g.in_w, ow1 = min64(((iw + 1) * g.out_w + g.in_w - 1) / g.in_w, g.out_w);
    const T* dyp = dy + plane * g.out_plane();
    A s = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t hlen = adaptive_end(oh, g.in_h, g.out_h) - adaptive_start(oh, g.in_h, g.out_h);
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t wlen = adaptive_end(ow, g.in_w, g.out_w) - adaptive_start(ow, g.in_w, g.out_w);
        s += static_cast<A>(dyp[oh * g.out_w + ow]) / static_cast<A>(hlen * wlen);
      }
    }
    dx[idx] = static_cast<T>(s);
  }
}

#undef TANDEM_GRID_STRIDE

template <class F>
void visit(const char* kernel, DType dtype, F&& f) {
  if (!visit_floating(dtype, f)) unreachable_dtype(kernel, dtype);
}

int64_t output_elements(const Window2d& g) { return g.batch * g.channels * g.out_plane(); }
int64_t input_elements(const Window2d& g) { return g.batch * g.channels * g.in_plane(); }

}  // namespace

void max_pool2d_forward(DType dtype, const Window2d& g, const void* x, void* y, int64_t* indices,
                        cudaStream_t stream) {
  const int64_t total = output_elements(g);
  if (total == 0) return;
  visit("max_pool2d_forward", dtype, [&](auto tag) {
    using T = decltype(tag);
    max_forward_kernel<T><<<grid_for(total), kBlockSize, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y),
                                                                      indices, g, total);
    CUDA_CHECK_LAUNCH();
  });
}

void max_pool2d_backward(DType dtype, const Window2d& g, const void* dy, const int64_t* indices, void* dx,
                         cudaStream_t stream) {
  const int64_t total = input_elements(g);
  if (total == 0) return;
  visit("max_pool2d_backward", dtype, [&](auto tag) {
    using T = decltype(tag);
    max_backward_kernel<T><<<grid_for(total), kBlockSize, 0, stream>>>(static_cast<const T*>(dy), indices,
                                                                       static_cast<T*>(dx), g, total);
    CUDA_CHECK_LAUNCH();
  });
}

void avg_pool2d_forward(DType dtype, const Window2d& g, bool count_include_pad, const void* x, void* y,
                        cudaStream_t stream) {
  const int64_t total = output_elements(g);
  if (total == 0) return;
  visit("avg_pool2d_forward", dtype, [&](auto tag) {
    using T = decltype(tag);
    avg_forward_kernel<T><<<grid_for(total), kBlockSize, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), g,
                                                                      count_include_pad, total);
    CUDA_CHECK_LAUNCH();
  });
}

void avg_pool2d_backward(DType dtype, const Window2d& g, bool count_include_pad, const void* dy, void* dx,
                         cudaStream_t stream) {
  const int64_t total = input_elements(g);
  if (total == 0) return;
  visit("avg_pool2d_backward", dtype, [&](auto tag) {
    using T = decltype(tag);
    avg_backward_kernel<T><<<grid_for(total), kBlockSize, 0, stream>>>(static_cast<const T*>(dy), static_cast<T*>(dx),
                                                                       g, count_include_pad, total);
    CUDA_CHECK_LAUNCH();
  });
}

void adaptive_avg_pool2d_forward(DType dtype, const Window2d& g, const void* x, void* y, cudaStream_t stream) {
  const int64_t total = output_elements(g);
  if (total == 0) return;
  visit("adaptive_avg_pool2d_forward", dtype, [&](auto tag) {
    using T = decltype(tag);
    adaptive_forward_kernel<T><<<grid_for(total), kBlockSize, 0, stream>>>(static_cast<const T*>(x),
                                                                           static_cast<T*>(y), g, total);
    CUDA_CHECK_LAUNCH();
  });
}

void adaptive_avg_pool2d_backward(DType dtype, const Window2d& g, const void* dy, void* dx, cudaStream_t stream) {
  const int64_t total = input_elements(g);
  if (total == 0) return;
  visit("adaptive_avg_pool2d_backward", dtype, [&](auto tag) {
    using T = decltype(tag);
    adaptive_backward_kernel<T><<<grid_for(total), kBlockSize, 0, stream>>>(static_cast<const T*>(dy),
                                                                            static_cast<T*>(dx), g, total);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::kernels::cuda
