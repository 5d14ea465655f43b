#include "formats/size_label.h"

#include <algorithm>
#include <cmath>

namespace qforge {

std::string rounded_parameter_count(double n) {
  double scaled;
  const char* suffix;
  if (n > 1e12) {
    scaled = n * 1e-12, suffix = "T";
  } else if (n > 1e9) {
    scaled = n * 1e-9, suffix = "B";
  } else if (n > 1e6) {
    scaled = n * 1e-6, suffix = "M";
  } else {
    scaled = n * 1e-3, suffix = "K";
  }
  const double r = std::nearbyint(scaled);  // ties to even, like Python's round()
  int digits = 0;
  for (double x = r; x >= 1.0; x = std::floor(x / 10)) ++digits;
  const int fix = std::max(2 - digits, 0);
  return fmt::format("{:.{}f}{}", scaled, fix, suffix);
}

}  // namespace qforge
