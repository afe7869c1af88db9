// GPT: construction, nanoGPT's initialisation and the forward passes.
#include "layers/models/gpt.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "engine/ops/linalg.h"
#include "engine/ops/shape.h"
#include "layers/attention.h"
#include "layers/dropout.h"
#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/norm.h"

namespace tandem::nn {

FeedForward::FeedForward(int64_t embed_dim, double dropout) : dropout_(dropout) {
  if (embed_dim < 1) throw std::invalid_argument("[FeedForward] expected embed_dim >= 1, got " + std::to_string(embed_dim));
  c_fc_ = register_module("c_fc", std::make_shared<Linear>(embed_dim, 4 * embed_dim));
  c_proj_ = register_module("c_proj", std::make_shared<Linear>(4 * embed_dim, embed_dim));
  dropout_layer_ = register_module("dropout", std::make_shared<Dropout>(dropout));
}

Tensor FeedForward::forward(const Tensor& input) {
  Tensor hidden = fuse_activation_ ? c_fc_->forward(input, Activation::kGelu) : gelu(c_fc_->forward(input));
  return dropout_layer_->forward(c_proj_->forward(hidden));
}

std::shared_ptr<Module> FeedForward::clone() const {
  return clone_via([this] {
    auto copy = std::make_shared<FeedForward>(c_fc_->in_features(), dropout_);
    copy->fuse_activation_ = fuse_activation_;
    return copy;
  });
}

TransformerBlock::TransformerBlock(int64_t embed_dim, int64_t num_heads, double dropout) : dropout_(dropout) {
  ln_1_ = register_module("ln_1", std::make_shared<LayerNorm>(Shape{embed_dim}));
  attn_ = register_module("attn", std::make_shared<CausalSelfAttention>(embed_dim, num_heads, dropout));
  ln_2_ = register_module("ln_2", std::make_shared<LayerNorm>(Shape{embed_dim}));
  mlp_ = register_module("mlp", std::make_shared<FeedForward>(embed_dim, dropout));
}

Tensor TransformerBlock::forward(const Tensor& input) {
  Tensor x = add(input, attn_->forward(ln_1_->forward(input)));
  return add(x, mlp_->forward(ln_2_->forward(x)));
}

Tensor TransformerBlock::forward(const Tensor& input, KVCache& cache) {
  Tensor x = add(input, attn_->forward(ln_1_->forward(input), cache));
  return add(x, mlp_->forward(ln_2_->forward(x)));
}

std::shared_ptr<Module> TransformerBlock::clone() const {
  return clone_via([this] { return std::make_shared<TransformerBlock>(attn_->embed_dim(), attn_->num_heads(), dropout_); });
}

namespace models {

GPT::GPT(const GPTOptions& options) : options_(options) {
  const GPTOptions& o = options;
  if (o.vocab_size < 1 || o.block_size < 1 || o.n_layer < 1 || o.n_head < 1 || o.n_embd < 1 ||
      o.n_embd % o.n_head != 0)
    throw std::invalid_argument(
        "[GPT] expected vocab_size, block_size, n_layer, n_head >= 1 and n_embd a positive multiple of n_head, got " +
        std::to_string(o.vocab_size) + ", " + std::to_string(o.block_size) + ", " + std::to_string(o.n_layer) +
        ", " + std::to_string(o.n_head) + " and n_embd " + std::to_string(o.n_embd));
  if (!(o.dropout >= 0.0 && o.dropout < 1.0))
    throw std::invalid_argument("[GPT] expected dropout in [0, 1), got " + std::to_string(o.dropout));

  auto transformer = register_module("transformer", std::make_shared<ModuleDict>());
  wte_ = std::make_shared<Embedding>(o.vocab_size, o.n_embd);
  wpe_ = std::make_shared<Embedding>(o.block_size, o.n_embd);
  drop_ = std::make_shared<Dropout>(o.dropout);
  h_ = std::make_shared<Sequential>();
  for (int64_t i = 0; i < o.n_layer; ++i) h_->push_back(std::make_shared<TransformerBlock>(o.n_embd, o.n_head, o.dropout));
  ln_f_ = std::make_shared<LayerNorm>(Shape{o.n_embd});
  transformer->insert("wte", wte_);
  transformer->insert("wpe", wpe_);
  transformer->insert("drop", drop_);
  transformer->insert("h", h_);
  transformer->insert("ln_f", ln_f_);

  // nanoGPT's _init_weights, then the scaled residual projections (GPT-2 paper §2.3).
  autograd::NoGradGuard no_grad;
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layer));
  for (auto& [name, p] : named_parameters()) {
    const bool is_norm = name.find(".ln_") != std::string::npos;
    if (is_norm) continue;  // LayerNorm keeps ones and zeros
    if (p.dim() == 1) {
      p.zero_();
    } else {
      const bool residual_end = name.size() > 14 && name.compare(name.size() - 14, 14, ".c_proj.weight") == 0;
      normal_(p, 0.0, residual_end ? residual_std : 0.02);
    }
  }
}

Tensor GPT::forward_cached(const Tensor& input, std::vector<KVCache>& caches) {
  const int64_t start = caches.front().size(), t = input.size(1);
  Tensor x = add(wte_->forward(input), narrow(wpe_->weight(), 0, start, t));
  for (size_t i = 0; i < h_->size(); ++i) x = static_cast<TransformerBlock&>(*(*h_)[i]).forward(x, caches[i]);
  return linear(ln_f_->forward(x), wte_->weight());
}

Tensor GPT::forward(const Tensor& input) {
  if (!input.defined() || input.dtype() != DType::kI64 || input.dim() != 2)
    throw std::invalid_argument("[GPT] expected int64 token ids of shape (B, T), got " +
                                (input.defined() ? std::string(dtype_name(input.dtype())) + " " + shape_str(input.shape())
                                                 : std::string("undefined")));
  const int64_t t = input.size(1);
  if (t < 1 || t > options_.block_size)
    throw std::invalid_argument("[GPT] expected 1 <= T <= block_size " + std::to_string(options_.block_size) +
                                ", got input " + shape_str(input.shape()));
  // Positions 0..T-1 are the first T rows of wpe: a view, broadcast over the batch.
  Tensor x = drop_->forward(add(wte_->forward(input), narrow(wpe_->weight(), 0, 0, t)));
  x = ln_f_->forward(h_->forward(x));
  return linear(x, wte_->weight());  // tied head: logits = x·wteᵀ
}

std::vector<int64_t> GPT::generate(const std::vector<int64_t>& prompt, const GenerateOptions& options) {
  const GPTOptions& o = options_;
  if (prompt.empty()) throw std::invalid_argument("[GPT::generate] expected a prompt of at least one token, got none");
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= o.vocab_size)
      throw std::invalid_argument("[GPT::generate] expected token ids in [0, " + std::to_string(o.vocab_size) +
                                  "), got " + std::to_string(prompt[i]) + " at position " + std::to_string(i));
  if (options.max_new_tokens < 0 || !(options.temperature >= 0.0) || options.top_k < 0)
    throw std::invalid_argument("[GPT::generate] expected max_new_tokens >= 0, temperature >= 0 and top_k >= 0, got " +
                                std::to_string(options.max_new_tokens) + ", " + std::to_string(options.temperature) +
                                " and " + std::to_string(options.top_k));

  autograd::NoGradGuard no_grad;
  struct RestoreMode {  // the caller's training mode, also when a forward throws
    GPT& model;
    bool training;
    ~RestoreMode() { model.train(training); }
  } restore{*this, is_training()};
  eval();
  const Device device = wte_->weight().device();
  std::mt19937_64 rng(options.seed);
  std::vector<int64_t> tokens = prompt;
  std::vector<double> probs(static_cast<size_t>(o.vocab_size));
  std::vector<KVCache> caches(h_->size());
  for (int64_t n = 0; n < options.max_new_tokens; ++n) {
    const auto length = static_cast<int64_t>(tokens.size());
    Tensor logits;  // (1, t, V)
    if (length <= o.block_size) {
      // The positions not yet cached: the whole prompt first, then the last token.
      const int64_t done = caches.front().size();
      const std::vector<int64_t> fresh(tokens.begin() + done, tokens.end());
      logits = forward_cached(Tensor::from_vector(fresh, {1, length - done}, device), caches);
    } else {
      const std::vector<int64_t> window(tokens.end() - o.block_size, tokens.end());
      logits = forward(Tensor::from_vector(window, {1, o.block_size}, device));
    }
    const int64_t t = logits.size(1);
    const std::vector<double> last = logits.narrow(1, t - 1, 1).to(DType::kF64).to_vector<double>();
    for (size_t v = 0; v < last.size(); ++v)
      if (!std::isfinite(last[v]))
        throw std::runtime_error("[GPT::generate] expected finite logits, got " + std::to_string(last[v]) +
                                 " for token " + std::to_string(v) + " at position " + std::to_string(tokens.size()));
    const auto best = static_cast<int64_t>(std::max_element(last.begin(), last.end()) - last.begin());
    if (options.temperature == 0.0) {
      tokens.push_back(best);
      continue;
    }
    // Keep the top_k largest logits (ties at the k-th value stay in, as torch.topk's cut).
    double cut = -std::numeric_limits<double>::infinity();
    if (options.top_k > 0 && options.top_k < o.vocab_size) {
      std::vector<double> sorted = last;
      std::nth_element(sorted.begin(), sorted.begin() + (options.top_k - 1), sorted.end(), std::greater<>());
      cut = sorted[static_cast<size_t>(options.top_k - 1)];
    }
    for (size_t v = 0; v < probs.size(); ++v)
      probs[v] = last[v] < cut ? 0.0 : std::exp((last[v] - last[static_cast<size_t>(best)]) / options.temperature);
    std::discrete_distribution<int64_t> pick(probs.begin(), probs.end());
    tokens.push_back(pick(rng));
  }
  return tokens;
}

std::shared_ptr<Module> GPT::clone() const {
  return clone_via([this] { return std::make_shared<GPT>(options_); });
}

}  // namespace models
}  // namespace tandem::nn
