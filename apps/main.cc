// The `kvferry` command: main() only; each subcommand lives in its own file.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>

#include "apps/commands.h"
#ifdef KVFERRY_HAVE_PROXY
#include "apps/proxy_cmd.h"
#endif
#include "kvferry/base/base.h"

namespace kvferry::apps {
int& ExitCode() {
  static int code = 0;
  return code;
}
}  // namespace kvferry::apps

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "kvferry: disaggregated LLM serving on CPUs. Prefill and decode servers exchange the KV\n"
      "cache through a Mooncake-compatible transfer engine; a proxy makes the pair look like one\n"
      "OpenAI-compatible server. Run `kvferry SUBCOMMAND --help` for each subcommand."};
  app.require_subcommand(1);
  app.set_version_flag("-V,--version", std::string("kvferry ") + kvferry::Version());
  std::string log_level;
  app.add_option("--log-level", log_level, "debug|info|warn|error|off (default: $KVFERRY_LOG_LEVEL or info)")
      ->check(CLI::IsMember({"debug", "info", "warn", "warning", "error", "off"}));
  app.parse_complete_callback([&] {
    kvferry::LogLevel level;
    if (!log_level.empty() && kvferry::ParseLogLevel(log_level, &level)) kvferry::SetLogLevel(level);
  });

  kvferry::apps::AddTokenizeCommand(app);
  kvferry::apps::AddModelCommand(app);
  kvferry::apps::AddRunCommand(app);

  CLI::App& bench = kvferry::apps::AddBenchCommand(app);
  kvferry::apps::AddModelBenchCommands(bench);
  kvferry::apps::AddEngineBenchCommand(bench);
#ifdef KVFERRY_WITH_SERVE
  kvferry::apps::AddDemoCommand(app);
  kvferry::apps::AddServeCommand(app);
  kvferry::apps::AddServeBenchCommand(bench);
#endif
#ifdef KVFERRY_HAVE_PROXY
  kvferry::apps::AddProxyCommand(app);
  kvferry::apps::AddProxyBenchCommand(bench);
#endif

  CLI11_PARSE(app, argc, argv);
  return kvferry::apps::ExitCode();
}
