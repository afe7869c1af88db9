// Metrics logs: JSON Lines and CSV records, appending when a run resumes, and the
// CSV's fixed columns with a clear error for a key outside them.
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include "test_util.h"
#include "train/metrics.h"

namespace tandem::train {
namespace {

using tandem::testing::TempDir;

std::string read(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Metrics, JsonLinesWithNonFiniteAsNullAndAppend) {
  TempDir dir;
  const std::string path = (dir.path() / "m.jsonl").string();
  {
    MetricsWriter w(path);
    w.write({{"epoch", int64_t{1}}, {"loss", 0.25}, {"name", std::string("cnn")}, {"ok", true}});
    w.write({{"epoch", int64_t{2}}, {"loss", NAN}});
  }
  {
    MetricsWriter w(path, /*append=*/true);
    w.write({{"epoch", int64_t{3}}});
  }
  EXPECT_EQ(read(path), "{\"epoch\":1,\"loss\":0.25,\"name\":\"cnn\",\"ok\":true}\n{\"epoch\":2,\"loss\":null}\n{\"epoch\":3}\n");
  EXPECT_THROW(MetricsWriter("/nonexistent/dir/m.jsonl"), std::runtime_error);
}

TEST(Metrics, CsvHeaderFromTheFirstRowAndEmptyCellsForMissingKeys) {
  TempDir dir;
  const std::string path = (dir.path() / "m.csv").string();
  {
    CsvMetricsWriter w(path);
    w.write({{"step", int64_t{10}}, {"loss", 0.1}, {"lr", 0.05}, {"note", std::string("a,\"b\"")}});
    w.write({{"step", int64_t{20}}, {"loss", INFINITY}});
    EXPECT_EQ(w.columns().size(), 4u);
    tandem::testing::expect_invalid([&] { w.write({{"accuracy", 0.9}}); }, {"CSV columns", "got 'accuracy'"});
  }
  {
    CsvMetricsWriter w(path, /*append=*/true);  // resumed: rows only
    w.write({{"step", int64_t{30}}, {"loss", 1.0 / 3.0}, {"lr", 0.0}, {"note", std::string("x")}});
  }
  EXPECT_EQ(read(path), "step,loss,lr,note\n10,0.1,0.05,\"a,\"\"b\"\"\"\n20,inf,,\n30,0.3333333333333333,0,x\n");
}

TEST(Metrics, CsvNumbersReadBackExactly) {
  for (double v : {0.1, 1e-300, 123456789.125, -2.5e10, 1.0 / 7.0}) {
    std::string cell = csv_cell(v);
    EXPECT_EQ(std::strtod(cell.c_str(), nullptr), v) << cell;
  }
  EXPECT_EQ(csv_cell(std::numeric_limits<double>::quiet_NaN()), "nan");
  EXPECT_EQ(csv_cell(-INFINITY), "-inf");
  EXPECT_EQ(csv_cell(int64_t{-7}), "-7");
  EXPECT_EQ(csv_cell(false), "false");
}

}  // namespace
}  // namespace tandem::train
