// Flatten layer over the flatten shape op.
#include "layers/flatten.h"

#include "engine/ops/shape.h"

namespace tandem::nn {

Tensor Flatten::forward(const Tensor& input) { return flatten(input, start_dim_, end_dim_); }

std::shared_ptr<Module> Flatten::clone() const {
  return clone_via([this] { return std::make_shared<Flatten>(start_dim_, end_dim_); });
}

}  // namespace tandem::nn
