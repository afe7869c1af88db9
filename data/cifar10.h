// CIFAR-10 (Krizhevsky 2009): 32x32 colour images of 10 classes, 50000 for training
// (data_batch_1..5.bin) and 10000 for testing (test_batch.bin), read from the
// binary version: records of 1 label byte followed by 3072 pixel bytes (R, G, B planes).
#pragma once

#include <string>

#include "data/dataset.h"

namespace tandem::data {

/// The directory the official cifar-10-binary.tar.gz unpacks to, relative to the
/// working directory: no distribution packages CIFAR-10.
inline constexpr const char* kCifar10DefaultDir = "cifar-10-batches-bin";

/// Images as f32 (N, 3, 32, 32), normalised per channel as (x/255 - mean[c]) / std[c]
/// with the training set's statistics; labels as int64 (N).
class CIFAR10 : public TensorDataset {
 public:
  static constexpr double kMean[3] = {0.4914, 0.4822, 0.4465};
  static constexpr double kStd[3] = {0.2470, 0.2435, 0.2616};
  static constexpr int64_t kNumClasses = 10;
  static constexpr int64_t kImageBytes = 3 * 32 * 32;
  static constexpr int64_t kRecordBytes = 1 + kImageBytes;
  /// Every file of the official release holds exactly this many records.
  static constexpr int64_t kRecordsPerFile = 10000;

  /// Loads `split` from `dir`: data_batch_1.bin..data_batch_5.bin for kTrain,
  /// test_batch.bin for kTest. `records_per_file` is what each file must hold (tests
  /// write smaller files). Throws std::runtime_error naming the path when the
  /// directory or a file is missing, a file is not `records_per_file` whole records,
  /// or a label is not in [0, 10).
  explicit CIFAR10(const std::string& dir = kCifar10DefaultDir, Split split = Split::kTrain,
                   int64_t records_per_file = kRecordsPerFile);

 private:
  explicit CIFAR10(std::pair<Tensor, Tensor> data);
};

/// Reads images and labels of one split: ((N,3,32,32) f32 normalised, (N) int64).
std::pair<Tensor, Tensor> load_cifar10(const std::string& dir, Split split,
                                       int64_t records_per_file = CIFAR10::kRecordsPerFile);

}  // namespace tandem::data
