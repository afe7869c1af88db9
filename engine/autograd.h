// Define-by-run autograd. An op whose inputs need gradients records a Node holding
// its backward rule (a closure over what it saved). backward() runs nodes in
// dependency order, highest sequence number first (roughly reverse creation order,
// which is what DDP's bucket order assumes), frees saved tensors as it goes,
// accumulates into leaf .grad, fires post-accumulate hooks, then end-of-backward
// callbacks.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace tandem::autograd {

/// Receives the gradients of a node's outputs (zero-filled where an output got
/// none) and returns one gradient per input (undefined for inputs that need none).
using BackwardFn = std::function<std::vector<Tensor>(std::vector<Tensor>& grad_outputs)>;

struct Edge {
  std::shared_ptr<class Node> node;  // null when the input needs no gradient
  uint32_t input_nr = 0;             // which output of `node` the input was
};

/// Shape, dtype and device of a node output, used to zero-fill missing gradients
/// and to check the shapes a backward rule returns.
struct TensorMeta {
  Shape shape;
  DType dtype;
  Device device;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  explicit Node(std::string name);
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  /// Computes input gradients from output gradients.
  virtual std::vector<Tensor> apply(std::vector<Tensor>& grad_outputs) = 0;
  /// Drops saved tensors after a backward without retain_graph.
  virtual void release() {}

  const std::string& name() const { return name_; }
  uint64_t sequence_nr() const { return sequence_nr_; }

  std::vector<Edge> next_edges;      // one per input
  std::vector<TensorMeta> inputs;    // one per input, to check returned gradients
  std::vector<TensorMeta> outputs;   // one per output

 private:
  std::string name_;
  uint64_t sequence_nr_;
};

/// A node whose backward rule is a closure (every op uses this).
class FunctionNode final : public Node {
 public:
  FunctionNode(std::string name, BackwardFn fn) : Node(std::move(name)), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(std::vector<Tensor>& grad_outputs) override;
  void release() override { fn_ = nullptr; }

 private:
  BackwardFn fn_;
};

/// Accumulates into a leaf's .grad and runs its post-accumulate hooks.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf);
  std::vector<Tensor> apply(std::vector<Tensor>& grad_outputs) override;
  std::shared_ptr<TensorImpl> leaf() const { return leaf_.lock(); }

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

/// The node that accumulates into `leaf` (created on first use, shared afterwards).
std::shared_ptr<Node> grad_accumulator(const Tensor& leaf);

// ---- grad mode ------------------------------------------------------------------------

/// Whether ops record graph nodes on this thread (default true).
bool grad_enabled();
void set_grad_enabled(bool enabled);

/// Sets grad mode for its lifetime and restores the previous mode.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled) : previous_(grad_enabled()) { set_grad_enabled(enabled); }
  ~GradModeGuard() { set_grad_enabled(previous_); }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};

/// Disables graph recording for its lifetime (optimizer steps, evaluation).
class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};

// ---- recording ---------------------------------------------------------------------------

/// True when grad mode is on and any input requires grad.
bool needs_grad(const std::vector<Tensor>& inputs);

/// Records a node named `name` linking `inputs` to `outputs` with backward rule `fn`,
/// if needs_grad(inputs); otherwise does nothing. Outputs become non-leaf tensors
/// that require grad. A rule that saves one of its own outputs must capture
/// `out.detach()`, or the output would own the node that owns it.
void record(std::string name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs, BackwardFn fn);

/// Makes `target` (a handle that others share, such as a layer's parameter member)
/// take `source`'s data and its place in the graph, in place: target gets source's
/// storage, shape, offset and dtype, and a gradient reaching target flows where one
/// reaching source would (into source's grad_fn, or into source's .grad when source
/// is a leaf that requires grad). target's own .grad and grad accumulator are dropped;
/// when source needs no grad, target becomes a leaf that needs none. DataParallel
/// re-binds each replica's parameters to differentiable copies of the primary's this
/// way every forward. Not thread-safe for the same tensors: call it before other
/// threads use them.
void alias_with_history(Tensor& target, const Tensor& source);

// ---- running -----------------------------------------------------------------------------

/// Back-propagates from `roots`. A root without a seed gradient must hold exactly one
/// element (the seed is then 1). The vectors are taken by value and dropped once the
/// pass is seeded: a caller that moves them in (activation checkpointing's nested
/// backward) lets the roots and seeds be freed as the pass goes, not at its end.
void backward(std::vector<Tensor> roots, std::vector<Tensor> grad_roots = {}, bool retain_graph = false);

/// Queues `callback` to run once the current backward pass has finished every node
/// (DDP finalises gradients here). Callable only from inside a backward pass, e.g.
/// from a post-accumulate hook; callbacks may queue further callbacks. When backward
/// passes are nested on this thread (a node whose rule runs backward() itself, as
/// activation checkpointing's recomputation does), the callback attaches to the
/// OUTERMOST one: it runs after the whole pass, never at the end of a nested one.
void queue_callback(std::function<void()> callback);

/// True while this thread is running a backward pass.
bool in_backward();

}  // namespace tandem::autograd
