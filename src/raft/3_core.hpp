
// ============================================================================================
// 3. The core: Raft as a deterministic state machine
// ============================================================================================
//
// No threads, sockets, files or clock. The core is given ticks (tick), messages (step),
// proposals (propose, propose_config) and read requests (read_index), and answers with a
// Ready batch (ready): what to make durable, what to send now and what only once that is
// durable, what is committed and may be applied, and what happened. The runtime (section 5)
// drives it with sockets and disks; the simulation tests drive it with a seeded network.
//
// Beyond the Raft paper's figure 2, it keeps the rules of DESIGN.md: pre-vote and elections
// campaign for term + term_step (pyraft's +10, made safe by being part of the election);
// only voters of a configuration the node holds ever campaign; leader stickiness and
// check-quorum; one membership change at a time, used on append and reverted on truncation;
// ReadIndex with a heartbeat round; timeouts that abort a proposal report "unknown outcome"
// and never remove an entry.

namespace raft {

// ---- the core's types: log entries, what to persist, messages, and its output batch ----

enum class EntryType : std::uint8_t {
  Command = 0,  // payload: the command's words, RESP-encoded (resp::write_command)
  Noop = 1,     // a new leader's first entry of its term; empty payload
  Config = 2,   // payload: Configuration::encode()
};

/// One entry of the replicated log.
struct LogEntry {
  std::uint64_t index = 0;
  std::uint64_t term = 0;
  EntryType type = EntryType::Command;
  /// The leader's wall clock when it appended the entry, in ms since the epoch. Never
  /// decreases along the log (a leader stamps max(now, previous stamp)). Write handlers use it
  /// as "now", so every node computes the same result.
  std::int64_t timestamp_ms = 0;
  std::string payload;

  bool operator==(const LogEntry& o) const {
    return index == o.index && term == o.term && type == o.type &&
           timestamp_ms == o.timestamp_ms && payload == o.payload;
  }
  bool operator!=(const LogEntry& o) const { return !(*this == o); }
};

/// What a node must make durable before it answers a vote: its term and whom it voted for.
struct HardState {
  std::uint64_t term = 0;
  NodeId vote;  // empty: no vote in this term

  bool operator==(const HardState& o) const { return term == o.term && vote == o.vote; }
  bool operator!=(const HardState& o) const { return !(*this == o); }
};

/// A snapshot: its metadata and the store's text form (section 2: repr-style, readable by
/// Python's ast.literal_eval).
struct Snapshot {
  SnapshotMeta meta;
  std::string data;
};

/// Bytes of a snapshot being received from the leader, for the storage to write at `offset`
/// of the data of its incoming snapshot file (offset 0 starts that file anew). The core keeps
/// only how much arrived and its CRC-32C; the bytes live in the file (and in the PersistBatch
/// until the storage took them), so a large transfer is never held whole in memory.
struct SnapshotChunk {
  std::uint64_t index = 0;  // the snapshot's last entry
  std::uint64_t term = 0;
  std::uint64_t offset = 0;
  std::string data;
};

/// The last chunk of a received snapshot is in Ready::persist: once that batch is written,
/// the runtime has the storage read the incoming file back (its length and CRC-32C must be
/// these, which the core computed over the bytes as they arrived), parses it, and hands the
/// result to Core::received_snapshot_loaded. Nothing is deleted or installed before that.
struct ReceivedSnapshot {
  SnapshotMeta meta;
  std::uint64_t size = 0;
  std::uint32_t crc32c = 0;
};

/// The core's instructions to the storage, made durable in `seq` order. The rule that keeps
/// Raft safe: a message that promises something (a vote, an acknowledgement) is sent only
/// after the batch that holds what it promises is durable.
struct PersistBatch {
  std::uint64_t seq = 0;
  /// A snapshot received from the leader, made durable first. When the log on disk holds
  /// the snapshot's last entry (same index and term), the log after it is kept and only
  /// what the snapshot covers may go (Raft §7). Otherwise it REPLACES THE WHOLE LOG: the log
  /// on disk is then empty and continues at snapshot->meta.index + 1.
  std::shared_ptr<const Snapshot> snapshot;
  std::optional<HardState> hard_state;
  /// Appended after the snapshot. Entries the log on disk holds already (same index and
  /// term: by Log Matching, the same entries) are skipped, so durable entries are never
  /// deleted to be written again; the log is cut at the first entry whose term differs from
  /// the log's (a follower overwriting a conflicting suffix), and the rest is appended.
  std::vector<LogEntry> entries;
  /// Chunks of a snapshot being received, in order: written to the incoming snapshot file,
  /// not synced (the offset reached is not durable state: after a crash the transfer starts
  /// again from 0, and open() deletes the partial file). Independent of the log.
  std::vector<SnapshotChunk> snapshot_chunks;

  bool empty() const { return !snapshot && !hard_state && entries.empty() && snapshot_chunks.empty(); }
};


enum class MessageType : std::uint8_t {
  PreVote = 1,
  PreVoteResponse,
  Vote,
  VoteResponse,
  Append,
  AppendResponse,
  Heartbeat,
  HeartbeatResponse,
  Snapshot,
  SnapshotResponse,
  TimeoutNow,
  ReadIndex,
  ReadIndexResponse,
};

inline const char* to_string(MessageType t) {
  switch (t) {
    case MessageType::PreVote: return "PreVote";
    case MessageType::PreVoteResponse: return "PreVoteResponse";
    case MessageType::Vote: return "Vote";
    case MessageType::VoteResponse: return "VoteResponse";
    case MessageType::Append: return "Append";
    case MessageType::AppendResponse: return "AppendResponse";
    case MessageType::Heartbeat: return "Heartbeat";
    case MessageType::HeartbeatResponse: return "HeartbeatResponse";
    case MessageType::Snapshot: return "Snapshot";
    case MessageType::SnapshotResponse: return "SnapshotResponse";
    case MessageType::TimeoutNow: return "TimeoutNow";
    case MessageType::ReadIndex: return "ReadIndex";
    case MessageType::ReadIndexResponse: return "ReadIndexResponse";
  }
  return "?";
}

/// One message between cores. A flat struct; which fields mean what depends on the type:
///   PreVote, Vote       term: the campaign's term; index, log_term: the candidate's last
///                       entry; transfer: leadership transfer (voters ignore stickiness)
///   *VoteResponse       term; reject
///   Append              index, log_term: the entry before `entries`; entries; commit
///   AppendResponse      reject false: index = the highest index known to match the leader
///                       reject true: index = the rejected previous index; hint_index,
///                       hint_term: where the follower's log may match (fast back-off)
///   Heartbeat           commit (at most the follower's match); context: read round
///   HeartbeatResponse   context: the round echoed
///   Snapshot            index, log_term, config, timestamp_ms: the snapshot's metadata;
///                       offset, data: one chunk; done: the last chunk
///   SnapshotResponse    index: the snapshot's index; offset: bytes received so far; reject:
///                       resend from offset; done: installed (index now matches)
///   TimeoutNow          campaign now (leadership transfer)
///   ReadIndex           context: the follower's request id
///   ReadIndexResponse   context; index: the read index; reject: no read index (not leader);
///                       timestamp_ms: the leader's time for the read (see ReadState)
struct Message {
  MessageType type = MessageType::Heartbeat;
  NodeId from;
  NodeId to;
  std::string server_id;  // the sender's server id (see Member::server_id)
  std::uint64_t term = 0;
  std::uint64_t index = 0;
  std::uint64_t log_term = 0;
  std::uint64_t commit = 0;
  std::vector<LogEntry> entries;
  bool reject = false;
  std::uint64_t hint_index = 0;
  std::uint64_t hint_term = 0;
  bool transfer = false;
  std::uint64_t context = 0;
  Configuration config;
  std::uint64_t offset = 0;
  std::string data;
  bool done = false;
  std::int64_t timestamp_ms = 0;

  bool operator==(const Message& o) const {
    return type == o.type && from == o.from && to == o.to && server_id == o.server_id && term == o.term &&
           index == o.index && log_term == o.log_term && commit == o.commit && entries == o.entries &&
           reject == o.reject && hint_index == o.hint_index && hint_term == o.hint_term &&
           transfer == o.transfer && context == o.context && config == o.config && offset == o.offset &&
           data == o.data && done == o.done && timestamp_ms == o.timestamp_ms;
  }
  bool operator!=(const Message& o) const { return !(*this == o); }
};

/// The outcome of a linearizable read request: once ok, the read may be served as soon as
/// the node has applied `index`, and judges expiry at `time_ms` (or the timestamp of the last
/// entry applied, if later): the confirming leader's clock, never below any stamp it issued,
/// so that every node judges a read alike whatever its own clock says.
struct ReadState {
  std::uint64_t request_id = 0;
  std::uint64_t index = 0;
  bool ok = false;
  std::int64_t time_ms = 0;
  std::uint64_t term = 0;  // the term of the leader that confirmed it
};

/// Names one log entry.
struct EntryId {
  std::uint64_t index = 0;
  std::uint64_t term = 0;
  bool operator==(const EntryId& o) const { return index == o.index && term == o.term; }
};

struct RoleChange {
  Role role = Role::Follower;
  std::uint64_t term = 0;
  NodeId leader;  // empty when unknown
};

/// The core's output batch: everything to do after one or more inputs. Do it in this
/// order: hand `persist` to the storage and send `messages` at once; send `after_persist`
/// only when `persist` and every earlier batch are durable, then call Core::persisted(seq);
/// apply `restore` (if set) and then `committed`, in order.
struct Ready {
  PersistBatch persist;                 // persist.seq != 0 when there is a batch (maybe empty)
  std::vector<Message> messages;        // send now
  std::vector<Message> after_persist;   // send once persist.seq is durable
  std::shared_ptr<const Snapshot> restore;  // replace the state machine with this first
  std::vector<LogEntry> committed;      // committed and durable here: apply in order
  std::vector<ReadState> reads;         // results of read_index() requests
  std::vector<EntryId> aborted;         // proposals now of unknown outcome (timeout, lost leadership)
  std::vector<RoleChange> role_changes;  // in the order they happened
  std::uint64_t leader_ready_term = 0;  // nonzero: leading in this term and its first entry committed
  bool snapshot_wanted = false;         // the log since the last snapshot is long: take one
  std::vector<std::string> refused;     // input the core refused (a term out of bounds, a bad snapshot), and why
  /// Set: the last chunk of a received snapshot is in `persist`; once it is written, load
  /// and check the incoming file and call Core::received_snapshot_loaded (see there).
  std::optional<ReceivedSnapshot> received_snapshot;

  bool empty() const {
    return persist.seq == 0 && messages.empty() && after_persist.empty() && !restore &&
           committed.empty() && reads.empty() && aborted.empty() && role_changes.empty() &&
           leader_ready_term == 0 && !snapshot_wanted && refused.empty() && !received_snapshot;
  }
};

namespace detail {

// CRC-32C (Castagnoli), slice-by-8. The tables are built at compile time.
struct Crc32cTables {
  std::uint32_t t[8][256] = {};
  constexpr Crc32cTables() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
  }
};
inline constexpr Crc32cTables kCrc32cTables{};

/// CRC-32C of `size` bytes; pass a previous result as `crc` to continue it over more bytes.
inline std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc = 0) {
  const auto* p = static_cast<const unsigned char*>(data);
  const auto& t = kCrc32cTables.t;
  crc = ~crc;
  while (size >= 8) {
    const std::uint32_t lo = crc ^ (std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 |
                                    std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24);
    const std::uint32_t hi = std::uint32_t{p[4]} | std::uint32_t{p[5]} << 8 |
                             std::uint32_t{p[6]} << 16 | std::uint32_t{p[7]} << 24;
    crc = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
          t[3][hi & 0xFFu] ^ t[2][(hi >> 8) & 0xFFu] ^ t[1][(hi >> 16) & 0xFFu] ^ t[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size-- > 0) crc = t[0][(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

}  // namespace detail

/// The largest term a node accepts or reaches. Elections add term_step (at most 2^32) to the
/// term, and 2^62 leaves room for that without wrapping around; at 10 per election it is
/// never reached by elections. A message carrying a larger term is dropped: only a forged or
/// corrupted one can.
constexpr std::uint64_t kMaxTerm = std::uint64_t{1} << 62;
constexpr std::uint64_t kMaxTermStep = std::uint64_t{1} << 32;

/// Tuning of the core. Times are in ticks; the runtime turns milliseconds into ticks.
struct CoreOptions {
  /// This node's id and the server id of its data directory (see Member::server_id).
  NodeId id;
  std::string server_id;

  /// Minimum election timeout. A voter that hears from no leader for a random time in
  /// [election_ticks, 2 * election_ticks) campaigns (Raft §5.2, randomized timeouts). It is
  /// also the check-quorum period and the stickiness window (a voter that heard from a leader
  /// within it ignores campaigns: dissertation §4.2.3).
  int election_ticks = 10;
  /// A leader sends heartbeats this often; must be well below election_ticks.
  int heartbeat_ticks = 1;
  /// Pre-vote (dissertation §9.6): ask first whether an election could be won, so that a
  /// node back from a partition does not raise everyone's term.
  bool pre_vote = true;
  /// A leader that has not heard from a majority within election_ticks steps down
  /// (dissertation §6.2), and voters ignore campaigns while they hear from a leader.
  bool check_quorum = true;
  /// Elections campaign for current term + term_step (pyraft's +10). Any value in
  /// [1, kMaxTermStep] is safe.
  std::uint64_t term_step = 10;
  /// Appends in flight per follower before the leader waits for answers (pipelining).
  std::size_t max_inflight = 256;
  /// Entries per Append message, by payload bytes (at least one entry is always sent).
  std::size_t max_message_bytes = 1u << 20;
  /// A proposal not committed within this many ticks is reported aborted (unknown outcome).
  int proposal_timeout_ticks = 200;
  /// A linearizable read not confirmed within this many ticks fails.
  int read_timeout_ticks = 200;
  /// Ask for a snapshot when this many entries were applied since the last one (pyraft:
  /// 100000), and keep this many entries behind it so slightly slow followers need no snapshot.
  std::uint64_t snapshot_threshold = 100000;
  std::uint64_t snapshot_trailing = 1000;
  /// Learners are promoted to voters automatically while there are fewer voters than this.
  std::size_t max_voters = 5;
  /// Snapshots travel in chunks of this size, this many chunks in flight.
  std::size_t snapshot_chunk_bytes = 1u << 20;
  std::size_t snapshot_chunks_inflight = 4;
  /// A snapshot being received may grow to this many bytes; the chunks are dropped beyond it
  /// (a stream that never ends would otherwise fill the disk: the chunks go to a file).
  std::uint64_t max_snapshot_bytes = std::uint64_t{4} << 30;
  /// Checks a received snapshot before it replaces anything: empty when it may be installed,
  /// else why not (the runtime parses it with the reader that restores it). Called from
  /// received_snapshot_loaded, once the storage read the whole file back. Unset: no check.
  std::function<std::string(const Snapshot&)> check_snapshot;
  /// Seed of the election-timeout randomness (the runtime uses a random one; tests fix it).
  std::uint64_t random_seed = 1;

  /// Empty when valid, else what is wrong.
  std::string validate() const {
    if (id.empty()) return "id must not be empty";
    if (election_ticks < 2) return "election_ticks must be at least 2";
    if (heartbeat_ticks < 1 || heartbeat_ticks >= election_ticks)
      return "heartbeat_ticks must be at least 1 and below election_ticks";
    if (term_step < 1 || term_step > kMaxTermStep) return "term_step must be in [1, 2^32]";
    if (max_inflight < 1) return "max_inflight must be at least 1";
    if (proposal_timeout_ticks < 1 || read_timeout_ticks < 1) return "timeouts must be positive";
    if (snapshot_threshold < 1) return "snapshot_threshold must be at least 1";
    if (max_voters < 1) return "max_voters must be at least 1";
    if (snapshot_chunk_bytes < 1 || snapshot_chunks_inflight < 1)
      return "snapshot chunk size and window must be positive";
    if (max_snapshot_bytes < 1) return "max_snapshot_bytes must be positive";
    return "";
  }
};

/// What a node recovered from its disk, to start a core from.
struct CoreState {
  HardState hard_state;
  std::shared_ptr<const Snapshot> snapshot;  // may be null
  std::vector<LogEntry> entries;             // the log after the snapshot, contiguous
  /// The configuration at index 0, used when neither the snapshot nor the log holds one: a
  /// founder's {itself}, a static peer map, or empty for a joiner.
  Configuration initial_config;
};

struct ProposeResult {
  enum class Error : std::uint8_t {
    None,
    NotLeader,      // nothing appended; `leader` names the leader when known
    Transferring,   // leadership transfer in progress; nothing appended
    NotReady,       // configuration change before the leader's first entry committed
    ConfigPending,  // another configuration change is not committed yet
    InvalidConfig,  // more than one voter changed, no voter left, unknown member...
  };
  Error error = Error::None;
  EntryId id;     // where the entry went, when error == None
  NodeId leader;  // the known leader (for NotLeader)
  bool ok() const { return error == Error::None; }
};

/// The leader's view of one member's log.
struct Progress {
  enum class State : std::uint8_t {
    Probe,      // where the follower's log matches is unknown: one append at a time
    Replicate,  // matching: appends are pipelined, up to max_inflight
    Snapshot,   // the follower needs entries the leader has compacted: snapshot chunks
  };
  State state = State::Probe;
  std::uint64_t match = 0;  // highest index known to be in the member's log
  std::uint64_t next = 1;   // next index to send
  bool probe_sent = false;  // Probe: an append is out; wait for its answer or a heartbeat's
  std::uint64_t probe_sent_tick = 0;
  std::deque<std::uint64_t> inflight;  // Replicate: last index of each append in flight
  bool recent_active = false;          // heard from within the check-quorum period
  std::uint64_t last_heard = 0;        // the tick of its last message (under its identity)
  int stalled_ticks = 0;               // Replicate: ticks with appends out and no answer
  std::string server_id;               // as its messages present it
  // Snapshot state
  std::shared_ptr<const Snapshot> snapshot;
  std::uint64_t snapshot_sent = 0;   // bytes sent
  std::uint64_t snapshot_acked = 0;  // bytes the member confirmed
  bool snapshot_done_sent = false;
  int snapshot_idle_ticks = 0;  // ticks without progress; resend from snapshot_acked
  /// The offset the chunks were last sent again from; none: kNoOffset. A member rejects every
  /// chunk that was in flight before that, each time asking for that same offset: those
  /// answers are stale, and answering each with a window of chunks again would multiply the
  /// chunks without end.
  static constexpr std::uint64_t kNoOffset = ~std::uint64_t{0};
  std::uint64_t snapshot_resent_from = kNoOffset;

  // The state changes, one function each (etcd's BecomeProbe / BecomeReplicate /
  // BecomeSnapshot). Each starts the new state's sending from scratch: what was in flight,
  // stalled or being streamed in the old state is forgotten. match, the activity fields and
  // server_id describe the member, not the sending, and are kept.

  /// Where the member's log matches is unknown: one append at a time, from next_index (match + 1,
  /// or lower than the old next when a rejection said where the logs differ).
  void become_probe(std::uint64_t next_index) {
    forget_sending();
    state = State::Probe;
    next = next_index;
  }
  /// The member's log matches up to match: appends from match + 1, pipelined.
  void become_replicate() {
    forget_sending();
    state = State::Replicate;
    next = match + 1;
  }
  /// The member needs entries the leader compacted away: snapshot chunks from the start.
  /// next is kept; the state after the snapshot is a probe from past what it installed.
  void become_snapshot(std::shared_ptr<const Snapshot> snap) {
    forget_sending();
    state = State::Snapshot;
    snapshot = std::move(snap);
    snapshot_sent = snapshot_acked = 0;
    snapshot_done_sent = false;
    snapshot_idle_ticks = 0;
    snapshot_resent_from = kNoOffset;
  }
  /// Snapshot: chunks sent from `offset` were lost or refused; send again from there (the
  /// member confirmed everything before it).
  void resend_snapshot_from(std::uint64_t offset) {
    snapshot_sent = snapshot_acked = snapshot_resent_from = offset;
    snapshot_done_sent = false;
    snapshot_idle_ticks = 0;
  }

 private:
  void forget_sending() {
    probe_sent = false;
    inflight.clear();
    stalled_ticks = 0;  // a stall counts from the appends of the new state
    snapshot.reset();
  }
};

inline char role_char(Role role, bool voter) {
  switch (role) {
    case Role::Leader: return 'l';
    case Role::Candidate:
    case Role::PreCandidate: return 'c';
    case Role::Follower: return voter ? 'f' : 'n';
  }
  return '?';
}

class Core {
 public:
  Core(CoreOptions options, CoreState state);

  // ---- inputs --------------------------------------------------------------------------
  /// Advances time by one tick; now_ms is the wall clock, used only to stamp entries.
  void tick(std::int64_t now_ms = 0);
  /// Handles one message from a peer.
  void step(const Message& m);
  /// Appends a command on the leader. now_ms: the leader's wall clock for the entry's stamp.
  ProposeResult propose(std::string payload, std::int64_t now_ms);
  /// Proposes the next configuration: at most one voter added or removed, learners free.
  ProposeResult propose_config(const Configuration& next, std::int64_t now_ms);
  ProposeResult add_learner(Member member, std::int64_t now_ms);
  ProposeResult promote(const NodeId& id, std::int64_t now_ms);
  ProposeResult remove(const NodeId& id, std::int64_t now_ms);
  /// Hands leadership to a caught-up voter: stop accepting proposals, bring it up to date,
  /// tell it to campaign at once. Gives up after election_ticks.
  bool transfer_leadership(const NodeId& to);
  /// The voter to hand leadership to when the caller names none (RAFT.TRANSFER alone, a
  /// leader that leaves): the one whose log matches furthest, among those heard from within
  /// the last election timeout (a silent one could not take over: the transfer would only
  /// hold up proposals until it is given up); ties go to the greatest id. Empty when this node
  /// is not the leader or no voter qualifies.
  NodeId best_transfer_target() const;
  /// Starts an election now (if this node is a voter). Tests use it; so does TimeoutNow.
  void campaign() { start_campaign(false); }
  /// Asks for a linearizable read index; the answer comes in Ready::reads.
  void read_index(std::uint64_t request_id);
  /// The runtime made the batch with this seq (and all before it) durable.
  void persisted(std::uint64_t seq);
  /// The storage read back the snapshot a Ready::received_snapshot announced: `snapshot` holds
  /// its metadata and data when `problem` is empty, else `problem` says why the file is not
  /// that snapshot (a length or CRC-32C that differs from what arrived). Checked, then
  /// installed (or the log found to hold it already), and the leader answered; refused with
  /// the log kept as it was. An answer about any other snapshot than the one awaited is ignored.
  void received_snapshot_loaded(std::shared_ptr<const Snapshot> snapshot, const std::string& problem);
  /// The runtime saved this snapshot of its state machine (at most the applied index).
  /// Returns the index up to which the log may now be dropped from disk too.
  std::uint64_t compact(std::shared_ptr<const Snapshot> snapshot);

  // ---- output --------------------------------------------------------------------------
  bool has_ready() const;
  Ready ready();

  // ---- state ---------------------------------------------------------------------------
  const NodeId& id() const { return opts_.id; }
  Role role() const { return role_; }
  bool is_voter() const { return voter_in(config()); }
  /// A voter of `c` under this data directory's identity. A node whose disk was wiped and that
  /// received a configuration naming it under its old server id is no voter there: it forgot
  /// the votes that identity gave, so it neither campaigns nor counts its own vote.
  bool voter_in(const Configuration& c) const {
    const Member* m = c.find(opts_.id);
#ifdef RAFT_MUTANT_WIPED_NODE_VOTES
    return m != nullptr && m->voter;  // mutant: a voter by its id alone
#else
    return m != nullptr && m->voter && (m->server_id.empty() || m->server_id == opts_.server_id);
#endif
  }
  char role_char() const { return raft::role_char(role_, is_voter()); }
  std::uint64_t term() const { return term_; }
  const NodeId& vote() const { return vote_; }
  const NodeId& leader() const { return leader_; }
  bool leader_ready() const { return role_ == Role::Leader && leader_ready_; }
  std::uint64_t commit_index() const { return commit_; }
  std::uint64_t applied_index() const { return applied_; }  // handed out in Ready::committed
  std::uint64_t durable_index() const { return durable_index_; }
  std::uint64_t first_index() const { return log_start_index_ + 1; }
  std::uint64_t last_index() const { return log_start_index_ + entries_.size(); }
  std::uint64_t last_term() const { return term_at(last_index()); }
  std::uint64_t snapshot_index() const { return snapshot_ ? snapshot_->meta.index : 0; }
  /// Term of the entry at index; 0 when the index is compacted away or beyond the log.
  std::uint64_t term_at(std::uint64_t index) const;
  /// The entry at index (first_index() <= index <= last_index()).
  const LogEntry& entry(std::uint64_t index) const {
    return entries_[static_cast<std::size_t>(index - log_start_index_ - 1)];
  }
  /// The configuration in use: the last one in the log, else the snapshot's or initial one.
  const Configuration& config() const {
    return log_configs_.empty() ? base_config_ : log_configs_.back().second;
  }
  /// Index of the entry holding config() (0 for the initial configuration).
  std::uint64_t config_index() const {
    return log_configs_.empty() ? base_config_index_ : log_configs_.back().first;
  }
  /// The configuration in force at an index no older than first_index() - 1.
  Configuration config_at(std::uint64_t index) const;
  const std::map<NodeId, Progress>& progress() const { return progress_; }
  /// Ticks so far (Progress::last_heard counts in them), and since the election timer was last
  /// reset: on a follower, since it last heard from a leader (or granted a vote).
  std::uint64_t ticks() const { return tick_count_; }
  int ticks_since_timer_reset() const { return election_elapsed_; }
  const NodeId& transfer_target() const { return transfer_target_; }
  const CoreOptions& options() const { return opts_; }
  /// Peer messages and received snapshots refused as out of bounds or unreadable (each is
  /// also reported in Ready::refused).
  std::uint64_t refused_count() const { return refused_count_; }
  /// Bytes of the snapshot being received that arrived so far (they are in the storage's
  /// incoming file, or in the next Ready::persist on their way there).
  std::uint64_t receiving_snapshot_bytes() const { return recv_snapshot_size_; }
  /// Bytes of received snapshot data the core holds itself: the chunks that wait in the batch
  /// for the next ready(); zero once it handed them out. Never the whole snapshot.
  std::size_t received_snapshot_bytes_held() const {
    std::size_t n = 0;
    for (const auto& c : batch_.snapshot_chunks) n += c.data.size();
    return n;
  }

 private:
  struct PendingRead {
    std::uint64_t request_id;
    NodeId from;  // empty: this node's own request
    std::uint64_t index;
    std::uint64_t round;
    std::uint64_t deadline;
  };
  struct PendingProposal {
    EntryId id;
    std::uint64_t deadline;
  };
  struct UnpersistedBatch {
    std::uint64_t seq;
    std::uint64_t last_index;  // log end once durable (lowered when the log is cut since)
    std::uint64_t term;        // the hard state's term once durable (0: the batch holds none)
  };

  // roles
  void become_follower(std::uint64_t term, const NodeId& leader);
  void become_pre_candidate();
  void become_candidate(bool transfer);
  void become_leader();
  void start_campaign(bool transfer);
  bool can_campaign() const;
  void note_role_change();
  void reset_election_timer();
  // per-role message handling
  void step_leader(const Message& m);
  void step_candidate(const Message& m);
  void step_follower(const Message& m);
  void handle_vote_request(const Message& m);
  void handle_vote_response(const Message& m);
  void handle_append(const Message& m);
  void handle_heartbeat(const Message& m);
  void handle_snapshot(const Message& m);
  void handle_append_response(Progress& pr, const Message& m);
  void handle_snapshot_response(Progress& pr, const Message& m);
  void handle_read_index_response(const Message& m);
  // log
  bool log_up_to_date(std::uint64_t index, std::uint64_t term) const;
  bool matches(std::uint64_t index, std::uint64_t term) const;
  std::uint64_t find_conflict_by_term(std::uint64_t index, std::uint64_t term) const;
  void append_local(LogEntry e);
  void append_from_leader(const std::vector<LogEntry>& entries);
  void push_entry(LogEntry e);
  void truncate_from(std::uint64_t index);
  void install_snapshot(std::shared_ptr<const Snapshot> snap);
  void commit_to(std::uint64_t index);
  void on_config_changed();
  // leader
  void maybe_commit();
  bool send_append(const NodeId& to, Progress& pr);
  void send_snapshot_chunks(const NodeId& to, Progress& pr);
  void flush_leader_sends();
  void broadcast_heartbeat();
  void tick_leader();
  void tick_follower();
  void maybe_reconfigure();
  void leader_read(std::uint64_t request_id, const NodeId& from);
  void start_read_round();
  void complete_read_round();
  void resolve_read(const PendingRead& r, bool ok);
  void fail_leader_state();
  void expire_timeouts();
  std::size_t quorum() const { return config().voter_count() / 2 + 1; }
  /// Answers to this node's requests: votes and acknowledgements, promises of the sender's
  /// state. (A ReadIndexResponse answers too, but only the node asked knows the request id,
  /// and it makes no promise about the sender's disk.)
  static bool is_answer(MessageType t) {
#ifdef RAFT_MUTANT_STRANGER_CAMPAIGN_IGNORED
    if (t == MessageType::PreVote || t == MessageType::Vote) return true;  // mutant: campaigns dropped too
#endif
    return t == MessageType::PreVoteResponse || t == MessageType::VoteResponse ||
           t == MessageType::AppendResponse || t == MessageType::HeartbeatResponse ||
           t == MessageType::SnapshotResponse;
  }
  // input out of bounds
  static bool terms_within_bound(const Message& m);
  bool next_campaign_term_within_bound();
  void refuse(std::string why, bool counted);
  // messages
  Message make(MessageType type, const NodeId& to) const;
  void send(Message m) { msgs_.push_back(std::move(m)); }
  void send_after_persist(Message m) { msgs_after_.push_back(std::move(m)); }
  std::uint64_t random_below(std::uint64_t n);

  CoreOptions opts_;
  std::uint64_t rng_state_;

  // persistent state (mirrored on disk through PersistBatch)
  std::uint64_t term_ = 0;
  NodeId vote_;
  HardState persisted_hs_;  // the last hard state handed to the storage
  /// The term on disk. Nothing that carries a higher term leaves this node (ready() holds such
  /// messages back until the batch with the term is durable): a node that crashed before its
  /// term reached the disk would otherwise come back in an older term, campaign for the same
  /// term again and write a second, different entry at one (index, term).
  std::uint64_t durable_term_ = 0;

  // the log: entries_ holds (log_start_index_, last_index()]
  std::uint64_t log_start_index_ = 0;
  std::uint64_t log_start_term_ = 0;
  std::deque<LogEntry> entries_;
  std::shared_ptr<const Snapshot> snapshot_;  // the newest snapshot, sent to lagging members
  Configuration base_config_;                 // in force at log_start (snapshot or initial)
  std::uint64_t base_config_index_ = 0;
  std::vector<std::pair<std::uint64_t, Configuration>> log_configs_;  // Config entries in the log
  std::int64_t max_timestamp_ = 0;  // newest entry stamp seen: stamps never go backwards

  // volatile state
  Role role_ = Role::Follower;
  NodeId leader_;
  std::uint64_t commit_ = 0;
  std::uint64_t applied_ = 0;
  std::uint64_t durable_index_ = 0;
  std::uint64_t tick_count_ = 0;
  std::int64_t now_ms_ = 0;
  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_timeout_ = 0;
  std::map<NodeId, bool> votes_;

  // leader state
  std::map<NodeId, Progress> progress_;
  bool leader_ready_ = false;
  std::uint64_t leader_first_index_ = 0;  // the no-op that opens the term
  NodeId transfer_target_;
  // Members whose messages present a server id other than the configuration's (their disk
  // was wiped): id -> (new server id, tick last heard).
  std::map<NodeId, std::pair<std::string, std::uint64_t>> strangers_;
  int transfer_elapsed_ = 0;
  bool timeout_now_sent_ = false;
  std::deque<PendingProposal> pending_proposals_;
  std::uint64_t commit_sent_ = 0;  // the commit index followers were last told
  // reads (leader)
  std::vector<PendingRead> waiting_ready_reads_;  // arrived before the first entry committed
  std::deque<PendingRead> reads_;
  std::uint64_t read_round_ = 0;
  bool read_round_in_flight_ = false;
  std::set<NodeId> read_round_acks_;
  // reads (follower): request id -> deadline tick
  std::map<std::uint64_t, std::uint64_t> forwarded_reads_;
  // snapshot being received (follower): its bytes go to the storage as they arrive
  // (PersistBatch::snapshot_chunks); only how many, and their CRC-32C, stay here
  std::uint64_t recv_snapshot_index_ = 0;
  std::uint64_t recv_snapshot_term_ = 0;
  std::uint64_t recv_snapshot_size_ = 0;
  std::uint32_t recv_snapshot_crc_ = 0;
  // the last chunk arrived: the storage reads the file back (Ready::received_snapshot) and
  // received_snapshot_loaded answers the leader that sent it
  struct SnapshotBeingLoaded {
    NodeId from;
    SnapshotMeta meta;
  };
  std::optional<SnapshotBeingLoaded> recv_loading_;
  std::optional<ReceivedSnapshot> received_out_;

  // output being gathered for the next Ready
  PersistBatch batch_;
  std::vector<Message> msgs_;
  std::vector<Message> msgs_after_;
  std::shared_ptr<const Snapshot> restore_;
  std::vector<ReadState> reads_out_;
  std::vector<EntryId> aborted_;
  std::vector<RoleChange> role_changes_;
  std::vector<std::string> refused_out_;
  std::uint64_t refused_count_ = 0;
  RoleChange last_role_change_;
  bool leader_ready_unreported_ = false;
  bool snapshot_requested_ = false;
  bool snapshot_wanted_out_ = false;
  std::uint64_t next_seq_ = 1;
  std::deque<UnpersistedBatch> unpersisted_;
};

// ============================================================================================
// Core: implementation
// ============================================================================================

inline Core::Core(CoreOptions options, CoreState state)
    : opts_(std::move(options)), rng_state_(opts_.random_seed ^ 0x9e3779b97f4a7c15ull) {
  std::string problem = opts_.validate();
  if (!problem.empty()) throw std::invalid_argument("raft::CoreOptions: " + problem);
  // Nothing this core writes is above kMaxTerm: a larger term on disk was not written by it.
  auto stored_term_within_bound = [](std::uint64_t term, const std::string& what) {
    if (term > kMaxTerm)
      throw std::invalid_argument("raft::CoreState: " + what + " holds term " + std::to_string(term) +
                                  ", above the largest term a node reaches (2^62): the data directory "
                                  "is damaged or was not written by this version");
  };
  stored_term_within_bound(state.hard_state.term, "the hard state");
  if (state.snapshot) stored_term_within_bound(state.snapshot->meta.term, "the snapshot");
  for (const auto& e : state.entries)
    stored_term_within_bound(e.term, "the log entry at index " + std::to_string(e.index));
  term_ = state.hard_state.term;
  vote_ = state.hard_state.vote;
  persisted_hs_ = state.hard_state;
  durable_term_ = state.hard_state.term;
  base_config_ = std::move(state.initial_config);
  if (state.snapshot) {
    snapshot_ = state.snapshot;
    log_start_index_ = snapshot_->meta.index;
    log_start_term_ = snapshot_->meta.term;
    base_config_ = snapshot_->meta.config;
    base_config_index_ = snapshot_->meta.index;
    commit_ = applied_ = snapshot_->meta.index;
#ifndef RAFT_MUTANT_SNAPSHOT_FORGETS_TIME
    // Time never runs backwards: a restart stamps at least what the snapshot covers.
    max_timestamp_ = snapshot_->meta.timestamp_ms;
#endif
  }
  for (auto& e : state.entries) {
    if (e.index != last_index() + 1 || e.term < last_term())
      throw std::invalid_argument("raft::CoreState: log entries are not contiguous at index " +
                                  std::to_string(e.index));
    push_entry(std::move(e));
  }
  durable_index_ = last_index();
#ifdef RAFT_MUTANT_JOINER_CAMPAIGNS
  // mutant: a joiner without a configuration acts as the founder of a cluster of one
  if (config().empty()) base_config_.upsert(Member{opts_.id, "", opts_.server_id, true});
#endif
  last_role_change_ = RoleChange{role_, term_, leader_};
  reset_election_timer();
  // A founder, or a single-voter cluster restarting: nobody else can elect it, so it campaigns
  // at its first tick - not here, where it has no clock yet to stamp its first entry with.
  if (config().voter_count() == 1 && is_voter()) randomized_timeout_ = 1;
}

inline std::uint64_t Core::random_below(std::uint64_t n) {
  // splitmix64: deterministic for a seed on every platform (replays must match).
  std::uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return n == 0 ? 0 : z % n;
}

inline void Core::reset_election_timer() {
  election_elapsed_ = 0;
  randomized_timeout_ =
      opts_.election_ticks + static_cast<int>(random_below(static_cast<std::uint64_t>(opts_.election_ticks)));
}

inline std::uint64_t Core::term_at(std::uint64_t index) const {
  if (index == log_start_index_) return log_start_term_;
  if (index < log_start_index_ || index > last_index()) return 0;
  return entry(index).term;
}

inline Configuration Core::config_at(std::uint64_t index) const {
  Configuration c = base_config_;
  for (const auto& [i, cfg] : log_configs_) {
    if (i > index) break;
    c = cfg;
  }
  return c;
}

inline Message Core::make(MessageType type, const NodeId& to) const {
  Message m;
  m.type = type;
  m.from = opts_.id;
  m.to = to;
  m.server_id = opts_.server_id;
  m.term = term_;
  return m;
}

inline void Core::note_role_change() {
  RoleChange now{role_, term_, leader_};
  if (now.role != last_role_change_.role || now.term != last_role_change_.term ||
      now.leader != last_role_change_.leader) {
    role_changes_.push_back(now);
    last_role_change_ = now;
  }
}

// ---- input out of bounds -------------------------------------------------------------------

// Every term a message carries is at most kMaxTerm, and a leader's entries and the entry its
// snapshot or append follows are never of a later term than the leader's own. With that, and
// term_step at most kMaxTermStep, no term the core computes wraps around.
inline bool Core::terms_within_bound(const Message& m) {
  if (m.term > kMaxTerm || m.log_term > kMaxTerm || m.hint_term > kMaxTerm) return false;
  if (m.type == MessageType::Append || m.type == MessageType::Snapshot) {
    if (m.log_term > m.term) return false;
    for (const auto& e : m.entries)
      if (e.term > m.term) return false;
  }
  return true;
}

// A campaign for a term above kMaxTerm is refused (the node stays a follower): only forged
// terms get there, and wrapping around would make every later term look older.
inline bool Core::next_campaign_term_within_bound() {
  if (term_ <= kMaxTerm - opts_.term_step) return true;
  refuse("not campaigning: term " + std::to_string(term_) + " + " + std::to_string(opts_.term_step) +
             " would pass the largest term (2^62)",
         false);
  return false;
}

inline void Core::refuse(std::string why, bool counted) {
  if (counted) ++refused_count_;
  // Bounded: the runtime takes them at every ready(); a flood between two leaves 16 lines.
  if (refused_out_.size() < 16) refused_out_.push_back(std::move(why));
}

// ---- roles ---------------------------------------------------------------------------------

inline bool Core::can_campaign() const {
  // A joiner and a learner never campaign: only a voter of a configuration it holds can be
  // elected. A server removed by an entry that is not committed yet may still be needed to
  // elect a leader (its log may be the longest), so it campaigns until the removal commits;
  // it then counts only the votes of its latest configuration (dissertation §4.2.2).
  if (is_voter()) return true;
  return config_index() > commit_ && voter_in(config_at(commit_));
}

inline void Core::become_follower(std::uint64_t term, const NodeId& leader) {
  bool was_leader = role_ == Role::Leader;
  if (term > term_) {
    term_ = term;
    vote_.clear();
  }
  role_ = Role::Follower;
  leader_ = leader;
  votes_.clear();
  reset_election_timer();
  if (was_leader) fail_leader_state();
  note_role_change();
}

inline void Core::fail_leader_state() {
  // Every proposal not yet known committed now has an unknown outcome: a later leader may
  // still commit it. The entries stay in the log.
#ifndef RAFT_MUTANT_PROPOSALS_NOT_ABORTED
  for (const auto& p : pending_proposals_)
    if (p.id.index > commit_) aborted_.push_back(p.id);
#endif
  pending_proposals_.clear();
  for (const auto& r : waiting_ready_reads_) resolve_read(r, false);
  for (const auto& r : reads_) resolve_read(r, false);
  waiting_ready_reads_.clear();
  reads_.clear();
  read_round_in_flight_ = false;
  read_round_acks_.clear();
  progress_.clear();
  leader_ready_ = false;
  leader_ready_unreported_ = false;
  transfer_target_.clear();
  strangers_.clear();
}

inline void Core::start_campaign(bool transfer) {
  if (!can_campaign() || role_ == Role::Leader) return;
  if (!next_campaign_term_within_bound()) return;
  if (opts_.pre_vote && !transfer)
    become_pre_candidate();
  else
    become_candidate(transfer);
}

inline void Core::become_pre_candidate() {
  // Pre-vote asks about the term the election would use, without changing any state.
  role_ = Role::PreCandidate;
  leader_.clear();
  votes_.clear();
  reset_election_timer();
  note_role_change();
  votes_[opts_.id] = true;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id) continue;
    Message m = make(MessageType::PreVote, voter);
    m.term = term_ + opts_.term_step;
    m.index = last_index();
    m.log_term = last_term();
    send(std::move(m));
  }
  handle_vote_response(Message{});  // a single voter has already won
}

inline void Core::become_candidate(bool transfer) {
  if (!next_campaign_term_within_bound()) {
    become_follower(term_, "");
    return;
  }
#ifdef RAFT_MUTANT_BUMP_AFTER_WIN
  term_ += 1;  // mutant: campaign for term + 1, then raise the term after winning
#else
  term_ += opts_.term_step;
#endif
  vote_ = opts_.id;
  role_ = Role::Candidate;
  leader_.clear();
  votes_.clear();
  reset_election_timer();
  note_role_change();
  votes_[opts_.id] = true;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id) continue;
    Message m = make(MessageType::Vote, voter);
    m.index = last_index();
    m.log_term = last_term();
    m.transfer = transfer;
    // The candidate's own term and vote are durable before anyone is asked.
    send_after_persist(std::move(m));
  }
  handle_vote_response(Message{});
}

inline void Core::become_leader() {
#ifdef RAFT_MUTANT_BUMP_AFTER_WIN
  term_ += opts_.term_step - 1;
#endif
  role_ = Role::Leader;
  leader_ = opts_.id;
  votes_.clear();
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  leader_ready_ = false;
  transfer_target_.clear();
  progress_.clear();
  for (const auto& m : config().members) {
    if (m.id == opts_.id) continue;
    Progress pr;
    pr.next = last_index() + 1;
    pr.recent_active = true;  // give everyone one check-quorum period
    pr.last_heard = tick_count_;
    progress_[m.id] = pr;
  }
  commit_sent_ = commit_;
  read_round_in_flight_ = false;
  note_role_change();
  // The no-op opens the term: committing it commits everything before it (§5.4.2), and
  // until it commits the leader serves no reads and proposes no configuration change.
  LogEntry noop;
  noop.type = EntryType::Noop;
  noop.timestamp_ms = now_ms_;
  append_local(std::move(noop));
  leader_first_index_ = last_index();
  maybe_commit();
}

// ---- inputs --------------------------------------------------------------------------------

inline void Core::tick(std::int64_t now_ms) {
  ++tick_count_;
  if (now_ms > now_ms_) now_ms_ = now_ms;
  if (role_ == Role::Leader)
    tick_leader();
  else
    tick_follower();
  expire_timeouts();
}

inline void Core::tick_follower() {
  // A node that cannot campaign (a learner, a joiner) lets its timer stand at the timeout
  // instead of starting it again: its leader's lease (leader stickiness) must end all the
  // same, since a leader that promoted it may need its vote before it hears of the promotion.
  if (election_elapsed_ < randomized_timeout_) ++election_elapsed_;
  if (election_elapsed_ >= randomized_timeout_ && can_campaign()) {
    reset_election_timer();
    start_campaign(false);
  }
}

inline void Core::tick_leader() {
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  if (election_elapsed_ >= opts_.election_ticks) {
    election_elapsed_ = 0;
    if (opts_.check_quorum) {
      std::size_t active = 0;
      for (const auto& voter : config().voters()) {
        if (voter == opts_.id) {
          active += is_voter() ? 1 : 0;
          continue;
        }
        auto it = progress_.find(voter);
        if (it != progress_.end() && it->second.recent_active) ++active;
      }
      if (active < quorum()) {
        become_follower(term_, "");
        return;
      }
      for (auto& [id, pr] : progress_) pr.recent_active = false;
    }
  }
  if (!transfer_target_.empty() && ++transfer_elapsed_ >= opts_.election_ticks) {
    transfer_target_.clear();  // the transfer failed: accept proposals again
  }
  for (auto& [id, pr] : progress_) {
    if (pr.state == Progress::State::Replicate && !pr.inflight.empty() &&
        ++pr.stalled_ticks >= opts_.election_ticks) {
      // An append (or its answer) was lost: no answer for an election timeout while appends
      // are out. Probe again from the match index.
      pr.become_probe(pr.match + 1);
    }
    if (pr.state != Progress::State::Snapshot) continue;
    if (++pr.snapshot_idle_ticks >= opts_.election_ticks) {
      // No progress for a while: chunks were lost. Resend from what the member confirmed.
      pr.resend_snapshot_from(pr.snapshot_acked);
      send_snapshot_chunks(id, pr);
    }
  }
  if (heartbeat_elapsed_ >= opts_.heartbeat_ticks) {
    heartbeat_elapsed_ = 0;
    broadcast_heartbeat();
  }
  maybe_reconfigure();
}

inline void Core::expire_timeouts() {
  while (!pending_proposals_.empty() && pending_proposals_.front().id.index <= commit_)
    pending_proposals_.pop_front();
  while (!pending_proposals_.empty() && pending_proposals_.front().deadline <= tick_count_) {
    aborted_.push_back(pending_proposals_.front().id);
    pending_proposals_.pop_front();
  }
  for (auto it = forwarded_reads_.begin(); it != forwarded_reads_.end();) {
    if (it->second <= tick_count_) {
      reads_out_.push_back(ReadState{it->first, 0, false});
      it = forwarded_reads_.erase(it);
    } else {
      ++it;
    }
  }
  auto expired = [&](const PendingRead& r) { return r.deadline <= tick_count_; };
  for (auto it = reads_.begin(); it != reads_.end();) {
    if (expired(*it)) {
      resolve_read(*it, false);
      it = reads_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = waiting_ready_reads_.begin(); it != waiting_ready_reads_.end();) {
    if (expired(*it)) {
      resolve_read(*it, false);
      it = waiting_ready_reads_.erase(it);
    } else {
      ++it;
    }
  }
}

inline void Core::step(const Message& m) {
  if (m.from == opts_.id) return;
  if (!terms_within_bound(m)) {
    refuse("dropped " + std::string(to_string(m.type)) + " from " + m.from + ": it carries a term above the largest term (2^62), or entries of a term above its own",
           true);
    return;
  }
  // A member whose data directory was wiped comes back with a new server id: it may have
  // forgotten votes and entries it promised, so it is a stranger until re-added, and its
  // answers - votes, acknowledgements - count for nothing. What it asks for is another
  // matter: this node's configuration may be older than the one that re-added it and made it
  // a voter (or a leader); ignoring its appends or its campaign could leave this node behind,
  // or a majority unable to elect, for good. (A stranger by its own configuration is no voter
  // there and does not campaign: voter_in.)
  if (const Member* member = config().find(m.from)) {
    if (!member->server_id.empty() && member->server_id != m.server_id && is_answer(m.type)) {
      // A leader re-adds it as a learner under its new identity (maybe_reconfigure): it
      // catches up before it votes again.
      if (role_ == Role::Leader && !m.server_id.empty()) strangers_[m.from] = {m.server_id, tick_count_};
      return;
    }
  }

  if (m.term > term_) {
    if (m.type == MessageType::PreVote || m.type == MessageType::Vote) {
      // Leader stickiness: a voter that hears from a leader ignores campaigns (a removed or
      // partitioned node cannot disrupt), unless the leader itself asked for the election.
      bool in_lease = opts_.check_quorum && !leader_.empty() &&
                      election_elapsed_ < opts_.election_ticks;
      if (in_lease && !m.transfer) return;
    }
    if (m.type == MessageType::PreVote) {
      // pre-vote changes nothing
    } else if (m.type == MessageType::PreVoteResponse && !m.reject) {
      // a grant carries the term we would campaign for
    } else if (m.type == MessageType::Append || m.type == MessageType::Heartbeat ||
               m.type == MessageType::Snapshot) {
      become_follower(m.term, m.from);
    } else if (m.type == MessageType::Vote) {
      // Adopt the term, but keep the election timer running: only a granted vote or a
      // leader resets it (Raft §5.2), else a candidate with a stale log that keeps
      // campaigning would stop a better one from ever timing out.
      int elapsed = election_elapsed_, timeout = randomized_timeout_;
      become_follower(m.term, "");
      election_elapsed_ = elapsed;
      randomized_timeout_ = timeout;
    } else {
      become_follower(m.term, "");
    }
  } else if (m.term < term_) {
    if (m.type == MessageType::Append || m.type == MessageType::Heartbeat ||
        m.type == MessageType::Snapshot) {
      // A leader of an older term (back from a partition, or delayed): tell it our term so it
      // steps down.
      Message r = make(MessageType::AppendResponse, m.from);
      r.reject = true;
      send_after_persist(std::move(r));
    } else if (m.type == MessageType::PreVote) {
      Message r = make(MessageType::PreVoteResponse, m.from);
      r.reject = true;
      send(std::move(r));
    }
    return;
  }

  switch (m.type) {
    case MessageType::PreVote:
    case MessageType::Vote:
      handle_vote_request(m);
      return;
    case MessageType::TimeoutNow:
      if (role_ != Role::Leader && m.from == leader_) start_campaign(true);
      return;
    case MessageType::ReadIndex:
      if (role_ == Role::Leader) {
        leader_read(m.context, m.from);
      } else {
        Message r = make(MessageType::ReadIndexResponse, m.from);
        r.context = m.context;
        r.reject = true;
        send(std::move(r));
      }
      return;
    case MessageType::ReadIndexResponse:
      handle_read_index_response(m);
      return;
    default:
      break;
  }
  switch (role_) {
    case Role::Leader: step_leader(m); break;
    case Role::Candidate:
    case Role::PreCandidate: step_candidate(m); break;
    case Role::Follower: step_follower(m); break;
  }
}

inline void Core::step_follower(const Message& m) {
  switch (m.type) {
    case MessageType::Append:
    case MessageType::Heartbeat:
    case MessageType::Snapshot:
      election_elapsed_ = 0;
      if (leader_ != m.from) {
        leader_ = m.from;
        note_role_change();
      }
      if (m.type == MessageType::Append)
        handle_append(m);
      else if (m.type == MessageType::Heartbeat)
        handle_heartbeat(m);
      else
        handle_snapshot(m);
      return;
    default:
      return;  // stale responses
  }
}

inline void Core::step_candidate(const Message& m) {
  switch (m.type) {
    case MessageType::PreVoteResponse:
      if (role_ == Role::PreCandidate && (m.reject || m.term == term_ + opts_.term_step))
        handle_vote_response(m);
      return;
    case MessageType::VoteResponse:
      if (role_ == Role::Candidate) handle_vote_response(m);
      return;
    case MessageType::Append:
    case MessageType::Heartbeat:
    case MessageType::Snapshot:
      // Someone won this term.
      become_follower(term_, m.from);
      step_follower(m);
      return;
    default:
      return;
  }
}

inline void Core::handle_vote_request(const Message& m) {
  bool pre = m.type == MessageType::PreVote;
  bool can_vote = vote_ == m.from || (vote_.empty() && leader_.empty()) || (pre && m.term > term_);
  Message r = make(pre ? MessageType::PreVoteResponse : MessageType::VoteResponse, m.from);
  if (can_vote && log_up_to_date(m.index, m.log_term)) {
    r.term = m.term;
    if (!pre) {
      vote_ = m.from;
      election_elapsed_ = 0;
    }
  } else {
    r.reject = true;
  }
  // A grant is a promise: it leaves only once the vote is durable.
#ifdef RAFT_MUTANT_VOTE_BEFORE_DURABLE
  if (pre || !r.reject)  // mutant: a granted vote leaves before it is on disk
#else
  if (pre)
#endif
    send(std::move(r));
  else
    send_after_persist(std::move(r));
}

inline void Core::handle_vote_response(const Message& m) {
  if (!m.from.empty()) {
    if (!config().is_voter(m.from)) return;
    votes_[m.from] = !m.reject;
  }
  std::size_t granted = 0, rejected = 0;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id && !is_voter()) continue;  // not under this identity
    auto it = votes_.find(voter);
    if (it == votes_.end()) continue;
    (it->second ? granted : rejected) += 1;
  }
  if (granted >= quorum()) {
    if (role_ == Role::PreCandidate)
      become_candidate(false);
    else if (role_ == Role::Candidate)
      become_leader();
  } else if (config().voter_count() - rejected < quorum()) {
    become_follower(term_, "");
  }
}

// ---- the log -------------------------------------------------------------------------------

inline bool Core::log_up_to_date(std::uint64_t index, std::uint64_t term) const {
#ifdef RAFT_MUTANT_NO_UP_TO_DATE_CHECK
  (void)index;
  (void)term;
  return true;
#else
  // §5.4.1: grant only to a candidate whose log holds everything this node's does.
  return term > last_term() || (term == last_term() && index >= last_index());
#endif
}

inline bool Core::matches(std::uint64_t index, std::uint64_t term) const {
  if (index < log_start_index_ || index > last_index()) return false;
  return term_at(index) == term;
}

inline std::uint64_t Core::find_conflict_by_term(std::uint64_t index, std::uint64_t term) const {
  // The last index <= index whose term is <= term: the leader can skip a whole term of
  // conflicting entries per round trip.
  if (index > last_index()) index = last_index();
  while (index > log_start_index_ && term_at(index) > term) --index;
  return index;
}

inline void Core::push_entry(LogEntry e) {
  if (e.timestamp_ms > max_timestamp_) max_timestamp_ = e.timestamp_ms;
  if (e.type == EntryType::Config) {
    Configuration c;
    if (!Configuration::decode(e.payload, c))
      throw std::runtime_error("raft: undecodable configuration entry at index " +
                               std::to_string(e.index));
    log_configs_.emplace_back(e.index, std::move(c));
  }
  bool config_entry = e.type == EntryType::Config;
  entries_.push_back(std::move(e));
  if (config_entry) on_config_changed();
}

inline void Core::append_local(LogEntry e) {
  e.index = last_index() + 1;
  e.term = term_;
  // Leader stamps never go backwards, whatever the clocks do.
  e.timestamp_ms = std::max(e.timestamp_ms, max_timestamp_);
  batch_.entries.push_back(e);
  push_entry(std::move(e));
}

inline void Core::truncate_from(std::uint64_t index) {
  if (index <= commit_)
    throw std::logic_error("raft: refusing to cut committed entry " + std::to_string(index));
  bool config_cut = false;
  while (!log_configs_.empty() && log_configs_.back().first >= index) {
    log_configs_.pop_back();
    config_cut = true;
  }
  entries_.resize(static_cast<std::size_t>(index - log_start_index_ - 1));
  while (!batch_.entries.empty() && batch_.entries.back().index >= index) batch_.entries.pop_back();
  if (durable_index_ >= index) durable_index_ = index - 1;
  for (auto& u : unpersisted_)
    if (u.last_index >= index) u.last_index = index - 1;
  if (config_cut) on_config_changed();  // revert to the configuration before the cut
}

inline void Core::append_from_leader(const std::vector<LogEntry>& entries) {
  for (const auto& e : entries) {
    if (e.index <= last_index()) {
      if (e.index <= log_start_index_ || term_at(e.index) == e.term) continue;  // already held
      truncate_from(e.index);
    }
    if (e.index != last_index() + 1) return;  // a gap: cannot happen after the match check
    batch_.entries.push_back(e);
    push_entry(e);
  }
}

inline void Core::commit_to(std::uint64_t index) {
  if (index > commit_) commit_ = index;
}

inline void Core::handle_append(const Message& m) {
  Message r = make(MessageType::AppendResponse, m.from);
  if (m.index < commit_) {
    // Everything up to commit_ is known to match: say so, and the leader moves on.
    r.index = commit_;
    send_after_persist(std::move(r));
    return;
  }
  if (!matches(m.index, m.log_term)) {
    r.reject = true;
    r.index = m.index;
    r.hint_index = find_conflict_by_term(std::min(m.index, last_index()), m.log_term);
    r.hint_term = term_at(r.hint_index);
    send_after_persist(std::move(r));
    return;
  }
  append_from_leader(m.entries);
  std::uint64_t last_new = m.index + m.entries.size();
  // Figure 2: up to the last NEW entry, not the log's end - a stale suffix beyond the
  // entries of this message (an older leader's) may still differ from the leader's log.
#ifdef RAFT_MUTANT_FOLLOWER_COMMIT_LAST_INDEX
  commit_to(std::min(m.commit, last_index()));
#else
  commit_to(std::min(m.commit, last_new));
#endif
  r.index = last_new;
#ifdef RAFT_MUTANT_ACK_BEFORE_DURABLE
  send(std::move(r));
#else
  // The acknowledgement promises the entries are on disk: it waits for the batch.
  send_after_persist(std::move(r));
#endif
}

inline void Core::handle_heartbeat(const Message& m) {
  // The leader sends at most our match index as commit, so this never commits an entry
  // that differs from the leader's.
  commit_to(std::min(m.commit, last_index()));
  Message r = make(MessageType::HeartbeatResponse, m.from);
  r.context = m.context;
  // It promises nothing durable, so it goes at once (ready() still holds it while our term is
  // not on disk): a follower whose disk is slower than the election timeout must not make a
  // healthy leader fail check-quorum or its read rounds.
#ifdef RAFT_MUTANT_HEARTBEAT_WAITS_FOR_DISK
  send_after_persist(std::move(r));
#else
  send(std::move(r));
#endif
}

inline void Core::handle_snapshot(const Message& m) {
  Message r = make(MessageType::SnapshotResponse, m.from);
  r.index = m.index;
  if (m.index <= commit_) {
    // Already have everything the snapshot covers.
    r.done = true;
    send_after_persist(std::move(r));
    return;
  }
#ifndef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  if (matches(m.index, m.log_term)) {
    // Raft §7: the log holds the snapshot's last entry, so it holds everything the snapshot
    // covers (log matching). Install nothing and keep the entries after it: some may be
    // acknowledged already, and rewriting the log would put them at risk in a crash.
    commit_to(m.index);
    r.done = true;
    send_after_persist(std::move(r));
    return;
  }
#endif
  if (recv_loading_ && recv_loading_->meta.index == m.index && recv_loading_->meta.term == m.log_term)
    return;  // all of it arrived and is being read back: the answer comes once it is checked
  if (m.offset == 0) {
    recv_snapshot_index_ = m.index;
    recv_snapshot_term_ = m.log_term;
    recv_snapshot_size_ = 0;
    recv_snapshot_crc_ = 0;
  }
  if (recv_snapshot_index_ != m.index || recv_snapshot_term_ != m.log_term || m.offset != recv_snapshot_size_) {
    r.reject = true;  // out of order: ask for the bytes from where we are
    r.offset = (recv_snapshot_index_ == m.index && recv_snapshot_term_ == m.log_term) ? recv_snapshot_size_ : 0;
    send(std::move(r));
    return;
  }
  // Refused: what arrived so far is forgotten (the storage's file is started anew by the next
  // chunk at offset 0), the log stays as it was, and the sender is asked to start again from
  // the beginning (a leader whose transfer was damaged on the way retries).
  if (m.data.size() > opts_.max_snapshot_bytes || recv_snapshot_size_ > opts_.max_snapshot_bytes - m.data.size()) {
    refuse("refused a snapshot at index " + std::to_string(m.index) + " of term " + std::to_string(m.log_term) +
               " from " + m.from + ": it is larger than max_snapshot_bytes (" +
               std::to_string(opts_.max_snapshot_bytes) + "); the log is kept",
           true);
    recv_snapshot_index_ = recv_snapshot_term_ = recv_snapshot_size_ = 0;
    recv_snapshot_crc_ = 0;
    r.reject = true;
    r.offset = 0;
    send(std::move(r));
    return;
  }
  // The chunk goes to the storage's incoming file with the next batch, and is acknowledged at
  // once, before it is durable: the offset reached is not durable state. A crash loses the
  // partial file (open() deletes it) and this count alike, and the transfer starts again from
  // offset 0. Only the install must not run ahead of the disk, and it does not: the storage
  // syncs the file while reading it back, before the core hears it may install it, and the
  // install renames it into place durably before the log is replaced.
  recv_snapshot_crc_ = detail::crc32c(m.data.data(), m.data.size(), recv_snapshot_crc_);
  batch_.snapshot_chunks.push_back(SnapshotChunk{m.index, m.log_term, m.offset, m.data});
  recv_snapshot_size_ += m.data.size();
  r.offset = recv_snapshot_size_;
  if (!m.done) {
    send(std::move(r));
    return;
  }
  // All of it arrived. Nothing is replaced yet: the storage reads the file back, checks its
  // length and CRC against what arrived, and the runtime parses it whole; then
  // received_snapshot_loaded installs it or refuses it.
  ReceivedSnapshot received;
  received.meta.index = m.index;
  received.meta.term = m.log_term;
  received.meta.config = m.config;
  received.meta.timestamp_ms = m.timestamp_ms;
  received.size = recv_snapshot_size_;
  received.crc32c = recv_snapshot_crc_;
  recv_loading_ = SnapshotBeingLoaded{m.from, received.meta};
  received_out_ = std::move(received);
  recv_snapshot_index_ = recv_snapshot_term_ = recv_snapshot_size_ = 0;
  recv_snapshot_crc_ = 0;
}

inline void Core::received_snapshot_loaded(std::shared_ptr<const Snapshot> snap, const std::string& problem) {
  if (!recv_loading_ || !snap || snap->meta.index != recv_loading_->meta.index ||
      snap->meta.term != recv_loading_->meta.term)
    return;
  const NodeId from = recv_loading_->from;
  recv_loading_.reset();
  const SnapshotMeta& meta = snap->meta;
  Message r = make(MessageType::SnapshotResponse, from);
  r.index = meta.index;
  // Checked whole before anything is replaced: installing deletes the log.
  std::string why = problem;
#ifndef RAFT_MUTANT_SNAPSHOT_UNCHECKED
  if (why.empty() && opts_.check_snapshot) why = opts_.check_snapshot(*snap);
#endif
  if (!why.empty()) {
    refuse("refused a snapshot at index " + std::to_string(meta.index) + " of term " + std::to_string(meta.term) +
               " from " + from + ": " + why + "; the log is kept",
           true);
    r.reject = true;
    r.offset = 0;
    send(std::move(r));
    return;
  }
  r.done = true;
  // The log may have caught up while the file was read back (the same rules as on arrival).
  if (meta.index <= commit_) {
    send_after_persist(std::move(r));
    return;
  }
#ifndef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  if (matches(meta.index, meta.term)) {
    commit_to(meta.index);
    send_after_persist(std::move(r));
    return;
  }
#endif
  install_snapshot(std::move(snap));
  send_after_persist(std::move(r));  // installed means durable
}

inline void Core::install_snapshot(std::shared_ptr<const Snapshot> snap) {
  // handle_snapshot installs only a snapshot whose last entry this log does not hold: every
  // entry here is then covered by the snapshot or on a branch that conflicts with it, and the
  // whole log goes (PersistBatch::snapshot replaces it on disk too).
  const SnapshotMeta& meta = snap->meta;
#ifdef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  // mutant: install a snapshot the log matches, and re-append the entries after it
  std::deque<LogEntry> kept;
  if (matches(meta.index, meta.term))
    for (std::uint64_t i = meta.index + 1; i <= last_index(); ++i) kept.push_back(entry(i));
#endif
  entries_.clear();
  log_configs_.clear();
  log_start_index_ = meta.index;
  log_start_term_ = meta.term;
  base_config_ = meta.config;
  base_config_index_ = meta.index;
  // Chunks of a later transfer that wait in the batch still go to the incoming file.
  std::vector<SnapshotChunk> chunks = std::move(batch_.snapshot_chunks);
  batch_ = PersistBatch{};
  batch_.snapshot = snap;
  batch_.snapshot_chunks = std::move(chunks);
  if (durable_index_ > meta.index) durable_index_ = meta.index;
  for (auto& u : unpersisted_)
    if (u.last_index > meta.index) u.last_index = meta.index;
#ifdef RAFT_MUTANT_SNAPSHOT_REWRITES_MATCHING_LOG
  for (auto& e : kept) {
    batch_.entries.push_back(e);
    push_entry(std::move(e));
  }
#endif
  snapshot_ = snap;
  commit_to(meta.index);
  applied_ = meta.index;
#ifndef RAFT_MUTANT_SNAPSHOT_FORGETS_TIME
  max_timestamp_ = std::max(max_timestamp_, meta.timestamp_ms);
#endif
  restore_ = snap;
  snapshot_requested_ = false;
  on_config_changed();
}

inline std::uint64_t Core::compact(std::shared_ptr<const Snapshot> snapshot) {
  if (!snapshot) return log_start_index_;
  snapshot_requested_ = false;
  if (snapshot_ && snapshot->meta.index <= snapshot_->meta.index) return log_start_index_;
  if (snapshot->meta.index > applied_ || snapshot->meta.index > last_index() ||
      term_at(snapshot->meta.index) != snapshot->meta.term)
    throw std::logic_error("raft: snapshot at index " + std::to_string(snapshot->meta.index) +
                           " does not describe this node's applied log");
  snapshot_ = snapshot;
  std::uint64_t to = snapshot->meta.index > opts_.snapshot_trailing
                         ? snapshot->meta.index - opts_.snapshot_trailing
                         : 0;
  if (to <= log_start_index_) return log_start_index_;
  base_config_ = config_at(to);
  while (!log_configs_.empty() && log_configs_.front().first <= to) {
    base_config_index_ = log_configs_.front().first;
    log_configs_.erase(log_configs_.begin());
  }
  log_start_term_ = term_at(to);
  entries_.erase(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(to - log_start_index_));
  log_start_index_ = to;
  return to;
}

inline void Core::on_config_changed() {
  if (role_ == Role::Leader) {
    const Configuration& c = config();
    for (const auto& m : c.members) {
      if (m.id == opts_.id) continue;
      auto it = progress_.find(m.id);
      // A member re-added with a new server id (its disk was wiped) starts from nothing.
      if (it != progress_.end() &&
          (m.server_id.empty() || it->second.server_id.empty() || it->second.server_id == m.server_id))
        continue;
      Progress pr;
      pr.next = last_index() + 1;
      pr.recent_active = true;
      pr.last_heard = tick_count_;
      pr.server_id = m.server_id;
      progress_[m.id] = pr;
    }
    for (auto it = progress_.begin(); it != progress_.end();) {
      if (!c.contains(it->first))
        it = progress_.erase(it);
      else
        ++it;
    }
    if (!transfer_target_.empty() && !c.is_voter(transfer_target_)) transfer_target_.clear();
  } else if ((role_ == Role::Candidate || role_ == Role::PreCandidate) && !can_campaign()) {
    become_follower(term_, "");
  }
}

// ---- leader --------------------------------------------------------------------------------

inline ProposeResult Core::propose(std::string payload, std::int64_t now_ms) {
  ProposeResult res;
  if (role_ != Role::Leader) {
    res.error = ProposeResult::Error::NotLeader;
    res.leader = leader_;
    return res;
  }
  if (!transfer_target_.empty()) {
    res.error = ProposeResult::Error::Transferring;
    return res;
  }
  if (now_ms > now_ms_) now_ms_ = now_ms;
  LogEntry e;
  e.type = EntryType::Command;
  e.timestamp_ms = now_ms_;
  e.payload = std::move(payload);
  append_local(std::move(e));
  res.id = EntryId{last_index(), term_};
  pending_proposals_.push_back(
      PendingProposal{res.id, tick_count_ + static_cast<std::uint64_t>(opts_.proposal_timeout_ticks)});
  return res;
}

inline ProposeResult Core::propose_config(const Configuration& next, std::int64_t now_ms) {
  ProposeResult res;
  if (role_ != Role::Leader) {
    res.error = ProposeResult::Error::NotLeader;
    res.leader = leader_;
    return res;
  }
  if (!transfer_target_.empty()) {
    res.error = ProposeResult::Error::Transferring;
    return res;
  }
  // §4.1 / the 2015 fix: a leader commits an entry of its own term before it changes the
  // configuration, and changes it one server at a time.
  if (!leader_ready_) {
    res.error = ProposeResult::Error::NotReady;
    return res;
  }
  if (config_index() > commit_) {
    res.error = ProposeResult::Error::ConfigPending;
    return res;
  }
  const Configuration& cur = config();
  std::size_t voter_changes = 0;
  for (const auto& m : next.members) {
    if (m.id.empty()) {
      res.error = ProposeResult::Error::InvalidConfig;
      return res;
    }
    if (m.voter != cur.is_voter(m.id)) ++voter_changes;
  }
  for (const auto& m : cur.members)
    if (m.voter && !next.contains(m.id)) ++voter_changes;
  for (std::size_t i = 1; i < next.members.size(); ++i)
    if (!(next.members[i - 1].id < next.members[i].id)) {
      res.error = ProposeResult::Error::InvalidConfig;
      return res;
    }
  if (voter_changes > 1 || next.voter_count() == 0) {
    res.error = ProposeResult::Error::InvalidConfig;
    return res;
  }
  if (now_ms > now_ms_) now_ms_ = now_ms;
  LogEntry e;
  e.type = EntryType::Config;
  e.timestamp_ms = now_ms_;
  e.payload = next.encode();
  append_local(std::move(e));
  res.id = EntryId{last_index(), term_};
  pending_proposals_.push_back(
      PendingProposal{res.id, tick_count_ + static_cast<std::uint64_t>(opts_.proposal_timeout_ticks)});
  maybe_commit();
  return res;
}

inline ProposeResult Core::add_learner(Member member, std::int64_t now_ms) {
  Configuration next = config();
  if (const Member* old = next.find(member.id)) {
    if (old->voter && old->server_id == member.server_id) {
      // Already a voter with this identity: nothing to do, but not an error either.
      ProposeResult res;
      res.error = ProposeResult::Error::InvalidConfig;
      return res;
    }
  }
  member.voter = false;
  next.upsert(std::move(member));
  return propose_config(next, now_ms);
}

inline ProposeResult Core::promote(const NodeId& id, std::int64_t now_ms) {
  Configuration next = config();
  const Member* m = next.find(id);
  if (m == nullptr || m->voter) {
    ProposeResult res;
    res.error = ProposeResult::Error::InvalidConfig;
    return res;
  }
  Member copy = *m;
  copy.voter = true;
  next.upsert(std::move(copy));
  return propose_config(next, now_ms);
}

inline ProposeResult Core::remove(const NodeId& id, std::int64_t now_ms) {
  Configuration next = config();
  if (!next.remove(id)) {
    ProposeResult res;
    res.error = ProposeResult::Error::InvalidConfig;
    return res;
  }
  return propose_config(next, now_ms);
}

inline bool Core::transfer_leadership(const NodeId& to) {
  if (role_ != Role::Leader || to == opts_.id || !config().is_voter(to)) return false;
  auto it = progress_.find(to);
  if (it == progress_.end()) return false;
  transfer_target_ = to;
  transfer_elapsed_ = 0;
  timeout_now_sent_ = false;
  if (it->second.match == last_index()) {
    send(make(MessageType::TimeoutNow, to));
    timeout_now_sent_ = true;
  }
  return true;
}

inline NodeId Core::best_transfer_target() const {
  if (role_ != Role::Leader) return "";
  const auto election = static_cast<std::uint64_t>(opts_.election_ticks);
  NodeId best;
  std::uint64_t best_match = 0;
  for (const auto& [id, pr] : progress_) {
    // Heard from lately by its last message, not by recent_active: that flag is cleared at
    // every check-quorum round and is false for everyone until their next answers arrive.
    if (!config().is_voter(id) || tick_count_ >= pr.last_heard + election) continue;
    if (best.empty() || pr.match >= best_match) {
      best = id;
      best_match = pr.match;
    }
  }
  return best;
}

inline void Core::maybe_commit() {
  if (role_ != Role::Leader) return;
  std::vector<std::uint64_t> matched;
  for (const auto& voter : config().voters()) {
    if (voter == opts_.id) {
      // The leader counts itself only once durable, and only as the identity it holds.
      matched.push_back(is_voter() ? durable_index_ : 0);
      continue;
    }
    auto it = progress_.find(voter);
    matched.push_back(it == progress_.end() ? 0 : it->second.match);
  }
  if (matched.empty()) return;
  std::sort(matched.begin(), matched.end(), std::greater<std::uint64_t>());
  std::uint64_t candidate = matched[quorum() - 1];
  if (candidate <= commit_) return;
#ifndef RAFT_MUTANT_COMMIT_OLD_TERM
  // §5.4.2: only an entry of the leader's own term is committed by counting replicas.
  if (term_at(candidate) != term_) return;
#endif
  commit_ = candidate;
  if (!leader_ready_ && commit_ >= leader_first_index_) {
    leader_ready_ = true;
    leader_ready_unreported_ = true;  // reported once everything up to it is handed out
    // Reads that arrived before the term's first entry committed use this commit index.
    auto waiting = std::move(waiting_ready_reads_);
    waiting_ready_reads_.clear();
    for (auto& r : waiting) leader_read(r.request_id, r.from);
  }
  // A leader removed from (or demoted in) the configuration leads until that change
  // commits, then steps down (dissertation §4.2.2).
  if (config_index() <= commit_ && !is_voter()) become_follower(term_, "");
}

inline bool Core::send_append(const NodeId& to, Progress& pr) {
  if (pr.state == Progress::State::Snapshot) return false;
  if (pr.state == Progress::State::Probe && pr.probe_sent) return false;
  if (pr.state == Progress::State::Replicate &&
      (pr.inflight.size() >= opts_.max_inflight || pr.next > last_index()))
    return false;
  std::uint64_t prev = pr.next - 1;
  if (prev < log_start_index_) {
    // The entries this member needs are compacted away: send the snapshot.
    if (!snapshot_) return false;
    pr.become_snapshot(snapshot_);
    send_snapshot_chunks(to, pr);
    return false;
  }
  Message m = make(MessageType::Append, to);
  m.index = prev;
  m.log_term = term_at(prev);
  m.commit = commit_;
  std::size_t bytes = 0;
  for (std::uint64_t i = pr.next; i <= last_index(); ++i) {
    const LogEntry& e = entry(i);
    if (!m.entries.empty() && bytes + e.payload.size() > opts_.max_message_bytes) break;
    bytes += e.payload.size() + 32;
    m.entries.push_back(e);
  }
  if (!m.entries.empty()) {
    std::uint64_t last = m.entries.back().index;
    if (pr.state == Progress::State::Replicate) {
      pr.next = last + 1;
      pr.inflight.push_back(last);
    }
  }
  if (pr.state == Progress::State::Probe) {
    pr.probe_sent = true;
    pr.probe_sent_tick = tick_count_;
  }
  send(std::move(m));
  return true;
}

inline void Core::send_snapshot_chunks(const NodeId& to, Progress& pr) {
  const Snapshot& snap = *pr.snapshot;
  const std::uint64_t size = snap.data.size();
  const std::uint64_t window = opts_.snapshot_chunk_bytes * opts_.snapshot_chunks_inflight;
  while (!pr.snapshot_done_sent && pr.snapshot_sent - pr.snapshot_acked < window) {
    std::uint64_t len = std::min<std::uint64_t>(opts_.snapshot_chunk_bytes, size - pr.snapshot_sent);
    Message m = make(MessageType::Snapshot, to);
    m.index = snap.meta.index;
    m.log_term = snap.meta.term;
    m.config = snap.meta.config;
    m.timestamp_ms = snap.meta.timestamp_ms;
    m.offset = pr.snapshot_sent;
    m.data = snap.data.substr(static_cast<std::size_t>(pr.snapshot_sent), static_cast<std::size_t>(len));
    pr.snapshot_sent += len;
    m.done = pr.snapshot_sent == size;
    if (m.done) pr.snapshot_done_sent = true;
    send(std::move(m));
  }
}

inline void Core::flush_leader_sends() {
  for (auto& [id, pr] : progress_) {
    bool sent = false;
    while (send_append(id, pr)) {
      sent = true;
      if (pr.state != Progress::State::Replicate) break;
    }
    if (!sent && commit_ > commit_sent_ && pr.state == Progress::State::Replicate) {
      // Tell followers the new commit index now rather than at the next heartbeat, so they
      // apply (and serve reads) sooner.
      Message m = make(MessageType::Heartbeat, id);
      m.commit = std::min(pr.match, commit_);
      m.context = read_round_;
      send(std::move(m));
    }
  }
  commit_sent_ = commit_;
}

inline void Core::broadcast_heartbeat() {
  for (auto& [id, pr] : progress_) {
    Message m = make(MessageType::Heartbeat, id);
    m.commit = std::min(pr.match, commit_);
    m.context = read_round_;
    send(std::move(m));
  }
}

inline void Core::step_leader(const Message& m) {
  auto it = progress_.find(m.from);
  if (it == progress_.end()) return;  // not a member
  Progress& pr = it->second;
  pr.recent_active = true;
  pr.last_heard = tick_count_;
  pr.server_id = m.server_id;
  switch (m.type) {
    case MessageType::AppendResponse:
      handle_append_response(pr, m);
      return;
    case MessageType::HeartbeatResponse:
      if (read_round_in_flight_ && m.context >= read_round_ && config().is_voter(m.from)) {
        read_round_acks_.insert(m.from);
        if (read_round_acks_.size() >= quorum()) complete_read_round();
      }
      // A probe may have been lost: the answer to a heartbeat says the link works, so send it
      // again - but not on every heartbeat: a follower whose disk is slow answers heartbeats
      // at once and the probe late, and each copy would carry the same entries again.
#ifdef RAFT_MUTANT_PROBE_ON_EVERY_HEARTBEAT
      if (pr.state == Progress::State::Probe) pr.probe_sent = false;
#else
      if (pr.state == Progress::State::Probe &&
          tick_count_ >= pr.probe_sent_tick + static_cast<std::uint64_t>(std::max(1, opts_.election_ticks / 2)))
        pr.probe_sent = false;
#endif
      return;
    case MessageType::SnapshotResponse:
      handle_snapshot_response(pr, m);
      return;
    default:
      return;
  }
}

inline void Core::handle_append_response(Progress& pr, const Message& m) {
  if (m.reject) {
    if (pr.state == Progress::State::Snapshot) return;
    if (m.index <= pr.match) return;  // stale
    if (pr.state == Progress::State::Probe && m.index != pr.next - 1) return;  // stale
    std::uint64_t next_probe = m.hint_index;
    if (m.hint_term > 0) next_probe = find_conflict_by_term(m.hint_index, m.hint_term);
    pr.become_probe(std::max(std::min(m.index, next_probe + 1), pr.match + 1));
    return;  // flush_leader_sends sends the next probe
  }
  if (m.index > pr.match) {
    pr.match = m.index;
    maybe_commit();
    // Committing its own removal makes a leader step down, which drops every Progress.
    if (role_ != Role::Leader) return;
  }
  if (pr.next <= m.index) pr.next = m.index + 1;
  while (!pr.inflight.empty() && pr.inflight.front() <= m.index) {
    pr.inflight.pop_front();
    pr.stalled_ticks = 0;
  }
  if (pr.state == Progress::State::Probe) pr.become_replicate();
  if (!transfer_target_.empty() && m.from == transfer_target_ && !timeout_now_sent_ &&
      pr.match == last_index()) {
    send(make(MessageType::TimeoutNow, m.from));
    timeout_now_sent_ = true;
  }
}

inline void Core::handle_snapshot_response(Progress& pr, const Message& m) {
  if (m.done && !m.reject) {
    if (m.index > pr.match) pr.match = m.index;
    if (pr.state == Progress::State::Snapshot || pr.next <= pr.match) pr.become_probe(pr.match + 1);
    maybe_commit();
    return;
  }
  if (pr.state != Progress::State::Snapshot || m.index != pr.snapshot->meta.index) return;
  if (m.reject) {
    const std::uint64_t from = std::min<std::uint64_t>(m.offset, pr.snapshot->data.size());
#ifndef RAFT_MUTANT_SNAPSHOT_REJECT_STORM
    if (from == pr.snapshot_resent_from) return;  // a chunk sent before that resend, rejected
#endif
    pr.resend_snapshot_from(from);
  } else if (m.offset > pr.snapshot_acked) {
    pr.snapshot_idle_ticks = 0;
    pr.snapshot_acked = m.offset;
  }
  send_snapshot_chunks(m.from, pr);
}

inline void Core::maybe_reconfigure() {
  if (!leader_ready_ || config_index() > commit_ || !transfer_target_.empty()) return;
  const Configuration& c = config();
  // Bind identities a static peer map did not name, so a wiped member is recognised later.
  for (const auto& m : c.members) {
    if (!m.server_id.empty()) continue;
    std::string sid;
    if (m.id == opts_.id) {
      sid = opts_.server_id;
    } else {
      auto it = progress_.find(m.id);
      if (it != progress_.end()) sid = it->second.server_id;
    }
    if (sid.empty()) continue;
    Configuration next = c;
    Member bound = m;
    bound.server_id = sid;
    next.upsert(std::move(bound));
    propose_config(next, now_ms_);
    return;
  }
  // Re-add a member whose disk was wiped (it answers under a new server id) as a learner with
  // that identity: one voter change, like any other. Only a stranger heard from lately, and
  // only once the configured identity has been silent for an election timeout: while it
  // answers, the stranger is an impostor or a second process under the same id, and one
  // message must not demote a healthy voter.
  const auto election = static_cast<std::uint64_t>(opts_.election_ticks);
  for (auto it = strangers_.begin(); it != strangers_.end();) {
    const Member* m = c.find(it->first);
    if (m == nullptr || m->server_id == it->second.first || tick_count_ > it->second.second + election) {
      it = strangers_.erase(it);
      continue;
    }
    auto pr = progress_.find(m->id);
    if (pr != progress_.end() && tick_count_ < pr->second.last_heard + election) {
      ++it;
      continue;
    }
    if (add_learner(Member{m->id, m->address, it->second.first, false}, now_ms_).ok()) {
      strangers_.erase(it);
      return;
    }
    ++it;
  }
  // Promote a caught-up learner while there is room for voters.
  if (c.voter_count() >= opts_.max_voters) return;
  for (const auto& m : c.members) {
    if (m.voter) continue;
    auto it = progress_.find(m.id);
    if (it == progress_.end() || !it->second.recent_active || it->second.match < commit_) continue;
    promote(m.id, now_ms_);
    return;
  }
}

// ---- reads ---------------------------------------------------------------------------------

inline void Core::read_index(std::uint64_t request_id) {
  if (role_ == Role::Leader) {
    leader_read(request_id, "");
    return;
  }
  if (role_ == Role::Follower && !leader_.empty()) {
#ifdef RAFT_MUTANT_FOLLOWER_READ_NO_READINDEX
    // mutant: the follower serves the read from what it has applied, asking the leader nothing
    reads_out_.push_back(ReadState{request_id, 0, true, now_ms_, term_});
    return;
#endif
    Message m = make(MessageType::ReadIndex, leader_);
    m.context = request_id;
    send(std::move(m));
    forwarded_reads_[request_id] = tick_count_ + static_cast<std::uint64_t>(opts_.read_timeout_ticks);
    return;
  }
  reads_out_.push_back(ReadState{request_id, 0, false});
}

inline void Core::leader_read(std::uint64_t request_id, const NodeId& from) {
  PendingRead r{request_id, from, commit_, 0,
                tick_count_ + static_cast<std::uint64_t>(opts_.read_timeout_ticks)};
  if (!leader_ready_) {
    // Until the term's first entry commits, commit_ may be behind what earlier leaders
    // committed; the read gets the commit index at readiness (which is later, so fine).
    waiting_ready_reads_.push_back(r);
    return;
  }
#ifdef RAFT_MUTANT_FORWARDED_READ_NO_CHECK
  if ((config().voter_count() == 1 && is_voter()) || !from.empty()) {  // mutant: no round for a follower's read
#else
  if (config().voter_count() == 1 && is_voter()) {
#endif
    resolve_read(r, true);  // nobody else could have been elected
    return;
  }
  // Leadership is confirmed by a heartbeat round that starts after the read arrived: the
  // round in flight (if any) started earlier, so the read waits for the next one.
  r.round = read_round_ + 1;
  reads_.push_back(r);
  if (!read_round_in_flight_) start_read_round();
}

inline void Core::start_read_round() {
  ++read_round_;
  read_round_in_flight_ = true;
  read_round_acks_.clear();
  if (is_voter()) read_round_acks_.insert(opts_.id);
  broadcast_heartbeat();
  if (read_round_acks_.size() >= quorum()) complete_read_round();
}

inline void Core::complete_read_round() {
  std::uint64_t done = read_round_;
  read_round_in_flight_ = false;
  read_round_acks_.clear();
  while (!reads_.empty() && reads_.front().round <= done) {
    resolve_read(reads_.front(), true);
    reads_.pop_front();
  }
  if (!reads_.empty()) start_read_round();
}

inline void Core::resolve_read(const PendingRead& r, bool ok) {
  // The read's time: this leader's clock now, never below a stamp it has seen, so that every
  // node judges expiry for it alike, and later reads in this term never judge earlier.
  const std::int64_t time = ok ? std::max(now_ms_, max_timestamp_) : 0;
  if (r.from.empty()) {
    reads_out_.push_back(ReadState{r.request_id, ok ? r.index : 0, ok, time, term_});
    return;
  }
  Message m = make(MessageType::ReadIndexResponse, r.from);
  m.context = r.request_id;
  m.index = ok ? r.index : 0;
  m.reject = !ok;
  m.timestamp_ms = time;
  send(std::move(m));
}

inline void Core::handle_read_index_response(const Message& m) {
  auto it = forwarded_reads_.find(m.context);
  if (it == forwarded_reads_.end()) return;  // timed out already
  forwarded_reads_.erase(it);
  reads_out_.push_back(ReadState{m.context, m.reject ? 0 : m.index, !m.reject, m.reject ? 0 : m.timestamp_ms, m.term});
}

// ---- output --------------------------------------------------------------------------------

inline void Core::persisted(std::uint64_t seq) {
  while (!unpersisted_.empty() && unpersisted_.front().seq <= seq) {
    durable_index_ = std::max(durable_index_, std::min(unpersisted_.front().last_index, last_index()));
    durable_term_ = std::max(durable_term_, unpersisted_.front().term);
    unpersisted_.pop_front();
  }
  maybe_commit();
}

inline bool Core::has_ready() const {
  if (!batch_.empty() || !msgs_.empty() || !msgs_after_.empty() || restore_ ||
      !reads_out_.empty() || !aborted_.empty() || !role_changes_.empty() || snapshot_wanted_out_ ||
      !refused_out_.empty() || received_out_)
    return true;
  if (leader_ready_unreported_ && role_ == Role::Leader && applied_ >= leader_first_index_) return true;
  if (HardState{term_, vote_} != persisted_hs_) return true;
  if (applied_ < std::min(commit_, durable_index_)) return true;
  if (role_ == Role::Leader) {
    if (commit_ > commit_sent_) return true;
    for (const auto& [id, pr] : progress_) {
      if (pr.state == Progress::State::Probe && !pr.probe_sent) return true;
      if (pr.state == Progress::State::Replicate && pr.next <= last_index() &&
          pr.inflight.size() < opts_.max_inflight)
        return true;
    }
  }
  return false;
}

inline Ready Core::ready() {
  if (role_ == Role::Leader) flush_leader_sends();
  Ready rd;
  HardState hs{term_, vote_};
  if (hs != persisted_hs_) {
#ifdef RAFT_MUTANT_TERM_NOT_PERSISTED
    if (hs.vote != persisted_hs_.vote)  // mutant: a term change without a vote stays in memory
#endif
      batch_.hard_state = hs;
    persisted_hs_ = hs;
  }
#ifndef RAFT_MUTANT_SEND_BEFORE_TERM_DURABLE
  if (term_ > durable_term_) {
    // Every message carries term_: none may leave before that term is on disk. (A voter alone
    // wins its election inside become_candidate; a node that adopted a higher term answers in
    // it.) They go with this batch, which holds the term or follows the one that does.
    for (auto& m : msgs_) msgs_after_.push_back(std::move(m));
    msgs_.clear();
  }
#endif
  if (!batch_.empty() || !msgs_after_.empty()) {
    batch_.seq = next_seq_++;
    unpersisted_.push_back(
        UnpersistedBatch{batch_.seq, last_index(), batch_.hard_state ? batch_.hard_state->term : 0});
    rd.persist = std::move(batch_);
    batch_ = PersistBatch{};
    rd.after_persist = std::move(msgs_after_);
    msgs_after_.clear();
  }
  rd.messages = std::move(msgs_);
  msgs_.clear();
  rd.restore = std::move(restore_);
  restore_.reset();
  // Apply what is committed and durable here, a bounded amount per batch.
  std::uint64_t upto = std::min(commit_, durable_index_);
  std::size_t bytes = 0;
  while (applied_ < upto && bytes < (8u << 20)) {
    const LogEntry& e = entry(applied_ + 1);
    bytes += e.payload.size() + 32;
    rd.committed.push_back(e);
    ++applied_;
  }
  rd.reads = std::move(reads_out_);
  reads_out_.clear();
  rd.aborted = std::move(aborted_);
  aborted_.clear();
  rd.role_changes = std::move(role_changes_);
  role_changes_.clear();
  rd.refused = std::move(refused_out_);
  refused_out_.clear();
  rd.received_snapshot = std::move(received_out_);  // its last chunk is in rd.persist
  received_out_.reset();
  // on_leader's promise: the term's first entry and everything before it are applied first.
  if (leader_ready_unreported_ && role_ == Role::Leader && applied_ >= leader_first_index_) {
    rd.leader_ready_term = term_;
    leader_ready_unreported_ = false;
  }
  if (!snapshot_requested_ && applied_ >= snapshot_index() + opts_.snapshot_threshold) {
    snapshot_requested_ = true;
    snapshot_wanted_out_ = true;
  }
  rd.snapshot_wanted = snapshot_wanted_out_;
  snapshot_wanted_out_ = false;
  return rd;
}

}  // namespace raft
