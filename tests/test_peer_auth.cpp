// Peer authentication (section 5, "peer authentication") against real nodes in this process:
// what a stranger on the peer port can do, what a node sends to an address that has not proved
// it holds the secret, tampering inside an authenticated stream, wrong secrets, rotation, and
// the command line that sets the secret.
#include "in_process.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace {

using namespace in_process;
using raft::Message;
using raft::MessageType;

constexpr std::uint64_t kWrappingTerm = 0xfffffffffffffffaull;  // 2^64 - 6, as in the review

raft::Config secret_config(const std::string& id, const std::string& addr, const std::string& secret) {
  raft::Config c = node_config(id, addr);
  c.secret = secret;
  c.send_timeout_ms = 1000;
  return c;
}

/// A blocking connection from the test to `addr`'s peer port (port + 1).
int connect_peer_port(const std::string& addr) {
  raft::detail::HostPort hp;
  std::string error;
  REQUIRE(raft::detail::parse_host_port(addr, hp, error));
  int fd = raft::detail::connect_tcp("127.0.0.1", hp.host, hp.port + 1, 5000, error);
  INFO(error);
  REQUIRE(fd >= 0);
  return fd;
}

void send_bytes(int fd, const std::string& s) { REQUIRE(raft::detail::send_all(fd, s.data(), s.size())); }

/// Everything that arrives on `fd` until the other side closes it (true) or `ms` pass (false).
bool read_until_closed(int fd, std::string& into, int ms) {
  const auto deadline = std::chrono::steady_clock::now() + scaled(ms);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return true;
    into.append(buf, static_cast<std::size_t>(n));
  }
}

std::string raft_bytes(const Message& m) {
  std::string out;
  raft::detail::encode_raft(m, out);
  return out;
}

/// The review's attack: a heartbeat of term 2^64-6, then an Append carrying `set pwned yes`
/// right after the node's last entry.
std::string attack_messages(const raft::Node& n) {
  Message hb;
  hb.type = MessageType::Heartbeat;
  hb.term = kWrappingTerm;
  Message app;
  app.type = MessageType::Append;
  app.term = kWrappingTerm;
  app.index = n.commit_index();
  app.log_term = n.term();
  raft::LogEntry e;
  e.index = app.index + 1;
  e.term = kWrappingTerm;
  e.type = raft::EntryType::Command;
  e.payload = "*3\r\n$3\r\nset\r\n$5\r\npwned\r\n$3\r\nyes\r\n";
  app.entries.push_back(e);
  app.commit = e.index;
  return raft_bytes(hb) + raft_bytes(app);
}

/// The node is untouched by an attack: its term is sane, it still leads, `pwned` is nowhere
/// and it takes writes.
void check_unharmed(raft::Node& n) {
  CHECK(n.term() < (std::uint64_t{1} << 62));
  CHECK(n.state() == 'l');
  CHECK(stored(n, "pwned") == "(none)");
  CHECK(is_ok(n.execute({"set", "after", "1"})));
}

std::unique_ptr<TestNode> started_founder(const raft::Config& c) {
  auto n = std::make_unique<TestNode>(c);
  (*n)->start();
  REQUIRE(eventually(long_wait(), [&] { return (*n)->state() == 'l'; }));
  return n;
}

}  // namespace

TEST_CASE("peer auth: a node sends an address that has not proved it holds the secret no secret and no Raft traffic",
          "[runtime][peer-auth]") {
  // The review: RAFT.ADD evil <address> made the leader connect there and send HELLO with the
  // secret in clear, then the Raft stream; with the secret, anyone could write through the
  // peer port.
  auto n = started_founder(secret_config("1", address(231, 1), "s3cr3t"));
  raft::detail::HostPort evil;
  std::string error;
  REQUIRE(raft::detail::parse_host_port(address(231, 9), evil, error));
  const int listener = raft::detail::listen_tcp(evil.host, evil.port + 1, error);
  REQUIRE(listener >= 0);
  REQUIRE(eventually(long_wait(), [&] { return (*n)->add_learner("evil", address(231, 9)).ok(); }));

  std::string captured;
  int fd = -1;
  REQUIRE(eventually(long_wait(), [&] {
    fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    return fd >= 0;
  }));
  // Wait for a whole first message (its HELLO), then answer as a node would that accepts it.
  resp::RequestParser parser;
  std::vector<std::string> hello;
  REQUIRE(eventually(long_wait(), [&] {
    char buf[4096];
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5) == 1) {
      ssize_t r = ::recv(fd, buf, sizeof buf, 0);
      if (r > 0) {
        captured.append(buf, static_cast<std::size_t>(r));
        parser.feed(buf, static_cast<std::size_t>(r));
      }
    }
    return parser.next(hello) == resp::Status::Ok;
  }));
  send_bytes(fd, "+WELCOME\r\n*3\r\n$9\r\nCHALLENGE\r\n$64\r\n" + std::string(64, 'a') + "\r\n$64\r\n" +
                     std::string(64, '0') + "\r\n");
  read_until_closed(fd, captured, 3000);
  ::close(fd);
  ::close(listener);
  INFO("captured: " << captured);
  CHECK(captured.find("s3cr3t") == std::string::npos);
  CHECK(captured.find("RAFT") == std::string::npos);

  // Whatever was captured, tried as the secret (the review's HELLO, protocol 3), then its
  // attack: the node accepts none of it.
  const std::string cluster = info_field(**n, "raft_cluster_id");
  for (const std::string& guess : hello) {
    int peer = connect_peer_port(address(231, 1));
    std::string bytes;
    resp::write_command(bytes, {"HELLO", "3", cluster, "evil", "feed", address(231, 9), guess});
    send_bytes(peer, bytes + attack_messages(**n));
    std::string answer;
    CHECK(read_until_closed(peer, answer, 5000));
    ::close(peer);
  }
  check_unharmed(**n);
}

namespace {

/// The connector's side of the handshake as the test plays it: HELLO (as node `me`, to node
/// `to`), the listener's proofs checked against `secret`, then PROOF with `secret` whatever the
/// check said. The session for the frames after it, and whether the listener proved itself.
struct Handshake {
  raft::detail::PeerSession session;
  bool listener_proved = false;
};

Handshake handshake(int fd, const std::string& cluster, const std::string& to, const std::string& secret,
                    const std::string& me = "ghost") {
  using namespace raft::detail;
  const std::vector<std::string> hello{"HELLO", kPeerProtocolVersion, cluster, me, "feedfeed",
                                       address(231, 8), to, new_handshake_nonce()};
  std::string out;
  resp::write_command(out, hello);
  send_bytes(fd, out);
  resp::ReplyParser parser;
  resp::Value challenge;
  REQUIRE(recv_value(fd, parser, challenge, 5000));
  INFO(challenge.str);
  REQUIRE(challenge.type == resp::Type::Array);
  REQUIRE(challenge.elements.size() >= 3);
  REQUIRE(challenge.elements[0].str == "CHALLENGE");
  Handshake h;
  const std::string t = handshake_transcript(hello, challenge.elements[1].str);
  for (std::size_t i = 2; i < challenge.elements.size(); ++i)
    h.listener_proved = h.listener_proved || handshake_proof_matches(challenge.elements[i].str, secret, PeerSide::Listener, t);
  out.clear();
  resp::write_command(out, {"PROOF", handshake_proof(secret, PeerSide::Connector, t)});
  send_bytes(fd, out);
  h.session = PeerSession(secret, t, PeerSide::Connector);
  return h;
}

std::string sealed(raft::detail::PeerSession& s, const std::string& plain) {
  std::string wire;
  s.seal(plain, wire);
  return wire;
}

}  // namespace

TEST_CASE("peer auth: a stranger without the secret gets no further than the handshake", "[runtime][peer-auth]") {
  auto n = started_founder(secret_config("1", address(232, 1), "s3cr3t"));
  const std::string cluster = info_field(**n, "raft_cluster_id");
  for (const std::string& guess : {std::string(), std::string("guess"), std::string("s3cr3")}) {
    INFO("guess '" << guess << "'");
    int fd = connect_peer_port(address(232, 1));
    Handshake h = handshake(fd, cluster, "1", guess);
    CHECK_FALSE(h.listener_proved);
    // Its frames, sealed with what it guessed, follow its proof at once.
    send_bytes(fd, sealed(h.session, attack_messages(**n)));
    std::string answer;
    CHECK(read_until_closed(fd, answer, 5000));
    CHECK(answer.find("wrong secret") != std::string::npos);
    CHECK(answer.find("WELCOME") == std::string::npos);
    ::close(fd);
  }
  CHECK(n->logs().contains("refused a peer connection: wrong secret (the proof of node ghost"));
  // Skipping the proof: RAFT right after HELLO (too big for a handshake message).
  int fd = connect_peer_port(address(232, 1));
  std::string hello;
  resp::write_command(hello, {"HELLO", raft::detail::kPeerProtocolVersion, cluster, "ghost", "feed", address(232, 8),
                              "1", raft::detail::new_handshake_nonce()});
  send_bytes(fd, hello + attack_messages(**n));
  std::string answer;
  CHECK(read_until_closed(fd, answer, 5000));
  CHECK(answer.find("-ERR malformed handshake") != std::string::npos);
  ::close(fd);
  check_unharmed(**n);
}

TEST_CASE("peer auth: a byte altered or a frame replayed in an authenticated stream closes the connection",
          "[runtime][peer-auth]") {
  auto n = started_founder(secret_config("1", address(233, 1), "s3cr3t"));
  const std::string cluster = info_field(**n, "raft_cluster_id");
  const std::uint64_t term = (*n)->term();
  {
    int fd = connect_peer_port(address(233, 1));
    Handshake h = handshake(fd, cluster, "1", "s3cr3t");
    REQUIRE(h.listener_proved);
    resp::ReplyParser parser;
    resp::Value welcome;
    std::string error;
    REQUIRE(raft::detail::recv_sealed_value(fd, h.session, parser, welcome, 5000, -1, error));
    CHECK(welcome.str == "WELCOME");
    // The attack, sealed right, then one byte of `pwned` changed on the way.
    std::string wire = sealed(h.session, attack_messages(**n));
    const std::size_t at = wire.find("pwned");
    REQUIRE(at != std::string::npos);
    wire[at] = 'P';
    send_bytes(fd, wire);
    std::string rest;
    CHECK(read_until_closed(fd, rest, 5000));
    ::close(fd);
    CHECK(eventually(long_wait(), [&] { return n->logs().contains("frame 0 failed authentication"); }));
  }
  CHECK((*n)->term() == term);
  {
    // A frame that passed, played again: the second copy fails (its sequence number is 1).
    int fd = connect_peer_port(address(233, 1));
    Handshake h = handshake(fd, cluster, "1", "s3cr3t");
    std::string fwdr;
    resp::write_command(fwdr, {"FWDR", "0", "1", "done", "+OK\r\n"});  // about no forward: ignored
    const std::string frame = sealed(h.session, fwdr);
    send_bytes(fd, frame + frame);
    std::string rest;
    CHECK(read_until_closed(fd, rest, 5000));
    ::close(fd);
    CHECK(eventually(long_wait(), [&] { return n->logs().contains("frame 1 failed authentication"); }));
  }
  check_unharmed(**n);
}

TEST_CASE("peer auth: a heartbeat from an authenticated leader the configuration does not know is followed",
          "[runtime][peer-auth]") {
  // Authentication decides who may talk; membership only whose votes count. A joiner, or a
  // follower behind on configurations, must follow a leader it has not heard of yet.
  auto n = started_founder(secret_config("1", address(234, 1), "s3cr3t"));
  const std::string cluster = info_field(**n, "raft_cluster_id");
  int fd = connect_peer_port(address(234, 1));
  Handshake h = handshake(fd, cluster, "1", "s3cr3t", "newleader");
  REQUIRE(h.listener_proved);
  Message hb;
  hb.type = MessageType::Heartbeat;
  hb.term = (*n)->term() + 1;
  send_bytes(fd, sealed(h.session, raft_bytes(hb)));
  CHECK(eventually(long_wait(), [&] { return (*n)->leader() == "newleader" && (*n)->term() == hb.term; }));
  ::close(fd);
}

TEST_CASE("peer auth: a node with another secret never joins the traffic of the others", "[runtime][peer-auth]") {
  Cluster c(235, 3, [](raft::Config& cfg) {
    cfg.secret = cfg.id == "3" ? "other" : "s3cr3t";
    cfg.send_timeout_ms = 1000;
  });
  c.start();
  int leader = 0;
  REQUIRE(eventually(long_wait(), [&] {
    for (int i : {1, 2})
      if (c[i].state() == 'l' && c[c.other_than(i, 3)].leader() == c[i].id()) leader = i;
    return leader != 0;
  }));
  REQUIRE(is_ok(c[leader].execute({"set", "k", "v"})));
  CHECK(eventually(long_wait(), [&] { return stored(c[c.other_than(leader, 3)], "k") == "v"; }));
  // Both sides say why, and keep saying it after the write: node 3 never got it.
  CHECK(eventually(long_wait(), [&] {
    return c.test_node(3).logs().contains("wrong secret") &&
           c.test_node(leader).logs().contains("refused a peer connection: wrong secret");
  }));
  CHECK(stored(c[3], "k") == "(none)");
  CHECK(c[3].state() != 'l');
}

TEST_CASE("peer auth: the secret rotates node by node, old and new accepted, then the old one removed",
          "[runtime][peer-auth]") {
  std::vector<std::unique_ptr<TempDir>> dirs;
  std::vector<std::unique_ptr<TestNode>> nodes(3);
  auto config = [&](int i, const std::string& secret, const std::string& second) {
    raft::Config cfg = node_config(std::to_string(i), address(236, i));
    for (int j = 1; j <= 3; ++j)
      if (j != i) cfg.peers[std::to_string(j)] = address(236, j);
    cfg.data_dir = dirs[static_cast<std::size_t>(i - 1)]->file("data");
    cfg.secret = secret;
    cfg.second_secret = second;
    cfg.send_timeout_ms = 1000;
    return cfg;
  };
  for (int i = 1; i <= 3; ++i) dirs.push_back(std::make_unique<TempDir>("rotation"));
  auto restart = [&](int i, const std::string& secret, const std::string& second) {
    auto& slot = nodes[static_cast<std::size_t>(i - 1)];
    if (slot) (*slot)->stop();
    slot.reset();
    slot = std::make_unique<TestNode>(config(i, secret, second));
    (*slot)->start();
  };
  // A write through whichever node leads, seen on all three: every link works.
  int writes = 0;
  auto write_everywhere = [&] {
    const std::string key = "k" + std::to_string(++writes);
    int leader = 0;
    REQUIRE(eventually(long_wait(), [&] {
      for (int i = 1; i <= 3; ++i)
        if ((*nodes[static_cast<std::size_t>(i - 1)])->state() == 'l') leader = i;
      return leader != 0 && is_ok((*nodes[static_cast<std::size_t>(leader - 1)])->execute({"set", key, "v"}));
    }));
    for (int i = 1; i <= 3; ++i) {
      INFO("node " << i << " after write " << key);
      CHECK(eventually(long_wait(), [&] { return stored(**nodes[static_cast<std::size_t>(i - 1)], key) == "v"; }));
    }
  };
  for (int i = 1; i <= 3; ++i) restart(i, "old", "");
  write_everywhere();
  for (int i = 1; i <= 3; ++i) {  // new and old
    restart(i, "new", "old");
    write_everywhere();
  }
  for (int i = 1; i <= 3; ++i) {  // the old one removed
    restart(i, "new", "");
    write_everywhere();
  }
  // A node still on the old secret alone is now a stranger.
  restart(3, "old", "");
  CHECK(eventually(long_wait(), [&] { return nodes[2]->logs().contains("wrong secret"); }));
  restart(3, "new", "");
  write_everywhere();
  std::vector<std::thread> stoppers;
  for (auto& n : nodes) stoppers.emplace_back([&n] { (*n)->stop(); });
  for (auto& t : stoppers) t.join();
}

TEST_CASE("peer auth: the secret comes from a file or RAFT_SECRET; -s warns; no secret off loopback is refused",
          "[peer-auth]") {
  TempDir dir("secret-file");
  const std::string path = dir.file("secret");
  {
    std::ofstream f(path);
    f << "new\nold\n";
  }
  auto parse = [](std::vector<std::string> args) {
    std::vector<char*> argv;
    args.insert(args.begin(), "run_raft");
    for (auto& a : args) argv.push_back(a.data());
    return raft::parse_args(static_cast<int>(argv.size()), argv.data());
  };
  ::unsetenv("RAFT_SECRET");
  raft::ParsedArgs p = parse({"-a", "127.0.0.1:5010", "--secret-file", path});
  CHECK(p.error.empty());
  CHECK((p.config.secret == "new" && p.config.second_secret == "old"));
  p = parse({"-a", "127.0.0.1:5010", "-s", "visible"});
  CHECK(p.config.secret == "visible");
  REQUIRE(p.warnings.size() == 1);
  CHECK(p.warnings[0].find("ps") != std::string::npos);
  CHECK_FALSE(parse({"-a", "127.0.0.1:5010", "-s", "a", "--secret-file", path}).error.empty());
  CHECK_FALSE(parse({"-a", "127.0.0.1:5010", "--secret-file", dir.file("missing")}).error.empty());
  ::setenv("RAFT_SECRET", "from-env", 1);
  CHECK(parse({"-a", "127.0.0.1:5010"}).config.secret == "from-env");
  CHECK(parse({"-a", "127.0.0.1:5010", "--secret-file", path}).config.secret == "new");  // the option wins
  ::unsetenv("RAFT_SECRET");
  // Off loopback: a secret, or --insecure-peers, and the error says so.
  p = parse({"-a", "10.1.2.3:5010"});
  CHECK(p.error.find("--secret-file") != std::string::npos);
  CHECK(p.error.find("--insecure-peers") != std::string::npos);
  CHECK(parse({"-a", "10.1.2.3:5010", "--insecure-peers"}).error.empty());
  CHECK(parse({"-a", "10.1.2.3:5010", "--secret-file", path}).error.empty());
  CHECK(parse({"-a", "127.0.0.1:5010"}).error.empty());  // loopback: the empty key, as before
}
