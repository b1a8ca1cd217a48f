// The linearizability checker of tests/jepsen/: the history format, known histories written
// out as transcripts (linearizable ones pass; each kind of violation is caught and explained),
// random histories from real executions (pass), the same with one result changed (caught
// exactly when an independent brute-force search says so), and the bound (Unknown, never a
// pass). `[.checker-bench]` measures a 50,000-operation history.
#include "tests/jepsen/checker.hpp"
#include "tests/jepsen/generate.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace {

using namespace jepsen;

History parse(const std::string& text) {
  std::istringstream in(text);
  return read_history(in);
}

CheckResult check_text(const std::string& text, const CheckOptions& options = {}) {
  return check(parse(text), options);
}

History from_events(const std::vector<Event>& events) {
  std::ostringstream out;
  for (const Event& e : events) out << format_event(e) << '\n';
  return parse(out.str());  // through the text format, as the harness's files go
}

std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const HistoryError& e) {
    return e.what();
  }
  return "(no error)";
}

/// Expects exactly one violation, of `kind`, whose explanation holds each of `words`.
void require_violation(const std::string& text, const std::string& kind, const std::vector<std::string>& words) {
  const CheckResult r = check_text(text);
  INFO(r.summary());
  REQUIRE(r.verdict == Verdict::NotLinearizable);
  REQUIRE(r.violations.size() == 1);
  CHECK(r.violations[0].kind == kind);
  for (const std::string& w : words) CHECK_THAT(r.violations[0].explanation, Catch::Contains(w));
}

// ---- An independent reference: every order of every operation, no partitioning, no
// reductions, a model written out again; it only remembers the (done, state) pairs that
// failed. Exponential: for a few dozen operations at most. ----

class BruteForce {
 public:
  explicit BruteForce(const History& h) {
    for (const Operation& op : h.operations)
      if (op.outcome != Outcome::Fail) ops_.push_back(&op);
    REQUIRE(ops_.size() <= 64);
  }
  /// Nullopt when it would remember more than `budget` failed pairs (too big to decide).
  std::optional<bool> linearizable(std::size_t budget = 300'000) {
    budget_ = budget;
    try {
      return search();
    } catch (const TooBig&) {
      return std::nullopt;
    }
  }

 private:
  using State = std::map<std::string, Value>;  // absent: nil (or the empty list)

  bool search() {
    bool all_acknowledged_done = true;
    for (std::size_t i = 0; i < ops_.size(); ++i)
      if (!is_done(i) && ops_[i]->outcome == Outcome::Ok) all_acknowledged_done = false;
    if (all_acknowledged_done) return true;  // unknown ones left over never happened
    std::string key = std::to_string(done_);
    for (const auto& [k, v] : state_) key += " " + k + "=" + encode_value(v);
    if (!failed_.insert(key).second) return false;
    if (failed_.size() > budget_) throw TooBig{};
    for (std::size_t i = 0; i < ops_.size(); ++i) {
      if (is_done(i) || !may_go_next(i)) continue;
      const State saved = state_;
      if (take_effect(*ops_[i])) {
        done_ |= std::uint64_t{1} << i;
        if (search()) return true;
        done_ &= ~(std::uint64_t{1} << i);
      }
      state_ = saved;
    }
    return false;
  }
  bool is_done(std::size_t i) const { return (done_ >> i) & 1; }

  // Nothing acknowledged that ended before it began is still waiting.
  bool may_go_next(std::size_t i) const {
    for (std::size_t j = 0; j < ops_.size(); ++j)
      if (j != i && !is_done(j) && ops_[j]->outcome == Outcome::Ok && ops_[j]->complete_ns < ops_[i]->invoke_ns)
        return false;
    return true;
  }

  bool take_effect(const Operation& op) {
    const bool ok = op.outcome == Outcome::Ok;
    Value& v = state_[op.key];
    switch (op.function) {
      case Function::Read:
        return !ok || *op.result == v;  // an unknown read returned nothing to check
      case Function::Write:
        v = op.args[0];
        return true;
      case Function::Cas:
        if (ok && op.result && op.result->text == "false") return v != op.args[0];
        if (v != op.args[0]) return false;
        v = op.args[1];
        return true;
      case Function::Incr: {
        std::int64_t n = 0;
        if (!v.is_nil()) {
          if (!v.integer()) return false;
          n = *v.integer();
        }
        n += op.args.empty() ? 1 : *op.args[0].integer();
        if (ok && *op.result->integer() != n) return false;
        v = Value::of(n);
        return true;
      }
      case Function::Rpush:
        if (v.is_nil()) v = Value::list_of({});
        for (const Value& e : op.args) v.items.push_back(e.text);
        return !(ok && op.result) || *op.result->integer() == static_cast<std::int64_t>(v.items.size());
      case Function::Lrange:
        return !ok || op.result->items == (v.is_nil() ? std::vector<std::string>{} : v.items);
    }
    return false;
  }

  struct TooBig {};
  std::vector<const Operation*> ops_;
  std::uint64_t done_ = 0;
  State state_;
  std::set<std::string> failed_;
  std::size_t budget_ = 0;
};

/// Changes the result of one acknowledged operation; false when there is none to change.
bool mutate(std::vector<Event>& events, std::mt19937_64& rng, int value_domain) {
  std::vector<std::size_t> candidates;
  for (std::size_t i = 0; i < events.size(); ++i)
    if (events[i].kind == Kind::Ok && events[i].function != Function::Write) candidates.push_back(i);
  if (candidates.empty()) return false;
  Event& e = events[candidates[std::uniform_int_distribution<std::size_t>(0, candidates.size() - 1)(rng)]];
  auto pick = [&](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };
  const Value before = e.result.value_or(Value::nil());
  switch (e.function) {
    case Function::Read: {
      const bool counter = e.key[0] == 'c';
      std::vector<Value> choices{Value::nil(), Value::of("never")};
      for (int i = 0; i < std::max(value_domain, 4); ++i) choices.push_back(Value::of(std::to_string(i)));
      if (counter && before.integer()) {
        choices.push_back(Value::of(*before.integer() + 1));
        choices.push_back(Value::of(*before.integer() - 1));
      }
      do e.result = choices[pick(choices.size())];
      while (*e.result == before);
      break;
    }
    case Function::Incr:
      e.result = Value::of(*before.integer() + (pick(2) == 0 ? 1 : -1));
      break;
    case Function::Cas:
      e.result = Value::of(before.is_string() && before.text == "false" ? "true" : "false");
      break;
    case Function::Rpush:
      if (!e.result) return false;
      e.result = Value::of(*before.integer() + (pick(2) == 0 || *before.integer() == 0 ? 1 : -1));
      break;
    case Function::Lrange: {
      std::vector<std::string> items = before.items;
      const std::size_t how = pick(4);
      if (how == 0 && !items.empty()) items.erase(items.begin() + static_cast<std::ptrdiff_t>(pick(items.size())));
      else if (how == 1 && !items.empty()) items.push_back(items[pick(items.size())]);
      else if (how == 2 && items.size() >= 2) std::swap(items[0], items[1 + pick(items.size() - 1)]);
      else items.push_back("e-never");
      if (items == before.items) items.push_back("e-never");
      e.result = Value::list_of(items);
      break;
    }
    case Function::Write:
      return false;
  }
  return true;
}

}  // namespace

// ============================ The format ============================

TEST_CASE("history lines round-trip every value, escaped where needed", "[checker]") {
  Event e;
  e.time_ns = 123456789012345;
  e.process = 42;
  e.kind = Kind::Ok;
  e.function = Function::Read;
  e.key = "key with spaces,[brackets]#%";
  e.result = Value::of(std::string("nil\0\n\xff", 6));
  e.note = "a note\nover two lines";
  const std::string line = format_event(e);
  CHECK(line.find('\n') == std::string::npos);
  CHECK(line == "123456789012345 42 ok read key%20with%20spaces%2C%5Bbrackets%5D%23%25 -> nil%00%0A%FF # a note over two lines");
  const Event back = *parse_event(line, 7);
  CHECK(back.time_ns == e.time_ns);
  CHECK(back.process == 42);
  CHECK(back.key == e.key);
  CHECK(*back.result == *e.result);
  CHECK(back.note == "a note over two lines");
  CHECK(back.line == 7);

  for (const Value& v : {Value::nil(), Value::of(""), Value::of("nil"), Value::of("->"), Value::of("[a]"),
                         Value::list_of({}), Value::list_of({""}), Value::list_of({"a,b", "nil", "", "x y"})}) {
    Event w;
    w.function = Function::Cas;
    w.key = "k";
    w.args = {v.is_list() ? Value::nil() : v, Value::of("new")};
    Event l;
    l.kind = Kind::Ok;
    l.function = Function::Lrange;
    l.key = "l";
    l.result = v.is_list() ? v : Value::list_of({v.text});
    for (const Event& x : {w, l}) {
      INFO(format_event(x));
      const Event y = *parse_event(format_event(x), 1);
      CHECK(y.args == x.args);
      CHECK(y.result == x.result);
    }
  }
  CHECK(encode_value(Value::of("")) == "\"\"");
  CHECK(encode_value(Value::of("nil")) == "%6Eil");
  CHECK(encode_value(Value::list_of({"a", "b"})) == "[a,b]");
  CHECK_FALSE(parse_event("   ", 1));
  CHECK_FALSE(parse_event("# a comment", 1));
}

TEST_CASE("a malformed history line is refused with its line number and what is wrong", "[checker]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"1 2 invoke read", "too few fields; each line is TIME PROCESS KIND"},
      {"x 2 invoke read k", "TIME must be non-negative nanoseconds, got 'x'"},
      {"-5 2 invoke read k", "TIME must be non-negative"},
      {"1 p2 invoke read k", "PROCESS must be a non-negative integer"},
      {"1 2 start read k", "KIND must be invoke, ok, fail or info"},
      {"1 2 invoke get k", "unknown FUNCTION 'get'"},
      {"1 2 invoke read k 5", "'read' takes no argument"},
      {"1 2 ok read k", "an ok read needs its result"},
      {"1 2 invoke write k", "'write' takes one argument"},
      {"1 2 invoke write k a b", "'write' takes one argument"},
      {"1 2 invoke write k [a]", "string arguments"},
      {"1 2 ok cas k 1 2 -> maybe", "a cas result is true"},
      {"1 2 invoke cas k 1 nil", "a cas sets a string"},
      {"1 2 invoke incr k x", "an incr delta is an integer"},
      {"1 2 ok incr k", "an ok incr needs its result"},
      {"1 2 ok incr k -> five", "an ok incr needs its result"},
      {"1 2 ok rpush k e -> long", "an rpush result is the new length"},
      {"1 2 invoke rpush k", "'rpush' takes at least one element"},
      {"1 2 ok lrange k -> a", "an ok lrange needs its result, the list"},
      {"1 2 ok lrange k -> [a,b", "without its closing ']'"},
      {"1 2 ok lrange k -> [a,,b]", "list element: an empty value"},
      {"1 2 ok lrange k -> [nil]", "write the string nil as %6Eil"},
      {"1 2 invoke write k a%2", "'%' not followed by two hex digits"},
      {"1 2 invoke write k a\"b", "must be written %XX"},
      {"1 2 invoke read k ->", "'->' must be followed by exactly one RESULT"},
      {"1 2 info write k 1 -> 1", "only an ok line carries a result"},
      {"1 2 invoke read nil", "KEY: nil where a string is needed"},
  };
  for (const auto& [line, message] : cases) {
    INFO(line);
    const std::string error = error_of("# header\n" + line + "\n");
    CHECK_THAT(error, Catch::StartsWith("BADHISTORY line 2: "));
    CHECK_THAT(error, Catch::Contains(message));
  }
}

TEST_CASE("invocations and completions pair up by process, by Jepsen's rules", "[checker]") {
  CHECK_THAT(error_of("1 2 ok write k 1\n"), Catch::Contains("line 1: process 2 completes an operation it never invoked"));
  CHECK_THAT(error_of("1 2 invoke write k 1\n2 2 invoke read k\n"),
             Catch::Contains("line 2: process 2 invokes while its operation from line 1 is pending"));
  CHECK_THAT(error_of("1 2 invoke write k 1\n2 2 info write k 1\n3 2 invoke read k\n"),
             Catch::Contains("line 3: process 2 invokes again after its operation ended info at line 2"));
  CHECK_THAT(error_of("1 2 invoke write k 1\n2 2 ok write k 2\n"),
             Catch::Contains("line 2: process 2 completes a different operation than it invoked at line 1"));
  CHECK_THAT(error_of("5 2 invoke write k 1\n4 2 ok write k 1\n"), Catch::Contains("before its invocation"));

  const History h = parse(R"(
# lines of different processes interleave in any order; a fail may be followed by more
10 1 invoke write k 1
11 2 invoke read k
14 2 ok read k -> nil
12 1 fail write k 1 # CLUSTERDOWN no leader
20 1 invoke write k 2
21 3 invoke incr c
30 3 info incr c # TIMEOUT
)");
  REQUIRE(h.operations.size() == 4);
  CHECK(h.operations[0].outcome == Outcome::Fail);
  CHECK(h.operations[1].outcome == Outcome::Ok);
  CHECK(h.operations[2].outcome == Outcome::Info);  // never completed: unknown
  CHECK_FALSE(h.operations[2].completed);
  CHECK(h.operations[2].complete_ns == 30);
  CHECK(h.operations[3].outcome == Outcome::Info);
  CHECK(h.operations[3].completed);
}

TEST_CASE("the history writer stamps and flushes each event, and refuses what would not read back", "[checker]") {
  std::ostringstream out;
  HistoryWriter w(out);
  w.invoke(0, Function::Write, "x", {Value::of("1")});
  w.ok(0);
  w.invoke(0, Function::Read, "x");
  w.ok(0, Value::of("1"));
  w.invoke(1, Function::Cas, "x", {Value::of("1"), Value::of("2")});
  w.info(1, "TIMEOUT the write was not committed in time");
  CHECK_THROWS_AS(w.invoke(1, Function::Read, "x"), std::logic_error);  // spent by the info
  CHECK_THROWS_AS(w.ok(3), std::logic_error);
  CHECK_THROWS_AS(w.invoke(4, Function::Write, "x"), std::logic_error);  // no value
  const std::uint64_t fresh = w.new_process();
  CHECK(fresh == 2);

  // Concurrent clients through one writer: the file is in time order and reads back whole.
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t)
    clients.emplace_back([&w, t] {
      const std::uint64_t p = 10 + static_cast<std::uint64_t>(t);
      for (int i = 0; i < 50; ++i) {
        w.invoke(p, Function::Incr, "c");
        w.ok(p, Value::of(static_cast<std::int64_t>(i)));  // results need not be true here
      }
    });
  for (auto& c : clients) c.join();
  const History h = parse(out.str());
  REQUIRE(h.operations.size() == 3 + 200);
  CHECK(h.operations[2].outcome == Outcome::Info);
  std::int64_t last = 0;
  std::istringstream lines(out.str());
  for (const Event& e : read_events(lines)) {
    CHECK(e.time_ns >= last);
    last = e.time_ns;
  }
}

TEST_CASE("one key used as a string and as a list is refused", "[checker]") {
  CHECK_THROWS_WITH(check_text("1 1 invoke rpush k a\n2 1 ok rpush k a\n3 1 invoke read k\n4 1 ok read k -> nil\n"),
                    Catch::Contains("key k is used as a list (rpush at line 1) and as a string (read at line 3)"));
}

// ============================ Known linearizable histories ============================

TEST_CASE("concurrent writes and reads pass in either order", "[checker]") {
  // Both writes overlap; the read inside them may see either; after both, the value is the
  // one linearized last, which one read fixes (1) and the next must agree with.
  const char* history = R"(
0 1 invoke write x 1
0 2 invoke write x 2
1 3 invoke read x
3 3 ok read x -> 2
5 1 ok write x 1
5 2 ok write x 2
6 4 invoke read x
7 4 ok read x -> 1
8 5 invoke read x
9 5 ok read x -> 1
)";
  const CheckResult r = check_text(history);
  INFO(r.summary());
  CHECK(r.verdict == Verdict::Linearizable);
  CHECK(r.operations == 5);
  CHECK(r.keys == 1);

  // A read overlapping a write may still see the old value, and the next one the new.
  CHECK(check_text(R"(
0 1 invoke write x 1
1 1 ok write x 1
2 1 invoke write x 2
2 2 invoke read x
3 2 ok read x -> 1
3 3 invoke read x
4 3 ok read x -> 2
9 1 ok write x 2
)").verdict == Verdict::Linearizable);
  // Equal times count as concurrent: a read invoked when a write returned may see either.
  CHECK(check_text("0 1 invoke write x 1\n5 1 ok write x 1\n5 2 invoke read x\n6 2 ok read x -> nil\n").verdict ==
        Verdict::Linearizable);
}

TEST_CASE("unknown operations may take effect late, or never", "[checker]") {
  // The write ended info at 1; it takes effect after 3, before 4.
  CHECK(check_text(R"(
0 1 invoke write x 1
1 1 info write x 1 # TIMEOUT
2 2 invoke read x
3 2 ok read x -> nil
4 3 invoke read x
5 3 ok read x -> 1
)").verdict == Verdict::Linearizable);
  // Never: every later read sees nil; an unknown CAS and an unknown increment likewise.
  CHECK(check_text(R"(
0 1 invoke write x 1
1 1 info write x 1
0 4 invoke cas x nil 7
1 4 info cas x nil 7
0 5 invoke incr c
1 5 info incr c
2 2 invoke read x
3 2 ok read x -> nil
4 3 invoke read c
5 3 ok read c -> nil
)").verdict == Verdict::Linearizable);
  // One of two unknown increments happened, the other later.
  CHECK(check_text(R"(
0 1 invoke incr c
1 1 info incr c
0 2 invoke incr c
1 2 info incr c
2 3 invoke incr c
3 3 ok incr c -> 2
4 4 invoke read c
5 4 ok read c -> 3
)").verdict == Verdict::Linearizable);
  // An unknown rpush seen by the final read, at the end; a never-completed one not seen.
  CHECK(check_text(R"(
0 1 invoke rpush l a
1 1 info rpush l a
2 2 invoke rpush l b
3 2 ok rpush l b -> 1
4 3 invoke rpush l c
6 4 invoke lrange l
7 4 ok lrange l -> [b,a]
)").verdict == Verdict::Linearizable);
}

TEST_CASE("CAS races pass: one wins, the other sees the winner's value", "[checker]") {
  CHECK(check_text(R"(
0 1 invoke write x 0
1 1 ok write x 0
2 2 invoke cas x 0 1
2 3 invoke cas x 0 2
4 3 ok cas x 0 2 -> false
5 2 ok cas x 0 1 -> true
6 4 invoke read x
7 4 ok read x -> 1
)").verdict == Verdict::Linearizable);
  // Jepsen's convention: the loser fails; the winner's ok carries no result.
  CHECK(check_text(R"(
2 2 invoke cas x nil 1
2 3 invoke cas x nil 2
4 3 fail cas x nil 2
5 2 ok cas x nil 1
6 4 invoke read x
7 4 ok read x -> 1
)").verdict == Verdict::Linearizable);
}

TEST_CASE("concurrent pushes pass in either order, with their lengths", "[checker]") {
  CHECK(check_text(R"(
0 1 invoke rpush l a
0 2 invoke rpush l b
1 3 invoke lrange l
2 3 ok lrange l -> [b]
3 1 ok rpush l a -> 2
3 2 ok rpush l b -> 1
4 3 invoke lrange l
5 3 ok lrange l -> [b,a]
)").verdict == Verdict::Linearizable);
}

// ============================ Violations, each with its explanation ============================

TEST_CASE("a stale read is caught", "[checker]") {
  require_violation(R"(
0 1 invoke write x 1
1 1 ok write x 1
2 1 invoke write x 2
3 1 ok write x 2
4 2 invoke read x
5 2 ok read x -> 1
6 3 invoke read x
7 3 ok read x -> 2
)",
                    "stale read", {"read of x at [0.000000 s, 0.000000 s] (p2, line 7) returned 1, written by write x 1",
                                   "but write x 2 [0.000000 s, 0.000000 s] (p1, line 5) had replaced it before the read began",
                                   "x could only hold 2 there"});
  // A follower answering from before the first write: nil after an acknowledged write.
  require_violation("0 1 invoke write x 1\n1 1 ok write x 1\n2 2 invoke read x\n3 2 ok read x -> nil\n"
                    "4 2 invoke write x 3\n5 2 ok write x 3\n",
                    "stale read", {"returned nil (the key starting out missing), but write x 1"});
}

TEST_CASE("a lost acknowledged write is caught: register, counter and list", "[checker]") {
  require_violation(R"(
0 1 invoke write x 1
1 1 ok write x 1
2 1 invoke write x 2
3 1 ok write x 2
4 2 invoke read x
5 2 ok read x -> 1
)",
                    "lost acknowledged write",
                    {"the final read of x at", "returned 1, written by write x 1", "the acknowledged write x 2",
                     "the acknowledged write was lost"});
  require_violation(R"(
0 1 invoke incr c
1 1 ok incr c -> 1
2 1 invoke incr c
3 1 ok incr c -> 2
2 2 invoke incr c
3 2 info incr c
4 3 invoke read c
5 3 ok read c -> 1
)",
                    "lost acknowledged write",
                    {"the final read of counter c returned 1", "2 acknowledged increments adding up to 2"});
  require_violation(R"(
0 1 invoke incr c 5
1 1 ok incr c 5 -> 5
0 2 invoke incr c 3
2 2 ok incr c 3 -> 8
4 3 invoke read c
5 3 ok read c -> 5
)",
                    "lost acknowledged write",
                    {"the final read of counter c returned 5", "2 acknowledged increments adding up to 8"});
  require_violation(R"(
0 1 invoke rpush l a
1 1 ok rpush l a -> 1
2 1 invoke rpush l b
3 1 ok rpush l b -> 2
4 2 invoke lrange l
5 2 ok lrange l -> [a]
)",
                    "lost acknowledged write",
                    {"the final lrange of l", "is missing b, whose rpush l b [0.000000 s, 0.000000 s] (p1, line 5)"});
}

TEST_CASE("a duplicated list element is caught", "[checker]") {
  require_violation(R"(
0 1 invoke rpush l a
1 1 ok rpush l a -> 1
0 2 invoke rpush l b
2 2 ok rpush l b -> 2
4 3 invoke lrange l
5 3 ok lrange l -> [a,b,a]
)",
                    "duplicated element", {"holds a 2 times, but it was pushed once (rpush l a"});
}

TEST_CASE("a CAS that succeeded twice is caught", "[checker]") {
  require_violation(R"(
0 1 invoke write x 0
1 1 ok write x 0
2 2 invoke cas x 0 1
3 2 ok cas x 0 1
2 3 invoke cas x 0 2
4 3 ok cas x 0 2 -> true
)",
                    "cas succeeded twice",
                    {"2 CASes of x from 0 succeeded", "only 1 operation(s) ever gave x that value (write x 0"});
}

TEST_CASE("a counter that went backwards is caught", "[checker]") {
  require_violation(R"(
0 1 invoke incr c
1 1 ok incr c -> 1
2 1 invoke read c
3 1 ok read c -> 1
4 2 invoke incr c
5 2 ok incr c -> 2
6 3 invoke read c
7 3 ok read c -> 1
8 3 invoke incr c
9 3 ok incr c -> 3
)",
                    "counter went backwards", {"read of counter c returned 1", "incr at", "had returned 2 before it began"});
}

TEST_CASE("a read of a value never written is caught", "[checker]") {
  require_violation("0 1 invoke write x 1\n1 1 ok write x 1\n2 2 invoke read x\n3 2 ok read x -> 7\n",
                    "value never written", {"read of x returned 7", "no operation ever wrote 7 to x"});
  require_violation("0 1 invoke rpush l a\n1 1 ok rpush l a\n2 2 invoke lrange l\n3 2 ok lrange l -> [a,z]\n",
                    "value never written", {"holds z, which no rpush ever pushed"});
  require_violation("0 1 invoke read x\n1 1 ok read x -> 7\n2 2 invoke write x 7\n3 2 ok write x 7\n",
                    "value not yet written", {"the first write of 7 began at", "after it ended"});
}

TEST_CASE("violations only the search finds are explained by the states the key could hold", "[checker]") {
  // Reads flip 1, 2, 1 after both writes ended: no single order of the writes explains it.
  const std::string flip = R"(
0 1 invoke write x 1
0 2 invoke write x 2
1 1 ok write x 1
1 2 ok write x 2
2 3 invoke read x
3 3 ok read x -> 1
4 3 invoke read x
5 3 ok read x -> 2
6 3 invoke read x
7 3 ok read x -> 1
)";
  require_violation(flip, "not linearizable", {"read of x returned 2", "it could only hold 1 there"});
  const CheckResult r = check_text(flip);
  CHECK(r.violations[0].prefix_operations == 4);  // both writes and the first two reads
  CHECK(r.violations[0].operations[0].complete_line == 9);

  // A CAS refused although the value matched.
  require_violation("0 1 invoke write x 0\n1 1 ok write x 0\n2 1 invoke cas x 0 1\n3 1 ok cas x 0 1 -> false\n"
                    "4 1 invoke read x\n5 1 ok read x -> 0\n",
                    "not linearizable", {"cas of x from 0 to 1 was refused", "x could only hold 0 there"});
  // A list read in the wrong order (the lengths fix the order of the pushes).
  require_violation("0 1 invoke rpush l a\n1 1 ok rpush l a -> 1\n0 2 invoke rpush l b\n2 2 ok rpush l b -> 2\n"
                    "4 3 invoke lrange l\n5 3 ok lrange l -> [b,a]\n",
                    "not linearizable", {"the list could only be [a,b] there", "differs at position 0 (got b, expected a)"});
  // An increment whose result skips a value nobody else could have added.
  require_violation("0 1 invoke incr c\n1 1 ok incr c -> 1\n0 2 invoke incr c\n2 2 info incr c\n"
                    "4 3 invoke incr c\n5 3 ok incr c -> 4\n",
                    "counter above its increments", {"add up to 3 (2 acknowledged, 1 unknown)"});
  require_violation("0 1 invoke incr c\n1 1 ok incr c -> 1\n2 1 invoke incr c\n3 1 ok incr c -> 1\n",
                    "duplicate increment", {"both returned 1"});
}

TEST_CASE("the verdict line names the counts, the verdict and the first violation", "[checker]") {
  const CheckResult r = check_text(R"(
0 1 invoke write x 1
1 1 ok write x 1
2 2 invoke read x
3 2 ok read x -> 9
4 3 invoke write y 1
5 3 fail write y 1
6 4 invoke write y 2
7 4 info write y 2
8 5 invoke read y
9 5 ok read y -> 4
)");
  CHECK(r.operations == 5);
  CHECK(r.ok == 3);
  CHECK(r.failed == 1);
  CHECK(r.unknown == 1);
  CHECK(r.keys == 2);
  REQUIRE(r.violations.size() == 2);
  CHECK_THAT(r.summary(), Catch::StartsWith("ops=5 ok=3 failed=1 unknown=1 keys=2 steps=0 linearizable=no key=x "
                                            "violation=value never written: read of x returned 9"));
  CHECK_THAT(r.summary(), Catch::EndsWith("(and 1 more keys)"));
  CHECK(describe(r.violations[0].operations[0], 0) == "p2 read x -> 9 [0.000000 s, 0.000000 s] lines 4-5");
}

// ============================ Random histories ============================

TEST_CASE("random histories of real executions are linearizable", "[checker]") {
  struct Shape {
    const char* name;
    generate::Options o;
  };
  std::vector<Shape> shapes;
  auto add = [&](const char* name, auto&& set) {
    generate::Options o;
    o.operations = 600;
    set(o);
    shapes.push_back({name, o});
  };
  add("registers, every value new", [](generate::Options& o) { o.registers = 3; o.processes = 6; });
  add("registers, values 0..2", [](generate::Options& o) { o.registers = 2; o.value_domain = 3; o.processes = 5; });
  add("CAS refusals as fail", [](generate::Options& o) { o.registers = 2; o.value_domain = 2; o.cas_mismatch_is_ok = false; });
  add("counters by 1..3", [](generate::Options& o) { o.registers = 0; o.counters = 2; o.max_delta = 3; o.processes = 8; });
  add("lists", [](generate::Options& o) { o.registers = 0; o.lists = 2; o.processes = 8; });
  add("lists without lengths", [](generate::Options& o) { o.registers = 0; o.lists = 1; o.push_lengths = false; });
  add("everything, many unknowns", [](generate::Options& o) {
    o.registers = 2; o.counters = 2; o.lists = 2; o.processes = 10; o.p_info = 0.2; o.p_fail = 0.1; o.value_domain = 4;
  });
  for (const Shape& shape : shapes)
    for (std::uint64_t seed = 1; seed <= 10; ++seed) {
      generate::Options o = shape.o;
      o.seed = seed;
      const CheckResult r = check(from_events(generate::history(o)));
      INFO(shape.name << ", seed " << seed << ": " << r.summary());
      REQUIRE(r.verdict == Verdict::Linearizable);
    }
}

namespace {

/// What one random history, and the same with one result changed, showed.
struct Comparison {
  std::size_t caught = 0, still_linearizable = 0, too_big = 0;
};

/// Generates a history (random shape from `seed`), checks that the checker and brute force
/// both pass it, changes one result, and checks that they agree about that.
void compare_with_brute_force(std::uint64_t seed, std::size_t operations, int max_processes, Comparison& c) {
  std::mt19937_64 shape(seed * 7919);
  generate::Options o;
  o.seed = seed;
  o.operations = operations + shape() % 5;
  o.processes = 2 + static_cast<int>(shape() % static_cast<unsigned>(max_processes - 1));
  o.final_reads = shape() % 2 == 0;
  o.p_fail = 0.1;
  o.p_info = 0.2 + 0.15 * static_cast<double>(shape() % 3);  // many unknowns, often with one effect
  o.value_domain = 1 + static_cast<int>(shape() % 3);
  o.cas_mismatch_is_ok = shape() % 2 == 0;
  o.registers = o.counters = o.lists = 0;
  switch (shape() % 5) {
    case 0: o.registers = 1; break;
    case 1: o.counters = 1; o.max_delta = 1 + static_cast<int>(shape() % 2); break;
    case 2: o.lists = 1; o.push_lengths = shape() % 2 == 0; break;
    case 3: o.registers = 1; o.counters = 1; break;
    default: o.registers = 1; o.lists = 1; break;
  }
  std::vector<Event> events = generate::history(o);
  const History original = from_events(events);
  INFO("seed " << seed);
  const std::optional<bool> valid = BruteForce(original).linearizable();
  if (!valid) {
    ++c.too_big;
    return;
  }
  REQUIRE(*valid);
  REQUIRE(check(original).verdict == Verdict::Linearizable);

  std::mt19937_64 rng(seed);
  if (!mutate(events, rng, o.value_domain)) return;
  const History mutated = from_events(events);
  const std::optional<bool> expected = BruteForce(mutated).linearizable();
  if (!expected) {
    ++c.too_big;
    return;
  }
  const CheckResult r = check(mutated);
  std::ostringstream text;
  for (const Event& e : events) text << format_event(e) << '\n';
  INFO(text.str() << r.summary());
  REQUIRE(r.verdict == (*expected ? Verdict::Linearizable : Verdict::NotLinearizable));
  ++(*expected ? c.still_linearizable : c.caught);
}

}  // namespace

TEST_CASE("small random histories: the checker agrees with brute force, before and after one result changes",
          "[checker]") {
  Comparison c;
  for (std::uint64_t seed = 1; seed <= 3000; ++seed) compare_with_brute_force(seed, 5, 4, c);
  // Neither outcome is rare: the comparison tests both directions.
  CHECK(c.caught > 1500);
  CHECK(c.still_linearizable > 300);
  CHECK(c.too_big == 0);
  for (std::uint64_t seed = 1; seed <= 200; ++seed) compare_with_brute_force(1'000'000 + seed, 15, 5, c);
  CHECK(c.too_big < 10);
}

TEST_CASE("more random histories against brute force (RAFT_CHECKER_SEEDS, default 20000)", "[.checker-deep]") {
  const char* env = std::getenv("RAFT_CHECKER_SEEDS");
  const std::uint64_t seeds = env ? std::strtoull(env, nullptr, 10) : 20000;
  Comparison c;
  for (std::uint64_t seed = 1; seed <= seeds; ++seed) compare_with_brute_force(2'000'000 + seed, 5 + seed % 20, 6, c);
  std::printf("caught %zu, still linearizable %zu, too big for brute force %zu\n", c.caught, c.still_linearizable,
              c.too_big);
}

TEST_CASE("a stale read planted in a long random history is caught", "[checker]") {
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    generate::Options o;
    o.seed = seed;
    o.operations = 3000;
    o.registers = 3;
    o.counters = 1;
    o.lists = 1;
    o.processes = 8;
    std::vector<Event> events = generate::history(o);
    // A read that began after two acknowledged writes of its key, one after the other,
    // now returns the first (every value is new, so nothing else wrote it).
    std::map<std::string, std::vector<std::size_t>> writes_done;  // key -> completed ok writes, in order
    std::map<std::pair<std::uint64_t, std::string>, std::size_t> open;
    std::optional<std::pair<std::size_t, Value>> plant;
    for (std::size_t i = 0; i < events.size() && !plant; ++i) {
      const Event& e = events[i];
      if (e.function == Function::Write && e.kind == Kind::Ok) {
        auto& done = writes_done[e.key];
        if (!done.empty() && events[open[{e.process, e.key}]].time_ns <= events[done.back()].time_ns) done.clear();
        done.push_back(i);  // this write began after the previous one ended (or starts a run)
      }
      if (e.kind == Kind::Invoke) open[{e.process, e.key}] = i;
      if (e.function == Function::Read && e.kind == Kind::Ok && e.key[0] == 'r') {
        const auto& done = writes_done[e.key];
        const std::int64_t began = events[open[{e.process, e.key}]].time_ns;
        if (done.size() >= 2 && events[done.back()].time_ns < began && *e.result != events[done[0]].args[0])
          plant = std::make_pair(i, events[done[0]].args[0]);
      }
    }
    REQUIRE(plant);
    events[plant->first].result = plant->second;
    const CheckResult r = check(from_events(events));
    INFO("seed " << seed << ": " << r.summary());
    REQUIRE(r.verdict == Verdict::NotLinearizable);
    REQUIRE(r.violations.size() == 1);
    CHECK((r.violations[0].kind == "stale read" || r.violations[0].kind == "lost acknowledged write"));
  }
}

TEST_CASE("the memo prunes a configuration only when one seen before used no more of each twin group",
          "[checker]") {
  detail::Memo memo(100, 2);
  const std::uint32_t used_1_1[] = {1, 1}, used_0_0[] = {0, 0}, used_1_2[] = {1, 2}, used_2_0[] = {2, 0};
  CHECK(memo.insert(7, 9, used_1_1));
  CHECK_FALSE(memo.insert(7, 9, used_1_1));  // the same
  CHECK_FALSE(memo.insert(7, 9, used_1_2));  // used more: can do no more
  CHECK(memo.insert(7, 9, used_0_0));        // used less: may do more
  CHECK_FALSE(memo.insert(7, 9, used_2_0));  // dominated by (0, 0) now
  CHECK(memo.insert(8, 9, used_1_2));        // another exact part
  detail::Memo exact(100, 0);
  CHECK(exact.insert(1, 2, nullptr));
  CHECK_FALSE(exact.insert(1, 2, nullptr));
  CHECK(exact.insert(2, 2, nullptr));
}

TEST_CASE("a busy register with many unknown operations is decided within the default bound", "[checker]") {
  // Ten clients on one register for 50,000 operations, one in ten ending unknown: without
  // the reductions this runs out of steps (small values) or nearly so (new values).
  for (int domain : {5, 0}) {
    generate::Options o;
    o.seed = 1;
    o.operations = 50'000;
    o.registers = 1;
    o.processes = 10;
    o.p_info = 0.1;
    o.p_fail = 0.02;
    o.value_domain = domain;
    const CheckResult r = check(from_events(generate::history(o)));
    INFO(r.summary());
    CHECK(r.verdict == Verdict::Linearizable);
  }
}

// ============================ The bound ============================

TEST_CASE("a search that runs out of steps says Unknown, never linearizable", "[checker]") {
  // 20 concurrent writes, then two reads that disagree: proving that no order of the writes
  // explains them takes about 2^20 configurations.
  std::ostringstream text;
  for (int p = 0; p < 20; ++p) text << "0 " << p << " invoke write x " << p << "\n";
  for (int p = 0; p < 20; ++p) text << "10 " << p << " ok write x " << p << "\n";
  text << "11 100 invoke read x\n12 100 ok read x -> 3\n13 100 invoke read x\n14 100 ok read x -> 4\n";
  CheckOptions bounded;
  bounded.max_steps = 100'000;
  const CheckResult r = check_text(text.str(), bounded);
  INFO(r.summary());
  CHECK(r.verdict == Verdict::Unknown);
  CHECK(r.steps == 100'000);
  CHECK_THAT(r.gave_up, Catch::Contains("key x: the search used all 100000 steps"));
  CHECK_THAT(r.summary(), Catch::Contains("linearizable=unknown"));
  // The same answer every time: the bound counts steps, not time.
  CHECK(check_text(text.str(), bounded).summary() == r.summary());

  // A linearizable history with too small a budget is Unknown as well.
  CheckOptions tiny;
  tiny.max_steps = 2;  // it needs 3
  CHECK(check_text("0 1 invoke write x 1\n1 1 ok write x 1\n2 1 invoke read x\n3 1 ok read x -> 1\n"
                   "4 1 invoke read x\n5 1 ok read x -> 1\n",
                   tiny)
            .verdict == Verdict::Unknown);

  // A violation the whole-history checks find on another key still makes it a violation.
  text << "20 200 invoke read y\n21 200 ok read y -> 5\n";
  CHECK(check_text(text.str(), bounded).verdict == Verdict::NotLinearizable);

  // A wall-clock timeout gives Unknown too.
  CheckOptions timed;
  timed.timeout_s = 0.05;
  timed.max_steps = std::numeric_limits<std::uint64_t>::max();
  const CheckResult t = check_text(text.str().substr(0, text.str().find("20 200")), timed);
  CHECK(t.verdict == Verdict::Unknown);
  CHECK_THAT(t.gave_up, Catch::Contains("the wall-clock timeout"));
}

// ============================ Measurement (not run by default) ============================

TEST_CASE("checker speed on 50,000 operations over 100 keys, and on fewer, busier keys", "[.checker-bench]") {
  struct Shape {
    const char* name;
    std::size_t operations;
    int registers, counters, lists, value_domain;
    double p_info;
  };
  const Shape shapes[] = {
      {"100 keys, every value new", 50'000, 40, 30, 30, 0, 0.03},
      {"100 keys, values 0..4", 50'000, 40, 30, 30, 5, 0.03},
      {"10 keys, values 0..4", 50'000, 4, 3, 3, 5, 0.03},
      {"1 register, values 0..4, 10% unknown", 50'000, 1, 0, 0, 5, 0.10},
      {"1 register, every value new, 10% unknown", 50'000, 1, 0, 0, 0, 0.10},
      {"1 counter, 10% unknown", 50'000, 0, 1, 0, 0, 0.10},
      {"1 list, 10% unknown", 5'000, 0, 0, 1, 0, 0.10},
  };
  for (const Shape& shape : shapes) {
    generate::Options o;
    o.seed = 7;
    o.operations = shape.operations;
    o.registers = shape.registers;
    o.counters = shape.counters;
    o.lists = shape.lists;
    o.processes = 10;
    o.p_info = shape.p_info;
    o.p_fail = 0.02;
    o.value_domain = shape.value_domain;
    const std::vector<Event> events = generate::history(o);
    std::ostringstream text;
    for (const Event& e : events) text << format_event(e) << '\n';
    const auto t0 = std::chrono::steady_clock::now();
    const History h = parse(text.str());
    const auto t1 = std::chrono::steady_clock::now();
    const CheckResult r = check(h);
    std::printf("%s: %.1f MB; parse %.3f s; check %.3f s; hardest key %s (%llu steps)\n  %s\n", shape.name,
                static_cast<double>(text.str().size()) / 1e6, std::chrono::duration<double>(t1 - t0).count(),
                r.seconds, r.hardest_key.c_str(), static_cast<unsigned long long>(r.hardest_key_steps),
                r.summary().c_str());
    CHECK(r.verdict == Verdict::Linearizable);
  }

  // A violation in a big history: the first shape with one read made stale.
  generate::Options o;
  o.seed = 7;
  o.operations = 50'000;
  o.registers = 40;
  o.counters = 30;
  o.lists = 30;
  o.processes = 10;
  o.p_info = 0.03;
  std::vector<Event> events = generate::history(o);
  std::map<std::string, std::vector<const Event*>> writes;  // acknowledged, by key
  std::map<std::uint64_t, const Event*> invoked;
  for (Event& e : events) {
    if (e.kind == Kind::Invoke) invoked[e.process] = &e;
    if (e.kind == Kind::Ok && e.function == Function::Write) writes[e.key].push_back(invoked[e.process]);
    if (e.kind == Kind::Ok && e.function == Function::Read && e.key[0] == 'r' && writes[e.key].size() > 20 &&
        e.time_ns > events.back().time_ns / 2 + events.front().time_ns / 2) {
      e.result = writes[e.key].front()->args[0];  // long overwritten by then
      break;
    }
  }
  const CheckResult planted = check(from_events(events));
  std::printf("planted stale read: check %.3f s: %s\n", planted.seconds, planted.summary().c_str());
  CHECK(planted.verdict == Verdict::NotLinearizable);

  // Giving up at the default bound.
  std::ostringstream hard;
  for (int p = 0; p < 24; ++p) hard << "0 " << p << " invoke write x " << p << "\n";
  for (int p = 0; p < 24; ++p) hard << "10 " << p << " ok write x " << p << "\n";
  hard << "11 100 invoke read x\n12 100 ok read x -> 3\n13 100 invoke read x\n14 100 ok read x -> 4\n";
  const CheckResult given_up = check_text(hard.str());
  std::printf("24 concurrent writes, default bound: %.3f s: %s\n", given_up.seconds, given_up.summary().c_str());
  CHECK(given_up.verdict == Verdict::Unknown);
}
