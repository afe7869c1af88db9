// The Trainer's loss and accuracy for both kinds of model it trains: classifiers
// (logits (N, C), class indices (N)) and sequence models such as a GPT (logits
// (N, T, V), token ids (N, T)), where every position is one prediction.
#pragma once

#include "engine/ops/nn.h"
#include "engine/tensor.h"

namespace tandem::train {

/// Cross-entropy over every prediction: of (N, C) logits against (N) targets, or of
/// (N, T, V) logits against (N, T) targets, as PyTorch users write
/// cross_entropy(logits.view(-1, V), targets.view(-1)). Throws std::invalid_argument
/// naming both shapes when targets are not logits' shape without its last dim.
Tensor prediction_loss(const Tensor& logits, const Tensor& targets, Reduction reduction = Reduction::kMean);

/// How many predictions argmax over the last dim gets right: an int64 scalar on the
/// logits' device (no host synchronisation).
Tensor correct_predictions(const Tensor& logits, const Tensor& targets);

}  // namespace tandem::train
