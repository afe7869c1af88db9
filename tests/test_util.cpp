// Shared test helpers (see test_util.h).
#include "test_util.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>
#include <sstream>

#include "comm/launch.h"
#include "comm/store.h"
#include "kernels/philox.h"
#include "tandem/config.h"

extern char** environ;

namespace tandem::testing {

Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype, Device device, double low, double high) {
  Tensor t = Tensor::empty(shape, {.dtype = DType::kF64});
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    kernels::PhiloxBlock b = kernels::philox_block(seed, static_cast<uint64_t>(i));
    double u = (static_cast<double>(b.w[0]) + 0.5) / 4294967296.0;
    p[i] = low + (high - low) * u;
  }
  return t.to(dtype).to(device);
}

Tensor random_indices(const Shape& shape, int64_t high, uint64_t seed, Device device) {
  Tensor t = Tensor::empty(shape, {.dtype = DType::kI64});
  int64_t* p = t.data<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    kernels::PhiloxBlock b = kernels::philox_block(seed ^ 0x9e3779b97f4a7c15ull, static_cast<uint64_t>(i));
    p[i] = static_cast<int64_t>(b.w[1] % static_cast<uint64_t>(high));
  }
  return t.to(device);
}

::testing::AssertionResult all_close(const Tensor& got, const Tensor& want, double atol, double rtol) {
  if (!got.defined() || !want.defined()) return ::testing::AssertionFailure() << "undefined tensor";
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << "shapes differ: got " << shape_str(got.shape()) << ", want "
                                         << shape_str(want.shape());
  std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < g.size(); ++i) {
    bool ok = std::abs(g[i] - w[i]) <= atol + rtol * std::abs(w[i]) || (std::isnan(g[i]) && std::isnan(w[i])) ||
              (std::isinf(g[i]) && g[i] == w[i]);
    if (!ok) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << g.size() << " elements differ (atol " << atol << ", rtol "
                                       << rtol << "); first at flat index " << first << ": got "
                                       << g[static_cast<size_t>(first)] << ", want " << w[static_cast<size_t>(first)];
}

double relative_error(const Tensor& got, const Tensor& want) {
  std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size() && i < w.size(); ++i) {
    num += (g[i] - w[i]) * (g[i] - w[i]);
    den += w[i] * w[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

::testing::AssertionResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                     const std::vector<Tensor>& inputs, double eps, double atol, double rtol) {
  for (const Tensor& t : inputs) {
    if (t.defined() && t.requires_grad() && t.dtype() != DType::kF64)
      return ::testing::AssertionFailure() << "gradcheck needs float64 inputs, got " << dtype_name(t.dtype());
  }
  // Projection onto a random cotangent turns the output into a scalar whose
  // gradient is the vector-Jacobian product the backward rules compute.
  Tensor out = fn(inputs);
  Tensor cotangent = random_tensor(out.shape(), 0xc0ffee, DType::kF64, out.device(), 0.5, 1.5);
  auto scalar = [&](const std::vector<Tensor>& xs) {
    autograd::NoGradGuard no_grad;
    Tensor o = fn(xs).detach();
    return (o.to(DType::kF64) * cotangent).sum().item();
  };
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) t.impl()->autograd_meta().grad.reset();
  Tensor loss = (out * cotangent).sum();
  loss.backward();

  std::ostringstream failures;
  int nfail = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    Tensor analytical = x.grad().defined() ? x.grad().cpu() : zeros(x.shape(), {.dtype = DType::kF64});
    std::vector<double> a = analytical.to_vector<double>();
    Tensor host = x.detach().cpu().clone();
    double* p = host.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double orig = p[i];
      auto eval_at = [&](double v) {
        p[i] = v;
        std::vector<Tensor> xs = inputs;
        xs[k] = host.to(x.device()).detach();
        return scalar(xs);
      };
      double numerical = (eval_at(orig + eps) - eval_at(orig - eps)) / (2 * eps);
      p[i] = orig;
      double got = a[static_cast<size_t>(i)];
      if (std::abs(got - numerical) > atol + rtol * std::abs(numerical)) {
        if (nfail < 5)
          failures << "\n  input " << k << " element " << i << ": backward " << got << ", finite difference "
                   << numerical;
        ++nfail;
      }
    }
  }
  if (nfail == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << nfail << " gradient elements disagree" << failures.str();
}

void expect_invalid(const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  expect_error<std::invalid_argument>("std::invalid_argument", fn, pieces);
}

void expect_logic_error(const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  expect_error<std::logic_error>("std::logic_error", fn, pieces);
}

void run_ranks(int size, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  std::exception_ptr error;
  std::mutex mutex;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

std::string fixture_path(const std::string& name) { return std::string(TANDEM_FIXTURE_DIR) + "/" + name; }

nlohmann::json load_fixture(const std::string& name) {
  std::ifstream f(fixture_path(name));
  if (!f) throw std::runtime_error("cannot open fixture " + fixture_path(name));
  return nlohmann::json::parse(f);
}

Tensor fixture_tensor(const nlohmann::json& j, bool integer) {
  Shape shape = j.at("shape").get<Shape>();
  if (integer) return Tensor::from_vector(j.at("data").get<std::vector<int64_t>>(), shape);
  return Tensor::from_vector(j.at("data").get<std::vector<double>>(), shape);
}

void expect_cuda_parity(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Shape>& shapes,
                        DType dt, uint64_t seed, Tolerance tol) {
  std::vector<Tensor> cpu_in, gpu_in;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor c = random_tensor(shapes[i], seed + i, dt);
    Tensor g = c.to(Device::cuda());
    c.set_requires_grad(true);
    g.set_requires_grad(true);
    cpu_in.push_back(c);
    gpu_in.push_back(g);
  }
  Tensor y_cpu = fn(cpu_in), y_gpu = fn(gpu_in);
  ASSERT_TRUE(y_gpu.is_cuda());
  EXPECT_TRUE(all_close(y_gpu.cpu(), y_cpu, tol.atol, tol.rtol)) << "forward, dtype " << dtype_name(dt);
  Tensor dy = random_tensor(y_cpu.shape(), seed + 100, dt);
  y_cpu.backward(dy);
  y_gpu.backward(dy.to(Device::cuda()));
  for (size_t i = 0; i < shapes.size(); ++i) {
    ASSERT_TRUE(gpu_in[i].grad().defined()) << "input " << i;
    EXPECT_TRUE(all_close(gpu_in[i].grad().cpu(), cpu_in[i].grad(), tol.atol, tol.rtol))
        << "gradient of input " << i << ", dtype " << dtype_name(dt);
  }
}

void step_in_lockstep(std::vector<Tensor>& a, optim::Optimizer& opt_a, std::vector<Tensor>& b,
                      optim::Optimizer& opt_b, int step, const std::function<bool(size_t)>& has_grad) {
  for (size_t i = 0; i < a.size(); ++i) {
    a[i].set_grad(Tensor());
    b[i].set_grad(Tensor());
    if (!has_grad(i)) continue;
    const Tensor g = random_tensor(a[i].shape(), 30 + 2 * static_cast<uint64_t>(step) + i, a[i].dtype());
    a[i].set_grad(g.clone());
    b[i].set_grad(g.clone());
  }
  opt_a.step();
  opt_b.step();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(b[i].to_vector<double>(), a[i].to_vector<double>()) << "step " << step << ", parameter " << i;
}

void compare_optimizer_cpu_cuda(const std::vector<Shape>& shapes, DType dtype, const OptimizerFactory& make,
                                int steps, double atol, double rtol, bool compare_scalars) {
  set_poison_allocations(true);
  std::vector<Tensor> cpu_params, gpu_params;
  uint64_t seed = 100;
  for (const Shape& s : shapes) {
    Tensor p = random_tensor(s, seed++, dtype);
    cpu_params.push_back(p.clone().detach().set_requires_grad(true));
    gpu_params.push_back(p.to(Device::cuda()).detach().set_requires_grad(true));
  }
  std::unique_ptr<optim::Optimizer> cpu_opt = make(cpu_params);
  std::unique_ptr<optim::Optimizer> gpu_opt = make(gpu_params);
  for (int k = 0; k < steps; ++k) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      // Parameter 1 misses the first step: it must be skipped, and where the optimizer
      // counts steps per tensor (Adam's bias correction), its count lags.
      if (k == 0 && i == 1) continue;
      Tensor g = random_tensor(shapes[i], 1000 * (k + 1) + i, dtype);
      cpu_params[i].set_grad(g);
      gpu_params[i].set_grad(g.to(Device::cuda()));
    }
    cpu_opt->step();
    gpu_opt->step();
    for (size_t i = 0; i < shapes.size(); ++i) {
      ASSERT_TRUE(all_close(gpu_params[i].cpu(), cpu_params[i], atol, rtol)) << "step " << k << " tensor " << i;
    }
  }
  auto cpu_state = cpu_opt->state_dict(), gpu_state = gpu_opt->state_dict();
  ASSERT_EQ(cpu_state.tensors.size(), gpu_state.tensors.size());
  for (auto& [name, t] : cpu_state.tensors) {
    EXPECT_TRUE(all_close(gpu_state.tensors.at(name).cpu(), t, atol, rtol)) << name;
  }
  if (compare_scalars) {
    EXPECT_EQ(cpu_state.scalars, gpu_state.scalars);
  }
  set_poison_allocations(false);
}

Tensor param(const std::vector<double>& values, DType dtype) {
  Tensor t = Tensor::from_vector(values, {static_cast<int64_t>(values.size())});
  if (dtype != DType::kF64) t = t.to(dtype);
  t.set_requires_grad(true);
  return t;
}

void set_grad(Tensor& p, const std::vector<double>& values) {
  Tensor g = Tensor::from_vector(values, {static_cast<int64_t>(values.size())});
  p.set_grad(g.to(p.dtype()));
}

TempDir::TempDir() {
  // The pid keeps test binaries that ctest runs in parallel apart; the counter, the
  // directories of one process.
  static std::atomic<int> counter{0};
  path_ = std::filesystem::temp_directory_path() /
          ("tandem_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() { std::filesystem::remove_all(path_); }

void write_raw(const std::filesystem::path& path, const std::vector<unsigned char>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// ---- worker processes ------------------------------------------------------------------------

namespace {
constexpr const char* kWorkerEnv = "TANDEM_TEST_WORKER";
}  // namespace

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ADD_FAILURE() << "could not bind a probe socket: " << std::strerror(errno);
    if (fd >= 0) close(fd);
    return 29500;
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::vector<int> run_workers(const std::string& test_name, int world, std::chrono::seconds deadline,
                             const std::vector<std::string>& extra_env) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    // Build argv and envp before fork: the child only execs.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string s(*e);
      if (s.rfind("RANK=", 0) == 0 || s.rfind("WORLD_SIZE=", 0) == 0 || s.rfind("MASTER_", 0) == 0) continue;
      env_strings.push_back(s);
    }
    env_strings.push_back(std::string(kWorkerEnv) + "=1");
    env_strings.push_back("RANK=" + std::to_string(rank));
    env_strings.push_back("WORLD_SIZE=" + std::to_string(world));
    env_strings.push_back("MASTER_ADDR=127.0.0.1");
    env_strings.push_back("MASTER_PORT=" + std::to_string(port));
    for (const auto& e : extra_env) env_strings.push_back(e);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string arg0 = "tandem-test-worker";
    std::string filter = "--gtest_filter=" + test_name;
    std::string brief = "--gtest_brief=1";
    char* argv[] = {arg0.data(), filter.data(), brief.data(), nullptr};
    pid_t pid = fork();
    if (pid == 0) {
      execve("/proc/self/exe", argv, envp.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  std::vector<int> status(static_cast<size_t>(world), -2);
  const auto end = std::chrono::steady_clock::now() + deadline;
  int remaining = world;
  while (remaining > 0 && std::chrono::steady_clock::now() < end) {
    for (int r = 0; r < world; ++r) {
      if (status[r] != -2) continue;
      int st = 0;
      if (waitpid(pids[r], &st, WNOHANG) == pids[r]) {
        status[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        --remaining;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (int r = 0; r < world; ++r) {
    if (status[r] != -2) continue;
    kill(pids[r], SIGKILL);
    waitpid(pids[r], nullptr, 0);
    status[r] = -1;
  }
  return status;
}

void expect_all_ok(const std::vector<int>& status) {
  for (size_t r = 0; r < status.size(); ++r)
    EXPECT_EQ(status[r], 0) << "rank " << r << " of " << status.size()
                            << (status[r] == -1 ? " hung and was killed" : " failed");
}

bool is_worker() { return std::getenv(kWorkerEnv) != nullptr; }

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? -1 : std::atoi(v);
}

std::shared_ptr<comm::Store> worker_store(std::chrono::milliseconds timeout) {
  comm::TCPStoreOptions o;
  o.host = "127.0.0.1";
  o.port = env_int("MASTER_PORT");
  o.is_server = env_int("RANK") == 0;
  o.world_size = env_int("WORLD_SIZE");
  o.timeout = timeout;
  o.rank = env_int("RANK");
  return comm::make_tcp_store(o);
}

std::shared_ptr<comm::ProcessGroup> worker_gloo_group(std::chrono::milliseconds timeout) {
#if TANDEM_GLOO
  comm::ProcessGroupOptions options;
  options.timeout = timeout;
  return comm::make_gloo_group(worker_store(timeout), env_int("RANK"), env_int("WORLD_SIZE"), options);
#else
  (void)timeout;
  throw std::runtime_error("worker_gloo_group: this build has no gloo backend (-DTANDEM_GLOO=ON)");
#endif
}

}  // namespace tandem::testing
