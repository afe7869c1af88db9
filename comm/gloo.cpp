// The gloo backend: rendezvous through a tandem Store, a full mesh of TCP pairs, and
// Gloo's allreduce / broadcast / allgather / barrier on host buffers, run in issue
// order on one worker thread per group. Gloo's I/O errors become errors naming the
// op, this rank and the failed peer.
#include "comm/gloo.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/collective_util.h"
#include "comm/debug_check.h"

namespace tandem::comm {
namespace {

// ---- rendezvous -----------------------------------------------------------------

/// Gloo's rendezvous store over a tandem Store, with every key under `prefix` so
/// several groups can share one store.
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(std::shared_ptr<comm::Store> store, std::string prefix)
      : store_(std::move(store)), prefix_(std::move(prefix)) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    store_->set(prefix_ + key, std::vector<uint8_t>(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    std::vector<uint8_t> v = store_->get(prefix_ + key);
    return {v.begin(), v.end()};
  }
  void wait(const std::vector<std::string>& keys) override { store_->wait(prefixed(keys)); }
  // The tandem store waits up to its own timeout, fixed when it was made.
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    store_->wait(prefixed(keys));
  }

 private:
  std::vector<std::string> prefixed(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    out.reserve(keys.size());
    for (const auto& k : keys) out.push_back(prefix_ + k);
    return out;
  }

  std::shared_ptr<comm::Store> store_;
  std::string prefix_;
};

/// The TCP device's attributes: GLOO_SOCKET_IFNAME picks an interface (as in
/// PyTorch); a MASTER_ADDR other than loopback means a multi-host job, where peers
/// must reach this host by name; otherwise everything stays on 127.0.0.1.
gloo::transport::tcp::attr device_attr() {
  gloo::transport::tcp::attr attr;
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0') {
    attr.iface = ifname;
    return attr;
  }
  const char* master = std::getenv("MASTER_ADDR");
  std::string m = master == nullptr ? "" : master;
  if (m.empty() || m == "localhost" || m.rfind("127.", 0) == 0 || m == "::1") {
    attr.hostname = "127.0.0.1";
    return attr;
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) {
    throw std::runtime_error("[gloo] gethostname failed while choosing the TCP interface (MASTER_ADDR=" + m + ")");
  }
  attr.hostname = host;
  return attr;
}

// ---- reductions and checks -----------------------------------------------------------

/// Gloo's pairwise reduction step over reduce_into (the element-wise math every
/// backend shares: f16/bf16 in f32, avg reduced as sum and divided afterwards).
gloo::AllreduceOptions::Func reduce_fn(DType dtype, ReduceOp op) {
  return [dtype, op](void* out, const void* a, const void* b, size_t n) {
    const auto count = static_cast<int64_t>(n);
    // Gloo passes out == a (or b) for in-place steps; the ops are commutative.
    if (out == a) {
      reduce_into(out, b, count, dtype, op);
    } else if (out == b) {
      reduce_into(out, a, count, dtype, op);
    } else {
      std::memcpy(out, a, n * dtype_size(dtype));
      reduce_into(out, b, count, dtype, op);
    }
  };
}

/// Calls f(U{}) with an unsigned type of `bytes` bytes: Gloo's buffers are typed
/// only by element size, the reduction function knows the real dtype.
template <class F>
void with_element_size(size_t bytes, F&& f) {
  switch (bytes) {
    case 1: f(uint8_t{}); return;
    case 2: f(uint16_t{}); return;
    case 4: f(uint32_t{}); return;
    case 8: f(uint64_t{}); return;
  }
  throw std::invalid_argument("[gloo] unsupported element size " + std::to_string(bytes));
}

/// Gloo moves host memory only.
void check_cpu(const char* op, const std::vector<Tensor>& tensors) {
  for (const auto& t : tensors) {
    if (!t.is_cpu()) {
      throw std::invalid_argument(std::string("[") + op + "] the gloo backend expected CPU tensors, got a tensor on " +
                                  t.device().str() + " (use the nccl or local backend for CUDA tensors)");
    }
  }
}

// ---- work ---------------------------------------------------------------------------

/// Completion state shared by a Work and the worker thread that runs it.
class GlooWork : public Work {
 public:
  void wait() override {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  bool is_completed() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_;
  }
  void finish(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
      error_ = std::move(error);
    }
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

/// Process-wide count of gloo groups made, so the n-th group of every rank uses the
/// same store prefix (ranks must create groups in the same order, as with PyTorch).
std::atomic<int> g_group_count{0};

/// How long, at most, a rank that hit a failure waits for the others to report it
/// before naming the silent ones as the failed peers.
constexpr std::chrono::milliseconds kFailureGrace{3000};

/// Blocks SIGPIPE in the calling thread for its lifetime, so threads started
/// meanwhile (Gloo's device loop, the group's worker) inherit the block. Gloo
/// writes with writev, which cannot suppress SIGPIPE per call; without this, a peer
/// that dies mid-collective kills this process instead of failing the collective
/// with EPIPE. Thread masks, unlike a SIG_IGN disposition, leave the rest of the
/// program's SIGPIPE handling alone.
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~ScopedSigpipeBlock() {
    if (sigismember(&old_, SIGPIPE)) return;
    // Discard a SIGPIPE raised in this thread meanwhile (rendezvous with a dead
    // peer) before unblocking, or it would be delivered now.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    timespec zero{};
    while (sigtimedwait(&set, nullptr, &zero) == SIGPIPE) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  sigset_t old_;
};

// ---- the process group --------------------------------------------------------------

class GlooProcessGroup : public ProcessGroup {
 public:
  GlooProcessGroup(std::shared_ptr<Store> store, int rank, int size, ProcessGroupOptions options)
      : ProcessGroup(rank, size, options), store_(std::move(store)) {
    ScopedSigpipeBlock no_sigpipe;  // spans every thread started below
    prefix_ = "tandem/gloo/" + std::to_string(g_group_count.fetch_add(1)) + "/";
    GlooStoreAdapter adapter(store_, prefix_);
    auto dev = gloo::transport::tcp::CreateDevice(device_attr());
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->setTimeout(options.timeout);
    try {
      context->connectFullMesh(adapter, dev);
    } catch (const gloo::Exception& e) {
      throw std::runtime_error("[gloo] rank " + std::to_string(rank) + ": connecting to " + std::to_string(size - 1) +
                               " peers failed or timed out after " + std::to_string(options.timeout.count()) +
                               " ms: " + e.what());
    }
    context_ = context;
    if (options.debug) debug_ = std::make_unique<DebugChecker>(store_, rank, size, prefix_ + "debug");
    worker_ = std::thread([this] { run_worker(); });
  }

  ~GlooProcessGroup() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  std::string backend() const override { return "gloo"; }

  WorkPtr all_reduce(const std::vector<Tensor>& tensors, ReduceOp op) override {
    check_all_reduce_args(tensors, op);
    check_cpu("all_reduce", tensors);
    return enqueue("all_reduce", tensors[0].dtype(), total_numel(tensors), [this, tensors, op] {
      // A list is packed into one buffer and reduced by one collective; a lone
      // tensor is reduced in place.
      if (tensors.size() == 1) {
        reduce_buffer(tensors[0].data_ptr(), tensors[0].dtype(), tensors[0].numel(), op);
        return;
      }
      Tensor flat = flatten_tensors(tensors);
      reduce_buffer(flat.data_ptr(), flat.dtype(), flat.numel(), op);
      unflatten_into(flat, tensors);
    });
  }

  WorkPtr broadcast(const std::vector<Tensor>& tensors, int root) override {
    check_broadcast_args(tensors, root, size());
    check_cpu("broadcast", tensors);
    return enqueue("broadcast", tensors[0].dtype(), total_numel(tensors), [this, tensors, root] {
      if (tensors.size() == 1) {
        broadcast_bytes(tensors[0].data_ptr(), tensors[0].nbytes(), root);
        return;
      }
      Tensor flat = flatten_tensors(tensors);
      broadcast_bytes(flat.data_ptr(), flat.nbytes(), root);
      unflatten_into(flat, tensors);
    });
  }

  WorkPtr all_gather(const std::vector<Tensor>& outputs, const Tensor& input) override {
    check_all_gather_args(outputs, input, size());
    check_cpu("all_gather", {input});
    check_cpu("all_gather", outputs);
    return enqueue("all_gather", input.dtype(), input.numel(), [this, outputs, input] {
      const size_t bytes = input.nbytes();
      if (bytes == 0) return;
      // Gather straight into the outputs when they already lie back to back in
      // rank order (a flat tensor split in size() parts); otherwise via a buffer.
      auto* base = static_cast<uint8_t*>(outputs[0].data_ptr());
      bool adjacent = true;
      for (size_t r = 0; r < outputs.size(); ++r)
        adjacent = adjacent && static_cast<uint8_t*>(outputs[r].data_ptr()) == base + r * bytes;
      if (adjacent) {
        gather_bytes(input.data_ptr(), base, bytes);
        return;
      }
      std::vector<uint8_t> flat(bytes * outputs.size());
      gather_bytes(input.data_ptr(), flat.data(), bytes);
      for (size_t r = 0; r < outputs.size(); ++r) std::memcpy(outputs[r].data_ptr(), flat.data() + r * bytes, bytes);
    });
  }

  WorkPtr reduce_scatter(const Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    check_reduce_scatter_args(output, inputs, op, size());
    check_cpu("reduce_scatter", {output});
    check_cpu("reduce_scatter", inputs);
    return enqueue("reduce_scatter", output.dtype(), output.numel(), [this, output, inputs, op] {
      // Implemented as an all-reduce of all inputs followed by a copy of this rank's
      // slice: Gloo's ReduceScatterHalvingDoubling takes only its own element types
      // (no bf16) and int counts, while this reuses the all-reduce's dtype handling,
      // at the cost of moving about 2x the bytes of a true reduce-scatter.
      if (output.numel() == 0) return;
      Tensor flat = flatten_tensors(inputs);
      reduce_buffer(flat.data_ptr(), flat.dtype(), flat.numel(), op == ReduceOp::kAvg ? ReduceOp::kSum : op);
      std::memcpy(output.data_ptr(), static_cast<uint8_t*>(flat.data_ptr()) + static_cast<size_t>(rank()) * output.nbytes(),
                  output.nbytes());
      if (op == ReduceOp::kAvg) divide_in_place(output.data_ptr(), output.numel(), output.dtype(), size());
    });
  }

  WorkPtr barrier() override {
    return enqueue("barrier", DType::kU8, 0, [this] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag());
      opts.setTimeout(options().timeout);
      gloo::barrier(opts);
    });
  }

 private:
  struct Task {
    const char* op;
    DType dtype;  // dtype and element count: what debug mode compares across ranks
    int64_t numel;
    std::function<void()> fn;
    std::shared_ptr<GlooWork> work;
  };

  // Collectives run one at a time on the worker thread, so every rank issues them
  // in the same order and a running tag is enough to keep them apart.
  uint32_t next_tag() { return tag_++; }

  void reduce_buffer(void* data, DType dtype, int64_t count, ReduceOp op) {
    if (count == 0) return;
    if (size() > 1) {
      with_element_size(dtype_size(dtype), [&](auto tag) {
        using U = decltype(tag);
        gloo::AllreduceOptions opts(context_);
        opts.setOutput(static_cast<U*>(data), static_cast<size_t>(count));
        opts.setReduceFunction(reduce_fn(dtype, op));
        opts.setTag(next_tag());
        opts.setTimeout(options().timeout);
        gloo::allreduce(opts);
      });
    }
    if (op == ReduceOp::kAvg && size() > 1) divide_in_place(data, count, dtype, size());
  }

  void broadcast_bytes(void* data, size_t bytes, int root) {
    if (bytes == 0 || size() == 1) return;
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(static_cast<uint8_t*>(data), bytes);
    opts.setRoot(root);
    opts.setTag(next_tag());
    opts.setTimeout(options().timeout);
    gloo::broadcast(opts);
  }

  void gather_bytes(const void* in, void* out, size_t bytes) {
    if (size() == 1) {
      if (in != out) std::memcpy(out, in, bytes);
      return;
    }
    gloo::AllgatherOptions opts(context_);
    // Gloo's input pointer is not const, but allgather only reads it.
    opts.setInput(static_cast<uint8_t*>(const_cast<void*>(in)), bytes);
    opts.setOutput(static_cast<uint8_t*>(out), bytes * static_cast<size_t>(size()));
    opts.setTag(next_tag());
    opts.setTimeout(options().timeout);
    gloo::allgather(opts);
  }

  WorkPtr enqueue(const char* op, DType dtype, int64_t numel, std::function<void()> fn) {
    auto work = std::make_shared<GlooWork>();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(Task{op, dtype, numel, std::move(fn), work});
    }
    cv_.notify_all();
    return work;
  }

  void run_worker() {
    for (;;) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and nothing left to run
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task.work->finish(run_task(task));
    }
  }

  std::exception_ptr run_task(Task& task) {
    const std::string where = std::string("[") + task.op + "] rank " + std::to_string(rank());
    if (!failure_.empty()) {
      // Gloo's pairs are unusable after an I/O error; fail fast instead of timing out.
      return std::make_exception_ptr(std::runtime_error(where + ": the group failed in an earlier collective: " + failure_));
    }
    try {
      if (debug_) debug_->check(task.op, task.dtype, task.numel);
      task.fn();
      return nullptr;
    } catch (const gloo::Exception& e) {
      const auto [peers, note] = failed_peers();
      failure_ = where + ": peer rank " + peers + " failed or timed out after " +
                 std::to_string(options().timeout.count()) + " ms" + note + ": " + e.what();
      return std::make_exception_ptr(std::runtime_error(failure_));
    } catch (...) {
      // Argument and debug-check errors pass through unchanged to Work::wait().
      return std::current_exception();
    }
  }

  /// The ranks to blame for a Gloo I/O error or timeout, as text ("2", "1, 3"),
  /// and a note on how they were found (may be empty).
  /// Every rank that hits the failure says so in the store and then closes its
  /// connections, so the failure cascades: every live rank fails within moments
  /// and checks in. Whoever has not checked in after a grace period is dead or
  /// stuck. If the store itself is unreachable, rank 0, which hosts it, is gone.
  std::pair<std::string, std::string> failed_peers() {
    const std::string base = prefix_ + "failure/alive/";
    try {
      store_->set(base + std::to_string(rank()), {1});
    } catch (const std::runtime_error&) {
      context_->closeConnections();
      return {"0", " (it hosts the store, which is unreachable too)"};
    }
    context_->closeConnections();
    // Bounded so a dead peer is reported in seconds even with the default 300 s timeout.
    const auto grace = std::min<std::chrono::milliseconds>(options().timeout, kFailureGrace);
    const auto deadline = std::chrono::steady_clock::now() + grace;
    std::vector<int> missing;
    for (bool polled = false;; polled = true) {
      std::vector<int> now;
      try {
        for (int r = 0; r < size(); ++r)
          if (r != rank() && !store_->check({base + std::to_string(r)})) now.push_back(r);
      } catch (const std::runtime_error&) {
        // Rank 0 may simply have finished its own report and exited; then the last
        // poll stands. With no poll at all, the store's host is the one gone.
        if (!polled) return {"0", " (it hosts the store, which is unreachable too)"};
        break;
      }
      missing = std::move(now);
      if (missing.empty() || std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (missing.empty()) return {"unknown", " (every rank saw the failure)"};
    std::string out;
    for (int r : missing) out += (out.empty() ? "" : ", ") + std::to_string(r);
    return {out, ""};
  }

  std::shared_ptr<Store> store_;
  std::string prefix_;
  std::shared_ptr<gloo::Context> context_;
  std::unique_ptr<DebugChecker> debug_;  // set in debug mode
  uint32_t tag_ = 0;
  std::string failure_;  // worker thread only

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool stop_ = false;
  std::thread worker_;  // last: started once everything above exists
};

}  // namespace

std::shared_ptr<ProcessGroup> make_gloo_group(std::shared_ptr<Store> store, int rank, int size,
                                              ProcessGroupOptions options) {
  if (store == nullptr) throw std::invalid_argument("[make_gloo_group] expected a store, got null");
  return std::make_shared<GlooProcessGroup>(std::move(store), rank, size, options);
}

}  // namespace tandem::comm
