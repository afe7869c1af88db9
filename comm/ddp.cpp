// DistributedDataParallel and its Reducer. The Reducer owns the buckets: flat
// gradient buffers per (dtype, device), filled by the parameters' post-accumulate
// hooks and reduced with an averaging all-reduce the moment their last gradient is
// in, strictly in bucket order so every rank issues the same collective sequence.
// The end-of-backward callback waits for the reductions and hands the averaged
// gradients back to .grad (nothing to do when .grad is a view into the bucket).
#include "comm/ddp.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops/factory.h"

namespace tandem::comm {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double clock_seconds(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

constexpr double kMiB = 1024.0 * 1024.0;
// Shape descriptors exchanged at construction: dtype, rank, then up to this many extents.
constexpr int64_t kMaxDescribedDims = 8;
constexpr int64_t kDescriptorWidth = 2 + kMaxDescribedDims;

std::string join_names(const std::vector<std::string>& names, size_t limit = 10) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < limit; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > limit) s += ", ... (" + std::to_string(names.size()) + " in all)";
  return s;
}

/// Tensors split by dtype (collectives take one dtype per call), in first-seen order.
std::vector<std::vector<Tensor>> by_dtype(const std::vector<Tensor>& tensors) {
  std::vector<std::vector<Tensor>> groups;
  std::vector<DType> keys;
  for (const Tensor& t : tensors) {
    if (t.numel() == 0) continue;
    auto it = std::find(keys.begin(), keys.end(), t.dtype());
    if (it == keys.end()) {
      keys.push_back(t.dtype());
      groups.emplace_back();
      it = keys.end() - 1;
    }
    groups[static_cast<size_t>(it - keys.begin())].push_back(t);
  }
  return groups;
}

/// Broadcasts `tensors` from rank 0 in place, one coalesced collective per dtype.
void broadcast_from_rank0(ProcessGroup& group, const std::vector<Tensor>& tensors) {
  if (group.size() == 1) return;
  autograd::NoGradGuard no_grad;
  std::vector<WorkPtr> works;
  for (auto& list : by_dtype(tensors)) works.push_back(group.broadcast(list, 0));
  for (auto& w : works) w->wait();
}

}  // namespace

// ---- the reducer ------------------------------------------------------------------------

class DistributedDataParallel::Reducer {
 public:
  Reducer(DistributedDataParallel& ddp, std::vector<std::pair<std::string, Tensor>> params)
      : group_(*ddp.group_), options_(ddp.options_), device_(params.front().second.device()) {
    for (auto& [name, p] : params) {
      names_.push_back(name);
      params_.push_back(p);
    }
    const size_t n = params_.size();
    for (size_t i = 0; i < n; ++i) index_of_[params_[i].impl()] = static_cast<int64_t>(i);
    ready_.assign(n, 0);
    in_order_.assign(n, 0);
    hook_count_.assign(n, 0);
    expected_hooks_.assign(n, 1);
    std::vector<int64_t> reverse(n);
    for (size_t i = 0; i < n; ++i) reverse[i] = static_cast<int64_t>(n - 1 - i);
    build_buckets(assign_buckets(reverse));
    for (size_t i = 0; i < n; ++i) {
      hook_ids_.push_back(params_[i].register_post_accumulate_grad_hook(
          [this, i](Tensor&) { on_gradient(static_cast<int64_t>(i)); }));
    }
  }

  ~Reducer() {
    for (size_t i = 0; i < params_.size(); ++i) params_[i].remove_hook(hook_ids_[i]);
  }

  // ---- bucket layout ---------------------------------------------------------------------

  /// Splits parameters, taken in `order`, into buckets per dtype: a bucket closes once
  /// it holds at least its cap (the first bucket of each dtype has the smaller cap).
  /// Buckets are numbered in the order their first parameter comes in `order`.
  std::vector<std::vector<int64_t>> assign_buckets(const std::vector<int64_t>& order) const {
    const size_t first_cap = static_cast<size_t>(options_.first_bucket_cap_mb * kMiB);
    const size_t cap = static_cast<size_t>(options_.bucket_cap_mb * kMiB);
    std::vector<std::vector<int64_t>> buckets;
    std::map<DType, std::pair<int64_t, size_t>> open;  // dtype -> (bucket index, bytes so far)
    std::set<DType> started;
    for (int64_t i : order) {
      const Tensor& p = params_[static_cast<size_t>(i)];
      auto it = open.find(p.dtype());
      if (it == open.end()) {
        buckets.emplace_back();
        it = open.emplace(p.dtype(), std::make_pair(static_cast<int64_t>(buckets.size() - 1), size_t{0})).first;
      }
      buckets[static_cast<size_t>(it->second.first)].push_back(i);
      it->second.second += p.nbytes();
      const size_t limit = started.count(p.dtype()) ? cap : first_cap;
      if (it->second.second >= limit) {
        started.insert(p.dtype());
        open.erase(it);
      }
    }
    return buckets;
  }

  /// Allocates the flat buffers for `layout` and, with gradient_as_bucket_view, moves
  /// existing gradients into them and points .grad at the views.
  void build_buckets(const std::vector<std::vector<int64_t>>& layout) {
    buckets_.clear();
    location_.assign(params_.size(), {-1, 0});
    for (const auto& members : layout) {
      Bucket b;
      b.params = members;
      const Tensor& first = params_[static_cast<size_t>(members.front())];
      b.dtype = first.dtype();
      for (int64_t i : members) {
        location_[static_cast<size_t>(i)] = {static_cast<int64_t>(buckets_.size()), b.numel};
        b.numel += params_[static_cast<size_t>(i)].numel();
      }
      b.buffer = zeros({b.numel}, {.dtype = b.dtype, .device = device_});
      buckets_.push_back(std::move(b));
    }
    if (options_.gradient_as_bucket_view) {
      autograd::NoGradGuard no_grad;
      for (size_t i = 0; i < params_.size(); ++i) {
        Tensor g = params_[i].grad();
        if (!g.defined()) continue;
        Tensor v = slot(static_cast<int64_t>(i));
        v.copy_(g);
        params_[i].set_grad(v);
      }
    }
  }

  /// Parameter i's place in its bucket, shaped like the parameter.
  Tensor slot(int64_t i) const {
    const auto [b, offset] = location_[static_cast<size_t>(i)];
    const Tensor& buf = buckets_[static_cast<size_t>(b)].buffer;
    return Tensor::from_storage(buf.storage(), params_[static_cast<size_t>(i)].shape(), buf.dtype(),
                                buf.offset() + offset);
  }

  bool is_slot(const Tensor& g, int64_t i) const {
    const auto [b, offset] = location_[static_cast<size_t>(i)];
    const Tensor& buf = buckets_[static_cast<size_t>(b)].buffer;
    return g.storage() == buf.storage() && g.offset() == buf.offset() + offset;
  }

  /// After the first synchronised iteration: buckets in the order gradients became
  /// ready, with rank 0's layout adopted by every rank (ranks may observe different
  /// orders, and all must issue the same collectives).
  void rebuild_if_due() {
    if (rebuilt_ || !order_recorded_) return;
    rebuilt_ = true;
    const int64_t n = static_cast<int64_t>(params_.size());
    std::vector<int64_t> order = ready_order_;
    std::vector<char> seen(params_.size(), 0);
    for (int64_t i : order) seen[static_cast<size_t>(i)] = 1;
    for (int64_t i = n - 1; i >= 0; --i)
      if (!seen[static_cast<size_t>(i)]) order.push_back(i);
    std::vector<std::vector<int64_t>> layout = assign_buckets(order);
    if (group_.size() > 1) {
      // Encoded as (parameter, bucket) pairs in bucket order.
      std::vector<int64_t> code;
      for (size_t b = 0; b < layout.size(); ++b)
        for (int64_t i : layout[b]) {
          code.push_back(i);
          code.push_back(static_cast<int64_t>(b));
        }
      Tensor t = Tensor::from_vector(code, {2 * n}).to(device_);
      group_.broadcast(t, 0)->wait();
      std::vector<int64_t> got = t.to_vector<int64_t>();
      layout.clear();
      for (int64_t k = 0; k < n; ++k) {
        const auto b = static_cast<size_t>(got[static_cast<size_t>(2 * k + 1)]);
        if (layout.size() <= b) layout.resize(b + 1);
        layout[b].push_back(got[static_cast<size_t>(2 * k)]);
      }
    }
    build_buckets(layout);
  }

  /// Under CUDA graph capture only what replays correctly may run: the buckets already
  /// rebuilt (that reads the layout on the host) and no per-iteration search for unused
  /// parameters (its mask is read on the host at the end of backward).
  void check_capture() const {
    if (!device_.is_cuda() || !cuda::current_stream(device_.index).is_capturing()) return;
    const std::string expected = "[DistributedDataParallel] expected ";
    if (options_.find_unused_parameters) {
      throw std::invalid_argument(expected + "find_unused_parameters = false under CUDA graph capture (the used-"
                                  "parameter mask is read on the host every iteration), got true");
    }
    if (!rebuilt_) {
      throw std::invalid_argument(expected + "two synchronised iterations run eagerly before CUDA graph capture "
                                  "(the second rebuilds the buckets in gradient order), got a capture at iteration " +
                                  std::to_string(iteration_ + 1));
    }
  }

  // ---- one iteration ---------------------------------------------------------------------

  /// Called after a forward that will be followed by a synchronised backward.
  void prepare_for_backward(const Tensor& output) {
    if (armed_) {
      // The previous forward's backward never ran (or never reached a parameter):
      // start over, its state is stale.
      armed_ = false;
    }
    std::fill(ready_.begin(), ready_.end(), 0);
    std::fill(hook_count_.begin(), hook_count_.end(), 0);
    for (Bucket& b : buckets_) {
      b.pending = static_cast<int64_t>(b.params.size());
      b.work.reset();
      b.launched_in_backward = false;
    }
    next_launch_ = 0;
    first_hook_seen_ = false;
    launched_during_backward_ = 0;
    unused_.clear();
    global_used_ = Tensor();
    used_work_.reset();
    ++iteration_;

    const bool walk = options_.find_unused_parameters || (options_.static_graph && iteration_ == 1);
    if (walk) {
      find_unused(output);
      // The exchange of which parameters any rank used overlaps backward; it decides
      // at the end which locally unused parameters still get the average.
      Tensor used = zeros({static_cast<int64_t>(params_.size())}, {.device = device_});
      {
        std::vector<float> local(params_.size(), 1.0f);
        for (int64_t i : unused_) local[static_cast<size_t>(i)] = 0.0f;
        used.copy_(Tensor::from_vector(local, {static_cast<int64_t>(local.size())}));
      }
      global_used_ = used;
      if (group_.size() > 1) used_work_ = group_.all_reduce(used, ReduceOp::kSum);
      if (options_.static_graph) static_unused_ = unused_;
    } else if (options_.static_graph) {
      unused_ = static_unused_;
    }
    armed_ = true;
  }

  /// Parameters the graph behind `output` does not reach.
  void find_unused(const Tensor& output) {
    std::vector<char> reached(params_.size(), 0);
    std::vector<autograd::Node*> stack;
    std::set<autograd::Node*> visited;
    if (output.grad_fn()) stack.push_back(output.grad_fn().get());
    while (!stack.empty()) {
      autograd::Node* node = stack.back();
      stack.pop_back();
      if (!visited.insert(node).second) continue;
      if (auto* acc = dynamic_cast<autograd::AccumulateGrad*>(node)) {
        if (auto leaf = acc->leaf()) {
          auto it = index_of_.find(leaf.get());
          if (it != index_of_.end()) reached[static_cast<size_t>(it->second)] = 1;
        }
      }
      for (const autograd::Edge& e : node->next_edges)
        if (e.node) stack.push_back(e.node.get());
    }
    for (size_t i = 0; i < params_.size(); ++i)
      if (!reached[i]) unused_.push_back(static_cast<int64_t>(i));
  }

  /// The post-accumulate hook of parameter i.
  void on_gradient(int64_t i) {
    if (!armed_) return;  // no_sync(), eval, or a backward without a prepared forward
    if (!first_hook_seen_) {
      first_hook_seen_ = true;
      backward_start_ = Clock::now();
      autograd::queue_callback([this] { finalize(); });
      if (!(options_.static_graph && iteration_ == 1))
        for (int64_t u : unused_) mark_ready(u);
    }
    const auto k = static_cast<size_t>(i);
    ++hook_count_[k];
    if (options_.static_graph && iteration_ == 1) {
      // The first iteration learns how many times each gradient arrives (reentrant
      // backward, e.g. activation checkpointing, delivers some more than once) and
      // reduces everything at the end.
      if (hook_count_[k] == 1) record_ready(i);
      return;
    }
    if (hook_count_[k] < expected_hooks_[k]) return;
    mark_ready(i);
  }

  void record_ready(int64_t i) {
    if (rebuilt_ || order_recorded_ || in_order_[static_cast<size_t>(i)]) return;
    in_order_[static_cast<size_t>(i)] = 1;
    ready_order_.push_back(i);
  }

  void mark_ready(int64_t i) {
    const auto k = static_cast<size_t>(i);
    if (ready_[k]) {
      throw std::runtime_error(
          "[DistributedDataParallel] parameter '" + names_[k] +
          "' was marked ready twice in one backward: its gradient arrived again after its bucket's "
          "all-reduce was launched (a reentrant backward such as activation checkpointing, or the "
          "parameter used in several checkpointed regions); construct DDP with static_graph = true");
    }
    ready_[k] = 1;
    record_ready(i);
    copy_into_bucket(i);
    Bucket& b = buckets_[static_cast<size_t>(location_[k].first)];
    if (--b.pending == 0) launch_ready_buckets();
  }

  /// Puts parameter i's gradient into its bucket slot (zeros when it has none).
  void copy_into_bucket(int64_t i) {
    autograd::NoGradGuard no_grad;
    const auto k = static_cast<size_t>(i);
    Tensor g = params_[k].grad();
    if (g.defined() && is_slot(g, i)) return;
    Tensor v = slot(i);
    if (g.defined()) {
      v.copy_(g);
      if (options_.gradient_as_bucket_view) params_[k].set_grad(v);
    } else {
      v.zero_();
    }
  }

  void launch_ready_buckets() {
    while (next_launch_ < static_cast<int64_t>(buckets_.size()) &&
           buckets_[static_cast<size_t>(next_launch_)].pending == 0) {
      Bucket& b = buckets_[static_cast<size_t>(next_launch_)];
      // Averaging over one rank changes nothing: skip the collective, keep the rest.
      if (group_.size() > 1) b.work = group_.all_reduce(b.buffer, ReduceOp::kAvg);
      b.ready_time = Clock::now();
      b.launched_in_backward = !finalizing_;
      if (b.launched_in_backward) ++launched_during_backward_;
      ++next_launch_;
    }
  }

  /// End of backward: wait for every bucket and hand the averages to .grad.
  void finalize() {
    armed_ = false;
    stats_ = {};
    const auto backward_end = Clock::now();
    stats_.backward_reduce_window_s = seconds_since(backward_start_);
    stats_.first_hook_s = clock_seconds(backward_start_);
    stats_.backward_end_s = clock_seconds(backward_end);
    if (options_.static_graph && iteration_ == 1) {
      // Learn the per-parameter arrival counts, then reduce everything now.
      for (size_t k = 0; k < params_.size(); ++k) expected_hooks_[k] = std::max<int64_t>(1, hook_count_[k]);
      finalizing_ = true;
      for (size_t k = 0; k < params_.size(); ++k)
        if (!ready_[k]) mark_ready(static_cast<int64_t>(k));
      finalizing_ = false;
    }
    if (!order_recorded_) order_recorded_ = true;

    if (next_launch_ < static_cast<int64_t>(buckets_.size())) {
      // Some parameter never got a gradient: its bucket and every later one were never
      // launched (on any rank, when the model is the same everywhere). Report it at the
      // next forward, as a clear error instead of a hang.
      std::vector<std::string> missing;
      for (size_t k = 0; k < params_.size(); ++k)
        if (!ready_[k]) missing.push_back(names_[k]);
      for (Bucket& b : buckets_)
        if (b.work) b.work->wait();
      if (used_work_) used_work_->wait();
      pending_error_ =
          "[DistributedDataParallel] expected every parameter to receive a gradient in the previous "
          "backward, got none for " + std::to_string(missing.size()) + " parameter(s): " + join_names(missing) +
          ". Construct DDP with find_unused_parameters = true if the forward skips parameters, or make "
          "sure the loss depends on every output of the forward";
      // Do not rebuild from an incomplete order.
      if (!rebuilt_) {
        order_recorded_ = false;
        ready_order_.clear();
        std::fill(in_order_.begin(), in_order_.end(), 0);
      }
      return;
    }

    const auto wait_start = Clock::now();
    for (Bucket& b : buckets_) {
      if (b.work) b.work->wait();
      b.done_time = b.work ? Clock::now() : b.ready_time;
    }
    std::vector<float> global_used;
    if (global_used_.defined()) {
      if (used_work_) used_work_->wait();
      global_used = global_used_.to_vector<float>();
      if (options_.static_graph) static_global_used_ = global_used;
    } else if (options_.static_graph) {
      global_used = static_global_used_;
    }
    stats_.exposed_comm_s = seconds_since(wait_start);
    stats_.buckets = static_cast<int>(buckets_.size());
    stats_.buckets_launched_during_backward = launched_during_backward_;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      const Bucket& b = buckets_[i];
      stats_.timeline.push_back({static_cast<int>(i), static_cast<size_t>(b.numel) * dtype_size(b.dtype),
                                 clock_seconds(b.ready_time), clock_seconds(b.done_time)});
    }

    autograd::NoGradGuard no_grad;
    std::vector<char> locally_unused(params_.size(), 0);
    for (int64_t u : unused_) locally_unused[static_cast<size_t>(u)] = 1;
    for (size_t k = 0; k < params_.size(); ++k) {
      const auto i = static_cast<int64_t>(k);
      Tensor g = params_[k].grad();
      // A parameter no rank used keeps its gradient as it was (undefined stays undefined,
      // so optimizers skip it exactly as in single-process training).
      if (locally_unused[k] && !global_used.empty() && global_used[k] == 0.0f && !g.defined()) continue;
      if (g.defined() && is_slot(g, i)) continue;
      if (options_.gradient_as_bucket_view) {
        params_[k].set_grad(slot(i));
      } else if (g.defined()) {
        g.copy_(slot(i));
      } else {
        params_[k].set_grad(slot(i).clone());
      }
    }
  }

  /// Throws the error recorded by the previous backward, once.
  void throw_pending_error() {
    if (pending_error_.empty()) return;
    std::string e = std::move(pending_error_);
    pending_error_.clear();
    throw std::runtime_error(e);
  }

  std::vector<BucketInfo> bucket_infos() const {
    std::vector<BucketInfo> out;
    for (const Bucket& b : buckets_) {
      out.push_back({b.params, b.numel, static_cast<size_t>(b.numel) * dtype_size(b.dtype), b.dtype, device_});
    }
    return out;
  }

  bool rebuilt() const { return rebuilt_; }
  DDPIterationStats stats() const { return stats_; }

 private:
  struct Bucket {
    std::vector<int64_t> params;
    int64_t numel = 0;
    DType dtype = DType::kF32;
    Tensor buffer;
    int64_t pending = 0;
    WorkPtr work;
    bool launched_in_backward = false;
    Clock::time_point ready_time, done_time;
  };

  ProcessGroup& group_;
  const DDPOptions& options_;
  Device device_;
  std::vector<std::string> names_;
  std::vector<Tensor> params_;
  std::unordered_map<const TensorImpl*, int64_t> index_of_;
  std::vector<int> hook_ids_;

  std::vector<Bucket> buckets_;
  std::vector<std::pair<int64_t, int64_t>> location_;  // parameter -> (bucket, element offset)

  // Per iteration.
  bool armed_ = false;
  bool first_hook_seen_ = false;
  bool finalizing_ = false;
  int64_t next_launch_ = 0;
  int launched_during_backward_ = 0;
  std::vector<char> ready_;
  std::vector<int64_t> hook_count_;
  std::vector<int64_t> unused_;
  Tensor global_used_;
  WorkPtr used_work_;
  Clock::time_point backward_start_;
  DDPIterationStats stats_;
  std::string pending_error_;
  int64_t iteration_ = 0;

  // Across iterations.
  std::vector<int64_t> ready_order_;
  std::vector<char> in_order_;
  bool order_recorded_ = false;
  bool rebuilt_ = false;
  std::vector<int64_t> expected_hooks_;
  std::vector<int64_t> static_unused_;
  std::vector<float> static_global_used_;
};

// ---- DistributedDataParallel --------------------------------------------------------------

namespace {

/// Checks that every rank holds the same parameters: count first, then each one's
/// dtype and shape. The error names the first mismatch and the two ranks.
void check_same_parameters(ProcessGroup& group, const std::vector<std::pair<std::string, Tensor>>& params,
                           Device device) {
  const int world = group.size();
  if (world == 1) return;
  const int rank = group.rank();
  auto gather = [&](const Tensor& mine) {
    std::vector<Tensor> all;
    for (int r = 0; r < world; ++r) all.push_back(Tensor::empty(mine.shape(), {.dtype = DType::kI64, .device = device}));
    group.all_gather(all, mine)->wait();
    std::vector<std::vector<int64_t>> host;
    for (const Tensor& t : all) host.push_back(t.to_vector<int64_t>());
    return host;
  };
  const auto n = static_cast<int64_t>(params.size());
  std::vector<std::vector<int64_t>> counts = gather(Tensor::from_vector(std::vector<int64_t>{n}, {1}).to(device));
  for (int r = 0; r < world; ++r) {
    if (counts[static_cast<size_t>(r)][0] != n) {
      throw std::invalid_argument("[DistributedDataParallel] expected every rank to hold the same parameters, got " +
                                  std::to_string(n) + " parameter tensors on rank " + std::to_string(rank) + " and " +
                                  std::to_string(counts[static_cast<size_t>(r)][0]) + " on rank " + std::to_string(r));
    }
  }
  std::vector<int64_t> desc(static_cast<size_t>(n * kDescriptorWidth), -1);
  for (int64_t i = 0; i < n; ++i) {
    const Tensor& p = params[static_cast<size_t>(i)].second;
    int64_t* d = desc.data() + i * kDescriptorWidth;
    d[0] = static_cast<int64_t>(p.dtype());
    d[1] = p.dim();
    for (int64_t k = 0; k < std::min(p.dim(), kMaxDescribedDims); ++k) d[2 + k] = p.size(k);
  }
  std::vector<std::vector<int64_t>> all = gather(Tensor::from_vector(desc, {n * kDescriptorWidth}).to(device));
  auto describe = [](const int64_t* d) {
    std::string s = std::string(dtype_name(static_cast<DType>(d[0]))) + " [";
    for (int64_t k = 0; k < std::min(d[1], kMaxDescribedDims); ++k) s += (k ? ", " : "") + std::to_string(d[2 + k]);
    return s + (d[1] > kMaxDescribedDims ? ", ...]" : "]");
  };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* mine = desc.data() + i * kDescriptorWidth;
    for (int r = 0; r < world; ++r) {
      const int64_t* theirs = all[static_cast<size_t>(r)].data() + i * kDescriptorWidth;
      if (!std::equal(mine, mine + kDescriptorWidth, theirs)) {
        throw std::invalid_argument("[DistributedDataParallel] expected every rank to hold the same parameters, got "
                                    "parameter " + std::to_string(i) + " ('" + params[static_cast<size_t>(i)].first +
                                    "' here) as " + describe(mine) + " on rank " + std::to_string(rank) + " and " +
                                    describe(theirs) + " on rank " + std::to_string(r));
      }
    }
  }
}

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<nn::Module> module,
                                                 std::shared_ptr<ProcessGroup> group, DDPOptions options)
    : module_(std::move(module)), group_(std::move(group)), options_(options) {
  if (!module_) throw std::invalid_argument("[DistributedDataParallel] expected a module, got null");
  if (!group_) throw std::invalid_argument("[DistributedDataParallel] expected a process group, got null");
  if (!(options_.bucket_cap_mb > 0.0) || !(options_.first_bucket_cap_mb > 0.0)) {
    throw std::invalid_argument("[DistributedDataParallel] expected bucket_cap_mb > 0 and first_bucket_cap_mb > 0, got " +
                                std::to_string(options_.bucket_cap_mb) + " and " +
                                std::to_string(options_.first_bucket_cap_mb));
  }
  register_module("module", module_);

  std::vector<std::pair<std::string, Tensor>> trainable;
  for (auto& [name, p] : module_->named_parameters())
    if (p.requires_grad()) trainable.emplace_back(name, p);
  if (trainable.empty())
    throw std::invalid_argument("[DistributedDataParallel] expected a module with parameters that require grad, got none");
  const Device device = trainable.front().second.device();
  for (auto& [name, p] : module_->named_parameters()) {
    if (p.device() != device) {
      throw std::invalid_argument("[DistributedDataParallel] expected every parameter on one device (" + device.str() +
                                  "), got '" + name + "' on " + p.device().str());
    }
  }
  const std::string backend = group_->backend();
  if (backend == "gloo" && device.is_cuda())
    throw std::invalid_argument("[DistributedDataParallel] the gloo backend reduces CPU tensors, got parameters on " +
                                device.str() + "; use the nccl or local backend");
  if (backend == "nccl" && !device.is_cuda())
    throw std::invalid_argument("[DistributedDataParallel] the nccl backend reduces CUDA tensors, got parameters on " +
                                device.str() + "; move the model with module->to(Device::cuda(...)) or use gloo");

  std::vector<std::pair<std::string, Tensor>> all_params = module_->named_parameters();
  check_same_parameters(*group_, all_params, device);
  std::vector<Tensor> state = module_->parameters();
  for (const Tensor& b : module_->buffers()) state.push_back(b);
  broadcast_from_rank0(*group_, state);

  reducer_ = std::make_unique<Reducer>(*this, std::move(trainable));
}

DistributedDataParallel::~DistributedDataParallel() = default;

Tensor DistributedDataParallel::forward(const Tensor& input) {
  reducer_->throw_pending_error();
  const bool sync = require_sync_ && autograd::grad_enabled();
  if (sync) reducer_->check_capture();
  if (sync) reducer_->rebuild_if_due();
  // Every forward, evaluation included, so all ranks normalise with rank 0's statistics.
  if (options_.broadcast_buffers) sync_buffers();
  Tensor out = module_->forward(input);
  if (sync && out.requires_grad()) reducer_->prepare_for_backward(out);
  return out;
}

void DistributedDataParallel::sync_buffers() {
  if (group_->size() == 1) return;
  std::vector<Tensor> buffers = module_->buffers();
  if (!buffers.empty()) broadcast_from_rank0(*group_, buffers);
}

DistributedDataParallel::NoSyncGuard::NoSyncGuard(DistributedDataParallel& ddp)
    : ddp_(ddp), previous_(ddp.require_sync_) {
  ddp_.require_sync_ = false;
}

DistributedDataParallel::NoSyncGuard::~NoSyncGuard() { ddp_.require_sync_ = previous_; }

std::vector<BucketInfo> DistributedDataParallel::buckets() const { return reducer_->bucket_infos(); }
bool DistributedDataParallel::buckets_rebuilt() const { return reducer_->rebuilt(); }
DDPIterationStats DistributedDataParallel::last_iteration_stats() const { return reducer_->stats(); }

}  // namespace tandem::comm
