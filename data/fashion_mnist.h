// Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of 10 clothing classes,
// 60000 for training and 10000 for testing, read from the four IDX files.
#pragma once

#include <string>

#include "data/dataset.h"

namespace tandem::data {


/// Where Debian's dataset-fashion-mnist package installs the files.
inline constexpr const char* kFashionMnistDefaultDir = "/usr/share/datasets/fashion-mnist";

/// Images as f32 (N, 1, 28, 28), normalised (x/255 - mean) / std with the training
/// set's statistics; labels as int64 (N).
class FashionMNIST : public TensorDataset {
 public:
  static constexpr double kMean = 0.2860;
  static constexpr double kStd = 0.3530;
  static constexpr int64_t kNumClasses = 10;

  /// Loads `split` from `dir`, which holds train-images-idx3-ubyte.gz,
  /// train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz
  /// (or the same names without .gz). Throws std::runtime_error naming the missing
  /// path when the directory or a file is absent, or when images and labels disagree.
  explicit FashionMNIST(const std::string& dir = kFashionMnistDefaultDir, Split split = Split::kTrain);

 private:
  FashionMNIST(std::pair<Tensor, Tensor> data);
};

/// Reads images and labels of one split: ((N,1,28,28) f32 normalised, (N) int64).
std::pair<Tensor, Tensor> load_fashion_mnist(const std::string& dir, Split split);

}  // namespace tandem::data
