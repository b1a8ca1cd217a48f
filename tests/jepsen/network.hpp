// The network of the Jepsen-style tests: each node in a network namespace of its own, all
// joined by veth pairs to a Linux bridge in a hub namespace, where the test's clients live.
// Faults are nftables rules inside the node namespaces; nothing is changed in the host's own
// namespace, and every namespace is deleted by the destructor (and, at start, those a killed
// earlier run of the same address slot left behind).
//
//   hub namespace  raftjepsen<S>-hub: bridge br0, 10.211.<S>.1/24 (the clients' address)
//   node i         raftjepsen<S>-n<i>: eth0 10.211.<S>.<10+i>/24, peer of hub's v<i>
//
// S is this process's address slot (tests/net_slot.hpp), so that test processes running at
// the same time never share a namespace or an address.
//
// Faults (each a set of rules in table `inet jepsen` of a node's namespace, replaced at once):
//   cut(a, b)    a's packets to b are dropped as they leave a (one way: b still reaches a at
//                the IP level; TCP needs both ways, so new connections fail either way, and
//                established ones stall in one direction)
//   loss(a, p)   p percent of a's packets, in and out, are dropped at random (nft numgen).
//                This is the only "slow network" there is: the kernel here has no sch_netem,
//                so `tc netem` delays cannot be used; TCP turns loss into retransmission
//                delays of 200 ms and more.
// The clients' own traffic is never cut, only subject to loss.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../net_slot.hpp"

namespace jepsen::net {

// ---- running a command ----

struct CommandResult {
  int code = -1;    // exit code, 128 + signal
  std::string out;  // stdout and stderr together
};

/// Runs argv[0] (a path or a name on PATH) with `input` on stdin, waits for it.
inline CommandResult run_command(const std::vector<std::string>& argv, const std::string& input = "") {
  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  std::vector<char*> args;
  std::vector<std::string> copy = argv;
  for (auto& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(out_pipe[1], 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (pid < 0) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  }
  // Small inputs (rule sets) fit in the pipe; the child reads them before it writes much.
  std::size_t sent = 0;
  while (sent < input.size()) {
    const ssize_t n = ::write(in_pipe[1], input.data() + sent, input.size() - sent);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  ::close(in_pipe[1]);
  CommandResult r;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(out_pipe[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out_pipe[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline std::string join_words(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

/// Runs a command that must succeed; throws with its output when it does not.
inline void must(const std::vector<std::string>& argv, const std::string& input = "") {
  const CommandResult r = run_command(argv, input);
  if (r.code != 0)
    throw std::runtime_error("'" + join_words(argv) + "' failed (exit " + std::to_string(r.code) + "): " + r.out);
}

// ---- entering a namespace ----

/// Moves the calling thread into a network namespace (sockets it creates belong there) and
/// back when it goes out of scope. Only this thread moves.
class InNamespace {
 public:
  explicit InNamespace(int ns_fd) {
    home_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home_ < 0 || ::setns(ns_fd, CLONE_NEWNET) != 0)
      throw std::runtime_error(std::string("setns: ") + std::strerror(errno));
  }
  ~InNamespace() {
    if (::setns(home_, CLONE_NEWNET) != 0) std::abort();  // a thread left in the wrong namespace
    ::close(home_);
  }
  InNamespace(const InNamespace&) = delete;
  InNamespace& operator=(const InNamespace&) = delete;

 private:
  int home_ = -1;
};

// ---- the network ----

class Network {
 public:
  /// Creates the hub and `nodes` node namespaces (deleting what a killed earlier run of this
  /// slot left). Throws when the machine does not allow it (not root, no `ip` or `nft`).
  explicit Network(int nodes) : slot_(test_support::address_slot()), nodes_(nodes) {
    prefix_ = "raftjepsen" + std::to_string(slot_) + "-";
    subnet_ = "10.211." + std::to_string(slot_) + ".";
    delete_leftovers();
    try {
      create();
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~Network() { destroy(); }
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;

  int nodes() const { return nodes_; }
  /// Node i is 1-based.
  std::string ns(int i) const { return prefix_ + "n" + std::to_string(i); }
  std::string ip(int i) const { return subnet_ + std::to_string(10 + i); }
  std::string hub_ns() const { return prefix_ + "hub"; }
  std::string client_ip() const { return subnet_ + "1"; }
  /// An fd of the hub namespace, for InNamespace.
  int hub_fd() const { return hub_fd_; }

  /// a's packets to b are dropped (one way).
  void cut(int a, int b) {
    rules_[a].cut_to.insert(b);
    apply(a);
  }
  void uncut(int a, int b) {
    rules_[a].cut_to.erase(b);
    apply(a);
  }
  /// Percent of a's packets dropped at random, in and out (0: none).
  void set_loss(int a, int percent) {
    rules_[a].loss = percent;
    apply(a);
  }
  /// Sets every cut and loss at once (what the nemesis computed from its active faults).
  void set_all(const std::set<std::pair<int, int>>& cuts, const std::map<int, int>& loss) {
    for (int i = 1; i <= nodes_; ++i) {
      Rules want;
      for (const auto& [a, b] : cuts)
        if (a == i) want.cut_to.insert(b);
      if (auto it = loss.find(i); it != loss.end()) want.loss = it->second;
      if (want.cut_to != rules_[i].cut_to || want.loss != rules_[i].loss) {
        rules_[i] = want;
        apply(i);
      }
    }
  }
  /// No cut, no loss.
  void heal() { set_all({}, {}); }

  /// The namespaces of this slot that exist (for the test that checks the cleanup).
  static std::vector<std::string> existing(const std::string& prefix) {
    std::vector<std::string> found;
    std::istringstream lines(run_command({"ip", "netns", "list"}).out);
    std::string line;
    while (std::getline(lines, line)) {
      const std::string name = line.substr(0, line.find(' '));
      if (name.compare(0, prefix.size(), prefix) == 0) found.push_back(name);
    }
    return found;
  }
  const std::string& prefix() const { return prefix_; }

 private:
  struct Rules {
    std::set<int> cut_to;
    int loss = 0;
  };

  void create() {
    const std::string hub = hub_ns();
    add_namespace(hub);
    must({"ip", "-n", hub, "link", "set", "lo", "up"});
    must({"ip", "-n", hub, "link", "add", "br0", "type", "bridge"});
    must({"ip", "-n", hub, "addr", "add", client_ip() + "/24", "dev", "br0"});
    must({"ip", "-n", hub, "link", "set", "br0", "up"});
    for (int i = 1; i <= nodes_; ++i) {
      const std::string n = ns(i), v = "v" + std::to_string(i);
      add_namespace(n);
      must({"ip", "-n", hub, "link", "add", v, "type", "veth", "peer", "name", "eth0", "netns", n});
      must({"ip", "-n", hub, "link", "set", v, "master", "br0"});
      must({"ip", "-n", hub, "link", "set", v, "up"});
      must({"ip", "-n", n, "link", "set", "lo", "up"});
      must({"ip", "-n", n, "addr", "add", ip(i) + "/24", "dev", "eth0"});
      must({"ip", "-n", n, "link", "set", "eth0", "up"});
      rules_[i] = Rules{};
      apply(i);
    }
    hub_fd_ = ::open(("/run/netns/" + hub).c_str(), O_RDONLY | O_CLOEXEC);
    if (hub_fd_ < 0) throw std::runtime_error("cannot open /run/netns/" + hub + ": " + std::strerror(errno));
  }

  void add_namespace(const std::string& name) {
    must({"ip", "netns", "add", name});
    created_.push_back(name);
  }

  // The node's whole table, replaced in one nft transaction.
  void apply(int i) {
    const Rules& r = rules_[i];
    std::string rules = "table inet jepsen\ndelete table inet jepsen\ntable inet jepsen {\n";
    rules += "  chain output {\n    type filter hook output priority 0; policy accept;\n";
    for (int b : r.cut_to) rules += "    ip daddr " + ip(b) + " drop\n";
    // numgen random mod 100 is 0..99: "< 100" would be out of its range.
    const std::string lose = r.loss >= 100 ? "" : "numgen random mod 100 < " + std::to_string(r.loss) + " ";
    if (r.loss > 0) rules += "    oifname \"eth0\" " + lose + "drop\n";
    rules += "  }\n  chain input {\n    type filter hook input priority 0; policy accept;\n";
    if (r.loss > 0) rules += "    iifname \"eth0\" " + lose + "drop\n";
    rules += "  }\n}\n";
    must({"ip", "netns", "exec", ns(i), "nft", "-f", "-"}, rules);
  }

  void delete_leftovers() {
    for (const std::string& name : existing(prefix_)) run_command({"ip", "netns", "delete", name});
  }

  void destroy() {
    if (hub_fd_ >= 0) ::close(hub_fd_);
    hub_fd_ = -1;
    // Deleting a namespace destroys its end of each veth, and with it the other end.
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) run_command({"ip", "netns", "delete", *it});
    created_.clear();
  }

  int slot_;
  int nodes_;
  std::string prefix_, subnet_;
  std::vector<std::string> created_;
  std::map<int, Rules> rules_;
  int hub_fd_ = -1;
};

}  // namespace jepsen::net
