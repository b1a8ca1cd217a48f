
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
