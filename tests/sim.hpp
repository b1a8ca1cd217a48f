// A simulated cluster of raft::Core instances over a seeded, hostile network: delays,
// loss, duplication, reordering, partitions (symmetric and one-way), crashes that lose
// everything not yet durable (also in the middle of a snapshot install), restarts, wiped
// disks, disks slower than the election timeout, clocks with skew and jumps, joins, removals
// and snapshots. Clusters of one voter (with learners), two voters, three and five.
//
// After every step it checks Raft's invariants incrementally:
//   - election safety: at most one leader per term, and a leader holds durable votes of a
//     majority (its own counted from its disk like everyone else's) before anything it does
//     in its term is visible: a message it sends or an entry of its term it commits;
//   - durability of terms: no message leaves a node carrying a term above the one on its disk,
//     and no node's term goes below one it has sent, across restarts;
//   - log matching: two logs holding an entry with the same index and term hold the same
//     entries up to it (every log is mirrored as a hash chain, compared through a global map),
//     and the mirror of what was handed to the disk equals the core's log after every Ready;
//   - leader completeness: a new leader holds every entry committed so far;
//   - state machine safety: every node applies exactly the committed sequence, and a node's
//     commit index never decreases while it runs;
//   - acknowledged entries survive: after every crash a node's disk still holds every entry it
//     acknowledged, unless a leader of a later term legitimately cut it;
//   - proposals: one outcome each (applied where proposed, or aborted), every payload applied
//     at most once;
//   - forwarded writes (a follower's client writes, sent to whatever it takes for the leader,
//     delayed, lost, duplicated and sent again after leader changes, deduplicated through the
//     log by the runtime's own detail::SessionTable, kept in snapshots): each runs at most once;
//   - reads: a result goes to the node and incarnation that asked; a successful linearizable
//     read reflects at least the commit index of the moment it was issued; its time never
//     goes below the time of a read that completed before it was issued (within one leader's
//     term), or by more than the clocks' skew (across leaders);
//   - time: the leader timestamps of applied entries never decrease along the log, across
//     snapshots, restarts and leader changes, whatever the clocks do.
// A violation throws sim::Violation; the seed replays it exactly.
#pragma once

#include "raft.hpp"
#include "core_transcript.hpp"

#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace sim {

using namespace raft;

struct Violation : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed * 0x2545f4914f6cdd1dull + 1) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : next() % n; }
  std::uint64_t range(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
  bool chance(double p) { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0) < p; }

 private:
  std::uint64_t state_;
};

inline std::uint64_t mix(std::uint64_t h, std::uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 33);
}

inline std::uint64_t chain_hash(std::uint64_t prev, const LogEntry& e) {
  std::uint64_t h = mix(prev, e.index);
  h = mix(h, e.term);
  h = mix(h, static_cast<std::uint64_t>(e.type));
  h = mix(h, static_cast<std::uint64_t>(e.timestamp_ms));
  for (unsigned char c : e.payload) h = mix(h, c);
  return mix(h, e.payload.size());
}

struct Options {
  int voters = 3;
  int joiners = 0;           // nodes started empty that ask to join later
  bool static_ids = false;   // initial configuration without server ids (a static peer map)
  double loss = 0;           // probability a message is lost
  double duplicate = 0;      // probability a message is delivered twice
  std::uint64_t min_delay = 1, max_delay = 8;  // in time units (a tick is 10; a unit is 1 ms)
  std::uint64_t max_persist_delay = 6;
  /// Nodes whose every group commit takes this long (a busy disk), e.g. beyond the election
  /// timeout.
  std::map<NodeId, std::uint64_t> slow_disks;
  /// Each node's clock is off the true time by up to this (ms), either way.
  std::int64_t max_clock_skew = 0;
  /// The chance that a node's crash hits while a snapshot install has replaced the log on disk
  /// but the entries after it are not written yet.
  double crash_in_snapshot_install = 0;
  CoreOptions core;          // id, server_id and random_seed are set per node
};

/// What a node has on its simulated disk.
struct Disk {
  HardState hs;
  std::shared_ptr<const Snapshot> snapshot;
  std::vector<LogEntry> log;  // by index, contiguous
  Configuration initial_config;
  /// The snapshot being received (the storage's incoming file): its chunks as written. Never
  /// synced before it is read back, and deleted by a restart: a crash loses it.
  struct Incoming {
    std::uint64_t index = 0;
    std::uint64_t term = 0;
    std::string data;
    bool intact = true;  // every chunk since offset 0 written in order
  };
  std::optional<Incoming> incoming;
};

struct SimNode {
  NodeId id;
  std::string server_id;
  std::int64_t clock_offset = 0;  // this node's clock minus the true time
  bool up = false;
  bool retired = false;  // removed from the cluster on purpose
  std::uint64_t generation = 0;
  std::unique_ptr<Core> core;
  Disk disk;
  /// A message and the chain hash of each entry it carries (taken when it was made).
  struct Outgoing {
    Message message;
    std::vector<std::uint64_t> hashes;
    std::uint64_t ack_term = 0;  // an acknowledgement: the term of the acknowledged entry in the log
  };
  struct Unpersisted {
    PersistBatch batch;
    std::vector<std::uint64_t> hashes;  // chain hash of each entry of the batch
    std::vector<Outgoing> after;
    std::optional<ReceivedSnapshot> received;  // read the incoming file back once written
  };
  std::deque<Unpersisted> unpersisted;
  bool persist_scheduled = false;
  // The core's log as a hash chain: mirror[k] is the chain up to index mirror_start + k, and
  // mirror_terms[k] the term of that entry.
  std::uint64_t mirror_start = 0;
  std::vector<std::uint64_t> mirror{0};
  std::vector<std::uint64_t> mirror_terms{0};
  // The state machine: how far it applied, the hash chain of what it applied, and the stamp
  // of the last entry applied.
  std::uint64_t applied = 0;
  std::uint64_t sm_chain = 0;
  std::int64_t applied_stamp = 0;
  raft::detail::SessionTable sessions;  // replicated with the state machine (in its snapshots)
  // Writes this incarnation forwarded and has no answer for: seq -> payload.
  std::uint64_t forward_nonce = 0;
  std::uint64_t forward_seq = 0;
  std::map<std::uint64_t, std::string> forwards;
  std::uint64_t last_term = 0;
  std::uint64_t last_commit = 0;
  struct WaitingRead {
    std::uint64_t index;
    std::uint64_t request_id;
    std::int64_t time_ms;
    std::uint64_t term;
  };
  std::vector<WaitingRead> reads_waiting;

  std::uint64_t mirror_last() const { return mirror_start + mirror.size() - 1; }
  std::uint64_t mirror_at(std::uint64_t i) const { return mirror[static_cast<std::size_t>(i - mirror_start)]; }
  std::uint64_t mirror_term(std::uint64_t i) const {
    return mirror_terms[static_cast<std::size_t>(i - mirror_start)];
  }
  /// The term of the entry at `index` on the disk (0: not there; the snapshot's term at its index).
  std::uint64_t disk_term(std::uint64_t index) const {
    if (disk.snapshot && index == disk.snapshot->meta.index) return disk.snapshot->meta.term;
    if (disk.log.empty() || index < disk.log.front().index || index > disk.log.back().index) return 0;
    return disk.log[static_cast<std::size_t>(index - disk.log.front().index)].term;
  }
};

class Cluster {
 public:
  static constexpr std::uint64_t kTick = 10;  // time units per tick
  static constexpr std::size_t kMaxOutstanding = 32;
  static constexpr std::size_t kMaxEvents = 100000;
  static constexpr std::int64_t kEpoch = 1'700'000'000'000;  // clocks read kEpoch + now + offset

  Cluster(std::uint64_t seed, Options opts) : rng_(seed), opts_(std::move(opts)), seed_(seed) {
    Configuration initial;
    for (int i = 1; i <= opts_.voters; ++i) {
      NodeId id = std::to_string(i);
      std::string sid = "s" + id + "-" + std::to_string(rng_.below(1000000));
      initial.upsert(Member{id, "127.0.0.1:" + std::to_string(5000 + 10 * i),
                            opts_.static_ids ? "" : sid, true});
      nodes_[id].id = id;
      nodes_[id].server_id = sid;
    }
    for (auto& [id, n] : nodes_) n.disk.initial_config = initial;
    for (int j = 1; j <= opts_.joiners; ++j) {
      NodeId id = std::to_string(opts_.voters + j);
      nodes_[id].id = id;
      nodes_[id].server_id = "s" + id + "-" + std::to_string(rng_.below(1000000));
    }
    for (auto& [id, n] : nodes_) {
      const auto skew = static_cast<std::uint64_t>(opts_.max_clock_skew);
      n.clock_offset = static_cast<std::int64_t>(rng_.below(2 * skew + 1)) - opts_.max_clock_skew;
    }
    note_clock_spread();
    for (auto& [id, n] : nodes_) start(n);
  }

  // ---- the world -----------------------------------------------------------------------

  std::map<NodeId, SimNode>& nodes() { return nodes_; }
  SimNode& node(const NodeId& id) { return nodes_.at(id); }
  Core& core(const NodeId& id) { return *nodes_.at(id).core; }
  std::uint64_t now() const { return now_; }
  std::uint64_t max_commit() const { return committed_.size() - 1; }
  std::uint64_t acked() const { return acked_count_; }
  std::uint64_t reads_ok() const { return reads_ok_; }
  bool trace = false;

  void trace_line(const std::string& s) {
    if (trace) std::cerr << "[t=" << now_ << "] " << s << "\n";
  }

  /// The leader with the highest term among running nodes, or empty.
  NodeId leader() const {
    NodeId best;
    std::uint64_t term = 0;
    for (const auto& [id, n] : nodes_)
      if (n.up && n.core->role() == Role::Leader && n.core->term() >= term) {
        best = id;
        term = n.core->term();
      }
    return best;
  }

  void cut(const NodeId& from, const NodeId& to) { cut_.insert({from, to}); }
  void isolate(const NodeId& id) {
    for (auto& [other, n] : nodes_)
      if (other != id) {
        cut(id, other);
        cut(other, id);
      }
  }
  /// Cuts every link between `group` and the other nodes.
  void partition(const std::set<NodeId>& group) {
    std::string names;
    for (const auto& id : group) names += id + " ";
    trace_line("partition: " + names + "| the rest");
    for (const auto& [a, na] : nodes_)
      for (const auto& [b, nb] : nodes_)
        if (group.count(a) != group.count(b)) cut(a, b);
  }
  void heal() { cut_.clear(); }

  /// From now on every group commit of this node takes `delay` units (0: the usual random few).
  void set_disk_delay(const NodeId& id, std::uint64_t delay) {
    if (delay == 0)
      opts_.slow_disks.erase(id);
    else
      opts_.slow_disks[id] = delay;
    trace_line("disk of " + id + " takes " + std::to_string(delay));
  }

  /// The node's clock: the true time plus its offset, in ms since the epoch.
  std::int64_t clock(const SimNode& n) const { return kEpoch + static_cast<std::int64_t>(now_) + n.clock_offset; }
  /// The node's clock jumps (an NTP step, a VM resumed): forward or back.
  void jump_clock(const NodeId& id, std::int64_t delta) {
    nodes_.at(id).clock_offset += delta;
    trace_line("clock of " + id + " jumps by " + std::to_string(delta));
    note_clock_spread();
  }

  // ---- driving -------------------------------------------------------------------------

  /// Runs the next scheduled event. Returns false when nothing is scheduled.
  bool run_next() {
    if (events_.empty()) return false;
    auto node_handle = events_.extract(events_.begin());
    now_ = node_handle.key().first;
    Event& ev = node_handle.mapped();
    switch (ev.kind) {
      case Event::Tick: {
        SimNode& n = nodes_.at(ev.node);
        if (!n.up || n.generation != ev.generation) break;
        n.core->tick(clock(n));
        process(n);
        schedule(now_ + kTick - 1 + rng_.below(3), Event{Event::Tick, ev.node, n.generation, {}, {}});
        break;
      }
      case Event::Deliver: {
        Message& m = ev.message;
        auto it = nodes_.find(m.to);
        if (it == nodes_.end() || !it->second.up || cut_.count({m.from, m.to})) break;
        trace_line("deliver " + describe(m));
        it->second.core->step(m);
        process(it->second);
        if (trace && it->second.up)
          trace_line("  " + m.to + " last " + std::to_string(it->second.core->last_index()) + " term " +
                     std::to_string(it->second.core->last_term()) + " commit " +
                     std::to_string(it->second.core->commit_index()));
        break;
      }
      case Event::Persist: {
        SimNode& n = nodes_.at(ev.node);
        if (!n.up || n.generation != ev.generation) break;
        n.persist_scheduled = false;
        persist_some(n);
        break;
      }
      case Event::Forward: {
        // A forwarded write reaches the node its sender took for the leader: a leader appends
        // it, wrapped with its session, as the runtime does (whoever else gets it drops it).
        SimNode& n = nodes_.at(ev.node);
        if (!n.up || n.core->role() != Role::Leader) break;
        if (n.core->propose(ev.forward, clock(n)).ok()) trace_line("append forwarded " + ev.forward + " on " + n.id);
        process(n);
        break;
      }
    }
    return true;
  }

  /// Runs events until `units` of simulated time have passed.
  void run_for(std::uint64_t units) {
    std::uint64_t until = now_ + units;
    while (!events_.empty() && events_.begin()->first.first <= until) run_next();
    now_ = std::max(now_, until);
  }
  void run_ticks(std::uint64_t ticks) { run_for(ticks * kTick); }

  // ---- clients -------------------------------------------------------------------------

  /// Proposes on `id` if it leads. Returns the payload, or "" when not proposed.
  std::string propose(const NodeId& id) {
    SimNode& n = nodes_.at(id);
    if (!n.up || n.core->role() != Role::Leader) return "";
    // Clients wait for their replies: a bounded number of proposals is outstanding.
    if (pending_[id].size() >= kMaxOutstanding) return "";
    std::string payload = "c" + std::to_string(seed_) + "-" + std::to_string(++proposal_counter_);
    ProposeResult r = n.core->propose(payload, clock(n));
    if (!r.ok()) return "";
    pending_[id][r.id.index] = Pending{r.id.term, payload};
    trace_line("propose " + payload + " on " + id + " at " + std::to_string(r.id.index));
    process(n);
    return payload;
  }

  /// A client's write on `id`, a follower: forwarded to the leader it knows. Returns false when
  /// it knows none.
  bool forward(const NodeId& id) {
    SimNode& n = nodes_.at(id);
    if (!n.up || n.core->role() == Role::Leader || n.core->leader().empty()) return false;
    const std::uint64_t seq = ++n.forward_seq;
    n.forwards[seq] = "f" + std::to_string(seed_) + "-" + std::to_string(++proposal_counter_);
    send_forward(n, seq);
    return true;
  }
  /// `id` sends every forward it has no answer for again, to the leader it knows now (after a
  /// reconnect or a leader change, the runtime does).
  void resend_forwards(const NodeId& id) {
    SimNode& n = nodes_.at(id);
    if (!n.up || n.core->leader().empty() || n.core->leader() == n.id) return;
    for (const auto& [seq, payload] : n.forwards) send_forward(n, seq);
  }

  /// Issues a linearizable read on `id`.
  void read(const NodeId& id) {
    SimNode& n = nodes_.at(id);
    if (!n.up) return;
    std::uint64_t rid = ++read_counter_;
    reads_[rid] = ReadRecord{id, n.generation, max_commit(), completed_read_times_};
    n.core->read_index(rid);
    process(n);
  }

  // ---- faults --------------------------------------------------------------------------

  void crash(const NodeId& id) {
    SimNode& n = nodes_.at(id);
    if (!n.up) return;
    trace_line("crash " + id);
    n.up = false;
    n.core.reset();
    n.unpersisted.clear();
    n.disk.incoming.reset();  // never synced; open() deletes what reached the disk
    n.persist_scheduled = false;
    n.reads_waiting.clear();
    pending_.erase(id);
    ++n.generation;
  }

  void restart(const NodeId& id) {
    SimNode& n = nodes_.at(id);
    if (n.up) return;
    trace_line("restart " + id);
    start(n);
  }

  /// The configuration a node uses: its core's, or the one its disk would give it.
  static Configuration config_of(const SimNode& n) {
    if (n.up) return n.core->config();
    Configuration c = n.disk.snapshot ? n.disk.snapshot->meta.config : n.disk.initial_config;
    for (const auto& e : n.disk.log)
      if (e.type == EntryType::Config) Configuration::decode(e.payload, c);
    return c;
  }

  /// A member's identity is recognisable once every other node's configuration records its
  /// server id. Before that (a static peer map, right after formation) a wiped disk cannot be
  /// told apart from the member itself - nothing can, so the design does not promise it.
  bool identity_bound(const NodeId& id) const {
    // A cluster of fewer than three voters cannot lose a disk: the wiped node may be the one
    // that holds every committed entry.
    if (config_of(nodes_.at(id)).voter_count() < 3) return false;
    for (const auto& [other, n] : nodes_) {
      if (other == id || n.retired) continue;
      Configuration c = config_of(n);
      // Losing a second disk while a first wiped member is not back as a voter can lose a
      // majority for good: Raft (and this design) tolerates a minority of failures only.
      if (c.voter_count() < 3) return false;
      for (const auto& m : c.members)
        if (m.id != id && (!m.voter || m.server_id != nodes_.at(m.id).server_id)) return false;
      const Member* m = c.find(id);
      if (m && m->server_id != nodes_.at(id).server_id) return false;
      if (!m && !c.empty()) continue;
      if (!m) return false;
    }
    return true;
  }

  /// The node's disk is lost: it comes back empty with a new server id and no configuration
  /// (the leader re-adds it under its new identity).
  void wipe(const NodeId& id) {
    if (!identity_bound(id)) return;
    crash(id);
    SimNode& n = nodes_.at(id);
    trace_line("wipe " + id);
    n.disk = Disk{};
    n.server_id = "s" + id + "-w" + std::to_string(rng_.below(1000000));
    start(n);
  }

  /// Asks the leader to add `id` as a learner (a join request). Returns true if proposed.
  bool join(const NodeId& id) {
    NodeId l = leader();
    if (l.empty()) return false;
    SimNode& n = nodes_.at(id);
    Member m{id, "127.0.0.1:" + std::to_string(5000 + 10 * std::stoi(id)), n.server_id, false};
    const Member* cur = core(l).config().find(id);
    if (cur && cur->server_id == n.server_id) return false;  // already a member
    ProposeResult r = core(l).add_learner(m, clock(nodes_.at(l)));
    trace_line("join " + id + " via " + l + (r.ok() ? " ok" : " refused"));
    process(nodes_.at(l));
    return r.ok();
  }

  bool remove(const NodeId& id) {
    NodeId l = leader();
    if (l.empty()) return false;
    ProposeResult r = core(l).remove(id, clock(nodes_.at(l)));
    trace_line("remove " + id + " via " + l + (r.ok() ? " ok" : " refused"));
    if (r.ok()) nodes_.at(id).retired = true;
    process(nodes_.at(l));
    return r.ok();
  }

  void process_all() {
    for (auto& [id, n] : nodes_)
      if (n.up) process(n);
  }

  /// Drains the output of a node and checks every invariant it touches.
  void process(SimNode& n) {
    while (n.up && n.core->has_ready()) {
      Ready rd = n.core->ready();
      handle_ready(n, rd);
    }
    check_node(n);
  }

  // ---- the final check -----------------------------------------------------------------

  /// With the network healed, disks fast and every node up, within `ticks` one leader leads
  /// every member and every member's log, commit and applied index equal the leader's.
  void check_converges(std::uint64_t ticks) {
    heal();
    opts_.loss = 0;
    opts_.duplicate = 0;
    opts_.slow_disks.clear();
    opts_.crash_in_snapshot_install = 0;
    for (auto& [id, n] : nodes_)
      if (!n.up) restart(id);
    std::uint64_t until = now_ + ticks * kTick;
    std::string why;
    while (now_ < until) {
      run_for(kTick);
      // Joiners that were never added (or whose addition was cut) keep asking, as the runtime
      // does with -e. A wiped member does not ask: the leader re-adds it when it hears it.
      NodeId l = leader();
      if (!l.empty())
        for (auto& [id, n] : nodes_)
          if (!n.retired && !core(l).config().contains(id)) join(id);
      why = convergence_problem();
      if (why.empty()) {
        // Converged: every proposal has had its one outcome (applied, or aborted when its
        // leader stepped down).
        for (const auto& [id, pending] : pending_)
          if (!pending.empty())
            throw Violation("proposals: " + pending.begin()->second.payload + " proposed on " + id + " at " +
                            std::to_string(pending.begin()->first) + " never got an outcome");
        return;
      }
    }
    for (auto& [id, n] : nodes_)
      if (n.up)
        why += "; node " + id + " " + std::string(1, n.core->role_char()) + " term " + std::to_string(n.core->term()) +
               " vote " + n.core->vote() + " last " + std::to_string(n.core->last_index()) + "/" +
               std::to_string(n.core->last_term()) + " config " + describe_config(n.core->config());
    NodeId l = leader();
    if (!l.empty()) {
      Core& lc = core(l);
      why += "; leader " + l + " term " + std::to_string(lc.term()) + " commit " + std::to_string(lc.commit_index()) +
             " last " + std::to_string(lc.last_index()) + " config@" + std::to_string(lc.config_index()) + " " +
             describe_config(lc.config());
      for (const auto& [id, pr] : lc.progress())
        why += "; " + id + ": state " + std::to_string(int(pr.state)) + " match " + std::to_string(pr.match) +
               " next " + std::to_string(pr.next) + " inflight " + std::to_string(pr.inflight.size()) +
               " up " + std::to_string(nodes_.at(id).up) + " last " +
               (nodes_.at(id).up ? std::to_string(core(id).last_index()) : "-");
    }
    throw Violation("no convergence within " + std::to_string(ticks) + " ticks after healing: " + why);
  }

  std::string convergence_problem() {
    NodeId l = leader();
    if (l.empty()) return "no leader";
    Core& lc = core(l);
    if (!lc.leader_ready()) return "leader " + l + " not ready";
    if (lc.config_index() > lc.commit_index()) return "configuration change pending";
    if (lc.commit_index() != lc.last_index()) return "leader " + l + " has entries not committed yet";
    for (const auto& m : lc.config().members) {
      SimNode& n = nodes_.at(m.id);
      if (!n.up) return m.id + " down";
      Core& c = *n.core;
      if (m.server_id != n.server_id && !m.server_id.empty()) return m.id + " is a stranger";
      if (m.id != l && c.role() == Role::Leader) return "two leaders";
      if (c.term() != lc.term() || c.leader() != l) return m.id + " does not follow " + l;
      if (c.last_index() != lc.last_index() || c.last_term() != lc.last_term())
        return m.id + " log differs";
      if (c.commit_index() != lc.commit_index()) return m.id + " commit differs";
      if (n.applied != c.commit_index()) return m.id + " has not applied everything";
    }
    for (const auto& [id, n] : nodes_)
      if (!n.retired && !lc.config().contains(id)) return id + " is not a member";
    return "";
  }

 private:
  struct Event {
    enum Kind { Tick, Deliver, Persist, Forward } kind;
    NodeId node;
    std::uint64_t generation;
    Message message;
    std::string forward;  // Forward: the wrapped payload for the leader to propose
  };
  struct Pending {
    std::uint64_t term;
    std::string payload;
  };
  struct ReadRecord {
    NodeId node;
    std::uint64_t generation;
    std::uint64_t commit_at_issue;
    // The largest time of the reads completed before this one was issued, by confirming term.
    std::map<std::uint64_t, std::int64_t> earlier_times;
  };
  using Identity = std::pair<NodeId, std::string>;  // (node id, server id): one disk
  struct LeaderClaim {
    Configuration config;  // the configuration it was elected in
    bool verified = false;
  };

  void schedule(std::uint64_t at, Event ev) { events_.emplace(std::make_pair(at, ++event_seq_), std::move(ev)); }

  static std::string describe(const Message& m) { return transcript::describe(m); }

  // The bound on how far one leader's clock may be behind another's, or its own earlier
  // reading: the spread of every offset any node's clock has had (jumps included).
  void note_clock_spread() {
    for (const auto& [id, n] : nodes_) {
      min_offset_ = std::min(min_offset_, n.clock_offset);
      max_offset_ = std::max(max_offset_, n.clock_offset);
    }
    clock_spread_ = max_offset_ - min_offset_;
  }

  void start(SimNode& n) {
    // What the disk holds now must still hold everything this disk acknowledged.
    check_acknowledged_entries(n);
    CoreOptions o = opts_.core;
    o.id = n.id;
    o.server_id = n.server_id;
    o.random_seed = rng_.next();
    CoreState st;
    st.hard_state = n.disk.hs;
    st.snapshot = n.disk.snapshot;
    st.initial_config = n.disk.initial_config;
    std::uint64_t snap_index = n.disk.snapshot ? n.disk.snapshot->meta.index : 0;
    for (const auto& e : n.disk.log)
      if (e.index > snap_index) st.entries.push_back(e);
    // The state machine comes back from the snapshot; the mirror from the disk.
    n.applied = snap_index;
    n.sm_chain = n.disk.snapshot ? snapshot_chain(*n.disk.snapshot) : 0;
    n.applied_stamp = n.disk.snapshot ? n.disk.snapshot->meta.timestamp_ms : 0;
    n.sessions = n.disk.snapshot ? snapshot_sessions(*n.disk.snapshot) : raft::detail::SessionTable();
    n.forward_nonce = ++forward_nonces_;  // a new run: a new session
    n.forward_seq = 0;
    n.forwards.clear();
    if (n.disk.snapshot) check_state(n, "restart from snapshot");
    n.mirror_start = snap_index;
    n.mirror.assign(1, n.sm_chain);
    n.mirror_terms.assign(1, n.disk.snapshot ? n.disk.snapshot->meta.term : 0);
    for (const auto& e : st.entries) {
      n.mirror.push_back(chain_hash(n.mirror.back(), e));
      n.mirror_terms.push_back(e.term);
    }
    n.core = std::make_unique<Core>(o, std::move(st));
    n.up = true;
    n.last_term = n.core->term();
    n.last_commit = n.core->commit_index();
    auto sent = sent_terms_.find(Identity{n.id, n.server_id});
    if (sent != sent_terms_.end() && n.core->term() < sent->second)
      throw Violation("durability: " + n.id + " restarts in term " + std::to_string(n.core->term()) +
                      " after sending messages in term " + std::to_string(sent->second));
    schedule(now_ + 1 + rng_.below(kTick), Event{Event::Tick, n.id, n.generation, {}, {}});
    process(n);
  }

  // The simulated state machine's snapshot: "applied:chain|clock,stamp|sessions", the session
  // table's clock (session time, last stamp) and sessions as the store writes them into a real
  // snapshot.
  static std::uint64_t snapshot_chain(const Snapshot& s) { return std::stoull(s.data.substr(s.data.find(':') + 1)); }
  static raft::detail::SessionTable snapshot_sessions(const Snapshot& s) {
    raft::detail::SessionTable t;
    const std::size_t bar = s.data.find('|');
    if (bar == std::string::npos) return t;
    const std::size_t comma = s.data.find(',', bar), bar2 = s.data.find('|', bar + 1);
    if (comma == std::string::npos || bar2 == std::string::npos)
      throw Violation("harness: snapshot data without a session clock: " + s.data.substr(0, 200));
    raft::detail::LiteralReader r(std::string_view(s.data).substr(bar2 + 1));
    if (!t.read(r)) throw Violation("harness: snapshot sessions do not read back: " + r.error());
    t.set_clock(std::stoll(s.data.substr(bar + 1, comma - bar - 1)), std::stoll(s.data.substr(comma + 1, bar2 - comma - 1)));
    return t;
  }

  // The wrapped forward the leader appends: "fwd node server_id nonce seq lowest payload".
  void send_forward(const SimNode& n, std::uint64_t seq) {
    const NodeId to = n.core->leader();
    const std::string wrapped = "fwd " + n.id + " " + n.server_id + " " + std::to_string(n.forward_nonce) + " " +
                                std::to_string(seq) + " " + std::to_string(n.forwards.begin()->first) + " " +
                                n.forwards.at(seq);
    trace_line("forward " + wrapped + " to " + to);
    if (cut_.count({n.id, to}) || rng_.chance(opts_.loss)) return;
    int copies = rng_.chance(opts_.duplicate) ? 2 : 1;
    for (int i = 0; i < copies; ++i)
      schedule(now_ + rng_.range(opts_.min_delay, 4 * opts_.max_delay), Event{Event::Forward, to, 0, {}, wrapped});
  }

  // A forwarded write applied: the session table decides whether it runs, as the runtime's
  // apply does; it must run at most once, at the same index on every node.
  void apply_forward(SimNode& n, const LogEntry& e) {
    std::istringstream in(e.payload);
    std::string tag, payload;
    raft::detail::SessionTable::Key key;
    std::uint64_t seq = 0, lowest = 0;
    in >> tag >> key.node >> key.server_id >> key.nonce >> seq >> lowest >> payload;
    std::string reply;
    const auto verdict = n.sessions.begin(key, seq, lowest, e.timestamp_ms, reply);
    if (verdict == raft::detail::SessionTable::Verdict::Apply) {
      n.sessions.record(key, seq, "ran at " + std::to_string(e.index));
      auto [it, fresh] = forward_runs_.emplace(std::make_tuple(key.node, key.server_id, key.nonce, seq), e.index);
      if (!fresh && it->second != e.index)
        throw Violation("forwards: " + payload + " (seq " + std::to_string(seq) + " of " + key.node + ") ran at " +
                        std::to_string(it->second) + " and again at " + std::to_string(e.index) + " on " + n.id);
    }
    // The forwarding node learns its answer when it applies the entry itself.
    if (key.node == n.id && key.server_id == n.server_id && key.nonce == n.forward_nonce) n.forwards.erase(seq);
  }

  // Every message a node sends passes here, at the moment it leaves the node.
  void send(const SimNode::Outgoing& o) {
    const Message& m = o.message;
    if (trace) trace_line("send " + describe(m));
    SimNode& from = nodes_.at(m.from);
    // The term a message carries must be on the sender's disk (a pre-vote asks about the next
    // term and a pre-vote grant echoes it: their own term is the one before).
    const bool prospective = m.type == MessageType::PreVote || (m.type == MessageType::PreVoteResponse && !m.reject);
    const std::uint64_t own_term =
        m.type == MessageType::PreVote ? m.term - opts_.core.term_step : prospective ? 0 : m.term;
    if (own_term > from.disk.hs.term)
      throw Violation("durability: " + m.from + " sends " + to_string(m.type) + " in term " +
                      std::to_string(own_term) + " while its disk holds term " + std::to_string(from.disk.hs.term));
    std::uint64_t& sent = sent_terms_[Identity{m.from, from.server_id}];
    sent = std::max(sent, own_term);
    // A leader's first visible act in its term: it must hold a majority of durable votes.
    if (from.core && from.core->role() == Role::Leader && m.term == from.core->term()) verify_leader(from, m.term);
    // An acknowledgement promises entries on disk: remember them, to check after crashes. (A
    // later batch of the same group may have cut them since - a leader of a later term - and
    // the acknowledgement still leaves, as it might have been delayed in the network: then it
    // is no promise about this disk any more.)
    if (is_acknowledgement(m)) {
      const std::uint64_t t = from.disk_term(m.index);
      if (t != 0 && (o.ack_term == 0 || t == o.ack_term)) acknowledged_[Identity{m.from, from.server_id}][m.index] = t;
    }
    for (std::size_t i = 0; i < m.entries.size(); ++i) record_entry(from, m.entries[i], o.hashes[i]);
    // A handful of nodes keeps a few hundred messages in flight; far more is a feedback loop
    // (answers that each cause several more messages) that would only end in exhaustion.
    if (events_.size() > kMaxEvents)
      throw Violation("a message storm: " + std::to_string(events_.size()) + " events pending, the last " +
                      describe(m));
    if (cut_.count({m.from, m.to}) || rng_.chance(opts_.loss)) return;
    int copies = rng_.chance(opts_.duplicate) ? 2 : 1;
    for (int i = 0; i < copies; ++i)
      schedule(now_ + rng_.range(opts_.min_delay, opts_.max_delay), Event{Event::Deliver, m.to, 0, m, {}});
  }

  void persist_some(SimNode& n) {
    // Group commit: sometimes one batch, sometimes everything waiting.
    std::size_t count = rng_.chance(0.5) ? n.unpersisted.size() : 1;
    std::uint64_t last_seq = 0;
    std::vector<SimNode::Outgoing> to_send;
    std::vector<std::shared_ptr<Snapshot>> loaded;
    std::vector<std::string> load_problems;
    for (std::size_t k = 0; k < count && !n.unpersisted.empty(); ++k) {
      SimNode::Unpersisted u = std::move(n.unpersisted.front());
      n.unpersisted.pop_front();
      if (u.batch.snapshot && rng_.chance(opts_.crash_in_snapshot_install)) {
        // The storage made the snapshot durable and dropped the log; what the batch holds
        // besides (a hard state, entries after it) is lost with the crash.
        PersistBatch partial;
        partial.snapshot = u.batch.snapshot;
        write_to_disk(n, partial);
        trace_line("crash of " + n.id + " inside a snapshot install");
        crash(n.id);
        return;
      }
      write_to_disk(n, u.batch);
      for (const auto& o : u.after) check_promise_durable(n, o);
      // Durable: its entries now exist beyond this node's memory, and its vote is a promise.
      for (std::size_t i = 0; i < u.batch.entries.size(); ++i) record_entry(n, u.batch.entries[i], u.hashes[i]);
      if (u.batch.hard_state) record_vote(n, *u.batch.hard_state);
      last_seq = u.batch.seq;
      for (auto& m : u.after) to_send.push_back(std::move(m));
      if (u.received) {
        // As Storage::load_received_snapshot: the file read back must be what arrived.
        auto snap = std::make_shared<Snapshot>();
        snap->meta = u.received->meta;
        const auto& in = n.disk.incoming;
        std::string problem;
        if (!in || !in->intact || in->index != snap->meta.index || in->term != snap->meta.term)
          problem = "its chunks did not all reach the incoming file";
        else if (in->data.size() != u.received->size ||
                 raft::detail::crc32c(in->data.data(), in->data.size()) != u.received->crc32c)
          problem = "the incoming file is not what arrived";
        else
          snap->data = in->data;
        loaded.push_back(std::move(snap));
        load_problems.push_back(std::move(problem));
      }
    }
    for (const auto& o : to_send) send(o);
    if (last_seq) n.core->persisted(last_seq);
    for (std::size_t i = 0; i < loaded.size(); ++i) n.core->received_snapshot_loaded(loaded[i], load_problems[i]);
    if (!n.unpersisted.empty()) schedule_persist(n);
    process(n);
  }

  void schedule_persist(SimNode& n) {
    if (n.persist_scheduled) return;
    n.persist_scheduled = true;
    auto slow = opts_.slow_disks.find(n.id);
    const std::uint64_t delay = slow != opts_.slow_disks.end() ? slow->second : 1 + rng_.below(opts_.max_persist_delay);
    schedule(now_ + delay, Event{Event::Persist, n.id, n.generation, {}, {}});
  }

  // The disk's view of a batch, and what it does to the entries this disk acknowledged.
  void write_to_disk(SimNode& n, const PersistBatch& b) {
    Disk& d = n.disk;
    auto& acked = acknowledged_[Identity{n.id, n.server_id}];
    if (b.snapshot) {
      const SnapshotMeta& meta = b.snapshot->meta;
      // Entries after the snapshot's index were acknowledged either on the branch the snapshot
      // continues (the log holds its last entry) - those must survive - or on a branch that
      // conflicts with it, which may go.
      if (n.disk_term(meta.index) != meta.term) acked.erase(acked.upper_bound(meta.index), acked.end());
      acked.erase(acked.begin(), acked.upper_bound(meta.index));
      d.snapshot = b.snapshot;
      d.log.clear();
    }
    for (const auto& c : b.snapshot_chunks) {
      if (c.offset == 0) d.incoming = Disk::Incoming{c.index, c.term, {}, true};
      const bool next = d.incoming && c.index == d.incoming->index && c.term == d.incoming->term &&
                        c.offset == d.incoming->data.size();
      if (next)
        d.incoming->data += c.data;
      else if (d.incoming)
        d.incoming->intact = false;
    }
    if (b.hard_state) d.hs = *b.hard_state;
    if (!b.entries.empty()) {
      std::uint64_t first = b.entries.front().index;
      // A conflicting suffix cut by a leader: what was acknowledged there was never committed.
      if (!d.log.empty() && d.log.back().index >= first) acked.erase(acked.lower_bound(first), acked.end());
      while (!d.log.empty() && d.log.back().index >= first) d.log.pop_back();
      std::uint64_t expect = d.log.empty() ? (d.snapshot ? d.snapshot->meta.index + 1 : first) : d.log.back().index + 1;
      if (first != expect)
        throw Violation("harness: batch starts at " + std::to_string(first) + ", disk expects " + std::to_string(expect));
      for (const auto& e : b.entries) d.log.push_back(e);
    }
  }

  void check_acknowledged_entries(const SimNode& n) {
    auto it = acknowledged_.find(Identity{n.id, n.server_id});
    if (it == acknowledged_.end()) return;
    const std::uint64_t snap = n.disk.snapshot ? n.disk.snapshot->meta.index : 0;
    for (const auto& [index, term] : it->second) {
      if (index <= snap) continue;
      if (n.disk_term(index) != term)
        throw Violation("durability: " + n.id + " acknowledged entry " + std::to_string(index) + " of term " +
                        std::to_string(term) + " but its disk no longer holds it after a crash");
    }
  }

  void handle_ready(SimNode& n, Ready& rd) {
    if (rd.persist.seq != 0) {
      std::vector<std::uint64_t> hashes = mirror_batch(n, rd.persist);
      std::vector<SimNode::Outgoing> after;
      for (auto& m : rd.after_persist) after.push_back(outgoing(n, std::move(m)));
      n.unpersisted.push_back(SimNode::Unpersisted{rd.persist, std::move(hashes), std::move(after), rd.received_snapshot});
      schedule_persist(n);
    }
    check_mirror(n);
    check_node(n);  // the mirror now matches the core's log
    for (auto& m : rd.messages) {
      SimNode::Outgoing o = outgoing(n, std::move(m));
      check_promise_durable(n, o);
      send(o);
    }
    for (const auto& rc : rd.role_changes) {
      trace_line(n.id + " becomes " + std::string(1, raft::role_char(rc.role, true)) + " term " +
                 std::to_string(rc.term) + " leader " + rc.leader);
      if (rc.role == Role::Leader) on_new_leader(n, rc.term);
    }
    if (rd.restore) {
      // Proposals of this node that the snapshot covers are decided in it, which way this node
      // cannot tell: the runtime answers them "outcome unknown".
      auto p = pending_.find(n.id);
      if (p != pending_.end())
        while (!p->second.empty() && p->second.begin()->first <= rd.restore->meta.index) {
          record_outcome(n, EntryId{p->second.begin()->first, p->second.begin()->second.term}, "covered by a snapshot");
          p->second.erase(p->second.begin());
        }
      n.applied = rd.restore->meta.index;
      n.sm_chain = snapshot_chain(*rd.restore);
      n.sessions = snapshot_sessions(*rd.restore);
      check_state(n, "snapshot restore");
      if (rd.restore->meta.timestamp_ms < n.applied_stamp)
        throw Violation("time: the snapshot restored on " + n.id + " carries " +
                        std::to_string(rd.restore->meta.timestamp_ms) + " after entries stamped " +
                        std::to_string(n.applied_stamp));
      n.applied_stamp = rd.restore->meta.timestamp_ms;
    }
    for (const auto& e : rd.committed) apply(n, e);
    for (const auto& id : rd.aborted) {
      record_outcome(n, id, "aborted");
      auto p = pending_.find(n.id);
      if (p != pending_.end()) {
        auto it = p->second.find(id.index);
        if (it != p->second.end() && it->second.term == id.term) p->second.erase(it);
      }
    }
    for (const auto& r : rd.reads) {
      auto it = reads_.find(r.request_id);
      if (it == reads_.end()) continue;
      if (it->second.node != n.id || it->second.generation != n.generation)
        throw Violation("reads: the result of read " + std::to_string(r.request_id) + " issued on " +
                        it->second.node + " reached " + n.id);
      if (!r.ok) {
        reads_.erase(it);
        continue;
      }
      n.reads_waiting.push_back(SimNode::WaitingRead{r.index, r.request_id, r.time_ms, r.term});
    }
    serve_reads(n);
    if (rd.snapshot_wanted) take_snapshot(n);
  }

  void take_snapshot(SimNode& n) {
    for (const auto& u : n.unpersisted)
      if (u.batch.snapshot) return;  // a leader's snapshot is being installed
    auto s = std::make_shared<Snapshot>();
    s->meta.index = n.applied;
    s->meta.term = n.core->term_at(n.applied);
    s->meta.config = n.core->config_at(n.applied);
    s->meta.timestamp_ms = n.applied_stamp;
    s->data = std::to_string(n.applied) + ":" + std::to_string(n.sm_chain) + "|" +
              std::to_string(n.sessions.clock_ms()) + "," + std::to_string(n.sessions.last_stamp_ms()) + "|";
    n.sessions.write(s->data);
    if (n.disk.snapshot && n.disk.snapshot->meta.index >= s->meta.index) return;
    std::uint64_t to = n.core->compact(s);
    n.disk.snapshot = s;
    while (!n.disk.log.empty() && n.disk.log.front().index <= to) n.disk.log.erase(n.disk.log.begin());
    trace_line(n.id + " snapshot at " + std::to_string(s->meta.index) + ", log from " + std::to_string(to + 1));
  }

  SimNode::Outgoing outgoing(const SimNode& n, Message m) {
    SimNode::Outgoing o{std::move(m), {}, 0};
    for (const auto& e : o.message.entries) o.hashes.push_back(n.mirror_at(e.index));
    const Message& a = o.message;
    if (is_acknowledgement(a) && a.index > n.mirror_start && a.index <= n.mirror_last())
      o.ack_term = n.mirror_term(a.index);
    return o;
  }

  static bool is_acknowledgement(const Message& m) {
    return (m.type == MessageType::AppendResponse && !m.reject && m.index > 0) ||
           (m.type == MessageType::SnapshotResponse && m.done && !m.reject);
  }

  // A promise leaves only once what it promises is on the sender's disk: a vote granted is the
  // durable vote, an acknowledged entry is the durable entry (or covered by the snapshot).
  void check_promise_durable(const SimNode& n, const SimNode::Outgoing& o) {
    const Message& m = o.message;
    if (m.type == MessageType::VoteResponse && !m.reject && !(n.disk.hs.term == m.term && n.disk.hs.vote == m.to))
      throw Violation("durability: " + m.from + " grants its vote in term " + std::to_string(m.term) + " to " + m.to +
                      " before that vote is on its disk");
    const std::uint64_t snap = n.disk.snapshot ? n.disk.snapshot->meta.index : 0;
    if (o.ack_term != 0 && m.index > snap && n.disk_term(m.index) != o.ack_term)
      throw Violation("durability: " + m.from + " acknowledges entry " + std::to_string(m.index) + " of term " +
                      std::to_string(o.ack_term) + " while its disk holds term " +
                      std::to_string(n.disk_term(m.index)) + " there");
  }

  /// Log matching, checked for every entry that leaves a node's memory (on its disk or in a
  /// message): one history per (index, term). An entry made and lost in a crash before it left
  /// is no promise, and a restarted node may make another in its place.
  void record_entry(const SimNode& n, const LogEntry& e, std::uint64_t hash) {
    auto [it, fresh] = entries_.emplace(std::make_pair(e.index, e.term), hash);
    if (!fresh && it->second != hash)
      throw Violation("log matching: " + n.id + " holds (" + std::to_string(e.index) + ", " +
                      std::to_string(e.term) + ") with a different history than another node");
  }

  /// Mirrors a batch handed to the disk; returns the chain hash of each of its entries.
  std::vector<std::uint64_t> mirror_batch(SimNode& n, const PersistBatch& b) {
    std::vector<std::uint64_t> hashes;
    if (b.snapshot) {
      std::uint64_t idx = b.snapshot->meta.index;
      std::uint64_t chain = snapshot_chain(*b.snapshot);
      if (idx >= committed_.size() || committed_[idx] != chain)
        throw Violation("snapshot sent to " + n.id + " at " + std::to_string(idx) + " is not the committed state");
      n.mirror_start = idx;
      n.mirror.assign(1, chain);
      n.mirror_terms.assign(1, b.snapshot->meta.term);
    }
    for (const auto& e : b.entries) {
      if (e.index <= n.mirror_start) throw Violation("harness: entry below mirror start");
      if (e.index <= n.mirror_last()) {
        n.mirror.resize(static_cast<std::size_t>(e.index - n.mirror_start));
        n.mirror_terms.resize(n.mirror.size());
      }
      if (e.index != n.mirror_last() + 1) throw Violation("log gap on " + n.id + " at " + std::to_string(e.index));
      std::uint64_t h = chain_hash(n.mirror.back(), e);
      n.mirror.push_back(h);
      n.mirror_terms.push_back(e.term);
      hashes.push_back(h);
    }
    return hashes;
  }

  // What was handed to the disk is the core's log: same last entry, same terms where both hold
  // entries (checked at both ends and in the middle).
  void check_mirror(SimNode& n) {
    const Core& c = *n.core;
    if (n.mirror_last() != c.last_index())
      throw Violation("mirror: " + n.id + " handed its disk a log ending at " + std::to_string(n.mirror_last()) +
                      " but its log ends at " + std::to_string(c.last_index()));
    const std::uint64_t lo = std::max(n.mirror_start, c.first_index() - 1);
    const std::uint64_t hi = c.last_index();
    if (hi < lo) return;
    for (std::uint64_t i : {lo, hi, lo + (hi - lo) / 2})
      if (n.mirror_term(i) != c.term_at(i))
        throw Violation("mirror: " + n.id + " handed its disk term " + std::to_string(n.mirror_term(i)) + " at " +
                        std::to_string(i) + " but its log holds term " + std::to_string(c.term_at(i)));
  }

  std::string describe_config(const Configuration& c) {
    std::string s;
    for (const auto& m : c.members) s += m.id + (m.voter ? "" : "(learner)") + "[" + m.server_id + "] ";
    return s;
  }

  /// Every durable vote is a promise: one candidate per (node identity, term).
  void record_vote(const SimNode& n, const HardState& hs) {
    if (hs.vote.empty()) return;
    auto [it, fresh] = votes_.emplace(std::make_tuple(n.id, n.server_id, hs.term), hs.vote);
    if (!fresh && it->second != hs.vote)
      throw Violation("election safety: " + n.id + " voted for " + it->second + " and " + hs.vote + " in term " +
                      std::to_string(hs.term));
  }

  void on_new_leader(SimNode& n, std::uint64_t term) {
    trace_line(n.id + " leads term " + std::to_string(term) + " with config " + describe_config(n.core->config()) +
               " at index " + std::to_string(n.core->config_index()));
    auto [it, fresh] = leaders_.emplace(term, n.id);
    if (!fresh && it->second != n.id)
      throw Violation("election safety: " + it->second + " and " + n.id + " both lead term " + std::to_string(term));
    claims_[std::make_pair(n.id, term)] = LeaderClaim{n.core->config(), false};
    // Leader completeness: everything committed so far is in the new leader's log.
    std::uint64_t c = max_commit();
    if (n.mirror_last() < c)
      throw Violation("leader completeness: " + n.id + " leads term " + std::to_string(term) +
                      " without committed entry " + std::to_string(c));
    if (c >= n.mirror_start && n.mirror_at(c) != committed_[c])
      throw Violation("leader completeness: " + n.id + " leads term " + std::to_string(term) +
                      " with a log that differs from the committed one at " + std::to_string(c));
  }

  /// A leader holds the durable votes of a majority of the voters it was elected by - its own
  /// vote counted from its disk like the others' - before anything it does in its term shows.
  void verify_leader(const SimNode& n, std::uint64_t term) {
    auto it = claims_.find(std::make_pair(n.id, term));
    if (it == claims_.end() || it->second.verified) return;
    const Configuration& cfg = it->second.config;
    std::size_t granted = 0;
    for (const auto& m : cfg.members) {
      if (!m.voter) continue;
      const std::string sid = m.server_id.empty() ? nodes_.at(m.id).server_id : m.server_id;
      auto v = votes_.find(std::make_tuple(m.id, sid, term));
      if (v != votes_.end() && v->second == n.id) ++granted;
    }
    if (granted < cfg.voter_count() / 2 + 1)
      throw Violation("election safety: " + n.id + " acts as leader of term " + std::to_string(term) + " with " +
                      std::to_string(granted) + " durable votes of " + std::to_string(cfg.voter_count()) + " voters");
    it->second.verified = true;
  }

  void check_node(SimNode& n) {
    if (!n.up) return;
    Core& c = *n.core;
    if (c.term() < n.last_term) throw Violation(n.id + " term went backwards");
    n.last_term = c.term();
    if (c.role() == Role::Leader) {
      auto it = leaders_.find(c.term());
      if (it == leaders_.end()) on_new_leader(n, c.term());
      else if (it->second != n.id)
        throw Violation("election safety: " + it->second + " and " + n.id + " both lead term " + std::to_string(c.term()));
    }
    std::uint64_t ci = c.commit_index();
    if (ci < n.last_commit)
      throw Violation(n.id + " commit index went back from " + std::to_string(n.last_commit) + " to " + std::to_string(ci));
    n.last_commit = ci;
    if (c.role() == Role::Leader && ci > 0 && c.term_at(ci) == c.term()) verify_leader(n, c.term());
    if (ci > n.mirror_last()) throw Violation(n.id + " commit index beyond its log");
    if (ci < n.mirror_start) return;
    if (ci < committed_.size()) {
      if (n.mirror_at(ci) != committed_[ci])
        throw Violation("state machine safety: " + n.id + " committed a different entry at " + std::to_string(ci));
      return;
    }
    std::uint64_t from = committed_.size() - 1;
    if (from < n.mirror_start)
      throw Violation("harness: " + n.id + " commits " + std::to_string(ci) + " from a snapshot beyond the known commit");
    if (n.mirror_at(from) != committed_[from])
      throw Violation("state machine safety: " + n.id + " commits on top of a different history at " + std::to_string(from));
    for (std::uint64_t i = from + 1; i <= ci; ++i) committed_.push_back(n.mirror_at(i));
  }

  void check_state(SimNode& n, const char* what) {
    if (n.applied >= committed_.size() || committed_[n.applied] != n.sm_chain)
      throw Violation(std::string("state machine safety: ") + what + " on " + n.id + " at " +
                      std::to_string(n.applied) + " is not the committed state");
  }

  /// One outcome per proposal: applied where it was proposed, or aborted (unknown), not both.
  void record_outcome(const SimNode& n, const EntryId& id, const char* outcome) {
    auto [it, fresh] = outcomes_.emplace(std::make_tuple(n.id, n.generation, id.index, id.term), outcome);
    if (!fresh)
      throw Violation("proposals: (" + std::to_string(id.index) + ", " + std::to_string(id.term) + ") on " + n.id +
                      " was " + it->second + " and then " + outcome);
  }

  void apply(SimNode& n, const LogEntry& e) {
    if (e.index != n.applied + 1)
      throw Violation(n.id + " applies " + std::to_string(e.index) + " after " + std::to_string(n.applied));
    if (e.timestamp_ms < n.applied_stamp)
      throw Violation("time: " + n.id + " applies entry " + std::to_string(e.index) + " stamped " +
                      std::to_string(e.timestamp_ms) + " after one stamped " + std::to_string(n.applied_stamp));
    n.applied = e.index;
    n.applied_stamp = e.timestamp_ms;
    n.sm_chain = chain_hash(n.sm_chain, e);
    check_state(n, "apply");
    if (e.type == EntryType::Command && e.payload.compare(0, 4, "fwd ") == 0) {
      apply_forward(n, e);  // a forward may be appended twice: the session table keeps it once
    } else if (e.type == EntryType::Command) {
      auto [it, fresh] = applied_payloads_.emplace(e.payload, e.index);
      if (!fresh && it->second != e.index)
        throw Violation("proposals: " + e.payload + " applied at " + std::to_string(it->second) + " and at " +
                        std::to_string(e.index));
    }
    auto p = pending_.find(n.id);
    if (p != pending_.end()) {
      auto it = p->second.find(e.index);
      if (it != p->second.end()) {
        if (it->second.term == e.term) {
          if (e.payload != it->second.payload)
            throw Violation("acknowledged proposal " + it->second.payload + " applied as " + e.payload);
          record_outcome(n, EntryId{e.index, e.term}, "applied");
          ++acked_count_;
          acked_[e.index] = e.payload;
        }
        p->second.erase(it);
      }
    }
    auto a = acked_.find(e.index);
    if (a != acked_.end() && a->second != e.payload)
      throw Violation("acknowledged " + a->second + " at " + std::to_string(e.index) + " but " + n.id + " applied " + e.payload);
    serve_reads(n);
  }

  void serve_reads(SimNode& n) {
    for (auto it = n.reads_waiting.begin(); it != n.reads_waiting.end();) {
      if (n.applied < it->index) {
        ++it;
        continue;
      }
      auto r = reads_.find(it->request_id);
      if (r != reads_.end()) {
        // The read sees the state at n.applied: it must include every commit made before it
        // was issued.
        if (n.applied < r->second.commit_at_issue)
          throw Violation("linearizability: read on " + n.id + " served at " + std::to_string(n.applied) +
                          " but " + std::to_string(r->second.commit_at_issue) + " was committed when it was issued");
        // It judges expiry at the leader's time, or the last stamp applied here if later.
        const std::int64_t time = std::max(it->time_ms, n.applied_stamp);
        for (const auto& [term, earlier] : r->second.earlier_times) {
          // Across leaders: by the clocks' skew, and a tick (a core reads its clock per tick).
          const std::int64_t allowed =
              term == it->term ? earlier : earlier - clock_spread_ - static_cast<std::int64_t>(kTick);
          if (time < allowed)
            throw Violation("time: a read on " + n.id + " confirmed in term " + std::to_string(it->term) +
                            " judges expiry at " + std::to_string(time) + ", before " + std::to_string(earlier) +
                            " of a read that completed earlier (term " + std::to_string(term) + ", clock skew " +
                            std::to_string(clock_spread_) + ")");
        }
        std::int64_t& best = completed_read_times_[it->term];
        best = std::max(best, time);
        ++reads_ok_;
        reads_.erase(r);
      }
      it = n.reads_waiting.erase(it);
    }
  }

  Rng rng_;
  Options opts_;
  std::uint64_t seed_;
  std::uint64_t now_ = 0;
  std::uint64_t event_seq_ = 0;
  std::map<std::pair<std::uint64_t, std::uint64_t>, Event> events_;
  std::map<NodeId, SimNode> nodes_;
  std::set<std::pair<NodeId, NodeId>> cut_;
  std::int64_t min_offset_ = 0, max_offset_ = 0;
  std::int64_t clock_spread_ = 0;  // max_offset_ - min_offset_
  // checkers
  std::map<std::uint64_t, NodeId> leaders_;
  std::map<std::pair<NodeId, std::uint64_t>, LeaderClaim> claims_;
  std::map<std::tuple<NodeId, std::string, std::uint64_t>, NodeId> votes_;  // (node, server id, term) -> vote
  std::map<Identity, std::uint64_t> sent_terms_;                            // highest term sent
  std::map<Identity, std::map<std::uint64_t, std::uint64_t>> acknowledged_;  // index -> term
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::uint64_t> entries_;
  std::vector<std::uint64_t> committed_{0};
  std::map<NodeId, std::map<std::uint64_t, Pending>> pending_;
  std::map<std::tuple<NodeId, std::uint64_t, std::uint64_t, std::uint64_t>, std::string> outcomes_;
  std::map<std::string, std::uint64_t> applied_payloads_;
  std::map<std::tuple<NodeId, std::string, std::uint64_t, std::uint64_t>, std::uint64_t> forward_runs_;  // -> index
  std::uint64_t forward_nonces_ = 0;
  std::map<std::uint64_t, std::string> acked_;
  std::map<std::uint64_t, ReadRecord> reads_;
  std::map<std::uint64_t, std::int64_t> completed_read_times_;  // confirming term -> latest time
  std::uint64_t proposal_counter_ = 0;
  std::uint64_t read_counter_ = 0;
  std::uint64_t acked_count_ = 0;
  std::uint64_t reads_ok_ = 0;
};

}  // namespace sim
