#pragma once
// Logging: KVF_LOG_INFO("opened {} in {} ms", name, ms). fmt-style formatting
// (fmt stands in for std::format, which g++ 12 lacks); the backend (spdlog)
// stays private to base. Thread-safe; lines go to stderr.

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace kvferry {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

// Sets the global level. Also read once from KVFERRY_LOG_LEVEL
// (debug|info|warn|error|off) on first use; the default is info.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "debug"/"info"/"warn"/"warning"/"error"/"off".
bool ParseLogLevel(std::string_view text, LogLevel* out);

namespace internal {
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, std::string_view line);
}  // namespace internal

}  // namespace kvferry

#define KVF_LOG_(level, ...)                                                      \
  do {                                                                            \
    if (::kvferry::internal::LogEnabled(level))                                  \
      ::kvferry::internal::LogLine(level, ::fmt::format(__VA_ARGS__));           \
  } while (0)
#define KVF_LOG_DEBUG(...) KVF_LOG_(::kvferry::LogLevel::kDebug, __VA_ARGS__)
#define KVF_LOG_INFO(...) KVF_LOG_(::kvferry::LogLevel::kInfo, __VA_ARGS__)
#define KVF_LOG_WARN(...) KVF_LOG_(::kvferry::LogLevel::kWarn, __VA_ARGS__)
#define KVF_LOG_ERROR(...) KVF_LOG_(::kvferry::LogLevel::kError, __VA_ARGS__)
