// Shared test helpers: deterministic random tensors, element-wise comparison with
// the first mismatch reported, an f64 finite-difference gradient check, the skip used
// by every GPU test when no CUDA device is present, the CUDA-vs-CPU parity harness,
// small parameter makers for optimizer tests, and temporary files for data tests.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/process_group.h"
#include "comm/store.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/tensor.h"
#include "optim/optimizer.h"

/// Skips the current test with the reason CUDA cannot be used (no build, no driver, no GPU).
#define TANDEM_REQUIRE_CUDA()                                                              \
  do {                                                                                      \
    if (!::tandem::cuda::is_available())                                                    \
      GTEST_SKIP() << "no CUDA device: " << ::tandem::cuda::unavailable_reason();           \
  } while (0)

/// Skips a test of the caching allocator's own behaviour (reuse, no cudaMalloc in a warm
/// loop) when TANDEM_CUDA_CACHING_ALLOCATOR=0 turned caching off, as scripts/gpu-check
/// does for its compute-sanitizer stage (a cudaMalloc per allocation, freed at once).
#define TANDEM_REQUIRE_CACHING_ALLOCATOR()                                                     \
  do {                                                                                          \
    const char* caching = std::getenv("TANDEM_CUDA_CACHING_ALLOCATOR");                         \
    if (caching != nullptr && std::string(caching) == "0")                                      \
      GTEST_SKIP() << "TANDEM_CUDA_CACHING_ALLOCATOR=0: this test checks the caching allocator"; \
  } while (0)

namespace tandem::testing {

/// Uniform values in [low, high) from a private Philox stream keyed by `seed`
/// (never zeros), created on the CPU in f64 and then converted.
Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::kF64, Device device = Device::cpu(),
                     double low = -1.0, double high = 1.0);
/// Random int64 values in [0, high).
Tensor random_indices(const Shape& shape, int64_t high, uint64_t seed, Device device = Device::cpu());

/// Checks shapes match and |got - want| <= atol + rtol·|want| element-wise; reports
/// the number of mismatches and the first one (index, got, want).
::testing::AssertionResult all_close(const Tensor& got, const Tensor& want, double atol = 1e-6, double rtol = 1e-5);
/// ‖got - want‖ / ‖want‖ (both converted to f64 on the CPU).
double relative_error(const Tensor& got, const Tensor& want);

/// Finite-difference check of every input that requires grad: compares the
/// analytical vector-Jacobian product for a random cotangent with central
/// differences (step eps) in f64. `fn` must be deterministic.
::testing::AssertionResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                     const std::vector<Tensor>& inputs, double eps = 1e-6, double atol = 1e-6,
                                     double rtol = 1e-4);

/// Runs `fn`, expects an exception of type E (`kind` names it in the failure), and checks
/// its message contains every piece.
template <class E>
void expect_error(const char* kind, const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected " << kind;
  } catch (const E& e) {
    const std::string what = e.what();
    for (const std::string& p : pieces)
      EXPECT_NE(what.find(p), std::string::npos) << "message: " << what << "\nmissing: " << p;
  }
}
/// expect_error for std::invalid_argument.
void expect_invalid(const std::function<void()>& fn, const std::vector<std::string>& pieces);
/// expect_error for std::logic_error (a misuse such as a call that cannot be captured).
void expect_logic_error(const std::function<void()>& fn, const std::vector<std::string>& pieces);

/// Runs fn(rank) on one thread per rank and joins them; the first exception is rethrown.
void run_ranks(int size, const std::function<void(int)>& fn);

// ---- worker processes (multi-process tests over gloo) -------------------------------------
// A test re-executes its own binary (/proc/self/exe) once per rank with a filter naming a
// worker-only test and RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT plus TANDEM_TEST_WORKER=1
// in the environment, then waits with a deadline and kills stragglers.

/// A TCP port nothing listens on right now (bound to port 0 and read back).
int free_port();
/// Starts `world` worker processes running the test `test_name` and returns each rank's
/// exit status: the exit code, 128+signal, or -1 when it had to be killed at the deadline.
std::vector<int> run_workers(const std::string& test_name, int world, std::chrono::seconds deadline,
                             const std::vector<std::string>& extra_env = {});
/// Expects every status from run_workers to be 0, naming the rank otherwise.
void expect_all_ok(const std::vector<int>& status);
/// True in a process started by run_workers.
bool is_worker();
/// An integer environment variable, -1 when unset.
int env_int(const char* name);
/// In a worker: the TCP store hosted by rank 0 at MASTER_PORT.
std::shared_ptr<comm::Store> worker_store(std::chrono::milliseconds timeout);
/// In a worker: the gloo group of this worker's rank (TCP store hosted by rank 0).
std::shared_ptr<comm::ProcessGroup> worker_gloo_group(std::chrono::milliseconds timeout);

/// First statement of a worker-only test: skips unless run by run_workers.
#define TANDEM_WORKER_ONLY()                                                                    \
  do {                                                                                          \
    if (!::tandem::testing::is_worker()) GTEST_SKIP() << "runs only as a worker process started by another test"; \
  } while (0)

/// Path of a fixture file under tests/fixtures.
std::string fixture_path(const std::string& name);
/// Parses tests/fixtures/<name> (written by tests/make_fixtures.py).
nlohmann::json load_fixture(const std::string& name);
/// A fixture tensor {"shape": [...], "data": [...]} as f64 (int64 when `integer`).
Tensor fixture_tensor(const nlohmann::json& j, bool integer = false);

// ---- CUDA vs CPU parity -------------------------------------------------------------------

/// Every floating dtype, in the order parity tests loop over them.
inline constexpr DType kFloatTypes[] = {DType::kF32, DType::kF64, DType::kF16, DType::kBF16};

/// Allowed difference |got - want| <= atol + rtol·|want|.
struct Tolerance {
  double atol;
  double rtol;
};

/// Base of GPU parity fixtures: skips without CUDA, and poisons allocations during the test.
class CudaParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TANDEM_REQUIRE_CUDA();
    ::tandem::set_poison_allocations(true);
  }
  void TearDown() override { ::tandem::set_poison_allocations(false); }
};

/// Runs fn on CPU inputs and on copies on cuda:0, then backward with the same random
/// output gradient on both, and compares the outputs and every input gradient within `tol`.
void expect_cuda_parity(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Shape>& shapes,
                        DType dt, uint64_t seed, Tolerance tol);

// ---- optimizer tests ----------------------------------------------------------------------

/// One step of two optimizers over copies of the same parameters: a[i] and b[i] get
/// the same random gradient (seeded by `step` and i), or none where has_grad(i) is
/// false; both optimizers step and the parameters must then agree bit for bit.
void step_in_lockstep(std::vector<Tensor>& a, optim::Optimizer& opt_a, std::vector<Tensor>& b,
                      optim::Optimizer& opt_b, int step, const std::function<bool(size_t)>& has_grad);

/// Makes an optimizer over `params` (for compare_optimizer_cpu_cuda).
using OptimizerFactory = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor> params)>;

/// Runs `steps` steps of the optimizers `make` builds on CPU and CUDA copies of the same
/// random parameters of `shapes` with the same random gradients (parameter 1 gets none
/// on the first step), comparing the parameters after every step and the state tensors
/// at the end (and the state scalars when `compare_scalars`), with allocations poisoned.
void compare_optimizer_cpu_cuda(const std::vector<Shape>& shapes, DType dtype, const OptimizerFactory& make,
                                int steps, double atol, double rtol, bool compare_scalars);

/// A 1-D parameter (requires grad) holding `values`, in `dtype`.
Tensor param(const std::vector<double>& values, DType dtype = DType::kF64);
/// Sets p's gradient to `values`, in p's dtype.
void set_grad(Tensor& p, const std::vector<double>& values);

// ---- files --------------------------------------------------------------------------------

/// A fresh temporary directory, removed with the object.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Writes `bytes` to `path` as they are.
void write_raw(const std::filesystem::path& path, const std::vector<unsigned char>& bytes);

}  // namespace tandem::testing
