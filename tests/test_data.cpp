// Tests of data/: the IDX reader on synthetic files (gzipped, raw, damaged),
// Fashion-MNIST loading, TensorDataset, Philox shuffling and the DataLoader
// (epochs, seeds, drop_last, prefetch thread, exceptions, resume).
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <set>
#include <stdexcept>

#include "data/dataloader.h"
#include "data/dataset.h"
#include "data/fashion_mnist.h"
#include "data/idx.h"
#include "data/sampler.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace tandem;
using namespace tandem::data;

namespace {

using tandem::testing::TempDir;
using tandem::testing::write_raw;

std::vector<unsigned char> idx_bytes(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data,
                                     unsigned char type = 0x08) {
  std::vector<unsigned char> out{0, 0, type, static_cast<unsigned char>(dims.size())};
  for (uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(d >> s));
  }
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_gz(const fs::path& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

std::vector<uint8_t> iota_bytes(size_t n, uint8_t start = 1) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(start + i * 7);
  return v;
}

/// Expects read_idx(path) to throw std::runtime_error whose message contains every one of `parts`.
void expect_idx_error(const fs::path& path, const std::vector<std::string>& parts) {
  try {
    read_idx(path.string());
    ADD_FAILURE() << "expected read_idx to throw for " << path;
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
  }
}

}  // namespace

// ---- IDX ------------------------------------------------------------------------------

TEST(Idx, ReadsRawAndGzipAlike) {
  TempDir dir;
  auto data = iota_bytes(2 * 3 * 4);
  auto bytes = idx_bytes({2, 3, 4}, data);
  write_raw(dir.path() / "a.idx", bytes);
  write_gz(dir.path() / "a.idx.gz", bytes);
  for (const char* name : {"a.idx", "a.idx.gz"}) {
    IdxArray a = read_idx((dir.path() / name).string());
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3, 4})) << name;
    EXPECT_EQ(a.data, data) << name;
  }
}

TEST(Idx, ReadsRankOne) {
  TempDir dir;
  auto data = iota_bytes(5);
  write_gz(dir.path() / "l.gz", idx_bytes({5}, data));
  IdxArray a = read_idx((dir.path() / "l.gz").string());
  EXPECT_EQ(a.shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(a.data, data);
}

TEST(Idx, TruncatedNamesExpectedAndActualBytes) {
  TempDir dir;
  auto bytes = idx_bytes({4, 5}, iota_bytes(20));
  bytes.resize(bytes.size() - 3);
  write_gz(dir.path() / "t.gz", bytes);
  write_raw(dir.path() / "t.raw", bytes);
  expect_idx_error(dir.path() / "t.gz", {"truncated", "expected 20", "got 17"});
  expect_idx_error(dir.path() / "t.raw", {"truncated", "expected 20", "got 17"});
}

TEST(Idx, TruncatedHeader) {
  TempDir dir;
  auto bytes = idx_bytes({4, 5}, {});
  bytes.resize(6);
  write_raw(dir.path() / "h", bytes);
  expect_idx_error(dir.path() / "h", {"truncated header", "expected 2 dimensions"});
}

TEST(Idx, BadMagic) {
  TempDir dir;
  auto bytes = idx_bytes({3}, iota_bytes(3));
  bytes[0] = 0x1f;
  bytes[1] = 0x7e;
  write_raw(dir.path() / "m", bytes);
  expect_idx_error(dir.path() / "m", {"magic", "0x1f"});
}

TEST(Idx, NonU8Type) {
  TempDir dir;
  write_raw(dir.path() / "f", idx_bytes({3}, iota_bytes(12), 0x0d));
  expect_idx_error(dir.path() / "f", {"0x08", "got 0x0d"});
}

TEST(Idx, WrongRank) {
  TempDir dir;
  write_raw(dir.path() / "r0", idx_bytes({}, {}));
  expect_idx_error(dir.path() / "r0", {"rank", "got 0"});
  write_raw(dir.path() / "r5", idx_bytes({1, 1, 1, 1, 1}, {7}));
  expect_idx_error(dir.path() / "r5", {"rank", "got 5"});
}

TEST(Idx, ZeroDimension) {
  TempDir dir;
  write_raw(dir.path() / "z", idx_bytes({3, 0}, {}));
  expect_idx_error(dir.path() / "z", {"dimension > 0", "got 0 for dimension 1"});
}

TEST(Idx, TrailingBytes) {
  TempDir dir;
  auto bytes = idx_bytes({2, 2}, iota_bytes(4));
  bytes.push_back(9);
  bytes.push_back(9);
  write_gz(dir.path() / "x.gz", bytes);
  expect_idx_error(dir.path() / "x.gz", {"trailing", "got 2"});
}

TEST(Idx, MissingFile) {
  TempDir dir;
  expect_idx_error(dir.path() / "nope.gz", {"cannot open"});
}

// ---- Fashion-MNIST --------------------------------------------------------------------

TEST(FashionMNIST, SyntheticFilesAreNormalised) {
  TempDir dir;
  const uint32_t n = 3;
  std::vector<uint8_t> pixels(n * 28 * 28);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 31) % 256);
  write_gz(dir.path() / "t10k-images-idx3-ubyte.gz", idx_bytes({n, 28, 28}, pixels));
  write_raw(dir.path() / "t10k-labels-idx1-ubyte", idx_bytes({n}, {9, 0, 4}));  // raw works too
  FashionMNIST ds(dir.path().string(), Split::kTest);
  ASSERT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.inputs().shape(), (Shape{3, 1, 28, 28}));
  EXPECT_EQ(ds.inputs().dtype(), DType::kF32);
  EXPECT_EQ(ds.targets().dtype(), DType::kI64);
  EXPECT_EQ(ds.targets().to_vector<int64_t>(), (std::vector<int64_t>{9, 0, 4}));
  auto x = ds.inputs().to_vector<float>();
  for (size_t i : {size_t{0}, size_t{1}, size_t{100}, pixels.size() - 1}) {
    double want = (pixels[i] / 255.0 - 0.2860) / 0.3530;
    EXPECT_NEAR(x[i], want, 1e-5) << i;
  }
}

TEST(FashionMNIST, MissingDirectoryNamesPathAndPackage) {
  try {
    FashionMNIST ds("/nonexistent/tandem-fashion", Split::kTrain);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("/nonexistent/tandem-fashion"), std::string::npos) << msg;
    EXPECT_NE(msg.find("apt-get install dataset-fashion-mnist"), std::string::npos) << msg;
  }
}

TEST(FashionMNIST, MissingFileNamesIt) {
  TempDir dir;
  write_gz(dir.path() / "train-images-idx3-ubyte.gz", idx_bytes({1, 28, 28}, std::vector<uint8_t>(784, 3)));
  try {
    FashionMNIST ds(dir.path().string(), Split::kTrain);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("train-labels-idx1-ubyte.gz"), std::string::npos) << msg;
    EXPECT_NE(msg.find("apt-get install dataset-fashion-mnist"), std::string::npos) << msg;
  }
}

TEST(FashionMNIST, LabelCountMismatch) {
  TempDir dir;
  write_gz(dir.path() / "t10k-images-idx3-ubyte.gz", idx_bytes({2, 28, 28}, std::vector<uint8_t>(2 * 784, 3)));
  write_gz(dir.path() / "t10k-labels-idx1-ubyte.gz", idx_bytes({3}, {1, 2, 3}));
  EXPECT_THROW(FashionMNIST(dir.path().string(), Split::kTest), std::runtime_error);
}

TEST(FashionMNIST, RealFilesWhenInstalled) {
  if (!fs::exists(TANDEM_FASHION_MNIST_DIR)) GTEST_SKIP() << TANDEM_FASHION_MNIST_DIR << " absent";
  FashionMNIST train(TANDEM_FASHION_MNIST_DIR, Split::kTrain);
  FashionMNIST test(TANDEM_FASHION_MNIST_DIR, Split::kTest);
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(train.input_shape(), (Shape{1, 28, 28}));
  // Normalised with the training set's own statistics: mean ~0, std ~1.
  const float* x = train.inputs().data<float>();
  double sum = 0, sq = 0;
  const int64_t n = train.inputs().numel();
  for (int64_t i = 0; i < n; ++i) {
    sum += x[i];
    sq += double(x[i]) * x[i];
  }
  double mean = sum / n, stddev = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 2e-3);
  EXPECT_NEAR(stddev, 1.0, 2e-3);
  auto labels = train.targets().to_vector<int64_t>();
  std::vector<int64_t> counts(10, 0);
  for (int64_t l : labels) counts.at(static_cast<size_t>(l))++;
  for (int64_t c : counts) EXPECT_EQ(c, 6000);  // Fashion-MNIST is balanced
}

// ---- TensorDataset ----------------------------------------------------------------------

namespace {

/// N samples: input row i = [i, -i, 0.5 i] (f32), target i (int64).
std::shared_ptr<TensorDataset> index_dataset(int64_t n) {
  std::vector<float> x;
  std::vector<int64_t> y;
  for (int64_t i = 0; i < n; ++i) {
    x.insert(x.end(), {float(i), float(-i), 0.5f * float(i)});
    y.push_back(i);
  }
  return std::make_shared<TensorDataset>(Tensor::from_vector(x, {n, 3}), Tensor::from_vector(y, {n}));
}

std::vector<int64_t> targets_of(const Batch& b) { return b.target.to_vector<int64_t>(); }

}  // namespace

TEST(TensorDataset, GatherCopiesRows) {
  auto ds = index_dataset(10);
  std::vector<int64_t> idx{7, 2, 2, 9};
  Batch b = ds->get_batch(idx);
  EXPECT_EQ(b.input.shape(), (Shape{4, 3}));
  EXPECT_EQ(targets_of(b), idx);
  auto x = b.input.to_vector<float>();
  EXPECT_EQ(x[0], 7.0f);
  EXPECT_EQ(x[1], -7.0f);
  EXPECT_EQ(x[11], 4.5f);
}

TEST(TensorDataset, Errors) {
  auto ds = index_dataset(4);
  std::vector<int64_t> bad{1, 4};
  EXPECT_THROW(ds->get_batch(bad), std::out_of_range);
  Batch wrong = ds->allocate_batch(3);
  std::vector<int64_t> two{0, 1};
  try {
    ds->gather(two, wrong);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TensorDataset(Tensor::empty({3, 2}), Tensor::empty({4})), std::invalid_argument);
}

// ---- shuffling ------------------------------------------------------------------------------

TEST(Sampler, ShuffledIndicesIsAPermutation) {
  auto p = shuffled_indices(1000, 42);
  auto sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_EQ(p, shuffled_indices(1000, 42));
  EXPECT_NE(p, shuffled_indices(1000, 43));
  EXPECT_TRUE(shuffled_indices(0, 1).empty());
  EXPECT_EQ(shuffled_indices(1, 1), (std::vector<int64_t>{0}));
}

TEST(Sampler, ShuffleIsPinned) {
  // The order depends only on Philox, so it is the same on every platform and build;
  // these values pin it (a change would silently alter every training run).
  EXPECT_EQ(shuffled_indices(10, 0), (std::vector<int64_t>{1, 7, 5, 2, 4, 0, 6, 8, 3, 9}));
}

// ---- DataLoader -------------------------------------------------------------------------------

namespace {

std::vector<int64_t> run_epoch(DataLoader& loader, std::vector<int64_t>* batch_sizes = nullptr) {
  std::vector<int64_t> seen;
  for (Batch& b : loader) {
    auto t = targets_of(b);
    // Inputs travel with their targets.
    auto x = b.input.to_vector<float>();
    for (size_t i = 0; i < t.size(); ++i) EXPECT_EQ(x[3 * i], float(t[i]));
    seen.insert(seen.end(), t.begin(), t.end());
    if (batch_sizes) batch_sizes->push_back(b.target.size(0));
  }
  return seen;
}

}  // namespace

TEST(DataLoader, EachEpochVisitsEveryIndexOnce) {
  auto ds = index_dataset(103);
  DataLoader loader(ds, {.batch_size = 10, .seed = 7});
  EXPECT_EQ(loader.num_batches(), 11);
  std::vector<int64_t> sizes;
  auto seen = run_epoch(loader, &sizes);
  EXPECT_EQ(sizes.size(), 11u);
  EXPECT_EQ(sizes.back(), 3);
  auto sorted = seen;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 103; ++i) ASSERT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_NE(seen, sorted) << "shuffle produced the identity order";
  EXPECT_EQ(loader.epoch(), 1);
  EXPECT_EQ(loader.position(), 0);
}

TEST(DataLoader, SameSeedSameOrderNewEpochNewOrder) {
  auto ds = index_dataset(50);
  DataLoader a(ds, {.batch_size = 8, .seed = 3});
  DataLoader b(ds, {.batch_size = 8, .seed = 3});
  DataLoader c(ds, {.batch_size = 8, .seed = 4});
  auto a0 = run_epoch(a), b0 = run_epoch(b), c0 = run_epoch(c);
  EXPECT_EQ(a0, b0);
  EXPECT_NE(a0, c0);
  auto a1 = run_epoch(a);
  EXPECT_NE(a0, a1);
  EXPECT_EQ(a0, shuffled_indices(50, 3));
  EXPECT_EQ(a1, shuffled_indices(50, 4));
  b.set_epoch(1);
  EXPECT_EQ(run_epoch(b), a1);
  b.set_epoch(0);
  EXPECT_EQ(run_epoch(b), a0);
}

TEST(DataLoader, SequentialWithoutShuffle) {
  auto ds = index_dataset(7);
  DataLoader loader(ds, {.batch_size = 3, .shuffle = false});
  EXPECT_EQ(run_epoch(loader), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));
}

TEST(DataLoader, DropLast) {
  auto ds = index_dataset(23);
  DataLoader loader(ds, {.batch_size = 5, .drop_last = true});
  EXPECT_EQ(loader.num_batches(), 4);
  std::vector<int64_t> sizes;
  auto seen = run_epoch(loader, &sizes);
  EXPECT_EQ(sizes, (std::vector<int64_t>{5, 5, 5, 5}));
  EXPECT_EQ(seen.size(), 20u);
  // Too few samples for one batch: the epoch is empty but still counts.
  DataLoader tiny(index_dataset(3), {.batch_size = 5, .drop_last = true});
  EXPECT_TRUE(run_epoch(tiny).empty());
  EXPECT_EQ(tiny.epoch(), 1);
}

TEST(DataLoader, PrefetchMatchesSynchronous) {
  auto ds = index_dataset(200);
  for (int depth : {1, 2, 5}) {
    DataLoader sync(ds, {.batch_size = 16, .seed = 11, .prefetch_depth = 0});
    DataLoader async(ds, {.batch_size = 16, .seed = 11, .prefetch_depth = depth});
    for (int epoch = 0; epoch < 3; ++epoch) {
      std::vector<std::vector<float>> xs;
      for (Batch& b : sync) xs.push_back(b.input.to_vector<float>());
      size_t k = 0;
      for (Batch& b : async) {
        ASSERT_LT(k, xs.size());
        EXPECT_EQ(b.input.to_vector<float>(), xs[k]) << "depth " << depth << " epoch " << epoch << " batch " << k;
        ++k;
      }
      EXPECT_EQ(k, xs.size());
    }
  }
}

namespace {

/// Fails when asked for sample `bad`.
class FailingDataset : public TensorDataset {
 public:
  FailingDataset(int64_t n, int64_t bad) : TensorDataset(*index_dataset(n)), bad_(bad) {}
  void gather(std::span<const int64_t> indices, Batch& out) const override {
    for (int64_t i : indices) {
      if (i == bad_) throw std::runtime_error("sample " + std::to_string(i) + " is unreadable");
    }
    TensorDataset::gather(indices, out);
  }

 private:
  int64_t bad_;
};

}  // namespace

TEST(DataLoader, DatasetExceptionsReachTheConsumer) {
  for (int depth : {0, 2}) {
    auto ds = std::make_shared<FailingDataset>(40, 25);
    DataLoader loader(ds, {.batch_size = 10, .shuffle = false, .prefetch_depth = depth});
    int batches = 0;
    try {
      for (Batch& b : loader) {
        (void)b;
        ++batches;
      }
      FAIL() << "expected the dataset's exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "sample 25 is unreadable");
    }
    EXPECT_EQ(batches, 2) << "depth " << depth;
    // The failed batch was not handed out, so a retry starts there.
    EXPECT_EQ(loader.position(), 2);
  }
}

TEST(DataLoader, BreakAndResumeMidEpoch) {
  auto ds = index_dataset(60);
  DataLoader full(ds, {.batch_size = 7, .seed = 5});
  auto want = run_epoch(full);

  DataLoader loader(ds, {.batch_size = 7, .seed = 5});
  std::vector<int64_t> seen;
  for (Batch& b : loader) {
    auto t = targets_of(b);
    seen.insert(seen.end(), t.begin(), t.end());
    if (loader.position() == 3) break;
  }
  LoaderState saved = loader.state();
  EXPECT_EQ(saved.epoch, 0);
  EXPECT_EQ(saved.position, 3);

  // A new loader restored from the saved state finishes the epoch.
  DataLoader resumed(ds, {.batch_size = 7, .seed = 5});
  resumed.load_state(saved);
  auto rest = run_epoch(resumed);
  seen.insert(seen.end(), rest.begin(), rest.end());
  EXPECT_EQ(seen, want);
  EXPECT_EQ(resumed.epoch(), 1);

  // The original loader resumes where it stopped too.
  auto rest2 = run_epoch(loader);
  EXPECT_EQ(rest2, rest);
}

TEST(DataLoader, PositionAtEndStartsNextEpoch) {
  auto ds = index_dataset(20);
  DataLoader loader(ds, {.batch_size = 5, .seed = 1});
  loader.load_state({.epoch = 2, .position = 4});
  auto seen = run_epoch(loader);
  EXPECT_EQ(seen, shuffled_indices(20, 1 + 3));
  EXPECT_EQ(loader.epoch(), 4);
}

TEST(DataLoader, Errors) {
  auto ds = index_dataset(20);
  EXPECT_THROW(DataLoader(ds, {.batch_size = 0}), std::invalid_argument);
  EXPECT_THROW(DataLoader(nullptr, {}), std::invalid_argument);
  DataLoader loader(ds, {.batch_size = 5});
  try {
    loader.set_position(5);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[0, 4]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("got 5"), std::string::npos) << e.what();
  }
}

TEST(DataLoader, CustomSampler) {
  struct EvenSampler : Sampler {
    int64_t size() const override { return 5; }
    std::vector<int64_t> indices(int64_t) const override { return {8, 6, 4, 2, 0}; }
  };
  DataLoader loader(index_dataset(10), {.batch_size = 2}, std::make_shared<EvenSampler>());
  EXPECT_EQ(loader.num_batches(), 3);
  EXPECT_EQ(run_epoch(loader), (std::vector<int64_t>{8, 6, 4, 2, 0}));
}

TEST(DataLoader, AbandonedIterationShutsDownCleanly) {
  // Destroying a loader (or starting a new loop) while the prefetch thread is blocked
  // on a full queue must not hang.
  auto ds = index_dataset(1000);
  for (int i = 0; i < 20; ++i) {
    DataLoader loader(ds, {.batch_size = 3, .seed = uint64_t(i)});
    for (Batch& b : loader) {
      (void)b;
      break;
    }
    auto it = loader.begin();
    EXPECT_EQ((*it).target.size(0), 3);
  }
}
