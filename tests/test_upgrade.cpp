// `make upgrade`: a 3-node cluster formed and written by an earlier release (RAFT_OLD_RUN_RAFT:
// run_raft built from git at the commit the Makefile names, peer protocol 1 and snapshot
// format 1) is upgraded node by node to this build on the same data directories while clients
// keep writing. Versions are not mixed on a peer link (each refuses the other with a message
// naming both), so while they are mixed the nodes of the version a majority runs carry the
// cluster. At the end every acknowledged write is on every node and the nodes agree.
//
// Hidden from `make test` ([.upgrade]): it needs the old build, which needs git history.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "proc_cluster.hpp"
#include "write_load.hpp"

namespace {

// Whether a node's data directory holds a snapshot file.
bool has_snapshot(const std::string& data_dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(data_dir, ec))
    if (e.path().extension() == ".snap") return true;
  return false;
}

}  // namespace

TEST_CASE("a cluster written by the previous release is upgraded node by node under load and keeps every "
          "acknowledged write on every node",
          "[.upgrade]") {
  using namespace proc_cluster;
  const char* old_env = std::getenv("RAFT_OLD_RUN_RAFT");
  const std::string old_program = old_env ? old_env : "";
  if (old_program.empty() || ::access(old_program.c_str(), X_OK) != 0) {
    WARN("skipped: RAFT_OLD_RUN_RAFT names no program ('" << old_program
                                                          << "'); `make upgrade` builds the previous release from git");
    return;
  }
  const std::string new_program = proc::example("run_raft");

  Cluster c(11, "upgrade");
  form_three(c, old_program);
  std::vector<std::string> ips;
  for (Node* n : c.all()) ips.push_back(n->ip);
  std::vector<write_load::Writer> writers;
  for (int i = 0; i < 6; ++i) writers.emplace_back(i);
  write_load::Load load(writers, ips, kPort, scaled(300));

  // Data written by the old release, with a snapshot (format 1) in every data directory.
  REQUIRE(proc::eventually(scaled(20000), [&] {
    return load.acked() >= 300 && has_snapshot(c[0].data_dir) && has_snapshot(c[1].data_dir) &&
           has_snapshot(c[2].data_dir);
  }));

  // The followers first, the leader last, as an operator would.
  Node* leader = wait_agreed_leader(c.all(), 3, scaled(10000));
  REQUIRE(leader != nullptr);
  std::vector<Node*> order = c.all_but(*leader);
  order.push_back(leader);
  for (std::size_t step = 0; step < order.size(); ++step) {
    Node& n = *order[step];
    INFO("upgrading node " << n.id << " (step " << step + 1 << " of 3)");
    const long before = load.acked();
    n.process().signal(SIGTERM);
    REQUIRE(n.process().wait_exit(scaled(15000)).has_value());
    n.restart_with(new_program);
    REQUIRE(n.process().wait_for_err("restarting from " + n.data_dir, scaled(10000)));
    CHECK(n.log().find("after a snapshot at index") != std::string::npos);
    // The version a majority runs serves writes again: the old one after the first step,
    // the new one after the second and the third.
    REQUIRE(proc::eventually(scaled(30000), [&] { return load.acked() >= before + 500; }));
    std::printf("upgrade: node %s runs the new build; %ld writes acknowledged so far\n", n.id.c_str(), load.acked());
  }
  // The new build names the old version it refused (the number it expects is its own).
  bool refusal_logged = false;
  for (Node* n : c.all())
    refusal_logged = refusal_logged || n->log().find("peer protocol version 1 is not ") != std::string::npos;
  CHECK(refusal_logged);

  leader = wait_agreed_leader(c.all(), 3, scaled(20000));
  REQUIRE(leader != nullptr);
  const long before = load.acked();
  REQUIRE(proc::eventually(scaled(20000), [&] { return load.acked() >= before + 200; }));
  load.stop();

  // Every node applies everything the leader committed, then each is read on its own.
  leader = wait_agreed_leader(c.all(), 3, scaled(10000));
  REQUIRE(leader != nullptr);
  const std::string commit = leader->field("raft_commit_index");
  REQUIRE_FALSE(commit.empty());
  for (Node* n : c.all()) {
    INFO("node " << n->id);
    REQUIRE(proc::eventually(scaled(15000), [&] {
      const std::string applied = n->field("raft_applied_index");
      return !applied.empty() && std::stoull(applied) >= std::stoull(commit);
    }));
  }
  const write_load::Counts counts = write_load::count(writers);
  std::printf("upgrade: %ld writes acknowledged, %ld unknown, %ld not run, %ld snapshots asked for\n", counts.acked,
              counts.unknown, counts.not_run, load.checkpoints());
  std::string dbsize;
  for (Node* n : c.all()) {
    Client ro = n->connect();
    REQUIRE(show(ro.call({"READONLY"})) == "OK");
    const std::vector<std::string> problems =
        write_load::check(writers, [&](const std::vector<std::string>& cmd) { return ro.call(cmd); });
    std::string all;
    for (const std::string& p : problems) all += p + "\n";
    INFO("node " << n->id << ":\n" << all);
    CHECK(problems.empty());
    const std::string size = show(ro.call({"DBSIZE"}));
    if (dbsize.empty()) dbsize = size;
    CHECK(size == dbsize);
  }
}
