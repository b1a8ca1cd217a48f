// A simulated cluster of raft::Core instances over a seeded, hostile network: delays,
// loss, duplication, reordering, partitions (symmetric and one-way), crashes that lose
// everything not yet durable, restarts, wiped disks, joins, removals and snapshots.
//
// After every step it checks Raft's invariants incrementally:
//   - election safety: at most one leader per term;
//   - log matching: two logs holding an entry with the same index and term hold the same
//     entries up to it (every log is mirrored as a hash chain, compared through a global map);
//   - leader completeness: a new leader holds every entry committed so far;
//   - state machine safety: every node applies exactly the committed sequence;
//   - acknowledged proposals are applied where they were acknowledged;
//   - a successful linearizable read reflects at least the commit index of the moment it
//     was issued.
// A violation throws sim::Violation; the seed replays it exactly.
#pragma once

#include "raft.hpp"

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
  std::uint64_t min_delay = 1, max_delay = 8;  // in time units (a tick is 10)
  std::uint64_t max_persist_delay = 6;
  CoreOptions core;          // id, server_id and random_seed are set per node
};

/// What a node has on its simulated disk.
struct Disk {
  HardState hs;
  std::shared_ptr<const Snapshot> snapshot;
  std::vector<LogEntry> log;  // by index, contiguous
  Configuration initial_config;
};

struct SimNode {
  NodeId id;
  std::string server_id;
  bool up = false;
  bool retired = false;  // removed from the cluster on purpose
  std::uint64_t generation = 0;
  std::unique_ptr<Core> core;
  Disk disk;
  struct Unpersisted {
    PersistBatch batch;
    std::vector<Message> after;
  };
  std::deque<Unpersisted> unpersisted;
  bool persist_scheduled = false;
  // The core's log as a hash chain: mirror[k] is the chain up to index mirror_start + k.
  std::uint64_t mirror_start = 0;
  std::vector<std::uint64_t> mirror{0};
  // The state machine: how far it applied and the hash chain of what it applied.
  std::uint64_t applied = 0;
  std::uint64_t sm_chain = 0;
  std::uint64_t last_term = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> reads_waiting;  // (index, request id)

  std::uint64_t mirror_last() const { return mirror_start + mirror.size() - 1; }
  std::uint64_t mirror_at(std::uint64_t i) const { return mirror[static_cast<std::size_t>(i - mirror_start)]; }
};

class Cluster {
 public:
  static constexpr std::uint64_t kTick = 10;  // time units per tick
  static constexpr std::size_t kMaxOutstanding = 32;

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
  void heal() { cut_.clear(); }

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
        n.core->tick(static_cast<std::int64_t>(now_));
        process(n);
        schedule(now_ + kTick - 1 + rng_.below(3), Event{Event::Tick, ev.node, n.generation, {}});
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
    ProposeResult r = n.core->propose(payload, static_cast<std::int64_t>(now_));
    if (!r.ok()) return "";
    pending_[id][r.id.index] = Pending{r.id.term, payload};
    trace_line("propose " + payload + " on " + id + " at " + std::to_string(r.id.index));
    process(n);
    return payload;
  }

  /// Issues a linearizable read on `id`.
  void read(const NodeId& id) {
    SimNode& n = nodes_.at(id);
    if (!n.up) return;
    std::uint64_t rid = ++read_counter_;
    reads_[rid] = ReadRecord{id, n.generation, max_commit()};
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

  /// The node's disk is lost: it comes back empty with a new server id, as a joiner.
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
    ProposeResult r = core(l).add_learner(m, static_cast<std::int64_t>(now_));
    trace_line("join " + id + " via " + l + (r.ok() ? " ok" : " refused"));
    process(nodes_.at(l));
    return r.ok();
  }

  bool remove(const NodeId& id) {
    NodeId l = leader();
    if (l.empty()) return false;
    ProposeResult r = core(l).remove(id, static_cast<std::int64_t>(now_));
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

  /// With the network healed and every node up, within `ticks` one leader leads every member
  /// and every member's log, commit and applied index equal the leader's.
  void check_converges(std::uint64_t ticks) {
    heal();
    opts_.loss = 0;
    opts_.duplicate = 0;
    for (auto& [id, n] : nodes_)
      if (!n.up) restart(id);
    std::uint64_t until = now_ + ticks * kTick;
    std::string why;
    while (now_ < until) {
      run_for(kTick);
      // Joiners and wiped nodes keep asking to join, as the runtime does.
      NodeId l = leader();
      if (!l.empty())
        for (auto& [id, n] : nodes_) {
          const Member* m = core(l).config().find(id);
          if ((m && m->server_id != n.server_id) || (!m && !n.retired)) join(id);
        }
      why = convergence_problem();
      if (why.empty()) return;
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
    enum Kind { Tick, Deliver, Persist } kind;
    NodeId node;
    std::uint64_t generation;
    Message message;
  };
  struct Pending {
    std::uint64_t term;
    std::string payload;
  };
  struct ReadRecord {
    NodeId node;
    std::uint64_t generation;
    std::uint64_t commit_at_issue;
  };

  void schedule(std::uint64_t at, Event ev) { events_.emplace(std::make_pair(at, ++event_seq_), std::move(ev)); }

  static std::string describe(const Message& m) {
    std::ostringstream o;
    o << to_string(m.type) << " " << m.from << "->" << m.to << " t" << m.term << " i" << m.index
      << " lt" << m.log_term << " c" << m.commit << " n" << m.entries.size() << (m.reject ? " reject" : "")
      << " ctx" << m.context;
    return o.str();
  }

  void start(SimNode& n) {
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
    if (n.disk.snapshot) check_state(n, "restart from snapshot");
    n.mirror_start = snap_index;
    n.mirror.assign(1, n.sm_chain);
    for (const auto& e : st.entries) n.mirror.push_back(chain_hash(n.mirror.back(), e));
    n.core = std::make_unique<Core>(o, std::move(st));
    n.up = true;
    n.last_term = n.core->term();
    schedule(now_ + 1 + rng_.below(kTick), Event{Event::Tick, n.id, n.generation, {}});
    process(n);
  }

  static std::uint64_t snapshot_chain(const Snapshot& s) { return std::stoull(s.data.substr(s.data.find(':') + 1)); }

  void send(const Message& m) {
    if (trace) trace_line("send " + describe(m));
    if (cut_.count({m.from, m.to}) || rng_.chance(opts_.loss)) return;
    int copies = rng_.chance(opts_.duplicate) ? 2 : 1;
    for (int i = 0; i < copies; ++i)
      schedule(now_ + rng_.range(opts_.min_delay, opts_.max_delay), Event{Event::Deliver, m.to, 0, m});
  }

  void persist_some(SimNode& n) {
    // Group commit: sometimes one batch, sometimes everything waiting.
    std::size_t count = rng_.chance(0.5) ? n.unpersisted.size() : 1;
    std::uint64_t last_seq = 0;
    std::vector<Message> to_send;
    for (std::size_t k = 0; k < count && !n.unpersisted.empty(); ++k) {
      SimNode::Unpersisted u = std::move(n.unpersisted.front());
      n.unpersisted.pop_front();
      write_to_disk(n.disk, u.batch);
      if (u.batch.hard_state) record_vote(n, *u.batch.hard_state);  // durable: now a promise
      last_seq = u.batch.seq;
      for (auto& m : u.after) to_send.push_back(std::move(m));
    }
    for (const auto& m : to_send) send(m);
    if (last_seq) n.core->persisted(last_seq);
    if (!n.unpersisted.empty()) schedule_persist(n);
    process(n);
  }

  void schedule_persist(SimNode& n) {
    if (n.persist_scheduled) return;
    n.persist_scheduled = true;
    schedule(now_ + 1 + rng_.below(opts_.max_persist_delay), Event{Event::Persist, n.id, n.generation, {}});
  }

  static void write_to_disk(Disk& d, const PersistBatch& b) {
    if (b.snapshot) {
      d.snapshot = b.snapshot;
      d.log.clear();
    }
    if (b.hard_state) d.hs = *b.hard_state;
    if (!b.entries.empty()) {
      std::uint64_t first = b.entries.front().index;
      while (!d.log.empty() && d.log.back().index >= first) d.log.pop_back();
      std::uint64_t expect = d.log.empty() ? (d.snapshot ? d.snapshot->meta.index + 1 : first) : d.log.back().index + 1;
      if (first != expect)
        throw Violation("harness: batch starts at " + std::to_string(first) + ", disk expects " + std::to_string(expect));
      for (const auto& e : b.entries) d.log.push_back(e);
    }
  }

  void handle_ready(SimNode& n, Ready& rd) {
    if (rd.persist.seq != 0) {
      mirror_batch(n, rd.persist);
      n.unpersisted.push_back(SimNode::Unpersisted{rd.persist, std::move(rd.after_persist)});
      schedule_persist(n);
    }
    check_node(n);  // the mirror now matches the core's log
    for (const auto& m : rd.messages) send(m);
    for (const auto& rc : rd.role_changes) {
      trace_line(n.id + " becomes " + std::string(1, raft::role_char(rc.role, true)) + " term " +
                 std::to_string(rc.term) + " leader " + rc.leader);
      if (rc.role == Role::Leader) on_new_leader(n, rc.term);
    }
    if (rd.restore) {
      n.applied = rd.restore->meta.index;
      n.sm_chain = snapshot_chain(*rd.restore);
      check_state(n, "snapshot restore");
    }
    for (const auto& e : rd.committed) apply(n, e);
    for (const auto& id : rd.aborted) {
      auto p = pending_.find(n.id);
      if (p != pending_.end()) {
        auto it = p->second.find(id.index);
        if (it != p->second.end() && it->second.term == id.term) p->second.erase(it);
      }
    }
    for (const auto& r : rd.reads) {
      auto it = reads_.find(r.request_id);
      if (it == reads_.end()) continue;
      if (!r.ok) {
        reads_.erase(it);
        continue;
      }
      n.reads_waiting.emplace_back(r.index, r.request_id);
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
    s->data = std::to_string(n.applied) + ":" + std::to_string(n.sm_chain);
    if (n.disk.snapshot && n.disk.snapshot->meta.index >= s->meta.index) return;
    std::uint64_t to = n.core->compact(s);
    n.disk.snapshot = s;
    while (!n.disk.log.empty() && n.disk.log.front().index <= to) n.disk.log.erase(n.disk.log.begin());
    trace_line(n.id + " snapshot at " + std::to_string(s->meta.index) + ", log from " + std::to_string(to + 1));
  }

  void mirror_batch(SimNode& n, const PersistBatch& b) {
    if (b.snapshot) {
      std::uint64_t idx = b.snapshot->meta.index;
      std::uint64_t chain = snapshot_chain(*b.snapshot);
      if (idx >= committed_.size() || committed_[idx] != chain)
        throw Violation("snapshot sent to " + n.id + " at " + std::to_string(idx) + " is not the committed state");
      n.mirror_start = idx;
      n.mirror.assign(1, chain);
    }
    for (const auto& e : b.entries) {
      if (e.index <= n.mirror_start) throw Violation("harness: entry below mirror start");
      if (e.index <= n.mirror_last()) n.mirror.resize(static_cast<std::size_t>(e.index - n.mirror_start));
      if (e.index != n.mirror_last() + 1) throw Violation("log gap on " + n.id + " at " + std::to_string(e.index));
      std::uint64_t h = chain_hash(n.mirror.back(), e);
      n.mirror.push_back(h);
      auto [it, fresh] = entries_.emplace(std::make_pair(e.index, e.term), h);
      if (!fresh && it->second != h)
        throw Violation("log matching: " + n.id + " holds (" + std::to_string(e.index) + ", " +
                        std::to_string(e.term) + ") with a different history than another node");
    }
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
    // A leader holds the votes of a majority of its configuration's voters in its own term.
    std::size_t granted = 0;
    Configuration cfg = n.core->config();
    for (const auto& m : cfg.members) {
      if (!m.voter) continue;
      const SimNode& v = nodes_.at(m.id);
      if (m.id == n.id) {
        granted += n.core->vote() == n.id ? 1 : 0;  // its own vote may still be on its way to disk
        continue;
      }
      auto it = votes_.find(std::make_tuple(m.id, m.server_id.empty() ? v.server_id : m.server_id, term));
      if (it != votes_.end() && it->second == n.id) ++granted;
    }
    if (granted < cfg.voter_count() / 2 + 1)
      throw Violation("election safety: " + n.id + " leads term " + std::to_string(term) + " with " +
                      std::to_string(granted) + " votes of " + std::to_string(cfg.voter_count()) + " voters");
    trace_line(n.id + " leads term " + std::to_string(term) + " with config " + describe_config(n.core->config()) +
               " at index " + std::to_string(n.core->config_index()));
    auto [it, fresh] = leaders_.emplace(term, n.id);
    if (!fresh && it->second != n.id)
      throw Violation("election safety: " + it->second + " and " + n.id + " both lead term " + std::to_string(term));
    // Leader completeness: everything committed so far is in the new leader's log.
    std::uint64_t c = max_commit();
    if (n.mirror_last() < c)
      throw Violation("leader completeness: " + n.id + " leads term " + std::to_string(term) +
                      " without committed entry " + std::to_string(c));
    if (c >= n.mirror_start && n.mirror_at(c) != committed_[c])
      throw Violation("leader completeness: " + n.id + " leads term " + std::to_string(term) +
                      " with a log that differs from the committed one at " + std::to_string(c));
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

  void apply(SimNode& n, const LogEntry& e) {
    if (e.index != n.applied + 1)
      throw Violation(n.id + " applies " + std::to_string(e.index) + " after " + std::to_string(n.applied));
    n.applied = e.index;
    n.sm_chain = chain_hash(n.sm_chain, e);
    check_state(n, "apply");
    auto p = pending_.find(n.id);
    if (p != pending_.end()) {
      auto it = p->second.find(e.index);
      if (it != p->second.end()) {
        if (it->second.term == e.term) {
          if (e.payload != it->second.payload)
            throw Violation("acknowledged proposal " + it->second.payload + " applied as " + e.payload);
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
      if (n.applied < it->first) {
        ++it;
        continue;
      }
      auto r = reads_.find(it->second);
      if (r != reads_.end()) {
        // The read sees the state at n.applied: it must include every commit made before it
        // was issued.
        if (n.applied < r->second.commit_at_issue)
          throw Violation("linearizability: read on " + n.id + " served at " + std::to_string(n.applied) +
                          " but " + std::to_string(r->second.commit_at_issue) + " was committed when it was issued");
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
  // checkers
  std::map<std::uint64_t, NodeId> leaders_;
  std::map<std::tuple<NodeId, std::string, std::uint64_t>, NodeId> votes_;  // (node, server id, term) -> vote
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::uint64_t> entries_;
  std::vector<std::uint64_t> committed_{0};
  std::map<NodeId, std::map<std::uint64_t, Pending>> pending_;
  std::map<std::uint64_t, std::string> acked_;
  std::map<std::uint64_t, ReadRecord> reads_;
  std::uint64_t proposal_counter_ = 0;
  std::uint64_t read_counter_ = 0;
  std::uint64_t acked_count_ = 0;
  std::uint64_t reads_ok_ = 0;
};

}  // namespace sim
