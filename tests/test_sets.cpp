// Sets and sorted sets: the commands called through the handler table with a Store and a Call,
// their snapshot text (read back by python3's ast.literal_eval), the determinism of SPOP and
// SRANDMEMBER in a write, and the replies side by side with a real redis-server, RESP2 and RESP3.
#include "in_process.hpp"
#include "proc.hpp"
#include "raft.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <unistd.h>

namespace {

using raft::Store;
using Reply = resp::Value;

constexpr std::int64_t kT0 = 1'700'000'000'000;

/// test_support::Db, whose replies these tests read as RESP bytes.
struct Db : test_support::Db {
  Reply call(std::vector<std::string> words) { return reply(std::move(words)); }
  /// The reply as RESP2 bytes (doubles as Redis 7.0 writes them), with \r\n shown as '|'.
  std::string operator()(std::vector<std::string> words, int protocol = 2) {
    std::string bytes = resp::encode(call(std::move(words)), protocol);
    std::string out;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      if (bytes.compare(i, 2, "\r\n") == 0) {
        out += '|';
        ++i;
      } else {
        out += bytes[i];
      }
    }
    return out;
  }
};

const char* const kWrongType = "-WRONGTYPE Operation against a key holding the wrong kind of value|";

/// Sorts the elements of every set in a reply (Redis's order is its hash table's).
Reply sorted_sets(Reply v) {
  for (auto& e : v.elements) e = sorted_sets(std::move(e));
  if (v.type == resp::Type::Set)
    std::sort(v.elements.begin(), v.elements.end(),
              [](const Reply& a, const Reply& b) { return resp::encode(a, 3) < resp::encode(b, 3); });
  return v;
}

/// Runs python3 on `script` with the file as its argument; its stdout.
std::string run_python(const std::string& script, const std::string& input) {
  char in_name[] = "/tmp/raft_sets_in_XXXXXX", py_name[] = "/tmp/raft_sets_py_XXXXXX",
       out_name[] = "/tmp/raft_sets_out_XXXXXX";
  for (char* n : {in_name, py_name, out_name}) {
    const int fd = mkstemp(n);
    REQUIRE(fd >= 0);
    close(fd);
  }
  std::ofstream(in_name, std::ios::binary) << input;
  std::ofstream(py_name, std::ios::binary) << script;
  const int status = std::system(("/usr/bin/python3 " + std::string(py_name) + " " + in_name + " > " + out_name).c_str());
  std::ostringstream out;
  out << std::ifstream(out_name, std::ios::binary).rdbuf();
  for (const char* n : {in_name, py_name, out_name}) std::remove(n);
  REQUIRE(status == 0);
  return out.str();
}

}  // namespace

TEST_CASE("sets: sadd, srem, smembers, sismember, smismember, scard, type", "[store][sets]") {
  Db db;
  CHECK(db({"sadd", "s", "b", "a", "b"}) == ":2|");
  CHECK(db({"sadd", "s", "a", "c"}) == ":1|");
  CHECK(db({"smembers", "s"}) == "*3|$1|a|$1|b|$1|c|");
  CHECK(db({"smembers", "s"}, 3) == "~3|$1|a|$1|b|$1|c|");
  CHECK(db({"smembers", "none"}, 3) == "~0|");
  CHECK(db({"sismember", "s", "a"}) == ":1|");
  CHECK(db({"sismember", "s", "x"}) == ":0|");
  CHECK(db({"smismember", "s", "a", "x", "c"}) == "*3|:1|:0|:1|");
  CHECK(db({"smismember", "none", "a"}) == "*1|:0|");
  CHECK(db({"scard", "s"}) == ":3|");
  CHECK(db({"type", "s"}) == "+set|");
  CHECK(db({"srem", "s", "a", "x", "a"}) == ":1|");
  CHECK(db({"srem", "s", "b", "c"}) == ":2|");
  CHECK(db({"type", "s"}) == "+none|");  // an emptied set is deleted
  CHECK(db.store.empty());
  CHECK(db({"set", "str", "v"}) == "+OK|");
  for (auto words : std::vector<std::vector<std::string>>{{"sadd", "str", "a"}, {"srem", "str", "a"},
                                                          {"smembers", "str"}, {"sismember", "str", "a"},
                                                          {"scard", "str"}, {"spop", "str"},
                                                          {"srandmember", "str"}, {"sinter", "str"},
                                                          {"smove", "str", "x", "a"}}) {
    INFO(words[0]);
    CHECK(db(words) == kWrongType);
  }
}

TEST_CASE("sets: sinter, sunion, sdiff and their STORE forms, smove", "[store][sets]") {
  Db db;
  db({"sadd", "a", "1", "2", "3"});
  db({"sadd", "b", "2", "3", "4"});
  CHECK(db({"sinter", "a", "b"}) == "*2|$1|2|$1|3|");
  CHECK(db({"sinter", "a", "b", "none"}) == "*0|");
  CHECK(db({"sunion", "a", "b", "none"}) == "*4|$1|1|$1|2|$1|3|$1|4|");
  CHECK(db({"sdiff", "a", "b"}) == "*1|$1|1|");
  CHECK(db({"sdiff", "none", "a"}) == "*0|");
  CHECK(db({"sinterstore", "d", "a", "b"}) == ":2|");
  CHECK(db({"smembers", "d"}) == "*2|$1|2|$1|3|");
  CHECK(db({"set", "str", "v"}) == "+OK|");
  CHECK(db({"sunionstore", "str", "a", "b"}) == ":4|");  // the destination's kind does not matter
  CHECK(db({"type", "str"}) == "+set|");
  CHECK(db({"sdiffstore", "d", "a", "a"}) == ":0|");     // an empty result deletes it
  CHECK(db({"exists", "d"}) == ":0|");
  CHECK(db({"set", "x", "v"}) == "+OK|");
  CHECK(db({"sinterstore", "d", "a", "x"}) == kWrongType);
  CHECK(db({"smove", "a", "b", "1"}) == ":1|");
  CHECK(db({"smove", "a", "b", "1"}) == ":0|");
  CHECK(db({"smove", "a", "a", "2"}) == ":1|");
  CHECK(db({"smove", "a", "new", "2"}) == ":1|");
  CHECK(db({"smove", "a", "new", "3"}) == ":1|");
  CHECK(db({"exists", "a"}) == ":0|");
  CHECK(db({"smembers", "new"}) == "*2|$1|2|$1|3|");
  CHECK(db({"smove", "b", "x", "2"}) == kWrongType);
  CHECK(db({"smove", "none", "x", "2"}) == ":0|");  // a missing source first, as Redis
}

TEST_CASE("sets: spop and srandmember, with and without a count", "[store][sets]") {
  Db db;
  CHECK(db({"spop", "none"}) == "$-1|");
  CHECK(db({"spop", "none", "2"}, 3) == "~0|");
  CHECK(db({"srandmember", "none"}) == "$-1|");
  CHECK(db({"srandmember", "none", "2"}) == "*0|");
  db({"sadd", "s", "a", "b", "c", "d"});
  CHECK(db({"spop", "s", "-1"}) == "-ERR value is out of range, must be positive|");
  CHECK(db({"spop", "s", "0"}, 3) == "~0|");  // redis-server 7.0.15 sends ~0 (test_differential)
  const Reply one = db.call({"spop", "s"});
  REQUIRE(one.type == resp::Type::BulkString);
  CHECK(db({"sismember", "s", one.str}) == ":0|");
  const Reply two = db.call({"spop", "s", "2"});
  REQUIRE(two.type == resp::Type::Set);
  CHECK(two.elements.size() == 2);
  CHECK(db({"scard", "s"}) == ":1|");
  CHECK(db({"srandmember", "s", "5"}).substr(0, 3) == "*1|");
  const Reply repeats = db.call({"srandmember", "s", "-5"});
  CHECK(repeats.elements.size() == 5);
  CHECK(db({"srandmember", "s", "x"}) == "-ERR value is not an integer or out of range|");
  CHECK(db({"srandmember", "s", "-9223372036854775808"}).rfind("-ERR value is out of range", 0) == 0);
  CHECK(db({"srandmember", "s", "-9223372036854775807"}).rfind("-ERR count is too large", 0) == 0);
  CHECK(db({"spop", "s", "7"}, 3).substr(0, 3) == "~1|");  // all of it
  CHECK(db.store.empty());
}

TEST_CASE("sets: spop and srandmember in a write choose alike for the same entry, and differently for others",
          "[store][sets]") {
  const auto run = [](std::uint64_t index, std::uint64_t term) {
    Db db;
    db.index = index;
    db.term = term;
    std::vector<std::string> add{"sadd", "s"};
    for (int i = 0; i < 100; ++i) add.push_back("m" + std::to_string(i));
    db.call(add);
    std::string out = db({"spop", "s", "10"}) + db({"spop", "s"}) + db({"srandmember", "s", "-20"}) +
                      db({"srandmember", "s", "5"});
    std::string snapshot;
    db.store.write_snapshot(snapshot, raft::SnapshotMeta{});
    return out + snapshot;
  };
  CHECK(run(7, 3) == run(7, 3));
  CHECK(run(7, 3) != run(8, 3));
  CHECK(run(7, 3) != run(7, 4));
}

TEST_CASE("sorted sets: zadd and its options, zscore, zmscore, zincrby, zcard, zrem", "[store][sets]") {
  Db db;
  CHECK(db({"zadd", "z", "1.1", "a", "2", "b", "inf", "c"}) == ":3|");
  CHECK(db({"zscore", "z", "a"}) == "$18|1.1000000000000001|");  // Redis 7.0's %.17g
  CHECK(db({"zscore", "z", "a"}, 3) == ",1.1000000000000001|");
  CHECK(db({"zscore", "z", "c"}) == "$3|inf|");
  CHECK(db({"zscore", "z", "none"}, 3) == "_|");
  CHECK(db({"zmscore", "z", "b", "none"}) == "*2|$1|2|$-1|");
  CHECK(db({"zadd", "z", "nx", "5", "a", "3", "d"}) == ":1|");
  CHECK(db({"zadd", "z", "xx", "ch", "5", "a", "3", "e"}) == ":1|");
  CHECK(db({"zadd", "z", "gt", "ch", "1", "a", "6", "b"}) == ":1|");  // a stays 5, b goes up
  CHECK(db({"zadd", "z", "lt", "ch", "9", "a", "4", "b"}) == ":1|");
  CHECK(db({"zadd", "z", "incr", "0.5", "a"}) == "$3|5.5|");
  CHECK(db({"zadd", "z", "nx", "incr", "1", "a"}) == "$-1|");
  CHECK(db({"zadd", "none", "xx", "1", "a"}) == ":0|");
  CHECK(db({"exists", "none"}) == ":0|");
  CHECK(db({"zincrby", "z", "-inf", "c"}) == "-ERR resulting score is not a number (NaN)|");
  CHECK(db({"zincrby", "z", "x", "c"}) == "-ERR value is not a valid float|");
  CHECK(db({"zincrby", "z", "2", "new"}, 3) == ",2|");
  CHECK(db({"zadd", "z", "nan", "a"}) == "-ERR value is not a valid float|");
  CHECK(db({"zadd", "z", "1e400", "a"}) == "-ERR value is not a valid float|");
  CHECK(db({"zadd", "z", "1", "a", "2"}) == "-ERR syntax error|");
  CHECK(db({"zadd", "z", "nx", "xx", "1", "a"}) == "-ERR XX and NX options at the same time are not compatible|");
  CHECK(db({"zadd", "z", "gt", "lt", "1", "a"}) ==
        "-ERR GT, LT, and/or NX options at the same time are not compatible|");
  CHECK(db({"zadd", "z", "incr", "1", "a", "2", "b"}) == "-ERR INCR option supports a single increment-element pair|");
  CHECK(db({"zcard", "z"}) == ":5|");
  CHECK(db({"type", "z"}) == "+zset|");
  CHECK(db({"zrem", "z", "a", "b", "c", "x"}) == ":3|");
  CHECK(db({"zrem", "z", "d", "new"}) == ":2|");
  CHECK(db.store.empty());
  CHECK(db({"set", "str", "v"}) == "+OK|");
  for (auto words : std::vector<std::vector<std::string>>{{"zadd", "str", "1", "a"}, {"zscore", "str", "a"},
                                                          {"zrange", "str", "0", "1"}, {"zpopmin", "str"},
                                                          {"zrank", "str", "a"}, {"zcount", "str", "0", "1"}}) {
    INFO(words[0]);
    CHECK(db(words) == kWrongType);
  }
}

TEST_CASE("sorted sets: ranks, counts and ranges by rank, score and lex, reversed and limited", "[store][sets]") {
  Db db;
  db({"zadd", "z", "1", "a", "2", "b", "2", "c", "3", "d", "-inf", "m", "inf", "z"});
  CHECK(db({"zrank", "z", "b"}) == ":2|");
  CHECK(db({"zrevrank", "z", "b"}) == ":3|");
  CHECK(db({"zrank", "z", "none"}) == "$-1|");
  CHECK(db({"zcount", "z", "(1", "3"}) == ":3|");
  CHECK(db({"zcount", "z", "-inf", "+inf"}) == ":6|");
  CHECK(db({"zcount", "z", "x", "1"}) == "-ERR min or max is not a float|");
  CHECK(db({"zrange", "z", "1", "2"}) == "*2|$1|a|$1|b|");
  CHECK(db({"zrange", "z", "0", "1", "rev"}) == "*2|$1|z|$1|d|");
  CHECK(db({"zrange", "z", "0", "0", "withscores"}) == "*2|$1|m|$4|-inf|");
  CHECK(db({"zrange", "z", "0", "1", "withscores"}, 3) == "*2|*2|$1|m|,-inf|*2|$1|a|,1|");
  CHECK(db({"zrange", "z", "(1", "3", "byscore"}) == "*3|$1|b|$1|c|$1|d|");
  CHECK(db({"zrange", "z", "3", "(1", "byscore", "rev", "limit", "1", "1"}) == "*1|$1|c|");
  CHECK(db({"zrangebyscore", "z", "2", "2", "withscores"}) == "*4|$1|b|$1|2|$1|c|$1|2|");
  CHECK(db({"zrevrangebyscore", "z", "+inf", "3"}) == "*2|$1|z|$1|d|");
  CHECK(db({"zrangebyscore", "z", "-inf", "+inf", "limit", "-1", "2"}) == "*0|");
  CHECK(db({"zrangebyscore", "z", "-inf", "+inf", "limit", "4", "-1"}) == "*2|$1|d|$1|z|");
  CHECK(db({"zrange", "z", "0", "1", "limit", "0", "1"}) ==
        "-ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX|");
  CHECK(db({"zrange", "z", "[a", "+", "bylex", "withscores"}) ==
        "-ERR syntax error, WITHSCORES not supported in combination with BYLEX|");
  CHECK(db({"zrange", "z", "a", "+", "bylex"}) == "-ERR min or max not valid string range item|");
  CHECK(db({"zrangebyscore", "z", "0", "1", "rev"}) == "-ERR syntax error|");
  db({"zadd", "lex", "0", "a", "0", "b", "0", "c", "0", "d"});
  CHECK(db({"zrange", "lex", "[b", "(d", "bylex"}) == "*2|$1|b|$1|c|");
  CHECK(db({"zrange", "lex", "+", "(b", "bylex", "rev"}) == "*2|$1|d|$1|c|");
  CHECK(db({"zrange", "lex", "-", "+", "bylex", "limit", "1", "2"}) == "*2|$1|b|$1|c|");
  CHECK(db({"zremrangebyscore", "z", "2", "(3"}) == ":2|");
  CHECK(db({"zremrangebyrank", "z", "0", "1"}) == ":2|");
  CHECK(db({"zrange", "z", "0", "-1"}) == "*2|$1|d|$1|z|");
  CHECK(db({"zremrangebyrank", "z", "0", "-1"}) == ":2|");
  CHECK(db({"exists", "z"}) == ":0|");
}

TEST_CASE("sorted sets: zpopmin and zpopmax", "[store][sets]") {
  Db db;
  CHECK(db({"zpopmin", "none"}) == "*0|");
  db({"zadd", "z", "1", "a", "2", "b", "3", "c"});
  CHECK(db({"zpopmin", "z"}, 3) == "*2|$1|a|,1|");
  CHECK(db({"zpopmax", "z", "5"}) == "*4|$1|c|$1|3|$1|b|$1|2|");
  CHECK(db({"exists", "z"}) == ":0|");
  db({"zadd", "z", "1", "a", "2", "b"});
  CHECK(db({"zpopmax", "z", "1"}, 3) == "*1|*2|$1|b|,2|");
  CHECK(db({"zpopmin", "z", "-1"}) == "-ERR value is out of range, must be positive|");
  CHECK(db({"zpopmin", "z", "0"}) == "*0|");
}

TEST_CASE("sets and sorted sets count in used_memory as they grow and shrink", "[store][sets]") {
  Db db;
  const std::size_t empty = db.store.used_memory();
  db({"sadd", "s", "a", "bb"});
  const std::size_t set2 = db.store.used_memory();
  CHECK(set2 == empty + Store::kKeyBytes + 2 * 1 + 2 * Store::kSetEntryBytes + 3);  // the key twice: SCAN's index
  db({"zadd", "z", "1", "abc"});
  CHECK(db.store.used_memory() == set2 + Store::kKeyBytes + 2 * 1 + Store::kSortedSetEntryBytes + 3);
  db({"srem", "s", "bb"});
  db({"zpopmin", "z"});
  CHECK(db.store.used_memory() == empty + Store::kKeyBytes + 2 * 1 + Store::kSetEntryBytes + 1);
  // A snapshot loaded counts alike.
  std::string text;
  db({"zadd", "z", "1", "abc"});
  db.store.write_snapshot(text, raft::SnapshotMeta{});
  Store loaded;
  raft::SnapshotMeta meta;
  std::string error;
  REQUIRE(Store::read_snapshot(text, loaded, meta, error));
  CHECK(loaded.used_memory() == db.store.used_memory());
}

TEST_CASE("an undone write puts sets and sorted sets back", "[store][sets]") {
  Db db;
  db({"sadd", "s", "a", "b"});
  db({"zadd", "z", "1", "a"});
  const Store before = db.store;
  db.store.begin_undo();
  db({"sadd", "s", "c"});
  db({"srem", "s", "a"});
  db({"zadd", "z", "2", "a", "3", "b"});
  db({"spop", "s", "5"});
  db({"sadd", "new", "x"});
  db.store.rollback_undo();
  CHECK(db.store == before);
  CHECK(db({"zrange", "z", "0", "-1", "withscores"}) == "*2|$1|a|$1|1|");
}

TEST_CASE("snapshot: sets and sorted sets round-trip, ast.literal_eval reads them, and without them the text "
          "stays format 4",
          "[store][sets]") {
  Db db;
  db({"set", "str", "v"});
  std::string plain;
  db.store.write_snapshot(plain, raft::SnapshotMeta{});
  CHECK(plain.rfind("{'_META_': {'format': 4,", 0) == 0);

  db({"sadd", "set", "b", "a", "it's", "\xff", "1"});
  db({"zadd", "zset", "1.1", "a", "-inf", "lo", "inf", "hi", "3", "three", "-0", "negzero", "1e-320", "tiny",
      "1.7976931348623157e308", "max"});
  db({"hset", "hash", "f", "v"});
  db({"rpush", "list", "x"});
  db({"sadd", "one", "x"});
  db({"pexpireat", "set", std::to_string(kT0 + 5000)});
  raft::SnapshotMeta meta;
  meta.index = 9;
  meta.term = 2;
  std::string text;
  db.store.write_snapshot(text, meta);
  CHECK(text.rfind("{'_META_': {'format': 5,", 0) == 0);
  CHECK(text.find("'set': {'1', 'a', b'\\xff', \"it's\", 'b'}") == std::string::npos);  // bytewise order:
  CHECK(text.find("'set': {'1', 'a', 'b', \"it's\", b'\\xff'}") != std::string::npos);
  CHECK(text.find("'one': {'x'}") != std::string::npos);
  CHECK(text.find("'zset': {'a': 1.1000000000000001, 'hi': 1e999, 'lo': -1e999, 'max': 1.7976931348623157e+308, "
                  "'negzero': 0.0, 'three': 3.0, 'tiny': 9.9998886718268301e-321}") != std::string::npos);

  Store loaded;
  raft::SnapshotMeta loaded_meta;
  std::string error;
  REQUIRE(Store::read_snapshot(text, loaded, loaded_meta, error));
  CHECK(loaded == db.store);
  std::string again;
  loaded.write_snapshot(again, meta);
  CHECK(again == text);

  // Python reads the same values: sets as set, sorted sets as dicts of floats, infinities.
  const std::string script = R"(import ast, sys, math
d = ast.literal_eval(open(sys.argv[1], encoding='utf-8').read())
data = d['data']
print(d['_META_']['format'])
print(type(data['set']).__name__, sorted(data['set'], key=lambda m: m if isinstance(m, bytes) else m.encode()))
z = data['zset']
print(type(z).__name__, z['a'] == 1.1, z['hi'] == math.inf, z['lo'] == -math.inf, math.copysign(1, z['negzero']))  # -0 is kept as 0
print(all(isinstance(v, float) for v in z.values()), type(data['hash']).__name__, type(data['list']).__name__)
)";
  CHECK(run_python(script, text) ==
        "5\nset ['1', 'a', 'b', \"it's\", b'\\xff']\ndict True True True 1.0\nTrue dict list\n");

  // Malformed: duplicates and a set's member that is no string.
  for (const auto& [bad, why] : std::vector<std::pair<std::string, std::string>>{
           {"{'a', 'a'}", "duplicate set member"},
           {"{'a': 1.0, 'a': 2.0}", "duplicate sorted set member"},
           {"{'a', 1}", "expected a string"},
           {"{'a': 1.0, 'b': 'x'}", "expected a float score"},
           {"{'a': 1.0, 'b': 2}", "expected a float score"},
           {"{'a': 1e9999}", "malformed number"}}) {
    INFO(bad);
    std::string t = text;
    const std::size_t at = t.find("{'x'}");
    REQUIRE(at != std::string::npos);
    t.replace(at, 5, bad);
    Store s;
    CHECK_FALSE(Store::read_snapshot(t, s, loaded_meta, error));
    CHECK_THAT(error, Catch::Contains(why));
  }
}

namespace {

/// A reply comparable across servers: sets sorted; for the random commands only the shape
/// (type and size, members replaced by "?") unless the choice is forced (all members).
std::string comparable(const Reply& reply, int protocol, bool shape_only, bool unordered) {
  Reply v = sorted_sets(reply);
  if (unordered)  // a set sent to a RESP2 client: an array in no particular order
    std::sort(v.elements.begin(), v.elements.end(),
              [](const Reply& a, const Reply& b) { return resp::encode(a, 3) < resp::encode(b, 3); });
  if (shape_only)
    for (auto& e : v.elements)
      if (e.type == resp::Type::BulkString) e.str = "?";
  if (shape_only && v.type == resp::Type::BulkString) v.str = "?";
  return resp::encode(v, protocol);
}

std::string client_ip(const raft::Node& n) { return n.address().substr(0, n.address().find(':')); }
int client_port(const raft::Node& n) { return std::stoi(n.address().substr(n.address().find(':') + 1)); }

}  // namespace

TEST_CASE("sets and sorted sets answer as a real redis-server does, RESP2 and RESP3, errors included",
          "[runtime][sets][redis]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: the comparison with Redis is skipped");
    return;
  }
  proc::TempDir dir("sets-redis");
  proc::RedisServer redis(dir);
  REQUIRE(redis.port() != 0);
  in_process::TestNode node(in_process::node_config("1", in_process::address(250, 1)));
  node->start();
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return node->state() == 'l'; }));

  // [redis RESP2, redis RESP3, node RESP2, node RESP3]
  std::vector<proc::Client> clients;
  for (int k = 0; k < 4; ++k) {
    const bool ours = k >= 2;
    clients.emplace_back(ours ? client_ip(*node) : "127.0.0.1", ours ? client_port(*node) : redis.port());
    REQUIRE(clients.back().connected());
    if (k % 2 == 1) REQUIRE(clients.back().call({"HELLO", "3"}).type == resp::Type::Map);
  }
  std::map<std::string, int> exercised;
  const auto both = [&](const std::vector<std::string>& words, bool shape_only = false) {
    INFO(test_support::show(resp::Value::strings(words)));
    ++exercised[raft::detail::lower(words[0])];
    // Writes go to one connection of each server (they change the data); RESP3 reads again.
    for (int protocol : {2, 3}) {
      const int k = protocol - 2;
      const Reply theirs = clients[std::size_t(k)].call(words);
      const Reply ours = clients[std::size_t(k + 2)].call(words);
      INFO("RESP" << protocol);
      const std::string name = raft::detail::lower(words[0]);
      const bool unordered = name == "smembers" || name == "sinter" || name == "sunion" || name == "sdiff" ||
                             name == "spop" || name == "srandmember";
      CHECK(comparable(ours, protocol, shape_only, unordered) == comparable(theirs, protocol, shape_only, unordered));
      raft::CommandTable t;
      raft::add_builtin_commands(t);
      const auto it = t.find(name);
      if (it != t.end() && it->second.is_write()) break;  // a write runs once
    }
  };

  // Fixed sequences: every command, its options and its errors.
  const std::vector<std::vector<std::string>> fixed = {
      {"SADD", "s", "a", "b", "c", "1", "2"}, {"SADD", "s", "a"}, {"SADD", "s"}, {"SMEMBERS", "s"},
      {"SISMEMBER", "s", "a"}, {"SISMEMBER", "s", "x"}, {"SISMEMBER", "s"}, {"SMISMEMBER", "s", "a", "x"},
      {"SMISMEMBER", "s"}, {"SCARD", "s"}, {"SCARD", "none"}, {"TYPE", "s"}, {"SREM", "s", "1", "x"},
      {"SADD", "t", "b", "c", "d"}, {"SINTER", "s", "t"}, {"SINTER", "s", "none"}, {"SUNION", "s", "t", "none"},
      {"SDIFF", "s", "t"}, {"SDIFF", "none", "s"}, {"SINTER"}, {"SINTERSTORE", "d", "s", "t"}, {"SMEMBERS", "d"},
      {"SUNIONSTORE", "d", "s", "t"}, {"SDIFFSTORE", "d", "s", "s"}, {"EXISTS", "d"}, {"SDIFFSTORE", "d"},
      {"SET", "str", "v"}, {"SADD", "str", "a"}, {"SMEMBERS", "str"}, {"SINTER", "s", "str"},
      {"SUNIONSTORE", "str", "s"}, {"TYPE", "str"}, {"SET", "str", "v"}, {"SINTERSTORE", "d", "str"},
      {"SMOVE", "s", "t", "a"}, {"SMOVE", "s", "t", "a"}, {"SMOVE", "s", "s", "b"}, {"SMOVE", "s", "str", "b"},
      {"SMOVE", "str", "s", "b"}, {"SMOVE", "none", "str", "b"}, {"SMOVE", "s", "fresh", "b"}, {"SMEMBERS", "fresh"}, {"SMOVE", "s", "t"},
      {"SPOP", "none"}, {"SPOP", "none", "3"}, {"SPOP", "s", "-1"}, {"SPOP", "s", "x"}, {"SPOP", "s", "0"},
      {"SPOP", "str"}, {"SPOP", "str", "1"}, {"SPOP", "s", "1", "2"}, {"SRANDMEMBER", "none"},
      {"SRANDMEMBER", "none", "2"}, {"SRANDMEMBER", "s", "x"}, {"SRANDMEMBER", "str"},
      {"SRANDMEMBER", "s", "100"}, {"SRANDMEMBER", "s", "0"}, {"SRANDMEMBER", "s", "-9223372036854775808"},
      {"SADD", "single", "only"}, {"SPOP", "single"}, {"EXISTS", "single"}, {"SADD", "single", "only"},
      {"SPOP", "single", "5"}, {"SADD", "single", "only"}, {"SRANDMEMBER", "single", "-3"},
      // sorted sets
      {"ZADD", "z", "1.1", "a", "2", "b", "2", "c", "inf", "d", "-inf", "e", "0.1", "f", "1e20", "g"},
      {"ZADD", "z", "123456789012345678", "h", "-0", "i", "0x10", "j", "1e-310", "k"},
      {"ZRANGE", "z", "0", "-1", "WITHSCORES"}, {"ZSCORE", "z", "a"}, {"ZSCORE", "z", "i"}, {"ZSCORE", "z", "none"},
      {"ZMSCORE", "z", "a", "none", "d"}, {"ZMSCORE", "none", "a"}, {"ZMSCORE", "z"}, {"ZCARD", "z"},
      {"TYPE", "z"}, {"ZADD", "z", "NX", "5", "a", "3", "new"}, {"ZADD", "z", "XX", "CH", "5", "a", "3", "other"},
      {"ZADD", "z", "GT", "CH", "1", "a", "6", "b"}, {"ZADD", "z", "LT", "CH", "9", "a", "4", "b"},
      {"ZADD", "z", "INCR", "0.2", "a"}, {"ZADD", "z", "NX", "INCR", "1", "a"}, {"ZADD", "z", "XX", "INCR", "1", "none"},
      {"ZADD", "z", "GT", "INCR", "-1", "a"}, {"ZADD", "none", "XX", "1", "a"}, {"EXISTS", "none"},
      {"ZADD", "z", "nan", "a"}, {"ZADD", "z", "1e400", "a"}, {"ZADD", "z", "1e-400", "a"}, {"ZADD", "z", " 1", "a"},
      {"ZADD", "z", "1", "a", "2"}, {"ZADD", "z", "NX", "XX", "1", "a"}, {"ZADD", "z", "GT", "LT", "1", "a"},
      {"ZADD", "z", "GT", "NX", "1", "a"}, {"ZADD", "z", "INCR", "1", "a", "2", "b"}, {"ZADD", "z", "INCR"},
      {"ZADD", "z", "nx", "xx"}, {"ZADD", "str", "1", "a"}, {"ZINCRBY", "z", "-inf", "d"}, {"ZINCRBY", "z", "x", "a"},
      {"ZINCRBY", "z", "2.5", "fresh"}, {"ZINCRBY", "str", "1", "a"}, {"ZINCRBY", "z", "1"},
      {"ZCOUNT", "z", "(1", "3"}, {"ZCOUNT", "z", "-inf", "+inf"}, {"ZCOUNT", "z", "x", "1"}, {"ZCOUNT", "z", "", ""},
      {"ZCOUNT", "none", "0", "1"}, {"ZRANK", "z", "b"}, {"ZREVRANK", "z", "b"}, {"ZRANK", "z", "none"},
      {"ZRANK", "none", "a"}, {"ZRANK", "str", "a"}, {"ZRANK", "z", "b", "WITHSCORE"},
      {"ZRANGE", "z", "1", "3"}, {"ZRANGE", "z", "-3", "-1", "REV"}, {"ZRANGE", "z", "0", "1", "REV", "WITHSCORES"},
      {"ZRANGE", "z", "(1", "3", "BYSCORE"}, {"ZRANGE", "z", "3", "(1", "BYSCORE", "REV", "LIMIT", "1", "1"},
      {"ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", "2", "3", "WITHSCORES"}, {"ZRANGE", "z", "0", "1", "LIMIT", "0", "1"},
      {"ZRANGE", "z", "0", "1", "LIMIT", "0", "-1"}, {"ZRANGE", "z", "[a", "+", "BYLEX", "WITHSCORES"},
      {"ZRANGE", "z", "a", "+", "BYLEX"}, {"ZRANGE", "z", "0", "1", "BYSCORE", "BYLEX"}, {"ZRANGE", "z", "0", "1", "REV", "REV"},
      {"ZRANGE", "z", "0", "1", "LIMIT", "0"}, {"ZRANGE", "z", "0", "x"}, {"ZRANGE", "z", "x", "1", "BYSCORE"},
      {"ZRANGE", "none", "0", "-1"}, {"ZRANGE", "str", "0", "-1"}, {"ZRANGE", "z", "0"},
      {"ZRANGEBYSCORE", "z", "2", "2", "WITHSCORES"}, {"ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", "-1", "2"},
      {"ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", "4", "-1"}, {"ZRANGEBYSCORE", "z", "0", "1", "REV"},
      {"ZRANGEBYSCORE", "z", "(0", "(inf", "WITHSCORES", "LIMIT", "1", "2"}, {"ZREVRANGEBYSCORE", "z", "+inf", "3"},
      {"ZREVRANGEBYSCORE", "z", "(3", "-inf", "WITHSCORES", "LIMIT", "1", "3"}, {"ZREVRANGEBYSCORE", "z", "1", "3"},
      {"ZADD", "lex", "0", "a", "0", "b", "0", "c", "0", "d", "0", "e"}, {"ZRANGE", "lex", "[b", "(d", "BYLEX"},
      {"ZRANGE", "lex", "+", "(b", "BYLEX", "REV"}, {"ZRANGE", "lex", "-", "+", "BYLEX", "LIMIT", "1", "2"},
      {"ZRANGE", "lex", "(a", "[z", "BYLEX", "REV", "LIMIT", "0", "2"}, {"ZRANGE", "lex", "", "+", "BYLEX"},
      {"ZRANGE", "lex", "+", "-", "BYLEX"}, {"ZREMRANGEBYSCORE", "z", "2", "(3"}, {"ZREMRANGEBYSCORE", "z", "x", "1"},
      {"ZREMRANGEBYSCORE", "none", "0", "1"}, {"ZREMRANGEBYRANK", "z", "0", "1"}, {"ZREMRANGEBYRANK", "z", "x", "1"},
      {"ZREMRANGEBYRANK", "z", "5", "1"}, {"ZRANGE", "z", "0", "-1", "WITHSCORES"}, {"ZPOPMIN", "z"},
      {"ZPOPMAX", "z", "2"}, {"ZPOPMIN", "z", "0"}, {"ZPOPMIN", "z", "-1"}, {"ZPOPMIN", "none"}, {"ZPOPMIN", "none", "2"},
      {"ZPOPMIN", "str"}, {"ZPOPMIN", "str", "0"}, {"ZPOPMAX", "z", "1", "2"}, {"ZREM", "z", "a", "none"},
      {"ZREM", "str", "a"}, {"ZREM", "z"}, {"ZPOPMIN", "z", "100"}, {"EXISTS", "z"}, {"ZREMRANGEBYRANK", "lex", "0", "-1"},
      {"EXISTS", "lex"},
  };
  for (const auto& words : fixed) {
    const std::string name = raft::detail::lower(words[0]);
    // Random choices are compared by shape, except where every member is chosen.
    const bool random = (name == "spop" || name == "srandmember") && words[1] != "single";
    both(words, random);
    if (random && name == "spop") {  // resynchronise the set SPOP took different members of
      both({"DEL", "s"});
      both({"SADD", "s", "a", "b", "c", "2"});
    }
  }

  // Random sequences over a few keys, members and scores.
  std::mt19937_64 rng(20261130);
  const auto pick = [&](std::initializer_list<const char*> from) {
    return std::string(*(from.begin() + static_cast<std::ptrdiff_t>(rng() % from.size())));
  };
  const auto key = [&] { return pick({"k1", "k2", "k3", "str"}); };
  const auto member = [&] { return pick({"a", "b", "c", "d", "e", "f"}); };
  const auto score = [&] { return pick({"0", "1", "1.5", "-2", "2.25", "inf", "-inf", "0.1", "3e5", "x"}); };
  const auto bound = [&] { return pick({"0", "(1", "1.5", "-inf", "+inf", "(2.25", "-2", "x", "(inf"}); };
  const auto lexb = [&] { return pick({"-", "+", "[a", "(b", "[c", "(f", "x"}); };
  const auto index = [&] { return pick({"0", "1", "-1", "2", "-3", "10"}); };
  both({"SET", "str", "v"});
  for (int i = 0; i < 600; ++i) {
    std::vector<std::string> w;
    switch (rng() % 22) {
      case 0: w = {"SADD", key(), member(), member()}; break;
      case 1: w = {"SREM", key(), member(), member()}; break;
      case 2: w = {"SMEMBERS", key()}; break;
      case 3: w = {"SMISMEMBER", key(), member(), member()}; break;
      case 4: w = {"SCARD", key()}; break;
      case 5: w = {pick({"SINTER", "SUNION", "SDIFF"}), key(), key()}; break;
      case 6: w = {pick({"SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"}), key(), key(), key()}; break;
      case 7: w = {"SMOVE", key(), key(), member()}; break;
      case 8:
        w = {"ZADD", key()};
        for (int o = int(rng() % 3); o > 0; --o) w.push_back(pick({"NX", "XX", "GT", "LT", "CH", "INCR"}));
        w.push_back(score());
        w.push_back(member());
        if (rng() % 2) {
          w.push_back(score());
          w.push_back(member());
        }
        break;
      case 9: w = {"ZINCRBY", key(), score(), member()}; break;
      case 10: w = {"ZREM", key(), member(), member()}; break;
      case 11: w = {pick({"ZSCORE", "ZRANK", "ZREVRANK"}), key(), member()}; break;
      case 12: w = {"ZMSCORE", key(), member(), member()}; break;
      case 13: w = {"ZCARD", key()}; break;
      case 14: w = {"ZCOUNT", key(), bound(), bound()}; break;
      case 15:
      case 16:
      case 17:
        if (i % 3 == 0) {
          w = {"ZRANGE", key(), index(), index()};
        } else if (i % 3 == 1) {
          w = {"ZRANGE", key(), bound(), bound(), "BYSCORE"};
        } else {
          w = {"ZRANGE", key(), lexb(), lexb(), "BYLEX"};
        }
        if (rng() % 2) w.push_back("REV");
        if (rng() % 3 != 0) {
          w.push_back("LIMIT");
          w.push_back(index());
          w.push_back(index());
        }
        if (rng() % 2) w.push_back("WITHSCORES");
        break;
      case 18:
        w = {pick({"ZRANGEBYSCORE", "ZREVRANGEBYSCORE"}), key(), bound(), bound()};
        if (rng() % 2) w.push_back("WITHSCORES");
        break;
      case 19: w = {"ZREMRANGEBYSCORE", key(), bound(), bound()}; break;
      case 20: w = {"ZREMRANGEBYRANK", key(), index(), index()}; break;
      default: w = {pick({"ZPOPMIN", "ZPOPMAX"}), key()}; if (rng() % 2) w.push_back(pick({"0", "1", "2", "-1"})); break;
    }
    both(w);
  }
  std::string counts;
  for (const auto& [name, n] : exercised) counts += name + "=" + std::to_string(n) + " ";
  INFO(counts);
  CHECK(exercised.size() >= 33);
  node->stop();
}

TEST_CASE("a 3-node cluster: SPOP takes the same members on every node, and a follower answers ZPOPMIN with a "
          "count as Redis does in RESP2 and RESP3",
          "[runtime][sets]") {
  in_process::Cluster c(251, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = c.other_than(leader);
  proc::Client f2(client_ip(c[follower]), client_port(c[follower]));
  proc::Client f3(client_ip(c[follower]), client_port(c[follower]));
  REQUIRE(f3.call({"HELLO", "3"}).type == resp::Type::Map);
  std::vector<std::string> add{"SADD", "s"};
  for (int i = 0; i < 50; ++i) add.push_back("m" + std::to_string(i));
  REQUIRE(f2.call(add).num == 50);
  for (int i = 0; i < 5; ++i) {
    CHECK(f2.call({"SPOP", "s", "3"}).elements.size() == 3);
    CHECK(f2.call({"SPOP", "s"}).type == resp::Type::BulkString);
  }
  REQUIRE(f2.call({"ZADD", "z", "1", "a", "2.5", "b", "3", "c", "4", "d"}).num == 4);
  // Forwarded to the leader, the reply comes back as RESP3: the pairs stay pairs for RESP2.
  CHECK(resp::encode(f2.call({"ZPOPMIN", "z", "2"}), 2) == "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$3\r\n2.5\r\n");
  CHECK(resp::encode(f3.call({"ZPOPMAX", "z", "1"}), 3) == "*1\r\n*2\r\n$1\r\nd\r\n,4\r\n");
  CHECK(resp::encode(f2.call({"ZINCRBY", "z", "0.1", "c"}), 2) == "$18\r\n3.1000000000000001\r\n");
  // Every node applied the same entries to the same data.
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] {
    const Store a = in_process::snapshot_of_store(c[1]);
    return a == in_process::snapshot_of_store(c[2]) && a == in_process::snapshot_of_store(c[3]) &&
           a.find("s", kT0) != nullptr && a.find("s", kT0)->set().size() == 30;
  }));
}
