// TLS on both ports (section 1c): a cluster whose peers verify each other's certificates,
// redis-cli --tls and redis-py against it, and what a stranger without a certificate the
// cluster's CA signed gets: nothing. The certificates are made at test time with the openssl
// command. Only the first test runs in a build without RAFT_OPENSSL_SUPPORT (make TLS=1).
#include "in_process.hpp"
#include "proc.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

TEST_CASE("TLS: a configuration asking for TLS says how to build with it, or what it lacks", "[tls]") {
  raft::Config c = in_process::node_config("1", "127.0.0.1:7000");
  c.tls_cert_file = "node.crt";
#ifdef RAFT_OPENSSL_SUPPORT
  CHECK(c.validate().find("TLS needs a certificate, its key and the CA certificates") != std::string::npos);
  c.tls_key_file = "node.key";
  c.tls_ca_cert_file = "ca.crt";
  CHECK(c.validate() == "");
#else
  CHECK(c.validate().find("build with -DRAFT_OPENSSL_SUPPORT and link -lssl -lcrypto") != std::string::npos);
#endif
  const char* argv[] = {"run_raft", "-a", "127.0.0.1:7000", "--tls-cert-file", "n.crt", "--tls-key-file", "n.key",
                        "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "optional"};
  raft::ParsedArgs parsed = raft::parse_args(11, const_cast<char**>(argv));
#ifdef RAFT_OPENSSL_SUPPORT
  CHECK(parsed.error == "");
#else
  CHECK(parsed.error.find("build with -DRAFT_OPENSSL_SUPPORT") != std::string::npos);  // what run_raft prints
#endif
  CHECK(parsed.config.tls_cert_file == "n.crt");
  CHECK(parsed.config.tls_key_file == "n.key");
  CHECK(parsed.config.tls_ca_cert_file == "ca.crt");
  CHECK(parsed.config.tls_auth_clients == raft::TlsAuthClients::Optional);
}

#ifdef RAFT_OPENSSL_SUPPORT

namespace {

using namespace in_process;

/// Certificates for one test, made with the openssl command: a CA; a node certificate naming
/// `ips` (every node of the test uses it); a client certificate; and a node certificate for
/// the same addresses from another CA, which the cluster must refuse.
class Certificates {
 public:
  explicit Certificates(const std::vector<std::string>& ips) {
    std::string san = "subjectAltName=IP:127.0.0.1";
    for (const auto& ip : ips) san += ",IP:" + ip;
    make_ca("ca");
    make_ca("other-ca");
    make_cert("node", "ca", san);
    make_cert("client", "ca", "");
    make_cert("stranger", "other-ca", san);
    make_cert("elsewhere", "ca", "subjectAltName=IP:127.0.0.1");  // the right CA, no address of the test
  }
  std::string operator/(const std::string& name) const { return dir_ / name; }
  const proc::TempDir& dir() const { return dir_; }

  /// A node of `cluster`'s CA, or (`who` "stranger") another CA's.
  void use(raft::Config& c, const std::string& who = "node") const {
    c.tls_cert_file = dir_ / (who + ".crt");
    c.tls_key_file = dir_ / (who + ".key");
    c.tls_ca_cert_file = dir_ / (who == "stranger" ? "other-ca.crt" : "ca.crt");
  }

 private:
  void openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    proc::RunResult r = proc::run("openssl", args, dir_, proc::scaled(30000));
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
  }
  void make_ca(const std::string& name) {
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             dir_ / (name + ".key"), "-out", dir_ / (name + ".crt"), "-days", "2", "-subj", "/CN=" + name});
  }
  void make_cert(const std::string& name, const std::string& ca, const std::string& san) {
    std::vector<std::string> args{"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                  "-nodes", "-keyout", dir_ / (name + ".key"), "-out", dir_ / (name + ".crt"),
                                  "-days", "2", "-subj", "/CN=" + name, "-CA", dir_ / (ca + ".crt"), "-CAkey",
                                  dir_ / (ca + ".key")};
    if (!san.empty()) args.insert(args.end(), {"-addext", san});
    openssl(args);
  }
  proc::TempDir dir_{"tls-certs"};
};

std::vector<std::string> ips_of(int test, int nodes) {
  std::vector<std::string> ips;
  for (int i = 1; i <= nodes; ++i) ips.push_back(ip(test, i));
  return ips;
}

int port_of(const std::string& addr) { return std::stoi(addr.substr(addr.find(':') + 1)); }

/// redis-cli --tls against `addr` with `tls_args` (--cacert, --cert, --key); its output,
/// trimmed.
std::string redis_cli(const Certificates& certs, const std::string& addr, const std::vector<std::string>& tls_args,
                      const std::vector<std::string>& command) {
  std::vector<std::string> argv{"redis-cli", "-h", addr.substr(0, addr.find(':')), "-p", std::to_string(port_of(addr))};
  argv.insert(argv.end(), tls_args.begin(), tls_args.end());
  argv.insert(argv.end(), command.begin(), command.end());
  proc::RunResult r = proc::run("redis-cli", argv, certs.dir(), proc::scaled(10000));
  std::string out = r.out + r.err;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

/// A plain TCP connection to `host`:`port` that sends `bytes`; what comes back before the
/// node closes it (true), or false if it stays open `ms`.
bool plain_connection_closed(const std::string& host, int port, const std::string& bytes, std::string& got, int ms) {
  std::string error;
  int fd = raft::detail::connect_tcp("127.0.0.1", host, port, 5000, error);
  INFO(error);
  REQUIRE(fd >= 0);
  raft::detail::send_all(fd, bytes.data(), bytes.size());
  const auto deadline = std::chrono::steady_clock::now() + scaled(ms);
  bool closed = false;
  while (!closed) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) closed = true;
    else got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return closed;
}

std::function<void(raft::Config&)> tls_nodes(const Certificates& certs) {
  return [&certs](raft::Config& c) {
    certs.use(c);
    c.secret = "s3cr3t";
    c.send_timeout_ms = 1000;
  };
}

}  // namespace

TEST_CASE("TLS: a cluster replicates over TLS; redis-cli --tls writes and reads; a plaintext client is closed",
          "[runtime][tls]") {
  Certificates certs(ips_of(240, 3));
  Cluster cluster(240, 3, tls_nodes(certs));
  cluster.start();
  const int leader = cluster.wait_for_leader();
  REQUIRE(leader != 0);
  // Writes replicate: the peer connections carry TLS both ways.
  REQUIRE(is_ok(cluster[leader].execute({"set", "k", "v"})));
  for (int i = 1; i <= 3; ++i) CHECK(eventually(long_wait(), [&] { return stored(cluster[i], "k") == "v"; }));

  // redis-cli --tls with a client certificate, to the leader and to a follower (which forwards).
  const std::vector<std::string> with_cert{"--tls", "--cacert", certs / "ca.crt", "--cert", certs / "client.crt",
                                           "--key", certs / "client.key"};
  const int follower = cluster.other_than(leader);
  CHECK(redis_cli(certs, address(240, leader), with_cert, {"SET", "cli", "tls"}) == "OK");
  CHECK(redis_cli(certs, address(240, follower), with_cert, {"SET", "cli2", "tls2"}) == "OK");
  CHECK(redis_cli(certs, address(240, follower), with_cert, {"GET", "cli"}) == "tls");
  for (int i = 1; i <= 3; ++i) CHECK(eventually(long_wait(), [&] { return stored(cluster[i], "cli2") == "tls2"; }));
  // A value larger than a TLS record, both ways.
  std::string big(120000, 'x');
  CHECK(redis_cli(certs, address(240, leader), with_cert, {"SET", "big", big}) == "OK");
  CHECK(redis_cli(certs, address(240, follower), with_cert, {"GET", "big"}) == big);

  // tls_auth_clients is yes by default: no client certificate, no connection.
  CHECK(redis_cli(certs, address(240, leader), {"--tls", "--cacert", certs / "ca.crt"}, {"PING"}) != "PONG");
  // The client checks the node's certificate: against another CA, it does not talk.
  CHECK(redis_cli(certs, address(240, leader),
                  {"--tls", "--cacert", certs / "other-ca.crt", "--cert", certs / "client.crt", "--key",
                   certs / "client.key"},
                  {"PING"}) != "PONG");

  // Plaintext on either port: closed, and never answered.
  for (int port_offset : {0, 1}) {
    std::string got;
    CHECK(plain_connection_closed(ip(240, leader), 7000 + 10 * leader + port_offset, "PING\r\nPING\r\n", got, 5000));
    CHECK(got.find("PONG") == std::string::npos);
    CHECK(got.find("CHALLENGE") == std::string::npos);
  }
  // The node serves on.
  CHECK(redis_cli(certs, address(240, leader), with_cert, {"GET", "k"}) == "v");
}

TEST_CASE("TLS: redis-py with ssl=True reads and writes; tls_auth_clients optional takes it with or without a "
          "client certificate",
          "[runtime][tls]") {
  Certificates certs(ips_of(241, 1));
  raft::Config c = node_config("1", address(241, 1));
  certs.use(c);
  c.tls_auth_clients = raft::TlsAuthClients::Optional;
  TestNode node(c);
  node->start();
  REQUIRE(eventually(long_wait(), [&] { return node->state() == 'l'; }));
  const std::string script = R"PY(
import sys, redis
host, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = redis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=d + '/ca.crt', ssl_certfile=d + '/client.crt',
                ssl_keyfile=d + '/client.key')
assert r.set('py', 'tls') is True
assert r.get('py') == b'tls'
anonymous = redis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=d + '/ca.crt')
assert anonymous.get('py') == b'tls'
try:
    redis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=d + '/ca.crt', ssl_certfile=d + '/stranger.crt',
                ssl_keyfile=d + '/stranger.key').get('py')
    raise AssertionError('a certificate of another CA was taken')
except redis.exceptions.ConnectionError as e:
    print('refused')
print('ok')
)PY";
  proc::RunResult r = proc::run("python3", {"/usr/bin/python3", "-c", script, ip(241, 1), "7010", certs.dir().path()},
                                certs.dir(), proc::scaled(20000));
  INFO(r.out << r.err);
  CHECK(r.out == "refused\nok\n");
  CHECK(stored(*node, "py") == "tls");
}

TEST_CASE("TLS: a node whose certificate another CA signed cannot join, and the cluster serves on",
          "[runtime][tls]") {
  Certificates certs(ips_of(242, 4));
  Cluster cluster(242, 3, tls_nodes(certs));
  cluster.start();
  const int leader = cluster.wait_for_leader();
  REQUIRE(leader != 0);
  REQUIRE(is_ok(cluster[leader].execute({"set", "before", "1"})));

  // It holds the peer secret, so only TLS stands in its way; it asks every member to join.
  raft::Config c = node_config("4", address(242, 4));
  certs.use(c, "stranger");
  c.secret = "s3cr3t";
  c.send_timeout_ms = 1000;
  for (int i = 1; i <= 3; ++i) c.join.push_back(address(242, i));
  TestNode stranger(c);
  stranger->start();
  // Both sides refuse: the members its certificate, it theirs.
  CHECK(eventually(long_wait(), [&] { return cluster.test_node(leader).logs().contains("refused a peer connection: TLS"); }));
  CHECK(eventually(long_wait(), [&] { return stranger.logs().contains("certificate verify failed"); }));
  CHECK(stranger->state() != 'l');
  CHECK(stranger->commit_index() == 0);
  CHECK(stored(*stranger, "before") == "(none)");
  CHECK(cluster[leader].info().find("raft_members:3") != std::string::npos);
  // A raw TLS connection with the stranger's certificate to the peer port gets nothing either.
  proc::RunResult r = proc::run("openssl",
                                {"openssl", "s_client", "-connect", ip(242, leader) + ":" + std::to_string(7000 + 10 * leader + 1),
                                 "-cert", certs / "stranger.crt", "-key", certs / "stranger.key", "-CAfile",
                                 certs / "ca.crt", "-quiet"},
                                certs.dir(), proc::scaled(10000), "*1\r\n$5\r\nHELLO\r\n");
  CHECK(r.out.find("CHALLENGE") == std::string::npos);
  CHECK(r.out.find("ERR") == std::string::npos);
  // The cluster serves on.
  CHECK(is_ok(cluster[leader].execute({"set", "after", "1"})));
  for (int i = 1; i <= 3; ++i) CHECK(eventually(long_wait(), [&] { return stored(cluster[i], "after") == "1"; }));
}

TEST_CASE("TLS: a node checks that a peer's certificate names the peer's address", "[runtime][tls]") {
  // The right CA, but a certificate for 127.0.0.1 only: the joiner, connecting to 127.x.243.1,
  // refuses to talk to it (another node of the cluster, or anyone with a certificate from the
  // CA, cannot stand in for an address that is not its own).
  Certificates certs(ips_of(243, 2));
  raft::Config c1 = node_config("1", address(243, 1));
  certs.use(c1);
  c1.tls_cert_file = certs / "elsewhere.crt";
  c1.tls_key_file = certs / "elsewhere.key";
  TestNode founder(c1);
  founder->start();
  REQUIRE(eventually(long_wait(), [&] { return founder->state() == 'l'; }));
  raft::Config c2 = node_config("2", address(243, 2));
  certs.use(c2);
  c2.join.push_back(address(243, 1));
  TestNode joiner(c2);
  joiner->start();
  CHECK(eventually(long_wait(), [&] { return joiner.logs().contains("IP address mismatch"); }));
  CHECK(founder->info().find("raft_members:1") != std::string::npos);
}

TEST_CASE("TLS: a write waiting for the handshake waits for input, not for a writable socket", "[tls]") {
  // Over TLS, protected mode's -DENIED is written once the client has said hello. Until then
  // the write needs input; polling for POLLOUT on a writable socket would wake the poll thread
  // at once, forever, for a client that never says it.
  Certificates certs({});
  raft::Config c;
  certs.use(c);
  std::string error;
  auto ctx = raft::detail::TlsContext::load(c, raft::TlsAuthClients::No, error);
  INFO(error);
  REQUIRE(ctx);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  raft::detail::Tls server, client;
  REQUIRE(server.begin(*ctx, sv[0], true, "", error));
  const std::string denied = "-DENIED protected mode\r\n";
  CHECK(server.send(sv[0], denied.data(), denied.size()) == -1);
  CHECK(errno == EAGAIN);
  const short events = server.events(POLLOUT);
  CHECK((events & POLLIN) != 0);
  CHECK((events & POLLOUT) == 0);
  // The client's hello arrives: the same write goes through, and the client reads it.
  REQUIRE(client.begin(*ctx, sv[1], false, "", error));
  ssize_t sent = -1;
  for (int step = 0; step < 20 && sent < 0; ++step) {
    client.handshake();
    if (server.ready(POLLIN) & POLLOUT) sent = server.send(sv[0], denied.data(), denied.size());
  }
  CHECK(sent == static_cast<ssize_t>(denied.size()));
  char buf[16384];
  ssize_t got = -1;
  for (int step = 0; step < 20 && got < 0; ++step) got = client.recv(sv[1], buf, sizeof buf);
  REQUIRE(got > 0);
  CHECK(std::string(buf, static_cast<std::size_t>(got)) == denied);
  ::close(sv[0]);
  ::close(sv[1]);
}

TEST_CASE("run_raft --tls-*: a node and a joiner over TLS; redis-cli --tls; plaintext refused", "[process][tls]") {
  Certificates certs(ips_of(244, 2));
  const proc::TempDir& dir = certs.dir();
  auto start = [&](int n, std::vector<std::string> more) {
    std::vector<std::string> argv{proc::example("run_raft"), "-i", std::to_string(n), "-a", address(244, n), "-d",
                                  dir / ("d" + std::to_string(n)), "--time-scale", std::to_string(proc::time_scale()),
                                  "-s", "s3cr3t", "--tls-cert-file", certs / "node.crt", "--tls-key-file",
                                  certs / "node.key", "--tls-ca-cert-file", certs / "ca.crt", "--tls-auth-clients", "no"};
    argv.insert(argv.end(), more.begin(), more.end());
    return std::make_unique<proc::Process>("run_raft", argv, dir);
  };
  auto first = start(1, {});
  REQUIRE(first->wait_for_err("leading term", proc::scaled(10000)));
  auto second = start(2, {"-e", address(244, 1)});
  // --tls-auth-clients no: the CA certificate is all a client needs.
  const std::vector<std::string> tls{"--tls", "--cacert", certs / "ca.crt"};
  CHECK(redis_cli(certs, address(244, 1), tls, {"SET", "k", "over tls"}) == "OK");
  CHECK(eventually(long_wait(), [&] { return redis_cli(certs, address(244, 2), tls, {"GET", "k"}) == "over tls"; }));
  CHECK(redis_cli(certs, address(244, 1), tls, {"INFO", "raft"}).find("raft_members:2") != std::string::npos);
  CHECK(redis_cli(certs, address(244, 1), {}, {"PING"}) != "PONG");
  std::string got;
  CHECK(plain_connection_closed(ip(244, 1), 7011, "PING\r\n", got, 5000));
  CHECK(got.find("PONG") == std::string::npos);
  CHECK(first->running());
  CHECK(second->running());
}

#endif  // RAFT_OPENSSL_SUPPORT
