// Resource limits (issue 10): what clients can make a node spend. maxclients under the
// descriptor limit, client timeouts, the query buffer, the output of all clients together,
// maxmemory (noeviction), CHECKPOINT's pace, the size of one write. Each test sets its limits
// as a Redis client would (CONFIG SET, run_raft's options), and compares replies with a real
// redis-server where Redis has the limit ([redis]).
#include <catch2/catch.hpp>

#include "in_process.hpp"
#include "proc.hpp"

namespace {

using in_process::TestNode;
using proc::show;

// Test numbers (the third byte of the in-process addresses): 240 and up.

int client_port(const raft::Node& n) { return std::stoi(n.address().substr(n.address().find(':') + 1)); }
std::string client_ip(const raft::Node& n) { return n.address().substr(0, n.address().find(':')); }
proc::Client connect(const raft::Node& n) { return proc::Client(client_ip(n), client_port(n)); }

raft::Config single(int test) { return in_process::node_config("1", in_process::address(test, 1)); }

bool leads(raft::Node& n) {
  return in_process::eventually(in_process::long_wait(), [&] { return n.state() == 'l'; });
}

/// One field of INFO asked of a running node by a client.
std::string info_field(proc::Client& c, const std::string& field) {
  return proc::info_field(std::string(c.call({"INFO"}).text()), field);
}

std::string mib_of(char c, std::size_t bytes) { return std::string(bytes, c); }

}  // namespace

TEST_CASE("used_memory is kept as writes go: it equals a count from scratch after every kind of write",
          "[limits][store]") {
  raft::CommandTable table;
  raft::add_builtin_commands(table);
  raft::Store store;
  const auto run = [&](std::vector<std::string> words) {
    raft::Call call{store, words, 1000, nullptr};
    table.at(words[0]).fn(call);
    store.settle_memory();
  };
  // A count from scratch: the store as its snapshot reloads it.
  const auto recounted = [&] {
    std::string text;
    store.write_snapshot(text, raft::SnapshotMeta{});
    raft::Store loaded;
    raft::SnapshotMeta meta;
    std::string error;
    REQUIRE(raft::Store::read_snapshot(text, loaded, meta, error));
    return loaded.used_memory();
  };
  const std::vector<std::vector<std::string>> writes = {
      {"set", "s", "hello"}, {"append", "s", std::string(1000, 'a')}, {"set", "s", "x"},
      {"mset", "a", "1", "b", std::string(500, 'b')}, {"incr", "a"}, {"incrby", "n", "123456789"},
      {"getset", "b", "short"}, {"hset", "h", "f1", "v1", "f2", std::string(300, 'v')}, {"hset", "h", "f1", "longer"},
      {"hincrby", "h", "count", "7"}, {"hincrby", "h", "count", "100000"}, {"hdel", "h", "f2", "none"},
      {"rpush", "l", "a", "bb", "ccc", "dddd", "eeeee", "a"}, {"lpush", "l", "z"}, {"lset", "l", "1", "replaced"},
      {"lrem", "l", "0", "a"}, {"ltrim", "l", "1", "2"}, {"lpop", "l"}, {"rpop", "l", "5"},
      {"expire", "s", "100"}, {"persist", "s"}, {"del", "a", "h"}, {"set", "s", "v", "EX", "10"},
      {"hset", "h2", "f", "v"}, {"hdel", "h2", "f"}, {"set", "h2", "now a string"}};
  REQUIRE(store.used_memory() == 0);
  for (const auto& w : writes) {
    INFO(w[0] << " " << w[1]);
    run(w);
    CHECK(store.used_memory() == recounted());
  }
  CHECK(store.used_memory() > 0);
  store.clear();
  CHECK(store.used_memory() == 0);
}

TEST_CASE("maxclients is lowered to the descriptor limit: a flood of idle clients leaves storage its descriptors",
          "[process][limits]") {
  proc::TempDir dir("limits-fds");
  const std::string ip = in_process::ip(240, 1);
  // 256 descriptors, soft and hard: run_raft cannot raise it; 128 are kept for storage and peers.
  proc::Process node("run_raft",
                     {"prlimit", "--nofile=256:256", std::filesystem::absolute(proc::example("run_raft")).string(),
                      "-i", "1", "-a", ip + ":7000", "-d", dir / "d1", "--time-scale",
                      std::to_string(proc::time_scale())},
                     dir);
  REQUIRE(node.wait_for_err("leading term", proc::scaled(10000)));
  CHECK(node.wait_for_err("maxclients lowered from 10000 to 128", proc::scaled(1000)));
  proc::Client admin(ip, 7000);
  REQUIRE(show(admin.call({"SET", "before", "1"})) == "OK");

  std::vector<proc::Client> flood;
  for (int i = 0; i < 300; ++i) {
    flood.emplace_back(ip, 7000);
    REQUIRE(flood.back().connected());
  }
  // The clients beyond the limit get Redis's error and are closed.
  CHECK(show(flood.back().read(proc::scaled(5000))) == "-ERR max number of clients reached");
  CHECK(flood.back().wait_closed(proc::scaled(5000)));
  // Storage still has its descriptors: a snapshot and writes (Redis's -MISCONF on main).
  CHECK(show(admin.call({"CHECKPOINT"})) == "OK");
  int written = 0;
  while (written < 20 && show(admin.call({"SET", "after" + std::to_string(written), std::string(1000, 'x')})) == "OK")
    ++written;
  CHECK(written == 20);
  CHECK(show(admin.call({"GET", "before"})) == "1");
  CHECK(info_field(admin, "raft_storage") == "ok");
  CHECK(info_field(admin, "maxclients") == "128");
  CHECK(show(admin.call({"CONFIG", "GET", "maxclients"})) == "[maxclients, 128]");
  // The early clients are served.
  CHECK(show(flood.front().call({"PING"})) == "PONG");
}

TEST_CASE("run_raft raises its soft descriptor limit to the hard one before maxclients is lowered to it",
          "[process][limits]") {
  proc::TempDir dir("limits-raise");
  const std::string ip = in_process::ip(247, 1);
  proc::Process node("run_raft",
                     {"prlimit", "--nofile=256:1024", std::filesystem::absolute(proc::example("run_raft")).string(),
                      "-i", "1", "-a", ip + ":7000", "-d", dir / "d1", "--time-scale",
                      std::to_string(proc::time_scale())},
                     dir);
  REQUIRE(node.wait_for_err("leading term", proc::scaled(10000)));
  CHECK(node.wait_for_err("maxclients lowered from 10000 to 896", proc::scaled(1000)));
  proc::Client admin(ip, 7000);
  CHECK(show(admin.call({"CONFIG", "GET", "maxclients"})) == "[maxclients, 896]");
  CHECK(show(admin.call({"CONFIG", "SET", "maxclients", "897"})) ==
        "-ERR CONFIG SET failed (possibly related to argument 'maxclients') - The operating system is not able to "
        "handle the specified number of clients, try with 896");
  CHECK(show(admin.call({"CONFIG", "SET", "maxclients", "100"})) == "OK");
  CHECK(show(admin.call({"CONFIG", "GET", "maxclients"})) == "[maxclients, 100]");
}

TEST_CASE("timeout and partial-command-timeout close idle clients and half-sent commands; others are served",
          "[limits][redis]") {
  TestNode n(single(241));
  n->start();
  REQUIRE(leads(*n));
  proc::Client admin = connect(*n);
  REQUIRE(show(admin.call({"CONFIG", "SET", "partial-command-timeout", "1"})) == "OK");
  CHECK(show(admin.call({"CONFIG", "GET", "partial-command-timeout"})) == "[partial-command-timeout, 1]");

  // 50 connections holding half a command each, and one that sent nothing yet.
  proc::Client quiet = connect(*n);
  std::vector<proc::Client> halves;
  for (int i = 0; i < 50; ++i) {
    halves.push_back(connect(*n));
    REQUIRE(halves.back().send("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nab"));
  }
  for (auto& h : halves) CHECK(h.wait_closed(proc::scaled(10000)));
  CHECK(show(admin.call({"SET", "k", "v"})) == "OK");
  // timeout is 0 (Redis's default): the quiet client, idle as long, is still served.
  CHECK(show(quiet.call({"GET", "k"})) == "v");

  // Redis's timeout: an idle client is closed, as redis-server does with the same setting.
  REQUIRE(show(admin.call({"CONFIG", "SET", "timeout", "1"})) == "OK");
  proc::Client idle = connect(*n);
  CHECK(idle.wait_closed(proc::scaled(10000)));
  if (proc::RedisServer::installed()) {
    proc::TempDir dir("limits-timeout-redis");
    proc::RedisServer redis(dir);
    REQUIRE(redis.port() != 0);
    proc::Client r("127.0.0.1", redis.port());
    CHECK(show(r.call({"CONFIG", "SET", "timeout", "1"})) == "OK");
    CHECK(show(r.call({"CONFIG", "GET", "timeout"})) == "[timeout, 1]");
    proc::Client redis_idle("127.0.0.1", redis.port());
    CHECK(redis_idle.wait_closed(proc::scaled(10000)));
  } else {
    WARN("redis-server is not installed: not compared");
  }
  proc::Client fresh = connect(*n);
  CHECK(show(fresh.call({"CONFIG", "GET", "timeout"})) == "[timeout, 1]");
  CHECK(show(fresh.call({"GET", "k"})) == "v");
}

TEST_CASE("client-query-buffer-limit closes a client whose unfinished command grows past it", "[limits]") {
  TestNode n(single(242));
  n->start();
  REQUIRE(leads(*n));
  proc::Client bystander = connect(*n);
  CHECK(show(bystander.call({"CONFIG", "GET", "client-query-buffer-limit"})) ==
        "[client-query-buffer-limit, 67108864]");
  // Arguments of 1 MiB (each within proto-max-bulk-len), 100 declared, never finished.
  proc::Client big = connect(*n);
  REQUIRE(big.send("*100\r\n"));
  const std::string arg = "$1048576\r\n" + mib_of('a', 1 << 20) + "\r\n";
  for (int i = 0; i < 80 && big.send(arg); ++i) {
  }
  CHECK(big.wait_closed(proc::scaled(10000)));
  CHECK(show(bystander.call({"PING"})) == "PONG");
  CHECK(n.logs().contains("client-query-buffer-limit"));
}

TEST_CASE("client-output-total-limit: clients that pipeline large GETs without reading are closed, memory stays "
          "bounded, others are served",
          "[process][limits]") {
  proc::TempDir dir("limits-output");
  const std::string ip = in_process::ip(243, 1);
  proc::Process node("run_raft",
                     {proc::example("run_raft"), "-i", "1", "-a", ip + ":7000", "-d", dir / "d1", "--time-scale",
                      std::to_string(proc::time_scale()), "--client-output-total-limit", "64mb"},
                     dir);
  REQUIRE(node.wait_for_err("leading term", proc::scaled(10000)));
  proc::Client admin(ip, 7000);
  REQUIRE(show(admin.call({"SET", "big", mib_of('v', 1 << 20)})) == "OK");
  // 8 clients, 40 GETs of 1 MiB each (40 MiB: under the per-client 256 MiB), never read.
  std::string pipeline;
  for (int i = 0; i < 40; ++i) pipeline += "*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n";
  std::vector<proc::Client> greedy;
  for (int i = 0; i < 8; ++i) {
    greedy.emplace_back(ip, 7000);
    REQUIRE(greedy.back().send(pipeline));
  }
  // Some are closed (the total passed 64 MiB); the rest hold at most the limit.
  CHECK(proc::eventually(proc::scaled(10000), [&] {
    const std::string connected = info_field(admin, "connected_clients");
    return !connected.empty() && std::stoi(connected) < 9;
  }));
  const std::string total = info_field(admin, "total_client_output_bytes");
  REQUIRE_FALSE(total.empty());
  CHECK(std::stoull(total) <= (std::uint64_t{64} << 20));
  CHECK(show(admin.call({"STRLEN", "big"})) == "1048576");
  CHECK(show(admin.call({"SET", "k", "v"})) == "OK");
  // Peak memory: 320 MiB of replies if nothing stopped them.
  CHECK(node.status_field("VmHWM") < 200 * 1024);  // kB
  CHECK(node.wait_for_err("client-output-total-limit", proc::scaled(1000)));
}

TEST_CASE("maxmemory (noeviction): writes that grow the data are refused with Redis's -OOM on the leader and on a "
          "follower before forwarding; deletes and reads work; replicas agree",
          "[limits][redis]") {
  in_process::Cluster c(244, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = leader == 1 ? 2 : 1;
  for (int i = 1; i <= 3; ++i) {
    proc::Client admin = connect(c[i]);
    REQUIRE(show(admin.call({"CONFIG", "SET", "maxmemory", "200kb"})) == "OK");
    CHECK(show(admin.call({"CONFIG", "GET", "maxmemory"})) == "[maxmemory, 204800]");
    CHECK(show(admin.call({"CONFIG", "GET", "maxmemory-policy"})) == "[maxmemory-policy, noeviction]");
  }
  proc::Client l = connect(c[leader]);
  proc::Client f = connect(c[follower]);
  std::string refused;
  int written = 0;
  for (; written < 200; ++written) {
    const std::string r = show(l.call({"SET", "key" + std::to_string(written), std::string(10000, 'x')}));
    if (r != "OK") {
      refused = r;
      break;
    }
  }
  CHECK(written >= 15);  // about 200 kB of 10 kB values
  CHECK(written < 25);
  const std::string kOom = "-OOM command not allowed when used memory > 'maxmemory'.";
  CHECK(refused == kOom);
  // The follower knows it applied as much: it refuses before forwarding (the leader would too).
  CHECK(in_process::eventually(in_process::long_wait(), [&] { return show(f.call({"SET", "other", "x"})) == kOom; }));
  CHECK(show(f.call({"INCR", "n"})) == kOom);
  CHECK(show(l.call({"RPUSH", "list", "x"})) == kOom);
  // Reads and deletes work.
  CHECK(show(f.call({"GET", "key0"})) == std::string(10000, 'x'));
  CHECK(show(l.call({"EXPIRE", "key1", "100"})) == "1");
  CHECK(show(f.call({"DEL", "key0", "key1", "key2"})) == "3");
  CHECK(show(l.call({"SET", "small", "v"})) == "OK");  // room again
  const std::string used = info_field(l, "used_memory");
  REQUIRE_FALSE(used.empty());
  CHECK(std::stoull(used) < 204800);
  CHECK(info_field(l, "maxmemory") == "204800");
  // Replicas never diverge: the refusal is not in apply.
  for (int i = 1; i <= 3; ++i) {
    INFO("node " << i);
    CHECK(in_process::eventually(in_process::long_wait(), [&] { return in_process::stored(c[i], "small") == "v"; }));
    CHECK(in_process::stored(c[i], "key0") == "(none)");
    CHECK(in_process::stored(c[i], "key" + std::to_string(written)) == "(none)");
    CHECK(in_process::stored(c[i], "key" + std::to_string(written - 1)) == std::string(10000, 'x'));
  }
  // A forwarded write is checked again on the leader, against the leader's own maxmemory.
  proc::Client leader_admin = connect(c[leader]);
  REQUIRE(show(leader_admin.call({"CONFIG", "SET", "maxmemory", "1"})) == "OK");
  REQUIRE(show(f.call({"CONFIG", "SET", "maxmemory", "0"})) == "OK");
  CHECK(show(f.call({"SET", "forwarded", "x"})) == kOom);
  CHECK(show(f.call({"DEL", "key3"})) == "1");
  CHECK(in_process::stored(c[follower], "forwarded") == "(none)");
  if (proc::RedisServer::installed()) {
    proc::TempDir dir("limits-oom-redis");
    proc::RedisServer redis(dir, {"--maxmemory", "1"});
    REQUIRE(redis.port() != 0);
    proc::Client r("127.0.0.1", redis.port());
    CHECK(show(r.call({"SET", "k", "v"})) == kOom);
    CHECK(show(r.call({"INCR", "n"})) == kOom);
    CHECK(show(r.call({"DEL", "k"})) == "0");
    CHECK(show(r.call({"CONFIG", "GET", "maxmemory-policy"})) == "[maxmemory-policy, noeviction]");
  } else {
    WARN("redis-server is not installed: not compared");
  }
}

TEST_CASE("CHECKPOINT is refused while one is written or within checkpoint-interval of the last", "[limits]") {
  TestNode n(single(245));
  n->start();
  REQUIRE(leads(*n));
  proc::Client admin = connect(*n);
  REQUIRE(show(admin.call({"SET", "k", "v"})) == "OK");
  CHECK(show(admin.call({"CHECKPOINT"})) == "OK");
  const std::string again = show(admin.call({"CHECKPOINT"}));
  CHECK(again.rfind("-ERR CHECKPOINT ran less than checkpoint-interval (1 s) ago", 0) == 0);
  CHECK(show(admin.call({"SET", "k", "w"})) == "OK");  // nothing else is held up
  REQUIRE(show(admin.call({"CONFIG", "SET", "checkpoint-interval", "0"})) == "OK");
  CHECK(show(admin.call({"CHECKPOINT"})) == "OK");
}

TEST_CASE("max-command-bytes (16 MiB by default): a write just over it is refused before it is proposed, the "
          "connection and the cluster keep working; one just under replicates",
          "[limits]") {
  in_process::Cluster c(246, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = leader == 1 ? 2 : 1;
  proc::Client l = connect(c[leader]);
  proc::Client f = connect(c[follower]);
  CHECK(show(l.call({"CONFIG", "GET", "max-command-bytes"})) == "[max-command-bytes, 16777216]");
  CHECK(show(l.call({"CONFIG", "GET", "proto-max-bulk-len"})) == "[proto-max-bulk-len, 16777216]");
  const std::size_t limit = std::size_t{16} << 20;
  // MSET a <v> b <v>, encoded: *5, five bulk headers and the words.
  const auto mset = [](std::size_t value) {
    return std::vector<std::string>{"MSET", "a", std::string(value, 'a'), "b", std::string(value, 'b')};
  };
  const auto encoded = [](const std::vector<std::string>& words) {
    std::string out;
    resp::write_command(out, words);
    return out.size();
  };
  std::size_t value = limit / 2;
  while (encoded(mset(value)) > limit) --value;
  const std::vector<std::string> fits = mset(value), over = mset(value + 1);
  REQUIRE(encoded(fits) == limit);
  const std::string refusal = "-ERR the write is " + std::to_string(limit + 2) +
                              " bytes; the limit for one command is " + std::to_string(limit) + "; it was not run";
  CHECK(show(l.call(over, proc::scaled(30000))) == refusal);
  CHECK(show(f.call(over, proc::scaled(30000))) == refusal);
  CHECK(show(l.call({"PING"})) == "PONG");
  CHECK(show(f.call({"PING"})) == "PONG");
  // Through the follower. On a loaded machine a 16 MiB entry may take longer to commit than
  // the follower waits for its forward (append + election timeout): then the answer is
  // -TIMEOUT, outcome unknown, as documented; either way it must replicate.
  const std::string through_follower = show(f.call(fits, proc::scaled(30000)));
  CHECK((through_follower == "OK" || through_follower.rfind("-TIMEOUT", 0) == 0));
  for (int i = 1; i <= 3; ++i) {
    INFO("node " << i);
    CHECK(in_process::eventually(in_process::scaled(30000), [&] { return in_process::stored(c[i], "b") == fits[4]; }));
  }
  // Three copies of 16 MiB, each sealed, sent, opened and written, may hold a follower's peer
  // thread past an election timeout on a loaded machine: a leader change then is allowed, a
  // cluster that stops serving is not.
  std::string last;
  in_process::eventually(in_process::scaled(15000), [&] { return (last = show(l.call({"SET", "k", "v"}))) == "OK"; });
  CHECK(last == "OK");
}

TEST_CASE("Config::validate keeps the limits within what the peer protocol carries", "[limits]") {
  raft::Config c = single(248);
  CHECK(c.validate() == "");
  c.max_command_bytes = raft::detail::kMaxCommandBytes + 1;
  CHECK_THAT(c.validate(), Catch::StartsWith("max_command_bytes must be between 1 and"));
  c.max_command_bytes = raft::detail::kMaxCommandBytes;
  CHECK(c.validate() == "");
  c.client_limits.max_bulk_length = raft::detail::kProtoMaxBulkLen + 1;
  CHECK_THAT(c.validate(), Catch::StartsWith("client_limits.max_bulk_length (proto-max-bulk-len)"));
  c.client_limits.max_bulk_length = 1 << 20;
  c.client_query_buffer_limit = 1000;
  CHECK_THAT(c.validate(), Catch::StartsWith("client_query_buffer_limit must be at least 1 MiB"));
  c.client_query_buffer_limit = 1 << 20;
  c.client_timeout_s = -1;
  CHECK_THAT(c.validate(), Catch::Contains("must not be negative"));
}
