// Shape ops: reshape/view (storage-sharing), flatten, transpose and permute
// (materialised, since tensors are contiguous), narrow (a view on dim 0, a copy
// elsewhere), cat, chunk, squeeze/unsqueeze.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace tandem {

/// Same data, new shape; one extent may be -1 (inferred). Shares storage.
Tensor reshape(const Tensor& x, const Shape& shape);
/// As reshape; kept for PyTorch familiarity (tensors are contiguous, so both share storage).
Tensor view(const Tensor& x, const Shape& shape);
/// Merges dims start_dim..end_dim into one.
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor unsqueeze(const Tensor& x, int64_t dim);
/// Removes `dim`, which must have extent 1.
Tensor squeeze(const Tensor& x, int64_t dim);
/// Swaps two dims (a contiguous copy).
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
/// Reorders dims: out.shape[i] = x.shape[dims[i]] (a contiguous copy).
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
/// Elements start..start+length-1 along `dim`: a storage-sharing view for dim 0
/// (or when every dim before `dim` has extent 1), a copy otherwise.
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
/// Concatenates along `dim`; all other extents, dtypes and devices must agree.
Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 0);
/// Splits into `chunks` pieces of ceil(n/chunks) along `dim` (the last may be smaller; fewer pieces when n < chunks),
/// views of x where narrow gives views; one backward node concatenates their gradients.
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);

}  // namespace tandem
