// Sequential: children "0", "1", ... applied in order, each to the previous output.
#pragma once

#include <initializer_list>
#include <memory>
#include <vector>

#include "layers/module.h"

namespace tandem::nn {

class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<std::shared_ptr<Module>> modules);

  /// Appends `module` under the name of its position.
  void push_back(std::shared_ptr<Module> module);
  /// Runs every child in order.
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Sequential"; }
  std::shared_ptr<Module> clone() const override;

  size_t size() const { return modules_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return modules_.at(i); }
  auto begin() const { return modules_.begin(); }
  auto end() const { return modules_.end(); }

 private:
  std::vector<std::shared_ptr<Module>> modules_;
};

}  // namespace tandem::nn
