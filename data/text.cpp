// CharText: reading, the vocabulary, the split and the windows.
#include "data/text.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace tandem::data {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("[CharText] cannot open " + path + ": " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw std::runtime_error("[CharText] cannot read " + path);
  return s.str();
}

}  // namespace

CharText::CharText(const std::string& path, Split split, const CharTextOptions& options) : options_(options) {
  if (options_.block_size < 1)
    throw std::invalid_argument("[CharText] expected block_size >= 1, got " + std::to_string(options_.block_size));
  if (options_.stride == 0) options_.stride = options_.block_size;
  if (options_.stride < 1) throw std::invalid_argument("[CharText] expected stride >= 0, got " + std::to_string(options_.stride));
  if (!(options_.val_fraction > 0.0 && options_.val_fraction < 1.0))
    throw std::invalid_argument("[CharText] expected val_fraction in (0, 1), got " + std::to_string(options_.val_fraction));

  const std::string text = read_file(path);
  bool present[256] = {};
  for (unsigned char c : text) present[c] = true;
  byte_to_id_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    if (!present[b]) continue;
    byte_to_id_[static_cast<size_t>(b)] = static_cast<int16_t>(vocabulary_.size());
    vocabulary_.push_back(static_cast<char>(b));
  }

  const auto n = static_cast<int64_t>(text.size());
  const auto n_train = static_cast<int64_t>(static_cast<double>(n) * (1.0 - options_.val_fraction));
  const int64_t begin = split == Split::kTrain ? 0 : n_train, end = split == Split::kTrain ? n_train : n;
  tokens_.reserve(static_cast<size_t>(end - begin));
  for (int64_t i = begin; i < end; ++i)
    tokens_.push_back(static_cast<uint8_t>(byte_to_id_[static_cast<unsigned char>(text[static_cast<size_t>(i)])]));
  const auto count = static_cast<int64_t>(tokens_.size());
  if (count < options_.block_size + 1)
    throw std::invalid_argument("[CharText] expected the " + std::string(split == Split::kTrain ? "training" : "test") +
                                " split of " + path + " to hold at least block_size + 1 = " +
                                std::to_string(options_.block_size + 1) + " characters, got " + std::to_string(count) +
                                " (file of " + std::to_string(n) + " bytes, val_fraction " +
                                std::to_string(options_.val_fraction) + ")");
  size_ = (count - 1 - options_.block_size) / options_.stride + 1;
}

void CharText::gather(std::span<const int64_t> indices, Batch& out) const {
  check_batch(indices.size(), out);
  const int64_t block = options_.block_size;
  int64_t* x = out.input.data<int64_t>();
  int64_t* y = out.target.data<int64_t>();
  for (size_t r = 0; r < indices.size(); ++r) {
    const int64_t i = indices[r];
    if (i < 0 || i >= size_)
      throw std::out_of_range("[CharText] expected sample index in [0, " + std::to_string(size_) + "), got " +
                              std::to_string(i));
    const uint8_t* start = tokens_.data() + i * options_.stride;
    std::copy(start, start + block, x + static_cast<int64_t>(r) * block);
    std::copy(start + 1, start + 1 + block, y + static_cast<int64_t>(r) * block);
  }
}

std::vector<int64_t> CharText::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const int64_t id = byte_to_id_[static_cast<unsigned char>(text[i])];
    if (id < 0)
      throw std::invalid_argument("[CharText] expected characters of the vocabulary, got byte " +
                                  std::to_string(static_cast<unsigned char>(text[i])) + " at position " +
                                  std::to_string(i));
    ids.push_back(id);
  }
  return ids;
}

std::string CharText::decode(const std::vector<int64_t>& tokens) const {
  std::string text;
  text.reserve(tokens.size());
  for (int64_t t : tokens) {
    if (t < 0 || t >= vocab_size())
      throw std::invalid_argument("[CharText] expected token ids in [0, " + std::to_string(vocab_size()) + "), got " +
                                  std::to_string(t));
    text.push_back(vocabulary_[static_cast<size_t>(t)]);
  }
  return text;
}

}  // namespace tandem::data
