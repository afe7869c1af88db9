// Helpers every backend shares: argument checks for each collective (errors in the
// "[all_reduce] expected ..., got ..." form), flattening a tensor list into one
// coalescing buffer and back, and the CPU element-wise reduction over any dtype.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/process_group.h"
#include "engine/tensor.h"

namespace tandem::comm {

// ---- argument checks (throw std::invalid_argument) ---------------------------------

/// A non-empty list of defined tensors sharing one device and one dtype.
void check_tensor_list(const char* op, const std::vector<Tensor>& tensors, const char* name = "tensors");
/// Avg needs a floating dtype (integer avg would silently truncate; Gloo refuses it
/// too); sum, max and min take every dtype.
void check_reduce_op(const char* op, ReduceOp reduce, DType dtype);
/// A root in [0, size).
void check_root(const char* op, int root, int size);

/// all_reduce: a valid tensor list and a reduce op its dtype supports.
void check_all_reduce_args(const std::vector<Tensor>& tensors, ReduceOp reduce);
/// broadcast: a valid tensor list and a root in [0, size).
void check_broadcast_args(const std::vector<Tensor>& tensors, int root, int size);
/// all_gather: `size` outputs, each with the input's shape, dtype and device.
void check_all_gather_args(const std::vector<Tensor>& outputs, const Tensor& input, int size);
/// reduce_scatter: `size` inputs, each with the output's shape, dtype and device.
void check_reduce_scatter_args(const Tensor& output, const std::vector<Tensor>& inputs, ReduceOp reduce, int size);

/// Total elements of a list (the element count the debug check compares).
int64_t total_numel(const std::vector<Tensor>& tensors);

// ---- coalescing --------------------------------------------------------------------

/// Copies the tensors, in order, into one new contiguous 1-D tensor on their device
/// and dtype (the buffer a coalesced collective runs on). Copies are queued on the
/// current stream for CUDA tensors.
Tensor flatten_tensors(const std::vector<Tensor>& tensors);
/// Inverse of flatten_tensors: copies consecutive slices of `flat` back into `tensors`.
void unflatten_into(const Tensor& flat, const std::vector<Tensor>& tensors);
/// A view of elements [start, start+length) of a contiguous tensor, as a 1-D tensor
/// sharing its storage.
Tensor flat_slice(const Tensor& t, int64_t start, int64_t length);

// ---- CPU reduction -----------------------------------------------------------------

/// dst[i] = dst[i] op src[i] for n host elements of `dtype`. f16/bf16 are computed
/// in f32 and rounded once per call; integers wrap on overflow; max/min propagate
/// NaN; on bool sum and max are "or", min is "and". Avg adds (divide afterwards with
/// divide_in_place).
void reduce_into(void* dst, const void* src, int64_t n, DType dtype, ReduceOp op);
/// Tensor form: `dst` and `src` are CPU tensors with the same dtype and numel.
void reduce_into(const Tensor& dst, const Tensor& src, ReduceOp op);
/// data[i] = data[i] / divisor for n host elements of a floating dtype (how avg
/// finishes; division rather than a multiply by 1/divisor keeps e.g. 3/3 exact).
void divide_in_place(void* data, int64_t n, DType dtype, int64_t divisor);

}  // namespace tandem::comm
