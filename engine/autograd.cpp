// The autograd engine: graph recording and the backward pass.
#include "engine/autograd.h"

#include <limits>
#include <queue>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "engine/dispatch.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"

namespace tandem::autograd {
namespace {

std::atomic<uint64_t> g_next_sequence_nr{0};
thread_local bool t_grad_enabled = true;

struct GraphTask {
  std::vector<std::function<void()>> callbacks;
};
// The innermost backward running on this thread, and the outermost one. A backward
// started from inside a node (activation checkpointing's recomputation) is nested in
// another; queued callbacks belong to the outermost, so end-of-backward work (DDP's
// finalisation) waits for the whole pass, not for the nested one.
thread_local GraphTask* t_current_task = nullptr;
thread_local GraphTask* t_outermost_task = nullptr;

// Leaves accumulate as soon as they are ready (DDP's hooks fire from there), so
// AccumulateGrad outranks every other node, as in PyTorch.
uint64_t priority(const Node& node) {
  return dynamic_cast<const AccumulateGrad*>(&node) ? std::numeric_limits<uint64_t>::max() : node.sequence_nr();
}

TensorMeta meta_of(const Tensor& t) { return {t.shape(), t.dtype(), t.device()}; }

}  // namespace

Node::Node(std::string name) : name_(std::move(name)), sequence_nr_(g_next_sequence_nr.fetch_add(1)) {}

std::vector<Tensor> FunctionNode::apply(std::vector<Tensor>& grad_outputs) {
  if (!fn_)
    throw std::runtime_error("[backward] trying to backward through '" + name() +
                             "' a second time, but its saved tensors were freed after the first backward; pass "
                             "retain_graph = true to the first backward() if you need to run it twice");
  return fn_(grad_outputs);
}

AccumulateGrad::AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf) : Node("AccumulateGrad"), leaf_(leaf) {
  Tensor t(leaf);
  outputs.push_back(meta_of(t));
}

std::vector<Tensor> AccumulateGrad::apply(std::vector<Tensor>& grad_outputs) {
  std::shared_ptr<TensorImpl> leaf = leaf_.lock();
  if (!leaf) return {};
  Tensor g = std::move(grad_outputs[0]);
  AutogradMeta& meta = leaf->autograd_meta();
  if (!meta.grad) {
    // Take the gradient over when nothing else can see it (the engine moved it
    // out of its buffer); otherwise copy, so later in-place accumulation into
    // .grad cannot change a tensor someone else holds.
    bool unshared = g.impl_ptr().use_count() == 1 && g.storage().use_count() == 1 && g.offset() == 0;
    meta.grad = unshared ? g.impl_ptr() : g.clone().impl_ptr();
  } else {
    Tensor existing(meta.grad);
    add_(existing, g);
  }
  Tensor leaf_tensor(leaf);
  // Copy: a hook may register or remove hooks.
  auto hooks = meta.post_accumulate_hooks;
  for (auto& [id, hook] : hooks) hook(leaf_tensor);
  return {};
}

std::shared_ptr<Node> grad_accumulator(const Tensor& leaf) {
  AutogradMeta& meta = leaf.impl()->autograd_meta();
  std::shared_ptr<Node> node = meta.grad_accumulator.lock();
  if (!node) {
    node = std::make_shared<AccumulateGrad>(leaf.impl_ptr());
    meta.grad_accumulator = node;
  }
  return node;
}

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(std::string name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs, BackwardFn fn) {
  if (!needs_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(std::move(name), std::move(fn));
  node->next_edges.reserve(inputs.size());
  for (const Tensor& in : inputs) {
    if (in.defined() && in.requires_grad()) {
      Edge e = in.grad_fn() ? Edge{in.grad_fn(), in.output_nr()} : Edge{grad_accumulator(in), 0};
      node->next_edges.push_back(std::move(e));
      node->inputs.push_back(meta_of(in));
    } else {
      node->next_edges.push_back(Edge{});
      node->inputs.push_back(TensorMeta{});
    }
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    AutogradMeta& meta = outputs[i].impl()->autograd_meta();
    meta.requires_grad = true;
    meta.grad_fn = node;
    meta.output_nr = static_cast<uint32_t>(i);
    node->outputs.push_back(meta_of(outputs[i]));
  }
}

void alias_with_history(Tensor& target, const Tensor& source) {
  check_defined("alias_with_history", target, "target");
  check_defined("alias_with_history", source, "source");
  if (target.is_same(source)) return;
  std::shared_ptr<Node> fn;
  uint32_t output_nr = 0;
  const bool requires_grad = source.requires_grad();
  if (requires_grad) {
    // A leaf source has no grad_fn; pointing target at the leaf's accumulator makes
    // every use of target record an edge straight into source's .grad.
    fn = source.grad_fn() ? source.grad_fn() : grad_accumulator(source);
    output_nr = source.grad_fn() ? source.output_nr() : 0;
  }
  target.set_data(source);
  AutogradMeta& meta = target.impl()->autograd_meta();
  meta.requires_grad = requires_grad;
  meta.grad_fn = std::move(fn);
  meta.output_nr = output_nr;
  meta.grad.reset();
  meta.grad_accumulator.reset();
}

bool in_backward() { return t_current_task != nullptr; }

void queue_callback(std::function<void()> callback) {
  if (!t_outermost_task)
    throw std::logic_error("[queue_callback] called outside a backward pass; call it from a gradient hook");
  t_outermost_task->callbacks.push_back(std::move(callback));
}

void backward(std::vector<Tensor> roots, std::vector<Tensor> grad_roots, bool retain_graph) {
  if (!grad_roots.empty() && grad_roots.size() != roots.size())
    throw std::invalid_argument("[backward] expected one gradient per root (" + std::to_string(roots.size()) +
                                "), got " + std::to_string(grad_roots.size()));
  GraphTask task;
  struct TaskScope {
    GraphTask* previous;
    bool outermost;
    explicit TaskScope(GraphTask* t) : previous(t_current_task), outermost(t_outermost_task == nullptr) {
      t_current_task = t;
      if (outermost) t_outermost_task = t;
    }
    ~TaskScope() {
      t_current_task = previous;
      if (outermost) t_outermost_task = nullptr;
    }
  } scope(&task);
  GradModeGuard no_grad(false);

  // Seed gradients.
  std::vector<std::pair<Edge, Tensor>> seeds;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& root = roots[i];
    check_defined("backward", root, "root");
    if (!root.requires_grad())
      throw std::invalid_argument(
          "[backward] the tensor does not require grad and has no grad_fn: nothing to differentiate (was it "
          "computed under NoGradGuard, or only from tensors that do not require grad?)");
    Tensor g = grad_roots.empty() ? Tensor() : grad_roots[i];
    if (!g.defined()) {
      if (root.numel() != 1)
        throw std::invalid_argument("[backward] a gradient can be created implicitly only for a one-element tensor, "
                                    "got shape " + shape_str(root.shape()) +
                                    "; pass a gradient of that shape to backward()");
      g = ones_like(root);
    } else if (g.shape() != root.shape()) {
      throw std::invalid_argument("[backward] expected a gradient of shape " + shape_str(root.shape()) + ", got " +
                                  shape_str(g.shape()));
    }
    Edge e = root.grad_fn() ? Edge{root.grad_fn(), root.output_nr()} : Edge{grad_accumulator(root), 0};
    seeds.emplace_back(std::move(e), std::move(g));
  }
  // The seeds hold what the pass needs; from here on the roots' data and the seed
  // gradients live only as long as the graph and the gradient buffers use them.
  roots.clear();
  grad_roots.clear();

  // Count, for every reachable node, how many edges lead into it.
  std::unordered_map<Node*, int> dependencies;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (auto& [edge, g] : seeds) {
    if (seen.insert(edge.node.get()).second) stack.push_back(edge.node.get());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next_edges) {
      if (!e.node) continue;
      dependencies[e.node.get()] += 1;
      if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
    }
  }

  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  auto accumulate = [&](Node* n, uint32_t index, Tensor g) {
    std::vector<Tensor>& buf = buffers[n];
    if (buf.size() < n->outputs.size()) buf.resize(n->outputs.size());
    if (!buf[index].defined()) buf[index] = std::move(g);
    else buf[index] = add(buf[index], g);
  };

  auto cmp = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) { return priority(*a) < priority(*b); };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(cmp)> ready(cmp);
  for (auto& [edge, g] : seeds) accumulate(edge.node.get(), edge.input_nr, std::move(g));
  std::unordered_set<Node*> queued;
  for (auto& [edge, g] : seeds) {
    if (dependencies[edge.node.get()] == 0 && queued.insert(edge.node.get()).second) ready.push(edge.node);
  }

  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    std::vector<Tensor> grads = std::move(buffers[node.get()]);
    buffers.erase(node.get());
    grads.resize(node->outputs.size());
    bool any = false;
    for (const Tensor& g : grads) any = any || g.defined();

    std::vector<Tensor> input_grads;
    if (any) {
      for (size_t i = 0; i < grads.size(); ++i) {
        if (!grads[i].defined()) {
          const TensorMeta& m = node->outputs[i];
          grads[i] = zeros(m.shape, {.dtype = m.dtype, .device = m.device});
        }
      }
      input_grads = node->apply(grads);
      if (!retain_graph) node->release();
      if (input_grads.size() != node->next_edges.size() && !dynamic_cast<AccumulateGrad*>(node.get()))
        throw std::logic_error("[backward] '" + node->name() + "' returned " + std::to_string(input_grads.size()) +
                               " gradients for " + std::to_string(node->next_edges.size()) + " inputs");
    }
    input_grads.resize(node->next_edges.size());

    for (size_t i = 0; i < node->next_edges.size(); ++i) {
      const Edge& e = node->next_edges[i];
      if (!e.node) continue;
      Tensor& g = input_grads[i];
      if (g.defined()) {
        const TensorMeta& want = node->inputs[i];
        if (g.shape() != want.shape)
          throw std::logic_error("[backward] '" + node->name() + "' returned a gradient of shape " +
                                 shape_str(g.shape()) + " for input " + std::to_string(i) + " of shape " +
                                 shape_str(want.shape));
        if (!(g.device() == want.device))
          throw std::logic_error("[backward] '" + node->name() + "' returned a gradient on " + g.device().str() +
                                 " for input " + std::to_string(i) + " on " + want.device.str());
        if (g.dtype() != want.dtype) g = g.to(want.dtype);
        accumulate(e.node.get(), e.input_nr, std::move(g));
      }
      if (--dependencies[e.node.get()] == 0) ready.push(e.node);
    }
  }

  // Only the outermost backward holds callbacks (see t_outermost_task). They may
  // queue more callbacks, so index rather than iterate.
  for (size_t i = 0; i < task.callbacks.size(); ++i) {
    auto cb = std::move(task.callbacks[i]);
    cb();
  }
}

}  // namespace tandem::autograd
