// Core tests as transcripts: a script of inputs to a few raft::Core instances, each followed
// by what the cores did in answer (messages, persistence, commits, role changes), written the
// way one would explain a scenario on a whiteboard. The files live in tests/core/*.txt and are
// run by tests/test_transcripts.cpp; the format (learned from etcd's data-driven tests):
//
//   # a comment
//   campaign 1           <- a command
//   ----
//   1: role PreCandidate t20            <- what it printed, compared exactly
//   1: send PreVote 1->2 t30 last=1/20
//                        <- a blank line ends the block
//
// A run with RAFT_REWRITE_TRANSCRIPTS=1 writes what the code prints into the files instead of
// comparing; review that diff like code: the transcript is the specification of the scenario.
//
// Commands (ID names a node; every node the script made is on one network, which holds each
// message sent until `deliver` or `drop`):
//   node ID voters=1,2,3 [learners=4] [term=N] [vote=X] [log=T,T,...] [election=N]
//          [trailing=N] [chunk=N] [manual-persist]
//        a core with that configuration (or none: a joiner), hard state and log (the terms
//        of entries 1, 2, ...), and CoreOptions election_ticks (default 10),
//        snapshot_trailing and snapshot_chunk_bytes; manual-persist: batches stay unwritten
//        until `persist ID`, and the messages waiting for them stay unsent
//   tick ID [N]           N ticks of 100 ms on ID's clock (default 1)
//   campaign ID           the election timeout fires
//   deliver [ID]          delivers the messages held (those to ID only), in the order sent;
//                         messages sent while delivering wait for the next deliver
//   stabilize             delivers until no message is held
//   drop [FROM->TO]       loses the held messages (those from FROM to TO only)
//   persist ID            writes ID's unwritten batches (manual-persist)
//   propose ID TEXT       proposes a command whose payload is TEXT
//   read ID CONTEXT       a linearizable read request
//   add-learner ID M | promote ID M | remove ID M | transfer ID [M]
//   compact ID INDEX      ID takes a snapshot of its log up to INDEX
//   status ID             role, term, vote, leader, commit, log
// Each command prints, per node, in order: role changes, the batch to persist, messages sent
// (now, or "after" the batch is durable), entries committed, reads answered, proposals
// aborted, readiness, refusals.
#pragma once

#include "../raft.hpp"

#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace transcript {

using namespace raft;

// ---- describing the core's values in one line each ------------------------------------------

inline std::string describe(const Configuration& c) {
  std::string voters, learners;
  for (const auto& m : c.members) {
    std::string& list = m.voter ? voters : learners;
    list += (list.empty() ? "" : " ") + m.id;
  }
  return "{" + voters + (learners.empty() ? "" : " learners " + learners) + "}";
}

inline std::string describe(const LogEntry& e) {
  std::string s = std::to_string(e.index) + "/" + std::to_string(e.term);
  switch (e.type) {
    case EntryType::Noop: return s + " noop";
    case EntryType::Config: {
      Configuration c;
      return s + " config" + (Configuration::decode(e.payload, c) ? describe(c) : "?");
    }
    case EntryType::Command: return s + " \"" + e.payload + "\"";
  }
  return s;
}

inline std::string describe(const std::vector<LogEntry>& entries) {
  std::string s = "[";
  for (const auto& e : entries) s += (s.size() > 1 ? ", " : "") + describe(e);
  return s + "]";
}

/// The fields a message of its type means (see raft::Message), nothing else.
inline std::string describe(const Message& m) {
  std::ostringstream o;
  o << to_string(m.type) << " " << m.from << "->" << m.to << " t" << m.term;
  switch (m.type) {
    case MessageType::PreVote:
    case MessageType::Vote:
      o << " last=" << m.index << "/" << m.log_term << (m.transfer ? " transfer" : "");
      break;
    case MessageType::PreVoteResponse:
    case MessageType::VoteResponse:
      if (m.reject) o << " reject";
      break;
    case MessageType::Append:
      o << " prev=" << m.index << "/" << m.log_term << " commit=" << m.commit;
      if (!m.entries.empty()) o << " " << describe(m.entries);
      break;
    case MessageType::AppendResponse:
      if (m.reject)
        o << " reject=" << m.index << " hint=" << m.hint_index << "/" << m.hint_term;
      else
        o << " match=" << m.index;
      break;
    case MessageType::Heartbeat:
      o << " commit=" << m.commit;
      if (m.context) o << " ctx=" << m.context;
      break;
    case MessageType::HeartbeatResponse:
      if (m.context) o << " ctx=" << m.context;
      break;
    case MessageType::Snapshot:
      o << " snap=" << m.index << "/" << m.log_term << describe(m.config) << " off=" << m.offset
        << " len=" << m.data.size() << (m.done ? " done" : "");
      break;
    case MessageType::SnapshotResponse:
      o << " snap=" << m.index << " off=" << m.offset << (m.reject ? " reject" : "") << (m.done ? " done" : "");
      break;
    case MessageType::TimeoutNow: break;
    case MessageType::ReadIndex: o << " ctx=" << m.context; break;
    case MessageType::ReadIndexResponse:
      o << " ctx=" << m.context << (m.reject ? " reject" : " index=" + std::to_string(m.index));
      break;
  }
  return o.str();
}

inline const char* describe(Role r) {
  switch (r) {
    case Role::Follower: return "Follower";
    case Role::PreCandidate: return "PreCandidate";
    case Role::Candidate: return "Candidate";
    case Role::Leader: return "Leader";
  }
  return "?";
}

// ---- the script ------------------------------------------------------------------------------

/// One command of a transcript and what it is expected to print.
struct Block {
  int line = 0;  // of the command, 1-based
  std::string command;
  std::string expected;  // lines ending in '\n'
};

inline std::vector<Block> parse(const std::string& text) {
  std::vector<Block> blocks;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    Block b;
    b.line = n;
    b.command = line;
    if (!std::getline(in, line) || line != "----")
      throw std::runtime_error("line " + std::to_string(n + 1) + ": expected ---- after the command");
    ++n;
    while (std::getline(in, line) && !line.empty()) {
      ++n;
      b.expected += line + "\n";
    }
    ++n;
    blocks.push_back(std::move(b));
  }
  return blocks;
}

/// Writes the transcript back with each block's output replaced (comments kept).
inline std::string rewrite(const std::string& text, const std::vector<std::string>& outputs) {
  std::istringstream in(text);
  std::string line, out;
  std::size_t block = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') {
      out += line + "\n";
      continue;
    }
    out += line + "\n----\n" + (block < outputs.size() ? outputs[block] : "") + "\n";
    ++block;
    std::getline(in, line);                          // ----
    while (std::getline(in, line) && !line.empty()) {  // the old output
    }
  }
  return out;
}

// ---- the driver ------------------------------------------------------------------------------

class Driver {
 public:
  static constexpr std::int64_t kT0 = 1'700'000'000'000;

  /// Runs one command; returns what it printed.
  std::string run(const std::string& command) {
    std::istringstream in(command);
    std::vector<std::string> w;
    for (std::string word; in >> word;) w.push_back(word);
    if (w.empty()) throw std::runtime_error("empty command");
    out_.clear();
    const std::string& verb = w[0];
    if (verb == "node") {
      make_node(w);
    } else if (verb == "tick") {
      Node& n = node(arg(w, 1));
      int count = w.size() > 2 ? std::stoi(w[2]) : 1;
      for (int i = 0; i < count; ++i) {
        n.now += 100;
        n.core->tick(n.now);
        drain(n);
      }
    } else if (verb == "campaign") {
      Node& n = node(arg(w, 1));
      n.core->campaign();
      drain(n);
    } else if (verb == "deliver") {
      deliver(w.size() > 1 ? w[1] : "");
    } else if (verb == "stabilize") {
      for (int round = 0; !network_.empty(); ++round) {
        if (round == 100) throw std::runtime_error("stabilize: still sending after 100 rounds");
        deliver("");
      }
    } else if (verb == "drop") {
      drop(w.size() > 1 ? w[1] : "");
    } else if (verb == "persist") {
      Node& n = node(arg(w, 1));
      for (std::uint64_t seq : n.unwritten) n.core->persisted(seq);
      n.unwritten.clear();
      for (auto& m : n.waiting) send(n, std::move(m), "");
      n.waiting.clear();
      drain(n);
    } else if (verb == "propose") {
      Node& n = node(arg(w, 1));
      print_result(n, n.core->propose(rest(command, 2), n.now));
    } else if (verb == "read") {
      Node& n = node(arg(w, 1));
      n.core->read_index(std::stoull(arg(w, 2)));
      drain(n);
    } else if (verb == "add-learner") {
      Node& n = node(arg(w, 1));
      print_result(n, n.core->add_learner(Member{arg(w, 2), "", "sid-" + w[2], false}, n.now));
    } else if (verb == "promote") {
      Node& n = node(arg(w, 1));
      print_result(n, n.core->promote(arg(w, 2), n.now));
    } else if (verb == "remove") {
      Node& n = node(arg(w, 1));
      print_result(n, n.core->remove(arg(w, 2), n.now));
    } else if (verb == "transfer") {
      Node& n = node(arg(w, 1));
      bool ok = n.core->transfer_leadership(w.size() > 2 ? w[2] : "");
      if (!ok) print(n, "transfer refused");
      drain(n);
    } else if (verb == "compact") {
      compact(node(arg(w, 1)), std::stoull(arg(w, 2)));
    } else if (verb == "status") {
      status(node(arg(w, 1)));
    } else {
      throw std::runtime_error("unknown command " + verb);
    }
    return out_;
  }

 private:
  struct Node {
    std::unique_ptr<Core> core;
    std::int64_t now = kT0;
    bool manual_persist = false;
    std::vector<std::uint64_t> unwritten;  // batches not yet persisted (manual-persist)
    std::vector<Message> waiting;          // messages waiting for them
    std::string incoming;                  // the received snapshot's file
    bool incoming_intact = false;
  };

  static const std::string& arg(const std::vector<std::string>& w, std::size_t i) {
    if (i >= w.size()) throw std::runtime_error(w[0] + ": missing argument " + std::to_string(i));
    return w[i];
  }
  /// The command's text from its word `i` on.
  static std::string rest(const std::string& command, int i) {
    std::size_t at = 0;
    for (int k = 0; k < i; ++k) {
      at = command.find_first_not_of(' ', at);
      at = command.find(' ', at);
      if (at == std::string::npos) throw std::runtime_error("missing argument " + std::to_string(i));
    }
    return command.substr(command.find_first_not_of(' ', at));
  }
  Node& node(const std::string& id) {
    auto it = nodes_.find(id);
    if (it == nodes_.end()) throw std::runtime_error("no node " + id);
    return it->second;
  }
  void print(const Node& n, const std::string& line) { out_ += n.core->id() + ": " + line + "\n"; }

  static std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> parts;
    std::istringstream in(s);
    for (std::string p; std::getline(in, p, ',');)
      if (!p.empty()) parts.push_back(p);
    return parts;
  }

  void make_node(const std::vector<std::string>& w) {
    const std::string& id = arg(w, 1);
    CoreOptions o;
    o.id = id;
    o.server_id = "sid-" + id;
    o.election_ticks = 10;
    CoreState st;
    Node n;
    for (std::size_t i = 2; i < w.size(); ++i) {
      const std::string& a = w[i];
      std::size_t eq = a.find('=');
      std::string key = a.substr(0, eq), value = eq == std::string::npos ? "" : a.substr(eq + 1);
      if (key == "voters" || key == "learners") {
        for (const auto& m : split(value)) st.initial_config.upsert(Member{m, "", "sid-" + m, key == "voters"});
      } else if (key == "term") {
        st.hard_state.term = std::stoull(value);
      } else if (key == "vote") {
        st.hard_state.vote = value;
      } else if (key == "log") {
        for (const auto& t : split(value)) {
          LogEntry e;
          e.index = st.entries.size() + 1;
          e.term = std::stoull(t);
          e.payload = "e" + std::to_string(e.index);
          e.timestamp_ms = kT0;
          st.entries.push_back(e);
        }
      } else if (key == "election") {
        o.election_ticks = std::stoi(value);
      } else if (key == "trailing") {
        o.snapshot_trailing = std::stoull(value);
      } else if (key == "chunk") {
        o.snapshot_chunk_bytes = std::stoull(value);
      } else if (key == "manual-persist") {
        n.manual_persist = true;
      } else {
        throw std::runtime_error("node: unknown option " + a);
      }
    }
    n.core = std::make_unique<Core>(o, st);
    nodes_.erase(id);
    drain(nodes_.emplace(id, std::move(n)).first->second);
  }

  void send(Node& from, Message m, const char* when) {
    print(from, std::string("send") + when + " " + describe(m));
    network_.push_back(std::move(m));
  }

  void deliver(const std::string& to) {
    std::deque<Message> now;
    now.swap(network_);
    for (auto& m : now) {
      auto it = nodes_.find(m.to);
      if ((!to.empty() && m.to != to) || it == nodes_.end()) {
        network_.push_back(std::move(m));  // not this time, or to a node not made yet
        continue;
      }
      it->second.core->step(m);
      drain(it->second);
    }
  }

  void drop(const std::string& link) {
    std::deque<Message> kept;
    for (auto& m : network_) {
      if (link.empty() || m.from + "->" + m.to == link)
        out_ += "dropped " + describe(m) + "\n";
      else
        kept.push_back(std::move(m));
    }
    network_.swap(kept);
  }

  void print_result(Node& n, const ProposeResult& r) {
    static const char* const errors[] = {"ok", "NotLeader", "Transferring", "NotReady", "ConfigPending", "InvalidConfig"};
    std::string s = std::string("proposed: ") + errors[static_cast<int>(r.error)];
    if (r.ok()) s += " " + std::to_string(r.id.index) + "/" + std::to_string(r.id.term);
    if (!r.leader.empty()) s += " leader=" + r.leader;
    print(n, s);
    drain(n);
  }

  void print_batch(Node& n, const PersistBatch& b) {
    std::string s = "persist";
    if (b.snapshot) s += " snapshot=" + std::to_string(b.snapshot->meta.index) + "/" + std::to_string(b.snapshot->meta.term);
    if (b.hard_state) s += " term=" + std::to_string(b.hard_state->term) + " vote=" + (b.hard_state->vote.empty() ? "-" : b.hard_state->vote);
    if (!b.entries.empty()) s += " " + describe(b.entries);
    for (const auto& c : b.snapshot_chunks) s += " chunk(off=" + std::to_string(c.offset) + " len=" + std::to_string(c.data.size()) + ")";
    if (s != "persist") print(n, s);
  }

  /// Everything the node's core has to do, done and printed.
  void drain(Node& n) {
    Core& c = *n.core;
    while (c.has_ready()) {
      Ready r = c.ready();
      for (const auto& rc : r.role_changes)
        print(n, std::string("role ") + describe(rc.role) + " t" + std::to_string(rc.term) +
                     (rc.leader.empty() ? "" : " leader=" + rc.leader));
      for (const auto& chunk : r.persist.snapshot_chunks) {
        if (chunk.offset == 0) n.incoming.clear(), n.incoming_intact = true;
        if (chunk.offset != n.incoming.size()) n.incoming_intact = false;
        if (n.incoming_intact) n.incoming += chunk.data;
      }
      print_batch(n, r.persist);
      for (auto& m : r.messages) send(n, std::move(m), "");
      if (r.restore) print(n, "restore snapshot " + std::to_string(r.restore->meta.index) + "/" + std::to_string(r.restore->meta.term));
      for (const auto& e : r.committed) print(n, "commit " + describe(e));
      for (const auto& x : r.reads)
        print(n, "read ctx=" + std::to_string(x.request_id) + (x.ok ? " index=" + std::to_string(x.index) : " failed"));
      for (const auto& x : r.aborted) print(n, "aborted " + std::to_string(x.index) + "/" + std::to_string(x.term));
      if (r.leader_ready_term) print(n, "ready t" + std::to_string(r.leader_ready_term));
      if (r.snapshot_wanted) print(n, "snapshot wanted");
      for (const auto& x : r.refused) print(n, "refused: " + x);
      if (n.manual_persist && r.persist.seq) {
        n.unwritten.push_back(r.persist.seq);
        for (auto& m : r.after_persist) {
          print(n, "held until persisted: " + describe(m));
          n.waiting.push_back(std::move(m));
        }
        if (r.received_snapshot) throw std::runtime_error("manual-persist with a received snapshot is not supported");
        continue;  // later batches may come before this one is written, as with the storage
      }
      for (auto& m : r.after_persist) send(n, std::move(m), " after persist");
      if (r.persist.seq) c.persisted(r.persist.seq);
      if (r.received_snapshot) {
        // Read back as Storage::load_received_snapshot does: its length and CRC-32C.
        auto snap = std::make_shared<Snapshot>();
        snap->meta = r.received_snapshot->meta;
        snap->data = n.incoming;
        bool same = n.incoming_intact && n.incoming.size() == r.received_snapshot->size &&
                    detail::crc32c(n.incoming.data(), n.incoming.size()) == r.received_snapshot->crc32c;
        print(n, "received snapshot " + std::to_string(snap->meta.index) + "/" + std::to_string(snap->meta.term) +
                     (same ? " intact" : " damaged"));
        c.received_snapshot_loaded(snap, same ? "" : "the incoming file is not what arrived");
      }
    }
  }

  void compact(Node& n, std::uint64_t index) {
    Core& c = *n.core;
    auto snap = std::make_shared<Snapshot>();
    snap->meta.index = index;
    snap->meta.term = c.term_at(index);
    snap->meta.config = c.config_at(index);
    snap->meta.timestamp_ms = c.entry(index).timestamp_ms;
    snap->data = "state@" + std::to_string(index);
    std::uint64_t first = c.compact(snap);
    print(n, "compacted to " + std::to_string(index) + "; the disk may drop entries up to " + std::to_string(first));
    drain(n);
  }

  void status(Node& n) {
    const Core& c = *n.core;
    std::vector<LogEntry> log;
    for (std::uint64_t i = c.first_index(); i <= c.last_index(); ++i) log.push_back(c.entry(i));
    print(n, std::string(describe(c.role())) + " t" + std::to_string(c.term()) + " vote=" +
                 (c.vote().empty() ? "-" : c.vote()) + " leader=" + (c.leader().empty() ? "-" : c.leader()) +
                 " commit=" + std::to_string(c.commit_index()) + " config=" + describe(c.config()));
    print(n, "log" + (c.snapshot_index() ? " after snapshot " + std::to_string(c.snapshot_index()) : std::string()) +
                 " " + describe(log));
  }

  std::map<NodeId, Node> nodes_;
  std::deque<Message> network_;
  std::string out_;
};

}  // namespace transcript
