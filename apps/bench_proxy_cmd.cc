// `kvferry bench proxy`: the proxy's added latency and memory while it holds many
// concurrent streams (probes alternate direct / through the proxy under that load). Fake upstreams run in this process
// (a prefiller answering /health, bootstrap /query and 1-token completions; a decoder streaming SSE chunks); the real
// proxy runs as a child process (`kvferry proxy`), so its peak RSS (VmHWM) is its own.
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "apps/commands.h"
#include "apps/proxy_cmd.h"
#include "kvferry/connector/connector.h"
#include "kvferry/http/http.h"

namespace kvferry::apps {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

struct BenchArgs {
  int streams = 1000;
  int chunks = 100;
  int interval_ms = 50;
  double ramp_s = 2.0;
  int probes = 200;
  bool json = false;
};

// The fake decoder: answers with headers and the first chunk at once (so time to first
// byte measures only the path), then one chunk per tick until `chunks`, then [DONE].
class FakeDecoder {
 public:
  static StatusOr<std::unique_ptr<FakeDecoder>> Start(int chunks, int interval_ms) {
    auto d = std::unique_ptr<FakeDecoder>(new FakeDecoder(chunks, interval_ms));
    http::ServerOptions o;
    o.host = "127.0.0.1";
    o.io_threads = 2;
    o.max_connections = 100000;
    KVF_ASSIGN_OR_RETURN(d->server_,
                         http::Server::Create(o, [p = d.get()](http::Request req, std::shared_ptr<http::Responder> r) {
                           p->Handle(req, std::move(r));
                         }));
    d->ticker_ = std::thread([p = d.get()] { p->Tick(); });
    return d;
  }
  ~FakeDecoder() {
    {
      MutexLock l(mu_);
      stop_ = true;
    }
    ticker_.join();
    server_->Stop();
  }
  std::string url() const { return fmt::format("http://127.0.0.1:{}", server_->port()); }

 private:
  FakeDecoder(int chunks, int interval_ms) : chunks_(chunks), interval_ms_(interval_ms) {}
  struct Stream {
    std::shared_ptr<http::Responder> r;
    int sent = 0;
  };
  static std::string Chunk(int i) {
    return fmt::format("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{}\"}}}}]}}\n\n", i);
  }
  void Handle(const http::Request& req, std::shared_ptr<http::Responder> r) {
    if (req.path == "/health") return r->Respond(200, "application/json", "{}");
    r->BeginStream(200, "text/event-stream");
    r->Write(Chunk(0));
    if (req.body.find("\"max_tokens\":1,") != std::string::npos) {  // a probe
      r->Write("data: [DONE]\n\n");
      r->End();
      return;
    }
    MutexLock l(mu_);
    streams_.push_back(Stream{std::move(r), 1});
  }
  void Tick() {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms_));
      std::vector<Stream> active;
      {
        MutexLock l(mu_);
        if (stop_) return;
        active.swap(streams_);
      }
      std::vector<Stream> keep;
      for (Stream& s : active) {
        if (s.sent >= chunks_) {
          s.r->Write("data: [DONE]\n\n");
          s.r->End();
          continue;
        }
        if (!s.r->Write(Chunk(s.sent++))) continue;
        keep.push_back(std::move(s));
      }
      MutexLock l(mu_);
      for (Stream& s : keep) streams_.push_back(std::move(s));
    }
  }

  const int chunks_, interval_ms_;
  std::unique_ptr<http::Server> server_;
  std::thread ticker_;
  Mutex mu_;
  std::vector<Stream> streams_ KVF_GUARDED_BY(mu_);
  bool stop_ KVF_GUARDED_BY(mu_) = false;
};

struct Sample {
  double ttfb_ms = 0;
  double total_ms = 0;
  bool ok = false;
  std::string error;  // why it failed
};

// Streaming requests started by one client; on_done of each fills its Sample.
class Load {
 public:
  explicit Load(int n) : samples_(static_cast<size_t>(n)), started_(static_cast<size_t>(n)) {}
  // Starts request `i` now.
  void Start(http::Client& client, const std::string& url, const std::string& body, int i) {
    http::CallOptions o;
    o.method = "POST";
    o.body = body;
    o.timeout = std::chrono::seconds(300);
    http::CallHandlers h;
    auto tail = std::make_shared<std::string>();
    size_t k = static_cast<size_t>(i);
    h.on_body = [this, k, tail](std::string_view c) {
      if (samples_[k].ttfb_ms == 0) samples_[k].ttfb_ms = Since(k);
      tail->append(c);
      if (tail->size() > 64) tail->erase(0, tail->size() - 64);
    };
    h.on_done = [this, k, tail](const Status& st) {
      samples_[k].total_ms = Since(k);
      samples_[k].ok = st.ok() && tail->ends_with("data: [DONE]\n\n");
      if (!st.ok())
        samples_[k].error = st.ToString();
      else if (!samples_[k].ok)
        samples_[k].error = "stream ended without data: [DONE]: ..." + *tail;
      MutexLock l(mu_);
      ++done_;
      cv_.NotifyAll();
    };
    started_[k] = SteadyClock::now();
    client.Start(url, std::move(o), std::move(h));
  }
  // Waits until `n` requests finished (bounded); false on timeout.
  bool Wait(int n, Duration bound) {
    Deadline dl = Deadline::After(bound);
    MutexLock l(mu_);
    while (done_ < n && !dl.Expired()) cv_.WaitUntil(mu_, dl);
    return done_ >= n;
  }
  // Valid after Wait() returned true for every started request.
  const std::vector<Sample>& samples() const { return samples_; }

 private:
  double Since(size_t k) const {
    return std::chrono::duration<double, std::milli>(SteadyClock::now() - started_[k]).count();
  }
  std::vector<Sample> samples_;
  std::vector<SteadyClock::time_point> started_;
  Mutex mu_;
  CondVar cv_;
  int done_ KVF_GUARDED_BY(mu_) = 0;
};

const char kStreamBody[] =
    R"({"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":64,"stream":true})";
// max_tokens 1: the fake decoder answers with one chunk and [DONE] at once.
const char kProbeBody[] =
    R"({"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":1,"stream":true})";

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
}

StatusOr<uint16_t> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return UnavailableError("cannot find a free port");
  }
  close(fd);
  return ntohs(a.sin_port);
}

int64_t StatusKb(int pid, const std::string& key) {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(f, line)) {
    if (line.starts_with(key + ":")) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

// User + system CPU seconds the process has used so far.
double CpuSeconds(int pid) {
  std::ifstream f(fmt::format("/proc/{}/stat", pid));
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t close = all.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream in(all.substr(close + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);  // utime, stime
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

int RunBench(const BenchArgs& a) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (static_cast<int64_t>(rl.rlim_cur) < 6LL * a.streams + 100) {
    fmt::print(stderr, "bench proxy: {} streams need about {} open files; the limit is {}\n", a.streams,
               6 * a.streams + 100, rl.rlim_cur);
    return 1;
  }
  // Fake prefiller: /health, 1-token completions; its bootstrap server lists dp rank 0.
  http::ServerOptions po;
  po.host = "127.0.0.1";
  po.io_threads = 1;
  po.max_connections = 100000;
  auto prefill = http::Server::Create(po, [](http::Request req, std::shared_ptr<http::Responder> r) {
    if (req.path == "/health") return r->Respond(200, "application/json", "{}");
    r->Respond(200, "application/json", R"({"choices":[{"index":0,"text":"x","finish_reason":"length"}]})");
  });
  auto bootstrap = connector::BootstrapServer::Start("127.0.0.1", 0);
  auto decoder = FakeDecoder::Start(a.chunks, a.interval_ms);
  auto port = FreePort();
  if (!prefill.ok() || !bootstrap.ok() || !decoder.ok() || !port.ok()) {
    fmt::print(stderr, "bench proxy: cannot start the fake upstreams\n");
    return 1;
  }
  (void)(*bootstrap)->registry().Register(connector::WorkerInfo{"bench-engine", 0, 0, 0, "tcp://127.0.0.1:1"});
  std::string prefill_url = fmt::format("http://127.0.0.1:{}", (*prefill)->port());
  std::string bport = std::to_string((*bootstrap)->port());
  std::string dec_url = (*decoder)->url();
  std::string pport = std::to_string(*port);

  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    execl("/proc/self/exe", "kvferry", "--log-level", "error", "proxy", "--prefill", prefill_url.c_str(), bport.c_str(),
          "--decode", dec_url.c_str(), "--port", pport.c_str(), "--health-interval", "1", static_cast<char*>(nullptr));
    _exit(127);
  }
  auto stop_child = [pid] {
    kill(pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 500; ++i) {
      if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
      usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return 137;
  };
  std::string proxy_url = "http://127.0.0.1:" + pport;
  bool up = false;
  for (int i = 0; i < 500 && !up; ++i) {
    auto h = http::Fetch(proxy_url + "/health", {}, Deadline::After(1s));
    up = h.ok() && h->status == 200;
    if (!up) std::this_thread::sleep_for(20ms);
  }
  if (!up) {
    fmt::print(stderr, "bench proxy: the proxy did not become healthy\n");
    stop_child();
    return 1;
  }
  int64_t idle_rss_kb = StatusKb(pid, "VmRSS");
  auto client = http::Client::Create({.io_threads = 2, .max_idle_per_host = 4096});
  auto prober = http::Client::Create({.io_threads = 1});
  if (!client.ok() || !prober.ok()) return 1;
  const std::string direct_url = dec_url + "/v1/chat/completions";
  const std::string via_proxy = proxy_url + "/v1/chat/completions";
  // Background: `streams` long streams through the proxy, started evenly over the ramp.
  // Meanwhile and afterwards, probes alternate between the fake decoder and the proxy one
  // at a time, so both paths are timed under the same load; the difference is what the
  // proxy adds.
  Load load(a.streams);
  const int probes = a.probes;
  Load probe(2 * probes);
  double cpu0 = CpuSeconds(pid);
  auto t_start = SteadyClock::now();
  Duration ramp = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(a.ramp_s));
  std::thread starter([&] {
    for (int i = 0; i < a.streams; ++i) {
      std::this_thread::sleep_until(t_start + ramp * i / a.streams);
      load.Start(**client, via_proxy, kStreamBody, i);
    }
  });
  // Probes start once half the streams are open and run until all of them are.
  std::this_thread::sleep_until(t_start + ramp / 2);
  Duration gap = std::max<Duration>(ramp / 2 / probes, std::chrono::microseconds(200));
  for (int i = 0; i < 2 * probes; ++i) {
    auto next = SteadyClock::now() + gap;
    probe.Start(**prober, i % 2 == 0 ? direct_url : via_proxy, kProbeBody, i);
    probe.Wait(i + 1, std::chrono::seconds(30));
    std::this_thread::sleep_until(next);
  }
  starter.join();
  // Everything open at once: the peak.
  std::this_thread::sleep_for(std::chrono::milliseconds(a.interval_ms * 2));
  int64_t open_kb = StatusKb(pid, "VmRSS");
  bool all_done = load.Wait(a.streams, std::chrono::seconds(300));
  double cpu_s = CpuSeconds(pid) - cpu0;
  double wall_s = std::chrono::duration<double>(SteadyClock::now() - t_start).count();
  // VmHWM is updated lazily by the kernel; a VmRSS sample can be a little above it.
  int64_t peak_kb = std::max(StatusKb(pid, "VmHWM"), open_kb);
  client->reset();
  prober->reset();
  int exit_code = stop_child();

  std::vector<double> direct, proxied, stream_ttfb;
  int failed = all_done ? 0 : a.streams;
  for (int i = 0; i < 2 * probes; ++i) {
    const Sample& s = probe.samples()[static_cast<size_t>(i)];
    if (!s.ok)
      ++failed;
    else
      (i % 2 == 0 ? direct : proxied).push_back(s.total_ms);
  }
  if (all_done) {
    for (const Sample& s : load.samples()) {
      if (!s.ok)
        ++failed;
      else
        stream_ttfb.push_back(s.ttfb_ms);
    }
  }
  int shown = 0;
  auto show = [&](const char* what, const std::vector<Sample>& v) {
    for (const Sample& s : v) {
      if (!s.ok && shown++ < 3) fmt::print(stderr, "bench proxy: a {} failed: {}\n", what, s.error);
    }
  };
  show("probe", probe.samples());
  if (all_done) show("stream", load.samples());
  double d50 = Percentile(direct, 0.5), d99 = Percentile(direct, 0.99);
  double p50 = Percentile(proxied, 0.5), p99 = Percentile(proxied, 0.99);
  double peak_mb = static_cast<double>(peak_kb) / 1024.0;
  if (a.json) {
    nlohmann::json j{{"streams", a.streams},
                     {"failed", failed},
                     {"added_p50_ms", p50 - d50},
                     {"added_p99_ms", p99 - d99},
                     {"peak_rss_mb", peak_mb},
                     {"idle_rss_mb", static_cast<double>(idle_rss_kb) / 1024.0},
                     {"rss_all_open_mb", static_cast<double>(open_kb) / 1024.0},
                     {"probes", probes},
                     {"direct_p50_ms", d50},
                     {"direct_p99_ms", d99},
                     {"proxy_p50_ms", p50},
                     {"proxy_p99_ms", p99},
                     {"stream_ttfb_p50_ms", Percentile(stream_ttfb, 0.5)},
                     {"stream_ttfb_p99_ms", Percentile(stream_ttfb, 0.99)},
                     {"chunks_per_stream", a.chunks + 1},
                     {"chunk_interval_ms", a.interval_ms},
                     {"proxy_cpu_s", cpu_s},
                     {"run_s", wall_s},
                     {"proxy_exit_code", exit_code}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print(
        "bench proxy: {} concurrent streams through the proxy (started over {:.1f} s), {} SSE chunks each,\n"
        "  one every {} ms; {} probes each way (one chunk + [DONE]) while they run\n",
        a.streams, a.ramp_s, a.chunks + 1, a.interval_ms, probes);
    fmt::print("  probe latency   direct p50 {:.3f} ms  p99 {:.3f} ms\n", d50, d99);
    fmt::print("                  proxy  p50 {:.3f} ms  p99 {:.3f} ms\n", p50, p99);
    fmt::print("  added latency   p50 {:.3f} ms  p99 {:.3f} ms\n", p50 - d50, p99 - d99);
    fmt::print("  streams' time to first byte through the proxy: p50 {:.3f} ms  p99 {:.3f} ms\n",
               Percentile(stream_ttfb, 0.5), Percentile(stream_ttfb, 0.99));
    fmt::print("  proxy RSS       idle {:.1f} MB  all streams open {:.1f} MB  peak (VmHWM) {:.1f} MB\n",
               idle_rss_kb / 1024.0, open_kb / 1024.0, peak_mb);
    fmt::print("  proxy CPU       {:.2f} s over the {:.2f} s run\n", cpu_s, wall_s);
    fmt::print("  failed requests {}   proxy exit code {}\n", failed, exit_code);
  }
  return failed == 0 && exit_code == 0 ? 0 : 1;
}

}  // namespace

void AddProxyBenchCommand(CLI::App& bench) {
  CLI::App* cmd = bench.add_subcommand(
      "proxy",
      "Added latency and memory of `kvferry proxy` (run as a child process) holding many concurrent\n"
      "streaming requests against fast in-process fake upstreams. While the streams run, short probe\n"
      "requests alternate between the fake decoder and the proxy; added latency = proxy p50/p99 minus\n"
      "direct p50/p99. Also the proxy's RSS (VmHWM) and CPU time.");
  auto a = std::make_shared<BenchArgs>();
  cmd->add_option("--streams", a->streams, "concurrent streaming requests")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--chunks", a->chunks, "SSE chunks per stream after the first")->capture_default_str();
  cmd->add_option("--interval-ms", a->interval_ms, "milliseconds between a stream's chunks")->capture_default_str();
  cmd->add_option("--ramp", a->ramp_s, "seconds over which the streams start")->capture_default_str();
  cmd->add_option("--probes", a->probes, "latency probes each way (direct, through the proxy)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_flag("--json", a->json, "print one JSON object");
  cmd->callback([a] { ExitCode() = RunBench(*a); });
}

}  // namespace kvferry::apps
