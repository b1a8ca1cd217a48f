
// ============================================================================================
// 2. The store: the replicated data, its snapshot text, the built-in commands
// ============================================================================================

namespace raft {

namespace detail {

class LiteralReader;

/// At-most-once forwarded writes: what the leader remembers, through the log, of the writes
/// each follower forwarded. LogCabin's client sessions are the model, with the forwarding node
/// as the client. Part of the replicated state (Store::sessions()), so deterministic: every
/// node feeds it the same entries with the same leader timestamps and decides alike.
///
/// A follower tags each write it forwards with its session - (node id, server id, a nonce
/// drawn at each start: one run of one data directory) - a sequence number, and the lowest
/// sequence number it still waits for an answer to. The leader appends the write wrapped with
/// these (section 5), and each node, when it applies the entry, asks begin():
///   - a sequence number whose reply is kept is a Duplicate (the follower sent it again after
///     a reconnect or to a new leader): it does not run again; the kept reply is the answer;
///   - one below the lowest unanswered is Stale (the follower answered its caller already, or
///     the reply was dropped for memory): it does not run;
///   - otherwise it runs (Apply), and record() keeps its reply until an entry of the same
///     session says the follower no longer waits for it (its lowest unanswered passed it).
///
/// Memory is bounded by constants, not by Config (every node must decide alike):
///   - at most kMaxSessions sessions: a new one is refused while that many are kept (Full:
///     this entry does not run; a later copy of the write may, once sessions expired, so the
///     follower is told "not run here" and decides what it can promise its caller);
///   - a session is forgotten kIdleMs of session time after its last entry. Session time is
///     the entries' leader time with every step between two entries capped at
///     kMaxClockStepMs: a leader's clock that jumps forward by hours (or a new leader whose
///     clock is far ahead) moves it by at most that much, where leader time itself would
///     forget every session at once while copies of their writes may still be on the way (the
///     Jepsen-style suite found a forwarded INCR applied twice that way). A follower stops
///     sending a forward within kMaxForwardWaitMs (section 5) of real time, in which session
///     time passes by that much and each clock jump adds at most kMaxClockStepMs: no copy of a
///     write the table forgot can reach the log unless the leaders' clocks jump forward
///     several times within a minute, or a message waits in a socket for minutes;
///   - kept replies total at most kMaxReplyBytes, counting kReplyOverheadBytes for each: beyond
///     that, the session with the most bytes loses its oldest reply, and its lowest unanswered
///     moves past it (a copy arriving later is Stale: its caller learns the outcome is unknown).
/// In all, at most kMaxReplyBytes of replies and kMaxSessions records of a few words each.
class SessionTable {
 public:
  /// One run of a forwarding node.
  struct Key {
    NodeId node;
    std::string server_id;
    std::uint64_t nonce = 0;

    bool operator<(const Key& o) const {
      if (node != o.node) return node < o.node;
      if (server_id != o.server_id) return server_id < o.server_id;
      return nonce < o.nonce;
    }
    bool operator==(const Key& o) const {
      return node == o.node && server_id == o.server_id && nonce == o.nonce;
    }
  };
  enum class Verdict : std::uint8_t {
    Apply,      // run it, then record() its reply
    Duplicate,  // it ran before: `reply` is the reply it had
    Stale,      // below the session's lowest unanswered: not run
    Full,       // a new session while kMaxSessions are kept: not run
  };

  static constexpr std::int64_t kIdleMs = 10 * 60 * 1000;
  static constexpr std::int64_t kMaxClockStepMs = kIdleMs / 10;
  static constexpr std::size_t kMaxSessions = 4096;
  static constexpr std::size_t kMaxReplyBytes = std::size_t{64} << 20;
  static constexpr std::size_t kReplyOverheadBytes = 64;

  /// Decides what to do with forwarded write `seq` of session `key`, applied at the entry's
  /// leader timestamp stamp_ms. Observes the stamp first (forgetting idle sessions), and
  /// forgets the session's replies below `lowest_unanswered`; a Duplicate's reply is copied
  /// into `reply`.
  Verdict begin(const Key& key, std::uint64_t seq, std::uint64_t lowest_unanswered,
                std::int64_t stamp_ms, std::string& reply);
  /// After begin() said Apply: keeps the write's reply (RESP3-encoded) for `seq`.
  void record(const Key& key, std::uint64_t seq, std::string reply);
  /// An entry stamped stamp_ms is applied (every command entry, so that session time follows
  /// the log): session time advances by the step since the last stamp, at most
  /// kMaxClockStepMs (a fresh table starts at the first stamp), and the sessions idle for
  /// kIdleMs of session time are forgotten. Stamps at or before the last one change nothing.
  void observe(std::int64_t stamp_ms);
  /// Session time, and the last stamp observed (kept in snapshots).
  std::int64_t clock_ms() const { return clock_ms_; }
  std::int64_t last_stamp_ms() const { return last_stamp_ms_; }
  /// Restoring: session time and the last stamp (from a snapshot; a snapshot of format 3 has
  /// neither, and its sessions' times are leader times: both are its timestamp then).
  void set_clock(std::int64_t clock_ms, std::int64_t last_stamp_ms) {
    clock_ms_ = clock_ms;
    last_stamp_ms_ = last_stamp_ms;
  }

  std::size_t size() const { return sessions_.size(); }
  bool empty() const { return sessions_.empty(); }
  /// The kept replies' bytes, with kReplyOverheadBytes each.
  std::size_t reply_bytes() const { return bytes_; }
  /// The kept reply of `seq`, if any (tests, diagnostics).
  const std::string* reply(const Key& key, std::uint64_t seq) const;
  /// f(const Key&, std::uint64_t lowest, std::int64_t active_ms, const std::map<std::uint64_t,
  /// std::string>& replies) for each session, in key order.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& [key, s] : sessions_) f(key, s.lowest, s.active_ms, s.replies);
  }

  /// The same sessions (session time aside: every command entry moves it).
  bool operator==(const SessionTable& o) const { return sessions_ == o.sessions_; }
  bool operator!=(const SessionTable& o) const { return !(*this == o); }

  /// The snapshot's 'sessions' value: a list of {'node': str, 'server_id': str, 'nonce': int,
  /// 'lowest': int, 'active': int (ms), 'replies': {seq: reply, ...}}, in key order.
  void write(std::string& out) const;
  /// Reads write()'s text; replaces the table only on success.
  bool read(LiteralReader& r);

 private:
  struct Session {
    std::uint64_t lowest = 0;    // the follower waits for nothing below this
    std::int64_t active_ms = 0;  // the session time of its last entry
    std::map<std::uint64_t, std::string> replies;  // seq -> reply, every seq >= lowest
    std::size_t bytes = 0;                         // of its replies, with the overhead

    bool operator==(const Session& o) const {
      return lowest == o.lowest && active_ms == o.active_ms && replies == o.replies;
    }
  };
  using Sessions = std::map<Key, Session>;

  Sessions sessions_;
  std::set<std::pair<std::int64_t, Key>> by_activity_;  // (active_ms, key) of every session
  std::size_t bytes_ = 0;
  std::int64_t clock_ms_ = 0;       // session time (observe())
  std::int64_t last_stamp_ms_ = 0;  // the last entry stamp observed; 0: none yet

  static std::size_t cost(const std::string& reply) { return reply.size() + kReplyOverheadBytes; }
  void expire(std::int64_t now_ms);
  Sessions::iterator add(const Key& key, std::int64_t now_ms);
  void touch(Sessions::iterator it, std::int64_t now_ms);
  void advance(Sessions::iterator it, std::uint64_t lowest);
  void shed_replies();
};

/// A value on the heap behind one pointer, copied deeply: Store::Object keeps the containers of
/// its rarer kinds (sets, sorted sets) here, so that a string key pays one null pointer for
/// them rather than their empty headers.
template <class T>
class Boxed {
 public:
  Boxed() = default;
  Boxed(const Boxed& o) : p_(o.p_ ? std::make_unique<T>(*o.p_) : nullptr) {}
  Boxed(Boxed&&) noexcept = default;
  Boxed& operator=(const Boxed& o) {
    if (this != &o) p_ = o.p_ ? std::make_unique<T>(*o.p_) : nullptr;
    return *this;
  }
  Boxed& operator=(Boxed&&) noexcept = default;

  T* get() const { return p_.get(); }
  template <class... Args>
  T& emplace(Args&&... args) {
    p_ = std::make_unique<T>(std::forward<Args>(args)...);
    return *p_;
  }

 private:
  std::unique_ptr<T> p_;
};

}  // namespace detail

/// The replicated data: strings, hashes and lists (pyraft's types), sets and sorted sets, each
/// key with an optional deadline in ms since the epoch.
///
/// Ordered containers throughout: a snapshot must be the same text on every node, and keys
/// and hash fields kept sorted give that without sorting at snapshot time (KEYS answers in
/// key order too). The price is an O(log n) lookup instead of a hash table's O(1): about
/// twenty node visits at a million keys. Measured at a million keys, std::map found a key in
/// about the time std::unordered_map did (360 vs 670 ns, cache misses dominate both), and a
/// handler-level SET costs under 2 us: small beside the log write and the round trip of a
/// replicated command.
///
/// Expiry: reads (find) hide a key whose deadline is at or before their `now`, and never
/// delete. Only write handlers delete, through check_ttl / find_for_write, with the entry's
/// leader timestamp as `now`, so every node deletes at the same point of the log.
///
/// Beside the keys it holds the runtime's memory of forwarded writes (sessions()), which is
/// replicated state too: snapshots carry it.
///
/// Atomic writes: the runtime brackets a write handler with begin_undo() and commit_undo(), and
/// a handler that throws has its changes undone (rollback_undo()), so that it changed nothing
/// on any node. The record costs nothing for a key the handler replaces (put) or deletes (the
/// old value is moved into it), and a copy of the value for a key whose object it changes in
/// place (find_for_write): proportional to that value's size. The built-in commands need no
/// record (they return every error before their first change and throw nothing but
/// std::bad_alloc) and run without one.
///
/// Not thread-safe; copyable (the runtime copies it under its lock and serializes the copy
/// elsewhere).
class Store {
 public:
  enum class Kind : std::uint8_t { String, Hash, List, Set, SortedSet };
  using Hash = std::map<std::string, std::string, std::less<>>;
  /// std::list rather than std::deque: an empty std::deque allocates its block map and first
  /// block (about 600 bytes in libstdc++), which every string key would pay for. Indexing is
  /// O(n), as it is in Redis (LINDEX, LSET); both ends are O(1).
  using List = std::list<std::string>;
  /// Members in bytewise order (Redis's order is its hash table's: unspecified).
  using Set = std::set<std::string, std::less<>>;

  /// A sorted set: each member's score, and the members in Redis's order (by score, then
  /// bytewise by member). The order points at the score map's keys (a map's nodes never move),
  /// so each member is stored once. Ranks cost O(rank) (a skip list's would be O(log n)).
  /// Scores are never NaN (every command refuses one).
  class SortedSet {
   public:
    using Scores = std::map<std::string, double, std::less<>>;
    struct Entry {
      double score;
      const std::string* member;
    };
    /// (score, member) order; a bare double compares with the score alone, so that
    /// lower_bound(x) / upper_bound(x) find the first score >= x / > x.
    struct ByScore {
      using is_transparent = void;
      bool operator()(const Entry& a, const Entry& b) const {
        if (a.score != b.score) return a.score < b.score;
        return *a.member < *b.member;
      }
      bool operator()(const Entry& a, double b) const { return a.score < b; }
      bool operator()(double a, const Entry& b) const { return a < b.score; }
    };
    using Order = std::set<Entry, ByScore>;

    SortedSet() = default;
    SortedSet(const SortedSet& o) : scores_(o.scores_) {
      for (const auto& [member, score] : scores_) order_.insert(order_.end(), Entry{score, &member});
    }
    SortedSet(SortedSet&&) noexcept = default;
    SortedSet& operator=(SortedSet o) noexcept {
      scores_.swap(o.scores_);
      order_.swap(o.order_);
      return *this;
    }

    std::size_t size() const { return scores_.size(); }
    bool empty() const { return scores_.empty(); }
    const Scores& scores() const { return scores_; }
    const Order& order() const { return order_; }
    /// The member's score, or null.
    const double* score(std::string_view member) const {
      const auto it = scores_.find(member);
      return it == scores_.end() ? nullptr : &it->second;
    }
    /// Adds the member or changes its score; true if it was added.
    bool set(std::string_view member, double score) {
      auto it = scores_.find(member);
      const bool added = it == scores_.end();
      if (added) {
        it = scores_.emplace_hint(it, std::string(member), score);
      } else {
        if (it->second == score) return false;
        order_.erase(Entry{it->second, &it->first});
        it->second = score;
      }
      order_.insert(Entry{score, &it->first});
      return added;
    }
    bool erase(std::string_view member) {
      const auto it = scores_.find(member);
      if (it == scores_.end()) return false;
      order_.erase(Entry{it->second, &it->first});
      scores_.erase(it);
      return true;
    }
    /// The member's 0-based rank in score order.
    std::size_t rank(std::string_view member) const {
      const auto it = scores_.find(member);
      return static_cast<std::size_t>(std::distance(order_.begin(), order_.find(Entry{it->second, &it->first})));
    }

    bool operator==(const SortedSet& o) const { return scores_ == o.scores_; }
    bool operator!=(const SortedSet& o) const { return !(*this == o); }

   private:
    Scores scores_;
    Order order_;
  };

  struct Object {
    Kind kind = Kind::String;
    std::string str;  // Kind::String
    Hash hash;        // Kind::Hash; never empty while stored (an emptied hash is deleted)
    List list;        // Kind::List; never empty while stored
    /// A hash's, list's, set's or sorted set's elements as used_memory() counts them
    /// (kHashEntryBytes, kListEntryBytes, kSetEntryBytes or kSortedSetEntryBytes each, with
    /// their strings' sizes). Kept by the write handlers that change the elements in place
    /// (grew(), shrank()); not compared.
    std::size_t element_bytes = 0;

    /// Kind::Set's members, made empty on first use; never empty while stored. Behind one
    /// pointer, as the sorted set: other kinds pay 8 bytes for them.
    Set& set() { return boxed<Set>(); }
    /// Kind::SortedSet's members; never empty while stored.
    SortedSet& zset() { return boxed<SortedSet>(); }
    /// Empty when the object holds none.
    const Set& set() const { return boxed<Set>(); }
    const SortedSet& zset() const { return boxed<SortedSet>(); }

    bool operator==(const Object& o) const {
      return kind == o.kind && str == o.str && hash == o.hash && list == o.list &&
             (kind != Kind::Set || set() == o.set()) && (kind != Kind::SortedSet || zset() == o.zset());
    }
    bool operator!=(const Object& o) const { return !(*this == o); }

   private:
    using Boxed = std::variant<Set, SortedSet>;
    detail::Boxed<Boxed> boxed_;

    template <class T>
    T& boxed() {
      Boxed* b = boxed_.get();
      if (b == nullptr) return std::get<T>(boxed_.emplace(std::in_place_type<T>));
      if (!std::holds_alternative<T>(*b)) b->template emplace<T>();
      return std::get<T>(*b);
    }
    template <class T>
    const T& boxed() const {
      static const T none;
      const Boxed* b = boxed_.get();
      return b != nullptr && std::holds_alternative<T>(*b) ? std::get<T>(*b) : none;
    }
  };

  // ---- reads: hide keys whose deadline is at or before now_ms; never delete ----
  const Object* find(std::string_view key, std::int64_t now_ms) const;
  /// Keys not hidden at now_ms (DBSIZE). Costs O(number of keys already past their deadline).
  std::size_t live_size(std::int64_t now_ms) const;

  // ---- writes (inside write handlers; now_ms is the entry's leader timestamp) ----
  /// Deletes `key` if its deadline is at or before now_ms; true if it did. Proposed by the
  /// leader for background expiry, it is the conditional delete: a key renewed since survives.
  bool check_ttl(std::string_view key, std::int64_t now_ms);
  /// check_ttl, then the key's object (nullptr if absent).
  Object* find_for_write(std::string_view key, std::int64_t now_ms);
  /// Creates the key, or replaces its value, as an empty object of `kind` with no deadline.
  /// The caller fills it (a hash or list left empty must not stay: erase it).
  Object& put(std::string_view key, Kind kind);
  bool erase(std::string_view key);
  /// Removes the key's deadline: it no longer expires.
  void clear_ttl(std::string_view key);
  /// Sets the key's deadline; false (and nothing changes) if the key does not exist.
  bool set_deadline(std::string_view key, std::int64_t deadline_ms);
  std::optional<std::int64_t> deadline(std::string_view key) const;

  /// Keys whose deadline is at or before now_ms, earliest first, at most `limit`: the leader
  /// proposes a check_ttl entry for each. Costs O(limit + log n).
  std::vector<std::string> due(std::int64_t now_ms, std::size_t limit) const;

  /// Every key, expired or not.
  std::size_t size() const { return objects_.size(); }
  /// Keys with a TTL, expired or not (INFO's expires=).
  std::size_t volatile_keys() const { return expiry_.size(); }

  // ---- SCAN's order (detail::scan_step explains the cursor) ----
  /// One SCAN step over the keys: f(key, object, deadline) for the keys whose
  /// detail::scan_hash is at or above `cursor`, in hash order, at least `count` of them (past
  /// their deadline or not: f decides) and every key sharing the last one's hash. Returns the
  /// next cursor: the hash of the first key not visited, 0 when none is left. O(log n + count).
  template <class F>
  std::uint64_t scan(std::uint64_t cursor, std::size_t count, F&& f) const;
  /// RANDOMKEY: the first key not hidden at now_ms at or after `hash` in SCAN's order (going
  /// round to the start), nullptr if there is none. O(log n) plus the hidden keys it passes.
  const std::string* key_near_hash(std::uint64_t hash, std::int64_t now_ms) const;

  // ---- memory (maxmemory): an estimate kept as writes go, O(1) per changed key ----
  /// What a key costs beside its value (the map node, the strings' and object's headers, WATCH's
  /// stamp (modified_index()), and
  /// SCAN's index entry: a tree node of 80 bytes with the key's hash and a copy of the key,
  /// which counts the key's size a second time), and what each element of a hash or list costs
  /// beside its strings: estimates for libstdc++.
  static constexpr std::size_t kKeyBytes = 232 + 80;
  static constexpr std::size_t kHashEntryBytes = 112;
  static constexpr std::size_t kListEntryBytes = 64;
  /// A set member: a tree node with its string. A sorted set member: a map node with its
  /// string and score, and an order node with the score and a pointer.
  static constexpr std::size_t kSetEntryBytes = 80;
  static constexpr std::size_t kSortedSetEntryBytes = 144;
  /// Estimated bytes of the data: per key kKeyBytes, the key, and its string's size or its
  /// elements' (Object::element_bytes). A write handler that changes a hash or list in place
  /// keeps element_bytes with grew() and shrank(); strings need nothing.
  std::size_t used_memory() const;
  static void grew(Object& o, std::size_t bytes) { o.element_bytes += bytes; }
  static void shrank(Object& o, std::size_t bytes) { o.element_bytes -= std::min(o.element_bytes, bytes); }
  /// Counts the keys the last writes changed (the runtime calls it after each write).
  void settle_memory();
  bool empty() const { return objects_.empty(); }
  /// Deletes every key (the sessions stay).
  void clear();
  /// f(const std::string& key, const Object&, std::optional<std::int64_t> deadline), in key
  /// order (bytewise), including keys past their deadline.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& [key, record] : objects_) f(key, record.object, record.deadline);
  }

  bool operator==(const Store& o) const {
    return objects_ == o.objects_ && sessions_ == o.sessions_ && tombstones_ == o.tombstones_ &&
           forgotten_index_ == o.forgotten_index_;
  }
  bool operator!=(const Store& o) const { return !(*this == o); }

  // ---- atomic writes (see the class comment) ----
  /// From now on, records the prior value and deadline of each key before its first change.
  void begin_undo();
  /// The write completed: forgets the record and stops recording.
  void commit_undo();
  /// Puts back every key the write changed, value and deadline, and stops recording.
  void rollback_undo();

  // ---- WATCH: where each key last changed (replicated state: snapshots carry it) ----
  /// The log index of the entry being applied (the runtime sets it before each write): every
  /// key a write puts, finds for writing, deletes or gives a deadline from now on is stamped
  /// with it. 0 (a store used outside a node): nothing is stamped.
  void set_write_index(std::uint64_t index) { write_index_ = index; }
  /// The index of the last entry that changed `key` (found for writing counts: a write that
  /// looked and left it alone stamps it too); 0 if none did, or the key is absent.
  std::uint64_t modified_index(std::string_view key) const {
    const auto it = objects_.find(key);
    return it == objects_.end() ? 0 : it->second.modified;
  }
  /// The index of the last entry that deleted `key` (expiry and FLUSH included), as far as
  /// the store remembers: it keeps the latest kMaxTombstones deleted keys' stamps, and for
  /// any other key answers the latest stamp it forgot (an index never below the true one).
  std::uint64_t deleted_index(std::string_view key) const {
    const auto it = tombstones_.find(key);
    return std::max(forgotten_index_, it == tombstones_.end() ? 0 : it->second);
  }
  /// Deleted keys whose stamps are kept (each counted in used_memory(): kTombstoneBytes and
  /// twice the key); beyond that the oldest is forgotten into one index.
  static constexpr std::size_t kMaxTombstones = 10000;
  static constexpr std::size_t kTombstoneBytes = 176;

  // ---- the runtime's: forwarded writes applied at most once (handlers leave it alone) ----
  detail::SessionTable& sessions() { return sessions_; }
  const detail::SessionTable& sessions() const { return sessions_; }

  // ---- snapshot text (Python repr() layout; ast.literal_eval reads it) ----
  /// Appends `{'_META_': {'format': 4, 'index': I, 'term': T, 'timestamp': MS, 'members': [...]},
  /// 'data': {...}, 'ttl': {...}, 'sessions': [...], 'session_clock': [MS, MS]}` to `out`
  /// ('sessions', 'session_clock': see detail::SessionTable). Keys and hash fields in bytewise order; the same store and
  /// meta always give the same text. Strings that are valid UTF-8 are written as str literals,
  /// others as bytes literals, escaped exactly as Python's repr(). Values: a str or bytes (a
  /// string), a dict of strings (a hash), a list (a list), a set of strings (a set: {'a', 'b'})
  /// and a dict of member -> float score (a sorted set: {'a': 1.5, 'b': 1e999}); with a set or
  /// a sorted set in the data the format is 5 (see detail::write_set_literal), else 4. WATCH's
  /// stamps follow when there are any: `'modified': [FORGOTTEN, {key: INDEX}, {deleted key:
  /// INDEX}]` (write_stamps()); a store without them writes the text above unchanged.
  void write_snapshot(std::string& out, const SnapshotMeta& meta) const;
  /// Parses write_snapshot's formats (5 and 4), format 3 (no 'session_clock'), format 2 (no 'sessions':
  /// the table is empty), format 1
  /// (nor 'timestamp': meta.timestamp_ms is 0), and any Python literal text of the same shape.
  /// On success replaces `data` and `meta`; on failure leaves them unchanged and sets `error`
  /// ("invalid snapshot at byte N: expected ...").
  static bool read_snapshot(std::string_view text, Store& data, SnapshotMeta& meta,
                            std::string& error);
  /// Parses pyraft's checkpoint (.dat) layout: user keys at the top level beside 'ttl'
  /// (key -> seconds since the epoch, int or float) and '_META_' (checked to be a dict,
  /// otherwise ignored). Values: str -> string, dict of str -> hash, list of str -> list; empty
  /// containers are dropped; anything else (pyraft's tree data, numbers) is an error naming the
  /// key. Deadlines are rounded up to the next ms. Replaces `data` only on success.
  static bool read_pyraft_snapshot(std::string_view text, Store& data, std::string& error);

 private:
  void write_stamps(std::string& out) const;
  struct Record {
    Object object;
    std::optional<std::int64_t> deadline;
    std::size_t counted = 0;  // the bytes used_ counts for this key (settle_memory())
    std::uint64_t modified = 0;  // modified_index()
    bool operator==(const Record& o) const {
      return object == o.object && deadline == o.deadline && modified == o.modified;
    }
  };
  /// Orders (deadline, key) and (scan hash, key) pairs; transparent so a lookup can use a
  /// string_view key.
  struct ExpiryLess {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      if (a.first != b.first) return a.first < b.first;
      return std::string_view(a.second) < std::string_view(b.second);
    }
  };
  using Objects = std::map<std::string, Record, std::less<>>;
  /// (scan_hash(key), key) for every key: SCAN's order, independent of the other keys.
  using ScanOrder = std::set<std::pair<std::uint64_t, std::string>, ExpiryLess>;

  /// A key's state before the write being recorded first changed it.
  struct Undo {
    bool existed = false;
    std::optional<std::int64_t> deadline;
    std::optional<Object> object;  // set once the object changed or went away
  };

  Objects objects_;
  /// (deadline, key) for every key with a deadline: due() reads it from the front.
  std::set<std::pair<std::int64_t, std::string>, ExpiryLess> expiry_;
  ScanOrder scan_order_;
  detail::SessionTable sessions_;
  std::uint64_t write_index_ = 0;  // set_write_index()
  // deleted_index(): the stamps of deleted keys, by key and oldest first, and the latest
  // stamp forgotten (evicted, or every key at once by clear()).
  std::map<std::string, std::uint64_t, std::less<>> tombstones_;
  std::set<std::pair<std::uint64_t, std::string>, ExpiryLess> tombstone_order_;
  std::uint64_t forgotten_index_ = 0;
  std::size_t tombstone_bytes_ = 0;
  bool recording_ = false;
  std::map<std::string, Undo, std::less<>> undo_;
  std::size_t used_ = 0;             // the sum of every Record::counted
  std::vector<std::string> opened_;  // keys put or found for writing since settle_memory()

  static std::size_t cost(const std::string& key, const Object& o) {
    return kKeyBytes + 2 * key.size() + (o.kind == Kind::String ? o.str.size() : o.element_bytes);
  }
  void opened(std::string_view key) {
    if (opened_.empty() || opened_.back() != key) opened_.emplace_back(key);
  }
  void stamp(Objects::iterator it) {
    if (write_index_ != 0) it->second.modified = write_index_;
  }
  void bury(std::string_view key);
  void unbury(std::string_view key);
  void forget_tombstones(std::uint64_t index) {
    forgotten_index_ = std::max(forgotten_index_, index);
    tombstones_.clear();
    tombstone_order_.clear();
    tombstone_bytes_ = 0;
  }
  /// Counts every key and element from scratch, and rebuilds SCAN's index (after loading a
  /// snapshot).
  void recount_memory();

  static bool expired(const Record& r, std::int64_t now_ms) {
    return r.deadline && *r.deadline <= now_ms;
  }
  void drop_deadline(Objects::iterator it);
  void erase(Objects::iterator it);
  /// While recording: the key's record, made on its first change (it = objects_.end() when
  /// the key does not exist).
  Undo* remember(std::string_view key, Objects::iterator it);
  /// While recording: keeps the key's object before it changes in place (a copy) or goes
  /// away (moved, when `moving`), once.
  void keep_object(std::string_view key, Objects::iterator it, bool moving);
};

/// Registers the built-in Redis commands (strings, keys and expiry, hashes, lists, sets,
/// sorted sets) with Redis's semantics and replies. Entries already in the table are kept, so a program can
/// replace a built-in by registering its own first (or by overwriting it afterwards).
inline void add_builtin_commands(CommandTable& table);

inline bool Call::check_ttl(std::string_view key) { return data.check_ttl(key, now_ms); }
inline void Call::clear_ttl(std::string_view key) { data.clear_ttl(key); }

}  // namespace raft

// --------------------------------------------------------------------------------------------
// Implementation of section 2
// --------------------------------------------------------------------------------------------

namespace raft::detail {

/// The snapshot text's format ('format' in _META_). 1: the first release; 2: adds
/// 'timestamp'; 3: adds 'sessions' (forwarded writes, SessionTable); 4: adds 'session_clock'
/// ([session time, last stamp]: sessions' times are session time, not leader time). Every
/// older format stays readable; each change bumps it.
constexpr std::int64_t kSnapshotFormat = 4;
/// 5: format 4 with sets and sorted sets in 'data' (write_set_literal). Written only when the
/// data holds one, so that a snapshot without them stays format 4's text.
constexpr std::int64_t kSnapshotFormatWithSets = 5;

// ---- the limits of one command ----
//
// The same on every node, and checked before a write is proposed: on the node a client sent it
// to, and again on the leader for a forwarded one. Never at apply: a node parses an entry of
// its log without limits, so a committed entry can always be applied, whatever limits the node
// that proposed it had. Below the peer protocol's limits (section 5: a bulk of 1 GiB, 16M
// words), which a forwarded write and an entry must fit in. A client's own limits
// (Config::client_limits) may be lower: its parser refuses first.

/// Redis's proto-max-bulk-len: the longest argument (and the longest string APPEND makes).
constexpr std::size_t kProtoMaxBulkLen = std::size_t{512} << 20;
/// Words of one write, its name included (resp::Limits' default multibulk length).
constexpr std::size_t kMaxCommandWords = std::size_t{1} << 20;
/// One write RESP-encoded, as a log entry holds it (1 GiB less 1 MiB: room for the wrapping
/// of a forwarded write within the peer protocol's 1 GiB bulk).
constexpr std::size_t kMaxCommandBytes = (std::size_t{1} << 30) - (std::size_t{1} << 20);

struct CommandLimits {
  std::size_t max_words = kMaxCommandWords;
  std::size_t max_word_bytes = kProtoMaxBulkLen;
  std::size_t max_bytes = kMaxCommandBytes;
};

/// Empty if `words` may be proposed, else the error reply's text. (Other limits: tests.)
inline std::string command_limit_error(const std::vector<std::string>& words, const CommandLimits& limits = {}) {
  if (words.size() > limits.max_words)
    return "ERR too many arguments: a write may have at most " + std::to_string(limits.max_words - 1) +
           " (it has " + std::to_string(words.size() - 1) + "); it was not run";
  const auto digits = [](std::size_t n) { return std::to_string(n).size(); };
  std::size_t bytes = 3 + digits(words.size());  // *N\r\n
  for (const auto& w : words) {
    if (w.size() > limits.max_word_bytes)
      return "ERR an argument of " + std::to_string(w.size()) + " bytes is longer than proto-max-bulk-len (" +
             std::to_string(limits.max_word_bytes) + "); the write was not run";
    bytes += 5 + digits(w.size()) + w.size();  // $N\r\n...\r\n
  }
  if (bytes > limits.max_bytes)
    return "ERR the write is " + std::to_string(bytes) + " bytes; the limit for one command is " +
           std::to_string(limits.max_bytes) + "; it was not run";
  return "";
}

// ---- Python repr() of a string: str literal when valid UTF-8, bytes literal otherwise ----

/// Length of the strict UTF-8 sequence at s[i] (as Python's decoder: no overlong forms, no
/// surrogates, nothing above U+10FFFF) and its code point; 0 if invalid.
inline std::size_t utf8_sequence(std::string_view s, std::size_t i, char32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  const std::size_t left = s.size() - i;
  const auto cont = [&](std::size_t k) { return k < left && (byte(i + k) & 0xC0) == 0x80; };
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (!cont(1)) return 0;
    cp = (char32_t(b0 & 0x1F) << 6) | (byte(i + 1) & 0x3F);
    return 2;
  }
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    cp = (char32_t(b0 & 0x0F) << 12) | (char32_t(byte(i + 1) & 0x3F) << 6) | (byte(i + 2) & 0x3F);
    if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    cp = (char32_t(b0 & 0x07) << 18) | (char32_t(byte(i + 1) & 0x3F) << 12) |
         (char32_t(byte(i + 2) & 0x3F) << 6) | (byte(i + 3) & 0x3F);
    if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    return 4;
  }
  return 0;
}

inline bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    char32_t cp;
    const std::size_t n = utf8_sequence(s, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Whether Python's repr() writes a non-ASCII code point raw (str.isprintable()). The table
/// holds the non-printable ranges above U+007F: categories Cc, Cf, Zs, Zl, Zp, Co, Cs (from
/// Unicode 14, Python 3.11), the noncharacters, and the planes with nothing assigned (4-13).
/// Unassigned code points elsewhere are written raw, where Python escapes them; either form
/// reads back as the same string.
inline bool is_printable_non_ascii(char32_t cp) {
  static constexpr std::array<std::pair<char32_t, char32_t>, 31> kNonPrintable{{
      {0x80, 0xA0},       {0xAD, 0xAD},       {0x600, 0x605},     {0x61C, 0x61C},
      {0x6DD, 0x6DD},     {0x70F, 0x70F},     {0x890, 0x891},     {0x8E2, 0x8E2},
      {0x1680, 0x1680},   {0x180E, 0x180E},   {0x2000, 0x200F},   {0x2028, 0x202F},
      {0x205F, 0x2064},   {0x2066, 0x206F},   {0x3000, 0x3000},   {0xD800, 0xF8FF},
      {0xFDD0, 0xFDEF},   {0xFEFF, 0xFEFF},   {0xFFF9, 0xFFFB},   {0xFFFE, 0xFFFF},
      {0x110BD, 0x110BD}, {0x110CD, 0x110CD}, {0x13430, 0x13438}, {0x1BCA0, 0x1BCA3},
      {0x1D173, 0x1D17A}, {0x1FFFE, 0x1FFFF}, {0x2FFFE, 0x2FFFF}, {0x3FFFE, 0xDFFFF},
      {0xE0001, 0xE0001}, {0xE0020, 0xE007F}, {0xEFFFE, 0x10FFFF},
  }};
  auto it = std::upper_bound(kNonPrintable.begin(), kNonPrintable.end(), cp,
                             [](char32_t c, const std::pair<char32_t, char32_t>& r) {
                               return c < r.first;
                             });
  if (it == kNonPrintable.begin()) return true;
  --it;
  return cp > it->second;
}

inline void append_hex_escape(std::string& out, char kind, std::uint32_t value, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '\\';
  out += kind;
  for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4) out += kHex[(value >> shift) & 0xF];
}

/// Appends s as Python's repr() writes it: 'text' when s is valid UTF-8, b'...' otherwise.
inline void append_repr(std::string& out, std::string_view s) {
  const bool text = is_valid_utf8(s);
  const bool squote = s.find('\'') != std::string_view::npos;
  const bool dquote = s.find('"') != std::string_view::npos;
  const char quote = (squote && !dquote) ? '"' : '\'';
  out.reserve(out.size() + s.size() + 3);
  if (!text) out += 'b';
  out += quote;
  std::size_t i = 0;
  while (i < s.size()) {
    // Copy runs of characters that need no escape in one append.
    std::size_t run = i;
    while (run < s.size()) {
      const unsigned char c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c >= 0x7F || c == '\\' || c == static_cast<unsigned char>(quote)) break;
      ++run;
    }
    out.append(s.data() + i, run - i);
    i = run;
    if (i >= s.size()) break;
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\' || c == static_cast<unsigned char>(quote)) {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\t') {
      out += "\\t";
      ++i;
    } else if (c == '\n') {
      out += "\\n";
      ++i;
    } else if (c == '\r') {
      out += "\\r";
      ++i;
    } else if (c < 0x80 || !text) {
      append_hex_escape(out, 'x', c, 2);
      ++i;
    } else {
      char32_t cp = 0;
      const std::size_t n = utf8_sequence(s, i, cp);  // valid: checked above
      if (is_printable_non_ascii(cp))
        out.append(s.data() + i, n);
      else if (cp <= 0xFF)
        append_hex_escape(out, 'x', cp, 2);
      else if (cp <= 0xFFFF)
        append_hex_escape(out, 'u', cp, 4);
      else
        append_hex_escape(out, 'U', cp, 8);
      i += n;
    }
  }
  out += quote;
}

inline std::string repr(std::string_view s) {
  std::string out;
  append_repr(out, s);
  return out;
}

/// A key as error messages show it: its repr, cut to a readable length.
inline std::string key_for_error(std::string_view key) {
  constexpr std::size_t kMax = 64;
  if (key.size() <= kMax) return repr(key);
  std::size_t cut = kMax;
  // Cut at a character boundary so a UTF-8 key stays a str literal.
  while (cut > 0 && (static_cast<unsigned char>(key[cut]) & 0xC0) == 0x80) --cut;
  return repr(key.substr(0, cut)) + "...";
}

// ---- a strict reader for the Python literal subset snapshots use ----

/// Reads dict, list, tuple, str and bytes literals, int, float, True, False and None, as
/// ast.literal_eval would, from untrusted text: every error names the byte offset and what
/// was expected; nesting is bounded; nothing is allocated beyond what the input holds.
class LiteralReader {
 public:
  static constexpr int kMaxDepth = 64;

  explicit LiteralReader(std::string_view text) : in_(text) {}

  /// The offset of the next token (after white space): where an error about it points.
  std::size_t here() {
    skip_space();
    return pos_;
  }
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }

  bool fail_at(std::size_t at, const std::string& what) {
    if (error_.empty()) error_ = "at byte " + std::to_string(at) + ": " + what;
    return false;
  }
  /// Fails at the current position, saying what was found there.
  bool fail_expected(const std::string& what) {
    skip_space();
    return fail_at(pos_, "expected " + what + ", found " + describe_here());
  }

  void skip_space() {
    while (pos_ < in_.size()) {
      const char c = in_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }
  bool at_end() {
    skip_space();
    return pos_ >= in_.size();
  }
  char peek() {
    skip_space();
    return pos_ < in_.size() ? in_[pos_] : '\0';
  }
  bool accept(char c) {
    skip_space();
    if (pos_ < in_.size() && in_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool expect(char c, const char* what) { return accept(c) || fail_expected(what); }

  /// Iterates a container's elements after its opening bracket:
  ///   bool first = true; while (r.next_element('}', first)) { ...read one element... }
  ///   if (r.failed()) ...
  /// Accepts a trailing comma, as Python does.
  bool next_element(char close, bool& first) {
    if (failed()) return false;
    if (accept(close)) return false;
    if (!first) {
      if (!accept(',')) {
        fail_expected(std::string("',' or '") + close + "'");
        return false;
      }
      if (accept(close)) return false;
    }
    first = false;
    return true;
  }

  bool at_string() {
    const char c = peek();
    if (c == '\'' || c == '"') return true;
    return (c == 'b' || c == 'B') && pos_ + 1 < in_.size() &&
           (in_[pos_ + 1] == '\'' || in_[pos_ + 1] == '"');
  }
  bool at_number() {
    const char c = peek();
    return c == '-' || (c >= '0' && c <= '9');
  }

  /// A str or bytes literal, decoded into bytes (a str as UTF-8).
  bool string(std::string& out) {
    out.clear();
    if (!at_string()) return fail_expected("a string");
    const std::size_t start = pos_;
    const bool bytes = in_[pos_] == 'b' || in_[pos_] == 'B';
    if (bytes) ++pos_;
    const char quote = in_[pos_++];
    for (;;) {
      std::size_t run = pos_;
      while (run < in_.size()) {
        const unsigned char c = static_cast<unsigned char>(in_[run]);
        if (c == static_cast<unsigned char>(quote) || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++run;
      }
      out.append(in_.data() + pos_, run - pos_);
      pos_ = run;
      if (pos_ >= in_.size())
        return fail_at(start, "unterminated string (expected a closing " +
                                  std::string(1, quote) + ")");
      const unsigned char c = static_cast<unsigned char>(in_[pos_]);
      if (c == static_cast<unsigned char>(quote)) {
        ++pos_;
        return true;
      }
      if (c == '\\') {
        if (!escape(out, bytes)) return false;
      } else if (c >= 0x80) {
        if (bytes) return fail_at(pos_, "a bytes literal may only hold ASCII characters");
        char32_t cp;
        const std::size_t n = utf8_sequence(in_, pos_, cp);
        if (n == 0) return fail_at(pos_, "invalid UTF-8 in a string");
        out.append(in_.data() + pos_, n);
        pos_ += n;
      } else if (c == '\n' || c == '\r') {
        return fail_at(start, "unterminated string (a line break inside the quotes)");
      } else if (c == 0) {
        return fail_at(pos_, "a NUL byte inside a string (it must be written \\x00)");
      } else {
        out += static_cast<char>(c);  // a raw tab or other control character, as Python allows
        ++pos_;
      }
    }
  }

  /// A decimal int literal that fits in a signed 64-bit integer.
  bool integer(std::int64_t& out) {
    if (!at_number()) return fail_expected("an integer");
    const std::size_t start = pos_;
    const bool negative = in_[pos_] == '-';
    if (negative) ++pos_;
    std::uint64_t magnitude = 0;
    if (!digits(magnitude, start)) return false;
    const std::uint64_t limit =
        negative ? std::uint64_t(std::numeric_limits<std::int64_t>::max()) + 1
                 : std::uint64_t(std::numeric_limits<std::int64_t>::max());
    if (magnitude > limit) return fail_at(start, "integer out of range");
    out = negative ? static_cast<std::int64_t>(0 - magnitude) : static_cast<std::int64_t>(magnitude);
    return true;
  }
  bool unsigned_integer(std::uint64_t& out) {
    if (!at_number()) return fail_expected("an integer");
    const std::size_t start = pos_;
    if (in_[pos_] == '-') return fail_at(start, "expected a non-negative integer");
    return digits(out, start);
  }

  /// An int or float number of seconds, as milliseconds rounded up (computed from the
  /// decimal digits, so 1795634095.44 is exactly 1795634095440).
  bool seconds_as_ms(std::int64_t& out) {
    const std::size_t start = pos_;
    bool negative = false;
    long exponent = 0;  // value = digits * 10^exponent
    if (!scan_number(negative, scratch_, exponent)) return false;
    const std::string& digits = scratch_;
    // ms = digits * 10^(exponent + 3): the digits before that decimal point, rounded up if
    // any digit after it is not zero.
    const long point = static_cast<long>(digits.size()) + exponent + 3;
    const long last = std::max<long>(point, static_cast<long>(digits.size()));
    const std::uint64_t max = std::uint64_t(std::numeric_limits<std::int64_t>::max());
    std::uint64_t whole = 0;
    bool fraction = false;
    for (long k = 0; k < last; ++k) {
      const int d = k < static_cast<long>(digits.size()) ? digits[std::size_t(k)] - '0' : 0;
      if (k < point) {
        if (whole > (max - std::uint64_t(d)) / 10) return fail_at(start, "number out of range");
        whole = whole * 10 + std::uint64_t(d);
      } else if (d != 0) {
        fraction = true;
      }
    }
    if (fraction && !negative) {
      if (whole == max) return fail_at(start, "number out of range");
      ++whole;  // round up: a key never expires before the time it was given
    }
    out = negative ? -static_cast<std::int64_t>(whole) : static_cast<std::int64_t>(whole);
    return true;
  }

  /// A float or int literal as a double (exactly: the shortest text that names it reads
  /// back as it), or 1e999 / -1e999 as infinities, which is how a snapshot writes them.
  bool real(double& out) {
    skip_space();
    const std::size_t start = pos_;
    const bool negative = pos_ < in_.size() && in_[pos_] == '-';
    if (in_.substr(pos_ + (negative ? 1 : 0), 5) == "1e999") {
      pos_ += negative ? 6 : 5;
      if (!number_ends_here()) return fail_at(start, "malformed number");
      out = negative ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
      return true;
    }
    if (!skip_number()) return false;
    if (!resp::detail::parse_double(in_.substr(start, pos_ - start), out))
      return fail_at(start, "a number out of a double's range");
    return true;
  }

  /// At a float literal: a number with a '.' or an exponent (1.0, 2e5, -1e999), not an int.
  bool at_float() {
    if (!at_number()) return false;
    std::size_t p = pos_ + (in_[pos_] == '-' ? 1 : 0);
    while (p < in_.size() && is_digit(in_[p])) ++p;
    return p < in_.size() && (in_[p] == '.' || in_[p] == 'e' || in_[p] == 'E');
  }

  /// Where the reader is, and going back there (to look ahead at a value).
  std::size_t position() const { return pos_; }
  void rewind(std::size_t at) { pos_ = at; }

  bool boolean(bool& out) {
    skip_space();
    const std::size_t start = pos_;
    if (word("True")) {
      out = true;
      return true;
    }
    if (word("False")) {
      out = false;
      return true;
    }
    pos_ = start;
    return fail_expected("True or False");
  }

  /// Validates and skips any literal value.
  bool skip_value(int depth = 0) {
    if (depth >= kMaxDepth) {
      skip_space();
      return fail_at(pos_, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    if (at_string()) return string(scratch_);
    if (at_number()) return skip_number();
    const char c = peek();
    if (c == '{' || c == '[' || c == '(') {
      ++pos_;
      const char close = c == '{' ? '}' : c == '[' ? ']' : ')';
      bool first = true;
      while (next_element(close, first)) {
        if (!skip_value(depth + 1)) return false;
        if (c == '{' && (!expect(':', "':' after a dict key") || !skip_value(depth + 1)))
          return false;
      }
      return !failed();
    }
    if (word("True") || word("False") || word("None")) return true;
    return fail_expected("a value");
  }

 private:
  std::string_view in_;
  std::size_t pos_ = 0;
  std::string error_;
  std::string scratch_;

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  static bool is_hex(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  static std::uint32_t hex_value(char c) {
    return is_digit(c) ? std::uint32_t(c - '0') : std::uint32_t((c | 0x20) - 'a' + 10);
  }

  std::string describe_here() const {
    if (pos_ >= in_.size()) return "the end of the input";
    const unsigned char c = static_cast<unsigned char>(in_[pos_]);
    if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    std::string out = "byte ";
    append_hex_escape(out, 'x', c, 2);
    return out;
  }

  /// A word such as True: matched only as a whole identifier.
  bool word(std::string_view w) {
    skip_space();
    if (in_.substr(pos_, w.size()) != w) return false;
    const std::size_t end = pos_ + w.size();
    if (end < in_.size()) {
      const char c = in_[end];
      if (is_digit(c) || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          static_cast<unsigned char>(c) >= 0x80)
        return false;
    }
    pos_ = end;
    return true;
  }

  /// After a number: nothing that would make it another token (1.5, 1e3, 1j, 1_000, 1abc).
  bool number_ends_here() const {
    if (pos_ >= in_.size()) return true;
    const char c = in_[pos_];
    return !(is_digit(c) || c == '.' || c == '_' || (c >= 'a' && c <= 'z') ||
             (c >= 'A' && c <= 'Z'));
  }

  bool digits(std::uint64_t& out, std::size_t start) {
    if (pos_ >= in_.size() || !is_digit(in_[pos_])) return fail_at(start, "expected an integer");
    if (in_[pos_] == '0' && pos_ + 1 < in_.size() && is_digit(in_[pos_ + 1]))
      return fail_at(start, "leading zeros in an integer");
    std::uint64_t v = 0;
    for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_) {
      const std::uint64_t d = std::uint64_t(in_[pos_] - '0');
      if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10)
        return fail_at(start, "integer out of range");
      v = v * 10 + d;
    }
    if (!number_ends_here()) return fail_at(start, "expected an integer");
    out = v;
    return true;
  }

  /// Written exponents beyond this are refused: no Python float has a decimal exponent past
  /// about +-324, so no pyraft file holds one, and a value like 0e999999 would otherwise cost
  /// a step per power of ten to compute.
  static constexpr long kMaxExponent = 400;

  /// An int or float literal ([-]digits[.digits][e[+-]digits]): its sign, its digits and
  /// the power of ten they are scaled by.
  bool scan_number(bool& negative, std::string& digits, long& exponent) {
    digits.clear();
    exponent = 0;
    if (!at_number()) return fail_expected("a number");
    const std::size_t start = pos_;
    negative = in_[pos_] == '-';
    if (negative) ++pos_;
    for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_) digits += in_[pos_];
    if (pos_ < in_.size() && in_[pos_] == '.') {
      ++pos_;
      for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_) {
        digits += in_[pos_];
        --exponent;
      }
    }
    if (digits.empty()) return fail_at(start, "expected a number");
    if (pos_ < in_.size() && (in_[pos_] == 'e' || in_[pos_] == 'E')) {
      ++pos_;
      bool exponent_negative = false;
      if (pos_ < in_.size() && (in_[pos_] == '+' || in_[pos_] == '-'))
        exponent_negative = in_[pos_++] == '-';
      if (pos_ >= in_.size() || !is_digit(in_[pos_])) return fail_at(start, "malformed exponent");
      long e = 0;
      for (; pos_ < in_.size() && is_digit(in_[pos_]); ++pos_)
        if (e <= kMaxExponent) e = e * 10 + (in_[pos_] - '0');
      if (e > kMaxExponent)
        return fail_at(start, "exponent out of range (beyond +-" + std::to_string(kMaxExponent) +
                                  ", where no float is)");
      exponent += exponent_negative ? -e : e;
    }
    if (!number_ends_here()) return fail_at(start, "malformed number");
    return true;
  }

  bool skip_number() {
    bool negative;
    long exponent;
    return scan_number(negative, scratch_, exponent);
  }

  bool fixed_hex(std::size_t count, std::uint32_t& value, std::size_t escape_at) {
    value = 0;
    for (std::size_t k = 0; k < count; ++k) {
      if (pos_ >= in_.size() || !is_hex(in_[pos_]))
        return fail_at(escape_at, "truncated \\x, \\u or \\U escape (expected " +
                                      std::to_string(count) + " hex digits)");
      value = (value << 4) | hex_value(in_[pos_++]);
    }
    return true;
  }

  /// One escape sequence, at the backslash.
  bool escape(std::string& out, bool bytes) {
    const std::size_t at = pos_++;
    if (pos_ >= in_.size()) return fail_at(at, "unterminated escape sequence");
    const char e = in_[pos_++];
    std::uint32_t v = 0;
    switch (e) {
      case '\\': case '\'': case '"': out += e; return true;
      case 'n': out += '\n'; return true;
      case 'r': out += '\r'; return true;
      case 't': out += '\t'; return true;
      case 'a': out += '\a'; return true;
      case 'b': out += '\b'; return true;
      case 'f': out += '\f'; return true;
      case 'v': out += '\v'; return true;
      case 'x':
        if (!fixed_hex(2, v, at)) return false;
        break;
      case 'u':
      case 'U':
        if (bytes) return fail_at(at, std::string("invalid escape \\") + e + " in a bytes literal");
        if (!fixed_hex(e == 'u' ? 4 : 8, v, at)) return false;
        if (v > 0x10FFFF) return fail_at(at, "escape beyond U+10FFFF");
        if (v >= 0xD800 && v <= 0xDFFF) return fail_at(at, "escape of a lone surrogate");
        break;
      default:
        if (e >= '0' && e <= '7') {
          v = std::uint32_t(e - '0');
          for (int k = 0; k < 2 && pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '7'; ++k)
            v = v * 8 + std::uint32_t(in_[pos_++] - '0');
          if (bytes && v > 0xFF) return fail_at(at, "octal escape above \\377 in a bytes literal");
          break;
        }
        return fail_at(at, "invalid escape sequence (expected one of \\\\ \\' \\\" \\n \\r \\t "
                           "\\a \\b \\f \\v \\xNN \\ooo \\uXXXX \\UXXXXXXXX)");
    }
    if (bytes)
      out += static_cast<char>(v);
    else
      append_utf8(out, v);
    return true;
  }
};

inline bool snapshot_error(const LiteralReader& r, std::string& error) {
  error = "invalid snapshot " + r.error();
  return false;
}

// ---- helpers of the command handlers ----

inline Reply wrongtype_error() {
  return Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value");
}
inline Reply not_integer_error() {
  return Reply::error("ERR value is not an integer or out of range");
}
inline Reply syntax_error() { return Reply::error("ERR syntax error"); }
inline Reply overflow_error() { return Reply::error("ERR increment or decrement would overflow"); }
inline Reply arity_error(std::string_view name) {
  return Reply::error("ERR wrong number of arguments for '" + std::string(name) + "' command");
}
inline Reply invalid_expire_error(std::string_view name) {
  return Reply::error("ERR invalid expire time in '" + std::string(name) + "' command");
}

using resp::detail::parse_int64;  // Redis's string2ll, shared with the RESP parser

/// ASCII lower case, locale-free: command names, options and config values compare
/// case-insensitively in ASCII only, as in Redis.
inline char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

inline std::string lower(std::string s) {
  for (char& c : s) c = ascii_lower(c);
  return s;
}

/// ASCII case-insensitive comparison with a lower-case word.
inline bool iequals(std::string_view s, std::string_view lower_word) {
  if (s.size() != lower_word.size()) return false;
  for (std::size_t i = 0; i < s.size(); ++i)
    if (ascii_lower(s[i]) != lower_word[i]) return false;
  return true;
}

/// a + b, or nullopt on overflow.
inline std::optional<std::int64_t> checked_add(std::int64_t a, std::int64_t b) {
  if ((b > 0 && a > std::numeric_limits<std::int64_t>::max() - b) ||
      (b < 0 && a < std::numeric_limits<std::int64_t>::min() - b))
    return std::nullopt;
  return a + b;
}

/// A Redis glob pattern (KEYS, and SCAN MATCH when it exists), compiled once and then matched
/// against many keys in at most (tokens + 1) x (key length + 1) steps of O(1) each, whatever
/// the pattern holds. The syntax is Redis's (stringmatchlen): '*' any run of bytes (a run of
/// '*' is one), '?' any byte, '\x' the byte x (a trailing '\' is itself), a class "[...]"
/// ('^' first negates; "a-z" a range, its ends in either order and compared as signed char
/// as Redis does; '\' quotes the next byte; a class without its ']' runs to the end of the
/// pattern, so "[" matches nothing and "[^" any byte), anything else itself. As in Redis an
/// empty key matches only the empty pattern, and a pattern with more than kMaxStarNesting
/// '*' groups before its last token matches nothing: Redis stops recursing at that depth.
class GlobPattern {
 public:
  static constexpr std::size_t kMaxStarNesting = 1000;

  explicit GlobPattern(std::string_view pattern) {
    const std::size_t m = pattern.size();
    std::size_t stars_before_end = 0;
    for (std::size_t p = 0; p < m;) {
      const char c = pattern[p];
      if (c == '*') {
        while (p < m && pattern[p] == '*') ++p;
        if (p < m) ++stars_before_end;
        tokens_.push_back(Token{Token::Star, 0, 0});
      } else if (c == '?') {
        tokens_.push_back(Token{Token::Any, 0, 0});
        ++p;
      } else if (c == '[') {
        p = add_class(pattern, p);
      } else {
        if (c == '\\' && m - p >= 2) ++p;
        tokens_.push_back(Token{Token::Byte, static_cast<unsigned char>(pattern[p]), 0});
        ++p;
      }
    }
    too_deep_ = stars_before_end > kMaxStarNesting;
  }

  /// Whether `key` matches. `steps`, when given, grows by the tokens tested (tests bound the
  /// work with it).
  bool matches(std::string_view key, std::uint64_t* steps = nullptr) const {
    if (key.empty()) return tokens_.empty();
    if (too_deep_) return false;
    // Each token but '*' takes one byte, so only the last '*' seen ever needs to take more:
    // on a mismatch it takes one more byte and the tokens after it start over. A failure
    // there means no earlier '*' could help either (they could only start later).
    const std::size_t n = tokens_.size(), none = n;
    std::size_t t = 0, i = 0, star_t = none, star_i = 0;
    std::uint64_t tested = 0;
    bool result = false;
    for (;;) {
      if (i == key.size()) {
        while (t < n && tokens_[t].kind == Token::Star) ++t;
        result = t == n;
        break;
      }
      if (t < n && tokens_[t].kind == Token::Star) {
        if (++t == n) {
          result = true;
          break;
        }
        star_t = t;
        star_i = i;
        continue;
      }
      if (t < n) {
        ++tested;
        if (accepts(tokens_[t], static_cast<unsigned char>(key[i]))) {
          ++t;
          ++i;
          continue;
        }
      }
      if (star_t == none) break;
      t = star_t;
      i = ++star_i;
    }
    if (steps) *steps += tested;
    return result;
  }

 private:
  struct Token {
    enum Kind : std::uint8_t { Star, Any, Byte, Class } kind;
    unsigned char byte;  // Byte
    std::uint32_t set;   // Class: index into sets_
  };
  using ByteSet = std::array<std::uint64_t, 4>;

  bool accepts(const Token& tok, unsigned char c) const {
    switch (tok.kind) {
      case Token::Any: return true;
      case Token::Byte: return tok.byte == c;
      case Token::Class: return (sets_[tok.set][c >> 6] >> (c & 63)) & 1u;
      case Token::Star: break;
    }
    return false;
  }

  /// The class at pattern[p] == '['; returns the position after it.
  std::size_t add_class(std::string_view pattern, std::size_t p) {
    const std::size_t m = pattern.size();
    ByteSet set{};
    const auto add = [&set](int byte) {
      const unsigned b = static_cast<unsigned char>(byte);
      set[b >> 6] |= std::uint64_t{1} << (b & 63);
    };
    std::size_t q = p + 1;
    const bool negate = q < m && pattern[q] == '^';
    if (negate) ++q;
    while (q < m && pattern[q] != ']') {
      if (pattern[q] == '\\' && m - q >= 2) {
        add(pattern[++q]);
      } else if (m - q >= 3 && pattern[q + 1] == '-') {
        int lo = static_cast<signed char>(pattern[q]);
        int hi = static_cast<signed char>(pattern[q + 2]);
        if (lo > hi) std::swap(lo, hi);
        for (int b = lo; b <= hi; ++b) add(b);
        q += 2;
      } else {
        add(pattern[q]);
      }
      ++q;
    }
    if (negate)
      for (std::uint64_t& word : set) word = ~word;
    sets_.push_back(set);
    tokens_.push_back(Token{Token::Class, 0, static_cast<std::uint32_t>(sets_.size() - 1)});
    return q < m ? q + 1 : m;
  }

  std::vector<Token> tokens_;
  std::vector<ByteSet> sets_;
  bool too_deep_ = false;
};

/// Whether `s` matches the glob `pattern` (see GlobPattern; compile that once for many keys).
inline bool glob_match(std::string_view pattern, std::string_view s) {
  return GlobPattern(pattern).matches(s);
}

// ---- SCAN's cursor ----

/// The position of an element (a key, a hash field, a set or sorted set member) in SCAN's
/// order: FNV-1a over its bytes, then splitmix64's finalizer to spread it over all 64 bits.
/// Fixed on purpose (not std::hash): every node and every build agrees, so a client may
/// continue an iteration on another node.
inline std::uint64_t scan_hash(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325u;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3u;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9u;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebu;
  return h ^ (h >> 31);
}

/// One step of a SCAN over elements in scan_hash order: [it, end) is sorted by hash_of, every
/// element at or above the cursor. Visits at least `count` elements (fewer only at the end)
/// and every element that shares the last one's hash, then answers the next cursor: the hash
/// of the first element not visited, or 0 when none is left (the cursor only grows, and the
/// first step visits from hash 0, so 0 never means "continue").
///
/// Redis's guarantee follows: an element present from the first step to the last keeps its
/// hash, and a step moves the cursor only past hashes it visited, so it is returned at least
/// once; elements added or deleted meanwhile move nothing else (a position in key order, or
/// an index into the container, would shift). Elements may come twice only if their hash is
/// visited again, which a cursor that only grows never does: each element at most once.
template <class It, class HashOf, class Visit>
std::uint64_t scan_step(It it, It end, std::size_t count, HashOf hash_of, Visit visit) {
  std::size_t seen = 0;
  while (it != end) {
    const std::uint64_t h = hash_of(*it);
    if (seen >= count) return h;
    for (; it != end && hash_of(*it) == h; ++it, ++seen) visit(*it);
  }
  return 0;
}

/// SCAN's step over any container of named elements without an index of its own (HSCAN's
/// hash fields; SSCAN's and ZSCAN's members): name_of(element) is the name hashed, visit(element)
/// is called as scan_step says. O(n) per step (a linear pass and a selection, no sort of the
/// whole), so a step visits at least n / kMaxElementScanSteps elements whatever `count` says
/// (COUNT is a hint in Redis too): a whole iteration takes at most about that many steps,
/// O(n) in all. The keys have an index instead (Store::scan, O(log n + count) a step).
constexpr std::size_t kMaxElementScanSteps = 64;

template <class It, class NameOf, class Visit>
std::uint64_t scan_elements(It first, It last, NameOf name_of, std::uint64_t cursor, std::size_t count,
                            Visit visit) {
  std::vector<std::pair<std::uint64_t, It>> ahead;
  std::size_t n = 0;
  for (It it = first; it != last; ++it, ++n) {
    const std::uint64_t h = scan_hash(name_of(*it));
    if (h >= cursor) ahead.emplace_back(h, it);
  }
  const auto by_hash = [](const auto& a, const auto& b) { return a.first < b.first; };
  count = std::max({count, std::size_t{1}, (n + kMaxElementScanSteps - 1) / kMaxElementScanSteps});
  if (ahead.size() > count) {
    // Only the `count` smallest hashes, the ones tied with the largest of them, and the next
    // hash (the cursor to answer) matter.
    std::nth_element(ahead.begin(), ahead.begin() + static_cast<std::ptrdiff_t>(count - 1), ahead.end(), by_hash);
    const std::uint64_t last_hash = ahead[count - 1].first;
    auto keep = std::partition(ahead.begin() + static_cast<std::ptrdiff_t>(count), ahead.end(),
                               [last_hash](const auto& e) { return e.first <= last_hash; });
    if (keep != ahead.end()) {
      std::iter_swap(keep, std::min_element(keep, ahead.end(), by_hash));
      ++keep;
    }
    ahead.erase(keep, ahead.end());
  }
  std::sort(ahead.begin(), ahead.end(), by_hash);
  return scan_step(ahead.begin(), ahead.end(), count, [](const auto& e) { return e.first; },
                   [&](const auto& e) { visit(*e.second); });
}

/// A SCAN cursor as Redis reads it (strtoul: a sign is taken, "" is 0, leading space is not).
inline bool parse_scan_cursor(const std::string& s, std::uint64_t& out) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (resp::detail::is_space(s[0]) || *end != '\0' || errno == ERANGE) return false;
  out = v;
  return true;
}

/// The options of SCAN and its kin from words[from]: MATCH, COUNT, TYPE (SCAN), NOVALUES
/// (HSCAN, Redis 7.4). False with the error reply in `error`.
struct ScanOptions {
  std::size_t count = 10;
  const std::string* pattern = nullptr;  // null: every element
  const std::string* type = nullptr;
  bool novalues = false;
};

inline bool parse_scan_options(const std::vector<std::string>& w, std::size_t from, bool takes_type,
                               bool takes_novalues, ScanOptions& o, Reply& error) {
  for (std::size_t i = from; i < w.size();) {
    const bool has_value = i + 1 < w.size();
    if (iequals(w[i], "count") && has_value) {
      std::int64_t n = 0;
      if (!parse_int64(w[i + 1], n)) return error = not_integer_error(), false;
      if (n < 1) return error = syntax_error(), false;
      o.count = static_cast<std::size_t>(std::min<std::uint64_t>(std::uint64_t(n), SIZE_MAX));
      i += 2;
    } else if (iequals(w[i], "match") && has_value) {
      o.pattern = w[i + 1] == "*" ? nullptr : &w[i + 1];  // as in Redis, "*" also matches ""
      i += 2;
    } else if (takes_type && iequals(w[i], "type") && has_value) {
      o.type = &w[i + 1];
      i += 2;
    } else if (takes_novalues && iequals(w[i], "novalues")) {
      o.novalues = true;
      i += 1;
    } else {
      return error = syntax_error(), false;
    }
  }
  return true;
}

inline Reply scan_reply(std::uint64_t cursor, std::vector<Reply> items) {
  std::vector<Reply> reply;
  reply.push_back(Reply::bulk(std::to_string(cursor)));
  reply.push_back(Reply::array(std::move(items)));
  return Reply::array(std::move(reply));
}

/// TYPE's name of a kind ("" for a kind this list does not know yet).
inline const char* kind_name(Store::Kind kind) {
  if (kind == Store::Kind::String) return "string";
  if (kind == Store::Kind::Hash) return "hash";
  if (kind == Store::Kind::List) return "list";
  if (kind == Store::Kind::Set) return "set";
  if (kind == Store::Kind::SortedSet) return "zset";
  return "";
}

/// The randomness of read handlers (RANDOMKEY, HRANDFIELD): a read answers one client on one
/// node and changes nothing, so it need not be deterministic. Writes never use it.
inline std::mt19937_64& read_random() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  return generator;
}

/// The key's object for a read handler; `wrong` when it holds another kind.
inline const Store::Object* read_lookup(Call& c, std::string_view key, Store::Kind kind, bool& wrong) {
  const Store::Object* o = c.data.find(key, c.now_ms);
  wrong = o != nullptr && o->kind != kind;
  return wrong ? nullptr : o;
}
/// The key's object for a write handler, after deleting it if it has expired.
inline Store::Object* write_lookup(Call& c, std::string_view key, Store::Kind kind, bool& wrong) {
  Store::Object* o = c.data.find_for_write(key, c.now_ms);
  wrong = o != nullptr && o->kind != kind;
  return wrong ? nullptr : o;
}

inline Reply bulk_or_nil(const Store::Object* o) { return o ? Reply::bulk(o->str) : Reply::nil(); }

/// Resolves a Redis index (negative counts from the end) into [0, len); false if outside.
inline bool resolve_index(std::int64_t index, std::size_t len, std::size_t& out) {
  const auto n = static_cast<std::int64_t>(len);
  if (index < 0) index += n;
  if (index < 0 || index >= n) return false;
  out = static_cast<std::size_t>(index);
  return true;
}

/// The element at position i of a list, walking from the nearer end.
template <class L>
inline auto list_at(L& list, std::size_t i) {
  if (i <= list.size() / 2) return std::next(list.begin(), static_cast<std::ptrdiff_t>(i));
  return std::prev(list.end(), static_cast<std::ptrdiff_t>(list.size() - i));
}

/// Redis's range arithmetic (LRANGE, LTRIM): [start, stop] inclusive, negatives from the end,
/// clamped. False when the range is empty.
inline bool resolve_range(std::int64_t start, std::int64_t stop, std::size_t len,
                          std::size_t& first, std::size_t& count) {
  const auto n = static_cast<std::int64_t>(len);
  if (start < 0) start = start < -n ? 0 : start + n;
  if (stop < 0) stop = stop < -n ? -1 : stop + n;
  if (start > stop || start >= n) return false;
  if (stop >= n) stop = n - 1;
  first = static_cast<std::size_t>(start);
  count = static_cast<std::size_t>(stop - start + 1);
  return true;
}

// ---- string commands ----

inline Reply cmd_get(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::String, wrong);
  return wrong ? wrongtype_error() : bulk_or_nil(o);
}

/// The options of SET (and GETEX's subset), as Redis's parseExtendedStringArgumentsOrReply
/// takes them: one condition (NX, XX, or Redis 8.4's IFEQ / IFNE value; the same one repeated
/// is taken, the last value counting), GET, and one expiry (EX PX EXAT PXAT, the same unit
/// repeated is taken; KEEPTTL; GETEX's PERSIST).
struct StringOptions {
  enum class Cond : std::uint8_t { None, Nx, Xx, IfEq, IfNe };
  enum class Expire : std::uint8_t { None, Ex, Px, ExAt, PxAt };
  Cond cond = Cond::None;
  Expire expire = Expire::None;
  const std::string* match = nullptr;  // IFEQ / IFNE's value
  const std::string* expire_arg = nullptr;
  bool get = false, keepttl = false, persist = false;
};

/// Parses words[from..]; false: a syntax error. `getex`: GETEX's options (expiry and PERSIST).
inline bool parse_string_options(const std::vector<std::string>& w, std::size_t from, bool getex,
                                 StringOptions& o) {
  using Cond = StringOptions::Cond;
  using Expire = StringOptions::Expire;
  for (std::size_t j = from; j < w.size(); ++j) {
    const std::string& opt = w[j];
    const bool has_next = j + 1 < w.size();
    Expire unit = Expire::None;
    if (iequals(opt, "ex")) unit = Expire::Ex;
    else if (iequals(opt, "px")) unit = Expire::Px;
    else if (iequals(opt, "exat")) unit = Expire::ExAt;
    else if (iequals(opt, "pxat")) unit = Expire::PxAt;
    Cond cond = Cond::None;
    if (iequals(opt, "nx")) cond = Cond::Nx;
    else if (iequals(opt, "xx")) cond = Cond::Xx;
    else if (iequals(opt, "ifeq")) cond = Cond::IfEq;
    else if (iequals(opt, "ifne")) cond = Cond::IfNe;
    const bool with_value = cond == Cond::IfEq || cond == Cond::IfNe;

    if (!getex && cond != Cond::None && (o.cond == Cond::None || o.cond == cond) && (!with_value || has_next)) {
      o.cond = cond;
      if (with_value) o.match = &w[++j];
    } else if (!getex && iequals(opt, "get")) {
      o.get = true;
    } else if (!getex && iequals(opt, "keepttl") && o.expire == Expire::None) {
      o.keepttl = true;
    } else if (getex && iequals(opt, "persist") && o.expire == Expire::None) {
      o.persist = true;
    } else if (unit != Expire::None && !o.keepttl && !o.persist && (o.expire == Expire::None || o.expire == unit) &&
               has_next) {
      o.expire = unit;
      o.expire_arg = &w[++j];
    } else {
      return false;
    }
  }
  return true;
}

/// The deadline an expiry option asks for (none without one), or false with the error reply
/// ("invalid expire time in '<name>' command" as Redis's getExpireMillisecondsOrReply).
inline bool option_deadline(const StringOptions& o, std::int64_t now_ms, std::string_view name,
                            std::optional<std::int64_t>& deadline, Reply& error) {
  using Expire = StringOptions::Expire;
  if (o.expire_arg == nullptr) return true;
  std::int64_t when = 0;
  if (!parse_int64(*o.expire_arg, when)) return error = not_integer_error(), false;
  const bool seconds = o.expire == Expire::Ex || o.expire == Expire::ExAt;
  if (when <= 0 || (seconds && when > std::numeric_limits<std::int64_t>::max() / 1000))
    return error = invalid_expire_error(name), false;
  if (seconds) when *= 1000;
  if (o.expire == Expire::Ex || o.expire == Expire::Px) {
    const auto at = checked_add(when, now_ms);
    if (!at || *at <= 0) return error = invalid_expire_error(name), false;
    when = *at;
  }
  deadline = when;
  return true;
}

/// Stores a string at `key` with the deadline given (none: no deadline; one already past: the
/// key is set and gone at once, as in Redis).
inline void put_string(Call& c, const std::string& key, const std::string& value,
                       std::optional<std::int64_t> deadline) {
  c.data.put(key, Store::Kind::String).str = value;
  if (!deadline) return;
  if (*deadline <= c.now_ms)
    c.data.erase(key);
  else
    c.data.set_deadline(key, *deadline);
}

/// SET key value [NX|XX|IFEQ v|IFNE v] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL], as Redis 7
/// with Redis 8.4's IFEQ and IFNE: IFEQ sets only a string key holding exactly that value (a
/// missing key is not created), IFNE any key but one holding that value (a missing key is
/// created); either on a key of another kind is WRONGTYPE. Not setting answers nil, or with
/// GET the old value, as NX and XX do.
inline Reply cmd_set(Call& c) {
  using Cond = StringOptions::Cond;
  const auto& w = c.words;
  const std::string& key = w[1];
  if (w.size() == 3) {  // the common case: replace whatever is there
    c.data.put(key, Store::Kind::String).str = w[2];
    return Reply::ok();
  }
  StringOptions o;
  if (!parse_string_options(w, 3, false, o)) return syntax_error();
  std::optional<std::int64_t> deadline;
  Reply error;
  if (!option_deadline(o, c.now_ms, "set", deadline, error)) return error;

  const Store::Object* old = c.data.find_for_write(key, c.now_ms);
  const bool compares = o.cond == Cond::IfEq || o.cond == Cond::IfNe;
  if ((o.get || compares) && old != nullptr && old->kind != Store::Kind::String) return wrongtype_error();
  Reply reply = o.get ? bulk_or_nil(old) : Reply::ok();
  const bool equal = old != nullptr && old->str == (compares ? *o.match : std::string());
  const bool skip = (o.cond == Cond::Nx && old != nullptr) || (o.cond == Cond::Xx && old == nullptr) ||
                    (o.cond == Cond::IfEq && !equal) || (o.cond == Cond::IfNe && equal);
  if (skip) return o.get ? reply : Reply::nil();

  const std::optional<std::int64_t> kept = o.keepttl ? c.data.deadline(key) : std::nullopt;
  put_string(c, key, w[2], deadline ? deadline : kept);
  return reply;
}

inline Reply cmd_setnx(Call& c) {
  if (c.data.find_for_write(c.words[1], c.now_ms) != nullptr) return Reply::integer(0);
  c.data.put(c.words[1], Store::Kind::String).str = c.words[2];
  return Reply::integer(1);
}

inline Reply cmd_getset(Call& c) {
  bool wrong;
  const Store::Object* o = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  Reply reply = bulk_or_nil(o);
  c.data.put(c.words[1], Store::Kind::String).str = c.words[2];
  return reply;
}

inline Reply cmd_mget(Call& c) {
  std::vector<Reply> items;
  items.reserve(c.words.size() - 1);
  for (std::size_t i = 1; i < c.words.size(); ++i) {
    const Store::Object* o = c.data.find(c.words[i], c.now_ms);
    items.push_back(o != nullptr && o->kind == Store::Kind::String ? Reply::bulk(o->str) : Reply::nil());
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_mset(Call& c) {
  if (c.words.size() % 2 == 0) return arity_error(c.words[0]);
  for (std::size_t i = 1; i + 1 < c.words.size(); i += 2)
    c.data.put(c.words[i], Store::Kind::String).str = c.words[i + 1];
  return Reply::ok();
}

inline Reply cmd_del(Call& c) {
  std::int64_t removed = 0;
  for (std::size_t i = 1; i < c.words.size(); ++i) {
    c.data.check_ttl(c.words[i], c.now_ms);
    removed += c.data.erase(c.words[i]) ? 1 : 0;
  }
  return Reply::integer(removed);
}

inline Reply cmd_exists(Call& c) {
  std::int64_t n = 0;
  for (std::size_t i = 1; i < c.words.size(); ++i)
    n += c.data.find(c.words[i], c.now_ms) != nullptr ? 1 : 0;
  return Reply::integer(n);
}

inline Reply incr_by(Call& c, std::int64_t increment) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  std::int64_t value = 0;
  if (o != nullptr && !parse_int64(o->str, value)) return not_integer_error();
  const auto result = checked_add(value, increment);
  if (!result) return overflow_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::String);
  o->str = std::to_string(*result);  // in place: the key keeps its deadline, as in Redis
  return Reply::integer(*result);
}

inline Reply cmd_incr(Call& c) { return incr_by(c, 1); }
inline Reply cmd_decr(Call& c) { return incr_by(c, -1); }
inline Reply cmd_incrby(Call& c) {
  std::int64_t n = 0;
  if (!parse_int64(c.words[2], n)) return not_integer_error();
  return incr_by(c, n);
}
inline Reply cmd_decrby(Call& c) {
  std::int64_t n = 0;
  if (!parse_int64(c.words[2], n)) return not_integer_error();
  if (n == std::numeric_limits<std::int64_t>::min())
    return Reply::error("ERR decrement would overflow");
  return incr_by(c, -n);
}

inline Reply cmd_append(Call& c) {
  constexpr std::size_t kMaxString = kProtoMaxBulkLen;
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  const std::string& tail = c.words[2];
  if (o == nullptr) {
    o = &c.data.put(c.words[1], Store::Kind::String);
  } else if (o->str.size() + tail.size() > kMaxString) {
    return Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
  }
  o->str += tail;
  return Reply::integer(static_cast<std::int64_t>(o->str.size()));
}

inline Reply cmd_strlen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->str.size()) : 0);
}

/// GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]: GET that also sets or removes the deadline.
inline Reply cmd_getex(Call& c) {
  StringOptions o;
  if (!parse_string_options(c.words, 2, true, o)) return syntax_error();
  bool wrong;
  const Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr) return Reply::nil();
  std::optional<std::int64_t> deadline;
  Reply error;
  if (!option_deadline(o, c.now_ms, "getex", deadline, error)) return error;
  Reply reply = Reply::bulk(s->str);
  if (deadline && *deadline <= c.now_ms)
    c.data.erase(c.words[1]);
  else if (deadline)
    c.data.set_deadline(c.words[1], *deadline);
  else if (o.persist)
    c.data.clear_ttl(c.words[1]);
  return reply;
}

inline Reply cmd_getdel(Call& c) {
  bool wrong;
  const Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr) return Reply::nil();
  Reply reply = Reply::bulk(s->str);
  c.data.erase(c.words[1]);
  return reply;
}

/// SETEX key seconds value, PSETEX key ms value.
inline Reply setex_generic(Call& c, bool seconds) {
  StringOptions o;
  o.expire = seconds ? StringOptions::Expire::Ex : StringOptions::Expire::Px;
  o.expire_arg = &c.words[2];
  std::optional<std::int64_t> deadline;
  Reply error;
  if (!option_deadline(o, c.now_ms, c.words[0], deadline, error)) return error;
  put_string(c, c.words[1], c.words[3], deadline);
  return Reply::ok();
}

inline Reply cmd_setex(Call& c) { return setex_generic(c, true); }
inline Reply cmd_psetex(Call& c) { return setex_generic(c, false); }

/// MSETNX key value [key value ...]: all or none, none when any key exists.
inline Reply cmd_msetnx(Call& c) {
  if (c.words.size() % 2 == 0) return arity_error(c.words[0]);
  for (std::size_t i = 1; i < c.words.size(); i += 2)
    if (c.data.find_for_write(c.words[i], c.now_ms) != nullptr) return Reply::integer(0);
  for (std::size_t i = 1; i + 1 < c.words.size(); i += 2)
    c.data.put(c.words[i], Store::Kind::String).str = c.words[i + 1];
  return Reply::integer(1);
}

/// GETRANGE key start end: Redis's arithmetic (both negative and start > end: empty).
inline Reply cmd_getrange(Call& c) {
  std::int64_t start = 0, end = 0;
  if (!parse_int64(c.words[2], start) || !parse_int64(c.words[3], end)) return not_integer_error();
  bool wrong;
  const Store::Object* s = read_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr) return Reply::bulk("");
  const auto len = static_cast<std::int64_t>(s->str.size());
  if (start < 0 && end < 0 && start > end) return Reply::bulk("");
  if (start < 0) start = std::max<std::int64_t>(0, len + start);  // len >= 0: no overflow
  if (end < 0) end = std::max<std::int64_t>(0, len + end);
  if (end >= len) end = len - 1;
  if (start > end || len == 0) return Reply::bulk("");
  return Reply::bulk(s->str.substr(static_cast<std::size_t>(start), static_cast<std::size_t>(end - start + 1)));
}

inline Reply string_too_long_error() {
  return Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
}

/// SETRANGE key offset value: zero-padded, at most kProtoMaxBulkLen bytes in all.
inline Reply cmd_setrange(Call& c) {
  std::int64_t offset = 0;
  if (!parse_int64(c.words[2], offset)) return not_integer_error();
  if (offset < 0) return Reply::error("ERR offset is out of range");
  const std::string& value = c.words[3];
  bool wrong;
  Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (value.empty()) return Reply::integer(s ? static_cast<std::int64_t>(s->str.size()) : 0);
  if (std::uint64_t(offset) > kProtoMaxBulkLen || std::uint64_t(offset) + value.size() > kProtoMaxBulkLen)
    return string_too_long_error();
  if (s == nullptr) s = &c.data.put(c.words[1], Store::Kind::String);
  const auto at = static_cast<std::size_t>(offset);
  if (s->str.size() < at + value.size()) s->str.resize(at + value.size(), '\0');
  s->str.replace(at, value.size(), value);
  return Reply::integer(static_cast<std::int64_t>(s->str.size()));
}

// INCRBYFLOAT and HINCRBYFLOAT compute as Redis does, in long double, and write the result as
// Redis does, so that replies match it digit for digit: "10.5" + "0.1" is "10.6" there, where
// binary64 arithmetic would give 10.59999999999999964. The result is deterministic on every
// node of one architecture (x86-64's long double is the 80-bit x87 format everywhere); a
// cluster mixing architectures whose long double differs (aarch64: 128-bit) could disagree.

/// While alive, this thread reads and writes numbers in the "C" locale ('.' as the decimal
/// point), whatever locale the program set: every node must read and write the same text.
class CNumericLocale {
 public:
  CNumericLocale() : previous_(c_locale() != locale_t(0) ? uselocale(c_locale()) : locale_t(0)) {}
  ~CNumericLocale() {
    if (previous_ != locale_t(0)) uselocale(previous_);
  }
  CNumericLocale(const CNumericLocale&) = delete;
  CNumericLocale& operator=(const CNumericLocale&) = delete;

 private:
  static locale_t c_locale() {
    static const locale_t c = newlocale(LC_ALL_MASK, "C", locale_t(0));
    return c;
  }
  locale_t previous_;
};

/// Redis's string2ld: strtold over the whole text, no leading space, no NaN, no overflow.
inline bool parse_long_double(const std::string& s, long double& out) {
  if (s.empty() || s.size() >= 5 * 1024) return false;
  const CNumericLocale c_locale;
  errno = 0;
  char* end = nullptr;
  const long double v = std::strtold(s.c_str(), &end);
  if (resp::detail::is_space(s[0]) || end != s.c_str() + s.size() || std::isnan(v) ||  // a NUL inside: no
      (errno == ERANGE && (v == HUGE_VALL || v == -HUGE_VALL || v == 0)))
    return false;
  out = v;
  return true;
}

/// Redis's ld2string in its "human" mode: 17 decimals, trailing zeros (and a bare '.') cut,
/// "-0" written "0".
inline std::string format_long_double(long double v) {
  const CNumericLocale c_locale;
  char buf[5 * 1024];
  const int n = std::snprintf(buf, sizeof buf, "%.17Lf", v);
  if (n <= 0 || static_cast<std::size_t>(n) >= sizeof buf) return "0";  // finite values fit
  std::string s(buf, static_cast<std::size_t>(n));
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (s == "-0") s = "0";
  return s;
}

inline Reply not_float_error() { return Reply::error("ERR value is not a valid float"); }
inline Reply nan_or_infinity_error() { return Reply::error("ERR increment would produce NaN or Infinity"); }

inline Reply cmd_incrbyfloat(Call& c) {
  bool wrong;
  Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  long double value = 0, increment = 0;
  if ((s != nullptr && !parse_long_double(s->str, value)) || !parse_long_double(c.words[2], increment))
    return not_float_error();
  value += increment;
  if (std::isnan(value) || std::isinf(value)) return nan_or_infinity_error();
  if (s == nullptr) s = &c.data.put(c.words[1], Store::Kind::String);
  s->str = format_long_double(value);  // in place: the key keeps its deadline, as in Redis
  return Reply::bulk(s->str);
}

// ---- compare-and-set without scripts (Redis 8.4's DELEX, Valkey 9's DELIFEQ; SET IFEQ above) ----

/// DELEX key [IFEQ value | IFNE value]: DEL of one key, or only when its string value is (not)
/// the one given; a condition on a key of another kind is WRONGTYPE. Redis's IFDEQ / IFDNE
/// (an XXH3 digest of the value) are not implemented.
inline Reply cmd_delex(Call& c) {
  const auto& w = c.words;
  const std::string& key = w[1];
  if (w.size() == 2) {
    c.data.check_ttl(key, c.now_ms);
    return Reply::integer(c.data.erase(key) ? 1 : 0);
  }
  const bool ifeq = iequals(w[2], "ifeq");
  if (w.size() != 4 || (!ifeq && !iequals(w[2], "ifne"))) return syntax_error();
  bool wrong;
  const Store::Object* s = write_lookup(c, key, Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr || (s->str == w[3]) != ifeq) return Reply::integer(0);
  c.data.erase(key);
  return Reply::integer(1);
}

/// DELIFEQ key value: deletes the key only if it holds exactly this string (a lock's release).
inline Reply cmd_delifeq(Call& c) {
  bool wrong;
  const Store::Object* s = write_lookup(c, c.words[1], Store::Kind::String, wrong);
  if (wrong) return wrongtype_error();
  if (s == nullptr || s->str != c.words[2]) return Reply::integer(0);
  c.data.erase(c.words[1]);
  return Reply::integer(1);
}

// ---- keys and expiry ----

inline Reply cmd_type(Call& c) {
  const Store::Object* o = c.data.find(c.words[1], c.now_ms);
  if (o == nullptr) return Reply::simple("none");
  switch (o->kind) {
    case Store::Kind::String: return Reply::simple("string");
    case Store::Kind::Hash: return Reply::simple("hash");
    case Store::Kind::List: return Reply::simple("list");
    case Store::Kind::Set: return Reply::simple("set");
    case Store::Kind::SortedSet: return Reply::simple("zset");
  }
  return Reply::simple("none");
}

inline Reply cmd_dbsize(Call& c) {
  return Reply::integer(static_cast<std::int64_t>(c.data.live_size(c.now_ms)));
}

inline Reply cmd_keys(Call& c) {
  const std::string& pattern = c.words[1];
  const bool all = pattern == "*";  // as in Redis, the only pattern that sees the empty key
  const GlobPattern glob(pattern);
  std::vector<Reply> keys;
  c.data.for_each([&](const std::string& key, const Store::Object&, std::optional<std::int64_t> d) {
    if (d && *d <= c.now_ms) return;
    if (all || glob.matches(key)) keys.push_back(Reply::bulk(key));
  });
  return Reply::array(std::move(keys));
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time [NX|XX|GT|LT], as Redis 7.
inline Reply expire_generic(Call& c, bool seconds, bool relative) {
  const auto& w = c.words;
  bool nx = false, xx = false, gt = false, lt = false;
  for (std::size_t j = 3; j < w.size(); ++j) {
    if (iequals(w[j], "nx")) nx = true;
    else if (iequals(w[j], "xx")) xx = true;
    else if (iequals(w[j], "gt")) gt = true;
    else if (iequals(w[j], "lt")) lt = true;
    else return Reply::error("ERR Unsupported option " + w[j]);
  }
  if (nx && (xx || gt || lt))
    return Reply::error("ERR NX and XX, GT or LT options at the same time are not compatible");
  if (gt && lt) return Reply::error("ERR GT and LT options at the same time are not compatible");

  std::int64_t when = 0;
  if (!parse_int64(w[2], when)) return not_integer_error();
  if (seconds) {
    if (when > std::numeric_limits<std::int64_t>::max() / 1000 ||
        when < std::numeric_limits<std::int64_t>::min() / 1000)
      return invalid_expire_error(w[0]);
    when *= 1000;
  }
  if (relative) {
    const auto at = checked_add(when, c.now_ms);
    if (!at) return invalid_expire_error(w[0]);
    when = *at;
  }

  if (c.data.find_for_write(w[1], c.now_ms) == nullptr) return Reply::integer(0);
  const std::optional<std::int64_t> current = c.data.deadline(w[1]);
  if (nx && current) return Reply::integer(0);
  if (xx && !current) return Reply::integer(0);
  if (gt && (!current || when <= *current)) return Reply::integer(0);  // none = infinite
  if (lt && current && when >= *current) return Reply::integer(0);
  if (when <= c.now_ms)
    c.data.erase(w[1]);
  else
    c.data.set_deadline(w[1], when);
  return Reply::integer(1);
}

inline Reply cmd_expire(Call& c) { return expire_generic(c, true, true); }
inline Reply cmd_pexpire(Call& c) { return expire_generic(c, false, true); }
inline Reply cmd_expireat(Call& c) { return expire_generic(c, true, false); }
inline Reply cmd_pexpireat(Call& c) { return expire_generic(c, false, false); }

inline Reply ttl_generic(Call& c, bool ms) {
  if (c.data.find(c.words[1], c.now_ms) == nullptr) return Reply::integer(-2);
  const std::optional<std::int64_t> d = c.data.deadline(c.words[1]);
  if (!d) return Reply::integer(-1);
  // *d > now_ms here (find hides the rest); saturate rather than overflow on odd clocks.
  const auto diff = c.now_ms > std::numeric_limits<std::int64_t>::min()
                        ? checked_add(*d, -c.now_ms)
                        : std::nullopt;
  const std::int64_t remaining = diff ? *diff : std::numeric_limits<std::int64_t>::max();
  if (ms) return Reply::integer(remaining);
  return Reply::integer(remaining / 1000 + (remaining % 1000 >= 500 ? 1 : 0));
}

inline Reply cmd_ttl(Call& c) { return ttl_generic(c, false); }
inline Reply cmd_pttl(Call& c) { return ttl_generic(c, true); }

inline Reply cmd_persist(Call& c) {
  if (c.data.find_for_write(c.words[1], c.now_ms) == nullptr || !c.data.deadline(c.words[1]))
    return Reply::integer(0);
  c.data.clear_ttl(c.words[1]);
  return Reply::integer(1);
}

/// RENAME / RENAMENX key newkey: the value and its deadline move; a key renamed to itself
/// stays (OK / 0).
inline Reply rename_generic(Call& c, bool nx) {
  const std::string& from = c.words[1];
  const std::string& to = c.words[2];
  Store::Object* o = c.data.find_for_write(from, c.now_ms);
  if (o == nullptr) return Reply::error("ERR no such key");
  if (from == to) return nx ? Reply::integer(0) : Reply::ok();
  if (nx && c.data.find_for_write(to, c.now_ms) != nullptr) return Reply::integer(0);
  const std::optional<std::int64_t> deadline = c.data.deadline(from);
  Store::Object value = std::move(*o);
  c.data.erase(from);
  c.data.put(to, value.kind) = std::move(value);
  if (deadline) c.data.set_deadline(to, *deadline);
  return nx ? Reply::integer(1) : Reply::ok();
}

inline Reply cmd_rename(Call& c) { return rename_generic(c, false); }
inline Reply cmd_renamenx(Call& c) { return rename_generic(c, true); }

/// COPY source destination [DB 0] [REPLACE]: one database here, so DB takes only 0.
inline Reply cmd_copy(Call& c) {
  const auto& w = c.words;
  bool replace = false;
  for (std::size_t j = 3; j < w.size(); ++j) {
    if (iequals(w[j], "replace")) {
      replace = true;
    } else if (iequals(w[j], "db") && j + 1 < w.size()) {
      std::int64_t db = 0;
      if (!parse_int64(w[++j], db)) return not_integer_error();
      if (db != 0) return Reply::error("ERR DB index is out of range");
    } else {
      return syntax_error();
    }
  }
  if (w[1] == w[2]) return Reply::error("ERR source and destination objects are the same");
  const Store::Object* from = c.data.find_for_write(w[1], c.now_ms);
  if (from == nullptr) return Reply::integer(0);
  if (c.data.find_for_write(w[2], c.now_ms) != nullptr && !replace) return Reply::integer(0);
  const std::optional<std::int64_t> deadline = c.data.deadline(w[1]);
  Store::Object copy = *from;
  c.data.put(w[2], copy.kind) = std::move(copy);
  if (deadline) c.data.set_deadline(w[2], *deadline);
  return Reply::integer(1);
}

inline Reply cmd_randomkey(Call& c) {
  const std::string* key = c.data.key_near_hash(read_random()(), c.now_ms);
  return key ? Reply::bulk(*key) : Reply::nil();
}

/// FLUSHALL / FLUSHDB [ASYNC|SYNC]: both delete every key at once (one database).
inline Reply cmd_flushall(Call& c) {
  if (c.words.size() > 2 || (c.words.size() == 2 && !iequals(c.words[1], "async") && !iequals(c.words[1], "sync")))
    return syntax_error();
  c.data.clear();
  return Reply::ok();
}

inline Reply expiretime_generic(Call& c, bool ms) {
  if (c.data.find(c.words[1], c.now_ms) == nullptr) return Reply::integer(-2);
  const std::optional<std::int64_t> d = c.data.deadline(c.words[1]);
  if (!d) return Reply::integer(-1);
  return Reply::integer(ms ? *d : *d / 1000);
}

inline Reply cmd_expiretime(Call& c) { return expiretime_generic(c, false); }
inline Reply cmd_pexpiretime(Call& c) { return expiretime_generic(c, true); }

/// OBJECT ENCODING|FREQ|IDLETIME|REFCOUNT key, OBJECT HELP, answering what is true here:
/// ENCODING names the nearest Redis encoding of the representation ("raw": a string is always
/// its bytes, never "int" or "embstr"; "hashtable": a hash or a set is an ordered tree, never a
/// listpack or intset; "linkedlist": a list is a doubly linked list, never a quicklist;
/// "skiplist": a sorted set is ordered by score and by member, never a listpack); REFCOUNT is 1
/// (no value is shared); FREQ and IDLETIME are errors, as no access is tracked (FREQ's is
/// Redis's own under its default policy).
inline Reply cmd_object(Call& c) {
  const auto& w = c.words;
  const std::string sub = lower(w[1]);
  const bool keyed = sub == "encoding" || sub == "freq" || sub == "idletime" || sub == "refcount";
  if (!keyed && sub != "help")
    return Reply::error("ERR unknown subcommand '" + w[1].substr(0, 128) + "'. Try OBJECT HELP.");
  if (w.size() != (keyed ? 3u : 2u)) return arity_error("object|" + sub);
  if (sub == "help") {
    return Reply::array({
        Reply::simple("OBJECT <subcommand> [<arg> ...]. Subcommands are:"),
        Reply::simple("ENCODING <key>"),
        Reply::simple("    The nearest Redis encoding of how the value is held: raw (a string's bytes),"),
        Reply::simple("    hashtable (a hash or a set: an ordered tree), linkedlist (a list: a linked list),"),
        Reply::simple("    skiplist (a sorted set: ordered trees by member and by score)."),
        Reply::simple("FREQ <key>"),
        Reply::simple("    An error: access frequency is not tracked."),
        Reply::simple("IDLETIME <key>"),
        Reply::simple("    An error: access times are not tracked."),
        Reply::simple("REFCOUNT <key>"),
        Reply::simple("    1: no value is shared."),
        Reply::simple("HELP"),
        Reply::simple("    Print this help."),
    });
  }
  const Store::Object* o = c.data.find(w[2], c.now_ms);
  if (o == nullptr) return Reply::nil();
  if (sub == "refcount") return Reply::integer(1);
  if (sub == "freq")
    return Reply::error(
        "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching "
        "between policies at runtime LRU and LFU data will take some time to adjust.");
  if (sub == "idletime") return Reply::error("ERR idle time is not tracked: this store keeps no access times");
  if (o->kind == Store::Kind::String) return Reply::bulk("raw");
  if (o->kind == Store::Kind::Hash) return Reply::bulk("hashtable");
  if (o->kind == Store::Kind::List) return Reply::bulk("linkedlist");
  if (o->kind == Store::Kind::Set) return Reply::bulk("hashtable");
  return Reply::bulk("skiplist");  // a sorted set: an ordered tree of scores beside the members
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]: see scan_step for the cursor.
inline Reply cmd_scan(Call& c) {
  std::uint64_t cursor = 0;
  if (!parse_scan_cursor(c.words[1], cursor)) return Reply::error("ERR invalid cursor");
  ScanOptions o;
  Reply error;
  if (!parse_scan_options(c.words, 2, true, false, o, error)) return error;
  const std::optional<GlobPattern> glob = o.pattern ? std::optional<GlobPattern>(*o.pattern) : std::nullopt;
  const std::string type = o.type ? lower(*o.type) : std::string();
  std::vector<Reply> keys;
  const std::uint64_t next = c.data.scan(
      cursor, o.count, [&](const std::string& key, const Store::Object& obj, std::optional<std::int64_t> d) {
        if (d && *d <= c.now_ms) return;
        if (glob && !glob->matches(key)) return;
        if (o.type && type != kind_name(obj.kind)) return;
        keys.push_back(Reply::bulk(key));
      });
  return scan_reply(next, std::move(keys));
}

// ---- hashes ----

inline Reply hset_generic(Call& c, bool reply_ok) {
  if (c.words.size() % 2 != 0) return arity_error(c.words[0]);
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  std::int64_t added = 0;
  for (std::size_t i = 2; i + 1 < c.words.size(); i += 2) {
    auto [it, inserted] = o->hash.try_emplace(c.words[i], c.words[i + 1]);
    if (inserted) {
      ++added;
      Store::grew(*o, Store::kHashEntryBytes + it->first.size() + it->second.size());
    } else {
      Store::shrank(*o, it->second.size());
      it->second = c.words[i + 1];
      Store::grew(*o, it->second.size());
    }
  }
  return reply_ok ? Reply::ok() : Reply::integer(added);
}

inline Reply cmd_hset(Call& c) { return hset_generic(c, false); }
inline Reply cmd_hmset(Call& c) { return hset_generic(c, true); }

inline Reply cmd_hget(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::nil();
  const auto it = o->hash.find(c.words[2]);
  return it == o->hash.end() ? Reply::nil() : Reply::bulk(it->second);
}

inline Reply cmd_hdel(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  std::int64_t removed = 0;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    const auto it = o->hash.find(c.words[i]);
    if (it == o->hash.end()) continue;
    Store::shrank(*o, Store::kHashEntryBytes + it->first.size() + it->second.size());
    o->hash.erase(it);
    ++removed;
  }
  if (o->hash.empty()) c.data.erase(c.words[1]);
  return Reply::integer(removed);
}

inline Reply cmd_hlen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->hash.size()) : 0);
}

inline Reply cmd_hgetall(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> flat;
  if (o != nullptr) {
    flat.reserve(o->hash.size() * 2);
    for (const auto& [field, value] : o->hash) {
      flat.push_back(Reply::bulk(field));
      flat.push_back(Reply::bulk(value));
    }
  }
  return Reply::map(std::move(flat));
}

inline Reply cmd_hexists(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o != nullptr && o->hash.count(c.words[2]) != 0 ? 1 : 0);
}

inline Reply hash_column(Call& c, bool fields) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  if (o != nullptr) {
    items.reserve(o->hash.size());
    for (const auto& [field, value] : o->hash) items.push_back(Reply::bulk(fields ? field : value));
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_hkeys(Call& c) { return hash_column(c, true); }
inline Reply cmd_hvals(Call& c) { return hash_column(c, false); }

inline Reply cmd_hmget(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  items.reserve(c.words.size() - 2);
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (o == nullptr) {
      items.push_back(Reply::nil());
      continue;
    }
    const auto it = o->hash.find(c.words[i]);
    items.push_back(it != o->hash.end() ? Reply::bulk(it->second) : Reply::nil());
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_hincrby(Call& c) {
  std::int64_t increment = 0;
  if (!parse_int64(c.words[3], increment)) return not_integer_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  std::int64_t value = 0;
  if (o != nullptr) {
    const auto it = o->hash.find(c.words[2]);
    if (it != o->hash.end() && !parse_int64(it->second, value))
      return Reply::error("ERR hash value is not an integer");
  }
  const auto result = checked_add(value, increment);
  if (!result) return overflow_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  auto [field, inserted] = o->hash.try_emplace(c.words[2]);
  Store::shrank(*o, inserted ? 0 : field->second.size());
  field->second = std::to_string(*result);
  Store::grew(*o, (inserted ? Store::kHashEntryBytes + field->first.size() : 0) + field->second.size());
  return Reply::integer(*result);
}

inline Reply cmd_hincrbyfloat(Call& c) {
  long double increment = 0, value = 0;
  if (!parse_long_double(c.words[3], increment)) return not_float_error();
  if (std::isnan(increment) || std::isinf(increment)) return Reply::error("ERR value is NaN or Infinity");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o != nullptr) {
    const auto it = o->hash.find(c.words[2]);
    if (it != o->hash.end() && !parse_long_double(it->second, value))
      return Reply::error("ERR hash value is not a float");
  }
  value += increment;
  if (std::isnan(value) || std::isinf(value)) return nan_or_infinity_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  auto [field, inserted] = o->hash.try_emplace(c.words[2]);
  Store::shrank(*o, inserted ? 0 : field->second.size());
  field->second = format_long_double(value);
  Store::grew(*o, (inserted ? Store::kHashEntryBytes + field->first.size() : 0) + field->second.size());
  return Reply::bulk(field->second);
}

inline Reply cmd_hsetnx(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o != nullptr && o->hash.count(c.words[2]) != 0) return Reply::integer(0);
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Hash);
  const auto it = o->hash.emplace(c.words[2], c.words[3]).first;
  Store::grew(*o, Store::kHashEntryBytes + it->first.size() + it->second.size());
  return Reply::integer(1);
}

inline Reply cmd_hstrlen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  const auto it = o->hash.find(c.words[2]);
  return Reply::integer(it == o->hash.end() ? 0 : static_cast<std::int64_t>(it->second.size()));
}

/// HRANDFIELD key [count [WITHVALUES]], as Redis 7: a positive count gives distinct fields
/// (the whole hash, in order, when it has no more), a negative one may repeat them. A read:
/// its choices come from read_random(). A reply of more than kMaxRandomFields fields is
/// refused (Redis builds it, however large).
inline Reply cmd_hrandfield(Call& c) {
  constexpr std::uint64_t kMaxRandomFields = std::uint64_t{1} << 24;
  const auto& w = c.words;
  std::int64_t count = 0;
  const bool has_count = w.size() >= 3;
  bool with_values = false;
  if (has_count) {
    if (!parse_int64(w[2], count)) return not_integer_error();
    if (count == std::numeric_limits<std::int64_t>::min())
      return Reply::error(
          "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807");
    if (w.size() > 4 || (w.size() == 4 && !iequals(w[3], "withvalues"))) return syntax_error();
    with_values = w.size() == 4;
    if (with_values && count < -std::numeric_limits<std::int64_t>::max() / 2)
      return Reply::error("ERR value is out of range");
  }
  bool wrong;
  const Store::Object* o = read_lookup(c, w[1], Store::Kind::Hash, wrong);
  if (wrong) return wrongtype_error();
  auto& random = read_random();
  if (!has_count) {
    if (o == nullptr) return Reply::nil();
    std::uniform_int_distribution<std::size_t> pick(0, o->hash.size() - 1);
    return Reply::bulk(std::next(o->hash.begin(), static_cast<std::ptrdiff_t>(pick(random)))->first);
  }
  if (o == nullptr || count == 0) return Reply::array();
  const std::uint64_t wanted = count > 0 ? std::uint64_t(count) : 0 - std::uint64_t(count);
  const Store::Hash& hash = o->hash;
  std::vector<Store::Hash::const_iterator> chosen;
  if (count > 0 && wanted >= hash.size()) {
    for (auto it = hash.begin(); it != hash.end(); ++it) chosen.push_back(it);
  } else {
    if (wanted > kMaxRandomFields) return Reply::error("ERR value is out of range");
    std::vector<Store::Hash::const_iterator> all;
    all.reserve(hash.size());
    for (auto it = hash.begin(); it != hash.end(); ++it) all.push_back(it);
    if (count < 0) {
      std::uniform_int_distribution<std::size_t> pick(0, all.size() - 1);
      for (std::uint64_t k = 0; k < wanted; ++k) chosen.push_back(all[pick(random)]);
    } else {  // a partial Fisher-Yates shuffle: `wanted` distinct fields
      for (std::size_t k = 0; k < wanted; ++k) {
        std::uniform_int_distribution<std::size_t> pick(k, all.size() - 1);
        std::swap(all[k], all[pick(random)]);
        chosen.push_back(all[k]);
      }
    }
  }
  std::vector<Reply> items;
  items.reserve(chosen.size());
  for (const auto& it : chosen)
    items.push_back(with_values ? Reply::array({Reply::bulk(it->first), Reply::bulk(it->second)})
                                : Reply::bulk(it->first));
  return with_values ? Reply::pairs(std::move(items)) : Reply::array(std::move(items));
}

/// HSCAN, SSCAN and ZSCAN: key cursor [MATCH pattern] [COUNT count] (HSCAN: [NOVALUES]) over
/// the elements of a key of `kind`, see scan_elements. elements(o) gives the container,
/// name_of(element) the name matched and hashed, emit(element, items) the reply's words.
template <class Elements, class NameOf, class Emit>
Reply scan_key_elements(Call& c, Store::Kind kind, Elements elements, NameOf name_of, Emit emit) {
  std::uint64_t cursor = 0;
  if (!parse_scan_cursor(c.words[2], cursor)) return Reply::error("ERR invalid cursor");
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], kind, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return scan_reply(0, {});
  ScanOptions opts;
  Reply error;
  if (!parse_scan_options(c.words, 3, false, kind == Store::Kind::Hash, opts, error)) return error;
  const std::optional<GlobPattern> glob = opts.pattern ? std::optional<GlobPattern>(*opts.pattern) : std::nullopt;
  std::vector<Reply> items;
  const auto& container = elements(*o);
  const std::uint64_t next =
      scan_elements(container.begin(), container.end(), name_of, cursor, opts.count, [&](const auto& element) {
        if (glob && !glob->matches(name_of(element))) return;
        emit(element, opts, items);
      });
  return scan_reply(next, std::move(items));
}

inline Reply cmd_hscan(Call& c) {
  return scan_key_elements(
      c, Store::Kind::Hash, [](const Store::Object& o) -> const Store::Hash& { return o.hash; },
      [](const auto& field) -> std::string_view { return field.first; },
      [](const auto& field, const ScanOptions& opts, std::vector<Reply>& items) {
        items.push_back(Reply::bulk(field.first));
        if (!opts.novalues) items.push_back(Reply::bulk(field.second));
      });
}

// ---- lists ----

inline Reply push_generic(Call& c, bool front) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::List);
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (front)
      o->list.push_front(c.words[i]);
    else
      o->list.push_back(c.words[i]);
    Store::grew(*o, Store::kListEntryBytes + c.words[i].size());
  }
  return Reply::integer(static_cast<std::int64_t>(o->list.size()));
}

inline Reply cmd_lpush(Call& c) { return push_generic(c, true); }
inline Reply cmd_rpush(Call& c) { return push_generic(c, false); }

/// Takes the element at one end of a non-empty list, its bytes counted off (the caller erases
/// the key once the list is empty).
inline std::string take_list_end(Store::Object& o, bool front) {
  std::string v = std::move(front ? o.list.front() : o.list.back());
  Store::shrank(o, Store::kListEntryBytes + v.size());
  if (front)
    o.list.pop_front();
  else
    o.list.pop_back();
  return v;
}

/// LPOP / RPOP key [count], as Redis 7.
inline Reply pop_generic(Call& c, bool front) {
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 0;
  if (has_count && (!parse_int64(c.words[2], count) || count < 0))
    return Reply::error("ERR value is out of range, must be positive");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return has_count ? Reply::null_array() : Reply::nil();
  const auto take = [&] { return take_list_end(*o, front); };
  Reply reply;
  if (!has_count) {
    reply = Reply::bulk(take());
  } else {
    const auto n = std::min<std::uint64_t>(std::uint64_t(count), o->list.size());
    std::vector<Reply> items;
    items.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t k = 0; k < n; ++k) items.push_back(Reply::bulk(take()));
    reply = Reply::array(std::move(items));
  }
  if (o->list.empty()) c.data.erase(c.words[1]);
  return reply;
}

inline Reply cmd_lpop(Call& c) { return pop_generic(c, true); }
inline Reply cmd_rpop(Call& c) { return pop_generic(c, false); }

inline Reply cmd_lrange(Call& c) {
  std::int64_t start = 0, stop = 0;
  if (!parse_int64(c.words[2], start) || !parse_int64(c.words[3], stop))
    return not_integer_error();
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  std::size_t first = 0, count = 0;
  if (o != nullptr && resolve_range(start, stop, o->list.size(), first, count)) {
    items.reserve(count);
    auto it = list_at(o->list, first);
    for (std::size_t k = 0; k < count; ++k, ++it) items.push_back(Reply::bulk(*it));
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_lindex(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::nil();
  std::int64_t index = 0;
  if (!parse_int64(c.words[2], index)) return not_integer_error();
  std::size_t i = 0;
  if (!resolve_index(index, o->list.size(), i)) return Reply::nil();
  return Reply::bulk(*list_at(o->list, i));
}

inline Reply cmd_llen(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->list.size()) : 0);
}

inline Reply cmd_lset(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::error("ERR no such key");
  std::int64_t index = 0;
  if (!parse_int64(c.words[2], index)) return not_integer_error();
  std::size_t i = 0;
  if (!resolve_index(index, o->list.size(), i)) return Reply::error("ERR index out of range");
  std::string& element = *list_at(o->list, i);
  Store::shrank(*o, element.size());
  element = c.words[3];
  Store::grew(*o, element.size());
  return Reply::ok();
}

/// LREM key count element: count > 0 from the head, < 0 from the tail, 0 all.
inline Reply cmd_lrem(Call& c) {
  std::int64_t count = 0;
  if (!parse_int64(c.words[2], count)) return not_integer_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  const std::string& element = c.words[3];
  const std::uint64_t limit =
      count == 0 ? std::numeric_limits<std::uint64_t>::max()
                 : (count > 0 ? std::uint64_t(count) : 0 - std::uint64_t(count));
  std::uint64_t removed = 0;
  auto& list = o->list;
  if (count >= 0) {
    for (auto it = list.begin(); it != list.end() && removed < limit;) {
      if (*it == element) {
        Store::shrank(*o, Store::kListEntryBytes + it->size());
        it = list.erase(it);
        ++removed;
      } else {
        ++it;
      }
    }
  } else {
    for (auto it = list.end(); it != list.begin() && removed < limit;) {
      --it;
      if (*it == element) {
        Store::shrank(*o, Store::kListEntryBytes + it->size());
        it = list.erase(it);
        ++removed;
      }
    }
  }
  if (list.empty()) c.data.erase(c.words[1]);
  return Reply::integer(static_cast<std::int64_t>(removed));
}

inline Reply cmd_ltrim(Call& c) {
  std::int64_t start = 0, stop = 0;
  if (!parse_int64(c.words[2], start) || !parse_int64(c.words[3], stop))
    return not_integer_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::ok();
  auto& list = o->list;
  std::size_t first = 0, count = 0;
  if (!resolve_range(start, stop, list.size(), first, count)) {
    c.data.erase(c.words[1]);
    return Reply::ok();
  }
  const std::size_t after = list.size() - first - count;
  // One element at a time, counting each (the time is the erasing's anyway).
  for (std::size_t k = 0; k < first; ++k) {
    Store::shrank(*o, Store::kListEntryBytes + list.front().size());
    list.pop_front();
  }
  for (std::size_t k = 0; k < after; ++k) {
    Store::shrank(*o, Store::kListEntryBytes + list.back().size());
    list.pop_back();
  }
  return Reply::ok();
}

/// LPUSHX / RPUSHX key element [element ...]: only onto an existing list.
inline Reply pushx_generic(Call& c) {
  bool wrong;
  const Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  return push_generic(c, c.words[0] == "lpushx");
}

inline Reply cmd_lpushx(Call& c) { return pushx_generic(c); }
inline Reply cmd_rpushx(Call& c) { return pushx_generic(c); }

/// LPOS key element [RANK rank] [COUNT num] [MAXLEN len], as Redis 7.
inline Reply cmd_lpos(Call& c) {
  const auto& w = c.words;
  std::int64_t rank = 1, count = -1, maxlen = 0;
  for (std::size_t j = 3; j < w.size(); ++j) {
    const bool has_value = j + 1 < w.size();
    if (iequals(w[j], "rank") && has_value) {
      if (!parse_int64(w[++j], rank)) return not_integer_error();
      if (rank == 0)
        return Reply::error(
            "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to "
            "start from the end of the list");
    } else if (iequals(w[j], "count") && has_value) {
      if (!parse_int64(w[++j], count) || count < 0) return Reply::error("ERR COUNT can't be negative");
    } else if (iequals(w[j], "maxlen") && has_value) {
      if (!parse_int64(w[++j], maxlen) || maxlen < 0) return Reply::error("ERR MAXLEN can't be negative");
    } else {
      return syntax_error();
    }
  }
  bool wrong;
  const Store::Object* o = read_lookup(c, w[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  const bool many = count != -1;
  if (o == nullptr) return many ? Reply::array() : Reply::nil();
  const bool from_head = rank > 0;
  // Redis negates a negative rank; the lowest one stays negative there and means "the first".
  const std::uint64_t skip = rank > 0 ? std::uint64_t(rank) - 1
                             : rank == std::numeric_limits<std::int64_t>::min() ? 0
                                                                                 : std::uint64_t(-rank) - 1;
  const auto& list = o->list;
  const auto n = static_cast<std::int64_t>(list.size());
  std::vector<Reply> found;
  std::uint64_t matches = 0;
  std::int64_t examined = 0;
  const auto check = [&](const std::string& e, std::int64_t position) {
    if (e != w[2] || matches++ < skip) return false;
    found.push_back(Reply::integer(position));
    return !many || (count != 0 && static_cast<std::int64_t>(found.size()) >= count);
  };
  if (from_head) {
    for (auto it = list.begin(); it != list.end() && (maxlen == 0 || examined < maxlen); ++it, ++examined)
      if (check(*it, examined)) break;
  } else {
    for (auto it = list.rbegin(); it != list.rend() && (maxlen == 0 || examined < maxlen); ++it, ++examined)
      if (check(*it, n - 1 - examined)) break;
  }
  if (many) return Reply::array(std::move(found));
  return found.empty() ? Reply::nil() : std::move(found.front());
}

/// LINSERT key BEFORE|AFTER pivot element: the length, 0 without the key, -1 without the pivot.
inline Reply cmd_linsert(Call& c) {
  const bool after = iequals(c.words[2], "after");
  if (!after && !iequals(c.words[2], "before")) return syntax_error();
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  auto it = std::find(o->list.begin(), o->list.end(), c.words[3]);
  if (it == o->list.end()) return Reply::integer(-1);
  o->list.insert(after ? std::next(it) : it, c.words[4]);
  Store::grew(*o, Store::kListEntryBytes + c.words[4].size());
  return Reply::integer(static_cast<std::int64_t>(o->list.size()));
}

/// LMOVE source destination LEFT|RIGHT LEFT|RIGHT (and RPOPLPUSH: RIGHT LEFT).
inline Reply move_generic(Call& c, bool from_left, bool to_left) {
  const std::string& from = c.words[1];
  const std::string& to = c.words[2];
  bool wrong;
  Store::Object* source = write_lookup(c, from, Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  if (source == nullptr) return Reply::nil();
  Store::Object* target = write_lookup(c, to, Store::Kind::List, wrong);
  if (wrong) return wrongtype_error();
  std::string element = take_list_end(*source, from_left);
  if (target == nullptr) target = &c.data.put(to, Store::Kind::List);
  if (to_left)
    target->list.push_front(element);
  else
    target->list.push_back(element);
  Store::grew(*target, Store::kListEntryBytes + element.size());
  if (source->list.empty()) c.data.erase(from);  // not the target: it holds the element
  return Reply::bulk(std::move(element));
}

inline Reply cmd_lmove(Call& c) {
  const bool from_left = iequals(c.words[3], "left"), to_left = iequals(c.words[4], "left");
  if ((!from_left && !iequals(c.words[3], "right")) || (!to_left && !iequals(c.words[4], "right")))
    return syntax_error();
  return move_generic(c, from_left, to_left);
}

inline Reply cmd_rpoplpush(Call& c) { return move_generic(c, false, true); }

// ---- sets ----

/// The random choices of SPOP and SRANDMEMBER. In a write (an applied entry: c.index != 0, or
/// any write handler) the stream is a function of the entry's index and term and the command's
/// words, so every node picks alike; in a read, this thread's generator seeded once from
/// std::random_device (a read changes nothing, so its choice need not repeat).
class EntryRandom {
 public:
  EntryRandom(const Call& c, bool in_write) {
    if (!in_write && c.index == 0) {
      static thread_local std::mt19937_64 reads{std::random_device{}()};
      state_ = reads();
      return;
    }
    // FNV-1a over the words, mixed with the entry's id (SplitMix64 spreads it).
    std::uint64_t h = 1469598103934665603ull;
    for (const std::string& w : c.words) {
      for (unsigned char ch : w) h = (h ^ ch) * 1099511628211ull;
      h = (h ^ 0xffu) * 1099511628211ull;  // the boundary between words
    }
    state_ = h ^ (c.index * 0x9E3779B97F4A7C15ull) ^ (c.term * 0xC2B2AE3D27D4EB4Full);
  }
  /// SplitMix64.
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n), n > 0 (rejection sampling: no modulo bias).
  std::size_t below(std::size_t n) {
    const std::uint64_t bound = std::uint64_t(n);
    const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % bound;
    for (;;) {
      const std::uint64_t r = next();
      if (r < limit) return static_cast<std::size_t>(r % bound);
    }
  }

 private:
  std::uint64_t state_ = 0;
};

/// `k` distinct positions of [0, n), k <= n, in random order (a partial Fisher-Yates).
inline std::vector<std::size_t> distinct_positions(EntryRandom& rng, std::size_t n, std::size_t k) {
  std::vector<std::size_t> all(n);
  for (std::size_t i = 0; i < n; ++i) all[i] = i;
  for (std::size_t i = 0; i < k; ++i) std::swap(all[i], all[i + rng.below(n - i)]);
  all.resize(k);
  return all;
}

inline Reply strings_set(const Store::Set& members) {
  std::vector<Reply> items;
  items.reserve(members.size());
  for (const auto& m : members) items.push_back(Reply::bulk(m));
  return Reply::set(std::move(items));
}

inline Reply cmd_sadd(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) o = &c.data.put(c.words[1], Store::Kind::Set);
  Store::Set& set = o->set();
  std::int64_t added = 0;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (!set.insert(c.words[i]).second) continue;
    ++added;
    Store::grew(*o, Store::kSetEntryBytes + c.words[i].size());
  }
  return Reply::integer(added);
}

inline Reply cmd_srem(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  Store::Set& set = o->set();
  std::int64_t removed = 0;
  for (std::size_t i = 2; i < c.words.size() && !set.empty(); ++i) {
    if (set.erase(c.words[i]) == 0) continue;
    ++removed;
    Store::shrank(*o, Store::kSetEntryBytes + c.words[i].size());
  }
  if (set.empty()) c.data.erase(c.words[1]);
  return Reply::integer(removed);
}

inline Reply cmd_smembers(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  return o ? strings_set(o->set()) : Reply::set();
}

inline Reply cmd_sismember(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o != nullptr && o->set().count(c.words[2]) != 0 ? 1 : 0);
}

inline Reply cmd_smismember(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  for (std::size_t i = 2; i < c.words.size(); ++i)
    items.push_back(Reply::integer(o != nullptr && o->set().count(c.words[i]) != 0 ? 1 : 0));
  return Reply::array(std::move(items));
}

inline Reply cmd_scard(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->set().size()) : 0);
}

/// SPOP key [count]: members chosen by EntryRandom (the same on every node).
inline Reply cmd_spop(Call& c) {
  if (c.words.size() > 3) return syntax_error();
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 0;
  if (has_count && (!parse_int64(c.words[2], count) || count < 0))
    return Reply::error("ERR value is out of range, must be positive");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return has_count ? Reply::set() : Reply::nil();
  if (has_count && count == 0) return Reply::set();  // Redis 7.0's empty set (~0 in RESP3)
  Store::Set& set = o->set();
  EntryRandom rng(c, true);
  if (!has_count) {
    auto it = std::next(set.begin(), static_cast<std::ptrdiff_t>(rng.below(set.size())));
    std::string member = std::move(set.extract(it).value());
    Store::shrank(*o, Store::kSetEntryBytes + member.size());
    if (set.empty()) c.data.erase(c.words[1]);
    return Reply::bulk(std::move(member));
  }
  std::vector<Reply> items;
  if (std::uint64_t(count) >= set.size()) {  // all of it: the key goes
    for (const auto& m : set) items.push_back(Reply::bulk(m));
    c.data.erase(c.words[1]);
    return Reply::set(std::move(items));
  }
  std::vector<Store::Set::iterator> at;
  at.reserve(set.size());
  for (auto it = set.begin(); it != set.end(); ++it) at.push_back(it);
  for (std::size_t pos : distinct_positions(rng, set.size(), static_cast<std::size_t>(count))) {
    std::string member = std::move(set.extract(at[pos]).value());
    Store::shrank(*o, Store::kSetEntryBytes + member.size());
    items.push_back(Reply::bulk(std::move(member)));
  }
  return Reply::set(std::move(items));
}

constexpr std::uint64_t kMaxRandomRepeats = std::uint64_t{1} << 22;

/// SRANDMEMBER key [count]: count > 0 distinct members, count < 0 |count| with repeats.
inline Reply cmd_srandmember(Call& c) {
  if (c.words.size() > 3) return syntax_error();
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 0;
  if (has_count && !parse_int64(c.words[2], count)) return not_integer_error();
  if (has_count && count == std::numeric_limits<std::int64_t>::min())
    return Reply::error("ERR value is out of range, value must between -9223372036854775807 and "
                        "9223372036854775807");
  // Redis would build any reply and drop the client at its output buffer limit (or run out of
  // memory): here a count of repeats beyond kMaxRandomRepeats is refused.
  if (has_count && count < 0 && 0 - std::uint64_t(count) > kMaxRandomRepeats)
    return Reply::error("ERR count is too large: SRANDMEMBER returns at most " + std::to_string(kMaxRandomRepeats) +
                        " members with repeats here");
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return has_count ? Reply::array() : Reply::nil();
  const Store::Set& set = o->set();
  EntryRandom rng(c, false);
  std::vector<Store::Set::const_iterator> at;
  const auto positions = [&] {
    if (at.empty())
      for (auto it = set.begin(); it != set.end(); ++it) at.push_back(it);
  };
  if (!has_count)
    return Reply::bulk(*std::next(set.begin(), static_cast<std::ptrdiff_t>(rng.below(set.size()))));
  std::vector<Reply> items;
  if (count < 0) {
    positions();
    const std::uint64_t n = 0 - std::uint64_t(count);
    items.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t k = 0; k < n; ++k) items.push_back(Reply::bulk(*at[rng.below(at.size())]));
    return Reply::array(std::move(items));
  }
  if (std::uint64_t(count) >= set.size()) {
    for (const auto& m : set) items.push_back(Reply::bulk(m));
    return Reply::array(std::move(items));
  }
  positions();
  for (std::size_t pos : distinct_positions(rng, set.size(), static_cast<std::size_t>(count)))
    items.push_back(Reply::bulk(*at[pos]));
  return Reply::array(std::move(items));
}

enum class SetOp : std::uint8_t { Inter, Union, Diff };

/// The result of SINTER / SUNION / SDIFF over words[first..]; `wrong` when a key holds
/// another kind. Missing keys are empty sets.
inline Store::Set combine_sets(Call& c, std::size_t first, SetOp op, bool& wrong) {
  std::vector<const Store::Set*> sets;
  static const Store::Set none;
  wrong = false;
  for (std::size_t i = first; i < c.words.size(); ++i) {
    const Store::Object* o = read_lookup(c, c.words[i], Store::Kind::Set, wrong);
    if (wrong) return {};
    sets.push_back(o ? &o->set() : &none);
  }
  Store::Set out;
  if (op == SetOp::Union) {
    for (const auto* s : sets) out.insert(s->begin(), s->end());
  } else if (op == SetOp::Diff) {
    out = *sets[0];
    for (std::size_t i = 1; i < sets.size() && !out.empty(); ++i)
      for (const auto& m : *sets[i]) out.erase(m);
  } else {
    const auto smallest = std::min_element(sets.begin(), sets.end(),
                                           [](const auto* a, const auto* b) { return a->size() < b->size(); });
    for (const auto& m : **smallest) {
      bool everywhere = true;
      for (const auto* s : sets) everywhere = everywhere && s->count(m) != 0;
      if (everywhere) out.insert(m);
    }
  }
  return out;
}

inline Reply set_op(Call& c, SetOp op) {
  bool wrong;
  Store::Set result = combine_sets(c, 1, op, wrong);
  return wrong ? wrongtype_error() : strings_set(result);
}

/// S*STORE destination key...: replaces the destination (whatever it held) with the result,
/// or deletes it when the result is empty.
inline Reply set_op_store(Call& c, SetOp op) {
  // The sources are looked at for writing: an expired one is deleted first, as Redis does.
  for (std::size_t i = 2; i < c.words.size(); ++i) c.data.check_ttl(c.words[i], c.now_ms);
  bool wrong;
  Store::Set result = combine_sets(c, 2, op, wrong);
  if (wrong) return wrongtype_error();
  const std::string& dest = c.words[1];
  if (result.empty()) {
    c.data.check_ttl(dest, c.now_ms);
    c.data.erase(dest);
    return Reply::integer(0);
  }
  const auto n = static_cast<std::int64_t>(result.size());
  Store::Object& o = c.data.put(dest, Store::Kind::Set);
  for (const auto& m : result) Store::grew(o, Store::kSetEntryBytes + m.size());
  o.set() = std::move(result);
  return Reply::integer(n);
}

inline Reply cmd_sinter(Call& c) { return set_op(c, SetOp::Inter); }
inline Reply cmd_sunion(Call& c) { return set_op(c, SetOp::Union); }
inline Reply cmd_sdiff(Call& c) { return set_op(c, SetOp::Diff); }
inline Reply cmd_sinterstore(Call& c) { return set_op_store(c, SetOp::Inter); }
inline Reply cmd_sunionstore(Call& c) { return set_op_store(c, SetOp::Union); }
inline Reply cmd_sdiffstore(Call& c) { return set_op_store(c, SetOp::Diff); }

inline Reply cmd_smove(Call& c) {
  const std::string &source = c.words[1], &dest = c.words[2], &member = c.words[3];
  bool wrong;
  Store::Object* from = write_lookup(c, source, Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (from == nullptr) return Reply::integer(0);  // before the destination's kind, as Redis
  Store::Object* to = write_lookup(c, dest, Store::Kind::Set, wrong);
  if (wrong) return wrongtype_error();
  if (from->set().count(member) == 0) return Reply::integer(0);
  if (source == dest) return Reply::integer(1);
  from->set().erase(member);
  Store::shrank(*from, Store::kSetEntryBytes + member.size());
  if (from->set().empty()) c.data.erase(source);
  if (to == nullptr) to = &c.data.put(dest, Store::Kind::Set);
  if (to->set().insert(member).second) Store::grew(*to, Store::kSetEntryBytes + member.size());
  return Reply::integer(1);
}

inline Reply cmd_sscan(Call& c) {
  return scan_key_elements(
      c, Store::Kind::Set, [](const Store::Object& o) -> const Store::Set& { return o.set(); },
      [](const std::string& member) -> std::string_view { return member; },
      [](const std::string& member, const ScanOptions&, std::vector<Reply>& items) {
        items.push_back(Reply::bulk(member));
      });
}

// ---- sorted sets ----

/// A score as Redis 7.0 writes it: "%.17g", and inf / -inf (in the C locale, as every number
/// the store reads or writes).
inline std::string format_score(double d) {
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  const CNumericLocale c_locale;
  char b[32];
  const int n = std::snprintf(b, sizeof b, "%.17g", d);
  return std::string(b, static_cast<std::size_t>(n));
}

inline Reply score_reply(double d) { return Reply::real(d, format_score(d)); }

/// Redis's string2d: all of `s` is a strtod number ("inf", "1e3", "0x1p3", " 1" no), not NaN,
/// not an overflow nor an underflow to zero.
inline bool parse_score(const std::string& s, double& out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  const CNumericLocale c_locale;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || std::isnan(out)) return false;
  return !(errno == ERANGE && (std::isinf(out) || out == 0));
}

inline Reply nan_score_error() { return Reply::error("ERR resulting score is not a number (NaN)"); }

/// A score range's end, as Redis's zslParseRange: "(x" exclusive, strtod up to the string's
/// first NUL (so "" is 0), not NaN.
inline bool parse_score_bound(const std::string& s, double& value, bool& exclusive) {
  const char* p = s.c_str();
  exclusive = *p == '(';
  if (exclusive) ++p;
  const CNumericLocale c_locale;
  char* end = nullptr;
  value = std::strtod(p, &end);
  return *end == '\0' && !std::isnan(value);
}

struct ScoreRange {
  double min = 0, max = 0;
  bool min_exclusive = false, max_exclusive = false;
  bool above_min(double s) const { return min_exclusive ? s > min : s >= min; }
  bool below_max(double s) const { return max_exclusive ? s < max : s <= max; }
};

inline bool parse_score_range(const std::string& min, const std::string& max, ScoreRange& r) {
  return parse_score_bound(min, r.min, r.min_exclusive) && parse_score_bound(max, r.max, r.max_exclusive);
}

/// A lex range's end, as zslParseLexRangeItem: "-" and "+" (the ends), "[x" or "(x".
struct LexBound {
  enum Kind : std::uint8_t { Min, Max, Inclusive, Exclusive } kind = Min;
  std::string value;
};

inline bool parse_lex_bound(const std::string& s, LexBound& b) {
  const char* p = s.c_str();
  switch (*p) {
    case '+': b.kind = LexBound::Max; return p[1] == '\0';
    case '-': b.kind = LexBound::Min; return p[1] == '\0';
    case '(': b.kind = LexBound::Exclusive; break;
    case '[': b.kind = LexBound::Inclusive; break;
    default: return false;
  }
  b.value = s.substr(1);
  return true;
}

inline bool lex_above_min(const LexBound& min, const std::string& m) {
  switch (min.kind) {
    case LexBound::Min: return true;
    case LexBound::Max: return false;
    case LexBound::Inclusive: return m >= min.value;
    case LexBound::Exclusive: return m > min.value;
  }
  return false;
}
inline bool lex_below_max(const LexBound& max, const std::string& m) {
  switch (max.kind) {
    case LexBound::Min: return false;
    case LexBound::Max: return true;
    case LexBound::Inclusive: return m <= max.value;
    case LexBound::Exclusive: return m < max.value;
  }
  return false;
}

/// ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...], and ZINCRBY.
inline Reply zadd_generic(Call& c, std::size_t first, bool incr, bool nx, bool xx, bool gt, bool lt, bool ch) {
  const auto& w = c.words;
  const std::size_t elements = (w.size() - first) / 2;
  if (nx && xx) return Reply::error("ERR XX and NX options at the same time are not compatible");
  if ((gt && nx) || (lt && nx) || (gt && lt))
    return Reply::error("ERR GT, LT, and/or NX options at the same time are not compatible");
  if (incr && elements > 1) return Reply::error("ERR INCR option supports a single increment-element pair");
  std::vector<double> scores(elements);
  for (std::size_t j = 0; j < elements; ++j)
    if (!parse_score(w[first + 2 * j], scores[j])) return not_float_error();
  bool wrong;
  Store::Object* o = write_lookup(c, w[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr && xx) return incr ? Reply::nil() : Reply::integer(0);
  if (incr && o != nullptr) {  // the only error after the lookup: checked before any change
    const double* old = o->zset().score(w[first + 1]);
    if (old != nullptr && std::isnan(*old + scores[0])) return nan_score_error();
  }
  if (o == nullptr) o = &c.data.put(w[1], Store::Kind::SortedSet);
  Store::SortedSet& z = o->zset();
  std::int64_t added = 0, updated = 0;
  bool processed = false;
  double result = 0;
  for (std::size_t j = 0; j < elements; ++j) {
    const std::string& member = w[first + 2 * j + 1];
    double score = scores[j];
    const double* old = z.score(member);
    if (old != nullptr && incr) score += *old;
    // -0 is kept as 0, as Redis keeps it in a sorted set of up to 128 members (its listpack
    // encoding; its skip list would keep -0).
    if (score == 0) score = 0;
    if (old != nullptr) {
      if (nx || (lt && score >= *old) || (gt && score <= *old)) continue;
      processed = true;
      result = score;
      if (score != *old) {
        z.set(member, score);
        ++updated;
      }
    } else {
      if (xx) continue;
      z.set(member, score);
      Store::grew(*o, Store::kSortedSetEntryBytes + member.size());
      ++added;
      processed = true;
      result = scores[j];  // as Redis answers a new member: the increment as given, -0 too
    }
  }
  if (z.empty()) c.data.erase(w[1]);  // made here, and nothing added (cannot happen; kept safe)
  if (incr) return processed ? score_reply(result) : Reply::nil();
  return Reply::integer(ch ? added + updated : added);
}

inline Reply cmd_zadd(Call& c) {
  const auto& w = c.words;
  bool nx = false, xx = false, gt = false, lt = false, ch = false, incr = false;
  std::size_t j = 2;
  for (; j < w.size(); ++j) {
    if (iequals(w[j], "nx")) nx = true;
    else if (iequals(w[j], "xx")) xx = true;
    else if (iequals(w[j], "gt")) gt = true;
    else if (iequals(w[j], "lt")) lt = true;
    else if (iequals(w[j], "ch")) ch = true;
    else if (iequals(w[j], "incr")) incr = true;
    else break;
  }
  const std::size_t left = w.size() - j;
  if (left == 0 || left % 2 != 0) return syntax_error();
  return zadd_generic(c, j, incr, nx, xx, gt, lt, ch);
}

inline Reply cmd_zincrby(Call& c) { return zadd_generic(c, 2, true, false, false, false, false, false); }

inline Reply cmd_zrem(Call& c) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  std::int64_t removed = 0;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    if (!o->zset().erase(c.words[i])) continue;
    ++removed;
    Store::shrank(*o, Store::kSortedSetEntryBytes + c.words[i].size());
  }
  if (o->zset().empty()) c.data.erase(c.words[1]);
  return Reply::integer(removed);
}

inline Reply cmd_zscore(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  const double* s = o ? o->zset().score(c.words[2]) : nullptr;
  return s ? score_reply(*s) : Reply::nil();
}

inline Reply cmd_zmscore(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  for (std::size_t i = 2; i < c.words.size(); ++i) {
    const double* s = o ? o->zset().score(c.words[i]) : nullptr;
    items.push_back(s ? score_reply(*s) : Reply::nil());
  }
  return Reply::array(std::move(items));
}

inline Reply cmd_zcard(Call& c) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  return Reply::integer(o ? static_cast<std::int64_t>(o->zset().size()) : 0);
}

inline Reply cmd_zcount(Call& c) {
  ScoreRange range;
  if (!parse_score_range(c.words[2], c.words[3], range))
    return Reply::error("ERR min or max is not a float");
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::int64_t n = 0;
  if (o != nullptr) {
    const auto& order = o->zset().order();
    for (auto it = range.min_exclusive ? order.upper_bound(range.min) : order.lower_bound(range.min);
         it != order.end() && range.below_max(it->score); ++it)
      ++n;
  }
  return Reply::integer(n);
}

inline Reply rank_generic(Call& c, bool reverse) {
  bool wrong;
  const Store::Object* o = read_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr || o->zset().score(c.words[2]) == nullptr) return Reply::nil();
  const std::size_t rank = o->zset().rank(c.words[2]);
  return Reply::integer(static_cast<std::int64_t>(reverse ? o->zset().size() - 1 - rank : rank));
}

inline Reply cmd_zrank(Call& c) { return rank_generic(c, false); }
inline Reply cmd_zrevrank(Call& c) { return rank_generic(c, true); }

/// A member and its score in a reply: [member, score] pairs (flattened for RESP2).
inline void add_scored(std::vector<Reply>& items, const Store::SortedSet::Entry& e, bool with_scores) {
  if (with_scores)
    items.push_back(Reply::array({Reply::bulk(*e.member), score_reply(e.score)}));
  else
    items.push_back(Reply::bulk(*e.member));
}

/// The members of a range in the asked direction: rank, score or lex, offset and limit
/// (offset < 0: none; limit < 0: all), as Redis's zrangeGenericCommand.
enum class RangeBy : std::uint8_t { Rank, Score, Lex };

struct RangeSpec {
  RangeBy by = RangeBy::Rank;
  bool reverse = false;
  std::int64_t start = 0, stop = 0;  // Rank
  ScoreRange score;                  // Score
  LexBound lex_min, lex_max;         // Lex
  std::int64_t offset = 0, limit = -1;
};

/// Calls f(order iterator) for each member in the range, in order, and returns nothing.
template <class F>
inline void walk_range(const Store::SortedSet& z, const RangeSpec& r, F&& f) {
  const auto& order = z.order();
  if (r.by == RangeBy::Rank) {
    std::size_t first = 0, count = 0;
    if (!resolve_range(r.start, r.stop, z.size(), first, count)) return;
    if (!r.reverse) {
      auto it = std::next(order.begin(), static_cast<std::ptrdiff_t>(first));
      for (std::size_t k = 0; k < count; ++k, ++it) f(it);
    } else {
      auto it = std::prev(order.end(), static_cast<std::ptrdiff_t>(first + 1));
      for (std::size_t k = 0; k < count; ++k) {
        f(it);
        if (k + 1 < count) --it;
      }
    }
    return;
  }
  if (r.offset < 0) return;
  const auto in_range = [&](const Store::SortedSet::Entry& e) {
    if (r.by == RangeBy::Score) return r.score.above_min(e.score) && r.score.below_max(e.score);
    return lex_above_min(r.lex_min, *e.member) && lex_below_max(r.lex_max, *e.member);
  };
  std::int64_t skip = r.offset, left = r.limit;
  const auto visit = [&](auto it) {  // false: stop
    if (skip > 0) {
      --skip;
      return true;
    }
    if (left == 0) return false;
    if (left > 0) --left;
    f(it);
    return true;
  };
  if (r.by == RangeBy::Score) {
    if (!r.reverse) {
      auto it = r.score.min_exclusive ? order.upper_bound(r.score.min) : order.lower_bound(r.score.min);
      for (; it != order.end() && r.score.below_max(it->score); ++it)
        if (!visit(it)) return;
    } else {
      auto end = r.score.max_exclusive ? order.lower_bound(r.score.max) : order.upper_bound(r.score.max);
      for (auto it = end; it != order.begin();) {
        --it;
        if (!r.score.above_min(it->score)) return;
        if (!visit(it)) return;
      }
    }
    return;
  }
  // Lex: meaningful when every score is the same (as in Redis); a walk over the whole order.
  if (!r.reverse) {
    for (auto it = order.begin(); it != order.end(); ++it)
      if (in_range(*it) && !visit(it)) return;
  } else {
    for (auto it = order.end(); it != order.begin();) {
      --it;
      if (in_range(*it) && !visit(it)) return;
    }
  }
}

/// ZRANGE and its older forms. `words_from`: the first option word; by/reverse preset by
/// the command (Rank and !reverse for ZRANGE, which its options may change).
inline Reply zrange_generic(Call& c, RangeBy preset_by, bool preset_reverse, bool options_choose) {
  const auto& w = c.words;
  bool with_scores = false, has_by = !options_choose, has_rev = !options_choose;
  RangeSpec r;
  r.by = preset_by;
  r.reverse = preset_reverse;
  for (std::size_t j = 4; j < w.size(); ++j) {
    const std::size_t left = w.size() - j - 1;
    if (iequals(w[j], "withscores")) {
      with_scores = true;
    } else if (iequals(w[j], "limit") && left >= 2) {
      if (!parse_int64(w[j + 1], r.offset) || !parse_int64(w[j + 2], r.limit)) return not_integer_error();
      j += 2;
    } else if (!has_rev && iequals(w[j], "rev")) {
      has_rev = true;
      r.reverse = true;
    } else if (!has_by && iequals(w[j], "bylex")) {
      has_by = true;
      r.by = RangeBy::Lex;
    } else if (!has_by && iequals(w[j], "byscore")) {
      has_by = true;
      r.by = RangeBy::Score;
    } else {
      return syntax_error();
    }
  }
  if (r.limit != -1 && r.by == RangeBy::Rank)
    return Reply::error("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX");
  if (with_scores && r.by == RangeBy::Lex)
    return Reply::error("ERR syntax error, WITHSCORES not supported in combination with BYLEX");
  // Reversed score and lex ranges are given as max, min.
  const bool swap = r.reverse && r.by != RangeBy::Rank;
  const std::string& min = swap ? w[3] : w[2];
  const std::string& max = swap ? w[2] : w[3];
  if (r.by == RangeBy::Rank) {
    if (!parse_int64(min, r.start) || !parse_int64(max, r.stop)) return not_integer_error();
  } else if (r.by == RangeBy::Score) {
    if (!parse_score_range(min, max, r.score)) return Reply::error("ERR min or max is not a float");
  } else if (!parse_lex_bound(min, r.lex_min) || !parse_lex_bound(max, r.lex_max)) {
    return Reply::error("ERR min or max not valid string range item");
  }
  bool wrong;
  const Store::Object* o = read_lookup(c, w[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  if (o != nullptr) walk_range(o->zset(), r, [&](auto it) { add_scored(items, *it, with_scores); });
  return with_scores ? Reply::pairs(std::move(items)) : Reply::array(std::move(items));
}

inline Reply cmd_zrange(Call& c) { return zrange_generic(c, RangeBy::Rank, false, true); }
inline Reply cmd_zrangebyscore(Call& c) { return zrange_generic(c, RangeBy::Score, false, false); }
inline Reply cmd_zrevrangebyscore(Call& c) { return zrange_generic(c, RangeBy::Score, true, false); }

/// Removes the members walk_range visits; deletes an emptied key.
inline Reply zremrange(Call& c, const RangeSpec& r) {
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  if (o == nullptr) return Reply::integer(0);
  std::vector<std::string> doomed;
  walk_range(o->zset(), r, [&](auto it) { doomed.push_back(*it->member); });
  for (const auto& m : doomed) {
    o->zset().erase(m);
    Store::shrank(*o, Store::kSortedSetEntryBytes + m.size());
  }
  if (o->zset().empty()) c.data.erase(c.words[1]);
  return Reply::integer(static_cast<std::int64_t>(doomed.size()));
}

inline Reply cmd_zremrangebyscore(Call& c) {
  RangeSpec r;
  r.by = RangeBy::Score;
  if (!parse_score_range(c.words[2], c.words[3], r.score)) return Reply::error("ERR min or max is not a float");
  return zremrange(c, r);
}

inline Reply cmd_zremrangebyrank(Call& c) {
  RangeSpec r;
  if (!parse_int64(c.words[2], r.start) || !parse_int64(c.words[3], r.stop)) return not_integer_error();
  return zremrange(c, r);
}

/// ZPOPMIN / ZPOPMAX key [count]: [member, score] flat without a count; pairs with one.
inline Reply zpop(Call& c, bool max) {
  if (c.words.size() > 3) return syntax_error();
  const bool has_count = c.words.size() == 3;
  std::int64_t count = 1;
  if (has_count && (!parse_int64(c.words[2], count) || count < 0))
    return Reply::error("ERR value is out of range, must be positive");
  bool wrong;
  Store::Object* o = write_lookup(c, c.words[1], Store::Kind::SortedSet, wrong);
  if (wrong) return wrongtype_error();
  std::vector<Reply> items;
  if (o != nullptr) {
    Store::SortedSet& z = o->zset();
    for (std::int64_t k = 0; k < count && !z.empty(); ++k) {
      const auto it = max ? std::prev(z.order().end()) : z.order().begin();
      std::string member = *it->member;
      const double score = it->score;
      z.erase(member);
      Store::shrank(*o, Store::kSortedSetEntryBytes + member.size());
      Reply pair = Reply::array({Reply::bulk(std::move(member)), score_reply(score)});
      if (has_count)
        items.push_back(std::move(pair));
      else
        return (z.empty() ? c.data.erase(c.words[1]) : false), pair;
    }
    if (z.empty()) c.data.erase(c.words[1]);
  }
  return has_count ? Reply::pairs(std::move(items)) : Reply::array();
}

/// A write's reply read back from RESP3 (a forwarded or kept one): Reply::pairs()'s flag does
/// not survive the encoding, so an array of [member, score] pairs gets it again, for RESP2
/// clients to receive it flat as Redis sends it. Only the sorted set pops reply with pairs of
/// a string and a double among the writes.
inline void restore_pairs(Reply& reply) {
  if (reply.type != resp::Type::Array || reply.elements.empty()) return;
  for (const Reply& e : reply.elements)
    if (e.type != resp::Type::Array || e.elements.size() != 2 || e.elements[0].type != resp::Type::BulkString ||
        e.elements[1].type != resp::Type::Double)
      return;
  reply.num = 1;
}

inline Reply cmd_zpopmin(Call& c) { return zpop(c, false); }
inline Reply cmd_zpopmax(Call& c) { return zpop(c, true); }

// ---- blocking pops (BLPOP BRPOP BLMOVE BZPOPMIN BZPOPMAX) ----
// The handlers are the pops a blocking command makes each time it tries: applied through the
// log as LPOP is, they find data or reply nil. Waiting for data between tries is the client
// server's (5n2_blocking.hpp); inside a transaction, as in Redis, a try is all there is.

/// A blocking command's timeout (seconds, a float) in milliseconds, 0 for ever, as Redis 7.0
/// reads it: string2ld (parse_long_double: hex and "inf" too, never NaN), times 1000 rounded
/// up, and a value beyond a long long is negative (what Redis's conversion gives on x86, made
/// explicit here). Empty when it is good, else the error.
inline std::string parse_block_timeout(const std::string& word, std::int64_t& ms) {
  long double seconds = 0;
  if (!parse_long_double(word, seconds)) return "ERR timeout is not a float or out of range";
  const long double rounded = std::ceil(seconds * 1000.0L);
  if (!(rounded < 9223372036854775808.0L) || rounded < 0) return "ERR timeout is negative";
  ms = static_cast<std::int64_t>(rounded);
  return {};
}

/// What BLPOP, BRPOP, BZPOPMIN and BZPOPMAX (key [key ...] timeout) pop from: the first key
/// holding `kind`, after the timeout is checked (words[at] is its name). nullptr with `reply`
/// set when there is none: the timeout's error, -WRONGTYPE for a key met first that holds
/// another kind, else nil.
inline Store::Object* first_to_pop(Call& c, Store::Kind kind, std::size_t& at, Reply& reply) {
  std::int64_t ms = 0;
  const std::string bad = parse_block_timeout(c.words.back(), ms);
  reply = bad.empty() ? Reply::null_array() : Reply::error(bad);
  if (!bad.empty()) return nullptr;
  for (at = 1; at + 1 < c.words.size(); ++at) {
    bool wrong;
    Store::Object* o = write_lookup(c, c.words[at], kind, wrong);
    if (wrong) {
      reply = wrongtype_error();
      return nullptr;
    }
    if (o != nullptr) return o;
  }
  return nullptr;
}

/// BLPOP / BRPOP key [key ...] timeout: [key, element] from the first key holding a list.
inline Reply blocking_list_pop(Call& c, bool front) {
  std::size_t at = 0;
  Reply none;
  Store::Object* o = first_to_pop(c, Store::Kind::List, at, none);
  if (o == nullptr) return none;
  std::string v = take_list_end(*o, front);
  if (o->list.empty()) c.data.erase(c.words[at]);
  return Reply::array({Reply::bulk(c.words[at]), Reply::bulk(std::move(v))});
}

inline Reply cmd_blpop(Call& c) { return blocking_list_pop(c, true); }
inline Reply cmd_brpop(Call& c) { return blocking_list_pop(c, false); }

/// BLMOVE source destination LEFT|RIGHT LEFT|RIGHT timeout: LMOVE's reply, nil (a null bulk,
/// as Redis in a transaction) when the source is empty.
inline Reply cmd_blmove(Call& c) {
  const bool from_left = iequals(c.words[3], "left"), to_left = iequals(c.words[4], "left");
  if ((!from_left && !iequals(c.words[3], "right")) || (!to_left && !iequals(c.words[4], "right")))
    return syntax_error();
  std::int64_t ms = 0;
  const std::string bad = parse_block_timeout(c.words[5], ms);
  if (!bad.empty()) return Reply::error(bad);
  return move_generic(c, from_left, to_left);
}

/// BZPOPMIN / BZPOPMAX key [key ...] timeout: [key, member, score] from the first key holding
/// a sorted set.
inline Reply blocking_zpop(Call& c, bool max) {
  std::size_t at = 0;
  Reply none;
  Store::Object* o = first_to_pop(c, Store::Kind::SortedSet, at, none);
  if (o == nullptr) return none;
  Store::SortedSet& z = o->zset();
  const auto it = max ? std::prev(z.order().end()) : z.order().begin();
  std::string member = *it->member;
  const double score = it->score;
  z.erase(member);
  Store::shrank(*o, Store::kSortedSetEntryBytes + member.size());
  if (z.empty()) c.data.erase(c.words[at]);
  return Reply::array({Reply::bulk(c.words[at]), Reply::bulk(std::move(member)), score_reply(score)});
}

inline Reply cmd_bzpopmin(Call& c) { return blocking_zpop(c, false); }
inline Reply cmd_bzpopmax(Call& c) { return blocking_zpop(c, true); }

/// The blocking commands: what each waits for, and where its keys are among its words.
struct BlockingCommand {
  Store::Kind kind;   // the keys must hold this to be worth another try
  bool single_key;    // BLMOVE: words[1] only; otherwise words[1 .. size - 2]
};
inline const BlockingCommand* blocking_command(std::string_view name) {
  static const BlockingCommand list{Store::Kind::List, false}, move{Store::Kind::List, true},
      zset{Store::Kind::SortedSet, false};
  if (name == "blpop" || name == "brpop") return &list;
  if (name == "blmove") return &move;
  if (name == "bzpopmin" || name == "bzpopmax") return &zset;
  return nullptr;
}

/// ZSCAN: member, score, ... with the scores as bulk strings in RESP2 and RESP3 alike, as Redis.
inline Reply cmd_zscan(Call& c) {
  return scan_key_elements(
      c, Store::Kind::SortedSet, [](const Store::Object& o) -> const auto& { return o.zset().scores(); },
      [](const auto& entry) -> std::string_view { return entry.first; },
      [](const auto& entry, const ScanOptions&, std::vector<Reply>& items) {
        items.push_back(Reply::bulk(entry.first));
        items.push_back(Reply::bulk(format_score(entry.second)));
      });
}

// ---- sets and sorted sets in the snapshot (format 5) ----
//
// A set is a Python set literal of its members, in bytewise order: {'a', 'b'}. A sorted set
// is a dict of member -> score, in bytewise member order: {'alice': 10.0, 'bob': 1e999}. A
// score is written "%.17g" (the digits Redis 7.0 shows; they read back exactly), with ".0"
// when that looks like an int, so Python reads a float; +-inf as 1e999 / -1e999, which
// ast.literal_eval reads as inf (NaN is never stored). Neither is ever empty, so each is told
// from a hash by its first element: no ':' (a set), or a float after the ':' (a sorted set).

inline void append_score_literal(std::string& out, double d) {
  if (std::isinf(d)) {
    out += d > 0 ? "1e999" : "-1e999";
    return;
  }
  const std::string text = format_score(d);
  out += text;
  if (text.find_first_of(".e") == std::string::npos) out += ".0";
}

inline void write_set_literal(std::string& out, const Store::Object& o) {
  out += '{';
  bool first = true;
  if (o.kind == Store::Kind::Set) {
    for (const auto& m : o.set()) {
      if (!first) out += ", ";
      first = false;
      append_repr(out, m);
    }
  } else {
    for (const auto& [m, score] : o.zset().scores()) {
      if (!first) out += ", ";
      first = false;
      append_repr(out, m);
      out += ": ";
      append_score_literal(out, score);
    }
  }
  out += '}';
}

/// At a '{': Hash (a dict of strings, or empty, or malformed: read_hash says what is wrong),
/// Set or SortedSet, from the first element. Reads nothing.
inline Store::Kind braced_kind(LiteralReader& r) {
  const std::size_t at = r.here();
  Store::Kind kind = Store::Kind::Hash;
  std::string first;
  if (r.expect('{', "'{'") && r.at_string() && r.string(first)) {
    if (!r.accept(':'))
      kind = Store::Kind::Set;
    else if (r.at_float())
      kind = Store::Kind::SortedSet;
  }
  r.rewind(at);
  return kind;
}

/// A set or sorted set literal (braced_kind said which) into `o`; duplicates are errors.
inline bool read_set_literal(LiteralReader& r, Store::Object& o, std::string& scratch) {
  o.kind = braced_kind(r);
  if (!r.expect('{', "'{'")) return false;
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(scratch)) return false;
    if (o.kind == Store::Kind::Set) {
      if (!o.set().insert(scratch).second) return r.fail_at(at, "duplicate set member " + key_for_error(scratch));
      continue;
    }
    double score = 0;
    if (!r.expect(':', "':' after a sorted set member")) return false;
    if (!r.at_float()) return r.fail_expected("a float score (1.0, 2e-05, 1e999)");
    if (!r.real(score)) return false;
    if (o.zset().score(scratch) != nullptr)
      return r.fail_at(at, "duplicate sorted set member " + key_for_error(scratch));
    o.zset().set(scratch, score);
  }
  return !r.failed();
}

}  // namespace raft::detail

// ---- helpers for user handlers: the ones the built-in commands use ----

namespace raft {

/// Redis's WRONGTYPE error: the reply when a key holds another kind than the command's.
using detail::wrongtype_error;
/// In a read handler: the key's object if it holds `kind` and is not expired at call.now_ms;
/// nullptr when absent, or when it holds another kind, with `wrong` set (reply
/// wrongtype_error()).
using detail::read_lookup;
/// In a write handler: the same, after deleting the key if it expired at the entry's time.
using detail::write_lookup;

/// In a write handler: deletes `key` if it holds a hash, list, set or sorted set left without
/// elements, as Redis does (an empty one must not stay stored); true if it did.
inline bool erase_if_empty(Call& call, std::string_view key) {
  const Store::Object* o = call.data.find_for_write(key, call.now_ms);
  if (o == nullptr) return false;
  bool empty = false;
  switch (o->kind) {
    case Store::Kind::String: break;
    case Store::Kind::Hash: empty = o->hash.empty(); break;
    case Store::Kind::List: empty = o->list.empty(); break;
    case Store::Kind::Set: empty = o->set().empty(); break;
    case Store::Kind::SortedSet: empty = o->zset().empty(); break;
  }
  return empty && call.data.erase(key);
}

}  // namespace raft

namespace raft {

// ---- Store members ----

inline const Store::Object* Store::find(std::string_view key, std::int64_t now_ms) const {
  const auto it = objects_.find(key);
  if (it == objects_.end() || expired(it->second, now_ms)) return nullptr;
  return &it->second.object;
}

inline std::size_t Store::live_size(std::int64_t now_ms) const {
  std::size_t past = 0;
  for (auto it = expiry_.begin(); it != expiry_.end() && it->first <= now_ms; ++it) ++past;
  return objects_.size() - past;
}

inline bool Store::check_ttl(std::string_view key, std::int64_t now_ms) {
  const auto it = objects_.find(key);
  if (it == objects_.end() || !expired(it->second, now_ms)) return false;
  erase(it);
  return true;
}

inline Store::Object* Store::find_for_write(std::string_view key, std::int64_t now_ms) {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return nullptr;
  if (expired(it->second, now_ms)) {
    erase(it);
    return nullptr;
  }
  keep_object(key, it, false);  // the caller may change it in place
  opened(key);
  stamp(it);
  return &it->second.object;
}

inline Store::Object& Store::put(std::string_view key, Kind kind) {
  auto it = objects_.lower_bound(key);
  if (it != objects_.end() && it->first == key) {
    keep_object(key, it, true);
    drop_deadline(it);
    it->second.object = Object{};
  } else {
    remember(key, objects_.end());
    unbury(key);  // its record's stamp (below) is later than the tombstone's
    it = objects_.emplace_hint(it, std::string(key), Record{});
    scan_order_.emplace(detail::scan_hash(key), it->first);
  }
  it->second.object.kind = kind;
  opened(key);
  stamp(it);
  return it->second.object;
}

inline bool Store::erase(std::string_view key) {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return false;
  erase(it);
  return true;
}

inline void Store::erase(Objects::iterator it) {
  keep_object(it->first, it, true);
  drop_deadline(it);
  bury(it->first);
  used_ -= std::min(used_, it->second.counted);
  const auto in_order = scan_order_.find(
      std::pair<std::uint64_t, std::string_view>(detail::scan_hash(it->first), std::string_view(it->first)));
  if (in_order != scan_order_.end()) scan_order_.erase(in_order);
  objects_.erase(it);
}

inline void Store::bury(std::string_view key) {
  if (write_index_ == 0) return;
  unbury(key);
  const auto it = tombstones_.emplace(std::string(key), write_index_).first;
  tombstone_order_.emplace(write_index_, it->first);
  tombstone_bytes_ += kTombstoneBytes + 2 * key.size();
  while (tombstones_.size() > kMaxTombstones) {
    const auto oldest = tombstone_order_.begin();
    forgotten_index_ = std::max(forgotten_index_, oldest->first);
    tombstone_bytes_ -= std::min(tombstone_bytes_, kTombstoneBytes + 2 * oldest->second.size());
    tombstones_.erase(tombstones_.find(oldest->second));
    tombstone_order_.erase(oldest);
  }
}

inline void Store::unbury(std::string_view key) {
  if (write_index_ == 0) return;
  const auto it = tombstones_.find(key);
  if (it == tombstones_.end()) return;
  tombstone_order_.erase(tombstone_order_.find(std::pair<std::uint64_t, std::string_view>(it->second, it->first)));
  tombstone_bytes_ -= std::min(tombstone_bytes_, kTombstoneBytes + 2 * it->first.size());
  tombstones_.erase(it);
}

inline void Store::clear() {
  for (auto it = objects_.begin(); recording_ && it != objects_.end(); ++it) keep_object(it->first, it, true);
  if (!objects_.empty() && write_index_ != 0) forget_tombstones(write_index_);
  objects_.clear();
  expiry_.clear();
  scan_order_.clear();
  used_ = 0;
  opened_.clear();
}

inline std::size_t Store::used_memory() const {
  std::size_t used = used_;
  for (const auto& key : opened_) {
    const auto it = objects_.find(key);
    if (it != objects_.end()) used = used - std::min(used, it->second.counted) + cost(it->first, it->second.object);
  }
  return used + tombstone_bytes_;
}

inline void Store::settle_memory() {
  for (const auto& key : opened_) {
    const auto it = objects_.find(key);
    if (it == objects_.end()) continue;
    used_ -= std::min(used_, it->second.counted);
    it->second.counted = cost(it->first, it->second.object);
    used_ += it->second.counted;
  }
  opened_.clear();
}

inline void Store::recount_memory() {
  used_ = 0;
  tombstone_bytes_ = 0;
  for (const auto& t : tombstones_) tombstone_bytes_ += kTombstoneBytes + 2 * t.first.size();
  opened_.clear();
  scan_order_.clear();
  for (auto& [key, r] : objects_) {
    scan_order_.emplace(detail::scan_hash(key), key);
    Object& o = r.object;
    o.element_bytes = 0;
    for (const auto& [field, value] : o.hash) o.element_bytes += kHashEntryBytes + field.size() + value.size();
    for (const auto& e : o.list) o.element_bytes += kListEntryBytes + e.size();
    if (o.kind == Kind::Set)
      for (const auto& m : o.set()) o.element_bytes += kSetEntryBytes + m.size();
    if (o.kind == Kind::SortedSet)
      for (const auto& [m, score] : o.zset().scores()) o.element_bytes += kSortedSetEntryBytes + m.size();
    r.counted = cost(key, o);
    used_ += r.counted;
  }
}

inline Store::Undo* Store::remember(std::string_view key, Objects::iterator it) {
  if (!recording_) return nullptr;
  auto u = undo_.lower_bound(key);
  if (u != undo_.end() && u->first == key) return &u->second;
  Undo undo;
  if (it != objects_.end()) {
    undo.existed = true;
    undo.deadline = it->second.deadline;
  }
  return &undo_.emplace_hint(u, std::string(key), std::move(undo))->second;
}

inline void Store::keep_object(std::string_view key, Objects::iterator it, bool moving) {
  Undo* u = remember(key, it);
  // A key made by this write needs nothing kept: undoing it deletes it.
  if (u == nullptr || !u->existed || u->object) return;
  if (moving)
    u->object = std::move(it->second.object);
  else
    u->object = it->second.object;
}

inline void Store::begin_undo() {
  undo_.clear();
  recording_ = true;
}

inline void Store::commit_undo() {
  recording_ = false;
  undo_.clear();
}

inline void Store::rollback_undo() {
  recording_ = false;
  for (auto& [key, u] : undo_) {
    auto it = objects_.find(key);
    if (!u.existed) {
      if (it != objects_.end()) erase(it);
      continue;
    }
    // A key that existed and is gone now had its object kept when it went.
    if (it == objects_.end()) {
      it = objects_.emplace(key, Record{}).first;
      scan_order_.emplace(detail::scan_hash(key), key);
    }
    if (u.object) it->second.object = std::move(*u.object);
    opened(key);
    stamp(it);  // put back, yet stamped: a restored record has lost its earlier stamp
    drop_deadline(it);
    if (u.deadline) {
      it->second.deadline = u.deadline;
      expiry_.emplace(*u.deadline, it->first);
    }
  }
  undo_.clear();
}

inline void Store::drop_deadline(Objects::iterator it) {
  if (!it->second.deadline) return;
  remember(it->first, it);
  const auto entry = expiry_.find(std::pair<std::int64_t, std::string_view>(
      *it->second.deadline, std::string_view(it->first)));
  if (entry != expiry_.end()) expiry_.erase(entry);
  it->second.deadline.reset();
}

inline void Store::clear_ttl(std::string_view key) {
  const auto it = objects_.find(key);
  if (it == objects_.end() || !it->second.deadline) return;
  drop_deadline(it);
  stamp(it);
}

inline bool Store::set_deadline(std::string_view key, std::int64_t deadline_ms) {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return false;
  remember(key, it);
  drop_deadline(it);
  stamp(it);
  it->second.deadline = deadline_ms;
  expiry_.emplace(deadline_ms, it->first);
  return true;
}

inline std::optional<std::int64_t> Store::deadline(std::string_view key) const {
  const auto it = objects_.find(key);
  if (it == objects_.end()) return std::nullopt;
  return it->second.deadline;
}

template <class F>
std::uint64_t Store::scan(std::uint64_t cursor, std::size_t count, F&& f) const {
  return detail::scan_step(
      scan_order_.lower_bound(std::pair<std::uint64_t, std::string_view>(cursor, std::string_view())),
      scan_order_.end(), count, [](const auto& entry) { return entry.first; },
      [&](const auto& entry) {
        const auto it = objects_.find(entry.second);
        f(it->first, it->second.object, it->second.deadline);
      });
}

inline const std::string* Store::key_near_hash(std::uint64_t hash, std::int64_t now_ms) const {
  if (live_size(now_ms) == 0) return nullptr;
  auto at = scan_order_.lower_bound(std::pair<std::uint64_t, std::string_view>(hash, std::string_view()));
  for (;; ++at) {  // ends: a key is live
    if (at == scan_order_.end()) at = scan_order_.begin();
    const auto it = objects_.find(at->second);
    if (!expired(it->second, now_ms)) return &it->first;
  }
}

inline std::vector<std::string> Store::due(std::int64_t now_ms, std::size_t limit) const {
  std::vector<std::string> keys;
  for (auto it = expiry_.begin(); it != expiry_.end() && it->first <= now_ms && keys.size() < limit;
       ++it)
    keys.push_back(it->second);
  return keys;
}

inline void Store::write_snapshot(std::string& out, const SnapshotMeta& meta) const {
  using detail::append_repr;
  out += "{'_META_': {'format': ";
  const std::size_t format_at = out.size();
  out += std::to_string(detail::kSnapshotFormat);  // 5 if a set or sorted set is written (below)
  bool has_sets = false;
  out += ", 'index': ";
  out += std::to_string(meta.index);
  out += ", 'term': ";
  out += std::to_string(meta.term);
  out += ", 'timestamp': ";
  out += std::to_string(meta.timestamp_ms);
  out += ", 'members': [";
  for (std::size_t i = 0; i < meta.config.members.size(); ++i) {
    const Member& m = meta.config.members[i];
    if (i > 0) out += ", ";
    out += "{'id': ";
    append_repr(out, m.id);
    out += ", 'address': ";
    append_repr(out, m.address);
    out += ", 'server_id': ";
    append_repr(out, m.server_id);
    out += ", 'voter': ";
    out += m.voter ? "True" : "False";
    out += '}';
  }
  out += "]}, 'data': {";
  // Keys with a deadline, collected on the way: 'ttl' is written without a second walk.
  std::vector<std::pair<const std::string*, std::int64_t>> deadlines;
  bool first = true;
  for (const auto& [key, record] : objects_) {
    if (!first) out += ", ";
    first = false;
    append_repr(out, key);
    out += ": ";
    if (record.deadline) deadlines.emplace_back(&key, *record.deadline);
    const Object& o = record.object;
    switch (o.kind) {
      case Kind::String:
        append_repr(out, o.str);
        break;
      case Kind::Hash: {
        out += '{';
        bool first_field = true;
        for (const auto& [field, value] : o.hash) {
          if (!first_field) out += ", ";
          first_field = false;
          append_repr(out, field);
          out += ": ";
          append_repr(out, value);
        }
        out += '}';
        break;
      }
      case Kind::List: {
        out += '[';
        bool first_item = true;
        for (const auto& item : o.list) {
          if (!first_item) out += ", ";
          first_item = false;
          append_repr(out, item);
        }
        out += ']';
        break;
      }
      case Kind::Set:
      case Kind::SortedSet:
        has_sets = true;
        detail::write_set_literal(out, o);
        break;
    }
  }
  // One digit, in place: a snapshot without sets keeps format 4's text, which older versions
  // read; one with them says 5, which they refuse by its number.
  static_assert(detail::kSnapshotFormat == 4 && detail::kSnapshotFormatWithSets == 5, "one digit each");
  if (has_sets) out[format_at] = '5';
  out += "}, 'ttl': {";
  for (std::size_t i = 0; i < deadlines.size(); ++i) {
    if (i > 0) out += ", ";
    append_repr(out, *deadlines[i].first);
    out += ": ";
    out += std::to_string(deadlines[i].second);
  }
  out += "}, 'sessions': ";
  sessions_.write(out);
  out += ", 'session_clock': [" + std::to_string(sessions_.clock_ms()) + ", " +
         std::to_string(sessions_.last_stamp_ms()) + "]";
  write_stamps(out);
  out += '}';
}

// WATCH's stamps, `, 'modified': [FORGOTTEN, {key: INDEX, ...}, {deleted key: INDEX, ...}]`
// (in key order), only when there is one: the text of a store without them is unchanged (an
// older version refuses the section by its name, as any newer text).
inline void Store::write_stamps(std::string& out) const {
  bool any = forgotten_index_ != 0 || !tombstones_.empty();
  for (auto it = objects_.begin(); !any && it != objects_.end(); ++it) any = it->second.modified != 0;
  if (!any) return;
  out += ", 'modified': [" + std::to_string(forgotten_index_) + ", {";
  bool first = true;
  for (const auto& [key, record] : objects_) {
    if (record.modified == 0) continue;
    if (!first) out += ", ";
    first = false;
    detail::append_repr(out, key);
    out += ": " + std::to_string(record.modified);
  }
  out += "}, {";
  first = true;
  for (const auto& [key, index] : tombstones_) {
    if (!first) out += ", ";
    first = false;
    detail::append_repr(out, key);
    out += ": " + std::to_string(index);
  }
  out += "}]";
}

namespace detail {

/// _META_ of our format: {'format': 3, 'index': I, 'term': T, 'timestamp': MS,
/// 'members': [...]}; format 2 is the same; format 1 has no 'timestamp'.
inline bool read_snapshot_meta(LiteralReader& r, SnapshotMeta& meta, std::int64_t& format) {
  const std::size_t meta_at = r.here();
  if (!r.expect('{', "'{' (the _META_ dict)")) return false;
  bool has_format = false, has_index = false, has_term = false, has_members = false;
  bool has_timestamp = false;
  format = 0;
  std::string name;
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(name) || !r.expect(':', "':' after a dict key")) return false;
    bool* seen = name == "format" ? &has_format : name == "index" ? &has_index
               : name == "term" ? &has_term : name == "members" ? &has_members
               : name == "timestamp" ? &has_timestamp : nullptr;
    if (seen == nullptr)
      return r.fail_at(at, "unknown _META_ field " + key_for_error(name) +
                               " (expected 'format', 'index', 'term', 'timestamp' or 'members')");
    if (*seen) return r.fail_at(at, "duplicate _META_ field " + key_for_error(name));
    *seen = true;
    if (name == "format") {
      const std::size_t value_at = r.here();
      if (!r.integer(format)) return false;
      if (format < 1 || format > kSnapshotFormatWithSets)
        return r.fail_at(value_at, "unsupported snapshot format " + std::to_string(format) +
                                       " (this version reads formats 1 to " +
                                       std::to_string(kSnapshotFormatWithSets) + ")");
    } else if (name == "timestamp") {
      if (!r.integer(meta.timestamp_ms)) return false;
    } else if (name == "index") {
      if (!r.unsigned_integer(meta.index)) return false;
    } else if (name == "term") {
      if (!r.unsigned_integer(meta.term)) return false;
    } else {
      if (!r.expect('[', "'[' (the members list)")) return false;
      bool first_member = true;
      while (r.next_element(']', first_member)) {
        const std::size_t member_at = r.here();
        if (!r.expect('{', "'{' (a member dict)")) return false;
        Member m;
        bool has_id = false, has_address = false, has_server_id = false, has_voter = false;
        bool first_field = true;
        while (r.next_element('}', first_field)) {
          const std::size_t field_at = r.here();
          if (!r.string(name) || !r.expect(':', "':' after a dict key")) return false;
          bool ok = true;
          bool* field_seen = nullptr;
          if (name == "id") {
            field_seen = &has_id;
            ok = r.string(m.id);
          } else if (name == "address") {
            field_seen = &has_address;
            ok = r.string(m.address);
          } else if (name == "server_id") {
            field_seen = &has_server_id;
            ok = r.string(m.server_id);
          } else if (name == "voter") {
            field_seen = &has_voter;
            ok = r.boolean(m.voter);
          } else {
            return r.fail_at(field_at, "unknown member field " + key_for_error(name) +
                                           " (expected 'id', 'address', 'server_id' or 'voter')");
          }
          if (!ok) return false;
          if (*field_seen) return r.fail_at(field_at, "duplicate member field " + key_for_error(name));
          *field_seen = true;
        }
        if (r.failed()) return false;
        if (!has_id || !has_address || !has_server_id || !has_voter)
          return r.fail_at(member_at, "a member needs 'id', 'address', 'server_id' and 'voter'");
        if (m.id.empty()) return r.fail_at(member_at, "a member with an empty id");
        if (meta.config.contains(m.id))
          return r.fail_at(member_at, "duplicate member id " + key_for_error(m.id));
        meta.config.upsert(std::move(m));
      }
      if (r.failed()) return false;
    }
  }
  if (r.failed()) return false;
  if (!has_format || !has_index || !has_term || !has_members)
    return r.fail_at(meta_at, "_META_ needs 'format', 'index', 'term' and 'members'");
  if (has_timestamp != (format >= 2))
    return r.fail_at(meta_at, format >= 2 ? "_META_ of format " + std::to_string(format) + " needs 'timestamp'"
                                          : std::string("_META_ of format 1 has no 'timestamp'"));
  return true;
}

/// Reads a dict of str -> str into `hash`; false on error (duplicates are errors).
inline bool read_hash(LiteralReader& r, Store::Hash& hash, std::string& scratch) {
  if (!r.expect('{', "'{'")) return false;
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(scratch) || !r.expect(':', "':' after a dict key")) return false;
    auto [it, inserted] = hash.try_emplace(std::move(scratch));
    if (!inserted) return r.fail_at(at, "duplicate hash field " + key_for_error(it->first));
    if (!r.string(it->second)) return false;
  }
  return !r.failed();
}

inline bool read_list(LiteralReader& r, Store::List& list) {
  if (!r.expect('[', "'['")) return false;
  bool first = true;
  while (r.next_element(']', first)) {
    list.emplace_back();
    if (!r.string(list.back())) return false;
  }
  return !r.failed();
}

/// A dict of key -> deadline, kept with each entry's offset for later errors.
struct PendingDeadline {
  std::string key;
  std::int64_t deadline_ms;
  std::size_t at;
};

inline bool read_deadlines(LiteralReader& r, std::vector<PendingDeadline>& out, bool seconds) {
  if (!r.expect('{', "'{' (the ttl dict)")) return false;
  bool first = true;
  std::string key;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(key) || !r.expect(':', "':' after a dict key")) return false;
    std::int64_t when = 0;
    if (!(seconds ? r.seconds_as_ms(when) : r.integer(when))) return false;
    out.push_back(PendingDeadline{std::move(key), when, at});
  }
  return !r.failed();
}

}  // namespace detail

inline bool Store::read_snapshot(std::string_view text, Store& data, SnapshotMeta& meta,
                                 std::string& error) {
  detail::LiteralReader r(text);
  Store store;
  SnapshotMeta m;
  std::vector<detail::PendingDeadline> deadlines;
  bool has_meta = false, has_data = false, has_ttl = false, has_sessions = false, has_session_clock = false;
  bool has_stamps = false;
  // 'modified': key -> index, deleted key -> index (read as a deadline's int)
  std::vector<detail::PendingDeadline> stamps, tombstones;
  std::int64_t forgotten_index = 0;
  std::int64_t format = 0;
  std::size_t sessions_at = 0, session_clock_at = 0;
  std::int64_t session_clock = 0, last_stamp = 0;
  std::string key;
  const auto fail = [&] { return detail::snapshot_error(r, error); };

  if (!r.expect('{', "'{' at the start of a snapshot")) return fail();
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(key) || !r.expect(':', "':' after a dict key")) return fail();
    bool* seen = key == "_META_" ? &has_meta : key == "data" ? &has_data
               : key == "ttl" ? &has_ttl : key == "sessions" ? &has_sessions
               : key == "session_clock" ? &has_session_clock : key == "modified" ? &has_stamps : nullptr;
    if (seen == nullptr) {
      r.fail_at(at, "unknown top-level key " + detail::key_for_error(key) +
                        " (expected '_META_', 'data', 'ttl', 'sessions', 'session_clock' or 'modified')");
      return fail();
    }
    if (*seen) {
      r.fail_at(at, "duplicate top-level key " + detail::key_for_error(key));
      return fail();
    }
    *seen = true;
    if (key == "_META_") {
      if (!detail::read_snapshot_meta(r, m, format)) return fail();
    } else if (key == "sessions") {
      sessions_at = at;
      if (!store.sessions_.read(r)) return fail();
    } else if (key == "session_clock") {
      session_clock_at = at;
      if (!r.expect('[', "'[' (the session clock)") || !r.integer(session_clock) ||
          !r.expect(',', "',' in the session clock") || !r.integer(last_stamp) ||
          !r.expect(']', "']' closing the session clock"))
        return fail();
    } else if (key == "modified") {
      if (!r.expect('[', "'[' (the modified stamps)") || !r.integer(forgotten_index) ||
          !r.expect(',', "',' in the modified stamps") || !detail::read_deadlines(r, stamps, false) ||
          !r.expect(',', "',' in the modified stamps") || !detail::read_deadlines(r, tombstones, false) ||
          !r.expect(']', "']' closing the modified stamps"))
        return fail();
    } else if (key == "ttl") {
      if (!detail::read_deadlines(r, deadlines, false)) return fail();
    } else {
      if (!r.expect('{', "'{' (the data dict)")) return fail();
      bool first_key = true;
      std::string scratch;
      while (r.next_element('}', first_key)) {
        const std::size_t key_at = r.here();
        if (!r.string(key) || !r.expect(':', "':' after a dict key")) return fail();
        // Keys arrive sorted from write_snapshot: hinting at the end makes loading linear.
        const auto hint = store.objects_.end();
        const std::size_t before = store.objects_.size();
        const auto it = store.objects_.emplace_hint(hint, std::move(key), Record{});
        if (store.objects_.size() == before) {
          r.fail_at(key_at, "duplicate key " + detail::key_for_error(it->first));
          return fail();
        }
        Object& o = it->second.object;
        const std::size_t value_at = r.here();
        const char c = r.peek();
        bool ok = true;
        if (c == '{' && detail::braced_kind(r) != Kind::Hash) {
          ok = detail::read_set_literal(r, o, scratch);
        } else if (c == '{') {
          o.kind = Kind::Hash;
          ok = detail::read_hash(r, o.hash, scratch) &&
               (!o.hash.empty() || r.fail_at(value_at, "an empty hash (an empty hash is no key)"));
        } else if (c == '[') {
          o.kind = Kind::List;
          ok = detail::read_list(r, o.list) &&
               (!o.list.empty() || r.fail_at(value_at, "an empty list (an empty list is no key)"));
        } else if (r.at_string()) {
          ok = r.string(o.str);
        } else {
          ok = r.fail_expected("a str, bytes, dict, set or list value for key " +
                               detail::key_for_error(it->first));
        }
        if (!ok) return fail();
      }
      if (r.failed()) return fail();
    }
  }
  if (r.failed()) return fail();
  if (!r.at_end()) {
    r.fail_at(r.here(), "unexpected text after the snapshot's closing '}'");
    return fail();
  }
  if (!has_meta || !has_data || !has_ttl) {
    r.fail_at(0, std::string("a snapshot needs '_META_', 'data' and 'ttl' (missing ") +
                     (!has_meta ? "'_META_'" : !has_data ? "'data'" : "'ttl'") + ")");
    return fail();
  }
  if (has_sessions != (format >= 3)) {
    r.fail_at(has_sessions ? sessions_at : 0, "a snapshot of format " + std::to_string(format) +
                                                  (has_sessions ? " has no 'sessions'" : " needs 'sessions'"));
    return fail();
  }
  if (has_session_clock != (format >= 4)) {
    r.fail_at(has_session_clock ? session_clock_at : 0,
              "a snapshot of format " + std::to_string(format) +
                  (has_session_clock ? " has no 'session_clock'" : " needs 'session_clock'"));
    return fail();
  }
  // Before format 4 the sessions' times are leader times: session time starts at the stamp.
  if (format < 4) session_clock = last_stamp = m.timestamp_ms;
  store.sessions_.set_clock(session_clock, last_stamp);
  for (const auto& d : deadlines) {
    const auto it = store.objects_.find(d.key);
    if (it == store.objects_.end()) {
      r.fail_at(d.at, "ttl for key " + detail::key_for_error(d.key) + ", which is not in 'data'");
      return fail();
    }
    if (it->second.deadline) {
      r.fail_at(d.at, "duplicate ttl key " + detail::key_for_error(d.key));
      return fail();
    }
    store.set_deadline(d.key, d.deadline_ms);
  }
  for (const auto& s : stamps) {
    const auto it = store.objects_.find(s.key);
    if (it == store.objects_.end() || s.deadline_ms <= 0 || it->second.modified != 0) {
      r.fail_at(s.at, "modified stamp for key " + detail::key_for_error(s.key) +
                          (it == store.objects_.end() ? ", which is not in 'data'" : " repeated or not positive"));
      return fail();
    }
    it->second.modified = static_cast<std::uint64_t>(s.deadline_ms);
  }
  for (const auto& t : tombstones) {
    if (t.deadline_ms <= 0 || !store.tombstones_.emplace(t.key, static_cast<std::uint64_t>(t.deadline_ms)).second) {
      r.fail_at(t.at, "deleted key stamp for " + detail::key_for_error(t.key) + " repeated or not positive");
      return fail();
    }
    store.tombstone_order_.emplace(static_cast<std::uint64_t>(t.deadline_ms), t.key);
  }
  if (forgotten_index < 0) {
    r.fail_at(0, "a negative forgotten index in 'modified'");
    return fail();
  }
  store.forgotten_index_ = static_cast<std::uint64_t>(forgotten_index);
  store.recount_memory();
  data = std::move(store);
  meta = std::move(m);
  return true;
}

inline bool Store::read_pyraft_snapshot(std::string_view text, Store& data, std::string& error) {
  detail::LiteralReader r(text);
  Store store;
  std::vector<detail::PendingDeadline> deadlines;
  std::string key, scratch;
  bool has_meta = false, has_ttl = false;
  const auto fail = [&] { return detail::snapshot_error(r, error); };

  if (!r.expect('{', "'{' at the start of a pyraft snapshot")) return fail();
  bool first = true;
  while (r.next_element('}', first)) {
    const std::size_t at = r.here();
    if (!r.string(key) || !r.expect(':', "':' after a dict key")) return fail();
    if (key == "_META_" || key == "ttl") {
      bool& seen = key == "_META_" ? has_meta : has_ttl;
      if (seen) {
        r.fail_at(at, "duplicate top-level key " + detail::key_for_error(key));
        return fail();
      }
      seen = true;
      if (r.peek() != '{') {
        r.fail_expected("a dict for " + detail::key_for_error(key));
        return fail();
      }
      if (!(key == "ttl" ? detail::read_deadlines(r, deadlines, true) : r.skip_value()))
        return fail();
      continue;
    }
    if (store.objects_.count(key) != 0) {
      r.fail_at(at, "duplicate key " + detail::key_for_error(key));
      return fail();
    }
    Object o;
    const char c = r.peek();
    bool ok = true;
    if (c == '{') {
      o.kind = Kind::Hash;
      // A nested dict here is pyraft's tree data (tset/tmk): no Redis type holds it.
      ok = detail::read_hash(r, o.hash, scratch);
    } else if (c == '[') {
      o.kind = Kind::List;
      ok = detail::read_list(r, o.list);
    } else if (r.at_string()) {
      ok = r.string(o.str);
    } else {
      ok = r.fail_expected("a str, a dict or a list");
    }
    if (!ok) {
      // Name the key, whatever went wrong inside its value.
      error = "invalid snapshot at byte " + std::to_string(at) + ": the value of key " +
              detail::key_for_error(key) +
              " cannot be loaded (this store holds a str, a dict of str or a list of str): " +
              r.error();
      return false;
    }
    if (o.kind == Kind::Hash ? o.hash.empty() : o.kind == Kind::List && o.list.empty())
      continue;  // pyraft leaves emptied containers behind; Redis has no empty ones
    store.objects_.emplace(std::move(key), Record{std::move(o), std::nullopt});
  }
  if (r.failed()) return fail();
  if (!r.at_end()) {
    r.fail_at(r.here(), "unexpected text after the snapshot's closing '}'");
    return fail();
  }
  // pyraft's del leaves ttl entries of deleted keys behind: those are skipped.
  for (const auto& d : deadlines)
    if (store.objects_.count(d.key) != 0) store.set_deadline(d.key, d.deadline_ms);
  store.recount_memory();
  data = std::move(store);
  return true;
}

// ---- SessionTable members ----

namespace detail {

/// now_ms - since >= SessionTable::kIdleMs, without overflow.
inline bool idle_long_enough(std::int64_t since, std::int64_t now_ms) {
  return now_ms >= since &&
         static_cast<std::uint64_t>(now_ms) - static_cast<std::uint64_t>(since) >=
             static_cast<std::uint64_t>(SessionTable::kIdleMs);
}

inline SessionTable::Verdict SessionTable::begin(const Key& key, std::uint64_t seq,
                                                 std::uint64_t lowest_unanswered, std::int64_t stamp_ms,
                                                 std::string& reply) {
  observe(stamp_ms);
  const std::int64_t now_ms = clock_ms_;
  auto it = sessions_.find(key);
  if (it == sessions_.end()) {
    if (sessions_.size() >= kMaxSessions) return Verdict::Full;
    it = add(key, now_ms);
  } else {
    touch(it, now_ms);
  }
  advance(it, lowest_unanswered);
  const auto r = it->second.replies.find(seq);
#ifdef RAFT_MUTANT_SESSION_FORGETS_REPLIES
  if (false) {  // mutant: a write sent again runs again
#else
  if (r != it->second.replies.end()) {
#endif
    reply = r->second;
    return Verdict::Duplicate;
  }
  return seq < it->second.lowest ? Verdict::Stale : Verdict::Apply;
}

inline void SessionTable::record(const Key& key, std::uint64_t seq, std::string reply) {
  const auto it = sessions_.find(key);
  if (it == sessions_.end() || seq < it->second.lowest) return;
  const std::size_t c = cost(reply);
  if (!it->second.replies.emplace(seq, std::move(reply)).second) return;
  it->second.bytes += c;
  bytes_ += c;
  shed_replies();
}

inline void SessionTable::observe(std::int64_t stamp_ms) {
  if (last_stamp_ms_ == 0 && clock_ms_ == 0) {
    clock_ms_ = last_stamp_ms_ = stamp_ms;  // a fresh table: session time starts here
  } else if (stamp_ms > last_stamp_ms_) {
    const std::uint64_t step = static_cast<std::uint64_t>(stamp_ms) - static_cast<std::uint64_t>(last_stamp_ms_);
#ifdef RAFT_MUTANT_SESSION_TIME_JUMPS
    clock_ms_ += static_cast<std::int64_t>(step);  // mutant: a leader's clock jump forgets every session
#else
    clock_ms_ += static_cast<std::int64_t>(std::min<std::uint64_t>(step, kMaxClockStepMs));
#endif
    last_stamp_ms_ = stamp_ms;
  }
  expire(clock_ms_);
}

inline void SessionTable::expire(std::int64_t now_ms) {
  while (!by_activity_.empty() && idle_long_enough(by_activity_.begin()->first, now_ms)) {
    const auto it = sessions_.find(by_activity_.begin()->second);
    bytes_ -= it->second.bytes;
    sessions_.erase(it);
    by_activity_.erase(by_activity_.begin());
  }
}

inline const std::string* SessionTable::reply(const Key& key, std::uint64_t seq) const {
  const auto it = sessions_.find(key);
  if (it == sessions_.end()) return nullptr;
  const auto r = it->second.replies.find(seq);
  return r == it->second.replies.end() ? nullptr : &r->second;
}

inline SessionTable::Sessions::iterator SessionTable::add(const Key& key, std::int64_t now_ms) {
  const auto it = sessions_.emplace(key, Session{}).first;
  it->second.active_ms = now_ms;
  by_activity_.emplace(now_ms, key);
  return it;
}

inline void SessionTable::touch(Sessions::iterator it, std::int64_t now_ms) {
  if (now_ms <= it->second.active_ms) return;
  by_activity_.erase({it->second.active_ms, it->first});
  it->second.active_ms = now_ms;
  by_activity_.emplace(now_ms, it->first);
}

/// The follower waits for nothing below `lowest` any more: its replies go.
inline void SessionTable::advance(Sessions::iterator it, std::uint64_t lowest) {
  Session& s = it->second;
  if (lowest <= s.lowest) return;
  s.lowest = lowest;
  const auto end = s.replies.lower_bound(lowest);
  for (auto r = s.replies.begin(); r != end; ++r) {
    s.bytes -= cost(r->second);
    bytes_ -= cost(r->second);
  }
  s.replies.erase(s.replies.begin(), end);
}

/// Over kMaxReplyBytes: the session with the most bytes (the first in key order among equals)
/// loses its oldest reply, until the total fits.
inline void SessionTable::shed_replies() {
  while (bytes_ > kMaxReplyBytes) {
    auto most = sessions_.end();
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
      if (!it->second.replies.empty() && (most == sessions_.end() || it->second.bytes > most->second.bytes))
        most = it;
    if (most == sessions_.end()) return;
    advance(most, most->second.replies.begin()->first + 1);
  }
}

inline void SessionTable::write(std::string& out) const {
  out += '[';
  bool first = true;
  for (const auto& [key, s] : sessions_) {
    if (!first) out += ", ";
    first = false;
    out += "{'node': ";
    append_repr(out, key.node);
    out += ", 'server_id': ";
    append_repr(out, key.server_id);
    out += ", 'nonce': " + std::to_string(key.nonce) + ", 'lowest': " + std::to_string(s.lowest) +
           ", 'active': " + std::to_string(s.active_ms) + ", 'replies': {";
    bool first_reply = true;
    for (const auto& [seq, reply] : s.replies) {
      if (!first_reply) out += ", ";
      first_reply = false;
      out += std::to_string(seq);
      out += ": ";
      append_repr(out, reply);
    }
    out += "}}";
  }
  out += ']';
}

inline bool SessionTable::read(LiteralReader& r) {
  SessionTable table;
  if (!r.expect('[', "'[' (the sessions list)")) return false;
  bool first = true;
  std::string name;
  while (r.next_element(']', first)) {
    const std::size_t session_at = r.here();
    if (!r.expect('{', "'{' (a session dict)")) return false;
    Key key;
    Session s;
    bool has[6] = {};
    static const char* const kFields[6] = {"node", "server_id", "nonce", "lowest", "active", "replies"};
    bool first_field = true;
    while (r.next_element('}', first_field)) {
      const std::size_t field_at = r.here();
      if (!r.string(name) || !r.expect(':', "':' after a dict key")) return false;
      const auto field = std::find_if(std::begin(kFields), std::end(kFields), [&](const char* f) { return name == f; });
      if (field == std::end(kFields))
        return r.fail_at(field_at, "unknown session field " + key_for_error(name) +
                                       " (expected 'node', 'server_id', 'nonce', 'lowest', 'active' or 'replies')");
      const auto k = static_cast<std::size_t>(field - std::begin(kFields));
      if (has[k]) return r.fail_at(field_at, "duplicate session field " + key_for_error(name));
      has[k] = true;
      bool ok = true;
      switch (k) {
        case 0: ok = r.string(key.node); break;
        case 1: ok = r.string(key.server_id); break;
        case 2: ok = r.unsigned_integer(key.nonce); break;
        case 3: ok = r.unsigned_integer(s.lowest); break;
        case 4: ok = r.integer(s.active_ms); break;
        default: {
          if (!r.expect('{', "'{' (the replies dict)")) return false;
          bool first_reply = true;
          while (r.next_element('}', first_reply)) {
            const std::size_t reply_at = r.here();
            std::uint64_t seq = 0;
            if (!r.unsigned_integer(seq) || !r.expect(':', "':' after a dict key")) return false;
            auto [it, inserted] = s.replies.try_emplace(seq);
            if (!inserted) return r.fail_at(reply_at, "duplicate reply " + std::to_string(seq));
            if (!r.string(it->second)) return false;
            s.bytes += cost(it->second);
          }
          ok = !r.failed();
        }
      }
      if (!ok) return false;
    }
    if (r.failed()) return false;
    if (!std::all_of(std::begin(has), std::end(has), [](bool b) { return b; }))
      return r.fail_at(session_at, "a session needs 'node', 'server_id', 'nonce', 'lowest', 'active' and 'replies'");
    if (!s.replies.empty() && s.replies.begin()->first < s.lowest)
      return r.fail_at(session_at, "a session keeps a reply below its 'lowest'");
    if (table.sessions_.count(key) != 0) return r.fail_at(session_at, "duplicate session");
    table.bytes_ += s.bytes;
    table.by_activity_.emplace(s.active_ms, key);
    table.sessions_.emplace(std::move(key), std::move(s));
  }
  if (r.failed()) return false;
  *this = std::move(table);
  return true;
}

/// A built-in command's handler: a type of its own, so that the runtime can tell it from a
/// program's (built-ins are applied without the undo record: see the Store class comment).
struct BuiltinHandler {
  Reply (*fn)(Call&);
  int min_args;
  int max_args;

  Reply operator()(Call& c) const {
    // The runtime checks argument counts before calling; checking again here keeps a
    // handler called directly from indexing past its words.
    const auto n = static_cast<long long>(c.words.size()) - 1;
    if (n < min_args || (max_args >= 0 && n > max_args))
      return arity_error(c.words.empty() ? std::string_view() : c.words[0]);
    return fn(c);
  }
};

inline bool is_builtin(const Command& cmd) { return cmd.fn.target<BuiltinHandler>() != nullptr; }

}  // namespace detail

inline void add_builtin_commands(CommandTable& table) {
  using Fn = Reply (*)(Call&);
  const auto add = [&table](const char* name, const char* flags, int min_args, int max_args,
                            Fn fn) {
    Command cmd;
    cmd.flags = flags;
    cmd.min_args = min_args;
    cmd.max_args = max_args;
    cmd.fn = detail::BuiltinHandler{fn, min_args, max_args};
    table.emplace(name, std::move(cmd));
  };
  using namespace detail;
  // strings
  add("get", "r", 1, 1, cmd_get);
  add("set", "we", 2, -1, cmd_set);
  add("setnx", "we", 2, 2, cmd_setnx);
  add("getset", "we", 2, 2, cmd_getset);
  add("mget", "r", 1, -1, cmd_mget);
  add("mset", "we", 2, -1, cmd_mset);
  add("incr", "we", 1, 1, cmd_incr);
  add("decr", "we", 1, 1, cmd_decr);
  add("incrby", "we", 2, 2, cmd_incrby);
  add("decrby", "we", 2, 2, cmd_decrby);
  add("append", "we", 2, 2, cmd_append);
  add("strlen", "r", 1, 1, cmd_strlen);
  add("getex", "wes", 1, -1, cmd_getex);
  add("getdel", "wes", 1, 1, cmd_getdel);
  add("setex", "we", 3, 3, cmd_setex);
  add("psetex", "we", 3, 3, cmd_psetex);
  add("msetnx", "we", 2, -1, cmd_msetnx);
  add("getrange", "r", 3, 3, cmd_getrange);
  add("setrange", "we", 3, 3, cmd_setrange);
  add("incrbyfloat", "we", 2, 2, cmd_incrbyfloat);
  // compare-and-set (and SET's IFEQ / IFNE)
  add("delex", "wes", 1, -1, cmd_delex);
  add("delifeq", "wes", 2, 2, cmd_delifeq);
  // keys and expiry
  add("del", "wes", 1, -1, cmd_del);
  add("exists", "r", 1, -1, cmd_exists);
  add("type", "r", 1, 1, cmd_type);
  add("dbsize", "r", 0, 0, cmd_dbsize);
  add("keys", "r", 1, 1, cmd_keys);
  add("expire", "wes", 2, -1, cmd_expire);
  add("pexpire", "wes", 2, -1, cmd_pexpire);
  add("expireat", "wes", 2, -1, cmd_expireat);
  add("pexpireat", "wes", 2, -1, cmd_pexpireat);
  add("ttl", "r", 1, 1, cmd_ttl);
  add("pttl", "r", 1, 1, cmd_pttl);
  add("persist", "wes", 1, 1, cmd_persist);
  add("rename", "wes", 2, 2, cmd_rename);
  add("renamenx", "wes", 2, 2, cmd_renamenx);
  add("copy", "we", 2, -1, cmd_copy);
  add("unlink", "wes", 1, -1, cmd_del);
  add("touch", "r", 1, -1, cmd_exists);
  add("randomkey", "r", 0, 0, cmd_randomkey);
  add("flushall", "wes", 0, -1, cmd_flushall);
  add("flushdb", "wes", 0, -1, cmd_flushall);
  add("expiretime", "r", 1, 1, cmd_expiretime);
  add("pexpiretime", "r", 1, 1, cmd_pexpiretime);
  add("object", "r", 1, -1, cmd_object);
  add("scan", "r", 1, -1, cmd_scan);
  // hashes
  add("hset", "we", 3, -1, cmd_hset);
  add("hmset", "we", 3, -1, cmd_hmset);
  add("hget", "r", 2, 2, cmd_hget);
  add("hdel", "wes", 2, -1, cmd_hdel);
  add("hlen", "r", 1, 1, cmd_hlen);
  add("hgetall", "r", 1, 1, cmd_hgetall);
  add("hexists", "r", 2, 2, cmd_hexists);
  add("hkeys", "r", 1, 1, cmd_hkeys);
  add("hvals", "r", 1, 1, cmd_hvals);
  add("hmget", "r", 2, -1, cmd_hmget);
  add("hincrby", "we", 3, 3, cmd_hincrby);
  add("hincrbyfloat", "we", 3, 3, cmd_hincrbyfloat);
  add("hsetnx", "we", 3, 3, cmd_hsetnx);
  add("hstrlen", "r", 2, 2, cmd_hstrlen);
  add("hrandfield", "r", 1, -1, cmd_hrandfield);
  add("hscan", "r", 2, -1, cmd_hscan);
  // lists
  add("lpush", "we", 2, -1, cmd_lpush);
  add("rpush", "we", 2, -1, cmd_rpush);
  add("lpop", "wes", 1, 2, cmd_lpop);
  add("rpop", "wes", 1, 2, cmd_rpop);
  add("lrange", "r", 3, 3, cmd_lrange);
  add("lindex", "r", 2, 2, cmd_lindex);
  add("llen", "r", 1, 1, cmd_llen);
  add("lset", "we", 3, 3, cmd_lset);
  add("lrem", "wes", 3, 3, cmd_lrem);
  add("ltrim", "wes", 3, 3, cmd_ltrim);
  // sets
  add("sadd", "we", 2, -1, cmd_sadd);
  add("srem", "wes", 2, -1, cmd_srem);
  add("smembers", "r", 1, 1, cmd_smembers);
  add("sismember", "r", 2, 2, cmd_sismember);
  add("smismember", "r", 2, -1, cmd_smismember);
  add("scard", "r", 1, 1, cmd_scard);
  add("spop", "wes", 1, -1, cmd_spop);
  add("srandmember", "r", 1, -1, cmd_srandmember);
  add("sinter", "r", 1, -1, cmd_sinter);
  add("sunion", "r", 1, -1, cmd_sunion);
  add("sdiff", "r", 1, -1, cmd_sdiff);
  add("sinterstore", "we", 2, -1, cmd_sinterstore);
  add("sunionstore", "we", 2, -1, cmd_sunionstore);
  add("sdiffstore", "we", 2, -1, cmd_sdiffstore);
  add("smove", "wes", 3, 3, cmd_smove);
  add("sscan", "r", 2, -1, cmd_sscan);
  // sorted sets
  add("zadd", "we", 3, -1, cmd_zadd);
  add("zincrby", "we", 3, 3, cmd_zincrby);
  add("zrem", "wes", 2, -1, cmd_zrem);
  add("zscore", "r", 2, 2, cmd_zscore);
  add("zmscore", "r", 2, -1, cmd_zmscore);
  add("zcard", "r", 1, 1, cmd_zcard);
  add("zcount", "r", 3, 3, cmd_zcount);
  add("zrank", "r", 2, 2, cmd_zrank);
  add("zrevrank", "r", 2, 2, cmd_zrevrank);
  add("zrange", "r", 3, -1, cmd_zrange);
  add("zrangebyscore", "r", 3, -1, cmd_zrangebyscore);
  add("zrevrangebyscore", "r", 3, -1, cmd_zrevrangebyscore);
  add("zremrangebyscore", "wes", 3, 3, cmd_zremrangebyscore);
  add("zremrangebyrank", "wes", 3, 3, cmd_zremrangebyrank);
  add("zpopmin", "wes", 1, -1, cmd_zpopmin);
  add("zpopmax", "wes", 1, -1, cmd_zpopmax);
  add("zscan", "r", 2, -1, cmd_zscan);
  // lists (Redis 6.2+)
  add("lpushx", "we", 2, -1, cmd_lpushx);
  add("rpushx", "we", 2, -1, cmd_rpushx);
  add("lpos", "r", 2, -1, cmd_lpos);
  add("linsert", "we", 4, 4, cmd_linsert);
  add("lmove", "we", 4, 4, cmd_lmove);
  add("rpoplpush", "we", 2, 2, cmd_rpoplpush);
  // blocking pops (the waiting is the client server's: 5n2_blocking.hpp)
  add("blpop", "wes", 2, -1, cmd_blpop);
  add("brpop", "wes", 2, -1, cmd_brpop);
  add("blmove", "we", 5, 5, cmd_blmove);
  add("bzpopmin", "wes", 2, -1, cmd_bzpopmin);
  add("bzpopmax", "wes", 2, -1, cmd_bzpopmax);
}

}  // namespace raft
