
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
