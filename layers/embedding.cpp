// Embedding layer over the embedding op.
#include "layers/embedding.h"

#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/ops/factory.h"
#include "engine/ops/nn.h"

namespace tandem::nn {

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, int64_t padding_idx) : padding_idx_(padding_idx) {
  if (num_embeddings < 1 || embedding_dim < 1) {
    throw std::invalid_argument("[Embedding] expected num_embeddings >= 1 and embedding_dim >= 1, got " +
                                std::to_string(num_embeddings) + " and " + std::to_string(embedding_dim));
  }
  if (padding_idx >= num_embeddings || padding_idx < -1) {
    throw std::invalid_argument("[Embedding] expected padding_idx in [-1, " + std::to_string(num_embeddings) +
                                "), got " + std::to_string(padding_idx));
  }
  autograd::NoGradGuard no_grad;
  Tensor w = Tensor::empty({num_embeddings, embedding_dim});
  normal_(w, 0.0, 1.0);
  if (padding_idx >= 0) w.narrow(0, padding_idx, 1).zero_();
  weight_ = register_parameter("weight", w);
}

Tensor Embedding::forward(const Tensor& indices) { return embedding(weight_, indices, padding_idx_); }

std::shared_ptr<Module> Embedding::clone() const {
  return clone_via([this] { return std::make_shared<Embedding>(weight_.size(0), weight_.size(1), padding_idx_); });
}

}  // namespace tandem::nn
