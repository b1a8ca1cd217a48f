
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
