// Embedding: forward rows against the weight, gradients with repeated indices and
// padding_idx (f64 finite differences and exact scatter-add sums), f16/bf16 on the
// CPU, and argument errors.
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


Tensor idx(const std::vector<int64_t>& values, const Shape& shape) { return Tensor::from_vector(values, shape); }

TEST(Embedding, GathersRowsForAnyIndexShape) {
  for (DType dt : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16}) {
    Tensor w = random_tensor({6, 3}, 1, dt);
    Tensor i = idx({5, 0, 2, 2, 1, 5}, {2, 3});
    Tensor y = embedding(w, i);
    EXPECT_EQ(y.shape(), (Shape{2, 3, 3}));
    EXPECT_EQ(y.dtype(), dt);
    std::vector<double> wv = w.to_vector<double>(), yv = y.to_vector<double>();
    const std::vector<int64_t> rows{5, 0, 2, 2, 1, 5};
    for (size_t p = 0; p < rows.size(); ++p)
      for (int j = 0; j < 3; ++j) EXPECT_EQ(yv[p * 3 + j], wv[rows[p] * 3 + j]);
  }
}

TEST(Embedding, ScalarAndEmptyIndices) {
  Tensor w = random_tensor({4, 2}, 2);
  Tensor y = embedding(w, idx({3}, {}));
  EXPECT_EQ(y.shape(), (Shape{2}));
  EXPECT_EQ(y.to_vector<double>(), narrow(w, 0, 3, 1).reshape({2}).to_vector<double>());
  EXPECT_EQ(embedding(w, Tensor::empty({0}, {.dtype = DType::kI64})).shape(), (Shape{0, 2}));
}

TEST(Embedding, GradientSumsRepeatedIndicesAndSkipsPadding) {
  Tensor w = random_tensor({5, 2}, 3);
  w.set_requires_grad(true);
  Tensor i = idx({1, 3, 1, 1, 0, 3}, {6});
  Tensor dy = random_tensor({6, 2}, 4);
  embedding(w, i, /*padding_idx=*/3).backward(dy);
  std::vector<double> g = w.grad().to_vector<double>(), d = dy.to_vector<double>();
  std::vector<double> want(10, 0.0);
  const std::vector<int64_t> rows{1, 3, 1, 1, 0, 3};
  for (size_t p = 0; p < rows.size(); ++p)
    if (rows[p] != 3)
      for (int j = 0; j < 2; ++j) want[rows[p] * 2 + j] += d[p * 2 + j];
  for (size_t k = 0; k < want.size(); ++k) EXPECT_NEAR(g[k], want[k], 1e-12) << "at " << k;
  EXPECT_EQ(g[6], 0.0);  // the padding row gets nothing
  EXPECT_EQ(g[7], 0.0);
}

TEST(Embedding, GradcheckRepeatedIndices) {
  Tensor i = idx({2, 0, 2, 4, 2, 1}, {2, 3});
  EXPECT_TRUE(gradcheck([i](const std::vector<Tensor>& t) { return embedding(t[0], i); },
                        {random_tensor({5, 3}, 5).set_requires_grad(true)}));
}

TEST(Embedding, GradcheckWithPaddingIdx) {
  // The padding row's gradient is zero by definition, not by calculus, so the checked
  // function reads that row from a constant: finite differences then agree that it
  // gets nothing, and every other row is checked with padding in effect.
  Tensor i = idx({2, 0, 2, 4, 2, 1}, {6});
  Tensor pad_row = random_tensor({1, 3}, 60);
  auto fn = [i, pad_row](const std::vector<Tensor>& t) {
    Tensor w = cat({narrow(t[0], 0, 0, 2), pad_row, narrow(t[0], 0, 3, 2)}, 0);
    return embedding(w, i, /*padding_idx=*/2);
  };
  EXPECT_TRUE(gradcheck(fn, {random_tensor({5, 3}, 6).set_requires_grad(true)}));
}

TEST(Embedding, HalfPrecisionGradientAccumulatesInF32) {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    Tensor w = random_tensor({3, 4}, 7, dt);
    w.set_requires_grad(true);
    // 300 hits on one row: per-step rounding in 16 bits would drift visibly.
    std::vector<int64_t> many(300, 1);
    Tensor dy = random_tensor({300, 4}, 8, dt);
    embedding(w, idx(many, {300})).backward(dy);
    Tensor g = w.grad();
    EXPECT_EQ(g.dtype(), dt);
    Tensor want = sum(dy.to(DType::kF64), {0});
    Tensor row1 = narrow(g, 0, 1, 1).reshape({4});
    EXPECT_TRUE(all_close(row1, want, 0.0, dt == DType::kF16 ? 1e-3 : 8e-3));
    EXPECT_TRUE(all_close(narrow(g, 0, 0, 1), zeros({1, 4})));
  }
}

TEST(Embedding, OutOfRangeIndexNamesIndexAndRows) {
  Tensor w = random_tensor({10, 2}, 9);
  expect_invalid([&] { embedding(w, idx({1, 12, 3}, {3})); }, {"[embedding]", "[0, 10)", "got 12", "position 1"});
  expect_invalid([&] { embedding(w, idx({-1}, {1})); }, {"[embedding]", "[0, 10)", "got -1"});
}

TEST(Embedding, ArgumentErrors) {
  Tensor w = random_tensor({10, 2}, 10);
  expect_invalid([&] { embedding(w, idx({1}, {1}), 10); }, {"[embedding]", "padding_idx < 10", "got 10"});
  expect_invalid([&] { embedding(w, Tensor::from_vector(std::vector<int32_t>{1}, {1})); },
                 {"[embedding]", "int64", "int32"});
  expect_invalid([&] { embedding(random_tensor({10}, 11), idx({1}, {1})); }, {"[embedding]", "(V, D)", "[10]"});
  expect_invalid([&] { embedding(arange(4).reshape({2, 2}), idx({1}, {1})); }, {"[embedding]", "int64", "cpu"});
}

}  // namespace
}  // namespace tandem
