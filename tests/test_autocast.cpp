// AutocastGuard and the autocast policy on the CPU: guard state (nesting, disabling,
// restoration, per-thread, bad dtypes), the output dtype of every op of the table under
// each guard dtype and input dtype, values close to f32, gradients arriving in the
// inputs' own dtypes (f32 at f32 parameters), backward inside a guard, a guard opened
// inside backward, and an MLP and the CNN trained one step under autocast against f32.
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "autocast_cases.h"
#include "engine/autocast.h"
#include "engine/autograd.h"
#include "layers/linear.h"
#include "layers/models/cnn.h"
#include "layers/models/mlp.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::case_cotangent;
using testing::case_inputs;
using testing::expected_dtype;
using testing::half_tolerance;
using testing::op_cases;
using testing::OpCase;
using testing::random_indices;
using testing::random_tensor;
using testing::relative_error;
using testing::widened_leaves;

constexpr DType kHalfTypes[] = {DType::kF16, DType::kBF16};

DType other_half(DType d) { return d == DType::kF16 ? DType::kBF16 : DType::kF16; }

// ---- the guard -------------------------------------------------------------------------------

TEST(AutocastGuard, NestsDisablesAndRestores) {
  EXPECT_FALSE(autocast_enabled());
  EXPECT_EQ(autocast_dtype(), DType::kF16);  // the default, as torch.get_autocast_dtype("cuda")
  {
    AutocastGuard outer(DType::kBF16);
    EXPECT_TRUE(autocast_enabled());
    EXPECT_TRUE(autocast_active());
    EXPECT_EQ(autocast_dtype(), DType::kBF16);
    {
      AutocastGuard inner(DType::kF16);
      EXPECT_TRUE(autocast_enabled());
      EXPECT_EQ(autocast_dtype(), DType::kF16);
      {
        AutocastGuard off(DType::kF16, false);
        EXPECT_FALSE(autocast_enabled());
        EXPECT_FALSE(autocast_active());
        Tensor a = random_tensor({2, 3}, 1, DType::kF32), b = random_tensor({3, 2}, 2, DType::kF32);
        EXPECT_EQ(matmul(a, b).dtype(), DType::kF32);
        {
          // Re-entering the current state, as an activation checkpoint's recompute does.
          AutocastGuard same(autocast_dtype(), autocast_enabled());
          EXPECT_FALSE(autocast_enabled());
        }
      }
      EXPECT_TRUE(autocast_enabled());
      EXPECT_EQ(autocast_dtype(), DType::kF16);
    }
    EXPECT_EQ(autocast_dtype(), DType::kBF16);
    EXPECT_TRUE(autocast_enabled());
  }
  EXPECT_FALSE(autocast_enabled());
  EXPECT_FALSE(autocast_active());
  EXPECT_EQ(autocast_dtype(), DType::kF16);
}

TEST(AutocastGuard, RejectsNonHalfDtypes) {
  for (DType bad : {DType::kF32, DType::kF64, DType::kI64, DType::kBool}) {
    testing::expect_invalid([bad] { AutocastGuard g(bad); },
                            {"[AutocastGuard]", "float16 or bfloat16", std::string(dtype_name(bad))});
    testing::expect_invalid([bad] { AutocastGuard g(bad, false); }, {"[AutocastGuard]", std::string(dtype_name(bad))});
  }
  EXPECT_FALSE(autocast_enabled());  // a failed guard leaves the state alone
  EXPECT_EQ(autocast_dtype(), DType::kF16);
}

TEST(AutocastGuard, StateIsPerThread) {
  AutocastGuard guard(DType::kBF16);
  bool other_enabled = true;
  DType other_product = DType::kBF16;
  std::thread t([&] {
    other_enabled = autocast_enabled();
    other_product = matmul(random_tensor({2, 3}, 1, DType::kF32), random_tensor({3, 2}, 2, DType::kF32)).dtype();
  });
  t.join();
  EXPECT_FALSE(other_enabled);
  EXPECT_EQ(other_product, DType::kF32);
  EXPECT_TRUE(autocast_enabled());
}

// ---- the policy, op by op -----------------------------------------------------------------------

/// Under a `guard` guard with inputs in `input`: the output dtype follows the policy,
/// the values and the gradients (taken after the guard closed) are close to f32 on the
/// same values, and every gradient arrives in its input's dtype.
void expect_policy(const OpCase& c, DType guard, DType input, uint64_t seed) {
  SCOPED_TRACE(c.name + " under " + std::string(dtype_name(guard)) + " with " + std::string(dtype_name(input)) +
               " inputs");
  std::vector<Tensor> xs = case_inputs(c, input, Device::cpu(), seed);
  std::vector<Tensor> xf = widened_leaves(xs);
  Tensor y;
  {
    AutocastGuard g(guard);
    y = c.fn(xs);
  }
  Tensor yf = c.fn(xf);
  ASSERT_EQ(y.dtype(), expected_dtype(c, guard, input));
  ASSERT_EQ(yf.dtype(), DType::kF32);
  // Loosest of the precisions involved: the guard's (for products) and the inputs'.
  const bool any_bf16 = guard == DType::kBF16 || input == DType::kBF16;
  const double tol = 4 * half_tolerance(any_bf16 ? DType::kBF16 : DType::kF16);
  EXPECT_LE(relative_error(y, yf), tol);

  Tensor ct = case_cotangent(y, seed + 1);  // in y's dtype; widened exactly for the reference
  y.backward(ct);
  yf.backward(ct.to(DType::kF32));
  for (size_t i = 0; i < xs.size(); ++i) {
    ASSERT_TRUE(xs[i].grad().defined()) << "input " << i;
    EXPECT_EQ(xs[i].grad().dtype(), input) << "gradient of input " << i;
    EXPECT_LE(relative_error(xs[i].grad(), xf[i].grad()), 2 * tol) << "gradient of input " << i;
  }
}

TEST(AutocastPolicy, EveryOpUnderEachGuardWithF32Inputs) {
  uint64_t seed = 1000;
  for (const OpCase& c : op_cases())
    for (DType guard : kHalfTypes) expect_policy(c, guard, DType::kF32, seed += 10);
}

TEST(AutocastPolicy, EveryOpUnderEachGuardWithHalfInputs) {
  uint64_t seed = 2000;
  for (const OpCase& c : op_cases())
    for (DType guard : kHalfTypes) {
      expect_policy(c, guard, guard, seed += 10);
      expect_policy(c, guard, other_half(guard), seed += 10);  // f16 data under a bf16 guard, and back
    }
}

TEST(AutocastPolicy, WithoutAGuardNothingChanges) {
  // Every op keeps its inputs' dtype, f32 or half, and f32 results are bit-identical
  // to those computed after a guard has come and gone.
  uint64_t seed = 3000;
  for (const OpCase& c : op_cases()) {
    SCOPED_TRACE(c.name);
    std::vector<Tensor> xs = case_inputs(c, DType::kF32, Device::cpu(), seed += 10);
    Tensor before = c.fn(xs);
    { AutocastGuard g(DType::kBF16); }
    Tensor after = c.fn(xs);
    EXPECT_EQ(after.dtype(), DType::kF32);
    EXPECT_TRUE(all_close(after, before, 0, 0));
    for (DType half : kHalfTypes) EXPECT_EQ(c.fn(case_inputs(c, half, Device::cpu(), seed)).dtype(), half);
  }
  // Mixed f32 and half operands of a low-precision op are still an error without a guard.
  testing::expect_invalid(
      [] { matmul(zeros({2, 2}), zeros({2, 2}, {.dtype = DType::kBF16})); }, {"[matmul]", "float32", "bfloat16"});
}

TEST(AutocastPolicy, LeavesF64AndIntegersAlone) {
  AutocastGuard g(DType::kBF16);
  Tensor a = random_tensor({3, 4}, 1), b = random_tensor({4, 2}, 2);  // f64
  EXPECT_EQ(matmul(a, b).dtype(), DType::kF64);
  EXPECT_EQ(linear(a, b.transpose(0, 1)).dtype(), DType::kF64);
  EXPECT_EQ(softmax(a).dtype(), DType::kF64);
  EXPECT_EQ(sum(a).dtype(), DType::kF64);
  EXPECT_EQ(sum(arange(5)).dtype(), DType::kI64);
  EXPECT_EQ(sum(arange(5)).item<int64_t>(), 10);
  // An f64 operand with an f32 one of a low-precision op: only the f32 one is cast, so
  // the dtypes still differ and the op says so.
  testing::expect_invalid([&] { matmul(a, zeros({4, 2})); }, {"[matmul]", "float64", "bfloat16"});
}

TEST(AutocastPolicy, MixedOperandsFromAutocastPromote) {
  // A bf16 product added to an f32 residual, scaled by an f32 parameter: f32 results.
  AutocastGuard g(DType::kBF16);
  Tensor x = random_tensor({4, 8}, 1, DType::kF32).set_requires_grad(true);
  Tensor w = random_tensor({8, 8}, 2, DType::kF32).set_requires_grad(true);
  Tensor scale = random_tensor({8}, 3, DType::kF32).set_requires_grad(true);
  Tensor h = linear(x, w);
  ASSERT_EQ(h.dtype(), DType::kBF16);
  Tensor y = (h + x) * scale;
  EXPECT_EQ(y.dtype(), DType::kF32);
  EXPECT_EQ((h * h).dtype(), DType::kBF16);
  y.sum().backward();
  EXPECT_EQ(x.grad().dtype(), DType::kF32);
  EXPECT_EQ(w.grad().dtype(), DType::kF32);
  EXPECT_EQ(scale.grad().dtype(), DType::kF32);
}

// ---- gradients and backward --------------------------------------------------------------------

TEST(AutocastGradients, ReachF32ParametersInF32) {
  for (DType half : kHalfTypes) {
    SCOPED_TRACE(dtype_name(half));
    manual_seed(7);
    nn::Linear layer(16, 5);
    nn::Linear reference(16, 5);
    reference.load_state_dict(layer.state_dict());
    Tensor x = random_tensor({8, 16}, 4, DType::kF32);
    Tensor t = random_indices({8}, 5, 5);
    Tensor loss;
    {
      AutocastGuard g(half);
      Tensor logits = layer(x);
      EXPECT_EQ(logits.dtype(), half);
      loss = cross_entropy(logits, t);
      EXPECT_EQ(loss.dtype(), DType::kF32);
    }
    loss.backward();
    cross_entropy(reference(x), t).backward();
    for (const auto& [name, p] : layer.named_parameters()) {
      EXPECT_EQ(p.dtype(), DType::kF32) << name;  // master weights stay f32
      ASSERT_EQ(p.grad().dtype(), DType::kF32) << name;
    }
    const auto ref = reference.named_parameters();
    const auto got = layer.named_parameters();
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_LE(relative_error(got[i].second.grad(), ref[i].second.grad()), 4 * half_tolerance(half)) << got[i].first;
  }
}

TEST(AutocastGradients, BackwardInsideTheGuardIsTheSameAsOutside) {
  // Backward rules call ordinary ops (sum_to, mul, ...): a guard left open around
  // backward must not change the dtypes or values they produce.
  auto run = [](bool backward_inside) {
    Tensor x = random_tensor({4, 6}, 1, DType::kF32).set_requires_grad(true);
    Tensor w = random_tensor({6, 3}, 2, DType::kF32).set_requires_grad(true);
    Tensor b = random_tensor({3}, 3, DType::kF32).set_requires_grad(true);
    Tensor loss;
    {
      AutocastGuard g(DType::kF16);
      loss = log_softmax(matmul(x, w) + b.to(DType::kF16), 1).sum();
      if (backward_inside) loss.backward();
    }
    if (!backward_inside) loss.backward();
    return std::vector<Tensor>{x.grad(), w.grad(), b.grad()};
  };
  std::vector<Tensor> inside = run(true), outside = run(false);
  for (size_t i = 0; i < inside.size(); ++i) {
    EXPECT_EQ(inside[i].dtype(), DType::kF32);
    EXPECT_TRUE(all_close(inside[i], outside[i], 0, 0)) << "gradient " << i;
  }
}

TEST(AutocastGradients, AGuardOpenedInsideBackwardApplies) {
  // What activation checkpointing relies on: a recompute inside backward re-enters the
  // forward's autocast state and gets the same dtypes.
  AutocastGuard outer(DType::kBF16);
  Tensor x = random_tensor({2, 3}, 1, DType::kF32).set_requires_grad(true);
  Tensor y = x * 2.0;
  bool active_in_rule = true;
  DType recomputed = DType::kF32;
  Tensor probe = y.detach();
  autograd::record("probe", {x}, {probe}, [&](std::vector<Tensor>& g) {
    active_in_rule = autocast_active();
    {
      AutocastGuard replay(autocast_dtype(), autocast_enabled());
      recomputed = matmul(g[0], g[0].transpose(0, 1)).dtype();
    }
    return std::vector<Tensor>{g[0]};
  });
  probe.sum().backward();
  EXPECT_FALSE(active_in_rule);
  EXPECT_EQ(recomputed, DType::kBF16);
  EXPECT_TRUE(autocast_active());
}

// ---- models ------------------------------------------------------------------------------------

/// One forward and backward of `model` under `half` autocast against the same model in
/// f32: the loss and every parameter gradient (all f32) agree within `tol` relative to
/// the reference's norm (plus tol·1e-2 absolute, for gradients that are zero up to rounding,
/// such as a convolution bias followed by batch norm), and buffers (batch-norm
/// statistics) stay f32 and close.
void expect_model_close(nn::Module& model, const Tensor& x, const Tensor& t, DType half, double tol) {
  SCOPED_TRACE(model.name() + " under " + std::string(dtype_name(half)));
  std::shared_ptr<nn::Module> reference = model.clone();
  Tensor loss;
  {
    AutocastGuard g(half);
    Tensor logits = model(x);
    EXPECT_EQ(logits.dtype(), half);  // the last layer is a linear
    loss = cross_entropy(logits, t);
  }
  ASSERT_EQ(loss.dtype(), DType::kF32);
  loss.backward();
  Tensor ref_loss = cross_entropy((*reference)(x), t);
  ref_loss.backward();
  EXPECT_NEAR(loss.item(), ref_loss.item(), tol * std::abs(ref_loss.item()));
  const auto got = model.named_parameters(), want = reference->named_parameters();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].second.dtype(), DType::kF32) << got[i].first;
    ASSERT_TRUE(got[i].second.grad().defined()) << got[i].first;
    EXPECT_EQ(got[i].second.grad().dtype(), DType::kF32) << got[i].first;
    const Tensor& g = got[i].second.grad();
    const Tensor& w = want[i].second.grad();
    const double want_norm = std::sqrt(sum(square(w.to(DType::kF64))).item());
    EXPECT_LE(relative_error(g, w) * want_norm, tol * (want_norm + 1e-2)) << got[i].first;
  }
  const auto gb = model.named_buffers(), wb = reference->named_buffers();
  for (size_t i = 0; i < gb.size(); ++i) {
    EXPECT_EQ(gb[i].second.dtype(), wb[i].second.dtype()) << gb[i].first;
    if (is_floating(wb[i].second.dtype())) {
      EXPECT_LE(relative_error(gb[i].second, wb[i].second), tol) << gb[i].first;
    }
  }
}

// Gradients pass through several layers of half activations (each rounded to 11 or 8
// significant bits): a few f16 ulps, and for bf16 up to ~10% on the first convolution,
// whose gradient sums products of bf16 activation gradients over the whole batch.
double mlp_tolerance(DType half) { return half == DType::kF16 ? 1e-2 : 5e-2; }
double cnn_tolerance(DType half) { return half == DType::kF16 ? 1e-2 : 1.5e-1; }

TEST(AutocastModels, MLPForwardBackwardCloseToF32) {
  for (DType half : kHalfTypes) {
    manual_seed(11);
    nn::models::MLP mlp({.in = 64, .hidden = {48, 32}, .out = 10});
    Tensor x = random_tensor({16, 64}, 21, DType::kF32);
    Tensor t = random_indices({16}, 10, 22);
    expect_model_close(mlp, x, t, half, mlp_tolerance(half));
  }
}

TEST(AutocastModels, CNNForwardBackwardCloseToF32) {
  for (DType half : kHalfTypes) {
    manual_seed(12);
    nn::models::CNN cnn({.in_channels = 1, .num_classes = 10, .image_size = 12, .hidden = 32});
    Tensor x = random_tensor({8, 1, 12, 12}, 31, DType::kF32);
    Tensor t = random_indices({8}, 10, 32);
    expect_model_close(cnn, x, t, half, cnn_tolerance(half));
    // Evaluation (running statistics) under autocast too.
    cnn.eval();
    Tensor ref;
    {
      autograd::NoGradGuard no_grad;
      ref = cnn(x);
      AutocastGuard g(half);
      Tensor y = cnn(x);
      EXPECT_EQ(y.dtype(), half);
      EXPECT_LE(relative_error(y, ref), cnn_tolerance(half));
    }
  }
}

}  // namespace
}  // namespace tandem
