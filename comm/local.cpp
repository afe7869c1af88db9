// The local backend: collectives among threads through shared memory. A collective
// is a rendezvous (every rank deposits its tensors and waits for the rest, up to the
// timeout), the work, and a second rendezvous before anyone returns, so no rank can
// change or drop its deposit while another still reads it.
#include "comm/local.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "comm/collective_util.h"
#include "comm/debug_check.h"
#include "comm/store.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape.h"

namespace tandem::comm {

namespace {

enum class Kind : uint8_t { kAllReduce, kBroadcast, kAllGather, kReduceScatter, kBarrier };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kAllReduce: return "all_reduce";
    case Kind::kBroadcast: return "broadcast";
    case Kind::kAllGather: return "all_gather";
    case Kind::kReduceScatter: return "reduce_scatter";
    case Kind::kBarrier: return "barrier";
  }
  return "?";
}

// What one rank brings to a collective. Other ranks read it between the entry and
// exit rendezvous; the owner writes it only outside that window.
struct Deposit {
  Kind kind = Kind::kBarrier;
  int64_t number = 0;  // the rank's collective count, 1-based
  ReduceOp reduce = ReduceOp::kSum;
  int root = 0;
  std::vector<Tensor> tensors;  // all_reduce, broadcast: the list; all_gather: outputs; reduce_scatter: inputs
  Tensor single;                // all_gather: input; reduce_scatter: output
  std::shared_ptr<cuda::Event> ready;      // CUDA: end of the producer's stream at entry
  std::shared_ptr<cuda::Event> read_done;  // CUDA: after this rank's reads of other ranks' tensors
};

// The tensor whose dtype and device describe the collective (null for barrier).
const Tensor* reference_tensor(const Deposit& d) {
  switch (d.kind) {
    case Kind::kAllReduce:
    case Kind::kBroadcast: return &d.tensors[0];
    case Kind::kAllGather:
    case Kind::kReduceScatter: return &d.single;
    case Kind::kBarrier: return nullptr;
  }
  return nullptr;
}

int64_t deposit_numel(const Deposit& d) {
  if (d.kind == Kind::kAllReduce || d.kind == Kind::kBroadcast) return total_numel(d.tensors);
  return d.single.defined() ? d.single.numel() : 0;
}

// "all_reduce(sum, float32 on cpu, 2 tensors, 7 elements)": what the cross-rank
// consistency check compares and reports.
std::string describe(const Deposit& d) {
  const Tensor* ref = reference_tensor(d);
  if (ref == nullptr) return "barrier()";
  std::string s = std::string(kind_name(d.kind)) + "(";
  if (d.kind == Kind::kAllReduce || d.kind == Kind::kReduceScatter) s += std::string(reduce_op_name(d.reduce)) + ", ";
  if (d.kind == Kind::kBroadcast) s += "root " + std::to_string(d.root) + ", ";
  s += std::string(dtype_name(ref->dtype())) + (ref->is_cuda() ? " on cuda, " : " on cpu, ");
  if (d.kind == Kind::kAllReduce || d.kind == Kind::kBroadcast) s += std::to_string(d.tensors.size()) + " tensor(s), ";
  return s + std::to_string(deposit_numel(d)) + " elements)";
}

// A rank's share [lo, lo + len) of n elements: the CPU path splits every buffer
// into `size` slices so ranks reduce and copy in parallel without overlapping.
std::pair<int64_t, int64_t> slice_of(int64_t n, int rank, int size) {
  const int64_t lo = n * rank / size, hi = n * (rank + 1) / size;
  return {lo, hi - lo};
}

char* bytes_at(const Tensor& t, int64_t element) {
  return static_cast<char*>(t.data_ptr()) + static_cast<size_t>(element) * dtype_size(t.dtype());
}

// A generation-counting barrier with a timeout. A timeout or a failed rank breaks
// the group for good: every rank waiting then, or arriving later, gets the reason,
// so no survivor waits for a peer that will never come.
class Rendezvous {
 public:
  Rendezvous(int size, std::chrono::milliseconds timeout)
      : size_(size), timeout_(timeout), present_(static_cast<size_t>(size), 0) {}

  /// Returns once every rank has arrived at this step; throws std::runtime_error
  /// naming the missing ranks and the op on timeout, or the reason the group failed.
  void arrive(int rank, const char* op, int64_t number, const char* step) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!failure_.empty()) throw_failed(rank, op, number);
    const int64_t generation = generation_;
    present_[static_cast<size_t>(rank)] = 1;
    if (++arrived_ == size_) {
      arrived_ = 0;
      std::fill(present_.begin(), present_.end(), 0);
      ++generation_;
      lock.unlock();
      cv_.notify_all();
      return;
    }
    cv_.wait_until(lock, std::chrono::steady_clock::now() + timeout_,
                   [&] { return generation_ != generation || !failure_.empty(); });
    if (generation_ != generation) return;
    if (!failure_.empty()) throw_failed(rank, op, number);
    std::string missing;
    for (int r = 0; r < size_; ++r)
      if (!present_[static_cast<size_t>(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    failure_ = "rank " + std::to_string(rank) + " timed out after " + std::to_string(timeout_.count()) +
               " ms waiting for rank(s) " + missing + " to join collective #" + std::to_string(number) + " (" + op +
               ", " + step + ")";
    lock.unlock();
    cv_.notify_all();
    throw std::runtime_error(std::string("[") + op + "] " + failure_);
  }

  /// Breaks the group with `reason` (a rank failed inside a collective).
  void fail(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (failure_.empty()) failure_ = reason;
    }
    cv_.notify_all();
  }

 private:
  [[noreturn]] void throw_failed(int rank, const char* op, int64_t number) const {
    throw std::runtime_error(std::string("[") + op + "] rank " + std::to_string(rank) + " cannot complete collective #" +
                             std::to_string(number) + ": the local group has failed: " + failure_);
  }

  const int size_;
  const std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int64_t generation_ = 0;
  int arrived_ = 0;
  std::vector<char> present_;  // who has arrived in the current generation
  std::string failure_;        // non-empty once the group is broken
};

struct SharedState {
  SharedState(int size, std::chrono::milliseconds timeout)
      : rendezvous(size, timeout), deposits(static_cast<size_t>(size)) {}
  Rendezvous rendezvous;
  std::vector<Deposit> deposits;
};

// CPU collectives finish before the call returns; CUDA ones when `done` happens on
// the communication stream. Runtime failures are kept for wait().
class LocalWork final : public Work {
 public:
  void wait() override {
    if (error_) std::rethrow_exception(error_);
    if (done_) done_->wait(cuda::current_stream(device_));
  }
  bool is_completed() override { return error_ || !done_ || done_->query(); }

  std::exception_ptr error_;
  std::shared_ptr<cuda::Event> done_;
  int device_ = -1;
};

// An order-reversing map, so min = flip(max(flip(x))) with the max kernel: negation
// for floating types (exact), -1 - x for integers (never overflows, unlike -x).
Tensor flip_order(const Tensor& x) {
  if (is_floating(x.dtype())) return neg(x);
  return sub(scalar_tensor(-1.0, {.dtype = x.dtype(), .device = x.device()}), x);
}

class LocalProcessGroup final : public ProcessGroup {
 public:
  LocalProcessGroup(int rank, int size, ProcessGroupOptions options, std::shared_ptr<SharedState> state)
      : ProcessGroup(rank, size, options), state_(std::move(state)) {}

  void set_checker(std::unique_ptr<DebugChecker> checker) { checker_ = std::move(checker); }

  std::string backend() const override { return "local"; }

  WorkPtr all_reduce(const std::vector<Tensor>& tensors, ReduceOp op) override {
    check_all_reduce_args(tensors, op);
    Deposit d;
    d.kind = Kind::kAllReduce;
    d.reduce = op;
    d.tensors = tensors;
    return run(std::move(d));
  }

  WorkPtr broadcast(const std::vector<Tensor>& tensors, int root) override {
    check_broadcast_args(tensors, root, size());
    Deposit d;
    d.kind = Kind::kBroadcast;
    d.root = root;
    d.tensors = tensors;
    return run(std::move(d));
  }

  WorkPtr all_gather(const std::vector<Tensor>& outputs, const Tensor& input) override {
    check_all_gather_args(outputs, input, size());
    Deposit d;
    d.kind = Kind::kAllGather;
    d.tensors = outputs;
    d.single = input;
    return run(std::move(d));
  }

  WorkPtr reduce_scatter(const Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    check_reduce_scatter_args(output, inputs, op, size());
    Deposit d;
    d.kind = Kind::kReduceScatter;
    d.reduce = op;
    d.tensors = inputs;
    d.single = output;
    return run(std::move(d));
  }

  WorkPtr barrier() override { return run(Deposit{}); }

 private:
  WorkPtr run(Deposit d);
  std::string find_mismatch() const;
  void run_cpu(const Deposit& mine);
  void run_cuda(const Deposit& mine, LocalWork& work);

  std::shared_ptr<SharedState> state_;
  std::unique_ptr<DebugChecker> checker_;
  int64_t count_ = 0;
};

WorkPtr LocalProcessGroup::run(Deposit d) {
  const char* op = kind_name(d.kind);
  const Tensor* ref = reference_tensor(d);
  const bool on_cuda = ref != nullptr && ref->is_cuda();
  // The device path reduces with engine ops, which add only floating and 32/64-bit
  // integer tensors; reject other dtypes before any rank waits on this one.
  if (on_cuda && (d.kind == Kind::kAllReduce || d.kind == Kind::kReduceScatter) && !is_floating(ref->dtype()) &&
      ref->dtype() != DType::kI32 && ref->dtype() != DType::kI64)
    throw std::invalid_argument(std::string("[") + op +
                                "] expected a floating, int32 or int64 dtype for a reduction of CUDA tensors on the "
                                "local backend, got " + std::string(dtype_name(ref->dtype())));

  // The ranks meet on the host, which a CUDA graph cannot replay: refused before any
  // rank waits (every rank of a captured step refuses alike).
  if (on_cuda && cuda::current_stream(ref->device().index).is_capturing())
    throw std::invalid_argument(std::string("[") + op +
                                "] expected no CUDA graph capture on the calling stream (the local backend's ranks "
                                "meet on the host; use nccl inside graphs), got one in progress");

  auto work = std::make_shared<LocalWork>();
  if (on_cuda) work->device_ = ref->device().index;
  const int64_t number = ++count_;
  d.number = number;
  try {
    if (checker_) checker_->check(op, ref ? ref->dtype() : DType::kU8, deposit_numel(d));
    if (on_cuda) {
      // Everything the producer queued on its stream so far must precede our reads.
      d.ready = std::make_shared<cuda::Event>();
      d.ready->record(cuda::current_stream(ref->device().index));
    }
    Deposit& slot = state_->deposits[static_cast<size_t>(rank())];
    slot = std::move(d);
    state_->rendezvous.arrive(rank(), op, number, "entry");
    // Every rank compares the same deposits in the same order, so all of them agree
    // on whether (and how) the collective is inconsistent and skip it together.
    const std::string mismatch = find_mismatch();
    if (mismatch.empty()) {
      try {
        if (on_cuda) {
          run_cuda(slot, *work);
        } else {
          run_cpu(slot);
        }
      } catch (const std::exception& e) {
        state_->rendezvous.fail("rank " + std::to_string(rank()) + " failed in collective #" + std::to_string(number) +
                                " (" + op + "): " + e.what());
        throw;
      }
    }
    state_->rendezvous.arrive(rank(), op, number, "exit");
    slot = Deposit{};  // after the exit rendezvous nobody reads it; drop the tensor handles
    if (!mismatch.empty()) throw std::runtime_error(mismatch);
  } catch (const std::exception&) {
    // Kept for wait(), as an asynchronous backend would report it; on a timeout the
    // deposit stays, since a slow peer may still be reading it.
    work->error_ = std::current_exception();
  }
  return work;
}

std::string LocalProcessGroup::find_mismatch() const {
  const auto& deps = state_->deposits;
  const Deposit& first = deps[0];
  const std::string op = kind_name(deps[static_cast<size_t>(rank())].kind);
  for (int k = 1; k < size(); ++k) {
    const Deposit& other = deps[static_cast<size_t>(k)];
    const std::string where = " as collective #" + std::to_string(first.number);
    if (other.number != first.number)
      return "[" + op + "] rank " + std::to_string(k) + " is at collective #" + std::to_string(other.number) +
             " but rank 0 at #" + std::to_string(first.number) + " (a rank skipped a collective after an error)";
    const std::string a = describe(other), b = describe(first);
    if (a != b) return "[" + op + "] rank " + std::to_string(k) + " issued " + a + " but rank 0 issued " + b + where;
    if (other.kind == Kind::kAllReduce || other.kind == Kind::kBroadcast) {
      for (size_t j = 0; j < first.tensors.size(); ++j)
        if (other.tensors[j].numel() != first.tensors[j].numel())
          return "[" + op + "] rank " + std::to_string(k) + " passed tensors[" + std::to_string(j) + "] of " +
                 std::to_string(other.tensors[j].numel()) + " elements but rank 0 one of " +
                 std::to_string(first.tensors[j].numel()) + where;
    }
  }
  return "";
}

// Rank r works on slice r of every buffer (or, for all_gather, on its own input),
// reading all ranks' tensors and writing all ranks' results; slices never overlap,
// so ranks need no ordering among themselves until the exit rendezvous.
void LocalProcessGroup::run_cpu(const Deposit& mine) {
  const auto& deps = state_->deposits;
  const int r = rank(), n = size();
  auto at = [&](int k) -> const Deposit& { return deps[static_cast<size_t>(k)]; };
  switch (mine.kind) {
    case Kind::kAllReduce:
      for (size_t j = 0; j < mine.tensors.size(); ++j) {
        const DType dtype = mine.tensors[j].dtype();
        const auto [lo, len] = slice_of(mine.tensors[j].numel(), r, n);
        if (len == 0) continue;
        // Reduce in rank order into rank 0's slice, then copy it out: every rank's
        // result is bitwise the same and independent of thread timing.
        char* dst = bytes_at(at(0).tensors[j], lo);
        for (int k = 1; k < n; ++k) reduce_into(dst, bytes_at(at(k).tensors[j], lo), len, dtype, mine.reduce);
        if (mine.reduce == ReduceOp::kAvg) divide_in_place(dst, len, dtype, n);
        for (int k = 1; k < n; ++k) std::memmove(bytes_at(at(k).tensors[j], lo), dst, static_cast<size_t>(len) * dtype_size(dtype));
      }
      break;
    case Kind::kBroadcast:
      for (size_t j = 0; j < mine.tensors.size(); ++j) {
        const auto [lo, len] = slice_of(mine.tensors[j].numel(), r, n);
        if (len == 0) continue;
        const char* src = bytes_at(at(mine.root).tensors[j], lo);
        const size_t nbytes = static_cast<size_t>(len) * dtype_size(mine.tensors[j].dtype());
        for (int k = 0; k < n; ++k)
          if (k != mine.root) std::memmove(bytes_at(at(k).tensors[j], lo), src, nbytes);
      }
      break;
    case Kind::kAllGather:
      if (mine.single.numel() == 0) break;
      for (int k = 0; k < n; ++k) {
        const Tensor& dst = at(k).tensors[static_cast<size_t>(r)];
        if (dst.data_ptr() != mine.single.data_ptr()) std::memmove(dst.data_ptr(), mine.single.data_ptr(), mine.single.nbytes());
      }
      break;
    case Kind::kReduceScatter: {
      const Tensor& out = mine.single;
      if (out.numel() == 0) break;
      // A scratch buffer, so an output that aliases one of this rank's inputs is
      // written only after every input has been read.
      Tensor acc = Tensor::empty({out.numel()}, {.dtype = out.dtype()});
      std::memcpy(acc.data_ptr(), at(0).tensors[static_cast<size_t>(r)].data_ptr(), acc.nbytes());
      for (int k = 1; k < n; ++k)
        reduce_into(acc.data_ptr(), at(k).tensors[static_cast<size_t>(r)].data_ptr(), acc.numel(), acc.dtype(), mine.reduce);
      if (mine.reduce == ReduceOp::kAvg) divide_in_place(acc.data_ptr(), acc.numel(), acc.dtype(), n);
      std::memcpy(out.data_ptr(), acc.data_ptr(), acc.nbytes());
      break;
    }
    case Kind::kBarrier: break;
  }
}

// Each rank computes its own results on its device, on a communication stream:
//   1. the stream waits for every rank's producer (their `ready` events);
//   2. it reads all ranks' inputs (copied to this device when they live on
//      another) and reduces them in rank order into scratch tensors, so every rank
//      computes bitwise the same values; then it records `read_done`;
//   3. after a rendezvous, it waits for every other rank's `read_done` (nobody may
//      overwrite a tensor a peer is still reading) and writes the results;
//   4. `done`, recorded at the end, is what wait() makes the caller's stream wait on.
// Every tensor touched on the stream is recorded with the caching allocator, so a
// tensor freed by its owner right after the call is not reused while we still use it.
void LocalProcessGroup::run_cuda(const Deposit& mine, LocalWork& work) {
  auto& deps = state_->deposits;
  const int r = rank(), n = size();
  auto at = [&](int k) -> const Deposit& { return deps[static_cast<size_t>(k)]; };
  const int index = reference_tensor(mine)->device().index;
  const Device device = Device::cuda(index);
  cuda::DeviceGuard device_guard(index);
  const cuda::Stream stream = cuda::pool_stream(index);
  // Engine ops (add_, copies, allocations) queue on the current stream: make it ours.
  cuda::StreamGuard stream_guard(stream);
  autograd::NoGradGuard no_grad;

  for (int k = 0; k < n; ++k) at(k).ready->wait(stream);
  auto use = [&](const Tensor& t) {
    if (t.numel() > 0) cuda::record_stream(t.storage()->data(), stream);
  };
  auto here = [&](const Tensor& t) { return t.device() == device ? t : t.to(device); };
  // The reduction over ranks of get(k), in rank order, as a new tensor on `device`.
  auto reduce_over_ranks = [&](ReduceOp op, auto get) {
    const Tensor& first = get(0);
    for (int k = 0; k < n; ++k) use(get(k));
    if (op == ReduceOp::kSum || op == ReduceOp::kAvg) {
      Tensor acc = Tensor::empty(first.shape(), {.dtype = first.dtype(), .device = device});
      acc.copy_(first);
      for (int k = 1; k < n; ++k) add_(acc, here(get(k)));
      if (op == ReduceOp::kAvg) acc = div(acc, scalar_tensor(static_cast<double>(n), {.dtype = acc.dtype(), .device = device}));
      return acc;
    }
    std::vector<Tensor> rows;
    for (int k = 0; k < n; ++k) rows.push_back(reshape(here(get(k)), {1, first.numel()}));
    Tensor stacked = cat(rows, 0);
    if (op == ReduceOp::kMin) stacked = flip_order(stacked);
    Tensor best = max(stacked, 0).values;
    if (op == ReduceOp::kMin) best = flip_order(best);
    return reshape(best, first.shape());
  };

  std::vector<std::pair<Tensor, Tensor>> writes;  // (destination, value) for step 3
  switch (mine.kind) {
    case Kind::kAllReduce:
      for (size_t j = 0; j < mine.tensors.size(); ++j) {
        if (mine.tensors[j].numel() == 0) continue;
        use(mine.tensors[j]);
        writes.emplace_back(mine.tensors[j], reduce_over_ranks(mine.reduce, [&](int k) -> const Tensor& { return at(k).tensors[j]; }));
      }
      break;
    case Kind::kBroadcast:
      // The root's tensors are written by nobody, so non-roots copy them in directly.
      for (size_t j = 0; j < mine.tensors.size(); ++j) {
        if (mine.tensors[j].numel() == 0) continue;
        use(mine.tensors[j]);
        if (r == mine.root) continue;
        const Tensor& src = at(mine.root).tensors[j];
        use(src);
        Tensor dst = mine.tensors[j];
        dst.copy_(src);
      }
      break;
    case Kind::kAllGather:
      if (mine.single.numel() == 0) break;
      for (int k = 0; k < n; ++k) {
        use(at(k).single);
        Tensor dst = mine.tensors[static_cast<size_t>(k)];
        use(dst);
        dst.copy_(at(k).single);
      }
      break;
    case Kind::kReduceScatter:
      if (mine.single.numel() == 0) break;
      use(mine.single);
      writes.emplace_back(mine.single, reduce_over_ranks(mine.reduce, [&](int k) -> const Tensor& {
                            return at(k).tensors[static_cast<size_t>(r)];
                          }));
      break;
    case Kind::kBarrier: break;
  }
  auto read_done = std::make_shared<cuda::Event>();
  read_done->record(stream);
  deps[static_cast<size_t>(r)].read_done = read_done;  // read by peers only after the next rendezvous

  state_->rendezvous.arrive(r, kind_name(mine.kind), mine.number, "reads");
  for (int k = 0; k < n; ++k)
    if (k != r) at(k).read_done->wait(stream);
  for (auto& [dst, value] : writes) dst.copy_(value);
  auto done = std::make_shared<cuda::Event>();
  done->record(stream);
  work.done_ = std::move(done);
}

}  // namespace

std::vector<std::shared_ptr<ProcessGroup>> make_local_group(int size, ProcessGroupOptions options) {
  if (size < 1) throw std::invalid_argument("[make_local_group] expected a size >= 1, got " + std::to_string(size));
  options.debug = options.debug || debug_from_env();
  auto state = std::make_shared<SharedState>(size, options.timeout);
  std::vector<std::shared_ptr<LocalProcessGroup>> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(std::make_shared<LocalProcessGroup>(r, size, options, state));
  if (options.debug) {
    std::shared_ptr<Store> store = make_hash_store(options.timeout);
    for (int r = 0; r < size; ++r) ranks[static_cast<size_t>(r)]->set_checker(std::make_unique<DebugChecker>(store, r, size, "local_debug"));
  }
  return {ranks.begin(), ranks.end()};
}

}  // namespace tandem::comm
