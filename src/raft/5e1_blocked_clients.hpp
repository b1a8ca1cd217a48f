
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
