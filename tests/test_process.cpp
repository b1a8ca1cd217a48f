// Process tests: the built examples (RAFT_BUILD_DIR/examples/*) run as real processes on
// loopback, driven by real clients (our RESP client, redis-cli, redis-benchmark, redis-py)
// and real signals (SIGKILL, SIGSTOP). Each test case has its own 127.x.y.0/24 addresses and
// its own temporary directory; every process it starts is killed by PID when it ends.
//
// The nodes' own timeouts are raft::Config's defaults (election 300-600 ms, append and read
// timeouts 3 s, join retry 500 ms), multiplied by RAFT_TIME_SCALE, which the tests pass to
// every program as --time-scale; the tests' deadlines scale alike (proc::scaled).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <ctime>
#include <exception>
#include <fstream>
#include <memory>
#include <thread>

#include "net_slot.hpp"
#include "proc.hpp"
#include "fake_peer.hpp"
#include "raft.hpp"  // raft::Config: the programs' default timeouts
#include "resp.hpp"

namespace {

using proc::Client;
using proc::eventually;
using proc::Process;
using proc::scaled;
using proc::show;
using proc::starts_with;
using proc::TempDir;
using std::chrono::milliseconds;

constexpr int kPort = 7000;
// The longest election timeout of a node (a random time between the minimum and twice it),
// unscaled: the programs run with raft::Config's default.
const long kElectionMaxMs = 2L * raft::Config().election_timeout_ms;

// Test case `n` uses 127.(150+n).y.z; y comes from this process's address slot
// (tests/net_slot.hpp), so that two test binaries running at once never collide.
struct Net {
  int x, y;
  explicit Net(int test) : x(150 + test), y(test_support::address_slot() + 1) {}
  std::string ip(int z) const {
    return "127." + std::to_string(x) + "." + std::to_string(y) + "." + std::to_string(z);
  }
};

// Errors that say "try again later": no leader yet, a write of unknown outcome, the node is
// down (IOERR is the test client's own code for a failed connection).
bool is_retryable(const resp::Value& v) {
  if (!v.is_error()) return false;
  for (const char* code : {"TRYAGAIN", "TIMEOUT", "CLUSTERDOWN", "IOERR", "MOVED"})
    if (starts_with(v.str, code)) return true;
  return false;
}

// A sanitizer build's nodes report what they find on stderr and keep running (or are killed
// before they exit): each test looks at its logs once it is done.
void check_no_sanitizer_reports(const TempDir& dir) {
  const std::string reports = proc::sanitizer_reports(dir.path());
  if (reports.empty()) return;
  if (std::uncaught_exceptions() > 0)  // the test failed already; say it, without asserting
    std::fprintf(stderr, "sanitizer reports in the process logs:\n%s", reports.c_str());
  else
    FAIL_CHECK("sanitizer reports in the process logs:\n" << reports);
}

// One node: a program from the build started with -i ID -a IP:7000 -d DIR/dID.
class Node {
 public:
  Node(const TempDir& dir, std::string program, std::string id, std::string ip)
      : id(std::move(id)),
        ip(std::move(ip)),
        data_dir(dir / ("d" + this->id)),
        program_(std::move(program)),
        dir_(dir) {}

  std::string address() const { return ip + ":" + std::to_string(kPort); }

  // Starts the node (killing a previous instance); `extra` as -e ... -s ...
  void start(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{proc::example(program_), "-i", id, "-a", address(), "-d", data_dir,
                                  "--time-scale", std::to_string(proc::time_scale())};
    argv.insert(argv.end(), extra.begin(), extra.end());
    extra_ = std::move(extra);
    process_.reset();  // the previous instance, if any, is killed first
    process_ = std::make_unique<Process>(program_ + "-" + id, argv, dir_);
  }
  // Starts it again with the command line it was last started with (the same data directory).
  void restart() { start(extra_); }
  Process& process() { return *process_; }
  bool running() const { return process_ && process_->running(); }
  void kill() {
    if (process_) process_->kill();
  }
  void signal(int sig) { process_->signal(sig); }

  // One command on a fresh connection (an IOERR value if the node cannot be reached).
  resp::Value call(const std::vector<std::string>& args, milliseconds timeout = scaled(10000)) const {
    Client c(ip, kPort, scaled(2000));
    return c.call(args, timeout);
  }
  Client connect() const { return Client(ip, kPort); }
  std::string info(milliseconds timeout = scaled(2000)) const {
    resp::Value v = call({"INFO"}, timeout);
    return v.type == resp::Type::BulkString || v.type == resp::Type::Verbatim ? std::string(v.text()) : "";
  }
  std::string field(const std::string& name) const { return proc::info_field(info(), name); }
  std::string log() const { return process_ ? process_->err() : ""; }

  const std::string id, ip, data_dir;

 private:
  std::string program_;
  std::vector<std::string> extra_;
  const TempDir& dir_;
  std::unique_ptr<Process> process_;
};

// The nodes of one test case.
struct Cluster {
  Net net;
  TempDir dir;
  std::vector<std::unique_ptr<Node>> nodes;

  Cluster(int test, const std::string& tag) : net(test), dir(tag) {}
  ~Cluster() {
    if (std::uncaught_exceptions() > 0)  // a REQUIRE failed: show what the nodes said
      std::fprintf(stderr, "---- output of the processes (last lines)\n%s----\n",
                   proc::output_tails(dir.path()).c_str());
    check_no_sanitizer_reports(dir);
  }
  Node& add(const std::string& program = "run_raft") {
    const int z = static_cast<int>(nodes.size()) + 1;
    nodes.push_back(std::make_unique<Node>(dir, program, std::to_string(z), net.ip(z)));
    return *nodes.back();
  }
  Node& operator[](std::size_t i) { return *nodes.at(i); }
  std::vector<Node*> all() {
    std::vector<Node*> v;
    for (auto& n : nodes) v.push_back(n.get());
    return v;
  }
  std::vector<Node*> all_but(const Node& skip) {
    std::vector<Node*> v;
    for (auto& n : nodes)
      if (n.get() != &skip) v.push_back(n.get());
    return v;
  }
};

// The leader among `nodes` once they agree: exactly one reports raft_role:leader, every other
// reports follower of it, and each reports `voters` voters (0: any). Null if they do not
// agree within the timeout.
Node* wait_agreed_leader(const std::vector<Node*>& nodes, std::size_t voters, milliseconds timeout) {
  Node* leader = nullptr;
  bool ok = eventually(timeout, [&] {
    leader = nullptr;
    std::vector<std::string> infos;
    for (Node* n : nodes) {
      infos.push_back(n->info(scaled(1000)));
      const std::string& info = infos.back();
      if (voters != 0 && proc::info_field(info, "raft_voters") != std::to_string(voters)) return false;
      if (proc::info_field(info, "raft_role") == "leader") {
        if (leader) return false;
        leader = n;
      }
    }
    if (!leader) return false;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (nodes[i] == leader) continue;
      if (proc::info_field(infos[i], "raft_role") != "follower" ||
          proc::info_field(infos[i], "raft_leader_id") != leader->id)
        return false;
    }
    return true;
  });
  return ok ? leader : nullptr;
}

// The article's formation: node 1 founds; node 2 joins through node 1, node 3 through node 2
// (and node k through node k-1). Returns the leader once all agree on `n` voters.
Node* form(Cluster& c, std::size_t n, const std::string& program = "run_raft",
           const std::vector<std::string>& extra = {}) {
  for (std::size_t i = 0; i < n; ++i) c.add(program);
  c[0].start(extra);
  REQUIRE(c[0].process().wait_for_err("leading term", scaled(5000)));
  for (std::size_t i = 1; i < n; ++i) {
    std::vector<std::string> args = extra;
    args.insert(args.end(), {"-e", c[i - 1].address()});
    c[i].start(args);
  }
  Node* leader = wait_agreed_leader(c.all(), n, scaled(15000));
  REQUIRE(leader != nullptr);
  return leader;
}

// Sends `args` to the nodes in turn until one answers other than with a retryable error;
// returns that reply (or the last retryable one at the deadline).
resp::Value call_until_answered(const std::vector<Node*>& nodes, const std::vector<std::string>& args,
                                milliseconds timeout) {
  resp::Value last;
  std::size_t i = 0;
  eventually(timeout, [&] {
    last = nodes[i++ % nodes.size()]->call(args, scaled(5000));
    return !is_retryable(last);
  });
  return last;
}

// A string literal's bytes, NULs included.
template <std::size_t N>
std::string bytes(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

std::string get(const Node& n, const std::string& key) { return show(n.call({"GET", key})); }

// A pipeline: all the commands in one write, then their replies in order.
std::vector<resp::Value> pipeline(Client& c, const std::vector<std::vector<std::string>>& commands,
                                  milliseconds timeout = scaled(30000)) {
  std::string bytes;
  for (const auto& cmd : commands) resp::write_command(bytes, cmd);
  REQUIRE(c.send(bytes));
  std::vector<resp::Value> replies;
  for (std::size_t i = 0; i < commands.size(); ++i) replies.push_back(c.read(timeout));
  return replies;
}

std::string redis_cli() {
  std::string p = proc::find_program("redis-cli");
  REQUIRE_FALSE(p.empty());  // `make deps` installs redis-tools
  return p;
}

// One command through redis-cli against node `n`: what it prints.
std::string cli(const Cluster& c, const Node& n, const std::vector<std::string>& args) {
  std::vector<std::string> argv{redis_cli(), "-h", n.ip, "-p", std::to_string(kPort)};
  argv.insert(argv.end(), args.begin(), args.end());
  proc::RunResult r = proc::run("redis-cli", argv, c.dir, scaled(10000));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  return r.out;
}

// A minimal HTTP server for url_checker: answers every connection "HTTP/1.0 200 OK".
class HttpServer {
 public:
  HttpServer(const std::string& ip, int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(fd_, 64) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~HttpServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  int requests() const { return requests_; }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;  // wakes up to see stop_
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::string req;
      char buf[1024];
      pollfd q{c, POLLIN, 0};
      while (req.find("\r\n\r\n") == std::string::npos && ::poll(&q, 1, 2000) > 0) {
        ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        req.append(buf, static_cast<std::size_t>(n));
      }
      const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
      ::send(c, reply, sizeof reply - 1, MSG_NOSIGNAL);
      ::close(c);
      ++requests_;
    }
  }
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

}  // namespace

// ---- 1. formation ------------------------------------------------------------------------------

TEST_CASE("three nodes formed by joining agree on three voters and one leader and every node reads a write",
          "[process]") {
  Cluster c(1, "join");
  Node* leader = form(c, 3);
  CHECK(c[1].process().wait_for_err("joined cluster", scaled(1000)));
  CHECK(c[2].process().wait_for_err("joined cluster", scaled(1000)));

  REQUIRE(show(leader->call({"SET", "greeting", "hello"})) == "OK");
  for (Node* n : c.all_but(*leader)) CHECK(get(*n, "greeting") == "hello");
  CHECK(get(*leader, "greeting") == "hello");
}

// ---- 2. follower forwarding --------------------------------------------------------------------

TEST_CASE("writes sent to a follower are forwarded to the leader and pipelined ones are answered in order",
          "[process]") {
  Cluster c(2, "forward");
  Node* leader = form(c, 3);
  std::vector<Node*> followers = c.all_but(*leader);

  REQUIRE(show(followers[0]->call({"SET", "via", "follower"})) == "OK");
  CHECK(get(*leader, "via") == "follower");
  CHECK(get(*followers[1], "via") == "follower");

  Client f = followers[0]->connect();
  REQUIRE(f.connected());
  // 200 SETs of one key, each followed by an ECHO, and a GET, in one write. Each SET is answered
  // only after a round trip to the leader, each ECHO at once: the replies come in request order
  // (OK, 0, OK, 1, ...) only if the node holds the ECHO's reply back until the SET's is written.
  // The GET (which waits for the writes before it on this connection) sees the last SET.
  std::vector<std::vector<std::string>> cmds;
  for (int i = 0; i < 200; ++i) {
    cmds.push_back({"SET", "piped", "v" + std::to_string(i)});
    cmds.push_back({"ECHO", std::to_string(i)});
  }
  cmds.push_back({"GET", "piped"});
  std::vector<resp::Value> replies = pipeline(f, cmds);
  for (int i = 0; i < 200; ++i) {
    INFO("command " << 2 * i << " and " << 2 * i + 1);
    REQUIRE(show(replies[static_cast<std::size_t>(2 * i)]) == "OK");
    REQUIRE(show(replies[static_cast<std::size_t>(2 * i + 1)]) == std::to_string(i));
  }
  CHECK(show(replies[400]) == "v199");

  // INCRs answer 1..200 in order: each applied once, replies matched to their commands.
  cmds.assign(200, {"INCR", "counter"});
  replies = pipeline(f, cmds);
  for (int i = 0; i < 200; ++i) {
    INFO("reply " << i);
    REQUIRE(show(replies[static_cast<std::size_t>(i)]) == std::to_string(i + 1));
  }
  CHECK(get(*leader, "counter") == "200");
  CHECK(get(*followers[1], "counter") == "200");
}

// ---- 3. failover ---------------------------------------------------------------------------------

TEST_CASE("after SIGKILL of the leader a new leader serves writes and the old one rejoins as a follower",
          "[process]") {
  Cluster c(3, "failover");
  Node* old_leader = form(c, 3);
  REQUIRE(show(old_leader->call({"SET", "before_kill", "v0"})) == "OK");
  std::vector<Node*> survivors = c.all_but(*old_leader);

  const auto killed_at = proc::Clock::now();
  old_leader->kill();
  resp::Value reply = call_until_answered(survivors, {"SET", "after_kill", "v1"}, scaled(15000));
  const auto elapsed = std::chrono::duration_cast<milliseconds>(proc::Clock::now() - killed_at);
  REQUIRE(show(reply) == "OK");
  std::printf("failover: SIGKILL of the leader -> first acknowledged write: %lld ms\n",
              static_cast<long long>(elapsed.count()));

  Node* leader = wait_agreed_leader(survivors, 3, scaled(10000));
  REQUIRE(leader != nullptr);
  for (Node* n : survivors) {
    CHECK(get(*n, "before_kill") == "v0");
    CHECK(get(*n, "after_kill") == "v1");
  }
  for (int i = 0; i < 20; ++i) REQUIRE(show(leader->call({"SET", "down" + std::to_string(i), "x"})) == "OK");

  old_leader->restart();
  REQUIRE(old_leader->process().wait_for_err("node " + old_leader->id + " at ", scaled(5000)));
  REQUIRE(wait_agreed_leader(c.all(), 3, scaled(10000)) != nullptr);
  CHECK(get(*old_leader, "down19") == "x");
  CHECK(get(*old_leader, "before_kill") == "v0");
  // Caught up locally too, not only through a linearizable read.
  Client ro = old_leader->connect();
  REQUIRE(show(ro.call({"READONLY"})) == "OK");
  CHECK(eventually(scaled(5000), [&] { return show(ro.call({"GET", "down19"})) == "x"; }));
}

// ---- 4. catch-up by snapshot ---------------------------------------------------------------------

TEST_CASE("a follower that missed more than the leader's log keeps catches up by installing a snapshot",
          "[process]") {
  Cluster c(4, "snapshot");
  Node* leader = form(c, 3);
  Node* lagging = c.all_but(*leader)[0];
  lagging->kill();

  // 1500 entries (a node keeps 1000 behind its snapshot), then a snapshot.
  Client l = leader->connect();
  std::vector<std::vector<std::string>> cmds;
  for (int i = 0; i < 1500; ++i) cmds.push_back({"SET", "k" + std::to_string(i), "v" + std::to_string(i)});
  std::vector<resp::Value> replies = pipeline(l, cmds);
  for (std::size_t i = 0; i < replies.size(); ++i) {
    INFO("reply " << i);
    REQUIRE(show(replies[i]) == "OK");
  }
  // On both nodes that run, so that whichever leads when the follower returns has compacted
  // its log past it.
  for (Node* n : c.all_but(*lagging)) {
    REQUIRE(get(*n, "k1499") == "v1499");  // applied there
    REQUIRE(show(n->call({"CHECKPOINT"})) == "OK");
    REQUIRE(std::stoull("0" + n->field("raft_snapshot_index")) >= 1500);
  }

  lagging->restart();
  REQUIRE(lagging->process().wait_for_err("installed a snapshot", scaled(15000)));
  REQUIRE(wait_agreed_leader(c.all(), 3, scaled(10000)) != nullptr);
  CHECK(show(lagging->call({"DBSIZE"})) == show(leader->call({"DBSIZE"})));
  CHECK(show(lagging->call({"DBSIZE"})) == "1500");
  Client ro = lagging->connect();
  REQUIRE(show(ro.call({"READONLY"})) == "OK");
  CHECK(eventually(scaled(5000), [&] { return show(ro.call({"GET", "k1499"})) == "v1499"; }));
  for (const char* k : {"k0", "k777", "k1499"}) CHECK(show(ro.call({"GET", k})) == get(*leader, k));
}

// ---- 5. linearizable follower reads --------------------------------------------------------------

TEST_CASE("a GET on a follower right after an acknowledged write returns that write", "[process]") {
  Cluster c(5, "linread");
  Node* leader = form(c, 3);
  std::vector<Node*> followers = c.all_but(*leader);
  Client l = leader->connect(), f1 = followers[0]->connect(), f2 = followers[1]->connect();
  for (int i = 0; i < 100; ++i) {
    const std::string v = std::to_string(i);
    REQUIRE(show(l.call({"SET", "lin", v})) == "OK");
    REQUIRE(show(f1.call({"GET", "lin"})) == v);
    REQUIRE(show(f2.call({"GET", "lin"})) == v);
  }
}

// ---- 6. a minority refuses -----------------------------------------------------------------------

namespace {
// With the others stopped, `alone` must refuse writes and linearizable reads; a READONLY
// connection opened before reads the local value.
void check_minority_refuses(Node& alone, Client& readonly, const std::string& key, const std::string& value) {
  Client w = alone.connect(), r = alone.connect();
  REQUIRE(w.send_command({"SET", key, "during_partition"}));
  REQUIRE(r.send_command({"GET", key}));
  const resp::Value wr = w.read(scaled(15000)), rr = r.read(scaled(15000));
  INFO("write: " << show(wr) << "  read: " << show(rr));
  // The write: of unknown outcome if it was appended (TIMEOUT), refused if it never was.
  CHECK(wr.is_error());
  CHECK((starts_with(wr.str, "TIMEOUT") || starts_with(wr.str, "CLUSTERDOWN") ||
         starts_with(wr.str, "TRYAGAIN")));
  // The read: refused because no majority confirmed a leader, not answered in some other way
  // (a hang ends in the client's IOERR; a read sent through the log would get TIMEOUT).
  CHECK(starts_with(show(rr), "-TRYAGAIN could not confirm leadership for a linearizable read"));
  CHECK(show(readonly.call({"GET", key})) == value);
}
}  // namespace

TEST_CASE("a node cut off from the majority refuses writes and linearizable reads until it is healed",
          "[process]") {
  Cluster c(6, "minority");
  Node* leader = form(c, 3);
  std::vector<Node*> followers = c.all_but(*leader);
  REQUIRE(show(leader->call({"SET", "k", "v1"})) == "OK");

  SECTION("the leader alone") {
    Client ro = leader->connect();
    REQUIRE(show(ro.call({"READONLY"})) == "OK");
    REQUIRE(show(ro.call({"GET", "k"})) == "v1");
    for (Node* f : followers) REQUIRE(f->process().pause());
    check_minority_refuses(*leader, ro, "k", "v1");
  }
  SECTION("a follower alone") {
    Node* alone = followers[0];
    Client ro = alone->connect();
    REQUIRE(show(ro.call({"READONLY"})) == "OK");
    REQUIRE(eventually(scaled(5000), [&] { return show(ro.call({"GET", "k"})) == "v1"; }));
    REQUIRE(leader->process().pause());
    REQUIRE(followers[1]->process().pause());
    check_minority_refuses(*alone, ro, "k", "v1");
  }

  for (Node* n : c.all()) n->process().resume();
  REQUIRE(wait_agreed_leader(c.all(), 3, scaled(15000)) != nullptr);
  REQUIRE(show(call_until_answered(c.all(), {"SET", "healed", "yes"}, scaled(15000))) == "OK");
  for (Node* n : c.all()) CHECK(get(*n, "healed") == "yes");
}

// ---- 7. no election alone after a restart -----------------------------------------------------------

TEST_CASE("a restarted node with a data directory never elects itself alone and refuses writes",
          "[process]") {
  Cluster c(7, "alone");
  form(c, 3);
  REQUIRE(show(c[0].call({"SET", "k", "kept"})) == "OK");
  for (Node* n : c.all()) n->kill();

  // pyraft's lost write: its restarted founder led alone and acknowledged writes that were
  // then discarded. Here the founder, restarted with its own command line, must wait.
  c[0].restart();
  REQUIRE(c[0].process().wait_for_err("node 1 at ", scaled(5000)));
  CHECK(c[0].process().wait_for_err("restarting from ", scaled(1000)));
  Client watch = c[0].connect();
  REQUIRE(watch.connected());
  const auto raft_info = [&] { return std::string(watch.call({"INFO", "raft"}).text()); };
  const std::string at_start = raft_info();
  const std::string term = proc::info_field(at_start, "raft_term");
  REQUIRE_FALSE(term.empty());
  CHECK(proc::info_field(at_start, "raft_voters") == "3");  // the configuration it persisted
  // No leader is known: the write is refused as never run (not appended and left to time out).
  Client w = c[0].connect();
  REQUIRE(w.connected());
  const resp::Value wr = w.call({"SET", "lost", "write"}, scaled(15000));
  INFO("write while alone: " << show(wr));
  CHECK(starts_with(show(wr), "-CLUSTERDOWN"));
  // Over several of its election timeouts it campaigns (its log says so) and never wins: it is
  // never a leader, and its term never moves (a pre-vote without a majority changes nothing).
  std::string last;
  const bool stayed = proc::holds_for(scaled(5 * kElectionMaxMs), [&] {
    last = raft_info();
    return proc::info_field(last, "raft_role") != "leader" && proc::info_field(last, "raft_term") == term;
  });
  INFO("term at the restart " << term << "; last INFO raft:\n" << last << "log:\n" << c[0].log());
  CHECK(stayed);
  CHECK(proc::count(c[0].log(), "role c in term " + term) >= 1);
  CHECK(proc::count(c[0].log(), " is a leader") == 0);
  CHECK(proc::count(c[0].log(), "leading term") == 0);

  // With its peers back the cluster elects and has lost nothing acknowledged.
  c[1].restart();
  c[2].restart();
  REQUIRE(wait_agreed_leader(c.all(), 3, scaled(15000)) != nullptr);
  for (Node* n : c.all()) CHECK(get(*n, "k") == "kept");
}

// ---- 8. a wiped node rejoins as a stranger -----------------------------------------------------------

TEST_CASE(
    "a follower whose data directory was wiped rejoins under a new server id as a learner and then a voter",
    "[process]") {
  Cluster c(8, "wiped");
  Node* leader = form(c, 3);
  Node* wiped = c.all_but(*leader)[1];
  const std::string old_server_id = wiped->field("raft_server_id");
  REQUIRE_FALSE(old_server_id.empty());
  REQUIRE(show(leader->call({"SET", "before", "1"})) == "OK");

  wiped->kill();
  std::filesystem::remove_all(wiped->data_dir);
  REQUIRE(show(leader->call({"SET", "while_gone", "2"})) == "OK");
  wiped->start({"-e", leader->address()});

  // Logged by the leader (whichever node leads by then).
  REQUIRE(eventually(scaled(10000), [&] {
    for (Node* n : c.all_but(*wiped))
      if (n->log().find("re-adding it as a learner") != std::string::npos) return true;
    return false;
  }));
  std::string new_server_id;
  CHECK(eventually(scaled(5000), [&] {
    new_server_id = wiped->field("raft_server_id");
    return !new_server_id.empty();
  }));
  CHECK(new_server_id != old_server_id);
  // A voter again: the leader lists it as one and it reports itself a follower.
  leader = wait_agreed_leader(c.all(), 3, scaled(15000));
  REQUIRE(leader != nullptr);
  CHECK(eventually(scaled(5000), [&] {
    std::string info = leader->info();
    for (int i = 0; i < 3; ++i) {
      std::string m = proc::info_field(info, "raft_member" + std::to_string(i));
      if (starts_with(m, "id=" + wiped->id + ",")) return m.find("role=voter") != std::string::npos;
    }
    return false;
  }));
  CHECK(get(*wiped, "before") == "1");
  CHECK(get(*wiped, "while_gone") == "2");
  REQUIRE(show(wiped->call({"SET", "after", "3"})) == "OK");
  CHECK(get(*leader, "after") == "3");
}

// ---- 9. the peer secret ------------------------------------------------------------------------------

TEST_CASE("a cluster with a secret refuses joiners without it or with a wrong one and admits the right one",
          "[process]") {
  Cluster c(9, "secret");
  Node& founder = c.add();
  founder.start({"-s", "s3cret"});
  REQUIRE(founder.process().wait_for_err("leading term", scaled(5000)));

  // Each refused twice (it was refused, asked again and was refused again), as both the
  // founder and the joiner say; neither ever joins.
  Node& no_secret = c.add();
  no_secret.start({"-e", founder.address()});
  Node& wrong = c.add();
  wrong.start({"-e", founder.address(), "-s", "guess"});
  for (Node* n : {&no_secret, &wrong})
    REQUIRE(n->process().wait_for_err("to join: ERR wrong secret", scaled(10000), 2));
  CHECK(founder.process().wait_for_err("refused a peer connection: wrong secret", scaled(1000), 4));
  CHECK(founder.field("raft_members") == "1");
  for (Node* n : {&no_secret, &wrong}) {
    CHECK(n->field("raft_cluster_id").empty());
    CHECK(n->field("raft_role") == "learner");
    CHECK(proc::count(n->log(), "joined cluster") == 0);
    CHECK(proc::starts_with(show(n->call({"SET", "x", "y"})), "-CLUSTERDOWN"));
  }
  no_secret.kill();
  wrong.kill();

  Node& right = c.add();
  right.start({"-e", founder.address(), "-s", "s3cret"});
  REQUIRE(right.process().wait_for_err("joined cluster", scaled(10000)));
  REQUIRE(wait_agreed_leader({&founder, &right}, 2, scaled(10000)) != nullptr);
  REQUIRE(show(right.call({"SET", "through", "secret"})) == "OK");
  CHECK(get(founder, "through") == "secret");
}

// ---- 10. the examples ----------------------------------------------------------------------------------

TEST_CASE("three_nodes elects a leader among its static peers and serves on every node until SIGTERM",
          "[process]") {
  Net net(10);
  TempDir dir("three_nodes");
  const std::string ip = net.ip(1);
  Process p("three_nodes", {proc::example("three_nodes"), ip}, dir);
  std::vector<int> ports{5010, 5020, 5030};
  auto role = [&](int port) {
    Client cl(ip, port, scaled(1000));
    return proc::info_field(std::string(cl.call({"INFO", "raft"}, scaled(1000)).text()), "raft_role");
  };
  REQUIRE(eventually(scaled(10000), [&] {
    int leaders = 0, followers = 0;
    for (int port : ports) {
      std::string r = role(port);
      leaders += r == "leader";
      followers += r == "follower";
    }
    return leaders == 1 && followers == 2;
  }));
  for (int port : ports) {
    Client cl(ip, port);
    const std::string key = "k" + std::to_string(port);
    REQUIRE(show(cl.call({"SET", key, "v"})) == "OK");
  }
  for (int port : ports) {
    Client cl(ip, port);
    for (int key_port : ports) CHECK(show(cl.call({"GET", "k" + std::to_string(key_port)})) == "v");
  }

  p.signal(SIGTERM);
  auto code = p.wait_exit(scaled(15000));
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  for (int port : ports) CHECK_FALSE(Client(ip, port, scaled(1000)).connected());
  check_no_sanitizer_reports(dir);
}

TEST_CASE("make run's cluster serves on all three nodes and stops on Ctrl-C, and so does a node "
          "started in the background of a script",
          "[process]") {
  Net net(23);
  TempDir dir("make_run");
  const std::string ip = net.ip(1);
  const std::string run_raft = std::filesystem::absolute(proc::example("run_raft")).string();
  const std::string scale = std::to_string(proc::time_scale());
  auto role = [&](int port) {
    Client cl(ip, port, scaled(1000));
    return proc::info_field(std::string(cl.call({"INFO", "raft"}, scaled(1000)).text()), "raft_role");
  };
  {
    // The README's `make run`, as a terminal runs it: a foreground process group that Ctrl-C
    // signals as a whole.
    Process run("run_cluster", {"tools/run_cluster.sh", run_raft, ip, "--time-scale", scale}, dir, "",
                /*own_group=*/true);
    const std::vector<int> ports{5010, 5020, 5030};
    REQUIRE(eventually(scaled(15000), [&] {
      int leaders = 0, followers = 0;
      for (int port : ports) {
        const std::string r = role(port);
        leaders += r == "leader";
        followers += r == "follower";
      }
      return leaders == 1 && followers == 2;
    }));
    REQUIRE(show(Client(ip, 5020).call({"SET", "key", "value"})) == "OK");
    CHECK(show(Client(ip, 5030).call({"GET", "key"})) == "value");
    CHECK(run.out().find("redis-cli -h " + ip + " -p 5010") != std::string::npos);

    run.signal_group(SIGINT);
    REQUIRE(run.wait_exit(scaled(15000)).has_value());
    CHECK(run.out().find("stopped") != std::string::npos);
    CHECK(proc::count(run.err(), "] stopping") == 3);
    for (int port : ports) CHECK_FALSE(Client(ip, port, scaled(1000)).connected());
  }
  {
    // A non-interactive shell starts background jobs with SIGINT ignored, and this one has no
    // trap to pass Ctrl-C on: the node itself must stop on it.
    Process sh("background",
               {"/bin/sh", "-c", "\"$0\" -i 9 -a \"$1\" -d d9 --time-scale \"$2\" & echo \"$!\"; wait",
                run_raft, ip + ":7000", scale},
               dir, "", /*own_group=*/true);
    REQUIRE(sh.wait_for_err("leading term", scaled(10000)));
    const pid_t node = static_cast<pid_t>(std::atol(sh.out().c_str()));
    REQUIRE(node > 0);
    sh.signal_group(SIGINT);
    REQUIRE(sh.wait_exit(scaled(10000)).has_value());
    // The shell is gone and the node is no child of ours now: look for it by its PID (gone, or
    // a zombie its new parent has not reaped yet).
    const auto exited = [&] {
      const std::string stat = proc::read_file("/proc/" + std::to_string(node) + "/stat");
      const auto paren = stat.rfind(')');
      return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z';
    };
    const bool stopped = eventually(scaled(10000), exited);
    if (!stopped) ::kill(node, SIGKILL);  // it ignored Ctrl-C: do not leave it running
    CHECK(stopped);
    CHECK(proc::count(sh.err(), "] stopping") == 1);
  }
  check_no_sanitizer_reports(dir);
}

namespace {
// Reads one reply at a time from an inline (telnet-style) session: a line in, a reply out.
std::string telnet(Client& c, const std::string& line) {
  REQUIRE(c.send(line + "\r\n"));
  return show(c.read());
}
}  // namespace

TEST_CASE("cas answers the article's telnet session over inline commands and redis-cli", "[process]") {
  Cluster c(11, "cas");
  Node* leader = form(c, 2, "cas");
  Node* follower = c.all_but(*leader)[0];

  // On the leader, typed as in telnet.
  Client t = leader->connect();
  REQUIRE(t.connected());
  CHECK(telnet(t, "cas key None 1") == "None");
  CHECK(telnet(t, "get key") == "1");
  CHECK(telnet(t, "cas key 2 3") == "1");
  CHECK(telnet(t, "get key") == "1");
  CHECK(telnet(t, "cas key 1 3") == "1");
  CHECK(telnet(t, "get key") == "3");
  CHECK(telnet(t, "cas missing 1 2") == "(nil)");
  CHECK(get(*follower, "key") == "3");  // the handler ran on the follower too

  // Through redis-cli on the follower (forwarded to the leader).
  auto run_cli = [&](const std::vector<std::string>& args) { return cli(c, *follower, args); };
  CHECK(run_cli({"cas", "key2", "None", "1"}) == "None\n");
  CHECK(run_cli({"get", "key2"}) == "1\n");
  CHECK(run_cli({"cas", "key2", "2", "3"}) == "1\n");
  CHECK(run_cli({"get", "key2"}) == "1\n");
  CHECK(run_cli({"cas", "key2", "1", "3"}) == "1\n");
  CHECK(run_cli({"get", "key2"}) == "3\n");
  CHECK(proc::starts_with(run_cli({"cas", "key2", "3"}), "ERR wrong number of arguments for 'cas'"));
}

TEST_CASE("url_checker checks the url keys on the leader only and a new leader takes over after SIGKILL",
          "[process]") {
  Cluster c(12, "url_checker");
  const std::string web_ip = c.net.ip(9);
  HttpServer web(web_ip, 8080);
  for (int i = 0; i < 3; ++i) c.add("url_checker");
  c[0].start({"--interval", "0.2"});
  REQUIRE(c[0].process().wait_for_err("leading term", scaled(5000)));
  c[1].start({"--interval", "0.2", "-e", c[0].address()});
  c[2].start({"--interval", "0.2", "-e", c[1].address()});
  Node* leader = wait_agreed_leader(c.all(), 3, scaled(15000));
  REQUIRE(leader != nullptr);
  REQUIRE(cli(c, *leader, {"set", "url_good", "http://" + web_ip + ":8080/health"}) == "OK\n");
  REQUIRE(cli(c, *leader, {"set", "url_bad", web_ip + ":8081"}) == "OK\n");  // nothing listens

  REQUIRE(leader->process().wait_for_out("url url_good is ok", scaled(10000), 3));
  REQUIRE(leader->process().wait_for_out("url url_bad is bad - ", scaled(10000), 3));
  CHECK(leader->process().out().find("url url_bad is bad - Connection refused") != std::string::npos);
  CHECK(web.requests() >= 3);
  std::vector<Node*> others = c.all_but(*leader);
  for (Node* n : others) CHECK(n->process().out().empty());

  leader->kill();
  Node* next = wait_agreed_leader(others, 3, scaled(15000));
  REQUIRE(next != nullptr);
  REQUIRE(next->process().wait_for_out("url url_good is ok", scaled(10000)));
  // The order is guaranteed: on_leader prints "check start" (and flushes) before it starts the
  // thread that prints the checks, so a check printed before it would come from somewhere else.
  const std::string out = next->process().out();
  const auto start = out.find("check start (leading term ");
  REQUIRE(start != std::string::npos);
  CHECK(start < out.find("url url_good is ok"));
  CHECK(next->process().wait_for_out("url url_bad is bad - ", scaled(10000)));
  for (Node* n : others)
    if (n != next) CHECK(n->process().out().empty());
}

TEST_CASE("session_checker reports a fresh session ok and an old one EXPIRED on the leader only, and a new "
          "leader takes over after SIGKILL",
          "[process]") {
  Cluster c(13, "session_checker");
  Node* leader = form(c, 3, "session_checker", {"--interval", "0.2", "--timeout", "60"});
  std::vector<Node*> others = c.all_but(*leader);
  const long long now = static_cast<long long>(std::time(nullptr));
  REQUIRE(cli(c, *others[0], {"set", "session_fresh", std::to_string(now)}) == "OK\n");  // forwarded
  REQUIRE(cli(c, *leader, {"set", "session_old", std::to_string(now - 1000)}) == "OK\n");
  REQUIRE(leader->process().wait_for_out("session session_fresh is ok (diff: ", scaled(10000)));
  REQUIRE(leader->process().wait_for_out("session session_old is EXPIRED (diff: ", scaled(10000)));
  CHECK(leader->process().out().find("session session_fresh is EXPIRED") == std::string::npos);
  CHECK(leader->process().out().find("session session_old is ok") == std::string::npos);
  for (Node* n : others) CHECK(n->process().out().empty());

  leader->kill();
  Node* next = wait_agreed_leader(others, 3, scaled(15000));
  REQUIRE(next != nullptr);
  REQUIRE(next->process().wait_for_out("session session_old is EXPIRED (diff: ", scaled(10000)));
  CHECK(next->process().wait_for_out("session session_fresh is ok (diff: ", scaled(10000)));
  for (Node* n : others)
    if (n != next) CHECK(n->process().out().empty());
}

// ---- 11. real clients ------------------------------------------------------------------------------------

TEST_CASE("redis-cli works unchanged with commands as arguments and piped on stdin", "[process]") {
  Cluster c(14, "redis_cli");
  Node* leader = form(c, 3);
  Node* follower = c.all_but(*leader)[0];
  const std::string cli = redis_cli();
  auto run_cli = [&](Node& n, std::vector<std::string> args, const std::string& input = "") {
    std::vector<std::string> argv{cli, "-h", n.ip, "-p", std::to_string(kPort)};
    argv.insert(argv.end(), args.begin(), args.end());
    proc::RunResult r = proc::run("redis-cli", argv, c.dir, scaled(10000), input);
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    return r.out;
  };
  CHECK(run_cli(*follower, {"set", "k", "from cli"}) == "OK\n");
  CHECK(run_cli(*leader, {"get", "k"}) == "from cli\n");
  CHECK(run_cli(*follower, {"get", "nokey"}) == "\n");  // nil prints as an empty line when piped
  CHECK(run_cli(*follower, {"ping"}) == "PONG\n");
  const std::string info = run_cli(*follower, {"info", "raft"});
  CHECK(proc::info_field(info, "raft_role") == "follower");
  CHECK(proc::info_field(info, "raft_leader_id") == leader->id);
  CHECK(proc::info_field(info, "raft_voters") == "3");
  CHECK(run_cli(*leader, {"rpush", "l", "a", "b", "c"}) == "3\n");
  CHECK(run_cli(*follower, {"lrange", "l", "0", "-1"}) == "a\nb\nc\n");
  CHECK(proc::starts_with(run_cli(*leader, {"nosuchcommand"}), "ERR unknown command 'nosuchcommand'"));

  // Lines on stdin, with quoting, as a user types them in the interactive prompt.
  const std::string out =
      run_cli(*follower, {}, "set \"sp ace\" \"v a l\"\nget \"sp ace\"\nincr n\nincr n\ndbsize\n");
  CHECK(out == "OK\nv a l\n1\n2\n4\n");
}

TEST_CASE("redis-benchmark runs SET and GET against a three-node cluster and its data is replicated",
          "[process]") {
  Cluster c(15, "redis_benchmark");
  Node* leader = form(c, 3);
  Node* follower = c.all_but(*leader)[0];
  const std::string bench = proc::find_program("redis-benchmark");
  REQUIRE_FALSE(bench.empty());
  for (Node* n : {leader, follower}) {
    proc::RunResult r = proc::run(
        "redis-benchmark",
        {bench, "-h", n->ip, "-p", std::to_string(kPort), "-t", "set,get", "-n", "2000", "-c", "20", "-q"},
        c.dir, scaled(120000));
    INFO("node " << n->id << " stdout: " << r.out << " stderr: " << r.err);
    CHECK(r.code == 0);
    CHECK(r.out.find("SET: ") != std::string::npos);
    CHECK(r.out.find("GET: ") != std::string::npos);
  }
  // Without -r every request uses the key "key:__rand_int__" and a 3-byte value.
  const std::string value = get(*leader, "key:__rand_int__");
  CHECK(value.size() == 3);
  for (Node* n : c.all()) {
    CHECK(show(n->call({"DBSIZE"})) == "1");
    CHECK(get(*n, "key:__rand_int__") == value);
  }
  CHECK(std::stoull("0" + leader->field("raft_commit_index")) >= 4000);  // every SET went through the log
}

TEST_CASE("redis-py works unchanged with strings and hashes and pipelines and errors and RESP3",
          "[process]") {
  Cluster c(16, "redis_py");
  Node* leader = form(c, 3);
  Node* follower = c.all_but(*leader)[0];
  const std::string script = R"PY(
import inspect, sys, redis
host, port = sys.argv[1], int(sys.argv[2])
def check(r, tag):
    assert r.ping() is True
    assert r.set(tag + 's', 'v') is True
    assert r.get(tag + 's') == b'v', r.get(tag + 's')
    assert r.get(tag + 'missing') is None
    assert r.hset(tag + 'h', mapping={'f1': 'a', 'f2': 'b'}) == 2
    h = r.hgetall(tag + 'h')
    assert isinstance(h, dict) and h == {b'f1': b'a', b'f2': b'b'}, h
    p = r.pipeline(transaction=False)
    for i in range(50):
        p.set(tag + 'p%d' % i, i)
    p.incr(tag + 'n')
    p.get(tag + 'p49')
    res = p.execute()
    assert res[:50] == [True] * 50 and res[50] == 1 and res[51] == b'49', res
    r.rpush(tag + 'l', 'x')
    try:
        r.get(tag + 'l')
        raise AssertionError('no WRONGTYPE')
    except redis.exceptions.ResponseError as e:
        assert str(e).startswith('WRONGTYPE'), e
    assert r.expire(tag + 's', 100) is True
    assert 0 < r.ttl(tag + 's') <= 100
    print(tag, 'ok')
check(redis.Redis(host=host, port=port), 'resp2')
if 'protocol' in inspect.signature(redis.Redis.__init__).parameters:
    check(redis.Redis(host=host, port=port, protocol=3), 'resp3')
else:
    print('resp3 not supported by redis-py', redis.__version__)
)PY";
  std::ofstream(c.dir / "client.py") << script;
  proc::RunResult r =
      proc::run("python", {"/usr/bin/python3", c.dir / "client.py", follower->ip, std::to_string(kPort)},
                c.dir, scaled(60000));
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("resp2 ok") != std::string::npos);
  CHECK((r.out.find("resp3 ok") != std::string::npos ||
         r.out.find("resp3 not supported") != std::string::npos));
  CHECK(get(*leader, "resp2p49") == "49");

  // RESP3 from our own client, whatever redis-py supports: HELLO 3 and a hash as a map.
  Client c3 = follower->connect();
  const resp::Value hello = c3.call({"HELLO", "3"});
  REQUIRE(hello.type == resp::Type::Map);
  bool proto3 = false;
  for (std::size_t i = 0; i + 1 < hello.elements.size(); i += 2)
    proto3 |= hello.elements[i].text() == "proto" && hello.elements[i + 1].num == 3;
  CHECK(proto3);
  const resp::Value h = c3.call({"HGETALL", "resp2h"});
  REQUIRE(h.type == resp::Type::Map);
  CHECK(show(h) == "[f1, a, f2, b]");
  CHECK(c3.call({"GET", "nokey"}).type == resp::Type::Null);
}

// ---- 12. bad input
// -----------------------------------------------------------------------------------------

namespace {
// Malformed requests, each for a connection of its own.
std::vector<std::string> malformed_requests() {
  return {
      "*abc\r\n",                             // bad multibulk length
      "*1\r\n$-5\r\n",                        // negative bulk length
      "*1\r\n$1073741824\r\n",                // 1 GiB declared, above the 512 MiB limit
      bytes("*\x01\xff\x80\x00garbage\r\n"),  // binary garbage
      std::string(70 * 1024, 'a'),            // an inline line over 64 KiB, unterminated
      "set \"unbalanced v\r\n",               // inline, unbalanced quotes
  };
}

std::size_t open_fds(const Process& p) {
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(p.pid()) + "/fd")) {
    (void)e;
    ++n;
  }
  return n;
}
}  // namespace

TEST_CASE("malformed client input gets a protocol error while the node keeps serving other clients",
          "[process]") {
  Cluster c(17, "bad_client");
  Node* leader = form(c, 3);
  Client bystander = leader->connect();
  REQUIRE(show(bystander.call({"SET", "k", "v"})) == "OK");

  for (const std::string& bytes : malformed_requests()) {
    Client bad = leader->connect();
    REQUIRE(bad.connected());
    REQUIRE(bad.send(bytes));
    const resp::Value v = bad.read(scaled(5000));
    INFO("sent " << bytes.size() << " bytes starting " << bytes.substr(0, 40) << "; got " << show(v));
    CHECK(starts_with(v.str, "ERR Protocol error"));
    CHECK(show(bystander.call({"PING"})) == "PONG");
  }

  // A declared bulk of 500 MB (over proto-max-bulk-len, under Redis's 512 MiB), never sent,
  // then a close: nothing of its size is allocated.
  {
    Client big = leader->connect();
    REQUIRE(big.send("*2\r\n$3\r\nget\r\n$500000000\r\nabc"));
  }
  CHECK(show(bystander.call({"PING"})) == "PONG");
  CHECK(leader->process().status_field("VmRSS") < 200 * 1024);  // kB

  // Command-level errors keep the connection usable.
  Client u = leader->connect();
  const resp::Value unknown = u.call({"FLUBBER", "a", "b"});
  // The command named as sent, as Redis does (the differential test compares it with Redis).
  CHECK(starts_with(unknown.str, "ERR unknown command 'FLUBBER', with args beginning with: 'a' 'b'"));
  CHECK(show(u.call({"GET"})) == "-ERR wrong number of arguments for 'get' command");
  CHECK(show(u.call({"SET", "a"})) == "-ERR wrong number of arguments for 'set' command");
  CHECK(starts_with(show(u.call({"RPUSH", "k", "x"})), "-WRONGTYPE"));
  CHECK(show(u.call({"GET", "k"})) == "v");
  REQUIRE(u.send(bytes("\x00\x01\xfe\xff binary\r\n")));  // inline junk: an unknown command
  CHECK(starts_with(u.read().str, "ERR unknown command"));
  CHECK(show(u.call({"PING"})) == "PONG");

  for (Node* n : c.all()) CHECK(n->running());
  REQUIRE(show(bystander.call({"SET", "k", "v2"})) == "OK");
  for (Node* n : c.all()) CHECK(get(*n, "k") == "v2");
}

TEST_CASE("the node closes a client connection after a protocol error and keeps no descriptor for it",
          "[process]") {
  Cluster c(20, "protocol_close");
  Node& n = *form(c, 1);
  Client probe = n.connect();
  REQUIRE(show(probe.call({"PING"})) == "PONG");
  const std::size_t fds_before = open_fds(n.process());

  std::vector<Client> bad;
  for (const std::string& bytes : malformed_requests()) {
    bad.push_back(n.connect());
    REQUIRE(bad.back().send(bytes));
    CHECK(starts_with(bad.back().read(scaled(5000)).str, "ERR Protocol error"));
  }
  // Redis closes the connection once the error is written.
  const auto deadline = proc::Clock::now() + scaled(1500);
  for (std::size_t i = 0; i < bad.size(); ++i) {
    const auto left =
        std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(deadline - proc::Clock::now()));
    INFO("request " << i);
    CHECK(bad[i].wait_closed(left));
  }
  // Whoever closed first, the node keeps no descriptor for these connections.
  bad.clear();
  std::size_t fds_now = 0;
  CHECK(eventually(scaled(1500), [&] { return (fds_now = open_fds(n.process())) <= fds_before; }));
  INFO("descriptors before: " << fds_before << ", after: " << fds_now);
  CHECK(fds_now <= fds_before);
}

TEST_CASE("a client that half-closes its connection after sending commands still gets every reply",
          "[process]") {
  Cluster c(21, "half_close");
  Node& n = *form(c, 1);
  int answered = 0;
  const int kTries = 20;
  for (int i = 0; i < kTries; ++i) {
    // As `printf 'PING\r\n...' | nc -N host port` does: the commands and the FIN together.
    Client cl = n.connect();
    REQUIRE(cl.send("PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n"));
    ::shutdown(cl.fd(), SHUT_WR);
    const std::string first = show(cl.read(scaled(3000))), second = show(cl.read(scaled(3000)));
    answered += first == "PONG" && second == "hi";
  }
  CHECK(answered == kTries);
}

TEST_CASE("malformed peer input is refused and logged and closed while the cluster keeps working",
          "[process]") {
  Cluster c(18, "bad_peer");
  Node* leader = form(c, 3);
  Node* follower = c.all_but(*leader)[0];
  const std::string cluster_id = leader->field("raft_cluster_id");
  REQUIRE_FALSE(cluster_id.empty());
  const std::string stranger = c.net.ip(9) + ":7000";

  for (Node* target : {leader, follower}) {
    auto peer = [&] { return Client(target->ip, kPort + 1); };
    {
      Client p = peer();
      REQUIRE(p.send(bytes("\x16\x03\x01 garbage \xff\xfe\r\n")));
      CHECK(p.read(scaled(5000)).str == "ERR expected HELLO");
      CHECK(p.wait_closed(scaled(5000)));
      CHECK(target->process().wait_for_err("refused a peer connection: expected HELLO", scaled(5000)));
    }
    {
      Client p = peer();
      REQUIRE(p.send("*2\r\n$5\r\nHELLO\r\n$-7\r\n"));
      CHECK(p.wait_closed(scaled(5000)));
      CHECK(target->process().wait_for_err("refused a peer connection: malformed handshake", scaled(5000)));
    }
    {
      // A node of another version is refused, with a message an operator can act on.
      Client p = peer();
      const resp::Value v = p.call({"HELLO", "1", cluster_id, "9", "feed", stranger, ""}, scaled(5000));
      CHECK(starts_with(v.str, std::string("ERR peer protocol version 1 is not ") + raft::detail::kPeerProtocolVersion +
                                   ": node 9 runs another version"));
      CHECK(p.wait_closed(scaled(5000)));
    }
    {
      Client p = peer();
      raft::detail::PeerSession session;
      resp::Value v;
      CHECK(test_support::peer_hello(p.fd(), "0123456789abcdef", "9", "feed", stranger, "", session, v,
                                     static_cast<int>(scaled(5000).count())));
      CHECK(starts_with(v.str, "ERR node 9 belongs to cluster 0123456789abcdef"));
      CHECK(p.wait_closed(scaled(5000)));
      CHECK(target->process().wait_for_err("refused a peer connection: node 9 belongs to cluster",
                                           scaled(5000)));
    }
    for (const std::vector<std::string>& raft : std::vector<std::vector<std::string>>{
             {"RAFT", "garbage"},
             {"RAFT", "99", "1", "2", "3", "4", "0", "0", "0", "0", "0", "0", "0", "x", "y", "z"},
             {"RAFT", "5", "99999999999999999999999", "2", "3", "4", "0", "0", "0", "0", "0", "0", "0", "x",
              "y", "z"}}) {
      Client p = peer();
      raft::detail::PeerSession session;
      resp::Value v;
      REQUIRE(test_support::peer_hello(p.fd(), cluster_id, "9", "feed", stranger, "", session, v,
                                       static_cast<int>(scaled(5000).count())));
      CHECK(show(v) == "WELCOME");
      REQUIRE(test_support::peer_send(p.fd(), session, raft));
      CHECK(p.wait_closed(scaled(5000)));
    }
    CHECK(target->process().wait_for_err("malformed RAFT message", scaled(5000), 3));
  }

  for (Node* n : c.all()) CHECK(n->running());
  REQUIRE(wait_agreed_leader(c.all(), 3, scaled(10000)) != nullptr);
  REQUIRE(show(follower->call({"SET", "still", "working"})) == "OK");
  for (Node* n : c.all()) CHECK(get(*n, "still") == "working");
}

TEST_CASE("a peer connection that has not said HELLO may send only a small HELLO, and not wait forever",
          "[process]") {
  Cluster c(22, "hello_limits");
  Node& n = *form(c, 1);
  {
    // A large first bulk (an unauthenticated peer streaming data) is refused at once.
    Client p(n.ip, kPort + 1);
    REQUIRE(p.send("*7\r\n$5\r\nHELLO\r\n$1048576\r\n"));
    CHECK(p.wait_closed(scaled(5000)));
    CHECK(n.process().wait_for_err("refused a peer connection: malformed handshake", scaled(5000)));
  }
  {
    // A connection that says nothing is dropped after the handshake deadline (3 s).
    Client p(n.ip, kPort + 1);
    CHECK(p.wait_closed(scaled(10000)));
  }
  CHECK(n.running());
  CHECK(show(n.call({"SET", "still", "up"})) == "OK");
}

// ---- 13. many clients
// --------------------------------------------------------------------------------------

TEST_CASE("three hundred client connections cost no threads and all get PONG", "[process]") {
  Cluster c(19, "clients");
  Node* leader = form(c, 3);
  Client one = leader->connect();
  REQUIRE(show(one.call({"PING"})) == "PONG");
  const long threads_with_one = leader->process().status_field("Threads");
  REQUIRE(threads_with_one > 0);

  std::vector<Client> clients;
  for (int i = 0; i < 300; ++i) {
    clients.push_back(leader->connect());
    REQUIRE(clients.back().connected());
  }
  for (auto& cl : clients) REQUIRE(cl.send_command({"PING"}));
  int pongs = 0;
  for (auto& cl : clients) pongs += show(cl.read()) == "PONG";
  CHECK(pongs == 300);
  CHECK(leader->process().status_field("Threads") == threads_with_one);
  CHECK(show(one.call({"PING"})) == "PONG");
}
