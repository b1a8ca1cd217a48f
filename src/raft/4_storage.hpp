
// ============================================================================================
// 4. Storage: the write-ahead log, term and vote, snapshots, recovery
// ============================================================================================
//
// A node may only vote or acknowledge what is on disk. Storage gives a node its data
// directory and brings it back after a crash, a power cut or a damaged file, and never
// silently drops what it once made durable. The directory holds:
//
//   identity                   node id, server id, cluster id, initial configuration;
//                              written once, atomically, when the directory is created
//   hardstate                  term and vote, with a checksum; replaced atomically (temp
//                              file, fdatasync, rename, fsync of the directory)
//   log-<first index>.seg      the log, in segments: a header holding the segment's synced
//                              mark (below), then records (index, term, type, timestamp,
//                              payload), each framed by its length and CRC-32C
//   snap-<index>-<term>.snap   the newest snapshot; the previous one is deleted only once
//                              the new one is durable
//   incoming.snap.tmp          a snapshot being received from the leader, written chunk by
//                              chunk as it arrives (a snapshot file whose header is written
//                              last); read back and checked whole, then renamed into place
//   *.tmp                      an interrupted write: ignored, and removed by open()
//   LOCK                       locked while a Storage has the directory open
//
// Only the node's user may read or change any of it: the directory is 0700 and every file
// 0600 whatever the umask; an existing directory more open than that is tightened (with a
// warning), one owned by another user is refused. A temporary file is only ever created new
// (O_EXCL | O_NOFOLLOW, a stale one unlinked first), so a symbolic link planted at its name
// is removed, never written through.
//
// Every file starts with a magic and a format version; integers are little-endian. Segments
// are format 2 (format 1 had no synced mark), the other files format 1. Every change of a
// file's format bumps its version, and every older version stays readable: a data directory
// written by any earlier release opens.
//
// What a crash may do (the model tests/test_storage_sim.cpp runs this code on): writes that
// no successful fdatasync covered may be lost, cut short, or reach the disk in part and in any
// order; a create, rename or unlink is durable only once the directory is fsynced. What is
// assumed: an fdatasync that returned 0 holds, and a write does not damage other bytes.
//
// The synced mark, which tells a torn write from damage. The header of each segment holds the
// byte offset up to which its records are known durable. After each successful fdatasync of
// the segment the mark is advanced to the end of what that fdatasync covered; the write of
// the mark itself becomes durable with the segment's next fdatasync. So the mark on disk may
// lag the data, and never leads it. It is kept in two slots written alternately, each with a
// sequence number and a CRC-32C, so a torn write of one leaves the other; the valid slot with
// the higher sequence number is the mark. A slot is written only while the other is durable,
// so a crash tears at most the one being written. A suffix cut lowers the mark durably before
// it truncates; a segment is sealed (its mark set to its end, durably) before the next one is
// created. Recovery reads each segment once, front to back, so it is linear in its size:
//   - the records before a segment's mark must all be valid and end exactly at the mark:
//     damage there, or a file that ends before its mark, is corruption;
//   - a segment that is not the last ends at its mark;
//   - in the last segment the log goes on past the mark up to the first record that is not
//     valid. From there on is a torn tail: writes a crash interrupted, which may have reached
//     the disk out of order, so valid records after the damage are part of it too. It is cut
//     (truncated durably) before anything is appended, so nothing stale can ever follow new
//     records, and the cut is reported in Recovered::notes.
// Then open() makes what it recovered durable (an fdatasync of the last segment and an fsync
// of the directory): after a crash of the process alone, unsynced writes are still in the
// page cache, where open() read them, and the node is about to act on them.
//
// The same rules hold for preallocated segments: zeros are not a valid record, so a sealed
// segment still ends at its mark and the last one at its first zero; a torn tail would then
// be zeroed durably instead of truncated.
//
// The price of the lag: records acknowledged by the last sync() before a crash may lie beyond
// the mark on disk. A crash cannot damage them (they were synced); a failing disk could, and
// such damage would be taken for a torn tail: cut and reported, not refused. Closing that
// window would cost a second fdatasync in every sync().
//
// Format 1 segments have no mark. The last one is read as before: damage in it is a torn tail
// only when no valid record of the log follows it (a position is checksummed only if its
// index field could belong to the log, so a garbage tail costs one pass, not one pass per
// byte). The first append after opening such a directory starts a new segment, of format 2.
//
// Why every other step is crash safe: a file only ever appears under its name by rename(),
// so a named file is complete; a log suffix is cut by deleting later segments newest first
// and then truncating, durably, before anything is appended over the cut; a log prefix goes
// by deleting whole segments oldest first; every unlink a later step relies on is made
// durable (fsync of the directory) before that step. So at every instant the files recover
// to a valid log. Damage anywhere else (the identity, the hard state, the newest snapshot, a
// segment header, a missing segment) makes open() throw a StorageError naming the file and
// byte offset.
//
// After a failed fsync, a full disk or any other write error the Storage is failed for good:
// it says why, refuses every later write and never retries (after a failed fsync the kernel
// may have dropped the dirty pages, so a retry can report success for data that is lost). A
// restart, which re-reads the disk, recovers what was durable.

namespace raft {

/// A data directory that cannot be created or opened safely. what() names the file, the byte
/// offset when there is one, and what to do.
struct StorageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The file operations Storage makes. StorageOptions::file_system empty means the POSIX
/// calls; a test can put a model of the page cache and the disk underneath instead, and crash
/// the real storage code at any point (tests/test_storage_sim.cpp). Each call returns 0 or an
/// errno value. A file system is used by one thread at a time. Files are created 0600 and
/// directories 0700, and no mode that opens a file follows a symbolic link at its name
/// (ELOOP); a directory may be one.
class FileSystem {
 public:
  enum class Mode : std::uint8_t {
    Write,      ///< an existing file, for writing
    Create,     ///< a new file, for writing (EEXIST when the name exists, even as a link)
    Directory,  ///< a directory, to sync_directory(), status() or set_permissions() it
    Lock,       ///< a file created if missing and locked for this open (EAGAIN: locked already)
  };
  /// What status() reports.
  struct Status {
    std::uint32_t owner = 0;        ///< user id
    std::uint32_t permissions = 0;  ///< the permission bits (mode & 07777)
  };
  virtual ~FileSystem() = default;
  virtual int open(const std::string& path, Mode mode, int& fd) = 0;
  virtual int close(int fd) = 0;
  /// Writes all of `data` at byte `offset`. After an error, part of it may be written.
  virtual int write(int fd, std::uint64_t offset, std::string_view data) = 0;
  virtual int truncate(int fd, std::uint64_t size) = 0;
  /// fdatasync(): once it returns 0, the file's data and size survive a crash.
  virtual int sync(int fd) = 0;
  /// fsync() of a directory: once it returns 0, its entries (files created, renamed or
  /// removed in it) survive a crash.
  virtual int sync_directory(int fd) = 0;
  /// The whole file.
  virtual int read(const std::string& path, std::string& out) = 0;
  /// The names in a directory, without "." and "..".
  virtual int list(const std::string& dir, std::vector<std::string>& names) = 0;
  virtual int rename(const std::string& from, const std::string& to) = 0;
  virtual int remove(const std::string& path) = 0;
  /// Mode 0700; EEXIST when it exists already.
  virtual int make_directory(const std::string& path) = 0;
  /// fstat() of an open file or directory.
  virtual int status(int fd, Status& out) = 0;
  /// fchmod() of an open file or directory.
  virtual int set_permissions(int fd, std::uint32_t permissions) = 0;
};

struct StorageOptions {
  std::string dir;
  /// A segment is closed and a new one started when the next record would grow it past this
  /// size (a record larger than this gets a segment of its own).
  std::size_t segment_bytes = std::size_t{64} << 20;
  /// Empty: POSIX. Tests: a model of the disk (see FileSystem).
  std::shared_ptr<FileSystem> file_system;
  /// Fault injection (tests): called instead of FileSystem::sync() and sync_directory().
  /// Return 0, or -1 with errno set to make the call fail.
  std::function<int(int fd)> fsync_hook;
  /// Told, in one line, of a change create() or open() makes that nobody asked for: an
  /// existing directory more open than 0700 tightened to it. Empty: not told.
  std::function<void(const std::string& line)> warn;
};

/// Who this data directory belongs to; fixed when the directory is created.
struct Identity {
  NodeId node_id;
  /// Random id of this data directory (32 hex digits). create() generates it when empty.
  std::string server_id;
  std::string cluster_id;
  /// For a cluster started from a static peer map: the configuration at index 0. Empty
  /// otherwise (the configuration then comes from the snapshot and the log).
  Configuration initial_config;
};

/// What open() found on disk.
struct Recovered {
  Identity identity;
  HardState hard_state;
  /// The newest snapshot. meta.config is left empty: the caller parses it from data.
  std::optional<Snapshot> snapshot;
  /// The log after the snapshot's index (from index 1 without a snapshot): contiguous, terms
  /// non-decreasing, the first term not below the snapshot's.
  std::vector<LogEntry> entries;
  /// Repairs open() made, one sentence each: a torn tail cut, a superseded snapshot or a
  /// leftover temporary file removed, log entries discarded for a newer snapshot.
  std::vector<std::string> notes;
};

/// 128 random bits from std::random_device, as 32 lower-case hex digits.
std::string random_id128();

namespace detail {
class StorageImpl;
}

/// One node's data directory. Not thread-safe: after open() or create() one thread at a time
/// uses it (in a running node, the StorageWriter's thread). failed(), failure() and
/// fsync_count() may be read from any thread. write() only buffers; nothing is durable until
/// sync() returns true. A moved-from Storage may only be destroyed or assigned to.
class Storage {
 public:
  /// True when `dir` holds an identity file (a data directory create() finished). Asks POSIX,
  /// not a StorageOptions::file_system.
  static bool exists(const std::string& dir);
  /// Makes a new data directory (mkdir -p): a hard state of term 0 and no vote, then the
  /// identity file. Throws StorageError when the directory already holds one or holds log or
  /// snapshot files without one, is owned by another user, or on an I/O error.
  static Storage create(StorageOptions options, Identity identity);
  /// Opens an existing data directory and recovers it into `out`, repairing what a crash
  /// leaves behind, and makes what it recovered durable before it returns. Throws
  /// StorageError on damage it cannot repair safely, if another Storage (in this or another
  /// process) has the directory open, or if another user owns it.
  static Storage open(StorageOptions options, Recovered& out);

  Storage(Storage&&) noexcept;
  Storage& operator=(Storage&&) noexcept;
  ~Storage();  // closes the files; does not sync

  /// Applies a PersistBatch (see there): the snapshot first (the log after it is kept when
  /// the log holds the snapshot's last entry, else the whole log is replaced), then the hard
  /// state, then the entries: those the log holds already are skipped, the log is cut at the
  /// first whose term differs, the rest appended. Durable entries are never deleted to be
  /// written again. Buffered: durable after sync(). Returns false once the storage has
  /// failed. A batch that does not fit the log (a gap, an index covered by the snapshot, a
  /// decreasing term) fails the storage: it is a bug in the caller, and writing on would
  /// corrupt the log.
  bool write(const PersistBatch& batch);
  /// Makes everything written so far durable: the hard state file if it changed, then one
  /// fdatasync of the log. Returns true only when every byte written so far is covered by a
  /// successful fdatasync; false once the storage has failed.
  bool sync();
  /// A snapshot the node took itself (of its applied state): made durable, the previous
  /// snapshot deleted, then whole log segments whose every entry is at or below
  /// min(compact_to, snapshot.meta.index) deleted (pass an index below the snapshot's to keep
  /// a trailing window of entries for followers that lag a little). The log itself is kept
  /// after the snapshot's index. A snapshot not newer than the one on disk is ignored.
  bool save_snapshot(const Snapshot& snapshot, std::uint64_t compact_to);
  /// Reads back the snapshot received into the incoming file (PersistBatch::snapshot_chunks):
  /// writes its header, fdatasyncs it and reads it whole (the store parses text held in
  /// memory; the node holds the snapshot it installs anyway). `out` gets received.meta, and
  /// the data when the file holds exactly `received` (its length and CRC-32C, which the core
  /// computed over the bytes as they arrived); else `problem` says why not, and nothing
  /// changed. A PersistBatch::snapshot at the same index and term then renames the file into
  /// place instead of writing the data again. Returns false once the storage has failed.
  bool load_received_snapshot(const ReceivedSnapshot& received, Snapshot& out, std::string& problem);
  /// Rewrites the identity file atomically (a joiner records the cluster id it joined).
  bool save_identity(const Identity& identity);

  bool failed() const;
  /// Why the storage failed ("IOERR ..." with the errno text and what to do); empty if not.
  const std::string& failure() const;
  /// fdatasync() and fsync() calls made so far (files and directories).
  std::uint64_t fsync_count() const;
  /// The log held on disk: [first_index, last_index], empty when last_index < first_index.
  /// Entries at or below snapshot_index() may remain as a trailing window.
  std::uint64_t first_index() const;
  std::uint64_t last_index() const;
  std::uint64_t snapshot_index() const;  // 0: no snapshot
  std::uint64_t snapshot_term() const;
  const Identity& identity() const;
  const std::string& dir() const;

 private:
  Storage();
  std::unique_ptr<detail::StorageImpl> impl_;
};

/// Group commit: one thread that makes PersistBatches durable for the whole node. Every
/// batch waiting when the thread wakes is written and made durable together with a single
/// fdatasync; a lone batch is never delayed to fill a group.
///
/// Callbacks run on the writer thread, in submission (= seq) order, once each, after the
/// fdatasync that covers their batch: ok == true means durable. After the storage fails
/// every callback gets ok == false. Callbacks must not throw, and must not call flush(),
/// stop() or the destructor (they run on the thread those wait for).
class StorageWriter {
 public:
  using Done = std::function<void(bool ok)>;

  /// Starts the writer thread. `storage` must outlive the writer.
  explicit StorageWriter(Storage& storage);
  ~StorageWriter();  // stop()
  StorageWriter(const StorageWriter&) = delete;
  StorageWriter& operator=(const StorageWriter&) = delete;

  /// Queues a batch; safe from any thread. Batches must arrive in increasing seq order
  /// (std::invalid_argument otherwise). After stop(), `done(false)` runs at once on the
  /// calling thread.
  void submit(PersistBatch batch, Done done);
  /// Queues Storage::save_snapshot(*snapshot, compact_to), in order with the batches.
  void submit_snapshot(std::shared_ptr<const Snapshot> snapshot, std::uint64_t compact_to,
                       Done done);
  /// Queues Storage::save_identity(identity), in order with the batches.
  void submit_identity(Identity identity, Done done);
  /// Queues Storage::load_received_snapshot(received, ...), in order with the batches; `done`
  /// gets the snapshot read back (its data empty, and why, when it is not the one received).
  using Loaded = std::function<void(bool ok, std::shared_ptr<Snapshot> snapshot, std::string problem)>;
  void submit_load_received(ReceivedSnapshot received, Loaded done);
  /// Blocks until everything submitted before the call has been handled and its callback
  /// has run.
  void flush();
  /// Drains: everything submitted before stop() is written and synced and its callback run
  /// (ok == false if the storage has failed); then the thread exits. Idempotent.
  void stop();
  /// Group commits so far (each ends with at most one sync of the log).
  std::uint64_t groups() const;

 private:
  struct Item {
    PersistBatch batch;
    std::shared_ptr<const Snapshot> snapshot;  // set: a save_snapshot job
    std::uint64_t compact_to = 0;
    std::optional<Identity> identity;  // set: a save_identity job
    Done done;
    std::optional<ReceivedSnapshot> received;  // set: a load_received_snapshot job
    Loaded loaded_done;
    std::shared_ptr<Snapshot> loaded;
    std::string load_problem;
  };
  void enqueue(Item item);
  void run();

  Storage& storage_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::vector<Item> queue_;
  std::uint64_t submitted_ = 0;
  std::uint64_t completed_ = 0;
  std::optional<std::uint64_t> last_seq_;
  bool stopping_ = false;
  std::atomic<std::uint64_t> groups_{0};
  std::thread thread_;  // last: starts after every other member is ready
};

// --------------------------------------------------------------------------------------------
// Implementation
// --------------------------------------------------------------------------------------------

namespace detail {

// CRC-32C: detail::crc32c, section 3 (the core keeps one over a snapshot it receives).

// Format versions: of the identity, hard state and snapshot files, and of log segments.
constexpr std::uint32_t kStorageFormatVersion = 1;
constexpr std::uint32_t kSegmentFormatVersion = 2;
constexpr std::size_t kMagicBytes = 8;
constexpr std::string_view kIdentityMagic{"RAFTIDNT", kMagicBytes};
constexpr std::string_view kHardStateMagic{"RAFTHARD", kMagicBytes};
constexpr std::string_view kSegmentMagic{"RAFTLSEG", kMagicBytes};
constexpr const char* kIdentityFile = "identity";
constexpr const char* kHardStateFile = "hardstate";
constexpr const char* kLockFile = "LOCK";
constexpr const char* kIncomingSnapshotFile = "incoming.snap.tmp";  // removed by open() as any *.tmp
constexpr std::string_view kTempSuffix = ".tmp";
// Only the node's user may read or change the data directory (the umask can only narrow
// these; a directory made before is tightened at start).
constexpr std::uint32_t kDirectoryPermissions = 0700;
constexpr std::uint32_t kFilePermissions = 0600;

// Segment header: magic, version, first index, CRC-32C of the preceding 20 bytes (format 1
// ends there); then two slots of the synced mark, each: u64 sequence number, u64 mark (a byte
// offset), CRC-32C of those 16 bytes. The slot of sequence number s is s % 2.
constexpr std::size_t kSegmentFixedBytes = 24;
constexpr std::size_t kMarkSlotBytes = 20;
constexpr std::size_t kSegmentHeaderBytes = kSegmentFixedBytes + 2 * kMarkSlotBytes;
// Record: u32 body length, u32 CRC-32C of (length, body), body.
constexpr std::size_t kRecordFrameBytes = 8;
// Body: u64 index, u64 term, u8 type, i64 timestamp_ms, then the payload.
constexpr std::size_t kRecordFixedBytes = 25;
// Snapshot: one comment line, then the data (the store's repr-style text), so that Python's
// ast.literal_eval reads the whole file (eval mode accepts comments):
//   # raft.hpp snapshot format 1 index 42 term 20 length 1234 crc32c 0a1b2c3d
constexpr std::string_view kSnapshotPrefix{"# raft.hpp snapshot format "};
// Buffered records are handed to the kernel once they reach this size, even before sync().
constexpr std::size_t kPendingFlushBytes = std::size_t{1} << 20;
// Larger writes are split: Linux writes at most about 2 GiB per call.
constexpr std::size_t kMaxWriteChunk = std::size_t{1} << 30;

inline const std::string& corruption_advice() {
  static const std::string advice =
      " The data directory is damaged: restore it from a backup, or move it away and add this "
      "node back to the cluster as a new member (it then receives a snapshot from the leader).";
  return advice;
}

/// "CORRUPT <file> byte offset <n>: <what>. <what to do>"
inline StorageError corrupt(const std::string& file, std::uint64_t offset,
                            const std::string& what) {
  return StorageError("CORRUPT " + file + " byte offset " + std::to_string(offset) + ": " +
                      what + "." + corruption_advice());
}

/// What an errno means, with its number for a search ("Permission denied (errno 13)"): in
/// every I/O error this file and the runtime report.
inline std::string errno_text(int err) {
  return std::system_category().message(err) + " (errno " + std::to_string(err) + ")";
}

/// A number in text raft.hpp writes itself (snapshot headers, peer messages, ports and
/// counts in the configuration): digits as std::from_chars reads them in `base`, at most 20
/// characters, the whole of `s`. Looser than Redis's string2ll (detail::parse_int64, for Redis
/// arguments, where replies must match Redis): leading zeros and "-0" pass here.
template <class Int>
inline bool parse_number(std::string_view s, Int& v, int base = 10) {
  if (s.empty() || s.size() > 20) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  return ec == std::errc() && p == s.data() + s.size();
}

inline void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFFu));
}
inline void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFFu));
}
inline void put_string(std::string& out, std::string_view s) {
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}
inline std::uint32_t get_u32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
inline std::uint64_t get_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

/// Reads the fixed fields of identity and hard state files; `ok` turns false (and stays
/// false) at the first read past the end.
struct ByteReader {
  std::string_view buf;
  std::size_t pos = 0;
  bool ok = true;

  bool need(std::size_t n) {
    if (!ok || buf.size() - pos < n) ok = false;
    return ok;
  }
  std::uint8_t u8() { return need(1) ? static_cast<std::uint8_t>(buf[pos++]) : 0; }
  std::uint32_t u32() {
    if (!need(4)) return 0;
    pos += 4;
    return get_u32(buf.data() + pos - 4);
  }
  std::uint64_t u64() {
    if (!need(8)) return 0;
    pos += 8;
    return get_u64(buf.data() + pos - 8);
  }
  std::string str() {
    const std::uint32_t n = u32();
    if (!need(n)) return {};
    pos += n;
    return std::string(buf.substr(pos - n, n));
  }
};

inline std::string pad20(std::uint64_t v) {
  std::string s = std::to_string(v);
  return std::string(20 - s.size(), '0') + s;
}
/// Exactly 20 decimal digits that fit in 64 bits.
inline bool parse_pad20(std::string_view s, std::uint64_t& out) {
  if (s.size() != 20) return false;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}
inline std::string segment_file_name(std::uint64_t first_index) {
  return "log-" + pad20(first_index) + ".seg";
}
inline std::string snapshot_file_name(std::uint64_t index, std::uint64_t term) {
  return "snap-" + pad20(index) + "-" + pad20(term) + ".snap";
}
inline bool parse_segment_file_name(std::string_view name, std::uint64_t& first_index) {
  return name.size() == 28 && name.substr(0, 4) == "log-" && name.substr(24) == ".seg" &&
         parse_pad20(name.substr(4, 20), first_index);
}
inline bool parse_snapshot_file_name(std::string_view name, std::uint64_t& index,
                                     std::uint64_t& term) {
  return name.size() == 51 && name.substr(0, 5) == "snap-" && name[25] == '-' &&
         name.substr(46) == ".snap" && parse_pad20(name.substr(5, 20), index) &&
         parse_pad20(name.substr(26, 20), term);
}
inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

/// Whole file into `out`; 0 or an errno value.
inline int read_whole_file(const std::string& path, std::string& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return err;
  }
  out.assign(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, &out[got], out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return err;
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  out.resize(got);
  ::close(fd);
  return 0;
}

/// Names in `dir` except "." and ".."; 0 or an errno value.
inline int list_directory(const std::string& dir, std::vector<std::string>& names) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return errno;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d);
    if (e == nullptr) {
      const int err = errno;
      ::closedir(d);
      return err;
    }
    const std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
}

/// The default FileSystem: the POSIX calls.
class PosixFileSystem : public FileSystem {
 public:
  int open(const std::string& path, Mode mode, int& fd) override {
    int flags = O_CLOEXEC;
    switch (mode) {
      case Mode::Write: flags |= O_WRONLY | O_NOFOLLOW; break;
      case Mode::Create: flags |= O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW; break;
      case Mode::Directory: flags |= O_RDONLY | O_DIRECTORY; break;
      case Mode::Lock: flags |= O_RDWR | O_CREAT | O_NOFOLLOW; break;
    }
    fd = ::open(path.c_str(), flags, kFilePermissions);
    if (fd < 0) return errno;
    if (mode != Mode::Lock) return 0;
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
#ifdef F_OFD_SETLK
    const int command = F_OFD_SETLK;  // per open file: also catches a second open in-process
#else
    const int command = F_SETLK;
#endif
    if (::fcntl(fd, command, &lock) == 0) return 0;
    const int err = errno == EACCES ? EAGAIN : errno;
    ::close(fd);
    fd = -1;
    return err;
  }
  int close(int fd) override { return ::close(fd) == 0 ? 0 : errno; }
  int write(int fd, std::uint64_t offset, std::string_view data) override {
    while (!data.empty()) {
      const ssize_t n = ::pwrite(fd, data.data(), std::min(data.size(), kMaxWriteChunk),
                                 static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno;
      if (n == 0) return EIO;
      data.remove_prefix(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
    return 0;
  }
  int truncate(int fd, std::uint64_t size) override {
    return ::ftruncate(fd, static_cast<off_t>(size)) == 0 ? 0 : errno;
  }
  // Never retried, not even on EINTR: after a failed fsync the dirty pages may be gone.
  int sync(int fd) override { return ::fdatasync(fd) == 0 ? 0 : errno; }
  int sync_directory(int fd) override { return ::fsync(fd) == 0 ? 0 : errno; }
  int read(const std::string& path, std::string& out) override {
    return read_whole_file(path, out);
  }
  int list(const std::string& dir, std::vector<std::string>& names) override {
    return list_directory(dir, names);
  }
  int rename(const std::string& from, const std::string& to) override {
    return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
  }
  int remove(const std::string& path) override {
    return ::unlink(path.c_str()) == 0 ? 0 : errno;
  }
  int make_directory(const std::string& path) override {
    return ::mkdir(path.c_str(), kDirectoryPermissions) == 0 ? 0 : errno;
  }
  int status(int fd, Status& out) override {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return errno;
    out.owner = static_cast<std::uint32_t>(st.st_uid);
    out.permissions = static_cast<std::uint32_t>(st.st_mode) & 07777u;
    return 0;
  }
  int set_permissions(int fd, std::uint32_t permissions) override {
    return ::fchmod(fd, static_cast<mode_t>(permissions)) == 0 ? 0 : errno;
  }
};

inline void check_magic_and_version(std::string_view buf, std::string_view magic,
                                    const std::string& file, const char* kind,
                                    std::uint32_t newest = kStorageFormatVersion) {
  if (buf.size() < kMagicBytes + 4)
    throw corrupt(file, buf.size(), std::string("the file is too short to be a ") + kind);
  if (buf.substr(0, kMagicBytes) != magic)
    throw corrupt(file, 0, std::string("not a ") + kind + " (bad magic)");
  const std::uint32_t version = get_u32(buf.data() + kMagicBytes);
  if (version > newest)
    throw StorageError("IOERR " + file + " byte offset " + std::to_string(kMagicBytes) +
                       ": format version " + std::to_string(version) +
                       " is newer than this program's (" + std::to_string(newest) +
                       "). Run the newer program on this data directory.");
  if (version == 0) throw corrupt(file, kMagicBytes, "format version 0 is not valid");
}

/// Checks the CRC-32C in the last 4 bytes of a small file against everything before it.
inline void check_trailing_crc(std::string_view buf, const std::string& file) {
  if (buf.size() < kMagicBytes + 8) throw corrupt(file, buf.size(), "the file is truncated");
  const std::size_t at = buf.size() - 4;
  if (crc32c(buf.data(), at) != get_u32(buf.data() + at))
    throw corrupt(file, at, "checksum mismatch");
}

inline std::string encode_hard_state(const HardState& hs) {
  std::string out(kHardStateMagic);
  put_u32(out, kStorageFormatVersion);
  put_u64(out, hs.term);
  put_string(out, hs.vote);
  put_u32(out, crc32c(out.data(), out.size()));
  return out;
}

inline HardState decode_hard_state(std::string_view buf, const std::string& file) {
  check_magic_and_version(buf, kHardStateMagic, file, "hard state file");
  check_trailing_crc(buf, file);
  ByteReader r{buf.substr(0, buf.size() - 4), kMagicBytes + 4};
  HardState hs;
  hs.term = r.u64();
  hs.vote = r.str();
  if (!r.ok || r.pos != r.buf.size())
    throw corrupt(file, r.pos, "the hard state fields do not fill the file");
  return hs;
}

inline std::string encode_identity(const Identity& id) {
  std::string out(kIdentityMagic);
  put_u32(out, kStorageFormatVersion);
  put_string(out, id.node_id);
  put_string(out, id.server_id);
  put_string(out, id.cluster_id);
  put_u32(out, static_cast<std::uint32_t>(id.initial_config.members.size()));
  for (const Member& m : id.initial_config.members) {
    put_string(out, m.id);
    put_string(out, m.address);
    put_string(out, m.server_id);
    out.push_back(m.voter ? '\1' : '\0');
  }
  put_u32(out, crc32c(out.data(), out.size()));
  return out;
}

inline Identity decode_identity(std::string_view buf, const std::string& file) {
  check_magic_and_version(buf, kIdentityMagic, file, "identity file");
  check_trailing_crc(buf, file);
  ByteReader r{buf.substr(0, buf.size() - 4), kMagicBytes + 4};
  Identity id;
  id.node_id = r.str();
  id.server_id = r.str();
  id.cluster_id = r.str();
  const std::uint32_t members = r.u32();
  for (std::uint32_t i = 0; i < members && r.ok; ++i) {
    Member m;
    m.id = r.str();
    m.address = r.str();
    m.server_id = r.str();
    const std::uint8_t voter = r.u8();
    if (voter > 1) r.ok = false;
    m.voter = voter == 1;
    if (r.ok) id.initial_config.upsert(std::move(m));
  }
  if (!r.ok || r.pos != r.buf.size() || id.node_id.empty() ||
      id.initial_config.members.size() != members)
    throw corrupt(file, r.pos, "the identity fields do not fill the file");
  return id;
}

inline std::string encode_mark_slot(std::uint64_t seq, std::uint64_t mark) {
  std::string out;
  put_u64(out, seq);
  put_u64(out, mark);
  put_u32(out, crc32c(out.data(), out.size()));
  return out;
}

/// Where the slot for sequence number `seq` lies in a segment.
inline std::uint64_t mark_slot_offset(std::uint64_t seq) {
  return kSegmentFixedBytes + (seq % 2) * kMarkSlotBytes;
}

/// A new segment's header: both slots hold the end of the header as the mark.
inline std::string encode_segment_header(std::uint64_t first_index) {
  std::string out(kSegmentMagic);
  put_u32(out, kSegmentFormatVersion);
  put_u64(out, first_index);
  put_u32(out, crc32c(out.data(), out.size()));
  out += encode_mark_slot(0, kSegmentHeaderBytes);
  out += encode_mark_slot(1, kSegmentHeaderBytes);
  return out;
}

/// The segment's first index and format version, from its header.
inline std::uint64_t decode_segment_header(std::string_view buf, const std::string& file,
                                           std::uint32_t& version) {
  check_magic_and_version(buf, kSegmentMagic, file, "log segment", kSegmentFormatVersion);
  if (buf.size() < kSegmentFixedBytes)
    throw corrupt(file, buf.size(), "the segment header is truncated");
  if (crc32c(buf.data(), kSegmentFixedBytes - 4) != get_u32(buf.data() + kSegmentFixedBytes - 4))
    throw corrupt(file, kSegmentFixedBytes - 4, "segment header checksum mismatch");
  version = get_u32(buf.data() + kMagicBytes);
  if (version >= 2 && buf.size() < kSegmentHeaderBytes)
    throw corrupt(file, buf.size(), "the segment header is truncated");
  return get_u64(buf.data() + kMagicBytes + 4);
}

inline std::size_t segment_header_bytes(std::uint32_t version) {
  return version >= 2 ? kSegmentHeaderBytes : kSegmentFixedBytes;
}

struct SyncedMark {
  std::uint64_t seq = 0;
  std::uint64_t end = 0;  // the bytes before it are durable
};

/// The synced mark in a format 2 segment header: the valid slot with the higher sequence
/// number. Empty when both slots are damaged.
inline std::optional<SyncedMark> decode_synced_mark(std::string_view header) {
  std::optional<SyncedMark> mark;
  for (std::uint64_t slot = 0; slot < 2; ++slot) {
    const char* p = header.data() + mark_slot_offset(slot);
    const std::uint64_t seq = get_u64(p);
    if (crc32c(p, 16) != get_u32(p + 16) || seq % 2 != slot) continue;
    if (!mark || seq > mark->seq) mark = SyncedMark{seq, get_u64(p + 8)};
  }
  return mark;
}

inline std::size_t record_size(const LogEntry& e) {
  return kRecordFrameBytes + kRecordFixedBytes + e.payload.size();
}

inline std::uint32_t record_crc(const char* frame, std::size_t body_size) {
  return crc32c(frame + kRecordFrameBytes, body_size, crc32c(frame, 4));
}

inline void append_record(std::string& out, const LogEntry& e) {
  const std::size_t at = out.size();
  put_u32(out, static_cast<std::uint32_t>(kRecordFixedBytes + e.payload.size()));
  put_u32(out, 0);  // the CRC, filled in below
  put_u64(out, e.index);
  put_u64(out, e.term);
  out.push_back(static_cast<char>(e.type));
  put_u64(out, static_cast<std::uint64_t>(e.timestamp_ms));
  out.append(e.payload);
  const std::uint32_t crc = record_crc(out.data() + at, out.size() - at - kRecordFrameBytes);
  for (int i = 0; i < 4; ++i)
    out[at + 4 + static_cast<std::size_t>(i)] = static_cast<char>((crc >> (8 * i)) & 0xFFu);
}

/// Why the record at `offset` is not valid; nullptr when it is.
inline const char* record_problem(std::string_view buf, std::size_t offset) {
  const std::size_t rest = buf.size() - offset;
  if (rest < kRecordFrameBytes) return "truncated record frame";
  const std::uint32_t len = get_u32(buf.data() + offset);
  if (len < kRecordFixedBytes || len > rest - kRecordFrameBytes) return "bad record length";
  if (record_crc(buf.data() + offset, len) != get_u32(buf.data() + offset + 4))
    return "record checksum mismatch";
  return nullptr;
}

inline bool valid_entry_type(EntryType t) {
  return t == EntryType::Command || t == EntryType::Noop || t == EntryType::Config;
}

/// Format 1 segments (no synced mark): whether a valid record of the log starts at or after
/// `from`, in a segment whose record at `from - 1` should have held `next_index`. That tells a
/// torn write (the damage is the end of the data) from corruption (valid records follow it).
/// Only a position whose index field could belong to the log is checksummed, so a tail of
/// garbage costs one pass, not one pass per byte.
inline bool valid_record_follows(std::string_view buf, std::size_t from, std::uint64_t next_index) {
  constexpr std::size_t kSmallest = kRecordFrameBytes + kRecordFixedBytes;
  const std::uint64_t most = next_index + (buf.size() - std::min(from, buf.size())) / kSmallest;
  for (std::size_t p = from; p + kSmallest <= buf.size(); ++p) {
    const std::uint64_t index = get_u64(buf.data() + p + kRecordFrameBytes);
    const auto type = static_cast<EntryType>(static_cast<unsigned char>(buf[p + kRecordFrameBytes + 16]));
    if (index < next_index || index > most || !valid_entry_type(type)) continue;
    if (record_problem(buf, p) == nullptr) return true;
  }
  return false;
}

inline LogEntry decode_record(std::string_view buf, std::size_t offset) {
  const char* b = buf.data() + offset + kRecordFrameBytes;
  const std::uint32_t len = get_u32(buf.data() + offset);
  LogEntry e;
  e.index = get_u64(b);
  e.term = get_u64(b + 8);
  e.type = static_cast<EntryType>(static_cast<unsigned char>(b[16]));
  e.timestamp_ms = static_cast<std::int64_t>(get_u64(b + 17));
  e.payload.assign(b + kRecordFixedBytes, len - kRecordFixedBytes);
  return e;
}

inline std::string encode_snapshot_header(const SnapshotMeta& meta, std::string_view data) {
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", static_cast<unsigned>(crc32c(data.data(), data.size())));
  return std::string(kSnapshotPrefix) + std::to_string(kStorageFormatVersion) + " index " +
         std::to_string(meta.index) + " term " + std::to_string(meta.term) + " length " +
         std::to_string(data.size()) + " crc32c " + crc + "\n";
}

/// The header of a snapshot received in chunks: the same line with every number 20 digits
/// wide (decode_snapshot reads leading zeros), so that its length is known before the data
/// is: the chunks are written behind it as they arrive, and the header last.
inline std::string encode_received_snapshot_header(std::uint64_t index, std::uint64_t term, std::uint64_t length,
                                                   std::uint32_t crc) {
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(crc));
  return std::string(kSnapshotPrefix) + std::to_string(kStorageFormatVersion) + " index " + pad20(index) +
         " term " + pad20(term) + " length " + pad20(length) + " crc32c " + hex + "\n";
}
inline const std::size_t kReceivedSnapshotHeaderBytes = encode_received_snapshot_header(0, 0, 0, 0).size();

/// Checks a whole snapshot file and leaves only its data in `buf`; returns the index and
/// term its header names. (Also how `-l` reads a snapshot copied out of a data directory.)
inline std::pair<std::uint64_t, std::uint64_t> decode_snapshot(std::string& buf, const std::string& file) {
  const std::size_t eol = buf.find('\n');
  if (buf.compare(0, kSnapshotPrefix.size(), kSnapshotPrefix) != 0 || eol == std::string::npos || eol > 256)
    throw corrupt(file, 0, "not a raft.hpp snapshot (its first line is not the snapshot header)");
  // "<version> index <i> term <t> length <n> crc32c <hex>"
  std::string_view line(buf.data() + kSnapshotPrefix.size(), eol - kSnapshotPrefix.size());
  std::vector<std::string_view> f;
  while (!line.empty()) {
    const std::size_t sp = line.find(' ');
    f.push_back(line.substr(0, sp));
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  }
  std::uint64_t version = 0, h_index = 0, h_term = 0, size = 0, crc = 0;
  if (f.size() != 9 || f[1] != "index" || f[3] != "term" || f[5] != "length" || f[7] != "crc32c" ||
      !parse_number(f[0], version) || !parse_number(f[2], h_index) || !parse_number(f[4], h_term) ||
      !parse_number(f[6], size) || !parse_number(f[8], crc, 16))
    throw corrupt(file, kSnapshotPrefix.size(), "the snapshot header line is malformed");
  if (version > kStorageFormatVersion)
    throw StorageError("ERR " + file + " was written by a newer format version (" + std::to_string(version) +
                       "); this build reads version " + std::to_string(kStorageFormatVersion) + ". Use a newer build.");
  if (version == 0) throw corrupt(file, kSnapshotPrefix.size(), "format version 0 is not valid");
  if (size != buf.size() - eol - 1)
    throw corrupt(file, buf.size(),
                  "the header says " + std::to_string(size) + " bytes of data but the file holds " +
                      std::to_string(buf.size() - eol - 1));
  if (crc32c(buf.data() + eol + 1, size) != crc)
    throw corrupt(file, eol + 1, "snapshot data checksum mismatch");
  buf.erase(0, eol + 1);
  return {h_index, h_term};
}

/// The same, for a file in a data directory, whose name says which index and term it holds.
inline void decode_snapshot(std::string& buf, const std::string& file, std::uint64_t index,
                            std::uint64_t term) {
  if (decode_snapshot(buf, file) != std::make_pair(index, term))
    throw corrupt(file, kSnapshotPrefix.size(), "the header's index and term do not match the file name");
}

/// The implementation behind Storage. Methods that do I/O return false after recording the
/// failure (fail()); open() and create() turn a failure into a StorageError.
class StorageImpl {
 public:
  struct Segment {
    std::uint64_t first = 0;  // index of its first record, also in its name and header
    std::string path;
    std::vector<std::uint64_t> offsets;  // byte offset of each record
    std::uint64_t written = 0;           // bytes handed to the file system
    std::uint32_t version = kSegmentFormatVersion;  // 1: no synced mark
    std::uint64_t mark = 0;      // format 2: the synced mark last written to the header
    std::uint64_t mark_seq = 0;  // and the sequence number it was written with
    bool mark_dirty = false;     // the mark was written after the segment's last fdatasync
  };

  explicit StorageImpl(StorageOptions o) : opt(std::move(o)) {
    while (opt.dir.size() > 1 && opt.dir.back() == '/') opt.dir.pop_back();
    fs = opt.file_system ? opt.file_system : std::make_shared<PosixFileSystem>();
  }
  ~StorageImpl() {
    for (int fd : {active_fd, incoming_fd, lock_fd, dir_fd})
      if (fd >= 0) fs->close(fd);
  }
  StorageImpl(const StorageImpl&) = delete;
  StorageImpl& operator=(const StorageImpl&) = delete;

  StorageOptions opt;
  std::shared_ptr<FileSystem> fs;
  Identity identity;
  int dir_fd = -1;
  int lock_fd = -1;

  std::vector<Segment> segments;
  int active_fd = -1;         // segments.back(), open for appending
  bool active_dirty = false;  // records written since its last fdatasync
  std::string pending;        // records for the end of segments.back(), not yet written
  std::optional<HardState> pending_hard_state;
  std::uint64_t first_index = 1;
  std::uint64_t last_index = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> term_runs;  // (first index, term)

  std::uint64_t snap_index = 0;
  std::uint64_t snap_term = 0;
  std::string snap_path;

  // The snapshot being received (kIncomingSnapshotFile): open from its chunk at offset 0.
  int incoming_fd = -1;
  std::uint64_t incoming_index = 0;
  std::uint64_t incoming_term = 0;
  std::uint64_t incoming_size = 0;  // data bytes written behind the header
  bool incoming_intact = false;     // every chunk since offset 0 written, in order
  bool incoming_loaded = false;     // read back, checked and synced: install it by rename

  std::atomic<std::uint64_t> fsyncs{0};
  std::atomic<bool> failed{false};
  std::string failure;  // set once, before `failed` turns true

  std::string path(std::string_view name) const { return opt.dir + "/" + std::string(name); }

  bool fail(std::string why) {
    if (!failed.load(std::memory_order_relaxed)) {
      failure = std::move(why);
      failed.store(true, std::memory_order_release);
    }
    return false;
  }

  // The failure reaches clients (in -MISCONF replies), so it names a file by its place in
  // the data directory, never by its absolute path; the node's log line names the directory.
  std::string in_data_dir(const std::string& file) const {
    const std::string prefix = opt.dir + "/";
    if (file.compare(0, prefix.size(), prefix) == 0) return file.substr(prefix.size());
    return file == opt.dir ? "the data directory" : file;
  }

  bool io_fail(const std::string& operation, const std::string& file, int err) {
    std::string advice =
        err == ENOSPC || err == EDQUOT
            ? "The disk is full: free space, then restart the node; it recovers what is on disk."
            : "Check the disk (kernel log), then restart the node; it recovers what is on disk.";
    return fail("IOERR " + operation + " " + in_data_dir(file) + " failed: " + errno_text(err) +
                ". The storage refuses every later write (a failed write or fsync cannot be "
                "retried safely). " + advice);
  }

  [[noreturn]] void throw_failure() const { throw StorageError(failure); }

  bool write_all(int fd, std::uint64_t offset, std::string_view data, const std::string& file) {
    if (failed) return false;
    if (const int err = fs->write(fd, offset, data)) return io_fail("write to", file, err);
    return true;
  }

  // Never retried: after a failed fsync the dirty pages may be gone.
  bool sync_fd(int fd, const std::string& file, bool directory) {
    if (failed) return false;
    fsyncs.fetch_add(1, std::memory_order_relaxed);
    int err = 0;
    if (opt.fsync_hook)
      err = opt.fsync_hook(fd) == 0 ? 0 : errno;
    else
      err = directory ? fs->sync_directory(fd) : fs->sync(fd);
    if (err != 0) return io_fail(directory ? "fsync of directory" : "fdatasync of", file, err);
    return true;
  }

  bool sync_dir() { return sync_fd(dir_fd, opt.dir, true); }

  bool remove_durably(const std::string& file) {
    const int err = fs->remove(file);
    if (err != 0 && err != ENOENT) return io_fail("unlink of", file, err);
    return sync_dir();
  }

  // A file appears under its name only complete, and stays there once this returns true.
  bool rename_durably(const std::string& from, const std::string& to) {
    if (const int err = fs->rename(from, to)) return io_fail("rename to", to, err);
#ifdef RAFT_MUTANT_NO_DIR_FSYNC
    return true;  // mutant: the rename may be undone by a power cut
#else
    return sync_dir();
#endif
  }

  /// Creates a temporary file new, never writing through a symbolic or hard link planted at
  /// its name into another file. A stale one (left by an earlier failure, or planted) is
  /// unlinked and the create tried once more; if the name is taken again at once, it fails.
  bool create_temp(const std::string& temp, int& fd) {
    int err = fs->open(temp, FileSystem::Mode::Create, fd);
    if (err == EEXIST) {
      err = fs->remove(temp);
      if (err == 0 || err == ENOENT) err = fs->open(temp, FileSystem::Mode::Create, fd);
    }
    if (err == 0) return true;
    fd = -1;
    return io_fail("create of", temp, err);
  }

  /// Temp file, write, fdatasync, rename over `name`, fsync the directory.
  bool write_file_atomically(const std::string& name,
                             std::initializer_list<std::string_view> parts) {
    if (failed) return false;
    const std::string final_path = path(name);
    const std::string temp = final_path + std::string(kTempSuffix);
    int fd = -1;
    if (!create_temp(temp, fd)) return false;
    bool ok = true;
    std::uint64_t offset = 0;
    for (std::string_view part : parts) {
      ok = ok && write_all(fd, offset, part, temp);
      offset += part.size();
    }
    ok = ok && sync_fd(fd, temp, false);
    if (const int err = fs->close(fd); err != 0 && ok) return io_fail("close of", temp, err);
    return ok && rename_durably(temp, final_path);
  }

  void open_directory(bool create) {
    if (opt.dir.empty()) throw StorageError("ERR StorageOptions::dir is empty");
    if (create) make_directories();
    if (const int err = fs->open(opt.dir, FileSystem::Mode::Directory, dir_fd)) {
      dir_fd = -1;
      throw StorageError("IOERR cannot open data directory " + opt.dir + ": " + errno_text(err));
    }
    make_private();
    const std::string lock_path = path(kLockFile);
    if (const int err = fs->open(lock_path, FileSystem::Mode::Lock, lock_fd)) {
      lock_fd = -1;
      if (err == EAGAIN)
        throw StorageError("IOERR data directory " + opt.dir + " is in use by another node (" +
                           lock_path + " is locked: " + errno_text(err) +
                           "). Give each node its own data directory.");
      throw StorageError("IOERR cannot open " + lock_path + ": " + errno_text(err));
    }
  }

  // The directory (open as dir_fd) must be this user's own, and nobody else's to read: another
  // user could otherwise read the log, or change it under the node. Checked on the open
  // directory, so a rename of the path in between changes nothing.
  void make_private() {
    FileSystem::Status st;
    if (const int err = fs->status(dir_fd, st))
      throw StorageError("IOERR cannot stat data directory " + opt.dir + ": " + errno_text(err));
    const std::uint32_t me = static_cast<std::uint32_t>(::geteuid());
    if (st.owner != me)
      throw StorageError("IOERR data directory " + opt.dir + " is owned by uid " +
                         std::to_string(st.owner) + ", not by this process's user (uid " +
                         std::to_string(me) + "): refusing to use it. Run the node as uid " +
                         std::to_string(st.owner) + ", or give the directory to uid " +
                         std::to_string(me) + " (chown -R).");
    if ((st.permissions & ~kDirectoryPermissions & 0777u) == 0) return;
    const std::uint32_t tightened = st.permissions & ~0077u;
    if (const int err = fs->set_permissions(dir_fd, tightened))
      throw StorageError("IOERR cannot restrict the permissions of data directory " + opt.dir +
                         " to " + octal(tightened) + ": " + errno_text(err));
    if (opt.warn)
      opt.warn("data directory " + opt.dir + " was open to other users (mode " +
               octal(st.permissions) + "): tightened to " + octal(tightened));
  }

  static std::string octal(std::uint32_t permissions) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(permissions & 07777u));
    return buf;
  }

  // mkdir -p, then every level is made durable in its parent, those that existed too: a
  // create() that a crash interrupted may have made them without making them durable.
  void make_directories() {
    std::vector<std::string> parents;
    std::size_t pos = 0;
    while (pos != std::string::npos) {
      pos = opt.dir.find('/', pos + 1);
      const std::string sub = opt.dir.substr(0, pos);
      const int err = fs->make_directory(sub);
      if (err != 0 && err != EEXIST)
        throw StorageError("IOERR cannot create directory " + sub + ": " + errno_text(err));
      const std::size_t slash = sub.rfind('/');
      parents.push_back(slash == std::string::npos ? "." : slash == 0 ? "/" : sub.substr(0, slash));
    }
    for (const std::string& parent : parents) {
      int fd = -1;
      if (const int err = fs->open(parent, FileSystem::Mode::Directory, fd))
        throw StorageError("IOERR cannot open " + parent + ": " + errno_text(err));
      const bool ok = sync_fd(fd, parent, true);
      fs->close(fd);
      if (!ok) throw_failure();
    }
  }

  std::uint64_t term_at(std::uint64_t index) const {
    if (index >= first_index && index <= last_index && !term_runs.empty()) {
      auto it = std::upper_bound(
          term_runs.begin(), term_runs.end(), index,
          [](std::uint64_t i, const std::pair<std::uint64_t, std::uint64_t>& run) {
            return i < run.first;
          });
      if (it != term_runs.begin()) return std::prev(it)->second;
    }
    return index == snap_index ? snap_term : 0;
  }

  /// Whether the log (or the snapshot) holds the entry (index, term).
  bool holds(std::uint64_t index, std::uint64_t term) const {
    return index > 0 && index <= last_index && term_at(index) == term;
  }

  void note_term(std::uint64_t index, std::uint64_t term) {
    if (term_runs.empty() || term_runs.back().second != term) term_runs.emplace_back(index, term);
  }

  std::uint64_t active_end() const { return segments.back().written + pending.size(); }

  /// Hands the pending hard state, then the pending records, to the file system.
  bool flush_pending() {
    if (failed) return false;
    if (pending_hard_state) {
      if (!write_file_atomically(kHardStateFile, {encode_hard_state(*pending_hard_state)}))
        return false;
      pending_hard_state.reset();
    }
    if (!pending.empty()) {
      Segment& seg = segments.back();
      if (!write_all(active_fd, seg.written, pending, seg.path)) return false;
      seg.written += pending.size();
      pending.clear();
      active_dirty = true;
    }
    return true;
  }

  /// fdatasync of the active segment; it covers the mark written before it, too.
  bool sync_active() {
    Segment& seg = segments.back();
    if (!sync_fd(active_fd, seg.path, false)) return false;
    active_dirty = false;
    seg.mark_dirty = false;
    return true;
  }

  /// Writes the active segment's synced mark (durable with its next fdatasync) into the slot
  /// not holding the current mark. That slot is written only while the other is durable, so
  /// a crash can tear at most one of them.
  bool write_mark(std::uint64_t end) {
    Segment& seg = segments.back();
    if (seg.mark_dirty && !sync_active()) return false;
    const std::uint64_t seq = seg.mark_seq + 1;
    if (!write_all(active_fd, mark_slot_offset(seq), encode_mark_slot(seq, end), seg.path))
      return false;
    seg.mark = end;
    seg.mark_seq = seq;
    seg.mark_dirty = true;
    return true;
  }

  bool sync() {
    if (!flush_pending()) return false;
    if (!active_dirty) return true;
    if (!sync_active()) return false;
    // Only now may the mark cover those bytes; it reaches the disk with the next fdatasync.
    const Segment& seg = segments.back();
    return seg.version < 2 || write_mark(seg.written);
  }

  bool close_active() {
    if (active_fd < 0) return true;
    const int fd = active_fd;
    active_fd = -1;
    active_dirty = false;
    if (const int err = fs->close(fd)) return io_fail("close of", segments.back().path, err);
    return true;
  }

  // Before the next segment appears, the active one is sealed: its records and a mark at
  // their end are durable, so a segment that is not the last holds valid records up to its
  // mark and nothing after it counts.
  bool seal_active() {
    const Segment& seg = segments.back();
    if (active_dirty && !sync_active()) return false;
    if (seg.version >= 2 && seg.mark != seg.written && !write_mark(seg.written)) return false;
    if (seg.mark_dirty && !sync_active()) return false;
    return close_active();
  }

  bool create_segment(std::uint64_t first) {
    if (!flush_pending()) return false;
    if (active_fd >= 0 && !seal_active()) return false;
    const std::string final_path = path(segment_file_name(first));
    const std::string temp = final_path + std::string(kTempSuffix);
    int fd = -1;
    if (!create_temp(temp, fd)) return false;
    const std::string header = encode_segment_header(first);
    if (!write_all(fd, 0, header, temp) || !sync_fd(fd, temp, false) ||
        !rename_durably(temp, final_path)) {
      fs->close(fd);
      return false;
    }
    active_fd = fd;
    // An empty segment of format 1 is replaced by the new one of the same name.
    if (!segments.empty() && segments.back().first == first) segments.pop_back();
    if (segments.empty()) first_index = first;
    Segment seg;
    seg.first = first;
    seg.path = final_path;
    seg.written = header.size();
    seg.mark = header.size();
    seg.mark_seq = 1;
    segments.push_back(std::move(seg));
    return true;
  }

  bool append(const LogEntry& e) {
    if (e.payload.size() > UINT32_MAX - kRecordFixedBytes)
      return fail("ERR log entry " + std::to_string(e.index) + " has a payload of " +
                  std::to_string(e.payload.size()) + " bytes: the limit is 4 GiB");
    // A segment of an older format is never appended to: the next one starts instead.
    if (segments.empty() || segments.back().version < kSegmentFormatVersion ||
        (!segments.back().offsets.empty() &&
         active_end() + record_size(e) > opt.segment_bytes)) {
      if (!create_segment(e.index)) return false;
    }
    segments.back().offsets.push_back(active_end());
    append_record(pending, e);
    last_index = e.index;
    note_term(e.index, e.term);
    return pending.size() < kPendingFlushBytes || flush_pending();
  }

  // Later segments go newest first, then the segment holding the cut is truncated and the
  // truncation made durable before anything is written over the old bytes: a crash at any
  // point leaves a prefix of the old log, never old and new records mixed.
  bool cut_suffix(std::uint64_t cut) {
    std::size_t k = segments.size() - 1;
    while (segments[k].first > cut) --k;
    const std::uint64_t offset = segments[k].offsets[cut - segments[k].first];
    if (k + 1 == segments.size() && offset >= segments[k].written) {
      pending.resize(offset - segments[k].written);  // the cut records never left memory
    } else {
      pending.clear();
      if (!flush_pending()) return false;
      while (segments.size() > k + 1) {
        if (!close_active() || !remove_durably(segments.back().path)) return false;
        segments.pop_back();
      }
      Segment& seg = segments[k];
      if (active_fd < 0) {
        if (const int err = fs->open(seg.path, FileSystem::Mode::Write, active_fd)) {
          active_fd = -1;
          return io_fail("open of", seg.path, err);
        }
      }
      // The mark comes down first, durably: a truncation that reached the disk before it
      // would leave the segment shorter than its mark, which reads as lost synced data. (The
      // other slot may still hold a mark above the cut: it is never read again, as it holds
      // the lower sequence number until it is overwritten, and a torn overwrite of it leaves
      // this one.)
      if (seg.version >= 2 && seg.mark > offset && (!write_mark(offset) || !sync_active()))
        return false;
      if (const int err = fs->truncate(active_fd, offset)) return io_fail("truncate of", seg.path, err);
      if (!sync_active()) return false;
      seg.written = offset;
    }
    segments[k].offsets.resize(cut - segments[k].first);
    last_index = cut - 1;
    while (!term_runs.empty() && term_runs.back().first >= cut) term_runs.pop_back();
    return true;
  }

  bool close_incoming() {
    incoming_intact = incoming_loaded = false;
    if (incoming_fd < 0) return true;
    const int err = fs->close(incoming_fd);
    incoming_fd = -1;
    return err == 0 || io_fail("close of", path(kIncomingSnapshotFile), err);
  }

  // Not synced here: the offset a transfer reached is not durable state (a crash starts it
  // again, and open() deletes the file). load_received_snapshot syncs the whole file.
  bool write_snapshot_chunk(const SnapshotChunk& c) {
    if (c.offset == 0) {
      if (!close_incoming() || !create_temp(path(kIncomingSnapshotFile), incoming_fd)) return false;
      incoming_index = c.index;
      incoming_term = c.term;
      incoming_size = 0;
      incoming_intact = true;
    }
    incoming_loaded = false;
    if (incoming_fd < 0 || !incoming_intact || c.index != incoming_index || c.term != incoming_term ||
        c.offset != incoming_size) {
      incoming_intact = false;  // not the next bytes of this file: loading it says so
      return true;
    }
    if (!write_all(incoming_fd, kReceivedSnapshotHeaderBytes + c.offset, c.data, path(kIncomingSnapshotFile)))
      return false;
    incoming_size += c.data.size();
    return true;
  }

  bool load_received_snapshot(const ReceivedSnapshot& r, Snapshot& out, std::string& problem) {
    problem.clear();
    out.meta = r.meta;
    out.data.clear();
    if (failed) return false;
    const std::string file = path(kIncomingSnapshotFile);
    // `problem` is logged with the refusal: it names the file by its place in the directory.
    const std::string name = kIncomingSnapshotFile;
    if (incoming_fd < 0 || !incoming_intact || incoming_index != r.meta.index || incoming_term != r.meta.term) {
      problem = "its chunks did not all reach " + name;
      return true;
    }
    if (incoming_size != r.size) {
      problem = name + " holds " + std::to_string(incoming_size) + " bytes of it, " + std::to_string(r.size) +
                " arrived";
      return true;
    }
    const std::string header = encode_received_snapshot_header(r.meta.index, r.meta.term, r.size, r.crc32c);
    if (!write_all(incoming_fd, 0, header, file)) return false;
#ifndef RAFT_MUTANT_RECEIVED_SNAPSHOT_UNSYNCED
    if (!sync_fd(incoming_fd, file, false)) return false;  // before the rename can make it the snapshot
#endif
    std::string buf;
    if (const int err = fs->read(file, buf)) {
      problem = "cannot read " + name + " back: " + errno_text(err);
      return true;
    }
    try {
      decode_snapshot(buf, name, r.meta.index, r.meta.term);  // the length and the CRC-32C
    } catch (const StorageError& e) {
      problem = e.what();
      const std::size_t advice = problem.find(corruption_advice());
      if (advice != std::string::npos) problem.erase(advice);
      return true;
    }
    out.data = std::move(buf);
    incoming_loaded = true;
    return true;
  }

  // from_leader: a PersistBatch snapshot, which may be the received file read back.
  bool write_snapshot_file(const Snapshot& snap, bool from_leader) {
    const std::string name = snapshot_file_name(snap.meta.index, snap.meta.term);
    if (from_leader && incoming_loaded && incoming_index == snap.meta.index && incoming_term == snap.meta.term &&
        incoming_size == snap.data.size()) {
      // The received file, read back, checked and synced: renamed into place, as a file that
      // write_file_atomically wrote, and not written a second time.
      if (!close_incoming() || !rename_durably(path(kIncomingSnapshotFile), path(name))) return false;
    } else if (!write_file_atomically(name, {encode_snapshot_header(snap.meta, snap.data), snap.data})) {
      return false;
    }
    const std::string new_path = path(name);
    // Losing this unlink in a crash is harmless: open() removes superseded snapshots.
    if (!snap_path.empty() && snap_path != new_path) {
      const int err = fs->remove(snap_path);
      if (err != 0 && err != ENOENT) return io_fail("unlink of", snap_path, err);
    }
    snap_path = new_path;
    snap_index = snap.meta.index;
    snap_term = snap.meta.term;
    return true;
  }

  // Whole segments whose every entry is at or below `upto` go, oldest first; never the
  // segment being appended to.
  bool drop_prefix(std::uint64_t upto) {
    while (segments.size() > 1 && segments[1].first - 1 <= upto) {
      if (!remove_durably(segments.front().path)) return false;
      segments.erase(segments.begin());
    }
    if (!segments.empty()) first_index = segments.front().first;
    while (term_runs.size() > 1 && term_runs[1].first <= first_index)
      term_runs.erase(term_runs.begin());
    return true;
  }

  // The snapshot from a PersistBatch. When the log holds its last entry, the log after it is
  // kept (Raft §7) and only what it covers may go, as for a snapshot the node takes. Else it
  // replaces the log: the snapshot is made durable first, then the whole log goes, newest
  // segment first (a crash leaves a prefix of the old log beside the new snapshot, which
  // open() drops, as it cannot hold the snapshot's last entry).
  bool install_snapshot(const Snapshot& snap) {
    const SnapshotMeta& m = snap.meta;
    if (m.index == 0 || m.index < snap_index)
      return fail("ERR a PersistBatch snapshot at index " + std::to_string(m.index) +
                  " does not follow the snapshot on disk at index " +
                  std::to_string(snap_index));
    if (holds(m.index, m.term)) return save_snapshot(snap, m.index, true);
    pending.clear();  // the whole log is replaced: its unwritten records need not be written
    if (!flush_pending() || !write_snapshot_file(snap, true)) return false;
    while (!segments.empty()) {
      if (!close_active() || !remove_durably(segments.back().path)) return false;
      segments.pop_back();
    }
    first_index = m.index + 1;
    last_index = m.index;
    term_runs.clear();
    return true;
  }

  bool save_snapshot(const Snapshot& snap, std::uint64_t compact_to, bool from_leader = false) {
    if (failed) return false;
    const SnapshotMeta& m = snap.meta;
    if (m.index <= snap_index) return true;
    if (m.index > last_index || (m.index >= first_index && term_at(m.index) != m.term))
      return fail("ERR a snapshot at index " + std::to_string(m.index) + " term " +
                  std::to_string(m.term) + " does not match the log (last index " +
                  std::to_string(last_index) + ", term there " +
                  std::to_string(term_at(m.index)) + ")");
    return flush_pending() && write_snapshot_file(snap, from_leader) &&
           drop_prefix(std::min(compact_to, m.index));
  }

  bool write(const PersistBatch& b) {
    if (failed) return false;
    if (b.snapshot && !install_snapshot(*b.snapshot)) return false;
    for (const SnapshotChunk& c : b.snapshot_chunks)
      if (!write_snapshot_chunk(c)) return false;
    if (b.hard_state) pending_hard_state = *b.hard_state;
    if (b.entries.empty()) return true;
    const auto batch_error = [&b](const std::string& what) {
      return "ERR PersistBatch seq " + std::to_string(b.seq) + ": " + what;
    };
    for (std::size_t i = 0; i < b.entries.size(); ++i) {
      const LogEntry& e = b.entries[i];
      if (!valid_entry_type(e.type))
        return fail(batch_error("entry " + std::to_string(e.index) + " has an unknown type"));
      if (i > 0 && (e.index != b.entries[i - 1].index + 1 || e.term < b.entries[i - 1].term))
        return fail(batch_error(
            "entries are not contiguous with non-decreasing terms at index " +
            std::to_string(e.index)));
    }
    const std::uint64_t start = b.entries.front().index;
    if (start <= snap_index || start > last_index + 1)
      return fail(batch_error("entry index " + std::to_string(start) +
                              " does not fit the log (snapshot index " +
                              std::to_string(snap_index) + ", last index " +
                              std::to_string(last_index) + ")"));
    if (b.entries.front().term < term_at(start - 1))
      return fail(batch_error("entry " + std::to_string(start) + " has term " +
                              std::to_string(b.entries.front().term) + ", below the term " +
                              std::to_string(term_at(start - 1)) + " of the entry before it"));
    // Entries the log holds already (same index and term: by Log Matching the same entries)
    // are skipped, so durable entries are never deleted to be written again.
    std::size_t i = 0;
    while (i < b.entries.size() && holds(b.entries[i].index, b.entries[i].term)) ++i;
    if (i < b.entries.size() && b.entries[i].index <= last_index &&
        !cut_suffix(b.entries[i].index))
      return false;
    for (; i < b.entries.size(); ++i)
      if (!append(b.entries[i])) return false;
    return true;
  }

  void create(Identity id) {
    open_directory(true);
    std::vector<std::string> names;
    if (const int err = fs->list(opt.dir, names))
      throw StorageError("IOERR cannot list " + opt.dir + ": " + errno_text(err));
    for (const std::string& name : names) {
      std::uint64_t a = 0, b = 0;
      if (name == kIdentityFile)
        throw StorageError("IOERR " + opt.dir +
                           " already holds a data directory: open it instead of creating it");
      if (parse_segment_file_name(name, a) || parse_snapshot_file_name(name, a, b))
        throw StorageError("IOERR " + opt.dir + " holds " + name +
                           " but no identity file: refusing to create a data directory over "
                           "it. Move those files away or choose another directory.");
    }
    if (id.node_id.empty()) throw StorageError("ERR Identity::node_id is empty");
    if (id.server_id.empty()) id.server_id = random_id128();
    // The identity file goes last: it is what marks the directory as complete.
    if (!write_file_atomically(kHardStateFile, {encode_hard_state(HardState{})}) ||
        !write_file_atomically(kIdentityFile, {encode_identity(id)}))
      throw_failure();
    identity = std::move(id);
    for (const std::string& name : names)
      if (ends_with(name, kTempSuffix)) fs->remove(path(name));
  }

  void recover(Recovered& out);
};

inline void StorageImpl::recover(Recovered& out) {
  out = Recovered{};
  open_directory(false);

  std::string buf;
  const std::string identity_path = path(kIdentityFile);
  if (const int err = fs->read(identity_path, buf))
    throw StorageError(err == ENOENT ? "IOERR " + opt.dir +
                                           " holds no identity file: it is not a data directory "
                                           "(Storage::create makes one)"
                                     : "IOERR cannot read " + identity_path + ": " +
                                           errno_text(err));
  identity = decode_identity(buf, identity_path);
  out.identity = identity;

  const std::string hard_state_path = path(kHardStateFile);
  if (const int err = fs->read(hard_state_path, buf))
    throw err == ENOENT ? corrupt(hard_state_path, 0, "the hard state file is missing")
                        : StorageError("IOERR cannot read " + hard_state_path + ": " +
                                       errno_text(err));
  out.hard_state = decode_hard_state(buf, hard_state_path);

  std::vector<std::string> names;
  if (const int err = fs->list(opt.dir, names))
    throw StorageError("IOERR cannot list " + opt.dir + ": " + errno_text(err));
  std::map<std::uint64_t, std::string> segment_names;
  std::vector<std::pair<std::pair<std::uint64_t, std::uint64_t>, std::string>> snapshots;
  std::vector<std::string> leftovers;
  for (const std::string& name : names) {
    std::uint64_t a = 0, b = 0;
    if (ends_with(name, kTempSuffix))
      leftovers.push_back(name);
    else if (parse_segment_file_name(name, a))
      segment_names.emplace(a, name);
    else if (parse_snapshot_file_name(name, a, b))
      snapshots.push_back({{a, b}, name});
  }

  // The newest snapshot. It became visible by rename, so it is complete: damage is
  // corruption, and falling back to an older one could silently lose acknowledged entries.
  std::sort(snapshots.begin(), snapshots.end());
  if (!snapshots.empty()) {
    const auto& [index_term, name] = snapshots.back();
    snap_path = path(name);
    if (const int err = fs->read(snap_path, buf))
      throw StorageError("IOERR cannot read " + snap_path + ": " + errno_text(err));
    decode_snapshot(buf, snap_path, index_term.first, index_term.second);
    if (index_term.first == 0) throw corrupt(snap_path, 12, "a snapshot at index 0");
    snap_index = index_term.first;
    snap_term = index_term.second;
    out.snapshot = Snapshot{SnapshotMeta{snap_index, snap_term, {}}, std::move(buf)};
    buf = std::string();
  }

  // The segments, in order: contiguous, terms non-decreasing, valid up to their synced marks,
  // damage after that only as a torn tail of the last one. Each byte is read once.
  std::uint64_t next_index = 0;
  std::uint64_t previous_term = 0;
  std::optional<std::uint64_t> term_at_snapshot;
  std::size_t torn_offset = 0;
  const char* torn_reason = nullptr;
  std::uint64_t torn_file_size = 0;
  std::size_t seen = 0;
  for (const auto& [first, name] : segment_names) {
    const bool last = ++seen == segment_names.size();
    const std::string seg_path = path(name);
    if (const int err = fs->read(seg_path, buf))
      throw StorageError("IOERR cannot read " + seg_path + ": " + errno_text(err));
    Segment seg;
    const std::uint64_t header_first = decode_segment_header(buf, seg_path, seg.version);
    if (header_first != first)
      throw corrupt(seg_path, kMagicBytes + 4,
                    "the header says the segment starts at index " +
                        std::to_string(header_first) + " but its name says " +
                        std::to_string(first));
    if (first == 0) throw corrupt(seg_path, kMagicBytes + 4, "a segment starting at index 0");
    if (!segments.empty() && first != next_index)
      throw corrupt(seg_path, 0,
                    "the segment starts at index " + std::to_string(first) +
                        " but the previous segment " + segments.back().path + " ends at index " +
                        std::to_string(next_index - 1) +
                        (first > next_index ? ": a segment is missing" : ": segments overlap"));
    next_index = first;
    seg.first = first;
    seg.path = seg_path;
    std::size_t offset = segment_header_bytes(seg.version);
    // `synced`: the bytes known durable, which must hold valid records. Format 1 has no mark:
    // all of a segment that is not the last, none of the last.
    std::uint64_t synced = last ? offset : buf.size();
    if (seg.version >= 2) {
      const std::optional<SyncedMark> mark = decode_synced_mark(buf);
      if (!mark) throw corrupt(seg_path, kSegmentFixedBytes, "both slots of the synced mark are damaged");
      if (mark->end < offset)
        throw corrupt(seg_path, mark_slot_offset(mark->seq), "the synced mark points into the header");
      synced = mark->end;
      seg.mark = mark->end;
      seg.mark_seq = mark->seq;
    }
    const std::string synced_text = "the synced mark at byte offset " + std::to_string(synced);
    // A segment that is not the last ends at its mark.
    const std::size_t end = seg.version >= 2 && !last ? std::min<std::uint64_t>(synced, buf.size())
                                                      : buf.size();
    while (offset < end) {
      const bool durable = offset < synced;
      const std::string_view in(buf.data(), durable ? std::min<std::uint64_t>(synced, end) : end);
      if (const char* problem = record_problem(in, offset)) {
        if (durable)
          throw corrupt(seg_path, offset,
                        std::string(problem) +
                            (seg.version >= 2 ? " before " + synced_text +
                                                    ", in bytes that were made durable"
                                              : " in a segment that is not the last"));
        if (seg.version < 2 && valid_record_follows(buf, offset + 1, next_index))
          throw corrupt(seg_path, offset, std::string(problem) + ", and valid records follow it");
        torn_offset = offset;
        torn_reason = problem;
        torn_file_size = buf.size();
        break;
      }
      LogEntry e = decode_record(buf, offset);
      if (e.index != next_index)
        throw corrupt(seg_path, offset,
                      "the record holds index " + std::to_string(e.index) + " where " +
                          std::to_string(next_index) + " was expected");
      if (!valid_entry_type(e.type))
        throw corrupt(seg_path, offset + kRecordFrameBytes + 16, "unknown entry type");
      if (e.term < previous_term)
        throw corrupt(seg_path, offset,
                      "entry " + std::to_string(e.index) + " has term " +
                          std::to_string(e.term) + ", below the previous entry's term " +
                          std::to_string(previous_term));
      previous_term = e.term;
      note_term(e.index, e.term);
      if (e.index == snap_index) term_at_snapshot = e.term;
      seg.offsets.push_back(offset);
      offset += kRecordFrameBytes + get_u32(buf.data() + offset);
      ++next_index;
      if (e.index > snap_index) out.entries.push_back(std::move(e));
    }
    if (offset < synced)
      throw corrupt(seg_path, offset,
                    "the file ends before " + synced_text +
                        ": records that were made durable are missing");
    seg.written = offset;
    segments.push_back(std::move(seg));
  }
  buf = std::string();

  // The log against the snapshot (a crash can interrupt the install of a leader's snapshot,
  // which replaces the whole log when the log does not hold the snapshot's last entry).
  bool discard_log = false;
  if (!segments.empty()) {
    const std::uint64_t first = segments.front().first;
    const std::uint64_t last = next_index - 1;
    const std::string& first_path = segments.front().path;
    if (snap_index == 0 && first != 1)
      throw corrupt(first_path, 0,
                    "the log starts at index " + std::to_string(first) +
                        " but there is no snapshot: the snapshot or the earlier segments are "
                        "missing");
    if (first > snap_index + 1)
      throw corrupt(first_path, 0,
                    "the log starts at index " + std::to_string(first) + " but the snapshot " +
                        snap_path + " ends at index " + std::to_string(snap_index) +
                        ": the entries between are missing");
    if (snap_index > 0 && last < snap_index) {
      discard_log = true;
      out.notes.push_back("removed the log (indexes " + std::to_string(first) + " to " +
                          std::to_string(last) + "): the snapshot " + snap_path +
                          " covers it (a snapshot install was interrupted)");
    } else if (term_at_snapshot && *term_at_snapshot != snap_term) {
      discard_log = true;
      out.notes.push_back("removed the log (indexes " + std::to_string(first) + " to " +
                          std::to_string(last) + "): it has term " +
                          std::to_string(*term_at_snapshot) + " at index " +
                          std::to_string(snap_index) + " where the snapshot " + snap_path +
                          " has term " + std::to_string(snap_term) +
                          " (a snapshot install was interrupted)");
    } else if (!out.entries.empty() && out.entries.front().term < snap_term) {
      throw corrupt(first_path, 0,
                    "entry " + std::to_string(out.entries.front().index) + " has term " +
                        std::to_string(out.entries.front().term) + ", below the term " +
                        std::to_string(snap_term) + " of the snapshot " + snap_path);
    }
  }

  // Everything checked: now repair.
  if (discard_log) {
    while (!segments.empty()) {
      if (!remove_durably(segments.back().path)) throw_failure();
      segments.pop_back();
    }
    out.entries.clear();
    term_runs.clear();
  }
  if (!segments.empty()) {
    Segment& seg = segments.back();
    if (const int err = fs->open(seg.path, FileSystem::Mode::Write, active_fd)) {
      active_fd = -1;
      throw StorageError("IOERR cannot open " + seg.path + ": " + errno_text(err));
    }
    if (torn_reason != nullptr) {
      if (const int err = fs->truncate(active_fd, torn_offset)) io_fail("truncate of", seg.path, err);
      out.notes.push_back("cut the torn tail of " + seg.path + " at byte offset " +
                          std::to_string(torn_offset) + " (" +
                          std::to_string(torn_file_size - torn_offset) + " bytes, " +
                          torn_reason +
                          (seg.version >= 2 ? ", after the synced mark" : ", nothing valid after it") +
                          "): a write interrupted by a crash");
    }
  }
  for (std::size_t i = 0; i + 1 < snapshots.size(); ++i) {
    const std::string p = path(snapshots[i].second);
    if (const int err = fs->remove(p); err != 0 && err != ENOENT) io_fail("unlink of", p, err);
    out.notes.push_back("removed " + p + ": superseded by " + snap_path);
  }
  for (const std::string& name : leftovers) {
    const std::string p = path(name);
    if (const int err = fs->remove(p); err != 0 && err != ENOENT) io_fail("unlink of", p, err);
    out.notes.push_back("removed " + p + (name == kIncomingSnapshotFile
                                              ? ": a snapshot transfer interrupted by a stop or a crash"
                                              : ": a write interrupted by a crash"));
  }
  // What open() returns is made durable: after a crash of the process alone, unsynced
  // writes (records, a renamed hard state) are still in the page cache, where they were just
  // read, and the node is about to act on them. Then the mark may cover the whole log.
  if (!segments.empty()) {
    const Segment& seg = segments.back();
    if (!sync_active()) throw_failure();
    if (seg.version >= 2 && seg.mark != seg.written && !write_mark(seg.written)) throw_failure();
  }
  if (!sync_dir()) throw_failure();

  if (segments.empty()) {
    first_index = snap_index + 1;
    last_index = snap_index;
  } else {
    first_index = segments.front().first;
    last_index = next_index - 1;
  }
}

}  // namespace detail

inline std::string random_id128() {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int word = 0; word < 4; ++word) {
    std::uint32_t v = static_cast<std::uint32_t>(rd());
    for (int i = 0; i < 8; ++i, v >>= 4) out.push_back(kHex[v & 0xFu]);
  }
  return out;
}

inline Storage::Storage() = default;
inline Storage::Storage(Storage&&) noexcept = default;
inline Storage& Storage::operator=(Storage&&) noexcept = default;
inline Storage::~Storage() = default;

inline bool Storage::exists(const std::string& dir) {
  struct stat st {};
  return ::stat((dir + "/" + detail::kIdentityFile).c_str(), &st) == 0;
}

inline Storage Storage::create(StorageOptions options, Identity identity) {
  Storage s;
  s.impl_ = std::make_unique<detail::StorageImpl>(std::move(options));
  s.impl_->create(std::move(identity));
  return s;
}

inline Storage Storage::open(StorageOptions options, Recovered& out) {
  Storage s;
  s.impl_ = std::make_unique<detail::StorageImpl>(std::move(options));
  s.impl_->recover(out);
  return s;
}

inline bool Storage::write(const PersistBatch& batch) { return impl_->write(batch); }
inline bool Storage::sync() { return impl_->sync(); }
inline bool Storage::save_snapshot(const Snapshot& snapshot, std::uint64_t compact_to) {
  return impl_->save_snapshot(snapshot, compact_to);
}
inline bool Storage::load_received_snapshot(const ReceivedSnapshot& received, Snapshot& out, std::string& problem) {
  return impl_->load_received_snapshot(received, out, problem);
}

inline bool Storage::save_identity(const Identity& identity) {
  if (!impl_->write_file_atomically(detail::kIdentityFile, {detail::encode_identity(identity)})) return false;
  impl_->identity = identity;
  return true;
}
inline bool Storage::failed() const { return impl_->failed.load(std::memory_order_acquire); }
inline const std::string& Storage::failure() const {
  static const std::string none;
  return failed() ? impl_->failure : none;
}
inline std::uint64_t Storage::fsync_count() const {
  return impl_->fsyncs.load(std::memory_order_relaxed);
}
inline std::uint64_t Storage::first_index() const { return impl_->first_index; }
inline std::uint64_t Storage::last_index() const { return impl_->last_index; }
inline std::uint64_t Storage::snapshot_index() const { return impl_->snap_index; }
inline std::uint64_t Storage::snapshot_term() const { return impl_->snap_term; }
inline const Identity& Storage::identity() const { return impl_->identity; }
inline const std::string& Storage::dir() const { return impl_->opt.dir; }

inline StorageWriter::StorageWriter(Storage& storage)
    : storage_(storage), thread_([this] { run(); }) {}

inline StorageWriter::~StorageWriter() { stop(); }

inline void StorageWriter::submit(PersistBatch batch, Done done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (last_seq_ && batch.seq <= *last_seq_)
      throw std::invalid_argument("ERR PersistBatch seq " + std::to_string(batch.seq) +
                                  " submitted after seq " + std::to_string(*last_seq_) +
                                  ": batches must be submitted in seq order");
    last_seq_ = batch.seq;
  }
  Item item;
  item.batch = std::move(batch);
  item.done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::submit_snapshot(std::shared_ptr<const Snapshot> snapshot,
                                           std::uint64_t compact_to, Done done) {
  if (!snapshot)
    throw std::invalid_argument("ERR StorageWriter::submit_snapshot without a snapshot");
  Item item;
  item.snapshot = std::move(snapshot);
  item.compact_to = compact_to;
  item.done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::submit_identity(Identity identity, Done done) {
  Item item;
  item.identity = std::move(identity);
  item.done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::submit_load_received(ReceivedSnapshot received, Loaded done) {
  Item item;
  item.received = std::move(received);
  item.loaded_done = std::move(done);
  enqueue(std::move(item));
}

inline void StorageWriter::enqueue(Item item) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(item));
      ++submitted_;
      wake_.notify_one();
      return;
    }
  }
  if (item.done) item.done(false);
  if (item.loaded_done) item.loaded_done(false, nullptr, "the storage is stopping");
}

inline void StorageWriter::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  if (std::this_thread::get_id() == thread_.get_id())
    throw std::logic_error("ERR StorageWriter::flush() called from a storage callback");
  const std::uint64_t target = submitted_;
  idle_.wait(lock, [&] { return completed_ >= target; });
}

inline void StorageWriter::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    wake_.notify_one();
  }
  if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
}

inline std::uint64_t StorageWriter::groups() const {
  return groups_.load(std::memory_order_relaxed);
}

inline void StorageWriter::run() {
  std::vector<Item> group;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;  // stopping, and drained
      group.swap(queue_);
    }
    for (Item& item : group) {
      if (item.received) {
        item.loaded = std::make_shared<Snapshot>();
        storage_.load_received_snapshot(*item.received, *item.loaded, item.load_problem);
      } else if (item.snapshot)
        storage_.save_snapshot(*item.snapshot, item.compact_to);
      else if (item.identity)
        storage_.save_identity(*item.identity);
      else
        storage_.write(item.batch);
    }
    // One verdict for the group: nothing in it is durable until this sync succeeds.
    const bool ok = storage_.sync();
    groups_.fetch_add(1, std::memory_order_relaxed);
    for (Item& item : group) {
      if (item.done) item.done(ok);
      if (item.loaded_done) item.loaded_done(ok, std::move(item.loaded), std::move(item.load_problem));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      completed_ += group.size();
    }
    idle_.notify_all();
    group.clear();
  }
}

}  // namespace raft
