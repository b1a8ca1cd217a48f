// What a stranger on the peer port can send (issue 10, peer input), in process: raft::Node
// objects on loopback and a peer played by hand that says HELLO and sends RAFT messages as the
// wire carries them. Each test is one attack; after it the node serves, with its data.
#include "fake_peer.hpp"
#include "in_process.hpp"

#include <unistd.h>

#include <cstdint>

using namespace in_process;

namespace {

/// A connection to a node's peer port from `ip`, as a peer's link would open it.
class Stranger {
 public:
  explicit Stranger(std::string ip) : ip_(std::move(ip)) {}
  ~Stranger() {
    if (fd_ >= 0) ::close(fd_);
  }
  Stranger(const Stranger&) = delete;
  Stranger& operator=(const Stranger&) = delete;

  /// Says HELLO to the node at `node_address` as node `id` of `cluster_id`, with the
  /// handshake of the empty secret (the node's: a stranger who holds the secret, or a node
  /// without one); returns the node's answer ("+WELCOME", "-ERR ...", or "" when none came).
  std::string hello(const std::string& node_address, const std::string& cluster_id, const std::string& id) {
    if (fd_ >= 0) ::close(fd_);
    raft::detail::HostPort hp;
    std::string error;
    if (!raft::detail::parse_host_port(node_address, hp, error)) return "";
    fd_ = raft::detail::connect_tcp(ip_, hp.host, hp.port + 1, timeout_ms(), error);
    if (fd_ < 0) return "";
    resp::Value v;
    test_support::peer_hello(fd_, cluster_id, id, "5eed5eed5eed5eed5eed5eed5eed5eed", ip_ + ":7090", "", session_, v,
                             timeout_ms());
    if (v.type != resp::Type::Error && v.type != resp::Type::SimpleString) return "";
    return (v.is_error() ? "-" : "+") + v.str;
  }
  bool send(const raft::Message& m) {
    std::string bytes;
    raft::detail::encode_raft(m, bytes);
    std::string wire;
    session_.seal(bytes, wire);
    return fd_ >= 0 && raft::detail::send_all(fd_, wire.data(), wire.size());
  }

 private:
  static int timeout_ms() { return static_cast<int>(scaled(5000).count()); }
  std::string ip_;
  int fd_ = -1;
  raft::detail::PeerSession session_;
};

raft::Message from_stranger(raft::MessageType type, std::uint64_t term) {
  raft::Message m;
  m.type = type;
  m.term = term;
  return m;
}

/// A founder that leads and holds k1..k`keys` (written through the log).
std::unique_ptr<TestNode> founder_with_keys(const raft::Config& config, int keys) {
  auto node = std::make_unique<TestNode>(config);
  (*node)->start();
  REQUIRE(eventually([&] { return (*node)->state() == 'l'; }));
  for (int i = 1; i <= keys; ++i) REQUIRE(is_ok((*node)->execute({"set", "k" + std::to_string(i), "v"})));
  return node;
}

}  // namespace

TEST_CASE("a heartbeat from a stranger with a term near 2^64 is dropped; the node keeps leading",
          "[runtime][peer-input]") {
  TempDir dir("peer-input");
  raft::Config config = node_config("1", address(190, 1));
  config.data_dir = dir.file("data");
  auto node = founder_with_keys(config, 3);
  const std::uint64_t term = (*node)->term();

  Stranger stranger(ip(190, 9));
  REQUIRE(stranger.hello(address(190, 1), info_field(node->node(), "raft_cluster_id"), "9") == "+WELCOME");
  // Today's attack: 2^64 - 6, so that the +10 of the next campaign wraps around.
  REQUIRE(stranger.send(from_stranger(raft::MessageType::Heartbeat, ~std::uint64_t{0} - 5)));
  CHECK(eventually([&] { return node->logs().contains("above the largest term"); }));
  CHECK((*node)->term() == term);
  CHECK((*node)->state() == 'l');
  // Just above the bound (2^62 + 1): dropped too.
  REQUIRE(stranger.send(from_stranger(raft::MessageType::Heartbeat, (std::uint64_t{1} << 62) + 1)));
  REQUIRE(is_ok((*node)->execute({"set", "after", "1"})));
  CHECK((*node)->term() == term);
  CHECK(info_field(node->node(), "raft_refused_peer_messages") == "2");

  // And across a restart: the same term, a leader again, the data there.
  node.reset();
  node = std::make_unique<TestNode>(config);
  (*node)->start();
  REQUIRE(eventually([&] { return (*node)->state() == 'l'; }));
  CHECK((*node)->term() > term);
  CHECK((*node)->term() < (std::uint64_t{1} << 62));
  REQUIRE(is_ok((*node)->execute({"set", "restarted", "1"})));
  CHECK(stored(node->node(), "k3") == "v");
  CHECK(stored(node->node(), "after") == "1");
}

TEST_CASE("a data directory holding a term above 2^62 stops the start with a clear error", "[runtime][peer-input]") {
  TempDir dir("peer-input");
  raft::Config config = node_config("1", address(194, 1));
  config.data_dir = dir.file("data");
  {
    raft::StorageOptions so;
    so.dir = config.data_dir;
    raft::Identity id;
    id.node_id = "1";
    id.server_id = "5eed0000000000000000000000000001";
    id.cluster_id = "0123456789abcdef";
    id.initial_config.upsert(raft::Member{"1", config.address, id.server_id, true});
    raft::Storage storage = raft::Storage::create(so, id);
    raft::PersistBatch batch;
    batch.seq = 1;
    batch.hard_state = raft::HardState{(std::uint64_t{1} << 62) + 1, ""};
    REQUIRE(storage.write(batch));
    REQUIRE(storage.sync());
  }
  TestNode node(config);
  CHECK_THROWS_WITH(node->start(), Catch::Matchers::Contains("above the largest term"));
  CHECK(node->state() != 'l');
}

TEST_CASE("a snapshot of garbage is refused before anything is deleted; the node serves and restarts",
          "[runtime][peer-input]") {
  TempDir dir("peer-input");
  raft::Config config = node_config("1", address(191, 1));
  config.data_dir = dir.file("data");
  auto node = founder_with_keys(config, 5);

  Stranger stranger(ip(191, 9));
  REQUIRE(stranger.hello(address(191, 1), info_field(node->node(), "raft_cluster_id"), "9") == "+WELCOME");
  raft::Message snap = from_stranger(raft::MessageType::Snapshot, (*node)->term() + 1000);
  snap.index = 1000;
  snap.log_term = snap.term;
  snap.config.upsert(raft::Member{"9", ip(191, 9) + ":7090", "", true});
  snap.data = "this is no snapshot";
  snap.done = true;
  REQUIRE(stranger.send(snap));
  CHECK(eventually([&] { return node->logs().contains("refused a snapshot"); }));
  // The term moved (a leader of a later term may send a snapshot), nothing else did: the node
  // campaigns again and leads with every key it had.
  REQUIRE(eventually([&] { return (*node)->state() == 'l' && (*node)->term() > snap.term; }));
  const raft::Reply after = (*node)->execute({"set", "after", "1"});
  INFO(describe(after) << "\n" << node->logs().text());
  REQUIRE(is_ok(after));
  CHECK(stored(node->node(), "k5") == "v");
  CHECK_FALSE(node->logs().contains("stopping the apply loop"));

  node.reset();
  node = std::make_unique<TestNode>(config);
  (*node)->start();
  REQUIRE(eventually([&] { return (*node)->state() == 'l'; }));
  REQUIRE(is_ok((*node)->execute({"set", "restarted", "1"})));
  CHECK(stored(node->node(), "k1") == "v");
  CHECK(stored(node->node(), "k5") == "v");
  CHECK(stored(node->node(), "after") == "1");
}

TEST_CASE("snapshot chunks beyond the configured bound are dropped, not piled up", "[runtime][peer-input]") {
  TempDir dir("peer-input");
  raft::Config config = node_config("1", address(192, 1));
  config.data_dir = dir.file("data");
  config.max_snapshot_bytes = 64 << 10;
  auto node = founder_with_keys(config, 2);

  Stranger stranger(ip(192, 9));
  REQUIRE(stranger.hello(address(192, 1), info_field(node->node(), "raft_cluster_id"), "9") == "+WELCOME");
  raft::Message chunk = from_stranger(raft::MessageType::Snapshot, (*node)->term() + 1000);
  chunk.index = 1000;
  chunk.log_term = chunk.term;
  chunk.data.assign(16 << 10, 'x');
  for (int i = 0; i < 5; ++i) {  // 80 KiB in all: the fifth chunk crosses the bound
    chunk.offset = static_cast<std::uint64_t>(i) * chunk.data.size();
    REQUIRE(stranger.send(chunk));
  }
  CHECK(eventually([&] { return node->logs().contains("larger than max_snapshot_bytes"); }));
  REQUIRE(eventually([&] { return (*node)->state() == 'l'; }));
  REQUIRE(is_ok((*node)->execute({"set", "after", "1"})));
  CHECK(stored(node->node(), "k2") == "v");
}

TEST_CASE("a joiner contacted first by a stranger of another cluster does not adopt its id, and joins",
          "[runtime][peer-input]") {
  // The joiner starts before the member it asks: its JOIN finds nobody, and meanwhile
  // strangers say HELLO, one claiming no cluster, one with a cluster id of its own.
  raft::Config joiner_config = node_config("2", address(193, 2));
  joiner_config.join = {address(193, 1)};
  TestNode joiner(joiner_config);
  joiner->start();
  // Claiming no cluster, it may ask to join and nothing else: its Raft messages are not taken.
  Stranger joinless(ip(193, 8));
  REQUIRE(joinless.hello(address(193, 2), "", "8") == "+WELCOME");
  REQUIRE(joinless.send(from_stranger(raft::MessageType::Heartbeat, 50)));
  CHECK(eventually([&] { return joiner.logs().contains("node 8 is not in this cluster yet and sent RAFT"); }));
  CHECK(joiner->term() == 0);
  Stranger stranger(ip(193, 9));
  const std::string answer = stranger.hello(address(193, 2), "0123456789abcdef", "9");
  CHECK(answer.rfind("-ERR", 0) == 0);
  CHECK(info_field(joiner.node(), "raft_cluster_id").empty());

  TestNode founder(node_config("1", address(193, 1)));
  founder->start();
  REQUIRE(eventually([&] { return founder->state() == 'l'; }));
  const std::string cluster_id = info_field(founder.node(), "raft_cluster_id");
  REQUIRE(eventually([&] { return info_field(joiner.node(), "raft_cluster_id") == cluster_id; }, 20000));
  REQUIRE(is_ok(founder->execute({"set", "k", "v"})));
  CHECK(eventually([&] { return stored(joiner.node(), "k") == "v"; }, 20000));
  CHECK(joiner.logs().contains("joined cluster " + cluster_id));
}
