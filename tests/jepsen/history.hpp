// The history of a Jepsen-style test: what each client asked, when, and what came back. The
// cluster harness writes it line by line as things happen; tests/jepsen/checker.hpp and
// tools/check_history read it back.
//
// ---- The format -------------------------------------------------------------------------
// One event per line, fields separated by spaces:
//
//   TIME PROCESS KIND FUNCTION KEY [ARG ...] [-> RESULT] [# NOTE]
//
//   TIME      monotonic nanoseconds (CLOCK_MONOTONIC / steady_clock): an invocation's time is
//             taken before the request is sent, a completion's after the reply arrived.
//             Only the order of times matters; equal times count as concurrent.
//   PROCESS   a non-negative integer: one logical client, one operation at a time.
//   KIND      invoke   the operation starts;
//             ok       it took effect, and RESULT says what it returned;
//             fail     it definitely did not take effect (a refusal: -CLUSTERDOWN, -MOVED...);
//             info     unknown outcome (-TIMEOUT, a lost connection): it may take effect at
//                      any time after its invocation, or never. Jepsen's rule: a process
//                      whose operation ended `info` never invokes again; use a new PROCESS.
//   FUNCTION  and its arguments and result (RESULT only on `ok` lines):
//             read   KEY               -> VALUE or nil   a string key (GET)
//             write  KEY VALUE                           SET
//             cas    KEY EXPECTED NEW  [-> true|false]   compare-and-set; EXPECTED may be nil
//                    (the key is absent). `ok` without a result or `-> true`: it swapped;
//                    `ok -> false`: the comparison ran and did not match (nothing changed).
//                    A `fail` line says it did not run at all (Jepsen's convention for a
//                    refused CAS is also `fail`, which checks less).
//             incr   KEY [DELTA]       -> NEW-VALUE      INCR / INCRBY (DELTA defaults to 1)
//             rpush  KEY ELEMENT ...   [-> NEW-LENGTH]   RPUSH
//             lrange KEY               -> [E1,E2,...]    LRANGE KEY 0 -1: the whole list
//             read/write/cas/incr use a key as a string (a register or a counter), rpush and
//             lrange as a list; one key is never both.
//   NOTE      free text to the end of the line, ignored (e.g. the error reply of a fail).
//
// A completion line (ok/fail/info) repeats its invocation's FUNCTION, KEY and ARGs, so that
// `grep ' r7 '` shows whole operations. Lines of one process appear in the order they
// happened; lines of different processes may interleave in any order (times decide).
// An invocation without a completion at the end of the file counts as `info`.
// Blank lines and lines starting with `#` are comments.
//
// Values (KEY, ARG, RESULT, list elements) are tokens:
//   nil            no value (a missing key);
//   [a,b,c]        a list of strings (`[]` is the empty list);
//   anything else  a string. Bytes outside '!'..'~' and the characters % [ ] , " # are
//                  written %XX (hex); the empty string is "", the strings nil and -> are
//                  written %6Eil and %2D>. Integers are strings of decimal digits.
//
//   1000 3 invoke write r7 5
//   1850 3 ok write r7 5
//   1900 4 invoke cas r7 5 9
//   2400 4 info cas r7 5 9 # TIMEOUT the write was not committed in time
//   2500 5 invoke lrange l2
//   2900 5 ok lrange l2 -> [e1.1,e2.7]
//
// ---- The API ----------------------------------------------------------------------------
//   HistoryWriter    records events with their times, one flushed line each, thread-safe;
//   read_history     parses a file into Operations (invocation and completion paired);
//   format_event / parse_event   one line each way.
// A malformed line throws HistoryError("BADHISTORY line N: what is wrong ...").
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <istream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace jepsen {

// ---- Values, events and operations ----

/// A key, an argument or a result: nil, a string, or a list of strings.
struct Value {
  enum class Type { Nil, String, List };
  Type type = Type::Nil;
  std::string text;                // Type::String
  std::vector<std::string> items;  // Type::List

  static Value nil() { return {}; }
  static Value of(std::string s) { return {Type::String, std::move(s), {}}; }
  static Value of(std::int64_t n) { return of(std::to_string(n)); }
  static Value list_of(std::vector<std::string> items) { return {Type::List, {}, std::move(items)}; }

  bool is_nil() const { return type == Type::Nil; }
  bool is_string() const { return type == Type::String; }
  bool is_list() const { return type == Type::List; }
  /// The string as a decimal integer, if it is one.
  std::optional<std::int64_t> integer() const;

  friend bool operator==(const Value& a, const Value& b) {
    return a.type == b.type && a.text == b.text && a.items == b.items;
  }
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }
};

enum class Kind { Invoke, Ok, Fail, Info };
/// To add a function: a name in kFunctionNames, its arguments and result in
/// detail::check_shape, and its model in checker.hpp.
enum class Function { Read, Write, Cas, Incr, Rpush, Lrange };

const char* name(Kind kind);
const char* name(Function function);

/// One line of the history.
struct Event {
  std::int64_t time_ns = 0;
  std::uint64_t process = 0;
  Kind kind = Kind::Invoke;
  Function function = Function::Read;
  std::string key;
  std::vector<Value> args;
  std::optional<Value> result;  // only on ok lines
  std::string note;             // free text after '#'
  std::size_t line = 0;         // where it was read (0: built in memory)
};

/// How an operation ended. Info also covers an invocation the history never completed.
enum class Outcome { Ok, Fail, Info };

/// An invocation paired with its completion.
struct Operation {
  std::uint64_t process = 0;
  Function function = Function::Read;
  std::string key;
  std::vector<Value> args;
  Outcome outcome = Outcome::Info;
  std::optional<Value> result;  // what an ok operation returned
  std::int64_t invoke_ns = 0;
  std::int64_t complete_ns = 0;  // the completion line's time (info: when the client gave up)
  bool completed = true;         // false: the history ended while it was pending
  std::size_t invoke_line = 0, complete_line = 0;
};

/// A whole test's operations, in the order they were invoked.
struct History {
  std::vector<Operation> operations;
};

/// A line of the history that cannot be read, or events that contradict each other.
class HistoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- Reading and writing ----

/// The line for one event (without the newline).
std::string format_event(const Event& event);
/// The event on one line; nullopt for a blank or comment line. Throws HistoryError.
std::optional<Event> parse_event(std::string_view line, std::size_t line_number);
/// Every event of a stream, in file order. Throws HistoryError.
std::vector<Event> read_events(std::istream& in);
/// Pairs each invocation with its completion. Throws HistoryError when a process completes
/// what it never invoked, invokes twice at once, or invokes again after an info.
History pair_events(const std::vector<Event>& events);
History read_history(std::istream& in);
/// Throws HistoryError when the file cannot be opened.
History read_history_file(const std::string& path);

/// A value as it is written in a history ("nil", "[a,b]", "5", "%20x").
std::string encode_value(const Value& value);

/// Records a test's events as they happen, one flushed line each, stamped with the monotonic
/// clock under a lock (so the file is in time order). Thread-safe. Refuses (std::logic_error)
/// what would make the history unreadable: a process invoking twice at once, completing
/// nothing, or invoking again after an info.
class HistoryWriter {
 public:
  /// Writes to `out`, which must outlive the writer.
  explicit HistoryWriter(std::ostream& out) : out_(&out) {}
  /// Writes (truncating) the file at `path`. Throws std::runtime_error when it cannot.
  explicit HistoryWriter(const std::string& path);

  /// A process id never used before by this writer (for a client whose last call ended info).
  std::uint64_t new_process();

  /// Call just before sending the request.
  void invoke(std::uint64_t process, Function function, const std::string& key,
              std::vector<Value> args = {});
  /// Call just after the reply arrived. `result` as in the format above.
  void ok(std::uint64_t process, std::optional<Value> result = std::nullopt);
  /// Definitely not applied. `why` (e.g. the error reply) goes into the line's note.
  void fail(std::uint64_t process, const std::string& why = {});
  /// Outcome unknown; the process id is spent.
  void info(std::uint64_t process, const std::string& why = {});

  /// Nanoseconds of the clock the writer stamps events with.
  static std::int64_t now_ns();

 private:
  void complete(std::uint64_t process, Kind kind, std::optional<Value> result, const std::string& why);
  void emit(const Event& event);

  std::mutex mutex_;
  std::ofstream file_;
  std::ostream* out_;
  std::map<std::uint64_t, Event> pending_;  // invocation per process
  std::set<std::uint64_t> spent_;           // processes whose operation ended info
  std::uint64_t next_process_ = 0;
};

// =========================================================================================
// Implementation
// =========================================================================================

namespace detail {

constexpr const char* kKindNames[] = {"invoke", "ok", "fail", "info"};
constexpr const char* kFunctionNames[] = {"read", "write", "cas", "incr", "rpush", "lrange"};
constexpr const char* kLineShape = "TIME PROCESS KIND FUNCTION KEY [ARG ...] [-> RESULT] [# NOTE]";

inline bool is_plain_byte(unsigned char c) {
  return c >= '!' && c <= '~' && c != '%' && c != '[' && c != ']' && c != ',' && c != '"' && c != '#';
}

inline std::string encode_string(const std::string& s) {
  if (s.empty()) return "\"\"";
  if (s == "nil") return "%6Eil";
  if (s == "->") return "%2D>";
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (is_plain_byte(c)) {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

inline int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/// Why `token` is not a string token, or empty when it is one (then `out` holds it).
inline std::string decode_string(std::string_view token, std::string& out) {
  out.clear();
  if (token == "\"\"") return {};
  if (token.empty()) return "an empty value (write the empty string as \"\")";
  if (token == "nil") return "nil where a string is needed (write the string nil as %6Eil)";
  for (std::size_t i = 0; i < token.size(); ++i) {
    const char c = token[i];
    if (c == '%') {
      const int h = i + 1 < token.size() ? hex_digit(token[i + 1]) : -1;
      const int l = i + 2 < token.size() ? hex_digit(token[i + 2]) : -1;
      if (h < 0 || l < 0) return "'%' not followed by two hex digits in '" + std::string(token) + "'";
      out += static_cast<char>(h * 16 + l);
      i += 2;
    } else if (is_plain_byte(static_cast<unsigned char>(c))) {
      out += c;
    } else {
      return std::string("'") + c + "' in '" + std::string(token) + "' must be written %XX";
    }
  }
  return {};
}

/// Why `token` is not a value token, or empty when it is one (then `out` holds it).
inline std::string decode_value(std::string_view token, Value& out) {
  out = Value::nil();
  if (token == "nil") return {};
  if (!token.empty() && token.front() == '[') {
    if (token.back() != ']' || token.size() < 2) return "a list '" + std::string(token) + "' without its closing ']'";
    out.type = Value::Type::List;
    const std::string_view inner = token.substr(1, token.size() - 2);
    if (inner.empty()) return {};
    std::size_t start = 0;
    for (;;) {
      const std::size_t comma = inner.find(',', start);
      const std::string_view item = inner.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
      std::string text;
      if (std::string why = decode_string(item, text); !why.empty()) return "list element: " + why;
      out.items.push_back(std::move(text));
      if (comma == std::string_view::npos) return {};
      start = comma + 1;
    }
  }
  out.type = Value::Type::String;
  return decode_string(token, out.text);
}

inline bool parse_integer(std::string_view s, std::int64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  std::size_t i = 0;
  const bool negative = s[0] == '-';
  if (negative) i = 1;
  if (i == s.size()) return false;
  std::uint64_t magnitude = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    const std::uint64_t digit = static_cast<std::uint64_t>(s[i] - '0');
    if (magnitude > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return false;
    magnitude = magnitude * 10 + digit;
  }
  const std::uint64_t limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) + (negative ? 1 : 0);
  if (magnitude > limit) return false;
  out = negative ? static_cast<std::int64_t>(0 - magnitude) : static_cast<std::int64_t>(magnitude);
  return true;
}

inline bool parse_unsigned(std::string_view s, std::uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  out = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t digit = static_cast<std::uint64_t>(c - '0');
    if (out > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return false;
    out = out * 10 + digit;
  }
  return true;
}

inline bool is_integer_string(const Value& v) {
  std::int64_t n = 0;
  return v.is_string() && parse_integer(v.text, n);
}

/// Why the arguments and result of an event do not fit its function, or empty.
inline std::string check_shape(const Event& e) {
  const std::size_t n = e.args.size();
  const std::string fn = name(e.function);
  auto strings_only = [&]() -> std::string {
    for (const Value& a : e.args)
      if (!a.is_string()) return "'" + fn + "' takes string arguments, got " + encode_value(a);
    return {};
  };
  if (e.result && e.kind != Kind::Ok)
    return "only an ok line carries a result ('-> ...'), this is " + std::string(name(e.kind));
  const bool ok = e.kind == Kind::Ok;
  switch (e.function) {
    case Function::Read:
      if (n != 0) return "'read' takes no argument, got " + std::to_string(n);
      if (ok && !e.result) return "an ok read needs its result: '-> VALUE' or '-> nil'";
      if (ok && e.result->is_list()) return "a read returns a string or nil, not a list (use lrange)";
      return {};
    case Function::Write:
      if (n != 1) return "'write' takes one argument (the value), got " + std::to_string(n);
      if (e.result) return "a write has no result";
      return strings_only();
    case Function::Cas:
      if (n != 2) return "'cas' takes two arguments (expected, new), got " + std::to_string(n);
      if (e.args[0].is_list()) return "a cas expects a string or nil, not a list";
      if (!e.args[1].is_string()) return "a cas sets a string, got " + encode_value(e.args[1]);
      if (e.result && !(e.result->is_string() && (e.result->text == "true" || e.result->text == "false")))
        return "a cas result is true (it swapped) or false (the value did not match), got " + encode_value(*e.result);
      return {};
    case Function::Incr:
      if (n > 1) return "'incr' takes at most one argument (the delta), got " + std::to_string(n);
      if (n == 1 && !is_integer_string(e.args[0])) return "an incr delta is an integer, got " + encode_value(e.args[0]);
      if (ok && !(e.result && is_integer_string(*e.result)))
        return "an ok incr needs its result, the new value: '-> INTEGER'";
      return {};
    case Function::Rpush:
      if (n == 0) return "'rpush' takes at least one element";
      if (e.result && !is_integer_string(*e.result)) return "an rpush result is the new length, got " + encode_value(*e.result);
      return strings_only();
    case Function::Lrange:
      if (n != 0) return "'lrange' takes no argument (it reads the whole list), got " + std::to_string(n);
      if (ok && !(e.result && e.result->is_list())) return "an ok lrange needs its result, the list: '-> [a,b,...]'";
      return {};
  }
  return {};
}

inline std::string quote_line(std::string_view line) {
  constexpr std::size_t kMax = 200;
  if (line.size() <= kMax) return std::string(line);
  return std::string(line.substr(0, kMax)) + "...";
}

[[noreturn]] inline void fail_line(std::size_t line_number, const std::string& what, std::string_view line = {}) {
  std::string message = "BADHISTORY line " + std::to_string(line_number) + ": " + what;
  if (!line.empty()) message += " (the line: " + quote_line(line) + ")";
  throw HistoryError(message);
}

inline bool same_call(const Event& a, const Event& b) {
  return a.function == b.function && a.key == b.key && a.args == b.args;
}

}  // namespace detail

inline const char* name(Kind kind) { return detail::kKindNames[static_cast<int>(kind)]; }
inline const char* name(Function function) { return detail::kFunctionNames[static_cast<int>(function)]; }

inline std::optional<std::int64_t> Value::integer() const {
  std::int64_t n = 0;
  if (is_string() && detail::parse_integer(text, n)) return n;
  return std::nullopt;
}

inline std::string encode_value(const Value& value) {
  switch (value.type) {
    case Value::Type::Nil:
      return "nil";
    case Value::Type::String:
      return detail::encode_string(value.text);
    case Value::Type::List: {
      std::string out = "[";
      for (std::size_t i = 0; i < value.items.size(); ++i) {
        if (i > 0) out += ',';
        out += detail::encode_string(value.items[i]);
      }
      return out + "]";
    }
  }
  return "nil";
}

inline std::string format_event(const Event& e) {
  std::string out = std::to_string(e.time_ns) + ' ' + std::to_string(e.process) + ' ' + name(e.kind) + ' ' +
                    name(e.function) + ' ' + detail::encode_string(e.key);
  for (const Value& a : e.args) out += ' ' + encode_value(a);
  if (e.result) out += " -> " + encode_value(*e.result);
  if (!e.note.empty()) {
    out += " # ";
    for (char c : e.note) out += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return out;
}

inline std::optional<Event> parse_event(std::string_view line, std::size_t line_number) {
  using detail::fail_line;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const std::string_view whole = line;
  std::vector<std::string_view> tokens;
  Event e;
  e.line = line_number;
  for (std::size_t i = 0; i < line.size();) {
    if (line[i] == ' ' || line[i] == '\t') {
      ++i;
      continue;
    }
    if (line[i] == '#') {  // a note: the rest of the line
      std::size_t start = i + 1;
      while (start < line.size() && line[start] == ' ') ++start;
      e.note = std::string(line.substr(start));
      break;
    }
    std::size_t end = i;
    while (end < line.size() && line[end] != ' ' && line[end] != '\t') ++end;
    tokens.push_back(line.substr(i, end - i));
    i = end;
  }
  if (tokens.empty()) return std::nullopt;  // blank or comment
  if (tokens.size() < 5)
    fail_line(line_number, std::string("too few fields; each line is ") + detail::kLineShape, whole);

  if (!detail::parse_integer(tokens[0], e.time_ns) || e.time_ns < 0)
    fail_line(line_number, "TIME must be non-negative nanoseconds, got '" + std::string(tokens[0]) + "'", whole);
  if (!detail::parse_unsigned(tokens[1], e.process))
    fail_line(line_number, "PROCESS must be a non-negative integer, got '" + std::string(tokens[1]) + "'", whole);
  bool known = false;
  for (int k = 0; k < 4; ++k)
    if (tokens[2] == detail::kKindNames[k]) e.kind = static_cast<Kind>(k), known = true;
  if (!known)
    fail_line(line_number, "KIND must be invoke, ok, fail or info, got '" + std::string(tokens[2]) + "'", whole);
  known = false;
  for (int f = 0; f < 6; ++f)
    if (tokens[3] == detail::kFunctionNames[f]) e.function = static_cast<Function>(f), known = true;
  if (!known)
    fail_line(line_number,
              "unknown FUNCTION '" + std::string(tokens[3]) + "' (known: read write cas incr rpush lrange)", whole);
  if (std::string why = detail::decode_string(tokens[4], e.key); !why.empty()) fail_line(line_number, "KEY: " + why, whole);

  std::size_t i = 5;
  for (; i < tokens.size() && tokens[i] != "->"; ++i) {
    Value v;
    if (std::string why = detail::decode_value(tokens[i], v); !why.empty())
      fail_line(line_number, "argument " + std::to_string(i - 4) + ": " + why, whole);
    e.args.push_back(std::move(v));
  }
  if (i < tokens.size()) {  // "->" RESULT
    if (i + 2 != tokens.size()) fail_line(line_number, "'->' must be followed by exactly one RESULT", whole);
    Value v;
    if (std::string why = detail::decode_value(tokens[i + 1], v); !why.empty())
      fail_line(line_number, "RESULT: " + why, whole);
    e.result = std::move(v);
  }
  if (std::string why = detail::check_shape(e); !why.empty()) fail_line(line_number, why, whole);
  return e;
}

inline std::vector<Event> read_events(std::istream& in) {
  std::vector<Event> events;
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n)
    if (auto e = parse_event(line, n)) events.push_back(std::move(*e));
  return events;
}

inline History pair_events(const std::vector<Event>& events) {
  using detail::fail_line;
  History h;
  std::map<std::uint64_t, std::size_t> pending;      // process -> index of its open operation
  std::map<std::uint64_t, std::size_t> spent_at;     // process -> line of its info
  std::int64_t last_time = 0;
  for (const Event& e : events) {
    last_time = std::max(last_time, e.time_ns);
    const std::string who = "process " + std::to_string(e.process);
    if (e.kind == Kind::Invoke) {
      if (auto it = pending.find(e.process); it != pending.end())
        fail_line(e.line, who + " invokes while its operation from line " +
                              std::to_string(h.operations[it->second].invoke_line) +
                              " is pending (one operation at a time per process)");
      if (auto it = spent_at.find(e.process); it != spent_at.end())
        fail_line(e.line, who + " invokes again after its operation ended info at line " + std::to_string(it->second) +
                              "; a process with an unknown outcome never invokes again: use a new process id");
      Operation op;
      op.process = e.process;
      op.function = e.function;
      op.key = e.key;
      op.args = e.args;
      op.invoke_ns = e.time_ns;
      op.invoke_line = e.line;
      pending[e.process] = h.operations.size();
      h.operations.push_back(std::move(op));
      continue;
    }
    const auto it = pending.find(e.process);
    if (it == pending.end()) fail_line(e.line, who + " completes an operation it never invoked");
    Operation& op = h.operations[it->second];
    if (op.function != e.function || op.key != e.key || op.args != e.args)
      fail_line(e.line, who + " completes a different operation than it invoked at line " +
                            std::to_string(op.invoke_line) + " (a completion repeats FUNCTION KEY ARG...)");
    if (e.time_ns < op.invoke_ns)
      fail_line(e.line, who + " completes at " + std::to_string(e.time_ns) + " ns, before its invocation at " +
                            std::to_string(op.invoke_ns) + " ns (line " + std::to_string(op.invoke_line) + ")");
    op.outcome = e.kind == Kind::Ok ? Outcome::Ok : e.kind == Kind::Fail ? Outcome::Fail : Outcome::Info;
    op.result = e.result;
    op.complete_ns = e.time_ns;
    op.complete_line = e.line;
    pending.erase(it);
    if (e.kind == Kind::Info) spent_at[e.process] = e.line;
  }
  for (const auto& [process, index] : pending) {  // never completed: unknown outcome
    Operation& op = h.operations[index];
    op.outcome = Outcome::Info;
    op.completed = false;
    op.complete_ns = last_time;
  }
  return h;
}

inline History read_history(std::istream& in) { return pair_events(read_events(in)); }

inline History read_history_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw HistoryError("BADHISTORY cannot open '" + path + "'; give the path of a history file");
  return read_history(in);
}

// ---- HistoryWriter ----

inline HistoryWriter::HistoryWriter(const std::string& path) : file_(path, std::ios::binary | std::ios::trunc) {
  if (!file_) throw std::runtime_error("cannot create the history file '" + path + "'");
  out_ = &file_;
}

inline std::int64_t HistoryWriter::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline std::uint64_t HistoryWriter::new_process() {
  std::lock_guard<std::mutex> lock(mutex_);
  while (pending_.count(next_process_) != 0 || spent_.count(next_process_) != 0) ++next_process_;
  return next_process_++;
}

inline void HistoryWriter::invoke(std::uint64_t process, Function function, const std::string& key,
                                  std::vector<Value> args) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (pending_.count(process) != 0)
    throw std::logic_error("HistoryWriter: process " + std::to_string(process) + " invokes while its last operation is pending");
  if (spent_.count(process) != 0)
    throw std::logic_error("HistoryWriter: process " + std::to_string(process) +
                           " invokes after an info; take a new id from new_process()");
  Event e;
  e.process = process;
  e.kind = Kind::Invoke;
  e.function = function;
  e.key = key;
  e.args = std::move(args);
  if (std::string why = detail::check_shape(e); !why.empty()) throw std::logic_error("HistoryWriter: " + why);
  next_process_ = std::max(next_process_, process + 1);
  e.time_ns = now_ns();
  emit(e);
  pending_[process] = std::move(e);
}

inline void HistoryWriter::ok(std::uint64_t process, std::optional<Value> result) {
  complete(process, Kind::Ok, std::move(result), {});
}
inline void HistoryWriter::fail(std::uint64_t process, const std::string& why) {
  complete(process, Kind::Fail, std::nullopt, why);
}
inline void HistoryWriter::info(std::uint64_t process, const std::string& why) {
  complete(process, Kind::Info, std::nullopt, why);
}

inline void HistoryWriter::complete(std::uint64_t process, Kind kind, std::optional<Value> result,
                                    const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = pending_.find(process);
  if (it == pending_.end())
    throw std::logic_error("HistoryWriter: process " + std::to_string(process) + " completes nothing it invoked");
  Event e = it->second;
  e.kind = kind;
  e.result = std::move(result);
  e.note = why;
  if (std::string shape = detail::check_shape(e); !shape.empty()) throw std::logic_error("HistoryWriter: " + shape);
  pending_.erase(it);
  if (kind == Kind::Info) spent_.insert(process);
  e.time_ns = now_ns();
  emit(e);
}

inline void HistoryWriter::emit(const Event& event) {
  *out_ << format_event(event) << '\n';
  out_->flush();  // a harness killed mid-test still leaves every event it saw
}

}  // namespace jepsen
