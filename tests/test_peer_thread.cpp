// Peer messages are never held up by client work (issue 10, "nothing slow on the thread that
// keeps leadership"): inbound peer connections have their own thread, connections that have not
// finished the handshake are capped apart from the members', and a heartbeat never waits behind
// a large entry queued on a peer link.

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fake_peer.hpp"
#include "in_process.hpp"
#include "proc.hpp"

namespace {

using in_process::Cluster;
using in_process::eventually;
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
  const auto busy_from = std::chrono::steady_clock::now();
  const auto busy_until = busy_from + in_process::scaled(10 * 300);  // 10 election timeouts
  int rounds = 0;
  while (std::chrono::steady_clock::now() < busy_until) {
    constexpr int kPipelined = 8;
    std::string batch;
    for (int i = 0; i < kPipelined; ++i) resp::write_command(batch, {"KEYS", pattern});
    REQUIRE(client.send(batch));
    for (int i = 0; i < kPipelined; ++i) {
      const resp::Value v = client.read(in_process::scaled(60000));
      REQUIRE(v.type == resp::Type::Array);
      REQUIRE(v.elements.empty());
    }
    ++rounds;
  }
  const auto busy_ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - busy_from).count();
  INFO("rounds of KEYS: " << rounds << " in " << busy_ms << " ms\n" << c.all_logs());
  // No election: the same leader, in the same term, on every node.
  CHECK(l.state() == 'l');
  CHECK(l.term() == term);
  for (int i = 1; i <= c.size(); ++i) {
    CHECK(c[i].term() == term);
    CHECK(c[i].leader() == id);
  }
}
