// Multi-tensor launches, as PyTorch's multi_tensor_apply: the host packs the pointers
// of many tensors and a block -> (tensor, chunk) map into one kernel argument struct,
// so one launch updates a whole parameter list. Used by sgd.cu, adam.cu and norm2.cu.
#pragma once

#include <cstdint>

namespace tandem::kernels::cuda {

/// Elements one block handles in every multi-tensor kernel.
inline constexpr int64_t kMultiTensorChunkSize = 65536;

/// Per-tensor scalars for kernels that need none.
struct NoTensorMeta {
  void move(int /*from*/, int /*to*/) {}
};

/// Kernel argument struct of a multi-tensor launch: kLists pointer lists (param,
/// grad, state buffers, ...) of up to kMaxTensors tensors, their sizes, per-tensor
/// scalars `Meta` (a struct of arrays indexed by tensor slot, with move(from, to)),
/// and the tensor and chunk of each of up to kMaxBlocks blocks. Callers
/// static_assert that it fits the 4 KiB kernel-argument limit.
template <int kLists, int kMaxTensorsArg, int kMaxBlocksArg, class Meta = NoTensorMeta>
struct TensorListArgs {
  static constexpr int kMaxTensors = kMaxTensorsArg;
  static constexpr int kMaxBlocks = kMaxBlocksArg;
  static_assert(kMaxTensors <= 256, "block_tensor is one byte");

  void* ptr[kLists][kMaxTensors];
  int64_t numel[kMaxTensors];
  unsigned char block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
  Meta meta;

  /// Copies slot `from` (pointers, size, scalars) into slot `to`.
  void move_slot(int from, int to) {
    for (int l = 0; l < kLists; ++l) ptr[l][to] = ptr[l][from];
    numel[to] = numel[from];
    meta.move(from, to);
  }
};

/// Packs `count` tensors into argument structs of type Args and calls
/// launch(args, blocks, first_block) whenever a struct is full or the tensors run
/// out; first_block counts the blocks of earlier launches (the index of this
/// launch's block 0 over all chunks, for kernels that write one partial per block).
/// fill(i, args, slot) stores tensor i's pointers and scalars in `slot` and returns
/// its element count; tensors of 0 elements are skipped (their slot is reused). A
/// tensor cut off by a full block map continues as slot 0 of the next struct.
template <class Args, class Fill, class Launch>
void plan_tensor_list_launches(int64_t count, Fill&& fill, Launch&& launch) {
  Args args{};
  int nt = 0, nb = 0;
  int64_t first_block = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = fill(i, args, nt);
    if (n == 0) continue;
    args.numel[nt] = n;
    ++nt;
    const int64_t chunks = (n + kMultiTensorChunkSize - 1) / kMultiTensorChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      args.block_tensor[nb] = static_cast<unsigned char>(nt - 1);
      args.block_chunk[nb] = static_cast<int32_t>(c);
      ++nb;
      const bool tensor_done = c == chunks - 1;
      if (nb == Args::kMaxBlocks || (tensor_done && nt == Args::kMaxTensors)) {
        launch(static_cast<const Args&>(args), nb, first_block);
        first_block += nb;
        nb = 0;
        if (tensor_done) {
          nt = 0;
        } else {
          args.move_slot(nt - 1, 0);
          nt = 1;
        }
      }
    }
  }
  if (nb > 0) launch(static_cast<const Args&>(args), nb, first_block);
}

/// Total chunks (blocks over all launches) of tensors with these sizes.
inline int64_t tensor_list_chunks(const int64_t* numel, int64_t count) {
  int64_t chunks = 0;
  for (int64_t i = 0; i < count; ++i) chunks += (numel[i] + kMultiTensorChunkSize - 1) / kMultiTensorChunkSize;
  return chunks;
}

#ifdef __CUDACC__
/// The tensor slot and element range [begin, end) of this block's chunk.
template <class Args>
__device__ inline int chunk_of_block(const Args& args, int64_t& begin, int64_t& end) {
  const int t = args.block_tensor[blockIdx.x];
  begin = static_cast<int64_t>(args.block_chunk[blockIdx.x]) * kMultiTensorChunkSize;
  end = min(begin + kMultiTensorChunkSize, args.numel[t]);
  return t;
}
#endif

}  // namespace tandem::kernels::cuda
