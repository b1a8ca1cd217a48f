// resp.hpp: the RESP codec. Round trips, every split of the input, Redis's inline quoting and
// error texts, limits, and what a hostile peer can make the parsers allocate.
#include "resp.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

namespace resp {
// Readable failures; internal linkage so it cannot clash with another test file's printer.
static std::ostream& operator<<(std::ostream& os, const Value& v) {
  static const char* const names[] = {"simple", "error", "integer", "bulk", "array",
                                      "nil", "null_array", "null", "double", "boolean",
                                      "big_number", "verbatim", "map", "set", "push"};
  os << names[static_cast<int>(v.type)] << '(';
  switch (v.type) {
    case Type::Integer:
    case Type::Boolean: os << v.num; break;
    case Type::Double: os << v.dbl; break;
    default:
      if (v.is_string()) os << '"' << v.str << '"';
  }
  for (std::size_t i = 0; i < v.elements.size(); ++i) os << (i ? ", " : "") << v.elements[i];
  return os << ')';
}
}  // namespace resp

namespace {

using resp::Limits;
using resp::Status;
using resp::Type;
using resp::Value;
using Argv = std::vector<std::string>;

// What a parser made of an input fed in pieces cut at `cuts` (ascending offsets).
struct RequestRun {
  std::vector<Argv> commands;
  Status last = Status::NeedMore;
  std::string error;
  std::size_t buffered = 0;
};

RequestRun parse_requests(std::string_view input, std::vector<std::size_t> cuts = {},
                          Limits limits = {}) {
  resp::RequestParser parser(limits);
  RequestRun run;
  Argv argv;
  cuts.push_back(input.size());
  std::size_t from = 0;
  for (std::size_t cut : cuts) {
    parser.feed(input.substr(from, cut - from));
    from = cut;
    while ((run.last = parser.next(argv)) == Status::Ok) run.commands.push_back(argv);
  }
  run.error = parser.error();
  run.buffered = parser.buffered();
  return run;
}

RequestRun parse_requests_bytewise(std::string_view input, Limits limits = {}) {
  std::vector<std::size_t> cuts;
  for (std::size_t i = 1; i < input.size(); ++i) cuts.push_back(i);
  return parse_requests(input, cuts, limits);
}

struct ReplyRun {
  std::vector<Value> values;
  Status last = Status::NeedMore;
  std::string error;
  std::size_t buffered = 0;
};

ReplyRun parse_replies(std::string_view input, std::vector<std::size_t> cuts = {},
                       Limits limits = {}) {
  resp::ReplyParser parser(limits);
  ReplyRun run;
  Value v;
  cuts.push_back(input.size());
  std::size_t from = 0;
  for (std::size_t cut : cuts) {
    parser.feed(input.substr(from, cut - from));
    from = cut;
    while ((run.last = parser.next(v)) == Status::Ok) run.values.push_back(v);
  }
  run.error = parser.error();
  run.buffered = parser.buffered();
  return run;
}

ReplyRun parse_replies_bytewise(std::string_view input, Limits limits = {}) {
  std::vector<std::size_t> cuts;
  for (std::size_t i = 1; i < input.size(); ++i) cuts.push_back(i);
  return parse_replies(input, cuts, limits);
}

void require_same(const RequestRun& a, const RequestRun& b) {
  REQUIRE(a.commands == b.commands);
  REQUIRE(a.last == b.last);
  REQUIRE(a.error == b.error);
  if (a.last != Status::Error) REQUIRE(a.buffered == b.buffered);
}

void require_same(const ReplyRun& a, const ReplyRun& b) {
  REQUIRE(a.values == b.values);
  REQUIRE(a.last == b.last);
  REQUIRE(a.error == b.error);
  if (a.last != Status::Error) REQUIRE(a.buffered == b.buffered);
}

// What a value reads back as after write(v, 3): RESP3 has one null for NullBulk and NullArray.
Value with_resp3_nulls(Value v) {
  if (v.type == Type::NullBulk || v.type == Type::NullArray) v.type = Type::Null;
  for (Value& e : v.elements) e = with_resp3_nulls(std::move(e));
  return v;
}

// The one value an input parses to (and nothing left over).
Value parse_one(std::string_view bytes) {
  ReplyRun run = parse_replies(bytes);
  INFO("input: " << bytes << " error: " << run.error);
  REQUIRE(run.values.size() == 1);
  REQUIRE(run.last == Status::NeedMore);
  REQUIRE(run.buffered == 0);
  return run.values[0];
}

std::string request_error(std::string_view input, Limits limits = {}) {
  RequestRun run = parse_requests(input, {}, limits);
  INFO("input: " << input);
  REQUIRE(run.last == Status::Error);
  return run.error;
}

std::string reply_error(std::string_view input, Limits limits = {}) {
  ReplyRun run = parse_replies(input, {}, limits);
  INFO("input: " << input);
  REQUIRE(run.last == Status::Error);
  return run.error;
}

// Every RESP3 type, nested, with the awkward cases (binary bulk, empty aggregates, int64 ends).
Value every_resp3_value() {
  return Value::array({
      Value::simple("OK"),
      Value::error("ERR something bad"),
      Value::integer(0),
      Value::integer(std::numeric_limits<std::int64_t>::min()),
      Value::integer(std::numeric_limits<std::int64_t>::max()),
      Value::bulk(""),
      Value::bulk(std::string("bin\r\n\0ary", 10)),
      Value::nil(),
      Value::null_array(),
      Value::array(),
      Value::null(),
      Value::real(3.25),
      Value::real(-0.1),
      Value::real(1e300),
      Value::real(std::numeric_limits<double>::infinity()),
      Value::real(-std::numeric_limits<double>::infinity()),
      Value::real(std::nan("")),
      Value::boolean(true),
      Value::boolean(false),
      Value::big_number("3492890328409238509324850943850943825024385"),
      Value::big_number("-1"),
      Value::verbatim("txt", "Some string\r\nwith lines"),
      Value::verbatim("mkd", ""),
      Value::map({Value::bulk("k1"), Value::integer(1), Value::simple("k2"),
                  Value::map({Value::bulk("inner"), Value::set({Value::integer(7)})})}),
      Value::map(),
      Value::set({Value::bulk("a"), Value::bulk("b")}),
      Value::set(),
      Value::push({Value::bulk("message"), Value::bulk("chan"), Value::bulk("hi")}),
  });
}

}  // namespace

// --------------------------------------------------------------------------------------------
// Encoder and round trips
// --------------------------------------------------------------------------------------------

TEST_CASE("every RESP2 type round-trips through write and ReplyParser", "[resp]") {
  const Value values[] = {
      Value::simple("OK"),
      Value::simple(""),
      Value::error("WRONGTYPE Operation against a key holding the wrong kind of value"),
      Value::integer(-42),
      Value::bulk("hello"),
      Value::bulk(std::string(100000, 'x')),
      Value::nil(),
      Value::null_array(),
      Value::array(),
      Value::strings({"set", "key", ""}),
      Value::array({Value::integer(1), Value::array({Value::nil(), Value::simple("x")}),
                    Value::error("ERR e")}),
  };
  for (const Value& v : values) {
    INFO("value " << v);
    REQUIRE(parse_one(resp::encode(v, 2)) == v);
    REQUIRE(parse_one(resp::encode(v, 3)) == with_resp3_nulls(v));
  }
}

TEST_CASE("write(v, 3) and ReplyParser round-trip every RESP3 type natively", "[resp]") {
  const Value v = every_resp3_value();
  const std::string bytes = resp::encode(v, 3);
  REQUIRE(parse_one(bytes) == with_resp3_nulls(v));
  CHECK(bytes.find("%2\r\n$2\r\nk1\r\n:1\r\n+k2\r\n%1\r\n") != std::string::npos);
  CHECK(bytes.find("~2\r\n$1\r\na\r\n$1\r\nb\r\n") != std::string::npos);
  CHECK(bytes.find(">3\r\n$7\r\nmessage\r\n") != std::string::npos);
  CHECK(bytes.find("=27\r\ntxt:Some string\r\nwith lines\r\n") != std::string::npos);
  CHECK(bytes.find("(3492890328409238509324850943850943825024385\r\n") != std::string::npos);
  CHECK(bytes.find("#t\r\n#f\r\n") != std::string::npos);
}

TEST_CASE("write(v, 2) converts RESP3-only types to their RESP2 form", "[resp]") {
  CHECK(resp::encode(Value::null(), 2) == "$-1\r\n");
  CHECK(resp::encode(Value::boolean(true), 2) == ":1\r\n");
  CHECK(resp::encode(Value::boolean(false), 2) == ":0\r\n");
  CHECK(resp::encode(Value::real(1.5), 2) == "$3\r\n1.5\r\n");
  CHECK(resp::encode(Value::big_number("123456789012345678901"), 2) ==
        "$21\r\n123456789012345678901\r\n");
  CHECK(resp::encode(Value::verbatim("txt", "hi"), 2) == "$2\r\nhi\r\n");
  CHECK(resp::encode(Value::map({Value::bulk("k"), Value::integer(1)}), 2) ==
        "*2\r\n$1\r\nk\r\n:1\r\n");
  CHECK(resp::encode(Value::set({Value::integer(1)}), 2) == "*1\r\n:1\r\n");
  CHECK(resp::encode(Value::push({Value::bulk("m")}), 2) == "*1\r\n$1\r\nm\r\n");

  // The whole nested value, converted element by element, parses back as its RESP2 form.
  const Value v = every_resp3_value();
  Value expected = parse_one(resp::encode(v, 2));
  REQUIRE(expected.type == Type::Array);
  REQUIRE(expected.elements.size() == v.elements.size());
  CHECK(expected.elements[10] == Value::nil());
  CHECK(expected.elements[11] == Value::bulk("3.25"));
  CHECK(expected.elements[14] == Value::bulk("inf"));
  CHECK(expected.elements[15] == Value::bulk("-inf"));
  CHECK(expected.elements[16] == Value::bulk("nan"));
  CHECK(expected.elements[17] == Value::integer(1));
  CHECK(expected.elements[19] == Value::bulk("3492890328409238509324850943850943825024385"));
  CHECK(expected.elements[21] == Value::bulk("Some string\r\nwith lines"));
  CHECK(expected.elements[23] ==
        Value::array({Value::bulk("k1"), Value::integer(1), Value::simple("k2"),
                      Value::array({Value::bulk("inner"), Value::array({Value::integer(7)})})}));
  CHECK(expected.elements[27] ==
        Value::array({Value::bulk("message"), Value::bulk("chan"), Value::bulk("hi")}));
}

TEST_CASE("write(v, 3) writes NullBulk and NullArray as the RESP3 null", "[resp]") {
  CHECK(resp::encode(Value::nil(), 3) == "_\r\n");
  CHECK(resp::encode(Value::null_array(), 3) == "_\r\n");
  CHECK(resp::encode(Value::null(), 3) == "_\r\n");
  CHECK(resp::encode(Value::nil(), 2) == "$-1\r\n");
  CHECK(resp::encode(Value::null_array(), 2) == "*-1\r\n");
  CHECK(parse_one("_\r\n") == Value::null());
}

TEST_CASE("the encoders append exactly the bytes Redis sends", "[resp]") {
  std::string out = "prefix|";
  resp::write_simple(out, "OK");
  resp::write_error(out, "ERR no such key");
  resp::write_integer(out, 0);
  resp::write_integer(out, -7);
  resp::write_bulk(out, "");
  resp::write_bulk(out, "v");
  resp::write_null_bulk(out);
  resp::write_array_header(out, 12);
  CHECK(out == "prefix|+OK\r\n-ERR no such key\r\n:0\r\n:-7\r\n$0\r\n\r\n$1\r\nv\r\n$-1\r\n*12\r\n");

  std::string cmd;
  resp::write_command(cmd, {"SET", "key", "a b"});
  CHECK(cmd == "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\na b\r\n");
  std::string cmd2;
  resp::write_command(cmd2, std::vector<std::string>{"SET", "key", "a b"});
  CHECK(cmd2 == cmd);
  std::string empty_cmd;
  resp::write_command(empty_cmd, std::vector<std::string>{});
  CHECK(empty_cmd == "*0\r\n");

  std::string via_write = "x";
  resp::write(via_write, Value::bulk("y"));
  CHECK(via_write == "x$1\r\ny\r\n");
  CHECK(resp::encode(Value::bulk("y")) == "$1\r\ny\r\n");
}

TEST_CASE("values that cannot be written as given still make valid RESP", "[resp]") {
  // A map missing its last value gets a null one; a verbatim without a format is plain text.
  const Value odd_map = Value::map({Value::simple("k1"), Value::integer(1), Value::simple("k2")});
  CHECK(resp::encode(odd_map, 3) == "%2\r\n+k1\r\n:1\r\n+k2\r\n_\r\n");
  CHECK(resp::encode(odd_map, 2) == "*3\r\n+k1\r\n:1\r\n+k2\r\n");
  const Value unformatted(Type::Verbatim, "plain");
  CHECK(resp::encode(unformatted, 3) == "=9\r\ntxt:plain\r\n");
  CHECK(resp::encode(unformatted, 2) == "$5\r\nplain\r\n");
  CHECK(parse_one(resp::encode(unformatted, 3)).text() == "plain");
}

TEST_CASE("CR and LF in simple strings and errors are written as spaces", "[resp]") {
  std::string out;
  resp::write_simple(out, "a\r\nb\nc\rd");
  CHECK(out == "+a  b c d\r\n");
  out.clear();
  resp::write_error(out, "ERR bad\r\ninjected");
  CHECK(out == "-ERR bad  injected\r\n");
  CHECK(resp::encode(Value::simple("x\ny")) == "+x y\r\n");
  CHECK(resp::encode(Value::error("ERR x\ry"), 3) == "-ERR x y\r\n");
  // A bulk is binary safe and keeps them.
  CHECK(resp::encode(Value::bulk("x\r\ny")) == "$4\r\nx\r\ny\r\n");
}

TEST_CASE("doubles are written as inf, -inf, nan and the shortest text that reads back exactly",
          "[resp]") {
  CHECK(resp::encode(Value::real(std::numeric_limits<double>::infinity()), 3) == ",inf\r\n");
  CHECK(resp::encode(Value::real(-std::numeric_limits<double>::infinity()), 3) == ",-inf\r\n");
  CHECK(resp::encode(Value::real(std::nan("")), 3) == ",nan\r\n");
  CHECK(resp::encode(Value::real(-std::nan("")), 3) == ",nan\r\n");
  CHECK(resp::encode(Value::real(0.1), 3) == ",0.1\r\n");
  CHECK(resp::encode(Value::real(3), 3) == ",3\r\n");
  CHECK(resp::encode(Value::real(-2.5), 3) == ",-2.5\r\n");
  const double awkward[] = {0.1 + 0.2, 1.0 / 3, 5e-324, std::numeric_limits<double>::max(),
                            -1e-300, 123456789.125, 1e21, 9007199254740993.0};
  for (double d : awkward) {
    INFO(d);
    const Value parsed = parse_one(resp::encode(Value::real(d), 3));
    CHECK(parsed.dbl == d);
  }
  CHECK(parse_one(",1.5e3\r\n").dbl == 1500);
  CHECK(std::isnan(parse_one(",nan\r\n").dbl));
  CHECK(parse_one(",-inf\r\n").dbl == -std::numeric_limits<double>::infinity());
}

TEST_CASE("integers round-trip across the whole int64 range", "[resp]") {
  std::vector<std::int64_t> values = {0, 1, -1, 9, 10, 99, 100, 12345678901234LL,
                                      std::numeric_limits<std::int64_t>::max(),
                                      std::numeric_limits<std::int64_t>::min()};
  for (std::int64_t p = 1; p < std::numeric_limits<std::int64_t>::max() / 10; p *= 10) {
    values.push_back(p);
    values.push_back(-p);
    values.push_back(p - 1);
  }
  for (std::int64_t n : values) {
    std::string out;
    resp::write_integer(out, n);
    CHECK(out == ":" + std::to_string(n) + "\r\n");
    CHECK(parse_one(out) == Value::integer(n));
  }
  CHECK(reply_error(":9223372036854775808\r\n") == "Protocol error: invalid integer");
  CHECK(reply_error(":-9223372036854775809\r\n") == "Protocol error: invalid integer");
}

// --------------------------------------------------------------------------------------------
// Incremental parsing
// --------------------------------------------------------------------------------------------

namespace {

// Multibulk and inline commands, skipped lines and counts, binary data, a pending half command.
std::string mixed_request_pipeline() {
  std::string s;
  resp::write_command(s, {"SET", "key:000001", "value with spaces"});
  s += "PING\r\n";
  s += "\r\n\n   \r\n";                       // empty inline lines
  s += "*0\r\n*-1\r\n";                       // empty multibulks
  s += "set k \"a\\x41\\n\" 'it\\'s'\n";     // inline with quoting and a bare LF
  resp::write_command(s, {"", std::string("\r\n\0\x01", 4), "$3\r\n"});
  s += "*1\r\n$0\r\n\r\n";
  s += "  get   x  \r\n";
  s += "*2\r\n$3\r\nGET\r\n$3\r\nke";          // incomplete at the end
  return s;
}

std::vector<Argv> mixed_request_commands() {
  return {{"SET", "key:000001", "value with spaces"},
          {"PING"},
          {"set", "k", "aA\n", "it's"},
          {"", std::string("\r\n\0\x01", 4), "$3\r\n"},
          {""},
          {"get", "x"}};
}

std::string mixed_reply_stream() {
  std::string s = "+OK\r\n-ERR oops\r\n:-12\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n*0\r\n";
  resp::write(s, every_resp3_value(), 3);
  resp::write(s, every_resp3_value(), 2);
  s += "*3\r\n:1\r\n*2\r\n+a\r\n$1\r\nb\r\n%1\r\n+k\r\n~1\r\n_\r\n";
  s += "*2\r\n$3\r\nabc\r\n$10\r\n012";  // incomplete at the end
  return s;
}

}  // namespace

TEST_CASE("a mixed request pipeline parses the same in every split", "[resp]") {
  const std::string input = mixed_request_pipeline();
  const RequestRun whole = parse_requests(input);
  REQUIRE(whole.last == Status::NeedMore);
  REQUIRE(whole.commands == mixed_request_commands());
  REQUIRE(whole.buffered == std::string("*2\r\n$3\r\nGET\r\n$3\r\nke").size());
  for (std::size_t i = 0; i <= input.size(); ++i) {
    for (std::size_t j = i; j <= input.size(); ++j) {
      INFO("cut at " << i << " and " << j);
      require_same(parse_requests(input, {i, j}), whole);
    }
  }
  require_same(parse_requests_bytewise(input), whole);
}

TEST_CASE("a mixed reply stream parses the same in every split", "[resp]") {
  const std::string input = mixed_reply_stream();
  const ReplyRun whole = parse_replies(input);
  REQUIRE(whole.last == Status::NeedMore);
  REQUIRE(whole.values.size() == 10);
  CHECK(whole.values[3] == Value::bulk("he\r\no"));
  CHECK(whole.values[9] ==
        Value::array({Value::integer(1), Value::array({Value::simple("a"), Value::bulk("b")}),
                      Value::map({Value::simple("k"), Value::set({Value::null()})})}));
  for (std::size_t i = 0; i <= input.size(); ++i) {
    for (std::size_t j = i; j <= input.size(); j += 7) {
      INFO("cut at " << i << " and " << j);
      require_same(parse_replies(input, {i, j}), whole);
    }
  }
  require_same(parse_replies_bytewise(input), whole);
}

TEST_CASE("a bulk larger than the direct-append threshold parses the same in any split",
          "[resp]") {
  std::string big(200 * 1024 + 3, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 251);
  std::string requests;
  resp::write_command(requests, {"SET", "big", big});
  resp::write_command(requests, {"GET", "big"});
  std::string replies;
  resp::write_bulk(replies, big);
  resp::write(replies, Value::array({Value::bulk(big), Value::verbatim("txt", big)}), 3);

  const RequestRun whole_requests = parse_requests(requests);
  REQUIRE(whole_requests.commands == std::vector<Argv>{{"SET", "big", big}, {"GET", "big"}});
  const ReplyRun whole_replies = parse_replies(replies);
  REQUIRE(whole_replies.values.size() == 2);
  REQUIRE(whole_replies.values[0].str == big);

  for (std::size_t chunk : {1, 2, 3, 1000, 4096, 16384, 65536}) {
    INFO("chunk " << chunk);
    std::vector<std::size_t> cuts;
    for (std::size_t at = chunk; at < requests.size(); at += chunk) cuts.push_back(at);
    require_same(parse_requests(requests, cuts), whole_requests);
    cuts.clear();
    for (std::size_t at = chunk; at < replies.size(); at += chunk) cuts.push_back(at);
    require_same(parse_replies(replies, cuts), whole_replies);
  }
  // Cuts right around the header, the data's end and its CRLF.
  for (std::size_t i = 0; i < 40; ++i) {
    for (std::size_t at : {i, requests.size() / 2 + i, requests.size() - 40 + i}) {
      require_same(parse_requests(requests, {at}), whole_requests);
    }
    for (std::size_t at : {i, big.size() + i - 20}) {
      require_same(parse_replies(replies, {at}), whole_replies);
    }
  }
}

TEST_CASE("a 10000-command pipeline in one feed parses in order", "[resp]") {
  std::string input;
  for (int i = 0; i < 10000; ++i) {
    const std::string key = "key:" + std::to_string(100000 + i).substr(1);
    if (i % 2 == 0) {
      resp::write_command(input, {"SET", key, std::string(16 + i % 85, 'a' + i % 26)});
    } else {
      resp::write_command(input, {"GET", key});
    }
  }
  resp::RequestParser parser;
  parser.feed(input);
  REQUIRE(parser.buffered() == input.size());
  Argv argv;
  for (int i = 0; i < 10000; ++i) {
    REQUIRE(parser.next(argv) == Status::Ok);
    const std::string key = "key:" + std::to_string(100000 + i).substr(1);
    if (i % 2 == 0) {
      REQUIRE(argv == Argv{"SET", key, std::string(16 + i % 85, 'a' + i % 26)});
    } else {
      REQUIRE(argv == Argv{"GET", key});
    }
  }
  CHECK(parser.next(argv) == Status::NeedMore);
  CHECK(parser.buffered() == 0);
}

TEST_CASE("buffered() counts bytes received but not yet returned", "[resp]") {
  resp::RequestParser requests;
  CHECK(requests.buffered() == 0);
  requests.feed("*2\r\n$3\r\nGET\r\n$1");
  Argv argv;
  CHECK(requests.next(argv) == Status::NeedMore);
  CHECK(requests.buffered() == 15);
  requests.feed("\r\nk\r\nPING");
  CHECK(requests.next(argv) == Status::Ok);
  CHECK(argv == Argv{"GET", "k"});
  CHECK(requests.buffered() == 4);
  CHECK(requests.next(argv) == Status::NeedMore);
  CHECK(requests.buffered() == 4);

  resp::ReplyParser replies;
  replies.feed("*2\r\n:1\r\n$3\r\nab");
  Value v;
  CHECK(replies.next(v) == Status::NeedMore);
  CHECK(replies.buffered() == 14);
  replies.feed("c\r\n+x");
  CHECK(replies.next(v) == Status::Ok);
  CHECK(replies.buffered() == 2);
}

TEST_CASE("argv is replaced by each command whatever it held before", "[resp]") {
  resp::RequestParser parser;
  parser.feed("*1\r\n$1\r\na\r\n*3\r\n$1\r\nb\r\n$0\r\n\r\n$2\r\ncd\r\nx y\r\n*1\r\n$1\r\nz\r\n");
  Argv argv{"stale", "values", "of", "another", std::string(1000, 'q')};
  REQUIRE(parser.next(argv) == Status::Ok);
  CHECK(argv == Argv{"a"});
  REQUIRE(parser.next(argv) == Status::Ok);
  CHECK(argv == Argv{"b", "", "cd"});
  REQUIRE(parser.next(argv) == Status::Ok);
  CHECK(argv == Argv{"x", "y"});
  Argv other;  // a different vector works as well
  REQUIRE(parser.next(other) == Status::Ok);
  CHECK(other == Argv{"z"});
}

TEST_CASE("argument strings do not keep a big bulk's capacity for small ones", "[resp]") {
  std::string input;
  resp::write_command(input, {"SET", "k", std::string(1024 * 1024, 'v')});
  for (int i = 0; i < 3; ++i) resp::write_command(input, {"SET", "k", "small"});
  resp::RequestParser parser;
  parser.feed(input);
  Argv argv;
  REQUIRE(parser.next(argv) == Status::Ok);
  // argv and the parser swap their strings: the 1 MiB one comes back for the third command.
  for (int i = 0; i < 3; ++i) {
    REQUIRE(parser.next(argv) == Status::Ok);
    CHECK(argv[2] == "small");
    CHECK(argv[2].capacity() < 64 * 1024);
  }
}

// --------------------------------------------------------------------------------------------
// Inline commands
// --------------------------------------------------------------------------------------------

TEST_CASE("inline commands split words as Redis's sdssplitargs does", "[resp]") {
  struct Case {
    std::string line;
    Argv words;
  };
  const Case cases[] = {
      {"set key value", {"set", "key", "value"}},
      {"  set\tkey \t value  ", {"set", "key", "value"}},
      {"set key \"a value\"", {"set", "key", "a value"}},
      {"set key 'a value'", {"set", "key", "a value"}},
      {"set key \"\"", {"set", "key", ""}},
      {"set key ''", {"set", "key", ""}},
      {"\"\"", {""}},
      {"echo \"\\n\\r\\t\\b\\a\\\\\\\"\"", {"echo", "\n\r\t\b\a\\\""}},
      {"echo \"\\x41\\x6a\\xFF\\x00\"", {"echo", std::string("Aj\xff\0", 4)}},
      {"echo \"\\x4\" \"\\xZZ\"", {"echo", "x4", "xZZ"}},  // not two hex digits: "\x" is 'x'
      {"echo \"\\q\"", {"echo", "q"}},                      // unknown escape: the character
      {"echo 'a\\'b' 'c\\nd' 'e\"f'", {"echo", "a'b", "c\\nd", "e\"f"}},
      {"echo \"it's\" 'say \"hi\"'", {"echo", "it's", "say \"hi\""}},
      {"echo a\"b c\"", {"echo", "ab c"}},  // a quote may open inside a word
      {"echo a'b c'", {"echo", "ab c"}},
      {"echo a\\nb", {"echo", "a\\nb"}},  // no escapes outside quotes
      {"echo \"a\"\t", {"echo", "a"}},
      {"echo \"a\"\v\"b\"", {"echo", "a", "b"}},
      {"echo a\vb", {"echo", "a\vb"}},
      {std::string("echo a\0b", 8), {"echo", std::string("a\0b", 3)}},
  };
  for (const Case& c : cases) {
    INFO("line: " << c.line);
    RequestRun run = parse_requests(c.line + "\r\n");
    REQUIRE(run.last == Status::NeedMore);
    REQUIRE(run.commands == std::vector<Argv>{c.words});
    REQUIRE(parse_requests(c.line + "\n").commands == std::vector<Argv>{c.words});
  }
}

TEST_CASE("inline commands with unbalanced quotes are a protocol error", "[resp]") {
  const std::string lines[] = {
      "set key \"abc",  "set key 'abc",     "set key \"a\"b", "set key 'a'b",
      "set \"a\"\"b\"", "echo \"abc\\\"",  "echo 'abc\\'",   "echo \"",
      "echo '",         "echo \"a\\",       "echo \"a\"'b'",
  };
  for (const std::string& line : lines) {
    INFO("line: " << line);
    CHECK(request_error(line + "\r\n") == "Protocol error: unbalanced quotes in request");
  }
  // The CR before LF is not part of the line, so a closing quote may precede it.
  CHECK(parse_requests("get \"a\"\r\n").commands == std::vector<Argv>{{"get", "a"}});
}

TEST_CASE("inline lines end at LF, drop one CR before it, and empty lines are skipped",
          "[resp]") {
  RequestRun run = parse_requests("\n\r\n  \r\n\t\nPING\nECHO a\r\r\nGET b\r");
  CHECK(run.commands == std::vector<Argv>{{"PING"}, {"ECHO", "a"}});
  CHECK(run.last == Status::NeedMore);
  CHECK(run.buffered == 6);  // "GET b\r" waits for its LF
  // A CR alone does not end a line.
  CHECK(parse_requests("GET a\rb\n").commands == std::vector<Argv>{{"GET", "a", "b"}});
  // A line starting with '*' is multibulk, anything else inline.
  CHECK(request_error("*PING\r\n") == "Protocol error: invalid multibulk length");
  CHECK(parse_requests(" *1\r\n").commands == std::vector<Argv>{{"*1"}});
}

TEST_CASE("an inline line longer than max_inline_length is rejected, at the limit accepted",
          "[resp]") {
  Limits limits;
  limits.max_inline_length = 16;
  const std::string at_limit = "get 012345678901";  // 16 bytes
  REQUIRE(at_limit.size() == 16);
  CHECK(parse_requests(at_limit + "\n", {}, limits).commands ==
        std::vector<Argv>{{"get", "012345678901"}});
  // The CR counts: the line waits 17 bytes for its LF.
  CHECK(request_error(at_limit + "\r\n", limits) == "Protocol error: too big inline request");
  CHECK(request_error(at_limit + "2\n", limits) == "Protocol error: too big inline request");
  CHECK(request_error(at_limit + "2", limits) == "Protocol error: too big inline request");
  RequestRun waiting = parse_requests(at_limit, {}, limits);
  CHECK(waiting.last == Status::NeedMore);
  CHECK(waiting.buffered == 16);
  // The default is Redis's 64 KiB.
  CHECK(request_error(std::string(64 * 1024 + 1, 'a')) == "Protocol error: too big inline request");
  CHECK(parse_requests(std::string(64 * 1024, 'a') + "\n").commands.size() == 1);
}

// --------------------------------------------------------------------------------------------
// Malformed multibulk requests and limits
// --------------------------------------------------------------------------------------------

TEST_CASE("*0 and negative multibulk counts are skipped like Redis", "[resp]") {
  RequestRun run = parse_requests("*0\r\n*-1\r\n*-5\r\n*1\r\n$4\r\nPING\r\n*0\r\n");
  CHECK(run.commands == std::vector<Argv>{{"PING"}});
  CHECK(run.last == Status::NeedMore);
  CHECK(run.buffered == 0);
}

TEST_CASE("malformed multibulk requests fail with Redis's error texts", "[resp]") {
  struct Case {
    std::string input;
    std::string error;
  };
  const std::string count = "Protocol error: invalid multibulk length";
  const std::string length = "Protocol error: invalid bulk length";
  const std::string crlf = "Protocol error: expected CRLF after bulk data";
  const Case cases[] = {
      {"*abc\r\n", count},
      {"*\r\n", count},
      {"*1x\r\n", count},
      {"*+1\r\n", count},
      {"*01\r\n", count},
      {"* 1\r\n", count},
      {"*-0\r\n", count},
      {"*1\rX", count},
      {"*99999999999999999999\r\n", count},
      {"*1048577\r\n", count},  // Redis's default limit is 1024 * 1024
      {"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"},
      {"*1\r\nPING\r\n", "Protocol error: expected '$', got 'P'"},
      {"*2\r\n$4\r\nPING\r\n:1\r\n", "Protocol error: expected '$', got ':'"},
      {std::string("*1\r\n\0", 5), "Protocol error: expected '$', got '\\x00'"},
      {"*1\r\n$-1\r\n", length},
      {"*1\r\n$abc\r\n", length},
      {"*1\r\n$\r\n", length},
      {"*1\r\n$01\r\n", length},
      {"*1\r\n$3\rfoo\r\n", length},
      {"*1\r\n$536870913\r\n", length},  // Redis's proto-max-bulk-len is 512 MiB
      {"*1\r\n$99999999999999999999\r\n", length},
      {"*1\r\n$3\r\nfooXY", crlf},
      {"*1\r\n$3\r\nfoo\rX", crlf},
      {"*1\r\n$3\r\nfoo\n\r", crlf},
      {"*1\r\n$3\r\nfo\r\n\r\n", crlf},
  };
  for (const Case& c : cases) {
    INFO("input: " << c.input);
    CHECK(request_error(c.input) == c.error);
    // The same error however the bytes arrive.
    CHECK(parse_requests_bytewise(c.input).error == c.error);
  }
}

TEST_CASE("count and length lines without CRLF are bounded like Redis's", "[resp]") {
  CHECK(request_error("*" + std::string(64 * 1024, '1')) ==
        "Protocol error: too big mbulk count string");
  CHECK(request_error("*1\r\n$" + std::string(64 * 1024, '1')) ==
        "Protocol error: too big bulk count string");
  // Below the bound the parser waits for the rest of the line.
  CHECK(parse_requests("*" + std::string(1000, '1')).last == Status::NeedMore);
  CHECK(reply_error("*" + std::string(64 * 1024, '1')) ==
        "Protocol error: too big mbulk count string");
  CHECK(reply_error("$" + std::string(64 * 1024, '1')) ==
        "Protocol error: too big bulk count string");
  CHECK(reply_error(":" + std::string(64 * 1024, '1')) == "Protocol error: line too long");
}

TEST_CASE("multibulk count and bulk length limits: at the limit parses, one over fails",
          "[resp]") {
  Limits limits;
  limits.max_multibulk_length = 3;
  limits.max_bulk_length = 10;
  CHECK(parse_requests("*3\r\n$10\r\n0123456789\r\n$0\r\n\r\n$1\r\nx\r\n", {}, limits).commands ==
        std::vector<Argv>{{"0123456789", "", "x"}});
  CHECK(request_error("*4\r\n", limits) == "Protocol error: invalid multibulk length");
  CHECK(request_error("*1\r\n$11\r\n", limits) == "Protocol error: invalid bulk length");

  CHECK(parse_replies("*3\r\n:1\r\n:2\r\n:3\r\n", {}, limits).values.size() == 1);
  CHECK(parse_replies("%3\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n:6\r\n", {}, limits).values.size() == 1);
  CHECK(parse_replies("~3\r\n:1\r\n:2\r\n:3\r\n>3\r\n:1\r\n:2\r\n:3\r\n", {}, limits).values.size() ==
        2);
  for (const char* over : {"*4\r\n", "%4\r\n", "~4\r\n", ">4\r\n"}) {
    CHECK(reply_error(over, limits) == "Protocol error: invalid multibulk length");
  }
  CHECK(parse_replies("$10\r\n0123456789\r\n", {}, limits).values.size() == 1);
  CHECK(reply_error("$11\r\n", limits) == "Protocol error: invalid bulk length");
  CHECK(reply_error("=11\r\n", limits) == "Protocol error: invalid bulk length");
  CHECK(parse_replies("+0123456789\r\n", {}, limits).values.size() == 1);
  CHECK(reply_error("+0123456789a\r\n", limits) == "Protocol error: line too long");
  CHECK(reply_error("-0123456789a", limits) == "Protocol error: line too long");
}

TEST_CASE("a huge declared bulk costs memory only as its bytes arrive", "[resp]") {
  // A parser that reserved the declared length would throw (or ASan would abort) here.
  const std::size_t huge = std::size_t(1) << 61;
  Limits limits;
  limits.max_bulk_length = huge;
  const std::string payload(100000, 'p');

  resp::RequestParser requests(limits);
  requests.feed("*2\r\n$3\r\nSET\r\n$" + std::to_string(huge) + "\r\n");
  Argv argv;
  REQUIRE(requests.next(argv) == Status::NeedMore);
  requests.feed(payload);
  REQUIRE(requests.next(argv) == Status::NeedMore);
  const std::size_t header = std::string("*2\r\n$3\r\nSET\r\n$\r\n").size() + 19;
  CHECK(requests.buffered() == header + payload.size());

  resp::ReplyParser replies(limits);
  replies.feed("*1\r\n$" + std::to_string(huge) + "\r\n");
  Value v;
  REQUIRE(replies.next(v) == Status::NeedMore);
  replies.feed(payload);
  REQUIRE(replies.next(v) == Status::NeedMore);
  CHECK(replies.buffered() == 4 + 1 + 19 + 2 + payload.size());

  // With the default limits, 500 MB declared and nothing sent costs nothing either.
  resp::RequestParser defaults;
  defaults.feed("*1\r\n$500000000\r\nabc");
  REQUIRE(defaults.next(argv) == Status::NeedMore);
  CHECK(defaults.buffered() == 19);
}

TEST_CASE("a huge declared multibulk count does not allocate its items", "[resp]") {
  const std::size_t huge = std::size_t(1) << 61;
  Limits limits;
  limits.max_multibulk_length = huge;
  resp::RequestParser requests(limits);
  requests.feed("*" + std::to_string(huge) + "\r\n$1\r\nx\r\n");
  Argv argv;
  CHECK(requests.next(argv) == Status::NeedMore);
  resp::ReplyParser replies(limits);
  replies.feed("*" + std::to_string(huge) + "\r\n%" + std::to_string(huge) + "\r\n:1\r\n");
  Value v;
  CHECK(replies.next(v) == Status::NeedMore);
}

TEST_CASE("after a protocol error the parsers return Error and ignore further input",
          "[resp]") {
  resp::RequestParser requests;
  requests.feed("*1\r\n$x\r\n*1\r\n$4\r\nPING\r\n");
  Argv argv;
  CHECK(requests.next(argv) == Status::Error);
  CHECK(requests.failed());
  requests.feed("*1\r\n$4\r\nPING\r\n");
  CHECK(requests.next(argv) == Status::Error);
  CHECK(requests.error() == "Protocol error: invalid bulk length");

  resp::ReplyParser replies;
  replies.feed("?\r\n+OK\r\n");
  Value v;
  CHECK(replies.next(v) == Status::Error);
  replies.feed("+OK\r\n");
  CHECK(replies.next(v) == Status::Error);
  CHECK(replies.failed());
  CHECK(replies.error() == "Protocol error: unknown reply type byte '?'");
}

// --------------------------------------------------------------------------------------------
// Malformed replies
// --------------------------------------------------------------------------------------------

TEST_CASE("malformed replies fail with an error naming the problem", "[resp]") {
  struct Case {
    std::string input;
    std::string error;
  };
  const Case cases[] = {
      {"?\r\n", "Protocol error: unknown reply type byte '?'"},
      {"OK\r\n", "Protocol error: unknown reply type byte 'O'"},
      {"\x01", "Protocol error: unknown reply type byte '\\x01'"},
      {";3\r\nabc\r\n", "Protocol error: unknown reply type byte ';'"},
      {"*2\r\n:1\r\n.\r\n", "Protocol error: unknown reply type byte '.'"},
      {":abc\r\n", "Protocol error: invalid integer"},
      {":1.5\r\n", "Protocol error: invalid integer"},
      {":\r\n", "Protocol error: invalid integer"},
      {":+1\r\n", "Protocol error: invalid integer"},
      {"$-2\r\n", "Protocol error: invalid bulk length"},
      {"$x\r\n", "Protocol error: invalid bulk length"},
      {"=-1\r\n", "Protocol error: invalid bulk length"},
      {"!-1\r\n", "Protocol error: invalid bulk length"},
      {"*-2\r\n", "Protocol error: invalid multibulk length"},
      {"%-1\r\n", "Protocol error: invalid multibulk length"},
      {"~-1\r\n", "Protocol error: invalid multibulk length"},
      {">-1\r\n", "Protocol error: invalid multibulk length"},
      {"*1\rx", "Protocol error: invalid multibulk length"},
      {"$3\r\nfooXX", "Protocol error: expected CRLF after bulk data"},
      {"+OK\rX", "Protocol error: line not terminated by CRLF"},
      {",abc\r\n", "Protocol error: invalid double"},
      {",\r\n", "Protocol error: invalid double"},
      {", 1\r\n", "Protocol error: invalid double"},
      {",1.5x\r\n", "Protocol error: invalid double"},
      {",1e999\r\n", "Protocol error: invalid double"},
      {"#x\r\n", "Protocol error: invalid boolean"},
      {"#\r\n", "Protocol error: invalid boolean"},
      {"#tt\r\n", "Protocol error: invalid boolean"},
      {"_x\r\n", "Protocol error: invalid null"},
      {"(12a\r\n", "Protocol error: invalid big number"},
      {"(\r\n", "Protocol error: invalid big number"},
      {"(-\r\n", "Protocol error: invalid big number"},
      {"=3\r\nabc\r\n", "Protocol error: invalid verbatim string"},
      {"=5\r\nabcde\r\n", "Protocol error: invalid verbatim string"},
      {"$?\r\n;4\r\nHell\r\n;0\r\n", "Protocol error: streamed RESP3 strings are not supported"},
      {"*?\r\n:1\r\n.\r\n", "Protocol error: streamed RESP3 aggregates are not supported"},
      {"%?\r\n", "Protocol error: streamed RESP3 aggregates are not supported"},
      {"|1\r\n+key\r\n+value\r\n:1\r\n", "Protocol error: RESP3 attributes are not supported"},
  };
  for (const Case& c : cases) {
    INFO("input: " << c.input);
    CHECK(reply_error(c.input) == c.error);
    CHECK(parse_replies_bytewise(c.input).error == c.error);
  }
}

TEST_CASE("RESP3 extras parse: blob errors, verbatim text, the null and booleans", "[resp]") {
  CHECK(parse_one("!21\r\nSYNTAX invalid syntax\r\n") == Value::error("SYNTAX invalid syntax"));
  const Value verbatim = parse_one("=15\r\ntxt:Some string\r\n");
  CHECK(verbatim == Value::verbatim("txt", "Some string"));
  CHECK(verbatim.text() == "Some string");
  CHECK(parse_one("#t\r\n") == Value::boolean(true));
  CHECK(parse_one("#f\r\n") == Value::boolean(false));
  CHECK(parse_one("(-12345678901234567890123\r\n") == Value::big_number("-12345678901234567890123"));
  CHECK(reply_error(":-0\r\n") == "Protocol error: invalid integer");
}

TEST_CASE("reply nesting is bounded by max_nesting", "[resp]") {
  auto nested = [](std::size_t depth) {
    std::string s;
    for (std::size_t i = 0; i < depth; ++i) s += "*1\r\n";
    return s + ":1\r\n";
  };
  Limits limits;
  limits.max_nesting = 3;
  CHECK(parse_replies(nested(3), {}, limits).values.size() == 1);
  CHECK(reply_error(nested(4), limits) == "Protocol error: aggregates nested deeper than 3 levels");
  CHECK(reply_error("*1\r\n%1\r\n~1\r\n>0\r\n", limits) ==
        "Protocol error: aggregates nested deeper than 3 levels");
  // The default, 64.
  const Value deep = parse_one(nested(64));
  const Value* v = &deep;
  for (int i = 0; i < 64; ++i) {
    REQUIRE(v->type == Type::Array);
    REQUIRE(v->elements.size() == 1);
    v = &v->elements[0];
  }
  CHECK(*v == Value::integer(1));
  CHECK(reply_error(nested(65)) == "Protocol error: aggregates nested deeper than 64 levels");
}

TEST_CASE("only $-1 and *-1 declare a negative length: the RESP2 nulls", "[resp]") {
  CHECK(parse_one("$-1\r\n") == Value::nil());
  CHECK(parse_one("*-1\r\n") == Value::null_array());
  CHECK(parse_one("*2\r\n$-1\r\n*-1\r\n") == Value::array({Value::nil(), Value::null_array()}));
  CHECK(parse_one("*0\r\n") == Value::array());
  CHECK(parse_one("%0\r\n") == Value::map());
  CHECK(parse_one("$0\r\n\r\n") == Value::bulk(""));
}
