// Shape ops. reshape/view/flatten/squeeze/unsqueeze and dim-0 narrow are views that
// share storage (tensors are contiguous, so only an offset and a shape change);
// transpose/permute, inner-dim narrow and cat copy through the permute and 2-D block
// copy kernels. Backward rules are shape ops themselves.
#include "engine/ops/shape.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/factory.h"
#include "kernels/cpu/shape.h"
#include "kernels/cuda/shape.h"

namespace tandem {
namespace {

std::string dims_str(const std::vector<int64_t>& dims) { return shape_str(dims); }

/// Product of shape[begin, end).
int64_t extent_product(const Shape& shape, int64_t begin, int64_t end) {
  int64_t p = 1;
  for (int64_t d = begin; d < end; ++d) p *= shape[static_cast<size_t>(d)];
  return p;
}

/// A tensor over x's storage with a new shape of the same numel, recorded so that its
/// gradient is reshaped back. Every view op ends here.
Tensor view_as_shape(const char* op, const Tensor& x, const Shape& shape) {
  Tensor out = Tensor::from_storage(x.storage(), shape, x.dtype(), x.offset());
  autograd::record(op, {x}, {out}, [x_shape = x.shape()](std::vector<Tensor>& grads) {
    return std::vector<Tensor>{reshape(grads[0], x_shape)};
  });
  return out;
}

Tensor reshape_impl(const char* op, const Tensor& x, const Shape& requested) {
  check_defined(op, x);
  Shape shape = requested;
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0)
        throw std::invalid_argument(op_prefix(op) + "expected at most one -1 in the shape, got " +
                                    shape_str(requested));
      infer = static_cast<int64_t>(i);
    } else if (shape[i] < 0) {
      throw std::invalid_argument(op_prefix(op) + "expected non-negative extents (or one -1), got " +
                                  shape_str(requested));
    } else {
      known *= shape[i];
    }
  }
  const int64_t numel = x.numel();
  if (infer >= 0) {
    if (known == 0 || numel % known != 0)
      throw std::invalid_argument(op_prefix(op) + "cannot reshape input of shape " + shape_str(x.shape()) + " (" +
                                  std::to_string(numel) + " elements) into " + shape_str(requested));
    shape[static_cast<size_t>(infer)] = numel / known;
  } else if (known != numel) {
    throw std::invalid_argument(op_prefix(op) + "expected a shape of " + std::to_string(numel) +
                                " elements to match input of shape " + shape_str(x.shape()) + ", got " +
                                shape_str(requested) + " (" + std::to_string(known) + " elements)");
  }
  return view_as_shape(op, x, shape);
}

/// The permuted copy: merges dims that stay adjacent and drops extent-1 dims, so that
/// e.g. (N,C,H,W)->(N,H,W,C) runs as a 3-D permute of (N, C, H·W) and a permute that
/// moves nothing is one block copy.
void permute_into(const Tensor& out, const Tensor& x, const std::vector<int64_t>& dims) {
  const Shape& in_shape = x.shape();
  // Output order of the input dims that matter (extent != 1).
  std::vector<int64_t> order;
  for (int64_t d : dims)
    if (in_shape[static_cast<size_t>(d)] != 1) order.push_back(d);
  // Runs of consecutive input dims in output order become one dim.
  std::vector<std::pair<int64_t, int64_t>> groups;  // [first, last] input dim, in output order
  for (int64_t d : order) {
    if (!groups.empty()) {
      // Skipping extent-1 input dims between them keeps the run contiguous.
      int64_t last = groups.back().second;
      bool adjacent = d > last;
      for (int64_t e = last + 1; adjacent && e < d; ++e) adjacent = in_shape[static_cast<size_t>(e)] == 1;
      if (adjacent) {
        groups.back().second = d;
        continue;
      }
    }
    groups.push_back({d, d});
  }
  const int gdim = static_cast<int>(groups.size());
  if (gdim > kernels::cpu::kMaxPermuteDims)
    throw std::invalid_argument("[permute] expected at most " + std::to_string(kernels::cpu::kMaxPermuteDims) +
                                " dims after merging dims that stay adjacent, got " + std::to_string(gdim) +
                                " for shape " + shape_str(in_shape) + " and dims " + dims_str(dims));
  // Merged input shape: groups sorted by where they sit in the input.
  std::vector<int> by_input(static_cast<size_t>(gdim));
  std::iota(by_input.begin(), by_input.end(), 0);
  std::sort(by_input.begin(), by_input.end(), [&](int i, int j) { return groups[i].first < groups[j].first; });
  int64_t merged_shape[kernels::cpu::kMaxPermuteDims];
  int64_t merged_dims[kernels::cpu::kMaxPermuteDims];
  for (int pos = 0; pos < gdim; ++pos) {
    const auto& g = groups[static_cast<size_t>(by_input[static_cast<size_t>(pos)])];
    merged_shape[pos] = extent_product(in_shape, g.first, g.second + 1);
    merged_dims[by_input[static_cast<size_t>(pos)]] = pos;
  }
  const DType dtype = x.dtype();
  const int64_t n = x.numel();
  if (n == 0) return;
  dispatch_device(
      "permute", x.device(),
      [&] {
        if (gdim <= 1) kernels::cpu::copy_2d(dtype, out.data_ptr(), n, x.data_ptr(), n, 1, n);
        else kernels::cpu::permute_copy(dtype, out.data_ptr(), x.data_ptr(), gdim, merged_shape, merged_dims);
      },
      [&](auto) {
        cudaStream_t stream = cuda_stream(x.device());
        if (gdim <= 1) kernels::cuda::copy_2d(dtype, out.data_ptr(), n, x.data_ptr(), n, 1, n, stream);
        else kernels::cuda::permute_copy(dtype, out.data_ptr(), x.data_ptr(), gdim, merged_shape, merged_dims, stream);
      });
}

Tensor permute_impl(const char* op, const Tensor& x, const std::vector<int64_t>& dims) {
  const int64_t ndim = x.dim();
  Shape out_shape(static_cast<size_t>(ndim));
  for (int64_t i = 0; i < ndim; ++i) out_shape[static_cast<size_t>(i)] = x.size(dims[static_cast<size_t>(i)]);
  Tensor out = Tensor::empty(out_shape, {.dtype = x.dtype(), .device = x.device()});
  permute_into(out, x, dims);
  std::vector<int64_t> inverse(static_cast<size_t>(ndim));
  for (int64_t i = 0; i < ndim; ++i) inverse[static_cast<size_t>(dims[static_cast<size_t>(i)])] = i;
  autograd::record(op, {x}, {out}, [inverse](std::vector<Tensor>& grads) {
    return std::vector<Tensor>{permute(grads[0], inverse)};
  });
  return out;
}

/// Runs dst[r·dst_pitch + j] = src[r·src_pitch + j] on the tensors' device; pointers
/// are the tensors' data plus element offsets.
void copy_block(const Tensor& dst, int64_t dst_offset, int64_t dst_pitch, const Tensor& src, int64_t src_offset,
                int64_t src_pitch, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  const DType dtype = src.dtype();
  const int64_t elem = static_cast<int64_t>(dtype_size(dtype));
  void* d = static_cast<char*>(dst.data_ptr()) + dst_offset * elem;
  const void* s = static_cast<const char*>(src.data_ptr()) + src_offset * elem;
  dispatch_device(
      "copy_block", src.device(), [&] { kernels::cpu::copy_2d(dtype, d, dst_pitch, s, src_pitch, rows, cols); },
      [&](auto) {
        kernels::cuda::copy_2d(dtype, d, dst_pitch, s, src_pitch, rows, cols, cuda_stream(src.device()));
      });
}

/// The gradient of narrow: zeros of `shape` with `g` written at [start, start+length)
/// along `dim`. Recorded, with narrow as its own backward.
Tensor narrow_backward(const Tensor& g, const Shape& shape, int64_t dim, int64_t start) {
  Tensor out = zeros(shape, {.dtype = g.dtype(), .device = g.device()});
  const int64_t outer = extent_product(shape, 0, dim);
  const int64_t inner = extent_product(shape, dim + 1, static_cast<int64_t>(shape.size()));
  const int64_t extent = shape[static_cast<size_t>(dim)], length = g.size(dim);
  copy_block(out, start * inner, extent * inner, g, 0, length * inner, outer, length * inner);
  autograd::record("narrow_backward", {g}, {out}, [dim, start, length](std::vector<Tensor>& grads) {
    return std::vector<Tensor>{narrow(grads[0], dim, start, length)};
  });
  return out;
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& shape) { return reshape_impl("reshape", x, shape); }

Tensor view(const Tensor& x, const Shape& shape) { return reshape_impl("view", x, shape); }

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  check_defined("flatten", x);
  if (x.dim() == 0) return view_as_shape("flatten", x, {1});
  const int64_t start = normalize_dim("flatten", start_dim, x.dim());
  const int64_t end = normalize_dim("flatten", end_dim, x.dim());
  if (start > end)
    throw std::invalid_argument("[flatten] expected start_dim <= end_dim, got " + std::to_string(start_dim) + " and " +
                                std::to_string(end_dim) + " for shape " + shape_str(x.shape()));
  const Shape& s = x.shape();
  Shape shape(s.begin(), s.begin() + start);
  shape.push_back(extent_product(s, start, end + 1));
  shape.insert(shape.end(), s.begin() + end + 1, s.end());
  return view_as_shape("flatten", x, shape);
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  check_defined("unsqueeze", x);
  const int64_t d = normalize_dim("unsqueeze", dim, x.dim() + 1);
  Shape shape = x.shape();
  shape.insert(shape.begin() + d, 1);
  return view_as_shape("unsqueeze", x, shape);
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  check_defined("squeeze", x);
  const int64_t d = normalize_dim("squeeze", dim, x.dim());
  if (x.size(d) != 1)
    throw std::invalid_argument("[squeeze] expected dim " + std::to_string(dim) + " of extent 1, got shape " +
                                shape_str(x.shape()));
  Shape shape = x.shape();
  shape.erase(shape.begin() + d);
  return view_as_shape("squeeze", x, shape);
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  check_defined("transpose", x);
  const int64_t a = normalize_dim("transpose", d0, x.dim());
  const int64_t b = normalize_dim("transpose", d1, x.dim());
  std::vector<int64_t> dims(static_cast<size_t>(x.dim()));
  std::iota(dims.begin(), dims.end(), 0);
  if (x.dim() > 0) std::swap(dims[static_cast<size_t>(a)], dims[static_cast<size_t>(b)]);
  return permute_impl("transpose", x, dims);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  check_defined("permute", x);
  const int64_t ndim = x.dim();
  std::vector<int64_t> normalized;
  std::vector<bool> seen(static_cast<size_t>(ndim), false);
  bool valid = static_cast<int64_t>(dims.size()) == ndim;
  for (size_t i = 0; valid && i < dims.size(); ++i) {
    const int64_t d = dims[i] < 0 ? dims[i] + ndim : dims[i];
    valid = d >= 0 && d < ndim && !seen[static_cast<size_t>(d)];
    if (valid) {
      seen[static_cast<size_t>(d)] = true;
      normalized.push_back(d);
    }
  }
  if (!valid)
    throw std::invalid_argument("[permute] expected a permutation of the " + std::to_string(ndim) +
                                " dims of shape " + shape_str(x.shape()) + ", got " + dims_str(dims));
  return permute_impl("permute", x, normalized);
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  check_defined("narrow", x);
  const int64_t d = normalize_dim("narrow", dim, x.dim());
  const int64_t extent = x.size(d);
  const int64_t begin = start < 0 ? start + extent : start;
  if (begin < 0 || begin > extent || length < 0 || begin + length > extent)
    throw std::invalid_argument("[narrow] expected 0 <= start and start + length <= " + std::to_string(extent) +
                                " (the extent of dim " + std::to_string(d) + " of shape " + shape_str(x.shape()) +
                                "), got start " + std::to_string(start) + " and length " + std::to_string(length));
  const Shape& shape = x.shape();
  const int64_t outer = extent_product(shape, 0, d);
  const int64_t inner = extent_product(shape, d + 1, x.dim());
  Shape out_shape = shape;
  out_shape[static_cast<size_t>(d)] = length;

  Tensor out;
  if (outer <= 1) {
    // Every dim before `dim` has extent 1: the slice is one contiguous run of storage.
    out = Tensor::from_storage(x.storage(), out_shape, x.dtype(), x.offset() + begin * inner);
  } else {
    out = Tensor::empty(out_shape, {.dtype = x.dtype(), .device = x.device()});
    copy_block(out, 0, length * inner, x, begin * inner, extent * inner, outer, length * inner);
  }
  autograd::record("narrow", {x}, {out}, [shape, d, begin](std::vector<Tensor>& grads) {
    return std::vector<Tensor>{narrow_backward(grads[0], shape, d, begin)};
  });
  return out;
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  if (xs.empty()) throw std::invalid_argument("[cat] expected at least one tensor, got an empty list");
  for (size_t i = 0; i < xs.size(); ++i) {
    const std::string name = "tensors[" + std::to_string(i) + "]";
    check_defined("cat", xs[i], name.c_str());
  }
  const Tensor& first = xs[0];
  const int64_t ndim = first.dim();
  const int64_t d = normalize_dim("cat", dim, ndim);
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_same_device("cat", first, xs[i]);
    check_same_dtype("cat", first, xs[i]);
    bool match = xs[i].dim() == ndim;
    for (int64_t e = 0; match && e < ndim; ++e) match = e == d || xs[i].size(e) == first.size(e);
    if (!match)
      throw std::invalid_argument("[cat] expected every tensor to match tensors[0] " + shape_str(first.shape()) +
                                  " in all dims except dim " + std::to_string(d) + ", got tensors[" +
                                  std::to_string(i) + "] of shape " + shape_str(xs[i].shape()));
    total += xs[i].size(d);
  }
  Shape out_shape = first.shape();
  out_shape[static_cast<size_t>(d)] = total;
  Tensor out = Tensor::empty(out_shape, {.dtype = first.dtype(), .device = first.device()});
  const int64_t outer = extent_product(out_shape, 0, d);
  const int64_t inner = extent_product(out_shape, d + 1, ndim);
  // Each input is a slab of `outer` rows of extent·inner elements in the output.
  std::vector<int64_t> starts;
  int64_t offset = 0;
  for (const Tensor& x : xs) {
    const int64_t extent = x.size(d);
    copy_block(out, offset * inner, total * inner, x, 0, extent * inner, outer, extent * inner);
    starts.push_back(offset);
    offset += extent;
  }
  std::vector<int64_t> extents;
  for (const Tensor& x : xs) extents.push_back(x.size(d));
  std::vector<bool> needs;
  for (const Tensor& x : xs) needs.push_back(x.requires_grad());
  autograd::record("cat", xs, {out}, [d, starts, extents, needs](std::vector<Tensor>& grads) {
    std::vector<Tensor> result(starts.size());
    for (size_t i = 0; i < starts.size(); ++i)
      if (needs[i]) result[i] = narrow(grads[0], d, starts[i], extents[i]);
    return result;
  });
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  check_defined("chunk", x);
  if (chunks <= 0) throw std::invalid_argument("[chunk] expected chunks > 0, got " + std::to_string(chunks));
  const int64_t d = normalize_dim("chunk", dim, x.dim());
  const int64_t n = x.size(d);
  if (n == 0) return {narrow(x, d, 0, 0)};
  const int64_t piece = (n + chunks - 1) / chunks;
  std::vector<Tensor> pieces;
  {
    // The pieces share one backward node: their gradients are concatenated once,
    // instead of each narrow scattering into a zero-filled tensor of x's shape to be
    // summed (three full-size buffers and two additions for a q/k/v split).
    autograd::NoGradGuard no_grad;
    for (int64_t start = 0; start < n; start += piece) pieces.push_back(narrow(x, d, start, std::min(piece, n - start)));
  }
  autograd::record("chunk", {x}, pieces, [d](std::vector<Tensor>& grads) { return std::vector<Tensor>{cat(grads, d)}; });
  return pieces;
}

Tensor Tensor::reshape(const Shape& shape) const { return tandem::reshape(*this, shape); }
Tensor Tensor::view(const Shape& shape) const { return tandem::view(*this, shape); }
Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const { return tandem::flatten(*this, start_dim, end_dim); }
Tensor Tensor::transpose(int64_t d0, int64_t d1) const { return tandem::transpose(*this, d0, d1); }
Tensor Tensor::permute(const std::vector<int64_t>& dims) const { return tandem::permute(*this, dims); }
Tensor Tensor::narrow(int64_t dim, int64_t start, int64_t length) const {
  return tandem::narrow(*this, dim, start, length);
}

}  // namespace tandem
