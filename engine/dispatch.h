// Shared argument checks and device dispatch helpers for op implementations
// (engine/ops/*.cpp). Errors follow one pattern: "[op] expected ..., got ...".
#pragma once

#include <initializer_list>
#include <string>

#include "engine/cuda/runtime.h"
#include "engine/tensor.h"
#include "kernels/cuda/stream.h"
#include "tandem/config.h"

namespace tandem {

/// Throws std::invalid_argument: "[op] needs CUDA, but this build of Tandem has none".
[[noreturn]] void throw_no_cuda(const char* op);
/// Throws std::invalid_argument naming the op, device and dtype that have no implementation.
[[noreturn]] void throw_unsupported(const char* op, Device device, DType dtype);

/// The current CUDA stream of `device` (the handle kernels are launched on).
cudaStream_t cuda_stream(Device device);

/// Throws unless `t` is defined: "[op] argument 'name' is an undefined tensor".
void check_defined(const char* op, const Tensor& t, const char* name = "input");
/// Throws naming both devices unless a and b are on the same device.
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
/// Throws naming both dtypes unless a and b have the same dtype.
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
/// Throws naming the allowed dtypes unless t.dtype() is one of them.
void check_dtype(const char* op, const Tensor& t, std::initializer_list<DType> allowed, const char* name = "input");
/// Floating types (f32, f64, f16, bf16).
void check_floating(const char* op, const Tensor& t, const char* name = "input");
/// Throws unless t has `ndim` dims, naming the expected layout, e.g. "(N, C)".
void check_dim(const char* op, const Tensor& t, int64_t ndim, const char* layout = nullptr);
/// Maps a possibly negative dim into [0, ndim); throws naming the valid range otherwise.
int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim);

/// "[op] " prefix helper for building messages.
std::string op_prefix(const char* op);

/// Runs `cpu` for a CPU device and `cuda` for a CUDA device, with that device made
/// current (kernels launch on the current device). In a build without CUDA the
/// CUDA branch is a discarded statement (never instantiated, its kernels never
/// linked) and a CUDA device throws. `cuda` must be a generic lambda,
/// `[&](auto) { ... }`, so that it is a template that is only instantiated here.
template <class CpuFn, class CudaFn>
void dispatch_device(const char* op, Device device, CpuFn&& cpu, CudaFn&& cuda) {
  if (device.is_cpu()) {
    cpu();
  } else {
    if constexpr (kBuiltWithCuda) {
      cuda::DeviceGuard guard(device.index);
      cuda(0);
    } else {
      (void)cuda;
      throw_no_cuda(op);
    }
  }
}

}  // namespace tandem
