
namespace raft {
namespace detail {

// ---- the apply loop ------------------------------------------------------------------------

inline void Runtime::apply_loop() {
  apply_thread_id_ = std::this_thread::get_id();
  std::deque<ApplyItem> items;
  auto next_expiry = std::chrono::steady_clock::now();
  while (true) {
    {
      std::unique_lock<std::mutex> lock(apply_mu_);
      apply_cv_.wait_until(lock, next_expiry, [&] { return stopping_or_later() || !apply_q_.empty(); });
      if (stopping_or_later()) return;
      items.swap(apply_q_);
    }
    // The leader's background expiry lives here, beside the data, so that a slow handler or
    // a long Node::read never holds up the ticker (and the heartbeats).
    if (std::chrono::steady_clock::now() >= next_expiry) {
      next_expiry = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      propose_expiry();
      expire_waiting_reads();
    }
    for (auto& item : items) {
      if (fatal_) break;
      try {
        apply_item(item);
      } catch (const std::exception& ex) {
        // Outside a handler (the session table, encoding a reply, a callback): this node
        // cannot go on applying what the others apply. Say why and stop, never diverge.
        log(LogLevel::Error, std::string("the apply loop failed (") + ex.what() + "): stopping it");
        fatal_ = true;
      } catch (...) {
        log(LogLevel::Error, "the apply loop failed (an exception that is not a std::exception): stopping it");
        fatal_ = true;
      }
    }
    items.clear();
    if (blocked_.any()) wake_poll();  // the data may hold what a blocked client waits for
    if (fatal_) {
      halt("the apply loop stopped (see above)");
      request_stop();
      return;
    }
  }
}

// One item of the apply queue, on the apply thread: each kind has its own function.
inline void Runtime::apply_item(ApplyItem& item) {
  switch (item.kind) {
    case ApplyItem::Restore: restore_snapshot(*item.snapshot); break;
    case ApplyItem::Entry:
      if (item.entry.index > applied_) apply_entry(item.entry);
      break;
    case ApplyItem::Read: apply_read_state(item.read); break;
    case ApplyItem::Aborted: answer_aborted_write(item.id); break;
    case ApplyItem::RoleChanged: run_role_callbacks(item.role); break;
    case ApplyItem::LeaderReady: run_leader_callback(item.term); break;
    case ApplyItem::SnapshotWanted:
    case ApplyItem::Checkpoint: take_snapshot(item.request); break;
  }
}

// Replaces the store with a snapshot's (installed by the core: the leader sent it). The
// writer thread may have parsed it already, when it checked it (checked_snapshot_).
inline void Runtime::restore_snapshot(const Snapshot& snapshot) {
  Store fresh;
  SnapshotMeta meta = snapshot.meta;  // checked to be what the text says
  std::string error;
  std::optional<Store> checked = checked_snapshot_.take(EntryId{meta.index, meta.term});
  const bool parsed = checked.has_value();
  if (parsed) fresh = std::move(*checked);
  if (!parsed && !Store::read_snapshot(snapshot.data, fresh, meta, error)) {
    log(LogLevel::Error, "snapshot from the leader at index " + std::to_string(snapshot.meta.index) +
                             " is unreadable (" + error + "): stopping the apply loop");
    fatal_ = true;
    return;
  }
  {
    std::lock_guard<std::mutex> lock(data_mu_);
    store_ = std::move(fresh);
    keys_ = store_.size();
    volatile_keys_ = store_.volatile_keys();
    used_memory_ = store_.used_memory();
  }
  // The stamp first: a read served on the poll thread that sees the new index must
  // not judge expiry by an older time.
  applied_timestamp_ = std::max(applied_timestamp_.load(), meta.timestamp_ms);
  applied_ = snapshot.meta.index;
  {
    // Writes proposed at or below the snapshot (a deposed leader's) are decided in
    // it, unknown to us which way.
    std::vector<std::uint64_t> gone;
    {
      std::lock_guard<std::mutex> lock(req_mu_);
      while (!write_by_index_.empty() && write_by_index_.begin()->first.first <= applied_) {
        gone.push_back(write_by_index_.begin()->second);
        write_by_index_.erase(write_by_index_.begin());
      }
    }
    for (std::uint64_t id : gone)
      finish_request(id, Reply::error("TIMEOUT this node lost leadership before the write was known "
                                      "committed; its outcome is unknown"),
                     ForwardStatus::Unknown);
  }
  log(LogLevel::Info, "installed a snapshot at index " + std::to_string(applied_.load()));
  serve_reads();
}

// A linearizable read's index, confirmed by the core (or not): served once applied reaches it.
inline void Runtime::apply_read_state(const ReadState& rs) {
  if (!rs.ok) {
    finish_request(rs.request_id,
                   Reply::error("TRYAGAIN could not confirm leadership for a linearizable read: no leader "
                                "reachable or no majority (READONLY allows stale local reads)"));
    return;
  }
  reads_by_index_.emplace(rs.index, rs);
  serve_reads();
}

// The core gave up on a proposal (this node stopped leading before it committed).
inline void Runtime::answer_aborted_write(EntryId id) {
  std::uint64_t rid = 0;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    auto it = write_by_index_.find({id.index, id.term});
    if (it != write_by_index_.end()) {
      rid = it->second;
      write_by_index_.erase(it);
    }
  }
  if (rid)
    finish_request(rid, Reply::error("TIMEOUT the write was not committed in time (leader change or no "
                                     "majority); it may still be applied later"),
                   ForwardStatus::Unknown);
}

inline void Runtime::run_role_callbacks(const RoleChange& change) {
  if (change.role == Role::Follower && on_follower_) on_follower_(node_);
  if ((change.role == Role::Candidate || change.role == Role::PreCandidate) && on_candidate_) on_candidate_(node_);
}

inline void Runtime::run_leader_callback(std::uint64_t term) {
  log(LogLevel::Info, "leading term " + std::to_string(term) + " (first entry committed)");
  if (on_leader_) on_leader_(node_, term);
}

inline void Runtime::apply_entry(const LogEntry& e) {
  Reply reply;
  ForwardStatus status = ForwardStatus::Done;  // for a forwarded write: what its reply means to the follower
  if (e.type == EntryType::Command && !apply_command(e, reply, status)) return;  // fatal_: stops here
  applied_timestamp_ = std::max(applied_timestamp_.load(), e.timestamp_ms);
  applied_ = e.index;
  answer_writes_at(e, reply, status);
  if (!reads_by_index_.empty() && reads_by_index_.begin()->first <= e.index) serve_reads();
}

// A command entry's words; for a forwarded write (__fwd node server_id nonce seq lowest
// word...) also its session, and the words without the wrapping. False, with fatal_ set, if
// this node cannot apply the entry.
inline bool Runtime::decode_command_entry(const LogEntry& e, EntryCommand& out) {
  // Without limits: the entry was checked against the command limits before it was
  // appended (by whichever node and version), and a committed entry must always apply.
  resp::Limits unlimited;
  unlimited.max_bulk_length = unlimited.max_multibulk_length = unlimited.max_inline_length =
      std::numeric_limits<std::size_t>::max();
  resp::RequestParser parser(unlimited);
  parser.feed(e.payload);
  std::vector<std::string>& words = out.words;
  if (parser.next(words) != resp::Status::Ok || words.empty()) {
    log(LogLevel::Error, "log entry " + std::to_string(e.index) + " is not a command: stopping the apply loop");
    fatal_ = true;
    return false;
  }
  out.forwarded = words[0] == kForwardedCommand;
  if (out.forwarded) {
    if (words.size() < 7 || !parse_number(words[3], out.session.nonce) || !parse_number(words[4], out.seq) ||
        !parse_number(words[5], out.lowest)) {
      log(LogLevel::Error, "log entry " + std::to_string(e.index) + " is a malformed forwarded write: stopping the "
                           "apply loop");
      fatal_ = true;
      return false;
    }
    out.session.node = std::move(words[1]);
    out.session.server_id = std::move(words[2]);
    words.erase(words.begin(), words.begin() + 6);
  }
  auto h = handlers_.find(words[0]);
  if (h == handlers_.end() || !h->second.is_write()) {
    // Never skipped: every node must apply the same sequence.
    log(LogLevel::Error, "log entry " + std::to_string(e.index) + " names command '" + words[0] +
                             "', which this node has no write handler for: stopping the apply loop (an entry is "
                             "never skipped: every node applies the same ones). Either this node's handlers differ "
                             "from those of the node that proposed it (start this node with the same handlers as "
                             "the rest of the cluster), or a newer version of raft.hpp wrote the entry (run that "
                             "version here too).");
    fatal_ = true;
    return false;
  }
  out.command = &h->second;
  return true;
}

// Runs a command entry on the store. False if the apply loop must stop (fatal_ is set).
inline bool Runtime::apply_command(const LogEntry& e, Reply& reply, ForwardStatus& status) {
  EntryCommand c;
  if (!decode_command_entry(e, c)) return false;
  std::lock_guard<std::mutex> lock(data_mu_);
  store_.sessions().observe(e.timestamp_ms);  // session time follows every command entry
  store_.set_write_index(e.index);             // WATCH's stamps (5k2_transactions.hpp)
  if (!(c.forwarded ? run_forwarded_write(e, c, reply, status) : run_write(e, *c.command, c.words, reply)))
    return false;
  keys_ = store_.size();
  volatile_keys_ = store_.volatile_keys();
  store_.settle_memory();
  used_memory_ = store_.used_memory();
  return true;
}

// A forwarded write (data_mu_ held): runs unless the replicated session table has seen it.
// False if the apply loop must stop.
inline bool Runtime::run_forwarded_write(const LogEntry& e, const EntryCommand& c, Reply& reply,
                                         ForwardStatus& status) {
  std::string kept;
  switch (store_.sessions().begin(c.session, c.seq, c.lowest, e.timestamp_ms, kept)) {
    case SessionTable::Verdict::Apply: {
      if (!run_write(e, *c.command, c.words, reply)) return false;
      std::string encoded;
      resp::write(encoded, reply, resp::kProtocolKept);
      store_.sessions().record(c.session, c.seq, std::move(encoded));
      break;
    }
    case SessionTable::Verdict::Duplicate:
#ifdef RAFT_MUTANT_FORWARD_APPLIED_TWICE
      // mutant: a copy of a forwarded write runs again
      if (!run_write(e, *c.command, c.words, reply)) return false;
      break;
#endif
      if (!decode_reply(kept, reply)) reply = Reply::error("ERR the reply kept for this write cannot be read");
      break;
    case SessionTable::Verdict::Stale:
      reply = Reply::error("TIMEOUT the leader no longer keeps this forwarded write's reply (it ran, or its node "
                           "gave up on it, earlier); its outcome is unknown");
      break;
    case SessionTable::Verdict::Full:
      // Not run at this entry; but another copy of it may be appended (the follower sent
      // it again) and run once sessions expire. So the follower decides, as for any write
      // the leader did not run, whether it can say "not run" (NotRun, not Done).
      reply = Reply::error("TRYAGAIN the leader remembers too many nodes' forwarded writes at once; the write "
                           "was not run");
      status = ForwardStatus::NotRun;
      break;
  }
  return true;
}

// The write proposed at this index in this term gets the handler's reply; one proposed
// here in another term lost its place to another leader's entry.
inline void Runtime::answer_writes_at(const LogEntry& e, const Reply& reply, ForwardStatus status) {
  std::vector<std::pair<std::uint64_t, bool>> answered;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    auto it = write_by_index_.lower_bound({e.index, 0});
    while (it != write_by_index_.end() && it->first.first == e.index) {
      answered.emplace_back(it->second, it->first.second == e.term);
      it = write_by_index_.erase(it);
    }
  }
  for (auto& [rid, mine] : answered) {
    if (mine)
      finish_request(rid, reply, status);
    else
      finish_request(rid, Reply::error("TIMEOUT the write lost its place in the log to a new leader; it was not "
                                       "applied"),
                     ForwardStatus::NotRun);
  }
}

// Runs a write handler on the store (data_mu_ held). A std::exception other than
// std::bad_alloc is the write's reply, alike on every node, and what the handler changed is
// undone, so a write stays atomic. Anything else stops the apply loop (false): the store may be
// half changed here, and this node must not go on from data that differs from the others'.
inline bool Runtime::run_write(const LogEntry& e, const Command& cmd, const std::vector<std::string>& words,
                               Reply& reply) {
  const bool record = !is_builtin(cmd);  // built-ins return every error before their first change
  Call call{store_, words, e.timestamp_ms, &node_, e.index, e.term};
  std::string failure;
  try {
    if (record) store_.begin_undo();
    reply = cmd.fn(call);
    if (record) store_.commit_undo();
    return true;
  } catch (const std::bad_alloc&) {
    failure = "ran out of memory (std::bad_alloc)";
  } catch (const std::exception& ex) {
    if (!record) {
      failure = std::string("threw (") + ex.what() + "), which a built-in command never does: a bug in raft.hpp";
    } else {
      try {
#ifndef RAFT_MUTANT_WRITE_NOT_UNDONE
        store_.rollback_undo();
#else
        store_.commit_undo();  // mutant: a handler that throws keeps its partial changes
#endif
        reply = Reply::error(std::string("ERR handler failed: ") + ex.what());
        return true;
      } catch (...) {
        failure = std::string("threw (") + ex.what() + ") and its changes could not be undone";
      }
    }
  } catch (...) {
    failure = "threw something that is not a std::exception (a write handler may throw std::exception only: "
              "its changes are then undone and the error is its reply on every node)";
  }
  store_.commit_undo();  // stops recording; what is half done stays, and the node stops
  log(LogLevel::Error, "log entry " + std::to_string(e.index) + ": the write handler of '" + words[0] + "' " +
                           failure + ". Stopping the apply loop: the entry may be half applied here, and this node "
                           "must not serve data that differs from the other nodes'. Restart it: it rebuilds its "
                           "data from its snapshot and log.");
  fatal_ = true;
  return false;
}

inline void Runtime::serve_reads() {
  while (!reads_by_index_.empty() && reads_by_index_.begin()->first <= applied_) {
    const ReadState rs = reads_by_index_.begin()->second;
    const std::uint64_t rid = rs.request_id;
    reads_by_index_.erase(reads_by_index_.begin());
    std::vector<std::string> words;
    {
      std::lock_guard<std::mutex> lock(req_mu_);
      auto it = requests_.find(rid);
      if (it == requests_.end()) continue;
      words = it->second.words;
    }
    auto h = handlers_.find(words.empty() ? std::string() : words[0]);
    finish_request(rid, h == handlers_.end() ? Reply::error("ERR unknown command")
                                             : run_read(h->second, words, read_time(rs)));
  }
}

// A confirmed read whose index this node does not reach in time (cut off from the leader
// right after asking) fails rather than waiting forever.
inline void Runtime::expire_waiting_reads() {
  if (reads_by_index_.empty()) return;
  auto now = std::chrono::steady_clock::now();
  std::vector<std::uint64_t> expired;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    for (auto it = reads_by_index_.begin(); it != reads_by_index_.end();) {
      auto r = requests_.find(it->second.request_id);
      if (r == requests_.end() || r->second.read_deadline < now) {
        if (r != requests_.end()) expired.push_back(it->second.request_id);
        it = reads_by_index_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (std::uint64_t id : expired)
    finish_request(id, Reply::error("TRYAGAIN this node did not catch up with the read index in time (cut off "
                                    "from the leader?); the read was not run"));
}

inline Reply Runtime::run_read(const Command& cmd, const std::vector<std::string>& words, std::int64_t now_ms) {
  std::lock_guard<std::mutex> lock(data_mu_);
  Call call{store_, words, now_ms, &node_};
  try {
    return cmd.fn(call);
  } catch (const std::exception& ex) {
    return Reply::error(std::string("ERR handler failed: ") + ex.what());
  }
}

// ---- snapshots -----------------------------------------------------------------------------

inline void Runtime::take_snapshot(std::uint64_t request) {
  // Copy under the data lock (the apply loop pauses for the copy only), serialize elsewhere.
  SnapshotMeta meta;
  meta.index = applied_;
  meta.timestamp_ms = applied_timestamp_;
  bool stale = false;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    meta.term = core_->term_at(meta.index);
    meta.config = core_->config_at(meta.index);
    // The core may already hold a newer snapshot (one from the leader not applied yet).
    stale = (meta.term == 0 && meta.index > 0) || (meta.index <= core_->snapshot_index() && meta.index > 0);
  }
  std::lock_guard<std::mutex> lock(snap_mu_);
  if (snap_busy_ || stale) {
    if (snap_busy_) snap_again_ = true;  // taken when the current one is saved
    if (request) finish_request(request, Reply::ok());  // one is being written already
    return;
  }
  {
    std::lock_guard<std::mutex> data(data_mu_);
    snap_job_.emplace(store_, meta);
  }
  snap_busy_ = true;
  snap_request_ = request;
  snap_cv_.notify_one();
}

inline void Runtime::snapshot_loop() {
  while (true) {
    std::pair<Store, SnapshotMeta> job;
    std::uint64_t request = 0;
    {
      std::unique_lock<std::mutex> lock(snap_mu_);
      snap_cv_.wait(lock, [&] { return stopping_or_later() || snap_job_.has_value(); });
      if (stopping_or_later()) return;
      job = std::move(*snap_job_);
      snap_job_.reset();
      request = snap_request_;
    }
    auto snap = std::make_shared<Snapshot>();
    snap->meta = job.second;
    job.first.write_snapshot(snap->data, snap->meta);
    std::uint64_t compact_to = 0;
    bool fresh = false;
    {
      std::lock_guard<std::mutex> lock(core_mu_);
      if (snap->meta.index > core_->snapshot_index() || (snap->meta.index == 0 && core_->snapshot_index() == 0)) {
        compact_to = core_->compact(snap);
        fresh = true;
      }
    }
    auto done = [this, request, index = snap->meta.index](bool ok) {
      if (!ok) storage_failed(storage_->failure());
      else log(LogLevel::Info, "snapshot at index " + std::to_string(index) + " saved");
      bool again = false;
      {
        std::lock_guard<std::mutex> lock(snap_mu_);
        snap_busy_ = false;
        again = std::exchange(snap_again_, false);
      }
      if (again) push_apply(ApplyItem{ApplyItem::SnapshotWanted, nullptr, {}, {}, {}, {}, 0, 0});
      if (request) finish_request(request, ok ? Reply::ok() : Reply::error("MISCONF the snapshot could not be saved"));
    };
    if (fresh)
      writer_->submit_snapshot(snap, compact_to, done);
    else
      done(true);
  }
}

}  // namespace detail
}  // namespace raft
