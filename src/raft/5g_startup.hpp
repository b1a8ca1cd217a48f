
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
