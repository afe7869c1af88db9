// Multi-tensor norm: each block of the multi_tensor.cuh plan reduces its chunk to one
// f64 partial (workspace[1 + global block]); one single-block launch then reduces the
// partials into workspace[0]. Also the multi-tensor in-place scale of clip_grad_norm.
#include "kernels/cuda/norm2.h"

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/norm2.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/multi_tensor.cuh"
#include "kernels/cuda/reduce_group.cuh"

namespace tandem::kernels::cuda {
namespace {

constexpr int kNormBlockSize = 512;
constexpr int kFinalBlockSize = 1024;

// One list. 128·(8 + 8) + 320·(1 + 4) + 1 = 3649 bytes, under the 4 KiB limit.
using NormLaunchArgs = TensorListArgs<1, kNormMaxTensors, kNormMaxBlocks>;
static_assert(sizeof(NormLaunchArgs) <= 4096, "kernel argument struct must fit in 4 KiB");

/// Maximum that propagates NaN (a NaN gradient must surface in the norm).
struct NanMaxOp {
  __device__ double operator()(double a, double b) const { return (a > b || a != a) ? a : b; }
};

template <NormKind kKind>
__device__ inline double norm_term(double x, double p) {
  if constexpr (kKind == NormKind::kSquares) return x * x;
  else if constexpr (kKind == NormKind::kMaxAbs) return fabs(x);
  else return pow(fabs(x), p);
}

template <NormKind kKind>
__device__ inline double norm_combine(double a, double b) {
  if constexpr (kKind == NormKind::kMaxAbs) return NanMaxOp{}(a, b);
  else return a + b;
}

template <NormKind kKind>
__device__ inline double block_combine(double v, double* smem) {
  if constexpr (kKind == NormKind::kMaxAbs) return group_reduce<kNormBlockSize>(v, NanMaxOp{}, smem);
  else return group_reduce<kNormBlockSize>(v, SumOp{}, smem);
}

template <class T, NormKind kKind>
__global__ void __launch_bounds__(kNormBlockSize)
    norm_partials_kernel(const __grid_constant__ NormLaunchArgs args, double p, double* __restrict__ partials) {
  __shared__ double smem[kNormBlockSize / 32];
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  const T* __restrict__ x = static_cast<const T*>(args.ptr[0][t]);
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kNormBlockSize) {
    const double v = static_cast<double>(static_cast<compute_t<T>>(x[i]));
    acc = norm_combine<kKind>(acc, norm_term<kKind>(v, p));
  }
  acc = block_combine<kKind>(acc, smem);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

/// Single block: out = combine of the n partials (n >= 1).
template <NormKind kKind>
__global__ void __launch_bounds__(kFinalBlockSize)
    norm_final_kernel(const double* __restrict__ partials, int64_t n, double* __restrict__ out) {
  __shared__ double smem[kFinalBlockSize / 32];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kFinalBlockSize) acc = norm_combine<kKind>(acc, partials[i]);
  if constexpr (kKind == NormKind::kMaxAbs) acc = group_reduce<kFinalBlockSize>(acc, NanMaxOp{}, smem);
  else acc = group_reduce<kFinalBlockSize>(acc, SumOp{}, smem);
  if (threadIdx.x == 0) *out = acc;
}

template <class T>
__global__ void __launch_bounds__(kNormBlockSize)
    scale_kernel(const __grid_constant__ NormLaunchArgs args, compute_t<T> factor) {
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  T* __restrict__ x = static_cast<T*>(args.ptr[0][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kNormBlockSize) {
    x[i] = static_cast<T>(static_cast<compute_t<T>>(x[i]) * factor);
  }
}

/// x *= *factor unless it is 1: one cached load per thread, no write for an unclipped step.
template <class T>
__global__ void __launch_bounds__(kNormBlockSize)
    scale_by_kernel(const __grid_constant__ NormLaunchArgs args, const double* __restrict__ factor) {
  const double f = *factor;
  if (f == 1.0) return;
  int64_t begin, end;
  const int t = chunk_of_block(args, begin, end);
  T* __restrict__ x = static_cast<T*>(args.ptr[0][t]);
  const compute_t<T> c = static_cast<compute_t<T>>(f);
  for (int64_t i = begin + threadIdx.x; i < end; i += kNormBlockSize) {
    x[i] = static_cast<T>(static_cast<compute_t<T>>(x[i]) * c);
  }
}

struct ClipFinishArgs {
  const double* parts[kClipMaxParts];
  int count;
};

__global__ void clip_norm_finish_kernel(const __grid_constant__ ClipFinishArgs args, NormKind kind, double p,
                                        double max_norm, double* total, double* factor) {
  double acc = 0.0;
  for (int i = 0; i < args.count; ++i) acc = kernels::norm_combine(kind, acc, *args.parts[i]);
  *total = norm_from_accumulator(kind, acc, p);
  *factor = clip_factor(max_norm, *total);
}

template <class Launch>
void plan(const void* const* tensors, const int64_t* numel, int64_t count, Launch&& launch) {
  plan_tensor_list_launches<NormLaunchArgs>(
      count,
      [&](int64_t i, NormLaunchArgs& args, int slot) {
        args.ptr[0][slot] = const_cast<void*>(tensors[i]);
        return numel[i];
      },
      launch);
}

/// Calls f(T{}) for the floating dtypes the kernels are instantiated for.
template <class F>
void visit_norm_dtype(const char* kernel, DType dtype, F&& f) {
  if (!visit_floating(dtype, f)) unreachable_dtype(kernel, dtype);
}

}  // namespace

int64_t multi_tensor_norm_workspace(const int64_t* numel, int64_t count) {
  return 1 + tensor_list_chunks(numel, count);
}

void multi_tensor_norm(DType dtype, const void* const* tensors, const int64_t* numel, int64_t count, double norm_type,
                       double* workspace, cudaStream_t stream) {
  const int64_t chunks = tensor_list_chunks(numel, count);
  if (chunks == 0) {
    CUDA_CHECK(cudaMemsetAsync(workspace, 0, sizeof(double), stream));
    return;
  }
  auto run = [&](auto tag, auto kind_tag) {
    using T = decltype(tag);
    constexpr NormKind kKind = decltype(kind_tag)::value;
    plan(tensors, numel, count, [&](const NormLaunchArgs& args, int blocks, int64_t first_block) {
      norm_partials_kernel<T, kKind><<<blocks, kNormBlockSize, 0, stream>>>(args, norm_type,
                                                                            workspace + 1 + first_block);
      CUDA_CHECK_LAUNCH();
    });
    norm_final_kernel<kKind><<<1, kFinalBlockSize, 0, stream>>>(workspace + 1, chunks, workspace);
    CUDA_CHECK_LAUNCH();
  };
  visit_norm_dtype("multi_tensor_norm", dtype, [&](auto tag) {
    switch (norm_kind(norm_type)) {
      case NormKind::kSquares: run(tag, std::integral_constant<NormKind, NormKind::kSquares>{}); return;
      case NormKind::kMaxAbs: run(tag, std::integral_constant<NormKind, NormKind::kMaxAbs>{}); return;
      case NormKind::kPower: run(tag, std::integral_constant<NormKind, NormKind::kPower>{}); return;
    }
  });
}

void multi_tensor_scale(DType dtype, void* const* tensors, const int64_t* numel, int64_t count, double factor,
                        cudaStream_t stream) {
  visit_norm_dtype("multi_tensor_scale", dtype, [&](auto tag) {
    using T = decltype(tag);
    plan(tensors, numel, count, [&](const NormLaunchArgs& args, int blocks, int64_t) {
      scale_kernel<T><<<blocks, kNormBlockSize, 0, stream>>>(args, static_cast<compute_t<T>>(factor));
      CUDA_CHECK_LAUNCH();
    });
  });
}

void multi_tensor_scale_by(DType dtype, void* const* tensors, const int64_t* numel, int64_t count,
                           const double* factor, cudaStream_t stream) {
  visit_norm_dtype("multi_tensor_scale_by", dtype, [&](auto tag) {
    using T = decltype(tag);
    plan(tensors, numel, count, [&](const NormLaunchArgs& args, int blocks, int64_t) {
      scale_by_kernel<T><<<blocks, kNormBlockSize, 0, stream>>>(args, factor);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void clip_norm_finish(const double* const* parts, int64_t count, double norm_type, double max_norm, double* total,
                      double* factor, cudaStream_t stream) {
  if (count < 0 || count > kClipMaxParts)
    throw std::logic_error("[clip_norm_finish] expected at most " + std::to_string(kClipMaxParts) +
                           " accumulators, got " + std::to_string(count));
  ClipFinishArgs args{};
  args.count = static_cast<int>(count);
  for (int64_t i = 0; i < count; ++i) args.parts[i] = parts[i];
  clip_norm_finish_kernel<<<1, 1, 0, stream>>>(args, norm_kind(norm_type), norm_type, max_norm, total, factor);
  CUDA_CHECK_LAUNCH();
}

int64_t multi_tensor_norm_launches(const int64_t* numel, int64_t count) {
  int64_t launches = 0;
  std::vector<const void*> none(static_cast<size_t>(count), nullptr);
  plan(none.data(), numel, count, [&](const NormLaunchArgs&, int, int64_t) { ++launches; });
  return launches > 0 ? launches + 1 : 0;
}

}  // namespace tandem::kernels::cuda
