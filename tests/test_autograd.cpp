// Autograd engine: accumulation, hooks, callbacks, ordering, grad mode and errors.
#include <gtest/gtest.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "test_util.h"

using namespace tandem;
using tandem::testing::all_close;

TEST(Autograd, SimpleChainRule) {
  Tensor x = Tensor::from_vector<double>({1, 2, 3}, {3}).set_requires_grad(true);
  Tensor y = (x * x * 3.0).sum();  // dy/dx = 6x
  y.backward();
  EXPECT_TRUE(all_close(x.grad(), Tensor::from_vector<double>({6, 12, 18}, {3})));
  EXPECT_TRUE(x.is_leaf());
  EXPECT_FALSE(y.is_leaf());
  EXPECT_EQ(y.grad_fn()->name(), "sum");
}

TEST(Autograd, GradientsAccumulateAcrossBackwards) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  (x * 2.0).sum().backward();
  (x * 3.0).sum().backward();
  EXPECT_TRUE(all_close(x.grad(), Tensor::from_vector<double>({5, 5}, {2})));
}

TEST(Autograd, TensorUsedTwiceSumsItsGradients) {
  Tensor x = Tensor::from_vector<double>({2}, {1}).set_requires_grad(true);
  Tensor y = x * x + x;  // 2x + 1
  y.sum().backward();
  EXPECT_DOUBLE_EQ(x.grad().item(), 5.0);
}

TEST(Autograd, AccumulatedGradIsNotAliasedWithOtherLeaves) {
  // add's backward hands the same gradient to both inputs; accumulating into one
  // must not change the other.
  Tensor a = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  Tensor b = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  (a + b).sum().backward();
  (a * 10.0).sum().backward();
  EXPECT_DOUBLE_EQ(a.grad().item(), 11.0);
  EXPECT_DOUBLE_EQ(b.grad().item(), 1.0);
}

TEST(Autograd, PostAccumulateHooksSeeTheFinalGradient) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  std::vector<double> seen;
  int calls = 0;
  int id = x.register_post_accumulate_grad_hook([&](Tensor& leaf) {
    ++calls;
    seen = leaf.grad().to_vector<double>();
  });
  (x * x).sum().backward();
  EXPECT_EQ(calls, 1);  // once per backward even though x is used twice
  EXPECT_EQ(seen, (std::vector<double>{2, 4}));
  x.remove_hook(id);
  (x * x).sum().backward();
  EXPECT_EQ(calls, 1);
}

TEST(Autograd, HooksFireInReverseOrderOfUse) {
  // Like DDP's buckets: the last layer's parameters become ready first.
  Tensor w1 = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  Tensor w2 = Tensor::from_vector<double>({2}, {1}).set_requires_grad(true);
  Tensor w3 = Tensor::from_vector<double>({3}, {1}).set_requires_grad(true);
  std::vector<int> order;
  w1.register_post_accumulate_grad_hook([&](Tensor&) { order.push_back(1); });
  w2.register_post_accumulate_grad_hook([&](Tensor&) { order.push_back(2); });
  w3.register_post_accumulate_grad_hook([&](Tensor&) { order.push_back(3); });
  Tensor x = Tensor::from_vector<double>({0.5}, {1});
  Tensor h = tanh(x * w1);
  h = tanh(h * w2);
  h = tanh(h * w3);
  h.sum().backward();
  EXPECT_EQ(order, (std::vector<int>{3, 2, 1}));
}

TEST(Autograd, EndOfBackwardCallbacksRunAfterEveryNode) {
  Tensor a = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  Tensor b = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  std::vector<std::string> log;
  a.register_post_accumulate_grad_hook([&](Tensor&) {
    log.push_back("hook a");
    autograd::queue_callback([&] {
      log.push_back("callback");
      autograd::queue_callback([&] { log.push_back("nested"); });
    });
  });
  b.register_post_accumulate_grad_hook([&](Tensor&) { log.push_back("hook b"); });
  (exp(a) * b).sum().backward();
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(log[2], "callback");
  EXPECT_EQ(log[3], "nested");
  EXPECT_THROW(autograd::queue_callback([] {}), std::logic_error);
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  {
    autograd::NoGradGuard guard;
    Tensor y = x * 2.0;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
  }
  EXPECT_TRUE((x * 2.0).requires_grad());
}

TEST(Autograd, SecondBackwardThroughFreedGraphIsAnError) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor y = (exp(x)).sum();
  y.backward();
  try {
    y.backward();
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("second time"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("retain_graph"), std::string::npos) << e.what();
  }
}

TEST(Autograd, RetainGraphAllowsASecondBackward) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor y = exp(x).sum();
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  EXPECT_TRUE(all_close(x.grad(), exp(x.detach()) * 2.0));
}

TEST(Autograd, NonScalarRootNeedsASeedGradient) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor y = x * 2.0;
  try {
    y.backward();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[2]"), std::string::npos) << e.what();
  }
  y.backward(Tensor::from_vector<double>({1, 10}, {2}));
  EXPECT_TRUE(all_close(x.grad(), Tensor::from_vector<double>({2, 20}, {2})));
  EXPECT_THROW(y.backward(zeros({3}, {.dtype = DType::kF64})), std::invalid_argument);
}

TEST(Autograd, BackwardOnATensorWithoutGradIsAnError) {
  Tensor x = Tensor::from_vector<double>({1}, {1});
  EXPECT_THROW((x * 2.0).sum().backward(), std::invalid_argument);
}

TEST(Autograd, OnlyFloatingLeavesCanRequireGrad) {
  Tensor i = arange(3);
  EXPECT_THROW(i.set_requires_grad(true), std::invalid_argument);
  Tensor x = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  Tensor y = x * 2.0;
  EXPECT_THROW(y.set_requires_grad(false), std::invalid_argument);
}

TEST(Autograd, DetachCutsTheGraphButSharesData) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor d = (x * 2.0).detach();
  EXPECT_FALSE(d.requires_grad());
  Tensor y = (x * d).sum();
  y.backward();
  EXPECT_TRUE(all_close(x.grad(), Tensor::from_vector<double>({2, 4}, {2})));
}

TEST(Autograd, GradOfUnusedLeafStaysUndefined) {
  Tensor a = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  Tensor b = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  (a * 2.0).sum().backward();
  EXPECT_TRUE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
}

TEST(Autograd, GradientsThroughDtypeAndCloneFlowBack) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor y = x.to(DType::kF32).clone() * 3.0;
  y.to(DType::kF64).sum().backward();
  EXPECT_EQ(x.grad().dtype(), DType::kF64);
  EXPECT_TRUE(all_close(x.grad(), Tensor::from_vector<double>({3, 3}, {2})));
}
