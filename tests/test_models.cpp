// Tests of the convolutional models: CNN and ResNet-18 output shapes for 1 and 3
// channels, parameter counts and state_dict names/shapes against PyTorch
// (tests/fixtures/models.json from fixtures_models.py), state_dict round trips,
// BasicBlock shortcuts, a few SGD steps of the CNN on SyntheticImages, and one
// ResNet-18 training step.
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>

#include "data/synthetic.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/attention.h"
#include "layers/models/cnn.h"
#include "layers/models/gpt.h"
#include "layers/models/resnet.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "test_util.h"

using namespace tandem;
using namespace tandem::nn;
using tandem::testing::all_close;
using tandem::testing::fixture_tensor;
using tandem::testing::expect_invalid;
using tandem::testing::load_fixture;
using tandem::testing::random_indices;
using tandem::testing::random_tensor;

namespace {

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor>>& named) {
  std::vector<std::string> out;
  for (const auto& entry : named) out.push_back(entry.first);
  return out;
}

/// Checks a module's parameter count, parameter names (in order) and state_dict
/// (names and shapes) against the PyTorch description `want` from models.json.
/// Module::state_dict lists all parameters before all buffers where torch interleaves
/// them per module, so the state_dict is compared by name.
void expect_matches_torch(const Module& m, const nlohmann::json& want) {
  EXPECT_EQ(m.num_parameters(), want["num_parameters"].get<int64_t>());
  EXPECT_EQ(names_of(m.named_parameters()), want["parameters"].get<std::vector<std::string>>());
  std::map<std::string, Shape> got_sd, want_sd;
  for (const auto& [name, t] : m.state_dict()) got_sd[name] = t.shape();
  for (const auto& entry : want["state_dict"]) want_sd[entry[0].get<std::string>()] = entry[1].get<Shape>();
  EXPECT_EQ(got_sd.size(), m.state_dict().size()) << "duplicate names";
  EXPECT_EQ(got_sd, want_sd);
}

/// Gives every parameter and floating buffer new random values so a round trip
/// cannot pass by accident on the initial values.
void randomise(Module& m, uint64_t seed) {
  autograd::NoGradGuard no_grad;
  for (auto& [name, t] : m.state_dict()) {
    if (!is_floating(t.dtype())) continue;
    Tensor r = random_tensor(t.shape(), seed++, t.dtype(), t.device(), 0.5, 1.5);
    t.copy_(r);
  }
}

}  // namespace

// ---- CNN ------------------------------------------------------------------------------

TEST(CNN, OutputShapesForGreyAndColourInputs) {
  models::CNN grey;
  EXPECT_EQ(grey.flatten_features(), 3136);
  EXPECT_EQ(grey(random_tensor({4, 1, 28, 28}, 1, DType::kF32)).shape(), (Shape{4, 10}));

  models::CNN colour({.in_channels = 3, .num_classes = 7, .image_size = 32});
  EXPECT_EQ(colour.flatten_features(), 4096);
  EXPECT_EQ(colour(random_tensor({2, 3, 32, 32}, 2, DType::kF32)).shape(), (Shape{2, 7}));

  // Odd sizes round down at each pooling, as torch's MaxPool2d(2): 30 -> 15 -> 7.
  models::CNN odd({.image_size = 30});
  EXPECT_EQ(odd.flatten_features(), 64 * 7 * 7);
  EXPECT_EQ(odd(random_tensor({1, 1, 30, 30}, 3, DType::kF32)).shape(), (Shape{1, 10}));
}

TEST(CNN, ParametersAndStateDictMatchTorchSequential) {
  auto fx = load_fixture("models.json");
  models::CNN grey;
  expect_matches_torch(grey, fx["cnn_1x28"]);
  EXPECT_EQ(names_of(grey.named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias", "5.weight",
                                      "5.bias", "9.weight", "9.bias", "11.weight", "11.bias"}));
  EXPECT_EQ(grey.num_parameters(), 421834);
  models::CNN colour({.in_channels = 3, .image_size = 32});
  expect_matches_torch(colour, fx["cnn_3x32"]);
}

TEST(CNN, StateDictRoundTrip) {
  models::CNN a, b;
  randomise(a, 100);
  // Training-mode forwards update a's running statistics and batch counters.
  Tensor x = random_tensor({3, 1, 28, 28}, 4, DType::kF32);
  a(x);
  a(x);
  b.load_state_dict(a.state_dict());
  StateDict sa = a.state_dict(), sb = b.state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_TRUE(all_close(sb[i].second, sa[i].second, 0.0, 0.0)) << sa[i].first;
  }
  a.eval();
  b.eval();
  EXPECT_TRUE(all_close(b(x), a(x), 0.0, 0.0));
}

TEST(CNN, BadOptions) {
  expect_invalid([] { models::CNN({.in_channels = 0}); }, {"[CNN]", "got 0"});
  expect_invalid([] { models::CNN({.image_size = 3}); }, {"[CNN]", "image_size >= 4", "got 3"});
}

TEST(CNN, WrongInputChannelsIsAnError) {
  models::CNN grey;
  EXPECT_THROW(grey(random_tensor({2, 3, 28, 28}, 5, DType::kF32)), std::invalid_argument);
}

TEST(CNN, SGDStepsOnSyntheticImagesLowerTheLoss) {
  manual_seed(7);
  data::SyntheticImages ds(64, {1, 12, 12}, 4, 11, 0.5);
  std::vector<int64_t> idx(32);
  for (int64_t i = 0; i < 32; ++i) idx[static_cast<size_t>(i)] = i;
  data::Batch batch = ds.get_batch(idx);

  models::CNN cnn({.num_classes = 4, .image_size = 12, .hidden = 32});
  optim::SGD opt(cnn.parameters(), {.lr = 0.05, .momentum = 0.9});
  double first = 0, last = 0;
  for (int step = 0; step < 8; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy(cnn(batch.input), batch.target);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item();
    last = loss.item();
  }
  EXPECT_TRUE(std::isfinite(last));
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}

// ---- BasicBlock -----------------------------------------------------------------------

TEST(BasicBlock, IdentityShortcutKeepsShape) {
  BasicBlock block(8, 8);
  EXPECT_EQ(block.downsample(), nullptr);
  EXPECT_EQ(names_of(block.named_parameters()),
            (std::vector<std::string>{"conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight",
                                      "bn2.bias"}));
  Tensor x = random_tensor({2, 8, 5, 5}, 6, DType::kF32);
  Tensor y = block(x);
  EXPECT_EQ(y.shape(), x.shape());
  // The final ReLU: nothing negative.
  for (float v : y.to_vector<float>()) ASSERT_GE(v, 0.0f);
}

TEST(BasicBlock, DownsampleWhenStrideOrChannelsChange) {
  BasicBlock strided(8, 16, 2);
  ASSERT_NE(strided.downsample(), nullptr);
  auto names = names_of(strided.named_parameters());
  EXPECT_EQ(names.back(), "downsample.1.bias");
  EXPECT_EQ(strided(random_tensor({2, 8, 7, 7}, 7, DType::kF32)).shape(), (Shape{2, 16, 4, 4}));

  BasicBlock wider(8, 16, 1);
  ASSERT_NE(wider.downsample(), nullptr);
  EXPECT_EQ(wider(random_tensor({1, 8, 6, 6}, 8, DType::kF32)).shape(), (Shape{1, 16, 6, 6}));
}

TEST(BasicBlock, GradientsReachTheInputThroughBothPaths) {
  BasicBlock block(4, 8, 2);
  Tensor x = random_tensor({2, 4, 6, 6}, 9, DType::kF32).set_requires_grad(true);
  block(x).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  for (auto& [name, p] : block.named_parameters()) EXPECT_TRUE(p.grad().defined()) << name;
}

TEST(BasicBlock, BadArguments) {
  expect_invalid([] { BasicBlock(0, 8); }, {"[BasicBlock]", "got 0"});
  expect_invalid([] { BasicBlock(8, 8, 0); }, {"[BasicBlock]", "stride", "got 8, 8 and 0"});
}

// ---- ResNet-18 ------------------------------------------------------------------------

TEST(ResNet18, ParameterCountAndStateDictMatchTorch) {
  auto fx = load_fixture("models.json");
  models::ResNet18 colour;
  // torchvision-style CIFAR ResNet-18 (3x3 stem, no max-pool), counted in torch by
  // tests/fixtures_models.py.
  EXPECT_EQ(colour.num_parameters(), 11173962);
  expect_matches_torch(colour, fx["resnet18_3"]);
  models::ResNet18 grey({.in_channels = 1});
  expect_matches_torch(grey, fx["resnet18_1"]);
}

TEST(ResNet18, ConvolutionsStartWithFanOutKaimingScale) {
  models::ResNet18 net;
  for (auto& [name, p] : net.named_parameters()) {
    if (p.dim() != 4) continue;
    auto v = p.to_vector<float>();
    double sq = 0.0;
    for (float x : v) sq += static_cast<double>(x) * x;
    const double want = std::sqrt(2.0 / static_cast<double>(p.size(0) * p.size(2) * p.size(3)));
    // Sample std within 10% of the target (the smallest tensor has 4096 elements).
    EXPECT_NEAR(std::sqrt(sq / static_cast<double>(v.size())), want, 0.1 * want) << name;
  }
}

TEST(ResNet18, OutputShapes) {
  models::ResNet18 grey({.in_channels = 1, .num_classes = 10});
  grey.eval();
  EXPECT_EQ(grey(random_tensor({1, 1, 28, 28}, 10, DType::kF32)).shape(), (Shape{1, 10}));
  models::ResNet18 colour({.in_channels = 3, .num_classes = 5});
  colour.eval();
  EXPECT_EQ(colour(random_tensor({1, 3, 32, 32}, 11, DType::kF32)).shape(), (Shape{1, 5}));
}

TEST(ResNet18, StateDictRoundTrip) {
  models::ResNet18 a({.in_channels = 1}), b({.in_channels = 1});
  randomise(a, 200);
  b.load_state_dict(a.state_dict());
  StateDict sa = a.state_dict(), sb = b.state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_TRUE(all_close(sb[i].second, sa[i].second, 0.0, 0.0)) << sa[i].first;
  }
  // A CNN's state does not fit: the error names what differs.
  models::CNN cnn;
  EXPECT_THROW(b.load_state_dict(cnn.state_dict()), std::invalid_argument);
}

TEST(ResNet18, OneTrainingStepAtBatchTwo) {
  manual_seed(3);
  data::SyntheticImages ds(2, {3, 32, 32}, 10, 5);
  std::vector<int64_t> idx{0, 1};
  data::Batch batch = ds.get_batch(idx);
  models::ResNet18 net;
  optim::SGD opt(net.parameters(), {.lr = 0.01, .momentum = 0.9});
  StateDict before;
  for (auto& [name, p] : net.named_parameters()) before.emplace_back(name, p.detach().clone());

  opt.zero_grad();
  Tensor logits = net(batch.input);
  EXPECT_EQ(logits.shape(), (Shape{2, 10}));
  Tensor loss = cross_entropy(logits, batch.target);
  ASSERT_TRUE(std::isfinite(loss.item()));
  loss.backward();
  for (auto& [name, p] : net.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().shape(), p.shape()) << name;
  }
  opt.step();
  // Every parameter moved.
  auto after = net.named_parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_FALSE(all_close(after[i].second, before[i].second, 0.0, 0.0)) << after[i].first;
  }
}

TEST(ResNet18, BadOptions) {
  expect_invalid([] { models::ResNet18({.in_channels = 2}); }, {"[ResNet18]", "in_channels 1 or 3", "got 2"});
  expect_invalid([] { models::ResNet18({.num_classes = 0}); }, {"[ResNet18]", "num_classes >= 1", "got 0"});
}

// ---- GPT ------------------------------------------------------------------------------

namespace {

models::GPTOptions tiny_gpt(double dropout = 0.0) {
  return {.vocab_size = 13, .block_size = 8, .n_layer = 2, .n_head = 2, .n_embd = 8, .dropout = dropout};
}

/// The mean next-token cross-entropy of logits (B, T, V) against targets (B, T).
Tensor lm_loss(const Tensor& logits, const Tensor& targets) {
  return cross_entropy(reshape(logits, {-1, logits.size(2)}), reshape(targets, {-1}));
}

}  // namespace

TEST(GPT, ForwardAndGradientsMatchPyTorch) {
  auto fx = load_fixture("gpt.json");
  models::GPT net(tiny_gpt());
  net.to(DType::kF64);
  EXPECT_EQ(names_of(net.named_parameters()), fx["parameters"].get<std::vector<std::string>>());
  EXPECT_EQ(net.num_parameters(), fx["num_parameters"].get<int64_t>());
  StateDict weights;
  for (const auto& name : fx["parameters"]) weights.emplace_back(name, fixture_tensor(fx["values"][name.get<std::string>()]));
  net.load_state_dict(weights);

  Tensor idx = fixture_tensor(fx["idx"], true), targets = fixture_tensor(fx["targets"], true);
  Tensor logits = net(idx);
  EXPECT_TRUE(all_close(logits, fixture_tensor(fx["logits"]), 1e-12, 1e-10));
  Tensor loss = lm_loss(logits, targets);
  EXPECT_NEAR(loss.item(), fx["loss"].get<double>(), 1e-12);
  loss.backward();
  for (auto& [name, p] : net.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    // The tied embedding's gradient sums its use as lookup table and as output head.
    EXPECT_TRUE(all_close(p.grad(), fixture_tensor(fx["grads"][name]), 1e-12, 1e-9)) << name;
  }
}

TEST(GPT, Gpt2SmallHasTheParametersOfPyTorchsModel) {
  auto fx = load_fixture("gpt.json");
  models::GPT gpt2(models::GPTOptions::gpt2_small());
  EXPECT_EQ(gpt2.num_parameters(), 124439808);
  EXPECT_EQ(gpt2.num_parameters(), fx["gpt2_small_num_parameters"].get<int64_t>());
}

TEST(GPT, InitialisationFollowsNanoGPT) {
  models::GPT net({.vocab_size = 512, .block_size = 64, .n_layer = 4, .n_head = 4, .n_embd = 64});
  const double residual = 0.02 / std::sqrt(8.0);
  for (auto& [name, p] : net.named_parameters()) {
    auto v = p.to_vector<double>();
    double sq = 0.0, s = 0.0;
    for (double x : v) sq += x * x, s += x;
    const double rms = std::sqrt(sq / static_cast<double>(v.size())), mean = s / static_cast<double>(v.size());
    if (name.find(".ln_") != std::string::npos) {
      EXPECT_EQ(rms, name.ends_with(".weight") ? 1.0 : 0.0) << name;  // LayerNorm: ones and zeros
    } else if (p.dim() == 1) {
      EXPECT_EQ(rms, 0.0) << name;  // biases
    } else {
      // The smallest weight has 4096 elements: sample std within 10%.
      const double want = name.ends_with(".c_proj.weight") ? residual : 0.02;
      EXPECT_NEAR(rms, want, 0.1 * want) << name;
      EXPECT_NEAR(mean, 0.0, 0.1 * want) << name;
    }
  }
}

TEST(GPT, LaterTokensDoNotChangeEarlierLogits) {
  models::GPT net(tiny_gpt());
  net.eval();
  Tensor a = Tensor::from_vector(std::vector<int64_t>{1, 5, 7, 2, 9, 3}, {1, 6});
  Tensor b = Tensor::from_vector(std::vector<int64_t>{1, 5, 7, 11, 0, 12}, {1, 6});
  Tensor la = net(a), lb = net(b);
  EXPECT_TRUE(all_close(narrow(la, 1, 0, 3), narrow(lb, 1, 0, 3), 0.0, 0.0));  // positions 0..2 see the same prefix
  EXPECT_FALSE(all_close(narrow(la, 1, 3, 1), narrow(lb, 1, 3, 1), 1e-6, 0.0));
  // A shorter sequence is the prefix of a longer one.
  EXPECT_TRUE(all_close(net(narrow(a, 1, 0, 4)), narrow(la, 1, 0, 4), 1e-6, 1e-5));
}

TEST(GPT, AdamWStepsLearnARepeatingSequence) {
  manual_seed(11);
  models::GPT net({.vocab_size = 16, .block_size = 16, .n_layer = 2, .n_head = 2, .n_embd = 32});
  std::vector<int64_t> seq(4 * 17);
  for (size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<int64_t>((i * 5 + i / 17) % 16);
  Tensor tokens = Tensor::from_vector(seq, {4, 17});
  Tensor input = narrow(tokens, 1, 0, 16), targets = narrow(tokens, 1, 1, 16);
  optim::AdamW opt(net.parameters(), {.lr = 3e-3});
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    Tensor loss = lm_loss(net(input), targets);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item();
    last = loss.item();
  }
  EXPECT_NEAR(first, std::log(16.0), 0.2);  // near-uniform predictions at the 0.02 init
  EXPECT_LT(last, 0.25 * first) << "first " << first << " last " << last;
  // Greedy generation continues a training sequence from its first 8 tokens.
  const std::vector<int64_t> row(seq.begin(), seq.begin() + 17);
  const std::vector<int64_t> got = net.generate({row.begin(), row.begin() + 8}, {.max_new_tokens = 8, .temperature = 0.0});
  EXPECT_EQ(got, std::vector<int64_t>(row.begin(), row.begin() + 16));
}

TEST(GPT, GreedyGenerationIsTheArgmaxOfEachForward) {
  models::GPT net(tiny_gpt());
  randomise(net, 400);  // weights far from the 0.02 init, so the argmax is not a tie
  std::vector<int64_t> want = {3, 1};
  net.eval();
  for (int n = 0; n < 4; ++n) {
    Tensor logits = net(Tensor::from_vector(want, {1, static_cast<int64_t>(want.size())}));
    want.push_back(argmax(narrow(logits, 1, logits.size(1) - 1, 1), 2).item<int64_t>());
  }
  net.train();
  EXPECT_EQ(net.generate({3, 1}, {.max_new_tokens = 4, .temperature = 0.0}), want);
  EXPECT_TRUE(net.is_training());  // the mode is restored
  // top_k = 1 samples only the argmax, whatever the temperature.
  EXPECT_EQ(net.generate({3, 1}, {.max_new_tokens = 4, .temperature = 2.0, .top_k = 1, .seed = 9}), want);
}

TEST(GPT, SamplingIsSeededAndStaysInTheVocabulary) {
  models::GPT net(tiny_gpt());  // block_size 8: 20 new tokens slide the context
  const PhiloxState before = default_generator(Device::cpu()).state();
  const auto a = net.generate({0}, {.max_new_tokens = 20, .seed = 1});
  EXPECT_EQ(default_generator(Device::cpu()).state().offset, before.offset);
  EXPECT_EQ(a.size(), 21u);
  EXPECT_EQ(a, net.generate({0}, {.max_new_tokens = 20, .seed = 1}));
  EXPECT_NE(a, net.generate({0}, {.max_new_tokens = 20, .seed = 2}));  // 13^20 outcomes
  for (int64_t t : a) EXPECT_TRUE(t >= 0 && t < 13) << t;
  // top_k = 3: every new token is among the 3 most likely at its step.
  std::vector<int64_t> seq = net.generate({5, 6}, {.max_new_tokens = 6, .top_k = 3, .seed = 4});
  autograd::NoGradGuard no_grad;
  net.eval();
  for (size_t i = 2; i < seq.size(); ++i) {
    std::vector<int64_t> ctx(seq.begin(), seq.begin() + static_cast<std::ptrdiff_t>(i));
    Tensor logits = net(Tensor::from_vector(ctx, {1, static_cast<int64_t>(ctx.size())}));
    std::vector<float> last = narrow(logits, 1, logits.size(1) - 1, 1).to_vector<float>();
    const float chosen = last[static_cast<size_t>(seq[i])];
    EXPECT_LT(std::count_if(last.begin(), last.end(), [&](float v) { return v > chosen; }), 3) << "token " << i;
  }
}

TEST(GPT, CachedAttentionEqualsTheFullForward) {
  CausalSelfAttention attn(8, 2);
  attn.to(DType::kF64);
  randomise(attn, 450);
  autograd::NoGradGuard no_grad;
  const Tensor x = random_tensor({2, 5, 8}, 451);
  const Tensor full = attn(x);
  KVCache cache;
  std::vector<Tensor> parts{attn.forward(narrow(x, 1, 0, 3), cache)};  // prefill 3 positions
  EXPECT_EQ(cache.size(), 3);
  for (int64_t t = 3; t < 5; ++t) parts.push_back(attn.forward(narrow(x, 1, t, 1), cache));
  EXPECT_EQ(cache.size(), 5);
  EXPECT_TRUE(all_close(cat(parts, 1), full, 1e-12, 1e-12));
  expect_invalid([&] { attn.forward(narrow(x, 1, 0, 2), cache); },
                 {"[CausalSelfAttention]", "one new position", "cached 5", "[2, 2, 8]"});
}

TEST(GPT, CachedGenerationEqualsRecomputingTheContext) {
  // Greedy decoding past block_size (8): 3 prompt tokens, 5 cached steps, then a
  // sliding window. The reference re-runs the whole (cropped) context every token.
  models::GPT net(tiny_gpt());
  net.to(DType::kF64);
  randomise(net, 460);
  std::vector<int64_t> want = {4, 9, 2};
  {
    autograd::NoGradGuard no_grad;
    net.eval();
    while (want.size() < 3 + 12) {
      const auto t = std::min<int64_t>(static_cast<int64_t>(want.size()), 8);
      const std::vector<int64_t> ctx(want.end() - t, want.end());
      Tensor logits = net(Tensor::from_vector(ctx, {1, t}));
      want.push_back(argmax(narrow(logits, 1, t - 1, 1), 2).item<int64_t>());
    }
  }
  EXPECT_EQ(net.generate({4, 9, 2}, {.max_new_tokens = 12, .temperature = 0.0}), want);
}

TEST(GPT, GenerateErrors) {
  models::GPT net(tiny_gpt());
  expect_invalid([&] { net.generate({}); }, {"[GPT::generate]", "at least one token"});
  expect_invalid([&] { net.generate({1, 13}); }, {"[GPT::generate]", "[0, 13)", "got 13 at position 1"});
  expect_invalid([&] { net.generate({1}, {.temperature = -1.0}); }, {"temperature >= 0", "-1"});
  expect_invalid([&] { net.generate({1}, {.top_k = -2}); }, {"top_k >= 0", "-2"});
  {
    autograd::NoGradGuard no_grad;
    for (auto& [name, p] : net.named_parameters())
      if (name == "transformer.ln_f.weight") p.fill_(std::nan(""));
  }
  try {
    net.generate({1, 2});
    ADD_FAILURE() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("[GPT::generate] expected finite logits, got nan"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("at position 2"), std::string::npos) << e.what();
  }
}

TEST(GPT, CheckpointedBlocksGiveTheSameGradients) {
  models::GPT plain(tiny_gpt()), ckpt(tiny_gpt());
  ckpt.load_state_dict(plain.state_dict());
  ckpt.blocks()->set_checkpoint_segments(2);
  Tensor idx = random_indices({3, 7}, 13, 20), targets = random_indices({3, 7}, 13, 21);
  lm_loss(plain(idx), targets).backward();
  lm_loss(ckpt(idx), targets).backward();
  auto a = plain.named_parameters(), b = ckpt.named_parameters();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(all_close(b[i].second.grad(), a[i].second.grad(), 0.0, 0.0)) << a[i].first;
}

TEST(GPT, CloneAndStateDictRoundTrip) {
  models::GPT a(tiny_gpt(0.1));
  randomise(a, 300);
  auto b = std::dynamic_pointer_cast<models::GPT>(a.clone());
  ASSERT_TRUE(b);
  EXPECT_EQ(b->options().dropout, 0.1);
  a.eval();
  b->eval();
  Tensor idx = random_indices({2, 5}, 13, 22);
  EXPECT_TRUE(all_close((*b)(idx), a(idx), 0.0, 0.0));
  models::GPT c(tiny_gpt());
  c.load_state_dict(a.state_dict());
  c.eval();
  EXPECT_TRUE(all_close(c(idx), a(idx), 0.0, 0.0));
}

TEST(GPT, DropoutOnlyWhileTraining) {
  models::GPT net(tiny_gpt(0.5));
  Tensor idx = random_indices({2, 8}, 13, 23);
  net.eval();
  EXPECT_TRUE(all_close(net(idx), net(idx), 0.0, 0.0));
  net.train();
  EXPECT_FALSE(all_close(net(idx), net(idx), 1e-6, 0.0));
}

TEST(GPT, BadOptionsAndInputs) {
  expect_invalid([] { models::GPT({.n_head = 5}); }, {"[GPT]", "multiple of n_head", "5 and n_embd 768"});
  expect_invalid([] { models::GPT({.vocab_size = 0}); }, {"[GPT]", "got 0"});
  expect_invalid([] { models::GPT(tiny_gpt(1.0)); }, {"[GPT]", "dropout in [0, 1)", "got 1"});
  models::GPT net(tiny_gpt());
  expect_invalid([&] { net(random_indices({2, 9}, 13, 24)); }, {"[GPT]", "T <= block_size 8", "[2, 9]"});
  expect_invalid([&] { net(random_tensor({2, 4}, 25, DType::kF32)); }, {"[GPT]", "int64 token ids", "float32 [2, 4]"});
  expect_invalid([&] { net(random_indices({8}, 13, 26)); }, {"[GPT]", "(B, T)", "int64 [8]"});
  expect_invalid([] { CausalSelfAttention(10, 3); }, {"[CausalSelfAttention]", "divisible", "10 and 3"});
  CausalSelfAttention attn(8, 2);
  expect_invalid([&] { attn(random_tensor({2, 3, 6}, 27, DType::kF32)); },
                 {"[CausalSelfAttention]", "(B, T, 8)", "[2, 3, 6]"});
}
