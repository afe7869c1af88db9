// Loss and accuracy over classifier or sequence predictions.
#include "train/loss.h"

#include <stdexcept>
#include <string>

#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape.h"

namespace tandem::train {
namespace {

void check_shapes(const char* what, const Tensor& logits, const Tensor& targets) {
  if (!logits.defined() || !targets.defined() || logits.dim() < 2 || logits.dim() > 3 ||
      targets.dim() != logits.dim() - 1 ||
      !std::equal(targets.shape().begin(), targets.shape().end(), logits.shape().begin()))
    throw std::invalid_argument(std::string("[") + what +
                                "] expected logits (N, C) with targets (N), or (N, T, V) with (N, T), got " +
                                (logits.defined() ? shape_str(logits.shape()) : std::string("undefined")) + " and " +
                                (targets.defined() ? shape_str(targets.shape()) : std::string("undefined")));
}

}  // namespace

Tensor prediction_loss(const Tensor& logits, const Tensor& targets, Reduction reduction) {
  check_shapes("prediction_loss", logits, targets);
  if (logits.dim() == 2) return cross_entropy(logits, targets, {.reduction = reduction});
  return cross_entropy(reshape(logits, {-1, logits.size(2)}), reshape(targets, {-1}), {.reduction = reduction});
}

Tensor correct_predictions(const Tensor& logits, const Tensor& targets) {
  check_shapes("correct_predictions", logits, targets);
  return sum(eq(argmax(logits, logits.dim() - 1), targets));
}

}  // namespace tandem::train
