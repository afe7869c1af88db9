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
  /// Opens (truncates) `path`; throws std::runtime_error naming it if it cannot.
  explicit MetricsWriter(const std::string& path);
  void write(const MetricRecord& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace tandem::train
