// ProcessGroup: a set of ranks and asynchronous collectives over tensors, with one
// implementation per backend (local threads, Gloo over TCP, NCCL). Collectives work
// in place on the tensors given and return a Work handle to wait on.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace tandem::comm {

enum class ReduceOp { kSum, kAvg, kMax, kMin };
/// "sum", "avg", "max", "min".
const char* reduce_op_name(ReduceOp op);

/// The default for every blocking step (rendezvous, collectives, barriers).
inline constexpr std::chrono::milliseconds kDefaultTimeout{300'000};

/// A collective in flight.
class Work {
 public:
  virtual ~Work() = default;
  /// CPU tensors: blocks until the collective is done. CUDA tensors: makes the
  /// caller's current stream wait for it (the host does not block). Throws the
  /// collective's error (std::runtime_error naming the rank, the peer and the op)
  /// if it failed or timed out.
  virtual void wait() = 0;
  /// True once the collective has finished (successfully or not).
  virtual bool is_completed() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

struct ProcessGroupOptions {
  std::chrono::milliseconds timeout = kDefaultTimeout;
  /// Before every collective, check that all ranks issue the same op, dtype and
  /// element count, and report the first mismatch by rank. Defaults to the
  /// environment variable TANDEM_DISTRIBUTED_DEBUG=1.
  bool debug = false;
};

/// Reads TANDEM_DISTRIBUTED_DEBUG (1/true/on enables).
bool debug_from_env();

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  /// "local", "gloo" or "nccl".
  virtual std::string backend() const = 0;
  const ProcessGroupOptions& options() const { return options_; }

  /// Reduces each tensor across ranks in place (avg divides the sum by size()). A
  /// list is one coalesced collective; all tensors share a device.
  virtual WorkPtr all_reduce(const std::vector<Tensor>& tensors, ReduceOp op = ReduceOp::kSum) = 0;
  /// Copies each tensor of rank `root` into the same tensor on every rank.
  virtual WorkPtr broadcast(const std::vector<Tensor>& tensors, int root = 0) = 0;
  /// outputs[r] receives rank r's `input` (outputs.size() == size(), shapes equal).
  virtual WorkPtr all_gather(const std::vector<Tensor>& outputs, const Tensor& input) = 0;
  /// `output` receives the reduction over ranks of inputs[rank()] (inputs.size() == size()).
  virtual WorkPtr reduce_scatter(const Tensor& output, const std::vector<Tensor>& inputs,
                                 ReduceOp op = ReduceOp::kSum) = 0;
  /// Returns when every rank has called barrier().
  virtual WorkPtr barrier() = 0;

  WorkPtr all_reduce(const Tensor& tensor, ReduceOp op = ReduceOp::kSum) { return all_reduce(std::vector<Tensor>{tensor}, op); }
  WorkPtr broadcast(const Tensor& tensor, int root = 0) { return broadcast(std::vector<Tensor>{tensor}, root); }

 protected:
  ProcessGroup(int rank, int size, ProcessGroupOptions options);

 private:
  int rank_;
  int size_;
  ProcessGroupOptions options_;
};

}  // namespace tandem::comm
