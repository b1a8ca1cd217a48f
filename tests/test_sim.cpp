// Randomized simulation: thousands of seeds, each a cluster of 1, 2, 3 or 5 voters (often with
// joiners - a founder alone and its joiners among them - and sometimes a static peer map)
// under loss, duplication, reordering, partitions, crashes (some inside a snapshot install),
// wiped disks, disks slower than the election timeout, skewed and jumping clocks, joins,
// removals, leadership transfers and snapshots, with clients proposing and reading
// throughout. Every step is checked (tests/sim.hpp). At the end the faults heal and the
// cluster must converge within kConvergeTicks.
//
//   RAFT_SIM_SEEDS=N   how many seeds (make sim SEEDS=N)
//   RAFT_SIM_SEED=S    run only seed S, with a trace of every event
//   RAFT_SIM_FIRST=F   first seed (default 1)
#include "sim.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>

namespace {
using raft::NodeId;

// After healing, one leader and identical logs everywhere within this many ticks (election
// timeout is 10 ticks). Measured over 100000 seeds the slowest needed far fewer; a snapshot
// catch-up of a wiped node with tiny chunks is the slow case.
constexpr std::uint64_t kConvergeTicks = 400;
constexpr int kSteps = 3000;

std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

struct Outcome {
  std::string violation;  // empty: every check passed
  std::uint64_t acked = 0, reads = 0, commit = 0;
};

Outcome run_seed(std::uint64_t seed, bool trace) {
  sim::Rng r(seed ^ 0x5eedf00dull);
  sim::Options o;
  const std::uint64_t shape = r.below(10);
  o.voters = shape < 1 ? 1 : shape < 2 ? 2 : shape < 7 ? 3 : 5;
  o.joiners = static_cast<int>(r.below(3)) + (o.voters == 1 && r.chance(0.7) ? 1 : 0);
  o.static_ids = r.chance(0.3);
  o.loss = r.chance(0.5) ? static_cast<double>(r.below(25)) / 100.0 : 0.0;
  o.duplicate = r.chance(0.3) ? 0.05 : 0.0;
  o.max_delay = r.range(2, 40);
  o.max_persist_delay = r.range(1, 40);
  o.max_clock_skew = r.chance(0.5) ? static_cast<std::int64_t>(r.below(2000)) : 0;
  o.crash_in_snapshot_install = r.chance(0.3) ? 0.2 : 0.0;
  o.core.election_ticks = 10;
  o.core.heartbeat_ticks = static_cast<int>(r.range(1, 3));
  o.core.pre_vote = r.chance(0.8);
  o.core.check_quorum = r.chance(0.8);
  o.core.max_inflight = r.range(1, 32);
  o.core.max_message_bytes = r.range(64, 2048);
  o.core.proposal_timeout_ticks = static_cast<int>(r.range(10, 200));
  o.core.read_timeout_ticks = static_cast<int>(r.range(10, 200));
  o.core.snapshot_threshold = r.range(5, 80);
  o.core.snapshot_trailing = r.below(10);
  o.core.snapshot_chunk_bytes = r.range(24, 400);  // snapshots of a few hundred bytes to a few KiB
  o.core.snapshot_chunks_inflight = r.range(1, 4);
  o.core.max_voters = static_cast<std::size_t>(o.voters) + r.below(3);

  Outcome out;
  sim::Cluster c(seed, o);
  c.trace = trace;
  auto random_node = [&]() {
    auto& nodes = c.nodes();
    auto it = nodes.begin();
    std::advance(it, static_cast<long>(r.below(nodes.size())));
    return it->first;
  };
  // How eventful this seed is.
  const double p_fault = 0.002 + static_cast<double>(r.below(10)) / 1000.0;
  NodeId read_focus;  // a node that reads often for a while
  try {
    for (int step = 0; step < kSteps; ++step) {
      std::uint64_t dice = r.below(1000);
      if (dice < 100) {
        NodeId l = c.leader();
        if (!l.empty()) {
          int burst = static_cast<int>(r.range(1, 4));
          for (int k = 0; k < burst; ++k) c.propose(l);
        }
      } else if (dice < 120) {
        // A client of a follower: its write is forwarded; now and then the follower sends
        // everything still unanswered again (a reconnect, a new leader).
        const NodeId f = random_node();
        if (r.chance(0.2))
          c.resend_forwards(f);
        else
          c.forward(f);
      } else if (dice < 170) {
        // A follower cut off with its leader keeps reading through it while the majority
        // moves on: the case where a read confirmed without a heartbeat round is stale.
        c.read(!read_focus.empty() && r.chance(0.5) ? read_focus : random_node());
      } else if (r.chance(p_fault * 10)) {
        switch (r.below(16)) {
          case 0:
          case 1: c.crash(random_node()); break;
          case 2:
          case 3: {
            for (auto& [id, n] : c.nodes())
              if (!n.up && !n.retired) {
                c.restart(id);
                break;
              }
            break;
          }
          case 4: c.isolate(random_node()); break;
          case 5: c.cut(random_node(), random_node()); break;
          case 6: {
            // Split into two groups chosen by the seed; half the time the leader and one of
            // its followers end up alone together (a deposed leader with a follower that still
            // reads through it), and reads go to that follower.
            std::set<NodeId> group;
            NodeId l = c.leader();
            if (!l.empty() && r.chance(0.5)) {
              group.insert(l);
              read_focus = random_node();
              group.insert(read_focus);
              c.partition(group);
              if (r.chance(0.5)) {
                // Give the rest time to elect a leader and commit, then read on the follower.
                c.run_ticks(r.range(20, 50));
                NodeId now_leader = c.leader();
                if (!now_leader.empty())
                  for (int k = 0; k < 3; ++k) c.propose(now_leader);
                c.run_ticks(r.range(1, 10));
                for (int k = 0; k < 3; ++k) c.read(read_focus);
              }
              break;
            }
            for (auto& [id, n] : c.nodes())
              if (r.chance(0.5)) group.insert(id);
            c.partition(group);
            break;
          }
          case 7:
            c.heal();
            read_focus.clear();
            break;
          case 8: {
            NodeId l = c.leader();
            if (!l.empty()) c.core(l).transfer_leadership(random_node());
            c.process_all();
            break;
          }
          case 9: {
            NodeId n = random_node();
            if (c.node(n).up) {
              c.core(n).campaign();
              c.process(c.node(n));
            }
            break;
          }
          case 10: {
            NodeId n = random_node();
            if (r.chance(0.5)) {
              c.join(n);
            } else {
              NodeId l = c.leader();
              if (!l.empty()) {
                const auto& cfg = c.core(l).config();
                const raft::Member* m = cfg.find(n);
                // keep at least three voters, so a single crash cannot stop the cluster
                if (m && (!m->voter || cfg.voter_count() > 3)) c.remove(n);
              }
            }
            break;
          }
          case 11:
            if (r.chance(0.3))
              c.wipe(random_node());
            else if (o.max_clock_skew > 0)
              c.jump_clock(random_node(), static_cast<std::int64_t>(r.below(2 * o.max_clock_skew + 1)) - o.max_clock_skew);
            break;
          case 12:
          case 13: {
            // Leaders fail most interestingly right after appending entries only they hold.
            NodeId l = c.leader();
            if (l.empty()) break;
            if (r.chance(0.5)) {
              for (int k = 0; k < 3; ++k) c.propose(l);
              c.run_for(r.below(20));
            }
            if (r.chance(0.5))
              c.crash(l);
            else
              c.isolate(l);
            break;
          }
          case 14: {
            // Restart everything that is down: churn without a permanent loss of majority.
            for (auto& [id, n] : c.nodes())
              if (!n.up) c.restart(id);
            c.heal();
            break;
          }
          case 15:
            // A disk turns busy (group commits slower than the election timeout) or recovers.
            c.set_disk_delay(random_node(), r.chance(0.5) ? r.range(100, 300) : 0);
            break;
        }
      } else {
        if (!c.run_next()) break;
      }
    }
    c.check_converges(kConvergeTicks);
  } catch (const sim::Violation& v) {
    out.violation = v.what();
  }
  out.acked = c.acked();
  out.reads = c.reads_ok();
  out.commit = c.max_commit();
  return out;
}

// Seeds that once failed, kept forever. What they caught:
//   15, 41, 44  a leader committing its own removal stepped down inside maybe_commit() and
//               freed the Progress its caller was still updating (found by ASan).
//   6           a wiped static-map member voted again before its identity was bound (led to
//               the identity_bound() guard on wipes and to binding identities in the log).
//   3686        a leader that appended its own removal and lost leadership refused to
//               campaign though its log was the longest: the cluster stalled (§4.2.2 fix).
//   16147       without pre-vote, a stale candidate kept resetting a better node's election
//               timer by forcing term changes: no leader for 400 ticks.
//   2228        a wiped member re-added with a new server id kept its old match index.
//   11260       "an append was lost" was guessed from heartbeat answers arriving before the
//               append's answer; under reordering the leader kept resending the same entries
//               and needed far more than 400 ticks to catch a follower up.
//   1           (the first release's core) a follower answered a pre-vote in a term it had
//               adopted but not yet written to disk.
//   19          (the first release's core) a leader restarted from a snapshot stamped its
//               first entry earlier than the entries the snapshot covered (clock skew).
//   8806        a follower whose configuration still called a re-added, since elected member
//               a stranger ignored its appends and never caught up (now only a stranger's
//               votes, campaigns and acknowledgements are ignored).
const std::uint64_t kRegressionSeeds[] = {1, 6, 15, 19, 41, 44, 2228, 3686, 8806, 11260, 16147};

}  // namespace

TEST_CASE("seeds that once failed still pass", "[sim]") {
  for (std::uint64_t seed : kRegressionSeeds) {
    Outcome out = run_seed(seed, false);
    INFO("replay: RAFT_SIM_SEED=" << seed << " build/raft_tests '[sim]'");
    CHECK(out.violation == "");
  }
}

TEST_CASE("randomized clusters keep Raft's invariants under faults", "[sim]") {
  const std::uint64_t only = env_u64("RAFT_SIM_SEED", 0);
  const std::uint64_t first = only ? only : env_u64("RAFT_SIM_FIRST", 1);
  const std::uint64_t count = only ? 1 : env_u64("RAFT_SIM_SEEDS", 200);
  auto t0 = std::chrono::steady_clock::now();
  std::uint64_t failures = 0, acked = 0, reads = 0, run = 0;
  for (std::uint64_t seed = first; seed < first + count; ++seed) {
    Outcome out = run_seed(seed, only != 0);
    ++run;
    acked += out.acked;
    reads += out.reads;
    if (!out.violation.empty()) {
      ++failures;
      std::cerr << "sim seed " << seed << " FAILED: " << out.violation
                << "\n  replay: RAFT_SIM_SEED=" << seed << " build/raft_tests '[sim]'\n";
      if (std::getenv("RAFT_SIM_STOP_ON_FAIL")) break;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cerr << "sim: " << run << " seeds from " << first << " in " << secs << " s, " << acked
            << " proposals acknowledged, " << reads << " linearizable reads checked, " << failures
            << " failures\n";
  CHECK(failures == 0);
  // A core that refused or aborted everything would pass every safety check. (One seed alone
  // may legitimately commit nothing: two voters, one of them down all along.)
  if (run >= 100) {
    CHECK(acked > 0);
    CHECK(reads > 0);
  }
}
