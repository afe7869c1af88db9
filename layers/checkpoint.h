// Activation checkpointing: nn::checkpoint runs a region of the forward without
// keeping its intermediate tensors (only its inputs) and recomputes it during backward,
// replaying the Philox generators and the autocast state so dropout masks and
// precisions are identical; nn::Checkpointed wraps a module so that its forward is such
// a region. Memory falls from every activation of the region to its inputs, for the
// price of a second forward of the region in backward.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"
#include "layers/sequential.h"

namespace tandem::nn {

/// A checkpointed region: tensors in, tensors out. It must compute the same thing each
/// time it is called with the same inputs and generator states (it is run twice).
using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

/// outputs = fn(inputs), recorded as one autograd node "checkpoint" that saves only
/// `inputs`. Backward re-runs fn with grad mode on, the default generators of the
/// devices of `inputs` and `params` rewound to where this forward found them (and put
/// back afterwards) and the forward's autocast state, then back-propagates through the
/// recomputation in a nested backward: gradients of the inputs are returned to the
/// outer graph, gradients of everything else fn read (parameters) are accumulated into
/// their .grad directly, once per backward, firing their post-accumulate hooks (DDP).
///
/// `params` lists the tensors fn reads besides `inputs` that may need gradients (a
/// module's parameters). They become edges of the node, so the node is recorded even
/// when no input requires grad (the first layer) and graph walks such as DDP's
/// find_unused_parameters see them; their gradients still arrive through the nested
/// backward. When neither an input nor a param requires grad, or grad mode is off
/// (evaluation), fn is simply called, with grad mode as it is: a region that reads
/// unlisted parameters then records its full graph (correct, without saving memory).
///
/// Outputs: undefined and non-floating outputs (indices) are returned without autograd
/// history; floating ones are outputs of the node (new handles, never an input's).
/// Outputs the loss does not use get zero gradients. A parameter used both inside a
/// checkpointed region and outside it (or in two regions) receives its gradient twice
/// in one backward: plain autograd is fine with that, DDP needs static_graph = true.
/// The inputs must not be modified in place before backward (they are re-read then).
std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const std::vector<Tensor>& params = {});

/// The one-input, one-output form of checkpoint(): fn(input), recomputed in backward.
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input,
                  const std::vector<Tensor>& params = {});

/// True on this thread while backward is recomputing a checkpointed region: a region
/// that updates state in place (batch-norm running statistics) can avoid doing it twice.
bool in_checkpoint_recompute();

/// The checkpointing rule of tandem-train --grad-checkpoint and the Trainer: a Sequential
/// model (MLP, CNN) runs in about sqrt(L) segments of its L layers; any other model has
/// each Sequential child (ResNet-18's stages), or Sequential child of a ModuleDict child
/// (a GPT's blocks, transformer.h), run one segment per block. Returns the number of
/// segments set (0: the model has nothing to checkpoint this way).
int64_t enable_grad_checkpointing(Module& model);

/// A module whose forward is checkpointed: Checkpointed(block)->forward(x) equals
/// block->forward(x) and gives the same gradients, keeping only x during forward.
///
/// Transparent naming: the wrapper holds the wrapped module's own parameters, buffers
/// and children under their own names (the same tensor handles, not copies), so its
/// state dict, named_parameters() and parameter order equal the wrapped module's, and a
/// model whose layers are replaced by Checkpointed(layer) keeps its state-dict keys
/// (PyTorch's checkpoint_wrapper would add "_checkpoint_wrapped_module."). Hence: wrap a
/// fully built module (registrations made in it afterwards are not mirrored), and
/// convert batch norms (comm::convert_sync_batchnorm) before wrapping, since the wrapped
/// module itself does not appear in named_modules().
///
/// The recomputation restores the module's buffers to their values before it, so
/// batch-norm running statistics are updated once per forward, as without checkpointing.
class Checkpointed : public Module {
 public:
  /// Wraps `module` (not null).
  explicit Checkpointed(std::shared_ptr<Module> module);

  /// checkpoint(module->forward, input, module->parameters()).
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "Checkpointed"; }
  /// A Checkpointed around a clone of the wrapped module.
  std::shared_ptr<Module> clone() const override;
  /// Sets the mode of the wrapper and of the wrapped module.
  void train(bool on = true) override;

  /// The wrapped module.
  const std::shared_ptr<Module>& module() const { return module_; }

 private:
  std::shared_ptr<Module> module_;
};

}  // namespace tandem::nn
