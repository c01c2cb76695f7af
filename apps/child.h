#pragma once
// Child processes of the `kvferry` binary itself (the demo and benches start servers this way):
// spawn /proc/self/exe with arguments and extra environment, output to a log file, and stop
// them with SIGTERM then SIGKILL after a bound.

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::apps {

class Child {
 public:
  // Starts `kvferry ARGS...` with `env` ("NAME=value") added to this process's environment;
  // stdout and stderr go to `log_path`. The child gets SIGTERM if this process dies.
  static StatusOr<Child> Spawn(const std::vector<std::string>& args, const std::vector<std::string>& env,
                               const std::string& log_path);
  Child() = default;
  Child(Child&& o) noexcept
      : pid_(std::exchange(o.pid_, -1)), exited_(o.exited_), status_(o.status_), log_(std::move(o.log_)) {}
  Child& operator=(Child&& o) noexcept;
  ~Child() { Stop(std::chrono::seconds(5)); }

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_; }
  bool Running();
  // SIGTERM, wait up to `grace`, then SIGKILL. The exit status (128 + signal when killed by one;
  // -1 when there was no child). Idempotent: later calls return the same status.
  int Stop(Duration grace);
  // Waits up to `timeout` for the child to exit by itself; its status, or nullopt if still running.
  std::optional<int> Wait(Duration timeout);

 private:
  bool Reap(bool block);

  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = -1;
  std::string log_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
StatusOr<uint16_t> PickFreePort();

}  // namespace kvferry::apps
