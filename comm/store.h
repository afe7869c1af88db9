// Store: the key-value store ranks meet through (NCCL's unique id, Gloo's
// rendezvous, debug-mode checks). TCPStore is hosted by rank 0 and reached by every
// rank over TCP, as torchrun's store is; every blocking call has a timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/process_group.h"

namespace tandem::comm {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<uint8_t>& value) = 0;
  /// Waits (up to the store's timeout) for `key` to be set and returns its value;
  /// throws std::runtime_error naming the key and the wait on timeout.
  virtual std::vector<uint8_t> get(const std::string& key) = 0;
  /// Adds `delta` to the integer at `key` (0 when absent) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  /// Waits until every key is set, or throws naming the missing ones on timeout.
  virtual void wait(const std::vector<std::string>& keys) = 0;
  /// True if every key is set (does not wait).
  virtual bool check(const std::vector<std::string>& keys) = 0;
  virtual std::chrono::milliseconds timeout() const = 0;
};

struct TCPStoreOptions {
  std::string host = "127.0.0.1";
  int port = 29500;
  /// Rank 0 (is_server) listens; the others connect, retrying until the timeout.
  bool is_server = false;
  int world_size = 1;
  std::chrono::milliseconds timeout = kDefaultTimeout;
  /// This process's rank, used only to name it in error messages (-1: unknown).
  int rank = -1;
};

/// Makes the TCP store (server and client in rank 0's process, client elsewhere).
std::shared_ptr<Store> make_tcp_store(const TCPStoreOptions& options);
/// An in-process store for tests and the local backend.
std::shared_ptr<Store> make_hash_store(std::chrono::milliseconds timeout = kDefaultTimeout);

}  // namespace tandem::comm
