// A small harness for the process tests (tests/test_process.cpp): real programs started with
// fork/execv, their output captured in files, signals sent by PID, deadlines that scale with
// RAFT_TIME_SCALE, and a RESP client over a socket (resp.hpp).
//
//   proc::TempDir dir("join");
//   proc::Process node("n1", {proc::example("run_raft"), "-a", "127.0.0.1:7000", "-d", dir/"d1"}, dir);
//   REQUIRE(node.wait_for_err("leading term", proc::scaled(5000)));
//   proc::Client c("127.0.0.1", 7000);
//   CHECK(c.call({"set", "k", "v"}).str == "OK");
//
// Every Process is killed (SIGKILL) and reaped by its destructor, also when a test fails.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "resp.hpp"
#include "support.hpp"
#include "temp_dir.hpp"

namespace proc {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Deadlines, waiting, files, INFO fields and replies as text: tests/support.hpp.
using test_support::eventually;
using test_support::holds_for;
using test_support::info_field;
using test_support::long_wait;
using test_support::read_file;
using test_support::scaled;
using test_support::show;
using test_support::time_scale;
using test_support::typed;

// ---- environment ----------------------------------------------------------------------------

/// RAFT_BUILD_DIR (default "build"): where the examples were built.
inline std::string build_dir() {
  const char* s = std::getenv("RAFT_BUILD_DIR");
  return s && *s ? s : "build";
}

inline std::string example(const std::string& name) { return build_dir() + "/examples/" + name; }

/// The full path of a program found on PATH, or "" (resolved before fork: execv takes paths).
inline std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string d;
  while (std::getline(dirs, d, ':')) {
    std::string full = (d.empty() ? "." : d) + "/" + name;
    if (access(full.c_str(), X_OK) == 0) return full;
  }
  return "";
}

inline std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

using test_support::TempDir;

/// The last `lines` lines of every output file (`*.err`, `*.out`) in `dir`, each headed by its
/// name: what to print when a test fails.
inline std::string output_tails(const std::string& dir, std::size_t lines = 30) {
  std::string all;
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.path().extension() == ".err" || e.path().extension() == ".out") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    const std::string text = read_file(f.string());
    if (text.empty()) continue;
    std::size_t begin = text.size(), seen = 0;
    while (begin > 0 && seen <= lines) {
      begin = text.rfind('\n', begin - 1);
      if (begin == std::string::npos) {
        begin = 0;
        break;
      }
      ++seen;
    }
    all += "==== " + f.filename().string() + "\n" + text.substr(begin == 0 ? 0 : begin + 1);
    if (all.back() != '\n') all += '\n';
  }
  return all;
}

/// What sanitizers (ASan, UBSan, LSan, TSan) wrote into the logs (`*.err`) in `dir`: each
/// report's first lines, prefixed with its file name; "" when there is none.
inline std::string sanitizer_reports(const std::string& dir) {
  std::string found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".err") continue;
    const std::string text = read_file(e.path().string());
    for (const char* marker :
         {"ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "ERROR: LeakSanitizer", "runtime error:"}) {
      const auto at = text.find(marker);
      if (at == std::string::npos) continue;
      const auto line = text.rfind('\n', at);
      const auto begin = line == std::string::npos ? 0 : line + 1;
      found += e.path().filename().string() + ": " + text.substr(begin, 1500) + "\n";
    }
  }
  return found;
}

// ---- processes ------------------------------------------------------------------------------

/// A child process whose stdout and stderr go to files `<dir>/<name>.out` and `<name>.err`
/// (a name used twice gets a numbered suffix). It runs in `dir`, so files it creates by
/// default (a data directory) land there. Killed and reaped by the destructor.
class Process {
 public:
  /// argv[0] is the program: a path, or a name looked up on PATH. `input` becomes its stdin
  /// (empty: /dev/null). With `own_group` it leads a process group of its own, as a shell's
  /// foreground job does: signal_group() reaches its children too, and kill() kills them all
  /// (while it has not been reaped).
  /// Throws if the program cannot be found or the fork fails.
  Process(const std::string& name, std::vector<std::string> argv, const TempDir& dir,
          const std::string& input = "", bool own_group = false)
      : own_group_(own_group) {
    base_ = unique_base(dir / name);
    out_path_ = base_ + ".out";
    err_path_ = base_ + ".err";
    std::string program = find_program(argv.at(0));
    if (program.empty()) throw std::runtime_error("program not found: " + argv[0]);
    program = std::filesystem::absolute(program).string();
    const std::string cwd = dir.path();
    std::string in_path = "/dev/null";
    if (!input.empty()) {
      in_path = base_ + ".in";
      std::ofstream(in_path, std::ios::binary) << input;
    }
    // Everything the child needs is prepared here: between fork and exec only
    // async-signal-safe calls are allowed (the test process has threads).
    const int in_fd = ::open(in_path.c_str(), O_RDONLY | O_CLOEXEC);
    const int out_fd = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err_fd = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (in_fd < 0 || out_fd < 0 || err_fd < 0)
      throw std::runtime_error("cannot open the output files of " + name);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Dies with the test binary, so no node outlives a crashed test run.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);
      if (own_group) ::setpgid(0, 0);
      ::dup2(in_fd, 0);
      ::dup2(out_fd, 1);
      ::dup2(err_fd, 2);
#ifdef SYS_close_range
      ::syscall(SYS_close_range, 3u, ~0u, 0u);  // nothing of the test binary leaks into it
#endif
      if (::chdir(cwd.c_str()) != 0) ::_exit(126);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execv(program.c_str(), args.data());
      ::_exit(127);
    }
    ::close(in_fd);
    ::close(out_fd);
    ::close(err_fd);
    if (pid_ < 0) throw std::runtime_error("fork: " + std::string(std::strerror(errno)));
    if (own_group) ::setpgid(pid_, pid_);  // also here, so that it holds before we signal the group
  }
  ~Process() { kill(); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }

  /// True until the process has exited (a stopped process is running).
  bool running() {
    reap(false);
    return status_ < 0;
  }
  /// Sends `sig` (SIGSTOP, SIGCONT, SIGTERM, ...) to this process only.
  void signal(int sig) {
    if (running()) ::kill(pid_, sig);
  }
  /// Sends `sig` to the whole process group (only for a process started with `own_group`),
  /// as a terminal's Ctrl-C does.
  void signal_group(int sig) {
    if (own_group_ && running()) ::kill(-pid_, sig);
  }
  /// SIGSTOP, and waits until every thread of the process is stopped (kill() returns before
  /// the signal has taken effect, and a thread on another CPU may still run for a moment).
  bool pause(milliseconds timeout = scaled(5000)) {
    signal(SIGSTOP);
    return eventually(timeout, [&] { return all_threads_in_state('T'); });
  }
  /// SIGCONT.
  void resume() { signal(SIGCONT); }
  /// SIGKILL and reap.
  void kill() {
    if (pid_ <= 0 || status_ >= 0) return;
    // Until it is reaped its PID, and so the group's id, cannot belong to anyone else.
    ::kill(own_group_ ? -pid_ : pid_, SIGKILL);
    reap(true);
  }
  /// Waits for the exit: its code, 128 + the signal number if a signal killed it, or nothing
  /// if it still runs after `timeout`.
  std::optional<int> wait_exit(milliseconds timeout) {
    if (!eventually(timeout, [&] { return !running(); })) return std::nullopt;
    return status_;
  }

  std::string out() const { return read_file(out_path_); }
  std::string err() const { return read_file(err_path_); }
  const std::string& out_path() const { return out_path_; }
  const std::string& err_path() const { return err_path_; }

  /// Waits until stderr (the log) or stdout holds `text` at least `times` times.
  bool wait_for_err(const std::string& text, milliseconds timeout, std::size_t times = 1) const {
    return eventually(timeout, [&] { return count(err(), text) >= times; });
  }
  bool wait_for_out(const std::string& text, milliseconds timeout, std::size_t times = 1) const {
    return eventually(timeout, [&] { return count(out(), text) >= times; });
  }

  /// A field of /proc/PID/status ("Threads", "VmRSS"), as a number; -1 if unavailable.
  long status_field(const std::string& field) const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(f, line))
      if (line.compare(0, field.size() + 1, field + ":") == 0)
        return std::atol(line.c_str() + field.size() + 1);
    return -1;
  }

 private:
  // Each thread's state letter from /proc/PID/task/TID/stat (the field after "(comm)").
  bool all_threads_in_state(char state) const {
    std::error_code ec;
    bool any = false;
    for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/task", ec)) {
      const std::string stat = read_file((t.path() / "stat").string());
      const auto paren = stat.rfind(')');
      if (paren == std::string::npos || paren + 2 >= stat.size()) continue;  // the thread just ended
      if (stat[paren + 2] != state) return false;
      any = true;
    }
    return any;
  }
  static std::string unique_base(const std::string& base) {
    std::string b = base;
    for (int i = 2; std::filesystem::exists(b + ".err"); ++i) b = base + "." + std::to_string(i);
    return b;
  }
  void reap(bool block) {
    if (pid_ <= 0 || status_ >= 0) return;
    int st = 0;
    pid_t r;
    do {
      r = ::waitpid(pid_, &st, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == pid_) status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (r < 0) status_ = 255;  // not our child any more; nothing left to reap
  }
  std::string base_, out_path_, err_path_;
  bool own_group_ = false;
  pid_t pid_ = -1;
  int status_ = -1;  // exit code once reaped
};

/// The outcome of run(): exit code (128 + signal; -1 if it was killed at the deadline).
struct RunResult {
  int code = -1;
  std::string out;
  std::string err;
};

/// Runs a program to completion with a deadline (killed when it passes), `input` on stdin.
inline RunResult run(const std::string& name, const std::vector<std::string>& argv, const TempDir& dir,
                     milliseconds timeout, const std::string& input = "") {
  Process p(name, argv, dir, input);
  RunResult r;
  auto code = p.wait_exit(timeout);
  p.kill();
  r.code = code ? *code : -1;
  r.out = p.out();
  r.err = p.err();
  return r;
}

// ---- a RESP client ---------------------------------------------------------------------------

/// A blocking client on one TCP connection. Replies are resp::Value; a failure of the
/// connection itself (refused, closed, no reply in time) comes back as an error value whose
/// code word is "IOERR", which no server sends, so callers can retry on it.
class Client {
 public:
  Client() = default;
  Client(const std::string& ip, int port, milliseconds timeout = scaled(3000)) { connect(ip, port, timeout); }
  ~Client() { close(); }
  Client(Client&& o) noexcept : fd_(o.fd_), parser_(std::move(o.parser_)), error_(std::move(o.error_)) {
    o.fd_ = -1;
  }
  Client& operator=(Client&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = o.fd_;
      parser_ = std::move(o.parser_);
      error_ = std::move(o.error_);
      o.fd_ = -1;
    }
    return *this;
  }

  bool connect(const std::string& ip, int port, milliseconds timeout = scaled(3000)) {
    close();
    parser_ = resp::ReplyParser();
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(port));
    if (fd_ < 0 || ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr) != 1) return fail("bad address " + ip);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      if (errno != EINPROGRESS) return fail(std::strerror(errno));
      if (!wait_fd(POLLOUT, timeout)) return fail("connect timed out");
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) return fail(std::strerror(err));
    }
    error_.clear();
    return true;
  }
  bool connected() const { return fd_ >= 0; }
  /// Why the last connect or I/O failed.
  const std::string& error() const { return error_; }
  int fd() const { return fd_; }

  /// Sends raw bytes (a command, a pipeline, garbage). False if the connection failed.
  bool send(std::string_view bytes, milliseconds timeout = scaled(5000)) {
    const auto deadline = Clock::now() + timeout;
    while (!bytes.empty()) {
      if (fd_ < 0) return false;
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n > 0) {
        bytes.remove_prefix(static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
        if (left.count() <= 0 || !wait_fd(POLLOUT, left)) return fail("send timed out");
        continue;
      }
      return fail(std::string("send: ") + std::strerror(errno));
    }
    return true;
  }
  bool send_command(const std::vector<std::string>& args) {
    std::string bytes;
    resp::write_command(bytes, args);
    return send(bytes);
  }

  /// The next reply, or an IOERR value if none comes within `timeout`.
  resp::Value read(milliseconds timeout = scaled(10000)) {
    resp::Value v;
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      resp::Status st = parser_.next(v);
      if (st == resp::Status::Ok) return v;
      if (st == resp::Status::Error) return io_error("unparsable reply: " + parser_.error());
      if (fd_ < 0) return io_error(error_.empty() ? "not connected" : error_);
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0 || !wait_fd(POLLIN, left)) return io_error("no reply within the deadline");
      char buf[65536];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        parser_.feed(buf, static_cast<std::size_t>(n));
      } else if (n == 0) {
        fail("connection closed by the server");
      } else if (errno != EINTR && errno != EAGAIN) {
        fail(std::string("recv: ") + std::strerror(errno));
      }
    }
  }

  /// Sends one command and reads its reply.
  resp::Value call(const std::vector<std::string>& args, milliseconds timeout = scaled(10000)) {
    if (!send_command(args)) return io_error(error_);
    return read(timeout);
  }

  /// Reads (and drops) until the server closes the connection: true if it did in time.
  bool wait_closed(milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (fd_ >= 0) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0 || !wait_fd(POLLIN, left)) return false;
      char buf[65536];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) close();
    }
    return true;
  }

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  bool fail(const std::string& why) {
    error_ = why;
    close();
    return false;
  }
  static resp::Value io_error(const std::string& why) { return resp::Value::error("IOERR " + why); }
  bool wait_fd(short events, milliseconds timeout) {
    pollfd p{fd_, events, 0};
    int r;
    do {
      r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (r < 0 && errno == EINTR);
    return r > 0;
  }
  int fd_ = -1;
  resp::ReplyParser parser_;
  std::string error_;
};

/// Starts with `prefix` (an error's code word, usually).
inline bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

/// A TCP port on 127.0.0.1 that nothing listens on just now (the kernel's pick); 0 if none.
inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0;
  ::close(fd);
  return ok ? ntohs(sa.sin_port) : 0;
}

/// A real redis-server on 127.0.0.1 at a free port, without persistence, for the tests that
/// send the same commands to it and to a node and compare the replies ([redis]). Killed with
/// the object. Check installed() first: without redis-server such a test warns and skips.
class RedisServer {
 public:
  static bool installed() { return !find_program("redis-server").empty(); }
  /// `options`: more redis-server options ("--requirepass", "x"). Waits until it accepts
  /// connections; port() is 0 when it did not.
  RedisServer(const TempDir& dir, const std::vector<std::string>& options = {}) : port_(free_loopback_port()) {
    std::vector<std::string> argv{"redis-server", "--bind", "127.0.0.1", "--port", std::to_string(port_),
                                  "--save", "", "--appendonly", "no", "--dir", dir.path()};
    argv.insert(argv.end(), options.begin(), options.end());
    process_ = std::make_unique<Process>("redis-server", argv, dir);
    if (!eventually(scaled(10000), [&] { return Client("127.0.0.1", port_, scaled(1000)).connected(); })) port_ = 0;
  }
  int port() const { return port_; }

 private:
  int port_;
  std::unique_ptr<Process> process_;
};

}  // namespace proc
