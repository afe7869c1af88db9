// Tensor handle: construction, metadata, autograd accessors, copies between
// devices and dtypes, and printing.
#include "engine/tensor.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "kernels/common.h"
#include "kernels/convert.h"
#include "kernels/cpu/copy.h"
#include "kernels/cuda/copy.h"

namespace tandem {

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t e : shape) n *= e;
  return n;
}

void throw_dtype_mismatch(const char* what, DType expected, DType got) {
  throw std::invalid_argument(op_prefix(what) + "expected dtype " + std::string(dtype_name(expected)) + ", got " +
                              std::string(dtype_name(got)));
}

namespace {

void check_shape(const Shape& shape) {
  for (int64_t e : shape)
    if (e < 0) throw std::invalid_argument("[tensor] expected non-negative extents, got shape " + shape_str(shape));
}

[[noreturn]] void throw_undefined(const char* what) {
  throw std::invalid_argument(op_prefix(what) + "called on an undefined tensor");
}

// Copies nbytes between any two devices on the CUDA device's current stream; a copy
// into host memory waits for completion unless the caller asked not to and the
// destination is pinned.
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes, bool non_blocking,
                const std::shared_ptr<Storage>& dst_storage, const std::shared_ptr<Storage>& src_storage) {
  if (nbytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memmove(dst, src, nbytes);
    return;
  }
  if (dst_dev.is_cuda() && src_dev.is_cuda() && dst_dev.index != src_dev.index) {
    // Between two GPUs: copy on the source's stream once both devices' current streams
    // have reached this point, and let both continue only after the copy. Neither
    // buffer can then be read early or reused by its allocator while in flight.
    cuda::Stream src_stream = cuda::current_stream(src_dev.index);
    cuda::Stream dst_stream = cuda::current_stream(dst_dev.index);
    cuda::Event dst_ready;
    dst_ready.record(dst_stream);
    dst_ready.wait(src_stream);
    cuda::memcpy_async(dst, src, nbytes, src_stream);
    cuda::Event copied;
    copied.record(src_stream);
    copied.wait(dst_stream);
    return;
  }
  int index = dst_dev.is_cuda() ? dst_dev.index : src_dev.index;
  cuda::Stream stream = cuda::current_stream(index);
  cuda::memcpy_async(dst, src, nbytes, stream);
  // Pinned blocks freed while a copy is in flight must not be reused before it ends.
  if (src_dev.is_cpu() && src_storage->pinned()) cuda::pinned_record_stream(src_storage->data(), stream);
  if (dst_dev.is_cpu() && dst_storage->pinned()) cuda::pinned_record_stream(dst_storage->data(), stream);
  // Blocking unless asked otherwise and the host side is pinned (as PyTorch's copy_):
  // a device-to-host copy must land before the host reads it, and a blocking copy
  // from pinned memory must have read it before the caller may write it again (the
  // DMA reads pinned memory while the copy runs; pageable sources are staged first).
  if (dst_dev.is_cpu() && !(non_blocking && dst_storage->pinned())) stream.synchronize();
  if (src_dev.is_cpu() && src_storage->pinned() && !non_blocking) stream.synchronize();
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, const TensorOptions& options) {
  check_shape(shape);
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->numel = shape_numel(shape);
  impl->dtype = options.dtype;
  impl->storage =
      std::make_shared<Storage>(static_cast<size_t>(impl->numel) * dtype_size(options.dtype), options.device, options.pinned);
  Tensor t(std::move(impl));
  if (options.requires_grad) t.set_requires_grad(true);
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype, int64_t offset) {
  check_shape(shape);
  int64_t numel = shape_numel(shape);
  size_t end = static_cast<size_t>(offset + numel) * dtype_size(dtype);
  if (offset < 0 || end > storage->nbytes())
    throw std::invalid_argument("[from_storage] view of shape " + shape_str(shape) + " at offset " +
                                std::to_string(offset) + " needs " + std::to_string(end) + " bytes, storage has " +
                                std::to_string(storage->nbytes()));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = shape;
  impl->numel = numel;
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument("[from_vector] expected " + std::to_string(shape_numel(shape)) +
                                " values for shape " + shape_str(shape) + ", got " + std::to_string(values.size()));
  Tensor t = empty(shape, {.dtype = dtype_of<T>::value});
  if constexpr (std::is_same_v<T, bool>) {
    bool* p = static_cast<bool*>(t.data_ptr());
    for (size_t i = 0; i < values.size(); ++i) p[i] = values[i];
  } else {
    if (!values.empty()) std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(T));
  }
  return device.is_cpu() ? t : t.to(device);
}

template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<Half>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<BFloat16>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<bool>&, const Shape&, Device);

const Shape& Tensor::shape() const {
  if (!impl_) throw_undefined("shape");
  return impl_->shape;
}

int64_t Tensor::size(int64_t d) const { return shape()[static_cast<size_t>(normalize_dim("size", d, dim()))]; }

int64_t Tensor::numel() const {
  if (!impl_) throw_undefined("numel");
  return impl_->numel;
}

std::vector<int64_t> Tensor::strides() const {
  const Shape& s = shape();
  std::vector<int64_t> st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

DType Tensor::dtype() const {
  if (!impl_) throw_undefined("dtype");
  return impl_->dtype;
}

Device Tensor::device() const {
  if (!impl_) throw_undefined("device");
  return impl_->storage->device();
}

int64_t Tensor::offset() const {
  if (!impl_) throw_undefined("offset");
  return impl_->offset;
}

const std::shared_ptr<Storage>& Tensor::storage() const {
  if (!impl_) throw_undefined("storage");
  return impl_->storage;
}

void* Tensor::data_ptr() const {
  if (!impl_) throw_undefined("data_ptr");
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * static_cast<int64_t>(dtype_size(impl_->dtype));
}

// ---- autograd -----------------------------------------------------------------------------

bool Tensor::requires_grad() const { return impl_ && impl_->autograd && impl_->autograd->requires_grad; }

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  if (!impl_) throw_undefined("set_requires_grad");
  if (!is_leaf())
    throw std::invalid_argument(
        "[set_requires_grad] only leaf tensors can change requires_grad; use detach() to get a leaf from the "
        "output of an op");
  if (requires_grad && !is_floating(dtype()))
    throw std::invalid_argument("[set_requires_grad] only floating tensors can require grad, got dtype " +
                                std::string(dtype_name(dtype())));
  impl_->autograd_meta().requires_grad = requires_grad;
  return *this;
}

Tensor Tensor::grad() const {
  if (!impl_ || !impl_->autograd || !impl_->autograd->grad) return Tensor();
  return Tensor(impl_->autograd->grad);
}

void Tensor::set_grad(const Tensor& grad) {
  if (!impl_) throw_undefined("set_grad");
  if (grad.defined() && (grad.shape() != shape() || grad.dtype() != dtype() || !(grad.device() == device())))
    throw std::invalid_argument("[set_grad] expected a gradient of shape " + shape_str(shape()) + ", dtype " +
                                std::string(dtype_name(dtype())) + " on " + device().str() + ", got shape " +
                                shape_str(grad.shape()) + ", dtype " + std::string(dtype_name(grad.dtype())) +
                                " on " + grad.device().str());
  impl_->autograd_meta().grad = grad.impl_ptr();
}

const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<autograd::Node> kNone;
  if (!impl_ || !impl_->autograd) return kNone;
  return impl_->autograd->grad_fn;
}

uint32_t Tensor::output_nr() const { return impl_ && impl_->autograd ? impl_->autograd->output_nr : 0; }

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  autograd::backward({*this}, grad.defined() ? std::vector<Tensor>{grad} : std::vector<Tensor>{}, retain_graph);
}

int Tensor::register_post_accumulate_grad_hook(PostAccumulateGradHook hook) {
  if (!impl_) throw_undefined("register_post_accumulate_grad_hook");
  if (!is_leaf() || !requires_grad())
    throw std::invalid_argument("[register_post_accumulate_grad_hook] expected a leaf tensor that requires grad");
  AutogradMeta& meta = impl_->autograd_meta();
  int id = meta.next_hook_id++;
  meta.post_accumulate_hooks.emplace_back(id, std::move(hook));
  return id;
}

void Tensor::remove_hook(int id) {
  if (!impl_ || !impl_->autograd) return;
  auto& hooks = impl_->autograd->post_accumulate_hooks;
  std::erase_if(hooks, [id](const auto& h) { return h.first == id; });
}

Tensor Tensor::detach() const {
  if (!impl_) return Tensor();
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->shape = impl_->shape;
  impl->numel = impl_->numel;
  impl->offset = impl_->offset;
  impl->dtype = impl_->dtype;
  return Tensor(std::move(impl));
}

void Tensor::set_data(const Tensor& other) {
  if (!impl_ || !other.impl_) throw_undefined("set_data");
  impl_->storage = other.impl_->storage;
  impl_->shape = other.impl_->shape;
  impl_->numel = other.impl_->numel;
  impl_->offset = other.impl_->offset;
  impl_->dtype = other.impl_->dtype;
}

// ---- conversion -------------------------------------------------------------------------------

Tensor Tensor::to(Device device, bool non_blocking) const {
  if (!impl_) throw_undefined("to");
  if (device == this->device()) return *this;
  if (device.is_cuda()) cuda::check_device(device.index, "to");
  Tensor out = empty(shape(), {.dtype = dtype(), .device = device,
                               .pinned = non_blocking && device.is_cpu() && this->device().is_cuda()});
  copy_bytes(out.data_ptr(), device, data_ptr(), this->device(), nbytes(), non_blocking, out.storage(), storage());
  Device from = this->device();
  autograd::record("to", {*this}, {out}, [from](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].to(from)}; });
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (!impl_) throw_undefined("to");
  if (dtype == this->dtype()) return *this;
  Tensor out = empty(shape(), {.dtype = dtype, .device = device()});
  dispatch_device(
      "to", device(), [&] { kernels::cpu::cast(this->dtype(), data_ptr(), dtype, out.data_ptr(), numel()); },
      [&](auto) {
        kernels::cuda::cast(this->dtype(), data_ptr(), dtype, out.data_ptr(), numel(), cuda_stream(device()));
      });
  DType from = this->dtype();
  if (is_floating(dtype) && is_floating(from)) {
    autograd::record("to", {*this}, {out}, [from](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].to(from)}; });
  }
  return out;
}

Tensor Tensor::clone() const {
  if (!impl_) throw_undefined("clone");
  Tensor out = empty(shape(), {.dtype = dtype(), .device = device()});
  {
    autograd::NoGradGuard no_grad;
    out.copy_(*this);
  }
  autograd::record("clone", {*this}, {out}, [](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; });
  return out;
}

Tensor& Tensor::copy_(const Tensor& src, bool non_blocking) {
  if (!impl_) throw_undefined("copy_");
  check_defined("copy_", src, "src");
  if (src.numel() != numel())
    throw std::invalid_argument("[copy_] expected a source of " + std::to_string(numel()) + " elements (shape " +
                                shape_str(shape()) + "), got shape " + shape_str(src.shape()));
  autograd::NoGradGuard no_grad;
  Tensor s = src;
  if (s.dtype() != dtype()) {
    if (s.device() == device()) {
      dispatch_device(
          "copy_", device(), [&] { kernels::cpu::cast(s.dtype(), s.data_ptr(), dtype(), data_ptr(), numel()); },
          [&](auto) {
            kernels::cuda::cast(s.dtype(), s.data_ptr(), dtype(), data_ptr(), numel(), cuda_stream(device()));
          });
      return *this;
    }
    s = s.to(dtype());
  }
  if (s.device() == device()) {
    if (s.data_ptr() == data_ptr()) return *this;
    dispatch_device(
        "copy_", device(), [&] { std::memmove(data_ptr(), s.data_ptr(), nbytes()); },
        [&](auto) { kernels::cuda::cast(dtype(), s.data_ptr(), dtype(), data_ptr(), numel(), cuda_stream(device())); });
    return *this;
  }
  copy_bytes(data_ptr(), device(), s.data_ptr(), s.device(), nbytes(), non_blocking, storage(), s.storage());
  return *this;
}

Tensor& Tensor::fill_(double value) {
  if (!impl_) throw_undefined("fill_");
  dispatch_device(
      "fill_", device(), [&] { kernels::cpu::fill(dtype(), data_ptr(), value, numel()); },
      [&](auto) { kernels::cuda::fill(dtype(), data_ptr(), value, numel(), cuda_stream(device())); });
  return *this;
}

double Tensor::item() const {
  if (!impl_) throw_undefined("item");
  if (numel() != 1)
    throw std::invalid_argument("[item] expected a tensor with one element, got shape " + shape_str(shape()));
  Tensor host = detach().cpu();
  double v = 0;
  kernels::visit_all(dtype(), [&](auto tag) {
    using T = decltype(tag);
    v = kernels::convert<double>(*static_cast<const T*>(host.data_ptr()));
  });
  return v;
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  if (!impl_) throw_undefined("to_vector");
  Tensor host = detach().cpu();
  std::vector<T> out(static_cast<size_t>(numel()));
  kernels::visit_all(dtype(), [&](auto tag) {
    using S = decltype(tag);
    const S* p = static_cast<const S*>(host.data_ptr());
    for (size_t i = 0; i < out.size(); ++i) out[i] = kernels::convert<T>(p[i]);
  });
  return out;
}

template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;

std::string Tensor::str() const {
  if (!impl_) return "Tensor(undefined)";
  std::ostringstream os;
  os << "Tensor(" << dtype_name(dtype()) << ", " << device().str() << ", " << shape_str(shape());
  if (requires_grad()) os << ", requires_grad";
  os << ") [";
  const int64_t shown = numel() < 8 ? numel() : 8;
  std::vector<double> v = from_storage(storage(), {shown}, dtype(), offset()).to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  if (static_cast<int64_t>(v.size()) < numel()) os << ", ...";
  os << "]";
  return os.str();
}

}  // namespace tandem
