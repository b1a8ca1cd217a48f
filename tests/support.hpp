// What every kind of test needs, defined once: deadlines scaled by RAFT_TIME_SCALE, polling
// against a deadline, a file's bytes, a field of INFO, a key's value in a node, and replies as
// text. tests/proc.hpp (programs in processes) and tests/in_process.hpp (raft::Node objects in
// this process) take these into their own namespaces; test files use them from any of the
// three, and a name means the same thing whichever it comes through.
//
//   REQUIRE(eventually(scaled(5000), [&] { return n.state() == 'l'; }));   // 5 s at scale 1
//   CHECK(typed(reply) == "'v'");                                          // a bulk string
#pragma once

#include "raft.hpp"  // raft::detail::repr, for the bulk strings typed() shows (resp.hpp with it)

#include <chrono>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <future>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace test_support {

// ---- time -----------------------------------------------------------------------------------

/// RAFT_TIME_SCALE (1 by default; the Makefile sets 3 under ASan, 5 under TSan): multiplies
/// every deadline. A value that is not a positive number counts as 1.
inline double time_scale() {
  const char* s = std::getenv("RAFT_TIME_SCALE");
  if (s == nullptr || *s == '\0') return 1.0;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  return (end != nullptr && *end == '\0' && v > 0) ? v : 1.0;
}

/// A deadline of `ms` milliseconds at time scale 1.
inline std::chrono::milliseconds scaled(long long ms) {
  return std::chrono::milliseconds(static_cast<long long>(static_cast<double>(ms) * time_scale()));
}

/// The deadline for what should happen soon when no test names a shorter one: 15 s, scaled.
inline std::chrono::milliseconds long_wait() { return scaled(15000); }

// ---- waiting --------------------------------------------------------------------------------

/// Checks `cond` every few milliseconds until it holds (true) or `timeout` passes; then
/// answers what `cond` says at the deadline, so a condition that comes true while the
/// deadline passes still counts.
template <class Cond>
bool eventually(std::chrono::milliseconds timeout, Cond cond) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (cond()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return cond();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

/// Checks `cond` every few milliseconds for `timeout`: true if it held every time, false as
/// soon as it does not. For what must stay true over a period, not only at one instant.
template <class Cond>
bool holds_for(std::chrono::milliseconds timeout, Cond cond) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    if (!cond()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  } while (std::chrono::steady_clock::now() < deadline);
  return cond();
}

/// Waits for a future within `timeout`; false if it is not ready by then.
template <class T>
bool ready_within(std::future<T>& f, std::chrono::milliseconds timeout) {
  return f.wait_for(timeout) == std::future_status::ready;
}

// ---- files and INFO ----------------------------------------------------------------------

/// A file's bytes; "" when it cannot be read.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// One field of an INFO text ("raft_role" -> "leader"), "" when absent.
inline std::string info_field(const std::string& info, const std::string& field) {
  std::istringstream lines(info);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.compare(0, field.size() + 1, field + ":") == 0) return line.substr(field.size() + 1);
  }
  return "";
}

/// The same field of a node's INFO (anything with info(): raft::Node).
template <class Node, class = decltype(std::declval<const Node&>().info())>
std::string info_field(const Node& n, const std::string& field) {
  return info_field(std::string(n.info()), field);
}

// ---- a node's data -------------------------------------------------------------------------

inline bool is_ok(const resp::Value& r) { return r.type == resp::Type::SimpleString && r.str == "OK"; }

/// The value of a key in a node's replicated data, read through Node::read; "(none)" when the
/// key is absent (deadlines ignored: an expired key that is still stored is shown).
inline std::string stored(const raft::Node& n, const std::string& key) {
  std::string out = "(none)";
  n.read([&](const raft::Store& s) {
    const raft::Store::Object* o = s.find(key, INT64_MIN);
    if (o != nullptr) out = o->str;
  });
  return out;
}

// ---- replies as text ------------------------------------------------------------------------
// Two printers on purpose. show() prints a value the way a reader compares values ("OK", "42",
// "v"), blind to the type; typed() prints every RESP type apart ("+OK", "42", "'42'"), for
// tests where the type of a reply is what is checked.

/// "OK", "-ERR ...", "(nil)" (any null), "42", "v", "[a, b]".
inline std::string show(const resp::Value& v) {
  switch (v.type) {
    case resp::Type::Error:
      return "-" + v.str;
    case resp::Type::Integer:
      return std::to_string(v.num);
    case resp::Type::NullBulk:
    case resp::Type::NullArray:
    case resp::Type::Null:
      return "(nil)";
    default:
      break;
  }
  if (v.is_aggregate()) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.elements.size(); ++i) s += (i ? ", " : "") + show(v.elements[i]);
    return s + "]";
  }
  return std::string(v.text());
}

/// +OK (simple string), -ERR ... (error), 5 (integer), 'x' (bulk string, as Python's repr),
/// nil (null bulk), *nil (null array), _ (RESP3 null), [..] (array), {k: v} (map), ~[..] (set),
/// >[..] (push), ,1.5 (double), #t (boolean), (123 (big number), ='txt:x' (verbatim).
inline std::string typed(const resp::Value& v) {
  using resp::Type;
  const auto list = [&v](const char* open, const char* close) {
    std::string out = open;
    for (std::size_t i = 0; i < v.elements.size(); ++i) {
      if (i > 0) out += v.type == Type::Map && i % 2 == 1 ? ": " : ", ";
      out += typed(v.elements[i]);
    }
    return out + close;
  };
  switch (v.type) {
    case Type::SimpleString: return "+" + v.str;
    case Type::Error: return "-" + v.str;
    case Type::Integer: return std::to_string(v.num);
    case Type::BulkString: return raft::detail::repr(v.str);
    case Type::NullBulk: return "nil";
    case Type::NullArray: return "*nil";
    case Type::Null: return "_";
    case Type::Array: return list("[", "]");
    case Type::Map: return list("{", "}");
    case Type::Set: return list("~[", "]");
    case Type::Push: return list(">[", "]");
    case Type::Double: {
      char b[32];
      return "," + std::string(resp::detail::format_double(v.dbl, b));
    }
    case Type::Boolean: return v.num != 0 ? "#t" : "#f";
    case Type::BigNumber: return "(" + v.str;
    case Type::Verbatim: return "=" + raft::detail::repr(v.str);
  }
  return "?";
}

// ---- the built-in commands without a node -----------------------------------------------

/// A Store with the built-in command table, each handler called as the runtime calls it when
/// it applies an entry: at `now` (an entry's timestamp, ms), with the entry's `index` and
/// `term`, the memory count settled after a write.
///
///   Db db;
///   CHECK(db({"set", "k", "v"}) == "+OK");   // typed(): see above
struct Db {
  raft::Store store;
  raft::CommandTable table;
  std::int64_t now = 1'700'000'000'000;
  std::uint64_t index = 0, term = 0;

  Db() { raft::add_builtin_commands(table); }

  resp::Value reply(std::vector<std::string> words) {
    const auto it = table.find(words.at(0));
    if (it == table.end()) throw std::invalid_argument("no command " + words[0]);
    raft::Call call{store, words, now, nullptr, index, term};
    resp::Value r = it->second.fn(call);
    if (it->second.is_write()) store.settle_memory();
    return r;
  }
  std::string operator()(std::vector<std::string> words) { return typed(reply(std::move(words))); }
};

}  // namespace test_support
