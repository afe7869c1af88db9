// The checkpoint file format: round trips of every dtype and shape with metadata, the
// layout docs/CHECKPOINT.md promises (magic, version, aligned offsets), and a clear
// error naming the file and the tensor for each kind of damage; saves are atomic.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"
#include "train/checkpoint.h"

namespace tandem::train {
namespace {

using tandem::testing::TempDir;

NamedTensors sample_tensors() {
  return {{"model.weight", tandem::testing::random_tensor({3, 5}, 1, DType::kF32)},
          {"model.bias", tandem::testing::random_tensor({5}, 2, DType::kF64)},
          {"half", tandem::testing::random_tensor({2, 2, 2}, 3, DType::kF16)},
          {"bhalf", tandem::testing::random_tensor({7}, 4, DType::kBF16)},
          {"step", Tensor::from_vector(std::vector<int64_t>{42}, {})},
          {"ids", Tensor::from_vector(std::vector<int32_t>{1, -2, 3}, {3})},
          {"bytes", Tensor::from_vector(std::vector<uint8_t>{0, 255, 7}, {3})},
          {"mask", Tensor::from_vector(std::vector<bool>{true, false}, {2})},
          {"empty", Tensor::empty({0, 4})}};
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Runs `fn`, expects std::runtime_error, and checks the message holds every piece.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    for (const auto& p : pieces) EXPECT_NE(m.find(p), std::string::npos) << "missing '" << p << "' in: " << m;
  }
}

TEST(Checkpoint, RoundTripsEveryDtypeShapeAndMetadata) {
  TempDir dir;
  const auto path = dir.path() / "a.tck";
  NamedTensors in = sample_tensors();
  nlohmann::json meta = {{"step", 1234}, {"config", {{"lr", 0.1}, {"model", "cnn"}}}, {"rng", {1, 2, 3}}};
  save_checkpoint(path, in, meta);
  Checkpoint c = load_checkpoint(path);
  ASSERT_EQ(c.tensors.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(c.tensors[i].first, in[i].first);
    EXPECT_EQ(c.tensors[i].second.dtype(), in[i].second.dtype()) << in[i].first;
    EXPECT_EQ(c.tensors[i].second.shape(), in[i].second.shape()) << in[i].first;
    ASSERT_EQ(c.tensors[i].second.nbytes(), in[i].second.nbytes());
    if (in[i].second.nbytes() > 0) {
      EXPECT_EQ(std::memcmp(c.tensors[i].second.data_ptr(), in[i].second.data_ptr(), in[i].second.nbytes()), 0)
          << in[i].first << " differs bit for bit";
    }
  }
  EXPECT_EQ(c.metadata, meta);
  EXPECT_TRUE(c.contains("half"));
  EXPECT_FALSE(c.contains("nope"));
  EXPECT_THROW(c.at("nope"), std::out_of_range);
  verify_checkpoint(path);
}

TEST(Checkpoint, LayoutIsWhatTheSpecificationSays) {
  TempDir dir;
  const auto path = dir.path() / "a.tck";
  save_checkpoint(path, sample_tensors(), {{"epoch", 3}});
  const std::string bytes = read_file(path);
  ASSERT_GE(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(0, 8), "TANDEMCK");
  uint32_t version = 0;
  uint64_t header_len = 0;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&header_len, bytes.data() + 16, 8);
  EXPECT_EQ(version, 1u);
  EXPECT_EQ((24 + header_len) % 64, 0u) << "the data section starts 64-byte aligned";
  nlohmann::json header = nlohmann::json::parse(bytes.substr(24, header_len));
  EXPECT_EQ(header["format"], "tandem-checkpoint");
  EXPECT_EQ(header["metadata"]["epoch"], 3);
  CheckpointHeader h = read_checkpoint_header(path);
  EXPECT_EQ(h.file_size, bytes.size());
  ASSERT_EQ(h.tensors.size(), 9u);
  uint64_t previous_end = 24 + header_len;
  for (const CheckpointEntry& e : h.tensors) {
    EXPECT_EQ(e.offset % 64, 0u) << e.name;
    EXPECT_GE(e.offset, previous_end) << e.name << " overlaps the previous tensor";
    previous_end = e.offset + e.length;
    EXPECT_EQ(e.crc32, crc32_bytes(bytes.data() + e.offset, e.length)) << e.name;
  }
  EXPECT_EQ(h.tensors[0].name, "model.weight");
  EXPECT_EQ(h.tensors[0].length, 3u * 5u * 4u);
  EXPECT_EQ(h.tensors[2].dtype, DType::kF16);
}

TEST(Checkpoint, KnownCrc32) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32_bytes(s.data(), s.size()), 0xCBF43926u);  // the CRC-32 check value
}

TEST(Checkpoint, SaveReplacesAtomicallyAndLeavesNoTemporaryFile) {
  TempDir dir;
  const auto path = dir.path() / "ck.tck";
  save_checkpoint(path, {{"x", Tensor::from_vector(std::vector<float>{1, 2}, {2})}});
  save_checkpoint(path, {{"y", Tensor::from_vector(std::vector<float>{3}, {1})}});
  Checkpoint c = load_checkpoint(path);
  ASSERT_EQ(c.tensors.size(), 1u);
  EXPECT_EQ(c.tensors[0].first, "y");
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "ck.tck");
  }
  EXPECT_EQ(files, 1);
}

TEST(Checkpoint, FailedSaveKeepsThePreviousCheckpoint) {
  TempDir dir;
  const auto path = dir.path() / "ck.tck";
  save_checkpoint(path, {{"x", Tensor::from_vector(std::vector<float>{1, 2}, {2})}});
  // An argument error is found before anything is written.
  EXPECT_THROW(save_checkpoint(path, {{"a", Tensor()}}), std::invalid_argument);
  // A directory where the file should go cannot be written over.
  const auto blocked = dir.path() / "blocked";
  std::filesystem::create_directory(blocked);
  expect_error([&] { save_checkpoint(blocked / "sub" / "x.tck", {{"x", Tensor::empty({1})}}); },
               {"[checkpoint]", "x.tck", "temporary file"});
  EXPECT_EQ(load_checkpoint(path).tensors[0].first, "x");
}

TEST(Checkpoint, BadArgumentsAreRejected) {
  TempDir dir;
  const auto path = dir.path() / "x.tck";
  Tensor t = Tensor::empty({1});
  tandem::testing::expect_invalid([&] { save_checkpoint(path, {{"", t}}); }, {"non-empty", "got \"\""});
  tandem::testing::expect_invalid([&] { save_checkpoint(path, {{"a", t}, {"a", t}}); }, {"unique", "'a' twice"});
  EXPECT_FALSE(std::filesystem::exists(path));
}

// ---- damage ---------------------------------------------------------------------------------

class CheckpointDamage : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.path() / "ck.tck";
    save_checkpoint(path_, sample_tensors(), {{"step", 7}});
    bytes_ = read_file(path_);
    header_ = read_checkpoint_header(path_);
  }
  const CheckpointEntry& entry(const std::string& name) const {
    for (const auto& e : header_.tensors)
      if (e.name == name) return e;
    throw std::logic_error("no entry " + name);
  }
  TempDir dir_;
  std::filesystem::path path_;
  std::string bytes_;
  CheckpointHeader header_;
};

TEST_F(CheckpointDamage, FlippedDataByteNamesTheTensor) {
  std::string b = bytes_;
  b[entry("model.bias").offset + 3] ^= 0x10;
  write_file(path_, b);
  expect_error([&] { load_checkpoint(path_); }, {path_.string(), "'model.bias'", "CRC32 mismatch"});
  expect_error([&] { verify_checkpoint(path_); }, {"'model.bias'", "CRC32"});
  // The header alone is still fine.
  EXPECT_EQ(read_checkpoint_header(path_).tensors.size(), 9u);
}

TEST_F(CheckpointDamage, TruncationNamesTheFirstTensorBeyondTheEnd) {
  write_file(path_, bytes_.substr(0, entry("ids").offset + 2));
  expect_error([&] { read_checkpoint_header(path_); }, {path_.string(), "'ids'", "beyond the end", "truncated"});
}

TEST_F(CheckpointDamage, TruncatedHeader) {
  write_file(path_, bytes_.substr(0, 40));
  expect_error([&] { load_checkpoint(path_); }, {"header length", "truncated"});
  write_file(path_, bytes_.substr(0, 10));
  expect_error([&] { load_checkpoint(path_); }, {"expected at least 24 bytes, got 10"});
}

TEST_F(CheckpointDamage, WrongMagicOrVersion) {
  std::string b = bytes_;
  b[0] = 'X';
  write_file(path_, b);
  expect_error([&] { load_checkpoint(path_); }, {"magic", "not a Tandem checkpoint"});
  b = bytes_;
  b[8] = 2;
  write_file(path_, b);
  expect_error([&] { load_checkpoint(path_); }, {"expected format version 1, got 2"});
}

TEST_F(CheckpointDamage, CorruptHeaderIsCaughtByItsCrc) {
  std::string b = bytes_;
  const size_t at = b.find("model.weight");
  ASSERT_NE(at, std::string::npos);
  b[at] = 'M';
  write_file(path_, b);
  expect_error([&] { load_checkpoint(path_); }, {"header CRC32 mismatch"});
}

TEST_F(CheckpointDamage, ForgedHeaderWithBadEntriesIsRejected) {
  // Rewrites the header (with a valid CRC) so each table check is reached.
  auto forge = [&](const std::function<void(nlohmann::json&)>& edit) {
    uint64_t len = 0;
    std::memcpy(&len, bytes_.data() + 16, 8);
    nlohmann::json h = nlohmann::json::parse(bytes_.substr(24, len));
    edit(h);
    std::string text = h.dump();
    ASSERT_LE(text.size(), len);
    text.append(len - text.size(), ' ');
    std::string b = bytes_;
    b.replace(24, len, text);
    const uint32_t crc = crc32_bytes(text.data(), text.size());
    std::memcpy(b.data() + 12, &crc, 4);
    write_file(path_, b);
  };
  forge([](nlohmann::json& h) { h["tensors"][1]["dtype"] = "complex64"; });
  expect_error([&] { load_checkpoint(path_); }, {"'model.bias'", "unknown dtype 'complex64'"});
  forge([](nlohmann::json& h) { h["tensors"][0]["length"] = 8; });
  expect_error([&] { load_checkpoint(path_); }, {"'model.weight'", "expected length 60", "got 8"});
  forge([](nlohmann::json& h) { h["tensors"][0]["offset"] = 1; });
  expect_error([&] { load_checkpoint(path_); }, {"'model.weight'", "aligned offset", "got 1"});
  forge([](nlohmann::json& h) { h["tensors"][0]["offset"] = uint64_t{1} << 62; });
  expect_error([&] { load_checkpoint(path_); }, {"'model.weight'", "beyond the end"});
  forge([](nlohmann::json& h) { h["tensors"][2]["name"] = "model.weight"; });
  expect_error([&] { load_checkpoint(path_); }, {"'model.weight' appears twice"});
  forge([](nlohmann::json& h) { h["tensors"][0].erase("crc32"); });
  expect_error([&] { load_checkpoint(path_); }, {"malformed tensor entry"});
  forge([](nlohmann::json& h) { h["tensors"][0]["shape"] = {-3, 5}; });
  expect_error([&] { load_checkpoint(path_); }, {"'model.weight'", "negative extent"});
  // Numbers that are not integers, or do not fit, are errors rather than casts (a
  // float outside the integer range would be undefined behaviour; the fuzzer found one).
  forge([](nlohmann::json& h) { h["tensors"][0]["offset"] = 1.6e52; });
  expect_error([&] { load_checkpoint(path_); }, {"malformed tensor entry", "expected offset to be an integer"});
  forge([](nlohmann::json& h) { h["tensors"][0]["length"] = -60; });
  expect_error([&] { load_checkpoint(path_); }, {"malformed tensor entry", "expected length to be an integer", "-60"});
  forge([](nlohmann::json& h) { h["tensors"][0]["crc32"] = uint64_t{1} << 40; });
  expect_error([&] { load_checkpoint(path_); }, {"malformed tensor entry", "expected crc32 to be an integer in [0, 4294967295]"});
  forge([](nlohmann::json& h) { h["tensors"][0]["shape"] = {3.5, 5}; });
  expect_error([&] { load_checkpoint(path_); }, {"malformed tensor entry", "expected shape extents to be 64-bit integers"});
  forge([](nlohmann::json& h) { h["tensors"][0]["shape"] = {uint64_t{1} << 63, 5}; });
  expect_error([&] { load_checkpoint(path_); }, {"malformed tensor entry", "expected shape extents to be 64-bit integers"});
}

TEST(Checkpoint, SaveKilledAtRandomPointsAlwaysLeavesALoadableCheckpoint) {
  // A child process saves a 48 MiB checkpoint over the same path again and again; the
  // parent kills it with SIGKILL at pseudo-random moments. Whatever the moment, the
  // path must hold a complete checkpoint: the first one, or one of the rewrites.
  TempDir dir;
  const auto path = dir.path() / "ck.tck";
  NamedTensors first = {{"w", tandem::testing::random_tensor({1 << 20}, 1, DType::kF32)},
                        {"generation", Tensor::from_vector(std::vector<int64_t>{0}, {1})}};
  save_checkpoint(path, first);
  uint64_t lcg = 12345;
  int rewrites_seen = 0;
  for (int round = 0; round < 12; ++round) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      NamedTensors big = {{"w", Tensor::empty({12 << 20})},
                          {"generation", Tensor::from_vector(std::vector<int64_t>{1}, {1})}};
      big[0].second.fill_(0.5);
      for (;;) save_checkpoint(path, big);
    }
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    std::this_thread::sleep_for(std::chrono::microseconds(1000 + (lcg >> 33) % 150000));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the saver should have been killed";
    Checkpoint c = load_checkpoint(path);  // throws if torn
    const int64_t generation = c.at("generation").to_vector<int64_t>()[0];
    EXPECT_EQ(c.at("w").numel(), generation == 0 ? (1 << 20) : (12 << 20)) << "round " << round;
    rewrites_seen += generation == 1;
  }
  // Temporary files of killed saves remain (each round's pid differs): they show the
  // kills landed mid-write, and they never replaced the checkpoint.
  int torn = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    EXPECT_TRUE(name == "ck.tck" || name.rfind("ck.tck.tmp.", 0) == 0) << name;
    torn += name != "ck.tck";
  }
  std::cout << "[ kills ] " << torn << " of 12 landed inside a write; " << rewrites_seen
            << " loads saw a completed rewrite\n";
  EXPECT_GT(torn, 0) << "no kill landed inside a write: the test did not test anything";
}

TEST(CheckpointFiles, MissingFileIsNamed) {
  expect_error([] { load_checkpoint("/nonexistent/dir/ck.tck"); }, {"/nonexistent/dir/ck.tck", "cannot open"});
}

}  // namespace
}  // namespace tandem::train
