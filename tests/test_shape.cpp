// Shape ops: views really share storage, copies have the right values (against
// index arithmetic done by hand), f64 gradient checks, and argument errors.
#include <gtest/gtest.h>

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

namespace tandem {
namespace {

using testing::all_close;
using testing::expect_invalid;
using testing::gradcheck;
using testing::random_tensor;


Tensor leaf(const Shape& shape, uint64_t seed) {
  Tensor t = random_tensor(shape, seed);
  t.set_requires_grad(true);
  return t;
}

/// 0, 1, 2, ... as f64 in the given shape.
Tensor iota(const Shape& shape) { return arange(shape_numel(shape)).to(DType::kF64).reshape(shape); }

// ---- views -------------------------------------------------------------------------------

TEST(Reshape, SharesStorageBothWays) {
  Tensor x = random_tensor({2, 3, 4}, 1);
  Tensor y = reshape(x, {6, 4});
  EXPECT_EQ(y.storage(), x.storage());
  EXPECT_EQ(y.data_ptr(), x.data_ptr());
  y.data<double>()[5] = 42.0;
  EXPECT_EQ(x.to_vector<double>()[5], 42.0);
  x.data<double>()[0] = -7.0;
  EXPECT_EQ(y.to_vector<double>()[0], -7.0);
}

TEST(Reshape, InfersOneExtent) {
  Tensor x = random_tensor({2, 3, 4}, 2);
  EXPECT_EQ(reshape(x, {-1, 4}).shape(), (Shape{6, 4}));
  EXPECT_EQ(x.view({2, -1}).shape(), (Shape{2, 12}));
  EXPECT_EQ(x.reshape({24}).shape(), (Shape{24}));
  EXPECT_EQ(reshape(random_tensor({1}, 3), {}).shape(), Shape{});
}

TEST(Reshape, ViewOfAViewKeepsOffset) {
  Tensor x = iota({4, 3});
  Tensor row = narrow(x, 0, 2, 1);  // a view at offset 6
  Tensor flat = reshape(row, {3});
  EXPECT_EQ(flat.to_vector<double>(), (std::vector<double>{6, 7, 8}));
  flat.data<double>()[1] = 100.0;
  EXPECT_EQ(x.to_vector<double>()[7], 100.0);
}

TEST(Reshape, Errors) {
  Tensor x = random_tensor({2, 3}, 4);
  expect_invalid([&] { reshape(x, {4, 2}); }, {"[reshape]", "[2, 3]", "[4, 2]"});
  expect_invalid([&] { view(x, {5}); }, {"[view]", "[2, 3]", "[5]"});
  expect_invalid([&] { reshape(x, {-1, -1}); }, {"[reshape]", "at most one -1"});
  expect_invalid([&] { reshape(x, {-1, 4}); }, {"[reshape]", "[2, 3]", "[-1, 4]"});
  expect_invalid([&] { reshape(x, {-2, 3}); }, {"[reshape]", "[-2, 3]"});
}

TEST(Flatten, MergesDimRange) {
  Tensor x = random_tensor({2, 3, 4, 5}, 5);
  EXPECT_EQ(flatten(x).shape(), (Shape{120}));
  EXPECT_EQ(x.flatten(1).shape(), (Shape{2, 60}));
  EXPECT_EQ(flatten(x, 1, 2).shape(), (Shape{2, 12, 5}));
  EXPECT_EQ(flatten(x, -2, -1).shape(), (Shape{2, 3, 20}));
  EXPECT_EQ(flatten(x, 1).storage(), x.storage());
  expect_invalid([&] { flatten(x, 2, 1); }, {"[flatten]", "start_dim <= end_dim"});
  expect_invalid([&] { flatten(x, 4); }, {"[flatten]", "4"});
}

TEST(SqueezeUnsqueeze, ShapesAndSharing) {
  Tensor x = random_tensor({3, 4}, 6);
  Tensor u = unsqueeze(x, 1);
  EXPECT_EQ(u.shape(), (Shape{3, 1, 4}));
  EXPECT_EQ(unsqueeze(x, -1).shape(), (Shape{3, 4, 1}));
  EXPECT_EQ(unsqueeze(x, 0).shape(), (Shape{1, 3, 4}));
  EXPECT_EQ(squeeze(u, 1).shape(), (Shape{3, 4}));
  EXPECT_EQ(u.storage(), x.storage());
  expect_invalid([&] { squeeze(x, 0); }, {"[squeeze]", "extent 1", "[3, 4]"});
  expect_invalid([&] { unsqueeze(x, 3); }, {"[unsqueeze]", "3"});
}

// ---- copies -----------------------------------------------------------------------------

TEST(Transpose, SwapsIndices) {
  Tensor x = iota({2, 3});
  Tensor t = transpose(x, 0, 1);
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(t.to_vector<double>(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  EXPECT_NE(t.storage(), x.storage());  // a copy
  EXPECT_EQ(x.transpose(-1, -2).to_vector<double>(), t.to_vector<double>());
}

TEST(Permute, FourDMatchesIndexArithmetic) {
  const Shape s{2, 3, 4, 5};
  Tensor x = iota(s);
  const std::vector<int64_t> dims{2, 0, 3, 1};
  Tensor y = permute(x, dims);
  EXPECT_EQ(y.shape(), (Shape{4, 2, 5, 3}));
  std::vector<double> got = y.to_vector<double>();
  int64_t pos = 0;
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t k = 0; k < 5; ++k)
        for (int64_t l = 0; l < 3; ++l) {
          // out[i, j, k, l] = x[j, l, i, k]
          const double want = static_cast<double>(((j * 3 + l) * 4 + i) * 5 + k);
          ASSERT_EQ(got[pos++], want) << "at " << i << "," << j << "," << k << "," << l;
        }
}

TEST(Permute, MergedAndExtentOneDims) {
  // (N,C,H,W)->(N,H,W,C) merges H,W; extent-1 dims vanish; identity is one block copy.
  Tensor x = iota({2, 3, 1, 4});
  Tensor y = permute(x, {0, 2, 3, 1});
  std::vector<double> got = y.to_vector<double>();
  int64_t pos = 0;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t w = 0; w < 4; ++w)
      for (int64_t c = 0; c < 3; ++c) ASSERT_EQ(got[pos++], static_cast<double>((n * 3 + c) * 4 + w));
  Tensor same = permute(x, {0, 1, 2, 3});
  EXPECT_EQ(same.to_vector<double>(), x.to_vector<double>());
  EXPECT_NE(same.storage(), x.storage());
  Tensor moved_ones = permute(iota({1, 5, 1}), {2, 1, 0});
  EXPECT_EQ(moved_ones.shape(), (Shape{1, 5, 1}));
  EXPECT_EQ(moved_ones.to_vector<double>(), (std::vector<double>{0, 1, 2, 3, 4}));
}

TEST(Permute, IntegerAndHalfDtypes) {
  Tensor x = arange(6).reshape({2, 3});
  EXPECT_EQ(permute(x, {1, 0}).to_vector<int64_t>(), (std::vector<int64_t>{0, 3, 1, 4, 2, 5}));
  Tensor h = iota({2, 3}).to(DType::kF16);
  EXPECT_EQ(transpose(h, 0, 1).to_vector<double>(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
}

TEST(Permute, Errors) {
  Tensor x = random_tensor({2, 3, 4}, 7);
  expect_invalid([&] { permute(x, {0, 1}); }, {"[permute]", "[2, 3, 4]", "[0, 1]"});
  expect_invalid([&] { permute(x, {0, 0, 1}); }, {"[permute]", "[0, 0, 1]"});
  expect_invalid([&] { permute(x, {0, 1, 3}); }, {"[permute]", "[0, 1, 3]"});
  expect_invalid([&] { transpose(x, 0, 3); }, {"[transpose]", "3"});
}

TEST(Narrow, DimZeroIsAView) {
  Tensor x = iota({5, 3});
  Tensor y = narrow(x, 0, 1, 2);
  EXPECT_EQ(y.shape(), (Shape{2, 3}));
  EXPECT_EQ(y.storage(), x.storage());
  EXPECT_EQ(y.offset(), x.offset() + 3);
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{3, 4, 5, 6, 7, 8}));
  y.data<double>()[0] = 99.0;  // writing through the view is visible in the base
  EXPECT_EQ(x.to_vector<double>()[3], 99.0);
}

TEST(Narrow, LeadingExtentOneDimsGiveAView) {
  Tensor x = iota({1, 1, 6, 2});
  Tensor y = x.narrow(2, 4, 2);
  EXPECT_EQ(y.storage(), x.storage());
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{8, 9, 10, 11}));
}

TEST(Narrow, InnerDimIsACopy) {
  Tensor x = iota({3, 4});
  Tensor y = narrow(x, 1, 1, 2);
  EXPECT_NE(y.storage(), x.storage());
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{1, 2, 5, 6, 9, 10}));
  EXPECT_EQ(narrow(x, -1, -1, 1).to_vector<double>(), (std::vector<double>{3, 7, 11}));
  EXPECT_EQ(narrow(x, 1, 4, 0).shape(), (Shape{3, 0}));
}

TEST(Narrow, Errors) {
  Tensor x = random_tensor({3, 4}, 8);
  expect_invalid([&] { narrow(x, 1, 3, 2); }, {"[narrow]", "start + length <= 4", "start 3", "length 2"});
  expect_invalid([&] { narrow(x, 0, 0, -1); }, {"[narrow]", "length -1"});
  expect_invalid([&] { narrow(x, 2, 0, 1); }, {"[narrow]", "2"});
}

TEST(Cat, SeveralAlongEachDim) {
  Tensor a = iota({2, 3}), b = iota({2, 3}) + 100.0, c = iota({1, 3}) + 200.0;
  Tensor rows = cat({a, b, c}, 0);
  EXPECT_EQ(rows.shape(), (Shape{5, 3}));
  EXPECT_EQ(rows.to_vector<double>(),
            (std::vector<double>{0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105, 200, 201, 202}));
  Tensor d = iota({2, 1}) + 300.0;
  Tensor cols = cat({a, d, b}, -1);
  EXPECT_EQ(cols.shape(), (Shape{2, 7}));
  EXPECT_EQ(cols.to_vector<double>(),
            (std::vector<double>{0, 1, 2, 300, 100, 101, 102, 3, 4, 5, 301, 103, 104, 105}));
  Tensor single = cat({a}, 1);
  EXPECT_EQ(single.to_vector<double>(), a.to_vector<double>());
  EXPECT_EQ(cat({a, Tensor::empty({2, 0}, {.dtype = DType::kF64})}, 1).to_vector<double>(), a.to_vector<double>());
}

TEST(Cat, Errors) {
  Tensor a = random_tensor({2, 3}, 9), b = random_tensor({4, 2}, 10);
  expect_invalid([&] { cat({a, b}, 0); }, {"[cat]", "[2, 3]", "[4, 2]", "dim 0"});
  expect_invalid([&] { cat({a, random_tensor({2, 3, 1}, 11)}, 0); }, {"[cat]", "[2, 3, 1]"});
  expect_invalid([&] { cat({}, 0); }, {"[cat]", "at least one"});
  expect_invalid([&] { cat({a, random_tensor({2, 3}, 12, DType::kF32)}, 0); }, {"[cat]", "float64", "float32"});
}

TEST(Chunk, UnevenSizes) {
  Tensor x = iota({7, 2});
  std::vector<Tensor> parts = chunk(x, 3);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].shape(), (Shape{3, 2}));
  EXPECT_EQ(parts[1].shape(), (Shape{3, 2}));
  EXPECT_EQ(parts[2].shape(), (Shape{1, 2}));
  EXPECT_EQ(parts[2].to_vector<double>(), (std::vector<double>{12, 13}));
  EXPECT_EQ(parts[1].storage(), x.storage());  // dim-0 chunks are views
  std::vector<Tensor> few = chunk(iota({2, 5}), 4, 0);  // fewer pieces than asked
  EXPECT_EQ(few.size(), 2u);
  std::vector<Tensor> inner = chunk(iota({2, 5}), 2, 1);
  ASSERT_EQ(inner.size(), 2u);
  EXPECT_EQ(inner[0].to_vector<double>(), (std::vector<double>{0, 1, 2, 5, 6, 7}));
  EXPECT_EQ(inner[1].to_vector<double>(), (std::vector<double>{3, 4, 8, 9}));
  expect_invalid([&] { chunk(x, 0); }, {"[chunk]", "chunks > 0", "0"});
}

// ---- gradients -----------------------------------------------------------------------------

TEST(ShapeGrad, ViewOps) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return reshape(t[0], {3, -1}); }, {leaf({2, 3, 2}, 20)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return flatten(t[0], 1); }, {leaf({2, 3, 2}, 21)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return squeeze(unsqueeze(t[0], 1), 1) * 2.0; },
                        {leaf({3, 2}, 22)}));
}

TEST(ShapeGrad, Transpose) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return transpose(t[0], 0, 2); }, {leaf({2, 3, 4}, 23)}));
}

TEST(ShapeGrad, PermuteFourD) {
  EXPECT_TRUE(
      gradcheck([](const std::vector<Tensor>& t) { return permute(t[0], {3, 1, 0, 2}); }, {leaf({2, 3, 2, 4}, 24)}));
}

TEST(ShapeGrad, NarrowDimZeroAndInner) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return narrow(t[0], 0, 1, 2); }, {leaf({4, 3}, 25)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return narrow(t[0], 1, 1, 2); }, {leaf({2, 4, 3}, 26)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return narrow(t[0], 2, 0, 1); }, {leaf({2, 2, 3}, 27)}));
}

TEST(ShapeGrad, CatOfSeveral) {
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return cat({t[0], t[1], t[2]}, 1); },
                        {leaf({2, 1, 3}, 28), leaf({2, 3, 3}, 29), leaf({2, 2, 3}, 30)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& t) { return cat({t[0], t[1], t[0]}, 0); },
                        {leaf({2, 3}, 31), leaf({1, 3}, 32)}));
}

TEST(ShapeGrad, CatWithAnInputThatNeedsNoGrad) {
  Tensor fixed = random_tensor({2, 2}, 33);
  EXPECT_TRUE(gradcheck([fixed](const std::vector<Tensor>& t) { return cat({fixed, t[0]}, 1); }, {leaf({2, 3}, 34)}));
}

TEST(ShapeGrad, ChunkUneven) {
  auto fn = [](int64_t dim) {
    return [dim](const std::vector<Tensor>& t) {
      std::vector<Tensor> p = chunk(t[0], 3, dim);
      return cat({p[0] * 1.0, p[1] * 2.0, p[2] * 3.0}, dim);
    };
  };
  EXPECT_TRUE(gradcheck(fn(0), {leaf({7, 2}, 35)}));
  EXPECT_TRUE(gradcheck(fn(1), {leaf({2, 5}, 36)}));
}

}  // namespace
}  // namespace tandem
