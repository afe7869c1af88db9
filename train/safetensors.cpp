// safetensors reader and writer (format: github.com/huggingface/safetensors): the
// header is checked as strictly as Tandem's own checkpoints — offsets inside the data
// section, lengths matching dtype and shape, no overlaps.
#include "train/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "train/atomic_file.h"
#include "train/json_integers.h"

namespace tandem::train {
namespace {

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;  // the reference implementation's limit

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw std::runtime_error("[safetensors] " + path.string() + ": " + what);
}

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::kF64: return "F64";
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
  }
  return "?";
}

bool parse_safetensors_dtype(const std::string& s, DType* out) {
  for (DType t : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32, DType::kU8, DType::kBool}) {
    if (s == safetensors_dtype(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

}  // namespace

void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> host;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw std::invalid_argument("[save_safetensors] expected a tensor name other than \"\" and \"__metadata__\", got \"" +
                                  name + "\"");
    if (!t.defined()) throw std::invalid_argument("[save_safetensors] tensor '" + name + "' is undefined");
    if (header.contains(name))
      throw std::invalid_argument("[save_safetensors] expected unique tensor names, got '" + name + "' twice");
    host.push_back(t.detach().to(Device::cpu()));
    header[name] = {{"dtype", safetensors_dtype(t.dtype())}, {"shape", t.shape()},
                    {"data_offsets", {offset, offset + host.back().nbytes()}}};
    offset += host.back().nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  AtomicFileWriter out(path, "safetensors");
  const uint64_t n = text.size();
  out.write(&n, 8);
  out.write(text.data(), text.size());
  for (const Tensor& t : host) out.write(t.data_ptr(), t.nbytes());
  out.commit();
}

SafetensorsFile load_safetensors(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open for reading: " + std::string(std::strerror(errno)));
  in.seekg(0, std::ios::end);
  const auto file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < 8) fail(path, "expected at least 8 bytes, got " + std::to_string(file_size));
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  if (n > kMaxHeader || n > file_size - 8)
    fail(path, "header length " + std::to_string(n) + " exceeds the file (" + std::to_string(file_size) + " bytes)");
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(path, "expected a JSON object as header");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_size - data_start;

  SafetensorsFile out;
  struct Item {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Item> items;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      try {
        out.metadata = entry.get<std::map<std::string, std::string>>();
      } catch (const nlohmann::json::exception&) {
        fail(path, "expected \"__metadata__\" to map strings to strings");
      }
      continue;
    }
    Item it;
    it.name = name;
    std::string dtype;
    std::vector<uint64_t> offsets;
    try {
      dtype = entry.at("dtype").get<std::string>();
      it.shape = detail::json_shape(entry.at("shape"));
      offsets = detail::json_unsigned_list(entry.at("data_offsets"), "data_offsets");
    } catch (const nlohmann::json::exception& e) {
      fail(path, "malformed entry for tensor '" + name + "': " + e.what());
    } catch (const std::invalid_argument& e) {
      fail(path, "malformed entry for tensor '" + name + "': " + e.what());
    }
    if (!parse_safetensors_dtype(dtype, &it.dtype))
      fail(path, "tensor '" + name + "': dtype " + dtype + " is not supported (F64, F32, F16, BF16, I64, I32, U8, BOOL)");
    if (offsets.size() != 2 || offsets[0] > offsets[1])
      fail(path, "tensor '" + name + "': expected data_offsets [begin, end] with begin <= end");
    it.begin = offsets[0];
    it.end = offsets[1];
    uint64_t numel = 1;
    for (int64_t d : it.shape) {
      if (d < 0) fail(path, "tensor '" + name + "': negative extent in shape " + shape_str(it.shape));
      if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d) / 8)
        fail(path, "tensor '" + name + "': shape " + shape_str(it.shape) + " overflows");
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * dtype_size(it.dtype) != it.end - it.begin)
      fail(path, "tensor '" + name + "': expected " + std::to_string(numel * dtype_size(it.dtype)) + " bytes for " +
                     dtype + " " + shape_str(it.shape) + ", got " + std::to_string(it.end - it.begin));
    if (it.end > data_size)
      fail(path, "tensor '" + name + "': bytes [" + std::to_string(it.begin) + ", " + std::to_string(it.end) +
                     ") lie beyond the data section (" + std::to_string(data_size) + " bytes; the file is truncated)");
    items.push_back(std::move(it));
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < items.size(); ++i) {
    if (items[i].begin < items[i - 1].end)
      fail(path, "tensors '" + items[i - 1].name + "' and '" + items[i].name + "' overlap");
  }
  for (const Item& it : items) {
    Tensor t = Tensor::empty(it.shape, {.dtype = it.dtype});
    in.seekg(static_cast<std::streamoff>(data_start + it.begin));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(it.end - it.begin));
    if (!in) fail(path, "tensor '" + it.name + "': read failed");
    out.tensors.emplace_back(it.name, std::move(t));
  }
  return out;
}

}  // namespace tandem::train
