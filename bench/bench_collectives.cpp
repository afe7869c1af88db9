// bench_collectives: median time, algorithm bandwidth and bus bandwidth (nccl-tests
// factors) of all_reduce, all_gather, reduce_scatter and broadcast per message size on
// the local, gloo or nccl backend, and Gloo through Tandem against Gloo called directly.
//
//   bench_collectives --backend local --ranks 4
//   tandemrun --nproc-per-node 3 bench_collectives --backend gloo [--compare-direct]
//   tandemrun --nproc-per-node 8 bench_collectives --backend nccl --max-bytes 256Mi
//
// Sizes follow nccl-tests: the byte count is the whole buffer (all_reduce, broadcast),
// the gathered output (all_gather) or the scattered input (reduce_scatter); f32, sum.
// A plain program rather than Google Benchmark: the gloo and nccl modes run one
// process per rank, every rank must issue the same collectives in the same order, and
// only rank 0 reports.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/launch.h"
#include "comm/local.h"
#include "comm/process_group.h"
#include "engine/cuda/runtime.h"
#include "engine/ops/factory.h"
#include "engine/tensor.h"
#include "tandem/config.h"

#if TANDEM_GLOO
#include <gloo/allreduce.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>
#endif

namespace tandem::bench {
namespace {

using Clock = std::chrono::steady_clock;
using comm::ProcessGroup;
using comm::ReduceOp;
using comm::WorkPtr;

constexpr int64_t kMiB = int64_t{1} << 20;

struct Options {
  std::string backend = "local";
  int ranks = 2;             // local backend only; gloo/nccl take the launcher's world size
  std::string device = "cpu";  // local backend only; nccl always uses the rank's GPU
  int64_t min_bytes = 8;
  int64_t max_bytes = 64 * kMiB;
  std::vector<std::string> ops = {"all_reduce", "all_gather", "reduce_scatter", "broadcast"};
  int warmup = 2;
  int min_iters = 5;
  int max_iters = 200;
  double target_s = 0.25;  // measured time aimed for per (op, size), warm-up excluded
  bool sweep = true;
  bool compare_direct = false;
  int compare_pairs = 200;  // at 1 MiB; 64 MiB runs an eighth as many
  int timeout_s = 120;
  std::string json_path;
  std::string csv_path;
};

/// One measured (op, size) cell.
struct Row {
  std::string op;
  int64_t bytes = 0;
  int64_t elements = 0;  // f32 elements in `bytes`
  int iters = 0;
  double median_s = 0;
  double min_s = 0;
  double algbw_gbps = 0;
  double busbw_gbps = 0;
};

/// One size of the Gloo-through-Tandem vs Gloo-direct comparison.
struct DirectRow {
  int64_t bytes = 0;
  int iters = 0;  // pairs (one iteration per side each)
  double tandem_median_s = 0;
  double direct_median_s = 0;
  double tandem_min_s = 0;
  double direct_min_s = 0;
  double overhead_pct = 0;         // of the medians
  double paired_overhead_pct = 0;  // median over pairs of tandem / direct
  double min_overhead_pct = 0;  // of the minima
};

/// nccl-tests' bus-bandwidth factor: what each rank's busiest link carries relative
/// to the buffer size, so bus bandwidth compares across world sizes.
double bus_factor(const std::string& op, int n) {
  if (op == "all_reduce") return 2.0 * (n - 1) / n;
  if (op == "all_gather" || op == "reduce_scatter") return static_cast<double>(n - 1) / n;
  return 1.0;  // broadcast
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// Waits for a collective; on CUDA also for the device, so host timing covers it.
void finish(const WorkPtr& work, Device device) {
  work->wait();
  if (device.is_cuda()) cuda::synchronize(device.index);
}

/// Element-wise max of `values` over all ranks: a timed iteration lasts as long as
/// its slowest rank, and all ranks must agree on iteration counts.
std::vector<double> max_over_ranks(ProcessGroup& g, Device device, const std::vector<double>& values) {
  if (g.size() == 1) return values;
  Tensor t = Tensor::from_vector(values, {static_cast<int64_t>(values.size())}, device);
  finish(g.all_reduce(t, ReduceOp::kMax), device);
  Tensor host = t.cpu();
  const double* p = host.data<double>();
  return {p, p + values.size()};
}

/// 8 B, 32 B, ... (x4) up to max_bytes, plus max_bytes itself when not on the ladder.
std::vector<int64_t> sizes(const Options& o) {
  std::vector<int64_t> out;
  int64_t b = o.min_bytes;
  for (; b < o.max_bytes; b *= 4) out.push_back(b);
  out.push_back(o.max_bytes);
  return out;
}

/// The buffers of one (op, size) cell and the call that issues the collective.
struct Cell {
  int64_t elements = 0;
  std::vector<Tensor> keep;  // owns the buffers
  std::function<WorkPtr()> issue;
};

Cell make_cell(ProcessGroup& g, const std::string& op, int64_t bytes, Device device) {
  const int n = g.size();
  const TensorOptions f32{.dtype = DType::kF32, .device = device};
  Cell c;
  if (op == "all_reduce" || op == "broadcast") {
    c.elements = std::max<int64_t>(1, bytes / 4);
    Tensor t = zeros({c.elements}, f32);
    c.keep = {t};
    if (op == "all_reduce")
      c.issue = [&g, t] { return g.all_reduce(t, ReduceOp::kSum); };
    else
      c.issue = [&g, t] { return g.broadcast(t, 0); };
    return c;
  }
  // all_gather / reduce_scatter: `bytes` is the whole (gathered or scattered)
  // buffer, split in n per-rank parts; the parts are views of one flat tensor, the
  // layout a bucketed gradient has.
  const int64_t part = std::max<int64_t>(1, bytes / (4 * n));
  c.elements = part * n;
  Tensor flat = zeros({c.elements}, f32);
  Tensor mine = zeros({part}, f32);
  std::vector<Tensor> parts;
  for (int r = 0; r < n; ++r) parts.push_back(flat.narrow(0, r * part, part));
  c.keep = {flat, mine};
  if (op == "all_gather") {
    c.issue = [&g, parts, mine] { return g.all_gather(parts, mine); };
  } else if (op == "reduce_scatter") {
    c.issue = [&g, parts, mine] { return g.reduce_scatter(mine, parts, ReduceOp::kSum); };
  } else {
    throw std::invalid_argument("[bench_collectives] expected op all_reduce, all_gather, reduce_scatter or broadcast, got " + op);
  }
  return c;
}

/// Times `issue` on every rank: warm-up, an iteration count from the warm-up time
/// (agreed across ranks), then that many iterations, each after an untimed barrier
/// so every rank starts together. Returns per-iteration times, max over ranks.
std::vector<double> time_iterations(ProcessGroup& g, Device device, const Options& o,
                                    const std::function<WorkPtr()>& issue) {
  auto once = [&] {
    finish(g.barrier(), device);
    const auto t0 = Clock::now();
    finish(issue(), device);
    return seconds_since(t0);
  };
  double warm = 0;
  for (int i = 0; i < std::max(1, o.warmup); ++i) warm = once();
  warm = max_over_ranks(g, device, {warm})[0];
  const int iters = static_cast<int>(
      std::clamp<double>(std::ceil(o.target_s / std::max(warm, 1e-9)), o.min_iters, o.max_iters));
  std::vector<double> times(iters);
  for (auto& t : times) t = once();
  return max_over_ranks(g, device, times);
}

void print_header(const ProcessGroup& g, Device device) {
  std::printf("# backend %s, world size %d, device %s, f32, sum; time = median over iterations (max over ranks)\n",
              g.backend().c_str(), g.size(), device.str().c_str());
  std::printf("%-15s %12s %12s %6s %12s %12s %10s %10s\n", "op", "bytes", "elements", "iters", "median_us", "min_us",
              "algbw_GB/s", "busbw_GB/s");
  std::fflush(stdout);
}

void print_row(const Row& r) {
  std::printf("%-15s %12lld %12lld %6d %12.1f %12.1f %10.3f %10.3f\n", r.op.c_str(), static_cast<long long>(r.bytes),
              static_cast<long long>(r.elements), r.iters, r.median_s * 1e6, r.min_s * 1e6, r.algbw_gbps,
              r.busbw_gbps);
  std::fflush(stdout);
}

/// The sweep over ops and sizes for one rank; rank 0 prints as it goes and returns
/// the rows (other ranks return them too, with the same values).
std::vector<Row> sweep(ProcessGroup& g, Device device, const Options& o) {
  const bool report = g.rank() == 0;
  if (report) print_header(g, device);
  std::vector<Row> rows;
  for (const auto& op : o.ops) {
    for (int64_t bytes : sizes(o)) {
      Cell cell = make_cell(g, op, bytes, device);
      std::vector<double> times = time_iterations(g, device, o, cell.issue);
      Row r;
      r.op = op;
      r.elements = cell.elements;
      r.bytes = cell.elements * 4;
      r.iters = static_cast<int>(times.size());
      r.median_s = median(times);
      r.min_s = *std::min_element(times.begin(), times.end());
      r.algbw_gbps = static_cast<double>(r.bytes) / r.median_s / 1e9;
      r.busbw_gbps = r.algbw_gbps * bus_factor(op, g.size());
      if (report) print_row(r);
      rows.push_back(r);
    }
  }
  return rows;
}

#if TANDEM_GLOO
/// A temporary directory made by rank 0 and announced to the others through the
/// group (a broadcast of its path), for Gloo's FileStore.
std::string shared_temp_dir(ProcessGroup& g) {
  constexpr int64_t kMaxPath = 512;
  Tensor buf = zeros({kMaxPath}, {.dtype = DType::kU8});
  if (g.rank() == 0) {
    std::string templ = (std::filesystem::temp_directory_path() / "tandem-collbench-XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr)
      throw std::runtime_error("[bench_collectives] mkdtemp failed for " + templ);
    if (static_cast<int64_t>(templ.size()) >= kMaxPath)
      throw std::runtime_error("[bench_collectives] expected a temp path under 512 bytes, got " + templ);
    std::copy(templ.begin(), templ.end(), buf.data<uint8_t>());
  }
  finish(g.broadcast(buf, 0), Device::cpu());
  return reinterpret_cast<const char*>(buf.data<uint8_t>());
}

/// Gloo's own context over a FileStore and a TCP device on 127.0.0.1, the device the
/// gloo backend picks on one host; nothing of Tandem's in between.
std::shared_ptr<gloo::rendezvous::Context> direct_context(ProcessGroup& g, std::chrono::milliseconds timeout) {
  const std::string dir = shared_temp_dir(g);
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  auto context = std::make_shared<gloo::rendezvous::Context>(g.rank(), g.size());
  context->setTimeout(timeout);
  {
    gloo::rendezvous::FileStore store(dir);
    context->connectFullMesh(store, dev);
  }
  finish(g.barrier(), Device::cpu());  // everyone is done with the store's files
  if (g.rank() == 0) std::filesystem::remove_all(dir);
  return context;
}

/// All-reduce (sum, f32) at 1 MiB and 64 MiB through Tandem's gloo group and through
/// gloo::allreduce on a context of its own, on the same buffer, in alternating pairs.
std::vector<DirectRow> compare_direct(ProcessGroup& g, const Options& o) {
  auto context = direct_context(g, std::chrono::seconds(o.timeout_s));
  uint32_t tag = 1u << 20;  // Gloo tags only need to differ between concurrent ops
  const bool report = g.rank() == 0;
  if (report) {
    std::printf("\n# all_reduce (sum, f32): Gloo through Tandem vs gloo::allreduce called directly, world size %d\n",
                g.size());
    std::printf("# overhead_%%: of the medians; paired_%%: median over pairs of tandem/direct; min_%%: of the minima\n");
    std::printf("%12s %6s %14s %14s %11s %11s %13s %13s %10s\n", "bytes", "pairs", "tandem_med_us", "direct_med_us",
                "overhead_%", "paired_%", "tandem_min_us", "direct_min_us", "min_%");
    std::fflush(stdout);
  }
  std::vector<DirectRow> rows;
  for (int64_t bytes : {1 * kMiB, 64 * kMiB}) {
    const int64_t n = bytes / 4;
    Tensor t = zeros({n}, {.dtype = DType::kF32});
    float* data = t.data<float>();
    auto tandem_once = [&] {
      finish(g.barrier(), Device::cpu());
      const auto t0 = Clock::now();
      finish(g.all_reduce(t, ReduceOp::kSum), Device::cpu());
      return seconds_since(t0);
    };
    auto direct_once = [&] {
      finish(g.barrier(), Device::cpu());
      const auto t0 = Clock::now();
      gloo::AllreduceOptions opts(context);
      opts.setOutput(data, static_cast<size_t>(n));
      opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      opts.setTag(tag++);
      gloo::allreduce(opts);
      return seconds_since(t0);
    };
    for (int i = 0; i < std::max(1, o.warmup); ++i) {
      tandem_once();
      direct_once();
    }
    // One Tandem and one direct iteration per pair, the order alternating, so drift
    // in the machine's load falls on both sides alike; the paired ratios cancel it.
    const int pairs = bytes <= 4 * kMiB ? o.compare_pairs : std::max(3, (o.compare_pairs + 7) / 8);
    std::vector<double> tandem_times(pairs), direct_times(pairs);
    for (int i = 0; i < pairs; ++i) {
      if (i % 2 == 0) {
        tandem_times[i] = tandem_once();
        direct_times[i] = direct_once();
      } else {
        direct_times[i] = direct_once();
        tandem_times[i] = tandem_once();
      }
    }
    tandem_times = max_over_ranks(g, Device::cpu(), tandem_times);
    direct_times = max_over_ranks(g, Device::cpu(), direct_times);
    std::vector<double> ratios(pairs);
    for (int i = 0; i < pairs; ++i) ratios[i] = tandem_times[i] / direct_times[i];
    DirectRow r;
    r.bytes = bytes;
    r.iters = pairs;
    r.tandem_median_s = median(tandem_times);
    r.direct_median_s = median(direct_times);
    r.tandem_min_s = *std::min_element(tandem_times.begin(), tandem_times.end());
    r.direct_min_s = *std::min_element(direct_times.begin(), direct_times.end());
    r.overhead_pct = (r.tandem_median_s / r.direct_median_s - 1) * 100;
    r.paired_overhead_pct = (median(ratios) - 1) * 100;
    r.min_overhead_pct = (r.tandem_min_s / r.direct_min_s - 1) * 100;
    if (report) {
      std::printf("%12lld %6d %14.1f %14.1f %11.2f %11.2f %13.1f %13.1f %10.2f\n", static_cast<long long>(bytes),
                  r.iters, r.tandem_median_s * 1e6, r.direct_median_s * 1e6, r.overhead_pct, r.paired_overhead_pct,
                  r.tandem_min_s * 1e6, r.direct_min_s * 1e6, r.min_overhead_pct);
      std::fflush(stdout);
    }
    rows.push_back(r);
  }
  return rows;
}
#endif

/// What one rank measured.
struct Result {
  std::vector<Row> rows;
  std::vector<DirectRow> direct;
};

Result run_rank(ProcessGroup& g, Device device, const Options& o) {
  Result res;
  if (o.sweep) res.rows = sweep(g, device, o);
  if (o.compare_direct) {
#if TANDEM_GLOO
    res.direct = compare_direct(g, o);
#endif
  }
  return res;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

void write_outputs(const Options& o, const ProcessGroup& g, Device device, const Result& res) {
  if (!o.csv_path.empty()) {
    std::ofstream csv(o.csv_path);
    if (!csv) throw std::runtime_error("[bench_collectives] cannot write " + o.csv_path);
    csv << "backend,world_size,device,op,bytes,elements,iters,median_us,min_us,algbw_gbps,busbw_gbps\n";
    for (const auto& r : res.rows)
      csv << g.backend() << ',' << g.size() << ',' << device.str() << ',' << r.op << ',' << r.bytes << ','
          << r.elements << ',' << r.iters << ',' << r.median_s * 1e6 << ',' << r.min_s * 1e6 << ',' << r.algbw_gbps
          << ',' << r.busbw_gbps << '\n';
  }
  if (!o.json_path.empty()) {
    nlohmann::json j = {{"backend", g.backend()}, {"world_size", g.size()}, {"device", device.str()},
                        {"dtype", "float32"},     {"date", now_utc()},     {"rows", nlohmann::json::array()},
                        {"direct_gloo", nlohmann::json::array()}};
    for (const auto& r : res.rows)
      j["rows"].push_back({{"op", r.op}, {"bytes", r.bytes}, {"elements", r.elements}, {"iters", r.iters},
                           {"median_us", r.median_s * 1e6}, {"min_us", r.min_s * 1e6},
                           {"algbw_gbps", r.algbw_gbps}, {"busbw_gbps", r.busbw_gbps}});
    for (const auto& r : res.direct)
      j["direct_gloo"].push_back({{"bytes", r.bytes}, {"pairs", r.iters},
                                  {"tandem_median_us", r.tandem_median_s * 1e6},
                                  {"direct_median_us", r.direct_median_s * 1e6}, {"overhead_pct", r.overhead_pct},
                                  {"paired_overhead_pct", r.paired_overhead_pct},
                                  {"tandem_min_us", r.tandem_min_s * 1e6}, {"direct_min_us", r.direct_min_s * 1e6},
                                  {"min_overhead_pct", r.min_overhead_pct}});
    std::ofstream out(o.json_path);
    if (!out) throw std::runtime_error("[bench_collectives] cannot write " + o.json_path);
    out << j.dump(2) << '\n';
  }
}

/// "8", "64K", "1Mi", "256MiB" -> bytes (K/Ki, M/Mi, G/Gi are all powers of 1024).
int64_t parse_bytes(const std::string& text) {
  size_t pos = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &pos);
  } catch (const std::exception&) {
    throw std::invalid_argument("[bench_collectives] expected a byte count like 8, 64K or 256Mi, got \"" + text + "\"");
  }
  std::string unit = text.substr(pos);
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  if (!unit.empty() && unit.back() == 'i') unit.pop_back();
  int64_t scale = 1;
  if (unit == "K" || unit == "k") scale = int64_t{1} << 10;
  else if (unit == "M" || unit == "m") scale = int64_t{1} << 20;
  else if (unit == "G" || unit == "g") scale = int64_t{1} << 30;
  else if (!unit.empty())
    throw std::invalid_argument("[bench_collectives] expected a byte count like 8, 64K or 256Mi, got \"" + text + "\"");
  if (v <= 0) throw std::invalid_argument("[bench_collectives] expected a positive byte count, got \"" + text + "\"");
  return v * scale;
}

int run(int argc, char** argv) {
  Options o;
  std::string min_bytes = "8", max_bytes = "64Mi";
  CLI::App app{"Collective benchmark: time, algorithm and bus bandwidth per op and size"};
  app.add_option("--backend", o.backend, "local (threads), gloo or nccl (one process per rank, under tandemrun)")
      ->check(CLI::IsMember({"local", "gloo", "nccl"}));
  app.add_option("--ranks", o.ranks, "Ranks of the local backend")->check(CLI::Range(1, 64));
  app.add_option("--device", o.device, "Device of the local backend's tensors (cpu, cuda)");
  app.add_option("--min-bytes", min_bytes, "Smallest message (sizes grow x4 from here)");
  app.add_option("--max-bytes", max_bytes, "Largest message (default 64Mi; up to 256Mi for the full range)");
  app.add_option("--ops", o.ops, "Collectives to time")
      ->delimiter(',')
      ->check(CLI::IsMember({"all_reduce", "all_gather", "reduce_scatter", "broadcast"}));
  app.add_option("--warmup", o.warmup, "Untimed iterations per op and size")->check(CLI::Range(0, 1000));
  app.add_option("--min-iters", o.min_iters, "Fewest timed iterations per op and size")->check(CLI::Range(1, 100000));
  app.add_option("--max-iters", o.max_iters, "Most timed iterations per op and size")->check(CLI::Range(1, 100000));
  app.add_option("--target-seconds", o.target_s, "Timed seconds aimed for per op and size")->check(CLI::PositiveNumber);
  app.add_flag("--compare-direct", o.compare_direct,
               "gloo: also compare all_reduce through Tandem with gloo::allreduce called directly (1 MiB, 64 MiB)");
  app.add_flag("!--no-sweep", o.sweep, "Skip the op x size sweep (with --compare-direct: only the comparison)");
  app.add_option("--compare-pairs", o.compare_pairs,
                 "Tandem/direct iteration pairs of the comparison at 1 MiB (64 MiB: an eighth)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--timeout", o.timeout_s, "Seconds before a stuck collective fails")->check(CLI::Range(1, 3600));
  app.add_option("--json", o.json_path, "Also write the results as JSON (rank 0)");
  app.add_option("--csv", o.csv_path, "Also write the sweep as CSV (rank 0)");
  CLI11_PARSE(app, argc, argv);
  o.min_bytes = parse_bytes(min_bytes);
  o.max_bytes = parse_bytes(max_bytes);
  if (o.min_bytes > o.max_bytes)
    throw std::invalid_argument("[bench_collectives] expected --min-bytes <= --max-bytes, got " + min_bytes + " > " +
                                max_bytes);
  o.max_iters = std::max(o.max_iters, o.min_iters);
  if (o.compare_direct && o.backend != "gloo")
    throw std::invalid_argument("[bench_collectives] --compare-direct expected --backend gloo, got " + o.backend);
  if (o.compare_direct && !TANDEM_GLOO)
    throw std::invalid_argument("[bench_collectives] --compare-direct needs Gloo; this Tandem was built without it");
  const comm::ProcessGroupOptions group_options{.timeout = std::chrono::seconds(o.timeout_s)};

  if (o.backend == "local") {
    const Device device = Device::parse(o.device);
    auto groups = comm::make_local_group(o.ranks, group_options);
    std::vector<Result> results(o.ranks);
    std::vector<std::exception_ptr> errors(o.ranks);
    std::vector<std::thread> threads;
    for (int r = 0; r < o.ranks; ++r) {
      threads.emplace_back([&, r] {
        try {
          if (device.is_cuda()) cuda::set_device(device.index);
          results[r] = run_rank(*groups[r], device, o);
        } catch (...) {
          errors[r] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    write_outputs(o, *groups[0], device, results[0]);
    return 0;
  }

  // gloo / nccl: this process is one rank of a job started by tandemrun (or torchrun,
  // srun, mpirun).
  auto group = comm::init({.backend = o.backend, .timeout = std::chrono::seconds(o.timeout_s), .debug = false});
  const Device device = o.backend == "nccl" ? Device::cuda(cuda::current_device()) : Device::cpu();
  Result res = run_rank(*group, device, o);
  if (group->rank() == 0) write_outputs(o, *group, device, res);
  finish(group->barrier(), device);  // rank 0's store outlives the others' last use
  return 0;
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  try {
    return tandem::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_collectives: %s\n", e.what());
    return 1;
  }
}
