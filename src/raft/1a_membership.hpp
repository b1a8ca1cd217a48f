
// ============================================================================================
// 1a. The cluster's membership and what a snapshot covers (the store, the core, the storage
//     and the runtime all speak in these)
// ============================================================================================

namespace raft {

/// One server of the cluster.
struct Member {
  NodeId id;
  std::string address;  // "ip:port": clients on port, peers on port + 1
  /// Random id of the member's data directory, fixed when the directory was created. A node
  /// presenting another server id under this member's id is a stranger (its disk was wiped).
  /// Empty when not known yet (a static peer map names only ids and addresses).
  std::string server_id;
  bool voter = true;  // false: a learner, which replicates but neither votes nor campaigns

  bool operator==(const Member& o) const {
    return id == o.id && address == o.address && server_id == o.server_id && voter == o.voter;
  }
  bool operator!=(const Member& o) const { return !(*this == o); }
};

/// The cluster's membership: voters and learners. Changes go through the log one server at
/// a time; a node uses a configuration as soon as it is in its log.
struct Configuration {
  std::vector<Member> members;  // sorted by id, ids unique

  const Member* find(std::string_view id) const {
    for (const auto& m : members)
      if (m.id == id) return &m;
    return nullptr;
  }
  bool contains(std::string_view id) const { return find(id) != nullptr; }
  bool is_voter(std::string_view id) const {
    const Member* m = find(id);
    return m != nullptr && m->voter;
  }
  std::size_t voter_count() const {
    std::size_t n = 0;
    for (const auto& m : members) n += m.voter ? 1 : 0;
    return n;
  }
  std::vector<NodeId> voters() const {
    std::vector<NodeId> ids;
    for (const auto& m : members)
      if (m.voter) ids.push_back(m.id);
    return ids;
  }
  /// Adds the member, or replaces the one with the same id; keeps members sorted.
  void upsert(Member m) {
    auto it = std::lower_bound(members.begin(), members.end(), m.id,
                               [](const Member& a, const NodeId& id) { return a.id < id; });
    if (it != members.end() && it->id == m.id)
      *it = std::move(m);
    else
      members.insert(it, std::move(m));
  }
  bool remove(std::string_view id) {
    for (auto it = members.begin(); it != members.end(); ++it)
      if (it->id == id) {
        members.erase(it);
        return true;
      }
    return false;
  }
  bool empty() const { return members.empty(); }

  /// The payload of a Config entry: a RESP array "config", 1 (format), then for each member
  /// id, address, server id, "1" (voter) or "0" (learner).
  std::string encode() const {
    std::vector<std::string> words{"config", "1"};
    for (const auto& m : members) {
      words.push_back(m.id);
      words.push_back(m.address);
      words.push_back(m.server_id);
      words.push_back(m.voter ? "1" : "0");
    }
    std::string out;
    resp::write_command(out, words);
    return out;
  }
  /// Parses encode()'s output strictly; false on anything else.
  static bool decode(std::string_view payload, Configuration& out) {
    resp::RequestParser parser;
    parser.feed(payload);
    std::vector<std::string> w;
    if (parser.next(w) != resp::Status::Ok || parser.buffered() != 0) return false;
    if (w.size() < 2 || w[0] != "config" || w[1] != "1" || (w.size() - 2) % 4 != 0) return false;
    Configuration c;
    for (std::size_t i = 2; i < w.size(); i += 4) {
      if (w[i].empty() || (w[i + 3] != "1" && w[i + 3] != "0") || c.contains(w[i])) return false;
      c.upsert(Member{w[i], w[i + 1], w[i + 2], w[i + 3] == "1"});
    }
    out = std::move(c);
    return true;
  }

  bool operator==(const Configuration& o) const { return members == o.members; }
  bool operator!=(const Configuration& o) const { return !(*this == o); }
};

/// What a snapshot covers: every entry up to and including (index, term), and the
/// configuration in force at that index.
struct SnapshotMeta {
  std::uint64_t index = 0;
  std::uint64_t term = 0;
  Configuration config;
  /// The leader timestamp of the entry at `index` (the newest it covers). A node that starts
  /// from the snapshot never stamps or judges expiry earlier than this: time does not run
  /// backwards across snapshots and restarts. 0 in snapshots written before format 2.
  std::int64_t timestamp_ms = 0;

  bool operator==(const SnapshotMeta& o) const {
    return index == o.index && term == o.term && config == o.config && timestamp_ms == o.timestamp_ms;
  }
};

}  // namespace raft
