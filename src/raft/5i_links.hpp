
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
