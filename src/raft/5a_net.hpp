
// ============================================================================================
// 5. Runtime: POSIX sockets and a few std::threads that drive the core
// ============================================================================================
//
// The runtime is split into parts, each a file under src/raft/ (raft.hpp marks where each
// begins); the threads, their locks and the lock order are in the table at the top of
// 5f_runtime.hpp. In the order they are concatenated:
//   5a_net.hpp            small helpers, logging, addresses and sockets
//   5b_peer_wire.hpp      the peer protocol: RAFT/JOIN/FWD/FWDR messages, their encoding
//   5c_client_acl.hpp     clients' passwords and users: what each may run (AUTH, ACL)
//   5d_peer_auth.hpp      peer authentication: the handshake and the authenticated frames
//   5e_peer_link.hpp      PeerLink: one outbound connection to a peer and its sender thread;
//                         Links: the set of them and the peers' addresses
//   5f_runtime.hpp        the Runtime class: the thread and lock table, the lifecycle, state
//   5g_startup.hpp        start, join, leave, stop: the directory, recovery, founding, threads
//   5h_driver.hpp         driving the core: drive(), the storage's callbacks, halt; the ticker
//   5i_links.hpp          links to peers: which link a message takes, the connector's side
//                         of the handshake, TLS, PeerLink's sender thread
//   5j_applier.hpp        the apply loop (entries, writes, reads) and snapshots
//   5k_commands.hpp       requests and replies, execute(), the client command path, limits,
//                         RAFT.* administration, CONFIG, the table of connection commands
//   5l_forward.hpp        forwarded writes: the follower's side and the leader's
//   5m_client_auth.hpp    AUTH, ACL and the check before every client command
//   5n_client_server.hpp  status (INFO, ROLE) and the poll thread: client connections, limits
//   5o_peer_server.hpp    the peer thread: inbound peer connections, RAFT, JOIN, FWD; joining
//   5p_node.hpp           Config, Node and the default command line (a table of options)

namespace raft {
namespace detail {

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
/// "all" or "everything"; all but commandstats for none or "default" (as Redis); nothing for
/// an unknown one (as Redis answers).
inline std::string info_sections(const std::string& text, const std::vector<std::string>& wanted) {
  bool everything = false;
  bool by_default = wanted.empty();
  std::set<std::string> names;
  for (const auto& w : wanted) {
    const std::string n = lower(w);
    everything = everything || n == "all" || n == "everything";
    by_default = by_default || n == "default";
    names.insert(n);
  }
  if (everything) return text;
  if (by_default)
    for (const char* n : {"server", "clients", "memory", "persistence", "stats", "replication", "cpu", "errorstats",
                          "raft", "keyspace"})
      names.insert(n);
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

}  // namespace detail
}  // namespace raft
