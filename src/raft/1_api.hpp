
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
