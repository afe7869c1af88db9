// JSON serialisation of metric records (nlohmann-json) and the JSONL writer.
#include "train/metrics.h"

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace tandem::train {

std::string to_json(const MetricRecord& record) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [key, value] : record) {
    std::visit(
        [&](const auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, double>) {
            if (std::isfinite(v)) j[key] = v;
            else j[key] = nullptr;
          } else {
            j[key] = v;
          }
        },
        value);
  }
  return j.dump();
}

MetricsWriter::MetricsWriter(const std::string& path) : path_(path), out_(path, std::ios::trunc) {
  if (!out_) throw std::runtime_error("[metrics] cannot open " + path + " for writing: " + std::strerror(errno));
}

void MetricsWriter::write(const MetricRecord& record) {
  out_ << to_json(record) << '\n';
  out_.flush();
  if (!out_) throw std::runtime_error("[metrics] write to " + path_ + " failed");
}

}  // namespace tandem::train
