
namespace raft {
namespace detail {

// ---- peer authentication: the handshake and the frames ---------------------------------------
//
// Every peer connection starts with a challenge and response; the connector speaks first and
// the listener proves first, so a connector sends nothing but its HELLO to an address until
// the node there has shown it holds the secret:
//   C -> L  HELLO 4 cluster_id node_id server_id address to nonce_c
//   L -> C  *CHALLENGE nonce_l proof_l...  (one proof per secret the listener accepts; or -ERR)
//   C -> L  PROOF proof_c                   (or REFUSED reason: no proof matched; then it closes)
// `to` is the node the connector means to reach (empty: whoever is there, a joiner's first
// contact); nonces are 32 bytes from getrandom(2) (random_bytes), in hex. With T the
// transcript (the HELLO's fields and nonce_l, each prefixed by its length) and K a secret both
// hold:
//   proof_l = HMAC(K, "listener proof" T)   proof_c = HMAC(K, "connector proof" T)
//   session key = HMAC(K, "session key" T)
// The secret never crosses the wire; the direction in each proof keeps one side's proof from
// being played back as the other's, and the nonces keep an old proof from being replayed.
// From then on both directions are frames, nothing else:
//   length (4 bytes, big-endian, 1..kMaxFrameBytes) | body | tag (32 bytes)
//   tag = HMAC(session key, direction C or L | sequence number (8 bytes) | length | body)
// The bodies, concatenated, are the RESP messages above (WELCOME, RAFT, FWD, JOIN...). The
// sequence numbers count frames from 0 in each direction and are not sent: a frame injected,
// altered, replayed, reordered or cut short fails its tag, and the connection is closed. One
// tag per frame (a sender's batch, up to 1 MiB), not per message: its cost is the bytes
// hashed. Nothing is encrypted: anyone on the path reads the traffic (TLS is what hides it).

constexpr std::size_t kHandshakeNonceBytes = 32;
constexpr std::size_t kMaxFrameBytes = std::size_t{1} << 20;
constexpr std::size_t kFrameHeaderBytes = 4;
constexpr std::size_t kFrameTagBytes = Sha256::kDigestBytes;
// A node accepts at most two secrets (Config::secret and Config::second_secret).
constexpr std::size_t kMaxPeerSecrets = 2;

inline std::string new_handshake_nonce() {
  const std::string r = random_bytes(kHandshakeNonceBytes);
  return to_hex(reinterpret_cast<const std::uint8_t*>(r.data()), r.size());
}

inline bool is_handshake_nonce(std::string_view s) {
  std::array<std::uint8_t, kHandshakeNonceBytes> ignored;
  return from_hex(s, ignored);
}

/// T: the HELLO's words after "HELLO", then the listener's nonce, each prefixed by its length
/// (8 bytes, big-endian), so that no two different handshakes have the same transcript.
inline std::string handshake_transcript(const std::vector<std::string>& hello, std::string_view listener_nonce) {
  std::string t = "raft.hpp peer handshake";
  auto field = [&t](std::string_view f) {
    for (int i = 7; i >= 0; --i) t += static_cast<char>(static_cast<std::uint64_t>(f.size()) >> (8 * i));
    t.append(f);
  };
  for (std::size_t i = 1; i < hello.size(); ++i) field(hello[i]);
  field(listener_nonce);
  return t;
}

enum class PeerSide : char { Connector = 'C', Listener = 'L' };

/// proof_l or proof_c (see above), in hex.
inline std::string handshake_proof(std::string_view secret, PeerSide prover, const std::string& transcript) {
  const HmacSha256 key(secret);
  Sha256 h = key.begin();
  h.update(prover == PeerSide::Listener ? std::string_view("listener proof") : std::string_view("connector proof"));
  h.update(transcript);
  return to_hex(key.finish(h));
}

/// Whether `presented` (hex) is `prover`'s proof of `secret` for this transcript; in constant time.
inline bool handshake_proof_matches(std::string_view presented, std::string_view secret, PeerSide prover,
                                    const std::string& transcript) {
  const std::string expected = handshake_proof(secret, prover, transcript);
  return presented.size() == expected.size() &&
         digests_equal(reinterpret_cast<const std::uint8_t*>(presented.data()),
                       reinterpret_cast<const std::uint8_t*>(expected.data()), expected.size());
}

/// One authenticated connection's two streams of frames: seals what this side sends, opens
/// (checks and unwraps) what it receives.
class PeerSession {
 public:
  PeerSession() = default;
  PeerSession(std::string_view secret, const std::string& transcript, PeerSide side)
      : key_(session_key(secret, transcript)),
        send_dir_(static_cast<char>(side)),
        recv_dir_(side == PeerSide::Connector ? 'L' : 'C'),
        open_(true) {}

  bool is_open() const { return open_; }

  /// Appends `plain` to `wire` as frames.
  void seal(std::string_view plain, std::string& wire) {
    for (std::size_t at = 0; at < plain.size(); at += kMaxFrameBytes) {
      const std::string_view body = plain.substr(at, kMaxFrameBytes);
      for (int i = 3; i >= 0; --i) wire += static_cast<char>(body.size() >> (8 * i));
      wire.append(body);
      const Sha256::Digest t = tag(send_dir_, sent_++, body);
      wire.append(reinterpret_cast<const char*>(t.data()), t.size());
    }
  }

  /// Takes `n` received bytes; appends the bodies of the complete frames among what it holds
  /// to `plain`. False, with `error`, at a frame that is malformed or fails its tag: nothing
  /// from it is given out, and the connection must be closed.
  bool open(const char* data, std::size_t n, std::string& plain, std::string& error) {
    in_.append(data, n);
    for (;;) {
      const std::size_t avail = in_.size() - pos_;
      if (avail < kFrameHeaderBytes) break;
      std::size_t len = 0;
      for (std::size_t i = 0; i < kFrameHeaderBytes; ++i) len = len << 8 | static_cast<std::uint8_t>(in_[pos_ + i]);
      if (len == 0 || len > kMaxFrameBytes) {
        error = "a frame declares " + std::to_string(len) + " bytes (1 to " + std::to_string(kMaxFrameBytes) +
                " allowed): not an authenticated peer stream";
        return false;
      }
      if (avail < kFrameHeaderBytes + len + kFrameTagBytes) break;
      const std::string_view body(in_.data() + pos_ + kFrameHeaderBytes, len);
      const Sha256::Digest t = tag(recv_dir_, received_, body);
      if (!digests_equal(t.data(), reinterpret_cast<const std::uint8_t*>(body.data() + len), kFrameTagBytes)) {
        error = "frame " + std::to_string(received_) +
                " failed authentication (altered, injected, replayed or out of order)";
        return false;
      }
      ++received_;
      plain.append(body);
      pos_ += kFrameHeaderBytes + len + kFrameTagBytes;
    }
    if (pos_ == in_.size()) {
      in_.clear();
      pos_ = 0;
    } else if (pos_ > kMaxFrameBytes) {
      in_.erase(0, pos_);
      pos_ = 0;
    }
    return true;
  }

 private:
  static std::string session_key(std::string_view secret, const std::string& transcript) {
    const HmacSha256 key(secret);
    Sha256 h = key.begin();
    h.update(std::string_view("session key"));
    h.update(transcript);
    const Sha256::Digest d = key.finish(h);
    return std::string(reinterpret_cast<const char*>(d.data()), d.size());
  }
  Sha256::Digest tag(char direction, std::uint64_t seq, std::string_view body) const {
    std::uint8_t head[1 + 8 + 4];
    head[0] = static_cast<std::uint8_t>(direction);
    for (int i = 0; i < 8; ++i) head[1 + i] = static_cast<std::uint8_t>(seq >> (56 - 8 * i));
    for (int i = 0; i < 4; ++i) head[9 + i] = static_cast<std::uint8_t>(body.size() >> (24 - 8 * i));
    Sha256 h = key_.begin();
    h.update(head, sizeof head);
    h.update(body);
    return key_.finish(h);
  }

  HmacSha256 key_;
  char send_dir_ = 'C';
  char recv_dir_ = 'L';
  bool open_ = false;
  std::uint64_t sent_ = 0;
  std::uint64_t received_ = 0;
  std::string in_;  // received bytes from pos_ on: an unfinished frame
  std::size_t pos_ = 0;
};

/// Reads one RESP value from a blocking socket's authenticated stream within timeout_ms.
inline bool recv_sealed_value(int fd, PeerSession& session, resp::ReplyParser& parser, resp::Value& out,
                              int timeout_ms, int cancel_fd, std::string& error, Tls* tls = nullptr) {
  Tls no_tls;
  Tls& io = tls != nullptr ? *tls : no_tls;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string plain;
  for (;;) {
    resp::Status st = parser.next(out);
    if (st == resp::Status::Ok) return true;
    if (st == resp::Status::Error) {
      error = "malformed answer: " + parser.error();
      return false;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0 || (!io.buffered() && !wait_ready(fd, POLLIN, static_cast<int>(left), cancel_fd))) {
      error = "no answer";
      return false;
    }
    char buf[4096];
    ssize_t r = io.recv(fd, buf, sizeof buf);
    if (r <= 0) {
      error = "connection closed";
      return false;
    }
    plain.clear();
    if (!session.open(buf, static_cast<std::size_t>(r), plain, error)) return false;
    parser.feed(plain);
  }
}

// The connector's side (see "peer authentication") on a blocking socket: `hello` (HELLO's
// words, with a fresh nonce), the listener's proof checked
// against each of our secrets, then ours. Before the listener has proved it holds a secret
// we hold, nothing but the HELLO is sent (and, when no proof matched, REFUSED so that the
// node there can log why). `refused`: the failure needs the operator (a wrong secret,
// another protocol version), not just a retry.
inline bool connector_handshake(int fd, const std::vector<std::string>& hello, const std::vector<std::string>& secrets,
                                int timeout_ms, int cancel_fd, PeerSession& session, std::string& error, bool& refused,
                                Tls* tls = nullptr) {
  refused = false;
  std::string out;
  resp::write_command(out, hello);
  resp::Limits limits;
  limits.max_bulk_length = 4096;
  limits.max_multibulk_length = 2 + kMaxPeerSecrets;
  limits.max_nesting = 1;
  resp::ReplyParser parser(limits);
  resp::Value reply;
  if (!send_all(fd, out.data(), out.size(), tls) || !recv_value(fd, parser, reply, timeout_ms, cancel_fd, tls)) {
    error = "no answer to HELLO";
    return false;
  }
  if (reply.is_error()) {
    refused = true;
    error = reply.str;
    return false;
  }
  const auto& e = reply.elements;
  if (reply.type != resp::Type::Array || e.size() < 3 || parser.buffered() != 0 || e[0].str != "CHALLENGE" ||
      !is_handshake_nonce(e[1].str)) {
    refused = true;
    error = "ERR the answer to HELLO is not a CHALLENGE: not a raft.hpp node of peer protocol " +
            std::string(kPeerProtocolVersion);
    return false;
  }
  const std::string transcript = handshake_transcript(hello, e[1].str);
  for (const std::string& secret : secrets)
    for (std::size_t i = 2; i < e.size(); ++i)
      if (handshake_proof_matches(e[i].str, secret, PeerSide::Listener, transcript)) {
        out.clear();
        resp::write_command(out, {"PROOF", handshake_proof(secret, PeerSide::Connector, transcript)});
        if (!send_all(fd, out.data(), out.size(), tls)) {
          error = "connection lost during the handshake";
          return false;
        }
        session = PeerSession(secret, transcript, PeerSide::Connector);
        return true;
      }
  out.clear();
  resp::write_command(out, {"REFUSED", "wrong secret"});
  send_all(fd, out.data(), out.size(), tls);
  refused = true;
  error = "ERR wrong secret: the node there did not prove that it holds this node's peer secret";
  return false;
}

/// The listener's side of the handshake, on the bytes received so far: answers HELLO with a
/// CHALLENGE, checks the PROOF, then opens the session. No I/O: what to send goes to `wire`.
class ListenerHandshake {
 public:
  enum class State { Waiting, Refused, Open };
  /// `own_id`: HELLO's `to` must be it (or empty), unless empty itself (a founder listening).
  ListenerHandshake(std::vector<std::string> secrets, std::string own_id)
      : secrets_(std::move(secrets)), own_id_(std::move(own_id)), parser_(limits()) {}

  /// Takes received bytes. Once Open, `session()` holds the session and `rest()` the bytes
  /// that followed the PROOF (frames already); once Refused, `refusal()` says why (and the
  /// refusal, in clear, is in `wire`).
  State take(const char* data, std::size_t n, std::string& wire) {
    try {
      return take_or_throw(data, n, wire);
    } catch (const std::exception& e) {  // no random nonce could be drawn
      return refuse(std::string("cannot answer: ") + e.what(), wire);
    }
  }
  State state() const { return state_; }
  const std::string& refusal() const { return refusal_; }
  /// HELLO's words (version, cluster id, node id, server id, address, to, nonce after "HELLO").
  const std::vector<std::string>& hello() const { return hello_; }
  PeerSession& session() { return session_; }
  std::string& rest() { return in_; }

 private:
  static resp::Limits limits() {  // handshake messages are small: a HELLO is 8 short words
    resp::Limits l;
    l.max_bulk_length = 4096;
    l.max_multibulk_length = 16;
    l.max_inline_length = 4096;
    return l;
  }
  State take_or_throw(const char* data, std::size_t n, std::string& wire) {
    if (state_ != State::Waiting) return state_;
    in_.append(data, n);
    parser_.feed(data, n);
    while (state_ == State::Waiting) {
      std::vector<std::string> w;
      const resp::Status st = parser_.next(w);
      if (st == resp::Status::NeedMore) break;
      if (st == resp::Status::Error) return refuse("malformed handshake (" + parser_.error() + ")", wire);
      in_.erase(0, in_.size() - parser_.buffered());
      if (w.empty()) continue;
      if (hello_.empty()) {
        on_hello(w, wire);
        continue;
      }
      const std::string who = "node " + hello_[3] + " at " + hello_[5];
      if (w[0] == "REFUSED") return refuse("wrong secret (" + who + " could not verify this node's proof)", wire);
      if (w[0] != "PROOF" || w.size() != 2) return refuse("expected PROOF from " + who, wire);
      for (const std::string& secret : secrets_)
        if (handshake_proof_matches(w[1], secret, PeerSide::Connector, transcript_)) {
          session_ = PeerSession(secret, transcript_, PeerSide::Listener);
          state_ = State::Open;
          return state_;
        }
      return refuse("wrong secret (the proof of " + who + " matches none of this node's secrets)", wire);
    }
    return state_;
  }
  State refuse(const std::string& why, std::string& wire) {
    refusal_ = why;
    resp::write_error(wire, "ERR " + why);
    state_ = State::Refused;
    return state_;
  }
  void on_hello(std::vector<std::string>& w, std::string& wire) {
    if (w[0] != "HELLO") {
      refuse("expected HELLO", wire);
      return;
    }
    if (w.size() < 2 || w[1] != kPeerProtocolVersion) {
      refuse("peer protocol version " + (w.size() < 2 ? std::string("?") : w[1]) + " is not " + kPeerProtocolVersion +
                 ": node " + (w.size() > 3 ? w[3] : std::string("?")) +
                 " runs another version of raft.hpp; upgrade the cluster one node at a time (see the README)",
             wire);
      return;
    }
    if (w.size() != 8 || !is_handshake_nonce(w[7])) {
      refuse("expected HELLO", wire);
      return;
    }
    if (!own_id_.empty() && !w[6].empty() && w[6] != own_id_) {
      refuse("this node is not node '" + w[6] + "' (another node took over the address?)", wire);
      return;
    }
    const std::string nonce = new_handshake_nonce();
    transcript_ = handshake_transcript(w, nonce);
    hello_ = std::move(w);
    std::vector<std::string> challenge{"CHALLENGE", nonce};
    for (const std::string& secret : secrets_) challenge.push_back(handshake_proof(secret, PeerSide::Listener, transcript_));
    resp::write_command(wire, challenge);
  }

  std::vector<std::string> secrets_;
  std::string own_id_;
  resp::RequestParser parser_;
  std::string in_;  // received since the last message the parser returned
  std::vector<std::string> hello_;
  std::string transcript_;
  PeerSession session_;
  State state_ = State::Waiting;
  std::string refusal_;
};

}  // namespace detail
}  // namespace raft
