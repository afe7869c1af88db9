// Optimizer base: groups, zero_grad, and state dict save/restore with errors that
// list every problem at once.
#include "optim/optimizer.h"

#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"

namespace tandem::optim {

void Optimizer::zero_grad(bool set_to_none) {
  for (ParamGroup& group : groups_) {
    for (Tensor& p : group.params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (set_to_none) {
        p.set_grad(Tensor());
      } else {
        g.zero_();
      }
    }
  }
}

double Optimizer::lr() const {
  if (groups_.empty()) throw std::logic_error("[Optimizer::lr] expected at least one parameter group, got none");
  return groups_.front().lr.value();
}

void Optimizer::set_lr(double lr) {
  for (size_t g = 0; g < groups_.size(); ++g) set_group_lr(g, lr);
}

void Optimizer::set_group_lr(size_t g, double lr) {
  if (g >= groups_.size())
    throw std::invalid_argument("[Optimizer::set_group_lr] expected a group index below " +
                                std::to_string(groups_.size()) + ", got " + std::to_string(g));
  if (!(lr >= 0.0))
    throw std::invalid_argument("[Optimizer::set_group_lr] expected lr >= 0, got " + std::to_string(lr));
  // Checked before anything changes: a refused call leaves the lr as it was.
  for (const auto& [key, copy] : device_lrs_) {
    const Device device{std::get<1>(key), std::get<2>(key)};
    if (std::get<0>(key) == g && copy.written != lr && capturing(device))
      throw std::logic_error("[Optimizer::set_group_lr] expected no CUDA-graph capture on " + device.str() +
                             ", got one in progress: the lr is set between replays, not inside a graph");
  }
  groups_[g].lr = lr;
  for (auto& [key, copy] : device_lrs_) {
    if (std::get<0>(key) != g || copy.written == lr) continue;
    copy.value.fill_(lr);
    copy.written = lr;
  }
}

bool Optimizer::capturing(Device device) {
  return device.is_cuda() && cuda::current_stream(device.index).is_capturing();
}

void Optimizer::check_captured_step(const std::string& name, bool first_step, const std::string& what) const {
  if (!capturable())
    throw std::logic_error("[" + name + "::step] expected an optimizer constructed with capturable = true inside a "
                           "CUDA-graph capture, got one that is not: its lr and first steps would be fixed in the "
                           "graph");
  if (first_step)
    throw std::logic_error("[" + name + "::step] expected every parameter to have stepped once before a CUDA-graph "
                           "capture, got " + what + " without optimizer state: its state would be made again at every "
                           "replay; run one step eagerly before capturing (after a load_state_dict too)");
}

const double* Optimizer::lr_on_device(const std::string& name, size_t group, Device device) {
  const double lr = groups_.at(group).lr.value();
  const auto key = std::make_tuple(group, device.type, device.index);
  auto it = device_lrs_.find(key);
  const bool made = it != device_lrs_.end();
  if (made && it->second.written == lr) return it->second.value.data<double>();
  // Checked before the entry exists: a refused capture leaves nothing half made.
  if (capturing(device))
    throw std::logic_error("[" + name + "::step] expected the lr of group " + std::to_string(group) + " on " +
                           device.str() + " to be on the device before a CUDA-graph capture, got " +
                           (made ? "a changed lr (change it with set_lr or set_group_lr)"
                                 : "none (run one step eagerly before capturing)"));
  DeviceLr& copy = device_lrs_[key];
  if (!made) copy.value = Tensor::empty({1}, {.dtype = DType::kF64, .device = device});
  copy.value.fill_(lr);
  copy.written = lr;
  return copy.value.data<double>();
}

void Optimizer::add_param_group(ParamGroup group) {
  if (!group.lr) group.lr = default_lr_;
  if (!group.weight_decay) group.weight_decay = default_weight_decay_;
  if (*group.lr < 0.0) throw std::invalid_argument("[Optimizer] expected lr >= 0, got " + std::to_string(*group.lr));
  if (*group.weight_decay < 0.0) {
    throw std::invalid_argument("[Optimizer] expected weight_decay >= 0, got " + std::to_string(*group.weight_decay));
  }
  // A parameter listed twice would be stepped twice, and the multi-tensor kernels would
  // update its memory from two threads (or CUDA blocks) at once: refused, as PyTorch does.
  std::unordered_map<const void*, std::string> seen;  // data -> where it was listed
  const auto where = [](size_t g, size_t i) { return "index " + std::to_string(i) + " of group " + std::to_string(g); };
  for (size_t g = 0; g < groups_.size(); ++g)
    for (size_t i = 0; i < groups_[g].params.size(); ++i)
      if (groups_[g].params[i].numel() > 0) seen.emplace(groups_[g].params[i].data_ptr(), where(g, i));
  for (size_t i = 0; i < group.params.size(); ++i) {
    if (!group.params[i].defined()) {
      throw std::invalid_argument("[Optimizer] expected defined parameters, got an undefined tensor at index " +
                                  std::to_string(i) + " of group " + std::to_string(groups_.size()));
    }
    if (group.params[i].numel() == 0) continue;
    const auto [it, added] = seen.emplace(group.params[i].data_ptr(), where(groups_.size(), i));
    if (!added)
      throw std::invalid_argument("[Optimizer] expected each parameter once, got the tensor at " +
                                  where(groups_.size(), i) + " again (first at " + it->second +
                                  "); Module::parameters() lists a tensor held under two names once");
  }
  groups_.push_back(std::move(group));
}

size_t Optimizer::flat_index(size_t g, size_t p) const {
  size_t index = p;
  for (size_t i = 0; i < g; ++i) index += groups_[i].params.size();
  return index;
}

std::vector<Tensor>& Optimizer::state(const std::string& kind) {
  size_t total = flat_index(groups_.size(), 0);
  std::vector<Tensor>& slots = state_[kind];
  if (slots.size() < total) slots.resize(total);
  return slots;
}

std::vector<Optimizer::DeviceBatch> Optimizer::grads_by_device(const std::string& name, const char* op) const {
  using Key = std::tuple<DeviceType, int, DType>;
  std::map<Key, std::vector<GradItem>> by_key;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& group = groups_[g];
    for (size_t i = 0; i < group.params.size(); ++i) {
      const Tensor& p = group.params[i];
      Tensor grad = p.grad();
      if (!grad.defined()) continue;
      const std::string where = "parameter " + std::to_string(i) + " of group " + std::to_string(g) + " (shape " +
                                shape_str(p.shape()) + ")";
      if (!(grad.device() == p.device())) {
        throw std::invalid_argument("[" + name + "] expected the gradient of " + where + " on " + p.device().str() +
                                    " like the parameter, got it on " + grad.device().str());
      }
      if (grad.dtype() != p.dtype() || grad.shape() != p.shape()) {
        throw std::invalid_argument("[" + name + "] expected the gradient of " + where + " to be " +
                                    std::string(dtype_name(p.dtype())) + " " + shape_str(p.shape()) + ", got " +
                                    std::string(dtype_name(grad.dtype())) + " " + shape_str(grad.shape()));
      }
      if (p.dtype() != DType::kF32 && p.dtype() != DType::kF64) throw_unsupported(op, p.device(), p.dtype());
      const Device d = p.device();
      by_key[Key{d.type, d.index, p.dtype()}].push_back(
          {p, std::move(grad), flat_index(g, i), g, group.lr.value(), group.weight_decay.value()});
    }
  }
  std::vector<DeviceBatch> batches;
  for (auto& [key, items] : by_key) {
    batches.push_back({Device{std::get<0>(key), std::get<1>(key)}, std::get<2>(key), std::move(items)});
  }
  return batches;
}

void Optimizer::step_unless(const Tensor&) {
  throw std::invalid_argument(
      "[Optimizer::step_unless] expected an optimizer that skips its step on the device (SGD, Adam or AdamW "
      "constructed with capturable = true), got one that does not");
}

const float* Optimizer::found_inf_ptr(const std::string& name, const Tensor& found_inf,
                                      const std::vector<DeviceBatch>& batches) {
  if (!found_inf.defined()) return nullptr;
  const std::string where = "[" + name + "::step_unless] expected found_inf ";
  if (found_inf.dtype() != DType::kF32 || found_inf.numel() != 1) {
    throw std::invalid_argument(where + "to be a float32 tensor of one element, got " + std::string(dtype_name(found_inf.dtype())) +
                                " " + shape_str(found_inf.shape()));
  }
  for (const DeviceBatch& batch : batches) {
    if (batch.device != found_inf.device()) {
      throw std::invalid_argument(where + "on the device of the gradients (" + batch.device.str() + "), got " +
                                  found_inf.device().str());
    }
  }
  return static_cast<const float*>(found_inf.data_ptr());
}

OptimizerState Optimizer::state_dict() const {
  OptimizerState out;
  for (const auto& [kind, slots] : state_) {
    for (size_t i = 0; i < slots.size(); ++i) {
      if (slots[i].defined()) out.tensors[kind + "." + std::to_string(i)] = slots[i].detach();
    }
  }
  out.scalars["step_count"] = static_cast<double>(step_count_);
  for (size_t g = 0; g < groups_.size(); ++g) {
    out.scalars["param_groups." + std::to_string(g) + ".lr"] = groups_[g].lr.value();
    out.scalars["param_groups." + std::to_string(g) + ".weight_decay"] = groups_[g].weight_decay.value();
  }
  return out;
}

void Optimizer::load_state_dict(const OptimizerState& saved) {
  std::vector<std::string> problems;
  std::vector<Tensor> params;
  for (const ParamGroup& group : groups_) params.insert(params.end(), group.params.begin(), group.params.end());

  // Check everything first, so a failed load leaves the optimizer untouched.
  std::set<std::string> known;
  for (const std::string& kind : state_kinds()) {
    for (size_t i = 0; i < params.size(); ++i) {
      std::string key = kind + "." + std::to_string(i);
      auto it = saved.tensors.find(key);
      if (it == saved.tensors.end()) continue;  // never stepped: no state yet
      known.insert(key);
      if (!it->second.defined() || it->second.shape() != params[i].shape()) {
        problems.push_back("tensor " + key + ": expected shape " + shape_str(params[i].shape()) + ", got " +
                           (it->second.defined() ? shape_str(it->second.shape()) : std::string("undefined")));
      }
    }
  }
  for (const auto& [key, tensor] : saved.tensors) {
    if (!known.count(key)) problems.push_back("unexpected tensor " + key);
  }
  std::set<std::string> known_scalars{"step_count"};
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (const char* field : {".lr", ".weight_decay"}) {
      std::string key = "param_groups." + std::to_string(g) + field;
      known_scalars.insert(key);
      auto it = saved.scalars.find(key);
      if (it == saved.scalars.end()) {
        problems.push_back("missing scalar " + key);
      } else if (!(it->second >= 0.0)) {
        problems.push_back("scalar " + key + ": expected >= 0, got " + std::to_string(it->second));
      }
    }
  }
  if (!saved.scalars.count("step_count")) problems.push_back("missing scalar step_count");
  for (const auto& [key, value] : saved.scalars) {
    if (!known_scalars.count(key)) problems.push_back("unexpected scalar " + key);
  }
  if (!problems.empty()) {
    std::string msg = "[Optimizer::load_state_dict] state does not match this optimizer (" +
                      std::to_string(groups_.size()) + " groups, " + std::to_string(params.size()) +
                      " parameters): ";
    for (size_t i = 0; i < problems.size(); ++i) {
      if (i) msg += "; ";
      msg += problems[i];
    }
    throw std::invalid_argument(msg);
  }

  autograd::NoGradGuard no_grad;
  // Loaded into the tensors a parameter already has for a kind (so a CUDA graph captured
  // before the load replays with the loaded values), else into a private copy in the
  // parameter's dtype and on its device; state the saved dict lacks is dropped.
  std::map<std::string, std::vector<Tensor>> previous = std::move(state_);
  state_.clear();
  for (const std::string& kind : state_kinds()) {
    std::vector<Tensor>& slots = state(kind);
    const std::vector<Tensor>& old = previous[kind];
    for (size_t i = 0; i < params.size(); ++i) {
      auto it = saved.tensors.find(kind + "." + std::to_string(i));
      if (it == saved.tensors.end()) continue;
      Tensor t = i < old.size() && old[i].defined()
                     ? old[i]
                     : Tensor::empty(params[i].shape(), {.dtype = params[i].dtype(), .device = params[i].device()});
      // The optimizer's own state_dict() shares its tensors: nothing to copy then.
      if (t.data_ptr() != it->second.data_ptr()) t.copy_(it->second);
      slots[i] = t;
    }
  }
  step_count_ = static_cast<int64_t>(saved.scalars.at("step_count"));
  for (size_t g = 0; g < groups_.size(); ++g) {
    set_group_lr(g, saved.scalars.at("param_groups." + std::to_string(g) + ".lr"));
    groups_[g].weight_decay = saved.scalars.at("param_groups." + std::to_string(g) + ".weight_decay");
  }
}

}  // namespace tandem::optim
