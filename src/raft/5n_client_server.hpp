
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
