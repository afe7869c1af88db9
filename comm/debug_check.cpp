// DebugChecker: publishes and compares each collective's signature across ranks.
#include "comm/debug_check.h"

#include <stdexcept>
#include <string>
#include <vector>

namespace tandem::comm {

namespace {

// A collective's signature as text, e.g. "all_reduce(float32, 7 elements)".
std::string signature(const std::string& op, const std::string& dtype, const std::string& numel) {
  if (op == "barrier") return "barrier()";  // no tensor: dtype and count mean nothing
  return op + "(" + dtype + ", " + numel + (numel == "1" ? " element)" : " elements)");
}

std::vector<uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string from_bytes(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

}  // namespace

DebugChecker::DebugChecker(std::shared_ptr<Store> store, int rank, int size, std::string prefix)
    : store_(std::move(store)), rank_(rank), size_(size), prefix_(std::move(prefix)) {
  if (!store_) throw std::invalid_argument("[debug_check] expected a store, got null");
  if (size < 1 || rank < 0 || rank >= size)
    throw std::invalid_argument("[debug_check] expected 0 <= rank < size, got rank " + std::to_string(rank) +
                                " of size " + std::to_string(size));
}

void DebugChecker::check(const char* op, DType dtype, int64_t numel) {
  const int64_t number = ++count_;  // 1-based, as people count collectives
  const std::string base = prefix_ + "/" + std::to_string(number) + "/";
  const std::string mine = signature(op, std::string(dtype_name(dtype)), std::to_string(numel));
  store_->set(base + std::to_string(rank_), to_bytes(mine));

  std::vector<std::string> keys;
  for (int r = 0; r < size_; ++r) keys.push_back(base + std::to_string(r));
  try {
    store_->wait(keys);
  } catch (const std::runtime_error& e) {
    // Name the ranks that never published, then the store's own account of the wait.
    std::string missing;
    for (int r = 0; r < size_; ++r)
      if (!store_->check({keys[static_cast<size_t>(r)]})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    throw std::runtime_error("[" + std::string(op) + "] debug check: rank " + std::to_string(rank_) +
                             " waited in vain for rank(s) " + (missing.empty() ? "?" : missing) + " to issue collective #" +
                             std::to_string(number) + " (this rank issued " + mine + "): " + e.what());
  }

  // Every rank reads the same values and compares them in the same order, so every
  // rank reports the same (first) mismatch.
  const std::string reference = from_bytes(store_->get(keys[0]));
  for (int r = 1; r < size_; ++r) {
    const std::string theirs = from_bytes(store_->get(keys[static_cast<size_t>(r)]));
    if (theirs != reference)
      throw std::runtime_error("[" + std::string(op) + "] debug check: rank " + std::to_string(r) + " issued " + theirs +
                               " but rank 0 issued " + reference + " as collective #" + std::to_string(number));
  }
}

}  // namespace tandem::comm
