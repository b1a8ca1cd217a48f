// Forwarded writes applied at most once, atomic write handlers, and one set of command limits
// (section 5 with section 2's SessionTable and undo record), in process: raft::Node objects on
// loopback, link faults through the runtime's test hook (PeerLink::Fault), and a peer played by
// hand (FakePeer) to drive the leader's side exactly.
#include "in_process.hpp"
#include "fake_peer.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <new>
#include <optional>
#include <stdexcept>

using namespace in_process;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using Fault = raft::detail::PeerLink::Fault;

namespace {

// ---- a peer played by hand -------------------------------------------------------------------

/// Says HELLO to a node as a peer and sends it FWD messages; listens on its own peer port
/// (port + 1) for what the node sends back (FWDR), answering the node's handshake and WELCOME.
class FakePeer {
 public:
  FakePeer(std::string ip, int port) : ip_(std::move(ip)), port_(port) {
    std::string error;
    listen_fd_ = raft::detail::listen_tcp(ip_, port_ + 1, error);
    if (listen_fd_ < 0) throw std::runtime_error(error);
  }
  ~FakePeer() {
    for (int fd : {listen_fd_, out_fd_})
      if (fd >= 0) ::close(fd);
    for (auto& c : in_) ::close(c.fd);
  }
  FakePeer(const FakePeer&) = delete;
  FakePeer& operator=(const FakePeer&) = delete;

  std::string address() const { return ip_ + ":" + std::to_string(port_); }

  /// Connects to the node at `node_address` and says HELLO as node `id` with `server_id`;
  /// true when welcomed.
  bool hello(const std::string& node_address, const std::string& cluster_id, const std::string& id,
             const std::string& server_id) {
    if (out_fd_ >= 0) ::close(out_fd_);
    raft::detail::HostPort hp;
    std::string error;
    if (!raft::detail::parse_host_port(node_address, hp, error)) return false;
    out_fd_ = raft::detail::connect_tcp(ip_, hp.host, hp.port + 1, timeout_ms(), error);
    if (out_fd_ < 0) return false;
    resp::Value v;
    return test_support::peer_hello(out_fd_, cluster_id, id, server_id, address(), "", out_session_, v, timeout_ms()) &&
           v.type == resp::Type::SimpleString && v.str == "WELCOME";
  }
  bool send(const std::vector<std::string>& words) {
    return out_fd_ >= 0 && test_support::peer_send(out_fd_, out_session_, words);
  }
  /// True once the node closed the connection hello() opened (within 5 s, scaled).
  bool closed_by_node() {
    const auto deadline = std::chrono::steady_clock::now() + scaled(5000);
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) == 1) {
        char buf[256];
        if (::recv(out_fd_, buf, sizeof buf, 0) <= 0) return true;
      }
    }
    return false;
  }
  /// The next message the node sends this peer (HELLO aside), within `ms` (scaled); empty if
  /// none came.
  std::vector<std::string> next(int ms = 10000) {
    const auto deadline = std::chrono::steady_clock::now() + scaled(ms);
    std::vector<std::string> words;
    for (;;) {
      for (auto& c : in_) {
        c.parser.feed(c.peer.plain());
        c.peer.plain().clear();
        while (c.parser.next(words) == resp::Status::Ok)
          if (!words.empty()) return words;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return {};
      std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
      for (auto& c : in_) fds.push_back({c.fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), static_cast<int>(left.count())) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        const int fd = ::accept(listen_fd_, nullptr, nullptr);
        if (fd >= 0) in_.push_back(Inbound{fd, test_support::PeerInbound(fd), resp::RequestParser()});
      }
      for (std::size_t i = fds.size() - 1; i >= 1; --i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        char buf[65536];
        const ssize_t r = ::recv(fds[i].fd, buf, sizeof buf, 0);
        if (r > 0 && in_[i - 1].peer.take(buf, static_cast<std::size_t>(r))) {
          continue;
        } else {  // the node closed it (it stopped, or reconnects), or it did not check
          ::close(fds[i].fd);
          in_.erase(in_.begin() + static_cast<std::ptrdiff_t>(i - 1));
        }
      }
    }
  }

 private:
  struct Inbound {
    int fd;
    test_support::PeerInbound peer;  // the handshake, then the frames' plain bytes
    resp::RequestParser parser;
  };
  static int timeout_ms() { return static_cast<int>(scaled(5000).count()); }

  std::string ip_;
  int port_;
  int listen_fd_ = -1;
  int out_fd_ = -1;
  raft::detail::PeerSession out_session_;
  std::vector<Inbound> in_;
};

/// The FWDR a leader sends for a reply (encoded as the leader encodes it).
std::vector<std::string> fwdr(std::uint64_t nonce, std::uint64_t seq, const std::string& status, const raft::Reply& reply) {
  std::string encoded;
  resp::write(encoded, reply, resp::kProtocolKept);
  return {"FWDR", std::to_string(nonce), std::to_string(seq), status, encoded};
}

std::string show(const std::vector<std::string>& words) {
  std::string s;
  for (const auto& w : words) s += (s.empty() ? "" : " ") + raft::detail::repr(w);
  return s.empty() ? "(nothing)" : s;
}

/// A cluster of three whose writes time out after `append_timeout_ms` (forwards wait that plus
/// an election timeout); returns the leader, `follower` and `third`.
struct Three {
  Cluster c;
  int leader = 0, follower = 0, third = 0;
  Three(int test, int append_timeout_ms)
      : c(test, 3, [=](raft::Config& config) { config.append_timeout_ms = append_timeout_ms; }) {
    c.start();
    leader = c.wait_for_leader();
    REQUIRE(leader != 0);
    follower = c.other_than(leader);
    third = c.other_than(leader, follower);
    // The follower's link to the leader is up, and forwarding works.
    REQUIRE(is_ok(c[follower].execute({"set", "warm", "1"})));
  }
  raft::detail::Runtime& rt(int i) { return raft::testing::runtime(c[i]); }
  std::string id(int i) { return c[i].id(); }
  /// Writes `key` through the leader and waits until every node applied it: whatever was
  /// applied before is applied everywhere.
  void settle(const std::string& key) {
    REQUIRE(is_ok(c[leader].execute({"set", key, "1"})));
    for (int i = 1; i <= 3; ++i) REQUIRE(eventually(long_wait(), [&] { return stored(c[i], key) == "1"; }));
  }
};

// The leader's clock (the test's) moves to `to` in steps of SessionTable::kMaxClockStepMs with a
// write at each: leader time passing steadily, which session time follows (a single jump
// counts as one step).
void pass_leader_time(raft::Node& leader, std::atomic<std::int64_t>& clock, std::int64_t to) {
  using raft::detail::SessionTable;
  for (std::int64_t at = clock.load() + SessionTable::kMaxClockStepMs; at < to; at += SessionTable::kMaxClockStepMs) {
    clock.store(at);
    REQUIRE(is_ok(leader.execute({"set", "time-passes", std::to_string(at)})));
  }
  clock.store(to);
}

}  // namespace

// =============================================================================================
// Forwarded writes, the follower's side
// =============================================================================================

TEST_CASE("a forward still queued on a stalled link at its deadline is answered TRYAGAIN and never applied",
          "[runtime][forward]") {
  Three t(100, 600);
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::Stall);
  const raft::Reply r = t.c[t.follower].execute({"incr", "n"});
  INFO(typed(r));
  CHECK_THAT(r.str, StartsWith("TRYAGAIN"));
  CHECK(r.is_error());

  // The link recovers; what it still held would go now, before this write.
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::None);
  REQUIRE(is_ok(t.c[t.follower].execute({"set", "after", "1"})));
  t.settle("settled");
  for (int i = 1; i <= 3; ++i) CHECK(stored(t.c[i], "n") == "(none)");
}

TEST_CASE("a client's INCR retried through a follower after its forward's deadline is applied once",
          "[runtime][forward]") {
  Three t(101, 600);
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::Stall);
  const raft::Reply first = t.c[t.follower].execute({"incr", "n"});
  INFO("first: " << typed(first));
  REQUIRE(first.is_error());
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::None);

  // The client retries, as clients do after an error.
  const raft::Reply retry = t.c[t.follower].execute({"incr", "n"});
  INFO("retry: " << typed(retry));
  CHECK(retry.type == resp::Type::Integer);
  CHECK(retry.num == 1);
  t.settle("settled");
  for (int i = 1; i <= 3; ++i) CHECK(stored(t.c[i], "n") == "1");
}

TEST_CASE("a forward whose answer was lost is sent again on a new connection and answered with the first reply",
          "[runtime][forward]") {
  Three t(102, 3000);
  REQUIRE(is_ok(t.c[t.leader].execute({"set", "n", "10"})));
  // The leader's answers to the follower are lost on the way.
  t.rt(t.leader).set_link_fault_for_test(t.id(t.follower), Fault::Drop);
  auto reply = t.c[t.follower].execute_async({"incr", "n"});
  REQUIRE(eventually(long_wait(), [&] { return stored(t.c[t.leader], "n") == "11"; }));
  t.rt(t.leader).set_link_fault_for_test(t.id(t.follower), Fault::None);
  // The follower's connection to the leader breaks and comes back: it sends the write again.
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::Drop);
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::None);

  REQUIRE(ready_within(reply, long_wait()));
  const raft::Reply r = reply.get();
  INFO(typed(r));
  CHECK(r.type == resp::Type::Integer);
  CHECK(r.num == 11);
  t.settle("settled");
  for (int i = 1; i <= 3; ++i) CHECK(stored(t.c[i], "n") == "11");
}

TEST_CASE("a forward whose answer was lost is answered by the next leader with the first reply, applied once",
          "[runtime][forward]") {
  Three t(103, 3000);
  // The leader's answers (and heartbeats) to the follower wait in a stalled link.
  t.rt(t.leader).set_link_fault_for_test(t.id(t.follower), Fault::Stall);
  auto reply = t.c[t.follower].execute_async({"incr", "n"});
  REQUIRE(eventually(long_wait(), [&] { return stored(t.c[t.leader], "n") == "1"; }));

  // Leadership moves to the third node; the follower hears of it and sends its write there.
  raft::AdminResult moved;
  REQUIRE(eventually(long_wait(), [&] {
    moved = t.c[t.leader].transfer_leadership(t.id(t.third));
    return moved.ok();
  }));
  REQUIRE(eventually(long_wait(), [&] { return t.c[t.follower].leader() == t.id(t.third); }));
  REQUIRE(ready_within(reply, long_wait()));
  const raft::Reply r = reply.get();
  INFO(typed(r));
  CHECK(r.type == resp::Type::Integer);
  CHECK(r.num == 1);

  t.rt(t.leader).set_link_fault_for_test(t.id(t.follower), Fault::None);
  t.leader = t.third;
  t.settle("settled");
  for (int i = 1; i <= 3; ++i) CHECK(stored(t.c[i], "n") == "1");
}

TEST_CASE("writes pipelined through a follower are applied once and in order when their link is cut and restored",
          "[runtime][forward]") {
  Three t(104, 3000);
  // The follower's forwards leave and are lost; the connection is then restored.
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::Drop);
  std::vector<std::future<raft::Reply>> replies;
  for (int i = 1; i <= 20; ++i) replies.push_back(t.c[t.follower].execute_async({"rpush", "l", std::to_string(i)}));
  t.rt(t.follower).set_link_fault_for_test(t.id(t.leader), Fault::None);
  for (int i = 1; i <= 20; ++i) {
    REQUIRE(ready_within(replies[static_cast<std::size_t>(i - 1)], long_wait()));
    const raft::Reply r = replies[static_cast<std::size_t>(i - 1)].get();
    INFO("write " << i << ": " << typed(r));
    CHECK(r.num == i);
  }
  t.settle("settled");
  const raft::Reply range = t.c[t.leader].execute({"lrange", "l", "0", "-1"});
  std::string got;
  for (const auto& e : range.elements) got += e.str + " ";
  CHECK(got == "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 ");
}

// =============================================================================================
// Forwarded writes, the leader's side (a peer played by hand)
// =============================================================================================

TEST_CASE("the leader applies a forwarded write once however often it arrives, across a snapshot and a restart",
          "[runtime][forward]") {
  TempDir dir("forward");
  raft::Config config = node_config("1", address(110, 1));
  config.data_dir = dir.file("data");
  auto node = std::make_unique<TestNode>(config);
  (*node)->start();
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
  REQUIRE(is_ok((*node)->execute({"set", "n", "0"})));
  const std::string cluster_id = info_field(node->node(), "raft_cluster_id");
  const raft::detail::SessionTable::Key session{"9", "feed", 77};

  FakePeer peer(ip(110, 9), 7090);
  REQUIRE(peer.hello(address(110, 1), cluster_id, "9", "feed"));
  REQUIRE(peer.send({"FWD", "77", "1", "1", "", "incr", "n"}));
  std::vector<std::string> m = peer.next();
  CHECK(show(m) == show(fwdr(77, 1, "done", raft::Reply::integer(1))));
  // Sent again (as after a lost answer): the first reply, not a second increment.
  REQUIRE(peer.send({"FWD", "77", "1", "1", "", "incr", "n"}));
  CHECK(show(peer.next()) == show(fwdr(77, 1, "done", raft::Reply::integer(1))));
  CHECK(stored(node->node(), "n") == "1");

  // Across a snapshot.
  REQUIRE(is_ok((*node)->execute({"checkpoint"})));
  REQUIRE(eventually(long_wait(), [&] { return node->logs().contains("snapshot at index"); }));
  REQUIRE(peer.send({"FWD", "77", "1", "1", "", "incr", "n"}));
  CHECK(show(peer.next()) == show(fwdr(77, 1, "done", raft::Reply::integer(1))));
  // The follower no longer waits for 1: its reply goes, and a late copy of 1 does not run.
  REQUIRE(peer.send({"FWD", "77", "2", "2", "", "incr", "n"}));
  CHECK(show(peer.next()) == show(fwdr(77, 2, "done", raft::Reply::integer(2))));
  REQUIRE(peer.send({"FWD", "77", "1", "1", "", "incr", "n"}));
  m = peer.next();
  REQUIRE(m.size() == 5);
  CHECK(m[3] == "done");
  CHECK_THAT(m[4], StartsWith("-TIMEOUT"));
  CHECK(stored(node->node(), "n") == "2");
  const raft::Store before = snapshot_of_store(node->node());
  CHECK(before.sessions().reply(session, 1) == nullptr);
  REQUIRE(before.sessions().reply(session, 2) != nullptr);

  // A restart replays the snapshot and the log after it (two copies and a stale one).
  node.reset();
  node = std::make_unique<TestNode>(config);
  (*node)->start();
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
  REQUIRE(is_ok((*node)->execute({"set", "restarted", "1"})));  // applied: so is everything before
  CHECK(stored(node->node(), "n") == "2");
  CHECK(snapshot_of_store(node->node()).sessions() == before.sessions());
  REQUIRE(peer.hello(address(110, 1), cluster_id, "9", "feed"));
  REQUIRE(peer.send({"FWD", "77", "2", "2", "", "incr", "n"}));
  CHECK(show(peer.next()) == show(fwdr(77, 2, "done", raft::Reply::integer(2))));
  CHECK(stored(node->node(), "n") == "2");
}

TEST_CASE("the leader refuses, before appending it, a forwarded write it would not run", "[runtime][forward]") {
  TestNode node(node_config("1", address(111, 1)));
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  REQUIRE(is_ok(node->execute({"set", "k", "v"})));
  const std::string last = info_field(node.node(), "raft_last_index");

  FakePeer peer(ip(111, 9), 7090);
  REQUIRE(peer.hello(address(111, 1), info_field(node.node(), "raft_cluster_id"), "9", "feed"));
  std::vector<std::string> too_many{"FWD", "5", "3", "1", "", "del"};
  for (std::size_t i = 0; i < raft::detail::kMaxCommandWords; ++i) too_many.push_back("k");
  const std::vector<std::pair<std::vector<std::string>, std::string>> refused{
      {{"FWD", "5", "1", "1", "", "__expire", "k"}, "-ERR the leader has no write command '__expire'"},
      {{"FWD", "5", "2", "1", "", "nosuch", "k"}, "-ERR the leader has no write command 'nosuch'"},
      {too_many, "-ERR too many arguments"},
      {{"FWD", "5", "4", "1", "", "get", "k"}, "-ERR the leader has no write command 'get'"},
      {{"FWD", "5", "5", "1", "", "set", "k"}, "-ERR the leader has no write command 'set' taking 1 arguments"},
  };
  for (const auto& [fwd, error] : refused) {
    REQUIRE(peer.send(fwd));
    const std::vector<std::string> m = peer.next();
    INFO(fwd[5] << " -> " << show(m));
    REQUIRE(m.size() == 5);
    CHECK(m[2] == fwd[2]);
    CHECK(m[3] == "notrun");
    CHECK_THAT(m[4], StartsWith(error));
  }
  CHECK(info_field(node.node(), "raft_last_index") == last);  // nothing appended
  CHECK(stored(node.node(), "k") == "v");

  // A FWD whose lowest unanswered is above its own number is malformed: the link closes.
  REQUIRE(peer.send({"FWD", "5", "9", "10", "", "set", "k", "w"}));
  CHECK(peer.closed_by_node());
  CHECK(stored(node.node(), "k") == "v");
}

// =============================================================================================
// Atomic write handlers
// =============================================================================================

TEST_CASE("a write handler that changes keys and then throws changes nothing on any node, which all answer alike",
          "[runtime][forward]") {
  Cluster c(120, 3, [](raft::Config&) {});
  for (int i = 1; i <= 3; ++i)
    c[i].handler("change_then_throw", [](raft::Call& call) -> raft::Reply {
      call.data.put("a", raft::Store::Kind::String).str = "changed";
      if (raft::Store::Object* b = call.data.find_for_write("b", call.now_ms)) b->str += "-changed";
      call.data.erase("c");
      call.data.set_deadline("d", call.now_ms + 100000);
      call.data.put("new", raft::Store::Kind::String).str = "x";
      (void)std::stoi(call.words[1]);  // throws std::invalid_argument for "x"
      return raft::Reply::ok();
    }, "we", 1, 1);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  for (const char* k : {"a", "b", "c", "d"}) REQUIRE(is_ok(c[leader].execute({"set", k, "0"})));

  for (int from = 1; from <= 3; ++from) {  // proposed on the leader, and forwarded by the others
    const raft::Reply r = c[from].execute({"change_then_throw", "x"});
    INFO("from node " << from << ": " << typed(r));
    CHECK(r.is_error());
    CHECK_THAT(r.str, StartsWith("ERR handler failed: stoi"));
  }
  REQUIRE(is_ok(c[leader].execute({"set", "settled", "1"})));
  for (int i = 1; i <= 3; ++i) {
    REQUIRE(eventually(long_wait(), [&] { return stored(c[i], "settled") == "1"; }));
    INFO("node " << i);
    for (const char* k : {"a", "b", "c", "d"}) CHECK(stored(c[i], k) == "0");
    CHECK(stored(c[i], "new") == "(none)");
    CHECK(c[i].execute({"pttl", "d"}).num == -1);
  }
  // The same data everywhere, and the same replies kept for the forwarded ones.
  const raft::Store first = snapshot_of_store(c[1]);
  for (int i = 2; i <= 3; ++i) CHECK(snapshot_of_store(c[i]) == first);
  CHECK(c[leader].execute({"set", "still", "writable"}).str == "OK");
}

TEST_CASE("a write handler that runs out of memory stops the node, saying why and what to do", "[runtime][forward]") {
  TestNode node(node_config("1", address(121, 1)));
  node->handler("grow", [](raft::Call& call) -> raft::Reply {
    call.data.put("half", raft::Store::Kind::String).str = "applied";
    throw std::bad_alloc();
  }, "we", 0, 0);
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  auto reply = node->execute_async({"grow"});
  REQUIRE(ready_within(reply, long_wait()));
  const raft::Reply r = reply.get();
  INFO(typed(r));
  CHECK_THAT(r.str, StartsWith("MISCONF"));
  REQUIRE(eventually(long_wait(), [&] { return node.logs().contains("ran out of memory"); }));
  const std::string line = node.logs().line_with("ran out of memory");
  CHECK_THAT(line, StartsWith("[ERROR]"));
  CHECK_THAT(line, Contains("'grow'"));
  CHECK_THAT(line, Contains("Restart it"));
  auto joined = std::async(std::launch::async, [&] { node->join(); });
  const bool stopped = ready_within(joined, long_wait());
  if (!stopped) node->stop();
  CHECK(stopped);
}

TEST_CASE("a write handler that throws something other than a std::exception stops the node", "[runtime][forward]") {
  TestNode node(node_config("1", address(122, 1)));
  node->handler("odd", [](raft::Call&) -> raft::Reply { throw 42; }, "we", 0, 0);
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  auto reply = node->execute_async({"odd"});
  REQUIRE(ready_within(reply, long_wait()));
  CHECK_THAT(reply.get().str, StartsWith("MISCONF"));
  REQUIRE(eventually(long_wait(), [&] { return node.logs().contains("not a std::exception"); }));
  CHECK_THAT(node.logs().line_with("not a std::exception"), Contains("'odd'"));
}

// =============================================================================================
// One set of command limits
// =============================================================================================

namespace {
std::vector<std::string> del_of(std::size_t keys) {
  std::vector<std::string> words{"del"};
  for (std::size_t i = 0; i < keys; ++i) words.push_back("k" + std::to_string(i % 1000));
  return words;
}
}  // namespace

TEST_CASE("a write with more words than a command may have is refused before it is appended", "[runtime][forward]") {
  TestNode node(node_config("1", address(130, 1)));
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  REQUIRE(is_ok(node->execute({"set", "k", "v"})));
  const std::string last = info_field(node.node(), "raft_last_index");
  const raft::Reply r = node->execute(del_of(raft::detail::kMaxCommandWords));  // one word too many
  INFO(typed(r));
  CHECK_THAT(r.str, StartsWith("ERR too many arguments"));
  CHECK(info_field(node.node(), "raft_last_index") == last);  // nothing appended
  // The node goes on: nothing it cannot apply is in its log.
  CHECK(is_ok(node->execute({"set", "k", "w"})));
  CHECK(node->execute({"get", "k"}).str == "w");
  CHECK(info_field(node.node(), "raft_storage") == "ok");
}

TEST_CASE("an entry in the log longer than the command limits is applied, never refused at apply", "[runtime][forward]") {
  TempDir dir("limits");
  raft::Config config = node_config("1", address(131, 1));
  config.data_dir = dir.file("data");
  {
    TestNode node(config);
    node->start();
    REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
    REQUIRE(is_ok(node->execute({"set", "k0", "v"})));
  }
  // As a node with other limits (or another version) may have written it.
  {
    raft::StorageOptions options;
    options.dir = config.data_dir;
    raft::Recovered rec;
    raft::Storage storage = raft::Storage::open(options, rec);
    REQUIRE(!rec.entries.empty());
    raft::LogEntry e;
    e.index = rec.entries.back().index + 1;
    e.term = rec.hard_state.term;
    e.timestamp_ms = rec.entries.back().timestamp_ms;
    resp::write_command(e.payload, del_of(raft::detail::kMaxCommandWords + 10));
    raft::PersistBatch b;
    b.entries.push_back(e);
    REQUIRE(storage.write(b));
    REQUIRE(storage.sync());
  }
  TestNode node(config);
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  REQUIRE(is_ok(node->execute({"set", "after", "1"})));
  CHECK(stored(node.node(), "k0") == "(none)");  // deleted by the long entry
  CHECK_FALSE(node.logs().contains("stopping the apply loop"));
}

// =============================================================================================
// An entry this node has no handler for
// =============================================================================================

TEST_CASE("a node that has no handler for an entry in its log stops and says what to do", "[runtime][forward]") {
  TempDir dir("handler");
  raft::Config config = node_config("1", address(140, 1));
  config.data_dir = dir.file("data");
  {
    TestNode node(config);
    node->handler("bump", [](raft::Call& call) {
      call.data.put("bumped", raft::Store::Kind::String).str = "yes";
      return raft::Reply::ok();
    }, "we", 0, 0);
    node->start();
    REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
    REQUIRE(is_ok(node->execute({"bump"})));
  }
  TestNode node(config);  // started again without "bump"
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node.logs().contains("stopping the apply loop"); }));
  const std::string line = node.logs().line_with("stopping the apply loop");
  CHECK_THAT(line, Contains("'bump'"));
  CHECK_THAT(line, Contains("same handlers as the rest of the cluster"));
  CHECK_THAT(line, Contains("a newer version of raft.hpp wrote the entry"));
  CHECK(stored(node.node(), "bumped") == "(none)");
}

TEST_CASE("handler names starting with __ are the runtime's", "[runtime][forward]") {
  TestNode node(node_config("1", address(141, 1)));
  CHECK_THROWS_AS(node->handler("__fwd", [](raft::Call&) { return raft::Reply::ok(); }, "we"), std::invalid_argument);
  CHECK_THROWS_AS(node->handler("__expire", [](raft::Call&) { return raft::Reply::ok(); }, "we"), std::invalid_argument);
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  for (const char* name : {"__fwd", "__expire"}) {
    const raft::Reply r = node->execute({name, "k"});
    INFO(typed(r));
    CHECK_THAT(r.str, StartsWith("ERR unknown command"));
  }
}

// =============================================================================================
// Found in review: a full session table, answers lost on the leader's connection, the
// forwards' own byte budget
// =============================================================================================

TEST_CASE("a forwarded write refused for a full session table is answered not-run, and a later copy of it "
          "still runs once the sessions expire",
          "[runtime][forward]") {
  using raft::detail::SessionTable;
  // The leader's wall clock is the test's: entries are stamped with it, and sessions expire by it.
  auto clock = std::make_shared<std::atomic<std::int64_t>>(raft::detail::wall_ms());
  raft::testing::Hooks hooks;
  hooks.wall_clock = [clock] { return clock->load(); };
  TestNode node(node_config("1", address(150, 1)), hooks);
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  REQUIRE(is_ok(node->execute({"set", "n", "0"})));
  FakePeer peer(ip(150, 9), 7090);
  REQUIRE(peer.hello(address(150, 1), info_field(node.node(), "raft_cluster_id"), "9", "feed"));

  // As many sessions as the leader keeps, all active now (one per run of a forwarding node).
  const std::int64_t t0 = clock->load();
  for (std::size_t i = 1; i <= SessionTable::kMaxSessions; ++i)
    REQUIRE(peer.send({"FWD", std::to_string(i), "1", "1", "", "set", "k" + std::to_string(i), "v"}));
  for (std::size_t i = 1; i <= SessionTable::kMaxSessions; ++i) {
    const std::vector<std::string> m = peer.next();
    INFO(show(m));
    REQUIRE(m.size() == 5);
    REQUIRE(m[3] == "done");
  }
  REQUIRE(snapshot_of_store(node.node()).sessions().size() == SessionTable::kMaxSessions);

  // A new session's write, while none has been idle long enough to be forgotten: not run, and
  // the follower is told "notrun" (not "done"), so that it alone decides what its caller hears.
  pass_leader_time(node.node(), *clock, t0 + SessionTable::kIdleMs - 1);
  REQUIRE(peer.send({"FWD", "999999", "1", "1", "", "incr", "n"}));
  const std::vector<std::string> first = peer.next();
  INFO("first copy: " << show(first));
  REQUIRE(first.size() == 5);
  CHECK(first[2] == "1");
  CHECK(first[3] == "notrun");
  CHECK_THAT(first[4], StartsWith("-TRYAGAIN the leader remembers too many"));
  CHECK_THAT(first[4], Contains("was not run"));
  CHECK(stored(node.node(), "n") == "0");

  // Why "done" would be wrong: a copy of the same write (a follower sends it again when it
  // cannot know the first arrived) appended once the sessions expired runs.
  pass_leader_time(node.node(), *clock, t0 + SessionTable::kIdleMs);
  REQUIRE(peer.send({"FWD", "999999", "1", "1", "", "incr", "n"}));
  const std::vector<std::string> second = peer.next();
  INFO("second copy: " << show(second));
  CHECK(show(second) == show(fwdr(999999, 1, "done", raft::Reply::integer(1))));
  CHECK(stored(node.node(), "n") == "1");
}

TEST_CASE("a forwarded write whose first copy was refused for a full session table and whose second copy ran "
          "is answered with the reply of the copy that ran, never 'not run'",
          "[runtime][forward]") {
  using raft::detail::SessionTable;
  // Every node's wall clock is the test's (the leader's stamps its entries, and sessions expire
  // by those stamps).
  auto clock = std::make_shared<std::atomic<std::int64_t>>(raft::detail::wall_ms());
  Cluster c(
      151, 3, [](raft::Config& config) { config.append_timeout_ms = 3000; },
      [clock](const raft::Config&) {
        raft::testing::Hooks hooks;
        hooks.wall_clock = [clock] { return clock->load(); };
        return hooks;
      });
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = c.other_than(leader);
  const int third = c.other_than(leader, follower);
  const std::string leader_id = c[leader].id(), follower_id = c[follower].id();
  // The cluster settles first: the leader binds each member's server id with a configuration
  // entry, and one appended later could be taken below for the first copy's entry (the first
  // copy might then run, and the test prove less).
  REQUIRE(is_ok(c[leader].execute({"set", "started", "1"})));
  for (int i : {leader, follower, third}) REQUIRE(eventually(long_wait(), [&] { return stored(c[i], "started") == "1"; }));

  // Other nodes' runs fill the leader's session table (the follower has forwarded nothing yet:
  // its first forward opens a new session).
  const std::int64_t t0 = clock->load();
  FakePeer peer(ip(151, 9), 7090);
  REQUIRE(peer.hello(address(151, leader), info_field(c[leader], "raft_cluster_id"), "9", "feed"));
  for (std::size_t i = 1; i <= SessionTable::kMaxSessions; ++i)
    REQUIRE(peer.send({"FWD", std::to_string(i), "1", "1", "", "set", "k" + std::to_string(i), "v"}));
  for (std::size_t i = 1; i <= SessionTable::kMaxSessions; ++i) {
    const std::vector<std::string> m = peer.next();
    INFO(show(m));
    REQUIRE(m.size() == 5);
    REQUIRE(m[3] == "done");
  }
  REQUIRE(eventually(long_wait(), [&] {
    return std::to_string(c[leader].applied_index()) == info_field(c[leader], "raft_last_index");
  }));
  // The first copy: refused (no session idle long enough to be forgotten). Its answer waits on
  // the leader (the leader's link to the follower stalls).
  pass_leader_time(c[leader], *clock, t0 + SessionTable::kIdleMs - 1);
  const std::uint64_t before = c[leader].applied_index();
  raft::testing::runtime(c[leader]).set_link_fault_for_test(follower_id, Fault::Stall);
  auto reply = c[follower].execute_async({"incr", "n"});
  REQUIRE(eventually(long_wait(), [&] { return c[leader].applied_index() > before; }));  // the first copy's entry
  // The sessions expire; the follower's connection breaks and comes back, and it sends the
  // write again: this copy runs.
  pass_leader_time(c[leader], *clock, t0 + SessionTable::kIdleMs);
  raft::testing::runtime(c[follower]).set_link_fault_for_test(leader_id, Fault::Drop);
  raft::testing::runtime(c[follower]).set_link_fault_for_test(leader_id, Fault::None);
  REQUIRE(eventually(long_wait(), [&] { return stored(c[leader], "n") == "1"; }));
  // Both answers reach the follower now, the first copy's first. That one says "not run" of
  // its own copy only: the follower sent two, so it waits, and answers with the reply of the
  // copy that ran (answering "not run" would tell the caller a lie: n is 1 everywhere).
  raft::testing::runtime(c[leader]).set_link_fault_for_test(follower_id, Fault::None);
  REQUIRE(ready_within(reply, long_wait()));
  const raft::Reply r = reply.get();
  INFO(typed(r));
  CHECK(r.type == resp::Type::Integer);
  CHECK(r.num == 1);

  REQUIRE(is_ok(c[leader].execute({"set", "settled", "1"})));
  for (int i : {leader, follower, third}) {
    REQUIRE(eventually(long_wait(), [&] { return stored(c[i], "settled") == "1"; }));
    CHECK(stored(c[i], "n") == "1");
  }
}

TEST_CASE("a forward whose answer was lost on the leader's connection while the follower's stayed up is sent "
          "again and answered with the first reply, applied once",
          "[runtime][forward]") {
  Three t(152, 3000);
  REQUIRE(is_ok(t.c[t.leader].execute({"set", "n", "10"})));
  // The leader's answers to the follower are lost on the way; the follower's own connection to
  // the leader never breaks, so nothing there makes it send the write again.
  t.rt(t.leader).set_link_fault_for_test(t.id(t.follower), Fault::Drop);
  auto reply = t.c[t.follower].execute_async({"incr", "n"});
  REQUIRE(eventually(long_wait(), [&] { return stored(t.c[t.leader], "n") == "11"; }));
  // A write the leader commits after it: its link to the follower has long handed the answer
  // over (to be lost) by then.
  REQUIRE(is_ok(t.c[t.leader].execute({"set", "after", "1"})));
  t.rt(t.leader).set_link_fault_for_test(t.id(t.follower), Fault::None);

  REQUIRE(ready_within(reply, long_wait()));
  const raft::Reply r = reply.get();
  INFO(typed(r));
  CHECK(r.type == resp::Type::Integer);
  CHECK(r.num == 11);
  t.settle("settled");
  for (int i = 1; i <= 3; ++i) CHECK(stored(t.c[i], "n") == "11");
}

TEST_CASE("a link holding more than its whole budget of unanswered forwards still sends the Raft messages "
          "queued after them",
          "[runtime][forward]") {
  // A link with a budget of 1 KiB (256 MiB in a node): one forward above it fills it. The
  // second send_forward below checks that it is full.
  constexpr std::size_t kBudget = 1024;
  TestNode node(node_config("1", address(153, 1)));
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  // The peer: a port this test listens on, and answers by hand.
  std::string error;
  const int listen_fd = raft::detail::listen_tcp(ip(153, 9), 7091, error);
  REQUIRE(listen_fd >= 0);
  std::string forward(kBudget + 1, 'f');
  std::string raft_message;
  resp::write_command(raft_message, {"RAFTMSG", "an acknowledgement"});
  {
    raft::detail::PeerLink link(raft::testing::runtime(*node), "9", ip(153, 9) + ":7090", kBudget);
    // Its connection: the handshake, and hold the WELCOME while the link waits for it.
    pollfd p{listen_fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, static_cast<int>(scaled(5000).count())) == 1);
    const int fd = ::accept(listen_fd, nullptr, nullptr);
    REQUIRE(fd >= 0);
    test_support::PeerInbound peer(fd, "", false);
    while (!peer.open()) {
      char buf[4096];
      pollfd q{fd, POLLIN, 0};
      REQUIRE(::poll(&q, 1, static_cast<int>(scaled(5000).count())) == 1);
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      REQUIRE(n > 0);
      REQUIRE(peer.take(buf, static_cast<std::size_t>(n)));
    }
    REQUIRE(peer.hello().at(3) == "1");

    // Forwards unanswered, beyond the budget; then a Raft message.
    CHECK(link.send_forward(1, std::move(forward)));
    CHECK_FALSE(link.send_forward(2, "a second forward"));  // the budget is full
    link.send(raft_message);
    REQUIRE(peer.send_welcome());

    // The Raft message goes first (messages before forwards), not dropped for the forwards.
    while (peer.plain().size() < raft_message.size()) {
      char buf[4096];
      pollfd q{fd, POLLIN, 0};
      if (::poll(&q, 1, static_cast<int>(scaled(5000).count())) != 1) break;
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0 || !peer.take(buf, static_cast<std::size_t>(n))) break;
    }
    const std::string got = peer.plain().substr(0, raft_message.size());
    CHECK(raft::detail::repr(got) == raft::detail::repr(raft_message));
    // Nothing listens any more (the link cannot reconnect while it stops), and its send of
    // the forward fails.
    ::close(listen_fd);
    ::close(fd);
  }
}
