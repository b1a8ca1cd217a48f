// The built-in Redis commands, called through the handler table with a Store and a Call (no
// node). Replies are compared as test_support::typed() prints them: +OK, -ERR ..., 5 (integer),
// 'x' (bulk, Python repr), nil, *nil (null array), [..] (array), {k: v} (map).
#include "raft.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <random>

namespace {

using raft::Store;

using test_support::typed;

constexpr std::int64_t kT0 = 1'700'000'000'000;  // an entry timestamp, ms

using test_support::Db;

const char* const kWrongType = "-WRONGTYPE Operation against a key holding the wrong kind of value";
const char* const kNotInteger = "-ERR value is not an integer or out of range";

}  // namespace

TEST_CASE("builtin table: names, flags and argument counts follow Redis", "[store][commands]") {
  raft::CommandTable t;
  raft::add_builtin_commands(t);
  for (const char* name : {"get", "mget", "exists", "strlen", "type", "dbsize", "keys", "ttl",
                           "pttl", "hget", "hlen", "hgetall", "hexists", "hkeys", "hvals",
                           "hmget", "lrange", "lindex", "llen", "smembers", "sismember", "smismember", "scard",
                           "srandmember", "sinter", "sunion", "sdiff", "zscore", "zmscore", "zcard", "zcount", "zrank",
                           "zrevrank", "zrange", "zrangebyscore", "zrevrangebyscore"}) {
    INFO(name);
    REQUIRE(t.count(name) == 1);
    CHECK(t.at(name).flags == "r");
  }
  // Writes Redis marks denyoom (refused at maxmemory), and the others ('s': never grow).
  for (const char* name : {"set", "setnx", "getset", "mset", "incr", "decr", "incrby", "decrby", "append",
                           "hset", "hmset", "hincrby", "lpush", "rpush", "lset", "sadd", "sinterstore",
                           "sunionstore", "sdiffstore", "zadd", "zincrby"}) {
    INFO(name);
    REQUIRE(t.count(name) == 1);
    CHECK(t.at(name).flags == "we");
    CHECK(t.at(name).is_write());
    CHECK(t.at(name).may_grow());
  }
  for (const char* name : {"del", "expire", "pexpire", "expireat", "pexpireat", "persist", "hdel", "lpop", "rpop",
                           "lrem", "ltrim", "srem", "spop", "smove", "zrem", "zremrangebyscore", "zremrangebyrank",
                           "zpopmin", "zpopmax"}) {
    INFO(name);
    REQUIRE(t.count(name) == 1);
    CHECK(t.at(name).flags == "wes");
    CHECK(t.at(name).is_write());
    CHECK_FALSE(t.at(name).may_grow());
  }
  CHECK(t.at("get").min_args == 1);
  CHECK(t.at("get").max_args == 1);
  CHECK(t.at("set").min_args == 2);
  CHECK(t.at("set").max_args == -1);
  CHECK(t.at("dbsize").max_args == 0);
  CHECK(t.at("lpop").max_args == 2);
  CHECK(t.at("hset").min_args == 3);
}

TEST_CASE("builtin table: issue 13's commands, their flags and argument counts", "[store][commands]") {
  raft::CommandTable t;
  raft::add_builtin_commands(t);
  for (const char* name : {"touch", "randomkey", "expiretime", "pexpiretime", "object", "scan", "getrange", "hstrlen",
                           "hrandfield", "hscan", "lpos"}) {
    INFO(name);
    REQUIRE(t.count(name) == 1);
    CHECK(t.at(name).flags == "r");
  }
  for (const char* name : {"copy", "setex", "psetex", "msetnx", "setrange", "incrbyfloat", "hincrbyfloat", "hsetnx",
                           "lpushx", "rpushx", "linsert", "lmove", "rpoplpush"}) {
    INFO(name);
    REQUIRE(t.count(name) == 1);
    CHECK(t.at(name).flags == "we");
  }
  for (const char* name : {"rename", "renamenx", "unlink", "flushall", "flushdb", "getex", "getdel", "delex",
                           "delifeq"}) {
    INFO(name);
    REQUIRE(t.count(name) == 1);
    CHECK(t.at(name).flags == "wes");
  }
  CHECK(t.at("lmove").min_args == 4);
  CHECK(t.at("lmove").max_args == 4);
  CHECK(t.at("delex").min_args == 1);
  CHECK(t.at("delex").max_args == -1);
  CHECK(t.at("randomkey").max_args == 0);
}

TEST_CASE("builtin table: an entry registered before is kept", "[store][commands]") {
  raft::CommandTable t;
  t["get"] = raft::Command{[](raft::Call&) { return resp::Value::simple("mine"); }, "r", 1, 1};
  raft::add_builtin_commands(t);
  Store s;
  std::vector<std::string> w{"get", "k"};
  raft::Call c{s, w, 0, nullptr};
  CHECK(typed(t.at("get").fn(c)) == "+mine");
}

TEST_CASE("handlers called with the wrong number of words answer an arity error", "[store][commands]") {
  Db db;
  CHECK(db({"get"}) == "-ERR wrong number of arguments for 'get' command");
  CHECK(db({"get", "a", "b"}) == "-ERR wrong number of arguments for 'get' command");
  CHECK(db({"lset", "k", "0"}) == "-ERR wrong number of arguments for 'lset' command");
  CHECK(db({"lpop", "k", "1", "2"}) == "-ERR wrong number of arguments for 'lpop' command");
  CHECK(db({"mset", "a", "1", "b"}) == "-ERR wrong number of arguments for 'mset' command");
  CHECK(db({"hset", "h", "f", "v", "g"}) == "-ERR wrong number of arguments for 'hset' command");
  CHECK(db({"hmset", "h", "f"}) == "-ERR wrong number of arguments for 'hmset' command");
  CHECK(db.store.empty());
}

TEST_CASE("get, set, setnx, getset, mget, mset", "[store][commands]") {
  Db db;
  CHECK(db({"get", "k"}) == "nil");
  CHECK(db({"set", "k", "v"}) == "+OK");
  CHECK(db({"get", "k"}) == "'v'");
  CHECK(db({"set", "k", std::string("a\0b\xff", 4)}) == "+OK");
  CHECK(db({"get", "k"}) == "b'a\\x00b\\xff'");
  CHECK(db({"set", "empty", ""}) == "+OK");
  CHECK(db({"get", "empty"}) == "''");

  CHECK(db({"setnx", "k", "x"}) == "0");
  CHECK(db({"setnx", "n", "x"}) == "1");
  CHECK(db({"get", "n"}) == "'x'");

  CHECK(db({"getset", "n", "y"}) == "'x'");
  CHECK(db({"getset", "fresh", "y"}) == "nil");
  CHECK(db({"get", "fresh"}) == "'y'");

  CHECK(db({"mset", "a", "1", "b", "2", "a", "3"}) == "+OK");
  CHECK(db({"mget", "a", "b", "missing"}) == "['3', '2', nil]");

  db({"rpush", "list", "x"});
  CHECK(db({"get", "list"}) == kWrongType);
  CHECK(db({"mget", "list", "a"}) == "[nil, '3']");  // MGET: nil for other kinds, no error
  CHECK(db({"getset", "list", "v"}) == kWrongType);
  CHECK(db({"llen", "list"}) == "1");
  CHECK(db({"set", "list", "v"}) == "+OK");  // plain SET replaces any kind
  CHECK(db({"type", "list"}) == "+string");
}

TEST_CASE("set options: NX, XX, GET, KEEPTTL, EX, PX, EXAT, PXAT", "[store][commands]") {
  Db db;
  CHECK(db({"set", "k", "1", "xx"}) == "nil");
  CHECK(db({"get", "k"}) == "nil");
  CHECK(db({"set", "k", "1", "nx"}) == "+OK");
  CHECK(db({"set", "k", "2", "NX"}) == "nil");
  CHECK(db({"set", "k", "2", "Xx"}) == "+OK");
  CHECK(db({"get", "k"}) == "'2'");

  SECTION("GET returns the old value, also when NX stops the write") {
    CHECK(db({"set", "k", "3", "get"}) == "'2'");
    CHECK(db({"set", "k", "4", "nx", "get"}) == "'3'");
    CHECK(db({"get", "k"}) == "'3'");
    CHECK(db({"set", "new", "v", "get"}) == "nil");
    CHECK(db({"get", "new"}) == "'v'");
    db({"hset", "h", "f", "v"});
    CHECK(db({"set", "h", "v", "get"}) == kWrongType);
    CHECK(db({"type", "h"}) == "+hash");
  }
  SECTION("EX and PX are relative to the entry timestamp") {
    CHECK(db({"set", "k", "v", "ex", "10"}) == "+OK");
    CHECK(db.store.deadline("k") == kT0 + 10'000);
    CHECK(db({"set", "k", "v", "px", "1500"}) == "+OK");
    CHECK(db.store.deadline("k") == kT0 + 1'500);
    CHECK(db({"set", "k", "v", "EXAT", std::to_string(kT0 / 1000 + 60)}) == "+OK");
    CHECK(db.store.deadline("k") == kT0 + 60'000);
    CHECK(db({"set", "k", "v", "pxat", std::to_string(kT0 + 5)}) == "+OK");
    CHECK(db.store.deadline("k") == kT0 + 5);
    CHECK(db({"set", "k", "v", "ex", "5", "ex", "7"}) == "+OK");  // the same option twice: last
    CHECK(db.store.deadline("k") == kT0 + 7'000);
  }
  SECTION("a plain SET clears the deadline, KEEPTTL keeps it") {
    db({"set", "k", "v", "ex", "10"});
    CHECK(db({"set", "k", "w", "keepttl"}) == "+OK");
    CHECK(db.store.deadline("k") == kT0 + 10'000);
    CHECK(db({"get", "k"}) == "'w'");
    CHECK(db({"set", "k", "x"}) == "+OK");
    CHECK(db.store.deadline("k") == std::nullopt);
  }
  SECTION("an absolute time already past sets nothing visible") {
    CHECK(db({"set", "k", "v", "pxat", std::to_string(kT0)}) == "+OK");
    CHECK(db({"get", "k"}) == "nil");
    CHECK(db.store.size() == 0);
  }
  SECTION("bad options change nothing") {
    const std::string syntax = "-ERR syntax error";
    CHECK(db({"set", "k", "v", "nx", "xx"}) == syntax);
    CHECK(db({"set", "k", "v", "ex"}) == syntax);
    CHECK(db({"set", "k", "v", "ex", "1", "px", "1"}) == syntax);
    CHECK(db({"set", "k", "v", "keepttl", "ex", "1"}) == syntax);
    CHECK(db({"set", "k", "v", "ex", "1", "keepttl"}) == syntax);
    CHECK(db({"set", "k", "v", "bogus"}) == syntax);
    CHECK(db({"set", "k", "v", "ex", "ten"}) == kNotInteger);
    const std::string invalid = "-ERR invalid expire time in 'set' command";
    CHECK(db({"set", "k", "v", "ex", "0"}) == invalid);
    CHECK(db({"set", "k", "v", "px", "-5"}) == invalid);
    CHECK(db({"set", "k", "v", "ex", "9223372036854775"}) == invalid);
    CHECK(db({"set", "k", "v", "px", "9223372036854775807"}) == invalid);
    CHECK(db({"get", "k"}) == "'2'");
    CHECK(db.store.deadline("k") == std::nullopt);
  }
}

TEST_CASE("del and exists count keys; exists counts repeats", "[store][commands]") {
  Db db;
  db({"mset", "a", "1", "b", "2"});
  CHECK(db({"exists", "a", "a", "b", "c"}) == "3");
  CHECK(db({"del", "a", "c", "a"}) == "1");
  CHECK(db({"exists", "a"}) == "0");
  CHECK(db({"dbsize"}) == "1");
}

TEST_CASE("incr, decr, incrby, decrby", "[store][commands]") {
  Db db;
  CHECK(db({"incr", "n"}) == "1");
  CHECK(db({"incrby", "n", "41"}) == "42");
  CHECK(db({"decr", "n"}) == "41");
  CHECK(db({"decrby", "n", "-9"}) == "50");
  CHECK(db({"get", "n"}) == "'50'");
  CHECK(db({"decrby", "m", "5"}) == "-5");

  db({"set", "max", "9223372036854775807"});
  CHECK(db({"incr", "max"}) == "-ERR increment or decrement would overflow");
  db({"set", "min", "-9223372036854775808"});
  CHECK(db({"decr", "min"}) == "-ERR increment or decrement would overflow");
  CHECK(db({"decrby", "n", "-9223372036854775808"}) == "-ERR decrement would overflow");
  CHECK(db({"get", "max"}) == "'9223372036854775807'");

  for (const char* bad : {"abc", " 1", "1 ", "+1", "01", "-0", "1.0", "", "9223372036854775808",
                          "99999999999999999999"}) {
    INFO(bad);
    db({"set", "s", bad});
    CHECK(db({"incr", "s"}) == kNotInteger);
    CHECK(db({"incrby", "n", bad}) == kNotInteger);
  }
  CHECK(db({"get", "n"}) == "'50'");
  db({"lpush", "l", "x"});
  CHECK(db({"incr", "l"}) == kWrongType);
}

TEST_CASE("incr keeps the key's deadline", "[store][commands]") {
  Db db;
  db({"set", "n", "1", "px", "100"});
  CHECK(db({"incr", "n"}) == "2");
  CHECK(db.store.deadline("n") == kT0 + 100);
}

TEST_CASE("append and strlen", "[store][commands]") {
  Db db;
  CHECK(db({"strlen", "k"}) == "0");
  CHECK(db({"append", "k", "ab"}) == "2");
  CHECK(db({"append", "k", std::string("\0c", 2)}) == "4");
  CHECK(db({"get", "k"}) == "'ab\\x00c'");
  CHECK(db({"strlen", "k"}) == "4");
  db({"hset", "h", "f", "v"});
  CHECK(db({"append", "h", "x"}) == kWrongType);
  CHECK(db({"strlen", "h"}) == kWrongType);
}

TEST_CASE("type, dbsize, keys", "[store][commands]") {
  Db db;
  CHECK(db({"dbsize"}) == "0");
  CHECK(db({"keys", "*"}) == "[]");
  db({"set", "hello", "1"});
  db({"set", "hallo", "1"});
  db({"set", "hxllo", "1"});
  db({"set", "hllo", "1"});
  db({"set", "heeeello", "1"});
  db({"hset", "h:1", "f", "v"});
  db({"rpush", "l:1", "x"});
  db({"set", "", "empty key"});
  CHECK(db({"type", "hello"}) == "+string");
  CHECK(db({"type", "h:1"}) == "+hash");
  CHECK(db({"type", "l:1"}) == "+list");
  CHECK(db({"type", "nope"}) == "+none");
  CHECK(db({"dbsize"}) == "8");
  CHECK(db({"keys", "*"}) ==
        "['', 'h:1', 'hallo', 'heeeello', 'hello', 'hllo', 'hxllo', 'l:1']");
  CHECK(db({"keys", "h?llo"}) == "['hallo', 'hello', 'hxllo']");
  CHECK(db({"keys", "h*llo"}) == "['hallo', 'heeeello', 'hello', 'hllo', 'hxllo']");
  CHECK(db({"keys", "h[ae]llo"}) == "['hallo', 'hello']");
  CHECK(db({"keys", "h[^e]llo"}) == "['hallo', 'hxllo']");
  CHECK(db({"keys", "h[a-b]llo"}) == "['hallo']");
  CHECK(db({"keys", "h[b-a]llo"}) == "['hallo']");
  CHECK(db({"keys", "?:*"}) == "['h:1', 'l:1']");
  CHECK(db({"keys", "nothing*"}) == "[]");
}

TEST_CASE("glob matching follows Redis's stringmatchlen", "[store][commands]") {
  using raft::detail::glob_match;
  CHECK(glob_match("", ""));
  CHECK_FALSE(glob_match("*", ""));  // Redis: only KEYS * (special-cased) sees the empty key
  CHECK(glob_match("a*", "a"));
  CHECK(glob_match("*", "anything"));
  CHECK(glob_match("**a**", "bab"));
  CHECK(glob_match("a*b*c", "aXXbYYc"));
  CHECK_FALSE(glob_match("a*b*c", "aXXbYY"));
  CHECK(glob_match("\\*", "*"));
  CHECK_FALSE(glob_match("\\*", "a"));
  CHECK(glob_match("a\\", "a\\"));  // a trailing backslash is literal
  CHECK(glob_match("[\\]]", "]"));
  CHECK(glob_match("[a\\-z]", "-"));
  CHECK_FALSE(glob_match("[a\\-z]", "b"));
  CHECK_FALSE(glob_match("[", "["));  // an unclosed class with nothing in it matches nothing
  CHECK(glob_match("[^", "x"));
  CHECK(glob_match("[abc", "b"));  // unclosed class: runs to the end of the pattern
  CHECK(glob_match("*.txt", "notes.txt"));
  CHECK_FALSE(glob_match("*.txt", "notes.txt.bak"));
  CHECK(glob_match("?", std::string(1, '\0')));
  const std::string a(2000, 'a');
  CHECK_FALSE(glob_match("*a*a*a*a*a*a*a*a*b", a));  // backtracking stays polynomial
}

TEST_CASE("expire family: relative and absolute times, options, past deadlines", "[store][commands]") {
  Db db;
  CHECK(db({"expire", "k", "10"}) == "0");
  db({"set", "k", "v"});
  CHECK(db({"ttl", "k"}) == "-1");
  CHECK(db({"pttl", "k"}) == "-1");
  CHECK(db({"ttl", "missing"}) == "-2");
  CHECK(db({"pttl", "missing"}) == "-2");

  CHECK(db({"expire", "k", "10"}) == "1");
  CHECK(db.store.deadline("k") == kT0 + 10'000);
  CHECK(db({"ttl", "k"}) == "10");
  CHECK(db({"pttl", "k"}) == "10000");
  CHECK(db({"pexpire", "k", "1500"}) == "1");
  CHECK(db({"ttl", "k"}) == "2");  // 1.5 s rounds to 2, as Redis
  CHECK(db({"pttl", "k"}) == "1500");
  CHECK(db({"expireat", "k", std::to_string(kT0 / 1000 + 100)}) == "1");
  CHECK(db.store.deadline("k") == kT0 + 100'000);
  CHECK(db({"pexpireat", "k", std::to_string(kT0 + 7)}) == "1");
  CHECK(db.store.deadline("k") == kT0 + 7);

  SECTION("NX, XX, GT, LT") {
    CHECK(db({"expire", "k", "50", "nx"}) == "0");
    CHECK(db({"expire", "k", "50", "xx"}) == "1");
    CHECK(db({"expire", "k", "40", "gt"}) == "0");
    CHECK(db({"expire", "k", "60", "GT"}) == "1");
    CHECK(db({"expire", "k", "70", "lt"}) == "0");
    CHECK(db({"expire", "k", "30", "lt"}) == "1");
    CHECK(db.store.deadline("k") == kT0 + 30'000);
    CHECK(db({"persist", "k"}) == "1");
    CHECK(db({"expire", "k", "30", "xx"}) == "0");
    CHECK(db({"expire", "k", "30", "gt"}) == "0");  // no deadline counts as infinite
    CHECK(db({"expire", "k", "30", "lt"}) == "1");
    CHECK(db({"persist", "k"}) == "1");
    CHECK(db({"expire", "k", "30", "nx"}) == "1");
    CHECK(db({"expire", "k", "30", "xx", "gt", "lt"}) ==
          "-ERR GT and LT options at the same time are not compatible");
    CHECK(db({"expire", "k", "30", "nx", "xx"}) ==
          "-ERR NX and XX, GT or LT options at the same time are not compatible");
    CHECK(db({"expire", "k", "30", "nx", "gt"}) ==
          "-ERR NX and XX, GT or LT options at the same time are not compatible");
    CHECK(db({"pexpire", "k", "30", "sooner"}) == "-ERR Unsupported option sooner");
  }
  SECTION("a deadline at or before the entry timestamp deletes the key and answers 1") {
    CHECK(db({"expire", "k", "0"}) == "1");
    CHECK(db.store.size() == 0);
    db({"set", "k", "v"});
    CHECK(db({"pexpireat", "k", std::to_string(kT0)}) == "1");
    CHECK(db.store.size() == 0);
    db({"set", "k", "v"});
    CHECK(db({"expire", "k", "-5"}) == "1");
    CHECK(db({"exists", "k"}) == "0");
  }
  SECTION("bad times change nothing") {
    CHECK(db({"expire", "k", "ten"}) == kNotInteger);
    CHECK(db({"expire", "k", "9223372036854775807"}) ==
          "-ERR invalid expire time in 'expire' command");
    CHECK(db({"pexpire", "k", "9223372036854775807"}) ==
          "-ERR invalid expire time in 'pexpire' command");
    CHECK(db({"expireat", "k", "-9223372036854775807"}) ==
          "-ERR invalid expire time in 'expireat' command");
    CHECK(db.store.deadline("k") == kT0 + 7);
  }
  SECTION("persist") {
    CHECK(db({"persist", "k"}) == "1");
    CHECK(db({"persist", "k"}) == "0");
    CHECK(db({"persist", "missing"}) == "0");
    CHECK(db({"ttl", "k"}) == "-1");
  }
}

TEST_CASE("hashes: hset, hmset, hget, hdel, hlen, hgetall, hexists, hkeys, hvals, hmget", "[store][commands]") {
  Db db;
  CHECK(db({"hset", "h", "b", "2", "a", "1"}) == "2");
  CHECK(db({"hset", "h", "a", "one", "c", "3"}) == "1");  // counts new fields only
  CHECK(db({"hmset", "h", "d", "4"}) == "+OK");
  CHECK(db({"hget", "h", "a"}) == "'one'");
  CHECK(db({"hget", "h", "zz"}) == "nil");
  CHECK(db({"hget", "nope", "a"}) == "nil");
  CHECK(db({"hlen", "h"}) == "4");
  CHECK(db({"hlen", "nope"}) == "0");
  CHECK(db({"hgetall", "h"}) == "{'a': 'one', 'b': '2', 'c': '3', 'd': '4'}");
  CHECK(db({"hgetall", "nope"}) == "{}");
  CHECK(db({"hexists", "h", "a"}) == "1");
  CHECK(db({"hexists", "h", "zz"}) == "0");
  CHECK(db({"hkeys", "h"}) == "['a', 'b', 'c', 'd']");
  CHECK(db({"hvals", "h"}) == "['one', '2', '3', '4']");
  CHECK(db({"hkeys", "nope"}) == "[]");
  CHECK(db({"hmget", "h", "a", "zz", "d"}) == "['one', nil, '4']");
  CHECK(db({"hmget", "nope", "a", "b"}) == "[nil, nil]");
  CHECK(db({"hdel", "h", "a", "zz", "b"}) == "2");
  CHECK(db({"hdel", "nope", "a"}) == "0");
  CHECK(db({"hdel", "h", "c", "d"}) == "2");
  CHECK(db({"exists", "h"}) == "0");  // an emptied hash is deleted
  CHECK(db.store.size() == 0);

  db({"set", "s", "v"});
  for (const auto& cmd : std::vector<std::vector<std::string>>{
           {"hset", "s", "f", "v"}, {"hmset", "s", "f", "v"}, {"hget", "s", "f"},
           {"hdel", "s", "f"}, {"hlen", "s"}, {"hgetall", "s"}, {"hexists", "s", "f"},
           {"hkeys", "s"}, {"hvals", "s"}, {"hmget", "s", "f"}, {"hincrby", "s", "f", "1"}}) {
    INFO(cmd[0]);
    CHECK(db(cmd) == kWrongType);
  }
  CHECK(db({"get", "s"}) == "'v'");
}

TEST_CASE("hincrby", "[store][commands]") {
  Db db;
  CHECK(db({"hincrby", "h", "n", "5"}) == "5");
  CHECK(db({"hincrby", "h", "n", "-7"}) == "-2");
  CHECK(db({"hget", "h", "n"}) == "'-2'");
  db({"hset", "h", "s", "abc", "big", "9223372036854775807"});
  CHECK(db({"hincrby", "h", "s", "1"}) == "-ERR hash value is not an integer");
  CHECK(db({"hincrby", "h", "big", "1"}) == "-ERR increment or decrement would overflow");
  CHECK(db({"hincrby", "h", "n", "x"}) == kNotInteger);
  CHECK(db({"hincrby", "other", "n", "x"}) == kNotInteger);
  CHECK(db({"exists", "other"}) == "0");
  CHECK(db({"hget", "h", "big"}) == "'9223372036854775807'");
}

TEST_CASE("lists: lpush, rpush, lrange, lindex, llen", "[store][commands]") {
  Db db;
  CHECK(db({"rpush", "l", "a", "b"}) == "2");
  CHECK(db({"lpush", "l", "x", "y"}) == "4");
  CHECK(db({"lrange", "l", "0", "-1"}) == "['y', 'x', 'a', 'b']");
  CHECK(db({"lrange", "l", "1", "2"}) == "['x', 'a']");
  CHECK(db({"lrange", "l", "-2", "100"}) == "['a', 'b']");
  CHECK(db({"lrange", "l", "-100", "0"}) == "['y']");
  CHECK(db({"lrange", "l", "3", "1"}) == "[]");
  CHECK(db({"lrange", "l", "4", "10"}) == "[]");
  CHECK(db({"lrange", "l", "0", "-5"}) == "[]");
  CHECK(db({"lrange", "nope", "0", "-1"}) == "[]");
  CHECK(db({"lrange", "l", "a", "1"}) == kNotInteger);
  CHECK(db({"lindex", "l", "0"}) == "'y'");
  CHECK(db({"lindex", "l", "-1"}) == "'b'");
  CHECK(db({"lindex", "l", "3"}) == "'b'");
  CHECK(db({"lindex", "l", "4"}) == "nil");
  CHECK(db({"lindex", "l", "-5"}) == "nil");
  CHECK(db({"lindex", "l", "x"}) == kNotInteger);
  CHECK(db({"lindex", "nope", "0"}) == "nil");
  CHECK(db({"llen", "l"}) == "4");
  CHECK(db({"llen", "nope"}) == "0");
  db({"set", "s", "v"});
  for (const auto& cmd : std::vector<std::vector<std::string>>{
           {"lpush", "s", "v"}, {"rpush", "s", "v"}, {"lpop", "s"}, {"rpop", "s", "2"},
           {"lrange", "s", "0", "1"}, {"lindex", "s", "0"}, {"llen", "s"},
           {"lset", "s", "0", "v"}, {"lrem", "s", "0", "v"}, {"ltrim", "s", "0", "1"}}) {
    INFO(cmd[0]);
    CHECK(db(cmd) == kWrongType);
  }
}

TEST_CASE("lpop and rpop, with and without a count", "[store][commands]") {
  Db db;
  CHECK(db({"lpop", "l"}) == "nil");
  CHECK(db({"rpop", "l", "2"}) == "*nil");
  db({"rpush", "l", "a", "b", "c", "d", "e"});
  CHECK(db({"lpop", "l"}) == "'a'");
  CHECK(db({"rpop", "l"}) == "'e'");
  CHECK(db({"lpop", "l", "2"}) == "['b', 'c']");
  CHECK(db({"lpop", "l", "0"}) == "[]");
  CHECK(db({"lpop", "l", "-1"}) == "-ERR value is out of range, must be positive");
  CHECK(db({"lpop", "l", "x"}) == "-ERR value is out of range, must be positive");
  db({"rpush", "l", "f", "g"});
  CHECK(db({"rpop", "l", "2"}) == "['g', 'f']");
  CHECK(db({"rpop", "l", "10"}) == "['d']");
  CHECK(db({"exists", "l"}) == "0");  // an emptied list is deleted
  db({"rpush", "l", "x"});
  CHECK(db({"rpop", "l"}) == "'x'");
  CHECK(db.store.size() == 0);
}

TEST_CASE("lset", "[store][commands]") {
  Db db;
  CHECK(db({"lset", "l", "0", "v"}) == "-ERR no such key");
  db({"rpush", "l", "a", "b", "c"});
  CHECK(db({"lset", "l", "0", "A"}) == "+OK");
  CHECK(db({"lset", "l", "-1", "C"}) == "+OK");
  CHECK(db({"lset", "l", "2", "C2"}) == "+OK");
  CHECK(db({"lset", "l", "3", "x"}) == "-ERR index out of range");
  CHECK(db({"lset", "l", "-4", "x"}) == "-ERR index out of range");
  CHECK(db({"lset", "l", "one", "x"}) == kNotInteger);
  CHECK(db({"lrange", "l", "0", "-1"}) == "['A', 'b', 'C2']");
}

TEST_CASE("lrem: positive from the head, negative from the tail, zero all", "[store][commands]") {
  Db db;
  const auto reset = [&] {
    db({"del", "l"});
    db({"rpush", "l", "x", "a", "x", "b", "x", "c", "x"});
  };
  reset();
  CHECK(db({"lrem", "l", "2", "x"}) == "2");
  CHECK(db({"lrange", "l", "0", "-1"}) == "['a', 'b', 'x', 'c', 'x']");
  reset();
  CHECK(db({"lrem", "l", "-2", "x"}) == "2");
  CHECK(db({"lrange", "l", "0", "-1"}) == "['x', 'a', 'x', 'b', 'c']");
  reset();
  CHECK(db({"lrem", "l", "0", "x"}) == "4");
  CHECK(db({"lrange", "l", "0", "-1"}) == "['a', 'b', 'c']");
  CHECK(db({"lrem", "l", "-9223372036854775808", "a"}) == "1");
  CHECK(db({"lrem", "l", "5", "zz"}) == "0");
  CHECK(db({"lrem", "nope", "1", "a"}) == "0");
  CHECK(db({"lrem", "l", "1.5", "b"}) == kNotInteger);
  CHECK(db({"lrem", "l", "0", "b"}) == "1");
  CHECK(db({"lrem", "l", "0", "c"}) == "1");
  CHECK(db({"exists", "l"}) == "0");
}

TEST_CASE("ltrim keeps the given range and deletes an emptied list", "[store][commands]") {
  Db db;
  CHECK(db({"ltrim", "nope", "0", "1"}) == "+OK");
  db({"rpush", "l", "a", "b", "c", "d", "e"});
  CHECK(db({"ltrim", "l", "1", "-2"}) == "+OK");
  CHECK(db({"lrange", "l", "0", "-1"}) == "['b', 'c', 'd']");
  CHECK(db({"ltrim", "l", "-100", "100"}) == "+OK");
  CHECK(db({"lrange", "l", "0", "-1"}) == "['b', 'c', 'd']");
  CHECK(db({"ltrim", "l", "x", "1"}) == kNotInteger);
  CHECK(db({"ltrim", "l", "2", "2"}) == "+OK");
  CHECK(db({"lrange", "l", "0", "-1"}) == "['d']");
  CHECK(db({"ltrim", "l", "1", "0"}) == "+OK");
  CHECK(db({"exists", "l"}) == "0");
}

TEST_CASE("reads hide an expired key without deleting it; writes delete it", "[store][commands][ttl]") {
  Db db;
  db({"set", "k", "v", "px", "100"});
  db({"hset", "h", "f", "v"});
  db({"pexpire", "h", "100"});
  db.now = kT0 + 99;
  CHECK(db({"get", "k"}) == "'v'");
  CHECK(db({"pttl", "k"}) == "1");
  db.now = kT0 + 100;  // a deadline at the read's time hides the key
  CHECK(db({"get", "k"}) == "nil");
  CHECK(db({"exists", "k", "h"}) == "0");
  CHECK(db({"ttl", "k"}) == "-2");
  CHECK(db({"type", "k"}) == "+none");
  CHECK(db({"hgetall", "h"}) == "{}");
  CHECK(db({"dbsize"}) == "0");
  CHECK(db({"keys", "*"}) == "[]");
  CHECK(db.store.size() == 2);  // hidden, still there

  db({"set", "other", "x"});  // a write elsewhere does not touch them
  CHECK(db.store.size() == 3);

  CHECK(db({"append", "k", "new"}) == "3");  // a write to the key deletes it first
  CHECK(db({"get", "k"}) == "'new'");
  CHECK(db.store.deadline("k") == std::nullopt);
  CHECK(db({"hset", "h", "g", "w"}) == "1");
  CHECK(db({"hgetall", "h"}) == "{'g': 'w'}");
  CHECK(db({"del", "nothing"}) == "0");
}

TEST_CASE("del does not count an expired key", "[store][commands][ttl]") {
  Db db;
  db({"set", "k", "v", "px", "10"});
  db.now += 10;
  CHECK(db({"del", "k"}) == "0");
  CHECK(db.store.size() == 0);
}

TEST_CASE("background expiry is a conditional delete: a renewed key survives", "[store][commands][ttl]") {
  Db db;
  db({"set", "a", "1", "px", "100"});
  db({"set", "b", "2", "px", "100"});
  db.now = kT0 + 150;
  const std::vector<std::string> due = db.store.due(db.now, 10);
  REQUIRE(due == std::vector<std::string>{"a", "b"});
  // Between the leader's proposal and its application, b is renewed...
  db.now = kT0 + 160;
  CHECK(db({"set", "b", "3", "ex", "100"}) == "+OK");
  // ...so applying the conditional deletes removes a only.
  db.now = kT0 + 170;
  for (const auto& key : due) {
    std::vector<std::string> w{"expire-check", key};
    raft::Call call{db.store, w, db.now, nullptr};
    call.check_ttl(key);
  }
  CHECK(db({"exists", "a"}) == "0");
  CHECK(db.store.size() == 1);
  CHECK(db({"get", "b"}) == "'3'");
  CHECK(db.store.due(db.now, 10).empty());
}

TEST_CASE("two stores fed the same commands and timestamps write the same snapshot, one of them restored from "
          "its snapshot halfway",
          "[store][commands]") {
  // Two replicas of one log: `two` installs its own snapshot halfway (as a follower that was
  // sent one, or a restart), so its store is built from the snapshot text and not by the
  // commands before it. Both apply the rest, with the leader's background expiry in between
  // (the conditional deletes of the keys due on whichever of them leads), and must answer
  // every command alike and end with the same snapshot.
  Db one, two;
  std::mt19937_64 rng(12345);
  const std::vector<std::vector<std::string>> templates = {
      {"set", "K", "V"}, {"set", "K", "V", "px", "N"}, {"append", "K", "V"},
      {"incr", "K"}, {"del", "K"}, {"expire", "K", "S"}, {"persist", "K"},
      {"hset", "K", "F", "V"}, {"hdel", "K", "F"}, {"hincrby", "K", "F", "N"},
      {"lpush", "K", "V"}, {"rpush", "K", "V", "V"}, {"lpop", "K"}, {"rpop", "K", "N"},
      {"lrem", "K", "S", "V"}, {"ltrim", "K", "S", "S"}, {"lset", "K", "S", "V"},
      {"mset", "K", "V", "K", "V"}, {"getset", "K", "V"}, {"setnx", "K", "V"},
      {"set", "K", "V", "keepttl"}, {"pexpire", "K", "N"},
      // reads, whose answers depend on the expiry index as well as on the data
      {"dbsize"}, {"keys", "*"}, {"pttl", "K"}, {"exists", "K", "K"}};
  constexpr int kCommands = 20000;
  int restored = 0, expired_in_rounds = 0;
  for (int i = 0; i < kCommands; ++i) {
    if (i == kCommands / 2) {
      std::string text;
      raft::SnapshotMeta meta;
      meta.index = static_cast<std::uint64_t>(i);
      meta.timestamp_ms = two.now;
      two.store.write_snapshot(text, meta);
      Store from_snapshot;
      raft::SnapshotMeta meta_back;
      std::string error;
      REQUIRE(Store::read_snapshot(text, from_snapshot, meta_back, error));
      REQUIRE(from_snapshot.size() > 0);
      two.store = std::move(from_snapshot);
      ++restored;
    }
    if (i % 50 == 49) {
      // A background expiry round: the leader (one, then two, in turn) proposes its due keys;
      // both apply the conditional deletes at the entry's timestamp.
      const Store& leader = (i / 50) % 2 == 0 ? one.store : two.store;
      for (const std::string& key : leader.due(one.now, 8)) {
        INFO("expiry of " << key << " at command " << i);
        const bool deleted = one.store.check_ttl(key, one.now);
        REQUIRE(two.store.check_ttl(key, two.now) == deleted);
        expired_in_rounds += deleted ? 1 : 0;
      }
    }
    std::vector<std::string> w = templates[rng() % templates.size()];
    for (auto& word : w) {
      if (word == "K") word = "key" + std::to_string(rng() % 40);
      else if (word == "V") word = std::string(1, static_cast<char>('a' + rng() % 3));
      else if (word == "F") word = "f" + std::to_string(rng() % 5);
      else if (word == "N") word = std::to_string(rng() % 500);
      else if (word == "S") word = std::to_string(static_cast<int>(rng() % 7) - 3);
    }
    const std::int64_t step = static_cast<std::int64_t>(rng() % 20);
    one.now += step;
    two.now += step;
    INFO("command " << i << ": " << w[0]);
    REQUIRE(one(w) == two(w));
  }
  CHECK(restored == 1);
  CHECK(expired_in_rounds > 0);
  std::string a, b;
  one.store.write_snapshot(a, {});
  two.store.write_snapshot(b, {});
  CHECK(a == b);
  CHECK(one.store == two.store);
  CHECK(one.store.size() > 0);
  CHECK(one.store.due(one.now + 1000, 1000) == two.store.due(two.now + 1000, 1000));
  CHECK(one.store.live_size(one.now) == two.store.live_size(two.now));

  // A third store with the same contents, inserted in the opposite key order: the snapshot
  // depends on the contents only.
  std::vector<std::tuple<std::string, Store::Object, std::optional<std::int64_t>>> contents;
  one.store.for_each([&](const std::string& key, const Store::Object& o, std::optional<std::int64_t> d) {
    contents.emplace_back(key, o, d);
  });
  Store three;
  for (auto it = contents.rbegin(); it != contents.rend(); ++it) {
    const auto& [key, object, deadline] = *it;
    three.put(key, object.kind) = object;
    if (deadline) three.set_deadline(key, *deadline);
  }
  std::string c;
  three.write_snapshot(c, {});
  CHECK(c == a);
}

TEST_CASE("built-in commands are marked as such: the runtime applies them without an undo record",
          "[store][commands]") {
  raft::CommandTable t;
  raft::add_builtin_commands(t);
  for (const auto& [name, cmd] : t) {
    INFO(name);
    CHECK(raft::detail::is_builtin(cmd));
  }
  raft::Command mine;
  mine.fn = [](raft::Call&) { return raft::Reply::ok(); };
  mine.flags = "we";
  CHECK_FALSE(raft::detail::is_builtin(mine));
}

TEST_CASE("command limits: the words, each argument and the whole command as a log entry holds it",
          "[store][commands]") {
  using raft::detail::command_limit_error;
  CHECK(command_limit_error({"set", "k", "v"}).empty());
  // The defaults are the documented constants.
  std::vector<std::string> words(raft::detail::kMaxCommandWords, "k");
  CHECK(command_limit_error(words).empty());
  words.push_back("k");
  CHECK_THAT(command_limit_error(words), Catch::StartsWith("ERR too many arguments: a write may have at most 1048575"));

  // Each limit, with small ones; the size counted is exactly the entry's (RESP-encoded) size.
  raft::detail::CommandLimits small;
  small.max_words = 3;
  small.max_word_bytes = 5;
  const std::vector<std::string> fits{"set", "key", "12345"};
  std::string encoded;
  resp::write_command(encoded, fits);
  small.max_bytes = encoded.size();
  CHECK(command_limit_error(fits, small).empty());
  CHECK_THAT(command_limit_error({"set", "key", "12345", "x"}, small), Catch::StartsWith("ERR too many arguments"));
  CHECK_THAT(command_limit_error({"set", "key", "123456"}, small),
             Catch::StartsWith("ERR an argument of 6 bytes is longer than proto-max-bulk-len (5)"));
  small.max_bytes = encoded.size() - 1;
  CHECK(command_limit_error(fits, small) == "ERR the write is " + std::to_string(encoded.size()) +
                                               " bytes; the limit for one command is " +
                                               std::to_string(encoded.size() - 1) + "; it was not run");
}

TEST_CASE("zincrby and zadd incr: a new member's reply is the increment as given, -0 too; the set keeps 0, as Redis "
          "(the differential test found it)",
          "[store][commands]") {
  Db d;
  CHECK(d({"zincrby", "z", "-0", "a"}) == ",-0");
  CHECK(d({"zscore", "z", "a"}) == ",0");
  CHECK(d({"zincrby", "z", "-0", "a"}) == ",0");  // an existing member: 0 + -0 is 0
  CHECK(d({"zadd", "z", "incr", "-0", "b"}) == ",-0");
  CHECK(d({"zscore", "z", "b"}) == ",0");
}

TEST_CASE("spop with a count of 0 on a set answers an empty set (RESP3 ~0), as redis-server 7.0 (the differential "
          "test found it)",
          "[store][commands]") {
  Db d;
  CHECK(d({"sadd", "s", "a"}) == "1");
  CHECK(d({"spop", "s", "0"}) == "~[]");
  CHECK(d({"spop", "nokey", "0"}) == "~[]");
  CHECK(d({"scard", "s"}) == "1");
}

TEST_CASE("incrbyfloat and hincrbyfloat: a value with a NUL byte inside is not a float, as Redis (the differential "
          "test found it: SETRANGE pads with NULs)",
          "[store][commands]") {
  Db d;
  CHECK(d({"set", "k", std::string("1e3\0\0c", 6)}) == "+OK");
  CHECK(d({"incrbyfloat", "k", "1"}) == "-ERR value is not a valid float");
  CHECK(d({"incrbyfloat", "n", std::string("1\0", 2)}) == "-ERR value is not a valid float");
  CHECK(d({"hset", "h", "f", std::string("2\0", 2)}) == "1");
  CHECK(d({"hincrbyfloat", "h", "f", "1"}) == "-ERR hash value is not a float");
  CHECK(d({"incrbyfloat", "ok", "1.5"}) == "'1.5'");
}
