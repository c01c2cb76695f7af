#pragma once
// Byte sizes as people write them: "4MiB", "64KiB", "1G", "4096".

#include <cstdint>
#include <string>
#include <string_view>

#include "kvferry/base/status.h"

namespace kvferry {

// Accepts an integer with an optional unit: B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB
// (all binary, case-insensitive; "KB" means 1024 as in most CLI tools).
// InvalidArgument on anything else, on zero-width digits, or on overflow.
StatusOr<uint64_t> ParseByteSize(std::string_view text);
// "4 MiB", "64 KiB", "123 B" (exact when it divides, else one decimal).
std::string FormatBytes(uint64_t bytes);

}  // namespace kvferry
