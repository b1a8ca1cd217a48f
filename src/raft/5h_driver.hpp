
namespace raft {
namespace detail {

// ---- driving the core ----------------------------------------------------------------------

// Called with core_mu_ held. Whoever can reach the peer port can make the core refuse input at
// will: one line a second at most, and the count in INFO (raft_refused_peer_messages).
inline void Runtime::log_refused(const std::string& why) {
  const auto now = std::chrono::steady_clock::now();
  if (refused_logged_at_ != std::chrono::steady_clock::time_point{} && now - refused_logged_at_ < std::chrono::seconds(1)) {
    ++refused_unlogged_;
    return;
  }
  log(LogLevel::Warning, why + (refused_unlogged_ == 0 ? std::string()
                                                       : " (" + std::to_string(refused_unlogged_) +
                                                             " more refused since the last such line)"));
  refused_logged_at_ = now;
  refused_unlogged_ = 0;
}

// Called with core_mu_ held after every input to the core.
inline void Runtime::drive() {
  if (failed_ || halted_or_later()) return;
  while (core_->has_ready()) {
    Ready rd = core_->ready();
    if (rd.persist.seq != 0) {
      std::uint64_t seq = rd.persist.seq;
      auto after = std::make_shared<std::vector<Message>>(std::move(rd.after_persist));
      writer_->submit(std::move(rd.persist), [this, seq, after](bool ok) { on_persisted(seq, ok, std::move(*after)); });
    }
    if (rd.received_snapshot) load_received_snapshot(std::move(*rd.received_snapshot));
    for (const auto& m : rd.messages) send_peer(m);
    for (const auto& why : rd.refused) log_refused(why);
    if (rd.restore) push_apply(ApplyItem{ApplyItem::Restore, rd.restore, {}, {}, {}, {}, 0, 0});
    if (!rd.committed.empty() || !rd.reads.empty() || !rd.aborted.empty() || !rd.role_changes.empty() ||
        rd.leader_ready_term || rd.snapshot_wanted) {
      std::lock_guard<std::mutex> lock(apply_mu_);
      for (auto& e : rd.committed) apply_q_.push_back(ApplyItem{ApplyItem::Entry, nullptr, std::move(e), {}, {}, {}, 0, 0});
      for (auto& r : rd.reads) {
        // Read indexes confirmed on the poll thread are served there when already applied
        // (serve_ready_reads); the rest wait on the apply thread.
        if (std::this_thread::get_id() == poll_thread_id_.load())
          poll_ready_reads_.push_back(r);
        else
          apply_q_.push_back(ApplyItem{ApplyItem::Read, nullptr, {}, r, {}, {}, 0, 0});
      }
      for (auto& a : rd.aborted) apply_q_.push_back(ApplyItem{ApplyItem::Aborted, nullptr, {}, {}, a, {}, 0, 0});
      for (auto& rc : rd.role_changes) apply_q_.push_back(ApplyItem{ApplyItem::RoleChanged, nullptr, {}, {}, {}, rc, 0, 0});
      if (rd.leader_ready_term)
        apply_q_.push_back(ApplyItem{ApplyItem::LeaderReady, nullptr, {}, {}, {}, {}, rd.leader_ready_term, 0});
      if (rd.snapshot_wanted) apply_q_.push_back(ApplyItem{ApplyItem::SnapshotWanted, nullptr, {}, {}, {}, {}, 0, 0});
      apply_cv_.notify_one();
    }
    state_char_ = core_->role_char();
    role_ = static_cast<int>(core_->role());
    term_ = core_->term();
    if (!rd.role_changes.empty()) {
      for (const auto& rc : rd.role_changes)
        log(LogLevel::Info, rc.role == Role::Leader ? cfg_.id + " is a leader in term " + std::to_string(rc.term)
                                                    : std::string("role ") + raft::role_char(rc.role, core_->is_voter()) +
                                                          " in term " + std::to_string(rc.term) +
                                                          (rc.leader.empty() ? "" : ", leader " + rc.leader));
      role_cv_.notify_all();
    }
  }
  state_char_ = core_->role_char();
  role_ = static_cast<int>(core_->role());
  term_ = core_->term();
  commit_ = core_->commit_index();
  {
    const Member* lm = core_->config().find(core_->leader());
    std::lock_guard<std::mutex> lock(status_mu_);
    status_leader_ = core_->leader();
    status_leader_address_ = lm ? lm->address : "";
  }
  if (core_->config() != linked_config_) update_links();
}

inline void Runtime::on_persisted(std::uint64_t seq, bool ok, std::vector<Message> after) {
  if (halted_or_later()) return;
#ifdef RAFT_MUTANT_ACK_BEFORE_FSYNC_VERDICT
  for (const auto& m : after) send_peer(m);  // mutant: the promises leave before the verdict
#endif
  if (!ok) {
    storage_failed(storage_->failure());
    return;
  }
  if (failed_) return;
#ifndef RAFT_MUTANT_ACK_BEFORE_FSYNC_VERDICT
  for (const auto& m : after) send_peer(m);  // promises leave only once durable
#endif
  std::lock_guard<std::mutex> lock(core_mu_);
  core_->persisted(seq);
  drive();
}

// A snapshot received in chunks lies in the storage's incoming file, not in memory. After the
// batch with its last chunk, the writer syncs the file and reads it back (checking its length
// and CRC-32C against what arrived); then the core checks it (check_snapshot: the whole text
// parses) and installs it, which renames the file into place, or refuses it and keeps the log.
inline void Runtime::load_received_snapshot(ReceivedSnapshot received) {
  writer_->submit_load_received(std::move(received),
                                [this](bool ok, std::shared_ptr<Snapshot> snapshot, std::string problem) {
                                  if (halted_or_later()) return;
                                  if (!ok) {
                                    storage_failed(storage_->failure());
                                    return;
                                  }
                                  if (failed_) return;
                                  std::lock_guard<std::mutex> lock(core_mu_);
                                  core_->received_snapshot_loaded(std::move(snapshot), problem);
                                  drive();
                                });
}

inline void Runtime::storage_failed(const std::string& why) {
  // `why` names files inside the data directory (it reaches clients); the log says which.
  log(LogLevel::Error, "storage failed in data directory " + cfg_.data_dir);
  halt("storage failed: " + why);
}

// Stops acknowledging, voting and accepting appends (the core is no longer driven), and
// answers everything waiting. Only a restart recovers, from what is on disk.
inline void Runtime::halt(const std::string& why) {
  bool first = !failed_.exchange(true);
  if (!first) return;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    failure_ = why;
  }
  log(LogLevel::Error, why + ". This node no longer acknowledges, votes or accepts appends; restart it to recover "
                             "from what is on disk.");
  // Nothing waiting here can be answered by this node any more.
  std::vector<std::uint64_t> waiting;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    for (const auto& [id, r] : requests_) waiting.push_back(id);
    write_by_index_.clear();
  }
  for (std::uint64_t id : waiting)
    finish_request(id, Reply::error("MISCONF " + why + "; if this was a write, its outcome is unknown (another node "
                                    "may still commit it); restart the node"),
                   ForwardStatus::Unknown);
}

// ---- the ticker ----------------------------------------------------------------------------

inline void Runtime::ticker_loop() {
  const auto period = std::chrono::microseconds(static_cast<long long>(cfg_.tick_ms * 1000 * cfg_.time_scale));
  auto next = std::chrono::steady_clock::now() + period;
  int ticks = 0;
  while (!stopping_or_later()) {
    {
      std::unique_lock<std::mutex> lock(life_mu_);
      life_cv_.wait_until(lock, next, [&] { return stopping_or_later(); });
    }
    if (stopping_or_later()) break;
    next += period;
    auto now = std::chrono::steady_clock::now();
    if (next < now) next = now + period;  // we were paused (SIGSTOP): do not catch up in a burst
    {
      std::lock_guard<std::mutex> lock(core_mu_);
      if (!failed_) {
        core_->tick(now_ms());
        drive();
      }
    }
    if (++ticks % std::max(1, 100 / cfg_.tick_ms) == 0) {
      wake_poll();  // forwarded writes time out there
      stats_.sample(now);
    }
  }
}

inline void Runtime::propose_expiry() {
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    if (!core_->leader_ready() || failed_) return;
  }
  std::int64_t now = now_ms();
  std::vector<std::string> due;
  {
    std::lock_guard<std::mutex> lock(data_mu_);
    due = store_.due(now, 256);
  }
  std::lock_guard<std::mutex> lock(core_mu_);
  for (auto it = expiry_proposed_.begin(); it != expiry_proposed_.end();)
    it = it->second + scaled(cfg_.append_timeout_ms) < now ? expiry_proposed_.erase(it) : std::next(it);
  bool any = false;
  for (const auto& key : due) {
    if (expiry_proposed_.count(key)) continue;
    std::string payload;
    resp::write_command(payload, {"__expire", key});
    if (!core_->propose(std::move(payload), now).ok()) break;
    expiry_proposed_[key] = now;
    any = true;
  }
  if (any) drive();
}

}  // namespace detail
}  // namespace raft
