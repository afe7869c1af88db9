// Causal multi-head self-attention, the attention layer of GPT-style decoders.
#pragma once

#include <memory>

#include "layers/module.h"

namespace tandem::nn {

class Dropout;
class Linear;

/// Keys and values of the positions a CausalSelfAttention has seen, (B, H, t, D) each
/// (undefined before the first call): incremental decoding computes each new position
/// once instead of re-running the whole context.
struct KVCache {
  Tensor k, v;
  /// Positions cached (0 when empty).
  int64_t size() const { return k.defined() ? k.size(2) : 0; }
};

/// y = c_proj(attention(q, k, v)) with q, k, v = c_attn(x) split into `num_heads` heads
/// of embed_dim / num_heads, each query attending to itself and earlier positions
/// (scaled_dot_product_attention with is_causal). Parameter names (c_attn, c_proj)
/// follow nanoGPT / GPT-2. `dropout` applies to the output projection (resid_dropout);
/// the attention weights themselves are not dropped (nanoGPT's attn_dropout is not
/// implemented).
class CausalSelfAttention : public Module {
 public:
  /// embed_dim divisible by num_heads; dropout in [0, 1).
  CausalSelfAttention(int64_t embed_dim, int64_t num_heads, double dropout = 0.0, bool bias = true);
  /// x (B, T, embed_dim) -> (B, T, embed_dim).
  Tensor forward(const Tensor& input) override;
  /// As forward, for positions that follow those in `cache`, whose keys and values are
  /// appended to it: with an empty cache x may hold any number of positions (causal
  /// among them), after that one at a time (it attends to every cached position). For
  /// inference: the cache keeps tensors of this call's graph, so call it without
  /// gradients.
  Tensor forward(const Tensor& input, KVCache& cache);
  std::string name() const override { return "CausalSelfAttention"; }
  std::shared_ptr<Module> clone() const override;

  int64_t embed_dim() const { return embed_dim_; }
  int64_t num_heads() const { return num_heads_; }
  const std::shared_ptr<Linear>& c_attn() const { return c_attn_; }
  const std::shared_ptr<Linear>& c_proj() const { return c_proj_; }

 private:
  void check_input(const Tensor& input) const;

  int64_t embed_dim_, num_heads_;
  double dropout_;
  bool bias_;
  std::shared_ptr<Linear> c_attn_;
  std::shared_ptr<Linear> c_proj_;
  std::shared_ptr<Dropout> resid_dropout_;
};

}  // namespace tandem::nn
