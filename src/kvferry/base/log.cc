#include "kvferry/base/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>

namespace kvferry {
namespace {

// The level is read on every log call from many threads; relaxed is enough
// because it only gates output and carries no other data.
std::atomic<int>& LevelVar() {
  static std::atomic<int> level = [] {
    LogLevel l = LogLevel::kInfo;
    if (const char* env = std::getenv("KVFERRY_LOG_LEVEL")) ParseLogLevel(env, &l);
    return static_cast<int>(l);
  }();
  return level;
}

spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("kvferry");
    l->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%L%$ %P:%t] %v");
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::trace);
    return l;
  }();
  return *logger;
}

}  // namespace

void SetLogLevel(LogLevel level) { LevelVar().store(static_cast<int>(level), std::memory_order_relaxed); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(LevelVar().load(std::memory_order_relaxed)); }

bool ParseLogLevel(std::string_view t, LogLevel* out) {
  if (t == "debug" || t == "trace") *out = LogLevel::kDebug;
  else if (t == "info") *out = LogLevel::kInfo;
  else if (t == "warn" || t == "warning") *out = LogLevel::kWarn;
  else if (t == "error") *out = LogLevel::kError;
  else if (t == "off" || t == "none") *out = LogLevel::kOff;
  else return false;
  return true;
}

namespace internal {
bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= LevelVar().load(std::memory_order_relaxed) && level != LogLevel::kOff;
}

void LogLine(LogLevel level, std::string_view line) {
  spdlog::level::level_enum l = spdlog::level::info;
  switch (level) {
    case LogLevel::kDebug: l = spdlog::level::debug; break;
    case LogLevel::kInfo: l = spdlog::level::info; break;
    case LogLevel::kWarn: l = spdlog::level::warn; break;
    case LogLevel::kError: l = spdlog::level::err; break;
    case LogLevel::kOff: return;
  }
  Logger().log(l, "{}", line);
}
}  // namespace internal

}  // namespace kvferry
