// `kvferry serve MODEL_DIR`: the OpenAI-compatible server (docs/serve.md).
#include <fmt/format.h>
#include <pthread.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apps/commands.h"
#include "apps/engine_flags.h"
#include "kvferry/base/base.h"
#include "kvferry/connector/connector.h"
#include "kvferry/dp/dp.h"
#include "kvferry/engine/engine.h"
#include "kvferry/http/http.h"
#include "kvferry/server/server.h"
#include "kvferry/tokenizer/tokenizer.h"

namespace kvferry::apps {
namespace {

struct ServeArgs {
  std::string model_dir;
  std::string tokenizer;  // "" = the model's own (a GGUF file's metadata, or MODEL_DIR)
  std::string host = "0.0.0.0";
  int port = 8000;
  std::vector<std::string> served_model_names;
  std::string api_key;
  std::string kv_transfer_config;
  double shutdown_timeout_s = 30;
  int io_threads = 4;
  std::string max_request_body = "8MiB";
  EngineFlags engine;
  DataParallelFlags dp;
};

// One data-parallel rank: its connector worker (null: colocated) and its engine.
struct Rank {
  std::unique_ptr<connector::Connector> conn;
  std::unique_ptr<engine::Engine> engine;
};

void ShutdownRanks(std::vector<Rank>& ranks, const Deadline& deadline) {
  for (Rank& r : ranks)
    if (r.conn) r.conn->Shutdown(deadline);
  for (Rank& r : ranks)
    if (r.engine) r.engine->Shutdown(deadline);
}

int Fail(const Status& st) {
  std::fprintf(stderr, "kvferry serve: %s\n", st.ToString().c_str());
  return 1;
}

// `--headless`: the ranks join the master and serve what its API server sends them until
// SIGTERM/SIGINT (or a refusal the master says is final).
int ServeHeadless(const ServeArgs& a, const DataParallelPlan& dp, std::vector<Rank>& ranks,
                  const sigset_t& stop_signals) {
  dp::RankHostOptions ho;
  ho.master_host = dp.address;
  ho.master_port = dp.rpc_port;
  const bool wildcard = a.host.empty() || a.host == "0.0.0.0" || a.host == "::";
  char name[256] = {};
  if (wildcard) ::gethostname(name, sizeof(name) - 1);
  ho.instance = wildcard ? std::string(name) : a.host;

  for (size_t i = 0; i < ranks.size(); ++i)
    ho.ranks.push_back({dp.start_rank + static_cast<int>(i), ranks[i].engine.get(), ranks[i].conn.get()});
  StatusOr<std::unique_ptr<dp::RankHost>> host = dp::RankHost::Start(ho);
  if (!host.ok()) {
    ShutdownRanks(ranks, Deadline::After(std::chrono::seconds(5)));
    return Fail(host.status());
  }
  KVF_LOG_INFO("serve: headless: data-parallel rank(s) {}..{} of {} join the master at {}:{}", dp.start_rank,
               dp.start_rank + dp.size_local - 1, dp.size, dp.address, dp.rpc_port);
  int sig = 0;
  Status fatal;
  while (sig <= 0 && fatal.ok()) {
    const timespec one_second{1, 0};
    sig = sigtimedwait(&stop_signals, nullptr, &one_second);
    fatal = (*host)->fatal();
  }
  (*host)->Stop();
  ShutdownRanks(ranks, Deadline::After(std::chrono::seconds(10)));
  if (!fatal.ok()) return Fail(fatal);
  KVF_LOG_INFO("serve: headless: stopped");
  return 0;
}

int Serve(const ServeArgs& a) {
  // SIGINT/SIGTERM are taken synchronously by this thread (sigtimedwait below). Block them before
  // any thread starts so every thread inherits the mask and none runs a default handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  if (a.port < 0 || a.port > 65535) return Fail(InvalidArgumentError("--port must be in [0, 65535]"));
  if (a.io_threads < 1) return Fail(InvalidArgumentError("--http-threads must be >= 1"));
  if (a.shutdown_timeout_s < 0) return Fail(InvalidArgumentError("--shutdown-timeout must be >= 0"));
  StatusOr<uint64_t> max_body = ParseByteSize(a.max_request_body);
  if (!max_body.ok() || *max_body == 0)
    return Fail(InvalidArgumentError("--max-request-body: expected a size such as 8MiB"));
  StatusOr<engine::EngineOptions> options = ToEngineOptions(a.engine, a.model_dir);
  if (!options.ok()) return Fail(options.status());
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  StatusOr<DataParallelPlan> dp = PlanDataParallel(a.dp, a.engine.threads, cores);
  if (!dp.ok()) return Fail(dp.status());
  std::optional<connector::KvTransferConfig> kv_config;
  if (!a.kv_transfer_config.empty()) {
    StatusOr<connector::KvTransferConfig> cfg = connector::ParseKvTransferConfig(a.kv_transfer_config);
    if (!cfg.ok()) return Fail(cfg.status().WithContext("--kv-transfer-config"));
    kv_config = std::move(*cfg);
  }

  const std::string& tok_dir = a.tokenizer.empty() ? a.model_dir : a.tokenizer;
  StatusOr<std::unique_ptr<tokenizer::Tokenizer>> tok = tokenizer::Tokenizer::Load(tok_dir);
  if (!tok.ok()) return Fail(tok.status());
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  if (auto t = tokenizer::ChatTemplate::Load(tok_dir); t.ok()) {
    chat = std::move(*t);
  } else {
    KVF_LOG_WARN("serve: no usable chat template ({}); /v1/chat/completions will answer 400", t.status().ToString());
  }
  // The ranks, rank 0 first: its connector worker starts the bootstrap server that every other
  // rank's worker registers with. Each rank has its own engine (KV cache, compute threads).
  std::vector<Rank> ranks(static_cast<size_t>(dp->size_local));
  for (int i = 0; i < dp->size_local; ++i) {
    const int dp_rank = dp->start_rank + i;
    engine::EngineOptions eo = *options;
    // Every rank has the same seed (copied with the options): a request's output does not
    // depend on the rank that runs it.
    if (dp->size > 1) eo.load.num_threads = dp->threads_per_rank;
    Rank& rk = ranks[static_cast<size_t>(i)];
    if (kv_config) {
      // Disaggregated prefill/decode: the MooncakeConnector plugs into the engine's hooks.
      connector::ConnectorOptions co;
      co.config = *kv_config;
      // Listening on every interface: advertise the host's primary address to peers.
      const bool wildcard = a.host.empty() || a.host == "0.0.0.0" || a.host == "::";
      co.advertise_host = wildcard ? "" : a.host;
      co.bootstrap_bind_host = wildcard ? "0.0.0.0" : a.host;
      co.instance_port = a.port;  // with the host and the dp rank: the stable default engine_id
      co.dp_rank = dp_rank;
      // A configured engine_id names rank 0; the other ranks get "<id>_dp<rank>", as vLLM does.
      if (!co.config.engine_id.empty() && dp->size > 1) co.config.engine_id += fmt::format("_dp{}", dp_rank);
      if (dp_rank == 0) {
        for (int r = 0; r < dp->size; ++r) co.expect_dp_ranks.push_back(r);
      } else if (co.config.bootstrap_server_address.empty() && dp->headless) {
        // A headless rank's worker registers with the master's bootstrap server (the same
        // VLLM_MOONCAKE_BOOTSTRAP_PORT on every node, as in vLLM).
        co.config.bootstrap_server_address = fmt::format("{}:{}", dp->address, co.config.bootstrap_port);
      } else if (co.config.bootstrap_server_address.empty() && ranks[0].conn) {
        co.config.bootstrap_server_address = ranks[0].conn->bootstrap_url();
      }
      StatusOr<std::unique_ptr<connector::Connector>> c = connector::Connector::Create(co);
      if (!c.ok()) {
        ShutdownRanks(ranks, Deadline::After(std::chrono::seconds(5)));
        return Fail(c.status().WithContext(fmt::format("data-parallel rank {}", dp_rank)));
      }
      rk.conn = std::move(*c);
      eo.hooks = rk.conn->Hooks();
    }
    StatusOr<std::unique_ptr<engine::Engine>> eng = engine::Engine::Create(eo);
    if (!eng.ok()) {
      ShutdownRanks(ranks, Deadline::After(std::chrono::seconds(5)));
      return Fail(dp->size > 1 ? eng.status().WithContext(fmt::format("data-parallel rank {}", dp_rank))
                               : eng.status());
    }
    rk.engine = std::move(*eng);
    if (rk.conn) {
      if (Status st = rk.conn->Start(rk.engine.get()); !st.ok()) {
        ShutdownRanks(ranks, Deadline::After(std::chrono::seconds(5)));
        return Fail(st.WithContext(dp->size > 1 ? fmt::format("kv connector of data-parallel rank {}", dp_rank)
                                                : std::string("kv connector")));
      }
    }
  }
  if (dp->headless) return ServeHeadless(a, *dp, ranks, stop_signals);
  engine::Engine& engine = *ranks[0].engine;

  // Ranks on other nodes: headless instances join through the channel and a stand-in engine
  // and connector worker per rank take their place behind the API server.
  std::unique_ptr<dp::RankServer> remote;
  if (dp->size_local < dp->size) {
    dp::RankServerOptions ro;
    ro.bind_host = dp->address.empty() ? "0.0.0.0" : dp->address;
    ro.port = dp->rpc_port;
    ro.dp_size = dp->size;
    ro.first_remote_rank = dp->size_local;
    ro.model_engine = &engine;
    ro.kv_config = kv_config;
    ro.bootstrap_owner = ranks[0].conn.get();
    StatusOr<std::unique_ptr<dp::RankServer>> rs = dp::RankServer::Start(ro);
    if (!rs.ok()) {
      ShutdownRanks(ranks, Deadline::After(std::chrono::seconds(5)));
      return Fail(rs.status());
    }
    remote = std::move(*rs);
  }

  server::FrontendOptions fo;
  for (Rank& rk : ranks) fo.ranks.push_back({rk.engine.get(), rk.conn.get(), nullptr});
  for (int r = dp->size_local; r < dp->size; ++r) {
    dp::RankServer* rs = remote.get();
    fo.ranks.push_back({rs->engine(r), rs->connector(r), [rs, r] { return rs->RankUp(r); }});
  }
  fo.tokenizer = tok->get();
  fo.chat_template = chat.get();
  fo.served_model_names = a.served_model_names;
  if (fo.served_model_names.empty()) fo.served_model_names.push_back(a.model_dir);
  fo.model_root = a.model_dir;
  fo.api_key = a.api_key;
  StatusOr<std::unique_ptr<server::Frontend>> fe = server::Frontend::Create(fo);
  if (!fe.ok()) return Fail(fe.status());
  server::Frontend* frontend = fe->get();

  http::ServerOptions so;
  so.host = a.host;
  so.port = static_cast<uint16_t>(a.port);
  so.io_threads = a.io_threads;
  so.max_body_bytes = *max_body;
  StatusOr<std::unique_ptr<http::Server>> srv =
      http::Server::Create(so, [frontend](http::Request req, std::shared_ptr<http::Responder> resp) {
        frontend->Handle(std::move(req), std::move(resp));
      });
  if (!srv.ok()) {
    ShutdownRanks(ranks, Deadline::After(std::chrono::seconds(5)));
    return Fail(srv.status());
  }
  const engine::EngineStats stats = engine.GetStats();
  KVF_LOG_INFO("serve: model {} at http://{}:{} (max_model_len {}, {} KV blocks of {} tokens, {} KV arena)",
               fo.served_model_names.front(), a.host, (*srv)->port(), engine.max_model_len(), stats.blocks_total,
               engine.block_size(), FormatBytes(engine.kv_size_bytes()));
  if (dp->size > 1) {
    KVF_LOG_INFO(
        "serve: {} data-parallel ranks ({} here, {} headless), each with its own engine ({} compute threads "
        "here) and KV cache{}",
        dp->size, dp->size_local, dp->size - dp->size_local, dp->threads_per_rank,
        kv_config ? " and connector worker" : "");
  }

  int sig = 0;
  while (sig <= 0) {
    const timespec one_second{1, 0};
    sig = sigtimedwait(&stop_signals, nullptr, &one_second);
  }
  KVF_LOG_INFO("serve: {}: no new requests; draining {} in flight (up to {} s)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
               frontend->active_requests(), a.shutdown_timeout_s);
  const Deadline deadline =
      Deadline::After(std::chrono::duration_cast<Duration>(std::chrono::duration<double>(a.shutdown_timeout_s)));
  if (Status st = frontend->Drain(deadline); !st.ok()) KVF_LOG_WARN("serve: drain: {}", st.ToString());
  // Idle keep-alive connections (routers keep them open) close now; the last answers may still
  // sit in connection buffers: give those clients a moment (bounded) to read them.
  (*srv)->CloseIdle();
  const Deadline flush = Deadline::After(std::chrono::seconds(2));
  while ((*srv)->open_connections() > 0 && !flush.Expired()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  (*srv)->Stop();
  fe->reset();
  if (remote) remote->Stop();  // headless ranks see the channel close and wait to rejoin
  for (Rank& r : ranks)
    if (r.conn) r.conn->Shutdown(Deadline::After(std::chrono::seconds(10)));
  for (Rank& r : ranks) r.engine->Shutdown(Deadline::After(std::chrono::seconds(5)));
  KVF_LOG_INFO("serve: stopped");
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models,\n"
      "/health, /metrics, /tokenize, /detokenize). Flag names follow `vllm serve`. SIGTERM or SIGINT stops\n"
      "intake, lets requests in flight finish (up to --shutdown-timeout) and exits 0. See docs/serve.md.");
  auto a = std::make_shared<ServeArgs>();
  cmd->add_option("MODEL_DIR", a->model_dir,
                  "HF model directory (config.json, safetensors, tokenizer.json), or a GGUF file")
      ->required();
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Tokenizer and chat template from this directory instead of the model's (default: MODEL_DIR)");
  cmd->add_option("--host", a->host, "Address to listen on (default 0.0.0.0)");
  cmd->add_option("--port", a->port, "Port to listen on; 0 picks a free one (default 8000)");
  cmd->add_option("--served-model-name", a->served_model_names,
                  "Model name(s) clients use in \"model\" (repeatable; default MODEL_DIR); the first is reported");
  cmd->add_option("--api-key", a->api_key,
                  "Require 'Authorization: Bearer KEY' on /v1/* (default: no key, Authorization ignored)");
  cmd->add_option("--kv-transfer-config", a->kv_transfer_config,
                  "Disaggregated prefill/decode: MooncakeConnector config as JSON (PROTOCOL.md section 1)");
  cmd->add_option("--shutdown-timeout", a->shutdown_timeout_s,
                  "Seconds requests in flight get to finish after SIGTERM before they are aborted (default 30)");
  cmd->add_option("--http-threads", a->io_threads, "HTTP io threads (default 4)");
  cmd->add_option("--max-request-body", a->max_request_body,
                  "Largest request body; larger ones get 413 (default 8MiB)");
  AddEngineFlags(cmd, &a->engine);
  AddDataParallelFlags(cmd, &a->dp);
  cmd->callback([a] { ExitCode() = Serve(*a); });
}

}  // namespace kvferry::apps
