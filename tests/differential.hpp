// The differential test's parts (tests/test_differential.cpp): a generator per command, the
// ways two replies may be compared, and the table of the differences from Redis that are
// intended. The test sends what the generators make to a real redis-server and to a cluster
// and compares the replies.
//
// Adding a command is one entry in command_specs(): its name, how its replies compare, and a
// function that makes one call of it from a Gen (the seeded source of keys, values, numbers,
// TTLs and bad arguments every generator shares):
//
//   {"strlen", Compare::Exact, [](Gen& g) { return Words{"STRLEN", g.key()}; }},
//
// A command the node has that cannot be compared with Redis 7.0 (newer than it) goes into
// not_compared() with its reason instead; the test fails for a command in neither.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "resp.hpp"
#include "support.hpp"

namespace differential {

using Words = std::vector<std::string>;

// ---- the source of arguments -------------------------------------------------------------

/// Everything a generator draws from: a seeded generator and small pools, so that commands
/// collide on keys (and on types: WRONGTYPE) and on fields and list elements.
class Gen {
 public:
  /// `epoch_s`: a wall-clock second fixed for the run, for absolute deadlines (EXPIREAT).
  Gen(std::uint64_t seed, std::int64_t epoch_s) : rng_(seed), epoch_s_(epoch_s) {}

  /// The running number of the call being made (set by the test): relative TTLs depend on it
  /// (see ttl_seconds).
  std::int64_t op = 0;

  std::mt19937_64& rng() { return rng_; }
  /// 0 .. n-1.
  int below(int n) { return static_cast<int>(rng_() % static_cast<std::uint64_t>(n)); }
  /// lo .. hi.
  int between(int lo, int hi) { return lo + below(hi - lo + 1); }
  bool chance(int percent) { return below(100) < percent; }
  /// A copy (`from` is often a temporary list).
  std::string pick(const std::vector<std::string>& from) {
    return from[static_cast<std::size_t>(below(static_cast<int>(from.size())))];
  }

  /// The key space: small, so every command meets keys of every type; the empty key too (KEYS
  /// * alone matches it).
  static const std::vector<std::string>& all_keys() {
    static const std::vector<std::string> keys = {"k0", "k1", "k2", "k3", "k4", "k5", ""};
    return keys;
  }
  std::string key() { return pick(all_keys()); }
  /// `min`..`max` keys, repeats allowed.
  Words keys(int min, int max) {
    Words out;
    for (int i = between(min, max); i > 0; --i) out.push_back(key());
    return out;
  }
  std::string field() { return pick({"f0", "f1", "f2", "f3", ""}); }
  /// Values: plain, empty, numbers (which INCR may meet later), numbers INCR refuses.
  std::string value() {
    return pick({"v", "a", "b", "c", "", "hello world", "0", "1", "10", "-7", "42",
                 "9223372036854775807", "-9223372036854775808", "9223372036854775808", "1.5", " 1", "1 ",
                 "+1", "007", "-0", "0x1f", "1e3", std::string("a\0b", 3), "\xff\xfe"});
  }
  /// An element of a list or a member of a set: few, so searches find them.
  std::string element() { return pick({"a", "b", "c", "1", ""}); }
  /// A cursor that is not one (only "0" and these are sent: see intended_differences).
  /// A blocking command's timeout: short (Redis's own wait is up to 100 ms) or one it refuses.
  std::string block_timeout() {
    if (chance(25)) return pick({"0.01", "0.001", "1e-9"});
    return pick({"x", "-1", "-0.5", "inf", "nan", "", " 1", "1e16"});
  }
  std::string bad_cursor() { return pick({"x", "", " 1", "1.5", "99999999999999999999", "0x1"}); }
  /// An increment for INCRBYFLOAT: integers, fractions, exponents, and what is not a float.
  std::string pick_float() {
    if (chance(50)) return std::to_string(between(-5, 10));
    return pick({"0.1", "-1.5", "1e3", "3.0e-2", "1e308", "-1e308", "inf", "+inf", "nan", "x", "", " 1", "1.5 ",
                 "0x10", "1e400", "5.0000000000000001"});
  }
  /// A sorted set's score: integers, fractions, infinities, and what is not a float.
  std::string score() {
    if (chance(70)) return std::to_string(between(-3, 5));
    return pick({"1.5", "-0.25", "1e3", "+inf", "-inf", "inf", "0", "-0", "nan", "x", "", " 1", "1e400", "0x10",
                 "3.0000000000000001"});
  }
  /// A score range's end (ZCOUNT, ZRANGEBYSCORE): inclusive, exclusive, infinite, or bad.
  std::string score_bound() {
    if (chance(60)) return std::to_string(between(-3, 5));
    return pick({"(1", "(0", "-inf", "+inf", "(-inf", "(+inf", "1.5", "(2.5", "x", "((1", "", "inf"});
  }
  /// The key whose sorted set has every score 0 (ZADD and ZINCRBY give it no other), where a
  /// lexicographic range is defined; BYLEX on a set of several scores answers what Redis
  /// leaves unspecified (see intended_differences).
  static const char* lex_key() { return "k5"; }
  /// A lexicographic range's end (ZRANGE BYLEX).
  std::string lex_bound() { return pick({"-", "+", "[a", "(a", "[b", "(c", "[", "a", "[1", "(", "(\xff"}); }
  /// An integer argument: mostly small, sometimes at or past the limits, sometimes not one.
  std::string integer() {
    if (chance(75)) return std::to_string(between(-5, 10));
    return pick({"9223372036854775807", "-9223372036854775808", "9223372036854775808",
                 "-9223372036854775809", "1.5", "x", "", " 1", "1 ", "+1", "007", "-0", "0x10", "1e2",
                 "99999999999999999999"});
  }
  /// An index into a list (LINDEX, LRANGE, LSET): near both ends, and bad ones.
  std::string index() {
    if (chance(85)) return std::to_string(between(-6, 6));
    return pick({"x", "1.0", "9223372036854775807", "-9223372036854775808", "99999999999999999999", ""});
  }

  // Deadlines. The same command reaches Redis and the cluster a little apart, so a relative TTL
  // gives the two deadlines some milliseconds apart. Nothing here may depend on that: every TTL
  // is either long (years: no key expires during a run) or already past (the key goes at
  // once), and two relative TTLs are never so close that EXPIRE ... GT|LT could compare them
  // differently on the two servers: a TTL is k * 1e8 s (k = 1..5) minus a minute per call made
  // before it, so of two calls with the same k the later one sets the earlier deadline (as long
  // as no call takes a minute), and different k are years apart (for runs of up to 800000
  // calls). Absolute deadlines are epoch + k * 1e8 + 5e7 s: as far from every relative one,
  // and equal (not merely close) when equal.
  /// A relative TTL in seconds (EXPIRE, SET EX), sometimes past or invalid.
  std::string ttl_seconds() {
    const int roll = below(100);
    if (roll < 75) return std::to_string(long_ttl_s());
    if (roll < 85) return pick({"0", "-1", "-100"});
    return bad_time();
  }
  std::string ttl_ms() {
    const int roll = below(100);
    if (roll < 75) return std::to_string(long_ttl_s() * 1000);
    if (roll < 85) return pick({"0", "-1", "-100000"});
    return bad_time();
  }
  /// An absolute deadline in seconds (EXPIREAT, SET EXAT).
  std::string unix_seconds() {
    const int roll = below(100);
    if (roll < 70) return std::to_string(future_s());
    if (roll < 85) return pick({"1", "0", "-1", std::to_string(epoch_s_ - 1000)});
    return bad_time();
  }
  std::string unix_ms() {
    const int roll = below(100);
    if (roll < 70) return std::to_string(future_s() * 1000);
    if (roll < 85) return pick({"1", "0", "-1", std::to_string((epoch_s_ - 1000) * 1000)});
    return bad_time();
  }

  /// One of the EXPIRE options, sometimes a bad or conflicting set.
  Words expire_options() {
    Words out;
    for (int i = pick_weighted({60, 30, 10}); i > 0; --i)
      out.push_back(pick({"NX", "XX", "GT", "LT", "nx", "gt", "BAD"}));
    return out;
  }

  /// 0 .. weights.size()-1, in proportion to the weights.
  int pick_weighted(const std::vector<int>& weights) {
    int total = 0;
    for (int w : weights) total += w;
    int roll = below(total);
    for (std::size_t i = 0; i < weights.size(); ++i) {
      if (roll < weights[i]) return static_cast<int>(i);
      roll -= weights[i];
    }
    return 0;
  }

 private:
  std::int64_t long_ttl_s() { return between(1, 5) * std::int64_t{100000000} - 60 * op; }
  std::int64_t future_s() { return epoch_s_ + between(1, 5) * std::int64_t{100000000} + 50000000; }
  std::string bad_time() {
    return pick({"x", "1.5", "", "9223372036854775807", "-9223372036854775808", "9223372036854775", "99999999999999999999"});
  }
  std::mt19937_64 rng_;
  std::int64_t epoch_s_;
};

// ---- comparing replies ----------------------------------------------------------------------

enum class Compare {
  Exact,          // the same RESP type and value, element for element
  Unordered,      // an array whose order Redis leaves unspecified: the same elements as a multiset
  UnorderedPairs, // field/value pairs (flat array in RESP2, map in RESP3) in any order
  Ttl,            // an integer: equal when negative (no key, no TTL), else within kTtlToleranceS
  PttlMs,         // the same in milliseconds
  Hello,          // HELLO's map: the protocol only (see intended_differences)
  Shape,          // a random choice (SRANDMEMBER): the same type and number of elements only
};

/// How far apart two TTLs may be: the time between the two sends, and rounding.
constexpr std::int64_t kTtlToleranceS = 5;

/// The reply as text in the comparison's terms; two replies agree when the texts are equal
/// (for TTLs, see agree()).
inline std::string canonical(Compare how, const resp::Value& v) {
  using test_support::typed;
  if (v.type == resp::Type::Error) return typed(v);
  switch (how) {
    case Compare::Exact:
    case Compare::Ttl:
    case Compare::PttlMs:
      return typed(v);
    case Compare::Unordered: {
      if (!v.is_aggregate()) return typed(v);
      std::vector<std::string> items;
      for (const resp::Value& e : v.elements) items.push_back(typed(e));
      std::sort(items.begin(), items.end());
      std::string out = "unordered" + std::to_string(static_cast<int>(v.type)) + "[";
      for (const std::string& s : items) out += s + ", ";
      return out + "]";
    }
    case Compare::UnorderedPairs: {
      if (!v.is_aggregate()) return typed(v);
      std::vector<std::string> pairs;
      for (std::size_t i = 0; i + 1 < v.elements.size(); i += 2)
        pairs.push_back(typed(v.elements[i]) + ": " + typed(v.elements[i + 1]));
      std::sort(pairs.begin(), pairs.end());
      std::string out = "pairs" + std::to_string(static_cast<int>(v.type)) + "{";
      for (const std::string& s : pairs) out += s + ", ";
      return out + "}";
    }
    case Compare::Shape:
      return "shape " + std::to_string(static_cast<int>(v.type)) + " of " + std::to_string(v.elements.size());
    case Compare::Hello:
      for (std::size_t i = 0; i + 1 < v.elements.size(); i += 2)
        if (v.elements[i].str == "proto") return "hello proto " + typed(v.elements[i + 1]);
      return "hello without proto: " + typed(v);
  }
  return typed(v);
}

/// Whether Redis's reply and ours agree under `how`.
inline bool agree(Compare how, const resp::Value& redis, const resp::Value& ours) {
  if ((how == Compare::Ttl || how == Compare::PttlMs) && redis.type == resp::Type::Integer &&
      ours.type == resp::Type::Integer && redis.num >= 0 && ours.num >= 0) {
    const std::int64_t tolerance = how == Compare::Ttl ? kTtlToleranceS : kTtlToleranceS * 1000;
    return redis.num - ours.num <= tolerance && ours.num - redis.num <= tolerance;
  }
  return canonical(how, redis) == canonical(how, ours);
}

// ---- the commands -----------------------------------------------------------------------------

struct CommandSpec {
  const char* name;  // lower case, as the node's command table has it
  Compare compare;
  std::function<Words(Gen&)> make;
  /// Whether the test may drop the last argument or add one (the wrong number of arguments).
  bool mutate_arity = true;
  /// For SCAN-like commands, where the cursor is among the words (SCAN: 1, HSCAN: 2); 0 for
  /// the others. The test runs the whole iteration from the generator's cursor on each server
  /// and compares the union of what each returned (Redis promises every element present for
  /// the whole iteration at least once, in no order): give such a command Compare::Unordered,
  /// or Compare::UnorderedPairs when it returns field/value pairs (HSCAN, ZSCAN).
  std::size_t cursor_arg = 0;
};

namespace gen_detail {

inline Words concat(Words a, const Words& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

/// SET's options: a random subset in random order, sometimes conflicting or unknown.
inline Words set_options(Gen& g) {
  Words out;
  for (int i = g.pick_weighted({35, 35, 20, 10}); i > 0; --i) {
    switch (g.below(10)) {
      case 0: out.push_back("NX"); break;
      case 1: out.push_back("XX"); break;
      case 2: out.push_back("GET"); break;
      case 3: out.push_back("KEEPTTL"); break;
      case 4: out.insert(out.end(), {"EX", g.ttl_seconds()}); break;
      case 5: out.insert(out.end(), {"PX", g.ttl_ms()}); break;
      case 6: out.insert(out.end(), {"EXAT", g.unix_seconds()}); break;
      case 7: out.insert(out.end(), {"PXAT", g.unix_ms()}); break;
      case 8: out.push_back(g.pick({"ex", "px", "get", "nx"})); break;  // lower case, or EX without its time
      default: out.push_back(g.pick({"BAD", "EXPIRE"})); break;  // not IFEQ: see not_compared
    }
  }
  return out;
}

inline Words field_values(Gen& g, int min, int max) {
  Words out;
  for (int i = g.between(min, max); i > 0; --i) out.insert(out.end(), {g.field(), g.value()});
  return out;
}

inline Words fields(Gen& g, int min, int max) {
  Words out;
  for (int i = g.between(min, max); i > 0; --i) out.push_back(g.field());
  return out;
}

inline Words elements(Gen& g, int min, int max) {
  Words out;
  for (int i = g.chance(5) ? 20 : g.between(min, max); i > 0; --i) out.push_back(g.element());
  return out;
}

/// `min`..`max` keys after a first key (the destination of SINTERSTORE ...).
inline Words keys_after(Gen& g, std::string first, int min, int max) {
  return concat({std::move(first)}, g.keys(min, max));
}

/// ZADD's options: a random subset in random order, sometimes conflicting.
inline Words zadd_options(Gen& g) {
  Words out;
  for (int i = g.pick_weighted({50, 30, 15, 5}); i > 0; --i)
    out.push_back(g.pick({"NX", "XX", "GT", "LT", "CH", "INCR", "ch", "BAD"}));
  return out;
}

/// Score-member pairs for `key`: the scores of Gen::lex_key() are all 0.
inline Words score_members(Gen& g, const std::string& key, int min, int max) {
  Words out;
  for (int i = g.between(min, max); i > 0; --i)
    out.insert(out.end(), {key == Gen::lex_key() ? "0" : g.score(), g.element()});
  return out;
}

/// LIMIT offset count, sometimes; WITHSCORES, sometimes (in a random order).
inline Words range_tail(Gen& g, bool withscores_allowed) {
  Words out;
  if (g.chance(30)) out.insert(out.end(), {"LIMIT", g.integer(), g.integer()});
  if (withscores_allowed && g.chance(40)) out.insert(g.chance(50) ? out.begin() : out.end(), "WITHSCORES");
  return out;
}

inline Words expire_call(Gen& g, const char* name, std::string when) {
  return concat({name, g.key(), std::move(when)}, g.expire_options());
}

}  // namespace gen_detail

/// Every command the differential test sends, one entry each (see the top of this file).
inline const std::vector<CommandSpec>& command_specs() {
  using namespace gen_detail;
  using C = Compare;
  static const std::vector<CommandSpec> specs = {
      // strings
      {"get", C::Exact, [](Gen& g) { return Words{"GET", g.key()}; }},
      {"set", C::Exact, [](Gen& g) { return concat({"SET", g.key(), g.value()}, set_options(g)); }},
      {"setnx", C::Exact, [](Gen& g) { return Words{"SETNX", g.key(), g.value()}; }},
      {"getset", C::Exact, [](Gen& g) { return Words{"GETSET", g.key(), g.value()}; }},
      {"mget", C::Exact, [](Gen& g) { return concat({"MGET"}, g.keys(1, 4)); }},
      {"mset", C::Exact,
       [](Gen& g) {
         Words w{"MSET"};
         for (int i = g.between(1, 3); i > 0; --i) w.insert(w.end(), {g.key(), g.value()});
         return w;
       }},
      {"incr", C::Exact, [](Gen& g) { return Words{"INCR", g.key()}; }},
      {"decr", C::Exact, [](Gen& g) { return Words{"DECR", g.key()}; }},
      {"incrby", C::Exact, [](Gen& g) { return Words{"INCRBY", g.key(), g.integer()}; }},
      {"decrby", C::Exact, [](Gen& g) { return Words{"DECRBY", g.key(), g.integer()}; }},
      {"append", C::Exact, [](Gen& g) { return Words{"APPEND", g.key(), g.value()}; }},
      {"strlen", C::Exact, [](Gen& g) { return Words{"STRLEN", g.key()}; }},
      {"getex", C::Exact,
       [](Gen& g) {
         switch (g.below(7)) {
           case 0: return Words{"GETEX", g.key()};
           case 1: return Words{"GETEX", g.key(), "EX", g.ttl_seconds()};
           case 2: return Words{"GETEX", g.key(), "PX", g.ttl_ms()};
           case 3: return Words{"GETEX", g.key(), "EXAT", g.unix_seconds()};
           case 4: return Words{"GETEX", g.key(), "PXAT", g.unix_ms()};
           case 5: return Words{"GETEX", g.key(), "PERSIST"};
           default: return Words{"GETEX", g.key(), g.pick({"EX", "KEEPTTL", "BAD", "persist"})};
         }
       }},
      {"getdel", C::Exact, [](Gen& g) { return Words{"GETDEL", g.key()}; }},
      {"setex", C::Exact, [](Gen& g) { return Words{"SETEX", g.key(), g.ttl_seconds(), g.value()}; }},
      {"psetex", C::Exact, [](Gen& g) { return Words{"PSETEX", g.key(), g.ttl_ms(), g.value()}; }},
      {"msetnx", C::Exact,
       [](Gen& g) {
         Words w{"MSETNX"};
         for (int i = g.between(1, 3); i > 0; --i) w.insert(w.end(), {g.key(), g.value()});
         return w;
       }},
      {"getrange", C::Exact, [](Gen& g) { return Words{"GETRANGE", g.key(), g.index(), g.index()}; }},
      {"setrange", C::Exact, [](Gen& g) { return Words{"SETRANGE", g.key(), g.index(), g.value()}; }},
      {"incrbyfloat", C::Exact, [](Gen& g) { return Words{"INCRBYFLOAT", g.key(), g.pick_float()}; }},
      // keys and expiry
      {"del", C::Exact, [](Gen& g) { return concat({"DEL"}, g.keys(1, 3)); }},
      {"exists", C::Exact, [](Gen& g) { return concat({"EXISTS"}, g.keys(1, 4)); }},
      {"type", C::Exact, [](Gen& g) { return Words{"TYPE", g.key()}; }},
      {"dbsize", C::Exact, [](Gen&) { return Words{"DBSIZE"}; }},
      {"keys", C::Unordered,
       [](Gen& g) { return Words{"KEYS", g.pick({"*", "k*", "k[0-2]", "?1", "*[^3]", "k", "[", "\\k0", "x*"})}; }},
      {"expire", C::Exact, [](Gen& g) { return expire_call(g, "EXPIRE", g.ttl_seconds()); }},
      {"pexpire", C::Exact, [](Gen& g) { return expire_call(g, "PEXPIRE", g.ttl_ms()); }},
      {"expireat", C::Exact, [](Gen& g) { return expire_call(g, "EXPIREAT", g.unix_seconds()); }},
      {"pexpireat", C::Exact, [](Gen& g) { return expire_call(g, "PEXPIREAT", g.unix_ms()); }},
      {"ttl", C::Ttl, [](Gen& g) { return Words{"TTL", g.key()}; }},
      {"pttl", C::PttlMs, [](Gen& g) { return Words{"PTTL", g.key()}; }},
      {"persist", C::Exact, [](Gen& g) { return Words{"PERSIST", g.key()}; }},
      {"expiretime", C::Ttl, [](Gen& g) { return Words{"EXPIRETIME", g.key()}; }},
      {"pexpiretime", C::PttlMs, [](Gen& g) { return Words{"PEXPIRETIME", g.key()}; }},
      {"rename", C::Exact, [](Gen& g) { return Words{"RENAME", g.key(), g.key()}; }},
      {"renamenx", C::Exact, [](Gen& g) { return Words{"RENAMENX", g.key(), g.key()}; }},
      {"copy", C::Exact,
       [](Gen& g) {
         Words w{"COPY", g.key(), g.key()};
         if (g.chance(40)) w.push_back("REPLACE");
         if (g.chance(15)) w.insert(w.end(), {"DB", g.pick({"0", "1", "x"})});
         if (g.chance(5)) w.push_back("BAD");
         return w;
       }},
      {"unlink", C::Exact, [](Gen& g) { return concat({"UNLINK"}, g.keys(1, 3)); }},
      {"touch", C::Exact, [](Gen& g) { return concat({"TOUCH"}, g.keys(1, 3)); }},
      {"randomkey", C::Shape, [](Gen&) { return Words{"RANDOMKEY"}; }},
      {"flushall", C::Exact,
       [](Gen& g) { return g.chance(70) ? Words{"FLUSHALL"} : Words{"FLUSHALL", g.pick({"SYNC", "ASYNC", "async", "BAD"})}; }},
      {"flushdb", C::Exact,
       [](Gen& g) { return g.chance(70) ? Words{"FLUSHDB"} : Words{"FLUSHDB", g.pick({"SYNC", "ASYNC", "BAD"})}; }},
      {"scan", C::Unordered,
       [](Gen& g) {
         Words w{"SCAN", g.chance(95) ? "0" : g.bad_cursor()};
         if (g.chance(50)) w.insert(w.end(), {"MATCH", g.pick({"*", "k*", "k[0-2]", "?1", "x*", ""})});
         if (g.chance(50)) w.insert(w.end(), {"COUNT", g.pick({"1", "2", "10", "0", "-1", "x"})});
         if (g.chance(30)) w.insert(w.end(), {"TYPE", g.pick({"string", "hash", "list", "set", "zset", "nosuch", "STRING"})});
         if (g.chance(5)) w.push_back("BAD");
         return w;
       },
       true, 1},
      // hashes
      {"hset", C::Exact, [](Gen& g) { return concat({"HSET", g.key()}, field_values(g, 1, 3)); }},
      {"hmset", C::Exact, [](Gen& g) { return concat({"HMSET", g.key()}, field_values(g, 1, 3)); }},
      {"hget", C::Exact, [](Gen& g) { return Words{"HGET", g.key(), g.field()}; }},
      {"hdel", C::Exact, [](Gen& g) { return concat({"HDEL", g.key()}, fields(g, 1, 3)); }},
      {"hlen", C::Exact, [](Gen& g) { return Words{"HLEN", g.key()}; }},
      {"hgetall", C::UnorderedPairs, [](Gen& g) { return Words{"HGETALL", g.key()}; }},
      {"hexists", C::Exact, [](Gen& g) { return Words{"HEXISTS", g.key(), g.field()}; }},
      {"hkeys", C::Unordered, [](Gen& g) { return Words{"HKEYS", g.key()}; }},
      {"hvals", C::Unordered, [](Gen& g) { return Words{"HVALS", g.key()}; }},
      {"hmget", C::Exact, [](Gen& g) { return concat({"HMGET", g.key()}, fields(g, 1, 3)); }},
      {"hincrby", C::Exact, [](Gen& g) { return Words{"HINCRBY", g.key(), g.field(), g.integer()}; }},
      {"hincrbyfloat", C::Exact, [](Gen& g) { return Words{"HINCRBYFLOAT", g.key(), g.field(), g.pick_float()}; }},
      {"hsetnx", C::Exact, [](Gen& g) { return Words{"HSETNX", g.key(), g.field(), g.value()}; }},
      {"hstrlen", C::Exact, [](Gen& g) { return Words{"HSTRLEN", g.key(), g.field()}; }},
      {"hrandfield", C::Shape,
       [](Gen& g) {
         if (g.chance(20)) return Words{"HRANDFIELD", g.key()};
         Words w{"HRANDFIELD", g.key(), g.pick({"1000", "0", "-3", "2", "x"})};
         if (g.chance(40)) w.push_back(g.pick({"WITHVALUES", "withvalues", "BAD"}));
         return w;
       }},
      {"hscan", C::UnorderedPairs,
       [](Gen& g) {
         Words w{"HSCAN", g.key(), g.chance(95) ? "0" : g.bad_cursor()};
         if (g.chance(40)) w.insert(w.end(), {"MATCH", g.pick({"*", "f*", "f[01]", ""})});
         if (g.chance(40)) w.insert(w.end(), {"COUNT", g.pick({"1", "3", "0", "x"})});
         return w;
       },
       true, 2},
      // lists
      {"lpush", C::Exact, [](Gen& g) { return concat({"LPUSH", g.key()}, elements(g, 1, 3)); }},
      {"rpush", C::Exact, [](Gen& g) { return concat({"RPUSH", g.key()}, elements(g, 1, 3)); }},
      {"lpop", C::Exact,
       [](Gen& g) { return g.chance(60) ? Words{"LPOP", g.key()} : Words{"LPOP", g.key(), g.integer()}; }},
      {"rpop", C::Exact,
       [](Gen& g) { return g.chance(60) ? Words{"RPOP", g.key()} : Words{"RPOP", g.key(), g.integer()}; }},
      {"lrange", C::Exact, [](Gen& g) { return Words{"LRANGE", g.key(), g.index(), g.index()}; }},
      {"lindex", C::Exact, [](Gen& g) { return Words{"LINDEX", g.key(), g.index()}; }},
      {"llen", C::Exact, [](Gen& g) { return Words{"LLEN", g.key()}; }},
      {"lset", C::Exact, [](Gen& g) { return Words{"LSET", g.key(), g.index(), g.element()}; }},
      {"lrem", C::Exact, [](Gen& g) { return Words{"LREM", g.key(), g.index(), g.element()}; }},
      {"ltrim", C::Exact, [](Gen& g) { return Words{"LTRIM", g.key(), g.index(), g.index()}; }},
      {"lpushx", C::Exact, [](Gen& g) { return concat({"LPUSHX", g.key()}, elements(g, 1, 3)); }},
      {"rpushx", C::Exact, [](Gen& g) { return concat({"RPUSHX", g.key()}, elements(g, 1, 3)); }},
      {"lpos", C::Exact,
       [](Gen& g) {
         Words w{"LPOS", g.key(), g.element()};
         if (g.chance(40)) w.insert(w.end(), {"RANK", g.pick({"1", "-1", "2", "-2", "0", "x", "-9223372036854775808"})});
         if (g.chance(40)) w.insert(w.end(), {"COUNT", g.pick({"0", "1", "2", "-1", "x"})});
         if (g.chance(25)) w.insert(w.end(), {"MAXLEN", g.pick({"0", "1", "3", "-1", "x"})});
         if (g.chance(5)) w.push_back("BAD");
         return w;
       }},
      {"linsert", C::Exact,
       [](Gen& g) { return Words{"LINSERT", g.key(), g.pick({"BEFORE", "AFTER", "after", "MIDDLE"}), g.element(), g.element()}; }},
      {"lmove", C::Exact,
       [](Gen& g) {
         return Words{"LMOVE", g.key(), g.key(), g.pick({"LEFT", "RIGHT", "left", "UP"}), g.pick({"LEFT", "RIGHT"})};
       }},
      {"rpoplpush", C::Exact, [](Gen& g) { return Words{"RPOPLPUSH", g.key(), g.key()}; }},
      // blocking pops: only what needs no waiting (data there, an error) or a short timeout, never
      // 0 (for ever); the waiting itself is tests/test_blocking.cpp's
      {"blpop", C::Exact, [](Gen& g) { return concat(concat({"BLPOP"}, g.keys(1, 3)), {g.block_timeout()}); }},
      {"brpop", C::Exact, [](Gen& g) { return concat(concat({"BRPOP"}, g.keys(1, 3)), {g.block_timeout()}); }},
      {"blmove", C::Exact,
       [](Gen& g) {
         return Words{"BLMOVE", g.key(), g.key(), g.pick({"LEFT", "RIGHT", "left", "UP"}), g.pick({"LEFT", "RIGHT"}),
                      g.block_timeout()};
       }},
      {"bzpopmin", C::Exact, [](Gen& g) { return concat(concat({"BZPOPMIN"}, g.keys(1, 3)), {g.block_timeout()}); }},
      {"bzpopmax", C::Exact, [](Gen& g) { return concat(concat({"BZPOPMAX"}, g.keys(1, 3)), {g.block_timeout()}); }},
      // sets (SPOP takes a count no set reaches, and SRANDMEMBER's random picks are compared by
      // shape: see intended_differences)
      {"sadd", C::Exact, [](Gen& g) { return concat({"SADD", g.key()}, elements(g, 1, 3)); }},
      {"srem", C::Exact, [](Gen& g) { return concat({"SREM", g.key()}, elements(g, 1, 3)); }},
      {"smembers", C::Unordered, [](Gen& g) { return Words{"SMEMBERS", g.key()}; }},
      {"sismember", C::Exact, [](Gen& g) { return Words{"SISMEMBER", g.key(), g.element()}; }},
      {"smismember", C::Exact, [](Gen& g) { return concat({"SMISMEMBER", g.key()}, elements(g, 1, 3)); }},
      {"scard", C::Exact, [](Gen& g) { return Words{"SCARD", g.key()}; }},
      {"spop", C::Unordered,
       [](Gen& g) { return Words{"SPOP", g.key(), g.pick({"1000", "0", "-1", "x", "9223372036854775807"})}; },
       false},  // without its count it would take a random member
      {"srandmember", C::Shape,
       [](Gen& g) {
         return g.chance(20) ? Words{"SRANDMEMBER", g.key()}
                             : Words{"SRANDMEMBER", g.key(), g.pick({"1000", "0", "-3", "2", "-1", "x"})};
       }},
      {"sinter", C::Unordered, [](Gen& g) { return concat({"SINTER"}, g.keys(1, 3)); }},
      {"sunion", C::Unordered, [](Gen& g) { return concat({"SUNION"}, g.keys(1, 3)); }},
      {"sdiff", C::Unordered, [](Gen& g) { return concat({"SDIFF"}, g.keys(1, 3)); }},
      {"sinterstore", C::Exact, [](Gen& g) { return concat({"SINTERSTORE"}, keys_after(g, g.key(), 1, 3)); }},
      {"sunionstore", C::Exact, [](Gen& g) { return concat({"SUNIONSTORE"}, keys_after(g, g.key(), 1, 3)); }},
      {"sdiffstore", C::Exact, [](Gen& g) { return concat({"SDIFFSTORE"}, keys_after(g, g.key(), 1, 3)); }},
      {"smove", C::Exact, [](Gen& g) { return Words{"SMOVE", g.key(), g.key(), g.element()}; }},
      {"sscan", C::Unordered,
       [](Gen& g) {
         Words w{"SSCAN", g.key(), g.chance(95) ? "0" : g.bad_cursor()};
         if (g.chance(40)) w.insert(w.end(), {"MATCH", g.pick({"*", "a*", "[ab]", ""})});
         if (g.chance(40)) w.insert(w.end(), {"COUNT", g.pick({"1", "3", "0", "x"})});
         return w;
       },
       true, 2},
      // sorted sets
      {"zadd", C::Exact,
       [](Gen& g) {
         const std::string key = g.key();
         return concat(concat({"ZADD", key}, zadd_options(g)), score_members(g, key, 1, 3));
       }},
      {"zincrby", C::Exact,
       [](Gen& g) {
         const std::string key = g.key();
         return Words{"ZINCRBY", key, key == Gen::lex_key() ? "0" : g.score(), g.element()};
       }},
      {"zrem", C::Exact, [](Gen& g) { return concat({"ZREM", g.key()}, elements(g, 1, 3)); }},
      {"zscore", C::Exact, [](Gen& g) { return Words{"ZSCORE", g.key(), g.element()}; }},
      {"zmscore", C::Exact, [](Gen& g) { return concat({"ZMSCORE", g.key()}, elements(g, 1, 3)); }},
      {"zcard", C::Exact, [](Gen& g) { return Words{"ZCARD", g.key()}; }},
      {"zcount", C::Exact, [](Gen& g) { return Words{"ZCOUNT", g.key(), g.score_bound(), g.score_bound()}; }},
      {"zrank", C::Exact, [](Gen& g) { return Words{"ZRANK", g.key(), g.element()}; }},
      {"zrevrank", C::Exact, [](Gen& g) { return Words{"ZREVRANK", g.key(), g.element()}; }},
      {"zrange", C::Exact,
       [](Gen& g) {
         switch (g.below(3)) {
           case 0: return concat({"ZRANGE", g.key(), g.index(), g.index()}, concat(g.chance(30) ? Words{"REV"} : Words{}, range_tail(g, true)));
           case 1: return concat({"ZRANGE", g.key(), g.score_bound(), g.score_bound(), "BYSCORE"},
                                 concat(g.chance(30) ? Words{"REV"} : Words{}, range_tail(g, true)));
           default: return concat({"ZRANGE", g.chance(80) ? Gen::lex_key() : g.key(), g.lex_bound(), g.lex_bound(), "BYLEX"},
                                  concat(g.chance(30) ? Words{"REV"} : Words{}, range_tail(g, g.chance(10))));
         }
       }},
      {"zrangebyscore", C::Exact,
       [](Gen& g) { return concat({"ZRANGEBYSCORE", g.key(), g.score_bound(), g.score_bound()}, range_tail(g, true)); }},
      {"zrevrangebyscore", C::Exact,
       [](Gen& g) { return concat({"ZREVRANGEBYSCORE", g.key(), g.score_bound(), g.score_bound()}, range_tail(g, true)); }},
      {"zremrangebyscore", C::Exact,
       [](Gen& g) { return Words{"ZREMRANGEBYSCORE", g.key(), g.score_bound(), g.score_bound()}; }},
      {"zremrangebyrank", C::Exact, [](Gen& g) { return Words{"ZREMRANGEBYRANK", g.key(), g.index(), g.index()}; }},
      {"zscan", C::UnorderedPairs,
       [](Gen& g) {
         Words w{"ZSCAN", g.key(), g.chance(95) ? "0" : g.bad_cursor()};
         if (g.chance(40)) w.insert(w.end(), {"MATCH", g.pick({"*", "a*", "[ab]", ""})});
         if (g.chance(40)) w.insert(w.end(), {"COUNT", g.pick({"1", "3", "0", "x"})});
         return w;
       },
       true, 2},
      {"zpopmin", C::Exact,
       [](Gen& g) { return g.chance(50) ? Words{"ZPOPMIN", g.key()} : Words{"ZPOPMIN", g.key(), g.integer()}; }},
      {"zpopmax", C::Exact,
       [](Gen& g) { return g.chance(50) ? Words{"ZPOPMAX", g.key()} : Words{"ZPOPMAX", g.key(), g.integer()}; }},
      // connection (the runtime's, not the store's: see connection_commands)
      {"ping", C::Exact, [](Gen& g) { return g.chance(50) ? Words{"PING"} : Words{"PING", g.value()}; }},
      {"echo", C::Exact, [](Gen& g) { return Words{"ECHO", g.value()}; }},
      {"select", C::Exact, [](Gen& g) { return Words{"SELECT", g.pick({"0", "0", "1", "-1", "x", "16", "", "99999999999"})}; }},
      {"hello", C::Hello,
       [](Gen& g) {
         // A bad option only before SETNAME, and no arity mutation: see intended_differences.
         Words w{"HELLO"};
         if (g.chance(90)) w.push_back(g.pick({"2", "3", "3", "2", "4", "x"}));
         if (g.chance(5)) w.push_back("BAD");
         if (g.chance(5)) w.push_back("SETNAME");  // without its name
         else if (g.chance(20)) w.insert(w.end(), {"SETNAME", g.pick({"app", "worker-1"})});
         return w;
       },
       false},
      {"client", C::Exact,
       [](Gen& g) {
         switch (g.below(4)) {
           case 0: return Words{"CLIENT", "SETNAME", g.pick({"app", "worker-1", "x"})};
           case 1: return Words{"CLIENT", "GETNAME"};
           case 2: return Words{"CLIENT", "getname"};
           default: return Words{"CLIENT", g.pick({"NOSUCH", "help-me"})};
         }
       }},
      // not a command: the unknown-command error names it and its first arguments
      {"(unknown)", C::Exact,
       [](Gen& g) {
         Words w{g.pick({"NOSUCH", "nosuch", "GETT", "hello-world", "SET.X", std::string("N\0O", 3)})};
         for (int i = g.below(4); i > 0; --i) w.push_back(g.chance(90) ? g.value() : std::string(g.between(60, 140), 'x'));
         if (g.chance(10)) w.push_back("line\r\nbreak");
         return w;
       }},
  };
  return specs;
}

/// The commands handled by the runtime rather than the store's command table (src/raft/
/// 5_runtime.hpp, connection_command) that the test compares.
inline const std::vector<std::string>& connection_commands() {
  static const std::vector<std::string> names = {"ping", "echo", "select", "hello", "client", "latency"};
  return names;
}

/// Commands of the node's table that the test does not send, each with why.
struct NotCompared {
  const char* name;
  const char* reason;
};
inline const std::vector<NotCompared>& not_compared() {
  static const std::vector<NotCompared> table = {
      {"delex", "newer than redis-server 7.0 (Redis 8.4): tests from its documentation in tests/test_commands_more.cpp"},
      {"delifeq", "Valkey 9's, not in redis-server 7.0: tests from its documentation in tests/test_commands_more.cpp"},
      {"latency", "no latency monitor: every report is empty; its replies beside redis-server's in tests/test_info.cpp"},
      {"object", "OBJECT ENCODING names the Redis encoding nearest to how this store holds the value, which is not always Redis.s choice (README)"},
      // SET ... IFEQ|IFNE (Redis 8.4) likewise: the SET generator sends neither.
      // Transactions span several calls on one connection, and a generator makes one call:
      // tests/test_transactions.cpp sends scripted sequences (errors, EXECABORT, WATCH aborts
      // from a second connection) to redis-server and to a node side by side, both protocols.
      {"multi", "a sequence of calls: compared side by side in tests/test_transactions.cpp"},
      {"exec", "a sequence of calls: compared side by side in tests/test_transactions.cpp"},
      {"discard", "a sequence of calls: compared side by side in tests/test_transactions.cpp"},
      {"watch", "a sequence of calls: compared side by side in tests/test_transactions.cpp"},
      {"unwatch", "a sequence of calls: compared side by side in tests/test_transactions.cpp"},
  };
  return table;
}

// ---- differences from Redis that are intended ------------------------------------------------

/// A difference the comparison accepts, with its reason: the one table of them. `applies`
/// sees the call and both replies; an entry without it documents a comparison mode (the
/// difference never reaches the table's check).
struct IntendedDifference {
  const char* command;
  const char* what;
  const char* reason;
  std::function<bool(const Words& call, const resp::Value& redis, const resp::Value& ours)> applies;
};

inline const std::vector<IntendedDifference>& intended_differences() {
  static const std::vector<IntendedDifference> table = {
      {"hello", "only the protocol in HELLO's map is compared",
       "the map names this server (version, id, mode, role), which is not Redis's; clients read proto",
       nullptr},
      {"spop", "SPOP is sent only with a count no set reaches (or a bad one)",
       "which members SPOP without a count takes is a random choice, Redis's from its own generator, ours "
       "seeded by the log entry (the same on every node): not comparable (tests/test_sets.cpp checks ours)",
       nullptr},
      {"srandmember", "only the type and the number of elements are compared (Compare::Shape)",
       "a random choice, as for SPOP", nullptr},
      {"zrange", "BYLEX on a sorted set of several scores (any key but Gen::lex_key())",
       "Redis documents the answer as unspecified (it walks in score order and stops at the first member out "
       "of the range); here it is every member in the range",
       [](const Words& call, const resp::Value&, const resp::Value&) {
         bool bylex = false;
         for (const std::string& w : call) bylex = bylex || w == "BYLEX" || w == "bylex";
         return bylex && call.size() > 1 && call[1] != Gen::lex_key();
       }},
      {"scan", "an iteration starts only from cursor 0 (or a cursor that is not a number), here and in HSCAN, "
       "SSCAN, ZSCAN",
       "a cursor names a position in Redis's hash table and in this store's key order: one that a server did "
       "not return means nothing to it (Redis: undefined; -1 is a valid cursor to its strtoul)",
       nullptr},
      {"dbsize", "Redis counts more keys",
       "SET ... EXAT|PXAT with a deadline already past: Redis 7.0 stores the key (EXPIRE deletes it, SET does "
       "not) and DBSIZE counts it until Redis reclaims it; here the key is gone at once (GET, EXISTS, KEYS and "
       "TYPE agree on both)",
       [](const Words&, const resp::Value& redis, const resp::Value& ours) {
         return redis.type == resp::Type::Integer && ours.type == resp::Type::Integer && redis.num > ours.num;
       }},
      {"hello", "a HELLO that fails leaves the client's name as it was (not compared: the generator avoids it)",
       "Redis 7.0 sets the name of a SETNAME option met before the option that fails (HELLO 2 SETNAME a BAD: "
       "an error, and the name is a); a failed command that changes nothing is what clients expect",
       nullptr},
  };
  return table;
}

}  // namespace differential
