
namespace raft {
namespace detail {

// ---- forwarded writes: the follower's side (the protocol: top of 5b_peer_wire.hpp) ------

// Writes on a follower go to the leader over the peer link, pipelined, each in the session
// with its sequence number.
inline void Runtime::forward_writes(const NodeId& leader, std::uint64_t term, std::vector<PendingWrite> writes) {
  PeerLink* link = link_for(leader);
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(std::min(scaled(cfg_.append_timeout_ms + cfg_.election_timeout_ms), kMaxForwardWaitMs));
  std::vector<std::pair<Caller, Reply>> refused;
  {
    std::lock_guard<std::mutex> lock(fwd_mu_);
    // Older forwards first: writes forwarded in order reach the leader in order.
    bool room = link == nullptr || requeue_forwards(leader, term, true);
    for (auto& w : writes) {
      if (!link) {
        refused.emplace_back(w.caller, Reply::error("TRYAGAIN the leader (" + leader + ") has no known address; the "
                                                    "write was not run"));
        continue;
      }
      if (forwards_.size() >= kMaxForwardsWaiting) {
        refused.emplace_back(w.caller, Reply::error("TRYAGAIN this node waits for too many forwarded writes; the write "
                                                    "was not run"));
        continue;
      }
      Request r;
      r.caller = w.caller;
      Forward f;
      f.request = add_request(std::move(r));
      f.command = std::move(w.payload);
      f.words = w.words;
      f.user = w.caller.user;
      f.deadline = deadline;
      const std::uint64_t seq = next_forward_seq_++;
      auto it = forwards_.emplace(seq, std::move(f)).first;
      it->second.to = leader;
      it->second.sent_leader = leader;
      it->second.sent_term = term;
      if (!room || !queue_forward(*link, seq, it->second)) {
        room = false;  // behind a forward the link refused: wait here too, in order
        it->second.to.clear();
        it->second.waits_for_room = true;
      }
    }
  }
  for (auto& [caller, reply] : refused) finish(caller, std::move(reply));
}

// Under fwd_mu_: queues forward `seq` on `link`. If the link refuses it (too many forwards
// wait on it: the peer is gone or slow), it waits here to be queued again, and false says so:
// the caller then queues no later forward before it, so that forwards stay in order.
inline bool Runtime::queue_forward(PeerLink& link, std::uint64_t seq, Forward& f) {
  std::string bytes;
  encode_forward(forward_nonce_, seq, forwards_.begin()->first, f.user, f.command, f.words, bytes);
  if (link.send_forward(seq, std::move(bytes))) return true;
  f.to.clear();
  f.waits_for_room = true;
  return false;
}

// Under fwd_mu_: moves to `leader`'s link, in sequence order, the forwards waiting here and
// those on another node's link. With `all`, every one (before new forwards are queued there,
// so that they stay in order); else only those last queued under another leader or term (a
// forward waiting here is not sent again to the leader that just answered it).
inline bool Runtime::requeue_forwards(const NodeId& leader, std::uint64_t term, bool all) {
  PeerLink* link = nullptr;
  for (auto& [seq, f] : forwards_) {
    if (f.to == leader) continue;
    if (!all && !f.waits_for_room && f.to.empty() && f.sent_leader == leader && f.sent_term == term) continue;
    if (link == nullptr && (link = link_for(leader)) == nullptr) return false;
    if (!f.to.empty()) {
      PeerLink* old = link_for(f.to);
      const std::optional<unsigned> handed = old ? old->take_forward(seq) : std::nullopt;
      if (handed.value_or(1) > 0) f.maybe_run = true;  // the leader it was sent to may have appended it
    }
    f.to = leader;
    f.sent_leader = leader;
    f.sent_term = term;
    f.waits_for_room = false;
    if (!queue_forward(*link, seq, f)) return false;  // the rest wait behind it
  }
  return true;
}

// Every 100 ms on the poll thread: answers forwards past their deadline, and requeues the
// waiting ones once a leader is known.
inline void Runtime::expire_forwards() {
  const auto now = std::chrono::steady_clock::now();
  const NodeId leader = this->leader();
  const std::uint64_t term = this->term();
  std::vector<std::pair<std::uint64_t, Reply>> expired;
  {
    std::lock_guard<std::mutex> lock(fwd_mu_);
    for (auto it = forwards_.begin(); it != forwards_.end();) {
      Forward& f = it->second;
      if (f.deadline > now) {
        ++it;
        continue;
      }
      bool maybe_run = f.maybe_run;
#ifndef RAFT_MUTANT_EXPIRED_FORWARD_STAYS_QUEUED
      if (!f.to.empty())
        if (PeerLink* link = link_for(f.to)) maybe_run = maybe_run || link->take_forward(it->first).value_or(0) > 0;
#endif
      expired.emplace_back(f.request, Reply::error(maybe_run ? "TIMEOUT the leader did not answer the forwarded write "
                                                               "in time; its outcome is unknown"
                                                             : "TRYAGAIN the leader could not be reached in time; "
                                                               "the write was not run"));
      it = forwards_.erase(it);
    }
    if (!leader.empty() && leader != cfg_.id) {
      requeue_forwards(leader, term, false);
      // An answer lost on the leader's connection to us (ours may stay up meanwhile).
      if (PeerLink* link = link_for(leader))
        link->resend_unanswered_forwards(std::chrono::milliseconds(scaled(2 * cfg_.election_timeout_ms)));
    }
  }
  for (auto& [rid, reply] : expired) finish_request(rid, std::move(reply));
}

// A FWDR: the answer to one of this run's forwards, from the leader it was sent to (or, for a
// final reply, any node that applied it).
inline void Runtime::handle_forward_reply(const NodeId& from, ForwardReply fr) {
  if (fr.nonce != forward_nonce_) return;  // for a previous run of this node
  std::uint64_t answered = 0;
  {
    std::lock_guard<std::mutex> lock(fwd_mu_);
    auto it = forwards_.find(fr.seq);
    if (it == forwards_.end()) return;  // answered already (a copy's answer), or given up
    Forward& f = it->second;
    if (fr.status != ForwardStatus::Done && f.to != from) return;  // about a copy no longer there
    PeerLink* link = f.to.empty() ? nullptr : link_for(f.to);
    const unsigned handed = link ? link->take_forward(fr.seq).value_or(0) : 0;
    if (fr.status == ForwardStatus::Unknown || (fr.status == ForwardStatus::NotRun && (f.maybe_run || handed > 1))) {
      // Some copy may be in a log: wait here, to go to the next leader (which answers with the
      // original reply if it was applied), or until the deadline.
      f.maybe_run = true;
      f.to.clear();
      return;
    }
    answered = f.request;
    forwards_.erase(it);
  }
  finish_request(answered, std::move(fr.reply));
}

// ---- forwarded writes: the leader's side ----

inline void Runtime::handle_forward(PeerConn& p, ForwardedWrite fw) {
  fw.words[0] = lower(std::move(fw.words[0]));
  Caller caller{0, 0, nullptr, p.node, fw.seq, fw.nonce, {}};
  if (failed_) {
    finish(caller, Reply::error("MISCONF the leader cannot acknowledge writes (storage failed); the write was not run"),
           ForwardStatus::NotRun);
    return;
  }
  std::string refusal = write_refusal(fw.words);
  if (refusal.empty() && !fw.user.empty() && fw.words[0] == kTransactionCommand) {
    refusal = forwarded_transaction_refusal(fw.user, fw.words);  // each queued command's
  } else if (refusal.empty() && !fw.user.empty()) {
    // The leader's own ACL decides, whatever the follower's says (users are per node).
    AclCommand c;
    acl_command(fw.words, c);
    std::lock_guard<std::mutex> lock(acl_mu_);
    const AclUser* user = acl_.find(fw.user);
    refusal = user ? Acl::refusal(user, c)
                   : "NOPERM the user '" + fw.user + "' does not exist on the leader (" + cfg_.id +
                         "); give every node the same users";
  }
  if (!refusal.empty()) {
    finish(caller, Reply::error(refusal), ForwardStatus::NotRun);
    return;
  }
  // The entry: __fwd node server_id nonce seq lowest word... (the session is the one the
  // peer's handshake proved, never one it names).
  std::string payload;
  resp::write_array_header(payload, 6 + fw.words.size());
  resp::write_bulk(payload, kForwardedCommand);
  resp::write_bulk(payload, p.node);
  resp::write_bulk(payload, p.server_id);
  write_bulk_u64(payload, fw.nonce);
  write_bulk_u64(payload, fw.seq);
  write_bulk_u64(payload, fw.lowest);
  for (const auto& w : fw.words) resp::write_bulk(payload, w);
  peer_batch_.writes.push_back(PendingWrite{caller, std::move(payload), 6 + fw.words.size()});
}

}  // namespace detail
}  // namespace raft
