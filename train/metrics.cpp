// JSON serialisation of metric records (nlohmann-json) and the JSONL writer.
#include "train/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
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
  // Strings may come from data (a language model's sample is bytes of the training
  // text, not necessarily whole UTF-8 characters): invalid UTF-8 becomes U+FFFD
  // instead of an exception after the run.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

MetricsWriter::MetricsWriter(const std::string& path, bool append)
    : path_(path), out_(path, append ? std::ios::app : std::ios::trunc) {
  if (!out_) throw std::runtime_error("[metrics] cannot open " + path + " for writing: " + std::strerror(errno));
}

void MetricsWriter::write(const MetricRecord& record) {
  out_ << to_json(record) << '\n';
  out_.flush();
  if (!out_) throw std::runtime_error("[metrics] write to " + path_ + " failed");
}

std::string csv_cell(const MetricValue& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, double>) {
          if (std::isnan(v)) return "nan";
          if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
          char buf[32];
          std::snprintf(buf, sizeof(buf), "%.17g", v);
          // Shortest form that reads back to the same double.
          for (int precision = 6; precision < 17; ++precision) {
            char shorter[32];
            std::snprintf(shorter, sizeof(shorter), "%.*g", precision, v);
            if (std::strtod(shorter, nullptr) == v) return shorter;
          }
          return buf;
        } else if constexpr (std::is_same_v<V, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_same_v<V, std::string>) {
          if (v.find_first_of(",\"\n") == std::string::npos) return v;
          std::string quoted = "\"";
          for (char ch : v) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
          return quoted + "\"";
        } else {
          return std::to_string(v);
        }
      },
      value);
}

CsvMetricsWriter::CsvMetricsWriter(const std::string& path, bool append)
    : path_(path), out_(path, append ? std::ios::app : std::ios::trunc) {
  if (!out_) throw std::runtime_error("[metrics] cannot open " + path + " for writing: " + std::strerror(errno));
  // Appending to a file that already has its header: only rows follow.
  header_written_ = append && std::filesystem::exists(path) && std::filesystem::file_size(path) > 0;
}

void CsvMetricsWriter::write(const MetricRecord& record) {
  if (columns_.empty()) {
    for (const auto& [key, value] : record) columns_.push_back(key);
  }
  std::vector<std::string> cells(columns_.size());
  for (const auto& [key, value] : record) {
    auto it = std::find(columns_.begin(), columns_.end(), key);
    if (it == columns_.end())
      throw std::invalid_argument("[metrics] " + path_ + ": expected one of the CSV columns set by the first row, got '" +
                                  key + "'");
    cells[static_cast<size_t>(it - columns_.begin())] = csv_cell(value);
  }
  auto line = [](const std::vector<std::string>& items) {
    std::string s;
    for (size_t i = 0; i < items.size(); ++i) s += (i ? "," : "") + items[i];
    return s;
  };
  if (!header_written_) {
    std::vector<std::string> header;
    for (const auto& k : columns_) header.push_back(csv_cell(k));
    out_ << line(header) << '\n';
    header_written_ = true;
  }
  out_ << line(cells) << '\n';
  out_.flush();
  if (!out_) throw std::runtime_error("[metrics] write to " + path_ + " failed");
}

}  // namespace tandem::train
