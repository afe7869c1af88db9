// Training state in a checkpoint: the model's parameters and buffers, the optimizer's
// per-parameter state and scalars, the learning-rate schedule, every random stream
// (Philox seeds and offsets of the CPU and each CUDA device), the data loader's epoch
// and position within it, the step and epoch counters, the world size and the
// training configuration — everything an uninterrupted run would have had in memory,
// so a resumed run continues exactly (bit for bit on the CPU).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataloader.h"
#include "layers/module.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"

namespace tandem::train {

/// Counters and descriptions saved beside the tensors.
struct TrainProgress {
  /// Completed epochs (the loader's epoch at the time of saving may be one more).
  int64_t epoch = 0;
  /// Optimizer steps taken since the start of training.
  int64_t global_step = 0;
  /// Ranks of the job that saved (1 without data parallelism).
  int world_size = 1;
  /// The training configuration, as the caller describes it (compared on resume by the
  /// caller if it wants; stored verbatim).
  nlohmann::json config = nlohmann::json::object();
  /// Anything else the caller wants back (best metric so far, history, ...).
  nlohmann::json extra = nlohmann::json::object();
};

/// The live objects whose state a checkpoint holds; null members are skipped (and must
/// then be null on resume too, or the checkpoint must hold no such state).
struct TrainingObjects {
  /// Saved as tensors "model.<name>" from state_dict() (pass the unwrapped module, not
  /// a DDP/DataParallel wrapper, so names do not depend on the strategy).
  nn::Module* model = nullptr;
  /// Per-parameter state as tensors "optimizer.<key>", scalars in the metadata.
  optim::Optimizer* optimizer = nullptr;
  optim::LRScheduler* scheduler = nullptr;
  /// Epoch and position within the epoch.
  data::DataLoader* loader = nullptr;
  /// Generators whose (seed, offset) are saved: by default the CPU's and every CUDA
  /// device's default generator.
  std::vector<Device> rng_devices = default_rng_devices();
  /// Extra state providers (GradScaler, ...): name -> (save to JSON, load from JSON).
  struct Extra {
    std::string name;
    std::function<nlohmann::json()> save;
    std::function<void(const nlohmann::json&)> load;
  };
  std::vector<Extra> extras = {};

  /// The CPU and every visible CUDA device.
  static std::vector<Device> default_rng_devices();
};

/// Writes a checkpoint of `objects` and `progress` to `path` (atomically). Call on one
/// rank (rank 0): under data parallelism the model and optimizer are the same everywhere.
void save_training_checkpoint(const std::filesystem::path& path, const TrainingObjects& objects,
                              const TrainProgress& progress);

/// Restores `objects` from a checkpoint and returns the saved progress. Every rank
/// calls it. `world_size` is the resuming job's: a different world size is accepted at
/// an epoch boundary (the sampler re-shards from the start of an epoch) and refused in
/// the middle of an epoch, with a message that says so. Throws std::runtime_error
/// naming the file for damage, std::invalid_argument naming what does not match.
TrainProgress load_training_checkpoint(const std::filesystem::path& path, const TrainingObjects& objects,
                                       int world_size = 1);

/// Checkpoints in `dir` written by save_training_checkpoint with the naming
/// "<prefix>-<global_step>.tck", newest (highest step) last.
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& dir,
                                                    const std::string& prefix = "ckpt");

}  // namespace tandem::train
