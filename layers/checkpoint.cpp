// Activation checkpointing: the "checkpoint" autograd node (forward without a graph,
// recomputation plus nested backward in its rule) and the Checkpointed module wrapper.
#include "layers/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <utility>

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/random.h"

namespace tandem::nn {
namespace {

thread_local int t_recompute_depth = 0;

// The default generators of a set of devices, captured at one moment.
struct GeneratorStates {
  std::vector<std::pair<Device, PhiloxState>> states;

  static GeneratorStates capture(const std::vector<Device>& devices) {
    GeneratorStates s;
    for (const Device& d : devices) s.states.emplace_back(d, default_generator(d).state());
    return s;
  }
  void restore() const {
    for (const auto& [d, state] : states) default_generator(d).set_state(state);
  }
};

// Each device once. Only the devices of the region's tensors: restoring a generator
// another thread draws from (DataParallel replicas on other devices) would race.
std::vector<Device> devices_of(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  std::vector<Device> out;
  for (const auto* list : {&a, &b}) {
    for (const Tensor& t : *list) {
      if (!t.defined()) continue;
      bool seen = false;
      for (const Device& d : out) seen = seen || d == t.device();
      if (!seen) out.push_back(t.device());
    }
  }
  return out;
}

// While alive: the generators rewound to the forward's states, grad mode on, the
// forward's autocast state, and the recompute flag set. On exit the generators go back
// to where they were, so the recomputation draws nothing from the caller's streams.
class RecomputeScope {
 public:
  RecomputeScope(const GeneratorStates& forward_states, DType autocast_dtype, bool autocast_enabled)
      : now_(now_of(forward_states)), grad_on_(true), autocast_(autocast_dtype, autocast_enabled) {
    forward_states.restore();
    ++t_recompute_depth;
  }
  ~RecomputeScope() {
    --t_recompute_depth;
    now_.restore();
  }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  static GeneratorStates now_of(const GeneratorStates& like) {
    GeneratorStates s;
    for (const auto& entry : like.states) s.states.emplace_back(entry.first, default_generator(entry.first).state());
    return s;
  }
  GeneratorStates now_;
  autograd::GradModeGuard grad_on_;
  AutocastGuard autocast_;
};

}  // namespace

bool in_checkpoint_recompute() { return t_recompute_depth > 0; }

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const std::vector<Tensor>& params) {
  if (!fn) throw std::invalid_argument("[checkpoint] expected a function to run, got an empty std::function");
  std::vector<Tensor> tracked = inputs;
  tracked.insert(tracked.end(), params.begin(), params.end());
  if (!autograd::needs_grad(tracked)) return fn(inputs);

  const GeneratorStates forward_states = GeneratorStates::capture(devices_of(inputs, params));
  const bool autocast_on = autocast_enabled();
  const DType autocast_type = autocast_dtype();
  std::vector<Tensor> outputs;
  {
    autograd::NoGradGuard no_grad;
    outputs = fn(inputs);
  }

  // New handles for the outputs: fn may return an input itself (an identity, Dropout
  // in eval mode), and recording must not rewrite that input's autograd state.
  std::vector<Tensor> differentiable;
  std::vector<size_t> which;  // index in `outputs` of each node output
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined()) continue;
    outputs[i] = outputs[i].detach();
    if (!is_floating(outputs[i].dtype())) continue;
    differentiable.push_back(outputs[i]);
    which.push_back(i);
  }
  if (differentiable.empty()) return outputs;

  // Saved: the inputs' data only (detached, so the node does not keep their history),
  // and which of them the outer graph wants gradients for.
  std::vector<Tensor> saved;
  std::vector<char> wants_grad;
  for (const Tensor& in : inputs) {
    saved.push_back(in.defined() ? in.detach() : Tensor());
    wants_grad.push_back(in.defined() && in.requires_grad() ? 1 : 0);
  }
  const size_t num_outputs = outputs.size();
  const size_t num_edges = tracked.size();

  autograd::record(
      "checkpoint", tracked, differentiable,
      [fn, saved = std::move(saved), wants_grad = std::move(wants_grad), which = std::move(which), forward_states,
       autocast_on, autocast_type, num_outputs, num_edges](std::vector<Tensor>& grads) {
        std::vector<Tensor> xs(saved.size());
        for (size_t i = 0; i < saved.size(); ++i) {
          if (!saved[i].defined()) continue;
          xs[i] = saved[i].detach();
          if (wants_grad[i]) xs[i].set_requires_grad(true);
        }
        std::vector<Tensor> outs;
        {
          RecomputeScope scope(forward_states, autocast_type, autocast_on);
          outs = fn(xs);
        }
        if (outs.size() != num_outputs)
          throw std::logic_error("[checkpoint] expected the recomputation to return " + std::to_string(num_outputs) +
                                 " outputs, as the forward did, got " + std::to_string(outs.size()) +
                                 " (the checkpointed function must be deterministic)");
        std::vector<Tensor> roots, root_grads;
        for (size_t k = 0; k < which.size(); ++k) {
          const Tensor& o = outs[which[k]];
          if (!o.defined() || o.shape() != grads[k].shape())
            throw std::logic_error("[checkpoint] expected recomputed output " + std::to_string(which[k]) +
                                   " of shape " + shape_str(grads[k].shape()) + ", as in the forward, got " +
                                   (o.defined() ? shape_str(o.shape()) : std::string("an undefined tensor")) +
                                   " (the checkpointed function must be deterministic)");
          // An output that depends on nothing needing a gradient contributes none.
          if (!o.requires_grad()) continue;
          roots.push_back(o);
          root_grads.push_back(std::move(grads[k]));
        }
        // Nested backward: parameters accumulate (and fire their hooks) here; the
        // inputs' gradients land in the leaves xs and are handed to the outer graph.
        // End-of-backward callbacks queued meanwhile wait for the outer pass. Handing
        // over the only handles of the recomputed outputs and of their gradients lets
        // them be freed as soon as the nested pass has used them.
        outs.clear();
        if (!roots.empty()) autograd::backward(std::move(roots), std::move(root_grads));
        std::vector<Tensor> input_grads(num_edges);
        for (size_t i = 0; i < xs.size(); ++i)
          if (wants_grad[i]) input_grads[i] = xs[i].grad();
        return input_grads;
      });
  return outputs;
}

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input,
                  const std::vector<Tensor>& params) {
  if (!fn) throw std::invalid_argument("[checkpoint] expected a function to run, got an empty std::function");
  CheckpointFn wrapped = [fn](const std::vector<Tensor>& xs) { return std::vector<Tensor>{fn(xs[0])}; };
  return checkpoint(wrapped, {input}, params)[0];
}

namespace {

// Runs `forward` on `x`; inside a recomputation, the buffers of `modules` (batch-norm
// running statistics), which the forward already updated, are put back afterwards so
// they change once per step, as without checkpointing. (The grad mode is the caller's:
// on in a recomputation, off in the forward of a region nested in the one recomputed.)
Tensor forward_keeping_buffers(const std::vector<std::shared_ptr<Module>>& modules,
                               const std::function<Tensor(const Tensor&)>& forward, const Tensor& x) {
  if (!in_checkpoint_recompute()) return forward(x);
  std::vector<Tensor> buffers, before;
  {
    autograd::NoGradGuard no_grad;
    for (const auto& m : modules)
      for (const Tensor& b : m->buffers()) {
        buffers.push_back(b);
        before.push_back(b.clone());
      }
  }
  Tensor out = forward(x);
  autograd::NoGradGuard no_grad;
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(before[i]);
  return out;
}

// Registers `source`'s own parameters, buffers and children in `target` under their
// names, so both have the same state dict. The registered slots are then pointed at the
// very handles `source` holds: register_buffer stores a detached alias, which
// Module::to would move on its own.
void mirror_into(Module& target, const Module& source) {
  for (auto& [name, p] : source.named_parameters(/*recurse=*/false)) {
    Tensor& slot = target.register_parameter(name, p, p.requires_grad());
    slot = p;
  }
  for (auto& [name, b] : source.named_buffers(/*recurse=*/false)) {
    Tensor& slot = target.register_buffer(name, b);
    slot = b;
  }
  for (const auto& [name, child] : source.named_children()) target.add_child(name, child);
}

}  // namespace

// ---- Checkpointed ----------------------------------------------------------------------

Checkpointed::Checkpointed(std::shared_ptr<Module> module) : module_(std::move(module)) {
  if (!module_) throw std::invalid_argument("[Checkpointed] expected a module to wrap, got null");
  mirror_into(*this, *module_);
  Module::train(module_->is_training());
}

Tensor Checkpointed::forward(const Tensor& input) {
  std::shared_ptr<Module> inner = module_;
  auto run = [inner](const Tensor& x) {
    return forward_keeping_buffers({inner}, [&](const Tensor& in) { return inner->forward(in); }, x);
  };
  return checkpoint(run, input, inner->parameters());
}

std::shared_ptr<Module> Checkpointed::clone() const { return std::make_shared<Checkpointed>(module_->clone()); }

void Checkpointed::train(bool on) {
  Module::train(on);
  module_->train(on);
}

int64_t enable_grad_checkpointing(Module& model) {
  if (auto* seq = dynamic_cast<Sequential*>(&model)) {
    const auto segments = std::max<int64_t>(1, std::llround(std::sqrt(static_cast<double>(seq->size()))));
    seq->set_checkpoint_segments(segments);
    return seq->checkpoint_segments();
  }
  int64_t n = 0;
  for (const auto& [name, child] : model.named_children()) {
    if (auto* s = dynamic_cast<Sequential*>(child.get())) {
      s->set_checkpoint_segments(static_cast<int64_t>(s->size()));
      n += s->checkpoint_segments();
    } else if (dynamic_cast<ModuleDict*>(child.get()) != nullptr) {
      n += enable_grad_checkpointing(*child);  // a grouping level: its Sequential children count
    }
  }
  return n;
}

}  // namespace tandem::nn
