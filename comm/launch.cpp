// The launch environment (torchrun-style, Slurm, Open MPI or none) and comm::init():
// rank 0 hosts the TCP store, every rank joins through it, and the chosen backend's
// factory makes the process group.
#include "comm/launch.h"

#include <atomic>
#include <charconv>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>

#include "comm/local.h"
#include "engine/cuda/runtime.h"
#include "tandem/config.h"

namespace tandem::comm {
namespace {

std::optional<std::string> lookup_var(const EnvLookup& lookup, const char* name) {
  const char* v = lookup(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

// Parses the whole of `text` as a base-10 integer >= `min`; throws naming `name`.
int parse_int(const char* name, const std::string& text, int min) {
  int v = 0;
  const char* b = text.data();
  const char* e = b + text.size();
  auto [ptr, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || ptr != e || b == e)
    throw std::invalid_argument(std::string("[launch] ") + name + ": expected an integer >= " + std::to_string(min) +
                                ", got '" + text + "'");
  if (v < min)
    throw std::invalid_argument(std::string("[launch] ") + name + ": expected an integer >= " + std::to_string(min) +
                                ", got " + text);
  return v;
}

std::optional<int> int_var(const EnvLookup& lookup, const char* name, int min) {
  auto v = lookup_var(lookup, name);
  if (!v) return std::nullopt;
  return parse_int(name, *v, min);
}

// Reads `name`, which must be set because `because` is.
int required_int(const EnvLookup& lookup, const char* name, int min, const char* because) {
  auto v = int_var(lookup, name, min);
  if (!v)
    throw std::invalid_argument(std::string("[launch] ") + because + " is set but " + name +
                                " is not (the launcher sets both)");
  return *v;
}

// The largest task count in Slurm's per-node list, e.g. "4", "4(x2)" or "2(x3),1".
int max_tasks_per_node(const char* name, const std::string& text) {
  int best = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
    if (j == i)
      throw std::invalid_argument(std::string("[launch] ") + name + ": expected a list like '4' or '2(x3),1', got '" +
                                  text + "'");
    best = std::max(best, parse_int(name, text.substr(i, j - i), 1));
    // Skip a "(xN)" repeat count and the comma.
    while (j < text.size() && text[j] != ',') ++j;
    i = j + 1;
  }
  if (best == 0)
    throw std::invalid_argument(std::string("[launch] ") + name + ": expected a list like '4' or '2(x3),1', got '" +
                                text + "'");
  return best;
}

// Names of the variables the values came from, for error messages.
struct VarNames {
  const char* rank;
  const char* world_size;
  const char* local_rank;
  const char* local_world_size;
};

void validate(const LaunchEnv& env, const VarNames& n) {
  if (env.world_size < 1)
    throw std::invalid_argument(std::string("[launch] ") + n.world_size + ": expected an integer >= 1, got " +
                                std::to_string(env.world_size));
  if (env.rank >= env.world_size)
    throw std::invalid_argument(std::string("[launch] expected ") + n.rank + " < " + n.world_size + ", got " + n.rank +
                                "=" + std::to_string(env.rank) + ", " + n.world_size + "=" +
                                std::to_string(env.world_size));
  if (env.local_world_size < 1 || env.local_world_size > env.world_size)
    throw std::invalid_argument(std::string("[launch] expected ") + n.local_world_size + " in [1, " + n.world_size +
                                "], got " + n.local_world_size + "=" + std::to_string(env.local_world_size) + ", " +
                                n.world_size + "=" + std::to_string(env.world_size));
  if (env.local_rank >= env.local_world_size)
    throw std::invalid_argument(std::string("[launch] expected ") + n.local_rank + " < " + n.local_world_size +
                                ", got " + n.local_rank + "=" + std::to_string(env.local_rank) + ", " +
                                n.local_world_size + "=" + std::to_string(env.local_world_size));
}

// MASTER_ADDR/MASTER_PORT, when set, name the store for every launcher.
void read_master(const EnvLookup& lookup, LaunchEnv& env, std::optional<std::string> fallback_addr,
                 const std::string& why_needed) {
  if (auto addr = lookup_var(lookup, "MASTER_ADDR")) {
    if (addr->empty()) throw std::invalid_argument("[launch] MASTER_ADDR: expected a host name or address, got ''");
    env.master_addr = *addr;
  } else if (fallback_addr) {
    env.master_addr = *fallback_addr;
  } else {
    throw std::invalid_argument("[launch] MASTER_ADDR is not set and " + why_needed +
                                "; set it to rank 0's host name or address");
  }
  if (auto port = int_var(lookup, "MASTER_PORT", 1)) {
    if (*port > 65535) throw std::invalid_argument("[launch] MASTER_PORT: expected a port in [1, 65535], got " + std::to_string(*port));
    env.master_port = *port;
  }
}

LaunchEnv torchrun_env(const EnvLookup& lookup) {
  LaunchEnv env;
  env.launcher = "torchrun";
  env.rank = required_int(lookup, "RANK", 0, "WORLD_SIZE");
  env.world_size = required_int(lookup, "WORLD_SIZE", 1, "RANK");
  // Without the local variables, assume one node (a hand-started single-node job).
  env.local_world_size = int_var(lookup, "LOCAL_WORLD_SIZE", 1).value_or(env.world_size);
  env.local_rank = int_var(lookup, "LOCAL_RANK", 0).value_or(env.rank % env.local_world_size);
  validate(env, {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  read_master(lookup, env, "127.0.0.1", "");
  return env;
}

LaunchEnv slurm_env(const EnvLookup& lookup) {
  LaunchEnv env;
  env.launcher = "slurm";
  env.rank = required_int(lookup, "SLURM_PROCID", 0, "SLURM_NTASKS");
  env.world_size = required_int(lookup, "SLURM_NTASKS", 1, "SLURM_PROCID");
  env.local_rank = int_var(lookup, "SLURM_LOCALID", 0).value_or(0);
  const int nodes = int_var(lookup, "SLURM_NNODES", 1).value_or(1);
  const char* per_node_var = "SLURM_NTASKS_PER_NODE";
  if (auto v = lookup_var(lookup, "SLURM_NTASKS_PER_NODE")) {
    env.local_world_size = max_tasks_per_node("SLURM_NTASKS_PER_NODE", *v);
  } else if (auto t = lookup_var(lookup, "SLURM_TASKS_PER_NODE")) {
    env.local_world_size = max_tasks_per_node("SLURM_TASKS_PER_NODE", *t);
    per_node_var = "SLURM_TASKS_PER_NODE";
  } else {
    env.local_world_size = (env.world_size + nodes - 1) / nodes;
  }
  validate(env, {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", per_node_var});
  // srun runs on the allocation's first node, so its address is where rank 0 lives.
  std::optional<std::string> fallback = lookup_var(lookup, "SLURM_LAUNCH_NODE_IPADDR");
  if (!fallback && nodes == 1) fallback = "127.0.0.1";
  read_master(lookup, env, fallback,
              "the Slurm job spans " + std::to_string(nodes) + " nodes without SLURM_LAUNCH_NODE_IPADDR");
  // Jobs sharing a node must not share a store port: derive it from the job id.
  if (lookup("MASTER_PORT") == nullptr) {
    if (auto job = int_var(lookup, "SLURM_JOB_ID", 0)) env.master_port = 20000 + *job % 10000;
  }
  return env;
}

LaunchEnv openmpi_env(const EnvLookup& lookup) {
  LaunchEnv env;
  env.launcher = "openmpi";
  env.rank = required_int(lookup, "OMPI_COMM_WORLD_RANK", 0, "OMPI_COMM_WORLD_SIZE");
  env.world_size = required_int(lookup, "OMPI_COMM_WORLD_SIZE", 1, "OMPI_COMM_WORLD_RANK");
  env.local_world_size = int_var(lookup, "OMPI_COMM_WORLD_LOCAL_SIZE", 1).value_or(env.world_size);
  env.local_rank = int_var(lookup, "OMPI_COMM_WORLD_LOCAL_RANK", 0).value_or(env.rank % env.local_world_size);
  validate(env, {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                 "OMPI_COMM_WORLD_LOCAL_SIZE"});
  std::optional<std::string> fallback;
  if (env.local_world_size == env.world_size) fallback = "127.0.0.1";
  read_master(lookup, env, fallback,
              "the Open MPI job spans several nodes (pass it with mpirun -x MASTER_ADDR=<rank 0's host>)");
  return env;
}

// Numbers init() calls so that a second init() in the same job joins afresh.
std::atomic<int> init_generation{0};

// Every rank announces itself; the last to arrive releases the others. Fails with the
// number that joined, which names the usual mistake (a wrong WORLD_SIZE or port).
void join(Store& store, const LaunchEnv& env, int generation, std::chrono::milliseconds timeout) {
  const std::string prefix = "tandem/init/" + std::to_string(generation) + "/";
  if (store.add(prefix + "joined", 1) == env.world_size) store.set(prefix + "all_joined", {1});
  try {
    store.wait({prefix + "all_joined"});
  } catch (const std::runtime_error&) {
    int64_t joined = -1;
    try {
      joined = store.add(prefix + "joined", 0);
    } catch (const std::runtime_error&) {
      // The store itself is gone: report the original failure below without a count.
    }
    throw std::runtime_error("[init] rank " + std::to_string(env.rank) + " timed out after " +
                             std::to_string(timeout.count()) + " ms waiting for all " +
                             std::to_string(env.world_size) + " ranks to join the store at " + env.master_addr +
                             ":" + std::to_string(env.master_port) +
                             (joined >= 0 ? " (" + std::to_string(joined) + " joined)" : " (the store is unreachable)") +
                             "; check that every rank runs with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
  }
}

}  // namespace

LaunchEnv launch_env(const EnvLookup& lookup) {
  if (lookup("RANK") != nullptr || lookup("WORLD_SIZE") != nullptr) return torchrun_env(lookup);
  if (lookup("SLURM_PROCID") != nullptr) return slurm_env(lookup);
  if (lookup("OMPI_COMM_WORLD_RANK") != nullptr) return openmpi_env(lookup);
  LaunchEnv env;
  read_master(lookup, env, "127.0.0.1", "");
  return env;
}

LaunchEnv launch_env() {
  return launch_env([](const char* name) { return static_cast<const char*>(std::getenv(name)); });
}

std::string resolve_backend(const std::string& backend, int world_size) {
  if (backend == "auto") {
    if (TANDEM_NCCL && cuda::is_available()) return "nccl";
    if (TANDEM_GLOO) return "gloo";
    if (world_size == 1) return "local";
    throw std::invalid_argument("[init] no backend for world size " + std::to_string(world_size) +
                                ": this Tandem was built without Gloo (-DTANDEM_GLOO=ON) and without NCCL "
                                "(-DTANDEM_NCCL=ON) or no GPU is usable");
  }
  if (backend == "nccl") {
    if (!TANDEM_NCCL)
      throw std::invalid_argument(
          "[init] backend 'nccl' is not built into this Tandem; reconfigure with -DTANDEM_CUDA=ON -DTANDEM_NCCL=ON");
    if (!cuda::is_available())
      throw std::invalid_argument("[init] backend 'nccl' needs a CUDA device, got none: " + cuda::unavailable_reason());
    return backend;
  }
  if (backend == "gloo") {
    if (!TANDEM_GLOO)
      throw std::invalid_argument(
          "[init] backend 'gloo' is not built into this Tandem; reconfigure with -DTANDEM_GLOO=ON (needs libgloo-dev)");
    return backend;
  }
  if (backend == "local") {
    if (world_size != 1)
      throw std::invalid_argument("[init] backend 'local' runs ranks as threads of one process; expected world size "
                                  "1, got " + std::to_string(world_size) + " (use gloo or nccl)");
    return backend;
  }
  throw std::invalid_argument("[init] expected backend \"auto\", \"nccl\", \"gloo\" or \"local\", got \"" + backend +
                              "\"");
}

std::shared_ptr<ProcessGroup> init(const InitOptions& options) {
  if (options.timeout.count() <= 0)
    throw std::invalid_argument("[init] expected a positive timeout, got " + std::to_string(options.timeout.count()) +
                                " ms");
  const LaunchEnv env = launch_env();
  const std::string backend = resolve_backend(options.backend, env.world_size);
  const ProcessGroupOptions group_options{.timeout = options.timeout, .debug = options.debug};
  const int generation = init_generation++;

  std::shared_ptr<Store> store;
  if (env.world_size == 1) {
    store = make_hash_store(options.timeout);
  } else {
    store = make_tcp_store({.host = env.master_addr,
                            .port = env.master_port,
                            .is_server = env.rank == 0,
                            .world_size = env.world_size,
                            .timeout = options.timeout,
                            .rank = env.rank});
    join(*store, env, generation, options.timeout);
  }

  std::shared_ptr<ProcessGroup> group;
  if (backend == "nccl") {
    cuda::set_device(env.local_rank % cuda::device_count());
#if TANDEM_NCCL
    group = make_nccl_group(store, env.rank, env.world_size, group_options);
#endif
  } else if (backend == "gloo") {
#if TANDEM_GLOO
    group = make_gloo_group(store, env.rank, env.world_size, group_options);
#endif
  } else {
    // "local" at world size 1: resolve_backend() allows nothing else.
    group = make_local_group(1, group_options).front();
  }
  // The group owns the store too: rank 0's store is the server every rank reaches
  // (for failure reports and debug checks), so it must live as long as the group,
  // whether or not the backend keeps a reference. The group goes first.
  ProcessGroup* raw = group.get();
  return std::shared_ptr<ProcessGroup>(raw, [group = std::move(group), store = std::move(store)](ProcessGroup*) mutable {
    group.reset();
    store.reset();
  });
}

}  // namespace tandem::comm
