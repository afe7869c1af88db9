// Tests of the Philox generator and the random factories on the CPU: Random123
// known-answer vectors, the element-to-counter mapping, moments of large draws,
// reproducibility from a seed or a saved Generator state, and torch.nn.init bounds.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/philox.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::expect_invalid;


struct Moments {
  double mean = 0, var = 0, min = INFINITY, max = -INFINITY;
};

Moments moments(const Tensor& t) {
  std::vector<double> v = t.to(DType::kF64).to_vector<double>();
  Moments m;
  for (double x : v) {
    m.mean += x;
    m.min = std::min(m.min, x);
    m.max = std::max(m.max, x);
  }
  m.mean /= static_cast<double>(v.size());
  for (double x : v) m.var += (x - m.mean) * (x - m.mean);
  m.var /= static_cast<double>(v.size() - 1);
  return m;
}

// ---- Philox4x32-10 ------------------------------------------------------------------------

TEST(Philox, Random123KnownAnswers) {
  // kat_vectors from Random123 1.09 (philox4x32 10 rounds): counter c0..c3, key k0 k1.
  kernels::PhiloxBlock a = kernels::philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(a.w[0], 0x6627e8d5u);
  EXPECT_EQ(a.w[1], 0xe169c58du);
  EXPECT_EQ(a.w[2], 0xbc57ac4cu);
  EXPECT_EQ(a.w[3], 0x9b00dbd8u);
  kernels::PhiloxBlock b = kernels::philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
                                                  0xffffffffu);
  EXPECT_EQ(b.w[0], 0x408f276du);
  EXPECT_EQ(b.w[1], 0x41c83b0eu);
  EXPECT_EQ(b.w[2], 0xa20bc7c6u);
  EXPECT_EQ(b.w[3], 0x6d5451fdu);
  kernels::PhiloxBlock c = kernels::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u,
                                                  0x299f31d0u);
  EXPECT_EQ(c.w[0], 0xd16cfe09u);
  EXPECT_EQ(c.w[1], 0x94fdccebu);
  EXPECT_EQ(c.w[2], 0x5001e420u);
  EXPECT_EQ(c.w[3], 0x24126ea1u);
}

TEST(Philox, UniformAndNormalWordMaps) {
  EXPECT_EQ(kernels::philox_uniform(0u), 0.0f);
  EXPECT_EQ(kernels::philox_uniform(0xffffffffu), 1.0f - 1.0f / 16777216.0f);  // strictly below 1
  EXPECT_EQ(kernels::philox_uniform(0x80000000u), 0.5f);
  // Largest u1 = 1 gives r = 0: both normals of the pair are 0.
  kernels::PhiloxBlock b{{0xffffffffu, 123u, 0xffffffffu, 456u}};
  EXPECT_EQ(kernels::philox_normal(b, 0), 0.0f);
  EXPECT_EQ(kernels::philox_normal(b, 3), 0.0f);
}

// ---- rand / randn: element mapping -----------------------------------------------------------

TEST(Rand, ElementIUsesWordIMod4OfBlockOffsetPlusIDiv4) {
  Generator gen(99);
  gen.set_state({99, 1000});
  const int64_t n = 23;
  std::vector<float> u = rand({n}, {}, &gen).to_vector<float>();
  std::vector<float> z = randn({n}, {}, &gen).to_vector<float>();
  const uint64_t z_offset = 1000 + kernels::philox_blocks(n);
  EXPECT_EQ(gen.state().offset, z_offset + kernels::philox_blocks(n));
  for (int64_t i = 0; i < n; ++i) {
    const kernels::PhiloxBlock bu = kernels::philox_block(99, 1000 + static_cast<uint64_t>(i / 4));
    EXPECT_EQ(u[i], kernels::philox_uniform(bu.w[i % 4])) << i;
    const kernels::PhiloxBlock bz = kernels::philox_block(99, z_offset + static_cast<uint64_t>(i / 4));
    EXPECT_EQ(z[i], kernels::philox_normal(bz, static_cast<int>(i % 4))) << i;
  }
}

TEST(Rand, OtherDTypesConvertTheF32Draw) {
  // f16/bf16: exactly the f32 result rounded once more.
  for (DType d : {DType::kF16, DType::kBF16}) {
    Generator g1(5), g2(5);
    Tensor ref = uniform({101}, -2.0, 3.0, {}, &g1);
    Tensor got = uniform({101}, -2.0, 3.0, {.dtype = d}, &g2);
    EXPECT_EQ(got.dtype(), d);
    EXPECT_TRUE(all_close(got, ref.to(d), 0, 0)) << dtype_name(d);
    Tensor nref = normal({101}, 1.0, 0.5, {}, &g1);
    Tensor ngot = normal({101}, 1.0, 0.5, {.dtype = d}, &g2);
    EXPECT_TRUE(all_close(ngot, nref.to(d), 0, 0)) << dtype_name(d);
  }
  // f64: the same f32 draw, scaled and shifted in f64 (one fma) without rounding to f32.
  Generator gen(6);
  std::vector<double> u = uniform({9}, -2.0, 3.0, {.dtype = DType::kF64}, &gen).to_vector<double>();
  std::vector<double> z = normal({9}, 1.0, 0.5, {.dtype = DType::kF64}, &gen).to_vector<double>();
  for (int64_t i = 0; i < 9; ++i) {
    const kernels::PhiloxBlock bu = kernels::philox_block(6, static_cast<uint64_t>(i / 4));
    EXPECT_EQ(u[i], std::fma(5.0, static_cast<double>(kernels::philox_uniform(bu.w[i % 4])), -2.0)) << i;
    const kernels::PhiloxBlock bz = kernels::philox_block(6, kernels::philox_blocks(9) + static_cast<uint64_t>(i / 4));
    EXPECT_EQ(z[i], std::fma(0.5, static_cast<double>(kernels::philox_normal(bz, static_cast<int>(i % 4))), 1.0)) << i;
  }
}

// ---- moments --------------------------------------------------------------------------------

TEST(Rand, UniformMoments) {
  Generator gen(2024);
  Moments m = moments(rand({1 << 20}, {}, &gen));
  EXPECT_NEAR(m.mean, 0.5, 1.5e-3);       // 5σ of the mean: 5·sqrt(1/12/n)
  EXPECT_NEAR(m.var, 1.0 / 12.0, 4e-4);   // 5σ of the variance estimate
  EXPECT_GE(m.min, 0.0);
  EXPECT_LT(m.max, 1.0);
  Moments w = moments(uniform({1 << 18}, -3.0, 5.0, {.dtype = DType::kF64}, &gen));
  EXPECT_NEAR(w.mean, 1.0, 0.025);
  EXPECT_NEAR(w.var, 64.0 / 12.0, 0.08);
  EXPECT_GE(w.min, -3.0);
  EXPECT_LT(w.max, 5.0);
}

TEST(Randn, NormalMoments) {
  Generator gen(2025);
  Moments m = moments(randn({1 << 20}, {}, &gen));
  EXPECT_NEAR(m.mean, 0.0, 5e-3);  // 5σ: 5/sqrt(n)
  EXPECT_NEAR(m.var, 1.0, 7e-3);   // 5σ: 5·sqrt(2/n)
  Moments s = moments(normal({1 << 18}, 3.0, 2.0, {.dtype = DType::kF64}, &gen));
  EXPECT_NEAR(s.mean, 3.0, 0.02);
  EXPECT_NEAR(s.var, 4.0, 0.06);
  // Fraction within one standard deviation: 0.6827 for a normal.
  std::vector<float> v = randn({1 << 18}, {}, &gen).to_vector<float>();
  const double inside = static_cast<double>(std::count_if(v.begin(), v.end(), [](float x) { return std::fabs(x) < 1; })) /
                        static_cast<double>(v.size());
  EXPECT_NEAR(inside, 0.6827, 5e-3);
}

// ---- reproducibility ------------------------------------------------------------------------

TEST(Generator, ManualSeedReproduces) {
  manual_seed(42);
  Tensor a = rand({64});
  Tensor b = randn({3, 5});
  manual_seed(42);
  EXPECT_TRUE(all_close(rand({64}), a, 0, 0));
  EXPECT_TRUE(all_close(randn({3, 5}), b, 0, 0));
  manual_seed(43);
  EXPECT_FALSE(all_close(rand({64}), a, 0, 0));
}

TEST(Generator, RestoringStateReproducesAndDrawsAdvance) {
  Generator gen(77);
  const PhiloxState s = gen.state();
  Tensor a = randn({10}, {}, &gen);
  Tensor b = randn({10}, {}, &gen);
  EXPECT_FALSE(all_close(a, b, 0, 0));
  EXPECT_EQ(gen.state().offset, s.offset + 2 * kernels::philox_blocks(10));
  gen.set_state(s);
  EXPECT_TRUE(all_close(randn({10}, {}, &gen), a, 0, 0));
  EXPECT_TRUE(all_close(randn({10}, {}, &gen), b, 0, 0));
}

TEST(Generator, GraphCaptureReservesRelativeToTheDeviceCounter) {
  // What cuda::Graph relies on: during a capture, draws are reserved from 0 relative to
  // the device counter (whose address the kernels read), the generator's own state
  // stays put, state()/set_state() work on the relative position (activation
  // checkpointing replays its masks inside a graph), and each replay reserves the
  // capture's total from the real state.
  Generator gen(9);
  (void)gen.reserve(40);  // some draws before the capture
  const PhiloxState before = gen.state();
  uint64_t counter = 0;  // stands in for the device memory
  gen.begin_graph_capture(&counter);
  const PhiloxState a = gen.reserve(10), b = gen.reserve(100);
  EXPECT_EQ(a.offset_base, &counter);
  EXPECT_EQ(a.seed, before.seed);
  EXPECT_EQ(a.offset, 0u);
  EXPECT_EQ(b.offset, kernels::philox_blocks(10));
  const PhiloxState mid = gen.state();
  EXPECT_EQ(mid.offset, kernels::philox_blocks(10) + kernels::philox_blocks(100));
  gen.set_state(b);  // recomputation re-reserves the same relative blocks
  EXPECT_EQ(gen.reserve(100).offset, b.offset);
  EXPECT_THROW(gen.set_state(before), std::logic_error);  // a state from outside the capture
  EXPECT_THROW(gen.begin_graph_capture(&counter), std::logic_error);
  EXPECT_EQ(gen.end_graph_capture(), mid.offset);
  EXPECT_EQ(gen.state().offset, before.offset) << "the capture's draws did not move the real state";
  EXPECT_THROW(gen.set_state(b), std::logic_error);  // a capture's state outside it
  EXPECT_THROW(gen.end_graph_capture(), std::logic_error);
  const PhiloxState replay1 = gen.reserve_blocks(mid.offset), replay2 = gen.reserve_blocks(mid.offset);
  EXPECT_EQ(replay1.offset, before.offset);
  EXPECT_EQ(replay2.offset, before.offset + mid.offset) << "each replay draws fresh blocks";
  EXPECT_EQ(gen.reserve(1).offset, before.offset + 2 * mid.offset);
  EXPECT_THROW(gen.begin_graph_capture(nullptr), std::invalid_argument);
}

TEST(Generator, CaptureStateOnTheCpuIsRefused) {
  // A CUDA capture's draw reaching a CPU kernel would ignore the device counter.
  Generator gen(5);
  uint64_t counter = 0;
  gen.begin_graph_capture(&counter);
  Tensor x = rand({8});
  EXPECT_THROW(dropout(x, 0.5, true, &gen), std::logic_error);
  EXPECT_THROW(rand({8}, {}, &gen), std::logic_error);
  gen.end_graph_capture();
}

TEST(Generator, InPlaceInitialisersUseTheGenerator) {
  Generator g1(3), g2(3);
  Tensor t = Tensor::empty({4, 4});
  uniform_(t, -1.0, 1.0, &g1);
  EXPECT_TRUE(all_close(t, uniform({4, 4}, -1.0, 1.0, {}, &g2), 0, 0));
  normal_(t, 0.5, 2.0, &g1);
  EXPECT_TRUE(all_close(t, normal({4, 4}, 0.5, 2.0, {}, &g2), 0, 0));
}

TEST(Rand, RequiresGradAndEmpty) {
  Tensor t = randn({2, 3}, {.requires_grad = true});
  EXPECT_TRUE(t.requires_grad());
  EXPECT_TRUE(t.is_leaf());
  Generator gen(1);
  Tensor e = rand({0, 3}, {}, &gen);
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(gen.state().offset, 0u);
}

// ---- torch.nn.init ---------------------------------------------------------------------------

TEST(Init, FanInOut) {
  EXPECT_EQ(fan_in_out(Tensor::empty({64, 32, 3, 3})), (std::pair<int64_t, int64_t>{288, 576}));
  EXPECT_EQ(fan_in_out(Tensor::empty({10, 20})), (std::pair<int64_t, int64_t>{20, 10}));
}

TEST(Init, KaimingUniformBound) {
  Generator gen(12);
  Tensor w = Tensor::empty({64, 32, 3, 3});
  kaiming_uniform_(w, 0.0, Nonlinearity::kReLU, &gen);
  const double bound = std::sqrt(2.0) * std::sqrt(3.0 / 288.0);  // gain·sqrt(3/fan_in)
  Moments m = moments(w);
  EXPECT_GE(m.min, -bound);
  EXPECT_LT(m.max, bound);
  EXPECT_GT(m.max, 0.99 * bound);
  EXPECT_LT(m.min, -0.99 * bound);
  EXPECT_NEAR(m.var, bound * bound / 3.0, 0.03 * bound * bound / 3.0);

  // Default (leaky_relu, a = 0) is the same gain; a = √5 (nn.Linear's default) gives
  // gain sqrt(2/6) and bound 1/sqrt(fan_in).
  Tensor lin = Tensor::empty({50, 400});
  kaiming_uniform_(lin, std::sqrt(5.0), Nonlinearity::kLeakyReLU, &gen);
  Moments l = moments(lin);
  EXPECT_LT(l.max, 1.0 / 20.0);
  EXPECT_GT(l.max, 0.99 / 20.0);
}

TEST(Init, GainsMatchTorch) {
  // The bound is gain·sqrt(3/fan_in); read the gain back from the largest |w|.
  struct Case {
    Nonlinearity nl;
    double a;
    double gain;
  };
  for (const Case& c : std::vector<Case>{{Nonlinearity::kLinear, 0, 1.0},
                                         {Nonlinearity::kSigmoid, 0, 1.0},
                                         {Nonlinearity::kTanh, 0, 5.0 / 3.0},
                                         {Nonlinearity::kReLU, 0.3, std::sqrt(2.0)},
                                         {Nonlinearity::kLeakyReLU, 0.2, std::sqrt(2.0 / 1.04)}}) {
    Generator gen(13);
    Tensor w = Tensor::empty({100, 300}, {.dtype = DType::kF64});
    kaiming_uniform_(w, c.a, c.nl, &gen);
    Moments m = moments(w);
    const double bound = c.gain * std::sqrt(3.0 / 300.0);
    EXPECT_LT(std::max(-m.min, m.max), bound);
    EXPECT_GT(std::max(-m.min, m.max), 0.999 * bound);
  }
}

TEST(Init, KaimingNormalAndXavier) {
  Generator gen(14);
  Tensor w = Tensor::empty({256, 512}, {.dtype = DType::kF64});
  kaiming_normal_(w, 0.0, Nonlinearity::kReLU, &gen);
  EXPECT_NEAR(std::sqrt(moments(w).var), std::sqrt(2.0 / 512.0), 0.01 * std::sqrt(2.0 / 512.0));

  xavier_uniform_(w, 2.0, &gen);
  const double xb = 2.0 * std::sqrt(6.0 / (512.0 + 256.0));
  Moments u = moments(w);
  EXPECT_LT(u.max, xb);
  EXPECT_GE(u.min, -xb);
  EXPECT_GT(u.max, 0.99 * xb);

  xavier_normal_(w, 1.0, &gen);
  EXPECT_NEAR(std::sqrt(moments(w).var), std::sqrt(2.0 / 768.0), 0.01 * std::sqrt(2.0 / 768.0));
}

TEST(Init, Errors) {
  Tensor v = Tensor::empty({5});
  expect_invalid([&] { fan_in_out(v); }, {"[fan_in_out]", "at least 2 dims", "[5]"});
  expect_invalid([&] { kaiming_uniform_(v); }, {"[kaiming_uniform_]", "[5]"});
  expect_invalid([&] { kaiming_normal_(v); }, {"[kaiming_normal_]", "[5]"});
  expect_invalid([&] { xavier_uniform_(v); }, {"[xavier_uniform_]", "[5]"});
  expect_invalid([&] { xavier_normal_(v); }, {"[xavier_normal_]", "[5]"});
}

TEST(Rand, Errors) {
  expect_invalid([] { rand({3}, {.dtype = DType::kI64}); }, {"[rand]", "floating", "int64"});
  expect_invalid([] { randn({3}, {.dtype = DType::kBool}); }, {"[randn]", "floating", "bool"});
  expect_invalid([] { uniform({3}, 1.0, 0.0); }, {"[uniform]", "low=1", "high=0"});
  expect_invalid([] { normal({3}, 0.0, -1.0); }, {"[normal]", "std", "-1"});
  Tensor i = Tensor::empty({3}, {.dtype = DType::kI32});
  expect_invalid([&] { uniform_(i, 0.0, 1.0); }, {"[uniform_]", "floating", "int32"});
  Tensor f = Tensor::empty({3});
  expect_invalid([&] { normal_(f, 0.0, -2.0); }, {"[normal_]", "std", "-2"});
}

}  // namespace
}  // namespace tandem
