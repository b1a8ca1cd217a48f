// The built-in commands of issue 13's keys, strings, hashes and lists slice (RENAME ... SCAN,
// GETEX ... INCRBYFLOAT, HINCRBYFLOAT ... HSCAN, LPOS ... RPUSHX) and the compare-and-set
// commands (SET IFEQ / IFNE, DELEX, DELIFEQ). Unit tests call the handlers with a Store
// ([store][commands]); the [redis] test sends the same commands to a node and to a real
// redis-server 7.0, in RESP2 and RESP3, and compares every reply. Commands newer than 7.0
// (SET IFEQ / IFNE, DELEX, DELIFEQ, HSCAN NOVALUES) are tested from their documentation.
#include "in_process.hpp"
#include "proc.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <clocale>
#include <set>

namespace {

using raft::Store;
using test_support::typed;

constexpr std::int64_t kT0 = 1'700'000'000'000;  // an entry timestamp, ms

using test_support::Db;

const char* const kWrongType = "-WRONGTYPE Operation against a key holding the wrong kind of value";
const char* const kSyntax = "-ERR syntax error";

/// Every element a full SCAN-like iteration returns: words with "{cursor}" replaced.
std::multiset<std::string> iterate(Db& db, std::vector<std::string> words, std::size_t stride = 1,
                                   const std::function<void(int)>& between = nullptr) {
  std::multiset<std::string> seen;
  std::string cursor = "0";
  int step = 0;
  do {
    std::vector<std::string> w = words;
    for (auto& x : w)
      if (x == "{cursor}") x = cursor;
    const resp::Value r = db.reply(w);
    REQUIRE(r.type == resp::Type::Array);
    REQUIRE(r.elements.size() == 2);
    cursor = r.elements[0].str;
    for (std::size_t i = 0; i < r.elements[1].elements.size(); i += stride) seen.insert(r.elements[1].elements[i].str);
    if (between) between(step);
    ++step;
    REQUIRE(step < 100000);
  } while (cursor != "0");
  return seen;
}

}  // namespace

TEST_CASE("SET IFEQ / IFNE, from Redis 8.4's documentation", "[store][commands][cas]") {
  Db db;
  // IFEQ: set only if the current value is equal; a missing key is not created.
  CHECK(db({"set", "k", "v1", "ifeq", "v0"}) == "nil");
  CHECK(db({"exists", "k"}) == "0");
  CHECK(db({"set", "k", "v1"}) == "+OK");
  CHECK(db({"set", "k", "v2", "ifeq", "other"}) == "nil");
  CHECK(db({"get", "k"}) == "'v1'");
  CHECK(db({"set", "k", "v2", "IFEQ", "v1"}) == "+OK");
  CHECK(db({"get", "k"}) == "'v2'");
  // IFNE: set only if not equal; a missing key is created.
  CHECK(db({"set", "k", "v3", "ifne", "v2"}) == "nil");
  CHECK(db({"set", "k", "v3", "ifne", "v1"}) == "+OK");
  CHECK(db({"get", "k"}) == "'v3'");
  CHECK(db({"set", "new", "x", "ifne", "whatever"}) == "+OK");
  CHECK(db({"get", "new"}) == "'x'");
  // With GET: the old value whether or not it was set.
  CHECK(db({"set", "k", "v4", "ifeq", "nope", "get"}) == "'v3'");
  CHECK(db({"set", "k", "v4", "get", "ifeq", "v3"}) == "'v3'");
  CHECK(db({"get", "k"}) == "'v4'");
  CHECK(db({"set", "gone", "v", "ifeq", "x", "get"}) == "nil");
  // With an expiry: set with it, or not at all.
  CHECK(db({"set", "k", "v5", "ifeq", "v4", "px", "5000"}) == "+OK");
  CHECK(db.store.deadline("k") == kT0 + 5000);
  CHECK(db({"set", "k", "v6", "ifeq", "v4", "px", "9000"}) == "nil");
  CHECK(db.store.deadline("k") == kT0 + 5000);
  CHECK(db({"set", "k", "v6", "ifne", "zz", "keepttl"}) == "+OK");
  CHECK(db.store.deadline("k") == kT0 + 5000);
  // The conditions exclude each other; a value is required.
  CHECK(db({"set", "k", "v", "ifeq", "a", "nx"}) == kSyntax);
  CHECK(db({"set", "k", "v", "xx", "ifne", "a"}) == kSyntax);
  CHECK(db({"set", "k", "v", "ifeq", "a", "ifne", "b"}) == kSyntax);
  CHECK(db({"set", "k", "v", "ifeq"}) == kSyntax);
  CHECK(db({"get", "k"}) == "'v6'");
  // Another kind: WRONGTYPE, nothing changes.
  db({"rpush", "l", "a"});
  CHECK(db({"set", "l", "v", "ifeq", "a"}) == kWrongType);
  CHECK(db({"set", "l", "v", "ifne", "a"}) == kWrongType);
  CHECK(db({"type", "l"}) == "+list");
}

TEST_CASE("DELEX and DELIFEQ, from Redis 8.4's and Valkey 9's documentation", "[store][commands][cas]") {
  Db db;
  // DELIFEQ: the documented lock release.
  CHECK(db({"set", "mykey", "abc123"}) == "+OK");
  CHECK(db({"delifeq", "mykey", "abc123"}) == "1");
  CHECK(db({"delifeq", "mykey", "abc123"}) == "0");
  CHECK(db({"set", "mykey", "xyz789"}) == "+OK");
  CHECK(db({"delifeq", "mykey", "abc123"}) == "0");
  CHECK(db({"get", "mykey"}) == "'xyz789'");
  db({"hset", "h", "f", "somevalue"});
  CHECK(db({"delifeq", "h", "somevalue"}) == kWrongType);

  // DELEX: without a condition, DEL of any kind.
  CHECK(db({"delex", "h"}) == "1");
  CHECK(db({"delex", "h"}) == "0");
  CHECK(db({"set", "x", "1"}) == "+OK");
  CHECK(db({"delex", "x", "IFEQ", "1"}) == "1");
  CHECK(db({"set", "x", "1"}) == "+OK");
  CHECK(db({"delex", "x", "ifeq", "2"}) == "0");
  CHECK(db({"delex", "x", "ifne", "1"}) == "0");
  CHECK(db({"delex", "x", "IFNE", "2"}) == "1");
  CHECK(db({"delex", "x", "ifne", "2"}) == "0");  // gone: nothing to delete
  db({"rpush", "l", "a"});
  CHECK(db({"delex", "l", "ifeq", "a"}) == kWrongType);
  CHECK(db({"delex", "l", "ifne", "a"}) == kWrongType);
  CHECK(db({"delex", "l", "ifeq"}) == kSyntax);
  CHECK(db({"delex", "l", "ifeq", "a", "b"}) == kSyntax);
  CHECK(db({"delex", "l", "ifdeq", "00"}) == kSyntax);  // digests: not implemented
  CHECK(db({"llen", "l"}) == "1");
  // An expired key is not there.
  db({"set", "t", "v", "px", "10"});
  db.now += 10;
  CHECK(db({"delex", "t", "ifne", "zz"}) == "0");
  CHECK(db({"delifeq", "t", "v"}) == "0");
}

TEST_CASE("SCAN returns every key present for the whole iteration, while keys come and go between its calls",
          "[store][commands][scan]") {
  Db db;
  std::set<std::string> stable;
  for (int i = 0; i < 3000; ++i) {
    const std::string key = "stable:" + std::to_string(i);
    db({"set", key, "v"});
    stable.insert(key);
  }
  for (int i = 0; i < 3000; ++i) db({"set", "doomed:" + std::to_string(i), "v"});
  int added = 0;
  // Between the first 70 calls: 40 keys added, 40 doomed keys deleted (so positions in key
  // order shift); no more after, or COUNT 1 would never catch up with the keys added.
  const auto churn = [&](int step) {
    for (int k = 0; k < 40 && step < 70; ++k) {
      db({"set", "added:" + std::to_string(added++), "v"});
      db({"del", "doomed:" + std::to_string((step * 40 + k) % 3000)});
    }
  };
  for (const std::string count : {"1", "7", "100"}) {
    INFO("COUNT " << count);
    const auto seen = iterate(db, {"scan", "{cursor}", "count", count}, 1, churn);
    for (const auto& key : stable) {
      INFO(key);
      REQUIRE(seen.count(key) == 1);  // at least once; here exactly once
    }
    for (const auto& key : seen) CHECK(key.rfind("stable:", 0) + key.rfind("added:", 0) + key.rfind("doomed:", 0) != 0);
  }
}

TEST_CASE("SCAN: MATCH, COUNT, TYPE, expired keys, the cursor's errors", "[store][commands][scan]") {
  Db db;
  CHECK(db({"scan", "0"}) == "['0', []]");
  for (int i = 0; i < 50; ++i) db({"set", "s" + std::to_string(i), "v"});
  for (int i = 0; i < 20; ++i) db({"hset", "h" + std::to_string(i), "f", "v"});
  for (int i = 0; i < 10; ++i) db({"rpush", "l" + std::to_string(i), "v"});
  db({"set", "short", "v", "px", "5"});
  db.now += 5;  // short is past its deadline (still stored): never returned
  CHECK(iterate(db, {"scan", "{cursor}"}).size() == 80);
  CHECK(iterate(db, {"scan", "{cursor}", "type", "HASH", "count", "3"}).size() == 20);
  CHECK(iterate(db, {"scan", "{cursor}", "match", "l*", "type", "list"}).size() == 10);
  CHECK(iterate(db, {"scan", "{cursor}", "match", "s1?"}).size() == 10);
  CHECK(iterate(db, {"scan", "{cursor}", "type", "nosuchtype"}).empty());
  const auto all = iterate(db, {"scan", "{cursor}", "count", "1000"});
  CHECK(std::set<std::string>(all.begin(), all.end()).size() == 80);
  CHECK(db({"scan", "0", "count", "1000"}).rfind("['0', [", 0) == 0);  // one call returns all
  CHECK(db({"scan", "x"}) == "-ERR invalid cursor");
  CHECK(db({"scan", " 1"}) == "-ERR invalid cursor");
  CHECK(db({"scan", "18446744073709551616"}) == "-ERR invalid cursor");
  CHECK(db({"scan", "0", "count", "0"}) == kSyntax);
  CHECK(db({"scan", "0", "count", "x"}) == "-ERR value is not an integer or out of range");
  CHECK(db({"scan", "0", "match"}) == kSyntax);
  CHECK(db({"scan", "0", "bogus", "1"}) == kSyntax);
  CHECK(db({"scan", "18446744073709551615", "count", "1000"}).rfind("['0', [", 0) == 0);
}

TEST_CASE("HSCAN returns every field present for the whole iteration; MATCH, NOVALUES", "[store][commands][scan]") {
  Db db;
  std::vector<std::string> words{"hset", "h"};
  for (int i = 0; i < 1000; ++i) {
    words.push_back("f" + std::to_string(i));
    words.push_back("v" + std::to_string(i));
  }
  db(words);
  int added = 0;
  const auto churn = [&](int step) {
    for (int k = 0; k < 10; ++k) {
      db({"hset", "h", "new" + std::to_string(added++), "x"});
      db({"hdel", "h", "f" + std::to_string(500 + (step * 10 + k) % 500)});
    }
  };
  const auto seen = iterate(db, {"hscan", "h", "{cursor}", "count", "13"}, 2, churn);
  for (int i = 0; i < 500; ++i) REQUIRE(seen.count("f" + std::to_string(i)) == 1);
  // However small COUNT, a whole iteration takes at most about kMaxElementScanSteps calls.
  std::vector<std::string> big{"hset", "big"};
  for (int i = 0; i < 10000; ++i) {
    big.push_back("f" + std::to_string(i));
    big.push_back("v");
  }
  db(big);
  int calls = 0;
  const auto fields = iterate(db, {"hscan", "big", "{cursor}", "count", "1", "novalues"}, 1,
                              [&](int) { ++calls; });
  CHECK(fields.size() == 10000);
  CHECK(calls <= static_cast<int>(raft::detail::kMaxElementScanSteps) + 1);
  Db small;
  small({"hset", "h", "a", "1", "b", "2", "ab", "3"});
  // One call returns all (in the fields' hash order), with their values.
  CHECK(iterate(small, {"hscan", "h", "{cursor}", "count", "100"}) ==
        std::multiset<std::string>{"a", "1", "ab", "3", "b", "2"});
  CHECK(small({"hscan", "h", "0", "count", "100"}).rfind("['0', [", 0) == 0);
  CHECK(iterate(small, {"hscan", "h", "{cursor}", "count", "1", "novalues"}) ==
        std::multiset<std::string>{"a", "ab", "b"});
  CHECK(iterate(small, {"hscan", "h", "{cursor}", "match", "a*", "novalues"}) ==
        std::multiset<std::string>{"a", "ab"});
  CHECK(small({"hscan", "missing", "0"}) == "['0', []]");
  CHECK(small({"hscan", "h", "x"}) == "-ERR invalid cursor");
  CHECK(small({"hscan", "h", "0", "type", "hash"}) == kSyntax);
  small({"set", "s", "v"});
  CHECK(small({"hscan", "s", "0"}) == kWrongType);
}

TEST_CASE("SSCAN and ZSCAN return every member present for the whole iteration", "[store][commands][scan]") {
  Db db;
  std::vector<std::string> sadd{"sadd", "s"}, zadd{"zadd", "z"};
  for (int i = 0; i < 500; ++i) {
    sadd.push_back("m" + std::to_string(i));
    zadd.push_back(std::to_string(i));
    zadd.push_back("m" + std::to_string(i));
  }
  db(sadd);
  db(zadd);
  int added = 0;
  const auto churn = [&](int step) {
    for (int k = 0; k < 10; ++k) {
      const std::string gone = "m" + std::to_string(250 + (step * 10 + k) % 250);
      db({"sadd", "s", "new" + std::to_string(added)});
      db({"zadd", "z", "1", "new" + std::to_string(added++)});
      db({"srem", "s", gone});
      db({"zrem", "z", gone});
    }
  };
  const auto members = iterate(db, {"sscan", "s", "{cursor}", "count", "11"}, 1, churn);
  for (int i = 0; i < 250; ++i) REQUIRE(members.count("m" + std::to_string(i)) == 1);
  const auto scored = iterate(db, {"zscan", "z", "{cursor}", "count", "11"}, 2, churn);
  for (int i = 0; i < 250; ++i) REQUIRE(scored.count("m" + std::to_string(i)) == 1);
  Db small;
  small({"zadd", "z", "1.5", "a", "inf", "b"});
  CHECK(iterate(small, {"zscan", "z", "{cursor}"}) == std::multiset<std::string>{"a", "1.5", "b", "inf"});
  CHECK(small({"sscan", "z", "0"}) == kWrongType);
  CHECK(small({"zscan", "z", "0", "novalues"}) == kSyntax);
  CHECK(small({"sscan", "missing", "0"}) == "['0', []]");
}

TEST_CASE("SCAN's index follows every way keys come and go: undo, FLUSHALL, RENAME, a loaded snapshot",
          "[store][commands][scan]") {
  Db db;
  for (const char* k : {"a", "b", "c"}) db({"set", k, "v"});
  const auto keys = [](Db& d) {
    const auto seen = iterate(d, {"scan", "{cursor}", "count", "2"});
    return std::set<std::string>(seen.begin(), seen.end());
  };
  // A write undone: the key it made and the key it deleted are back as they were.
  db.store.begin_undo();
  db({"set", "new", "v"});
  db({"del", "a"});
  db({"rename", "b", "bb"});
  CHECK(keys(db) == std::set<std::string>{"bb", "c", "new"});
  db.store.rollback_undo();
  CHECK(keys(db) == std::set<std::string>{"a", "b", "c"});
  // A snapshot loaded into another store.
  db({"rpush", "l", "x"});
  std::string text;
  db.store.write_snapshot(text, raft::SnapshotMeta{});
  Db restored;
  raft::SnapshotMeta meta;
  std::string error;
  REQUIRE(Store::read_snapshot(text, restored.store, meta, error));
  CHECK(keys(restored) == std::set<std::string>{"a", "b", "c", "l"});
  CHECK(restored({"scan", "0", "count", "1"}) == db({"scan", "0", "count", "1"}));  // the same order
  Store copied = db.store;
  Db from_copy;
  from_copy.store = copied;
  CHECK(keys(from_copy) == std::set<std::string>{"a", "b", "c", "l"});
  CHECK(db({"flushall"}) == "+OK");
  CHECK(db({"scan", "0"}) == "['0', []]");
  CHECK(db({"randomkey"}) == "nil");
  CHECK(keys(from_copy).size() == 4);
}

TEST_CASE("RANDOMKEY: only keys not past their deadline; nil when there are none", "[store][commands]") {
  Db db;
  CHECK(db({"randomkey"}) == "nil");
  db({"set", "old", "v", "px", "5"});
  db.now += 5;
  CHECK(db({"randomkey"}) == "nil");
  db({"set", "k", "v"});
  for (int i = 0; i < 20; ++i) CHECK(db({"randomkey"}) == "'k'");
  for (int i = 0; i < 50; ++i) db({"set", "k" + std::to_string(i), "v"});
  std::set<std::string> drawn;
  for (int i = 0; i < 500; ++i) drawn.insert(db({"randomkey"}));
  CHECK(drawn.count("'old'") == 0);
  CHECK(drawn.size() > 10);
}

TEST_CASE("scan_elements: a step visits at least COUNT elements and every one tied with the last", "[store][scan]") {
  // Names with the same scan hash cannot be found on purpose; the selection is checked by
  // comparing with a sort of the whole.
  std::vector<std::string> names;
  for (int i = 0; i < 200; ++i) names.push_back("n" + std::to_string(i));
  std::vector<std::uint64_t> hashes;
  for (const auto& n : names) hashes.push_back(raft::detail::scan_hash(n));
  std::sort(hashes.begin(), hashes.end());
  std::uint64_t cursor = 0;
  std::size_t visited = 0;
  for (int step = 0; step < 100; ++step) {
    std::vector<std::uint64_t> got;
    cursor = raft::detail::scan_elements(
        names.begin(), names.end(), [](const std::string& s) -> std::string_view { return s; }, cursor, 9,
        [&](const std::string& s) { got.push_back(raft::detail::scan_hash(s)); });
    REQUIRE(std::is_sorted(got.begin(), got.end()));
    REQUIRE(std::equal(got.begin(), got.end(), hashes.begin() + static_cast<std::ptrdiff_t>(visited)));
    visited += got.size();
    if (cursor == 0) break;
    CHECK(got.size() == 9);
    CHECK(cursor == hashes[visited]);
  }
  CHECK(visited == names.size());
}

TEST_CASE("RENAME, RENAMENX, COPY keep the value and its deadline", "[store][commands]") {
  Db db;
  db({"set", "a", "1", "px", "5000"});
  CHECK(db({"rename", "a", "b"}) == "+OK");
  CHECK(db({"get", "a"}) == "nil");
  CHECK(db({"get", "b"}) == "'1'");
  CHECK(db.store.deadline("b") == kT0 + 5000);
  CHECK(db({"rename", "nope", "b"}) == "-ERR no such key");
  CHECK(db({"rename", "b", "b"}) == "+OK");
  CHECK(db({"renamenx", "b", "b"}) == "0");
  db({"rpush", "l", "x", "y"});
  CHECK(db({"renamenx", "b", "l"}) == "0");
  CHECK(db({"rename", "l", "b"}) == "+OK");  // replaces the string, and its deadline goes
  CHECK(db({"lrange", "b", "0", "-1"}) == "['x', 'y']");
  CHECK(db.store.deadline("b") == std::nullopt);
  CHECK(db({"copy", "b", "c"}) == "1");
  CHECK(db({"copy", "b", "c"}) == "0");
  db({"rpush", "b", "z"});
  CHECK(db({"copy", "b", "c", "replace"}) == "1");
  CHECK(db({"lrange", "c", "0", "-1"}) == "['x', 'y', 'z']");
  CHECK(db({"copy", "b", "b"}) == "-ERR source and destination objects are the same");
  CHECK(db({"copy", "b", "d", "db", "0"}) == "1");
  CHECK(db({"copy", "b", "e", "db", "1"}) == "-ERR DB index is out of range");
  CHECK(db({"copy", "b", "e", "bogus"}) == kSyntax);
  // used_memory follows the moved and copied values.
  db.store.settle_memory();
  const std::size_t before = db.store.used_memory();
  Store recounted;
  std::string snapshot;
  db.store.write_snapshot(snapshot, raft::SnapshotMeta{});
  raft::SnapshotMeta meta;
  std::string error;
  REQUIRE(Store::read_snapshot(snapshot, recounted, meta, error));
  CHECK(recounted.used_memory() == before);
}

TEST_CASE("used_memory after each of these writes equals a count from scratch", "[store][commands]") {
  Db db;
  const std::vector<std::vector<std::string>> writes = {
      {"set", "s", "hello", "px", "100000"}, {"rename", "s", "t"}, {"copy", "t", "u"}, {"renamenx", "u", "v"},
      {"setrange", "v", "10", "world"}, {"getex", "v", "px", "5000"}, {"getdel", "t"}, {"setex", "e", "10", "x"},
      {"psetex", "e", "10", "xyz"}, {"msetnx", "m1", "a", "m2", "bb"}, {"incrbyfloat", "f", "1.5"},
      {"incrbyfloat", "f", "100.25"}, {"set", "m1", "longer value", "ifeq", "a"}, {"delex", "m2", "ifne", "zz"},
      {"delifeq", "e", "xyz"}, {"hset", "h", "a", "1"}, {"hsetnx", "h", "b", "22"}, {"hincrbyfloat", "h", "a", "0.5"},
      {"hincrbyfloat", "h", "c", "1e10"}, {"copy", "h", "h2"}, {"rpush", "l", "a", "b", "c"},
      {"linsert", "l", "after", "b", "bb"}, {"lpushx", "l", "z"}, {"rpushx", "l", "zz"},
      {"lmove", "l", "l2", "left", "right"}, {"rpoplpush", "l", "l2"}, {"lmove", "l2", "l2", "left", "right"},
      {"rename", "l2", "l3"}, {"copy", "l3", "l", "replace"},
      {"unlink", "h"}, {"flushdb"}, {"set", "x", "1"}};
  for (const auto& w : writes) {
    INFO(w[0]);
    REQUIRE(db(w)[0] != '-');
    db.store.settle_memory();
    std::string text;
    db.store.write_snapshot(text, raft::SnapshotMeta{});
    Store recounted;
    raft::SnapshotMeta meta;
    std::string error;
    REQUIRE(Store::read_snapshot(text, recounted, meta, error));
    CHECK(db.store.used_memory() == recounted.used_memory());
  }
}

TEST_CASE("INCRBYFLOAT and HINCRBYFLOAT write their results as Redis does", "[store][commands]") {
  Db db;
  CHECK(db({"set", "f", "10.5"}) == "+OK");
  CHECK(db({"incrbyfloat", "f", "0.1"}) == "'10.6'");
  CHECK(db({"incrbyfloat", "f", "-5"}) == "'5.6'");
  CHECK(db({"incrbyfloat", "n", "5.0e3"}) == "'5000'");
  CHECK(db({"incrbyfloat", "z", "-0.0"}) == "'0'");
  CHECK(db({"incrbyfloat", "f", "inf"}) == "-ERR increment would produce NaN or Infinity");
  CHECK(db({"incrbyfloat", "f", "abc"}) == "-ERR value is not a valid float");
  CHECK(db({"incrbyfloat", "f", " 1"}) == "-ERR value is not a valid float");
  CHECK(db({"hincrbyfloat", "h", "x", "0.1"}) == "'0.1'");
  CHECK(db({"hincrbyfloat", "h", "x", "0.2"}) == "'0.3'");
  CHECK(db({"hincrbyfloat", "h", "x", "inf"}) == "-ERR value is NaN or Infinity");
}

TEST_CASE("INCRBYFLOAT, HINCRBYFLOAT and scores read and write '.' whatever locale the program set",
          "[store][commands]") {
  // A locale whose decimal point is ',': an installed one, or RAFT_TEST_COMMA_LOCALE's (e.g.
  // `localedef -i de_DE -f UTF-8 DIR/de_DE.UTF-8`, then LOCPATH=DIR).
  std::vector<std::string> names{"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "ru_RU.UTF-8"};
  if (const char* extra = std::getenv("RAFT_TEST_COMMA_LOCALE")) names.insert(names.begin(), extra);
  struct Restore {
    std::string saved = std::setlocale(LC_NUMERIC, nullptr);
    ~Restore() { std::setlocale(LC_NUMERIC, saved.c_str()); }
  } restore;
  bool comma = false;
  for (const auto& name : names) {
    comma = std::setlocale(LC_NUMERIC, name.c_str()) != nullptr && std::localeconv()->decimal_point[0] == ',';
    if (comma) break;
  }
  if (!comma) {
    WARN("no locale with a decimal comma is installed: not tested");
    return;
  }
  Db db;
  CHECK(db({"set", "f", "10.5"}) == "+OK");
  CHECK(db({"incrbyfloat", "f", "0.1"}) == "'10.6'");
  CHECK(db({"incrbyfloat", "f", "1,5"}) == "-ERR value is not a valid float");
  CHECK(db({"hincrbyfloat", "h", "x", "1.25"}) == "'1.25'");
  CHECK(db({"hincrbyfloat", "h", "x", "1.25"}) == "'2.5'");
  // Sorted sets' scores, read and written: the same text on every node.
  CHECK(db({"zadd", "z", "1.5", "m"}) == "1");
  CHECK(db({"zincrby", "z", "0.25", "m"}) == ",1.75");
  CHECK(db({"zadd", "z", "1,5", "n"}) == "-ERR value is not a valid float");
  CHECK(db({"zcount", "z", "(1.5", "2.5"}) == "1");
}

// ---- side by side with redis-server ----

namespace {

const std::vector<std::vector<std::string>>& script() {
  static const std::vector<std::vector<std::string>> s = {
      // keys
      {"set", "a", "1"}, {"rename", "a", "b"}, {"get", "b"}, {"rename", "a", "b"}, {"rename", "b", "b"},
      {"renamenx", "b", "b"}, {"renamenx", "missing", "x"}, {"rpush", "l", "x", "y"}, {"renamenx", "b", "l"},
      {"rename", "l", "b"}, {"type", "b"}, {"lrange", "b", "0", "-1"}, {"rename", "b"}, {"rename", "a", "b", "c"},
      {"set", "s", "v", "pxat", "4102444800123"}, {"rename", "s", "t"}, {"pexpiretime", "t"}, {"expiretime", "t"},
      {"expiretime", "missing"}, {"pexpiretime", "b"}, {"copy", "t", "u"}, {"pexpiretime", "u"}, {"copy", "t", "u"},
      {"copy", "t", "u", "replace"}, {"copy", "t", "t"}, {"copy", "missing", "u"}, {"copy", "t", "u", "bogus"},
      {"copy", "t", "v", "db", "0"}, {"copy", "t", "v", "db", "x"}, {"copy", "b", "lc"}, {"lrange", "lc", "0", "-1"},
      {"copy", "t"}, {"unlink", "u", "v", "missing"}, {"touch", "t", "t", "missing"}, {"touch"},
      {"object", "encoding", "missing"}, {"object", "refcount", "missing"}, {"object", "freq", "t"},
      {"object", "bogus"}, {"object", "encoding"}, {"object", "help", "x"}, {"object"}, {"flushdb", "bogus"},
      {"flushall", "sync", "x"}, {"randomkey", "x"}, {"expiretime"},
      // strings
      {"set", "g", "hello"}, {"getex", "g"}, {"getex", "g", "pxat", "4102444800999"}, {"pexpiretime", "g"},
      {"getex", "g", "exat", "4102444801"}, {"pexpiretime", "g"}, {"getex", "g", "persist"}, {"pexpiretime", "g"},
      {"getex", "missing", "ex", "10"}, {"getex", "g", "ex", "0"}, {"getex", "g", "px", "-1"},
      {"getex", "g", "ex", "x"}, {"getex", "g", "ex"}, {"getex", "g", "ex", "1", "px", "1"},
      {"getex", "g", "persist", "ex", "1"}, {"getex", "g", "nx"}, {"getex", "g", "keepttl"}, {"getex", "b"},
      {"getex", "missing", "bogus"}, {"getex", "g", "ex", "9223372036854775807"}, {"getex"},
      {"getex", "g", "exat", "1"}, {"exists", "g"}, {"getdel", "t"}, {"getdel", "t"}, {"getdel", "b"},
      {"setex", "e", "100", "v"}, {"get", "e"}, {"setex", "e", "0", "v"}, {"setex", "e", "x", "v"},
      {"setex", "e", "-1", "v"}, {"psetex", "e", "0", "v"}, {"psetex", "e", "100000", "w"}, {"get", "e"},
      {"setex", "e", "1"}, {"psetex", "e", "9223372036854775807", "v"}, {"setex", "e", "9223372036854775", "v"},
      {"msetnx", "m1", "1", "m2", "2"}, {"mget", "m1", "m2"}, {"msetnx", "m2", "x", "m3", "3"}, {"exists", "m3"},
      {"msetnx", "m3", "3", "m4"}, {"msetnx", "m4"},
      {"set", "r", "Hello World"}, {"getrange", "r", "0", "4"}, {"getrange", "r", "-5", "-1"},
      {"getrange", "r", "-1", "-5"}, {"getrange", "r", "5", "2"}, {"getrange", "r", "0", "100"},
      {"getrange", "r", "-100", "-50"}, {"getrange", "r", "-100", "3"}, {"getrange", "r", "20", "30"},
      {"getrange", "missing", "0", "-1"}, {"getrange", "r", "x", "1"}, {"getrange", "b", "0", "1"},
      {"getrange", "r", "-9223372036854775808", "9223372036854775807"}, {"getrange", "r", "0"},
      {"setrange", "r", "6", "Redis"}, {"get", "r"}, {"setrange", "r", "20", "!"}, {"get", "r"},
      {"setrange", "nr", "3", "ab"}, {"get", "nr"}, {"setrange", "nr2", "5", ""}, {"exists", "nr2"},
      {"setrange", "r", "0", ""}, {"setrange", "r", "-1", "x"}, {"setrange", "r", "x", "x"},
      {"setrange", "b", "0", "x"}, {"setrange", "big", "536870911", "ab"}, {"setrange", "big", "536870912", "a"},
      {"exists", "big"}, {"setrange", "r", "1"},
      {"set", "f", "10.5"}, {"incrbyfloat", "f", "0.1"}, {"incrbyfloat", "f", "-5"}, {"incrbyfloat", "f", "1e300"},
      {"incrbyfloat", "f", "-1e300"}, {"incrbyfloat", "f", "3.0e3"}, {"incrbyfloat", "f2", "5.0e3"},
      {"incrbyfloat", "f3", "0.1"}, {"incrbyfloat", "f3", "0.2"}, {"incrbyfloat", "f3", "-0.3"},
      {"incrbyfloat", "f4", "1.7976931348623157e308"}, {"incrbyfloat", "f4", "1e4000"},
      {"incrbyfloat", "f5", "1e-5000"}, {"incrbyfloat", "f5", "-0.0"}, {"incrbyfloat", "f5", "0x10"},
      {"incrbyfloat", "f6", "3"}, {"incrbyfloat", "f6", "1.23456789012345678"},
      {"incrbyfloat", "f", "inf"}, {"incrbyfloat", "f", "nan"}, {"incrbyfloat", "f", "abc"},
      {"incrbyfloat", "f", " 1"}, {"incrbyfloat", "f", "1 "}, {"incrbyfloat", "f", ""}, {"incrbyfloat", "r", "1"},
      {"incrbyfloat", "b", "1"}, {"incrbyfloat", "f"}, {"get", "f"},
      // compare-and-set that Redis 7.0 also has: plain DEL-like behaviour is checked elsewhere
      // hashes
      {"hset", "h", "a", "1", "b", "x", "c", "3.5"}, {"hincrbyfloat", "h", "a", "0.5"},
      {"hincrbyfloat", "h", "c", "10"}, {"hincrbyfloat", "h", "new", "-1.5"}, {"hincrbyfloat", "h2", "f", "2e2"},
      {"hincrbyfloat", "h", "b", "1"}, {"hincrbyfloat", "h", "a", "x"}, {"hincrbyfloat", "h", "a", "inf"},
      {"hincrbyfloat", "hbig", "a", "1e308"}, {"hincrbyfloat", "hbig", "b", "1.7976931348623157e308"},
      {"hincrbyfloat", "hbig", "b", "1e4932"}, {"hlen", "hbig"}, {"hincrbyfloat", "l2", "a", "1"},
      {"hincrbyfloat", "h", "a"},
      {"hgetall", "h"}, {"hsetnx", "h", "a", "z"}, {"hsetnx", "h", "z", "26"}, {"hget", "h", "z"},
      {"hsetnx", "h3", "f", "v"}, {"hsetnx", "r", "f", "v"}, {"hsetnx", "h", "a"}, {"hstrlen", "h", "z"},
      {"hstrlen", "h", "nope"}, {"hstrlen", "missing", "a"}, {"hstrlen", "r", "a"}, {"hstrlen", "h"},
      {"hrandfield", "missing"}, {"hrandfield", "missing", "3"}, {"hrandfield", "missing", "-3", "withvalues"},
      {"hrandfield", "h3"}, {"hrandfield", "h3", "1"}, {"hrandfield", "h3", "-3"},
      {"hrandfield", "h3", "-2", "withvalues"},
      {"hrandfield", "h", "0"}, {"hrandfield", "h", "100"}, {"hrandfield", "h", "100", "withvalues"},
      {"hrandfield", "h", "5", "WITHVALUES"}, {"hrandfield", "h", "x"}, {"hrandfield", "h", "1", "bogus"},
      {"hrandfield", "h", "1", "withvalues", "x"}, {"hrandfield", "h", "-9223372036854775808"},
      {"hrandfield", "h", "-9223372036854775807", "withvalues"}, {"hrandfield", "r"}, {"hrandfield", "r", "1"},
      {"hrandfield"}, {"hscan", "missing", "0"}, {"hscan", "r", "0"}, {"hscan", "h", "x"}, {"hscan", "h"},
      {"hscan", "h", "0", "count", "0"}, {"hscan", "h", "0", "count", "x"}, {"hscan", "h", "0", "match"},
      // lists
      {"rpush", "p", "a", "b", "c", "d", "b", "c", "b"}, {"lpos", "p", "b"}, {"lpos", "p", "b", "rank", "2"},
      {"lpos", "p", "b", "rank", "-1"}, {"lpos", "p", "b", "rank", "-2"}, {"lpos", "p", "b", "count", "0"},
      {"lpos", "p", "b", "count", "2"}, {"lpos", "p", "b", "count", "0", "rank", "-1"},
      {"lpos", "p", "b", "count", "0", "rank", "2", "maxlen", "5"}, {"lpos", "p", "b", "maxlen", "1"},
      {"lpos", "p", "b", "rank", "-1", "maxlen", "2"}, {"lpos", "p", "b", "rank", "-1", "maxlen", "1"},
      {"lpos", "p", "z"}, {"lpos", "p", "z", "count", "3"}, {"lpos", "p", "b", "rank", "10"},
      {"lpos", "missing", "b"}, {"lpos", "missing", "b", "count", "1"}, {"lpos", "r", "b"},
      {"lpos", "p", "b", "rank", "0"}, {"lpos", "p", "b", "rank", "x"}, {"lpos", "p", "b", "count", "-1"},
      {"lpos", "p", "b", "count", "x"}, {"lpos", "p", "b", "maxlen", "-1"}, {"lpos", "p", "b", "maxlen", "x"},
      {"lpos", "p", "b", "rank"}, {"lpos", "p", "b", "bogus", "1"}, {"lpos", "p"},
      {"lpos", "p", "b", "rank", "-9223372036854775808"}, {"lpos", "p", "b", "rank", "9223372036854775807"},
      {"linsert", "p", "before", "c", "X"}, {"linsert", "p", "AFTER", "b", "Y"}, {"lrange", "p", "0", "-1"},
      {"linsert", "p", "before", "zz", "X"}, {"linsert", "missing", "before", "a", "X"}, {"exists", "missing"},
      {"linsert", "p", "middle", "a", "X"}, {"linsert", "r", "before", "a", "X"}, {"linsert", "p", "before", "a"},
      {"rpush", "q", "1", "2", "3"}, {"lmove", "q", "q2", "left", "right"}, {"lmove", "q", "q2", "RIGHT", "LEFT"},
      {"lrange", "q", "0", "-1"}, {"lrange", "q2", "0", "-1"}, {"lmove", "q", "q", "left", "right"},
      {"lrange", "q", "0", "-1"}, {"lmove", "q", "q2", "left", "left"}, {"exists", "q"},
      {"lmove", "q", "q2", "left", "left"}, {"lmove", "q2", "r", "left", "left"}, {"lmove", "r", "q2", "left", "left"},
      {"lmove", "q2", "q3", "up", "left"}, {"lmove", "q2", "q3", "left", "down"}, {"lmove", "missing", "r", "x", "y"},
      {"lmove", "q2", "q3", "left"}, {"rpoplpush", "q2", "q3"}, {"lrange", "q3", "0", "-1"},
      {"rpoplpush", "missing", "q3"}, {"rpoplpush", "q3", "r"}, {"rpoplpush", "q3"}, {"lpushx", "missing", "a"},
      {"rpushx", "missing", "a"}, {"exists", "missing"}, {"lpushx", "q3", "a", "b"}, {"rpushx", "q3", "y", "z"},
      {"lrange", "q3", "0", "-1"}, {"lpushx", "r", "a"}, {"rpushx", "q3"},
      // the keys left
      {"keys", "*"}, {"dbsize"}, {"flushdb", "async"}, {"randomkey"}, {"dbsize"},
      {"set", "only", "1"}, {"randomkey"}, {"scan", "0"}, {"scan", "0", "type", "string"},
      {"scan", "0", "type", "list"}, {"scan", "0", "match", "o*"}, {"scan", "0", "match", "x*"},
      {"scan", "x"}, {"scan", "0", "count", "0"}, {"scan", "0", "count", "x"}, {"scan", "0", "match"},
      {"scan", "0", "bogus", "x"}, {"scan"}, {"flushall"}, {"dbsize"}, {"flushall", "sync"}, {"flushdb"},
      {"set", "e2", "v"}, {"object", "encoding", "e2"}, {"object", "refcount", "e2"},
  };
  return s;
}

/// Why Redis's reply to `w` is expected to differ here ("": it is not).
std::string expected_difference(const std::vector<std::string>& w) {
  if (w[0] == "object" && w.size() == 3 && w[1] == "encoding") return "strings are held as raw bytes here";
  return "";
}

/// The replies to script(), as typed() prints them (RESP3's types apart from RESP2's). KEYS's
/// array is sorted: Redis answers in its hash table's order.
std::vector<std::string> run_script(proc::Client& client, int protocol) {
  if (protocol == 3) REQUIRE(client.call({"HELLO", "3"}).type == resp::Type::Map);
  std::vector<std::string> replies;
  REQUIRE(typed(client.call({"FLUSHALL"})) == "+OK");
  for (const auto& w : script()) {
    resp::Value r = client.call(w);
    if (w[0] == "keys")
      std::sort(r.elements.begin(), r.elements.end(),
                [](const resp::Value& a, const resp::Value& b) { return a.str < b.str; });
    replies.push_back(typed(r));
  }
  return replies;
}

}  // namespace

namespace {

/// Sends script() to redis-server and to the node at `address` (ip:port), in RESP2 and RESP3,
/// and counts the replies that differ (each named in the test's output).
int differences_from_redis(int redis_port, const std::string& address) {
  int differences = 0;
  for (const int protocol : {2, 3}) {
    proc::Client theirs("127.0.0.1", redis_port);
    proc::Client ours(address.substr(0, address.find(':')), std::stoi(address.substr(address.find(':') + 1)));
    const auto expected = run_script(theirs, protocol);
    const auto got = run_script(ours, protocol);
    REQUIRE(expected.size() == got.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      const auto& w = script()[i];
      if (expected[i] == got[i]) continue;
      std::string cmd;
      for (const auto& x : w) cmd += x + " ";
      const std::string why = expected_difference(w);
      if (!why.empty()) {
        UNSCOPED_INFO("RESP" << protocol << " expected difference (" << why << "): " << cmd << "-> redis "
                             << expected[i] << ", here " << got[i]);
        continue;
      }
      ++differences;
      UNSCOPED_INFO("RESP" << protocol << " #" << i << ": " << cmd << "\n    redis: " << expected[i]
                           << "\n    here:  " << got[i]);
    }
  }
  return differences;
}

}  // namespace

TEST_CASE("issue 13's keys, strings, hashes and lists commands answer as redis-server 7.0 does, in RESP2 and RESP3, "
          "on a leader and on a follower that forwards the writes",
          "[runtime][commands][redis]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: not compared");
    return;
  }
  proc::TempDir dir("commands-more-redis");
  proc::RedisServer redis(dir);
  REQUIRE(redis.port() != 0);
  SECTION("a node of its own") {
    in_process::TestNode n(in_process::node_config("1", in_process::address(252, 1)));
    n->start();
    REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return n->state() == 'l'; }));
    CHECK(differences_from_redis(redis.port(), n->address()) == 0);
  }
  SECTION("a follower of three nodes") {
    in_process::Cluster c(252, 3);
    c.start();
    const int leader = c.wait_for_leader();
    REQUIRE(leader != 0);
    const int follower = leader == 1 ? 2 : 1;
    CHECK(differences_from_redis(redis.port(), c[follower].address()) == 0);
    // Every write applied alike on the three nodes: the same data (a write in the log since
    // the script: each node has applied everything before it once it has applied it).
    proc::Client writer(in_process::ip(252, follower), 7000 + 10 * follower);
    for (const std::vector<std::string>& w :
         std::vector<std::vector<std::string>>{{"set", "a", "1", "px", "100000"},
                                               {"rename", "a", "b"},
                                               {"copy", "b", "c"},
                                               {"rpush", "l", "x", "y", "z"},
                                               {"lmove", "l", "l2", "left", "right"},
                                               {"linsert", "l", "before", "z", "w"},
                                               {"incrbyfloat", "f", "10.1"},
                                               {"hincrbyfloat", "h", "f", "0.3"},
                                               {"hsetnx", "h", "g", "1"},
                                               {"setrange", "s", "4", "x"},
                                               {"getex", "c", "persist"},
                                               {"msetnx", "m", "1", "n", "2"},
                                               {"set", "m", "3", "ifeq", "1"},
                                               {"delifeq", "n", "2"}})
      REQUIRE_FALSE(writer.call(w).is_error());
    proc::Client marker(in_process::ip(252, leader), 7000 + 10 * leader);
    REQUIRE(typed(marker.call({"SET", "marker", "done"})) == "+OK");
    for (int i = 1; i <= 3; ++i)
      CHECK(in_process::eventually(in_process::long_wait(),
                                   [&] { return test_support::stored(c[i], "marker") == "done"; }));
    const Store first = in_process::snapshot_of_store(c[1]);
    CHECK(first.size() == 10);
    CHECK(in_process::snapshot_of_store(c[2]) == first);
    CHECK(in_process::snapshot_of_store(c[3]) == first);
  }
}

TEST_CASE("a full SCAN, HSCAN, SSCAN and ZSCAN return what redis-server 7.0 returns, with MATCH, TYPE and COUNT",
          "[runtime][commands][scan][redis]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: not compared");
    return;
  }
  proc::TempDir dir("commands-scan-redis");
  proc::RedisServer redis(dir);
  REQUIRE(redis.port() != 0);
  in_process::TestNode n(in_process::node_config("1", in_process::address(253, 1)));
  n->start();
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return n->state() == 'l'; }));
  proc::Client theirs("127.0.0.1", redis.port());
  proc::Client ours(in_process::ip(253, 1), 7010);
  for (proc::Client* c : {&theirs, &ours}) {
    REQUIRE(typed(c->call({"FLUSHALL"})) == "+OK");
    for (int i = 0; i < 150; ++i) {
      REQUIRE_FALSE(c->call({"SET", "str:" + std::to_string(i), "v"}).is_error());
      REQUIRE_FALSE(c->call({"RPUSH", "list:" + std::to_string(i), "v"}).is_error());
    }
    std::vector<std::string> hset{"HSET", "big"};
    for (int i = 0; i < 300; ++i) {
      hset.push_back("field" + std::to_string(i));
      hset.push_back("value" + std::to_string(i));
    }
    REQUIRE_FALSE(c->call(hset).is_error());
    REQUIRE_FALSE(c->call({"HSET", "small", "a", "1", "b", "2"}).is_error());
    std::vector<std::string> sadd{"SADD", "set"}, zadd{"ZADD", "zset"};
    for (int i = 0; i < 300; ++i) {
      sadd.push_back("member" + std::to_string(i));
      zadd.push_back(std::to_string(i) + ".1");
      zadd.push_back("member" + std::to_string(i));
    }
    REQUIRE_FALSE(c->call(sadd).is_error());
    REQUIRE_FALSE(c->call(zadd).is_error());
    REQUIRE_FALSE(c->call({"ZADD", "zsmall", "1.5", "a", "inf", "b", "-0", "c"}).is_error());
  }
  // Every element of a full iteration, each as often as it came.
  const auto full = [](proc::Client& c, std::vector<std::string> words) {
    std::multiset<std::string> seen;
    std::string cursor = "0";
    int calls = 0;
    do {
      std::vector<std::string> w = words;
      for (auto& x : w)
        if (x == "{cursor}") x = cursor;
      const resp::Value r = c.call(w);
      REQUIRE(r.elements.size() == 2);
      cursor = r.elements[0].str;
      for (const auto& e : r.elements[1].elements) seen.insert(e.str);
      REQUIRE(++calls < 10000);
    } while (cursor != "0");
    return seen;
  };
  for (const std::vector<std::string>& w : std::vector<std::vector<std::string>>{
           {"SCAN", "{cursor}"},
           {"SCAN", "{cursor}", "COUNT", "7"},
           {"SCAN", "{cursor}", "MATCH", "str:1*"},
           {"SCAN", "{cursor}", "MATCH", "*:1?", "COUNT", "3"},
           {"SCAN", "{cursor}", "TYPE", "list"},
           {"SCAN", "{cursor}", "TYPE", "hash", "COUNT", "1000"},
           {"SCAN", "{cursor}", "TYPE", "zset"},
           {"HSCAN", "big", "{cursor}"},
           {"HSCAN", "big", "{cursor}", "COUNT", "17", "MATCH", "field2*"},
           {"HSCAN", "small", "{cursor}", "COUNT", "1"},
           {"HSCAN", "missing", "{cursor}"},
           {"SSCAN", "set", "{cursor}"},
           {"SSCAN", "set", "{cursor}", "MATCH", "member1*", "COUNT", "5"},
           {"ZSCAN", "zset", "{cursor}"},
           {"ZSCAN", "zset", "{cursor}", "COUNT", "3", "MATCH", "*7"},
           {"ZSCAN", "zsmall", "{cursor}"},
           {"SSCAN", "missing", "{cursor}"},
       }) {
    std::string cmd;
    for (const auto& x : w) cmd += x + " ";
    INFO(cmd);
    const auto expected = full(theirs, w);
    CHECK(std::set<std::string>(expected.begin(), expected.end()).size() == expected.size());
    CHECK(full(ours, w) == expected);
  }
}
