// Section 4, storage: the log, term and vote, snapshots, recovery after crashes and damage,
// failure on fsync errors and full disks, and group commit. Every test works in a fresh
// temporary directory of its own, or on a model disk (tests/disk_model.hpp). The crash model's
// randomized runs are in test_storage_sim.cpp.
#include <catch2/catch.hpp>

#include "disk_model.hpp"
#include "raft.hpp"
#include "support.hpp"
#include "temp_dir.hpp"

#include <cerrno>
#include <filesystem>
#include <fstream>

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

using test_support::TempDir;

raft::LogEntry entry(std::uint64_t index, std::uint64_t term, std::string payload = {}) {
  raft::LogEntry e;
  e.index = index;
  e.term = term;
  e.type = raft::EntryType::Command;
  e.timestamp_ms = 1700000000000 + static_cast<std::int64_t>(index);
  e.payload = payload.empty()
                  ? "set k" + std::to_string(index) + " " + std::string(index % 7, 'v')
                  : std::move(payload);
  return e;
}

std::vector<raft::LogEntry> entries(std::uint64_t first, std::uint64_t last, std::uint64_t term) {
  std::vector<raft::LogEntry> out;
  for (std::uint64_t i = first; i <= last; ++i) out.push_back(entry(i, term));
  return out;
}

raft::PersistBatch batch(std::uint64_t seq, std::vector<raft::LogEntry> es,
                         std::optional<raft::HardState> hs = std::nullopt) {
  raft::PersistBatch b;
  b.seq = seq;
  b.entries = std::move(es);
  b.hard_state = std::move(hs);
  return b;
}

raft::Snapshot snapshot(std::uint64_t index, std::uint64_t term, std::string data) {
  raft::Snapshot s;
  s.meta.index = index;
  s.meta.term = term;
  s.data = std::move(data);
  return s;
}

raft::StorageOptions options(const TempDir& dir, std::size_t segment_bytes = 64u << 20) {
  raft::StorageOptions o;
  o.dir = dir.path();
  o.segment_bytes = segment_bytes;
  return o;
}

raft::Identity identity(const std::string& node = "1") {
  raft::Identity id;
  id.node_id = node;
  id.cluster_id = "c0ffee";
  return id;
}

raft::Recovered reopen(const raft::StorageOptions& o) {
  raft::Recovered r;
  raft::Storage::open(o, r);
  return r;
}

/// The StorageError open() throws, or "" if it opens.
std::string open_error(const raft::StorageOptions& o) {
  try {
    reopen(o);
  } catch (const raft::StorageError& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> files_like(const std::string& dir, const std::string& prefix,
                                    const std::string& suffix) {
  std::vector<std::string> out;
  for (const auto& f : fs::directory_iterator(dir)) {
    const std::string name = f.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}
std::vector<std::string> segments(const TempDir& d) { return files_like(d.path(), "log-", ".seg"); }
std::vector<std::string> snapshots(const TempDir& d) {
  return files_like(d.path(), "snap-", ".snap");
}

/// Copies the data files (not the lock) of one directory into another.
void copy_data(const TempDir& from, const TempDir& to) {
  for (const auto& f : fs::directory_iterator(from.path()))
    if (f.path().filename() != "LOCK")
      fs::copy_file(f.path(), to.path() + "/" + f.path().filename().string(),
                    fs::copy_options::overwrite_existing);
}

void flip_byte(const std::string& file, std::uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5A);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

/// POSIX underneath; writes can be refused (a full disk) or cut in half and then refused.
struct FaultyWrites : raft::detail::PosixFileSystem {
  std::atomic<bool> full{false}, half{false};
  std::atomic<int> refused{0};
  int write(int fd, std::uint64_t offset, std::string_view data) override {
    if (full || half) ++refused;
    if (full) return ENOSPC;
    if (half) {
      PosixFileSystem::write(fd, offset, data.substr(0, data.size() / 2));
      return ENOSPC;
    }
    return PosixFileSystem::write(fd, offset, data);
  }
};

constexpr std::uint64_t kSegmentHeader = 64;  // format 2: with the synced mark
constexpr std::uint64_t kRecordOverhead = 33;

using test_support::read_file;

/// Byte offsets where each record of a single segment starts, and where the last one ends.
std::vector<std::uint64_t> record_boundaries(const std::vector<raft::LogEntry>& es) {
  std::vector<std::uint64_t> out{kSegmentHeader};
  for (const auto& e : es) out.push_back(out.back() + kRecordOverhead + e.payload.size());
  return out;
}

std::string segment_name(std::uint64_t first) {
  std::string n = std::to_string(first);
  return "log-" + std::string(20 - n.size(), '0') + n + ".seg";
}

/// Copies tests/data/storage-format-1, a data directory written in storage format 1.
void copy_format_1(const TempDir& to) {
  const fs::path from = fs::path(__FILE__).parent_path() / "data" / "storage-format-1";
  REQUIRE(fs::is_directory(from));
  for (const auto& f : fs::directory_iterator(from))
    fs::copy_file(f.path(), to.path() + "/" + f.path().filename().string());
}

/// The entries of that directory.
std::vector<raft::LogEntry> format_1_entries(std::uint64_t first, std::uint64_t last) {
  std::vector<raft::LogEntry> out;
  for (std::uint64_t i = first; i <= last; ++i) {
    raft::LogEntry e;
    e.index = i;
    e.term = 1 + i / 15;
    e.type = raft::EntryType::Command;
    e.timestamp_ms = 1000 + static_cast<std::int64_t>(i);
    e.payload = "set k" + std::to_string(i) + std::string(i % 5, 'v');
    out.push_back(e);
  }
  return out;
}

}  // namespace

TEST_CASE("crc32c matches the published check values", "[storage]") {
  using raft::detail::crc32c;
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff'), ramp;
  for (int i = 0; i < 32; ++i) ramp.push_back(static_cast<char>(i));
  CHECK(crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);
  CHECK(crc32c(ones.data(), ones.size()) == 0x62A8AB43u);
  CHECK(crc32c(ramp.data(), ramp.size()) == 0x46DD794Eu);
  // Continuing a CRC over a second piece equals the CRC of the whole.
  CHECK(crc32c(ramp.data() + 5, 27, crc32c(ramp.data(), 5)) == 0x46DD794Eu);
}

TEST_CASE("a new data directory holds its identity and a zero hard state", "[storage]") {
  TempDir dir;
  raft::Identity id = identity("node-a");
  id.initial_config.upsert(raft::Member{"node-a", "127.0.0.1:7000", "", true});
  id.initial_config.upsert(raft::Member{"node-b", "127.0.0.2:7000", "", false});
  CHECK_FALSE(raft::Storage::exists(dir.path()));
  std::string server_id;
  {
    raft::Storage s = raft::Storage::create(options(dir), id);
    server_id = s.identity().server_id;
    CHECK(s.first_index() == 1);
    CHECK(s.last_index() == 0);
  }
  CHECK(raft::Storage::exists(dir.path()));
  CHECK(server_id.size() == 32);
  CHECK(server_id.find_first_not_of("0123456789abcdef") == std::string::npos);

  raft::Recovered r = reopen(options(dir));
  CHECK(r.identity.node_id == "node-a");
  CHECK(r.identity.server_id == server_id);
  CHECK(r.identity.cluster_id == "c0ffee");
  CHECK(r.identity.initial_config == id.initial_config);
  CHECK(r.hard_state == raft::HardState{});
  CHECK_FALSE(r.snapshot);
  CHECK(r.entries.empty());
  CHECK(r.notes.empty());

  // Created once: a second create is refused, and two directories get distinct server ids.
  CHECK_THROWS_AS(raft::Storage::create(options(dir), id), raft::StorageError);
  TempDir other;
  CHECK(raft::Storage::create(options(other), id).identity().server_id != server_id);
}

TEST_CASE("create makes missing parent directories", "[storage]") {
  TempDir dir;
  raft::StorageOptions o = options(dir);
  o.dir = dir.path() + "/a/b/node";
  raft::Storage::create(o, identity());
  CHECK(raft::Storage::exists(o.dir));
  CHECK(reopen(o).identity.node_id == "1");
}

TEST_CASE("open refuses a directory that is not a data directory", "[storage]") {
  TempDir dir;
  CHECK_THAT(open_error(options(dir)), Contains("no identity file"));
  // Log files without an identity are not overwritten by create.
  std::ofstream(dir.file(segment_name(1))) << "x";
  CHECK_THROWS_WITH(raft::Storage::create(options(dir), identity()), Contains("no identity file"));
}

TEST_CASE("a data directory is locked while a Storage has it open", "[storage]") {
  TempDir dir;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    CHECK_THAT(open_error(options(dir)), Contains("in use"));
  }
  CHECK(open_error(options(dir)).empty());
}

TEST_CASE("appended entries survive a restart byte for byte", "[storage]") {
  TempDir dir;
  std::vector<raft::LogEntry> want;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    raft::LogEntry noop = entry(1, 1, "x");
    noop.type = raft::EntryType::Noop;
    noop.payload.clear();
    raft::LogEntry config = entry(2, 1, "*2\r\n$6\r\nconfig\r\n$1\r\n1\r\n");
    config.type = raft::EntryType::Config;
    raft::LogEntry binary = entry(3, 2, std::string("a\0b\xff\r\n", 6));
    binary.timestamp_ms = -5;
    want = {noop, config, binary};
    REQUIRE(s.write(batch(1, {noop, config})));
    REQUIRE(s.write(batch(2, {binary})));
    REQUIRE(s.sync());
    CHECK(s.last_index() == 3);
  }
  raft::Recovered r = reopen(options(dir));
  CHECK(r.entries == want);
  CHECK(r.notes.empty());

  // Appending continues the same log after a restart.
  {
    raft::Storage s = raft::Storage::open(options(dir), r);
    REQUIRE(s.write(batch(3, entries(4, 6, 2))));
    REQUIRE(s.sync());
  }
  for (auto& e : entries(4, 6, 2)) want.push_back(e);
  CHECK(reopen(options(dir)).entries == want);
  CHECK(segments(dir).size() == 1);
}

TEST_CASE("the hard state survives a restart and the latest one wins", "[storage]") {
  TempDir dir;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    REQUIRE(s.write(batch(1, {}, raft::HardState{10, "2"})));
    REQUIRE(s.write(batch(2, entries(1, 1, 10), raft::HardState{20, "3"})));
    REQUIRE(s.sync());
  }
  raft::Recovered r = reopen(options(dir));
  CHECK(r.hard_state == raft::HardState{20, "3"});
  CHECK(r.entries == entries(1, 1, 10));
  {
    raft::Storage s = raft::Storage::open(options(dir), r);
    REQUIRE(s.write(batch(3, {}, raft::HardState{30, ""})));
    REQUIRE(s.sync());
  }
  CHECK(reopen(options(dir)).hard_state == raft::HardState{30, ""});
}

TEST_CASE("a conflicting suffix is overwritten within one segment", "[storage]") {
  TempDir dir;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    REQUIRE(s.write(batch(1, entries(1, 10, 1))));
    REQUIRE(s.sync());
    REQUIRE(s.write(batch(2, entries(6, 8, 2))));
    REQUIRE(s.sync());
    CHECK(s.last_index() == 8);
  }
  std::vector<raft::LogEntry> want = entries(1, 5, 1);
  for (auto& e : entries(6, 8, 2)) want.push_back(e);
  raft::Recovered r = reopen(options(dir));
  CHECK(r.entries == want);
  CHECK(r.notes.empty());
  // Again after a restart, at the last entry.
  {
    raft::Storage s = raft::Storage::open(options(dir), r);
    REQUIRE(s.write(batch(3, {entry(8, 3, "new eight"), entry(9, 3)})));
    REQUIRE(s.sync());
  }
  want.pop_back();
  want.push_back(entry(8, 3, "new eight"));
  want.push_back(entry(9, 3));
  CHECK(reopen(options(dir)).entries == want);
}

TEST_CASE("a conflicting suffix is overwritten across segments", "[storage]") {
  TempDir dir;
  const auto o = options(dir, 256);
  raft::Recovered r;
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 40, 1))));
    REQUIRE(s.sync());
  }
  const std::vector<std::string> before = segments(dir);
  REQUIRE(before.size() >= 6);
  r = reopen(o);
  {
    raft::Storage s = raft::Storage::open(o, r);
    REQUIRE(s.write(batch(2, entries(7, 9, 2))));
    REQUIRE(s.sync());
  }
  CHECK(segments(dir).size() < before.size());
  std::vector<raft::LogEntry> want = entries(1, 6, 1);
  for (auto& e : entries(7, 9, 2)) want.push_back(e);
  r = reopen(o);
  CHECK(r.entries == want);

  // A cut at exactly the first entry of a segment leaves that segment empty, then refills it.
  std::uint64_t cut = 0;
  for (const auto& name : segments(dir)) {
    const std::uint64_t first = std::stoull(name.substr(4, 20));
    if (first > 1) {
      cut = first;
      break;
    }
  }
  REQUIRE(cut > 1);
  {
    raft::Storage s = raft::Storage::open(o, r);
    REQUIRE(s.write(batch(3, {entry(cut, 3, "at the cut")})));
    REQUIRE(s.sync());
  }
  want.resize(cut - 1);
  want.push_back(entry(cut, 3, "at the cut"));
  CHECK(reopen(o).entries == want);
}

TEST_CASE("a suffix cut before sync drops only buffered records", "[storage]") {
  TempDir dir;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    REQUIRE(s.write(batch(1, entries(1, 5, 1))));
    REQUIRE(s.write(batch(2, entries(3, 4, 2))));
    const std::uint64_t before = s.fsync_count();
    REQUIRE(s.sync());
    CHECK(s.fsync_count() == before + 1);
  }
  std::vector<raft::LogEntry> want = entries(1, 2, 1);
  for (auto& e : entries(3, 4, 2)) want.push_back(e);
  CHECK(reopen(options(dir)).entries == want);
}

TEST_CASE("segments rotate at the configured size", "[storage]") {
  TempDir dir;
  const auto o = options(dir, 300);
  std::vector<raft::LogEntry> want;
  {
    raft::Storage s = raft::Storage::create(o, identity());
    for (std::uint64_t i = 1; i <= 100; ++i) {
      want.push_back(entry(i, 1 + i / 30));
      REQUIRE(s.write(batch(i, {want.back()})));
      REQUIRE(s.sync());
    }
    // A record larger than a segment gets one of its own.
    want.push_back(entry(101, 5, std::string(1000, 'L')));
    want.push_back(entry(102, 5));
    REQUIRE(s.write(batch(101, {want[100], want[101]})));
    REQUIRE(s.sync());
  }
  const auto names = segments(dir);
  CHECK(names.size() > 10);
  for (const auto& name : names) {
    const auto size = fs::file_size(dir.file(name));
    if (name != segment_name(101)) CHECK(size <= 300);
  }
  CHECK(fs::file_size(dir.file(segment_name(101))) == kSegmentHeader + kRecordOverhead + 1000);
  CHECK(reopen(o).entries == want);
}

TEST_CASE("a snapshot in a batch replaces the whole log", "[storage]") {
  TempDir dir;
  const auto o = options(dir, 256);
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 30, 1))));
    REQUIRE(s.sync());
    raft::PersistBatch b = batch(2, entries(21, 22, 2), raft::HardState{2, "3"});
    b.snapshot = std::make_shared<raft::Snapshot>(snapshot(20, 2, "{'_META_': {}}"));
    REQUIRE(s.write(b));
    REQUIRE(s.sync());
    CHECK(s.snapshot_index() == 20);
    CHECK(s.first_index() == 21);
    CHECK(s.last_index() == 22);
  }
  CHECK(segments(dir) == std::vector<std::string>{segment_name(21)});
  CHECK(snapshots(dir).size() == 1);
  raft::Recovered r = reopen(o);
  REQUIRE(r.snapshot);
  CHECK(r.snapshot->meta.index == 20);
  CHECK(r.snapshot->meta.term == 2);
  CHECK(r.snapshot->data == "{'_META_': {}}");
  CHECK(r.snapshot->meta.config.empty());
  CHECK(r.hard_state == raft::HardState{2, "3"});
  CHECK(r.entries == entries(21, 22, 2));

  // A snapshot with no entries leaves an empty log that continues after it.
  {
    raft::Storage s = raft::Storage::open(o, r);
    raft::PersistBatch b;
    b.seq = 3;
    b.snapshot = std::make_shared<raft::Snapshot>(snapshot(50, 3, "fifty"));
    REQUIRE(s.write(b));
    REQUIRE(s.sync());
    CHECK(s.last_index() == 50);
    CHECK(segments(dir).empty());
    REQUIRE(s.write(batch(4, entries(51, 52, 3))));
    REQUIRE(s.sync());
  }
  r = reopen(o);
  CHECK(r.snapshot->meta.index == 50);
  CHECK(r.snapshot->data == "fifty");
  CHECK(r.entries == entries(51, 52, 3));
  CHECK(snapshots(dir).size() == 1);
}

TEST_CASE("a snapshot the node takes compacts the log prefix and keeps a window",
          "[storage]") {
  TempDir dir;
  const auto o = options(dir, 256);
  raft::Recovered r;
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 60, 1))));
    REQUIRE(s.sync());
    const std::size_t before = segments(dir).size();
    REQUIRE(s.save_snapshot(snapshot(50, 1, "state at 50"), 40));
    CHECK(segments(dir).size() < before);
    CHECK(s.first_index() > 1);
    CHECK(s.first_index() <= 41);  // the window 41..50 is kept
    CHECK(s.snapshot_index() == 50);
  }
  r = reopen(o);
  CHECK(r.snapshot->data == "state at 50");
  CHECK(r.entries == entries(51, 60, 1));
  {
    raft::Storage s = raft::Storage::open(o, r);
    REQUIRE(s.save_snapshot(snapshot(55, 1, "state at 55"), 55));
    CHECK(snapshots(dir).size() == 1);
    // Not newer than the one on disk: ignored.
    REQUIRE(s.save_snapshot(snapshot(45, 1, "stale"), 45));
    CHECK(s.snapshot_index() == 55);
    REQUIRE(s.write(batch(2, entries(61, 62, 2))));
    REQUIRE(s.sync());
  }
  r = reopen(o);
  CHECK(r.snapshot->data == "state at 55");
  CHECK(r.entries == [] {
    auto v = entries(56, 60, 1);
    for (auto& e : entries(61, 62, 2)) v.push_back(e);
    return v;
  }());
  CHECK(snapshots(dir).size() == 1);
  CHECK(r.notes.empty());
}

TEST_CASE("an interrupted snapshot install is finished by open", "[storage]") {
  // A crash after the new snapshot became durable but before the log was deleted leaves
  // both. The log is kept after the snapshot if it agrees with it there, dropped otherwise.
  const auto scenario = [](std::uint64_t snap_index, std::uint64_t snap_term) {
    TempDir source, dir;
    {
      raft::Storage s = raft::Storage::create(options(source), identity());
      raft::PersistBatch b;
      b.seq = 1;
      b.snapshot = std::make_shared<raft::Snapshot>(snapshot(snap_index, snap_term, "s"));
      REQUIRE(s.write(b));
    }
    {
      raft::Storage s = raft::Storage::create(options(dir, 200), identity());
      REQUIRE(s.write(batch(1, entries(1, 20, 1))));
      REQUIRE(s.sync());
    }
    for (const auto& name : snapshots(source))
      fs::copy_file(source.file(name), dir.file(name));
    raft::Recovered r = reopen(options(dir, 200));
    REQUIRE(r.snapshot);
    CHECK(r.snapshot->meta.index == snap_index);
    return std::make_pair(r, segments(dir).size());
  };
  SECTION("the log agrees with the snapshot at its index: the entries after it stay") {
    auto [r, segs] = scenario(10, 1);
    CHECK(r.entries == entries(11, 20, 1));
    CHECK(r.notes.empty());
    CHECK(segs > 0);
  }
  SECTION("the log has another term at the snapshot's index: it goes") {
    auto [r, segs] = scenario(10, 2);
    CHECK(r.entries.empty());
    REQUIRE(r.notes.size() == 1);
    CHECK_THAT(r.notes[0], Contains("removed the log"));
    CHECK(segs == 0);
  }
  SECTION("the snapshot is past the end of the log: the log goes") {
    auto [r, segs] = scenario(30, 1);
    CHECK(r.entries.empty());
    REQUIRE(r.notes.size() == 1);
    CHECK(segs == 0);
  }
}

TEST_CASE("a snapshot install the log already holds keeps the entries after it", "[storage]") {
  // Raft §7: a follower whose log holds the snapshot's last entry (same index and term)
  // keeps what follows it; only the segments the snapshot covers may go.
  TempDir dir;
  const auto o = options(dir, 256);
  std::vector<std::string> before;
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 30, 1))));
    REQUIRE(s.sync());
    before = segments(dir);
    raft::PersistBatch b = batch(2, {}, raft::HardState{2, "3"});
    b.snapshot = std::make_shared<raft::Snapshot>(snapshot(20, 1, "at 20"));
    REQUIRE(s.write(b));
    REQUIRE(s.sync());
    CHECK(s.snapshot_index() == 20);
    CHECK(s.last_index() == 30);
    CHECK(s.first_index() <= 21);
  }
  // Exactly the segments whose every entry the snapshot covers are gone.
  const auto after = segments(dir);
  for (const auto& name : before) {
    const auto next = std::upper_bound(before.begin(), before.end(), name);
    const bool covered = next != before.end() && std::stoull(next->substr(4, 20)) - 1 <= 20;
    CHECK(std::count(after.begin(), after.end(), name) == (covered ? 0 : 1));
  }
  raft::Recovered r = reopen(o);
  REQUIRE(r.snapshot);
  CHECK(r.snapshot->meta.index == 20);
  CHECK(r.snapshot->data == "at 20");
  CHECK(r.hard_state == raft::HardState{2, "3"});
  CHECK(r.entries == entries(21, 30, 1));
  CHECK(r.notes.empty());
}

TEST_CASE("a batch never deletes durable entries to write them again", "[storage][crash]") {
  // A batch that repeats entries the log holds (with a snapshot the log holds too) and
  // extends it: no state of the disk along the way, as seen at each fsync, may lack an
  // entry that was synced before.
  TempDir dir;
  std::vector<std::unique_ptr<TempDir>> states;
  bool capture = false;
  raft::StorageOptions o = options(dir, 256);
  o.fsync_hook = [&](int fd) {
    if (capture) {
      states.push_back(std::make_unique<TempDir>());
      copy_data(dir, *states.back());
    }
    return ::fsync(fd);
  };
  raft::Storage s = raft::Storage::create(o, identity());
  REQUIRE(s.write(batch(1, entries(1, 30, 1))));
  REQUIRE(s.sync());
  capture = true;
  SECTION("entries only") {
    REQUIRE(s.write(batch(2, entries(5, 32, 1))));
    REQUIRE(s.sync());
  }
  SECTION("a snapshot and the entries after it") {
    raft::PersistBatch b = batch(2, entries(21, 32, 1));
    b.snapshot = std::make_shared<raft::Snapshot>(snapshot(20, 1, "at 20"));
    REQUIRE(s.write(b));
    REQUIRE(s.sync());
  }
  CHECK(s.last_index() == 32);
  states.push_back(std::make_unique<TempDir>());
  copy_data(dir, *states.back());
  for (const auto& state : states) {
    raft::Recovered r = reopen(options(*state, 256));
    const std::uint64_t from = r.snapshot ? r.snapshot->meta.index + 1 : 1;
    REQUIRE(r.entries.size() >= 31 - from);
    CHECK(std::vector<raft::LogEntry>(r.entries.begin(), r.entries.begin() + static_cast<long>(31 - from)) ==
          entries(from, 30, 1));
  }
  CHECK(reopen(options(*states.back(), 256)).entries.back() == entry(32, 1));
}

TEST_CASE("every intermediate state of a cut or install or compaction recovers",
          "[storage][crash]") {
  // The directory as it stands at each fsync: what a crash there would leave if every write
  // issued so far had reached the disk. Each must open to the log before or after the step.
  TempDir dir;
  std::vector<std::unique_ptr<TempDir>> states;
  bool capture = false;
  raft::StorageOptions o = options(dir, 256);
  o.fsync_hook = [&](int fd) {
    if (capture) {
      states.push_back(std::make_unique<TempDir>());
      copy_data(dir, *states.back());
    }
    return ::fsync(fd);
  };
  const auto is_prefix = [](const std::vector<raft::LogEntry>& part,
                            const std::vector<raft::LogEntry>& whole) {
    return part.size() <= whole.size() && std::equal(part.begin(), part.end(), whole.begin());
  };
  raft::Storage s = raft::Storage::create(o, identity());
  REQUIRE(s.write(batch(1, entries(1, 40, 1))));
  REQUIRE(s.sync());

  const auto first_of = [](const std::string& name) { return std::stoull(name.substr(4, 20)); };
  const std::vector<std::string> segments_before = segments(dir);
  // The segments after the one holding `index`, and the segments the step added.
  const auto later_than = [&](std::uint64_t index) {
    return static_cast<std::size_t>(std::count_if(segments_before.begin(), segments_before.end(),
                                                  [&](const std::string& n) { return first_of(n) > index; }));
  };

  SECTION("a suffix cut across segments") {
    const auto before = entries(1, 40, 1);
    auto after = entries(1, 6, 1);
    for (auto& e : entries(7, 9, 2)) after.push_back(e);
    capture = true;
    REQUIRE(s.write(batch(2, entries(7, 9, 2))));
    REQUIRE(s.sync());
    const std::size_t removed = later_than(7);
    const std::size_t added = segments(dir).size() - (segments_before.size() - removed);
    REQUIRE(removed >= 2);
    // One directory fsync per segment removed; the mark lowered, the truncation; per segment
    // added: the previous sealed (records, mark), the new one (file, directory); the sync.
    CHECK(states.size() == removed + 2 + 4 * added + 1);
    for (const auto& state : states) {
      raft::Recovered r = reopen(options(*state, 256));
      CHECK(r.entries.size() >= 6);
      CHECK((is_prefix(r.entries, before) || is_prefix(r.entries, after)));
    }
  }
  SECTION("a snapshot install that replaces the log") {
    raft::PersistBatch b = batch(2, entries(31, 32, 3));
    b.snapshot = std::make_shared<raft::Snapshot>(snapshot(30, 3, "thirty"));
    capture = true;
    REQUIRE(s.write(b));
    REQUIRE(s.sync());
    // The snapshot (file, directory); one directory fsync per segment removed; the new
    // segment (file, directory); the sync.
    CHECK(states.size() == 2 + segments_before.size() + 2 + 1);
    for (const auto& state : states) {
      raft::Recovered r = reopen(options(*state, 256));
      if (r.snapshot) {
        CHECK(r.snapshot->meta.index == 30);
        CHECK(is_prefix(r.entries, entries(31, 32, 3)));
      } else {
        CHECK(r.entries == entries(1, 40, 1));
      }
    }
  }
  SECTION("a snapshot the node takes, then a compaction") {
    REQUIRE(s.save_snapshot(snapshot(20, 1, "twenty"), 20));
    capture = true;
    const std::vector<std::string> kept = segments(dir);
    REQUIRE(s.save_snapshot(snapshot(35, 1, "thirty-five"), 35));
    // Whole segments at or below 35 go, not the last one.
    std::size_t dropped = 0;
    while (dropped + 1 < kept.size() && first_of(kept[dropped + 1]) - 1 <= 35) ++dropped;
    REQUIRE(dropped >= 2);
    CHECK(segments(dir) == std::vector<std::string>(kept.begin() + static_cast<long>(dropped), kept.end()));
    // The snapshot (file, directory); one directory fsync per segment dropped.
    CHECK(states.size() == 2 + dropped);
    for (const auto& state : states) {
      raft::Recovered r = reopen(options(*state, 256));
      REQUIRE(r.snapshot);
      CHECK(r.entries == entries(r.snapshot->meta.index + 1, 40, 1));
    }
    CHECK(reopen(options(*states.back(), 256)).snapshot->meta.index == 35);
  }
}

TEST_CASE("a torn write at the tail of the log is cut and reported", "[storage][crash]") {
  // The last three records were written but their fdatasync never returned (it failed), so
  // the synced mark does not cover them. Every byte offset inside them: truncate a copy of
  // the segment there (a crash in the middle of a write), or truncate and pad with zeros (a
  // file system that extended the file but never wrote the data). Open keeps exactly the
  // complete records.
  TempDir source;
  std::atomic<bool> fail_fsync{false};
  raft::StorageOptions o = options(source, 400);
  o.fsync_hook = [&](int fd) {
    if (fail_fsync) {
      errno = EIO;
      return -1;
    }
    return ::fsync(fd);
  };
  std::vector<raft::LogEntry> all = entries(1, 12, 1);
  all[11].payload = std::string(40, 'z');
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, std::vector<raft::LogEntry>(all.begin(), all.end() - 3))));
    REQUIRE(s.sync());
    REQUIRE(s.write(batch(2, std::vector<raft::LogEntry>(all.end() - 3, all.end()))));
    fail_fsync = true;
    REQUIRE_FALSE(s.sync());
  }
  const auto names = segments(source);
  REQUIRE(names.size() >= 2);  // the damage is in the last of several segments
  const std::string last_name = names.back();
  const std::uint64_t last_first = std::stoull(last_name.substr(4, 20));
  const std::vector<raft::LogEntry> in_last(all.begin() + static_cast<long>(last_first - 1),
                                            all.end());
  REQUIRE(in_last.size() >= 3);
  const auto bounds = record_boundaries(in_last);
  REQUIRE(fs::file_size(source.file(last_name)) == bounds.back());

  for (const bool zero_fill : {false, true}) {
    for (std::uint64_t cut = bounds[bounds.size() - 4]; cut <= bounds.back(); ++cut) {
      INFO("cut at byte " << cut << (zero_fill ? ", zero-filled" : ""));
      TempDir dir;
      copy_data(source, dir);
      fs::resize_file(dir.file(last_name), cut);
      if (zero_fill) fs::resize_file(dir.file(last_name), cut + 700);
      std::size_t complete = 0;
      while (complete + 1 < bounds.size() && bounds[complete + 1] <= cut) ++complete;
      const std::uint64_t kept_bytes = bounds[complete];

      raft::Recovered r = reopen(options(dir, 400));
      std::vector<raft::LogEntry> want(all.begin(),
                                       all.begin() + static_cast<long>(last_first - 1 + complete));
      CHECK(r.entries == want);
      CHECK(fs::file_size(dir.file(last_name)) == kept_bytes);
      const bool damaged = zero_fill || cut != kept_bytes;
      if (damaged) {
        REQUIRE(r.notes.size() == 1);
        CHECK_THAT(r.notes[0], Contains(last_name) &&
                                   Contains("byte offset " + std::to_string(kept_bytes)));
      } else {
        CHECK(r.notes.empty());
      }
      // The repaired log takes appends, and they survive the next restart.
      if (cut % 17 == 0) {
        {
          raft::Storage s = raft::Storage::open(options(dir, 400), r);
          REQUIRE(s.write(batch(2, {entry(want.size() + 1, 2, "after repair")})));
          REQUIRE(s.sync());
        }
        want.push_back(entry(want.size() + 1, 2, "after repair"));
        raft::Recovered again = reopen(options(dir, 400));
        CHECK(again.entries == want);
        CHECK(again.notes.empty());
      }
    }
  }
}

TEST_CASE("damage before valid data is refused with the file and byte offset",
          "[storage][crash]") {
  TempDir dir;
  const auto o = options(dir, 300);
  const std::vector<raft::LogEntry> all = entries(1, 30, 1);
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, all)));
    REQUIRE(s.write(batch(2, {}, raft::HardState{1, "1"})));
    REQUIRE(s.sync());
    REQUIRE(s.save_snapshot(snapshot(3, 1, "snap"), 0));
  }
  const auto names = segments(dir);
  REQUIRE(names.size() >= 4);
  const auto first_of = [](const std::string& name) { return std::stoull(name.substr(4, 20)); };
  const auto segment_entries = [&](std::size_t i) {
    const std::uint64_t first = first_of(names[i]);
    const std::uint64_t end = i + 1 < names.size() ? first_of(names[i + 1]) : all.size() + 1;
    return std::vector<raft::LogEntry>(all.begin() + static_cast<long>(first - 1),
                                       all.begin() + static_cast<long>(end - 1));
  };
  REQUIRE(open_error(o).empty());

  SECTION("a bad record followed by valid ones in the last segment") {
    const auto bounds = record_boundaries(segment_entries(names.size() - 1));
    REQUIRE(bounds.size() >= 3);
    flip_byte(dir.file(names.back()), bounds[0] + 12);
    const std::string err = open_error(o);
    CHECK_THAT(err, Contains("CORRUPT") && Contains(names.back()) &&
                        Contains("byte offset " + std::to_string(bounds[0])) &&
                        Contains("before the synced mark"));
  }
  SECTION("a bad last record in a segment that is not the last") {
    const auto bounds = record_boundaries(segment_entries(1));
    const std::uint64_t last_record = bounds[bounds.size() - 2];
    flip_byte(dir.file(names[1]), last_record + 9);
    CHECK_THAT(open_error(o), Contains(names[1]) &&
                                  Contains("byte offset " + std::to_string(last_record)) &&
                                  Contains("before the synced mark"));
  }
  SECTION("a segment cut short that is not the last") {
    const auto bounds = record_boundaries(segment_entries(1));
    const std::uint64_t last_record = bounds[bounds.size() - 2];
    fs::resize_file(dir.file(names[1]), bounds.back() - 3);
    CHECK_THAT(open_error(o), Contains(names[1]) &&
                                  Contains("byte offset " + std::to_string(last_record)));
  }
  SECTION("a missing middle segment") {
    fs::remove(dir.file(names[2]));
    CHECK_THAT(open_error(o), Contains(names[3]) && Contains("a segment is missing"));
  }
  SECTION("a damaged segment header") {
    flip_byte(dir.file(names.back()), 14);
    CHECK_THAT(open_error(o), Contains(names.back()) && Contains("byte offset 20") &&
                                  Contains("header checksum"));
  }
  SECTION("a hard state with a bad checksum") {
    flip_byte(dir.file("hardstate"), 13);
    CHECK_THAT(open_error(o), Contains("hardstate") && Contains("checksum mismatch") &&
                                  Contains("restore it from a backup"));
  }
  SECTION("a damaged identity") {
    flip_byte(dir.file("identity"), 20);
    CHECK_THAT(open_error(o), Contains("identity") && Contains("checksum mismatch"));
  }
  SECTION("a damaged snapshot") {
    const auto snaps = snapshots(dir);
    REQUIRE(snaps.size() == 1);
    // A byte of the data (after the header line).
    const std::string text = read_file(dir.file(snaps[0]));
    const std::size_t data_at = text.find('\n') + 1;
    flip_byte(dir.file(snaps[0]), data_at + 3);
    CHECK_THAT(open_error(o), Contains(snaps[0]) && Contains("byte offset " + std::to_string(data_at)) &&
                                  Contains("checksum mismatch"));
  }
  SECTION("a damaged format version in the snapshot header") {
    const auto snaps = snapshots(dir);
    REQUIRE(snaps.size() == 1);
    flip_byte(dir.file(snaps[0]), 27);  // '1' ^ 0x5A: not a number
    CHECK_THAT(open_error(o), Contains("CORRUPT") && Contains(snaps[0]) && Contains("malformed"));
    flip_byte(dir.file(snaps[0]), 27);
    std::string text = read_file(dir.file(snaps[0]));
    REQUIRE(text.compare(0, 28, "# raft.hpp snapshot format 1") == 0);
    text[27] = '0';
    std::ofstream(dir.file(snaps[0]), std::ios::binary | std::ios::trunc) << text;
    CHECK_THAT(open_error(o), Contains("CORRUPT") && Contains("format version 0"));
  }
  SECTION("a file written by a newer format version") {
    flip_byte(dir.file("hardstate"), 8);
    CHECK_THAT(open_error(o), Contains("hardstate") && Contains("newer"));
  }
  SECTION("the first segments and the snapshot are missing") {
    for (const auto& name : snapshots(dir)) fs::remove(dir.file(name));
    fs::remove(dir.file(names[0]));
    CHECK_THAT(open_error(o), Contains(names[1]) && Contains("no snapshot"));
  }
  SECTION("a segment under another segment's name") {
    // One segment's records under the next segment's name.
    fs::rename(dir.file(names[2]), dir.file("x"));
    fs::copy_file(dir.file(names[1]), dir.file(names[2]));
    fs::remove(dir.file("x"));
    CHECK_THAT(open_error(o), Contains(names[2]));
  }
}

TEST_CASE("terms must not decrease along the recovered log", "[storage][crash]") {
  TempDir dir, other;
  {
    raft::Storage s = raft::Storage::create(options(dir, 200), identity());
    REQUIRE(s.write(batch(1, entries(1, 10, 5))));
    REQUIRE(s.sync());
  }
  {
    raft::Storage s = raft::Storage::create(options(other, 200), identity());
    REQUIRE(s.write(batch(1, entries(1, 10, 1))));
    REQUIRE(s.sync());
  }
  // Graft the other log's last segment (lower terms, right indexes) onto this one.
  const auto names = segments(dir);
  REQUIRE(segments(other) == names);
  fs::copy_file(other.file(names.back()), dir.file(names.back()),
                fs::copy_options::overwrite_existing);
  CHECK_THAT(open_error(options(dir, 200)),
             Contains(names.back()) && Contains("below the previous"));
}

TEST_CASE("damage after the synced mark with valid records behind it is a torn tail",
          "[storage][crash]") {
  // A crash while records 11 to 20 were being synced, whose writes reached the disk out of
  // order: the page holding record 11 never did, later ones did. Nothing of 11 to 20 was
  // acknowledged, so open() must cut it all, not refuse the directory.
  TempDir dir, later;
  std::string segment;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    REQUIRE(s.write(batch(1, entries(1, 10, 1))));
    REQUIRE(s.sync());
    copy_data(dir, later);
    REQUIRE(s.write(batch(2, entries(11, 20, 1))));
    REQUIRE(s.sync());
    segment = segments(dir).back();
  }
  const std::string synced = read_file(dir.file(segment));
  const std::uint64_t end_of_10 = fs::file_size(later.file(segment));
  std::string tail = synced.substr(end_of_10);
  const std::uint64_t record_11 = kRecordOverhead + entry(11, 1).payload.size();
  std::fill(tail.begin(), tail.begin() + static_cast<long>(record_11), '\0');
  std::ofstream(later.file(segment), std::ios::app | std::ios::binary) << tail;

  raft::Recovered r = reopen(options(later));
  CHECK(r.entries == entries(1, 10, 1));
  REQUIRE(r.notes.size() == 1);
  CHECK_THAT(r.notes[0], Contains("torn tail") && Contains("byte offset " + std::to_string(end_of_10)));
  CHECK(fs::file_size(later.file(segment)) == end_of_10);
}

TEST_CASE("a segment that ends before its synced mark is refused, not cut", "[storage][crash]") {
  // Records 1 to 20 were synced, and the sync of record 21 carried a mark covering them. A
  // file that now ends inside record 15 lost data that was made durable: that is damage, and
  // cutting it as a torn tail would silently drop acknowledged entries.
  TempDir dir;
  std::string segment;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    REQUIRE(s.write(batch(1, entries(1, 20, 1))));
    REQUIRE(s.sync());
    REQUIRE(s.write(batch(2, entries(21, 21, 1))));
    REQUIRE(s.sync());
    segment = segments(dir).back();
  }
  const auto bounds = record_boundaries(entries(1, 21, 1));
  const std::uint64_t record_15 = bounds[14];
  fs::resize_file(dir.file(segment), record_15 + 10);
  CHECK_THAT(open_error(options(dir)),
             Contains("CORRUPT") && Contains(segment) &&
                 Contains("byte offset " + std::to_string(record_15)) &&
                 Contains("synced mark"));
}

TEST_CASE("a long garbage tail is cut in one pass", "[storage][crash]") {
  // A tail whose length fields read 0x01010101 (16.8 MB) and a few thousand stray bytes
  // after 16.8 MB of them: checking for a valid record at every byte by checksumming the
  // rest of the segment took hours at this size (13 s with 2000 stray bytes).
  const std::string garbage = std::string(0x01010101u + 8, '\x01') + [] {
    std::string stray;
    for (int i = 0; i < 20000; ++i) stray.push_back(static_cast<char>(i * 7 + 3));
    return stray;
  }();
  SECTION("format 2: after the synced mark") {
    TempDir dir;
    {
      raft::Storage s = raft::Storage::create(options(dir), identity());
      REQUIRE(s.write(batch(1, entries(1, 10, 1))));
      REQUIRE(s.sync());
    }
    const std::string segment = segments(dir).back();
    std::ofstream(dir.file(segment), std::ios::app | std::ios::binary) << garbage;
    raft::Recovered r = reopen(options(dir));
    CHECK(r.entries == entries(1, 10, 1));
    REQUIRE(r.notes.size() == 1);
    CHECK_THAT(r.notes[0], Contains("torn tail") && Contains("after the synced mark"));
  }
  SECTION("format 1: no valid record of the log follows") {
    TempDir dir;
    copy_format_1(dir);
    std::ofstream(dir.file(segment_name(37)), std::ios::app | std::ios::binary) << garbage;
    raft::Recovered r = reopen(options(dir));
    CHECK(r.entries == format_1_entries(21, 40));
    REQUIRE(r.notes.size() == 1);
    CHECK_THAT(r.notes[0], Contains("torn tail") && Contains("nothing valid after it"));
  }
}

TEST_CASE("open makes what it recovered durable", "[storage][crash]") {
  // After a crash of the process alone, writes that no fsync covered are still in the page
  // cache: open() reads them and the node acts on them (it may acknowledge those entries or
  // keep that vote), so they must survive a power cut that follows.
  TempDir dir;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    REQUIRE(s.write(batch(1, entries(1, 3, 1))));
    REQUIRE(s.sync());
  }
  std::vector<std::string> synced;
  raft::StorageOptions o = options(dir);
  o.fsync_hook = [&](int fd) {
    synced.push_back(fs::read_symlink("/proc/self/fd/" + std::to_string(fd)).filename().string());
    return ::fsync(fd);
  };
  raft::Recovered r;
  raft::Storage s = raft::Storage::open(o, r);
  CHECK(synced == std::vector<std::string>{segment_name(1), fs::path(dir.path()).filename().string()});
}

TEST_CASE("a data directory of storage format 1 opens and goes on in format 2", "[storage]") {
  // tests/data/storage-format-1 was written by the storage code of format 1 (segments
  // without a synced mark): entries 1 to 40 in segments of 300 bytes, term 1 + index / 15,
  // hard state term 7 vote n2, then a snapshot at 20 (term 2) keeping entries from 10 on.
  TempDir dir;
  copy_format_1(dir);
  const auto check = [](const raft::Recovered& r, std::vector<raft::LogEntry> want) {
    CHECK(r.identity.node_id == "n1");
    CHECK(r.identity.cluster_id == "c1");
    CHECK(r.hard_state == raft::HardState{7, "n2"});
    REQUIRE(r.snapshot);
    CHECK(r.snapshot->meta.index == 20);
    CHECK(r.snapshot->meta.term == 2);
    CHECK(r.snapshot->data == "{'snap': 20}");
    CHECK(r.entries == want);
    CHECK(r.notes.empty());
  };
  raft::Recovered r = reopen(options(dir, 300));
  check(r, format_1_entries(21, 40));

  SECTION("appends go to a new segment of format 2") {
    {
      raft::Storage s = raft::Storage::open(options(dir, 300), r);
      REQUIRE(s.write(batch(1, entries(41, 42, 4))));
      REQUIRE(s.sync());
    }
    CHECK(segments(dir).back() == segment_name(41));
    auto want = format_1_entries(21, 40);
    for (auto& e : entries(41, 42, 4)) want.push_back(e);
    check(reopen(options(dir, 300)), want);
  }
  SECTION("a cut inside the last segment of format 1") {
    {
      raft::Storage s = raft::Storage::open(options(dir, 300), r);
      REQUIRE(s.write(batch(1, entries(39, 39, 4))));
      REQUIRE(s.sync());
    }
    CHECK(segments(dir).back() == segment_name(39));
    auto want = format_1_entries(21, 38);
    want.push_back(entry(39, 4));
    check(reopen(options(dir, 300)), want);
  }
  SECTION("a cut at the first entry of the last segment of format 1 replaces it") {
    {
      raft::Storage s = raft::Storage::open(options(dir, 300), r);
      REQUIRE(s.write(batch(1, entries(37, 37, 4))));
      REQUIRE(s.sync());
    }
    CHECK(segments(dir).back() == segment_name(37));
    auto want = format_1_entries(21, 36);
    want.push_back(entry(37, 4));
    check(reopen(options(dir, 300)), want);
  }
  SECTION("a damaged record with valid ones behind it in the last segment is refused") {
    flip_byte(dir.file(segment_name(37)), 24 + 12);
    CHECK_THAT(open_error(options(dir, 300)),
               Contains("CORRUPT") && Contains(segment_name(37)) && Contains("byte offset 24") &&
                   Contains("valid records follow"));
  }
}

TEST_CASE("snapshot files appear only when complete", "[storage][crash]") {
  TempDir dir;
  std::atomic<bool> fail_next{false};
  raft::StorageOptions o = options(dir);
  o.fsync_hook = [&](int fd) {
    if (fail_next.exchange(false)) {
      errno = EIO;
      return -1;
    }
    return ::fsync(fd);
  };
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 20, 1))));
    REQUIRE(s.sync());
    REQUIRE(s.save_snapshot(snapshot(10, 1, "old"), 10));
  }
  const auto old_snapshot = snapshots(dir);
  REQUIRE(old_snapshot.size() == 1);

  SECTION("the previous snapshot survives a failure while the new one is written") {
    {
      raft::Recovered r;
      raft::Storage s = raft::Storage::open(o, r);
      fail_next = true;  // the new snapshot's temporary file fails its fdatasync
      CHECK_FALSE(s.save_snapshot(snapshot(15, 1, "new"), 15));
      CHECK(s.failed());
      CHECK(snapshots(dir) == old_snapshot);
    }
    raft::Recovered r = reopen(options(dir));
    CHECK(r.snapshot->data == "old");
    CHECK(r.entries == entries(11, 20, 1));
    REQUIRE(r.notes.size() == 1);
    CHECK_THAT(r.notes[0], Contains(".tmp"));
  }
  SECTION("a leftover temporary file is ignored and removed") {
    std::ofstream(dir.file("snap-00000000000000000015-00000000000000000001.snap.tmp"))
        << "half a snapsh";
    raft::Recovered r = reopen(options(dir));
    CHECK(r.snapshot->data == "old");
    REQUIRE(r.notes.size() == 1);
    CHECK_THAT(r.notes[0], Contains(".snap.tmp"));
    CHECK(files_like(dir.path(), "snap-", ".tmp").empty());
  }
  SECTION("a crash before the previous snapshot is deleted: the newer one wins") {
    fs::copy_file(dir.file(old_snapshot[0]), dir.path() + "/old.keep");
    {
      raft::Recovered r;
      raft::Storage s = raft::Storage::open(o, r);
      REQUIRE(s.save_snapshot(snapshot(15, 1, "new"), 15));
    }
    fs::rename(dir.path() + "/old.keep", dir.file(old_snapshot[0]));
    raft::Recovered r = reopen(options(dir));
    CHECK(r.snapshot->data == "new");
    CHECK(r.entries == entries(16, 20, 1));
    REQUIRE(r.notes.size() == 1);
    CHECK_THAT(r.notes[0], Contains(old_snapshot[0]) && Contains("superseded"));
    CHECK(snapshots(dir).size() == 1);
  }
}

TEST_CASE("a failed fsync fails the storage for good", "[storage][faults]") {
  TempDir dir;
  std::atomic<bool> failing{false};
  std::atomic<int> calls_while_failing{0};
  raft::StorageOptions o = options(dir);
  o.fsync_hook = [&](int fd) {
    if (failing) {
      ++calls_while_failing;
      errno = EIO;
      return -1;
    }
    return ::fsync(fd);
  };
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 5, 1))));
    REQUIRE(s.sync());
    failing = true;
    REQUIRE(s.write(batch(2, entries(6, 8, 1))));
    CHECK_FALSE(s.sync());
    CHECK(s.failed());
    CHECK_THAT(s.failure(), Contains("fdatasync") && Contains(segment_name(1)) &&
                                Contains("Input/output error") && Contains("restart"));
    CHECK(calls_while_failing == 1);
    // Refused from now on, and never retried.
    const std::string reason = s.failure();
    CHECK_FALSE(s.write(batch(3, entries(9, 9, 1))));
    CHECK_FALSE(s.write(batch(4, {}, raft::HardState{3, "1"})));
    CHECK_FALSE(s.sync());
    CHECK_FALSE(s.save_snapshot(snapshot(5, 1, "x"), 5));
    CHECK(calls_while_failing == 1);
    CHECK(s.failure() == reason);
    failing = false;
    CHECK_FALSE(s.sync());
  }
  // The restart recovers what was durable (and possibly the batch whose fsync failed: its
  // pages may have reached the disk anyway). Never anything else.
  raft::Recovered r = reopen(options(dir));
  REQUIRE(r.entries.size() >= 5);
  CHECK(std::vector<raft::LogEntry>(r.entries.begin(), r.entries.begin() + 5) == entries(1, 5, 1));
  CHECK(r.entries.size() <= 8);
  for (std::size_t i = 0; i < r.entries.size(); ++i) CHECK(r.entries[i] == entry(i + 1, 1));
  CHECK(r.hard_state == raft::HardState{});
}

TEST_CASE("a failed fsync of the hard state fails the storage", "[storage][faults]") {
  TempDir dir;
  std::atomic<bool> failing{false};
  raft::StorageOptions o = options(dir);
  o.fsync_hook = [&](int fd) {
    if (failing) {
      errno = EIO;
      return -1;
    }
    return ::fsync(fd);
  };
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, {}, raft::HardState{5, "2"})));
    REQUIRE(s.sync());
    failing = true;
    REQUIRE(s.write(batch(2, {}, raft::HardState{6, "3"})));
    CHECK_FALSE(s.sync());
    CHECK_THAT(s.failure(), Contains("hardstate.tmp"));
  }
  raft::Recovered r = reopen(options(dir));
  CHECK(r.hard_state == raft::HardState{5, "2"});
  CHECK(r.notes.size() == 1);  // the temporary file, removed
}

TEST_CASE("a full disk fails the storage and a restart recovers what was durable",
          "[storage][faults]") {
  TempDir dir;
  FaultyWrites fs;
  raft::StorageOptions o = options(dir);
  o.file_system = std::shared_ptr<raft::FileSystem>(&fs, [](raft::FileSystem*) {});
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 5, 1))));
    REQUIRE(s.sync());
    fs.full = true;
    s.write(batch(2, entries(6, 8, 1)));  // buffered: may only fail at sync
    CHECK_FALSE(s.sync());
    CHECK(s.failed());
    CHECK_THAT(s.failure(), Contains("No space left on device") && Contains("free space"));
    CHECK(fs.refused == 1);
    CHECK_FALSE(s.write(batch(3, entries(9, 9, 1))));
    CHECK_FALSE(s.sync());
    CHECK(fs.refused == 1);
  }
  raft::Recovered r = reopen(options(dir));
  CHECK(r.entries == entries(1, 5, 1));
  CHECK(r.notes.empty());
}

TEST_CASE("a write cut short by a full disk fails the storage and the torn record is cut on restart",
          "[storage][faults]") {
  TempDir dir;
  FaultyWrites fs;
  raft::StorageOptions o = options(dir);
  o.file_system = std::shared_ptr<raft::FileSystem>(&fs, [](raft::FileSystem*) {});
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 5, 1))));
    REQUIRE(s.sync());
    fs.half = true;
    REQUIRE(s.write(batch(2, entries(6, 8, 1))));
    CHECK_FALSE(s.sync());
    CHECK_THAT(s.failure(), Contains("write to") && Contains("No space left on device"));
    CHECK_FALSE(s.write(batch(3, entries(9, 9, 1))));
  }
  raft::Recovered r = reopen(options(dir));
  REQUIRE(r.entries.size() >= 5);
  for (std::size_t i = 0; i < r.entries.size(); ++i) CHECK(r.entries[i] == entry(i + 1, 1));
  CHECK(r.entries.size() < 8);
  REQUIRE(r.notes.size() == 1);
  CHECK_THAT(r.notes[0], Contains("torn tail") && Contains("after the synced mark"));
}

TEST_CASE("a batch that does not fit the log fails the storage", "[storage]") {
  TempDir dir;
  raft::Storage s = raft::Storage::create(options(dir), identity());
  REQUIRE(s.write(batch(1, entries(1, 5, 2))));
  SECTION("a gap") {
    CHECK_FALSE(s.write(batch(2, entries(7, 7, 2))));
    CHECK_THAT(s.failure(), Contains("ERR PersistBatch seq 2") && Contains("does not fit"));
  }
  SECTION("a decreasing term") {
    CHECK_FALSE(s.write(batch(2, entries(6, 6, 1))));
    CHECK_THAT(s.failure(), Contains("below the term"));
  }
  SECTION("entries that are not contiguous") {
    CHECK_FALSE(s.write(batch(2, {entry(6, 2), entry(8, 2)})));
    CHECK_THAT(s.failure(), Contains("not contiguous"));
  }
  SECTION("an index covered by the snapshot") {
    REQUIRE(s.sync());
    REQUIRE(s.save_snapshot(snapshot(4, 2, "s"), 4));
    CHECK_FALSE(s.write(batch(2, entries(3, 3, 2))));
    CHECK_THAT(s.failure(), Contains("snapshot index 4"));
  }
  CHECK(s.failed());
  CHECK_FALSE(s.sync());
}

TEST_CASE("group commit makes every waiting batch durable with one fdatasync",
          "[storage][writer]") {
  constexpr int kThreads = 50;
  TempDir dir;
  std::mutex gate_mu;
  std::condition_variable gate;
  int queued = 0;
  bool blocked_once = false;
  std::atomic<bool> armed{false};
  raft::StorageOptions o = options(dir);
  // The first fsync of the run waits until every other batch is queued behind it.
  o.fsync_hook = [&](int fd) {
    if (armed) {
      std::unique_lock<std::mutex> lock(gate_mu);
      if (!blocked_once) {
        blocked_once = true;
        gate.wait_for(lock, std::chrono::seconds(60), [&] { return queued == kThreads; });
      }
    }
    return ::fsync(fd);
  };
  std::mutex order_mu;  // seq and index are handed out in submission order
  std::uint64_t next = 0;
  std::mutex done_mu;
  std::vector<std::uint64_t> done_order;
  std::vector<int> done_count(kThreads + 1, 0);
  bool all_ok = true;
  std::uint64_t fsyncs = 0;
  {
    raft::Storage storage = raft::Storage::create(o, identity());
    const std::uint64_t fsyncs_before = storage.fsync_count();
    {
      raft::StorageWriter writer(storage);
      armed = true;
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&] {
          {
            std::lock_guard<std::mutex> lock(order_mu);
            ++next;
            writer.submit(batch(next, {entry(next, 1)}), [&, seq = next](bool ok) {
              std::lock_guard<std::mutex> l(done_mu);
              done_order.push_back(seq);
              ++done_count[seq];
              all_ok = all_ok && ok;
            });
          }
          std::lock_guard<std::mutex> lock(gate_mu);
          ++queued;
          gate.notify_all();
        });
      }
      for (auto& th : threads) th.join();
      writer.flush();
      // The first group, then everything that queued behind its fsync (one group if the
      // writer woke only after every batch was queued).
      CHECK(writer.groups() <= 2);
    }
    fsyncs = storage.fsync_count() - fsyncs_before;
  }
  CHECK(all_ok);
  REQUIRE(done_order.size() == kThreads);
  CHECK(std::is_sorted(done_order.begin(), done_order.end()));
  for (int seq = 1; seq <= kThreads; ++seq) CHECK(done_count[seq] == 1);
  INFO("fsyncs: " << fsyncs);
  CHECK(fsyncs < static_cast<std::uint64_t>(kThreads) / 5);
  CHECK(reopen(options(dir)).entries == entries(1, kThreads, 1));
}

TEST_CASE("an fsync slower than an election timeout delays acknowledgements, never hurries them",
          "[storage][writer]") {
  // The writer's fdatasync is held back, for as long as the test likes, while more batches
  // arrive. No callback runs before the fdatasync that covers its batch has returned; a batch
  // that arrives meanwhile waits for the next one; a power cut at any of these moments keeps
  // every batch that was acknowledged.
  auto disk = std::make_shared<test_support::DiskModel>(7);
  raft::StorageOptions o;
  o.dir = "/node";
  o.file_system = disk;
  raft::Storage storage = raft::Storage::create(o, identity());
  REQUIRE(storage.write(batch(1, {entry(1, 1)})));
  REQUIRE(storage.sync());

  std::mutex mu;
  std::condition_variable cv;
  bool hold = true, release = false;
  int held = 0;  // fdatasyncs held back so far
  disk->before_sync = [&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!hold) return;
    ++held;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
    release = false;
  };
  std::vector<std::pair<std::uint64_t, bool>> acks;  // under mu
  const auto done = [&](std::uint64_t seq) {
    return [&, seq](bool ok) {
      std::lock_guard<std::mutex> lock(mu);
      acks.emplace_back(seq, ok);
    };
  };
  // What a power cut now would leave, losing everything unsynced or a random part of it. The
  // writer is parked in the hook, so the model is not changing under the copy.
  const auto after_power_cut = [&](bool lose_all) {
    auto copy = std::make_shared<test_support::DiskModel>(*disk);
    copy->before_sync = nullptr;
    copy->power_cut(lose_all);
    raft::StorageOptions co = o;
    co.file_system = copy;
    raft::Recovered r;
    raft::Storage::open(co, r);
    return r.entries;
  };

  raft::StorageWriter writer(storage);
  struct LetGo {  // however the test ends, the writer's fsync returns before the writer stops
    std::function<void()> run;
    ~LetGo() { run(); }
  } let_go{[&] {
    std::lock_guard<std::mutex> l(mu);
    hold = false;
    release = true;
    cv.notify_all();
  }};
  writer.submit(batch(2, {entry(2, 1)}), done(2));
  std::unique_lock<std::mutex> lock(mu);
  REQUIRE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return held == 1; }));
  lock.unlock();
  writer.submit(batch(3, {entry(3, 1)}), done(3));
  lock.lock();
  CHECK(acks.empty());
  CHECK(after_power_cut(true) == entries(1, 1, 1));
  const auto some = after_power_cut(false);
  CHECK((some == entries(1, 1, 1) || some == entries(1, 2, 1)));

  release = true;  // the fdatasync of batch 2 returns; batch 3's is held next
  cv.notify_all();
  REQUIRE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return held == 2; }));
  CHECK(acks == std::vector<std::pair<std::uint64_t, bool>>{{2, true}});
  CHECK(after_power_cut(true) == entries(1, 2, 1));

  hold = false;
  release = true;
  cv.notify_all();
  lock.unlock();
  writer.flush();
  lock.lock();
  CHECK(acks == std::vector<std::pair<std::uint64_t, bool>>{{2, true}, {3, true}});
  CHECK(after_power_cut(true) == entries(1, 3, 1));
}

TEST_CASE("the writer drains on stop and refuses later batches", "[storage][writer]") {
  TempDir dir;
  std::vector<std::pair<std::uint64_t, bool>> results;
  std::thread::id writer_thread;
  {
    raft::Storage storage = raft::Storage::create(options(dir), identity());
    raft::StorageWriter writer(storage);
    for (std::uint64_t i = 1; i <= 10; ++i)
      writer.submit(batch(i, {entry(i, 1)}), [&, i](bool ok) {
        results.emplace_back(i, ok);
        writer_thread = std::this_thread::get_id();
      });
    writer.stop();
    REQUIRE(results.size() == 10);
    for (std::uint64_t i = 0; i < 10; ++i) CHECK(results[i] == std::make_pair(i + 1, true));
    CHECK(writer_thread != std::this_thread::get_id());
    bool called = false, verdict = true;
    writer.submit(batch(11, {entry(11, 1)}), [&](bool ok) {
      called = true;
      verdict = ok;
    });
    CHECK(called);  // at once, on this thread
    CHECK_FALSE(verdict);
    writer.stop();  // idempotent
  }
  CHECK(reopen(options(dir)).entries == entries(1, 10, 1));
}

TEST_CASE("the writer reports a failed storage to every callback", "[storage][writer]") {
  TempDir dir;
  std::atomic<bool> failing{false};
  raft::StorageOptions o = options(dir);
  o.fsync_hook = [&](int fd) {
    if (failing) {
      errno = EIO;
      return -1;
    }
    return ::fsync(fd);
  };
  raft::Storage storage = raft::Storage::create(o, identity());
  std::vector<bool> verdicts;
  raft::StorageWriter writer(storage);
  writer.submit(batch(1, {entry(1, 1)}), [&](bool ok) { verdicts.push_back(ok); });
  writer.flush();
  failing = true;
  writer.submit(batch(2, {entry(2, 1)}), [&](bool ok) { verdicts.push_back(ok); });
  writer.flush();
  failing = false;
  writer.submit(batch(3, {entry(3, 1)}), [&](bool ok) { verdicts.push_back(ok); });
  writer.submit_snapshot(std::make_shared<raft::Snapshot>(snapshot(1, 1, "s")), 1,
                         [&](bool ok) { verdicts.push_back(ok); });
  writer.stop();
  CHECK(verdicts == std::vector<bool>{true, false, false, false});
  CHECK(storage.failed());
}

TEST_CASE("the writer takes batches in seq order only", "[storage][writer]") {
  TempDir dir;
  raft::Storage storage = raft::Storage::create(options(dir), identity());
  raft::StorageWriter writer(storage);
  writer.submit(batch(5, {entry(1, 1)}), nullptr);
  CHECK_THROWS_AS(writer.submit(batch(5, {entry(2, 1)}), nullptr), std::invalid_argument);
  CHECK_THROWS_AS(writer.submit(batch(4, {entry(2, 1)}), nullptr), std::invalid_argument);
  writer.submit(batch(6, {entry(2, 1)}), nullptr);
  writer.flush();
  CHECK(storage.last_index() == 2);
}

TEST_CASE("a snapshot submitted to the writer runs in order with the batches",
          "[storage][writer]") {
  TempDir dir;
  {
    raft::Storage storage = raft::Storage::create(options(dir, 256), identity());
    raft::StorageWriter writer(storage);
    writer.submit(batch(1, entries(1, 30, 1)), nullptr);
    bool saved = false;
    writer.submit_snapshot(std::make_shared<raft::Snapshot>(snapshot(25, 1, "at 25")), 20,
                           [&](bool ok) { saved = ok; });
    writer.submit(batch(2, entries(31, 32, 2)), nullptr);
    writer.stop();
    CHECK(saved);
  }
  raft::Recovered r = reopen(options(dir, 256));
  CHECK(r.snapshot->data == "at 25");
  auto want = entries(26, 30, 1);
  for (auto& e : entries(31, 32, 2)) want.push_back(e);
  CHECK(r.entries == want);
}

TEST_CASE("a snapshot file on disk is read by Python's ast.literal_eval as it is", "[storage]") {
  TempDir dir;
  raft::Storage s = raft::Storage::create(options(dir, 4096), identity());
  REQUIRE(s.write(batch(1, entries(1, 7, 20))));  // a snapshot of the node's own log
  REQUIRE(s.sync());
  raft::Store store;
  store.put("k", raft::Store::Kind::String).str = std::string("a\0b'\"\\\n\xff", 8);
  store.put("h", raft::Store::Kind::Hash).hash["f"] = "v";
  raft::Snapshot snap;
  snap.meta.index = 7;
  snap.meta.term = 20;
  snap.meta.config.upsert(raft::Member{"1", "127.0.0.1:5010", "ab", true});
  store.write_snapshot(snap.data, snap.meta);
  REQUIRE(s.save_snapshot(snap, 0));
  const auto snaps = snapshots(dir);
  REQUIRE(snaps.size() == 1);
  // Python sees the same metadata and bytes: it prints them, we compare.
  {
    std::ofstream py(dir.file("check.py"));
    py << "import ast, sys\n"
          "d = ast.literal_eval(open(sys.argv[1], encoding='utf-8', errors='surrogateescape').read())\n"
          "print(d['_META_']['index'], d['_META_']['term'], d['data']['k'].hex(), d['data']['h'])\n";
  }
  const std::string cmd = "/usr/bin/python3 " + dir.file("check.py") + " " + dir.file(snaps[0]) + " > " + dir.file("out.txt");
  REQUIRE(std::system(cmd.c_str()) == 0);
  CHECK(read_file(dir.file("out.txt")) == "7 20 61006227225c0aff {'f': 'v'}\n");
}

// ---- files: permissions, ownership, symbolic links ----

namespace {

/// Permission bits of a path itself (not of what a symbolic link points to).
unsigned permissions_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777u;
}

bool is_symlink(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

/// Sets the process's umask for one scope.
struct ScopedUmask {
  mode_t old;
  explicit ScopedUmask(mode_t mask) : old(::umask(mask)) {}
  ~ScopedUmask() { ::umask(old); }
};

}  // namespace

TEST_CASE("a planted symbolic link at a temporary file's name is never followed",
          "[storage][security]") {
  // Whoever can write into the data directory plants NAME.tmp -> a file of the node's user;
  // the write that uses NAME.tmp next must neither change that file nor leave a link behind.
  TempDir dir, elsewhere;
  const std::string target = elsewhere / "precious";
  std::ofstream(target) << "precious";
  raft::StorageOptions o = options(dir, 600);
  {
    raft::Storage created = raft::Storage::create(o, identity());
    REQUIRE(created.write(batch(1, entries(1, 5, 1))));
    REQUIRE(created.sync());
  }
  raft::Recovered r;
  std::optional<raft::Storage> opened(raft::Storage::open(o, r));  // it removes leftovers
  raft::Storage& s = *opened;
  const auto plant = [&](const std::string& name) {
    fs::create_symlink(target, dir / (name + ".tmp"));
    REQUIRE(is_symlink(dir / (name + ".tmp")));
  };
  std::string final_name;
  SECTION("hardstate.tmp") {
    final_name = "hardstate";
    plant(final_name);
    REQUIRE(s.write(batch(2, {}, raft::HardState{7, "2"})));
    REQUIRE(s.sync());
  }
  SECTION("identity.tmp") {
    final_name = "identity";
    plant(final_name);
    REQUIRE(s.save_identity(identity()));
  }
  SECTION("the snapshot's temporary file") {
    final_name = "snap-00000000000000000004-00000000000000000001.snap";
    plant(final_name);
    REQUIRE(s.save_snapshot(snapshot(4, 1, "state at 4"), 4));
  }
  SECTION("a new segment's temporary file") {
    final_name = segment_name(6);
    plant(final_name);
    REQUIRE(s.write(batch(2, {entry(6, 1, std::string(700, 'x'))})));  // too big for segment 1
    REQUIRE(s.sync());
  }
  CHECK(read_file(target) == "precious");
  CHECK_FALSE(is_symlink(dir / final_name));
  CHECK_FALSE(fs::exists(fs::symlink_status(dir / (final_name + ".tmp"))));
  CHECK_FALSE(s.failed());
  opened.reset();
  r = reopen(o);
  CHECK(r.notes.empty());
  CHECK(r.entries.size() + (r.snapshot ? r.snapshot->meta.index : 0) >= 5);
}

TEST_CASE("a planted symbolic link at LOCK is refused, never followed", "[storage][security]") {
  // O_CREAT through a dangling link would create any file the node's user may create.
  TempDir dir, elsewhere;
  { raft::Storage::create(options(dir), identity()); }
  fs::remove(dir / "LOCK");
  fs::create_symlink(elsewhere / "created", dir / "LOCK");
  CHECK_THAT(open_error(options(dir)), Contains("LOCK"));
  CHECK_FALSE(fs::exists(elsewhere / "created"));
}

TEST_CASE("a new data directory is 0700 and every file in it 0600, whatever the umask",
          "[storage][security]") {
  TempDir dir;
  const ScopedUmask open_umask(0);
  raft::StorageOptions o = options(dir, 600);
  o.dir = dir / "parent/node";
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 5, 1), raft::HardState{3, "1"})));
    REQUIRE(s.write(batch(2, {entry(6, 1, std::string(700, 'x'))})));  // a second segment
    REQUIRE(s.sync());
    REQUIRE(s.save_snapshot(snapshot(4, 1, "state at 4"), 4));
  }
  CHECK(permissions_of(o.dir) == 0700);
  CHECK(permissions_of(dir / "parent") == 0700);
  std::vector<std::string> names;
  for (const auto& f : fs::directory_iterator(o.dir)) names.push_back(f.path().filename());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"LOCK", "hardstate", "identity", segment_name(1),
                                          segment_name(6),
                                          "snap-00000000000000000004-00000000000000000001.snap"});
  for (const std::string& name : names) {
    INFO(name);
    CHECK(permissions_of(o.dir + "/" + name) == 0600);
  }
}

TEST_CASE("an existing data directory more open than 0700 is tightened, with one warning",
          "[storage][security]") {
  TempDir dir;
  std::vector<std::string> warnings;
  raft::StorageOptions o = options(dir);
  o.warn = [&](const std::string& line) { warnings.push_back(line); };
  std::string was;
  SECTION("by create") {
    fs::permissions(dir.path(), fs::perms(0755));
    was = "0755";
    raft::Storage::create(o, identity());
  }
  SECTION("by open") {
    { raft::Storage::create(o, identity()); }
    CHECK(warnings.empty());  // mkdtemp made it 0700
    fs::permissions(dir.path(), fs::perms(0750));
    was = "0750";
    reopen(o);
  }
  CHECK(permissions_of(dir.path()) == 0700);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Contains(dir.path()) && Contains(was) && Contains("tightened to 0700"));
  reopen(o);
  CHECK(warnings.size() == 1);
}

TEST_CASE("the model disk keeps modes and owners as POSIX does", "[storage][security]") {
  // The same checks on tests/disk_model.hpp, which the crash simulation runs storage on.
  auto disk = std::make_shared<test_support::DiskModel>(1);
  raft::StorageOptions o;
  o.dir = "/data/node";
  o.file_system = disk;
  std::vector<std::string> warnings;
  o.warn = [&](const std::string& line) { warnings.push_back(line); };
  const std::uint32_t me = static_cast<std::uint32_t>(::geteuid());
  {
    raft::Storage s = raft::Storage::create(o, identity());
    REQUIRE(s.write(batch(1, entries(1, 3, 1), raft::HardState{2, "1"})));
    REQUIRE(s.sync());
  }
  CHECK(disk->status_of("/data").permissions == 0700);
  CHECK(disk->status_of("/data/node").permissions == 0700);
  CHECK(disk->status_of("/data/node/hardstate").permissions == 0600);
  CHECK(disk->status_of("/data/node/" + segment_name(1)).permissions == 0600);
  CHECK(warnings.empty());

  disk->set_status("/data/node", {me, 0777});
  reopen(o);
  CHECK(disk->status_of("/data/node").permissions == 0700);
  CHECK(warnings.size() == 1);

  disk->set_status("/data/node", {me + 1, 0700});
  CHECK_THAT(open_error(o), Contains("owned by uid " + std::to_string(me + 1)));
}

TEST_CASE("a data directory owned by another user is refused", "[storage][security]") {
  if (::geteuid() != 0) {
    WARN("not root: cannot chown a directory to another user; skipped");
    return;
  }
  TempDir dir;
  const uid_t other = 65534;  // nobody
  SECTION("by create") {
    REQUIRE(::chown(dir.path().c_str(), other, other) == 0);
    CHECK_THROWS_WITH(raft::Storage::create(options(dir), identity()),
                      Contains("owned by") && Contains("65534") && Contains(dir.path()));
    CHECK_FALSE(fs::exists(dir / "identity"));
  }
  SECTION("by open") {
    { raft::Storage::create(options(dir), identity()); }
    REQUIRE(::chown(dir.path().c_str(), other, other) == 0);
    CHECK_THAT(open_error(options(dir)), Contains("owned by") && Contains("65534"));
  }
}

namespace {

/// A batch of snapshot chunks: `data` cut into pieces of `piece` bytes, from `offset`.
raft::PersistBatch chunks(std::uint64_t seq, std::uint64_t index, std::uint64_t term, const std::string& data,
                          std::size_t piece, std::uint64_t offset = 0) {
  raft::PersistBatch b;
  b.seq = seq;
  for (std::size_t at = 0; at < data.size(); at += piece)
    b.snapshot_chunks.push_back(raft::SnapshotChunk{index, term, offset + at, data.substr(at, piece)});
  return b;
}

raft::ReceivedSnapshot received(std::uint64_t index, std::uint64_t term, const std::string& data) {
  raft::ReceivedSnapshot r;
  r.meta.index = index;
  r.meta.term = term;
  r.size = data.size();
  r.crc32c = raft::detail::crc32c(data.data(), data.size());
  return r;
}

}  // namespace

TEST_CASE("a received snapshot goes to a file as it arrives, is read back whole, then renamed into place",
          "[storage][snapshot-stream]") {
  TempDir dir;
  raft::Storage s = raft::Storage::create(options(dir), identity());
  REQUIRE(s.write(batch(1, entries(1, 5, 10))));
  REQUIRE(s.sync());
  std::string data;
  for (int i = 0; i < 2000; ++i) data += "'key" + std::to_string(i) + "': b'value',\n";
  const std::string incoming = dir.file("incoming.snap.tmp");
  // The first half arrives: it is in the file behind a header of fixed length, and in no
  // snapshot file yet.
  const std::size_t half = data.size() / 2;
  REQUIRE(s.write(chunks(2, 40, 20, data.substr(0, half), 4096)));
  REQUIRE(s.sync());
  REQUIRE(fs::exists(incoming));
  CHECK(fs::file_size(incoming) == raft::detail::kReceivedSnapshotHeaderBytes + half);
  CHECK((fs::status(incoming).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));
  CHECK(snapshots(dir).empty());
  REQUIRE(s.write(chunks(3, 40, 20, data.substr(half), 4096, half)));
  // Read back: a CRC-32C other than the one computed over what arrived is refused, and
  // nothing changes.
  raft::Snapshot out;
  std::string problem;
  raft::ReceivedSnapshot wrong = received(40, 20, data);
  wrong.crc32c ^= 1;
  REQUIRE(s.load_received_snapshot(wrong, out, problem));
  CHECK_THAT(problem, Catch::Matchers::Contains("checksum mismatch"));
  CHECK(out.data.empty());
  wrong = received(40, 20, data + "x");
  REQUIRE(s.load_received_snapshot(wrong, out, problem));
  CHECK_THAT(problem, Catch::Matchers::Contains("arrived"));
  CHECK(s.last_index() == 5);
  CHECK(snapshots(dir).empty());
  // Right: read back whole, and installed by renaming the file (not written again).
  REQUIRE(s.load_received_snapshot(received(40, 20, data), out, problem));
  CHECK(problem.empty());
  CHECK(out.data == data);
  CHECK(out.meta.index == 40);
  struct stat before {};
  REQUIRE(::stat(incoming.c_str(), &before) == 0);
  raft::PersistBatch install;
  install.seq = 4;
  install.snapshot = std::make_shared<raft::Snapshot>(out);
  const std::uint64_t fsyncs = s.fsync_count();
  REQUIRE(s.write(install));
  REQUIRE(s.sync());
  CHECK_FALSE(fs::exists(incoming));
  const auto snaps = snapshots(dir);
  REQUIRE(snaps.size() == 1);
  struct stat after {};
  REQUIRE(::stat(dir.file(snaps[0]).c_str(), &after) == 0);
  CHECK(after.st_ino == before.st_ino);  // the same file, renamed
  CHECK(s.fsync_count() > fsyncs);
  CHECK(s.snapshot_index() == 40);
  CHECK(s.last_index() == 40);
  { raft::Storage closing = std::move(s); }
  raft::Recovered r = reopen(options(dir));
  REQUIRE(r.snapshot);
  CHECK(r.snapshot->meta.index == 40);
  CHECK(r.snapshot->meta.term == 20);
  CHECK(r.snapshot->data == data);
  CHECK(r.entries.empty());
}

TEST_CASE("a received snapshot whose chunks did not all reach the file is refused, and the log kept",
          "[storage][snapshot-stream]") {
  TempDir dir;
  {
    raft::Storage s = raft::Storage::create(options(dir), identity());
    REQUIRE(s.write(batch(1, entries(1, 5, 10))));
    const std::string data(10000, 'd');
    REQUIRE(s.write(chunks(2, 40, 20, data.substr(0, 4000), 1000)));
    REQUIRE(s.write(chunks(3, 40, 20, data.substr(5000), 1000, 5000)));  // a gap
    REQUIRE(s.sync());
    raft::Snapshot out;
    std::string problem;
    REQUIRE(s.load_received_snapshot(received(40, 20, data), out, problem));
    CHECK_THAT(problem, Catch::Matchers::Contains("did not all reach"));
    // One of another snapshot: not this file either.
    REQUIRE(s.load_received_snapshot(received(41, 20, data), out, problem));
    CHECK_FALSE(problem.empty());
    CHECK(s.last_index() == 5);
    CHECK(!s.failed());
  }
  // A stop mid-transfer leaves the file; open() removes it and says so.
  REQUIRE(fs::exists(dir.file("incoming.snap.tmp")));
  raft::Recovered r = reopen(options(dir));
  CHECK_FALSE(fs::exists(dir.file("incoming.snap.tmp")));
  CHECK_FALSE(r.snapshot);
  CHECK(r.entries.size() == 5);
  bool told = false;
  for (const auto& note : r.notes) told = told || note.find("snapshot transfer interrupted") != std::string::npos;
  CHECK(told);
}
