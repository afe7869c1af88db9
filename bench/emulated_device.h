// An emulated accelerator for `tandem-bench scaling --emulate-step-ms` (issue 8): a
// model whose forward and backward wait on a timer instead of computing, with the
// parameter tensors (so the gradients, buckets and all-reduces) of a real model.
//
// Why: the scaling model assumes what holds on GPUs, one device per rank, so a rank's
// compute does not slow down as ranks are added. CPU ranks on a machine with fewer
// cores than ranks break that (they time-slice the cores), which hides whether the
// communication and overlap part of the model is right. With the compute on a timer,
// ranks stop competing for cores (a waiting rank uses none), and the model can be
// checked from a 1-rank profile on any machine: the bench's all-reduces, buckets and
// the reducer's overlap are real; only the arithmetic is replaced.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"
#include "optim/optimizer.h"

namespace tandem::bench {

/// How an emulated step spends its time: forward, backward and optimizer shares of
/// step_ms (the rest of a real step, communication, comes on top).
struct EmulatedStep {
  double step_ms = 0.0;
  double forward_share = 0.3;
  double backward_share = 0.6;
  double optimizer_share = 0.1;
};

/// Stands in for `real`: one parameter per parameter of `real` (same names, shapes,
/// dtypes, values and order), each behind one graph node. forward(x) returns zero
/// logits of shape [x.size(0), classes] after waiting forward_share · step_ms, split
/// evenly over the nodes; backward waits backward_share · step_ms, split the same
/// way, node by node in reverse order, so gradients become ready one parameter at a
/// time as in a real backward. Gradients are zeros of the parameter's shape.
class EmulatedDeviceModel final : public nn::Module {
 public:
  EmulatedDeviceModel(const nn::Module& real, const EmulatedStep& step, int64_t classes = 10);
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "EmulatedDeviceModel"; }

 private:
  std::vector<Tensor> zero_grads_;  // per parameter, returned by every backward
  double node_forward_s_ = 0.0;
  double node_backward_s_ = 0.0;
  int64_t classes_;
};

/// The optimizer of an emulated device: step() waits optimizer_share · step_ms and
/// leaves the parameters alone.
class EmulatedOptimizer final : public optim::Optimizer {
 public:
  EmulatedOptimizer(std::vector<Tensor> params, const EmulatedStep& step);
  void step() override;

 protected:
  std::vector<std::string> state_kinds() const override { return {}; }

 private:
  double step_s_;
};

}  // namespace tandem::bench
