// What a stranger on the peer port can send (issue 10, peer input), in process: raft::Node
// objects on loopback and a peer played by hand that says HELLO and sends RAFT messages as the
// wire carries them. Each test is one attack; after it the node serves, with its data.
#include "fake_peer.hpp"
#include "in_process.hpp"

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>

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
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
  for (int i = 1; i <= keys; ++i) REQUIRE(is_ok((*node)->execute({"set", "k" + std::to_string(i), "v"})));
  return node;
}

/// A snapshot at `index` of term `term` as a leader sends it: the store's text (key `key`, and
/// `padding` bytes in key "padding"), in the message's metadata, `config` as its members.
raft::Message snapshot_for(std::uint64_t index, std::uint64_t term, const raft::Configuration& config,
                           const std::string& key, std::size_t padding, std::string& text) {
  raft::Message m = from_stranger(raft::MessageType::Snapshot, term);
  m.index = index;
  m.log_term = term;
  m.config = config;
  m.timestamp_ms = 1700000000000;
  raft::Store store;
  store.put(key, raft::Store::Kind::String).str = "streamed";
  store.put("padding", raft::Store::Kind::String).str.assign(padding, 'p');
  raft::SnapshotMeta meta{index, term, config, m.timestamp_ms};
  text.clear();
  store.write_snapshot(text, meta);
  return m;
}

/// Sends text[from, to) in chunks of `piece` bytes, the last one marked done when `done`.
bool send_chunks(Stranger& s, raft::Message m, const std::string& text, std::size_t from, std::size_t to,
                 std::size_t piece, bool done) {
  for (std::size_t at = from; at < to; at += piece) {
    m.offset = at;
    m.data = text.substr(at, std::min(piece, to - at));
    m.done = done && at + piece >= to;
    if (!s.send(m)) return false;
  }
  return true;
}

std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool holds_snapshot_at(const std::string& dir, std::uint64_t index) {
  const std::string mark = "snap-" + std::string(20 - std::to_string(index).size(), '0') + std::to_string(index) + "-";
  for (const auto& f : std::filesystem::directory_iterator(dir))
    if (f.path().filename().string().rfind(mark, 0) == 0) return true;
  return false;
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
  CHECK(eventually(long_wait(), [&] { return node->logs().contains("above the largest term"); }));
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
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
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
  CHECK(eventually(long_wait(), [&] { return node->logs().contains("refused a snapshot"); }));
  // The term moved (a leader of a later term may send a snapshot), nothing else did: the node
  // campaigns again and leads with every key it had.
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l' && (*node)->term() > snap.term; }));
  const raft::Reply after = (*node)->execute({"set", "after", "1"});
  INFO(typed(after) << "\n" << node->logs().text());
  REQUIRE(is_ok(after));
  CHECK(stored(node->node(), "k5") == "v");
  CHECK_FALSE(node->logs().contains("stopping the apply loop"));

  node.reset();
  node = std::make_unique<TestNode>(config);
  (*node)->start();
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
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
  CHECK(eventually(long_wait(), [&] { return node->logs().contains("larger than max_snapshot_bytes"); }));
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
  REQUIRE(is_ok((*node)->execute({"set", "after", "1"})));
  CHECK(stored(node->node(), "k2") == "v");
  // What arrived went to a file, which stopped at the bound: the chunk that crossed it was
  // refused before it was written.
  const std::string incoming = config.data_dir + "/incoming.snap.tmp";
  REQUIRE(std::filesystem::exists(incoming));
  CHECK(std::filesystem::file_size(incoming) <= 256 + (64u << 10));
  CHECK(std::filesystem::file_size(incoming) > (64u << 10));
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
  CHECK(eventually(long_wait(), [&] { return joiner.logs().contains("node 8 is not in this cluster yet and sent RAFT"); }));
  CHECK(joiner->term() == 0);
  Stranger stranger(ip(193, 9));
  const std::string answer = stranger.hello(address(193, 2), "0123456789abcdef", "9");
  CHECK(answer.rfind("-ERR", 0) == 0);
  CHECK(info_field(joiner.node(), "raft_cluster_id").empty());

  TestNode founder(node_config("1", address(193, 1)));
  founder->start();
  REQUIRE(eventually(long_wait(), [&] { return founder->state() == 'l'; }));
  const std::string cluster_id = info_field(founder.node(), "raft_cluster_id");
  REQUIRE(eventually(scaled(20000), [&] { return info_field(joiner.node(), "raft_cluster_id") == cluster_id; }));
  REQUIRE(is_ok(founder->execute({"set", "k", "v"})));
  CHECK(eventually(scaled(20000), [&] { return stored(joiner.node(), "k") == "v"; }));
  CHECK(joiner.logs().contains("joined cluster " + cluster_id));
}

TEST_CASE("a received snapshot streams to a file in the data directory; a stop mid-transfer leaves nothing behind",
          "[runtime][peer-input][snapshot-stream]") {
  TempDir dir("peer-input");
  raft::Config config = node_config("1", address(196, 1));
  config.data_dir = dir.file("data");
  const std::string incoming = config.data_dir + "/incoming.snap.tmp";
  auto node = founder_with_keys(config, 3);
  raft::Configuration members;
  members.upsert(raft::Member{"1", address(196, 1), "", true});
  members.upsert(raft::Member{"9", ip(196, 9) + ":7090", "", true});
  std::string text;
  raft::Message snap = snapshot_for(1000, (*node)->term() + 1000, members, "snapkey", 3u << 20, text);
  {
    Stranger stranger(ip(196, 9));
    REQUIRE(stranger.hello(address(196, 1), info_field(node->node(), "raft_cluster_id"), "9") == "+WELCOME");
    // Two thirds arrive, in 64 KiB chunks: they are in the file as they arrive (not in memory).
    const std::size_t part = text.size() * 2 / 3;
    REQUIRE(send_chunks(stranger, snap, text, 0, part, 64u << 10, false));
    REQUIRE(eventually(long_wait(), [&] { return ends_with(file_text(incoming), text.substr(0, part)); }));
    CHECK(std::filesystem::file_size(incoming) < part + 256);  // a header line, then the data
    CHECK((std::filesystem::status(incoming).permissions() & std::filesystem::perms::all) ==
          (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
    CHECK_FALSE(holds_snapshot_at(config.data_dir, 1000));
    CHECK(stored(node->node(), "k3") == "v");
  }
  // Stopped mid-transfer: the partial file is removed at the next start, with a line.
  node.reset();
  REQUIRE(std::filesystem::exists(incoming));
  node = std::make_unique<TestNode>(config);
  (*node)->start();
  CHECK_FALSE(std::filesystem::exists(incoming));
  CHECK(node->logs().contains("snapshot transfer interrupted"));
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));

  // The whole transfer, again from the start: installed (the file renamed into place), and
  // there after a restart.
  snap = snapshot_for(1000, (*node)->term() + 1000, members, "snapkey", 3u << 20, text);
  Stranger again(ip(196, 9));
  REQUIRE(again.hello(address(196, 1), info_field(node->node(), "raft_cluster_id"), "9") == "+WELCOME");
  REQUIRE(send_chunks(again, snap, text, 0, text.size(), 64u << 10, true));
  REQUIRE(eventually(scaled(20000), [&] { return stored(node->node(), "snapkey") == "streamed"; }));
  CHECK(holds_snapshot_at(config.data_dir, 1000));
  CHECK_FALSE(std::filesystem::exists(incoming));
  CHECK(stored(node->node(), "k3") == "(none)");  // the snapshot's state replaced the old one
  node.reset();
  node = std::make_unique<TestNode>(config);
  (*node)->start();
  CHECK(stored(node->node(), "snapkey") == "streamed");
}

TEST_CASE("a streamed snapshot damaged on the way or cut short is refused; the log and data stay, on disk too",
          "[runtime][peer-input][snapshot-stream]") {
  TempDir dir("peer-input");
  raft::Config config = node_config("1", address(197, 1));
  config.data_dir = dir.file("data");
  auto node = founder_with_keys(config, 5);
  raft::Configuration members;
  members.upsert(raft::Member{"1", address(197, 1), "", true});
  members.upsert(raft::Member{"9", ip(197, 9) + ":7090", "", true});
  std::string text;
  raft::Message snap = snapshot_for(1000, (*node)->term() + 1000, members, "snapkey", 1u << 20, text);
  Stranger stranger(ip(197, 9));
  REQUIRE(stranger.hello(address(197, 1), info_field(node->node(), "raft_cluster_id"), "9") == "+WELCOME");
  // One byte in the middle changed: a quote that ends the padding's string early, so the
  // text no longer parses.
  std::string damaged = text;
  damaged[damaged.find("pppp") + (512u << 10)] = '\'';
  REQUIRE(send_chunks(stranger, snap, damaged, 0, damaged.size(), 64u << 10, true));
  REQUIRE(eventually(scaled(20000), [&] { return info_field(node->node(), "raft_refused_peer_messages") == "1"; }));
  CHECK(node->logs().contains("refused a snapshot at index 1000"));
  // Cut short: the last chunk marked done arrives after half of it.
  REQUIRE(send_chunks(stranger, snap, text, 0, text.size() / 2, 64u << 10, true));
  REQUIRE(eventually(scaled(20000), [&] { return info_field(node->node(), "raft_refused_peer_messages") == "2"; }));
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
  REQUIRE(is_ok((*node)->execute({"set", "after", "1"})));
  CHECK(stored(node->node(), "k5") == "v");
  CHECK(stored(node->node(), "snapkey") == "(none)");
  CHECK_FALSE(holds_snapshot_at(config.data_dir, 1000));
  node.reset();
  node = std::make_unique<TestNode>(config);
  (*node)->start();
  REQUIRE(eventually(long_wait(), [&] { return (*node)->state() == 'l'; }));
  REQUIRE(is_ok((*node)->execute({"set", "restarted", "1"})));
  CHECK(stored(node->node(), "k5") == "v");
  CHECK(stored(node->node(), "after") == "1");
  CHECK(stored(node->node(), "snapkey") == "(none)");
}
