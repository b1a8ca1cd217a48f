
namespace raft {

// ---- Config ---------------------------------------------------------------------------------

inline std::string Config::validate() const {
  detail::HostPort hp;
  std::string error;
  if (address.empty()) return "address is required (-a ip:port)";
  if (!detail::parse_host_port(address, hp, error)) return error;
  for (const auto& [nid, addr] : peers) {
    if (nid.empty()) return "a peer has an empty id";
    if (!detail::parse_host_port(addr, hp, error)) return "peer " + nid + ": " + error;
    if (addr == address) return "peer " + nid + " has this node's own address " + addr;
  }
  for (const auto& e : join) {
    auto slash = e.find('/');
    if (!detail::parse_host_port(slash == std::string::npos ? e : e.substr(slash + 1), hp, error)) return "-e: " + error;
  }
  if (!peers.empty() && !join.empty()) return "give either a static peer map or a list to join (-e), not both";
  if (secret.empty() && !second_secret.empty()) return "a second secret needs a first one";
  detail::HostPort own;
  detail::parse_host_port(address, own, error);
  if (secret.empty() && !insecure_peers && own.host.rfind("127.", 0) != 0)
    return "address " + address + " is not a loopback address and no peer secret is set: anyone who reaches port " +
           std::to_string(own.port + 1) + " could join the cluster's traffic. Set a secret (--secret-file PATH or "
           "RAFT_SECRET in the environment; raft::Config::secret), or accept the risk with --insecure-peers "
           "(raft::Config::insecure_peers)";
  const bool tls = !tls_cert_file.empty() || !tls_key_file.empty() || !tls_ca_cert_file.empty();
#ifdef RAFT_OPENSSL_SUPPORT
  if (tls && (tls_cert_file.empty() || tls_key_file.empty() || tls_ca_cert_file.empty()))
    return "TLS needs a certificate, its key and the CA certificates (--tls-cert-file, --tls-key-file, "
           "--tls-ca-cert-file)";
#else
  if (tls)
    return "TLS is not compiled in: build with -DRAFT_OPENSSL_SUPPORT and link -lssl -lcrypto (make TLS=1; "
           "Debian: apt-get install libssl-dev)";
#endif
  if (!load_snapshot.empty() && (!join.empty() || !peers.empty()))
    return "-l founds a cluster of one; joiners (-e) and static peers receive the data from it";
  if (!(time_scale > 0)) return "time_scale must be positive";
  if (tick_ms < 1) return "tick_ms must be at least 1";
  if (heartbeat_ms < tick_ms) return "heartbeat_ms must be at least tick_ms";
  if (election_timeout_ms < 2 * tick_ms || election_timeout_ms <= heartbeat_ms)
    return "election_timeout_ms must exceed heartbeat_ms and be at least two ticks";
  if (append_timeout_ms < tick_ms || read_timeout_ms < tick_ms || send_timeout_ms < 1 || join_retry_ms < 1)
    return "timeouts must be positive";
  if (max_clients < 1) return "max_clients must be at least 1";
  if (client_timeout_s < 0 || partial_command_timeout_s < 0 || checkpoint_interval_s < 0)
    return "client_timeout_s, partial_command_timeout_s and checkpoint_interval_s must not be negative";
  if (max_command_bytes < 1 || max_command_bytes > detail::kMaxCommandBytes)
    return "max_command_bytes must be between 1 and " + std::to_string(detail::kMaxCommandBytes) +
           " (the peer protocol carries a write in one message)";
  if (client_limits.max_bulk_length < 1 || client_limits.max_bulk_length > detail::kProtoMaxBulkLen)
    return "client_limits.max_bulk_length (proto-max-bulk-len) must be between 1 and " +
           std::to_string(detail::kProtoMaxBulkLen);
  if (client_limits.max_multibulk_length > detail::kMaxCommandWords)
    return "client_limits.max_multibulk_length must be at most " + std::to_string(detail::kMaxCommandWords);
  if (client_query_buffer_limit < (std::size_t{1} << 20))
    return "client_query_buffer_limit must be at least 1 MiB (Redis's minimum)";
  if (max_total_client_output < 1) return "max_total_client_output must be positive";
  if (max_voters < 1) return "max_voters must be at least 1";
  if (snapshot_threshold < 1) return "snapshot_threshold must be at least 1";
  if (max_snapshot_bytes < 1) return "max_snapshot_bytes must be positive";
  if (segment_bytes < 4096) return "segment_bytes must be at least 4096";
  detail::Acl acl;
  for (const auto& line : users) {
    std::string why = acl.set_user_line(line);
    if (!why.empty()) return "user '" + line.substr(0, line.find(' ')) + "': " + (why.rfind("ERR ", 0) == 0 ? why.substr(4) : why);
  }
  return "";
}

// ---- Node ------------------------------------------------------------------------------------

inline Node::Node(Config config) : rt_(std::make_unique<detail::Runtime>(*this, std::move(config))) {}
inline Node::Node(Config config, testing::Hooks hooks)
    : rt_(std::make_unique<detail::Runtime>(*this, std::move(config), std::move(hooks))) {}

inline Node::Node(NodeId id, std::string address, std::map<NodeId, std::string> peers) {
  Config c;
  c.id = std::move(id);
  c.address = std::move(address);
  c.peers = std::move(peers);
  rt_ = std::make_unique<detail::Runtime>(*this, std::move(c));
}

inline Node::Node(long long id, std::string address, std::map<long long, std::string> peers) {
  Config c;
  c.id = std::to_string(id);
  c.address = std::move(address);
  for (auto& [nid, addr] : peers) c.peers[std::to_string(nid)] = std::move(addr);
  rt_ = std::make_unique<detail::Runtime>(*this, std::move(c));
}

inline Node::~Node() { rt_->stop(); }

inline Node& Node::handler(const std::string& name, Handler fn, std::string flags, int min_args, int max_args) {
  if (flags.find('w') != std::string::npos && flags.find('e') == std::string::npos)
    throw std::invalid_argument("handler '" + name + "': a write ('w') goes through the log: flags must be \"we\"");
  if (detail::is_reserved_command(name))
    throw std::invalid_argument("handler '" + name + "': names starting with \"__\" are reserved for raft.hpp");
  rt_->handlers_[detail::lower(name)] = Command{std::move(fn), std::move(flags), min_args, max_args};
  return *this;
}
inline Node& Node::handler(const std::string& name, Handler fn, CommandFlags flags, int min_args, int max_args) {
  const char* text = flags == CommandFlags::Read ? "r" : flags == CommandFlags::Write ? "we" : "wes";
  return handler(name, std::move(fn), text, min_args, max_args);
}
inline Node& Node::on_leader(std::function<void(Node&, std::uint64_t)> fn) {
  rt_->on_leader_ = std::move(fn);
  return *this;
}
inline Node& Node::on_follower(std::function<void(Node&)> fn) {
  rt_->on_follower_ = std::move(fn);
  return *this;
}
inline Node& Node::on_candidate(std::function<void(Node&)> fn) {
  rt_->on_candidate_ = std::move(fn);
  return *this;
}
inline void Node::start() { rt_->start(); }
inline void Node::join() { rt_->join(); }
inline void Node::stop() { rt_->stop(); }
inline void Node::request_stop() { rt_->request_stop(); }
inline detail::Runtime& testing::runtime(Node& node) { return *node.rt_; }
inline bool Node::stopping() const { return rt_->stopping(); }
inline const NodeId& Node::id() const { return rt_->id(); }
inline const std::string& Node::address() const { return rt_->address(); }
inline char Node::state() const { return rt_->state(); }
inline Role Node::role() const { return rt_->role(); }
inline std::uint64_t Node::term() const { return rt_->term(); }
inline NodeId Node::leader() const { return rt_->leader(); }
inline std::string Node::leader_address() const { return rt_->leader_address(); }
inline std::uint64_t Node::commit_index() const { return rt_->commit_index(); }
inline std::uint64_t Node::applied_index() const { return rt_->applied_index(); }
inline std::string Node::info() const { return rt_->info(); }
inline void Node::read(const std::function<void(const Store&)>& f) const { rt_->read(f); }
inline std::future<Reply> Node::execute_async(std::vector<std::string> words) { return rt_->execute_async(std::move(words)); }
inline Reply Node::execute(std::vector<std::string> words) { return rt_->execute_async(std::move(words)).get(); }
inline AdminResult Node::add_learner(const NodeId& id, const std::string& address) { return rt_->add_learner(id, address); }
inline AdminResult Node::promote(const NodeId& id) { return rt_->promote(id); }
inline AdminResult Node::remove(const NodeId& id) { return rt_->remove(id); }
inline AdminResult Node::transfer_leadership(const NodeId& to) { return rt_->transfer_leadership(to); }

// ---- the default command line -----------------------------------------------------------------

namespace detail {
/// The peer secrets from a secret file's text (or RAFT_SECRET): the first line, and a second
/// one while the secret changes; line ends (LF or CRLF) are not part of them. "" or the error.
inline std::string parse_secrets(std::string_view text, std::string& secret, std::string& second) {
  std::vector<std::string> lines;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    std::string line(text.substr(at, end - at));
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
    at = end + 1;
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty() || lines[0].empty()) return "holds no secret on its first line";
  if (lines.size() > 2) return "holds more than two lines (a secret, and a second one while the secret changes)";
  secret = lines[0];
  second = lines.size() > 1 ? lines[1] : std::string();
  if (lines.size() > 1 && second.empty()) return "has an empty second line";
  return "";
}
}  // namespace detail

inline std::string usage(const std::string& program) {
  return "usage: " + program +
         " -a IP:PORT [-i NODE_ID] [-e LIST] [-d DATA_DIR] [-l SNAPSHOT] [--secret-file PATH] [--requirepass PASSWORD]\n"
         "    [--user \"NAME RULES\"] [--protected-mode yes|no] [--tls-cert-file P --tls-key-file P --tls-ca-cert-file P\n"
         "    [--tls-auth-clients yes|no|optional]] [--loglevel LEVEL]\n"
         "  -a IP:PORT      this node's address: clients on PORT, peers on PORT+1 (required)\n"
         "  -i NODE_ID      this node's id (default: the address)\n"
         "  -e LIST         join the cluster of these members: NID/IP:PORT or IP:PORT, comma-separated\n"
         "  -d DATA_DIR     log, term, vote and snapshots (default: raft-<id>-<port>)\n"
         "  -l SNAPSHOT     found the cluster with this snapshot (ours or pyraft's .dat)\n"
         "  --secret-file P the peer secret: the file's first line (a second line: a second secret, accepted\n"
         "                  while the secret changes); RAFT_SECRET in the environment works alike\n"
         "  -s SECRET       the peer secret on the command line (every local user sees it in ps)\n"
         "  --insecure-peers  allow no secret on an address that is not loopback\n"
         "  --requirepass PASSWORD  clients must AUTH with this password (the default user's)\n"
         "  --user \"NAME RULES\"    an ACL user, as ACL SETUSER takes it: \"alice on >pw ~* +@read\" (repeatable)\n"
         "  --protected-mode yes|no  without a password, serve only loopback clients (default: yes)\n"
         "  --tls-cert-file P, --tls-key-file P, --tls-ca-cert-file P  TLS on both ports (PEM files; a build\n"
         "                  with RAFT_OPENSSL_SUPPORT): this node's certificate and key, the CA peers and clients\n"
         "                  are checked against\n"
         "  --tls-auth-clients yes|no|optional  clients must present a certificate the CA signed (default: yes)\n"
         "  limits (Redis's names; sizes take Redis's units: 100mb, 1gb; see the README's \"Limits\"):\n"
         "  --maxclients N  clients at once (default 10000, lowered to ulimit -n less 128)\n"
         "  --timeout S     close a client idle for S seconds (default 0: never)\n"
         "  --partial-command-timeout S  close a client that leaves a command unfinished S s (default 30)\n"
         "  --maxmemory SIZE  refuse writes that grow the data beyond SIZE with -OOM (default 0: none)\n"
         "  --maxmemory-policy noeviction  the only policy\n"
         "  --client-query-buffer-limit SIZE  unprocessed input of one client (default 64mb)\n"
         "  --proto-max-bulk-len SIZE  one argument (default 16mb)\n"
         "  --max-command-bytes SIZE  one write (default 16mb)\n"
         "  --client-output-total-limit SIZE  all clients' unsent replies (default 512mb)\n"
         "  --checkpoint-interval S  at most one CHECKPOINT per S seconds (default 1)\n"
         "  --loglevel L    debug, info, warning or error (default: info)\n"
         "  --time-scale X  multiply every timeout by X (slow machines, sanitizer builds)\n"
         "  -h, --help      this help\n"
         "Without -e and without a data directory the node founds a cluster of one and leads it, once it\n"
         "has listened about a second without being contacted by a cluster that counts its address as a member.\n"
         "  ex) " + program + " -i 1 -a 127.0.0.1:5010\n"
         "  ex) " + program + " -i 2 -a 127.0.0.1:5020 -e 127.0.0.1:5010\n";
}

namespace detail {

// What parse_args keeps while it reads the options.
struct ArgsState {
  ParsedArgs& out;
  const char* secret_from = nullptr;  // the option that gave the peer secret
};

// One option of the default command line: its names, whether a value follows it, and what
// it does (an empty string: done; otherwise the error, and parsing stops). `option` is the
// name as given; `value` is empty for an option without one. A new option is a line here
// (and one in usage()).
struct CommandLineOption {
  std::vector<std::string> names;
  bool takes_value;
  std::string (*apply)(ArgsState& s, const std::string& option, const std::string& value);
};

// --secret-file PATH: the peer secret (and a second one, while secrets change) from a file.
inline std::string read_secret_file(ArgsState& s, const std::string& option, const std::string& path) {
  if (s.secret_from != nullptr) return "give the peer secret once (" + std::string(s.secret_from) + " and " + option + ")";
  s.secret_from = "--secret-file";
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return "cannot read the secret file " + path + ": " + std::strerror(errno);
  std::string text;
  char chunk[4096];
  for (std::size_t n; (n = std::fread(chunk, 1, sizeof chunk, f)) > 0;) text.append(chunk, n);
  struct stat st{};
  const bool open_to_others = ::fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0;
  std::fclose(f);
  if (open_to_others) s.out.warnings.push_back("the secret file " + path + " can be read by other users: chmod 600 " + path);
  Config& c = s.out.config;
  const std::string error = parse_secrets(text, c.secret, c.second_secret);
  return error.empty() ? error : "the secret file " + path + " " + error;
}

// The options that take a count (clients, seconds).
inline std::string set_count_option(ArgsState& s, const std::string& a, const std::string& v) {
  std::uint64_t n = 0;
  if (!parse_number(v, n) || n > (std::uint64_t{1} << 31)) return a + " needs a number, not '" + v + "'";
  Config& c = s.out.config;
  if (a == "--maxclients") c.max_clients = static_cast<std::size_t>(n);
  if (a == "--timeout") c.client_timeout_s = static_cast<int>(n);
  if (a == "--partial-command-timeout") c.partial_command_timeout_s = static_cast<int>(n);
  if (a == "--checkpoint-interval") c.checkpoint_interval_s = static_cast<int>(n);
  return "";
}

// The options that take a size in bytes, with Redis's units.
inline std::string set_size_option(ArgsState& s, const std::string& a, const std::string& v) {
  std::uint64_t n = 0;
  if (!parse_memory(v, n) || n > (std::uint64_t{1} << 62))
    return a + " needs a size in bytes (units as Redis's: 100mb, 1gb), not '" + v + "'";
  Config& c = s.out.config;
  if (a == "--maxmemory") c.maxmemory = n;
  if (a == "--client-query-buffer-limit") c.client_query_buffer_limit = static_cast<std::size_t>(n);
  if (a == "--proto-max-bulk-len") c.client_limits.max_bulk_length = static_cast<std::size_t>(n);
  if (a == "--max-command-bytes") c.max_command_bytes = static_cast<std::size_t>(n);
  if (a == "--client-output-total-limit") c.max_total_client_output = static_cast<std::size_t>(n);
  return "";
}

inline std::string set_log_level(ArgsState& s, const std::string&, const std::string& value) {
  const std::string v = lower(value);
  LogLevel& level = s.out.config.log_level;
  if (v == "debug") level = LogLevel::Debug;
  else if (v == "info") level = LogLevel::Info;
  else if (v == "warning" || v == "warn") level = LogLevel::Warning;
  else if (v == "error") level = LogLevel::Error;
  else return "unknown log level '" + v + "'";
  return "";
}

// -e LIST: the members to ask to join, comma-separated.
inline std::string add_join_targets(ArgsState& s, const std::string&, const std::string& v) {
  std::size_t start = 0;
  while (start <= v.size()) {
    auto comma = v.find(',', start);
    std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) s.out.config.join.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return "";
}

// An option that sets one string of the Config.
template <std::string Config::*field>
std::string set_string_option(ArgsState& s, const std::string&, const std::string& v) {
  s.out.config.*field = v;
  return "";
}

inline const std::vector<CommandLineOption>& command_line_options() {
  using S = ArgsState;
  using Str = const std::string&;
  static const std::vector<CommandLineOption> options = {
      {{"-a", "--addr"}, true, set_string_option<&Config::address>},
      {{"-i", "--nid"}, true, set_string_option<&Config::id>},
      {{"-e", "--ensemble"}, true, add_join_targets},
      {{"-d", "--data"}, true, set_string_option<&Config::data_dir>},
      {{"-l", "--load"}, true, set_string_option<&Config::load_snapshot>},
      {{"-s", "--secret"}, true,
       [](S& s, Str a, Str v) {
         s.out.config.secret = v;
         if (s.secret_from != nullptr) return "give the peer secret once (" + std::string(s.secret_from) + " and " + a + ")";
         s.secret_from = "-s";
         s.out.warnings.push_back("the peer secret given with " + a +
                                  " shows in ps to every local user: use --secret-file PATH or RAFT_SECRET instead");
         return std::string();
       }},
      {{"--requirepass"}, true, set_string_option<&Config::requirepass>},
      {{"--user"}, true, [](S& s, Str, Str v) { s.out.config.users.push_back(v); return std::string(); }},
      {{"--protected-mode"}, true,
       [](S& s, Str, Str value) {
         const std::string v = lower(value);
         if (v != "yes" && v != "no") return "--protected-mode takes yes or no, not '" + v + "'";
         s.out.config.protected_mode = v == "yes";
         return std::string();
       }},
      {{"--tls-cert-file"}, true, set_string_option<&Config::tls_cert_file>},
      {{"--tls-key-file"}, true, set_string_option<&Config::tls_key_file>},
      {{"--tls-ca-cert-file"}, true, set_string_option<&Config::tls_ca_cert_file>},
      {{"--tls-auth-clients"}, true,
       [](S& s, Str, Str value) {
         const std::string v = lower(value);
         if (v != "yes" && v != "no" && v != "optional")
           return "--tls-auth-clients takes yes, no or optional, not '" + v + "'";
         s.out.config.tls_auth_clients =
             v == "yes" ? TlsAuthClients::Yes : v == "no" ? TlsAuthClients::No : TlsAuthClients::Optional;
         return std::string();
       }},
      {{"--secret-file"}, true, read_secret_file},
      {{"--insecure-peers"}, false, [](S& s, Str, Str) { s.out.config.insecure_peers = true; return std::string(); }},
      {{"--maxclients", "--timeout", "--partial-command-timeout", "--checkpoint-interval"}, true, set_count_option},
      {{"--maxmemory", "--client-query-buffer-limit", "--proto-max-bulk-len", "--max-command-bytes",
        "--client-output-total-limit"},
       true, set_size_option},
      {{"--maxmemory-policy"}, true,
       [](S&, Str, Str v) {
         return lower(v) == "noeviction" ? std::string()
                                         : "--maxmemory-policy: only noeviction is supported, not '" + v + "'";
       }},
      {{"--time-scale"}, true,
       [](S& s, Str, Str v) {
         char* end = nullptr;
         double& scale = s.out.config.time_scale;
         scale = std::strtod(v.c_str(), &end);
         if (end == v.c_str() || *end != '\0' || !(scale > 0)) return "--time-scale needs a positive number, not '" + v + "'";
         return std::string();
       }},
      {{"--loglevel", "-loglevel"}, true, set_log_level},
  };
  return options;
}

inline const CommandLineOption* find_command_line_option(const std::string& name) {
  for (const CommandLineOption& o : command_line_options())
    for (const std::string& n : o.names)
      if (n == name) return &o;
  return nullptr;
}

}  // namespace detail

inline ParsedArgs parse_args(int argc, char** argv) {
  ParsedArgs out;
  Config& c = out.config;
  detail::ArgsState state{out};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      out.help = true;
      return out;
    }
    const detail::CommandLineOption* option = detail::find_command_line_option(a);
    if (option == nullptr) {
      out.error = "unknown option '" + a + "'";
      return out;
    }
    std::string value;
    if (option->takes_value) {
      if (i + 1 >= argc) {
        out.error = "option " + a + " needs a value";
        return out;
      }
      value = argv[++i];
    }
    out.error = option->apply(state, a, value);
    if (!out.error.empty()) return out;
  }
  const char* env = std::getenv("RAFT_SECRET");
  if (state.secret_from == nullptr && env != nullptr && *env != '\0') {
    out.error = detail::parse_secrets(env, c.secret, c.second_secret);
    if (!out.error.empty()) {
      out.error = "RAFT_SECRET " + out.error;
      return out;
    }
  }
  if (c.id.empty()) c.id = c.address;
  out.error = c.validate();
  return out;
}

inline std::unique_ptr<Node> make_default_node(int argc, char** argv) {
  std::string program = argc > 0 ? argv[0] : "run_raft";
  ParsedArgs p = parse_args(argc, argv);
  if (p.help) {
    std::fputs(usage(program).c_str(), stdout);
    std::exit(0);
  }
  if (!p.error.empty()) {
    std::fprintf(stderr, "%s: %s\n%s", program.c_str(), p.error.c_str(), usage(program).c_str());
    std::exit(2);
  }
  for (const std::string& w : p.warnings) std::fprintf(stderr, "%s: warning: %s\n", program.c_str(), w.c_str());
  return std::make_unique<Node>(std::move(p.config));
}

}  // namespace raft
