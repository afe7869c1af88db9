// Dynamic loss scaling for f16 mixed precision, as torch.cuda.amp.GradScaler: scale the
// loss, unscale the gradients with one fused unscale-and-check-for-inf launch per
// (device, dtype), skip the optimizer step on inf/NaN, and grow or back off the scale.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "optim/optimizer.h"

namespace tandem::optim {

/// The scaler's knobs, PyTorch's defaults. `enabled = false` turns every method into a
/// pass-through (scale returns the loss, step calls optimizer.step()), so one training
/// loop serves f32, bf16 (no scaler needed) and f16.
struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;   // > 1
  double backoff_factor = 0.5;  // in (0, 1)
  int64_t growth_interval = 2000;  // consecutive finite steps before the scale grows; >= 1
  bool enabled = true;
  /// Keeps the scale, growth tracker and skipped-step count in tensors on the loss's
  /// device (from the first scale()), and decides there: unscale() reads the scale in
  /// its kernel, step() hands the found-inf flag to the optimizer (which must be
  /// capturable: SGD, Adam or AdamW with capturable = true) to skip itself, update()
  /// is one kernel. An iteration then never synchronises with the host (PyTorch's
  /// GradScaler reads the flag in step() unless the optimizer is fused), so the whole
  /// f16 step can be captured in a CUDA graph. The arithmetic is the same as without.
  /// All gradients of an optimizer must be on that device; at most kMaxOptimizers per update().
  bool capturable = false;
};

/// The scaler's state as data (checkpoint metadata): "scale", "growth_tracker",
/// "growth_factor", "backoff_factor", "growth_interval" and "skipped_steps". Empty for
/// a disabled scaler, as PyTorch.
using GradScalerState = std::map<std::string, double>;

/// One iteration, per optimizer:
///   scaler.scale(loss).backward();
///   scaler.unscale(opt);                   // optional: only to read or clip real gradients
///   clip_grad_norm(params, max_norm);      // sees unscaled gradients
///   scaler.step(opt);                      // skipped when a gradient holds inf/NaN
///   scaler.update();                       // once, after every optimizer has stepped
/// Under DDP every rank takes the same decision: gradients are averaged before they are
/// unscaled, so an inf on one rank reaches all. Not thread-safe (one scaler per rank).
class GradScaler {
 public:
  /// Throws std::invalid_argument "[GradScaler] expected ..., got ..." unless
  /// init_scale is finite and > 0, growth_factor > 1, backoff_factor in (0, 1) and
  /// growth_interval >= 1.
  explicit GradScaler(const GradScalerOptions& options = {});

  /// loss · scale (differentiable, in the loss's dtype and device); `loss` itself when
  /// disabled. Capturable: times the device scale (an f16/bf16 loss then gives f32, as
  /// PyTorch's promotion); the first call puts the scaler's state on the loss's device
  /// and later losses must be there (else std::invalid_argument).
  Tensor scale(const Tensor& loss);

  /// Multiplies every gradient of `optimizer`'s parameters by 1/scale in place (f32
  /// reciprocal computed in f64, as PyTorch) and records per device whether any was
  /// inf/NaN, with one fused launch per (device, dtype) and no host synchronisation:
  /// the flags stay on the device until step() reads them. Throws std::invalid_argument
  /// when called twice for one optimizer, or after step(), before update().
  void unscale(Optimizer& optimizer);

  /// Unscales `optimizer` unless unscale() already did, then runs optimizer.step() only
  /// if every gradient was finite. Returns whether it stepped. Reads the found-inf flags
  /// (the one host synchronisation of an iteration, as in PyTorch). Capturable: calls
  /// optimizer.step_unless(flag) instead, reads nothing and returns true (the step may
  /// still be skipped on the device; skipped_steps() counts it). Throws
  /// std::invalid_argument when called twice for one optimizer before update(), when
  /// no parameter of `optimizer` has a gradient, or, capturable, when the optimizer is not.
  bool step(Optimizer& optimizer);

  /// PyTorch's _amp_update_scale_ over the flags of every optimizer unscaled since the
  /// last update: any inf/NaN: scale ·= backoff_factor, growth tracker = 0; else tracker
  /// += 1 and when it reaches growth_interval: scale ·= growth_factor (kept if finite in
  /// f32), tracker = 0. The scale is an f32 value, as PyTorch's scale tensor. Throws
  /// std::invalid_argument when neither step() nor unscale() ran since the last update().
  void update();

  /// The current scale (1 when disabled). Capturable: read from the device (a
  /// synchronisation), as are the two counts below.
  double get_scale() const;
  /// Consecutive finite steps counted toward the next growth.
  int64_t growth_tracker() const;
  /// Optimizer steps skipped because of inf/NaN gradients since construction (or the
  /// loaded state), for metrics.
  int64_t skipped_steps() const;
  bool is_enabled() const { return options_.enabled; }
  /// Capturable: the scale as a 0-dim f32 tensor on the device (undefined before the
  /// first scale()); a captured graph reads it at every replay.
  Tensor scale_tensor() const { return scale_t_; }

  static constexpr int kMaxOptimizers = 32;
  const GradScalerOptions& options() const { return options_; }

  /// The found-inf flags (f32 [1], one per device, 1 when an inf/NaN was seen) that the
  /// last unscale of `optimizer` wrote, still on their devices; empty when it was not
  /// unscaled since the last update(). For code that shards gradients and must
  /// all-reduce the flags itself before step().
  std::vector<Tensor> found_inf_flags(const Optimizer& optimizer) const;

  /// The state as GradScalerState; empty when disabled. Take it after update().
  GradScalerState state_dict() const;
  /// Restores state_dict() output (options included). A no-op when disabled; throws
  /// std::invalid_argument naming every missing or invalid entry (an empty state is
  /// one saved by a disabled scaler).
  void load_state_dict(const GradScalerState& state);

 private:
  enum class Stage { kReady, kUnscaled, kStepped };
  /// Per optimizer since the last update(): where it is in the iteration, its flags,
  /// and, once step() read them, whether any was set.
  struct OptimizerRecord {
    Stage stage = Stage::kReady;
    std::vector<Tensor> found_inf;  // one per device
    bool found_inf_read = false;
    bool found_inf_value = false;
  };

  /// Any flag of `record` set (reads them from their devices once).
  bool found_inf(OptimizerRecord& record) const;
  /// Capturable: creates the state tensors on `device` (from the host values) the first
  /// time; afterwards throws unless `device` is theirs. `where` names the caller.
  void use_device(const char* where, Device device, const std::string& what);
  /// Capturable update(): one kernel over the flags of every optimizer since the last.
  void update_on_device();

  GradScalerOptions options_;
  // Without capturable, or before its tensors exist: the state itself.
  double scale_;  // always a value an f32 holds exactly
  int64_t growth_tracker_ = 0;
  int64_t skipped_steps_ = 0;
  // Capturable, from the first scale(): scale (f32), growth tracker and skipped steps
  // (i64), 0-dim tensors on one device; they keep their memory for the scaler's life.
  Tensor scale_t_, growth_tracker_t_, skipped_steps_t_;
  std::map<const Optimizer*, OptimizerRecord> records_;
};

}  // namespace tandem::optim
