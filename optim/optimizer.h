// Optimizer base: parameter groups (each with its own lr and weight decay),
// zero_grad, and a state dict of named tensors and scalars for checkpoints.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "engine/tensor.h"

namespace tandem::optim {

/// Parameters that share hyperparameters. Unset fields take the optimizer's defaults.
struct ParamGroup {
  std::vector<Tensor> params;
  std::optional<double> lr;
  std::optional<double> weight_decay;
};

/// An optimizer's state as data: tensors by name (momentum buffers, ...) and scalars
/// (step counts, per-group lr, ...). Names are stable across runs with the same parameters.
struct OptimizerState {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> scalars;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// Applies one update to every parameter that has a gradient.
  virtual void step() = 0;
  /// Whether step_unless() works: SGD, Adam and AdamW constructed with capturable = true.
  virtual bool capturable() const { return false; }
  /// step(), except that the kernels read `found_inf` (an f32 tensor of one element on
  /// the parameters' device) when they run and change nothing when it is nonzero: the
  /// parameters and all state, step counts included, stay as they were. The host never
  /// reads the flag, so a GradScaler's skip decision stays on the device and the step
  /// can be captured in a CUDA graph; step_count() counts the call either way. Throws
  /// std::invalid_argument unless capturable(), or when found_inf is not such a tensor.
  virtual void step_unless(const Tensor& found_inf);
  /// Drops every parameter's gradient (set_to_none) or fills it with zeros.
  void zero_grad(bool set_to_none = true);

  /// Learning rate of the first group.
  double lr() const;
  /// Sets the learning rate of every group: set_group_lr for each.
  void set_lr(double lr);
  /// Sets group g's learning rate (what LR schedules call). A capturable optimizer also
  /// writes it, stream-ordered, into the device copies its kernels read, so a step
  /// captured in a CUDA graph follows the schedule from one replay to the next; change a
  /// capturable optimizer's lr this way rather than through param_groups() between
  /// replays. Throws std::invalid_argument for a group that does not exist or an lr that
  /// is negative or NaN, std::logic_error while a device copy's stream is being captured.
  void set_group_lr(size_t g, double lr);
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  /// Adds a group; its unset hyperparameters take the optimizer's defaults.
  void add_param_group(ParamGroup group);
  /// Number of step() calls so far (host calls: replays of a captured step() are not
  /// counted; capturable optimizers keep per-parameter counts on the device).
  int64_t step_count() const { return step_count_; }

  /// Per-parameter state keyed "<kind>.<i>" with i the parameter's index over all
  /// groups in order, plus scalars "step_count" and "param_groups.<g>.lr" / ".weight_decay".
  virtual OptimizerState state_dict() const;
  /// Restores state_dict() output of an optimizer over parameters of the same shapes,
  /// into the state tensors that already exist (a CUDA graph captured before the load
  /// keeps working) and new ones for the rest. Throws std::invalid_argument listing
  /// every missing or mis-shaped entry, before changing anything.
  virtual void load_state_dict(const OptimizerState& state);

 protected:
  Optimizer(double default_lr, double default_weight_decay)
      : default_lr_(default_lr), default_weight_decay_(default_weight_decay) {}

  /// Per-parameter state tensors of kind `kind` (e.g. "momentum_buffer"), one slot per
  /// parameter over all groups; undefined until first used.
  std::vector<Tensor>& state(const std::string& kind);
  /// Index of parameter p of group g over all groups.
  size_t flat_index(size_t g, size_t p) const;
  /// Names of the per-parameter state kinds this optimizer keeps (for load_state_dict).
  virtual std::vector<std::string> state_kinds() const = 0;

  /// A parameter that has a gradient, with its group's hyperparameters.
  struct GradItem {
    Tensor param, grad;
    size_t flat;   // flat_index of the parameter: its slot in state()
    size_t group;  // its group's index
    double lr, weight_decay;
  };
  /// The parameters with gradients on one (device, dtype): one fused launch's worth.
  struct DeviceBatch {
    Device device;
    DType dtype;
    std::vector<GradItem> items;  // in parameter order
  };
  /// Every parameter that has a gradient, grouped by (device, dtype) in a fixed order.
  /// All are checked before returning, so a bad one leaves every parameter untouched:
  /// throws std::invalid_argument "[<name>] expected the gradient of ..." when a
  /// gradient's device, dtype or shape differs from its parameter's, and
  /// throw_unsupported(op, ...) for a dtype other than f32/f64.
  std::vector<DeviceBatch> grads_by_device(const std::string& name, const char* op) const;
  /// found_inf's memory for step_unless() of the optimizer `name` (null when undefined,
  /// as from step()). Throws std::invalid_argument "[<name>::step_unless] expected ..."
  /// unless it is one f32 element on the device of every batch.
  static const float* found_inf_ptr(const std::string& name, const Tensor& found_inf,
                                    const std::vector<DeviceBatch>& batches);
  /// Capturable optimizers: the address of group g's lr on `device`, one f64 the step
  /// kernels read when they run. Made at first use; rewritten (stream-ordered) when the
  /// group's lr changed since without set_group_lr. Throws std::logic_error if either
  /// would happen while `device`'s stream is being captured: the write would be replayed.
  const double* lr_on_device(const std::string& name, size_t group, Device device);
  /// A step of the optimizer `name` inside a CUDA-graph capture: throws std::logic_error
  /// if it could not be replayed right: the optimizer is not capturable (lr, first steps
  /// and step counts would be fixed in the graph), or `first_step` (the parameter `what`
  /// has no state yet, which would be made inside the graph and again at every replay).
  void check_captured_step(const std::string& name, bool first_step, const std::string& what) const;
  /// Whether `device`'s current stream is being captured into a CUDA graph.
  static bool capturing(Device device);

  std::vector<ParamGroup> groups_;
  int64_t step_count_ = 0;

 private:
  double default_lr_;
  double default_weight_decay_;
  std::map<std::string, std::vector<Tensor>> state_;
  /// Capturable: each group's lr on each device its parameters are on, and the value
  /// last written there.
  struct DeviceLr {
    Tensor value;
    double written = 0.0;
  };
  std::map<std::tuple<size_t, DeviceType, int>, DeviceLr> device_lrs_;
};

}  // namespace tandem::optim
