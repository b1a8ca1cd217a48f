// Blocking pops (BLPOP BRPOP BLMOVE BZPOPMIN BZPOPMAX): the replies that need no waiting side
// by side with a real redis-server, RESP2 and RESP3; waiting on a 3-node in-process cluster:
// served from any node, exactly once, in arrival order per node, timeouts, disconnects.

#include "in_process.hpp"
#include "proc.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

using Reply = resp::Value;
using in_process::eventually;
using in_process::long_wait;
using in_process::show;

std::string client_ip(const raft::Node& n) { return n.address().substr(0, n.address().find(':')); }
int client_port(const raft::Node& n) { return std::stoi(n.address().substr(n.address().find(':') + 1)); }
proc::Client connect(const raft::Node& n) { return proc::Client(client_ip(n), client_port(n)); }

std::string blocked_clients(const raft::Node& n) { return in_process::info_field(n, "blocked_clients"); }

}  // namespace

TEST_CASE("blocking pops that need not wait answer as a real redis-server does, RESP2 and RESP3, errors included",
          "[runtime][blocking][redis]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: the comparison with Redis is skipped");
    return;
  }
  proc::TempDir dir("blocking-redis");
  proc::RedisServer redis(dir);
  REQUIRE(redis.port() != 0);
  in_process::TestNode node(in_process::node_config("1", in_process::address(237, 1)));
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));

  const std::vector<std::vector<std::string>> script = {
      {"RPUSH", "l", "a", "b", "c", "d", "e", "f", "g", "h"},
      {"ZADD", "z", "1", "a", "2.5", "b", "3", "c", "-inf", "m"},
      {"SET", "s", "x"},
      {"BLPOP", "l", "0"},
      {"BRPOP", "l", "0"},
      {"BLPOP", "nokey", "l", "1"},
      {"BRPOP", "nokey", "s", "l", "0"},  // WRONGTYPE: keys are looked at in order
      {"BLPOP", "l", "s", "0"},
      {"BLMOVE", "l", "d", "LEFT", "RIGHT", "0"},
      {"BLMOVE", "s", "d", "left", "left", "0"},
      {"BLMOVE", "l", "s", "LEFT", "LEFT", "0"},
      {"BLMOVE", "l", "d", "UP", "LEFT", "0"},
      {"BLMOVE", "l", "d", "LEFT", "LEFT", "x"},
      {"BLMOVE", "l", "d", "UP", "LEFT", "x"},
      {"BZPOPMIN", "z", "0"},
      {"BZPOPMAX", "nokey", "z", "0.5"},
      {"BZPOPMIN", "s", "z", "0"},
      {"BZPOPMAX", "z", "s", "0"},
      {"BLPOP", "z", "0"},
      // timeouts Redis refuses
      {"BLPOP", "l", "x"},
      {"BLPOP", "s", "x"},  // the timeout before the type
      {"BLPOP", "l", "-1"},
      {"BLPOP", "l", "-2.5"},
      {"BLPOP", "l", "inf"},
      {"BLPOP", "l", "-inf"},
      {"BLPOP", "l", "nan"},
      {"BLPOP", "l", ""},
      {"BLPOP", "l", " 1"},
      {"BLPOP", "l", "1 "},
      {"BLPOP", "l", "1e16"},
      {"BRPOP", "l", "1e400"},
      {"BZPOPMIN", "z", "-0.5"},
      {"BZPOPMAX", "z", "abc"},
      // arity
      {"BLPOP", "l"},
      {"BRPOP"},
      {"BLMOVE", "l", "d", "LEFT", "LEFT"},
      {"BZPOPMIN", "z"},
      // timeouts that expire (short, and one rounded up to a millisecond)
      {"BLPOP", "nokey", "0.01"},
      {"BRPOP", "nokey", "other", "0.02"},
      {"BLMOVE", "nokey", "d", "LEFT", "LEFT", "0.01"},
      {"BZPOPMIN", "nokey", "0.01"},
      {"BZPOPMAX", "nokey", "0.0001"},
      {"BLPOP", "nokey", "1e-400"},
      // inside a transaction: run once, never waiting (nil when there is nothing)
      {"MULTI"},
      {"BLPOP", "nokey", "0"},
      {"BLMOVE", "nokey", "d", "LEFT", "LEFT", "0"},
      {"BZPOPMIN", "nokey", "0"},
      {"RPUSH", "nokey", "x"},
      {"BRPOP", "nokey", "0"},
      {"BLPOP", "nokey", "x"},
      {"EXEC"},
      // what is left
      {"LRANGE", "l", "0", "-1"},
      {"LRANGE", "d", "0", "-1"},
      {"ZRANGE", "z", "0", "-1", "WITHSCORES"},
      {"EXISTS", "l", "z", "d", "s", "nokey"},
  };
  for (int protocol : {2, 3}) {
    proc::Client theirs("127.0.0.1", redis.port());
    proc::Client ours = connect(*node);
    REQUIRE(theirs.connected());
    REQUIRE(ours.connected());
    if (protocol == 3) {
      REQUIRE(theirs.call({"HELLO", "3"}).type == resp::Type::Map);
      REQUIRE(ours.call({"HELLO", "3"}).type == resp::Type::Map);
    }
    for (const auto& words : script) {
      INFO("RESP" << protocol << ": " << show(Reply::strings(words)));
      const Reply a = theirs.call(words);
      const Reply b = ours.call(words);
      CHECK(resp::encode(b, protocol) == resp::encode(a, protocol));
    }
    CHECK(show(theirs.call({"FLUSHALL"})) == "OK");
    CHECK(show(ours.call({"FLUSHALL"})) == "OK");
  }
}

TEST_CASE("blocking pops wait on any node of a cluster: served once when data arrives, in arrival order per node; "
          "timeouts and disconnects stop the wait",
          "[runtime][blocking]") {
  in_process::Cluster c(249, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int f1 = c.other_than(leader), f2 = c.other_than(leader, f1);
  proc::Client pusher = connect(c[leader]);
  REQUIRE(pusher.connected());
  const auto wait_blocked = [&](int node, const std::string& count) {
    return eventually(long_wait(), [&] { return blocked_clients(c[node]) == count; });
  };

  SECTION("a waiter on a follower is served when a push arrives on the leader") {
    proc::Client waiter = connect(c[f1]);
    REQUIRE(waiter.send_command({"BLPOP", "q", "0"}));
    REQUIRE(wait_blocked(f1, "1"));
    CHECK(show(pusher.call({"RPUSH", "q", "job1"})) == "1");
    CHECK(show(waiter.read()) == "[q, job1]");
    CHECK(wait_blocked(f1, "0"));
    for (int i = 1; i <= 3; ++i)
      CHECK(eventually(long_wait(), [&] { return in_process::stored(c[i], "q") == "(none)"; }));
    // The connection serves commands again afterwards.
    CHECK(show(waiter.call({"PING"})) == "PONG");
    // BLMOVE and BZPOPMIN alike; a waiter on the leader, data from a follower.
    proc::Client on_leader = connect(c[leader]);
    proc::Client from_follower = connect(c[f2]);
    REQUIRE(on_leader.send_command({"BLMOVE", "src", "dst", "RIGHT", "LEFT", "0"}));
    REQUIRE(wait_blocked(leader, "1"));
    CHECK(show(from_follower.call({"LPUSH", "src", "m"})) == "1");
    CHECK(show(on_leader.read()) == "m");
    CHECK(show(from_follower.call({"LRANGE", "dst", "0", "-1"})) == "[m]");
    REQUIRE(on_leader.send_command({"BZPOPMAX", "zq", "0"}));
    REQUIRE(wait_blocked(leader, "1"));
    CHECK(show(from_follower.call({"ZADD", "zq", "1", "a", "2", "b"})) == "2");
    CHECK(show(on_leader.read()) == "[zq, b, 2]");
  }

  SECTION("two waiters on two nodes and one element: exactly one is served, the other times out") {
    proc::Client a = connect(c[f1]);
    proc::Client b = connect(c[f2]);
    REQUIRE(a.send_command({"BRPOP", "one", "2"}));
    REQUIRE(b.send_command({"BRPOP", "one", "2"}));
    REQUIRE(wait_blocked(f1, "1"));
    REQUIRE(wait_blocked(f2, "1"));
    CHECK(show(pusher.call({"LPUSH", "one", "x"})) == "1");
    const std::string ra = show(a.read()), rb = show(b.read());
    INFO(ra << " / " << rb);
    CHECK(((ra == "[one, x]" && rb == "(nil)") || (ra == "(nil)" && rb == "[one, x]")));
    CHECK(show(pusher.call({"EXISTS", "one"})) == "0");
  }

  SECTION("many waiters on two nodes and many elements: each element once, in arrival order per node") {
    constexpr int kPerNode = 5;
    std::vector<proc::Client> on_f1, on_leader;
    for (int k = 0; k < kPerNode; ++k) {
      on_f1.push_back(connect(c[f1]));
      REQUIRE(on_f1.back().send_command({"BLPOP", "jobs", "0"}));
      REQUIRE(wait_blocked(f1, std::to_string(k + 1)));  // so that the arrival order is this
      on_leader.push_back(connect(c[leader]));
      REQUIRE(on_leader.back().send_command({"BLPOP", "other", "jobs", "0"}));
      REQUIRE(wait_blocked(leader, std::to_string(k + 1)));
    }
    std::vector<std::string> push{"RPUSH", "jobs"};
    for (int j = 0; j < 2 * kPerNode; ++j) push.push_back("j" + std::to_string(10 + j));  // sorted as text
    CHECK(show(pusher.call(push)) == std::to_string(2 * kPerNode));
    std::multiset<std::string> delivered;
    for (auto* group : {&on_f1, &on_leader}) {
      std::vector<std::string> got;
      for (auto& client : *group) {
        const Reply r = client.read();
        REQUIRE(r.elements.size() == 2);
        CHECK(r.elements[0].str == "jobs");
        got.push_back(r.elements[1].str);
        delivered.insert(r.elements[1].str);
      }
      INFO(show(Reply::strings(got)));
      CHECK(std::is_sorted(got.begin(), got.end()));  // served in the order they came
    }
    CHECK(delivered.size() == std::size_t(2 * kPerNode));
    CHECK(std::set<std::string>(delivered.begin(), delivered.end()).size() == delivered.size());
    CHECK(show(pusher.call({"EXISTS", "jobs"})) == "0");
    CHECK(wait_blocked(f1, "0"));
    CHECK(wait_blocked(leader, "0"));
  }

  SECTION("a timeout replies nil (RESP3: null), and a wait for ever stays") {
    proc::Client r2 = connect(c[f1]);
    proc::Client r3 = connect(c[f2]);
    REQUIRE(r3.call({"HELLO", "3"}).type == resp::Type::Map);
    REQUIRE(r2.send_command({"BLPOP", "none", "0.2"}));
    REQUIRE(r3.send_command({"BLMOVE", "none", "d", "LEFT", "LEFT", "0.2"}));
    CHECK(r2.read().type == resp::Type::NullArray);
    CHECK(r3.read().type == resp::Type::Null);
    CHECK(show(r2.call({"BZPOPMIN", "none", "0.05"})) == "(nil)");
    proc::Client forever = connect(c[f1]);
    REQUIRE(forever.send_command({"BZPOPMIN", "zforever", "0"}));
    REQUIRE(wait_blocked(f1, "1"));
    CHECK(test_support::holds_for(in_process::scaled(300), [&] { return blocked_clients(c[f1]) == "1"; }));
    CHECK(show(pusher.call({"ZADD", "zforever", "7", "late"})) == "1");
    CHECK(show(forever.read()) == "[zforever, late, 7]");
  }

  SECTION("a client that disconnects while waiting stops waiting and takes nothing") {
    {
      proc::Client gone = connect(c[f1]);
      REQUIRE(gone.send_command({"BLPOP", "left", "0"}));
      REQUIRE(wait_blocked(f1, "1"));
    }  // closed here
    REQUIRE(wait_blocked(f1, "0"));
    CHECK(show(pusher.call({"RPUSH", "left", "kept"})) == "1");
    proc::Client next = connect(c[f1]);
    CHECK(show(next.call({"BLPOP", "left", "5"})) == "[left, kept]");
  }
}
