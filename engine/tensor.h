// Tensor: a cheap value handle (MLX-style) around shared state: storage, shape,
// element offset, dtype and autograd metadata. Tensors are contiguous; views
// (reshape, narrow on dim 0, flat views into a bucket) share storage at an offset.
// Copying a Tensor copies the handle, not the data.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/storage.h"
#include "kernels/dtype.h"
#include "kernels/half.h"

namespace tandem {

using Shape = std::vector<int64_t>;

/// "[2, 3]"
std::string shape_str(const Shape& shape);
/// Product of the extents (1 for a scalar).
int64_t shape_numel(const Shape& shape);

namespace autograd {
class Node;
}

class Tensor;
struct TensorImpl;
using PostAccumulateGradHook = std::function<void(Tensor& leaf)>;

/// Maps a C++ element type to its DType.
template <class T>
struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::kF32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::kF64; };
template <> struct dtype_of<Half> { static constexpr DType value = DType::kF16; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::kBF16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::kI32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::kI64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::kU8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::kBool; };

/// Options for factories: dtype, device, whether the result requires grad, and
/// whether host memory should be pinned.
struct TensorOptions {
  DType dtype = DType::kF32;
  Device device = Device::cpu();
  bool requires_grad = false;
  bool pinned = false;
};

class Tensor {
 public:
  /// An undefined tensor (no storage); most operations reject it.
  Tensor() = default;
  /// Uninitialised contiguous tensor.
  static Tensor empty(const Shape& shape, const TensorOptions& options = {});
  /// A tensor over existing storage, starting `offset` elements in.
  static Tensor from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype, int64_t offset = 0);
  /// Copies host values into a new tensor of the given shape (and, after, device).
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  /// Extent of dim `d`; negative `d` counts from the end.
  int64_t size(int64_t d) const;
  int64_t numel() const;
  /// Row-major strides in elements (tensors are contiguous).
  std::vector<int64_t> strides() const;
  DType dtype() const;
  Device device() const;
  bool is_cuda() const { return device().is_cuda(); }
  bool is_cpu() const { return device().is_cpu(); }
  /// Element offset into storage.
  int64_t offset() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  const std::shared_ptr<Storage>& storage() const;
  void* data_ptr() const;
  /// Typed pointer; throws if T does not match dtype().
  template <class T>
  T* data() const;
  /// True when both handles refer to the same tensor (not merely equal values).
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }
  TensorImpl* impl() const { return impl_.get(); }

  // ---- autograd ------------------------------------------------------------------
  bool requires_grad() const;
  /// Marks a leaf as needing a gradient. Returns *this for chaining.
  Tensor& set_requires_grad(bool requires_grad);
  /// Accumulated gradient of a leaf (undefined until the first backward).
  Tensor grad() const;
  void set_grad(const Tensor& grad);
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  uint32_t output_nr() const;
  bool is_leaf() const { return grad_fn() == nullptr; }
  /// Back-propagates from this tensor. `grad` may be omitted for a one-element tensor.
  /// Saved tensors are freed as the graph runs unless `retain_graph`.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  /// Adds a hook that runs after a gradient has been accumulated into this leaf's
  /// `.grad` (DDP launches bucket all-reduces from these). Returns an id for remove_hook.
  int register_post_accumulate_grad_hook(PostAccumulateGradHook hook);
  void remove_hook(int id);
  /// A tensor sharing this one's data, with no autograd history.
  Tensor detach() const;
  /// Replaces this tensor's storage, shape and dtype by `other`'s, keeping its
  /// identity and autograd flags (how Module::to moves parameters in place).
  void set_data(const Tensor& other);

  // ---- conversion, copying -------------------------------------------------------
  Tensor to(Device device, bool non_blocking = false) const;
  Tensor to(DType dtype) const;
  Tensor cpu() const { return to(Device::cpu()); }
  /// A new tensor with a copy of the data (differentiable).
  Tensor clone() const;
  /// Copies `src` into this tensor in place (shapes must match in numel; dtype and
  /// device are converted). Not recorded by autograd.
  Tensor& copy_(const Tensor& src, bool non_blocking = false);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  /// The value of a one-element tensor, converted to double.
  double item() const;
  template <class T>
  T item() const { return static_cast<T>(item()); }
  /// The elements as a host vector of T (converted from the tensor's dtype).
  template <class T>
  std::vector<T> to_vector() const;
  /// Human-readable form: dtype, device, shape and the first values.
  std::string str() const;

  // ---- shorthands for common ops (defined with their op families) ---------------
  Tensor reshape(const Shape& shape) const;
  Tensor view(const Shape& shape) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor sum() const;
  Tensor sum(int64_t dim, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(int64_t dim, bool keepdim = false) const;
  Tensor argmax(int64_t dim, bool keepdim = false) const;
  Tensor matmul(const Tensor& other) const;
  Tensor exp() const;
  Tensor log() const;
  Tensor relu() const;

  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

/// Autograd state of a tensor, created when it first matters.
struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
  uint32_t output_nr = 0;
  std::weak_ptr<autograd::Node> grad_accumulator;  // leaves only; weak to avoid a cycle
  std::vector<std::pair<int, PostAccumulateGradHook>> post_accumulate_hooks;
  int next_hook_id = 0;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  int64_t numel = 0;
  int64_t offset = 0;  // in elements
  DType dtype = DType::kF32;
  std::unique_ptr<AutogradMeta> autograd;

  AutogradMeta& autograd_meta() {
    if (!autograd) autograd = std::make_unique<AutogradMeta>();
    return *autograd;
  }
};

// ---- template definitions ------------------------------------------------------------

void throw_dtype_mismatch(const char* what, DType expected, DType got);

template <class T>
T* Tensor::data() const {
  if (dtype_of<T>::value != dtype()) throw_dtype_mismatch("data<T>()", dtype_of<T>::value, dtype());
  return static_cast<T*>(data_ptr());
}

}  // namespace tandem
