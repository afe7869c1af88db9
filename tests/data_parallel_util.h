// Shared by test_comm_data_parallel.cpp and test_cuda_data_parallel.cpp: trains a
// model with DataParallel and a plain copy side by side and checks they agree.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/data_parallel.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/models/cnn.h"
#include "layers/models/mlp.h"
#include "optim/sgd.h"
#include "test_util.h"

namespace tandem::testing {

inline std::shared_ptr<nn::Module> make_test_mlp() {
  return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 12, .hidden = {16, 8}, .out = 5});
}

inline std::shared_ptr<nn::Module> make_test_cnn() {
  return std::make_shared<nn::models::CNN>(
      nn::models::CNNOptions{.in_channels = 1, .num_classes = 5, .image_size = 8, .hidden = 16});
}

/// What the plain model computes for DataParallel over `n` devices in training mode:
/// each chunk of ceil(B/n) rows separately (batch norm uses per-chunk statistics), the
/// same parameters for all chunks (so gradients sum), and buffers as chunk 0 alone
/// left them (the others' updates are dropped, as replicas k > 0 are discarded).
inline Tensor per_chunk_reference(nn::Module& ref, const Tensor& x, int64_t n) {
  std::vector<Tensor> chunks = chunk(x, n, 0);
  std::vector<Tensor> outs{ref.forward(chunks[0])};
  std::vector<Tensor> buffers = ref.buffers();
  std::vector<Tensor> saved;
  for (const Tensor& b : buffers) saved.push_back(b.detach().clone());
  for (size_t k = 1; k < chunks.size(); ++k) outs.push_back(ref.forward(chunks[k]));
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(saved[i]);
  return cat(outs, 0);
}

/// ‖got − want‖ / ‖want‖ <= tol, or every |got − want| <= atol (for tensors that are
/// zero up to rounding, such as the bias of a convolution followed by batch norm,
/// whose gradient vanishes), with the name in the failure message.
inline ::testing::AssertionResult relatively_close(const Tensor& got, const Tensor& want, double tol,
                                                   const std::string& what, double atol = 1e-12) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << shape_str(got.shape()) << " vs "
                                         << shape_str(want.shape());
  if (!(got.device() == want.device()))
    return ::testing::AssertionFailure() << what << ": device " << got.device().str() << " vs "
                                         << want.device().str();
  const double err = relative_error(got, want);
  if (err <= tol || all_close(got, want, atol, 0.0)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": relative error " << err << " > " << tol
                                       << " and some |got - want| > " << atol;
}

struct EquivalenceCase {
  std::function<std::shared_ptr<nn::Module>()> make;
  Shape sample_shape;           // one sample, without the batch dim
  int64_t classes = 5;
  int64_t batch = 8;            // global batch
  std::vector<Device> devices;  // DataParallel's
  Device reference_device = Device::cpu();
  bool per_chunk = false;  // compare with per_chunk_reference (batch norm) instead of one big batch
  DType dtype = DType::kF64;
  double tol = 1e-5;
  double atol = 1e-12;  // for tensors that are zero up to rounding (see relatively_close)
  int steps = 5;
};

/// Trains DataParallel(copy of the model) and the plain model with SGD (momentum 0.9)
/// for `steps` steps on the same random batches; checks outputs, losses and every
/// gradient each step, and parameters and buffers at the end.
inline void expect_data_parallel_matches_plain(const EquivalenceCase& c) {
  manual_seed(7);
  std::shared_ptr<nn::Module> ref = c.make();
  ref->to(c.dtype);
  std::shared_ptr<nn::Module> primary = ref->clone();
  ref->to(c.reference_device);
  primary->to(c.devices[0]);
  comm::DataParallel dp(primary, c.devices);
  optim::SGD opt_ref(ref->parameters(), {.lr = 0.05, .momentum = 0.9});
  optim::SGD opt_dp(dp.parameters(), {.lr = 0.05, .momentum = 0.9});
  const int64_t n = static_cast<int64_t>(c.devices.size());
  const int64_t chunk_rows = (c.batch + n - 1) / n;
  const int64_t expected_replicas = (c.batch + chunk_rows - 1) / chunk_rows;

  auto to_ref = [&](const Tensor& t) { return t.detach().to(c.reference_device); };
  for (int step = 0; step < c.steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    Shape shape{c.batch};
    shape.insert(shape.end(), c.sample_shape.begin(), c.sample_shape.end());
    Tensor x = random_tensor(shape, 1000 + static_cast<uint64_t>(step), c.dtype, c.devices[0]);
    Tensor targets = random_indices({c.batch}, c.classes, 2000 + static_cast<uint64_t>(step), c.devices[0]);
    Tensor x_ref = x.to(c.reference_device);
    Tensor targets_ref = targets.to(c.reference_device);

    Tensor out_ref = c.per_chunk ? per_chunk_reference(*ref, x_ref, n) : ref->forward(x_ref);
    Tensor out_dp = dp.forward(x);
    EXPECT_EQ(dp.last_forward_stats().replicas, expected_replicas);
    Tensor loss_ref = cross_entropy(out_ref, targets_ref);
    Tensor loss_dp = cross_entropy(out_dp, targets);
    EXPECT_TRUE(relatively_close(to_ref(out_dp), out_ref, c.tol, "output", c.atol));
    EXPECT_TRUE(relatively_close(to_ref(loss_dp), loss_ref, c.tol, "loss", c.atol));

    opt_ref.zero_grad();
    opt_dp.zero_grad();
    loss_ref.backward();
    loss_dp.backward();
    auto grads_ref = ref->named_parameters();
    auto grads_dp = dp.module()->named_parameters();
    for (size_t i = 0; i < grads_ref.size(); ++i) {
      ASSERT_TRUE(grads_dp[i].second.grad().defined()) << grads_dp[i].first;
      EXPECT_TRUE(relatively_close(to_ref(grads_dp[i].second.grad()), grads_ref[i].second.grad(), c.tol,
                                   "grad of " + grads_ref[i].first, c.atol));
    }
    opt_ref.step();
    opt_dp.step();
  }
  nn::StateDict want = ref->state_dict();
  nn::StateDict got = dp.module()->state_dict();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    if (!is_floating(want[i].second.dtype())) {
      EXPECT_TRUE(all_close(to_ref(got[i].second), want[i].second, 0.0, 0.0)) << want[i].first;
    } else {
      EXPECT_TRUE(relatively_close(to_ref(got[i].second), want[i].second, c.tol, want[i].first, c.atol));
    }
  }
}

}  // namespace tandem::testing
