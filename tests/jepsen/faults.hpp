// Disk and clock faults for the nodes of the Jepsen-style tests, shared by the LD_PRELOAD shim
// that runs inside each node (tests/jepsen/fault_shim.cpp) and the harness that drives it.
//
// The shim is loaded into a node with three variables in its environment:
//   RAFT_FAULT_DIR      the node's data directory (an absolute path, as given to -d)
//   RAFT_FAULT_JOURNAL  the undo journal, a file outside the data directory
//   RAFT_FAULT_CONTROL  the control page, a file of sizeof(FaultControl) bytes or more
//
// Power loss. SIGKILL keeps the page cache: a write the node never fdatasync'ed survives a
// killed process, so a node that acknowledges before its data is durable looks correct under
// kill -9. To make unsynced data disappear as a power cut would, the shim writes, before each
// change the node makes in its data directory, how to undo it (the bytes a write overwrites,
// the file a rename replaces, ...) into the journal, and notes each fdatasync/fsync that made
// changes durable. After the node was killed, power_loss() undoes, newest first, every change
// no successful sync covered - the harshest crash the storage must survive: nothing unsynced
// reached the disk. What a sync covers follows POSIX: fdatasync/fsync of a file, its data
// written before the call; fsync of a directory, its entries (files created, renamed, removed)
// changed before the call. (mkdir is taken as durable; the torn and reordered writes a crash
// can also leave are the storage simulation's business, tests/test_storage_sim.cpp.) When no
// change is pending the shim empties the journal, so it stays small. A plain crash (the node
// killed, the machine up) keeps the page cache: crash() just drops the journal.
//
// Disk faults: with FaultControl::fail_fsync set, fdatasync and fsync of the data directory's
// files fail with EIO (without syncing); with disk_full set, writes to them fail with ENOSPC;
// with sync_delay_ms set, each of those syncs first waits that long (a busy disk). A sync
// covers only what was written before it was called, so a slow sync widens the window in
// which a node holds data that a power cut takes away: a node that acknowledges before its
// sync returns is caught there.
//
// Clock: FaultControl::clock_offset_ms is added to CLOCK_REALTIME (clock_gettime,
// gettimeofday, time), as faketime with FAKETIME_DONT_FAKE_MONOTONIC=1 would, but changeable
// while the node runs; CLOCK_MONOTONIC, which the node's timeouts use, is left alone.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace jepsen::faults {

/// The control page, mapped shared by the node (read) and the harness (written).
struct FaultControl {
  std::int64_t clock_offset_ms;  // added to the wall clock
  std::int32_t fail_fsync;       // nonzero: fsync/fdatasync of data files fail (EIO)
  std::int32_t disk_full;        // nonzero: writes to data files fail (ENOSPC)
  std::int32_t sync_delay_ms;    // nonzero: each fsync/fdatasync of data files first waits
                                 // this long (a busy disk: nothing is durable any sooner)
};

// ---- The journal: records appended by the shim, one write(2) each ----
//
// A record is a Header followed by path_len bytes of path, path2_len bytes of a second path
// and data_len bytes of data. A record cut short at the end of the file (the node was killed
// while appending it) is ignored: the change it announces was not made yet.
enum RecordType : std::uint8_t {
  kWrite = 'W',     // path: the file; offset, length: what the write covers; old_size: the
                    // file's size before; data: the bytes it overwrote (those below old_size)
  kTruncate = 'T',  // offset: the new size; old_size; data: the bytes cut off
  kCreate = 'C',    // path: a file that did not exist before this open
  kRename = 'R',    // path -> path2; data: where the file that path2 named was kept (a hard
                    // link), empty if path2 did not exist
  kUnlink = 'U',    // path; data: where its file was kept (a hard link)
  kSyncFile = 'S',  // the file (dev, ino): every data change of it with seq < upto is durable
  kSyncDir = 'D',   // path: a directory; every entry change in it with seq < upto is durable
  kCancel = 'X',    // the change with seq == upto did not happen (its call failed)
};

constexpr std::uint32_t kRecordMagic = 0x4a4e524c;  // "LRNJ"

struct Header {
  std::uint32_t magic;
  std::uint8_t type;
  std::uint8_t pad[3];
  std::uint64_t seq;   // this record's number, increasing over the node's life
  std::uint64_t upto;  // kSyncFile, kSyncDir, kCancel: see above
  std::uint64_t dev, ino;
  std::uint64_t offset, length, old_size;
  std::uint32_t path_len, path2_len;
  std::uint64_t data_len;
};

// ---- The harness's side ----

/// One node's fault files, in a directory of their own beside (not in) its data directory:
/// `journal`, `control` and the hard links the shim keeps (`kept-*`).
class NodeFaults {
 public:
  /// Creates `dir` and the control page (all faults off).
  explicit NodeFaults(std::string dir) : dir_(std::move(dir)) {
    std::filesystem::create_directories(dir_);
    const int fd = ::open(control_path().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || ::ftruncate(fd, 4096) != 0) throw std::runtime_error("cannot create " + control_path());
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw std::runtime_error("cannot map " + control_path());
    control_ = static_cast<FaultControl*>(p);
    std::memset(p, 0, sizeof(FaultControl));
  }
  ~NodeFaults() { ::munmap(control_, 4096); }
  NodeFaults(const NodeFaults&) = delete;
  NodeFaults& operator=(const NodeFaults&) = delete;

  std::string journal_path() const { return dir_ + "/journal"; }
  std::string control_path() const { return dir_ + "/control"; }
  /// The environment that loads the shim into a node whose data directory is `data_dir`.
  std::vector<std::string> environment(const std::string& shim, const std::string& data_dir) const {
    return {"LD_PRELOAD=" + shim, "RAFT_FAULT_DIR=" + data_dir, "RAFT_FAULT_JOURNAL=" + journal_path(),
            "RAFT_FAULT_CONTROL=" + control_path()};
  }

  void set_clock_offset_ms(std::int64_t ms) { __atomic_store_n(&control_->clock_offset_ms, ms, __ATOMIC_SEQ_CST); }
  void set_fail_fsync(bool on) { __atomic_store_n(&control_->fail_fsync, on ? 1 : 0, __ATOMIC_SEQ_CST); }
  void set_disk_full(bool on) { __atomic_store_n(&control_->disk_full, on ? 1 : 0, __ATOMIC_SEQ_CST); }
  void set_sync_delay_ms(std::int32_t ms) { __atomic_store_n(&control_->sync_delay_ms, ms, __ATOMIC_SEQ_CST); }
  std::int32_t sync_delay_ms() const { return __atomic_load_n(&control_->sync_delay_ms, __ATOMIC_SEQ_CST); }
  std::int64_t clock_offset_ms() const { return __atomic_load_n(&control_->clock_offset_ms, __ATOMIC_SEQ_CST); }

  /// After the node's process is dead: undoes every change to `data_dir` that no sync made
  /// durable, newest first, then empties the journal. Returns how many changes it undid.
  std::size_t power_loss(const std::string& data_dir);
  /// After the node's process is dead, the machine still up: the page cache keeps it all.
  void crash() { forget(); }

 private:
  struct Record {
    Header h;
    std::string path, path2, data;
  };
  std::vector<Record> read_journal() const;
  void undo(const Record& r, const std::string& data_dir) const;
  void forget() const {
    std::error_code ec;
    std::filesystem::remove(journal_path(), ec);
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec))
      if (e.path().filename().string().rfind("kept-", 0) == 0) std::filesystem::remove(e.path(), ec);
  }

  std::string dir_;
  FaultControl* control_ = nullptr;
};

inline std::vector<NodeFaults::Record> NodeFaults::read_journal() const {
  std::ifstream in(journal_path(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<Record> out;
  std::size_t at = 0;
  while (at + sizeof(Header) <= bytes.size()) {
    Record r;
    std::memcpy(&r.h, bytes.data() + at, sizeof(Header));
    if (r.h.magic != kRecordMagic) throw std::runtime_error("the fault journal " + journal_path() + " is damaged at byte " + std::to_string(at));
    const std::size_t body = std::size_t{r.h.path_len} + r.h.path2_len + r.h.data_len;
    if (at + sizeof(Header) + body > bytes.size()) break;  // cut short by the kill: never acted on
    std::size_t p = at + sizeof(Header);
    r.path.assign(bytes, p, r.h.path_len);
    p += r.h.path_len;
    r.path2.assign(bytes, p, r.h.path2_len);
    p += r.h.path2_len;
    r.data.assign(bytes, p, r.h.data_len);
    at = p + r.h.data_len;
    out.push_back(std::move(r));
  }
  return out;
}

inline std::size_t NodeFaults::power_loss(const std::string& data_dir) {
  std::vector<Record> pending;
  auto parent = [](const std::string& path) { return path.substr(0, path.rfind('/')); };
  auto is_data = [](std::uint8_t t) { return t == kWrite || t == kTruncate; };
  for (Record& r : read_journal()) {
    std::vector<Record> keep;
    switch (r.h.type) {
      case kSyncFile:
        for (Record& p : pending)
          if (!(is_data(p.h.type) && p.h.dev == r.h.dev && p.h.ino == r.h.ino && p.h.seq < r.h.upto)) keep.push_back(std::move(p));
        pending.swap(keep);
        break;
      case kSyncDir:
        for (Record& p : pending) {
          const bool durable = !is_data(p.h.type) && p.h.seq < r.h.upto &&
                               (parent(p.h.type == kRename ? p.path2 : p.path) == r.path ||
                                (p.h.type == kRename && parent(p.path) == r.path));
          if (!durable) keep.push_back(std::move(p));
        }
        pending.swap(keep);
        break;
      case kCancel:
        for (Record& p : pending)
          if (p.h.seq != r.h.upto) keep.push_back(std::move(p));
        pending.swap(keep);
        break;
      default:
        pending.push_back(std::move(r));
    }
  }
  for (auto it = pending.rbegin(); it != pending.rend(); ++it) undo(*it, data_dir);
  forget();
  return pending.size();
}

inline void NodeFaults::undo(const Record& r, const std::string& data_dir) const {
  auto fail = [&](const std::string& what) {
    throw std::runtime_error("power loss of " + data_dir + ": cannot undo a change to " + r.path + ": " + what + ": " +
                             std::strerror(errno));
  };
  switch (r.h.type) {
    case kWrite:
    case kTruncate: {
      // The file is found by its inode: it may have been renamed since.
      std::string path;
      std::error_code ec;
      for (const auto& e : std::filesystem::directory_iterator(data_dir, ec)) {
        struct stat st {};
        if (::stat(e.path().c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_ino) == r.h.ino &&
            static_cast<std::uint64_t>(st.st_dev) == r.h.dev)
          path = e.path().string();
      }
      if (path.empty()) return;  // its last name is gone, durably
      const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) fail("open");
      const std::uint64_t at = r.h.type == kWrite ? r.h.offset : r.h.offset;  // a truncate: the bytes cut off start at the new size
      bool ok = r.data.empty() || ::pwrite(fd, r.data.data(), r.data.size(), static_cast<off_t>(at)) ==
                                      static_cast<ssize_t>(r.data.size());
      const bool shrink = r.h.type == kWrite ? r.h.offset + r.h.length > r.h.old_size : r.h.offset > r.h.old_size;
      if (ok && shrink) ok = ::ftruncate(fd, static_cast<off_t>(r.h.old_size)) == 0;
      ::close(fd);
      if (!ok) fail("write");
      return;
    }
    case kCreate:
      if (::unlink(r.path.c_str()) != 0 && errno != ENOENT) fail("unlink");
      return;
    case kRename:
      if (::rename(r.path2.c_str(), r.path.c_str()) != 0) fail("rename back");
      if (!r.data.empty() && ::rename(r.data.c_str(), r.path2.c_str()) != 0) fail("restore the file it replaced");
      return;
    case kUnlink:
      if (::rename(r.data.c_str(), r.path.c_str()) != 0) fail("restore");
      return;
  }
}

}  // namespace jepsen::faults
