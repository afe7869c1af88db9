// tandem-bench: training throughput of the data-parallel strategies (issue 5, item 6).
//   overhead    plain model against DDP at world size 1 (local and gloo), interleaved
//   strategies  one process (global batch G), DataParallel over N devices (G) and DDP
//               over N worker processes (G/N each), on the same model
//   scaling     DDP (or DP) over 1, 2, 4... ranks: samples/s, speed-up, efficiency, the
//               per-iteration split, the all-reduce time hidden behind backward, with
//               bucketed overlap and with one bucket; the scaling model's predictions
//               beside each measurement (bench/scaling_model.h), a modelled sweep over
//               link presets (--model-links) and a bucket-size sweep (--bucket-sweep);
//               a PNG of speed-up and efficiency drawn with gnuplot
// Data are random tensors made before timing, so no loading is measured. The worker
// processes are this program again, started through comm::run_workers with the hidden
// `worker` subcommand; rank 0 writes its figures to a file the parent reads.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench/bench_models.h"
#include "bench/emulated_device.h"
#include "bench/scaling_model.h"
#include "comm/data_parallel.h"
#include "comm/ddp.h"
#include "comm/launch.h"
#include "comm/local.h"
#include "comm/process_group.h"
#include "comm/spawn.h"
#include "engine/autocast.h"
#include "engine/cuda/runtime.h"
#include "engine/ops/factory.h"
#include "engine/ops/nn.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "optim/grad_scaler.h"
#include "optim/sgd.h"
#include "train/loss.h"

namespace tandem::bench {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr const char* kProgram = "tandem-bench";
/// Caps that no model here reaches: DDP then makes one bucket, whose all-reduce can
/// only start when the last gradient has arrived (no overlap with backward).
constexpr double kOneBucketMb = 1.0e6;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

/// Waits for queued device work, so a host interval covers it.
void synchronize(Device device) {
  if (device.is_cuda()) cuda::synchronize(device.index);
}

unsigned cores() { return std::max(1u, std::thread::hardware_concurrency()); }

int omp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Limits this thread's OpenMP team (local-backend ranks are threads of one process).
void set_omp_threads(int n) {
#ifdef _OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

std::string today() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M", std::localtime(&now));
  return text;
}

// ---- models and data ----------------------------------------------------------------

/// A fresh model (bench::make_bench_model); the same seed gives the same initial parameters.
std::shared_ptr<nn::Module> make_model(const std::string& name, uint64_t seed, Device device) {
  manual_seed(seed);
  std::shared_ptr<nn::Module> model = bench::make_bench_model(name);
  model->to(device);
  return model;
}

/// A few random batches, cycled through by the timed loop (made before timing).
struct Batches {
  std::vector<Tensor> inputs;
  std::vector<Tensor> targets;
  const Tensor& input(int64_t step) const { return inputs[static_cast<size_t>(step) % inputs.size()]; }
  const Tensor& target(int64_t step) const { return targets[static_cast<size_t>(step) % targets.size()]; }
};

/// Images (Fashion-MNIST's 1x28x28 for mlp and cnn, CIFAR-10's 3x32x32 for resnet18)
/// with 10 classes, or token sequences for the GPTs.
Batches make_batches(const std::string& model, int64_t batch, uint64_t seed, Device device, int count = 4) {
  Batches b;
  if (bench::is_gpt(model)) {
    for (int i = 0; i < count; ++i) {
      auto [x, y] = bench::random_token_sequences(batch, bench::gpt_options(model), seed + static_cast<uint64_t>(i));
      b.inputs.push_back(x.to(device));
      b.targets.push_back(y.to(device));
    }
    return b;
  }
  Generator gen(seed);
  std::mt19937_64 labels(seed);
  Shape shape = model == "resnet18" ? Shape{batch, 3, 32, 32} : Shape{batch, 1, 28, 28};
  for (int i = 0; i < count; ++i) {
    b.inputs.push_back(randn(shape, {}, &gen).to(device));
    std::vector<int64_t> y(static_cast<size_t>(batch));
    for (int64_t& v : y) v = static_cast<int64_t>(labels() % 10);
    b.targets.push_back(Tensor::from_vector(y, {batch}, device));
  }
  return b;
}

/// SGD with momentum; with `emulate_step_ms` > 0, the emulated device's optimizer.
std::unique_ptr<optim::Optimizer> make_optimizer(const nn::Module& model, double emulate_step_ms = 0) {
  if (emulate_step_ms > 0) return std::make_unique<EmulatedOptimizer>(model.parameters(), EmulatedStep{emulate_step_ms});
  return std::make_unique<optim::SGD>(model.parameters(),
                                      optim::SGDOptions{.lr = 0.01, .momentum = 0.9, .weight_decay = 5e-4});
}

// ---- the timed loop -----------------------------------------------------------------

/// Per-iteration host times (seconds) of the timed steps.
struct StepTimes {
  std::vector<double> step, forward, backward, exposed, optimizer, reduce_window, hidden, backward_end;
  /// Per timed step and bucket (DDP): its size, and its ready and done times in seconds
  /// after backward started (the scaling model's input).
  std::vector<std::vector<double>> bucket_ready, bucket_done;
  std::vector<double> bucket_nbytes;
  int buckets = 0;
  int buckets_in_backward = 0;
  double wall_s = 0;  // from the first timed step to the last, over all ranks
  int64_t steps = 0;

  void append(const StepTimes& o) {
    for (auto [a, b] : {std::pair{&step, &o.step}, {&forward, &o.forward}, {&backward, &o.backward},
                        {&exposed, &o.exposed}, {&optimizer, &o.optimizer}, {&reduce_window, &o.reduce_window},
                        {&hidden, &o.hidden}})
      a->insert(a->end(), b->begin(), b->end());
    buckets = o.buckets;
    buckets_in_backward = o.buckets_in_backward;
    wall_s += o.wall_s;
    steps += o.steps;
  }
};

/// Mixed precision of a run: fp32 (none), bf16 (autocast) or fp16 (autocast and a
/// GradScaler, as torch.amp recommends for f16).
struct Precision {
  std::string name = "fp32";
  optim::GradScaler* scaler = nullptr;
  bool autocast() const { return name != "fp32"; }
  DType dtype() const { return name == "fp16" ? DType::kF16 : DType::kBF16; }
};

/// Seconds since the steady clock's epoch (the epoch of DDP's bucket timeline).
double steady_seconds(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

/// Runs `warmup` untimed then `steps` timed SGD steps of `model` (plain, DP or DDP).
/// With a group, every rank starts the timed steps together and the wall time ends
/// when the slowest rank is done. Phases end with a device synchronisation on CUDA.
StepTimes train_steps(nn::Module& model, optim::Optimizer& optimizer, const Batches& data, int64_t steps, int64_t warmup,
                      Device device, const comm::DistributedDataParallel* ddp, comm::ProcessGroup* group,
                      int64_t first_step = 0, const Precision& precision = {}) {
  StepTimes t;
  auto barrier = [&] {
    synchronize(device);
    if (group != nullptr && group->size() > 1) group->barrier()->wait();
  };
  Clock::time_point start;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    if (i == warmup) {
      barrier();
      start = Clock::now();
    }
    const int64_t k = first_step + i;
    const auto t0 = Clock::now();
    optimizer.zero_grad();
    Tensor loss;
    {
      std::optional<AutocastGuard> amp;
      if (precision.autocast()) amp.emplace(precision.dtype());
      loss = train::prediction_loss(model(data.input(k)), data.target(k));
    }
    synchronize(device);
    const auto t1 = Clock::now();
    if (precision.scaler != nullptr) {
      precision.scaler->scale(loss).backward();
    } else {
      loss.backward();
    }
    synchronize(device);
    const auto t2 = Clock::now();
    if (precision.scaler != nullptr) {
      precision.scaler->step(optimizer);
      precision.scaler->update();
    } else {
      optimizer.step();
    }
    synchronize(device);
    const auto t3 = Clock::now();
    if (i < warmup) continue;
    auto s = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
    t.step.push_back(s(t0, t3));
    t.forward.push_back(s(t0, t1));
    t.backward.push_back(s(t1, t2));
    t.optimizer.push_back(s(t2, t3));
    if (ddp != nullptr) {
      const comm::DDPIterationStats st = ddp->last_iteration_stats();
      t.exposed.push_back(st.exposed_comm_s);
      t.reduce_window.push_back(st.backward_reduce_window_s);
      t.buckets = st.buckets;
      t.buckets_in_backward = st.buckets_launched_during_backward;
      // The timeline is on the steady clock too: times relative to this backward's start.
      const double origin = steady_seconds(t1);
      std::vector<double> ready, done;
      t.bucket_nbytes.clear();
      for (const comm::BucketTiming& b : st.timeline) {
        ready.push_back(b.ready_s - origin);
        done.push_back(b.done_s - origin);
        t.bucket_nbytes.push_back(static_cast<double>(b.nbytes));
      }
      t.hidden.push_back(measured_hidden_fraction(ready, done, st.backward_end_s - origin));
      t.backward_end.push_back(st.backward_end_s - origin);
      t.bucket_ready.push_back(ready);
      t.bucket_done.push_back(done);
    } else {
      t.exposed.push_back(0.0);
      t.reduce_window.push_back(0.0);
      t.hidden.push_back(1.0);
    }
  }
  barrier();
  t.wall_s = seconds_since(start);
  t.steps = steps;
  return t;
}

/// Per bucket, the median over steps of `per_step[step][bucket]` (ms); steps whose
/// bucket count differs from the last step's are skipped.
std::vector<double> bucket_medians_ms(const std::vector<std::vector<double>>& per_step) {
  if (per_step.empty()) return {};
  const size_t count = per_step.back().size();
  std::vector<double> out;
  for (size_t b = 0; b < count; ++b) {
    std::vector<double> v;
    for (const auto& step : per_step)
      if (step.size() == count) v.push_back(step[b]);
    out.push_back(median(v) * 1e3);
  }
  return out;
}

/// The medians of one rank, averaged over the ranks of `group` (exposed communication
/// also as the maximum over ranks: the rank that finished backward first waits longest).
json summarize(const StepTimes& t, int64_t global_batch, comm::ProcessGroup* group, Device device) {
  std::vector<double> v = {median(t.step),          median(t.forward),  median(t.backward),
                           median(t.exposed),       median(t.optimizer), median(t.reduce_window),
                           median(t.hidden),        median(t.exposed)};
  if (group != nullptr && group->size() > 1) {
    // Two reductions on a small f64 vector: the average of the first seven, the max of the last.
    Tensor avg = Tensor::from_vector(std::vector<double>(v.begin(), v.end() - 1), {7}, device);
    Tensor mx = Tensor::from_vector(std::vector<double>{v.back()}, {1}, device);
    group->all_reduce({avg}, comm::ReduceOp::kAvg)->wait();
    group->all_reduce({mx}, comm::ReduceOp::kMax)->wait();
    synchronize(device);
    std::vector<double> a = avg.cpu().to_vector<double>();
    a.push_back(mx.cpu().to_vector<double>()[0]);
    v = a;
  }
  const double ms = 1e3;
  return {
      {"samples_per_s", static_cast<double>(global_batch * t.steps) / t.wall_s},
      // From the median step, which a few descheduled steps on a busy machine do not move.
      {"samples_per_s_median_step", v[0] > 0 ? static_cast<double>(global_batch) / v[0] : 0.0},
      {"wall_s", t.wall_s},
      {"steps", t.steps},
      {"step_ms", v[0] * ms},
      {"forward_ms", v[1] * ms},
      {"backward_ms", v[2] * ms},
      {"backward_compute_ms", (v[2] - v[3]) * ms},
      {"exposed_comm_ms", v[3] * ms},
      {"exposed_comm_max_ms", v[7] * ms},
      {"optimizer_ms", v[4] * ms},
      {"reduce_window_ms", v[5] * ms},
      {"hidden_fraction", v[6]},
      {"buckets", t.buckets},
      {"buckets_launched_during_backward", t.buckets_in_backward},
      // This rank's (rank 0's) bucket timeline, medians over steps, ms after backward started.
      {"bucket_nbytes", t.bucket_nbytes},
      {"backward_end_ms", median(t.backward_end) * ms},
      {"bucket_ready_ms", bucket_medians_ms(t.bucket_ready)},
      {"bucket_done_ms", bucket_medians_ms(t.bucket_done)},
  };
}

// ---- worker (one rank or one single/DP process) ---------------------------------------

struct WorkerConfig {
  std::string role = "ddp";  // single, dp, ddp
  std::string model = "cnn";
  std::string device = "cpu";
  std::string backend = "gloo";
  int64_t batch = 32;        // per process (single, dp: the global batch; ddp: per rank)
  int dp_devices = 2;
  int64_t steps = 20;
  int64_t warmup = 3;
  double bucket_cap_mb = comm::DDPOptions{}.bucket_cap_mb;
  double first_bucket_cap_mb = comm::DDPOptions{}.first_bucket_cap_mb;
  std::vector<std::string> variants = {"overlap"};  // ddp: overlap, no-overlap, cap:<MiB>
  std::string precision = "fp32";                  // fp32, bf16, fp16
  bool measure_link = false;                       // ddp: fit alpha and busbw after training
  double emulate_step_ms = 0;                      // ddp: > 0, an emulated device (emulated_device.h)
  uint64_t seed = 1;
  std::string result;
};

comm::DDPOptions ddp_options(const WorkerConfig& c, const std::string& variant) {
  comm::DDPOptions o;
  if (variant == "no-overlap") {
    o.bucket_cap_mb = o.first_bucket_cap_mb = kOneBucketMb;
  } else if (variant.rfind("cap:", 0) == 0) {
    // The bucket-size sweep: every bucket capped at the value, the first too when smaller.
    o.bucket_cap_mb = std::stod(variant.substr(4));
    o.first_bucket_cap_mb = std::min(c.first_bucket_cap_mb, o.bucket_cap_mb);
  } else {
    o.bucket_cap_mb = c.bucket_cap_mb;
    o.first_bucket_cap_mb = c.first_bucket_cap_mb;
  }
  return o;
}

/// Message sizes of the all-reduce sweep that fits the link's alpha and bus bandwidth.
const std::vector<int64_t> kLinkSweepBytes = {16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20};

/// Times all-reduces of f32 tensors of kLinkSweepBytes on `group` and fits
/// t = alpha + 2(n-1)/n·S/busbw, as bench_collectives reports busbw. Per size: 5 warm-up
/// calls, then 5 rounds of 10 back-to-back calls after a barrier (as nccl-tests times
/// them: a barrier per call would add its own skew), each call timed; the median call,
/// slowest rank. (The median of single calls, not of round averages: on a shared
/// machine one descheduled rank stalls a whole round, and the model wants the typical
/// call, as a training all-reduce sees it.)
json measure_link(comm::ProcessGroup& group, Device device) {
  std::vector<double> bytes, seconds;
  for (int64_t nbytes : kLinkSweepBytes) {
    Tensor x = full({nbytes / 4}, 1.0, {.device = device});
    for (int i = 0; i < 5; ++i) group.all_reduce(x)->wait();
    std::vector<double> times;
    for (int round = 0; round < 5; ++round) {
      synchronize(device);
      group.barrier()->wait();
      for (int i = 0; i < 10; ++i) {
        const auto t0 = Clock::now();
        group.all_reduce(x)->wait();
        synchronize(device);
        times.push_back(seconds_since(t0));
      }
    }
    Tensor m = Tensor::from_vector(std::vector<double>{median(times)}, {1}, device);
    group.all_reduce({m}, comm::ReduceOp::kMax)->wait();
    bytes.push_back(static_cast<double>(nbytes));
    seconds.push_back(m.cpu().to_vector<double>()[0]);
  }
  std::vector<double> us;
  for (double t : seconds) us.push_back(t * 1e6);
  // On a loaded machine, scheduling noise can swamp the size dependence; then no line
  // fits, and the figures come from the end points instead (said in the JSON).
  if (seconds.back() <= seconds.front() * 1.05) {
    const double n = group.size();
    const double alpha = seconds.front();
    return {{"alpha_us", alpha * 1e6}, {"busbw_gbps", 2.0 * (n - 1.0) / n * bytes.back() / seconds.back() / 1e9},
            {"fit", "none: time did not grow with size (noise); alpha = smallest size, busbw = largest"},
            {"bytes", bytes}, {"median_us", us}};
  }
  const auto [alpha_us, busbw] = fit_alpha_busbw(bytes, seconds, group.size());
  return {{"alpha_us", alpha_us}, {"busbw_gbps", busbw}, {"fit", "least squares"}, {"bytes", bytes}, {"median_us", us}};
}

/// A DDP rank's model: `c.model`, or with c.emulate_step_ms > 0 an emulated device
/// holding its parameters.
std::shared_ptr<nn::Module> make_rank_model(const WorkerConfig& c, Device device) {
  std::shared_ptr<nn::Module> model = make_model(c.model, c.seed, device);
  if (c.emulate_step_ms <= 0) return model;
  return std::make_shared<EmulatedDeviceModel>(*model, EmulatedStep{c.emulate_step_ms});
}

/// One DDP rank: every variant on its own model (same initial values), in turn.
json run_ddp_rank(const WorkerConfig& c, const std::shared_ptr<comm::ProcessGroup>& group, Device device,
                  std::vector<std::shared_ptr<nn::Module>> models) {
  const Batches data = make_batches(c.model, c.batch, c.seed + 1000 * static_cast<uint64_t>(group->rank()), device);
  json out = json::object();
  for (size_t v = 0; v < c.variants.size(); ++v) {
    auto ddp = std::make_shared<comm::DistributedDataParallel>(models[v], group, ddp_options(c, c.variants[v]));
    auto optimizer = make_optimizer(*ddp, c.emulate_step_ms);
    optim::GradScaler scaler(optim::GradScalerOptions{.enabled = c.precision == "fp16"});
    const Precision precision{c.precision, c.precision == "fp16" ? &scaler : nullptr};
    const StepTimes t =
        train_steps(*ddp, *optimizer, data, c.steps, c.warmup, device, ddp.get(), group.get(), 0, precision);
    json row = summarize(t, c.batch * group->size(), group.get(), device);
    row["bucket_sizes_mb"] = json::array();
    for (const comm::BucketInfo& b : ddp->buckets())
      row["bucket_sizes_mb"].push_back(static_cast<double>(b.nbytes) / (1 << 20));
    out[c.variants[v]] = row;
  }
  if (c.measure_link && group->size() > 1) out["link"] = measure_link(*group, device);
  return out;
}

Device cuda_device(int k) { return Device::cuda(k % cuda::device_count()); }

/// The worker subcommand: one process of a strategies or scaling run.
int run_worker(const WorkerConfig& c) {
  const bool cuda = c.device == "cuda";
  json result;
  if (c.role == "ddp") {
    comm::InitOptions init;
    init.backend = c.backend;
    auto group = comm::init(init);
    const Device device = cuda ? cuda_device(comm::launch_env().local_rank) : Device::cpu();
    std::vector<std::shared_ptr<nn::Module>> models;
    for (size_t v = 0; v < c.variants.size(); ++v) models.push_back(make_rank_model(c, device));
    result = run_ddp_rank(c, group, device, models);
    if (group->rank() != 0) return 0;
  } else {
    const Device device = cuda ? cuda_device(0) : Device::cpu();
    auto model = make_model(c.model, c.seed, device);
    std::shared_ptr<nn::Module> trained = model;
    std::shared_ptr<comm::DataParallel> dp;
    if (c.role == "dp") {
      std::vector<Device> devices;
      for (int k = 0; k < c.dp_devices; ++k) devices.push_back(cuda ? cuda_device(k) : Device::cpu());
      dp = std::make_shared<comm::DataParallel>(model, devices);
      trained = dp;
    }
    const Batches data = make_batches(c.model, c.batch, c.seed, device);
    auto optimizer = make_optimizer(*model);
    optim::GradScaler scaler(optim::GradScalerOptions{.enabled = c.precision == "fp16"});
    const Precision precision{c.precision, c.precision == "fp16" ? &scaler : nullptr};
    // DP: the phases of its forward, summed over the timed steps (host wall time).
    double scatter = 0, replicate = 0, apply = 0, gather = 0;
    StepTimes all;
    for (int64_t i = 0; i < c.warmup + c.steps; ++i) {
      const bool timed = i >= c.warmup;
      StepTimes one =
          train_steps(*trained, *optimizer, data, timed ? 1 : 0, timed ? 0 : 1, device, nullptr, nullptr, i, precision);
      if (!timed) continue;
      all.append(one);
      if (dp) {
        const comm::DataParallelStats s = dp->last_forward_stats();
        scatter += s.scatter_s;
        replicate += s.replicate_s;
        apply += s.apply_s;
        gather += s.gather_s;
      }
    }
    result = {{c.role, summarize(all, c.batch, nullptr, device)}};
    if (dp) {
      const double n = static_cast<double>(c.steps) / 1e3;
      result[c.role]["dp_scatter_ms"] = scatter / n;
      result[c.role]["dp_replicate_ms"] = replicate / n;
      result[c.role]["dp_apply_ms"] = apply / n;
      result[c.role]["dp_gather_ms"] = gather / n;
    }
  }
  result["omp_threads"] = omp_threads();
  std::ofstream out(c.result);
  if (!out) throw std::runtime_error(std::string("[") + kProgram + "] cannot open " + c.result + " for writing");
  out << result.dump() << "\n";
  return 0;
}

// ---- the parent side --------------------------------------------------------------------

struct Common {
  std::string model = "cnn";
  std::string device = "cpu";
  int64_t steps = 30;
  int64_t warmup = 5;
  uint64_t seed = 1;
  std::string precision = "fp32";
  std::string json_path;
  std::string csv_path;
  double timeout_s = 900;
};

/// Worker jobs started so far (names their result files).
int spawned = 0;
/// This invocation, recorded in every JSON file.
std::string command_line;

/// Starts `nproc` copies of this program as `worker` with `args`, each limited to
/// `threads` OpenMP threads, and returns rank 0's result.
json spawn_workers(int nproc, int threads, const std::vector<std::string>& args, double timeout_s) {
  const std::filesystem::path result = std::filesystem::temp_directory_path() /
      ("tandem-bench-" + std::to_string(::getpid()) + "-" + std::to_string(spawned++) + ".json");
  comm::SpawnOptions o;
  o.nproc = nproc;
  o.master_port = 0;
  o.timeout_s = timeout_s;
  o.name = kProgram;
  o.output = comm::WorkerOutput::kRankZeroOnly;
  o.command = {std::filesystem::read_symlink("/proc/self/exe").string(), "worker"};
  o.command.insert(o.command.end(), args.begin(), args.end());
  o.command.insert(o.command.end(), {"--result", result.string()});
  if (threads > 0) o.env.emplace_back("OMP_NUM_THREADS", std::to_string(threads));
  const int status = comm::run_workers(o);
  if (status != 0)
    throw std::runtime_error(std::string("[") + kProgram + "] expected the workers to exit with 0, got " +
                             std::to_string(status));
  std::ifstream in(result);
  if (!in) throw std::runtime_error(std::string("[") + kProgram + "] expected rank 0 to write " + result.string());
  json j = json::parse(in);
  std::filesystem::remove(result);
  return j;
}

std::vector<std::string> worker_args(const Common& c, const std::string& role, int64_t batch) {
  return {"--role", role, "--model", c.model, "--device", c.device, "--batch", std::to_string(batch),
          "--steps", std::to_string(c.steps), "--warmup", std::to_string(c.warmup), "--seed", std::to_string(c.seed),
          "--precision", c.precision};
}

json machine_info(const Common& c) {
  int gpus = 0;
  try {
    gpus = cuda::device_count();
  } catch (const std::exception&) {
    gpus = 0;
  }
  return {{"date", today()}, {"cores", cores()}, {"gpus", gpus}, {"device", c.device}, {"model", c.model},
          {"command", command_line}};
}

void write_outputs(const Common& c, const json& doc, const std::vector<std::string>& columns,
                   const std::vector<std::vector<std::string>>& rows) {
  if (!c.json_path.empty()) {
    std::ofstream out(c.json_path);
    if (!out) throw std::runtime_error(std::string("[") + kProgram + "] cannot open " + c.json_path + " for writing");
    out << doc.dump(2) << "\n";
    std::printf("wrote %s\n", c.json_path.c_str());
  }
  if (!c.csv_path.empty()) {
    std::ofstream out(c.csv_path);
    if (!out) throw std::runtime_error(std::string("[") + kProgram + "] cannot open " + c.csv_path + " for writing");
    for (size_t i = 0; i < columns.size(); ++i) out << (i ? "," : "") << columns[i];
    out << "\n";
    for (const auto& row : rows) {
      for (size_t i = 0; i < row.size(); ++i) out << (i ? "," : "") << row[i];
      out << "\n";
    }
    std::printf("wrote %s\n", c.csv_path.c_str());
  }
}

/// A terminal table: columns right-aligned to their widest cell.
void print_table(const std::vector<std::string>& columns, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(columns.size());
  for (size_t i = 0; i < columns.size(); ++i) width[i] = columns[i].size();
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) std::printf("%s%*s", i ? "  " : "", static_cast<int>(width[i]), cells[i].c_str());
    std::printf("\n");
  };
  line(columns);
  for (const auto& row : rows) line(row);
}

std::string fmt(double v, int decimals = 2) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, v);
  return text;
}

// ---- overhead -------------------------------------------------------------------------

struct OverheadConfig {
  int64_t batch = 64;
  int rounds = 5;
  int threads = 0;  // OpenMP threads; 0: OpenMP's default
  std::vector<std::string> backends = {"local", "gloo"};
};

/// Plain model against DDP at world size 1 on each backend, in one process: every
/// variant has its own model (same initial values); variants take turns in rounds of
/// steps/rounds steps, so drift in the machine's load falls on all of them alike.
int run_overhead(const Common& c, const OverheadConfig& o) {
  set_omp_threads(o.threads);
  const Device device = c.device == "cuda" ? Device::cuda(0) : Device::cpu();
  struct Variant {
    std::string name;
    std::shared_ptr<nn::Module> model;
    std::shared_ptr<comm::DistributedDataParallel> ddp;
    std::shared_ptr<nn::Module> trained;
    std::unique_ptr<optim::Optimizer> optimizer;
    StepTimes times;
  };
  std::vector<Variant> variants;
  variants.push_back({"plain", make_model(c.model, c.seed, device), nullptr, nullptr, nullptr, {}});
  for (const std::string& backend : o.backends) {
    std::shared_ptr<comm::ProcessGroup> group;
    if (backend == "local") {
      group = comm::make_local_group(1)[0];
    } else {
      comm::InitOptions init;
      init.backend = backend;
      group = comm::init(init);
    }
    Variant v{"ddp-" + backend, make_model(c.model, c.seed, device), nullptr, nullptr, nullptr, {}};
    v.ddp = std::make_shared<comm::DistributedDataParallel>(v.model, group);
    variants.push_back(std::move(v));
  }
  for (Variant& v : variants) {
    v.trained = v.ddp ? std::static_pointer_cast<nn::Module>(v.ddp) : v.model;
    v.optimizer = make_optimizer(*v.trained);
  }
  const Batches data = make_batches(c.model, o.batch, c.seed, device);
  for (Variant& v : variants) train_steps(*v.trained, *v.optimizer, data, 0, c.warmup, device, v.ddp.get(), nullptr);
  const int64_t per_round = std::max<int64_t>(1, c.steps / o.rounds);
  for (int r = 0; r < o.rounds; ++r)
    for (Variant& v : variants)
      v.times.append(train_steps(*v.trained, *v.optimizer, data, per_round, 0, device, v.ddp.get(), nullptr));

  const double plain = median(variants[0].times.step);
  json doc = {{"benchmark", "overhead"}, {"machine", machine_info(c)}, {"batch", o.batch},
              {"steps_per_variant", per_round * o.rounds}, {"rounds", o.rounds}, {"warmup", c.warmup},
              {"omp_threads", omp_threads()}, {"rows", json::array()}};
  const std::vector<std::string> columns = {"variant", "median_step_ms", "min_step_ms", "samples_per_s",
                                            "overhead_pct", "exposed_comm_ms", "buckets"};
  std::vector<std::vector<std::string>> rows;
  for (const Variant& v : variants) {
    const double step = median(v.times.step);
    const double minimum = *std::min_element(v.times.step.begin(), v.times.step.end());
    const double overhead = 100.0 * (step / plain - 1.0);
    const double sps = static_cast<double>(o.batch * v.times.steps) / v.times.wall_s;
    doc["rows"].push_back({{"variant", v.name}, {"median_step_ms", step * 1e3}, {"min_step_ms", minimum * 1e3},
                           {"samples_per_s", sps}, {"overhead_pct", overhead},
                           {"exposed_comm_ms", median(v.times.exposed) * 1e3}, {"buckets", v.times.buckets}});
    rows.push_back({v.name, fmt(step * 1e3, 3), fmt(minimum * 1e3, 3), fmt(sps, 0), fmt(overhead, 2),
                    fmt(median(v.times.exposed) * 1e3, 3), std::to_string(v.times.buckets)});
  }
  std::printf("DDP overhead at world size 1: model %s, batch %lld, %lld steps per variant in %d interleaved rounds, "
              "%d OpenMP threads, %u cores\n",
              c.model.c_str(), static_cast<long long>(o.batch), static_cast<long long>(per_round * o.rounds), o.rounds,
              omp_threads(), cores());
  print_table(columns, rows);
  write_outputs(c, doc, columns, rows);
  return 0;
}

// ---- strategies -----------------------------------------------------------------------

struct StrategiesConfig {
  int64_t global_batch = 64;
  int devices = 2;
  int repeats = 1;
  int threads = 0;  // per process for single; per replica (dp) or rank (ddp); 0: cores / N
  std::string backend = "auto";
};

/// "auto": gloo for CPU ranks, nccl for GPU ranks.
std::string pick_backend(const std::string& backend, const std::string& device) {
  if (backend != "auto") return backend;
  return device == "cuda" ? "nccl" : "gloo";
}

json run_local_ranks(const WorkerConfig& w, int n, int threads);

/// A DDP rank's settings from the parent's options: `backend`, `batch` samples per rank.
WorkerConfig rank_worker(const Common& c, const std::string& backend, int64_t batch) {
  WorkerConfig w;
  w.model = c.model;
  w.device = c.device;
  w.backend = backend;
  w.batch = batch;
  w.steps = c.steps;
  w.warmup = c.warmup;
  w.precision = c.precision;
  w.seed = c.seed;
  return w;
}

int run_strategies(const Common& c, const StrategiesConfig& s) {
  if (s.global_batch % s.devices != 0)
    throw std::invalid_argument(std::string("[") + kProgram + "] --global-batch must divide by --devices, got " +
                                std::to_string(s.global_batch) + " and " + std::to_string(s.devices));
  const int per = s.threads > 0 ? s.threads : std::max(1, static_cast<int>(cores()) / s.devices);
  const int single_threads = s.threads > 0 ? s.threads * s.devices : static_cast<int>(cores());
  std::vector<std::string> names = {"single", "dp", "ddp"};
  std::vector<std::vector<json>> runs(names.size());
  for (int r = 0; r < s.repeats; ++r) {
    runs[0].push_back(spawn_workers(1, single_threads, worker_args(c, "single", s.global_batch), c.timeout_s)["single"]);
    auto dp_args = worker_args(c, "dp", s.global_batch);
    dp_args.insert(dp_args.end(), {"--dp-devices", std::to_string(s.devices)});
    runs[1].push_back(spawn_workers(1, per, dp_args, c.timeout_s)["dp"]);
    if (pick_backend(s.backend, c.device) == "local") {
      runs[2].push_back(run_local_ranks(rank_worker(c, "local", s.global_batch / s.devices), s.devices, per)["overlap"]);
    } else {
      auto ddp_args = worker_args(c, "ddp", s.global_batch / s.devices);
      ddp_args.insert(ddp_args.end(), {"--backend", pick_backend(s.backend, c.device)});
      runs[2].push_back(spawn_workers(s.devices, per, ddp_args, c.timeout_s)["overlap"]);
    }
  }
  // The run with the median throughput stands for each strategy.
  json doc = {{"benchmark", "strategies"}, {"machine", machine_info(c)}, {"global_batch", s.global_batch},
              {"devices", s.devices}, {"steps", c.steps}, {"warmup", c.warmup}, {"repeats", s.repeats},
              {"threads_single", single_threads}, {"threads_per_replica_or_rank", per},
              {"backend", pick_backend(s.backend, c.device)},
              {"rows", json::array()}};
  const std::vector<std::string> columns = {"strategy", "processes", "batch_per_process", "samples_per_s",
                                            "vs_single", "sps_median_step", "step_ms", "forward_ms", "backward_ms", "exposed_comm_ms",
                                            "optimizer_ms"};
  std::vector<std::vector<std::string>> rows;
  double single_sps = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    std::vector<json> sorted = runs[i];
    std::sort(sorted.begin(), sorted.end(),
              [](const json& a, const json& b) { return a["samples_per_s"].get<double>() < b["samples_per_s"].get<double>(); });
    json row = sorted[sorted.size() / 2];
    const double sps = row["samples_per_s"];
    if (i == 0) single_sps = sps;
    row["strategy"] = names[i];
    row["vs_single"] = sps / single_sps;
    const int processes = names[i] == "ddp" ? s.devices : 1;
    const int64_t batch = names[i] == "ddp" ? s.global_batch / s.devices : s.global_batch;
    row["processes"] = processes;
    row["batch_per_process"] = batch;
    std::vector<double> all;
    for (const json& j : runs[i]) all.push_back(j["samples_per_s"]);
    row["samples_per_s_all"] = all;
    doc["rows"].push_back(row);
    rows.push_back({names[i] + (names[i] == "single" ? "" : " x" + std::to_string(s.devices)),
                    std::to_string(processes), std::to_string(batch), fmt(sps, 0), fmt(sps / single_sps, 2),
                    fmt(row["samples_per_s_median_step"], 0), fmt(row["step_ms"], 2), fmt(row["forward_ms"], 2), fmt(row["backward_ms"], 2),
                    fmt(row["exposed_comm_ms"], 2), fmt(row["optimizer_ms"], 2)});
  }
  std::printf("Strategies: model %s, global batch %lld, N = %d %s devices, %lld steps after %lld warm-up, "
              "OpenMP threads: single %d, per DP replica / DDP rank %d, %u cores\n",
              c.model.c_str(), static_cast<long long>(s.global_batch), s.devices, c.device.c_str(),
              static_cast<long long>(c.steps), static_cast<long long>(c.warmup), single_threads, per, cores());
  print_table(columns, rows);
  const json& dp = doc["rows"][1];
  if (dp.contains("dp_replicate_ms"))
    std::printf("DP forward phases (ms/step): scatter %.3f, replicate %.3f, apply %.3f, gather %.3f\n",
                dp["dp_scatter_ms"].get<double>(), dp["dp_replicate_ms"].get<double>(),
                dp["dp_apply_ms"].get<double>(), dp["dp_gather_ms"].get<double>());
  write_outputs(c, doc, columns, rows);
  return 0;
}

// ---- scaling --------------------------------------------------------------------------

struct ScalingConfig {
  std::string strategy = "ddp";
  std::vector<int> ranks = {1, 2, 4};
  int64_t batch_per_rank = 32;
  std::string backend = "auto";
  double bucket_cap_mb = comm::DDPOptions{}.bucket_cap_mb;
  double first_bucket_cap_mb = comm::DDPOptions{}.first_bucket_cap_mb;
  std::string overlap = "both";  // on, off, both
  int threads_per_rank = 1;
  int repeats = 1;                       // runs per rank count, interleaved; the median stands
  std::vector<std::string> model_links;  // presets to model (no runs at the modelled rank counts)
  double busbw_gbps = 0;                 // a custom link to model when > 0
  double alpha_us = 0;
  double compute_ms = 0;                 // > 0: rescale the measured compute to this step time
  double emulate_step_ms = 0;            // > 0: ranks run an emulated device (emulated_device.h)
  bool bucket_sweep = false;
  std::vector<int> sweep_model_ranks = {8};
  std::string png_path;
};

/// DDP over local-backend threads in this process: rank r on its own thread (and on
/// cuda:r % count with --device cuda). Models are made first, one after another, since
/// the default generator is shared.
json run_local_ranks(const WorkerConfig& w, int n, int threads) {
  auto groups = comm::make_local_group(n);
  std::vector<Device> devices;
  std::vector<std::vector<std::shared_ptr<nn::Module>>> models(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    devices.push_back(w.device == "cuda" ? cuda_device(r) : Device::cpu());
    for (size_t v = 0; v < w.variants.size(); ++v) models[static_cast<size_t>(r)].push_back(make_rank_model(w, devices.back()));
  }
  json result;
  std::mutex mutex;
  std::string error;
  std::vector<std::thread> threads_;
  for (int r = 0; r < n; ++r) {
    threads_.emplace_back([&, r] {
      try {
        set_omp_threads(threads);
        if (devices[static_cast<size_t>(r)].is_cuda()) cuda::set_device(devices[static_cast<size_t>(r)].index);
        json j = run_ddp_rank(w, groups[static_cast<size_t>(r)], devices[static_cast<size_t>(r)], models[static_cast<size_t>(r)]);
        if (r == 0) result = j;
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mutex);
        if (error.empty()) error = "rank " + std::to_string(r) + ": " + e.what();
      }
    });
  }
  for (std::thread& t : threads_) t.join();
  if (!error.empty()) throw std::runtime_error(error);
  result["omp_threads"] = threads;
  return result;
}

/// The links to model: the named presets, then the custom one.
std::vector<LinkPreset> modelled_links(const ScalingConfig& s) {
  std::vector<LinkPreset> links;
  for (const std::string& name : s.model_links) links.push_back(find_link_preset(name));
  if (s.busbw_gbps > 0) links.push_back({"custom", s.busbw_gbps, s.alpha_us, "--busbw / --alpha-us"});
  return links;
}

/// DDP over `n` ranks (worker processes, or threads with the local backend); rank 0's result.
json run_ddp_ranks(const Common& c, const ScalingConfig& s, const WorkerConfig& w, int n) {
  if (s.backend == "local") return run_local_ranks(w, n, s.threads_per_rank);
  std::vector<std::string> args = worker_args(c, "ddp", s.batch_per_rank);
  std::string joined;
  for (const std::string& v : w.variants) joined += (joined.empty() ? "" : ",") + v;
  args.insert(args.end(), {"--backend", s.backend, "--bucket-cap-mb", std::to_string(s.bucket_cap_mb),
                           "--first-bucket-cap-mb", std::to_string(s.first_bucket_cap_mb), "--variants", joined});
  if (w.measure_link) args.push_back("--measure-link");
  if (w.emulate_step_ms > 0) args.insert(args.end(), {"--emulate-step-ms", std::to_string(w.emulate_step_ms)});
  return spawn_workers(n, s.threads_per_rank, args, c.timeout_s);
}

/// The worker settings of a scaling run with these DDP variants.
WorkerConfig scaling_worker(const Common& c, const ScalingConfig& s, std::vector<std::string> variants) {
  WorkerConfig w = rank_worker(c, s.backend, s.batch_per_rank);
  w.bucket_cap_mb = s.bucket_cap_mb;
  w.first_bucket_cap_mb = s.first_bucket_cap_mb;
  w.variants = std::move(variants);
  w.emulate_step_ms = s.emulate_step_ms;
  return w;
}

/// The model's input from a measured row: compute medians and rank 0's bucket timeline.
IterationProfile profile_of(const json& row) {
  IterationProfile p;
  p.forward_s = row["forward_ms"].get<double>() / 1e3;
  p.backward_s = row["backward_compute_ms"].get<double>() / 1e3;
  p.optimizer_s = row["optimizer_ms"].get<double>() / 1e3;
  if (row.contains("backward_end_ms") && row["backward_end_ms"].get<double>() > 0)
    p.backward_end_s = std::min(row["backward_end_ms"].get<double>() / 1e3, p.backward_s);
  const std::vector<double> nbytes = row["bucket_nbytes"];
  const std::vector<double> ready = row["bucket_ready_ms"];
  for (size_t i = 0; i < nbytes.size() && i < ready.size(); ++i)
    p.buckets.push_back({nbytes[i], std::min(ready[i] / 1e3, p.backward_s)});
  return p;
}

/// The profile of a device whose step (forward + backward + optimizer) takes `step_ms`:
/// every compute time and ready time scaled by one factor (0: unchanged).
IterationProfile rescale(IterationProfile p, double step_ms) {
  const double total = p.forward_s + p.backward_s + p.optimizer_s;
  if (step_ms <= 0 || total <= 0) return p;
  const double f = step_ms / 1e3 / total;
  p.forward_s *= f;
  p.backward_s *= f;
  p.optimizer_s *= f;
  for (BucketReady& b : p.buckets) b.ready_s *= f;
  if (p.backward_end_s >= 0) p.backward_end_s *= f;
  return p;
}

/// Prediction error in percent: predicted / measured - 1.
double error_pct(double predicted, double measured) { return measured > 0 ? 100.0 * (predicted / measured - 1.0) : 0.0; }

/// One curve of the plot: speed-up and efficiency against rank count.
struct Series {
  std::string title;
  std::vector<double> ranks, speedup, efficiency;
  bool dashed = false;  // a model's prediction beside the measured curves
  int color = 0;        // gnuplot line type (its colour) when > 0; a model shares its measured curve's
};

/// Speed-up against ranks with the ideal line, and efficiency, side by side in a PNG
/// drawn by gnuplot from a temporary script (as scripts/plot-metrics calls it). Skips
/// with a message, without failing, when gnuplot is missing.
void plot_scaling(const std::string& png, const std::string& title, const std::vector<Series>& series) {
  if (png.empty() || series.empty()) return;
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::printf("gnuplot not found (Debian: gnuplot-nox): PNG %s skipped\n", png.c_str());
    return;
  }
  auto style = [](const Series& s) {
    std::string text = "with linespoints lw 2";
    if (s.color > 0) text += " lt " + std::to_string(s.color);
    if (s.dashed) text += " dashtype 3";
    return text;
  };
  double lo = 1e9, hi = 0;
  for (const Series& s : series)
    for (double r : s.ranks) lo = std::min(lo, r), hi = std::max(hi, r);
  const std::filesystem::path script = std::filesystem::temp_directory_path() /
      ("tandem-bench-plot-" + std::to_string(::getpid()) + "-" + std::to_string(spawned++) + ".gp");
  {
    std::ofstream out(script);
    for (size_t k = 0; k < series.size(); ++k) {
      out << "$s" << k << " << EOD\n";
      for (size_t i = 0; i < series[k].ranks.size(); ++i)
        out << series[k].ranks[i] << " " << series[k].speedup[i] << " " << series[k].efficiency[i] << "\n";
      out << "EOD\n";
    }
    out << "set terminal pngcairo size 1100,450 font ',10'\n"
        << "set output '" << png << "'\n"
        << "set multiplot layout 1,2 title \"" << title << "\" noenhanced\n"
        << "set grid\nset key left top noenhanced\nset xlabel 'ranks'\n";
    if (hi / std::max(lo, 1.0) > 8) {
      out << "set logscale x 2\nset logscale y 2\n";
    } else {
      out << "set xtics 1\n";
    }
    out << "set xrange [" << std::max(0.5, lo * 0.9) << ":" << hi * 1.1 << "]\n"
        << "set ylabel 'speed-up'\nplot x with lines dashtype 2 lc 'black' title 'ideal'";
    for (size_t k = 0; k < series.size(); ++k)
      out << ", $s" << k << " using 1:2 " << style(series[k]) << " title '" << series[k].title << "'";
    out << "\nunset logscale y\nset ylabel 'efficiency'\nset yrange [0:1.05]\nset key left bottom\nplot 1 with lines dashtype 2 lc 'black' title 'ideal'";
    for (size_t k = 0; k < series.size(); ++k)
      out << ", $s" << k << " using 1:3 " << style(series[k]) << " title '" << series[k].title << "'";
    out << "\nunset multiplot\n";
  }
  const int status = std::system(("gnuplot '" + script.string() + "'").c_str());
  std::filesystem::remove(script);
  if (status != 0)
    throw std::runtime_error(std::string("[") + kProgram + "] expected gnuplot to draw " + png + ", got exit status " +
                             std::to_string(status));
  std::printf("wrote %s\n", png.c_str());
}

/// Modelled scaling: one measured world-size-1 run, then predictions for every link at
/// every rank count (no processes at those counts).
int run_model_links(const Common& c, const ScalingConfig& s) {
  std::vector<std::string> variants;
  if (s.overlap != "off") variants.push_back("overlap");
  if (s.overlap != "on") variants.push_back("no-overlap");
  const json measured = run_ddp_ranks(c, s, scaling_worker(c, s, variants), 1);
  const std::vector<LinkPreset> links = modelled_links(s);
  json doc = {{"benchmark", "scaling-model"}, {"machine", machine_info(c)}, {"batch_per_rank", s.batch_per_rank},
              {"precision", c.precision}, {"compute_ms", s.compute_ms}, {"links", json::array()},
              {"profiles", json::object()}, {"rows", json::array()}};
  for (const LinkPreset& l : links)
    doc["links"].push_back({{"name", l.name}, {"busbw_gbps", l.busbw_gbps}, {"alpha_us", l.alpha_us}, {"source", l.source}});
  const std::vector<std::string> columns = {"link", "busbw_GBps", "alpha_us", "variant", "ranks", "step_ms",
                                            "samples_per_s", "speedup", "efficiency", "comm_ms", "exposed_ms", "hidden"};
  std::vector<std::vector<std::string>> rows;
  std::vector<Series> series;
  for (const std::string& variant : variants) {
    const IterationProfile p = rescale(profile_of(measured[variant]), s.compute_ms);
    json prof = {{"forward_ms", p.forward_s * 1e3}, {"backward_ms", p.backward_s * 1e3},
                 {"backward_end_ms", p.backward_end_s * 1e3},
                 {"optimizer_ms", p.optimizer_s * 1e3}, {"bucket_nbytes", json::array()}, {"bucket_ready_ms", json::array()}};
    for (const BucketReady& b : p.buckets) {
      prof["bucket_nbytes"].push_back(b.nbytes);
      prof["bucket_ready_ms"].push_back(b.ready_s * 1e3);
    }
    doc["profiles"][variant] = prof;
    for (const LinkPreset& l : links) {
      Series line{l.name + " " + variant, {}, {}, {}};
      for (int n : s.ranks) {
        const Prediction pr = predict_iteration(p, n, l.busbw_gbps, l.alpha_us);
        const double sps = static_cast<double>(s.batch_per_rank * n) / pr.step_s;
        doc["rows"].push_back({{"link", l.name}, {"variant", variant}, {"ranks", n}, {"step_ms", pr.step_s * 1e3},
                               {"samples_per_s", sps}, {"speedup", pr.speedup}, {"efficiency", pr.efficiency},
                               {"comm_ms", pr.comm_s * 1e3}, {"exposed_comm_ms", pr.exposed_s * 1e3},
                               {"hidden_fraction", pr.hidden_fraction}});
        rows.push_back({l.name, fmt(l.busbw_gbps, 1), fmt(l.alpha_us, 1), variant, std::to_string(n),
                        fmt(pr.step_s * 1e3, 3), fmt(sps, 0), fmt(pr.speedup, 2), fmt(pr.efficiency, 3),
                        fmt(pr.comm_s * 1e3, 3), fmt(pr.exposed_s * 1e3, 3), fmt(pr.hidden_fraction, 2)});
        line.ranks.push_back(n);
        line.speedup.push_back(pr.speedup);
        line.efficiency.push_back(pr.efficiency);
      }
      series.push_back(line);
    }
  }
  const json& prof = doc["profiles"][variants[0]];
  std::printf("Scaling model: %s, batch %lld per rank, %s; profile from one measured rank (%s): forward %.3f ms, "
              "backward %.3f ms, optimizer %.3f ms, %zu bucket(s)%s\n",
              c.model.c_str(), static_cast<long long>(s.batch_per_rank), c.precision.c_str(), c.device.c_str(),
              prof["forward_ms"].get<double>(), prof["backward_ms"].get<double>(), prof["optimizer_ms"].get<double>(),
              prof["bucket_nbytes"].size(), s.compute_ms > 0 ? " (compute rescaled by --compute-ms)" : "");
  for (const LinkPreset& l : links)
    std::printf("  %s: busbw %.1f GB/s, alpha %.1f us (%s)\n", l.name.c_str(), l.busbw_gbps, l.alpha_us, l.source.c_str());
  print_table(columns, rows);
  write_outputs(c, doc, columns, rows);
  plot_scaling(s.png_path,
               "tandem-bench scaling model: " + c.model + ", " + std::to_string(s.batch_per_rank) + "/rank (modelled, " +
                   (s.compute_ms > 0 ? "compute scaled to a " + fmt(s.compute_ms, 1) + " ms step" : "compute as measured on " + c.device) +
                   ")",
               series);
  return 0;
}

/// Bucket-size sweep: the same DDP training with every bucket capped at 1..100 MiB and
/// with one bucket, measured at the rank counts > 1 of --ranks (measured link beside)
/// and modelled on the --model-links (default nvlink4) at --sweep-model-ranks.
int run_bucket_sweep(const Common& c, ScalingConfig s) {
  const std::vector<double> caps = {1, 5, 10, 25, 50, 100};
  std::vector<std::string> variants;
  for (double cap : caps) variants.push_back("cap:" + fmt(cap, 0));
  variants.push_back("no-overlap");
  if (s.model_links.empty() && s.busbw_gbps <= 0) s.model_links = {"nvlink4"};
  const std::vector<LinkPreset> links = modelled_links(s);
  WorkerConfig w = scaling_worker(c, s, variants);
  const json single = run_ddp_ranks(c, s, w, 1);
  w.measure_link = true;
  std::vector<int> measured_ranks;
  std::vector<json> measured;
  for (int n : s.ranks)
    if (n > 1) {
      measured_ranks.push_back(n);
      measured.push_back(run_ddp_ranks(c, s, w, n));
    }
  json doc = {{"benchmark", "bucket-sweep"}, {"machine", machine_info(c)}, {"batch_per_rank", s.batch_per_rank},
              {"precision", c.precision}, {"compute_ms", s.compute_ms}, {"emulate_step_ms", s.emulate_step_ms},
              {"rows", json::array()}};
  std::vector<std::string> columns = {"bucket_cap_mb", "buckets", "1rank_step_ms"};
  for (int n : measured_ranks)
    for (const char* k : {"step_ms", "exposed_ms", "model_ms", "err_pct", "model_same_n_ms", "err_pct"})
      columns.push_back(std::to_string(n) + "r_" + k);
  for (const LinkPreset& l : links)
    for (int n : s.sweep_model_ranks)
      for (const char* k : {"step_ms", "exposed_ms", "eff"}) columns.push_back(l.name + "_" + std::to_string(n) + "_" + k);
  std::vector<std::vector<std::string>> rows;
  for (const std::string& v : variants) {
    const json& one = single[v];
    const IterationProfile p1 = profile_of(one);
    const std::string cap = v == "no-overlap" ? "one bucket" : v.substr(4);
    json row = {{"variant", v}, {"bucket_cap_mb", cap}, {"buckets", one["buckets"]}, {"bucket_sizes_mb", one["bucket_sizes_mb"]},
                {"step_ms_1rank", one["step_ms"]}, {"measured", json::array()}, {"modelled", json::array()}};
    std::vector<std::string> cells = {cap, std::to_string(one["buckets"].get<int>()), fmt(one["step_ms"], 2)};
    for (size_t i = 0; i < measured_ranks.size(); ++i) {
      const json& m = measured[i][v];
      const json& link = measured[i]["link"];
      // As in the rank sweep: from the 1-rank profile, and from this run's own compute.
      const Prediction pr = predict_iteration(p1, measured_ranks[i], link["busbw_gbps"], link["alpha_us"]);
      const Prediction same = predict_iteration(profile_of(m), measured_ranks[i], link["busbw_gbps"], link["alpha_us"]);
      const double err = error_pct(pr.step_s * 1e3, m["step_ms"]);
      const double err_same = error_pct(same.step_s * 1e3, m["step_ms"]);
      row["measured"].push_back({{"ranks", measured_ranks[i]}, {"step_ms", m["step_ms"]},
                                 {"exposed_comm_ms", m["exposed_comm_ms"]}, {"hidden_fraction", m["hidden_fraction"]},
                                 {"model_step_ms", pr.step_s * 1e3}, {"error_pct", err},
                                 {"model_same_n_step_ms", same.step_s * 1e3}, {"error_same_n_pct", err_same},
                                 {"model_same_n_exposed_ms", same.exposed_s * 1e3}, {"link", link}});
      for (const std::string& x : {fmt(m["step_ms"], 2), fmt(m["exposed_comm_ms"], 2), fmt(pr.step_s * 1e3, 2), fmt(err, 1),
                                   fmt(same.step_s * 1e3, 2), fmt(err_same, 1)})
        cells.push_back(x);
    }
    const IterationProfile scaled = rescale(p1, s.compute_ms);
    for (const LinkPreset& l : links)
      for (int n : s.sweep_model_ranks) {
        const Prediction pr = predict_iteration(scaled, n, l.busbw_gbps, l.alpha_us);
        row["modelled"].push_back({{"link", l.name}, {"ranks", n}, {"step_ms", pr.step_s * 1e3},
                                   {"exposed_comm_ms", pr.exposed_s * 1e3}, {"efficiency", pr.efficiency},
                                   {"hidden_fraction", pr.hidden_fraction}});
        for (const std::string& x : {fmt(pr.step_s * 1e3, 3), fmt(pr.exposed_s * 1e3, 3), fmt(pr.efficiency, 3)})
          cells.push_back(x);
      }
    doc["rows"].push_back(row);
    rows.push_back(cells);
  }
  std::printf("Bucket-size sweep: %s, DDP over %s, batch %lld per rank, %s, %lld steps after %lld warm-up, %d "
              "thread(s) per rank, %u cores; model columns: world-size-1 profile of the same cap%s\n",
              c.model.c_str(), s.backend.c_str(), static_cast<long long>(s.batch_per_rank), c.precision.c_str(),
              static_cast<long long>(c.steps), static_cast<long long>(c.warmup), s.threads_per_rank, cores(),
              s.compute_ms > 0 ? ", link columns rescaled by --compute-ms" : "");
  if (s.emulate_step_ms > 0)
    std::printf("  emulated device: compute replaced by waits of %.1f ms per step\n", s.emulate_step_ms);
  for (size_t i = 0; i < measured_ranks.size(); ++i)
    std::printf("  %s at %d ranks (measured): alpha %.1f us, busbw %.3f GB/s\n", s.backend.c_str(), measured_ranks[i],
                measured[i]["link"]["alpha_us"].get<double>(), measured[i]["link"]["busbw_gbps"].get<double>());
  print_table(columns, rows);
  write_outputs(c, doc, columns, rows);
  return 0;
}

/// DataParallel over n x the device (one process, n replica threads), global batch n·B.
json run_dp(const Common& c, const ScalingConfig& s, int n) {
  auto args = worker_args(c, "dp", s.batch_per_rank * n);
  args.insert(args.end(), {"--dp-devices", std::to_string(n)});
  return spawn_workers(1, s.threads_per_rank, args, c.timeout_s);
}

/// The scaling subcommand: a bucket sweep, modelled links, or measured rank counts (DDP
/// or DP) with the model's predictions beside each measurement.
int run_scaling(const Common& c, ScalingConfig s) {
  s.backend = pick_backend(s.backend, c.device);
  if (s.emulate_step_ms > 0 && (s.strategy != "ddp" || c.precision != "fp32"))
    throw std::invalid_argument(std::string("[") + kProgram + "] --emulate-step-ms expects --strategy ddp and --precision "
                                "fp32 (the emulated device has no replicas and no dtypes), got --strategy " +
                                s.strategy + " --precision " + c.precision);
  if (s.bucket_sweep) return run_bucket_sweep(c, s);
  if (!s.model_links.empty() || s.busbw_gbps > 0) return run_model_links(c, s);
  const bool dp = s.strategy == "dp";
  std::vector<std::string> variants;
  if (dp) {
    variants.push_back("dp");
  } else {
    if (s.overlap != "off") variants.push_back("overlap");
    if (s.overlap != "on") variants.push_back("no-overlap");
  }
  WorkerConfig w = scaling_worker(c, s, dp ? std::vector<std::string>{"overlap"} : variants);
  w.measure_link = true;

  // Each rank count runs `repeats` times, the counts taking turns so drift in the
  // machine's load falls on all of them; the run with the median samples/s (of the
  // first variant) stands for its count.
  std::vector<std::vector<json>> runs(s.ranks.size());
  for (int r = 0; r < s.repeats; ++r)
    for (size_t i = 0; i < s.ranks.size(); ++i)
      runs[i].push_back(dp ? run_dp(c, s, s.ranks[i]) : run_ddp_ranks(c, s, w, s.ranks[i]));
  std::vector<json> results;
  for (std::vector<json>& v : runs) {
    std::sort(v.begin(), v.end(), [&](const json& a, const json& b) {
      return a[variants[0]]["samples_per_s"].get<double>() < b[variants[0]]["samples_per_s"].get<double>();
    });
    results.push_back(v[v.size() / 2]);
  }
  // The model's world-size-1 profile: the 1-rank run when --ranks has one.
  std::optional<json> single;
  for (size_t i = 0; i < s.ranks.size(); ++i)
    if (s.ranks[i] == 1 && !dp) single = results[i];

  json doc = {{"benchmark", "scaling"}, {"machine", machine_info(c)}, {"strategy", s.strategy},
              {"backend", dp ? "none (one process)" : s.backend}, {"batch_per_rank", s.batch_per_rank},
              {"precision", c.precision}, {"steps", c.steps},
              {"warmup", c.warmup}, {"bucket_cap_mb", s.bucket_cap_mb},
              {"first_bucket_cap_mb", s.first_bucket_cap_mb}, {"threads_per_rank", s.threads_per_rank},
              {"emulate_step_ms", s.emulate_step_ms},
              {"repeats", s.repeats}, {"rows", json::array()}};
  std::vector<std::string> columns = {"ranks", "variant", "samples_per_s", "speedup", "efficiency", "step_ms",
                                      "forward_ms", "backward_compute_ms", "exposed_comm_ms", "optimizer_ms"};
  if (dp) {
    for (const char* k : {"scatter_ms", "replicate_ms", "apply_ms", "gather_ms"}) columns.push_back(k);
  } else {
    for (const char* k : {"hidden", "buckets", "link_alpha_us", "link_busbw_GBps", "model_1r_ms", "err_pct",
                          "model_same_n_ms", "err_pct"})
      columns.push_back(k);
  }
  std::vector<std::vector<std::string>> rows;
  std::vector<Series> series;
  for (const std::string& variant : variants) {
    // Speed-up against the first rank count of the same variant; ideal is n / n0.
    const double base = results[0][variant]["samples_per_s"];
    const int n0 = s.ranks[0];
    const int color = static_cast<int>(&variant - variants.data()) + 1;  // one colour per variant
    Series line{variant == "dp" ? "DataParallel" : "DDP " + variant, {}, {}, {}, false, color};
    // The model's curve from the 1-rank profile, anchored at the measured first count.
    Series modelled{"model " + variant + " (from 1 rank)", {static_cast<double>(n0)}, {static_cast<double>(n0)}, {1.0},
                    true, color};
    for (size_t i = 0; i < s.ranks.size(); ++i) {
      json row = results[i][variant];
      const int n = s.ranks[i];
      const double sps = row["samples_per_s"];
      const double speedup = sps / base;
      const double efficiency = speedup / (static_cast<double>(n) / n0);
      row["ranks"] = n;
      row["variant"] = variant;
      row["speedup"] = speedup;
      row["efficiency"] = efficiency;
      row["omp_threads"] = results[i]["omp_threads"];
      row["oversubscribed"] = static_cast<unsigned>(n * std::max(1, s.threads_per_rank)) > cores();
      std::vector<std::string> cells = {std::to_string(n), variant, fmt(sps, 0), fmt(speedup, 2), fmt(efficiency, 2),
                                        fmt(row["step_ms"], 2), fmt(row["forward_ms"], 2),
                                        fmt(row["backward_compute_ms"], 2), fmt(row["exposed_comm_ms"], 2),
                                        fmt(row["optimizer_ms"], 2)};
      if (dp) {
        for (const char* k : {"dp_scatter_ms", "dp_replicate_ms", "dp_apply_ms", "dp_gather_ms"})
          cells.push_back(fmt(row.value(k, 0.0), 3));
      } else {
        cells.push_back(fmt(row["hidden_fraction"], 2));
        cells.push_back(std::to_string(row["buckets"].get<int>()));
        if (n > 1 && results[i].contains("link")) {
          // Predictions with this machine's gloo figures at n ranks: from the 1-rank
          // profile (compute as measured alone), and from this run's own compute.
          const json& link = results[i]["link"];
          row["link"] = link;
          cells.push_back(fmt(link["alpha_us"], 1));
          cells.push_back(fmt(link["busbw_gbps"], 3));
          for (int k = 0; k < 2; ++k) {
            if (k == 0 && !single) {
              cells.insert(cells.end(), {"-", "-"});
              continue;
            }
            const IterationProfile p = profile_of(k == 0 ? (*single)[variant] : row);
            const Prediction pr = predict_iteration(p, n, link["busbw_gbps"], link["alpha_us"]);
            const double err = error_pct(pr.step_s * 1e3, row["step_ms"]);
            row[k == 0 ? "model_1rank" : "model_same_n"] = {{"step_ms", pr.step_s * 1e3}, {"error_pct", err},
                                                             {"exposed_comm_ms", pr.exposed_s * 1e3},
                                                             {"hidden_fraction", pr.hidden_fraction}};
            if (k == 0) {
              // The measured speed-up (wall-clock samples/s) moved by the prediction's
              // error on the median step, so the gap between the curves is the err column.
              const double model_speedup = speedup * row["step_ms"].get<double>() / (pr.step_s * 1e3);
              modelled.ranks.push_back(n);
              modelled.speedup.push_back(model_speedup * n0);
              modelled.efficiency.push_back(model_speedup / (static_cast<double>(n) / n0));
            }
            cells.push_back(fmt(pr.step_s * 1e3, 2));
            cells.push_back(fmt(err, 1));
          }
        } else {
          cells.insert(cells.end(), {"-", "-", "-", "-", "-", "-"});
        }
      }
      doc["rows"].push_back(row);
      rows.push_back(cells);
      line.ranks.push_back(n);
      line.speedup.push_back(speedup * n0);
      line.efficiency.push_back(efficiency);
    }
    series.push_back(line);
    if (modelled.ranks.size() > 1) series.push_back(modelled);
  }
  std::printf("Scaling: %s over %s, model %s, batch %lld per rank, %s, %lld steps after %lld warm-up, median of %d "
              "run(s), %d OpenMP thread(s) per rank, %u cores%s\n",
              dp ? "DataParallel (one process, a replica thread per rank)" : "DDP", dp ? "one process" : s.backend.c_str(),
              c.model.c_str(), static_cast<long long>(s.batch_per_rank), c.precision.c_str(),
              static_cast<long long>(c.steps), static_cast<long long>(c.warmup), s.repeats, s.threads_per_rank, cores(),
              c.device == "cuda" ? " (CUDA)" : "");
  if (s.emulate_step_ms > 0)
    std::printf("emulated device: %s's parameters and buckets, compute replaced by waits of %.1f ms per step "
                "(forward 30%%, backward 60%%, optimizer 10%%)\n",
                c.model.c_str(), s.emulate_step_ms);
  if (!dp)
    std::printf("model columns: step predicted with the link's alpha/busbw measured at n ranks, from the 1-rank "
                "profile (model_1r) and from the n-rank run's own compute (model_same_n); err = predicted / measured - 1\n");
  print_table(columns, rows);
  write_outputs(c, doc, columns, rows);
  plot_scaling(s.png_path, "tandem-bench scaling: " + c.model + ", " + std::to_string(s.batch_per_rank) + "/rank, " +
                               (dp ? "DataParallel" : "DDP over " + s.backend) + " (measured, " + c.device +
                               (s.emulate_step_ms > 0 ? ", emulated device of a " + fmt(s.emulate_step_ms, 0) + " ms step" : "") +
                               ")",
               series);
  return 0;
}

/// Options every parent subcommand takes.
void add_common(CLI::App* sub, Common& c, const std::string& name) {
  sub->add_option("--model", c.model,
                  "mlp, cnn (1x28x28), resnet18 (3x32x32), gpt-mini or gpt2 (token sequences); random data")
      ->capture_default_str()
      ->check(CLI::IsMember(std::vector<std::string>(std::begin(bench::kBenchModels), std::end(bench::kBenchModels))));
  sub->add_option("--device", c.device, "cpu or cuda (every GPU, round robin)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sub->add_option("--steps", c.steps, "timed steps")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--warmup", c.warmup, "untimed steps first")->capture_default_str()->check(CLI::NonNegativeNumber);
  sub->add_option("--seed", c.seed, "seed of the models and data")->capture_default_str();
  sub->add_option("--precision", c.precision, "fp32, bf16 (autocast) or fp16 (autocast and GradScaler)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  c.json_path = "tandem-bench-" + name + ".json";
  c.csv_path = "tandem-bench-" + name + ".csv";
  sub->add_option("--json", c.json_path, "JSON output file ('' for none)")->capture_default_str();
  sub->add_option("--csv", c.csv_path, "CSV output file ('' for none)")->capture_default_str();
  sub->add_option("--timeout", c.timeout_s, "seconds before worker processes are stopped")->capture_default_str();
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  using namespace tandem::bench;
  CLI::App app{"Training throughput of single-process, DataParallel and DistributedDataParallel training."};
  app.require_subcommand(1);

  Common overhead_common, strategies_common, scaling_common;
  OverheadConfig overhead;
  StrategiesConfig strategies;
  ScalingConfig scaling;
  WorkerConfig worker;

  CLI::App* o = app.add_subcommand("overhead", "plain model against DDP at world size 1 (local and gloo backends)");
  overhead_common.steps = 200;
  add_common(o, overhead_common, "overhead");
  o->add_option("--batch", overhead.batch, "samples per step")->capture_default_str()->check(CLI::PositiveNumber);
  o->add_option("--rounds", overhead.rounds, "interleaved rounds (steps are split between them)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  o->add_option("--threads", overhead.threads, "OpenMP threads (0: OpenMP's default)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  o->add_option("--backends", overhead.backends, "DDP backends at world size 1")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::IsMember({"local", "gloo", "nccl"}));

  CLI::App* st = app.add_subcommand("strategies", "single process, DataParallel and DDP on one global batch");
  add_common(st, strategies_common, "strategies");
  st->add_option("--global-batch", strategies.global_batch, "samples per step over all devices")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  st->add_option("--devices", strategies.devices, "N: DP replicas and DDP ranks")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  st->add_option("--repeats", strategies.repeats, "runs of each strategy, interleaved; the median is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  st->add_option("--threads", strategies.threads,
                 "OpenMP threads per DP replica / DDP rank (single gets N times as many); 0: cores / N")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  st->add_option("--backend", strategies.backend,
                 "DDP backend: auto (gloo on cpu, nccl on cuda) or gloo/nccl (a process per rank), or local (a "
                 "thread per rank in this process: the way to run N ranks on one GPU, which NCCL refuses)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "gloo", "nccl", "local"}));

  CLI::App* sc = app.add_subcommand("scaling", "DDP over several rank counts: samples/s, speed-up, efficiency");
  add_common(sc, scaling_common, "scaling");
  sc->add_option("--strategy", scaling.strategy,
                 "ddp (a process or thread per rank) or dp (DataParallel: one process, a replica per rank)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ddp", "dp"}));
  sc->add_option("--ranks", scaling.ranks, "rank counts")->delimiter(',')->capture_default_str()->check(CLI::PositiveNumber);
  sc->add_option("--batch-per-rank", scaling.batch_per_rank, "samples per rank per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sc->add_option("--backend", scaling.backend,
                 "gloo or nccl (processes), local (threads); auto: gloo on cpu, nccl on cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "gloo", "nccl", "local"}));
  sc->add_option("--bucket-cap-mb", scaling.bucket_cap_mb, "DDP bucket cap (overlap variant)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sc->add_option("--first-bucket-cap-mb", scaling.first_bucket_cap_mb, "DDP first bucket cap (overlap variant)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sc->add_option("--overlap", scaling.overlap, "on (default buckets), off (one bucket) or both")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off", "both"}));
  sc->add_option("--threads-per-rank", scaling.threads_per_rank, "OpenMP threads per rank (0: OpenMP's default)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);

  sc->add_option("--model-links", scaling.model_links,
                 "model these links (nvlink4, pcie5, ib200) at --ranks from one measured rank; no runs at those counts")
      ->delimiter(',')
      ->check(CLI::IsMember({"nvlink4", "pcie5", "ib200"}));
  sc->add_option("--busbw", scaling.busbw_gbps, "model a custom link of this all-reduce bus bandwidth (GB/s)")
      ->check(CLI::PositiveNumber);
  sc->add_option("--alpha-us", scaling.alpha_us, "latency of one all-reduce on the custom link (us)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sc->add_option("--compute-ms", scaling.compute_ms,
                 "modelled links: scale the measured compute so one step takes this long (a faster device)")
      ->check(CLI::NonNegativeNumber);
  sc->add_option("--emulate-step-ms", scaling.emulate_step_ms,
                 "DDP ranks run an emulated device instead of computing: the model's parameters and buckets, "
                 "forward/backward/optimizer waiting 30/60/10% of this many ms (a device per rank, whatever the cores)")
      ->check(CLI::PositiveNumber);
  sc->add_flag("--bucket-sweep", scaling.bucket_sweep,
               "iteration time against bucket_cap_mb 1..100 and one bucket: measured at --ranks > 1, modelled on "
               "--model-links (default nvlink4) at --sweep-model-ranks");
  sc->add_option("--sweep-model-ranks", scaling.sweep_model_ranks, "modelled rank counts of --bucket-sweep")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sc->add_option("--repeats", scaling.repeats, "runs per rank count, interleaved; the median is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  scaling.png_path = "tandem-bench-scaling.png";
  sc->add_option("--png", scaling.png_path, "plot of speed-up and efficiency ('' for none; needs gnuplot)")
      ->capture_default_str();

  // Hidden: one process of a strategies or scaling run (started by the parent).
  CLI::App* wk = app.add_subcommand("worker", "")->group("");
  wk->add_option("--role", worker.role)->check(CLI::IsMember({"single", "dp", "ddp"}));
  wk->add_option("--model", worker.model);
  wk->add_option("--device", worker.device);
  wk->add_option("--backend", worker.backend);
  wk->add_option("--batch", worker.batch);
  wk->add_option("--dp-devices", worker.dp_devices);
  wk->add_option("--steps", worker.steps);
  wk->add_option("--warmup", worker.warmup);
  wk->add_option("--seed", worker.seed);
  wk->add_option("--bucket-cap-mb", worker.bucket_cap_mb);
  wk->add_option("--first-bucket-cap-mb", worker.first_bucket_cap_mb);
  wk->add_option("--variants", worker.variants)->delimiter(',');
  wk->add_option("--precision", worker.precision);
  wk->add_flag("--measure-link", worker.measure_link);
  wk->add_option("--emulate-step-ms", worker.emulate_step_ms);
  wk->add_option("--result", worker.result)->required();

  CLI11_PARSE(app, argc, argv);
  command_line = "tandem-bench";
  for (int i = 1; i < argc; ++i) command_line += std::string(" ") + argv[i];
  try {
    if (*o) return run_overhead(overhead_common, overhead);
    if (*st) return run_strategies(strategies_common, strategies);
    if (*sc) return run_scaling(scaling_common, scaling);
    if (*wk) return run_worker(worker);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
