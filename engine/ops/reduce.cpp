// Reductions over all elements or a set of dims. Each run of consecutive dims is
// one (outer, n, inner) kernel call; the data layout of the result does not depend
// on keepdim, so keepdim only changes the shape recorded on the output.
#include "engine/ops/reduce.h"

#include <algorithm>
#include <stdexcept>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/reduce.h"
#include "kernels/cuda/reduce.h"

namespace tandem {
namespace {

// A reshape that shares storage and records nothing (callers handle autograd).
Tensor raw_view(const Tensor& x, const Shape& shape) {
  return Tensor::from_storage(x.storage(), shape, x.dtype(), x.offset());
}

std::vector<int64_t> normalize_dims(const char* op, const std::vector<int64_t>& dims, int64_t ndim) {
  std::vector<int64_t> out;
  for (int64_t d : dims) out.push_back(normalize_dim(op, d, ndim));
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())
    throw std::invalid_argument(op_prefix(op) + "dim appears more than once in the list of dims");
  return out;
}

Shape keepdim_shape(const Shape& shape, const std::vector<int64_t>& dims) {
  Shape out = shape;
  for (int64_t d : dims) out[static_cast<size_t>(d)] = 1;
  return out;
}

Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims, bool keepdim) {
  if (keepdim) return keepdim_shape(shape, dims);
  Shape out;
  for (size_t i = 0; i < shape.size(); ++i)
    if (!std::binary_search(dims.begin(), dims.end(), static_cast<int64_t>(i))) out.push_back(shape[i]);
  return out;
}

// Sums x over `dims` (sorted, unique) times `scale`, into a tensor of `out_shape`.
Tensor sum_kernel(const char* op, const Tensor& x, const std::vector<int64_t>& dims, const Shape& out_shape,
                  double scale) {
  DType out_dtype = is_floating(x.dtype()) ? x.dtype() : DType::kI64;
  Tensor cur = x;
  Shape cur_shape = x.shape();
  // Runs of consecutive dims, reduced from the last run to the first.
  size_t end = dims.size();
  bool first = true;
  if (dims.empty()) return raw_view(x.to(out_dtype).clone(), out_shape);
  while (end > 0) {
    size_t begin = end - 1;
    while (begin > 0 && dims[begin - 1] == dims[begin] - 1) --begin;
    int64_t d0 = dims[begin], d1 = dims[end - 1];
    int64_t outer = 1, n = 1, inner = 1;
    for (int64_t i = 0; i < static_cast<int64_t>(cur_shape.size()); ++i) {
      if (i < d0) outer *= cur_shape[i];
      else if (i <= d1) n *= cur_shape[i];
      else inner *= cur_shape[i];
    }
    Shape next_shape = cur_shape;
    for (int64_t i = d0; i <= d1; ++i) next_shape[i] = 1;
    Tensor next = Tensor::empty(next_shape, {.dtype = out_dtype, .device = x.device()});
    double s = first ? scale : 1.0;
    dispatch_device(
        op, x.device(),
        [&] { kernels::cpu::sum(cur.dtype(), next.data_ptr(), cur.data_ptr(), outer, n, inner, s); },
        [&](auto) {
          size_t ws_bytes = kernels::cuda::sum_workspace_bytes(cur.dtype(), outer, n, inner);
          Tensor ws = ws_bytes ? Tensor::empty({static_cast<int64_t>(ws_bytes)}, {.dtype = DType::kU8, .device = x.device()})
                               : Tensor();
          kernels::cuda::sum(cur.dtype(), next.data_ptr(), cur.data_ptr(), outer, n, inner, s,
                             ws_bytes ? ws.data_ptr() : nullptr, cuda_stream(x.device()));
        });
    cur = next;
    cur_shape = next_shape;
    first = false;
    end = begin;
  }
  return raw_view(cur, out_shape);
}

// Gradient of a reduction to `out_shape` over `dims`: broadcast back to `in_shape`.
Tensor expand_grad(const Tensor& g, const Shape& in_shape, const std::vector<int64_t>& dims) {
  return broadcast_to(raw_view(g, keepdim_shape(in_shape, dims)), in_shape);
}

std::vector<int64_t> all_dims(int64_t ndim) {
  std::vector<int64_t> d(static_cast<size_t>(ndim));
  for (int64_t i = 0; i < ndim; ++i) d[static_cast<size_t>(i)] = i;
  return d;
}

Tensor sum_impl(const char* op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, bool mean) {
  check_defined(op, x);
  if (mean) check_floating(op, x);
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[static_cast<size_t>(d)];
  double scale = mean ? 1.0 / static_cast<double>(count == 0 ? 1 : count) : 1.0;
  if (mean && count == 0) scale = std::numeric_limits<double>::quiet_NaN();  // mean of nothing, as PyTorch
  Shape out_shape = reduced_shape(x.shape(), dims, keepdim);
  Tensor out = sum_kernel(op, x, dims, out_shape, scale);
  if (is_floating(x.dtype())) {
    autograd::record(op, {x}, {out}, [shape = x.shape(), dims, scale](std::vector<Tensor>& g) {
      Tensor gx = expand_grad(g[0], shape, dims);
      return std::vector<Tensor>{scale == 1.0 ? gx : gx * scale};
    });
  }
  return out;
}

}  // namespace

// Under autocast, sum and mean of f16/bf16 inputs are taken in f32 and return f32 (a
// half result would round a large sum and overflow f16 at 65504).
Tensor sum(const Tensor& x) {
  check_defined("sum", x);
  const Tensor xs = autocast_active() ? autocast_to_f32(x) : x;
  return sum_impl("sum", xs, all_dims(xs.dim()), false, false);
}

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  check_defined("sum", x);
  const Tensor xs = autocast_active() ? autocast_to_f32(x) : x;
  return sum_impl("sum", xs, normalize_dims("sum", dims, xs.dim()), keepdim, false);
}

Tensor mean(const Tensor& x) {
  check_defined("mean", x);
  const Tensor xs = autocast_active() ? autocast_to_f32(x) : x;
  return sum_impl("mean", xs, all_dims(xs.dim()), false, true);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  check_defined("mean", x);
  const Tensor xs = autocast_active() ? autocast_to_f32(x) : x;
  return sum_impl("mean", xs, normalize_dims("mean", dims, xs.dim()), keepdim, true);
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  check_defined("sum_to", x);
  if (x.shape() == shape) return x;
  const Shape& xs = x.shape();
  if (shape.size() > xs.size())
    throw std::invalid_argument("[sum_to] cannot sum shape " + shape_str(xs) + " to the larger " + shape_str(shape));
  size_t lead = xs.size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (i < lead) {
      dims.push_back(static_cast<int64_t>(i));
    } else if (shape[i - lead] == 1 && xs[i] != 1) {
      dims.push_back(static_cast<int64_t>(i));
    } else if (shape[i - lead] != xs[i]) {
      throw std::invalid_argument("[sum_to] shape " + shape_str(shape) + " does not broadcast to " + shape_str(xs));
    }
  }
  Tensor out = sum_kernel("sum_to", x, dims, shape, 1.0);
  autograd::record("sum_to", {x}, {out}, [xs](std::vector<Tensor>& g) { return std::vector<Tensor>{broadcast_to(g[0], xs)}; });
  return out;
}

MaxResult max(const Tensor& x, int64_t dim, bool keepdim) {
  check_defined("max", x);
  if (x.dim() == 0) return {x, zeros({}, {.dtype = DType::kI64, .device = x.device()})};
  int64_t d = normalize_dim("max", dim, x.dim());
  const Shape& s = x.shape();
  if (s[static_cast<size_t>(d)] == 0)
    throw std::invalid_argument("[max] cannot take the max over dim " + std::to_string(dim) +
                                " of extent 0 (shape " + shape_str(s) + ")");
  int64_t outer = 1, inner = 1, n = s[static_cast<size_t>(d)];
  for (int64_t i = 0; i < d; ++i) outer *= s[static_cast<size_t>(i)];
  for (int64_t i = d + 1; i < x.dim(); ++i) inner *= s[static_cast<size_t>(i)];
  Shape out_shape = reduced_shape(s, {d}, keepdim);
  Tensor values = Tensor::empty(out_shape, {.dtype = x.dtype(), .device = x.device()});
  Tensor indices = Tensor::empty(out_shape, {.dtype = DType::kI64, .device = x.device()});
  dispatch_device(
      "max", x.device(),
      [&] {
        kernels::cpu::max(x.dtype(), values.data_ptr(), indices.data<int64_t>(), x.data_ptr(), outer, n, inner);
      },
      [&](auto) {
        kernels::cuda::max(x.dtype(), values.data_ptr(), indices.data<int64_t>(), x.data_ptr(), outer, n, inner,
                           cuda_stream(x.device()));
      });
  if (is_floating(x.dtype())) {
    // The gradient goes to the position of the maximum: a one-hot mask along `dim`
    // built by comparing a range with the saved indices.
    autograd::record("max", {x}, {values},
                     [s, d, outer, n, inner, idx = indices.detach()](std::vector<Tensor>& g) {
                       Tensor range = raw_view(arange(n, {.dtype = DType::kI64, .device = g[0].device()}), {1, n, 1});
                       Tensor hit = eq(range, raw_view(idx, {outer, 1, inner})).to(g[0].dtype());
                       Tensor gx = hit * raw_view(g[0], {outer, 1, inner});
                       return std::vector<Tensor>{raw_view(gx, s)};
                     });
  }
  return {values, indices};
}

Tensor max(const Tensor& x) {
  check_defined("max", x);
  if (x.numel() == 0) throw std::invalid_argument("[max] cannot take the max of an empty tensor");
  Tensor flat = raw_view(x.detach(), {x.numel()});
  MaxResult r = max(flat, 0, false);
  Tensor out = r.values;
  if (is_floating(x.dtype())) {
    autograd::record("max", {x}, {out}, [s = x.shape(), n = x.numel(), idx = r.indices](std::vector<Tensor>& g) {
      Tensor range = arange(n, {.dtype = DType::kI64, .device = g[0].device()});
      Tensor hit = eq(range, raw_view(idx, {1})).to(g[0].dtype());
      return std::vector<Tensor>{raw_view(hit * raw_view(g[0], {1}), s)};
    });
  }
  return out;
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  autograd::NoGradGuard no_grad;
  return max(x, dim, keepdim).indices;
}

Tensor Tensor::sum() const { return tandem::sum(*this); }
Tensor Tensor::sum(int64_t dim, bool keepdim) const { return tandem::sum(*this, {dim}, keepdim); }
Tensor Tensor::mean() const { return tandem::mean(*this); }
Tensor Tensor::mean(int64_t dim, bool keepdim) const { return tandem::mean(*this, {dim}, keepdim); }
Tensor Tensor::argmax(int64_t dim, bool keepdim) const { return tandem::argmax(*this, dim, keepdim); }

}  // namespace tandem
