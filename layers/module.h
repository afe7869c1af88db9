// nn::Module: the base of every layer and model. A module owns named parameters,
// buffers and child modules in registration order, walks them recursively with
// dotted names, moves them between devices and dtypes in place, and saves and
// restores them as a state dict.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace tandem::nn {

/// Named tensors in registration order (parameters and buffers), as torch's state_dict().
using StateDict = std::vector<std::pair<std::string, Tensor>>;

class Module : public std::enable_shared_from_this<Module> {
 public:
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// The layer's computation. The base class throws: layers override it.
  virtual Tensor forward(const Tensor& input);
  Tensor operator()(const Tensor& input) { return forward(input); }
  /// Type name shown in errors and printouts ("Linear", "Sequential", ...).
  virtual std::string name() const { return "Module"; }
  /// A new module of the same type and configuration whose parameters and buffers are
  /// copies (same values, dtype, device and requires_grad; independent storage) and
  /// whose training flags match; gradients, hooks and sync hooks are not copied. Never
  /// advances the default generators. Every built-in layer and model overrides it; the
  /// base class throws std::invalid_argument naming the type (DataParallel needs it).
  virtual std::shared_ptr<Module> clone() const;

  // ---- the tree -----------------------------------------------------------------------
  /// Parameters of this module and its descendants, depth first in registration order.
  std::vector<Tensor> parameters(bool recurse = true) const;
  /// As parameters(), with dotted names ("0.weight", "encoder.fc.bias"). A tensor
  /// registered under several names (tied weights) appears once, under the first;
  /// state_dict() keeps every name.
  std::vector<std::pair<std::string, Tensor>> named_parameters(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor>> named_buffers(bool recurse = true) const;
  /// Direct children.
  std::vector<std::shared_ptr<Module>> children() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const { return children_; }
  /// Every module of the tree, this one first, with dotted names ("" for this one).
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules();

  // ---- mode, placement ----------------------------------------------------------------
  /// Sets training mode on this module and every descendant (dropout, batch norm).
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  /// Moves every parameter, gradient and buffer to `device` in place (Tensor::set_data),
  /// so tensors held elsewhere (an optimizer's parameter list) see the move.
  void to(Device device);
  /// Converts floating parameters, gradients and buffers to `dtype` in place;
  /// integer buffers (counters, indices) keep their type.
  void to(DType dtype);
  /// Drops (set_to_none) or zeroes every parameter's gradient.
  void zero_grad(bool set_to_none = true);

  // ---- state --------------------------------------------------------------------------
  /// Parameters and buffers by dotted name, sharing data with the module (detached).
  StateDict state_dict() const;
  /// Copies `dict` into the module's tensors (converting dtype and device). Shapes must
  /// match; with `strict`, keys must match exactly. Every problem (missing keys,
  /// unexpected keys, shape mismatches with name, expected and got shape) is reported
  /// in one std::invalid_argument, and nothing is copied then.
  void load_state_dict(const StateDict& dict, bool strict = true);

  /// Number of parameter elements in the tree.
  int64_t num_parameters() const;

  // ---- registration (in the constructor of a layer or model) -----------------------------
  /// Adds a parameter (it is made a leaf that requires grad) and returns the handle kept.
  Tensor& register_parameter(const std::string& name, Tensor tensor, bool requires_grad = true);
  /// Adds a buffer: state that is saved and moved but not trained (running statistics).
  Tensor& register_buffer(const std::string& name, Tensor tensor);
  /// Adds a child module.
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }
  void add_child(const std::string& name, std::shared_ptr<Module> module);

 protected:
  Module() = default;

  /// How clone() overrides are written: runs `make` (which builds a fresh module of
  /// this type and configuration through its constructor) with the CPU default
  /// generator's state saved and restored, so the constructor's random init does not
  /// perturb the caller's streams, then copies this module's state into the result
  /// (copy_state_from). Throws if `make` returned another type than this one's (a
  /// subclass that did not override clone()).
  std::shared_ptr<Module> clone_via(const std::function<std::shared_ptr<Module>()>& make) const;
  /// Copies `source`'s parameters and buffers (values, dtype, device, requires_grad)
  /// into this module's, replacing their storage, and its training flags, recursively.
  /// Both trees must have the same names and shapes, as two constructions with the
  /// same configuration do.
  void copy_state_from(const Module& source);

 private:
  /// named_parameters() without removing repeated tensors (state_dict's names).
  std::vector<std::pair<std::string, Tensor>> all_named_parameters(bool recurse) const;
  void check_new_name(const std::string& name, const char* what) const;
  template <class F>
  void for_each_tensor(F&& f);  // every parameter and buffer of the tree, in place

  std::vector<std::pair<std::string, Tensor>> parameters_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace tandem::nn
