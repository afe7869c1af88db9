// Argument checks shared by every op, with messages that name the op, what was
// expected and what was received.
#include "engine/dispatch.h"

#include <sstream>
#include <stdexcept>

#include "engine/cuda/runtime.h"

namespace tandem {

std::string op_prefix(const char* op) { return std::string("[") + op + "] "; }

void throw_no_cuda(const char* op) {
  throw std::invalid_argument(op_prefix(op) + "got a CUDA tensor, but this build of Tandem has no CUDA (TANDEM_CUDA=OFF)");
}

void throw_unsupported(const char* op, Device device, DType dtype) {
  throw std::invalid_argument(op_prefix(op) + "not implemented for dtype " + std::string(dtype_name(dtype)) +
                              " on device " + device.str());
}

cudaStream_t cuda_stream(Device device) { return cuda::current_stream(device.index).handle(); }

void check_defined(const char* op, const Tensor& t, const char* name) {
  if (!t.defined()) throw std::invalid_argument(op_prefix(op) + "argument '" + name + "' is an undefined tensor");
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  if (!(a.device() == b.device()))
    throw std::invalid_argument(op_prefix(op) + "expected tensors on the same device, got " + a.device().str() +
                                " and " + b.device().str());
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype())
    throw std::invalid_argument(op_prefix(op) + "expected tensors of the same dtype, got " +
                                std::string(dtype_name(a.dtype())) + " and " + std::string(dtype_name(b.dtype())));
}

void check_dtype(const char* op, const Tensor& t, std::initializer_list<DType> allowed, const char* name) {
  for (DType d : allowed)
    if (t.dtype() == d) return;
  std::ostringstream msg;
  msg << op_prefix(op) << "expected '" << name << "' of dtype ";
  bool first = true;
  for (DType d : allowed) {
    msg << (first ? "" : " or ") << dtype_name(d);
    first = false;
  }
  msg << ", got " << dtype_name(t.dtype());
  throw std::invalid_argument(msg.str());
}

void check_floating(const char* op, const Tensor& t, const char* name) {
  if (!is_floating(t.dtype()))
    throw std::invalid_argument(op_prefix(op) + "expected '" + name +
                                "' of a floating dtype (float32, float64, float16, bfloat16), got " +
                                std::string(dtype_name(t.dtype())));
}

void check_dim(const char* op, const Tensor& t, int64_t ndim, const char* layout) {
  if (t.dim() != ndim) {
    std::string what = std::to_string(ndim) + " dims";
    if (layout) what += std::string(" ") + layout;
    throw std::invalid_argument(op_prefix(op) + "expected input of " + what + ", got shape " + shape_str(t.shape()));
  }
}

int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  if (dim < lo || dim > hi)
    throw std::invalid_argument(op_prefix(op) + "dim " + std::to_string(dim) + " out of range [" + std::to_string(lo) +
                                ", " + std::to_string(hi) + "] for a tensor of " + std::to_string(ndim) + " dims");
  return dim < 0 ? dim + (ndim == 0 ? 1 : ndim) : dim;
}

}  // namespace tandem
