// Crash-safe file replacement: write to "<path>.tmp.<pid>" in the same directory,
// fsync, rename over <path>, fsync the directory. A crash leaves the old file or the
// new one, never a torn one; an abandoned writer removes its temporary file.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>

namespace tandem::train {

class AtomicFileWriter {
 public:
  /// Creates the temporary file; throws std::runtime_error prefixed `what` naming
  /// `path` when it cannot.
  AtomicFileWriter(std::filesystem::path path, std::string what);
  /// Removes the temporary file unless commit() succeeded.
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  /// Appends `n` bytes (retrying short writes).
  void write(const void* data, size_t n);
  /// Appends `n` zero bytes.
  void write_zeros(size_t n);
  /// fsync, close, rename into place, fsync the directory.
  void commit();

 private:
  [[noreturn]] void fail(const std::string& what) const;

  std::filesystem::path path_;
  std::filesystem::path tmp_;
  std::string what_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace tandem::train
