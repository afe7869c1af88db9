// How optimizer and schedule errors print a number: the stream's default
// formatting (6 significant digits, no trailing zeros), e.g. "0.001", "1e-08".
#pragma once

#include <sstream>
#include <string>

namespace tandem::optim {

inline std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace tandem::optim
