// cuDNN wrapper for 2-D convolution, and the bias kernels that go with it.
//
// Algorithms: the first call for a (device, dtype, geometry, groups) key asks cuDNN's
// heuristics (Get*_v7) for the candidates, sizes a workspace for the largest of them
// (capped at kMaxFindWorkspace), times them with Find*Ex on the call's own buffers and
// caches the fastest; later calls reuse it. f32 and f64 run with CUDNN_FMA_MATH (no
// TF32, so results stay comparable with the CPU, as the cuBLAS wrapper does) unless
// tf32_allowed() (kernels/cuda/tf32.h) lets f32 use TF32 tensor cores; f16/bf16 with
// tensor-op math and f32 accumulation.
//
// Handles are per thread and per device (a cuDNN handle must not be used by two threads
// at once), bound to the call's stream by cudnnSetStream each time, and return to a
// pool when their thread exits.
#include "kernels/cuda/conv.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/handle_pool.h"
#include "kernels/cuda/out_of_memory.h"
#include "kernels/cuda/reduce_group.cuh"
#include "kernels/cuda/tf32.h"
#include "tandem/config.h"

#if TANDEM_CUDNN
#include <cudnn.h>
#endif

namespace tandem::kernels::cuda {
namespace {

// ---- bias: y[n, o, p] += b[o], and db[o] = Σ_{n, p} dy[n, o, p] --------------------------

template <class T>
__global__ void bias_add_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t total, int64_t channels,
                                int64_t plane) {
  using A = compute_t<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = (i / plane) % channels;
    y[i] = static_cast<T>(static_cast<A>(y[i]) + static_cast<A>(bias[o]));
  }
}

constexpr int kBiasThreads = 256;

// One block per output channel: its threads stride over the batch's planes of that
// channel and combine their partial sums with a block reduction (deterministic).
template <class T>
__global__ void bias_grad_kernel(T* __restrict__ db, const T* __restrict__ dy, int64_t batch, int64_t channels,
                                 int64_t plane) {
  using A = compute_t<T>;
  __shared__ A smem[kBiasThreads / 32];
  for (int64_t o = blockIdx.x; o < channels; o += gridDim.x) {
    A s = 0;
    const int64_t count = batch * plane;
    for (int64_t k = threadIdx.x; k < count; k += kBiasThreads) {
      const int64_t n = k / plane, p = k - n * plane;
      s += static_cast<A>(dy[(n * channels + o) * plane + p]);
    }
    s = group_reduce<kBiasThreads>(s, SumOp{}, smem);
    if (threadIdx.x == 0) db[o] = static_cast<T>(s);
  }
}

template <class F>
void visit(const char* kernel, DType dtype, F&& f) {
  if (!visit_floating(dtype, f)) unreachable_dtype(kernel, dtype);
}

void bias_add(DType dtype, const Window2d& g, int64_t out_channels, const void* bias, void* y, cudaStream_t stream) {
  const int64_t total = g.batch * out_channels * g.out_plane();
  if (total == 0) return;
  visit("conv2d_bias_add", dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_add_kernel<T><<<grid_for(total), kBlockSize, 0, stream>>>(static_cast<T*>(y), static_cast<const T*>(bias),
                                                                   total, out_channels, g.out_plane());
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void conv2d_backward_bias(DType dtype, int64_t batch, int64_t out_channels, int64_t plane, const void* dy, void* db,
                          cudaStream_t stream) {
  if (out_channels == 0) return;
  visit("conv2d_backward_bias", dtype, [&](auto tag) {
    using T = decltype(tag);
    const unsigned int blocks = static_cast<unsigned int>(std::min<int64_t>(out_channels, 65535));
    bias_grad_kernel<T><<<blocks, kBiasThreads, 0, stream>>>(static_cast<T*>(db), static_cast<const T*>(dy), batch,
                                                            out_channels, plane);
    CUDA_CHECK_LAUNCH();
  });
}

#if !TANDEM_CUDNN

bool conv2d_has_cudnn() { return false; }

namespace {
[[noreturn]] void throw_no_cudnn() { throw std::runtime_error("[conv2d] needs cuDNN, this build has none"); }
}  // namespace

void conv2d_forward(DType, const Window2d&, int64_t, int64_t, const void*, const void*, const void*, void*,
                    const WorkspaceFn&, cudaStream_t) {
  throw_no_cudnn();
}
void conv2d_backward_data(DType, const Window2d&, int64_t, int64_t, const void*, const void*, void*,
                          const WorkspaceFn&, cudaStream_t) {
  throw_no_cudnn();
}
void conv2d_backward_filter(DType, const Window2d&, int64_t, int64_t, const void*, const void*, void*,
                            const WorkspaceFn&, cudaStream_t) {
  throw_no_cudnn();
}

#else  // TANDEM_CUDNN

namespace {

/// Workspace offered to Find*Ex: algorithms needing more are not tried.
constexpr size_t kMaxFindWorkspace = size_t{1} << 30;

// ---- handles -------------------------------------------------------------------------------

cudnnHandle_t create_cudnn_handle() {
  cudnnHandle_t handle = nullptr;
  CUDNN_CHECK(cudnnCreate(&handle));
  return handle;
}

int current_device() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

/// The calling thread's handle for the current device, bound to `stream`.
cudnnHandle_t handle_for(cudaStream_t stream) {
  cudnnHandle_t handle = HandlePool<cudnnHandle_t, create_cudnn_handle>::get(current_device());
  CUDNN_CHECK(cudnnSetStream(handle, stream));
  return handle;
}

// ---- descriptors -----------------------------------------------------------------------------

cudnnDataType_t data_type(DType dtype) {
  switch (dtype) {
    case DType::kF32: return CUDNN_DATA_FLOAT;
    case DType::kF64: return CUDNN_DATA_DOUBLE;
    case DType::kF16: return CUDNN_DATA_HALF;
    case DType::kBF16: return CUDNN_DATA_BFLOAT16;
    default: unreachable_dtype("conv2d", dtype);
  }
}

/// The descriptors of one convolution, destroyed with the object.
struct ConvDescriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;

  ConvDescriptors(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, bool tf32) {
    const cudnnDataType_t dt = data_type(dtype);
    const auto i = [](int64_t v) {
      if (v > INT32_MAX) throw std::invalid_argument("[conv2d] cuDNN takes 32-bit extents, got " + std::to_string(v));
      return static_cast<int>(v);
    };
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, dt, i(g.batch), i(g.channels), i(g.in_h), i(g.in_w)));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, dt, i(g.batch), i(out_channels), i(g.out_h),
                                           i(g.out_w)));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, dt, CUDNN_TENSOR_NCHW, i(out_channels), i(g.channels / groups),
                                           i(g.kernel_h), i(g.kernel_w)));
    // f16/bf16 accumulate in f32; f64 in f64.
    const cudnnDataType_t compute = dtype == DType::kF64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, i(g.pad_h), i(g.pad_w), i(g.stride_h), i(g.stride_w),
                                                i(g.dilation_h), i(g.dilation_w), CUDNN_CROSS_CORRELATION, compute));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, i(groups)));
    // Tensor cores for half types; for f32 only with TF32 allowed (CUDNN_DEFAULT_MATH
    // permits TF32 there; CUDNN_FMA_MATH never uses tensor cores).
    const bool narrow = dtype == DType::kF16 || dtype == DType::kBF16;
    const bool tf32_f32 = tf32 && dtype == DType::kF32;
    CUDNN_CHECK(cudnnSetConvolutionMathType(
        conv, narrow ? CUDNN_TENSOR_OP_MATH : (tf32_f32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH)));
  }
  ~ConvDescriptors() {
    // Destroy calls cannot usefully fail; a destructor must not throw.
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
  ConvDescriptors(const ConvDescriptors&) = delete;
  ConvDescriptors& operator=(const ConvDescriptors&) = delete;
};

/// Scaling factors in the type cuDNN expects: double for f64 data, float otherwise.
struct Scalars {
  float f[2] = {1.0f, 0.0f};
  double d[2] = {1.0, 0.0};
  bool is_double;
  explicit Scalars(DType dtype) : is_double(dtype == DType::kF64) {}
  const void* one() const { return is_double ? static_cast<const void*>(&d[0]) : static_cast<const void*>(&f[0]); }
  const void* zero() const { return is_double ? static_cast<const void*>(&d[1]) : static_cast<const void*>(&f[1]); }
};

// ---- algorithm cache ---------------------------------------------------------------------------

enum class Pass { kForward, kBackwardData, kBackwardFilter };

using Key = std::tuple<int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, bool>;

/// The largest power of two, up to 256, that divides every address: tensors are views
/// at element offsets into their storage, and an algorithm timed on 256-byte aligned
/// buffers may need an alignment (16 bytes for tensor cores) a view lacks, so the
/// alignment is part of the key (as in PyTorch's).
int alignment(std::initializer_list<const void*> ptrs) {
  uintptr_t bits = 256;
  for (const void* p : ptrs) bits |= reinterpret_cast<uintptr_t>(p);
  return static_cast<int>(bits & (~bits + 1));
}

Key make_key(Pass pass, DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, int align, bool tf32) {
  return Key{static_cast<int>(pass), current_device(), static_cast<int>(dtype), g.batch, g.channels, g.in_h, g.in_w,
             out_channels, g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
             g.dilation_h, g.dilation_w, groups, align, tf32 && dtype == DType::kF32};
}

struct Choice {
  int algo = 0;  // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};

struct AlgoCache {
  std::mutex mutex;
  std::map<Key, Choice> choices;
};

AlgoCache& algo_cache() {
  static AlgoCache* cache = new AlgoCache;  // leaked, as the handle pool
  return *cache;
}

/// Picks the fastest successful result of a Find*Ex call.
template <class Perf>
Choice fastest(const Perf* perf, int count, const char* what) {
  for (int k = 0; k < count; ++k) {
    if (perf[k].status == CUDNN_STATUS_SUCCESS) return {static_cast<int>(perf[k].algo), perf[k].mathType, perf[k].memory};
  }
  throw std::runtime_error(std::string("[conv2d] cuDNN found no usable ") + what + " algorithm");
}

/// The workspace to offer Find*Ex: the most any heuristic candidate needs, capped.
template <class Perf>
size_t find_workspace(const Perf* perf, int count) {
  size_t bytes = 0;
  for (int k = 0; k < count; ++k) {
    if (perf[k].status == CUDNN_STATUS_SUCCESS && perf[k].memory <= kMaxFindWorkspace)
      bytes = std::max(bytes, perf[k].memory);
  }
  return bytes;
}

/// The workspace Find*Ex gets: `bytes`, or none when the device is out of memory for
/// it, which limits the search to algorithms without workspace rather than failing the
/// convolution on its first call (the search offers up to kMaxFindWorkspace; the
/// narrower choice is then cached for the shape). Returns the buffer and its bytes.
std::pair<void*, size_t> find_buffer(const WorkspaceFn& workspace, size_t bytes) {
  if (bytes == 0) return {workspace(0), 0};
  try {
    return {workspace(bytes), bytes};
  } catch (const OutOfMemoryError&) {
    return {workspace(0), 0};
  }
}

/// Looks up the cached choice for `key`, or runs `find` (outside the lock: it launches
/// work and may take a while) and caches its answer. Two threads may both search the
/// first time; either answer is valid.
template <class Find>
Choice choose(const Key& key, Find&& find) {
  AlgoCache& cache = algo_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto it = cache.choices.find(key);
    if (it != cache.choices.end()) return it->second;
  }
  const Choice c = find();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.choices.emplace(key, c).first->second;
}

/// Runs the chosen algorithm in the math mode it was timed with, except that f64, and
/// f32 without TF32, stay on FMA math whatever Find reported (CUDNN_DEFAULT_MATH would
/// permit TF32).
void apply_math(const ConvDescriptors& d, DType dtype, bool tf32, const Choice& c) {
  if (dtype == DType::kF16 || dtype == DType::kBF16 || (tf32 && dtype == DType::kF32))
    CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, c.math));
}

}  // namespace

bool conv2d_has_cudnn() { return true; }

void conv2d_forward(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                    const void* w, const void* bias, void* y, const WorkspaceFn& workspace, cudaStream_t stream) {
  cudnnHandle_t handle = handle_for(stream);
  const bool tf32 = tf32_allowed().load();
  ConvDescriptors d(dtype, g, out_channels, groups, tf32);
  const Choice c = choose(make_key(Pass::kForward, dtype, g, out_channels, groups, alignment({x, w, y}), tf32), [&] {
    constexpr int kMax = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    cudnnConvolutionFwdAlgoPerf_t perf[kMax];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, d.x, d.w, d.conv, d.y, kMax, &count, perf));
    const auto [ws, bytes] = find_buffer(workspace, find_workspace(perf, count));
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(handle, d.x, x, d.w, w, d.conv, d.y, y, kMax, &count, perf,
                                                       ws, bytes));
    return fastest(perf, count, "forward");
  });
  apply_math(d, dtype, tf32, c);
  void* ws = workspace(c.workspace);
  const Scalars s(dtype);
  CUDNN_CHECK(cudnnConvolutionForward(handle, s.one(), d.x, x, d.w, w, d.conv,
                                      static_cast<cudnnConvolutionFwdAlgo_t>(c.algo), ws, c.workspace, s.zero(), d.y,
                                      y));
  if (bias != nullptr) bias_add(dtype, g, out_channels, bias, y, stream);
}

void conv2d_backward_data(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* w,
                          const void* dy, void* dx, const WorkspaceFn& workspace, cudaStream_t stream) {
  cudnnHandle_t handle = handle_for(stream);
  const bool tf32 = tf32_allowed().load();
  ConvDescriptors d(dtype, g, out_channels, groups, tf32);
  const Choice c = choose(make_key(Pass::kBackwardData, dtype, g, out_channels, groups, alignment({w, dy, dx}), tf32), [&] {
    constexpr int kMax = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, d.w, d.y, d.conv, d.x, kMax, &count, perf));
    const auto [ws, bytes] = find_buffer(workspace, find_workspace(perf, count));
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(handle, d.w, w, d.y, dy, d.conv, d.x, dx, kMax, &count,
                                                            perf, ws, bytes));
    return fastest(perf, count, "backward-data");
  });
  apply_math(d, dtype, tf32, c);
  void* ws = workspace(c.workspace);
  const Scalars s(dtype);
  CUDNN_CHECK(cudnnConvolutionBackwardData(handle, s.one(), d.w, w, d.y, dy, d.conv,
                                           static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo), ws, c.workspace,
                                           s.zero(), d.x, dx));
}

void conv2d_backward_filter(DType dtype, const Window2d& g, int64_t out_channels, int64_t groups, const void* x,
                            const void* dy, void* dw, const WorkspaceFn& workspace, cudaStream_t stream) {
  cudnnHandle_t handle = handle_for(stream);
  const bool tf32 = tf32_allowed().load();
  ConvDescriptors d(dtype, g, out_channels, groups, tf32);
  const Choice c = choose(make_key(Pass::kBackwardFilter, dtype, g, out_channels, groups, alignment({x, dy, dw}), tf32), [&] {
    constexpr int kMax = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, d.x, d.y, d.conv, d.w, kMax, &count, perf));
    const auto [ws, bytes] = find_buffer(workspace, find_workspace(perf, count));
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(handle, d.x, x, d.y, dy, d.conv, d.w, dw, kMax, &count,
                                                              perf, ws, bytes));
    return fastest(perf, count, "backward-filter");
  });
  apply_math(d, dtype, tf32, c);
  void* ws = workspace(c.workspace);
  const Scalars s(dtype);
  CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, s.one(), d.x, x, d.y, dy, d.conv,
                                             static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo), ws, c.workspace,
                                             s.zero(), d.w, dw));
}

#endif  // TANDEM_CUDNN

}  // namespace tandem::kernels::cuda
