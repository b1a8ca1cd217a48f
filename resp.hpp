// resp.hpp - the Redis protocol (RESP2 and RESP3) for C++17: one value type, an incremental
// parser for requests and for replies, and an encoder that writes into the caller's buffer.
//
// Part of raft.hpp (https://github.com/raft-hpp); standard library only; MIT licence.
//
//   resp::RequestParser parser;                 // server side: commands from clients
//   parser.feed(bytes, n);
//   std::vector<std::string> argv;
//   while (parser.next(argv) == resp::Status::Ok) handle(argv);
//   if (parser.failed()) reply_error_and_close(parser.error());
//
//   std::string out;                            // replies go straight into a buffer
//   resp::write_bulk(out, "value");
//   resp::write(out, resp::Value::map({...}), /*protocol=*/3);
//
// Contents: 1. public API (this part: Value, Limits, parsers, encoder)  2. detail (below the
// border line: the implementation).
#ifndef RESP_HPP
#define RESP_HPP

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#define RESP_HPP_VERSION "0.1.0"

namespace resp {

// ============================================================================================
// 1. Public API
// ============================================================================================

/// Every type a RESP2 or RESP3 peer can send. The RESP3 ones reach only clients that said
/// `HELLO 3`; write() converts them to their RESP2 form for everyone else.
enum class Type : std::uint8_t {
  // RESP2
  SimpleString,  // +OK
  Error,         // -ERR message
  Integer,       // :42
  BulkString,    // $5 hello
  Array,         // *2 ...
  NullBulk,      // $-1   (RESP3: _)
  NullArray,     // *-1   (RESP3: _)
  // RESP3
  Null,       // _
  Double,     // ,3.14
  Boolean,    // #t
  BigNumber,  // (12345678901234567890
  Verbatim,   // =15 txt:Some string  (str holds "txt:Some string")
  Map,        // %2 k v k v           (elements hold keys and values alternately)
  Set,        // ~2 ...
  Push,       // >2 ...
};

/// One RESP value. A plain struct: cheap to build and to move (a string, a vector, two
/// scalars). Handlers return it as their protocol-neutral reply.
struct Value {
  Type type = Type::NullBulk;
  std::int64_t num = 0;       // Integer; Boolean (0 or 1)
  double dbl = 0;             // Double
  /// SimpleString, Error, BulkString, BigNumber, Verbatim; Double: its text when it must be
  /// sent as written (Redis 7.0's "%.17g", a parsed reply's), else empty (the shortest text
  /// that reads back, as Redis 7.2).
  std::string str;
  std::vector<Value> elements;  // Array, Set, Push; Map: key, value, key, value, ...

  // Factories: build replies as `resp::Value::bulk("x")`.
  static Value simple(std::string s) { return Value(Type::SimpleString, std::move(s)); }
  static Value ok() { return simple("OK"); }
  /// `text` starts with the error code word, as Redis: "ERR no such key", "WRONGTYPE ...".
  static Value error(std::string text) { return Value(Type::Error, std::move(text)); }
  static Value bulk(std::string s) { return Value(Type::BulkString, std::move(s)); }
  static Value integer(std::int64_t n) {
    Value v(Type::Integer);
    v.num = n;
    return v;
  }
  static Value nil() { return Value(Type::NullBulk); }
  static Value null_array() { return Value(Type::NullArray); }
  static Value null() { return Value(Type::Null); }
  static Value array(std::vector<Value> items = {}) { return Value(Type::Array, std::move(items)); }
  /// keys and values alternately: map({bulk("k1"), bulk("v1"), bulk("k2"), bulk("v2")})
  static Value map(std::vector<Value> flat_pairs = {}) {
    return Value(Type::Map, std::move(flat_pairs));
  }
  static Value set(std::vector<Value> items = {}) { return Value(Type::Set, std::move(items)); }
  /// An array of two-element arrays ([member, score], ...) that RESP2 receives flattened, as
  /// Redis sends ZRANGE WITHSCORES (an Array with num == 1; the flag does not survive parsing).
  static Value pairs(std::vector<Value> two_element_arrays = {}) {
    Value v(Type::Array, std::move(two_element_arrays));
    v.num = 1;
    return v;
  }
  static Value push(std::vector<Value> items = {}) { return Value(Type::Push, std::move(items)); }
  static Value real(double d) {
    Value v(Type::Double);
    v.dbl = d;
    return v;
  }
  /// A double sent as `text` ("1.1000000000000001"), which must read back as d.
  static Value real(double d, std::string text) {
    Value v(Type::Double, std::move(text));
    v.dbl = d;
    return v;
  }
  static Value boolean(bool b) {
    Value v(Type::Boolean);
    v.num = b ? 1 : 0;
    return v;
  }
  static Value big_number(std::string digits) { return Value(Type::BigNumber, std::move(digits)); }
  /// format is three characters ("txt", "mkd").
  static Value verbatim(std::string_view format, std::string_view text) {
    std::string s;
    s.reserve(format.size() + 1 + text.size());
    s.append(format).append(1, ':').append(text);
    return Value(Type::Verbatim, std::move(s));
  }
  /// An array of bulk strings, e.g. a command: strings({"set", "k", "v"}).
  static Value strings(const std::vector<std::string>& items) {
    Value v(Type::Array);
    v.elements.reserve(items.size());
    for (const auto& s : items) v.elements.push_back(bulk(s));
    return v;
  }

  Value() = default;
  explicit Value(Type t) : type(t) {}
  Value(Type t, std::string s) : type(t), str(std::move(s)) {}
  Value(Type t, std::vector<Value> items) : type(t), elements(std::move(items)) {}

  bool is_error() const { return type == Type::Error; }
  bool is_null() const {
    return type == Type::NullBulk || type == Type::NullArray || type == Type::Null;
  }
  /// True for the types that carry text in `str`.
  bool is_string() const {
    return type == Type::SimpleString || type == Type::BulkString || type == Type::Verbatim ||
           type == Type::BigNumber || type == Type::Error;
  }
  bool is_aggregate() const {
    return type == Type::Array || type == Type::Map || type == Type::Set || type == Type::Push;
  }
  /// Text of a Verbatim value without its "txt:" prefix; `str` for other string types.
  std::string_view text() const {
    std::string_view s(str);
    if (type == Type::Verbatim && s.size() >= 4) s.remove_prefix(4);
    return s;
  }
  bool operator==(const Value& o) const {
    // A double is its value, however it is written.
    return type == o.type && num == o.num && (dbl == o.dbl || (dbl != dbl && o.dbl != o.dbl)) &&
           (type == Type::Double || str == o.str) &&
           elements == o.elements;
  }
  bool operator!=(const Value& o) const { return !(*this == o); }
};

/// Limits on what a peer may declare. Defaults follow Redis (proto-max-bulk-len 512 MiB,
/// 1024*1024 multibulk items, 64 KiB inline lines). A declared length above a limit is a
/// protocol error, reported before anything of that size is allocated.
struct Limits {
  std::size_t max_bulk_length = 512u * 1024 * 1024;
  std::size_t max_multibulk_length = 1024u * 1024;
  std::size_t max_inline_length = 64u * 1024;
  std::size_t max_nesting = 64;  // aggregate depth, replies only
};

enum class Status {
  Ok,        // a complete value came out
  NeedMore,  // feed more bytes
  Error,     // protocol error: error() says which, in Redis's words; the stream is unusable
};

/// Server side. Parses commands as Redis does: multibulk arrays of bulk strings, and inline
/// commands as telnet and redis-cli send them (`set key "a value"`, a bare LF ends a line).
/// Bytes may arrive in any split; a pipeline of thousands of commands costs linear time.
class RequestParser {
 public:
  explicit RequestParser(Limits limits = {});
  /// Appends bytes to the parser's buffer.
  void feed(const char* data, std::size_t n);
  void feed(std::string_view s) { feed(s.data(), s.size()); }
  /// Moves the next complete command into argv (its strings' capacity is reused). Empty
  /// inline lines are skipped. After Error, every call returns Error.
  Status next(std::vector<std::string>& argv);
  bool failed() const { return !error_.empty(); }
  /// "Protocol error: invalid bulk length" (no "-ERR " prefix; write_error adds the code).
  const std::string& error() const { return error_; }
  /// Bytes received but not yet returned as part of a command.
  std::size_t buffered() const;
  const Limits& limits() const { return limits_; }
  /// Changes the limits for what is parsed from now on (a server raises them once a peer
  /// has authenticated).
  void set_limits(const Limits& limits) { limits_ = limits; }

 private:
  Limits limits_;
  std::string buf_;
  std::size_t pos_ = 0;      // start of unparsed bytes in buf_
  std::size_t scanned_ = 0;  // bytes after pos_ known not to hold the awaited line end
  std::string error_;
  // Multibulk state kept between feeds, so a large command is never re-scanned.
  std::size_t bulks_left_ = 0;     // bulks still expected; 0: between commands
  bool in_bulk_ = false;           // header read, data of args_[argc_] arriving
  std::size_t bulk_len_ = 0;       // declared length of that bulk
  std::vector<std::string> args_;  // the command being assembled, swapped into argv
  std::size_t argc_ = 0;           // complete arguments in args_
  std::size_t held_ = 0;           // bytes of the unfinished command already consumed
  Status fail(std::string message);
  Status parse_inline();
  Status parse_multibulk_count();
  Status parse_bulks(std::vector<std::string>& argv);
  std::string& arg_slot();
  Status finish(std::vector<std::string>& argv);
};

/// Client side (and the peer protocol): parses any RESP2 or RESP3 value, nested to
/// Limits::max_nesting, in any split of the input.
class ReplyParser {
 public:
  explicit ReplyParser(Limits limits = {});
  void feed(const char* data, std::size_t n);
  void feed(std::string_view s) { feed(s.data(), s.size()); }
  Status next(Value& out);
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  std::size_t buffered() const;
  const Limits& limits() const { return limits_; }

 private:
  Limits limits_;
  std::string buf_;
  std::size_t pos_ = 0;
  std::size_t scanned_ = 0;  // bytes after pos_ known not to hold the awaited line end
  std::string error_;
  // The value being built. Each open aggregate is the last element of the one before it.
  Value root_;
  std::vector<std::size_t> stack_;  // element counts of the open aggregates, outermost first
  bool in_bulk_ = false;            // header read, data of newest_value() arriving
  std::size_t bulk_len_ = 0;        // declared length of that bulk
  std::size_t held_ = 0;            // bytes of the unfinished value already consumed
  Status fail(std::string message);
  Status parse_value();
  Status read_bulk_data();
  Value& innermost_open();
  Value& add_value(Type type);
  Value& newest_value();
  bool close_value();
};

// Encoder: each function appends one value to `out`. Simple strings and errors must be one
// line: CR and LF in them are written as spaces, as Redis does.
void write_simple(std::string& out, std::string_view s);
void write_error(std::string& out, std::string_view text);  // "ERR message" -> "-ERR message\r\n"
void write_integer(std::string& out, std::int64_t n);
void write_bulk(std::string& out, std::string_view s);
void write_null_bulk(std::string& out);
void write_array_header(std::string& out, std::size_t n);
/// A command as clients send it: an array of bulk strings.
void write_command(std::string& out, const std::vector<std::string>& args);
void write_command(std::string& out, std::initializer_list<std::string_view> args);
/// Any value. protocol 2 converts RESP3-only types to their RESP2 form (map -> flat array,
/// set/push -> array, null -> $-1, double/big number/verbatim -> bulk, boolean -> integer).
void write(std::string& out, const Value& v, int protocol = 2);
/// Convenience: the encoded form of v.
std::string encode(const Value& v, int protocol = 2);

}  // namespace resp

// ============================================================================================
// 2. Implementation
// ============================================================================================

namespace resp {
namespace detail {

constexpr std::size_t kNotFound = static_cast<std::size_t>(-1);
// A "*<count>" or "$<length>" line may take this many bytes before its CR (Redis's
// PROTO_INLINE_MAX_SIZE); the digits need 21, the rest only bounds a peer sending garbage.
constexpr std::size_t kMaxLengthLine = 64 * 1024;
// Bulks this long or longer go straight into their string as their bytes arrive (Redis's
// PROTO_MBULK_BIG_ARG); shorter ones wait in the input buffer and are copied once.
constexpr std::size_t kBigBulk = 32 * 1024;
// The first allocation for a big bulk once its bytes start arriving.
constexpr std::size_t kFirstBulkReserve = 64 * 1024;
// Elements reserved on the word of a count line alone; beyond it, storage grows as they arrive.
constexpr std::size_t kMaxReservedItems = 1024;
// An input buffer emptied while holding more than this is given back to the allocator.
constexpr std::size_t kKeptBufferCapacity = 1024 * 1024;

inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

/// Redis's string2ll, the one integer parser for Redis arguments and RESP integers (the store
/// uses it too): an optional '-', digits, no leading zeros, no '+' or spaces, at most 20
/// characters, within int64; "-0" is refused, as Redis refuses it.
inline bool parse_int64(std::string_view s, std::int64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  if (s == "0") {
    out = 0;
    return true;
  }
  const bool negative = s[0] == '-';
  if (negative) s.remove_prefix(1);
  if (s.empty() || s[0] < '1' || s[0] > '9') return false;
  std::uint64_t v = 0;
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  for (const char c : s) {
    if (!is_digit(c)) return false;
    const unsigned d = static_cast<unsigned>(c - '0');
    if (v > (kMax - d) / 10) return false;
    v = v * 10 + d;
  }
  constexpr std::uint64_t kMaxPositive = std::numeric_limits<std::int64_t>::max();
  if (!negative) {
    if (v > kMaxPositive) return false;
    out = static_cast<std::int64_t>(v);
  } else {
    if (v > kMaxPositive + 1) return false;
    out = v == kMaxPositive + 1 ? std::numeric_limits<std::int64_t>::min()
                                : -static_cast<std::int64_t>(v);
  }
  return true;
}

/// A byte as error messages show it: itself when printable, else \xHH.
inline std::string show_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string(1, c);
  const char* hex = "0123456789abcdef";
  return std::string{'\\', 'x', hex[u >> 4], hex[u & 15]};
}

/// Offset from `pos` of the first `c` in `buf`, or kNotFound. `scanned` remembers how far a
/// fruitless search got, so a line arriving a byte at a time is searched once in all.
inline std::size_t find_byte(const std::string& buf, std::size_t pos, std::size_t& scanned,
                             char c) {
  const char* begin = buf.data() + pos;
  const std::size_t avail = buf.size() - pos;
  const void* hit =
      scanned < avail ? std::memchr(begin + scanned, c, avail - scanned) : nullptr;
  if (hit == nullptr) {
    scanned = avail;
    return kNotFound;
  }
  scanned = static_cast<std::size_t>(static_cast<const char*>(hit) - begin);
  return scanned;
}

enum class Line : std::uint8_t { Ok, NeedMore, TooLong, Invalid };

/// Reads the CRLF-terminated line whose type byte is at buf[pos]; `text` is what follows the
/// type byte. The line ends at the first CR, which must be followed by LF. It is TooLong when
/// more than `bound` bytes (type byte included) come before that CR. On Ok, pos is past CRLF.
inline Line read_line(const std::string& buf, std::size_t& pos, std::size_t& scanned,
                      std::size_t bound, std::string_view& text) {
  const std::size_t avail = buf.size() - pos;
  const std::size_t cr = find_byte(buf, pos, scanned, '\r');
  if (cr == kNotFound) return avail > bound ? Line::TooLong : Line::NeedMore;
  if (cr > bound) return Line::TooLong;
  if (cr + 1 == avail) return Line::NeedMore;
  const char* begin = buf.data() + pos;
  if (begin[cr + 1] != '\n') return Line::Invalid;
  text = std::string_view(begin + 1, cr - 1);
  pos += cr + 2;
  scanned = 0;
  return Line::Ok;
}

/// Reads "<type byte><integer>\r\n" at buf[pos] (a count or a length).
inline Line read_number_line(const std::string& buf, std::size_t& pos, std::size_t& scanned,
                             std::int64_t& value) {
  // Fast path for the shape of nearly every such line: up to 18 digits (no overflow
  // possible), no leading zero, then CRLF.
  const char* begin = buf.data() + pos;
  const std::size_t avail = buf.size() - pos;
  const std::size_t digits_end = std::min<std::size_t>(avail, 19);
  std::size_t i = 1;
  std::int64_t v = 0;
  while (i < digits_end && is_digit(begin[i])) v = v * 10 + (begin[i++] - '0');
  if (i > 1 && i + 1 < avail && begin[i] == '\r' && begin[i + 1] == '\n' &&
      (begin[1] != '0' || i == 2)) {
    value = v;
    pos += i + 2;
    scanned = 0;
    return Line::Ok;
  }
  std::string_view text;
  std::size_t after = pos;
  const Line r = read_line(buf, after, scanned, kMaxLengthLine, text);
  if (r != Line::Ok) return r;
  if (!parse_int64(text, value)) return Line::Invalid;
  pos = after;
  return Line::Ok;
}

/// Appends to a big bulk's string, which will end up `final_size` long. Its capacity follows
/// the bytes received, not the length declared: at most max(kFirstBulkReserve, 4 x received),
/// never past final_size. Growing fourfold keeps reallocation and page faults few.
inline void append_bounded(std::string& s, const char* p, std::size_t n, std::size_t final_size) {
  const std::size_t needed = s.size() + n;
  if (needed > s.capacity()) {
    s.reserve(std::min(final_size, std::max({needed, 4 * s.capacity(), kFirstBulkReserve})));
  }
  s.append(p, n);
}

/// Appends received bytes to a parser's input buffer, first dropping the consumed prefix when
/// that moves fewer bytes than were consumed (so a long pipeline costs linear time).
inline void append_input(std::string& buf, std::size_t& pos, const char* data, std::size_t n) {
  if (pos == buf.size()) {
    if (buf.capacity() > kKeptBufferCapacity) {
      std::string().swap(buf);
    } else {
      buf.clear();
    }
    pos = 0;
  } else if (pos >= buf.size() - pos) {
    buf.erase(0, pos);
    pos = 0;
  }
  buf.append(data, n);
}

inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// Splits an inline command line as Redis's sdssplitargs does; each word goes to
/// next_word(), which returns the (cleared) string to fill. False on unbalanced quotes.
/// Unlike Redis, a NUL byte is an ordinary character rather than the end of the line.
template <typename NextWord>
bool split_inline(const char* p, const char* end, NextWord next_word) {
  for (;;) {
    while (p != end && is_space(*p)) ++p;
    if (p == end) return true;
    std::string& word = next_word();
    bool in_double = false;
    bool in_single = false;
    for (bool done = false; !done;) {
      if (in_double) {
        if (p == end) return false;
        if (*p == '\\' && end - p >= 4 && p[1] == 'x' && hex_value(p[2]) >= 0 &&
            hex_value(p[3]) >= 0) {
          word.push_back(static_cast<char>(hex_value(p[2]) * 16 + hex_value(p[3])));
          p += 4;
        } else if (*p == '\\' && end - p >= 2) {
          char c = p[1];
          switch (c) {
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'b': c = '\b'; break;
            case 'a': c = '\a'; break;
            default: break;
          }
          word.push_back(c);
          p += 2;
        } else if (*p == '"') {
          // A closing quote must be followed by a space or by the end of the line.
          if (end - p >= 2 && !is_space(p[1])) return false;
          ++p;
          done = true;
        } else {
          word.push_back(*p++);
        }
      } else if (in_single) {
        if (p == end) return false;
        if (*p == '\\' && end - p >= 2 && p[1] == '\'') {
          word.push_back('\'');
          p += 2;
        } else if (*p == '\'') {
          if (end - p >= 2 && !is_space(p[1])) return false;
          ++p;
          done = true;
        } else {
          word.push_back(*p++);
        }
      } else if (p == end || *p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') {
        done = true;
      } else if (*p == '"') {
        in_double = true;
        ++p;
      } else if (*p == '\'') {
        in_single = true;
        ++p;
      } else {
        word.push_back(*p++);
      }
    }
  }
}

/// "<prefix><n>\r\n", the header of every length-prefixed value.
inline void append_header(std::string& out, char prefix, std::int64_t n) {
  char b[24];
  b[0] = prefix;
  char* end = std::to_chars(b + 1, b + 22, n).ptr;
  end[0] = '\r';
  end[1] = '\n';
  out.append(b, static_cast<std::size_t>(end + 2 - b));
}

inline void append_size_header(std::string& out, char prefix, std::size_t n) {
  append_header(out, prefix, static_cast<std::int64_t>(n));
}

/// A one-line value: CR and LF inside become spaces, as Redis does, so the line stays one.
inline void append_line(std::string& out, char prefix, std::string_view s) {
  out.push_back(prefix);
  const std::size_t at = out.size();
  out.append(s);
  for (std::size_t i = at; i < out.size(); ++i) {
    if (out[i] == '\r' || out[i] == '\n') out[i] = ' ';
  }
  out.append("\r\n", 2);
}

/// The shortest text that reads back as the same double; "inf", "-inf" and "nan" as RESP3.
inline std::string_view format_double(double d, char (&b)[32]) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
#if defined(__cpp_lib_to_chars)
  const char* end = std::to_chars(b, b + sizeof b, d).ptr;
  return std::string_view(b, static_cast<std::size_t>(end - b));
#else  // no floating-point <charconv> (before GCC 11): the fewest digits that read back
  int n = 0;
  for (int precision = 15; precision <= 17; ++precision) {
    n = std::snprintf(b, sizeof b, "%.*g", precision, d);
    if (std::strtod(b, nullptr) == d) break;
  }
  return std::string_view(b, static_cast<std::size_t>(n));
#endif
}

inline bool parse_double(std::string_view s, double& out) {
  if (s.empty()) return false;
#if defined(__cpp_lib_to_chars)
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
#else
  const std::string copy(s);  // strtod needs the terminating NUL
  if (is_space(copy[0]) || copy[0] == '+') return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(copy.c_str(), &end);
  const bool overflow = errno == ERANGE && std::isinf(out);
  return end == copy.c_str() + copy.size() && !overflow;
#endif
}

inline bool is_big_number(std::string_view s) {
  if (!s.empty() && s[0] == '-') s.remove_prefix(1);
  if (s.empty()) return false;
  for (char c : s) {
    if (!is_digit(c)) return false;
  }
  return true;
}

inline bool is_verbatim(std::string_view s) { return s.size() >= 4 && s[3] == ':'; }

}  // namespace detail

// --------------------------------------------------------------------------------------------
// RequestParser
// --------------------------------------------------------------------------------------------

inline RequestParser::RequestParser(Limits limits) : limits_(limits) {}

inline void RequestParser::feed(const char* data, std::size_t n) {
  if (n == 0 || failed()) return;
  // The middle of a big bulk with nothing else buffered: its bytes go straight to the argument.
  if (in_bulk_ && bulk_len_ >= detail::kBigBulk && pos_ == buf_.size()) {
    std::string& arg = args_[argc_];
    const std::size_t take = std::min(n, bulk_len_ - arg.size());
    detail::append_bounded(arg, data, take, bulk_len_);
    held_ += take;
    data += take;
    n -= take;
    if (n == 0) return;
  }
  detail::append_input(buf_, pos_, data, n);
}

inline std::size_t RequestParser::buffered() const { return held_ + (buf_.size() - pos_); }

inline Status RequestParser::fail(std::string message) {
  error_ = std::move(message);
  return Status::Error;
}

inline Status RequestParser::next(std::vector<std::string>& argv) {
  if (failed()) return Status::Error;
  while (bulks_left_ == 0) {
    if (pos_ == buf_.size()) return Status::NeedMore;
    if (buf_[pos_] == '*') {
      const Status s = parse_multibulk_count();
      if (s != Status::Ok) return s;
      // *0 and negative counts are skipped, as Redis does.
    } else {
      const Status s = parse_inline();
      if (s != Status::Ok) return s;
      if (argc_ > 0) return finish(argv);
      // An empty line: skipped.
    }
  }
  return parse_bulks(argv);
}

inline std::string& RequestParser::arg_slot() {
  if (argc_ == args_.size()) args_.emplace_back();
  std::string& arg = args_[argc_];
  arg.clear();
  return arg;
}

inline Status RequestParser::finish(std::vector<std::string>& argv) {
  // Swapping hands the caller the strings just filled and keeps the caller's old strings
  // (and their capacity) for the next command.
  args_.resize(argc_);
  argv.swap(args_);
  argc_ = 0;
  held_ = 0;
  return Status::Ok;
}

inline Status RequestParser::parse_inline() {
  const std::size_t avail = buf_.size() - pos_;
  const std::size_t lf = detail::find_byte(buf_, pos_, scanned_, '\n');
  if (lf == detail::kNotFound ? avail > limits_.max_inline_length
                              : lf > limits_.max_inline_length) {
    return fail("Protocol error: too big inline request");
  }
  if (lf == detail::kNotFound) return Status::NeedMore;
  const char* line = buf_.data() + pos_;
  std::size_t len = lf;
  if (len > 0 && line[len - 1] == '\r') --len;
  pos_ += lf + 1;
  scanned_ = 0;
  argc_ = 0;
  const bool balanced = detail::split_inline(line, line + len, [this]() -> std::string& {
    std::string& word = arg_slot();
    ++argc_;
    return word;
  });
  if (!balanced) return fail("Protocol error: unbalanced quotes in request");
  return Status::Ok;
}

inline Status RequestParser::parse_multibulk_count() {
  const std::size_t start = pos_;
  std::int64_t count = 0;
  switch (detail::read_number_line(buf_, pos_, scanned_, count)) {
    case detail::Line::Ok: break;
    case detail::Line::NeedMore: return Status::NeedMore;
    case detail::Line::TooLong: return fail("Protocol error: too big mbulk count string");
    case detail::Line::Invalid: return fail("Protocol error: invalid multibulk length");
  }
  if (count > 0 && static_cast<std::uint64_t>(count) > limits_.max_multibulk_length) {
    return fail("Protocol error: invalid multibulk length");
  }
  if (count <= 0) return Status::Ok;
  bulks_left_ = static_cast<std::size_t>(count);
  argc_ = 0;
  held_ = pos_ - start;
  args_.reserve(std::min(bulks_left_, detail::kMaxReservedItems));
  return Status::Ok;
}

inline Status RequestParser::parse_bulks(std::vector<std::string>& argv) {
  while (bulks_left_ > 0) {
    if (!in_bulk_) {
      if (pos_ == buf_.size()) return Status::NeedMore;
      if (buf_[pos_] != '$') {
        return fail("Protocol error: expected '$', got '" + detail::show_byte(buf_[pos_]) + "'");
      }
      const std::size_t start = pos_;
      std::int64_t len = 0;
      switch (detail::read_number_line(buf_, pos_, scanned_, len)) {
        case detail::Line::Ok: break;
        case detail::Line::NeedMore: return Status::NeedMore;
        case detail::Line::TooLong: return fail("Protocol error: too big bulk count string");
        case detail::Line::Invalid: return fail("Protocol error: invalid bulk length");
      }
      if (len < 0 || static_cast<std::uint64_t>(len) > limits_.max_bulk_length) {
        return fail("Protocol error: invalid bulk length");
      }
      held_ += pos_ - start;
      bulk_len_ = static_cast<std::size_t>(len);
      std::string& arg = arg_slot();
      // Keep a reused string's capacity unless it dwarfs what this bulk needs.
      if (arg.capacity() > detail::kBigBulk && arg.capacity() / 2 > bulk_len_) {
        std::string().swap(arg);
      }
      in_bulk_ = true;
    }
    std::string& arg = args_[argc_];
    const std::size_t need = bulk_len_ - arg.size();
    const std::size_t avail = buf_.size() - pos_;
    const char* p = buf_.data() + pos_;
    if (avail >= need + 2) {
      if (p[need] != '\r' || p[need + 1] != '\n') {
        return fail("Protocol error: expected CRLF after bulk data");
      }
      arg.append(p, need);
      pos_ += need + 2;
      held_ += need + 2;
      in_bulk_ = false;
      ++argc_;
      --bulks_left_;
      continue;
    }
    if (bulk_len_ >= detail::kBigBulk && need > 0) {
      const std::size_t take = std::min(avail, need);
      detail::append_bounded(arg, p, take, bulk_len_);
      pos_ += take;
      held_ += take;
    }
    return Status::NeedMore;
  }
  return finish(argv);
}

// --------------------------------------------------------------------------------------------
// ReplyParser
// --------------------------------------------------------------------------------------------

inline ReplyParser::ReplyParser(Limits limits) : limits_(limits) {}

inline void ReplyParser::feed(const char* data, std::size_t n) {
  if (n == 0 || failed()) return;
  if (in_bulk_ && bulk_len_ >= detail::kBigBulk && pos_ == buf_.size()) {
    std::string& str = newest_value().str;
    const std::size_t take = std::min(n, bulk_len_ - str.size());
    detail::append_bounded(str, data, take, bulk_len_);
    held_ += take;
    data += take;
    n -= take;
    if (n == 0) return;
  }
  detail::append_input(buf_, pos_, data, n);
}

inline std::size_t ReplyParser::buffered() const { return held_ + (buf_.size() - pos_); }

inline Status ReplyParser::fail(std::string message) {
  error_ = std::move(message);
  return Status::Error;
}

inline Status ReplyParser::next(Value& out) {
  if (failed()) return Status::Error;
  for (;;) {
    const Status s = in_bulk_ ? read_bulk_data() : parse_value();
    if (s != Status::Ok) return s;
    if (in_bulk_ || !close_value()) continue;
    out = std::move(root_);  // root_ is assigned afresh by the next value's first add_value
    held_ = 0;
    return Status::Ok;
  }
}

inline Value& ReplyParser::innermost_open() {
  // Found by walking rather than kept as a pointer, so a parser stays safe to move.
  Value* v = &root_;
  for (std::size_t depth = 1; depth < stack_.size(); ++depth) v = &v->elements.back();
  return *v;
}

inline Value& ReplyParser::add_value(Type type) {
  if (stack_.empty()) {
    root_ = Value(type);
    return root_;
  }
  std::vector<Value>& elements = innermost_open().elements;
  elements.emplace_back(type);
  return elements.back();
}

inline Value& ReplyParser::newest_value() {
  return stack_.empty() ? root_ : innermost_open().elements.back();
}

inline bool ReplyParser::close_value() {
  // A value is complete, or an aggregate just opened: closes every aggregate it completes.
  while (!stack_.empty()) {
    if (innermost_open().elements.size() < stack_.back()) return false;
    stack_.pop_back();
  }
  return true;
}

inline Status ReplyParser::read_bulk_data() {
  Value& v = newest_value();
  const std::size_t need = bulk_len_ - v.str.size();
  const std::size_t avail = buf_.size() - pos_;
  const char* p = buf_.data() + pos_;
  if (avail >= need + 2) {
    if (p[need] != '\r' || p[need + 1] != '\n') {
      return fail("Protocol error: expected CRLF after bulk data");
    }
    v.str.append(p, need);
    pos_ += need + 2;
    held_ += need + 2;
    in_bulk_ = false;
    if (v.type == Type::Verbatim && !detail::is_verbatim(v.str)) {
      return fail("Protocol error: invalid verbatim string");
    }
    return Status::Ok;
  }
  if (bulk_len_ >= detail::kBigBulk && need > 0) {
    const std::size_t take = std::min(avail, need);
    detail::append_bounded(v.str, p, take, bulk_len_);
    pos_ += take;
    held_ += take;
  }
  return Status::NeedMore;
}

inline Status ReplyParser::parse_value() {
  if (pos_ == buf_.size()) return Status::NeedMore;
  const std::size_t start = pos_;
  const char prefix = buf_[pos_];
  std::string_view text;
  std::int64_t n = 0;
  // Lines carrying text may be as long as a bulk; lines carrying a number as a count line.
  const std::size_t text_bound = limits_.max_bulk_length < std::numeric_limits<std::size_t>::max()
                                     ? limits_.max_bulk_length + 1
                                     : limits_.max_bulk_length;
  switch (prefix) {
    case '+':
    case '-':
    case '(':
    case ':':
    case ',':
    case '#':
    case '_': {
      const std::size_t bound = prefix == '+' || prefix == '-' || prefix == '('
                                    ? text_bound
                                    : detail::kMaxLengthLine;
      switch (detail::read_line(buf_, pos_, scanned_, bound, text)) {
        case detail::Line::Ok: break;
        case detail::Line::NeedMore: return Status::NeedMore;
        case detail::Line::TooLong: return fail("Protocol error: line too long");
        case detail::Line::Invalid: return fail("Protocol error: line not terminated by CRLF");
      }
      if (prefix == '+') {
        add_value(Type::SimpleString).str.assign(text);
      } else if (prefix == '-') {
        add_value(Type::Error).str.assign(text);
      } else if (prefix == '(') {
        if (!detail::is_big_number(text)) return fail("Protocol error: invalid big number");
        add_value(Type::BigNumber).str.assign(text);
      } else if (prefix == ':') {
        if (!detail::parse_int64(text, n)) {
          return fail("Protocol error: invalid integer");
        }
        add_value(Type::Integer).num = n;
      } else if (prefix == ',') {
        double d = 0;
        if (!detail::parse_double(text, d)) return fail("Protocol error: invalid double");
        Value& v = add_value(Type::Double);
        v.dbl = d;
        v.str.assign(text);  // re-sent as it came (a forwarded reply keeps Redis's digits)
      } else if (prefix == '#') {
        if (text != "t" && text != "f") return fail("Protocol error: invalid boolean");
        add_value(Type::Boolean).num = text == "t" ? 1 : 0;
      } else {
        if (!text.empty()) return fail("Protocol error: invalid null");
        add_value(Type::Null);
      }
      break;
    }
    case '$':
    case '=':
    case '!': {
      if (buf_.size() - pos_ >= 2 && buf_[pos_ + 1] == '?') {
        return fail("Protocol error: streamed RESP3 strings are not supported");
      }
      switch (detail::read_number_line(buf_, pos_, scanned_, n)) {
        case detail::Line::Ok: break;
        case detail::Line::NeedMore: return Status::NeedMore;
        case detail::Line::TooLong: return fail("Protocol error: too big bulk count string");
        case detail::Line::Invalid: return fail("Protocol error: invalid bulk length");
      }
      if (n == -1 && prefix == '$') {
        add_value(Type::NullBulk);
        break;
      }
      if (n < 0 || static_cast<std::uint64_t>(n) > limits_.max_bulk_length) {
        return fail("Protocol error: invalid bulk length");
      }
      // '!' is RESP3's blob error: an error that may hold any bytes.
      add_value(prefix == '$' ? Type::BulkString : prefix == '=' ? Type::Verbatim : Type::Error);
      in_bulk_ = true;
      bulk_len_ = static_cast<std::size_t>(n);
      break;
    }
    case '*':
    case '%':
    case '~':
    case '>': {
      if (buf_.size() - pos_ >= 2 && buf_[pos_ + 1] == '?') {
        return fail("Protocol error: streamed RESP3 aggregates are not supported");
      }
      switch (detail::read_number_line(buf_, pos_, scanned_, n)) {
        case detail::Line::Ok: break;
        case detail::Line::NeedMore: return Status::NeedMore;
        case detail::Line::TooLong: return fail("Protocol error: too big mbulk count string");
        case detail::Line::Invalid: return fail("Protocol error: invalid multibulk length");
      }
      if (n == -1 && prefix == '*') {
        add_value(Type::NullArray);
        break;
      }
      if (n < 0 || static_cast<std::uint64_t>(n) > limits_.max_multibulk_length) {
        return fail("Protocol error: invalid multibulk length");
      }
      if (stack_.size() >= limits_.max_nesting) {
        return fail("Protocol error: aggregates nested deeper than " +
                    std::to_string(limits_.max_nesting) + " levels");
      }
      const Type type = prefix == '*'   ? Type::Array
                        : prefix == '%' ? Type::Map
                        : prefix == '~' ? Type::Set
                                        : Type::Push;
      const std::size_t count = static_cast<std::size_t>(n) * (prefix == '%' ? 2 : 1);
      // Reserve only what the bytes already here could hold (an element takes 3 or more).
      const std::size_t could_hold = (buf_.size() - pos_) / 3;
      add_value(type).elements.reserve(std::min({count, could_hold, detail::kMaxReservedItems}));
      stack_.push_back(count);
      break;
    }
    case '|': return fail("Protocol error: RESP3 attributes are not supported");
    default:
      return fail("Protocol error: unknown reply type byte '" + detail::show_byte(prefix) + "'");
  }
  held_ += pos_ - start;
  return Status::Ok;
}

// --------------------------------------------------------------------------------------------
// Encoder
// --------------------------------------------------------------------------------------------

inline void write_simple(std::string& out, std::string_view s) { detail::append_line(out, '+', s); }

inline void write_error(std::string& out, std::string_view text) {
  detail::append_line(out, '-', text);
}

inline void write_integer(std::string& out, std::int64_t n) { detail::append_header(out, ':', n); }

inline void write_bulk(std::string& out, std::string_view s) {
  detail::append_size_header(out, '$', s.size());
  out.append(s);
  out.append("\r\n", 2);
}

inline void write_null_bulk(std::string& out) { out.append("$-1\r\n", 5); }

inline void write_array_header(std::string& out, std::size_t n) {
  detail::append_size_header(out, '*', n);
}

inline void write_command(std::string& out, const std::vector<std::string>& args) {
  write_array_header(out, args.size());
  for (const std::string& a : args) write_bulk(out, a);
}

inline void write_command(std::string& out, std::initializer_list<std::string_view> args) {
  write_array_header(out, args.size());
  for (std::string_view a : args) write_bulk(out, a);
}

inline void write(std::string& out, const Value& v, int protocol) {
  const bool resp3 = protocol >= 3;
  switch (v.type) {
    case Type::SimpleString: write_simple(out, v.str); return;
    case Type::Error: write_error(out, v.str); return;
    case Type::Integer: write_integer(out, v.num); return;
    case Type::BulkString: write_bulk(out, v.str); return;
    case Type::NullBulk:
    case Type::Null:
      if (resp3) {
        out.append("_\r\n", 3);
      } else {
        write_null_bulk(out);
      }
      return;
    case Type::NullArray: out.append(resp3 ? "_\r\n" : "*-1\r\n"); return;
    case Type::Double: {
      char b[32];
      const std::string_view text = v.str.empty() ? detail::format_double(v.dbl, b) : std::string_view(v.str);
      if (resp3) {
        detail::append_line(out, ',', text);
      } else {
        write_bulk(out, text);
      }
      return;
    }
    case Type::Boolean:
      if (resp3) {
        out.append(v.num != 0 ? "#t\r\n" : "#f\r\n", 4);
      } else {
        out.append(v.num != 0 ? ":1\r\n" : ":0\r\n", 4);
      }
      return;
    case Type::BigNumber:
      if (resp3) {
        detail::append_line(out, '(', v.str);
      } else {
        write_bulk(out, v.str);
      }
      return;
    case Type::Verbatim:
      // A str without its "fmt:" prefix is taken as plain text.
      if (!resp3) {
        write_bulk(out, detail::is_verbatim(v.str) ? v.text() : std::string_view(v.str));
      } else if (detail::is_verbatim(v.str)) {
        detail::append_size_header(out, '=', v.str.size());
        out.append(v.str).append("\r\n", 2);
      } else {
        detail::append_size_header(out, '=', v.str.size() + 4);
        out.append("txt:", 4).append(v.str).append("\r\n", 2);
      }
      return;
    case Type::Map:
      if (resp3) {
        // An odd element count (a key without a value) is completed with a null value.
        detail::append_size_header(out, '%', (v.elements.size() + 1) / 2);
        for (const Value& e : v.elements) write(out, e, protocol);
        if (v.elements.size() % 2 != 0) out.append("_\r\n", 3);
        return;
      }
      break;
    case Type::Array:
      if (!resp3 && v.num == 1) {  // pairs(): flattened
        std::size_t n = 0;
        for (const Value& e : v.elements) n += e.elements.size();
        write_array_header(out, n);
        for (const Value& e : v.elements)
          for (const Value& x : e.elements) write(out, x, protocol);
        return;
      }
      break;
    case Type::Set:
      if (resp3) {
        detail::append_size_header(out, '~', v.elements.size());
        for (const Value& e : v.elements) write(out, e, protocol);
        return;
      }
      break;
    case Type::Push:
      if (resp3) {
        detail::append_size_header(out, '>', v.elements.size());
        for (const Value& e : v.elements) write(out, e, protocol);
        return;
      }
      break;
  }
  write_array_header(out, v.elements.size());
  for (const Value& e : v.elements) write(out, e, protocol);
}

inline std::string encode(const Value& v, int protocol) {
  std::string out;
  write(out, v, protocol);
  return out;
}

}  // namespace resp

#endif  // RESP_HPP
