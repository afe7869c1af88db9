// Reductions: sum, mean, max and argmax over all elements or over dims.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace tandem {

/// Sum of all elements, as a 0-dim tensor.
Tensor sum(const Tensor& x);
/// Sum over `dims` (negative dims count from the end).
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
/// Largest element, as a 0-dim tensor (gradient flows to the first maximum).
Tensor max(const Tensor& x);

struct MaxResult {
  Tensor values;
  Tensor indices;  // int64
};
/// Largest element along `dim` and its index (the first one on ties).
MaxResult max(const Tensor& x, int64_t dim, bool keepdim = false);
/// Index of the largest element along `dim`, as int64 (not differentiable).
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

/// Sums `x` down to `shape`, the inverse of broadcasting `shape` up to x.shape()
/// (the backward of every broadcasting op).
Tensor sum_to(const Tensor& x, const Shape& shape);

}  // namespace tandem
