// Progress reporting for training loops: on a terminal, one status line rewritten
// in place (epoch, step/total, loss, samples/s, ETA); otherwise a plain log line
// every `log_every` steps, so logs from batch jobs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

namespace tandem::train {

struct ProgressOptions {
  std::FILE* out = stderr;
  /// Steps between plain log lines (non-terminal output only).
  int64_t log_every = 100;
  /// Whether `out` is a terminal; detected with isatty when unset.
  std::optional<bool> terminal = std::nullopt;
};

class Progress {
 public:
  explicit Progress(ProgressOptions options = {});

  void start_epoch(int64_t epoch, int64_t epochs, int64_t steps);
  /// Records step `step` (1-based) of the epoch with its loss and batch size.
  void update(int64_t step, double loss, int64_t samples);
  /// Ends the epoch's line and prints `summary` after it.
  void end_epoch(const std::string& summary);
  /// Samples per second over the epoch so far.
  double samples_per_second() const;
  double epoch_seconds() const;
  bool terminal() const { return terminal_; }

 private:
  std::string status(int64_t step, double loss) const;

  ProgressOptions options_;
  bool terminal_;
  int64_t epoch_ = 0, epochs_ = 0, steps_ = 0, samples_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

/// "1m05s", "3.2s"
std::string format_duration(double seconds);

}  // namespace tandem::train
