// raft.hpp - an embeddable Raft node for C++17: three or five copies of a program keep one
// replicated, durable key-value state, elect a leader, run code only on the leader, and serve
// any Redis client. Copy raft.hpp and resp.hpp into your project; nothing else is needed at
// run time beyond the standard library, POSIX sockets and std::thread (TLS, optional, needs
// OpenSSL: define RAFT_OPENSSL_SUPPORT, see section 1c).
//
// GENERATED from src/raft/*.hpp by tools/amalgamate.sh - edit those parts, then run `make`.
// Each part begins with a "// ---- src/raft/NAME.hpp ----" line.
//
// Reading order (top-down):
//   1. public API: shared types, raft::Config, raft::Node, the handler table, callbacks
//   2. the store: replicated data, its repr-style snapshot text, built-in command handlers
//   3. the core: Raft as a deterministic state machine (no threads, sockets, files or clock)
//   4. storage: write-ahead log, term and vote, snapshots, recovery
//   5. runtime: POSIX sockets and a few std::threads that drive the core
// Sections 1-3 do no I/O. A reader who only wants to embed can stop after section 1.
#ifndef RAFT_HPP
#define RAFT_HPP

#include "resp.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <future>
#include <initializer_list>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

// POSIX
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <locale.h>  // uselocale: INCRBYFLOAT's text in the C locale
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/types.h>
#include <unistd.h>

#define RAFT_HPP_VERSION "0.1.0"
// ---- src/raft/1_api.hpp ----

// ============================================================================================
// 1. Public API
// ============================================================================================

namespace raft {

/// A node's name within its cluster: a number or a string ("1", "node-a").
using NodeId = std::string;

/// A node's role. A learner is a Follower that is not a voter in its configuration.
enum class Role : std::uint8_t { Follower, PreCandidate, Candidate, Leader };

// --------------------------------------------------------------------------------------------
// The handler table: commands are plain functions with flags and argument counts, as in
// pyraft (`handler['cas'] = [do_cas, 'we', 3, 3]`).
// --------------------------------------------------------------------------------------------

class Store;  // section 2: the replicated data
class Node;   // section 5

/// A handler's reply: protocol-neutral (a map is sent as a flat array to RESP2 clients).
using Reply = resp::Value;

/// What a handler receives.
struct Call {
  /// The replicated data. Write handlers ('w') change it; they run on every node when their
  /// entry is applied, so they must be deterministic and keep all state in the store.
  Store& data;
  /// words[0] is the command name, lower-case; then the arguments as the client sent them.
  const std::vector<std::string>& words;
  /// Write handlers: the entry's leader timestamp (the same on every node). Read handlers:
  /// this node's wall clock. In ms since the epoch. Never read the clock in a write handler.
  std::int64_t now_ms = 0;
  /// The node running the handler; null when a handler is called outside a node (tests).
  Node* node = nullptr;
  /// Write handlers: the applied entry's index and term, the same on every node (a seed for
  /// the random choices of SPOP and SRANDMEMBER). 0 in read handlers and outside a node.
  std::uint64_t index = 0;
  std::uint64_t term = 0;

  /// pyraft's check_ttl: in a write handler, deletes `key` if its deadline is at or before
  /// now_ms. Returns true if it did.
  bool check_ttl(std::string_view key);
  /// pyraft's clear_ttl: removes the key's deadline (it no longer expires).
  void clear_ttl(std::string_view key);
};

using Handler = std::function<Reply(Call&)>;

/// What a command does, for Node::handler: pyraft's flag strings as values of one type, so
/// that only these can be written. Read ("r"): answered by the node that received it. Write
/// ("we"): replicated through the log. WriteNoGrow ("wes"): a write that never grows the
/// data, still run at Config::maxmemory (Redis's commands without denyoom: DEL, LPOP, ...).
enum class CommandFlags : std::uint8_t { Read, Write, WriteNoGrow };
inline constexpr CommandFlags Read = CommandFlags::Read;
inline constexpr CommandFlags Write = CommandFlags::Write;
inline constexpr CommandFlags WriteNoGrow = CommandFlags::WriteNoGrow;

/// One row of the handler table.
struct Command {
  Handler fn;
  /// "r": a read, answered by the node that received it (linearizable unless the client
  /// said READONLY). "we": a write, replicated through the log and applied on every node.
  /// "wes": a write that never grows the data (DEL, LPOP, EXPIRE): still run when the data
  /// is at Config::maxmemory, where other writes are refused (Redis's commands without
  /// denyoom).
  std::string flags = "r";
  int min_args = 0;   // not counting the command name
  int max_args = -1;  // -1: no limit

  bool is_write() const { return flags.find('w') != std::string::npos; }
  bool may_grow() const { return is_write() && flags.find('s') == std::string::npos; }
};

using CommandTable = std::map<std::string, Command, std::less<>>;


// --------------------------------------------------------------------------------------------
// The node: configuration, the Node class and the default command line.
// --------------------------------------------------------------------------------------------

enum class LogLevel : std::uint8_t { Debug, Info, Warning, Error };

/// Receives every log line, already formatted in pyraft's shape:
/// `[INFO][nid-term(state):2026-11-25 21:12:06.123456] message`.
using LogSink = std::function<void(LogLevel level, const std::string& line)>;

/// Redis's tls-auth-clients: whether a client of the data port must present a certificate
/// the CA signed (Yes), may (Optional: checked when presented) or is not asked (No).
enum class TlsAuthClients : std::uint8_t { Yes, Optional, No };

/// Everything a node needs. The defaults need no tuning on a LAN; validate() names what is
/// wrong with a configuration.
struct Config {
  // ---- identity ----
  /// This node's id; empty: the address.
  NodeId id;
  /// "ip:port", a concrete IPv4 address (it is what peers are told). Clients connect to
  /// port, peers to port + 1. Both are bound on exactly this address, and connections to
  /// peers leave from it.
  std::string address;
  /// A static peer map (the same on every node, without this node): the cluster starts from
  /// this configuration and elects a leader. Empty, with `join` empty: this node founds a
  /// cluster of one and leads it, after listening on its peer port for a cluster that already
  /// counts its address as a member (then it founds nothing; see the README).
  std::map<NodeId, std::string> peers;
  /// Members to ask for joining ("nid/ip:port" or "ip:port"). The leader adds this node as
  /// a learner, catches it up and promotes it to voter. Ignored once the data directory
  /// holds a configuration.
  std::vector<std::string> join;
  /// Where the log, the term and vote and the snapshots live; empty: "raft-<id>-<port>".
  std::string data_dir;
  /// A snapshot to found the cluster with (ours, or pyraft's .dat layout). Used only when the
  /// data directory is new, or a founder's that a crash left before the snapshot was saved.
  std::string load_snapshot;
  /// The peer secret. Peers prove to each other that they hold it (challenge and response,
  /// HMAC-SHA256; it never crosses the wire) before anything else is sent, and every message
  /// after that carries a MAC under a key derived from it. Empty: the empty key, allowed
  /// only on a loopback address unless insecure_peers is set. Use a long random one
  /// (`head -c 32 /dev/urandom | base64`): a peer port's answer can be guessed at offline.
  std::string secret;
  /// While the secret changes: a second one, proved and accepted as well. Give every node
  /// the new secret with the old as second, one node at a time; then the new one alone.
  std::string second_secret;
  /// Allows an empty secret on an address that is not loopback (127.0.0.0/8): anyone who
  /// reaches the peer port can then join the cluster's traffic.
  bool insecure_peers = false;

  // ---- clients (Redis's requirepass, ACL users and protected mode; see the README) ----
  /// The password of the `default` user (Redis's requirepass). Empty: the default user needs
  /// none. Clients authenticate with AUTH or HELLO ... AUTH; before that, every command but
  /// AUTH, HELLO and QUIT is refused with -NOAUTH.
  std::string requirepass;
  /// ACL users, each in the syntax of Redis's ACL SETUSER (and ACL files): the name, then its
  /// rules, space-separated: "alice on >secret ~* +@read +@write". Applied in order after
  /// requirepass; a "default ..." entry changes the default user. Users live in this Config
  /// and ACL SETUSER changes only the node it runs on, as in Redis: give every node the same
  /// list (a leader checks a forwarded write's user against its own).
  std::vector<std::string> users;
  /// Redis's protected mode: while the default user has no password, only clients from a
  /// loopback address (127.0.0.0/8) are served; others get -DENIED saying how to open up.
  bool protected_mode = true;

  // ---- TLS (only in a build with RAFT_OPENSSL_SUPPORT defined; see the README) ----
  /// PEM files: this node's certificate (with its chain) and key, and the CA certificates
  /// the other side's must chain to. A certificate puts both ports on TLS, and nothing else
  /// is accepted on them: peers present their certificates to each other and check them
  /// (and a peer's address against its certificate's), clients check the node's. The peer
  /// secret is still proved on top. Empty: no TLS.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_cert_file;
  TlsAuthClients tls_auth_clients = TlsAuthClients::Yes;

  // ---- time ----
  /// Multiplies every timeout below (sanitizer builds run slower: 3 or 5).
  double time_scale = 1.0;
  int tick_ms = 10;
  int heartbeat_ms = 50;
  /// Minimum election timeout; followers wait a random time up to twice this.
  int election_timeout_ms = 300;
  /// A write not committed within this time fails with -TIMEOUT (its outcome is unknown).
  int append_timeout_ms = 3000;
  /// A linearizable read not confirmed within this time fails with -TRYAGAIN.
  int read_timeout_ms = 3000;
  /// Sends to a slow peer or client give up after this long.
  int send_timeout_ms = 3000;
  /// A joiner asks again this often until it is a member.
  int join_retry_ms = 500;

  // ---- limits (Redis's option names in brackets; see the README's "Limits") ----
  /// Clients served at once [maxclients]. Lowered at start to the descriptor limit
  /// (RLIMIT_NOFILE, shared by every node of the process) less kReservedDescriptors, kept for
  /// storage and peers, so that a flood of clients never makes a write to disk fail.
  std::size_t max_clients = 10000;
  /// A client that sends nothing for this long is closed; 0: never [timeout, seconds].
  int client_timeout_s = 0;
  /// A client that started a command and sent no more of it for this long is closed; 0:
  /// never. Redis has no such limit [partial-command-timeout, seconds].
  int partial_command_timeout_s = 30;
  /// Received bytes of one client not yet run as a command; beyond, it is closed
  /// [client-query-buffer-limit]. At least max_command_bytes, so that a write over that limit
  /// is refused with an error and the connection kept.
  std::size_t client_query_buffer_limit = std::size_t{64} << 20;
  /// One write, RESP-encoded as its log entry holds it: larger ones are refused before they
  /// are proposed or forwarded [max-command-bytes]. 16 MiB: an entry this size crosses a
  /// 1 Gbit/s link in about 135 ms, half the election timeout; etcd's default is 1.5 MiB.
  /// At most detail::kMaxCommandBytes (about 1 GiB, the peer protocol's bound).
  std::size_t max_command_bytes = std::size_t{16} << 20;
  /// Memory the data may use, as Store::used_memory() estimates it; 0: no limit [maxmemory].
  /// Policy noeviction: at or above it, a write that may grow the data (a command without
  /// the 's' flag) is refused with -OOM before it is proposed; deletes and reads still work.
  /// Also bounds a snapshot received from the leader (with max_snapshot_bytes).
  std::uint64_t maxmemory = 0;
  /// A CHECKPOINT within this time of the previous one, or while one is written, is refused
  /// [checkpoint-interval, seconds]. Each takes a copy of the data.
  int checkpoint_interval_s = 1;
  /// The unsent replies of all clients together: beyond, the clients holding the most are
  /// closed until the total is below it again [client-output-total-limit].
  std::size_t max_total_client_output = std::size_t{512} << 20;
  /// Learners are promoted while the cluster has fewer voters than this.
  std::size_t max_voters = 5;
  /// Take a snapshot after this many entries (pyraft: 100000); keep this many behind it.
  std::uint64_t snapshot_threshold = 100000;
  std::uint64_t snapshot_trailing = 1000;
  /// Log segment size.
  std::size_t segment_bytes = std::size_t{64} << 20;
  /// What a client may declare (RESP bulk length, multibulk length, inline length); a
  /// larger declaration is a protocol error that closes the connection, as in Redis. The
  /// bulk length is Redis's proto-max-bulk-len, here 16 MiB by default (Redis: 512 MiB), at
  /// most detail::kProtoMaxBulkLen.
  resp::Limits client_limits{std::size_t{16} << 20};
  /// A client whose unsent replies exceed this is disconnected (Redis: client-output-buffer-limit).
  std::size_t max_client_output = std::size_t{256} << 20;
  /// A snapshot received from the leader is held in memory while it arrives, and checked
  /// whole before it replaces the log; chunks beyond this size are refused. The default, 4 GiB,
  /// is above the snapshot of any store a node of this kind holds in memory on common hardware,
  /// and stops a stream that never ends (a snapshot is the whole data set as text: a store near
  /// this size needs a larger bound).
  std::uint64_t max_snapshot_bytes = std::uint64_t{4} << 30;

  // ---- logging ----
  LogLevel log_level = LogLevel::Info;
  LogSink log_sink;  // empty: standard error

  /// Empty when valid, else what is wrong ("address '1.2.3' is not ip:port").
  std::string validate() const;
};

/// What an administration call did (Node::add_learner, promote, remove,
/// transfer_leadership). Nothing was changed unless ok():
///
///   if (auto r = node.promote("4"); !r) std::cerr << r.message << "\n";
struct [[nodiscard]] AdminResult {
  enum class Error : std::uint8_t {
    None,
    NotRunning,      // the node is not started, or has stopped
    NotLeader,       // changes are made on the leader: `leader` names it, empty when none is known
    InvalidAddress,  // add_learner: the address is not ip:port
    Busy,            // another membership change is not committed yet (or the leader's first
                     // entry of its term is not): retry
    Transferring,    // leadership is being handed over: retry
    NotAllowed,      // one voter changes at a time, a voter must remain, the member must exist
    NoTarget,        // transfer_leadership(""): no other voter was heard from lately
    InvalidTarget,   // transfer_leadership(id): `id` is not another voter of the cluster
  };
  Error error = Error::None;
  /// Why it failed, as the commands RAFT.ADD ... reply it (a Redis error without the '-':
  /// "MOVED 2 10.0.0.2:5020 ...", "TRYAGAIN ..."); empty on success.
  std::string message;
  /// add_learner, promote, remove: where the configuration entry went (it takes effect when
  /// appended; it is committed later).
  std::uint64_t index = 0;
  std::uint64_t term = 0;
  /// transfer_leadership: the voter leadership goes to (the leader's choice when none was named).
  NodeId target;
  /// NotLeader: the leader's id and client address, when one is known.
  NodeId leader;
  std::string leader_address;

  bool ok() const { return error == Error::None; }
  explicit operator bool() const { return ok(); }
};

namespace detail {
class Runtime;
}

/// For the tests only (the unit tests and the Jepsen-style suite): nothing here is needed to
/// embed a node, and nothing here is stable.
namespace testing {
/// What a test replaces in a node: given to Node's constructor, fixed for its life.
struct Hooks {
  /// Called instead of fdatasync/fsync on the data directory's files (return -1 with errno
  /// set to fail, or block to keep writes from becoming durable). Empty: the real calls.
  std::function<int(int fd)> fsync;
  /// The wall clock, in ms since the epoch (a leader stamps entries with it; READONLY reads
  /// judge expiry by it). Empty: the system clock. Tests skew it.
  std::function<std::int64_t()> wall_clock;
};
/// The runtime behind a node, for its test hooks (faults on links, messages sent as a peer).
detail::Runtime& runtime(Node& node);
}  // namespace testing

/// A key-value state machine replicated by Raft, served to Redis clients.
///
///   raft::Node node(1, "127.0.0.1:5010", {{2, "127.0.0.1:5020"}, {3, "127.0.0.1:5030"}});
///   node.handler("cas", do_cas, raft::Write, 3, 3);
///   node.on_leader([](raft::Node& n, std::uint64_t term) { ... });
///   node.start();
///   node.join();
///
/// Threads: one serves every client and peer connection (poll), one sends to each peer, a
/// ticker, the storage writer (group commit), the apply loop (which also runs the role
/// callbacks and the handlers) and a snapshot writer. Several nodes may live in one process.
class Node {
 public:
  explicit Node(Config config);
  /// A node whose disk or clock a test controls.
  Node(Config config, testing::Hooks hooks);
  Node(NodeId id, std::string address, std::map<NodeId, std::string> peers = {});
  Node(long long id, std::string address, std::map<long long, std::string> peers = {});
  ~Node();  // stops the node
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  /// Adds or replaces a command (before start()): raft::Read, raft::Write or
  /// raft::WriteNoGrow (see CommandFlags). Argument counts exclude the command name;
  /// max_args -1: no limit.
  Node& handler(const std::string& name, Handler fn, CommandFlags flags, int min_args = 0, int max_args = -1);
  /// The same with pyraft's flag strings: "r", "we" or "wes" (a 'w' without 'e' throws
  /// std::invalid_argument).
  Node& handler(const std::string& name, Handler fn, std::string flags = "r", int min_args = 0,
                int max_args = -1);
  /// Called on the apply thread when this node's leadership of `term` is ready (its first
  /// entry committed and everything before it applied). The term is a fencing token; this is
  /// not real-time mutual exclusion (an old leader may not know yet that it was replaced).
  Node& on_leader(std::function<void(Node&, std::uint64_t term)> fn);
  Node& on_follower(std::function<void(Node&)> fn);
  Node& on_candidate(std::function<void(Node&)> fn);

  /// Binds both ports, opens the data directory and starts the threads. Throws
  /// std::runtime_error saying what failed. A founder without a data directory first listens
  /// for a cluster that counts its address as a member (900 ms with the default timeouts):
  /// start() returns after that.
  void start();
  /// Blocks until the node has stopped.
  void join();
  /// Leaves: a leader hands leadership to the most up-to-date voter first. Idempotent.
  void stop();
  /// Asks the node to stop and returns at once: join() then stops it as stop() does. For a
  /// thread that must not wait (one that waits for signals, a handler, a callback); it is
  /// not async-signal-safe (it takes a lock).
  void request_stop();
  /// True once the node is stopping: threads started from callbacks watch it.
  bool stopping() const;

  // ---- state ----
  const NodeId& id() const;
  const std::string& address() const;
  /// pyraft's state: 'l' leader, 'f' follower, 'c' candidate, 'n' learner (or joiner).
  char state() const;
  Role role() const;
  std::uint64_t term() const;
  NodeId leader() const;
  std::string leader_address() const;
  std::uint64_t commit_index() const;
  std::uint64_t applied_index() const;
  /// The INFO raft section as key:value lines.
  std::string info() const;

  /// Runs f on the replicated data under the data lock (user threads; handlers get
  /// Call::data). Do not keep references past f.
  void read(const std::function<void(const Store&)>& f) const;

  /// Runs a command as a client would (linearizable reads, writes forwarded to the leader).
  /// Never call it from a handler or a callback: they run on the thread that would answer it.
  std::future<Reply> execute_async(std::vector<std::string> words);
  Reply execute(std::vector<std::string> words);

  // ---- administration, on the leader (also the commands RAFT.ADD, RAFT.PROMOTE,
  //      RAFT.REMOVE, RAFT.TRANSFER and pyraft's add_node / del_node) ----
  /// Adds `id` at client address `address` as a learner (it then joins with -e).
  AdminResult add_learner(const NodeId& id, const std::string& address);
  /// Makes learner `id` a voter.
  AdminResult promote(const NodeId& id);
  /// Removes member `id` (a voter or a learner).
  AdminResult remove(const NodeId& id);
  /// Hands leadership to voter `to`; empty: the most up-to-date voter heard from lately.
  AdminResult transfer_leadership(const NodeId& to = "");

 private:
  friend detail::Runtime& testing::runtime(Node& node);
  std::unique_ptr<detail::Runtime> rt_;
};

/// pyraft's make_default_node: builds a Config from the command line
///   -a IP:PORT  -i NODE_ID  -e LIST  -d DATA_DIR  -l SNAPSHOT  --secret-file PATH  -s SECRET
///   --insecure-peers  --tls-cert-file P  --tls-key-file P  --tls-ca-cert-file P  --tls-auth-clients V
///   --loglevel LEVEL  (and RAFT_SECRET in the environment)
/// and returns the node (not started). Prints usage and exits with code 2 on a bad option,
/// code 0 for --help.
std::unique_ptr<Node> make_default_node(int argc, char** argv);

/// The parsing half of make_default_node, for programs that want the Config: on an error
/// `error` says what is wrong; `help` is set for -h/--help.
struct ParsedArgs {
  Config config;
  bool help = false;
  std::string error;
  std::vector<std::string> warnings;  // printed by make_default_node (-s shows in ps)
};
ParsedArgs parse_args(int argc, char** argv);
std::string usage(const std::string& program);

}  // namespace raft
// ---- src/raft/1a_membership.hpp ----

// ============================================================================================
// 1a. The cluster's membership and what a snapshot covers (the store, the core, the storage
//     and the runtime all speak in these)
// ============================================================================================

namespace raft {

/// One server of the cluster.
struct Member {
  NodeId id;
  std::string address;  // "ip:port": clients on port, peers on port + 1
  /// Random id of the member's data directory, fixed when the directory was created. A node
  /// presenting another server id under this member's id is a stranger (its disk was wiped).
  /// Empty when not known yet (a static peer map names only ids and addresses).
  std::string server_id;
  bool voter = true;  // false: a learner, which replicates but neither votes nor campaigns

  bool operator==(const Member& o) const {
    return id == o.id && address == o.address && server_id == o.server_id && voter == o.voter;
  }
  bool operator!=(const Member& o) const { return !(*this == o); }
};

/// The cluster's membership: voters and learners. Changes go through the log one server at
/// a time; a node uses a configuration as soon as it is in its log.
struct Configuration {
  std::vector<Member> members;  // sorted by id, ids unique

  const Member* find(std::string_view id) const {
    for (const auto& m : members)
      if (m.id == id) return &m;
    return nullptr;
  }
  bool contains(std::string_view id) const { return find(id) != nullptr; }
  bool is_voter(std::string_view id) const {
    const Member* m = find(id);
    return m != nullptr && m->voter;
  }
  std::size_t voter_count() const {
    std::size_t n = 0;
    for (const auto& m : members) n += m.voter ? 1 : 0;
    return n;
  }
  std::vector<NodeId> voters() const {
    std::vector<NodeId> ids;
    for (const auto& m : members)
      if (m.voter) ids.push_back(m.id);
    return ids;
  }
  /// Adds the member, or replaces the one with the same id; keeps members sorted.
  void upsert(Member m) {
    auto it = std::lower_bound(members.begin(), members.end(), m.id,
                               [](const Member& a, const NodeId& id) { return a.id < id; });
    if (it != members.end() && it->id == m.id)
      *it = std::move(m);
    else
      members.insert(it, std::move(m));
  }
  bool remove(std::string_view id) {
    for (auto it = members.begin(); it != members.end(); ++it)
      if (it->id == id) {
        members.erase(it);
        return true;
      }
    return false;
  }
  bool empty() const { return members.empty(); }

  /// The payload of a Config entry: a RESP array "config", 1 (format), then for each member
  /// id, address, server id, "1" (voter) or "0" (learner).
  std::string encode() const {
    std::vector<std::string> words{"config", "1"};
    for (const auto& m : members) {
      words.push_back(m.id);
      words.push_back(m.address);
      words.push_back(m.server_id);
      words.push_back(m.voter ? "1" : "0");
    }
    std::string out;
    resp::write_command(out, words);
    return out;
  }
  /// Parses encode()'s output strictly; false on anything else.
  static bool decode(std::string_view payload, Configuration& out) {
    resp::RequestParser parser;
    parser.feed(payload);
    std::vector<std::string> w;
    if (parser.next(w) != resp::Status::Ok || parser.buffered() != 0) return false;
    if (w.size() < 2 || w[0] != "config" || w[1] != "1" || (w.size() - 2) % 4 != 0) return false;
    Configuration c;
    for (std::size_t i = 2; i < w.size(); i += 4) {
      if (w[i].empty() || (w[i + 3] != "1" && w[i + 3] != "0") || c.contains(w[i])) return false;
      c.upsert(Member{w[i], w[i + 1], w[i + 2], w[i + 3] == "1"});
    }
    out = std::move(c);
    return true;
  }

  bool operator==(const Configuration& o) const { return members == o.members; }
  bool operator!=(const Configuration& o) const { return !(*this == o); }
};

/// What a snapshot covers: every entry up to and including (index, term), and the
/// configuration in force at that index.
struct SnapshotMeta {
  std::uint64_t index = 0;
  std::uint64_t term = 0;
  Configuration config;
  /// The leader timestamp of the entry at `index` (the newest it covers). A node that starts
  /// from the snapshot never stamps or judges expiry earlier than this: time does not run
  /// backwards across snapshots and restarts. 0 in snapshots written before format 2.
  std::int64_t timestamp_ms = 0;

  bool operator==(const SnapshotMeta& o) const {
    return index == o.index && term == o.term && config == o.config && timestamp_ms == o.timestamp_ms;
  }
};

}  // namespace raft
// ---- src/raft/1b_crypto.hpp ----

// ============================================================================================
// 1b. Crypto: SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for the peer handshake
// ============================================================================================
//
// Written from the standards, checked against their test vectors (tests/test_peer_auth.cpp:
// NIST's SHA-256 examples, RFC 4231's HMAC cases). Used only to authenticate peers (section
// 5: the handshake and the MAC on every frame); nothing here encrypts.

#include <sys/random.h>

namespace raft {
namespace detail {

class Sha256 {
 public:
  static constexpr std::size_t kDigestBytes = 32;
  static constexpr std::size_t kBlockBytes = 64;
  using Digest = std::array<std::uint8_t, kDigestBytes>;

  Sha256() { reset(); }
  void reset() {
    static constexpr std::uint32_t kInitial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::memcpy(state_, kInitial, sizeof state_);
    buffered_ = 0;
    total_bytes_ = 0;
  }
  void update(const void* data, std::size_t n) {
    if (n == 0) return;
    const auto* p = static_cast<const std::uint8_t*>(data);
    total_bytes_ += n;
    if (buffered_ > 0) {
      const std::size_t take = std::min(n, kBlockBytes - buffered_);
      std::memcpy(block_ + buffered_, p, take);
      buffered_ += take;
      p += take;
      n -= take;
      if (buffered_ < kBlockBytes) return;
      compress(block_);
      buffered_ = 0;
    }
    for (; n >= kBlockBytes; p += kBlockBytes, n -= kBlockBytes) compress(p);
    std::memcpy(block_, p, n);
    buffered_ = n;
  }
  void update(std::string_view s) { update(s.data(), s.size()); }
  /// Pads (a 1 bit, zeros, the length in bits as 64 bits big-endian: FIPS 180-4 5.1.1) and
  /// returns the digest. The object must be reset() before it is used again.
  Digest finish() {
    const std::uint64_t bits = total_bytes_ * 8;
    const std::uint8_t one = 0x80;
    update(&one, 1);
    const std::uint8_t zero = 0;
    while (buffered_ != kBlockBytes - 8) update(&zero, 1);
    std::uint8_t length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<std::uint8_t>(bits >> (56 - 8 * i));
    update(length, 8);
    Digest d;
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) d[static_cast<std::size_t>(4 * i + j)] = static_cast<std::uint8_t>(state_[i] >> (24 - 8 * j));
    return d;
  }
  static Digest of(std::string_view s) {
    Sha256 h;
    h.update(s);
    return h.finish();
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  // FIPS 180-4 6.2.2: the message schedule and 64 rounds over one 512-bit block.
  void compress(const std::uint8_t* block) {
    static constexpr std::uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    std::uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = static_cast<std::uint32_t>(block[4 * t]) << 24 | static_cast<std::uint32_t>(block[4 * t + 1]) << 16 |
             static_cast<std::uint32_t>(block[4 * t + 2]) << 8 | static_cast<std::uint32_t>(block[4 * t + 3]);
    for (int t = 16; t < 64; ++t) {
      const std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    std::uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int t = 0; t < 64; ++t) {
      const std::uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    state_[0] += a;
    state_[1] += b;
    state_[2] += c;
    state_[3] += d;
    state_[4] += e;
    state_[5] += f;
    state_[6] += g;
    state_[7] += h;
  }

  std::uint32_t state_[8];
  std::uint8_t block_[kBlockBytes];
  std::size_t buffered_ = 0;
  std::uint64_t total_bytes_ = 0;
};

/// HMAC-SHA256 with one key (RFC 2104): H((K ^ opad) || H((K ^ ipad) || message)). The
/// hashes of the two padded keys are computed once, so a MAC costs the message's blocks plus
/// two: the peer runtime MACs every frame with one of these.
class HmacSha256 {
 public:
  explicit HmacSha256(std::string_view key = {}) {
    std::uint8_t k[Sha256::kBlockBytes] = {};
    if (key.size() > Sha256::kBlockBytes) {
      const Sha256::Digest d = Sha256::of(key);  // a long key is hashed first
      std::memcpy(k, d.data(), d.size());
    } else if (!key.empty()) {  // (an empty view's data() may be null)
      std::memcpy(k, key.data(), key.size());
    }
    std::uint8_t pad[Sha256::kBlockBytes];
    for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x36);
    inner_.update(pad, sizeof pad);
    for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x5c);
    outer_.update(pad, sizeof pad);
  }
  /// A hash with the inner padded key absorbed: update() it with the message, then finish().
  Sha256 begin() const { return inner_; }
  Sha256::Digest finish(Sha256& inner) const {
    const Sha256::Digest in = inner.finish();
    Sha256 out = outer_;
    out.update(in.data(), in.size());
    return out.finish();
  }
  Sha256::Digest mac(std::string_view message) const {
    Sha256 h = begin();
    h.update(message);
    return finish(h);
  }

 private:
  Sha256 inner_, outer_;
};

/// Compares in time independent of where they differ: a forger learns nothing from timing.
inline bool digests_equal(const std::uint8_t* a, const std::uint8_t* b, std::size_t n) {
  unsigned diff = 0;
  for (std::size_t i = 0; i < n; ++i) diff |= static_cast<unsigned>(a[i] ^ b[i]);
  return diff == 0;
}

inline std::string to_hex(const std::uint8_t* p, std::size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (std::size_t i = 0; i < n; ++i) {
    s[2 * i] = kDigits[p[i] >> 4];
    s[2 * i + 1] = kDigits[p[i] & 15];
  }
  return s;
}
inline std::string to_hex(const Sha256::Digest& d) { return to_hex(d.data(), d.size()); }

/// Lower-case hex of exactly out.size() bytes; false for anything else.
template <std::size_t N>
bool from_hex(std::string_view s, std::array<std::uint8_t, N>& out) {
  if (s.size() != 2 * N) return false;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < N; ++i) {
    const int hi = digit(s[2 * i]), lo = digit(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return true;
}

/// `n` bytes from the kernel's CSPRNG, through getrandom(2) (what /dev/urandom reads, without
/// a file descriptor: it works when a flood of connections has used them all up), falling back
/// to /dev/urandom where getrandom does not exist. Unpredictable with no state of our own to
/// seed, and safe across fork (std::random_device may, by the standard, be a deterministic
/// engine). Throws if neither can be read: never a weak nonce.
inline std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(&out[got], n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<std::size_t>(r);
  }
  if (got == n) return out;
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot read random bytes: " + std::string(std::strerror(errno)));
  while (got < n) {
    const ssize_t r = ::read(fd, &out[got], n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ::close(fd);
      throw std::runtime_error("cannot read /dev/urandom");
    }
    got += static_cast<std::size_t>(r);
  }
  ::close(fd);
  return out;
}

}  // namespace detail
}  // namespace raft
// ---- src/raft/1c_tls.hpp ----

// ============================================================================================
// 1c. TLS, optional: compiled in only with RAFT_OPENSSL_SUPPORT defined (link -lssl -lcrypto)
// ============================================================================================
//
// Without the macro, a connection's Tls is the socket itself and nothing here needs a library.
// With it, and a certificate in raft::Config, every connection on both ports runs TLS
// (OpenSSL 3): the runtime reads and writes each connection through its Tls, and starts it
// when it accepts or connects (section 5). Peers present certificates to each other and
// check them against the CA, both ways; a node connecting to a peer also checks that the
// certificate names the peer's IP address.

#ifdef RAFT_OPENSSL_SUPPORT
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

namespace raft {
namespace detail {

#ifdef RAFT_OPENSSL_SUPPORT
/// `what`, then OpenSSL's queued errors (the queue is emptied).
inline std::string tls_error_text(const std::string& what) {
  std::string s = what;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    s += std::string(": ") + buf;
  }
  return s;
}

/// OpenSSL's socket BIO, but writing with send(MSG_NOSIGNAL): its write() would raise SIGPIPE
/// in the host program when the other side has gone.
inline BIO_METHOD* tls_socket_method() {
  static BIO_METHOD* const method = [] {
    const BIO_METHOD* base = BIO_s_socket();
    BIO_METHOD* m = BIO_meth_new(BIO_TYPE_SOCKET, "raft.hpp socket");
    if (m == nullptr) return m;
    BIO_meth_set_write(m, [](BIO* b, const char* p, int n) -> int {
      const int w = static_cast<int>(::send(static_cast<int>(BIO_get_fd(b, nullptr)), p, static_cast<std::size_t>(n),
                                            MSG_NOSIGNAL));
      BIO_clear_retry_flags(b);
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) BIO_set_retry_write(b);
      return w;
    });
    BIO_meth_set_read(m, BIO_meth_get_read(base));
    BIO_meth_set_puts(m, BIO_meth_get_puts(base));
    BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(base));
    BIO_meth_set_create(m, BIO_meth_get_create(base));
    BIO_meth_set_destroy(m, BIO_meth_get_destroy(base));
    return m;
  }();
  return method;
}

/// An SSL_CTX: this node's certificate and key, and the CA the other side's certificate
/// must chain to.
class TlsContext {
 public:
  /// `verify`: whether the other side must present a certificate (Yes), may (Optional) or
  /// is not asked for one (No). A connecting side always checks the certificate it gets.
  static std::shared_ptr<TlsContext> load(const Config& cfg, TlsAuthClients verify, std::string& error) {
    std::shared_ptr<TlsContext> c(new TlsContext(SSL_CTX_new(TLS_method())));
    SSL_CTX* ctx = c->ctx_;
    if (ctx == nullptr) {
      error = tls_error_text("SSL_CTX_new");
      return nullptr;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    // An EOF without close_notify is an ordinary EOF: RESP frames its own messages, so a
    // cut stream is an unfinished command, never a shorter one.
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    // flush_out writes what the socket takes and keeps the rest in place to try again.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    // No resumption: connections are long-lived, and no session tickets to write after the
    // handshake on a non-blocking socket.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg.tls_cert_file.c_str()) != 1) {
      error = tls_error_text("cannot use the certificate " + cfg.tls_cert_file);
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      error = tls_error_text("cannot use the key " + cfg.tls_key_file);
      return nullptr;
    }
    if (SSL_CTX_load_verify_locations(ctx, cfg.tls_ca_cert_file.c_str(), nullptr) != 1) {
      error = tls_error_text("cannot use the CA certificates " + cfg.tls_ca_cert_file);
      return nullptr;
    }
    if (verify != TlsAuthClients::No) {
      // Names the CA to the other side, which picks its certificate by it.
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(cfg.tls_ca_cert_file.c_str());
      if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);
    }
    SSL_CTX_set_verify(ctx,
                       verify == TlsAuthClients::No ? SSL_VERIFY_NONE
                       : verify == TlsAuthClients::Optional ? SSL_VERIFY_PEER
                                                            : SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
    return c;
  }
  ~TlsContext() { SSL_CTX_free(ctx_); }
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  SSL_CTX* get() const { return ctx_; }

 private:
  explicit TlsContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
};
#endif

/// One connection's TLS session, or none: then recv and send are ::recv and ::send. With a
/// session they behave the same way for the caller (bytes, 0 at the end, or -1 with errno:
/// EAGAIN when it would block, EPROTO when TLS failed, see error()). TLS may need to write
/// to go on reading, or to read to go on writing: events() and ready() translate what a
/// poll loop asks for and gets. Reads into a buffer of at least 16 KiB take a whole record,
/// so nothing stays inside OpenSSL unseen by poll(); a smaller one must check buffered().
/// The socket is the caller's to close.
class Tls {
 public:
  Tls() = default;
  Tls(const Tls&) = delete;
  Tls& operator=(const Tls&) = delete;
  Tls(Tls&& o) noexcept { *this = std::move(o); }
  Tls& operator=(Tls&& o) noexcept {
#ifdef RAFT_OPENSSL_SUPPORT
    std::swap(ssl_, o.ssl_);
    std::swap(read_wants_write_, o.read_wants_write_);
    std::swap(write_wants_read_, o.write_wants_read_);
    std::swap(error_, o.error_);
#else
    (void)o;
#endif
    return *this;
  }
  ~Tls() {
#ifdef RAFT_OPENSSL_SUPPORT
    if (ssl_ != nullptr) SSL_free(ssl_);
#endif
  }

  bool on() const {
#ifdef RAFT_OPENSSL_SUPPORT
    return ssl_ != nullptr;
#else
    return false;
#endif
  }

  ssize_t recv(int fd, char* buf, std::size_t n) {
#ifdef RAFT_OPENSSL_SUPPORT
    if (ssl_ != nullptr) {
      read_wants_write_ = false;
      ERR_clear_error();
      const int r = SSL_read(ssl_, buf, static_cast<int>(std::min<std::size_t>(n, std::numeric_limits<int>::max())));
      return r > 0 ? r : failed(r, read_wants_write_, SSL_ERROR_WANT_WRITE);
    }
#endif
    return ::recv(fd, buf, n, 0);
  }

  ssize_t send(int fd, const char* p, std::size_t n) {
#ifdef RAFT_OPENSSL_SUPPORT
    if (ssl_ != nullptr) {
      write_wants_read_ = false;
      if (n == 0) return 0;
      ERR_clear_error();
      const int r = SSL_write(ssl_, p, static_cast<int>(std::min<std::size_t>(n, std::numeric_limits<int>::max())));
      return r > 0 ? r : failed(r, write_wants_read_, SSL_ERROR_WANT_READ);
    }
#endif
    return ::send(fd, p, n, MSG_NOSIGNAL);
  }

  /// The poll events to ask for when the connection wants `wanted`. A read that waits for a
  /// write waits for POLLOUT instead of POLLIN, and the other way round: asking for what the
  /// socket has already (a client that never finishes its handshake keeps the socket
  /// writable) would wake the poll loop at once, again and again.
  short events(short wanted) const {
#ifdef RAFT_OPENSSL_SUPPORT
    if (read_wants_write_ && (wanted & POLLIN)) wanted = static_cast<short>((wanted & ~POLLIN) | POLLOUT);
    else if (write_wants_read_ && (wanted & POLLOUT)) wanted = static_cast<short>((wanted & ~POLLOUT) | POLLIN);
#endif
    return wanted;
  }
  /// What poll's `revents` mean for the connection: a read or a write may go on.
  short ready(short revents) const {
#ifdef RAFT_OPENSSL_SUPPORT
    if (read_wants_write_ && (revents & POLLOUT)) revents = static_cast<short>(revents | POLLIN);
    if (write_wants_read_ && (revents & POLLIN)) revents = static_cast<short>(revents | POLLOUT);
#endif
    return revents;
  }
  /// Received bytes decrypted and not read yet.
  bool buffered() const {
#ifdef RAFT_OPENSSL_SUPPORT
    return ssl_ != nullptr && SSL_pending(ssl_) > 0;
#else
    return false;
#endif
  }
  /// Why TLS failed (recv or send gave EPROTO, or the handshake failed).
  std::string error() const {
#ifdef RAFT_OPENSSL_SUPPORT
    return error_;
#else
    return "";
#endif
  }

#ifdef RAFT_OPENSSL_SUPPORT
  /// Starts TLS on a connected socket: as the server on an accepted one (the handshake
  /// happens within the first reads and writes), or as the client, which then calls
  /// handshake() until it is done. `expected_ip` (client): the certificate must name it.
  bool begin(const TlsContext& ctx, int fd, bool accepted, const std::string& expected_ip, std::string& error) {
    ERR_clear_error();
    ssl_ = SSL_new(ctx.get());
    BIO* bio = ssl_ != nullptr && tls_socket_method() != nullptr ? BIO_new(tls_socket_method()) : nullptr;
    if (bio == nullptr) {
      error = tls_error_text("SSL_new");
      return false;
    }
    BIO_set_fd(bio, fd, BIO_NOCLOSE);
    SSL_set_bio(ssl_, bio, bio);
    if (accepted) {
      SSL_set_accept_state(ssl_);
    } else {
      SSL_set_connect_state(ssl_);
      if (!expected_ip.empty() && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), expected_ip.c_str()) != 1) {
        error = "cannot check a certificate for the address " + expected_ip;
        return false;
      }
    }
    return true;
  }
  /// One step of the handshake: 0 done, POLLIN or POLLOUT to wait for, -1 failed (error():
  /// "TLS: ..." when TLS refused, the certificate for instance; else the connection was lost).
  int handshake() {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) return 0;
    bool unused = false;
    if (failed(r, unused, 0) == 0) errno = ECONNRESET;
    if (errno == EAGAIN) return SSL_get_error(ssl_, r) == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
    if (errno != EPROTO) error_ = "connection lost during the TLS handshake: " + std::string(std::strerror(errno));
    return -1;
  }
#endif

 private:
#ifdef RAFT_OPENSSL_SUPPORT
  // SSL_read's or SSL_write's result r <= 0 as ::recv's or ::send's; `other` is set when
  // OpenSSL wants `other_wait` (a write to read on, a read to write on).
  ssize_t failed(int r, bool& other, int other_wait) {
    const int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      other = e == other_wait;
      errno = EAGAIN;
      return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
      if (errno == 0) errno = ECONNRESET;
      return -1;
    }
    const long verified = SSL_get_verify_result(ssl_);
    error_ = tls_error_text("TLS");
    if (verified != X509_V_OK) error_ += std::string(" (") + X509_verify_cert_error_string(verified) + ")";
    errno = EPROTO;
    return -1;
  }

  SSL* ssl_ = nullptr;
  bool read_wants_write_ = false;
  bool write_wants_read_ = false;
  std::string error_;
#endif
};

}  // namespace detail
}  // namespace raft
// ---- src/raft/2_store.hpp ----

// ============================================================================================
// 2. The store: the replicated data, its snapshot text, the built-in commands
// ============================================================================================

namespace raft {

namespace detail {

class LiteralReader;

/// At-most-once forwarded writes: what the leader remembers, through the log, of the writes
/// each follower forwarded. LogCabin's client sessions are the model, with the forwarding node
/// as the client. Part of the replicated state (Store::sessions()), so deterministic: every
/// node feeds it the same entries with the same leader timestamps and decides alike.
///
/// A follower tags each write it forwards with its session - (node id, server id, a nonce
/// drawn at each start: one run of one data directory) - a sequence number, and the lowest
/// sequence number it still waits for an answer to. The leader appends the write wrapped with
/// these (section 5), and each node, when it applies the entry, asks begin():
///   - a sequence number whose reply is kept is a Duplicate (the follower sent it again after
///     a reconnect or to a new leader): it does not run again; the kept reply is the answer;
///   - one below the lowest unanswered is Stale (the follower answered its caller already, or
///     the reply was dropped for memory): it does not run;
///   - otherwise it runs (Apply), and record() keeps its reply until an entry of the same
///     session says the follower no longer waits for it (its lowest unanswered passed it).
///
/// Memory is bounded by constants, not by Config (every node must decide alike):
///   - at most kMaxSessions sessions: a new one is refused while that many are kept (Full:
///     this entry does not run; a later copy of the write may, once sessions expired, so the
///     follower is told "not run here" and decides what it can promise its caller);
///   - a session is forgotten kIdleMs of session time after its last entry. Session time is
///     the entries' leader time with every step between two entries capped at
///     kMaxClockStepMs: a leader's clock that jumps forward by hours (or a new leader whose
///     clock is far ahead) moves it by at most that much, where leader time itself would
///     forget every session at once while copies of their writes may still be on the way (the
///     Jepsen-style suite found a forwarded INCR applied twice that way). A follower stops
///     sending a forward within kMaxForwardWaitMs (section 5) of real time, in which session
///     time passes by that much and each clock jump adds at most kMaxClockStepMs: no copy of a
///     write the table forgot can reach the log unless the leaders' clocks jump forward
///     several times within a minute, or a message waits in a socket for minutes;
///   - kept replies total at most kMaxReplyBytes, counting kReplyOverheadBytes for each: beyond
///     that, the session with the most bytes loses its oldest reply, and its lowest unanswered
///     moves past it (a copy arriving later is Stale: its caller learns the outcome is unknown).
/// In all, at most kMaxReplyBytes of replies and kMaxSessions records of a few words each.
class SessionTable {
 public:
  /// One run of a forwarding node.
  struct Key {
    NodeId node;
    std::string server_id;
    std::uint64_t nonce = 0;

    bool operator<(const Key& o) const {
      if (node != o.node) return node < o.node;
      if (server_id != o.server_id) return server_id < o.server_id;
      return nonce < o.nonce;
    }
    bool operator==(const Key& o) const {
      return node == o.node && server_id == o.server_id && nonce == o.nonce;
    }
  };
  enum class Verdict : std::uint8_t {
    Apply,      // run it, then record() its reply
    Duplicate,  // it ran before: `reply` is the reply it had
    Stale,      // below the session's lowest unanswered: not run
    Full,       // a new session while kMaxSessions are kept: not run
  };

  static constexpr std::int64_t kIdleMs = 10 * 60 * 1000;
  static constexpr std::int64_t kMaxClockStepMs = kIdleMs / 10;
  static constexpr std::size_t kMaxSessions = 4096;
  static constexpr std::size_t kMaxReplyBytes = std::size_t{64} << 20;
  static constexpr std::size_t kReplyOverheadBytes = 64;

  /// Decides what to do with forwarded write `seq` of session `key`, applied at the entry's
  /// leader timestamp stamp_ms. Observes the stamp first (forgetting idle sessions), and
  /// forgets the session's replies below `lowest_unanswered`; a Duplicate's reply is copied
  /// into `reply`.
  Verdict begin(const Key& key, std::uint64_t seq, std::uint64_t lowest_unanswered,
                std::int64_t stamp_ms, std::string& reply);
  /// After begin() said Apply: keeps the write's reply (RESP3-encoded) for `seq`.
  void record(const Key& key, std::uint64_t seq, std::string reply);
  /// An entry stamped stamp_ms is applied (every command entry, so that session time follows
  /// the log): session time advances by the step since the last stamp, at most
  /// kMaxClockStepMs (a fresh table starts at the first stamp), and the sessions idle for
  /// kIdleMs of session time are forgotten. Stamps at or before the last one change nothing.
  void observe(std::int64_t stamp_ms);
  /// Session time, and the last stamp observed (kept in snapshots).
  std::int64_t clock_ms() const { return clock_ms_; }
  std::int64_t last_stamp_ms() const { return last_stamp_ms_; }
  /// Restoring: session time and the last stamp (from a snapshot; a snapshot of format 3 has
  /// neither, and its sessions' times are leader times: both are its timestamp then).
  void set_clock(std::int64_t clock_ms, std::int64_t last_stamp_ms) {
    clock_ms_ = clock_ms;
    last_stamp_ms_ = last_stamp_ms;
  }

  std::size_t size() const { return sessions_.size(); }
  bool empty() const { return sessions_.empty(); }
  /// The kept replies' bytes, with kReplyOverheadBytes each.
  std::size_t reply_bytes() const { return bytes_; }
  /// The kept reply of `seq`, if any (tests, diagnostics).
  const std::string* reply(const Key& key, std::uint64_t seq) const;
  /// f(const Key&, std::uint64_t lowest, std::int64_t active_ms, const std::map<std::uint64_t,
  /// std::string>& replies) for each session, in key order.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& [key, s] : sessions_) f(key, s.lowest, s.active_ms, s.replies);
  }

  /// The same sessions (session time aside: every command entry moves it).
  bool operator==(const SessionTable& o) const { return sessions_ == o.sessions_; }
  bool operator!=(const SessionTable& o) const { return !(*this == o); }

  /// The snapshot's 'sessions' value: a list of {'node': str, 'server_id': str, 'nonce': int,
  /// 'lowest': int, 'active': int (ms), 'replies': {seq: reply, ...}}, in key order.
  void write(std::string& out) const;
  /// Reads write()'s text; replaces the table only on success.
  bool read(LiteralReader& r);

 private:
  struct Session {
    std::uint64_t lowest = 0;    // the follower waits for nothing below this
    std::int64_t active_ms = 0;  // the session time of its last entry
    std::map<std::uint64_t, std::string> replies;  // seq -> reply, every seq >= lowest
    std::size_t bytes = 0;                         // of its replies, with the overhead

    bool operator==(const Session& o) const {
      return lowest == o.lowest && active_ms == o.active_ms && replies == o.replies;
    }
  };
  using Sessions = std::map<Key, Session>;

  Sessions sessions_;
  std::set<std::pair<std::int64_t, Key>> by_activity_;  // (active_ms, key) of every session
  std::size_t bytes_ = 0;
  std::int64_t clock_ms_ = 0;       // session time (observe())
  std::int64_t last_stamp_ms_ = 0;  // the last entry stamp observed; 0: none yet

  static std::size_t cost(const std::string& reply) { return reply.size() + kReplyOverheadBytes; }
  void expire(std::int64_t now_ms);
  Sessions::iterator add(const Key& key, std::int64_t now_ms);
  void touch(Sessions::iterator it, std::int64_t now_ms);
  void advance(Sessions::iterator it, std::uint64_t lowest);
  void shed_replies();
};

/// A value on the heap behind one pointer, copied deeply: Store::Object keeps the containers of
/// its rarer kinds (sets, sorted sets) here, so that a string key pays one null pointer for
/// them rather than their empty headers.
template <class T>
class Boxed {
 public:
  Boxed() = default;
  Boxed(const Boxed& o) : p_(o.p_ ? std::make_unique<T>(*o.p_) : nullptr) {}
  Boxed(Boxed&&) noexcept = default;
  Boxed& operator=(const Boxed& o) {
    if (this != &o) p_ = o.p_ ? std::make_unique<T>(*o.p_) : nullptr;
    return *this;
  }
  Boxed& operator=(Boxed&&) noexcept = default;

  T* get() const { return p_.get(); }
  template <class... Args>
  T& emplace(Args&&... args) {
    p_ = std::make_unique<T>(std::forward<Args>(args)...);
    return *p_;
  }

 private:
  std::unique_ptr<T> p_;
};

}  // namespace detail

/// The replicated data: strings, hashes and lists (pyraft's types), sets and sorted sets, each
/// key with an optional deadline in ms since the epoch.
///
/// Ordered containers throughout: a snapshot must be the same text on every node, and keys
/// and hash fields kept sorted give that without sorting at snapshot time (KEYS answers in
/// key order too). The price is an O(log n) lookup instead of a hash table's O(1): about
/// twenty node visits at a million keys. Measured at a million keys, std::map found a key in
/// about the time std::unordered_map did (360 vs 670 ns, cache misses dominate both), and a
/// handler-level SET costs under 2 us: small beside the log write and the round trip of a
/// replicated command.
///
/// Expiry: reads (find) hide a key whose deadline is at or before their `now`, and never
/// delete. Only write handlers delete, through check_ttl / find_for_write, with the entry's
/// leader timestamp as `now`, so every node deletes at the same point of the log.
///
/// Beside the keys it holds the runtime's memory of forwarded writes (sessions()), which is
/// replicated state too: snapshots carry it.
///
/// Atomic writes: the runtime brackets a write handler with begin_undo() and commit_undo(), and
/// a handler that throws has its changes undone (rollback_undo()), so that it changed nothing
/// on any node. The record costs nothing for a key the handler replaces (put) or deletes (the
/// old value is moved into it), and a copy of the value for a key whose object it changes in
/// place (find_for_write): proportional to that value's size. The built-in commands need no
/// record (they return every error before their first change and throw nothing but
/// std::bad_alloc) and run without one.
///
/// Not thread-safe; copyable (the runtime copies it under its lock and serializes the copy
/// elsewhere).
class Store {
 public:
  enum class Kind : std::uint8_t { String, Hash, List, Set, SortedSet };
  using Hash = std::map<std::string, std::string, std::less<>>;
  /// std::list rather than std::deque: an empty std::deque allocates its block map and first
  /// block (about 600 bytes in libstdc++), which every string key would pay for. Indexing is
  /// O(n), as it is in Redis (LINDEX, LSET); both ends are O(1).
  using List = std::list<std::string>;
  /// Members in bytewise order (Redis's order is its hash table's: unspecified).
  using Set = std::set<std::string, std::less<>>;

  /// A sorted set: each member's score, and the members in Redis's order (by score, then
  /// bytewise by member). The order points at the score map's keys (a map's nodes never move),
  /// so each member is stored once. Ranks cost O(rank) (a skip list's would be O(log n)).
  /// Scores are never NaN (every command refuses one).
  class SortedSet {
   public:
    using Scores = std::map<std::string, double, std::less<>>;
    struct Entry {
      double score;
      const std::string* member;
    };
    /// (score, member) order; a bare double compares with the score alone, so that
    /// lower_bound(x) / upper_bound(x) find the first score >= x / > x.
    struct ByScore {
      using is_transparent = void;
      bool operator()(const Entry& a, const Entry& b) const {
        if (a.score != b.score) return a.score < b.score;
        return *a.member < *b.member;
      }
      bool operator()(const Entry& a, double b) const { return a.score < b; }
      bool operator()(double a, const Entry& b) const { return a < b.score; }
    };
    using Order = std::set<Entry, ByScore>;

    SortedSet() = default;
    SortedSet(const SortedSet& o) : scores_(o.scores_) {
      for (const auto& [member, score] : scores_) order_.insert(order_.end(), Entry{score, &member});
    }
    SortedSet(SortedSet&&) noexcept = default;
    SortedSet& operator=(SortedSet o) noexcept {
      scores_.swap(o.scores_);
      order_.swap(o.order_);
      return *this;
    }

    std::size_t size() const { return scores_.size(); }
    bool empty() const { return scores_.empty(); }
    const Scores& scores() const { return scores_; }
    const Order& order() const { return order_; }
    /// The member's score, or null.
    const double* score(std::string_view member) const {
      const auto it = scores_.find(member);
      return it == scores_.end() ? nullptr : &it->second;
    }
    /// Adds the member or changes its score; true if it was added.
    bool set(std::string_view member, double score) {
      auto it = scores_.find(member);
      const bool added = it == scores_.end();
      if (added) {
        it = scores_.emplace_hint(it, std::string(member), score);
      } else {
        if (it->second == score) return false;
        order_.erase(Entry{it->second, &it->first});
        it->second = score;
      }
      order_.insert(Entry{score, &it->first});
      return added;
    }
    bool erase(std::string_view member) {
      const auto it = scores_.find(member);
      if (it == scores_.end()) return false;
      order_.erase(Entry{it->second, &it->first});
      scores_.erase(it);
      return true;
    }
    /// The member's 0-based rank in score order.
    std::size_t rank(std::string_view member) const {
      const auto it = scores_.find(member);
      return static_cast<std::size_t>(std::distance(order_.begin(), order_.find(Entry{it->second, &it->first})));
    }

    bool operator==(const SortedSet& o) const { return scores_ == o.scores_; }
    bool operator!=(const SortedSet& o) const { return !(*this == o); }

   private:
    Scores scores_;
    Order order_;
  };

  struct Object {
    Kind kind = Kind::String;
    std::string str;  // Kind::String
    Hash hash;        // Kind::Hash; never empty while stored (an emptied hash is deleted)
    List list;        // Kind::List; never empty while stored
    /// A hash's, list's, set's or sorted set's elements as used_memory() counts them
    /// (kHashEntryBytes, kListEntryBytes, kSetEntryBytes or kSortedSetEntryBytes each, with
    /// their strings' sizes). Kept by the write handlers that change the elements in place
    /// (grew(), shrank()); not compared.
    std::size_t element_bytes = 0;

    /// Kind::Set's members, made empty on first use; never empty while stored. Behind one
    /// pointer, as the sorted set: other kinds pay 8 bytes for them.
    Set& set() { return boxed<Set>(); }
    /// Kind::SortedSet's members; never empty while stored.
    SortedSet& zset() { return boxed<SortedSet>(); }
    /// Empty when the object holds none.
    const Set& set() const { return boxed<Set>(); }
    const SortedSet& zset() const { return boxed<SortedSet>(); }

    bool operator==(const Object& o) const {
      return kind == o.kind && str == o.str && hash == o.hash && list == o.list &&
             (kind != Kind::Set || set() == o.set()) && (kind != Kind::SortedSet || zset() == o.zset());
    }
    bool operator!=(const Object& o) const { return !(*this == o); }

   private:
    using Boxed = std::variant<Set, SortedSet>;
    detail::Boxed<Boxed> boxed_;

    template <class T>
    T& boxed() {
      Boxed* b = boxed_.get();
      if (b == nullptr) return std::get<T>(boxed_.emplace(std::in_place_type<T>));
      if (!std::holds_alternative<T>(*b)) b->template emplace<T>();
      return std::get<T>(*b);
    }
    template <class T>
    const T& boxed() const {
      static const T none;
      const Boxed* b = boxed_.get();
      return b != nullptr && std::holds_alternative<T>(*b) ? std::get<T>(*b) : none;
    }
  };

  // ---- reads: hide keys whose deadline is at or before now_ms; never delete ----
  const Object* find(std::string_view key, std::int64_t now_ms) const;
  /// Keys not hidden at now_ms (DBSIZE). Costs O(number of keys already past their deadline).
  std::size_t live_size(std::int64_t now_ms) const;

  // ---- writes (inside write handlers; now_ms is the entry's leader timestamp) ----
  /// Deletes `key` if its deadline is at or before now_ms; true if it did. Proposed by the
  /// leader for background expiry, it is the conditional delete: a key renewed since survives.
  bool check_ttl(std::string_view key, std::int64_t now_ms);
  /// check_ttl, then the key's object (nullptr if absent).
  Object* find_for_write(std::string_view key, std::int64_t now_ms);
  /// Creates the key, or replaces its value, as an empty object of `kind` with no deadline.
  /// The caller fills it (a hash or list left empty must not stay: erase it).
  Object& put(std::string_view key, Kind kind);
  bool erase(std::string_view key);
  /// Removes the key's deadline: it no longer expires.
  void clear_ttl(std::string_view key);
  /// Sets the key's deadline; false (and nothing changes) if the key does not exist.
  bool set_deadline(std::string_view key, std::int64_t deadline_ms);
  std::optional<std::int64_t> deadline(std::string_view key) const;

  /// Keys whose deadline is at or before now_ms, earliest first, at most `limit`: the leader
  /// proposes a check_ttl entry for each. Costs O(limit + log n).
  std::vector<std::string> due(std::int64_t now_ms, std::size_t limit) const;

  /// Every key, expired or not.
  std::size_t size() const { return objects_.size(); }
  /// Keys with a TTL, expired or not (INFO's expires=).
  std::size_t volatile_keys() const { return expiry_.size(); }

  // ---- SCAN's order (detail::scan_step explains the cursor) ----
  /// One SCAN step over the keys: f(key, object, deadline) for the keys whose
  /// detail::scan_hash is at or above `cursor`, in hash order, at least `count` of them (past
  /// their deadline or not: f decides) and every key sharing the last one's hash. Returns the
  /// next cursor: the hash of the first key not visited, 0 when none is left. O(log n + count).
  template <class F>
  std::uint64_t scan(std::uint64_t cursor, std::size_t count, F&& f) const;
  /// RANDOMKEY: the first key not hidden at now_ms at or after `hash` in SCAN's order (going
  /// round to the start), nullptr if there is none. O(log n) plus the hidden keys it passes.
  const std::string* key_near_hash(std::uint64_t hash, std::int64_t now_ms) const;

  // ---- memory (maxmemory): an estimate kept as writes go, O(1) per changed key ----
  /// What a key costs beside its value (the map node, the strings' and object's headers, WATCH's
  /// stamp (modified_index()), and
  /// SCAN's index entry: a tree node of 80 bytes with the key's hash and a copy of the key,
  /// which counts the key's size a second time), and what each element of a hash or list costs
  /// beside its strings: estimates for libstdc++.
  static constexpr std::size_t kKeyBytes = 232 + 80;
  static constexpr std::size_t kHashEntryBytes = 112;
  static constexpr std::size_t kListEntryBytes = 64;
  /// A set member: a tree node with its string. A sorted set member: a map node with its
  /// string and score, and an order node with the score and a pointer.
  static constexpr std::size_t kSetEntryBytes = 80;
  static constexpr std::size_t kSortedSetEntryBytes = 144;
  /// Estimated bytes of the data: per key kKeyBytes, the key, and its string's size or its
  /// elements' (Object::element_bytes). A write handler that changes a hash or list in place
  /// keeps element_bytes with grew() and shrank(); strings need nothing.
  std::size_t used_memory() const;
  static void grew(Object& o, std::size_t bytes) { o.element_bytes += bytes; }
  static void shrank(Object& o, std::size_t bytes) { o.element_bytes -= std::min(o.element_bytes, bytes); }
  /// Counts the keys the last writes changed (the runtime calls it after each write).
  void settle_memory();
  bool empty() const { return objects_.empty(); }
  /// Deletes every key (the sessions stay).
  void clear();
  /// f(const std::string& key, const Object&, std::optional<std::int64_t> deadline), in key
  /// order (bytewise), including keys past their deadline.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& [key, record] : objects_) f(key, record.object, record.deadline);
  }

  bool operator==(const Store& o) const {
    return objects_ == o.objects_ && sessions_ == o.sessions_ && tombstones_ == o.tombstones_ &&
           forgotten_index_ == o.forgotten_index_;
  }
  bool operator!=(const Store& o) const { return !(*this == o); }

  // ---- atomic writes (see the class comment) ----
  /// From now on, records the prior value and deadline of each key before its first change.
  void begin_undo();
  /// The write completed: forgets the record and stops recording.
  void commit_undo();
  /// Puts back every key the write changed, value and deadline, and stops recording.
  void rollback_undo();

  // ---- WATCH: where each key last changed (replicated state: snapshots carry it) ----
  /// The log index of the entry being applied (the runtime sets it before each write): every
  /// key a write puts, finds for writing, deletes or gives a deadline from now on is stamped
  /// with it. 0 (a store used outside a node): nothing is stamped.
  void set_write_index(std::uint64_t index) { write_index_ = index; }
  /// The index of the last entry that changed `key` (found for writing counts: a write that
  /// looked and left it alone stamps it too); 0 if none did, or the key is absent.
  std::uint64_t modified_index(std::string_view key) const {
    const auto it = objects_.find(key);
    return it == objects_.end() ? 0 : it->second.modified;
  }
  /// The index of the last entry that deleted `key` (expiry and FLUSH included), as far as
  /// the store remembers: it keeps the latest kMaxTombstones deleted keys' stamps, and for
  /// any other key answers the latest stamp it forgot (an index never below the true one).
  std::uint64_t deleted_index(std::string_view key) const {
    const auto it = tombstones_.find(key);
    return std::max(forgotten_index_, it == tombstones_.end() ? 0 : it->second);
  }
  /// Deleted keys whose stamps are kept (each counted in used_memory(): kTombstoneBytes and
  /// twice the key); beyond that the oldest is forgotten into one index.
  static constexpr std::size_t kMaxTombstones = 10000;
  static constexpr std::size_t kTombstoneBytes = 176;

  // ---- the runtime's: forwarded writes applied at most once (handlers leave it alone) ----
  detail::SessionTable& sessions() { return sessions_; }
  const detail::SessionTable& sessions() const { return sessions_; }

  // ---- snapshot text (Python repr() layout; ast.literal_eval reads it) ----
  /// Appends `{'_META_': {'format': 4, 'index': I, 'term': T, 'timestamp': MS, 'members': [...]},
  /// 'data': {...}, 'ttl': {...}, 'sessions': [...], 'session_clock': [MS, MS]}` to `out`
  /// ('sessions', 'session_clock': see detail::SessionTable). Keys and hash fields in bytewise order; the same store and
  /// meta always give the same text. Strings that are valid UTF-8 are written as str literals,
  /// others as bytes literals, escaped exactly as Python's repr(). Values: a str or bytes (a
  /// string), a dict of strings (a hash), a list (a list), a set of strings (a set: {'a', 'b'})
  /// and a dict of member -> float score (a sorted set: {'a': 1.5, 'b': 1e999}); with a set or
  /// a sorted set in the data the format is 5 (see detail::write_set_literal), else 4. WATCH's
  /// stamps follow when there are any: `'modified': [FORGOTTEN, {key: INDEX}, {deleted key:
  /// INDEX}]` (write_stamps()); a store without them writes the text above unchanged.
  void write_snapshot(std::string& out, const SnapshotMeta& meta) const;
  /// Parses write_snapshot's formats (5 and 4), format 3 (no 'session_clock'), format 2 (no 'sessions':
  /// the table is empty), format 1
  /// (nor 'timestamp': meta.timestamp_ms is 0), and any Python literal text of the same shape.
  /// On success replaces `data` and `meta`; on failure leaves them unchanged and sets `error`
  /// ("invalid snapshot at byte N: expected ...").
  static bool read_snapshot(std::string_view text, Store& data, SnapshotMeta& meta,
                            std::string& error);
  /// Parses pyraft's checkpoint (.dat) layout: user keys at the top level beside 'ttl'
  /// (key -> seconds since the epoch, int or float) and '_META_' (checked to be a dict,
  /// otherwise ignored). Values: str -> string, dict of str -> hash, list of str -> list; empty
  /// containers are dropped; anything else (pyraft's tree data, numbers) is an error naming the
  /// key. Deadlines are rounded up to the next ms. Replaces `data` only on success.
  static bool read_pyraft_snapshot(std::string_view text, Store& data, std::string& error);

 private:
  void write_stamps(std::string& out) const;
  struct Record {
    Object object;
    std::optional<std::int64_t> deadline;
    std::size_t counted = 0;  // the bytes used_ counts for this key (settle_memory())
    std::uint64_t modified = 0;  // modified_index()
    bool operator==(const Record& o) const {
      return object == o.object && deadline == o.deadline && modified == o.modified;
    }
  };
  /// Orders (deadline, key) and (scan hash, key) pairs; transparent so a lookup can use a
  /// string_view key.
  struct ExpiryLess {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      if (a.first != b.first) return a.first < b.first;
      return std::string_view(a.second) < std::string_view(b.second);
    }
  };
  using Objects = std::map<std::string, Record, std::less<>>;
  /// (scan_hash(key), key) for every key: SCAN's order, independent of the other keys.
  using ScanOrder = std::set<std::pair<std::uint64_t, std::string>, ExpiryLess>;

  /// A key's state before the write being recorded first changed it.
  struct Undo {
    bool existed = false;
    std::optional<std::int64_t> deadline;
    std::optional<Object> object;  // set once the object changed or went away
  };

  Objects objects_;
  /// (deadline, key) for every key with a deadline: due() reads it from the front.
  std::set<std::pair<std::int64_t, std::string>, ExpiryLess> expiry_;
  ScanOrder scan_order_;
  detail::SessionTable sessions_;
  std::uint64_t write_index_ = 0;  // set_write_index()
  // deleted_index(): the stamps of deleted keys, by key and oldest first, and the latest
  // stamp forgotten (evicted, or every key at once by clear()).
  std::map<std::string, std::uint64_t, std::less<>> tombstones_;
  std::set<std::pair<std::uint64_t, std::string>, ExpiryLess> tombstone_order_;
  std::uint64_t forgotten_index_ = 0;
  std::size_t tombstone_bytes_ = 0;
  bool recording_ = false;
  std::map<std::string, Undo, std::less<>> undo_;
  std::size_t used_ = 0;             // the sum of every Record::counted
  std::vector<std::string> opened_;  // keys put or found for writing since settle_memory()

  static std::size_t cost(const std::string& key, const Object& o) {
    return kKeyBytes + 2 * key.size() + (o.kind == Kind::String ? o.str.size() : o.element_bytes);
  }
  void opened(std::string_view key) {
    if (opened_.empty() || opened_.back() != key) opened_.emplace_back(key);
  }
  void stamp(Objects::iterator it) {
    if (write_index_ != 0) it->second.modified = write_index_;
  }
  void bury(std::string_view key);
  void unbury(std::string_view key);
  void forget_tombstones(std::uint64_t index) {
    forgotten_index_ = std::max(forgotten_index_, index);
    tombstones_.clear();
    tombstone_order_.clear();
    tombstone_bytes_ = 0;
  }
  /// Counts every key and element from scratch, and rebuilds SCAN's index (after loading a
  /// snapshot).
  void recount_memory();

  static bool expired(const Record& r, std::int64_t now_ms) {
    return r.deadline && *r.deadline <= now_ms;
  }
  void drop_deadline(Objects::iterator it);
  void erase(Objects::iterator it);
  /// While recording: the key's record, made on its first change (it = objects_.end() when
  /// the key does not exist).
  Undo* remember(std::string_view key, Objects::iterator it);
  /// While recording: keeps the key's object before it changes in place (a copy) or goes
  /// away (moved, when `moving`), once.
  void keep_object(std::string_view key, Objects::iterator it, bool moving);
};

/// Registers the built-in Redis commands (strings, keys and expiry, hashes, lists, sets,
/// sorted sets) with Redis's semantics and replies. Entries already in the table are kept, so a program can
/// replace a built-in by registering its own first (or by overwriting it afterwards).
inline void add_builtin_commands(CommandTable& table);

inline bool Call::check_ttl(std::string_view key) { return data.check_ttl(key, now_ms); }
inline void Call::clear_ttl(std::string_view key) { data.clear_ttl(key); }

}  // namespace raft

// --------------------------------------------------------------------------------------------
// Implementation of section 2
// --------------------------------------------------------------------------------------------

namespace raft::detail {

/// The snapshot text's format ('format' in _META_). 1: the first release; 2: adds
/// 'timestamp'; 3: adds 'sessions' (forwarded writes, SessionTable); 4: adds 'session_clock'
/// ([session time, last stamp]: sessions' times are session time, not leader time). Every
/// older format stays readable; each change bumps it.
constexpr std::int64_t kSnapshotFormat = 4;
/// 5: format 4 with sets and sorted sets in 'data' (write_set_literal). Written only when the
/// data holds one, so that a snapshot without them stays format 4's text.
constexpr std::int64_t kSnapshotFormatWithSets = 5;

// ---- the limits of one command ----
//
// The same on every node, and checked before a write is proposed: on the node a client sent it
// to, and again on the leader for a forwarded one. Never at apply: a node parses an entry of
// its log without limits, so a committed entry can always be applied, whatever limits the node
// that proposed it had. Below the peer protocol's limits (section 5: a bulk of 1 GiB, 16M
// words), which a forwarded write and an entry must fit in. A client's own limits
// (Config::client_limits) may be lower: its parser refuses first.

/// Redis's proto-max-bulk-len: the longest argument (and the longest string APPEND makes).
constexpr std::size_t kProtoMaxBulkLen = std::size_t{512} << 20;
/// Words of one write, its name included (resp::Limits' default multibulk length).
constexpr std::size_t kMaxCommandWords = std::size_t{1} << 20;
/// One write RESP-encoded, as a log entry holds it (1 GiB less 1 MiB: room for the wrapping
/// of a forwarded write within the peer protocol's 1 GiB bulk).
constexpr std::size_t kMaxCommandBytes = (std::size_t{1} << 30) - (std::size_t{1} << 20);

struct CommandLimits {
  std::size_t max_words = kMaxCommandWords;
  std::size_t max_word_bytes = kProtoMaxBulkLen;
  std::size_t max_bytes = kMaxCommandBytes;
};

/// Empty if `words` may be proposed, else the error reply's text. (Other limits: tests.)
inline std::string command_limit_error(const std::vector<std::string>& words, const CommandLimits& limits = {}) {
  if (words.size() > limits.max_words)
    return "ERR too many arguments: a write may have at most " + std::to_string(limits.max_words - 1) +
           " (it has " + std::to_string(words.size() - 1) + "); it was not run";
  const auto digits = [](std::size_t n) { return std::to_string(n).size(); };
  std::size_t bytes = 3 + digits(words.size());  // *N\r\n
  for (const auto& w : words) {
    if (w.size() > limits.max_word_bytes)
      return "ERR an argument of " + std::to_string(w.size()) + " bytes is longer than proto-max-bulk-len (" +
             std::to_string(limits.max_word_bytes) + "); the write was not run";
    bytes += 5 + digits(w.size()) + w.size();  // $N\r\n...\r\n
  }
  if (bytes > limits.max_bytes)
    return "ERR the write is " + std::to_string(bytes) + " bytes; the limit for one command is " +
           std::to_string(limits.max_bytes) + "; it was not run";
  return "";
}

// ---- Python repr() of a string: str literal when valid UTF-8, bytes literal otherwise ----

/// Length of the strict UTF-8 sequence at s[i] (as Python's decoder: no overlong forms, no
/// surrogates, nothing above U+10FFFF) and its code point; 0 if invalid.
inline std::size_t utf8_sequence(std::string_view s, std::size_t i, char32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  const std::size_t left = s.size() - i;
  const auto cont = [&](std::size_t k) { return k < left && (byte(i + k) & 0xC0) == 0x80; };
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (!cont(1)) return 0;
    cp = (char32_t(b0 & 0x1F) << 6) | (byte(i + 1) & 0x3F);
    return 2;
  }
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    cp = (char32_t(b0 & 0x0F) << 12) | (char32_t(byte(i + 1) & 0x3F) << 6) | (byte(i + 2) & 0x3F);
    if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    cp = (char32_t(b0 & 0x07) << 18) | (char32_t(byte(i + 1) & 0x3F) << 12) |
         (char32_t(byte(i + 2) & 0x3F) << 6) | (byte(i + 3) & 0x3F);
    if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    return 4;
  }
  return 0;
}

inline bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    char32_t cp;
    const std::size_t n = utf8_sequence(s, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Whether Python's repr() writes a non-ASCII code point raw (str.isprintable()). The table
/// holds the non-printable ranges above U+007F: categories Cc, Cf, Zs, Zl, Zp, Co, Cs (from
/// Unicode 14, Python 3.11), the noncharacters, and the planes with nothing assigned (4-13).
/// Unassigned code points elsewhere are written raw, where Python escapes them; either form
/// reads back as the same string.
inline bool is_printable_non_ascii(char32_t cp) {
  static constexpr std::array<std::pair<char32_t, char32_t>, 31> kNonPrintable{{
      {0x80, 0xA0},       {0xAD, 0xAD},       {0x600, 0x605},     {0x61C, 0x61C},
      {0x6DD, 0x6DD},     {0x70F, 0x70F},     {0x890, 0x891},     {0x8E2, 0x8E2},
      {0x1680, 0x1680},   {0x180E, 0x180E},   {0x2000, 0x200F},   {0x2028, 0x202F},
      {0x205F, 0x2064},   {0x2066, 0x206F},   {0x3000, 0x3000},   {0xD800, 0xF8FF},
      {0xFDD0, 0xFDEF},   {0xFEFF, 0xFEFF},   {0xFFF9, 0xFFFB},   {0xFFFE, 0xFFFF},
      {0x110BD, 0x110BD}, {0x110CD, 0x110CD}, {0x13430, 0x13438}, {0x1BCA0, 0x1BCA3},
      {0x1D173, 0x1D17A}, {0x1FFFE, 0x1FFFF}, {0x2FFFE, 0x2FFFF}, {0x3FFFE, 0xDFFFF},
      {0xE0001, 0xE0001}, {0xE0020, 0xE007F}, {0xEFFFE, 0x10FFFF},
  }};
  auto it = std::upper_bound(kNonPrintable.begin(), kNonPrintable.end(), cp,
                             [](char32_t c, const std::pair<char32_t, char32_t>& r) {
                               return c < r.first;
                             });
  if (it == kNonPrintable.begin()) return true;
  --it;
  return cp > it->second;
}

inline void append_hex_escape(std::string& out, char kind, std::uint32_t value, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '\\';
  out += kind;
  for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4) out += kHex[(value >> shift) & 0xF];
}

/// Appends s as Python's repr() writes it: 'text' when s is valid UTF-8, b'...' otherwise.
inline void append_repr(std::string& out, std::string_view s) {
  const bool text = is_valid_utf8(s);
  const bool squote = s.find('\'') != std::string_view::npos;
  const bool dquote = s.find('"') != std::string_view::npos;
  const char quote = (squote && !dquote) ? '"' : '\'';
  out.reserve(out.size() + s.size() + 3);
  if (!text) out += 'b';
  out += quote;
  std::size_t i = 0;
  while (i < s.size()) {
    // Copy runs of characters that need no escape in one append.
    std::size_t run = i;
    while (run < s.size()) {
      const unsigned char c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c >= 0x7F || c == '\\' || c == static_cast<unsigned char>(quote)) break;
      ++run;
    }
    out.append(s.data() + i, run - i);
    i = run;
    if (i >= s.size()) break;
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\' || c == static_cast<unsigned char>(quote)) {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\t') {
      out += "\\t";
      ++i;
    } else if (c == '\n') {
      out += "\\n";
      ++i;
    } else if (c == '\r') {
      out += "\\r";
      ++i;
    } else if (c < 0x80 || !text) {
      append_hex_escape(out, 'x', c, 2);
      ++i;
    } else {
      char32_t cp = 0;
      const std::size_t n = utf8_sequence(s, i, cp);  // valid: checked above
      if (is_printable_non_ascii(cp))
        out.append(s.data() + i, n);
      else if (cp <= 0xFF)
        append_hex_escape(out, 'x', cp, 2);
      else if (cp <= 0xFFFF)
        append_hex_escape(out, 'u', cp, 4);
      else
        append_hex_escape(out, 'U', cp, 8);
      i += n;
    }
  }
  out += quote;
}

inline std::string repr(std::string_view s) {
  std::string out;
  append_repr(out, s);
  return out;
}

/// A key as error messages show it: its repr, cut to a readable length.
inline std::string key_for_error(std::string_view key) {
  constexpr std::size_t kMax = 64;
  if (key.size() <= kMax) return repr(key);
  std::size_t cut = kMax;
  // Cut at a character boundary so a UTF-8 key stays a str literal.
  while (cut > 0 && (static_cast<unsigned char>(key[cut]) & 0xC0) == 0x80) --cut;
  return repr(key.substr(0, cut)) + "...";
}

// ---- a strict reader for the Python literal subset snapshots use ----

/// Reads dict, list, tuple, str and bytes literals, int, float, True, False and None, as
/// ast.literal_eval would, from untrusted text: every error names the byte offset and what
/// was expected; nesting is bounded; nothing is allocated beyond what the input holds.
class LiteralReader {
 public:
  static constexpr int kMaxDepth = 64;

  explicit LiteralReader(std::string_view text) : in_(text) {}

  /// The offset of the next token (after white space): where an error about it points.
  std::size_t here() {
    skip_space();
    return pos_;
  }
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }

  bool fail_at(std::size_t at, const std::string& what) {
    if (error_.empty()) error_ = "at byte " + std::to_string(at) + ": " + what;
    return false;
  }
  /// Fails at the current position, saying what was found there.
  bool fail_expected(const std::string& what) {
    skip_space();
    return fail_at(pos_, "expected " + what + ", found " + describe_here());
  }

  void skip_space() {
    while (pos_ < in_.size()) {
      const char c = in_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }
  bool at_end() {
    skip_space();
    return pos_ >= in_.size();
  }
  char peek() {
    skip_space();
    return pos_ < in_.size() ? in_[pos_] : '\0';
  }
  bool accept(char c) {
    skip_space();
    if (pos_ < in_.size() && in_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool expect(char c, const char* what) { return accept(c) || fail_expected(what); }

  /// Iterates a container's elements after its opening bracket:
  ///   bool first = true; while (r.next_element('}', first)) { ...read one element... }
  ///   if (r.failed()) ...
  /// Accepts a trailing comma, as Python does.
  bool next_element(char close, bool& first) {
    if (failed()) return false;
    if (accept(close)) return false;
    if (!first) {
      if (!accept(',')) {
        fail_expected(std::string("',' or '") + close + "'");
        return false;
      }
      if (accept(close)) return false;
    }
    first = false;
    return true;
  }

  bool at_string() {
    const char c = peek();
    if (c == '\'' || c == '"') return true;
    return (c == 'b' || c == 'B') && pos_ + 1 < in_.size() &&
           (in_[pos_ + 1] == '\'' || in_[pos_ + 1] == '"');
  }
  bool at_number() {
    const char c = peek();
    return c == '-' || (c >= '0' && c <= '9');
  }

  /// A str or bytes literal, decoded into bytes (a str as UTF-8).
  bool string(std::string& out) {
    out.clear();
    if (!at_string()) return fail_expected("a string");
    const std::size_t start = pos_;
    const bool bytes = in_[pos_] == 'b' || in_[pos_] == 'B';
    if (bytes) ++pos_;
    const char quote = in_[pos_++];
    for (;;) {
      std::size_t run = pos_;
      while (run < in_.size()) {
        const unsigned char c = static_cast<unsigned char>(in_[run]);
        if (c == static_cast<unsigned char>(quote) || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++run;
      }
      out.append(in_.data() + pos_, run - pos_);
      pos_ = run;
      if (pos_ >= in_.size())
        return fail_at(start, "unterminated string (expected a closing " +
                                  std::string(1, quote) + ")");
      const unsigned char c = static_cast<unsigned char>(in_[pos_]);
      if (c == static_cast<unsigned char>(quote)) {
        ++pos_;
        return true;
      }
      if (c == '\\') {
        if (!escape(out, bytes)) return false;
      } else if (c >= 0x80) {
        if (bytes) return fail_at(pos_, "a bytes literal may only hold ASCII characters");
        char32_t cp;
        const std::size_t n = utf8_sequence(in_, pos_, cp);
        if (n == 0) return fail_at(pos_, "invalid UTF-8 in a string");
        out.append(in_.data() + pos_, n);
        pos_ += n;
      } else if (c == '\n' || c == '\r') {
        return fail_at(start, "unterminated string (a line break inside the quotes)");
      } else if (c == 0) {
        return fail_at(pos_, "a NUL byte inside a string (it must be written \\x00)");
      } else {
        out += static_cast<char>(c);  // a raw tab or other control character, as Python allows
        ++pos_;
      }
    }
  }

  /// A decimal int literal that fits in a signed 64-bit integer.
  bool integer(std::int64_t& out) {
    if (!at_number()) return fail_expected("an integer");
    const std::size_t start = pos_;
    const bool negative = in_[pos_] == '-';
    if (negative) ++pos_;
    std::uint64_t magnitude = 0;
    if (!digits(magnitude, start)) return false;
    const std::uint64_t limit =
        negative ? std::uint64_t(std::numeric_limits<std::int64_t>::max()) + 1
                 : std::uint64_t(std::numeric_limits<std::int64_t>::max());
    if (magnitude > limit) return fail_at(start, "integer out of range");
    out = negative ? static_cast<std::int64_t>(0 - magnitude) : static_cast<std::int64_t>(magnitude);
    return true;
  }
  bool unsigned_integer(std::uint64_t& out) {
    if (!at_number()) return fail_expected("an integer");
    const std::size_t start = pos_;
    if (in_[pos_] == '-') return fail_at(start, "expected a non-negative integer");
    return digits(out, start);
  }

  /// An int or float number of seconds, as milliseconds rounded up (computed from the
  /// decimal digits, so 1795634095.44 is exactly 1795634095440).
  bool seconds_as_ms(std::int64_t& out) {
    const std::size_t start = pos_;
    bool negative = false;
    long exponent = 0;  // value = digits * 10^exponent
    if (!scan_number(negative, scratch_, exponent)) return false;
    const std::string& digits = scratch_;
    // ms = digits * 10^(exponent + 3): the digits before that decimal point, rounded up if
    // any digit after it is not zero.
    const long point = static_cast<long>(digits.size()) + exponent + 3;
    const long last = std::max<long>(point, static_cast<long>(digits.size()));
    const std::uint64_t max = std::uint64_t(std::numeric_limits<std::int64_t>::max());
    std::uint64_t whole = 0;
    bool fraction = false;
    for (long k = 0; k < last; ++k) {
      const int d = k < static_cast<long>(digits.size()) ? digits[std::size_t(k)] - '0' : 0;
      if (k < point) {
        if (whole > (max - std::uint64_t(d)) / 10) return fail_at(start, "number out of range");
        whole = whole * 10 + std::uint64_t(d);
      } else if (d != 0) {
        fraction = true;
      }
    }
    if (fraction && !negative) {
      if (whole == max) return fail_at(start, "number out of range");
      ++whole;  // round up: a key never expires before the time it was given
    }
    out = negative ? -static_cast<std::int64_t>(whole) : static_cast<std::int64_t>(whole);
    return true;
  }

  /// A float or int literal as a double (exactly: the shortest text that names it reads
  /// back as it), or 1e999 / -1e999 as infinities, which is how a snapshot writes them.
  bool real(double& out) {
    skip_space();
    const std::size_t start = pos_;
    const bool negative = pos_ < in_.size() && in_[pos_] == '-';
    if (in_.substr(pos_ + (negative ? 1 : 0), 5) == "1e999") {
      pos_ += negative ? 6 : 5;
      if (!number_ends_here()) return fail_at(start, "malformed number");
      out = negative ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
      return true;
    }
    if (!skip_number()) return false;
    if (!resp::detail::parse_double(in_.substr(start, pos_ - start), out))
      return fail_at(start, "a number out of a double's range");
    return true;
  }

  /// At a float literal: a number with a '.' or an exponent (1.0, 2e5, -1e999), not an int.
  bool at_float() {
    if (!at_number()) return false;
    std::size_t p = pos_ + (in_[pos_] == '-' ? 1 : 0);
    while (p < in_.size() && is_digit(in_[p])) ++p;
    return p < in_.size() && (in_[p] == '.' || in_[p] == 'e' || in_[p] == 'E');
  }

  /// Where the reader is, and going back there (to look ahead at a value).
  std::size_t position() const { return pos_; }
  void rewind(std::size_t at) { pos_ = at; }

  bool boolean(bool& out) {
    skip_space();
    const std::size_t start = pos_;
    if (word("True")) {
      out = true;
      return true;
    }
    if (word("False")) {
      out = false;
      return true;
    }
    pos_ = start;
    return fail_expected("True or False");
  }

  /// Validates and skips any literal value.
  bool skip_value(int depth = 0) {
    if (depth >= kMaxDepth) {
      skip_space();
      return fail_at(pos_, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    if (at_string()) return string(scratch_);
    if (at_number()) return skip_number();
    const char c = peek();
    if (c == '{' || c == '[' || c == '(') {
      ++pos_;
      const char close = c == '{' ? '}' : c == '[' ? ']' : ')';
      bool first = true;
      while (next_element(close, first)) {
        if (!skip_value(depth + 1)) return false;
        if (c == '{' && (!expect(':', "':' after a dict key") || !skip_value(depth + 1)))
          return false;
      }
      return !failed();
    }
    if (word("True") || word("False") || word("None")) return true;
    return fail_expected("a value");
  }

 private:
  std::string_view in_;
  std::size_t pos_ = 0;
  std::string error_;
  std::string scratch_;

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  static bool is_hex(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  static std::uint32_t hex_value(char c) {
    return is_digit(c) ? std::uint32_t(c - '0') : std::uint32_t((c | 0x20) - 'a' + 10);
  }

  std::string describe_here() const {
    if (pos_ >= in_.size()) return "the end of the input";
    const unsigned char c = static_cast<unsigned char>(in_[pos_]);
    if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    std::string out = "byte ";
    append_hex_escape(out, 'x', c, 2);
    return out;
  }

  /// A word such as True: matched only as a whole identifier.
  bool word(std::string_view w) {
    skip_space();
    if (in_.substr(pos_, w.size()) != w) return false;
    const std::size_t end = pos_ + w.size();
    if (end < in_.size()) {
      const char c = in_[end];
      if (is_digit(c) || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          static_cast<unsigned char>(c) >= 0x80)
        return false;
    }
    pos_ = end;
    return true;
  }

  /// After a number: nothing that would make it another token (1.5, 1e3, 1j, 1_000, 1abc).
  bool number_ends_here() const {
    if (pos_ >= in_.size()) return true;
    const char c = in_[pos_];
    return !(is_digit(c) || c == '.' || c == '_' || (c >= 'a' && c <= 'z') ||
             (c >= 'A' && c <= 'Z'));
  }

  bool digits(std::uint64_t& out, std::size_t start) {
    if (pos_ >= in_.size() || !is_digit(in_[pos_])) return fail_at(start, "expected an integer");
    if (in_[pos_] == '0' && pos_ + 1 < in_.size() && is_digit(in_[pos_ + 1]))
      return fail_at(start, "leading zeros in an integer");
    std::uint64_t v = 0;
    for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_) {
      const std::uint64_t d = std::uint64_t(in_[pos_] - '0');
      if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10)
        return fail_at(start, "integer out of range");
      v = v * 10 + d;
    }
    if (!number_ends_here()) return fail_at(start, "expected an integer");
    out = v;
    return true;
  }

  /// Written exponents beyond this are refused: no Python float has a decimal exponent past
  /// about +-324, so no pyraft file holds one, and a value like 0e999999 would otherwise cost
  /// a step per power of ten to compute.
  static constexpr long kMaxExponent = 400;

  /// An int or float literal ([-]digits[.digits][e[+-]digits]): its sign, its digits and
  /// the power of ten they are scaled by.
  bool scan_number(bool& negative, std::string& digits, long& exponent) {
    digits.clear();
    exponent = 0;
    if (!at_number()) return fail_expected("a number");
    const std::size_t start = pos_;
    negative = in_[pos_] == '-';
    if (negative) ++pos_;
    for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_) digits += in_[pos_];
    if (pos_ < in_.size() && in_[pos_] == '.') {
      ++pos_;
      for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_) {
        digits += in_[pos_];
        --exponent;
      }
    }
    if (digits.empty()) return fail_at(start, "expected a number");
    if (pos_ < in_.size() && (in_[pos_] == 'e' || in_[pos_] == 'E')) {
      ++pos_;
      bool exponent_negative = false;
      if (pos_ < in_.size() && (in_[pos_] == '+' || in_[pos_] == '-'))
        exponent_negative = in_[pos_++] == '-';
      if (pos_ >= in_.size() || !is_digit(in_[pos_])) return fail_at(start, "malformed exponent");
      long e = 0;
      for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_)
        if (e <= kMaxExponent) e = e * 10 + (in_[pos_] - '0');
      if (e > kMaxExponent)
        return fail_at(start, "exponent out of range (beyond +-" + std::to_string(kMaxExponent) +
                                  ", where no float is)");
      exponent += exponent_negative ? -e : e;
    }
    if (!number_ends_here()) return fail_at(start, "malformed number");
    return true;
  }

  bool skip_number() {
    bool negative;
    long exponent;
    return scan_number(negative, scratch_, exponent);
  }

  bool fixed_hex(std::size_t count, std::uint32_t& value, std::size_t escape_at) {
    value = 0;
    for (std::size_t k = 0; k < count; ++k) {
      if (pos_ >= in_.size() || !is_hex(in_[pos_]))
        return fail_at(escape_at, "truncated \\x, \\u or \\U escape (expected " +
                                      std::to_string(count) + " hex digits)");
      value = (value << 4) | hex_value(in_[pos_++]);
    }
    return true;
  }

  /// One escape sequence, at the backslash.
  bool escape(std::string& out, bool bytes) {
    const std::size_t at = pos_++;
    if (pos_ >= in_.size()) return fail_at(at, "unterminated escape sequence");
    const char e = in_[pos_++];
    std::uint32_t v = 0;
    switch (e) {
      case '\\': case '\'': case '"': out += e; return true;
      case 'n': out += '\n'; return true;
      case 'r': out += '\r'; return true;
      case 't': out += '\t'; return true;
      case 'a': out += '\a'; return true;
      case 'b': out += '\b'; return true;
      case 'f': out += '\f'; return true;
      case 'v': out += '\v'; return true;
      case 'x':
        if (!fixed_hex(2, v, at)) return false;
        break;
      case 'u':
      case 'U':
        if (bytes) return fail_at(at, std::string("invalid escape \\") + e + " in a bytes literal");
        if (!fixed_hex(e == 'u' ? 4 : 8, v, at)) return false;
        if (v > 0x10FFFF) return fail_at(at, "escape beyond U+10FFFF");
        if (v >= 0xD800 && v <= 0xDFFF) return fail_at(at, "escape of a lone surrogate");
        break;
      default:
        if (e >= '0' && e <= '7') {
          v = std::uint32_t(e - '0');
          for (int k = 0; k < 2 && pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '7'; ++k)
            v = v * 8 + std::uint32_t(in_[pos_++] - '0');
          if (bytes && v > 0xFF) return fail_at(at, "octal escape above \\377 in a bytes literal");
          break;
        }
        return fail_at(at, "invalid escape sequence (expected one of \\\\ \\' \\\" \\n \\r \\t "
                           "\\a \\b \\f \\v \\xNN \\ooo \\uXXXX \\UXXXXXXXX)");
    }
    if (bytes)
      out += static_cast<char>(v);
    else
      append_utf8(out, v);
    return true;
  }
};

inline bool snapshot_error(const LiteralReader& r, std::string& error) {
  error = "invalid snapshot " + r.error();
  return false;
}

// ---- helpers of the command handlers ----

inline Reply wrongtype_error() {
  return Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value");
}
inline Reply not_integer_error() {
  return Reply::error("ERR value is not an integer or out of range");
}
inline Reply syntax_error() { return Reply::error("ERR syntax error"); }
inline Reply overflow_error() { return Reply::error("ERR increment or decrement would overflow"); }
inline Reply arity_error(std::string_view name) {
  return Reply::error("ERR wrong number of arguments for '" + std::string(name) + "' command");
}
inline Reply invalid_expire_error(std::string_view name) {
  return Reply::error("ERR invalid expire time in '" + std::string(name) + "' command");
}

using resp::detail::parse_int64;  // Redis's string2ll, shared with the RESP parser

/// ASCII lower case, locale-free: command names, options and config values compare
/// case-insensitively in ASCII only, as in Redis.
inline char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

inline std::string lower(std::string s) {
  for (char& c : s) c = ascii_lower(c);
  return s;
}

/// ASCII case-insensitive comparison with a lower-case word.
inline bool iequals(std::string_view s, std::string_view lower_word) {
  if (s.size() != lower_word.size()) return false;
  for (std::size_t i = 0; i < s.size(); ++i)
    if (ascii_lower(s[i]) != lower_word[i]) return false;
  return true;
}

/// a + b, or nullopt on overflow.
inline std::optional<std::int64_t> checked_add(std::int64_t a, std::int64_t b) {
  if ((b > 0 && a > std::numeric_limits<std::int64_t>::max() - b) ||
      (b < 0 && a < std::numeric_limits<std::int64_t>::min() - b))
    return std::nullopt;
  return a + b;
}

/// A Redis glob pattern (KEYS, and SCAN MATCH when it exists), compiled once and then matched
/// against many keys in at most (tokens + 1) x (key length + 1) steps of O(1) each, whatever
/// the pattern holds. The syntax is Redis's (stringmatchlen): '*' any run of bytes (a run of
/// '*' is one), '?' any byte, '\x' the byte x (a trailing '\' is itself), a class "[...]"
/// ('^' first negates; "a-z" a range, its ends in either order and compared as signed char
/// as Redis does; '\' quotes the next byte; a class without its ']' runs to the end of the
/// pattern, so "[" matches nothing and "[^" any byte), anything else itself. As in Redis an
/// empty key matches only the empty pattern, and a pattern with more than kMaxStarNesting
/// '*' groups before its last token matches nothing: Redis stops recursing at that depth.
class GlobPattern {
 public:
  static constexpr std::size_t kMaxStarNesting = 1000;

  explicit GlobPattern(std::string_view pattern) {
    const std::size_t m = pattern.size();
    std::size_t stars_before_end = 0;
    for (std::size_t p = 0; p < m;) {
      const char c = pattern[p];
      if (c == '*') {
        while (p < m && pattern[p] == '*') ++p;
        if (p < m) ++stars_before_end;
        tokens_.push_back(Token{Token::Star, 0, 0});
      } else if (c == '?') {
        tokens_.push_back(Token{Token::Any, 0, 0});
        ++p;
      } else if (c == '[') {
        p = add_class(pattern, p);
      } else {
        if (c == '\\' && m - p >= 2) ++p;
        tokens_.push_back(Token{Token::Byte, static_cast<unsigned char>(pattern[p]), 0});
        ++p;
      }
    }
    too_deep_ = stars_before_end > kMaxStarNesting;
  }

  /// Whether `key` matches. `steps`, when given, grows by the tokens tested (tests bound the
  /// work with it).
  bool matches(std::string_view key, std::uint64_t* steps = nullptr) const {
    if (key.empty()) return tokens_.empty();
    if (too_deep_) return false;
    // Each token but '*' takes one byte, so only the last '*' seen ever needs to take more:
    // on a mismatch it takes one more byte and the tokens after it start over. A failure
    // there means no earlier '*' could help either (they could only start later).
    const std::size_t n = tokens_.size(), none = n;
    std::size_t t = 0, i = 0, star_t = none, star_i = 0;
    std::uint64_t tested = 0;
    bool result = false;
    for (;;) {
      if (i == key.size()) {
        while (t < n && tokens_[t].kind == Token::Star) ++t;
        result = t == n;
        break;
      }
      if (t < n && tokens_[t].kind == Token::Star) {
        if (++t == n) {
          result = true;
          break;
        }
        star_t = t;
        star_i = i;
        continue;
      }
      if (t < n) {
        ++tested;
        if (accepts(tokens_[t], static_cast<unsigned char>(key[i]))) {
          ++t;
          ++i;
          continue;
        }
      }
      if (star_t == none) break;
      t = star_t;
      i = ++star_i;
    }
    if (steps) *steps += tested;
    return result;
  }

 private:
  struct Token {
    enum Kind : std::uint8_t { Star, Any, Byte, Class } kind;
    unsigned char byte;  // Byte
    std::uint32_t set;   // Class: index into sets_
  };
  using ByteSet = std::array<std::uint64_t, 4>;

  bool accepts(const Token& tok, unsigned char c) const {
    switch (tok.kind) {
      case Token::Any: return true;
      case Token::Byte: return tok.byte == c;
      case Token::Class: return (sets_[tok.set][c >> 6] >> (c & 63)) & 1u;
      case Token::Star: break;
    }
    return false;
  }

  /// The class at pattern[p] == '['; returns the position after it.
  std::size_t add_class(std::string_view pattern, std::size_t p) {
    const std::size_t m = pattern.size();
    ByteSet set{};
    const auto add = [&set](int byte) {
      const unsigned b = static_cast<unsigned char>(byte);
      set[b >> 6] |= std::uint64_t{1} << (b & 63);
    };
    std::size_t q = p + 1;
    const bool negate = q < m && pattern[q] == '^';
    if (negate) ++q;
    while (q < m && pattern[q] != ']') {
      if (pattern[q] == '\\' && m - q >= 2) {
        add(pattern[++q]);
      } else if (m - q >= 3 && pattern[q + 1] == '-') {
        int lo = static_cast<signed char>(pattern[q]);
        int hi = static_cast<signed char>(pattern[q + 2]);
        if (lo > hi) std::swap(lo, hi);
        for (int b = lo; b <= hi; ++b) add(b);
        q += 2;
      } else {
        add(pattern[q]);
      }
      ++q;
    }
    if (negate)
      for (std::uint64_t& word : set) word = ~word;
    sets_.push_back(set);
    tokens_.push_back(Token{Token::Class, 0, static_cast<std::uint32_t>(sets_.size() - 1)});
    return q < m ? q + 1 : m;
  }

  std::vector<Token> tokens_;
  std::vector<ByteSet> sets_;
  bool too_deep_ = false;
};

/// Whether `s` matches the glob `pattern` (see GlobPattern; compile that once for many keys).
inline bool glob_match(std::string_view pattern, std::string_view s) {
  return GlobPattern(pattern).matches(s);
}

// ---- SCAN's cursor ----

/// The position of an element (a key, a hash field, a set or sorted set member) in SCAN's
/// order: FNV-1a over its bytes, then splitmix64's finalizer to spread it over all 64 bits.
/// Fixed on purpose (not std::hash): every node and every build agrees, so a client may
/// continue an iteration on another node.
inline std::uint64_t scan_hash(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325u;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3u;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9u;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebu;
  return h ^ (h >> 31);
}

/// One step of a SCAN over elements in scan_hash order: [it, end) is sorted by hash_of, every
/// element at or above the cursor. Visits at least `count` elements (fewer only at the end)
/// and every element that shares the last one's hash, then answers the next cursor: the hash
/// of the first element not visited, or 0 when none is left (the cursor only grows, and the
/// first step visits from hash 0, so 0 never means "continue").
///
/// Redis's guarantee follows: an element present from the first step to the last keeps its
/// hash, and a step moves the cursor only past hashes it visited, so it is returned at least
/// once; elements added or deleted meanwhile move nothing else (a position in key order, or
/// an index into the container, would shift). Elements may come twice only if their hash is
/// visited again, which a cursor that only grows never does: each element at most once.
template <class It, class HashOf, class Visit>
std::uint64_t scan_step(It it, It end, std::size_t count, HashOf hash_of, Visit visit) {
  std::size_t seen = 0;
  while (it != end) {
    const std::uint64_t h = hash_of(*it);
    if (seen >= count) return h;
    for (; it != end && hash_of(*it) == h; ++it, ++seen) visit(*it);
  }
  return 0;
}

/// SCAN's step over any container of named elements without an index of its own (HSCAN's
/// hash fields; SSCAN's and ZSCAN's members): name_of(element) is the name hashed, visit(element)
/// is called as scan_step says. O(n) per step (a linear pass and a selection, no sort of the
/// whole), so a step visits at least n / kMaxElementScanSteps elements whatever `count` says
/// (COUNT is a hint in Redis too): a whole iteration takes at most about that many steps,
/// O(n) in all. The keys have an index instead (Store::scan, O(log n + count) a step).
constexpr std::size_t kMaxElementScanSteps = 64;

template <class It, class NameOf, class Visit>
std::uint64_t scan_elements(It first, It last, NameOf name_of, std::uint64_t cursor, std::size_t count,
                            Visit visit) {
  std::vector<std::pair<std::uint64_t, It>> ahead;
  std::size_t n = 0;
  for (It it = first; it != last; ++it, ++n) {
    const std::uint64_t h = scan_hash(name_of(*it));
    if (h >= cursor) ahead.emplace_back(h, it);
  }
  const auto by_hash = [](const auto& a, const auto& b) { return a.first < b.first; };
  count = std::max({count, std::size_t{1}, (n + kMaxElementScanSteps - 1) / kMaxElementScanSteps});
  if (ahead.size() > count) {
    // Only the `count` smallest hashes, the ones tied with the largest of them, and the next
    // hash (the cursor to answer) matter.
    std::nth_element(ahead.begin(), ahead.begin() + static_cast<std::ptrdiff_t>(count - 1), ahead.end(), by_hash);
    const std::uint64_t last_hash = ahead[count - 1].first;
    auto keep = std::partition(ahead.begin() + static_cast<std::ptrdiff_t>(count), ahead.end(),
                               [last_hash](const auto& e) { return e.first <= last_hash; });
    if (keep != ahead.end()) {
      std::iter_swap(keep, std::min_element(keep, ahead.end(), by_hash));
      ++keep;
    }
    ahead.erase(keep, ahead.end());
  }
  std::sort(ahead.begin(), ahead.end(), by_hash);
  return scan_step(ahead.begin(), ahead.end(), count, [](const auto& e) { return e.first; },
                   [&](const auto& e) { visit(*e.second); });
}

/// A SCAN cursor as Redis reads it (strtoul: a sign is taken, "" is 0, leading space is not).
inline bool parse_scan_cursor(const std::string& s, std::uint64_t& out) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (resp::detail::is_space(s[0]) || *end != '\0' || errno == ERANGE) return false;
  out = v;
  return true;
}

/// The options of SCAN and its kin from words[from]: MATCH, COUNT, TYPE (SCAN), NOVALUES
/// (HSCAN, Redis 7.4). False with the error reply in `error`.
struct ScanOptions {
  std::size_t count = 10;
  const std::string* pattern = nullptr;  // null: every element
  const std::string* type = nullptr;
  bool novalues = false;
};

inline bool parse_scan_options(const std::vector<std::string>& w, std::size_t from, bool takes_type,
                               bool takes_novalues, ScanOptions& o, Reply& error) {
  for (std::size_t i = from; i < w.size();) {
    const bool has_value = i + 1 < w.size();
    if (iequals(w[i], "count") && has_value) {
      std::int64_t n = 0;
      if (!parse_int64(w[i + 1], n)) return error = not_integer_error(), false;
      if (n < 1) return error = syntax_error(), false;
      o.count = static_cast<std::size_t>(std::min<std::uint64_t>(std::uint64_t(n), SIZE_MAX));
      i += 2;
    } else if (iequals(w[i], "match") && has_value) {
      o.pattern = w[i + 1] == "*" ? nullptr : &w[i + 1];  // as in Redis, "*" also matches ""
      i += 2;
    } else if (takes_type && iequals(w[i], "type") && has_value) {
      o.type = &w[i + 1];
      i += 2;
    } else if (takes_novalues && iequals(w[i], "novalues")) {
      o.novalues = true;
      i += 1;
    } else {
      return error = syntax_error(), false;
    }
  }
  return true;
}

inline Reply scan_reply(std::uint64_t cursor, std::vector<Reply> items) {
  std::vector<Reply> reply;
  reply.push_back(Reply::bulk(std::to_string(cursor)));
  reply.push_back(Reply::array(std::move(items)));
  return Reply::array(std::move(reply));
}

/// TYPE's name of a kind ("" for a kind this list does not know yet).
inline const char* kind_name(Store::Kind kind) {
  if (kind == Store::Kind::String) return "string";
  if (kind == Store::Kind::Hash) return "hash";
  if (kind == Store::Kind::List) return "list";
  if (kind == Store::Kind::Set) return "set";
  if (kind == Store::Kind::SortedSet) return "zset";
  return "";
}

/// The randomness of read handlers (RANDOMKEY, HRANDFIELD): a read answers one client on one
/// node and changes nothing, so it need not be deterministic. Writes never use it.
inline std::mt19937_64& read_random() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  return generator;
}

/// The key's object for a read handler; `wrong` when it holds another kind.
inline const Store::Object* read_lookup(Call& c, std::string_view key, Store::Kind kind, bool& wrong) {
  const Store::Object* o = c.data.find(key, c.now_ms);
  wrong = o != nullptr && o->kind != kind;
  return wrong ? nullptr : o;
}
/// The key's object for a write handler, after deleting it if it has expired.
inline Store::Object* write_lookup(Call& c, std::string_view key, Store::Kind kind, bool& wrong) {
  Store::Object* o = c.data.find_for_write(key, c.now_ms);
  wrong = o != nullptr && o->kind != kind;
  return wrong ? nullptr : o;
}

inline Reply bulk_or_nil(const Store::Object* o) { return o ? Reply::bulk(o->str) : Reply::nil(); }

/// Resolves a Redis index (negative counts from the end) into [0, len); false if outside.
inline bool resolve_index(std::int64_t index, std::size_t len, std::size_t& out) {
  const auto n = static_cast<std::int64_t>(len);
  if (index < 0) index += n;
  if (index < 0 || index >= n) return false;
  out = static_cast<std::size_t>(index);
  return true;
}

/// The element at position i of a list, walking from the nearer end.
template <class L>
inline auto list_at(L& list, std::size_t i) {
  if (i <= list.size() / 2) return std::next(list.begin(), static_cast<std::ptrdiff_t>(i));
  return std::prev(list.end(), static_cast<std::ptrdiff_t>(list.size() - i));
}

/// Redis's range arithmetic (LRANGE, LTRIM): [start, stop] inclusive, negatives from the end,
/// clamped. False when the range is empty.
inline bool resolve_range(std::int64_t start, std::int64_t stop, std::size_t len,
                          std::size_t& first, std::size_t& count) {
  const auto n = static_cast<std::int64_t>(len);
  if (start < 0) start = start < -n ? 0 : start + n;
  if (stop < 0) stop = stop < -n ? -1 : stop + n;
  if (start > stop || start >= n) return false;
  if (stop >= n) stop = n - 1;
  first = static_cast<std::size_t>(start);
  count = static_cast<std::size_t>(stop - start + 1);
  return true;
}

// ---- string commands ----

inline Reply cmd_get(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::String, wrong);
  return wrong ? wrongtype_error() : bulk_or_nil(o);
}

/// The options of SET (and GETEX's subset), as Redis's parseExtendedStringArgumentsOrReply
/// takes them: one condition (NX, XX, or Redis 8.4's IFEQ / IFNE value; the same one repeated
/// is taken, the last value counting), GET, and one expiry (EX PX EXAT PXAT, the same unit
/// repeated is taken; KEEPTTL; GETEX's PERSIST).
struct StringOptions {
  enum class Cond : std::uint8_t { None, Nx, Xx, IfEq, IfNe };
  enum class Expire : std::uint8_t { None, Ex, Px, ExAt, PxAt };
  Cond cond = Cond::None;
  Expire expire = Expire::None;
  const std::string* match = nullptr;  // IFEQ / IFNE's value
  const std::string* expire_arg = nullptr;
  bool get = false, keepttl = false, persist = false;
};

/// Parses words[from..]; false: a syntax error. `getex`: GETEX's options (expiry and PERSIST).
inline bool parse_string_options(const std::vector<std::string>& w, std::size_t from, bool getex,
                                 StringOptions& o) {
  using Cond = StringOptions::Cond;
  using Expire = StringOptions::Expire;
  for (std::size_t j = from; j < w.size(); ++j) {
    const std::string& opt = w[j];
    const bool has_next = j + 1 < w.size();
    Expire unit = Expire::None;
    if (iequals(opt, "ex")) unit = Expire::Ex;
    else if (iequals(opt, "px")) unit = Expire::Px;
    else if (iequals(opt, "exat")) unit = Expire::ExAt;
    else if (iequals(opt, "pxat")) unit = Expire::PxAt;
    Cond cond = Cond::None;
    if (iequals(opt, "nx")) cond = Cond::Nx;
    else if (iequals(opt, "xx")) cond = Cond::Xx;
    else if (iequals(opt, "ifeq")) cond = Cond::IfEq;
    else if (iequals(opt, "ifne")) cond = Cond::IfNe;
    const bool with_value = cond == Cond::IfEq || cond == Cond::IfNe;

    if (!getex && cond != Cond::None && (o.cond == Cond::None || o.cond == cond) && (!with_value || has_next)) {
      o.cond = cond;
      if (with_value) o.match = &w[++j];
    } else if (!getex && iequals(opt, "get")) {
      o.get = true;
    } else if (!getex && iequals(opt, "keepttl") && o.expire == Expire::None) {
      o.keepttl = true;
    } else if (getex && iequals(opt, "persist") && o.expire == Expire::None) {
      o.persist = true;
    } else if (unit != Expire::None && !o.keepttl && !o.persist && (o.expire == Expire::None || o.expire == unit) &&
               has_next) {
      o.expire = unit;
      o.expire_arg = &w[++j];
    } else {
      return false;
    }
  }
  return true;
}

/// The deadline an expiry option asks for (none without one), or false with the error reply
/// ("invalid expire time in '<name>' command" as Redis's getExpireMillisecondsOrReply).
inline bool option_deadline(const StringOptions& o, std::int64_t now_ms, std::string_view name,
                            std::optional<std::int64_t>& deadline, Reply& error) {
  using Expire = StringOptions::Expire;
  if (o.expire_arg == nullptr) return true;
  std::int64_t when = 0;
  if (!parse_int64(*o.expire_arg, when)) return error = not_integer_error(), false;
  const bool seconds = o.expire == Expire::Ex || o.expire == Expire::ExAt;
  if (when <= 0 || (seconds && when > std::numeric_limits<std::int64_t>::max() / 1000))
    return error = invalid_expire_error(name), false;
  if (seconds) when *= 1000;
  if (o.expire == Expire::Ex || o.expire == Expire::Px) {
    const auto at = checked_add(when, now_ms);
    if (!at || *at <= 0) return error = invalid_expire_error(name), false;
    when = *at;
  }
  deadline = when;
  return true;
}

/// Stores a string at `key` with the deadline given (none: no deadline; one already past: the
/// key is set and gone at once, as in Redis).
inline void put_string(Call& c, const std::string& key, const std::string& value,
                       std::optional<std::int64_t> deadline) {
  c.data.put(key, Store::Kind::String).str = value;
  if (!deadline) return;
  if (*deadline <= c.now_ms)
    c.data.erase(key);
  else
    c.data.set_deadline(key, *deadline);
}

/// SET key value [NX|XX|IFEQ v|IFNE v] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL], as Redis 7
/// with Redis 8.4's IFEQ and IFNE: IFEQ sets only a string key holding exactly that value (a
/// missing key is not created), IFNE any key but one holding that value (a missing key is
/// created); either on a key of another kind is WRONGTYPE. Not setting answers nil, or with
/// GET the old value, as NX and XX do.
inline Reply cmd_set(Call& c) {
  using Cond = StringOptions::Cond;
  const auto& w = c.words;
  const std::string& key = w[1];
  if (w.size() == 3) {  // the common case: replace whatever is there
    c.data.put(key, Store::Kind::String).str = w[2];
    return Reply::ok();
  }
  StringOptions o;
  if (!parse_string_options(w, 3, false, o)) return syntax_error();
  std::optional<std::int64_t> deadline;
  Reply error;
  if (!option_deadline(o, c.now_ms, "set", deadline, error)) return error;

  const Store::Object* old = c.data.find_for_write(key, c.now_ms);
  const bool compares = o.cond == Cond::IfEq || o.cond == Cond::IfNe;
  if ((o.get || compares) && old != nullptr && old->kind != Store::Kind::String) return wrongtype_error();
  Reply reply = o.get ? bulk_or_nil(old) : Reply::ok();
  const bool equal = old != nullptr && old->str == (compares ? *o.match : std::string());
  const bool skip = (o.cond == Cond::Nx && old != nullptr) || (o.cond == Cond::Xx && old == nullptr) ||
                    (o.cond == Cond::IfEq && !equal) || (o.cond == Cond::IfNe && equal);
  if (skip) return o.get ? reply : Reply::nil();

  const std::optional<std::int64_t> kept = o.keepttl ? c.data.deadline(key) : std::nullopt;
  put_string(c, key, w[2], deadline ? deadline : kept);
  return reply;
}

inline Reply cmd_setnx(Call& c) {
  if (c.data.find_for_write(c.words[1], c.now_ms) != nullptr) return Reply::integer(0);
  c.data.put(c.words[1], Store::Kind::String).str = c.words[2];
  return Reply::integer(1);
}

inline Reply cmd_getset(Call& c) {
  bool wrong;
  const Store::Object* o = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  Reply reply = bulk_or_nil(o);
  c.data.put(c.words[1], Store::Kind::String).str = c.words[2];
  return reply;
}

inline Reply cmd_mget(Call& c) {
  std::vector<Reply> items;
  items.reserve(c.words.size() - 1);
  for (std::size_t i = 1; i < c.words.size(); ++i) {
    const Store::Object* o = c.data.find(c.words[i], c.now_ms);
    items.push_back(o != nullptr && o->kind == Store::Kind::String ? Reply::bulk(o->str) : Reply::nil());
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_mset(Call& c) {
  if (c.words.size() % 2 == 0) return arity_error(c.words[0]);
  for (std::size_t i = 1; i + 1 < c.words.size(); i += 2)
    c.data.put(c.words[i], Store::Kind::String).str = c.words[i + 1];
  return Reply::ok();
}

inline Reply cmd_del(Call& c) {
  std::int64_t removed = 0;
  for (std::size_t i = 1; i < c.words.size(); ++i) {
    c.data.check_ttl(c.words[i], c.now_ms);
    removed += c.data.erase(c.words[i]) ? 1 : 0;
  }
  return Reply::integer(removed);
}

inline Reply cmd_exists(Call& c) {
  std::int64_t n = 0;
  for (std::size_t i = 1; i < c.words.size(); ++i)
    n += c.data.find(c.words[i], c.now_ms) != nullptr ? 1 : 0;
  return Reply::integer(n);
}

inline Reply incr_by(Call& c, std::int64_t increment) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  std::int64_t value = 0;
  if (o != nullptr && !parse_int64(o->str, value)) return not_integer_error();
  const auto result = checked_add(value, increment);
  if (!result) return overflow_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::String);
  o->str = std::to_string(*result);  // in place: the key keeps its deadline, as in Redis
  return Reply::integer(*result);
}

inline Reply cmd_incr(Call& c) { return incr_by(c, 1); }
inline Reply cmd_decr(Call& c) { return incr_by(c, -1); }
inline Reply cmd_incrby(Call& c) {
  std::int64_t n = 0;
  if (!parse_int64(c.words[2], n)) return not_integer_error();
  return incr_by(c, n);
}
inline Reply cmd_decrby(Call& c) {
  std::int64_t n = 0;
  if (!parse_int64(c.words[2], n)) return not_integer_error();
  if (n == std::numeric_limits<std::int64_t>::min())
    return Reply::error("ERR decrement would overflow");
  return incr_by(c, -n);
}

inline Reply cmd_append(Call& c) {
  constexpr std::size_t kMaxString = kProtoMaxBulkLen;
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  const std::string& tail = c.words[2];
  if (o == nullptr) {
    o = &c.data.put(c.words[1], Store::Kind::String);
  } else if (o->str.size() + tail.size() > kMaxString) {
    return Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
  }
  o->str += tail;
  return Reply::integer(static_cast<std::int64_t>(o->str.size()));
}

inline Reply cmd_strlen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->str.size()) : 0);
}

/// GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]: GET that also sets or removes the deadline.
inline Reply cmd_getex(Call& c) {
  StringOptions o;
  if (!parse_string_options(c.words, 2, true, o)) return syntax_error();
  bool wrong;
  const Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr) return Reply::nil();
  std::optional<std::int64_t> deadline;
  Reply error;
  if (!option_deadline(o, c.now_ms, "getex", deadline, error)) return error;
  Reply reply = Reply::bulk(s->str);
  if (deadline && *deadline <= c.now_ms)
    c.data.erase(c.words[1]);
  else if (deadline)
    c.data.set_deadline(c.words[1], *deadline);
  else if (o.persist)
    c.data.clear_ttl(c.words[1]);
  return reply;
}

inline Reply cmd_getdel(Call& c) {
  bool wrong;
  const Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr) return Reply::nil();
  Reply reply = Reply::bulk(s->str);
  c.data.erase(c.words[1]);
  return reply;
}

/// SETEX key seconds value, PSETEX key ms value.
inline Reply setex_generic(Call& c, bool seconds) {
  StringOptions o;
  o.expire = seconds ? StringOptions::Expire::Ex : StringOptions::Expire::Px;
  o.expire_arg = &c.words[2];
  std::optional<std::int64_t> deadline;
  Reply error;
  if (!option_deadline(o, c.now_ms, c.words[0], deadline, error)) return error;
  put_string(c, c.words[1], c.words[3], deadline);
  return Reply::ok();
}

inline Reply cmd_setex(Call& c) { return setex_generic(c, true); }
inline Reply cmd_psetex(Call& c) { return setex_generic(c, false); }

/// MSETNX key value [key value ...]: all or none, none when any key exists.
inline Reply cmd_msetnx(Call& c) {
  if (c.words.size() % 2 == 0) return arity_error(c.words[0]);
  for (std::size_t i = 1; i < c.words.size(); i += 2)
    if (c.data.find_for_write(c.words[i], c.now_ms) != nullptr) return Reply::integer(0);
  for (std::size_t i = 1; i + 1 < c.words.size(); i += 2)
    c.data.put(c.words[i], Store::Kind::String).str = c.words[i + 1];
  return Reply::integer(1);
}

/// GETRANGE key start end: Redis's arithmetic (both negative and start > end: empty).
inline Reply cmd_getrange(Call& c) {
  std::int64_t start = 0, end = 0;
  if (!parse_int64(c.words[2], start) || !parse_int64(c.words[3], end)) return not_integer_error();
  bool wrong;
  const Store::Object* s = read_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr) return Reply::bulk("");
  const auto len = static_cast<std::int64_t>(s->str.size());
  if (start < 0 && end < 0 && start > end) return Reply::bulk("");
  if (start < 0) start = std::max<std::int64_t>(0, len + start);  // len >= 0: no overflow
  if (end < 0) end = std::max<std::int64_t>(0, len + end);
  if (end >= len) end = len - 1;
  if (start > end || len == 0) return Reply::bulk("");
  return Reply::bulk(s->str.substr(static_cast<std::size_t>(start), static_cast<std::size_t>(end - start + 1)));
}

inline Reply string_too_long_error() {
  return Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
}

/// SETRANGE key offset value: zero-padded, at most kProtoMaxBulkLen bytes in all.
inline Reply cmd_setrange(Call& c) {
  std::int64_t offset = 0;
  if (!parse_int64(c.words[2], offset)) return not_integer_error();
  if (offset < 0) return Reply::error("ERR offset is out of range");
  const std::string& value = c.words[3];
  bool wrong;
  Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (value.empty()) return Reply::integer(s ? static_cast<std::int64_t>(s->str.size()) : 0);
  if (std::uint64_t(offset) > kProtoMaxBulkLen || std::uint64_t(offset) + value.size() > kProtoMaxBulkLen)
    return string_too_long_error();
  if (s == nullptr) s = &c.data.put(c.words[1], Store::Kind::String);
  const auto at = static_cast<std::size_t>(offset);
  if (s->str.size() < at + value.size()) s->str.resize(at + value.size(), '\0');
  s->str.replace(at, value.size(), value);
  return Reply::integer(static_cast<std::int64_t>(s->str.size()));
}

// INCRBYFLOAT and HINCRBYFLOAT compute as Redis does, in long double, and write the result as
// Redis does, so that replies match it digit for digit: "10.5" + "0.1" is "10.6" there, where
// binary64 arithmetic would give 10.59999999999999964. The result is deterministic on every
// node of one architecture (x86-64's long double is the 80-bit x87 format everywhere); a
// cluster mixing architectures whose long double differs (aarch64: 128-bit) could disagree.

/// While alive, this thread reads and writes numbers in the "C" locale ('.' as the decimal
/// point), whatever locale the program set: every node must read and write the same text.
class CNumericLocale {
 public:
  CNumericLocale() : previous_(c_locale() != locale_t(0) ? uselocale(c_locale()) : locale_t(0)) {}
  ~CNumericLocale() {
    if (previous_ != locale_t(0)) uselocale(previous_);
  }
  CNumericLocale(const CNumericLocale&) = delete;
  CNumericLocale& operator=(const CNumericLocale&) = delete;

 private:
  static locale_t c_locale() {
    static const locale_t c = newlocale(LC_ALL_MASK, "C", locale_t(0));
    return c;
  }
  locale_t previous_;
};

/// Redis's string2ld: strtold over the whole text, no leading space, no NaN, no overflow.
inline bool parse_long_double(const std::string& s, long double& out) {
  if (s.empty() || s.size() >= 5 * 1024) return false;
  const CNumericLocale c_locale;
  errno = 0;
  char* end = nullptr;
  const long double v = std::strtold(s.c_str(), &end);
  if (resp::detail::is_space(s[0]) || end != s.c_str() + s.size() || std::isnan(v) ||  // a NUL inside: no
      (errno == ERANGE && (v == HUGE_VALL || v == -HUGE_VALL || v == 0)))
    return false;
  out = v;
  return true;
}

/// Redis's ld2string in its "human" mode: 17 decimals, trailing zeros (and a bare '.') cut,
/// "-0" written "0".
inline std::string format_long_double(long double v) {
  const CNumericLocale c_locale;
  char buf[5 * 1024];
  const int n = std::snprintf(buf, sizeof buf, "%.17Lf", v);
  if (n <= 0 || static_cast<std::size_t>(n) >= sizeof buf) return "0";  // finite values fit
  std::string s(buf, static_cast<std::size_t>(n));
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (s == "-0") s = "0";
  return s;
}

inline Reply not_float_error() { return Reply::error("ERR value is not a valid float"); }
inline Reply nan_or_infinity_error() { return Reply::error("ERR increment would produce NaN or Infinity"); }

inline Reply cmd_incrbyfloat(Call& c) {
  bool wrong;
  Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  long double value = 0, increment = 0;
  if ((s != nullptr && !parse_long_double(s->str, value)) || !parse_long_double(c.words[2], increment))
    return not_float_error();
  value += increment;
  if (std::isnan(value) || std::isinf(value)) return nan_or_infinity_error();
  if (s == nullptr) s = &c.data.put(c.words[1], Store::Kind::String);
  s->str = format_long_double(value);  // in place: the key keeps its deadline, as in Redis
  return Reply::bulk(s->str);
}

// ---- compare-and-set without scripts (Redis 8.4's DELEX, Valkey 9's DELIFEQ; SET IFEQ above) ----

/// DELEX key [IFEQ value | IFNE value]: DEL of one key, or only when its string value is (not)
/// the one given; a condition on a key of another kind is WRONGTYPE. Redis's IFDEQ / IFDNE
/// (an XXH3 digest of the value) are not implemented.
inline Reply cmd_delex(Call& c) {
  const auto& w = c.words;
  const std::string& key = w[1];
  if (w.size() == 2) {
    c.data.check_ttl(key, c.now_ms);
    return Reply::integer(c.data.erase(key) ? 1 : 0);
  }
  const bool ifeq = iequals(w[2], "ifeq");
  if (w.size() != 4 || (!ifeq && !iequals(w[2], "ifne"))) return syntax_error();
  bool wrong;
  const Store::Object* s = write_lookup(c, key, Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr || (s->str == w[3]) != ifeq) return Reply::integer(0);
  c.data.erase(key);
  return Reply::integer(1);
}

/// DELIFEQ key value: deletes the key only if it holds exactly this string (a lock's release).
inline Reply cmd_delifeq(Call& c) {
  bool wrong;
  const Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr || s->str != c.words[2]) return Reply::integer(0);
  c.data.erase(c.words[1]);
  return Reply::integer(1);
}

// ---- keys and expiry ----

inline Reply cmd_type(Call& c) {
  const Store::Object* o = c.data.find(c.words[1], c.now_ms);
  if (o == nullptr) return Reply::simple("none");
  switch (o->kind) {
    case Store::Kind::String: return Reply::simple("string");
    case Store::Kind::Hash: return Reply::simple("hash");
    case Store::Kind::List: return Reply::simple("list");
    case Store::Kind::Set: return Reply::simple("set");
    case Store::Kind::SortedSet: return Reply::simple("zset");
  }
  return Reply::simple("none");
}

inline Reply cmd_dbsize(Call& c) {
  return Reply::integer(static_cast<std::int64_t>(c.data.live_size(c.now_ms)));
}

inline Reply cmd_keys(Call& c) {
  const std::string& pattern = c.words[1];
  const bool all = pattern == "*";  // as in Redis, the only pattern that sees the empty key
  const GlobPattern glob(pattern);
  std::vector<Reply> keys;
  c.data.for_each([&](const std::string& key, const Store::Object&, std::optional<std::int64_t> d) {
    if (d && *d <= c.now_ms) return;
    if (all || glob.matches(key)) keys.push_back(Reply::bulk(key));
  });
  return Reply::array(std::move(keys));
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time [NX|XX|GT|LT], as Redis 7.
inline Reply expire_generic(Call& c, bool seconds, bool relative) {
  const auto& w = c.words;
  bool nx = false, xx = false, gt = false, lt = false;
  for (std::size_t j = 3; j < w.size(); ++j) {
    if (iequals(w[j], "nx")) nx = true;
    else if (iequals(w[j], "xx")) xx = true;
    else if (iequals(w[j], "gt")) gt = true;
    else if (iequals(w[j], "lt")) lt = true;
    else return Reply::error("ERR Unsupported option " + w[j]);
  }
  if (nx && (xx || gt || lt))
    return Reply::error("ERR NX and XX, GT or LT options at the same time are not compatible");
  if (gt && lt) return Reply::error("ERR GT and LT options at the same time are not compatible");

  std::int64_t when = 0;
  if (!parse_int64(w[2], when)) return not_integer_error();
  if (seconds) {
    if (when > std::numeric_limits<std::int64_t>::max() / 1000 ||
        when < std::numeric_limits<std::int64_t>::min() / 1000)
      return invalid_expire_error(w[0]);
    when *= 1000;
  }
  if (relative) {
    const auto at = checked_add(when, c.now_ms);
    if (!at) return invalid_expire_error(w[0]);
    when = *at;
  }

  if (c.data.find_for_write(w[1], c.now_ms) == nullptr) return Reply::integer(0);
  const std::optional<std::int64_t> current = c.data.deadline(w[1]);
  if (nx && current) return Reply::integer(0);
  if (xx && !current) return Reply::integer(0);
  if (gt && (!current || when <= *current)) return Reply::integer(0);  // none = infinite
  if (lt && current && when >= *current) return Reply::integer(0);
  if (when <= c.now_ms)
    c.data.erase(w[1]);
  else
    c.data.set_deadline(w[1], when);
  return Reply::integer(1);
}

inline Reply cmd_expire(Call& c) { return expire_generic(c, true, true); }
inline Reply cmd_pexpire(Call& c) { return expire_generic(c, false, true); }
inline Reply cmd_expireat(Call& c) { return expire_generic(c, true, false); }
inline Reply cmd_pexpireat(Call& c) { return expire_generic(c, false, false); }

inline Reply ttl_generic(Call& c, bool ms) {
  if (c.data.find(c.words[1], c.now_ms) == nullptr) return Reply::integer(-2);
  const std::optional<std::int64_t> d = c.data.deadline(c.words[1]);
  if (!d) return Reply::integer(-1);
  // *d > now_ms here (find hides the rest); saturate rather than overflow on odd clocks.
  const auto diff = c.now_ms > std::numeric_limits<std::int64_t>::min()
                        ? checked_add(*d, -c.now_ms)
                        : std::nullopt;
  const std::int64_t remaining = diff ? *diff : std::numeric_limits<std::int64_t>::max();
  if (ms) return Reply::integer(remaining);
  return Reply::integer(remaining / 1000 + (remaining % 1000 >= 500 ? 1 : 0));
}

inline Reply cmd_ttl(Call& c) { return ttl_generic(c, false); }
inline Reply cmd_pttl(Call& c) { return ttl_generic(c, true); }

inline Reply cmd_persist(Call& c) {
  if (c.data.find_for_write(c.words[1], c.now_ms) == nullptr || !c.data.deadline(c.words[1]))
    return Reply::integer(0);
  c.data.clear_ttl(c.words[1]);
  return Reply::integer(1);
}

/// RENAME / RENAMENX key newkey: the value and its deadline move; a key renamed to itself
/// stays (OK / 0).
inline Reply rename_generic(Call& c, bool nx) {
  const std::string& from = c.words[1];
  const std::string& to = c.words[2];
  Store::Object* o = c.data.find_for_write(from, c.now_ms);
  if (o == nullptr) return Reply::error("ERR no such key");
  if (from == to) return nx ? Reply::integer(0) : Reply::ok();
  if (nx && c.data.find_for_write(to, c.now_ms) != nullptr) return Reply::integer(0);
  const std::optional<std::int64_t> deadline = c.data.deadline(from);
  Store::Object value = std::move(*o);
  c.data.erase(from);
  c.data.put(to, value.kind) = std::move(value);
  if (deadline) c.data.set_deadline(to, *deadline);
  return nx ? Reply::integer(1) : Reply::ok();
}

inline Reply cmd_rename(Call& c) { return rename_generic(c, false); }
inline Reply cmd_renamenx(Call& c) { return rename_generic(c, true); }

/// COPY source destination [DB 0] [REPLACE]: one database here, so DB takes only 0.
inline Reply cmd_copy(Call& c) {
  const auto& w = c.words;
  bool replace = false;
  for (std::size_t j = 3; j < w.size(); ++j) {
    if (iequals(w[j], "replace")) {
      replace = true;
    } else if (iequals(w[j], "db") && j + 1 < w.size()) {
      std::int64_t db = 0;
      if (!parse_int64(w[++j], db)) return not_integer_error();
      if (db != 0) return Reply::error("ERR DB index is out of range");
    } else {
      return syntax_error();
    }
  }
  if (w[1] == w[2]) return Reply::error("ERR source and destination objects are the same");
  const Store::Object* from = c.data.find_for_write(w[1], c.now_ms);
  if (from == nullptr) return Reply::integer(0);
  if (c.data.find_for_write(w[2], c.now_ms) != nullptr && !replace) return Reply::integer(0);
  const std::optional<std::int64_t> deadline = c.data.deadline(w[1]);
  Store::Object copy = *from;
  c.data.put(w[2], copy.kind) = std::move(copy);
  if (deadline) c.data.set_deadline(w[2], *deadline);
  return Reply::integer(1);
}

inline Reply cmd_randomkey(Call& c) {
  const std::string* key = c.data.key_near_hash(read_random()(), c.now_ms);
  return key ? Reply::bulk(*key) : Reply::nil();
}

/// FLUSHALL / FLUSHDB [ASYNC|SYNC]: both delete every key at once (one database).
inline Reply cmd_flushall(Call& c) {
  if (c.words.size() > 2 || (c.words.size() == 2 && !iequals(c.words[1], "async") && !iequals(c.words[1], "sync")))
    return syntax_error();
  c.data.clear();
  return Reply::ok();
}

inline Reply expiretime_generic(Call& c, bool ms) {
  if (c.data.find(c.words[1], c.now_ms) == nullptr) return Reply::integer(-2);
  const std::optional<std::int64_t> d = c.data.deadline(c.words[1]);
  if (!d) return Reply::integer(-1);
  return Reply::integer(ms ? *d : *d / 1000);
}

inline Reply cmd_expiretime(Call& c) { return expiretime_generic(c, false); }
inline Reply cmd_pexpiretime(Call& c) { return expiretime_generic(c, true); }

/// OBJECT ENCODING|FREQ|IDLETIME|REFCOUNT key, OBJECT HELP, answering what is true here:
/// ENCODING names the nearest Redis encoding of the representation ("raw": a string is always
/// its bytes, never "int" or "embstr"; "hashtable": a hash or a set is an ordered tree, never a
/// listpack or intset; "linkedlist": a list is a doubly linked list, never a quicklist;
/// "skiplist": a sorted set is ordered by score and by member, never a listpack); REFCOUNT is 1
/// (no value is shared); FREQ and IDLETIME are errors, as no access is tracked (FREQ's is
/// Redis's own under its default policy).
inline Reply cmd_object(Call& c) {
  const auto& w = c.words;
  const std::string sub = lower(w[1]);
  const bool keyed = sub == "encoding" || sub == "freq" || sub == "idletime" || sub == "refcount";
  if (!keyed && sub != "help")
    return Reply::error("ERR unknown subcommand '" + w[1].substr(0, 128) + "'. Try OBJECT HELP.");
  if (w.size() != (keyed ? 3u : 2u)) return arity_error("object|" + sub);
  if (sub == "help") {
    return Reply::array({
        Reply::simple("OBJECT <subcommand> [<arg> ...]. Subcommands are:"),
        Reply::simple("ENCODING <key>"),
        Reply::simple("    The nearest Redis encoding of how the value is held: raw (a string's bytes),"),
        Reply::simple("    hashtable (a hash or a set: an ordered tree), linkedlist (a list: a linked list),"),
        Reply::simple("    skiplist (a sorted set: ordered trees by member and by score)."),
        Reply::simple("FREQ <key>"),
        Reply::simple("    An error: access frequency is not tracked."),
        Reply::simple("IDLETIME <key>"),
        Reply::simple("    An error: access times are not tracked."),
        Reply::simple("REFCOUNT <key>"),
        Reply::simple("    1: no value is shared."),
        Reply::simple("HELP"),
        Reply::simple("    Print this help."),
    });
  }
  const Store::Object* o = c.data.find(w[2], c.now_ms);
  if (o == nullptr) return Reply::nil();
  if (sub == "refcount") return Reply::integer(1);
  if (sub == "freq")
    return Reply::error(
        "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching "
        "between policies at runtime LRU and LFU data will take some time to adjust.");
  if (sub == "idletime") return Reply::error("ERR idle time is not tracked: this store keeps no access times");
  if (o->kind == Store::Kind::String) return Reply::bulk("raw");
  if (o->kind == Store::Kind::Hash) return Reply::bulk("hashtable");
  if (o->kind == Store::Kind::List) return Reply::bulk("linkedlist");
  if (o->kind == Store::Kind::Set) return Reply::bulk("hashtable");
  return Reply::bulk("skiplist");  // a sorted set: an ordered tree of scores beside the members
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]: see scan_step for the cursor.
inline Reply cmd_scan(Call& c) {
  std::uint64_t cursor = 0;
  if (!parse_scan_cursor(c.words[1], cursor)) return Reply::error("ERR invalid cursor");
  ScanOptions o;
  Reply error;
  if (!parse_scan_options(c.words, 2, true, false, o, error)) return error;
  const std::optional<GlobPattern> glob = o.pattern ? std::optional<GlobPattern>(*o.pattern) : std::nullopt;
  const std::string type = o.type ? lower(*o.type) : std::string();
  std::vector<Reply> keys;
  const std::uint64_t next = c.data.scan(
      cursor, o.count, [&](const std::string& key, const Store::Object& obj, std::optional<std::int64_t> d) {
        if (d && *d <= c.now_ms) return;
        if (glob && !glob->matches(key)) return;
        if (o.type && type != kind_name(obj.kind)) return;
        keys.push_back(Reply::bulk(key));
      });
  return scan_reply(next, std::move(keys));
}

// ---- hashes ----

inline Reply hset_generic(Call& c, bool reply_ok) {
  if (c.words.size() % 2 != 0) return arity_error(c.words[0]);
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  std::int64_t added = 0;
  for (std::size_t i = 2; i + 1 < c.words.size(); i += 2) {
    auto [it, inserted] = o->hash.try_emplace(c.words[i], c.words[i + 1]);
    if (inserted) {
      ++added;
      Store::grew(*o, Store::kHashEntryBytes + it->first.size() + it->second.size());
    } else {
      Store::shrank(*o, it->second.size());
      it->second = c.words[i + 1];
      Store::grew(*o, it->second.size());
    }
  }
  return reply_ok ? Reply::ok() : Reply::integer(added);
}

inline Reply cmd_hset(Call& c) { return hset_generic(c, false); }
inline Reply cmd_hmset(Call& c) { return hset_generic(c, true); }

inline Reply cmd_hget(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::nil();
  const auto it = o->hash.find(c.words[2]);
  return it == o->hash.end() ? Reply::nil() : Reply::bulk(it->second);
}

inline Reply cmd_hdel(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  std::int64_t removed = 0;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    const auto it = o->hash.find(c.words[i]);
    if (it == o->hash.end()) continue;
    Store::shrank(*o, Store::kHashEntryBytes + it->first.size() + it->second.size());
    o->hash.erase(it);
    ++removed;
  }
  if (o->hash.empty()) c.data.erase(c.words[1]);
  return Reply::integer(removed);
}

inline Reply cmd_hlen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->hash.size()) : 0);
}

inline Reply cmd_hgetall(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> flat;
  if (o != nullptr) {
    flat.reserve(o->hash.size() * 2);
    for (const auto& [field, value] : o->hash) {
      flat.push_back(Reply::bulk(field));
      flat.push_back(Reply::bulk(value));
    }
  }
  return Reply::map(std::move(flat));
}

inline Reply cmd_hexists(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o != nullptr && o->hash.count(c.words[2]) != 0 ? 1 : 0);
}

inline Reply hash_column(Call& c, bool fields) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  if (o != nullptr) {
    items.reserve(o->hash.size());
    for (const auto& [field, value] : o->hash) items.push_back(Reply::bulk(fields ? field : value));
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_hkeys(Call& c) { return hash_column(c, true); }
inline Reply cmd_hvals(Call& c) { return hash_column(c, false); }

inline Reply cmd_hmget(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  items.reserve(c.words.size() - 2);
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (o == nullptr) {
      items.push_back(Reply::nil());
      continue;
    }
    const auto it = o->hash.find(c.words[i]);
    items.push_back(it != o->hash.end() ? Reply::bulk(it->second) : Reply::nil());
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_hincrby(Call& c) {
  std::int64_t increment = 0;
  if (!parse_int64(c.words[3], increment)) return not_integer_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::int64_t value = 0;
  if (o != nullptr) {
    const auto it = o->hash.find(c.words[2]);
    if (it != o->hash.end() && !parse_int64(it->second, value))
      return Reply::error("ERR hash value is not an integer");
  }
  const auto result = checked_add(value, increment);
  if (!result) return overflow_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  auto [field, inserted] = o->hash.try_emplace(c.words[2]);
  Store::shrank(*o, inserted ? 0 : field->second.size());
  field->second = std::to_string(*result);
  Store::grew(*o, (inserted ? Store::kHashEntryBytes + field->first.size() : 0) + field->second.size());
  return Reply::integer(*result);
}

inline Reply cmd_hincrbyfloat(Call& c) {
  long double increment = 0, value = 0;
  if (!parse_long_double(c.words[3], increment)) return not_float_error();
  if (std::isnan(increment) || std::isinf(increment)) return Reply::error("ERR value is NaN or Infinity");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o != nullptr) {
    const auto it = o->hash.find(c.words[2]);
    if (it != o->hash.end() && !parse_long_double(it->second, value))
      return Reply::error("ERR hash value is not a float");
  }
  value += increment;
  if (std::isnan(value) || std::isinf(value)) return nan_or_infinity_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  auto [field, inserted] = o->hash.try_emplace(c.words[2]);
  Store::shrank(*o, inserted ? 0 : field->second.size());
  field->second = format_long_double(value);
  Store::grew(*o, (inserted ? Store::kHashEntryBytes + field->first.size() : 0) + field->second.size());
  return Reply::bulk(field->second);
}

inline Reply cmd_hsetnx(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o != nullptr && o->hash.count(c.words[2]) != 0) return Reply::integer(0);
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  const auto it = o->hash.emplace(c.words[2], c.words[3]).first;
  Store::grew(*o, Store::kHashEntryBytes + it->first.size() + it->second.size());
  return Reply::integer(1);
}

inline Reply cmd_hstrlen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  const auto it = o->hash.find(c.words[2]);
  return Reply::integer(it == o->hash.end() ? 0 : static_cast<std::int64_t>(it->second.size()));
}

/// HRANDFIELD key [count [WITHVALUES]], as Redis 7: a positive count gives distinct fields
/// (the whole hash, in order, when it has no more), a negative one may repeat them. A read:
/// its choices come from read_random(). A reply of more than kMaxRandomFields fields is
/// refused (Redis builds it, however large).
inline Reply cmd_hrandfield(Call& c) {
  constexpr std::uint64_t kMaxRandomFields = std::uint64_t{1} << 24;
  const auto& w = c.words;
  std::int64_t count = 0;
  const bool has_count = w.size() >= 3;
  bool with_values = false;
  if (has_count) {
    if (!parse_int64(w[2], count)) return not_integer_error();
    if (count == std::numeric_limits<std::int64_t>::min())
      return Reply::error(
          "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807");
    if (w.size() > 4 || (w.size() == 4 && !iequals(w[3], "withvalues"))) return syntax_error();
    with_values = w.size() == 4;
    if (with_values && count < -std::numeric_limits<std::int64_t>::max() / 2)
      return Reply::error("ERR value is out of range");
  }
  bool wrong;
  const Store::Object* o = read_lookup(c, w[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  auto& random = read_random();
  if (!has_count) {
    if (o == nullptr) return Reply::nil();
    std::uniform_int_distribution<std::size_t> pick(0, o->hash.size() - 1);
    return Reply::bulk(std::next(o->hash.begin(), static_cast<std::ptrdiff_t>(pick(random)))->first);
  }
  if (o == nullptr || count == 0) return Reply::array();
  const std::uint64_t wanted = count > 0 ? std::uint64_t(count) : 0 - std::uint64_t(count);
  const Store::Hash& hash = o->hash;
  std::vector<Store::Hash::const_iterator> chosen;
  if (count > 0 && wanted >= hash.size()) {
    for (auto it = hash.begin(); it != hash.end(); ++it) chosen.push_back(it);
  } else {
    if (wanted > kMaxRandomFields) return Reply::error("ERR value is out of range");
    std::vector<Store::Hash::const_iterator> all;
    all.reserve(hash.size());
    for (auto it = hash.begin(); it != hash.end(); ++it) all.push_back(it);
    if (count < 0) {
      std::uniform_int_distribution<std::size_t> pick(0, all.size() - 1);
      for (std::uint64_t k = 0; k < wanted; ++k) chosen.push_back(all[pick(random)]);
    } else {  // a partial Fisher-Yates shuffle: `wanted` distinct fields
      for (std::size_t k = 0; k < wanted; ++k) {
        std::uniform_int_distribution<std::size_t> pick(k, all.size() - 1);
        std::swap(all[k], all[pick(random)]);
        chosen.push_back(all[k]);
      }
    }
  }
  std::vector<Reply> items;
  items.reserve(chosen.size());
  for (const auto& it : chosen)
    items.push_back(with_values ? Reply::array({Reply::bulk(it->first), Reply::bulk(it->second)})
                                : Reply::bulk(it->first));
  return with_values ? Reply::pairs(std::move(items)) : Reply::array(std::move(items));
}

/// HSCAN, SSCAN and ZSCAN: key cursor [MATCH pattern] [COUNT count] (HSCAN: [NOVALUES]) over
/// the elements of a key of `kind`, see scan_elements. elements(o) gives the container,
/// name_of(element) the name matched and hashed, emit(element, items) the reply's words.
template <class Elements, class NameOf, class Emit>
Reply scan_key_elements(Call& c, Store::Kind kind, Elements elements, NameOf name_of, Emit emit) {
  std::uint64_t cursor = 0;
  if (!parse_scan_cursor(c.words[2], cursor)) return Reply::error("ERR invalid cursor");
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], kind, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return scan_reply(0, {});
  ScanOptions opts;
  Reply error;
  if (!parse_scan_options(c.words, 3, false, kind == Store::Kind::Hash, opts, error)) return error;
  const std::optional<GlobPattern> glob = opts.pattern ? std::optional<GlobPattern>(*opts.pattern) : std::nullopt;
  std::vector<Reply> items;
  const auto& container = elements(*o);
  const std::uint64_t next =
      scan_elements(container.begin(), container.end(), name_of, cursor, opts.count, [&](const auto& element) {
        if (glob && !glob->matches(name_of(element))) return;
        emit(element, opts, items);
      });
  return scan_reply(next, std::move(items));
}

inline Reply cmd_hscan(Call& c) {
  return scan_key_elements(
      c, Store::Kind::Hash, [](const Store::Object& o) -> const Store::Hash& { return o.hash; },
      [](const auto& field) -> std::string_view { return field.first; },
      [](const auto& field, const ScanOptions& opts, std::vector<Reply>& items) {
        items.push_back(Reply::bulk(field.first));
        if (!opts.novalues) items.push_back(Reply::bulk(field.second));
      });
}

// ---- lists ----

inline Reply push_generic(Call& c, bool front) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::List);
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (front)
      o->list.push_front(c.words[i]);
    else
      o->list.push_back(c.words[i]);
    Store::grew(*o, Store::kListEntryBytes + c.words[i].size());
  }
  return Reply::integer(static_cast<std::int64_t>(o->list.size()));
}

inline Reply cmd_lpush(Call& c) { return push_generic(c, true); }
inline Reply cmd_rpush(Call& c) { return push_generic(c, false); }

/// Takes the element at one end of a non-empty list, its bytes counted off (the caller erases
/// the key once the list is empty).
inline std::string take_list_end(Store::Object& o, bool front) {
  std::string v = std::move(front ? o.list.front() : o.list.back());
  Store::shrank(o, Store::kListEntryBytes + v.size());
  if (front)
    o.list.pop_front();
  else
    o.list.pop_back();
  return v;
}

/// LPOP / RPOP key [count], as Redis 7.
inline Reply pop_generic(Call& c, bool front) {
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 0;
  if (has_count && (!parse_int64(c.words[2], count) || count < 0))
    return Reply::error("ERR value is out of range, must be positive");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return has_count ? Reply::null_array() : Reply::nil();
  const auto take = [&] { return take_list_end(*o, front); };
  Reply reply;
  if (!has_count) {
    reply = Reply::bulk(take());
  } else {
    const auto n = std::min<std::uint64_t>(std::uint64_t(count), o->list.size());
    std::vector<Reply> items;
    items.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t k = 0; k < n; ++k) items.push_back(Reply::bulk(take()));
    reply = Reply::array(std::move(items));
  }
  if (o->list.empty()) c.data.erase(c.words[1]);
  return reply;
}

inline Reply cmd_lpop(Call& c) { return pop_generic(c, true); }
inline Reply cmd_rpop(Call& c) { return pop_generic(c, false); }

inline Reply cmd_lrange(Call& c) {
  std::int64_t start = 0, stop = 0;
  if (!parse_int64(c.words[2], start) || !parse_int64(c.words[3], stop))
    return not_integer_error();
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  std::size_t first = 0, count = 0;
  if (o != nullptr && resolve_range(start, stop, o->list.size(), first, count)) {
    items.reserve(count);
    auto it = list_at(o->list, first);
    for (std::size_t k = 0; k < count; ++k, ++it) items.push_back(Reply::bulk(*it));
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_lindex(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::nil();
  std::int64_t index = 0;
  if (!parse_int64(c.words[2], index)) return not_integer_error();
  std::size_t i = 0;
  if (!resolve_index(index, o->list.size(), i)) return Reply::nil();
  return Reply::bulk(*list_at(o->list, i));
}

inline Reply cmd_llen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->list.size()) : 0);
}

inline Reply cmd_lset(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::error("ERR no such key");
  std::int64_t index = 0;
  if (!parse_int64(c.words[2], index)) return not_integer_error();
  std::size_t i = 0;
  if (!resolve_index(index, o->list.size(), i)) return Reply::error("ERR index out of range");
  std::string& element = *list_at(o->list, i);
  Store::shrank(*o, element.size());
  element = c.words[3];
  Store::grew(*o, element.size());
  return Reply::ok();
}

/// LREM key count element: count > 0 from the head, < 0 from the tail, 0 all.
inline Reply cmd_lrem(Call& c) {
  std::int64_t count = 0;
  if (!parse_int64(c.words[2], count)) return not_integer_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  const std::string& element = c.words[3];
  const std::uint64_t limit =
      count == 0 ? std::numeric_limits<std::uint64_t>::max()
                 : (count > 0 ? std::uint64_t(count) : 0 - std::uint64_t(count));
  std::uint64_t removed = 0;
  auto& list = o->list;
  if (count >= 0) {
    for (auto it = list.begin(); it != list.end() && removed < limit;) {
      if (*it == element) {
        Store::shrank(*o, Store::kListEntryBytes + it->size());
        it = list.erase(it);
        ++removed;
      } else {
        ++it;
      }
    }
  } else {
    for (auto it = list.end(); it != list.begin() && removed < limit;) {
      --it;
      if (*it == element) {
        Store::shrank(*o, Store::kListEntryBytes + it->size());
        it = list.erase(it);
        ++removed;
      }
    }
  }
  if (list.empty()) c.data.erase(c.words[1]);
  return Reply::integer(static_cast<std::int64_t>(removed));
}

inline Reply cmd_ltrim(Call& c) {
  std::int64_t start = 0, stop = 0;
  if (!parse_int64(c.words[2], start) || !parse_int64(c.words[3], stop))
    return not_integer_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::ok();
  auto& list = o->list;
  std::size_t first = 0, count = 0;
  if (!resolve_range(start, stop, list.size(), first, count)) {
    c.data.erase(c.words[1]);
    return Reply::ok();
  }
  const std::size_t after = list.size() - first - count;
  // One element at a time, counting each (the time is the erasing's anyway).
  for (std::size_t k = 0; k < first; ++k) {
    Store::shrank(*o, Store::kListEntryBytes + list.front().size());
    list.pop_front();
  }
  for (std::size_t k = 0; k < after; ++k) {
    Store::shrank(*o, Store::kListEntryBytes + list.back().size());
    list.pop_back();
  }
  return Reply::ok();
}

/// LPUSHX / RPUSHX key element [element ...]: only onto an existing list.
inline Reply pushx_generic(Call& c) {
  bool wrong;
  const Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  return push_generic(c, c.words[0] == "lpushx");
}

inline Reply cmd_lpushx(Call& c) { return pushx_generic(c); }
inline Reply cmd_rpushx(Call& c) { return pushx_generic(c); }

/// LPOS key element [RANK rank] [COUNT num] [MAXLEN len], as Redis 7.
inline Reply cmd_lpos(Call& c) {
  const auto& w = c.words;
  std::int64_t rank = 1, count = -1, maxlen = 0;
  for (std::size_t j = 3; j < w.size(); ++j) {
    const bool has_value = j + 1 < w.size();
    if (iequals(w[j], "rank") && has_value) {
      if (!parse_int64(w[++j], rank)) return not_integer_error();
      if (rank == 0)
        return Reply::error(
            "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to "
            "start from the end of the list");
    } else if (iequals(w[j], "count") && has_value) {
      if (!parse_int64(w[++j], count) || count < 0) return Reply::error("ERR COUNT can't be negative");
    } else if (iequals(w[j], "maxlen") && has_value) {
      if (!parse_int64(w[++j], maxlen) || maxlen < 0) return Reply::error("ERR MAXLEN can't be negative");
    } else {
      return syntax_error();
    }
  }
  bool wrong;
  const Store::Object* o = read_lookup(c, w[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  const bool many = count != -1;
  if (o == nullptr) return many ? Reply::array() : Reply::nil();
  const bool from_head = rank > 0;
  // Redis negates a negative rank; the lowest one stays negative there and means "the first".
  const std::uint64_t skip = rank > 0 ? std::uint64_t(rank) - 1
                             : rank == std::numeric_limits<std::int64_t>::min() ? 0
                                                                                 : std::uint64_t(-rank) - 1;
  const auto& list = o->list;
  const auto n = static_cast<std::int64_t>(list.size());
  std::vector<Reply> found;
  std::uint64_t matches = 0;
  std::int64_t examined = 0;
  const auto check = [&](const std::string& e, std::int64_t position) {
    if (e != w[2] || matches++ < skip) return false;
    found.push_back(Reply::integer(position));
    return !many || (count != 0 && static_cast<std::int64_t>(found.size()) >= count);
  };
  if (from_head) {
    for (auto it = list.begin(); it != list.end() && (maxlen == 0 || examined < maxlen); ++it, ++examined)
      if (check(*it, examined)) break;
  } else {
    for (auto it = list.rbegin(); it != list.rend() && (maxlen == 0 || examined < maxlen); ++it, ++examined)
      if (check(*it, n - 1 - examined)) break;
  }
  if (many) return Reply::array(std::move(found));
  return found.empty() ? Reply::nil() : std::move(found.front());
}

/// LINSERT key BEFORE|AFTER pivot element: the length, 0 without the key, -1 without the pivot.
inline Reply cmd_linsert(Call& c) {
  const bool after = iequals(c.words[2], "after");
  if (!after && !iequals(c.words[2], "before")) return syntax_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  auto it = std::find(o->list.begin(), o->list.end(), c.words[3]);
  if (it == o->list.end()) return Reply::integer(-1);
  o->list.insert(after ? std::next(it) : it, c.words[4]);
  Store::grew(*o, Store::kListEntryBytes + c.words[4].size());
  return Reply::integer(static_cast<std::int64_t>(o->list.size()));
}

/// LMOVE source destination LEFT|RIGHT LEFT|RIGHT (and RPOPLPUSH: RIGHT LEFT).
inline Reply move_generic(Call& c, bool from_left, bool to_left) {
  const std::string& from = c.words[1];
  const std::string& to = c.words[2];
  bool wrong;
  Store::Object* source = write_lookup(c, from, Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (source == nullptr) return Reply::nil();
  Store::Object* target = write_lookup(c, to, Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  std::string element = take_list_end(*source, from_left);
  if (target == nullptr) target = &c.data.put(to, Store::Kind::List);
  if (to_left)
    target->list.push_front(element);
  else
    target->list.push_back(element);
  Store::grew(*target, Store::kListEntryBytes + element.size());
  if (source->list.empty()) c.data.erase(from);  // not the target: it holds the element
  return Reply::bulk(std::move(element));
}

inline Reply cmd_lmove(Call& c) {
  const bool from_left = iequals(c.words[3], "left"), to_left = iequals(c.words[4], "left");
  if ((!from_left && !iequals(c.words[3], "right")) || (!to_left && !iequals(c.words[4], "right")))
    return syntax_error();
  return move_generic(c, from_left, to_left);
}

inline Reply cmd_rpoplpush(Call& c) { return move_generic(c, false, true); }

// ---- sets ----

/// The random choices of SPOP and SRANDMEMBER. In a write (an applied entry: c.index != 0, or
/// any write handler) the stream is a function of the entry's index and term and the command's
/// words, so every node picks alike; in a read, this thread's generator seeded once from
/// std::random_device (a read changes nothing, so its choice need not repeat).
class EntryRandom {
 public:
  EntryRandom(const Call& c, bool in_write) {
    if (!in_write && c.index == 0) {
      static thread_local std::mt19937_64 reads{std::random_device{}()};
      state_ = reads();
      return;
    }
    // FNV-1a over the words, mixed with the entry's id (SplitMix64 spreads it).
    std::uint64_t h = 1469598103934665603ull;
    for (const std::string& w : c.words) {
      for (unsigned char ch : w) h = (h ^ ch) * 1099511628211ull;
      h = (h ^ 0xffu) * 1099511628211ull;  // the boundary between words
    }
    state_ = h ^ (c.index * 0x9E3779B97F4A7C15ull) ^ (c.term * 0xC2B2AE3D27D4EB4Full);
  }
  /// SplitMix64.
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n), n > 0 (rejection sampling: no modulo bias).
  std::size_t below(std::size_t n) {
    const std::uint64_t bound = std::uint64_t(n);
    const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % bound;
    for (;;) {
      const std::uint64_t r = next();
      if (r < limit) return static_cast<std::size_t>(r % bound);
    }
  }

 private:
  std::uint64_t state_ = 0;
};

/// `k` distinct positions of [0, n), k <= n, in random order (a partial Fisher-Yates).
inline std::vector<std::size_t> distinct_positions(EntryRandom& rng, std::size_t n, std::size_t k) {
  std::vector<std::size_t> all(n);
  for (std::size_t i = 0; i < n; ++i) all[i] = i;
  for (std::size_t i = 0; i < k; ++i) std::swap(all[i], all[i + rng.below(n - i)]);
  all.resize(k);
  return all;
}

inline Reply strings_set(const Store::Set& members) {
  std::vector<Reply> items;
  items.reserve(members.size());
  for (const auto& m : members) items.push_back(Reply::bulk(m));
  return Reply::set(std::move(items));
}

inline Reply cmd_sadd(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Set);
  Store::Set& set = o->set();
  std::int64_t added = 0;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (!set.insert(c.words[i]).second) continue;
    ++added;
    Store::grew(*o, Store::kSetEntryBytes + c.words[i].size());
  }
  return Reply::integer(added);
}

inline Reply cmd_srem(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  Store::Set& set = o->set();
  std::int64_t removed = 0;
  for (std::size_t i = 2; i < c.words.size() && !set.empty(); ++i) {
    if (set.erase(c.words[i]) == 0) continue;
    ++removed;
    Store::shrank(*o, Store::kSetEntryBytes + c.words[i].size());
  }
  if (set.empty()) c.data.erase(c.words[1]);
  return Reply::integer(removed);
}

inline Reply cmd_smembers(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  return o ? strings_set(o->set()) : Reply::set();
}

inline Reply cmd_sismember(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o != nullptr && o->set().count(c.words[2]) != 0 ? 1 : 0);
}

inline Reply cmd_smismember(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  for (std::size_t i = 2; i < c.words.size(); ++i)
    items.push_back(Reply::integer(o != nullptr && o->set().count(c.words[i]) != 0 ? 1 : 0));
  return Reply::array(std::move(items));
}

inline Reply cmd_scard(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->set().size()) : 0);
}

/// SPOP key [count]: members chosen by EntryRandom (the same on every node).
inline Reply cmd_spop(Call& c) {
  if (c.words.size() > 3) return syntax_error();
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 0;
  if (has_count && (!parse_int64(c.words[2], count) || count < 0))
    return Reply::error("ERR value is out of range, must be positive");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return has_count ? Reply::set() : Reply::nil();
  if (has_count && count == 0) return Reply::set();  // Redis 7.0's empty set (~0 in RESP3)
  Store::Set& set = o->set();
  EntryRandom rng(c, true);
  if (!has_count) {
    auto it = std::next(set.begin(), static_cast<std::ptrdiff_t>(rng.below(set.size())));
    std::string member = std::move(set.extract(it).value());
    Store::shrank(*o, Store::kSetEntryBytes + member.size());
    if (set.empty()) c.data.erase(c.words[1]);
    return Reply::bulk(std::move(member));
  }
  std::vector<Reply> items;
  if (std::uint64_t(count) >= set.size()) {  // all of it: the key goes
    for (const auto& m : set) items.push_back(Reply::bulk(m));
    c.data.erase(c.words[1]);
    return Reply::set(std::move(items));
  }
  std::vector<Store::Set::iterator> at;
  at.reserve(set.size());
  for (auto it = set.begin(); it != set.end(); ++it) at.push_back(it);
  for (std::size_t pos : distinct_positions(rng, set.size(), static_cast<std::size_t>(count))) {
    std::string member = std::move(set.extract(at[pos]).value());
    Store::shrank(*o, Store::kSetEntryBytes + member.size());
    items.push_back(Reply::bulk(std::move(member)));
  }
  return Reply::set(std::move(items));
}

constexpr std::uint64_t kMaxRandomRepeats = std::uint64_t{1} << 22;

/// SRANDMEMBER key [count]: count > 0 distinct members, count < 0 |count| with repeats.
inline Reply cmd_srandmember(Call& c) {
  if (c.words.size() > 3) return syntax_error();
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 0;
  if (has_count && !parse_int64(c.words[2], count)) return not_integer_error();
  if (has_count && count == std::numeric_limits<std::int64_t>::min())
    return Reply::error("ERR value is out of range, value must between -9223372036854775807 and "
                        "9223372036854775807");
  // Redis would build any reply and drop the client at its output buffer limit (or run out of
  // memory): here a count of repeats beyond kMaxRandomRepeats is refused.
  if (has_count && count < 0 && 0 - std::uint64_t(count) > kMaxRandomRepeats)
    return Reply::error("ERR count is too large: SRANDMEMBER returns at most " + std::to_string(kMaxRandomRepeats) +
                        " members with repeats here");
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return has_count ? Reply::array() : Reply::nil();
  const Store::Set& set = o->set();
  EntryRandom rng(c, false);
  std::vector<Store::Set::const_iterator> at;
  const auto positions = [&] {
    if (at.empty())
      for (auto it = set.begin(); it != set.end(); ++it) at.push_back(it);
  };
  if (!has_count)
    return Reply::bulk(*std::next(set.begin(), static_cast<std::ptrdiff_t>(rng.below(set.size()))));
  std::vector<Reply> items;
  if (count < 0) {
    positions();
    const std::uint64_t n = 0 - std::uint64_t(count);
    items.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t k = 0; k < n; ++k) items.push_back(Reply::bulk(*at[rng.below(at.size())]));
    return Reply::array(std::move(items));
  }
  if (std::uint64_t(count) >= set.size()) {
    for (const auto& m : set) items.push_back(Reply::bulk(m));
    return Reply::array(std::move(items));
  }
  positions();
  for (std::size_t pos : distinct_positions(rng, set.size(), static_cast<std::size_t>(count)))
    items.push_back(Reply::bulk(*at[pos]));
  return Reply::array(std::move(items));
}

enum class SetOp : std::uint8_t { Inter, Union, Diff };

/// The result of SINTER / SUNION / SDIFF over words[first..]; `wrong` when a key holds
/// another kind. Missing keys are empty sets.
inline Store::Set combine_sets(Call& c, std::size_t first, SetOp op, bool& wrong) {
  std::vector<const Store::Set*> sets;
  static const Store::Set none;
  wrong = false;
  for (std::size_t i = first; i < c.words.size(); ++i) {
    const Store::Object* o = read_lookup(c, c.words[i], Store::Kind::Set, wrong);
    if (wrong) return {};
    sets.push_back(o ? &o->set() : &none);
  }
  Store::Set out;
  if (op == SetOp::Union) {
    for (const auto* s : sets) out.insert(s->begin(), s->end());
  } else if (op == SetOp::Diff) {
    out = *sets[0];
    for (std::size_t i = 1; i < sets.size() && !out.empty(); ++i)
      for (const auto& m : *sets[i]) out.erase(m);
  } else {
    const auto smallest = std::min_element(sets.begin(), sets.end(),
                                           [](const auto* a, const auto* b) { return a->size() < b->size(); });
    for (const auto& m : **smallest) {
      bool everywhere = true;
      for (const auto* s : sets) everywhere = everywhere && s->count(m) != 0;
      if (everywhere) out.insert(m);
    }
  }
  return out;
}

inline Reply set_op(Call& c, SetOp op) {
  bool wrong;
  Store::Set result = combine_sets(c, 1, op, wrong);
  return wrong ? wrongtype_error() : strings_set(result);
}

/// S*STORE destination key...: replaces the destination (whatever it held) with the result,
/// or deletes it when the result is empty.
inline Reply set_op_store(Call& c, SetOp op) {
  // The sources are looked at for writing: an expired one is deleted first, as Redis does.
  for (std::size_t i = 2; i < c.words.size(); ++i) c.data.check_ttl(c.words[i], c.now_ms);
  bool wrong;
  Store::Set result = combine_sets(c, 2, op, wrong);
  if (wrong) return wrongtype_error();
  const std::string& dest = c.words[1];
  if (result.empty()) {
    c.data.check_ttl(dest, c.now_ms);
    c.data.erase(dest);
    return Reply::integer(0);
  }
  const auto n = static_cast<std::int64_t>(result.size());
  Store::Object& o = c.data.put(dest, Store::Kind::Set);
  for (const auto& m : result) Store::grew(o, Store::kSetEntryBytes + m.size());
  o.set() = std::move(result);
  return Reply::integer(n);
}

inline Reply cmd_sinter(Call& c) { return set_op(c, SetOp::Inter); }
inline Reply cmd_sunion(Call& c) { return set_op(c, SetOp::Union); }
inline Reply cmd_sdiff(Call& c) { return set_op(c, SetOp::Diff); }
inline Reply cmd_sinterstore(Call& c) { return set_op_store(c, SetOp::Inter); }
inline Reply cmd_sunionstore(Call& c) { return set_op_store(c, SetOp::Union); }
inline Reply cmd_sdiffstore(Call& c) { return set_op_store(c, SetOp::Diff); }

inline Reply cmd_smove(Call& c) {
  const std::string &source = c.words[1], &dest = c.words[2], &member = c.words[3];
  bool wrong;
  Store::Object* from = write_lookup(c, source, Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (from == nullptr) return Reply::integer(0);  // before the destination's kind, as Redis
  Store::Object* to = write_lookup(c, dest, Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (from->set().count(member) == 0) return Reply::integer(0);
  if (source == dest) return Reply::integer(1);
  from->set().erase(member);
  Store::shrank(*from, Store::kSetEntryBytes + member.size());
  if (from->set().empty()) c.data.erase(source);
  if (to == nullptr) to = &c.data.put(dest, Store::Kind::Set);
  if (to->set().insert(member).second) Store::grew(*to, Store::kSetEntryBytes + member.size());
  return Reply::integer(1);
}

inline Reply cmd_sscan(Call& c) {
  return scan_key_elements(
      c, Store::Kind::Set, [](const Store::Object& o) -> const Store::Set& { return o.set(); },
      [](const std::string& member) -> std::string_view { return member; },
      [](const std::string& member, const ScanOptions&, std::vector<Reply>& items) {
        items.push_back(Reply::bulk(member));
      });
}

// ---- sorted sets ----

/// A score as Redis 7.0 writes it: "%.17g", and inf / -inf (in the C locale, as every number
/// the store reads or writes).
inline std::string format_score(double d) {
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  const CNumericLocale c_locale;
  char b[32];
  const int n = std::snprintf(b, sizeof b, "%.17g", d);
  return std::string(b, static_cast<std::size_t>(n));
}

inline Reply score_reply(double d) { return Reply::real(d, format_score(d)); }

/// Redis's string2d: all of `s` is a strtod number ("inf", "1e3", "0x1p3", " 1" no), not NaN,
/// not an overflow nor an underflow to zero.
inline bool parse_score(const std::string& s, double& out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  const CNumericLocale c_locale;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || std::isnan(out)) return false;
  return !(errno == ERANGE && (std::isinf(out) || out == 0));
}

inline Reply nan_score_error() { return Reply::error("ERR resulting score is not a number (NaN)"); }

/// A score range's end, as Redis's zslParseRange: "(x" exclusive, strtod up to the string's
/// first NUL (so "" is 0), not NaN.
inline bool parse_score_bound(const std::string& s, double& value, bool& exclusive) {
  const char* p = s.c_str();
  exclusive = *p == '(';
  if (exclusive) ++p;
  const CNumericLocale c_locale;
  char* end = nullptr;
  value = std::strtod(p, &end);
  return *end == '\0' && !std::isnan(value);
}

struct ScoreRange {
  double min = 0, max = 0;
  bool min_exclusive = false, max_exclusive = false;
  bool above_min(double s) const { return min_exclusive ? s > min : s >= min; }
  bool below_max(double s) const { return max_exclusive ? s < max : s <= max; }
};

inline bool parse_score_range(const std::string& min, const std::string& max, ScoreRange& r) {
  return parse_score_bound(min, r.min, r.min_exclusive) && parse_score_bound(max, r.max, r.max_exclusive);
}

/// A lex range's end, as zslParseLexRangeItem: "-" and "+" (the ends), "[x" or "(x".
struct LexBound {
  enum Kind : std::uint8_t { Min, Max, Inclusive, Exclusive } kind = Min;
  std::string value;
};

inline bool parse_lex_bound(const std::string& s, LexBound& b) {
  const char* p = s.c_str();
  switch (*p) {
    case '+': b.kind = LexBound::Max; return p[1] == '\0';
    case '-': b.kind = LexBound::Min; return p[1] == '\0';
    case '(': b.kind = LexBound::Exclusive; break;
    case '[': b.kind = LexBound::Inclusive; break;
    default: return false;
  }
  b.value = s.substr(1);
  return true;
}

inline bool lex_above_min(const LexBound& min, const std::string& m) {
  switch (min.kind) {
    case LexBound::Min: return true;
    case LexBound::Max: return false;
    case LexBound::Inclusive: return m >= min.value;
    case LexBound::Exclusive: return m > min.value;
  }
  return false;
}
inline bool lex_below_max(const LexBound& max, const std::string& m) {
  switch (max.kind) {
    case LexBound::Min: return false;
    case LexBound::Max: return true;
    case LexBound::Inclusive: return m <= max.value;
    case LexBound::Exclusive: return m < max.value;
  }
  return false;
}

/// ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...], and ZINCRBY.
inline Reply zadd_generic(Call& c, std::size_t first, bool incr, bool nx, bool xx, bool gt, bool lt, bool ch) {
  const auto& w = c.words;
  const std::size_t elements = (w.size() - first) / 2;
  if (nx && xx) return Reply::error("ERR XX and NX options at the same time are not compatible");
  if ((gt && nx) || (lt && nx) || (gt && lt))
    return Reply::error("ERR GT, LT, and/or NX options at the same time are not compatible");
  if (incr && elements > 1) return Reply::error("ERR INCR option supports a single increment-element pair");
  std::vector<double> scores(elements);
  for (std::size_t j = 0; j < elements; ++j)
    if (!parse_score(w[first + 2 * j], scores[j])) return not_float_error();
  bool wrong;
  Store::Object* o = write_lookup(c, w[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr && xx) return incr ? Reply::nil() : Reply::integer(0);
  if (incr && o != nullptr) {  // the only error after the lookup: checked before any change
    const double* old = o->zset().score(w[first + 1]);
    if (old != nullptr && std::isnan(*old + scores[0])) return nan_score_error();
  }
  if (o == nullptr) o = &c.data.put(w[1], Store::Kind::SortedSet);
  Store::SortedSet& z = o->zset();
  std::int64_t added = 0, updated = 0;
  bool processed = false;
  double result = 0;
  for (std::size_t j = 0; j < elements; ++j) {
    const std::string& member = w[first + 2 * j + 1];
    double score = scores[j];
    const double* old = z.score(member);
    if (old != nullptr && incr) score += *old;
    // -0 is kept as 0, as Redis keeps it in a sorted set of up to 128 members (its listpack
    // encoding; its skip list would keep -0).
    if (score == 0) score = 0;
    if (old != nullptr) {
      if (nx || (lt && score >= *old) || (gt && score <= *old)) continue;
      processed = true;
      result = score;
      if (score != *old) {
        z.set(member, score);
        ++updated;
      }
    } else {
      if (xx) continue;
      z.set(member, score);
      Store::grew(*o, Store::kSortedSetEntryBytes + member.size());
      ++added;
      processed = true;
      result = scores[j];  // as Redis answers a new member: the increment as given, -0 too
    }
  }
  if (z.empty()) c.data.erase(w[1]);  // made here, and nothing added (cannot happen; kept safe)
  if (incr) return processed ? score_reply(result) : Reply::nil();
  return Reply::integer(ch ? added + updated : added);
}

inline Reply cmd_zadd(Call& c) {
  const auto& w = c.words;
  bool nx = false, xx = false, gt = false, lt = false, ch = false, incr = false;
  std::size_t j = 2;
  for (; j < w.size(); ++j) {
    if (iequals(w[j], "nx")) nx = true;
    else if (iequals(w[j], "xx")) xx = true;
    else if (iequals(w[j], "gt")) gt = true;
    else if (iequals(w[j], "lt")) lt = true;
    else if (iequals(w[j], "ch")) ch = true;
    else if (iequals(w[j], "incr")) incr = true;
    else break;
  }
  const std::size_t left = w.size() - j;
  if (left == 0 || left % 2 != 0) return syntax_error();
  return zadd_generic(c, j, incr, nx, xx, gt, lt, ch);
}

inline Reply cmd_zincrby(Call& c) { return zadd_generic(c, 2, true, false, false, false, false, false); }

inline Reply cmd_zrem(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  std::int64_t removed = 0;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (!o->zset().erase(c.words[i])) continue;
    ++removed;
    Store::shrank(*o, Store::kSortedSetEntryBytes + c.words[i].size());
  }
  if (o->zset().empty()) c.data.erase(c.words[1]);
  return Reply::integer(removed);
}

inline Reply cmd_zscore(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  const double* s = o ? o->zset().score(c.words[2]) : nullptr;
  return s ? score_reply(*s) : Reply::nil();
}

inline Reply cmd_zmscore(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    const double* s = o ? o->zset().score(c.words[i]) : nullptr;
    items.push_back(s ? score_reply(*s) : Reply::nil());
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_zcard(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->zset().size()) : 0);
}

inline Reply cmd_zcount(Call& c) {
  ScoreRange range;
  if (!parse_score_range(c.words[2], c.words[3], range))
    return Reply::error("ERR min or max is not a float");
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::int64_t n = 0;
  if (o != nullptr) {
    const auto& order = o->zset().order();
    for (auto it = range.min_exclusive ? order.upper_bound(range.min) : order.lower_bound(range.min);
         it != order.end() && range.below_max(it->score); ++it)
      ++n;
  }
  return Reply::integer(n);
}

inline Reply rank_generic(Call& c, bool reverse) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr || o->zset().score(c.words[2]) == nullptr) return Reply::nil();
  const std::size_t rank = o->zset().rank(c.words[2]);
  return Reply::integer(static_cast<std::int64_t>(reverse ? o->zset().size() - 1 - rank : rank));
}

inline Reply cmd_zrank(Call& c) { return rank_generic(c, false); }
inline Reply cmd_zrevrank(Call& c) { return rank_generic(c, true); }

/// A member and its score in a reply: [member, score] pairs (flattened for RESP2).
inline void add_scored(std::vector<Reply>& items, const Store::SortedSet::Entry& e, bool with_scores) {
  if (with_scores)
    items.push_back(Reply::array({Reply::bulk(*e.member), score_reply(e.score)}));
  else
    items.push_back(Reply::bulk(*e.member));
}

/// The members of a range in the asked direction: rank, score or lex, offset and limit
/// (offset < 0: none; limit < 0: all), as Redis's zrangeGenericCommand.
enum class RangeBy : std::uint8_t { Rank, Score, Lex };

struct RangeSpec {
  RangeBy by = RangeBy::Rank;
  bool reverse = false;
  std::int64_t start = 0, stop = 0;  // Rank
  ScoreRange score;                  // Score
  LexBound lex_min, lex_max;         // Lex
  std::int64_t offset = 0, limit = -1;
};

/// Calls f(order iterator) for each member in the range, in order, and returns nothing.
template <class F>
inline void walk_range(const Store::SortedSet& z, const RangeSpec& r, F&& f) {
  const auto& order = z.order();
  if (r.by == RangeBy::Rank) {
    std::size_t first = 0, count = 0;
    if (!resolve_range(r.start, r.stop, z.size(), first, count)) return;
    if (!r.reverse) {
      auto it = std::next(order.begin(), static_cast<std::ptrdiff_t>(first));
      for (std::size_t k = 0; k < count; ++k, ++it) f(it);
    } else {
      auto it = std::prev(order.end(), static_cast<std::ptrdiff_t>(first + 1));
      for (std::size_t k = 0; k < count; ++k) {
        f(it);
        if (k + 1 < count) --it;
      }
    }
    return;
  }
  if (r.offset < 0) return;
  const auto in_range = [&](const Store::SortedSet::Entry& e) {
    if (r.by == RangeBy::Score) return r.score.above_min(e.score) && r.score.below_max(e.score);
    return lex_above_min(r.lex_min, *e.member) && lex_below_max(r.lex_max, *e.member);
  };
  std::int64_t skip = r.offset, left = r.limit;
  const auto visit = [&](auto it) {  // false: stop
    if (skip > 0) {
      --skip;
      return true;
    }
    if (left == 0) return false;
    if (left > 0) --left;
    f(it);
    return true;
  };
  if (r.by == RangeBy::Score) {
    if (!r.reverse) {
      auto it = r.score.min_exclusive ? order.upper_bound(r.score.min) : order.lower_bound(r.score.min);
      for (; it != order.end() && r.score.below_max(it->score); ++it)
        if (!visit(it)) return;
    } else {
      auto end = r.score.max_exclusive ? order.lower_bound(r.score.max) : order.upper_bound(r.score.max);
      for (auto it = end; it != order.begin();) {
        --it;
        if (!r.score.above_min(it->score)) return;
        if (!visit(it)) return;
      }
    }
    return;
  }
  // Lex: meaningful when every score is the same (as in Redis); a walk over the whole order.
  if (!r.reverse) {
    for (auto it = order.begin(); it != order.end(); ++it)
      if (in_range(*it) && !visit(it)) return;
  } else {
    for (auto it = order.end(); it != order.begin();) {
      --it;
      if (in_range(*it) && !visit(it)) return;
    }
  }
}

/// ZRANGE and its older forms. `words_from`: the first option word; by/reverse preset by
/// the command (Rank and !reverse for ZRANGE, which its options may change).
inline Reply zrange_generic(Call& c, RangeBy preset_by, bool preset_reverse, bool options_choose) {
  const auto& w = c.words;
  bool with_scores = false, has_by = !options_choose, has_rev = !options_choose;
  RangeSpec r;
  r.by = preset_by;
  r.reverse = preset_reverse;
  for (std::size_t j = 4; j < w.size(); ++j) {
    const std::size_t left = w.size() - j - 1;
    if (iequals(w[j], "withscores")) {
      with_scores = true;
    } else if (iequals(w[j], "limit") && left >= 2) {
      if (!parse_int64(w[j + 1], r.offset) || !parse_int64(w[j + 2], r.limit)) return not_integer_error();
      j += 2;
    } else if (!has_rev && iequals(w[j], "rev")) {
      has_rev = true;
      r.reverse = true;
    } else if (!has_by && iequals(w[j], "bylex")) {
      has_by = true;
      r.by = RangeBy::Lex;
    } else if (!has_by && iequals(w[j], "byscore")) {
      has_by = true;
      r.by = RangeBy::Score;
    } else {
      return syntax_error();
    }
  }
  if (r.limit != -1 && r.by == RangeBy::Rank)
    return Reply::error("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX");
  if (with_scores && r.by == RangeBy::Lex)
    return Reply::error("ERR syntax error, WITHSCORES not supported in combination with BYLEX");
  // Reversed score and lex ranges are given as max, min.
  const bool swap = r.reverse && r.by != RangeBy::Rank;
  const std::string& min = swap ? w[3] : w[2];
  const std::string& max = swap ? w[2] : w[3];
  if (r.by == RangeBy::Rank) {
    if (!parse_int64(min, r.start) || !parse_int64(max, r.stop)) return not_integer_error();
  } else if (r.by == RangeBy::Score) {
    if (!parse_score_range(min, max, r.score)) return Reply::error("ERR min or max is not a float");
  } else if (!parse_lex_bound(min, r.lex_min) || !parse_lex_bound(max, r.lex_max)) {
    return Reply::error("ERR min or max not valid string range item");
  }
  bool wrong;
  const Store::Object* o = read_lookup(c, w[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  if (o != nullptr) walk_range(o->zset(), r, [&](auto it) { add_scored(items, *it, with_scores); });
  return with_scores ? Reply::pairs(std::move(items)) : Reply::array(std::move(items));
}

inline Reply cmd_zrange(Call& c) { return zrange_generic(c, RangeBy::Rank, false, true); }
inline Reply cmd_zrangebyscore(Call& c) { return zrange_generic(c, RangeBy::Score, false, false); }
inline Reply cmd_zrevrangebyscore(Call& c) { return zrange_generic(c, RangeBy::Score, true, false); }

/// Removes the members walk_range visits; deletes an emptied key.
inline Reply zremrange(Call& c, const RangeSpec& r) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  std::vector<std::string> doomed;
  walk_range(o->zset(), r, [&](auto it) { doomed.push_back(*it->member); });
  for (const auto& m : doomed) {
    o->zset().erase(m);
    Store::shrank(*o, Store::kSortedSetEntryBytes + m.size());
  }
  if (o->zset().empty()) c.data.erase(c.words[1]);
  return Reply::integer(static_cast<std::int64_t>(doomed.size()));
}

inline Reply cmd_zremrangebyscore(Call& c) {
  RangeSpec r;
  r.by = RangeBy::Score;
  if (!parse_score_range(c.words[2], c.words[3], r.score)) return Reply::error("ERR min or max is not a float");
  return zremrange(c, r);
}

inline Reply cmd_zremrangebyrank(Call& c) {
  RangeSpec r;
  if (!parse_int64(c.words[2], r.start) || !parse_int64(c.words[3], r.stop)) return not_integer_error();
  return zremrange(c, r);
}

/// ZPOPMIN / ZPOPMAX key [count]: [member, score] flat without a count; pairs with one.
inline Reply zpop(Call& c, bool max) {
  if (c.words.size() > 3) return syntax_error();
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 1;
  if (has_count && (!parse_int64(c.words[2], count) || count < 0))
    return Reply::error("ERR value is out of range, must be positive");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  if (o != nullptr) {
    Store::SortedSet& z = o->zset();
    for (std::int64_t k = 0; k < count && !z.empty(); ++k) {
      const auto it = max ? std::prev(z.order().end()) : z.order().begin();
      std::string member = *it->member;
      const double score = it->score;
      z.erase(member);
      Store::shrank(*o, Store::kSortedSetEntryBytes + member.size());
      Reply pair = Reply::array({Reply::bulk(std::move(member)), score_reply(score)});
      if (has_count)
        items.push_back(std::move(pair));
      else
        return (z.empty() ? c.data.erase(c.words[1]) : false), pair;
    }
    if (z.empty()) c.data.erase(c.words[1]);
  }
  return has_count ? Reply::pairs(std::move(items)) : Reply::array();
}

/// A write's reply read back from RESP3 (a forwarded or kept one): Reply::pairs()'s flag does
/// not survive the encoding, so an array of [member, score] pairs gets it again, for RESP2
/// clients to receive it flat as Redis sends it. Only the sorted set pops reply with pairs of
/// a string and a double among the writes.
inline void restore_pairs(Reply& reply) {
  if (reply.type != resp::Type::Array || reply.elements.empty()) return;
  for (const Reply& e : reply.elements)
    if (e.type != resp::Type::Array || e.elements.size() != 2 || e.elements[0].type != resp::Type::BulkString ||
        e.elements[1].type != resp::Type::Double)
      return;
  reply.num = 1;
}

inline Reply cmd_zpopmin(Call& c) { return zpop(c, false); }
inline Reply cmd_zpopmax(Call& c) { return zpop(c, true); }

// ---- blocking pops (BLPOP BRPOP BLMOVE BZPOPMIN BZPOPMAX) ----
// The handlers are the pops a blocking command makes each time it tries: applied through the
// log as LPOP is, they find data or reply nil. Waiting for data between tries is the client
// server's (5n2_blocking.hpp); inside a transaction, as in Redis, a try is all there is.

/// A blocking command's timeout (seconds, a float) in milliseconds, 0 for ever, as Redis 7.0
/// reads it: string2ld (parse_long_double: hex and "inf" too, never NaN), times 1000 rounded
/// up, and a value beyond a long long is negative (what Redis's conversion gives on x86, made
/// explicit here). Empty when it is good, else the error.
inline std::string parse_block_timeout(const std::string& word, std::int64_t& ms) {
  long double seconds = 0;
  if (!parse_long_double(word, seconds)) return "ERR timeout is not a float or out of range";
  const long double rounded = std::ceil(seconds * 1000.0L);
  if (!(rounded < 9223372036854775808.0L) || rounded < 0) return "ERR timeout is negative";
  ms = static_cast<std::int64_t>(rounded);
  return {};
}

/// What BLPOP, BRPOP, BZPOPMIN and BZPOPMAX (key [key ...] timeout) pop from: the first key
/// holding `kind`, after the timeout is checked (words[at] is its name). nullptr with `reply`
/// set when there is none: the timeout's error, -WRONGTYPE for a key met first that holds
/// another kind, else nil.
inline Store::Object* first_to_pop(Call& c, Store::Kind kind, std::size_t& at, Reply& reply) {
  std::int64_t ms = 0;
  const std::string bad = parse_block_timeout(c.words.back(), ms);
  reply = bad.empty() ? Reply::null_array() : Reply::error(bad);
  if (!bad.empty()) return nullptr;
  for (at = 1; at + 1 < c.words.size(); ++at) {
    bool wrong;
    Store::Object* o = write_lookup(c, c.words[at], kind, wrong);
    if (wrong) {
      reply = wrongtype_error();
      return nullptr;
    }
    if (o != nullptr) return o;
  }
  return nullptr;
}

/// BLPOP / BRPOP key [key ...] timeout: [key, element] from the first key holding a list.
inline Reply blocking_list_pop(Call& c, bool front) {
  std::size_t at = 0;
  Reply none;
  Store::Object* o = first_to_pop(c, Store::Kind::List, at, none);
  if (o == nullptr) return none;
  std::string v = take_list_end(*o, front);
  if (o->list.empty()) c.data.erase(c.words[at]);
  return Reply::array({Reply::bulk(c.words[at]), Reply::bulk(std::move(v))});
}

inline Reply cmd_blpop(Call& c) { return blocking_list_pop(c, true); }
inline Reply cmd_brpop(Call& c) { return blocking_list_pop(c, false); }

/// BLMOVE source destination LEFT|RIGHT LEFT|RIGHT timeout: LMOVE's reply, nil (a null bulk,
/// as Redis in a transaction) when the source is empty.
inline Reply cmd_blmove(Call& c) {
  const bool from_left = iequals(c.words[3], "left"), to_left = iequals(c.words[4], "left");
  if ((!from_left && !iequals(c.words[3], "right")) || (!to_left && !iequals(c.words[4], "right")))
    return syntax_error();
  std::int64_t ms = 0;
  const std::string bad = parse_block_timeout(c.words[5], ms);
  if (!bad.empty()) return Reply::error(bad);
  return move_generic(c, from_left, to_left);
}

/// BZPOPMIN / BZPOPMAX key [key ...] timeout: [key, member, score] from the first key holding
/// a sorted set.
inline Reply blocking_zpop(Call& c, bool max) {
  std::size_t at = 0;
  Reply none;
  Store::Object* o = first_to_pop(c, Store::Kind::SortedSet, at, none);
  if (o == nullptr) return none;
  Store::SortedSet& z = o->zset();
  const auto it = max ? std::prev(z.order().end()) : z.order().begin();
  std::string member = *it->member;
  const double score = it->score;
  z.erase(member);
  Store::shrank(*o, Store::kSortedSetEntryBytes + member.size());
  if (z.empty()) c.data.erase(c.words[at]);
  return Reply::array({Reply::bulk(c.words[at]), Reply::bulk(std::move(member)), score_reply(score)});
}

inline Reply cmd_bzpopmin(Call& c) { return blocking_zpop(c, false); }
inline Reply cmd_bzpopmax(Call& c) { return blocking_zpop(c, true); }

/// The blocking commands: what each waits for, and where its keys are among its words.
struct BlockingCommand {
  Store::Kind kind;   // the keys must hold this to be worth another try
  bool single_key;    // BLMOVE: words[1] only; otherwise words[1 .. size - 2]
};
inline const BlockingCommand* blocking_command(std::string_view name) {
  static const BlockingCommand list{Store::Kind::List, false}, move{Store::Kind::List, true},
      zset{Store::Kind::SortedSet, false};
  if (name == "blpop" || name == "brpop") return &list;
  if (name == "blmove") return &move;
  if (name == "bzpopmin" || name == "bzpopmax") return &zset;
  return nullptr;
}

/// ZSCAN: member, score, ... with the scores as bulk strings in RESP2 and RESP3 alike, as Redis.
inline Reply cmd_zscan(Call& c) {
  return scan_key_elements(
      c, Store::Kind::SortedSet, [](const Store::Object& o) -> const auto& { return o.zset().scores(); },
      [](const auto& entry) -> std::string_view { return entry.first; },
      [](const auto& entry, const ScanOptions&, std::vector<Reply>& items) {
        items.push_back(Reply::bulk(entry.first));
        items.push_back(Reply::bulk(format_score(entry.second)));
      });
}

// ---- sets and sorted sets in the snapshot (format 5) ----
//
// A set is a Python set literal of its members, in bytewise order: {'a', 'b'}. A sorted set
// is a dict of member -> score, in bytewise member order: {'alice': 10.0, 'bob': 1e999}. A
// score is written "%.17g" (the digits Redis 7.0 shows; they read back exactly), with ".0"
// when that looks like an int, so Python reads a float; +-inf as 1e999 / -1e999, which
// ast.literal_eval reads as inf (NaN is never stored). Neither is ever empty, so each is told
// from a hash by its first element: no ':' (a set), or a float after the ':' (a sorted set).

inline void append_score_literal(std::string& out, double d) {
  if (std::isinf(d)) {
    out += d > 0 ? "1e999" : "-1e999";
    return;
  }
  const std::string text = format_score(d);
  out += text;
  if (text.find_first_of(".e") == std::string::npos) out += ".0";
}

inline void write_set_literal(std::string& out, const Store::Object& o) {
  out += '{';
  bool first = true;
  if (o.kind == Store::Kind::Set) {
    for (const auto& m : o.set()) {
      if (!first) out += ", ";
      first = false;
      append_repr(out, m);
    }
  } else {
    for (const auto& [m, score] : o.zset().scores()) {
      if (!first) out += ", ";
      first = false;
      append_repr(out, m);
      out += ": ";
      append_score_literal(out, score);
    }
  }
  out += '}';
}

/// At a '{': Hash (a dict of strings, or empty, or malformed: read_hash says what is wrong),
/// Set or SortedSet, from the first element. Reads nothing.
inline Store::Kind braced_kind(LiteralReader& r) {
  const std::size_t at = r.here();
  Store::Kind kind = Store::Kind::Hash;
  std::string first;
  if (r.expect('{', "'{'") && r.at_string() && r.string(first)) {
    if (!r.accept(':'))
      kind = Store::Kind::Set;
    else if (r.at_float())
      kind = Store::Kind::SortedSet;
  }
  r.rewind(at);
  return kind;
}

/// A set or sorted set literal (braced_kind said which) into `o`; duplicates are errors.
inline bool read_set_literal(LiteralReader& r, Store::Object& o, std::string& scratch) {
  o.kind = braced_kind(r);
  if (!r.expect('{', "'{'")) return false;
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(scratch)) return false;
    if (o.kind == Store::Kind::Set) {
      if (!o.set().insert(scratch).second) return r.fail_at(at, "duplicate set member " + key_for_error(scratch));
      continue;
    }
    double score = 0;
    if (!r.expect(':', "':' after a sorted set member")) return false;
    if (!r.at_float()) return r.fail_expected("a float score (1.0, 2e-05, 1e999)");
    if (!r.real(score)) return false;
    if (o.zset().score(scratch) != nullptr)
      return r.fail_at(at, "duplicate sorted set member " + key_for_error(scratch));
    o.zset().set(scratch, score);
  }
  return !r.failed();
}

}  // namespace raft::detail

// ---- helpers for user handlers: the ones the built-in commands use ----

namespace raft {

/// Redis's WRONGTYPE error: the reply when a key holds another kind than the command's.
using detail::wrongtype_error;
/// In a read handler: the key's object if it holds `kind` and is not expired at call.now_ms;
/// nullptr when absent, or when it holds another kind, with `wrong` set (reply
/// wrongtype_error()).
using detail::read_lookup;
/// In a write handler: the same, after deleting the key if it expired at the entry's time.
using detail::write_lookup;

/// In a write handler: deletes `key` if it holds a hash, list, set or sorted set left without
/// elements, as Redis does (an empty one must not stay stored); true if it did.
inline bool erase_if_empty(Call& call, std::string_view key) {
  const Store::Object* o = call.data.find_for_write(key, call.now_ms);
  if (o == nullptr) return false;
  bool empty = false;
  switch (o->kind) {
    case Store::Kind::String: break;
    case Store::Kind::Hash: empty = o->hash.empty(); break;
    case Store::Kind::List: empty = o->list.empty(); break;
    case Store::Kind::Set: empty = o->set().empty(); break;
    case Store::Kind::SortedSet: empty = o->zset().empty(); break;
  }
  return empty && call.data.erase(key);
}

}  // namespace raft

namespace raft {

// ---- Store members ----

inline const Store::Object* Store::find(std::string_view key, std::int64_t now_ms) const {
  const auto it = objects_.find(key);
  if (it == objects_.end() || expired(it->second, now_ms)) return nullptr;
  return &it->second.object;
}

inline std::size_t Store::live_size(std::int64_t now_ms) const {
  std::size_t past = 0;
  for (auto it = expiry_.begin(); it != expiry_.end() && it->first <= now_ms; ++it) ++past;
  return objects_.size() - past;
}

inline bool Store::check_ttl(std::string_view key, std::int64_t now_ms) {
  const auto it = objects_.find(key);
  if (it == objects_.end() || !expired(it->second, now_ms)) return false;
  erase(it);
  return true;
}

inline Store::Object* Store::find_for_write(std::string_view key, std::int64_t now_ms) {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return nullptr;
  if (expired(it->second, now_ms)) {
    erase(it);
    return nullptr;
  }
  keep_object(key, it, false);  // the caller may change it in place
  opened(key);
  stamp(it);
  return &it->second.object;
}

inline Store::Object& Store::put(std::string_view key, Kind kind) {
  auto it = objects_.lower_bound(key);
  if (it != objects_.end() && it->first == key) {
    keep_object(key, it, true);
    drop_deadline(it);
    it->second.object = Object{};
  } else {
    remember(key, objects_.end());
    unbury(key);  // its record's stamp (below) is later than the tombstone's
    it = objects_.emplace_hint(it, std::string(key), Record{});
    scan_order_.emplace(detail::scan_hash(key), it->first);
  }
  it->second.object.kind = kind;
  opened(key);
  stamp(it);
  return it->second.object;
}

inline bool Store::erase(std::string_view key) {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return false;
  erase(it);
  return true;
}

inline void Store::erase(Objects::iterator it) {
  keep_object(it->first, it, true);
  drop_deadline(it);
  bury(it->first);
  used_ -= std::min(used_, it->second.counted);
  const auto in_order = scan_order_.find(
      std::pair<std::uint64_t, std::string_view>(detail::scan_hash(it->first), std::string_view(it->first)));
  if (in_order != scan_order_.end()) scan_order_.erase(in_order);
  objects_.erase(it);
}

inline void Store::bury(std::string_view key) {
  if (write_index_ == 0) return;
  unbury(key);
  const auto it = tombstones_.emplace(std::string(key), write_index_).first;
  tombstone_order_.emplace(write_index_, it->first);
  tombstone_bytes_ += kTombstoneBytes + 2 * key.size();
  while (tombstones_.size() > kMaxTombstones) {
    const auto oldest = tombstone_order_.begin();
    forgotten_index_ = std::max(forgotten_index_, oldest->first);
    tombstone_bytes_ -= std::min(tombstone_bytes_, kTombstoneBytes + 2 * oldest->second.size());
    tombstones_.erase(tombstones_.find(oldest->second));
    tombstone_order_.erase(oldest);
  }
}

inline void Store::unbury(std::string_view key) {
  if (write_index_ == 0) return;
  const auto it = tombstones_.find(key);
  if (it == tombstones_.end()) return;
  tombstone_order_.erase(tombstone_order_.find(std::pair<std::uint64_t, std::string_view>(it->second, it->first)));
  tombstone_bytes_ -= std::min(tombstone_bytes_, kTombstoneBytes + 2 * it->first.size());
  tombstones_.erase(it);
}

inline void Store::clear() {
  for (auto it = objects_.begin(); recording_ && it != objects_.end(); ++it) keep_object(it->first, it, true);
  if (!objects_.empty() && write_index_ != 0) forget_tombstones(write_index_);
  objects_.clear();
  expiry_.clear();
  scan_order_.clear();
  used_ = 0;
  opened_.clear();
}

inline std::size_t Store::used_memory() const {
  std::size_t used = used_;
  for (const auto& key : opened_) {
    const auto it = objects_.find(key);
    if (it != objects_.end()) used = used - std::min(used, it->second.counted) + cost(it->first, it->second.object);
  }
  return used + tombstone_bytes_;
}

inline void Store::settle_memory() {
  for (const auto& key : opened_) {
    const auto it = objects_.find(key);
    if (it == objects_.end()) continue;
    used_ -= std::min(used_, it->second.counted);
    it->second.counted = cost(it->first, it->second.object);
    used_ += it->second.counted;
  }
  opened_.clear();
}

inline void Store::recount_memory() {
  used_ = 0;
  tombstone_bytes_ = 0;
  for (const auto& t : tombstones_) tombstone_bytes_ += kTombstoneBytes + 2 * t.first.size();
  opened_.clear();
  scan_order_.clear();
  for (auto& [key, r] : objects_) {
    scan_order_.emplace(detail::scan_hash(key), key);
    Object& o = r.object;
    o.element_bytes = 0;
    for (const auto& [field, value] : o.hash) o.element_bytes += kHashEntryBytes + field.size() + value.size();
    for (const auto& e : o.list) o.element_bytes += kListEntryBytes + e.size();
    if (o.kind == Kind::Set)
      for (const auto& m : o.set()) o.element_bytes += kSetEntryBytes + m.size();
    if (o.kind == Kind::SortedSet)
      for (const auto& [m, score] : o.zset().scores()) o.element_bytes += kSortedSetEntryBytes + m.size();
    r.counted = cost(key, o);
    used_ += r.counted;
  }
}

inline Store::Undo* Store::remember(std::string_view key, Objects::iterator it) {
  if (!recording_) return nullptr;
  auto u = undo_.lower_bound(key);
  if (u != undo_.end() && u->first == key) return &u->second;
  Undo undo;
  if (it != objects_.end()) {
    undo.existed = true;
    undo.deadline = it->second.deadline;
  }
  return &undo_.emplace_hint(u, std::string(key), std::move(undo))->second;
}

inline void Store::keep_object(std::string_view key, Objects::iterator it, bool moving) {
  Undo* u = remember(key, it);
  // A key made by this write needs nothing kept: undoing it deletes it.
  if (u == nullptr || !u->existed || u->object) return;
  if (moving)
    u->object = std::move(it->second.object);
  else
    u->object = it->second.object;
}

inline void Store::begin_undo() {
  undo_.clear();
  recording_ = true;
}

inline void Store::commit_undo() {
  recording_ = false;
  undo_.clear();
}

inline void Store::rollback_undo() {
  recording_ = false;
  for (auto& [key, u] : undo_) {
    auto it = objects_.find(key);
    if (!u.existed) {
      if (it != objects_.end()) erase(it);
      continue;
    }
    // A key that existed and is gone now had its object kept when it went.
    if (it == objects_.end()) {
      it = objects_.emplace(key, Record{}).first;
      scan_order_.emplace(detail::scan_hash(key), key);
    }
    if (u.object) it->second.object = std::move(*u.object);
    opened(key);
    stamp(it);  // put back, yet stamped: a restored record has lost its earlier stamp
    drop_deadline(it);
    if (u.deadline) {
      it->second.deadline = u.deadline;
      expiry_.emplace(*u.deadline, it->first);
    }
  }
  undo_.clear();
}

inline void Store::drop_deadline(Objects::iterator it) {
  if (!it->second.deadline) return;
  remember(it->first, it);
  const auto entry = expiry_.find(std::pair<std::int64_t, std::string_view>(
      *it->second.deadline, std::string_view(it->first)));
  if (entry != expiry_.end()) expiry_.erase(entry);
  it->second.deadline.reset();
}

inline void Store::clear_ttl(std::string_view key) {
  const auto it = objects_.find(key);
  if (it == objects_.end() || !it->second.deadline) return;
  drop_deadline(it);
  stamp(it);
}

inline bool Store::set_deadline(std::string_view key, std::int64_t deadline_ms) {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return false;
  remember(key, it);
  drop_deadline(it);
  stamp(it);
  it->second.deadline = deadline_ms;
  expiry_.emplace(deadline_ms, it->first);
  return true;
}

inline std::optional<std::int64_t> Store::deadline(std::string_view key) const {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return std::nullopt;
  return it->second.deadline;
}

template <class F>
std::uint64_t Store::scan(std::uint64_t cursor, std::size_t count, F&& f) const {
  return detail::scan_step(
      scan_order_.lower_bound(std::pair<std::uint64_t, std::string_view>(cursor, std::string_view())),
      scan_order_.end(), count, [](const auto& entry) { return entry.first; },
      [&](const auto& entry) {
        const auto it = objects_.find(entry.second);
        f(it->first, it->second.object, it->second.deadline);
      });
}

inline const std::string* Store::key_near_hash(std::uint64_t hash, std::int64_t now_ms) const {
  if (live_size(now_ms) == 0) return nullptr;
  auto at = scan_order_.lower_bound(std::pair<std::uint64_t, std::string_view>(hash, std::string_view()));
  for (;; ++at) {  // ends: a key is live
    if (at == scan_order_.end()) at = scan_order_.begin();
    const auto it = objects_.find(at->second);
    if (!expired(it->second, now_ms)) return &it->first;
  }
}

inline std::vector<std::string> Store::due(std::int64_t now_ms, std::size_t limit) const {
  std::vector<std::string> keys;
  for (auto it = expiry_.begin(); it != expiry_.end() && it->first <= now_ms && keys.size() < limit;
       ++it)
    keys.push_back(it->second);
  return keys;
}

inline void Store::write_snapshot(std::string& out, const SnapshotMeta& meta) const {
  using detail::append_repr;
  out += "{'_META_': {'format': ";
  const std::size_t format_at = out.size();
  out += std::to_string(detail::kSnapshotFormat);  // 5 if a set or sorted set is written (below)
  bool has_sets = false;
  out += ", 'index': ";
  out += std::to_string(meta.index);
  out += ", 'term': ";
  out += std::to_string(meta.term);
  out += ", 'timestamp': ";
  out += std::to_string(meta.timestamp_ms);
  out += ", 'members': [";
  for (std::size_t i = 0; i < meta.config.members.size(); ++i) {
    const Member& m = meta.config.members[i];
    if (i > 0) out += ", ";
    out += "{'id': ";
    append_repr(out, m.id);
    out += ", 'address': ";
    append_repr(out, m.address);
    out += ", 'server_id': ";
    append_repr(out, m.server_id);
    out += ", 'voter': ";
    out += m.voter ? "True" : "False";
    out += '}';
  }
  out += "]}, 'data': {";
  // Keys with a deadline, collected on the way: 'ttl' is written without a second walk.
  std::vector<std::pair<const std::string*, std::int64_t>> deadlines;
  bool first = true;
  for (const auto& [key, record] : objects_) {
    if (!first) out += ", ";
    first = false;
    append_repr(out, key);
    out += ": ";
    if (record.deadline) deadlines.emplace_back(&key, *record.deadline);
    const Object& o = record.object;
    switch (o.kind) {
      case Kind::String:
        append_repr(out, o.str);
        break;
      case Kind::Hash: {
        out += '{';
        bool first_field = true;
        for (const auto& [field, value] : o.hash) {
          if (!first_field) out += ", ";
          first_field = false;
          append_repr(out, field);
          out += ": ";
          append_repr(out, value);
        }
        out += '}';
        break;
      }
      case Kind::List: {
        out += '[';
        bool first_item = true;
        for (const auto& item : o.list) {
          if (!first_item) out += ", ";
          first_item = false;
          append_repr(out, item);
        }
        out += ']';
        break;
      }
      case Kind::Set:
      case Kind::SortedSet:
        has_sets = true;
        detail::write_set_literal(out, o);
        break;
    }
  }
  // One digit, in place: a snapshot without sets keeps format 4's text, which older versions
  // read; one with them says 5, which they refuse by its number.
  static_assert(detail::kSnapshotFormat == 4 && detail::kSnapshotFormatWithSets == 5, "one digit each");
  if (has_sets) out[format_at] = '5';
  out += "}, 'ttl': {";
  for (std::size_t i = 0; i < deadlines.size(); ++i) {
    if (i > 0) out += ", ";
    append_repr(out, *deadlines[i].first);
    out += ": ";
    out += std::to_string(deadlines[i].second);
  }
  out += "}, 'sessions': ";
  sessions_.write(out);
  out += ", 'session_clock': [" + std::to_string(sessions_.clock_ms()) + ", " +
         std::to_string(sessions_.last_stamp_ms()) + "]";
  write_stamps(out);
  out += '}';
}

// WATCH's stamps, `, 'modified': [FORGOTTEN, {key: INDEX, ...}, {deleted key: INDEX, ...}]`
// (in key order), only when there is one: the text of a store without them is unchanged (an
// older version refuses the section by its name, as any newer text).
inline void Store::write_stamps(std::string& out) const {
  bool any = forgotten_index_ != 0 || !tombstones_.empty();
  for (auto it = objects_.begin(); !any && it != objects_.end(); ++it) any = it->second.modified != 0;
  if (!any) return;
  out += ", 'modified': [" + std::to_string(forgotten_index_) + ", {";
  bool first = true;
  for (const auto& [key, record] : objects_) {
    if (record.modified == 0) continue;
    if (!first) out += ", ";
    first = false;
    detail::append_repr(out, key);
    out += ": " + std::to_string(record.modified);
  }
  out += "}, {";
  first = true;
  for (const auto& [key, index] : tombstones_) {
    if (!first) out += ", ";
    first = false;
    detail::append_repr(out, key);
    out += ": " + std::to_string(index);
  }
  out += "}]";
}

namespace detail {

/// _META_ of our format: {'format': 3, 'index': I, 'term': T, 'timestamp': MS,
/// 'members': [...]}; format 2 is the same; format 1 has no 'timestamp'.
inline bool read_snapshot_meta(LiteralReader& r, SnapshotMeta& meta, std::int64_t& format) {
  const std::size_t meta_at = r.here();
  if (!r.expect('{', "'{' (the _META_ dict)")) return false;
  bool has_format = false, has_index = false, has_term = false, has_members = false;
  bool has_timestamp = false;
  format = 0;
  std::string name;
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(name) || !r.expect(':', "':' after a dict key")) return false;
    bool* seen = name == "format" ? &has_format : name == "index" ? &has_index
               : name == "term" ? &has_term : name == "members" ? &has_members
               : name == "timestamp" ? &has_timestamp : nullptr;
    if (seen == nullptr)
      return r.fail_at(at, "unknown _META_ field " + key_for_error(name) +
                               " (expected 'format', 'index', 'term', 'timestamp' or 'members')");
    if (*seen) return r.fail_at(at, "duplicate _META_ field " + key_for_error(name));
    *seen = true;
    if (name == "format") {
      const std::size_t value_at = r.here();
      if (!r.integer(format)) return false;
      if (format < 1 || format > kSnapshotFormatWithSets)
        return r.fail_at(value_at, "unsupported snapshot format " + std::to_string(format) +
                                       " (this version reads formats 1 to " +
                                       std::to_string(kSnapshotFormatWithSets) + ")");
    } else if (name == "timestamp") {
      if (!r.integer(meta.timestamp_ms)) return false;
    } else if (name == "index") {
      if (!r.unsigned_integer(meta.index)) return false;
    } else if (name == "term") {
      if (!r.unsigned_integer(meta.term)) return false;
    } else {
      if (!r.expect('[', "'[' (the members list)")) return false;
      bool first_member = true;
      while (r.next_element(']', first_member)) {
        const std::size_t member_at = r.here();
        if (!r.expect('{', "'{' (a member dict)")) return false;
        Member m;
        bool has_id = false, has_address = false, has_server_id = false, has_voter = false;
        bool first_field = true;
        while (r.next_element('}', first_field)) {
          const std::size_t field_at = r.here();
          if (!r.string(name) || !r.expect(':', "':' after a dict key")) return false;
          bool ok = true;
          bool* field_seen = nullptr;
          if (name == "id") {
            field_seen = &has_id;
            ok = r.string(m.id);
          } else if (name == "address") {
            field_seen = &has_address;
            ok = r.string(m.address);
          } else if (name == "server_id") {
            field_seen = &has_server_id;
            ok = r.string(m.server_id);
          } else if (name == "voter") {
            field_seen = &has_voter;
            ok = r.boolean(m.voter);
          } else {
            return r.fail_at(field_at, "unknown member field " + key_for_error(name) +
                                           " (expected 'id', 'address', 'server_id' or 'voter')");
          }
          if (!ok) return false;
          if (*field_seen) return r.fail_at(field_at, "duplicate member field " + key_for_error(name));
          *field_seen = true;
        }
        if (r.failed()) return false;
        if (!has_id || !has_address || !has_server_id || !has_voter)
          return r.fail_at(member_at, "a member needs 'id', 'address', 'server_id' and 'voter'");
        if (m.id.empty()) return r.fail_at(member_at, "a member with an empty id");
        if (meta.config.contains(m.id))
          return r.fail_at(member_at, "duplicate member id " + key_for_error(m.id));
        meta.config.upsert(std::move(m));
      }
      if (r.failed()) return false;
    }
  }
  if (r.failed()) return false;
  if (!has_format || !has_index || !has_term || !has_members)
    return r.fail_at(meta_at, "_META_ needs 'format', 'index', 'term' and 'members'");
  if (has_timestamp != (format >= 2))
    return r.fail_at(meta_at, format >= 2 ? "_META_ of format " + std::to_string(format) + " needs 'timestamp'"
                                          : std::string("_META_ of format 1 has no 'timestamp'"));
  return true;
}

/// Reads a dict of str -> str into `hash`; false on error (duplicates are errors).
inline bool read_hash(LiteralReader& r, Store::Hash& hash, std::string& scratch) {
  if (!r.expect('{', "'{'")) return false;
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(scratch) || !r.expect(':', "':' after a dict key")) return false;
    auto [it, inserted] = hash.try_emplace(std::move(scratch));
    if (!inserted) return r.fail_at(at, "duplicate hash field " + key_for_error(it->first));
    if (!r.string(it->second)) return false;
  }
  return !r.failed();
}

inline bool read_list(LiteralReader& r, Store::List& list) {
  if (!r.expect('[', "'['")) return false;
  bool first = true;
  while (r.next_element(']', first)) {
    list.emplace_back();
    if (!r.string(list.back())) return false;
  }
  return !r.failed();
}

/// A dict of key -> deadline, kept with each entry's offset for later errors.
struct PendingDeadline {
  std::string key;
  std::int64_t deadline_ms;
  std::size_t at;
};

inline bool read_deadlines(LiteralReader& r, std::vector<PendingDeadline>& out, bool seconds) {
  if (!r.expect('{', "'{' (the ttl dict)")) return false;
  bool first = true;
  std::string key;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(key) || !r.expect(':', "':' after a dict key")) return false;
    std::int64_t when = 0;
    if (!(seconds ? r.seconds_as_ms(when) : r.integer(when))) return false;
    out.push_back(PendingDeadline{std::move(key), when, at});
  }
  return !r.failed();
}

}  // namespace detail

inline bool Store::read_snapshot(std::string_view text, Store& data, SnapshotMeta& meta,
                                 std::string& error) {
  detail::LiteralReader r(text);
  Store store;
  SnapshotMeta m;
  std::vector<detail::PendingDeadline> deadlines;
  bool has_meta = false, has_data = false, has_ttl = false, has_sessions = false, has_session_clock = false;
  bool has_stamps = false;
  // 'modified': key -> index, deleted key -> index (read as a deadline's int)
  std::vector<detail::PendingDeadline> stamps, tombstones;
  std::int64_t forgotten_index = 0;
  std::int64_t format = 0;
  std::size_t sessions_at = 0, session_clock_at = 0;
  std::int64_t session_clock = 0, last_stamp = 0;
  std::string key;
  const auto fail = [&] { return detail::snapshot_error(r, error); };

  if (!r.expect('{', "'{' at the start of a snapshot")) return fail();
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(key) || !r.expect(':', "':' after a dict key")) return fail();
    bool* seen = key == "_META_" ? &has_meta : key == "data" ? &has_data
               : key == "ttl" ? &has_ttl : key == "sessions" ? &has_sessions
               : key == "session_clock" ? &has_session_clock : key == "modified" ? &has_stamps : nullptr;
    if (seen == nullptr) {
      r.fail_at(at, "unknown top-level key " + detail::key_for_error(key) +
                        " (expected '_META_', 'data', 'ttl', 'sessions', 'session_clock' or 'modified')");
      return fail();
    }
    if (*seen) {
      r.fail_at(at, "duplicate top-level key " + detail::key_for_error(key));
      return fail();
    }
    *seen = true;
    if (key == "_META_") {
      if (!detail::read_snapshot_meta(r, m, format)) return fail();
    } else if (key == "sessions") {
      sessions_at = at;
      if (!store.sessions_.read(r)) return fail();
    } else if (key == "session_clock") {
      session_clock_at = at;
      if (!r.expect('[', "'[' (the session clock)") || !r.integer(session_clock) ||
          !r.expect(',', "',' in the session clock") || !r.integer(last_stamp) ||
          !r.expect(']', "']' closing the session clock"))
        return fail();
    } else if (key == "modified") {
      if (!r.expect('[', "'[' (the modified stamps)") || !r.integer(forgotten_index) ||
          !r.expect(',', "',' in the modified stamps") || !detail::read_deadlines(r, stamps, false) ||
          !r.expect(',', "',' in the modified stamps") || !detail::read_deadlines(r, tombstones, false) ||
          !r.expect(']', "']' closing the modified stamps"))
        return fail();
    } else if (key == "ttl") {
      if (!detail::read_deadlines(r, deadlines, false)) return fail();
    } else {
      if (!r.expect('{', "'{' (the data dict)")) return fail();
      bool first_key = true;
      std::string scratch;
      while (r.next_element('}', first_key)) {
        const std::size_t key_at = r.here();
        if (!r.string(key) || !r.expect(':', "':' after a dict key")) return fail();
        // Keys arrive sorted from write_snapshot: hinting at the end makes loading linear.
        const auto hint = store.objects_.end();
        const std::size_t before = store.objects_.size();
        const auto it = store.objects_.emplace_hint(hint, std::move(key), Record{});
        if (store.objects_.size() == before) {
          r.fail_at(key_at, "duplicate key " + detail::key_for_error(it->first));
          return fail();
        }
        Object& o = it->second.object;
        const std::size_t value_at = r.here();
        const char c = r.peek();
        bool ok = true;
        if (c == '{' && detail::braced_kind(r) != Kind::Hash) {
          ok = detail::read_set_literal(r, o, scratch);
        } else if (c == '{') {
          o.kind = Kind::Hash;
          ok = detail::read_hash(r, o.hash, scratch) &&
               (!o.hash.empty() || r.fail_at(value_at, "an empty hash (an empty hash is no key)"));
        } else if (c == '[') {
          o.kind = Kind::List;
          ok = detail::read_list(r, o.list) &&
               (!o.list.empty() || r.fail_at(value_at, "an empty list (an empty list is no key)"));
        } else if (r.at_string()) {
          ok = r.string(o.str);
        } else {
          ok = r.fail_expected("a str, bytes, dict, set or list value for key " +
                               detail::key_for_error(it->first));
        }
        if (!ok) return fail();
      }
      if (r.failed()) return fail();
    }
  }
  if (r.failed()) return fail();
  if (!r.at_end()) {
    r.fail_at(r.here(), "unexpected text after the snapshot's closing '}'");
    return fail();
  }
  if (!has_meta || !has_data || !has_ttl) {
    r.fail_at(0, std::string("a snapshot needs '_META_', 'data' and 'ttl' (missing ") +
                     (!has_meta ? "'_META_'" : !has_data ? "'data'" : "'ttl'") + ")");
    return fail();
  }
  if (has_sessions != (format >= 3)) {
    r.fail_at(has_sessions ? sessions_at : 0, "a snapshot of format " + std::to_string(format) +
                                                  (has_sessions ? " has no 'sessions'" : " needs 'sessions'"));
    return fail();
  }
  if (has_session_clock != (format >= 4)) {
    r.fail_at(has_session_clock ? session_clock_at : 0,
              "a snapshot of format " + std::to_string(format) +
                  (has_session_clock ? " has no 'session_clock'" : " needs 'session_clock'"));
    return fail();
  }
  // Before format 4 the sessions' times are leader times: session time starts at the stamp.
  if (format < 4) session_clock = last_stamp = m.timestamp_ms;
  store.sessions_.set_clock(session_clock, last_stamp);
  for (const auto& d : deadlines) {
    const auto it = store.objects_.find(d.key);
    if (it == store.objects_.end()) {
      r.fail_at(d.at, "ttl for key " + detail::key_for_error(d.key) + ", which is not in 'data'");
      return fail();
    }
    if (it->second.deadline) {
      r.fail_at(d.at, "duplicate ttl key " + detail::key_for_error(d.key));
      return fail();
    }
    store.set_deadline(d.key, d.deadline_ms);
  }
  for (const auto& s : stamps) {
    const auto it = store.objects_.find(s.key);
    if (it == store.objects_.end() || s.deadline_ms <= 0 || it->second.modified != 0) {
      r.fail_at(s.at, "modified stamp for key " + detail::key_for_error(s.key) +
                          (it == store.objects_.end() ? ", which is not in 'data'" : " repeated or not positive"));
      return fail();
    }
    it->second.modified = static_cast<std::uint64_t>(s.deadline_ms);
  }
  for (const auto& t : tombstones) {
    if (t.deadline_ms <= 0 || !store.tombstones_.emplace(t.key, static_cast<std::uint64_t>(t.deadline_ms)).second) {
      r.fail_at(t.at, "deleted key stamp for " + detail::key_for_error(t.key) + " repeated or not positive");
      return fail();
    }
    store.tombstone_order_.emplace(static_cast<std::uint64_t>(t.deadline_ms), t.key);
  }
  if (forgotten_index < 0) {
    r.fail_at(0, "a negative forgotten index in 'modified'");
    return fail();
  }
  store.forgotten_index_ = static_cast<std::uint64_t>(forgotten_index);
  store.recount_memory();
  data = std::move(store);
  meta = std::move(m);
  return true;
}

inline bool Store::read_pyraft_snapshot(std::string_view text, Store& data, std::string& error) {
  detail::LiteralReader r(text);
  Store store;
  std::vector<detail::PendingDeadline> deadlines;
  std::string key, scratch;
  bool has_meta = false, has_ttl = false;
  const auto fail = [&] { return detail::snapshot_error(r, error); };

  if (!r.expect('{', "'{' at the start of a pyraft snapshot")) return fail();
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(key) || !r.expect(':', "':' after a dict key")) return fail();
    if (key == "_META_" || key == "ttl") {
      bool& seen = key == "_META_" ? has_meta : has_ttl;
      if (seen) {
        r.fail_at(at, "duplicate top-level key " + detail::key_for_error(key));
        return fail();
      }
      seen = true;
      if (r.peek() != '{') {
        r.fail_expected("a dict for " + detail::key_for_error(key));
        return fail();
      }
      if (!(key == "ttl" ? detail::read_deadlines(r, deadlines, true) : r.skip_value()))
        return fail();
      continue;
    }
    if (store.objects_.count(key) != 0) {
      r.fail_at(at, "duplicate key " + detail::key_for_error(key));
      return fail();
    }
    Object o;
    const char c = r.peek();
    bool ok = true;
    if (c == '{') {
      o.kind = Kind::Hash;
      // A nested dict here is pyraft's tree data (tset/tmk): no Redis type holds it.
      ok = detail::read_hash(r, o.hash, scratch);
    } else if (c == '[') {
      o.kind = Kind::List;
      ok = detail::read_list(r, o.list);
    } else if (r.at_string()) {
      ok = r.string(o.str);
    } else {
      ok = r.fail_expected("a str, a dict or a list");
    }
    if (!ok) {
      // Name the key, whatever went wrong inside its value.
      error = "invalid snapshot at byte " + std::to_string(at) + ": the value of key " +
              detail::key_for_error(key) +
              " cannot be loaded (this store holds a str, a dict of str or a list of str): " +
              r.error();
      return false;
    }
    if (o.kind == Kind::Hash ? o.hash.empty() : o.kind == Kind::List && o.list.empty())
      continue;  // pyraft leaves emptied containers behind; Redis has no empty ones
    store.objects_.emplace(std::move(key), Record{std::move(o), std::nullopt});
  }
  if (r.failed()) return fail();
  if (!r.at_end()) {
    r.fail_at(r.here(), "unexpected text after the snapshot's closing '}'");
    return fail();
  }
  // pyraft's del leaves ttl entries of deleted keys behind: those are skipped.
  for (const auto& d : deadlines)
    if (store.objects_.count(d.key) != 0) store.set_deadline(d.key, d.deadline_ms);
  store.recount_memory();
  data = std::move(store);
  return true;
}

// ---- SessionTable members ----

namespace detail {

/// now_ms - since >= SessionTable::kIdleMs, without overflow.
inline bool idle_long_enough(std::int64_t since, std::int64_t now_ms) {
  return now_ms >= since &&
         static_cast<std::uint64_t>(now_ms) - static_cast<std::uint64_t>(since) >=
             static_cast<std::uint64_t>(SessionTable::kIdleMs);
}

inline SessionTable::Verdict SessionTable::begin(const Key& key, std::uint64_t seq,
                                                 std::uint64_t lowest_unanswered, std::int64_t stamp_ms,
                                                 std::string& reply) {
  observe(stamp_ms);
  const std::int64_t now_ms = clock_ms_;
  auto it = sessions_.find(key);
  if (it == sessions_.end()) {
    if (sessions_.size() >= kMaxSessions) return Verdict::Full;
    it = add(key, now_ms);
  } else {
    touch(it, now_ms);
  }
  advance(it, lowest_unanswered);
  const auto r = it->second.replies.find(seq);
#ifdef RAFT_MUTANT_SESSION_FORGETS_REPLIES
  if (false) {  // mutant: a write sent again runs again
#else
  if (r != it->second.replies.end()) {
#endif
    reply = r->second;
    return Verdict::Duplicate;
  }
  return seq < it->second.lowest ? Verdict::Stale : Verdict::Apply;
}

inline void SessionTable::record(const Key& key, std::uint64_t seq, std::string reply) {
  const auto it = sessions_.find(key);
  if (it == sessions_.end() || seq < it->second.lowest) return;
  const std::size_t c = cost(reply);
  if (!it->second.replies.emplace(seq, std::move(reply)).second) return;
  it->second.bytes += c;
  bytes_ += c;
  shed_replies();
}

inline void SessionTable::observe(std::int64_t stamp_ms) {
  if (last_stamp_ms_ == 0 && clock_ms_ == 0) {
    clock_ms_ = last_stamp_ms_ = stamp_ms;  // a fresh table: session time starts here
  } else if (stamp_ms > last_stamp_ms_) {
    const std::uint64_t step = static_cast<std::uint64_t>(stamp_ms) - static_cast<std::uint64_t>(last_stamp_ms_);
#ifdef RAFT_MUTANT_SESSION_TIME_JUMPS
    clock_ms_ += static_cast<std::int64_t>(step);  // mutant: a leader's clock jump forgets every session
#else
    clock_ms_ += static_cast<std::int64_t>(std::min<std::uint64_t>(step, kMaxClockStepMs));
#endif
    last_stamp_ms_ = stamp_ms;
  }
  expire(clock_ms_);
}

inline void SessionTable::expire(std::int64_t now_ms) {
  while (!by_activity_.empty() && idle_long_enough(by_activity_.begin()->first, now_ms)) {
    const auto it = sessions_.find(by_activity_.begin()->second);
    bytes_ -= it->second.bytes;
    sessions_.erase(it);
    by_activity_.erase(by_activity_.begin());
  }
}

inline const std::string* SessionTable::reply(const Key& key, std::uint64_t seq) const {
  const auto it = sessions_.find(key);
  if (it == sessions_.end()) return nullptr;
  const auto r = it->second.replies.find(seq);
  return r == it->second.replies.end() ? nullptr : &r->second;
}

inline SessionTable::Sessions::iterator SessionTable::add(const Key& key, std::int64_t now_ms) {
  const auto it = sessions_.emplace(key, Session{}).first;
  it->second.active_ms = now_ms;
  by_activity_.emplace(now_ms, key);
  return it;
}

inline void SessionTable::touch(Sessions::iterator it, std::int64_t now_ms) {
  if (now_ms <= it->second.active_ms) return;
  by_activity_.erase({it->second.active_ms, it->first});
  it->second.active_ms = now_ms;
  by_activity_.emplace(now_ms, it->first);
}

/// The follower waits for nothing below `lowest` any more: its replies go.
inline void SessionTable::advance(Sessions::iterator it, std::uint64_t lowest) {
  Session& s = it->second;
  if (lowest <= s.lowest) return;
  s.lowest = lowest;
  const auto end = s.replies.lower_bound(lowest);
  for (auto r = s.replies.begin(); r != end; ++r) {
    s.bytes -= cost(r->second);
    bytes_ -= cost(r->second);
  }
  s.replies.erase(s.replies.begin(), end);
}

/// Over kMaxReplyBytes: the session with the most bytes (the first in key order among equals)
/// loses its oldest reply, until the total fits.
inline void SessionTable::shed_replies() {
  while (bytes_ > kMaxReplyBytes) {
    auto most = sessions_.end();
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
      if (!it->second.replies.empty() && (most == sessions_.end() || it->second.bytes > most->second.bytes))
        most = it;
    if (most == sessions_.end()) return;
    advance(most, most->second.replies.begin()->first + 1);
  }
}

inline void SessionTable::write(std::string& out) const {
  out += '[';
  bool first = true;
  for (const auto& [key, s] : sessions_) {
    if (!first) out += ", ";
    first = false;
    out += "{'node': ";
    append_repr(out, key.node);
    out += ", 'server_id': ";
    append_repr(out, key.server_id);
    out += ", 'nonce': " + std::to_string(key.nonce) + ", 'lowest': " + std::to_string(s.lowest) +
           ", 'active': " + std::to_string(s.active_ms) + ", 'replies': {";
    bool first_reply = true;
    for (const auto& [seq, reply] : s.replies) {
      if (!first_reply) out += ", ";
      first_reply = false;
      out += std::to_string(seq);
      out += ": ";
      append_repr(out, reply);
    }
    out += "}}";
  }
  out += ']';
}

inline bool SessionTable::read(LiteralReader& r) {
  SessionTable table;
  if (!r.expect('[', "'[' (the sessions list)")) return false;
  bool first = true;
  std::string name;
  while (r.next_element(']', first)) {
    const std::size_t session_at = r.here();
    if (!r.expect('{', "'{' (a session dict)")) return false;
    Key key;
    Session s;
    bool has[6] = {};
    static const char* const kFields[6] = {"node", "server_id", "nonce", "lowest", "active", "replies"};
    bool first_field = true;
    while (r.next_element('}', first_field)) {
      const std::size_t field_at = r.here();
      if (!r.string(name) || !r.expect(':', "':' after a dict key")) return false;
      const auto field = std::find_if(std::begin(kFields), std::end(kFields), [&](const char* f) { return name == f; });
      if (field == std::end(kFields))
        return r.fail_at(field_at, "unknown session field " + key_for_error(name) +
                                       " (expected 'node', 'server_id', 'nonce', 'lowest', 'active' or 'replies')");
      const auto k = static_cast<std::size_t>(field - std::begin(kFields));
      if (has[k]) return r.fail_at(field_at, "duplicate session field " + key_for_error(name));
      has[k] = true;
      bool ok = true;
      switch (k) {
        case 0: ok = r.string(key.node); break;
        case 1: ok = r.string(key.server_id); break;
        case 2: ok = r.unsigned_integer(key.nonce); break;
        case 3: ok = r.unsigned_integer(s.lowest); break;
        case 4: ok = r.integer(s.active_ms); break;
        default: {
          if (!r.expect('{', "'{' (the replies dict)")) return false;
          bool first_reply = true;
          while (r.next_element('}', first_reply)) {
            const std::size_t reply_at = r.here();
            std::uint64_t seq = 0;
            if (!r.unsigned_integer(seq) || !r.expect(':', "':' after a dict key")) return false;
            auto [it, inserted] = s.replies.try_emplace(seq);
            if (!inserted) return r.fail_at(reply_at, "duplicate reply " + std::to_string(seq));
            if (!r.string(it->second)) return false;
            s.bytes += cost(it->second);
          }
          ok = !r.failed();
        }
      }
      if (!ok) return false;
    }
    if (r.failed()) return false;
    if (!std::all_of(std::begin(has), std::end(has), [](bool b) { return b; }))
      return r.fail_at(session_at, "a session needs 'node', 'server_id', 'nonce', 'lowest', 'active' and 'replies'");
    if (!s.replies.empty() && s.replies.begin()->first < s.lowest)
      return r.fail_at(session_at, "a session keeps a reply below its 'lowest'");
    if (table.sessions_.count(key) != 0) return r.fail_at(session_at, "duplicate session");
    table.bytes_ += s.bytes;
    table.by_activity_.emplace(s.active_ms, key);
    table.sessions_.emplace(std::move(key), std::move(s));
  }
  if (r.failed()) return false;
  *this = std::move(table);
  return true;
}

/// A built-in command's handler: a type of its own, so that the runtime can tell it from a
/// program's (built-ins are applied without the undo record: see the Store class comment).
struct BuiltinHandler {
  Reply (*fn)(Call&);
  int min_args;
  int max_args;

  Reply operator()(Call& c) const {
    // The runtime checks argument counts before calling; checking again here keeps a
    // handler called directly from indexing past its words.
    const auto n = static_cast<long long>(c.words.size()) - 1;
    if (n < min_args || (max_args >= 0 && n > max_args))
      return arity_error(c.words.empty() ? std::string_view() : c.words[0]);
    return fn(c);
  }
};

inline bool is_builtin(const Command& cmd) { return cmd.fn.target<BuiltinHandler>() != nullptr; }

}  // namespace detail

inline void add_builtin_commands(CommandTable& table) {
  using Fn = Reply (*)(Call&);
  const auto add = [&table](const char* name, const char* flags, int min_args, int max_args,
                            Fn fn) {
    Command cmd;
    cmd.flags = flags;
    cmd.min_args = min_args;
    cmd.max_args = max_args;
    cmd.fn = detail::BuiltinHandler{fn, min_args, max_args};
    table.emplace(name, std::move(cmd));
  };
  using namespace detail;
  // strings
  add("get", "r", 1, 1, cmd_get);
  add("set", "we", 2, -1, cmd_set);
  add("setnx", "we", 2, 2, cmd_setnx);
  add("getset", "we", 2, 2, cmd_getset);
  add("mget", "r", 1, -1, cmd_mget);
  add("mset", "we", 2, -1, cmd_mset);
  add("incr", "we", 1, 1, cmd_incr);
  add("decr", "we", 1, 1, cmd_decr);
  add("incrby", "we", 2, 2, cmd_incrby);
  add("decrby", "we", 2, 2, cmd_decrby);
  add("append", "we", 2, 2, cmd_append);
  add("strlen", "r", 1, 1, cmd_strlen);
  add("getex", "wes", 1, -1, cmd_getex);
  add("getdel", "wes", 1, 1, cmd_getdel);
  add("setex", "we", 3, 3, cmd_setex);
  add("psetex", "we", 3, 3, cmd_psetex);
  add("msetnx", "we", 2, -1, cmd_msetnx);
  add("getrange", "r", 3, 3, cmd_getrange);
  add("setrange", "we", 3, 3, cmd_setrange);
  add("incrbyfloat", "we", 2, 2, cmd_incrbyfloat);
  // compare-and-set (and SET's IFEQ / IFNE)
  add("delex", "wes", 1, -1, cmd_delex);
  add("delifeq", "wes", 2, 2, cmd_delifeq);
  // keys and expiry
  add("del", "wes", 1, -1, cmd_del);
  add("exists", "r", 1, -1, cmd_exists);
  add("type", "r", 1, 1, cmd_type);
  add("dbsize", "r", 0, 0, cmd_dbsize);
  add("keys", "r", 1, 1, cmd_keys);
  add("expire", "wes", 2, -1, cmd_expire);
  add("pexpire", "wes", 2, -1, cmd_pexpire);
  add("expireat", "wes", 2, -1, cmd_expireat);
  add("pexpireat", "wes", 2, -1, cmd_pexpireat);
  add("ttl", "r", 1, 1, cmd_ttl);
  add("pttl", "r", 1, 1, cmd_pttl);
  add("persist", "wes", 1, 1, cmd_persist);
  add("rename", "wes", 2, 2, cmd_rename);
  add("renamenx", "wes", 2, 2, cmd_renamenx);
  add("copy", "we", 2, -1, cmd_copy);
  add("unlink", "wes", 1, -1, cmd_del);
  add("touch", "r", 1, -1, cmd_exists);
  add("randomkey", "r", 0, 0, cmd_randomkey);
  add("flushall", "wes", 0, -1, cmd_flushall);
  add("flushdb", "wes", 0, -1, cmd_flushall);
  add("expiretime", "r", 1, 1, cmd_expiretime);
  add("pexpiretime", "r", 1, 1, cmd_pexpiretime);
  add("object", "r", 1, -1, cmd_object);
  add("scan", "r", 1, -1, cmd_scan);
  // hashes
  add("hset", "we", 3, -1, cmd_hset);
  add("hmset", "we", 3, -1, cmd_hmset);
  add("hget", "r", 2, 2, cmd_hget);
  add("hdel", "wes", 2, -1, cmd_hdel);
  add("hlen", "r", 1, 1, cmd_hlen);
  add("hgetall", "r", 1, 1, cmd_hgetall);
  add("hexists", "r", 2, 2, cmd_hexists);
  add("hkeys", "r", 1, 1, cmd_hkeys);
  add("hvals", "r", 1, 1, cmd_hvals);
  add("hmget", "r", 2, -1, cmd_hmget);
  add("hincrby", "we", 3, 3, cmd_hincrby);
  add("hincrbyfloat", "we", 3, 3, cmd_hincrbyfloat);
  add("hsetnx", "we", 3, 3, cmd_hsetnx);
  add("hstrlen", "r", 2, 2, cmd_hstrlen);
  add("hrandfield", "r", 1, -1, cmd_hrandfield);
  add("hscan", "r", 2, -1, cmd_hscan);
  // lists
  add("lpush", "we", 2, -1, cmd_lpush);
  add("rpush", "we", 2, -1, cmd_rpush);
  add("lpop", "wes", 1, 2, cmd_lpop);
  add("rpop", "wes", 1, 2, cmd_rpop);
  add("lrange", "r", 3, 3, cmd_lrange);
  add("lindex", "r", 2, 2, cmd_lindex);
  add("llen", "r", 1, 1, cmd_llen);
  add("lset", "we", 3, 3, cmd_lset);
  add("lrem", "wes", 3, 3, cmd_lrem);
  add("ltrim", "wes", 3, 3, cmd_ltrim);
  // sets
  add("sadd", "we", 2, -1, cmd_sadd);
  add("srem", "wes", 2, -1, cmd_srem);
  add("smembers", "r", 1, 1, cmd_smembers);
  add("sismember", "r", 2, 2, cmd_sismember);
  add("smismember", "r", 2, -1, cmd_smismember);
  add("scard", "r", 1, 1, cmd_scard);
  add("spop", "wes", 1, -1, cmd_spop);
  add("srandmember", "r", 1, -1, cmd_srandmember);
  add("sinter", "r", 1, -1, cmd_sinter);
  add("sunion", "r", 1, -1, cmd_sunion);
  add("sdiff", "r", 1, -1, cmd_sdiff);
  add("sinterstore", "we", 2, -1, cmd_sinterstore);
  add("sunionstore", "we", 2, -1, cmd_sunionstore);
  add("sdiffstore", "we", 2, -1, cmd_sdiffstore);
  add("smove", "wes", 3, 3, cmd_smove);
  add("sscan", "r", 2, -1, cmd_sscan);
  // sorted sets
  add("zadd", "we", 3, -1, cmd_zadd);
  add("zincrby", "we", 3, 3, cmd_zincrby);
  add("zrem", "wes", 2, -1, cmd_zrem);
  add("zscore", "r", 2, 2, cmd_zscore);
  add("zmscore", "r", 2, -1, cmd_zmscore);
  add("zcard", "r", 1, 1, cmd_zcard);
  add("zcount", "r", 3, 3, cmd_zcount);
  add("zrank", "r", 2, 2, cmd_zrank);
  add("zrevrank", "r", 2, 2, cmd_zrevrank);
  add("zrange", "r", 3, -1, cmd_zrange);
  add("zrangebyscore", "r", 3, -1, cmd_zrangebyscore);
  add("zrevrangebyscore", "r", 3, -1, cmd_zrevrangebyscore);
  add("zremrangebyscore", "wes", 3, 3, cmd_zremrangebyscore);
  add("zremrangebyrank", "wes", 3, 3, cmd_zremrangebyrank);
  add("zpopmin", "wes", 1, -1, cmd_zpopmin);
  add("zpopmax", "wes", 1, -1, cmd_zpopmax);
  add("zscan", "r", 2, -1, cmd_zscan);
  // lists (Redis 6.2+)
  add("lpushx", "we", 2, -1, cmd_lpushx);
  add("rpushx", "we", 2, -1, cmd_rpushx);
  add("lpos", "r", 2, -1, cmd_lpos);
  add("linsert", "we", 4, 4, cmd_linsert);
  add("lmove", "we", 4, 4, cmd_lmove);
  add("rpoplpush", "we", 2, 2, cmd_rpoplpush);
  // blocking pops (the waiting is the client server's: 5n2_blocking.hpp)
  add("blpop", "wes", 2, -1, cmd_blpop);
  add("brpop", "wes", 2, -1, cmd_brpop);
  add("blmove", "we", 5, 5, cmd_blmove);
  add("bzpopmin", "wes", 2, -1, cmd_bzpopmin);
  add("bzpopmax", "wes", 2, -1, cmd_bzpopmax);
}

}  // namespace raft
// ---- src/raft/3_core.hpp ----

// ============================================================================================
// 3. The core: Raft as a deterministic state machine
// ============================================================================================
//
// No threads, sockets, files or clock. The core is given ticks (tick), messages (step),
// proposals (propose, propose_config) and read requests (read_index), and answers with a
// Ready batch (ready): what to make durable, what to send now and what only once that is
// durable, what is committed and may be applied, and what happened. The runtime (section 5)
// drives it with sockets and disks; the simulation tests drive it with a seeded network.
//
// Beyond the Raft paper's figure 2, it keeps the rules of DESIGN.md: pre-vote and elections
// campaign for term + term_step (pyraft's +10, made safe by being part of the election);
// only voters of a configuration the node holds ever campaign; leader stickiness and
// check-quorum; one membership change at a time, used on append and reverted on truncation;
// ReadIndex with a heartbeat round; timeouts that abort a proposal report "unknown outcome"
// and never remove an entry.

namespace raft {

// ---- the core's types: log entries, what to persist, messages, and its output batch ----

enum class EntryType : std::uint8_t {
  Command = 0,  // payload: the command's words, RESP-encoded (resp::write_command)
  Noop = 1,     // a new leader's first entry of its term; empty payload
  Config = 2,   // payload: Configuration::encode()
};

/// One entry of the replicated log.
struct LogEntry {
  std::uint64_t index = 0;
  std::uint64_t term = 0;
  EntryType type = EntryType::Command;
  /// The leader's wall clock when it appended the entry, in ms since the epoch. Never
  /// decreases along the log (a leader stamps max(now, previous stamp)). Write handlers use it
  /// as "now", so every node computes the same result.
  std::int64_t timestamp_ms = 0;
  std::string payload;

  bool operator==(const LogEntry& o) const {
    return index == o.index && term == o.term && type == o.type &&
           timestamp_ms == o.timestamp_ms && payload == o.payload;
  }
  bool operator!=(const LogEntry& o) const { return !(*this == o); }
};

/// What a node must make durable before it answers a vote: its term and whom it voted for.
struct HardState {
  std::uint64_t term = 0;
  NodeId vote;  // empty: no vote in this term

  bool operator==(const HardState& o) const { return term == o.term && vote == o.vote; }
  bool operator!=(const HardState& o) const { return !(*this == o); }
};

/// A snapshot: its metadata and the store's text form (section 2: repr-style, readable by
/// Python's ast.literal_eval).
struct Snapshot {
  SnapshotMeta meta;
  std::string data;
};

/// Bytes of a snapshot being received from the leader, for the storage to write at `offset`
/// of the data of its incoming snapshot file (offset 0 starts that file anew). The core keeps
/// only how much arrived and its CRC-32C; the bytes live in the file (and in the PersistBatch
/// until the storage took them), so a large transfer is never held whole in memory.
struct SnapshotChunk {
  std::uint64_t index = 0;  // the snapshot's last entry
  std::uint64_t term = 0;
  std::uint64_t offset = 0;
  std::string data;
};

/// The last chunk of a received snapshot is in Ready::persist: once that batch is written,
/// the runtime has the storage read the incoming file back (its length and CRC-32C must be
/// these, which the core computed over the bytes as they arrived), parses it, and hands the
/// result to Core::received_snapshot_loaded. Nothing is deleted or installed before that.
struct ReceivedSnapshot {
  SnapshotMeta meta;
  std::uint64_t size = 0;
  std::uint32_t crc32c = 0;
};

/// The core's instructions to the storage, made durable in `seq` order. The rule that keeps
/// Raft safe: a message that promises something (a vote, an acknowledgement) is sent only
/// after the batch that holds what it promises is durable.
struct PersistBatch {
  std::uint64_t seq = 0;
  /// A snapshot received from the leader, made durable first. When the log on disk holds
  /// the snapshot's last entry (same index and term), the log after it is kept and only
  /// what the snapshot covers may go (Raft §7). Otherwise it REPLACES THE WHOLE LOG: the log
  /// on disk is then empty and continues at snapshot->meta.index + 1.
  std::shared_ptr<const Snapshot> snapshot;
  std::optional<HardState> hard_state;
  /// Appended after the snapshot. Entries the log on disk holds already (same index and
  /// term: by Log Matching, the same entries) are skipped, so durable entries are never
  /// deleted to be written again; the log is cut at the first entry whose term differs from
  /// the log's (a follower overwriting a conflicting suffix), and the rest is appended.
  std::vector<LogEntry> entries;
  /// Chunks of a snapshot being received, in order: written to the incoming snapshot file,
  /// not synced (the offset reached is not durable state: after a crash the transfer starts
  /// again from 0, and open() deletes the partial file). Independent of the log.
  std::vector<SnapshotChunk> snapshot_chunks;

  bool empty() const { return !snapshot && !hard_state && entries.empty() && snapshot_chunks.empty(); }
};


enum class MessageType : std::uint8_t {
  PreVote = 1,
  PreVoteResponse,
  Vote,
  VoteResponse,
  Append,
  AppendResponse,
  Heartbeat,
  HeartbeatResponse,
  Snapshot,
  SnapshotResponse,
  TimeoutNow,
  ReadIndex,
  ReadIndexResponse,
};

inline const char* to_string(MessageType t) {
  switch (t) {
    case MessageType::PreVote: return "PreVote";
    case MessageType::PreVoteResponse: return "PreVoteResponse";
    case MessageType::Vote: return "Vote";
    case MessageType::VoteResponse: return "VoteResponse";
    case MessageType::Append: return "Append";
    case MessageType::AppendResponse: return "AppendResponse";
    case MessageType::Heartbeat: return "Heartbeat";
    case MessageType::HeartbeatResponse: return "HeartbeatResponse";
    case MessageType::Snapshot: return "Snapshot";
    case MessageType::SnapshotResponse: return "SnapshotResponse";
    case MessageType::TimeoutNow: return "TimeoutNow";
    case MessageType::ReadIndex: return "ReadIndex";
    case MessageType::ReadIndexResponse: return "ReadIndexResponse";
  }
  return "?";
}

/// One message between cores. A flat struct; which fields mean what depends on the type:
///   PreVote, Vote       term: the campaign's term; index, log_term: the candidate's last
///                       entry; transfer: leadership transfer (voters ignore stickiness)
///   *VoteResponse       term; reject
///   Append              index, log_term: the entry before `entries`; entries; commit
///   AppendResponse      reject false: index = the highest index known to match the leader
///                       reject true: index = the rejected previous index; hint_index,
///                       hint_term: where the follower's log may match (fast back-off)
///   Heartbeat           commit (at most the follower's match); context: read round
///   HeartbeatResponse   context: the round echoed
///   Snapshot            index, log_term, config, timestamp_ms: the snapshot's metadata;
///                       offset, data: one chunk; done: the last chunk
///   SnapshotResponse    index: the snapshot's index; offset: bytes received so far; reject:
///                       resend from offset; done: installed (index now matches)
///   TimeoutNow          campaign now (leadership transfer)
///   ReadIndex           context: the follower's request id
///   ReadIndexResponse   context; index: the read index; reject: no read index (not leader);
///                       timestamp_ms: the leader's time for the read (see ReadState)
struct Message {
  MessageType type = MessageType::Heartbeat;
  NodeId from;
  NodeId to;
  std::string server_id;  // the sender's server id (see Member::server_id)
  std::uint64_t term = 0;
  std::uint64_t index = 0;
  std::uint64_t log_term = 0;
  std::uint64_t commit = 0;
  std::vector<LogEntry> entries;
  bool reject = false;
  std::uint64_t hint_index = 0;
  std::uint64_t hint_term = 0;
  bool transfer = false;
  std::uint64_t context = 0;
  Configuration config;
  std::uint64_t offset = 0;
  std::string data;
  bool done = false;
  std::int64_t timestamp_ms = 0;

  bool operator==(const Message& o) const {
    return type == o.type && from == o.from && to == o.to && server_id == o.server_id && term == o.term &&
           index == o.index && log_term == o.log_term && commit == o.commit && entries == o.entries &&
           reject == o.reject && hint_index == o.hint_index && hint_term == o.hint_term &&
           transfer == o.transfer && context == o.context && config == o.config && offset == o.offset &&
           data == o.data && done == o.done && timestamp_ms == o.timestamp_ms;
  }
  bool operator!=(const Message& o) const { return !(*this == o); }
};

/// The outcome of a linearizable read request: once ok, the read may be served as soon as
/// the node has applied `index`, and judges expiry at `time_ms` (or the timestamp of the last
/// entry applied, if later): the confirming leader's clock, never below any stamp it issued,
/// so that every node judges a read alike whatever its own clock says.
struct ReadState {
  std::uint64_t request_id = 0;
  std::uint64_t index = 0;
  bool ok = false;
  std::int64_t time_ms = 0;
  std::uint64_t term = 0;  // the term of the leader that confirmed it
};

/// Names one log entry.
struct EntryId {
  std::uint64_t index = 0;
  std::uint64_t term = 0;
  bool operator==(const EntryId& o) const { return index == o.index && term == o.term; }
};

struct RoleChange {
  Role role = Role::Follower;
  std::uint64_t term = 0;
  NodeId leader;  // empty when unknown
};

/// The core's output batch: everything to do after one or more inputs. Do it in this
/// order: hand `persist` to the storage and send `messages` at once; send `after_persist`
/// only when `persist` and every earlier batch are durable, then call Core::persisted(seq);
/// apply `restore` (if set) and then `committed`, in order.
struct Ready {
  PersistBatch persist;                 // persist.seq != 0 when there is a batch (maybe empty)
  std::vector<Message> messages;        // send now
  std::vector<Message> after_persist;   // send once persist.seq is durable
  std::shared_ptr<const Snapshot> restore;  // replace the state machine with this first
  std::vector<LogEntry> committed;      // committed and durable here: apply in order
  std::vector<ReadState> reads;         // results of read_index() requests
  std::vector<EntryId> aborted;         // proposals now of unknown outcome (timeout, lost leadership)
  std::vector<RoleChange> role_changes;  // in the order they happened
  std::uint64_t leader_ready_term = 0;  // nonzero: leading in this term and its first entry committed
  bool snapshot_wanted = false;         // the log since the last snapshot is long: take one
  std::vector<std::string> refused;     // input the core refused (a term out of bounds, a bad snapshot), and why
  /// Set: the last chunk of a received snapshot is in `persist`; once it is written, load
  /// and check the incoming file and call Core::received_snapshot_loaded (see there).
  std::optional<ReceivedSnapshot> received_snapshot;

  bool empty() const {
    return persist.seq == 0 && messages.empty() && after_persist.empty() && !restore &&
           committed.empty() && reads.empty() && aborted.empty() && role_changes.empty() &&
           leader_ready_term == 0 && !snapshot_wanted && refused.empty() && !received_snapshot;
  }
};

namespace detail {

// CRC-32C (Castagnoli), slice-by-8. The tables are built at compile time.
struct Crc32cTables {
  std::uint32_t t[8][256] = {};
  constexpr Crc32cTables() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
  }
};
inline constexpr Crc32cTables kCrc32cTables{};

/// CRC-32C of `size` bytes; pass a previous result as `crc` to continue it over more bytes.
inline std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc = 0) {
  const auto* p = static_cast<const unsigned char*>(data);
  const auto& t = kCrc32cTables.t;
  crc = ~crc;
  while (size >= 8) {
    const std::uint32_t lo = crc ^ (std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 |
                                    std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24);
    const std::uint32_t hi = std::uint32_t{p[4]} | std::uint32_t{p[5]} << 8 |
                             std::uint32_t{p[6]} << 16 | std::uint32_t{p[7]} << 24;
    crc = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
          t[3][hi & 0xFFu] ^ t[2][(hi >> 8) & 0xFFu] ^ t[1][(hi >> 16) & 0xFFu] ^ t[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size-- > 0) crc = t[0][(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

}  // namespace detail

/// The largest term a node accepts or reaches. Elections add term_step (at most 2^32) to the
/// term, and 2^62 leaves room for that without wrapping around; at 10 per election it is
/// never reached by elections. A message carrying a larger term is dropped: only a forged or
/// corrupted one can.
constexpr std::uint64_t kMaxTerm = std::uint64_t{1} << 62;
constexpr std::uint64_t kMaxTermStep = std::uint64_t{1} << 32;

/// Tuning of the core. Times are in ticks; the runtime turns milliseconds into ticks.
struct CoreOptions {
  /// This node's id and the server id of its data directory (see Member::server_id).
  NodeId id;
  std::string server_id;

  /// Minimum election timeout. A voter that hears from no leader for a random time in
  /// [election_ticks, 2 * election_ticks) campaigns (Raft §5.2, randomized timeouts). It is
  /// also the check-quorum period and the stickiness window (a voter that heard from a leader
  /// within it ignores campaigns: dissertation §4.2.3).
  int election_ticks = 10;
  /// A leader sends heartbeats this often; must be well below election_ticks.
  int heartbeat_ticks = 1;
  /// Pre-vote (dissertation §9.6): ask first whether an election could be won, so that a
  /// node back from a partition does not raise everyone's term.
  bool pre_vote = true;
  /// A leader that has not heard from a majority within election_ticks steps down
  /// (dissertation §6.2), and voters ignore campaigns while they hear from a leader.
  bool check_quorum = true;
  /// Elections campaign for current term + term_step (pyraft's +10). Any value in
  /// [1, kMaxTermStep] is safe.
  std::uint64_t term_step = 10;
  /// Appends in flight per follower before the leader waits for answers (pipelining).
  std::size_t max_inflight = 256;
  /// Entries per Append message, by payload bytes (at least one entry is always sent).
  std::size_t max_message_bytes = 1u << 20;
  /// A proposal not committed within this many ticks is reported aborted (unknown outcome).
  int proposal_timeout_ticks = 200;
  /// A linearizable read not confirmed within this many ticks fails.
  int read_timeout_ticks = 200;
  /// Ask for a snapshot when this many entries were applied since the last one (pyraft:
  /// 100000), and keep this many entries behind it so slightly slow followers need no snapshot.
  std::uint64_t snapshot_threshold = 100000;
  std::uint64_t snapshot_trailing = 1000;
  /// Learners are promoted to voters automatically while there are fewer voters than this.
  std::size_t max_voters = 5;
  /// Snapshots travel in chunks of this size, this many chunks in flight.
  std::size_t snapshot_chunk_bytes = 1u << 20;
  std::size_t snapshot_chunks_inflight = 4;
  /// A snapshot being received may grow to this many bytes; the chunks are dropped beyond it
  /// (a stream that never ends would otherwise fill the disk: the chunks go to a file).
  std::uint64_t max_snapshot_bytes = std::uint64_t{4} << 30;
  /// Checks a received snapshot before it replaces anything: empty when it may be installed,
  /// else why not (the runtime parses it with the reader that restores it). Called from
  /// received_snapshot_loaded, once the storage read the whole file back. Unset: no check.
  std::function<std::string(const Snapshot&)> check_snapshot;
  /// Seed of the election-timeout randomness (the runtime uses a random one; tests fix it).
  std::uint64_t random_seed = 1;

  /// Empty when valid, else what is wrong.
  std::string validate() const {
    if (id.empty()) return "id must not be empty";
    if (election_ticks < 2) return "election_ticks must be at least 2";
    if (heartbeat_ticks < 1 || heartbeat_ticks >= election_ticks)
      return "heartbeat_ticks must be at least 1 and below election_ticks";
    if (term_step < 1 || term_step > kMaxTermStep) return "term_step must be in [1, 2^32]";
    if (max_inflight < 1) return "max_inflight must be at least 1";
    if (proposal_timeout_ticks < 1 || read_timeout_ticks < 1) return "timeouts must be positive";
    if (snapshot_threshold < 1) return "snapshot_threshold must be at least 1";
    if (max_voters < 1) return "max_voters must be at least 1";
    if (snapshot_chunk_bytes < 1 || snapshot_chunks_inflight < 1)
      return "snapshot chunk size and window must be positive";
    if (max_snapshot_bytes < 1) return "max_snapshot_bytes must be positive";
    return "";
  }
};

/// What a node recovered from its disk, to start a core from.
struct CoreState {
  HardState hard_state;
  std::shared_ptr<const Snapshot> snapshot;  // may be null
  std::vector<LogEntry> entries;             // the log after the snapshot, contiguous
  /// The configuration at index 0, used when neither the snapshot nor the log holds one: a
  /// founder's {itself}, a static peer map, or empty for a joiner.
  Configuration initial_config;
};

struct ProposeResult {
  enum class Error : std::uint8_t {
    None,
    NotLeader,      // nothing appended; `leader` names the leader when known
    Transferring,   // leadership transfer in progress; nothing appended
    NotReady,       // configuration change before the leader's first entry committed
    ConfigPending,  // another configuration change is not committed yet
    InvalidConfig,  // more than one voter changed, no voter left, unknown member...
  };
  Error error = Error::None;
  EntryId id;     // where the entry went, when error == None
  NodeId leader;  // the known leader (for NotLeader)
  bool ok() const { return error == Error::None; }
};

/// The leader's view of one member's log.
struct Progress {
  enum class State : std::uint8_t {
    Probe,      // where the follower's log matches is unknown: one append at a time
    Replicate,  // matching: appends are pipelined, up to max_inflight
    Snapshot,   // the follower needs entries the leader has compacted: snapshot chunks
  };
  State state = State::Probe;
  std::uint64_t match = 0;  // highest index known to be in the member's log
  std::uint64_t next = 1;   // next index to send
  bool probe_sent = false;  // Probe: an append is out; wait for its answer or a heartbeat's
  std::uint64_t probe_sent_tick = 0;
  std::deque<std::uint64_t> inflight;  // Replicate: last index of each append in flight
  bool recent_active = false;          // heard from within the check-quorum period
  std::uint64_t last_heard = 0;        // the tick of its last message (under its identity)
  int stalled_ticks = 0;               // Replicate: ticks with appends out and no answer
  std::string server_id;               // as its messages present it
  // Snapshot state
  std::shared_ptr<const Snapshot> snapshot;
  std::uint64_t snapshot_sent = 0;   // bytes sent
  std::uint64_t snapshot_acked = 0;  // bytes the member confirmed
  bool snapshot_done_sent = false;
  int snapshot_idle_ticks = 0;  // ticks without progress; resend from snapshot_acked
  /// The offset the chunks were last sent again from; none: kNoOffset. A member rejects every
  /// chunk that was in flight before that, each time asking for that same offset: those
  /// answers are stale, and answering each with a window of chunks again would multiply the
  /// chunks without end.
  static constexpr std::uint64_t kNoOffset = ~std::uint64_t{0};
  std::uint64_t snapshot_resent_from = kNoOffset;

  // The state changes, one function each (etcd's BecomeProbe / BecomeReplicate /
  // BecomeSnapshot). Each starts the new state's sending from scratch: what was in flight,
  // stalled or being streamed in the old state is forgotten. match, the activity fields and
  // server_id describe the member, not the sending, and are kept.

  /// Where the member's log matches is unknown: one append at a time, from next_index (match + 1,
  /// or lower than the old next when a rejection said where the logs differ).
  void become_probe(std::uint64_t next_index) {
    forget_sending();
    state = State::Probe;
    next = next_index;
  }
  /// The member's log matches up to match: appends from match + 1, pipelined.
  void become_replicate() {
    forget_sending();
    state = State::Replicate;
    next = match + 1;
  }
  /// The member needs entries the leader compacted away: snapshot chunks from the start.
  /// next is kept; the state after the snapshot is a probe from past what it installed.
  void become_snapshot(std::shared_ptr<const Snapshot> snap) {
    forget_sending();
    state = State::Snapshot;
    snapshot = std::move(snap);
    snapshot_sent = snapshot_acked = 0;
    snapshot_done_sent = false;
    snapshot_idle_ticks = 0;
    snapshot_resent_from = kNoOffset;
  }
  /// Snapshot: chunks sent from `offset` were lost or refused; send again from there (the
  /// member confirmed everything before it).
  void resend_snapshot_from(std::uint64_t offset) {
    snapshot_sent = snapshot_acked = snapshot_resent_from = offset;
    snapshot_done_sent = false;
    snapshot_idle_ticks = 0;
  }

 private:
  void forget_sending() {
    probe_sent = false;
    inflight.clear();
    stalled_ticks = 0;  // a stall counts from the appends of the new state
    snapshot.reset();
  }
};

inline char role_char(Role role, bool voter) {
  switch (role) {
    case Role::Leader: return 'l';
    case Role::Candidate:
    case Role::PreCandidate: return 'c';
    case Role::Follower: return voter ? 'f' : 'n';
  }
  return '?';
}

class Core {
 public:
  Core(CoreOptions options, CoreState state);

  // ---- inputs --------------------------------------------------------------------------
  /// Advances time by one tick; now_ms is the wall clock, used only to stamp entries.
  void tick(std::int64_t now_ms = 0);
  /// Handles one message from a peer.
  void step(const Message& m);
  /// Appends a command on the leader. now_ms: the leader's wall clock for the entry's stamp.
  ProposeResult propose(std::string payload, std::int64_t now_ms);
  /// Proposes the next configuration: at most one voter added or removed, learners free.
  ProposeResult propose_config(const Configuration& next, std::int64_t now_ms);
  ProposeResult add_learner(Member member, std::int64_t now_ms);
  ProposeResult promote(const NodeId& id, std::int64_t now_ms);
  ProposeResult remove(const NodeId& id, std::int64_t now_ms);
  /// Hands leadership to a caught-up voter: stop accepting proposals, bring it up to date,
  /// tell it to campaign at once. Gives up after election_ticks.
  bool transfer_leadership(const NodeId& to);
  /// The voter to hand leadership to when the caller names none (RAFT.TRANSFER alone, a
  /// leader that leaves): the one whose log matches furthest, among those heard from within
  /// the last election timeout (a silent one could not take over: the transfer would only
  /// hold up proposals until it is given up); ties go to the greatest id. Empty when this node
  /// is not the leader or no voter qualifies.
  NodeId best_transfer_target() const;
  /// Starts an election now (if this node is a voter). Tests use it; so does TimeoutNow.
  void campaign() { start_campaign(false); }
  /// Asks for a linearizable read index; the answer comes in Ready::reads.
  void read_index(std::uint64_t request_id);
  /// The runtime made the batch with this seq (and all before it) durable.
  void persisted(std::uint64_t seq);
  /// The storage read back the snapshot a Ready::received_snapshot announced: `snapshot` holds
  /// its metadata and data when `problem` is empty, else `problem` says why the file is not
  /// that snapshot (a length or CRC-32C that differs from what arrived). Checked, then
  /// installed (or the log found to hold it already), and the leader answered; refused with
  /// the log kept as it was. An answer about any other snapshot than the one awaited is ignored.
  void received_snapshot_loaded(std::shared_ptr<const Snapshot> snapshot, const std::string& problem);
  /// The runtime saved this snapshot of its state machine (at most the applied index).
  /// Returns the index up to which the log may now be dropped from disk too.
  std::uint64_t compact(std::shared_ptr<const Snapshot> snapshot);

  // ---- output --------------------------------------------------------------------------
  bool has_ready() const;
  Ready ready();

  // ---- state ---------------------------------------------------------------------------
  const NodeId& id() const { return opts_.id; }
  Role role() const { return role_; }
  bool is_voter() const { return voter_in(config()); }
  /// A voter of `c` under this data directory's identity. A node whose disk was wiped and that
  /// received a configuration naming it under its old server id is no voter there: it forgot
  /// the votes that identity gave, so it neither campaigns nor counts its own vote.
  bool voter_in(const Configuration& c) const {
    const Member* m = c.find(opts_.id);
#ifdef RAFT_MUTANT_WIPED_NODE_VOTES
    return m != nullptr && m->voter;  // mutant: a voter by its id alone
#else
    return m != nullptr && m->voter && (m->server_id.empty() || m->server_id == opts_.server_id);
#endif
  }
  char role_char() const { return raft::role_char(role_, is_voter()); }
  std::uint64_t term() const { return term_; }
  const NodeId& vote() const { return vote_; }
  const NodeId& leader() const { return leader_; }
  bool leader_ready() const { return role_ == Role::Leader && leader_ready_; }
  std::uint64_t commit_index() const { return commit_; }
  std::uint64_t applied_index() const { return applied_; }  // handed out in Ready::committed
  std::uint64_t durable_index() const { return durable_index_; }
  std::uint64_t first_index() const { return log_start_index_ + 1; }
  std::uint64_t last_index() const { return log_start_index_ + entries_.size(); }
  std::uint64_t last_term() const { return term_at(last_index()); }
  std::uint64_t snapshot_index() const { return snapshot_ ? snapshot_->meta.index : 0; }
  /// Term of the entry at index; 0 when the index is compacted away or beyond the log.
  std::uint64_t term_at(std::uint64_t index) const;
  /// The entry at index (first_index() <= index <= last_index()).
  const LogEntry& entry(std::uint64_t index) const {
    return entries_[static_cast<std::size_t>(index - log_start_index_ - 1)];
  }
  /// The configuration in use: the last one in the log, else the snapshot's or initial one.
  const Configuration& config() const {
    return log_configs_.empty() ? base_config_ : log_configs_.back().second;
  }
  /// Index of the entry holding config() (0 for the initial configuration).
  std::uint64_t config_index() const {
    return log_configs_.empty() ? base_config_index_ : log_configs_.back().first;
  }
  /// The configuration in force at an index no older than first_index() - 1.
  Configuration config_at(std::uint64_t index) const;
  const std::map<NodeId, Progress>& progress() const { return progress_; }
  /// Ticks so far (Progress::last_heard counts in them), and since the election timer was last
  /// reset: on a follower, since it last heard from a leader (or granted a vote).
  std::uint64_t ticks() const { return tick_count_; }
  int ticks_since_timer_reset() const { return election_elapsed_; }
  const NodeId& transfer_target() const { return transfer_target_; }
  const CoreOptions& options() const { return opts_; }
  /// Peer messages and received snapshots refused as out of bounds or unreadable (each is
  /// also reported in Ready::refused).
  std::uint64_t refused_count() const { return refused_count_; }
  /// Bytes of the snapshot being received that arrived so far (they are in the storage's
  /// incoming file, or in the next Ready::persist on their way there).
  std::uint64_t receiving_snapshot_bytes() const { return recv_snapshot_size_; }
  /// Bytes of received snapshot data the core holds itself: the chunks that wait in the batch
  /// for the next ready(); zero once it handed them out. Never the whole snapshot.
  std::size_t received_snapshot_bytes_held() const {
    std::size_t n = 0;
    for (const auto& c : batch_.snapshot_chunks) n += c.data.size();
    return n;
  }

 private:
  struct PendingRead {
    std::uint64_t request_id;
    NodeId from;  // empty: this node's own request
    std::uint64_t index;
    std::uint64_t round;
    std::uint64_t deadline;
  };
  struct PendingProposal {
    EntryId id;
    std::uint64_t deadline;
  };
  struct UnpersistedBatch {
    std::uint64_t seq;
    std::uint64_t last_index;  // log end once durable (lowered when the log is cut since)
    std::uint64_t term;        // the hard state's term once durable (0: the batch holds none)
  };

  // roles
  void become_follower(std::uint64_t term, const NodeId& leader);
  void become_pre_candidate();
  void become_candidate(bool transfer);
  void become_leader();
  void start_campaign(bool transfer);
  bool can_campaign() const;
  void note_role_change();
  void reset_election_timer();
  // per-role message handling
  void step_leader(const Message& m);
  void step_candidate(const Message& m);
  void step_follower(const Message& m);
  void handle_vote_request(const Message& m);
  void handle_vote_response(const Message& m);
  void handle_append(const Message& m);
  void handle_heartbeat(const Message& m);
  void handle_snapshot(const Message& m);
  void handle_append_response(Progress& pr, const Message& m);
  void handle_snapshot_response(Progress& pr, const Message& m);
  void handle_read_index_response(const Message& m);
  // log
  bool log_up_to_date(std::uint64_t index, std::uint64_t term) const;
  bool matches(std::uint64_t index, std::uint64_t term) const;
  std::uint64_t find_conflict_by_term(std::uint64_t index, std::uint64_t term) const;
  void append_local(LogEntry e);
  void append_from_leader(const std::vector<LogEntry>& entries);
  void push_entry(LogEntry e);
  void truncate_from(std::uint64_t index);
  void install_snapshot(std::shared_ptr<const Snapshot> snap);
  void commit_to(std::uint64_t index);
  void on_config_changed();
  // leader
  void maybe_commit();
  bool send_append(const NodeId& to, Progress& pr);
  void send_snapshot_chunks(const NodeId& to, Progress& pr);
  void flush_leader_sends();
  void broadcast_heartbeat();
  void tick_leader();
  void tick_follower();
  void maybe_reconfigure();
  void leader_read(std::uint64_t request_id, const NodeId& from);
  void start_read_round();
  void complete_read_round();
  void resolve_read(const PendingRead& r, bool ok);
  void fail_leader_state();
  void expire_timeouts();
  std::size_t quorum() const { return config().voter_count() / 2 + 1; }
  /// Answers to this node's requests: votes and acknowledgements, promises of the sender's
  /// state. (A ReadIndexResponse answers too, but only the node asked knows the request id,
  /// and it makes no promise about the sender's disk.)
  static bool is_answer(MessageType t) {
#ifdef RAFT_MUTANT_STRANGER_CAMPAIGN_IGNORED
    if (t == MessageType::PreVote || t == MessageType::Vote) return true;  // mutant: campaigns dropped too
#endif
    return t == MessageType::PreVoteResponse || t == MessageType::VoteResponse ||
           t == MessageType::AppendResponse || t == MessageType::HeartbeatResponse ||
           t == MessageType::SnapshotResponse;
  }
  // input out of bounds
  static bool terms_within_bound(const Message& m);
  bool next_campaign_term_within_bound();
  void refuse(std::string why, bool counted);
  // messages
  Message make(MessageType type, const NodeId& to) const;
  void send(Message m) { msgs_.push_back(std::move(m)); }
  void send_after_persist(Message m) { msgs_after_.push_back(std::move(m)); }
  std::uint64_t random_below(std::uint64_t n);

  CoreOptions opts_;
  std::uint64_t rng_state_;

  // persistent state (mirrored on disk through PersistBatch)
  std::uint64_t term_ = 0;
  NodeId vote_;
  HardState persisted_hs_;  // the last hard state handed to the storage
  /// The term on disk. Nothing that carries a higher term leaves this node (ready() holds such
  /// messages back until the batch with the term is durable): a node that crashed before its
  /// term reached the disk would otherwise come back in an older term, campaign for the same
  /// term again and write a second, different entry at one (index, term).
  std::uint64_t durable_term_ = 0;

  // the log: entries_ holds (log_start_index_, last_index()]
  std::uint64_t log_start_index_ = 0;
  std::uint64_t log_start_term_ = 0;
  std::deque<LogEntry> entries_;
  std::shared_ptr<const Snapshot> snapshot_;  // the newest snapshot, sent to lagging members
  Configuration base_config_;                 // in force at log_start (snapshot or initial)
  std::uint64_t base_config_index_ = 0;
  std::vector<std::pair<std::uint64_t, Configuration>> log_configs_;  // Config entries in the log
  std::int64_t max_timestamp_ = 0;  // newest entry stamp seen: stamps never go backwards

  // volatile state
  Role role_ = Role::Follower;
  NodeId leader_;
  std::uint64_t commit_ = 0;
  std::uint64_t applied_ = 0;
  std::uint64_t durable_index_ = 0;
  std::uint64_t tick_count_ = 0;
  std::int64_t now_ms_ = 0;
  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_timeout_ = 0;
  std::map<NodeId, bool> votes_;

  // leader state
  std::map<NodeId, Progress> progress_;
  bool leader_ready_ = false;
  std::uint64_t leader_first_index_ = 0;  // the no-op that opens the term
  NodeId transfer_target_;
  // Members whose messages present a server id other than the configuration's (their disk
  // was wiped): id -> (new server id, tick last heard).
  std::map<NodeId, std::pair<std::string, std::uint64_t>> strangers_;
  int transfer_elapsed_ = 0;
  bool timeout_now_sent_ = false;
  std::deque<PendingProposal> pending_proposals_;
  std::uint64_t commit_sent_ = 0;  // the commit index followers were last told
  // reads (leader)
  std::vector<PendingRead> waiting_ready_reads_;  // arrived before the first entry committed
  std::deque<PendingRead> reads_;
  std::uint64_t read_round_ = 0;
  bool read_round_in_flight_ = false;
  std::set<NodeId> read_round_acks_;
  // reads (follower): request id -> deadline tick
  std::map<std::uint64_t, std::uint64_t> forwarded_reads_;
  // snapshot being received (follower): its bytes go to the storage as they arrive
  // (PersistBatch::snapshot_chunks); only how many, and their CRC-32C, stay here
  std::uint64_t recv_snapshot_index_ = 0;
  std::uint64_t recv_snapshot_term_ = 0;
  std::uint64_t recv_snapshot_size_ = 0;
  std::uint32_t recv_snapshot_crc_ = 0;
  // the last chunk arrived: the storage reads the file back (Ready::received_snapshot) and
  // received_snapshot_loaded answers the leader that sent it
  struct SnapshotBeingLoaded {
    NodeId from;
    SnapshotMeta meta;
  };
  std::optional<SnapshotBeingLoaded> recv_loading_;
  std::optional<ReceivedSnapshot> received_out_;

  // output being gathered for the next Ready
  PersistBatch batch_;
  std::vector<Message> msgs_;
  std::vector<Message> msgs_after_;
  std::shared_ptr<const Snapshot> restore_;
  std::vector<ReadState> reads_out_;
  std::vector<EntryId> aborted_;
  std::vector<RoleChange> role_changes_;
  std::vector<std::string> refused_out_;
  std::uint64_t refused_count_ = 0;
  RoleChange last_role_change_;
  bool leader_ready_unreported_ = false;
  bool snapshot_requested_ = false;
  bool snapshot_wanted_out_ = false;
  std::uint64_t next_seq_ = 1;
  std::deque<UnpersistedBatch> unpersisted_;
};

// ============================================================================================
// Core: implementation
// ============================================================================================

inline Core::Core(CoreOptions options, CoreState state)
    : opts_(std::move(options)), rng_state_(opts_.random_seed ^ 0x9e3779b97f4a7c15ull) {
  std::string problem = opts_.validate();
  if (!problem.empty()) throw std::invalid_argument("raft::CoreOptions: " + problem);
  // Nothing this core writes is above kMaxTerm: a larger term on disk was not written by it.
  auto stored_term_within_bound = [](std::uint64_t term, const std::string& what) {
    if (term > kMaxTerm)
      throw std::invalid_argument("raft::CoreState: " + what + " holds term " + std::to_string(term) +
                                  ", above the largest term a node reaches (2^62): the data directory "
                                  "is damaged or was not written by this version");
  };
  stored_term_within_bound(state.hard_state.term, "the hard state");
  if (state.snapshot) stored_term_within_bound(state.snapshot->meta.term, "the snapshot");
  for (const auto& e : state.entries)
    stored_term_within_bound(e.term, "the log entry at index " + std::to_string(e.index));
  term_ = state.hard_state.term;
  vote_ = state.hard_state.vote;
  persisted_hs_ = state.hard_state;
  durable_term_ = state.hard_state.term;
  base_config_ = std::move(state.initial_config);
  if (state.snapshot) {
    snapshot_ = state.snapshot;
    log_start_index_ = snapshot_->meta.index;
    log_start_term_ = snapshot_->meta.term;
    base_config_ = snapshot_->meta.config;
    base_config_index_ = snapshot_->meta.index;
    commit_ = applied_ = snapshot_->meta.index;
#ifndef RAFT_MUTANT_SNAPSHOT_FORGETS_TIME
    // Time never runs backwards: a restart stamps at least what the snapshot covers.
    max_timestamp_ = snapshot_->meta.timestamp_ms;
#endif
  }
  for (auto& e : state.entries) {
    if (e.index != last_index() + 1 || e.term < last_term())
      throw std::invalid_argument("raft::CoreState: log entries are not contiguous at index " +
                                  std::to_string(e.index));
    push_entry(std::move(e));
  }
  durable_index_ = last_index();
#ifdef RAFT_MUTANT_JOINER_CAMPAIGNS
  // mutant: a joiner without a configuration acts as the founder of a cluster of one
  if (config().empty()) base_config_.upsert(Member{opts_.id, "", opts_.server_id, true});
#endif
  last_role_change_ = RoleChange{role_, term_, leader_};
  reset_election_timer();
  // A founder, or a single-voter cluster restarting: nobody else can elect it, so it campaigns
  // at its first tick - not here, where it has no clock yet to stamp its first entry with.
  if (config().voter_count() == 1 && is_voter()) randomized_timeout_ = 1;
}

inline std::uint64_t Core::random_below(std::uint64_t n) {
  // splitmix64: deterministic for a seed on every platform (replays must match).
  std::uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return n == 0 ? 0 : z % n;
}

inline void Core::reset_election_timer() {
  election_elapsed_ = 0;
  randomized_timeout_ =
      opts_.election_ticks + static_cast<int>(random_below(static_cast<std::uint64_t>(opts_.election_ticks)));
}

inline std::uint64_t Core::term_at(std::uint64_t index) const {
  if (index == log_start_index_) return log_start_term_;
  if (index < log_start_index_ || index > last_index()) return 0;
  return entry(index).term;
}

inline Configuration Core::config_at(std::uint64_t index) const {
  Configuration c = base_config_;
  for (const auto& [i, cfg] : log_configs_) {
    if (i > index) break;
    c = cfg;
  }
  return c;
}

inline Message Core::make(MessageType type, const NodeId& to) const {
  Message m;
  m.type = type;
  m.from = opts_.id;
  m.to = to;
  m.server_id = opts_.server_id;
  m.term = term_;
  return m;
}

inline void Core::note_role_change() {
  RoleChange now{role_, term_, leader_};
  if (now.role != last_role_change_.role || now.term != last_role_change_.term ||
      now.leader != last_role_change_.leader) {
    role_changes_.push_back(now);
    last_role_change_ = now;
  }
}

// ---- input out of bounds -------------------------------------------------------------------

// Every term a message carries is at most kMaxTerm, and a leader's entries and the entry its
// snapshot or append follows are never of a later term than the leader's own. With that, and
// term_step at most kMaxTermStep, no term the core computes wraps around.
inline bool Core::terms_within_bound(const Message& m) {
  if (m.term > kMaxTerm || m.log_term > kMaxTerm || m.hint_term > kMaxTerm) return false;
  if (m.type == MessageType::Append || m.type == MessageType::Snapshot) {
    if (m.log_term > m.term) return false;
    for (const auto& e : m.entries)
      if (e.term > m.term) return false;
  }
  return true;
}

// A campaign for a term above kMaxTerm is refused (the node stays a follower): only forged
// terms get there, and wrapping around would make every later term look older.
inline bool Core::next_campaign_term_within_bound() {
  if (term_ <= kMaxTerm - opts_.term_step) return true;
  refuse("not campaigning: term " + std::to_string(term_) + " + " + std::to_string(opts_.term_step) +
             " would pass the largest term (2^62)",
         false);
  return false;
}

inline void Core::refuse(std::string why, bool counted) {
  if (counted) ++refused_count_;
  // Bounded: the runtime takes them at every ready(); a flood between two leaves 16 lines.
  if (refused_out_.size() < 16) refused_out_.push_back(std::move(why));
}

// ---- roles ---------------------------------------------------------------------------------

inline bool Core::can_campaign() const {
  // A joiner and a learner never campaign: only a voter of a configuration it holds can be
  // elected. A server removed by an entry that is not committed yet may still be needed to
  // elect a leader (its log may be the longest), so it campaigns until the removal commits;
  // it then counts only the votes of its latest configuration (dissertation §4.2.2).
  if (is_voter()) return true;
  return config_index() > commit_ && voter_in(config_at(commit_));
}

inline void Core::become_follower(std::uint64_t term, const NodeId& leader) {
  bool was_leader = role_ == Role::Leader;
  if (term > term_) {
    term_ = term;
    vote_.clear();
  }
  role_ = Role::Follower;
  leader_ = leader;
  votes_.clear();
  reset_election_timer();
  if (was_leader) fail_leader_state();
  note_role_change();
}

inline void Core::fail_leader_state() {
  // Every proposal not yet known committed now has an unknown outcome: a later leader may
  // still commit it. The entries stay in the log.
#ifndef RAFT_MUTANT_PROPOSALS_NOT_ABORTED
  for (const auto& p : pending_proposals_)
    if (p.id.index > commit_) aborted_.push_back(p.id);
#endif
  pending_proposals_.clear();
  for (const auto& r : waiting_ready_reads_) resolve_read(r, false);
  for (const auto& r : reads_) resolve_read(r, false);
  waiting_ready_reads_.clear();
  reads_.clear();
  read_round_in_flight_ = false;
  read_round_acks_.clear();
  progress_.clear();
  leader_ready_ = false;
  leader_ready_unreported_ = false;
  transfer_target_.clear();
  strangers_.clear();
}

inline void Core::start_campaign(bool transfer) {
  if (!can_campaign() || role_ == Role::Leader) return;
  if (!next_campaign_term_within_bound()) return;
  if (opts_.pre_vote && !transfer)
    become_pre_candidate();
  else
    become_candidate(transfer);
}

inline void Core::become_pre_candidate() {
  // Pre-vote asks about the term the election would use, without changing any state.
  role_ = Role::PreCandidate;
  leader_.clear();
  votes_.clear();
  reset_election_timer();
  note_role_change();
  votes_[opts_.id] = true;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id) continue;
    Message m = make(MessageType::PreVote, voter);
    m.term = term_ + opts_.term_step;
    m.index = last_index();
    m.log_term = last_term();
    send(std::move(m));
  }
  handle_vote_response(Message{});  // a single voter has already won
}

inline void Core::become_candidate(bool transfer) {
  if (!next_campaign_term_within_bound()) {
    become_follower(term_, "");
    return;
  }
#ifdef RAFT_MUTANT_BUMP_AFTER_WIN
  term_ += 1;  // mutant: campaign for term + 1, then raise the term after winning
#else
  term_ += opts_.term_step;
#endif
  vote_ = opts_.id;
  role_ = Role::Candidate;
  leader_.clear();
  votes_.clear();
  reset_election_timer();
  note_role_change();
  votes_[opts_.id] = true;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id) continue;
    Message m = make(MessageType::Vote, voter);
    m.index = last_index();
    m.log_term = last_term();
    m.transfer = transfer;
    // The candidate's own term and vote are durable before anyone is asked.
    send_after_persist(std::move(m));
  }
  handle_vote_response(Message{});
}

inline void Core::become_leader() {
#ifdef RAFT_MUTANT_BUMP_AFTER_WIN
  term_ += opts_.term_step - 1;
#endif
  role_ = Role::Leader;
  leader_ = opts_.id;
  votes_.clear();
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  leader_ready_ = false;
  transfer_target_.clear();
  progress_.clear();
  for (const auto& m : config().members) {
    if (m.id == opts_.id) continue;
    Progress pr;
    pr.next = last_index() + 1;
    pr.recent_active = true;  // give everyone one check-quorum period
    pr.last_heard = tick_count_;
    progress_[m.id] = pr;
  }
  commit_sent_ = commit_;
  read_round_in_flight_ = false;
  note_role_change();
  // The no-op opens the term: committing it commits everything before it (§5.4.2), and
  // until it commits the leader serves no reads and proposes no configuration change.
  LogEntry noop;
  noop.type = EntryType::Noop;
  noop.timestamp_ms = now_ms_;
  append_local(std::move(noop));
  leader_first_index_ = last_index();
  maybe_commit();
}

// ---- inputs --------------------------------------------------------------------------------

inline void Core::tick(std::int64_t now_ms) {
  ++tick_count_;
  if (now_ms > now_ms_) now_ms_ = now_ms;
  if (role_ == Role::Leader)
    tick_leader();
  else
    tick_follower();
  expire_timeouts();
}

inline void Core::tick_follower() {
  // A node that cannot campaign (a learner, a joiner) lets its timer stand at the timeout
  // instead of starting it again: its leader's lease (leader stickiness) must end all the
  // same, since a leader that promoted it may need its vote before it hears of the promotion.
  if (election_elapsed_ < randomized_timeout_) ++election_elapsed_;
  if (election_elapsed_ >= randomized_timeout_ && can_campaign()) {
    reset_election_timer();
    start_campaign(false);
  }
}

inline void Core::tick_leader() {
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  if (election_elapsed_ >= opts_.election_ticks) {
    election_elapsed_ = 0;
    if (opts_.check_quorum) {
      std::size_t active = 0;
      for (const auto& voter : config().voters()) {
        if (voter == opts_.id) {
          active += is_voter() ? 1 : 0;
          continue;
        }
        auto it = progress_.find(voter);
        if (it != progress_.end() && it->second.recent_active) ++active;
      }
      if (active < quorum()) {
        become_follower(term_, "");
        return;
      }
      for (auto& [id, pr] : progress_) pr.recent_active = false;
    }
  }
  if (!transfer_target_.empty() && ++transfer_elapsed_ >= opts_.election_ticks) {
    transfer_target_.clear();  // the transfer failed: accept proposals again
  }
  for (auto& [id, pr] : progress_) {
    if (pr.state == Progress::State::Replicate && !pr.inflight.empty() &&
        ++pr.stalled_ticks >= opts_.election_ticks) {
      // An append (or its answer) was lost: no answer for an election timeout while appends
      // are out. Probe again from the match index.
      pr.become_probe(pr.match + 1);
    }
    if (pr.state != Progress::State::Snapshot) continue;
    if (++pr.snapshot_idle_ticks >= opts_.election_ticks) {
      // No progress for a while: chunks were lost. Resend from what the member confirmed.
      pr.resend_snapshot_from(pr.snapshot_acked);
      send_snapshot_chunks(id, pr);
    }
  }
  if (heartbeat_elapsed_ >= opts_.heartbeat_ticks) {
    heartbeat_elapsed_ = 0;
    broadcast_heartbeat();
  }
  maybe_reconfigure();
}

inline void Core::expire_timeouts() {
  while (!pending_proposals_.empty() && pending_proposals_.front().id.index <= commit_)
    pending_proposals_.pop_front();
  while (!pending_proposals_.empty() && pending_proposals_.front().deadline <= tick_count_) {
    aborted_.push_back(pending_proposals_.front().id);
    pending_proposals_.pop_front();
  }
  for (auto it = forwarded_reads_.begin(); it != forwarded_reads_.end();) {
    if (it->second <= tick_count_) {
      reads_out_.push_back(ReadState{it->first, 0, false});
      it = forwarded_reads_.erase(it);
    } else {
      ++it;
    }
  }
  auto expired = [&](const PendingRead& r) { return r.deadline <= tick_count_; };
  for (auto it = reads_.begin(); it != reads_.end();) {
    if (expired(*it)) {
      resolve_read(*it, false);
      it = reads_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = waiting_ready_reads_.begin(); it != waiting_ready_reads_.end();) {
    if (expired(*it)) {
      resolve_read(*it, false);
      it = waiting_ready_reads_.erase(it);
    } else {
      ++it;
    }
  }
}

inline void Core::step(const Message& m) {
  if (m.from == opts_.id) return;
  if (!terms_within_bound(m)) {
    refuse("dropped " + std::string(to_string(m.type)) + " from " + m.from + ": it carries a term above the largest term (2^62), or entries of a term above its own",
           true);
    return;
  }
  // A member whose data directory was wiped comes back with a new server id: it may have
  // forgotten votes and entries it promised, so it is a stranger until re-added, and its
  // answers - votes, acknowledgements - count for nothing. What it asks for is another
  // matter: this node's configuration may be older than the one that re-added it and made it
  // a voter (or a leader); ignoring its appends or its campaign could leave this node behind,
  // or a majority unable to elect, for good. (A stranger by its own configuration is no voter
  // there and does not campaign: voter_in.)
  if (const Member* member = config().find(m.from)) {
    if (!member->server_id.empty() && member->server_id != m.server_id && is_answer(m.type)) {
      // A leader re-adds it as a learner under its new identity (maybe_reconfigure): it
      // catches up before it votes again.
      if (role_ == Role::Leader && !m.server_id.empty()) strangers_[m.from] = {m.server_id, tick_count_};
      return;
    }
  }

  if (m.term > term_) {
    if (m.type == MessageType::PreVote || m.type == MessageType::Vote) {
      // Leader stickiness: a voter that hears from a leader ignores campaigns (a removed or
      // partitioned node cannot disrupt), unless the leader itself asked for the election.
      bool in_lease = opts_.check_quorum && !leader_.empty() &&
                      election_elapsed_ < opts_.election_ticks;
      if (in_lease && !m.transfer) return;
    }
    if (m.type == MessageType::PreVote) {
      // pre-vote changes nothing
    } else if (m.type == MessageType::PreVoteResponse && !m.reject) {
      // a grant carries the term we would campaign for
    } else if (m.type == MessageType::Append || m.type == MessageType::Heartbeat ||
               m.type == MessageType::Snapshot) {
      become_follower(m.term, m.from);
    } else if (m.type == MessageType::Vote) {
      // Adopt the term, but keep the election timer running: only a granted vote or a
      // leader resets it (Raft §5.2), else a candidate with a stale log that keeps
      // campaigning would stop a better one from ever timing out.
      int elapsed = election_elapsed_, timeout = randomized_timeout_;
      become_follower(m.term, "");
      election_elapsed_ = elapsed;
      randomized_timeout_ = timeout;
    } else {
      become_follower(m.term, "");
    }
  } else if (m.term < term_) {
    if (m.type == MessageType::Append || m.type == MessageType::Heartbeat ||
        m.type == MessageType::Snapshot) {
      // A leader of an older term (back from a partition, or delayed): tell it our term so it
      // steps down.
      Message r = make(MessageType::AppendResponse, m.from);
      r.reject = true;
      send_after_persist(std::move(r));
    } else if (m.type == MessageType::PreVote) {
      Message r = make(MessageType::PreVoteResponse, m.from);
      r.reject = true;
      send(std::move(r));
    }
    return;
  }

  switch (m.type) {
    case MessageType::PreVote:
    case MessageType::Vote:
      handle_vote_request(m);
      return;
    case MessageType::TimeoutNow:
      if (role_ != Role::Leader && m.from == leader_) start_campaign(true);
      return;
    case MessageType::ReadIndex:
      if (role_ == Role::Leader) {
        leader_read(m.context, m.from);
      } else {
        Message r = make(MessageType::ReadIndexResponse, m.from);
        r.context = m.context;
        r.reject = true;
        send(std::move(r));
      }
      return;
    case MessageType::ReadIndexResponse:
      handle_read_index_response(m);
      return;
    default:
      break;
  }
  switch (role_) {
    case Role::Leader: step_leader(m); break;
    case Role::Candidate:
    case Role::PreCandidate: step_candidate(m); break;
    case Role::Follower: step_follower(m); break;
  }
}

inline void Core::step_follower(const Message& m) {
  switch (m.type) {
    case MessageType::Append:
    case MessageType::Heartbeat:
    case MessageType::Snapshot:
      election_elapsed_ = 0;
      if (leader_ != m.from) {
        leader_ = m.from;
        note_role_change();
      }
      if (m.type == MessageType::Append)
        handle_append(m);
      else if (m.type == MessageType::Heartbeat)
        handle_heartbeat(m);
      else
        handle_snapshot(m);
      return;
    default:
      return;  // stale responses
  }
}

inline void Core::step_candidate(const Message& m) {
  switch (m.type) {
    case MessageType::PreVoteResponse:
      if (role_ == Role::PreCandidate && (m.reject || m.term == term_ + opts_.term_step))
        handle_vote_response(m);
      return;
    case MessageType::VoteResponse:
      if (role_ == Role::Candidate) handle_vote_response(m);
      return;
    case MessageType::Append:
    case MessageType::Heartbeat:
    case MessageType::Snapshot:
      // Someone won this term.
      become_follower(term_, m.from);
      step_follower(m);
      return;
    default:
      return;
  }
}

inline void Core::handle_vote_request(const Message& m) {
  bool pre = m.type == MessageType::PreVote;
  bool can_vote = vote_ == m.from || (vote_.empty() && leader_.empty()) || (pre && m.term > term_);
  Message r = make(pre ? MessageType::PreVoteResponse : MessageType::VoteResponse, m.from);
  if (can_vote && log_up_to_date(m.index, m.log_term)) {
    r.term = m.term;
    if (!pre) {
      vote_ = m.from;
      election_elapsed_ = 0;
    }
  } else {
    r.reject = true;
  }
  // A grant is a promise: it leaves only once the vote is durable.
#ifdef RAFT_MUTANT_VOTE_BEFORE_DURABLE
  if (pre || !r.reject)  // mutant: a granted vote leaves before it is on disk
#else
  if (pre)
#endif
    send(std::move(r));
  else
    send_after_persist(std::move(r));
}

inline void Core::handle_vote_response(const Message& m) {
  if (!m.from.empty()) {
    if (!config().is_voter(m.from)) return;
    votes_[m.from] = !m.reject;
  }
  std::size_t granted = 0, rejected = 0;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id && !is_voter()) continue;  // not under this identity
    auto it = votes_.find(voter);
    if (it == votes_.end()) continue;
    (it->second ? granted : rejected) += 1;
  }
  if (granted >= quorum()) {
    if (role_ == Role::PreCandidate)
      become_candidate(false);
    else if (role_ == Role::Candidate)
      become_leader();
  } else if (config().voter_count() - rejected < quorum()) {
    become_follower(term_, "");
  }
}

// ---- the log -------------------------------------------------------------------------------

inline bool Core::log_up_to_date(std::uint64_t index, std::uint64_t term) const {
#ifdef RAFT_MUTANT_NO_UP_TO_DATE_CHECK
  (void)index;
  (void)term;
  return true;
#else
  // §5.4.1: grant only to a candidate whose log holds everything this node's does.
  return term > last_term() || (term == last_term() && index >= last_index());
#endif
}

inline bool Core::matches(std::uint64_t index, std::uint64_t term) const {
  if (index < log_start_index_ || index > last_index()) return false;
  return term_at(index) == term;
}

inline std::uint64_t Core::find_conflict_by_term(std::uint64_t index, std::uint64_t term) const {
  // The last index <= index whose term is <= term: the leader can skip a whole term of
  // conflicting entries per round trip.
  if (index > last_index()) index = last_index();
  while (index > log_start_index_ && term_at(index) > term) --index;
  return index;
}

inline void Core::push_entry(LogEntry e) {
  if (e.timestamp_ms > max_timestamp_) max_timestamp_ = e.timestamp_ms;
  if (e.type == EntryType::Config) {
    Configuration c;
    if (!Configuration::decode(e.payload, c))
      throw std::runtime_error("raft: undecodable configuration entry at index " +
                               std::to_string(e.index));
    log_configs_.emplace_back(e.index, std::move(c));
  }
  bool config_entry = e.type == EntryType::Config;
  entries_.push_back(std::move(e));
  if (config_entry) on_config_changed();
}

inline void Core::append_local(LogEntry e) {
  e.index = last_index() + 1;
  e.term = term_;
  // Leader stamps never go backwards, whatever the clocks do.
  e.timestamp_ms = std::max(e.timestamp_ms, max_timestamp_);
  batch_.entries.push_back(e);
  push_entry(std::move(e));
}

inline void Core::truncate_from(std::uint64_t index) {
  if (index <= commit_)
    throw std::logic_error("raft: refusing to cut committed entry " + std::to_string(index));
  bool config_cut = false;
  while (!log_configs_.empty() && log_configs_.back().first >= index) {
    log_configs_.pop_back();
    config_cut = true;
  }
  entries_.resize(static_cast<std::size_t>(index - log_start_index_ - 1));
  while (!batch_.entries.empty() && batch_.entries.back().index >= index) batch_.entries.pop_back();
  if (durable_index_ >= index) durable_index_ = index - 1;
  for (auto& u : unpersisted_)
    if (u.last_index >= index) u.last_index = index - 1;
  if (config_cut) on_config_changed();  // revert to the configuration before the cut
}

inline void Core::append_from_leader(const std::vector<LogEntry>& entries) {
  for (const auto& e : entries) {
    if (e.index <= last_index()) {
      if (e.index <= log_start_index_ || term_at(e.index) == e.term) continue;  // already held
      truncate_from(e.index);
    }
    if (e.index != last_index() + 1) return;  // a gap: cannot happen after the match check
    batch_.entries.push_back(e);
    push_entry(e);
  }
}

inline void Core::commit_to(std::uint64_t index) {
  if (index > commit_) commit_ = index;
}

inline void Core::handle_append(const Message& m) {
  Message r = make(MessageType::AppendResponse, m.from);
  if (m.index < commit_) {
    // Everything up to commit_ is known to match: say so, and the leader moves on.
    r.index = commit_;
    send_after_persist(std::move(r));
    return;
  }
  if (!matches(m.index, m.log_term)) {
    r.reject = true;
    r.index = m.index;
    r.hint_index = find_conflict_by_term(std::min(m.index, last_index()), m.log_term);
    r.hint_term = term_at(r.hint_index);
    send_after_persist(std::move(r));
    return;
  }
  append_from_leader(m.entries);
  std::uint64_t last_new = m.index + m.entries.size();
  // Figure 2: up to the last NEW entry, not the log's end - a stale suffix beyond the
  // entries of this message (an older leader's) may still differ from the leader's log.
#ifdef RAFT_MUTANT_FOLLOWER_COMMIT_LAST_INDEX
  commit_to(std::min(m.commit, last_index()));
#else
  commit_to(std::min(m.commit, last_new));
#endif
  r.index = last_new;
#ifdef RAFT_MUTANT_ACK_BEFORE_DURABLE
  send(std::move(r));
#else
  // The acknowledgement promises the entries are on disk: it waits for the batch.
  send_after_persist(std::move(r));
#endif
}

inline void Core::handle_heartbeat(const Message& m) {
  // The leader sends at most our match index as commit, so this never commits an entry
  // that differs from the leader's.
  commit_to(std::min(m.commit, last_index()));
  Message r = make(MessageType::HeartbeatResponse, m.from);
  r.context = m.context;
  // It promises nothing durable, so it goes at once (ready() still holds it while our term is
  // not on disk): a follower whose disk is slower than the election timeout must not make a
  // healthy leader fail check-quorum or its read rounds.
#ifdef RAFT_MUTANT_HEARTBEAT_WAITS_FOR_DISK
  send_after_persist(std::move(r));
#else
  send(std::move(r));
#endif
}

inline void Core::handle_snapshot(const Message& m) {
  Message r = make(MessageType::SnapshotResponse, m.from);
  r.index = m.index;
  if (m.index <= commit_) {
    // Already have everything the snapshot covers.
    r.done = true;
    send_after_persist(std::move(r));
    return;
  }
#ifndef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  if (matches(m.index, m.log_term)) {
    // Raft §7: the log holds the snapshot's last entry, so it holds everything the snapshot
    // covers (log matching). Install nothing and keep the entries after it: some may be
    // acknowledged already, and rewriting the log would put them at risk in a crash.
    commit_to(m.index);
    r.done = true;
    send_after_persist(std::move(r));
    return;
  }
#endif
  if (recv_loading_ && recv_loading_->meta.index == m.index && recv_loading_->meta.term == m.log_term)
    return;  // all of it arrived and is being read back: the answer comes once it is checked
  if (m.offset == 0) {
    recv_snapshot_index_ = m.index;
    recv_snapshot_term_ = m.log_term;
    recv_snapshot_size_ = 0;
    recv_snapshot_crc_ = 0;
  }
  if (recv_snapshot_index_ != m.index || recv_snapshot_term_ != m.log_term || m.offset != recv_snapshot_size_) {
    r.reject = true;  // out of order: ask for the bytes from where we are
    r.offset = (recv_snapshot_index_ == m.index && recv_snapshot_term_ == m.log_term) ? recv_snapshot_size_ : 0;
    send(std::move(r));
    return;
  }
  // Refused: what arrived so far is forgotten (the storage's file is started anew by the next
  // chunk at offset 0), the log stays as it was, and the sender is asked to start again from
  // the beginning (a leader whose transfer was damaged on the way retries).
  if (m.data.size() > opts_.max_snapshot_bytes || recv_snapshot_size_ > opts_.max_snapshot_bytes - m.data.size()) {
    refuse("refused a snapshot at index " + std::to_string(m.index) + " of term " + std::to_string(m.log_term) +
               " from " + m.from + ": it is larger than max_snapshot_bytes (" +
               std::to_string(opts_.max_snapshot_bytes) + "); the log is kept",
           true);
    recv_snapshot_index_ = recv_snapshot_term_ = recv_snapshot_size_ = 0;
    recv_snapshot_crc_ = 0;
    r.reject = true;
    r.offset = 0;
    send(std::move(r));
    return;
  }
  // The chunk goes to the storage's incoming file with the next batch, and is acknowledged at
  // once, before it is durable: the offset reached is not durable state. A crash loses the
  // partial file (open() deletes it) and this count alike, and the transfer starts again from
  // offset 0. Only the install must not run ahead of the disk, and it does not: the storage
  // syncs the file while reading it back, before the core hears it may install it, and the
  // install renames it into place durably before the log is replaced.
  recv_snapshot_crc_ = detail::crc32c(m.data.data(), m.data.size(), recv_snapshot_crc_);
  batch_.snapshot_chunks.push_back(SnapshotChunk{m.index, m.log_term, m.offset, m.data});
  recv_snapshot_size_ += m.data.size();
  r.offset = recv_snapshot_size_;
  if (!m.done) {
    send(std::move(r));
    return;
  }
  // All of it arrived. Nothing is replaced yet: the storage reads the file back, checks its
  // length and CRC against what arrived, and the runtime parses it whole; then
  // received_snapshot_loaded installs it or refuses it.
  ReceivedSnapshot received;
  received.meta.index = m.index;
  received.meta.term = m.log_term;
  received.meta.config = m.config;
  received.meta.timestamp_ms = m.timestamp_ms;
  received.size = recv_snapshot_size_;
  received.crc32c = recv_snapshot_crc_;
  recv_loading_ = SnapshotBeingLoaded{m.from, received.meta};
  received_out_ = std::move(received);
  recv_snapshot_index_ = recv_snapshot_term_ = recv_snapshot_size_ = 0;
  recv_snapshot_crc_ = 0;
}

inline void Core::received_snapshot_loaded(std::shared_ptr<const Snapshot> snap, const std::string& problem) {
  if (!recv_loading_ || !snap || snap->meta.index != recv_loading_->meta.index ||
      snap->meta.term != recv_loading_->meta.term)
    return;
  const NodeId from = recv_loading_->from;
  recv_loading_.reset();
  const SnapshotMeta& meta = snap->meta;
  Message r = make(MessageType::SnapshotResponse, from);
  r.index = meta.index;
  // Checked whole before anything is replaced: installing deletes the log.
  std::string why = problem;
#ifndef RAFT_MUTANT_SNAPSHOT_UNCHECKED
  if (why.empty() && opts_.check_snapshot) why = opts_.check_snapshot(*snap);
#endif
  if (!why.empty()) {
    refuse("refused a snapshot at index " + std::to_string(meta.index) + " of term " + std::to_string(meta.term) +
               " from " + from + ": " + why + "; the log is kept",
           true);
    r.reject = true;
    r.offset = 0;
    send(std::move(r));
    return;
  }
  r.done = true;
  // The log may have caught up while the file was read back (the same rules as on arrival).
  if (meta.index <= commit_) {
    send_after_persist(std::move(r));
    return;
  }
#ifndef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  if (matches(meta.index, meta.term)) {
    commit_to(meta.index);
    send_after_persist(std::move(r));
    return;
  }
#endif
  install_snapshot(std::move(snap));
  send_after_persist(std::move(r));  // installed means durable
}

inline void Core::install_snapshot(std::shared_ptr<const Snapshot> snap) {
  // handle_snapshot installs only a snapshot whose last entry this log does not hold: every
  // entry here is then covered by the snapshot or on a branch that conflicts with it, and the
  // whole log goes (PersistBatch::snapshot replaces it on disk too).
  const SnapshotMeta& meta = snap->meta;
#ifdef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  // mutant: install a snapshot the log matches, and re-append the entries after it
  std::deque<LogEntry> kept;
  if (matches(meta.index, meta.term))
    for (std::uint64_t i = meta.index + 1; i <= last_index(); ++i) kept.push_back(entry(i));
#endif
  entries_.clear();
  log_configs_.clear();
  log_start_index_ = meta.index;
  log_start_term_ = meta.term;
  base_config_ = meta.config;
  base_config_index_ = meta.index;
  // Chunks of a later transfer that wait in the batch still go to the incoming file.
  std::vector<SnapshotChunk> chunks = std::move(batch_.snapshot_chunks);
  batch_ = PersistBatch{};
  batch_.snapshot = snap;
  batch_.snapshot_chunks = std::move(chunks);
  if (durable_index_ > meta.index) durable_index_ = meta.index;
  for (auto& u : unpersisted_)
    if (u.last_index > meta.index) u.last_index = meta.index;
#ifdef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  for (auto& e : kept) {
    batch_.entries.push_back(e);
    push_entry(std::move(e));
  }
#endif
  snapshot_ = snap;
  commit_to(meta.index);
  applied_ = meta.index;
#ifndef RAFT_MUTANT_SNAPSHOT_FORGETS_TIME
  max_timestamp_ = std::max(max_timestamp_, meta.timestamp_ms);
#endif
  restore_ = snap;
  snapshot_requested_ = false;
  on_config_changed();
}

inline std::uint64_t Core::compact(std::shared_ptr<const Snapshot> snapshot) {
  if (!snapshot) return log_start_index_;
  snapshot_requested_ = false;
  if (snapshot_ && snapshot->meta.index <= snapshot_->meta.index) return log_start_index_;
  if (snapshot->meta.index > applied_ || snapshot->meta.index > last_index() ||
      term_at(snapshot->meta.index) != snapshot->meta.term)
    throw std::logic_error("raft: snapshot at index " + std::to_string(snapshot->meta.index) +
                           " does not describe this node's applied log");
  snapshot_ = snapshot;
  std::uint64_t to = snapshot->meta.index > opts_.snapshot_trailing
                         ? snapshot->meta.index - opts_.snapshot_trailing
                         : 0;
  if (to <= log_start_index_) return log_start_index_;
  base_config_ = config_at(to);
  while (!log_configs_.empty() && log_configs_.front().first <= to) {
    base_config_index_ = log_configs_.front().first;
    log_configs_.erase(log_configs_.begin());
  }
  log_start_term_ = term_at(to);
  entries_.erase(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(to - log_start_index_));
  log_start_index_ = to;
  return to;
}

inline void Core::on_config_changed() {
  if (role_ == Role::Leader) {
    const Configuration& c = config();
    for (const auto& m : c.members) {
      if (m.id == opts_.id) continue;
      auto it = progress_.find(m.id);
      // A member re-added with a new server id (its disk was wiped) starts from nothing.
      if (it != progress_.end() &&
          (m.server_id.empty() || it->second.server_id.empty() || it->second.server_id == m.server_id))
        continue;
      Progress pr;
      pr.next = last_index() + 1;
      pr.recent_active = true;
      pr.last_heard = tick_count_;
      pr.server_id = m.server_id;
      progress_[m.id] = pr;
    }
    for (auto it = progress_.begin(); it != progress_.end();) {
      if (!c.contains(it->first))
        it = progress_.erase(it);
      else
        ++it;
    }
    if (!transfer_target_.empty() && !c.is_voter(transfer_target_)) transfer_target_.clear();
  } else if ((role_ == Role::Candidate || role_ == Role::PreCandidate) && !can_campaign()) {
    become_follower(term_, "");
  }
}

// ---- leader --------------------------------------------------------------------------------

inline ProposeResult Core::propose(std::string payload, std::int64_t now_ms) {
  ProposeResult res;
  if (role_ != Role::Leader) {
    res.error = ProposeResult::Error::NotLeader;
    res.leader = leader_;
    return res;
  }
  if (!transfer_target_.empty()) {
    res.error = ProposeResult::Error::Transferring;
    return res;
  }
  if (now_ms > now_ms_) now_ms_ = now_ms;
  LogEntry e;
  e.type = EntryType::Command;
  e.timestamp_ms = now_ms_;
  e.payload = std::move(payload);
  append_local(std::move(e));
  res.id = EntryId{last_index(), term_};
  pending_proposals_.push_back(
      PendingProposal{res.id, tick_count_ + static_cast<std::uint64_t>(opts_.proposal_timeout_ticks)});
  return res;
}

inline ProposeResult Core::propose_config(const Configuration& next, std::int64_t now_ms) {
  ProposeResult res;
  if (role_ != Role::Leader) {
    res.error = ProposeResult::Error::NotLeader;
    res.leader = leader_;
    return res;
  }
  if (!transfer_target_.empty()) {
    res.error = ProposeResult::Error::Transferring;
    return res;
  }
  // §4.1 / the 2015 fix: a leader commits an entry of its own term before it changes the
  // configuration, and changes it one server at a time.
  if (!leader_ready_) {
    res.error = ProposeResult::Error::NotReady;
    return res;
  }
  if (config_index() > commit_) {
    res.error = ProposeResult::Error::ConfigPending;
    return res;
  }
  const Configuration& cur = config();
  std::size_t voter_changes = 0;
  for (const auto& m : next.members) {
    if (m.id.empty()) {
      res.error = ProposeResult::Error::InvalidConfig;
      return res;
    }
    if (m.voter != cur.is_voter(m.id)) ++voter_changes;
  }
  for (const auto& m : cur.members)
    if (m.voter && !next.contains(m.id)) ++voter_changes;
  for (std::size_t i = 1; i < next.members.size(); ++i)
    if (!(next.members[i - 1].id < next.members[i].id)) {
      res.error = ProposeResult::Error::InvalidConfig;
      return res;
    }
  if (voter_changes > 1 || next.voter_count() == 0) {
    res.error = ProposeResult::Error::InvalidConfig;
    return res;
  }
  if (now_ms > now_ms_) now_ms_ = now_ms;
  LogEntry e;
  e.type = EntryType::Config;
  e.timestamp_ms = now_ms_;
  e.payload = next.encode();
  append_local(std::move(e));
  res.id = EntryId{last_index(), term_};
  pending_proposals_.push_back(
      PendingProposal{res.id, tick_count_ + static_cast<std::uint64_t>(opts_.proposal_timeout_ticks)});
  maybe_commit();
  return res;
}

inline ProposeResult Core::add_learner(Member member, std::int64_t now_ms) {
  Configuration next = config();
  if (const Member* old = next.find(member.id)) {
    if (old->voter && old->server_id == member.server_id) {
      // Already a voter with this identity: nothing to do, but not an error either.
      ProposeResult res;
      res.error = ProposeResult::Error::InvalidConfig;
      return res;
    }
  }
  member.voter = false;
  next.upsert(std::move(member));
  return propose_config(next, now_ms);
}

inline ProposeResult Core::promote(const NodeId& id, std::int64_t now_ms) {
  Configuration next = config();
  const Member* m = next.find(id);
  if (m == nullptr || m->voter) {
    ProposeResult res;
    res.error = ProposeResult::Error::InvalidConfig;
    return res;
  }
  Member copy = *m;
  copy.voter = true;
  next.upsert(std::move(copy));
  return propose_config(next, now_ms);
}

inline ProposeResult Core::remove(const NodeId& id, std::int64_t now_ms) {
  Configuration next = config();
  if (!next.remove(id)) {
    ProposeResult res;
    res.error = ProposeResult::Error::InvalidConfig;
    return res;
  }
  return propose_config(next, now_ms);
}

inline bool Core::transfer_leadership(const NodeId& to) {
  if (role_ != Role::Leader || to == opts_.id || !config().is_voter(to)) return false;
  auto it = progress_.find(to);
  if (it == progress_.end()) return false;
  transfer_target_ = to;
  transfer_elapsed_ = 0;
  timeout_now_sent_ = false;
  if (it->second.match == last_index()) {
    send(make(MessageType::TimeoutNow, to));
    timeout_now_sent_ = true;
  }
  return true;
}

inline NodeId Core::best_transfer_target() const {
  if (role_ != Role::Leader) return "";
  const auto election = static_cast<std::uint64_t>(opts_.election_ticks);
  NodeId best;
  std::uint64_t best_match = 0;
  for (const auto& [id, pr] : progress_) {
    // Heard from lately by its last message, not by recent_active: that flag is cleared at
    // every check-quorum round and is false for everyone until their next answers arrive.
    if (!config().is_voter(id) || tick_count_ >= pr.last_heard + election) continue;
    if (best.empty() || pr.match >= best_match) {
      best = id;
      best_match = pr.match;
    }
  }
  return best;
}

inline void Core::maybe_commit() {
  if (role_ != Role::Leader) return;
  std::vector<std::uint64_t> matched;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id) {
      // The leader counts itself only once durable, and only as the identity it holds.
      matched.push_back(is_voter() ? durable_index_ : 0);
      continue;
    }
    auto it = progress_.find(voter);
    matched.push_back(it == progress_.end() ? 0 : it->second.match);
  }
  if (matched.empty()) return;
  std::sort(matched.begin(), matched.end(), std::greater<std::uint64_t>());
  std::uint64_t candidate = matched[quorum() - 1];
  if (candidate <= commit_) return;
#ifndef RAFT_MUTANT_COMMIT_OLD_TERM
  // §5.4.2: only an entry of the leader's own term is committed by counting replicas.
  if (term_at(candidate) != term_) return;
#endif
  commit_ = candidate;
  if (!leader_ready_ && commit_ >= leader_first_index_) {
    leader_ready_ = true;
    leader_ready_unreported_ = true;  // reported once everything up to it is handed out
    // Reads that arrived before the term's first entry committed use this commit index.
    auto waiting = std::move(waiting_ready_reads_);
    waiting_ready_reads_.clear();
    for (auto& r : waiting) leader_read(r.request_id, r.from);
  }
  // A leader removed from (or demoted in) the configuration leads until that change
  // commits, then steps down (dissertation §4.2.2).
  if (config_index() <= commit_ && !is_voter()) become_follower(term_, "");
}

inline bool Core::send_append(const NodeId& to, Progress& pr) {
  if (pr.state == Progress::State::Snapshot) return false;
  if (pr.state == Progress::State::Probe && pr.probe_sent) return false;
  if (pr.state == Progress::State::Replicate &&
      (pr.inflight.size() >= opts_.max_inflight || pr.next > last_index()))
    return false;
  std::uint64_t prev = pr.next - 1;
  if (prev < log_start_index_) {
    // The entries this member needs are compacted away: send the snapshot.
    if (!snapshot_) return false;
    pr.become_snapshot(snapshot_);
    send_snapshot_chunks(to, pr);
    return false;
  }
  Message m = make(MessageType::Append, to);
  m.index = prev;
  m.log_term = term_at(prev);
  m.commit = commit_;
  std::size_t bytes = 0;
  for (std::uint64_t i = pr.next; i <= last_index(); ++i) {
    const LogEntry& e = entry(i);
    if (!m.entries.empty() && bytes + e.payload.size() > opts_.max_message_bytes) break;
    bytes += e.payload.size() + 32;
    m.entries.push_back(e);
  }
  if (!m.entries.empty()) {
    std::uint64_t last = m.entries.back().index;
    if (pr.state == Progress::State::Replicate) {
      pr.next = last + 1;
      pr.inflight.push_back(last);
    }
  }
  if (pr.state == Progress::State::Probe) {
    pr.probe_sent = true;
    pr.probe_sent_tick = tick_count_;
  }
  send(std::move(m));
  return true;
}

inline void Core::send_snapshot_chunks(const NodeId& to, Progress& pr) {
  const Snapshot& snap = *pr.snapshot;
  const std::uint64_t size = snap.data.size();
  const std::uint64_t window = opts_.snapshot_chunk_bytes * opts_.snapshot_chunks_inflight;
  while (!pr.snapshot_done_sent && pr.snapshot_sent - pr.snapshot_acked < window) {
    std::uint64_t len = std::min<std::uint64_t>(opts_.snapshot_chunk_bytes, size - pr.snapshot_sent);
    Message m = make(MessageType::Snapshot, to);
    m.index = snap.meta.index;
    m.log_term = snap.meta.term;
    m.config = snap.meta.config;
    m.timestamp_ms = snap.meta.timestamp_ms;
    m.offset = pr.snapshot_sent;
    m.data = snap.data.substr(static_cast<std::size_t>(pr.snapshot_sent), static_cast<std::size_t>(len));
    pr.snapshot_sent += len;
    m.done = pr.snapshot_sent == size;
    if (m.done) pr.snapshot_done_sent = true;
    send(std::move(m));
  }
}

inline void Core::flush_leader_sends() {
  for (auto& [id, pr] : progress_) {
    bool sent = false;
    while (send_append(id, pr)) {
      sent = true;
      if (pr.state != Progress::State::Replicate) break;
    }
    if (!sent && commit_ > commit_sent_ && pr.state == Progress::State::Replicate) {
      // Tell followers the new commit index now rather than at the next heartbeat, so they
      // apply (and serve reads) sooner.
      Message m = make(MessageType::Heartbeat, id);
      m.commit = std::min(pr.match, commit_);
      m.context = read_round_;
      send(std::move(m));
    }
  }
  commit_sent_ = commit_;
}

inline void Core::broadcast_heartbeat() {
  for (auto& [id, pr] : progress_) {
    Message m = make(MessageType::Heartbeat, id);
    m.commit = std::min(pr.match, commit_);
    m.context = read_round_;
    send(std::move(m));
  }
}

inline void Core::step_leader(const Message& m) {
  auto it = progress_.find(m.from);
  if (it == progress_.end()) return;  // not a member
  Progress& pr = it->second;
  pr.recent_active = true;
  pr.last_heard = tick_count_;
  pr.server_id = m.server_id;
  switch (m.type) {
    case MessageType::AppendResponse:
      handle_append_response(pr, m);
      return;
    case MessageType::HeartbeatResponse:
      if (read_round_in_flight_ && m.context >= read_round_ && config().is_voter(m.from)) {
        read_round_acks_.insert(m.from);
        if (read_round_acks_.size() >= quorum()) complete_read_round();
      }
      // A probe may have been lost: the answer to a heartbeat says the link works, so send it
      // again - but not on every heartbeat: a follower whose disk is slow answers heartbeats
      // at once and the probe late, and each copy would carry the same entries again.
#ifdef RAFT_MUTANT_PROBE_ON_EVERY_HEARTBEAT
      if (pr.state == Progress::State::Probe) pr.probe_sent = false;
#else
      if (pr.state == Progress::State::Probe &&
          tick_count_ >= pr.probe_sent_tick + static_cast<std::uint64_t>(std::max(1, opts_.election_ticks / 2)))
        pr.probe_sent = false;
#endif
      return;
    case MessageType::SnapshotResponse:
      handle_snapshot_response(pr, m);
      return;
    default:
      return;
  }
}

inline void Core::handle_append_response(Progress& pr, const Message& m) {
  if (m.reject) {
    if (pr.state == Progress::State::Snapshot) return;
    if (m.index <= pr.match) return;  // stale
    if (pr.state == Progress::State::Probe && m.index != pr.next - 1) return;  // stale
    std::uint64_t next_probe = m.hint_index;
    if (m.hint_term > 0) next_probe = find_conflict_by_term(m.hint_index, m.hint_term);
    pr.become_probe(std::max(std::min(m.index, next_probe + 1), pr.match + 1));
    return;  // flush_leader_sends sends the next probe
  }
  if (m.index > pr.match) {
    pr.match = m.index;
    maybe_commit();
    // Committing its own removal makes a leader step down, which drops every Progress.
    if (role_ != Role::Leader) return;
  }
  if (pr.next <= m.index) pr.next = m.index + 1;
  while (!pr.inflight.empty() && pr.inflight.front() <= m.index) {
    pr.inflight.pop_front();
    pr.stalled_ticks = 0;
  }
  if (pr.state == Progress::State::Probe) pr.become_replicate();
  if (!transfer_target_.empty() && m.from == transfer_target_ && !timeout_now_sent_ &&
      pr.match == last_index()) {
    send(make(MessageType::TimeoutNow, m.from));
    timeout_now_sent_ = true;
  }
}

inline void Core::handle_snapshot_response(Progress& pr, const Message& m) {
  if (m.done && !m.reject) {
    if (m.index > pr.match) pr.match = m.index;
    if (pr.state == Progress::State::Snapshot || pr.next <= pr.match) pr.become_probe(pr.match + 1);
    maybe_commit();
    return;
  }
  if (pr.state != Progress::State::Snapshot || m.index != pr.snapshot->meta.index) return;
  if (m.reject) {
    const std::uint64_t from = std::min<std::uint64_t>(m.offset, pr.snapshot->data.size());
#ifndef RAFT_MUTANT_SNAPSHOT_REJECT_STORM
    if (from == pr.snapshot_resent_from) return;  // a chunk sent before that resend, rejected
#endif
    pr.resend_snapshot_from(from);
  } else if (m.offset > pr.snapshot_acked) {
    pr.snapshot_idle_ticks = 0;
    pr.snapshot_acked = m.offset;
  }
  send_snapshot_chunks(m.from, pr);
}

inline void Core::maybe_reconfigure() {
  if (!leader_ready_ || config_index() > commit_ || !transfer_target_.empty()) return;
  const Configuration& c = config();
  // Bind identities a static peer map did not name, so a wiped member is recognised later.
  for (const auto& m : c.members) {
    if (!m.server_id.empty()) continue;
    std::string sid;
    if (m.id == opts_.id) {
      sid = opts_.server_id;
    } else {
      auto it = progress_.find(m.id);
      if (it != progress_.end()) sid = it->second.server_id;
    }
    if (sid.empty()) continue;
    Configuration next = c;
    Member bound = m;
    bound.server_id = sid;
    next.upsert(std::move(bound));
    propose_config(next, now_ms_);
    return;
  }
  // Re-add a member whose disk was wiped (it answers under a new server id) as a learner with
  // that identity: one voter change, like any other. Only a stranger heard from lately, and
  // only once the configured identity has been silent for an election timeout: while it
  // answers, the stranger is an impostor or a second process under the same id, and one
  // message must not demote a healthy voter.
  const auto election = static_cast<std::uint64_t>(opts_.election_ticks);
  for (auto it = strangers_.begin(); it != strangers_.end();) {
    const Member* m = c.find(it->first);
    if (m == nullptr || m->server_id == it->second.first || tick_count_ > it->second.second + election) {
      it = strangers_.erase(it);
      continue;
    }
    auto pr = progress_.find(m->id);
    if (pr != progress_.end() && tick_count_ < pr->second.last_heard + election) {
      ++it;
      continue;
    }
    if (add_learner(Member{m->id, m->address, it->second.first, false}, now_ms_).ok()) {
      strangers_.erase(it);
      return;
    }
    ++it;
  }
  // Promote a caught-up learner while there is room for voters.
  if (c.voter_count() >= opts_.max_voters) return;
  for (const auto& m : c.members) {
    if (m.voter) continue;
    auto it = progress_.find(m.id);
    if (it == progress_.end() || !it->second.recent_active || it->second.match < commit_) continue;
    promote(m.id, now_ms_);
    return;
  }
}

// ---- reads ---------------------------------------------------------------------------------

inline void Core::read_index(std::uint64_t request_id) {
  if (role_ == Role::Leader) {
    leader_read(request_id, "");
    return;
  }
  if (role_ == Role::Follower && !leader_.empty()) {
#ifdef RAFT_MUTANT_FOLLOWER_READ_NO_READINDEX
    // mutant: the follower serves the read from what it has applied, asking the leader nothing
    reads_out_.push_back(ReadState{request_id, 0, true, now_ms_, term_});
    return;
#endif
    Message m = make(MessageType::ReadIndex, leader_);
    m.context = request_id;
    send(std::move(m));
    forwarded_reads_[request_id] = tick_count_ + static_cast<std::uint64_t>(opts_.read_timeout_ticks);
    return;
  }
  reads_out_.push_back(ReadState{request_id, 0, false});
}

inline void Core::leader_read(std::uint64_t request_id, const NodeId& from) {
  PendingRead r{request_id, from, commit_, 0,
                tick_count_ + static_cast<std::uint64_t>(opts_.read_timeout_ticks)};
  if (!leader_ready_) {
    // Until the term's first entry commits, commit_ may be behind what earlier leaders
    // committed; the read gets the commit index at readiness (which is later, so fine).
    waiting_ready_reads_.push_back(r);
    return;
  }
#ifdef RAFT_MUTANT_FORWARDED_READ_NO_CHECK
  if ((config().voter_count() == 1 && is_voter()) || !from.empty()) {  // mutant: no round for a follower's read
#else
  if (config().voter_count() == 1 && is_voter()) {
#endif
    resolve_read(r, true);  // nobody else could have been elected
    return;
  }
  // Leadership is confirmed by a heartbeat round that starts after the read arrived: the
  // round in flight (if any) started earlier, so the read waits for the next one.
  r.round = read_round_ + 1;
  reads_.push_back(r);
  if (!read_round_in_flight_) start_read_round();
}

inline void Core::start_read_round() {
  ++read_round_;
  read_round_in_flight_ = true;
  read_round_acks_.clear();
  if (is_voter()) read_round_acks_.insert(opts_.id);
  broadcast_heartbeat();
  if (read_round_acks_.size() >= quorum()) complete_read_round();
}

inline void Core::complete_read_round() {
  std::uint64_t done = read_round_;
  read_round_in_flight_ = false;
  read_round_acks_.clear();
  while (!reads_.empty() && reads_.front().round <= done) {
    resolve_read(reads_.front(), true);
    reads_.pop_front();
  }
  if (!reads_.empty()) start_read_round();
}

inline void Core::resolve_read(const PendingRead& r, bool ok) {
  // The read's time: this leader's clock now, never below a stamp it has seen, so that every
  // node judges expiry for it alike, and later reads in this term never judge earlier.
  const std::int64_t time = ok ? std::max(now_ms_, max_timestamp_) : 0;
  if (r.from.empty()) {
    reads_out_.push_back(ReadState{r.request_id, ok ? r.index : 0, ok, time, term_});
    return;
  }
  Message m = make(MessageType::ReadIndexResponse, r.from);
  m.context = r.request_id;
  m.index = ok ? r.index : 0;
  m.reject = !ok;
  m.timestamp_ms = time;
  send(std::move(m));
}

inline void Core::handle_read_index_response(const Message& m) {
  auto it = forwarded_reads_.find(m.context);
  if (it == forwarded_reads_.end()) return;  // timed out already
  forwarded_reads_.erase(it);
  reads_out_.push_back(ReadState{m.context, m.reject ? 0 : m.index, !m.reject, m.reject ? 0 : m.timestamp_ms, m.term});
}

// ---- output --------------------------------------------------------------------------------

inline void Core::persisted(std::uint64_t seq) {
  while (!unpersisted_.empty() && unpersisted_.front().seq <= seq) {
    durable_index_ = std::max(durable_index_, std::min(unpersisted_.front().last_index, last_index()));
    durable_term_ = std::max(durable_term_, unpersisted_.front().term);
    unpersisted_.pop_front();
  }
  maybe_commit();
}

inline bool Core::has_ready() const {
  if (!batch_.empty() || !msgs_.empty() || !msgs_after_.empty() || restore_ ||
      !reads_out_.empty() || !aborted_.empty() || !role_changes_.empty() || snapshot_wanted_out_ ||
      !refused_out_.empty() || received_out_)
    return true;
  if (leader_ready_unreported_ && role_ == Role::Leader && applied_ >= leader_first_index_) return true;
  if (HardState{term_, vote_} != persisted_hs_) return true;
  if (applied_ < std::min(commit_, durable_index_)) return true;
  if (role_ == Role::Leader) {
    if (commit_ > commit_sent_) return true;
    for (const auto& [id, pr] : progress_) {
      if (pr.state == Progress::State::Probe && !pr.probe_sent) return true;
      if (pr.state == Progress::State::Replicate && pr.next <= last_index() &&
          pr.inflight.size() < opts_.max_inflight)
        return true;
    }
  }
  return false;
}

inline Ready Core::ready() {
  if (role_ == Role::Leader) flush_leader_sends();
  Ready rd;
  HardState hs{term_, vote_};
  if (hs != persisted_hs_) {
#ifdef RAFT_MUTANT_TERM_NOT_PERSISTED
    if (hs.vote != persisted_hs_.vote)  // mutant: a term change without a vote stays in memory
#endif
      batch_.hard_state = hs;
    persisted_hs_ = hs;
  }
#ifndef RAFT_MUTANT_SEND_BEFORE_TERM_DURABLE
  if (term_ > durable_term_) {
    // Every message carries term_: none may leave before that term is on disk. (A voter alone
    // wins its election inside become_candidate; a node that adopted a higher term answers in
    // it.) They go with this batch, which holds the term or follows the one that does.
    for (auto& m : msgs_) msgs_after_.push_back(std::move(m));
    msgs_.clear();
  }
#endif
  if (!batch_.empty() || !msgs_after_.empty()) {
    batch_.seq = next_seq_++;
    unpersisted_.push_back(
        UnpersistedBatch{batch_.seq, last_index(), batch_.hard_state ? batch_.hard_state->term : 0});
    rd.persist = std::move(batch_);
    batch_ = PersistBatch{};
    rd.after_persist = std::move(msgs_after_);
    msgs_after_.clear();
  }
  rd.messages = std::move(msgs_);
  msgs_.clear();
  rd.restore = std::move(restore_);
  restore_.reset();
  // Apply what is committed and durable here, a bounded amount per batch.
  std::uint64_t upto = std::min(commit_, durable_index_);
  std::size_t bytes = 0;
  while (applied_ < upto && bytes < (8u << 20)) {
    const LogEntry& e = entry(applied_ + 1);
    bytes += e.payload.size() + 32;
    rd.committed.push_back(e);
    ++applied_;
  }
  rd.reads = std::move(reads_out_);
  reads_out_.clear();
  rd.aborted = std::move(aborted_);
  aborted_.clear();
  rd.role_changes = std::move(role_changes_);
  role_changes_.clear();
  rd.refused = std::move(refused_out_);
  refused_out_.clear();
  rd.received_snapshot = std::move(received_out_);  // its last chunk is in rd.persist
  received_out_.reset();
  // on_leader's promise: the term's first entry and everything before it are applied first.
  if (leader_ready_unreported_ && role_ == Role::Leader && applied_ >= leader_first_index_) {
    rd.leader_ready_term = term_;
    leader_ready_unreported_ = false;
  }
  if (!snapshot_requested_ && applied_ >= snapshot_index() + opts_.snapshot_threshold) {
    snapshot_requested_ = true;
    snapshot_wanted_out_ = true;
  }
  rd.snapshot_wanted = snapshot_wanted_out_;
  snapshot_wanted_out_ = false;
  return rd;
}

}  // namespace raft
// ---- src/raft/4_storage.hpp ----

// ============================================================================================
// 4. Storage: the write-ahead log, term and vote, snapshots, recovery
// ============================================================================================
//
// A node may only vote or acknowledge what is on disk. Storage gives a node its data
// directory and brings it back after a crash, a power cut or a damaged file, and never
// silently drops what it once made durable. The directory holds:
//
//   identity                   node id, server id, cluster id, initial configuration;
//                              written once, atomically, when the directory is created
//   hardstate                  term and vote, with a checksum; replaced atomically (temp
//                              file, fdatasync, rename, fsync of the directory)
//   log-<first index>.seg      the log, in segments: a header holding the segment's synced
//                              mark (below), then records (index, term, type, timestamp,
//                              payload), each framed by its length and CRC-32C
//   snap-<index>-<term>.snap   the newest snapshot; the previous one is deleted only once
//                              the new one is durable
//   incoming.snap.tmp          a snapshot being received from the leader, written chunk by
//                              chunk as it arrives (a snapshot file whose header is written
//                              last); read back and checked whole, then renamed into place
//   *.tmp                      an interrupted write: ignored, and removed by open()
//   LOCK                       locked while a Storage has the directory open
//
// Only the node's user may read or change any of it: the directory is 0700 and every file
// 0600 whatever the umask; an existing directory more open than that is tightened (with a
// warning), one owned by another user is refused. A temporary file is only ever created new
// (O_EXCL | O_NOFOLLOW, a stale one unlinked first), so a symbolic link planted at its name
// is removed, never written through.
//
// Every file starts with a magic and a format version; integers are little-endian. Segments
// are format 2 (format 1 had no synced mark), the other files format 1. Every change of a
// file's format bumps its version, and every older version stays readable: a data directory
// written by any earlier release opens.
//
// What a crash may do (the model tests/test_storage_sim.cpp runs this code on): writes that
// no successful fdatasync covered may be lost, cut short, or reach the disk in part and in any
// order; a create, rename or unlink is durable only once the directory is fsynced. What is
// assumed: an fdatasync that returned 0 holds, and a write does not damage other bytes.
//
// The synced mark, which tells a torn write from damage. The header of each segment holds the
// byte offset up to which its records are known durable. After each successful fdatasync of
// the segment the mark is advanced to the end of what that fdatasync covered; the write of
// the mark itself becomes durable with the segment's next fdatasync. So the mark on disk may
// lag the data, and never leads it. It is kept in two slots written alternately, each with a
// sequence number and a CRC-32C, so a torn write of one leaves the other; the valid slot with
// the higher sequence number is the mark. A slot is written only while the other is durable,
// so a crash tears at most the one being written. A suffix cut lowers the mark durably before
// it truncates; a segment is sealed (its mark set to its end, durably) before the next one is
// created. Recovery reads each segment once, front to back, so it is linear in its size:
//   - the records before a segment's mark must all be valid and end exactly at the mark:
//     damage there, or a file that ends before its mark, is corruption;
//   - a segment that is not the last ends at its mark;
//   - in the last segment the log goes on past the mark up to the first record that is not
//     valid. From there on is a torn tail: writes a crash interrupted, which may have reached
//     the disk out of order, so valid records after the damage are part of it too. It is cut
//     (truncated durably) before anything is appended, so nothing stale can ever follow new
//     records, and the cut is reported in Recovered::notes.
// Then open() makes what it recovered durable (an fdatasync of the last segment and an fsync
// of the directory): after a crash of the process alone, unsynced writes are still in the
// page cache, where open() read them, and the node is about to act on them.
//
// The same rules hold for preallocated segments: zeros are not a valid record, so a sealed
// segment still ends at its mark and the last one at its first zero; a torn tail would then
// be zeroed durably instead of truncated.
//
// The price of the lag: records acknowledged by the last sync() before a crash may lie beyond
// the mark on disk. A crash cannot damage them (they were synced); a failing disk could, and
// such damage would be taken for a torn tail: cut and reported, not refused. Closing that
// window would cost a second fdatasync in every sync().
//
// Format 1 segments have no mark. The last one is read as before: damage in it is a torn tail
// only when no valid record of the log follows it (a position is checksummed only if its
// index field could belong to the log, so a garbage tail costs one pass, not one pass per
// byte). The first append after opening such a directory starts a new segment, of format 2.
//
// Why every other step is crash safe: a file only ever appears under its name by rename(),
// so a named file is complete; a log suffix is cut by deleting later segments newest first
// and then truncating, durably, before anything is appended over the cut; a log prefix goes
// by deleting whole segments oldest first; every unlink a later step relies on is made
// durable (fsync of the directory) before that step. So at every instant the files recover
// to a valid log. Damage anywhere else (the identity, the hard state, the newest snapshot, a
// segment header, a missing segment) makes open() throw a StorageError naming the file and
// byte offset.
//
// After a failed fsync, a full disk or any other write error the Storage is failed for good:
// it says why, refuses every later write and never retries (after a failed fsync the kernel
// may have dropped the dirty pages, so a retry can report success for data that is lost). A
// restart, which re-reads the disk, recovers what was durable.

namespace raft {

/// A data directory that cannot be created or opened safely. what() names the file, the byte
/// offset when there is one, and what to do.
struct StorageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The file operations Storage makes. StorageOptions::file_system empty means the POSIX
/// calls; a test can put a model of the page cache and the disk underneath instead, and crash
/// the real storage code at any point (tests/test_storage_sim.cpp). Each call returns 0 or an
/// errno value. A file system is used by one thread at a time. Files are created 0600 and
/// directories 0700, and no mode that opens a file follows a symbolic link at its name
/// (ELOOP); a directory may be one.
class FileSystem {
 public:
  enum class Mode : std::uint8_t {
    Write,      ///< an existing file, for writing
    Create,     ///< a new file, for writing (EEXIST when the name exists, even as a link)
    Directory,  ///< a directory, to sync_directory(), status() or set_permissions() it
    Lock,       ///< a file created if missing and locked for this open (EAGAIN: locked already)
  };
  /// What status() reports.
  struct Status {
    std::uint32_t owner = 0;        ///< user id
    std::uint32_t permissions = 0;  ///< the permission bits (mode & 07777)
  };
  virtual ~FileSystem() = default;
  virtual int open(const std::string& path, Mode mode, int& fd) = 0;
  virtual int close(int fd) = 0;
  /// Writes all of `data` at byte `offset`. After an error, part of it may be written.
  virtual int write(int fd, std::uint64_t offset, std::string_view data) = 0;
  virtual int truncate(int fd, std::uint64_t size) = 0;
  /// fdatasync(): once it returns 0, the file's data and size survive a crash.
  virtual int sync(int fd) = 0;
  /// fsync() of a directory: once it returns 0, its entries (files created, renamed or
  /// removed in it) survive a crash.
  virtual int sync_directory(int fd) = 0;
  /// The whole file.
  virtual int read(const std::string& path, std::string& out) = 0;
  /// The names in a directory, without "." and "..".
  virtual int list(const std::string& dir, std::vector<std::string>& names) = 0;
  virtual int rename(const std::string& from, const std::string& to) = 0;
  virtual int remove(const std::string& path) = 0;
  /// Mode 0700; EEXIST when it exists already.
  virtual int make_directory(const std::string& path) = 0;
  /// fstat() of an open file or directory.
  virtual int status(int fd, Status& out) = 0;
  /// fchmod() of an open file or directory.
  virtual int set_permissions(int fd, std::uint32_t permissions) = 0;
};

struct StorageOptions {
  std::string dir;
  /// A segment is closed and a new one started when the next record would grow it past this
  /// size (a record larger than this gets a segment of its own).
  std::size_t segment_bytes = std::size_t{64} << 20;
  /// Empty: POSIX. Tests: a model of the disk (see FileSystem).
  std::shared_ptr<FileSystem> file_system;
  /// Fault injection (tests): called instead of FileSystem::sync() and sync_directory().
  /// Return 0, or -1 with errno set to make the call fail.
  std::function<int(int fd)> fsync_hook;
  /// Told, in one line, of a change create() or open() makes that nobody asked for: an
  /// existing directory more open than 0700 tightened to it. Empty: not told.
  std::function<void(const std::string& line)> warn;
};

/// Who this data directory belongs to; fixed when the directory is created.
struct Identity {
  NodeId node_id;
  /// Random id of this data directory (32 hex digits). create() generates it when empty.
  std::string server_id;
  std::string cluster_id;
  /// For a cluster started from a static peer map: the configuration at index 0. Empty
  /// otherwise (the configuration then comes from the snapshot and the log).
  Configuration initial_config;
};

/// What open() found on disk.
struct Recovered {
  Identity identity;
  HardState hard_state;
  /// The newest snapshot. meta.config is left empty: the caller parses it from data.
  std::optional<Snapshot> snapshot;
  /// The log after the snapshot's index (from index 1 without a snapshot): contiguous, terms
  /// non-decreasing, the first term not below the snapshot's.
  std::vector<LogEntry> entries;
  /// Repairs open() made, one sentence each: a torn tail cut, a superseded snapshot or a
  /// leftover temporary file removed, log entries discarded for a newer snapshot.
  std::vector<std::string> notes;
};

/// 128 random bits from std::random_device, as 32 lower-case hex digits.
std::string random_id128();

namespace detail {
class StorageImpl;
}

/// One node's data directory. Not thread-safe: after open() or create() one thread at a time
/// uses it (in a running node, the StorageWriter's thread). failed(), failure() and
/// fsync_count() may be read from any thread. write() only buffers; nothing is durable until
/// sync() returns true. A moved-from Storage may only be destroyed or assigned to.
class Storage {
 public:
  /// True when `dir` holds an identity file (a data directory create() finished). Asks POSIX,
  /// not a StorageOptions::file_system.
  static bool exists(const std::string& dir);
  /// Makes a new data directory (mkdir -p): a hard state of term 0 and no vote, then the
  /// identity file. Throws StorageError when the directory already holds one or holds log or
  /// snapshot files without one, is owned by another user, or on an I/O error.
  static Storage create(StorageOptions options, Identity identity);
  /// Opens an existing data directory and recovers it into `out`, repairing what a crash
  /// leaves behind, and makes what it recovered durable before it returns. Throws
  /// StorageError on damage it cannot repair safely, if another Storage (in this or another
  /// process) has the directory open, or if another user owns it.
  static Storage open(StorageOptions options, Recovered& out);

  Storage(Storage&&) noexcept;
  Storage& operator=(Storage&&) noexcept;
  ~Storage();  // closes the files; does not sync

  /// Applies a PersistBatch (see there): the snapshot first (the log after it is kept when
  /// the log holds the snapshot's last entry, else the whole log is replaced), then the hard
  /// state, then the entries: those the log holds already are skipped, the log is cut at the
  /// first whose term differs, the rest appended. Durable entries are never deleted to be
  /// written again. Buffered: durable after sync(). Returns false once the storage has
  /// failed. A batch that does not fit the log (a gap, an index covered by the snapshot, a
  /// decreasing term) fails the storage: it is a bug in the caller, and writing on would
  /// corrupt the log.
  bool write(const PersistBatch& batch);
  /// Makes everything written so far durable: the hard state file if it changed, then one
  /// fdatasync of the log. Returns true only when every byte written so far is covered by a
  /// successful fdatasync; false once the storage has failed.
  bool sync();
  /// A snapshot the node took itself (of its applied state): made durable, the previous
  /// snapshot deleted, then whole log segments whose every entry is at or below
  /// min(compact_to, snapshot.meta.index) deleted (pass an index below the snapshot's to keep
  /// a trailing window of entries for followers that lag a little). The log itself is kept
  /// after the snapshot's index. A snapshot not newer than the one on disk is ignored.
  bool save_snapshot(const Snapshot& snapshot, std::uint64_t compact_to);
  /// Reads back the snapshot received into the incoming file (PersistBatch::snapshot_chunks):
  /// writes its header, fdatasyncs it and reads it whole (the store parses text held in
  /// memory; the node holds the snapshot it installs anyway). `out` gets received.meta, and
  /// the data when the file holds exactly `received` (its length and CRC-32C, which the core
  /// computed over the bytes as they arrived); else `problem` says why not, and nothing
  /// changed. A PersistBatch::snapshot at the same index and term then renames the file into
  /// place instead of writing the data again. Returns false once the storage has failed.
  bool load_received_snapshot(const ReceivedSnapshot& received, Snapshot& out, std::string& problem);
  /// Rewrites the identity file atomically (a joiner records the cluster id it joined).
  bool save_identity(const Identity& identity);

  bool failed() const;
  /// Why the storage failed ("IOERR ..." with the errno text and what to do); empty if not.
  const std::string& failure() const;
  /// fdatasync() and fsync() calls made so far (files and directories).
  std::uint64_t fsync_count() const;
  /// The log held on disk: [first_index, last_index], empty when last_index < first_index.
  /// Entries at or below snapshot_index() may remain as a trailing window.
  std::uint64_t first_index() const;
  std::uint64_t last_index() const;
  std::uint64_t snapshot_index() const;  // 0: no snapshot
  std::uint64_t snapshot_term() const;
  const Identity& identity() const;
  const std::string& dir() const;

 private:
  Storage();
  std::unique_ptr<detail::StorageImpl> impl_;
};

/// Group commit: one thread that makes PersistBatches durable for the whole node. Every
/// batch waiting when the thread wakes is written and made durable together with a single
/// fdatasync; a lone batch is never delayed to fill a group.
///
/// Callbacks run on the writer thread, in submission (= seq) order, once each, after the
/// fdatasync that covers their batch: ok == true means durable. After the storage fails
/// every callback gets ok == false. Callbacks must not throw, and must not call flush(),
/// stop() or the destructor (they run on the thread those wait for).
class StorageWriter {
 public:
  using Done = std::function<void(bool ok)>;

  /// Starts the writer thread. `storage` must outlive the writer.
  explicit StorageWriter(Storage& storage);
  ~StorageWriter();  // stop()
  StorageWriter(const StorageWriter&) = delete;
  StorageWriter& operator=(const StorageWriter&) = delete;

  /// Queues a batch; safe from any thread. Batches must arrive in increasing seq order
  /// (std::invalid_argument otherwise). After stop(), `done(false)` runs at once on the
  /// calling thread.
  void submit(PersistBatch batch, Done done);
  /// Queues Storage::save_snapshot(*snapshot, compact_to), in order with the batches.
  void submit_snapshot(std::shared_ptr<const Snapshot> snapshot, std::uint64_t compact_to,
                       Done done);
  /// Queues Storage::save_identity(identity), in order with the batches.
  void submit_identity(Identity identity, Done done);
  /// Queues Storage::load_received_snapshot(received, ...), in order with the batches; `done`
  /// gets the snapshot read back (its data empty, and why, when it is not the one received).
  using Loaded = std::function<void(bool ok, std::shared_ptr<Snapshot> snapshot, std::string problem)>;
  void submit_load_received(ReceivedSnapshot received, Loaded done);
  /// Blocks until everything submitted before the call has been handled and its callback
  /// has run.
  void flush();
  /// Drains: everything submitted before stop() is written and synced and its callback run
  /// (ok == false if the storage has failed); then the thread exits. Idempotent.
  void stop();
  /// Group commits so far (each ends with at most one sync of the log).
  std::uint64_t groups() const;

 private:
  struct Item {
    PersistBatch batch;
    std::shared_ptr<const Snapshot> snapshot;  // set: a save_snapshot job
    std::uint64_t compact_to = 0;
    std::optional<Identity> identity;  // set: a save_identity job
    Done done;
    std::optional<ReceivedSnapshot> received;  // set: a load_received_snapshot job
    Loaded loaded_done;
    std::shared_ptr<Snapshot> loaded;
    std::string load_problem;
  };
  void enqueue(Item item);
  void run();

  Storage& storage_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::vector<Item> queue_;
  std::uint64_t submitted_ = 0;
  std::uint64_t completed_ = 0;
  std::optional<std::uint64_t> last_seq_;
  bool stopping_ = false;
  std::atomic<std::uint64_t> groups_{0};
  std::thread thread_;  // last: starts after every other member is ready
};

// --------------------------------------------------------------------------------------------
// Implementation
// --------------------------------------------------------------------------------------------

namespace detail {

// CRC-32C: detail::crc32c, section 3 (the core keeps one over a snapshot it receives).

// Format versions: of the identity, hard state and snapshot files, and of log segments.
constexpr std::uint32_t kStorageFormatVersion = 1;
constexpr std::uint32_t kSegmentFormatVersion = 2;
constexpr std::size_t kMagicBytes = 8;
constexpr std::string_view kIdentityMagic{"RAFTIDNT", kMagicBytes};
constexpr std::string_view kHardStateMagic{"RAFTHARD", kMagicBytes};
constexpr std::string_view kSegmentMagic{"RAFTLSEG", kMagicBytes};
constexpr const char* kIdentityFile = "identity";
constexpr const char* kHardStateFile = "hardstate";
constexpr const char* kLockFile = "LOCK";
constexpr const char* kIncomingSnapshotFile = "incoming.snap.tmp";  // removed by open() as any *.tmp
constexpr std::string_view kTempSuffix = ".tmp";
// Only the node's user may read or change the data directory (the umask can only narrow
// these; a directory made before is tightened at start).
constexpr std::uint32_t kDirectoryPermissions = 0700;
constexpr std::uint32_t kFilePermissions = 0600;

// Segment header: magic, version, first index, CRC-32C of the preceding 20 bytes (format 1
// ends there); then two slots of the synced mark, each: u64 sequence number, u64 mark (a byte
// offset), CRC-32C of those 16 bytes. The slot of sequence number s is s % 2.
constexpr std::size_t kSegmentFixedBytes = 24;
constexpr std::size_t kMarkSlotBytes = 20;
constexpr std::size_t kSegmentHeaderBytes = kSegmentFixedBytes + 2 * kMarkSlotBytes;
// Record: u32 body length, u32 CRC-32C of (length, body), body.
constexpr std::size_t kRecordFrameBytes = 8;
// Body: u64 index, u64 term, u8 type, i64 timestamp_ms, then the payload.
constexpr std::size_t kRecordFixedBytes = 25;
// Snapshot: one comment line, then the data (the store's repr-style text), so that Python's
// ast.literal_eval reads the whole file (eval mode accepts comments):
//   # raft.hpp snapshot format 1 index 42 term 20 length 1234 crc32c 0a1b2c3d
constexpr std::string_view kSnapshotPrefix{"# raft.hpp snapshot format "};
// Buffered records are handed to the kernel once they reach this size, even before sync().
constexpr std::size_t kPendingFlushBytes = std::size_t{1} << 20;
// Larger writes are split: Linux writes at most about 2 GiB per call.
constexpr std::size_t kMaxWriteChunk = std::size_t{1} << 30;

inline const std::string& corruption_advice() {
  static const std::string advice =
      " The data directory is damaged: restore it from a backup, or move it away and add this "
      "node back to the cluster as a new member (it then receives a snapshot from the leader).";
  return advice;
}

/// "CORRUPT <file> byte offset <n>: <what>. <what to do>"
inline StorageError corrupt(const std::string& file, std::uint64_t offset,
                            const std::string& what) {
  return StorageError("CORRUPT " + file + " byte offset " + std::to_string(offset) + ": " +
                      what + "." + corruption_advice());
}

/// What an errno means, with its number for a search ("Permission denied (errno 13)"): in
/// every I/O error this file and the runtime report.
inline std::string errno_text(int err) {
  return std::system_category().message(err) + " (errno " + std::to_string(err) + ")";
}

/// A number in text raft.hpp writes itself (snapshot headers, peer messages, ports and
/// counts in the configuration): digits as std::from_chars reads them in `base`, at most 20
/// characters, the whole of `s`. Looser than Redis's string2ll (detail::parse_int64, for Redis
/// arguments, where replies must match Redis): leading zeros and "-0" pass here.
template <class Int>
inline bool parse_number(std::string_view s, Int& v, int base = 10) {
  if (s.empty() || s.size() > 20) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  return ec == std::errc() && p == s.data() + s.size();
}

inline void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFFu));
}
inline void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFFu));
}
inline void put_string(std::string& out, std::string_view s) {
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}
inline std::uint32_t get_u32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
inline std::uint64_t get_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

/// Reads the fixed fields of identity and hard state files; `ok` turns false (and stays
/// false) at the first read past the end.
struct ByteReader {
  std::string_view buf;
  std::size_t pos = 0;
  bool ok = true;

  bool need(std::size_t n) {
    if (!ok || buf.size() - pos < n) ok = false;
    return ok;
  }
  std::uint8_t u8() { return need(1) ? static_cast<std::uint8_t>(buf[pos++]) : 0; }
  std::uint32_t u32() {
    if (!need(4)) return 0;
    pos += 4;
    return get_u32(buf.data() + pos - 4);
  }
  std::uint64_t u64() {
    if (!need(8)) return 0;
    pos += 8;
    return get_u64(buf.data() + pos - 8);
  }
  std::string str() {
    const std::uint32_t n = u32();
    if (!need(n)) return {};
    pos += n;
    return std::string(buf.substr(pos - n, n));
  }
};

inline std::string pad20(std::uint64_t v) {
  std::string s = std::to_string(v);
  return std::string(20 - s.size(), '0') + s;
}
/// Exactly 20 decimal digits that fit in 64 bits.
inline bool parse_pad20(std::string_view s, std::uint64_t& out) {
  if (s.size() != 20) return false;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}
inline std::string segment_file_name(std::uint64_t first_index) {
  return "log-" + pad20(first_index) + ".seg";
}
inline std::string snapshot_file_name(std::uint64_t index, std::uint64_t term) {
  return "snap-" + pad20(index) + "-" + pad20(term) + ".snap";
}
inline bool parse_segment_file_name(std::string_view name, std::uint64_t& first_index) {
  return name.size() == 28 && name.substr(0, 4) == "log-" && name.substr(24) == ".seg" &&
         parse_pad20(name.substr(4, 20), first_index);
}
inline bool parse_snapshot_file_name(std::string_view name, std::uint64_t& index,
                                     std::uint64_t& term) {
  return name.size() == 51 && name.substr(0, 5) == "snap-" && name[25] == '-' &&
         name.substr(46) == ".snap" && parse_pad20(name.substr(5, 20), index) &&
         parse_pad20(name.substr(26, 20), term);
}
inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

/// Whole file into `out`; 0 or an errno value.
inline int read_whole_file(const std::string& path, std::string& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return err;
  }
  out.assign(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, &out[got], out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return err;
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  out.resize(got);
  ::close(fd);
  return 0;
}

/// Names in `dir` except "." and ".."; 0 or an errno value.
inline int list_directory(const std::string& dir, std::vector<std::string>& names) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return errno;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d);
    if (e == nullptr) {
      const int err = errno;
      ::closedir(d);
      return err;
    }
    const std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
}

/// The default FileSystem: the POSIX calls.
class PosixFileSystem : public FileSystem {
 public:
  int open(const std::string& path, Mode mode, int& fd) override {
    int flags = O_CLOEXEC;
    switch (mode) {
      case Mode::Write: flags |= O_WRONLY | O_NOFOLLOW; break;
      case Mode::Create: flags |= O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW; break;
      case Mode::Directory: flags |= O_RDONLY | O_DIRECTORY; break;
      case Mode::Lock: flags |= O_RDWR | O_CREAT | O_NOFOLLOW; break;
    }
    fd = ::open(path.c_str(), flags, kFilePermissions);
    if (fd < 0) return errno;
    if (mode != Mode::Lock) return 0;
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
#ifdef F_OFD_SETLK
    const int command = F_OFD_SETLK;  // per open file: also catches a second open in-process
#else
    const int command = F_SETLK;
#endif
    if (::fcntl(fd, command, &lock) == 0) return 0;
    const int err = errno == EACCES ? EAGAIN : errno;
    ::close(fd);
    fd = -1;
    return err;
  }
  int close(int fd) override { return ::close(fd) == 0 ? 0 : errno; }
  int write(int fd, std::uint64_t offset, std::string_view data) override {
    while (!data.empty()) {
      const ssize_t n = ::pwrite(fd, data.data(), std::min(data.size(), kMaxWriteChunk),
                                 static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno;
      if (n == 0) return EIO;
      data.remove_prefix(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
    return 0;
  }
  int truncate(int fd, std::uint64_t size) override {
    return ::ftruncate(fd, static_cast<off_t>(size)) == 0 ? 0 : errno;
  }
  // Never retried, not even on EINTR: after a failed fsync the dirty pages may be gone.
  int sync(int fd) override { return ::fdatasync(fd) == 0 ? 0 : errno; }
  int sync_directory(int fd) override { return ::fsync(fd) == 0 ? 0 : errno; }
  int read(const std::string& path, std::string& out) override {
    return read_whole_file(path, out);
  }
  int list(const std::string& dir, std::vector<std::string>& names) override {
    return list_directory(dir, names);
  }
  int rename(const std::string& from, const std::string& to) override {
    return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
  }
  int remove(const std::string& path) override {
    return ::unlink(path.c_str()) == 0 ? 0 : errno;
  }
  int make_directory(const std::string& path) override {
    return ::mkdir(path.c_str(), kDirectoryPermissions) == 0 ? 0 : errno;
  }
  int status(int fd, Status& out) override {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return errno;
    out.owner = static_cast<std::uint32_t>(st.st_uid);
    out.permissions = static_cast<std::uint32_t>(st.st_mode) & 07777u;
    return 0;
  }
  int set_permissions(int fd, std::uint32_t permissions) override {
    return ::fchmod(fd, static_cast<mode_t>(permissions)) == 0 ? 0 : errno;
  }
};

inline void check_magic_and_version(std::string_view buf, std::string_view magic,
                                    const std::string& file, const char* kind,
                                    std::uint32_t newest = kStorageFormatVersion) {
  if (buf.size() < kMagicBytes + 4)
    throw corrupt(file, buf.size(), std::string("the file is too short to be a ") + kind);
  if (buf.substr(0, kMagicBytes) != magic)
    throw corrupt(file, 0, std::string("not a ") + kind + " (bad magic)");
  const std::uint32_t version = get_u32(buf.data() + kMagicBytes);
  if (version > newest)
    throw StorageError("IOERR " + file + " byte offset " + std::to_string(kMagicBytes) +
                       ": format version " + std::to_string(version) +
                       " is newer than this program's (" + std::to_string(newest) +
                       "). Run the newer program on this data directory.");
  if (version == 0) throw corrupt(file, kMagicBytes, "format version 0 is not valid");
}

/// Checks the CRC-32C in the last 4 bytes of a small file against everything before it.
inline void check_trailing_crc(std::string_view buf, const std::string& file) {
  if (buf.size() < kMagicBytes + 8) throw corrupt(file, buf.size(), "the file is truncated");
  const std::size_t at = buf.size() - 4;
  if (crc32c(buf.data(), at) != get_u32(buf.data() + at))
    throw corrupt(file, at, "checksum mismatch");
}

inline std::string encode_hard_state(const HardState& hs) {
  std::string out(kHardStateMagic);
  put_u32(out, kStorageFormatVersion);
  put_u64(out, hs.term);
  put_string(out, hs.vote);
  put_u32(out, crc32c(out.data(), out.size()));
  return out;
}

inline HardState decode_hard_state(std::string_view buf, const std::string& file) {
  check_magic_and_version(buf, kHardStateMagic, file, "hard state file");
  check_trailing_crc(buf, file);
  ByteReader r{buf.substr(0, buf.size() - 4), kMagicBytes + 4};
  HardState hs;
  hs.term = r.u64();
  hs.vote = r.str();
  if (!r.ok || r.pos != r.buf.size())
    throw corrupt(file, r.pos, "the hard state fields do not fill the file");
  return hs;
}

inline std::string encode_identity(const Identity& id) {
  std::string out(kIdentityMagic);
  put_u32(out, kStorageFormatVersion);
  put_string(out, id.node_id);
  put_string(out, id.server_id);
  put_string(out, id.cluster_id);
  put_u32(out, static_cast<std::uint32_t>(id.initial_config.members.size()));
  for (const Member& m : id.initial_config.members) {
    put_string(out, m.id);
    put_string(out, m.address);
    put_string(out, m.server_id);
    out.push_back(m.voter ? '\1' : '\0');
  }
  put_u32(out, crc32c(out.data(), out.size()));
  return out;
}

inline Identity decode_identity(std::string_view buf, const std::string& file) {
  check_magic_and_version(buf, kIdentityMagic, file, "identity file");
  check_trailing_crc(buf, file);
  ByteReader r{buf.substr(0, buf.size() - 4), kMagicBytes + 4};
  Identity id;
  id.node_id = r.str();
  id.server_id = r.str();
  id.cluster_id = r.str();
  const std::uint32_t members = r.u32();
  for (std::uint32_t i = 0; i < members && r.ok; ++i) {
    Member m;
    m.id = r.str();
    m.address = r.str();
    m.server_id = r.str();
    const std::uint8_t voter = r.u8();
    if (voter > 1) r.ok = false;
    m.voter = voter == 1;
    if (r.ok) id.initial_config.upsert(std::move(m));
  }
  if (!r.ok || r.pos != r.buf.size() || id.node_id.empty() ||
      id.initial_config.members.size() != members)
    throw corrupt(file, r.pos, "the identity fields do not fill the file");
  return id;
}

inline std::string encode_mark_slot(std::uint64_t seq, std::uint64_t mark) {
  std::string out;
  put_u64(out, seq);
  put_u64(out, mark);
  put_u32(out, crc32c(out.data(), out.size()));
  return out;
}

/// Where the slot for sequence number `seq` lies in a segment.
inline std::uint64_t mark_slot_offset(std::uint64_t seq) {
  return kSegmentFixedBytes + (seq % 2) * kMarkSlotBytes;
}

/// A new segment's header: both slots hold the end of the header as the mark.
inline std::string encode_segment_header(std::uint64_t first_index) {
  std::string out(kSegmentMagic);
  put_u32(out, kSegmentFormatVersion);
  put_u64(out, first_index);
  put_u32(out, crc32c(out.data(), out.size()));
  out += encode_mark_slot(0, kSegmentHeaderBytes);
  out += encode_mark_slot(1, kSegmentHeaderBytes);
  return out;
}

/// The segment's first index and format version, from its header.
inline std::uint64_t decode_segment_header(std::string_view buf, const std::string& file,
                                           std::uint32_t& version) {
  check_magic_and_version(buf, kSegmentMagic, file, "log segment", kSegmentFormatVersion);
  if (buf.size() < kSegmentFixedBytes)
    throw corrupt(file, buf.size(), "the segment header is truncated");
  if (crc32c(buf.data(), kSegmentFixedBytes - 4) != get_u32(buf.data() + kSegmentFixedBytes - 4))
    throw corrupt(file, kSegmentFixedBytes - 4, "segment header checksum mismatch");
  version = get_u32(buf.data() + kMagicBytes);
  if (version >= 2 && buf.size() < kSegmentHeaderBytes)
    throw corrupt(file, buf.size(), "the segment header is truncated");
  return get_u64(buf.data() + kMagicBytes + 4);
}

inline std::size_t segment_header_bytes(std::uint32_t version) {
  return version >= 2 ? kSegmentHeaderBytes : kSegmentFixedBytes;
}

struct SyncedMark {
  std::uint64_t seq = 0;
  std::uint64_t end = 0;  // the bytes before it are durable
};

/// The synced mark in a format 2 segment header: the valid slot with the higher sequence
/// number. Empty when both slots are damaged.
inline std::optional<SyncedMark> decode_synced_mark(std::string_view header) {
  std::optional<SyncedMark> mark;
  for (std::uint64_t slot = 0; slot < 2; ++slot) {
    const char* p = header.data() + mark_slot_offset(slot);
    const std::uint64_t seq = get_u64(p);
    if (crc32c(p, 16) != get_u32(p + 16) || seq % 2 != slot) continue;
    if (!mark || seq > mark->seq) mark = SyncedMark{seq, get_u64(p + 8)};
  }
  return mark;
}

inline std::size_t record_size(const LogEntry& e) {
  return kRecordFrameBytes + kRecordFixedBytes + e.payload.size();
}

inline std::uint32_t record_crc(const char* frame, std::size_t body_size) {
  return crc32c(frame + kRecordFrameBytes, body_size, crc32c(frame, 4));
}

inline void append_record(std::string& out, const LogEntry& e) {
  const std::size_t at = out.size();
  put_u32(out, static_cast<std::uint32_t>(kRecordFixedBytes + e.payload.size()));
  put_u32(out, 0);  // the CRC, filled in below
  put_u64(out, e.index);
  put_u64(out, e.term);
  out.push_back(static_cast<char>(e.type));
  put_u64(out, static_cast<std::uint64_t>(e.timestamp_ms));
  out.append(e.payload);
  const std::uint32_t crc = record_crc(out.data() + at, out.size() - at - kRecordFrameBytes);
  for (int i = 0; i < 4; ++i)
    out[at + 4 + static_cast<std::size_t>(i)] = static_cast<char>((crc >> (8 * i)) & 0xFFu);
}

/// Why the record at `offset` is not valid; nullptr when it is.
inline const char* record_problem(std::string_view buf, std::size_t offset) {
  const std::size_t rest = buf.size() - offset;
  if (rest < kRecordFrameBytes) return "truncated record frame";
  const std::uint32_t len = get_u32(buf.data() + offset);
  if (len < kRecordFixedBytes || len > rest - kRecordFrameBytes) return "bad record length";
  if (record_crc(buf.data() + offset, len) != get_u32(buf.data() + offset + 4))
    return "record checksum mismatch";
  return nullptr;
}

inline bool valid_entry_type(EntryType t) {
  return t == EntryType::Command || t == EntryType::Noop || t == EntryType::Config;
}

/// Format 1 segments (no synced mark): whether a valid record of the log starts at or after
/// `from`, in a segment whose record at `from - 1` should have held `next_index`. That tells a
/// torn write (the damage is the end of the data) from corruption (valid records follow it).
/// Only a position whose index field could belong to the log is checksummed, so a tail of
/// garbage costs one pass, not one pass per byte.
inline bool valid_record_follows(std::string_view buf, std::size_t from, std::uint64_t next_index) {
  constexpr std::size_t kSmallest = kRecordFrameBytes + kRecordFixedBytes;
  const std::uint64_t most = next_index + (buf.size() - std::min(from, buf.size())) / kSmallest;
  for (std::size_t p = from; p + kSmallest <= buf.size(); ++p) {
    const std::uint64_t index = get_u64(buf.data() + p + kRecordFrameBytes);
    const auto type = static_cast<EntryType>(static_cast<unsigned char>(buf[p + kRecordFrameBytes + 16]));
    if (index < next_index || index > most || !valid_entry_type(type)) continue;
    if (record_problem(buf, p) == nullptr) return true;
  }
  return false;
}

inline LogEntry decode_record(std::string_view buf, std::size_t offset) {
  const char* b = buf.data() + offset + kRecordFrameBytes;
  const std::uint32_t len = get_u32(buf.data() + offset);
  LogEntry e;
  e.index = get_u64(b);
  e.term = get_u64(b + 8);
  e.type = static_cast<EntryType>(static_cast<unsigned char>(b[16]));
  e.timestamp_ms = static_cast<std::int64_t>(get_u64(b + 17));
  e.payload.assign(b + kRecordFixedBytes, len - kRecordFixedBytes);
  return e;
}

inline std::string encode_snapshot_header(const SnapshotMeta& meta, std::string_view data) {
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", static_cast<unsigned>(crc32c(data.data(), data.size())));
  return std::string(kSnapshotPrefix) + std::to_string(kStorageFormatVersion) + " index " +
         std::to_string(meta.index) + " term " + std::to_string(meta.term) + " length " +
         std::to_string(data.size()) + " crc32c " + crc + "\n";
}

/// The header of a snapshot received in chunks: the same line with every number 20 digits
/// wide (decode_snapshot reads leading zeros), so that its length is known before the data
/// is: the chunks are written behind it as they arrive, and the header last.
inline std::string encode_received_snapshot_header(std::uint64_t index, std::uint64_t term, std::uint64_t length,
                                                   std::uint32_t crc) {
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(crc));
  return std::string(kSnapshotPrefix) + std::to_string(kStorageFormatVersion) + " index " + pad20(index) +
         " term " + pad20(term) + " length " + pad20(length) + " crc32c " + hex + "\n";
}
inline const std::size_t kReceivedSnapshotHeaderBytes = encode_received_snapshot_header(0, 0, 0, 0).size();

/// Checks a whole snapshot file and leaves only its data in `buf`; returns the index and
/// term its header names. (Also how `-l` reads a snapshot copied out of a data directory.)
inline std::pair<std::uint64_t, std::uint64_t> decode_snapshot(std::string& buf, const std::string& file) {
  const std::size_t eol = buf.find('\n');
  if (buf.compare(0, kSnapshotPrefix.size(), kSnapshotPrefix) != 0 || eol == std::string::npos || eol > 256)
    throw corrupt(file, 0, "not a raft.hpp snapshot (its first line is not the snapshot header)");
  // "<version> index <i> term <t> length <n> crc32c <hex>"
  std::string_view line(buf.data() + kSnapshotPrefix.size(), eol - kSnapshotPrefix.size());
  std::vector<std::string_view> f;
  while (!line.empty()) {
    const std::size_t sp = line.find(' ');
    f.push_back(line.substr(0, sp));
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  }
  std::uint64_t version = 0, h_index = 0, h_term = 0, size = 0, crc = 0;
  if (f.size() != 9 || f[1] != "index" || f[3] != "term" || f[5] != "length" || f[7] != "crc32c" ||
      !parse_number(f[0], version) || !parse_number(f[2], h_index) || !parse_number(f[4], h_term) ||
      !parse_number(f[6], size) || !parse_number(f[8], crc, 16))
    throw corrupt(file, kSnapshotPrefix.size(), "the snapshot header line is malformed");
  if (version > kStorageFormatVersion)
    throw StorageError("ERR " + file + " was written by a newer format version (" + std::to_string(version) +
                       "); this build reads version " + std::to_string(kStorageFormatVersion) + ". Use a newer build.");
  if (version == 0) throw corrupt(file, kSnapshotPrefix.size(), "format version 0 is not valid");
  if (size != buf.size() - eol - 1)
    throw corrupt(file, buf.size(),
                  "the header says " + std::to_string(size) + " bytes of data but the file holds " +
                      std::to_string(buf.size() - eol - 1));
  if (crc32c(buf.data() + eol + 1, size) != crc)
    throw corrupt(file, eol + 1, "snapshot data checksum mismatch");
  buf.erase(0, eol + 1);
  return {h_index, h_term};
}

/// The same, for a file in a data directory, whose name says which index and term it holds.
inline void decode_snapshot(std::string& buf, const std::string& file, std::uint64_t index,
                            std::uint64_t term) {
  if (decode_snapshot(buf, file) != std::make_pair(index, term))
    throw corrupt(file, kSnapshotPrefix.size(), "the header's index and term do not match the file name");
}

/// The implementation behind Storage. Methods that do I/O return false after recording the
/// failure (fail()); open() and create() turn a failure into a StorageError.
class StorageImpl {
 public:
  struct Segment {
    std::uint64_t first = 0;  // index of its first record, also in its name and header
    std::string path;
    std::vector<std::uint64_t> offsets;  // byte offset of each record
    std::uint64_t written = 0;           // bytes handed to the file system
    std::uint32_t version = kSegmentFormatVersion;  // 1: no synced mark
    std::uint64_t mark = 0;      // format 2: the synced mark last written to the header
    std::uint64_t mark_seq = 0;  // and the sequence number it was written with
    bool mark_dirty = false;     // the mark was written after the segment's last fdatasync
  };

  explicit StorageImpl(StorageOptions o) : opt(std::move(o)) {
    while (opt.dir.size() > 1 && opt.dir.back() == '/') opt.dir.pop_back();
    fs = opt.file_system ? opt.file_system : std::make_shared<PosixFileSystem>();
  }
  ~StorageImpl() {
    for (int fd : {active_fd, incoming_fd, lock_fd, dir_fd})
      if (fd >= 0) fs->close(fd);
  }
  StorageImpl(const StorageImpl&) = delete;
  StorageImpl& operator=(const StorageImpl&) = delete;

  StorageOptions opt;
  std::shared_ptr<FileSystem> fs;
  Identity identity;
  int dir_fd = -1;
  int lock_fd = -1;

  std::vector<Segment> segments;
  int active_fd = -1;         // segments.back(), open for appending
  bool active_dirty = false;  // records written since its last fdatasync
  std::string pending;        // records for the end of segments.back(), not yet written
  std::optional<HardState> pending_hard_state;
  std::uint64_t first_index = 1;
  std::uint64_t last_index = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> term_runs;  // (first index, term)

  std::uint64_t snap_index = 0;
  std::uint64_t snap_term = 0;
  std::string snap_path;

  // The snapshot being received (kIncomingSnapshotFile): open from its chunk at offset 0.
  int incoming_fd = -1;
  std::uint64_t incoming_index = 0;
  std::uint64_t incoming_term = 0;
  std::uint64_t incoming_size = 0;  // data bytes written behind the header
  bool incoming_intact = false;     // every chunk since offset 0 written, in order
  bool incoming_loaded = false;     // read back, checked and synced: install it by rename

  std::atomic<std::uint64_t> fsyncs{0};
  std::atomic<bool> failed{false};
  std::string failure;  // set once, before `failed` turns true

  std::string path(std::string_view name) const { return opt.dir + "/" + std::string(name); }

  bool fail(std::string why) {
    if (!failed.load(std::memory_order_relaxed)) {
      failure = std::move(why);
      failed.store(true, std::memory_order_release);
    }
    return false;
  }

  // The failure reaches clients (in -MISCONF replies), so it names a file by its place in
  // the data directory, never by its absolute path; the node's log line names the directory.
  std::string in_data_dir(const std::string& file) const {
    const std::string prefix = opt.dir + "/";
    if (file.compare(0, prefix.size(), prefix) == 0) return file.substr(prefix.size());
    return file == opt.dir ? "the data directory" : file;
  }

  bool io_fail(const std::string& operation, const std::string& file, int err) {
    std::string advice =
        err == ENOSPC || err == EDQUOT
            ? "The disk is full: free space, then restart the node; it recovers what is on disk."
            : "Check the disk (kernel log), then restart the node; it recovers what is on disk.";
    return fail("IOERR " + operation + " " + in_data_dir(file) + " failed: " + errno_text(err) +
                ". The storage refuses every later write (a failed write or fsync cannot be "
                "retried safely). " + advice);
  }

  [[noreturn]] void throw_failure() const { throw StorageError(failure); }

  bool write_all(int fd, std::uint64_t offset, std::string_view data, const std::string& file) {
    if (failed) return false;
    if (const int err = fs->write(fd, offset, data)) return io_fail("write to", file, err);
    return true;
  }

  // Never retried: after a failed fsync the dirty pages may be gone.
  bool sync_fd(int fd, const std::string& file, bool directory) {
    if (failed) return false;
    fsyncs.fetch_add(1, std::memory_order_relaxed);
    int err = 0;
    if (opt.fsync_hook)
      err = opt.fsync_hook(fd) == 0 ? 0 : errno;
    else
      err = directory ? fs->sync_directory(fd) : fs->sync(fd);
    if (err != 0) return io_fail(directory ? "fsync of directory" : "fdatasync of", file, err);
    return true;
  }

  bool sync_dir() { return sync_fd(dir_fd, opt.dir, true); }

  bool remove_durably(const std::string& file) {
    const int err = fs->remove(file);
    if (err != 0 && err != ENOENT) return io_fail("unlink of", file, err);
    return sync_dir();
  }

  // A file appears under its name only complete, and stays there once this returns true.
  bool rename_durably(const std::string& from, const std::string& to) {
    if (const int err = fs->rename(from, to)) return io_fail("rename to", to, err);
#ifdef RAFT_MUTANT_NO_DIR_FSYNC
    return true;  // mutant: the rename may be undone by a power cut
#else
    return sync_dir();
#endif
  }

  /// Creates a temporary file new, never writing through a symbolic or hard link planted at
  /// its name into another file. A stale one (left by an earlier failure, or planted) is
  /// unlinked and the create tried once more; if the name is taken again at once, it fails.
  bool create_temp(const std::string& temp, int& fd) {
    int err = fs->open(temp, FileSystem::Mode::Create, fd);
    if (err == EEXIST) {
      err = fs->remove(temp);
      if (err == 0 || err == ENOENT) err = fs->open(temp, FileSystem::Mode::Create, fd);
    }
    if (err == 0) return true;
    fd = -1;
    return io_fail("create of", temp, err);
  }

  /// Temp file, write, fdatasync, rename over `name`, fsync the directory.
  bool write_file_atomically(const std::string& name,
                             std::initializer_list<std::string_view> parts) {
    if (failed) return false;
    const std::string final_path = path(name);
    const std::string temp = final_path + std::string(kTempSuffix);
    int fd = -1;
    if (!create_temp(temp, fd)) return false;
    bool ok = true;
    std::uint64_t offset = 0;
    for (std::string_view part : parts) {
      ok = ok && write_all(fd, offset, part, temp);
      offset += part.size();
    }
    ok = ok && sync_fd(fd, temp, false);
    if (const int err = fs->close(fd); err != 0 && ok) return io_fail("close of", temp, err);
    return ok && rename_durably(temp, final_path);
  }

  void open_directory(bool create) {
    if (opt.dir.empty()) throw StorageError("ERR StorageOptions::dir is empty");
    if (create) make_directories();
    if (const int err = fs->open(opt.dir, FileSystem::Mode::Directory, dir_fd)) {
      dir_fd = -1;
      throw StorageError("IOERR cannot open data directory " + opt.dir + ": " + errno_text(err));
    }
    make_private();
    const std::string lock_path = path(kLockFile);
    if (const int err = fs->open(lock_path, FileSystem::Mode::Lock, lock_fd)) {
      lock_fd = -1;
      if (err == EAGAIN)
        throw StorageError("IOERR data directory " + opt.dir + " is in use by another node (" +
                           lock_path + " is locked: " + errno_text(err) +
                           "). Give each node its own data directory.");
      throw StorageError("IOERR cannot open " + lock_path + ": " + errno_text(err));
    }
  }

  // The directory (open as dir_fd) must be this user's own, and nobody else's to read: another
  // user could otherwise read the log, or change it under the node. Checked on the open
  // directory, so a rename of the path in between changes nothing.
  void make_private() {
    FileSystem::Status st;
    if (const int err = fs->status(dir_fd, st))
      throw StorageError("IOERR cannot stat data directory " + opt.dir + ": " + errno_text(err));
    const std::uint32_t me = static_cast<std::uint32_t>(::geteuid());
    if (st.owner != me)
      throw StorageError("IOERR data directory " + opt.dir + " is owned by uid " +
                         std::to_string(st.owner) + ", not by this process's user (uid " +
                         std::to_string(me) + "): refusing to use it. Run the node as uid " +
                         std::to_string(st.owner) + ", or give the directory to uid " +
                         std::to_string(me) + " (chown -R).");
    if ((st.permissions & ~kDirectoryPermissions & 0777u) == 0) return;
    const std::uint32_t tightened = st.permissions & ~0077u;
    if (const int err = fs->set_permissions(dir_fd, tightened))
      throw StorageError("IOERR cannot restrict the permissions of data directory " + opt.dir +
                         " to " + octal(tightened) + ": " + errno_text(err));
    if (opt.warn)
      opt.warn("data directory " + opt.dir + " was open to other users (mode " +
               octal(st.permissions) + "): tightened to " + octal(tightened));
  }

  static std::string octal(std::uint32_t permissions) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(permissions & 07777u));
    return buf;
  }

  // mkdir -p, then every level is made durable in its parent, those that existed too: a
  // create() that a crash interrupted may have made them without making them durable.
  void make_directories() {
    std::vector<std::string> parents;
    std::size_t pos = 0;
    while (pos != std::string::npos) {
      pos = opt.dir.find('/', pos + 1);
      const std::string sub = opt.dir.substr(0, pos);
      const int err = fs->make_directory(sub);
      if (err != 0 && err != EEXIST)
        throw StorageError("IOERR cannot create directory " + sub + ": " + errno_text(err));
      const std::size_t slash = sub.rfind('/');
      parents.push_back(slash == std::string::npos ? "." : slash == 0 ? "/" : sub.substr(0, slash));
    }
    for (const std::string& parent : parents) {
      int fd = -1;
      if (const int err = fs->open(parent, FileSystem::Mode::Directory, fd))
        throw StorageError("IOERR cannot open " + parent + ": " + errno_text(err));
      const bool ok = sync_fd(fd, parent, true);
      fs->close(fd);
      if (!ok) throw_failure();
    }
  }

  std::uint64_t term_at(std::uint64_t index) const {
    if (index >= first_index && index <= last_index && !term_runs.empty()) {
      auto it = std::upper_bound(
          term_runs.begin(), term_runs.end(), index,
          [](std::uint64_t i, const std::pair<std::uint64_t, std::uint64_t>& run) {
            return i < run.first;
          });
      if (it != term_runs.begin()) return std::prev(it)->second;
    }
    return index == snap_index ? snap_term : 0;
  }

  /// Whether the log (or the snapshot) holds the entry (index, term).
  bool holds(std::uint64_t index, std::uint64_t term) const {
    return index > 0 && index <= last_index && term_at(index) == term;
  }

  void note_term(std::uint64_t index, std::uint64_t term) {
    if (term_runs.empty() || term_runs.back().second != term) term_runs.emplace_back(index, term);
  }

  std::uint64_t active_end() const { return segments.back().written + pending.size(); }

  /// Hands the pending hard state, then the pending records, to the file system.
  bool flush_pending() {
    if (failed) return false;
    if (pending_hard_state) {
      if (!write_file_atomically(kHardStateFile, {encode_hard_state(*pending_hard_state)}))
        return false;
      pending_hard_state.reset();
    }
    if (!pending.empty()) {
      Segment& seg = segments.back();
      if (!write_all(active_fd, seg.written, pending, seg.path)) return false;
      seg.written += pending.size();
      pending.clear();
      active_dirty = true;
    }
    return true;
  }

  /// fdatasync of the active segment; it covers the mark written before it, too.
  bool sync_active() {
    Segment& seg = segments.back();
    if (!sync_fd(active_fd, seg.path, false)) return false;
    active_dirty = false;
    seg.mark_dirty = false;
    return true;
  }

  /// Writes the active segment's synced mark (durable with its next fdatasync) into the slot
  /// not holding the current mark. That slot is written only while the other is durable, so
  /// a crash can tear at most one of them.
  bool write_mark(std::uint64_t end) {
    Segment& seg = segments.back();
    if (seg.mark_dirty && !sync_active()) return false;
    const std::uint64_t seq = seg.mark_seq + 1;
    if (!write_all(active_fd, mark_slot_offset(seq), encode_mark_slot(seq, end), seg.path))
      return false;
    seg.mark = end;
    seg.mark_seq = seq;
    seg.mark_dirty = true;
    return true;
  }

  bool sync() {
    if (!flush_pending()) return false;
    if (!active_dirty) return true;
    if (!sync_active()) return false;
    // Only now may the mark cover those bytes; it reaches the disk with the next fdatasync.
    const Segment& seg = segments.back();
    return seg.version < 2 || write_mark(seg.written);
  }

  bool close_active() {
    if (active_fd < 0) return true;
    const int fd = active_fd;
    active_fd = -1;
    active_dirty = false;
    if (const int err = fs->close(fd)) return io_fail("close of", segments.back().path, err);
    return true;
  }

  // Before the next segment appears, the active one is sealed: its records and a mark at
  // their end are durable, so a segment that is not the last holds valid records up to its
  // mark and nothing after it counts.
  bool seal_active() {
    const Segment& seg = segments.back();
    if (active_dirty && !sync_active()) return false;
    if (seg.version >= 2 && seg.mark != seg.written && !write_mark(seg.written)) return false;
    if (seg.mark_dirty && !sync_active()) return false;
    return close_active();
  }

  bool create_segment(std::uint64_t first) {
    if (!flush_pending()) return false;
    if (active_fd >= 0 && !seal_active()) return false;
    const std::string final_path = path(segment_file_name(first));
    const std::string temp = final_path + std::string(kTempSuffix);
    int fd = -1;
    if (!create_temp(temp, fd)) return false;
    const std::string header = encode_segment_header(first);
    if (!write_all(fd, 0, header, temp) || !sync_fd(fd, temp, false) ||
        !rename_durably(temp, final_path)) {
      fs->close(fd);
      return false;
    }
    active_fd = fd;
    // An empty segment of format 1 is replaced by the new one of the same name.
    if (!segments.empty() && segments.back().first == first) segments.pop_back();
    if (segments.empty()) first_index = first;
    Segment seg;
    seg.first = first;
    seg.path = final_path;
    seg.written = header.size();
    seg.mark = header.size();
    seg.mark_seq = 1;
    segments.push_back(std::move(seg));
    return true;
  }

  bool append(const LogEntry& e) {
    if (e.payload.size() > UINT32_MAX - kRecordFixedBytes)
      return fail("ERR log entry " + std::to_string(e.index) + " has a payload of " +
                  std::to_string(e.payload.size()) + " bytes: the limit is 4 GiB");
    // A segment of an older format is never appended to: the next one starts instead.
    if (segments.empty() || segments.back().version < kSegmentFormatVersion ||
        (!segments.back().offsets.empty() &&
         active_end() + record_size(e) > opt.segment_bytes)) {
      if (!create_segment(e.index)) return false;
    }
    segments.back().offsets.push_back(active_end());
    append_record(pending, e);
    last_index = e.index;
    note_term(e.index, e.term);
    return pending.size() < kPendingFlushBytes || flush_pending();
  }

  // Later segments go newest first, then the segment holding the cut is truncated and the
  // truncation made durable before anything is written over the old bytes: a crash at any
  // point leaves a prefix of the old log, never old and new records mixed.
  bool cut_suffix(std::uint64_t cut) {
    std::size_t k = segments.size() - 1;
    while (segments[k].first > cut) --k;
    const std::uint64_t offset = segments[k].offsets[cut - segments[k].first];
    if (k + 1 == segments.size() && offset >= segments[k].written) {
      pending.resize(offset - segments[k].written);  // the cut records never left memory
    } else {
      pending.clear();
      if (!flush_pending()) return false;
      while (segments.size() > k + 1) {
        if (!close_active() || !remove_durably(segments.back().path)) return false;
        segments.pop_back();
      }
      Segment& seg = segments[k];
      if (active_fd < 0) {
        if (const int err = fs->open(seg.path, FileSystem::Mode::Write, active_fd)) {
          active_fd = -1;
          return io_fail("open of", seg.path, err);
        }
      }
      // The mark comes down first, durably: a truncation that reached the disk before it
      // would leave the segment shorter than its mark, which reads as lost synced data. (The
      // other slot may still hold a mark above the cut: it is never read again, as it holds
      // the lower sequence number until it is overwritten, and a torn overwrite of it leaves
      // this one.)
      if (seg.version >= 2 && seg.mark > offset && (!write_mark(offset) || !sync_active()))
        return false;
      if (const int err = fs->truncate(active_fd, offset)) return io_fail("truncate of", seg.path, err);
      if (!sync_active()) return false;
      seg.written = offset;
    }
    segments[k].offsets.resize(cut - segments[k].first);
    last_index = cut - 1;
    while (!term_runs.empty() && term_runs.back().first >= cut) term_runs.pop_back();
    return true;
  }

  bool close_incoming() {
    incoming_intact = incoming_loaded = false;
    if (incoming_fd < 0) return true;
    const int err = fs->close(incoming_fd);
    incoming_fd = -1;
    return err == 0 || io_fail("close of", path(kIncomingSnapshotFile), err);
  }

  // Not synced here: the offset a transfer reached is not durable state (a crash starts it
  // again, and open() deletes the file). load_received_snapshot syncs the whole file.
  bool write_snapshot_chunk(const SnapshotChunk& c) {
    if (c.offset == 0) {
      if (!close_incoming() || !create_temp(path(kIncomingSnapshotFile), incoming_fd)) return false;
      incoming_index = c.index;
      incoming_term = c.term;
      incoming_size = 0;
      incoming_intact = true;
    }
    incoming_loaded = false;
    if (incoming_fd < 0 || !incoming_intact || c.index != incoming_index || c.term != incoming_term ||
        c.offset != incoming_size) {
      incoming_intact = false;  // not the next bytes of this file: loading it says so
      return true;
    }
    if (!write_all(incoming_fd, kReceivedSnapshotHeaderBytes + c.offset, c.data, path(kIncomingSnapshotFile)))
      return false;
    incoming_size += c.data.size();
    return true;
  }

  bool load_received_snapshot(const ReceivedSnapshot& r, Snapshot& out, std::string& problem) {
    problem.clear();
    out.meta = r.meta;
    out.data.clear();
    if (failed) return false;
    const std::string file = path(kIncomingSnapshotFile);
    // `problem` is logged with the refusal: it names the file by its place in the directory.
    const std::string name = kIncomingSnapshotFile;
    if (incoming_fd < 0 || !incoming_intact || incoming_index != r.meta.index || incoming_term != r.meta.term) {
      problem = "its chunks did not all reach " + name;
      return true;
    }
    if (incoming_size != r.size) {
      problem = name + " holds " + std::to_string(incoming_size) + " bytes of it, " + std::to_string(r.size) +
                " arrived";
      return true;
    }
    const std::string header = encode_received_snapshot_header(r.meta.index, r.meta.term, r.size, r.crc32c);
    if (!write_all(incoming_fd, 0, header, file)) return false;
#ifndef RAFT_MUTANT_RECEIVED_SNAPSHOT_UNSYNCED
    if (!sync_fd(incoming_fd, file, false)) return false;  // before the rename can make it the snapshot
#endif
    std::string buf;
    if (const int err = fs->read(file, buf)) {
      problem = "cannot read " + name + " back: " + errno_text(err);
      return true;
    }
    try {
      decode_snapshot(buf, name, r.meta.index, r.meta.term);  // the length and the CRC-32C
    } catch (const StorageError& e) {
      problem = e.what();
      const std::size_t advice = problem.find(corruption_advice());
      if (advice != std::string::npos) problem.erase(advice);
      return true;
    }
    out.data = std::move(buf);
    incoming_loaded = true;
    return true;
  }

  // from_leader: a PersistBatch snapshot, which may be the received file read back.
  bool write_snapshot_file(const Snapshot& snap, bool from_leader) {
    const std::string name = snapshot_file_name(snap.meta.index, snap.meta.term);
    if (from_leader && incoming_loaded && incoming_index == snap.meta.index && incoming_term == snap.meta.term &&
        incoming_size == snap.data.size()) {
      // The received file, read back, checked and synced: renamed into place, as a file that
      // write_file_atomically wrote, and not written a second time.
      if (!close_incoming() || !rename_durably(path(kIncomingSnapshotFile), path(name))) return false;
    } else if (!write_file_atomically(name, {encode_snapshot_header(snap.meta, snap.data), snap.data})) {
      return false;
    }
    const std::string new_path = path(name);
    // Losing this unlink in a crash is harmless: open() removes superseded snapshots.
    if (!snap_path.empty() && snap_path != new_path) {
      const int err = fs->remove(snap_path);
      if (err != 0 && err != ENOENT) return io_fail("unlink of", snap_path, err);
    }
    snap_path = new_path;
    snap_index = snap.meta.index;
    snap_term = snap.meta.term;
    return true;
  }

  // Whole segments whose every entry is at or below `upto` go, oldest first; never the
  // segment being appended to.
  bool drop_prefix(std::uint64_t upto) {
    while (segments.size() > 1 && segments[1].first - 1 <= upto) {
      if (!remove_durably(segments.front().path)) return false;
      segments.erase(segments.begin());
    }
    if (!segments.empty()) first_index = segments.front().first;
    while (term_runs.size() > 1 && term_runs[1].first <= first_index)
      term_runs.erase(term_runs.begin());
    return true;
  }

  // The snapshot from a PersistBatch. When the log holds its last entry, the log after it is
  // kept (Raft §7) and only what it covers may go, as for a snapshot the node takes. Else it
  // replaces the log: the snapshot is made durable first, then the whole log goes, newest
  // segment first (a crash leaves a prefix of the old log beside the new snapshot, which
  // open() drops, as it cannot hold the snapshot's last entry).
  bool install_snapshot(const Snapshot& snap) {
    const SnapshotMeta& m = snap.meta;
    if (m.index == 0 || m.index < snap_index)
      return fail("ERR a PersistBatch snapshot at index " + std::to_string(m.index) +
                  " does not follow the snapshot on disk at index " +
                  std::to_string(snap_index));
    if (holds(m.index, m.term)) return save_snapshot(snap, m.index, true);
    pending.clear();  // the whole log is replaced: its unwritten records need not be written
    if (!flush_pending() || !write_snapshot_file(snap, true)) return false;
    while (!segments.empty()) {
      if (!close_active() || !remove_durably(segments.back().path)) return false;
      segments.pop_back();
    }
    first_index = m.index + 1;
    last_index = m.index;
    term_runs.clear();
    return true;
  }

  bool save_snapshot(const Snapshot& snap, std::uint64_t compact_to, bool from_leader = false) {
    if (failed) return false;
    const SnapshotMeta& m = snap.meta;
    if (m.index <= snap_index) return true;
    if (m.index > last_index || (m.index >= first_index && term_at(m.index) != m.term))
      return fail("ERR a snapshot at index " + std::to_string(m.index) + " term " +
                  std::to_string(m.term) + " does not match the log (last index " +
                  std::to_string(last_index) + ", term there " +
                  std::to_string(term_at(m.index)) + ")");
    return flush_pending() && write_snapshot_file(snap, from_leader) &&
           drop_prefix(std::min(compact_to, m.index));
  }

  bool write(const PersistBatch& b) {
    if (failed) return false;
    if (b.snapshot && !install_snapshot(*b.snapshot)) return false;
    for (const SnapshotChunk& c : b.snapshot_chunks)
      if (!write_snapshot_chunk(c)) return false;
    if (b.hard_state) pending_hard_state = *b.hard_state;
    if (b.entries.empty()) return true;
    const auto batch_error = [&b](const std::string& what) {
      return "ERR PersistBatch seq " + std::to_string(b.seq) + ": " + what;
    };
    for (std::size_t i = 0; i < b.entries.size(); ++i) {
      const LogEntry& e = b.entries[i];
      if (!valid_entry_type(e.type))
        return fail(batch_error("entry " + std::to_string(e.index) + " has an unknown type"));
      if (i > 0 && (e.index != b.entries[i - 1].index + 1 || e.term < b.entries[i - 1].term))
        return fail(batch_error(
            "entries are not contiguous with non-decreasing terms at index " +
            std::to_string(e.index)));
    }
    const std::uint64_t start = b.entries.front().index;
    if (start <= snap_index || start > last_index + 1)
      return fail(batch_error("entry index " + std::to_string(start) +
                              " does not fit the log (snapshot index " +
                              std::to_string(snap_index) + ", last index " +
                              std::to_string(last_index) + ")"));
    if (b.entries.front().term < term_at(start - 1))
      return fail(batch_error("entry " + std::to_string(start) + " has term " +
                              std::to_string(b.entries.front().term) + ", below the term " +
                              std::to_string(term_at(start - 1)) + " of the entry before it"));
    // Entries the log holds already (same index and term: by Log Matching the same entries)
    // are skipped, so durable entries are never deleted to be written again.
    std::size_t i = 0;
    while (i < b.entries.size() && holds(b.entries[i].index, b.entries[i].term)) ++i;
    if (i < b.entries.size() && b.entries[i].index <= last_index &&
        !cut_suffix(b.entries[i].index))
      return false;
    for (; i < b.entries.size(); ++i)
      if (!append(b.entries[i])) return false;
    return true;
  }

  void create(Identity id) {
    open_directory(true);
    std::vector<std::string> names;
    if (const int err = fs->list(opt.dir, names))
      throw StorageError("IOERR cannot list " + opt.dir + ": " + errno_text(err));
    for (const std::string& name : names) {
      std::uint64_t a = 0, b = 0;
      if (name == kIdentityFile)
        throw StorageError("IOERR " + opt.dir +
                           " already holds a data directory: open it instead of creating it");
      if (parse_segment_file_name(name, a) || parse_snapshot_file_name(name, a, b))
        throw StorageError("IOERR " + opt.dir + " holds " + name +
                           " but no identity file: refusing to create a data directory over "
                           "it. Move those files away or choose another directory.");
    }
    if (id.node_id.empty()) throw StorageError("ERR Identity::node_id is empty");
    if (id.server_id.empty()) id.server_id = random_id128();
    // The identity file goes last: it is what marks the directory as complete.
    if (!write_file_atomically(kHardStateFile, {encode_hard_state(HardState{})}) ||
        !write_file_atomically(kIdentityFile, {encode_identity(id)}))
      throw_failure();
    identity = std::move(id);
    for (const std::string& name : names)
      if (ends_with(name, kTempSuffix)) fs->remove(path(name));
  }

  void recover(Recovered& out);
};

inline void StorageImpl::recover(Recovered& out) {
  out = Recovered{};
  open_directory(false);

  std::string buf;
  const std::string identity_path = path(kIdentityFile);
  if (const int err = fs->read(identity_path, buf))
    throw StorageError(err == ENOENT ? "IOERR " + opt.dir +
                                           " holds no identity file: it is not a data directory "
                                           "(Storage::create makes one)"
                                     : "IOERR cannot read " + identity_path + ": " +
                                           errno_text(err));
  identity = decode_identity(buf, identity_path);
  out.identity = identity;

  const std::string hard_state_path = path(kHardStateFile);
  if (const int err = fs->read(hard_state_path, buf))
    throw err == ENOENT ? corrupt(hard_state_path, 0, "the hard state file is missing")
                        : StorageError("IOERR cannot read " + hard_state_path + ": " +
                                       errno_text(err));
  out.hard_state = decode_hard_state(buf, hard_state_path);

  std::vector<std::string> names;
  if (const int err = fs->list(opt.dir, names))
    throw StorageError("IOERR cannot list " + opt.dir + ": " + errno_text(err));
  std::map<std::uint64_t, std::string> segment_names;
  std::vector<std::pair<std::pair<std::uint64_t, std::uint64_t>, std::string>> snapshots;
  std::vector<std::string> leftovers;
  for (const std::string& name : names) {
    std::uint64_t a = 0, b = 0;
    if (ends_with(name, kTempSuffix))
      leftovers.push_back(name);
    else if (parse_segment_file_name(name, a))
      segment_names.emplace(a, name);
    else if (parse_snapshot_file_name(name, a, b))
      snapshots.push_back({{a, b}, name});
  }

  // The newest snapshot. It became visible by rename, so it is complete: damage is
  // corruption, and falling back to an older one could silently lose acknowledged entries.
  std::sort(snapshots.begin(), snapshots.end());
  if (!snapshots.empty()) {
    const auto& [index_term, name] = snapshots.back();
    snap_path = path(name);
    if (const int err = fs->read(snap_path, buf))
      throw StorageError("IOERR cannot read " + snap_path + ": " + errno_text(err));
    decode_snapshot(buf, snap_path, index_term.first, index_term.second);
    if (index_term.first == 0) throw corrupt(snap_path, 12, "a snapshot at index 0");
    snap_index = index_term.first;
    snap_term = index_term.second;
    out.snapshot = Snapshot{SnapshotMeta{snap_index, snap_term, {}}, std::move(buf)};
    buf = std::string();
  }

  // The segments, in order: contiguous, terms non-decreasing, valid up to their synced marks,
  // damage after that only as a torn tail of the last one. Each byte is read once.
  std::uint64_t next_index = 0;
  std::uint64_t previous_term = 0;
  std::optional<std::uint64_t> term_at_snapshot;
  std::size_t torn_offset = 0;
  const char* torn_reason = nullptr;
  std::uint64_t torn_file_size = 0;
  std::size_t seen = 0;
  for (const auto& [first, name] : segment_names) {
    const bool last = ++seen == segment_names.size();
    const std::string seg_path = path(name);
    if (const int err = fs->read(seg_path, buf))
      throw StorageError("IOERR cannot read " + seg_path + ": " + errno_text(err));
    Segment seg;
    const std::uint64_t header_first = decode_segment_header(buf, seg_path, seg.version);
    if (header_first != first)
      throw corrupt(seg_path, kMagicBytes + 4,
                    "the header says the segment starts at index " +
                        std::to_string(header_first) + " but its name says " +
                        std::to_string(first));
    if (first == 0) throw corrupt(seg_path, kMagicBytes + 4, "a segment starting at index 0");
    if (!segments.empty() && first != next_index)
      throw corrupt(seg_path, 0,
                    "the segment starts at index " + std::to_string(first) +
                        " but the previous segment " + segments.back().path + " ends at index " +
                        std::to_string(next_index - 1) +
                        (first > next_index ? ": a segment is missing" : ": segments overlap"));
    next_index = first;
    seg.first = first;
    seg.path = seg_path;
    std::size_t offset = segment_header_bytes(seg.version);
    // `synced`: the bytes known durable, which must hold valid records. Format 1 has no mark:
    // all of a segment that is not the last, none of the last.
    std::uint64_t synced = last ? offset : buf.size();
    if (seg.version >= 2) {
      const std::optional<SyncedMark> mark = decode_synced_mark(buf);
      if (!mark) throw corrupt(seg_path, kSegmentFixedBytes, "both slots of the synced mark are damaged");
      if (mark->end < offset)
        throw corrupt(seg_path, mark_slot_offset(mark->seq), "the synced mark points into the header");
      synced = mark->end;
      seg.mark = mark->end;
      seg.mark_seq = mark->seq;
    }
    const std::string synced_text = "the synced mark at byte offset " + std::to_string(synced);
    // A segment that is not the last ends at its mark.
    const std::size_t end = seg.version >= 2 && !last ? std::min<std::uint64_t>(synced, buf.size())
                                                      : buf.size();
    while (offset < end) {
      const bool durable = offset < synced;
      const std::string_view in(buf.data(), durable ? std::min<std::uint64_t>(synced, end) : end);
      if (const char* problem = record_problem(in, offset)) {
        if (durable)
          throw corrupt(seg_path, offset,
                        std::string(problem) +
                            (seg.version >= 2 ? " before " + synced_text +
                                                    ", in bytes that were made durable"
                                              : " in a segment that is not the last"));
        if (seg.version < 2 && valid_record_follows(buf, offset + 1, next_index))
          throw corrupt(seg_path, offset, std::string(problem) + ", and valid records follow it");
        torn_offset = offset;
        torn_reason = problem;
        torn_file_size = buf.size();
        break;
      }
      LogEntry e = decode_record(buf, offset);
      if (e.index != next_index)
        throw corrupt(seg_path, offset,
                      "the record holds index " + std::to_string(e.index) + " where " +
                          std::to_string(next_index) + " was expected");
      if (!valid_entry_type(e.type))
        throw corrupt(seg_path, offset + kRecordFrameBytes + 16, "unknown entry type");
      if (e.term < previous_term)
        throw corrupt(seg_path, offset,
                      "entry " + std::to_string(e.index) + " has term " +
                          std::to_string(e.term) + ", below the previous entry's term " +
                          std::to_string(previous_term));
      previous_term = e.term;
      note_term(e.index, e.term);
      if (e.index == snap_index) term_at_snapshot = e.term;
      seg.offsets.push_back(offset);
      offset += kRecordFrameBytes + get_u32(buf.data() + offset);
      ++next_index;
      if (e.index > snap_index) out.entries.push_back(std::move(e));
    }
    if (offset < synced)
      throw corrupt(seg_path, offset,
                    "the file ends before " + synced_text +
                        ": records that were made durable are missing");
    seg.written = offset;
    segments.push_back(std::move(seg));
  }
  buf = std::string();

  // The log against the snapshot (a crash can interrupt the install of a leader's snapshot,
  // which replaces the whole log when the log does not hold the snapshot's last entry).
  bool discard_log = false;
  if (!segments.empty()) {
    const std::uint64_t first = segments.front().first;
    const std::uint64_t last = next_index - 1;
    const std::string& first_path = segments.front().path;
    if (snap_index == 0 && first != 1)
      throw corrupt(first_path, 0,
                    "the log starts at index " + std::to_string(first) +
                        " but there is no snapshot: the snapshot or the earlier segments are "
                        "missing");
    if (first > snap_index + 1)
      throw corrupt(first_path, 0,
                    "the log starts at index " + std::to_string(first) + " but the snapshot " +
                        snap_path + " ends at index " + std::to_string(snap_index) +
                        ": the entries between are missing");
    if (snap_index > 0 && last < snap_index) {
      discard_log = true;
      out.notes.push_back("removed the log (indexes " + std::to_string(first) + " to " +
                          std::to_string(last) + "): the snapshot " + snap_path +
                          " covers it (a snapshot install was interrupted)");
    } else if (term_at_snapshot && *term_at_snapshot != snap_term) {
      discard_log = true;
      out.notes.push_back("removed the log (indexes " + std::to_string(first) + " to " +
                          std::to_string(last) + "): it has term " +
                          std::to_string(*term_at_snapshot) + " at index " +
                          std::to_string(snap_index) + " where the snapshot " + snap_path +
                          " has term " + std::to_string(snap_term) +
                          " (a snapshot install was interrupted)");
    } else if (!out.entries.empty() && out.entries.front().term < snap_term) {
      throw corrupt(first_path, 0,
                    "entry " + std::to_string(out.entries.front().index) + " has term " +
                        std::to_string(out.entries.front().term) + ", below the term " +
                        std::to_string(snap_term) + " of the snapshot " + snap_path);
    }
  }

  // Everything checked: now repair.
  if (discard_log) {
    while (!segments.empty()) {
      if (!remove_durably(segments.back().path)) throw_failure();
      segments.pop_back();
    }
    out.entries.clear();
    term_runs.clear();
  }
  if (!segments.empty()) {
    Segment& seg = segments.back();
    if (const int err = fs->open(seg.path, FileSystem::Mode::Write, active_fd)) {
      active_fd = -1;
      throw StorageError("IOERR cannot open " + seg.path + ": " + errno_text(err));
    }
    if (torn_reason != nullptr) {
      if (const int err = fs->truncate(active_fd, torn_offset)) io_fail("truncate of", seg.path, err);
      out.notes.push_back("cut the torn tail of " + seg.path + " at byte offset " +
                          std::to_string(torn_offset) + " (" +
                          std::to_string(torn_file_size - torn_offset) + " bytes, " +
                          torn_reason +
                          (seg.version >= 2 ? ", after the synced mark" : ", nothing valid after it") +
                          "): a write interrupted by a crash");
    }
  }
  for (std::size_t i = 0; i + 1 < snapshots.size(); ++i) {
    const std::string p = path(snapshots[i].second);
    if (const int err = fs->remove(p); err != 0 && err != ENOENT) io_fail("unlink of", p, err);
    out.notes.push_back("removed " + p + ": superseded by " + snap_path);
  }
  for (const std::string& name : leftovers) {
    const std::string p = path(name);
    if (const int err = fs->remove(p); err != 0 && err != ENOENT) io_fail("unlink of", p, err);
    out.notes.push_back("removed " + p + (name == kIncomingSnapshotFile
                                              ? ": a snapshot transfer interrupted by a stop or a crash"
                                              : ": a write interrupted by a crash"));
  }
  // What open() returns is made durable: after a crash of the process alone, unsynced
  // writes (records, a renamed hard state) are still in the page cache, where they were just
  // read, and the node is about to act on them. Then the mark may cover the whole log.
  if (!segments.empty()) {
    const Segment& seg = segments.back();
    if (!sync_active()) throw_failure();
    if (seg.version >= 2 && seg.mark != seg.written && !write_mark(seg.written)) throw_failure();
  }
  if (!sync_dir()) throw_failure();

  if (segments.empty()) {
    first_index = snap_index + 1;
    last_index = snap_index;
  } else {
    first_index = segments.front().first;
    last_index = next_index - 1;
  }
}

}  // namespace detail

inline std::string random_id128() {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int word = 0; word < 4; ++word) {
    std::uint32_t v = static_cast<std::uint32_t>(rd());
    for (int i = 0; i < 8; ++i, v >>= 4) out.push_back(kHex[v & 0xFu]);
  }
  return out;
}

inline Storage::Storage() = default;
inline Storage::Storage(Storage&&) noexcept = default;
inline Storage& Storage::operator=(Storage&&) noexcept = default;
inline Storage::~Storage() = default;

inline bool Storage::exists(const std::string& dir) {
  struct stat st {};
  return ::stat((dir + "/" + detail::kIdentityFile).c_str(), &st) == 0;
}

inline Storage Storage::create(StorageOptions options, Identity identity) {
  Storage s;
  s.impl_ = std::make_unique<detail::StorageImpl>(std::move(options));
  s.impl_->create(std::move(identity));
  return s;
}

inline Storage Storage::open(StorageOptions options, Recovered& out) {
  Storage s;
  s.impl_ = std::make_unique<detail::StorageImpl>(std::move(options));
  s.impl_->recover(out);
  return s;
}

inline bool Storage::write(const PersistBatch& batch) { return impl_->write(batch); }
inline bool Storage::sync() { return impl_->sync(); }
inline bool Storage::save_snapshot(const Snapshot& snapshot, std::uint64_t compact_to) {
  return impl_->save_snapshot(snapshot, compact_to);
}
inline bool Storage::load_received_snapshot(const ReceivedSnapshot& received, Snapshot& out, std::string& problem) {
  return impl_->load_received_snapshot(received, out, problem);
}

inline bool Storage::save_identity(const Identity& identity) {
  if (!impl_->write_file_atomically(detail::kIdentityFile, {detail::encode_identity(identity)})) return false;
  impl_->identity = identity;
  return true;
}
inline bool Storage::failed() const { return impl_->failed.load(std::memory_order_acquire); }
inline const std::string& Storage::failure() const {
  static const std::string none;
  return failed() ? impl_->failure : none;
}
inline std::uint64_t Storage::fsync_count() const {
  return impl_->fsyncs.load(std::memory_order_relaxed);
}
inline std::uint64_t Storage::first_index() const { return impl_->first_index; }
inline std::uint64_t Storage::last_index() const { return impl_->last_index; }
inline std::uint64_t Storage::snapshot_index() const { return impl_->snap_index; }
inline std::uint64_t Storage::snapshot_term() const { return impl_->snap_term; }
inline const Identity& Storage::identity() const { return impl_->identity; }
inline const std::string& Storage::dir() const { return impl_->opt.dir; }

inline StorageWriter::StorageWriter(Storage& storage)
    : storage_(storage), thread_([this] { run(); }) {}

inline StorageWriter::~StorageWriter() { stop(); }

inline void StorageWriter::submit(PersistBatch batch, Done done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (last_seq_ && batch.seq <= *last_seq_)
      throw std::invalid_argument("ERR PersistBatch seq " + std::to_string(batch.seq) +
                                  " submitted after seq " + std::to_string(*last_seq_) +
                                  ": batches must be submitted in seq order");
    last_seq_ = batch.seq;
  }
  Item item;
  item.batch = std::move(batch);
  item.done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::submit_snapshot(std::shared_ptr<const Snapshot> snapshot,
                                           std::uint64_t compact_to, Done done) {
  if (!snapshot)
    throw std::invalid_argument("ERR StorageWriter::submit_snapshot without a snapshot");
  Item item;
  item.snapshot = std::move(snapshot);
  item.compact_to = compact_to;
  item.done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::submit_identity(Identity identity, Done done) {
  Item item;
  item.identity = std::move(identity);
  item.done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::submit_load_received(ReceivedSnapshot received, Loaded done) {
  Item item;
  item.received = std::move(received);
  item.loaded_done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::enqueue(Item item) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(item));
      ++submitted_;
      wake_.notify_one();
      return;
    }
  }
  if (item.done) item.done(false);
  if (item.loaded_done) item.loaded_done(false, nullptr, "the storage is stopping");
}

inline void StorageWriter::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  if (std::this_thread::get_id() == thread_.get_id())
    throw std::logic_error("ERR StorageWriter::flush() called from a storage callback");
  const std::uint64_t target = submitted_;
  idle_.wait(lock, [&] { return completed_ >= target; });
}

inline void StorageWriter::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    wake_.notify_one();
  }
  if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
}

inline std::uint64_t StorageWriter::groups() const {
  return groups_.load(std::memory_order_relaxed);
}

inline void StorageWriter::run() {
  std::vector<Item> group;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;  // stopping, and drained
      group.swap(queue_);
    }
    for (Item& item : group) {
      if (item.received) {
        item.loaded = std::make_shared<Snapshot>();
        storage_.load_received_snapshot(*item.received, *item.loaded, item.load_problem);
      } else if (item.snapshot)
        storage_.save_snapshot(*item.snapshot, item.compact_to);
      else if (item.identity)
        storage_.save_identity(*item.identity);
      else
        storage_.write(item.batch);
    }
    // One verdict for the group: nothing in it is durable until this sync succeeds.
    const bool ok = storage_.sync();
    groups_.fetch_add(1, std::memory_order_relaxed);
    for (Item& item : group) {
      if (item.done) item.done(ok);
      if (item.loaded_done) item.loaded_done(ok, std::move(item.loaded), std::move(item.load_problem));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      completed_ += group.size();
    }
    idle_.notify_all();
    group.clear();
  }
}

}  // namespace raft
// ---- src/raft/5a_net.hpp ----

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
// ---- src/raft/5b_peer_wire.hpp ----

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
// ---- src/raft/5c_client_acl.hpp ----

namespace raft {
namespace detail {

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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5d_peer_auth.hpp ----

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
// ---- src/raft/5e1_blocked_clients.hpp ----

namespace raft {
namespace detail {

// ---- blocked clients (BLPOP BRPOP BLMOVE BZPOPMIN BZPOPMAX) ----------------------------------
// A blocking command is a write: each try is an entry in the log, applied on every node by the
// command's handler (2_store.hpp), which pops or replies nil. A client whose try found nothing
// waits here, on the poll thread that serves it (no thread per waiter), queued on each of its
// keys in the order the commands arrived at this node. When entries have been applied and a
// waited key holds data again, the poll thread proposes another try for the first waiters of
// that key (as many as the key has elements); a try that finds the key empty again (a waiter
// on another node took the element first) waits on with what is left of its timeout. So an
// element is popped only by an applied entry, never twice; the runtime's side is in
// 5n1_blocking.hpp.
//
// The poll thread owns everything here; `any()` is also read by the apply thread, which wakes
// the poll thread after applying entries while someone waits, and `count()` by INFO.
class BlockedClients {
 public:
  struct Waiter {
    std::uint64_t op = 0;            // the connection's op the reply fills
    std::vector<std::string> words;  // the command, tried again as it was sent
    std::vector<std::string> keys;   // the keys it waits on
    Store::Kind kind = Store::Kind::List;  // what those keys must hold to be worth a try
    std::optional<std::chrono::steady_clock::time_point> deadline;  // none: for ever
    std::string user;                // the client's ACL user (a forwarded try carries it)
    bool trying = false;             // a try is proposed and not answered yet
  };

  bool any() const { return count_.load() > 0; }
  std::size_t count() const { return count_.load(); }  // INFO's blocked_clients
  Waiter* find(std::uint64_t conn) {
    auto it = by_conn_.find(conn);
    return it == by_conn_.end() ? nullptr : &it->second;
  }
  /// A new waiter, its first try being proposed now: queued behind those already waiting.
  void add(std::uint64_t conn, Waiter w) {
    for (const std::string& key : w.keys) {
      std::deque<std::uint64_t>& q = by_key_[key];
      if (std::find(q.begin(), q.end(), conn) == q.end()) q.push_back(conn);
    }
    by_conn_[conn] = std::move(w);
    count_ = by_conn_.size();
  }
  void remove(std::uint64_t conn) {
    auto it = by_conn_.find(conn);
    if (it == by_conn_.end()) return;
    for (const std::string& key : it->second.keys) {
      auto q = by_key_.find(key);
      if (q == by_key_.end()) continue;
      q->second.erase(std::remove(q->second.begin(), q->second.end(), conn), q->second.end());
      if (q->second.empty()) by_key_.erase(q);
    }
    by_conn_.erase(it);
    count_ = by_conn_.size();
  }
  std::vector<std::uint64_t> conns() const {
    std::vector<std::uint64_t> out;
    for (const auto& [conn, w] : by_conn_) out.push_back(conn);
    return out;
  }
  const std::map<std::string, std::deque<std::uint64_t>, std::less<>>& by_key() const { return by_key_; }
  /// The earliest deadline of a waiter not trying (one trying is answered by its try).
  std::optional<std::chrono::steady_clock::time_point> next_deadline() const {
    std::optional<std::chrono::steady_clock::time_point> next;
    for (const auto& [conn, w] : by_conn_)
      if (!w.trying && w.deadline && (!next || *w.deadline < *next)) next = w.deadline;
    return next;
  }
  /// Whether the keys should be looked at again: entries were applied since the last look
  /// (`applied`, the applied index now), or a try came back empty meanwhile.
  bool worth_a_look(std::uint64_t applied) {
    const bool moved = applied != looked_at_applied_ || try_came_back_;
    looked_at_applied_ = applied;
    try_came_back_ = false;
    return moved;
  }
  void try_came_back() { try_came_back_ = true; }
  bool look_due() const { return try_came_back_; }

 private:
  std::map<std::uint64_t, Waiter> by_conn_;  // a connection waits for one command at a time
  std::map<std::string, std::deque<std::uint64_t>, std::less<>> by_key_;  // in arrival order
  std::atomic<std::size_t> count_{0};
  std::uint64_t looked_at_applied_ = 0;
  bool try_came_back_ = false;
};

}  // namespace detail
}  // namespace raft
// ---- src/raft/5e_peer_link.hpp ----

namespace raft {
namespace detail {

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
  int connect_to_peer(const std::string& addr, Tls& tls, PeerSession& next_session, std::string& error);
  std::string take_batch();
  bool reconnect(std::unique_lock<std::mutex>& lock, PeerSession& session, PeerSession& next_session, int& backoff_ms,
                 bool& logged_failure);

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

// The links to the other nodes, one PeerLink each, opened on first use, and the addresses to
// reach them at (from the peer map, committed configurations and handshakes). Its lock is
// taken after core_mu_ and fwd_mu_; holding it, it only calls PeerLink's setters and
// constructor (which take the link's own mutex, never another).
class Links {
 public:
  explicit Links(Runtime& rt) : rt_(rt) {}

  /// The link to `id`, opened now if its address is known; nullptr if it is not.
  PeerLink* find_or_open(const NodeId& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(id);
    if (it != links_.end()) return it->second.get();
    auto a = addresses_.find(id);
    if (a == addresses_.end()) return nullptr;
    auto link = std::make_unique<PeerLink>(rt_, id, a->second);
    PeerLink* raw = link.get();
    links_[id] = std::move(link);
    return raw;
  }
  /// `id` is at `address` (a committed configuration, the peer map): an open link moves there.
  void set_address(const NodeId& id, const std::string& address) {
    std::lock_guard<std::mutex> lock(mu_);
    addresses_[id] = address;
    auto it = links_.find(id);
    if (it != links_.end()) it->second->set_address(address);
  }
  /// What a peer's handshake says its address is: used only while no other is known.
  void learn_address(const NodeId& id, const std::string& address) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!addresses_.count(id)) addresses_[id] = address;
  }
  /// Stops every link's thread, all at once, then waits for each. Stopped, not destroyed:
  /// another thread may still hold a pointer (freed with the Runtime).
  void stop_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, link] : links_) link->request_stop();
    for (auto& [id, link] : links_) link->stop();
  }

 private:
  Runtime& rt_;
  std::mutex mu_;
  std::map<NodeId, std::unique_ptr<PeerLink>> links_;
  std::map<NodeId, std::string> addresses_;
};

}  // namespace detail
}  // namespace raft
// ---- src/raft/5f_runtime.hpp ----

// ---- the runtime: threads and locks ---------------------------------------------------------
// Runtime is the wiring: one object whose threads drive the core, serve clients and talk to
// peers. Its code is split by what it serves (the parts listed at the top of 5a_net.hpp); its
// state is grouped below by the thread that owns it or the lock that guards it. Classes with
// state and a lock of their own: PeerLink (5e, one per peer, its sender thread), Links (5e,
// the set of links and the peers' addresses), CheckedSnapshot (above), StorageWriter (4).
//
// Threads, independent of the number of clients (part: what it runs):
//   poll      5n, 5k, 5m, 5l: accepts and serves every client connection: parses commands,
//             checks AUTH/ACL, proposes writes and asks for read indexes (batched per wake-up,
//             flush_batched), runs reads confirmed here, writes replies in order (complete_op);
//             times out this node's forwarded writes. Owns clients_, poll_batch_, done_'s
//             consumer side, the output totals and the live limits' readers.
//   peer      5o, 5l: accepts every inbound peer connection (peers_in_, its own), does the
//             listener's handshake, steps inbound Raft messages into the core, answers JOIN,
//             proposes the writes followers forward (FWD, peer_batch_) and takes their answers
//             (FWDR); checks a received snapshot before the core installs it. Nothing a client
//             sends runs here: a slow command or a large reply never delays a heartbeat.
//   ticker    5h: ticks the core; wakes the poll thread every 100 ms (forwards time out there).
//   sender    5e/5i, one per peer (PeerLink): connects from this node's address, runs TLS and
//             the connector's handshake, sends what drive() and the forwards queued.
//   writer    4 (StorageWriter), callbacks in 5h: the group commit (everything waiting shares
//             an fdatasync); writes a received snapshot's chunks to a file, reads it back and
//             parses it whole (CheckedSnapshot::keep).
//   apply     5j: applies committed entries to the store, answers writes and linearizable
//             reads (finish_request), runs the role callbacks, proposes expiry. Owns
//             reads_by_index_ and fatal_.
//   snapshot  5j: serializes a copy of the store and hands it to the writer.
//   joiner    5o: only on a node started with -e, until it is a member.
//   callers   execute() and Node's other methods, from the embedding program's threads.
//
// Locks (what each guards; what may be taken while holding it):
//   life_mu_    the lifecycle's waits (life_cv_, starting_, stop_requested_); a leaf.
//   core_mu_    the Core, identity_, failure_, linked_config_, refused_reads_. Held by drive():
//               may take req_mu_, apply_mu_, done_mu_, status_mu_, Links' lock and a sender's
//               mutex.
//   fwd_mu_     forwards_ (this node's forwarded writes): may take req_mu_, Links' lock and a
//               sender's mutex.
//   req_mu_     requests_ and write_by_index_ (who waits for what): a leaf.
//   apply_mu_   the apply queue: a leaf.      snap_mu_  the snapshot job: a leaf.
//   data_mu_    the store: the apply thread writes, the poll thread and Node::read read; never
//               held while taking core_mu_.
//   done_mu_    replies for clients, handed to the poll thread: a leaf.
//   status_mu_, acl_mu_, tunables_mu_, ServerStats' (INFO's counts), CheckedSnapshot's, Links'
//               (after core_mu_ and fwd_mu_; it takes only a sender's mutex): leaves.
// The poll and peer threads share no unlocked state: what both touch (the core, forwards_,
// requests_, the links, the ACL) is under its lock above; each has its own Batch, wake pipe
// and connections.
//
// Where what comes next goes (so that it fits this model):
//   client authentication, pub/sub, watchers, a second protocol: connections of the poll
//     loop (5n; commands in 5k, AUTH/ACL in 5m, blocking pops in 5n1), state per connection
//     in ClientConn; a
//     notification is a reply queued on done_ for the poll thread to write: no thread per
//     watcher or per subscriber.
//   peer messages never delayed by client work: new peer messages are read and answered on
//     the peer thread (5o) and encoded in 5b; nothing a client sends may run there.
//   performance (fewer hand-offs between driver, writer and applier): drive() (5h) is the one
//     place where the core's output is routed to the writer, the links and the apply queue.
//
// Still to split (issue 11): Runtime holds 10 mutexes of its own; the client server (poll
// thread: clients_, done_, output totals, limits), the peer server (peer thread: peers_in_,
// its wake pipe, peer_batch_, the handshake budget) and the applier (store, data_mu_, apply
// queue, reads_by_index_, snapshot thread) are the next classes to take out, in that order
// of separability: each reaches the rest only through finish(), drive() under core_mu_ and
// push_apply().

namespace raft {
namespace detail {

// The store a received snapshot was parsed into when the core checked it (on the writer
// thread), kept for the apply thread's Restore of that same snapshot, so that it is parsed
// once. Its lock is a leaf.
class CheckedSnapshot {
 public:
  void keep(EntryId id, Store parsed) {
    std::lock_guard<std::mutex> lock(mu_);
    kept_.emplace(id, std::move(parsed));
  }
  /// The store kept for snapshot `id`, if that is the one kept; whatever was kept is dropped.
  std::optional<Store> take(EntryId id) {
    std::lock_guard<std::mutex> lock(mu_);
    std::optional<Store> out;
    if (kept_ && kept_->first == id) out.emplace(std::move(kept_->second));
    kept_.reset();
    return out;
  }

 private:
  std::mutex mu_;
  std::optional<std::pair<EntryId, Store>> kept_;
};

// What INFO's stats, commandstats and errorstats sections count: client commands as the poll
// thread dispatches and answers them (execute() and forwarded writes are not client commands
// of this node). Counting takes no lock: the poll thread is the only one that adds a command
// (under mu_, once per name) and each count is an atomic; errors, which are rare, take mu_.
class ServerStats {
 public:
  struct CommandStat {
    std::atomic<std::uint64_t> calls{0}, usec{0}, rejected{0}, failed{0};
  };
  // The poll thread: the counts of a command the node knows (never an unknown name, so
  // that the table stays bounded).
  CommandStat& command(const std::string& name) {
    auto it = commands_.find(name);
    if (it != commands_.end()) return it->second;
    std::lock_guard<std::mutex> lock(mu_);
    return commands_[name];
  }
  // The poll thread: a command answered; its reply an error or not.
  void answered(CommandStat& stat, bool rejected, const Reply& reply, std::chrono::steady_clock::duration took) {
    if (rejected) {
      ++stat.rejected;
    } else {
      ++stat.calls;
      ++commands_processed;
      stat.usec += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(took).count());
      if (reply.is_error()) ++stat.failed;
    }
  }
  // The poll thread: an error reply to a client, counted by its code (the first word), as
  // Redis does; at most kMaxErrorCodes codes, then only error_replies grows.
  void error_reply(const std::string& text) {
    ++error_replies;
    const std::string code = text.substr(0, text.find(' '));
    std::lock_guard<std::mutex> lock(mu_);
    if (errors_.size() < kMaxErrorCodes || errors_.count(code) > 0) ++errors_[code];
  }
  // The ticker, every 100 ms: the samples instantaneous_ops_per_sec averages (Redis's way:
  // the last 16 samples).
  void sample(std::chrono::steady_clock::time_point now) {
    std::lock_guard<std::mutex> lock(mu_);
    samples_[next_sample_++ % samples_.size()] = {now, commands_processed.load()};
  }
  std::uint64_t ops_per_sec() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (next_sample_ < 2) return 0;
    const std::size_t n = std::min<std::size_t>(next_sample_, samples_.size());
    const auto& newest = samples_[(next_sample_ - 1) % samples_.size()];
    const auto& oldest = samples_[(next_sample_ - n) % samples_.size()];
    const double s = std::chrono::duration<double>(newest.first - oldest.first).count();
    return s > 0 ? static_cast<std::uint64_t>(static_cast<double>(newest.second - oldest.second) / s + 0.5) : 0;
  }
  // INFO's lines: "cmdstat_<name>:calls=..." and "errorstat_<code>:count=...".
  std::string command_lines() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s;
    for (const auto& [name, c] : commands_) {
      const std::uint64_t calls = c.calls.load(), usec = c.usec.load();
      if (calls == 0 && c.rejected.load() == 0 && c.failed.load() == 0) continue;
      char per_call[32];
      std::snprintf(per_call, sizeof per_call, "%.2f", calls ? static_cast<double>(usec) / static_cast<double>(calls) : 0.0);
      s += "cmdstat_" + name + ":calls=" + std::to_string(calls) + ",usec=" + std::to_string(usec) +
           ",usec_per_call=" + per_call + ",rejected_calls=" + std::to_string(c.rejected.load()) +
           ",failed_calls=" + std::to_string(c.failed.load()) + "\r\n";
    }
    return s;
  }
  std::string error_lines() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s;
    for (const auto& [code, n] : errors_) s += "errorstat_" + code + ":count=" + std::to_string(n) + "\r\n";
    return s;
  }

  std::atomic<std::uint64_t> commands_processed{0};
  std::atomic<std::uint64_t> error_replies{0};
  std::atomic<std::uint64_t> connections_received{0};
  std::atomic<std::uint64_t> rejected_connections{0};  // over maxclients
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

 private:
  static constexpr std::size_t kMaxErrorCodes = 128;
  mutable std::mutex mu_;  // a leaf
  std::map<std::string, CommandStat, std::less<>> commands_;
  std::map<std::string, std::uint64_t> errors_;
  std::array<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>, 16> samples_{};
  std::size_t next_sample_ = 0;
};

class Runtime {
 public:
  Runtime(Node& node, Config config, testing::Hooks hooks = {})
      : node_(node), cfg_(std::move(config)), hooks_(std::move(hooks)) {
    add_builtin_commands(handlers_);
    // The leader's background expiry: delete `key` if its deadline is still at or before
    // this entry's timestamp (a key renewed meanwhile survives).
    handlers_["__expire"] = Command{[](Call& c) { return Reply::integer(c.check_ttl(c.words[1]) ? 1 : 0); }, "we", 1, 1};
    // EXEC's entry (5k2_transactions.hpp): the watched keys and the queued commands, run at once.
    handlers_[kTransactionCommand] = Command{[this](Call& c) { return run_transaction(c); }, "we", 1, -1};
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
  bool stopping() const { return stopping_or_later(); }

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
  // Administration (5k): Node's typed calls, and RAFT.* as their string layer (admin).
  AdminResult add_learner(const NodeId& id, const std::string& address);
  AdminResult promote(const NodeId& id);
  AdminResult remove(const NodeId& id);
  AdminResult transfer_leadership(const NodeId& to);
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
  // Who waits for a command's reply: one of execute()'s promise, a client connection's op,
  // or the follower that forwarded the write (FWDR on the link to it). finish() answers it.
  struct Caller {
    std::uint64_t conn = 0;
    std::uint64_t op = 0;
    std::shared_ptr<std::promise<Reply>> promise;
    NodeId forward_from;            // a forwarded write: the follower,
    std::uint64_t forward_seq = 0;  // its sequence number
    std::uint64_t forward_nonce = 0;  // and session nonce
    // The client's ACL user, which a forwarded write carries to the leader; empty: the
    // embedding program (execute()), which may run anything.
    std::string user;
  };
  // A command waiting in requests_ (under req_mu_) for something another thread does: a
  // write to be applied, a read for its read index, a forward for the leader's answer.
  struct Request {
    Caller caller;
    std::vector<std::string> words;  // a read, executed once applied...
    std::chrono::steady_clock::time_point read_deadline{};  // ... or failed after this
    EntryId entry;                   // a write, where it went
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
    // For INFO (handle_command sets them): the command's counts, if the node knows it; whether
    // it was refused before running; when it was dispatched.
    ServerStats::CommandStat* stat = nullptr;
    bool rejected = false;
    std::chrono::steady_clock::time_point dispatched{};
  };
  // A key a connection watches (WATCH): this node's applied index when it looked, and whether
  // the key was there then (5k2_transactions.hpp explains why that is enough).
  struct WatchedKey {
    std::string key;
    std::uint64_t seen_at = 0;
    bool existed = false;
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
    // MULTI ... EXEC (5k2_transactions.hpp): the commands queued and their bytes, whether one was
    // refused (EXEC answers EXECABORT), and the keys watched.
    bool in_multi = false;
    bool multi_refused = false;
    std::vector<std::vector<std::string>> queued;
    std::size_t queued_bytes = 0;
    std::vector<WatchedKey> watched;
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
  /// This node's wall clock (a test's Hooks::wall_clock, else the system's).
  std::int64_t now_ms() const { return hooks_.wall_clock ? hooks_.wall_clock() : wall_ms(); }

  // startup
  void complete_config();
  void open_listeners();
  void start_threads();
  void join_threads();
  void answer_what_is_left();
  void close_connections();
  void open_storage();
  // What opening the data directory gathers for the core (open_storage).
  struct OpenedStorage {
    CoreState st;
    std::shared_ptr<Snapshot> snapshot;
    Store loaded;               // -l
    bool load = false;          // save `loaded` as the first snapshot
    bool told_to_wait = false;  // contacted while listening before founding: logged already
  };
  void reopen_storage(const StorageOptions& so, OpenedStorage& o);
  void create_storage(const StorageOptions& so, OpenedStorage& o);
  void restore_recovered_snapshot(Snapshot& snapshot);
  void make_core(CoreState st, bool told_to_wait);
  // A member of an existing cluster that said HELLO to this address while it listened
  // before founding (listen_before_founding).
  struct FoundingContact {
    std::string cluster_id;
    NodeId node;
    std::string address;
  };
  std::optional<FoundingContact> listen_before_founding();
  void accept_while_founding(std::vector<std::unique_ptr<PeerConn>>& held);
  bool handshake_while_founding(PeerConn& p);
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
  void client_poll_set(std::vector<pollfd>& fds, std::vector<std::uint64_t>& owner);
  std::vector<std::uint64_t> serve_ready_clients(const std::vector<pollfd>& fds, const std::vector<std::uint64_t>& owner);
  void close_clients_done(std::vector<std::uint64_t> failed);
  void peer_loop();
  void peer_poll_set(std::vector<pollfd>& fds);
  std::vector<int> serve_ready_peers(const std::vector<pollfd>& fds);
  void drop_silent_peers(std::chrono::steady_clock::time_point now);
  void ticker_loop();
  void apply_loop();
  void snapshot_loop();
  void joiner_loop();
  std::string ask_to_join(const std::string& target, std::optional<std::string>& moved);
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
  static Reply latency_command(const std::vector<std::string>& w);
  void drain_done();
  bool complete_done();  // completes the replies in done_; false if there were none
  void serve_ready_reads();
  void adopt_cluster_id(const std::string& cluster_id);
  void handle_command(ClientConn* conn, Caller caller, std::vector<std::string>& words, Batch& batch);
  static Reply unknown_command_error(const std::string& name_as_sent, const std::vector<std::string>& words);
  // transactions (5k2_transactions.hpp)
  static char transaction_kind(const ClientConn& c, const std::string& name, char kind);
  bool transaction_command(ClientConn& c, const Caller& caller, const std::string& name_as_sent,
                           std::vector<std::string>& words, Batch& batch);
  Reply queue_in_transaction(ClientConn& c, const std::string& name_as_sent, std::vector<std::string>& words);
  std::optional<Reply> exec_transaction(ClientConn& c, const Caller& caller, Batch& batch);
  void watch_keys(ClientConn& c, const std::vector<std::string>& words);
  std::string forwarded_transaction_refusal(const std::string& user, const std::vector<std::string>& words) const;
  Reply run_transaction(Call& call);
  void start_checkpoint(const Caller& caller, const std::vector<std::string>& words);
  void start_write(const Caller& caller, const std::vector<std::string>& words, const Command& cmd, Batch& batch);
  static Reply proposal_refusal(const ProposeResult& res, bool forwarded_here);
  // Answers the caller. For a follower's forwarded write, `status` tells it what the reply means.
  void finish(const Caller& caller, Reply reply, ForwardStatus status = ForwardStatus::Done);
  void finish_request(std::uint64_t id, Reply reply, ForwardStatus status = ForwardStatus::Done);
  std::uint64_t add_request(Request r);
  void start_read(ClientConn* conn, const Caller& caller, std::vector<std::string>& words, const Command& cmd,
                  Batch& batch);
  // blocking pops (5n1_blocking.hpp)
  void start_blocking(ClientConn& c, const Caller& caller, const std::vector<std::string>& words);
  bool keep_blocking(ClientConn& c, std::uint64_t op, Reply& reply);
  void serve_blocked();
  int poll_wait_ms() const;
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
  static bool args_in(const std::vector<std::string>& w, std::size_t lo, std::size_t hi);
  AdminResult admin_refusal() const;
  AdminResult membership_result(const ProposeResult& proposed);
  static Reply admin_with_args(Runtime& rt, const std::vector<std::string>& w, std::size_t lo, std::size_t hi);
  Reply stop_on_request();
  static Reply set_readonly(ClientConn* conn, const std::vector<std::string>& w, bool readonly);
  Reply auth_command(ClientConn* conn, const std::vector<std::string>& w);
  Reply hello_command(ClientConn* conn, const std::vector<std::string>& w);
  static Reply client_command(ClientConn* conn, const std::vector<std::string>& w);
  Reply command_command(const std::vector<std::string>& w) const;
  Reply config_reply(const std::vector<std::string>& w);
  // clients' users (see Acl)
  bool acl_command(const std::vector<std::string>& words, AclCommand& out) const;
  bool acl_rule_names_command(const std::string& rule) const;
  std::string client_refusal(ClientConn& conn, const std::vector<std::string>& words);
  Reply acl_reply(ClientConn* conn, const std::vector<std::string>& words);
  bool authenticate(ClientConn* conn, const std::string& user, const std::string& password);
  // peers
  bool read_peer(PeerConn& p);
  bool parse_peer_messages(PeerConn& p, std::vector<Message>& inbound);
  bool step_peer_messages(const PeerConn& p, const std::vector<Message>& inbound);
  bool handle_peer_message(PeerConn& p, std::vector<std::string>& w);
  bool welcome_peer(PeerConn& p, const std::vector<std::string>& w);
  Reply handle_join(const std::vector<std::string>& w);
  // apply
  void push_apply(ApplyItem item) {
    std::lock_guard<std::mutex> lock(apply_mu_);
    apply_q_.push_back(std::move(item));
    apply_cv_.notify_one();
  }
  void apply_item(ApplyItem& item);
  void restore_snapshot(const Snapshot& snapshot);
  void apply_read_state(const ReadState& rs);
  void answer_aborted_write(EntryId id);
  void run_role_callbacks(const RoleChange& change);
  void run_leader_callback(std::uint64_t term);
  void apply_entry(const LogEntry& e);
  // A command entry, decoded (see decode_command_entry).
  struct EntryCommand {
    std::vector<std::string> words;
    const Command* command = nullptr;
    bool forwarded = false;
    SessionTable::Key session;  // a forwarded write's, with its seq and lowest
    std::uint64_t seq = 0, lowest = 0;
  };
  bool decode_command_entry(const LogEntry& e, EntryCommand& out);
  bool apply_command(const LogEntry& e, Reply& reply, ForwardStatus& status);
  bool run_forwarded_write(const LogEntry& e, const EntryCommand& c, Reply& reply, ForwardStatus& status);
  void answer_writes_at(const LogEntry& e, const Reply& reply, ForwardStatus status);
  bool run_write(const LogEntry& e, const Command& cmd, const std::vector<std::string>& words, Reply& reply);
  void serve_reads();
  void expire_waiting_reads();
  void halt(const std::string& why);
  void take_snapshot(std::uint64_t request);
  void propose_expiry();
  void leave();

  Node& node_;
  Config cfg_;
  const testing::Hooks hooks_;
  HostPort host_;
  // The node's lifecycle, one way, each step taken once (life_ only grows):
  //   New       constructed; start() may run (again, after a start() that threw).
  //   Running   start() opened the storage and the listeners and starts the threads; commands
  //             are taken (a callback run while start() finishes may already execute()).
  //   Leaving   the first stop() has begun: a leader hands over, every thread still runs.
  //   Stopping  the threads exit (their loops test stopping()); commands are refused.
  //   Halted    the threads are joined (set under core_mu_): the core is no longer driven,
  //             nothing more is sent (the writer's last callbacks see it).
  //   Stopped   everything is closed and every request answered (set under life_mu_; a
  //             second stop() and join() wait for it on life_cv_).
  // Kept apart, because they are not steps of this one line:
  //   starting_        start() is on some thread's stack: it spans New and Running, and a
  //                    stop() from another thread waits for it to return either way.
  //   stop_requested_  a request that join() acts on (SHUTDOWN, RAFT.LEAVE, stop() from a
  //                    handler or callback, the apply loop failing, a stop() while start()
  //                    runs); it may come in any state.
  //   failed_          the storage failed (health, not lifecycle): a failed node keeps
  //                    running, answers MISCONF, and still goes through every step above.
  //   fatal_           the apply thread's own: it cannot apply further; it halts the node
  //                    and requests the stop (apply thread only, no lock).
  enum class Lifecycle { New, Running, Leaving, Stopping, Halted, Stopped };
  std::atomic<Lifecycle> life_{Lifecycle::New};
  bool stopping_or_later() const { return life_.load() >= Lifecycle::Stopping; }
  bool halted_or_later() const { return life_.load() >= Lifecycle::Halted; }
  bool starting_ = false;  // under life_mu_: start() is running
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

  // writes this node forwarded (see "Forwarded writes" at the top of 5b_peer_wire.hpp)
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
  CheckedSnapshot checked_snapshot_;

  // snapshots
  std::mutex snap_mu_;
  std::condition_variable snap_cv_;
  std::optional<std::pair<Store, SnapshotMeta>> snap_job_;
  std::uint64_t snap_request_ = 0;
  bool snap_busy_ = false;
  bool snap_again_ = false;  // asked for while one was being written

  // peers
  Links links_{*this};

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
  BlockedClients blocked_;  // clients waiting in a blocking pop (5e1, 5n1)

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
  // CONFIG SET's values of Redis's encoding tunables, by name (see encoding_tunable): accepted
  // and shown, changing nothing. tunables_mu_ is a leaf.
  mutable std::mutex tunables_mu_;
  std::map<std::string, std::int64_t, std::less<>> tunables_;

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
  std::atomic<std::uint64_t> volatile_keys_{0};       // keys with a TTL, for INFO
  ServerStats stats_;                                  // INFO's counts (see ServerStats)
  std::chrono::steady_clock::time_point last_checkpoint_{};  // under snap_mu_

  std::thread poll_thread_, peer_thread_, ticker_thread_, apply_thread_, snapshot_thread_, joiner_thread_;
};

}  // namespace detail
}  // namespace raft
// ---- src/raft/5g_startup.hpp ----

namespace raft {
namespace detail {

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
  so.fsync_hook = hooks_.fsync;
  so.warn = [this](const std::string& line) { log(LogLevel::Warning, line); };
  OpenedStorage o;
  if (Storage::exists(cfg_.data_dir))
    reopen_storage(so, o);
  else
    create_storage(so, o);
  if (o.load) load_first_snapshot(o.loaded, o.snapshot, o.st);
  o.st.initial_config = identity_.initial_config;
  if (o.snapshot) {
    restore_recovered_snapshot(*o.snapshot);
    o.st.snapshot = o.snapshot;
  }
  make_core(std::move(o.st), o.told_to_wait);
}

// An existing data directory: recovers it; -l loads only into a founder's unused directory.
inline void Runtime::reopen_storage(const StorageOptions& so, OpenedStorage& o) {
  Recovered rec;
  storage_ = std::make_unique<Storage>(Storage::open(so, rec));
  identity_ = rec.identity;
  if (identity_.node_id != cfg_.id)
    throw std::runtime_error("data directory " + cfg_.data_dir + " belongs to node '" + identity_.node_id +
                             "', not '" + cfg_.id + "': pass that id with -i, or another directory with -d");
  for (const auto& note : rec.notes) log(LogLevel::Warning, "recovery: " + note);
#ifdef RAFT_MUTANT_LOAD_ONLY_INTO_NEW_DIRECTORY
  o.load = false;  // mutant: -l is ignored once the directory exists, even if nothing was loaded
#else
  o.load = !cfg_.load_snapshot.empty() && unused_founder_directory(rec);
#endif
  if (o.load) read_snapshot_to_load(o.loaded);
  o.st.hard_state = rec.hard_state;
  o.st.entries = std::move(rec.entries);
  if (rec.snapshot) o.snapshot = std::make_shared<Snapshot>(std::move(*rec.snapshot));
  log(LogLevel::Info, "restarting from " + cfg_.data_dir + ": term " + std::to_string(rec.hard_state.term) + ", " +
                          std::to_string(o.st.entries.size()) + " log entries after " +
                          (o.snapshot ? "a snapshot at index " + std::to_string(o.snapshot->meta.index) : "no snapshot"));
  if (o.load)
    log(LogLevel::Info, "the last start stopped between creating " + cfg_.data_dir +
                            " and saving the snapshot given with -l; loading it now");
  else if (!cfg_.join.empty() || !cfg_.peers.empty() || !cfg_.load_snapshot.empty())
    log(LogLevel::Info, "using the configuration persisted in " + cfg_.data_dir +
                            "; the peer map and -l are ignored, and -e serves only to ask again to join until "
                            "a committed configuration names this node");
}

// A new data directory: its identity (the static peer map's, a founder's, one contacted while
// listening before founding, or a joiner's without a cluster id).
inline void Runtime::create_storage(const StorageOptions& so, OpenedStorage& o) {
  // The snapshot to found the cluster with is read before the data directory exists: a
  // file that cannot be loaded must not leave a directory behind that a retry would reuse.
  if (!cfg_.load_snapshot.empty()) read_snapshot_to_load(o.loaded);
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
      o.load = !cfg_.load_snapshot.empty();
    }
  }
  storage_ = std::make_unique<Storage>(Storage::create(so, id));
  identity_ = id;
  if (contact) {
    o.told_to_wait = true;
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

// The snapshot the storage recovered becomes the store (checked against its file name).
inline void Runtime::restore_recovered_snapshot(Snapshot& snapshot) {
  std::string error;
  SnapshotMeta meta;
  Store restored;
  if (!Store::read_snapshot(snapshot.data, restored, meta, error))
    throw std::runtime_error("snapshot in " + cfg_.data_dir + " is unreadable: " + error);
  std::uint64_t index = snapshot.meta.index, term = snapshot.meta.term;
  snapshot.meta = meta;
  if (meta.index != index || meta.term != term)
    throw std::runtime_error("snapshot in " + cfg_.data_dir + " says index " + std::to_string(meta.index) +
                             " but its file name says " + std::to_string(index));
  store_ = std::move(restored);
  keys_ = store_.size();
  volatile_keys_ = store_.volatile_keys();
  used_memory_ = store_.used_memory();
  applied_ = meta.index;
  applied_timestamp_ = meta.timestamp_ms;
}

inline void Runtime::make_core(CoreState st, bool told_to_wait) {
  CoreOptions options = core_options();
  // The store parsed to check a snapshot is the one restored: parsed once, on the writer
  // thread once it read the received file back (load_received_snapshot).
  options.check_snapshot = [this](const Snapshot& received) {
    Store parsed;
    std::string problem = check_received_snapshot(received, parsed);
    if (problem.empty()) checked_snapshot_.keep(EntryId{received.meta.index, received.meta.term}, std::move(parsed));
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
// While a founder listens: accepts peer connections into `held` (within the handshake
// budget, as accept_peers does).
inline void Runtime::accept_while_founding(std::vector<std::unique_ptr<PeerConn>>& held) {
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
}

// Reads a held connection's handshake as far as it has come, and writes our part of it.
// False: close it.
inline bool Runtime::handshake_while_founding(PeerConn& p) {
  char buf[16384];  // a whole TLS record: none is left inside OpenSSL unseen by poll()
  bool ok = true;
  for (;;) {
    ssize_t n = p.tls.recv(p.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    ok = n > 0 && take_peer_bytes(p, buf, static_cast<std::size_t>(n), true);
    if (!ok || p.session.is_open() || p.close_after_flush) break;
  }
  if (ok && !p.wire.empty()) ok = flush_out(p.fd, p.tls, p.wire);
  return ok;
}

inline std::optional<Runtime::FoundingContact> Runtime::listen_before_founding() {
  const int period = founding_listen_ms();
  log(LogLevel::Info, "no data directory in " + cfg_.data_dir + ": listening " + std::to_string(period) +
                          " ms on port " + std::to_string(host_.port + 1) + " for a cluster that counts " +
                          cfg_.address + " as a member before founding a new one");
  std::vector<std::unique_ptr<PeerConn>> held;
  std::optional<FoundingContact> contact;
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
    accept_while_founding(held);
    for (auto& h : held) {
      PeerConn& p = *h;
      if (p.fd < 0 || p.session.is_open() || p.close_after_flush) continue;
      if (!handshake_while_founding(p)) {
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
  if (life_.load() != Lifecycle::New) throw std::runtime_error("raft::Node::start called twice");
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
  complete_config();
  open_listeners();
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
  life_ = Lifecycle::Running;
  for (const auto& [nid, addr] : cfg_.peers) links_.set_address(nid, addr);
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
  start_threads();
}

// Validates the configuration and fills in what it leaves to the node: the id, the directory.
inline void Runtime::complete_config() {
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
}

// The TLS contexts (if configured) and the two listening sockets: clients' port and port + 1.
inline void Runtime::open_listeners() {
  std::string error;
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
}

// The threads, then the first tick.
inline void Runtime::start_threads() {
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

// -l FILE: a snapshot file as a data directory holds it (with its header line), the bare
// repr text, or pyraft's .dat layout.
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
  life_cv_.wait(lock, [&] { return stop_requested_ || life_.load() == Lifecycle::Stopped; });
  bool must_stop = life_.load() != Lifecycle::Stopped;
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
  Lifecycle was = Lifecycle::Running;
  if (!life_.compare_exchange_strong(was, Lifecycle::Leaving)) {
    if (was != Lifecycle::New) {  // another stop() is under way or done
      std::unique_lock<std::mutex> lock(life_mu_);
      life_cv_.wait(lock, [&] { return life_.load() == Lifecycle::Stopped; });
    }
    return;
  }
  leave();  // while every thread still runs: the successor's term must reach us
  life_ = Lifecycle::Stopping;
  join_threads();
  links_.stop_all();
  answer_what_is_left();
  close_connections();
  {
    std::lock_guard<std::mutex> lock(life_mu_);
    life_ = Lifecycle::Stopped;
    life_cv_.notify_all();
  }
}

// Stopping: wakes every thread of this runtime, joins them, and halts the core's driving.
inline void Runtime::join_threads() {
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
    life_ = Lifecycle::Halted;
  }
  if (writer_) writer_->stop();  // its last callbacks see Halted and send nothing
}

// Everything still waiting gets an answer.
inline void Runtime::answer_what_is_left() {
  std::map<std::uint64_t, Request> left;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    left.swap(requests_);
    write_by_index_.clear();
  }
  for (auto& [rid, r] : left)
    if (r.caller.promise) r.caller.promise->set_value(Reply::error("TIMEOUT the node stopped before the command completed; its outcome is unknown"));
}

inline void Runtime::close_connections() {
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
}

}  // namespace detail
}  // namespace raft
// ---- src/raft/5h_driver.hpp ----

namespace raft {
namespace detail {

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
  if (failed_ || halted_or_later()) return;
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
  if (halted_or_later()) return;
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
                                  if (halted_or_later()) return;
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

// ---- the ticker ----------------------------------------------------------------------------

inline void Runtime::ticker_loop() {
  const auto period = std::chrono::microseconds(static_cast<long long>(cfg_.tick_ms * 1000 * cfg_.time_scale));
  auto next = std::chrono::steady_clock::now() + period;
  int ticks = 0;
  while (!stopping_or_later()) {
    {
      std::unique_lock<std::mutex> lock(life_mu_);
      life_cv_.wait_until(lock, next, [&] { return stopping_or_later(); });
    }
    if (stopping_or_later()) break;
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
    if (++ticks % std::max(1, 100 / cfg_.tick_ms) == 0) {
      wake_poll();  // forwarded writes time out there
      stats_.sample(now);
    }
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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5i_links.hpp ----

namespace raft {
namespace detail {

// ---- links to peers: sending, the connector's handshake, TLS -------------------------------

inline void Runtime::send_peer(const Message& m) {
  PeerLink* link = link_for(m.to);
  if (!link) return;
  std::string bytes;
  encode_raft(m, bytes);
  link->send(std::move(bytes), PeerLink::is_urgent(m.type));
}

inline PeerLink* Runtime::link_for(const NodeId& id) {
  if (halted_or_later() || id == cfg_.id) return nullptr;
  return links_.find_or_open(id);
}

// Called with core_mu_ held when the configuration changed.
inline void Runtime::update_links() {
  linked_config_ = core_->config();
  for (const auto& m : linked_config_.members)
    if (m.id != cfg_.id && !m.address.empty()) links_.set_address(m.id, m.address);
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

// Off mu_: connects to the peer's port (address + 1), runs TLS and the handshake, and reads
// the listener's answer. The connected descriptor, or -1 with `error` (starting with
// "refused" when the peer refused us).
inline int PeerLink::connect_to_peer(const std::string& addr, Tls& tls, PeerSession& next_session,
                                     std::string& error) {
  HostPort hp;
  if (!parse_host_port(addr, hp, error)) return -1;
  int fd = connect_tcp(rt_.host(), hp.host, hp.port + 1, rt_.send_timeout(), error, rt_.stop_fd());
  if (fd < 0) return -1;
  set_send_timeout(fd, rt_.send_timeout());
  bool refused = false;
  resp::ReplyParser parser;
  resp::Value reply;
  if (!rt_.secure_to_peer(fd, hp.host, tls, error)) {
    ::close(fd);
    return -1;
  }
  if (!rt_.handshake_as_connector(fd, tls, id_, next_session, error, refused)) {
    if (refused) error = "refused: " + error;
    ::close(fd);
    return -1;
  }
  if (!recv_sealed_value(fd, next_session, parser, reply, rt_.send_timeout(), rt_.stop_fd(), error, &tls)) {
    error = "after the handshake: " + error;
    ::close(fd);
    return -1;
  }
  if (reply.is_error()) {
    error = "refused: " + reply.str;
    ::close(fd);
    return -1;
  }
  return fd;
}

// Under mu_: what the next send carries. Urgent messages (small) all of them, first; then
// queued messages and forwards not yet handed to this connection, up to kSendBytes more.
inline std::string PeerLink::take_batch() {
  std::string batch;
  while (!urgent_.empty()) {
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
  return batch;
}

// Under mu_ (`lock`, released while connecting): closes the connection in use, if any, and
// opens a new one. False if none could be opened (after waiting out the backoff) or the link
// is stopping.
inline bool PeerLink::reconnect(std::unique_lock<std::mutex>& lock, PeerSession& session, PeerSession& next_session,
                                int& backoff_ms, bool& logged_failure) {
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
  Tls tls;
  const int fd = connect_to_peer(addr, tls, next_session, error);
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
    return false;
  }
  if (stopping_) {
    ::close(fd);
    return false;
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
  return true;
}

inline void PeerLink::run() {
  int backoff_ms = 20;
  bool logged_failure = false;
  PeerSession session, next_session;  // this thread's: the connection's, one being opened
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if ((fd_ < 0 || reconnect_) && !reconnect(lock, session, next_session, backoff_ms, logged_failure)) continue;
    cv_.wait(lock, [&] {
      return stopping_ || reconnect_ ||
             (fault_ != Fault::Stall && (!urgent_.empty() || !queue_.empty() || !unsent_.empty()));
    });
    if (stopping_ || reconnect_) continue;
    std::string batch = take_batch();
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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5j_applier.hpp ----

namespace raft {
namespace detail {

// ---- the apply loop ------------------------------------------------------------------------

inline void Runtime::apply_loop() {
  apply_thread_id_ = std::this_thread::get_id();
  std::deque<ApplyItem> items;
  auto next_expiry = std::chrono::steady_clock::now();
  while (true) {
    {
      std::unique_lock<std::mutex> lock(apply_mu_);
      apply_cv_.wait_until(lock, next_expiry, [&] { return stopping_or_later() || !apply_q_.empty(); });
      if (stopping_or_later()) return;
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
    if (blocked_.any()) wake_poll();  // the data may hold what a blocked client waits for
    if (fatal_) {
      halt("the apply loop stopped (see above)");
      request_stop();
      return;
    }
  }
}

// One item of the apply queue, on the apply thread: each kind has its own function.
inline void Runtime::apply_item(ApplyItem& item) {
  switch (item.kind) {
    case ApplyItem::Restore: restore_snapshot(*item.snapshot); break;
    case ApplyItem::Entry:
      if (item.entry.index > applied_) apply_entry(item.entry);
      break;
    case ApplyItem::Read: apply_read_state(item.read); break;
    case ApplyItem::Aborted: answer_aborted_write(item.id); break;
    case ApplyItem::RoleChanged: run_role_callbacks(item.role); break;
    case ApplyItem::LeaderReady: run_leader_callback(item.term); break;
    case ApplyItem::SnapshotWanted:
    case ApplyItem::Checkpoint: take_snapshot(item.request); break;
  }
}

// Replaces the store with a snapshot's (installed by the core: the leader sent it). The
// writer thread may have parsed it already, when it checked it (checked_snapshot_).
inline void Runtime::restore_snapshot(const Snapshot& snapshot) {
  Store fresh;
  SnapshotMeta meta = snapshot.meta;  // checked to be what the text says
  std::string error;
  std::optional<Store> checked = checked_snapshot_.take(EntryId{meta.index, meta.term});
  const bool parsed = checked.has_value();
  if (parsed) fresh = std::move(*checked);
  if (!parsed && !Store::read_snapshot(snapshot.data, fresh, meta, error)) {
    log(LogLevel::Error, "snapshot from the leader at index " + std::to_string(snapshot.meta.index) +
                             " is unreadable (" + error + "): stopping the apply loop");
    fatal_ = true;
    return;
  }
  {
    std::lock_guard<std::mutex> lock(data_mu_);
    store_ = std::move(fresh);
    keys_ = store_.size();
    volatile_keys_ = store_.volatile_keys();
    used_memory_ = store_.used_memory();
  }
  // The stamp first: a read served on the poll thread that sees the new index must
  // not judge expiry by an older time.
  applied_timestamp_ = std::max(applied_timestamp_.load(), meta.timestamp_ms);
  applied_ = snapshot.meta.index;
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
}

// A linearizable read's index, confirmed by the core (or not): served once applied reaches it.
inline void Runtime::apply_read_state(const ReadState& rs) {
  if (!rs.ok) {
    finish_request(rs.request_id,
                   Reply::error("TRYAGAIN could not confirm leadership for a linearizable read: no leader "
                                "reachable or no majority (READONLY allows stale local reads)"));
    return;
  }
  reads_by_index_.emplace(rs.index, rs);
  serve_reads();
}

// The core gave up on a proposal (this node stopped leading before it committed).
inline void Runtime::answer_aborted_write(EntryId id) {
  std::uint64_t rid = 0;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    auto it = write_by_index_.find({id.index, id.term});
    if (it != write_by_index_.end()) {
      rid = it->second;
      write_by_index_.erase(it);
    }
  }
  if (rid)
    finish_request(rid, Reply::error("TIMEOUT the write was not committed in time (leader change or no "
                                     "majority); it may still be applied later"),
                   ForwardStatus::Unknown);
}

inline void Runtime::run_role_callbacks(const RoleChange& change) {
  if (change.role == Role::Follower && on_follower_) on_follower_(node_);
  if ((change.role == Role::Candidate || change.role == Role::PreCandidate) && on_candidate_) on_candidate_(node_);
}

inline void Runtime::run_leader_callback(std::uint64_t term) {
  log(LogLevel::Info, "leading term " + std::to_string(term) + " (first entry committed)");
  if (on_leader_) on_leader_(node_, term);
}

inline void Runtime::apply_entry(const LogEntry& e) {
  Reply reply;
  ForwardStatus status = ForwardStatus::Done;  // for a forwarded write: what its reply means to the follower
  if (e.type == EntryType::Command && !apply_command(e, reply, status)) return;  // fatal_: stops here
  applied_timestamp_ = std::max(applied_timestamp_.load(), e.timestamp_ms);
  applied_ = e.index;
  answer_writes_at(e, reply, status);
  if (!reads_by_index_.empty() && reads_by_index_.begin()->first <= e.index) serve_reads();
}

// A command entry's words; for a forwarded write (__fwd node server_id nonce seq lowest
// word...) also its session, and the words without the wrapping. False, with fatal_ set, if
// this node cannot apply the entry.
inline bool Runtime::decode_command_entry(const LogEntry& e, EntryCommand& out) {
  // Without limits: the entry was checked against the command limits before it was
  // appended (by whichever node and version), and a committed entry must always apply.
  resp::Limits unlimited;
  unlimited.max_bulk_length = unlimited.max_multibulk_length = unlimited.max_inline_length =
      std::numeric_limits<std::size_t>::max();
  resp::RequestParser parser(unlimited);
  parser.feed(e.payload);
  std::vector<std::string>& words = out.words;
  if (parser.next(words) != resp::Status::Ok || words.empty()) {
    log(LogLevel::Error, "log entry " + std::to_string(e.index) + " is not a command: stopping the apply loop");
    fatal_ = true;
    return false;
  }
  out.forwarded = words[0] == kForwardedCommand;
  if (out.forwarded) {
    if (words.size() < 7 || !parse_number(words[3], out.session.nonce) || !parse_number(words[4], out.seq) ||
        !parse_number(words[5], out.lowest)) {
      log(LogLevel::Error, "log entry " + std::to_string(e.index) + " is a malformed forwarded write: stopping the "
                           "apply loop");
      fatal_ = true;
      return false;
    }
    out.session.node = std::move(words[1]);
    out.session.server_id = std::move(words[2]);
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
    return false;
  }
  out.command = &h->second;
  return true;
}

// Runs a command entry on the store. False if the apply loop must stop (fatal_ is set).
inline bool Runtime::apply_command(const LogEntry& e, Reply& reply, ForwardStatus& status) {
  EntryCommand c;
  if (!decode_command_entry(e, c)) return false;
  std::lock_guard<std::mutex> lock(data_mu_);
  store_.sessions().observe(e.timestamp_ms);  // session time follows every command entry
  store_.set_write_index(e.index);             // WATCH's stamps (5k2_transactions.hpp)
  if (!(c.forwarded ? run_forwarded_write(e, c, reply, status) : run_write(e, *c.command, c.words, reply)))
    return false;
  keys_ = store_.size();
  volatile_keys_ = store_.volatile_keys();
  store_.settle_memory();
  used_memory_ = store_.used_memory();
  return true;
}

// A forwarded write (data_mu_ held): runs unless the replicated session table has seen it.
// False if the apply loop must stop.
inline bool Runtime::run_forwarded_write(const LogEntry& e, const EntryCommand& c, Reply& reply,
                                         ForwardStatus& status) {
  std::string kept;
  switch (store_.sessions().begin(c.session, c.seq, c.lowest, e.timestamp_ms, kept)) {
    case SessionTable::Verdict::Apply: {
      if (!run_write(e, *c.command, c.words, reply)) return false;
      std::string encoded;
      resp::write(encoded, reply, resp::kProtocolKept);
      store_.sessions().record(c.session, c.seq, std::move(encoded));
      break;
    }
    case SessionTable::Verdict::Duplicate:
#ifdef RAFT_MUTANT_FORWARD_APPLIED_TWICE
      // mutant: a copy of a forwarded write runs again
      if (!run_write(e, *c.command, c.words, reply)) return false;
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
  return true;
}

// The write proposed at this index in this term gets the handler's reply; one proposed
// here in another term lost its place to another leader's entry.
inline void Runtime::answer_writes_at(const LogEntry& e, const Reply& reply, ForwardStatus status) {
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
      snap_cv_.wait(lock, [&] { return stopping_or_later() || snap_job_.has_value(); });
      if (stopping_or_later()) return;
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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5k2_transactions.hpp ----

namespace raft {
namespace detail {

// ---- transactions: MULTI / EXEC / DISCARD / WATCH / UNWATCH --------------------------------
//
// MULTI queues commands on the connection (ClientConn::queued), each checked as Redis checks
// it when it is queued (unknown, arity, ACL): a refused one makes EXEC answer EXECABORT. EXEC
// proposes ONE write, kTransactionCommand, whose words carry the watched keys and the queued
// commands; every node runs them in order when it applies that entry (run_transaction), under
// the data lock, at the entry's time, reads included: the transaction is atomic and
// linearizable, from any node (a follower forwards it like any write, with its session). A
// transaction of reads alone goes through the log too: the simplest linearizable choice.
//
// WATCH, decided at apply from replicated state only. The store stamps every key a write
// changes with the entry's index (Store::modified_index) and keeps the index of the last entry
// that deleted each deleted key (Store::deleted_index: the latest 10000 of them, then one index
// for the ones it forgot). WATCH records, per key, A = this node's applied
// index when it looked (under data_mu_) and whether the key was there. EXEC's entry, at index
// E > A, aborts (a null array) if for some key:
//   its stamp is above A (changed after A: expired-and-rewritten, deleted-and-recreated too),
//   or it is there now and was not, or was there and is not now (deleted, or expired by E's
//   time: Redis 7.0 aborts when a watched key expires before EXEC),
//   or it was absent, is absent, and was deleted after A (it came and went), as far as the
//   store remembers: past 10000 later deletions of other keys it aborts where Redis would not,
//   never the reverse.
// Why a WATCH on a follower is safe: under data_mu_ the store holds at least what applied_
// says (apply_command changes the store, then applied_ moves), so A never claims more than the
// state looked at. Every reply this connection gets afterwards comes from this node's state at
// an index >= A (applied_ only grows; linearizable reads wait for theirs), and WATCH waits for
// the connection's earlier commands (process_input, kind 'x'). So a change the client did not
// see has an index > A, and EXEC's entry finds it stamped. A change it did see (between A and
// its read) aborts too: a false abort, never a lost update.

// The kind process_input gives a command on this connection: inside MULTI everything is
// answered at once ('i': QUEUED or an error) but EXEC, a write ('w'); WATCH waits for every
// earlier command ('x').
inline char Runtime::transaction_kind(const ClientConn& c, const std::string& name, char kind) {
  if (c.in_multi) return name == "exec" ? 'w' : 'i';
  if (name == "watch") return 'x';
  if (name == "multi" || name == "exec" || name == "discard" || name == "unwatch") return 'i';
  return kind;
}

// MULTI, EXEC, DISCARD, WATCH, UNWATCH, and every command inside MULTI; false: none of these
// (handle_command goes on).
inline bool Runtime::transaction_command(ClientConn& c, const Caller& caller, const std::string& name_as_sent,
                                         std::vector<std::string>& w, Batch& batch) {
  const std::string& name = w[0];
  const bool ours = name == "multi" || name == "exec" || name == "discard" || name == "watch" || name == "unwatch";
  if (!c.in_multi && !ours) return false;
  if (c.in_multi && name == "quit") return false;  // as Redis: answered, not queued
  const std::string refusal = client_refusal(c, w);  // NOAUTH; a queued command's ACL
  if (!refusal.empty()) {
    if (c.in_multi && name != "exec" && name != "discard") c.multi_refused = true;
    finish(caller, Reply::error(refusal));
    return true;
  }
  const auto arity = [&](std::size_t lo, std::size_t hi) { return w.size() - 1 >= lo && w.size() - 1 <= hi; };
  Reply r;
  if (name == "multi") {
    if (!arity(0, 0)) {
      r = arity_error(name);
      if (c.in_multi) c.multi_refused = true;
    } else {
      r = c.in_multi ? Reply::error("ERR MULTI calls can not be nested") : Reply::ok();
      c.in_multi = true;
    }
  } else if (name == "exec" || name == "discard") {
    if (!arity(0, 0)) {
      r = arity_error(name);
      if (c.in_multi) c.multi_refused = true;
    } else if (!c.in_multi) {
      r = Reply::error(name == "exec" ? "ERR EXEC without MULTI" : "ERR DISCARD without MULTI");
    } else if (name == "exec") {
      std::optional<Reply> refused = exec_transaction(c, caller, batch);
      if (!refused) return true;  // proposed: answered when applied
      r = std::move(*refused);
    } else {
      c.in_multi = c.multi_refused = false;
      c.queued.clear();
      c.queued_bytes = 0;
      c.watched.clear();  // DISCARD unwatches, as Redis
      r = Reply::ok();
    }
  } else if (name == "watch" && !c.in_multi) {
    if (!arity(1, kMaxCommandWords)) {
      r = arity_error(name);
    } else {
      watch_keys(c, w);
      r = Reply::ok();
    }
  } else if (name == "unwatch" && !c.in_multi) {
    if (arity(0, 0)) c.watched.clear();
    r = arity(0, 0) ? Reply::ok() : arity_error(name);
  } else if (name == "watch") {  // inside MULTI: an error, the transaction goes on (Redis 7.0)
    if (!arity(1, kMaxCommandWords)) {
      r = arity_error(name);
      c.multi_refused = true;
    } else {
      r = Reply::error("ERR WATCH inside MULTI is not allowed");
    }
  } else {
    r = queue_in_transaction(c, name_as_sent, w);
  }
  finish(caller, std::move(r));
  return true;
}

// A command sent inside MULTI: QUEUED, or an error that makes EXEC answer EXECABORT.
inline Reply Runtime::queue_in_transaction(ClientConn& c, const std::string& name_as_sent,
                                           std::vector<std::string>& w) {
  const auto refuse = [&](Reply error) {
    c.multi_refused = true;
    return error;
  };
  const std::string& name = w[0];
  const auto h = handlers_.find(name);
  const int argc = static_cast<int>(w.size()) - 1;
  if (name == "ping" || name == "echo" || name == "unwatch") {
    // Answered at apply as the connection commands answer them (PING's RESP2 reply inside
    // MULTI; UNWATCH's OK: EXEC forgets the watched keys anyway).
    if (name == "ping" ? argc > 1 : name == "echo" ? argc != 1 : argc != 0) return refuse(arity_error(name));
  } else if (h == handlers_.end() || is_reserved_command(name)) {
    AclCommand known;
    if (!acl_command(w, known) || is_reserved_command(name)) return refuse(unknown_command_error(name_as_sent, w));
    // What this node answers itself (CLIENT, CONFIG, INFO, HELLO, SELECT, ...) cannot run in
    // the log's entry on every node.
    return refuse(Reply::error("ERR '" + name + "' is not supported inside MULTI by this server (only data "
                               "commands, PING, ECHO and UNWATCH are)"));
  } else if (argc < h->second.min_args || (h->second.max_args >= 0 && argc > h->second.max_args)) {
    return refuse(arity_error(name));
  }
  std::size_t bytes = 16;
  for (const auto& word : w) bytes += word.size() + 16;
  if (c.queued_bytes + bytes > command_limits().max_bytes)
    return refuse(Reply::error("ERR the transaction is larger than a write may be (max-command-bytes)"));
  c.queued_bytes += bytes;
  c.queued.push_back(std::move(w));
  return Reply::simple("QUEUED");
}

// EXEC: EXECABORT, or the transaction's entry joins the batch (nothing: answered at apply).
inline std::optional<Reply> Runtime::exec_transaction(ClientConn& c, const Caller& caller, Batch& batch) {
  std::vector<std::vector<std::string>> queued = std::move(c.queued);
  std::vector<WatchedKey> watched = std::move(c.watched);
  const bool refused = c.multi_refused;
  c.in_multi = c.multi_refused = false;
  c.queued.clear();
  c.queued_bytes = 0;
  c.watched.clear();
  if (refused) return Reply::error("EXECABORT Transaction discarded because of previous errors.");
  if (failed_) {
    std::lock_guard<std::mutex> lock(core_mu_);
    return Reply::error("MISCONF " + failure_ + ": this node no longer acknowledges writes or serves reads; "
                        "restart it");
  }
  std::vector<std::string> words{kTransactionCommand, std::to_string(watched.size())};
  for (auto& k : watched) {
    words.push_back(std::move(k.key));
    words.push_back(std::to_string(k.seen_at));
    words.push_back(k.existed ? "1" : "0");
  }
  bool grows = false;
  for (auto& command : queued) {
    const auto h = handlers_.find(command[0]);
    grows = grows || (h != handlers_.end() && h->second.may_grow());
    words.push_back(std::to_string(command.size()));
    for (auto& word : command) words.push_back(std::move(word));
  }
  // Refused at maxmemory only if one of its commands would be (Redis refuses those at queue time).
  static const Command growing{nullptr, "we"}, not_growing{nullptr, "wes"};
  Caller as_user = caller;
  as_user.user = c.user;  // the leader checks a forwarded transaction against this user's ACL
  start_write(as_user, words, grows ? growing : not_growing, batch);
  return std::nullopt;
}

// WATCH key...: what this node has applied, and whether each key is there (see above).
inline void Runtime::watch_keys(ClientConn& c, const std::vector<std::string>& words) {
  std::lock_guard<std::mutex> lock(data_mu_);
  const std::uint64_t seen_at = applied_.load();
  const std::int64_t now = applied_timestamp_.load();
  for (std::size_t i = 1; i < words.size(); ++i)
    c.watched.push_back(WatchedKey{words[i], seen_at, store_.find(words[i], now) != nullptr});
}

// The leader's ACL for a forwarded transaction: each queued command's, as if sent alone.
inline std::string Runtime::forwarded_transaction_refusal(const std::string& user_name,
                                                          const std::vector<std::string>& words) const {
  std::uint64_t watched = 0;
  if (words.size() < 2 || !parse_number(words[1], watched) || watched > (words.size() - 2) / 3)
    return "ERR a malformed transaction; it was not run";
  std::lock_guard<std::mutex> lock(acl_mu_);
  const AclUser* user = acl_.find(user_name);
  if (user == nullptr)
    return "NOPERM the user '" + user_name + "' does not exist on the leader (" + cfg_.id + "); give every node "
           "the same users";
  std::size_t i = 2 + 3 * static_cast<std::size_t>(watched);
  while (i < words.size()) {
    std::uint64_t n = 0;
    if (!parse_number(words[i], n) || n == 0 || n > words.size() - i - 1) return "ERR a malformed transaction; it was not run";
    const std::vector<std::string> command(words.begin() + static_cast<std::ptrdiff_t>(i + 1),
                                           words.begin() + static_cast<std::ptrdiff_t>(i + 1 + n));
    AclCommand c;
    const bool answered_alike = command[0] == "ping" || command[0] == "echo" || command[0] == "unwatch";
    if (!answered_alike && !acl_command(command, c))
      return "ERR the leader has no command '" + command[0] + "'; the transaction was not run";
    const std::string refusal = answered_alike ? "" : Acl::refusal(user, c);
    if (!refusal.empty()) return refusal;
    i += 1 + static_cast<std::size_t>(n);
  }
  return "";
}

// EXEC's entry, on every node (data_mu_ held, inside run_write): the watch check, then each
// command in order; an error in one is its reply and the others still run, as in Redis.
inline Reply Runtime::run_transaction(Call& call) {
  Store& store = call.data;
  // run_write records for this handler (not a built-in); each command below is made atomic on
  // its own instead, so that one failing undoes only itself.
  store.commit_undo();
  const std::vector<std::string>& w = call.words;
  std::uint64_t watched = 0;
  if (w.size() < 2 || !parse_number(w[1], watched) || watched > (w.size() - 2) / 3)
    return Reply::error("ERR a malformed transaction entry");
  std::size_t i = 2;
  bool changed = false;
  for (std::uint64_t k = 0; k < watched; ++k, i += 3) {
    std::uint64_t seen_at = 0;
    if (!parse_number(w[i + 1], seen_at)) return Reply::error("ERR a malformed transaction entry");
    const bool existed = w[i + 2] == "1";
    const bool exists = store.find(w[i], call.now_ms) != nullptr;
    changed = changed || store.modified_index(w[i]) > seen_at || exists != existed ||
              (!existed && store.deleted_index(w[i]) > seen_at);
  }
  if (changed) return Reply::null_array();
  std::vector<Reply> replies;
  while (i < w.size()) {
    std::uint64_t n = 0;
    if (!parse_number(w[i], n) || n == 0 || n > w.size() - i - 1) {
      replies.push_back(Reply::error("ERR a malformed transaction entry"));
      break;
    }
    const std::vector<std::string> words(w.begin() + static_cast<std::ptrdiff_t>(i + 1),
                                         w.begin() + static_cast<std::ptrdiff_t>(i + 1 + n));
    i += 1 + static_cast<std::size_t>(n);
    if (words[0] == "ping") {
      replies.push_back(words.size() == 2 ? Reply::bulk(words[1]) : Reply::simple("PONG"));
      continue;
    }
    if (words[0] == "echo") {
      replies.push_back(Reply::bulk(words[1]));
      continue;
    }
    if (words[0] == "unwatch") {
      replies.push_back(Reply::ok());
      continue;
    }
    const auto h = handlers_.find(words[0]);
    if (h == handlers_.end() || is_reserved_command(words[0])) {
      replies.push_back(Reply::error("ERR this node has no command '" + words[0] + "'"));
      continue;
    }
    Call sub{store, words, call.now_ms, call.node, call.index, call.term};
    if (is_builtin(h->second)) {  // every error before its first change; throws only std::bad_alloc
      replies.push_back(h->second.fn(sub));
      continue;
    }
    // A program's handler: atomic alone, as run_write makes it (std::bad_alloc and anything not
    // a std::exception stop the apply loop there).
    store.begin_undo();
    try {
      replies.push_back(h->second.fn(sub));
      store.commit_undo();
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& ex) {
      store.rollback_undo();
      replies.push_back(Reply::error(std::string("ERR handler failed: ") + ex.what()));
    }
  }
  return Reply::array(std::move(replies));
}

}  // namespace detail
}  // namespace raft
// ---- src/raft/5k_commands.hpp ----

namespace raft {
namespace detail {

// ---- requests and replies ------------------------------------------------------------------

inline std::uint64_t Runtime::add_request(Request r) {
  std::lock_guard<std::mutex> lock(req_mu_);
  std::uint64_t id = next_request_++;
  requests_.emplace(id, std::move(r));
  return id;
}

// How a command is answered, one path in three layers:
//   finish(caller, reply)   the one way to answer, from any thread: execute()'s promise; the
//                           follower that forwarded the write (FWDR on the link to it, with
//                           `status`); or a client connection, through done_ and the poll thread.
//   finish_request(id, ...) finish() for a command parked in requests_ (a write waiting to be
//                           applied, a read for its index, a forward for the leader): takes it
//                           out under req_mu_, so that exactly one answer goes out, then finish().
//   complete_op(conn, op)   the poll thread's end of finish() for a client: the reply fills its
//                           op's slot, and the replies next in the connection's order are written.
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
    caller = std::move(it->second.caller);
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
  const Lifecycle now = life_.load();
  if (now != Lifecycle::Running && now != Lifecycle::Leaving) {
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
  // INFO's counts for a client's command the node knows (see ServerStats): complete_op counts
  // it as run or, if `rejected`, refused before running.
  Op* op = conn && caller.op >= conn->first_op && caller.op - conn->first_op < conn->ops.size()
                ? &conn->ops[static_cast<std::size_t>(caller.op - conn->first_op)]
                : nullptr;
  const auto count = [&](bool rejected) {
    if (!op) return;
    op->stat = &stats_.command(words[0]);
    op->rejected = rejected;
    op->dispatched = std::chrono::steady_clock::now();
  };
  if (conn && transaction_command(*conn, caller, name_as_sent, words, batch)) return;  // 5k2: MULTI...EXEC
  if (conn) {
    caller.user = conn->user;
    const std::string refusal = client_refusal(*conn, words);
    if (!refusal.empty()) {
      if (handlers_.count(words[0]) > 0 || words[0] == "checkpoint") count(true);
      finish(caller, Reply::error(refusal));
      return;
    }
  }
  if (words[0] == "checkpoint") {
    count(false);
    start_checkpoint(caller, words);
    return;
  }
  bool handled = false;
  if (op) op->dispatched = std::chrono::steady_clock::now();
  Reply r = connection_command(conn, words, handled);
  if (handled) {
    if (op) op->stat = &stats_.command(words[0]);
    finish(caller, std::move(r));
    return;
  }
  auto it = handlers_.find(words[0]);
  if (it == handlers_.end() || is_reserved_command(words[0])) {
    finish(caller, unknown_command_error(name_as_sent, words));
    return;
  }
  const Command& cmd = it->second;
  int argc = static_cast<int>(words.size()) - 1;
  count(argc < cmd.min_args || (cmd.max_args >= 0 && argc > cmd.max_args) || failed_);
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
  if (conn && cmd.is_write()) start_blocking(*conn, caller, words);  // BLPOP & co. wait, if need be
  if (cmd.is_write())
    start_write(caller, words, cmd, batch);
  else
    start_read(conn, caller, words, cmd, batch);
}

// Redis's words: the name and arguments as C strings (up to a NUL byte), the name cut at 128
// bytes, arguments while the list is under 128 bytes (each cut to what is left), and line
// breaks as spaces.
inline Reply Runtime::unknown_command_error(const std::string& name_as_sent, const std::vector<std::string>& words) {
  const auto c_text = [](const std::string& s, std::size_t most) { return s.substr(0, std::min(s.find('\0'), most)); };
  std::string args;
  for (std::size_t i = 1; i < words.size() && args.size() < 128; ++i)
    args += "'" + c_text(words[i], 128 - args.size()) + "' ";
  std::string text = "ERR unknown command '" + c_text(name_as_sent, 128) + "', with args beginning with: " + args;
  std::replace(text.begin(), text.end(), '\r', ' ');
  std::replace(text.begin(), text.end(), '\n', ' ');
  return Reply::error(text);
}

// CHECKPOINT: a snapshot now, unless one is being written or was within checkpoint-interval.
inline void Runtime::start_checkpoint(const Caller& caller, const std::vector<std::string>& words) {
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
  r.caller = caller;
  push_apply(ApplyItem{ApplyItem::Checkpoint, nullptr, {}, {}, {}, {}, 0, add_request(std::move(r))});
}

// A write joins the batch proposed (or forwarded) at the end of this wake-up.
inline void Runtime::start_write(const Caller& caller, const std::vector<std::string>& words, const Command& cmd,
                                 Batch& batch) {
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
}

inline void Runtime::start_read(ClientConn* conn, const Caller& caller, std::vector<std::string>& words,
                                const Command& cmd, Batch& batch) {
  if (conn && conn->readonly) {
    finish(caller, run_read(cmd, words, now_ms()));  // READONLY: this node's data and clock as they are
    return;
  }
  Request r;
  r.caller = caller;
  r.words = words;
  r.read_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(scaled(cfg_.read_timeout_ms) * 2);
  batch.reads.push_back(add_request(std::move(r)));
}

// Proposes the writes and asks for the read indexes gathered since the last call, under one
// lock, so that one wake-up of the poll thread becomes one batch for the disk and the peers.
// The reply to a write the core did not take and this node does not forward.
inline Reply Runtime::proposal_refusal(const ProposeResult& res, bool forwarded_here) {
  if (res.error == ProposeResult::Error::Transferring)
    return Reply::error("TRYAGAIN leadership is being transferred; the write was not run");
  if (forwarded_here) return Reply::error("TRYAGAIN the node this write was forwarded to no longer leads; it was not run");
  return Reply::error("CLUSTERDOWN no leader is known (election in progress or no majority); the write was not run");
}

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
    if (stopping_or_later()) {
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
        r.caller = w.caller;
        r.entry = res.id;
        std::lock_guard<std::mutex> rl(req_mu_);
        std::uint64_t id = next_request_++;
        requests_.emplace(id, std::move(r));
        write_by_index_[{res.id.index, res.id.term}] = id;
      } else if (res.error == ProposeResult::Error::NotLeader && !res.leader.empty() && !forwarded_here) {
        leader = res.leader;
        term = core_->term();
        forwards.push_back(std::move(w));
      } else {
        refused.push_back({w.caller, proposal_refusal(res, forwarded_here), ForwardStatus::NotRun});
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


// ---- limits and refusals -------------------------------------------------------------------

// Why the leader refuses a forwarded write before proposing it; empty: it proposes it.
inline std::string Runtime::write_refusal(const std::vector<std::string>& words) const {
  auto h = handlers_.find(words[0]);
  const int argc = static_cast<int>(words.size()) - 1;
  if ((is_reserved_command(words[0]) && words[0] != kTransactionCommand) || h == handlers_.end() || !h->second.is_write() || argc < h->second.min_args ||
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


// ---- administration, CONFIG and the connection commands -----------------------------------

// Node's typed administration calls; RAFT.ADD, RAFT.PROMOTE, RAFT.REMOVE, RAFT.TRANSFER and
// pyraft's add_node / del_node are the string layer on top (admin).

inline AdminResult admin_error(AdminResult::Error error, std::string message) {
  AdminResult r;
  r.error = error;
  r.message = std::move(message);
  return r;
}

// Under core_mu_: why this node cannot change the membership now (not running, not the leader).
inline AdminResult Runtime::admin_refusal() const {
  // life_ first: core_ is made before the node runs, and kept until it is destroyed.
  const Lifecycle life = life_.load();
  if (life == Lifecycle::New || life >= Lifecycle::Stopping || !core_)
    return admin_error(AdminResult::Error::NotRunning, "ERR the node is not running; nothing was changed");
  if (core_->role() == Role::Leader) return {};
  const Member* m = core_->config().find(core_->leader());
  if (!m) return admin_error(AdminResult::Error::NotLeader, "CLUSTERDOWN no leader is known; nothing was changed");
  AdminResult r = admin_error(AdminResult::Error::NotLeader,
                              "MOVED " + m->id + " " + m->address + " membership changes are made on the leader");
  r.leader = m->id;
  r.leader_address = m->address;
  return r;
}

// Under core_mu_: the outcome of proposing a configuration change.
inline AdminResult Runtime::membership_result(const ProposeResult& proposed) {
  using E = AdminResult::Error;
  switch (proposed.error) {
    case ProposeResult::Error::None: {
      drive();
      AdminResult r;
      r.index = proposed.id.index;
      r.term = proposed.id.term;
      return r;
    }
    case ProposeResult::Error::NotReady:
    case ProposeResult::Error::ConfigPending:
      return admin_error(E::Busy, "TRYAGAIN another membership change is in progress; nothing was changed");
    case ProposeResult::Error::Transferring: return admin_error(E::Transferring, "TRYAGAIN leadership is being transferred");
    default: return admin_error(E::NotAllowed, "ERR that change is not allowed (one voter at a time; a voter must remain)");
  }
}

inline AdminResult Runtime::add_learner(const NodeId& id, const std::string& address) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult allowed = admin_refusal();
  if (!allowed) return allowed;
  HostPort hp;
  std::string error;
  if (!parse_host_port(address, hp, error)) return admin_error(AdminResult::Error::InvalidAddress, "ERR " + error);
  const Member* old = core_->config().find(id);
  return membership_result(core_->add_learner(Member{id, address, old ? old->server_id : "", false}, now_ms()));
}

inline AdminResult Runtime::promote(const NodeId& id) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult allowed = admin_refusal();
  return allowed ? membership_result(core_->promote(id, now_ms())) : allowed;
}

inline AdminResult Runtime::remove(const NodeId& id) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult allowed = admin_refusal();
  return allowed ? membership_result(core_->remove(id, now_ms())) : allowed;
}

inline AdminResult Runtime::transfer_leadership(const NodeId& to) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult r = admin_refusal();
  if (!r) return r;
  r.target = to.empty() ? core_->best_transfer_target() : to;
  if (r.target.empty())
    return admin_error(AdminResult::Error::NoTarget,
                       "ERR no other voter was heard from lately to hand leadership to; nothing was changed");
  if (!core_->transfer_leadership(r.target))
    return admin_error(AdminResult::Error::InvalidTarget, "ERR cannot transfer leadership to '" + r.target + "'");
  drive();
  return r;
}

inline Reply Runtime::admin(const std::vector<std::string>& w) {
  // w[0] is one of raft.add raft.promote raft.remove raft.transfer add_node del_node
  AdminResult r;
  if (w[0] == "raft.add" || w[0] == "add_node") r = add_learner(w[1], w[2]);
  else if (w[0] == "raft.promote") r = promote(w[1]);
  else if (w[0] == "raft.remove" || w[0] == "del_node") r = remove(w[1]);
  else r = transfer_leadership(w.size() > 1 ? w[1] : "");
  return r ? Reply::ok() : Reply::error(r.message);
}

// Every command handled here must have its ACL category in acl_command (an administration
// command there, or clients without +@admin may run it).
// CONFIG GET name..., and CONFIG SET of the limits (Redis's names where Redis has the limit;
// see LiveLimits). None: CONFIG SET of something else (connection_command goes on).
// Redis's encoding tunables: how Redis lays small hashes, lists, sets, sorted sets and streams
// out in memory. Tools and clients set them at connect; here the layout is one, so CONFIG SET
// checks and keeps the value (CONFIG GET shows it) and nothing else changes. An alias (Redis
// 7.0's old ziplist names) shares its name's value. Redis 7.0's defaults and bounds.
struct EncodingTunable {
  const char* name;
  const char* alias;
  std::int64_t default_value, min, max;
  bool memory;  // takes Redis's memory units
};
inline const std::vector<EncodingTunable>& encoding_tunables() {
  constexpr std::int64_t kLong = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kInt = std::numeric_limits<std::int32_t>::max();
  static const std::vector<EncodingTunable> t = {
      {"hash-max-listpack-entries", "hash-max-ziplist-entries", 512, 0, kLong, false},
      {"hash-max-listpack-value", "hash-max-ziplist-value", 64, 0, kLong, true},
      {"list-max-listpack-size", "list-max-ziplist-size", -2, std::numeric_limits<std::int32_t>::min(), kInt, false},
      {"list-compress-depth", nullptr, 0, 0, kInt, false},
      {"set-max-intset-entries", nullptr, 512, 0, kLong, false},
      {"zset-max-listpack-entries", "zset-max-ziplist-entries", 128, 0, kLong, false},
      {"zset-max-listpack-value", "zset-max-ziplist-value", 64, 0, kLong, true},
      {"stream-node-max-bytes", nullptr, 4096, 0, kLong, true},
      {"stream-node-max-entries", nullptr, 100, 0, kLong, false},
      {"hll-sparse-max-bytes", nullptr, 3000, 0, kLong, true},
  };
  return t;
}

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
      std::lock_guard<std::mutex> lock(tunables_mu_);
      for (const EncodingTunable& t : encoding_tunables()) {
        auto it = tunables_.find(t.name);
        const std::string v = std::to_string(it == tunables_.end() ? t.default_value : it->second);
        add(t.name, v);
        if (t.alias) add(t.alias, v);
      }
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
  for (const EncodingTunable& t : encoding_tunables()) {
    if (key != t.name && !(t.alias && key == t.alias)) continue;
    const std::string out_of_range =
        "argument must be between " + std::to_string(t.min) + " and " + std::to_string(t.max) + " inclusive";
    std::int64_t v = 0;
    if (t.memory) {
      // As Redis: a number too large for its memory parser is out of range.
      const bool digits = !w[3].empty() && w[3].find_first_not_of("0123456789") == std::string::npos;
      std::uint64_t bytes = 0;
      if (!parse_memory(w[3], bytes)) return failed(digits ? out_of_range : "argument must be a memory value");
      if (bytes > static_cast<std::uint64_t>(t.max)) return failed(out_of_range);
      v = static_cast<std::int64_t>(bytes);
    } else if (!parse_int64(w[3], v)) {
      return failed("argument couldn't be parsed into an integer");
    }
    if (v < t.min || v > t.max) return failed(out_of_range);
    std::lock_guard<std::mutex> lock(tunables_mu_);
    tunables_[t.name] = v;
    return Reply::ok();
  }
  return std::nullopt;
}

// The connection commands: the node answers them itself (never through the log), on the
// calling thread; a handler cannot replace them. A new one is a line in this table (and its
// ACL category in acl_command). `handled` is false for a name not here.
inline Reply Runtime::connection_command(ClientConn* conn, const std::vector<std::string>& w, bool& handled) {
  using Words = std::vector<std::string>;
  using Handler = Reply (*)(Runtime&, ClientConn*, const Words&);
  static const std::map<std::string, Handler, std::less<>> table = {
      {"ping",
       [](Runtime&, ClientConn*, const Words& w) {
         if (!args_in(w, 0, 1)) return arity_error(w[0]);
         return w.size() == 2 ? Reply::bulk(w[1]) : Reply::simple("PONG");
       }},
      {"echo", [](Runtime&, ClientConn*, const Words& w) { return args_in(w, 1, 1) ? Reply::bulk(w[1]) : arity_error(w[0]); }},
      {"quit",
       [](Runtime&, ClientConn* conn, const Words&) {
         if (conn) conn->close_after_flush = true;
         return Reply::ok();
       }},
      {"auth", [](Runtime& rt, ClientConn* conn, const Words& w) { return rt.auth_command(conn, w); }},
      {"acl", [](Runtime& rt, ClientConn* conn, const Words& w) { return rt.acl_reply(conn, w); }},
      {"select",
       [](Runtime&, ClientConn*, const Words& w) {
         if (!args_in(w, 1, 1)) return arity_error(w[0]);
         std::int64_t db = 0;  // Redis reads an int first, in its words (sic: "must between")
         if (!parse_int64(w[1], db)) return not_integer_error();
         if (db < std::numeric_limits<std::int32_t>::min() || db > std::numeric_limits<std::int32_t>::max())
           return Reply::error("ERR value is out of range, value must between -2147483648 and 2147483647");
         return db == 0 ? Reply::ok() : Reply::error("ERR DB index is out of range");
       }},
      {"readonly", [](Runtime&, ClientConn* conn, const Words& w) { return set_readonly(conn, w, true); }},
      {"readwrite", [](Runtime&, ClientConn* conn, const Words& w) { return set_readonly(conn, w, false); }},
      {"hello", [](Runtime& rt, ClientConn* conn, const Words& w) { return rt.hello_command(conn, w); }},
      {"client", [](Runtime&, ClientConn* conn, const Words& w) { return client_command(conn, w); }},
      {"command", [](Runtime& rt, ClientConn*, const Words& w) { return rt.command_command(w); }},
      {"config", [](Runtime& rt, ClientConn*, const Words& w) { return rt.config_reply(w); }},
      {"info",
       [](Runtime& rt, ClientConn*, const Words& w) {
         return Reply::verbatim("txt", info_sections(rt.info(), Words(w.begin() + 1, w.end())));
       }},
      {"role", [](Runtime& rt, ClientConn*, const Words&) { return rt.role_reply(); }},
      {"latency", [](Runtime&, ClientConn*, const Words& w) { return latency_command(w); }},
      {"shutdown", [](Runtime& rt, ClientConn*, const Words&) { return rt.stop_on_request(); }},
      {"raft.add", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 2, 2); }},
      {"add_node", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 2, 2); }},
      {"raft.promote", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 1, 1); }},
      {"raft.remove", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 1, 1); }},
      {"del_node", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 1, 1); }},
      {"raft.transfer", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 0, 1); }},
      {"raft.leave", [](Runtime& rt, ClientConn*, const Words&) { return rt.stop_on_request(); }},
  };
  auto it = table.find(w[0]);
  handled = it != table.end();
  return handled ? it->second(*this, conn, w) : Reply();
}

// LATENCY: this node keeps no latency monitor (Redis's is off by default too) and no
// per-command histograms, so every report is empty, as a Redis with nothing recorded answers.
inline Reply Runtime::latency_command(const std::vector<std::string>& w) {
  if (w.size() < 2) return arity_error(w[0]);
  const std::string sub = lower(w[1]);
  // Redis's arities: LATEST, DOCTOR and HELP take nothing, HISTORY an event.
  if (((sub == "latest" || sub == "doctor" || sub == "help") && w.size() != 2) || (sub == "history" && w.size() != 3))
    return arity_error("latency|" + sub);
  if (sub == "latest") return Reply::array({});
  if (sub == "history") return Reply::array({});
  if (sub == "histogram") return Reply::map({});
  if (sub == "reset") return Reply::integer(0);
  if (sub == "doctor")
    return Reply::verbatim("txt", "No latency events to analyse: this node (raft.hpp) keeps no latency monitor.\n");
  if (sub == "help") {
    std::vector<Reply> lines;
    for (const char* l :
         {"LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:", "LATEST",
          "    Return the latest latency samples for all events (none: no latency monitor here).", "HISTORY <event>",
          "    Return time-latency samples for the <event> class (none here).", "RESET [<event> ...]",
          "    Reset latency data of one or more <event> classes (nothing to reset here).", "DOCTOR",
          "    Return a human readable latency analysis report.", "HISTOGRAM [COMMAND ...]",
          "    Return cumulative distribution of latencies (none kept here).", "HELP", "    Print this help."})
      lines.push_back(Reply::simple(l));
    return Reply::array(std::move(lines));
  }
  return Reply::error("ERR unknown subcommand '" + w[1] + "'. Try LATENCY HELP.");
}

// Whether a command has at least lo and at most hi arguments after its name.
inline bool Runtime::args_in(const std::vector<std::string>& w, std::size_t lo, std::size_t hi) {
  return w.size() - 1 >= lo && w.size() - 1 <= hi;
}

inline Reply Runtime::admin_with_args(Runtime& rt, const std::vector<std::string>& w, std::size_t lo, std::size_t hi) {
  return args_in(w, lo, hi) ? rt.admin(w) : arity_error(w[0]);
}

// SHUTDOWN and RAFT.LEAVE: the stop happens on the thread that waits in join(), not here.
inline Reply Runtime::stop_on_request() {
  request_stop();
  return Reply::ok();
}

// READONLY / READWRITE: whether this connection's reads may be served from local data.
inline Reply Runtime::set_readonly(ClientConn* conn, const std::vector<std::string>& w, bool readonly) {
  if (!args_in(w, 0, 0)) return arity_error(w[0]);
  if (conn) conn->readonly = readonly;
  return Reply::ok();
}

inline Reply Runtime::auth_command(ClientConn* conn, const std::vector<std::string>& w) {
  if (w.size() < 2) return arity_error(w[0]);
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

inline Reply Runtime::hello_command(ClientConn* conn, const std::vector<std::string>& w) {
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

inline Reply Runtime::client_command(ClientConn* conn, const std::vector<std::string>& w) {
  if (w.size() < 2) return arity_error(w[0]);
  std::string sub = lower(w[1]);
  if ((sub == "setname" && w.size() != 3) || (sub == "getname" && w.size() != 2) || (sub == "id" && w.size() != 2))
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

// COMMAND [COUNT | DOCS]: the handlers' table as Redis describes commands.
inline Reply Runtime::command_command(const std::vector<std::string>& w) const {
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

inline Reply Runtime::config_reply(const std::vector<std::string>& w) {
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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5l_forward.hpp ----

namespace raft {
namespace detail {

// ---- forwarded writes: the follower's side (the protocol: top of 5b_peer_wire.hpp) ------

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
      r.caller = w.caller;
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

inline void Runtime::handle_forward(PeerConn& p, ForwardedWrite fw) {
  fw.words[0] = lower(std::move(fw.words[0]));
  Caller caller{0, 0, nullptr, p.node, fw.seq, fw.nonce, {}};
  if (failed_) {
    finish(caller, Reply::error("MISCONF the leader cannot acknowledge writes (storage failed); the write was not run"),
           ForwardStatus::NotRun);
    return;
  }
  std::string refusal = write_refusal(fw.words);
  if (refusal.empty() && !fw.user.empty() && fw.words[0] == kTransactionCommand) {
    refusal = forwarded_transaction_refusal(fw.user, fw.words);  // each queued command's
  } else if (refusal.empty() && !fw.user.empty()) {
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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5m_client_auth.hpp ----

namespace raft {
namespace detail {

// ---- clients' users: AUTH, ACL and the check before every command ---------------------------

// How the ACL sees a command; false for a command this node does not have (it gets the
// unknown-command error and runs nothing). The administration commands are listed here.
inline bool Runtime::acl_command(const std::vector<std::string>& w, AclCommand& c) const {
  static const std::set<std::string, std::less<>> administration = {
      "checkpoint", "shutdown", "raft.add", "raft.promote", "raft.remove", "raft.transfer", "raft.leave",
      "add_node", "del_node", "latency"};
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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5n1_blocking.hpp ----

namespace raft {
namespace detail {

// ---- blocking pops: the poll thread's side (see BlockedClients, 5e1) --------------------------
//
// When to try again: after entries are applied (the apply thread wakes the poll thread while
// anyone waits), the poll thread looks up each waited key in the store under data_mu_ and
// proposes tries for as many of its first waiters as the key has elements. It does not need to
// know which keys a write touched: the cost is one lookup per waited key per wake-up that saw
// new entries applied, paid only while someone waits. A try that finds nothing costs an entry.

// A client's blocking command, about to be proposed as its first try (handle_command): from
// now on the connection waits for it and reads no further command, as Redis's blocked client.
// Not for execute() (no connection), nor inside a transaction, where Redis runs the command
// once without blocking: EXEC proposes its commands without coming here (5k2).
inline void Runtime::start_blocking(ClientConn& c, const Caller& caller, const std::vector<std::string>& words) {
  const BlockingCommand* b = blocking_command(words[0]);
  if (b == nullptr) return;
  std::int64_t ms = 0;
  // A bad timeout: the try's handler replies Redis's error (and the order of errors stays its).
  if (!parse_block_timeout(words.back(), ms).empty()) return;
  BlockedClients::Waiter w;
  w.op = caller.op;
  w.words = words;
  w.kind = b->kind;
  if (b->single_key)
    w.keys.push_back(words[1]);
  else
    w.keys.assign(words.begin() + 1, words.end() - 1);
  // Beyond ten years is for ever (and keeps the clock's arithmetic in range).
  if (ms > 0 && ms < std::int64_t{10} * 365 * 24 * 3600 * 1000)
    w.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  w.user = caller.user;
  w.trying = true;
  blocked_.add(c.id, std::move(w));
}

// A reply for op `op` of connection `c` (complete_op): true if it is a blocked client's try
// that found nothing while the client still waits, which then waits on (the reply is not
// written). Otherwise the client stops waiting and the reply is written; nil at the timeout
// is Redis's null array (BLMOVE's too).
inline bool Runtime::keep_blocking(ClientConn& c, std::uint64_t op, Reply& reply) {
  BlockedClients::Waiter* w = blocked_.find(c.id);
  if (w == nullptr || w->op != op) return false;
  w->trying = false;
  const bool expired = w->deadline && std::chrono::steady_clock::now() >= *w->deadline;
  if (reply.is_null() && !expired && !c.kill && !c.input_closed && !c.close_after_flush && !stopping_or_later()) {
    blocked_.try_came_back();
    return true;
  }
  if (reply.is_null()) reply = Reply::null_array();
  blocked_.remove(c.id);
  c.partial_since.reset();  // a command sent behind it starts its clock when it runs
  return false;
}

// Once per turn of the poll loop: times out waiters, forgets the ones whose client left, and
// proposes tries where a waited key holds data.
inline void Runtime::serve_blocked() {
  if (!blocked_.any()) return;
  const auto now = std::chrono::steady_clock::now();
  for (std::uint64_t conn : blocked_.conns()) {
    BlockedClients::Waiter* w = blocked_.find(conn);
    if (w == nullptr || w->trying) continue;  // a try in flight is settled by its answer
    auto it = clients_.find(conn);
    if (it == clients_.end()) {
      blocked_.remove(conn);
    } else if (it->second->kill || it->second->input_closed || it->second->close_after_flush) {
      // Redis frees a blocked client that disconnects; nothing was popped for it.
      blocked_.remove(conn);
      it->second->kill = true;
    } else if (w->deadline && now >= *w->deadline) {
      const std::uint64_t op = w->op;
      blocked_.remove(conn);
      complete_op(conn, op, Reply::null_array());
    }
  }
  if (!blocked_.any() || !blocked_.worth_a_look(applied_.load())) return;
  // Which waiters to try: for each key, as many of its first waiters as it has elements (a
  // waiter already trying counts as one of them). A waiter of several keys is tried once.
  std::vector<std::uint64_t> to_try;
  {
    std::lock_guard<std::mutex> lock(data_mu_);
    const std::int64_t time = applied_timestamp_.load();
    for (const auto& [key, queue] : blocked_.by_key()) {
      const Store::Object* o = store_.find(key, time);
      if (o == nullptr) continue;
      std::size_t available = o->kind == Store::Kind::List ? o->list.size()
                              : o->kind == Store::Kind::SortedSet ? o->zset().size()
                                                                   : 0;
      for (std::uint64_t conn : queue) {
        if (available == 0) break;
        BlockedClients::Waiter* w = blocked_.find(conn);
        if (w == nullptr || w->kind != o->kind) continue;
        if (!w->trying) {
          w->trying = true;
          to_try.push_back(conn);
        }
        --available;
      }
    }
  }
  for (std::uint64_t conn : to_try) {
    const BlockedClients::Waiter* w = blocked_.find(conn);
    auto h = handlers_.find(w->words[0]);
    start_write(Caller{conn, w->op, nullptr, {}, 0, 0, w->user}, w->words, h->second, poll_batch_);
  }
}

// The poll loop's wait: its usual 100 ms, shorter when a waiter's timeout comes sooner, none
// when a try came back empty (the key may hold more: the next waiter tries at once).
inline int Runtime::poll_wait_ms() const {
  if (blocked_.look_due()) return 0;
  const auto next = blocked_.next_deadline();
  if (!next) return 100;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*next - std::chrono::steady_clock::now()).count();
  return static_cast<int>(std::clamp<std::int64_t>(left + 1, 0, 100));
}

}  // namespace detail
}  // namespace raft
// ---- src/raft/5n_client_server.hpp ----

namespace raft {
namespace detail {

// ---- status ---------------------------------------------------------------------------------

// Redis's way to write a byte count for people (INFO's *_human fields).
inline std::string bytes_for_people(std::uint64_t n) {
  const char* units[] = {"B", "K", "M", "G", "T", "P"};
  double v = static_cast<double>(n);
  std::size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof units / sizeof *units) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%lluB", static_cast<unsigned long long>(n));
  else
    std::snprintf(buf, sizeof buf, "%.2f%s", v, units[u]);
  return buf;
}

// This process's resident set (Linux's /proc/self/statm); nullopt where there is none.
inline std::optional<std::uint64_t> resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return std::nullopt;
  unsigned long long size = 0, resident = 0;
  const bool ok = std::fscanf(f, "%llu %llu", &size, &resident) == 2;
  std::fclose(f);
  if (!ok) return std::nullopt;
  return static_cast<std::uint64_t>(resident) * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// INFO: Redis 7.0's sections and field names, with the fields whose values exist here (the
// README lists the ones left out), plus "# Raft".
inline std::string Runtime::info() const {
  std::string s;
  auto line = [&](const std::string& k, const std::string& v) { s += k + ":" + v + "\r\n"; };
  auto num = [&](const std::string& k, std::uint64_t v) { line(k, std::to_string(v)); };
  const auto now = std::chrono::steady_clock::now();
  s += "# Server\r\n";
  line("redis_version", "7.0.0");  // the Redis whose commands and replies this node follows
  line("raft_hpp_version", RAFT_HPP_VERSION);
  line("redis_mode", "standalone");
  utsname un{};
  if (::uname(&un) == 0) line("os", std::string(un.sysname) + " " + un.release + " " + un.machine);
  num("arch_bits", sizeof(void*) * 8);
  line("multiplexing_api", "poll");
  line("process_id", std::to_string(::getpid()));
  num("tcp_port", host_.port);
  num("server_time_usec", static_cast<std::uint64_t>(wall_ms()) * 1000);
  const auto uptime = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(now - stats_.started).count());
  num("uptime_in_seconds", uptime);
  num("uptime_in_days", uptime / 86400);
  s += "\r\n# Clients\r\n";
  num("connected_clients", connected_clients_.load());
  num("blocked_clients", blocked_.count());
  num("maxclients", limits_.max_clients.load());
  num("total_client_output_bytes", client_output_total_reported_.load());
  s += "\r\n# Memory\r\n";
  // The store's bytes as maxmemory counts them (Store::used_memory), not the allocator's.
  num("used_memory", used_memory_.load());
  line("used_memory_human", bytes_for_people(used_memory_.load()));
  if (auto rss = resident_bytes()) {
    num("used_memory_rss", *rss);
    line("used_memory_rss_human", bytes_for_people(*rss));
  }
  num("maxmemory", limits_.maxmemory.load());
  line("maxmemory_human", bytes_for_people(limits_.maxmemory.load()));
  line("maxmemory_policy", "noeviction");
  std::lock_guard<std::mutex> lock(core_mu_);
  s += "\r\n# Persistence\r\n";
  num("loading", 0);
  // Every write is in the log, on disk before it is acknowledged: Redis's appendonly (with
  // appendfsync always); a snapshot is the log's compaction.
  num("aof_enabled", 1);
  line("aof_last_write_status", failed_ ? "err" : "ok");
  if (core_) num("rdb_changes_since_last_save", applied_.load() - std::min(applied_.load(), core_->snapshot_index()));
  s += "\r\n# Stats\r\n";
  num("total_connections_received", stats_.connections_received.load());
  num("total_commands_processed", stats_.commands_processed.load());
  num("instantaneous_ops_per_sec", stats_.ops_per_sec());
  num("rejected_connections", stats_.rejected_connections.load());
  num("total_error_replies", stats_.error_replies.load());
  if (core_) {
    s += "\r\n# Replication\r\n";
    const double seconds_per_tick = cfg_.tick_ms / 1000.0;
    if (core_->role() == Role::Leader) {
      // Redis's replicas are the followers heard from within the check-quorum period.
      std::string slaves;
      int n = 0;
      for (const auto& m : core_->config().members) {
        auto it = core_->progress().find(m.id);
        if (m.id == cfg_.id || it == core_->progress().end() || !it->second.recent_active) continue;
        HostPort hp;
        std::string error;
        parse_host_port(m.address, hp, error);
        const auto lag = static_cast<std::uint64_t>(static_cast<double>(core_->ticks() - it->second.last_heard) * seconds_per_tick);
        slaves += "slave" + std::to_string(n++) + ":ip=" + hp.host + ",port=" + std::to_string(hp.port) +
                  ",state=online,offset=" + std::to_string(it->second.match) + ",lag=" + std::to_string(lag) + "\r\n";
      }
      line("role", "master");
      num("connected_slaves", static_cast<std::uint64_t>(n));
      s += slaves;
      num("master_repl_offset", core_->last_index());
    } else {
      line("role", "slave");
      const Member* lm = core_->config().find(core_->leader());
      HostPort hp;
      std::string error;
      if (lm && parse_host_port(lm->address, hp, error)) {
        line("master_host", hp.host);
        num("master_port", hp.port);
      }
      // Up while it heard from a leader within an election timeout.
      const bool up = lm && core_->ticks_since_timer_reset() < core_->options().election_ticks;
      line("master_link_status", up ? "up" : "down");
      line("master_last_io_seconds_ago",
           up ? std::to_string(static_cast<std::uint64_t>(core_->ticks_since_timer_reset() * seconds_per_tick)) : "-1");
      num("slave_repl_offset", applied_.load());
      num("connected_slaves", 0);
      num("master_repl_offset", applied_.load());
    }
  }
  s += "\r\n# CPU\r\n";
  const auto cpu = [&](const std::string& k, const timeval& t) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%ld.%06ld", static_cast<long>(t.tv_sec), static_cast<long>(t.tv_usec));
    line(k, buf);
  };
  rusage self{}, children{};
  ::getrusage(RUSAGE_SELF, &self);
  ::getrusage(RUSAGE_CHILDREN, &children);
  cpu("used_cpu_sys", self.ru_stime);
  cpu("used_cpu_user", self.ru_utime);
  cpu("used_cpu_sys_children", children.ru_stime);
  cpu("used_cpu_user_children", children.ru_utime);
  s += "\r\n# Commandstats\r\n" + stats_.command_lines();
  s += "\r\n# Errorstats\r\n" + stats_.error_lines();
  s += "\r\n# Raft\r\n";
  line("raft_node_id", cfg_.id);
  line("raft_address", cfg_.address);
  line("raft_cluster_id", identity_.cluster_id);
  line("raft_server_id", identity_.server_id);
  if (core_) {
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
  }
  // Redis lists a database with keys; avg_ttl is not kept here.
  s += "\r\n# Keyspace\r\n";
  if (keys_.load() > 0) line("db0", "keys=" + std::to_string(keys_.load()) + ",expires=" + std::to_string(volatile_keys_.load()));
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

// The poll set: the wake pipe, the listener (unless accepting is paused), every client.
inline void Runtime::client_poll_set(std::vector<pollfd>& fds, std::vector<std::uint64_t>& owner) {
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
}

// Reads from and writes to the clients poll found ready; the ones to close (their connection
// failed).
inline std::vector<std::uint64_t> Runtime::serve_ready_clients(const std::vector<pollfd>& fds,
                                                               const std::vector<std::uint64_t>& owner) {
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
  return close_clients;
}

// Closes `failed` and the clients that are done: killed, or after QUIT or a protocol error
// once every reply before it is written.
inline void Runtime::close_clients_done(std::vector<std::uint64_t> failed) {
  for (auto& [id, c] : clients_)
    if (c->kill || ((c->close_after_flush || (c->input_closed && !c->has_pending)) && c->out.empty() && c->ops.empty()))
      failed.push_back(id);
  for (std::uint64_t id : failed) {
    auto it = clients_.find(id);
    if (it != clients_.end()) {
      drop_output(*it->second);
      ::close(it->second->fd);
      clients_.erase(it);
    }
  }
}

inline void Runtime::poll_loop() {
  poll_thread_id_ = std::this_thread::get_id();
  std::vector<pollfd> fds;
  std::vector<std::uint64_t> owner;  // client connection id, or 0
  auto last_expiry = std::chrono::steady_clock::now();
  while (!stopping_or_later()) {
    client_poll_set(fds, owner);
    int n = ::poll(fds.data(), fds.size(), poll_wait_ms());
    if (stopping_or_later()) break;
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
    std::vector<std::uint64_t> close_clients = serve_ready_clients(fds, owner);
    serve_blocked();
    flush_batched(poll_batch_);
    drain_done();
    close_clients_done(close_clients);
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
      ++stats_.rejected_connections;
      // (Over TLS, nothing can be said before a handshake: just closed.)
      static const char kFull[] = "-ERR max number of clients reached\r\n";
      if (!tls.on()) ::send(fd, kFull, sizeof kFull - 1, MSG_NOSIGNAL);
      ::close(fd);
      continue;
    }
    ++stats_.connections_received;  // as Redis counts: not the ones refused for maxclients
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
    if (c->kill || blocked_.find(id)) continue;  // a blocked client reads no command meanwhile
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
  while (!c.close_after_flush && !blocked_.find(c.id)) {  // blocked (BLPOP & co.): no further command
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
    kind = transaction_kind(c, lower(c.argv[0]), kind);  // 5k2: queued 'i', EXEC 'w', WATCH 'x'
    if (kind == 'x') {  // WATCH looks once every earlier command is answered
      if (c.unfinished_writes > 0 || c.unfinished_reads > 0) return;
      kind = 'i';
    }
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
      conn = it->second.caller.conn;
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
  if (o.kind == 'w' && keep_blocking(c, op, reply)) return;  // a blocking pop that waits on
  o.done = true;
  const std::size_t out_before = c.out.size();
  if (o.stat) stats_.answered(*o.stat, o.rejected, reply, std::chrono::steady_clock::now() - o.dispatched);
  if (reply.is_error()) stats_.error_reply(reply.str);
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

}  // namespace detail
}  // namespace raft
// ---- src/raft/5o_peer_server.hpp ----

namespace raft {
namespace detail {

// ---- inbound peer connections --------------------------------------------------------------

// The peer thread: accepts and reads every inbound peer connection and steps what they carry
// into the core, so that no client's command (a long KEYS, a large reply) delays a heartbeat
// or its answer. It owns peers_in_ and peer_batch_; it shares with the poll thread only what
// is under a lock (core_mu_, fwd_mu_, req_mu_, the Links' own, acl_mu_).
// The peer thread's poll set: its wake pipe, the peer listener (unless paused), every
// inbound peer connection.
inline void Runtime::peer_poll_set(std::vector<pollfd>& fds) {
  fds.clear();
  const bool accepting = std::chrono::steady_clock::now() >= peer_accept_paused_until_;
  fds.push_back(pollfd{peer_wake_pipe_[0], POLLIN, 0});
  fds.push_back(pollfd{peer_fd_, static_cast<short>(accepting ? POLLIN : 0), 0});
  for (auto& [fd, p] : peers_in_)
    fds.push_back(pollfd{fd, p->tls.events(static_cast<short>((p->close_after_flush ? 0 : POLLIN) | (p->wire.empty() ? 0 : POLLOUT))), 0});
}

// Reads from and writes to the peer connections poll found ready; the ones to close.
inline std::vector<int> Runtime::serve_ready_peers(const std::vector<pollfd>& fds) {
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
  return close_peers;
}

// A peer connection that has not said HELLO in time is dropped (descriptors are finite).
inline void Runtime::drop_silent_peers(std::chrono::steady_clock::time_point now) {
  for (auto it = peers_in_.begin(); it != peers_in_.end();) {
    if (!it->second->welcomed && now - it->second->accepted > std::chrono::milliseconds(scaled(cfg_.send_timeout_ms))) {
      ::close(it->first);
      it = peers_in_.erase(it);
    } else {
      ++it;
    }
  }
}

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
  while (!stopping_or_later()) {
    peer_poll_set(fds);
    int n = ::poll(fds.data(), fds.size(), 100);
    if (stopping_or_later()) break;
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
    const std::vector<int> close_peers = serve_ready_peers(fds);
    flush_batched(peer_batch_);  // the writes forwarded to this leader (FWD)
    for (int fd : close_peers) {
      ::close(fd);
      peers_in_.erase(fd);
    }
    auto now = std::chrono::steady_clock::now();
    if (now - last_expiry > std::chrono::milliseconds(100)) {
      last_expiry = now;
      drop_silent_peers(now);
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

// The whole messages read from `p`: RAFT messages are collected in `inbound` (stepped
// together, under one core_mu_), the others handled at once. False: close the connection.
inline bool Runtime::parse_peer_messages(PeerConn& p, std::vector<Message>& inbound) {
  while (p.welcomed) {
    resp::Status st = p.parser.next(p.argv);
    if (st == resp::Status::NeedMore) break;
    if (st == resp::Status::Error) {
      log(LogLevel::Warning, "peer connection from " + (p.node.empty() ? std::string("?") : p.node) +
                                 " sent malformed RESP (" + p.parser.error() + "): closing it");
      return false;
    }
    if (p.argv.empty()) continue;
    if (p.close_after_flush) break;  // refused: nothing more is read
    if (p.welcomed && !p.join_only && p.argv[0] == "RAFT") {
      Message m;
      std::string error;
      if (!decode_raft(p.argv, m, error)) {
        log(LogLevel::Warning, "peer " + p.node + ": " + error + ": closing the connection");
        return false;
      }
      m.from = p.node;
      m.to = cfg_.id;
      m.server_id = p.server_id;
      inbound.push_back(std::move(m));
      continue;
    }
    if (!handle_peer_message(p, p.argv)) return false;
  }
  return true;
}

// Steps a connection's Raft messages into the core and drives it. False: close the connection.
inline bool Runtime::step_peer_messages(const PeerConn& p, const std::vector<Message>& inbound) {
  std::lock_guard<std::mutex> lock(core_mu_);
  if (failed_) return true;
  bool ok = true;
  try {
    for (const auto& m : inbound) core_->step(m);
  } catch (const std::exception& e) {
    // decode_raft refuses what the core cannot take; this is a last resort.
    log(LogLevel::Error, "peer " + p.node + " sent a message the core refused (" + e.what() + "): closing");
    ok = false;
  }
  drive();
  return ok;
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
  if (ok) ok = parse_peer_messages(p, inbound);
  if (!inbound.empty() && !step_peer_messages(p, inbound)) ok = false;
  // What the handlers answered (WELCOME, a refusal, JOIN's answer) goes out sealed.
  if (p.session.is_open() && !p.out.empty()) {
    p.session.seal(p.out, p.wire);
    p.out.clear();
  }
  return ok && !eof;
}

// The first message on an authenticated connection: the peer's HELLO, checked against this
// node (its id, its cluster); answered +WELCOME or refused (and closed after the answer).
inline bool Runtime::welcome_peer(PeerConn& p, const std::vector<std::string>& w) {
  auto refuse = [&](const std::string& why) {
    resp::write_error(p.out, "ERR " + why);
    p.close_after_flush = true;
    log(LogLevel::Warning, "refused a peer connection: " + why);
    return true;
  };
  // The HELLO of the handshake (peer_handshake): the peer proved it holds our secret.
  if (w[0] != "HELLO" || w.size() != 8) return refuse("expected HELLO");
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
  links_.learn_address(p.node, p.address);
  p.welcomed = true;
  resp::write_simple(p.out, "WELCOME");
  return true;
}

inline bool Runtime::handle_peer_message(PeerConn& p, std::vector<std::string>& w) {
  const std::string& kind = w[0];
  if (!p.welcomed) return welcome_peer(p, w);
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
  std::optional<std::string> moved;
  std::size_t next = 0;
  while (!stopping_or_later()) {
    {
      // Until a committed configuration names us: an entry adding us that a new leader never
      // had is cut again, and then nobody would contact us.
      std::lock_guard<std::mutex> lock(core_mu_);
      if (committed_member()) break;
    }
    std::string target = moved && !moved->empty() ? *moved : targets[next++ % targets.size()];
    moved.reset();
    const std::string outcome = ask_to_join(target, moved);
    if (moved) {
      std::unique_lock<std::mutex> lock(life_mu_);  // no tight loop between two nodes
      life_cv_.wait_for(lock, std::chrono::milliseconds(scaled(50)), [&] { return stopping_or_later(); });
      continue;
    }
    log(LogLevel::Info, "asked " + target + " to join: " + outcome);
    std::unique_lock<std::mutex> lock(life_mu_);
    life_cv_.wait_for(lock, std::chrono::milliseconds(scaled(cfg_.join_retry_ms)), [&] { return stopping_or_later(); });
  }
}

// One JOIN: connects to `target`'s peer port, runs the handshake (whoever is there: `to` is
// empty), sends JOIN sealed after it. What happened, for the log; `moved` is set to the
// address a member redirected us to (-MOVED: ask that one next).
inline std::string Runtime::ask_to_join(const std::string& target, std::optional<std::string>& moved) {
  HostPort hp;
  std::string error;
  if (!parse_host_port(target, hp, error)) return error;
  int fd = connect_tcp(host_.host, hp.host, hp.port + 1, scaled(cfg_.send_timeout_ms), error, stop_fd());
  if (fd < 0) return error;
  set_send_timeout(fd, scaled(cfg_.send_timeout_ms));
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
  std::string outcome;
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
      outcome = "redirected to " + *moved;
    } else {
      outcome = reply.str;
    }
  } else {
    outcome = welcome.is_error() ? welcome.str : "no answer";
  }
  ::close(fd);
  return outcome;
}

}  // namespace detail
}  // namespace raft
// ---- src/raft/5p_node.hpp ----

namespace raft {

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
inline Node::Node(Config config, testing::Hooks hooks)
    : rt_(std::make_unique<detail::Runtime>(*this, std::move(config), std::move(hooks))) {}

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
inline Node& Node::handler(const std::string& name, Handler fn, CommandFlags flags, int min_args, int max_args) {
  const char* text = flags == CommandFlags::Read ? "r" : flags == CommandFlags::Write ? "we" : "wes";
  return handler(name, std::move(fn), text, min_args, max_args);
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
inline void Node::request_stop() { rt_->request_stop(); }
inline detail::Runtime& testing::runtime(Node& node) { return *node.rt_; }
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
inline AdminResult Node::add_learner(const NodeId& id, const std::string& address) { return rt_->add_learner(id, address); }
inline AdminResult Node::promote(const NodeId& id) { return rt_->promote(id); }
inline AdminResult Node::remove(const NodeId& id) { return rt_->remove(id); }
inline AdminResult Node::transfer_leadership(const NodeId& to) { return rt_->transfer_leadership(to); }

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

namespace detail {

// What parse_args keeps while it reads the options.
struct ArgsState {
  ParsedArgs& out;
  const char* secret_from = nullptr;  // the option that gave the peer secret
};

// One option of the default command line: its names, whether a value follows it, and what
// it does (an empty string: done; otherwise the error, and parsing stops). `option` is the
// name as given; `value` is empty for an option without one. A new option is a line here
// (and one in usage()).
struct CommandLineOption {
  std::vector<std::string> names;
  bool takes_value;
  std::string (*apply)(ArgsState& s, const std::string& option, const std::string& value);
};

// --secret-file PATH: the peer secret (and a second one, while secrets change) from a file.
inline std::string read_secret_file(ArgsState& s, const std::string& option, const std::string& path) {
  if (s.secret_from != nullptr) return "give the peer secret once (" + std::string(s.secret_from) + " and " + option + ")";
  s.secret_from = "--secret-file";
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return "cannot read the secret file " + path + ": " + std::strerror(errno);
  std::string text;
  char chunk[4096];
  for (std::size_t n; (n = std::fread(chunk, 1, sizeof chunk, f)) > 0;) text.append(chunk, n);
  struct stat st{};
  const bool open_to_others = ::fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0;
  std::fclose(f);
  if (open_to_others) s.out.warnings.push_back("the secret file " + path + " can be read by other users: chmod 600 " + path);
  Config& c = s.out.config;
  const std::string error = parse_secrets(text, c.secret, c.second_secret);
  return error.empty() ? error : "the secret file " + path + " " + error;
}

// The options that take a count (clients, seconds).
inline std::string set_count_option(ArgsState& s, const std::string& a, const std::string& v) {
  std::uint64_t n = 0;
  if (!parse_number(v, n) || n > (std::uint64_t{1} << 31)) return a + " needs a number, not '" + v + "'";
  Config& c = s.out.config;
  if (a == "--maxclients") c.max_clients = static_cast<std::size_t>(n);
  if (a == "--timeout") c.client_timeout_s = static_cast<int>(n);
  if (a == "--partial-command-timeout") c.partial_command_timeout_s = static_cast<int>(n);
  if (a == "--checkpoint-interval") c.checkpoint_interval_s = static_cast<int>(n);
  return "";
}

// The options that take a size in bytes, with Redis's units.
inline std::string set_size_option(ArgsState& s, const std::string& a, const std::string& v) {
  std::uint64_t n = 0;
  if (!parse_memory(v, n) || n > (std::uint64_t{1} << 62))
    return a + " needs a size in bytes (units as Redis's: 100mb, 1gb), not '" + v + "'";
  Config& c = s.out.config;
  if (a == "--maxmemory") c.maxmemory = n;
  if (a == "--client-query-buffer-limit") c.client_query_buffer_limit = static_cast<std::size_t>(n);
  if (a == "--proto-max-bulk-len") c.client_limits.max_bulk_length = static_cast<std::size_t>(n);
  if (a == "--max-command-bytes") c.max_command_bytes = static_cast<std::size_t>(n);
  if (a == "--client-output-total-limit") c.max_total_client_output = static_cast<std::size_t>(n);
  return "";
}

inline std::string set_log_level(ArgsState& s, const std::string&, const std::string& value) {
  const std::string v = lower(value);
  LogLevel& level = s.out.config.log_level;
  if (v == "debug") level = LogLevel::Debug;
  else if (v == "info") level = LogLevel::Info;
  else if (v == "warning" || v == "warn") level = LogLevel::Warning;
  else if (v == "error") level = LogLevel::Error;
  else return "unknown log level '" + v + "'";
  return "";
}

// -e LIST: the members to ask to join, comma-separated.
inline std::string add_join_targets(ArgsState& s, const std::string&, const std::string& v) {
  std::size_t start = 0;
  while (start <= v.size()) {
    auto comma = v.find(',', start);
    std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) s.out.config.join.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return "";
}

// An option that sets one string of the Config.
template <std::string Config::*field>
std::string set_string_option(ArgsState& s, const std::string&, const std::string& v) {
  s.out.config.*field = v;
  return "";
}

inline const std::vector<CommandLineOption>& command_line_options() {
  using S = ArgsState;
  using Str = const std::string&;
  static const std::vector<CommandLineOption> options = {
      {{"-a", "--addr"}, true, set_string_option<&Config::address>},
      {{"-i", "--nid"}, true, set_string_option<&Config::id>},
      {{"-e", "--ensemble"}, true, add_join_targets},
      {{"-d", "--data"}, true, set_string_option<&Config::data_dir>},
      {{"-l", "--load"}, true, set_string_option<&Config::load_snapshot>},
      {{"-s", "--secret"}, true,
       [](S& s, Str a, Str v) {
         s.out.config.secret = v;
         if (s.secret_from != nullptr) return "give the peer secret once (" + std::string(s.secret_from) + " and " + a + ")";
         s.secret_from = "-s";
         s.out.warnings.push_back("the peer secret given with " + a +
                                  " shows in ps to every local user: use --secret-file PATH or RAFT_SECRET instead");
         return std::string();
       }},
      {{"--requirepass"}, true, set_string_option<&Config::requirepass>},
      {{"--user"}, true, [](S& s, Str, Str v) { s.out.config.users.push_back(v); return std::string(); }},
      {{"--protected-mode"}, true,
       [](S& s, Str, Str value) {
         const std::string v = lower(value);
         if (v != "yes" && v != "no") return "--protected-mode takes yes or no, not '" + v + "'";
         s.out.config.protected_mode = v == "yes";
         return std::string();
       }},
      {{"--tls-cert-file"}, true, set_string_option<&Config::tls_cert_file>},
      {{"--tls-key-file"}, true, set_string_option<&Config::tls_key_file>},
      {{"--tls-ca-cert-file"}, true, set_string_option<&Config::tls_ca_cert_file>},
      {{"--tls-auth-clients"}, true,
       [](S& s, Str, Str value) {
         const std::string v = lower(value);
         if (v != "yes" && v != "no" && v != "optional")
           return "--tls-auth-clients takes yes, no or optional, not '" + v + "'";
         s.out.config.tls_auth_clients =
             v == "yes" ? TlsAuthClients::Yes : v == "no" ? TlsAuthClients::No : TlsAuthClients::Optional;
         return std::string();
       }},
      {{"--secret-file"}, true, read_secret_file},
      {{"--insecure-peers"}, false, [](S& s, Str, Str) { s.out.config.insecure_peers = true; return std::string(); }},
      {{"--maxclients", "--timeout", "--partial-command-timeout", "--checkpoint-interval"}, true, set_count_option},
      {{"--maxmemory", "--client-query-buffer-limit", "--proto-max-bulk-len", "--max-command-bytes",
        "--client-output-total-limit"},
       true, set_size_option},
      {{"--maxmemory-policy"}, true,
       [](S&, Str, Str v) {
         return lower(v) == "noeviction" ? std::string()
                                         : "--maxmemory-policy: only noeviction is supported, not '" + v + "'";
       }},
      {{"--time-scale"}, true,
       [](S& s, Str, Str v) {
         char* end = nullptr;
         double& scale = s.out.config.time_scale;
         scale = std::strtod(v.c_str(), &end);
         if (end == v.c_str() || *end != '\0' || !(scale > 0)) return "--time-scale needs a positive number, not '" + v + "'";
         return std::string();
       }},
      {{"--loglevel", "-loglevel"}, true, set_log_level},
  };
  return options;
}

inline const CommandLineOption* find_command_line_option(const std::string& name) {
  for (const CommandLineOption& o : command_line_options())
    for (const std::string& n : o.names)
      if (n == name) return &o;
  return nullptr;
}

}  // namespace detail

inline ParsedArgs parse_args(int argc, char** argv) {
  ParsedArgs out;
  Config& c = out.config;
  detail::ArgsState state{out};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      out.help = true;
      return out;
    }
    const detail::CommandLineOption* option = detail::find_command_line_option(a);
    if (option == nullptr) {
      out.error = "unknown option '" + a + "'";
      return out;
    }
    std::string value;
    if (option->takes_value) {
      if (i + 1 >= argc) {
        out.error = "option " + a + " needs a value";
        return out;
      }
      value = argv[++i];
    }
    out.error = option->apply(state, a, value);
    if (!out.error.empty()) return out;
  }
  const char* env = std::getenv("RAFT_SECRET");
  if (state.secret_from == nullptr && env != nullptr && *env != '\0') {
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
// ---- src/raft/9_epilogue.hpp ----

#endif  // RAFT_HPP
