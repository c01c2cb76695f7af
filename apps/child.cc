#include "apps/child.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

extern char** environ;

namespace kvferry::apps {

StatusOr<Child> Child::Spawn(const std::vector<std::string>& args, const std::vector<std::string>& env,
                             const std::string& log_path) {
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoToStatus(errno, "open " + log_path);
  // Everything the child needs is built before fork: only async-signal-safe calls after it.
  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) envs.emplace_back(*e);
  envs.insert(envs.end(), env.begin(), env.end());
  std::vector<char*> argv, envp;
  std::string self = "kvferry";
  argv.push_back(self.data());
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (std::string& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    ::close(log_fd);
    return ErrnoToStatus(err, "fork");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execve("/proc/self/exe", argv.data(), envp.data());
    _exit(127);
  }
  ::close(log_fd);
  Child c;
  c.pid_ = pid;
  c.log_ = log_path;
  return c;
}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    Stop(std::chrono::seconds(5));
    pid_ = std::exchange(o.pid_, -1);
    exited_ = o.exited_;
    status_ = o.status_;
    log_ = std::move(o.log_);
  }
  return *this;
}

bool Child::Reap(bool block) {
  if (pid_ <= 0 || exited_) return exited_;
  int status = 0;
  pid_t r = waitpid(pid_, &status, block ? 0 : WNOHANG);
  if (r != pid_) return false;
  exited_ = true;
  status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return true;
}

bool Child::Running() {
  return pid_ > 0 && !Reap(false);
}

std::optional<int> Child::Wait(Duration timeout) {
  if (pid_ <= 0) return -1;
  Deadline d = Deadline::After(timeout);
  while (!Reap(false)) {
    if (d.Expired()) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return status_;
}

int Child::Stop(Duration grace) {
  if (pid_ <= 0) return -1;
  if (!Reap(false)) {
    kill(pid_, SIGTERM);
    if (!Wait(grace).has_value()) {
      kill(pid_, SIGKILL);
      Reap(true);
    }
  }
  return status_;
}

StatusOr<uint16_t> PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoToStatus(errno, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, "bind 127.0.0.1:0");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace kvferry::apps
