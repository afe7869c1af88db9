// tandem-ckpt: inspect, verify and convert Tandem checkpoints (docs/CHECKPOINT.md).
//   tandem-ckpt info FILE                          tensor table and metadata
//   tandem-ckpt verify FILE                        every check; exit status 0 or 1
//   tandem-ckpt export --safetensors OUT FILE      weights for PyTorch's safetensors
//   tandem-ckpt import --safetensors IN OUT        a safetensors file as a checkpoint
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <string>

#include "engine/storage.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"

namespace {

using namespace tandem;
using namespace tandem::train;

int info(const std::string& file, bool full_metadata) {
  CheckpointHeader h = read_checkpoint_header(file);
  uint64_t total = 0, elements = 0;
  for (const auto& e : h.tensors) {
    total += e.length;
    elements += e.length / dtype_size(e.dtype);
  }
  std::printf("%s: Tandem checkpoint, format version %u, %s, %zu tensors (%llu elements, %s of data)\n", file.c_str(),
              h.version, format_bytes(static_cast<int64_t>(h.file_size)).c_str(), h.tensors.size(), static_cast<unsigned long long>(elements),
              format_bytes(static_cast<int64_t>(total)).c_str());
  size_t width = 4;
  for (const auto& e : h.tensors) width = std::max(width, e.name.size());
  std::printf("%-*s  %-8s  %-20s  %12s  %12s  %10s\n", static_cast<int>(width), "name", "dtype", "shape", "bytes",
              "offset", "crc32");
  for (const auto& e : h.tensors) {
    std::printf("%-*s  %-8s  %-20s  %12llu  %12llu  %08x\n", static_cast<int>(width), e.name.c_str(),
                std::string(dtype_name(e.dtype)).c_str(), shape_str(e.shape).c_str(),
                static_cast<unsigned long long>(e.length), static_cast<unsigned long long>(e.offset), e.crc32);
  }
  std::string meta = h.metadata.dump(2);
  constexpr size_t kShown = 4000;
  if (!full_metadata && meta.size() > kShown) meta = meta.substr(0, kShown) + "\n... (--full-metadata shows all)";
  std::printf("metadata: %s\n", meta.c_str());
  return 0;
}

int verify(const std::string& file) {
  verify_checkpoint(file);
  CheckpointHeader h = read_checkpoint_header(file);
  std::printf("%s: OK (format version %u, %zu tensors, every offset and CRC32 checked)\n", file.c_str(), h.version,
              h.tensors.size());
  return 0;
}

int export_safetensors(const std::string& file, const std::string& out, const std::string& select) {
  Checkpoint c = load_checkpoint(file);
  NamedTensors chosen;
  for (auto& [name, t] : c.tensors) {
    if (name.rfind(select, 0) != 0) continue;
    chosen.emplace_back(name.substr(select.size()), t);
  }
  if (chosen.empty())
    throw std::invalid_argument("[tandem-ckpt] expected tensors whose names start with '" + select + "' in " + file +
                                ", got none");
  save_safetensors(out, chosen, {{"format", "pt"}, {"tandem_source", file}});
  std::printf("wrote %s: %zu tensors\n", out.c_str(), chosen.size());
  return 0;
}

int import_safetensors(const std::string& in, const std::string& out, const std::string& prefix) {
  SafetensorsFile f = load_safetensors(in);
  NamedTensors named;
  for (auto& [name, t] : f.tensors) named.emplace_back(prefix + name, t);
  nlohmann::json meta = {{"imported_from", in}, {"safetensors_metadata", f.metadata}};
  save_checkpoint(out, named, meta);
  std::printf("wrote %s: %zu tensors\n", out.c_str(), named.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Inspect, verify and convert Tandem checkpoints (docs/CHECKPOINT.md)", "tandem-ckpt"};
  app.require_subcommand(1);

  std::string file;
  bool full_metadata = false;
  auto* info_cmd = app.add_subcommand("info", "Print the tensor table and the metadata");
  info_cmd->add_option("file", file, "Checkpoint")->required();
  info_cmd->add_flag("--full-metadata", full_metadata, "Print all of the metadata, however long");

  auto* verify_cmd = app.add_subcommand("verify", "Check magic, version, bounds and every CRC32 (exit 1 on failure)");
  verify_cmd->add_option("file", file, "Checkpoint")->required();

  std::string out, select = "model.";
  auto* export_cmd = app.add_subcommand("export", "Write tensors as a safetensors file (PyTorch's safetensors loader reads it)");
  export_cmd->add_option("--safetensors", out, "Output .safetensors file")->required();
  export_cmd->add_option("--select", select,
                         "Export the tensors whose names start with this prefix, without it (default 'model.': the "
                         "weights of a Trainer checkpoint; '' exports everything)");
  export_cmd->add_option("file", file, "Checkpoint")->required();

  std::string in, prefix;
  auto* import_cmd = app.add_subcommand("import", "Write a safetensors file's tensors as a Tandem checkpoint");
  import_cmd->add_option("--safetensors", in, "Input .safetensors file")->required();
  import_cmd->add_option("--prefix", prefix, "Prefix for every tensor name (e.g. 'model.')");
  import_cmd->add_option("out", out, "Output checkpoint")->required();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*info_cmd) return info(file, full_metadata);
    if (*verify_cmd) return verify(file);
    if (*export_cmd) return export_safetensors(file, out, select);
    if (*import_cmd) return import_safetensors(in, out, prefix);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem-ckpt: %s\n", e.what());
    return 1;
  }
  return 0;
}
