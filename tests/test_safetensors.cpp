// safetensors: Tandem reads a file written by PyTorch's safetensors package (fixture),
// round-trips every dtype, and rejects damaged headers with the tensor named.
#include <cstring>
#include <fstream>
#include <string>

#include "test_util.h"
#include "train/safetensors.h"

namespace tandem::train {
namespace {

using tandem::testing::TempDir;

DType dtype_from_torch(const std::string& s) { return parse_dtype(s); }

TEST(Safetensors, ReadsWhatPyTorchWrote) {
  SafetensorsFile f = load_safetensors(tandem::testing::fixture_path("torch.safetensors"));
  nlohmann::json want = tandem::testing::load_fixture("torch_safetensors.json")["tensors"];
  ASSERT_EQ(f.tensors.size(), want.size());
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.metadata.at("note"), "tandem fixture");
  for (const auto& [name, t] : f.tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(want.contains(name));
    const auto& w = want[name];
    EXPECT_EQ(t.dtype(), dtype_from_torch(w["dtype"].get<std::string>()));
    const bool integer = !is_floating(t.dtype());
    Tensor expected = tandem::testing::fixture_tensor(w, integer);
    EXPECT_EQ(t.shape(), expected.shape());
    // Values compare exactly: the fixture holds each one converted losslessly to f64/int64.
    EXPECT_TRUE(tandem::testing::all_close(t.to(integer ? DType::kI64 : DType::kF64), expected, 0.0, 0.0));
  }
}

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir dir;
  NamedTensors in = {{"a", tandem::testing::random_tensor({2, 3}, 1, DType::kF32)},
                     {"b", tandem::testing::random_tensor({4}, 2, DType::kBF16)},
                     {"c", tandem::testing::random_tensor({1, 1, 2}, 3, DType::kF16)},
                     {"d", tandem::testing::random_tensor({}, 4, DType::kF64)},
                     {"e", Tensor::from_vector(std::vector<int64_t>{5, 6}, {2})},
                     {"f", Tensor::from_vector(std::vector<int32_t>{7}, {1})},
                     {"g", Tensor::from_vector(std::vector<uint8_t>{8, 9}, {2})},
                     {"h", Tensor::from_vector(std::vector<bool>{true}, {1})},
                     {"i", Tensor::empty({0, 3})}};
  save_safetensors(dir.path() / "x.safetensors", in, {{"k", "v"}});
  SafetensorsFile out = load_safetensors(dir.path() / "x.safetensors");
  ASSERT_EQ(out.tensors.size(), in.size());
  EXPECT_EQ(out.metadata.at("k"), "v");
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(out.tensors[i].first, in[i].first);
    EXPECT_EQ(out.tensors[i].second.dtype(), in[i].second.dtype());
    EXPECT_EQ(out.tensors[i].second.shape(), in[i].second.shape());
    if (in[i].second.nbytes()) {
      EXPECT_EQ(std::memcmp(out.tensors[i].second.data_ptr(), in[i].second.data_ptr(), in[i].second.nbytes()), 0);
    }
  }
  // The header is padded to 8 bytes, as the reference writer does.
  std::ifstream f(dir.path() / "x.safetensors", std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

void write_raw_header(const std::filesystem::path& p, const std::string& json, size_t data_bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  const uint64_t n = json.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << json << std::string(data_bytes, '\0');
}

void expect_error(const std::filesystem::path& p, const std::vector<std::string>& pieces) {
  try {
    load_safetensors(p);
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    for (const auto& piece : pieces) EXPECT_NE(std::string(e.what()).find(piece), std::string::npos) << e.what();
  }
}

TEST(Safetensors, DamagedFilesNameTheTensor) {
  TempDir dir;
  const auto p = dir.path() / "bad.safetensors";
  write_raw_header(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4);
  expect_error(p, {"'w'", "beyond the data section", "truncated"});
  write_raw_header(p, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  expect_error(p, {"'w'", "expected 12 bytes", "got 8"});
  write_raw_header(p, R"({"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8);
  expect_error(p, {"'w'", "C64", "not supported"});
  write_raw_header(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
  expect_error(p, {"'a' and 'b' overlap"});
  write_raw_header(p, R"({"w":{"dtype":"F32"}})", 0);
  expect_error(p, {"malformed entry for tensor 'w'"});
  // Numbers that are not integers, or do not fit, are errors rather than casts (the
  // fuzzer found data_offsets [1.6e52], whose conversion was undefined behaviour).
  write_raw_header(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[1.6e52,8]}})", 8);
  expect_error(p, {"malformed entry for tensor 'w'", "expected data_offsets entry to be an integer", "1.6e+52"});
  write_raw_header(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,8]}})", 8);
  expect_error(p, {"malformed entry for tensor 'w'", "data_offsets entry", "-8"});
  write_raw_header(p, R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8);
  expect_error(p, {"malformed entry for tensor 'w'", "expected shape extents to be 64-bit integers"});
  write_raw_header(p, R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8);
  expect_error(p, {"malformed entry for tensor 'w'", "expected shape to be a list of integers"});
  write_raw_header(p, "not json", 0);
  expect_error(p, {"not valid JSON"});
  {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    const uint64_t n = 1000;
    out.write(reinterpret_cast<const char*>(&n), 8);
  }
  expect_error(p, {"header length 1000 exceeds the file"});
}

TEST(Safetensors, BadArguments) {
  TempDir dir;
  Tensor t = Tensor::empty({1});
  tandem::testing::expect_invalid([&] { save_safetensors(dir.path() / "x", {{"__metadata__", t}}); }, {"__metadata__"});
  tandem::testing::expect_invalid([&] { save_safetensors(dir.path() / "x", {{"a", t}, {"a", t}}); }, {"'a' twice"});
}

}  // namespace
}  // namespace tandem::train
