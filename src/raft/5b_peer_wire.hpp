
// ---- the peer protocol ----------------------------------------------------------------------
// The peer protocol (port + 1) is RESP: arrays of bulk strings whose first word names them.
// Every connection starts with the handshake (5d_peer_auth.hpp: HELLO, the
// listener's CHALLENGE, the connector's PROOF); everything after it travels in authenticated
// frames, starting with the listener's answer:
//   -> +WELCOME, or an error and the connection closes
//   RAFT type term index log_term commit reject hint_index hint_term transfer context offset
//        done timestamp config data count [index term type timestamp payload]*count
//   JOIN node_id address server_id      -> +OK cluster_id | -MOVED id address | -TRYAGAIN ...
//   FWD nonce seq lowest user word...   (a follower's write for the leader, see below; user: the
//                                        client's ACL user, empty for execute())
//   FWDR nonce seq status reply         (the leader's answer: status done, notrun or unknown;
//                                        reply is RESP3-encoded)
// With TLS (section 1c), every connection of both ports runs TLS underneath: an accepted one
// starts it when accepted (the handshake goes on within its reads and writes on the poll
// thread), one a node opens (sender, joiner) finishes the TLS handshake before HELLO.
// Connections are one-way after the handshake: a node sends on the connections it opened
// and reads on the ones it accepted. Nothing received is ever evaluated; a malformed message
// closes that connection.
//
// Forwarded writes are applied at most once. A follower numbers the writes it forwards (seq)
// within its session: its node id and server id (the leader knows both from HELLO) and a nonce
// drawn at each start. Each FWD also carries the lowest seq the follower still waits for. The
// leader appends `__fwd node server_id nonce seq lowest word...`, and every node decides when
// it applies it, with the replicated detail::SessionTable, whether it runs, is a duplicate
// (answered with the reply it had) or is stale (not run). So the follower may send a forward
// again - it does, on every new connection to the leader, and to a new leader after an answer
// of unknown outcome - and gets the original reply. It keeps each forward until answered or
// past its deadline (at most kMaxForwardWaitMs), and answers its caller with the leader's reply;
// -TRYAGAIN when no copy may have been appended (none left this node, or the only one was
// refused); -TIMEOUT (outcome unknown) otherwise. A forward taken back before its link handed
// it to a socket is never sent. Writes forwarded in order reach the leader in order: a link
// sends its forwards in seq order, and forwards are moved to a new leader's link, in order,
// before any new one is queued there.

namespace raft {
namespace detail {

// The peer protocol's version, in HELLO. 1: the first release; 2: RAFT carries a timestamp
// (a snapshot's, a read's); 3: FWD and FWDR carry a session (at-most-once forwarded writes);
// 4: challenge and response instead of the secret in HELLO, and a MAC on every frame; FWD
// carries the client's ACL user (the leader checks it against its own users).
// A node refuses a peer of another version with a message naming both: the versions are not
// mixed on one link. A cluster is upgraded one node at a time; while versions are mixed, the
// nodes of the version a majority runs keep the cluster going.
constexpr const char* kPeerProtocolVersion = "4";

// What the peer connections accept once HELLO is done: a bulk (an entry's payload, a
// snapshot chunk, a forwarded write's argument) and words in one message.
constexpr std::size_t kPeerMaxBulkBytes = std::size_t{1} << 30;
constexpr std::size_t kPeerMaxWords = std::size_t{16} << 20;
// A forwarded write's log entry wraps the command with the forwarding session: a few words
// bounded by the handshake's limits (node and server ids of at most 4096 bytes).
constexpr std::size_t kMaxForwardWrappingBytes = 3 * 4096 + 256;
static_assert(kMaxCommandBytes + kMaxForwardWrappingBytes <= kPeerMaxBulkBytes,
              "an accepted write, wrapped as a forwarded one, must fit in one peer bulk");
static_assert(kProtoMaxBulkLen <= kPeerMaxBulkBytes && kMaxCommandWords + 8 <= kPeerMaxWords,
              "an accepted write must fit in one FWD message");

// The first word of a forwarded write's log entry. Command names starting with "__" are the
// runtime's: Node::handler refuses them and clients cannot send them.
constexpr const char* kForwardedCommand = "__fwd";
/// EXEC's entry: `__exec W (key seen_at existed){W} (argc word...)...` (5k2_transactions.hpp).
constexpr const char* kTransactionCommand = "__exec";
inline bool is_reserved_command(std::string_view name) { return name.rfind("__", 0) == 0; }

// A follower waits for a forwarded write's answer at most this long, whatever the configured
// timeouts: far less than SessionTable::kIdleMs, so that no copy of a write can reach the log
// after the leaders' session table forgot its session.
constexpr int kMaxForwardWaitMs = static_cast<int>(SessionTable::kIdleMs / 10);
// Forwarded writes one node waits for at once; beyond, a write gets -TRYAGAIN.
constexpr std::size_t kMaxForwardsWaiting = 65536;

// ---- the peer wire format ------------------------------------------------------------------

// "RAFT" and the 16 fields before the entries.
constexpr std::size_t kRaftFixedFields = 17;

inline void encode_raft(const Message& m, std::string& out) {
  resp::write_array_header(out, kRaftFixedFields + 5 * m.entries.size());
  resp::write_bulk(out, "RAFT");
  write_bulk_u64(out, static_cast<std::uint64_t>(m.type));
  write_bulk_u64(out, m.term);
  write_bulk_u64(out, m.index);
  write_bulk_u64(out, m.log_term);
  write_bulk_u64(out, m.commit);
  write_bulk_u64(out, m.reject ? 1 : 0);
  write_bulk_u64(out, m.hint_index);
  write_bulk_u64(out, m.hint_term);
  write_bulk_u64(out, m.transfer ? 1 : 0);
  write_bulk_u64(out, m.context);
  write_bulk_u64(out, m.offset);
  write_bulk_u64(out, m.done ? 1 : 0);
  write_bulk_i64(out, m.timestamp_ms);
  resp::write_bulk(out, m.config.empty() ? std::string() : m.config.encode());
  resp::write_bulk(out, m.data);
  write_bulk_u64(out, m.entries.size());
  for (const auto& e : m.entries) {
    write_bulk_u64(out, e.index);
    write_bulk_u64(out, e.term);
    write_bulk_u64(out, static_cast<std::uint64_t>(e.type));
    write_bulk_i64(out, e.timestamp_ms);
    resp::write_bulk(out, e.payload);
  }
}

/// Strict: every field must be present and well-formed, or the message is refused.
inline bool decode_raft(std::vector<std::string>& w, Message& m, std::string& error) {
  auto fail = [&](const char* what) {
    error = std::string("malformed RAFT message: ") + what;
    return false;
  };
  if (w.size() < kRaftFixedFields) return fail("too few fields");
  std::uint64_t v[12];
  for (int i = 0; i < 12; ++i)
    if (!parse_number(w[static_cast<std::size_t>(i) + 1], v[i])) return fail("bad number");
  if (v[0] < 1 || v[0] > static_cast<std::uint64_t>(MessageType::ReadIndexResponse)) return fail("unknown type");
  for (int flag : {5, 8, 11})
    if (v[flag] > 1) return fail("bad flag");
  m.type = static_cast<MessageType>(v[0]);
  m.term = v[1];
  m.index = v[2];
  m.log_term = v[3];
  m.commit = v[4];
  m.reject = v[5] == 1;
  m.hint_index = v[6];
  m.hint_term = v[7];
  m.transfer = v[8] == 1;
  m.context = v[9];
  m.offset = v[10];
  m.done = v[11] == 1;
  if (!parse_number(w[13], m.timestamp_ms)) return fail("bad timestamp");
  m.config = Configuration{};
  if (!w[14].empty() && !Configuration::decode(w[14], m.config)) return fail("bad configuration");
  m.data = std::move(w[15]);
  std::uint64_t count = 0;
  if (!parse_number(w[16], count) || count > (w.size() - kRaftFixedFields) / 5 ||
      w.size() != kRaftFixedFields + 5 * count)
    return fail("entry count does not match");
  m.entries.clear();
  m.entries.reserve(static_cast<std::size_t>(count));
  for (std::size_t i = kRaftFixedFields; i < w.size(); i += 5) {
    LogEntry e;
    std::uint64_t type = 0;
    if (!parse_number(w[i], e.index) || !parse_number(w[i + 1], e.term) || !parse_number(w[i + 2], type) ||
        type > 2 || !parse_number(w[i + 3], e.timestamp_ms))
      return fail("bad entry");
    e.type = static_cast<EntryType>(type);
    e.payload = std::move(w[i + 4]);
    // What the core takes on trust: entries follow the previous index one by one, and a
    // configuration entry decodes.
    if (e.index != m.index + 1 + m.entries.size() || e.term > m.term) return fail("entries out of sequence");
    Configuration c;
    if (e.type == EntryType::Config && !Configuration::decode(e.payload, c)) return fail("bad configuration entry");
    m.entries.push_back(std::move(e));
  }
  return true;
}

// A snapshot from a leader, checked before the core lets it replace the log: the whole text
// parses with the reader that restores it (Runtime::apply_item), and says what the message
// said. (The text has no checksum of its own; the parse is what catches damage or garbage.)
inline std::string check_received_snapshot(const Snapshot& snapshot, Store& parsed) {
  SnapshotMeta meta;
  std::string error;
  if (!Store::read_snapshot(snapshot.data, parsed, meta, error)) return "unreadable: " + error;
  if (meta.index != snapshot.meta.index || meta.term != snapshot.meta.term)
    return "its text says index " + std::to_string(meta.index) + " of term " + std::to_string(meta.term);
  if (meta.config != snapshot.meta.config) return "its text names other members than the message";
  if (meta.timestamp_ms != snapshot.meta.timestamp_ms) return "its text has another timestamp than the message";
  return "";
}

inline std::string check_received_snapshot(const Snapshot& snapshot) {
  Store parsed;
  return check_received_snapshot(snapshot, parsed);
}

// FWD and FWDR (see the protocol above).

struct ForwardedWrite {
  std::uint64_t nonce = 0;
  std::uint64_t seq = 0;
  std::uint64_t lowest = 0;  // the lowest seq the follower still waits for; never above seq
  std::string user;  // the client's ACL user on the follower; empty: the embedding program
  std::vector<std::string> words;
};

/// FWD nonce seq lowest user, then the write's words: `command` is them RESP-encoded
/// (resp::write_command), `words` how many there are.
inline void encode_forward(std::uint64_t nonce, std::uint64_t seq, std::uint64_t lowest, std::string_view user,
                           std::string_view command, std::size_t words, std::string& out) {
  resp::write_array_header(out, 5 + words);
  resp::write_bulk(out, "FWD");
  write_bulk_u64(out, nonce);
  write_bulk_u64(out, seq);
  write_bulk_u64(out, lowest);
  resp::write_bulk(out, user);
  out.append(command.substr(command.find("\r\n") + 2));  // the words, without their array header
}

inline bool decode_forward(std::vector<std::string>& w, ForwardedWrite& f, std::string& error) {
  auto fail = [&](const char* what) {
    error = std::string("malformed FWD message: ") + what;
    return false;
  };
  if (w.size() < 6 || w[0] != "FWD") return fail("too few fields");
  if (!parse_number(w[1], f.nonce) || !parse_number(w[2], f.seq) || !parse_number(w[3], f.lowest)) return fail("bad number");
  if (f.lowest > f.seq) return fail("lowest unanswered above the sequence number");
  f.user = std::move(w[4]);
  f.words.assign(std::make_move_iterator(w.begin() + 5), std::make_move_iterator(w.end()));
  return true;
}

enum class ForwardStatus : std::uint8_t {
  Done,     // the reply is the write's outcome (it was applied, or the log decided it does not run)
  NotRun,   // this leader did not append it (not leading, or it refuses it); the reply says why
  Unknown,  // this leader appended it and lost track of it (stepped down, timed out)
};

inline const char* forward_status_name(ForwardStatus s) {
  switch (s) {
    case ForwardStatus::Done: return "done";
    case ForwardStatus::NotRun: return "notrun";
    case ForwardStatus::Unknown: return "unknown";
  }
  return "?";
}

struct ForwardReply {
  std::uint64_t nonce = 0;
  std::uint64_t seq = 0;
  ForwardStatus status = ForwardStatus::Done;
  Reply reply;
};

inline void encode_forward_reply(const ForwardReply& r, std::string& out) {
  std::string encoded;
  resp::write(encoded, r.reply, resp::kProtocolKept);
  resp::write_array_header(out, 5);
  resp::write_bulk(out, "FWDR");
  write_bulk_u64(out, r.nonce);
  write_bulk_u64(out, r.seq);
  resp::write_bulk(out, forward_status_name(r.status));
  resp::write_bulk(out, encoded);
}

/// Parses a reply encoded by resp::write (a FWDR's, a kept one in the session table). Without
/// limits but the nesting: what is parsed is already in memory.
inline bool decode_reply(std::string_view bytes, Reply& out) {
  resp::Limits limits;
  limits.max_bulk_length = std::numeric_limits<std::size_t>::max();
  limits.max_multibulk_length = std::numeric_limits<std::size_t>::max();
  resp::ReplyParser parser(limits);
  parser.feed(bytes);
  const bool ok = parser.next(out) == resp::Status::Ok && parser.buffered() == 0;
  if (ok) restore_pairs(out);  // section 2: ZPOPMIN's pairs, flat again for RESP2
  return ok;
}

inline bool decode_forward_reply(const std::vector<std::string>& w, ForwardReply& r, std::string& error) {
  auto fail = [&](const char* what) {
    error = std::string("malformed FWDR message: ") + what;
    return false;
  };
  if (w.size() != 5 || w[0] != "FWDR") return fail("wrong number of fields");
  if (!parse_number(w[1], r.nonce) || !parse_number(w[2], r.seq)) return fail("bad number");
  if (w[3] == "done") r.status = ForwardStatus::Done;
  else if (w[3] == "notrun") r.status = ForwardStatus::NotRun;
  else if (w[3] == "unknown") r.status = ForwardStatus::Unknown;
  else return fail("unknown status");
  if (!decode_reply(w[4], r.reply)) return fail("bad reply");
  return true;
}

}  // namespace detail
}  // namespace raft
