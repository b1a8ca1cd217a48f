// Peer messages are never held up by client work (issue 10, "nothing slow on the thread that
// keeps leadership"): inbound peer connections have their own thread, connections that have not
// finished the handshake are capped apart from the members', and a heartbeat never waits behind
// a large entry queued on a peer link.

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <thread>

#include "fake_peer.hpp"
#include "in_process.hpp"
#include "proc.hpp"

namespace {

using in_process::Cluster;
using in_process::eventually;
using in_process::long_wait;
using in_process::scaled;
using std::chrono::milliseconds;

std::string ip_of(const std::string& address) { return address.substr(0, address.rfind(':')); }
int port_of(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

}  // namespace

TEST_CASE("a leader keeps its term while its client thread runs slow KEYS commands", "[runtime][peer-thread]") {
  Cluster c(171, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  raft::Node& l = c[leader];
  // Keys and a pattern that make each KEYS slow (the matcher is linear, but in pattern length
  // times key length: here 50 x 100 steps a key) and answer nothing (no large reply); pipelined,
  // they hold the leader's client thread for many election timeouts in a row.
  constexpr int kKeys = 100000;
  constexpr int kPerCommand = 1000;
  const std::string prefix(100, 'a');
  const std::string pattern = "*" + std::string(50, 'a') + "b";
  for (int k = 0; k < kKeys; k += kPerCommand) {
    std::vector<std::string> mset{"MSET"};
    for (int i = k; i < k + kPerCommand; ++i) {
      mset.push_back(prefix + std::to_string(i));
      mset.push_back("v");
    }
    REQUIRE(in_process::is_ok(l.execute(mset)));
  }
  const std::uint64_t term = l.term();
  const std::string id = l.id();
  REQUIRE(c.current_leader() == leader);

  // READONLY: KEYS runs on the client thread as soon as it is parsed (no read index round).
  proc::Client client(ip_of(l.address()), port_of(l.address()));
  REQUIRE(client.connected());
  REQUIRE(proc::show(client.call({"READONLY"})) == "OK");
  auto keys_once = [&] {
    const resp::Value v = client.call({"KEYS", pattern}, in_process::scaled(120000));
    return v.type == resp::Type::Array && v.elements.empty();
  };
  // Enough pipelined to hold the client thread for 3 election timeouts at a time (one is
  // measured first: sanitizers make it much slower).
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(keys_once());
  const auto one_ms = std::max<long long>(
      1, std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count());
  const int pipelined = static_cast<int>(std::clamp<long long>(in_process::scaled(3 * 300).count() / one_ms + 1, 2, 32));
  const auto busy_from = std::chrono::steady_clock::now();
  const auto busy_until = busy_from + in_process::scaled(10 * 300);  // 10 election timeouts
  int rounds = 0;
  while (std::chrono::steady_clock::now() < busy_until) {
    std::string batch;
    for (int i = 0; i < pipelined; ++i) resp::write_command(batch, {"KEYS", pattern});
    REQUIRE(client.send(batch));
    for (int i = 0; i < pipelined; ++i) {
      const resp::Value v = client.read(milliseconds(pipelined * one_ms * 10) + in_process::scaled(10000));
      REQUIRE(v.type == resp::Type::Array);
      REQUIRE(v.elements.empty());
    }
    ++rounds;
  }
  const auto busy_ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - busy_from).count();
  INFO("one KEYS: " << one_ms << " ms; " << rounds << " rounds of " << pipelined << " in " << busy_ms << " ms\n"
                     << c.all_logs());
  // No election: the same leader, in the same term, on every node.
  CHECK(l.state() == 'l');
  CHECK(l.term() == term);
  for (int i = 1; i <= c.size(); ++i) {
    CHECK(c[i].term() == term);
    CHECK(c[i].leader() == id);
  }
}

TEST_CASE("a flood of connections on the peer port does not lock out a member", "[runtime][peer-thread]") {
  // This process holds both ends of the flood: room for them (a test may; the library never
  // changes the limit).
  rlimit fds{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &fds) == 0);
  if (fds.rlim_cur < 8192 && fds.rlim_max > fds.rlim_cur) {
    fds.rlim_cur = std::min<rlim_t>(8192, fds.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &fds);
  }
  // The handshake deadline (send_timeout_ms) far beyond the test's wait: only the budget for
  // connections still in the handshake can make room for the member.
  Cluster c(172, 2, [](raft::Config& cfg) { cfg.send_timeout_ms = 60000; });
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = c.other_than(leader);
  raft::Node& l = c[leader];
  REQUIRE(in_process::is_ok(l.execute({"SET", "before", "1"})));

  // From 127.0.0.1 (the nodes connect from addresses of their own): a stream of new connections, far
  // more than the node takes in all (1024), none saying HELLO.
  std::atomic<bool> flooding{true};
  std::atomic<int> opened{0};
  std::thread flood([&] {
    std::deque<proc::Client> idle;
    while (flooding && idle.size() < 4000) {
      idle.emplace_back(ip_of(l.address()), port_of(l.address()) + 1, milliseconds(200));
      if (idle.back().connected()) ++opened;
    }
    while (flooding) std::this_thread::sleep_for(milliseconds(5));  // held open until the end
  });
  REQUIRE(eventually(long_wait(), [&] { return opened > 1100; }));
  // The follower's link to the leader (its acknowledgements) breaks and connects again.
  using Fault = raft::detail::PeerLink::Fault;
  raft::testing::runtime(c[follower]).set_link_fault_for_test(l.id(), Fault::Drop);
  raft::testing::runtime(c[follower]).set_link_fault_for_test(l.id(), Fault::None);  // lifted: it reconnects

  // Two voters: a write commits only with the follower's acknowledgement, over the new link.
  const bool replicated = eventually(scaled(10000), [&] {
    return in_process::is_ok(l.execute({"SET", "after", "2"})) && in_process::stored(c[follower], "after") == "2";
  });
  flooding = false;
  flood.join();
  INFO(c.all_logs());
  CHECK(replicated);
}

TEST_CASE("a heartbeat queued on a peer link behind large appends is sent before them", "[runtime][peer-thread]") {
  // Node 1's peer 2 is played here: its link connects to this listener.
  raft::detail::HostPort fake;
  std::string error;
  REQUIRE(raft::detail::parse_host_port(in_process::address(173, 2), fake, error));
  const int listener = raft::detail::listen_tcp(fake.host, fake.port + 1, error);
  REQUIRE(listener >= 0);
  raft::Config cfg = in_process::node_config("1", in_process::address(173, 1));
  cfg.peers["2"] = in_process::address(173, 2);
  in_process::TestNode n(cfg);
  n->start();
  int fd = -1;
  REQUIRE(eventually(long_wait(), [&] { return (fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC)) >= 0; }));
  test_support::PeerInbound peer(fd);
  auto pump = [&] {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5) != 1) return true;
    char buf[65536];
    const ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    return r > 0 && peer.take(buf, static_cast<std::size_t>(r));
  };
  // The node campaigns: its first pre-vote says the link is up.
  REQUIRE(eventually(long_wait(), [&] { return pump() && !peer.plain().empty(); }));

  // Held on the link (as by a peer that reads slowly): 4 MiB of appends, then a heartbeat.
  using raft::MessageType;
  using Fault = raft::detail::PeerLink::Fault;
  raft::detail::Runtime& rt = raft::testing::runtime(*n);
  rt.set_link_fault_for_test("2", Fault::Stall);
  constexpr std::uint64_t kMarker = 0xC0FFEE;
  for (std::uint64_t i = 1; i <= 8; ++i) {
    raft::Message append;
    append.type = MessageType::Append;
    append.from = "1";
    append.to = "2";
    append.term = kMarker;
    append.index = i - 1;
    append.log_term = i == 1 ? 0 : kMarker;
    append.entries.push_back(raft::LogEntry{i, kMarker, raft::EntryType::Command, 0, std::string(512 << 10, 'x')});
    rt.send_peer_for_test(append);
  }
  raft::Message heartbeat;
  heartbeat.type = MessageType::Heartbeat;
  heartbeat.from = "1";
  heartbeat.to = "2";
  heartbeat.term = kMarker;
  heartbeat.context = kMarker;
  rt.send_peer_for_test(heartbeat);
  rt.set_link_fault_for_test("2", Fault::None);

  // The order the peer reads them in: ours are the ones of term kMarker.
  std::vector<MessageType> order;
  resp::Limits limits;
  limits.max_bulk_length = raft::detail::kPeerMaxBulkBytes;
  resp::RequestParser parser(limits);
  REQUIRE(eventually(long_wait(), [&] {
    if (!pump()) return true;  // the connection broke: the check below says what arrived
    parser.feed(peer.plain());
    peer.plain().clear();
    std::vector<std::string> w;
    while (parser.next(w) == resp::Status::Ok) {
      raft::Message m;
      std::string why;
      if (!w.empty() && w[0] == "RAFT" && raft::detail::decode_raft(w, m, why) && m.term == kMarker)
        order.push_back(m.type);
    }
    return order.size() == 9;
  }));
  ::close(fd);
  ::close(listener);
  REQUIRE(order.size() == 9);
  CHECK(order.front() == MessageType::Heartbeat);
  CHECK(std::count(order.begin(), order.end(), MessageType::Append) == 8);
}
