// Embedding: a lookup table of num_embeddings rows of embedding_dim values.
#pragma once

#include "layers/module.h"

namespace tandem::nn {

class Embedding : public Module {
 public:
  /// Weight (num_embeddings, embedding_dim) from N(0, 1), as torch.nn.Embedding;
  /// row `padding_idx` (if >= 0) is zero and gets no gradient.
  Embedding(int64_t num_embeddings, int64_t embedding_dim, int64_t padding_idx = -1);
  /// int64 indices of any shape -> (..., embedding_dim).
  Tensor forward(const Tensor& indices) override;
  std::string name() const override { return "Embedding"; }
  std::shared_ptr<Module> clone() const override;

  const Tensor& weight() const { return weight_; }
  int64_t padding_idx() const { return padding_idx_; }

 private:
  Tensor weight_;
  int64_t padding_idx_;
};

}  // namespace tandem::nn
