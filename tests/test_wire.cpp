// The peer wire format (section 5): encode_raft / decode_raft. Every field of every message
// type survives the round trip, and the decoder refuses what the core must never see.
#include <catch2/catch.hpp>

#include "raft.hpp"

#include <string>
#include <vector>

namespace {

using raft::EntryType;
using raft::LogEntry;
using raft::Message;
using raft::MessageType;

std::vector<std::string> words_of(const std::string& bytes) {
  resp::RequestParser p;
  p.feed(bytes);
  std::vector<std::string> w;
  REQUIRE(p.next(w) == resp::Status::Ok);
  REQUIRE(p.buffered() == 0);
  return w;
}

std::vector<std::string> encoded(const Message& m) {
  std::string bytes;
  raft::detail::encode_raft(m, bytes);
  return words_of(bytes);
}

// A message with every field set to something other than its default.
Message full_message(MessageType type) {
  Message m;
  m.type = type;
  m.term = 0xfffffffffffffff0ull;
  m.index = 41;
  m.log_term = 7;
  m.commit = 39;
  m.reject = true;
  m.hint_index = 12;
  m.hint_term = 6;
  m.transfer = true;
  m.context = 0xabcdef0123456789ull;
  m.offset = 1u << 20;
  m.done = true;
  m.timestamp_ms = -1700000000123;  // signed on the wire
  m.config.upsert(raft::Member{"1", "127.0.0.1:5010", "s1", true});
  m.config.upsert(raft::Member{"n\xc3\xa9", "127.0.0.2:5020", "", false});
  m.data = std::string("chunk\0\r\n\xff", 10);
  for (std::uint64_t i = 42; i < 45; ++i) {
    LogEntry e;
    e.index = i;
    e.term = 7 + (i - 42);
    e.type = static_cast<EntryType>(i % 3);
    e.timestamp_ms = 1700000000000 + static_cast<std::int64_t>(i);
    e.payload = e.type == EntryType::Config ? m.config.encode() : "*1\r\n$3\r\nset\r\n" + std::to_string(i);
    m.entries.push_back(e);
  }
  return m;
}

}  // namespace

TEST_CASE("wire: every field of every message type survives encode and decode", "[wire]") {
  for (int t = 1; t <= static_cast<int>(MessageType::ReadIndexResponse); ++t) {
    const Message m = full_message(static_cast<MessageType>(t));
    std::vector<std::string> w = encoded(m);
    Message back;
    std::string error;
    INFO("type " << raft::to_string(m.type));
    REQUIRE(raft::detail::decode_raft(w, back, error));
    // from, to and server_id travel in the connection's HELLO, not in each message.
    back.from = m.from;
    back.to = m.to;
    back.server_id = m.server_id;
    CHECK(back == m);
    // Each field on its own: a decoder that drops one is caught even if == had a gap.
    CHECK(back.timestamp_ms == m.timestamp_ms);
    CHECK(back.context == m.context);
    CHECK(back.hint_term == m.hint_term);
    CHECK(back.offset == m.offset);
    CHECK(back.entries == m.entries);
  }
  // A message without entries, configuration or data.
  Message empty;
  empty.type = MessageType::Heartbeat;
  empty.term = 3;
  std::vector<std::string> w = encoded(empty);
  CHECK(w.size() == raft::detail::kRaftFixedFields);
  Message back;
  std::string error;
  REQUIRE(raft::detail::decode_raft(w, back, error));
  CHECK(back == empty);
}

TEST_CASE("wire: the decoder refuses malformed RAFT messages, naming why", "[wire]") {
  const Message good = full_message(MessageType::Append);
  const std::vector<std::string> base = encoded(good);
  struct Case {
    const char* what;
    std::function<void(std::vector<std::string>&)> spoil;
    const char* error;
  };
  const std::size_t first_entry = raft::detail::kRaftFixedFields;
  const std::vector<Case> cases = {
      {"too few fields", [](auto& w) { w.resize(10); }, "too few fields"},
      {"a field that is not a number", [](auto& w) { w[2] = "x"; }, "bad number"},
      {"a number beyond 64 bits", [](auto& w) { w[2] = "18446744073709551616"; }, "bad number"},
      {"type 0", [](auto& w) { w[1] = "0"; }, "unknown type"},
      {"type 14", [](auto& w) { w[1] = "14"; }, "unknown type"},
      {"reject flag 2", [](auto& w) { w[6] = "2"; }, "bad flag"},
      {"transfer flag 2", [](auto& w) { w[9] = "2"; }, "bad flag"},
      {"done flag 2", [](auto& w) { w[12] = "2"; }, "bad flag"},
      {"a timestamp that is no number", [](auto& w) { w[13] = "soon"; }, "bad timestamp"},
      {"a configuration that does not decode", [](auto& w) { w[14] = "config"; }, "bad configuration"},
      {"an entry count above the entries sent", [](auto& w) { w[16] = "4"; }, "entry count does not match"},
      {"an entry count below", [](auto& w) { w[16] = "2"; }, "entry count does not match"},
      {"an entry type 3", [first_entry](auto& w) { w[first_entry + 2] = "3"; }, "bad entry"},
      {"an entry out of sequence", [first_entry](auto& w) { w[first_entry] = "43"; }, "entries out of sequence"},
      {"an entry term above the message's", [first_entry](auto& w) { w[first_entry + 1] = "18446744073709551615"; },
       "entries out of sequence"},
      {"a configuration entry that does not decode",
       [first_entry](auto& w) {
         w[first_entry + 2] = "2";
         w[first_entry + 4] = "garbage";
       },
       "bad configuration entry"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    std::vector<std::string> w = base;
    c.spoil(w);
    Message m;
    std::string error;
    CHECK_FALSE(raft::detail::decode_raft(w, m, error));
    CHECK_THAT(error, Catch::StartsWith("malformed RAFT message: ") && Catch::Contains(c.error));
  }
}

// ---- forwarded writes: FWD and FWDR ----

TEST_CASE("wire: a forwarded write and its answer survive encode and decode", "[wire]") {
  using namespace raft::detail;
  const std::vector<std::string> command{"set", std::string("k\0\r\n", 4), std::string(70000, '\xff')};
  std::string payload;
  resp::write_command(payload, command);
  std::string bytes;
  encode_forward(0xfedcba9876543210ull, 42, 40, "alice", payload, command.size(), bytes);
  std::vector<std::string> w = words_of(bytes);
  ForwardedWrite f;
  std::string error;
  REQUIRE(decode_forward(w, f, error));
  CHECK(f.nonce == 0xfedcba9876543210ull);
  CHECK(f.seq == 42);
  CHECK(f.lowest == 40);
  CHECK(f.user == "alice");
  CHECK(f.words == command);

  const std::vector<raft::Reply> replies{
      raft::Reply::integer(-7), raft::Reply::ok(), raft::Reply::error("ERR handler failed: stoi"), raft::Reply::nil(),
      raft::Reply::bulk(std::string("\0\xff", 2)),
      raft::Reply::map({raft::Reply::bulk("f"), raft::Reply::array({raft::Reply::integer(1), raft::Reply::null_array()})})};
  for (const auto status : {ForwardStatus::Done, ForwardStatus::NotRun, ForwardStatus::Unknown})
    for (const auto& reply : replies) {
      std::string out;
      encode_forward_reply(ForwardReply{7, 9, status, reply}, out);
      ForwardReply back;
      INFO(forward_status_name(status) << " " << out);
      REQUIRE(decode_forward_reply(words_of(out), back, error));
      CHECK(back.nonce == 7);
      CHECK(back.seq == 9);
      CHECK(back.status == status);
      std::string again;
      encode_forward_reply(back, again);
      CHECK(again == out);
    }
}

TEST_CASE("wire: the decoder refuses malformed FWD and FWDR messages, naming why", "[wire]") {
  using namespace raft::detail;
  const std::vector<std::pair<std::vector<std::string>, std::string>> fwd{
      {{"FWD", "1", "2", "1"}, "too few fields"},
      {{"FWD", "x", "2", "1", "", "set", "k", "v"}, "bad number"},
      {{"FWD", "1", "-2", "1", "", "set", "k", "v"}, "bad number"},
      {{"FWD", "1", "2", "3", "", "set", "k", "v"}, "lowest unanswered above the sequence number"},
  };
  for (auto [w, why] : fwd) {
    ForwardedWrite f;
    std::string error;
    INFO(why);
    CHECK_FALSE(decode_forward(w, f, error));
    CHECK(error == "malformed FWD message: " + why);
  }
  const std::vector<std::pair<std::vector<std::string>, std::string>> fwdr{
      {{"FWDR", "1", "2", "done"}, "wrong number of fields"},
      {{"FWDR", "1", "2", "maybe", ":1\r\n"}, "unknown status"},
      {{"FWDR", "1", "", "done", ":1\r\n"}, "bad number"},
      {{"FWDR", "1", "2", "done", ":1\r\n:2\r\n"}, "bad reply"},
      {{"FWDR", "1", "2", "done", "$5\r\nab\r\n"}, "bad reply"},
  };
  for (const auto& [w, why] : fwdr) {
    ForwardReply r;
    std::string error;
    INFO(why);
    CHECK_FALSE(decode_forward_reply(w, r, error));
    CHECK(error == "malformed FWDR message: " + why);
  }
}
