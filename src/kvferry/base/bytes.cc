#include "kvferry/base/bytes.h"

#include <fmt/format.h>

#include <cctype>

namespace kvferry {

StatusOr<uint64_t> ParseByteSize(std::string_view text) {
  std::string_view s = text;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  size_t i = 0;
  uint64_t value = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
    uint64_t d = static_cast<uint64_t>(s[i] - '0');
    if (value > (UINT64_MAX - d) / 10) return InvalidArgumentError(fmt::format("size '{}' overflows", text));
    value = value * 10 + d;
    ++i;
  }
  if (i == 0) return InvalidArgumentError(fmt::format("size '{}' does not start with a number", text));
  std::string unit;
  for (; i < s.size(); ++i) {
    if (!std::isspace(static_cast<unsigned char>(s[i]))) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
  }
  int shift = 0;
  if (unit.empty() || unit == "b") shift = 0;
  else if (unit == "k" || unit == "kb" || unit == "kib") shift = 10;
  else if (unit == "m" || unit == "mb" || unit == "mib") shift = 20;
  else if (unit == "g" || unit == "gb" || unit == "gib") shift = 30;
  else if (unit == "t" || unit == "tb" || unit == "tib") shift = 40;
  else return InvalidArgumentError(fmt::format("size '{}' has unknown unit '{}' (use B, KiB, MiB, GiB, TiB)", text, unit));
  if (shift > 0 && value > (UINT64_MAX >> shift)) return InvalidArgumentError(fmt::format("size '{}' overflows", text));
  return value << shift;
}

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  uint64_t b = bytes;
  while (u < 4 && b >= 1024 && b % 1024 == 0) {
    b /= 1024;
    ++u;
  }
  if (u > 0 || bytes < 1024) return fmt::format("{} {}", b, kUnits[u]);
  double v = static_cast<double>(bytes);
  u = 0;
  while (u < 4 && v >= 1024) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, kUnits[u]);
}

}  // namespace kvferry
