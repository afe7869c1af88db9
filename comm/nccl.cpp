// The nccl backend: one non-blocking NCCL communicator per group, collectives on a
// dedicated high-priority stream, Work handles that hold an end event, and a watchdog
// thread that turns timeouts and asynchronous NCCL errors into an aborted communicator
// and errors naming the rank and the operation.
#include "comm/nccl.h"

#include <nccl.h>

#include <atomic>
#include <chrono>
#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/collective_util.h"
#include "comm/debug_check.h"
#include "engine/cuda/runtime.h"
#include "engine/tensor.h"
#include "kernels/cuda/check.h"

// The communicator is created non-blocking (ncclConfig_t::blocking = 0, NCCL 2.14) so
// that no NCCL call can hang the host past the timeout; ncclAvg needs NCCL 2.10.
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "Tandem's nccl backend needs NCCL >= 2.14"
#endif

namespace tandem::comm {

namespace {

using Clock = std::chrono::steady_clock;

/// A process-wide count of groups made, so that groups created in the same order on
/// every rank use distinct store keys for their unique ids.
std::atomic<int64_t> g_group_counter{0};

ncclDataType_t nccl_dtype(DType dtype, const char* op) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kF64: return ncclFloat64;
    case DType::kF16: return ncclFloat16;
    case DType::kBF16: return ncclBfloat16;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
    case DType::kU8: return ncclUint8;
    case DType::kBool: return ncclUint8;  // one byte, 0 or 1; see nccl_op for reductions
  }
  throw std::invalid_argument(std::string("[") + op + "] expected a dtype the nccl backend supports, got " +
                              std::string(dtype_name(dtype)));
}

ncclRedOp_t nccl_op(ReduceOp op, DType dtype) {
  // On bool, sum and max are "or" and min is "and" (as on the other backends): on bytes
  // holding 0 or 1 that is max and min, where a byte sum could leave 2.
  if (dtype == DType::kBool) return op == ReduceOp::kMin ? ncclMin : ncclMax;
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  throw std::invalid_argument("[nccl] expected a ReduceOp of sum, avg, max or min, got " +
                              std::to_string(static_cast<int>(op)));
}

/// What a Work and the watchdog share: the end event, the start time and the error.
struct WorkState {
  std::string op;
  cuda::Event end;
  Clock::time_point start;
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::string error;  // set once, under mutex, before failed becomes true

  void fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex);
    if (failed.load()) return;
    error = message;
    failed.store(true);
  }
  std::string error_text() {
    std::lock_guard<std::mutex> lock(mutex);
    return error;
  }
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<WorkState> state, int device, bool host_blocking, std::chrono::milliseconds timeout)
      : state_(std::move(state)), device_(device), host_blocking_(host_blocking), timeout_(timeout) {}

  void wait() override {
    if (state_->failed.load()) throw std::runtime_error(state_->error_text());
    if (host_blocking_) {
      // barrier: the host waits, polling so that a watchdog abort (or our own deadline,
      // should the watchdog be late) ends the wait with an error instead of a hang.
      const Clock::time_point deadline = state_->start + timeout_ + std::chrono::seconds(1);
      while (!state_->end.query()) {
        if (state_->failed.load()) throw std::runtime_error(state_->error_text());
        if (Clock::now() > deadline)
          throw std::runtime_error("[" + state_->op + "] NCCL collective did not finish within " +
                                   std::to_string(timeout_.count()) + " ms");
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      if (state_->failed.load()) throw std::runtime_error(state_->error_text());
      return;
    }
    // The caller's stream waits on the device; the host goes on.
    state_->end.wait(cuda::current_stream(device_));
  }

  bool is_completed() override { return state_->failed.load() || state_->end.query(); }

 private:
  std::shared_ptr<WorkState> state_;
  int device_;
  bool host_blocking_;
  std::chrono::milliseconds timeout_;
};

class NcclGroup : public ProcessGroup {
 public:
  NcclGroup(const std::shared_ptr<Store>& store, int rank, int size, ProcessGroupOptions options)
      : ProcessGroup(rank, size, options), device_(cuda::current_device()) {
    cuda::check_device(device_, "make_nccl_group");
    cuda::DeviceGuard guard(device_);
    comm_stream_ = cuda::pool_stream(device_, /*high_priority=*/true);

    const std::string prefix = "nccl/" + std::to_string(g_group_counter.fetch_add(1));
    const std::string key = prefix + "/unique_id";
    if (options.debug) debug_ = std::make_unique<DebugChecker>(store, rank, size, prefix + "/debug");
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (rank == 0) {
      NCCL_CHECK(ncclGetUniqueId(&id));
      const auto* bytes = reinterpret_cast<const uint8_t*>(&id);
      store->set(key, std::vector<uint8_t>(bytes, bytes + sizeof(id)));
    } else {
      std::vector<uint8_t> bytes = store->get(key);  // waits up to the store's timeout
      if (bytes.size() != sizeof(id))
        throw std::runtime_error("[make_nccl_group] rank " + std::to_string(rank) + ": expected a " +
                                 std::to_string(sizeof(id)) + "-byte NCCL unique id under \"" + key + "\", got " +
                                 std::to_string(bytes.size()) + " bytes");
      std::memcpy(&id, bytes.data(), sizeof(id));
    }

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t result = ncclCommInitRankConfig(&comm_, size, id, rank, &config);
    if (result != ncclSuccess && result != ncclInProgress) {
      if (comm_ != nullptr) (void)ncclCommAbort(comm_);
      NCCL_CHECK(result);
    }
    {
      std::unique_lock<std::mutex> lock(comm_mutex_);
      settle_locked(lock, "make_nccl_group", Clock::now() + options.timeout,
                    " (is every one of the " + std::to_string(size) + " ranks running?)");
    }
    // One element for barrier(); allocated on the communication stream, which is the
    // only stream that touches it.
    {
      cuda::StreamGuard stream_guard(comm_stream_);
      barrier_buffer_ = Tensor::empty({1}, {.dtype = DType::kF32, .device = Device::cuda(device_)});
    }
    watchdog_ = std::thread([this] { watchdog_loop(); });
  }

  ~NcclGroup() override {
    {
      std::lock_guard<std::mutex> lock(works_mutex_);
      stop_ = true;
    }
    works_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    std::unique_lock<std::mutex> lock(comm_mutex_);
    if (comm_ == nullptr) return;
    if (aborted_) return;  // ncclCommAbort already freed the communicator
    // Finalize flushes outstanding work; if a peer is gone it could wait forever, so
    // it gets the timeout and then the communicator is aborted. A destructor cannot
    // throw: failures here end in an abort, which always releases the resources.
    ncclResult_t result = ncclCommFinalize(comm_);
    const Clock::time_point deadline = Clock::now() + options().timeout;
    while (result == ncclInProgress && Clock::now() < deadline) {
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      lock.lock();
      if (ncclCommGetAsyncError(comm_, &result) != ncclSuccess) result = ncclInternalError;
    }
    if (result == ncclSuccess) {
      (void)ncclCommDestroy(comm_);
    } else {
      (void)ncclCommAbort(comm_);
    }
    comm_ = nullptr;
  }

  std::string backend() const override { return "nccl"; }

  WorkPtr all_reduce(const std::vector<Tensor>& tensors, ReduceOp op) override {
    const char* name = "all_reduce";
    check_all_reduce_args(tensors, op);
    check_devices(name, tensors);
    const ncclRedOp_t red = nccl_op(op, tensors[0].dtype());
    const ncclDataType_t type = nccl_dtype(tensors[0].dtype(), name);
    if (debug_) debug_->check(name, tensors[0].dtype(), total_numel(tensors));
    return launch(name, tensors, false, [&] {
      for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& t = tensors[i];
        if (t.numel() == 0) continue;
        NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), type, red, comm_,
                                 comm_stream_.handle()));
      }
    });
  }

  WorkPtr broadcast(const std::vector<Tensor>& tensors, int root) override {
    const char* name = "broadcast";
    check_broadcast_args(tensors, root, size());
    check_devices(name, tensors);
    const ncclDataType_t type = nccl_dtype(tensors[0].dtype(), name);
    if (debug_) debug_->check(name, tensors[0].dtype(), total_numel(tensors));
    return launch(name, tensors, false, [&] {
      for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& t = tensors[i];
        if (t.numel() == 0) continue;
        NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), type, root, comm_,
                                 comm_stream_.handle()));
      }
    });
  }

  WorkPtr all_gather(const std::vector<Tensor>& outputs, const Tensor& input) override {
    const char* name = "all_gather";
    check_all_gather_args(outputs, input, size());
    check_devices(name, {input});
    check_devices(name, outputs);
    const ncclDataType_t type = nccl_dtype(input.dtype(), name);
    if (debug_) debug_->check(name, input.dtype(), input.numel());
    const auto count = static_cast<size_t>(input.numel());
    std::vector<Tensor> used = outputs;
    used.push_back(input);
    if (count == 0) return launch(name, used, false, [] {});
    if (packed(outputs)) {
      // outputs[r] already sit back to back: NCCL gathers straight into them.
      return launch(name, used, false, [&] {
        NCCL_CHECK(ncclAllGather(input.data_ptr(), outputs[0].data_ptr(), count, type, comm_, comm_stream_.handle()));
      });
    }
    // Otherwise gather into one buffer allocated on the communication stream (so the
    // caching allocator reuses it only after the copies below), then scatter it.
    refuse_buffer_under_capture(name, "outputs");
    Tensor buffer = comm_stream_buffer(count * static_cast<size_t>(size()), input.dtype());
    used.push_back(buffer);
    const size_t bytes = input.nbytes();
    return launch(
        name, used, false,
        [&] {
          NCCL_CHECK(ncclAllGather(input.data_ptr(), buffer.data_ptr(), count, type, comm_, comm_stream_.handle()));
        },
        {},
        [&] {
          for (int r = 0; r < size(); ++r)
            cuda::memcpy_async(outputs[static_cast<size_t>(r)].data_ptr(),
                               static_cast<const char*>(buffer.data_ptr()) + static_cast<size_t>(r) * bytes, bytes,
                               comm_stream_);
        });
  }

  WorkPtr reduce_scatter(const Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    const char* name = "reduce_scatter";
    check_reduce_scatter_args(output, inputs, op, size());
    check_devices(name, {output});
    check_devices(name, inputs);
    const ncclDataType_t type = nccl_dtype(output.dtype(), name);
    const ncclRedOp_t red = nccl_op(op, output.dtype());
    if (debug_) debug_->check(name, output.dtype(), output.numel());
    const auto count = static_cast<size_t>(output.numel());
    std::vector<Tensor> used = inputs;
    used.push_back(output);
    if (count == 0) return launch(name, used, false, [] {});
    if (packed(inputs)) {
      return launch(name, used, false, [&] {
        NCCL_CHECK(ncclReduceScatter(inputs[0].data_ptr(), output.data_ptr(), count, type, red, comm_,
                                     comm_stream_.handle()));
      });
    }
    // Pack the inputs into one buffer on the communication stream first.
    refuse_buffer_under_capture(name, "inputs");
    Tensor buffer = comm_stream_buffer(count * static_cast<size_t>(size()), output.dtype());
    used.push_back(buffer);
    const size_t bytes = output.nbytes();
    return launch(
        name, used, false,
        [&] {
          NCCL_CHECK(ncclReduceScatter(buffer.data_ptr(), output.data_ptr(), count, type, red, comm_,
                                       comm_stream_.handle()));
        },
        [&] {
          for (int r = 0; r < size(); ++r)
            cuda::memcpy_async(static_cast<char*>(buffer.data_ptr()) + static_cast<size_t>(r) * bytes,
                               inputs[static_cast<size_t>(r)].data_ptr(), bytes, comm_stream_);
        });
  }

  WorkPtr barrier() override {
    // An all-reduce of one element; its value is never read. wait() blocks the host.
    if (debug_) debug_->check("barrier", DType::kF32, 1);
    return launch("barrier", {barrier_buffer_}, true, [&] {
      NCCL_CHECK(ncclAllReduce(barrier_buffer_.data_ptr(), barrier_buffer_.data_ptr(), 1, ncclFloat32, ncclSum, comm_,
                               comm_stream_.handle()));
    });
  }

 private:
  /// The shared checks (collective_util.h) have seen defined tensors on one device;
  /// this one wants that device to be the communicator's GPU.
  void check_devices(const char* op, const std::vector<Tensor>& tensors) const {
    for (const Tensor& t : tensors) {
      if (!t.is_cuda())
        throw std::invalid_argument(std::string("[") + op + "] the nccl backend expects CUDA tensors on cuda:" +
                                    std::to_string(device_) + ", got a tensor on " + t.device().str() +
                                    " (use the gloo or local backend for CPU tensors)");
      if (t.device().index != device_)
        throw std::invalid_argument(std::string("[") + op + "] expected tensors on cuda:" + std::to_string(device_) +
                                    " (the group's device), got a tensor on " + t.device().str());
    }
  }

  /// True when list[r] starts right where list[r-1] ends, in one storage.
  static bool packed(const std::vector<Tensor>& list) {
    for (size_t r = 1; r < list.size(); ++r) {
      if (list[r].storage() != list[0].storage()) return false;
      if (list[r].offset() != list[0].offset() + static_cast<int64_t>(r) * list[0].numel()) return false;
    }
    return true;
  }

  /// Whether the caller's stream is being captured into a CUDA graph: the collective is
  /// then recorded (NCCL supports capture), to run at every replay.
  bool capturing() const { return cuda::current_stream(device_).is_capturing(); }

  /// A staging buffer allocated here would come from the eager memory pool and be freed
  /// while the graph still uses it: under capture the tensors must be packed instead.
  void refuse_buffer_under_capture(const char* op, const char* what) const {
    if (!capturing()) return;
    throw std::invalid_argument(std::string("[") + op + "] expected the " + what +
                                " back to back in one storage while a CUDA graph is being captured (no staging "
                                "buffer then), got separate tensors");
  }

  /// A flat tensor whose block the caching allocator ties to the communication stream.
  Tensor comm_stream_buffer(size_t numel, DType dtype) {
    cuda::StreamGuard stream_guard(comm_stream_);
    return Tensor::empty({static_cast<int64_t>(numel)}, {.dtype = dtype, .device = Device::cuda(device_)});
  }

  /// Enqueues one collective on the communication stream: `before` (plain CUDA work),
  /// `calls` (the NCCL calls, inside one ncclGroupStart/End so that lists coalesce),
  /// then `after`. Returns the Work that waits for all of it.
  WorkPtr launch(const char* op, const std::vector<Tensor>& used, bool host_blocking,
                 const std::function<void()>& calls, const std::function<void()>& before = {},
                 const std::function<void()>& after = {}) {
    cuda::DeviceGuard guard(device_);
    // Under capture nothing runs now: the host cannot wait for the work, and its end
    // event is a graph node that the watchdog must not poll.
    const bool captured = capturing();
    if (captured && host_blocking) {
      throw std::invalid_argument(std::string("[") + op + "] expected no CUDA graph capture on the calling stream (" +
                                  op + " blocks the host until the collective is done), got one in progress");
    }
    auto state = std::make_shared<WorkState>();
    state->op = op;

    // A non-blocking communicator takes its next call only once the last one has
    // settled, and settle_locked drops comm_mutex_ while polling: launch_mutex_ keeps
    // other threads' collectives out until this one is fully enqueued.
    std::lock_guard<std::mutex> serial(launch_mutex_);
    std::unique_lock<std::mutex> lock(comm_mutex_);
    throw_if_aborted(op);
    // The communication stream starts after everything the caller's stream has queued
    // so far (the producers of these tensors).
    cuda::Event ready;
    ready.record(cuda::current_stream(device_));
    ready.wait(comm_stream_);
    // The tensors are in use on the communication stream: if the caller frees them
    // before the collective ends, the allocator must not hand their blocks out again.
    for (const Tensor& t : used)
      if (t.nbytes() > 0 && t.storage()->data() != nullptr) cuda::record_stream(t.storage()->data(), comm_stream_);

    if (before) before();
    NCCL_CHECK(ncclGroupStart());
    try {
      calls();
    } catch (const std::exception& e) {
      // Arguments were checked up front, so a call failing inside the group is NCCL
      // itself failing: close the group and abort rather than reuse a broken communicator.
      (void)ncclGroupEnd();
      std::string message = who(op) + e.what() + "; communicator aborted";
      abort_locked(message);
      throw std::runtime_error(message);
    }
    ncclResult_t result = ncclGroupEnd();
    if (result != ncclSuccess && result != ncclInProgress) {
      std::string message = nccl_error_text(op, result) + "; communicator aborted";
      abort_locked(message);
      throw std::runtime_error(message);
    }
    // A non-blocking communicator may still be enqueueing; the end event must be
    // recorded only after NCCL has put its kernels on the stream.
    settle_locked(lock, op, Clock::now() + options().timeout, "");
    if (after) after();
    state->start = Clock::now();
    state->end.record(comm_stream_);
    lock.unlock();

    if (!captured) {
      {
        std::lock_guard<std::mutex> works_lock(works_mutex_);
        pending_.push_back(state);
      }
      works_cv_.notify_all();
    }
    return std::make_shared<NcclWork>(state, device_, host_blocking, options().timeout);
  }

  std::string who(const std::string& op) const {
    return "[" + op + "] rank " + std::to_string(rank()) + " of " + std::to_string(size()) + ": ";
  }

  std::string nccl_error_text(const std::string& op, ncclResult_t result) const {
    return who(op) + "NCCL error: " + ncclGetErrorString(result) + " (" + ncclGetLastError(comm_) + ")";
  }

  void throw_if_aborted(const char* op) const {
    if (aborted_) throw std::runtime_error(who(op) + "the NCCL communicator was aborted earlier: " + abort_reason_);
  }

  /// Waits (dropping the lock between polls) until the non-blocking communicator has
  /// finished its last call; aborts it and throws on error or after `deadline`.
  void settle_locked(std::unique_lock<std::mutex>& lock, const std::string& op, Clock::time_point deadline,
                     const std::string& hint) {
    int polls = 0;
    for (;;) {
      throw_if_aborted(op.c_str());
      ncclResult_t state = ncclSuccess;
      ncclResult_t result = ncclCommGetAsyncError(comm_, &state);
      if (result != ncclSuccess) state = result;
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        std::string message = nccl_error_text(op, state) + hint;
        abort_locked(message + "; communicator aborted");
        throw std::runtime_error(message + "; communicator aborted");
      }
      if (Clock::now() > deadline) {
        std::string message = who(op) + "NCCL did not finish within " + std::to_string(options().timeout.count()) +
                              " ms" + hint + "; communicator aborted";
        abort_locked(message);
        throw std::runtime_error(message);
      }
      lock.unlock();
      // Spin briefly (enqueueing usually takes microseconds), then back off.
      if (++polls < 100) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      lock.lock();
    }
  }

  /// Aborts the communicator (once) and fails every pending work. Caller holds comm_mutex_.
  void abort_locked(const std::string& reason) {
    if (aborted_) return;
    aborted_ = true;
    abort_reason_ = reason;
    (void)ncclCommAbort(comm_);
    // Works that already failed (the one that timed out) keep their own message.
    std::lock_guard<std::mutex> works_lock(works_mutex_);
    for (auto& w : pending_) w->fail(who(w->op) + "failed because the communicator was aborted: " + reason);
    pending_.clear();
  }

  void watchdog_loop() {
    // Polls often enough that a timeout is noticed within a tenth of it (at most 100 ms late).
    const auto interval = std::clamp<std::chrono::milliseconds>(options().timeout / 10, std::chrono::milliseconds(1),
                                                                 std::chrono::milliseconds(100));
    std::unique_lock<std::mutex> works_lock(works_mutex_);
    while (!stop_) {
      works_cv_.wait_for(works_lock, interval);
      if (stop_) break;
      if (pending_.empty()) continue;
      // The oldest unfinished work that timed out (or hit a CUDA error) names the failure.
      std::shared_ptr<WorkState> culprit;
      std::string reason;
      auto it = pending_.begin();
      try {
        while (it != pending_.end()) {
          if ((*it)->end.query()) {
            it = pending_.erase(it);
            continue;
          }
          if (!culprit && Clock::now() - (*it)->start > options().timeout) {
            culprit = *it;
            reason = who(culprit->op) + "NCCL collective did not finish within " +
                     std::to_string(options().timeout.count()) + " ms; communicator aborted";
          }
          ++it;
        }
      } catch (const std::exception& e) {
        culprit = *it;
        reason = who(culprit->op) + "CUDA error while waiting for the collective: " + e.what() +
                 "; communicator aborted";
      }
      if (!culprit && !pending_.empty()) {
        culprit = pending_.front();
        // abort_locked takes comm_mutex_ then works_mutex_, so drop the works lock first.
        works_lock.unlock();
        {
          std::lock_guard<std::mutex> lock(comm_mutex_);
          ncclResult_t state = ncclSuccess;
          if (!aborted_ && ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess &&
              state != ncclInProgress)
            reason = nccl_error_text(culprit->op, state) + "; communicator aborted";
        }
        works_lock.lock();
      }
      if (reason.empty()) continue;
      culprit->fail(reason);
      works_lock.unlock();
      {
        std::lock_guard<std::mutex> lock(comm_mutex_);
        abort_locked(reason);
      }
      works_lock.lock();
    }
  }

  int device_;
  cuda::Stream comm_stream_;
  ncclComm_t comm_ = nullptr;
  Tensor barrier_buffer_;
  std::unique_ptr<DebugChecker> debug_;  // only when options.debug

  // Lock order: launch_mutex_, then comm_mutex_, then works_mutex_.
  std::mutex launch_mutex_;
  // comm_mutex_ serialises every call on comm_ (all are short: the communicator is
  // non-blocking) and guards aborted_; it is taken before works_mutex_, never after.
  std::mutex comm_mutex_;
  bool aborted_ = false;
  std::string abort_reason_;

  std::mutex works_mutex_;
  std::condition_variable works_cv_;
  std::list<std::shared_ptr<WorkState>> pending_;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace

std::shared_ptr<ProcessGroup> make_nccl_group(std::shared_ptr<Store> store, int rank, int size,
                                              ProcessGroupOptions options) {
  if (!store) throw std::invalid_argument("[make_nccl_group] expected a store, got null");
  return std::make_shared<NcclGroup>(store, rank, size, options);
}

}  // namespace tandem::comm
