// GPU embedding gather (one thread per output element) and scatter-add (one thread
// per gradient element, atomicAdd into an f32/f64 accumulator).
#include "kernels/cuda/embedding.h"

#include "kernels/cuda/common.cuh"

namespace tandem::kernels::cuda {
namespace {

template <class T>
__global__ void embedding_forward_kernel(T* __restrict__ out, const T* __restrict__ weight,
                                         const int64_t* __restrict__ indices, int64_t n, int64_t num_rows,
                                         int64_t dim) {
  const int64_t total = n * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pos = i / dim, j = i - pos * dim;
    const int64_t row = indices[pos];
    out[i] = (row >= 0 && row < num_rows) ? weight[row * dim + j] : T{};
  }
}

template <class T, class Acc>
__global__ void embedding_backward_kernel(Acc* __restrict__ grad_acc, const T* __restrict__ grad_out,
                                          const int64_t* __restrict__ indices, int64_t n, int64_t num_rows,
                                          int64_t dim, int64_t padding_idx) {
  const int64_t total = n * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pos = i / dim, j = i - pos * dim;
    const int64_t row = indices[pos];
    if (row == padding_idx || row < 0 || row >= num_rows) continue;
    atomicAdd(grad_acc + row * dim + j, static_cast<Acc>(grad_out[i]));
  }
}

}  // namespace

void embedding_forward(DType dtype, void* out, const void* weight, const int64_t* indices, int64_t n,
                       int64_t num_rows, int64_t dim, cudaStream_t stream) {
  const int64_t total = n * dim;
  if (total == 0) return;
  auto launch = [&](auto word) {
    using Word = decltype(word);
    embedding_forward_kernel<Word><<<grid_for(total), kBlockSize, 0, stream>>>(
        static_cast<Word*>(out), static_cast<const Word*>(weight), indices, n, num_rows, dim);
    CUDA_CHECK_LAUNCH();
  };
  // A gather only moves bits, so it is keyed on the element size.
  switch (dtype_size(dtype)) {
    case 1: launch(uint8_t{}); break;
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: unreachable_dtype("embedding_forward", dtype);
  }
}

void embedding_backward(DType dtype, void* grad_acc, const void* grad_out, const int64_t* indices, int64_t n,
                        int64_t num_rows, int64_t dim, int64_t padding_idx, cudaStream_t stream) {
  const int64_t total = n * dim;
  if (total == 0) return;
  bool ok = visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = compute_t<T>;
    embedding_backward_kernel<T, Acc><<<grid_for(total), kBlockSize, 0, stream>>>(
        static_cast<Acc*>(grad_acc), static_cast<const T*>(grad_out), indices, n, num_rows, dim, padding_idx);
    CUDA_CHECK_LAUNCH();
  });
  if (!ok) unreachable_dtype("embedding_backward", dtype);
}

}  // namespace tandem::kernels::cuda
