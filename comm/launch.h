// Launch and rendezvous: what the launcher (tandemrun/torchrun, Slurm's srun, Open
// MPI's mpirun) told this process through its environment, and comm::init(), which
// meets the other ranks through a TCP store hosted by rank 0 and makes the group.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "comm/gloo.h"
#include "comm/nccl.h"
#include "comm/process_group.h"
#include "comm/store.h"

namespace tandem::comm {

/// Where this process sits in the job, read from the launcher's environment.
struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  /// Rank 0's host, where the TCP store listens.
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// "torchrun" (RANK/WORLD_SIZE, also what tandemrun sets), "slurm", "openmpi" or
  /// "none" (no launcher: world size 1).
  std::string launcher = "none";
};

/// Looks a variable up; returns nullptr when it is unset.
using EnvLookup = std::function<const char*(const char*)>;

/// Reads the launcher's environment, in this order: torchrun-style RANK/WORLD_SIZE,
/// Slurm SLURM_PROCID/SLURM_NTASKS, Open MPI OMPI_COMM_WORLD_RANK/SIZE, else world
/// size 1. MASTER_ADDR/MASTER_PORT override the store's address for every launcher.
/// Throws std::invalid_argument naming the variable for malformed or inconsistent values.
LaunchEnv launch_env();
/// The same with a custom lookup (tests).
LaunchEnv launch_env(const EnvLookup& lookup);

struct InitOptions {
  /// "auto" (nccl when a GPU is usable and NCCL is built, else gloo when built, else
  /// local at world size 1), "nccl", "gloo" or "local".
  std::string backend = "auto";
  std::chrono::milliseconds timeout = kDefaultTimeout;
  /// Checks every collective's op, dtype and size across ranks (TANDEM_DISTRIBUTED_DEBUG=1).
  bool debug = debug_from_env();
};

/// Resolves "auto" and checks the name, the build and the world size; returns
/// "nccl", "gloo" or "local", or throws naming the backend and the CMake option.
std::string resolve_backend(const std::string& backend, int world_size);

/// Reads launch_env(), meets the other ranks through a TCP store (rank 0 hosts it on
/// MASTER_PORT; at world size 1 an in-process store, so no port is taken) and returns
/// this rank's process group. With nccl, the current CUDA device becomes
/// LOCAL_RANK % device_count() first.
std::shared_ptr<ProcessGroup> init(const InitOptions& options = {});

// The backend factories, defined in comm/gloo.cpp and comm/nccl.cpp (only when that
// backend is built; init() checks before calling).
std::shared_ptr<ProcessGroup> make_gloo_group(std::shared_ptr<Store> store, int rank, int size,
                                              ProcessGroupOptions options);
std::shared_ptr<ProcessGroup> make_nccl_group(std::shared_ptr<Store> store, int rank, int size,
                                              ProcessGroupOptions options = {});

}  // namespace tandem::comm
