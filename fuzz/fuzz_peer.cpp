// libFuzzer target: what a peer sends on port + 1, once authenticated. The bytes go through
// the RESP request parser and, for RAFT messages, the strict decoder; a decoded message encodes
// back to a message equal in every field. Then it is stepped into a core as the runtime does (a
// follower holding a few entries, with the runtime's snapshot check and a small snapshot
// bound): no term the core reaches or persists is above kMaxTerm, nothing it sends carries
// one, and a snapshot it persists is one the runtime can restore. The same bytes test the
// authenticated stream: sealed by one end of a session and opened by the other, in pieces,
// they come out unchanged; with any one byte of the frames altered, nothing of the altered
// frame comes out; opened raw (not sealed), nothing comes out at all.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "raft.hpp"

namespace {

raft::Core follower() {
  raft::CoreOptions o;
  o.id = "1";
  o.server_id = "sid-1";
  o.max_snapshot_bytes = 4096;
  o.check_snapshot = [](const raft::Snapshot& s) { return raft::detail::check_received_snapshot(s); };
  raft::CoreState st;
  for (const char* id : {"1", "2", "3"}) st.initial_config.upsert(raft::Member{id, "", std::string("sid-") + id, true});
  st.hard_state = raft::HardState{10, ""};
  for (std::uint64_t i = 1; i <= 3; ++i) {
    raft::LogEntry e;
    e.index = i;
    e.term = 10;
    e.payload = "*1\r\n$4\r\nping\r\n";
    st.entries.push_back(e);
  }
  return raft::Core(o, st);
}

// `incoming`: the storage's incoming snapshot file, the chunks written in order.
void check_ready(raft::Core& core, std::string& incoming) {
  while (core.has_ready()) {
    raft::Ready rd = core.ready();
    for (const auto& c : rd.persist.snapshot_chunks) {
      if (c.offset == 0) incoming.clear();
      if (c.offset == incoming.size()) incoming += c.data;
      if (incoming.size() > 4096) std::abort();  // max_snapshot_bytes
    }
    if (rd.persist.hard_state && rd.persist.hard_state->term > raft::kMaxTerm) std::abort();
    if (rd.persist.snapshot && !raft::detail::check_received_snapshot(*rd.persist.snapshot).empty()) std::abort();
    for (const auto* out : {&rd.messages, &rd.after_persist})
      for (const auto& m : *out)
        if (m.term > raft::kMaxTerm) std::abort();
    if (rd.persist.seq) core.persisted(rd.persist.seq);
    if (rd.received_snapshot) {
      auto snap = std::make_shared<raft::Snapshot>();
      snap->meta = rd.received_snapshot->meta;
      snap->data = incoming;
      core.received_snapshot_loaded(snap, incoming.size() == rd.received_snapshot->size ? "" : "size differs");
    }
  }
  if (core.term() > raft::kMaxTerm || core.last_term() > core.term()) std::abort();
}

void check_stream(const std::uint8_t* data, std::size_t size) {
  using raft::detail::PeerSession;
  using raft::detail::PeerSide;
  const std::string plain(reinterpret_cast<const char*>(data), size);
  const std::string t = raft::detail::handshake_transcript({"HELLO", "4", "c", "1", "s", "a", "2", "n"}, "m");
  PeerSession sender("k", t, PeerSide::Connector), receiver("k", t, PeerSide::Listener);
  std::string wire, got, error;
  sender.seal(plain, wire);
  const std::size_t piece = 1 + (size > 0 ? data[0] : 0);
  for (std::size_t at = 0; at < wire.size(); at += piece)
    if (!receiver.open(wire.data() + at, std::min(piece, wire.size() - at), got, error)) std::abort();
  if (got != plain) std::abort();
  if (!wire.empty()) {
    std::string bad = wire;
    const std::size_t i = (size > 1 ? data[1] * 131u + data[size - 1] : 0) % bad.size();
    bad[i] = static_cast<char>(bad[i] ^ (size > 2 ? (data[2] | 1) : 1));
    PeerSession fresh("k", t, PeerSide::Listener);
    got.clear();
    fresh.open(bad.data(), bad.size(), got, error);
    // A flipped byte in the first frame lets nothing through.
    if (i < raft::detail::kFrameHeaderBytes + std::min(plain.size(), raft::detail::kMaxFrameBytes) +
                raft::detail::kFrameTagBytes &&
        !got.empty())
      std::abort();
  }
  PeerSession raw("k", t, PeerSide::Listener);
  got.clear();
  if (raw.open(plain.data(), plain.size(), got, error) && !got.empty()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check_stream(data, size);
  resp::RequestParser parser;
  parser.feed(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> words;
  raft::Core core = follower();
  std::string incoming;
  while (parser.next(words) == resp::Status::Ok) {
    if (words.empty() || words[0] != "RAFT") continue;
    std::vector<std::string> copy = words;
    raft::Message m;
    std::string error;
    if (!raft::detail::decode_raft(copy, m, error)) {
      if (error.empty()) std::abort();
      continue;
    }
    std::string encoded;
    raft::detail::encode_raft(m, encoded);
    resp::RequestParser again;
    again.feed(encoded);
    std::vector<std::string> words2;
    if (again.next(words2) != resp::Status::Ok) std::abort();
    raft::Message m2;
    if (!raft::detail::decode_raft(words2, m2, error)) std::abort();
    // Every field survives the round trip (from, to and server_id come from the connection).
    if (m2 != m) std::abort();
    // As the runtime steps it: from the connection's node (a member here), to this node.
    m.from = "2";
    m.to = "1";
    m.server_id = "sid-2";
    core.step(m);
    core.tick();
    check_ready(core, incoming);
  }
  return 0;
}
