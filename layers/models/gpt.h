// GPT-2-style decoder (Radford et al. 2019; the layout of Karpathy's nanoGPT): token
// and learned position embeddings, pre-norm transformer blocks (causal self-attention
// and a 4x GELU feed-forward, each on a residual branch), a final LayerNorm and a
// language-model head tied to the token embedding.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "layers/attention.h"
#include "layers/module.h"
#include "layers/sequential.h"

namespace tandem::nn {

class Dropout;
class Embedding;
class LayerNorm;
class Linear;

/// c_fc (C -> 4C), GELU (erf form, as torch.nn.GELU()), c_proj (4C -> C), dropout.
class FeedForward : public Module {
 public:
  explicit FeedForward(int64_t embed_dim, double dropout = 0.0);
  /// (..., C) -> (..., C).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "FeedForward"; }
  std::shared_ptr<Module> clone() const override;
  const std::shared_ptr<Linear>& c_fc() const { return c_fc_; }
  const std::shared_ptr<Linear>& c_proj() const { return c_proj_; }
  /// Whether c_fc's GELU runs in its epilogue (linear() with kGelu; on by default) or as
  /// a separate op; the same result up to rounding.
  void set_fuse_activation(bool on) { fuse_activation_ = on; }

 private:
  double dropout_;
  bool fuse_activation_ = true;
  std::shared_ptr<Linear> c_fc_;
  std::shared_ptr<Linear> c_proj_;
  std::shared_ptr<Dropout> dropout_layer_;
};

/// Pre-norm block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
class TransformerBlock : public Module {
 public:
  TransformerBlock(int64_t embed_dim, int64_t num_heads, double dropout = 0.0);
  /// (B, T, C) -> (B, T, C).
  Tensor forward(const Tensor& input) override;
  /// As forward, with the attention's keys and values cached (CausalSelfAttention).
  Tensor forward(const Tensor& input, KVCache& cache);
  std::string name() const override { return "TransformerBlock"; }
  std::shared_ptr<Module> clone() const override;
  const std::shared_ptr<CausalSelfAttention>& attn() const { return attn_; }
  const std::shared_ptr<FeedForward>& mlp() const { return mlp_; }

 private:
  double dropout_;
  std::shared_ptr<LayerNorm> ln_1_;
  std::shared_ptr<CausalSelfAttention> attn_;
  std::shared_ptr<LayerNorm> ln_2_;
  std::shared_ptr<FeedForward> mlp_;
};

namespace models {

struct GPTOptions {
  int64_t vocab_size = 50257;
  /// Longest sequence (rows of the position embedding).
  int64_t block_size = 1024;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_embd = 768;
  /// After the embeddings and on each residual branch; in [0, 1).
  double dropout = 0.0;

  /// GPT-2 small: the defaults above, 124,439,808 parameters.
  static GPTOptions gpt2_small() { return {}; }
  /// nanoGPT's shakespeare_char size: 6 layers, 6 heads, 384 wide, 256 positions, 65
  /// symbols (10.7M parameters); tandem-train's gpt-mini, with the data's vocabulary.
  static GPTOptions gpt_mini() { return {.vocab_size = 65, .block_size = 256, .n_layer = 6, .n_head = 6, .n_embd = 384}; }
};

/// How GPT::generate picks each new token.
struct GenerateOptions {
  int64_t max_new_tokens = 100;
  /// Divides the logits before the softmax; 0 takes the most likely token (greedy).
  double temperature = 1.0;
  /// Sample among the k most likely tokens only; 0: all of them.
  int64_t top_k = 0;
  /// Seeds the sampling (a private generator: the default ones do not move).
  uint64_t seed = 0;
};

/// Parameter names are nanoGPT's (transformer.wte, transformer.wpe, transformer.h.0.ln_1,
/// transformer.h.0.attn.c_attn, ..., transformer.ln_f); the head reuses
/// transformer.wte.weight, so there is no lm_head.weight of its own (as in PyTorch's
/// named_parameters() of the tied model). Initialisation as nanoGPT: N(0, 0.02) for
/// linear and embedding weights, zero biases, N(0, 0.02/sqrt(2·n_layer)) for the two
/// projections that end a residual branch.
class GPT : public Module {
 public:
  explicit GPT(const GPTOptions& options = {});
  /// int64 token ids (B, T), T <= block_size -> logits (B, T, vocab_size).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "GPT"; }
  std::shared_ptr<Module> clone() const override;
  const GPTOptions& options() const { return options_; }

  /// Continues `prompt` (token ids, at least one) by max_new_tokens tokens, each drawn
  /// from the softmax of the last position's logits as `options` says, with the last
  /// block_size tokens as context. Keys and values are cached while the sequence fits in
  /// block_size (one position's work per new token); past that the window slides, its
  /// tokens take positions 0..block_size-1 again (as nanoGPT's crop), which a cache of
  /// absolute-position keys cannot follow, so every token re-runs the window. Runs
  /// without gradients in eval mode on the model's device and restores the training
  /// mode; non-finite logits are a std::runtime_error. Returns the prompt followed by
  /// the new tokens.
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, const GenerateOptions& options = {});

  /// The blocks, a Sequential: set_checkpoint_segments() on it recomputes them in backward.
  const std::shared_ptr<Sequential>& blocks() const { return h_; }

 private:
  /// Logits (B, T, V) of `input`, positions starting after those in `caches` (one cache
  /// per block, filled as it goes).
  Tensor forward_cached(const Tensor& input, std::vector<KVCache>& caches);

  GPTOptions options_;
  std::shared_ptr<Embedding> wte_;
  std::shared_ptr<Embedding> wpe_;
  std::shared_ptr<Dropout> drop_;
  std::shared_ptr<Sequential> h_;
  std::shared_ptr<LayerNorm> ln_f_;
};

}  // namespace models
}  // namespace tandem::nn
