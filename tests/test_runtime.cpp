// Section 5, the runtime in process: several raft::Node objects in this test process on
// loopback, driven only through the public API (raft::Node, raft::Config, parse_args).
//
// Every test uses its own addresses 127.<slot>.<test>.<node> (ports 7010, 7020, 7030 ...; the
// slot is this process's, tests/net_slot.hpp, so parallel test runs never collide), a fresh
// data directory per node, and a log sink per node so that the test can wait for log lines
// and the output stays quiet. Timeouts scale with RAFT_TIME_SCALE (the Makefile sets it for
// the sanitizer builds). Conditions are polled against deadlines; nothing sleeps in place of
// a condition.
#include <catch2/catch.hpp>

#include "raft.hpp"
#include "net_slot.hpp"
#include "support.hpp"
#include "temp_dir.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::EndsWith;
using Catch::Matchers::StartsWith;
using namespace std::chrono_literals;

namespace {

// Deadlines, waiting, files, INFO fields, a node's data and replies as text: tests/support.hpp
// (and TempDir, tests/temp_dir.hpp).
using namespace test_support;

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// The longest election timeout of a node with the default configuration (a random time
/// between the minimum and twice it), unscaled.
int max_election_timeout_ms() { return 2 * raft::Config().election_timeout_ms; }

// ---- logs -----------------------------------------------------------------------------------

/// One node's log lines, written by the node's threads and read by the test.
class LogLines {
 public:
  void add(const std::string& line) {
    std::lock_guard<std::mutex> lock(mu_);
    lines_.push_back(line);
  }
  bool contains(const std::string& text) const { return count(text) > 0; }
  std::size_t count(const std::string& text) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t n = 0;
    for (const auto& l : lines_) n += l.find(text) != std::string::npos ? 1 : 0;
    return n;
  }
  /// Index of the first line containing `text` at or after `from`; -1 if none.
  long find(const std::string& text, long from = 0) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t i = static_cast<std::size_t>(from); i < lines_.size(); ++i)
      if (lines_[i].find(text) != std::string::npos) return static_cast<long>(i);
    return -1;
  }
  std::string line(long i) const {
    std::lock_guard<std::mutex> lock(mu_);
    return i >= 0 && static_cast<std::size_t>(i) < lines_.size() ? lines_[static_cast<std::size_t>(i)] : "";
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

/// Redirects this process's standard error to a file while it lives (the numeric
/// constructors of raft::Node log there). A sanitizer report written meanwhile is copied back
/// to the real standard error.
class StderrToFile {
 public:
  explicit StderrToFile(std::string path) : path_(std::move(path)) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (saved_ < 0 || fd < 0) throw std::runtime_error("cannot redirect stderr");
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~StderrToFile() {
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    std::string t = read_file(path_);
    if (t.find("Sanitizer") != std::string::npos || t.find("runtime error") != std::string::npos)
      std::fwrite(t.data(), 1, t.size(), stderr);
  }
  StderrToFile(const StderrToFile&) = delete;
  StderrToFile& operator=(const StderrToFile&) = delete;
  std::string text() const { return read_file(path_); }

 private:
  std::string path_;
  int saved_ = -1;
};

/// Runs the test inside a directory while it lives (relative data directories land there).
class ScopedCwd {
 public:
  explicit ScopedCwd(const std::string& dir) : saved_(fs::current_path()) { fs::current_path(dir); }
  ~ScopedCwd() {
    std::error_code ec;
    fs::current_path(saved_, ec);
  }
  ScopedCwd(const ScopedCwd&) = delete;
  ScopedCwd& operator=(const ScopedCwd&) = delete;

 private:
  fs::path saved_;
};

// ---- state ----------------------------------------------------------------------------------

std::size_t stored_keys(const raft::Node& n) {
  std::size_t k = 0;
  n.read([&](const raft::Store& s) { k = s.size(); });
  return k;
}

/// The members of a node's configuration, from INFO raft: id -> the member's line
/// ("id=2,address=...,role=voter,match=...").
std::map<std::string, std::string> members(const raft::Node& n) {
  std::map<std::string, std::string> out;
  std::istringstream in(n.info());
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("raft_member", 0) != 0 || line.rfind("raft_members:", 0) == 0) continue;
    auto colon = line.find(':');
    std::string v = line.substr(colon + 1);
    auto comma = v.find(',');
    if (v.rfind("id=", 0) == 0) out[v.substr(3, comma - 3)] = v;
  }
  return out;
}

std::string member_role(const raft::Node& n, const std::string& id) {
  auto m = members(n);
  auto it = m.find(id);
  if (it == m.end()) return "absent";
  return it->second.find("role=voter") != std::string::npos ? "voter" : "learner";
}

/// The leader's view of a member's match index (INFO raft, leader only); -1 if not shown.
long long member_match(const raft::Node& leader, const std::string& id) {
  auto m = members(leader);
  auto it = m.find(id);
  if (it == m.end()) return -1;
  auto p = it->second.find("match=");
  if (p == std::string::npos) return -1;
  return std::atoll(it->second.c_str() + p + 6);
}

// ---- nodes ----------------------------------------------------------------------------------

/// 127.<10 + this process's slot>.<test>.<node>: unique to the test and to this run.
std::string ip(int test, int node) {
  return "127." + std::to_string(10 + test_support::address_slot()) + "." + std::to_string(test) + "." +
         std::to_string(node);
}
std::string address(int test, int node) { return ip(test, node) + ":" + std::to_string(7000 + 10 * node); }

/// A node with its own data directory and log capture; the node is destroyed first.
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
  TempDir dir_;
  std::shared_ptr<LogLines> logs_;
  std::unique_ptr<raft::Node> node_;
};

raft::Config node_config(const std::string& id, const std::string& addr) {
  raft::Config c;
  c.id = id;
  c.address = addr;
  return c;
}

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

  /// Waits until exactly one running node leads and every other running node follows it in
  /// the same term; returns its number, or 0 (with the logs as a message) on timeout.
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
      if (running(i) && (*this)[i].state() == 'l') {
        if (leader != 0) return 0;
        leader = i;
      }
    if (leader == 0) return 0;
    const std::string id = (*this)[leader].id();
    const std::uint64_t term = (*this)[leader].term();
    for (int i = 1; i <= size(); ++i)
      if (i != leader && running(i) && ((*this)[i].leader() != id || (*this)[i].term() != term)) return 0;
    return leader;
  }
  bool running(int i) { return !(*this)[i].stopping(); }
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

/// Retries an administration call while it answers Busy or Transferring (another change in
/// progress, leader not ready yet, a handover under way): those change nothing. Returns the
/// last result.
raft::AdminResult admin_until_done(const std::function<raft::AdminResult()>& call, int ms = 15000) {
  raft::AdminResult r;
  eventually(scaled(ms), [&] {
    r = call();
    return r.error != raft::AdminResult::Error::Busy && r.error != raft::AdminResult::Error::Transferring;
  });
  return r;
}

/// A connection to a node's client port ("ip:port") that gives up receiving after 5 s
/// (scaled); -1 if it cannot connect.
int connect_client(const std::string& addr) {
  auto colon = addr.rfind(':');
  std::string host = addr.substr(0, colon);
  int port = std::atoi(addr.c_str() + colon + 1);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &sa.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{};
  tv.tv_sec = static_cast<long>(5 * time_scale());
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

/// Connects to a node's client port, sends `bytes` and returns what comes back until `lines`
/// CRLF-terminated lines arrived (or the connection closes, or 5 s pass, scaled).
std::string raw_command(const std::string& addr, const std::string& bytes, int lines = 1) {
  int fd = connect_client(addr);
  if (fd < 0) return "";
  std::string out;
  if (::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())) {
    char buf[4096];
    auto line_count = [&] {
      int n = 0;
      for (std::size_t p = out.find("\r\n"); p != std::string::npos; p = out.find("\r\n", p + 2)) ++n;
      return n;
    };
    while (line_count() < lines) {
      ssize_t r = ::recv(fd, buf, sizeof buf, 0);
      if (r <= 0) break;
      out.append(buf, static_cast<std::size_t>(r));
    }
  }
  ::close(fd);
  return out;
}

/// Sends `commands` in one write on a fresh client connection and returns their replies
/// (as typed() prints them) in the order they arrive; fewer if the connection fails or stays silent for
/// 5 s (scaled).
std::vector<std::string> pipelined(const std::string& addr, const std::vector<std::vector<std::string>>& commands) {
  std::vector<std::string> replies;
  int fd = connect_client(addr);
  if (fd < 0) return replies;
  std::string bytes;
  for (const auto& c : commands) resp::write_command(bytes, c);
  if (::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())) {
    resp::ReplyParser parser;
    char buf[4096];
    while (replies.size() < commands.size()) {
      raft::Reply r;
      resp::Status st = parser.next(r);
      if (st == resp::Status::Ok) {
        replies.push_back(typed(r));
        continue;
      }
      if (st == resp::Status::Error) break;
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      parser.feed(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return replies;
}

/// An fsync replacement that starts failing with EIO when told to.
class FailingDisk {
 public:
  /// The `n`-th call from now on and every later one fail (n <= 0: the next one).
  void fail_after(long n) {
    countdown_ = n;
    if (n <= 0) failing_ = true;
  }
  std::function<int(int)> hook() {
    return [this](int fd) {
      if (!failing_.load() && countdown_.load() > 0 && --countdown_ == 0) failing_ = true;
      if (failing_.load()) {
        errno = EIO;
        return -1;
      }
      return ::fsync(fd);
    };
  }

 private:
  std::atomic<bool> failing_{false};
  std::atomic<long> countdown_{0};
};

}  // namespace

// =============================================================================================
// 1. The article's first snippet
// =============================================================================================

TEST_CASE("three nodes built from a static peer map with numeric ids elect one leader and serve writes from a follower",
          "[runtime]") {
  // The snippet's constructors take no Config: the default data directories (raft-<id>-<port>)
  // go to a temporary working directory and the default log (standard error) to a file.
  TempDir dir;
  ScopedCwd cwd(dir.path());
  StderrToFile err(dir.file("stderr.txt"));
  const std::string a1 = address(1, 1), a2 = address(1, 2), a3 = address(1, 3);
  {
    raft::Node n1(1, a1, {{2, a2}, {3, a3}});
    raft::Node n2(2, a2, {{1, a1}, {3, a3}});
    raft::Node n3(3, a3, {{1, a1}, {2, a2}});
    raft::Node* nodes[] = {&n1, &n2, &n3};
    for (raft::Node* n : nodes) n->start();
    CHECK(n1.id() == "1");
    CHECK(n3.address() == a3);

    raft::Node* leader = nullptr;
    bool one_leader = eventually(long_wait(), [&] {
      int leaders = 0;
      for (raft::Node* n : nodes)
        if (n->state() == 'l') {
          ++leaders;
          leader = n;
        }
      if (leaders != 1) return false;
      for (raft::Node* n : nodes)
        if (n->leader() != leader->id() || n->term() != leader->term()) return false;
      return true;
    });
    if (!one_leader) UNSCOPED_INFO(err.text());
    REQUIRE(one_leader);
    raft::Node* follower = leader == &n1 ? &n2 : &n1;
    CHECK(follower->state() == 'f');
    CHECK(follower->leader_address() == leader->address());

    raft::Reply set = follower->execute({"set", "k", "v"});
    INFO(typed(set));
    REQUIRE(is_ok(set));
    for (raft::Node* n : nodes) {
      raft::Reply got = n->execute({"get", "k"});
      INFO("node " << n->id() << ": " << typed(got));
      CHECK(got.type == resp::Type::BulkString);
      CHECK(got.str == "v");
    }
  }
  CHECK(fs::exists(dir.file("raft-1-7010")));
  CHECK(fs::exists(dir.file("raft-3-7030")));
  CHECK_THAT(err.text(), Contains("is a leader"));
}

// =============================================================================================
// 2. The founder
// =============================================================================================

TEST_CASE("a founder leads at once in term 10 and on_leader runs once on the apply thread after the earlier data is applied",
          "[runtime]") {
  struct LeaderCall {
    std::uint64_t term;
    std::thread::id thread;
    std::string seen;
  };
  std::mutex mu;
  std::vector<LeaderCall> calls;
  std::thread::id handler_thread;
  auto setup = [&](raft::Node& n) {
    n.on_leader([&](raft::Node& node, std::uint64_t term) {
      std::string seen = stored(node, "k");
      std::lock_guard<std::mutex> lock(mu);
      calls.push_back(LeaderCall{term, std::this_thread::get_id(), seen});
    });
    n.handler("whoami", [&](raft::Call&) {
      std::lock_guard<std::mutex> lock(mu);
      handler_thread = std::this_thread::get_id();
      return raft::Reply::ok();
    }, "we", 0, 0);
  };
  auto call_count = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return calls.size();
  };
  TempDir data;
  raft::Config config = node_config("1", address(2, 1));
  config.data_dir = data.file("data");

  {
    TestNode founder(config);
    setup(*founder);
    founder->start();
    CHECK(founder->state() == 'l');
    CHECK(founder->role() == raft::Role::Leader);
    CHECK(founder->term() == 10);
    CHECK(founder->leader() == "1");
    REQUIRE(eventually(long_wait(), [&] { return call_count() >= 1; }));
    REQUIRE(is_ok(founder->execute({"set", "k", "v"})));
    REQUIRE(is_ok(founder->execute({"whoami"})));
    founder->stop();
    std::lock_guard<std::mutex> lock(mu);
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].term == 10);
    CHECK(calls[0].thread == handler_thread);  // write handlers run on the apply thread
    CHECK(calls[0].thread != std::this_thread::get_id());
    CHECK(calls[0].seen == "(none)");
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    calls.clear();
  }
  // Restarted from its data directory: leadership is ready only once "k" is applied again.
  TestNode again(config);
  setup(*again);
  again->start();
  REQUIRE(eventually(long_wait(), [&] { return call_count() >= 1; }));
  REQUIRE(is_ok(again->execute({"whoami"})));
  again->stop();
  std::lock_guard<std::mutex> lock(mu);
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].term > 10);
  CHECK(calls[0].seen == "v");
  CHECK(calls[0].thread == handler_thread);
}

// =============================================================================================
// 3. Role callbacks
// =============================================================================================

TEST_CASE("on_follower and on_candidate fire when roles change", "[runtime]") {
  struct Counts {
    std::atomic<int> leader{0}, follower{0}, candidate{0};
  };
  Counts counts[4];
  Cluster c(3, 3);
  for (int i = 1; i <= 3; ++i) {
    Counts* k = &counts[i];
    c[i].on_leader([k](raft::Node&, std::uint64_t) { ++k->leader; });
    c[i].on_follower([k](raft::Node&) { ++k->follower; });
    c[i].on_candidate([k](raft::Node&) { ++k->candidate; });
  }
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  REQUIRE(eventually(long_wait(), [&] { return counts[leader].leader.load() == 1; }));
  CHECK(counts[leader].candidate.load() >= 1);  // it campaigned
  for (int i = 1; i <= 3; ++i)
    if (i != leader) CHECK(eventually(long_wait(), [&] { return counts[i].follower.load() >= 1; }));  // learned the leader

  int before_candidate[4], before_follower[4];
  for (int i = 1; i <= 3; ++i) {
    before_candidate[i] = counts[i].candidate.load();
    before_follower[i] = counts[i].follower.load();
  }
  c[leader].stop();
  int next = 0;
  REQUIRE(eventually(long_wait(), [&] {
    next = c.current_leader();
    return next != 0 && next != leader;
  }));
  int other = c.other_than(leader, next);
  CHECK(eventually(long_wait(), [&] { return counts[next].leader.load() == 1; }));
  CHECK(counts[next].candidate.load() > before_candidate[next]);  // a follower became candidate, then leader
  CHECK(eventually(long_wait(), [&] { return counts[other].follower.load() > before_follower[other]; }));  // it follows the new leader
}

// =============================================================================================
// 4. Write handlers and the entry's timestamp
// =============================================================================================

TEST_CASE("a custom write handler runs on every node with the entry's timestamp as now_ms", "[runtime]") {
  std::mutex mu;
  std::map<const raft::Node*, std::vector<std::int64_t>> seen;  // node -> now_ms of each call
  Cluster c(4, 3);
  for (int i = 1; i <= 3; ++i)
    c[i].handler("stamp", [&](raft::Call& call) {
      {
        std::lock_guard<std::mutex> lock(mu);
        seen[call.node].push_back(call.now_ms);
      }
      call.data.put(call.words[1], raft::Store::Kind::String).str = std::to_string(call.now_ms);
      return raft::Reply::integer(call.now_ms);
    }, "we", 1, 1);
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  int follower = c.other_than(leader);

  std::int64_t before = wall_ms();
  raft::Reply r = c[follower].execute({"stamp", "when"});
  std::int64_t after = wall_ms();
  INFO(typed(r));
  REQUIRE(r.type == resp::Type::Integer);
  CHECK(r.num >= before);  // the leader's clock when it appended the entry
  CHECK(r.num <= after);
  const std::string expected = std::to_string(r.num);
  for (int i = 1; i <= 3; ++i) {
    INFO("node " << i);
    CHECK(eventually(long_wait(), [&] { return stored(c[i], "when") == expected; }));
  }
  std::lock_guard<std::mutex> lock(mu);
  REQUIRE(seen.size() == 3);
  for (int i = 1; i <= 3; ++i) CHECK(seen[&c[i]] == std::vector<std::int64_t>{r.num});
}

TEST_CASE("a linearizable read judges expiry at the leader's time, whatever the reading node's clock says",
          "[runtime]") {
  // Node 1 founds and leads; node 2's clock is a minute behind it, node 3's a minute ahead.
  // (They join, so the leader - and the clock every entry is stamped with - stays node 1's.)
  const std::map<std::string, std::int64_t> offset = {{"1", 0}, {"2", -60000}, {"3", 60000}};
  std::vector<std::unique_ptr<TestNode>> nodes;
  for (int i = 1; i <= 3; ++i) {
    raft::Config cfg = node_config(std::to_string(i), address(29, i));
    if (i > 1) cfg.join = {address(29, 1)};
    const std::int64_t off = offset.at(cfg.id);
    raft::testing::Hooks skewed;
    skewed.wall_clock = [off] { return wall_ms() + off; };
    nodes.push_back(std::make_unique<TestNode>(std::move(cfg), std::move(skewed)));
    nodes.back()->node().start();
  }
  raft::Node& leader = nodes[0]->node();
  raft::Node& slow = nodes[1]->node();
  raft::Node& fast = nodes[2]->node();
  REQUIRE(leader.state() == 'l');
  REQUIRE(eventually(long_wait(), [&] { return member_role(leader, "2") == "voter" && member_role(leader, "3") == "voter"; }));
  // Alive for 30 s by the leader's clock: node 3's own clock already says it expired.
  REQUIRE(is_ok(leader.execute({"set", "alive", "v", "px", "30000"})));
  CHECK(fast.execute({"get", "alive"}).str == "v");
  CHECK(slow.execute({"get", "alive"}).str == "v");
  CHECK(fast.execute({"pttl", "alive"}).num > 20000);  // a TTL is the leader's time too
  // Expired by the leader's clock: node 2's own clock says it is still alive.
  REQUIRE(is_ok(leader.execute({"set", "gone", "v", "px", "300"})));
  REQUIRE(eventually(long_wait(), [&] { return leader.execute({"get", "gone"}).is_null(); }));
  CHECK(slow.execute({"get", "gone"}).is_null());
  CHECK(slow.execute({"exists", "gone"}).num == 0);
  CHECK(fast.execute({"get", "gone"}).is_null());
  REQUIRE(leader.state() == 'l');  // nothing above was judged by another leader's clock
  std::vector<std::thread> stoppers;
  for (auto& n : nodes) stoppers.emplace_back([&n] { n->node().stop(); });
  for (auto& t : stoppers) t.join();
}

// =============================================================================================
// 5. execute() on the apply thread
// =============================================================================================

TEST_CASE("handlers registered with raft::Read, raft::Write and raft::WriteNoGrow run as pyraft's \"r\", \"we\" "
          "and \"wes\" do",
          "[runtime]") {
  const auto put = [](raft::Call& call) {
    call.data.put(call.words[1], raft::Store::Kind::String).str = call.words[2];
    return raft::Reply::ok();
  };
  const auto get = [](raft::Call& call) {
    const raft::Store::Object* o = call.data.find(call.words[1], call.now_ms);
    return o ? raft::Reply::bulk(o->str) : raft::Reply::nil();
  };
  const auto del = [](raft::Call& call) { return raft::Reply::integer(call.data.erase(call.words[1]) ? 1 : 0); };
  raft::Config config = node_config("1", address(67, 1));
  config.maxmemory = 1;  // once anything is stored, only writes that never grow the data run
  TestNode n(config);
  n->handler("typed.put", put, raft::Write, 2, 2)
      .handler("typed.get", get, raft::Read, 1, 1)
      .handler("typed.del", del, raft::WriteNoGrow, 1, 1)
      .handler("str.put", put, "we", 2, 2)
      .handler("str.del", del, "wes", 1, 1);
  const raft::CommandTable& table = raft::testing::runtime(*n).handlers_;
  for (const auto& [by_type, by_string] :
       {std::pair<const char*, const char*>{"typed.put", "str.put"}, {"typed.del", "str.del"}}) {
    INFO(by_type);
    CHECK(table.at(by_type).flags == table.at(by_string).flags);
  }
  CHECK(table.at("typed.put").flags == "we");
  CHECK(table.at("typed.del").flags == "wes");
  CHECK(table.at("typed.get").flags == "r");
  CHECK(table.at("typed.get").max_args == 1);
  CHECK_THROWS_AS(n->handler("bad", put, "w"), std::invalid_argument);

  n->start();
  REQUIRE(eventually(long_wait(), [&] { return n->state() == 'l'; }));
  REQUIRE(is_ok(n->execute({"typed.put", "k", "v"})));
  CHECK(n->execute({"typed.get", "k"}).str == "v");
  CHECK(n->execute({"typed.get", "k", "extra"}).is_error());
  // At maxmemory: the Write is refused, the WriteNoGrow runs, as their strings' would.
  REQUIRE(eventually(long_wait(), [&] { return n->execute({"typed.put", "k2", "v"}).is_error(); }));
  CHECK_THAT(n->execute({"typed.put", "k2", "v"}).str, StartsWith("OOM"));
  CHECK_THAT(n->execute({"str.put", "k2", "v"}).str, StartsWith("OOM"));
  CHECK(n->execute({"typed.del", "k"}).num == 1);
  CHECK(n->execute({"str.del", "k"}).num == 0);
}

TEST_CASE("execute from inside a handler or a callback returns an error instead of deadlocking", "[runtime]") {
  std::mutex mu;
  std::vector<raft::Reply> from_callback;
  TestNode n(node_config("1", address(5, 1)));
  n->handler("reenter_write", [](raft::Call& call) { return call.node->execute({"get", "k"}); }, "we", 0, 0);
  n->handler("reenter_read", [](raft::Call& call) { return call.node->execute({"set", "k", "x"}); }, "r", 0, 0);
  n->on_leader([&](raft::Node& node, std::uint64_t) {
    raft::Reply r = node.execute({"set", "k", "from-callback"});
    std::lock_guard<std::mutex> lock(mu);
    from_callback.push_back(r);
  });
  n->start();
  REQUIRE(eventually(long_wait(), [&] {
    std::lock_guard<std::mutex> lock(mu);
    return !from_callback.empty();
  }));
  {
    std::lock_guard<std::mutex> lock(mu);
    INFO(typed(from_callback[0]));
    CHECK(from_callback[0].is_error());
    CHECK_THAT(from_callback[0].str, StartsWith("ERR"));
  }
  for (const char* cmd : {"reenter_write", "reenter_read"}) {
    INFO(cmd);
    auto f = n->execute_async({cmd});
    REQUIRE(ready_within(f, long_wait()));
    raft::Reply r = f.get();
    INFO(typed(r));
    CHECK(r.is_error());
    CHECK_THAT(r.str, StartsWith("ERR"));
  }
  // The node still works, and nothing the refused calls asked for happened.
  CHECK(n->execute({"get", "k"}).is_null());
  CHECK(is_ok(n->execute({"set", "k", "v"})));
  CHECK(n->execute({"get", "k"}).str == "v");
}

TEST_CASE("execute from a read handler on a READONLY connection returns an error instead of blocking the poll thread",
          "[runtime]") {
  Cluster c(19, 3);
  for (int i = 1; i <= 3; ++i)
    c[i].handler("peek", [](raft::Call& call) {
      auto f = call.node->execute_async({"set", "peeked", "1"});
      if (f.wait_for(scaled(2000)) != std::future_status::ready)
        return raft::Reply::error("HUNG execute() from the poll thread did not return");
      return f.get();
    }, "r", 0, 0);
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  std::string reply = raw_command(c[leader].address(), "READONLY\r\nPEEK\r\n", 2);
  INFO(reply);
  CHECK_THAT(reply, StartsWith("+OK\r\n-ERR "));
  // Whatever the handler asked for never happens.
  int now_leader = c.wait_for_leader();
  REQUIRE(now_leader != 0);
  REQUIRE(is_ok(c[now_leader].execute({"set", "probe", "1"})));
  CHECK(c[now_leader].execute({"get", "peeked"}).is_null());
}

// =============================================================================================
// 6. Node::read, stopping(), stop() and ports
// =============================================================================================

TEST_CASE("Node::read sees whole entries, stopping() turns true on stop, stop is idempotent and a destroyed node frees its ports",
          "[runtime]") {
  const std::string addr = address(6, 1);
  auto node = std::make_unique<TestNode>(node_config("1", addr));
  std::atomic<bool> watcher_done{false};
  std::thread watcher;
  std::mutex watcher_mu;
  (*node)->on_leader([&](raft::Node& n, std::uint64_t) {
    // A thread started from a callback watches stopping().
    std::lock_guard<std::mutex> lock(watcher_mu);
    watcher = std::thread([&n, &watcher_done] {
      while (!n.stopping()) std::this_thread::sleep_for(2ms);
      watcher_done = true;
    });
  });
  (*node)->start();
  CHECK_FALSE((*node)->stopping());

  // A reader on a user thread never sees half of an entry: MSET writes a and b together.
  std::atomic<bool> writing{true};
  std::atomic<long> reads{0}, torn{0};
  std::thread reader([&] {
    while (writing) {
      (*node)->read([&](const raft::Store& s) {
        const raft::Store::Object* a = s.find("a", wall_ms());
        const raft::Store::Object* b = s.find("b", wall_ms());
        if ((a == nullptr) != (b == nullptr) || (a != nullptr && a->str != b->str)) ++torn;
      });
      ++reads;
    }
  });
  bool all_ok = true;
  for (int i = 0; i < 200 && all_ok; ++i) {
    std::string v = std::to_string(i);
    all_ok = is_ok((*node)->execute({"mset", "a", v, "b", v}));
    // What a write's reply confirms is visible to the next read on this node.
    all_ok = all_ok && stored(**node, "a") == v;
  }
  writing = false;
  reader.join();
  CHECK(all_ok);
  CHECK(reads.load() > 0);
  CHECK(torn.load() == 0);

  // The address is taken while the node lives.
  {
    TestNode second(node_config("2", addr));
    CHECK_THROWS_AS(second->start(), std::runtime_error);
  }
  // A client connection open when the node stops.
  CHECK(raw_command(addr, "PING\r\n") == "+PONG\r\n");

  std::thread concurrent_stop([&] { (*node)->stop(); });
  (*node)->stop();
  concurrent_stop.join();
  CHECK((*node)->stopping());
  (*node)->stop();  // again: returns at once
  CHECK((*node)->execute({"get", "a"}).is_error());
  CHECK(eventually(long_wait(), [&] { return watcher_done.load(); }));
  {
    std::lock_guard<std::mutex> lock(watcher_mu);
    if (watcher.joinable()) watcher.join();
  }
  node.reset();

  // Right after destruction both ports are free for a new node on the same address.
  TestNode reborn(node_config("1", addr));
  REQUIRE_NOTHROW(reborn->start());
  CHECK(is_ok(reborn->execute({"set", "a", "1"})));
  CHECK(raw_command(addr, "PING\r\n") == "+PONG\r\n");
}

TEST_CASE("a long Node::read on the leader does not stop its heartbeats", "[runtime]") {
  Cluster c(20, 3);
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  REQUIRE(is_ok(c[leader].execute({"set", "k", "v"})));
  const std::uint64_t term = c[leader].term();

  // A user thread holds the data lock (Node::read) until the test lets go.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> holding{false};
  auto reader = std::async(std::launch::async, [&] {
    c[leader].read([&](const raft::Store&) {
      holding = true;
      released.wait_for(scaled(60000));
    });
  });
  bool let_go = false;
  const auto let_go_once = [&] {
    if (!std::exchange(let_go, true)) release.set_value();
  };
  // Also when a REQUIRE below ends the test early (before `reader` waits for the thread).
  struct LetGo {
    std::function<void()> f;
    ~LetGo() { f(); }
  } let_go_on_exit{let_go_once};
  REQUIRE(eventually(long_wait(), [&] { return holding.load(); }));
  // A write meanwhile commits, and its apply waits for the data lock (its handler needs the
  // data): the apply thread is blocked too, as it is when a reader is slow in production.
  auto write = c[leader].execute_async({"set", "k", "w"});

  // Over several election timeouts, nobody campaigns: the same leader, followed by every node,
  // in the same term, at every look.
  std::string seen;
  const bool steady = holds_for(scaled(4 * max_election_timeout_ms()), [&] {
    seen = "leader " + std::to_string(c.current_leader()) + ", terms";
    bool same = c.current_leader() == leader;
    for (int i = 1; i <= 3; ++i) {
      seen += " " + std::to_string(c[i].term());
      same = same && c[i].term() == term;
    }
    return same;
  });
  // Positive evidence that the lock was held all along: the write could not be applied.
  const bool write_waited = write.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
  let_go_once();
  INFO("expected leader " << leader << " in term " << term << "; last seen: " << seen << "\n" << c.all_logs());
  CHECK(steady);
  CHECK(write_waited);
  REQUIRE(ready_within(reader, long_wait()));
  REQUIRE(ready_within(write, long_wait()));
  raft::Reply w = write.get();
  INFO(typed(w));
  CHECK(is_ok(w));
  CHECK(stored(c[leader], "k") == "w");
}

// =============================================================================================
// 7. Graceful leave
// =============================================================================================

namespace {

/// Stops the leader of a fresh 3-node cluster; returns (old leader, the id it handed over to).
std::pair<int, std::string> stop_leader(Cluster& c, std::uint64_t& old_term) {
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  REQUIRE(is_ok(c[leader].execute({"set", "k", "v"})));
  // Both followers hold the whole log (the leader's first entries of a static peer map bind
  // the members' server ids), so that the leader can send TimeoutNow at once.
  REQUIRE(eventually(long_wait(), [&] {
    const std::string last = info_field(c[leader], "raft_last_index");
    for (int i = 1; i <= c.size(); ++i)
      if (std::to_string(c[i].applied_index()) != last) return false;
    return true;
  }));
  old_term = c[leader].term();
  c[leader].stop();
  const LogLines& logs = c.test_node(leader).logs();
  long handing = logs.find("leaving: handing leadership to ");
  INFO(c.all_logs());
  REQUIRE(handing >= 0);
  std::string line = logs.line(handing);
  return {leader, line.substr(line.find("handing leadership to ") + 22)};
}

}  // namespace

TEST_CASE("a stopping leader hands leadership to an up-to-date voter", "[runtime]") {
  Cluster c(7, 3);
  std::uint64_t old_term = 0;
  auto [leader, target] = stop_leader(c, old_term);
  INFO("handed to '" << target << "'");
  REQUIRE((target == "1" || target == "2" || target == "3"));
  REQUIRE(target != std::to_string(leader));
  int next = std::stoi(target);
  // The target campaigns at once; in an election after a timeout either survivor may win.
  bool target_leads = eventually(long_wait(), [&] { return c.current_leader() == next; });
  if (!target_leads) UNSCOPED_INFO(c.all_logs());
  REQUIRE(target_leads);
  CHECK(c[next].term() > old_term);
  CHECK(is_ok(c[next].execute({"set", "k", "w"})));
  CHECK(c[c.other_than(leader, next)].execute({"get", "k"}).str == "w");
}

TEST_CASE("a stopping leader sees the new leader's term before it stops", "[runtime]") {
  Cluster c(17, 3);
  std::uint64_t old_term = 0;
  int leader = stop_leader(c, old_term).first;
  INFO("term before the handover: " << old_term);
  // While it still heartbeats (before "stopping") it hears the newer term: the target
  // campaigned at once instead of waiting for an election timeout, and leave() returned
  // because leadership moved, not because its wait ran out.
  //
  // The order of these two lines is guaranteed, not a race: the line for the role change is
  // written by the thread that changes the role, under the core's lock, before it wakes
  // leave(); leave() looks at the role under that lock; "stopping" is written after leave()
  // returns. So the follower line comes first exactly when leave() returned because the role
  // changed, and comes after (or never) when its wait ran out.
  const LogLines& logs = c.test_node(leader).logs();
  long handing = logs.find("leaving: handing leadership to ");
  long follower_line = logs.find("role f in term ", handing);
  long stopping_line = logs.find("stopping", handing);
  INFO(c.all_logs());
  REQUIRE(follower_line >= 0);
  CHECK(follower_line < stopping_line);
  // The term it follows in is the new leader's, above its own.
  const std::string line = logs.line(follower_line);
  const std::uint64_t seen_term = std::stoull(line.substr(line.find("role f in term ") + 15));
  CHECK(seen_term > old_term);
}

// =============================================================================================
// 8. Administration
// =============================================================================================

TEST_CASE("add_learner, promote, transfer_leadership and remove change the configuration on the leader and answer MOVED on a follower",
          "[runtime]") {
  // At most 3 voters: a learner is promoted by promote() only, not automatically.
  auto three_voters = [](raft::Config& config) { config.max_voters = 3; };
  Cluster c(8, 3, three_voters);
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  int follower = c.other_than(leader);
  const std::string a4 = address(8, 4);
  const std::string leader_id = std::to_string(leader);

  for (const raft::AdminResult& r : {c[follower].add_learner("4", a4), c[follower].promote("2"),
                                     c[follower].remove("3"), c[follower].transfer_leadership(leader_id)}) {
    INFO(r.message);
    CHECK_FALSE(r.ok());
    CHECK(r.error == raft::AdminResult::Error::NotLeader);
    CHECK(r.leader == leader_id);
    CHECK(r.leader_address == c[leader].address());
    CHECK_THAT(r.message, StartsWith("MOVED " + leader_id + " " + c[leader].address()));
  }
  CHECK(member_role(c[leader], "4") == "absent");

  raft::AdminResult added = admin_until_done([&] { return c[leader].add_learner("4", a4); });
  INFO(added.message);
  REQUIRE(added.ok());
  CHECK(added.index > 0);
  CHECK(added.term == c[leader].term());
  for (int i = 1; i <= 3; ++i) CHECK(eventually(long_wait(), [&] { return member_role(c[i], "4") == "learner"; }));
  REQUIRE(is_ok(c[leader].execute({"set", "before4", "x"})));

  raft::Config config4 = node_config("4", a4);
  config4.join = {c[leader].address()};
  three_voters(config4);
  TestNode n4(config4);
  n4->start();
  // It joined (the leader bound its identity) and caught up as a learner.
  REQUIRE(eventually(long_wait(), [&] { return n4.logs().contains("to join: accepted") || n4.logs().contains("joined cluster"); }));
  REQUIRE(eventually(long_wait(), [&] { return stored(*n4, "before4") == "x"; }));
  CHECK(n4->state() == 'n');

  raft::AdminResult promoted = admin_until_done([&] { return c[leader].promote("4"); });
  INFO(promoted.message);
  REQUIRE(promoted.ok());
  for (int i = 1; i <= 3; ++i) CHECK(eventually(long_wait(), [&] { return member_role(c[i], "4") == "voter"; }));
  REQUIRE(eventually(long_wait(), [&] { return n4->state() == 'f' && member_role(*n4, "4") == "voter"; }));
  CHECK(info_field(*n4, "raft_voters") == "4");

  raft::AdminResult moved = admin_until_done([&] { return c[leader].transfer_leadership("4"); });
  INFO(moved.message);
  REQUIRE(moved.ok());
  CHECK(moved.target == "4");
  REQUIRE(eventually(long_wait(), [&] {
    return n4->state() == 'l' && c[1].leader() == "4" && c[2].leader() == "4" && c[3].leader() == "4";
  }));
  CHECK(is_ok(n4->execute({"set", "led-by", "4"})));

  raft::AdminResult back = admin_until_done([&] { return n4->transfer_leadership(leader_id); });
  INFO(back.message);
  REQUIRE(back.ok());
  REQUIRE(eventually(long_wait(), [&] { return c[leader].state() == 'l' && n4->leader() == leader_id; }));

  raft::AdminResult removed = admin_until_done([&] { return c[leader].remove("4"); });
  INFO(removed.message);
  REQUIRE(removed.ok());
  for (int i = 1; i <= 3; ++i) {
    INFO("node " << i);
    CHECK(eventually(long_wait(), [&] { return member_role(c[i], "4") == "absent" && info_field(c[i], "raft_members") == "3"; }));
  }
  CHECK(info_field(c[leader], "raft_voters") == "3");
  CHECK(is_ok(c[leader].execute({"set", "after4", "y"})));
  CHECK(c[follower].execute({"get", "after4"}).str == "y");
}

namespace {

/// An fsync hook that holds every call while the gate is closed: what the node writes then
/// does not become durable, so the leader of one cannot commit it.
class DiskGate {
 public:
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  void open() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = false;
    cv_.notify_all();
  }
  std::function<int(int)> hook() {
    return [this](int fd) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !closed_; });
      return ::fsync(fd);
    };
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
};

/// The error `r` failed with, and RAFT.* (run as `words` on `node`) replying with its message.
void check_admin_error(raft::Node& node, const raft::AdminResult& r, raft::AdminResult::Error error,
                       const std::vector<std::string>& words) {
  INFO(words[0] << ": " << r.message);
  CHECK_FALSE(r.ok());
  CHECK_FALSE(static_cast<bool>(r));
  CHECK(r.error == error);
  CHECK_FALSE(r.message.empty());
  const raft::Reply reply = node.execute(words);
  CHECK(reply.is_error());
  CHECK(reply.str == r.message);
}

}  // namespace

TEST_CASE("each administration call that changes nothing says why in its error, and RAFT.* replies with its message",
          "[runtime]") {
  using Error = raft::AdminResult::Error;
  DiskGate gate;  // outlives the node, whose writer may wait in it
  raft::testing::Hooks hooks;
  hooks.fsync = gate.hook();
  TestNode n(node_config("1", address(64, 1)), hooks);
  for (const raft::AdminResult& r : {n->add_learner("4", address(64, 4)), n->promote("4"), n->remove("4"),
                                     n->transfer_leadership()}) {
    INFO(r.message);
    CHECK(r.error == Error::NotRunning);
  }
  n->start();
  REQUIRE(eventually(long_wait(), [&] { return n->state() == 'l'; }));
  REQUIRE(is_ok(n->execute({"set", "k", "v"})));

  check_admin_error(*n, n->add_learner("4", "no-address"), Error::InvalidAddress, {"raft.add", "4", "no-address"});
  check_admin_error(*n, n->add_learner("4", "no-address"), Error::InvalidAddress, {"add_node", "4", "no-address"});
  check_admin_error(*n, n->remove("9"), Error::NotAllowed, {"raft.remove", "9"});
  check_admin_error(*n, n->remove("1"), Error::NotAllowed, {"del_node", "1"});  // the last voter
  check_admin_error(*n, n->promote("9"), Error::NotAllowed, {"raft.promote", "9"});
  check_admin_error(*n, n->transfer_leadership(), Error::NoTarget, {"raft.transfer"});
  check_admin_error(*n, n->transfer_leadership("1"), Error::InvalidTarget, {"raft.transfer", "1"});
  check_admin_error(*n, n->transfer_leadership("9"), Error::InvalidTarget, {"raft.transfer", "9"});
  CHECK(member_role(*n, "4") == "absent");

  // While the first change is not durable, and so not committed, a second one must wait.
  gate.close();
  const raft::AdminResult added = n->add_learner("4", address(64, 4));
  INFO(added.message);
  REQUIRE(added.ok());
  CHECK(static_cast<bool>(added));
  CHECK(added.message.empty());
  CHECK(added.index > 0);
  CHECK(added.term == n->term());
  const raft::AdminResult busy = n->promote("4");
  CHECK(busy.error == Error::Busy);
  CHECK_THAT(busy.message, StartsWith("TRYAGAIN"));
  CHECK(n->execute({"raft.promote", "4"}).str == busy.message);
  gate.open();
  CHECK(eventually(long_wait(), [&] { return member_role(*n, "4") == "learner"; }));

  n->stop();
  CHECK(n->promote("4").error == Error::NotRunning);
}

TEST_CASE("an administration call during a handover is refused as Transferring, and one on a node that knows no "
          "leader as NotLeader without a leader",
          "[runtime]") {
  using Error = raft::AdminResult::Error;
  Cluster c(65, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = c.other_than(leader);
  c[follower].stop();
  // The handover waits for the stopped follower until an election timeout passes: meanwhile
  // membership changes are refused.
  const raft::AdminResult moving = c[leader].transfer_leadership(c[follower].id());
  INFO(moving.message);
  REQUIRE(moving.ok());
  CHECK(moving.target == c[follower].id());
  check_admin_error(c[leader], c[leader].add_learner("4", address(65, 4)), Error::Transferring,
                    {"raft.add", "4", address(65, 4)});

  // A node of a cluster that never started knows no leader.
  Cluster alone(66, 3);
  alone[1].start();
  const raft::AdminResult r = alone[1].promote("2");
  INFO(r.message);
  CHECK(r.error == Error::NotLeader);
  CHECK(r.leader.empty());
  CHECK_THAT(r.message, StartsWith("CLUSTERDOWN"));
}

// =============================================================================================
// 9. Expiry
// =============================================================================================

TEST_CASE("a key set with PX disappears on every node and the leader deletes it through the log", "[runtime]") {
  Cluster c(9, 3);
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  int follower = c.other_than(leader);
  int other = c.other_than(leader, follower);
  const std::string px = std::to_string(scaled(200).count());
  REQUIRE(is_ok(c[follower].execute({"set", "later", "w", "PX", "600000"})));
  REQUIRE(is_ok(c[follower].execute({"set", "k", "v", "PX", px})));
  c[leader].read([](const raft::Store& s) { CHECK(s.deadline("k").has_value()); });  // the leader applied it
  const std::uint64_t commit_before_expiry = c[leader].commit_index();

  for (int i = 1; i <= 3; ++i) {
    INFO("node " << i);
    CHECK(eventually(long_wait(), [&] { return c[i].execute({"get", "k"}).is_null(); }));
  }
  for (int i = 1; i <= 3; ++i) {
    INFO("node " << i);
    CHECK(eventually(long_wait(), [&] { return stored(c[i], "k") == "(none)"; }));
    CHECK(stored_keys(c[i]) == 1);
    CHECK(stored(c[i], "later") == "w");
    raft::Reply size = c[i].execute({"dbsize"});
    INFO(typed(size));
    CHECK(size.type == resp::Type::Integer);
    CHECK(size.num == 1);
  }
  // Nobody wrote since: what deleted it is an entry the leader proposed.
  CHECK(c[leader].commit_index() > commit_before_expiry);

  // Followers never delete on their own. With the leader and the other follower stopped, no
  // entry can commit: a key whose deadline passes meanwhile is hidden from reads on the follower
  // left alone, and stays in its store for as long as we watch.
  const auto ttl = scaled(3000);
  REQUIRE(is_ok(c[leader].execute({"set", "k2", "v2", "PX", std::to_string(ttl.count())})));
  REQUIRE(eventually(long_wait(), [&] { return stored(c[follower], "k2") == "v2"; }));
  c[other].stop();
  c[leader].stop();  // it may hand over to the follower, which then cannot commit anything
  // Long before the deadline (ttl is far longer than two stops): the leader had no reason to
  // propose its deletion yet.
  REQUIRE(stored(c[follower], "k2") == "v2");
  // Its deadline passes: the follower's reads hide it (a READONLY read is local)...
  CHECK(eventually(long_wait(), [&] { return raw_command(c[follower].address(), "READONLY\r\nGET k2\r\n", 2) == "+OK\r\n$-1\r\n"; }));
  // ...and over many of the 100 ms expiry rounds and several election timeouts (a follower
  // that led for a moment steps down for want of a majority), it is still stored.
  std::string last = "v2";
  CHECK(holds_for(scaled(4 * max_election_timeout_ms()), [&] { return (last = stored(c[follower], "k2")) == "v2"; }));
  INFO(c.all_logs());
  CHECK(last == "v2");
  CHECK(c[follower].state() != 'l');
}

// =============================================================================================
// 10. Disk failure
// =============================================================================================

namespace {

/// Builds a 3-node cluster whose nodes' fsyncs go through FailingDisks.
struct DiskCluster {
  FailingDisk disks[4];
  Cluster cluster;
  explicit DiskCluster(int test)
      : cluster(test, 3, {}, [this](const raft::Config& config) {
          raft::testing::Hooks hooks;
          hooks.fsync = disks[std::stoi(config.id)].hook();
          return hooks;
        }) {}
};

/// Issues `count` writes on `n`, one at a time: each is answered, with MISCONF or TIMEOUT, never OK.
void check_no_ok_writes(raft::Node& n, int count) {
  for (int i = 0; i < count; ++i) {
    auto f = n.execute_async({"set", "after-failure", std::to_string(i)});
    bool answered = ready_within(f, scaled(10000));
    INFO("write " << i << " on the failed node");
    CHECK(answered);
    if (!answered) return;
    raft::Reply r = f.get();
    INFO(typed(r));
    CHECK(r.is_error());
    CHECK((r.str.rfind("MISCONF", 0) == 0 || r.str.rfind("TIMEOUT", 0) == 0));
    // The reply names the failed file inside the data directory, never its absolute path.
    CHECK(r.str.find(" /") == std::string::npos);
  }
}

}  // namespace

TEST_CASE("a follower whose disk fails stops acknowledging while the two others keep serving", "[runtime]") {
  DiskCluster dc(10);
  Cluster& c = dc.cluster;
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  int bad = c.other_than(leader);
  int good = c.other_than(leader, bad);
  REQUIRE(is_ok(c[leader].execute({"set", "k", "0"})));

  dc.disks[bad].fail_after(3);
  // Writes go on; the failing follower's third fsync from now on fails.
  REQUIRE(eventually(long_wait(), [&] {
    c[leader].execute({"incr", "n"});
    return c.test_node(bad).logs().contains("storage failed");
  }));
  CHECK_THAT(info_field(c[bad], "raft_storage"), StartsWith("failed"));
  check_no_ok_writes(c[bad], 3);
  CHECK(c[bad].execute({"get", "k"}).is_error());

  // Its acknowledgements stopped: the leader's match for it no longer moves (one round trip
  // first, so an acknowledgement sent before the failure has arrived).
  REQUIRE(is_ok(c[leader].execute({"set", "k", "settle"})));
  long long match = member_match(c[leader], std::to_string(bad));
  for (int i = 0; i < 5; ++i) REQUIRE(is_ok(c[leader].execute({"set", "k", std::to_string(i)})));
  CHECK(member_match(c[leader], std::to_string(bad)) == match);
  CHECK(member_match(c[leader], std::to_string(good)) > match);

  CHECK(is_ok(c[good].execute({"set", "k", "from-good"})));
  CHECK(c[leader].execute({"get", "k"}).str == "from-good");
  CHECK(c[good].execute({"get", "k"}).str == "from-good");
  CHECK(stored(c[bad], "k") != "from-good");
}

TEST_CASE("a follower whose fsync fails never acknowledges that batch, so a write it alone would make a majority "
          "for is not committed",
          "[runtime]") {
  // The leader and one follower are all that run, and that follower's fsync of the write fails.
  // Its acknowledgement would promise that the write is durable there: it must not leave, and
  // the write times out (the leader steps down for want of a majority, or its wait runs out)
  // instead of being committed on one durable copy.
  DiskCluster dc(21);
  Cluster& c = dc.cluster;
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int bad = c.other_than(leader), stopped = c.other_than(leader, bad);
  REQUIRE(is_ok(c[leader].execute({"set", "k", "durable"})));
  // Nothing is in flight to the follower when its disk starts failing: the next fsync it does
  // is the one for the write below.
  REQUIRE(eventually(long_wait(), [&] { return c[bad].applied_index() == c[leader].applied_index(); }));
  c[stopped].stop();
  dc.disks[bad].fail_after(0);
  // What the leader holds now may still commit: the stopped node may have acknowledged it
  // before it stopped (an entry the leader proposes of its own accord comes at its own pace).
  // The write below comes after all of it and must not commit.
  const std::uint64_t last_before = std::stoull(info_field(c[leader], "raft_last_index"));

  auto f = c[leader].execute_async({"set", "k", "acknowledged-by-a-failed-disk"});
  CHECK(eventually(long_wait(), [&] { return c.test_node(bad).logs().contains("storage failed"); }));
  bool answered = ready_within(f, long_wait());
  INFO(c.all_logs());
  REQUIRE(answered);
  raft::Reply r = f.get();
  INFO(typed(r));
  CHECK(r.is_error());
  CHECK_THAT(r.str, StartsWith("TIMEOUT"));
  CHECK(c[leader].commit_index() <= last_before);
  CHECK(stored(c[leader], "k") == "durable");
}

TEST_CASE("a leader whose disk fails stops acknowledging and the two others elect a new leader", "[runtime]") {
  DiskCluster dc(11);
  Cluster& c = dc.cluster;
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  REQUIRE(is_ok(c[leader].execute({"set", "k", "0"})));

  dc.disks[leader].fail_after(2);  // the second fsync from now on fails
  REQUIRE(eventually(long_wait(), [&] {
    c[leader].execute_async({"incr", "n"});  // not waited for: see the next test
    return c.test_node(leader).logs().contains("storage failed");
  }));
  CHECK_THAT(info_field(c[leader], "raft_storage"), StartsWith("failed"));
  check_no_ok_writes(c[leader], 3);
  CHECK(c[leader].execute({"get", "k"}).is_error());

  int a = c.other_than(leader), b = c.other_than(leader, a);
  int next = 0;
  REQUIRE(eventually(long_wait(), [&] {
    if (c[a].state() == 'l' && c[b].leader() == c[a].id()) next = a;
    if (c[b].state() == 'l' && c[a].leader() == c[b].id()) next = b;
    return next != 0;
  }));
  CHECK(is_ok(c[next].execute({"set", "k", "new-leader"})));
  CHECK(c[c.other_than(leader, next)].execute({"get", "k"}).str == "new-leader");
  CHECK(stored(c[leader], "k") != "new-leader");
}

TEST_CASE("a write in flight when the leader's disk fails is answered with an error", "[runtime]") {
  DiskCluster dc(18);
  Cluster& c = dc.cluster;
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  REQUIRE(is_ok(c[leader].execute({"set", "k", "0"})));

  dc.disks[leader].fail_after(0);
  // This write needs the leader's own fsync, which fails: it must not be acknowledged.
  auto f = c[leader].execute_async({"set", "k", "lost?"});
  REQUIRE(eventually(long_wait(), [&] { return c.test_node(leader).logs().contains("storage failed"); }));
  bool answered = ready_within(f, scaled(15000));
  INFO("the write in flight when the leader's disk failed " << (answered ? "was answered" : "got no answer"));
  REQUIRE(answered);
  raft::Reply r = f.get();
  INFO(typed(r));
  CHECK(r.is_error());
  CHECK((r.str.rfind("MISCONF", 0) == 0 || r.str.rfind("TIMEOUT", 0) == 0));
}

// =============================================================================================
// 11. A handler missing on one node
// =============================================================================================

TEST_CASE("a node without a write handler the log needs stops its apply loop instead of skipping the entry",
          "[runtime]") {
  Cluster c(12, 3);
  for (int i = 1; i <= 2; ++i)
    c[i].handler("bump", [](raft::Call& call) {
      call.data.put("bumped", raft::Store::Kind::String).str = "yes";
      return raft::Reply::ok();
    }, "we", 0, 0);
  c.start();
  int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  if (leader == 3) {
    REQUIRE(admin_until_done([&] { return c[3].transfer_leadership("1"); }).ok());
    REQUIRE(eventually(long_wait(), [&] { return c.current_leader() == 1; }));
    leader = 1;
  }
  REQUIRE(is_ok(c[leader].execute({"set", "before", "1"})));
  REQUIRE(eventually(long_wait(), [&] { return stored(c[3], "before") == "1"; }));

  raft::Reply r = c[leader].execute({"bump"});
  INFO(typed(r));
  REQUIRE(is_ok(r));
  const LogLines& logs3 = c.test_node(3).logs();
  REQUIRE(eventually(long_wait(), [&] { return logs3.contains("'bump'") && logs3.contains("stopping the apply loop"); }));
  long error_line = logs3.find("'bump'");
  CHECK_THAT(logs3.line(error_line), StartsWith("[ERROR]"));
  std::uint64_t stuck_at = c[3].applied_index();

  // Nodes 1 and 2 go on; node 3 applies nothing after the entry it cannot apply.
  int other = leader == 1 ? 2 : 1;
  REQUIRE(is_ok(c[other].execute({"set", "after", "1"})));
  CHECK(c[other].execute({"get", "bumped"}).str == "yes");
  CHECK(c[leader].execute({"get", "after"}).str == "1");
  CHECK(stored(c[3], "bumped") == "(none)");
  CHECK(stored(c[3], "after") == "(none)");
  CHECK(c[3].applied_index() == stuck_at);
  CHECK(c[3].applied_index() < c[leader].applied_index());
  // The node asked its host to stop: join() returns.
  auto joined = std::async(std::launch::async, [&] { c[3].join(); });
  bool returned = ready_within(joined, long_wait());
  if (!returned) c[3].stop();  // so that the future's destructor does not wait forever
  CHECK(returned);
}

// =============================================================================================
// 12. No global state
// =============================================================================================

TEST_CASE("two single-node clusters in one process keep their own data, handlers and logs", "[runtime]") {
  TestNode a(node_config("a", address(13, 1)));
  TestNode b(node_config("b", ip(13, 2) + ":7010"));  // the same port on another address
  a->handler("only_a", [](raft::Call&) { return raft::Reply::bulk("a"); }, "r", 0, 0);
  a->start();
  b->start();
  REQUIRE(a->state() == 'l');
  REQUIRE(b->state() == 'l');
  REQUIRE(is_ok(a->execute({"set", "k", "from-a"})));
  REQUIRE(is_ok(b->execute({"set", "k", "from-b"})));
  REQUIRE(is_ok(a->execute({"set", "only-in-a", "1"})));

  CHECK(a->execute({"get", "k"}).str == "from-a");
  CHECK(b->execute({"get", "k"}).str == "from-b");
  CHECK(a->execute({"dbsize"}).num == 2);
  CHECK(b->execute({"dbsize"}).num == 1);
  CHECK(stored(*b, "only-in-a") == "(none)");
  CHECK(a->execute({"only_a"}).str == "a");
  CHECK_THAT(b->execute({"only_a"}).str, StartsWith("ERR unknown command"));
  CHECK(info_field(*a, "raft_node_id") == "a");
  CHECK(info_field(*b, "raft_node_id") == "b");
  CHECK(info_field(*a, "raft_cluster_id") != info_field(*b, "raft_cluster_id"));
  CHECK(a.logs().contains("node a at"));
  CHECK_FALSE(a.logs().contains("node b at"));
  CHECK_FALSE(b.logs().contains("node a at"));
}

// =============================================================================================
// 13. Config::validate and parse_args
// =============================================================================================

TEST_CASE("Config::validate names what is wrong", "[runtime]") {
  auto valid = [] { return node_config("1", "127.60.14.1:7010"); };
  CHECK(valid().validate() == "");

  struct Case {
    std::function<void(raft::Config&)> change;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](raft::Config& c) { c.address = ""; }, "address is required"},
      {[](raft::Config& c) { c.address = "127.0.0.1"; }, "'127.0.0.1' is not ip:port"},
      {[](raft::Config& c) { c.address = "0.0.0.0:7010"; }, "not 0.0.0.0"},
      {[](raft::Config& c) { c.address = "localhost:7010"; }, "'localhost:7010' needs a numeric IPv4 address"},
      {[](raft::Config& c) { c.address = "127.0.0.1:65535"; }, "'127.0.0.1:65535' has no valid port"},
      {[](raft::Config& c) { c.address = "127.0.0.1:0"; }, "has no valid port"},
      {[](raft::Config& c) { c.address = "127.0.0.1:http"; }, "has no valid port"},
      {[](raft::Config& c) { c.peers["2"] = "127.0.0.2"; }, "peer 2: address '127.0.0.2' is not ip:port"},
      {[](raft::Config& c) { c.peers["2"] = "host.example:7020"; }, "peer 2: address 'host.example:7020' needs a numeric"},
      {[](raft::Config& c) { c.peers["2"] = c.address; }, "peer 2 has this node's own address"},
      {[](raft::Config& c) { c.peers[""] = "127.0.0.2:7020"; }, "a peer has an empty id"},
      {[](raft::Config& c) { c.join = {"1/127.0.0.1:65535"}; }, "-e: address '127.0.0.1:65535' has no valid port"},
      {[](raft::Config& c) {
         c.peers["2"] = "127.0.0.2:7020";
         c.join = {"127.0.0.2:7020"};
       },
       "either a static peer map or a list to join"},
      {[](raft::Config& c) { c.election_timeout_ms = c.heartbeat_ms; }, "election_timeout_ms"},
      {[](raft::Config& c) { c.heartbeat_ms = 5; }, "heartbeat_ms"},
      {[](raft::Config& c) { c.tick_ms = 0; }, "tick_ms"},
      {[](raft::Config& c) { c.append_timeout_ms = 0; }, "timeouts must be positive"},
      {[](raft::Config& c) { c.read_timeout_ms = -1; }, "timeouts must be positive"},
      {[](raft::Config& c) { c.time_scale = 0; }, "time_scale"},
  };
  for (const auto& k : cases) {
    raft::Config c = valid();
    k.change(c);
    INFO("expected: " << k.expected);
    CHECK_THAT(c.validate(), Contains(k.expected));
  }
  // start() refuses an invalid configuration with the same words.
  raft::Config bad = valid();
  bad.address = "0.0.0.0:7010";
  raft::Node n(bad);
  CHECK_THROWS_WITH(n.start(), Contains("not 0.0.0.0"));
}

namespace {

raft::ParsedArgs parse(std::vector<std::string> args) {
  args.insert(args.begin(), "run_raft");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return raft::parse_args(static_cast<int>(args.size()), argv.data());
}

}  // namespace

TEST_CASE("parse_args reads pyraft's options and names a bad or incomplete one", "[runtime]") {
  raft::ParsedArgs p = parse({"-a", "127.60.14.1:7010", "-i", "7", "-e", "1/127.60.14.2:7020,127.60.14.3:7030", "-d",
                              "/tmp/raft-data", "-s", "sekret", "--loglevel", "DEBUG"});
  INFO(p.error);
  CHECK(p.error == "");
  CHECK_FALSE(p.help);
  CHECK(p.config.address == "127.60.14.1:7010");
  CHECK(p.config.id == "7");
  CHECK(p.config.join == std::vector<std::string>{"1/127.60.14.2:7020", "127.60.14.3:7030"});
  CHECK(p.config.data_dir == "/tmp/raft-data");
  CHECK(p.config.secret == "sekret");
  CHECK(p.config.log_level == raft::LogLevel::Debug);
  CHECK(p.config.peers.empty());

  p = parse({"-a", "127.60.14.1:7010", "-l", "dump.dat", "--loglevel", "warning"});
  CHECK(p.error == "");
  CHECK(p.config.load_snapshot == "dump.dat");
  CHECK(p.config.id == "127.60.14.1:7010");  // no -i: the address
  CHECK(p.config.log_level == raft::LogLevel::Warning);
  CHECK(p.config.join.empty());

  CHECK(parse({"--help"}).help);
  CHECK(parse({"-a", "127.60.14.1:7010", "-h"}).help);

  CHECK_THAT(parse({"-a", "127.60.14.1:7010", "-x"}).error, Contains("unknown option '-x'"));
  CHECK_THAT(parse({"-a", "127.60.14.1:7010", "--port", "1"}).error, Contains("unknown option '--port'"));
  CHECK_THAT(parse({"-a"}).error, Contains("option -a needs a value"));
  CHECK_THAT(parse({"-a", "127.60.14.1:7010", "-i"}).error, Contains("option -i needs a value"));
  CHECK_THAT(parse({"-a", "127.60.14.1:7010", "-d"}).error, Contains("needs a value"));
  CHECK_THAT(parse({"-a", "127.60.14.1:7010", "--loglevel"}).error, Contains("needs a value"));
  CHECK_THAT(parse({"-a", "127.60.14.1:7010", "--loglevel", "loud"}).error, Contains("unknown log level 'loud'"));
  CHECK_THAT(parse({}).error, Contains("address is required"));
  CHECK_THAT(parse({"-a", "127.60.14.1"}).error, Contains("is not ip:port"));
  CHECK_THAT(parse({"-a", "127.60.14.1:7010", "-e", "127.60.14.2:7020", "-l", "dump.dat"}).error, Contains("-l"));
}

// =============================================================================================
// 14. execute_async from many threads
// =============================================================================================

// execute_async() may be called from any number of user threads at once, beside the poll
// thread's own batching (a shared batch once proposed writes twice and crashed on the second
// reply to one promise).
TEST_CASE("1000 concurrent execute_async writes from 10 threads all complete and are all applied", "[runtime]") {
  // The threads write through all three nodes: the followers forward theirs to the leader.
  Cluster c(15, 3);
  c.start();
  REQUIRE(c.wait_for_leader() != 0);
  constexpr int kThreads = 10, kPerThread = 100;
  std::vector<std::vector<std::future<raft::Reply>>> futures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      raft::Node& n = c[1 + t % 3];
      for (int i = 0; i < kPerThread; ++i)
        futures[static_cast<std::size_t>(t)].push_back(
            n.execute_async({"set", "key-" + std::to_string(t) + "-" + std::to_string(i), std::to_string(t * i)}));
    });
  for (auto& t : threads) t.join();

  int ok = 0, unanswered = 0;
  std::string first_error;
  for (auto& of_thread : futures)
    for (auto& f : of_thread) {
      if (!ready_within(f, scaled(30000))) {
        ++unanswered;
        continue;
      }
      raft::Reply r = f.get();
      if (is_ok(r)) ++ok;
      else if (first_error.empty()) first_error = typed(r);
    }
  INFO("first error: " << first_error);
  CHECK(unanswered == 0);
  CHECK(ok == kThreads * kPerThread);
  for (int node = 1; node <= 3; ++node) {
    INFO("node " << node);
    CHECK(eventually(long_wait(), [&] { return stored_keys(c[node]) == static_cast<std::size_t>(kThreads * kPerThread); }));
    bool all_there = true;
    for (int t = 0; t < kThreads; ++t)
      for (int i = 0; i < kPerThread; ++i)
        all_there = all_there &&
                    stored(c[node], "key-" + std::to_string(t) + "-" + std::to_string(i)) == std::to_string(t * i);
    CHECK(all_there);
  }
}

TEST_CASE("every write made through execute is applied exactly once", "[runtime]") {
  // Sequential INCRs on every node at once (followers forward theirs): the replies are
  // 1..N, each once, and the counter ends at N on every node.
  Cluster c(16, 3);
  c.start();
  REQUIRE(c.wait_for_leader() != 0);
  constexpr int kPerNode = 100;
  std::vector<std::vector<raft::Reply>> replies(4);
  std::vector<std::thread> threads;
  for (int i = 1; i <= 3; ++i)
    threads.emplace_back([&, i] {
      for (int k = 0; k < kPerNode; ++k) {
        auto f = c[i].execute_async({"incr", "counter"});
        if (!ready_within(f, scaled(30000))) break;
        replies[static_cast<std::size_t>(i)].push_back(f.get());
      }
    });
  for (auto& t : threads) t.join();
  std::vector<std::int64_t> values;
  std::string first_error;
  for (const auto& rs : replies)
    for (const auto& r : rs) {
      if (r.type == resp::Type::Integer) values.push_back(r.num);
      else if (first_error.empty()) first_error = typed(r);
    }
  std::sort(values.begin(), values.end());
  std::vector<std::int64_t> expected;
  for (std::int64_t v = 1; v <= static_cast<std::int64_t>(values.size()); ++v) expected.push_back(v);
  INFO("first error: " << first_error);
  CHECK(values.size() == 3 * kPerNode);
  CHECK(values == expected);
  for (int i = 1; i <= 3; ++i) {
    INFO("node " << i);
    CHECK(eventually(long_wait(), [&] { return stored(c[i], "counter") == std::to_string(values.size()); }));
  }
}

TEST_CASE("handlers may call the node's status methods and INFO without deadlocking", "[runtime]") {
  TempDir data;
  raft::Config config = node_config("1", address(22, 1));
  config.data_dir = data.file("data");
  TestNode n(config);
  auto status = [](raft::Call& call) {
    // Run with the data lock held: none of these may wait for the core's lock holders.
    std::string s = call.node->info() + call.node->leader() + call.node->leader_address() +
                    std::to_string(call.node->commit_index()) + std::to_string(call.node->term());
    return raft::Reply::integer(static_cast<std::int64_t>(s.size()));
  };
  n->handler("status_w", status, "we", 0, 0);
  n->handler("status_r", status, "r", 0, 0);
  n->start();
  REQUIRE(eventually(long_wait(), [&] { return n->state() == 'l'; }));
  for (const char* cmd : {"status_w", "status_r"}) {
    auto f = n->execute_async({cmd});
    REQUIRE(ready_within(f, scaled(5000)));
    raft::Reply r = f.get();
    CHECK(r.type == resp::Type::Integer);
    CHECK(r.num > 100);
  }
}

TEST_CASE("stop() called from on_leader stops the node through join() instead of joining its own thread",
          "[runtime]") {
  TempDir data;
  raft::Config config = node_config("1", address(23, 1));
  config.data_dir = data.file("data");
  TestNode n(config);
  std::atomic<int> calls{0};
  n->on_leader([&](raft::Node& node, std::uint64_t) {
    ++calls;
    node.stop();  // on the apply thread
  });
  n->start();
  auto joined = std::async(std::launch::async, [&] { n->join(); });
  REQUIRE(ready_within(joined, scaled(10000)));
  CHECK(calls == 1);
  CHECK(n->stopping());
}

TEST_CASE("stop() does not wait out the send timeout for a peer that accepts connections and never answers",
          "[runtime]") {
  // A peer port that the kernel accepts connections on (its backlog) while nobody reads: what
  // a stopped or hung peer process looks like. Without a way to cut the wait short, the node's
  // link and joiner threads sit in their HELLO or JOIN for send_timeout_ms and stop() with them.
  const std::string silent = address(24, 2);
  const std::string host = silent.substr(0, silent.find(':'));
  const int peer_port = std::stoi(silent.substr(silent.find(':') + 1)) + 1;
  std::string error;
  const int listener = raft::detail::listen_tcp(host, peer_port, error);  // the node's own listener code
  INFO(error);
  REQUIRE(listener >= 0);
  const auto connection_waiting = [&] {
    pollfd p{listener, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  };

  raft::Config config = node_config("1", address(24, 1));
  config.send_timeout_ms = 60000;  // a stop that waits for it misses the deadline below
  SECTION("a member whose static peer map names the silent peer") { config.peers["2"] = silent; }
  SECTION("a joiner asking the silent peer") { config.join = {silent}; }
  TestNode node(config);
  node->start();
  REQUIRE(eventually(long_wait(), connection_waiting));  // a thread of the node now waits for its answer
  auto stopped = std::async(std::launch::async, [&] { node->stop(); });
  CHECK(ready_within(stopped, scaled(10000)));
  stopped.wait();
  ::close(listener);
}

TEST_CASE("a founder loads its first data with -l from a data directory's snapshot file, the bare text or pyraft's "
          "checkpoint, and a file it cannot load leaves no data directory behind",
          "[runtime]") {
  TempDir dir;
  // A snapshot file as a node writes it, taken with CHECKPOINT.
  std::string ours;
  {
    raft::Config c = node_config("1", address(25, 1));
    c.data_dir = dir.file("source");
    TestNode source(c);
    source->start();
    REQUIRE(is_ok(source->execute({"set", "bin", std::string("\0\xff'\\\n", 5)})));
    REQUIRE(typed(source->execute({"hset", "h", "f", "v"})) == "1");
    REQUIRE(typed(source->execute({"rpush", "l", "a", "b"})) == "2");
    REQUIRE(is_ok(source->execute({"checkpoint"})));
    REQUIRE(eventually(long_wait(), [&] {
      for (const auto& e : fs::directory_iterator(c.data_dir))
        if (e.path().extension() == ".snap") ours = e.path().string();
      return !ours.empty();
    }));
  }
  const std::string text = read_file(ours);
  const auto write = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir.file(name), std::ios::binary) << content;
    return dir.file(name);
  };
  const auto found_with = [&](const std::string& file, int node) {
    raft::Config c = node_config("1", address(25, node));
    c.data_dir = dir.file("d" + std::to_string(node));
    c.load_snapshot = file;
    return c;
  };

  SECTION("the file as the data directory holds it, or without its header line") {
    const std::string bare = text.substr(text.find('\n') + 1);
    for (const std::string& file : {write("ours.snap", text), write("bare.snap", bare)}) {
      TestNode node(found_with(file, file == dir.file("ours.snap") ? 2 : 3));
      REQUIRE_NOTHROW(node->start());
      CHECK(stored(*node, "bin") == std::string("\0\xff'\\\n", 5));
      CHECK(typed(node->execute({"hget", "h", "f"})) == "'v'");
      CHECK(typed(node->execute({"lrange", "l", "0", "-1"})) == "['a', 'b']");
      CHECK(is_ok(node->execute({"set", "after", "load"})));
    }
  }
  SECTION("pyraft's checkpoint") {
    TestNode node(found_with(write("dump.dat", "{'ttl': {}, 'k': 'v', 'q': ['x'], '_META_': {'id': '1', "
                                               "'term': 11, 'index': 10, 'state': 'l', 'ensemble': {}}}"),
                             4));
    REQUIRE_NOTHROW(node->start());
    CHECK(stored(*node, "k") == "v");
    CHECK(typed(node->execute({"lindex", "q", "0"})) == "'x'");
  }
  SECTION("a damaged file is refused by name, and the retry with a good one loads it") {
    std::string damaged = text;
    damaged[damaged.size() - 3] ^= 0x20;
    const raft::Config bad = found_with(write("damaged.snap", damaged), 5);
    {
      TestNode node(bad);
      CHECK_THROWS_WITH(node->start(), Contains("damaged.snap") && Contains("checksum"));
    }
    CHECK_FALSE(fs::exists(bad.data_dir));
    {
      TestNode node(found_with(write("garbage.dat", "not a snapshot"), 5));
      CHECK_THROWS_WITH(node->start(), Contains("garbage.dat") && Contains("pyraft"));
    }
    CHECK_FALSE(fs::exists(bad.data_dir));
    TestNode node(found_with(write("good.snap", text), 5));
    REQUIRE_NOTHROW(node->start());
    CHECK(typed(node->execute({"hget", "h", "f"})) == "'v'");
  }
}

TEST_CASE("INFO answers only the sections asked for, and ROLE shows other members' progress only on the leader",
          "[runtime]") {
  Cluster c(26, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = leader == 1 ? 2 : 1;
  REQUIRE(is_ok(c[leader].execute({"set", "k", "v"})));

  const auto info = [&](int node, std::vector<std::string> words) {
    words.insert(words.begin(), "info");
    return std::string(c[node].execute(words).text());
  };
  const std::string raft_only = info(follower, {"raft"});
  CHECK_THAT(raft_only, StartsWith("# Raft\r\n") && Contains("raft_role:follower"));
  CHECK_THAT(raft_only, !Contains("# Server") && !Contains("# Keyspace"));
  CHECK_THAT(info(follower, {"RAFT"}), StartsWith("# Raft\r\n") && !Contains("# Server"));  // indexes may move
  CHECK_THAT(info(follower, {"server", "keyspace"}),
             StartsWith("# Server\r\n") && Contains("\r\n\r\n# Keyspace\r\n") && !Contains("# Raft"));
  CHECK(info(follower, {"nosuchsection"}).empty());
  for (const auto& all : std::vector<std::vector<std::string>>{{}, {"all"}, {"everything"}})
    CHECK_THAT(info(follower, all), Contains("# Server") && Contains("# Raft") && Contains("# Keyspace"));

  // ROLE: [role, id, term, leader, leader address, commit, applied, [[id, address, kind, match, lag] ...]]
  const auto progress_of = [&](int node) {
    std::map<std::string, std::string> out;  // member -> "match/lag"
    raft::Reply role = c[node].execute({"role"});
    REQUIRE(role.elements.size() == 8);
    for (const auto& m : role.elements[7].elements) {
      REQUIRE(m.elements.size() == 5);
      out[m.elements[0].str] = typed(m.elements[3]) + "/" + typed(m.elements[4]);
    }
    return out;
  };
  REQUIRE(eventually(long_wait(), [&] {  // the leader sees every follower caught up
    auto p = progress_of(leader);
    return p.size() == 3 && std::all_of(p.begin(), p.end(), [](const auto& kv) { return kv.second.find("/0") != std::string::npos; });
  }));
  for (const auto& [id, shown] : progress_of(follower)) {
    if (id == std::to_string(follower))
      CHECK_THAT(shown, EndsWith("/0"));
    else
      CHECK(shown == "nil/nil");
  }
}

// =============================================================================================
// 15. Pipelining
// =============================================================================================

TEST_CASE("pipelined replies come in request order when a write waits for its commit and the next command is "
          "answered at once, on the leader and on a follower",
          "[runtime]") {
  // A write is answered once it is committed and applied (after a round trip to a follower; on
  // a follower, also the forward to the leader and back), while PING and ECHO are answered by
  // the poll thread at once: without the reordering the replies would come in completion order.
  Cluster c(28, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = c.other_than(leader);
  for (const int node : {leader, follower}) {
    INFO((node == leader ? "leader " : "follower ") << node);
    const std::string p = "n" + std::to_string(node) + ":";
    const std::vector<std::vector<std::string>> commands = {
        {"SET", p + "a", "1"},   {"PING"},          {"INCR", p + "n"},   {"ECHO", "after-incr"},
        {"SET", p + "b", "2"},   {"SET", p + "c", "3"}, {"PING", "after-two-sets"}, {"GET", p + "a"},
        {"INCR", p + "n"},       {"ECHO", "last"}};
    const std::vector<std::string> expected = {"+OK", "+PONG", "1", "'after-incr'", "+OK", "+OK",
                                               "'after-two-sets'", "'1'", "2", "'last'"};
    CHECK(pipelined(c[node].address(), commands) == expected);
  }
}
