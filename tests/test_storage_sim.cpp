// The real Storage on a model of the page cache and the disk (tests/disk_model.hpp): seeded
// random workloads of appends, conflicting suffixes, repeated entries, hard states,
// snapshots the node takes, snapshots installed from a leader, compactions and identity
// changes, with crashes at random points (inside multi-step operations and inside open()
// too), power cuts that lose, tear, garble or reorder what was not synced, process crashes
// that keep the page cache, failing fsyncs and a full disk. After every restart:
//   - open() does not throw: a crash alone cannot damage a data directory;
//   - nothing acknowledged is missing: the hard state, the snapshot and every entry that a
//     successful sync(), save_snapshot(), save_identity() or open() returned are there (an
//     entry may be covered by a newer snapshot, or replaced by a batch written later);
//   - nothing is invented: the log is a prefix of a state the writes went through;
//   - damage to synced data (a flipped bit, a lost tail) makes open() refuse the directory.
//
//   RAFT_STORAGE_SIM_SEEDS=N   how many seeds (default 500)
//   RAFT_STORAGE_SIM_SEED=S    run only seed S, printing every step
//   RAFT_STORAGE_SIM_FIRST=F   first seed (default 1)
#include <catch2/catch.hpp>

#include "disk_model.hpp"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

namespace {

using test_support::DiskModel;
using test_support::Rng;

constexpr std::uint64_t kNoCut = UINT64_MAX;

std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

struct Violation : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const raft::Identity& sim_identity() {
  static const raft::Identity id = [] {
    raft::Identity i;
    i.node_id = "n1";
    i.server_id = "0123456789abcdef0123456789abcdef";
    i.cluster_id = "c1";
    return i;
  }();
  return id;
}

/// A model disk holding "/data", durably.
std::shared_ptr<DiskModel> model_disk(std::uint64_t seed = 1) {
  auto disk = std::make_shared<DiskModel>(seed);
  int root = -1;
  disk->make_directory("/data");
  disk->open("/", raft::FileSystem::Mode::Directory, root);
  disk->sync_directory(root);
  disk->close(root);
  return disk;
}

raft::StorageOptions model_options(const std::shared_ptr<DiskModel>& disk,
                                   std::size_t segment_bytes = 200) {
  raft::StorageOptions o;
  o.dir = "/data/a/node";
  o.segment_bytes = segment_bytes;
  o.file_system = disk;
  return o;
}

raft::LogEntry sim_entry(std::uint64_t index, std::uint64_t term) {
  raft::LogEntry e;
  e.index = index;
  e.term = term;
  e.type = raft::EntryType::Command;
  e.timestamp_ms = static_cast<std::int64_t>(index);
  e.payload = "set k" + std::to_string(index) + " " + std::string(30, 'v');
  return e;
}

std::vector<raft::LogEntry> sim_entries(std::uint64_t first, std::uint64_t last,
                                        std::uint64_t term) {
  std::vector<raft::LogEntry> out;
  for (std::uint64_t i = first; i <= last; ++i) out.push_back(sim_entry(i, term));
  return out;
}

raft::PersistBatch sim_batch(std::uint64_t seq, std::vector<raft::LogEntry> es,
                             std::optional<raft::HardState> hs = std::nullopt) {
  raft::PersistBatch b;
  b.seq = seq;
  b.entries = std::move(es);
  b.hard_state = std::move(hs);
  return b;
}

std::shared_ptr<raft::Snapshot> sim_snapshot(std::uint64_t index, std::uint64_t term,
                                             std::string data) {
  auto s = std::make_shared<raft::Snapshot>();
  s->meta.index = index;
  s->meta.term = term;
  s->data = std::move(data);
  return s;
}

/// The log as the writes define it: a snapshot, then the entries after it.
struct Log {
  std::uint64_t snap_index = 0, snap_term = 0;
  std::vector<raft::LogEntry> entries;  // from snap_index + 1

  std::uint64_t last() const { return entries.empty() ? snap_index : entries.back().index; }
  std::uint64_t term_at(std::uint64_t index) const {
    if (index == snap_index) return snap_term;
    if (index > snap_index && index <= last()) return entries[index - snap_index - 1].term;
    return 0;
  }
  bool holds(std::uint64_t index, std::uint64_t term) const {
    return index > 0 && index <= last() && term_at(index) == term;
  }
  /// Keeps the entries before `index`.
  void cut(std::uint64_t index) { entries.resize(index - snap_index - 1); }
  void take_snapshot(std::uint64_t index, std::uint64_t term) {
    entries.erase(entries.begin(), entries.begin() + static_cast<long>(index - snap_index));
    snap_index = index;
    snap_term = term;
  }
  std::string describe() const {
    std::ostringstream out;
    out << "snapshot " << snap_index << "/" << snap_term << ", entries";
    if (entries.empty()) out << " none";
    std::uint64_t run_term = 0;
    for (const auto& e : entries)
      if (e.term != run_term) {
        out << " " << e.index << ":t" << e.term;
        run_term = e.term;
      }
    out << " .. " << last();
    return out.str();
  }
};

/// What Storage::write does to the log (PersistBatch's contract); returns the lowest index
/// whose entry the batch removed (kNoCut: none). `steps` gets the state between the snapshot
/// and the entries.
std::uint64_t apply(Log& log, const raft::PersistBatch& b, std::vector<Log>* steps = nullptr) {
  std::uint64_t removed = kNoCut;
  if (b.snapshot) {
    const raft::SnapshotMeta& m = b.snapshot->meta;
    if (log.holds(m.index, m.term)) {
      if (m.index > log.snap_index) log.take_snapshot(m.index, m.term);
    } else {
      if (log.last() > m.index) removed = m.index + 1;
      log.entries.clear();
      log.snap_index = m.index;
      log.snap_term = m.term;
    }
    if (steps) steps->push_back(log);
  }
  std::size_t i = 0;
  while (i < b.entries.size() && log.holds(b.entries[i].index, b.entries[i].term)) ++i;
  if (i < b.entries.size() && b.entries[i].index <= log.last()) {
    removed = std::min(removed, b.entries[i].index);
    log.cut(b.entries[i].index);
  }
  for (; i < b.entries.size(); ++i) log.entries.push_back(b.entries[i]);
  return removed;
}

class StorageSim {
 public:
  StorageSim(std::uint64_t seed, bool trace)
      : seed_(seed),
        trace_(trace),
        rng_(seed ^ 0x5707a9e5eedull),
        disk_(model_disk(seed)),
        identity_(sim_identity()) {
    options_.dir = rng_.chance(0.2) ? "/data/a/b/node" : "/data/node";
    options_.segment_bytes = rng_.range(120, 3000);
    options_.file_system = disk_;
    identities_ = {identity_};
    if (trace_) disk_->transcript = &changes_;
  }

  /// Runs the workload; throws Violation.
  void run(int steps) {
    note("segment_bytes " + std::to_string(options_.segment_bytes) + ", dir " + options_.dir);
    start();
    for (int step = 0; step < steps; ++step) {
      if (!storage_) start();
      maybe_arm_faults();
      const std::uint64_t dice = rng_.below(100);
      if (dice < 35) append();
      else if (dice < 45) conflict();
      else if (dice < 51) repeat();
      else if (dice < 56) hard_state_only();
      else if (dice < 76) sync();
      else if (dice < 82) save_snapshot();
      else if (dice < 88) install_snapshot();
      else if (dice < 90) save_identity();
      else if (dice < 95) restart(rng_.chance(0.5) ? Stop::Kill : Stop::PowerCut);
      else crash_inside_next_call();
    }
    restart(Stop::PowerCut);
  }

  std::uint64_t restarts() const { return restarts_; }
  std::uint64_t acked_syncs() const { return acked_syncs_; }
  std::uint64_t probes() const { return probes_; }

 private:
  enum class Stop { Kill, PowerCut };

  // A crash within the next few changes, during a call that makes several, or the sync after.
  void crash_inside_next_call() {
    disk_->crash_before(disk_->changes() + rng_.range(1, 8));
    switch (rng_.below(4)) {
      case 0: conflict(); break;
      case 1: save_snapshot(); break;
      case 2: install_snapshot(); break;
      default: append();
    }
    sync();
  }

  // ---- the workload -----------------------------------------------------------------------
  std::uint64_t leader_term() {
    if (rng_.chance(0.1)) ++max_term_;
    return std::max(max_term_, log_.term_at(log_.last()));
  }

  raft::LogEntry make_entry(std::uint64_t index, std::uint64_t term) {
    raft::LogEntry e;
    e.index = index;
    e.term = term;
    e.type = rng_.chance(0.1) ? raft::EntryType::Noop : raft::EntryType::Command;
    e.timestamp_ms = static_cast<std::int64_t>(++counter_);
    const std::size_t size = rng_.chance(0.05) ? rng_.range(500, 4000) : rng_.below(120);
    for (std::size_t i = 0; i < size; ++i) e.payload.push_back(static_cast<char>(rng_.next()));
    max_term_ = std::max(max_term_, term);
    return e;
  }

  std::vector<raft::LogEntry> make_entries(std::uint64_t first, std::uint64_t count,
                                           std::uint64_t term) {
    std::vector<raft::LogEntry> out;
    for (std::uint64_t i = 0; i < count; ++i) out.push_back(make_entry(first + i, term));
    return out;
  }

  std::optional<raft::HardState> maybe_hard_state(double p) {
    if (!rng_.chance(p)) return std::nullopt;
    raft::HardState hs = hard_state_;
    if (rng_.chance(0.7)) {
      hs.term = std::max(hs.term, max_term_) + rng_.below(2);
      hs.vote = rng_.chance(0.3) ? "" : "n" + std::to_string(rng_.range(1, 3));
    }
    return hs;
  }

  void append() {
    const std::uint64_t term = leader_term();
    write(make_batch(make_entries(log_.last() + 1, rng_.range(1, 6), term), maybe_hard_state(0.2)),
          "append");
  }

  void conflict() {
    if (log_.last() == log_.snap_index) return append();
    const std::uint64_t at = rng_.range(log_.snap_index + 1, log_.last());
    write(make_batch(make_entries(at, rng_.range(1, 4), ++max_term_), maybe_hard_state(0.5)),
          "conflict at " + std::to_string(at));
  }

  // Entries the log holds, sent again (as a leader retrying does), maybe followed by new ones
  // or by a conflicting suffix.
  void repeat() {
    if (log_.last() == log_.snap_index) return append();
    const std::uint64_t from = rng_.range(log_.snap_index + 1, log_.last());
    const std::uint64_t to = rng_.range(from, log_.last());
    std::vector<raft::LogEntry> es(
        log_.entries.begin() + static_cast<long>(from - log_.snap_index - 1),
        log_.entries.begin() + static_cast<long>(to - log_.snap_index));
    if (rng_.chance(0.5)) {
      const bool conflicting = to < log_.last() && rng_.chance(0.5);
      for (auto& e :
           make_entries(to + 1, rng_.range(1, 3), conflicting ? ++max_term_ : leader_term()))
        es.push_back(e);
    }
    write(make_batch(std::move(es), std::nullopt), "repeat from " + std::to_string(from));
  }

  void hard_state_only() {
    raft::HardState hs = hard_state_;
    hs.term = std::max(hs.term, max_term_) + 1;
    hs.vote = "n" + std::to_string(rng_.range(1, 3));
    write(make_batch({}, hs), "hard state");
  }

  raft::PersistBatch make_batch(std::vector<raft::LogEntry> es, std::optional<raft::HardState> hs) {
    raft::PersistBatch b;
    b.seq = ++seq_;
    b.entries = std::move(es);
    b.hard_state = std::move(hs);
    return b;
  }

  std::shared_ptr<raft::Snapshot> make_snapshot(std::uint64_t index, std::uint64_t term) {
    auto s = std::make_shared<raft::Snapshot>();
    s->meta.index = index;
    s->meta.term = term;
    s->data = "{'at': " + std::to_string(index) + ", 'n': " + std::to_string(++counter_) + "}" +
              std::string(rng_.chance(0.1) ? rng_.range(100, 3000) : 0, 'x');
    snapshots_written_[{index, term}].insert(s->data);
    return s;
  }

  // A snapshot from a leader: one the log holds (the log after it is kept), or one past the
  // end of the log or with another term at its index (the log is replaced).
  void install_snapshot() {
    raft::PersistBatch b = make_batch({}, maybe_hard_state(0.3));
    std::string what;
    if (log_.last() > log_.snap_index && rng_.chance(0.5)) {
      const std::uint64_t at = rng_.range(log_.snap_index + 1, log_.last());
      b.snapshot = make_snapshot(at, log_.term_at(at));
      what = "install (held) at " + std::to_string(at);
    } else if (log_.last() > log_.snap_index && rng_.chance(0.5)) {
      const std::uint64_t at = rng_.range(log_.snap_index + 1, log_.last());
      b.snapshot = make_snapshot(at, ++max_term_);
      what = "install (other term) at " + std::to_string(at);
    } else {
      const std::uint64_t at = log_.last() + rng_.range(1, 30);
      b.snapshot = make_snapshot(at, std::max(max_term_, log_.term_at(log_.last())));
      what = "install (ahead) at " + std::to_string(at);
    }
    // Half of them arrive in chunks first, in the incoming file, and are read back from it
    // (then installed by renaming that file).
    if (rng_.chance(0.5) && !receive_in_chunks(b.snapshot)) return;
    Log after = log_;
    apply(after, b);
    if (rng_.chance(0.6)) {
      // The entries after it: some the log may hold already, then new ones, or a conflict.
      const std::uint64_t from = b.snapshot->meta.index + 1;
      const std::uint64_t held_to = std::min(after.last(), from + rng_.below(4));
      for (std::uint64_t i = from; i <= held_to; ++i)
        b.entries.push_back(after.entries[i - after.snap_index - 1]);
      const std::uint64_t next = from + b.entries.size();
      const std::uint64_t term = next > after.last() ? leader_term() : ++max_term_;
      for (auto& e : make_entries(next, rng_.range(0, 3), term)) b.entries.push_back(e);
    }
    write(std::move(b), what);
  }

  // The snapshot's data in chunk batches (a transfer abandoned and started again now and then),
  // then read back: it must be exactly what was written. False when the storage failed.
  bool receive_in_chunks(std::shared_ptr<const raft::Snapshot>& snap) {
    const std::string& data = snap->data;
    const std::uint64_t index = snap->meta.index, term = snap->meta.term;
    for (int attempt = rng_.chance(0.2) ? 0 : 1; attempt < 2; ++attempt) {
      const std::size_t upto = attempt == 0 ? rng_.below(data.size() + 1) : data.size();
      std::size_t at = 0;
      do {
        raft::PersistBatch b = make_batch({}, std::nullopt);
        for (int k = static_cast<int>(rng_.range(1, 3)); k > 0 && (at < upto || (at == 0 && b.snapshot_chunks.empty())); --k) {
          const std::size_t piece = std::min<std::size_t>(upto - at, rng_.range(1, 300));
          b.snapshot_chunks.push_back(raft::SnapshotChunk{index, term, at, data.substr(at, piece)});
          at += piece;
        }
        note("snapshot chunks of " + std::to_string(index) + " up to " + std::to_string(at));
        if (!storage_->write(b)) {
          failed("write of snapshot chunks");
          return false;
        }
      } while (at < upto);
    }
    raft::ReceivedSnapshot r;
    r.meta = snap->meta;
    r.size = data.size();
    r.crc32c = raft::detail::crc32c(data.data(), data.size());
    auto loaded = std::make_shared<raft::Snapshot>();
    std::string problem;
    if (!storage_->load_received_snapshot(r, *loaded, problem)) {
      failed("load_received_snapshot");
      return false;
    }
    note("read back snapshot " + std::to_string(index) + (problem.empty() ? "" : ": " + problem));
    if (!problem.empty() || loaded->data != data || !(loaded->meta == snap->meta))
      throw Violation("a received snapshot read back is not what was written: " + problem);
    snap = loaded;
    return true;
  }

  // ---- the calls, and what each acknowledges -------------------------------------------------
  void write(raft::PersistBatch b, const std::string& what) {
    Log after = log_;
    const std::uint64_t removed = apply(after, b, &states_);
    note(what + (b.hard_state ? " +hs " + std::to_string(b.hard_state->term) : "") + " -> " +
         after.describe());
    // Any state between the call and its end may be what a crash leaves.
    states_.push_back(after);
    removed_ = std::min(removed_, removed);
    if (b.hard_state) hard_states_.push_back(*b.hard_state);
    const bool ok = storage_->write(b);
    log_ = after;
    if (b.hard_state) hard_state_ = *b.hard_state;
    if (!ok) failed("write");
  }

  void sync() {
    const bool ok = storage_->sync();
    note(std::string("sync ") + (ok ? "ok" : "FAILED"));
    if (!ok) return failed("sync");
    ++acked_syncs_;
    acknowledge();
  }

  void save_snapshot() {
    if (log_.last() == log_.snap_index) return append();
    const std::uint64_t at = rng_.range(log_.snap_index + 1, log_.last());
    const std::uint64_t compact_to = rng_.range(log_.snap_index, at);
    auto snap = make_snapshot(at, log_.term_at(at));
    Log after = log_;
    after.take_snapshot(at, snap->meta.term);
    note("save_snapshot at " + std::to_string(at) + " compact to " + std::to_string(compact_to));
    states_.push_back(after);
    const bool ok = storage_->save_snapshot(*snap, compact_to);
    log_ = after;
    if (!ok) return failed("save_snapshot");
    acked_snapshot_ = std::max(acked_snapshot_, at);
  }

  void save_identity() {
    raft::Identity id = identity_;
    id.cluster_id = "c" + std::to_string(++counter_);
    identities_.push_back(id);
    note("save_identity " + id.cluster_id);
    const bool ok = storage_->save_identity(id);
    identity_ = id;
    if (!ok) return failed("save_identity");
    identities_ = {id};
  }

  /// Everything written so far is durable.
  void acknowledge() {
    acked_ = log_;
    states_ = {log_};
    removed_ = kNoCut;
    hard_states_ = {hard_state_};
    identities_ = {identity_};
    acked_snapshot_ = std::max(acked_snapshot_, log_.snap_index);
  }

  // ---- faults, crashes, restarts -------------------------------------------------------------
  void maybe_arm_faults() {
    if (armed_) return;
    const std::uint64_t dice = rng_.below(1000);
    if (dice < 40) {
      disk_->crash_before(disk_->changes() + rng_.range(1, 40));
      armed_ = true;
    } else if (dice < 50) {
      disk_->fail_sync(disk_->changes() + rng_.range(1, 20));
      armed_ = true;
    } else if (dice < 55) {
      disk_->set_capacity(disk_footprint() + rng_.range(0, 4000));
      armed_ = true;
    }
  }

  std::uint64_t disk_footprint() {
    std::vector<std::string> names;
    disk_->list(options_.dir, names);
    std::uint64_t bytes = 0;
    for (const auto& n : names) bytes += disk_->content(options_.dir + "/" + n).size();
    return bytes * 2;  // removed files and the rest of the model count too: roughly
  }

  /// A call returned false: the storage failed. Only a fault we caused may do that.
  void failed(const std::string& call) {
    if (disk_->crashed()) {
      note(call + ": the machine stopped");
      return restart(rng_.chance(0.5) ? Stop::Kill : Stop::PowerCut);
    }
    if (disk_->faults() == faults_seen_)
      throw Violation(call + " failed with no fault injected: " + storage_->failure());
    faults_seen_ = disk_->faults();
    note(call + " failed: " + storage_->failure().substr(0, 80));
    // After a failed fsync the page cache may hold pages the disk never will; only a reboot
    // clears that (see the report of this test), so a failed disk is followed by a power cut.
    restart(Stop::PowerCut);
  }

  void restart(Stop how) {
    storage_.reset();
    if (how == Stop::PowerCut) {
      note("power cut");
      disk_->power_cut();
    } else {
      note("process killed");
      disk_->kill();
    }
    disk_->set_capacity(UINT64_MAX);
    faults_seen_ = disk_->faults();
    armed_ = false;
    ++restarts_;
    if (created_ && rng_.chance(0.15)) probe_damage();
    start();
  }

  /// Opens the directory (or creates it, if a crash came before create() finished), with a
  /// crash inside now and then, and checks what it holds.
  void start() {
    for (;;) {
      if (rng_.chance(0.2)) disk_->crash_before(disk_->changes() + rng_.range(1, 10));
      raft::Recovered r;
      const bool exists = disk_->exists(options_.dir + "/identity");
      try {
        if (exists) {
          storage_ = std::make_unique<raft::Storage>(raft::Storage::open(options_, r));
        } else {
          storage_ = std::make_unique<raft::Storage>(raft::Storage::create(options_, identity_));
          r.identity = storage_->identity();
        }
      } catch (const raft::StorageError& e) {
        if (!disk_->crashed())
          throw Violation(std::string(exists ? "open" : "create") +
                          "() threw on a state a crash alone can produce: " + e.what());
        note(std::string(exists ? "open" : "create") + ": the machine stopped");
        storage_.reset();
        if (rng_.chance(0.5))
          disk_->power_cut();
        else
          disk_->kill();
        continue;
      }
      disk_->crash_before(0);
      if (exists) {
        check(r);
      } else {
        if (created_) throw Violation("the data directory vanished after create() returned");
        identity_ = storage_->identity();
        acknowledge();
      }
      created_ = true;
      note("opened: " + log_.describe());
      return;
    }
  }

  void check(const raft::Recovered& r) {
    Log got;
    if (r.snapshot) {
      got.snap_index = r.snapshot->meta.index;
      got.snap_term = r.snapshot->meta.term;
      const auto it = snapshots_written_.find({got.snap_index, got.snap_term});
      if (it == snapshots_written_.end() || !it->second.count(r.snapshot->data))
        throw Violation("the snapshot at " + std::to_string(got.snap_index) +
                        " holds data never written");
    }
    got.entries = r.entries;
    note("recovered: " + got.describe() +
         (r.notes.empty() ? "" : " (" + r.notes[0].substr(0, 60) + "...)"));
    if (got.snap_index < acked_snapshot_)
      throw Violation("the acknowledged snapshot at " + std::to_string(acked_snapshot_) +
                      " is missing: recovered " + got.describe());
    if (std::find(hard_states_.begin(), hard_states_.end(), r.hard_state) == hard_states_.end())
      throw Violation("the hard state (term " + std::to_string(r.hard_state.term) + ", vote '" +
                      r.hard_state.vote + "') is neither the acknowledged one (term " +
                      std::to_string(hard_states_.front().term) + ") nor one written since");
    bool identity_ok = false;
    for (const auto& id : identities_)
      identity_ok = identity_ok ||
                    (id.cluster_id == r.identity.cluster_id && id.node_id == r.identity.node_id);
    if (!identity_ok)
      throw Violation("the identity (cluster " + r.identity.cluster_id +
                      ") was never acknowledged");
    // Every acknowledged entry that no write since removed is there, and the log is a prefix
    // of a state the writes went through since the last acknowledgement (a write that was
    // cut short by the crash may have removed a suffix of any of them).
    const std::uint64_t must_reach =
        std::min(acked_.last(), removed_ == kNoCut ? kNoCut : removed_ - 1);
    if (got.last() < must_reach)
      throw Violation(
          "acknowledged entries are missing: the log ends at " + std::to_string(got.last()) + " (" +
          got.describe() + "), acknowledged: " + acked_.describe() +
          (removed_ == kNoCut ? "" : ", removed from " + std::to_string(removed_) + " on since"));
    bool matched = false;
    std::string allowed;
    for (const Log& state : states_) {
      matched =
          matched || (got.snap_index == state.snap_index && got.snap_term == state.snap_term &&
                      got.entries.size() <= state.entries.size() &&
                      std::equal(got.entries.begin(), got.entries.end(), state.entries.begin()));
      allowed += "\n    " + state.describe();
    }
    if (!matched)
      throw Violation("the recovered log (" + got.describe() +
                      ") is not a prefix of a state the writes went through since the last "
                      "acknowledgement:" +
                      allowed);
    // What open() returned is durable from now on.
    log_ = got;
    hard_state_ = r.hard_state;
    identity_ = r.identity;
    acknowledge();
  }

  /// Damages synced bytes of a copy of the disk: open() must refuse it.
  void probe_damage() {
    std::vector<std::string> names;
    disk_->list(options_.dir, names);
    std::vector<std::pair<std::string, std::pair<std::uint64_t, std::uint64_t>>>
        targets;  // file, [from, to)
    std::string newest_snapshot;
    for (const auto& name : names) {
      const std::string file = options_.dir + "/" + name;
      const std::string data = disk_->content(file);
      std::uint64_t a = 0, b = 0;
      if (name == "identity" || name == "hardstate") {
        targets.push_back({file, {0, data.size()}});
      } else if (raft::detail::parse_snapshot_file_name(name, a, b)) {
        newest_snapshot = file;  // names sort by index, then term
      } else if (raft::detail::parse_segment_file_name(name, a) &&
                 data.size() >= raft::detail::kSegmentHeaderBytes) {
        const auto mark = raft::detail::decode_synced_mark(data);
        if (!mark) throw Violation("no valid synced mark in " + file);
        targets.push_back({file, {0, raft::detail::kSegmentFixedBytes}});
        if (mark->end > raft::detail::kSegmentHeaderBytes)
          targets.push_back({file, {raft::detail::kSegmentHeaderBytes, mark->end}});
      }
    }
    if (!newest_snapshot.empty()) {
      const std::string data = disk_->content(newest_snapshot);
      targets.push_back({newest_snapshot, {data.find('\n') + 1, data.size()}});
    }
    if (targets.empty()) throw Violation("no identity, hard state or segment to damage");
    const auto& [file, range] = targets[rng_.below(targets.size())];
    if (range.first >= range.second) return;
    DiskModel damaged = *disk_;
    std::string data = damaged.content(file);
    const std::uint64_t at = rng_.range(range.first, range.second - 1);
    std::string what;
    if (range.first > 0 && file.find("/log-") != std::string::npos && rng_.chance(0.3)) {
      data.resize(at);
      what = "cut " + file + " at " + std::to_string(at) + " (synced up to " +
             std::to_string(range.second) + ")";
    } else {
      data[at] = static_cast<char>(data[at] ^ (1 << rng_.below(8)));
      what = "flipped a bit of " + file + " at " + std::to_string(at);
    }
    damaged.set_content(file, data);
    note("probe: " + what);
    ++probes_;
    raft::StorageOptions o = options_;
    o.file_system = std::shared_ptr<raft::FileSystem>(&damaged, [](raft::FileSystem*) {});
    try {
      raft::Recovered r;
      raft::Storage::open(o, r);
    } catch (const raft::StorageError& e) {
      const std::string message = e.what();
      if (message.rfind("CORRUPT ", 0) == 0 || message.find("newer") != std::string::npos) return;
      throw Violation("damaged synced data (" + what +
                      ") was refused with the wrong error: " + message);
    }
    throw Violation("damaged synced data was not refused: " + what);
  }

  // With a trace, every change the storage made to the disk is printed before the step.
  void note(const std::string& line) {
    if (!trace_) return;
    for (const auto& change : changes_) std::cerr << "        " << change << "\n";
    changes_.clear();
    std::cerr << "  [" << seed_ << "] " << line << "\n";
  }

  std::uint64_t seed_;
  bool trace_;
  Rng rng_;
  std::shared_ptr<DiskModel> disk_;
  raft::StorageOptions options_;
  std::unique_ptr<raft::Storage> storage_;
  bool created_ = false;
  std::vector<std::string> changes_;  // the disk's transcript, when tracing

  // What the writes made of the log, the hard state and the identity.
  Log log_;
  raft::HardState hard_state_;
  raft::Identity identity_;
  std::uint64_t max_term_ = 1;
  std::uint64_t seq_ = 0;
  std::uint64_t counter_ = 0;

  // What a restart may find: the log as of the last acknowledgement, every state the log went
  // through since and the lowest index a write since removed, the hard states and identities
  // written since, and the newest acknowledged snapshot.
  Log acked_;
  std::vector<Log> states_{Log{}};
  std::uint64_t removed_ = kNoCut;
  std::vector<raft::HardState> hard_states_{raft::HardState{}};
  std::vector<raft::Identity> identities_;
  std::uint64_t acked_snapshot_ = 0;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::set<std::string>> snapshots_written_;

  bool armed_ = false;
  int faults_seen_ = 0;
  std::uint64_t restarts_ = 0, acked_syncs_ = 0, probes_ = 0;
};

}  // namespace

TEST_CASE("crashes, torn and reordered writes and failing disks lose nothing acknowledged",
          "[storage][storage-sim]") {
  const std::uint64_t only = env_u64("RAFT_STORAGE_SIM_SEED", 0);
  const std::uint64_t first = only ? only : env_u64("RAFT_STORAGE_SIM_FIRST", 1);
  const std::uint64_t count = only ? 1 : env_u64("RAFT_STORAGE_SIM_SEEDS", 500);
  const auto t0 = std::chrono::steady_clock::now();
  std::uint64_t seeds = 0, failures = 0, restarts = 0, syncs = 0, probes = 0;
  for (std::uint64_t seed = first; seed < first + count; ++seed) {
    ++seeds;
    StorageSim sim(seed, only != 0);
    try {
      sim.run(250);
    } catch (const std::exception& e) {
      ++failures;
      std::cerr << "storage sim seed " << seed << " FAILED: " << e.what()
                << "\n  replay: RAFT_STORAGE_SIM_SEED=" << seed
                << " build/raft_tests '[storage-sim]'\n";
      if (std::getenv("RAFT_SIM_STOP_ON_FAIL")) break;
    }
    restarts += sim.restarts();
    syncs += sim.acked_syncs();
    probes += sim.probes();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cerr << "storage sim: " << seeds << " seeds from " << first << " in " << secs << " s, "
            << restarts << " restarts, " << syncs << " acknowledged syncs, " << probes
            << " damaged copies refused, " << failures << " failures\n";
  CHECK(failures == 0);
}

TEST_CASE("what a call says is durable survives a power cut that loses everything unsynced",
          "[storage][storage-sim]") {
  // The worst a power cut can do, right after each call returns: every write, create,
  // rename and unlink that no fsync covered is gone. A file renamed into place, a new
  // segment, a removed segment, a new directory: each is durable only once its directory is
  // fsynced (RAFT_MUTANT_NO_DIR_FSYNC skips that after a rename).
  auto disk = model_disk();
  const auto o = model_options(disk);
  std::unique_ptr<raft::Storage> s;
  const auto restart = [&] {
    s.reset();
    disk->power_cut(/*lose_all=*/true);
    raft::Recovered r;
    s = std::make_unique<raft::Storage>(raft::Storage::open(o, r));
    return r;
  };
  s = std::make_unique<raft::Storage>(raft::Storage::create(o, sim_identity()));
  raft::Recovered r = restart();
  CHECK(r.identity.cluster_id == "c1");  // the new directories, the identity and hard state

  REQUIRE(s->write(sim_batch(1, sim_entries(1, 12, 1), raft::HardState{3, "n2"})));
  REQUIRE(s->sync());
  r = restart();
  CHECK(r.hard_state == raft::HardState{3, "n2"});  // a hard state renamed into place
  CHECK(r.entries == sim_entries(1, 12, 1));        // new segments
  REQUIRE(disk->exists("/data/a/node/log-00000000000000000004.seg"));

  REQUIRE(s->save_snapshot(*sim_snapshot(8, 1, "at 8"), 8));
  r = restart();
  REQUIRE(r.snapshot);  // a snapshot renamed into place; covered segments removed
  CHECK(r.snapshot->data == "at 8");
  CHECK(r.entries == sim_entries(9, 12, 1));
  CHECK_FALSE(disk->exists("/data/a/node/log-00000000000000000001.seg"));

  REQUIRE(s->write(sim_batch(2, sim_entries(10, 11, 2))));
  REQUIRE(s->sync());
  r = restart();
  auto want = sim_entries(9, 9, 1);
  for (auto& e : sim_entries(10, 11, 2)) want.push_back(e);
  CHECK(r.entries == want);  // a suffix cut: later segments removed, the last truncated

  raft::PersistBatch install = sim_batch(3, sim_entries(31, 32, 3));
  install.snapshot = sim_snapshot(30, 3, "at 30");
  REQUIRE(s->write(install));
  REQUIRE(s->sync());
  r = restart();
  REQUIRE(r.snapshot);  // a snapshot that replaced the log
  CHECK(r.snapshot->data == "at 30");
  CHECK(r.entries == sim_entries(31, 32, 3));

  raft::Identity id = sim_identity();
  id.cluster_id = "c2";
  REQUIRE(s->save_identity(id));
  CHECK(restart().identity.cluster_id == "c2");
}

TEST_CASE("each step makes durable what the next relies on, in order", "[storage][storage-sim]") {
  // The file system calls, as a transcript: what is written, then synced, then renamed,
  // then made durable in its directory. When one of these changes, read why it was there.
  auto disk = model_disk();
  std::vector<std::string> calls;
  disk->transcript = &calls;
  const auto o = model_options(disk, 300);
  const auto take = [&] {
    std::vector<std::string> out;
    out.swap(calls);
    return out;
  };
  using Lines = std::vector<std::string>;
  const std::string dir = "/data/a/node/";
  const std::string seg1 = "log-00000000000000000001.seg", seg4 = "log-00000000000000000004.seg";
  const std::string snap = "snap-00000000000000000002-00000000000000000002.snap";

  auto s = std::make_unique<raft::Storage>(raft::Storage::create(o, sim_identity()));
  CHECK(take() == Lines{
                      "mkdir /data",  // there already
                      "mkdir /data/a",
                      "mkdir /data/a/node",
                      // Every level in its parent, those that were there too (a create that a
                      // crash interrupted may have made them).
                      "sync_directory /",
                      "sync_directory data",
                      "sync_directory a",
                      "create " + dir + "hardstate.tmp",
                      "write hardstate.tmp at 0, 28 bytes",
                      "sync hardstate.tmp",
                      "rename " + dir + "hardstate.tmp to " + dir + "hardstate",
                      "sync_directory node",
                      // The identity last: it marks the directory as complete.
                      "create " + dir + "identity.tmp",
                      "write identity.tmp at 0, 68 bytes",
                      "sync identity.tmp",
                      "rename " + dir + "identity.tmp to " + dir + "identity",
                      "sync_directory node",
                  });

  REQUIRE(s->write(sim_batch(1, sim_entries(1, 3, 1), raft::HardState{1, "n1"})));
  REQUIRE(s->sync());
  CHECK(take() == Lines{
                      // The hard state goes out before the first record.
                      "create " + dir + "hardstate.tmp",
                      "write hardstate.tmp at 0, 30 bytes",
                      "sync hardstate.tmp",
                      "rename " + dir + "hardstate.tmp to " + dir + "hardstate",
                      "sync_directory node",
                      // A segment appears complete, by rename.
                      "create " + dir + seg1 + ".tmp",
                      "write " + seg1 + ".tmp at 0, 64 bytes",
                      "sync " + seg1 + ".tmp",
                      "rename " + dir + seg1 + ".tmp to " + dir + seg1,
                      "sync_directory node",
                      "write " + seg1 + " at 64, 210 bytes",
                      "sync " + seg1,
                      // Only now does the mark cover the records; durable with the next sync.
                      "write " + seg1 + " at 24, 20 bytes",
                  });

  REQUIRE(s->write(sim_batch(2, sim_entries(4, 5, 1))));
  REQUIRE(s->sync());
  CHECK(take() == Lines{
                      // Sealed before the next segment appears: its mark (at its end already)
                      // made durable.
                      "sync " + seg1,
                      "create " + dir + seg4 + ".tmp",
                      "write " + seg4 + ".tmp at 0, 64 bytes",
                      "sync " + seg4 + ".tmp",
                      "rename " + dir + seg4 + ".tmp to " + dir + seg4,
                      "sync_directory node",
                      "write " + seg4 + " at 64, 140 bytes",
                      "sync " + seg4,
                      "write " + seg4 + " at 24, 20 bytes",
                  });

  REQUIRE(s->write(sim_batch(3, sim_entries(2, 2, 2))));
  REQUIRE(s->sync());
  CHECK(take() == Lines{
                      // A suffix cut: later segments go, newest first, each durably...
                      "remove " + dir + seg4,
                      "sync_directory node",
                      // ...the mark comes down to the cut (the other slot), durably...
                      "write " + seg1 + " at 44, 20 bytes",
                      "sync " + seg1,
                      // ...then the truncation, durably, before anything is written over it.
                      "truncate " + seg1 + " to 134",
                      "sync " + seg1,
                      "write " + seg1 + " at 134, 70 bytes",
                      "sync " + seg1,
                      "write " + seg1 + " at 24, 20 bytes",
                  });

  REQUIRE(s->save_snapshot(*sim_snapshot(2, 2, "at 2"), 2));
  CHECK(take() == Lines{
                      "create " + dir + snap + ".tmp",
                      "write " + snap + ".tmp at 0, 69 bytes",  // the header line
                      "write " + snap + ".tmp at 69, 4 bytes",  // the data
                      "sync " + snap + ".tmp", "rename " + dir + snap + ".tmp to " + dir + snap,
                      "sync_directory node",
                      // Nothing to drop: the one segment is the one being appended to.
                  });

  s.reset();
  disk->kill();
  raft::Recovered r;
  s = std::make_unique<raft::Storage>(raft::Storage::open(o, r));
  CHECK(take() == Lines{
                      // What open() read may be only in the page cache: it is made durable
                      // before the node acts on it.
                      "sync " + seg1,
                      "sync_directory node",
                  });
}

TEST_CASE("what open() recovers from the page cache survives a power cut after it",
          "[storage][storage-sim]") {
  // The process dies after its writes reached the page cache and before they were synced (a
  // hard state renamed into place, a segment's records): the next open() reads them and the
  // node acts on them at once, so a power cut after open() must not take them back.
  auto disk = model_disk();
  const auto o = model_options(disk, 4096);
  auto s = std::make_unique<raft::Storage>(raft::Storage::create(o, sim_identity()));
  REQUIRE(s->write(sim_batch(1, sim_entries(1, 2, 1))));
  REQUIRE(s->sync());
  // write() + sync() of a hard state and a record makes these changes: create, write, sync,
  // rename the hard state, sync the directory; write the record, sync the segment, ...
  std::uint64_t stop_before = 0;
  SECTION("a hard state renamed, its directory not yet synced") { stop_before = 5; }
  SECTION("records written, not yet synced") { stop_before = 7; }
  disk->crash_before(disk->changes() + stop_before);
  REQUIRE(s->write(sim_batch(2, {sim_entry(3, 2)}, raft::HardState{2, "n2"})));
  CHECK_FALSE(s->sync());
  REQUIRE(disk->crashed());
  s.reset();
  disk->kill();
  {
    // Not yet durable: a power cut now would lose it.
    auto before = std::make_shared<DiskModel>(*disk);
    before->power_cut(/*lose_all=*/true);
    raft::Recovered r;
    raft::Storage::open(model_options(before, 4096), r);
    CHECK((r.hard_state == raft::HardState{} || r.entries.size() == 2));
  }
  raft::Recovered first;
  s = std::make_unique<raft::Storage>(raft::Storage::open(o, first));
  CHECK(first.hard_state == raft::HardState{2, "n2"});
  CHECK(first.entries.size() == (stop_before == 7 ? 3u : 2u));
  s.reset();
  disk->power_cut(/*lose_all=*/true);
  raft::Recovered second;
  s = std::make_unique<raft::Storage>(raft::Storage::open(o, second));
  CHECK(second.entries == first.entries);
  CHECK(second.hard_state == first.hard_state);
}

TEST_CASE("a create that a crash interrupted is finished by the next create, durably",
          "[storage][storage-sim]") {
  // The process dies after making the directories and before making them durable; the next
  // create() finds them there. They must still be made durable in their parents, or a power
  // cut takes the whole data directory away after create() returned.
  for (std::uint64_t stop_before = 1; stop_before <= 16; ++stop_before) {
    INFO("the first create stops before change " << stop_before);
    auto disk = model_disk();
    const auto o = model_options(disk);
    disk->crash_before(disk->changes() + stop_before);
    CHECK_THROWS_AS(raft::Storage::create(o, sim_identity()), raft::StorageError);
    disk->kill();
    if (disk->exists(o.dir + "/identity")) continue;  // it finished: open() is next
    raft::Storage::create(o, sim_identity());
    disk->power_cut(/*lose_all=*/true);
    raft::Recovered r;
    CHECK_NOTHROW(raft::Storage::open(o, r));
    CHECK(r.identity.cluster_id == "c1");
  }
}
