
namespace raft {
namespace detail {

// ---- clients: passwords, users and what they may run (Redis's AUTH and ACL) ----------------

// Passwords are kept as their SHA-256 digests (section 1b), compared as digests, and shown by
// ACL LIST as Redis shows them (#<hex>).
inline std::string sha256_hex(std::string_view data) {
  Sha256 h;
  h.update(data.data(), data.size());
  return to_hex(h.finish());
}

// The command categories ACL rules name (+@read ...). A command belongs to one: data reads
// (and the read-only status INFO and ROLE), data writes, administration, or the connection's
// own commands. @dangerous is Redis's wider name for administration; @all is every command.
enum AclCategory : unsigned { kAclRead = 1, kAclWrite = 2, kAclAdmin = 4, kAclConnection = 8 };

inline unsigned acl_category_bits(std::string_view name) {
  if (name == "read") return kAclRead;
  if (name == "write") return kAclWrite;
  if (name == "admin" || name == "dangerous") return kAclAdmin;
  if (name == "connection") return kAclConnection;
  if (name == "all") return ~0u;
  return 0;
}

/// What an ACL check needs to know of a command.
struct AclCommand {
  std::string name;  // lower-case
  std::string sub;   // the subcommand of a container command (CONFIG SET, ACL SETUSER...), lower-case
  unsigned category = kAclConnection;
  bool keyed = false;  // names keys: needs a user with allkeys (~*)
  /// As Redis names it in -NOPERM: "set", "config|set".
  std::string full_name() const { return sub.empty() ? name : name + "|" + sub; }
};

/// One user: Redis's model, reduced to what raft.hpp supports: on/off, passwords (as SHA-256
/// digests) or nopass, all keys or none, all channels or none (there is no pub/sub; kept so
/// ACL LIST reads as Redis's), and command rules applied in order, the last match deciding.
struct AclUser {
  std::string name;
  bool enabled = false;
  bool nopass = false;
  std::vector<std::string> passwords;  // SHA-256 hex digests
  bool all_keys = false;
  bool all_channels = false;
  std::vector<std::string> command_rules;  // "+@read", "-set", "+config|get"; lower-case

  bool permits(const AclCommand& c) const {
    bool allowed = false;
    for (const auto& rule : command_rules) {
      std::string_view body = std::string_view(rule).substr(1);
      bool matches;
      if (body.size() > 1 && body[0] == '@') {
        matches = (acl_category_bits(body.substr(1)) & c.category) != 0;
      } else {
        const auto bar = body.find('|');
        matches = bar == std::string_view::npos ? body == c.name
                                                : body.substr(0, bar) == c.name && body.substr(bar + 1) == c.sub;
      }
      if (matches) allowed = rule[0] == '+';
    }
    return allowed;
  }
  bool accepts_password(const std::string& password) const {
    if (nopass) return true;
    const std::string digest = sha256_hex(password);
    bool found = false;
    for (const auto& p : passwords) found |= p == digest;
    return found;
  }
  /// As ACL LIST shows it: "user alice on #<sha256> ~* resetchannels -@all +@read".
  std::string describe() const {
    std::string s = "user " + name + (enabled ? " on" : " off");
    if (nopass) s += " nopass";
    for (const auto& p : passwords) s += " #" + p;
    if (all_keys) s += " ~*";
    s += all_channels ? " &*" : " resetchannels";
    if (command_rules.empty() || (command_rules[0] != "+@all" && command_rules[0] != "-@all")) s += " -@all";
    for (const auto& r : command_rules) s += " " + r;
    return s;
  }
};

/// The users of one node and the rules that change them (ACL SETUSER's modifiers). Not
/// thread-safe: the runtime holds acl_mu_.
class Acl {
 public:
  Acl() {
    AclUser d;
    d.name = "default";
    d.enabled = d.nopass = d.all_keys = d.all_channels = true;
    d.command_rules = {"+@all"};
    users_["default"] = d;
  }

  /// ACL SETUSER name modifier...: all or nothing. Empty on success, else Redis's error
  /// (without the leading '-'). `known_command` says whether +name/-name ("get",
  /// "config|set") names a command (null: any name is taken, for Config::users checked
  /// before handlers are registered).
  std::string set_user(const std::string& name, const std::vector<std::string>& modifiers,
                       const std::function<bool(const std::string&)>& known_command) {
    if (name.empty() || name.find_first_of(std::string(" \0", 2)) != std::string::npos)
      return "ERR Usernames can't contain spaces or null characters";
    AclUser u;
    auto it = users_.find(name);
    if (it != users_.end()) u = it->second;
    u.name = name;
    for (const auto& m : modifiers) {
      const std::string why = apply(u, m, known_command);
      if (!why.empty()) return "ERR Error in ACL SETUSER modifier '" + m + "': " + why;
    }
    users_[name] = std::move(u);
    return "";
  }
  /// A Config::users entry: "name modifier...".
  std::string set_user_line(const std::string& line) {
    std::vector<std::string> words;
    std::size_t at = 0;
    while (at < line.size()) {
      const std::size_t end = std::min(line.find(' ', at), line.size());
      if (end > at) words.push_back(line.substr(at, end - at));
      at = end + 1;
    }
    if (words.empty()) return "an empty user entry";
    const std::string name = words[0];
    words.erase(words.begin());
    return set_user(name, words, nullptr);
  }
  bool del_user(const std::string& name) { return users_.erase(name) > 0; }
  const AclUser* find(const std::string& name) const {
    auto it = users_.find(name);
    return it == users_.end() ? nullptr : &it->second;
  }
  bool authenticate(const std::string& name, const std::string& password) const {
    const AclUser* u = find(name);
    return u != nullptr && u->enabled && u->accepts_password(password);
  }
  /// Redis's rule: clients must authenticate unless the default user is on and needs no password.
  bool auth_required() const {
    const AclUser* d = find("default");
    return d == nullptr || !d->enabled || !d->nopass;
  }
  /// Protected mode applies while the default user has no password (Redis checks nopass alone).
  bool default_without_password() const {
    const AclUser* d = find("default");
    return d != nullptr && d->nopass;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [n, u] : users_) out.push_back(n);
    return out;
  }
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    for (const auto& [n, u] : users_) out.push_back(u.describe());
    return out;
  }
  /// Empty when `user` may run `c`, else the -NOPERM error (without the '-').
  static std::string refusal(const AclUser* user, const AclCommand& c) {
    if (user == nullptr) return "NOPERM this user no longer exists";
    if (!user->permits(c)) return "NOPERM this user has no permissions to run the '" + c.full_name() + "' command";
    if (c.keyed && !user->all_keys) return "NOPERM this user has no permissions to access one of the keys used as arguments";
    return "";
  }

 private:
  static bool is_lower_hex64(std::string_view s) {
    if (s.size() != 64) return false;
    for (char ch : s)
      if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
    return true;
  }
  static std::string apply(AclUser& u, const std::string& m,
                           const std::function<bool(const std::string&)>& known_command) {
    const std::string low = lower(m);
    if (low == "on") u.enabled = true;
    else if (low == "off") u.enabled = false;
    else if (low == "nopass") u.nopass = true, u.passwords.clear();
    else if (low == "resetpass") u.nopass = false, u.passwords.clear();
    else if (low == "allkeys" || m == "~*") u.all_keys = true;
    else if (low == "resetkeys") u.all_keys = false;
    else if (low == "allchannels" || m == "&*") u.all_channels = true;
    else if (low == "resetchannels") u.all_channels = false;
    else if (low == "allcommands") u.command_rules = {"+@all"};
    else if (low == "nocommands") u.command_rules = {"-@all"};
    else if (low == "reset") {
      u = AclUser{u.name, false, false, {}, false, false, {"-@all"}};
    } else if (m[0] == '>' || m[0] == '#') {
      const std::string digest = m[0] == '>' ? sha256_hex(std::string_view(m).substr(1)) : m.substr(1);
      if (m[0] == '#' && !is_lower_hex64(digest))
        return "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters";
      if (std::find(u.passwords.begin(), u.passwords.end(), digest) == u.passwords.end()) u.passwords.push_back(digest);
      u.nopass = false;
    } else if (m[0] == '<' || m[0] == '!') {
      const std::string digest = m[0] == '<' ? sha256_hex(std::string_view(m).substr(1)) : m.substr(1);
      if (m[0] == '!' && !is_lower_hex64(digest))
        return "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters";
      auto at = std::find(u.passwords.begin(), u.passwords.end(), digest);
      if (at == u.passwords.end()) return "The password you are trying to remove from the user does not exist";
      u.passwords.erase(at);
    } else if (m[0] == '~' || m[0] == '%') {
      return "key patterns other than ~* (allkeys) are not supported by raft.hpp";
    } else if (m[0] == '&') {
      return "channel patterns other than &* (allchannels) are not supported by raft.hpp";
    } else if ((m[0] == '+' || m[0] == '-') && m.size() > 1) {
      std::string body = low.substr(1);
      if (body[0] == '@') {
        if (acl_category_bits(std::string_view(body).substr(1)) == 0) return "Unknown command or category name in ACL";
        if (body == "@all") {
          u.command_rules = {low};
          return "";
        }
      } else if (known_command && !known_command(body)) {
        return "Unknown command or category name in ACL";
      }
      u.command_rules.push_back(low);
    } else {
      return "Syntax error";
    }
    return "";
  }
  std::map<std::string, AclUser> users_;
};

/// A client address that protected mode serves: the loopback network, 127.0.0.0/8.
inline bool is_loopback_client(const sockaddr_in& from) { return (ntohl(from.sin_addr.s_addr) >> 24) == 127; }

// What a client outside the loopback network reads, then the connection closes: Redis's
// -DENIED, saying how to open the node up.
constexpr const char* kProtectedModeDenied =
    "-DENIED raft.hpp is running in protected mode because protected mode is enabled and no password is set for "
    "the default user. In this mode connections are only accepted from the loopback interface. If you want to "
    "connect from other computers, either: 1) set a password: 'CONFIG SET requirepass PASSWORD' from the "
    "loopback interface, or restart the node with '--requirepass PASSWORD' (Config::requirepass); or 2) if the "
    "network is trusted, disable protected mode: 'CONFIG SET protected-mode no' from the loopback interface, or "
    "restart the node with '--protected-mode no' (Config::protected_mode = false). You only need one of them.\r\n";

}  // namespace detail
}  // namespace raft
