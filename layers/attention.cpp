// CausalSelfAttention: one fused q/k/v projection, a head split by one permute, and
// scaled_dot_product_attention.
#include "layers/attention.h"

#include <stdexcept>
#include <string>

#include "engine/ops/linalg.h"
#include "engine/ops/shape.h"
#include "layers/dropout.h"
#include "layers/linear.h"

namespace tandem::nn {

CausalSelfAttention::CausalSelfAttention(int64_t embed_dim, int64_t num_heads, double dropout, bool bias)
    : embed_dim_(embed_dim), num_heads_(num_heads), dropout_(dropout), bias_(bias) {
  if (embed_dim < 1 || num_heads < 1 || embed_dim % num_heads != 0)
    throw std::invalid_argument("[CausalSelfAttention] expected embed_dim >= 1 divisible by num_heads >= 1, got " +
                                std::to_string(embed_dim) + " and " + std::to_string(num_heads));
  if (!(dropout >= 0.0 && dropout < 1.0))
    throw std::invalid_argument("[CausalSelfAttention] expected dropout in [0, 1), got " + std::to_string(dropout));
  c_attn_ = register_module("c_attn", std::make_shared<Linear>(embed_dim, 3 * embed_dim, bias));
  c_proj_ = register_module("c_proj", std::make_shared<Linear>(embed_dim, embed_dim, bias));
  resid_dropout_ = register_module("resid_dropout", std::make_shared<Dropout>(dropout));
}

void CausalSelfAttention::check_input(const Tensor& input) const {
  if (!input.defined() || input.dim() != 3 || input.size(2) != embed_dim_)
    throw std::invalid_argument("[CausalSelfAttention] expected input (B, T, " + std::to_string(embed_dim_) +
                                "), got " + (input.defined() ? shape_str(input.shape()) : std::string("undefined")));
}

Tensor CausalSelfAttention::forward(const Tensor& input) {
  KVCache none;
  return forward(input, none);
}

Tensor CausalSelfAttention::forward(const Tensor& input, KVCache& cache) {
  check_input(input);
  const int64_t b = input.size(0), t = input.size(1), h = num_heads_, d = embed_dim_ / num_heads_;
  const bool cached = cache.size() > 0;
  if (cached && (t != 1 || cache.k.size(0) != b))
    throw std::invalid_argument("[CausalSelfAttention] expected one new position per sequence after the cached " +
                                std::to_string(cache.size()) + " (batch " + std::to_string(cache.k.size(0)) + "), got " +
                                shape_str(input.shape()));
  // (B, T, 3C) -> (3, B, H, T, D) in one copy; q, k and v are then views along dim 0
  // (chunk: one backward node that concatenates their gradients).
  const std::vector<Tensor> qkv = chunk(permute(reshape(c_attn_->forward(input), {b, t, 3, h, d}), {2, 0, 3, 1, 4}), 3);
  const auto part = [&](int64_t i) { return reshape(qkv[static_cast<size_t>(i)], {b, h, t, d}); };
  Tensor k = part(1), v = part(2);
  if (cached) {
    k = cat({cache.k, k}, 2);
    v = cat({cache.v, v}, 2);
  }
  cache.k = k;
  cache.v = v;
  // A new position after cached ones sees all of them: no mask.
  Tensor y = scaled_dot_product_attention(part(0), k, v, /*is_causal=*/!cached);
  y = reshape(permute(y, {0, 2, 1, 3}), {b, t, embed_dim_});  // heads side by side again
  return resid_dropout_->forward(c_proj_->forward(y));
}

std::shared_ptr<Module> CausalSelfAttention::clone() const {
  return clone_via([this] { return std::make_shared<CausalSelfAttention>(embed_dim_, num_heads_, dropout_, bias_); });
}

}  // namespace tandem::nn
