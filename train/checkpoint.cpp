// The checkpoint file format: writing through a temporary file with fsyncs so a crash
// never leaves a torn checkpoint, and reading with every bound and CRC checked before
// a byte of tensor data is trusted.
#include "train/checkpoint.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <stdexcept>

#include "train/atomic_file.h"
#include "train/json_integers.h"

namespace tandem::train {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the checkpoint format stores little-endian data; add byte swapping for this host");

// Fixed prelude: magic (8) | version u32 | header CRC32 u32 | header length u64.
constexpr uint64_t kPreludeSize = 24;
// A header larger than this is not a header we wrote (and would be an allocation bomb).
constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 30;

uint64_t align_up(uint64_t n) { return (n + kCheckpointAlignment - 1) / kCheckpointAlignment * kCheckpointAlignment; }

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw std::runtime_error("[checkpoint] " + path.string() + ": " + what);
}

std::string errno_text() { return std::strerror(errno); }

template <class T>
void put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

template <class T>
T get(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

/// Parses and checks the header given the prelude and header bytes already read.
CheckpointHeader parse_header(const std::filesystem::path& path, const std::string& prelude, const std::string& json_text,
                              uint64_t file_size) {
  CheckpointHeader h;
  h.file_size = file_size;
  h.version = get<uint32_t>(prelude.data() + 8);
  const uint32_t want_crc = get<uint32_t>(prelude.data() + 12);
  const uint32_t got_crc = crc32_bytes(json_text.data(), json_text.size());
  if (want_crc != got_crc) {
    fail(path, "header CRC32 mismatch: expected " + std::to_string(want_crc) + ", got " + std::to_string(got_crc) +
                   " (the header is corrupt)");
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object() || !j.contains("tensors") || !j["tensors"].is_array())
    fail(path, "expected a header object with a \"tensors\" array");
  h.metadata = j.value("metadata", nlohmann::json::object());
  const uint64_t data_start = align_up(kPreludeSize + json_text.size());
  std::set<std::string> names;
  for (const auto& t : j["tensors"]) {
    CheckpointEntry e;
    try {
      e.name = t.at("name").get<std::string>();
      const std::string dtype = t.at("dtype").get<std::string>();
      try {
        e.dtype = parse_dtype(dtype);
      } catch (const std::invalid_argument&) {
        fail(path, "tensor '" + e.name + "': unknown dtype '" + dtype + "'");
      }
      e.shape = detail::json_shape(t.at("shape"));
      e.offset = detail::json_unsigned(t.at("offset"), "offset");
      e.length = detail::json_unsigned(t.at("length"), "length");
      e.crc32 = static_cast<uint32_t>(detail::json_unsigned(t.at("crc32"), "crc32", UINT32_MAX));
    } catch (const nlohmann::json::exception& ex) {
      fail(path, "malformed tensor entry " + t.dump() + ": " + ex.what());
    } catch (const std::invalid_argument& ex) {
      fail(path, "malformed tensor entry " + t.dump() + ": " + ex.what());
    }
    if (!names.insert(e.name).second) fail(path, "tensor '" + e.name + "' appears twice in the table");
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) fail(path, "tensor '" + e.name + "': negative extent in shape " + shape_str(e.shape));
      if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
        fail(path, "tensor '" + e.name + "': shape " + shape_str(e.shape) + " overflows");
      numel *= static_cast<uint64_t>(d);
    }
    if (numel > std::numeric_limits<uint64_t>::max() / dtype_size(e.dtype) || numel * dtype_size(e.dtype) != e.length) {
      fail(path, "tensor '" + e.name + "': expected length " + std::to_string(numel * dtype_size(e.dtype)) +
                     " bytes for " + std::string(dtype_name(e.dtype)) + " " + shape_str(e.shape) + ", got " +
                     std::to_string(e.length));
    }
    if (e.offset < data_start || e.offset % kCheckpointAlignment != 0) {
      fail(path, "tensor '" + e.name + "': expected a " + std::to_string(kCheckpointAlignment) +
                     "-byte aligned offset at or after " + std::to_string(data_start) + ", got " + std::to_string(e.offset));
    }
    if (e.offset > file_size || e.length > file_size - e.offset) {
      fail(path, "tensor '" + e.name + "': bytes [" + std::to_string(e.offset) + ", " +
                     std::to_string(e.offset + e.length) + ") lie beyond the end of the file (" +
                     std::to_string(file_size) + " bytes; the file is truncated)");
    }
    h.tensors.push_back(std::move(e));
  }
  return h;
}

/// Opens `path`, reads and checks prelude and header. Leaves `in` positioned anywhere.
CheckpointHeader read_header(const std::filesystem::path& path, std::ifstream& in) {
  in.open(path, std::ios::binary);
  if (!in) fail(path, "cannot open for reading: " + errno_text());
  in.seekg(0, std::ios::end);
  const auto file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < kPreludeSize)
    fail(path, "expected at least " + std::to_string(kPreludeSize) + " bytes, got " + std::to_string(file_size) +
                   " (not a Tandem checkpoint, or truncated)");
  std::string prelude(kPreludeSize, '\0');
  in.read(prelude.data(), static_cast<std::streamsize>(kPreludeSize));
  if (std::memcmp(prelude.data(), kCheckpointMagic, sizeof(kCheckpointMagic)) != 0)
    fail(path, "expected the magic bytes 'TANDEMCK', got something else (not a Tandem checkpoint)");
  const uint32_t version = get<uint32_t>(prelude.data() + 8);
  if (version != kCheckpointVersion)
    fail(path, "expected format version " + std::to_string(kCheckpointVersion) + ", got " + std::to_string(version) +
                   " (written by a different Tandem)");
  const uint64_t header_len = get<uint64_t>(prelude.data() + 16);
  if (header_len > kMaxHeaderBytes || header_len > file_size - kPreludeSize)
    fail(path, "header length " + std::to_string(header_len) + " exceeds the file (" + std::to_string(file_size) +
                   " bytes; the file is truncated)");
  std::string json_text(header_len, '\0');
  in.read(json_text.data(), static_cast<std::streamsize>(header_len));
  if (!in) fail(path, "could not read the header: " + errno_text());
  return parse_header(path, prelude, json_text, file_size);
}

/// Reads every tensor and checks its CRC; `keep` receives them unless null.
void read_tensors(const std::filesystem::path& path, std::ifstream& in, const CheckpointHeader& h, NamedTensors* keep) {
  for (const CheckpointEntry& e : h.tensors) {
    Tensor t = Tensor::empty(e.shape, {.dtype = e.dtype});
    in.seekg(static_cast<std::streamoff>(e.offset));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.length));
    if (!in) fail(path, "tensor '" + e.name + "': read failed: " + errno_text());
    const uint32_t crc = crc32_bytes(t.data_ptr(), e.length);
    if (crc != e.crc32) {
      fail(path, "tensor '" + e.name + "': CRC32 mismatch: expected " + std::to_string(e.crc32) + ", got " +
                     std::to_string(crc) + " (its data is corrupt)");
    }
    if (keep) keep->emplace_back(e.name, std::move(t));
  }
}

}  // namespace

uint32_t crc32_bytes(const void* data, uint64_t n, uint32_t crc) {
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  // zlib takes uInt lengths: feed at most 1 GiB at a time.
  while (n > 0) {
    const uInt chunk = static_cast<uInt>(std::min<uint64_t>(n, uint64_t{1} << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

const Tensor& Checkpoint::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw std::out_of_range("[checkpoint] expected a tensor named '" + name + "', got none with that name");
}

bool Checkpoint::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](const auto& p) { return p.first == name; });
}

void save_checkpoint(const std::filesystem::path& path, const NamedTensors& tensors, const nlohmann::json& metadata) {
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) throw std::invalid_argument("[save_checkpoint] expected non-empty tensor names, got \"\"");
    if (!t.defined()) throw std::invalid_argument("[save_checkpoint] tensor '" + name + "' is undefined");
    if (!names.insert(name).second)
      throw std::invalid_argument("[save_checkpoint] expected unique tensor names, got '" + name + "' twice");
  }
  // Host copies first: CRCs and offsets need the bytes.
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  for (const auto& [name, t] : tensors) host.push_back(t.detach().to(Device::cpu()));

  // The header's size depends on the offsets it lists: lay the data out after a first
  // estimate and widen until the header fits before the data section.
  nlohmann::json table = nlohmann::json::array();
  for (size_t i = 0; i < tensors.size(); ++i) {
    table.push_back({{"name", tensors[i].first},
                     {"dtype", std::string(dtype_name(host[i].dtype()))},
                     {"shape", host[i].shape()},
                     {"offset", 0},
                     {"length", host[i].nbytes()},
                     {"crc32", crc32_bytes(host[i].data_ptr(), host[i].nbytes())}});
  }
  nlohmann::json header = {{"format", "tandem-checkpoint"}, {"tensors", table}, {"metadata", metadata}};
  std::string json_text;
  uint64_t data_start = align_up(kPreludeSize + header.dump().size());
  for (;;) {
    uint64_t offset = data_start;
    for (size_t i = 0; i < tensors.size(); ++i) {
      header["tensors"][i]["offset"] = offset;
      offset = align_up(offset + host[i].nbytes());
    }
    json_text = header.dump();
    const uint64_t needed = align_up(kPreludeSize + json_text.size());
    if (needed <= data_start) break;
    data_start = needed;
  }
  // Pad the header with spaces up to the data section (valid JSON whitespace).
  json_text.append(data_start - kPreludeSize - json_text.size(), ' ');

  std::string prelude(kCheckpointMagic, sizeof(kCheckpointMagic));
  put<uint32_t>(prelude, kCheckpointVersion);
  put<uint32_t>(prelude, crc32_bytes(json_text.data(), json_text.size()));
  put<uint64_t>(prelude, json_text.size());

  AtomicFileWriter out(path, "checkpoint");
  out.write(prelude.data(), prelude.size());
  out.write(json_text.data(), json_text.size());
  uint64_t pos = data_start;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t offset = header["tensors"][i]["offset"].get<uint64_t>();
    out.write_zeros(offset - pos);
    out.write(host[i].data_ptr(), host[i].nbytes());
    pos = offset + host[i].nbytes();
  }
  out.commit();
}

CheckpointHeader read_checkpoint_header(const std::filesystem::path& path) {
  std::ifstream in;
  return read_header(path, in);
}

Checkpoint load_checkpoint(const std::filesystem::path& path) {
  std::ifstream in;
  CheckpointHeader h = read_header(path, in);
  Checkpoint c;
  c.metadata = std::move(h.metadata);
  read_tensors(path, in, h, &c.tensors);
  return c;
}

void verify_checkpoint(const std::filesystem::path& path) {
  std::ifstream in;
  CheckpointHeader h = read_header(path, in);
  read_tensors(path, in, h, nullptr);
}

}  // namespace tandem::train
