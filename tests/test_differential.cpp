// The differential test: the same seeded random command sequences go to a real redis-server
// (7.0) and to a 3-node cluster (in this process, on loopback), on connections to the leader
// and to both followers (which forward writes and serve linearizable reads), in RESP2 and, on
// half the connections, RESP3; every reply is compared. The generators, the comparison modes
// and the table of intended differences are in tests/differential.hpp.
//
//   RAFT_DIFF_OPS=100000 RAFT_DIFF_SEED=7 build/raft_tests '[differential]'
//
// runs longer or with another seed (the default: 100 calls of every command, seed 20261130).
// A difference prints the seed and every call since the last reset (every client's name
// cleared, and a DEL of the whole key space), so the run replays it.
#include <catch2/catch.hpp>

#include <chrono>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "differential.hpp"
#include "in_process.hpp"
#include "proc.hpp"

namespace {

using differential::CommandSpec;
using differential::Gen;
using differential::Words;

// Test numbers (the third byte of the in-process addresses): 254 and 255.

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  return std::stoull(s);
}

/// A word as redis-cli would need it typed: bare when it can be, else quoted.
std::string quoted(const std::string& word) {
  bool bare = !word.empty();
  for (unsigned char ch : word) bare = bare && ch > ' ' && ch < 0x7f && ch != '"' && ch != '\'' && ch != '\\';
  return bare ? word : raft::detail::repr(word);
}

std::string line_of(const Words& words) {
  std::string out;
  for (const std::string& w : words) out += (out.empty() ? "" : " ") + quoted(w);
  return out;
}

/// One client of each server, the same kind of connection to both: the node it reaches and
/// the protocol both speak (HELLO changes it on both sides alike).
struct ConnectionPair {
  std::string label;  // "n2 (follower)"
  proc::Client redis;
  proc::Client node;
  int protocol = 2;
};

/// A redis-server 7.0 and a 3-node cluster with a leader, side by side.
struct Servers {
  proc::TempDir dir;
  proc::RedisServer redis;  // one database, as the node has: SELECT 1 fails on both
  in_process::Cluster cluster;
  int leader = 0;
  explicit Servers(int test) : dir("differential"), redis(dir, {"--databases", "1"}), cluster(test, 3) {
    REQUIRE(redis.port() != 0);
    cluster.start();
    leader = cluster.wait_for_leader();
    REQUIRE(leader != 0);
  }
  proc::Client redis_client() { return proc::Client("127.0.0.1", redis.port()); }
  proc::Client node_client(int i) {
    const std::string address = cluster[i].address();
    return proc::Client(address.substr(0, address.find(':')), std::stoi(address.substr(address.find(':') + 1)));
  }
};

/// Sends the calls as one pipeline and reads every reply.
std::vector<resp::Value> pipeline(proc::Client& c, const std::vector<Words>& calls) {
  std::string bytes;
  for (const Words& w : calls) resp::write_command(bytes, w);
  std::vector<resp::Value> replies;
  if (!c.send(bytes)) {
    replies.assign(calls.size(), resp::Value::error("IOERR send failed: " + c.error()));
    return replies;
  }
  for (std::size_t i = 0; i < calls.size(); ++i) replies.push_back(c.read());
  return replies;
}

/// A SCAN-like call's whole iteration (spec.cursor_arg): the calls again with each cursor
/// returned until the cursor is 0; the union of the elements (of the field/value pairs with
/// `pairs`) as one array, or the first reply that is not [cursor, [elements]].
resp::Value scan_union(proc::Client& c, Words call, std::size_t cursor_arg, bool pairs) {
  std::map<std::string, std::vector<resp::Value>> seen;  // by their text: a union, in order
  for (int step = 0; step < 100000; ++step) {
    resp::Value r = c.call(call);
    if (r.type != resp::Type::Array || r.elements.size() != 2 || !r.elements[1].is_aggregate()) return r;
    const std::vector<resp::Value>& items = r.elements[1].elements;
    const std::size_t group = pairs ? 2 : 1;
    for (std::size_t i = 0; i + group <= items.size(); i += group) {
      std::vector<resp::Value> element(items.begin() + static_cast<std::ptrdiff_t>(i),
                                       items.begin() + static_cast<std::ptrdiff_t>(i + group));
      std::string text;
      for (const resp::Value& v : element) text += test_support::typed(v) + "\n";
      seen.emplace(text, std::move(element));
    }
    if (r.elements[0].str == "0") {
      resp::Value all = resp::Value::array({});
      for (auto& [text, element] : seen)
        for (resp::Value& v : element) all.elements.push_back(std::move(v));
      return all;
    }
    call[cursor_arg] = r.elements[0].str;
  }
  return resp::Value::error("HARNESS the iteration did not end within 100000 calls");
}

/// The calls on one connection: pipelined, but a SCAN-like call's whole iteration alone.
std::vector<resp::Value> run_calls(proc::Client& c, const std::vector<Words>& calls,
                                   const std::vector<const CommandSpec*>& made_by) {
  std::vector<resp::Value> replies;
  std::vector<Words> run;
  const auto flush = [&] {
    for (resp::Value& v : pipeline(c, run)) replies.push_back(std::move(v));
    run.clear();
  };
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const CommandSpec* spec = made_by[i];
    if (spec == nullptr || spec->cursor_arg == 0 || calls[i].size() <= spec->cursor_arg) {
      run.push_back(calls[i]);
      continue;
    }
    flush();
    replies.push_back(
        scan_union(c, calls[i], spec->cursor_arg, spec->compare == differential::Compare::UnorderedPairs));
  }
  flush();
  return replies;
}

}  // namespace

TEST_CASE("differential: random command sequences get the same replies from a 3-node cluster as from redis-server",
          "[redis][differential]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: the differential comparison with Redis is skipped");
    return;
  }
  const auto& specs = differential::command_specs();
  const std::uint64_t seed = env_number("RAFT_DIFF_SEED", 20261130);
  const std::uint64_t ops = env_number("RAFT_DIFF_OPS", 100 * specs.size());

  // Every command of the node has a generator or a reason why it has none.
  {
    raft::CommandTable table;
    raft::add_builtin_commands(table);
    std::set<std::string> covered;
    for (const CommandSpec& s : specs) covered.insert(s.name);
    for (const auto& n : differential::not_compared()) covered.insert(n.name);
    std::string missing;
    for (const auto& [name, command] : table)
      if (!covered.count(name)) missing += " " + name;
    for (const std::string& name : differential::connection_commands())
      if (!covered.count(name)) missing += " " + name;
    INFO("commands without a generator in tests/differential.hpp (command_specs, or not_compared with a reason):"
         << missing);
    CHECK(missing.empty());
  }

  Servers servers(254);
  const int leader = servers.leader;

  // Two connections to each node, one of them RESP3, and the same to Redis.
  std::vector<ConnectionPair> conns;
  for (int i = 1; i <= 3; ++i) {
    for (int protocol : {2, 3}) {
      ConnectionPair c;
      c.label = "c" + std::to_string(conns.size() + 1) + ": n" + std::to_string(i) + (i == leader ? " leader" : " follower");
      c.redis = servers.redis_client();
      c.node = servers.node_client(i);
      REQUIRE((c.redis.connected() && c.node.connected()));
      if (protocol == 3) {
        REQUIRE(c.redis.call({"HELLO", "3"}).type == resp::Type::Map);
        REQUIRE(c.node.call({"HELLO", "3"}).type == resp::Type::Map);
        c.protocol = 3;
      }
      conns.push_back(std::move(c));
    }
  }

  Gen g(seed, std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::system_clock::now().time_since_epoch()).count());
  std::map<std::string, std::uint64_t> counts;
  std::map<std::string, std::uint64_t> intended_seen;
  std::vector<std::string> history;  // the calls since the last reset, as the failure shows them
  std::vector<std::string> failures;
  constexpr std::size_t kMaxFailures = 10;
  const Words reset = differential::gen_detail::concat({"DEL"}, Gen::all_keys());
  std::chrono::steady_clock::duration redis_time{}, cluster_time{};
  const auto started = std::chrono::steady_clock::now();

  // Every command comes from a shuffled deck of all of them: each runs ops / n times or one more.
  std::vector<std::size_t> deck;
  const auto draw = [&]() -> const CommandSpec& {
    if (deck.empty()) {
      for (std::size_t i = 0; i < specs.size(); ++i) deck.push_back(i);
      std::shuffle(deck.begin(), deck.end(), g.rng());
    }
    const std::size_t i = deck.back();
    deck.pop_back();
    return specs[i];
  };

  // After a difference the two sides no longer hold the same data: both start over.
  const auto resynchronise = [&](ConnectionPair& c) {
    for (ConnectionPair& p : conns) {
      const std::string proto = std::to_string(p.protocol);
      p.redis.call({"HELLO", proto});
      p.node.call({"HELLO", proto});
      p.redis.call({"CLIENT", "SETNAME", ""});
      p.node.call({"CLIENT", "SETNAME", ""});
    }
    c.redis.call(reset);
    // Once the cluster serves again (see `unavailable`).
    CHECK(proc::eventually(proc::long_wait(), [&] { return c.node.call(reset).type == resp::Type::Integer; }));
    history.clear();
  };
  // Answers that say the cluster could not serve the call just then (a leader change on a
  // loaded machine), not what the command does: not a difference, but a write's outcome is
  // unknown after them, so both sides start over.
  std::uint64_t unavailable = 0;
  const auto is_unavailable = [](const resp::Value& v) {
    return v.type == resp::Type::Error &&
           (proc::starts_with(v.str, "CLUSTERDOWN") || proc::starts_with(v.str, "TRYAGAIN") ||
            proc::starts_with(v.str, "TIMEOUT"));
  };

  std::uint64_t done = 0;
  std::uint64_t since_reset = 0;
  const std::uint64_t reset_every = 120;
  while (done < ops && failures.size() < kMaxFailures) {
    ConnectionPair& c = conns[static_cast<std::size_t>(g.below(static_cast<int>(conns.size())))];
    std::vector<Words> calls;
    std::vector<const CommandSpec*> made_by;
    std::vector<std::uint64_t> numbers;  // each call's number in the run
    if (since_reset >= reset_every) {
      // Client names too, so that the calls since the reset are all a replay needs.
      for (ConnectionPair& p : conns) {
        if (&p == &c) continue;
        p.redis.call({"CLIENT", "SETNAME", ""});
        p.node.call({"CLIENT", "SETNAME", ""});
      }
      calls.push_back({"CLIENT", "SETNAME", ""});
      made_by.push_back(nullptr);
      numbers.push_back(done);
      calls.push_back(reset);
      made_by.push_back(nullptr);
      numbers.push_back(done);
      since_reset = 0;
    }
    for (int n = g.between(1, 12); n > 0 && done < ops; --n, ++done, ++since_reset) {
      const CommandSpec& spec = draw();
      g.op = static_cast<std::int64_t>(done);
      Words w = spec.make(g);
      if (spec.mutate_arity && g.chance(3)) {  // the wrong number of arguments
        if (w.size() > 1 && g.chance(50)) w.pop_back();
        else w.push_back("extra");
      }
      if (g.chance(10)) {  // command names are case-insensitive
        for (char& ch : w[0]) ch = g.chance(50) ? static_cast<char>(std::tolower(ch)) : ch;
      }
      calls.push_back(std::move(w));
      made_by.push_back(&spec);
      numbers.push_back(done);
      ++counts[spec.name];
    }

    auto t0 = std::chrono::steady_clock::now();
    const std::vector<resp::Value> theirs = run_calls(c.redis, calls, made_by);
    auto t1 = std::chrono::steady_clock::now();
    const std::vector<resp::Value> ours = run_calls(c.node, calls, made_by);
    auto t2 = std::chrono::steady_clock::now();
    redis_time += t1 - t0;
    cluster_time += t2 - t1;

    for (std::size_t i = 0; i < calls.size(); ++i) {
      const Words& call = calls[i];
      if (made_by[i] == nullptr && i == 0) history.clear();
      const std::string prefix = "[" + c.label + " resp" + std::to_string(c.protocol) + "] ";
      history.push_back(prefix + line_of(call));
      const differential::Compare how = made_by[i] ? made_by[i]->compare : differential::Compare::Exact;
      // HELLO that Redis accepted changes the connection's protocol (on both, if they agree).
      if (made_by[i] && std::string(made_by[i]->name) == "hello" && theirs[i].type != resp::Type::Error) {
        c.protocol = 2;
        for (std::size_t k = 0; k + 1 < theirs[i].elements.size(); k += 2)
          if (theirs[i].elements[k].str == "proto") c.protocol = static_cast<int>(theirs[i].elements[k + 1].num);
      }
      if (differential::agree(how, theirs[i], ours[i])) continue;
      if (is_unavailable(ours[i])) {
        ++unavailable;
        resynchronise(c);
        since_reset = 0;
        break;
      }
      bool intended = false;
      for (const auto& d : differential::intended_differences()) {
        if (d.applies && made_by[i] && std::string(made_by[i]->name) == d.command && d.applies(call, theirs[i], ours[i])) {
          ++intended_seen[std::string(d.command) + ": " + d.what];
          intended = true;
          break;
        }
      }
      if (intended) continue;
      std::ostringstream report;
      report << "difference (seed " << seed << ", call " << numbers[i] << "):\n  " << prefix << line_of(call)
             << "\n  redis: " << test_support::typed(theirs[i]) << "\n  ours:  " << test_support::typed(ours[i])
             << "\n  replay: RAFT_DIFF_SEED=" << seed << " RAFT_DIFF_OPS=" << ops
             << " build/raft_tests 'differential: random*'"
             << "\n  the calls since the last reset (" << history.size() << "):\n";
      const std::size_t first = history.size() > 400 ? history.size() - 400 : 0;
      for (std::size_t k = first; k < history.size(); ++k) report << "    " << history[k] << "\n";
      failures.push_back(report.str());
      resynchronise(c);
      since_reset = 0;
      break;  // the rest of this pipeline ran on diverged data
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  std::ostringstream summary;
  summary << "differential: seed " << seed << ", " << done << " calls in " << seconds << " s (redis "
          << std::chrono::duration<double>(redis_time).count() << " s, cluster "
          << std::chrono::duration<double>(cluster_time).count() << " s); calls per command:";
  for (const auto& [name, n] : counts) summary << " " << name << "=" << n;
  if (unavailable > 0) summary << "\n  the cluster could not serve a call " << unavailable << "x (both sides started over)";
  for (const auto& [what, n] : intended_seen) summary << "\n  intended difference seen " << n << "x: " << what;
  std::cout << summary.str() << std::endl;

  for (const std::string& f : failures) FAIL_CHECK(f);
  // Every command ran enough (the default run: 100 each).
  const std::uint64_t least = std::min<std::uint64_t>(100, ops / specs.size());
  for (const CommandSpec& s : specs) {
    INFO(s.name << " ran " << counts[s.name] << " times");
    CHECK((failures.size() >= kMaxFailures || counts[s.name] >= least));
  }
}

TEST_CASE("differential: what the random test found in the connection commands and forwarded replies, call for call",
          "[redis][differential]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: the comparison with Redis is skipped");
    return;
  }
  Servers servers(255);

  // Each list is one pipeline, on a fresh RESP2 connection to each server; the node's is to a
  // follower (its writes are forwarded, its reads wait for the leader's read index).
  const std::vector<std::vector<Words>> pipelines = {
      // A forwarded reply kept RESP2's null array apart from the null bulk (it came back as $-1).
      {{"LPOP", "nokey", "2"}, {"RPOP", "nokey", "1"}, {"LPOP", "nokey"}},
      // SELECT and HELLO read an integer first (both said "out of range" / NOPROTO for "x").
      {{"SELECT", "x"}, {"SELECT", ""}, {"SELECT", "99999999999"}, {"SELECT", "1"}, {"SELECT", "-1"}, {"SELECT", "0"}},
      {{"HELLO", "x"}, {"HELLO", "02"}, {"HELLO", "4"}, {"HELLO", "2", "BAD"}},
      // CLIENT's subcommands count their arguments (it said "unknown subcommand").
      {{"CLIENT", "SETNAME", "a", "b"}, {"CLIENT", "SETNAME"}, {"CLIENT", "GETNAME", "x"}, {"CLIENT", "GETNAME"}},
      // The unknown-command error names the command as sent (it said it in lower case), its
      // arguments as C strings, the list cut near 128 bytes, line breaks as spaces.
      {{"NOSUCH", "a"}, {"NoSuch", std::string("x\0y", 3), std::string(200, 'z'), "b"}, {"GETT", "line\r\nbreak"}},
      // A pipelined HELLO changes the protocol of the replies after it only (a read or write
      // still waiting when HELLO 3 came was answered in RESP3).
      {{"GET", "nokey"}, {"HELLO", "3"}, {"GET", "nokey"}},
      {{"LPOP", "nokey", "1"}, {"HGET", "nokey", "f"}, {"HELLO", "3"}, {"LPOP", "nokey", "1"}, {"HELLO", "2"},
       {"LPOP", "nokey", "1"}},
  };
  const int follower = servers.cluster.other_than(servers.leader);
  for (const std::vector<Words>& calls : pipelines) {
    proc::Client theirs = servers.redis_client();
    proc::Client ours = servers.node_client(follower);
    const std::vector<resp::Value> a = pipeline(theirs, calls);
    const std::vector<resp::Value> b = pipeline(ours, calls);
    for (std::size_t i = 0; i < calls.size(); ++i) {
      INFO(line_of(calls[i]));
      // HELLO's map names the server: only its protocol is compared (intended_differences).
      const auto how = calls[i][0] == "HELLO" ? differential::Compare::Hello : differential::Compare::Exact;
      CHECK(differential::canonical(how, b[i]) == differential::canonical(how, a[i]));
    }
  }
}

TEST_CASE("differential: the iteration of a SCAN-like command gathers every element (checked on redis-server)",
          "[redis][differential]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: the check of the SCAN iteration is skipped");
    return;
  }
  proc::TempDir dir("differential-scan");
  proc::RedisServer redis(dir);
  REQUIRE(redis.port() != 0);
  proc::Client c("127.0.0.1", redis.port());
  // Enough keys and fields for hash tables (listpacks answer in one step) and many steps.
  Words mset{"MSET"}, hset{"HSET", "h"};
  for (int i = 0; i < 300; ++i) {
    mset.insert(mset.end(), {"key:" + std::to_string(i), "v"});
    hset.insert(hset.end(), {"f" + std::to_string(i), std::to_string(i)});
  }
  REQUIRE(c.call(mset).str == "OK");
  REQUIRE(c.call(hset).num == 300);

  const resp::Value keys = scan_union(c, {"SCAN", "0", "MATCH", "key:*", "COUNT", "7"}, 1, false);
  REQUIRE(keys.type == resp::Type::Array);
  std::set<std::string> names;
  for (const resp::Value& k : keys.elements) names.insert(k.str);
  CHECK(keys.elements.size() == 300);  // each once, though SCAN may return one twice
  CHECK(names.size() == 300);
  CHECK(names.count("key:0") == 1);
  CHECK(names.count("key:299") == 1);

  const resp::Value fields = scan_union(c, {"HSCAN", "h", "0", "COUNT", "5"}, 2, true);
  REQUIRE(fields.type == resp::Type::Array);
  REQUIRE(fields.elements.size() == 600);
  std::map<std::string, std::string> pairs;
  for (std::size_t i = 0; i + 1 < fields.elements.size(); i += 2) pairs[fields.elements[i].str] = fields.elements[i + 1].str;
  CHECK(pairs.size() == 300);
  CHECK(pairs["f42"] == "42");

  // An error ends the iteration and is the answer.
  CHECK(scan_union(c, {"SCAN", "x"}, 1, false).str == "ERR invalid cursor");
}
