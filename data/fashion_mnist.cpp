// Fashion-MNIST loading: locate the IDX files, check they agree, normalise the images.
#include "data/fashion_mnist.h"

#include <filesystem>
#include <stdexcept>

#include "data/idx.h"

namespace tandem::data {
namespace {

constexpr const char* kInstallHint = " (on Debian: apt-get install dataset-fashion-mnist)";

/// The path of `stem` in `dir`, gzipped or not; throws naming both candidates if neither exists.
std::string find_file(const std::filesystem::path& dir, const std::string& stem) {
  std::filesystem::path gz = dir / (stem + ".gz");
  std::filesystem::path raw = dir / stem;
  if (std::filesystem::exists(gz)) return gz.string();
  if (std::filesystem::exists(raw)) return raw.string();
  throw std::runtime_error("[FashionMNIST] missing file " + gz.string() + " (or " + raw.string() + ")" +
                           kInstallHint);
}

}  // namespace

std::pair<Tensor, Tensor> load_fashion_mnist(const std::string& dir, Split split) {
  if (!std::filesystem::is_directory(dir)) {
    throw std::runtime_error("[FashionMNIST] dataset directory " + dir + " does not exist" + kInstallHint);
  }
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  const std::string image_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const std::string label_path = find_file(dir, prefix + "-labels-idx1-ubyte");
  IdxArray images = read_idx(image_path);
  IdxArray labels = read_idx(label_path);

  if (images.shape.size() != 3 || images.shape[1] != 28 || images.shape[2] != 28) {
    throw std::runtime_error("[FashionMNIST] " + image_path + ": expected images of shape (N, 28, 28), got " +
                             shape_str(images.shape));
  }
  if (labels.shape.size() != 1 || labels.shape[0] != images.shape[0]) {
    throw std::runtime_error("[FashionMNIST] " + label_path + ": expected " + std::to_string(images.shape[0]) +
                             " labels to match " + image_path + ", got shape " + shape_str(labels.shape));
  }
  const int64_t n = images.shape[0];

  Tensor x = Tensor::empty({n, 1, 28, 28}, {.dtype = DType::kF32});
  float* xd = x.data<float>();
  // (v/255 - mean)/std folded into one multiply-add per pixel.
  const float scale = static_cast<float>(1.0 / (255.0 * FashionMNIST::kStd));
  const float shift = static_cast<float>(-FashionMNIST::kMean / FashionMNIST::kStd);
  for (size_t i = 0; i < images.data.size(); ++i) xd[i] = static_cast<float>(images.data[i]) * scale + shift;

  Tensor y = Tensor::empty({n}, {.dtype = DType::kI64});
  int64_t* yd = y.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    uint8_t label = labels.data[static_cast<size_t>(i)];
    if (label >= FashionMNIST::kNumClasses) {
      throw std::runtime_error("[FashionMNIST] " + label_path + ": expected labels in [0, 10), got " +
                               std::to_string(label) + " at index " + std::to_string(i));
    }
    yd[i] = label;
  }
  return {std::move(x), std::move(y)};
}

FashionMNIST::FashionMNIST(const std::string& dir, Split split) : FashionMNIST(load_fashion_mnist(dir, split)) {}

FashionMNIST::FashionMNIST(std::pair<Tensor, Tensor> data)
    : TensorDataset(std::move(data.first), std::move(data.second)) {}

}  // namespace tandem::data
