// The nemesis of the Jepsen-style tests: a thread that, at random moments drawn from a seeded
// generator, starts faults and heals them, several at once, and writes each step to the
// timeline ("12.345 start 7 kill n2,n3 power-loss", "14.002 end 7 kill: restarted n3,n2").
//
// Faults (the names select them: RAFT_JEPSEN_FAULTS=kill,partition,...):
//   kill       SIGKILL of the leader, a random node, a majority or all nodes; each kill is a
//              power cut (what no fsync covered is undone: tests/jepsen/faults.hpp) or a
//              process crash, at random. Healed by restarting them, in random order.
//   pause      SIGSTOP of the leader or a random node; healed by SIGCONT.
//   restart    SIGTERM (a leader hands over first), then the same command line again.
//   partition  the leader isolated; a random minority from the majority; a bridge (two
//              sides that cannot reach each other, one node that reaches both); a one-way cut
//              (a node that cannot send, or cannot receive).
//   loss       5-40 % of the packets of some nodes dropped at random (no delays: no netem).
//   wipe       a node killed, its data directory deleted, started again: it rejoins as a
//              stranger and the leader re-adds it. One at a time, never while another wiped or
//              added node is not a voter again.
//   member     the leader asked to remove a voter (never below 3), to add a node that is not
//              a member (its data directory deleted first: a new machine), or to transfer
//              leadership to another voter.
//   clock      per-node skew (up to +-10 s) or one node's clock jumping by minutes to a day,
//              forwards or back; healed by setting every clock right (a jump too).
//   disk       one node's fsyncs fail (EIO), or its disk is full (ENOSPC); healed by clearing
//              the fault and restarting the node after a power cut (it must be restarted).
//   slow       busy disks: every fsync of the leader's followers, or of a random majority,
//              takes 50-400 ms; healed by making them fast again, half of the time after a
//              power cut of every member the nemesis holds no other way (staggered restarts):
//              what a node acknowledged before its sync returned is gone then.
// Faults that act on a node's process (kill, pause, restart, wipe, disk, member add) never
// pick a node another such fault holds. heal_all() ends everything and restarts every member
// that is down; a node that exited without being killed is a problem of the run.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../proc.hpp"
#include "cluster.hpp"
#include "network.hpp"

namespace jepsen {

inline const std::vector<std::string>& all_fault_kinds() {
  static const std::vector<std::string> kinds{"kill", "pause", "restart", "partition", "loss",
                                              "wipe", "member", "clock", "disk", "slow"};
  return kinds;
}

struct NemesisOptions {
  std::uint64_t seed = 1;
  std::vector<std::string> faults = all_fault_kinds();
  proc::milliseconds min_interval = proc::scaled(500);
  proc::milliseconds max_interval = proc::scaled(2500);
  std::size_t max_active = 3;
};

/// What INFO raft says about the cluster, as seen from its leader.
struct ClusterView {
  Node* leader = nullptr;
  std::uint64_t term = 0;
  std::vector<std::string> members, voters;  // node ids
};

class Nemesis {
 public:
  /// Times in the timeline are seconds since `origin`.
  Nemesis(std::vector<Node*> nodes, net::Network& net, const std::string& timeline_path, NemesisOptions o,
          proc::Clock::time_point origin)
      : nodes_(std::move(nodes)), net_(net), timeline_(timeline_path), o_(std::move(o)), rng_(o_.seed),
        started_(origin) {
    for (Node* n : nodes_) member_.insert(n->id());
  }
  /// Ends the thread: the nodes it started die with it (PR_SET_PDEATHSIG fires when the
  /// thread that forked a process ends), so kill them before.
  ~Nemesis() {
    stop();
    {
      std::lock_guard<std::mutex> lock(wake_mu_);
      quit_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  Nemesis(const Nemesis&) = delete;
  Nemesis& operator=(const Nemesis&) = delete;

  void start() {
    thread_ = std::thread([this] { run(); });
  }
  /// Stops drawing faults, once the step under way is done (the faults active stay:
  /// heal_all() ends them). The thread itself lives on, idle, until the destructor: the node
  /// processes it started would die with it.
  void stop() {
    std::unique_lock<std::mutex> lock(wake_mu_);
    stop_ = true;
    wake_.notify_all();
    wake_.wait(lock, [&] { return idle_ || !thread_.joinable(); });
  }

  /// Ends every fault: the network and the clocks set right, paused nodes continued, failed
  /// disks fixed (after a power cut), and every member that is down started again.
  void heal_all() {
    while (!active_.empty()) end(active_.front());
    net_.heal();
    for (Node* n : nodes_) {
      n->faults().set_clock_offset_ms(0);
      n->faults().set_fail_fsync(false);
      n->faults().set_disk_full(false);
      n->faults().set_sync_delay_ms(0);
      if (n->paused()) n->resume();
    }
    check_exits();
    for (Node* n : nodes_)
      if (!n->started() && n->has_data()) start_node(*n);
    note("heal-all: network healed, clocks set right, every node with a data directory running");
  }

  /// Faults started (events included).
  long faults_started() const { return started_faults_; }
  /// Problems found while running (a node that exited by itself), one sentence each.
  std::vector<std::string> problems() const {
    std::lock_guard<std::mutex> lock(mu_);
    return problems_;
  }
  /// The periods during which at least one fault was active or a member was down, in seconds
  /// since the origin.
  std::vector<std::pair<double, double>> fault_periods() const {
    std::lock_guard<std::mutex> lock(mu_);
    return periods_;
  }
  double now_s() const {
    return std::chrono::duration<double>(proc::Clock::now() - started_).count();
  }

  /// The leader, its term and configuration, from INFO of every started node (null leader
  /// when none answers as one).
  ClusterView view() const {
    ClusterView v;
    std::string leader_info;
    for (Node* n : nodes_) {
      if (!n->started() || n->paused()) continue;
      const std::string info = n->info(proc::scaled(500));
      if (proc::info_field(info, "raft_role") != "leader") continue;
      const std::uint64_t term = std::strtoull(proc::info_field(info, "raft_term").c_str(), nullptr, 10);
      if (!v.leader || term > v.term) {
        v.leader = n;
        v.term = term;
        leader_info = info;
      }
    }
    if (!v.leader) return v;
    const long members = std::atol(proc::info_field(leader_info, "raft_members").c_str());
    for (long i = 0; i < members; ++i) {
      const std::string m = proc::info_field(leader_info, "raft_member" + std::to_string(i));
      const std::string id = field_of(m, "id");
      v.members.push_back(id);
      if (field_of(m, "role") == "voter") v.voters.push_back(id);
    }
    return v;
  }

  Node* node(const std::string& id) const {
    for (Node* n : nodes_)
      if (n->id() == id) return n;
    return nullptr;
  }

  /// Writes a line to the timeline.
  void note(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    char t[32];
    std::snprintf(t, sizeof t, "%9.3f ", now_s());
    timeline_ << t << what << std::endl;
  }

 private:
  struct Fault {
    long id = 0;
    std::string kind;
    std::vector<Node*> held;                 // nodes whose process this fault holds
    std::set<std::pair<int, int>> cuts;      // partition: (from, to) indexes
    std::map<int, int> loss;                 // loss: node index -> percent
    std::function<void()> heal;              // what ends it (besides cuts and loss)
    std::string what;
  };

  static std::string field_of(const std::string& list, const std::string& key) {
    const std::string k = key + "=";
    std::size_t at = 0;
    while (at < list.size()) {
      std::size_t end = list.find(',', at);
      if (end == std::string::npos) end = list.size();
      if (list.compare(at, k.size(), k) == 0) return list.substr(at + k.size(), end - at - k.size());
      at = end + 1;
    }
    return "";
  }

  std::string names(const std::vector<Node*>& ns) const {
    std::string s;
    for (Node* n : ns) s += (s.empty() ? "" : ",") + n->id();
    return s;
  }

  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  std::size_t pick(std::size_t n) { return static_cast<std::size_t>(rng_() % n); }
  template <class T>
  void shuffle(std::vector<T>& v) {
    std::shuffle(v.begin(), v.end(), rng_);
  }

  void run() {
    for (;;) {
      const auto span = o_.max_interval - o_.min_interval;
      const auto wait = o_.min_interval + proc::milliseconds(span.count() > 0 ? pick(static_cast<std::size_t>(span.count())) : 0);
      {
        std::unique_lock<std::mutex> lock(wake_mu_);
        if (wake_.wait_for(lock, wait, [&] { return stop_; })) {
          idle_ = true;
          wake_.notify_all();
          wake_.wait(lock, [&] { return quit_; });
          return;
        }
      }
      check_exits();
      refresh_pending();
      if (active_.size() < o_.max_active && (active_.empty() || chance(0.55))) {
        for (int attempt = 0; attempt < 8; ++attempt)
          if (begin(o_.faults[pick(o_.faults.size())])) break;
      } else if (!active_.empty()) {
        end(active_[pick(active_.size())]);
      }
      track_period();
    }
  }

  // ---- bookkeeping ----

  bool held(Node* n) const {
    for (const Fault& f : active_)
      if (std::find(f.held.begin(), f.held.end(), n) != f.held.end()) return true;
    return pending_.count(n->id()) != 0;
  }
  std::vector<Node*> free_members() const {
    std::vector<Node*> v;
    for (Node* n : nodes_)
      if (member_.count(n->id()) && n->started() && !held(n)) v.push_back(n);
    return v;
  }
  void start_node(Node& n) {
    std::vector<std::string> join;
    for (Node* o : nodes_)
      if (o != &n && member_.count(o->id())) join.push_back(o->address());
    n.start(join);
  }
  // A node that exited without being killed: a problem of the run; started again.
  void check_exits() {
    for (Node* n : nodes_) {
      if (auto code = n->exited_by_itself()) {
        const std::string p = n->id() + " exited by itself with code " + std::to_string(*code) + " (see its log)";
        note("PROBLEM " + p);
        {
          std::lock_guard<std::mutex> lock(mu_);
          problems_.push_back(p);
        }
        n->kill(false);
        start_node(*n);
      }
    }
  }
  // Wiped or added nodes stop being pending once they report being a voter.
  void refresh_pending() {
    for (auto it = pending_.begin(); it != pending_.end();) {
      Node* n = node(*it);
      const std::string role = proc::info_field(n->info(proc::scaled(500)), "raft_role");
      if (role == "follower" || role == "leader") {
        note(n->id() + " is a voter again");
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }
  void track_period() {
    bool down = !active_.empty();
    for (Node* n : nodes_)
      if (member_.count(n->id()) && !n->started()) down = true;
    const double t = now_s();
    std::lock_guard<std::mutex> lock(mu_);
    if (down && !in_fault_) periods_.push_back({t, t});
    if (down) periods_.back().second = t;
    in_fault_ = down;
  }
  void apply_network() {
    std::set<std::pair<int, int>> cuts;
    std::map<int, int> loss;
    for (const Fault& f : active_) {
      cuts.insert(f.cuts.begin(), f.cuts.end());
      for (const auto& [n, p] : f.loss) loss[n] = std::max(loss[n], p);
    }
    net_.set_all(cuts, loss);
  }

  bool begin(const std::string& kind) {
    Fault f;
    f.id = ++started_faults_;
    f.kind = kind;
    const bool ok = kind == "kill"        ? begin_kill(f)
                    : kind == "pause"     ? begin_pause(f)
                    : kind == "restart"   ? event_restart(f)
                    : kind == "partition" ? begin_partition(f)
                    : kind == "loss"      ? begin_loss(f)
                    : kind == "wipe"      ? event_wipe(f)
                    : kind == "member"    ? event_member(f)
                    : kind == "clock"     ? begin_clock(f)
                    : kind == "disk"      ? begin_disk(f)
                    : kind == "slow"      ? begin_slow(f)
                                          : false;
    if (!ok) {
      --started_faults_;
      return false;
    }
    if (f.heal || !f.cuts.empty() || !f.loss.empty()) {
      note("start " + std::to_string(f.id) + " " + kind + " " + f.what);
      active_.push_back(std::move(f));
      apply_network();
    } else {
      note("event " + std::to_string(f.id) + " " + kind + " " + f.what);
    }
    return true;
  }

  void end(const Fault& which) {
    const long id = which.id;
    auto it = std::find_if(active_.begin(), active_.end(), [&](const Fault& f) { return f.id == id; });
    if (it == active_.end()) return;
    Fault f = std::move(*it);
    active_.erase(it);
    apply_network();
    std::string what = f.kind;
    if (f.heal) f.heal();
    note("end " + std::to_string(f.id) + " " + what);
  }

  // ---- the faults ----

  bool begin_kill(Fault& f) {
    std::vector<Node*> free = free_members();
    std::vector<Node*> targets;
    const int mode = static_cast<int>(pick(4));
    const std::size_t members = member_.size();
    if (mode == 0) {
      const ClusterView v = view();
      if (!v.leader || held(v.leader)) return false;
      targets = {v.leader};
    } else if (mode == 1) {
      if (free.empty()) return false;
      targets = {free[pick(free.size())]};
    } else if (mode == 2) {
      const std::size_t majority = members / 2 + 1;
      if (free.size() < majority) return false;
      shuffle(free);
      targets.assign(free.begin(), free.begin() + static_cast<std::ptrdiff_t>(majority));
    } else {
      if (free.size() != members) return false;  // all at once: nothing else may hold one
      targets = free;
    }
    const bool power = chance(0.6);
    for (Node* n : targets) n->kill(power);
    f.held = targets;
    f.what = names(targets) + (power ? " power-loss" : " crash");
    f.heal = [this, targets]() mutable {
      shuffle(targets);
      for (Node* n : targets) {
        if (!n->started() && n->has_data()) start_node(*n);
        std::this_thread::sleep_for(proc::milliseconds(pick(400)));  // staggered, as machines boot
      }
    };
    return true;
  }

  // Half of the time the leader (when no other fault holds it), else a member no fault holds;
  // null when there is none.
  Node* leader_or_free_member() {
    if (chance(0.5)) {
      const ClusterView v = view();
      if (v.leader && !held(v.leader)) return v.leader;
    }
    std::vector<Node*> free = free_members();
    return free.empty() ? nullptr : free[pick(free.size())];
  }

  bool begin_pause(Fault& f) {
    Node* target = leader_or_free_member();
    if (!target) return false;
    target->pause();
    f.held = {target};
    f.what = target->id();
    f.heal = [target] { target->resume(); };
    return true;
  }

  bool event_restart(Fault& f) {
    std::vector<Node*> free = free_members();
    if (free.empty()) return false;
    Node* n = free[pick(free.size())];
    n->stop(proc::scaled(5000));
    start_node(*n);
    f.what = n->id();
    return true;
  }

  bool begin_partition(Fault& f) {
    std::vector<int> all;
    for (Node* n : nodes_) all.push_back(n->index());
    shuffle(all);
    auto cut_both = [&](const std::vector<int>& a, const std::vector<int>& b) {
      for (int x : a)
        for (int y : b) f.cuts.insert({x, y}), f.cuts.insert({y, x});
    };
    auto show = [&](const std::vector<int>& g) {
      std::string s;
      for (int x : g) s += (s.empty() ? "n" : ",n") + std::to_string(x);
      return s;
    };
    const int mode = static_cast<int>(pick(4));
    if (mode == 0) {
      const ClusterView v = view();
      if (!v.leader) return false;
      std::vector<int> rest;
      for (int x : all)
        if (x != v.leader->index()) rest.push_back(x);
      cut_both({v.leader->index()}, rest);
      f.what = "isolated leader " + v.leader->id();
    } else if (mode == 1) {
      const std::size_t minority = 1 + pick(all.size() / 2);  // 1 or 2 of 5
      const std::vector<int> a(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(minority));
      const std::vector<int> b(all.begin() + static_cast<std::ptrdiff_t>(a.size()), all.end());
      cut_both(a, b);
      f.what = "minority " + show(a) + " | majority " + show(b);
    } else if (mode == 2) {
      // A bridge: all[0] reaches both sides, which cannot reach each other.
      const std::vector<int> rest(all.begin() + 1, all.end());
      const std::vector<int> a(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(rest.size() / 2));
      const std::vector<int> b(rest.begin() + static_cast<std::ptrdiff_t>(rest.size() / 2), rest.end());
      cut_both(a, b);
      f.what = "bridge n" + std::to_string(all[0]) + " between " + show(a) + " and " + show(b);
    } else {
      const int x = all[0];
      const bool deaf = chance(0.5);
      for (int y : all)
        if (y != x) f.cuts.insert(deaf ? std::make_pair(y, x) : std::make_pair(x, y));
      f.what = "one-way: n" + std::to_string(x) + (deaf ? " hears nobody" : " cannot send");
    }
    return true;
  }

  bool begin_loss(Fault& f) {
    std::vector<Node*> ns = nodes_;
    shuffle(ns);
    const std::size_t count = 1 + pick(ns.size());
    for (std::size_t i = 0; i < count; ++i) {
      const int percent = 5 + static_cast<int>(pick(36));
      f.loss[ns[i]->index()] = percent;
      f.what += (f.what.empty() ? "" : ",") + ns[i]->id() + ":" + std::to_string(percent) + "%";
    }
    return true;
  }

  bool event_wipe(Fault& f) {
    if (!pending_.empty()) return false;
    std::vector<Node*> free = free_members();
    if (free.empty()) return false;
    Node* n = free[pick(free.size())];
    n->kill(false);
    n->wipe();
    start_node(*n);
    pending_.insert(n->id());
    f.what = n->id() + " (data directory deleted; it rejoins as a stranger)";
    return true;
  }

  bool event_member(Fault& f) {
    const ClusterView v = view();
    if (!v.leader) return false;
    const int mode = static_cast<int>(pick(3));
    if (mode == 0) {  // remove a voter (the node goes on running, outside the cluster)
      if (v.voters.size() < 4 || !pending_.empty()) return false;
      const std::string id = v.voters[pick(v.voters.size())];
      const resp::Value r = v.leader->call({"RAFT.REMOVE", id});
      member_.erase(id);  // not chosen for faults any more; the final check reads the real configuration
      f.what = "remove " + id + " on " + v.leader->id() + ": " + proc::show(r);
      return true;
    }
    if (mode == 1) {  // add a node that is not a member, as a new machine
      if (!pending_.empty()) return false;
      std::vector<Node*> outside;
      for (Node* n : nodes_)
        if (std::find(v.members.begin(), v.members.end(), n->id()) == v.members.end() && !held(n)) outside.push_back(n);
      if (outside.empty()) return false;
      Node* n = outside[pick(outside.size())];
      n->kill(false);
      n->wipe();
      member_.insert(n->id());
      start_node(*n);
      pending_.insert(n->id());
      f.what = "add " + n->id() + " (new data directory, joins through -e)";
      return true;
    }
    if (v.voters.size() < 2) return false;
    std::vector<std::string> others;
    for (const std::string& id : v.voters)
      if (id != v.leader->id()) others.push_back(id);
    if (others.empty()) return false;
    const std::string to = others[pick(others.size())];
    const resp::Value r = v.leader->call({"RAFT.TRANSFER", to});
    f.what = "transfer " + v.leader->id() + " -> " + to + ": " + proc::show(r);
    return true;
  }

  bool begin_clock(Fault& f) {
    std::vector<Node*> changed;
    if (chance(0.5)) {
      for (Node* n : nodes_) {
        const std::int64_t off = static_cast<std::int64_t>(pick(20001)) - 10000;
        n->faults().set_clock_offset_ms(off);
        f.what += (f.what.empty() ? "skew " : ",") + n->id() + ":" + std::to_string(off) + "ms";
      }
      changed = nodes_;
    } else {
      Node* n = nodes_[pick(nodes_.size())];
      const std::int64_t magnitude = 60'000 + static_cast<std::int64_t>(pick(86'400'000));
      const std::int64_t off = chance(0.5) ? magnitude : -magnitude;
      n->faults().set_clock_offset_ms(off);
      f.what = "jump " + n->id() + " by " + std::to_string(off / 1000) + " s";
      changed = {n};
    }
    f.heal = [changed] {
      for (Node* n : changed) n->faults().set_clock_offset_ms(0);
    };
    return true;
  }

  bool begin_disk(Fault& f) {
    Node* target = leader_or_free_member();
    if (!target) return false;
    const bool full = chance(0.5);
    if (full)
      target->faults().set_disk_full(true);
    else
      target->faults().set_fail_fsync(true);
    f.held = {target};
    f.what = target->id() + (full ? " disk full" : " fsync fails");
    f.heal = [this, target] {
      target->faults().set_disk_full(false);
      target->faults().set_fail_fsync(false);
      if (target->started()) {
        target->kill(true);  // after a failed fsync nothing unsynced may be trusted
        start_node(*target);
      }
    };
    return true;
  }

  bool begin_slow(Fault& f) {
    std::vector<Node*> slow;
    for (Node* n : nodes_)
      if (member_.count(n->id()) && n->faults().sync_delay_ms() == 0) slow.push_back(n);
    const ClusterView v = view();
    if (v.leader && chance(0.5)) {
      slow.erase(std::remove(slow.begin(), slow.end(), v.leader), slow.end());  // its followers
    } else {
      const std::size_t majority = member_.size() / 2 + 1;
      if (slow.size() < majority) return false;
      shuffle(slow);
      slow.resize(majority);
    }
    if (slow.empty()) return false;
    const auto delay_ms = static_cast<std::int32_t>(50 + pick(351));
    for (Node* n : slow) n->faults().set_sync_delay_ms(delay_ms);
    const bool power_cut = chance(0.5);
    f.what = names(slow) + " fsync " + std::to_string(delay_ms) + " ms" + (power_cut ? ", then a power cut" : "");
    f.heal = [this, slow, power_cut] {
      std::vector<Node*> cut;
      if (power_cut)
        for (Node* n : nodes_)
          if (member_.count(n->id()) && n->started() && !n->paused() && !held(n)) cut.push_back(n);
      for (Node* n : cut) n->kill(true);  // while the disks are still slow: all at once
      for (Node* n : slow) n->faults().set_sync_delay_ms(0);
      shuffle(cut);
      for (Node* n : cut) {
        start_node(*n);
        std::this_thread::sleep_for(proc::milliseconds(pick(400)));  // staggered, as machines boot
      }
    };
    return true;
  }

  std::vector<Node*> nodes_;
  net::Network& net_;
  std::ofstream timeline_;
  NemesisOptions o_;
  std::mt19937_64 rng_;
  proc::Clock::time_point started_;
  std::thread thread_;
  std::mutex wake_mu_;
  std::condition_variable wake_;
  bool stop_ = false, idle_ = false, quit_ = false;

  // The nemesis thread's (and heal_all's, after stop()).
  std::vector<Fault> active_;
  std::set<std::string> member_;   // nodes believed to be members (to restart, to pick)
  std::set<std::string> pending_;  // wiped or added, not yet a voter again
  long started_faults_ = 0;

  mutable std::mutex mu_;  // the timeline, problems, periods
  std::vector<std::string> problems_;
  std::vector<std::pair<double, double>> periods_;
  bool in_fault_ = false;
};

}  // namespace jepsen
