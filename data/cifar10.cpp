// CIFAR-10 loading: check each binary batch file is whole records of the expected
// count with valid labels, then normalise its pixels per channel into one tensor.
#include "data/cifar10.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace tandem::data {
namespace {

constexpr const char* kDownloadHint =
    " (download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it)";

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("[CIFAR10] " + path + ": " + what);
}

/// Reads the whole of `path` after checking its size is `records` records.
std::vector<unsigned char> read_batch_file(const std::string& path, int64_t records) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw std::runtime_error("[CIFAR10] missing file " + path + kDownloadHint);
  }
  const auto size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) fail(path, "cannot read the file size: " + ec.message());
  const int64_t rec = CIFAR10::kRecordBytes;
  if (size % rec != 0) {
    fail(path, "expected a whole number of " + std::to_string(rec) + "-byte records, got " + std::to_string(size) +
                   " bytes (" + std::to_string(size / rec) + " records and " + std::to_string(size % rec) +
                   " bytes over)");
  }
  if (size != records * rec) {
    fail(path, "expected " + std::to_string(records) + " records (" + std::to_string(records * rec) +
                   " bytes), got " + std::to_string(size / rec) + " records (" + std::to_string(size) + " bytes)");
  }
  std::vector<unsigned char> bytes(static_cast<size_t>(size));
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open file");
  f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (f.gcount() != static_cast<std::streamsize>(size)) {
    fail(path, "expected to read " + std::to_string(size) + " bytes, got " + std::to_string(f.gcount()));
  }
  return bytes;
}

}  // namespace

std::pair<Tensor, Tensor> load_cifar10(const std::string& dir, Split split, int64_t records_per_file) {
  if (records_per_file < 1) {
    throw std::invalid_argument("[CIFAR10] expected records_per_file >= 1, got " + std::to_string(records_per_file));
  }
  if (!std::filesystem::is_directory(dir)) {
    throw std::runtime_error("[CIFAR10] dataset directory " + dir + " does not exist" + kDownloadHint);
  }
  std::vector<std::string> names;
  if (split == Split::kTrain) {
    for (int i = 1; i <= 5; ++i) names.push_back("data_batch_" + std::to_string(i) + ".bin");
  } else {
    names.push_back("test_batch.bin");
  }
  // Check every file exists before reading any, so a missing one fails fast.
  std::vector<std::string> paths;
  for (const auto& name : names) {
    paths.push_back((std::filesystem::path(dir) / name).string());
    if (!std::filesystem::exists(paths.back())) {
      throw std::runtime_error("[CIFAR10] missing file " + paths.back() + kDownloadHint);
    }
  }

  const int64_t n = records_per_file * static_cast<int64_t>(paths.size());
  constexpr int64_t kPlane = 32 * 32;
  Tensor x = Tensor::empty({n, 3, 32, 32}, {.dtype = DType::kF32});
  Tensor y = Tensor::empty({n}, {.dtype = DType::kI64});
  float* xd = x.data<float>();
  int64_t* yd = y.data<int64_t>();
  // (v/255 - mean)/std folded into one multiply-add per pixel and channel.
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = static_cast<float>(1.0 / (255.0 * CIFAR10::kStd[c]));
    shift[c] = static_cast<float>(-CIFAR10::kMean[c] / CIFAR10::kStd[c]);
  }

  int64_t row = 0;
  for (const auto& path : paths) {
    std::vector<unsigned char> bytes = read_batch_file(path, records_per_file);
    for (int64_t r = 0; r < records_per_file; ++r, ++row) {
      const unsigned char* rec = bytes.data() + r * CIFAR10::kRecordBytes;
      if (rec[0] >= CIFAR10::kNumClasses) {
        fail(path, "expected labels in [0, 10), got " + std::to_string(rec[0]) + " in record " + std::to_string(r));
      }
      yd[row] = rec[0];
      float* dst = xd + row * CIFAR10::kImageBytes;
      for (int c = 0; c < 3; ++c) {
        const unsigned char* src = rec + 1 + c * kPlane;
        float* out = dst + c * kPlane;
        for (int64_t p = 0; p < kPlane; ++p) out[p] = static_cast<float>(src[p]) * scale[c] + shift[c];
      }
    }
  }
  return {std::move(x), std::move(y)};
}

CIFAR10::CIFAR10(const std::string& dir, Split split, int64_t records_per_file)
    : CIFAR10(load_cifar10(dir, split, records_per_file)) {}

CIFAR10::CIFAR10(std::pair<Tensor, Tensor> data) : TensorDataset(std::move(data.first), std::move(data.second)) {}

}  // namespace tandem::data
