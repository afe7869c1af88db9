// Tests of the data sets: the CIFAR-10 binary reader on small synthetic batch files
// (parsing, per-channel normalisation, every validation error), SyntheticImages
// (determinism per index, class structure, DataLoader use, errors) and CharText
// (vocabulary, split, windows, stride, DataLoader use, errors).
#include <cmath>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "data/cifar10.h"
#include "data/dataloader.h"
#include "data/synthetic.h"
#include "data/text.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace tandem;
using namespace tandem::data;

namespace {

using tandem::testing::TempDir;
using tandem::testing::write_raw;

/// The pixel byte of record `r`, channel c, position p of file `file`: varied, and
/// covering 0 and 255.
uint8_t pixel(int file, int64_t r, int c, int64_t p) {
  return static_cast<uint8_t>((file * 53 + r * 29 + c * 101 + p * 7) % 256);
}

/// CIFAR-10 records: label byte then 3072 pixel bytes in channel planes.
std::vector<unsigned char> cifar_bytes(int file, const std::vector<uint8_t>& labels) {
  std::vector<unsigned char> out;
  for (size_t r = 0; r < labels.size(); ++r) {
    out.push_back(labels[r]);
    for (int c = 0; c < 3; ++c) {
      for (int64_t p = 0; p < 1024; ++p) out.push_back(pixel(file, static_cast<int64_t>(r), c, p));
    }
  }
  return out;
}

/// Writes the five training files (3 records each, labels from `file`) and the test file.
void write_cifar_dir(const fs::path& dir, int64_t records = 3) {
  for (int f = 1; f <= 5; ++f) {
    std::vector<uint8_t> labels;
    for (int64_t r = 0; r < records; ++r) labels.push_back(static_cast<uint8_t>((f * 3 + r) % 10));
    write_raw(dir / ("data_batch_" + std::to_string(f) + ".bin"), cifar_bytes(f, labels));
  }
  std::vector<uint8_t> labels;
  for (int64_t r = 0; r < records; ++r) labels.push_back(static_cast<uint8_t>(9 - r % 10));
  write_raw(dir / "test_batch.bin", cifar_bytes(0, labels));
}

/// Expects `fn` to throw std::runtime_error whose message contains every one of `parts`.
void expect_runtime_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a std::runtime_error";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
  }
}

}  // namespace

// ---- CIFAR-10 -------------------------------------------------------------------------

TEST(CIFAR10, TrainSplitConcatenatesFiveFilesAndNormalisesPerChannel) {
  TempDir dir;
  write_cifar_dir(dir.path());
  CIFAR10 ds(dir.path().string(), Split::kTrain, 3);
  ASSERT_EQ(ds.size(), 15);
  EXPECT_EQ(ds.inputs().shape(), (Shape{15, 3, 32, 32}));
  EXPECT_EQ(ds.inputs().dtype(), DType::kF32);
  EXPECT_EQ(ds.targets().dtype(), DType::kI64);
  EXPECT_EQ(ds.input_shape(), (Shape{3, 32, 32}));

  std::vector<int64_t> want_labels;
  for (int f = 1; f <= 5; ++f) {
    for (int r = 0; r < 3; ++r) want_labels.push_back((f * 3 + r) % 10);
  }
  EXPECT_EQ(ds.targets().to_vector<int64_t>(), want_labels);

  const double mean[3] = {0.4914, 0.4822, 0.4465}, stdev[3] = {0.2470, 0.2435, 0.2616};
  auto x = ds.inputs().to_vector<float>();
  for (int f = 1; f <= 5; ++f) {
    for (int64_t r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) {
        for (int64_t p : {int64_t{0}, int64_t{1}, int64_t{33}, int64_t{1023}}) {
          int64_t row = (f - 1) * 3 + r;
          double want = (pixel(f, r, c, p) / 255.0 - mean[c]) / stdev[c];
          EXPECT_NEAR(x[static_cast<size_t>((row * 3 + c) * 1024 + p)], want, 1e-5)
              << "file " << f << " record " << r << " channel " << c << " pixel " << p;
        }
      }
    }
  }
}

TEST(CIFAR10, TestSplitReadsTestBatch) {
  TempDir dir;
  write_cifar_dir(dir.path(), 4);
  CIFAR10 ds(dir.path().string(), Split::kTest, 4);
  ASSERT_EQ(ds.size(), 4);
  EXPECT_EQ(ds.targets().to_vector<int64_t>(), (std::vector<int64_t>{9, 8, 7, 6}));
  // Pixel 0 of channel 2 of record 1 of file 0.
  float got = ds.inputs().to_vector<float>()[(1 * 3 + 2) * 1024];
  EXPECT_NEAR(got, (pixel(0, 1, 2, 0) / 255.0 - 0.4465) / 0.2616, 1e-5);
}

TEST(CIFAR10, ExtremesMapToTheNormalisedRange) {
  TempDir dir;
  std::vector<unsigned char> bytes(2 * 3073, 0);
  bytes[0] = 1;
  std::fill(bytes.begin() + 3073 + 1, bytes.end(), 255);
  write_raw(dir.path() / "test_batch.bin", bytes);
  CIFAR10 ds(dir.path().string(), Split::kTest, 2);
  auto x = ds.inputs().to_vector<float>();
  EXPECT_NEAR(x[0], -0.4914 / 0.2470, 1e-5);
  EXPECT_NEAR(x[3072 + 2 * 1024], (1.0 - 0.4465) / 0.2616, 1e-5);
  EXPECT_EQ(ds.targets().to_vector<int64_t>(), (std::vector<int64_t>{1, 0}));
}

TEST(CIFAR10, FullSizeTestFileWithDefaultRecordCount) {
  TempDir dir;
  std::vector<uint8_t> labels(10000);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<uint8_t>(i % 10);
  write_raw(dir.path() / "test_batch.bin", cifar_bytes(0, labels));
  CIFAR10 ds(dir.path().string(), Split::kTest);
  EXPECT_EQ(ds.size(), 10000);
  EXPECT_EQ(ds.targets().to_vector<int64_t>()[9999], 9);
}

TEST(CIFAR10, WorksWithTheDataLoader) {
  TempDir dir;
  write_cifar_dir(dir.path());
  auto ds = std::make_shared<CIFAR10>(dir.path().string(), Split::kTrain, 3);
  DataLoader loader(ds, {.batch_size = 4, .shuffle = false});
  int64_t seen = 0;
  for (Batch& b : loader) {
    EXPECT_EQ(b.input.shape()[1], 3);
    seen += b.input.size(0);
  }
  EXPECT_EQ(seen, 15);
}

TEST(CIFAR10, MissingDirectoryNamesPathAndSource) {
  expect_runtime_error([] { CIFAR10("/nonexistent/tandem-cifar", Split::kTest); },
                       {"[CIFAR10]", "/nonexistent/tandem-cifar", "cifar-10-binary.tar.gz"});
}

TEST(CIFAR10, MissingFileNamesIt) {
  TempDir dir;
  write_cifar_dir(dir.path());
  fs::remove(dir.path() / "data_batch_4.bin");
  expect_runtime_error([&] { CIFAR10(dir.path().string(), Split::kTrain, 3); },
                       {"missing file", (dir.path() / "data_batch_4.bin").string()});
}

TEST(CIFAR10, PartialRecordNamesFileAndSizes) {
  TempDir dir;
  write_cifar_dir(dir.path());
  auto bytes = cifar_bytes(0, {1, 2, 3});
  bytes.resize(bytes.size() - 10);
  write_raw(dir.path() / "test_batch.bin", bytes);
  const std::string path = (dir.path() / "test_batch.bin").string();
  expect_runtime_error([&] { CIFAR10(dir.path().string(), Split::kTest, 3); },
                       {path, "whole number of 3073-byte records", "got 9209 bytes", "2 records and 3063 bytes over"});
}

TEST(CIFAR10, WrongRecordCountNamesExpectedAndActual) {
  TempDir dir;
  write_cifar_dir(dir.path());
  write_raw(dir.path() / "data_batch_2.bin", cifar_bytes(2, {1, 2}));
  const std::string path = (dir.path() / "data_batch_2.bin").string();
  expect_runtime_error([&] { CIFAR10(dir.path().string(), Split::kTrain, 3); },
                       {path, "expected 3 records (9219 bytes)", "got 2 records (6146 bytes)"});
  // The official count by default.
  expect_runtime_error([&] { CIFAR10(dir.path().string(), Split::kTest); },
                       {"test_batch.bin", "expected 10000 records (30730000 bytes)", "got 3 records"});
}

TEST(CIFAR10, EmptyFileIsAWrongCount) {
  TempDir dir;
  write_raw(dir.path() / "test_batch.bin", {});
  expect_runtime_error([&] { CIFAR10(dir.path().string(), Split::kTest, 1); },
                       {"expected 1 records (3073 bytes)", "got 0 records (0 bytes)"});
}

TEST(CIFAR10, LabelOutOfRangeNamesFileValueAndRecord) {
  TempDir dir;
  write_cifar_dir(dir.path());
  write_raw(dir.path() / "data_batch_5.bin", cifar_bytes(5, {3, 10, 4}));
  const std::string path = (dir.path() / "data_batch_5.bin").string();
  expect_runtime_error([&] { CIFAR10(dir.path().string(), Split::kTrain, 3); },
                       {path, "expected labels in [0, 10)", "got 10 in record 1"});
}

TEST(CIFAR10, NonPositiveRecordCountIsACallerError) {
  tandem::testing::expect_invalid([] { CIFAR10("/tmp", Split::kTest, 0); }, {"records_per_file >= 1", "got 0"});
}

// ---- SyntheticImages ------------------------------------------------------------------

TEST(SyntheticImages, ShapesAndDtypes) {
  SyntheticImages ds(10, {3, 8, 5}, 4, 1);
  EXPECT_EQ(ds.size(), 10);
  EXPECT_EQ(ds.input_shape(), (Shape{3, 8, 5}));
  EXPECT_EQ(ds.input_dtype(), DType::kF32);
  EXPECT_EQ(ds.target_shape(), Shape{});
  EXPECT_EQ(ds.target_dtype(), DType::kI64);
  std::vector<int64_t> idx{0, 9, 3};
  Batch b = ds.get_batch(idx);
  EXPECT_EQ(b.input.shape(), (Shape{3, 3, 8, 5}));
  EXPECT_EQ(b.target.shape(), (Shape{3}));
}

TEST(SyntheticImages, DeterministicPerIndexWhateverTheOrder) {
  SyntheticImages ds(50, {1, 7, 7}, 5, 42);
  std::vector<int64_t> fwd{3, 17, 40}, rev{40, 17, 3};
  Batch a = ds.get_batch(fwd), b = ds.get_batch(rev);
  auto xa = a.input.to_vector<float>(), xb = b.input.to_vector<float>();
  auto ya = a.target.to_vector<int64_t>(), yb = b.target.to_vector<int64_t>();
  const size_t numel = 49;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(ya[i], yb[2 - i]);
    for (size_t j = 0; j < numel; ++j) ASSERT_EQ(xa[i * numel + j], xb[(2 - i) * numel + j]);
  }
  // A second data set with the same arguments gives the same samples; another seed does not.
  SyntheticImages same(50, {1, 7, 7}, 5, 42), other(50, {1, 7, 7}, 5, 43);
  EXPECT_EQ(same.get_batch(fwd).input.to_vector<float>(), xa);
  EXPECT_NE(other.get_batch(fwd).input.to_vector<float>(), xa);
}

TEST(SyntheticImages, ClassesShareAMeanAndLabelsCoverAllClasses) {
  const int64_t n = 400, classes = 4;
  SyntheticImages ds(n, {2, 4, 4}, classes, 7, 0.5);
  std::vector<int64_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
  Batch b = ds.get_batch(all);
  auto x = b.input.to_vector<float>();
  auto y = b.target.to_vector<int64_t>();
  std::map<int64_t, int64_t> count;
  for (int64_t v : y) {
    ASSERT_GE(v, 0);
    ASSERT_LT(v, classes);
    ++count[v];
  }
  ASSERT_EQ(static_cast<int64_t>(count.size()), classes);
  for (auto [k, c] : count) EXPECT_GT(c, n / classes / 2) << "class " << k;

  // Per-class means: the noise averages out, so samples sit nearer their own class
  // mean than another's, and the noise around it has the requested spread.
  const size_t numel = 32;
  std::vector<std::vector<double>> mean(classes, std::vector<double>(numel, 0.0));
  for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
    for (size_t j = 0; j < numel; ++j) mean[static_cast<size_t>(y[i])][j] += x[i * numel + j];
  }
  for (int64_t k = 0; k < classes; ++k) {
    for (double& m : mean[static_cast<size_t>(k)]) m /= static_cast<double>(count[k]);
  }
  double sq = 0.0;
  int64_t nearest_own = 0;
  for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
    double best = 1e300;
    int64_t arg = -1;
    for (int64_t k = 0; k < classes; ++k) {
      double d = 0.0;
      for (size_t j = 0; j < numel; ++j) d += std::pow(x[i * numel + j] - mean[static_cast<size_t>(k)][j], 2);
      if (d < best) best = d, arg = k;
      if (k == y[i]) sq += d;
    }
    nearest_own += arg == y[i];
  }
  EXPECT_EQ(nearest_own, n);
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(n * static_cast<int64_t>(numel))), 0.5, 0.05);
}

TEST(SyntheticImages, WorksWithTheDataLoader) {
  auto ds = std::make_shared<SyntheticImages>(23, Shape{3, 4, 4}, 10, 3);
  DataLoader loader(ds, {.batch_size = 8, .seed = 1});
  std::vector<int64_t> sizes;
  for (Batch& b : loader) {
    EXPECT_EQ(b.input.shape(), (Shape{b.input.size(0), 3, 4, 4}));
    sizes.push_back(b.input.size(0));
  }
  EXPECT_EQ(sizes, (std::vector<int64_t>{8, 8, 7}));
}

TEST(SyntheticImages, Errors) {
  tandem::testing::expect_invalid([] { SyntheticImages(-1, {1, 2, 2}, 2); }, {"n >= 0", "got -1"});
  tandem::testing::expect_invalid([] { SyntheticImages(4, {}, 2); }, {"rank >= 1", "got []"});
  tandem::testing::expect_invalid([] { SyntheticImages(4, {3, 0, 2}, 2); }, {"dimension >= 1", "[3, 0, 2]"});
  tandem::testing::expect_invalid([] { SyntheticImages(4, {1, 2, 2}, 0); }, {"num_classes >= 1", "got 0"});
  tandem::testing::expect_invalid([] { SyntheticImages(4, {1, 2, 2}, 2, 0, -1.0); }, {"noise >= 0", "got -1"});

  SyntheticImages ds(4, {1, 2, 2}, 2);
  std::vector<int64_t> bad{1, 4};
  try {
    ds.get_batch(bad);
    ADD_FAILURE() << "expected std::out_of_range";
  } catch (const std::out_of_range& e) {
    EXPECT_NE(std::string(e.what()).find("expected indices in [0, 4), got 4"), std::string::npos) << e.what();
  }
  Batch wrong = ds.allocate_batch(3);
  std::vector<int64_t> two{0, 1};
  tandem::testing::expect_invalid([&] { ds.gather(two, wrong); }, {"batch.input", "[2, 1, 2, 2]", "got cpu float32 [3, 1, 2, 2]"});
}

// ---- CharText -------------------------------------------------------------------------

namespace {

/// Writes `text` to a file of `dir` and returns its path.
std::string text_file(const TempDir& dir, const std::string& text, const std::string& name = "text.txt") {
  const fs::path path = dir.path() / name;
  write_raw(path, std::vector<unsigned char>(text.begin(), text.end()));
  return path.string();
}

}  // namespace

TEST(CharText, VocabularySplitAndShiftedWindows) {
  TempDir dir;
  // 40 bytes: "abc" x 12, then "z\nq!", the last 10% and so the test split.
  std::string text;
  for (int i = 0; i < 12; ++i) text += "abc";
  text += "z\nq!";
  const std::string path = text_file(dir, text);
  CharText train(path, Split::kTrain, {.block_size = 5});
  // The vocabulary is the whole file's distinct bytes in increasing order.
  EXPECT_EQ(train.vocab_size(), 7);  // '\n' '!' 'a' 'b' 'c' 'q' 'z'
  EXPECT_EQ(train.decode({0, 1, 2, 6}), "\n!az");
  EXPECT_EQ(train.encode("cab\n"), (std::vector<int64_t>{4, 2, 3, 0}));
  EXPECT_EQ(static_cast<int64_t>(train.tokens().size()), 36);
  EXPECT_EQ(train.size(), 7);  // (36 - 1 - 5) / 5 + 1 non-overlapping windows
  EXPECT_EQ(train.input_shape(), (Shape{5}));
  EXPECT_EQ(train.target_shape(), (Shape{5}));
  EXPECT_EQ(train.input_dtype(), DType::kI64);

  // A sample is a window and the same window one token later.
  std::vector<int64_t> idx{0, 6};
  Batch b = train.get_batch(idx);
  EXPECT_EQ(b.input.shape(), (Shape{2, 5}));
  EXPECT_EQ(train.decode(b.input.narrow(0, 0, 1).to_vector<int64_t>()), "abcab");
  EXPECT_EQ(train.decode(b.target.narrow(0, 0, 1).to_vector<int64_t>()), "bcabc");
  EXPECT_EQ(train.decode(b.input.narrow(0, 1, 1).to_vector<int64_t>()), text.substr(30, 5));
  EXPECT_EQ(train.decode(b.target.narrow(0, 1, 1).to_vector<int64_t>()), text.substr(31, 5));

  CharText test(path, Split::kTest, {.block_size = 3});
  EXPECT_EQ(test.vocab_size(), 7);
  EXPECT_EQ(test.decode({test.tokens().begin(), test.tokens().end()}), "z\nq!");
  EXPECT_EQ(test.size(), 1);
}

TEST(CharText, StrideGivesOverlappingWindows) {
  TempDir dir;
  const std::string path = text_file(dir, "0123456789abcdefghijklmnopqrstuvwxyz");  // 36 bytes, 32 train
  CharText every(path, Split::kTrain, {.block_size = 8, .stride = 1});
  EXPECT_EQ(every.size(), 32 - 8);
  std::vector<int64_t> idx{3};
  EXPECT_EQ(every.decode(every.get_batch(idx).input.to_vector<int64_t>()), "3456789a");
  CharText halves(path, Split::kTrain, {.block_size = 8, .stride = 4});
  EXPECT_EQ(halves.size(), (32 - 1 - 8) / 4 + 1);
}

TEST(CharText, WorksWithTheDataLoader) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the quick brown fox " + std::to_string(i) + "\n";
  auto ds = std::make_shared<CharText>(text_file(dir, text), Split::kTrain, CharTextOptions{.block_size = 16});
  DataLoader loader(ds, {.batch_size = 32, .seed = 2});
  int64_t rows = 0;
  for (Batch& b : loader) {
    EXPECT_EQ(b.input.shape(), (Shape{b.input.size(0), 16}));
    EXPECT_EQ(b.target.dtype(), DType::kI64);
    rows += b.input.size(0);
  }
  EXPECT_EQ(rows, ds->size());
}

TEST(CharText, Errors) {
  TempDir dir;
  expect_runtime_error([&] { CharText((dir.path() / "absent.txt").string(), Split::kTrain); },
                       {"[CharText] cannot open", "absent.txt"});
  const std::string path = text_file(dir, "short text, 24 bytes....");
  tandem::testing::expect_invalid([&] { CharText(path, Split::kTrain, {.block_size = 64}); },
                                  {"[CharText]", "training split", "block_size + 1 = 65", "got 21", "24 bytes"});
  tandem::testing::expect_invalid([&] { CharText(path, Split::kTest, {.block_size = 4}); },
                                  {"test split", "block_size + 1 = 5", "got 3"});
  tandem::testing::expect_invalid([&] { CharText(path, Split::kTrain, {.block_size = 0}); }, {"block_size >= 1", "got 0"});
  tandem::testing::expect_invalid([&] { CharText(path, Split::kTrain, {.block_size = 4, .stride = -1}); },
                                  {"stride >= 0", "got -1"});
  tandem::testing::expect_invalid([&] { CharText(path, Split::kTrain, {.block_size = 4, .val_fraction = 1.0}); },
                                  {"val_fraction in (0, 1)", "got 1"});
  CharText ds(path, Split::kTrain, {.block_size = 4});
  tandem::testing::expect_invalid([&] { ds.encode("short~"); }, {"vocabulary", "byte 126", "position 5"});
  tandem::testing::expect_invalid([&] { ds.decode({0, 99}); }, {"token ids in [0, ", "got 99"});
  std::vector<int64_t> bad{ds.size()};
  EXPECT_THROW(ds.get_batch(bad), std::out_of_range);
  Batch wrong = ds.allocate_batch(3);
  std::vector<int64_t> two{0, 1};
  tandem::testing::expect_invalid([&] { ds.gather(two, wrong); }, {"batch.input", "[2, 4]", "got cpu int64 [3, 4]"});
}
