// The peer wire format (section 5): encode_raft / decode_raft. Every field of every message
// type survives the round trip, and the decoder refuses what the core must never see. Then
// what authenticates it: SHA-256 and HMAC-SHA256 against the standards' vectors, the
// handshake's proofs and the frames' MACs.
#include <catch2/catch.hpp>

#include "raft.hpp"

#include <algorithm>
#include <string>
#include <tuple>
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

// ---- authentication: SHA-256, HMAC-SHA256 and the frames ------------------------------------

namespace {

std::string hex(const raft::detail::Sha256::Digest& d) { return raft::detail::to_hex(d); }

}  // namespace

TEST_CASE("wire: SHA-256 gives the FIPS 180-4 example digests", "[wire][crypto]") {
  using raft::detail::Sha256;
  CHECK(hex(Sha256::of("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(hex(Sha256::of("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(hex(Sha256::of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // A million 'a', fed in uneven pieces: the buffering across blocks is exercised too.
  Sha256 h;
  const std::string chunk(997, 'a');
  std::size_t fed = 0;
  while (fed < 1000000) {
    const std::size_t n = std::min<std::size_t>(chunk.size() - fed % 7, 1000000 - fed);
    h.update(chunk.data(), n);
    fed += n;
  }
  CHECK(hex(h.finish()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("wire: HMAC-SHA256 gives the RFC 4231 test case results", "[wire][crypto]") {
  using raft::detail::HmacSha256;
  std::string key4;
  for (char c = 1; c <= 25; ++c) key4 += c;
  const std::string long_key(131, '\xaa');
  CHECK(hex(HmacSha256(std::string(20, '\x0b')).mac("Hi There")) ==
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  CHECK(hex(HmacSha256("Jefe").mac("what do ya want for nothing?")) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  CHECK(hex(HmacSha256(std::string(20, '\xaa')).mac(std::string(50, '\xdd'))) ==
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  CHECK(hex(HmacSha256(key4).mac(std::string(50, '\xcd'))) ==
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
  // Test case 5 is truncated to 128 bits.
  CHECK(hex(HmacSha256(std::string(20, '\x0c')).mac("Test With Truncation")).substr(0, 32) ==
        "a3b6167473100ee06e0c796c2955552b");
  CHECK(hex(HmacSha256(long_key).mac("Test Using Larger Than Block-Size Key - Hash Key First")) ==
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  CHECK(hex(HmacSha256(long_key).mac("This is a test using a larger than block-size key and a larger than block-size "
                                     "data. The key needs to be hashed before being used by the HMAC algorithm.")) ==
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

namespace {

using raft::detail::PeerSession;
using raft::detail::PeerSide;

const std::vector<std::string> kHello{"HELLO", "4", "c1", "1", "s1", "127.0.0.1:5010", "2", std::string(64, 'a')};

// Two ends of one session (as after a handshake with `secret`).
std::pair<PeerSession, PeerSession> session_pair(const std::string& secret = "k") {
  const std::string t = raft::detail::handshake_transcript(kHello, std::string(64, 'b'));
  return {PeerSession(secret, t, PeerSide::Connector), PeerSession(secret, t, PeerSide::Listener)};
}

}  // namespace

TEST_CASE("wire: frames carry any bytes across, in any split, and large ones in pieces", "[wire][auth]") {
  auto [c, l] = session_pair();
  std::string plain = "*1\r\n$4\r\nPING\r\n";
  std::string big(raft::detail::kMaxFrameBytes * 2 + 17, 'x');
  for (std::size_t i = 0; i < big.size(); i += 4093) big[i] = static_cast<char>(i);
  std::string wire;
  c.seal(plain, wire);
  c.seal(big, wire);
  std::string got, error;
  for (std::size_t at = 0; at < wire.size(); at += 1000)  // arrives 1000 bytes at a time
    REQUIRE(l.open(wire.data() + at, std::min<std::size_t>(1000, wire.size() - at), got, error));
  CHECK(got == plain + big);
  // The other direction has its own key stream: the listener's frames open at the connector.
  std::string back;
  l.seal("+WELCOME\r\n", back);
  got.clear();
  REQUIRE(c.open(back.data(), back.size(), got, error));
  CHECK(got == "+WELCOME\r\n");
}

TEST_CASE("wire: a frame altered in any byte, replayed, reordered or reflected is refused", "[wire][auth]") {
  std::string first, second;
  {
    auto [c, l] = session_pair();
    c.seal("*2\r\n$3\r\nSET\r\n$5\r\npwned\r\n", first);
    c.seal("*1\r\n$4\r\nPING\r\n", second);
  }
  auto opens = [](const std::string& wire) {
    auto [c, l] = session_pair();
    std::string got, error;
    const bool ok = l.open(wire.data(), wire.size(), got, error);
    return std::make_tuple(ok, got, error);
  };
  REQUIRE(std::get<0>(opens(first + second)));
  // Each byte of the first frame flipped in turn: header, body and tag.
  for (std::size_t i = 0; i < first.size(); ++i) {
    std::string bad = first;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    auto [ok, got, error] = opens(bad);
    INFO("byte " << i);
    // A flipped length can also make the frame look unfinished: then nothing comes out either.
    CHECK(got.empty());
    if (!ok) CHECK(!error.empty());
  }
  CHECK(std::get<2>(opens(first + first)).find("frame 1 failed authentication") != std::string::npos);  // replayed
  CHECK_FALSE(std::get<0>(opens(second + first)));  // reordered
  CHECK_FALSE(std::get<0>(opens(second)));          // the first one dropped
  {
    // The listener's own frame sent back to it (reflected) is refused: directions differ.
    auto [c, l] = session_pair();
    std::string mine, got, error;
    l.seal("*1\r\n$4\r\nPING\r\n", mine);
    CHECK_FALSE(l.open(mine.data(), mine.size(), got, error));
  }
  {
    // Another secret, or another handshake (another nonce), makes another session key.
    auto [c, l] = session_pair("other");
    std::string got, error;
    CHECK_FALSE(l.open(first.data(), first.size(), got, error));
    PeerSession fresh("k", raft::detail::handshake_transcript(kHello, std::string(64, 'c')), PeerSide::Listener);
    CHECK_FALSE(fresh.open(first.data(), first.size(), got, error));
    CHECK(got.empty());
  }
  {
    // A declared length of 0 or over the maximum is refused at once, before waiting for it.
    auto [c, l] = session_pair();
    std::string got, error;
    CHECK_FALSE(l.open("\0\0\0\0", 4, got, error));
    auto [c2, l2] = session_pair();
    CHECK_FALSE(l2.open("\x00\x10\x00\x01", 4, got, error));
  }
}

TEST_CASE("wire: the handshake's proofs bind the direction, the secret and every HELLO field", "[wire][auth]") {
  using raft::detail::handshake_proof;
  using raft::detail::handshake_transcript;
  const std::string nonce_l(64, 'b');
  const std::string t = handshake_transcript(kHello, nonce_l);
  const std::string p = handshake_proof("k", PeerSide::Listener, t);
  CHECK(p.size() == 64);
  CHECK(raft::detail::handshake_proof_matches(p, "k", PeerSide::Listener, t));
  CHECK_FALSE(raft::detail::handshake_proof_matches(p, "k", PeerSide::Connector, t));  // reflected
  CHECK_FALSE(raft::detail::handshake_proof_matches(p, "k2", PeerSide::Listener, t));
  CHECK_FALSE(raft::detail::handshake_proof_matches(p, "", PeerSide::Listener, t));
  for (std::size_t i = 1; i < kHello.size(); ++i) {
    std::vector<std::string> other = kHello;
    other[i] += "x";
    INFO("field " << i);
    CHECK_FALSE(raft::detail::handshake_proof_matches(p, "k", PeerSide::Listener, handshake_transcript(other, nonce_l)));
  }
  // Length prefixes: moving a byte from one field to the next is another transcript.
  std::vector<std::string> shifted = kHello;
  shifted[2] = "c";
  shifted[3] = "11";
  CHECK(handshake_transcript(shifted, nonce_l) != t);
  CHECK_FALSE(raft::detail::handshake_proof_matches(p, "k", PeerSide::Listener, handshake_transcript(kHello, std::string(64, 'c'))));
}

TEST_CASE("wire: a secret file holds one secret, or two while the secret changes", "[wire][auth]") {
  std::string a, b;
  CHECK(raft::detail::parse_secrets("s3cr3t\n", a, b).empty());
  CHECK((a == "s3cr3t" && b.empty()));
  CHECK(raft::detail::parse_secrets("new\r\nold\r\n\n", a, b).empty());
  CHECK((a == "new" && b == "old"));
  CHECK(raft::detail::parse_secrets("only", a, b).empty());
  CHECK(a == "only");
  CHECK_FALSE(raft::detail::parse_secrets("", a, b).empty());
  CHECK_FALSE(raft::detail::parse_secrets("\nx\n", a, b).empty());
  CHECK_FALSE(raft::detail::parse_secrets("a\nb\nc\n", a, b).empty());
}
