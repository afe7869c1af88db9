// CharText: a character-level language-modelling data set from one text file, as
// nanoGPT's shakespeare_char: the vocabulary is the file's distinct bytes in
// increasing order, the first (1 - val_fraction) of the file is the training split and
// the rest the test split, and a sample is a window of block_size tokens with the
// next block_size tokens (shifted by one) as its targets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace tandem::data {

struct CharTextOptions {
  /// Tokens per sample (the model's context), >= 1.
  int64_t block_size = 256;
  /// Tokens between the starts of consecutive samples: block_size (0) gives
  /// non-overlapping windows, a smaller stride more, overlapping ones.
  int64_t stride = 0;
  /// Share of the file held out at its end as the test split, in (0, 1).
  double val_fraction = 0.1;
};

class CharText : public Dataset {
 public:
  /// Reads `path` whole. Throws std::runtime_error naming the file when it cannot be
  /// read, and std::invalid_argument when the options are out of range or the split
  /// is shorter than one window (block_size + 1 tokens).
  CharText(const std::string& path, Split split, const CharTextOptions& options = {});

  /// Windows of the split: (tokens - 1 - block_size) / stride + 1.
  int64_t size() const override { return size_; }
  Shape input_shape() const override { return {options_.block_size}; }
  DType input_dtype() const override { return DType::kI64; }
  Shape target_shape() const override { return {options_.block_size}; }
  DType target_dtype() const override { return DType::kI64; }
  void gather(std::span<const int64_t> indices, Batch& out) const override;

  /// Distinct bytes of the whole file (both splits share the vocabulary).
  int64_t vocab_size() const { return static_cast<int64_t>(vocabulary_.size()); }
  /// Token ids of `text`; a byte outside the vocabulary is std::invalid_argument.
  std::vector<int64_t> encode(const std::string& text) const;
  /// The text of token ids (each in [0, vocab_size)).
  std::string decode(const std::vector<int64_t>& tokens) const;
  /// This split's tokens in order (ids < 256: one byte each, whatever the split's size).
  const std::vector<uint8_t>& tokens() const { return tokens_; }
  const CharTextOptions& options() const { return options_; }

 private:
  CharTextOptions options_;
  std::string vocabulary_;          // token id -> byte
  std::vector<int16_t> byte_to_id_;  // byte -> token id, -1 if absent
  std::vector<uint8_t> tokens_;
  int64_t size_ = 0;
};

}  // namespace tandem::data
