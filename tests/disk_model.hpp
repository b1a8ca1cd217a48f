// A model of a POSIX file system as a crash sees it, for running the real Storage code on:
// the page cache (what reads see) apart from the disk (what survives a power cut), with
// directory entries durable only once their directory is synced.
//
//   write, truncate       change the page cache at once; reach the disk with the file's
//                         next sync(), or at a power cut in part, torn, zeroed, garbled or
//                         not at all, each independently of the others (out of order)
//   create, rename,       change the directory at once; reach the disk with the directory's
//   remove, mkdir         next sync_directory(), or at a power cut as a prefix of them (file
//                         systems journal metadata in order)
//   sync, sync_directory  the disk catches up; once they return 0 it holds
//   set_permissions       changes the owner's view at once and for good (a power cut that
//                         undid it would only leave a directory more open, never lose data)
//
// Files are created 0600 and directories 0700, owned by the process's user; a test can give
// a path another owner or mode. There are no links: Mode::Create of a name that exists is
// EEXIST, as O_EXCL makes it.
//
// Faults the test arms: a crash before the Nth call that changes something (the machine
// stops: that call and every later one fail with EIO until power_cut() or kill()), a sync
// that fails with EIO (and loses some of what it should have written, as Linux may), and a
// disk that holds only so many bytes (a write past it is cut short: ENOSPC).
//
// A kill() (the process dies, the machine does not) keeps the page cache; a power_cut()
// replaces everything with what the disk holds, after the random fate of every unsynced
// change. Deterministic for a given seed. One thread at a time.
#pragma once

#include "raft.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace test_support {

/// splitmix64: small, fast, the same on every platform.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// In [0, n); 0 when n is 0.
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : next() % n; }
  /// In [lo, hi].
  std::uint64_t range(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }

 private:
  std::uint64_t state_;
};

class DiskModel final : public raft::FileSystem {
 public:
  explicit DiskModel(std::uint64_t seed) : rng_(seed) {
    new_inode(true);  // "/"
    inodes_[0].permissions = 0755;
  }

  // ---- faults -----------------------------------------------------------------------------
  /// Calls that changed something (or would have) so far.
  std::uint64_t changes() const { return changes_; }
  /// The machine stops before change number `n` (0: never).
  void crash_before(std::uint64_t n) { crash_at_ = n; }
  bool crashed() const { return crashed_; }
  /// Change number `n`, if it is a sync, fails with EIO (0: none).
  void fail_sync(std::uint64_t n) { fail_sync_at_ = n; }
  /// The file data the disk holds, in bytes (UINT64_MAX: no limit).
  void set_capacity(std::uint64_t bytes) { capacity_ = bytes; }
  /// EIOs and ENOSPCs returned so far (not counting those of a crashed machine).
  int faults() const { return faults_; }
  /// Called at the start of every sync of a file, before it does anything (tests that hold
  /// an fsync back from another thread).
  std::function<void()> before_sync;
  /// When set, every call that changes something is described here, one line each.
  std::vector<std::string>* transcript = nullptr;

  /// The process dies; the page cache, and everything not yet on the disk, stays.
  void kill() {
    fds_.clear();
    crashed_ = false;
    crash_at_ = fail_sync_at_ = 0;
  }

  /// The power goes: each unsynced change reaches the disk or not, or in part (`lose_all`:
  /// none does), then the page cache is what the disk holds.
  void power_cut(bool lose_all = false) {
    for (Inode& ino : inodes_) {
      if (ino.dir) {
        const std::size_t keep = lose_all ? 0 : rng_.below(ino.unsynced_ops.size() + 1);
        apply_dir_ops(ino.durable_names, ino.unsynced_ops, keep);
        ino.names = ino.durable_names;
        ino.unsynced_ops.clear();
      } else {
        for (const Change& c : ino.unsynced)
          if (!lose_all) apply_with_random_fate(ino.disk, c);
        ino.cache = ino.disk;
        ino.unsynced.clear();
      }
    }
    kill();
  }

  // ---- inspection (tests) -----------------------------------------------------------------
  bool exists(const std::string& path) const {
    int ino = 0;
    return lookup(path, ino) == 0;
  }
  /// The page cache's content of a file ("" if missing).
  std::string content(const std::string& path) const {
    int ino = 0;
    return lookup(path, ino) == 0 ? inodes_[ino].cache : std::string();
  }
  /// Replaces what the page cache and the disk hold for an existing file (damage, by tests).
  void set_content(const std::string& path, std::string data) {
    int ino = 0;
    if (lookup(path, ino) != 0) return;
    inodes_[ino].cache = inodes_[ino].disk = std::move(data);
    inodes_[ino].unsynced.clear();
  }
  /// Owner and permission bits of an existing path (tests set them as chown and chmod would).
  Status status_of(const std::string& path) const {
    int ino = 0;
    return lookup(path, ino) == 0 ? Status{inodes_[ino].owner, inodes_[ino].permissions} : Status{};
  }
  void set_status(const std::string& path, Status status) {
    int ino = 0;
    if (lookup(path, ino) != 0) return;
    inodes_[ino].owner = status.owner;
    inodes_[ino].permissions = status.permissions;
  }

  // ---- raft::FileSystem ---------------------------------------------------------------------
  int open(const std::string& path, Mode mode, int& fd) override {
    fd = -1;
    if (mode == Mode::Lock) {  // locking is not modelled: one Storage per model
      if (crashed_) return EIO;
      fd = next_fd_++;
      fds_[fd] = -1;
      return 0;
    }
    if (mode == Mode::Create) {
      if (crashed_) return EIO;
      int dir = 0;
      std::string name;
      if (const int err = parent(path, dir, name)) return err;
      if (inodes_[dir].names.count(name) != 0) return EEXIST;  // O_EXCL: nothing changes
      if (const int err = change([&] { return "create " + path; })) return err;
      const int ino = new_inode(false);
      inodes_[dir].names[name] = ino;
      inodes_[dir].unsynced_ops.push_back(DirOp{DirOp::Link, name, {}, ino});
      fd = next_fd_++;
      fds_[fd] = ino;
      return 0;
    }
    if (crashed_) return EIO;
    int ino = 0;
    if (const int err = lookup(path, ino)) return err;
    if (inodes_[ino].dir != (mode == Mode::Directory)) return inodes_[ino].dir ? EISDIR : ENOTDIR;
    fd = next_fd_++;
    fds_[fd] = ino;
    return 0;
  }

  int close(int fd) override {
    fds_.erase(fd);
    return 0;
  }

  int write(int fd, std::uint64_t offset, std::string_view data) override {
    if (const int err = change([&] {
          return "write " + name_of(fd) + " at " + std::to_string(offset) + ", " +
                 std::to_string(data.size()) + " bytes";
        }))
      return err;
    Inode* ino = file(fd);
    if (ino == nullptr) return EBADF;
    const std::uint64_t end = offset + data.size();
    const std::uint64_t grows = end > ino->cache.size() ? end - ino->cache.size() : 0;
    const std::uint64_t used = bytes_used();
    if (grows > 0 && used + grows > capacity_) {
      const std::uint64_t room = capacity_ > used ? capacity_ - used : 0;
      const std::uint64_t fits = data.size() - std::min<std::uint64_t>(data.size(), grows - room);
      if (fits > 0) record(*ino, Change{false, offset, std::string(data.substr(0, fits))});
      ++faults_;
      return ENOSPC;
    }
    record(*ino, Change{false, offset, std::string(data)});
    return 0;
  }

  int truncate(int fd, std::uint64_t size) override {
    if (const int err =
            change([&] { return "truncate " + name_of(fd) + " to " + std::to_string(size); }))
      return err;
    Inode* ino = file(fd);
    if (ino == nullptr) return EBADF;
    record(*ino, Change{true, size, {}});
    return 0;
  }

  int sync(int fd) override {
    if (before_sync) before_sync();
    if (const int err = change([&] { return "sync " + name_of(fd); })) return err;
    Inode* ino = file(fd);
    if (ino == nullptr) return EBADF;
    if (changes_ == fail_sync_at_) {
      // Linux may drop the pages a failed writeback could not write: some reach the disk,
      // the rest never will, though reads still see them.
      for (const Change& c : ino->unsynced) apply_with_random_fate(ino->disk, c);
      ino->unsynced.clear();
      ++faults_;
      return EIO;
    }
    for (const Change& c : ino->unsynced) apply(ino->disk, c);
    ino->unsynced.clear();
    return 0;
  }

  int sync_directory(int fd) override {
    if (const int err = change([&] { return "sync_directory " + name_of(fd); })) return err;
    auto it = fds_.find(fd);
    if (it == fds_.end() || it->second < 0 || !inodes_[it->second].dir) return EBADF;
    Inode& dir = inodes_[it->second];
    std::size_t keep = dir.unsynced_ops.size();
    int err = 0;
    if (changes_ == fail_sync_at_) {
      keep = rng_.below(keep + 1);
      ++faults_;
      err = EIO;
    }
    apply_dir_ops(dir.durable_names, dir.unsynced_ops, keep);
    dir.unsynced_ops.clear();
    return err;
  }

  int read(const std::string& path, std::string& out) override {
    if (crashed_) return EIO;
    int ino = 0;
    if (const int err = lookup(path, ino)) return err;
    if (inodes_[ino].dir) return EISDIR;
    out = inodes_[ino].cache;
    return 0;
  }

  int list(const std::string& dir, std::vector<std::string>& names) override {
    if (crashed_) return EIO;
    int ino = 0;
    if (const int err = lookup(dir, ino)) return err;
    if (!inodes_[ino].dir) return ENOTDIR;
    for (const auto& entry : inodes_[ino].names) names.push_back(entry.first);
    return 0;
  }

  int rename(const std::string& from, const std::string& to) override {
    if (const int err = change([&] { return "rename " + from + " to " + to; })) return err;
    int dir = 0, to_dir = 0;
    std::string name, to_name;
    if (const int err = parent(from, dir, name)) return err;
    if (const int err = parent(to, to_dir, to_name)) return err;
    if (dir != to_dir) return EXDEV;  // not needed by Storage, so not modelled
    auto it = inodes_[dir].names.find(name);
    if (it == inodes_[dir].names.end()) return ENOENT;
    const int ino = it->second;
    inodes_[dir].names.erase(it);
    inodes_[dir].names[to_name] = ino;
    inodes_[dir].unsynced_ops.push_back(DirOp{DirOp::Rename, name, to_name, ino});
    return 0;
  }

  int remove(const std::string& path) override {
    if (const int err = change([&] { return "remove " + path; })) return err;
    int dir = 0;
    std::string name;
    if (const int err = parent(path, dir, name)) return err;
    auto it = inodes_[dir].names.find(name);
    if (it == inodes_[dir].names.end()) return ENOENT;
    if (inodes_[it->second].dir) return EISDIR;
    inodes_[dir].names.erase(it);
    inodes_[dir].unsynced_ops.push_back(DirOp{DirOp::Unlink, name, {}, 0});
    return 0;
  }

  int make_directory(const std::string& path) override {
    if (const int err = change([&] { return "mkdir " + path; })) return err;
    int dir = 0;
    std::string name;
    if (const int err = parent(path, dir, name)) return err;
    if (inodes_[dir].names.count(name)) return EEXIST;
    const int ino = new_inode(true);
    inodes_[dir].names[name] = ino;
    inodes_[dir].unsynced_ops.push_back(DirOp{DirOp::Link, name, {}, ino});
    return 0;
  }

  int status(int fd, Status& out) override {
    if (crashed_) return EIO;
    auto it = fds_.find(fd);
    if (it == fds_.end() || it->second < 0) return EBADF;
    out = Status{inodes_[it->second].owner, inodes_[it->second].permissions};
    return 0;
  }

  int set_permissions(int fd, std::uint32_t permissions) override {
    if (const int err = change([&] { return "set_permissions " + name_of(fd); })) return err;
    auto it = fds_.find(fd);
    if (it == fds_.end() || it->second < 0) return EBADF;
    inodes_[it->second].permissions = permissions & 07777u;
    return 0;
  }

 private:
  struct Change {
    bool truncate = false;     // else a write
    std::uint64_t offset = 0;  // of the write; the new size for a truncation
    std::string data;
  };
  struct DirOp {
    enum Kind { Link, Unlink, Rename } kind;
    std::string name, to;
    int ino = 0;
  };
  struct Inode {
    bool dir = false;
    std::uint32_t owner = 0;
    std::uint32_t permissions = 0;
    std::string cache, disk;                          // files
    std::vector<Change> unsynced;                     // in cache, not yet on disk
    std::map<std::string, int> names, durable_names;  // directories
    std::vector<DirOp> unsynced_ops;
  };

  static void apply(std::string& content, const Change& c) {
    if (c.truncate) {
      content.resize(c.offset);
      return;
    }
    if (content.size() < c.offset + c.data.size()) content.resize(c.offset + c.data.size(), '\0');
    content.replace(c.offset, c.data.size(), c.data);
  }

  void apply_with_random_fate(std::string& disk, const Change& c) {
    const std::uint64_t fate = rng_.below(100);
    if (fate < 30) return;  // lost
    if (c.truncate || fate < 60) return apply(disk, c);
    Change part = c;
    if (fate < 70) {  // the size reached the disk, the data did not
      std::fill(part.data.begin(), part.data.end(), '\0');
      return apply(disk, part);
    }
    if (fate < 75) {  // garbage where the data should be
      for (char& ch : part.data) ch = static_cast<char>(rng_.next());
      return apply(disk, part);
    }
    // Torn: pieces of it, each there or not.
    std::vector<std::uint64_t> cuts{0, c.data.size()};
    for (int i = 0, n = static_cast<int>(rng_.range(1, 4)); i < n; ++i)
      cuts.push_back(rng_.below(c.data.size() + 1));
    std::sort(cuts.begin(), cuts.end());
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      if (cuts[i] == cuts[i + 1] || rng_.chance(0.5)) continue;
      apply(disk, Change{false, c.offset + cuts[i], c.data.substr(cuts[i], cuts[i + 1] - cuts[i])});
    }
  }

  static void apply_dir_ops(std::map<std::string, int>& names, const std::vector<DirOp>& ops,
                            std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      const DirOp& op = ops[i];
      if (op.kind == DirOp::Link) {
        names[op.name] = op.ino;
      } else if (op.kind == DirOp::Unlink) {
        names.erase(op.name);
      } else if (names.count(op.name)) {
        names[op.to] = names[op.name];
        names.erase(op.name);
      }
    }
  }

  /// 0, or EIO when the machine has stopped (or stops now). `what()` describes the change.
  template <class Describe>
  int change(Describe what) {
    if (crashed_) return EIO;
    ++changes_;
    if (crash_at_ != 0 && changes_ >= crash_at_) {
      crashed_ = true;
      return EIO;
    }
    if (transcript) transcript->push_back(what());
    return 0;
  }

  void record(Inode& ino, Change c) {
    apply(ino.cache, c);
    ino.unsynced.push_back(std::move(c));
  }

  int new_inode(bool dir) {
    inodes_.emplace_back();
    inodes_.back().dir = dir;
    inodes_.back().owner = static_cast<std::uint32_t>(::geteuid());
    inodes_.back().permissions = dir ? 0700 : 0600;
    return static_cast<int>(inodes_.size() - 1);
  }

  Inode* file(int fd) {
    auto it = fds_.find(fd);
    if (it == fds_.end() || it->second < 0 || inodes_[it->second].dir) return nullptr;
    return &inodes_[it->second];
  }

  std::string name_of(int fd) const {
    auto it = fds_.find(fd);
    if (it == fds_.end()) return "fd " + std::to_string(fd);
    for (std::size_t d = 0; d < inodes_.size(); ++d)
      for (const auto& [name, ino] : inodes_[d].names)
        if (ino == it->second) return name;
    return it->second == 0 ? "/" : "(removed)";
  }

  std::uint64_t bytes_used() const {
    std::uint64_t used = 0;
    for (const Inode& ino : inodes_) used += ino.cache.size();
    return used;
  }

  int lookup(const std::string& path, int& ino) const {
    ino = 0;
    std::size_t pos = 0;
    while (pos < path.size()) {
      while (pos < path.size() && path[pos] == '/') ++pos;
      if (pos == path.size()) break;
      const std::size_t end = std::min(path.find('/', pos), path.size());
      if (!inodes_[ino].dir) return ENOTDIR;
      auto it = inodes_[ino].names.find(path.substr(pos, end - pos));
      if (it == inodes_[ino].names.end()) return ENOENT;
      ino = it->second;
      pos = end;
    }
    return 0;
  }

  int parent(const std::string& path, int& dir, std::string& name) const {
    const std::size_t slash = path.rfind('/');
    name = path.substr(slash == std::string::npos ? 0 : slash + 1);
    if (const int err = lookup(slash == std::string::npos ? "/" : path.substr(0, slash), dir))
      return err;
    return inodes_[dir].dir ? 0 : ENOTDIR;
  }

  Rng rng_;
  std::vector<Inode> inodes_;  // [0] is "/"; never reused
  std::map<int, int> fds_;     // fd -> inode (-1: a lock)
  int next_fd_ = 3;
  std::uint64_t changes_ = 0;
  std::uint64_t crash_at_ = 0;
  std::uint64_t fail_sync_at_ = 0;
  std::uint64_t capacity_ = UINT64_MAX;
  bool crashed_ = false;
  int faults_ = 0;
};

}  // namespace test_support
