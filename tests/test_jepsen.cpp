// The Jepsen-style suite (tests/jepsen/): real node processes in network namespaces, clients on
// every node, every fault mixed, and the whole history checked for linearizability.
//
//   [jepsen]   the fault shim and the network on their own, and one short run (make test)
//   [.jepsen-runs]  make jepsen: RAFT_JEPSEN_RUNS runs of RAFT_JEPSEN_TIME seconds each, seeds
//              from RAFT_JEPSEN_SEED (random when unset), the node program RAFT_JEPSEN_NODE
//              (a mutant build), the faults RAFT_JEPSEN_FAULTS (comma-separated; all when
//              unset), RAFT_JEPSEN_STOP_ON_FAIL=1 stops at the first failing run.
//
// They need root (network namespaces, nftables) and python3; tools/deps.sh installs nftables.
// Tagged [process] too, so the ASan build, which does not build the node programs, leaves
// them out.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "jepsen/faults.hpp"
#include "jepsen/network.hpp"
#include "jepsen/run.hpp"
#include "proc.hpp"

namespace {

std::string env(const char* name, const std::string& fallback = "") {
  const char* s = std::getenv(name);
  return s && *s ? s : fallback;
}

std::string shim_path() { return std::filesystem::absolute(proc::build_dir() + "/jepsen/fault_shim.so").string(); }

// A program run through the shim, watching the directory `data`.
std::vector<std::string> shimmed(const jepsen::faults::NodeFaults& f, const std::string& data,
                                 std::vector<std::string> argv) {
  std::vector<std::string> all{"env"};
  for (const std::string& e : f.environment(shim_path(), data)) all.push_back(e);
  all.insert(all.end(), argv.begin(), argv.end());
  return all;
}

std::string slurp(const std::string& path) {
  if (!std::filesystem::exists(path)) return "(absent)";
  return proc::read_file(path);
}

// Durable files first (each synced, then the directory), then one change of each kind that no
// sync covers, and one synced overwrite; then it waits to be killed.
const char* kDiskScript = R"(
import os, sys, time
d = sys.argv[1]
def put(name, data):
    fd = os.open(d + '/' + name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fdatasync(fd)
    os.close(fd)
def sync_dir():
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
for name, data in [('a', b'durable'), ('c', b'old'), ('d', b'doomed'), ('e', b'0123456789'),
                   ('f', b'0123456789'), ('h', b'one')]:
    put(name, data)
sync_dir()
fd = os.open(d + '/a', os.O_WRONLY); os.pwrite(fd, b'-lost', 7); os.close(fd)
put('b', b'never-in-dir')
put('c.tmp', b'new'); os.rename(d + '/c.tmp', d + '/c')
os.unlink(d + '/d')
fd = os.open(d + '/e', os.O_WRONLY); os.pwrite(fd, b'xx', 3); os.close(fd)
fd = os.open(d + '/f', os.O_WRONLY); os.ftruncate(fd, 2); os.close(fd)
fd = os.open(d + '/h', os.O_WRONLY); os.pwrite(fd, b'two', 0); os.fdatasync(fd); os.close(fd)
print('ready', flush=True)
time.sleep(60)
)";

const char* kFaultScript = R"(
import errno, os, sys, time
d = sys.argv[1]
fd = os.open(d + '/x', os.O_WRONLY | os.O_CREAT, 0o644)
out = []
try:
    os.write(fd, b'1'); out.append('write:ok')
except OSError as e:
    out.append('write:' + errno.errorcode[e.errno])
try:
    os.fdatasync(fd); out.append('sync:ok')
except OSError as e:
    out.append('sync:' + errno.errorcode[e.errno])
out.append('clock:%d' % int(time.time()))
print(' '.join(out))
)";

}  // namespace

TEST_CASE("fault shim: a power cut takes away exactly what no fsync made durable; a crash keeps it all",
          "[jepsen][process]") {
  proc::TempDir dir("jepsen-shim");
  for (const bool power : {true, false}) {
    INFO((power ? "power cut" : "crash"));
    const std::string data = dir / (power ? "power" : "crash");
    std::filesystem::create_directories(data);
    jepsen::faults::NodeFaults faults(dir / (power ? "power-faults" : "crash-faults"));
    {
      proc::Process p(power ? "power" : "crash", shimmed(faults, data, {"python3", "-c", kDiskScript, data}), dir);
      REQUIRE(p.wait_for_out("ready", proc::scaled(10000)));
      p.kill();
    }
    if (power) {
      CHECK(faults.power_loss(data) > 0);
      CHECK(slurp(data + "/a") == "durable");
      CHECK(slurp(data + "/b") == "(absent)");
      CHECK(slurp(data + "/c") == "old");
      CHECK(slurp(data + "/c.tmp") == "(absent)");
      CHECK(slurp(data + "/d") == "doomed");
      CHECK(slurp(data + "/e") == "0123456789");
      CHECK(slurp(data + "/f") == "0123456789");
      CHECK(slurp(data + "/h") == "two");  // synced
    } else {
      faults.crash();
      CHECK(slurp(data + "/a") == "durable-lost");
      CHECK(slurp(data + "/b") == "never-in-dir");
      CHECK(slurp(data + "/c") == "new");
      CHECK(slurp(data + "/d") == "(absent)");
      CHECK(slurp(data + "/e") == "012xx56789");
      CHECK(slurp(data + "/f") == "01");
      CHECK(slurp(data + "/h") == "two");
    }
    // Nothing of the shim is left behind: no journal, no kept copies.
    std::size_t left = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir / (power ? "power-faults" : "crash-faults")))
      left += e.path().filename() != "control";
    CHECK(left == 0);
  }
}

TEST_CASE("fault shim: failing fsyncs, a full disk and a shifted wall clock", "[jepsen][process]") {
  proc::TempDir dir("jepsen-shim");
  const std::string data = dir / "data";
  std::filesystem::create_directories(data);
  jepsen::faults::NodeFaults faults(dir / "faults");
  auto run = [&] {
    const auto r = proc::run("faults", shimmed(faults, data, {"python3", "-c", kFaultScript, data}), dir, proc::scaled(10000));
    INFO(r.err);
    REQUIRE(r.code == 0);
    return r.out;
  };
  const long now = static_cast<long>(::time(nullptr));
  auto clock_of = [](const std::string& out) { return std::atol(out.substr(out.find("clock:") + 6).c_str()); };

  std::string out = run();
  CHECK(out.find("write:ok sync:ok") != std::string::npos);
  CHECK(std::labs(clock_of(out) - now) < 600);

  faults.set_fail_fsync(true);
  faults.set_clock_offset_ms(-86'400'000);
  out = run();
  CHECK(out.find("write:ok sync:EIO") != std::string::npos);
  CHECK(std::labs(clock_of(out) - (now - 86'400)) < 600);

  faults.set_fail_fsync(false);
  faults.set_disk_full(true);
  faults.set_clock_offset_ms(0);
  out = run();
  CHECK(out.find("write:ENOSPC sync:ok") != std::string::npos);
  CHECK(std::labs(clock_of(out) - now) < 600);
}

namespace {

// Whether a TCP connection from namespace `from` to ip:9000 succeeds within a second.
bool reaches(const jepsen::net::Network& net, int from, const std::string& ip) {
  const auto r = jepsen::net::run_command(
      {"ip", "netns", "exec", net.ns(from), "python3", "-c",
       "import socket, sys\ns = socket.socket()\ns.settimeout(1)\nsys.exit(s.connect_ex(('" + ip + "', 9000)))"});
  return r.code == 0;
}

bool client_reaches(const jepsen::net::Network& net, int node) {
  proc::Client c;
  jepsen::net::InNamespace in(net.hub_fd());
  return c.connect(net.ip(node), 9000, proc::milliseconds(1000));
}

}  // namespace

TEST_CASE("network: one-way cuts, loss and healing inside namespaces, all deleted afterwards", "[jepsen][process]") {
  proc::TempDir dir("jepsen-net");
  std::string prefix;
  {
    // What a killed earlier run of this slot left behind is deleted first.
    const std::string stale = "raftjepsen" + std::to_string(test_support::address_slot()) + "-n9";
    jepsen::net::run_command({"ip", "netns", "add", stale});
    jepsen::net::Network net(3);
    prefix = net.prefix();
    CHECK(jepsen::net::Network::existing(prefix).size() == 4);  // the hub and 3 nodes, not n9

    std::vector<std::unique_ptr<proc::Process>> servers;
    for (int i = 1; i <= 3; ++i) {
      const std::string server = "import socket\ns = socket.socket()\ns.bind(('" + net.ip(i) +
                                 "', 9000))\ns.listen(64)\nprint('listening', flush=True)\nwhile True:\n    s.accept()[0].close()\n";
      servers.push_back(std::make_unique<proc::Process>("server" + std::to_string(i),
                                                        std::vector<std::string>{"ip", "netns", "exec", net.ns(i), "python3", "-c", server}, dir));
      REQUIRE(servers.back()->wait_for_out("listening", proc::scaled(10000)));
    }
    CHECK(reaches(net, 1, net.ip(2)));
    CHECK(reaches(net, 2, net.ip(1)));
    CHECK(client_reaches(net, 1));

    net.cut(1, 2);  // n1's packets to n2 are dropped: no TCP either way, others untouched
    CHECK_FALSE(reaches(net, 1, net.ip(2)));
    CHECK_FALSE(reaches(net, 2, net.ip(1)));
    CHECK(reaches(net, 1, net.ip(3)));
    CHECK(reaches(net, 3, net.ip(1)));
    CHECK(client_reaches(net, 1));
    net.uncut(1, 2);
    CHECK(reaches(net, 1, net.ip(2)));

    net.set_loss(3, 100);  // everything of n3 lost, its clients' traffic too
    CHECK_FALSE(reaches(net, 1, net.ip(3)));
    CHECK_FALSE(client_reaches(net, 3));
    net.set_all({{2, 1}}, {});
    CHECK(reaches(net, 1, net.ip(3)));
    CHECK_FALSE(reaches(net, 2, net.ip(1)));
    net.heal();
    CHECK(reaches(net, 2, net.ip(1)));
    CHECK(client_reaches(net, 3));
  }
  CHECK(jepsen::net::Network::existing(prefix).empty());
}

namespace {

jepsen::RunOptions options_from_environment() {
  jepsen::RunOptions o;
  o.program = env("RAFT_JEPSEN_NODE", proc::example("cas"));
  o.shim = shim_path();
  const std::string faults = env("RAFT_JEPSEN_FAULTS");
  if (!faults.empty()) {
    o.faults.clear();
    std::stringstream s(faults);
    std::string f;
    while (std::getline(s, f, ','))
      if (!f.empty()) o.faults.push_back(f);
  }
  o.keep_dir = env("RAFT_JEPSEN_KEEP", proc::build_dir() + "/jepsen/failed");
  return o;
}

}  // namespace

TEST_CASE("jepsen: a short run with every fault mixed: linearizable, nothing acknowledged lost, converged",
          "[jepsen][process]") {
  jepsen::RunOptions o = options_from_environment();
  o.seconds = std::atof(env("RAFT_JEPSEN_SHORT_TIME", "20").c_str());
  o.seed = std::strtoull(env("RAFT_JEPSEN_SEED", std::to_string(std::random_device{}())).c_str(), nullptr, 10);
  o.label = "short run";
  o.replay = "RAFT_JEPSEN_SEED={SEED} " + proc::build_dir() + "/raft_tests 'jepsen: a short run*'";
  const jepsen::RunResult r = jepsen::run_once(o);
  std::printf("%s\n", r.line.c_str());
  INFO(r.line << "\n" << r.details);
  CHECK(r.pass);
}

TEST_CASE("jepsen: runs for make jepsen", "[.jepsen-runs]") {
  jepsen::RunOptions o = options_from_environment();
  o.seconds = std::atof(env("RAFT_JEPSEN_TIME", "60").c_str());
  const long runs = std::atol(env("RAFT_JEPSEN_RUNS", "3").c_str());
  const std::uint64_t first = std::strtoull(env("RAFT_JEPSEN_SEED", std::to_string(std::random_device{}() % 1000000)).c_str(), nullptr, 10);
  // A mutant node must be caught: its runs stop at the first that fails.
  const std::string mutant = env("RAFT_JEPSEN_MUTANT");
  const bool stop_on_fail = !mutant.empty() || env("RAFT_JEPSEN_STOP_ON_FAIL") == "1";
  o.replay = "make jepsen TIME=" + env("RAFT_JEPSEN_TIME", "60") + " RUNS=1 SEED={SEED}" +
             (mutant.empty() ? "" : " MUTANT=" + mutant) +
             (env("RAFT_JEPSEN_FAULTS").empty() ? "" : " FAULTS=" + env("RAFT_JEPSEN_FAULTS"));
  std::printf("jepsen: %ld runs of %s s, seeds %llu.., node %s, faults %s\n", runs, env("RAFT_JEPSEN_TIME", "60").c_str(),
              static_cast<unsigned long long>(first), o.program.c_str(), env("RAFT_JEPSEN_FAULTS", "all").c_str());
  long failed = 0, first_failed = 0;
  for (long i = 0; i < runs; ++i) {
    o.seed = first + static_cast<std::uint64_t>(i);
    o.label = "run " + std::to_string(i + 1) + "/" + std::to_string(runs);
    const jepsen::RunResult r = jepsen::run_once(o);
    std::printf("%s\n", r.line.c_str());
    if (!r.pass) {
      if (++failed == 1) first_failed = i + 1;
      std::printf("%s", r.details.c_str());
    }
    std::fflush(stdout);
    if (!r.pass && stop_on_fail) break;
  }
  if (!mutant.empty()) {
    if (failed > 0)
      std::printf("mutant %s: caught by run %ld (seed %llu)\n", mutant.c_str(), first_failed,
                  static_cast<unsigned long long>(first + static_cast<std::uint64_t>(first_failed - 1)));
    else
      std::printf("mutant %s: SURVIVED %ld runs\n", mutant.c_str(), runs);
    CHECK(failed > 0);
  } else {
    std::printf("jepsen: %ld of %ld runs failed\n", failed, runs);
    CHECK(failed == 0);
  }
}

TEST_CASE("jepsen: two nodes whose logs say they led the same term are reported", "[checker]") {
  proc::TempDir dir("jepsen-leaders");
  // Logs as the nodes write them: one file per run of a node (n2.2.err: its second run).
  std::ofstream(dir / "n1.err") << "[INFO][n1-10(l):2026-11-30 08:00:00.000001] n1 is a leader in term 10\n"
                                << "[INFO][n1-30(l):2026-11-30 08:00:09.000001] n1 is a leader in term 30\n";
  std::ofstream(dir / "n2.err") << "[INFO][n2-20(l):2026-11-30 08:00:05.000001] n2 is a leader in term 20\n";
  std::ofstream(dir / "n1.out") << "n2 is a leader in term 10\n";  // not a node's log
  CHECK(jepsen::detail::terms_with_two_leaders(dir.path()).empty());
  std::ofstream(dir / "n2.2.err") << "[INFO][n2-20(f):2026-11-30 08:00:06.000001] role f in term 20\n"
                                  << "[INFO][n2-30(l):2026-11-30 08:00:09.500001] n2 is a leader in term 30\n";
  CHECK(jepsen::detail::terms_with_two_leaders(dir.path()) == std::vector<std::string>{"term 30: n1 n2"});
}
