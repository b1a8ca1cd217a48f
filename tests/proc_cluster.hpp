// Clusters of real run_raft processes for the startup, crash and upgrade tests
// (tests/test_founding.cpp, tests/test_crash.cpp, tests/test_upgrade.cpp): nodes started
// with the article's command lines, their leader found by INFO, and clients that tell an
// acknowledged write from one whose outcome is unknown.
//
// The same shape as the helpers of tests/test_process.cpp, which keeps its own copy for now;
// this one also takes the program's path (the upgrade test runs an old build) and a node's
// command line stays the same across restarts, as an operator's would.
#pragma once

#include <catch2/catch.hpp>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "net_slot.hpp"
#include "proc.hpp"
#include "resp.hpp"

namespace proc_cluster {

using proc::Client;
using proc::eventually;
using proc::Process;
using proc::scaled;
using proc::show;
using proc::starts_with;
using proc::TempDir;
using std::chrono::milliseconds;

constexpr int kPort = 7000;

// Test case `n` of these files uses 127.(200 + n).y.z, y from this process's address slot
// (tests/net_slot.hpp). test_process.cpp uses 127.150-199.y.z and test_runtime.cpp 127.10-109.
struct Net {
  int x, y;
  explicit Net(int test) : x(200 + test), y(test_support::address_slot() + 1) {}
  std::string ip(int z) const {
    return "127." + std::to_string(x) + "." + std::to_string(y) + "." + std::to_string(z);
  }
};

// Errors that say "try again": no leader yet, a write of unknown outcome, the node is down
// (IOERR is the test client's own code for a failed connection).
inline bool is_retryable(const resp::Value& v) {
  if (!v.is_error()) return false;
  for (const char* code : {"TRYAGAIN", "TIMEOUT", "CLUSTERDOWN", "IOERR", "MOVED", "MISCONF"})
    if (starts_with(v.str, code)) return true;
  return false;
}

// One node: `program` started with -i ID -a IP:7000 -d DIR/dID --time-scale S and the extra
// options it was first started with, every time (an operator's command line).
class Node {
 public:
  Node(const TempDir& dir, std::string program, std::string id, std::string ip)
      : id(std::move(id)), ip(std::move(ip)), data_dir(dir / ("d" + this->id)), program_(std::move(program)), dir_(dir) {}

  std::string address() const { return ip + ":" + std::to_string(kPort); }
  std::vector<std::string> command_line() const {
    std::vector<std::string> argv{program_, "-i", id, "-a", address(), "-d", data_dir,
                                  "--time-scale", std::to_string(proc::time_scale())};
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    return argv;
  }

  // Starts the node (killing a previous instance) with `extra` options (-e ...).
  void start(std::vector<std::string> extra = {}) {
    extra_ = std::move(extra);
    restart();
  }
  // Starts it again with the command line it was last started with.
  void restart() {
    process_.reset();  // the previous instance, if any, is killed first
    process_ = std::make_unique<Process>("node" + id, command_line(), dir_);
  }
  // The same, with another program (the upgrade test).
  void restart_with(std::string program) {
    program_ = std::move(program);
    restart();
  }
  Process& process() { return *process_; }
  bool running() const { return process_ && process_->running(); }
  void kill() {
    if (process_) process_->kill();
  }
  pid_t pid() const { return process_ ? process_->pid() : -1; }

  resp::Value call(const std::vector<std::string>& args, milliseconds timeout = scaled(10000)) const {
    Client c(ip, kPort, scaled(2000));
    return c.call(args, timeout);
  }
  Client connect() const { return Client(ip, kPort); }
  std::string info(milliseconds timeout = scaled(2000)) const {
    resp::Value v = call({"INFO", "raft"}, timeout);
    return v.type == resp::Type::BulkString || v.type == resp::Type::Verbatim ? std::string(v.text()) : "";
  }
  std::string field(const std::string& name) const { return proc::info_field(info(), name); }
  std::string log() const { return process_ ? process_->err() : ""; }

  const std::string id, ip, data_dir;

 private:
  std::string program_;
  std::vector<std::string> extra_;
  const TempDir& dir_;
  std::unique_ptr<Process> process_;
};

// The nodes of one test case; prints their logs' last lines when the test fails.
struct Cluster {
  Net net;
  TempDir dir;
  std::vector<std::unique_ptr<Node>> nodes;

  Cluster(int test, const std::string& tag) : net(test), dir(tag) {}
  ~Cluster() {
    if (std::uncaught_exceptions() > 0)
      std::fprintf(stderr, "---- output of the processes (last lines)\n%s----\n", proc::output_tails(dir.path()).c_str());
    const std::string reports = proc::sanitizer_reports(dir.path());
    if (!reports.empty()) std::fprintf(stderr, "sanitizer reports in the process logs:\n%s", reports.c_str());
  }
  Node& add(const std::string& program = proc::example("run_raft")) {
    const int z = static_cast<int>(nodes.size()) + 1;
    nodes.push_back(std::make_unique<Node>(dir, program, std::to_string(z), net.ip(z)));
    return *nodes.back();
  }
  Node& operator[](std::size_t i) { return *nodes.at(i); }
  std::vector<Node*> all() {
    std::vector<Node*> v;
    for (auto& n : nodes) v.push_back(n.get());
    return v;
  }
  std::vector<Node*> all_but(const Node& skip) {
    std::vector<Node*> v;
    for (auto& n : nodes)
      if (n.get() != &skip) v.push_back(n.get());
    return v;
  }
};

// The leader among `nodes` once they agree: exactly one reports raft_role:leader, every other
// reports follower of it, and each reports `voters` voters (0: any). Null on timeout.
inline Node* wait_agreed_leader(const std::vector<Node*>& nodes, std::size_t voters, milliseconds timeout) {
  Node* leader = nullptr;
  bool ok = eventually(timeout, [&] {
    leader = nullptr;
    std::vector<std::string> infos;
    for (Node* n : nodes) {
      infos.push_back(n->info(scaled(1000)));
      const std::string& info = infos.back();
      if (voters != 0 && proc::info_field(info, "raft_voters") != std::to_string(voters)) return false;
      if (proc::info_field(info, "raft_role") == "leader") {
        if (leader) return false;
        leader = n;
      }
    }
    if (!leader) return false;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (nodes[i] == leader) continue;
      if (proc::info_field(infos[i], "raft_role") != "follower" ||
          proc::info_field(infos[i], "raft_leader_id") != leader->id)
        return false;
    }
    return true;
  });
  return ok ? leader : nullptr;
}

// The article's walkthrough: node 1 founds (run_raft -i 1 -a A1), node 2 joins through node 1
// (-e A1), node 3 through node 1 and 2 (-e A1,A2). Returns the leader once all agree on 3 voters.
inline Node* form_three(Cluster& c, const std::string& program = proc::example("run_raft")) {
  for (int i = 0; i < 3; ++i) c.add(program);
  c[0].start();
  REQUIRE(c[0].process().wait_for_err("leading term", scaled(10000)));
  c[1].start({"-e", c[0].address()});
  c[2].start({"-e", c[0].address() + "," + c[1].address()});
  Node* leader = wait_agreed_leader(c.all(), 3, scaled(20000));
  REQUIRE(leader != nullptr);
  return leader;
}

// Sends `args` to the nodes in turn until one answers other than with a retryable error;
// returns that reply (or the last retryable one at the deadline).
inline resp::Value call_until_answered(const std::vector<Node*>& nodes, const std::vector<std::string>& args,
                                       milliseconds timeout) {
  resp::Value last;
  std::size_t i = 0;
  eventually(timeout, [&] {
    last = nodes[i++ % nodes.size()]->call(args, scaled(5000));
    return !is_retryable(last);
  });
  return last;
}

}  // namespace proc_cluster
