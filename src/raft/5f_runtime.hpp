
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
