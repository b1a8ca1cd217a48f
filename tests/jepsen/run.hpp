// One run of the Jepsen-style suite: a 5-node cluster of real processes in network namespaces,
// clients on every node, the nemesis mixing its faults for the run's time; then everything
// healed, the cluster given a deadline to agree on one leader and apply everything, final
// reads on every member (linearizable ones into the history, local READONLY ones compared
// between nodes), and the checker (tests/jepsen/checker.hpp) with a bound: a history it cannot
// decide in time fails the run.
//
// One verdict line per run:
//   jepsen run 1/20 seed=7 60 s: ops=41234 ok=30012 failed=9102 unknown=2120 lost=0
//     linearizable=yes converged=yes dual-leaders=0 unexpected=0 problems=0 faults=52
//     ok/s=512 ok/s-in-faults=377 PASS
// lost: acknowledged list elements missing from the final lists, plus acknowledged increments
// missing from the final counters (registers are judged by linearizability alone);
// dual-leaders: terms in which two nodes said (in their logs) they were the leader, Raft's
// election safety, which a history shows only once the two leaders' entries collide;
// converged: one leader, every member applied everything, and all members' local data equal;
// unexpected: replies the workload's table does not know; problems: nodes that exited without
// being killed. A run passes when linearizable=yes, lost=0, converged=yes, dual-leaders=0,
// unexpected=0 and problems=0. A failing run keeps its history, the nemesis timeline and every node's log (and
// data) in the directory the line names, and prints the command that replays its seed: the
// same faults at the same moments and the same operations, not the same interleaving (real
// processes and real time).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../proc.hpp"
#include "checker.hpp"
#include "cluster.hpp"
#include "history.hpp"
#include "nemesis.hpp"
#include "network.hpp"
#include "workload.hpp"

namespace jepsen {

struct RunOptions {
  std::uint64_t seed = 1;
  double seconds = 60;  // of faults under load
  int nodes = 5;
  std::string program;   // the node: build/examples/cas or a mutant build of it
  std::string shim;      // build/jepsen/fault_shim.so
  std::vector<std::string> faults = all_fault_kinds();
  int clients = 10;
  std::string keep_dir = "build/jepsen/failed";  // where a failing run's files are kept
  std::string label = "run 1/1";
  std::string replay;  // the command that replays a seed, "{SEED}" replaced
  std::uint64_t max_steps = 200'000'000;  // the checker's bound
  proc::milliseconds converge_deadline = proc::scaled(60000);
};

struct RunResult {
  bool pass = false;
  std::string line;  // the verdict line
  std::string kept;  // where its files were kept, when it failed
  std::string details;  // why it failed, several lines
};

namespace detail {

inline std::string format_rate(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.0f", x);
  return b;
}

/// Waits until `node` answers INFO saying `role`.
inline bool wait_role(const Node& node, const std::string& role, proc::milliseconds timeout) {
  return proc::eventually(timeout, [&] { return proc::info_field(node.info(), "raft_role") == role; });
}

struct Convergence {
  bool ok = false;
  std::string why;  // when not
  std::vector<Node*> members;
};

/// One leader; every member of its configuration (`members` of them, 0: any number) running,
/// a voter, following it in its term; nothing uncommitted at the leader, and every member has
/// applied all of it.
inline Convergence converge(Nemesis& nemesis, proc::milliseconds deadline, std::size_t members = 0) {
  Convergence c;
  const bool ok = proc::eventually(deadline, [&] {
    const ClusterView v = nemesis.view();
    if (!v.leader) return c.why = "no leader", false;
    if (members != 0 && v.members.size() != members)
      return c.why = std::to_string(v.members.size()) + " members, not " + std::to_string(members), false;
    const std::string linfo = v.leader->info();
    const std::string commit = proc::info_field(linfo, "raft_commit_index");
    if (commit != proc::info_field(linfo, "raft_last_index")) return c.why = "the leader has uncommitted entries", false;
    if (v.voters.size() != v.members.size()) return c.why = "a member is still a learner", false;
    c.members.clear();
    for (const std::string& id : v.members) {
      Node* n = nemesis.node(id);
      if (!n) return c.why = "member " + id + " is not a node of the test", false;
      const std::string info = n->info();
      const std::string role = proc::info_field(info, "raft_role");
      if (n != v.leader && (role != "follower" || proc::info_field(info, "raft_leader_id") != v.leader->id() ||
                            proc::info_field(info, "raft_term") != std::to_string(v.term)))
        return c.why = id + " does not follow " + v.leader->id() + " in term " + std::to_string(v.term) + " (role " + role + ")", false;
      if (proc::info_field(info, "raft_applied_index") != commit)
        return c.why = id + " applied " + proc::info_field(info, "raft_applied_index") + " of " + commit, false;
      c.members.push_back(n);
    }
    // Still the same a moment later (nothing was in flight).
    return proc::info_field(v.leader->info(), "raft_commit_index") == commit;
  });
  c.ok = ok;
  return c;
}

inline bool read_command_for(const std::string& key, std::vector<std::string>& cmd) {
  if (key.empty()) return false;
  cmd = key[0] == 'l' ? std::vector<std::string>{"LRANGE", key, "0", "-1"} : std::vector<std::string>{"GET", key};
  return true;
}

inline std::optional<Value> to_value(const resp::Value& r, bool list) {
  if (list) {
    if (r.type != resp::Type::Array) return std::nullopt;
    std::vector<std::string> items;
    for (const auto& e : r.elements) items.push_back(e.str);
    return Value::list_of(std::move(items));
  }
  if (r.type == resp::Type::NullBulk) return Value::nil();
  if (r.type == resp::Type::BulkString) return Value::of(r.str);
  return std::nullopt;
}

/// Election safety, from every log of every node in `dir` (`<id> is a leader in term T`, one
/// line per election won): the terms that had two leaders, each as "term T: n1, n3".
inline std::vector<std::string> terms_with_two_leaders(const std::string& dir) {
  std::map<std::uint64_t, std::set<std::string>> leaders;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".err") continue;
    std::istringstream in(proc::read_file(e.path().string()));
    static const std::string kMark = " is a leader in term ";
    for (std::string line; std::getline(in, line);) {
      const std::size_t at = line.find(kMark);
      const std::size_t start = at == std::string::npos ? at : line.rfind("] ", at);
      if (start == std::string::npos) continue;
      leaders[std::strtoull(line.c_str() + at + kMark.size(), nullptr, 10)].insert(line.substr(start + 2, at - start - 2));
    }
  }
  std::vector<std::string> shared;
  for (const auto& [term, ids] : leaders) {
    if (ids.size() < 2) continue;
    std::string s = "term " + std::to_string(term) + ":";
    for (const std::string& id : ids) s += " " + id;
    shared.push_back(s);
  }
  return shared;
}

}  // namespace detail

inline RunResult run_once(const RunOptions& o) {
  RunResult result;
  proc::TempDir dir("jepsen");
  std::unique_ptr<net::Network> net = std::make_unique<net::Network>(o.nodes);
  std::vector<std::unique_ptr<Node>> owned;
  std::vector<Node*> nodes;
  for (int i = 1; i <= o.nodes; ++i) {
    owned.push_back(std::make_unique<Node>(i, *net, dir, o.program, o.shim));
    nodes.push_back(owned.back().get());
  }
  std::vector<std::string> problems;
  auto fail_setup = [&](const std::string& why) {
    result.line = "jepsen " + o.label + " seed=" + std::to_string(o.seed) + ": the cluster did not form: " + why + " FAIL";
    result.details = proc::output_tails(dir.path());
    return result;
  };

  // The article's way: n1 founds, the others join through it.
  nodes[0]->start();
  if (!detail::wait_role(*nodes[0], "leader", proc::scaled(15000))) return fail_setup("n1 did not lead");
  for (std::size_t i = 1; i < nodes.size(); ++i) nodes[i]->start({nodes[0]->address()});

  const auto origin = proc::Clock::now();
  HistoryWriter history(dir / "history.txt");
  NemesisOptions no;
  no.seed = o.seed;
  no.faults = o.faults;
  Nemesis nemesis(nodes, *net, dir / "timeline.txt", no, origin);
  {
    const detail::Convergence formed = detail::converge(nemesis, proc::scaled(30000), nodes.size());
    if (!formed.ok) return fail_setup(formed.why);
  }
  nemesis.note("formed: " + std::to_string(nodes.size()) + " voters; seed " + std::to_string(o.seed));

  WorkloadOptions wo;
  wo.seed = o.seed;
  wo.clients = o.clients;
  Workload workload(history, nodes, *net, wo, origin);
  workload.start();
  nemesis.start();
  const auto faults_end = origin + std::chrono::milliseconds(static_cast<long>(o.seconds * 1000));
  std::this_thread::sleep_until(faults_end);  // the run's length: a duration, not a synchronisation
  nemesis.stop();
  const double fault_window = nemesis.now_s();
  nemesis.heal_all();
  // A little load while the cluster recovers, then quiet for the final reads.
  std::this_thread::sleep_for(proc::scaled(2000));
  workload.stop();
  nemesis.note("workload stopped");

  const detail::Convergence conv = detail::converge(nemesis, o.converge_deadline);
  nemesis.note(conv.ok ? "converged" : "did not converge: " + conv.why);
  for (const std::string& p : nemesis.problems()) problems.push_back(p);

  // Final reads: linearizable ones, through every member, into the history.
  std::vector<std::string> keys;
  for (auto kind : {Workload::KeyKind::Register, Workload::KeyKind::Counter, Workload::KeyKind::List})
    for (const std::string& k : workload.keys(kind)) keys.push_back(k);
  std::vector<Node*> readers = conv.ok ? conv.members : std::vector<Node*>{};
  if (!conv.ok)
    for (Node* n : nodes)
      if (n->started()) readers.push_back(n);
  std::map<std::string, std::map<std::string, std::string>> local;  // node -> key -> READONLY reply
  std::map<std::string, std::optional<Value>> final_value;         // key -> a linearizable final read
  long failed_final_reads = 0;
  for (Node* n : readers) {
    proc::Client c, ro;
    {
      net::InNamespace in(net->hub_fd());
      c.connect(n->ip(), kClientPort, proc::scaled(1000));
      ro.connect(n->ip(), kClientPort, proc::scaled(1000));
    }
    ro.call({"READONLY"});
    for (const std::string& key : keys) {
      std::vector<std::string> cmd;
      detail::read_command_for(key, cmd);
      const bool list = key[0] == 'l';
      const std::uint64_t p = history.new_process();
      history.invoke(p, list ? Function::Lrange : Function::Read, key);
      resp::Value r;
      proc::eventually(proc::scaled(10000), [&] {
        r = c.call(cmd, proc::scaled(5000));
        if (r.is_error() && proc::starts_with(r.str, "IOERR")) {
          net::InNamespace in(net->hub_fd());
          c.connect(n->ip(), kClientPort, proc::scaled(1000));
        }
        return !r.is_error();
      });
      if (auto v = detail::to_value(r, list)) {
        history.ok(p, *v);
        if (!final_value.count(key)) final_value[key] = *v;
      } else {
        history.fail(p, "final read on " + n->id() + ": " + proc::show(r));
        ++failed_final_reads;
      }
      local[n->id()][key] = proc::show(ro.call(cmd, proc::scaled(5000)));
    }
  }

  // Do the members' local data agree?
  std::vector<std::string> diverged;
  if (conv.ok && !readers.empty()) {
    const auto& first = local[readers[0]->id()];
    for (Node* n : readers)
      for (const auto& [key, v] : local[n->id()])
        if (first.at(key) != v && diverged.size() < 5)
          diverged.push_back(key + ": " + readers[0]->id() + " has " + first.at(key).substr(0, 200) + ", " + n->id() +
                             " has " + v.substr(0, 200));
  }

  // The checker, on the history as written to the file.
  nemesis.note("checking");
  History h = read_history_file(dir / "history.txt");
  CheckOptions co;
  co.max_steps = o.max_steps;
  const CheckResult check = jepsen::check(h, co);

  // Lost acknowledged writes, from the final reads.
  long lost = 0;
  std::map<std::string, long> acked_incr;
  for (const Operation& op : h.operations) {
    if (op.outcome != Outcome::Ok) continue;
    if (op.function == Function::Incr) ++acked_incr[op.key];
    if (op.function == Function::Rpush) {
      const auto it = final_value.find(op.key);
      if (it == final_value.end() || !it->second || !it->second->is_list()) continue;
      const auto& items = it->second->items;
      if (std::find(items.begin(), items.end(), op.args[0].text) == items.end()) ++lost;
    }
  }
  for (const auto& [key, n] : acked_incr) {
    const auto it = final_value.find(key);
    if (it == final_value.end() || !it->second) continue;
    const long value = it->second->is_nil() ? 0 : std::atol(it->second->text.c_str());
    if (value < n) lost += n - value;
  }

  // Throughput: acknowledged operations per second over the fault window, and within the
  // seconds a fault was active or a member down.
  const std::vector<long> per_second = workload.ok_per_second();
  long ok_window = 0, ok_faulty = 0, faulty_seconds = 0;
  const auto periods = nemesis.fault_periods();
  for (std::size_t s = 0; s < per_second.size() && static_cast<double>(s) < fault_window; ++s) {
    ok_window += per_second[s];
    const double mid = static_cast<double>(s) + 0.5;
    const bool faulty = std::any_of(periods.begin(), periods.end(),
                                    [&](const auto& p) { return mid >= p.first && mid <= p.second + 1; });
    if (faulty) ok_faulty += per_second[s], ++faulty_seconds;
  }

  const bool converged = conv.ok && diverged.empty() && failed_final_reads == 0;
  const std::vector<std::string> dual_leaders = detail::terms_with_two_leaders(dir.path());
  result.pass = check.verdict == Verdict::Linearizable && lost == 0 && converged && dual_leaders.empty() &&
                workload.unexpected() == 0 && problems.empty();
  std::ostringstream line;
  line << "jepsen " << o.label << " seed=" << o.seed << " " << detail::format_rate(o.seconds) << " s: ops=" << check.operations
       << " ok=" << check.ok << " failed=" << check.failed << " unknown=" << check.unknown << " lost=" << lost
       << " linearizable=" << name(check.verdict) << " converged=" << (converged ? "yes" : "no")
       << " dual-leaders=" << dual_leaders.size() << " unexpected=" << workload.unexpected() << " problems=" << problems.size()
       << " faults=" << nemesis.faults_started() << " ok/s=" << detail::format_rate(ok_window / std::max(1.0, fault_window))
       << " ok/s-in-faults=" << detail::format_rate(faulty_seconds ? static_cast<double>(ok_faulty) / faulty_seconds : 0)
       << (result.pass ? " PASS" : " FAIL");
  result.line = line.str();

  if (!result.pass) {
    std::ostringstream why;
    why << "checker: " << check.summary() << "\n";
    if (!conv.ok) why << "did not converge within the deadline: " << conv.why << "\n";
    if (failed_final_reads) why << failed_final_reads << " final reads were refused\n";
    for (const std::string& d : diverged) why << "diverged: " << d << "\n";
    for (const std::string& d : dual_leaders) why << "two leaders in one " << d << "\n";
    for (const std::string& u : workload.unexpected_replies()) why << "unexpected reply: " << u << "\n";
    for (const std::string& p : problems) why << "problem: " << p << "\n";
    for (const Violation& v : check.violations)
      for (const Operation& op : v.operations)
        why << "  " << describe(op, std::chrono::duration_cast<std::chrono::nanoseconds>(origin.time_since_epoch()).count()) << "\n";
    result.details = why.str();
  }

  // Everything stops before the files are copied (the logs are complete).
  for (Node* n : nodes) n->kill(false);
  if (!result.pass) {
    result.kept = o.keep_dir + "/seed-" + std::to_string(o.seed);
    std::error_code ec;
    std::filesystem::remove_all(result.kept, ec);
    std::filesystem::create_directories(result.kept, ec);
    std::filesystem::copy(dir.path(), result.kept,
                          std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing, ec);
    std::ofstream(result.kept + "/verdict.txt") << result.line << "\n" << result.details;
    std::string replay = o.replay;
    const auto at = replay.find("{SEED}");
    if (at != std::string::npos) replay.replace(at, 6, std::to_string(o.seed));
    result.details += "kept in " + result.kept + " (history.txt, timeline.txt, nI.err logs, data/, faults/)\n";
    if (!replay.empty()) result.details += "replay: " + replay + "\n";
  }
  return result;
}

}  // namespace jepsen
