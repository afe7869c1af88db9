// Containers: Sequential (children "0", "1", ... applied in order, each to the previous
// output) and ModuleDict (named children, no computation of its own).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "layers/module.h"

namespace tandem::nn {

class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<std::shared_ptr<Module>> modules);

  /// Appends `module` under the name of its position.
  void push_back(std::shared_ptr<Module> module);
  /// Runs every child in order. A Linear followed by a ReLU or GELU (exactly those
  /// classes) runs as one linear() with the activation fused into its epilogue, unless
  /// turned off with set_fuse_activations(false); the result is the same up to rounding.
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Sequential"; }
  std::shared_ptr<Module> clone() const override;

  /// Runs the layers as `segments` contiguous groups of nearly equal size, each but the
  /// last checkpointed (nn::Checkpointed), as torch.utils.checkpoint.checkpoint_sequential:
  /// forward keeps only the groups' inputs and backward recomputes each group. The last
  /// group runs plainly (backward needs its activations first, so recomputing them would
  /// save nothing). With n layers the memory kept is least near sqrt(n) segments. 0 (or
  /// 1) turns it off; more segments than layers gives one per layer. Names, parameters
  /// and the state dict do not change, and parents holding this Sequential see it.
  void set_checkpoint_segments(int64_t segments);
  int64_t checkpoint_segments() const { return static_cast<int64_t>(segments_.size()); }
  /// Sets the mode of the layers and of the checkpointed groups.
  void train(bool on = true) override;
  /// Whether forward fuses Linear + ReLU/GELU pairs (on by default; copied by clone()).
  void set_fuse_activations(bool on);
  bool fuse_activations() const { return fuse_activations_; }

  size_t size() const { return modules_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return modules_.at(i); }
  auto begin() const { return modules_.begin(); }
  auto end() const { return modules_.end(); }

 private:
  std::vector<std::shared_ptr<Module>> modules_;
  // Checkpointed groups of modules_ (the same layer objects), run instead when set.
  std::vector<std::shared_ptr<Module>> segments_;
  bool fuse_activations_ = true;
};

/// Named children and no forward, as torch.nn.ModuleDict: a grouping level in parameter
/// names ("transformer.h.0.attn...") for models that call the children themselves.
class ModuleDict : public Module {
 public:
  ModuleDict() = default;
  /// Adds `module` as child `key` (keys are unique, as for any child).
  void insert(const std::string& key, std::shared_ptr<Module> module) { add_child(key, std::move(module)); }
  std::string name() const override { return "ModuleDict"; }
  std::shared_ptr<Module> clone() const override;
};

}  // namespace tandem::nn
