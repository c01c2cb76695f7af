// `kvferry demo`: the README's main job. Starts a prefiller, a decoder and the proxy on
// loopback (three child processes of this binary, with the command lines PROTOCOL.md §1 gives)
// over a generated tiny model, streams a chat answer through the proxy, prints the KV-transfer
// figures both servers report and shuts everything down. `--transfer` instead measures the
// transfer engine alone (two engines in two processes, tcp and shm).
#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "apps/bench_transfer.h"
#include "apps/child.h"
#include "apps/commands.h"
#include "kvferry/http/http.h"
#include "kvferry/model/model.h"

namespace kvferry::apps {
namespace {

struct DemoArgs {
  double transfer_seconds = 2.0;
  bool transfer = false;
  std::string model_dir;
  std::string protocol = "tcp";
  std::string prompt = "Tell me a story about a ferry crossing to an island.";
  int max_tokens = 48;
  bool keep = false;
  int prefill_dp = 1;  // --data-parallel-size of the prefiller
};

int TransferDemo(double seconds) {
  fmt::print("kvferry {} demo: KV-cache transfer between two engines on 127.0.0.1\n\n", Version());
  MemcpyResult mc = RunMemcpyBench(4 << 20, 0.5);
  fmt::print("physical limit: memcpy 4 MiB, 1 thread: {:.2f} GB/s\n\n", mc.gbps);
  struct Case {
    transfer::Protocol protocol;
    transfer::Op op;
    uint64_t block;
    int batch;
  };
  // 64 KiB ≈ one 16-token KV block of a 0.5B model across all layers; 4 MiB = a long prompt's run.
  const Case cases[] = {{transfer::Protocol::kTcp, transfer::Op::kWrite, 64 << 10, 64},
                        {transfer::Protocol::kTcp, transfer::Op::kWrite, 4 << 20, 16},
                        {transfer::Protocol::kTcp, transfer::Op::kRead, 4 << 20, 16},
                        {transfer::Protocol::kShm, transfer::Op::kWrite, 4 << 20, 16}};
  fmt::print("{:<6}{:<7}{:>10}{:>7}{:>10}{:>12}{:>12}  {}\n", "proto", "op", "block", "batch", "GB/s", "p50 us",
             "p99 us", "check");
  for (const Case& k : cases) {
    TransferBenchConfig c;
    c.protocol = k.protocol;
    c.op = k.op;
    c.block_size = k.block;
    c.batch = k.batch;
    c.duration_s = seconds;
    c.verify = true;
    StatusOr<TransferBenchResult> r = RunTransferBench(c, false);
    if (!r.ok()) {
      fmt::print(stderr, "demo failed: {}\n", r.status().ToString());
      return 1;
    }
    fmt::print("{:<6}{:<7}{:>10}{:>7}{:>10.2f}{:>12.0f}{:>12.0f}  {}\n", transfer::ProtocolName(k.protocol),
               k.op == transfer::Op::kWrite ? "write" : "read", FormatBytes(k.block), k.batch, r->gbps, r->p50_us,
               r->p99_us, r->verified ? "data verified" : "-");
  }
  fmt::print(
      "\nEach row: a fresh target process, a segment handshake, a pattern written and read back\n"
      "and compared, then {:.1f} s of batches. See `kvferry bench transfer --help` for more.\n",
      seconds);
  return 0;
}

// The last lines of a child's log, to show why it failed.
std::string LogTail(const std::string& path, size_t lines = 15) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "    " + all[i] + "\n";
  return out;
}

// Sums every sample of a Prometheus metric family whose name is `name` (any labels); with
// `label` only the samples that carry it (e.g. engine="1"), with `skip` only those that do not.
std::optional<double> MetricSum(const std::string& text, const std::string& name, const std::string& label = "",
                                const std::string& skip = "") {
  std::istringstream in(text);
  std::optional<double> sum;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    if (line.compare(0, name.size(), name) != 0) continue;
    if (line.size() > name.size() && line[name.size()] != ' ' && line[name.size()] != '{') continue;
    if (!label.empty() && line.find(label) == std::string::npos) continue;
    if (!skip.empty() && line.find(skip) != std::string::npos) continue;
    size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    char* end = nullptr;
    double v = std::strtod(line.c_str() + sp + 1, &end);
    if (end == line.c_str() + sp + 1) continue;
    sum = sum.value_or(0) + v;
  }
  return sum;
}

struct Procs {
  std::vector<std::pair<std::string, Child>> list;  // name, child
  ~Procs() {
    for (auto it = list.rbegin(); it != list.rend(); ++it) it->second.Stop(std::chrono::seconds(10));
  }
};

// Polls `url` until it answers 200, a child dies, or the deadline passes.
Status WaitHealthy(const std::string& url, Procs& procs, const Deadline& deadline) {
  while (!deadline.Expired()) {
    for (auto& [name, child] : procs.list) {
      if (!child.Running()) {
        return UnavailableError(fmt::format("the {} exited during startup; its log ({}):\n{}", name, child.log_path(),
                                            LogTail(child.log_path())));
      }
    }
    auto r = http::Fetch(url, {}, Deadline::After(std::chrono::seconds(2)).Min(deadline));
    if (r.ok() && r->status == 200) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return DeadlineExceededError(fmt::format("{} did not become healthy in time", url));
}

int DisaggDemo(const DemoArgs& a) {
  auto fail = [](const Status& s) {
    fmt::print(stderr, "\nkvferry demo: {}\n", s.ToString());
    return 1;
  };
  fmt::print("kvferry {} demo: disaggregated prefill/decode on 127.0.0.1 (mooncake_protocol {})\n\n", Version(),
             a.protocol);
  char tmpl[] = "/tmp/kvferry-demo-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return fail(ErrnoToStatus(errno, "mkdtemp"));
  const std::string work = tmpl;
  struct Cleanup {
    std::string dir;
    bool keep;
    ~Cleanup() {
      if (!keep) std::filesystem::remove_all(dir);
    }
  } cleanup{work, a.keep};

  std::string model_dir = a.model_dir;
  if (model_dir.empty()) {
    model_dir = work + "/model";
    model::MakeTinyOptions mo;
    mo.seed = 7;
    mo.hidden_size = 128;
    mo.num_layers = 4;
    mo.num_heads = 8;
    mo.num_kv_heads = 2;
    mo.intermediate_size = 256;
    mo.show_progress = false;
    Status s = model::MakeTinyModel(model_dir, mo);
    if (!s.ok()) return fail(s);
    fmt::print(
        "model      generated tiny Qwen2 model (4 layers, hidden 128, bf16, random weights: its answer is\n"
        "           noise, but the same noise a colocated server gives) in {}\n",
        model_dir);
  }
  uint16_t ports[4];
  for (uint16_t& p : ports) {
    auto port = PickFreePort();
    if (!port.ok()) return fail(port.status());
    p = *port;
  }
  const uint16_t p_port = ports[0], d_port = ports[1], x_port = ports[2], boot_port = ports[3];
  const std::string extra = fmt::format(R"("kv_connector_extra_config":{{"mooncake_protocol":"{}"}})", a.protocol);
  const std::string p_cfg = R"({"kv_connector":"MooncakeConnector","kv_role":"kv_producer",)" + extra + "}";
  const std::string d_cfg = R"({"kv_connector":"MooncakeConnector","kv_role":"kv_consumer",)" + extra + "}";
  const std::string log_level = GetLogLevel() == LogLevel::kDebug ? "debug" : "info";
  std::vector<std::string> common = {"--host", "127.0.0.1",         "--served-model-name",
                                     "tiny",   "--kv-cache-memory", "64MiB"};
  auto serve_args = [&](uint16_t port, const std::string& cfg, int dp) {
    std::vector<std::string> v = {"--log-level", log_level, "serve", model_dir, "--port", std::to_string(port)};
    v.insert(v.end(), common.begin(), common.end());
    if (dp > 1) {
      v.push_back("--data-parallel-size");
      v.push_back(std::to_string(dp));
    }
    v.push_back("--kv-transfer-config");
    v.push_back(cfg);
    return v;
  };
  Procs procs;
  struct Spec {
    std::string name;
    std::vector<std::string> args;
    std::vector<std::string> env;
    std::string shown;
  };
  const std::vector<Spec> specs = {
      {"prefiller",
       serve_args(p_port, p_cfg, a.prefill_dp),
       {fmt::format("VLLM_MOONCAKE_BOOTSTRAP_PORT={}", boot_port)},
       fmt::format("VLLM_MOONCAKE_BOOTSTRAP_PORT={} kvferry serve MODEL --port {}{} --kv-transfer-config '{}'",
                   boot_port, p_port,
                   a.prefill_dp > 1 ? fmt::format(" --data-parallel-size {}", a.prefill_dp) : std::string(), p_cfg)},
      {"decoder",
       serve_args(d_port, d_cfg, 1),
       {},
       fmt::format("kvferry serve MODEL --port {} --kv-transfer-config '{}'", d_port, d_cfg)},
      {"proxy",
       {"--log-level", log_level, "proxy", "--prefill", fmt::format("http://127.0.0.1:{}", p_port),
        std::to_string(boot_port), "--decode", fmt::format("http://127.0.0.1:{}", d_port), "--host", "127.0.0.1",
        "--port", std::to_string(x_port)},
       {},
       fmt::format("kvferry proxy --prefill http://127.0.0.1:{} {} --decode http://127.0.0.1:{} --port {}", p_port,
                   boot_port, d_port, x_port)}};
  for (const Spec& s : specs) {
    auto c = Child::Spawn(s.args, s.env, work + "/" + s.name + ".log");
    if (!c.ok()) return fail(c.status());
    fmt::print("{:<10} {}\n", s.name, s.shown);
    procs.list.emplace_back(s.name, std::move(*c));
  }
  const std::string proxy = fmt::format("http://127.0.0.1:{}", x_port);
  double t0 = NowSeconds();
  Status ready = WaitHealthy(proxy + "/health", procs, Deadline::After(std::chrono::seconds(120)));
  if (!ready.ok()) return fail(ready);
  fmt::print("\nall three healthy after {:.1f} s; logs in {}{}\n\n", NowSeconds() - t0, work,
             a.keep ? "" : " (removed at exit; --keep keeps them)");

  // One streamed chat request through the proxy.
  nlohmann::json body = {{"model", "tiny"},
                         {"messages", {{{"role", "user"}, {"content", a.prompt}}}},
                         {"max_tokens", a.max_tokens},
                         {"temperature", 0},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  http::FetchOptions fo;
  fo.method = "POST";
  fo.body = body.dump();
  fmt::print("user       {}\nassistant  ", a.prompt);
  std::fflush(stdout);
  std::string pending, finish;
  double first_token = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  const double sent = NowSeconds();
  auto r = http::FetchStream(
      proxy + "/v1/chat/completions", fo, nullptr,
      [&](std::string_view chunk) {
        pending.append(chunk);
        for (size_t nl; (nl = pending.find("\n\n")) != std::string::npos;) {
          std::string event = pending.substr(0, nl);
          pending.erase(0, nl + 2);
          if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
          auto j = nlohmann::json::parse(event.substr(6), nullptr, false);
          if (!j.is_object()) continue;
          if (j.contains("choices") && !j["choices"].empty()) {
            const auto& c = j["choices"][0];
            std::string text = c.contains("delta") ? c["delta"].value("content", "") : "";
            if (!text.empty()) {
              if (first_token == 0) first_token = NowSeconds();
              // Keep the demo's output on one readable block: show control characters escaped.
              for (char ch : text) {
                if (ch == '\n')
                  std::fputs("\n           ", stdout);
                else
                  std::fputc(static_cast<unsigned char>(ch) < 0x20 ? '?' : ch, stdout);
              }
              std::fflush(stdout);
            }
            if (c.contains("finish_reason") && c["finish_reason"].is_string()) finish = c["finish_reason"];
          }
          if (j.contains("usage") && j["usage"].is_object()) {
            prompt_tokens = j["usage"].value("prompt_tokens", 0);
            completion_tokens = j["usage"].value("completion_tokens", 0);
          }
          if (j.contains("error")) {
            fmt::print("\n[error from the server: {}]", j["error"].dump());
            finish = "error";
          }
        }
        return true;
      },
      Deadline::After(std::chrono::seconds(120)));
  const double done = NowSeconds();
  fmt::print("\n\n");
  if (!r.ok()) return fail(r.status().WithContext("request through the proxy"));
  if (r->status != 200) return fail(InternalError(fmt::format("the proxy answered HTTP {}", r->status)));
  if (finish.empty() || finish == "error") return fail(InternalError("the stream ended without a finish reason"));
  fmt::print(
      "request    {} prompt tokens, {} generated, finish_reason {}; first token after {:.1f} ms, all after "
      "{:.1f} ms\n",
      prompt_tokens, completion_tokens, finish, (first_token > 0 ? first_token - sent : 0) * 1e3, (done - sent) * 1e3);

  // With several prefiller ranks the proxy takes them in turn: one more (non-streamed) request
  // per further rank, so every rank serves one.
  for (int r = 1; r < a.prefill_dp; ++r) {
    nlohmann::json more = body;
    more["stream"] = false;
    more.erase("stream_options");
    http::FetchOptions mo;
    mo.method = "POST";
    mo.body = more.dump();
    auto m = http::Fetch(proxy + "/v1/chat/completions", mo, Deadline::After(std::chrono::seconds(120)));
    if (!m.ok()) return fail(m.status().WithContext("request through the proxy"));
    if (m->status != 200) return fail(InternalError(fmt::format("the proxy answered HTTP {}", m->status)));
  }

  // What each side says about the KV transfer.
  auto metrics = [](uint16_t port) -> std::string {
    auto m =
        http::Fetch(fmt::format("http://127.0.0.1:{}/metrics", port), {}, Deadline::After(std::chrono::seconds(5)));
    return m.ok() && m->status == 200 ? m->body : std::string();
  };
  const std::string pm = metrics(p_port), dm = metrics(d_port);
  // With several ranks engine metrics come per rank (label engine) and in total (no engine
  // label): take the total; connector metrics come per rank only: add them up.
  auto val = [](const std::string& text, const char* name) {
    std::optional<double> total = MetricSum(text, name, "", "engine=\"");
    return total ? *total : MetricSum(text, name).value_or(0);
  };
  fmt::print("\nKV transfer ({}):\n", a.protocol);
  fmt::print("  {:<10}{:>11}{:>11}{:>13}{:>13}{:>12}\n", "side", "transfers", "blocks", "bytes", "descriptors",
             "time ms");
  for (const auto& [side, text] : {std::pair<const char*, const std::string&>{"prefiller", pm}, {"decoder", dm}}) {
    fmt::print("  {:<10}{:>11.0f}{:>11.0f}{:>13}{:>13.0f}{:>12.2f}\n", side, val(text, "kvferry:kv_transfers_total"),
               val(text, "kvferry:kv_transfer_blocks_total"),
               FormatBytes(static_cast<uint64_t>(val(text, "kvferry:kv_transfer_bytes_total"))),
               val(text, "kvferry:kv_transfer_descriptors_total"),
               val(text, "kvferry:kv_transfer_duration_seconds_sum") * 1e3);
  }
  for (int r = 0; a.prefill_dp > 1 && r < a.prefill_dp; ++r) {
    const std::string label = fmt::format("engine=\"{}\"", r);
    fmt::print("  {:<10}{:>11.0f}{:>11.0f}{:>13}{:>13.0f}{:>12.2f}\n", fmt::format("P rank {}", r),
               MetricSum(pm, "kvferry:kv_transfers_total", label).value_or(0),
               MetricSum(pm, "kvferry:kv_transfer_blocks_total", label).value_or(0),
               FormatBytes(static_cast<uint64_t>(MetricSum(pm, "kvferry:kv_transfer_bytes_total", label).value_or(0))),
               MetricSum(pm, "kvferry:kv_transfer_descriptors_total", label).value_or(0),
               MetricSum(pm, "kvferry:kv_transfer_duration_seconds_sum", label).value_or(0) * 1e3);
  }
  fmt::print("  KV blocks in use now: prefiller {:.0f}, decoder {:.0f}\n", val(pm, "kvferry:kv_blocks_used"),
             val(dm, "kvferry:kv_blocks_used"));

  // Clean shutdown: proxy first, then the servers; each must exit 0 on SIGTERM.
  fmt::print("\nshutting down:");
  int bad = 0;
  for (auto it = procs.list.rbegin(); it != procs.list.rend(); ++it) {
    int st = it->second.Stop(std::chrono::seconds(30));
    fmt::print(" {} exit {}{}", it->first, st, std::next(it) == procs.list.rend() ? "\n" : ",");
    if (st != 0) ++bad;
  }
  if (bad) return fail(InternalError("a process did not exit cleanly (logs kept in " + work + ")"));
  return 0;
}

}  // namespace

void AddDemoCommand(CLI::App& root) {
  auto* cmd = root.add_subcommand(
      "demo",
      "Run the end-to-end demo on 127.0.0.1: a prefiller and a decoder (`kvferry serve` with\n"
      "--kv-transfer-config kv_producer / kv_consumer) and `kvferry proxy` in front, over a generated tiny\n"
      "model. A chat request streams through the proxy; the KV cache the prefiller computed is written into\n"
      "the decoder by the transfer engine; the figures both sides report are printed; everything stops.\n"
      "--transfer runs the transfer-engine demo instead (two engines, tcp and shm, GB/s and latency).");
  auto a = std::make_shared<DemoArgs>();
  cmd->add_option("--protocol", a->protocol, "mooncake_protocol for the KV transfer: tcp (default) or shm")
      ->check(CLI::IsMember({"tcp", "shm"}));
  cmd->add_option("--model", a->model_dir, "serve this HF model directory instead of a generated tiny model");
  cmd->add_option("--prompt", a->prompt, "the user message to send");
  cmd->add_option("--max-tokens", a->max_tokens, "tokens to generate (default 48)")->check(CLI::Range(1, 4096));
  cmd->add_option("--data-parallel-size", a->prefill_dp,
                  "data-parallel ranks of the prefiller (default 1); the proxy routes over them and each serves a "
                  "request")
      ->check(CLI::Range(1, 8));
  cmd->add_flag("--keep", a->keep, "keep the work directory (model, logs) at exit");
  cmd->add_flag("--transfer", a->transfer, "run the transfer-engine demo instead");
  cmd->add_option("--duration", a->transfer_seconds, "--transfer: seconds per measurement (default 2)")
      ->check(CLI::Range(0.2, 60.0));
  cmd->callback([a] {
    if (a->transfer) {
      // A loopback demo: keep the engines' startup lines and the no-secret warning out of the table.
      if (GetLogLevel() == LogLevel::kInfo && std::getenv("KVFERRY_LOG_LEVEL") == nullptr) {
        SetLogLevel(LogLevel::kError);
      }
      ExitCode() = TransferDemo(a->transfer_seconds);
      return;
    }
    ExitCode() = DisaggDemo(*a);
  });
}

}  // namespace kvferry::apps
