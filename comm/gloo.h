// The gloo backend: CPU collectives between processes over Gloo's TCP transport
// (Debian's libgloo-dev). Ranks meet through a tandem Store; each group runs its
// collectives in issue order on one worker thread.
#pragma once

#include <memory>

#include "comm/process_group.h"
#include "comm/store.h"

namespace tandem::comm {

/// Connects `size` processes (this one is `rank`) through `store` and returns their
/// gloo process group. Every rank must call it with the same size and options.
/// The TCP device binds 127.0.0.1 unless MASTER_ADDR names another host (then this
/// host's name) or GLOO_SOCKET_IFNAME names an interface.
std::shared_ptr<ProcessGroup> make_gloo_group(std::shared_ptr<Store> store, int rank, int size,
                                              ProcessGroupOptions options = {});

}  // namespace tandem::comm
