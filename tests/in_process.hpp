// Helpers for tests that run raft::Node objects inside the test process, on loopback: time
// scaled by RAFT_TIME_SCALE, polling with deadlines, per-node log capture, and a cluster of
// nodes with a static peer map. The same as test_runtime.cpp's own helpers (which predate this
// header), for the test files written since. Deadlines, waiting and replies as text come from
// tests/support.hpp.
#pragma once

#include <catch2/catch.hpp>

#include "raft.hpp"
#include "net_slot.hpp"
#include "support.hpp"
#include "temp_dir.hpp"

#include <chrono>
#include <climits>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace in_process {

using test_support::TempDir;

using test_support::eventually;
using test_support::holds_for;
using test_support::info_field;
using test_support::is_ok;
using test_support::long_wait;
using test_support::read_file;
using test_support::ready_within;
using test_support::scaled;
using test_support::show;
using test_support::stored;
using test_support::time_scale;
using test_support::typed;

// ---- logs -----------------------------------------------------------------------------------

/// One node's log lines, written by the node's threads and read by the test.
class LogLines {
 public:
  void add(const std::string& line) {
    std::lock_guard<std::mutex> lock(mu_);
    lines_.push_back(line);
  }
  bool contains(const std::string& text) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& l : lines_)
      if (l.find(text) != std::string::npos) return true;
    return false;
  }
  /// The first line containing `text`, or "".
  std::string line_with(const std::string& text) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& l : lines_)
      if (l.find(text) != std::string::npos) return l;
    return "";
  }
  std::string text() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string out;
    for (const auto& l : lines_) out += l + "\n";
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> lines_;
};

// ---- state ----------------------------------------------------------------------------------

/// A copy of a node's replicated data (keys and sessions).
inline raft::Store snapshot_of_store(const raft::Node& n) {
  raft::Store copy;
  n.read([&](const raft::Store& s) { copy = s; });
  return copy;
}

// ---- nodes ----------------------------------------------------------------------------------

/// 127.<10 + this process's slot>.<test>.<node>: unique to the test and to this run.
/// (test_runtime.cpp numbers its tests below 100; files using this header, from 100 up.)
inline std::string ip(int test, int node) {
  return "127." + std::to_string(10 + test_support::address_slot()) + "." + std::to_string(test) + "." +
         std::to_string(node);
}
inline std::string address(int test, int node) { return ip(test, node) + ":" + std::to_string(7000 + 10 * node); }

inline raft::Config node_config(const std::string& id, const std::string& addr) {
  raft::Config c;
  c.id = id;
  c.address = addr;
  return c;
}

/// A node with its own data directory (unless the config names one) and log capture.
class TestNode {
 public:
  explicit TestNode(raft::Config config, raft::testing::Hooks hooks = {}) : logs_(std::make_shared<LogLines>()) {
    config.time_scale = time_scale();
    if (config.data_dir.empty()) config.data_dir = dir_.file("data");
    std::shared_ptr<LogLines> logs = logs_;
    config.log_sink = [logs](raft::LogLevel, const std::string& line) { logs->add(line); };
    node_ = std::make_unique<raft::Node>(std::move(config), std::move(hooks));
  }
  ~TestNode() { node_.reset(); }
  TestNode(const TestNode&) = delete;
  TestNode& operator=(const TestNode&) = delete;

  raft::Node& operator*() { return *node_; }
  raft::Node* operator->() { return node_.get(); }
  raft::Node& node() { return *node_; }
  const LogLines& logs() const { return *logs_; }

 private:
  TempDir dir_{"in-process"};
  std::shared_ptr<LogLines> logs_;
  std::unique_ptr<raft::Node> node_;
};

/// n voters "1".."n" with a static peer map at address(test, i).
class Cluster {
 public:
  /// `hooks`: each node's test hooks, from its configuration.
  Cluster(int test, int size, const std::function<void(raft::Config&)>& adjust = {},
          const std::function<raft::testing::Hooks(const raft::Config&)>& hooks = {}) {
    for (int i = 1; i <= size; ++i) {
      raft::Config c = node_config(std::to_string(i), address(test, i));
      for (int j = 1; j <= size; ++j)
        if (j != i) c.peers[std::to_string(j)] = address(test, j);
      if (adjust) adjust(c);
      raft::testing::Hooks h = hooks ? hooks(c) : raft::testing::Hooks{};
      nodes_.push_back(std::make_unique<TestNode>(std::move(c), std::move(h)));
    }
  }
  ~Cluster() {
    // Stop them together: one at a time, each leader would hand over to the next.
    std::vector<std::thread> stoppers;
    for (auto& n : nodes_) stoppers.emplace_back([&n] { n->node().stop(); });
    for (auto& t : stoppers) t.join();
  }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  int size() const { return static_cast<int>(nodes_.size()); }
  raft::Node& operator[](int i) { return nodes_.at(static_cast<std::size_t>(i - 1))->node(); }
  TestNode& test_node(int i) { return *nodes_.at(static_cast<std::size_t>(i - 1)); }
  void start() {
    for (auto& n : nodes_) n->node().start();
  }

  /// Waits until exactly one node leads and every other follows it in the same term; returns
  /// its number, or 0 (with the logs as a message) on timeout.
  int wait_for_leader(int ms = 20000) {
    int found = 0;
    bool ok = eventually(scaled(ms), [&] {
      found = current_leader();
      return found != 0;
    });
    if (!ok) UNSCOPED_INFO("no single leader; logs:\n" << all_logs());
    return ok ? found : 0;
  }
  int current_leader() {
    int leader = 0;
    for (int i = 1; i <= size(); ++i)
      if ((*this)[i].state() == 'l') {
        if (leader != 0) return 0;
        leader = i;
      }
    if (leader == 0) return 0;
    const std::string id = (*this)[leader].id();
    const std::uint64_t term = (*this)[leader].term();
    for (int i = 1; i <= size(); ++i)
      if (i != leader && ((*this)[i].leader() != id || (*this)[i].term() != term)) return 0;
    return leader;
  }
  /// A node other than `a` and `b`.
  int other_than(int a, int b = 0) const {
    for (int i = 1; i <= size(); ++i)
      if (i != a && i != b) return i;
    return 0;
  }
  std::string all_logs() const {
    std::string s;
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      s += "---- node " + std::to_string(i + 1) + "\n" + nodes_[i]->logs().text();
    return s;
  }

 private:
  std::vector<std::unique_ptr<TestNode>> nodes_;
};

}  // namespace in_process
