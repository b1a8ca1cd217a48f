
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
