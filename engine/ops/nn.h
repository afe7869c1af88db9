// Neural-network ops: softmax / log-softmax, fused cross-entropy, MSE, dropout, embedding.
#pragma once

#include "engine/random.h"
#include "engine/tensor.h"

namespace tandem {

/// exp(x - max) / sum(exp(x - max)) along `dim`.
Tensor softmax(const Tensor& x, int64_t dim = -1);
/// x - max - log(sum(exp(x - max))) along `dim`.
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

enum class Reduction { kNone, kMean, kSum };

struct CrossEntropyOptions {
  Reduction reduction = Reduction::kMean;
  int64_t ignore_index = -100;   // targets equal to this contribute nothing (and are not counted by kMean)
  double label_smoothing = 0.0;  // in [0, 1]: target = (1-ε)·onehot + ε/C
};
/// Fused log-softmax + negative log-likelihood: logits (N, C), targets int64 (N) in [0, C).
/// Matches torch.nn.functional.cross_entropy, including label smoothing with ignore_index.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const CrossEntropyOptions& options = {});

/// Mean (or sum / none) of (input - target)² element-wise.
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::kMean);

/// Zeroes each element with probability p and scales the rest by 1/(1-p) when
/// `training`; the mask comes from `gen` (the device's default generator when null)
/// and is recomputed from the same Philox state in backward rather than stored.
Tensor dropout(const Tensor& x, double p, bool training = true, Generator* gen = nullptr);

/// Rows of `weight` (V, D) picked by int64 `indices` of any shape: output (..., D).
/// Rows equal to `padding_idx` (if >= 0) get no gradient.
Tensor embedding(const Tensor& weight, const Tensor& indices, int64_t padding_idx = -1);

}  // namespace tandem
