#pragma once
// `kvferry proxy` (proxy_cmd.cc) and `kvferry bench proxy` (bench_proxy_cmd.cc).

#include <cstdint>
#include <string>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/proxy/proxy.h"

namespace CLI {
class App;
}

namespace kvferry::apps {

// The command line of `kvferry proxy`, as parsed by CLI11.
struct ProxyCliArgs {
  std::vector<std::string> prefill;  // flattened: URL [PORT] URL [PORT] ...
  std::vector<std::string> decode;
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  int io_threads = 2;
  int upstream_threads = 2;
  double health_interval_s = 2;
};
// Registers the options of `kvferry proxy` on `cmd` (split out so tests parse real argv).
void AddProxyOptions(CLI::App& cmd, ProxyCliArgs* args);
StatusOr<proxy::ProxyOptions> ToProxyOptions(const ProxyCliArgs& args);

void AddProxyCommand(CLI::App& root);
void AddProxyBenchCommand(CLI::App& bench);

}  // namespace kvferry::apps
