// The nccl backend: CUDA tensors, one process (one communicator) per GPU. Collectives
// run on a dedicated communication stream ordered after the caller's stream with
// events; a watchdog thread aborts the communicator when a collective outlives the
// timeout or NCCL reports an asynchronous error. Collectives issued while the caller's
// stream is captured into a CUDA graph are recorded into it (DDP's all-reduce inside a
// captured training step); barrier() and staged all_gather / reduce_scatter refuse a
// capture, and the watchdog does not see captured work. Built only with TANDEM_NCCL.
#pragma once

#include <memory>

#include "comm/process_group.h"
#include "comm/store.h"

namespace tandem::comm {

/// Creates rank `rank` of an NCCL group of `size` ranks: rank 0 makes the unique id
/// and publishes it through `store`, the others read it; the communicator lives on
/// the current CUDA device (comm::init() makes that LOCAL_RANK's GPU first).
/// Initialisation gives up (aborting the communicator) after options.timeout.
/// (Also declared, with default arguments, in comm/launch.h.)
std::shared_ptr<ProcessGroup> make_nccl_group(std::shared_ptr<Store> store, int rank, int size,
                                              ProcessGroupOptions options);

}  // namespace tandem::comm
