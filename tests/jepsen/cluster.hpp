// The nodes of the Jepsen-style tests: real processes of the node program (build/examples/cas,
// or a mutant build of it), each inside its network namespace (tests/jepsen/network.hpp) with
// the fault shim preloaded (tests/jepsen/faults.hpp), started with tests/proc.hpp so that none
// outlives the test. Every incarnation's log is kept (n3.err, n3.err.2, ...).
//
//   Cluster c(dir, net, program, 5);
//   c.form();                         // n1 founds, n2..n5 join: 5 voters
//   c.node(2).kill(/*power_loss=*/true);
//   c.node(2).start();                // the same command line, its data directory as it was
#pragma once

#include <signal.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../proc.hpp"
#include "faults.hpp"
#include "network.hpp"

namespace jepsen {

constexpr int kClientPort = 7000;

/// Whether a reply is an INFO text; the field `name` of it, "" when absent.
inline std::string info_text(const resp::Value& v) {
  return v.type == resp::Type::BulkString || v.type == resp::Type::Verbatim ? std::string(v.text()) : "";
}

class Node {
 public:
  /// Its files go into `run_dir`: data/nI (the data directory), faults/nI (the shim's
  /// journal and control page), nI.err (the log; nI.err.2 after a restart, ...).
  Node(int index, const net::Network& net, const proc::TempDir& run_dir, const std::string& program,
       const std::string& shim)
      : index_(index),
        id_("n" + std::to_string(index)),
        ip_(net.ip(index)),
        ns_(net.ns(index)),
        data_dir_(run_dir / ("data/" + id_)),
        program_(std::filesystem::absolute(program).string()),  // it runs in the run directory
        shim_(shim),
        net_(net),
        run_dir_(run_dir),
        faults_(run_dir / ("faults/" + id_)) {
    std::filesystem::create_directories(run_dir / "data");
  }

  int index() const { return index_; }
  const std::string& id() const { return id_; }
  const std::string& ip() const { return ip_; }
  std::string address() const { return ip_ + ":" + std::to_string(kClientPort); }
  const std::string& data_dir() const { return data_dir_; }
  faults::NodeFaults& faults() { return faults_; }

  /// Starts the node; `join` (-e) is used when its data directory does not exist yet (a node
  /// with a data directory ignores -e anyway: it uses the configuration it persisted).
  void start(const std::vector<std::string>& join = {}) {
    std::lock_guard<std::mutex> lock(mu_);
    process_.reset();
    std::vector<std::string> argv{"ip", "netns", "exec", ns_, "env"};
    for (const std::string& e : faults_.environment(shim_, data_dir_)) argv.push_back(e);
    // Not a loopback address: the nodes need a peer secret (and run the authenticated peers).
    argv.push_back("RAFT_SECRET=jepsen-peer-secret");
    for (const std::string& a : {program_, std::string("-i"), id_, std::string("-a"), address(), std::string("-d"),
                                 data_dir_, std::string("--time-scale"), std::to_string(proc::time_scale()),
                                 // The clients connect from the hub's address, not loopback; the
                                 // namespaces are the test's own network.
                                 std::string("--protected-mode"), std::string("no")})
      argv.push_back(a);
    if (!join.empty()) {
      std::string list;
      for (const std::string& j : join) list += (list.empty() ? "" : ",") + j;
      argv.push_back("-e");
      argv.push_back(list);
    }
    process_ = std::make_unique<proc::Process>(id_, argv, run_dir_);
    paused_ = false;
    ++starts_;
  }

  /// SIGKILL, then either a power cut (what no fsync covered is gone) or a plain crash.
  void kill(bool power_loss) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!process_) return;
    process_->kill();
    process_.reset();
    paused_ = false;
    if (power_loss)
      undone_ += faults_.power_loss(data_dir_);
    else
      faults_.crash();
  }
  /// SIGTERM (a leader hands over first) and the exit, within `timeout`; SIGKILL after it.
  void stop(proc::milliseconds timeout) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!process_) return;
    if (paused_) process_->signal(SIGCONT);
    paused_ = false;
    process_->signal(SIGTERM);
    process_->wait_exit(timeout);
    process_->kill();
    process_.reset();
    faults_.crash();
  }
  /// Deletes the data directory of a node that is not running.
  void wipe() {
    std::lock_guard<std::mutex> lock(mu_);
    if (process_) throw std::logic_error("wipe of a running node " + id_);
    std::error_code ec;
    std::filesystem::remove_all(data_dir_, ec);
    faults_.crash();
  }
  void pause() {
    std::lock_guard<std::mutex> lock(mu_);
    if (process_ && process_->running()) {
      process_->pause(proc::scaled(2000));
      paused_ = true;
    }
  }
  void resume() {
    std::lock_guard<std::mutex> lock(mu_);
    if (process_) process_->resume();
    paused_ = false;
  }

  /// Started (by us) and not killed since. A process that exited on its own still counts
  /// here: see exited_by_itself().
  bool started() const {
    std::lock_guard<std::mutex> lock(mu_);
    return process_ != nullptr;
  }
  bool paused() const {
    std::lock_guard<std::mutex> lock(mu_);
    return paused_;
  }
  /// The exit code of a process that ended without being killed by us, if it did.
  std::optional<int> exited_by_itself() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!process_ || process_->running()) return std::nullopt;
    return process_->wait_exit(proc::milliseconds(0));
  }
  bool has_data() const { return std::filesystem::exists(data_dir_); }
  /// How many changes power cuts have undone in this node's data directory so far.
  std::size_t changes_undone() const { return undone_; }

  /// One command on a new connection from the hub namespace.
  resp::Value call(const std::vector<std::string>& args, proc::milliseconds timeout = proc::scaled(3000)) const {
    proc::Client c;
    {
      net::InNamespace in(net_.hub_fd());
      if (!c.connect(ip_, kClientPort, std::min(timeout, proc::scaled(1000))))
        return resp::Value::error("IOERR cannot connect: " + c.error());
    }
    return c.call(args, timeout);
  }
  std::string info(proc::milliseconds timeout = proc::scaled(1000)) const {
    return info_text(call({"INFO", "raft"}, timeout));
  }

 private:
  const int index_;
  const std::string id_, ip_, ns_, data_dir_, program_, shim_;
  const net::Network& net_;
  mutable std::mutex mu_;
  std::unique_ptr<proc::Process> process_;
  bool paused_ = false;
  int starts_ = 0;
  std::size_t undone_ = 0;
  const proc::TempDir& run_dir_;
  faults::NodeFaults faults_;
};

}  // namespace jepsen
