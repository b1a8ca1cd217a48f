// The core's rules, one scenario each: some drive a single raft::Core by hand (messages in,
// Ready out), others a small simulated cluster with a perfect network (tests/sim.hpp).
#include "sim.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <sstream>

namespace {

using namespace raft;

constexpr std::int64_t kT0 = 1'700'000'000'000;  // a wall clock reading, ms since the epoch

Configuration voters(std::initializer_list<const char*> ids) {
  Configuration c;
  for (const char* id : ids) c.upsert(Member{id, "", std::string("sid-") + id, true});
  return c;
}

CoreOptions options(const char* id) {
  CoreOptions o;
  o.id = id;
  o.server_id = std::string("sid-") + id;
  o.election_ticks = 10;
  return o;
}

LogEntry entry(std::uint64_t index, std::uint64_t term, std::string payload = "x") {
  LogEntry e;
  e.index = index;
  e.term = term;
  e.payload = std::move(payload);
  return e;
}

Message message(MessageType type, const char* from, const char* to, std::uint64_t term) {
  Message m;
  m.type = type;
  m.from = from;
  m.to = to;
  m.term = term;
  m.server_id = std::string("sid-") + from;
  return m;
}

// Everything a core produced, with persistence acknowledged at once.
struct Drained {
  std::vector<Message> sent;          // now and after persistence, in order
  std::vector<Message> after_persist;  // those that waited for the disk
  std::vector<LogEntry> committed;
  std::vector<ReadState> reads;
  std::vector<EntryId> aborted;
  std::vector<RoleChange> roles;
  std::vector<PersistBatch> batches;
  std::uint64_t leader_ready_term = 0;
  std::vector<std::string> refused;
};

// The storage's incoming snapshot file of each core driven by hand: its chunks, written in
// order (a chunk out of order leaves it unreadable, as Storage does).
struct IncomingFile {
  std::string data;
  bool intact = false;
};
std::map<const Core*, IncomingFile>& incoming_files() {
  static std::map<const Core*, IncomingFile> files;
  return files;
}

Drained drain(Core& c, bool persist = true) {
  Drained d;
  IncomingFile& incoming = incoming_files()[&c];
  while (c.has_ready()) {
    Ready r = c.ready();
    for (const auto& chunk : r.persist.snapshot_chunks) {
      if (chunk.offset == 0) incoming = IncomingFile{{}, true};
      if (chunk.offset != incoming.data.size()) incoming.intact = false;
      if (incoming.intact) incoming.data += chunk.data;
    }
    for (auto& m : r.messages) d.sent.push_back(m);
    for (auto& m : r.after_persist) {
      d.sent.push_back(m);
      d.after_persist.push_back(m);
    }
    for (auto& e : r.committed) d.committed.push_back(e);
    for (auto& x : r.reads) d.reads.push_back(x);
    for (auto& x : r.aborted) d.aborted.push_back(x);
    for (auto& x : r.role_changes) d.roles.push_back(x);
    for (auto& x : r.refused) d.refused.push_back(x);
    if (r.leader_ready_term) d.leader_ready_term = r.leader_ready_term;
    if (r.persist.seq) {
      d.batches.push_back(r.persist);
      if (!persist) break;
      c.persisted(r.persist.seq);
    }
    if (r.received_snapshot) {
      // Read back as Storage::load_received_snapshot does: its length and CRC-32C.
      auto snap = std::make_shared<Snapshot>();
      snap->meta = r.received_snapshot->meta;
      snap->data = incoming.data;
      const bool same = incoming.intact && incoming.data.size() == r.received_snapshot->size &&
                        raft::detail::crc32c(incoming.data.data(), incoming.data.size()) == r.received_snapshot->crc32c;
      c.received_snapshot_loaded(snap, same ? "" : "the incoming file is not what arrived");
    }
  }
  return d;
}

const Message* find(const std::vector<Message>& ms, MessageType t, const char* to = nullptr) {
  for (const auto& m : ms)
    if (m.type == t && (to == nullptr || m.to == to)) return &m;
  return nullptr;
}

// Makes `c` leader of a three-voter cluster by answering its election by hand.
void elect(Core& c, const char* a, const char* b) {
  c.campaign();
  Drained d = drain(c);
  const Message* pv = find(d.sent, MessageType::PreVote, a);
  REQUIRE(pv != nullptr);
  Message r = message(MessageType::PreVoteResponse, a, c.id().c_str(), pv->term);
  c.step(r);
  d = drain(c);
  const Message* v = find(d.sent, MessageType::Vote, b);
  REQUIRE(v != nullptr);
  c.step(message(MessageType::VoteResponse, b, c.id().c_str(), v->term));
  drain(c);
  REQUIRE(c.role() == Role::Leader);
}

sim::Options calm(int voters) {
  sim::Options o;
  o.voters = voters;
  o.min_delay = o.max_delay = 1;
  o.max_persist_delay = 1;
  return o;
}

NodeId wait_for_leader(sim::Cluster& c, int ticks = 100) {
  for (int i = 0; i < ticks; ++i) {
    c.run_ticks(1);
    NodeId l = c.leader();
    if (!l.empty() && c.core(l).leader_ready()) return l;
  }
  return "";
}

}  // namespace

// ---- elections ---------------------------------------------------------------------------

TEST_CASE("a founder with no peers leads at its first tick, in term 10", "[core]") {
  CoreState st;
  st.initial_config = voters({"1"});
  Core c(options("1"), st);
  CHECK(drain(c).batches.empty());  // no clock yet: nothing to stamp its first entry with
  c.tick(kT0);
  Drained d = drain(c);
  CHECK(c.role() == Role::Leader);
  CHECK(c.term() == 10);
  CHECK(c.leader_ready());
  CHECK(d.leader_ready_term == 10);
  // Its vote and its no-op were made durable before it counted itself.
  REQUIRE(!d.batches.empty());
  CHECK(d.batches.front().hard_state == HardState{10, "1"});
  REQUIRE(d.committed.size() == 1);
  CHECK(d.committed[0].timestamp_ms == kT0);
}

TEST_CASE("time never runs backwards: a restart from a snapshot stamps at least the snapshot's time", "[core]") {
  // A single voter restarts from a snapshot whose last entry was stamped at kT0 + 5000, and
  // its clock now reads earlier (it was wrong before, or it is wrong now).
  auto snap = std::make_shared<raft::Snapshot>();
  snap->meta.index = 7;
  snap->meta.term = 10;
  snap->meta.config = voters({"1"});
  snap->meta.timestamp_ms = kT0 + 5000;
  CoreState st;
  st.hard_state = HardState{10, "1"};
  st.snapshot = snap;
  Core c(options("1"), st);
  c.tick(kT0);
  Drained d = drain(c);
  REQUIRE(c.role() == Role::Leader);
  REQUIRE(d.committed.size() == 1);
  CHECK(d.committed[0].timestamp_ms == kT0 + 5000);  // the no-op
  REQUIRE(c.propose("*1\r\n$4\r\nping\r\n", kT0 + 1).ok());
  d = drain(c);
  REQUIRE(d.committed.size() == 1);
  CHECK(d.committed[0].timestamp_ms == kT0 + 5000);
  // A read judges expiry no earlier than that either.
  c.read_index(1);
  d = drain(c);
  REQUIRE(d.reads.size() == 1);
  CHECK(d.reads[0].ok);
  CHECK(d.reads[0].time_ms == kT0 + 5000);
  CHECK(d.reads[0].term == 20);
}

TEST_CASE("a lone voter sends nothing in a term before that term is on its disk", "[core]") {
  // Voter 1 with learner 2: it wins alone inside its campaign. Its appends to the learner
  // carry the new term, so they leave only with (or after) the batch that holds that term.
  CoreState st;
  Configuration cfg = voters({"1"});
  cfg.upsert(Member{"2", "", "sid-2", false});
  st.initial_config = cfg;
  st.hard_state = HardState{10, ""};
  Core c(options("1"), st);
  c.tick(kT0);
  REQUIRE(c.role() == Role::Leader);
  Drained d = drain(c, /*persist=*/false);
  REQUIRE(d.batches.size() == 1);
  REQUIRE(d.batches[0].hard_state);
  CHECK(d.batches[0].hard_state->term == 20);
  CHECK_FALSE(d.sent.empty());
  for (const Message& m : d.sent) {
    INFO(raft::to_string(m.type) << " to " << m.to);
    CHECK(std::find(d.after_persist.begin(), d.after_persist.end(), m) != d.after_persist.end());
  }
  // Once durable, nothing holds them back.
  c.persisted(d.batches[0].seq);
  c.tick(kT0 + 10);
  d = drain(c, /*persist=*/false);
  const Message* hb = find(d.sent, MessageType::Heartbeat, "2");
  REQUIRE(hb != nullptr);
  CHECK(find(d.after_persist, MessageType::Heartbeat, "2") == nullptr);
}

TEST_CASE("elections campaign for the current term plus ten, and pre-vote asks about that term", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{20, ""};
  Core c(options("1"), st);
  c.campaign();
  Drained d = drain(c);
  const Message* pv = find(d.sent, MessageType::PreVote);
  REQUIRE(pv != nullptr);
  CHECK(pv->term == 30);
  CHECK(c.term() == 20);  // pre-vote changes nothing
  c.step(message(MessageType::PreVoteResponse, "2", "1", 30));
  d = drain(c);
  CHECK(c.role() == Role::Candidate);
  CHECK(c.term() == 30);
  CHECK(c.vote() == "1");
  // The vote requests left only after the term and vote were durable.
  CHECK(find(d.after_persist, MessageType::Vote) != nullptr);
}

TEST_CASE("a joiner never campaigns before it is a voter of a configuration it holds", "[core]") {
  CoreState st;  // no configuration at all: a node started with -e
  Core c(options("4"), st);
  for (int i = 0; i < 1000; ++i) c.tick();
  Drained d = drain(c);
  CHECK(d.sent.empty());
  CHECK(c.term() == 0);
  CHECK(c.role_char() == 'n');
  c.campaign();  // even when asked to
  CHECK(drain(c).sent.empty());
}

TEST_CASE("a learner is never a candidate", "[core]") {
  CoreState st;
  Configuration cfg = voters({"1", "2", "3"});
  cfg.upsert(Member{"4", "", "sid-4", false});
  st.initial_config = cfg;
  Core c(options("4"), st);
  for (int i = 0; i < 500; ++i) c.tick();
  CHECK(drain(c).sent.empty());
  CHECK(c.role_char() == 'n');
}

TEST_CASE("a learner whose leader fell silent answers every campaign once an election timeout passed",
          "[core]") {
  // 2 is a learner here, but the leader may have appended 2's promotion and lost its
  // leadership before 2 received it: that leader needs 2's vote to be elected again
  // (simulation seed 12936). A learner never campaigns, so nothing ends its leader's lease
  // but time: restarting its election timer at each timeout renewed the lease for good.
  CoreState st;
  st.initial_config = voters({"1"});
  st.initial_config.upsert(Member{"2", "", "sid-2", false});
  Core c(options("2"), st);
  c.step(message(MessageType::Heartbeat, "1", "2", 10));
  drain(c);
  REQUIRE(c.leader() == "1");
  for (int t = 1; t <= 60; ++t) {
    c.tick(kT0);
    drain(c);
    if (t < 20) continue;  // an election timeout is at most 20 ticks
    Message pv = message(MessageType::PreVote, "1", "2", 20);
    pv.index = c.last_index();
    pv.log_term = c.last_term();
    c.step(pv);
    Drained d = drain(c);
    INFO("tick " << t);
    const Message* r = find(d.sent, MessageType::PreVoteResponse, "1");
    REQUIRE(r != nullptr);
    CHECK_FALSE(r->reject);
  }
  CHECK(drain(c).sent.empty());  // and it never campaigned itself
  CHECK(c.term() == 10);
}

TEST_CASE("figure 7: votes go only to candidates whose log is at least as up to date", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{20, ""};
  for (std::uint64_t i = 1; i <= 5; ++i) st.entries.push_back(entry(i, i <= 3 ? 10 : 20));
  auto ask = [&](std::uint64_t last_index, std::uint64_t last_term) {
    Core c(options("1"), st);
    Message v = message(MessageType::Vote, "2", "1", 30);
    v.index = last_index;
    v.log_term = last_term;
    c.step(v);
    Drained d = drain(c);
    const Message* r = find(d.sent, MessageType::VoteResponse);
    REQUIRE(r != nullptr);
    return !r->reject;
  };
  CHECK_FALSE(ask(4, 20));  // shorter log, same last term
  CHECK_FALSE(ask(9, 10));  // longer log, older last term
  CHECK(ask(5, 20));        // identical
  CHECK(ask(6, 20));        // longer
  CHECK(ask(1, 30));        // newer last term wins whatever the length
}

TEST_CASE("a voter grants one vote per term and makes it durable before answering", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  Message v2 = message(MessageType::Vote, "2", "1", 10);
  c.step(v2);
  Drained d = drain(c, /*persist=*/false);
  CHECK(find(d.sent, MessageType::VoteResponse) != nullptr);
  CHECK(find(d.after_persist, MessageType::VoteResponse) != nullptr);
  REQUIRE(d.batches.size() == 1);
  CHECK(d.batches[0].hard_state == HardState{10, "2"});
  c.persisted(d.batches[0].seq);
  c.step(message(MessageType::Vote, "3", "1", 10));
  d = drain(c);
  const Message* r = find(d.sent, MessageType::VoteResponse);
  REQUIRE(r != nullptr);
  CHECK(r->reject);
  CHECK(c.vote() == "2");
}

TEST_CASE("leader stickiness: a voter that hears from a leader ignores campaigns", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  Message hb = message(MessageType::Heartbeat, "2", "1", 10);
  c.step(hb);
  drain(c);
  REQUIRE(c.leader() == "2");
  Message v = message(MessageType::Vote, "3", "1", 20);
  c.step(v);
  Drained d = drain(c);
  CHECK(find(d.sent, MessageType::VoteResponse) == nullptr);
  CHECK(c.term() == 10);
  // ... unless the leader asked for that election (leadership transfer).
  v.transfer = true;
  c.step(v);
  d = drain(c);
  const Message* r = find(d.sent, MessageType::VoteResponse);
  REQUIRE(r != nullptr);
  CHECK_FALSE(r->reject);
  CHECK(c.term() == 20);
}

TEST_CASE("pre-vote: a node cut off from the cluster does not raise its term", "[core]") {
  sim::Cluster c(7, calm(3));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  std::uint64_t term = c.core(l).term();
  NodeId f = l == "1" ? "2" : "1";
  c.isolate(f);
  c.run_ticks(300);
  CHECK(c.core(f).term() == term);
  c.heal();
  c.run_ticks(50);
  CHECK(c.leader() == l);  // it rejoined without disturbing the leader
  CHECK(c.core(l).term() == term);
}

TEST_CASE("check-quorum: a leader cut off from the majority steps down", "[core]") {
  sim::Cluster c(11, calm(3));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  c.isolate(l);
  c.run_ticks(25);  // two election timeouts at most
  CHECK(c.core(l).role() != Role::Leader);
}

TEST_CASE("a node with a persisted configuration never elects itself alone", "[core]") {
  sim::Cluster c(13, calm(3));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  for (int i = 0; i < 5; ++i) c.propose(l);
  c.run_ticks(5);
  for (auto& [id, n] : c.nodes()) c.crash(id);
  c.restart("1");  // restarted without its peers, as pyraft's restarted node was
  c.run_ticks(500);
  CHECK(c.core("1").role() != Role::Leader);
}

// ---- replication and commitment ----------------------------------------------------------

TEST_CASE("figure 8: a leader commits entries of older terms only through one of its own", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3", "4", "5"});
  st.hard_state = HardState{30, ""};
  st.entries = {entry(1, 10), entry(2, 20)};  // (2, 20) is on a minority so far
  Core c(options("1"), st);
  c.campaign();
  Drained d = drain(c);
  for (const char* v : {"2", "3"}) c.step(message(MessageType::PreVoteResponse, v, "1", 40));
  d = drain(c);
  for (const char* v : {"2", "3"}) c.step(message(MessageType::VoteResponse, v, "1", 40));
  d = drain(c);
  REQUIRE(c.role() == Role::Leader);
  REQUIRE(c.term() == 40);
  REQUIRE(c.last_index() == 3);  // its no-op
  // Two followers now hold index 2 (term 20): with the leader that is a majority of five,
  // but an entry of an older term is not committed by counting replicas.
  for (const char* f : {"2", "3"}) {
    Message ok = message(MessageType::AppendResponse, f, "1", 40);
    ok.index = 2;
    c.step(ok);
  }
  drain(c);
  CHECK(c.commit_index() == 0);
  // Once the no-op of term 40 is on a majority, it and everything before it commit.
  for (const char* f : {"2", "3"}) {
    Message ok = message(MessageType::AppendResponse, f, "1", 40);
    ok.index = 3;
    c.step(ok);
  }
  d = drain(c);
  CHECK(c.commit_index() == 3);
  CHECK(d.committed.size() == 3);
  CHECK(c.leader_ready());
}

TEST_CASE("a follower commits only up to the last entry the append carried, not a stale suffix beyond it",
          "[core]") {
  // Follower 2 holds 1-5 of term 10 and a stale 6-8 of term 20 (a deposed leader's). The
  // leader of term 30 holds 1-5 and its own 6 (committed). A delayed append that carries only
  // entry 5 and commit 6 must not make the follower commit its stale entry 6.
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{30, ""};
  for (std::uint64_t i = 1; i <= 8; ++i) st.entries.push_back(entry(i, i <= 5 ? 10 : 20));
  Core c(options("2"), st);
  Message a = message(MessageType::Append, "1", "2", 30);
  a.index = 4;
  a.log_term = 10;
  a.entries = {entry(5, 10)};
  a.commit = 6;
  c.step(a);
  Drained d = drain(c);
  CHECK(c.commit_index() == 5);
  for (const auto& e : d.committed) CHECK(e.term == 10);
  const Message* r = find(d.sent, MessageType::AppendResponse);
  REQUIRE(r != nullptr);
  CHECK_FALSE(r->reject);
  CHECK(r->index == 5);
}

TEST_CASE("a read forwarded to a deposed leader is not answered without a heartbeat round", "[core]") {
  // Without check-quorum a leader cut off with one follower does not step down; the other
  // three elect a new leader and commit. The follower's read goes to its old leader, which
  // must confirm with a majority first - it cannot, so the read fails rather than return stale
  // state (the simulation throws on a stale read).
  sim::Options o = calm(5);
  o.core.check_quorum = false;
  sim::Cluster c(47, o);
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  NodeId f = l == "1" ? "2" : "1";
  c.propose(l);
  c.run_ticks(5);
  c.partition({l, f});
  NodeId next;
  for (int t = 0; t < 200 && (next.empty() || next == l); ++t) {
    c.run_ticks(1);
    next = c.leader();
    if (!next.empty() && next != l && !c.core(next).leader_ready()) next.clear();
  }
  REQUIRE(!next.empty());
  REQUIRE(next != l);
  CHECK(c.core(l).role() == Role::Leader);  // the deposed leader does not know it
  for (int k = 0; k < 3; ++k) c.propose(next);
  c.run_ticks(5);
  REQUIRE(c.max_commit() > c.core(f).commit_index());
  const std::uint64_t ok_before = c.reads_ok();
  for (int k = 0; k < 3; ++k) c.read(f);
  c.run_ticks(30);
  CHECK(c.reads_ok() == ok_before);
}

TEST_CASE("a snapshot whose last entry the log holds installs nothing and keeps the entries after it",
          "[core]") {
  // Raft §7. Follower 2 holds 1-8 of term 10, some of them acknowledged already; the leader
  // (which compacted to 5) sends its snapshot at (5, 10).
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{10, "1"};
  for (std::uint64_t i = 1; i <= 8; ++i) st.entries.push_back(entry(i, 10));
  Core c(options("2"), st);
  Message snap = message(MessageType::Snapshot, "1", "2", 10);
  snap.index = 5;
  snap.log_term = 10;
  snap.config = voters({"1", "2", "3"});
  snap.data = "the state at 5";
  snap.done = true;
  c.step(snap);
  Drained d = drain(c);
  for (const auto& b : d.batches) CHECK_FALSE(b.snapshot);  // nothing rewritten on disk
  CHECK(c.last_index() == 8);
  CHECK(c.snapshot_index() == 0);
  CHECK(c.commit_index() == 5);
  const Message* r = find(d.sent, MessageType::SnapshotResponse);
  REQUIRE(r != nullptr);
  CHECK(r->done);
  CHECK(r->index == 5);
  // A snapshot the log does not match (another term at 5) replaces the whole log.
  Message other = snap;
  other.term = 20;
  other.log_term = 20;
  other.index = 6;
  c.step(other);
  d = drain(c);
  // The chunk goes to the incoming file first; the install follows once it is read back.
  REQUIRE(d.batches.size() >= 2);
  CHECK(d.batches.front().snapshot_chunks.size() == 1);
  CHECK_FALSE(d.batches.front().snapshot);
  REQUIRE(d.batches[1].snapshot);
  CHECK(d.batches[1].entries.empty());
  CHECK(c.last_index() == 6);
  CHECK(c.snapshot_index() == 6);
}

TEST_CASE("stale rejections of snapshot chunks do not each send the window again", "[core]") {
  // Leader 1 compacted its log into a snapshot of 20 bytes; chunks of 2 bytes, 4 in flight.
  auto snap = std::make_shared<raft::Snapshot>();
  snap->meta.index = 5;
  snap->meta.term = 10;
  snap->meta.config = voters({"1", "2", "3"});
  snap->data = "0123456789abcdefghij";
  CoreState st;
  st.hard_state = HardState{10, ""};
  st.snapshot = snap;
  CoreOptions o = options("1");
  o.snapshot_chunk_bytes = 2;
  o.snapshot_chunks_inflight = 4;
  Core c(o, st);
  c.tick(kT0);
  c.campaign();
  drain(c);
  c.step(message(MessageType::PreVoteResponse, "2", "1", 20));
  drain(c);
  c.step(message(MessageType::VoteResponse, "2", "1", 20));
  drain(c);
  REQUIRE(c.role() == Role::Leader);
  // Follower 2 has nothing: its rejection sends the leader below its log, to the snapshot.
  Message no = message(MessageType::AppendResponse, "2", "1", 20);
  no.reject = true;
  no.index = 5;
  c.step(no);
  auto chunks_to_2 = [](const Drained& d) {
    std::size_t n = 0;
    for (const auto& m : d.sent) n += m.type == MessageType::Snapshot && m.to == "2" ? 1 : 0;
    return n;
  };
  CHECK(chunks_to_2(drain(c)) == 4);
  // The first chunk was lost: the other three each come back rejected, asking for offset 0.
  // The first answer sends the window again; the other two are answers to chunks sent before
  // that, and send nothing.
  for (int i = 0; i < 3; ++i) {
    Message r = message(MessageType::SnapshotResponse, "2", "1", 20);
    r.index = 5;
    r.reject = true;
    r.offset = 0;
    c.step(r);
  }
  CHECK(chunks_to_2(drain(c)) == 4);
  // Progress clears the way: a rejection at a new offset sends from there.
  Message ok = message(MessageType::SnapshotResponse, "2", "1", 20);
  ok.index = 5;
  ok.offset = 4;
  c.step(ok);
  drain(c);
  Message again = message(MessageType::SnapshotResponse, "2", "1", 20);
  again.index = 5;
  again.reject = true;
  again.offset = 4;
  c.step(again);
  Drained d = drain(c);
  REQUIRE(chunks_to_2(d) >= 1);
  const Message* first = find(d.sent, MessageType::Snapshot, "2");
  REQUIRE(first != nullptr);
  CHECK(first->offset == 4);
}

TEST_CASE("a follower whose disk is slow is not sent the same probe on every heartbeat answer", "[core]") {
  sim::Options o = calm(3);
  o.core.heartbeat_ticks = 1;
  sim::Cluster c(11, o);
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  NodeId f = l == "1" ? "2" : "1";
  for (int i = 0; i < 3; ++i) c.propose(l);
  c.run_ticks(5);
  c.set_disk_delay(f, 300);  // 30 ticks per group commit, 30 heartbeats
  c.crash(f);
  for (int i = 0; i < 3; ++i) c.propose(l);
  c.run_ticks(15);  // the leader's appends to f were lost: it probes f
  c.restart(f);
  std::ostringstream trace;
  auto* old = std::cerr.rdbuf(trace.rdbuf());
  c.trace = true;
  c.run_ticks(60);
  c.trace = false;
  std::cerr.rdbuf(old);
  std::istringstream in(trace.str());
  std::string line;
  int appends = 0;
  while (std::getline(in, line)) appends += line.find("] send Append " + l + "->" + f) != std::string::npos ? 1 : 0;
  // One probe per half election timeout at most (the first release sent one per heartbeat).
  CHECK(appends <= 60 / 5 + 2);
  CHECK(appends >= 1);
}

TEST_CASE("a follower that answers again after a stall is replicated to, not probed again at the next tick",
          "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  elect(c, "2", "3");
  auto answer = [&](const char* from, std::uint64_t index) {
    Message r = message(MessageType::AppendResponse, from, "1", c.term());
    r.index = index;
    c.step(r);
    drain(c);
  };
  auto tick = [&] {  // 3 answers every heartbeat: the leader keeps its quorum
    c.tick(kT0);
    drain(c);
    c.step(message(MessageType::HeartbeatResponse, "3", "1", c.term()));
    drain(c);
  };
  answer("2", c.last_index());  // the no-op
  REQUIRE(c.progress().at("2").state == Progress::State::Replicate);
  REQUIRE(c.propose("a", kT0).ok());
  drain(c);
  // The append to 2 goes unanswered for an election timeout: the leader probes 2 again.
  for (int i = 0; i < 10; ++i) tick();
  REQUIRE(c.progress().at("2").state == Progress::State::Probe);
  answer("2", c.last_index());
  REQUIRE(c.progress().at("2").state == Progress::State::Replicate);
  // The next append's answer may take more than a tick: the stall is over, not counted on.
  REQUIRE(c.propose("b", kT0).ok());
  drain(c);
  REQUIRE(c.progress().at("2").inflight.size() == 1);
  tick();
  CHECK(c.progress().at("2").state == Progress::State::Replicate);
  CHECK(c.progress().at("2").inflight.size() == 1);
}

TEST_CASE("a heartbeat response promises nothing and does not wait for the disk", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{10, ""};
  Core c(options("2"), st);
  Message a = message(MessageType::Append, "1", "2", 10);
  a.entries = {entry(1, 10)};
  c.step(a);
  Drained d = drain(c, /*persist=*/false);  // the append's batch stays on its way to disk
  REQUIRE(d.batches.size() == 1);
  CHECK(find(d.after_persist, MessageType::AppendResponse) != nullptr);
  Message hb = message(MessageType::Heartbeat, "1", "2", 10);
  hb.context = 7;
  c.step(hb);
  d = drain(c, /*persist=*/false);
  const Message* r = find(d.sent, MessageType::HeartbeatResponse);
  REQUIRE(r != nullptr);
  CHECK(r->context == 7);
  CHECK(find(d.after_persist, MessageType::HeartbeatResponse) == nullptr);
}

TEST_CASE("followers whose disks are slower than the election timeout do not unseat a healthy leader",
          "[core]") {
  sim::Options o = calm(3);
  o.core.check_quorum = true;
  sim::Cluster c(43, o);
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  const std::uint64_t term = c.core(l).term();
  // Every group commit of both followers now takes three election timeouts.
  for (const auto& [id, n] : c.nodes())
    if (id != l) c.set_disk_delay(id, 3 * 10 * sim::Cluster::kTick);
  for (int t = 0; t < 300; ++t) {
    if (t % 5 == 0) c.propose(l);
    if (t % 7 == 0) c.read(l);
    c.run_ticks(1);
    REQUIRE(c.leader() == l);
    REQUIRE(c.core(l).term() == term);
  }
  CHECK(c.reads_ok() > 0);  // its read rounds complete: heartbeats are answered at once
  CHECK(c.acked() > 0);     // and writes commit, slowly
}

TEST_CASE("the leader counts itself only once its own log is durable", "[core]") {
  CoreState st;
  st.initial_config = voters({"1"});
  Core c(options("1"), st);
  c.tick(900);
  drain(c);
  ProposeResult p = c.propose("set k v", 1000);
  REQUIRE(p.ok());
  Drained d = drain(c, /*persist=*/false);
  CHECK(c.commit_index() < p.id.index);
  REQUIRE(d.batches.size() == 1);
  c.persisted(d.batches[0].seq);
  d = drain(c);
  CHECK(c.commit_index() == p.id.index);
  REQUIRE(!d.committed.empty());
  CHECK(d.committed.back().payload == "set k v");
}

TEST_CASE("a follower acknowledges entries only after they are durable", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("2"), st);
  Message app = message(MessageType::Append, "1", "2", 10);
  app.entries = {entry(1, 10), entry(2, 10)};
  app.commit = 0;
  c.step(app);
  Ready r = c.ready();
  CHECK(find(r.messages, MessageType::AppendResponse) == nullptr);
  const Message* ack = find(r.after_persist, MessageType::AppendResponse);
  REQUIRE(ack != nullptr);
  CHECK(ack->index == 2);
  CHECK(r.persist.entries.size() == 2);
}

TEST_CASE("a follower rejects entries that do not follow its log, with a hint to skip a term", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{30, ""};
  st.entries = {entry(1, 10), entry(2, 20), entry(3, 20), entry(4, 20)};
  Core c(options("2"), st);
  Message app = message(MessageType::Append, "1", "2", 30);
  app.index = 4;
  app.log_term = 30;  // the leader's entry 4 is of term 30: ours (term 20) conflicts
  c.step(app);
  Drained d = drain(c);
  const Message* r = find(d.sent, MessageType::AppendResponse);
  REQUIRE(r != nullptr);
  CHECK(r->reject);
  CHECK(r->hint_index == 4);
  CHECK(r->hint_term == 20);
  // The conflicting suffix is replaced once the leader finds where the logs agree.
  Message fix = message(MessageType::Append, "1", "2", 30);
  fix.index = 1;
  fix.log_term = 10;
  fix.entries = {entry(2, 30, "y")};
  c.step(fix);
  d = drain(c);
  CHECK(c.last_index() == 2);
  CHECK(c.term_at(2) == 30);
  REQUIRE(d.batches.size() == 1);
  CHECK(d.batches[0].entries.front().index == 2);  // the storage cuts its log there
}

TEST_CASE("leader timestamps never go backwards", "[core]") {
  CoreState st;
  st.initial_config = voters({"1"});
  Core c(options("1"), st);
  c.tick(1000);
  drain(c);
  auto a = c.propose("a", 5000);
  auto b = c.propose("b", 4000);  // the clock stepped back
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(c.entry(b.id.index).timestamp_ms >= c.entry(a.id.index).timestamp_ms);
}

TEST_CASE("a leader reports readiness only once its first entry and everything before it are handed out",
          "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.entries = {entry(1, 5), entry(2, 5)};
  st.hard_state = HardState{5, ""};
  Core c(options("1"), st);
  c.campaign();
  drain(c);
  c.step(message(MessageType::PreVoteResponse, "2", "1", 15));
  drain(c);
  c.step(message(MessageType::VoteResponse, "2", "1", 15));
  // The leader's own batch (vote, no-op) stays unpersisted: the followers' acks commit the
  // no-op, but nothing can be applied here yet.
  Drained d = drain(c, /*persist=*/false);
  REQUIRE(c.role() == Role::Leader);
  for (const char* f : {"2", "3"}) {
    Message ok = message(MessageType::AppendResponse, f, "1", c.term());
    ok.index = c.last_index();
    c.step(ok);
  }
  Ready r = c.ready();
  CHECK(c.commit_index() == 3);
  CHECK(r.committed.size() == 2);   // entries 1-2 were durable already; the no-op is not
  CHECK(r.leader_ready_term == 0);  // on_leader would see a store without the no-op applied
  for (auto& b : d.batches) c.persisted(b.seq);
  if (r.persist.seq) c.persisted(r.persist.seq);
  std::uint64_t ready_term = 0;
  std::size_t applied = r.committed.size();
  while (c.has_ready()) {
    Ready next = c.ready();
    applied += next.committed.size();
    if (next.leader_ready_term) {
      ready_term = next.leader_ready_term;
      CHECK(applied == 3);  // reported with (or after) the last of them
    }
    if (next.persist.seq) c.persisted(next.persist.seq);
  }
  CHECK(ready_term == c.term());
}

// ---- timeouts ----------------------------------------------------------------------------

TEST_CASE("a proposal that cannot commit is aborted with an unknown outcome and stays in the log", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  elect(c, "2", "3");
  ProposeResult p = c.propose("set k v", 0);
  REQUIRE(p.ok());
  Drained d;
  for (int i = 0; i < c.options().proposal_timeout_ticks && d.aborted.empty(); ++i) {
    c.tick();
    Drained step = drain(c);
    d.aborted.insert(d.aborted.end(), step.aborted.begin(), step.aborted.end());
  }
  REQUIRE(d.aborted.size() == 1);
  CHECK(d.aborted[0] == p.id);
  // Raft may still commit it through a later leader: it is not removed.
  CHECK(c.last_index() >= p.id.index);
  CHECK(c.term_at(p.id.index) == p.id.term);
}

TEST_CASE("when a leader steps down every pending proposal is aborted", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  elect(c, "2", "3");
  ProposeResult p = c.propose("a", 0);
  REQUIRE(p.ok());
  drain(c);
  c.step(message(MessageType::Heartbeat, "2", "1", c.term() + 10));  // a newer leader
  Drained d = drain(c);
  CHECK(c.role() == Role::Follower);
  REQUIRE(d.aborted.size() == 1);
  CHECK(d.aborted[0] == p.id);
}

// ---- reads -------------------------------------------------------------------------------

TEST_CASE("linearizable reads: the leader confirms leadership with a heartbeat round", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  elect(c, "2", "3");
  // Commit the no-op so the leader may serve reads.
  for (const char* f : {"2"}) {
    Message ok = message(MessageType::AppendResponse, f, "1", c.term());
    ok.index = c.last_index();
    c.step(ok);
  }
  drain(c);
  REQUIRE(c.leader_ready());
  c.read_index(7);
  Drained d = drain(c);
  CHECK(d.reads.empty());  // not before a majority confirmed
  const Message* hb = find(d.sent, MessageType::Heartbeat, "3");
  REQUIRE(hb != nullptr);
  Message resp = message(MessageType::HeartbeatResponse, "3", "1", c.term());
  resp.context = hb->context;
  c.step(resp);
  d = drain(c);
  REQUIRE(d.reads.size() == 1);
  CHECK(d.reads[0].ok);
  CHECK(d.reads[0].request_id == 7);
  CHECK(d.reads[0].index == c.commit_index());
}

TEST_CASE("linearizable reads wait for the leader's first entry of its term", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  elect(c, "2", "3");
  REQUIRE_FALSE(c.leader_ready());
  c.read_index(1);
  Drained d = drain(c);
  CHECK(d.reads.empty());
  CHECK(find(d.sent, MessageType::Heartbeat) == nullptr);
}

TEST_CASE("a leader that cannot reach a majority refuses linearizable reads", "[core]") {
  sim::Cluster c(17, calm(3));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  c.isolate(l);
  std::uint64_t before = c.reads_ok();
  for (int i = 0; i < 20; ++i) {
    c.read(l);
    c.run_ticks(5);
  }
  CHECK(c.reads_ok() == before);
}

TEST_CASE("a follower serves a linearizable read at the leader's commit index", "[core]") {
  sim::Cluster c(19, calm(3));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  for (int i = 0; i < 10; ++i) c.propose(l);
  c.run_ticks(5);
  NodeId f = l == "1" ? "2" : "1";
  std::uint64_t before = c.reads_ok();
  c.read(f);
  c.run_ticks(5);
  CHECK(c.reads_ok() == before + 1);  // and the harness checked it saw every commit
}

// ---- membership --------------------------------------------------------------------------

TEST_CASE("configuration changes: one voter at a time, after the term's first commit, never two pending", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("1"), st);
  elect(c, "2", "3");
  Configuration two_more = c.config();
  two_more.upsert(Member{"4", "", "sid-4", true});
  CHECK(c.add_learner(Member{"4", "", "sid-4", false}, 0).error == ProposeResult::Error::NotReady);
  Message ok = message(MessageType::AppendResponse, "2", "1", c.term());
  ok.index = c.last_index();
  c.step(ok);
  drain(c);
  REQUIRE(c.leader_ready());
  two_more.upsert(Member{"5", "", "sid-5", true});
  CHECK(c.propose_config(two_more, 0).error == ProposeResult::Error::InvalidConfig);
  ProposeResult add = c.add_learner(Member{"4", "", "sid-4", false}, 0);
  REQUIRE(add.ok());
  CHECK(c.config().contains("4"));  // used as soon as it is appended
  CHECK(c.remove("3", 0).error == ProposeResult::Error::ConfigPending);
}

TEST_CASE("a configuration entry cut from the log is reverted", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  Core c(options("3"), st);
  Configuration with4 = st.initial_config;
  with4.upsert(Member{"4", "", "sid-4", false});
  LogEntry cfg = entry(2, 10, with4.encode());
  cfg.type = EntryType::Config;
  Message app = message(MessageType::Append, "1", "3", 10);
  app.entries = {entry(1, 10), cfg};
  c.step(app);
  drain(c);
  CHECK(c.config().contains("4"));
  // A new leader never had that entry and overwrites index 2.
  Message app2 = message(MessageType::Append, "2", "3", 20);
  app2.index = 1;
  app2.log_term = 10;
  app2.entries = {entry(2, 20, "other")};
  c.step(app2);
  drain(c);
  CHECK_FALSE(c.config().contains("4"));
  CHECK(c.config() == st.initial_config);
}

TEST_CASE("a joiner is added as a learner, caught up and promoted, up to max_voters", "[core]") {
  for (std::size_t max_voters : {3u, 5u}) {
    sim::Options o = calm(3);
    o.joiners = 1;
    o.core.max_voters = max_voters;
    sim::Cluster c(23, o);
    NodeId l = wait_for_leader(c);
    REQUIRE(!l.empty());
    for (int i = 0; i < 20; ++i) c.propose(l);
    REQUIRE(c.join("4"));
    c.run_ticks(50);
    const Member* m = c.core(c.leader()).config().find("4");
    REQUIRE(m != nullptr);
    CHECK(m->voter == (max_voters == 5));
    CHECK(c.core("4").last_index() == c.core(c.leader()).last_index());
  }
}

TEST_CASE("a wiped member is a stranger until the leader re-adds it under its new identity", "[core]") {
  sim::Cluster c(29, calm(3));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  NodeId f = l == "3" ? "2" : "3";
  for (int i = 0; i < 5; ++i) c.propose(l);
  c.run_ticks(10);
  const std::string old_sid = c.node(f).server_id;
  const std::uint64_t match_before = c.core(l).progress().at(f).match;
  // Nothing a stranger says counts: an acknowledgement under another server id moves nothing.
  raft::Message ack;
  ack.type = raft::MessageType::AppendResponse;
  ack.from = f;
  ack.to = l;
  ack.server_id = "somebody-else";
  ack.term = c.core(l).term();
  ack.index = c.core(l).last_index() + 5;
  c.core(l).step(ack);
  CHECK(c.core(l).progress().at(f).match == match_before);
  CHECK(c.core(l).config().find(f)->server_id == old_sid);

  c.wipe(f);  // comes back empty, with a new server id, and without -e: it does not ask
  bool readded = false;
  for (int t = 0; t < 100 && !readded; ++t) {
    c.run_ticks(1);
    const Member* m = c.core(c.leader()).config().find(f);
    readded = m != nullptr && m->server_id == c.node(f).server_id;
  }
  REQUIRE(readded);  // the leader heard it under its new identity and re-added it
  c.run_ticks(60);
  const Member* m = c.core(c.leader()).config().find(f);
  REQUIRE(m != nullptr);
  CHECK(m->server_id == c.node(f).server_id);
  CHECK(m->voter);  // caught up and promoted again
  CHECK(c.core(f).last_index() == c.core(c.leader()).last_index());
}

TEST_CASE("a re-added member is elected by a majority that includes a follower whose configuration is older",
          "[core]") {
  // Five voters. X is wiped and re-added (as X', new server id) and promoted while G is cut
  // off, so G's configuration still names X's old server id. Z falls behind; then the leader
  // and Y crash. X' holds the only up-to-date log and needs G's vote: G must not ignore its
  // campaign as a stranger's, or three of five voters could never elect again.
  sim::Cluster c(5, calm(5));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  for (int i = 0; i < 5; ++i) c.propose(l);
  c.run_ticks(20);
  std::vector<NodeId> others;
  for (auto& [id, n] : c.nodes())
    if (id != l) others.push_back(id);
  const NodeId x = others[0], g = others[1], y = others[2], z = others[3];
  c.isolate(g);
  c.wipe(x);
  REQUIRE(c.node(x).up);
  bool promoted = false;
  for (int t = 0; t < 300 && !promoted; ++t) {
    c.run_ticks(1);
    const Member* m = c.core(l).config().find(x);
    promoted = m && m->voter && m->server_id == c.node(x).server_id &&
               c.core(l).config_index() <= c.core(l).commit_index();
  }
  REQUIRE(c.leader() == l);
  REQUIRE(promoted);
  REQUIRE(c.core(g).config().find(x)->server_id != c.node(x).server_id);
  c.isolate(z);
  for (int i = 0; i < 5; ++i) c.propose(l);
  c.run_ticks(10);
  REQUIRE(c.core(x).commit_index() > c.core(z).last_index());
  c.crash(l);
  c.crash(y);
  c.heal();
  NodeId next;
  for (int t = 0; t < 500 && next.empty(); ++t) {
    c.run_ticks(1);
    next = c.leader();
  }
  CHECK(next == x);
}

TEST_CASE("a wiped node that receives a configuration under its old server id is no voter there", "[core]") {
  // It forgot the votes its old identity gave: counting itself would be a second vote.
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});  // names "2" as sid-2
  CoreOptions o = options("2");
  o.server_id = "sid-2-wiped";
  Core c(o, st);
  CHECK_FALSE(c.is_voter());
  for (int i = 0; i < 100; ++i) c.tick(kT0 + i);
  CHECK(c.role() == Role::Follower);
  CHECK(drain(c).sent.empty());  // never campaigns
}

TEST_CASE("a static peer map learns every member's server id through the log", "[core]") {
  sim::Options o = calm(3);
  o.static_ids = true;
  sim::Cluster c(31, o);
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  c.run_ticks(30);
  for (const auto& m : c.core(c.leader()).config().members) CHECK(m.server_id == c.node(m.id).server_id);
}

// ---- snapshots and transfer --------------------------------------------------------------

TEST_CASE("a follower behind the leader's compacted log catches up from a chunked snapshot", "[core]") {
  sim::Options o = calm(3);
  o.core.snapshot_threshold = 10;
  o.core.snapshot_trailing = 2;
  o.core.snapshot_chunk_bytes = 4;  // the simulated snapshot text is ~20 bytes: several chunks
  sim::Cluster c(37, o);
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  NodeId f = l == "1" ? "2" : "1";
  c.isolate(f);
  for (int i = 0; i < 60; ++i) {
    c.propose(l);
    c.run_ticks(1);
  }
  REQUIRE(c.core(l).first_index() > c.core(f).last_index() + 1);
  c.heal();
  c.run_ticks(40);
  CHECK(c.core(f).snapshot_index() > 0);
  CHECK(c.core(f).last_index() == c.core(l).last_index());
  CHECK(c.node(f).applied == c.core(l).commit_index());
}

TEST_CASE("leadership transfer hands the cluster to the target", "[core]") {
  sim::Cluster c(41, calm(3));
  NodeId l = wait_for_leader(c);
  REQUIRE(!l.empty());
  NodeId target = l == "3" ? "1" : "3";
  REQUIRE(c.core(l).transfer_leadership(target));
  CHECK_FALSE(c.core(l).propose("x", 0).ok());  // no proposals while transferring
  c.run_ticks(10);
  CHECK(c.leader() == target);
}

TEST_CASE("a handover without a named target goes to the most up-to-date voter heard from lately", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.initial_config.upsert(Member{"4", "", "sid-4", false});  // a learner
  CoreOptions o = options("1");
  o.max_voters = 3;  // 4 stays a learner
  Core c(o, st);
  CHECK(c.best_transfer_target().empty());  // only a leader hands over
  elect(c, "2", "3");
  auto answer = [&](const char* from, std::uint64_t index) {
    Message r = message(MessageType::AppendResponse, from, "1", c.term());
    r.index = index;
    c.step(r);
    drain(c);
  };
  REQUIRE(c.propose("a", kT0).ok());
  drain(c);
  answer("4", 1);
  answer("4", 2);  // the learner's log is the longest, but a learner cannot lead
  answer("3", 1);
  answer("2", 1);
  CHECK(c.best_transfer_target() == "3");  // a tie: the greatest id
  answer("2", 2);
  CHECK(c.best_transfer_target() == "2");
  // 2 falls silent; 3 and 4 answer every heartbeat. After an election timeout 2 is no target,
  // however far its log matches. At the check-quorum round (tick 10) recent_active is cleared
  // for everyone until their next answers: 3 was heard a tick ago and is the target all along.
  for (int t = 1; t <= 12; ++t) {
    c.tick(kT0);
    drain(c);
    INFO("tick " << t);
    if (t == 10) CHECK_FALSE(c.progress().at("3").recent_active);
    CHECK(c.best_transfer_target() == (t < 10 ? "2" : "3"));
    c.step(message(MessageType::HeartbeatResponse, "3", "1", c.term()));
    c.step(message(MessageType::HeartbeatResponse, "4", "1", c.term()));
    drain(c);
  }
  REQUIRE(c.role() == Role::Leader);
  REQUIRE_FALSE(c.config().is_voter("4"));
  REQUIRE(c.transfer_leadership(c.best_transfer_target()));
  CHECK(c.transfer_target() == "3");
}

// ---- input out of bounds (issue 10) ----------------------------------------------------------

TEST_CASE("a message with a term above 2^62 is dropped, and no term the core computes wraps around", "[core]") {
  const std::uint64_t bound = std::uint64_t{1} << 62;
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{10, ""};
  Core c(options("1"), st);
  // A stranger's heartbeat with 2^64 - 6: adopting it, the next campaign (+10) would wrap to 4.
  c.step(message(MessageType::Heartbeat, "evil", "1", ~std::uint64_t{0} - 5));
  Drained d = drain(c);
  CHECK(c.term() == 10);
  CHECK(c.leader().empty());
  CHECK(d.sent.empty());
  CHECK(d.refused.size() == 1);
  // Just above the bound, from a member, of any kind: dropped as well.
  for (MessageType t : {MessageType::Append, MessageType::Vote, MessageType::PreVote, MessageType::Snapshot}) {
    c.step(message(t, "2", "1", bound + 1));
    CHECK(c.term() == 10);
  }
  Message stale_terms = message(MessageType::AppendResponse, "2", "1", 10);
  stale_terms.hint_term = bound + 1;
  c.step(stale_terms);
  // An append whose entries are of a later term than its own: no leader sends that.
  Message append = message(MessageType::Append, "2", "1", 20);
  append.entries.push_back(entry(1, bound));
  c.step(append);
  CHECK(c.term() == 10);
  CHECK(c.last_index() == 0);
  CHECK(c.refused_count() == 7);
  // At the bound, a message is taken.
  c.step(message(MessageType::Heartbeat, "2", "1", bound));
  CHECK(c.term() == bound);
  CHECK(c.leader() == "2");
}

TEST_CASE("a node whose next campaign would pass 2^62 does not campaign", "[core]") {
  const std::uint64_t bound = std::uint64_t{1} << 62;
  SECTION("a voter of three") {
    CoreState st;
    st.initial_config = voters({"1", "2", "3"});
    st.hard_state = HardState{bound - 5, ""};
    Core c(options("1"), st);
    c.campaign();
    Drained d = drain(c);
    CHECK(c.role() == Role::Follower);
    CHECK(c.term() == bound - 5);
    CHECK(find(d.sent, MessageType::PreVote) == nullptr);
    REQUIRE(d.refused.size() == 1);
    CHECK_THAT(d.refused[0], Catch::Matchers::Contains("would pass the largest term"));
    // Not a counted peer message: nobody sent anything.
    CHECK(c.refused_count() == 0);
  }
  SECTION("a lone voter, without pre-vote") {
    CoreState st;
    st.initial_config = voters({"1"});
    st.hard_state = HardState{bound - 1, ""};
    CoreOptions o = options("1");
    o.pre_vote = false;
    Core c(o, st);
    for (int i = 0; i < 30; ++i) c.tick(kT0 + i);
    drain(c);
    CHECK(c.role() == Role::Follower);
    CHECK(c.term() == bound - 1);
  }
  SECTION("up to the bound itself it campaigns") {
    CoreState st;
    st.initial_config = voters({"1"});
    st.hard_state = HardState{bound - 10, ""};
    Core c(options("1"), st);
    c.tick(kT0);
    drain(c);
    CHECK(c.role() == Role::Leader);
    CHECK(c.term() == bound);
  }
}

TEST_CASE("a term above 2^62 on disk is a clear error at start, and term_step is bounded", "[core]") {
  const std::uint64_t bound = std::uint64_t{1} << 62;
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{bound + 1, ""};
  CHECK_THROWS_WITH(Core(options("1"), st), Catch::Matchers::Contains("the hard state holds term 4611686018427387905"));
  st.hard_state = HardState{10, ""};
  st.entries.push_back(entry(1, bound + 7));
  CHECK_THROWS_WITH(Core(options("1"), st), Catch::Matchers::Contains("the log entry at index 1"));
  st.entries.clear();
  CoreOptions o = options("1");
  o.term_step = (std::uint64_t{1} << 32) + 1;
  CHECK_THROWS_WITH(Core(o, st), Catch::Matchers::Contains("term_step"));
}

TEST_CASE("a received snapshot is checked whole before the log goes; a refused one leaves it as it was",
          "[core]") {
  // Follower 2 holds 1-8 of term 10; a leader of term 20 sends a snapshot at (12, 20) in
  // chunks. The check (the runtime's parse) refuses it: the log, the commit index and the disk
  // stay as they were, and the leader is asked to start again from offset 0.
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{10, "1"};
  for (std::uint64_t i = 1; i <= 8; ++i) st.entries.push_back(entry(i, 10));
  CoreOptions o = options("2");
  std::vector<std::string> checked;
  o.check_snapshot = [&checked](const Snapshot& s) {
    checked.push_back(s.data);
    return s.data == "good snapshot" ? std::string() : std::string("unreadable at byte 0");
  };
  Core c(o, st);
  Message chunk = message(MessageType::Snapshot, "1", "2", 20);
  chunk.index = 12;
  chunk.log_term = 20;
  chunk.config = voters({"1", "2", "3"});
  chunk.data = "garbage ";
  c.step(chunk);
  Drained d = drain(c);
  CHECK(checked.empty());  // not before the last chunk
  chunk.offset = 8;
  chunk.data = "and more";
  chunk.done = true;
  c.step(chunk);
  d = drain(c);
  REQUIRE(checked.size() == 1);
  CHECK(checked[0] == "garbage and more");  // the whole of it
  for (const auto& b : d.batches) {
    CHECK_FALSE(b.snapshot);
    CHECK(b.entries.empty());
  }
  CHECK(c.last_index() == 8);
  CHECK(c.snapshot_index() == 0);
  const Message* r = find(d.sent, MessageType::SnapshotResponse);
  REQUIRE(r != nullptr);
  CHECK(r->reject);
  CHECK(r->offset == 0);
  REQUIRE(d.refused.size() == 1);
  CHECK_THAT(d.refused[0], Catch::Matchers::Contains("unreadable at byte 0"));
  CHECK(c.refused_count() == 1);
  // Sent again, right: installed.
  chunk.offset = 0;
  chunk.data = "good snapshot";
  c.step(chunk);
  d = drain(c);
  REQUIRE(d.batches.size() >= 2);
  REQUIRE(d.batches[1].snapshot);
  CHECK(d.batches[1].snapshot->data == "good snapshot");
  CHECK(c.snapshot_index() == 12);
  CHECK(c.last_index() == 12);
}

TEST_CASE("snapshot chunks beyond max_snapshot_bytes are refused and what arrived is dropped", "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{10, "1"};
  for (std::uint64_t i = 1; i <= 3; ++i) st.entries.push_back(entry(i, 10));
  CoreOptions o = options("2");
  o.max_snapshot_bytes = 10;
  Core c(o, st);
  Message chunk = message(MessageType::Snapshot, "1", "2", 20);
  chunk.index = 12;
  chunk.log_term = 20;
  chunk.data = "012345";
  c.step(chunk);
  Drained d = drain(c);
  const Message* r = find(d.sent, MessageType::SnapshotResponse);
  REQUIRE(r != nullptr);
  CHECK_FALSE(r->reject);
  CHECK(r->offset == 6);
  chunk.offset = 6;  // 12 bytes in all: over the bound
  c.step(chunk);
  d = drain(c);
  r = find(d.sent, MessageType::SnapshotResponse);
  REQUIRE(r != nullptr);
  CHECK(r->reject);
  CHECK(r->offset == 0);
  REQUIRE(d.refused.size() == 1);
  CHECK_THAT(d.refused[0], Catch::Matchers::Contains("larger than max_snapshot_bytes"));
  // What arrived is gone: the next chunk at 12 is out of order, asked for from 0.
  chunk.offset = 12;
  chunk.done = true;
  c.step(chunk);
  d = drain(c);
  r = find(d.sent, MessageType::SnapshotResponse);
  REQUIRE(r != nullptr);
  CHECK(r->reject);
  CHECK(r->offset == 0);
  CHECK(c.last_index() == 3);
  CHECK(c.snapshot_index() == 0);
}

TEST_CASE("a received snapshot is not held in memory: its chunks leave the core with each batch", "[core]") {
  // 4 MiB arrive in 64 KiB chunks. After each ready() the core holds none of them: they went
  // to the storage in the batch; the core knows only how many bytes arrived.
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{10, "1"};
  for (std::uint64_t i = 1; i <= 3; ++i) st.entries.push_back(entry(i, 10));
  Core c(options("2"), st);
  Message chunk = message(MessageType::Snapshot, "1", "2", 20);
  chunk.index = 500;
  chunk.log_term = 20;
  chunk.config = voters({"1", "2", "3"});
  const std::size_t piece = 64u << 10;
  std::uint64_t handed_out = 0;
  for (std::uint64_t k = 0; k < 64; ++k) {
    chunk.offset = k * piece;
    chunk.data.assign(piece, static_cast<char>('a' + k % 26));
    c.step(chunk);
    CHECK(c.received_snapshot_bytes_held() == piece);  // this chunk, waiting for the batch
    Ready r = c.ready();
    for (const auto& sc : r.persist.snapshot_chunks) {
      CHECK(sc.offset == handed_out);
      handed_out += sc.data.size();
    }
    c.persisted(r.persist.seq);
    CHECK(c.received_snapshot_bytes_held() == 0);
    CHECK(c.receiving_snapshot_bytes() == (k + 1) * piece);
  }
  CHECK(handed_out == 64 * piece);
  CHECK(c.last_index() == 3);  // nothing installed: no last chunk yet
}

TEST_CASE("a received snapshot is installed only once the storage read it back; a mismatch keeps the log",
          "[core]") {
  CoreState st;
  st.initial_config = voters({"1", "2", "3"});
  st.hard_state = HardState{10, "1"};
  for (std::uint64_t i = 1; i <= 8; ++i) st.entries.push_back(entry(i, 10));
  Core c(options("2"), st);
  Message chunk = message(MessageType::Snapshot, "1", "2", 20);
  chunk.index = 12;
  chunk.log_term = 20;
  chunk.config = voters({"1", "2", "3"});
  chunk.data = "the state at 12";
  chunk.done = true;
  c.step(chunk);
  Ready r = c.ready();
  REQUIRE(r.received_snapshot);
  CHECK(r.received_snapshot->size == chunk.data.size());
  CHECK(r.received_snapshot->crc32c == raft::detail::crc32c(chunk.data.data(), chunk.data.size()));
  REQUIRE(r.persist.snapshot_chunks.size() == 1);
  CHECK_FALSE(r.persist.snapshot);
  CHECK(c.last_index() == 8);  // nothing replaced before the read-back
  c.persisted(r.persist.seq);
  // The same chunk again while it is read back: no second read-back, no answer yet.
  c.step(chunk);
  Drained d = drain(c, false);
  CHECK(find(d.sent, MessageType::SnapshotResponse) == nullptr);
  // The storage found the file differs from what arrived: refused, the log kept.
  auto snap = std::make_shared<Snapshot>();
  snap->meta = r.received_snapshot->meta;
  c.received_snapshot_loaded(snap, "the file holds 3 bytes of it");
  d = drain(c);
  const Message* resp = find(d.sent, MessageType::SnapshotResponse);
  REQUIRE(resp != nullptr);
  CHECK(resp->reject);
  CHECK(resp->offset == 0);
  REQUIRE(d.refused.size() == 1);
  CHECK_THAT(d.refused[0], Catch::Matchers::Contains("the file holds 3 bytes"));
  CHECK(c.last_index() == 8);
  for (const auto& b : d.batches) CHECK_FALSE(b.snapshot);
  // A late answer about it changes nothing.
  snap->data = chunk.data;
  c.received_snapshot_loaded(snap, "");
  d = drain(c);
  CHECK(c.last_index() == 8);
  CHECK(d.batches.empty());
}
