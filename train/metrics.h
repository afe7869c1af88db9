// Metrics records and their JSON Lines log: one JSON object per line, written and
// flushed as each record is made so a crashed run keeps what it measured.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace tandem::train {

using MetricValue = std::variant<int64_t, double, std::string, bool>;
/// Ordered key/value pairs (order is kept in the JSON).
using MetricRecord = std::vector<std::pair<std::string, MetricValue>>;

/// One-line JSON object for `record` (non-finite doubles become null).
std::string to_json(const MetricRecord& record);

class MetricsWriter {
 public:
  /// Opens `path` (truncated, or appended to when resuming a run); throws
  /// std::runtime_error naming it if it cannot.
  explicit MetricsWriter(const std::string& path, bool append = false);
  void write(const MetricRecord& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

/// One CSV row per record, for spreadsheets and plotting: the first record fixes the
/// columns (written as the header); later records must use only those keys (a
/// missing one leaves its cell empty). Flushed per row like the JSONL log.
class CsvMetricsWriter {
 public:
  /// Opens `path` (truncated, or appended to without a new header when resuming);
  /// throws std::runtime_error naming it if it cannot.
  explicit CsvMetricsWriter(const std::string& path, bool append = false);
  /// Throws std::invalid_argument naming a key that is not one of the columns.
  void write(const MetricRecord& record);
  const std::string& path() const { return path_; }
  const std::vector<std::string>& columns() const { return columns_; }

 private:
  std::string path_;
  std::ofstream out_;
  std::vector<std::string> columns_;
  bool header_written_ = false;
};

/// A value as a CSV cell: numbers in shortest round-trip form, non-finite as "nan"/
/// "inf"/"-inf", strings quoted when they hold a comma, quote or newline.
std::string csv_cell(const MetricValue& value);

}  // namespace tandem::train
