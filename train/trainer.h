// train::Trainer: a thin training loop over the library's pieces, configured by
// TrainerConfig, a composition of small option structs that together hold what a
// PyTorch multi-GPU trainer offers: the strategy (single device, DataParallel, DDP
// with its options, sync BN), mixed precision (autocast dtype, GradScaler), gradient
// accumulation, activation checkpointing, optimizer, schedule with warm-up and linear
// lr scaling, checkpoints (every N steps and at epoch end, keep the last k and the
// best, resume), and logging (JSONL/CSV metrics with a step-time breakdown, GPU
// monitoring, a rank-0 progress line).
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/ddp.h"
#include "comm/process_group.h"
#include "data/dataset.h"
#include "layers/module.h"
#include "optim/grad_scaler.h"

namespace tandem::optim {
class Optimizer;
class LRScheduler;
}  // namespace tandem::optim

namespace tandem::train {

/// How the work is spread over devices.
struct StrategyConfig {
  /// "single" (one device), "dp" (DataParallel: one process, several devices) or "ddp"
  /// (DistributedDataParallel: this process is one rank).
  std::string mode = "single";
  /// single: {device} (empty: cuda:0 when present, else the CPU). dp: the replicas'
  /// devices (required). ddp: {this rank's device} (empty: cuda:LOCAL_RANK % GPUs when
  /// GPUs are present, else the CPU).
  std::vector<Device> devices = {};
  /// ddp without a group given to the Trainer: the backend comm::init() uses
  /// ("auto", "nccl", "gloo"; "local" needs the group passed in).
  std::string backend = "auto";
  /// ddp: "env" reads the launcher's environment (torchrun/tandemrun, Slurm, Open MPI).
  std::string init_method = "env";
  /// ddp: batch-norm statistics over all ranks (comm::convert_sync_batchnorm).
  bool sync_bn = false;
  /// ddp: bucket_cap_mb, first_bucket_cap_mb, find_unused_parameters,
  /// gradient_as_bucket_view, broadcast_buffers, static_graph.
  comm::DDPOptions ddp = {};
};

/// Mixed precision.
struct PrecisionConfig {
  /// Run matrix products and convolutions in amp_dtype under AutocastGuard.
  bool use_amp = false;
  /// kBF16 or kF16; f16 also scales the loss with a GradScaler.
  DType amp_dtype = DType::kBF16;
  /// On CUDA the Trainer makes the scaler (and the optimizer) capturable: the scale and
  /// the skip decisions stay on the device. scaler.capturable asks for that elsewhere too.
  optim::GradScalerOptions scaler = {};
  /// Set: the Trainer calls cuda::set_allow_tf32 with it when built (a process-wide
  /// switch: f32 matrix products and convolutions on TF32 tensor cores). Unset: the
  /// switch is left as it is (off unless the program turned it on).
  std::optional<bool> allow_tf32 = std::nullopt;
};

struct OptimizerConfig {
  /// "sgd", "adam" or "adamw".
  std::string name = "sgd";
  double lr = 0.05;
  /// SGD.
  double momentum = 0.9;
  bool nesterov = false;
  /// Adam/AdamW.
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 5e-4;
  /// Max global gradient norm after unscaling; 0: no clipping.
  double clip_grad_norm = 0.0;
};

/// The learning-rate schedule, stepped once per optimizer step.
struct ScheduleConfig {
  /// "constant", "step" or "cosine".
  std::string name = "constant";
  /// Linear warm-up from 10% of the lr over this many optimizer steps (0: none).
  int64_t warmup_steps = 0;
  /// step: decay by gamma every step_size_epochs epochs.
  int64_t step_size_epochs = 1;
  double gamma = 0.1;
  /// Multiply the lr by world size × accumulation (optim::scaled_lr), as the linear
  /// scaling rule of large-batch training.
  bool scale_lr_linear = false;
};

struct CheckpointConfig {
  /// Where checkpoints go ("" disables saving); files "ckpt-<step>.tck" and "best.tck".
  std::string dir = "";
  /// Save every N optimizer steps (0: only at epoch ends).
  int64_t every_steps = 0;
  bool at_epoch_end = true;
  /// Keep the newest k step checkpoints (best.tck is kept besides them); 0 keeps all.
  int keep_last = 3;
  /// Epoch metric that selects best.tck ("val_acc", "val_loss"); "" disables it.
  std::string best_metric = "val_acc";
  bool best_maximize = true;
  /// "" starts fresh, "auto" resumes from the newest checkpoint in dir if there is one,
  /// anything else is a checkpoint file to resume from.
  std::string resume = "";
};

struct LoggingConfig {
  /// JSON Lines and CSV logs of steps and epochs ("" disables each; the CSV of steps
  /// goes to "<csv>" with "-epochs" inserted before the extension for epochs).
  std::string jsonl = "";
  std::string csv = "";
  /// A step record every N optimizer steps (0: epochs only): the epoch-so-far mean loss
  /// and mean phase times over all ranks (sums and counts all-reduced), lr, loss scale.
  int64_t log_every_steps = 50;
  /// The rank-0 progress line on `out`: redrawn in place on a terminal, else a plain
  /// line every progress_every micro-batches. `terminal` overrides the isatty check
  /// (spawned workers write to a pipe their parent turns into its terminal).
  bool progress = true;
  FILE* out = stderr;
  int64_t progress_every = 100;
  std::optional<bool> terminal = std::nullopt;
  /// Sample GPU utilisation, memory and power at log points (when NVML is present).
  bool gpu_monitor = true;
  /// On CUDA, synchronise the device at phase boundaries so the step-time breakdown is
  /// device time, not launch time (costs a little speed).
  bool exact_step_times = false;
};

struct TrainerConfig {
  int64_t epochs = 1;
  /// Per process (rank) for ddp, as in PyTorch DDP; the global batch for single and dp.
  int64_t batch_size = 128;
  /// Validation batch (0: batch_size); larger is faster and changes nothing.
  int64_t val_batch_size = 0;
  /// Micro-batches per optimizer step (loss divided by it; DDP syncs only the last).
  int64_t accumulate = 1;
  /// Recompute activations in backward, with nn::enable_grad_checkpointing's segments
  /// (a Sequential in about sqrt(L) segments; else each Sequential child, such as
  /// ResNet-18's stages or a GPT's blocks, one segment per block).
  bool grad_checkpoint = false;
  /// On CUDA, once three optimizer steps have run eagerly, capture a micro-batch's work in
  /// a CUDA graph and replay it for every full batch: forward, loss and backward, and at
  /// a step's last micro-batch the DDP all-reduce, unscaling and clipping, the optimizer
  /// step, the loss-scale update and the zeroing of the gradients, in one launch. The
  /// optimizer (and an f16 scaler) run capturable, so the lr schedule and the loss scale
  /// reach the replays; the loss is read back every 20 micro-batches as without graphs.
  /// Shapes are static: a smaller last batch runs eagerly. Gradients are zeroed in place
  /// rather than dropped, so every trainable parameter must get a gradient each step
  /// (checked once the warm-up has run). A replayed micro-batch counts as forward_ms in
  /// the step-time breakdown. Not with strategy "dp", sync_bn, grad_checkpoint or
  /// find_unused_parameters; ddp needs the nccl backend.
  bool cuda_graph = false;
  /// Seeds the default generators (initialisation, dropout) and the data order.
  uint64_t seed = 0;
  StrategyConfig strategy = {};
  PrecisionConfig precision = {};
  OptimizerConfig optimizer = {};
  ScheduleConfig schedule = {};
  CheckpointConfig checkpoint = {};
  LoggingConfig logging = {};

  /// The configuration as JSON (stored in checkpoints and the final report).
  nlohmann::json to_json() const;
};

/// One epoch's results, over all ranks (sums and counts, not means of means). For a
/// sequence model (logits (N, T, V), see train/loss.h) every position is a prediction:
/// losses and accuracy are per token and val_samples counts tokens.
struct EpochMetrics {
  int64_t epoch = 0;  // 1-based
  int64_t global_step = 0;
  double train_loss = 0.0;
  double val_loss = 0.0;
  double val_acc = 0.0;
  int64_t val_samples = 0;  // predictions evaluated: samples, or tokens of a sequence model
  double lr = 0.0;
  double loss_scale = 1.0;
  int64_t skipped_steps = 0;  // optimizer steps the scaler skipped this epoch
  double samples_per_s = 0.0;
  double seconds = 0.0;
  /// Mean per optimizer step, milliseconds, averaged over ranks.
  double data_ms = 0.0, forward_ms = 0.0, backward_ms = 0.0, comm_ms = 0.0, optimizer_ms = 0.0;
  /// GPU figures at epoch end (zeros on the CPU or without NVML).
  double gpu_util_pct = 0.0, gpu_memory_gib = 0.0, gpu_power_w = 0.0, gpu_peak_allocated_gib = 0.0;

  nlohmann::json to_json() const;
  static EpochMetrics from_json(const nlohmann::json& j);
};

/// A run stopped because the loss stopped being finite.
class TrainingDiverged : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Trainer {
 public:
  /// Checks the configuration (std::invalid_argument naming the option, what was
  /// expected and what was got), places the model, wraps it for the strategy, makes the
  /// optimizer, schedule, scaler and loaders, and resumes if asked. For ddp, `group` is
  /// this rank's process group (made by comm::init() from the launcher's environment
  /// when null). `model` is built identically on every rank (DDP checks it).
  Trainer(TrainerConfig config, std::shared_ptr<nn::Module> model, std::shared_ptr<const data::Dataset> train,
          std::shared_ptr<const data::Dataset> val, std::shared_ptr<comm::ProcessGroup> group = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Trains until config.epochs epochs are done (continuing a resumed run), validating
  /// after each epoch. Returns the history (every epoch, including those before a
  /// resume). Throws TrainingDiverged when the loss becomes NaN or infinite.
  const std::vector<EpochMetrics>& fit();
  /// Loss and accuracy over the whole validation set (every rank evaluates its exact
  /// share; the sums are all-reduced).
  EpochMetrics validate();

  const std::vector<EpochMetrics>& history() const { return history_; }
  /// The model as built (not the DDP/DP wrapper): what to save or evaluate.
  nn::Module& model() { return *model_; }
  const TrainerConfig& config() const { return config_; }
  int rank() const;
  int world_size() const;
  Device device() const { return device_; }
  int64_t global_step() const { return global_step_; }
  /// Where the run resumed from ("" when it started fresh).
  const std::string& resumed_from() const { return resumed_from_; }
  /// Writes a checkpoint of the full training state to `path` now (rank 0 only writes).
  void save_checkpoint(const std::string& path);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  TrainerConfig config_;
  std::shared_ptr<nn::Module> model_;
  Device device_;
  int64_t global_step_ = 0;
  std::vector<EpochMetrics> history_;
  std::string resumed_from_;
};

}  // namespace tandem::train
