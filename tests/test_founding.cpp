// How a node starts: who founds a cluster, and what a crash during the start leaves behind.
//
//   [runtime]  nodes in this process (raft::Node), with a fake member of an existing cluster
//              that says HELLO to a founder's peer port as a leader's link would, and a
//              fault-injecting fsync hook that stops a -l start at every step of writing.
//   [process]  the article's walkthrough with run_raft: its founder wiped and restarted with
//              its original command line.
#include <catch2/catch.hpp>

#include "raft.hpp"
#include "proc_cluster.hpp"
#include "fake_peer.hpp"

#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

using proc_cluster::Net;
using proc::scaled;

// ---- nodes in this process ---------------------------------------------------------------------

// One node's log lines, written by its threads and read by the test.
class LogLines {
 public:
  void add(const std::string& line) {
    std::lock_guard<std::mutex> lock(mu_);
    text_ += line + "\n";
  }
  bool contains(const std::string& what) const {
    std::lock_guard<std::mutex> lock(mu_);
    return text_.find(what) != std::string::npos;
  }
  std::string text() const {
    std::lock_guard<std::mutex> lock(mu_);
    return text_;
  }

 private:
  mutable std::mutex mu_;
  std::string text_;
};

// A raft::Node whose log goes to `logs`, with the test's time scale.
std::unique_ptr<raft::Node> make_node(raft::Config c, const std::shared_ptr<LogLines>& logs,
                                      raft::testing::Hooks hooks = {}) {
  c.time_scale = proc::time_scale();
  c.log_sink = [logs](raft::LogLevel, const std::string& line) { logs->add(line); };
  return std::make_unique<raft::Node>(std::move(c), std::move(hooks));
}

raft::Config founder_config(const Net& net, const std::string& data_dir) {
  raft::Config c;
  c.id = "1";
  c.address = net.ip(1) + ":7000";
  c.data_dir = data_dir;
  return c;
}

using proc::info_field;  // of a node too

using test_support::stored;

// What a member of an existing cluster does to a member's address: its link connects (again
// and again while nothing listens, as PeerLink does) and completes the handshake with the
// cluster id.
class FakeMember {
 public:
  FakeMember(std::string from_ip, std::string to_ip, std::string cluster_id)
      : from_(std::move(from_ip)), to_(std::move(to_ip)), cluster_(std::move(cluster_id)) {
    thread_ = std::thread([this] { run(); });
  }
  ~FakeMember() {
    stop_ = true;
    thread_.join();
  }
  std::string address() const { return from_ + ":7000"; }
  // What the contacted node answered to the HELLO ("" until it answered).
  std::string answer() const {
    std::lock_guard<std::mutex> lock(mu_);
    return answer_;
  }

 private:
  void run() {
    while (!stop_) {
      std::string error;
      const int fd = raft::detail::connect_tcp(from_, to_, 7001, static_cast<int>(scaled(500).count()), error);
      if (fd < 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        continue;
      }
      raft::detail::PeerSession session;
      resp::Value v;
      const bool done = test_support::peer_hello(fd, cluster_, "2", "5eed0000000000000000000000000002", address(), "",
                                                 session, v, static_cast<int>(scaled(5000).count()));
      ::close(fd);
      if (!done && !starts_with(v.str, "ERR")) continue;  // no answer: the node was not listening yet
      std::lock_guard<std::mutex> lock(mu_);
      answer_ = v.is_error() ? "-" + v.str : v.str;
      break;
    }
  }
  static bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
  const std::string from_, to_, cluster_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::string answer_;
  std::thread thread_;
};

// Starts `node` on another thread (a founder's start() returns after it listened).
std::future<void> start_async(raft::Node& node) {
  return std::async(std::launch::async, [&node] { node.start(); });
}

}  // namespace

// ---- 1. a founder listens before it founds --------------------------------------------------------

TEST_CASE("a founder whose address a member of an existing cluster keeps contacting does not found, says "
          "how to rejoin, and never founds when restarted",
          "[runtime]") {
  const Net net(1);
  proc::TempDir dir("founding");
  const raft::Config config = founder_config(net, dir / "d1");
  const std::string cluster = "c1a55e5c1a55e5c1";
  // As the leader of a cluster that counts this address as a member: its link to the address
  // connects again and again until something listens there, and says HELLO.
  FakeMember member(net.ip(2), net.ip(1), cluster);
  {
    auto logs = std::make_shared<LogLines>();
    auto node = make_node(config, logs);
    REQUIRE_NOTHROW(node->start());
    INFO(logs->text());
    CHECK(proc::eventually(scaled(5000), [&] { return member.answer() == "WELCOME"; }));
    CHECK(info_field(*node, "raft_cluster_id") == cluster);
    CHECK(logs->contains("[WARNING]"));
    CHECK(logs->contains("of cluster " + cluster));
    CHECK(logs->contains("restart it with -e " + member.address()));
    const raft::Reply w = node->execute({"set", "k", "second cluster"});
    CHECK(w.is_error());
    CHECK(node->state() != 'l');
    CHECK_FALSE(logs->contains(" is a leader"));
  }
  // Restarted with the same command line: the directory says which cluster it belongs to.
  auto logs = std::make_shared<LogLines>();
  auto node = make_node(config, logs);
  REQUIRE_NOTHROW(node->start());
  INFO(logs->text());
  CHECK_FALSE(logs->contains("listening"));
  CHECK(logs->contains("waits to be added to cluster " + cluster));
  CHECK(info_field(*node, "raft_cluster_id") == cluster);
  CHECK(node->execute({"set", "k", "second cluster"}).is_error());
  CHECK_FALSE(logs->contains(" is a leader"));
}

TEST_CASE("a founder asked to stop while it listens leaves no data directory, and founds once nobody "
          "contacts it for the whole period",
          "[runtime]") {
  const Net net(2);
  proc::TempDir dir("founding");
  const raft::Config config = founder_config(net, dir / "d1");
  {
    auto logs = std::make_shared<LogLines>();
    auto node = make_node(config, logs);
    std::future<void> started = start_async(*node);
    REQUIRE(proc::eventually(scaled(5000), [&] { return logs->contains("listening"); }));
    // A crash now leaves nothing that a restart would take for a founded cluster.
    CHECK_FALSE(fs::exists(config.data_dir));
    node->request_stop();
    REQUIRE(started.wait_for(scaled(10000)) == std::future_status::ready);
    CHECK_THROWS_WITH(started.get(), Contains("nothing was written"));
    CHECK_FALSE(fs::exists(config.data_dir));
  }
  auto logs = std::make_shared<LogLines>();
  auto node = make_node(config, logs);
  REQUIRE_NOTHROW(node->start());
  INFO(logs->text());
  CHECK(logs->contains("listening"));
  CHECK(proc::eventually(scaled(5000), [&] { return node->state() == 'l'; }));
  CHECK(node->execute({"set", "k", "v"}).str == "OK");
}

// ---- 2. -l survives a crash at every step ------------------------------------------------------------

TEST_CASE("a founder started with -l that stops at any step of creating its data directory loads the "
          "snapshot when started again with the same -l",
          "[runtime]") {
  const Net net(3);
  proc::TempDir dir("load");
  const std::string file = dir / "dump.dat";
  std::ofstream(file) << "{'ttl': {}, 'k': 'v', 'n': '42', '_META_': {'id': '1', 'term': 11, 'index': 10, "
                         "'state': 'l', 'ensemble': {}}}";
  // Start k: its k-th fsync and every later one fail (EIO), so the storage stops there as a
  // crash would stop it (what was renamed into place stays, what was not never appears); then
  // it is started again with the same -l and nothing failing. The starts run side by side,
  // each on its own address and directory (each founder listens first).
  struct Outcome {
    bool stopped = false;  // the failing start threw: the crash came while it wrote
    std::string why, restart_error, k, n, get, log;
    bool leads = false;
  };
  const auto run = [&](int k) {
    Outcome o;
    raft::Config config = founder_config(net, dir / ("d" + std::to_string(k)));
    config.address = net.ip(k) + ":7000";
    config.load_snapshot = file;
    {
      auto calls = std::make_shared<std::atomic<int>>(0);
      raft::testing::Hooks failing;
      failing.fsync = [calls, k](int fd) {
        if (++*calls >= k) {
          errno = EIO;
          return -1;
        }
        return ::fsync(fd);
      };
      auto node = make_node(config, std::make_shared<LogLines>(), failing);
      try {
        node->start();
        return o;  // the start wrote everything; a later write failed
      } catch (const std::exception& e) {
        o.stopped = true;
        o.why = e.what();
      }
    }
    auto logs = std::make_shared<LogLines>();
    auto node = make_node(config, logs);
    try {
      node->start();
    } catch (const std::exception& e) {
      o.restart_error = e.what();
      return o;
    }
    o.k = stored(*node, "k");
    o.n = stored(*node, "n");
    o.leads = proc::eventually(scaled(5000), [&] { return node->state() == 'l'; });
    o.get = node->execute({"get", "k"}).str;
    o.log = logs->text();
    return o;
  };
  constexpr int kStarts = 16;  // more than the fsyncs of a start with -l
  std::vector<std::future<Outcome>> outcomes;
  for (int k = 1; k <= kStarts; ++k) outcomes.push_back(std::async(std::launch::async, run, k));
  int crash_points = 0;
  for (int k = 1; k <= kStarts; ++k) {
    const Outcome o = outcomes[static_cast<std::size_t>(k - 1)].get();
    if (!o.stopped) continue;
    ++crash_points;
    INFO("fsync " << k << " failed: " << o.why << "\nthe restart logged:\n" << o.log);
    CHECK(o.restart_error == "");
    CHECK(o.k == "v");
    CHECK(o.n == "42");
    CHECK(o.leads);
    CHECK(o.get == "v");
  }
  std::printf("-l: %d steps of creating the data directory, each stopped and restarted\n", crash_points);
  CHECK(crash_points >= 4);           // the hard state, the identity, the snapshot and their directory
  CHECK(crash_points < kStarts - 1);  // and some starts got through: every step was tried
}

// ---- 3. the article's founder wiped -------------------------------------------------------------------

TEST_CASE("the article's founder restarted with its original command line after its data directory is lost "
          "founds no second cluster, the old data stays served, and it rejoins",
          "[process]") {
  using namespace proc_cluster;
  Cluster c(4, "wiped_founder");
  form_three(c);
  const std::string cluster = c[1].field("raft_cluster_id");
  REQUIRE_FALSE(cluster.empty());
  REQUIRE(show(call_until_answered(c.all(), {"SET", "before", "1"}, scaled(10000))) == "OK");
  REQUIRE(show(call_until_answered(c.all(), {"RPUSH", "list", "a", "b"}, scaled(10000))) == "2");

  Node& founder = c[0];
  const std::vector<Node*> others = c.all_but(founder);
  founder.kill();
  std::filesystem::remove_all(founder.data_dir);
  REQUIRE(wait_agreed_leader(others, 3, scaled(10000)) != nullptr);
  founder.restart();  // run_raft -i 1 -a IP:7000 -d DIR, as it was first started
  REQUIRE(founder.process().wait_for_err("node 1 at ", scaled(10000)));

  // Not a second cluster: the founder reports the first cluster's id, never leads, and what
  // it answers is the first cluster's (an error, or the first cluster's data).
  CHECK(founder.field("raft_cluster_id") == cluster);
  const std::string get_before = show(founder.call({"GET", "before"}));
  INFO("GET before on the wiped founder: " << get_before);
  CHECK((get_before == "1" || starts_with(get_before, "-")));
  const std::string probe = show(founder.call({"SET", "probe", "written"}));
  INFO("SET probe on the wiped founder: " << probe);
  if (probe == "OK") {  // forwarded to the first cluster's leader: it must be there
    CHECK(show(call_until_answered(others, {"GET", "probe"}, scaled(10000))) == "written");
  } else {
    CHECK(starts_with(probe, "-"));
  }
  CHECK(proc::count(founder.log(), " is a leader") == 0);
  for (Node* n : others) CHECK(show(call_until_answered({n}, {"GET", "before"}, scaled(10000))) == "1");
  CHECK(show(call_until_answered(others, {"SET", "after", "2"}, scaled(10000))) == "OK");

  // Rejoining: the leader re-adds a member that answers it under a new server id, as a
  // learner, catches it up and promotes it: no operator needed. (The warning still names the
  // command that asks, for a cluster whose leader cannot reach the node.)
  const std::string log = founder.log();
  const std::string marker = "restart it with -e ";
  const auto at = log.find(marker);
  INFO(log);
  REQUIRE(at != std::string::npos);
  CHECK(log.find("[WARNING]") < at);
  const std::string peer = log.substr(at + marker.size(), log.find(' ', at + marker.size()) - at - marker.size());
  CHECK((peer == c[1].address() || peer == c[2].address()));
  REQUIRE(wait_agreed_leader(c.all(), 3, scaled(20000)) != nullptr);
  CHECK(founder.field("raft_cluster_id") == cluster);
  Client ro = founder.connect();
  REQUIRE(show(ro.call({"READONLY"})) == "OK");
  CHECK(proc::eventually(scaled(10000), [&] { return show(ro.call({"GET", "after"})) == "2"; }));
  CHECK(show(ro.call({"GET", "before"})) == "1");
  CHECK(show(ro.call({"LRANGE", "list", "0", "-1"})) == "[a, b]");
}

// ---- 4. a start() that ends early -----------------------------------------------------------------

namespace {

// Descriptors open in this process.
int open_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

// True once the other end closed `fd` (within ms, scaled).
bool sees_close(int fd, long ms) {
  return proc::eventually(scaled(ms), [&] {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) return false;
    char buf[256];
    return ::recv(fd, buf, sizeof buf, 0) <= 0;
  });
}

}  // namespace

TEST_CASE("a founder whose Node::stop() is called while it listens gives up: start() throws, no leader, "
          "nothing founded",
          "[runtime]") {
  const Net net(5);
  proc::TempDir dir("founding");
  const raft::Config config = founder_config(net, dir / "d1");
  {
    auto logs = std::make_shared<LogLines>();
    auto node = make_node(config, logs);
    std::future<void> started = start_async(*node);
    REQUIRE(proc::eventually(scaled(5000), [&] { return logs->contains("listening"); }));
    node->stop();  // from another thread, as a program's signal handling would
    REQUIRE(started.wait_for(scaled(10000)) == std::future_status::ready);
    INFO(logs->text());
    CHECK_THROWS_WITH(started.get(), Contains("asked to stop while listening"));
    CHECK(node->state() != 'l');
    CHECK_FALSE(logs->contains(" is a leader"));
    CHECK_FALSE(fs::exists(config.data_dir));
  }
  // Nothing was founded: started again, it listens again (and its ports are free).
  auto logs = std::make_shared<LogLines>();
  auto node = make_node(config, logs);
  REQUIRE_NOTHROW(node->start());
  INFO(logs->text());
  CHECK(logs->contains("listening"));
  CHECK(proc::eventually(scaled(5000), [&] { return node->state() == 'l'; }));
}

TEST_CASE("a founder whose start() fails after it listened closes the connections it accepted while listening",
          "[runtime]") {
  const Net net(6);
  proc::TempDir dir("founding");
  std::ofstream(dir / "a-file") << "x";
  // Its data directory cannot be created (ENOTDIR): start() fails once it has listened.
  const raft::Config config = founder_config(net, dir / "a-file/d1");
  auto logs = std::make_shared<LogLines>();
  const int before = open_fds();
  int peer = -1;
  {
    auto node = make_node(config, logs);
    std::future<void> started = start_async(*node);
    REQUIRE(proc::eventually(scaled(5000), [&] { return logs->contains("listening"); }));
    // A connection to its peer port that says nothing yet; the founder accepts it (one more
    // descriptor here) while it listens.
    const int listening = open_fds();
    std::string error;
    peer = raft::detail::connect_tcp(net.ip(2), net.ip(1), 7001, static_cast<int>(scaled(5000).count()), error);
    REQUIRE(peer >= 0);
    CHECK(proc::eventually(scaled(5000), [&] { return open_fds() == listening + 2; }));
    REQUIRE(started.wait_for(scaled(10000)) == std::future_status::ready);
    INFO(logs->text());
    CHECK_THROWS_WITH(started.get(), Contains("cannot create directory"));
    CHECK(open_fds() == before + 1);  // ours alone
    CHECK(sees_close(peer, 5000));
  }
  ::close(peer);
  CHECK(open_fds() == before);
}
