// Module tree walking, in-place device/dtype moves, and state dict save/restore.
#include "layers/module.h"

#include <map>
#include <stdexcept>
#include <typeinfo>
#include <unordered_set>

#include "engine/autograd.h"
#include "engine/random.h"

namespace tandem::nn {
namespace {

std::string join(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  if (name.empty()) return prefix;  // a module's own entry in named_modules()
  return prefix + "." + name;
}

}  // namespace

Tensor Module::forward(const Tensor&) {
  throw std::logic_error("[" + name() + "::forward] this module has no forward; call its children instead");
}

std::shared_ptr<Module> Module::clone() const {
  throw std::invalid_argument("[Module::clone] expected a module that implements clone(), got " + name() +
                              ", which does not; override clone() (see Linear::clone, built with clone_via) to "
                              "use it with DataParallel");
}

std::shared_ptr<Module> Module::clone_via(const std::function<std::shared_ptr<Module>()>& make) const {
  // Restores the generator even when the constructor throws, so a failed clone also
  // leaves the caller's random streams where they were.
  struct GeneratorStateGuard {
    Generator& generator = default_generator(Device::cpu());
    PhiloxState saved = generator.state();
    ~GeneratorStateGuard() { generator.set_state(saved); }
  };
  std::shared_ptr<Module> copy;
  {
    GeneratorStateGuard guard;
    copy = make();
  }
  if (!copy) throw std::logic_error("[" + name() + "::clone] the constructor passed to clone_via returned null");
  const Module& made = *copy;
  if (typeid(made) != typeid(*this)) {
    throw std::invalid_argument("[Module::clone] expected a module that implements clone() for its own type, got " +
                                name() + ", which inherits clone() from " + made.name() +
                                "; override clone() in it to use it with DataParallel");
  }
  copy->copy_state_from(*this);
  return copy;
}

void Module::copy_state_from(const Module& source) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("[" + name() + "::clone] expected the copy to have the same structure as the "
                                "original, but " + what + " (was the original changed after construction?)");
  };
  auto copy_list = [&](std::vector<std::pair<std::string, Tensor>>& mine,
                       const std::vector<std::pair<std::string, Tensor>>& theirs, const char* kind) {
    if (mine.size() != theirs.size()) {
      fail(std::string("the copy has ") + std::to_string(mine.size()) + " " + kind + "s and the original " +
           std::to_string(theirs.size()));
    }
    autograd::NoGradGuard no_grad;
    for (size_t i = 0; i < mine.size(); ++i) {
      Tensor& dst = mine[i].second;
      const Tensor& src = theirs[i].second;
      if (mine[i].first != theirs[i].first || dst.shape() != src.shape()) {
        fail(std::string(kind) + " " + std::to_string(i) + " is \"" + mine[i].first + "\" " +
             shape_str(dst.shape()) + " in the copy and \"" + theirs[i].first + "\" " + shape_str(src.shape()) +
             " in the original");
      }
      Tensor data = Tensor::empty(src.shape(), {.dtype = src.dtype(), .device = src.device()});
      data.copy_(src);
      dst.set_data(data);  // in place: layers hold handles sharing this tensor
      if (dst.is_leaf() && dst.requires_grad() != src.requires_grad()) dst.set_requires_grad(src.requires_grad());
    }
  };
  copy_list(parameters_, source.parameters_, "parameter");
  copy_list(buffers_, source.buffers_, "buffer");
  if (children_.size() != source.children_.size()) {
    fail("the copy has " + std::to_string(children_.size()) + " children and the original " +
         std::to_string(source.children_.size()));
  }
  for (size_t i = 0; i < children_.size(); ++i) {
    if (children_[i].first != source.children_[i].first) {
      fail("child " + std::to_string(i) + " is \"" + children_[i].first + "\" in the copy and \"" +
           source.children_[i].first + "\" in the original");
    }
    children_[i].second->copy_state_from(*source.children_[i].second);
  }
  training_ = source.training_;
}

void Module::check_new_name(const std::string& name, const char* what) const {
  if (name.empty() || name.find('.') != std::string::npos) {
    throw std::invalid_argument(std::string("[Module::register_") + what +
                                "] expected a non-empty name without '.', got \"" + name + "\"");
  }
  auto taken = [&](const auto& list) {
    for (const auto& entry : list) {
      if (entry.first == name) return true;
    }
    return false;
  };
  if (taken(parameters_) || taken(buffers_) || taken(children_)) {
    throw std::invalid_argument(std::string("[Module::register_") + what + "] expected a new name, got \"" + name +
                                "\", which " + this->name() + " already uses");
  }
}

Tensor& Module::register_parameter(const std::string& name, Tensor tensor, bool requires_grad) {
  check_new_name(name, "parameter");
  if (!tensor.defined()) {
    throw std::invalid_argument("[Module::register_parameter] expected a defined tensor for \"" + name +
                                "\", got an undefined one");
  }
  // A parameter is a leaf: cut any history the initialiser left.
  if (!tensor.is_leaf()) tensor = tensor.detach();
  tensor.set_requires_grad(requires_grad);
  parameters_.emplace_back(name, std::move(tensor));
  return parameters_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor tensor) {
  check_new_name(name, "buffer");
  if (!tensor.defined()) {
    throw std::invalid_argument("[Module::register_buffer] expected a defined tensor for \"" + name +
                                "\", got an undefined one");
  }
  buffers_.emplace_back(name, tensor.detach());
  return buffers_.back().second;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name, "module");
  if (!module) {
    throw std::invalid_argument("[Module::register_module] expected a module for \"" + name + "\", got null");
  }
  if (module.get() == this) {
    throw std::invalid_argument("[Module::register_module] expected another module for \"" + name + "\", got itself");
  }
  children_.emplace_back(name, std::move(module));
}

std::vector<std::pair<std::string, Tensor>> Module::all_named_parameters(bool recurse) const {
  std::vector<std::pair<std::string, Tensor>> out(parameters_.begin(), parameters_.end());
  if (recurse) {
    for (const auto& [child_name, child] : children_) {
      for (auto& [name, t] : child->all_named_parameters(true)) out.emplace_back(join(child_name, name), t);
    }
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters(bool recurse) const {
  // A tensor registered under two names (tied weights, a shared submodule) is one
  // parameter: listed once, under its first name, as torch's named_parameters() does,
  // so optimizers and DDP step and reduce it once.
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& entry : all_named_parameters(recurse))
    if (seen.insert(entry.second.impl()).second) out.push_back(std::move(entry));
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers(bool recurse) const {
  std::vector<std::pair<std::string, Tensor>> out(buffers_.begin(), buffers_.end());
  if (recurse) {
    for (const auto& [child_name, child] : children_) {
      for (auto& [name, t] : child->named_buffers(true)) out.emplace_back(join(child_name, name), t);
    }
  }
  return out;
}

std::vector<Tensor> Module::buffers(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_buffers(recurse)) out.push_back(t);
  return out;
}

std::vector<std::shared_ptr<Module>> Module::children() const {
  std::vector<std::shared_ptr<Module>> out;
  for (const auto& entry : children_) out.push_back(entry.second);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  // A module created on the stack has no shared_ptr owner; it still lists itself.
  std::shared_ptr<Module> self = weak_from_this().lock();
  if (!self) self = std::shared_ptr<Module>(std::shared_ptr<Module>(), this);
  out.emplace_back("", self);
  for (const auto& [child_name, child] : children_) {
    for (auto& [name, m] : child->named_modules()) out.emplace_back(join(child_name, name), m);
  }
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& entry : children_) entry.second->train(on);
}

template <class F>
void Module::for_each_tensor(F&& f) {
  for (auto& entry : parameters_) f(entry.second, /*is_parameter=*/true);
  for (auto& entry : buffers_) f(entry.second, /*is_parameter=*/false);
  for (auto& entry : children_) entry.second->for_each_tensor(f);
}

void Module::to(Device device) {
  autograd::NoGradGuard no_grad;
  for_each_tensor([&](Tensor& t, bool) {
    if (!(t.device() == device)) t.set_data(t.detach().to(device));
    Tensor g = t.grad();
    if (g.defined() && !(g.device() == device)) t.set_grad(g.to(device));
  });
}

void Module::to(DType dtype) {
  if (!is_floating(dtype)) {
    throw std::invalid_argument("[Module::to] expected a floating dtype, got " + std::string(dtype_name(dtype)));
  }
  autograd::NoGradGuard no_grad;
  for_each_tensor([&](Tensor& t, bool) {
    if (!is_floating(t.dtype())) return;
    if (t.dtype() != dtype) t.set_data(t.detach().to(dtype));
    Tensor g = t.grad();
    if (g.defined() && g.dtype() != dtype) t.set_grad(g.to(dtype));
  });
}

void Module::zero_grad(bool set_to_none) {
  for (Tensor& p : parameters()) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (set_to_none) {
      p.set_grad(Tensor());
    } else {
      g.zero_();
    }
  }
}

StateDict Module::state_dict() const {
  // torch's order: each module's own parameters, then its own buffers, then its
  // children's entries, depth first.
  StateDict out;
  for (const auto& [name, t] : parameters_) out.emplace_back(name, t.detach());
  for (const auto& [name, t] : buffers_) out.emplace_back(name, t.detach());
  for (const auto& [child_name, child] : children_) {
    for (auto& [name, t] : child->state_dict()) out.emplace_back(join(child_name, name), std::move(t));
  }
  return out;
}

void Module::load_state_dict(const StateDict& dict, bool strict) {
  StateDict own = all_named_parameters(true);  // every name, as state_dict() lists them
  StateDict own_buffers = named_buffers();
  own.insert(own.end(), own_buffers.begin(), own_buffers.end());  // live tensors, not state_dict()'s detached copies
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : dict) given[name] = &t;
  std::map<std::string, const Tensor*> mine;
  for (const auto& [name, t] : own) mine[name] = &t;

  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [name, t] : own) {
    auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
    } else if (!it->second->defined() || it->second->shape() != t.shape()) {
      mismatched.push_back(name + " (expected shape " + shape_str(t.shape()) + ", got " +
                           (it->second->defined() ? shape_str(it->second->shape()) : std::string("undefined")) + ")");
    }
  }
  for (const auto& [name, t] : dict) {
    if (!mine.count(name)) unexpected.push_back(name);
  }
  if (!strict) {
    missing.clear();
    unexpected.clear();
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    auto list = [](const std::vector<std::string>& items) {
      std::string s;
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) s += ", ";
        s += items[i];
      }
      return s;
    };
    // Built by appending: GCC 12 warns falsely (-Wrestrict) on "literal" + std::string&&.
    std::string msg = "[";
    msg += name();
    msg += "::load_state_dict] state dict does not match the module:";
    if (!missing.empty()) msg += " missing keys: " + list(missing) + ";";
    if (!unexpected.empty()) msg += " unexpected keys: " + list(unexpected) + ";";
    if (!mismatched.empty()) msg += " shape mismatch: " + list(mismatched) + ";";
    msg.pop_back();
    throw std::invalid_argument(msg);
  }

  autograd::NoGradGuard no_grad;
  for (auto& [name, t] : own) {
    auto it = given.find(name);
    if (it == given.end()) continue;
    // `t` shares its implementation with the module's own handle, so this writes in place.
    Tensor target = t;
    target.copy_(*it->second);
  }
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

}  // namespace tandem::nn
