// DebugChecker: the TANDEM_DISTRIBUTED_DEBUG consistency check any backend can run
// before a collective. Every rank publishes (sequence number, op, dtype, element
// count) through a Store and compares with all ranks, so a mismatch is reported,
// identically on every rank, before it can corrupt data or hang a transport.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "comm/store.h"
#include "kernels/dtype.h"

namespace tandem::comm {

class DebugChecker {
 public:
  /// Keys are "<prefix>/<collective number>/<rank>"; ranks of one group must share
  /// the store and the prefix, and different groups on one store need different prefixes.
  DebugChecker(std::shared_ptr<Store> store, int rank, int size, std::string prefix = "tandem_debug");

  /// Publishes this rank's next collective and waits for every rank's. Throws
  /// std::runtime_error "[op] debug check: rank 1 issued all_reduce(float32, 7
  /// elements) but rank 0 issued broadcast(float32, 7 elements) as collective #3"
  /// (the lowest mismatching rank against rank 0, the same text on every rank), or,
  /// when a rank does not publish within the store's timeout, naming the missing ranks.
  void check(const char* op, DType dtype, int64_t numel);

  /// Collectives checked so far.
  int64_t count() const { return count_; }

 private:
  std::shared_ptr<Store> store_;
  int rank_;
  int size_;
  std::string prefix_;
  int64_t count_ = 0;
};

}  // namespace tandem::comm
