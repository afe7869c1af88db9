// Shared test helpers (see test_util.h).
#include "test_util.h"

#include <cmath>
#include <fstream>
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

}  // namespace tandem::testing
