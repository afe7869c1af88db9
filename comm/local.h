// The `local` backend: ranks are threads of one process that share memory. Used by
// tests and by DataParallel; takes CPU tensors and CUDA tensors (ranks may hold
// tensors on different GPUs of the machine).
#pragma once

#include <memory>
#include <vector>

#include "comm/process_group.h"

namespace tandem::comm {

/// Makes a group of `size` ranks; element r is rank r's ProcessGroup. Each must be
/// driven by its own thread (collectives block until every rank has joined), and
/// ranks must pass their own tensors, not views of another rank's. Debug checks run
/// when options.debug or TANDEM_DISTRIBUTED_DEBUG is set, through an in-process store.
std::vector<std::shared_ptr<ProcessGroup>> make_local_group(int size, ProcessGroupOptions options = {});

}  // namespace tandem::comm
