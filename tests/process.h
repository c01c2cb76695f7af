#pragma once
// Test helper: start a real `kvferry` process, read the first line it prints on
// stdout (with a deadline), signal it, and reap it. Bounded everywhere.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

namespace kvferry::testing {

class Process {
 public:
  // argv[0] is the binary; env entries are "K=V" added to the current environment.
  Process(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return;
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      dup2(out[1], STDOUT_FILENO);
      for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(out[1]);
    out_ = out[0];
  }
  ~Process() {
    Kill(SIGKILL);
    Wait(5000);
    if (out_ >= 0) close(out_);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  int pid() const { return pid_; }
  // The next line of stdout, or "" on EOF / timeout.
  std::string ReadLine(int timeout_ms = 30000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count());
      if (left <= 0) return "";
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, left) <= 0) return "";
      char tmp[4096];
      ssize_t n = read(out_, tmp, sizeof(tmp));
      if (n <= 0) return "";
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  // Everything left on stdout until EOF (bounded).
  std::string ReadAll(int timeout_ms = 60000) {
    std::string all = buf_;
    buf_.clear();
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count());
      if (left <= 0) return all;
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, left) <= 0) return all;
      char tmp[4096];
      ssize_t n = read(out_, tmp, sizeof(tmp));
      if (n <= 0) return all;
      all.append(tmp, static_cast<size_t>(n));
    }
  }
  void Kill(int sig) {
    if (pid_ > 0 && !reaped_) kill(pid_, sig);
  }
  // Exit status (WEXITSTATUS, or 128+signal), or -1 if still running after timeout_ms.
  int Wait(int timeout_ms) {
    if (pid_ <= 0) return -1;
    if (reaped_) return status_;
    for (int waited = 0;; waited += 5) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        reaped_ = true;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
      }
      if (waited >= timeout_ms) return -1;
      usleep(5000);
    }
  }

 private:
  int pid_ = -1;
  int out_ = -1;
  bool reaped_ = false;
  int status_ = -1;
  std::string buf_;
};

}  // namespace kvferry::testing
