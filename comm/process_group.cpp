// ProcessGroup basics shared by every backend: the constructor's checks, op names,
// the debug switch from the environment, and the helpers of comm/collective_util.h
// (argument checks, coalescing buffers, the CPU reduction).
#include "comm/process_group.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "comm/collective_util.h"
#include "engine/autograd.h"
#include "kernels/common.h"

namespace tandem::comm {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

bool debug_from_env() {
  const char* v = std::getenv("TANDEM_DISTRIBUTED_DEBUG");
  if (v == nullptr) return false;
  std::string s(v);
  return s == "1" || s == "true" || s == "on" || s == "ON" || s == "TRUE";
}

ProcessGroup::ProcessGroup(int rank, int size, ProcessGroupOptions options)
    : rank_(rank), size_(size), options_(options) {
  if (size < 1) throw std::invalid_argument("[process_group] expected a world size >= 1, got " + std::to_string(size));
  if (rank < 0 || rank >= size)
    throw std::invalid_argument("[process_group] expected a rank in [0, " + std::to_string(size) + "), got " +
                                std::to_string(rank));
  if (options.timeout.count() <= 0)
    throw std::invalid_argument("[process_group] expected a positive timeout, got " +
                                std::to_string(options.timeout.count()) + " ms");
}

// ---- argument checks -------------------------------------------------------------------

namespace {

std::string prefix(const char* op) { return std::string("[") + op + "] "; }

std::string indexed(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

void check_defined_at(const char* op, const Tensor& t, const std::string& what) {
  if (!t.defined()) throw std::invalid_argument(prefix(op) + "expected " + what + " to be a defined tensor, got an undefined one");
}

// `t` (called `what`) must match `ref` (called `ref_name`) in device and dtype.
void check_like(const char* op, const Tensor& t, const std::string& what, const Tensor& ref, const std::string& ref_name) {
  if (t.device() != ref.device())
    throw std::invalid_argument(prefix(op) + "expected " + what + " on " + ref.device().str() + " like " + ref_name +
                                ", got " + t.device().str());
  if (t.dtype() != ref.dtype())
    throw std::invalid_argument(prefix(op) + "expected " + what + " of dtype " + std::string(dtype_name(ref.dtype())) +
                                " like " + ref_name + ", got " + std::string(dtype_name(t.dtype())));
}

// `list` (called `name`) must hold one tensor per rank, each shaped like `ref`.
void check_per_rank_list(const char* op, const std::vector<Tensor>& list, const char* name, const Tensor& ref,
                         const char* ref_name, int size) {
  if (static_cast<int>(list.size()) != size)
    throw std::invalid_argument(prefix(op) + "expected " + std::to_string(size) + " " + name +
                                " (one per rank), got " + std::to_string(list.size()));
  for (size_t i = 0; i < list.size(); ++i) {
    check_defined_at(op, list[i], indexed(name, i));
    check_like(op, list[i], indexed(name, i), ref, ref_name);
    if (list[i].shape() != ref.shape())
      throw std::invalid_argument(prefix(op) + "expected " + indexed(name, i) + " of shape " + shape_str(ref.shape()) +
                                  " (the " + ref_name + "'s shape), got " + shape_str(list[i].shape()));
  }
}

}  // namespace

void check_tensor_list(const char* op, const std::vector<Tensor>& tensors, const char* name) {
  if (tensors.empty()) throw std::invalid_argument(prefix(op) + "expected at least one tensor in " + name + ", got an empty list");
  for (size_t i = 0; i < tensors.size(); ++i) check_defined_at(op, tensors[i], indexed(name, i));
  const std::string first = indexed(name, 0);
  for (size_t i = 1; i < tensors.size(); ++i) check_like(op, tensors[i], indexed(name, i), tensors[0], first);
}

void check_reduce_op(const char* op, ReduceOp reduce, DType dtype) {
  if (reduce == ReduceOp::kAvg && !is_floating(dtype))
    throw std::invalid_argument(prefix(op) + "expected a floating dtype for avg, got " + std::string(dtype_name(dtype)) +
                                " (use sum and divide)");
}

void check_root(const char* op, int root, int size) {
  if (root < 0 || root >= size)
    throw std::invalid_argument(prefix(op) + "expected a root in [0, " + std::to_string(size) + "), got " +
                                std::to_string(root));
}

void check_all_reduce_args(const std::vector<Tensor>& tensors, ReduceOp reduce) {
  check_tensor_list("all_reduce", tensors);
  check_reduce_op("all_reduce", reduce, tensors[0].dtype());
}

void check_broadcast_args(const std::vector<Tensor>& tensors, int root, int size) {
  check_tensor_list("broadcast", tensors);
  check_root("broadcast", root, size);
}

void check_all_gather_args(const std::vector<Tensor>& outputs, const Tensor& input, int size) {
  check_defined_at("all_gather", input, "input");
  check_per_rank_list("all_gather", outputs, "outputs", input, "input", size);
}

void check_reduce_scatter_args(const Tensor& output, const std::vector<Tensor>& inputs, ReduceOp reduce, int size) {
  check_defined_at("reduce_scatter", output, "output");
  check_per_rank_list("reduce_scatter", inputs, "inputs", output, "output", size);
  check_reduce_op("reduce_scatter", reduce, output.dtype());
}

int64_t total_numel(const std::vector<Tensor>& tensors) {
  int64_t n = 0;
  for (const Tensor& t : tensors) n += t.numel();
  return n;
}

// ---- coalescing ------------------------------------------------------------------------

Tensor flat_slice(const Tensor& t, int64_t start, int64_t length) {
  if (start < 0 || length < 0 || start + length > t.numel())
    throw std::invalid_argument("[flat_slice] expected a range within [0, " + std::to_string(t.numel()) + "), got [" +
                                std::to_string(start) + ", " + std::to_string(start + length) + ")");
  return Tensor::from_storage(t.storage(), {length}, t.dtype(), t.offset() + start);
}

Tensor flatten_tensors(const std::vector<Tensor>& tensors) {
  check_tensor_list("flatten_tensors", tensors);
  autograd::NoGradGuard no_grad;
  Tensor flat = Tensor::empty({total_numel(tensors)}, {.dtype = tensors[0].dtype(), .device = tensors[0].device()});
  int64_t at = 0;
  for (const Tensor& t : tensors) {
    flat_slice(flat, at, t.numel()).copy_(t);
    at += t.numel();
  }
  return flat;
}

void unflatten_into(const Tensor& flat, const std::vector<Tensor>& tensors) {
  check_tensor_list("unflatten_into", tensors);
  if (!flat.defined() || flat.numel() != total_numel(tensors))
    throw std::invalid_argument("[unflatten_into] expected a flat tensor of " + std::to_string(total_numel(tensors)) +
                                " elements, got " + (flat.defined() ? std::to_string(flat.numel()) : "an undefined tensor"));
  autograd::NoGradGuard no_grad;
  int64_t at = 0;
  for (const Tensor& t : tensors) {
    Tensor dst = t;  // copy_ is non-const; the handle shares t's data
    dst.copy_(flat_slice(flat, at, t.numel()));
    at += t.numel();
  }
}

// ---- CPU reduction ---------------------------------------------------------------------

namespace {

template <class T>
T combine(T a, T b, ReduceOp op) {
  if constexpr (std::is_same_v<T, bool>) {
    return op == ReduceOp::kMin ? (a && b) : (a || b);
  } else if constexpr (std::is_integral_v<T>) {
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg: {
        // Unsigned arithmetic wraps by definition; signed overflow would be undefined.
        using U = std::make_unsigned_t<T>;
        return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
      }
      case ReduceOp::kMax: return a > b ? a : b;
      case ReduceOp::kMin: return a < b ? a : b;
    }
    return a;
  } else {
    using C = kernels::compute_t<T>;
    C x = static_cast<C>(a), y = static_cast<C>(b), r = x;
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg: r = x + y; break;
      case ReduceOp::kMax: r = (std::isnan(x) || x > y) ? x : y; break;  // a NaN y wins too: x > NaN is false
      case ReduceOp::kMin: r = (std::isnan(x) || x < y) ? x : y; break;
    }
    return static_cast<T>(r);
  }
}

}  // namespace

void reduce_into(void* dst, const void* src, int64_t n, DType dtype, ReduceOp op) {
  if (n <= 0) return;
  kernels::visit_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* d = static_cast<T*>(dst);
    const T* s = static_cast<const T*>(src);
    // Switching on the op outside the loop lets the sum, the hot case, vectorise.
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (op == ReduceOp::kSum || op == ReduceOp::kAvg) {
        for (int64_t i = 0; i < n; ++i) d[i] += s[i];
        return;
      }
    }
    for (int64_t i = 0; i < n; ++i) d[i] = combine<T>(d[i], s[i], op);
  });
}

void reduce_into(const Tensor& dst, const Tensor& src, ReduceOp op) {
  if (!dst.defined() || !src.defined())
    throw std::invalid_argument("[reduce_into] expected defined tensors, got an undefined one");
  if (!dst.is_cpu() || !src.is_cpu())
    throw std::invalid_argument("[reduce_into] expected CPU tensors, got " + dst.device().str() + " and " +
                                src.device().str());
  if (dst.dtype() != src.dtype() || dst.numel() != src.numel())
    throw std::invalid_argument("[reduce_into] expected tensors of one dtype and numel, got " +
                                std::string(dtype_name(dst.dtype())) + " " + shape_str(dst.shape()) + " and " +
                                std::string(dtype_name(src.dtype())) + " " + shape_str(src.shape()));
  reduce_into(dst.data_ptr(), src.data_ptr(), dst.numel(), dst.dtype(), op);
}

void divide_in_place(void* data, int64_t n, DType dtype, int64_t divisor) {
  if (n <= 0) return;
  const bool floating = kernels::visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = kernels::compute_t<T>;
    T* d = static_cast<T*>(data);
    const C div = static_cast<C>(divisor);
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(static_cast<C>(d[i]) / div);
  });
  if (!floating)
    throw std::invalid_argument("[divide_in_place] expected a floating dtype, got " + std::string(dtype_name(dtype)));
}

}  // namespace tandem::comm
