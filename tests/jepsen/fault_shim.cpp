// The LD_PRELOAD shim of the Jepsen-style tests: an undo journal of what a node changes in its
// data directory (so the harness can take away everything not yet fsync'ed, as a power cut
// would), failing fsyncs, a full disk and a shifted wall clock. What each does and the journal
// format: tests/jepsen/faults.hpp. Built as a shared object (make: build/jepsen/fault_shim.so)
// and loaded into a node with LD_PRELOAD; without RAFT_FAULT_DIR in the environment it passes
// every call through unchanged (the clock too, without RAFT_FAULT_CONTROL).
//
// Only the calls raft.hpp's storage makes are journaled: open (create, truncate), pwrite and
// write, ftruncate, fdatasync and fsync, rename, unlink, close. Each journaled change is made
// under one lock with its journal record, so the journal's order is the order of the changes.
// A sync runs outside the lock and records afterwards what was written before it began.
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "faults.hpp"

namespace {

using namespace jepsen::faults;

// ---- the real calls ----

template <class F>
F real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}
using OpenFn = int (*)(const char*, int, ...);
using CloseFn = int (*)(int);
using PwriteFn = ssize_t (*)(int, const void*, size_t, off_t);
using WriteFn = ssize_t (*)(int, const void*, size_t);
using TruncateFn = int (*)(int, off_t);
using SyncFn = int (*)(int);
using RenameFn = int (*)(const char*, const char*);
using UnlinkFn = int (*)(const char*);
using ClockFn = int (*)(clockid_t, struct timespec*);
using TimeofdayFn = int (*)(struct timeval*, void*);
using TimeFn = time_t (*)(time_t*);

struct Real {
  OpenFn open = real<OpenFn>("open");
  CloseFn close = real<CloseFn>("close");
  PwriteFn pwrite = real<PwriteFn>("pwrite");
  WriteFn write = real<WriteFn>("write");
  TruncateFn ftruncate = real<TruncateFn>("ftruncate");
  SyncFn fsync = real<SyncFn>("fsync");
  SyncFn fdatasync = real<SyncFn>("fdatasync");
  RenameFn rename = real<RenameFn>("rename");
  UnlinkFn unlink = real<UnlinkFn>("unlink");
  ClockFn clock_gettime = real<ClockFn>("clock_gettime");
  TimeofdayFn gettimeofday = real<TimeofdayFn>("gettimeofday");
};

Real& sys() {
  static Real r;  // initialized once, thread-safe (dlsym does not call back into us)
  return r;
}

// ---- state ----

constexpr int kMaxFd = 65536;

struct Tracked {
  bool on = false;
  bool directory = false;
  int read_fd = -1;  // the same file opened for reading (to save what a write overwrites)
  std::string path;
};

struct Pending {
  std::uint64_t seq;
  RecordType type;
  std::uint64_t dev, ino;  // data changes
  std::string dir;         // entry changes: the directory
  std::string backup;      // the hard link a rename or unlink keeps, removed once durable
};

struct Shim {
  bool active = false;
  std::string dir;  // the data directory, without a trailing '/'
  std::string journal_dir;
  int journal = -1;
  std::uint64_t seq = 0;
  std::vector<Pending> pending;
  Tracked fds[kMaxFd];
  volatile FaultControl* control = nullptr;
};

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_once_t g_once = PTHREAD_ONCE_INIT;
Shim* g_shim = nullptr;

void init() {
  Shim* s = new Shim;
  if (const char* c = std::getenv("RAFT_FAULT_CONTROL")) {
    const int fd = sys().open(c, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      void* p = ::mmap(nullptr, sizeof(FaultControl), PROT_READ, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED) s->control = static_cast<volatile FaultControl*>(p);
      sys().close(fd);
    }
  }
  const char* d = std::getenv("RAFT_FAULT_DIR");
  const char* j = std::getenv("RAFT_FAULT_JOURNAL");
  if (d && *d == '/' && j && *j == '/') {
    s->dir = d;
    while (s->dir.size() > 1 && s->dir.back() == '/') s->dir.pop_back();
    const std::string journal = j;
    s->journal_dir = journal.substr(0, journal.rfind('/'));
    s->journal = sys().open(j, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (s->journal < 0) {
      std::fprintf(stderr, "fault_shim: cannot open the journal %s: %s\n", j, std::strerror(errno));
      std::abort();  // a test that believes it journals, and does not, would pass wrongly
    }
    s->active = true;
  }
  g_shim = s;
}

Shim& shim() {
  pthread_once(&g_once, init);
  return *g_shim;
}

struct Lock {
  Lock() { pthread_mutex_lock(&g_lock); }
  ~Lock() { pthread_mutex_unlock(&g_lock); }
};

bool in_dir(const Shim& s, const char* path) {
  if (!s.active || path == nullptr) return false;
  const std::size_t n = s.dir.size();
  return std::strncmp(path, s.dir.c_str(), n) == 0 && (path[n] == '\0' || path[n] == '/');
}

std::string parent_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
}

Tracked* tracked(int fd) {
  Shim& s = shim();
  if (!s.active || fd < 0 || fd >= kMaxFd || !s.fds[fd].on) return nullptr;
  return &s.fds[fd];
}

// ---- the journal (called with the lock held) ----

std::uint64_t append(Shim& s, RecordType type, std::uint64_t upto, std::uint64_t dev, std::uint64_t ino,
                     std::uint64_t offset, std::uint64_t length, std::uint64_t old_size, const std::string& path,
                     const std::string& path2, const void* data, std::size_t data_len) {
  Header h{};
  h.magic = kRecordMagic;
  h.type = type;
  h.seq = s.seq++;
  h.upto = upto;
  h.dev = dev;
  h.ino = ino;
  h.offset = offset;
  h.length = length;
  h.old_size = old_size;
  h.path_len = static_cast<std::uint32_t>(path.size());
  h.path2_len = static_cast<std::uint32_t>(path2.size());
  h.data_len = data_len;
  std::string rec(reinterpret_cast<const char*>(&h), sizeof h);
  rec += path;
  rec += path2;
  rec.append(static_cast<const char*>(data), data_len);
  std::size_t done = 0;
  while (done < rec.size()) {
    const ssize_t n = sys().write(s.journal, rec.data() + done, rec.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "fault_shim: cannot append to the journal: %s\n", std::strerror(errno));
      std::abort();
    }
    done += static_cast<std::size_t>(n);
  }
  return h.seq;
}

void note_pending(Shim& s, std::uint64_t seq, RecordType type, const struct stat* st, std::string dir,
                  std::string backup = {}) {
  Pending p{seq, type, st ? static_cast<std::uint64_t>(st->st_dev) : 0, st ? static_cast<std::uint64_t>(st->st_ino) : 0,
            std::move(dir), std::move(backup)};
  s.pending.push_back(std::move(p));
}

// Forgets what became durable; an empty list empties the journal.
template <class Durable>
void settle(Shim& s, Durable durable) {
  std::vector<Pending> keep;
  for (Pending& p : s.pending) {
    if (!durable(p)) {
      keep.push_back(std::move(p));
    } else if (!p.backup.empty()) {
      sys().unlink(p.backup.c_str());
    }
  }
  s.pending.swap(keep);
  if (s.pending.empty()) sys().ftruncate(s.journal, 0);
}

bool is_data_change(RecordType t) { return t == kWrite || t == kTruncate; }

// The bytes of [offset, offset + length) below the file's size, read through its read fd.
std::string old_bytes(int fd, Tracked& t, std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
  std::string out;
  if (offset >= size) return out;
  const std::uint64_t n = std::min(length, size - offset);
  if (t.read_fd < 0) t.read_fd = sys().open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC);
  out.resize(n);
  std::size_t got = 0;
  while (t.read_fd >= 0 && got < n) {
    const ssize_t r = ::pread(t.read_fd, &out[got], n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<std::size_t>(r);
  }
  if (got < n) {
    std::fprintf(stderr, "fault_shim: cannot read what a write to %s overwrites\n", t.path.c_str());
    std::abort();
  }
  return out;
}

// Journals a write of `length` bytes at `offset` to fd (lock held). False: fail it (disk full).
bool before_write(int fd, Tracked& t, std::uint64_t offset, std::uint64_t length) {
  Shim& s = shim();
  if (s.control && s.control->disk_full) {
    errno = ENOSPC;
    return false;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return true;
  const std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  const std::string old = old_bytes(fd, t, offset, length, size);
  const std::uint64_t seq = append(s, kWrite, 0, st.st_dev, st.st_ino, offset, length, size, t.path, {}, old.data(), old.size());
  note_pending(s, seq, kWrite, &st, {});
  return true;
}

// Starts tracking an fd of the data directory (lock held): one that writes, a directory (to
// see its fsync), or a file the open created.
void track(Shim& s, int fd, const char* path, int flags, bool created) {
  if (fd < 0 || fd >= kMaxFd) return;
  const bool directory = (flags & O_DIRECTORY) != 0;
  const bool writes = (flags & (O_WRONLY | O_RDWR)) != 0;
  if (!directory && !writes && !created) return;
  Tracked& t = s.fds[fd];
  t.on = true;
  t.directory = directory;
  t.read_fd = -1;
  t.path = path;
}

int open_impl(const char* path, int flags, mode_t mode) {
  Shim& s = shim();
  if (!in_dir(s, path)) return sys().open(path, flags, mode);
  // What the open changes: a file created, or one emptied by O_TRUNC.
  struct stat st {};
  const bool existed = ::stat(path, &st) == 0;
  const bool creates = (flags & O_CREAT) && !existed;
  const bool truncates = (flags & O_TRUNC) && existed && S_ISREG(st.st_mode) && st.st_size > 0 &&
                         (flags & (O_WRONLY | O_RDWR));
  Lock lock;
  std::uint64_t seq = 0;
  if (creates) {
    seq = append(s, kCreate, 0, 0, 0, 0, 0, 0, path, {}, nullptr, 0);
    note_pending(s, seq, kCreate, nullptr, parent_of(path));
  }
  if (truncates) {
    std::string old;
    const int rfd = sys().open(path, O_RDONLY | O_CLOEXEC);
    if (rfd >= 0) {
      old.resize(static_cast<std::size_t>(st.st_size));
      std::size_t got = 0;
      while (got < old.size()) {
        const ssize_t r = ::pread(rfd, &old[got], old.size() - got, static_cast<off_t>(got));
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
      }
      old.resize(got);
      sys().close(rfd);
    }
    const std::uint64_t t = append(s, kTruncate, 0, st.st_dev, st.st_ino, 0, 0, old.size(), path, {}, old.data(), old.size());
    note_pending(s, t, kTruncate, &st, {});
  }
  const int fd = sys().open(path, flags, mode);
  if (fd < 0) {
    if (creates) append(s, kCancel, seq, 0, 0, 0, 0, 0, {}, {}, nullptr, 0);
    return fd;
  }
  track(s, fd, path, flags, creates);
  return fd;
}

mode_t mode_of(int flags, va_list ap) {
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) return static_cast<mode_t>(va_arg(ap, int));
  return 0;
}

int sync_impl(int fd, bool data_only) {
  Tracked* t = tracked(fd);
  SyncFn call = data_only ? sys().fdatasync : sys().fsync;
  if (!t) return call(fd);
  Shim& s = shim();
  if (s.control && s.control->fail_fsync) {
    errno = EIO;
    return -1;
  }
  std::uint64_t upto = 0;
  struct stat st {};
  {
    Lock lock;
    upto = s.seq;  // what was written before the sync began
  }
  if (s.control) {
    const std::int32_t delay_ms = __atomic_load_n(&s.control->sync_delay_ms, __ATOMIC_SEQ_CST);
    if (delay_ms > 0) {
      struct timespec busy {delay_ms / 1000, static_cast<long>(delay_ms % 1000) * 1'000'000};
      while (::nanosleep(&busy, &busy) != 0 && errno == EINTR) {
      }
    }
  }
  const int r = call(fd);
  if (r != 0) return r;
  const int saved = errno;
  Lock lock;
  if (t->directory) {
    const std::string dir = t->path.size() > 1 && t->path.back() == '/' ? t->path.substr(0, t->path.size() - 1) : t->path;
    append(s, kSyncDir, upto, 0, 0, 0, 0, 0, dir, {}, nullptr, 0);
    settle(s, [&](const Pending& p) { return !is_data_change(p.type) && p.dir == dir && p.seq < upto; });
  } else if (::fstat(fd, &st) == 0) {
    append(s, kSyncFile, upto, st.st_dev, st.st_ino, 0, 0, 0, t->path, {}, nullptr, 0);
    settle(s, [&](const Pending& p) {
      return is_data_change(p.type) && p.dev == static_cast<std::uint64_t>(st.st_dev) &&
             p.ino == static_cast<std::uint64_t>(st.st_ino) && p.seq < upto;
    });
  }
  errno = saved;
  return 0;
}

// A hard link beside the journal keeping the file `path` names, so that a rename over it or an
// unlink of it can be undone. "" when path names nothing.
std::string keep_file(Shim& s, const char* path) {
  struct stat st {};
  if (::stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return {};
  const std::string backup = s.journal_dir + "/kept-" + std::to_string(::getpid()) + "-" + std::to_string(s.seq);
  if (::link(path, backup.c_str()) != 0) {
    std::fprintf(stderr, "fault_shim: cannot keep %s as %s: %s\n", path, backup.c_str(), std::strerror(errno));
    std::abort();
  }
  return backup;
}

}  // namespace

// ---- the interposed calls ----

extern "C" {

int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_of(flags, ap);
  va_end(ap);
  return open_impl(path, flags, mode);
}

int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_of(flags, ap);
  va_end(ap);
  return open_impl(path, flags | O_LARGEFILE, mode);
}

int __open_2(const char* path, int flags) { return open_impl(path, flags, 0); }
int __open64_2(const char* path, int flags) { return open_impl(path, flags | O_LARGEFILE, 0); }

int close(int fd) {
  if (Tracked* t = tracked(fd)) {
    Lock lock;
    if (t->read_fd >= 0) sys().close(t->read_fd);
    t->read_fd = -1;
    t->on = false;
    t->path.clear();
  }
  return sys().close(fd);
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t offset) {
  Tracked* t = tracked(fd);
  if (!t) return sys().pwrite(fd, buf, n, offset);
  Lock lock;
  if (!before_write(fd, *t, static_cast<std::uint64_t>(offset), n)) return -1;
  return sys().pwrite(fd, buf, n, offset);
}

ssize_t pwrite64(int fd, const void* buf, size_t n, off_t offset) { return pwrite(fd, buf, n, offset); }

ssize_t write(int fd, const void* buf, size_t n) {
  Tracked* t = tracked(fd);
  if (!t) return sys().write(fd, buf, n);
  Lock lock;
  off_t at = ::lseek(fd, 0, SEEK_CUR);
  if ((::fcntl(fd, F_GETFL) & O_APPEND) != 0) {
    struct stat st {};
    at = ::fstat(fd, &st) == 0 ? st.st_size : at;
  }
  if (at >= 0 && !before_write(fd, *t, static_cast<std::uint64_t>(at), n)) return -1;
  return sys().write(fd, buf, n);
}

int ftruncate(int fd, off_t size) {
  Tracked* t = tracked(fd);
  if (!t) return sys().ftruncate(fd, size);
  Lock lock;
  Shim& s = shim();
  struct stat st {};
  if (::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) != static_cast<std::uint64_t>(size)) {
    const std::uint64_t old_size = static_cast<std::uint64_t>(st.st_size);
    const std::uint64_t new_size = static_cast<std::uint64_t>(size);
    const std::string cut = new_size < old_size ? old_bytes(fd, *t, new_size, old_size - new_size, old_size) : std::string();
    const std::uint64_t seq = append(s, kTruncate, 0, st.st_dev, st.st_ino, new_size, 0, old_size, t->path, {}, cut.data(), cut.size());
    note_pending(s, seq, kTruncate, &st, {});
  }
  return sys().ftruncate(fd, size);
}

int ftruncate64(int fd, off_t size) { return ftruncate(fd, size); }

int fsync(int fd) { return sync_impl(fd, false); }
int fdatasync(int fd) { return sync_impl(fd, true); }

int rename(const char* from, const char* to) {
  Shim& s = shim();
  if (!in_dir(s, from) && !in_dir(s, to)) return sys().rename(from, to);
  Lock lock;
  const std::string backup = keep_file(s, to);
  const std::uint64_t seq = append(s, kRename, 0, 0, 0, 0, 0, 0, from, to, backup.data(), backup.size());
  const int r = sys().rename(from, to);
  if (r != 0) {
    const int saved = errno;
    append(s, kCancel, seq, 0, 0, 0, 0, 0, {}, {}, nullptr, 0);
    if (!backup.empty()) sys().unlink(backup.c_str());
    errno = saved;
    return r;
  }
  note_pending(s, seq, kRename, nullptr, parent_of(to), backup);
  if (parent_of(from) != parent_of(to)) note_pending(s, seq, kRename, nullptr, parent_of(from));
  return 0;
}

int unlink(const char* path) {
  Shim& s = shim();
  if (!in_dir(s, path)) return sys().unlink(path);
  Lock lock;
  const std::string backup = keep_file(s, path);
  if (backup.empty()) return sys().unlink(path);  // nothing (or not a file) to keep
  const std::uint64_t seq = append(s, kUnlink, 0, 0, 0, 0, 0, 0, path, {}, backup.data(), backup.size());
  const int r = sys().unlink(path);
  if (r != 0) {
    const int saved = errno;
    append(s, kCancel, seq, 0, 0, 0, 0, 0, {}, {}, nullptr, 0);
    sys().unlink(backup.c_str());
    errno = saved;
    return r;
  }
  note_pending(s, seq, kUnlink, nullptr, parent_of(path), backup);
  return 0;
}

int clock_gettime(clockid_t id, struct timespec* ts) {
  const int r = sys().clock_gettime(id, ts);
  Shim& s = shim();
  if (r == 0 && s.control && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
    const std::int64_t off = s.control->clock_offset_ms;
    if (off != 0) {
      std::int64_t ns = static_cast<std::int64_t>(ts->tv_nsec) + (off % 1000) * 1000000;
      std::int64_t sec = static_cast<std::int64_t>(ts->tv_sec) + off / 1000;
      if (ns < 0) ns += 1000000000, sec -= 1;
      if (ns >= 1000000000) ns -= 1000000000, sec += 1;
      ts->tv_sec = static_cast<time_t>(sec);
      ts->tv_nsec = static_cast<long>(ns);
    }
  }
  return r;
}

int gettimeofday(struct timeval* tv, void* tz) {
  (void)tz;  // obsolete; glibc declares tv non-null
  struct timespec ts {};
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
  tv->tv_sec = ts.tv_sec;
  tv->tv_usec = ts.tv_nsec / 1000;
  return 0;
}

time_t time(time_t* out) {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  if (out) *out = ts.tv_sec;
  return ts.tv_sec;
}

}  // extern "C"
