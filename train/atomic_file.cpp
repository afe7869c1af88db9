// AtomicFileWriter: the temporary-file, fsync, rename, directory-fsync sequence.
#include "train/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tandem::train {

AtomicFileWriter::AtomicFileWriter(std::filesystem::path path, std::string what)
    : path_(std::move(path)), what_(std::move(what)) {
  tmp_ = path_;
  tmp_ += ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create the temporary file " + tmp_.string() + ": " + std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFileWriter::fail(const std::string& what) const {
  throw std::runtime_error("[" + what_ + "] " + path_.string() + ": " + what);
}

void AtomicFileWriter::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::write(fd_, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) fail(std::string("write failed: ") + std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void AtomicFileWriter::write_zeros(size_t n) {
  static const char zeros[4096] = {};
  while (n > 0) {
    const size_t k = std::min(n, sizeof(zeros));
    write(zeros, k);
    n -= k;
  }
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_) != 0) fail(std::string("fsync failed: ") + std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail(std::string("close failed: ") + std::strerror(errno));
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail("rename from " + tmp_.string() + " failed: " + std::strerror(errno));
  committed_ = true;
  // The rename is durable only once the directory entry is.
  std::filesystem::path dir = path_.parent_path();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd < 0) fail("cannot open its directory to fsync it: " + std::string(std::strerror(errno)));
  const int src = ::fsync(dfd);
  ::close(dfd);
  if (src != 0) fail(std::string("fsync of its directory failed: ") + std::strerror(errno));
}

}  // namespace tandem::train
