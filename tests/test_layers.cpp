// Tests of layers/: Module bookkeeping (names, order, modes, in-place moves, state
// dicts and their errors), the layers' initialisation and forward, and MLP training.
#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/activation.h"
#include "layers/dropout.h"
#include "layers/embedding.h"
#include "layers/flatten.h"
#include "layers/linear.h"
#include "layers/models/mlp.h"
#include "layers/module.h"
#include "layers/sequential.h"
#include "optim/sgd.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::nn;
using tandem::testing::all_close;
using tandem::testing::random_tensor;

namespace {

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor>>& named) {
  std::vector<std::string> out;
  for (const auto& entry : named) out.push_back(entry.first);
  return out;
}

/// A custom module with a parameter, a buffer and two children.
class Block : public Module {
 public:
  Block() {
    scale = register_parameter("scale", ones({3}));
    count = register_buffer("count", zeros({1}, {.dtype = DType::kI64}));
    stats = register_buffer("stats", zeros({3}));
    fc = register_module("fc", std::make_shared<Linear>(3, 2));
    act = register_module("act", std::make_shared<ReLU>());
  }
  Tensor forward(const Tensor& x) override { return act->forward(fc->forward(x * scale)); }
  std::string name() const override { return "Block"; }

  Tensor scale, count, stats;
  std::shared_ptr<Linear> fc;
  std::shared_ptr<ReLU> act;
};

class Outer : public Module {
 public:
  Outer() {
    first = register_module("first", std::make_shared<Block>());
    head = register_module("head", std::make_shared<Sequential>(
                                       std::initializer_list<std::shared_ptr<Module>>{std::make_shared<Linear>(2, 2),
                                                                                     std::make_shared<Dropout>(0.5)}));
    bias = register_parameter("bias", zeros({2}));
  }
  std::shared_ptr<Block> first;
  std::shared_ptr<Sequential> head;
  Tensor bias;
};

}  // namespace

TEST(Module, NamedParametersOrderAndDottedNames) {
  Outer m;
  EXPECT_EQ(names_of(m.named_parameters()),
            (std::vector<std::string>{"bias", "first.scale", "first.fc.weight", "first.fc.bias", "head.0.weight",
                                      "head.0.bias"}));
  EXPECT_EQ(names_of(m.named_parameters(/*recurse=*/false)), (std::vector<std::string>{"bias"}));
  EXPECT_EQ(names_of(m.named_buffers()), (std::vector<std::string>{"first.count", "first.stats"}));
  EXPECT_EQ(m.parameters().size(), 6u);
  EXPECT_TRUE(m.parameters()[2].is_same(m.first->fc->weight()));
  ASSERT_EQ(m.children().size(), 2u);
  EXPECT_EQ(m.named_children()[1].first, "head");
  auto modules = m.named_modules();
  std::vector<std::string> module_names;
  for (auto& [n, mod] : modules) module_names.push_back(n);
  EXPECT_EQ(module_names, (std::vector<std::string>{"", "first", "first.fc", "first.act", "head", "head.0", "head.1"}));
  EXPECT_EQ(m.num_parameters(), 2 + 3 + 6 + 2 + 4 + 2);
  for (const Tensor& p : m.parameters()) EXPECT_TRUE(p.requires_grad());
  for (const Tensor& b : m.buffers()) EXPECT_FALSE(b.requires_grad());
}

namespace {

/// An embedding and an output head that share one weight, nanoGPT-style: the head
/// registers the embedding's tensor as its own parameter.
class TiedModel : public Module {
 public:
  TiedModel() {
    emb = register_module("emb", std::make_shared<Embedding>(7, 3));
    head = register_module("head", std::make_shared<Linear>(3, 7, false));
    tied = head->register_parameter("tied", emb->weight());
  }
  Tensor forward(const Tensor& idx) override { return linear(emb->forward(idx), tied); }
  std::shared_ptr<Embedding> emb;
  std::shared_ptr<Linear> head;
  Tensor tied;
};

}  // namespace

TEST(Module, ATensorRegisteredTwiceIsOneParameterButTwoStateEntries) {
  TiedModel m;
  EXPECT_EQ(names_of(m.named_parameters()), (std::vector<std::string>{"emb.weight", "head.weight"}));
  EXPECT_EQ(m.num_parameters(), 7 * 3 + 7 * 3);  // the tied tensor counted once
  StateDict sd = m.state_dict();
  ASSERT_EQ(sd.size(), 3u);
  EXPECT_EQ(sd[2].first, "head.tied");
  EXPECT_NO_THROW(m.load_state_dict(sd));  // strict: every name is the module's
  // An optimizer over parameters() steps the tied tensor once (it refuses duplicates).
  optim::SGD opt(m.parameters(), {.lr = 0.1});
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{1, 4}, {2});
  const Tensor before = m.emb->weight().detach().clone();
  sum(m(idx)).backward();
  const Tensor grad = m.emb->weight().grad().clone();
  opt.step();
  EXPECT_TRUE(all_close(m.emb->weight(), sub(before, mul(grad, 0.1)), 1e-6, 1e-6));
}

TEST(Module, RegistrationErrors) {
  Block b;
  try {
    b.register_parameter("scale", ones({1}));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("\"scale\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(b.register_buffer("fc", ones({1})), std::invalid_argument);
  EXPECT_THROW(b.register_parameter("a.b", ones({1})), std::invalid_argument);
  EXPECT_THROW(b.register_parameter("undefined", Tensor()), std::invalid_argument);
  EXPECT_THROW(b.register_module("null", std::shared_ptr<Module>()), std::invalid_argument);
}

TEST(Module, TrainEvalPropagates) {
  Outer m;
  EXPECT_TRUE(m.is_training());
  m.eval();
  for (auto& [name, mod] : m.named_modules()) EXPECT_FALSE(mod->is_training()) << name;
  m.train();
  for (auto& [name, mod] : m.named_modules()) EXPECT_TRUE(mod->is_training()) << name;
  m.head->train(false);
  EXPECT_FALSE((*m.head)[1]->is_training());
  EXPECT_TRUE(m.first->is_training());
}

TEST(Module, ToDTypeKeepsIdentity) {
  Outer m;
  Tensor w = m.first->fc->weight();
  optim::SGD opt(m.parameters(), {.lr = 0.1});
  std::vector<double> before = w.to_vector<double>();
  m.to(DType::kF64);
  EXPECT_TRUE(w.is_same(m.first->fc->weight()));
  EXPECT_EQ(w.dtype(), DType::kF64);
  EXPECT_EQ(opt.param_groups()[0].params[2].dtype(), DType::kF64);
  EXPECT_TRUE(w.requires_grad());
  EXPECT_TRUE(w.is_leaf());
  EXPECT_EQ(w.to_vector<double>(), before);  // f32 -> f64 is exact
  EXPECT_EQ(m.first->count.dtype(), DType::kI64);  // integer buffers keep their type
  EXPECT_EQ(m.first->stats.dtype(), DType::kF64);
  EXPECT_THROW(m.to(DType::kI32), std::invalid_argument);

  // Forward, backward and an optimizer step all work on the moved parameters.
  Tensor x = random_tensor({4, 3}, 1);
  Tensor y = m.first->forward(x);
  sum(y).backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().dtype(), DType::kF64);
  opt.step();
  EXPECT_NE(w.to_vector<double>(), before);
  // Gradients move with their parameters.
  m.to(DType::kF32);
  EXPECT_EQ(w.grad().dtype(), DType::kF32);
}

TEST(Module, ToCpuDeviceIsANoOp) {
  Block b;
  Tensor w = b.fc->weight();
  void* ptr = w.data_ptr();
  b.to(Device::cpu());
  EXPECT_EQ(w.data_ptr(), ptr);
}

TEST(Module, ZeroGrad) {
  Block b;
  sum(b.forward(random_tensor({2, 3}, 2, DType::kF32))).backward();
  ASSERT_TRUE(b.fc->weight().grad().defined());
  b.zero_grad(/*set_to_none=*/false);
  for (double v : b.fc->weight().grad().to_vector<double>()) EXPECT_EQ(v, 0.0);
  b.zero_grad();
  EXPECT_FALSE(b.fc->weight().grad().defined());
}

TEST(Module, StateDictRoundTrip) {
  Outer a, b;
  a.first->stats.copy_(Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}));
  StateDict sd = a.state_dict();
  // torch's order: each module's parameters, then its buffers, then its children.
  EXPECT_EQ(names_of(sd), (std::vector<std::string>{"bias", "first.scale", "first.count", "first.stats",
                                                    "first.fc.weight", "first.fc.bias", "head.0.weight", "head.0.bias"}));
  // The state dict shares data with the module, like PyTorch's.
  EXPECT_EQ(sd[4].second.data_ptr(), a.first->fc->weight().data_ptr());
  EXPECT_FALSE(sd[4].second.requires_grad());

  Tensor bw = b.first->fc->weight();
  void* ptr = bw.data_ptr();
  b.load_state_dict(sd);
  EXPECT_EQ(bw.data_ptr(), ptr);  // copied in place
  for (size_t i = 0; i < sd.size(); ++i) {
    EXPECT_EQ(b.state_dict()[i].second.to_vector<double>(), sd[i].second.to_vector<double>()) << sd[i].first;
  }
  a.eval();
  b.eval();
  Tensor x = random_tensor({5, 3}, 3, DType::kF32);
  EXPECT_TRUE(all_close(b.first->forward(x), a.first->forward(x), 0, 0));
}

TEST(Module, LoadStateDictConvertsDType) {
  Linear a(3, 2), b(3, 2);
  a.to(DType::kF64);
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(b.weight().dtype(), DType::kF32);
  EXPECT_TRUE(all_close(b.weight().to(DType::kF64), a.weight(), 1e-7, 1e-6));
}

TEST(Module, LoadStateDictReportsEveryProblemAtOnce) {
  Block b;
  Tensor before = b.fc->weight().clone();
  StateDict sd = b.state_dict();
  StateDict bad;
  for (auto& [name, t] : sd) {
    if (name == "scale") continue;                                      // missing
    if (name == "fc.weight") t = zeros({3, 2});                         // wrong shape
    bad.emplace_back(name, t);
  }
  bad.emplace_back("fc.extra", zeros({1}));                             // unexpected
  try {
    b.load_state_dict(bad);
    FAIL();
  } catch (const std::invalid_argument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("[Block::load_state_dict]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing keys: scale"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected keys: fc.extra"), std::string::npos) << msg;
    EXPECT_NE(msg.find("fc.weight (expected shape [2, 3], got [3, 2])"), std::string::npos) << msg;
  }
  // Nothing was copied.
  EXPECT_TRUE(all_close(b.fc->weight(), before, 0, 0));

  // Non-strict: missing and unexpected keys are allowed, shape mismatches are not.
  StateDict partial;
  partial.emplace_back("fc.bias", full({2}, 7.0));
  partial.emplace_back("other", zeros({1}));
  b.load_state_dict(partial, /*strict=*/false);
  EXPECT_EQ(b.fc->bias().to_vector<double>(), (std::vector<double>{7.0, 7.0}));
  StateDict wrong_shape;
  wrong_shape.emplace_back("fc.bias", zeros({3}));
  EXPECT_THROW(b.load_state_dict(wrong_shape, /*strict=*/false), std::invalid_argument);
}

// ---- layers ---------------------------------------------------------------------------

TEST(Linear, InitialisationBoundsLikePyTorch) {
  manual_seed(123);
  Linear fc(400, 300);
  const double bound = 1.0 / std::sqrt(400.0);
  auto w = fc.weight().to_vector<double>();
  double sq = 0, mx = 0;
  for (double v : w) {
    mx = std::max(mx, std::abs(v));
    sq += v * v;
  }
  EXPECT_LE(mx, bound);
  EXPECT_GT(mx, 0.99 * bound);
  // U(-b, b) has standard deviation b/sqrt(3).
  EXPECT_NEAR(std::sqrt(sq / w.size()), bound / std::sqrt(3.0), 0.01 * bound);
  for (double v : fc.bias().to_vector<double>()) EXPECT_LE(std::abs(v), bound);
  EXPECT_EQ(fc.weight().shape(), (Shape{300, 400}));
  EXPECT_EQ(fc.bias().shape(), (Shape{300}));
  Linear no_bias(4, 5, /*bias=*/false);
  EXPECT_FALSE(no_bias.bias().defined());
  EXPECT_EQ(no_bias.parameters().size(), 1u);
  EXPECT_THROW(Linear(0, 3), std::invalid_argument);
}

TEST(Linear, SeededInitIsReproducible) {
  manual_seed(5);
  Linear a(6, 4);
  manual_seed(5);
  Linear b(6, 4);
  EXPECT_TRUE(all_close(a.weight(), b.weight(), 0, 0));
  EXPECT_TRUE(all_close(a.bias(), b.bias(), 0, 0));
}

TEST(Linear, ForwardAndGradcheck) {
  Linear fc(5, 3);
  fc.to(DType::kF64);
  Tensor x = random_tensor({4, 5}, 9);
  Tensor want = add(matmul(x, transpose(fc.weight(), 0, 1)), fc.bias());
  EXPECT_TRUE(all_close(fc(x), want, 1e-12, 1e-12));
  Tensor x3 = random_tensor({2, 4, 5}, 10);
  EXPECT_EQ(fc(x3).shape(), (Shape{2, 4, 3}));

  Tensor xin = random_tensor({3, 5}, 11).set_requires_grad(true);
  EXPECT_TRUE(tandem::testing::gradcheck(
      [&](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); },
      {xin, fc.weight(), fc.bias()}));
}

TEST(Activations, MatchOps) {
  Tensor x = random_tensor({3, 4}, 12);
  EXPECT_TRUE(all_close(ReLU()(x), relu(x), 0, 0));
  EXPECT_TRUE(all_close(GELU()(x), gelu(x), 0, 0));
  EXPECT_TRUE(all_close(GELU(true)(x), gelu(x, true), 0, 0));
  EXPECT_TRUE(all_close(Tanh()(x), tanh(x), 0, 0));
  EXPECT_TRUE(all_close(Sigmoid()(x), sigmoid(x), 0, 0));
}

TEST(Dropout, TrainAndEval) {
  Dropout d(0.5);
  Tensor x = ones({4000});
  Tensor y = d(x);
  auto v = y.to_vector<double>();
  int64_t zeros_count = 0;
  for (double e : v) {
    if (e == 0.0) {
      ++zeros_count;
    } else {
      EXPECT_DOUBLE_EQ(e, 2.0);
    }
  }
  EXPECT_NEAR(zeros_count / 4000.0, 0.5, 0.05);
  d.eval();
  EXPECT_TRUE(d(x).is_same(x));
  EXPECT_THROW(Dropout(1.0), std::invalid_argument);
  EXPECT_THROW(Dropout(-0.1), std::invalid_argument);
}

TEST(Flatten, KeepsBatchDim) {
  Tensor x = random_tensor({2, 1, 4, 3}, 13);
  EXPECT_EQ(Flatten()(x).shape(), (Shape{2, 12}));
  EXPECT_EQ(Flatten(0)(x).shape(), (Shape{24}));
  EXPECT_EQ(Flatten(1, 2)(x).shape(), (Shape{2, 4, 3}));
}

TEST(Sequential, NamesAndOrder) {
  auto seq = std::make_shared<Sequential>(std::initializer_list<std::shared_ptr<Module>>{
      std::make_shared<Linear>(4, 3), std::make_shared<Tanh>()});
  seq->push_back(std::make_shared<Linear>(3, 2));
  EXPECT_EQ(seq->size(), 3u);
  EXPECT_EQ(names_of(seq->named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
  seq->to(DType::kF64);
  Tensor x = random_tensor({5, 4}, 14);
  Tensor want = (*seq)[2]->forward(tanh((*seq)[0]->forward(x)));
  EXPECT_TRUE(all_close((*seq)(x), want, 0, 0));
  int count = 0;
  for (const auto& m : *seq) count += m != nullptr;
  EXPECT_EQ(count, 3);
}

/// A ReLU subclass that does something else: never fused, its forward must run.
class ScaledReLU : public ReLU {
 public:
  Tensor forward(const Tensor& input) override { return ReLU::forward(input) * 2.0; }
};

TEST(Sequential, FusesLinearWithReluAndGeluIntoOneOp) {
  auto make = [] {
    manual_seed(31);
    return std::make_shared<Sequential>(std::initializer_list<std::shared_ptr<Module>>{
        std::make_shared<Linear>(6, 8), std::make_shared<ReLU>(), std::make_shared<Linear>(8, 8),
        std::make_shared<GELU>(), std::make_shared<Linear>(8, 5), std::make_shared<GELU>(true),
        std::make_shared<Linear>(5, 3), std::make_shared<Tanh>()});
  };
  auto fused = make(), plain = make();
  fused->to(DType::kF64);
  plain->to(DType::kF64);
  plain->set_fuse_activations(false);
  EXPECT_TRUE(fused->fuse_activations());
  Tensor x = random_tensor({7, 6}, 32);
  Tensor yf = (*fused)(x), yp = (*plain)(x);
  EXPECT_TRUE(all_close(yf, yp, 1e-12, 1e-12));
  Tensor dy = random_tensor({7, 3}, 33);
  yf.backward(dy);
  yp.backward(dy);
  auto pf = fused->parameters(), pp = plain->parameters();
  ASSERT_EQ(pf.size(), pp.size());
  for (size_t i = 0; i < pf.size(); ++i) EXPECT_TRUE(all_close(pf[i].grad(), pp[i].grad(), 1e-12, 1e-12)) << i;

  // The fused pair leaves one autograd node, named after linear.
  auto pair = [](bool fuse) {
    Sequential seq{std::make_shared<Linear>(4, 3), std::make_shared<ReLU>()};
    seq.set_fuse_activations(fuse);
    return seq(random_tensor({2, 4}, 34, DType::kF32)).grad_fn()->name();
  };
  EXPECT_EQ(pair(true), "linear");
  EXPECT_EQ(pair(false), "relu");
  // A module that only derives from ReLU runs its own forward.
  Sequential custom{std::make_shared<Linear>(4, 3), std::make_shared<ScaledReLU>()};
  Tensor xc = random_tensor({2, 4}, 35, DType::kF32);
  auto& lin = static_cast<Linear&>(*custom[0]);
  EXPECT_TRUE(all_close(custom(xc), relu(lin(xc)) * 2.0, 0, 0));
}

TEST(Sequential, FusionSurvivesCloneAndCheckpointSegments) {
  manual_seed(36);
  Sequential seq{std::make_shared<Linear>(4, 6), std::make_shared<GELU>(), std::make_shared<Linear>(6, 6),
                 std::make_shared<ReLU>(), std::make_shared<Linear>(6, 2)};
  seq.set_fuse_activations(false);
  auto copy = std::static_pointer_cast<Sequential>(seq.clone());
  EXPECT_FALSE(copy->fuse_activations());
  // Segments fuse inside their groups, following the parent's setting before and after.
  Tensor x = random_tensor({3, 4}, 37, DType::kF32);
  Tensor want = seq(x);
  seq.set_fuse_activations(true);
  seq.set_checkpoint_segments(2);  // groups {Linear, GELU, Linear} and {ReLU, Linear}
  EXPECT_TRUE(all_close(seq(x), want, 1e-6, 1e-6));
  seq.set_fuse_activations(false);
  EXPECT_TRUE(all_close(seq(x), want, 0, 0));
}

TEST(Embedding, LookupAndPadding) {
  Embedding emb(10, 4, /*padding_idx=*/2);
  EXPECT_EQ(emb.weight().shape(), (Shape{10, 4}));
  auto row2 = emb.weight().narrow(0, 2, 1).to_vector<double>();
  for (double v : row2) EXPECT_EQ(v, 0.0);
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{1, 2, 9, 1, 0, 3}, {2, 3});
  Tensor y = emb(idx);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 4}));
  auto yv = y.to_vector<double>();
  auto w = emb.weight().to_vector<double>();
  for (int j = 0; j < 4; ++j) EXPECT_EQ(yv[2 * 4 + j], w[9 * 4 + j]);
  EXPECT_THROW(Embedding(10, 4, 10), std::invalid_argument);
}

// ---- MLP --------------------------------------------------------------------------------

TEST(MLP, StructureAndForwardShape) {
  models::MLP mlp;
  EXPECT_EQ(names_of(mlp.named_parameters()),
            (std::vector<std::string>{"1.weight", "1.bias", "3.weight", "3.bias"}));
  EXPECT_EQ(mlp.num_parameters(), 784 * 256 + 256 + 256 * 10 + 10);
  Tensor x = random_tensor({8, 1, 28, 28}, 15, DType::kF32);
  EXPECT_EQ(mlp(x).shape(), (Shape{8, 10}));

  models::MLP deep({.in = 12, .hidden = {8, 6}, .out = 3, .dropout = 0.1});
  // Flatten, (Linear, ReLU, Dropout) x 2, Linear
  EXPECT_EQ(deep.size(), 8u);
  EXPECT_EQ(names_of(deep.named_parameters()),
            (std::vector<std::string>{"1.weight", "1.bias", "4.weight", "4.bias", "7.weight", "7.bias"}));
  EXPECT_EQ(deep(random_tensor({2, 3, 4}, 16, DType::kF32)).shape(), (Shape{2, 3}));
}

TEST(MLP, TrainingReducesLoss) {
  manual_seed(2024);
  // Three Gaussian blobs in 6-D; class k is centred on 2·e_k.
  const int64_t n = 96, d = 6;
  Tensor x = randn({n, d});
  std::vector<int64_t> labels(n);
  {
    float* xd = x.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      labels[i] = i % 3;
      xd[i * d + labels[i]] += 2.0f;
    }
  }
  Tensor y = Tensor::from_vector(labels, {n});
  models::MLP mlp({.in = d, .hidden = {16}, .out = 3});
  optim::SGD opt(mlp.parameters(), {.lr = 0.1, .momentum = 0.9});
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy(mlp(x), y);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item();
    last = loss.item();
  }
  EXPECT_LT(last, 0.25 * first) << "first " << first << " last " << last;
  Tensor pred = argmax(mlp(x), 1);
  auto p = pred.to_vector<int64_t>();
  int correct = 0;
  for (int64_t i = 0; i < n; ++i) correct += p[i] == labels[i];
  EXPECT_GE(correct, 90);
}
