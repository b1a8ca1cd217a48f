
// ============================================================================================
// 5. Runtime: POSIX sockets and a few std::threads that drive the core
// ============================================================================================
//
// Threads, independent of the number of clients:
//   poll      accepts and serves every client connection: parses commands, proposes writes
//             and asks for read indexes (batched per wake-up), runs reads confirmed here,
//             writes replies in order; times out this node's forwarded writes.
//   peer      accepts every inbound peer connection (peers_in_, its own), does the listener's
//             handshake, steps inbound Raft messages into the core, answers JOIN, proposes the
//             writes followers forward (FWD) and takes their answers (FWDR); checks a received
//             snapshot before the core installs it. Nothing a client sends runs here: a slow
//             command or a large reply never delays a heartbeat.
//   ticker    ticks the core; the leader's background expiry.
//   sender    one per peer: connects (from this node's address), authenticates, sends.
//   writer    the storage's group commit (StorageWriter): everything waiting shares an fdatasync.
//             Writes a received snapshot's chunks to a file; reads it back and parses it whole.
//   apply     applies committed entries to the store, answers writes and linearizable reads,
//             runs the role callbacks.
//   snapshot  serializes a copy of the store and hands it to the writer.
//   joiner    only on a node started with -e, until it is a member.
// Lock order: core_mu_ before req_mu_, apply_mu_, a sender's mutex and done_mu_; fwd_mu_ before
// req_mu_, links_mu_ and a sender's mutex; data_mu_ is never held while taking core_mu_;
// checked_mu_ is taken last. The poll and peer threads share no unlocked state: what both
// touch (the core, forwards_, requests_, links_, the ACL) is under its lock above; each has
// its own Batch, wake pipe and connections.
//
// The peer protocol (port + 1) is RESP: arrays of bulk strings whose first word names them.
// Every connection starts with the handshake ("peer authentication" below: HELLO, the
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
inline bool is_reserved_command(std::string_view name) { return name.rfind("__", 0) == 0; }

// A follower waits for a forwarded write's answer at most this long, whatever the configured
// timeouts: far less than SessionTable::kIdleMs, so that no copy of a write can reach the log
// after the leaders' session table forgot its session.
constexpr int kMaxForwardWaitMs = static_cast<int>(SessionTable::kIdleMs / 10);
// Forwarded writes one node waits for at once; beyond, a write gets -TRYAGAIN.
constexpr std::size_t kMaxForwardsWaiting = 65536;

// Descriptors never given to clients (Config::max_clients is lowered to RLIMIT_NOFILE less
// these): 32 for storage (log segments, snapshot and temporary files, the data directory), the
// listeners and pipes, as Redis keeps 32; 96 for peer connections, one out and one in per
// member of a cluster of up to 48.
constexpr std::uint64_t kReservedDescriptors = 128;

// Redis's reply to a write refused at maxmemory (noeviction).
constexpr const char* kOomError = "OOM command not allowed when used memory > 'maxmemory'.";

/// Redis's memory values: a number of bytes, or with a unit (k 1000, kb 1024, m, mb, g, gb;
/// any case). False if `s` is none or the value overflows.
inline bool parse_memory(std::string_view s, std::uint64_t& bytes) {
  std::size_t digits = 0;
  while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9') ++digits;
  std::uint64_t n = 0;
  if (digits == 0 || digits > 19 || std::from_chars(s.data(), s.data() + digits, n).ec != std::errc()) return false;
  const std::string unit = lower(std::string(s.substr(digits)));
  static const std::pair<const char*, std::uint64_t> units[] = {
      {"", 1}, {"b", 1}, {"k", 1000}, {"kb", 1024}, {"m", 1000 * 1000}, {"mb", 1024 * 1024},
      {"g", 1000 * 1000 * 1000}, {"gb", std::uint64_t{1024} * 1024 * 1024}};
  for (const auto& [name, factor] : units)
    if (unit == name) {
      if (n > std::numeric_limits<std::uint64_t>::max() / factor) return false;
      bytes = n * factor;
      return true;
    }
  return false;
}

inline std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// INFO [section ...]: the named sections of `text` (case-insensitive); every section for
/// none, "all", "default" or "everything"; nothing for an unknown one (as Redis answers).
inline std::string info_sections(const std::string& text, const std::vector<std::string>& wanted) {
  bool everything = wanted.empty();
  std::set<std::string> names;
  for (const auto& w : wanted) {
    const std::string n = lower(w);
    everything = everything || n == "all" || n == "default" || n == "everything";
    names.insert(n);
  }
  if (everything) return text;
  std::string out;
  // Sections start with "# Name" and are separated by an empty line.
  for (std::size_t at = 0; at < text.size();) {
    std::size_t end = text.find("\r\n\r\n", at);
    end = end == std::string::npos ? text.size() : end + 2;
    const std::size_t eol = text.find("\r\n", at);
    const std::string name = text.compare(at, 2, "# ") == 0 ? lower(text.substr(at + 2, eol - at - 2)) : "";
    if (names.count(name) > 0) out += (out.empty() ? "" : "\r\n") + text.substr(at, end - at);
    at = end == text.size() ? end : end + 2;
  }
  return out;
}

inline void write_bulk_u64(std::string& out, std::uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;
  resp::write_bulk(out, std::string_view(buf, static_cast<std::size_t>(end - buf)));
}

inline void write_bulk_i64(std::string& out, std::int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;
  resp::write_bulk(out, std::string_view(buf, static_cast<std::size_t>(end - buf)));
}

inline std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

inline std::uint64_t random_u64() {
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

inline std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// ---- addresses and sockets -----------------------------------------------------------------

struct HostPort {
  std::string host;
  int port = 0;
};

/// "ip:port" with a concrete IPv4 address and a port whose successor is a port too.
inline bool parse_host_port(std::string_view s, HostPort& out, std::string& error) {
  auto colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    error = "address '" + std::string(s) + "' is not ip:port";
    return false;
  }
  std::string host(s.substr(0, colon));
  std::uint64_t port = 0;
  if (!parse_number(s.substr(colon + 1), port) || port == 0 || port > 65534) {
    error = "address '" + std::string(s) + "' has no valid port (1-65534: peers use port + 1)";
    return false;
  }
  in_addr a{};
  if (inet_pton(AF_INET, host.c_str(), &a) != 1) {
    error = "address '" + std::string(s) + "' needs a numeric IPv4 address (peers are told it)";
    return false;
  }
  if (a.s_addr == htonl(INADDR_ANY)) {
    error = "address '" + std::string(s) + "' must be a concrete address, not 0.0.0.0";
    return false;
  }
  out.host = host;
  out.port = static_cast<int>(port);
  return true;
}

inline sockaddr_in make_sockaddr(const std::string& host, int port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &sa.sin_addr);
  return sa;
}

inline void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

inline void set_send_timeout(int fd, int ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

inline void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

inline int listen_tcp(const std::string& host, int port, std::string& error) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = "socket: " + errno_text(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa = make_sockaddr(host, port);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 511) != 0) {
    error = "cannot listen on " + host + ":" + std::to_string(port) + ": " + errno_text(errno);
    ::close(fd);
    return -1;
  }
  set_nonblocking(fd);
  return fd;
}

/// Whether `fd` has data to read (or is closed) right now.
inline bool readable_now(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

/// Waits up to `timeout_ms` for `events` on `fd`; false on a timeout, or at once when
/// `cancel_fd` (if >= 0) becomes readable: the runtime makes it so when it stops, and a thread
/// waiting for a peer that does not answer must not hold the shutdown up.
inline bool wait_ready(int fd, short events, int timeout_ms, int cancel_fd) {
  pollfd p[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
  int n;
  do {
    n = ::poll(p, cancel_fd >= 0 ? 2 : 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n > 0 && p[0].revents != 0 && (cancel_fd < 0 || p[1].revents == 0);
}

/// Connects from src_host (so a firewall rule between two addresses cuts exactly that link).
inline int connect_tcp(const std::string& src_host, const std::string& host, int port, int timeout_ms,
                       std::string& error, int cancel_fd = -1) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = "socket: " + errno_text(errno);
    return -1;
  }
  sockaddr_in src = make_sockaddr(src_host, 0);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
    error = "cannot bind " + src_host + ": " + errno_text(errno);
    ::close(fd);
    return -1;
  }
  set_nonblocking(fd);
  sockaddr_in sa = make_sockaddr(host, port);
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  if (rc != 0 && errno != EINPROGRESS) {
    error = errno_text(errno);
    ::close(fd);
    return -1;
  }
  if (rc != 0) {
    if (!wait_ready(fd, POLLOUT, timeout_ms, cancel_fd)) {
      error = cancel_fd >= 0 && readable_now(cancel_fd) ? "stopping" : "connect timed out";
      ::close(fd);
      return -1;
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      error = errno_text(err ? err : errno);
      ::close(fd);
      return -1;
    }
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) & ~O_NONBLOCK);
  set_nodelay(fd);
  return fd;
}

#ifdef RAFT_OPENSSL_SUPPORT
/// TLS as the client on a blocking socket from connect_tcp: the handshake within timeout_ms
/// (given up at once when cancel_fd becomes readable), the certificate checked against the CA
/// and `host`. The socket's reads then time out too, as its writes do.
inline bool tls_connect(int fd, Tls& tls, const TlsContext& ctx, const std::string& host, int timeout_ms,
                        int cancel_fd, std::string& error) {
  if (!tls.begin(ctx, fd, false, host, error)) return false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  set_nonblocking(fd);
  for (;;) {
    const int wait = tls.handshake();
    if (wait == 0) break;
    if (wait < 0) {
      error = tls.error();
      return false;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0 || !wait_ready(fd, static_cast<short>(wait), static_cast<int>(left), cancel_fd)) {
      error = "no TLS handshake";
      return false;
    }
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) & ~O_NONBLOCK);
  timeval tv{};
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = (timeout_ms % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return true;
}
#endif

/// Blocking send of everything (the socket has a send timeout), through `tls` when given.
/// MSG_NOSIGNAL: a closed peer never raises SIGPIPE in the host program.
inline bool send_all(int fd, const char* p, std::size_t n, Tls* tls = nullptr) {
  Tls no_tls;
  Tls& io = tls != nullptr ? *tls : no_tls;
  while (n > 0) {
    ssize_t w = io.send(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

/// Reads one RESP value from a blocking socket within timeout_ms, through `tls` when given.
inline bool recv_value(int fd, resp::ReplyParser& parser, resp::Value& out, int timeout_ms, int cancel_fd = -1,
                       Tls* tls = nullptr) {
  Tls no_tls;
  Tls& io = tls != nullptr ? *tls : no_tls;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    resp::Status st = parser.next(out);
    if (st == resp::Status::Ok) return true;
    if (st == resp::Status::Error) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    if (!io.buffered() && !wait_ready(fd, POLLIN, static_cast<int>(left), cancel_fd)) return false;
    char buf[4096];
    ssize_t r = io.recv(fd, buf, sizeof buf);
    if (r <= 0) return false;
    parser.feed(buf, static_cast<std::size_t>(r));
  }
}

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

// ---- clients: passwords, users and what they may run (Redis's AUTH and ACL) ----------------

// Passwords are kept as their SHA-256 digests (section 1b), compared as digests, and shown by
// ACL LIST as Redis shows them (#<hex>).
inline std::string sha256_hex(std::string_view data) {
  Sha256 h;
  h.update(data.data(), data.size());
  return to_hex(h.finish());
}

// The command categories ACL rules name (+@read ...). A command belongs to one: data reads
// (and the read-only status INFO and ROLE), data writes, administration, or the connection's
// own commands. @dangerous is Redis's wider name for administration; @all is every command.
enum AclCategory : unsigned { kAclRead = 1, kAclWrite = 2, kAclAdmin = 4, kAclConnection = 8 };

inline unsigned acl_category_bits(std::string_view name) {
  if (name == "read") return kAclRead;
  if (name == "write") return kAclWrite;
  if (name == "admin" || name == "dangerous") return kAclAdmin;
  if (name == "connection") return kAclConnection;
  if (name == "all") return ~0u;
  return 0;
}

/// What an ACL check needs to know of a command.
struct AclCommand {
  std::string name;  // lower-case
  std::string sub;   // the subcommand of a container command (CONFIG SET, ACL SETUSER...), lower-case
  unsigned category = kAclConnection;
  bool keyed = false;  // names keys: needs a user with allkeys (~*)
  /// As Redis names it in -NOPERM: "set", "config|set".
  std::string full_name() const { return sub.empty() ? name : name + "|" + sub; }
};

/// One user: Redis's model, reduced to what raft.hpp supports: on/off, passwords (as SHA-256
/// digests) or nopass, all keys or none, all channels or none (there is no pub/sub; kept so
/// ACL LIST reads as Redis's), and command rules applied in order, the last match deciding.
struct AclUser {
  std::string name;
  bool enabled = false;
  bool nopass = false;
  std::vector<std::string> passwords;  // SHA-256 hex digests
  bool all_keys = false;
  bool all_channels = false;
  std::vector<std::string> command_rules;  // "+@read", "-set", "+config|get"; lower-case

  bool permits(const AclCommand& c) const {
    bool allowed = false;
    for (const auto& rule : command_rules) {
      std::string_view body = std::string_view(rule).substr(1);
      bool matches;
      if (body.size() > 1 && body[0] == '@') {
        matches = (acl_category_bits(body.substr(1)) & c.category) != 0;
      } else {
        const auto bar = body.find('|');
        matches = bar == std::string_view::npos ? body == c.name
                                                : body.substr(0, bar) == c.name && body.substr(bar + 1) == c.sub;
      }
      if (matches) allowed = rule[0] == '+';
    }
    return allowed;
  }
  bool accepts_password(const std::string& password) const {
    if (nopass) return true;
    const std::string digest = sha256_hex(password);
    bool found = false;
    for (const auto& p : passwords) found |= p == digest;
    return found;
  }
  /// As ACL LIST shows it: "user alice on #<sha256> ~* resetchannels -@all +@read".
  std::string describe() const {
    std::string s = "user " + name + (enabled ? " on" : " off");
    if (nopass) s += " nopass";
    for (const auto& p : passwords) s += " #" + p;
    if (all_keys) s += " ~*";
    s += all_channels ? " &*" : " resetchannels";
    if (command_rules.empty() || (command_rules[0] != "+@all" && command_rules[0] != "-@all")) s += " -@all";
    for (const auto& r : command_rules) s += " " + r;
    return s;
  }
};

/// The users of one node and the rules that change them (ACL SETUSER's modifiers). Not
/// thread-safe: the runtime holds acl_mu_.
class Acl {
 public:
  Acl() {
    AclUser d;
    d.name = "default";
    d.enabled = d.nopass = d.all_keys = d.all_channels = true;
    d.command_rules = {"+@all"};
    users_["default"] = d;
  }

  /// ACL SETUSER name modifier...: all or nothing. Empty on success, else Redis's error
  /// (without the leading '-'). `known_command` says whether +name/-name ("get",
  /// "config|set") names a command (null: any name is taken, for Config::users checked
  /// before handlers are registered).
  std::string set_user(const std::string& name, const std::vector<std::string>& modifiers,
                       const std::function<bool(const std::string&)>& known_command) {
    if (name.empty() || name.find_first_of(std::string(" \0", 2)) != std::string::npos)
      return "ERR Usernames can't contain spaces or null characters";
    AclUser u;
    auto it = users_.find(name);
    if (it != users_.end()) u = it->second;
    u.name = name;
    for (const auto& m : modifiers) {
      const std::string why = apply(u, m, known_command);
      if (!why.empty()) return "ERR Error in ACL SETUSER modifier '" + m + "': " + why;
    }
    users_[name] = std::move(u);
    return "";
  }
  /// A Config::users entry: "name modifier...".
  std::string set_user_line(const std::string& line) {
    std::vector<std::string> words;
    std::size_t at = 0;
    while (at < line.size()) {
      const std::size_t end = std::min(line.find(' ', at), line.size());
      if (end > at) words.push_back(line.substr(at, end - at));
      at = end + 1;
    }
    if (words.empty()) return "an empty user entry";
    const std::string name = words[0];
    words.erase(words.begin());
    return set_user(name, words, nullptr);
  }
  bool del_user(const std::string& name) { return users_.erase(name) > 0; }
  const AclUser* find(const std::string& name) const {
    auto it = users_.find(name);
    return it == users_.end() ? nullptr : &it->second;
  }
  bool authenticate(const std::string& name, const std::string& password) const {
    const AclUser* u = find(name);
    return u != nullptr && u->enabled && u->accepts_password(password);
  }
  /// Redis's rule: clients must authenticate unless the default user is on and needs no password.
  bool auth_required() const {
    const AclUser* d = find("default");
    return d == nullptr || !d->enabled || !d->nopass;
  }
  /// Protected mode applies while the default user has no password (Redis checks nopass alone).
  bool default_without_password() const {
    const AclUser* d = find("default");
    return d != nullptr && d->nopass;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [n, u] : users_) out.push_back(n);
    return out;
  }
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    for (const auto& [n, u] : users_) out.push_back(u.describe());
    return out;
  }
  /// Empty when `user` may run `c`, else the -NOPERM error (without the '-').
  static std::string refusal(const AclUser* user, const AclCommand& c) {
    if (user == nullptr) return "NOPERM this user no longer exists";
    if (!user->permits(c)) return "NOPERM this user has no permissions to run the '" + c.full_name() + "' command";
    if (c.keyed && !user->all_keys) return "NOPERM this user has no permissions to access one of the keys used as arguments";
    return "";
  }

 private:
  static bool is_lower_hex64(std::string_view s) {
    if (s.size() != 64) return false;
    for (char ch : s)
      if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
    return true;
  }
  static std::string apply(AclUser& u, const std::string& m,
                           const std::function<bool(const std::string&)>& known_command) {
    const std::string low = lower(m);
    if (low == "on") u.enabled = true;
    else if (low == "off") u.enabled = false;
    else if (low == "nopass") u.nopass = true, u.passwords.clear();
    else if (low == "resetpass") u.nopass = false, u.passwords.clear();
    else if (low == "allkeys" || m == "~*") u.all_keys = true;
    else if (low == "resetkeys") u.all_keys = false;
    else if (low == "allchannels" || m == "&*") u.all_channels = true;
    else if (low == "resetchannels") u.all_channels = false;
    else if (low == "allcommands") u.command_rules = {"+@all"};
    else if (low == "nocommands") u.command_rules = {"-@all"};
    else if (low == "reset") {
      u = AclUser{u.name, false, false, {}, false, false, {"-@all"}};
    } else if (m[0] == '>' || m[0] == '#') {
      const std::string digest = m[0] == '>' ? sha256_hex(std::string_view(m).substr(1)) : m.substr(1);
      if (m[0] == '#' && !is_lower_hex64(digest))
        return "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters";
      if (std::find(u.passwords.begin(), u.passwords.end(), digest) == u.passwords.end()) u.passwords.push_back(digest);
      u.nopass = false;
    } else if (m[0] == '<' || m[0] == '!') {
      const std::string digest = m[0] == '<' ? sha256_hex(std::string_view(m).substr(1)) : m.substr(1);
      if (m[0] == '!' && !is_lower_hex64(digest))
        return "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters";
      auto at = std::find(u.passwords.begin(), u.passwords.end(), digest);
      if (at == u.passwords.end()) return "The password you are trying to remove from the user does not exist";
      u.passwords.erase(at);
    } else if (m[0] == '~' || m[0] == '%') {
      return "key patterns other than ~* (allkeys) are not supported by raft.hpp";
    } else if (m[0] == '&') {
      return "channel patterns other than &* (allchannels) are not supported by raft.hpp";
    } else if ((m[0] == '+' || m[0] == '-') && m.size() > 1) {
      std::string body = low.substr(1);
      if (body[0] == '@') {
        if (acl_category_bits(std::string_view(body).substr(1)) == 0) return "Unknown command or category name in ACL";
        if (body == "@all") {
          u.command_rules = {low};
          return "";
        }
      } else if (known_command && !known_command(body)) {
        return "Unknown command or category name in ACL";
      }
      u.command_rules.push_back(low);
    } else {
      return "Syntax error";
    }
    return "";
  }
  std::map<std::string, AclUser> users_;
};

/// A client address that protected mode serves: the loopback network, 127.0.0.0/8.
inline bool is_loopback_client(const sockaddr_in& from) { return (ntohl(from.sin_addr.s_addr) >> 24) == 127; }

// What a client outside the loopback network reads, then the connection closes: Redis's
// -DENIED, saying how to open the node up.
constexpr const char* kProtectedModeDenied =
    "-DENIED raft.hpp is running in protected mode because protected mode is enabled and no password is set for "
    "the default user. In this mode connections are only accepted from the loopback interface. If you want to "
    "connect from other computers, either: 1) set a password: 'CONFIG SET requirepass PASSWORD' from the "
    "loopback interface, or restart the node with '--requirepass PASSWORD' (Config::requirepass); or 2) if the "
    "network is trusted, disable protected mode: 'CONFIG SET protected-mode no' from the loopback interface, or "
    "restart the node with '--protected-mode no' (Config::protected_mode = false). You only need one of them.\r\n";

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

// ---- logging -------------------------------------------------------------------------------

inline const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::Debug: return "DEBUG";
    case LogLevel::Info: return "INFO";
    case LogLevel::Warning: return "WARNING";
    case LogLevel::Error: return "ERROR";
  }
  return "?";
}

inline std::string timestamp_text() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  long us = static_cast<long>(std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d.%06ld", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, us);
  return buf;
}

// ---- connections to peers ------------------------------------------------------------------

class Runtime;

/// The outbound connection to one peer, with its own thread: messages are queued by any
/// thread and sent in order; on failure it reconnects with backoff (Raft tolerates the loss).
/// Urgent messages (see is_urgent: heartbeats, votes) go ahead of every message not yet handed
/// to the socket, and each send hands it at most about kSendBytes (or one larger message), so
/// a heartbeat never waits behind a large entry or a backlog of them.
/// Forwarded writes wait apart, by sequence number, until the runtime takes them back: each is
/// sent on every new connection, in sequence order.
class PeerLink {
 public:
  /// Test hook (tests/test_forward.cpp): Stall hands nothing to the socket while set (a peer
  /// that stopped reading: its buffers are full); Drop loses whatever is handed to the socket
  /// (a cut link), and when lifted the link reconnects, as after a real cut.
  enum class Fault : std::uint8_t { None, Stall, Drop };

  /// `max_queued_bytes`: what may wait to be sent, for Raft messages and for unanswered
  /// forwards each (tests make it small).
  PeerLink(Runtime& rt, NodeId id, std::string address, std::size_t max_queued_bytes = kMaxQueuedBytes)
      : rt_(rt), id_(std::move(id)), max_queued_bytes_(max_queued_bytes), address_(std::move(address)) {
    thread_ = std::thread([this] { run(); });
  }
  ~PeerLink() { stop(); }
  PeerLink(const PeerLink&) = delete;
  PeerLink& operator=(const PeerLink&) = delete;

  /// Queues a message; an urgent one goes ahead of those not handed to the socket yet.
  void send(std::string bytes, bool urgent = false) {
    std::lock_guard<std::mutex> lock(mu_);
    if (queued_bytes_ > max_queued_bytes_) return;  // the peer is gone or slow: drop
    queued_bytes_ += bytes.size();
    (urgent ? urgent_ : queue_).push_back(std::move(bytes));
    cv_.notify_one();
  }
  /// Whether a Raft message may overtake the messages queued before it on a link. Raft is
  /// correct whatever the order messages arrive in; these are small, and late ones cost
  /// leadership (heartbeats and their answers: check-quorum, the followers' election timers,
  /// read rounds) or elections. A heartbeat that overtakes an Append is safe: its commit is at
  /// most the follower's acknowledged match, and the follower commits at most its own last
  /// index. Appends, snapshot chunks and their answers stay in order among themselves (a
  /// pipeline; the leader's view of a follower would otherwise go back and forth), and so does
  /// TimeoutNow, which must follow the entries that brought the new leader up to date.
  static bool is_urgent(MessageType t) {
    switch (t) {
      case MessageType::Heartbeat:
      case MessageType::HeartbeatResponse:
      case MessageType::PreVote:
      case MessageType::PreVoteResponse:
      case MessageType::Vote:
      case MessageType::VoteResponse: return true;
      default: return false;
    }
  }
  /// Queues forwarded write `seq` (a FWD message). False, and nothing is queued, when too many
  /// forwards wait for answers already (the peer is gone or slow). Forwards have a budget of
  /// their own: they stay here until answered, and must never crowd out the Raft messages.
  bool send_forward(std::uint64_t seq, std::string bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (forward_bytes_ > max_queued_bytes_) return false;
    forward_bytes_ += bytes.size();
    forwards_[seq] = QueuedForward{std::move(bytes), 0, {}};
    unsent_.insert(seq);
    cv_.notify_one();
    return true;
  }
  /// Sends again every forward handed to a socket longer than `age` ago and not taken back
  /// (answered) since: its answer may have been lost on the leader's own connection to us,
  /// which can break while ours stays up. The leader answers a copy from its session table.
  void resend_unanswered_forwards(std::chrono::steady_clock::duration age) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto before = std::chrono::steady_clock::now() - age;
    bool any = false;
    for (const auto& [seq, f] : forwards_)
      if (f.handed > 0 && f.handed_at < before && unsent_.insert(seq).second) any = true;
    if (any) cv_.notify_one();
  }
  /// Takes forwarded write `seq` back: it is not sent again. Returns how many times it was
  /// handed to a socket (0: it never left this node), or nothing if it is not here.
  std::optional<unsigned> take_forward(std::uint64_t seq) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = forwards_.find(seq);
    if (it == forwards_.end()) return std::nullopt;
    const unsigned handed = it->second.handed;
    forward_bytes_ -= std::min(forward_bytes_, it->second.bytes.size());
    forwards_.erase(it);
    unsent_.erase(seq);
    return handed;
  }
  void set_fault(Fault fault) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fault_ == Fault::Drop && fault != Fault::Drop) reconnect_ = true;
    fault_ = fault;
    cv_.notify_all();
  }
  void set_address(const std::string& address) {
    std::lock_guard<std::mutex> lock(mu_);
    if (address == address_) return;
    address_ = address;
    reconnect_ = true;
    cv_.notify_one();
  }
  std::string address() const {
    std::lock_guard<std::mutex> lock(mu_);
    return address_;
  }
  bool connected() const { return connected_.load(); }
  /// A link that cannot connect tries again after 20 ms, doubling up to this (unscaled):
  /// within it of a node's restart, every link to that node has said HELLO again.
  static constexpr int kMaxBackoffMs = 500;
  /// Tells the thread to finish and wakes it from a send to a peer that does not read.
  void request_stop() {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    cv_.notify_all();
  }
  /// request_stop(), and waits for the thread.
  void stop() {
    request_stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  static constexpr std::size_t kMaxQueuedBytes = std::size_t{256} << 20;
  // What one send hands the socket (more only for one larger message, sent whole: a message's
  // frames cannot be interleaved with another's). An Append carries at most
  // max_message_bytes of entries (1 MiB) unless one entry is larger; a snapshot chunk, 1 MiB.
  static constexpr std::size_t kSendBytes = std::size_t{256} << 10;
  void run();

  struct QueuedForward {
    std::string bytes;
    unsigned handed = 0;  // times handed to a socket
    std::chrono::steady_clock::time_point handed_at{};  // the last time
  };

  Runtime& rt_;
  const NodeId id_;
  const std::size_t max_queued_bytes_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string address_;
  std::deque<std::string> queue_;
  std::deque<std::string> urgent_;  // sent before queue_ (is_urgent)
  std::map<std::uint64_t, QueuedForward> forwards_;  // by sequence number
  std::set<std::uint64_t> unsent_;  // forwards not handed to the current connection yet
  std::size_t queued_bytes_ = 0;   // of queue_ and urgent_
  std::size_t forward_bytes_ = 0;  // of forwards_
  Fault fault_ = Fault::None;
  bool stopping_ = false;
  bool reconnect_ = false;
  int fd_ = -1;
  Tls tls_;  // fd_'s; only this link's thread uses it
  std::atomic<bool> connected_{false};
  std::thread thread_;
};

// ---- the runtime ---------------------------------------------------------------------------

class Runtime {
 public:
  Runtime(Node& node, Config config) : node_(node), cfg_(std::move(config)) {
    add_builtin_commands(handlers_);
    // The leader's background expiry: delete `key` if its deadline is still at or before
    // this entry's timestamp (a key renewed meanwhile survives).
    handlers_["__expire"] = Command{[](Call& c) { return Reply::integer(c.check_ttl(c.words[1]) ? 1 : 0); }, "we", 1, 1};
    // Errors in the users are reported by Config::validate() when the node starts.
    if (!cfg_.requirepass.empty()) acl_.set_user("default", {"resetpass", ">" + cfg_.requirepass}, nullptr);
    for (const auto& line : cfg_.users) acl_.set_user_line(line);
  }
  ~Runtime() { stop(); }

  // ---- configuration before start ----
  CommandTable handlers_;
  std::function<void(Node&, std::uint64_t)> on_leader_;
  std::function<void(Node&)> on_follower_;
  std::function<void(Node&)> on_candidate_;

  void start();
  void join();
  void stop();
  void request_stop() {
    std::lock_guard<std::mutex> lock(life_mu_);
    stop_requested_ = true;
    life_cv_.notify_all();
  }
  bool stopping() const { return stopping_.load(); }

  // ---- state ----
  const NodeId& id() const { return cfg_.id; }
  const std::string& address() const { return cfg_.address; }
  char state() const { return state_char_.load(); }
  Role role() const { return static_cast<Role>(role_.load()); }
  std::uint64_t term() const { return term_.load(); }
  // These read a copy drive() keeps, never core_mu_: handlers, callbacks and log sinks may
  // call them.
  NodeId leader() const {
    std::lock_guard<std::mutex> lock(status_mu_);
    return status_leader_;
  }
  std::string leader_address() const {
    std::lock_guard<std::mutex> lock(status_mu_);
    return status_leader_address_;
  }
  std::uint64_t commit_index() const { return commit_.load(); }
  std::uint64_t applied_index() const { return applied_.load(); }
  std::string info() const;
  resp::Value role_reply() const;
  void read(const std::function<void(const Store&)>& f) const {
    std::lock_guard<std::mutex> lock(data_mu_);
    f(store_);
  }

  std::future<Reply> execute_async(std::vector<std::string> words);
  Reply admin(const std::vector<std::string>& words);

  void log(LogLevel level, const std::string& message) const;

  /// Test hook (tests/test_forward.cpp): a fault on this node's link to `peer`.
  void set_link_fault_for_test(const NodeId& peer, PeerLink::Fault fault) {
    if (PeerLink* link = link_for(peer)) link->set_fault(fault);
  }
  /// Test hook (tests/test_peer_thread.cpp): queues `m` on the link to m.to as the core's
  /// messages are.
  void send_peer_for_test(const Message& m) { send_peer(m); }

  // For PeerLink.
  std::vector<std::string> hello_words(const NodeId& to, const std::string& nonce) const;
  int send_timeout() const { return scaled(cfg_.send_timeout_ms); }
  int stop_fd() const { return stop_pipe_[0]; }
  const std::string& host() const { return host_.host; }
  // TLS on a connection this node opened to a peer at `host` (connect_tcp's), when TLS is on.
  bool secure_to_peer(int fd, const std::string& host, Tls& tls, std::string& error) const;

 private:
  friend class PeerLink;

  // A command waiting for its answer: from a client connection, execute(), or (on the
  // leader) a follower that forwarded it.
  struct Request {
    std::uint64_t conn = 0;
    std::uint64_t op = 0;
    std::shared_ptr<std::promise<Reply>> promise;
    NodeId forward_from;             // a forwarded write: the follower,
    std::uint64_t forward_seq = 0;   // its sequence number
    std::uint64_t forward_nonce = 0;  // and session nonce
    std::vector<std::string> words;  // a read, executed once applied...
    std::chrono::steady_clock::time_point read_deadline{};  // ... or failed after this
    EntryId entry;                   // a write, where it went
  };
  struct Caller {
    std::uint64_t conn = 0;
    std::uint64_t op = 0;
    std::shared_ptr<std::promise<Reply>> promise;
    NodeId forward_from;
    std::uint64_t forward_seq = 0;
    std::uint64_t forward_nonce = 0;
    // The client's ACL user, which a forwarded write carries to the leader; empty: the
    // embedding program (execute()), which may run anything.
    std::string user;
  };
  // A write this node forwarded to the leader, waiting for its answer (under fwd_mu_).
  struct Forward {
    std::uint64_t request = 0;  // in requests_: who waits
    std::string command;        // the write's words, RESP-encoded
    std::size_t words = 0;
    std::string user;           // the client's ACL user (Caller::user)
    NodeId to;  // the node whose link holds it; empty: held here until a leader is known
    NodeId sent_leader;  // the leader and term when it was last queued on a link
    std::uint64_t sent_term = 0;
    bool maybe_run = false;  // a copy may have been appended: its outcome is unknown
    bool waits_for_room = false;  // a link refused it (too much waiting there): queue it again
    std::chrono::steady_clock::time_point deadline{};
  };
  struct ApplyItem {
    enum Kind { Restore, Entry, Read, Aborted, RoleChanged, LeaderReady, SnapshotWanted, Checkpoint } kind;
    std::shared_ptr<const Snapshot> snapshot;
    LogEntry entry;
    ReadState read;
    EntryId id;
    RoleChange role;
    std::uint64_t term = 0;
    std::uint64_t request = 0;
  };
  struct Op {
    char kind = 'i';  // 'w' a write, 'r' a read, 'i' answered at once
    bool done = false;
    Reply reply;
  };
  struct ClientConn {
    std::uint64_t id = 0;
    int fd = -1;
    Tls tls;
    resp::RequestParser parser;
    std::string out;
    std::deque<Op> ops;
    std::uint64_t first_op = 0;  // sequence number of ops.front()
    int protocol = 2;
    bool readonly = false;
    bool close_after_flush = false;
    bool input_closed = false;  // the client shut down its side: answer what it sent, then close
    bool kill = false;          // over a limit: closed without further ado
    std::string name;
    // The ACL user the connection runs as: "default" until AUTH or HELLO AUTH says otherwise;
    // `authenticated` once one of them succeeded.
    std::string user = "default";
    bool authenticated = false;
    std::vector<std::string> argv;  // the next command, parsed but waiting (see process_input)
    bool has_pending = false;
    int unfinished_writes = 0;
    int unfinished_reads = 0;
    // Client timeouts: when bytes last arrived; when the command not yet complete in the
    // parser began to arrive (none: nothing of one is buffered).
    std::chrono::steady_clock::time_point last_input = std::chrono::steady_clock::now();
    std::optional<std::chrono::steady_clock::time_point> partial_since;
    explicit ClientConn(resp::Limits limits) : parser(limits) {}
  };
  struct PeerConn {
    int fd = -1;
    Tls tls;
    resp::RequestParser parser;  // the authenticated stream's messages
    // The handshake (see "peer authentication"): the bytes received before the session opens,
    // the peer's HELLO and the transcript, then the session.
    std::unique_ptr<ListenerHandshake> handshake;  // until the session opens
    std::vector<std::string> hello;
    PeerSession session;
    std::string wire;  // to send: the handshake's messages, then frames (sealed from `out`)
    bool welcomed = false;
    bool join_only = false;  // a joiner outside the cluster: only JOIN is accepted
    NodeId node;
    std::string server_id;
    std::string address;
    std::string out;
    bool close_after_flush = false;
    std::vector<std::string> argv;
    std::chrono::steady_clock::time_point accepted = std::chrono::steady_clock::now();
    std::uint32_t source = 0;  // the IPv4 address it came from
    PeerConn() : parser(peer_limits()) {}
  };
  struct PendingWrite {
    Caller caller;
    std::string payload;  // the command's words, RESP-encoded
    std::size_t words = 0;
  };
  using EntryIdKey = std::pair<std::uint64_t, std::uint64_t>;  // (index, term)
  // Writes to propose and reads to confirm, gathered by one thread and handed to the core
  // under one lock (the poll thread's and the peer thread's per wake-up; execute() has its own).
  struct Batch {
    std::vector<PendingWrite> writes;
    std::vector<std::uint64_t> reads;
  };

  static resp::Limits peer_limits() {
    resp::Limits l;
    l.max_bulk_length = kPeerMaxBulkBytes;
    l.max_multibulk_length = kPeerMaxWords;
    return l;
  }
  int scaled(int ms) const { return std::max(1, static_cast<int>(ms * cfg_.time_scale)); }
  /// This node's wall clock (Config::wall_clock, else the system's).
  std::int64_t now_ms() const { return cfg_.wall_clock ? cfg_.wall_clock() : wall_ms(); }

  // startup
  void open_storage();
  // A member of an existing cluster that said HELLO to this address while it listened
  // before founding (listen_before_founding).
  struct FoundingContact {
    std::string cluster_id;
    NodeId node;
    std::string address;
  };
  std::optional<FoundingContact> listen_before_founding();
  int founding_listen_ms() const;
  bool unused_founder_directory(const Recovered& rec) const;
  void load_first_snapshot(const Store& loaded, std::shared_ptr<Snapshot>& snapshot, CoreState& st);
  // The secrets this node proves with and accepts: Config::secret, and second_secret if set.
  std::vector<std::string> peer_secrets() const;
  // The handshake: the connector's side on a blocking socket (then the listener's answer,
  // WELCOME or a refusal, is the first sealed message), the listener's on a PeerConn.
  bool handshake_as_connector(int fd, Tls& tls, const NodeId& to, PeerSession& session, std::string& error,
                              bool& refused) const;
  // TLS on an accepted connection, when TLS is on (the handshake goes on as it reads).
  bool secure_accepted(int fd, Tls& tls, bool peer);
  bool take_peer_bytes(PeerConn& p, const char* data, std::size_t n, bool founding);
  CoreOptions core_options() const;
  void log_refused(const std::string& why);
  // the core
  void drive();
  void on_persisted(std::uint64_t seq, bool ok, std::vector<Message> after);
  void load_received_snapshot(ReceivedSnapshot received);
  void storage_failed(const std::string& why);
  void send_peer(const Message& m);
  PeerLink* link_for(const NodeId& id);
  void update_links();
  // threads
  void poll_loop();
  void peer_loop();
  void ticker_loop();
  void apply_loop();
  void snapshot_loop();
  void joiner_loop();
  void read_snapshot_to_load(Store& into) const;
  bool committed_member() const {  // with core_mu_ held
    Configuration c = core_->config_at(core_->commit_index());
    const Member* me = c.find(cfg_.id);
    return me && me->server_id == identity_.server_id;
  }
  void wake_poll() {
    char c = 1;
    ssize_t r = ::write(wake_pipe_[1], &c, 1);
    (void)r;
  }
  void wake_peers() {
    char c = 1;
    ssize_t r = ::write(peer_wake_pipe_[1], &c, 1);
    (void)r;
  }
  // clients
  void accept_clients();
  void accept_peers();
  bool read_client(ClientConn& c);
  void process_input(ClientConn& c);
  bool flush_out(int fd, Tls& tls, std::string& out);
  // client limits (see LiveLimits)
  bool flush_client(ClientConn& c);  // flush_out, counting client_output_total_
  void drop_output(ClientConn& c);   // a client being closed: its replies are not sent
  void limit_total_output();         // closes the clients holding the most while over the total
  void close_idle_clients();         // timeout and partial-command-timeout
  void limit_clients_to_descriptors();
  CommandLimits command_limits() const;
  bool over_maxmemory() const;
  std::string checkpoint_refusal();
  std::optional<Reply> config_command(const std::vector<std::string>& w);
  void drain_done();
  bool complete_done();  // completes the replies in done_; false if there were none
  void serve_ready_reads();
  void adopt_cluster_id(const std::string& cluster_id);
  void handle_command(ClientConn* conn, Caller caller, std::vector<std::string>& words, Batch& batch);
  // Answers the caller. For a follower's forwarded write, `status` tells it what the reply means.
  void finish(const Caller& caller, Reply reply, ForwardStatus status = ForwardStatus::Done);
  void finish_request(std::uint64_t id, Reply reply, ForwardStatus status = ForwardStatus::Done);
  std::uint64_t add_request(Request r);
  void start_read(ClientConn* conn, const Caller& caller, std::vector<std::string>& words, const Command& cmd,
                  Batch& batch);
  void flush_batched(Batch& batch);
  void complete_op(std::uint64_t conn, std::uint64_t op, Reply reply);
  // forwarded writes (a follower's)
  void forward_writes(const NodeId& leader, std::uint64_t term, std::vector<PendingWrite> writes);
  bool requeue_forwards(const NodeId& leader, std::uint64_t term, bool all);
  bool queue_forward(PeerLink& link, std::uint64_t seq, Forward& f);
  void expire_forwards();
  void handle_forward_reply(const NodeId& from, ForwardReply fr);
  // forwarded writes (the leader's)
  void handle_forward(PeerConn& p, ForwardedWrite fw);
  std::string write_refusal(const std::vector<std::string>& words) const;
  /// Runs a read handler at `now_ms` (the time it judges expiry by).
  Reply run_read(const Command& cmd, const std::vector<std::string>& words, std::int64_t now_ms);
  /// A confirmed linearizable read's time: the leader's, or the last stamp applied if later
  /// (so every node judges it alike, and never before a write it follows).
  std::int64_t read_time(const ReadState& rs) const { return std::max(rs.time_ms, applied_timestamp_.load()); }
  Reply connection_command(ClientConn* conn, const std::vector<std::string>& words, bool& handled);
  // clients' users (see Acl)
  bool acl_command(const std::vector<std::string>& words, AclCommand& out) const;
  bool acl_rule_names_command(const std::string& rule) const;
  std::string client_refusal(ClientConn& conn, const std::vector<std::string>& words);
  Reply acl_reply(ClientConn* conn, const std::vector<std::string>& words);
  bool authenticate(ClientConn* conn, const std::string& user, const std::string& password);
  // peers
  bool read_peer(PeerConn& p);
  bool handle_peer_message(PeerConn& p, std::vector<std::string>& w);
  Reply handle_join(const std::vector<std::string>& w);
  // apply
  void push_apply(ApplyItem item) {
    std::lock_guard<std::mutex> lock(apply_mu_);
    apply_q_.push_back(std::move(item));
    apply_cv_.notify_one();
  }
  void apply_item(ApplyItem& item);
  void apply_entry(const LogEntry& e);
  bool run_write(const LogEntry& e, const Command& cmd, const std::vector<std::string>& words, Reply& reply);
  void serve_reads();
  void expire_waiting_reads();
  void halt(const std::string& why);
  void take_snapshot(std::uint64_t request);
  void propose_expiry();
  void leave();

  Node& node_;
  Config cfg_;
  HostPort host_;
  std::atomic<bool> started_{false};
  bool starting_ = false;  // under life_mu_: start() is running
  std::atomic<bool> stop_called_{false};
  std::atomic<bool> stopping_{false};  // set after leave(): the threads exit
  std::atomic<bool> stopped_{false};
  std::atomic<bool> halted_{false};  // threads joined: nothing more is sent or driven
  mutable std::mutex life_mu_;
  std::condition_variable life_cv_;
  bool stop_requested_ = false;

  // storage
  std::unique_ptr<Storage> storage_;
  std::unique_ptr<StorageWriter> writer_;
  Identity identity_;
  std::atomic<bool> failed_{false};
  std::string failure_;  // under core_mu_
  // What the core refused, logged at most once a second (under core_mu_).
  std::chrono::steady_clock::time_point refused_logged_at_{};
  std::uint64_t refused_unlogged_ = 0;

  // the core
  mutable std::mutex core_mu_;
  std::unique_ptr<Core> core_;
  std::condition_variable role_cv_;
  std::atomic<char> state_char_{'n'};
  std::atomic<int> role_{0};
  std::atomic<std::uint64_t> term_{0};
  std::atomic<std::uint64_t> commit_{0};
  mutable std::mutex status_mu_;  // a leaf lock
  NodeId status_leader_;
  std::string status_leader_address_;
  Configuration linked_config_;  // the configuration the sender links follow

  // the data
  mutable std::mutex data_mu_;
  Store store_;
  std::atomic<std::uint64_t> applied_{0};
  // The leader timestamp of the last entry applied (or of the snapshot restored): snapshots
  // carry it, and reads never judge expiry earlier.
  std::atomic<std::int64_t> applied_timestamp_{0};
  std::atomic<std::uint64_t> keys_{0};  // the store's size, for INFO without the data lock
  // Threads that answer commands: execute() from them would wait for itself.
  std::atomic<std::thread::id> apply_thread_id_{};
  std::atomic<std::thread::id> poll_thread_id_{};
  std::atomic<std::thread::id> peer_thread_id_{};  // runs no handler, but logs (a sink may stop())

  // writes this node forwarded (see "Forwarded writes" at the top of this section)
  std::mutex fwd_mu_;
  std::map<std::uint64_t, Forward> forwards_;  // by sequence number
  // This run's session: every start draws another, so sequence numbers start again at 1.
  const std::uint64_t forward_nonce_ = random_u64();
  std::uint64_t next_forward_seq_ = 1;

  // requests
  std::mutex req_mu_;
  std::map<std::uint64_t, Request> requests_;
  std::map<EntryIdKey, std::uint64_t> write_by_index_;  // (log index, term) -> request
  // Random start: ids travel to peers (forwards, read indexes) and must not match a
  // previous run's when answers from before a restart arrive late.
  std::uint64_t next_request_ = 1;

  // apply queue (the apply thread owns reads_by_index_)
  std::mutex apply_mu_;
  std::condition_variable apply_cv_;
  std::deque<ApplyItem> apply_q_;
  std::multimap<std::uint64_t, ReadState> reads_by_index_;  // confirmed reads by read index
  bool fatal_ = false;
  // The store a received snapshot parsed into when the core checked it, for its Restore.
  std::mutex checked_mu_;
  std::optional<std::pair<EntryId, Store>> checked_snapshot_;

  // snapshots
  std::mutex snap_mu_;
  std::condition_variable snap_cv_;
  std::optional<std::pair<Store, SnapshotMeta>> snap_job_;
  std::uint64_t snap_request_ = 0;
  bool snap_busy_ = false;
  bool snap_again_ = false;  // asked for while one was being written

  // peers
  std::mutex links_mu_;
  std::map<NodeId, std::unique_ptr<PeerLink>> links_;
  std::map<NodeId, std::string> addresses_;  // learned from configurations and handshakes

  // the poll thread's state
  int client_fd_ = -1;
#ifdef RAFT_OPENSSL_SUPPORT
  // Set in start() when Config names a certificate: clients' connections (tls_auth_clients),
  // peers' both ways (a certificate required).
  std::shared_ptr<TlsContext> tls_clients_, tls_peers_;
#endif
  int wake_pipe_[2] = {-1, -1};
  // Readable once stop() has handed leadership over: cuts short every wait for a peer to
  // connect or answer (a peer host that is down would hold each one up for send_timeout_ms).
  int stop_pipe_[2] = {-1, -1};
  std::map<std::uint64_t, std::unique_ptr<ClientConn>> clients_;
  std::chrono::steady_clock::time_point accept_paused_until_{};
  std::uint64_t next_conn_ = 1;
  Batch poll_batch_;  // the poll thread's
  std::vector<std::uint64_t> refused_reads_;  // under core_mu_
  std::vector<ReadState> poll_ready_reads_;  // the poll thread's: confirmed read indexes
  std::mutex done_mu_;
  std::vector<std::tuple<std::uint64_t, std::uint64_t, Reply>> done_;  // (conn, op, reply)

  // the peer thread's state (start() fills peers_in_ before the thread runs, stop() empties it
  // after it is joined)
  int peer_fd_ = -1;
  int peer_wake_pipe_[2] = {-1, -1};
  std::map<int, std::unique_ptr<PeerConn>> peers_in_;
  static constexpr std::size_t kMaxPeerConnections = 1024;
  // Of those, connections that have not finished the handshake: anyone who reaches the port
  // can open them, so they have a small budget of their own (and each is closed at its
  // deadline, send_timeout_ms). When it is used up, a new one takes the place of the oldest
  // from the address holding the most: a flood from one address displaces only itself, and
  // strangers never use up the room a member needs to connect.
  static constexpr std::size_t kMaxUnauthenticatedPeerConnections = 64;
  template <class Conns, class Get>
  static void make_room_for_handshake(Conns& conns, Get get);
  std::chrono::steady_clock::time_point peer_accept_paused_until_{};
  Batch peer_batch_;  // writes forwarded to this leader, proposed once per wake-up

  // expiry
  std::map<std::string, std::int64_t, std::less<>> expiry_proposed_;

  // clients' users: the poll thread, execute() callers (ACL commands) and the peer thread (the
  // leader's check of forwarded writes). A leaf lock.
  mutable std::mutex acl_mu_;
  Acl acl_;
  std::atomic<bool> protected_mode_{cfg_.protected_mode};  // CONFIG SET protected-mode changes it

  // Resource limits (Config's "limits", see the README's "Limits"): CONFIG SET changes them
  // from the poll thread or an execute() caller; the poll thread reads most of them.
  struct LiveLimits {
    std::atomic<std::uint64_t> max_clients;  // after the descriptor limit lowered it
    std::atomic<std::uint64_t> client_timeout_s;
    std::atomic<std::uint64_t> partial_command_timeout_s;
    std::atomic<std::uint64_t> query_buffer;
    std::atomic<std::uint64_t> proto_max_bulk_len;
    std::atomic<std::uint64_t> max_command_bytes;
    std::atomic<std::uint64_t> maxmemory;
    std::atomic<std::uint64_t> checkpoint_interval_s;
    std::atomic<std::uint64_t> total_client_output;
    explicit LiveLimits(const Config& c)
        : max_clients(c.max_clients),
          client_timeout_s(static_cast<std::uint64_t>(std::max(0, c.client_timeout_s))),
          partial_command_timeout_s(static_cast<std::uint64_t>(std::max(0, c.partial_command_timeout_s))),
          query_buffer(c.client_query_buffer_limit),
          proto_max_bulk_len(c.client_limits.max_bulk_length),
          max_command_bytes(c.max_command_bytes),
          maxmemory(c.maxmemory),
          checkpoint_interval_s(static_cast<std::uint64_t>(std::max(0, c.checkpoint_interval_s))),
          total_client_output(c.max_total_client_output) {}
  };
  LiveLimits limits_{cfg_};
  // Clients the descriptor limit leaves room for (RLIMIT_NOFILE less kReservedDescriptors),
  // read at start; max_clients is never set above it.
  std::uint64_t descriptor_room_ = std::numeric_limits<std::uint64_t>::max();
  // The poll thread's: every client's unsent replies (ClientConn::out) together.
  std::size_t client_output_total_ = 0;
  std::atomic<std::uint64_t> connected_clients_{0};   // for INFO
  std::atomic<std::uint64_t> client_output_total_reported_{0};  // client_output_total_, for INFO
  std::atomic<std::uint64_t> used_memory_{0};         // store_.used_memory() after each apply
  std::chrono::steady_clock::time_point last_checkpoint_{};  // under snap_mu_

  std::thread poll_thread_, peer_thread_, ticker_thread_, apply_thread_, snapshot_thread_, joiner_thread_;
};

// ---- startup ------------------------------------------------------------------------------

inline CoreOptions Runtime::core_options() const {
  CoreOptions o;
  o.id = cfg_.id;
  o.server_id = identity_.server_id;
  o.election_ticks = std::max(2, cfg_.election_timeout_ms / cfg_.tick_ms);
  o.heartbeat_ticks = std::max(1, cfg_.heartbeat_ms / cfg_.tick_ms);
  o.proposal_timeout_ticks = std::max(1, cfg_.append_timeout_ms / cfg_.tick_ms);
  o.read_timeout_ticks = std::max(1, cfg_.read_timeout_ms / cfg_.tick_ms);
  o.snapshot_threshold = cfg_.snapshot_threshold;
  o.snapshot_trailing = cfg_.snapshot_trailing;
  o.max_voters = cfg_.max_voters;
  o.max_snapshot_bytes = cfg_.max_snapshot_bytes;
  if (cfg_.maxmemory > 0) {
    // A snapshot of data within maxmemory: Python repr() writes a byte as at most 4
    // characters ("\\xff"), and the sessions' replies (at most SessionTable::kMaxReplyBytes)
    // come on top.
    const std::uint64_t room = cfg_.maxmemory > (std::numeric_limits<std::uint64_t>::max() >> 3)
                                   ? std::numeric_limits<std::uint64_t>::max()
                                   : 4 * (cfg_.maxmemory + SessionTable::kMaxReplyBytes);
    o.max_snapshot_bytes = std::min(o.max_snapshot_bytes, room);
  }
  std::random_device rd;
  o.random_seed = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ fnv1a(cfg_.id);
  return o;
}

// What a new data directory holds, step by step (a crash at any point restarts safely):
//   founder (no -e, no peer map): nothing while it listens (listen_before_founding), so a
//     restart listens again; then the identity (a new cluster id, itself as the only voter)
//     and term 0; with -l then the loaded snapshot at index 1 and term 1. A restart with -l
//     that finds a founder's directory still unused (unused_founder_directory) loads then.
//   contacted while listening: the identity with the contacting cluster's id and no
//     configuration; it never founds from then on, and waits to be added to that cluster.
//   joiner (-e): the identity without a cluster id; the id is recorded once it is accepted.
//   static peer map: the identity with the cluster id and configuration derived from the map.
inline void Runtime::open_storage() {
  StorageOptions so;
  so.dir = cfg_.data_dir;
  so.segment_bytes = cfg_.segment_bytes;
  so.fsync_hook = cfg_.fsync_hook;
  so.warn = [this](const std::string& line) { log(LogLevel::Warning, line); };
  CoreState st;
  std::shared_ptr<Snapshot> snapshot;
  Store loaded;       // -l
  bool load = false;  // save `loaded` as the first snapshot
  bool told_to_wait = false;
  if (Storage::exists(cfg_.data_dir)) {
    Recovered rec;
    storage_ = std::make_unique<Storage>(Storage::open(so, rec));
    identity_ = rec.identity;
    if (identity_.node_id != cfg_.id)
      throw std::runtime_error("data directory " + cfg_.data_dir + " belongs to node '" + identity_.node_id +
                               "', not '" + cfg_.id + "': pass that id with -i, or another directory with -d");
    for (const auto& note : rec.notes) log(LogLevel::Warning, "recovery: " + note);
#ifdef RAFT_MUTANT_LOAD_ONLY_INTO_NEW_DIRECTORY
    load = false;  // mutant: -l is ignored once the directory exists, even if nothing was loaded
#else
    load = !cfg_.load_snapshot.empty() && unused_founder_directory(rec);
#endif
    if (load) read_snapshot_to_load(loaded);
    st.hard_state = rec.hard_state;
    st.entries = std::move(rec.entries);
    if (rec.snapshot) snapshot = std::make_shared<Snapshot>(std::move(*rec.snapshot));
    log(LogLevel::Info, "restarting from " + cfg_.data_dir + ": term " + std::to_string(rec.hard_state.term) + ", " +
                            std::to_string(st.entries.size()) + " log entries after " +
                            (snapshot ? "a snapshot at index " + std::to_string(snapshot->meta.index) : "no snapshot"));
    if (load)
      log(LogLevel::Info, "the last start stopped between creating " + cfg_.data_dir +
                              " and saving the snapshot given with -l; loading it now");
    else if (!cfg_.join.empty() || !cfg_.peers.empty() || !cfg_.load_snapshot.empty())
      log(LogLevel::Info, "using the configuration persisted in " + cfg_.data_dir +
                              "; the peer map and -l are ignored, and -e serves only to ask again to join until "
                              "a committed configuration names this node");
  } else {
    // The snapshot to found the cluster with is read before the data directory exists: a
    // file that cannot be loaded must not leave a directory behind that a retry would reuse.
    if (!cfg_.load_snapshot.empty()) read_snapshot_to_load(loaded);
    Identity id;
    id.node_id = cfg_.id;
    std::random_device rd;
    id.server_id = hex64((static_cast<std::uint64_t>(rd()) << 32) ^ rd()) + hex64((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
    std::optional<FoundingContact> contact;
    if (!cfg_.peers.empty()) {
      // A static peer map: every node derives the same cluster id and configuration.
      std::map<NodeId, std::string> all = cfg_.peers;
      all[cfg_.id] = cfg_.address;
      std::string text;
      for (const auto& [nid, addr] : all) {
        text += nid + "=" + addr + ";";
        id.initial_config.upsert(Member{nid, addr, "", true});
      }
      id.cluster_id = hex64(fnv1a(text));
    } else if (cfg_.join.empty()) {
#ifndef RAFT_MUTANT_FOUND_WITHOUT_LISTENING
      contact = listen_before_founding();
#endif
      if (contact) {
        id.cluster_id = contact->cluster_id;  // a member-to-be of that cluster, never a founder
      } else {
        // The founder: a cluster of one.
        id.cluster_id = hex64((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
        id.initial_config.upsert(Member{cfg_.id, cfg_.address, id.server_id, true});
        load = !cfg_.load_snapshot.empty();
      }
    }
    storage_ = std::make_unique<Storage>(Storage::create(so, id));
    identity_ = id;
    if (contact) {
      told_to_wait = true;
      log(LogLevel::Warning,
          "node " + contact->node + " at " + contact->address + " of cluster " + contact->cluster_id +
              " contacted this node's address while it listened before founding a cluster: the address belongs to "
              "a member of that cluster, whose data directory was lost or wiped. Not founding a second cluster" +
              (cfg_.load_snapshot.empty() ? std::string() : " (-l is ignored)") + ": this node waits in " +
              cfg_.data_dir + " to be re-added to cluster " + contact->cluster_id +
              ". To ask to rejoin, restart it with -e " + contact->address + " added to its command line: run_raft -i " +
              cfg_.id + " -a " + cfg_.address + " -d " + cfg_.data_dir + " -e " + contact->address);
    }
  }
  if (load) load_first_snapshot(loaded, snapshot, st);
  st.initial_config = identity_.initial_config;
  if (snapshot) {
    std::string error;
    SnapshotMeta meta;
    Store restored;
    if (!Store::read_snapshot(snapshot->data, restored, meta, error))
      throw std::runtime_error("snapshot in " + cfg_.data_dir + " is unreadable: " + error);
    std::uint64_t index = snapshot->meta.index, term = snapshot->meta.term;
    snapshot->meta = meta;
    if (meta.index != index || meta.term != term)
      throw std::runtime_error("snapshot in " + cfg_.data_dir + " says index " + std::to_string(meta.index) +
                               " but its file name says " + std::to_string(index));
    store_ = std::move(restored);
    keys_ = store_.size();
    used_memory_ = store_.used_memory();
    applied_ = meta.index;
    applied_timestamp_ = meta.timestamp_ms;
    st.snapshot = snapshot;
  }
  CoreOptions options = core_options();
  // The store parsed to check a snapshot is the one restored: parsed once, on the writer
  // thread once it read the received file back (load_received_snapshot).
  options.check_snapshot = [this](const Snapshot& received) {
    Store parsed;
    std::string problem = check_received_snapshot(received, parsed);
    if (problem.empty()) {
      std::lock_guard<std::mutex> lock(checked_mu_);
      checked_snapshot_.emplace(EntryId{received.meta.index, received.meta.term}, std::move(parsed));
    }
    return problem;
  };
  core_ = std::make_unique<Core>(std::move(options), std::move(st));
  state_char_ = core_->role_char();
  term_ = core_->term();
  if (core_->config().empty() && cfg_.join.empty() && !told_to_wait)
    log(LogLevel::Warning, "this node holds no configuration and has no -e list: it waits to be added" +
                               (identity_.cluster_id.empty() ? std::string(", but it learns its cluster id only by "
                                                                           "asking to join: restart it with -e and a "
                                                                           "member's address")
                                                             : " to cluster " + identity_.cluster_id +
                                                                   " (restart it with -e and a member's address to "
                                                                   "ask to join)"));
}

// A founder's data directory that has done nothing yet: its identity names this node as the
// only voter, and it holds term 0, no vote, no log and no snapshot. A founder makes its first
// term durable before it leads, so nothing was ever acknowledged from it. Only a stop between
// creating the directory and saving the snapshot given with -l leaves it so with -l given:
// the load is done then.
inline bool Runtime::unused_founder_directory(const Recovered& rec) const {
  const std::vector<Member>& members = rec.identity.initial_config.members;
  return members.size() == 1 && members[0].id == cfg_.id && members[0].voter &&
         members[0].server_id == rec.identity.server_id && rec.hard_state.term == 0 && rec.hard_state.vote.empty() &&
         !rec.snapshot && rec.entries.empty();
}

// The data given with -l becomes the cluster's first snapshot, at index 1 of term 1.
inline void Runtime::load_first_snapshot(const Store& loaded, std::shared_ptr<Snapshot>& snapshot, CoreState& st) {
  snapshot = std::make_shared<Snapshot>();
  snapshot->meta.index = 1;
  snapshot->meta.term = 1;
  snapshot->meta.config = identity_.initial_config;
  loaded.write_snapshot(snapshot->data, snapshot->meta);
  PersistBatch b;
  b.seq = 0;
  b.snapshot = snapshot;
  b.hard_state = HardState{1, ""};
  if (!storage_->write(b) || !storage_->sync())
    throw std::runtime_error("cannot save the loaded snapshot: " + storage_->failure() +
                             "; start the node again with the same -l to load it");
  st.hard_state = HardState{1, ""};
  log(LogLevel::Info, "loaded " + std::to_string(loaded.size()) + " keys from " + cfg_.load_snapshot);
}

// How long a founder listens (listen_before_founding): long enough for a cluster that counts
// this address as a member to reach it. Its leader sends to every member, and a link that
// could not connect tries again at most PeerLink::kMaxBackoffMs later (not scaled); without a
// leader, a voter campaigns at least every 2 x election_timeout_ms and sends a pre-vote to
// every voter, opening a link to it if it had none. One election timeout more covers the
// connection, the HELLO and a loaded machine. Defaults: max(500, 600) + 300 = 900 ms. (It
// assumes the peers' links get an answer when they try: a refusal from a host that is up. A
// connection attempt to a host that is down waits up to send_timeout_ms for one.)
inline int Runtime::founding_listen_ms() const {
  return std::max(PeerLink::kMaxBackoffMs, scaled(2 * cfg_.election_timeout_ms)) + scaled(cfg_.election_timeout_ms);
}

// A founder (no data directory, no -e, no peer map) listens on its peer port before it founds:
// the address it was given may belong to a member of an existing cluster whose data directory
// was lost. Founding there would make a second cluster on that address, acknowledging writes
// while clients see none of the first one's data (pyraft's wiped founder does). A cluster that
// counts this address as a member connects within founding_listen_ms(): one that completes the
// handshake (it holds our secret) with its cluster id means do not found. Nothing is written
// meanwhile, so a node that crashes while it listens listens again when restarted. Only the
// handshake is done here; the connections are handed to the peer thread afterwards as if it had
// accepted them (it answers the HELLO with WELCOME, and a joiner's JOIN, as the founder).
inline std::optional<Runtime::FoundingContact> Runtime::listen_before_founding() {
  const int period = founding_listen_ms();
  log(LogLevel::Info, "no data directory in " + cfg_.data_dir + ": listening " + std::to_string(period) +
                          " ms on port " + std::to_string(host_.port + 1) + " for a cluster that counts " +
                          cfg_.address + " as a member before founding a new one");
  std::vector<std::unique_ptr<PeerConn>> held;
  std::optional<FoundingContact> contact;
  char buf[16384];  // a whole TLS record: none is left inside OpenSSL unseen by poll()
  bool stop = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(period);
  while (!contact) {
    {
      std::lock_guard<std::mutex> lock(life_mu_);
      stop = stop_requested_;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (stop || left <= 0) break;
    std::vector<pollfd> fds{{peer_fd_, POLLIN, 0}};
    for (const auto& h : held)
      if (h->fd >= 0 && !h->session.is_open() && !h->close_after_flush)
        fds.push_back(pollfd{h->fd, h->tls.events(static_cast<short>(POLLIN | (h->wire.empty() ? 0 : POLLOUT))), 0});
    ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left, 50)));
    for (;;) {
      sockaddr_in from{};
      socklen_t from_len = sizeof from;
      int fd = ::accept4(peer_fd_, reinterpret_cast<sockaddr*>(&from), &from_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) break;
      make_room_for_handshake(held, [](auto& h) -> PeerConn& { return *h; });  // as accept_peers
      held.erase(std::remove_if(held.begin(), held.end(), [](const auto& h) { return h->fd < 0; }), held.end());
      if (held.size() >= kMaxPeerConnections) {
        ::close(fd);
        continue;
      }
      set_nodelay(fd);
      held.push_back(std::make_unique<PeerConn>());
      held.back()->fd = fd;
      held.back()->source = from.sin_addr.s_addr;
      if (!secure_accepted(fd, held.back()->tls, true)) {
        ::close(fd);
        held.pop_back();
      }
    }
    for (auto& h : held) {
      PeerConn& p = *h;
      if (p.fd < 0 || p.session.is_open() || p.close_after_flush) continue;
      bool ok = true;
      for (;;) {
        ssize_t n = p.tls.recv(p.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        ok = n > 0 && take_peer_bytes(p, buf, static_cast<std::size_t>(n), true);
        if (!ok || p.session.is_open() || p.close_after_flush) break;
      }
      if (ok && !p.wire.empty()) ok = flush_out(p.fd, p.tls, p.wire);
      if (!ok) {
        ::close(p.fd);
        p.fd = -1;
        continue;
      }
      if (!p.session.is_open()) continue;
      const std::vector<std::string>& w = p.hello;
      if (w[2].empty() || w[3].empty() || w[3] == cfg_.id) continue;  // a joiner, or no member
      contact = FoundingContact{w[2], w[3], w[5]};
      break;
    }
  }
  if (stop) {
    for (const auto& h : held)
      if (h->fd >= 0) ::close(h->fd);
    throw std::runtime_error("asked to stop while listening before founding a cluster; nothing was written");
  }
  for (auto& h : held)
    if (h->fd >= 0) peers_in_[h->fd] = std::move(h);
  return contact;
}

inline void Runtime::start() {
  if (started_.load()) throw std::runtime_error("raft::Node::start called twice");
  {
    std::lock_guard<std::mutex> lock(life_mu_);
    starting_ = true;
  }
  // However start() ends, a stop() waiting for it (a founder listens first) may go on.
  struct StartedOrFailed {
    Runtime& rt;
    ~StartedOrFailed() {
      std::lock_guard<std::mutex> lock(rt.life_mu_);
      rt.starting_ = false;
      rt.life_cv_.notify_all();
    }
  } done{*this};
  std::string problem = cfg_.validate();
  if (!problem.empty()) throw std::runtime_error("raft::Config: " + problem);
  limit_clients_to_descriptors();
  std::string error;
  parse_host_port(cfg_.address, host_, error);
  if (cfg_.id.empty()) cfg_.id = cfg_.address;
  if (cfg_.data_dir.empty()) {
    std::string safe;
    for (char c : cfg_.id) safe += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') ? c : '_';
    cfg_.data_dir = "raft-" + safe + "-" + std::to_string(host_.port);
  }
#ifdef RAFT_OPENSSL_SUPPORT
  if (!cfg_.tls_cert_file.empty()) {
    tls_clients_ = TlsContext::load(cfg_, cfg_.tls_auth_clients, error);
    if (tls_clients_) tls_peers_ = TlsContext::load(cfg_, TlsAuthClients::Yes, error);
    if (!tls_peers_) throw std::runtime_error(error);
  }
#endif
  client_fd_ = listen_tcp(host_.host, host_.port, error);
  if (client_fd_ < 0) throw std::runtime_error(error);
  peer_fd_ = listen_tcp(host_.host, host_.port + 1, error);
  if (peer_fd_ < 0) {
    ::close(client_fd_);
    throw std::runtime_error(error);
  }
  try {
    if (::pipe2(wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0 || ::pipe2(peer_wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0 ||
        ::pipe2(stop_pipe_, O_CLOEXEC | O_NONBLOCK) != 0)
      throw std::runtime_error("pipe: " + errno_text(errno));
    open_storage();
    std::random_device rd;
    next_request_ = ((static_cast<std::uint64_t>(rd()) << 32) ^ rd()) & 0x3fffffffffffffffull;
  } catch (...) {
    for (int* fd : {&client_fd_, &peer_fd_, &wake_pipe_[0], &wake_pipe_[1], &peer_wake_pipe_[0], &peer_wake_pipe_[1],
                    &stop_pipe_[0], &stop_pipe_[1]})
      if (*fd >= 0) {
        ::close(*fd);
        *fd = -1;
      }
    for (auto& [fd, p] : peers_in_) ::close(fd);  // accepted while a founder listened
    peers_in_.clear();
    storage_.reset();
    core_.reset();
    throw;
  }
  started_ = true;
  for (const auto& [nid, addr] : cfg_.peers) addresses_[nid] = addr;
  writer_ = std::make_unique<StorageWriter>(*storage_);
  log(LogLevel::Info, "node " + cfg_.id + " at " + cfg_.address + " (peers on port " + std::to_string(host_.port + 1) +
                          "), data in " + cfg_.data_dir + ", cluster " +
                          (identity_.cluster_id.empty() ? "not joined yet" : identity_.cluster_id));
  bool open_to_loopback_only = false;
  {
    std::lock_guard<std::mutex> lock(acl_mu_);
    open_to_loopback_only = cfg_.protected_mode && acl_.default_without_password();
  }
  if (open_to_loopback_only && !is_loopback_client(make_sockaddr(host_.host, host_.port)))
    log(LogLevel::Warning, "protected mode: the default user has no password, so only clients on the loopback "
                           "interface are served; set --requirepass (Config::requirepass) or --protected-mode no");
  apply_thread_ = std::thread([this] { apply_loop(); });
  snapshot_thread_ = std::thread([this] { snapshot_loop(); });
  poll_thread_ = std::thread([this] { poll_loop(); });
  peer_thread_ = std::thread([this] { peer_loop(); });
  ticker_thread_ = std::thread([this] { ticker_loop(); });
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    // The first tick now rather than a tick from now: it gives the core its clock, and a voter
    // alone (a founder) leads when start() returns.
    core_->tick(now_ms());
    drive();
    if (!cfg_.join.empty() && !committed_member()) joiner_thread_ = std::thread([this] { joiner_loop(); });
  }
}

// -l FILE: a snapshot file as a data directory holds it (with its header line), the bare
// repr text, or pyraft's .dat layout.
// Redis's adjustment of maxclients: never so many clients that storage or peers run out of
// descriptors (the library reads the limit and never sets it: run_raft raises it).
inline void Runtime::limit_clients_to_descriptors() {
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == RLIM_INFINITY) return;
  const std::uint64_t limit = nofile.rlim_cur;
  if (limit <= kReservedDescriptors)
    throw std::runtime_error("the descriptor limit (RLIMIT_NOFILE, ulimit -n) is " + std::to_string(limit) +
                             ": a node keeps " + std::to_string(kReservedDescriptors) +
                             " for storage and peers and needs more for clients; raise it");
  descriptor_room_ = limit - kReservedDescriptors;
  if (limits_.max_clients.load() > descriptor_room_) {
    log(LogLevel::Warning, "maxclients lowered from " + std::to_string(limits_.max_clients.load()) + " to " +
                               std::to_string(descriptor_room_) + ": the descriptor limit (ulimit -n) is " +
                               std::to_string(limit) + " and " + std::to_string(kReservedDescriptors) +
                               " are kept for storage and peers");
    limits_.max_clients = descriptor_room_;
  }
}

inline void Runtime::read_snapshot_to_load(Store& into) const {
  const std::string& path = cfg_.load_snapshot;
  std::string text;
  if (const int err = read_whole_file(path, text))
    throw std::runtime_error("cannot read snapshot " + path + ": " + errno_text(err));
  SnapshotMeta ignored;
  std::string error;
  if (text.compare(0, kSnapshotPrefix.size(), kSnapshotPrefix) == 0) {
    try {
      decode_snapshot(text, path);
    } catch (const StorageError& e) {
      throw std::runtime_error(std::string("cannot load ") + e.what());
    }
    if (!Store::read_snapshot(text, into, ignored, error))
      throw std::runtime_error("cannot load " + path + ": " + error);
    return;
  }
  std::string pyraft_error;
  if (!Store::read_snapshot(text, into, ignored, error) && !Store::read_pyraft_snapshot(text, into, pyraft_error))
    throw std::runtime_error("cannot load " + path + ": " + error + "; as a pyraft snapshot: " + pyraft_error);
}

inline void Runtime::join() {
  std::unique_lock<std::mutex> lock(life_mu_);
  life_cv_.wait(lock, [&] { return stop_requested_ || stopped_.load(); });
  bool must_stop = !stopped_.load();
  lock.unlock();
  if (must_stop) stop();
}

inline void Runtime::leave() {
  // A leader hands over to the most up-to-date voter it hears from (the core's choice, as for
  // RAFT.TRANSFER without a target), so the cluster does not wait for an election timeout.
  std::unique_lock<std::mutex> lock(core_mu_);
  if (!core_ || core_->role() != Role::Leader || failed_) return;
  const NodeId best = core_->best_transfer_target();
  if (best.empty() || !core_->transfer_leadership(best)) return;
  log(LogLevel::Info, "leaving: handing leadership to " + best);
  drive();
  role_cv_.wait_for(lock, std::chrono::milliseconds(scaled(cfg_.election_timeout_ms * 2)),
                    [&] { return core_->role() != Role::Leader; });
}

inline void Runtime::stop() {
  const auto self = std::this_thread::get_id();
  if (self == apply_thread_id_.load() || self == poll_thread_id_.load() || self == peer_thread_id_.load()) {
    request_stop();  // from a handler or callback: it cannot join its own thread; join() stops
    return;
  }
  {
    // start() in progress on another thread (a founder listening before it founds): ask it
    // to give up, and wait until it has either failed or started - then stop as usual.
    std::unique_lock<std::mutex> lock(life_mu_);
    if (starting_) {
      stop_requested_ = true;
      life_cv_.notify_all();
      life_cv_.wait(lock, [&] { return !starting_; });
    }
  }
  if (!started_.load() || stop_called_.exchange(true)) {
    if (started_.load()) {
      std::unique_lock<std::mutex> lock(life_mu_);
      life_cv_.wait(lock, [&] { return stopped_.load(); });
    }
    return;
  }
  leave();  // while every thread still runs: the successor's term must reach us
  stopping_ = true;
  log(LogLevel::Info, "stopping");
  wake_poll();
  wake_peers();
  {
    char c = 1;
    ssize_t r = ::write(stop_pipe_[1], &c, 1);  // never read: stays readable
    (void)r;
  }
  {
    std::lock_guard<std::mutex> lock(apply_mu_);
    apply_cv_.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(snap_mu_);
    snap_cv_.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(life_mu_);
    life_cv_.notify_all();
  }
  for (std::thread* t : {&poll_thread_, &peer_thread_, &ticker_thread_, &joiner_thread_, &apply_thread_, &snapshot_thread_})
    if (t->joinable()) t->join();
  {
    std::lock_guard<std::mutex> lock(core_mu_);  // a drive() in progress finishes first
    halted_ = true;
  }
  if (writer_) writer_->stop();  // its last callbacks see halted_ and send nothing
  {
    // Stopped, not destroyed: another thread may still hold a pointer (freed in ~Runtime).
    std::lock_guard<std::mutex> lock(links_mu_);
    for (auto& [id, link] : links_) link->request_stop();  // all at once, then wait for each
    for (auto& [id, link] : links_) link->stop();
  }
  // Everything still waiting gets an answer.
  std::map<std::uint64_t, Request> left;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    left.swap(requests_);
    write_by_index_.clear();
  }
  for (auto& [rid, r] : left)
    if (r.promise) r.promise->set_value(Reply::error("TIMEOUT the node stopped before the command completed; its outcome is unknown"));
  for (int* fd : {&client_fd_, &peer_fd_, &wake_pipe_[0], &wake_pipe_[1], &peer_wake_pipe_[0], &peer_wake_pipe_[1],
                  &stop_pipe_[0], &stop_pipe_[1]})
    if (*fd >= 0) {
      ::close(*fd);
      *fd = -1;
    }
  for (auto& [cid, c] : clients_) ::close(c->fd);
  clients_.clear();
  for (auto& [fd, p] : peers_in_) ::close(fd);
  peers_in_.clear();
  {
    std::lock_guard<std::mutex> lock(life_mu_);
    stopped_ = true;
    life_cv_.notify_all();
  }
}

// ---- driving the core ----------------------------------------------------------------------

// Called with core_mu_ held. Whoever can reach the peer port can make the core refuse input at
// will: one line a second at most, and the count in INFO (raft_refused_peer_messages).
inline void Runtime::log_refused(const std::string& why) {
  const auto now = std::chrono::steady_clock::now();
  if (refused_logged_at_ != std::chrono::steady_clock::time_point{} && now - refused_logged_at_ < std::chrono::seconds(1)) {
    ++refused_unlogged_;
    return;
  }
  log(LogLevel::Warning, why + (refused_unlogged_ == 0 ? std::string()
                                                       : " (" + std::to_string(refused_unlogged_) +
                                                             " more refused since the last such line)"));
  refused_logged_at_ = now;
  refused_unlogged_ = 0;
}

// Called with core_mu_ held after every input to the core.
inline void Runtime::drive() {
  if (failed_ || halted_) return;
  while (core_->has_ready()) {
    Ready rd = core_->ready();
    if (rd.persist.seq != 0) {
      std::uint64_t seq = rd.persist.seq;
      auto after = std::make_shared<std::vector<Message>>(std::move(rd.after_persist));
      writer_->submit(std::move(rd.persist), [this, seq, after](bool ok) { on_persisted(seq, ok, std::move(*after)); });
    }
    if (rd.received_snapshot) load_received_snapshot(std::move(*rd.received_snapshot));
    for (const auto& m : rd.messages) send_peer(m);
    for (const auto& why : rd.refused) log_refused(why);
    if (rd.restore) push_apply(ApplyItem{ApplyItem::Restore, rd.restore, {}, {}, {}, {}, 0, 0});
    if (!rd.committed.empty() || !rd.reads.empty() || !rd.aborted.empty() || !rd.role_changes.empty() ||
        rd.leader_ready_term || rd.snapshot_wanted) {
      std::lock_guard<std::mutex> lock(apply_mu_);
      for (auto& e : rd.committed) apply_q_.push_back(ApplyItem{ApplyItem::Entry, nullptr, std::move(e), {}, {}, {}, 0, 0});
      for (auto& r : rd.reads) {
        // Read indexes confirmed on the poll thread are served there when already applied
        // (serve_ready_reads); the rest wait on the apply thread.
        if (std::this_thread::get_id() == poll_thread_id_.load())
          poll_ready_reads_.push_back(r);
        else
          apply_q_.push_back(ApplyItem{ApplyItem::Read, nullptr, {}, r, {}, {}, 0, 0});
      }
      for (auto& a : rd.aborted) apply_q_.push_back(ApplyItem{ApplyItem::Aborted, nullptr, {}, {}, a, {}, 0, 0});
      for (auto& rc : rd.role_changes) apply_q_.push_back(ApplyItem{ApplyItem::RoleChanged, nullptr, {}, {}, {}, rc, 0, 0});
      if (rd.leader_ready_term)
        apply_q_.push_back(ApplyItem{ApplyItem::LeaderReady, nullptr, {}, {}, {}, {}, rd.leader_ready_term, 0});
      if (rd.snapshot_wanted) apply_q_.push_back(ApplyItem{ApplyItem::SnapshotWanted, nullptr, {}, {}, {}, {}, 0, 0});
      apply_cv_.notify_one();
    }
    state_char_ = core_->role_char();
    role_ = static_cast<int>(core_->role());
    term_ = core_->term();
    if (!rd.role_changes.empty()) {
      for (const auto& rc : rd.role_changes)
        log(LogLevel::Info, rc.role == Role::Leader ? cfg_.id + " is a leader in term " + std::to_string(rc.term)
                                                    : std::string("role ") + raft::role_char(rc.role, core_->is_voter()) +
                                                          " in term " + std::to_string(rc.term) +
                                                          (rc.leader.empty() ? "" : ", leader " + rc.leader));
      role_cv_.notify_all();
    }
  }
  state_char_ = core_->role_char();
  role_ = static_cast<int>(core_->role());
  term_ = core_->term();
  commit_ = core_->commit_index();
  {
    const Member* lm = core_->config().find(core_->leader());
    std::lock_guard<std::mutex> lock(status_mu_);
    status_leader_ = core_->leader();
    status_leader_address_ = lm ? lm->address : "";
  }
  if (core_->config() != linked_config_) update_links();
}

inline void Runtime::on_persisted(std::uint64_t seq, bool ok, std::vector<Message> after) {
  if (halted_) return;
#ifdef RAFT_MUTANT_ACK_BEFORE_FSYNC_VERDICT
  for (const auto& m : after) send_peer(m);  // mutant: the promises leave before the verdict
#endif
  if (!ok) {
    storage_failed(storage_->failure());
    return;
  }
  if (failed_) return;
#ifndef RAFT_MUTANT_ACK_BEFORE_FSYNC_VERDICT
  for (const auto& m : after) send_peer(m);  // promises leave only once durable
#endif
  std::lock_guard<std::mutex> lock(core_mu_);
  core_->persisted(seq);
  drive();
}

// A snapshot received in chunks lies in the storage's incoming file, not in memory. After the
// batch with its last chunk, the writer syncs the file and reads it back (checking its length
// and CRC-32C against what arrived); then the core checks it (check_snapshot: the whole text
// parses) and installs it, which renames the file into place, or refuses it and keeps the log.
inline void Runtime::load_received_snapshot(ReceivedSnapshot received) {
  writer_->submit_load_received(std::move(received),
                                [this](bool ok, std::shared_ptr<Snapshot> snapshot, std::string problem) {
                                  if (halted_) return;
                                  if (!ok) {
                                    storage_failed(storage_->failure());
                                    return;
                                  }
                                  if (failed_) return;
                                  std::lock_guard<std::mutex> lock(core_mu_);
                                  core_->received_snapshot_loaded(std::move(snapshot), problem);
                                  drive();
                                });
}

inline void Runtime::storage_failed(const std::string& why) {
  // `why` names files inside the data directory (it reaches clients); the log says which.
  log(LogLevel::Error, "storage failed in data directory " + cfg_.data_dir);
  halt("storage failed: " + why);
}

// Stops acknowledging, voting and accepting appends (the core is no longer driven), and
// answers everything waiting. Only a restart recovers, from what is on disk.
inline void Runtime::halt(const std::string& why) {
  bool first = !failed_.exchange(true);
  if (!first) return;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    failure_ = why;
  }
  log(LogLevel::Error, why + ". This node no longer acknowledges, votes or accepts appends; restart it to recover "
                             "from what is on disk.");
  // Nothing waiting here can be answered by this node any more.
  std::vector<std::uint64_t> waiting;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    for (const auto& [id, r] : requests_) waiting.push_back(id);
    write_by_index_.clear();
  }
  for (std::uint64_t id : waiting)
    finish_request(id, Reply::error("MISCONF " + why + "; if this was a write, its outcome is unknown (another node "
                                    "may still commit it); restart the node"),
                   ForwardStatus::Unknown);
}

inline void Runtime::send_peer(const Message& m) {
  PeerLink* link = link_for(m.to);
  if (!link) return;
  std::string bytes;
  encode_raft(m, bytes);
  link->send(std::move(bytes), PeerLink::is_urgent(m.type));
}

inline PeerLink* Runtime::link_for(const NodeId& id) {
  if (halted_) return nullptr;
  std::lock_guard<std::mutex> lock(links_mu_);
  auto it = links_.find(id);
  if (it != links_.end()) return it->second.get();
  auto a = addresses_.find(id);
  if (a == addresses_.end() || id == cfg_.id) return nullptr;
  auto link = std::make_unique<PeerLink>(*this, id, a->second);
  PeerLink* raw = link.get();
  links_[id] = std::move(link);
  return raw;
}

// Called with core_mu_ held when the configuration changed.
inline void Runtime::update_links() {
  linked_config_ = core_->config();
  std::lock_guard<std::mutex> lock(links_mu_);
  for (const auto& m : linked_config_.members) {
    if (m.id == cfg_.id || m.address.empty()) continue;
    addresses_[m.id] = m.address;
    auto it = links_.find(m.id);
    if (it != links_.end()) it->second->set_address(m.address);
  }
}

inline std::vector<std::string> Runtime::hello_words(const NodeId& to, const std::string& nonce) const {
  std::string cluster;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    cluster = identity_.cluster_id;
  }
  return {"HELLO", kPeerProtocolVersion, cluster, cfg_.id, identity_.server_id, cfg_.address, to, nonce};
}

inline std::vector<std::string> Runtime::peer_secrets() const {
  std::vector<std::string> s{cfg_.secret};
  if (!cfg_.second_secret.empty() && cfg_.second_secret != cfg_.secret) s.push_back(cfg_.second_secret);
  return s;
}

inline bool Runtime::handshake_as_connector(int fd, Tls& tls, const NodeId& to, PeerSession& session,
                                            std::string& error, bool& refused) const {
  std::string nonce;
  try {
    nonce = new_handshake_nonce();
  } catch (const std::exception& e) {
    refused = false;
    error = e.what();
    return false;
  }
  return connector_handshake(fd, hello_words(to, nonce), peer_secrets(), send_timeout(), stop_fd(), session, error,
                             refused, &tls);
}

inline bool Runtime::secure_to_peer(int fd, const std::string& host, Tls& tls, std::string& error) const {
#ifdef RAFT_OPENSSL_SUPPORT
  if (tls_peers_ && !tls_connect(fd, tls, *tls_peers_, host, send_timeout(), stop_fd(), error)) {
    // A certificate refused, either way, needs the operator, as a wrong secret does.
    if (error.rfind("TLS", 0) == 0) error = "refused: " + error;
    return false;
  }
#else
  (void)fd, (void)host, (void)tls, (void)error;
#endif
  return true;
}

inline bool Runtime::secure_accepted(int fd, Tls& tls, bool peer) {
#ifdef RAFT_OPENSSL_SUPPORT
  const std::shared_ptr<TlsContext>& ctx = peer ? tls_peers_ : tls_clients_;
  std::string error;
  if (ctx && !tls.begin(*ctx, fd, true, "", error)) {
    log(LogLevel::Warning, "cannot start TLS on an accepted connection: " + error);
    return false;
  }
#else
  (void)fd, (void)tls, (void)peer;
#endif
  return true;
}

inline void PeerLink::run() {
  int backoff_ms = 20;
  bool logged_failure = false;
  PeerSession session, next_session;  // this thread's: the connection's, one being opened
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (fd_ < 0 || reconnect_) {
      if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
        tls_ = Tls();
      }
      reconnect_ = false;
      connected_ = false;
      std::string addr = address_;
      lock.unlock();
      std::string error;
      HostPort hp;
      int fd = -1;
      Tls tls;
      if (parse_host_port(addr, hp, error)) {
        fd = connect_tcp(rt_.host(), hp.host, hp.port + 1, rt_.send_timeout(), error, rt_.stop_fd());
        if (fd >= 0) {
          set_send_timeout(fd, rt_.send_timeout());
          bool refused = false;
          resp::ReplyParser parser;
          resp::Value reply;
          if (!rt_.secure_to_peer(fd, hp.host, tls, error)) {
            ::close(fd);
            fd = -1;
          } else if (!rt_.handshake_as_connector(fd, tls, id_, next_session, error, refused)) {
            if (refused) error = "refused: " + error;
            ::close(fd);
            fd = -1;
          } else if (!recv_sealed_value(fd, next_session, parser, reply, rt_.send_timeout(), rt_.stop_fd(), error,
                                        &tls)) {
            error = "after the handshake: " + error;
            ::close(fd);
            fd = -1;
          } else if (reply.is_error()) {
            error = "refused: " + reply.str;
            ::close(fd);
            fd = -1;
          }
        }
      }
      lock.lock();
      if (fd < 0) {
        if (!logged_failure) {
          // A refusal (wrong secret, another protocol version) needs the operator; an
          // unreachable peer is ordinary while it restarts.
          rt_.log(error.rfind("refused", 0) == 0 ? LogLevel::Warning : LogLevel::Debug,
                  "cannot reach " + id_ + " at " + addr + ": " + error);
          logged_failure = true;
        }
        cv_.wait_for(lock, std::chrono::milliseconds(backoff_ms), [&] { return stopping_ || reconnect_; });
        backoff_ms = std::min(backoff_ms * 2, kMaxBackoffMs);
        continue;
      }
      if (stopping_) {
        ::close(fd);
        break;
      }
      fd_ = fd;
      tls_ = std::move(tls);
      session = std::move(next_session);
      connected_ = true;
      backoff_ms = 20;
      if (logged_failure) rt_.log(LogLevel::Debug, "connected to " + id_ + " at " + addr);
      logged_failure = false;
      // A new connection: every forward goes again (what the last one carried may be lost).
      unsent_.clear();
      for (const auto& f : forwards_) unsent_.insert(unsent_.end(), f.first);
    }
    cv_.wait(lock, [&] {
      return stopping_ || reconnect_ ||
             (fault_ != Fault::Stall && (!urgent_.empty() || !queue_.empty() || !unsent_.empty()));
    });
    if (stopping_ || reconnect_) continue;
    std::string batch;
    while (!urgent_.empty()) {  // small: all of them, first
      batch += urgent_.front();
      urgent_.pop_front();
    }
    const std::size_t budget = batch.size() + kSendBytes;
    while (!queue_.empty() && batch.size() < budget) {
      batch += queue_.front();
      queue_.pop_front();
    }
    queued_bytes_ -= std::min(queued_bytes_, batch.size());
    const auto now = std::chrono::steady_clock::now();
    while (!unsent_.empty() && batch.size() < budget) {
      QueuedForward& f = forwards_[*unsent_.begin()];
      unsent_.erase(unsent_.begin());
      ++f.handed;
      f.handed_at = now;
      batch += f.bytes;
    }
    if (fault_ == Fault::Drop) continue;  // the test hook: lost on the way
    int fd = fd_;
    lock.unlock();
    std::string wire;
    wire.reserve(batch.size() + (batch.size() / kMaxFrameBytes + 1) * (kFrameHeaderBytes + kFrameTagBytes));
    session.seal(batch, wire);
    bool ok = send_all(fd, wire.data(), wire.size(), &tls_);
    lock.lock();
    if (!ok && fd_ == fd) {
      ::close(fd_);
      fd_ = -1;
      tls_ = Tls();
      connected_ = false;
    }
  }
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  tls_ = Tls();
}

// ---- the ticker ----------------------------------------------------------------------------

inline void Runtime::ticker_loop() {
  const auto period = std::chrono::microseconds(static_cast<long long>(cfg_.tick_ms * 1000 * cfg_.time_scale));
  auto next = std::chrono::steady_clock::now() + period;
  int ticks = 0;
  while (!stopping_) {
    {
      std::unique_lock<std::mutex> lock(life_mu_);
      life_cv_.wait_until(lock, next, [&] { return stopping_.load(); });
    }
    if (stopping_) break;
    next += period;
    auto now = std::chrono::steady_clock::now();
    if (next < now) next = now + period;  // we were paused (SIGSTOP): do not catch up in a burst
    {
      std::lock_guard<std::mutex> lock(core_mu_);
      if (!failed_) {
        core_->tick(now_ms());
        drive();
      }
    }
    if (++ticks % std::max(1, 100 / cfg_.tick_ms) == 0) wake_poll();  // forwarded writes time out there
  }
}

inline void Runtime::propose_expiry() {
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    if (!core_->leader_ready() || failed_) return;
  }
  std::int64_t now = now_ms();
  std::vector<std::string> due;
  {
    std::lock_guard<std::mutex> lock(data_mu_);
    due = store_.due(now, 256);
  }
  std::lock_guard<std::mutex> lock(core_mu_);
  for (auto it = expiry_proposed_.begin(); it != expiry_proposed_.end();)
    it = it->second + scaled(cfg_.append_timeout_ms) < now ? expiry_proposed_.erase(it) : std::next(it);
  bool any = false;
  for (const auto& key : due) {
    if (expiry_proposed_.count(key)) continue;
    std::string payload;
    resp::write_command(payload, {"__expire", key});
    if (!core_->propose(std::move(payload), now).ok()) break;
    expiry_proposed_[key] = now;
    any = true;
  }
  if (any) drive();
}

// ---- the apply loop ------------------------------------------------------------------------

inline void Runtime::apply_loop() {
  apply_thread_id_ = std::this_thread::get_id();
  std::deque<ApplyItem> items;
  auto next_expiry = std::chrono::steady_clock::now();
  while (true) {
    {
      std::unique_lock<std::mutex> lock(apply_mu_);
      apply_cv_.wait_until(lock, next_expiry, [&] { return stopping_ || !apply_q_.empty(); });
      if (stopping_) return;
      items.swap(apply_q_);
    }
    // The leader's background expiry lives here, beside the data, so that a slow handler or
    // a long Node::read never holds up the ticker (and the heartbeats).
    if (std::chrono::steady_clock::now() >= next_expiry) {
      next_expiry = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      propose_expiry();
      expire_waiting_reads();
    }
    for (auto& item : items) {
      if (fatal_) break;
      try {
        apply_item(item);
      } catch (const std::exception& ex) {
        // Outside a handler (the session table, encoding a reply, a callback): this node
        // cannot go on applying what the others apply. Say why and stop, never diverge.
        log(LogLevel::Error, std::string("the apply loop failed (") + ex.what() + "): stopping it");
        fatal_ = true;
      } catch (...) {
        log(LogLevel::Error, "the apply loop failed (an exception that is not a std::exception): stopping it");
        fatal_ = true;
      }
    }
    items.clear();
    if (fatal_) {
      halt("the apply loop stopped (see above)");
      request_stop();
      return;
    }
  }
}

// One item of the apply queue, on the apply thread.
inline void Runtime::apply_item(ApplyItem& item) {
  switch (item.kind) {
    case ApplyItem::Restore: {
      Store fresh;
      SnapshotMeta meta = item.snapshot->meta;  // checked to be what the text says
      std::string error;
      bool parsed = false;
      {
        std::lock_guard<std::mutex> lock(checked_mu_);
        if (checked_snapshot_ && checked_snapshot_->first == EntryId{meta.index, meta.term}) {
          fresh = std::move(checked_snapshot_->second);
          parsed = true;
        }
        checked_snapshot_.reset();
      }
      if (!parsed && !Store::read_snapshot(item.snapshot->data, fresh, meta, error)) {
        log(LogLevel::Error, "snapshot from the leader at index " + std::to_string(item.snapshot->meta.index) +
                                 " is unreadable (" + error + "): stopping the apply loop");
        fatal_ = true;
        break;
      }
      {
        std::lock_guard<std::mutex> lock(data_mu_);
        store_ = std::move(fresh);
        keys_ = store_.size();
        used_memory_ = store_.used_memory();
      }
      // The stamp first: a read served on the poll thread that sees the new index must
      // not judge expiry by an older time.
      applied_timestamp_ = std::max(applied_timestamp_.load(), meta.timestamp_ms);
      applied_ = item.snapshot->meta.index;
      {
        // Writes proposed at or below the snapshot (a deposed leader's) are decided in
        // it, unknown to us which way.
        std::vector<std::uint64_t> gone;
        {
          std::lock_guard<std::mutex> lock(req_mu_);
          while (!write_by_index_.empty() && write_by_index_.begin()->first.first <= applied_) {
            gone.push_back(write_by_index_.begin()->second);
            write_by_index_.erase(write_by_index_.begin());
          }
        }
        for (std::uint64_t id : gone)
          finish_request(id, Reply::error("TIMEOUT this node lost leadership before the write was known "
                                          "committed; its outcome is unknown"),
                         ForwardStatus::Unknown);
      }
      log(LogLevel::Info, "installed a snapshot at index " + std::to_string(applied_.load()));
      serve_reads();
      break;
    }
    case ApplyItem::Entry:
      if (item.entry.index > applied_) apply_entry(item.entry);
      break;
    case ApplyItem::Read: {
      const ReadState& rs = item.read;
      if (!rs.ok) {
        finish_request(rs.request_id,
                       Reply::error("TRYAGAIN could not confirm leadership for a linearizable read: no leader "
                                    "reachable or no majority (READONLY allows stale local reads)"));
      } else {
        reads_by_index_.emplace(rs.index, rs);
        serve_reads();
      }
      break;
    }
    case ApplyItem::Aborted: {
      std::uint64_t rid = 0;
      {
        std::lock_guard<std::mutex> lock(req_mu_);
        auto it = write_by_index_.find({item.id.index, item.id.term});
        if (it != write_by_index_.end()) {
          rid = it->second;
          write_by_index_.erase(it);
        }
      }
      if (rid)
        finish_request(rid, Reply::error("TIMEOUT the write was not committed in time (leader change or no "
                                         "majority); it may still be applied later"),
                       ForwardStatus::Unknown);
      break;
    }
    case ApplyItem::RoleChanged:
      if (item.role.role == Role::Follower && on_follower_) on_follower_(node_);
      if ((item.role.role == Role::Candidate || item.role.role == Role::PreCandidate) && on_candidate_)
        on_candidate_(node_);
      break;
    case ApplyItem::LeaderReady:
      log(LogLevel::Info, "leading term " + std::to_string(item.term) + " (first entry committed)");
      if (on_leader_) on_leader_(node_, item.term);
      break;
    case ApplyItem::SnapshotWanted:
    case ApplyItem::Checkpoint:
      take_snapshot(item.request);
      break;
  }
}

inline void Runtime::apply_entry(const LogEntry& e) {
  Reply reply;
  ForwardStatus status = ForwardStatus::Done;  // for a forwarded write: what its reply means to the follower
  if (e.type == EntryType::Command) {
    // Without limits: the entry was checked against the command limits before it was
    // appended (by whichever node and version), and a committed entry must always apply.
    resp::Limits unlimited;
    unlimited.max_bulk_length = unlimited.max_multibulk_length = unlimited.max_inline_length =
        std::numeric_limits<std::size_t>::max();
    resp::RequestParser parser(unlimited);
    parser.feed(e.payload);
    std::vector<std::string> words;
    if (parser.next(words) != resp::Status::Ok || words.empty()) {
      log(LogLevel::Error, "log entry " + std::to_string(e.index) + " is not a command: stopping the apply loop");
      fatal_ = true;
      return;
    }
    // A forwarded write: __fwd node server_id nonce seq lowest word...
    const bool forwarded = words[0] == kForwardedCommand;
    SessionTable::Key session;
    std::uint64_t seq = 0, lowest = 0;
    if (forwarded) {
      if (words.size() < 7 || !parse_number(words[3], session.nonce) || !parse_number(words[4], seq) ||
          !parse_number(words[5], lowest)) {
        log(LogLevel::Error, "log entry " + std::to_string(e.index) + " is a malformed forwarded write: stopping the "
                             "apply loop");
        fatal_ = true;
        return;
      }
      session.node = std::move(words[1]);
      session.server_id = std::move(words[2]);
      words.erase(words.begin(), words.begin() + 6);
    }
    auto h = handlers_.find(words[0]);
    if (h == handlers_.end() || !h->second.is_write()) {
      // Never skipped: every node must apply the same sequence.
      log(LogLevel::Error, "log entry " + std::to_string(e.index) + " names command '" + words[0] +
                               "', which this node has no write handler for: stopping the apply loop (an entry is "
                               "never skipped: every node applies the same ones). Either this node's handlers differ "
                               "from those of the node that proposed it (start this node with the same handlers as "
                               "the rest of the cluster), or a newer version of raft.hpp wrote the entry (run that "
                               "version here too).");
      fatal_ = true;
      return;
    }
    std::lock_guard<std::mutex> lock(data_mu_);
    store_.sessions().observe(e.timestamp_ms);  // session time follows every command entry
    if (!forwarded) {
      if (!run_write(e, h->second, words, reply)) return;
    } else {
      std::string kept;
      switch (store_.sessions().begin(session, seq, lowest, e.timestamp_ms, kept)) {
        case SessionTable::Verdict::Apply: {
          if (!run_write(e, h->second, words, reply)) return;
          std::string encoded;
          resp::write(encoded, reply, resp::kProtocolKept);
          store_.sessions().record(session, seq, std::move(encoded));
          break;
        }
        case SessionTable::Verdict::Duplicate:
#ifdef RAFT_MUTANT_FORWARD_APPLIED_TWICE
          // mutant: a copy of a forwarded write runs again
          if (!run_write(e, h->second, words, reply)) return;
          break;
#endif
          if (!decode_reply(kept, reply)) reply = Reply::error("ERR the reply kept for this write cannot be read");
          break;
        case SessionTable::Verdict::Stale:
          reply = Reply::error("TIMEOUT the leader no longer keeps this forwarded write's reply (it ran, or its node "
                               "gave up on it, earlier); its outcome is unknown");
          break;
        case SessionTable::Verdict::Full:
          // Not run at this entry; but another copy of it may be appended (the follower sent
          // it again) and run once sessions expire. So the follower decides, as for any write
          // the leader did not run, whether it can say "not run" (NotRun, not Done).
          reply = Reply::error("TRYAGAIN the leader remembers too many nodes' forwarded writes at once; the write "
                               "was not run");
          status = ForwardStatus::NotRun;
          break;
      }
    }
    keys_ = store_.size();
    store_.settle_memory();
    used_memory_ = store_.used_memory();
  }
  applied_timestamp_ = std::max(applied_timestamp_.load(), e.timestamp_ms);
  applied_ = e.index;
  // The write proposed at this index in this term gets the handler's reply; one proposed
  // here in another term lost its place to another leader's entry.
  std::vector<std::pair<std::uint64_t, bool>> answered;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    auto it = write_by_index_.lower_bound({e.index, 0});
    while (it != write_by_index_.end() && it->first.first == e.index) {
      answered.emplace_back(it->second, it->first.second == e.term);
      it = write_by_index_.erase(it);
    }
  }
  for (auto& [rid, mine] : answered) {
    if (mine)
      finish_request(rid, reply, status);
    else
      finish_request(rid, Reply::error("TIMEOUT the write lost its place in the log to a new leader; it was not "
                                       "applied"),
                     ForwardStatus::NotRun);
  }
  if (!reads_by_index_.empty() && reads_by_index_.begin()->first <= e.index) serve_reads();
}

// Runs a write handler on the store (data_mu_ held). A std::exception other than
// std::bad_alloc is the write's reply, alike on every node, and what the handler changed is
// undone, so a write stays atomic. Anything else stops the apply loop (false): the store may be
// half changed here, and this node must not go on from data that differs from the others'.
inline bool Runtime::run_write(const LogEntry& e, const Command& cmd, const std::vector<std::string>& words,
                               Reply& reply) {
  const bool record = !is_builtin(cmd);  // built-ins return every error before their first change
  Call call{store_, words, e.timestamp_ms, &node_, e.index, e.term};
  std::string failure;
  try {
    if (record) store_.begin_undo();
    reply = cmd.fn(call);
    if (record) store_.commit_undo();
    return true;
  } catch (const std::bad_alloc&) {
    failure = "ran out of memory (std::bad_alloc)";
  } catch (const std::exception& ex) {
    if (!record) {
      failure = std::string("threw (") + ex.what() + "), which a built-in command never does: a bug in raft.hpp";
    } else {
      try {
#ifndef RAFT_MUTANT_WRITE_NOT_UNDONE
        store_.rollback_undo();
#else
        store_.commit_undo();  // mutant: a handler that throws keeps its partial changes
#endif
        reply = Reply::error(std::string("ERR handler failed: ") + ex.what());
        return true;
      } catch (...) {
        failure = std::string("threw (") + ex.what() + ") and its changes could not be undone";
      }
    }
  } catch (...) {
    failure = "threw something that is not a std::exception (a write handler may throw std::exception only: "
              "its changes are then undone and the error is its reply on every node)";
  }
  store_.commit_undo();  // stops recording; what is half done stays, and the node stops
  log(LogLevel::Error, "log entry " + std::to_string(e.index) + ": the write handler of '" + words[0] + "' " +
                           failure + ". Stopping the apply loop: the entry may be half applied here, and this node "
                           "must not serve data that differs from the other nodes'. Restart it: it rebuilds its "
                           "data from its snapshot and log.");
  fatal_ = true;
  return false;
}

inline void Runtime::serve_reads() {
  while (!reads_by_index_.empty() && reads_by_index_.begin()->first <= applied_) {
    const ReadState rs = reads_by_index_.begin()->second;
    const std::uint64_t rid = rs.request_id;
    reads_by_index_.erase(reads_by_index_.begin());
    std::vector<std::string> words;
    {
      std::lock_guard<std::mutex> lock(req_mu_);
      auto it = requests_.find(rid);
      if (it == requests_.end()) continue;
      words = it->second.words;
    }
    auto h = handlers_.find(words.empty() ? std::string() : words[0]);
    finish_request(rid, h == handlers_.end() ? Reply::error("ERR unknown command")
                                             : run_read(h->second, words, read_time(rs)));
  }
}

// A confirmed read whose index this node does not reach in time (cut off from the leader
// right after asking) fails rather than waiting forever.
inline void Runtime::expire_waiting_reads() {
  if (reads_by_index_.empty()) return;
  auto now = std::chrono::steady_clock::now();
  std::vector<std::uint64_t> expired;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    for (auto it = reads_by_index_.begin(); it != reads_by_index_.end();) {
      auto r = requests_.find(it->second.request_id);
      if (r == requests_.end() || r->second.read_deadline < now) {
        if (r != requests_.end()) expired.push_back(it->second.request_id);
        it = reads_by_index_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (std::uint64_t id : expired)
    finish_request(id, Reply::error("TRYAGAIN this node did not catch up with the read index in time (cut off "
                                    "from the leader?); the read was not run"));
}

inline Reply Runtime::run_read(const Command& cmd, const std::vector<std::string>& words, std::int64_t now_ms) {
  std::lock_guard<std::mutex> lock(data_mu_);
  Call call{store_, words, now_ms, &node_};
  try {
    return cmd.fn(call);
  } catch (const std::exception& ex) {
    return Reply::error(std::string("ERR handler failed: ") + ex.what());
  }
}

// ---- snapshots -----------------------------------------------------------------------------

inline void Runtime::take_snapshot(std::uint64_t request) {
  // Copy under the data lock (the apply loop pauses for the copy only), serialize elsewhere.
  SnapshotMeta meta;
  meta.index = applied_;
  meta.timestamp_ms = applied_timestamp_;
  bool stale = false;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    meta.term = core_->term_at(meta.index);
    meta.config = core_->config_at(meta.index);
    // The core may already hold a newer snapshot (one from the leader not applied yet).
    stale = (meta.term == 0 && meta.index > 0) || (meta.index <= core_->snapshot_index() && meta.index > 0);
  }
  std::lock_guard<std::mutex> lock(snap_mu_);
  if (snap_busy_ || stale) {
    if (snap_busy_) snap_again_ = true;  // taken when the current one is saved
    if (request) finish_request(request, Reply::ok());  // one is being written already
    return;
  }
  {
    std::lock_guard<std::mutex> data(data_mu_);
    snap_job_.emplace(store_, meta);
  }
  snap_busy_ = true;
  snap_request_ = request;
  snap_cv_.notify_one();
}

inline void Runtime::snapshot_loop() {
  while (true) {
    std::pair<Store, SnapshotMeta> job;
    std::uint64_t request = 0;
    {
      std::unique_lock<std::mutex> lock(snap_mu_);
      snap_cv_.wait(lock, [&] { return stopping_ || snap_job_.has_value(); });
      if (stopping_) return;
      job = std::move(*snap_job_);
      snap_job_.reset();
      request = snap_request_;
    }
    auto snap = std::make_shared<Snapshot>();
    snap->meta = job.second;
    job.first.write_snapshot(snap->data, snap->meta);
    std::uint64_t compact_to = 0;
    bool fresh = false;
    {
      std::lock_guard<std::mutex> lock(core_mu_);
      if (snap->meta.index > core_->snapshot_index() || (snap->meta.index == 0 && core_->snapshot_index() == 0)) {
        compact_to = core_->compact(snap);
        fresh = true;
      }
    }
    auto done = [this, request, index = snap->meta.index](bool ok) {
      if (!ok) storage_failed(storage_->failure());
      else log(LogLevel::Info, "snapshot at index " + std::to_string(index) + " saved");
      bool again = false;
      {
        std::lock_guard<std::mutex> lock(snap_mu_);
        snap_busy_ = false;
        again = std::exchange(snap_again_, false);
      }
      if (again) push_apply(ApplyItem{ApplyItem::SnapshotWanted, nullptr, {}, {}, {}, {}, 0, 0});
      if (request) finish_request(request, ok ? Reply::ok() : Reply::error("MISCONF the snapshot could not be saved"));
    };
    if (fresh)
      writer_->submit_snapshot(snap, compact_to, done);
    else
      done(true);
  }
}

// ---- requests and replies ------------------------------------------------------------------

inline std::uint64_t Runtime::add_request(Request r) {
  std::lock_guard<std::mutex> lock(req_mu_);
  std::uint64_t id = next_request_++;
  requests_.emplace(id, std::move(r));
  return id;
}

inline void Runtime::finish(const Caller& caller, Reply reply, ForwardStatus status) {
  if (caller.promise) {
    caller.promise->set_value(std::move(reply));
  } else if (!caller.forward_from.empty()) {
    std::string bytes;
    encode_forward_reply(ForwardReply{caller.forward_nonce, caller.forward_seq, status, std::move(reply)}, bytes);
    if (PeerLink* link = link_for(caller.forward_from)) link->send(std::move(bytes));
  } else if (caller.conn) {
    std::lock_guard<std::mutex> lock(done_mu_);
    done_.emplace_back(caller.conn, caller.op, std::move(reply));
    wake_poll();
  }
}

inline void Runtime::finish_request(std::uint64_t id, Reply reply, ForwardStatus status) {
  Caller caller;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    auto it = requests_.find(id);
    if (it == requests_.end()) return;
    caller = Caller{it->second.conn,         it->second.op,          std::move(it->second.promise),
                    it->second.forward_from, it->second.forward_seq, it->second.forward_nonce, {}};
    requests_.erase(it);
  }
  finish(caller, std::move(reply), status);
}

// ---- commands ------------------------------------------------------------------------------

inline std::future<Reply> Runtime::execute_async(std::vector<std::string> words) {
  auto promise = std::make_shared<std::promise<Reply>>();
  std::future<Reply> f = promise->get_future();
  if (std::this_thread::get_id() == apply_thread_id_.load() || std::this_thread::get_id() == poll_thread_id_.load()) {
    promise->set_value(Reply::error("ERR execute() called from a handler or callback would wait for itself"));
    return f;
  }
  if (!started_ || stopping_) {
    promise->set_value(Reply::error("ERR the node is not running"));
    return f;
  }
  Caller caller;
  caller.promise = promise;
  Batch batch;
  handle_command(nullptr, caller, words, batch);
  flush_batched(batch);
  return f;
}

inline void Runtime::handle_command(ClientConn* conn, Caller caller, std::vector<std::string>& words, Batch& batch) {
  if (words.empty()) return;
  const std::string name_as_sent = words[0];  // for the unknown-command error, as Redis names it
  words[0] = lower(std::move(words[0]));
  if (conn) {
    caller.user = conn->user;
    const std::string refusal = client_refusal(*conn, words);
    if (!refusal.empty()) {
      finish(caller, Reply::error(refusal));
      return;
    }
  }
  if (words[0] == "checkpoint") {
    if (words.size() != 1) {
      finish(caller, Reply::error("ERR wrong number of arguments for 'checkpoint' command"));
      return;
    }
    const std::string refusal = checkpoint_refusal();
    if (!refusal.empty()) {
      finish(caller, Reply::error(refusal));
      return;
    }
    Request r;
    r.conn = caller.conn;
    r.op = caller.op;
    r.promise = caller.promise;
    push_apply(ApplyItem{ApplyItem::Checkpoint, nullptr, {}, {}, {}, {}, 0, add_request(std::move(r))});
    return;
  }
  bool handled = false;
  Reply r = connection_command(conn, words, handled);
  if (handled) {
    finish(caller, std::move(r));
    return;
  }
  auto it = handlers_.find(words[0]);
  if (it == handlers_.end() || is_reserved_command(words[0])) {
    // Redis's words: the name and arguments as C strings (up to a NUL byte), the name cut at
    // 128 bytes, arguments while the list is under 128 bytes (each cut to what is left), and
    // line breaks as spaces.
    const auto c_text = [](const std::string& s, std::size_t most) { return s.substr(0, std::min(s.find('\0'), most)); };
    std::string args;
    for (std::size_t i = 1; i < words.size() && args.size() < 128; ++i)
      args += "'" + c_text(words[i], 128 - args.size()) + "' ";
    std::string text = "ERR unknown command '" + c_text(name_as_sent, 128) + "', with args beginning with: " + args;
    std::replace(text.begin(), text.end(), '\r', ' ');
    std::replace(text.begin(), text.end(), '\n', ' ');
    finish(caller, Reply::error(text));
    return;
  }
  const Command& cmd = it->second;
  int argc = static_cast<int>(words.size()) - 1;
  if (argc < cmd.min_args || (cmd.max_args >= 0 && argc > cmd.max_args)) {
    finish(caller, Reply::error("ERR wrong number of arguments for '" + words[0] + "' command"));
    return;
  }
  if (failed_) {
    std::lock_guard<std::mutex> lock(core_mu_);
    finish(caller, Reply::error("MISCONF " + failure_ + ": this node no longer acknowledges writes or serves "
                                "reads; restart it"));
    return;
  }
  if (cmd.is_write()) {
    // The command limits and maxmemory, before anything is proposed or forwarded (see
    // kMaxCommandBytes): never at apply, so that every node applies the same entries.
    const std::string too_big = command_limit_error(words, command_limits());
    if (!too_big.empty()) {
      finish(caller, Reply::error(too_big));
      return;
    }
    if (cmd.may_grow() && over_maxmemory()) {
      finish(caller, Reply::error(kOomError));
      return;
    }
    std::string payload;
    resp::write_command(payload, words);
    batch.writes.push_back(PendingWrite{caller, std::move(payload), words.size()});
  } else {
    start_read(conn, caller, words, cmd, batch);
  }
}

inline void Runtime::start_read(ClientConn* conn, const Caller& caller, std::vector<std::string>& words,
                                const Command& cmd, Batch& batch) {
  if (conn && conn->readonly) {
    finish(caller, run_read(cmd, words, now_ms()));  // READONLY: this node's data and clock as they are
    return;
  }
  Request r;
  r.conn = caller.conn;
  r.op = caller.op;
  r.promise = caller.promise;
  r.words = words;
  r.read_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(scaled(cfg_.read_timeout_ms) * 2);
  batch.reads.push_back(add_request(std::move(r)));
}

// Proposes the writes and asks for the read indexes gathered since the last call, under one
// lock, so that one wake-up of the poll thread becomes one batch for the disk and the peers.
inline void Runtime::flush_batched(Batch& batch) {
  if (batch.writes.empty() && batch.reads.empty()) return;
  struct Refusal {
    Caller caller;
    Reply reply;
    ForwardStatus status;
  };
  std::vector<Refusal> refused;
  std::vector<PendingWrite> forwards;
  NodeId leader;
  std::uint64_t term = 0;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    if (halted_ || stopping_) {
      // stop() is answering what is registered; nothing new starts.
      for (auto& w : batch.writes)
        refused.push_back({w.caller, Reply::error("ERR the node is stopping; the command was not run"),
                           ForwardStatus::NotRun});
      batch.writes.clear();
      std::vector<std::uint64_t> reads;
      reads.swap(batch.reads);
      for (std::uint64_t rid : reads) refused_reads_.push_back(rid);
    }
    for (auto& w : batch.writes) {
      ProposeResult res = core_->propose(w.payload, now_ms());
      const bool forwarded_here = !w.caller.forward_from.empty();
      if (res.ok()) {
        Request r;
        r.conn = w.caller.conn;
        r.op = w.caller.op;
        r.promise = w.caller.promise;
        r.forward_from = w.caller.forward_from;
        r.forward_seq = w.caller.forward_seq;
        r.forward_nonce = w.caller.forward_nonce;
        r.entry = res.id;
        std::lock_guard<std::mutex> rl(req_mu_);
        std::uint64_t id = next_request_++;
        requests_.emplace(id, std::move(r));
        write_by_index_[{res.id.index, res.id.term}] = id;
      } else if (res.error == ProposeResult::Error::NotLeader && !res.leader.empty() && !forwarded_here) {
        leader = res.leader;
        term = core_->term();
        forwards.push_back(std::move(w));
      } else if (res.error == ProposeResult::Error::Transferring) {
        refused.push_back({w.caller, Reply::error("TRYAGAIN leadership is being transferred; the write was not run"),
                           ForwardStatus::NotRun});
      } else if (forwarded_here) {
        refused.push_back({w.caller,
                           Reply::error("TRYAGAIN the node this write was forwarded to no longer leads; it was not run"),
                           ForwardStatus::NotRun});
      } else {
        refused.push_back({w.caller, Reply::error("CLUSTERDOWN no leader is known (election in progress or no "
                                                  "majority); the write was not run"),
                           ForwardStatus::NotRun});
      }
    }
    for (std::uint64_t rid : batch.reads) core_->read_index(rid);
    drive();
  }
  batch.writes.clear();
  batch.reads.clear();
  for (auto& r : refused) finish(r.caller, std::move(r.reply), r.status);
  std::vector<std::uint64_t> refused_reads;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    refused_reads.swap(refused_reads_);
  }
  for (std::uint64_t rid : refused_reads) finish_request(rid, Reply::error("ERR the node is stopping; the read was not run"));
  if (!forwards.empty()) forward_writes(leader, term, std::move(forwards));
}

// ---- forwarded writes: the follower's side (see the protocol at the top of this section) ----

// Writes on a follower go to the leader over the peer link, pipelined, each in the session
// with its sequence number.
inline void Runtime::forward_writes(const NodeId& leader, std::uint64_t term, std::vector<PendingWrite> writes) {
  PeerLink* link = link_for(leader);
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(std::min(scaled(cfg_.append_timeout_ms + cfg_.election_timeout_ms), kMaxForwardWaitMs));
  std::vector<std::pair<Caller, Reply>> refused;
  {
    std::lock_guard<std::mutex> lock(fwd_mu_);
    // Older forwards first: writes forwarded in order reach the leader in order.
    bool room = link == nullptr || requeue_forwards(leader, term, true);
    for (auto& w : writes) {
      if (!link) {
        refused.emplace_back(w.caller, Reply::error("TRYAGAIN the leader (" + leader + ") has no known address; the "
                                                    "write was not run"));
        continue;
      }
      if (forwards_.size() >= kMaxForwardsWaiting) {
        refused.emplace_back(w.caller, Reply::error("TRYAGAIN this node waits for too many forwarded writes; the write "
                                                    "was not run"));
        continue;
      }
      Request r;
      r.conn = w.caller.conn;
      r.op = w.caller.op;
      r.promise = w.caller.promise;
      Forward f;
      f.request = add_request(std::move(r));
      f.command = std::move(w.payload);
      f.words = w.words;
      f.user = w.caller.user;
      f.deadline = deadline;
      const std::uint64_t seq = next_forward_seq_++;
      auto it = forwards_.emplace(seq, std::move(f)).first;
      it->second.to = leader;
      it->second.sent_leader = leader;
      it->second.sent_term = term;
      if (!room || !queue_forward(*link, seq, it->second)) {
        room = false;  // behind a forward the link refused: wait here too, in order
        it->second.to.clear();
        it->second.waits_for_room = true;
      }
    }
  }
  for (auto& [caller, reply] : refused) finish(caller, std::move(reply));
}

// Under fwd_mu_: queues forward `seq` on `link`. If the link refuses it (too many forwards
// wait on it: the peer is gone or slow), it waits here to be queued again, and false says so:
// the caller then queues no later forward before it, so that forwards stay in order.
inline bool Runtime::queue_forward(PeerLink& link, std::uint64_t seq, Forward& f) {
  std::string bytes;
  encode_forward(forward_nonce_, seq, forwards_.begin()->first, f.user, f.command, f.words, bytes);
  if (link.send_forward(seq, std::move(bytes))) return true;
  f.to.clear();
  f.waits_for_room = true;
  return false;
}

// Under fwd_mu_: moves to `leader`'s link, in sequence order, the forwards waiting here and
// those on another node's link. With `all`, every one (before new forwards are queued there,
// so that they stay in order); else only those last queued under another leader or term (a
// forward waiting here is not sent again to the leader that just answered it).
inline bool Runtime::requeue_forwards(const NodeId& leader, std::uint64_t term, bool all) {
  PeerLink* link = nullptr;
  for (auto& [seq, f] : forwards_) {
    if (f.to == leader) continue;
    if (!all && !f.waits_for_room && f.to.empty() && f.sent_leader == leader && f.sent_term == term) continue;
    if (link == nullptr && (link = link_for(leader)) == nullptr) return false;
    if (!f.to.empty()) {
      PeerLink* old = link_for(f.to);
      const std::optional<unsigned> handed = old ? old->take_forward(seq) : std::nullopt;
      if (handed.value_or(1) > 0) f.maybe_run = true;  // the leader it was sent to may have appended it
    }
    f.to = leader;
    f.sent_leader = leader;
    f.sent_term = term;
    f.waits_for_room = false;
    if (!queue_forward(*link, seq, f)) return false;  // the rest wait behind it
  }
  return true;
}

// Every 100 ms on the poll thread: answers forwards past their deadline, and requeues the
// waiting ones once a leader is known.
inline void Runtime::expire_forwards() {
  const auto now = std::chrono::steady_clock::now();
  const NodeId leader = this->leader();
  const std::uint64_t term = this->term();
  std::vector<std::pair<std::uint64_t, Reply>> expired;
  {
    std::lock_guard<std::mutex> lock(fwd_mu_);
    for (auto it = forwards_.begin(); it != forwards_.end();) {
      Forward& f = it->second;
      if (f.deadline > now) {
        ++it;
        continue;
      }
      bool maybe_run = f.maybe_run;
#ifndef RAFT_MUTANT_EXPIRED_FORWARD_STAYS_QUEUED
      if (!f.to.empty())
        if (PeerLink* link = link_for(f.to)) maybe_run = maybe_run || link->take_forward(it->first).value_or(0) > 0;
#endif
      expired.emplace_back(f.request, Reply::error(maybe_run ? "TIMEOUT the leader did not answer the forwarded write "
                                                               "in time; its outcome is unknown"
                                                             : "TRYAGAIN the leader could not be reached in time; "
                                                               "the write was not run"));
      it = forwards_.erase(it);
    }
    if (!leader.empty() && leader != cfg_.id) {
      requeue_forwards(leader, term, false);
      // An answer lost on the leader's connection to us (ours may stay up meanwhile).
      if (PeerLink* link = link_for(leader))
        link->resend_unanswered_forwards(std::chrono::milliseconds(scaled(2 * cfg_.election_timeout_ms)));
    }
  }
  for (auto& [rid, reply] : expired) finish_request(rid, std::move(reply));
}

// A FWDR: the answer to one of this run's forwards, from the leader it was sent to (or, for a
// final reply, any node that applied it).
inline void Runtime::handle_forward_reply(const NodeId& from, ForwardReply fr) {
  if (fr.nonce != forward_nonce_) return;  // for a previous run of this node
  std::uint64_t answered = 0;
  {
    std::lock_guard<std::mutex> lock(fwd_mu_);
    auto it = forwards_.find(fr.seq);
    if (it == forwards_.end()) return;  // answered already (a copy's answer), or given up
    Forward& f = it->second;
    if (fr.status != ForwardStatus::Done && f.to != from) return;  // about a copy no longer there
    PeerLink* link = f.to.empty() ? nullptr : link_for(f.to);
    const unsigned handed = link ? link->take_forward(fr.seq).value_or(0) : 0;
    if (fr.status == ForwardStatus::Unknown || (fr.status == ForwardStatus::NotRun && (f.maybe_run || handed > 1))) {
      // Some copy may be in a log: wait here, to go to the next leader (which answers with the
      // original reply if it was applied), or until the deadline.
      f.maybe_run = true;
      f.to.clear();
      return;
    }
    answered = f.request;
    forwards_.erase(it);
  }
  finish_request(answered, std::move(fr.reply));
}

// ---- forwarded writes: the leader's side ----

// Why the leader refuses a forwarded write before proposing it; empty: it proposes it.
inline std::string Runtime::write_refusal(const std::vector<std::string>& words) const {
  auto h = handlers_.find(words[0]);
  const int argc = static_cast<int>(words.size()) - 1;
  if (is_reserved_command(words[0]) || h == handlers_.end() || !h->second.is_write() || argc < h->second.min_args ||
      (h->second.max_args >= 0 && argc > h->second.max_args))
    return "ERR the leader has no write command '" + words[0] + "' taking " + std::to_string(argc) +
           " arguments; the write was not run";
  std::string refusal = command_limit_error(words, command_limits());
  if (refusal.empty() && h->second.may_grow() && over_maxmemory()) refusal = kOomError;  // the leader's own
  return refusal;
}

inline CommandLimits Runtime::command_limits() const {
  CommandLimits l;
  l.max_word_bytes = static_cast<std::size_t>(limits_.proto_max_bulk_len.load());
  l.max_bytes = static_cast<std::size_t>(limits_.max_command_bytes.load());
  return l;
}

inline bool Runtime::over_maxmemory() const {
  const std::uint64_t max = limits_.maxmemory.load();
  return max > 0 && used_memory_.load() >= max;
}

// Each CHECKPOINT copies the data and writes it out: one at a time, at most one each
// checkpoint-interval seconds.
inline std::string Runtime::checkpoint_refusal() {
  const auto now = std::chrono::steady_clock::now();
  const std::uint64_t interval_s = limits_.checkpoint_interval_s.load();
  std::lock_guard<std::mutex> lock(snap_mu_);
  if (snap_busy_) return "ERR a snapshot is being written; CHECKPOINT again once it is saved";
  if (last_checkpoint_ != std::chrono::steady_clock::time_point{} &&
      now - last_checkpoint_ < std::chrono::seconds(interval_s))
    return "ERR CHECKPOINT ran less than checkpoint-interval (" + std::to_string(interval_s) +
           " s) ago; try again later";
  last_checkpoint_ = now;
  return "";
}

inline void Runtime::handle_forward(PeerConn& p, ForwardedWrite fw) {
  fw.words[0] = lower(std::move(fw.words[0]));
  Caller caller{0, 0, nullptr, p.node, fw.seq, fw.nonce, {}};
  if (failed_) {
    finish(caller, Reply::error("MISCONF the leader cannot acknowledge writes (storage failed); the write was not run"),
           ForwardStatus::NotRun);
    return;
  }
  std::string refusal = write_refusal(fw.words);
  if (refusal.empty() && !fw.user.empty()) {
    // The leader's own ACL decides, whatever the follower's says (users are per node).
    AclCommand c;
    acl_command(fw.words, c);
    std::lock_guard<std::mutex> lock(acl_mu_);
    const AclUser* user = acl_.find(fw.user);
    refusal = user ? Acl::refusal(user, c)
                   : "NOPERM the user '" + fw.user + "' does not exist on the leader (" + cfg_.id +
                         "); give every node the same users";
  }
  if (!refusal.empty()) {
    finish(caller, Reply::error(refusal), ForwardStatus::NotRun);
    return;
  }
  // The entry: __fwd node server_id nonce seq lowest word... (the session is the one the
  // peer's handshake proved, never one it names).
  std::string payload;
  resp::write_array_header(payload, 6 + fw.words.size());
  resp::write_bulk(payload, kForwardedCommand);
  resp::write_bulk(payload, p.node);
  resp::write_bulk(payload, p.server_id);
  write_bulk_u64(payload, fw.nonce);
  write_bulk_u64(payload, fw.seq);
  write_bulk_u64(payload, fw.lowest);
  for (const auto& w : fw.words) resp::write_bulk(payload, w);
  peer_batch_.writes.push_back(PendingWrite{caller, std::move(payload), 6 + fw.words.size()});
}

inline Reply Runtime::admin(const std::vector<std::string>& w) {
  // w[0] is one of raft.add raft.promote raft.remove raft.transfer add_node del_node
  std::lock_guard<std::mutex> lock(core_mu_);
  if (core_->role() != Role::Leader) {
    const Member* m = core_->config().find(core_->leader());
    if (!m) return Reply::error("CLUSTERDOWN no leader is known; nothing was changed");
    return Reply::error("MOVED " + m->id + " " + m->address + " membership changes are made on the leader");
  }
  ProposeResult res;
  std::int64_t now = now_ms();
  if (w[0] == "raft.add" || w[0] == "add_node") {
    HostPort hp;
    std::string error;
    if (!parse_host_port(w[2], hp, error)) return Reply::error("ERR " + error);
    const Member* old = core_->config().find(w[1]);
    res = core_->add_learner(Member{w[1], w[2], old ? old->server_id : "", false}, now);
  } else if (w[0] == "raft.promote") {
    res = core_->promote(w[1], now);
  } else if (w[0] == "raft.remove" || w[0] == "del_node") {
    res = core_->remove(w[1], now);
  } else if (w[0] == "raft.transfer") {
    NodeId to = w.size() > 1 ? w[1] : "";
    if (to.empty()) to = core_->best_transfer_target();
    if (to.empty()) return Reply::error("ERR no other voter was heard from lately to hand leadership to; nothing was changed");
    if (!core_->transfer_leadership(to)) return Reply::error("ERR cannot transfer leadership to '" + to + "'");
    drive();
    return Reply::ok();
  }
  switch (res.error) {
    case ProposeResult::Error::None: drive(); return Reply::ok();
    case ProposeResult::Error::NotReady:
    case ProposeResult::Error::ConfigPending:
      return Reply::error("TRYAGAIN another membership change is in progress; nothing was changed");
    case ProposeResult::Error::Transferring: return Reply::error("TRYAGAIN leadership is being transferred");
    default: return Reply::error("ERR that change is not allowed (one voter at a time; a voter must remain)");
  }
}

// Every command handled here must have its ACL category in acl_command (an administration
// command there, or clients without +@admin may run it).
// CONFIG GET name..., and CONFIG SET of the limits (Redis's names where Redis has the limit;
// see LiveLimits). None: CONFIG SET of something else (connection_command goes on).
inline std::optional<Reply> Runtime::config_command(const std::vector<std::string>& w) {
  struct Option {
    const char* name;
    std::atomic<std::uint64_t>* value;
    bool memory;  // takes Redis's memory units
    std::uint64_t min, max;
  };
  const Option options[] = {
      {"maxclients", &limits_.max_clients, false, 1, descriptor_room_},
      {"timeout", &limits_.client_timeout_s, false, 0, std::uint64_t{1} << 31},
      {"partial-command-timeout", &limits_.partial_command_timeout_s, false, 0, std::uint64_t{1} << 31},
      {"client-query-buffer-limit", &limits_.query_buffer, true, std::uint64_t{1} << 20,
       std::numeric_limits<std::uint64_t>::max()},
      {"proto-max-bulk-len", &limits_.proto_max_bulk_len, true, 1, kProtoMaxBulkLen},
      {"max-command-bytes", &limits_.max_command_bytes, true, 1, kMaxCommandBytes},
      {"maxmemory", &limits_.maxmemory, true, 0, std::numeric_limits<std::uint64_t>::max()},
      {"checkpoint-interval", &limits_.checkpoint_interval_s, false, 0, std::uint64_t{1} << 31},
      {"client-output-total-limit", &limits_.total_client_output, true, 1, std::numeric_limits<std::uint64_t>::max()},
  };
  if (lower(w[1]) == "get") {
    // redis-benchmark and some clients ask for save and appendonly: what a Redis with durable
    // writes says.
    std::vector<Reply> kv;
    for (std::size_t i = 2; i < w.size(); ++i) {
      const std::string k = lower(w[i]);
      const auto add = [&](const std::string& key, const std::string& value) {
        if (glob_match(k, key)) kv.insert(kv.end(), {Reply::bulk(key), Reply::bulk(value)});
      };
      add("save", "");
      add("appendonly", "yes");
      add("maxmemory-policy", "noeviction");
      for (const Option& o : options) add(o.name, std::to_string(o.value->load()));
    }
    return Reply::map(std::move(kv));
  }
  const std::string key = lower(w[2]);
  const auto failed = [&](const std::string& why) {
    return Reply::error("ERR CONFIG SET failed (possibly related to argument '" + key + "') - " + why);
  };
  if (key == "maxmemory-policy")
    return lower(w[3]) == "noeviction" ? Reply::ok() : failed("only noeviction is supported");
  for (const Option& o : options) {
    if (key != o.name) continue;
    std::uint64_t v = 0;
    if (!(o.memory ? parse_memory(w[3], v) : parse_number(w[3], v)))
      return failed(o.memory ? "argument must be a memory value" : "argument couldn't be parsed into an integer");
    if (key == "maxclients" && v > o.max)
      return failed("The operating system is not able to handle the specified number of clients, try with " +
                    std::to_string(o.max));
    if (v < o.min || v > o.max)
      return failed("argument must be between " + std::to_string(o.min) + " and " + std::to_string(o.max) +
                    " inclusive");
    o.value->store(v);
    return Reply::ok();
  }
  return std::nullopt;
}

inline Reply Runtime::connection_command(ClientConn* conn, const std::vector<std::string>& w, bool& handled) {
  handled = true;
  const std::string& name = w[0];
  auto arity = [&](std::size_t lo, std::size_t hi) { return w.size() - 1 >= lo && w.size() - 1 <= hi; };
  auto wrong = [&] { return Reply::error("ERR wrong number of arguments for '" + name + "' command"); };
  if (name == "ping") {
    if (!arity(0, 1)) return wrong();
    return w.size() == 2 ? Reply::bulk(w[1]) : Reply::simple("PONG");
  }
  if (name == "echo") return arity(1, 1) ? Reply::bulk(w[1]) : wrong();
  if (name == "quit") {
    if (conn) conn->close_after_flush = true;
    return Reply::ok();
  }
  if (name == "auth") {
    if (w.size() < 2) return wrong();
    if (w.size() > 3) return Reply::error("ERR syntax error");
    if (w.size() == 2) {
      std::lock_guard<std::mutex> lock(acl_mu_);
      const AclUser* d = acl_.find("default");
      if (d && d->nopass)
        return Reply::error("ERR AUTH <password> called without any password configured for the default user. Are "
                            "you sure your configuration is correct?");
    }
    if (!conn) return Reply::ok();  // execute(): the embedding program runs as itself
    return authenticate(conn, w.size() == 3 ? w[1] : "default", w.back())
               ? Reply::ok()
               : Reply::error("WRONGPASS invalid username-password pair or user is disabled.");
  }
  if (name == "acl") return acl_reply(conn, w);
  if (name == "select") {
    if (!arity(1, 1)) return wrong();
    std::int64_t db = 0;  // Redis reads an int first, in its words (sic: "must between")
    if (!parse_int64(w[1], db)) return not_integer_error();
    if (db < std::numeric_limits<std::int32_t>::min() || db > std::numeric_limits<std::int32_t>::max())
      return Reply::error("ERR value is out of range, value must between -2147483648 and 2147483647");
    return db == 0 ? Reply::ok() : Reply::error("ERR DB index is out of range");
  }
  if (name == "readonly" || name == "readwrite") {
    if (!arity(0, 0)) return wrong();
    if (conn) conn->readonly = name == "readonly";
    return Reply::ok();
  }
  if (name == "hello") {
    int proto = conn ? conn->protocol : 2;
    std::size_t i = 1;
    if (w.size() > 1) {
      std::int64_t version = 0;
      if (!parse_int64(w[1], version)) return Reply::error("ERR Protocol version is not an integer or out of range");
      if (version != 2 && version != 3) return Reply::error("NOPROTO unsupported protocol version");
      proto = static_cast<int>(version);
      i = 2;
    }
    const std::string* setname = nullptr;
    const std::string* auth_user = nullptr;
    const std::string* auth_password = nullptr;
    for (; i < w.size(); ++i) {
      std::string opt = lower(w[i]);
      if (opt == "setname" && i + 1 < w.size()) {
        setname = &w[++i];
      } else if (opt == "auth" && i + 2 < w.size()) {
        auth_user = &w[i + 1];
        auth_password = &w[i + 2];
        i += 2;
      } else {
        return Reply::error("ERR Syntax error in HELLO option '" + w[i] + "'");
      }
    }
    // Redis's order: authenticate (nothing changes if that fails), then the name and protocol.
    if (conn) {
      if (auth_user && !authenticate(conn, *auth_user, *auth_password))
        return Reply::error("WRONGPASS invalid username-password pair or user is disabled.");
      bool required;
      {
        std::lock_guard<std::mutex> lock(acl_mu_);
        required = acl_.auth_required();
      }
      if (!conn->authenticated && required)
        return Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the "
                            "HELLO AUTH <user> <pass> option can be used to authenticate the client and select the "
                            "RESP protocol version at the same time");
      if (setname) conn->name = *setname;
      conn->protocol = proto;
    }
    return Reply::map({Reply::bulk("server"), Reply::bulk("redis"), Reply::bulk("version"), Reply::bulk("7.0.0"),
                       Reply::bulk("proto"), Reply::integer(proto), Reply::bulk("id"),
                       Reply::integer(static_cast<std::int64_t>(conn ? conn->id : 0)), Reply::bulk("mode"),
                       Reply::bulk("standalone"), Reply::bulk("role"),
                       Reply::bulk(role() == Role::Leader ? "master" : "replica"), Reply::bulk("modules"),
                       Reply::array()});
  }
  if (name == "client") {
    if (w.size() < 2) return wrong();
    std::string sub = lower(w[1]);
    if ((sub == "setname" && w.size() != 3) || (sub == "getname" && w.size() != 2) ||
        (sub == "id" && w.size() != 2))
      return Reply::error("ERR wrong number of arguments for 'client|" + sub + "' command");
    if (sub == "setname") {
      if (conn) conn->name = w[2];
      return Reply::ok();
    }
    if (sub == "getname") return conn && !conn->name.empty() ? Reply::bulk(conn->name) : Reply::nil();
    if (sub == "setinfo") return Reply::ok();
    if (sub == "id") return Reply::integer(static_cast<std::int64_t>(conn ? conn->id : 0));
    return Reply::error("ERR unknown subcommand '" + w[1] + "'. Try CLIENT HELP.");
  }
  if (name == "command") {
    if (w.size() >= 2 && lower(w[1]) == "count") return Reply::integer(static_cast<std::int64_t>(handlers_.size()));
    if (w.size() >= 2 && lower(w[1]) == "docs") return Reply::map();
    std::vector<Reply> all;
    for (const auto& [cname, c] : handlers_) {
      if (cname.rfind("__", 0) == 0) continue;
      std::int64_t arity_value = c.min_args == c.max_args ? c.min_args + 1 : -(c.min_args + 1);
      all.push_back(Reply::array({Reply::bulk(cname), Reply::integer(arity_value),
                                  Reply::array({Reply::simple(c.is_write() ? "write" : "readonly")}),
                                  Reply::integer(c.min_args > 0 ? 1 : 0), Reply::integer(c.min_args > 0 ? 1 : 0),
                                  Reply::integer(c.min_args > 0 ? 1 : 0)}));
    }
    return Reply::array(std::move(all));
  }
  if (name == "config") {
    if (w.size() >= 3 && lower(w[1]) == "get") return *config_command(w);
    if (w.size() == 4 && lower(w[1]) == "set") {
      std::optional<Reply> r = config_command(w);
      if (r) return std::move(*r);
    }
    // The clients' options (administration: see acl_command): Redis's way to open a node up.
    if (w.size() == 4 && lower(w[1]) == "set" && lower(w[2]) == "requirepass") {
      std::lock_guard<std::mutex> lock(acl_mu_);
      if (w[3].empty())
        acl_.set_user("default", {"nopass"}, nullptr);
      else
        acl_.set_user("default", {"resetpass", ">" + w[3]}, nullptr);
      return Reply::ok();
    }
    if (w.size() == 4 && lower(w[1]) == "set" && lower(w[2]) == "protected-mode") {
      const std::string v = lower(w[3]);
      if (v != "yes" && v != "no")
        return Reply::error("ERR CONFIG SET failed (possibly related to argument 'protected-mode') - argument must "
                            "be 'yes' or 'no'");
      protected_mode_ = v == "yes";
      return Reply::ok();
    }
    return Reply::error("ERR CONFIG " + (w.size() > 1 ? w[1] : std::string()) + " is not supported");
  }
  if (name == "info") return Reply::verbatim("txt", info_sections(info(), std::vector<std::string>(w.begin() + 1, w.end())));
  if (name == "role") return role_reply();
  if (name == "shutdown") {
    request_stop();
    return Reply::ok();
  }
  if (name == "raft.add" || name == "add_node") return arity(2, 2) ? admin(w) : wrong();
  if (name == "raft.promote" || name == "raft.remove" || name == "del_node") return arity(1, 1) ? admin(w) : wrong();
  if (name == "raft.transfer") return arity(0, 1) ? admin(w) : wrong();
  if (name == "raft.leave") {
    request_stop();
    return Reply::ok();
  }
  handled = false;
  return Reply();
}

// ---- clients' users: AUTH, ACL and the check before every command ---------------------------

// How the ACL sees a command; false for a command this node does not have (it gets the
// unknown-command error and runs nothing). The administration commands are listed here.
inline bool Runtime::acl_command(const std::vector<std::string>& w, AclCommand& c) const {
  static const std::set<std::string, std::less<>> administration = {
      "checkpoint", "shutdown", "raft.add", "raft.promote", "raft.remove", "raft.transfer", "raft.leave",
      "add_node", "del_node"};
  static const std::set<std::string, std::less<>> connection = {"ping", "echo", "select", "readonly", "readwrite",
                                                                "hello", "auth", "quit"};
  static const std::set<std::string, std::less<>> client_connection = {"setname", "getname", "setinfo", "id", "info"};
  c = AclCommand{};
  c.name = w[0];
  const std::string sub = w.size() > 1 ? lower(w[1]) : std::string();
  if (administration.count(c.name)) {
    c.category = kAclAdmin;
  } else if (connection.count(c.name)) {
    c.category = kAclConnection;
  } else if (c.name == "info" || c.name == "role") {
    c.category = kAclRead;  // read-only status: not administration
  } else if (c.name == "client" || c.name == "command" || c.name == "config" || c.name == "acl") {
    c.sub = sub;
    c.category = kAclConnection;
    if ((c.name == "client" && !client_connection.count(sub)) || c.name == "config" ||
        (c.name == "acl" && sub != "whoami" && sub != "cat"))
      c.category = kAclAdmin;  // CLIENT KILL/LIST..., CONFIG GET/SET, ACL SETUSER/DELUSER/LIST/USERS
  } else {
    auto h = handlers_.find(c.name);
    if (h == handlers_.end() || is_reserved_command(c.name)) return false;
    c.category = h->second.is_write() ? kAclWrite : kAclRead;
    c.keyed = h->second.min_args > 0 && c.name != "keys";
  }
  return true;
}

// Whether an ACL rule's "name" or "name|subcommand" names a command of this node.
inline bool Runtime::acl_rule_names_command(const std::string& rule) const {
  static const std::map<std::string, std::set<std::string>, std::less<>> subcommands = {
      {"client", {"setname", "getname", "setinfo", "id", "info", "kill", "list", "pause", "unpause", "reply",
                  "no-evict", "tracking", "unblock", "caching", "getredir", "trackinginfo", "no-touch", "help"}},
      {"config", {"get", "set", "rewrite", "resetstat", "help"}},
      {"acl", {"whoami", "users", "list", "setuser", "deluser", "cat", "getuser", "genpass", "log", "load", "save",
               "dryrun", "help"}},
      {"command", {"count", "docs", "info", "list", "getkeys", "getkeysandflags", "help"}}};
  const auto bar = rule.find('|');
  AclCommand c;
  if (!acl_command({rule.substr(0, bar)}, c)) return false;
  if (bar == std::string::npos) return true;
  auto it = subcommands.find(rule.substr(0, bar));
  return it == subcommands.end() || it->second.count(rule.substr(bar + 1)) > 0;
}

// Why this client may not run the command now (NOAUTH, NOPERM), or empty.
inline std::string Runtime::client_refusal(ClientConn& conn, const std::vector<std::string>& words) {
  AclCommand c;
  const bool known = acl_command(words, c);
  // How a client authenticates or leaves; HELLO without AUTH checks for itself.
  if (c.name == "auth" || c.name == "hello" || c.name == "quit") return "";
  std::lock_guard<std::mutex> lock(acl_mu_);
  // Before authentication nothing else runs, not even an unknown command's error (unlike
  // Redis, which names it): a stranger learns nothing, whatever connection_command handles.
  if (!conn.authenticated && acl_.auth_required()) return "NOAUTH Authentication required.";
  if (!known) return "";  // the unknown-command error
  const AclUser* user = acl_.find(conn.user);
  if (user == nullptr) {
    conn.close_after_flush = true;  // as Redis closes the connections of a deleted user
    return "NOPERM the user '" + conn.user + "' was deleted; closing the connection";
  }
  return Acl::refusal(user, c);
}

inline bool Runtime::authenticate(ClientConn* conn, const std::string& user, const std::string& password) {
  {
    std::lock_guard<std::mutex> lock(acl_mu_);
    if (!acl_.authenticate(user, password)) return false;
  }
  conn->user = user;
  conn->authenticated = true;
  return true;
}

// ACL WHOAMI | USERS | LIST | SETUSER name rule... | DELUSER name... | CAT. Users change on
// this node only, as in Redis (see Config::users).
inline Reply Runtime::acl_reply(ClientConn* conn, const std::vector<std::string>& w) {
  if (w.size() < 2) return Reply::error("ERR wrong number of arguments for 'acl' command");
  const std::string sub = lower(w[1]);
  auto wrong = [&] { return Reply::error("ERR wrong number of arguments for 'acl|" + sub + "' command"); };
  std::lock_guard<std::mutex> lock(acl_mu_);
  if (sub == "whoami") return w.size() == 2 ? Reply::bulk(conn ? conn->user : "default") : wrong();
  if (sub == "users" || sub == "list") {
    if (w.size() != 2) return wrong();
    std::vector<Reply> out;
    for (const auto& line : sub == "users" ? acl_.names() : acl_.list()) out.push_back(Reply::bulk(line));
    return Reply::array(std::move(out));
  }
  if (sub == "cat") {
    if (w.size() != 2) return wrong();
    return Reply::array({Reply::bulk("read"), Reply::bulk("write"), Reply::bulk("admin"), Reply::bulk("dangerous"),
                         Reply::bulk("connection")});
  }
  if (sub == "setuser") {
    if (w.size() < 3) return wrong();
    const std::string error = acl_.set_user(w[2], std::vector<std::string>(w.begin() + 3, w.end()),
                                            [this](const std::string& rule) { return acl_rule_names_command(rule); });
    if (!error.empty()) return Reply::error(error);
    log(LogLevel::Info, "ACL: user '" + w[2] + "' set");  // never its rules: they hold passwords
    return Reply::ok();
  }
  if (sub == "deluser") {
    if (w.size() < 3) return wrong();
    for (std::size_t i = 2; i < w.size(); ++i)
      if (w[i] == "default") return Reply::error("ERR The 'default' user cannot be removed");
    std::int64_t deleted = 0;
    for (std::size_t i = 2; i < w.size(); ++i) {
      if (!acl_.del_user(w[i])) continue;
      ++deleted;
      // As Redis does, the user's connections close (once their replies are written). On the
      // poll thread only (conn set): from execute(), each one closes at its next command.
      if (conn)
        for (auto& [id, c] : clients_)
          if (c->authenticated && c->user == w[i]) c->close_after_flush = true;
    }
    if (deleted > 0) log(LogLevel::Info, "ACL: " + std::to_string(deleted) + " user(s) deleted");
    return Reply::integer(deleted);
  }
  return Reply::error("ERR unknown subcommand '" + w[1] + "'. Try ACL HELP.");
}

// ---- status ---------------------------------------------------------------------------------

inline std::string Runtime::info() const {
  std::string s;
  auto line = [&](const std::string& k, const std::string& v) { s += k + ":" + v + "\r\n"; };
  std::lock_guard<std::mutex> lock(core_mu_);
  s += "# Server\r\n";
  line("redis_version", "7.0.0");
  line("raft_hpp_version", RAFT_HPP_VERSION);
  line("process_id", std::to_string(::getpid()));
  line("tcp_port", std::to_string(host_.port));
  s += "\r\n# Raft\r\n";
  line("raft_node_id", cfg_.id);
  line("raft_address", cfg_.address);
  line("raft_cluster_id", identity_.cluster_id);
  line("raft_server_id", identity_.server_id);
  if (!core_) return s;
  const char* roles[] = {"follower", "candidate", "candidate", "leader"};
  line("raft_role", core_->is_voter() || core_->role() != Role::Follower
                        ? roles[static_cast<int>(core_->role())]
                        : "learner");
  line("raft_state", std::string(1, core_->role_char()));
  line("raft_term", std::to_string(core_->term()));
  line("raft_leader_id", core_->leader());
  const Member* lm = core_->config().find(core_->leader());
  line("raft_leader_address", lm ? lm->address : "");
  line("raft_commit_index", std::to_string(core_->commit_index()));
  line("raft_applied_index", std::to_string(applied_.load()));
  line("raft_last_index", std::to_string(core_->last_index()));
  line("raft_snapshot_index", std::to_string(core_->snapshot_index()));
  line("raft_refused_peer_messages", std::to_string(core_->refused_count()));
  line("raft_storage", failed_ ? "failed: " + failure_ : "ok");
  line("raft_voters", std::to_string(core_->config().voter_count()));
  line("raft_members", std::to_string(core_->config().members.size()));
  int i = 0;
  for (const auto& m : core_->config().members) {
    std::string v = "id=" + m.id + ",address=" + m.address + ",role=" + (m.voter ? "voter" : "learner");
    if (m.id == cfg_.id) {
      v += ",match=" + std::to_string(core_->last_index()) + ",lag=0,self=1";
    } else if (core_->role() == Role::Leader) {
      auto it = core_->progress().find(m.id);
      if (it != core_->progress().end())
        v += ",match=" + std::to_string(it->second.match) +
             ",lag=" + std::to_string(core_->last_index() - std::min(core_->last_index(), it->second.match)) +
             ",active=" + (it->second.recent_active ? "1" : "0");
    }
    line("raft_member" + std::to_string(i++), v);
  }
  s += "\r\n# Clients\r\n";
  line("connected_clients", std::to_string(connected_clients_.load()));
  line("maxclients", std::to_string(limits_.max_clients.load()));
  line("total_client_output_bytes", std::to_string(client_output_total_reported_.load()));
  s += "\r\n# Memory\r\n";
  line("used_memory", std::to_string(used_memory_.load()));
  line("maxmemory", std::to_string(limits_.maxmemory.load()));
  line("maxmemory_policy", "noeviction");
  s += "\r\n# Keyspace\r\n";
  line("db0", "keys=" + std::to_string(keys_.load()));
  return s;
}

inline resp::Value Runtime::role_reply() const {
  std::lock_guard<std::mutex> lock(core_mu_);
  std::vector<Reply> members;
  for (const auto& m : core_->config().members) {
    // Only a leader knows how far the others are (as in INFO): nil elsewhere.
    std::optional<std::uint64_t> match;
    if (m.id == cfg_.id) {
      match = core_->last_index();
    } else if (core_->role() == Role::Leader) {
      auto it = core_->progress().find(m.id);
      if (it != core_->progress().end()) match = it->second.match;
    }
    const std::uint64_t last = core_->last_index();
    members.push_back(Reply::array(
        {Reply::bulk(m.id), Reply::bulk(m.address), Reply::bulk(m.voter ? "voter" : "learner"),
         match ? Reply::integer(static_cast<std::int64_t>(*match)) : Reply::nil(),
         match ? Reply::integer(static_cast<std::int64_t>(last - std::min(last, *match))) : Reply::nil()}));
  }
  const char* roles[] = {"follower", "candidate", "candidate", "leader"};
  const Member* lm = core_->config().find(core_->leader());
  return Reply::array({Reply::bulk(core_->is_voter() || core_->role() != Role::Follower ? roles[static_cast<int>(core_->role())] : "learner"),
                       Reply::bulk(cfg_.id), Reply::integer(static_cast<std::int64_t>(core_->term())),
                       Reply::bulk(core_->leader()), Reply::bulk(lm ? lm->address : ""),
                       Reply::integer(static_cast<std::int64_t>(core_->commit_index())),
                       Reply::integer(static_cast<std::int64_t>(applied_.load())), Reply::array(std::move(members))});
}

inline void Runtime::log(LogLevel level, const std::string& message) const {
  if (level < cfg_.log_level) return;
  std::string line = std::string("[") + level_name(level) + "][" + cfg_.id + "-" + std::to_string(term_.load()) + "(" +
                     state_char_.load() + "):" + timestamp_text() + "] " + message;
  if (cfg_.log_sink) {
    cfg_.log_sink(level, line);
  } else {
    line += "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
}


// ---- the poll thread -----------------------------------------------------------------------

inline void Runtime::poll_loop() {
  poll_thread_id_ = std::this_thread::get_id();
  std::vector<pollfd> fds;
  std::vector<std::uint64_t> owner;  // client connection id, or 0
  auto last_expiry = std::chrono::steady_clock::now();
  while (!stopping_) {
    fds.clear();
    owner.clear();
    bool accepting = std::chrono::steady_clock::now() >= accept_paused_until_;
    fds.push_back(pollfd{wake_pipe_[0], POLLIN, 0});
    fds.push_back(pollfd{client_fd_, static_cast<short>(accepting ? POLLIN : 0), 0});
    owner.assign(2, 0);
    for (auto& [id, c] : clients_) {
      // A command waiting for an earlier one: read no more meanwhile (bounded input).
      short ev = static_cast<short>((c->close_after_flush || c->input_closed || c->has_pending ? 0 : POLLIN) |
                                    (c->out.empty() ? 0 : POLLOUT));
      fds.push_back(pollfd{c->fd, c->tls.events(ev), 0});
      owner.push_back(id);
    }
    int n = ::poll(fds.data(), fds.size(), 100);
    if (stopping_) break;
    if (n < 0) {
      if (errno != EINTR) log(LogLevel::Error, "poll: " + errno_text(errno));
      continue;
    }
    if (fds[0].revents & POLLIN) {
      char buf[256];
      while (::read(wake_pipe_[0], buf, sizeof buf) > 0) {
      }
    }
    if (fds[1].revents & POLLIN) accept_clients();
    std::vector<std::uint64_t> close_clients;
    for (std::size_t i = 2; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      auto it = clients_.find(owner[i]);
      if (it == clients_.end()) continue;
      ClientConn& c = *it->second;
      const short revents = c.tls.ready(fds[i].revents);
      bool ok = true;
      if (revents & (POLLIN | POLLHUP | POLLERR)) ok = read_client(c);
      if (ok && (revents & POLLOUT)) ok = flush_client(c);
      if (!ok) close_clients.push_back(c.id);
    }
    flush_batched(poll_batch_);
    drain_done();
    // QUIT or a protocol error: close once every reply before it is written.
    for (auto& [id, c] : clients_)
      if (c->kill || ((c->close_after_flush || (c->input_closed && !c->has_pending)) && c->out.empty() && c->ops.empty()))
        close_clients.push_back(id);
    for (std::uint64_t id : close_clients) {
      auto it = clients_.find(id);
      if (it != clients_.end()) {
        drop_output(*it->second);
        ::close(it->second->fd);
        clients_.erase(it);
      }
    }
    connected_clients_ = clients_.size();
    client_output_total_reported_ = client_output_total_;
    auto now = std::chrono::steady_clock::now();
    if (now - last_expiry > std::chrono::milliseconds(100)) {
      last_expiry = now;
      expire_forwards();
      drain_done();
      close_idle_clients();
    }
  }
}

inline void Runtime::accept_clients() {
  for (;;) {
    sockaddr_in from{};
    socklen_t from_len = sizeof from;
    int fd = ::accept4(client_fd_, reinterpret_cast<sockaddr*>(&from), &from_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors: the listener stays readable; pause instead of spinning.
      if (errno == EMFILE || errno == ENFILE) accept_paused_until_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      return;
    }
    bool protected_mode_refuses = false;
    if (protected_mode_ && !is_loopback_client(from)) {
      std::lock_guard<std::mutex> lock(acl_mu_);
      protected_mode_refuses = acl_.default_without_password();
    }
    Tls tls;
    if (!secure_accepted(fd, tls, false)) {
      ::close(fd);
      continue;
    }
    if (protected_mode_refuses && !tls.on()) {
      ::send(fd, kProtectedModeDenied, std::strlen(kProtectedModeDenied), MSG_NOSIGNAL);
      ::close(fd);
      continue;
    }
    if (clients_.size() >= limits_.max_clients.load()) {
      // (Over TLS, nothing can be said before a handshake: just closed.)
      static const char kFull[] = "-ERR max number of clients reached\r\n";
      if (!tls.on()) ::send(fd, kFull, sizeof kFull - 1, MSG_NOSIGNAL);
      ::close(fd);
      continue;
    }
    set_nodelay(fd);
    resp::Limits client_limits = cfg_.client_limits;
    client_limits.max_bulk_length = static_cast<std::size_t>(limits_.proto_max_bulk_len.load());
    auto c = std::make_unique<ClientConn>(client_limits);
    c->id = next_conn_++;
    c->fd = fd;
    c->tls = std::move(tls);
    if (protected_mode_refuses) {  // over TLS: said once the handshake is done, then closed
      c->out = kProtectedModeDenied;
      c->close_after_flush = true;
    }
    {
      std::lock_guard<std::mutex> lock(acl_mu_);
      c->authenticated = !acl_.auth_required();  // Redis's: a default user without password
    }
    clients_[c->id] = std::move(c);
    connected_clients_ = clients_.size();
  }
}

/// Writes what the socket takes now; the rest waits for POLLOUT. False: the connection is
/// broken.
inline bool Runtime::flush_out(int fd, Tls& tls, std::string& out) {
  std::size_t sent = 0;
  while (sent < out.size()) {
    ssize_t w = tls.send(fd, out.data() + sent, out.size() - sent);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      return false;
    }
    sent += static_cast<std::size_t>(w);
  }
  out.erase(0, sent);
  return true;
}

inline bool Runtime::read_client(ClientConn& c) {
  char buf[65536];
  std::size_t total = 0;
  while (total < (std::size_t{1} << 20)) {  // fairness: at most 1 MiB per connection per round
    ssize_t r = c.tls.recv(c.fd, buf, sizeof buf);
    if (r == 0) {
      c.input_closed = true;  // answered, then closed, by the poll loop
      break;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      if (errno == EPROTO) log(LogLevel::Debug, "closing a client connection: " + c.tls.error());
      return false;
    }
    if (c.parser.buffered() == 0 && !c.has_pending) c.partial_since.reset();  // a new command begins
    if (!c.partial_since) c.partial_since = std::chrono::steady_clock::now();
    c.parser.feed(buf, static_cast<std::size_t>(r));
    total += static_cast<std::size_t>(r);
  }
  if (total > 0) c.last_input = std::chrono::steady_clock::now();
  const std::uint64_t started = c.first_op + c.ops.size();
  process_input(c);
  if (c.has_pending || c.parser.buffered() == 0)
    c.partial_since.reset();  // nothing of a command waits for the client
  else if (c.first_op + c.ops.size() != started)
    c.partial_since = c.last_input;  // what is left began in this read
  if (c.parser.buffered() > limits_.query_buffer.load()) {
    // Redis's client-query-buffer-limit: a command that large is never run.
    log(LogLevel::Warning, "closing a client whose unprocessed input passed client-query-buffer-limit (" +
                               std::to_string(c.parser.buffered()) + " bytes)");
    return false;
  }
  return c.out.size() <= cfg_.max_client_output;
}

inline bool Runtime::flush_client(ClientConn& c) {
  const std::size_t before = c.out.size();
  const bool ok = flush_out(c.fd, c.tls, c.out);
  client_output_total_ -= std::min(client_output_total_, before - c.out.size());
  return ok;
}

inline void Runtime::drop_output(ClientConn& c) {
  client_output_total_ -= std::min(client_output_total_, c.out.size());
  std::string().swap(c.out);
}

// Over the total of unsent replies, the clients holding the most are closed rather than
// paused: pausing frees nothing (their replies are made already) and a client that does not
// read would hold its share for ever; a client holding much is the likeliest not to read.
inline void Runtime::limit_total_output() {
  const std::uint64_t cap = limits_.total_client_output.load();
  if (client_output_total_ <= cap) return;
  std::vector<ClientConn*> by_size;
  for (auto& [id, c] : clients_)
    if (!c->kill && !c->out.empty()) by_size.push_back(c.get());
  std::sort(by_size.begin(), by_size.end(), [](ClientConn* a, ClientConn* b) { return a->out.size() > b->out.size(); });
  for (ClientConn* c : by_size) {
    if (client_output_total_ <= cap) break;
    log(LogLevel::Warning, "closing a client holding " + std::to_string(c->out.size()) +
                               " bytes of unsent replies: all clients' together passed client-output-total-limit (" +
                               std::to_string(cap) + ")");
    c->kill = true;
    drop_output(*c);
  }
}

// Redis's timeout (idle clients), and a deadline for a command begun but not finished.
inline void Runtime::close_idle_clients() {
  const auto now = std::chrono::steady_clock::now();
  const std::uint64_t idle_s = limits_.client_timeout_s.load();
  const std::uint64_t partial_s = limits_.partial_command_timeout_s.load();
  for (auto& [id, c] : clients_) {
    if (c->kill) continue;
    // Part of a command left once the one before it ran (complete_op): its clock starts now.
    if (!c->partial_since && !c->has_pending && c->parser.buffered() > 0) c->partial_since = now;
    const bool waiting_for_us = !c->ops.empty() || c->has_pending || !c->out.empty();
    if (idle_s > 0 && !waiting_for_us && now - c->last_input >= std::chrono::seconds(idle_s)) {
      c->kill = true;
    } else if (partial_s > 0 && c->partial_since && !c->has_pending &&
               now - *c->partial_since >= std::chrono::seconds(partial_s)) {
      log(LogLevel::Info, "closing a client that began a command " + std::to_string(partial_s) +
                              " s ago and has not finished it (partial-command-timeout)");
      c->kill = true;
    }
  }
}

// Starts the connection's commands in order. A read waits for the writes before it on the
// same connection (so it sees them), and a write for the reads before it; consecutive writes
// are proposed together and consecutive reads share a read index round.
inline void Runtime::process_input(ClientConn& c) {
  while (!c.close_after_flush) {
    if (!c.has_pending) {
      resp::Status st = c.parser.next(c.argv);
      if (st == resp::Status::NeedMore) return;
      if (st == resp::Status::Error) {
        // Redis's behaviour: the error, then the connection closes.
        std::uint64_t seq = c.first_op + c.ops.size();
        c.ops.push_back(Op{'i', false, {}});
        c.close_after_flush = true;
        std::lock_guard<std::mutex> lock(done_mu_);
        done_.emplace_back(c.id, seq, Reply::error("ERR " + c.parser.error()));
        return;
      }
      if (c.argv.empty()) continue;
      c.has_pending = true;
    }
    char kind = 'i';
    auto h = handlers_.find(lower(c.argv[0]));
    if (h != handlers_.end()) kind = h->second.is_write() ? 'w' : 'r';
    if ((kind == 'w' && c.unfinished_reads > 0) || (kind == 'r' && c.unfinished_writes > 0)) return;
    // HELLO changes the protocol of every reply written after it: the earlier ones go first.
    if (kind == 'i' && !c.ops.empty() && lower(c.argv[0]) == "hello") return;
    c.has_pending = false;
    std::uint64_t seq = c.first_op + c.ops.size();
    c.ops.push_back(Op{kind, false, {}});
    if (kind == 'w') ++c.unfinished_writes;
    if (kind == 'r') ++c.unfinished_reads;
    handle_command(&c, Caller{c.id, seq, nullptr, {}, 0, 0, {}}, c.argv, poll_batch_);
  }
}

// Answers that arrived for client connections: filled in, then written in order.
inline void Runtime::serve_ready_reads() {
  std::vector<ReadState> reads;
  reads.swap(poll_ready_reads_);
  for (const auto& rs : reads) {
    if (!rs.ok || applied_.load() < rs.index) {
      push_apply(ApplyItem{ApplyItem::Read, nullptr, {}, rs, {}, {}, 0, 0});
      continue;
    }
    // Applied already: the state read now is at least the read index and at most the commit
    // index, which is what linearizability asks.
    std::vector<std::string> words;
    std::uint64_t conn = 0;
    {
      std::lock_guard<std::mutex> lock(req_mu_);
      auto it = requests_.find(rs.request_id);
      if (it == requests_.end()) continue;
      words = it->second.words;
      conn = it->second.conn;
    }
    const auto client = clients_.find(conn);
    if (conn != 0 && (client == clients_.end() || client->second->kill)) {
      finish_request(rs.request_id, Reply::nil());  // its client is closed: not run
      continue;
    }
    auto h = handlers_.find(words.empty() ? std::string() : words[0]);
    finish_request(rs.request_id, h == handlers_.end() ? Reply::error("ERR unknown command")
                                                       : run_read(h->second, words, read_time(rs)));
    // Each reply written (and the output limits applied) before the next is made: a batch of
    // large replies is never all in memory at once.
    complete_done();
  }
}

inline bool Runtime::complete_done() {
  std::vector<std::tuple<std::uint64_t, std::uint64_t, Reply>> done;
  {
    std::lock_guard<std::mutex> lock(done_mu_);
    done.swap(done_);
  }
  for (auto& [conn, op, reply] : done) complete_op(conn, op, std::move(reply));
  return !done.empty();
}

inline void Runtime::drain_done() {
  for (;;) {
    serve_ready_reads();
    if (!complete_done()) break;
    flush_batched(poll_batch_);
  }
}

inline void Runtime::complete_op(std::uint64_t conn, std::uint64_t op, Reply reply) {
  auto it = clients_.find(conn);
  if (it == clients_.end()) return;  // the client went away
  ClientConn& c = *it->second;
  if (op < c.first_op || op - c.first_op >= c.ops.size()) return;
  Op& o = c.ops[static_cast<std::size_t>(op - c.first_op)];
  if (o.done) return;
  o.done = true;
  const std::size_t out_before = c.out.size();
  o.reply = std::move(reply);
  if (o.kind == 'w') --c.unfinished_writes;
  if (o.kind == 'r') --c.unfinished_reads;
#ifdef RAFT_MUTANT_REPLY_COMPLETION_ORDER
  resp::write(c.out, o.reply, c.protocol);  // mutant: written as it completes, not in request order
  while (!c.ops.empty() && c.ops.front().done) {
    c.ops.pop_front();
    ++c.first_op;
  }
#else
  while (!c.ops.empty() && c.ops.front().done) {
    resp::write(c.out, c.ops.front().reply, c.protocol);
    c.ops.pop_front();
    ++c.first_op;
  }
#endif
  client_output_total_ += c.out.size() - std::min(c.out.size(), out_before);
  if (c.kill) {  // being closed: nothing more is sent
    drop_output(c);
    return;
  }
  if (!c.out.empty() && !flush_client(c)) c.close_after_flush = true;
  if (c.out.size() > cfg_.max_client_output) {
    log(LogLevel::Warning, "closing a client that does not read its replies (" + std::to_string(c.out.size()) + " bytes waiting)");
    c.kill = true;
    drop_output(c);
    return;
  }
  limit_total_output();
  if (c.kill) return;
  if (c.has_pending || c.parser.buffered() > 0) process_input(c);
}

// ---- inbound peer connections --------------------------------------------------------------

// The peer thread: accepts and reads every inbound peer connection and steps what they carry
// into the core, so that no client's command (a long KEYS, a large reply) delays a heartbeat
// or its answer. It owns peers_in_ and peer_batch_; it shares with the poll thread only what
// is under a lock (core_mu_, fwd_mu_, req_mu_, links_mu_, acl_mu_).
inline void Runtime::peer_loop() {
  peer_thread_id_ = std::this_thread::get_id();
  // Connections a founder authenticated while it listened (listen_before_founding) wait for
  // their WELCOME, and may hold messages already: handle them as if they had just arrived.
  for (auto it = peers_in_.begin(); it != peers_in_.end();) {
    PeerConn& p = *it->second;
    const bool ok = read_peer(p) && (p.wire.empty() || flush_out(p.fd, p.tls, p.wire));
    if (ok) {
      ++it;
    } else {
      ::close(it->first);
      it = peers_in_.erase(it);
    }
  }
  flush_batched(peer_batch_);
  std::vector<pollfd> fds;
  auto last_expiry = std::chrono::steady_clock::now();
  while (!stopping_) {
    fds.clear();
    const bool accepting = std::chrono::steady_clock::now() >= peer_accept_paused_until_;
    fds.push_back(pollfd{peer_wake_pipe_[0], POLLIN, 0});
    fds.push_back(pollfd{peer_fd_, static_cast<short>(accepting ? POLLIN : 0), 0});
    for (auto& [fd, p] : peers_in_)
      fds.push_back(pollfd{fd, p->tls.events(static_cast<short>((p->close_after_flush ? 0 : POLLIN) | (p->wire.empty() ? 0 : POLLOUT))), 0});
    int n = ::poll(fds.data(), fds.size(), 100);
    if (stopping_) break;
    if (n < 0) {
      if (errno != EINTR) log(LogLevel::Error, "poll (peers): " + errno_text(errno));
      continue;
    }
    if (fds[0].revents & POLLIN) {
      char buf[256];
      while (::read(peer_wake_pipe_[0], buf, sizeof buf) > 0) {
      }
    }
    if (fds[1].revents & POLLIN) accept_peers();
    std::vector<int> close_peers;
    for (std::size_t i = 2; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      auto it = peers_in_.find(fds[i].fd);
      if (it == peers_in_.end()) continue;
      PeerConn& p = *it->second;
      bool ok = true;
      if (p.tls.ready(fds[i].revents) & (POLLIN | POLLHUP | POLLERR)) ok = read_peer(p);
      if (ok && !p.wire.empty()) ok = flush_out(p.fd, p.tls, p.wire);
      if (!ok || (p.close_after_flush && p.wire.empty())) close_peers.push_back(p.fd);
    }
    flush_batched(peer_batch_);  // the writes forwarded to this leader (FWD)
    for (int fd : close_peers) {
      ::close(fd);
      peers_in_.erase(fd);
    }
    auto now = std::chrono::steady_clock::now();
    if (now - last_expiry > std::chrono::milliseconds(100)) {
      last_expiry = now;
      // A peer connection that has not said HELLO in time is dropped (descriptors are finite).
      for (auto it = peers_in_.begin(); it != peers_in_.end();) {
        if (!it->second->welcomed && now - it->second->accepted > std::chrono::milliseconds(scaled(cfg_.send_timeout_ms))) {
          ::close(it->first);
          it = peers_in_.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
}

// Before a connection is accepted: if the connections still in the handshake (not welcomed)
// among `conns` are at their budget, closes the oldest from the address holding the most (its
// fd becomes -1: the caller drops it). `get` gives an element's PeerConn.
template <class Conns, class Get>
void Runtime::make_room_for_handshake(Conns& conns, Get get) {
  std::map<std::uint32_t, std::size_t> by_source;
  std::size_t waiting = 0;
  for (auto& e : conns) {
    const PeerConn& p = get(e);
    if (p.fd >= 0 && !p.welcomed && !p.session.is_open()) {
      ++waiting;
      ++by_source[p.source];
    }
  }
  if (waiting < kMaxUnauthenticatedPeerConnections) return;
  std::uint32_t busiest = 0;
  std::size_t most = 0;
  for (const auto& [source, n] : by_source)
    if (n > most) {
      busiest = source;
      most = n;
    }
  PeerConn* oldest = nullptr;
  for (auto& e : conns) {
    PeerConn& p = get(e);
    if (p.fd >= 0 && !p.welcomed && !p.session.is_open() && p.source == busiest &&
        (!oldest || p.accepted < oldest->accepted))
      oldest = &p;
  }
  ::close(oldest->fd);
  oldest->fd = -1;
}

inline void Runtime::accept_peers() {
  for (;;) {
    sockaddr_in from{};
    socklen_t from_len = sizeof from;
    int fd = ::accept4(peer_fd_, reinterpret_cast<sockaddr*>(&from), &from_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) peer_accept_paused_until_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      return;
    }
    make_room_for_handshake(peers_in_, [](auto& entry) -> PeerConn& { return *entry.second; });
    for (auto it = peers_in_.begin(); it != peers_in_.end();)
      it = it->second->fd < 0 ? peers_in_.erase(it) : std::next(it);
    if (peers_in_.size() >= kMaxPeerConnections) {
      ::close(fd);
      continue;
    }
    set_nodelay(fd);
    auto p = std::make_unique<PeerConn>();
    p->fd = fd;
    p->source = from.sin_addr.s_addr;
    if (!secure_accepted(fd, p->tls, true)) {
      ::close(fd);
      continue;
    }
    peers_in_[fd] = std::move(p);
  }
}

// Received bytes: the handshake's (ListenerHandshake) until the session opens, then frames,
// whose bodies (once checked) go to the message parser. False: the connection must be closed.
// `founding` (listen_before_founding): HELLO may be meant for any node id.
inline bool Runtime::take_peer_bytes(PeerConn& p, const char* data, std::size_t n, bool founding) {
  if (p.close_after_flush) return true;  // refused: nothing more is read
  if (!p.session.is_open()) {
    if (!p.handshake) p.handshake = std::make_unique<ListenerHandshake>(peer_secrets(), founding ? "" : cfg_.id);
    switch (p.handshake->take(data, n, p.wire)) {
      case ListenerHandshake::State::Waiting: return true;
      case ListenerHandshake::State::Refused:
        // In clear: there is no session. The answer says nothing about this node.
        log(LogLevel::Warning, "refused a peer connection: " + p.handshake->refusal());
        p.close_after_flush = true;
        p.handshake.reset();
        return true;
      case ListenerHandshake::State::Open: break;
    }
    p.hello = p.handshake->hello();
    p.session = std::move(p.handshake->session());
    const std::string rest = std::move(p.handshake->rest());
    p.handshake.reset();
    return rest.empty() || take_peer_bytes(p, rest.data(), rest.size(), founding);
  }
  std::string plain, error;
  if (!p.session.open(data, n, plain, error)) {
    log(LogLevel::Warning, "peer connection from " + (p.hello.size() > 3 ? p.hello[3] : std::string("?")) + ": " +
                               error + ": closing it");
    return false;
  }
  p.parser.feed(plain);
  return true;
}

inline bool Runtime::read_peer(PeerConn& p) {
  char buf[65536];
  std::size_t total = 0;
  bool eof = false;
  bool ok = true;
  while (ok && total < (std::size_t{4} << 20)) {
    ssize_t r = p.tls.recv(p.fd, buf, sizeof buf);
    if (r == 0) {
      eof = true;  // handle what arrived before the end, then close
      break;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      if (errno == EPROTO) log(LogLevel::Warning, "refused a peer connection: " + p.tls.error());
      return false;
    }
    ok = take_peer_bytes(p, buf, static_cast<std::size_t>(r), false);
    total += static_cast<std::size_t>(r);
  }
  // The session is open: the handshake's HELLO is handled as before (WELCOME or a refusal).
  if (ok && p.session.is_open() && !p.welcomed && !p.close_after_flush) ok = handle_peer_message(p, p.hello);
  std::vector<Message> inbound;
  for (;;) {
    if (!ok || !p.welcomed) break;
    resp::Status st = p.parser.next(p.argv);
    if (st == resp::Status::NeedMore) break;
    if (st == resp::Status::Error) {
      log(LogLevel::Warning, "peer connection from " + (p.node.empty() ? std::string("?") : p.node) +
                                 " sent malformed RESP (" + p.parser.error() + "): closing it");
      ok = false;
      break;
    }
    if (p.argv.empty()) continue;
    if (p.close_after_flush) break;  // refused: nothing more is read
    if (p.welcomed && !p.join_only && p.argv[0] == "RAFT") {
      Message m;
      std::string error;
      if (!decode_raft(p.argv, m, error)) {
        log(LogLevel::Warning, "peer " + p.node + ": " + error + ": closing the connection");
        ok = false;
        break;
      }
      m.from = p.node;
      m.to = cfg_.id;
      m.server_id = p.server_id;
      inbound.push_back(std::move(m));
      continue;
    }
    if (!handle_peer_message(p, p.argv)) {
      ok = false;
      break;
    }
  }
  if (!inbound.empty()) {
    std::lock_guard<std::mutex> lock(core_mu_);
    if (!failed_) {
      try {
        for (const auto& m : inbound) core_->step(m);
      } catch (const std::exception& e) {
        // decode_raft refuses what the core cannot take; this is a last resort.
        log(LogLevel::Error, "peer " + p.node + " sent a message the core refused (" + e.what() + "): closing");
        ok = false;
      }
      drive();
    }
  }
  // What the handlers answered (WELCOME, a refusal, JOIN's answer) goes out sealed.
  if (p.session.is_open() && !p.out.empty()) {
    p.session.seal(p.out, p.wire);
    p.out.clear();
  }
  return ok && !eof;
}

inline bool Runtime::handle_peer_message(PeerConn& p, std::vector<std::string>& w) {
  const std::string& kind = w[0];
  if (!p.welcomed) {
    auto refuse = [&](const std::string& why) {
      resp::write_error(p.out, "ERR " + why);
      p.close_after_flush = true;
      log(LogLevel::Warning, "refused a peer connection: " + why);
      return true;
    };
    // The HELLO of the handshake (peer_handshake): the peer proved it holds our secret.
    if (kind != "HELLO" || w.size() != 8) return refuse("expected HELLO");
    if (w[3].empty() || w[3] == cfg_.id) return refuse("peer says it is node '" + w[3] + "' (this node's id)");
    HostPort hp;
    std::string error;
    if (!parse_host_port(w[5], hp, error)) return refuse(error);
    std::string ours;
    {
      std::lock_guard<std::mutex> lock(core_mu_);
      ours = identity_.cluster_id;
    }
    if (!w[2].empty() && !ours.empty() && w[2] != ours)
      return refuse("node " + w[3] + " belongs to cluster " + w[2] + ", this node to " + ours);
    // A joiner: it may only ask to join. (Between two joiners too: neither is in a cluster, and
    // what one could send the other would capture it.)
    if (w[2].empty()) p.join_only = true;
    // We are the joiner: the cluster id comes only with the answer to our JOIN, from the member
    // we asked (joiner_loop). Anyone else could claim any cluster and capture this node. A
    // leader's link that comes first is refused and tries again once we know the id.
    if (!w[2].empty() && ours.empty())
      return refuse("node " + w[3] + " says it is of cluster " + w[2] + ", and this node has not joined one: it "
                    "learns its cluster id from the member it asks to join");
    p.node = w[3];
    p.server_id = w[4];
    p.address = w[5];
    {
      std::lock_guard<std::mutex> lock(links_mu_);
      if (!addresses_.count(p.node)) addresses_[p.node] = p.address;
    }
    p.welcomed = true;
    resp::write_simple(p.out, "WELCOME");
    return true;
  }
  if (kind == "JOIN" && w.size() == 4) {
    resp::write(p.out, handle_join(w), 2);
    return true;
  }
  if (p.join_only) {
    log(LogLevel::Warning, "node " + p.node + " is not in this cluster yet and sent " + kind + ": closing");
    return false;
  }
  if (kind == "FWD") {
    ForwardedWrite fw;
    std::string error;
    if (!decode_forward(w, fw, error)) {
      log(LogLevel::Warning, "peer " + p.node + ": " + error + ": closing the connection");
      return false;
    }
    handle_forward(p, std::move(fw));
    return true;
  }
  if (kind == "FWDR") {
    ForwardReply fr;
    std::string error;
    if (!decode_forward_reply(w, fr, error)) {
      log(LogLevel::Warning, "peer " + p.node + ": " + error + ": closing the connection");
      return false;
    }
    handle_forward_reply(p.node, std::move(fr));
    return true;
  }
  log(LogLevel::Warning, "peer " + p.node + " sent an unknown message '" + kind.substr(0, 32) + "': closing");
  return false;
}

inline Reply Runtime::handle_join(const std::vector<std::string>& w) {
  const NodeId& id = w[1];
  HostPort hp;
  std::string error;
  if (id.empty() || id == cfg_.id) return Reply::error("ERR node id '" + id + "' is taken");
  if (!parse_host_port(w[2], hp, error)) return Reply::error("ERR " + error);
  std::lock_guard<std::mutex> lock(core_mu_);
  if (core_->role() != Role::Leader) {
    const Member* l = core_->config().find(core_->leader());
    if (l) return Reply::error("MOVED " + l->id + " " + l->address);
    return Reply::error("TRYAGAIN no leader is known");
  }
  const Member* m = core_->config().find(id);
  if (m && m->server_id == w[3] && m->address == w[2]) return Reply::simple("OK " + identity_.cluster_id);
  if (m && !m->server_id.empty() && m->server_id != w[3])
    log(LogLevel::Warning, "node " + id + " asks to join with a new server id (its data directory was wiped?): "
                           "re-adding it as a learner; it catches up before it votes again");
  ProposeResult res = core_->add_learner(Member{id, w[2], w[3], false}, now_ms());
  if (res.ok()) {
    log(LogLevel::Info, "adding " + id + " at " + w[2] + " as a learner");
    drive();
    return Reply::simple("OK " + identity_.cluster_id);
  }
  if (res.error == ProposeResult::Error::InvalidConfig) return Reply::error("ERR cannot add node " + id);
  return Reply::error("TRYAGAIN another membership change is in progress");
}

// Only from the answer to this node's JOIN (joiner_loop): the member asked, or the one it
// redirected to. An inbound HELLO never sets it (handle_peer_message).
inline void Runtime::adopt_cluster_id(const std::string& cluster_id) {
  std::lock_guard<std::mutex> lock(core_mu_);
  if (!identity_.cluster_id.empty() || cluster_id.empty()) return;
  identity_.cluster_id = cluster_id;
  writer_->submit_identity(identity_, [this](bool ok) {
    if (!ok) storage_failed(storage_->failure());
  });
  log(LogLevel::Info, "joined cluster " + cluster_id);
}

inline void Runtime::joiner_loop() {
  std::vector<std::string> targets;
  for (const auto& e : cfg_.join) {
    auto slash = e.find('/');
    targets.push_back(slash == std::string::npos ? e : e.substr(slash + 1));
  }
  std::string moved;
  std::size_t next = 0;
  while (!stopping_) {
    {
      // Until a committed configuration names us: an entry adding us that a new leader never
      // had is cut again, and then nobody would contact us.
      std::lock_guard<std::mutex> lock(core_mu_);
      if (committed_member()) break;
    }
    std::string target = moved.empty() ? targets[next++ % targets.size()] : moved;
    moved.clear();
    HostPort hp;
    std::string error;
    std::string outcome;
    if (parse_host_port(target, hp, error)) {
      int fd = connect_tcp(host_.host, hp.host, hp.port + 1, scaled(cfg_.send_timeout_ms), error, stop_fd());
      if (fd >= 0) {
        set_send_timeout(fd, scaled(cfg_.send_timeout_ms));
        // The handshake first (whoever is there: `to` is empty); JOIN goes sealed after it.
        PeerSession session;
        Tls tls;
        bool refused = false;
        std::string join;
        resp::ReplyParser parser;
        resp::Value welcome, reply;
        if (!secure_to_peer(fd, hp.host, tls, error) || !handshake_as_connector(fd, tls, "", session, error, refused)) {
          welcome = resp::Value::error(error);
        } else {
          std::string plain;
          resp::write_command(plain, {"JOIN", cfg_.id, cfg_.address, identity_.server_id});
          session.seal(plain, join);
        }
        if (session.is_open() && send_all(fd, join.data(), join.size(), &tls) &&
            recv_sealed_value(fd, session, parser, welcome, scaled(cfg_.send_timeout_ms), stop_fd(), error, &tls) &&
            !welcome.is_error() &&
            recv_sealed_value(fd, session, parser, reply, scaled(cfg_.send_timeout_ms), stop_fd(), error, &tls)) {
          if (reply.type == resp::Type::SimpleString && reply.str.rfind("OK ", 0) == 0) {
            adopt_cluster_id(reply.str.substr(3));
            outcome = "accepted";
          } else if (reply.is_error() && reply.str.rfind("MOVED ", 0) == 0) {
            auto sp = reply.str.rfind(' ');
            moved = reply.str.substr(sp + 1);
            outcome = "redirected to " + moved;
            ::close(fd);
            std::unique_lock<std::mutex> lock(life_mu_);  // no tight loop between two nodes
            life_cv_.wait_for(lock, std::chrono::milliseconds(scaled(50)), [&] { return stopping_.load(); });
            continue;
          } else {
            outcome = reply.str;
          }
        } else {
          outcome = welcome.is_error() ? welcome.str : "no answer";
        }
        ::close(fd);
      } else {
        outcome = error;
      }
    } else {
      outcome = error;
    }
    log(LogLevel::Info, "asked " + target + " to join: " + outcome);
    std::unique_lock<std::mutex> lock(life_mu_);
    life_cv_.wait_for(lock, std::chrono::milliseconds(scaled(cfg_.join_retry_ms)), [&] { return stopping_.load(); });
  }
}

}  // namespace detail

// ---- Config ---------------------------------------------------------------------------------

inline std::string Config::validate() const {
  detail::HostPort hp;
  std::string error;
  if (address.empty()) return "address is required (-a ip:port)";
  if (!detail::parse_host_port(address, hp, error)) return error;
  for (const auto& [nid, addr] : peers) {
    if (nid.empty()) return "a peer has an empty id";
    if (!detail::parse_host_port(addr, hp, error)) return "peer " + nid + ": " + error;
    if (addr == address) return "peer " + nid + " has this node's own address " + addr;
  }
  for (const auto& e : join) {
    auto slash = e.find('/');
    if (!detail::parse_host_port(slash == std::string::npos ? e : e.substr(slash + 1), hp, error)) return "-e: " + error;
  }
  if (!peers.empty() && !join.empty()) return "give either a static peer map or a list to join (-e), not both";
  if (secret.empty() && !second_secret.empty()) return "a second secret needs a first one";
  detail::HostPort own;
  detail::parse_host_port(address, own, error);
  if (secret.empty() && !insecure_peers && own.host.rfind("127.", 0) != 0)
    return "address " + address + " is not a loopback address and no peer secret is set: anyone who reaches port " +
           std::to_string(own.port + 1) + " could join the cluster's traffic. Set a secret (--secret-file PATH or "
           "RAFT_SECRET in the environment; raft::Config::secret), or accept the risk with --insecure-peers "
           "(raft::Config::insecure_peers)";
  const bool tls = !tls_cert_file.empty() || !tls_key_file.empty() || !tls_ca_cert_file.empty();
#ifdef RAFT_OPENSSL_SUPPORT
  if (tls && (tls_cert_file.empty() || tls_key_file.empty() || tls_ca_cert_file.empty()))
    return "TLS needs a certificate, its key and the CA certificates (--tls-cert-file, --tls-key-file, "
           "--tls-ca-cert-file)";
#else
  if (tls)
    return "TLS is not compiled in: build with -DRAFT_OPENSSL_SUPPORT and link -lssl -lcrypto (make TLS=1; "
           "Debian: apt-get install libssl-dev)";
#endif
  if (!load_snapshot.empty() && (!join.empty() || !peers.empty()))
    return "-l founds a cluster of one; joiners (-e) and static peers receive the data from it";
  if (!(time_scale > 0)) return "time_scale must be positive";
  if (tick_ms < 1) return "tick_ms must be at least 1";
  if (heartbeat_ms < tick_ms) return "heartbeat_ms must be at least tick_ms";
  if (election_timeout_ms < 2 * tick_ms || election_timeout_ms <= heartbeat_ms)
    return "election_timeout_ms must exceed heartbeat_ms and be at least two ticks";
  if (append_timeout_ms < tick_ms || read_timeout_ms < tick_ms || send_timeout_ms < 1 || join_retry_ms < 1)
    return "timeouts must be positive";
  if (max_clients < 1) return "max_clients must be at least 1";
  if (client_timeout_s < 0 || partial_command_timeout_s < 0 || checkpoint_interval_s < 0)
    return "client_timeout_s, partial_command_timeout_s and checkpoint_interval_s must not be negative";
  if (max_command_bytes < 1 || max_command_bytes > detail::kMaxCommandBytes)
    return "max_command_bytes must be between 1 and " + std::to_string(detail::kMaxCommandBytes) +
           " (the peer protocol carries a write in one message)";
  if (client_limits.max_bulk_length < 1 || client_limits.max_bulk_length > detail::kProtoMaxBulkLen)
    return "client_limits.max_bulk_length (proto-max-bulk-len) must be between 1 and " +
           std::to_string(detail::kProtoMaxBulkLen);
  if (client_limits.max_multibulk_length > detail::kMaxCommandWords)
    return "client_limits.max_multibulk_length must be at most " + std::to_string(detail::kMaxCommandWords);
  if (client_query_buffer_limit < (std::size_t{1} << 20))
    return "client_query_buffer_limit must be at least 1 MiB (Redis's minimum)";
  if (max_total_client_output < 1) return "max_total_client_output must be positive";
  if (max_voters < 1) return "max_voters must be at least 1";
  if (snapshot_threshold < 1) return "snapshot_threshold must be at least 1";
  if (max_snapshot_bytes < 1) return "max_snapshot_bytes must be positive";
  if (segment_bytes < 4096) return "segment_bytes must be at least 4096";
  detail::Acl acl;
  for (const auto& line : users) {
    std::string why = acl.set_user_line(line);
    if (!why.empty()) return "user '" + line.substr(0, line.find(' ')) + "': " + (why.rfind("ERR ", 0) == 0 ? why.substr(4) : why);
  }
  return "";
}

// ---- Node ------------------------------------------------------------------------------------

inline Node::Node(Config config) : rt_(std::make_unique<detail::Runtime>(*this, std::move(config))) {}

inline Node::Node(NodeId id, std::string address, std::map<NodeId, std::string> peers) {
  Config c;
  c.id = std::move(id);
  c.address = std::move(address);
  c.peers = std::move(peers);
  rt_ = std::make_unique<detail::Runtime>(*this, std::move(c));
}

inline Node::Node(long long id, std::string address, std::map<long long, std::string> peers) {
  Config c;
  c.id = std::to_string(id);
  c.address = std::move(address);
  for (auto& [nid, addr] : peers) c.peers[std::to_string(nid)] = std::move(addr);
  rt_ = std::make_unique<detail::Runtime>(*this, std::move(c));
}

inline Node::~Node() { rt_->stop(); }

inline Node& Node::handler(const std::string& name, Handler fn, std::string flags, int min_args, int max_args) {
  if (flags.find('w') != std::string::npos && flags.find('e') == std::string::npos)
    throw std::invalid_argument("handler '" + name + "': a write ('w') goes through the log: flags must be \"we\"");
  if (detail::is_reserved_command(name))
    throw std::invalid_argument("handler '" + name + "': names starting with \"__\" are reserved for raft.hpp");
  rt_->handlers_[detail::lower(name)] = Command{std::move(fn), std::move(flags), min_args, max_args};
  return *this;
}
inline Node& Node::on_leader(std::function<void(Node&, std::uint64_t)> fn) {
  rt_->on_leader_ = std::move(fn);
  return *this;
}
inline Node& Node::on_follower(std::function<void(Node&)> fn) {
  rt_->on_follower_ = std::move(fn);
  return *this;
}
inline Node& Node::on_candidate(std::function<void(Node&)> fn) {
  rt_->on_candidate_ = std::move(fn);
  return *this;
}
inline void Node::start() { rt_->start(); }
inline void Node::join() { rt_->join(); }
inline void Node::stop() { rt_->stop(); }
inline bool Node::stopping() const { return rt_->stopping(); }
inline const NodeId& Node::id() const { return rt_->id(); }
inline const std::string& Node::address() const { return rt_->address(); }
inline char Node::state() const { return rt_->state(); }
inline Role Node::role() const { return rt_->role(); }
inline std::uint64_t Node::term() const { return rt_->term(); }
inline NodeId Node::leader() const { return rt_->leader(); }
inline std::string Node::leader_address() const { return rt_->leader_address(); }
inline std::uint64_t Node::commit_index() const { return rt_->commit_index(); }
inline std::uint64_t Node::applied_index() const { return rt_->applied_index(); }
inline std::string Node::info() const { return rt_->info(); }
inline void Node::read(const std::function<void(const Store&)>& f) const { rt_->read(f); }
inline std::future<Reply> Node::execute_async(std::vector<std::string> words) { return rt_->execute_async(std::move(words)); }
inline Reply Node::execute(std::vector<std::string> words) { return rt_->execute_async(std::move(words)).get(); }
inline Reply Node::add_learner(const NodeId& id, const std::string& address) { return rt_->admin({"raft.add", id, address}); }
inline Reply Node::promote(const NodeId& id) { return rt_->admin({"raft.promote", id}); }
inline Reply Node::remove(const NodeId& id) { return rt_->admin({"raft.remove", id}); }
inline Reply Node::transfer_leadership(const NodeId& to) {
  return to.empty() ? rt_->admin({"raft.transfer"}) : rt_->admin({"raft.transfer", to});
}

// ---- the default command line -----------------------------------------------------------------

namespace detail {
/// The peer secrets from a secret file's text (or RAFT_SECRET): the first line, and a second
/// one while the secret changes; line ends (LF or CRLF) are not part of them. "" or the error.
inline std::string parse_secrets(std::string_view text, std::string& secret, std::string& second) {
  std::vector<std::string> lines;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    std::string line(text.substr(at, end - at));
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
    at = end + 1;
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty() || lines[0].empty()) return "holds no secret on its first line";
  if (lines.size() > 2) return "holds more than two lines (a secret, and a second one while the secret changes)";
  secret = lines[0];
  second = lines.size() > 1 ? lines[1] : std::string();
  if (lines.size() > 1 && second.empty()) return "has an empty second line";
  return "";
}
}  // namespace detail

inline std::string usage(const std::string& program) {
  return "usage: " + program +
         " -a IP:PORT [-i NODE_ID] [-e LIST] [-d DATA_DIR] [-l SNAPSHOT] [--secret-file PATH] [--requirepass PASSWORD]\n"
         "    [--user \"NAME RULES\"] [--protected-mode yes|no] [--tls-cert-file P --tls-key-file P --tls-ca-cert-file P\n"
         "    [--tls-auth-clients yes|no|optional]] [--loglevel LEVEL]\n"
         "  -a IP:PORT      this node's address: clients on PORT, peers on PORT+1 (required)\n"
         "  -i NODE_ID      this node's id (default: the address)\n"
         "  -e LIST         join the cluster of these members: NID/IP:PORT or IP:PORT, comma-separated\n"
         "  -d DATA_DIR     log, term, vote and snapshots (default: raft-<id>-<port>)\n"
         "  -l SNAPSHOT     found the cluster with this snapshot (ours or pyraft's .dat)\n"
         "  --secret-file P the peer secret: the file's first line (a second line: a second secret, accepted\n"
         "                  while the secret changes); RAFT_SECRET in the environment works alike\n"
         "  -s SECRET       the peer secret on the command line (every local user sees it in ps)\n"
         "  --insecure-peers  allow no secret on an address that is not loopback\n"
         "  --requirepass PASSWORD  clients must AUTH with this password (the default user's)\n"
         "  --user \"NAME RULES\"    an ACL user, as ACL SETUSER takes it: \"alice on >pw ~* +@read\" (repeatable)\n"
         "  --protected-mode yes|no  without a password, serve only loopback clients (default: yes)\n"
         "  --tls-cert-file P, --tls-key-file P, --tls-ca-cert-file P  TLS on both ports (PEM files; a build\n"
         "                  with RAFT_OPENSSL_SUPPORT): this node's certificate and key, the CA peers and clients\n"
         "                  are checked against\n"
         "  --tls-auth-clients yes|no|optional  clients must present a certificate the CA signed (default: yes)\n"
         "  limits (Redis's names; sizes take Redis's units: 100mb, 1gb; see the README's \"Limits\"):\n"
         "  --maxclients N  clients at once (default 10000, lowered to ulimit -n less 128)\n"
         "  --timeout S     close a client idle for S seconds (default 0: never)\n"
         "  --partial-command-timeout S  close a client that leaves a command unfinished S s (default 30)\n"
         "  --maxmemory SIZE  refuse writes that grow the data beyond SIZE with -OOM (default 0: none)\n"
         "  --maxmemory-policy noeviction  the only policy\n"
         "  --client-query-buffer-limit SIZE  unprocessed input of one client (default 64mb)\n"
         "  --proto-max-bulk-len SIZE  one argument (default 16mb)\n"
         "  --max-command-bytes SIZE  one write (default 16mb)\n"
         "  --client-output-total-limit SIZE  all clients' unsent replies (default 512mb)\n"
         "  --checkpoint-interval S  at most one CHECKPOINT per S seconds (default 1)\n"
         "  --loglevel L    debug, info, warning or error (default: info)\n"
         "  --time-scale X  multiply every timeout by X (slow machines, sanitizer builds)\n"
         "  -h, --help      this help\n"
         "Without -e and without a data directory the node founds a cluster of one and leads it, once it\n"
         "has listened about a second without being contacted by a cluster that counts its address as a member.\n"
         "  ex) " + program + " -i 1 -a 127.0.0.1:5010\n"
         "  ex) " + program + " -i 2 -a 127.0.0.1:5020 -e 127.0.0.1:5010\n";
}

inline ParsedArgs parse_args(int argc, char** argv) {
  ParsedArgs out;
  Config& c = out.config;
  const char* secret_from = nullptr;  // the option that gave the peer secret
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string& dst) {
      if (i + 1 >= argc) {
        out.error = "option " + a + " needs a value";
        return false;
      }
      dst = argv[++i];
      return true;
    };
    std::string v;
    if (a == "-h" || a == "--help") {
      out.help = true;
      return out;
    } else if (a == "-a" || a == "--addr") {
      if (!value(c.address)) return out;
    } else if (a == "-i" || a == "--nid") {
      if (!value(c.id)) return out;
    } else if (a == "-e" || a == "--ensemble") {
      if (!value(v)) return out;
      std::size_t start = 0;
      while (start <= v.size()) {
        auto comma = v.find(',', start);
        std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!item.empty()) c.join.push_back(item);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (a == "-d" || a == "--data") {
      if (!value(c.data_dir)) return out;
    } else if (a == "-l" || a == "--load") {
      if (!value(c.load_snapshot)) return out;
    } else if (a == "-s" || a == "--secret") {
      if (!value(c.secret)) return out;
      if (secret_from != nullptr) {
        out.error = "give the peer secret once (" + std::string(secret_from) + " and " + a + ")";
        return out;
      }
      secret_from = "-s";
      out.warnings.push_back("the peer secret given with " + a +
                             " shows in ps to every local user: use --secret-file PATH or RAFT_SECRET instead");
    } else if (a == "--requirepass") {
      if (!value(c.requirepass)) return out;
    } else if (a == "--user") {
      if (!value(v)) return out;
      c.users.push_back(v);
    } else if (a == "--protected-mode") {
      if (!value(v)) return out;
      v = detail::lower(v);
      if (v != "yes" && v != "no") {
        out.error = "--protected-mode takes yes or no, not '" + v + "'";
        return out;
      }
      c.protected_mode = v == "yes";
    } else if (a == "--tls-cert-file") {
      if (!value(c.tls_cert_file)) return out;
    } else if (a == "--tls-key-file") {
      if (!value(c.tls_key_file)) return out;
    } else if (a == "--tls-ca-cert-file") {
      if (!value(c.tls_ca_cert_file)) return out;
    } else if (a == "--tls-auth-clients") {
      if (!value(v)) return out;
      v = detail::lower(v);
      if (v != "yes" && v != "no" && v != "optional") {
        out.error = "--tls-auth-clients takes yes, no or optional, not '" + v + "'";
        return out;
      }
      c.tls_auth_clients = v == "yes" ? TlsAuthClients::Yes : v == "no" ? TlsAuthClients::No : TlsAuthClients::Optional;
    } else if (a == "--secret-file") {
      if (!value(v)) return out;
      if (secret_from != nullptr) {
        out.error = "give the peer secret once (" + std::string(secret_from) + " and " + a + ")";
        return out;
      }
      secret_from = "--secret-file";
      std::FILE* f = std::fopen(v.c_str(), "rb");
      if (f == nullptr) {
        out.error = "cannot read the secret file " + v + ": " + std::strerror(errno);
        return out;
      }
      std::string text;
      char chunk[4096];
      for (std::size_t n; (n = std::fread(chunk, 1, sizeof chunk, f)) > 0;) text.append(chunk, n);
      struct stat st{};
      const bool open_to_others = ::fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0;
      std::fclose(f);
      if (open_to_others)
        out.warnings.push_back("the secret file " + v + " can be read by other users: chmod 600 " + v);
      out.error = detail::parse_secrets(text, c.secret, c.second_secret);
      if (!out.error.empty()) {
        out.error = "the secret file " + v + " " + out.error;
        return out;
      }
    } else if (a == "--insecure-peers") {
      c.insecure_peers = true;
    } else if (a == "--maxclients" || a == "--timeout" || a == "--partial-command-timeout" ||
               a == "--checkpoint-interval") {
      if (!value(v)) return out;
      std::uint64_t n = 0;
      if (!detail::parse_number(v, n) || n > (std::uint64_t{1} << 31)) {
        out.error = a + " needs a number, not '" + v + "'";
        return out;
      }
      if (a == "--maxclients") c.max_clients = static_cast<std::size_t>(n);
      if (a == "--timeout") c.client_timeout_s = static_cast<int>(n);
      if (a == "--partial-command-timeout") c.partial_command_timeout_s = static_cast<int>(n);
      if (a == "--checkpoint-interval") c.checkpoint_interval_s = static_cast<int>(n);
    } else if (a == "--maxmemory" || a == "--client-query-buffer-limit" || a == "--proto-max-bulk-len" ||
               a == "--max-command-bytes" || a == "--client-output-total-limit") {
      if (!value(v)) return out;
      std::uint64_t n = 0;
      if (!detail::parse_memory(v, n) || n > (std::uint64_t{1} << 62)) {
        out.error = a + " needs a size in bytes (units as Redis's: 100mb, 1gb), not '" + v + "'";
        return out;
      }
      if (a == "--maxmemory") c.maxmemory = n;
      if (a == "--client-query-buffer-limit") c.client_query_buffer_limit = static_cast<std::size_t>(n);
      if (a == "--proto-max-bulk-len") c.client_limits.max_bulk_length = static_cast<std::size_t>(n);
      if (a == "--max-command-bytes") c.max_command_bytes = static_cast<std::size_t>(n);
      if (a == "--client-output-total-limit") c.max_total_client_output = static_cast<std::size_t>(n);
    } else if (a == "--maxmemory-policy") {
      if (!value(v)) return out;
      if (detail::lower(v) != "noeviction") {
        out.error = "--maxmemory-policy: only noeviction is supported, not '" + v + "'";
        return out;
      }
    } else if (a == "--time-scale") {
      if (!value(v)) return out;
      char* end = nullptr;
      c.time_scale = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0' || !(c.time_scale > 0)) {
        out.error = "--time-scale needs a positive number, not '" + v + "'";
        return out;
      }
    } else if (a == "--loglevel" || a == "-loglevel") {
      if (!value(v)) return out;
      v = detail::lower(v);
      if (v == "debug") c.log_level = LogLevel::Debug;
      else if (v == "info") c.log_level = LogLevel::Info;
      else if (v == "warning" || v == "warn") c.log_level = LogLevel::Warning;
      else if (v == "error") c.log_level = LogLevel::Error;
      else {
        out.error = "unknown log level '" + v + "'";
        return out;
      }
    } else {
      out.error = "unknown option '" + a + "'";
      return out;
    }
  }
  const char* env = std::getenv("RAFT_SECRET");
  if (secret_from == nullptr && env != nullptr && *env != '\0') {
    out.error = detail::parse_secrets(env, c.secret, c.second_secret);
    if (!out.error.empty()) {
      out.error = "RAFT_SECRET " + out.error;
      return out;
    }
  }
  if (c.id.empty()) c.id = c.address;
  out.error = c.validate();
  return out;
}

inline std::unique_ptr<Node> make_default_node(int argc, char** argv) {
  std::string program = argc > 0 ? argv[0] : "run_raft";
  ParsedArgs p = parse_args(argc, argv);
  if (p.help) {
    std::fputs(usage(program).c_str(), stdout);
    std::exit(0);
  }
  if (!p.error.empty()) {
    std::fprintf(stderr, "%s: %s\n%s", program.c_str(), p.error.c_str(), usage(program).c_str());
    std::exit(2);
  }
  for (const std::string& w : p.warnings) std::fprintf(stderr, "%s: warning: %s\n", program.c_str(), w.c_str());
  return std::make_unique<Node>(std::move(p.config));
}

}  // namespace raft
