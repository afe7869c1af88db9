// Tests of Module::clone: every built-in layer and model copies its configuration,
// parameters, buffers and training flags into independent storage, gives the same
// outputs, and leaves the default generator where it was; modules without clone()
// fail with an error that names them.
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/dropout.h"
#include "layers/embedding.h"
#include "layers/flatten.h"
#include "layers/linear.h"
#include "layers/attention.h"
#include "layers/models/cnn.h"
#include "layers/models/gpt.h"
#include "layers/models/mlp.h"
#include "layers/models/resnet.h"
#include "layers/norm.h"
#include "layers/pool.h"
#include "layers/sequential.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::nn;
using tandem::testing::all_close;
using tandem::testing::expect_invalid;
using tandem::testing::random_indices;
using tandem::testing::random_tensor;

namespace {

struct Case {
  std::string label;
  std::function<std::shared_ptr<Module>()> make;
  std::function<Tensor()> input;  // null for a container without a forward of its own
};

Tensor floats(const Shape& shape, uint64_t seed) { return random_tensor(shape, seed, DType::kF32); }

std::vector<Case> builtin_cases() {
  return {
      {"Linear", [] { return std::make_shared<Linear>(5, 3); }, [] { return floats({4, 5}, 1); }},
      {"LinearNoBias", [] { return std::make_shared<Linear>(5, 3, false); }, [] { return floats({4, 5}, 2); }},
      {"ReLU", [] { return std::make_shared<ReLU>(); }, [] { return floats({4, 5}, 3); }},
      {"GELU", [] { return std::make_shared<GELU>(true); }, [] { return floats({4, 5}, 4); }},
      {"Tanh", [] { return std::make_shared<Tanh>(); }, [] { return floats({4, 5}, 5); }},
      {"Sigmoid", [] { return std::make_shared<Sigmoid>(); }, [] { return floats({4, 5}, 6); }},
      {"Dropout", [] { return std::make_shared<Dropout>(0.3); }, [] { return floats({4, 5}, 7); }},
      {"Flatten", [] { return std::make_shared<Flatten>(1, 2); }, [] { return floats({2, 3, 4, 2}, 8); }},
      {"Sequential",
       [] {
         return std::make_shared<Sequential>(std::initializer_list<std::shared_ptr<Module>>{
             std::make_shared<Linear>(5, 6), std::make_shared<ReLU>(), std::make_shared<Linear>(6, 2)});
       },
       [] { return floats({4, 5}, 9); }},
      {"Embedding", [] { return std::make_shared<Embedding>(10, 4, 2); },
       [] { return random_indices({3, 5}, 10, 10); }},
      {"Conv2d",
       [] { return std::make_shared<Conv2d>(3, 4, Int2(3, 2), Conv2dOptions{.stride = 2, .padding = 1}); },
       [] { return floats({2, 3, 7, 6}, 11); }},
      {"Conv2dGroupsNoBias",
       [] { return std::make_shared<Conv2d>(4, 6, 3, Conv2dOptions{.groups = 2}, false); },
       [] { return floats({2, 4, 5, 5}, 12); }},
      {"MaxPool2d", [] { return std::make_shared<MaxPool2d>(2, MaxPool2dOptions{.stride = 1}); },
       [] { return floats({2, 3, 5, 5}, 13); }},
      {"AvgPool2d", [] { return std::make_shared<AvgPool2d>(3); }, [] { return floats({2, 3, 6, 6}, 14); }},
      {"AdaptiveAvgPool2d", [] { return std::make_shared<AdaptiveAvgPool2d>(Int2(2, 3)); },
       [] { return floats({2, 3, 6, 7}, 15); }},
      {"BatchNorm1d", [] { return std::make_shared<BatchNorm1d>(5); }, [] { return floats({6, 5}, 16); }},
      {"BatchNorm2dNoMomentum",
       [] { return std::make_shared<BatchNorm2d>(3, BatchNormOptions{.eps = 1e-3, .momentum = std::nullopt}); },
       [] { return floats({4, 3, 3, 3}, 17); }},
      {"LayerNorm", [] { return std::make_shared<LayerNorm>(Shape{3, 4}, 1e-4); },
       [] { return floats({2, 3, 4}, 18); }},
      {"LayerNormNoAffine", [] { return std::make_shared<LayerNorm>(Shape{4}, 1e-5, false); },
       [] { return floats({2, 3, 4}, 19); }},
      {"BasicBlock", [] { return std::make_shared<BasicBlock>(4, 8, 2); }, [] { return floats({2, 4, 6, 6}, 20); }},
      {"MLP", [] { return std::make_shared<models::MLP>(models::MLPOptions{.in = 12, .hidden = {8, 6}, .out = 3, .dropout = 0.2}); },
       [] { return floats({5, 3, 4}, 21); }},
      {"CNN",
       [] {
         return std::make_shared<models::CNN>(
             models::CNNOptions{.in_channels = 1, .num_classes = 5, .image_size = 8, .hidden = 16});
       },
       [] { return floats({3, 1, 8, 8}, 22); }},
      {"ResNet18", [] { return std::make_shared<models::ResNet18>(models::ResNetOptions{.in_channels = 1}); },
       [] { return floats({2, 1, 8, 8}, 23); }},
      {"CausalSelfAttention", [] { return std::make_shared<CausalSelfAttention>(8, 2, 0.3); },
       [] { return floats({2, 5, 8}, 24); }},
      {"TransformerBlock", [] { return std::make_shared<TransformerBlock>(8, 4, 0.2); },
       [] { return floats({2, 3, 8}, 25); }},
      {"ModuleDict",
       [] {
         auto dict = std::make_shared<ModuleDict>();
         dict->insert("a", std::make_shared<Linear>(4, 3));
         dict->insert("b", std::make_shared<LayerNorm>(Shape{3}));
         return dict;
       },
       nullptr},
      {"GPT",
       [] {
         return std::make_shared<models::GPT>(
             models::GPTOptions{.vocab_size = 11, .block_size = 6, .n_layer = 2, .n_head = 2, .n_embd = 8, .dropout = 0.1});
       },
       [] { return random_indices({2, 6}, 11, 26); }},
  };
}

/// Runs `m` on `x` with the CPU generator at a fixed state, so dropout draws the same
/// mask for the original and the clone.
Tensor run_at_fixed_rng(Module& m, const Tensor& x) {
  Generator& gen = default_generator(Device::cpu());
  PhiloxState saved = gen.state();
  gen.set_state({1234, 0});
  Tensor y = m.forward(x);
  gen.set_state(saved);
  return y;
}

/// Puts the original into a state no fresh construction has: random parameter and
/// floating-buffer values, counters that moved.
void make_distinct(Module& m, uint64_t seed) {
  autograd::NoGradGuard no_grad;
  for (auto& [name, t] : m.state_dict()) {
    if (is_floating(t.dtype())) {
      t.copy_(random_tensor(t.shape(), seed++, t.dtype(), t.device(), 0.5, 1.5));
    } else {
      t.fill_(7.0);
    }
  }
}

}  // namespace

TEST(ModuleClone, EveryBuiltinLayerAndModelCopiesStateIntoIndependentStorage) {
  for (const Case& c : builtin_cases()) {
    SCOPED_TRACE(c.label);
    std::shared_ptr<Module> original = c.make();
    make_distinct(*original, 100);
    // A child in eval mode checks that per-module training flags are copied.
    auto modules = original->named_modules();
    if (modules.size() > 1) modules.back().second->eval();

    const PhiloxState before = default_generator(Device::cpu()).state();
    std::shared_ptr<Module> copy = original->clone();
    const PhiloxState after = default_generator(Device::cpu()).state();
    EXPECT_EQ(before.seed, after.seed);
    EXPECT_EQ(before.offset, after.offset);

    ASSERT_TRUE(copy);
    EXPECT_NE(copy.get(), original.get());
    EXPECT_EQ(copy->name(), original->name());
    const Module& made = *copy;
    const Module& orig = *original;
    EXPECT_EQ(typeid(made), typeid(orig));

    StateDict want = original->state_dict();
    StateDict got = copy->state_dict();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      SCOPED_TRACE(want[i].first);
      EXPECT_EQ(got[i].first, want[i].first);
      EXPECT_EQ(got[i].second.dtype(), want[i].second.dtype());
      EXPECT_TRUE(got[i].second.device() == want[i].second.device());
      EXPECT_TRUE(all_close(got[i].second, want[i].second, 0.0, 0.0));
      EXPECT_NE(got[i].second.storage().get(), want[i].second.storage().get());
    }
    auto want_params = original->named_parameters();
    auto got_params = copy->named_parameters();
    ASSERT_EQ(got_params.size(), want_params.size());
    for (size_t i = 0; i < want_params.size(); ++i) {
      EXPECT_TRUE(got_params[i].second.is_leaf());
      EXPECT_EQ(got_params[i].second.requires_grad(), want_params[i].second.requires_grad());
    }
    auto got_modules = copy->named_modules();
    ASSERT_EQ(got_modules.size(), modules.size());
    for (size_t i = 0; i < modules.size(); ++i) {
      EXPECT_EQ(got_modules[i].first, modules[i].first);
      EXPECT_EQ(got_modules[i].second->is_training(), modules[i].second->is_training()) << modules[i].first;
    }

    if (!c.input) continue;  // a container without a forward of its own
    // Same outputs, in training mode (batch statistics, dropout at a fixed state) and eval.
    Tensor x = c.input();
    for (bool training : {true, false}) {
      original->train(training);
      copy->train(training);
      EXPECT_TRUE(all_close(run_at_fixed_rng(*copy, x), run_at_fixed_rng(*original, x), 0.0, 0.0))
          << "training " << training;
    }
    // The training forward above moved both modules' running statistics alike.
    StateDict moved = copy->state_dict();
    StateDict moved_want = original->state_dict();
    for (size_t i = 0; i < moved.size(); ++i) EXPECT_TRUE(all_close(moved[i].second, moved_want[i].second, 0.0, 0.0));

    // Writing into the clone leaves the original alone.
    StateDict snapshot;
    for (auto& [name, t] : original->state_dict()) snapshot.emplace_back(name, t.clone());
    {
      autograd::NoGradGuard no_grad;
      for (auto& [name, t] : copy->state_dict()) t.fill_(3.0);
    }
    StateDict now = original->state_dict();
    for (size_t i = 0; i < now.size(); ++i) EXPECT_TRUE(all_close(now[i].second, snapshot[i].second, 0.0, 0.0));
  }
}

TEST(ModuleClone, CopiesDTypeRequiresGradButNotGradients) {
  auto lin = std::make_shared<Linear>(4, 3);
  lin->to(DType::kF64);
  Tensor w = lin->weight();
  w.set_requires_grad(false);
  Tensor x = random_tensor({2, 4}, 5);
  lin->forward(x).sum().backward();
  ASSERT_TRUE(lin->bias().grad().defined());

  auto copy = std::dynamic_pointer_cast<Linear>(lin->clone());
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->weight().dtype(), DType::kF64);
  EXPECT_EQ(copy->bias().dtype(), DType::kF64);
  EXPECT_FALSE(copy->weight().requires_grad());
  EXPECT_TRUE(copy->bias().requires_grad());
  EXPECT_FALSE(copy->bias().grad().defined());
  // The typed members and the registered parameters are the same tensors.
  EXPECT_TRUE(copy->weight().is_same(copy->named_parameters()[0].second));
  EXPECT_TRUE(all_close(copy->forward(x), lin->forward(x), 0.0, 0.0));
}

TEST(ModuleClone, DoesNotCopyBatchNormSyncHook) {
  struct NoSync : BatchNormSync {
    Tensor forward(const BatchNormBase&, const Tensor& input, double) override { return input; }
  };
  auto bn = std::make_shared<BatchNorm2d>(3);
  bn->set_sync(std::make_shared<NoSync>());
  auto copy = std::dynamic_pointer_cast<BatchNorm2d>(bn->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(bn->sync() != nullptr);
  EXPECT_TRUE(copy->sync() == nullptr);
}

TEST(ModuleClone, RandomStreamsAreUntouched) {
  manual_seed(42);
  Tensor a1 = Tensor::empty({16});
  uniform_(a1, 0.0, 1.0);
  manual_seed(42);
  auto model = std::make_shared<models::MLP>(models::MLPOptions{.in = 6, .hidden = {5}, .out = 2});
  manual_seed(42);
  (void)model->clone();
  Tensor a2 = Tensor::empty({16});
  uniform_(a2, 0.0, 1.0);
  EXPECT_TRUE(all_close(a2, a1, 0.0, 0.0));
}

namespace {

/// A user module that does not override clone().
class Custom : public Module {
 public:
  Custom() { w = register_parameter("w", ones({3})); }
  Tensor forward(const Tensor& x) override { return x * w; }
  std::string name() const override { return "Custom"; }
  Tensor w;
};

/// Derives from a layer that has clone() but does not override it.
class MyLinear : public Linear {
 public:
  MyLinear() : Linear(3, 2) {}
  std::string name() const override { return "MyLinear"; }
};

/// A user module that does override clone(), through clone_via.
class Scaled : public Module {
 public:
  explicit Scaled(double factor) : factor_(factor) { w = register_parameter("w", random_tensor({3}, 9, DType::kF32)); }
  Tensor forward(const Tensor& x) override { return x * w * factor_; }
  std::string name() const override { return "Scaled"; }
  std::shared_ptr<Module> clone() const override {
    return clone_via([this] { return std::make_shared<Scaled>(factor_); });
  }
  Tensor w;

 private:
  double factor_;
};

}  // namespace

TEST(ModuleClone, ModuleWithoutCloneNamesItself) {
  Custom custom;
  expect_invalid([&] { custom.clone(); }, {"[Module::clone]", "Custom", "override clone()"});
  MyLinear mine;
  expect_invalid([&] { mine.clone(); }, {"MyLinear", "inherits clone() from Linear"});
  Sequential seq({std::make_shared<Linear>(3, 3), std::make_shared<Custom>()});
  expect_invalid([&] { seq.clone(); }, {"Custom"});
}

TEST(ModuleClone, UserModuleWithCloneVia) {
  Scaled s(2.5);
  {
    autograd::NoGradGuard no_grad;
    Tensor w = s.w;
    w.fill_(0.75);
  }
  auto copy = std::dynamic_pointer_cast<Scaled>(s.clone());
  ASSERT_TRUE(copy);
  Tensor x = random_tensor({2, 3}, 3, DType::kF32);
  EXPECT_TRUE(all_close(copy->forward(x), s.forward(x), 0.0, 0.0));
}

TEST(ModuleClone, StructureChangedAfterConstructionIsReported) {
  // An MLP is a Sequential: a layer pushed after construction is not rebuilt by MLP's
  // constructor, and the copy says so instead of silently dropping it.
  auto mlp = std::make_shared<models::MLP>(models::MLPOptions{.in = 4, .hidden = {3}, .out = 2});
  mlp->push_back(std::make_shared<Linear>(2, 2));
  expect_invalid([&] { mlp->clone(); }, {"[MLP::clone]", "children"});
}
