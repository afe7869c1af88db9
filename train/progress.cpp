// Progress line and periodic log lines.
#include "train/progress.h"

#include <unistd.h>

#include <cmath>

namespace tandem::train {

std::string format_duration(double seconds) {
  char buf[32];
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  if (seconds < 60) {
    std::snprintf(buf, sizeof(buf), "%.1fs", seconds);
  } else if (seconds < 3600) {
    std::snprintf(buf, sizeof(buf), "%dm%02ds", static_cast<int>(seconds) / 60, static_cast<int>(seconds) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%dh%02dm", static_cast<int>(seconds) / 3600, static_cast<int>(seconds) / 60 % 60);
  }
  return buf;
}

Progress::Progress(ProgressOptions options)
    : options_(options),
      terminal_(options.terminal.value_or(options.out && isatty(fileno(options.out)) != 0)) {}

void Progress::start_epoch(int64_t epoch, int64_t epochs, int64_t steps) {
  epoch_ = epoch;
  epochs_ = epochs;
  steps_ = steps;
  samples_ = 0;
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

double Progress::epoch_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

double Progress::samples_per_second() const {
  double s = epoch_seconds();
  return s > 0 ? static_cast<double>(samples_) / s : 0.0;
}

std::string Progress::status(int64_t step, double loss) const {
  double elapsed = epoch_seconds();
  double eta = step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(steps_ - step) : NAN;
  char buf[160];
  std::snprintf(buf, sizeof(buf), "epoch %lld/%lld  step %lld/%lld  loss %.4f  %.0f samples/s  ETA %s",
                static_cast<long long>(epoch_ + 1), static_cast<long long>(epochs_), static_cast<long long>(step),
                static_cast<long long>(steps_), loss, samples_per_second(), format_duration(eta).c_str());
  return buf;
}

void Progress::update(int64_t step, double loss, int64_t samples) {
  samples_ += samples;
  if (!options_.out) return;
  if (terminal_) {
    // Redraw at most ten times a second: the terminal, not the loop, should wait.
    auto now = std::chrono::steady_clock::now();
    if (step != steps_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    std::fprintf(options_.out, "\r\033[K%s", status(step, loss).c_str());
    std::fflush(options_.out);
  } else if (options_.log_every > 0 && (step % options_.log_every == 0 || step == steps_)) {
    std::fprintf(options_.out, "%s\n", status(step, loss).c_str());
    std::fflush(options_.out);
  }
}

void Progress::end_epoch(const std::string& summary) {
  if (!options_.out) return;
  if (terminal_) std::fprintf(options_.out, "\n");
  if (!summary.empty()) std::fprintf(options_.out, "%s\n", summary.c_str());
  std::fflush(options_.out);
}

}  // namespace tandem::train
