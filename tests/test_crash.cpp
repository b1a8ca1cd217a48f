// `make crash`: a 3-node cluster of run_raft processes, formed as the article forms it, is
// killed with SIGKILL all at once while several clients write to the leader and the followers
// (and a node is asked for a snapshot now and then), then restarted with the same command
// lines; after each restart every acknowledged write must be there, exactly once, and no write
// answered as not run may be. RAFT_CRASH_CYCLES (default 20) cycles; RAFT_CRASH_SEED picks the
// moments of the kills (printed, to repeat a run).
//
// Hidden from `make test` ([.killall]): it takes about half a minute.
#include <catch2/catch.hpp>

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "proc_cluster.hpp"
#include "write_load.hpp"

namespace {

long env_long(const char* name, long fallback) {
  const char* s = std::getenv(name);
  return s && *s ? std::atol(s) : fallback;
}

}  // namespace

TEST_CASE("every acknowledged write survives SIGKILL of all three nodes at once under a write load, again and again",
          "[.killall]") {
  using namespace proc_cluster;
  const long cycles = env_long("RAFT_CRASH_CYCLES", 20);
  const unsigned seed = static_cast<unsigned>(env_long("RAFT_CRASH_SEED", static_cast<long>(std::random_device{}())));
  std::printf("crash: %ld cycles, RAFT_CRASH_SEED=%u\n", cycles, seed);
  std::mt19937 rng(seed);

  Cluster c(10, "crash");
  form_three(c);
  std::vector<std::string> ips;
  for (Node* n : c.all()) ips.push_back(n->ip);
  std::vector<write_load::Writer> writers;
  for (int i = 0; i < 6; ++i) writers.emplace_back(i);

  for (long cycle = 1; cycle <= cycles; ++cycle) {
    INFO("cycle " << cycle << " of " << cycles << ", RAFT_CRASH_SEED=" << seed);
    const auto began = proc::Clock::now();
    long acked_in_cycle = 0, checkpoints = 0;
    {
      write_load::Load load(writers, ips, kPort, scaled(150));
      // Under load: some writes acknowledged in this cycle, then a random moment more.
      REQUIRE(proc::eventually(scaled(8000), [&] { return load.acked() >= 100; }));
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 1500)(rng)));
      for (Node* n : c.all()) ::kill(n->pid(), SIGKILL);  // all three before any is reaped
      for (Node* n : c.all()) n->kill();
      acked_in_cycle = load.acked();
      load.stop();
      checkpoints = load.checkpoints();
    }
    for (Node* n : c.all()) n->restart();
    Node* leader = wait_agreed_leader(c.all(), 3, scaled(10000));
    REQUIRE(leader != nullptr);
    // Linearizable reads, through every node in turn (followers ask the leader).
    std::size_t next = 0;
    const std::vector<std::string> problems = write_load::check(writers, [&](const std::vector<std::string>& cmd) {
      return call_until_answered({c.all()[next++ % 3]}, cmd, scaled(5000));
    });
    const write_load::Counts n = write_load::count(writers);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(proc::Clock::now() - began).count();
    std::printf("crash cycle %2ld: %5ld acknowledged in the cycle (%ld in all, %ld unknown, %ld not run), %ld "
                "snapshots asked for, %lld ms\n",
                cycle, acked_in_cycle, n.acked, n.unknown, n.not_run, checkpoints, static_cast<long long>(took));
    std::string all;
    for (const std::string& p : problems) all += p + "\n";
    INFO(all);
    REQUIRE(problems.empty());
  }
}
