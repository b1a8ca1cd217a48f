// MULTI / EXEC / DISCARD / WATCH / UNWATCH: side by side with a real redis-server (both
// protocols, errors and WATCH aborts from a second connection), through a follower of a
// 3-node cluster, a WATCH check-and-set race across nodes, WATCH's stamps in a snapshot, and
// redis-py's transactional pipeline.

#include "in_process.hpp"
#include "proc.hpp"
#include "raft.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

using raft::Store;
using Reply = resp::Value;
using test_support::is_ok;

namespace {

std::string client_ip(const raft::Node& n) { return n.address().substr(0, n.address().find(':')); }
int client_port(const raft::Node& n) { return std::stoi(n.address().substr(n.address().find(':') + 1)); }

// One step of a script: which connection (0: A, 1: B) sends what.
struct Step {
  int conn;
  std::vector<std::string> words;
};

std::vector<Step> script() {
  return {
      {0, {"EXEC"}}, {0, {"DISCARD"}}, {0, {"UNWATCH"}}, {0, {"WATCH"}}, {0, {"MULTI", "x"}},
      // replies of every kind, an error at run time that does not stop the others
      {0, {"MULTI"}}, {0, {"MULTI"}}, {0, {"WATCH", "k"}}, {0, {"SET", "k", "1"}}, {0, {"INCR", "k"}},
      {0, {"LPUSH", "k", "x"}}, {0, {"GET", "k"}}, {0, {"HSET", "h", "f", "v"}}, {0, {"HGETALL", "h"}},
      {0, {"PING"}}, {0, {"PING", "p"}}, {0, {"ECHO", "e"}}, {0, {"GET", "nope"}}, {0, {"EXEC"}},
      // errors when queued: EXECABORT, nothing runs
      {0, {"MULTI"}}, {0, {"NOSUCHCOMMAND", "a"}}, {0, {"SET", "k", "2"}}, {0, {"EXEC"}}, {0, {"GET", "k"}},
      {0, {"MULTI"}}, {0, {"GET"}}, {0, {"SET", "k", "2"}}, {0, {"EXEC"}}, {0, {"GET", "k"}},
      {0, {"MULTI"}}, {0, {"WATCH"}}, {0, {"EXEC"}},
      {0, {"MULTI"}}, {0, {"MULTI", "x"}}, {0, {"EXEC"}},
      {0, {"MULTI"}}, {0, {"UNWATCH"}}, {0, {"UNWATCH", "x"}}, {0, {"EXEC"}},
      {0, {"MULTI"}}, {0, {"UNWATCH"}}, {0, {"PING"}}, {0, {"EXEC"}},
      // empty, discarded
      {0, {"MULTI"}}, {0, {"EXEC"}}, {0, {"MULTI"}}, {0, {"SET", "k", "3"}}, {0, {"DISCARD"}}, {0, {"GET", "k"}},
      // WATCH: another connection changes the key
      {0, {"WATCH", "k"}}, {1, {"SET", "k", "10"}}, {0, {"MULTI"}}, {0, {"INCR", "k"}}, {0, {"EXEC"}},
      {0, {"GET", "k"}},
      // unchanged: runs
      {0, {"WATCH", "k", "other"}}, {0, {"GET", "k"}}, {0, {"MULTI"}}, {0, {"INCR", "k"}}, {0, {"EXEC"}},
      // deleted and created again
      {0, {"WATCH", "k"}}, {1, {"DEL", "k"}}, {1, {"SET", "k", "1"}}, {0, {"MULTI"}}, {0, {"GET", "k"}},
      {0, {"EXEC"}},
      // absent, then created by the other
      {0, {"WATCH", "m"}}, {1, {"SET", "m", "1"}}, {0, {"MULTI"}}, {0, {"GET", "m"}}, {0, {"EXEC"}},
      // absent, created and deleted again by the other
      {0, {"WATCH", "m3"}}, {1, {"SET", "m3", "1"}}, {1, {"DEL", "m3"}}, {0, {"MULTI"}}, {0, {"GET", "m3"}},
      {0, {"EXEC"}},
      // absent and left alone, while another key is deleted
      {1, {"SET", "other2", "1"}}, {0, {"WATCH", "m2"}}, {1, {"DEL", "other2"}},
      {0, {"WATCH", "m2"}}, {0, {"MULTI"}}, {0, {"SET", "m2", "x"}}, {0, {"EXEC"}},
      // its own write before WATCH is no change
      {0, {"SET", "w", "1"}}, {0, {"WATCH", "w"}}, {0, {"MULTI"}}, {0, {"INCR", "w"}}, {0, {"EXEC"}},
      // its own write after WATCH is (Redis aborts too)
      {0, {"WATCH", "w"}}, {0, {"SET", "w", "5"}}, {0, {"MULTI"}}, {0, {"INCR", "w"}}, {0, {"EXEC"}},
      // UNWATCH and DISCARD forget the watch
      {0, {"WATCH", "k"}}, {1, {"SET", "k", "5"}}, {0, {"UNWATCH"}}, {0, {"MULTI"}}, {0, {"GET", "k"}},
      {0, {"EXEC"}},
      {0, {"WATCH", "k"}}, {1, {"SET", "k", "6"}}, {0, {"MULTI"}}, {0, {"DISCARD"}}, {0, {"MULTI"}},
      {0, {"GET", "k"}}, {0, {"EXEC"}},
      // a transaction is atomic for the other connection: it sees all or nothing
      {0, {"MULTI"}}, {0, {"SET", "a", "1"}}, {1, {"GET", "a"}}, {0, {"SET", "b", "2"}}, {0, {"EXEC"}},
      {1, {"MGET", "a", "b"}},
  };
}

std::string with_prefix(const std::string& word, const std::string& prefix) {
  static const std::vector<std::string> keys{"k", "h", "nope", "m", "m2", "m3", "other2", "w", "a", "b", "other", "e"};
  for (const auto& k : keys)
    if (word == k) return prefix + word;
  return word;
}

}  // namespace

TEST_CASE("transactions answer as a real redis-server does, RESP2 and RESP3: queueing errors, EXECABORT, "
          "WATCH aborts from another connection",
          "[runtime][transactions][redis]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: the comparison with Redis is skipped");
    return;
  }
  proc::TempDir dir("tx-redis");
  proc::RedisServer redis(dir);
  REQUIRE(redis.port() != 0);
  in_process::TestNode node(in_process::node_config("1", in_process::address(226, 1)));
  node->start();
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return node->state() == 'l'; }));

  for (int protocol : {2, 3}) {
    const std::string prefix = "p" + std::to_string(protocol) + ":";
    std::vector<proc::Client> theirs, ours;
    for (int k = 0; k < 2; ++k) {
      theirs.emplace_back("127.0.0.1", redis.port());
      ours.emplace_back(client_ip(*node), client_port(*node));
      REQUIRE(theirs.back().connected());
      REQUIRE(ours.back().connected());
      if (protocol == 3) {
        REQUIRE(theirs.back().call({"HELLO", "3"}).type == resp::Type::Map);
        REQUIRE(ours.back().call({"HELLO", "3"}).type == resp::Type::Map);
      }
    }
    int step = 0;
    for (const auto& s : script()) {
      std::vector<std::string> words;
      for (const auto& w : s.words) words.push_back(with_prefix(w, prefix));
      INFO("RESP" << protocol << " step " << step++ << " conn " << s.conn << ": "
                  << test_support::show(resp::Value::strings(words)));
      const Reply a = theirs[std::size_t(s.conn)].call(words);
      const Reply b = ours[std::size_t(s.conn)].call(words);
      CHECK(resp::encode(b, protocol) == resp::encode(a, protocol));
    }
    // WATCH and an expiry before EXEC: Redis 7.0 aborts.
    for (auto* c : {&theirs, &ours}) {
      proc::Client& a = (*c)[0];
      proc::Client& b = (*c)[1];
      CHECK(is_ok(a.call({"SET", prefix + "e", "v", "PX", "200"})));
      CHECK(is_ok(a.call({"WATCH", prefix + "e"})));
      CHECK(in_process::eventually(in_process::long_wait(),
                                   [&] { return b.call({"EXISTS", prefix + "e"}).num == 0; }));
      CHECK(is_ok(a.call({"MULTI"})));
      CHECK(a.call({"GET", prefix + "e"}).str == "QUEUED");
      const Reply r = a.call({"EXEC"});
      CHECK(resp::encode(r, protocol) == (protocol == 2 ? "*-1\r\n" : "_\r\n"));
    }
  }
}

TEST_CASE("inside MULTI, commands the node answers itself are refused when queued: EXECABORT",
          "[runtime][transactions]") {
  in_process::TestNode node(in_process::node_config("1", in_process::address(227, 1)));
  node->start();
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return node->state() == 'l'; }));
  proc::Client c(client_ip(*node), client_port(*node));
  REQUIRE(c.connected());
  CHECK(is_ok(c.call({"MULTI"})));
  CHECK(c.call({"SET", "x", "1"}).str == "QUEUED");
  CHECK_THAT(c.call({"CLIENT", "SETNAME", "n"}).str, Catch::Contains("not supported inside MULTI"));
  CHECK(c.call({"__expire", "x"}).str.rfind("ERR unknown command", 0) == 0);  // reserved names stay hidden
  CHECK(c.call({"EXEC"}).str == "EXECABORT Transaction discarded because of previous errors.");
  CHECK(c.call({"EXISTS", "x"}).num == 0);
  // The connection is usable afterwards, and QUIT inside MULTI is answered at once.
  CHECK(is_ok(c.call({"MULTI"})));
  CHECK(is_ok(c.call({"QUIT"})));
}

TEST_CASE("EXEC through a follower is one entry, applied on every node; a WATCH check-and-set race between "
          "clients on two nodes never loses an increment",
          "[runtime][transactions][cluster]") {
  in_process::Cluster c(228, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int f1 = c.other_than(leader);
  const int f2 = c.other_than(leader, f1);

  proc::Client follower(client_ip(c[f1]), client_port(c[f1]));
  REQUIRE(follower.connected());
  CHECK(is_ok(follower.call({"MULTI"})));
  CHECK(follower.call({"SET", "t", "1"}).str == "QUEUED");
  CHECK(follower.call({"INCRBY", "t", "41"}).str == "QUEUED");
  CHECK(follower.call({"GET", "t"}).str == "QUEUED");
  CHECK(follower.call({"INCR", "h"}).str == "QUEUED");
  const Reply r = follower.call({"EXEC"});
  CHECK(test_support::show(r) == test_support::show(resp::Value::array(
                                     {Reply::ok(), Reply::integer(42), Reply::bulk("42"), Reply::integer(1)})));
  for (int i = 1; i <= 3; ++i) {
    proc::Client n(client_ip(c[i]), client_port(c[i]));
    CHECK(n.call({"GET", "t"}).str == "42");
  }

  // WATCH on a follower, a write through the leader: EXEC (sent to the follower) aborts,
  // whether or not the follower has applied the write yet; left alone, it commits.
  proc::Client on_leader(client_ip(c[leader]), client_port(c[leader]));
  CHECK(is_ok(follower.call({"WATCH", "t"})));
  CHECK(on_leader.call({"INCR", "t"}).num == 43);
  CHECK(is_ok(follower.call({"MULTI"})));
  CHECK(follower.call({"SET", "t", "0"}).str == "QUEUED");
  CHECK(follower.call({"EXEC"}).type == resp::Type::NullArray);
  CHECK(on_leader.call({"GET", "t"}).str == "43");
  CHECK(is_ok(follower.call({"WATCH", "t"})));
  CHECK(is_ok(follower.call({"MULTI"})));
  CHECK(follower.call({"SET", "t", "0"}).str == "QUEUED");
  CHECK(follower.call({"EXEC"}).elements.size() == 1);
  CHECK(on_leader.call({"GET", "t"}).str == "0");

  // Check-and-set: WATCH, GET, MULTI SET v+1 EXEC, again on a null reply. Two clients, a
  // follower and the other follower (or the leader), each until it has made kEach increments.
  constexpr int kEach = 25;
  std::atomic<int> aborted{0};
  std::atomic<bool> failed{false};
  const auto racer = [&](int node) {
    proc::Client cl(client_ip(c[node]), client_port(c[node]));
    if (!cl.connected()) {
      failed = true;
      return;
    }
    int done = 0, tries = 0;
    while (done < kEach && tries++ < 2000 && !failed) {
      if (!is_ok(cl.call({"WATCH", "counter"}))) {
        failed = true;
        return;
      }
      const Reply v = cl.call({"GET", "counter"});
      const long long n = v.type == resp::Type::BulkString ? std::stoll(v.str) : 0;
      cl.call({"MULTI"});
      cl.call({"SET", "counter", std::to_string(n + 1)});
      const Reply e = cl.call({"EXEC"});
      if (e.type == resp::Type::Array && e.elements.size() == 1 && is_ok(e.elements[0]))
        ++done;
      else if (e.type == resp::Type::NullArray || e.type == resp::Type::Null)
        ++aborted;
      else
        failed = true;  // an error (TRYAGAIN...) would make the count unknown
    }
    if (done < kEach) failed = true;
  };
  std::thread t1(racer, f1), t2(racer, f2 == 0 ? leader : f2);
  t1.join();
  t2.join();
  REQUIRE_FALSE(failed.load());
  proc::Client check(client_ip(c[leader]), client_port(c[leader]));
  CHECK(check.call({"GET", "counter"}).str == std::to_string(2 * kEach));
  INFO("aborted " << aborted.load());
}

TEST_CASE("WATCH's stamps: set by writes at their entry's index, kept by a snapshot round trip; a store "
          "without them writes the same text as before",
          "[store][transactions]") {
  raft::CommandTable t;
  raft::add_builtin_commands(t);
  Store s;
  const auto run = [&](std::uint64_t index, std::vector<std::string> words) {
    s.set_write_index(index);
    raft::Call call{s, words, 1000, nullptr, index, 1};
    return t.at(words[0]).fn(call);
  };
  raft::SnapshotMeta meta;
  meta.index = 9;
  meta.term = 1;
  std::string plain;
  s.write_snapshot(plain, meta);
  CHECK(plain.find("'modified'") == std::string::npos);

  run(3, {"set", "a", "1"});
  run(4, {"rpush", "l", "x", "y"});
  run(5, {"set", "gone", "1"});
  run(6, {"del", "gone"});
  run(7, {"pexpire", "a", "100000"});
  CHECK(s.modified_index("a") == 7);
  CHECK(s.modified_index("l") == 4);
  CHECK(s.modified_index("gone") == 0);
  CHECK(s.deleted_index("gone") == 6);
  CHECK(s.deleted_index("a") == 0);
  run(8, {"del", "nothing"});  // deletes nothing: no stamp
  CHECK(s.deleted_index("nothing") == 0);

  s.settle_memory();  // as the runtime does after each write
  std::string text;
  s.write_snapshot(text, meta);
  CHECK_THAT(text, Catch::EndsWith(", 'modified': [0, {'a': 7, 'l': 4}, {'gone': 6}]}"));
  Store loaded;
  raft::SnapshotMeta m;
  std::string error;
  REQUIRE(Store::read_snapshot(text, loaded, m, error));
  CHECK(loaded == s);
  CHECK(loaded.modified_index("a") == 7);
  CHECK(loaded.deleted_index("gone") == 6);
  CHECK(loaded.used_memory() == s.used_memory());
  std::string again;
  loaded.write_snapshot(again, meta);
  CHECK(again == text);

  // Without the section (an older snapshot): no stamps, and it loads.
  const std::string old = text.substr(0, text.find(", 'modified'")) + "}";
  Store from_old;
  REQUIRE(Store::read_snapshot(old, from_old, m, error));
  CHECK(from_old.modified_index("a") == 0);
  CHECK(from_old.deleted_index("gone") == 0);
  // A stamp for a key not in the data is refused.
  std::string bad = text;
  bad.replace(bad.find("{'a': 7"), 7, "{'zz': 7");
  CHECK_FALSE(Store::read_snapshot(bad, from_old, m, error));
  CHECK_THAT(error, Catch::Contains("not in 'data'"));

  // Past kMaxTombstones deletions the oldest stamps are forgotten into one index, and the
  // memory estimate follows them.
  const std::size_t before = s.used_memory();
  for (std::size_t i = 0; i <= Store::kMaxTombstones; ++i) {
    run(100 + i, {"set", "t" + std::to_string(i), "v"});
    run(100 + i, {"del", "t" + std::to_string(i)});
  }
  s.settle_memory();
  CHECK(s.deleted_index("gone") == 100);  // forgotten: the latest index forgotten
  CHECK(s.deleted_index("t1") == 101);
  CHECK(s.used_memory() > before);
  CHECK(s.used_memory() < before + (Store::kMaxTombstones + 1) * (Store::kTombstoneBytes + 12));
}

TEST_CASE("a node restarted from its snapshot has WATCH's stamps: the same store, stamps and deleted keys "
          "included",
          "[runtime][transactions]") {
  in_process::TempDir dir("tx-restart");
  raft::Config cfg = in_process::node_config("1", in_process::address(229, 1));
  cfg.data_dir = dir.file("data");
  Store before;
  {
    in_process::TestNode node(cfg);
    node->start();
    REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return node->state() == 'l'; }));
    proc::Client cl(client_ip(*node), client_port(*node));
    REQUIRE(cl.connected());
    CHECK(is_ok(cl.call({"SET", "a", "1"})));
    CHECK(cl.call({"RPUSH", "l", "x"}).num == 1);
    CHECK(is_ok(cl.call({"SET", "gone", "1"})));
    CHECK(cl.call({"DEL", "gone"}).num == 1);
    CHECK(is_ok(cl.call({"MULTI"})));
    CHECK(cl.call({"INCR", "a"}).str == "QUEUED");
    CHECK(cl.call({"EXEC"}).type == resp::Type::Array);
    CHECK(is_ok(cl.call({"CHECKPOINT"})));
    node->read([&](const Store& s) { before = s; });
    CHECK(before.modified_index("a") > before.modified_index("l"));
    CHECK(before.deleted_index("gone") > 0);
  }
  in_process::TestNode again(cfg);
  again->start();
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return again->state() == 'l'; }));
  Store after;
  again->read([&](const Store& s) { after = s; });
  CHECK(after == before);
  CHECK(after.modified_index("a") == before.modified_index("a"));
  CHECK(after.deleted_index("gone") == before.deleted_index("gone"));
}

TEST_CASE("redis-py: pipeline(transaction=True) with watch against a 3-node cluster, through a follower",
          "[runtime][transactions][cluster][clients]") {
  if (proc::find_program("/usr/bin/python3").empty()) FAIL("python3 is missing: tools/deps.sh installs it");
  proc::TempDir dir("tx-py");
  if (proc::run("python3", {"/usr/bin/python3", "-c", "import redis"}, dir, in_process::scaled(20000)).code != 0)
    FAIL("python3-redis is missing: tools/deps.sh installs it");
  in_process::Cluster c(227, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int f = c.other_than(leader);
  const std::string py = R"(
import sys, redis
host, port = sys.argv[1], int(sys.argv[2])
r = redis.Redis(host=host, port=port)
other = redis.Redis(host=host, port=port)
r.set('py:n', 0)
def incr(pipe):
    n = int(pipe.get('py:n'))
    pipe.multi()
    pipe.set('py:n', n + 1)
for _ in range(10):
    r.transaction(incr, 'py:n')
# an abort: the watched key changes before EXEC
with r.pipeline(transaction=True) as p:
    p.watch('py:n')
    other.incr('py:n')
    p.multi()
    p.incr('py:n')
    try:
        p.execute()
        print('not aborted')
    except redis.WatchError:
        print('aborted')
print(r.pipeline(transaction=True).set('py:a', 1).incr('py:a').get('py:a').execute())
print(int(r.get('py:n')))
)";
  const proc::RunResult res = proc::run(
      "python3", {"/usr/bin/python3", "-c", py, client_ip(c[f]), std::to_string(client_port(c[f]))}, dir,
      in_process::scaled(60000));
  INFO(res.out << res.err);
  CHECK(res.code == 0);
  CHECK(res.out == "aborted\n[True, 2, b'2']\n11\n");
}

TEST_CASE("ACL inside MULTI: a refused command makes EXEC abort; a forwarded transaction is checked by the "
          "leader's ACL, command by command",
          "[runtime][transactions][cluster][acl]") {
  in_process::Cluster c(228, 3, [](raft::Config& cfg) {
    cfg.users = {"reader on >r ~* +@read +@connection", "writer on >w ~* +@read +@write +@connection"};
  });
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int f = c.other_than(leader);
  proc::Client rc(client_ip(c[f]), client_port(c[f]));
  REQUIRE(is_ok(rc.call({"AUTH", "reader", "r"})));
  CHECK(is_ok(rc.call({"MULTI"})));
  CHECK(rc.call({"GET", "x"}).str == "QUEUED");
  CHECK(rc.call({"SET", "x", "1"}).str.rfind("NOPERM", 0) == 0);
  CHECK(rc.call({"EXEC"}).str.rfind("EXECABORT", 0) == 0);

  // The leader no longer lets the writer SET; the follower still does: the leader's word counts.
  proc::Client admin(client_ip(c[leader]), client_port(c[leader]));
  proc::Client wc(client_ip(c[f]), client_port(c[f]));
  REQUIRE(is_ok(wc.call({"AUTH", "writer", "w"})));
  REQUIRE(is_ok(admin.call({"AUTH", "writer", "w"})));
  CHECK(is_ok(wc.call({"SET", "y", "0"})));
  // (ACL SETUSER needs an administrator: the default user has no password and every right.)
  proc::Client root(client_ip(c[leader]), client_port(c[leader]));
  CHECK(is_ok(root.call({"ACL", "SETUSER", "writer", "-set"})));
  CHECK(is_ok(wc.call({"MULTI"})));
  CHECK(wc.call({"INCR", "y"}).str == "QUEUED");
  CHECK(wc.call({"SET", "y", "5"}).str == "QUEUED");
  const Reply r = wc.call({"EXEC"});
  CHECK(r.type == resp::Type::Error);
  CHECK(r.str.rfind("NOPERM", 0) == 0);
  CHECK(admin.call({"GET", "y"}).str == "0");  // nothing ran, INCR included
}
