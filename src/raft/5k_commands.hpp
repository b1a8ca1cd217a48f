
namespace raft {
namespace detail {

// ---- requests and replies ------------------------------------------------------------------

inline std::uint64_t Runtime::add_request(Request r) {
  std::lock_guard<std::mutex> lock(req_mu_);
  std::uint64_t id = next_request_++;
  requests_.emplace(id, std::move(r));
  return id;
}

// How a command is answered, one path in three layers:
//   finish(caller, reply)   the one way to answer, from any thread: execute()'s promise; the
//                           follower that forwarded the write (FWDR on the link to it, with
//                           `status`); or a client connection, through done_ and the poll thread.
//   finish_request(id, ...) finish() for a command parked in requests_ (a write waiting to be
//                           applied, a read for its index, a forward for the leader): takes it
//                           out under req_mu_, so that exactly one answer goes out, then finish().
//   complete_op(conn, op)   the poll thread's end of finish() for a client: the reply fills its
//                           op's slot, and the replies next in the connection's order are written.
inline void Runtime::finish(const Caller& caller, Reply reply, ForwardStatus status) {
  if (caller.promise) {
    caller.promise->set_value(std::move(reply));
  } else if (!caller.forward_from.empty()) {
    std::string bytes;
    encode_forward_reply(ForwardReply{caller.forward_nonce, caller.forward_seq, status, std::move(reply)}, bytes);
    if (PeerLink* link = link_for(caller.forward_from)) link->send(std::move(bytes));
  } else if (caller.conn) {
    std::lock_guard<std::mutex> lock(done_mu_);
    done_.emplace_back(caller.conn, caller.op, std::move(reply));
    wake_poll();
  }
}

inline void Runtime::finish_request(std::uint64_t id, Reply reply, ForwardStatus status) {
  Caller caller;
  {
    std::lock_guard<std::mutex> lock(req_mu_);
    auto it = requests_.find(id);
    if (it == requests_.end()) return;
    caller = std::move(it->second.caller);
    requests_.erase(it);
  }
  finish(caller, std::move(reply), status);
}

// ---- commands ------------------------------------------------------------------------------

inline std::future<Reply> Runtime::execute_async(std::vector<std::string> words) {
  auto promise = std::make_shared<std::promise<Reply>>();
  std::future<Reply> f = promise->get_future();
  if (std::this_thread::get_id() == apply_thread_id_.load() || std::this_thread::get_id() == poll_thread_id_.load()) {
    promise->set_value(Reply::error("ERR execute() called from a handler or callback would wait for itself"));
    return f;
  }
  const Lifecycle now = life_.load();
  if (now != Lifecycle::Running && now != Lifecycle::Leaving) {
    promise->set_value(Reply::error("ERR the node is not running"));
    return f;
  }
  Caller caller;
  caller.promise = promise;
  Batch batch;
  handle_command(nullptr, caller, words, batch);
  flush_batched(batch);
  return f;
}

inline void Runtime::handle_command(ClientConn* conn, Caller caller, std::vector<std::string>& words, Batch& batch) {
  if (words.empty()) return;
  const std::string name_as_sent = words[0];  // for the unknown-command error, as Redis names it
  words[0] = lower(std::move(words[0]));
  // INFO's counts for a client's command the node knows (see ServerStats): complete_op counts
  // it as run or, if `rejected`, refused before running.
  Op* op = conn && caller.op >= conn->first_op && caller.op - conn->first_op < conn->ops.size()
                ? &conn->ops[static_cast<std::size_t>(caller.op - conn->first_op)]
                : nullptr;
  const auto count = [&](bool rejected) {
    if (!op) return;
    op->stat = &stats_.command(words[0]);
    op->rejected = rejected;
    op->dispatched = std::chrono::steady_clock::now();
  };
  if (conn && transaction_command(*conn, caller, name_as_sent, words, batch)) return;  // 5k2: MULTI...EXEC
  if (conn) {
    caller.user = conn->user;
    const std::string refusal = client_refusal(*conn, words);
    if (!refusal.empty()) {
      if (handlers_.count(words[0]) > 0 || words[0] == "checkpoint") count(true);
      finish(caller, Reply::error(refusal));
      return;
    }
  }
  if (words[0] == "checkpoint") {
    count(false);
    start_checkpoint(caller, words);
    return;
  }
  bool handled = false;
  if (op) op->dispatched = std::chrono::steady_clock::now();
  Reply r = connection_command(conn, words, handled);
  if (handled) {
    if (op) op->stat = &stats_.command(words[0]);
    finish(caller, std::move(r));
    return;
  }
  auto it = handlers_.find(words[0]);
  if (it == handlers_.end() || is_reserved_command(words[0])) {
    finish(caller, unknown_command_error(name_as_sent, words));
    return;
  }
  const Command& cmd = it->second;
  int argc = static_cast<int>(words.size()) - 1;
  count(argc < cmd.min_args || (cmd.max_args >= 0 && argc > cmd.max_args) || failed_);
  if (argc < cmd.min_args || (cmd.max_args >= 0 && argc > cmd.max_args)) {
    finish(caller, Reply::error("ERR wrong number of arguments for '" + words[0] + "' command"));
    return;
  }
  if (failed_) {
    std::lock_guard<std::mutex> lock(core_mu_);
    finish(caller, Reply::error("MISCONF " + failure_ + ": this node no longer acknowledges writes or serves "
                                "reads; restart it"));
    return;
  }
  if (conn && cmd.is_write()) start_blocking(*conn, caller, words);  // BLPOP & co. wait, if need be
  if (cmd.is_write())
    start_write(caller, words, cmd, batch);
  else
    start_read(conn, caller, words, cmd, batch);
}

// Redis's words: the name and arguments as C strings (up to a NUL byte), the name cut at 128
// bytes, arguments while the list is under 128 bytes (each cut to what is left), and line
// breaks as spaces.
inline Reply Runtime::unknown_command_error(const std::string& name_as_sent, const std::vector<std::string>& words) {
  const auto c_text = [](const std::string& s, std::size_t most) { return s.substr(0, std::min(s.find('\0'), most)); };
  std::string args;
  for (std::size_t i = 1; i < words.size() && args.size() < 128; ++i)
    args += "'" + c_text(words[i], 128 - args.size()) + "' ";
  std::string text = "ERR unknown command '" + c_text(name_as_sent, 128) + "', with args beginning with: " + args;
  std::replace(text.begin(), text.end(), '\r', ' ');
  std::replace(text.begin(), text.end(), '\n', ' ');
  return Reply::error(text);
}

// CHECKPOINT: a snapshot now, unless one is being written or was within checkpoint-interval.
inline void Runtime::start_checkpoint(const Caller& caller, const std::vector<std::string>& words) {
  if (words.size() != 1) {
    finish(caller, Reply::error("ERR wrong number of arguments for 'checkpoint' command"));
    return;
  }
  const std::string refusal = checkpoint_refusal();
  if (!refusal.empty()) {
    finish(caller, Reply::error(refusal));
    return;
  }
  Request r;
  r.caller = caller;
  push_apply(ApplyItem{ApplyItem::Checkpoint, nullptr, {}, {}, {}, {}, 0, add_request(std::move(r))});
}

// A write joins the batch proposed (or forwarded) at the end of this wake-up.
inline void Runtime::start_write(const Caller& caller, const std::vector<std::string>& words, const Command& cmd,
                                 Batch& batch) {
  // The command limits and maxmemory, before anything is proposed or forwarded (see
  // kMaxCommandBytes): never at apply, so that every node applies the same entries.
  const std::string too_big = command_limit_error(words, command_limits());
  if (!too_big.empty()) {
    finish(caller, Reply::error(too_big));
    return;
  }
  if (cmd.may_grow() && over_maxmemory()) {
    finish(caller, Reply::error(kOomError));
    return;
  }
  std::string payload;
  resp::write_command(payload, words);
  batch.writes.push_back(PendingWrite{caller, std::move(payload), words.size()});
}

inline void Runtime::start_read(ClientConn* conn, const Caller& caller, std::vector<std::string>& words,
                                const Command& cmd, Batch& batch) {
  if (conn && conn->readonly) {
    finish(caller, run_read(cmd, words, now_ms()));  // READONLY: this node's data and clock as they are
    return;
  }
  Request r;
  r.caller = caller;
  r.words = words;
  r.read_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(scaled(cfg_.read_timeout_ms) * 2);
  batch.reads.push_back(add_request(std::move(r)));
}

// Proposes the writes and asks for the read indexes gathered since the last call, under one
// lock, so that one wake-up of the poll thread becomes one batch for the disk and the peers.
// The reply to a write the core did not take and this node does not forward.
inline Reply Runtime::proposal_refusal(const ProposeResult& res, bool forwarded_here) {
  if (res.error == ProposeResult::Error::Transferring)
    return Reply::error("TRYAGAIN leadership is being transferred; the write was not run");
  if (forwarded_here) return Reply::error("TRYAGAIN the node this write was forwarded to no longer leads; it was not run");
  return Reply::error("CLUSTERDOWN no leader is known (election in progress or no majority); the write was not run");
}

inline void Runtime::flush_batched(Batch& batch) {
  if (batch.writes.empty() && batch.reads.empty()) return;
  struct Refusal {
    Caller caller;
    Reply reply;
    ForwardStatus status;
  };
  std::vector<Refusal> refused;
  std::vector<PendingWrite> forwards;
  NodeId leader;
  std::uint64_t term = 0;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    if (stopping_or_later()) {
      // stop() is answering what is registered; nothing new starts.
      for (auto& w : batch.writes)
        refused.push_back({w.caller, Reply::error("ERR the node is stopping; the command was not run"),
                           ForwardStatus::NotRun});
      batch.writes.clear();
      std::vector<std::uint64_t> reads;
      reads.swap(batch.reads);
      for (std::uint64_t rid : reads) refused_reads_.push_back(rid);
    }
    for (auto& w : batch.writes) {
      ProposeResult res = core_->propose(w.payload, now_ms());
      const bool forwarded_here = !w.caller.forward_from.empty();
      if (res.ok()) {
        Request r;
        r.caller = w.caller;
        r.entry = res.id;
        std::lock_guard<std::mutex> rl(req_mu_);
        std::uint64_t id = next_request_++;
        requests_.emplace(id, std::move(r));
        write_by_index_[{res.id.index, res.id.term}] = id;
      } else if (res.error == ProposeResult::Error::NotLeader && !res.leader.empty() && !forwarded_here) {
        leader = res.leader;
        term = core_->term();
        forwards.push_back(std::move(w));
      } else {
        refused.push_back({w.caller, proposal_refusal(res, forwarded_here), ForwardStatus::NotRun});
      }
    }
    for (std::uint64_t rid : batch.reads) core_->read_index(rid);
    drive();
  }
  batch.writes.clear();
  batch.reads.clear();
  for (auto& r : refused) finish(r.caller, std::move(r.reply), r.status);
  std::vector<std::uint64_t> refused_reads;
  {
    std::lock_guard<std::mutex> lock(core_mu_);
    refused_reads.swap(refused_reads_);
  }
  for (std::uint64_t rid : refused_reads) finish_request(rid, Reply::error("ERR the node is stopping; the read was not run"));
  if (!forwards.empty()) forward_writes(leader, term, std::move(forwards));
}


// ---- limits and refusals -------------------------------------------------------------------

// Why the leader refuses a forwarded write before proposing it; empty: it proposes it.
inline std::string Runtime::write_refusal(const std::vector<std::string>& words) const {
  auto h = handlers_.find(words[0]);
  const int argc = static_cast<int>(words.size()) - 1;
  if ((is_reserved_command(words[0]) && words[0] != kTransactionCommand) || h == handlers_.end() || !h->second.is_write() || argc < h->second.min_args ||
      (h->second.max_args >= 0 && argc > h->second.max_args))
    return "ERR the leader has no write command '" + words[0] + "' taking " + std::to_string(argc) +
           " arguments; the write was not run";
  std::string refusal = command_limit_error(words, command_limits());
  if (refusal.empty() && h->second.may_grow() && over_maxmemory()) refusal = kOomError;  // the leader's own
  return refusal;
}

inline CommandLimits Runtime::command_limits() const {
  CommandLimits l;
  l.max_word_bytes = static_cast<std::size_t>(limits_.proto_max_bulk_len.load());
  l.max_bytes = static_cast<std::size_t>(limits_.max_command_bytes.load());
  return l;
}

inline bool Runtime::over_maxmemory() const {
  const std::uint64_t max = limits_.maxmemory.load();
  return max > 0 && used_memory_.load() >= max;
}

// Each CHECKPOINT copies the data and writes it out: one at a time, at most one each
// checkpoint-interval seconds.
inline std::string Runtime::checkpoint_refusal() {
  const auto now = std::chrono::steady_clock::now();
  const std::uint64_t interval_s = limits_.checkpoint_interval_s.load();
  std::lock_guard<std::mutex> lock(snap_mu_);
  if (snap_busy_) return "ERR a snapshot is being written; CHECKPOINT again once it is saved";
  if (last_checkpoint_ != std::chrono::steady_clock::time_point{} &&
      now - last_checkpoint_ < std::chrono::seconds(interval_s))
    return "ERR CHECKPOINT ran less than checkpoint-interval (" + std::to_string(interval_s) +
           " s) ago; try again later";
  last_checkpoint_ = now;
  return "";
}


// ---- administration, CONFIG and the connection commands -----------------------------------

// Node's typed administration calls; RAFT.ADD, RAFT.PROMOTE, RAFT.REMOVE, RAFT.TRANSFER and
// pyraft's add_node / del_node are the string layer on top (admin).

inline AdminResult admin_error(AdminResult::Error error, std::string message) {
  AdminResult r;
  r.error = error;
  r.message = std::move(message);
  return r;
}

// Under core_mu_: why this node cannot change the membership now (not running, not the leader).
inline AdminResult Runtime::admin_refusal() const {
  // life_ first: core_ is made before the node runs, and kept until it is destroyed.
  const Lifecycle life = life_.load();
  if (life == Lifecycle::New || life >= Lifecycle::Stopping || !core_)
    return admin_error(AdminResult::Error::NotRunning, "ERR the node is not running; nothing was changed");
  if (core_->role() == Role::Leader) return {};
  const Member* m = core_->config().find(core_->leader());
  if (!m) return admin_error(AdminResult::Error::NotLeader, "CLUSTERDOWN no leader is known; nothing was changed");
  AdminResult r = admin_error(AdminResult::Error::NotLeader,
                              "MOVED " + m->id + " " + m->address + " membership changes are made on the leader");
  r.leader = m->id;
  r.leader_address = m->address;
  return r;
}

// Under core_mu_: the outcome of proposing a configuration change.
inline AdminResult Runtime::membership_result(const ProposeResult& proposed) {
  using E = AdminResult::Error;
  switch (proposed.error) {
    case ProposeResult::Error::None: {
      drive();
      AdminResult r;
      r.index = proposed.id.index;
      r.term = proposed.id.term;
      return r;
    }
    case ProposeResult::Error::NotReady:
    case ProposeResult::Error::ConfigPending:
      return admin_error(E::Busy, "TRYAGAIN another membership change is in progress; nothing was changed");
    case ProposeResult::Error::Transferring: return admin_error(E::Transferring, "TRYAGAIN leadership is being transferred");
    default: return admin_error(E::NotAllowed, "ERR that change is not allowed (one voter at a time; a voter must remain)");
  }
}

inline AdminResult Runtime::add_learner(const NodeId& id, const std::string& address) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult allowed = admin_refusal();
  if (!allowed) return allowed;
  HostPort hp;
  std::string error;
  if (!parse_host_port(address, hp, error)) return admin_error(AdminResult::Error::InvalidAddress, "ERR " + error);
  const Member* old = core_->config().find(id);
  return membership_result(core_->add_learner(Member{id, address, old ? old->server_id : "", false}, now_ms()));
}

inline AdminResult Runtime::promote(const NodeId& id) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult allowed = admin_refusal();
  return allowed ? membership_result(core_->promote(id, now_ms())) : allowed;
}

inline AdminResult Runtime::remove(const NodeId& id) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult allowed = admin_refusal();
  return allowed ? membership_result(core_->remove(id, now_ms())) : allowed;
}

inline AdminResult Runtime::transfer_leadership(const NodeId& to) {
  std::lock_guard<std::mutex> lock(core_mu_);
  AdminResult r = admin_refusal();
  if (!r) return r;
  r.target = to.empty() ? core_->best_transfer_target() : to;
  if (r.target.empty())
    return admin_error(AdminResult::Error::NoTarget,
                       "ERR no other voter was heard from lately to hand leadership to; nothing was changed");
  if (!core_->transfer_leadership(r.target))
    return admin_error(AdminResult::Error::InvalidTarget, "ERR cannot transfer leadership to '" + r.target + "'");
  drive();
  return r;
}

inline Reply Runtime::admin(const std::vector<std::string>& w) {
  // w[0] is one of raft.add raft.promote raft.remove raft.transfer add_node del_node
  AdminResult r;
  if (w[0] == "raft.add" || w[0] == "add_node") r = add_learner(w[1], w[2]);
  else if (w[0] == "raft.promote") r = promote(w[1]);
  else if (w[0] == "raft.remove" || w[0] == "del_node") r = remove(w[1]);
  else r = transfer_leadership(w.size() > 1 ? w[1] : "");
  return r ? Reply::ok() : Reply::error(r.message);
}

// Every command handled here must have its ACL category in acl_command (an administration
// command there, or clients without +@admin may run it).
// CONFIG GET name..., and CONFIG SET of the limits (Redis's names where Redis has the limit;
// see LiveLimits). None: CONFIG SET of something else (connection_command goes on).
// Redis's encoding tunables: how Redis lays small hashes, lists, sets, sorted sets and streams
// out in memory. Tools and clients set them at connect; here the layout is one, so CONFIG SET
// checks and keeps the value (CONFIG GET shows it) and nothing else changes. An alias (Redis
// 7.0's old ziplist names) shares its name's value. Redis 7.0's defaults and bounds.
struct EncodingTunable {
  const char* name;
  const char* alias;
  std::int64_t default_value, min, max;
  bool memory;  // takes Redis's memory units
};
inline const std::vector<EncodingTunable>& encoding_tunables() {
  constexpr std::int64_t kLong = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kInt = std::numeric_limits<std::int32_t>::max();
  static const std::vector<EncodingTunable> t = {
      {"hash-max-listpack-entries", "hash-max-ziplist-entries", 512, 0, kLong, false},
      {"hash-max-listpack-value", "hash-max-ziplist-value", 64, 0, kLong, true},
      {"list-max-listpack-size", "list-max-ziplist-size", -2, std::numeric_limits<std::int32_t>::min(), kInt, false},
      {"list-compress-depth", nullptr, 0, 0, kInt, false},
      {"set-max-intset-entries", nullptr, 512, 0, kLong, false},
      {"zset-max-listpack-entries", "zset-max-ziplist-entries", 128, 0, kLong, false},
      {"zset-max-listpack-value", "zset-max-ziplist-value", 64, 0, kLong, true},
      {"stream-node-max-bytes", nullptr, 4096, 0, kLong, true},
      {"stream-node-max-entries", nullptr, 100, 0, kLong, false},
      {"hll-sparse-max-bytes", nullptr, 3000, 0, kLong, true},
  };
  return t;
}

inline std::optional<Reply> Runtime::config_command(const std::vector<std::string>& w) {
  struct Option {
    const char* name;
    std::atomic<std::uint64_t>* value;
    bool memory;  // takes Redis's memory units
    std::uint64_t min, max;
  };
  const Option options[] = {
      {"maxclients", &limits_.max_clients, false, 1, descriptor_room_},
      {"timeout", &limits_.client_timeout_s, false, 0, std::uint64_t{1} << 31},
      {"partial-command-timeout", &limits_.partial_command_timeout_s, false, 0, std::uint64_t{1} << 31},
      {"client-query-buffer-limit", &limits_.query_buffer, true, std::uint64_t{1} << 20,
       std::numeric_limits<std::uint64_t>::max()},
      {"proto-max-bulk-len", &limits_.proto_max_bulk_len, true, 1, kProtoMaxBulkLen},
      {"max-command-bytes", &limits_.max_command_bytes, true, 1, kMaxCommandBytes},
      {"maxmemory", &limits_.maxmemory, true, 0, std::numeric_limits<std::uint64_t>::max()},
      {"checkpoint-interval", &limits_.checkpoint_interval_s, false, 0, std::uint64_t{1} << 31},
      {"client-output-total-limit", &limits_.total_client_output, true, 1, std::numeric_limits<std::uint64_t>::max()},
  };
  if (lower(w[1]) == "get") {
    // redis-benchmark and some clients ask for save and appendonly: what a Redis with durable
    // writes says.
    std::vector<Reply> kv;
    for (std::size_t i = 2; i < w.size(); ++i) {
      const std::string k = lower(w[i]);
      const auto add = [&](const std::string& key, const std::string& value) {
        if (glob_match(k, key)) kv.insert(kv.end(), {Reply::bulk(key), Reply::bulk(value)});
      };
      add("save", "");
      add("appendonly", "yes");
      add("maxmemory-policy", "noeviction");
      for (const Option& o : options) add(o.name, std::to_string(o.value->load()));
      std::lock_guard<std::mutex> lock(tunables_mu_);
      for (const EncodingTunable& t : encoding_tunables()) {
        auto it = tunables_.find(t.name);
        const std::string v = std::to_string(it == tunables_.end() ? t.default_value : it->second);
        add(t.name, v);
        if (t.alias) add(t.alias, v);
      }
    }
    return Reply::map(std::move(kv));
  }
  const std::string key = lower(w[2]);
  const auto failed = [&](const std::string& why) {
    return Reply::error("ERR CONFIG SET failed (possibly related to argument '" + key + "') - " + why);
  };
  if (key == "maxmemory-policy")
    return lower(w[3]) == "noeviction" ? Reply::ok() : failed("only noeviction is supported");
  for (const Option& o : options) {
    if (key != o.name) continue;
    std::uint64_t v = 0;
    if (!(o.memory ? parse_memory(w[3], v) : parse_number(w[3], v)))
      return failed(o.memory ? "argument must be a memory value" : "argument couldn't be parsed into an integer");
    if (key == "maxclients" && v > o.max)
      return failed("The operating system is not able to handle the specified number of clients, try with " +
                    std::to_string(o.max));
    if (v < o.min || v > o.max)
      return failed("argument must be between " + std::to_string(o.min) + " and " + std::to_string(o.max) +
                    " inclusive");
    o.value->store(v);
    return Reply::ok();
  }
  for (const EncodingTunable& t : encoding_tunables()) {
    if (key != t.name && !(t.alias && key == t.alias)) continue;
    const std::string out_of_range =
        "argument must be between " + std::to_string(t.min) + " and " + std::to_string(t.max) + " inclusive";
    std::int64_t v = 0;
    if (t.memory) {
      // As Redis: a number too large for its memory parser is out of range.
      const bool digits = !w[3].empty() && w[3].find_first_not_of("0123456789") == std::string::npos;
      std::uint64_t bytes = 0;
      if (!parse_memory(w[3], bytes)) return failed(digits ? out_of_range : "argument must be a memory value");
      if (bytes > static_cast<std::uint64_t>(t.max)) return failed(out_of_range);
      v = static_cast<std::int64_t>(bytes);
    } else if (!parse_int64(w[3], v)) {
      return failed("argument couldn't be parsed into an integer");
    }
    if (v < t.min || v > t.max) return failed(out_of_range);
    std::lock_guard<std::mutex> lock(tunables_mu_);
    tunables_[t.name] = v;
    return Reply::ok();
  }
  return std::nullopt;
}

// The connection commands: the node answers them itself (never through the log), on the
// calling thread; a handler cannot replace them. A new one is a line in this table (and its
// ACL category in acl_command). `handled` is false for a name not here.
inline Reply Runtime::connection_command(ClientConn* conn, const std::vector<std::string>& w, bool& handled) {
  using Words = std::vector<std::string>;
  using Handler = Reply (*)(Runtime&, ClientConn*, const Words&);
  static const std::map<std::string, Handler, std::less<>> table = {
      {"ping",
       [](Runtime&, ClientConn*, const Words& w) {
         if (!args_in(w, 0, 1)) return arity_error(w[0]);
         return w.size() == 2 ? Reply::bulk(w[1]) : Reply::simple("PONG");
       }},
      {"echo", [](Runtime&, ClientConn*, const Words& w) { return args_in(w, 1, 1) ? Reply::bulk(w[1]) : arity_error(w[0]); }},
      {"quit",
       [](Runtime&, ClientConn* conn, const Words&) {
         if (conn) conn->close_after_flush = true;
         return Reply::ok();
       }},
      {"auth", [](Runtime& rt, ClientConn* conn, const Words& w) { return rt.auth_command(conn, w); }},
      {"acl", [](Runtime& rt, ClientConn* conn, const Words& w) { return rt.acl_reply(conn, w); }},
      {"select",
       [](Runtime&, ClientConn*, const Words& w) {
         if (!args_in(w, 1, 1)) return arity_error(w[0]);
         std::int64_t db = 0;  // Redis reads an int first, in its words (sic: "must between")
         if (!parse_int64(w[1], db)) return not_integer_error();
         if (db < std::numeric_limits<std::int32_t>::min() || db > std::numeric_limits<std::int32_t>::max())
           return Reply::error("ERR value is out of range, value must between -2147483648 and 2147483647");
         return db == 0 ? Reply::ok() : Reply::error("ERR DB index is out of range");
       }},
      {"readonly", [](Runtime&, ClientConn* conn, const Words& w) { return set_readonly(conn, w, true); }},
      {"readwrite", [](Runtime&, ClientConn* conn, const Words& w) { return set_readonly(conn, w, false); }},
      {"hello", [](Runtime& rt, ClientConn* conn, const Words& w) { return rt.hello_command(conn, w); }},
      {"client", [](Runtime&, ClientConn* conn, const Words& w) { return client_command(conn, w); }},
      {"command", [](Runtime& rt, ClientConn*, const Words& w) { return rt.command_command(w); }},
      {"config", [](Runtime& rt, ClientConn*, const Words& w) { return rt.config_reply(w); }},
      {"info",
       [](Runtime& rt, ClientConn*, const Words& w) {
         return Reply::verbatim("txt", info_sections(rt.info(), Words(w.begin() + 1, w.end())));
       }},
      {"role", [](Runtime& rt, ClientConn*, const Words&) { return rt.role_reply(); }},
      {"latency", [](Runtime&, ClientConn*, const Words& w) { return latency_command(w); }},
      {"shutdown", [](Runtime& rt, ClientConn*, const Words&) { return rt.stop_on_request(); }},
      {"raft.add", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 2, 2); }},
      {"add_node", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 2, 2); }},
      {"raft.promote", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 1, 1); }},
      {"raft.remove", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 1, 1); }},
      {"del_node", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 1, 1); }},
      {"raft.transfer", [](Runtime& rt, ClientConn*, const Words& w) { return admin_with_args(rt, w, 0, 1); }},
      {"raft.leave", [](Runtime& rt, ClientConn*, const Words&) { return rt.stop_on_request(); }},
  };
  auto it = table.find(w[0]);
  handled = it != table.end();
  return handled ? it->second(*this, conn, w) : Reply();
}

// LATENCY: this node keeps no latency monitor (Redis's is off by default too) and no
// per-command histograms, so every report is empty, as a Redis with nothing recorded answers.
inline Reply Runtime::latency_command(const std::vector<std::string>& w) {
  if (w.size() < 2) return arity_error(w[0]);
  const std::string sub = lower(w[1]);
  // Redis's arities: LATEST, DOCTOR and HELP take nothing, HISTORY an event.
  if (((sub == "latest" || sub == "doctor" || sub == "help") && w.size() != 2) || (sub == "history" && w.size() != 3))
    return arity_error("latency|" + sub);
  if (sub == "latest") return Reply::array({});
  if (sub == "history") return Reply::array({});
  if (sub == "histogram") return Reply::map({});
  if (sub == "reset") return Reply::integer(0);
  if (sub == "doctor")
    return Reply::verbatim("txt", "No latency events to analyse: this node (raft.hpp) keeps no latency monitor.\n");
  if (sub == "help") {
    std::vector<Reply> lines;
    for (const char* l :
         {"LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:", "LATEST",
          "    Return the latest latency samples for all events (none: no latency monitor here).", "HISTORY <event>",
          "    Return time-latency samples for the <event> class (none here).", "RESET [<event> ...]",
          "    Reset latency data of one or more <event> classes (nothing to reset here).", "DOCTOR",
          "    Return a human readable latency analysis report.", "HISTOGRAM [COMMAND ...]",
          "    Return cumulative distribution of latencies (none kept here).", "HELP", "    Print this help."})
      lines.push_back(Reply::simple(l));
    return Reply::array(std::move(lines));
  }
  return Reply::error("ERR unknown subcommand '" + w[1] + "'. Try LATENCY HELP.");
}

// Whether a command has at least lo and at most hi arguments after its name.
inline bool Runtime::args_in(const std::vector<std::string>& w, std::size_t lo, std::size_t hi) {
  return w.size() - 1 >= lo && w.size() - 1 <= hi;
}

inline Reply Runtime::admin_with_args(Runtime& rt, const std::vector<std::string>& w, std::size_t lo, std::size_t hi) {
  return args_in(w, lo, hi) ? rt.admin(w) : arity_error(w[0]);
}

// SHUTDOWN and RAFT.LEAVE: the stop happens on the thread that waits in join(), not here.
inline Reply Runtime::stop_on_request() {
  request_stop();
  return Reply::ok();
}

// READONLY / READWRITE: whether this connection's reads may be served from local data.
inline Reply Runtime::set_readonly(ClientConn* conn, const std::vector<std::string>& w, bool readonly) {
  if (!args_in(w, 0, 0)) return arity_error(w[0]);
  if (conn) conn->readonly = readonly;
  return Reply::ok();
}

inline Reply Runtime::auth_command(ClientConn* conn, const std::vector<std::string>& w) {
  if (w.size() < 2) return arity_error(w[0]);
  if (w.size() > 3) return Reply::error("ERR syntax error");
  if (w.size() == 2) {
    std::lock_guard<std::mutex> lock(acl_mu_);
    const AclUser* d = acl_.find("default");
    if (d && d->nopass)
      return Reply::error("ERR AUTH <password> called without any password configured for the default user. Are "
                          "you sure your configuration is correct?");
  }
  if (!conn) return Reply::ok();  // execute(): the embedding program runs as itself
  return authenticate(conn, w.size() == 3 ? w[1] : "default", w.back())
             ? Reply::ok()
             : Reply::error("WRONGPASS invalid username-password pair or user is disabled.");
}

inline Reply Runtime::hello_command(ClientConn* conn, const std::vector<std::string>& w) {
  int proto = conn ? conn->protocol : 2;
  std::size_t i = 1;
  if (w.size() > 1) {
    std::int64_t version = 0;
    if (!parse_int64(w[1], version)) return Reply::error("ERR Protocol version is not an integer or out of range");
    if (version != 2 && version != 3) return Reply::error("NOPROTO unsupported protocol version");
    proto = static_cast<int>(version);
    i = 2;
  }
  const std::string* setname = nullptr;
  const std::string* auth_user = nullptr;
  const std::string* auth_password = nullptr;
  for (; i < w.size(); ++i) {
    std::string opt = lower(w[i]);
    if (opt == "setname" && i + 1 < w.size()) {
      setname = &w[++i];
    } else if (opt == "auth" && i + 2 < w.size()) {
      auth_user = &w[i + 1];
      auth_password = &w[i + 2];
      i += 2;
    } else {
      return Reply::error("ERR Syntax error in HELLO option '" + w[i] + "'");
    }
  }
  // Redis's order: authenticate (nothing changes if that fails), then the name and protocol.
  if (conn) {
    if (auth_user && !authenticate(conn, *auth_user, *auth_password))
      return Reply::error("WRONGPASS invalid username-password pair or user is disabled.");
    bool required;
    {
      std::lock_guard<std::mutex> lock(acl_mu_);
      required = acl_.auth_required();
    }
    if (!conn->authenticated && required)
      return Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the "
                          "HELLO AUTH <user> <pass> option can be used to authenticate the client and select the "
                          "RESP protocol version at the same time");
    if (setname) conn->name = *setname;
    conn->protocol = proto;
  }
  return Reply::map({Reply::bulk("server"), Reply::bulk("redis"), Reply::bulk("version"), Reply::bulk("7.0.0"),
                     Reply::bulk("proto"), Reply::integer(proto), Reply::bulk("id"),
                     Reply::integer(static_cast<std::int64_t>(conn ? conn->id : 0)), Reply::bulk("mode"),
                     Reply::bulk("standalone"), Reply::bulk("role"),
                     Reply::bulk(role() == Role::Leader ? "master" : "replica"), Reply::bulk("modules"),
                     Reply::array()});
}

inline Reply Runtime::client_command(ClientConn* conn, const std::vector<std::string>& w) {
  if (w.size() < 2) return arity_error(w[0]);
  std::string sub = lower(w[1]);
  if ((sub == "setname" && w.size() != 3) || (sub == "getname" && w.size() != 2) || (sub == "id" && w.size() != 2))
    return Reply::error("ERR wrong number of arguments for 'client|" + sub + "' command");
  if (sub == "setname") {
    if (conn) conn->name = w[2];
    return Reply::ok();
  }
  if (sub == "getname") return conn && !conn->name.empty() ? Reply::bulk(conn->name) : Reply::nil();
  if (sub == "setinfo") return Reply::ok();
  if (sub == "id") return Reply::integer(static_cast<std::int64_t>(conn ? conn->id : 0));
  return Reply::error("ERR unknown subcommand '" + w[1] + "'. Try CLIENT HELP.");
}

// COMMAND [COUNT | DOCS]: the handlers' table as Redis describes commands.
inline Reply Runtime::command_command(const std::vector<std::string>& w) const {
  if (w.size() >= 2 && lower(w[1]) == "count") return Reply::integer(static_cast<std::int64_t>(handlers_.size()));
  if (w.size() >= 2 && lower(w[1]) == "docs") return Reply::map();
  std::vector<Reply> all;
  for (const auto& [cname, c] : handlers_) {
    if (cname.rfind("__", 0) == 0) continue;
    std::int64_t arity_value = c.min_args == c.max_args ? c.min_args + 1 : -(c.min_args + 1);
    all.push_back(Reply::array({Reply::bulk(cname), Reply::integer(arity_value),
                                Reply::array({Reply::simple(c.is_write() ? "write" : "readonly")}),
                                Reply::integer(c.min_args > 0 ? 1 : 0), Reply::integer(c.min_args > 0 ? 1 : 0),
                                Reply::integer(c.min_args > 0 ? 1 : 0)}));
  }
  return Reply::array(std::move(all));
}

inline Reply Runtime::config_reply(const std::vector<std::string>& w) {
  if (w.size() >= 3 && lower(w[1]) == "get") return *config_command(w);
  if (w.size() == 4 && lower(w[1]) == "set") {
    std::optional<Reply> r = config_command(w);
    if (r) return std::move(*r);
  }
  // The clients' options (administration: see acl_command): Redis's way to open a node up.
  if (w.size() == 4 && lower(w[1]) == "set" && lower(w[2]) == "requirepass") {
    std::lock_guard<std::mutex> lock(acl_mu_);
    if (w[3].empty())
      acl_.set_user("default", {"nopass"}, nullptr);
    else
      acl_.set_user("default", {"resetpass", ">" + w[3]}, nullptr);
    return Reply::ok();
  }
  if (w.size() == 4 && lower(w[1]) == "set" && lower(w[2]) == "protected-mode") {
    const std::string v = lower(w[3]);
    if (v != "yes" && v != "no")
      return Reply::error("ERR CONFIG SET failed (possibly related to argument 'protected-mode') - argument must "
                          "be 'yes' or 'no'");
    protected_mode_ = v == "yes";
    return Reply::ok();
  }
  return Reply::error("ERR CONFIG " + (w.size() > 1 ? w[1] : std::string()) + " is not supported");
}

}  // namespace detail
}  // namespace raft
