// libFuzzer target for resp::ReplyParser and the encoder. The first input byte picks the
// limits and the way the rest is cut into feeds; the rest is the byte stream a server sends.
// Checks:
//   - any split (one byte at a time, pseudo-random chunks) gives what one feed gives;
//   - every parsed value, written with protocol 3, parses back to itself (up to what RESP3
//     cannot say: one null, no CR/LF in simple strings and errors);
//   - written with protocol 2, it parses back to its RESP2 conversion;
//   - no crash, leak or undefined behaviour (ASan, UBSan).
#include "resp.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

using resp::Type;
using resp::Value;

struct Run {
  std::vector<Value> values;
  resp::Status last = resp::Status::NeedMore;
  std::string error;
  std::size_t buffered = 0;
};

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "invariant broken: %s\n", what);
  std::abort();
}

template <typename Chunk>
Run parse(std::string_view input, const resp::Limits& limits, Chunk chunk) {
  resp::ReplyParser parser(limits);
  Run run;
  Value v;
  std::size_t at = 0;
  for (std::size_t i = 0; at < input.size(); ++i) {
    const std::size_t n = std::min(chunk(i), input.size() - at);
    parser.feed(input.data() + at, n);
    at += n;
    while ((run.last = parser.next(v)) == resp::Status::Ok) run.values.push_back(v);
  }
  if (input.empty()) run.last = parser.next(v);
  run.error = parser.error();
  run.buffered = parser.buffered();
  return run;
}

void require_same(const Run& a, const Run& b, const char* how) {
  require(a.values == b.values, how);
  require(a.last == b.last, how);
  require(a.error == b.error, how);
  if (a.last != resp::Status::Error) require(a.buffered == b.buffered, how);
}

Value parse_one(const std::string& bytes, const char* what) {
  resp::ReplyParser parser;
  parser.feed(bytes);
  Value v;
  require(parser.next(v) == resp::Status::Ok, what);
  require(parser.buffered() == 0, what);
  return v;
}

// Simple strings and errors are one line: the encoder writes their CR and LF as spaces.
void make_one_line(Value& v) {
  if (v.type != Type::SimpleString && v.type != Type::Error) return;
  for (char& c : v.str) {
    if (c == '\r' || c == '\n') c = ' ';
  }
}

// What v reads back as after write(v, 3).
Value as_resp3(Value v) {
  if (v.type == Type::NullBulk || v.type == Type::NullArray) v.type = Type::Null;
  make_one_line(v);
  for (Value& e : v.elements) e = as_resp3(std::move(e));
  return v;
}

// What v reads back as after write(v, 2).
Value as_resp2(Value v) {
  make_one_line(v);
  switch (v.type) {
    case Type::Null: return Value::nil();
    case Type::Double: {
      const std::string text = resp::encode(v, 3);  // ",<text>\r\n"
      return Value::bulk(text.substr(1, text.size() - 3));
    }
    case Type::Boolean: return Value::integer(v.num);
    case Type::BigNumber: return Value::bulk(v.str);
    case Type::Verbatim: return Value::bulk(std::string(v.text()));
    case Type::Map:
    case Type::Set:
    case Type::Push: v.type = Type::Array; break;
    default: break;
  }
  for (Value& e : v.elements) e = as_resp2(std::move(e));
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned control = data[0];
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  resp::Limits limits;
  if (control & 1) {
    limits.max_bulk_length = 40;
    limits.max_multibulk_length = 6;
    limits.max_nesting = 4;
  }

  const Run whole = parse(input, limits, [&](std::size_t) { return input.size(); });
  require_same(parse(input, limits, [](std::size_t) { return std::size_t{1}; }), whole,
               "byte-at-a-time feeding differs from one feed");
  std::uint32_t state = 2166136261u ^ control;
  for (char c : input.substr(0, 64)) state = (state ^ static_cast<unsigned char>(c)) * 16777619u;
  const std::size_t spread = 1 + (control >> 1) % 64;
  require_same(parse(input, limits,
                     [&](std::size_t) {
                       state ^= state << 13;
                       state ^= state >> 17;
                       state ^= state << 5;
                       return 1 + state % spread;
                     }),
               whole, "chunked feeding differs from one feed");

  for (const Value& v : whole.values) {
    const std::string resp3 = resp::encode(v, 3);
    const Value back3 = parse_one(resp3, "write(v, 3) does not parse back");
    require(back3 == as_resp3(v), "write(v, 3) parses back to another value");
    require(resp::encode(back3, 3) == resp3, "write(v, 3) is not stable");
    const Value back2 = parse_one(resp::encode(v, 2), "write(v, 2) does not parse back");
    require(back2 == as_resp2(v), "write(v, 2) parses back to another value");
  }
  return 0;
}
