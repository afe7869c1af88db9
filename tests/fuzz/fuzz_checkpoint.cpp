// libFuzzer target for the checkpoint and safetensors loaders: any bytes written to a
// file and loaded must give a checkpoint or a clear error, never a crash, a hang or an
// out-of-bounds access (built with AddressSanitizer by tests/fuzz/fuzz.cmake).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include "train/checkpoint.h"
#include "train/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      (std::filesystem::temp_directory_path() / ("tandem-fuzz-" + std::to_string(getpid()) + ".bin")).string();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  // Input that starts with the checkpoint magic goes to the checkpoint reader, the
  // rest to the safetensors reader, so one corpus exercises both.
  const bool safetensors = size < 8 || std::memcmp(data, tandem::train::kCheckpointMagic, 8) != 0;
  try {
    if (safetensors) {
      tandem::train::load_safetensors(path);
    } else {
      tandem::train::load_checkpoint(path);
    }
  } catch (const std::exception&) {
    // A clear error is the expected outcome for damaged input.
  }
  return 0;
}
