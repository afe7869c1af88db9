// IDX reading through zlib's gz* functions, which read gzipped and plain files alike.
#include "data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <memory>
#include <stdexcept>

namespace tandem::data {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("[read_idx] " + path + ": " + what);
}

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzHandle = std::unique_ptr<gzFile_s, GzCloser>;

/// Reads up to n bytes; returns how many were read (fewer only at end of file).
size_t read_some(gzFile file, const std::string& path, void* dst, size_t n) {
  size_t total = 0;
  auto* out = static_cast<unsigned char*>(dst);
  while (total < n) {
    // gzread takes an unsigned count; read in pieces of at most 1 GiB.
    unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - total, size_t{1} << 30));
    int got = gzread(file, out + total, chunk);
    if (got < 0) {
      int errnum = 0;
      const char* msg = gzerror(file, &errnum);
      fail(path, std::string("read error: ") + (msg ? msg : "unknown zlib error"));
    }
    if (got == 0) break;
    total += static_cast<size_t>(got);
  }
  return total;
}

std::string hex_byte(unsigned char b) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 0xF];
}

uint32_t big_endian_u32(const unsigned char* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  GzHandle file(gzopen(path.c_str(), "rb"));
  if (!file) fail(path, "cannot open file");

  unsigned char magic[4];
  size_t got = read_some(file.get(), path, magic, 4);
  if (got < 4) fail(path, "expected a 4-byte IDX header, got " + std::to_string(got) + " bytes");
  if (magic[0] != 0 || magic[1] != 0) {
    fail(path, "expected IDX magic 0x00 0x00 0x08 NN, got " + hex_byte(magic[0]) + " " + hex_byte(magic[1]) + " " +
                   hex_byte(magic[2]) + " " + hex_byte(magic[3]));
  }
  if (magic[2] != 0x08) {
    fail(path, "expected element type 0x08 (u8), got " + hex_byte(magic[2]) + " (only u8 is supported)");
  }
  int rank = magic[3];
  if (rank < 1 || rank > 4) fail(path, "expected rank 1..4, got " + std::to_string(rank));

  IdxArray out;
  size_t numel = 1;
  for (int d = 0; d < rank; ++d) {
    unsigned char b[4];
    got = read_some(file.get(), path, b, 4);
    if (got < 4) {
      fail(path, "truncated header: expected " + std::to_string(rank) + " dimensions, got " + std::to_string(d));
    }
    uint32_t extent = big_endian_u32(b);
    if (extent == 0) fail(path, "expected every dimension > 0, got 0 for dimension " + std::to_string(d));
    out.shape.push_back(extent);
    numel *= extent;
  }
  // A 4-dimension header of u32 extents can promise more than fits in memory.
  if (numel > (size_t{1} << 40)) fail(path, "header promises " + std::to_string(numel) + " bytes, more than 1 TiB");

  out.data.resize(numel);
  got = read_some(file.get(), path, out.data.data(), numel);
  if (got < numel) {
    fail(path, "truncated: expected " + std::to_string(numel) + " bytes of data, got " + std::to_string(got));
  }
  // Count what follows the promised data, so the message says how much is extra.
  size_t trailing = 0;
  unsigned char scratch[4096];
  while (size_t n = read_some(file.get(), path, scratch, sizeof scratch)) trailing += n;
  if (trailing != 0) {
    fail(path, "expected " + std::to_string(numel + 4 + 4 * rank) + " bytes in all, got " +
                   std::to_string(trailing) + " trailing bytes after them");
  }
  return out;
}

}  // namespace tandem::data
