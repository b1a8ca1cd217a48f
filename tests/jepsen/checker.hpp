// A linearizability checker for the histories of tests/jepsen/history.hpp.
//
//   jepsen::CheckResult r = jepsen::check(jepsen::read_history_file(path));
//   if (r.verdict != jepsen::Verdict::Linearizable) FAIL(r.summary());
//
// Unknown (the search gave up within its bound) is a failed run, never a pass.
//
// How it decides, key by key (linearizability is compositional: a history is linearizable
// if and only if the sub-history of every key is):
//
// 1. Whole-history checks that need no search, and are definitive on their own:
//    registers: no read of a value nothing wrote, or wrote only after the read ended; no
//      more successful CASes from a value than operations that produced it;
//    counters (only increments by positive deltas): no value below one observed by an
//      operation that ended before; every observation at least the sum of the acknowledged
//      increments that ended before it began and at most all increments begun before it
//      ended (acknowledged or unknown); no two increments returning the same value;
//    lists: every lrange holds only pushed elements, none more often than pushed, and every
//      element whose rpush was acknowledged before the lrange began.
// 2. The search: Wing & Gong's tree search with Lowe's memoization, as in Lowe, "Testing for
//    linearizability" (2017). The key's acknowledged invocations and returns are sorted by
//    time (equal times: invocations first, so they count as concurrent). A configuration is
//    the set of operations linearized so far plus the model's state. The first return of an
//    operation not yet linearized is where something must be linearized (just in time): the
//    candidates are the operations invoked before it; the search tries that operation itself
//    first, then the other acknowledged ones, then unknown ones. A configuration seen before
//    failed before and is not explored again. Unknown (info) operations have no return: they
//    may be linearized at any point after their invocation, or never; failed ones never
//    happened. What keeps the search small, each step preserving the verdict (the tests
//    compare it with a plain search on thousands of random histories):
//    - observers first: an operation that changes no state whatever the state (a read, a
//      refused CAS, an lrange) and is legal now is linearized at once, with no alternative
//      tried: if any order works, the order with it moved here works too;
//    - unknown operations only where something depends on them: one taken in state S must
//      be followed at once by a witness, an operation that is illegal in S or leaves another
//      state there; every linearization takes that form once the unknown operations without
//      a witness are dropped. On registers that narrows them to those setting a value some
//      candidate reads or compares (through chains of unknown CASes);
//    - twins: unknown operations with the same effect (two `incr k 1` that timed out) are
//      taken earliest-invoked first, and never while an acknowledged candidate with that
//      effect could go instead (they can trade places);
//    - dominance: a configuration that used no more twins than one already seen, with the
//      same acknowledged operations, state and witness due, can do no more than it;
//    - values nobody reads: on a register, the values no read returns and no CAS expects
//      behave alike for every operation, so they are one state; unknown writes of them are
//      dropped when no CAS on the key was refused; an unknown rpush whose elements no lrange
//      holds is dropped unless a later reported length could count it.
//    A violation names the operation no order could get past (its return ends the smallest
//    prefix of the key's history that is not linearizable), the states the key could be in
//    there, and a diagnosis (stale read, lost acknowledged write, ...).
// 3. The bound: a step is one attempt to linearize one operation in one configuration. The
//    search spends at most CheckOptions::max_steps in total over all keys (deterministic:
//    the same history and options give the same verdict on any machine), and optionally
//    stops at a wall-clock deadline. When either runs out the verdict is Unknown.
#pragma once

#include "history.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace jepsen {

enum class Verdict { Linearizable, NotLinearizable, Unknown };
/// "yes", "no", "unknown".
const char* name(Verdict verdict);

struct CheckOptions {
  /// The search's budget summed over all keys (see the top of this file). About 10 million
  /// steps per second; a healthy history needs a few steps per operation.
  std::uint64_t max_steps = 50'000'000;
  /// A wall-clock bound on top, in seconds (0: none). Not deterministic: for tools.
  double timeout_s = 0;
  /// Configurations remembered per key (about 50 bytes each, plus 4 per group of twins).
  /// Beyond it the search goes on without remembering more: slower, the same verdict.
  std::size_t max_memo_entries = std::size_t{1} << 22;
};

/// Why a history is not linearizable.
struct Violation {
  std::string key;
  /// What went wrong, in a few words: "stale read", "lost acknowledged write", "duplicated
  /// element", "cas succeeded twice", "counter went backwards", "value never written",
  /// "value not yet written", "counter above its increments", "duplicate increment",
  /// "not linearizable" (no simpler diagnosis).
  std::string kind;
  /// Sentences naming the operations, their processes, times and lines.
  std::string explanation;
  /// The operations involved, the offending one first.
  std::vector<Operation> operations;
  /// For a violation found by the search: how many of the key's operations were invoked
  /// before the offending one returned (that prefix is not linearizable on its own).
  std::size_t prefix_operations = 0;
  /// When the offending operation ended (orders violations).
  std::int64_t time_ns = 0;
};

struct CheckResult {
  Verdict verdict = Verdict::Unknown;
  std::size_t operations = 0, ok = 0, failed = 0, unknown = 0, keys = 0;
  std::vector<Violation> violations;  // at most one per key, earliest first
  std::string gave_up;                // when the bound ran out: on which key, which bound
  std::uint64_t steps = 0;            // search steps spent over all keys
  std::string hardest_key;            // the key that took the most steps
  std::uint64_t hardest_key_steps = 0;
  double seconds = 0;
  /// One line: the counts, the verdict, and the first violation or why it gave up.
  std::string summary() const;
};

/// Checks a whole history. Throws HistoryError when one key is used both as a string and as
/// a list.
CheckResult check(const History& history, const CheckOptions& options = {});

/// One operation for people: "p3 read r7 -> 5 [1.000120 s, 1.000480 s] lines 17-19", times
/// in seconds since `origin_ns`.
std::string describe(const Operation& op, std::int64_t origin_ns);

// =========================================================================================
// Implementation
// =========================================================================================

namespace detail {

constexpr std::int64_t kOpenEnd = std::numeric_limits<std::int64_t>::max();

/// Until when an operation constrains the order: an acknowledged one until it returned; an
/// unknown one may take effect at any time after its invocation.
inline std::int64_t end_of(const Operation& op) { return op.outcome == Outcome::Ok ? op.complete_ns : kOpenEnd; }

inline bool is_cas_swap(const Operation& op) {  // a CAS that changed the value, or may have
  return op.function == Function::Cas && op.outcome != Outcome::Fail && !(op.result && op.result->text == "false");
}
inline bool is_cas_refused(const Operation& op) {
  return op.function == Function::Cas && op.outcome == Outcome::Ok && op.result && op.result->text == "false";
}
inline std::int64_t incr_delta(const Operation& op) {
  return op.args.empty() ? 1 : op.args[0].integer().value_or(0);
}

enum class Model { String, List };

/// The operations of one key, in invocation order.
struct KeyOps {
  std::string key;
  Model model = Model::String;
  std::vector<const Operation*> ops;
  std::int64_t last_invoke_ns = 0;  // of the ops that did not fail
  bool has(Function f) const {
    return std::any_of(ops.begin(), ops.end(), [f](const Operation* op) { return op->function == f; });
  }
  /// Nothing on the key began after it: a final read.
  bool is_last(const Operation& op) const { return op.invoke_ns >= last_invoke_ns; }
};

// ---- Words for people ----

inline std::string seconds_since(std::int64_t t, std::int64_t origin) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.6f s", static_cast<double>(t - origin) / 1e9);
  return buf;
}

inline std::string show(const Value& v) {
  if (!v.is_list()) return encode_value(v);
  const auto& items = v.items;
  if (items.size() <= 8) return encode_value(v);
  std::string out = "[";
  for (std::size_t i = 0; i < 3; ++i) out += encode_string(items[i]) + ",";
  out += "...(" + std::to_string(items.size() - 5) + " more)...";
  for (std::size_t i = items.size() - 2; i < items.size(); ++i) out += "," + encode_string(items[i]);
  return out + "] (" + std::to_string(items.size()) + " elements)";
}

inline std::string show_choices(const std::vector<std::string>& values, bool more) {
  std::string out;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += (i + 1 == values.size() && !more) ? " or " : ", ";
    out += values[i];
  }
  if (more) out += " or other values";
  return out.empty() ? "nothing" : out;
}

/// "[1.000120 s, 1.000480 s] (p3, line 19)"
inline std::string when(const Operation& op, std::int64_t origin) {
  std::string out = "[" + seconds_since(op.invoke_ns, origin) + ", ";
  out += op.outcome == Outcome::Ok || op.outcome == Outcome::Fail ? seconds_since(op.complete_ns, origin) : "open";
  out += "] (p" + std::to_string(op.process) + ", line " +
         std::to_string(op.complete_line ? op.complete_line : op.invoke_line) + ")";
  return out;
}

inline std::string what(const Operation& op) {
  std::string out = std::string(name(op.function)) + " " + encode_string(op.key);
  for (const Value& a : op.args) out += " " + show(a);
  return out;
}

inline std::string ns_text(std::int64_t t, std::int64_t origin) { return seconds_since(t, origin); }

// ---- The models' states, interned so a state is one 32-bit number ----

/// String values; id 0 is nil (a missing key), id kUnread stands for every value that no
/// read returns and no CAS expects (see KeySearch::build).
class StringStates {
 public:
  static constexpr std::uint32_t kUnread = 1;
  StringStates() {
    texts_.emplace_back();
    integers_.emplace_back(0);  // INCR on a missing key starts from 0
    texts_.emplace_back();      // kUnread: reachable through no string
    integers_.emplace_back(std::nullopt);
  }
  std::uint32_t id(const Value& v) { return v.is_nil() ? 0 : id(v.text); }
  std::uint32_t id(const std::string& s) {
    auto [it, added] = ids_.emplace(s, static_cast<std::uint32_t>(texts_.size()));
    if (added) {
      texts_.push_back(s);
      integers_.push_back(Value::of(s).integer());
    }
    return it->second;
  }
  std::uint32_t id(std::int64_t n) {
    auto it = by_integer_.find(n);
    if (it != by_integer_.end()) return it->second;
    const std::uint32_t i = id(std::to_string(n));
    by_integer_.emplace(n, i);
    return i;
  }
  const std::optional<std::int64_t>& integer(std::uint32_t id) const { return integers_[id]; }
  std::string text(std::uint32_t id) const {
    return id == 0 ? "nil" : id == kUnread ? "a value nothing reads" : show(Value::of(texts_[id]));
  }

 private:
  std::unordered_map<std::string, std::uint32_t> ids_;
  std::unordered_map<std::int64_t, std::uint32_t> by_integer_;
  std::vector<std::string> texts_;
  std::vector<std::optional<std::int64_t>> integers_;
};

/// Lists as nodes of a trie of pushes: a list is the node reached by pushing its elements in
/// order from the empty list (id 0), so equal lists have equal ids.
class ListStates {
 public:
  ListStates() { nodes_.push_back({0, 0, 0}); }
  std::uint32_t element(const std::string& e) {
    auto [it, added] = elements_.emplace(e, static_cast<std::uint32_t>(texts_.size()));
    if (added) texts_.push_back(e);
    return it->second;
  }
  std::uint32_t push(std::uint32_t list, std::uint32_t element) {
    const std::uint64_t edge = (std::uint64_t{list} << 32) | element;
    auto [it, added] = children_.emplace(edge, static_cast<std::uint32_t>(nodes_.size()));
    if (added) nodes_.push_back({list, element, nodes_[list].length + 1});
    return it->second;
  }
  std::uint32_t id(const std::vector<std::string>& items) {
    std::uint32_t list = 0;
    for (const std::string& e : items) list = push(list, element(e));
    return list;
  }
  std::uint32_t length(std::uint32_t list) const { return nodes_[list].length; }
  Value value(std::uint32_t list) const {
    std::vector<std::string> items(nodes_[list].length);
    for (std::uint32_t n = list; n != 0; n = nodes_[n].parent) items[nodes_[n].length - 1] = texts_[nodes_[n].element];
    return Value::list_of(std::move(items));
  }

 private:
  struct Node {
    std::uint32_t parent, element, length;
  };
  std::vector<Node> nodes_;
  std::unordered_map<std::uint64_t, std::uint32_t> children_;
  std::unordered_map<std::string, std::uint32_t> elements_;
  std::vector<std::string> texts_;
};

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// The configurations seen. A configuration is an exact part (a 128-bit fingerprint of the
/// acknowledged ops linearized, the unknown ops linearized that have no twin, the state and
/// the witness due) and, for the groups of interchangeable unknown ops, how many of each
/// were used. One that used no more of each group than one seen before, with the same exact
/// part, can do no more than it, so it counts as seen.
///
/// Two different exact parts share a fingerprint with probability about n^2 / 2^129 (below
/// 10^-20 for a billion of them); if they did, the search would skip a configuration, which
/// can only turn a pass into a reported violation, never a violation into a pass.
class Memo {
 public:
  Memo(std::size_t max_entries, std::size_t width) : max_entries_(max_entries), width_(width), slots_(1024) {}
  /// False when a configuration seen before dominates this one. When full it remembers
  /// nothing more (and so prunes less: the same verdict, later).
  bool insert(std::uint64_t a, std::uint64_t b, const std::uint32_t* counts) {
    a |= 1;  // a == 0 marks an empty slot
    std::size_t i = a & (slots_.size() - 1);
    for (; slots_[i].a != 0; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i].a != a || slots_[i].b != b) continue;
      for (std::uint32_t n = slots_[i].first; n != kNone; n = next_[n])
        if (std::equal(counts, counts + width_, counts_.begin() + static_cast<std::ptrdiff_t>(n * width_),
                       [](std::uint32_t mine, std::uint32_t seen) { return seen <= mine; }))
          return false;
      if (size_ >= max_entries_) return true;
      slots_[i].first = add_node(slots_[i].first, counts);
      return true;
    }
    if (size_ >= max_entries_) return true;
    if ((used_slots_ + 1) * 2 > slots_.size()) {
      grow();
      for (i = a & (slots_.size() - 1); slots_[i].a != 0; i = (i + 1) & (slots_.size() - 1)) {
      }
    }
    slots_[i] = {a, b, add_node(kNone, counts)};
    ++used_slots_;
    return true;
  }
  std::size_t size() const { return size_; }

 private:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  struct Slot {
    std::uint64_t a = 0, b = 0;
    std::uint32_t first = kNone;  // its list of counts seen
  };
  std::uint32_t add_node(std::uint32_t next, const std::uint32_t* counts) {
    next_.push_back(next);
    counts_.insert(counts_.end(), counts, counts + width_);
    ++size_;
    return static_cast<std::uint32_t>(next_.size() - 1);
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);  // slots_ is now the bigger, empty table
    for (const Slot& s : old) {
      if (s.a == 0) continue;
      std::size_t i = s.a & (slots_.size() - 1);
      while (slots_[i].a != 0) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = s;
    }
  }
  std::size_t max_entries_, width_, size_ = 0, used_slots_ = 0;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> next_;
  std::vector<std::uint32_t> counts_;  // width_ per node
};

/// Steps left over all keys, and the wall-clock deadline.
struct Budget {
  std::uint64_t steps_left = 0;
  std::uint64_t spent = 0;
  bool has_deadline = false;
  std::chrono::steady_clock::time_point deadline;
  bool timed_out = false;

  bool spend() {
    if (steps_left == 0 || timed_out) return false;
    --steps_left;
    ++spent;
    if ((spent & 4095) == 0 && has_deadline && std::chrono::steady_clock::now() >= deadline) {
      timed_out = true;
      return false;
    }
    return true;
  }
};

// ---- The search ----

/// One operation as the search sees it: what it does to the state, and when.
struct SearchOp {
  enum class Act : std::uint8_t { Read, Write, Swap, Refuse, Incr, Push, Lrange };
  const Operation* op = nullptr;
  bool must = true;  // acknowledged: must be linearized before it returned
  Act act = Act::Read;
  std::uint32_t a = 0, b = 0;  // Read/Lrange: the state it saw; Write: the new state;
                               // Swap/Refuse: expected, new; Incr: the state it returned
  std::int64_t delta = 0;
  std::optional<std::int64_t> returned;  // Incr: the new value; Push: the new length
  std::vector<std::uint32_t> elements;   // Push
  int group = -1;  // unknown ops: its group of ops with the same effect; acknowledged ops
                   // without a result to check: the group of unknown ops with their effect
  std::uint64_t z0 = 0, z1 = 0;          // its share of the linearized set's fingerprint

  /// Leaves every state as it is. (Not a write of the value the key holds now: in another
  /// state it changes something, so it cannot be moved freely.)
  bool observer() const { return act == Act::Read || act == Act::Lrange || act == Act::Refuse; }
};

enum class SearchResult { Linearizable, Violation, GaveUp };

/// The search for one key (see the top of the file).
///
/// Unknown operations are linearized only where something depends on them: an unknown op X
/// taken in state S must be followed at once by a witness, an op Y that is illegal in S or
/// leaves another state there than after X. Every linearization can be brought into that
/// form by dropping the unknown ops that have no witness (the order stays legal without
/// them), so searching only that form loses nothing. A configuration still waiting for its
/// witness is remembered apart from the same one that is not.
class KeySearch {
 public:
  KeySearch(const KeyOps& key, std::size_t max_memo_entries) : key_(key) {
    build();
    memo_.emplace(max_memo_entries, counted_.size());
  }

  SearchResult run(Budget& budget);

  /// After a violation: the operation no order got past, and the states the key could hold
  /// just before it had to be linearized.
  const Operation& blocking() const { return *ops_[static_cast<std::size_t>(entries_[frontier_].op)].op; }
  std::vector<std::string> frontier_states() const {
    std::vector<std::string> out;
    for (std::uint32_t s : frontier_states_)
      out.push_back(key_.model == Model::List ? show(lists_.value(s)) : strings_.text(s));
    return out;
  }
  /// For a list key: the first list the search found possible there.
  std::optional<Value> a_frontier_list() const {
    if (key_.model != Model::List || frontier_states_.empty()) return std::nullopt;
    return lists_.value(frontier_states_.front());
  }
  bool more_frontier_states() const { return frontier_states_more_; }
  std::uint64_t steps() const { return steps_; }

 private:
  static constexpr std::uint32_t kNoWitnessDue = std::numeric_limits<std::uint32_t>::max();

  /// An invocation or return of an acknowledged op, in a list of those not linearized yet.
  struct Entry {
    int op;
    bool is_return;
    int prev, next;
    std::int64_t t;
  };
  /// Unknown ops with the same effect, in invocation order: linearized earliest first
  /// (swapping two of them changes nothing), so the first `taken` are linearized.
  struct Group {
    std::vector<int> ops;
    std::uint32_t taken = 0;
    std::uint64_t offered = 0;  // the last call of add_unknown_candidates that considered it
    int slot = -1;              // its place in the memo's counts (twins only)
  };
  static constexpr std::size_t kMaxCountedGroups = 64;
  struct Frame {
    std::uint32_t state_before, witness_before;
    int chosen;  // the op this frame linearized (-1: none now)
    bool forced;
    bool unknown_added;            // its candidates include the unknown ops yet
    std::size_t begin, end, next;  // its candidates in pool_
    int frontier;                  // the return entry that made it choose
  };

  void build();
  void add_op(const Operation& op);
  bool step(std::uint32_t state, const SearchOp& op, std::uint32_t& next);
  /// Whether `op`, taking the state to `next`, may come now (see the class comment).
  bool allowed(const SearchOp& op, std::uint32_t next) {
    if (!op.must && next == state_) return false;  // an unknown op that changes nothing is never needed
    if (witness_due_ == kNoWitnessDue) return true;
    std::uint32_t without = 0;
    return !step(witness_due_, op, without) || without != next;
  }
  /// Remembers the configuration `op` leads to; false when one seen before dominates it.
  bool remember(const SearchOp& op, std::uint32_t next) {
    const std::uint64_t witness_after = op.must ? kNoWitnessDue : state_;
    const std::uint64_t s = splitmix64((witness_after << 32) | next);
    for (std::size_t i = 0; i < counted_.size(); ++i) counts_[i] = groups_[static_cast<std::size_t>(counted_[i])].taken;
    if (!op.must && groups_[static_cast<std::size_t>(op.group)].slot >= 0)
      ++counts_[static_cast<std::size_t>(groups_[static_cast<std::size_t>(op.group)].slot)];
    return memo_->insert(hash0_ ^ op.z0 ^ s, hash1_ ^ op.z1 ^ splitmix64(s + 0x632BE59BD9B4E019ull), counts_.data());
  }
  /// Tries `c` from the current configuration: true when it moved there.
  bool try_op(int c, Budget& budget, bool& gave_up);
  void apply(int c, std::uint32_t next);
  void undo(const Frame& f);
  void unlink(int e) {
    entries_[static_cast<std::size_t>(entries_[e].prev)].next = entries_[e].next;
    if (entries_[e].next >= 0) entries_[static_cast<std::size_t>(entries_[e].next)].prev = entries_[e].prev;
  }
  void relink(int e) {
    entries_[static_cast<std::size_t>(entries_[e].prev)].next = e;
    if (entries_[e].next >= 0) entries_[static_cast<std::size_t>(entries_[e].next)].prev = e;
  }
  void add_unknown_candidates(Frame& f);
  void note_frontier(int frontier, std::uint32_t state);
  bool back_to_a_choice();
  std::optional<SearchResult> advance(Budget& budget);  // nullopt: moved to a new configuration
  /// A string value's state: values nothing observes are all one state, kUnread.
  std::uint32_t string_state(const Value& v) {
    if (v.is_nil()) return 0;
    if (merge_unread_ && observed_.count(v.text) == 0) return StringStates::kUnread;
    return strings_.id(v.text);
  }

  const KeyOps& key_;
  // Registers: the values some read returns or some CAS expects. Every other value behaves
  // alike for every op of the history (reads and CASes of it fail, refused CASes pass,
  // writes replace it), so the search does not tell them apart.
  bool merge_unread_ = false;
  std::unordered_set<std::string> observed_;
  StringStates strings_;
  ListStates lists_;
  std::vector<SearchOp> ops_;
  std::vector<Entry> entries_;  // [0] is the head; then events in time order
  std::vector<int> call_entry_, return_entry_;
  std::vector<Group> groups_;
  // Registers: the groups by the value they set. Set only when no op on the key increments.
  bool by_value_ = false;
  std::unordered_map<std::uint32_t, std::vector<int>> groups_setting_;
  std::uint64_t offers_ = 0;
  std::vector<std::uint32_t> wanted_;
  std::size_t remaining_ = 0;  // acknowledged ops not linearized yet
  std::uint32_t state_ = 0;
  std::uint32_t witness_due_ = kNoWitnessDue;  // the state before an unknown op just taken
  std::uint64_t hash0_ = 0, hash1_ = 0;
  std::vector<int> counted_;           // the groups with a slot in the memo's counts
  std::vector<std::uint32_t> counts_;  // scratch: the counts of a configuration
  std::vector<Frame> frames_;
  std::vector<int> pool_;
  std::optional<Memo> memo_;
  std::uint64_t steps_ = 0;
  int frontier_ = -1;
  std::vector<std::uint32_t> frontier_states_;
  bool frontier_states_more_ = false;
};

/// Whether some lrange holds one of the elements an rpush pushes.
inline bool shows_any(const Operation& rpush, const std::unordered_map<std::string, bool>& listed) {
  return std::any_of(rpush.args.begin(), rpush.args.end(), [&](const Value& e) { return listed.count(e.text) != 0; });
}

inline void KeySearch::build() {
  // Which unknown writes can be dropped (see the top of the file).
  merge_unread_ = key_.model == Model::String && !key_.has(Function::Incr);
  bool string_drops = merge_unread_;
  std::unordered_map<std::string, bool> listed;  // elements some lrange holds
  std::unordered_map<std::string, int> pushed;   // how many rpushes (not failed) push each element
  for (const Operation* op : key_.ops) {
    if (op->function == Function::Rpush && op->outcome != Outcome::Fail)
      for (const Value& e : op->args) ++pushed[e.text];
    if (op->outcome == Outcome::Fail) continue;
    if (op->function == Function::Read && op->outcome == Outcome::Ok && op->result && op->result->is_string())
      observed_.insert(op->result->text);
    if (op->function == Function::Cas && op->args[0].is_string()) observed_.insert(op->args[0].text);
    if (is_cas_refused(*op)) string_drops = false;
    if (op->function == Function::Lrange && op->outcome == Outcome::Ok)
      for (const std::string& e : op->result->items) listed[e] = true;
  }
  const bool unique = std::all_of(pushed.begin(), pushed.end(), [](const auto& p) { return p.second == 1; });
  // The last time an rpush that reports a length, and that no lrange could have followed,
  // returned (see below).
  std::int64_t last_counting_push = std::numeric_limits<std::int64_t>::min();
  for (const Operation* o : key_.ops)
    if (o->function == Function::Rpush && o->outcome == Outcome::Ok && o->result && (!unique || !shows_any(*o, listed)))
      last_counting_push = std::max(last_counting_push, o->complete_ns);
  for (const Operation* op : key_.ops) {
    if (op->outcome == Outcome::Fail) continue;  // never happened
    if (op->outcome == Outcome::Info) {
      if (op->function == Function::Read || op->function == Function::Lrange) continue;  // no effect
      if (op->function == Function::Cas && op->args[0] == op->args[1]) continue;
      if (string_drops && (op->function == Function::Write || op->function == Function::Cas)) {
        const std::string& v = op->function == Function::Write ? op->args[0].text : op->args[1].text;
        if (observed_.count(v) == 0) continue;
      }
      if (op->function == Function::Rpush && !shows_any(*op, listed)) {
        // If it happened, no lrange came after it (they would hold it); so the only ops
        // after it are rpushes no lrange shows either (with unique elements: one that an
        // lrange shows came before that lrange). Without it their lengths are one less:
        // it can go unless such an rpush reports a length.
        if (last_counting_push < op->invoke_ns) continue;
      }
    }
    add_op(*op);
  }

  std::map<std::tuple<int, std::uint32_t, std::uint32_t, std::int64_t, std::vector<std::uint32_t>>, int> group_of;
  auto effect = [](const SearchOp& s) { return std::make_tuple(static_cast<int>(s.act), s.a, s.b, s.delta, s.elements); };
  for (std::size_t i = 0; i < ops_.size(); ++i) {
    SearchOp& s = ops_[i];
    s.z0 = splitmix64(2 * i + 1);
    s.z1 = splitmix64(2 * i + 2 + 0x5851F42D4C957F2Dull);
    if (s.must) continue;
    auto [it, added] = group_of.emplace(std::make_tuple(static_cast<int>(s.act), s.a, s.b, s.delta, s.elements),
                                        static_cast<int>(groups_.size()));
    if (added) groups_.emplace_back();
    s.group = it->second;
    groups_[static_cast<std::size_t>(s.group)].ops.push_back(static_cast<int>(i));  // ops_ is in invocation order
    if (added && (s.act == SearchOp::Act::Write || s.act == SearchOp::Act::Swap))
      groups_setting_[s.act == SearchOp::Act::Write ? s.a : s.b].push_back(s.group);
  }
  for (SearchOp& s : ops_)
    if (s.must && !s.returned && (s.act == SearchOp::Act::Write || s.act == SearchOp::Act::Swap || s.act == SearchOp::Act::Push))
      if (const auto it = group_of.find(effect(s)); it != group_of.end()) s.group = it->second;
  // The biggest groups of twins are counted in the memo instead of fingerprinted one by one.
  std::vector<int> twins;
  for (std::size_t g = 0; g < groups_.size(); ++g)
    if (groups_[g].ops.size() >= 2) twins.push_back(static_cast<int>(g));
  std::stable_sort(twins.begin(), twins.end(), [&](int x, int y) {
    return groups_[static_cast<std::size_t>(x)].ops.size() > groups_[static_cast<std::size_t>(y)].ops.size();
  });
  if (twins.size() > kMaxCountedGroups) twins.resize(kMaxCountedGroups);
  for (int g : twins) {
    groups_[static_cast<std::size_t>(g)].slot = static_cast<int>(counted_.size());
    counted_.push_back(g);
    for (int op : groups_[static_cast<std::size_t>(g)].ops) ops_[static_cast<std::size_t>(op)].z0 = ops_[static_cast<std::size_t>(op)].z1 = 0;
  }
  counts_.assign(counted_.size(), 0);
  by_value_ = key_.model == Model::String && !key_.has(Function::Incr);

  // Acknowledged ops' events in time order; at equal times invocations first (concurrent:
  // the lenient reading).
  struct Event {
    std::int64_t t;
    bool is_return;
    int op;
  };
  std::vector<Event> events;
  for (std::size_t i = 0; i < ops_.size(); ++i)
    if (ops_[i].must) {
      events.push_back({ops_[i].op->invoke_ns, false, static_cast<int>(i)});
      events.push_back({ops_[i].op->complete_ns, true, static_cast<int>(i)});
    }
  std::sort(events.begin(), events.end(), [](const Event& x, const Event& y) {
    if (x.t != y.t) return x.t < y.t;
    if (x.is_return != y.is_return) return !x.is_return;
    return x.op < y.op;
  });
  entries_.push_back({-1, false, -1, events.empty() ? -1 : 1, 0});
  call_entry_.assign(ops_.size(), -1);
  return_entry_.assign(ops_.size(), -1);
  for (std::size_t i = 0; i < events.size(); ++i) {
    const int e = static_cast<int>(i + 1);
    entries_.push_back({events[i].op, events[i].is_return, e - 1, i + 1 < events.size() ? e + 1 : -1, events[i].t});
    (events[i].is_return ? return_entry_ : call_entry_)[static_cast<std::size_t>(events[i].op)] = e;
  }
  remaining_ = events.size() / 2;
}

inline void KeySearch::add_op(const Operation& op) {
  using Act = SearchOp::Act;
  SearchOp s;
  s.op = &op;
  s.must = op.outcome == Outcome::Ok;
  switch (op.function) {
    case Function::Read:
      s.act = Act::Read;
      s.a = string_state(*op.result);
      break;
    case Function::Write:
      s.act = Act::Write;
      s.a = string_state(op.args[0]);
      break;
    case Function::Cas:
      s.act = is_cas_refused(op) ? Act::Refuse : Act::Swap;
      s.a = string_state(op.args[0]);
      s.b = string_state(op.args[1]);
      break;
    case Function::Incr:
      s.act = Act::Incr;
      s.delta = incr_delta(op);
      if (s.must) {
        s.returned = op.result->integer();
        s.b = strings_.id(*s.returned);
      }
      break;
    case Function::Rpush:
      s.act = Act::Push;
      for (const Value& e : op.args) s.elements.push_back(lists_.element(e.text));
      if (s.must && op.result) s.returned = op.result->integer();
      break;
    case Function::Lrange:
      s.act = Act::Lrange;
      s.a = lists_.id(op.result->items);
      break;
  }
  ops_.push_back(std::move(s));
}

inline bool KeySearch::step(std::uint32_t state, const SearchOp& op, std::uint32_t& next) {
  using Act = SearchOp::Act;
  switch (op.act) {
    case Act::Read:
    case Act::Lrange:
      next = state;
      return state == op.a;
    case Act::Write:
      next = op.a;
      return true;
    case Act::Swap:
      next = op.b;
      return state == op.a;
    case Act::Refuse:
      next = state;
      return state != op.a;
    case Act::Incr: {
      const std::optional<std::int64_t>& v = strings_.integer(state);
      if (!v) return false;  // INCR of a value that is not an integer fails
      if ((op.delta > 0 && *v > std::numeric_limits<std::int64_t>::max() - op.delta) ||
          (op.delta < 0 && *v < std::numeric_limits<std::int64_t>::min() - op.delta))
        return false;
      const std::int64_t n = *v + op.delta;
      if (op.returned) {
        if (n != *op.returned) return false;
        next = op.b;
      } else {
        next = strings_.id(n);
      }
      return true;
    }
    case Act::Push:
      if (op.returned && lists_.length(state) + op.elements.size() != static_cast<std::uint64_t>(*op.returned))
        return false;
      next = state;
      for (std::uint32_t e : op.elements) next = lists_.push(next, e);
      return true;
  }
  return false;
}

inline void KeySearch::apply(int c, std::uint32_t next) {
  const SearchOp& s = ops_[static_cast<std::size_t>(c)];
  hash0_ ^= s.z0;
  hash1_ ^= s.z1;
  if (s.must) {
    unlink(call_entry_[static_cast<std::size_t>(c)]);
    unlink(return_entry_[static_cast<std::size_t>(c)]);
    --remaining_;
  } else {
    ++groups_[static_cast<std::size_t>(s.group)].taken;
  }
  witness_due_ = s.must ? kNoWitnessDue : state_;
  state_ = next;
}

inline void KeySearch::undo(const Frame& f) {
  const SearchOp& s = ops_[static_cast<std::size_t>(f.chosen)];
  hash0_ ^= s.z0;
  hash1_ ^= s.z1;
  if (s.must) {
    relink(return_entry_[static_cast<std::size_t>(f.chosen)]);
    relink(call_entry_[static_cast<std::size_t>(f.chosen)]);
    ++remaining_;
  } else {
    --groups_[static_cast<std::size_t>(s.group)].taken;
  }
  state_ = f.state_before;
  witness_due_ = f.witness_before;
}

inline bool KeySearch::try_op(int c, Budget& budget, bool& gave_up) {
  ++steps_;
  if (!budget.spend()) {
    gave_up = true;
    return false;
  }
  const SearchOp& op = ops_[static_cast<std::size_t>(c)];
  std::uint32_t next = 0;
  if (!step(state_, op, next) || !allowed(op, next)) return false;
  if (!remember(op, next)) return false;  // that configuration, or a stronger one, failed before
  Frame& f = frames_.back();
  f.chosen = c;
  apply(c, next);
  return true;
}

/// The unknown ops invoked before the frame's frontier (the first not taken of each group)
/// that may start a linearization from here.
///
/// On a register, an unknown op taken now must be followed by its witness (see the class
/// comment): a read of the value it sets, a CAS from it, an unknown CAS from it (which needs
/// its own witness in turn), or a refused CAS that the current value would fail. Writes
/// witness nothing. So unless a refused CAS of the current value waits, only unknown ops
/// that set a value some candidate needs, or that an unknown CAS setting such a value needs
/// (and so on), can come first.
inline void KeySearch::add_unknown_candidates(Frame& f) {
  f.unknown_added = true;
  const std::int64_t t = entries_[static_cast<std::size_t>(f.frontier)].t;
  auto offer = [&](Group& g) {
    if (g.offered == offers_) return false;
    g.offered = offers_;
    if (g.taken == g.ops.size() || ops_[static_cast<std::size_t>(g.ops[g.taken])].op->invoke_ns > t) return false;
    pool_.push_back(g.ops[g.taken]);
    return true;
  };
  ++offers_;
  // An unknown op is never needed while an acknowledged one with the same effect (and no
  // result to check) is a candidate: in any linearization the two can trade places (the
  // acknowledged one may go earlier, the unknown one later, or nowhere if nothing there
  // depends on it).
  for (std::size_t i = f.begin; i < f.end; ++i) {
    const SearchOp& op = ops_[static_cast<std::size_t>(pool_[i])];
    if (op.must && op.group >= 0) groups_[static_cast<std::size_t>(op.group)].offered = offers_;
  }
  bool anything = !by_value_;
  wanted_.clear();
  for (std::size_t i = f.begin; i < f.end && !anything; ++i) {
    const SearchOp& op = ops_[static_cast<std::size_t>(pool_[i])];
    if (op.act == SearchOp::Act::Refuse && op.a == state_) anything = true;
    if (op.act != SearchOp::Act::Write) wanted_.push_back(op.a);  // read, CAS or refused CAS
  }
  if (anything) {
    for (Group& g : groups_) offer(g);
  } else {
    for (std::size_t w = 0; w < wanted_.size(); ++w) {
      const auto it = groups_setting_.find(wanted_[w]);
      if (it == groups_setting_.end()) continue;
      for (int gi : it->second) {
        Group& g = groups_[static_cast<std::size_t>(gi)];
        const SearchOp& head = ops_[static_cast<std::size_t>(g.ops.front())];
        if (offer(g) && head.act == SearchOp::Act::Swap) wanted_.push_back(head.a);
      }
    }
  }
  f.end = pool_.size();
}

inline void KeySearch::note_frontier(int frontier, std::uint32_t state) {
  constexpr std::size_t kMaxStates = 8;
  if (frontier > frontier_) {
    frontier_ = frontier;
    frontier_states_.clear();
    frontier_states_more_ = false;
  }
  if (frontier < frontier_) return;
  if (std::find(frontier_states_.begin(), frontier_states_.end(), state) != frontier_states_.end()) return;
  if (frontier_states_.size() < kMaxStates)
    frontier_states_.push_back(state);
  else
    frontier_states_more_ = true;
}

/// The configuration reached by the top frame's choice failed: undo choices until one with
/// alternatives left. False when none is left (the history is not linearizable).
inline bool KeySearch::back_to_a_choice() {
  while (!frames_.empty()) {
    Frame& f = frames_.back();
    undo(f);
    f.chosen = -1;
    if (!f.forced) return true;
    pool_.resize(f.begin);
    frames_.pop_back();  // a forced step was no choice: the configuration before it fails too
  }
  return false;
}

/// Tries the top frame's remaining candidates (the unknown ops last, gathered only then);
/// when they are exhausted, that configuration fails and the search backs up.
inline std::optional<SearchResult> KeySearch::advance(Budget& budget) {
  for (;;) {
    Frame& f = frames_.back();
    for (;;) {
      if (f.next == f.end) {
        if (f.unknown_added) break;
        add_unknown_candidates(f);
        continue;
      }
      bool gave_up = false;
      if (try_op(pool_[f.next++], budget, gave_up)) return std::nullopt;
      if (gave_up) return SearchResult::GaveUp;
    }
    note_frontier(f.frontier, state_);
    pool_.resize(f.begin);
    frames_.pop_back();
    if (!back_to_a_choice()) return SearchResult::Violation;
  }
}

inline SearchResult KeySearch::run(Budget& budget) {
  for (;;) {
    if (remaining_ == 0) return SearchResult::Linearizable;

    // The first return of an acknowledged op not linearized yet, and the acknowledged ops
    // invoked before it.
    int frontier = entries_[0].next;
    const std::size_t begin = pool_.size();
    for (; !entries_[static_cast<std::size_t>(frontier)].is_return; frontier = entries_[static_cast<std::size_t>(frontier)].next)
      pool_.push_back(entries_[static_cast<std::size_t>(frontier)].op);
    frames_.push_back({state_, witness_due_, -1, false, false, begin, pool_.size(), begin, frontier});

    // A legal observer goes now, with no alternatives to try.
    bool forced = false, dead = false;
    for (std::size_t i = begin; i < pool_.size(); ++i) {
      const int c = pool_[i];
      const SearchOp& op = ops_[static_cast<std::size_t>(c)];
      if (!op.observer()) continue;
      ++steps_;
      if (!budget.spend()) return SearchResult::GaveUp;
      std::uint32_t next = 0;
      if (!step(state_, op, next) || !allowed(op, next)) continue;
      if (!remember(op, next)) {
        dead = true;  // the configuration after it failed before, so this one fails
      } else {
        Frame& f = frames_.back();
        f.forced = true;
        f.end = f.next = begin;
        f.chosen = c;
        apply(c, next);
        forced = true;
      }
      break;
    }
    if (forced) {
      pool_.resize(begin);
      continue;
    }
    if (dead) {
      note_frontier(frontier, state_);
      pool_.resize(begin);
      frames_.pop_back();
      if (!back_to_a_choice()) return SearchResult::Violation;
    } else {
      // The op that must be linearized now first, then the other acknowledged ones.
      const int own = entries_[static_cast<std::size_t>(frontier)].op;
      std::stable_partition(pool_.begin() + static_cast<std::ptrdiff_t>(begin), pool_.end(), [&](int c) {
        return c == own;
      });
    }
    if (const auto ended = advance(budget)) return *ended;
  }
}

// ---- Diagnoses ----

/// Builds a Violation for one key.
class Diagnosis {
 public:
  Diagnosis(const KeyOps& key, std::int64_t origin) : key_(key), origin_(origin) {}

  Violation make(const Operation& offending, std::string kind, std::string explanation,
                 std::vector<const Operation*> involved = {}) const {
    Violation v;
    v.key = key_.key;
    v.kind = std::move(kind);
    v.explanation = std::move(explanation);
    v.time_ns = offending.outcome == Outcome::Ok ? offending.complete_ns : offending.invoke_ns;
    v.operations.push_back(offending);
    for (const Operation* op : involved) {
      constexpr std::size_t kMaxOperations = 12;
      if (v.operations.size() >= kMaxOperations) break;
      if (op == &offending) continue;
      if (std::any_of(v.operations.begin(), v.operations.end(), [&](const Operation& o) {
            return o.invoke_line == op->invoke_line && o.process == op->process && o.invoke_ns == op->invoke_ns;
          }))
        continue;
      v.operations.push_back(*op);
    }
    return v;
  }
  std::string at(const Operation& op) const { return when(op, origin_); }
  std::string time(std::int64_t t) const { return ns_text(t, origin_); }
  const KeyOps& key() const { return key_; }

  /// The ops on the key overlapping `op` in time (besides it).
  std::vector<const Operation*> concurrent_with(const Operation& op) const {
    std::vector<const Operation*> out;
    for (const Operation* o : key_.ops)
      if (o != &op && o->outcome != Outcome::Fail && o->invoke_ns <= end_of(op) && end_of(*o) >= op.invoke_ns)
        out.push_back(o);
    return out;
  }

 private:
  const KeyOps& key_;
  std::int64_t origin_;
};

/// The value an op gives a string key when it takes effect, if it sets one.
inline std::optional<Value> value_set_by(const Operation& op) {
  if (op.outcome == Outcome::Fail) return std::nullopt;
  if (op.function == Function::Write) return op.args[0];
  if (is_cas_swap(op)) return op.args[1];
  if (op.function == Function::Incr && op.outcome == Outcome::Ok) return op.result;
  return std::nullopt;
}

inline std::vector<const Operation*> producers_of(const KeyOps& key, const Value& v) {
  std::vector<const Operation*> out;
  for (const Operation* op : key.ops)
    if (auto set = value_set_by(*op); set && *set == v) out.push_back(op);
  return out;
}

/// Registers (string keys without increments): reads and CASes of values nothing wrote, and
/// CASes that consumed the same value more often than it was written.
inline std::vector<Violation> check_register(const KeyOps& key, const Diagnosis& d) {
  std::vector<Violation> found;
  if (key.has(Function::Incr)) return found;
  const std::string k = encode_string(key.key);
  std::unordered_map<std::string, std::vector<const Operation*>> producers;  // by encoded value
  for (const Operation* op : key.ops)
    if (auto set = value_set_by(*op)) producers[encode_value(*set)].push_back(op);
  static const std::vector<const Operation*> kNone;
  auto producers_of_value = [&](const Value& v) -> const std::vector<const Operation*>& {
    const auto it = producers.find(encode_value(v));
    return it == producers.end() ? kNone : it->second;
  };
  for (const Operation* op : key.ops) {
    if (op->outcome != Outcome::Ok) continue;
    std::optional<Value> seen;
    std::string doing;
    if (op->function == Function::Read) {
      seen = op->result;
      doing = "read of " + k + " returned " + show(*seen);
    } else if (is_cas_swap(*op)) {
      seen = op->args[0];
      doing = "cas of " + k + " from " + show(op->args[0]) + " to " + show(op->args[1]) + " succeeded";
    }
    if (!seen || seen->is_nil()) continue;
    const auto& sources = producers_of_value(*seen);
    if (sources.empty()) {
      found.push_back(d.make(*op, "value never written",
                             doing + " at " + d.at(*op) + ", but no operation ever wrote " + show(*seen) + " to " + k));
      continue;
    }
    const Operation* first = *std::min_element(sources.begin(), sources.end(), [](auto* a, auto* b) {
      return a->invoke_ns < b->invoke_ns;
    });
    if (first->invoke_ns > op->complete_ns)
      found.push_back(d.make(*op, "value not yet written",
                             doing + " at " + d.at(*op) + ", but the first write of " + show(*seen) + " began at " +
                                 d.time(first->invoke_ns) + ", after it ended",
                             {first}));
  }

  // Each successful CAS from E (to something else) ends one period of the key holding E, and
  // each period began with an operation that set E (or, for nil, with the empty start).
  std::map<std::string, std::vector<const Operation*>> swaps;  // by encoded expected value
  for (const Operation* op : key.ops)
    if (op->outcome == Outcome::Ok && is_cas_swap(*op) && op->args[0] != op->args[1])
      swaps[encode_value(op->args[0])].push_back(op);
  for (const auto& [expected_text, ops] : swaps) {
    const Value& expected = ops.front()->args[0];
    const auto& sources = producers_of_value(expected);
    const std::size_t periods = sources.size() + (expected.is_nil() ? 1 : 0);
    if (ops.size() <= periods) continue;
    const Operation* last = *std::max_element(ops.begin(), ops.end(), [](auto* a, auto* b) {
      return a->complete_ns < b->complete_ns;
    });
    std::string list;
    for (const Operation* op : ops) list += (list.empty() ? "" : "; ") + what(*op) + " " + d.at(*op);
    std::string origins = expected.is_nil() ? "the key starting out missing" : "";
    for (const Operation* p : sources) origins += (origins.empty() ? "" : "; ") + what(*p) + " " + d.at(*p);
    std::vector<const Operation*> involved = ops;
    involved.insert(involved.end(), sources.begin(), sources.end());
    found.push_back(d.make(*last, "cas succeeded twice",
                           std::to_string(ops.size()) + " CASes of " + k + " from " + show(expected) +
                               " succeeded (" + list + "), but only " + std::to_string(periods) +
                               " operation(s) ever gave " + k + " that value (" + origins + ")",
                           involved));
  }
  return found;
}

/// Counters (string keys changed only by increments, all by positive deltas).
inline std::vector<Violation> check_counter(const KeyOps& key, const Diagnosis& d) {
  std::vector<Violation> found;
  if (!key.has(Function::Incr) || key.has(Function::Write) || key.has(Function::Cas)) return found;
  for (const Operation* op : key.ops)
    if (op->function == Function::Incr && incr_delta(*op) <= 0) return found;
  const std::string k = encode_string(key.key);

  struct Observation {
    const Operation* op;
    std::int64_t before, after;  // the counter just before and just after it
  };
  std::vector<Observation> obs;
  std::map<std::int64_t, const Operation*> incr_results;
  for (const Operation* op : key.ops) {
    if (op->outcome != Outcome::Ok) continue;
    if (op->function == Function::Read) {
      std::int64_t v = 0;
      if (!op->result->is_nil()) {
        auto n = op->result->integer();
        if (!n) {
          found.push_back(d.make(*op, "value never written",
                                 "read of counter " + k + " returned " + show(*op->result) + " at " + d.at(*op) +
                                     ", which is not a number: only increments change " + k));
          continue;
        }
        v = *n;
      }
      obs.push_back({op, v, v});
    } else if (op->function == Function::Incr) {
      const std::int64_t r = *op->result->integer();
      obs.push_back({op, r - incr_delta(*op), r});
      auto [it, added] = incr_results.emplace(r, op);
      if (!added)
        found.push_back(d.make(*op, "duplicate increment",
                               "incr of " + k + " at " + d.at(*op) + " and incr at " + d.at(*it->second) +
                                   " both returned " + std::to_string(r),
                               {it->second}));
    }
  }
  auto doing = [&](const Observation& o) {
    const bool final_read = o.op->function == Function::Read && key.is_last(*o.op);
    return (final_read ? "the final read of counter " : std::string(name(o.op->function)) + " of counter ") + k +
           " returned " + std::to_string(o.after) + " at " + d.at(*o.op);
  };

  // Sweep in invocation order, adding what ended before each began.
  std::vector<const Operation*> by_end;
  for (const Operation* op : key.ops)
    if (op->outcome == Outcome::Ok && (op->function == Function::Incr || op->function == Function::Read))
      by_end.push_back(op);
  std::sort(by_end.begin(), by_end.end(), [](auto* a, auto* b) { return a->complete_ns < b->complete_ns; });
  std::map<const Operation*, std::int64_t> after_of;
  for (const Observation& o : obs) after_of[o.op] = o.after;
  std::vector<Observation> by_start = obs;
  std::sort(by_start.begin(), by_start.end(), [](const Observation& a, const Observation& b) {
    return a.op->invoke_ns < b.op->invoke_ns;
  });
  std::size_t ended = 0;
  std::int64_t acknowledged = 0, acknowledged_count = 0, highest = std::numeric_limits<std::int64_t>::min();
  const Operation* highest_op = nullptr;
  for (const Observation& o : by_start) {
    for (; ended < by_end.size() && by_end[ended]->complete_ns < o.op->invoke_ns; ++ended) {
      const Operation* e = by_end[ended];
      if (e->function == Function::Incr) acknowledged += incr_delta(*e), ++acknowledged_count;
      if (auto it = after_of.find(e); it != after_of.end() && it->second > highest) highest = it->second, highest_op = e;
    }
    // A final read below the acknowledged increments lost them; any other observation
    // below an earlier one is first of all a step backwards (the next may be fine again).
    const bool final_read = o.op->function == Function::Read && key.is_last(*o.op);
    if (!(final_read && o.before < acknowledged) && highest_op != nullptr && o.before < highest) {
      found.push_back(d.make(*o.op, "counter went backwards",
                             doing(o) + (o.op->function == Function::Incr
                                             ? " (so it was " + std::to_string(o.before) + " before)"
                                             : std::string()) +
                                 ", but " + std::string(name(highest_op->function)) + " at " + d.at(*highest_op) +
                                 " had returned " + std::to_string(highest) + " before it began",
                             {highest_op}));
    } else if (o.before < acknowledged) {
      found.push_back(d.make(*o.op, "lost acknowledged write",
                             doing(o) + ", but " + std::to_string(acknowledged_count) +
                                 " acknowledged increments adding up to " + std::to_string(acknowledged) +
                                 " had ended before it began: acknowledged increments were lost"));
    }
  }

  // Sweep in completion order, adding every increment begun before each ended.
  std::vector<const Operation*> incrs;
  for (const Operation* op : key.ops)
    if (op->function == Function::Incr && op->outcome != Outcome::Fail) incrs.push_back(op);
  std::sort(incrs.begin(), incrs.end(), [](auto* a, auto* b) { return a->invoke_ns < b->invoke_ns; });
  std::vector<Observation> by_finish = obs;
  std::sort(by_finish.begin(), by_finish.end(), [](const Observation& a, const Observation& b) {
    return a.op->complete_ns < b.op->complete_ns;
  });
  std::size_t begun = 0;
  std::int64_t possible = 0, unknown_count = 0, ok_count = 0;
  for (const Observation& o : by_finish) {
    for (; begun < incrs.size() && incrs[begun]->invoke_ns <= o.op->complete_ns; ++begun) {
      possible += incr_delta(*incrs[begun]);
      (incrs[begun]->outcome == Outcome::Ok ? ok_count : unknown_count) += 1;
    }
    if (o.after > possible)
      found.push_back(d.make(*o.op, "counter above its increments",
                             doing(o) + ", but all increments begun before it ended add up to " +
                                 std::to_string(possible) + " (" + std::to_string(ok_count) + " acknowledged, " +
                                 std::to_string(unknown_count) + " unknown)"));
  }
  return found;
}

/// Lists: every lrange holds pushed elements only, each at most as often as pushed, and every
/// element whose rpush was acknowledged before the lrange began.
inline std::vector<Violation> check_list(const KeyOps& key, const Diagnosis& d) {
  std::vector<Violation> found;
  const std::string k = encode_string(key.key);
  std::unordered_map<std::string, std::vector<const Operation*>> pushes;  // element -> rpushes (ok, info)
  std::vector<const Operation*> acked;
  for (const Operation* op : key.ops) {
    if (op->function != Function::Rpush || op->outcome == Outcome::Fail) continue;
    for (const Value& e : op->args) pushes[e.text].push_back(op);
    if (op->outcome == Outcome::Ok) acked.push_back(op);
  }
  std::sort(acked.begin(), acked.end(), [](auto* a, auto* b) { return a->complete_ns < b->complete_ns; });
  std::vector<const Operation*> reads;
  for (const Operation* op : key.ops)
    if (op->function == Function::Lrange && op->outcome == Outcome::Ok) reads.push_back(op);
  std::sort(reads.begin(), reads.end(), [](auto* a, auto* b) { return a->invoke_ns < b->invoke_ns; });

  std::unordered_map<std::string, std::size_t> acked_count;  // pushes acknowledged before the read
  std::vector<std::pair<std::string, const Operation*>> acked_elements;
  std::size_t next_acked = 0;
  for (const Operation* read : reads) {
    for (; next_acked < acked.size() && acked[next_acked]->complete_ns < read->invoke_ns; ++next_acked)
      for (const Value& e : acked[next_acked]->args) {
        ++acked_count[e.text];
        acked_elements.emplace_back(e.text, acked[next_acked]);
      }
    const std::string doing = (key.is_last(*read) ? "the final lrange of " : "lrange of ") + k + " at " + d.at(*read);
    std::unordered_map<std::string, std::size_t> held;
    for (const std::string& e : read->result->items) ++held[e];
    bool bad = false;
    for (const std::string& e : read->result->items) {  // in list order: the same report everywhere
      const std::size_t n = held[e];
      const auto it = pushes.find(e);
      const std::size_t pushed = it == pushes.end() ? 0 : it->second.size();
      if (pushed == 0) {
        found.push_back(d.make(*read, "value never written",
                               doing + " holds " + encode_string(e) + ", which no rpush ever pushed"));
        bad = true;
        break;
      }
      if (n > pushed) {
        found.push_back(d.make(*read, "duplicated element",
                               doing + " holds " + encode_string(e) + " " + std::to_string(n) + " times, but it was pushed " +
                                   (pushed == 1 ? std::string("once") : std::to_string(pushed) + " times") + " (" +
                                   what(*it->second.front()) + " " + d.at(*it->second.front()) + ")",
                               it->second));
        bad = true;
        break;
      }
    }
    if (bad) continue;
    for (const auto& [e, pusher] : acked_elements) {
      const auto h = held.find(e);
      if (h != held.end() && h->second >= acked_count[e]) continue;
      found.push_back(d.make(*read, "lost acknowledged write",
                             doing + " is missing " + encode_string(e) + ", whose " + what(*pusher) + " " + d.at(*pusher) +
                                 " was acknowledged before the read began",
                             {pusher}));
      break;
    }
  }
  return found;
}

/// A sentence for the operation the search could not get past.
inline Violation explain_search(const KeySearch& search, const Diagnosis& d, std::size_t prefix) {
  const Operation& op = search.blocking();
  const KeyOps& key = d.key();
  const std::string k = encode_string(key.key);
  const std::string could = show_choices(search.frontier_states(), search.more_frontier_states());
  std::vector<const Operation*> involved = d.concurrent_with(op);
  auto done = [&](std::string kind, std::string text, std::vector<const Operation*> first = {}) {
    first.insert(first.end(), involved.begin(), involved.end());
    Violation v = d.make(op, std::move(kind), std::move(text), first);
    v.prefix_operations = prefix;
    return v;
  };

  if (op.function == Function::Read && !key.has(Function::Incr)) {
    // Stale: every write of the value read was followed by an acknowledged write of another
    // value that ended before the read began.
    const Value& v = *op.result;
    std::vector<const Operation*> sources;  // nullptr: the key starting out missing
    if (v.is_nil()) sources.push_back(nullptr);
    for (const Operation* p : producers_of(key, v))
      if (p->invoke_ns <= op.complete_ns) sources.push_back(p);
    const Operation* source = nullptr;
    const Operation* replacer = nullptr;
    bool all_replaced = !sources.empty();
    for (const Operation* s : sources) {
      const std::int64_t s_end = s == nullptr ? std::numeric_limits<std::int64_t>::min() : end_of(*s);
      const Operation* found = nullptr;
      for (const Operation* x : key.ops) {
        auto set = value_set_by(*x);
        if (x->outcome == Outcome::Ok && set && *set != v && x->invoke_ns > s_end && x->complete_ns < op.invoke_ns &&
            (found == nullptr || x->complete_ns > found->complete_ns))
          found = x;
      }
      if (found == nullptr) {
        all_replaced = false;
        break;
      }
      source = s;  // sources are in invocation order: report the latest
      replacer = found;
    }
    if (all_replaced && replacer != nullptr) {
      const std::string written = source == nullptr ? show(v) + " (the key starting out missing)"
                                                    : show(v) + ", written by " + what(*source) + " " + d.at(*source);
      std::vector<const Operation*> first{replacer};
      if (source != nullptr) first.push_back(source);
      if (key.is_last(op))
        return done("lost acknowledged write",
                    "the final read of " + k + " at " + d.at(op) + " returned " + written + ", but the acknowledged " +
                        what(*replacer) + " " + d.at(*replacer) + " replaced it before the read began, and nothing set " +
                        show(v) + " again: the acknowledged write was lost",
                    first);
      return done("stale read", "read of " + k + " at " + d.at(op) + " returned " + written + ", but " +
                                    what(*replacer) + " " + d.at(*replacer) +
                                    " had replaced it before the read began; " + k + " could only hold " + could +
                                    " there",
                  first);
    }
    return done("not linearizable", "read of " + k + " returned " + show(v) + " at " + d.at(op) +
                                        ", but no order of the operations before its end leaves " + k + " at " +
                                        show(v) + ": it could only hold " + could + " there");
  }
  if (op.function == Function::Read)
    return done("not linearizable", "read of counter " + k + " returned " + show(*op.result) + " at " + d.at(op) +
                                        ", but it could only be " + could + " there");
  if (op.function == Function::Cas) {
    if (is_cas_refused(op))
      return done("not linearizable", "cas of " + k + " from " + show(op.args[0]) + " to " + show(op.args[1]) +
                                          " was refused at " + d.at(op) + " (the value did not match), but " + k +
                                          " could only hold " + could + " there");
    std::vector<const Operation*> rivals;
    for (const Operation* o : key.ops)
      if (o != &op && o->outcome == Outcome::Ok && is_cas_swap(*o) && o->args[0] == op.args[0]) rivals.push_back(o);
    return done("not linearizable", "cas of " + k + " from " + show(op.args[0]) + " to " + show(op.args[1]) +
                                        " succeeded at " + d.at(op) + ", but " + k + " could only hold " + could +
                                        " there, not " + show(op.args[0]),
                rivals);
  }
  if (op.function == Function::Incr)
    return done("not linearizable", "incr of " + k + " by " + std::to_string(incr_delta(op)) + " returned " +
                                        show(*op.result) + " at " + d.at(op) + ", but before it " + k +
                                        " could only be " + could);
  if (op.function == Function::Rpush && op.result)
    return done("not linearizable", "rpush to " + k + " returned length " + show(*op.result) + " at " + d.at(op) +
                                        ", but before it the list could only be " + could);
  if (op.function == Function::Lrange) {
    std::string difference;
    if (const auto possible = search.a_frontier_list()) {
      const auto& got = op.result->items;
      const auto& want = possible->items;
      std::size_t i = 0;
      while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
      difference = "; against " + show(*possible) + " it differs at position " + std::to_string(i) + " (got " +
                   (i < got.size() ? encode_string(got[i]) : "the end") + ", expected " +
                   (i < want.size() ? encode_string(want[i]) : "the end") + ")";
    }
    return done("not linearizable", "lrange of " + k + " returned " + show(*op.result) + " at " + d.at(op) +
                                        ", but the list could only be " + could + " there" + difference);
  }
  return done("not linearizable", "no order of the operations on " + k + " up to the end of " + what(op) + " " +
                                      d.at(op) + " is consistent with what they returned; " + k + " could hold " +
                                      could + " there");
}

inline std::vector<KeyOps> split_by_key(const History& history) {
  std::map<std::string, KeyOps> keys;
  std::map<std::string, const Operation*> first_use;
  for (const Operation& op : history.operations) {
    const Model model = op.function == Function::Rpush || op.function == Function::Lrange ? Model::List : Model::String;
    auto [it, added] = keys.try_emplace(op.key);
    KeyOps& k = it->second;
    if (added) {
      k.key = op.key;
      k.model = model;
      first_use[op.key] = &op;
    } else if (k.model != model) {
      const Operation* first = first_use[op.key];
      throw HistoryError("BADHISTORY key " + encode_string(op.key) + " is used as a " +
                         (k.model == Model::List ? "list" : "string") + " (" + name(first->function) + " at line " +
                         std::to_string(first->invoke_line) + ") and as a " +
                         (model == Model::List ? "list" : "string") + " (" + name(op.function) + " at line " +
                         std::to_string(op.invoke_line) + "); give each workload its own keys");
    }
    k.ops.push_back(&op);
  }
  std::vector<KeyOps> out;
  for (auto& [name, k] : keys) {
    std::stable_sort(k.ops.begin(), k.ops.end(), [](auto* a, auto* b) { return a->invoke_ns < b->invoke_ns; });
    for (const Operation* op : k.ops)
      if (op->outcome != Outcome::Fail) k.last_invoke_ns = std::max(k.last_invoke_ns, op->invoke_ns);
    out.push_back(std::move(k));
  }
  return out;
}

}  // namespace detail

inline const char* name(Verdict verdict) {
  switch (verdict) {
    case Verdict::Linearizable:
      return "yes";
    case Verdict::NotLinearizable:
      return "no";
    case Verdict::Unknown:
      return "unknown";
  }
  return "unknown";
}

inline std::string describe(const Operation& op, std::int64_t origin_ns) {
  std::string out = "p" + std::to_string(op.process) + " " + detail::what(op);
  switch (op.outcome) {
    case Outcome::Ok:
      if (op.result) out += " -> " + detail::show(*op.result);
      break;
    case Outcome::Fail:
      out += " -> failed";
      break;
    case Outcome::Info:
      out += op.completed ? " -> unknown" : " -> never completed";
      break;
  }
  out += " [" + detail::seconds_since(op.invoke_ns, origin_ns) + ", ";
  out += op.outcome == Outcome::Ok || op.outcome == Outcome::Fail ? detail::seconds_since(op.complete_ns, origin_ns)
                                                                   : std::string("open");
  out += "] line" + (op.complete_line ? "s " + std::to_string(op.invoke_line) + "-" + std::to_string(op.complete_line)
                                      : " " + std::to_string(op.invoke_line));
  return out;
}

inline std::string CheckResult::summary() const {
  std::string out = "ops=" + std::to_string(operations) + " ok=" + std::to_string(ok) +
                    " failed=" + std::to_string(failed) + " unknown=" + std::to_string(unknown) +
                    " keys=" + std::to_string(keys) + " steps=" + std::to_string(steps) +
                    " linearizable=" + name(verdict);
  if (!violations.empty()) {
    const Violation& v = violations.front();
    out += " key=" + detail::encode_string(v.key) + " violation=" + v.kind + ": " + v.explanation;
    if (violations.size() > 1) out += " (and " + std::to_string(violations.size() - 1) + " more keys)";
  }
  if (verdict != Verdict::NotLinearizable && !gave_up.empty()) out += " gave-up=" + gave_up;
  return out;
}

inline CheckResult check(const History& history, const CheckOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  CheckResult r;
  std::int64_t origin = std::numeric_limits<std::int64_t>::max();
  for (const Operation& op : history.operations) {
    ++r.operations;
    origin = std::min(origin, op.invoke_ns);
    switch (op.outcome) {
      case Outcome::Ok:
        ++r.ok;
        break;
      case Outcome::Fail:
        ++r.failed;
        break;
      case Outcome::Info:
        ++r.unknown;
        break;
    }
  }
  const std::vector<detail::KeyOps> keys = detail::split_by_key(history);
  r.keys = keys.size();

  detail::Budget budget;
  budget.steps_left = options.max_steps;
  if (options.timeout_s > 0) {
    budget.has_deadline = true;
    budget.deadline = started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                    std::chrono::duration<double>(options.timeout_s));
  }
  for (const detail::KeyOps& key : keys) {
    const detail::Diagnosis d(key, origin);
    std::vector<Violation> found = key.model == detail::Model::List ? detail::check_list(key, d) : detail::check_register(key, d);
    if (key.model == detail::Model::String) {
      std::vector<Violation> more = detail::check_counter(key, d);
      found.insert(found.end(), more.begin(), more.end());
    }
    if (!found.empty()) {
      r.violations.push_back(*std::min_element(found.begin(), found.end(), [](const Violation& a, const Violation& b) {
        return a.time_ns < b.time_ns;
      }));
      continue;
    }
    if (!r.gave_up.empty()) continue;  // the budget is gone: the remaining keys go unsearched
    detail::KeySearch search(key, options.max_memo_entries);
    const auto outcome = search.run(budget);
    if (search.steps() > r.hardest_key_steps) r.hardest_key = key.key, r.hardest_key_steps = search.steps();
    if (outcome == detail::SearchResult::Violation) {
      const Operation& blocking = search.blocking();
      const std::size_t prefix = static_cast<std::size_t>(std::count_if(
          key.ops.begin(), key.ops.end(), [&](const Operation* o) { return o->invoke_ns <= blocking.complete_ns; }));
      r.violations.push_back(detail::explain_search(search, d, prefix));
    } else if (outcome == detail::SearchResult::GaveUp) {
      r.gave_up = "key " + detail::encode_string(key.key) + ": " +
                  (budget.timed_out ? "the wall-clock timeout of " + std::to_string(options.timeout_s) + " s ran out"
                                    : "the search used all " + std::to_string(options.max_steps) + " steps") +
                  " (" + std::to_string(key.ops.size()) + " operations on the key)";
    }
  }
  std::sort(r.violations.begin(), r.violations.end(),
            [](const Violation& a, const Violation& b) { return a.time_ns < b.time_ns; });
  r.steps = budget.spent;
  r.verdict = !r.violations.empty() ? Verdict::NotLinearizable
              : !r.gave_up.empty()  ? Verdict::Unknown
                                    : Verdict::Linearizable;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return r;
}

}  // namespace jepsen
