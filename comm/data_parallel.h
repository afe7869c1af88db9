// DataParallel: one process driving several devices (torch.nn.DataParallel). Each
// forward scatters the batch along dim 0, runs one replica of the module per chunk on
// its own host thread, and gathers the outputs; autograd reduce-adds the replicas'
// gradients onto the wrapped module's parameters.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "engine/device.h"
#include "engine/tensor.h"
#include "layers/module.h"

namespace tandem::comm {

/// Host wall time of the phases of the last forward, in seconds. On CUDA the device
/// work is asynchronous, so these measure launch time, not kernel time.
struct DataParallelStats {
  double scatter_s = 0.0;    // splitting the input and copying chunks to their devices
  double replicate_s = 0.0;  // (re)making replicas, binding parameters, copying buffers
  double apply_s = 0.0;      // the replicas' forwards, from the first thread's start to the last join
  double gather_s = 0.0;     // copying outputs to the output device and concatenating
  int replicas = 0;          // replicas that ran (fewer than devices when the batch is small)
};

/// Wraps `module` (registered as child "module", so parameters() and state_dict() are
/// the module's, prefixed "module.").
///
/// forward(x): x is split into chunks of ceil(B/n) rows (n = devices().size(); fewer
/// chunks when B < n); chunk k runs through replica k on devices()[k] on its own host
/// thread, with that device current and the caller's current stream and grad mode;
/// outputs are concatenated on the output device. Replica 0 is the module itself, so
/// its buffer updates (batch-norm running statistics) are the ones that survive;
/// replicas k > 0 are clones (Module::clone, made once and re-made when the module's
/// parameters or buffers change identity, shape, dtype or device) whose buffers are
/// refreshed from the module every forward and whose parameters are re-bound every
/// forward to differentiable copies of the module's (autograd::alias_with_history), so
/// backward sums every replica's gradient into the module's .grad. The same device may
/// be listed more than once (one GPU, or the CPU for tests).
class DataParallel : public nn::Module {
 public:
  /// `devices` {} means every CUDA device; all must be of one type, and the module's
  /// parameters and buffers must be on devices[0]. `output_device` defaults to devices[0].
  DataParallel(std::shared_ptr<nn::Module> module, std::vector<Device> devices = {},
               std::optional<Device> output_device = std::nullopt);

  /// Scatter, parallel apply, gather (see the class comment). The input needs a batch
  /// dim with at least one row; replica outputs need a batch dim too.
  Tensor forward(const Tensor& input) override;
  std::string name() const override { return "DataParallel"; }

  /// The wrapped module (replica 0).
  const std::shared_ptr<nn::Module>& module() const { return module_; }
  const std::vector<Device>& devices() const { return devices_; }
  Device output_device() const { return output_device_; }
  /// Timings and replica count of the last forward.
  DataParallelStats last_forward_stats() const { return stats_; }

 private:
  void check_module_placement() const;
  /// Makes sure replicas 1..count-1 exist and match the module's current tensors.
  void ensure_replicas(size_t count);
  /// Re-binds replica k's parameters to copies of the module's, refreshes its buffers
  /// and training flags (on the caller's thread, before the workers start).
  void bind_replica(size_t k);

  /// What the replicas were cloned from: identity, shape, dtype, device per tensor.
  struct TensorSignature {
    const TensorImpl* impl;
    Shape shape;
    DType dtype;
    Device device;
    bool operator==(const TensorSignature&) const = default;
  };
  std::vector<TensorSignature> signature() const;

  std::shared_ptr<nn::Module> module_;
  std::vector<Device> devices_;
  Device output_device_;
  std::vector<std::shared_ptr<nn::Module>> replicas_;  // [0] stays null: replica 0 is module_
  std::vector<TensorSignature> replica_signature_;
  DataParallelStats stats_;
};

}  // namespace tandem::comm
