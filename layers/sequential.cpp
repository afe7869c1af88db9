// Sequential container.
#include "layers/sequential.h"

#include <string>

namespace tandem::nn {

Sequential::Sequential(std::initializer_list<std::shared_ptr<Module>> modules) {
  for (const auto& m : modules) push_back(m);
}

void Sequential::push_back(std::shared_ptr<Module> module) {
  add_child(std::to_string(modules_.size()), module);
  modules_.push_back(std::move(module));
}

Tensor Sequential::forward(const Tensor& input) {
  Tensor x = input;
  for (const auto& m : modules_) x = m->forward(x);
  return x;
}

std::shared_ptr<Module> Sequential::clone() const {
  // Any modules can be held, so the copy is made of the children's own clones.
  return clone_via([this] {
    auto copy = std::make_shared<Sequential>();
    for (const auto& m : modules_) copy->push_back(m->clone());
    return copy;
  });
}

}  // namespace tandem::nn
