// The client matrix: the Redis clients people use, against a real 3-node run_raft cluster.
// redis-cli, redis-py (sync and asyncio), hiredis (a C program built here), ioredis and
// node-redis (npm, installed into build/npm by tools/deps.sh) each, on a follower, write,
// read, pipeline and speak RESP3 where the client can; then each keeps a connection to the
// leader, the test SIGKILLs that leader, and each client's reconnection (and its retries of
// "try again" errors) must get a later write through and read it back. The library clients
// are tests/clients/clients.py, clients.js and hiredis_client.c; they run at the same time.
// [process][clients]: a few seconds, in `make test`'s process tests.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "proc_cluster.hpp"

using namespace proc_cluster;

namespace {

// One library client: its tag (what its output lines start with and its keys are named
// after), its command line, and whether it must speak RESP3 here.
struct LibraryClient {
  std::string tag;
  std::vector<std::string> argv;
  bool resp3_required;
};

// build/npm/node_modules (tools/deps.sh), absolute; "" when ioredis or redis is missing there
// or node is not installed.
std::string npm_modules() {
  if (proc::find_program("node").empty()) return "";
  const auto dir = std::filesystem::absolute("build/npm/node_modules");
  for (const char* package : {"ioredis", "redis"})
    if (!std::filesystem::exists(dir / package / "package.json")) return "";
  return dir.string();
}

// redis-cli with `args` against `ip`: its output (stdout then stderr).
std::string redis_cli(const TempDir& dir, const std::string& ip, std::vector<std::string> args,
                      const std::string& input = "") {
  std::vector<std::string> argv{"redis-cli", "-h", ip, "-p", std::to_string(kPort)};
  argv.insert(argv.end(), args.begin(), args.end());
  const proc::RunResult r = proc::run("redis-cli", argv, dir, scaled(10000), input);
  return r.out + r.err;
}

// A command in RESP, for redis-cli --pipe.
std::string resp_command(const std::vector<std::string>& words) {
  std::string bytes;
  resp::write_command(bytes, words);
  return bytes;
}

}  // namespace

TEST_CASE("client matrix: redis-cli; redis-py sync and asyncio; hiredis; ioredis and node-redis on a follower; "
          "then through a SIGKILL of the leader they are connected to",
          "[process][clients]") {
  for (const char* program : {"redis-cli", "/usr/bin/python3", "cc"})
    if (proc::find_program(program).empty())
      FAIL(program << " is missing: tools/deps.sh (run by make test, as root) installs it");
  Cluster c(12, "clients");

  // hiredis: built here against Debian's libhiredis-dev.
  const std::string hiredis_client = c.dir / "hiredis_client";
  const proc::RunResult cc = proc::run(
      "cc",
      {"cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror",
       std::filesystem::absolute("tests/clients/hiredis_client.c").string(), "-o", hiredis_client, "-lhiredis"},
      c.dir, scaled(60000));
  INFO("cc: " << cc.out << cc.err);
  REQUIRE(cc.code == 0);

  Node* leader = form_three(c);
  Node& follower = *c.all_but(*leader).front();
  const std::string go_file = c.dir / "go";
  const std::string port = std::to_string(kPort);

  std::vector<LibraryClient> clients;
  const std::string py = std::filesystem::absolute("tests/clients/clients.py").string();
  for (const char* mode : {"sync", "asyncio"})
    clients.push_back({std::string("py-") + mode, {"/usr/bin/python3", py, mode, follower.ip, leader->ip, port, go_file},
                       false});  // RESP3 needs redis-py 5; Debian 12 has 4.3.4 (the script says which)
  clients.push_back({"hiredis", {hiredis_client, follower.ip, leader->ip, port, go_file}, false});  // hiredis >= 1.0
  const std::string modules = npm_modules();
  if (modules.empty()) {
    WARN("skipped ioredis and node-redis: node or build/npm/node_modules/{ioredis,redis} is missing; "
         "tools/deps.sh installs them (apt-get install nodejs npm, then npm ci from tests/clients/package-lock.json: "
         "needs the npm registry)");
  } else {
    const std::string js = std::filesystem::absolute("tests/clients/clients.js").string();
    // NODE_PATH through env(1): the harness passes no environment of its own.
    for (auto [mode, resp3] : {std::pair{"ioredis", false}, std::pair{"node-redis", true}})
      clients.push_back({std::string("js-") + mode,
                         {"env", "NODE_PATH=" + modules, "node", js, mode, follower.ip, leader->ip, port, go_file},
                         resp3});
  }

  // All at once: each does its follower part, connects to the leader and writes, says "ready".
  std::vector<std::unique_ptr<Process>> running;
  for (const auto& client : clients) running.push_back(std::make_unique<Process>(client.tag, client.argv, c.dir));

  // redis-cli meanwhile, on the follower: a write, a read, a hash as a RESP3 map (-3), and a
  // pipeline (--pipe sends every command before reading a reply).
  CHECK(redis_cli(c.dir, follower.ip, {"set", "cli:s", "v1"}) == "OK\n");
  CHECK(redis_cli(c.dir, follower.ip, {"get", "cli:s"}) == "v1\n");
  CHECK(redis_cli(c.dir, follower.ip, {"hset", "cli:h", "f1", "a", "f2", "b"}) == "2\n");
  CHECK(redis_cli(c.dir, follower.ip, {"-3", "--no-raw", "hgetall", "cli:h"}) ==
        "1# \"f1\" => \"a\"\n2# \"f2\" => \"b\"\n");
  std::string pipeline;
  for (int i = 0; i < 20; ++i) pipeline += resp_command({"set", "cli:p" + std::to_string(i), std::to_string(i)});
  pipeline += resp_command({"incrby", "cli:n", "20"});
  const std::string piped = redis_cli(c.dir, follower.ip, {"--pipe"}, pipeline);
  CHECK(piped.find("errors: 0, replies: 21") != std::string::npos);
  CHECK(redis_cli(c.dir, follower.ip, {"get", "cli:p19"}) == "19\n");

  for (std::size_t i = 0; i < clients.size(); ++i) {
    Process& p = *running[i];
    const bool ready = eventually(scaled(30000), [&] {
      return p.out().find(clients[i].tag + " ready\n") != std::string::npos || !p.running();
    });
    INFO(clients[i].tag << " stdout:\n" << p.out() << "stderr:\n" << p.err());
    REQUIRE(ready);
    REQUIRE(p.running());
  }

  // The leader dies with every client's connection to it; the go file tells the clients to
  // write again. The other two elect a leader; then the killed node is restarted with its
  // command line (it rejoins as a follower), at the address the clients reconnect to.
  leader->kill();
  std::ofstream(go_file) << "killed\n";
  Node* next = wait_agreed_leader(c.all_but(*leader), 3, scaled(20000));
  REQUIRE(next != nullptr);
  leader->restart();

  // redis-cli opens a connection per run: a run on the restarted node's address gets a write
  // through (forwarded to the new leader) once the node is up.
  std::string cli_after;
  const bool cli_through = eventually(scaled(20000), [&] {
    cli_after = redis_cli(c.dir, leader->ip, {"set", "cli:after", "after-kill"});
    return cli_after == "OK\n";
  });
  {
    INFO("redis-cli after the kill: " << cli_after);
    CHECK(cli_through);
  }

  for (std::size_t i = 0; i < clients.size(); ++i) {
    const LibraryClient& client = clients[i];
    Process& p = *running[i];
    const auto code = p.wait_exit(scaled(40000));
    const std::string out = p.out();
    INFO(client.tag << " stdout:\n" << out << "stderr:\n" << p.err());
    CHECK(code == std::optional<int>(0));
    CHECK(out.find(client.tag + " basic ok\n") != std::string::npos);
    const bool resp3 = out.find(client.tag + " resp3 ok\n") != std::string::npos;
    CHECK((resp3 || (!client.resp3_required && out.find(client.tag + " resp3 unsupported: ") != std::string::npos)));
    CHECK(out.find(client.tag + " reconnected ok") != std::string::npos);
  }

  // What each wrote before and after the kill is in the cluster.
  for (const std::string& tag : {std::string("py-sync"), std::string("py-asyncio"), std::string("hiredis"),
                                 std::string("js-ioredis"), std::string("js-node-redis"), std::string("cli")}) {
    if (tag.compare(0, 3, "js-") == 0 && modules.empty()) continue;
    if (tag != "cli") CHECK(show(call_until_answered(c.all(), {"get", tag + ":before"}, scaled(10000))) == "before-kill");
    CHECK(show(call_until_answered(c.all(), {"get", tag + ":after"}, scaled(10000))) == "after-kill");
  }
}
