// Shared test helpers (see test_util.h).
#include "test_util.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <mutex>
#include <thread>
#include <sstream>

#include "kernels/philox.h"

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
  try {
    fn();
    ADD_FAILURE() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    for (const std::string& p : pieces)
      EXPECT_NE(what.find(p), std::string::npos) << "message: " << what << "\nmissing: " << p;
  }
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

}  // namespace tandem::testing
