// Writes the seed corpus of the checkpoint fuzzer: a valid checkpoint and a valid
// safetensors file (small, several dtypes), and the documented kinds of damage (so
// the sanitizer-built loader replays each of them before it starts mutating).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "train/checkpoint.h"
#include "train/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  using tandem::Tensor;
  tandem::train::NamedTensors t = {{"w", Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2})},
                                   {"b", Tensor::from_vector(std::vector<double>{0.5}, {1})},
                                   {"i", Tensor::from_vector(std::vector<int64_t>{7, 8}, {2})},
                                   {"m", Tensor::from_vector(std::vector<bool>{true}, {1})},
                                   {"e", Tensor::empty({0, 3})}};
  tandem::train::save_checkpoint(dir + "/valid.tck", t, {{"step", 3}, {"config", {{"lr", 0.1}}}});
  tandem::train::save_safetensors(dir + "/valid.safetensors", t, {{"format", "pt"}});

  std::ifstream in(dir + "/valid.tck", std::ios::binary);
  const std::string valid{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
  };
  write("truncated-header.tck", valid.substr(0, 40));
  write("truncated-data.tck", valid.substr(0, valid.size() - 5));
  uint64_t len = 0;
  std::memcpy(&len, valid.data() + 16, 8);
  const uint64_t data_start = (24 + len + 63) / 64 * 64;  // the first tensor's bytes
  std::string flipped_data = valid;
  flipped_data[data_start + 1] ^= 0x40;
  write("flipped-data.tck", flipped_data);
  std::string flipped_header = valid;
  flipped_header[30] ^= 0x01;
  write("flipped-header.tck", flipped_header);
  std::string future = valid;
  future[8] = 2;
  write("future-version.tck", future);
  std::string magic = valid;
  magic[3] = 'X';
  write("wrong-magic.tck", magic);
  // Header rewrites with a valid CRC: an offset past the end and an absurd shape.
  auto forged = [&](const std::string& from, const std::string& to) {
    std::string header = valid.substr(24, len);
    const size_t at = header.find(from);
    if (at == std::string::npos) return valid;
    header.replace(at, from.size(), to);
    header.resize(len, ' ');
    std::string out = valid;
    out.replace(24, len, header);
    const uint32_t crc = tandem::train::crc32_bytes(header.data(), header.size());
    std::memcpy(out.data() + 12, &crc, 4);
    return out;
  };
  write("offset-past-end.tck",
        forged("\"offset\":" + std::to_string(data_start), "\"offset\":" + std::to_string(uint64_t{1} << 20)));
  write("absurd-shape.tck", forged("\"shape\":[2,2]", "\"shape\":[4611686018427387904,4]"));
  return 0;
}
