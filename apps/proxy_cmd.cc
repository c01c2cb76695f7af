// `kvferry proxy --prefill URL [BOOTSTRAP_PORT] ... --decode URL ... [--host H] [--port P]`.
#include "apps/proxy_cmd.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/resource.h>
#include <CLI/CLI.hpp>

#include <memory>

#include "apps/commands.h"

namespace kvferry::apps {

void AddProxyOptions(CLI::App& cmd, ProxyCliArgs* a) {
  cmd.add_option("--prefill", a->prefill,
                 "URL [BOOTSTRAP_PORT]: a prefill instance's API URL, optionally followed by its bootstrap\n"
                 "port (default 8998, on the URL's host). Repeat for several instances.")
      ->type_size(1, 2)  // values per occurrence; any number of occurrences
      ->required();
  cmd.add_option("--decode", a->decode, "URL of a decode instance. Repeat for several instances.")->required();
  cmd.add_option("--host", a->host, "listen address")->capture_default_str();
  cmd.add_option("--port", a->port, "listen port (0 picks a free one)")->capture_default_str();
  cmd.add_option("--io-threads", a->io_threads, "client-facing io threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd.add_option("--upstream-threads", a->upstream_threads, "io threads for the legs to the instances")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd.add_option("--health-interval", a->health_interval_s, "seconds between health checks of the instances")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 3600.0));
}

StatusOr<proxy::ProxyOptions> ToProxyOptions(const ProxyCliArgs& a) {
  proxy::ProxyOptions o;
  KVF_ASSIGN_OR_RETURN(o.prefill, proxy::ParsePrefillArgs(a.prefill));
  o.decode = a.decode;
  o.host = a.host;
  o.port = a.port;
  o.io_threads = a.io_threads;
  o.upstream_threads = a.upstream_threads;
  o.health_interval = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(a.health_interval_s));
  return o;
}

namespace {

// Many concurrent streams need two sockets each; lift the soft limit to the hard one.
void RaiseFileLimit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

int RunProxy(const ProxyCliArgs& a) {
  auto options = ToProxyOptions(a);
  if (!options.ok()) {
    fmt::print(stderr, "kvferry proxy: {}\n", options.status().message());
    return 2;
  }
  RaiseFileLimit();
  // Block SIGINT/SIGTERM before any thread starts (threads inherit the mask); this thread
  // then waits for them with sigwait.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto p = proxy::Proxy::Create(*options);
  if (!p.ok()) {
    fmt::print(stderr, "kvferry proxy: {}\n", p.status().ToString());
    return 1;
  }
  int sig = 0;
  sigwait(&set, &sig);
  KVF_LOG_INFO("proxy: signal {}, stopping", sig);
  (*p)->Stop();
  return 0;
}

}  // namespace

void AddProxyCommand(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand(
      "proxy",
      "The disaggregation proxy: one OpenAI-compatible endpoint in front of prefill and decode instances\n"
      "(vLLM MooncakeConnector setup). It waits until every prefiller's /health answers 200 and its\n"
      "bootstrap /query lists its dp ranks (503 until then), then sends each /v1/completions or\n"
      "/v1/chat/completions request to a prefiller (max_tokens=1) and a decoder at once, with one\n"
      "transfer_id, round-robin over (prefiller, dp rank) and decoders, and streams the decoder's answer\n"
      "back. Instances that fail leave the rotation until their /health answers 200 again. Also serves\n"
      "/health, /v1/models (from a decoder) and /metrics. SIGINT/SIGTERM stop it (exit 0).\n"
      "Example: kvferry proxy --prefill http://10.0.0.2:8010 --prefill http://10.0.0.2:8011 9000 \\\n"
      "           --decode http://10.0.0.3:8020 --port 8000");
  auto args = std::make_shared<ProxyCliArgs>();
  AddProxyOptions(*cmd, args.get());
  cmd->callback([args] { ExitCode() = RunProxy(*args); });
}

}  // namespace kvferry::apps
