// Starting and supervising the N worker processes of a job on this machine, with the
// torchrun-style environment comm::init() reads. Shared by tandemrun and by
// tandem-train --strategy ddp, which spawns its own workers the way Lightning does.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace tandem::comm {

/// What happens to the workers' stdout and stderr.
enum class WorkerOutput {
  /// Every line of every worker, prefixed with "[rank k] " (tandemrun).
  kPrefixAll,
  /// Rank 0's output unchanged; other ranks' stdout dropped and their stderr prefixed
  /// with "[rank k] ", so their errors still show (tandem-train, where only rank 0 reports).
  kRankZeroOnly,
};

struct SpawnOptions {
  /// Workers to start, ranks 0 .. nproc-1 (>= 1).
  int nproc = 1;
  std::string master_addr = "127.0.0.1";
  /// Port of rank 0's store; 0 picks a free one.
  int master_port = 29500;
  /// Stop the workers and return 124 after this many seconds (0: no limit).
  double timeout_s = 0;
  /// Seconds between SIGTERM and SIGKILL when stopping workers.
  double grace_s = 5;
  /// The program and its arguments (argv[0] is looked up in PATH).
  std::vector<std::string> command;
  /// Variables set in every worker besides RANK, WORLD_SIZE, LOCAL_RANK,
  /// LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
  std::vector<std::pair<std::string, std::string>> env;
  WorkerOutput output = WorkerOutput::kPrefixAll;
  /// Prefix "[name] " of the supervisor's own messages on stderr.
  std::string name = "tandemrun";
};

/// Starts the workers, each in its own process group, passes their output on line by
/// line, forwards SIGINT/SIGTERM to them (a second one kills them), and when one fails
/// stops the rest (SIGTERM, SIGKILL after grace_s) and returns its status. Returns the
/// shell-style status of the job: 0, the first failing worker's exit code or 128 +
/// its signal, 124 on timeout, or 128 + the signal that interrupted us. Installs
/// handlers for SIGINT, SIGTERM and SIGCHLD and ignores SIGPIPE while it runs, and
/// restores them before returning; other threads should block those signals. Throws
/// std::invalid_argument for bad options and std::runtime_error (after killing any
/// worker already started) when a pipe or fork fails.
int run_workers(const SpawnOptions& options);

/// A TCP port the kernel reports free right now, or -1 (errno set). Rank 0 binds it a
/// moment later; SO_REUSEADDR on the store's socket makes that reliable.
int pick_free_port();

}  // namespace tandem::comm
