
namespace raft {
namespace detail {

// ---- clients' users: AUTH, ACL and the check before every command ---------------------------

// How the ACL sees a command; false for a command this node does not have (it gets the
// unknown-command error and runs nothing). The administration commands are listed here.
inline bool Runtime::acl_command(const std::vector<std::string>& w, AclCommand& c) const {
  static const std::set<std::string, std::less<>> administration = {
      "checkpoint", "shutdown", "raft.add", "raft.promote", "raft.remove", "raft.transfer", "raft.leave",
      "add_node", "del_node", "latency"};
  static const std::set<std::string, std::less<>> connection = {"ping", "echo", "select", "readonly", "readwrite",
                                                                "hello", "auth", "quit"};
  static const std::set<std::string, std::less<>> client_connection = {"setname", "getname", "setinfo", "id", "info"};
  c = AclCommand{};
  c.name = w[0];
  const std::string sub = w.size() > 1 ? lower(w[1]) : std::string();
  if (administration.count(c.name)) {
    c.category = kAclAdmin;
  } else if (connection.count(c.name)) {
    c.category = kAclConnection;
  } else if (c.name == "info" || c.name == "role") {
    c.category = kAclRead;  // read-only status: not administration
  } else if (c.name == "client" || c.name == "command" || c.name == "config" || c.name == "acl") {
    c.sub = sub;
    c.category = kAclConnection;
    if ((c.name == "client" && !client_connection.count(sub)) || c.name == "config" ||
        (c.name == "acl" && sub != "whoami" && sub != "cat"))
      c.category = kAclAdmin;  // CLIENT KILL/LIST..., CONFIG GET/SET, ACL SETUSER/DELUSER/LIST/USERS
  } else {
    auto h = handlers_.find(c.name);
    if (h == handlers_.end() || is_reserved_command(c.name)) return false;
    c.category = h->second.is_write() ? kAclWrite : kAclRead;
    c.keyed = h->second.min_args > 0 && c.name != "keys";
  }
  return true;
}

// Whether an ACL rule's "name" or "name|subcommand" names a command of this node.
inline bool Runtime::acl_rule_names_command(const std::string& rule) const {
  static const std::map<std::string, std::set<std::string>, std::less<>> subcommands = {
      {"client", {"setname", "getname", "setinfo", "id", "info", "kill", "list", "pause", "unpause", "reply",
                  "no-evict", "tracking", "unblock", "caching", "getredir", "trackinginfo", "no-touch", "help"}},
      {"config", {"get", "set", "rewrite", "resetstat", "help"}},
      {"acl", {"whoami", "users", "list", "setuser", "deluser", "cat", "getuser", "genpass", "log", "load", "save",
               "dryrun", "help"}},
      {"command", {"count", "docs", "info", "list", "getkeys", "getkeysandflags", "help"}}};
  const auto bar = rule.find('|');
  AclCommand c;
  if (!acl_command({rule.substr(0, bar)}, c)) return false;
  if (bar == std::string::npos) return true;
  auto it = subcommands.find(rule.substr(0, bar));
  return it == subcommands.end() || it->second.count(rule.substr(bar + 1)) > 0;
}

// Why this client may not run the command now (NOAUTH, NOPERM), or empty.
inline std::string Runtime::client_refusal(ClientConn& conn, const std::vector<std::string>& words) {
  AclCommand c;
  const bool known = acl_command(words, c);
  // How a client authenticates or leaves; HELLO without AUTH checks for itself.
  if (c.name == "auth" || c.name == "hello" || c.name == "quit") return "";
  std::lock_guard<std::mutex> lock(acl_mu_);
  // Before authentication nothing else runs, not even an unknown command's error (unlike
  // Redis, which names it): a stranger learns nothing, whatever connection_command handles.
  if (!conn.authenticated && acl_.auth_required()) return "NOAUTH Authentication required.";
  if (!known) return "";  // the unknown-command error
  const AclUser* user = acl_.find(conn.user);
  if (user == nullptr) {
    conn.close_after_flush = true;  // as Redis closes the connections of a deleted user
    return "NOPERM the user '" + conn.user + "' was deleted; closing the connection";
  }
  return Acl::refusal(user, c);
}

inline bool Runtime::authenticate(ClientConn* conn, const std::string& user, const std::string& password) {
  {
    std::lock_guard<std::mutex> lock(acl_mu_);
    if (!acl_.authenticate(user, password)) return false;
  }
  conn->user = user;
  conn->authenticated = true;
  return true;
}

// ACL WHOAMI | USERS | LIST | SETUSER name rule... | DELUSER name... | CAT. Users change on
// this node only, as in Redis (see Config::users).
inline Reply Runtime::acl_reply(ClientConn* conn, const std::vector<std::string>& w) {
  if (w.size() < 2) return Reply::error("ERR wrong number of arguments for 'acl' command");
  const std::string sub = lower(w[1]);
  auto wrong = [&] { return Reply::error("ERR wrong number of arguments for 'acl|" + sub + "' command"); };
  std::lock_guard<std::mutex> lock(acl_mu_);
  if (sub == "whoami") return w.size() == 2 ? Reply::bulk(conn ? conn->user : "default") : wrong();
  if (sub == "users" || sub == "list") {
    if (w.size() != 2) return wrong();
    std::vector<Reply> out;
    for (const auto& line : sub == "users" ? acl_.names() : acl_.list()) out.push_back(Reply::bulk(line));
    return Reply::array(std::move(out));
  }
  if (sub == "cat") {
    if (w.size() != 2) return wrong();
    return Reply::array({Reply::bulk("read"), Reply::bulk("write"), Reply::bulk("admin"), Reply::bulk("dangerous"),
                         Reply::bulk("connection")});
  }
  if (sub == "setuser") {
    if (w.size() < 3) return wrong();
    const std::string error = acl_.set_user(w[2], std::vector<std::string>(w.begin() + 3, w.end()),
                                            [this](const std::string& rule) { return acl_rule_names_command(rule); });
    if (!error.empty()) return Reply::error(error);
    log(LogLevel::Info, "ACL: user '" + w[2] + "' set");  // never its rules: they hold passwords
    return Reply::ok();
  }
  if (sub == "deluser") {
    if (w.size() < 3) return wrong();
    for (std::size_t i = 2; i < w.size(); ++i)
      if (w[i] == "default") return Reply::error("ERR The 'default' user cannot be removed");
    std::int64_t deleted = 0;
    for (std::size_t i = 2; i < w.size(); ++i) {
      if (!acl_.del_user(w[i])) continue;
      ++deleted;
      // As Redis does, the user's connections close (once their replies are written). On the
      // poll thread only (conn set): from execute(), each one closes at its next command.
      if (conn)
        for (auto& [id, c] : clients_)
          if (c->authenticated && c->user == w[i]) c->close_after_flush = true;
    }
    if (deleted > 0) log(LogLevel::Info, "ACL: " + std::to_string(deleted) + " user(s) deleted");
    return Reply::integer(deleted);
  }
  return Reply::error("ERR unknown subcommand '" + w[1] + "'. Try ACL HELP.");
}

}  // namespace detail
}  // namespace raft
