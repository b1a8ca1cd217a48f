// Clients: requirepass, AUTH and HELLO AUTH, ACL users with read, write and administration
// categories, administration commands refused to strangers, forwarded writes checked against
// the leader's own users, protected mode. Replies are Redis's: the [redis] test sends the same
// commands to a real redis-server and to a node and compares the replies.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>

#include "in_process.hpp"
#include "proc.hpp"

namespace {

using in_process::TestNode;
using proc::show;
using std::chrono::milliseconds;

// Test numbers (the third byte of the in-process addresses): 230 and up.

raft::Config founder(int test, const std::function<void(raft::Config&)>& adjust = {}) {
  raft::Config c = in_process::node_config("1", in_process::address(test, 1));
  if (adjust) adjust(c);
  return c;
}

int client_port(const raft::Node& n) { return std::stoi(n.address().substr(n.address().find(':') + 1)); }
std::string client_ip(const raft::Node& n) { return n.address().substr(0, n.address().find(':')); }

proc::Client connect(const raft::Node& n) { return proc::Client(client_ip(n), client_port(n)); }

bool leads(raft::Node& n) {
  return in_process::eventually(in_process::long_wait(), [&] { return n.state() == 'l'; });
}

const std::string kNoAuth = "-NOAUTH Authentication required.";
const std::string kWrongPass = "-WRONGPASS invalid username-password pair or user is disabled.";

std::string noperm_run(const std::string& command) {
  return "-NOPERM this user has no permissions to run the '" + command + "' command";
}

// Every administration command, with arguments that would change the cluster if it ran.
std::vector<std::vector<std::string>> administration_commands() {
  return {{"RAFT.ADD", "evil", "127.0.0.1:26020"},
          {"add_node", "evil", "127.0.0.1:26020"},
          {"RAFT.PROMOTE", "evil"},
          {"RAFT.REMOVE", "1"},
          {"del_node", "1"},
          {"RAFT.TRANSFER"},
          {"CHECKPOINT"},
          {"CONFIG", "SET", "protected-mode", "no"},
          {"ACL", "SETUSER", "evil", "on", ">x", "~*", "+@all"},
          {"ACL", "DELUSER", "default"},
          {"CLIENT", "KILL", "ID", "1"},
          {"RAFT.LEAVE"},
          {"SHUTDOWN"}};
}

// The name -NOPERM gives a command: "raft.add", "config|set".
std::string acl_name(const std::vector<std::string>& words) {
  std::string name = words[0];
  for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if ((name == "config" || name == "acl" || name == "client") && words.size() > 1) {
    std::string sub = words[1];
    for (auto& ch : sub) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    name += "|" + sub;
  }
  return name;
}

}  // namespace

// ---- the pieces ------------------------------------------------------------------------------

TEST_CASE("sha256_hex matches the FIPS 180-4 vectors and the digests Redis shows in ACL LIST", "[auth]") {
  using raft::detail::sha256_hex;
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // redis-server 7.0: ACL SETUSER alice on >p, then ACL LIST.
  CHECK(sha256_hex("p") == "148de9c5a7a44d19e56cd9ae1a554bf67847afb0c58f6e12fa29ac7ddfca9940");
  CHECK(sha256_hex(std::string(1000, 'a')) == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

TEST_CASE("ACL rules: categories, the last matching rule decides, keys, passwords and Redis's errors",
          "[auth]") {
  using namespace raft::detail;
  Acl acl;
  CHECK_FALSE(acl.auth_required());  // the default user: on, nopass, every command
  CHECK(acl.list() == std::vector<std::string>{"user default on nopass ~* &* +@all"});

  REQUIRE(acl.set_user_line("alice on >p ~* +@read") == "");
  REQUIRE(acl.set_user_line("carol on >r ~* +@all -@admin +checkpoint") == "");
  REQUIRE(acl.set_user_line("bob on >q +@all") == "");
  CHECK(acl.list() == std::vector<std::string>{
                          "user alice on #148de9c5a7a44d19e56cd9ae1a554bf67847afb0c58f6e12fa29ac7ddfca9940 ~* "
                          "resetchannels -@all +@read",
                          "user bob on #8e35c2cd3bf6641bdb0e2050b76932cbb2e6034a0ddacc1d9bea82a6ba57f7cf resetchannels +@all",
                          "user carol on #454349e422f05297191ead13e21d3db520e5abef52055e4964b82fb213f593a1 ~* "
                          "resetchannels +@all -@admin +checkpoint",
                          "user default on nopass ~* &* +@all"});

  const AclCommand get{"get", "", kAclRead, true};
  const AclCommand set{"set", "", kAclWrite, true};
  const AclCommand raft_add{"raft.add", "", kAclAdmin, false};
  const AclCommand checkpoint{"checkpoint", "", kAclAdmin, false};
  const AclCommand config_set{"config", "set", kAclAdmin, false};
  const AclUser* alice = acl.find("alice");
  const AclUser* carol = acl.find("carol");
  const AclUser* bob = acl.find("bob");
  CHECK(Acl::refusal(alice, get) == "");
  CHECK(Acl::refusal(alice, set) == "NOPERM this user has no permissions to run the 'set' command");
  CHECK(Acl::refusal(alice, raft_add) == "NOPERM this user has no permissions to run the 'raft.add' command");
  CHECK(Acl::refusal(carol, set) == "");
  CHECK(Acl::refusal(carol, raft_add) != "");
  CHECK(Acl::refusal(carol, checkpoint) == "");  // +checkpoint after -@admin
  CHECK(Acl::refusal(carol, config_set) == "NOPERM this user has no permissions to run the 'config|set' command");
  CHECK(Acl::refusal(bob, raft_add) == "");  // no keys needed
  CHECK(Acl::refusal(bob, get) == "NOPERM this user has no permissions to access one of the keys used as arguments");
  CHECK(Acl::refusal(nullptr, get) != "");

  CHECK(acl.authenticate("alice", "p"));
  CHECK_FALSE(acl.authenticate("alice", "P"));
  CHECK_FALSE(acl.authenticate("nobody", "p"));
  REQUIRE(acl.set_user("alice", {"off"}, nullptr) == "");
  CHECK_FALSE(acl.authenticate("alice", "p"));  // disabled
  REQUIRE(acl.set_user("alice", {"on", "<p", ">p2"}, nullptr) == "");
  CHECK_FALSE(acl.authenticate("alice", "p"));
  CHECK(acl.authenticate("alice", "p2"));

  // requirepass is the default user's password.
  REQUIRE(acl.set_user("default", {"resetpass", ">s3cr3t"}, nullptr) == "");
  CHECK(acl.auth_required());
  CHECK_FALSE(acl.default_without_password());

  // All or nothing, with Redis's messages.
  CHECK(acl.set_user("dave", {"on", "foo"}, nullptr) == "ERR Error in ACL SETUSER modifier 'foo': Syntax error");
  CHECK(acl.set_user("dave", {"+@nosuch"}, nullptr) ==
        "ERR Error in ACL SETUSER modifier '+@nosuch': Unknown command or category name in ACL");
  CHECK(acl.set_user("dave", {"+nosuch"}, [](const std::string& n) { return n == "get"; }) ==
        "ERR Error in ACL SETUSER modifier '+nosuch': Unknown command or category name in ACL");
  CHECK(acl.set_user("dave", {"~k*"}, nullptr).find("not supported") != std::string::npos);
  CHECK(acl.find("dave") == nullptr);
  CHECK(acl.set_user("a b", {}, nullptr) == "ERR Usernames can't contain spaces or null characters");
  CHECK(acl.set_user_line("eve") == "");
  CHECK(acl.find("eve")->describe() == "user eve off resetchannels -@all");
}

TEST_CASE("Config::validate names a bad ACL user; parse_args reads --requirepass, --user and --protected-mode",
          "[auth]") {
  raft::Config c = in_process::node_config("1", "127.0.0.1:7000");
  c.users = {"alice on >p ~* +@read", "bob on +@nosuch"};
  CHECK(c.validate() == "user 'bob': Error in ACL SETUSER modifier '+@nosuch': Unknown command or category name in ACL");

  std::vector<std::string> args{"run_raft", "-a", "127.0.0.1:7000", "--requirepass", "s3cr3t", "--user",
                                "alice on >p ~* +@read", "--protected-mode", "no"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  raft::ParsedArgs p = raft::parse_args(static_cast<int>(argv.size()), argv.data());
  REQUIRE(p.error == "");
  CHECK(p.config.requirepass == "s3cr3t");
  CHECK(p.config.users == std::vector<std::string>{"alice on >p ~* +@read"});
  CHECK_FALSE(p.config.protected_mode);
  CHECK(raft::Config().protected_mode);  // on by default

  args = {"run_raft", "-a", "127.0.0.1:7000", "--protected-mode", "maybe"};
  argv.clear();
  for (auto& a : args) argv.push_back(a.data());
  CHECK(raft::parse_args(static_cast<int>(argv.size()), argv.data()).error ==
        "--protected-mode takes yes or no, not 'maybe'");
}

// ---- a node --------------------------------------------------------------------------------

TEST_CASE("with requirepass, a client that has not authenticated can run no administration command, "
          "nor any other but AUTH, HELLO and QUIT",
          "[runtime][auth]") {
  TestNode n(founder(230, [](raft::Config& c) { c.requirepass = "s3cr3t"; }));
  n->start();
  REQUIRE(leads(*n));
  const std::string members = in_process::info_field(*n, "raft_members");
  const std::string snapshot_index = in_process::info_field(*n, "raft_snapshot_index");

  proc::Client stranger = connect(*n);
  for (const auto& words : administration_commands()) {
    INFO(words[0]);
    CHECK(show(stranger.call(words)) == kNoAuth);
  }
  for (std::vector<std::string> words : {std::vector<std::string>{"SET", "k", "v"}, {"GET", "k"}, {"PING"}, {"INFO"},
                                         {"ROLE"}, {"ECHO", "a"}, {"SELECT", "0"}, {"CLIENT", "SETNAME", "x"},
                                         {"ACL", "WHOAMI"}, {"DBSIZE"}, {"COMMAND", "COUNT"}, {"NOSUCHCOMMAND"}}) {
    INFO(words[0]);
    CHECK(show(stranger.call(words)) == kNoAuth);
  }
  CHECK(show(stranger.call({"HELLO", "3"})).rfind("-NOAUTH HELLO must be called with the client already authenticated",
                                                  0) == 0);
  CHECK(show(stranger.call({"AUTH", "wrong"})) == kWrongPass);
  CHECK(show(stranger.call({"AUTH", "default", "wrong"})) == kWrongPass);
  CHECK(show(stranger.call({"HELLO", "2", "AUTH", "default", "wrong"})) == kWrongPass);
  CHECK(show(stranger.call({"GET", "k"})) == kNoAuth);  // still

  // Nothing ran: the node leads its cluster of one, took no snapshot and stops for nobody.
  CHECK_FALSE(n->stopping());
  CHECK(n->state() == 'l');
  CHECK(in_process::info_field(*n, "raft_members") == members);
  CHECK(in_process::info_field(*n, "raft_snapshot_index") == snapshot_index);
  CHECK(in_process::stored(*n, "k") == "(none)");

  // The password opens everything to the default user.
  CHECK(show(stranger.call({"AUTH", "s3cr3t"})) == "OK");
  CHECK(show(stranger.call({"SET", "k", "v"})) == "OK");
  CHECK(show(stranger.call({"GET", "k"})) == "v");
  CHECK(show(stranger.call({"ACL", "WHOAMI"})) == "default");
  CHECK(show(stranger.call({"CHECKPOINT"})) == "OK");

  // HELLO 3 AUTH ... SETNAME on a new connection: authenticated, RESP3, named.
  proc::Client hello = connect(*n);
  const resp::Value v = hello.call({"HELLO", "3", "AUTH", "default", "s3cr3t", "SETNAME", "me"});
  REQUIRE(v.type == resp::Type::Map);
  CHECK(show(hello.call({"CLIENT", "GETNAME"})) == "me");
  CHECK(show(hello.call({"GET", "k"})) == "v");
  // QUIT needs nothing.
  proc::Client quitter = connect(*n);
  CHECK(show(quitter.call({"QUIT"})) == "OK");
}

TEST_CASE("a user without +@admin is refused every administration command; INFO and ROLE are not administration; "
          "a read-only user cannot write",
          "[runtime][auth]") {
  TestNode n(founder(231, [](raft::Config& c) {
    c.requirepass = "adminpw";
    c.users = {"reader on >r ~* +@read +@connection", "writer on >w ~* +@read +@write +@connection",
               "ops on >o ~* +@all"};
  }));
  n->start();
  REQUIRE(leads(*n));
  const std::string members = in_process::info_field(*n, "raft_members");

  proc::Client reader = connect(*n), writer = connect(*n), ops = connect(*n);
  REQUIRE(show(reader.call({"AUTH", "reader", "r"})) == "OK");
  REQUIRE(show(writer.call({"AUTH", "writer", "w"})) == "OK");
  REQUIRE(show(ops.call({"HELLO", "2", "AUTH", "ops", "o"})).find("proto") != std::string::npos);
  for (proc::Client* c : {&reader, &writer}) {
    for (const auto& words : administration_commands()) {
      INFO(words[0]);
      CHECK(show(c->call(words)) == noperm_run(acl_name(words)));
    }
  }
  CHECK(show(reader.call({"SET", "k", "v"})) == noperm_run("set"));
  CHECK(show(reader.call({"HSET", "h", "f", "v"})) == noperm_run("hset"));
  CHECK(show(writer.call({"SET", "k", "v"})) == "OK");
  CHECK(show(reader.call({"GET", "k"})) == "v");
  CHECK(reader.call({"INFO", "raft"}).type != resp::Type::Error);
  CHECK(reader.call({"ROLE"}).type != resp::Type::Error);
  CHECK(show(reader.call({"ACL", "WHOAMI"})) == "reader");
  CHECK(show(reader.call({"PING"})) == "PONG");
  CHECK(show(writer.call({"AUTH", "reader", "wrong"})) == kWrongPass);
  CHECK(show(writer.call({"ACL", "WHOAMI"})) == "writer");  // a failed AUTH changes nothing

  CHECK_FALSE(n->stopping());
  CHECK(in_process::info_field(*n, "raft_members") == members);

  // A user with +@all: administration works.
  CHECK(show(ops.call({"CHECKPOINT"})) == "OK");
  CHECK(show(ops.call({"ACL", "SETUSER", "reader", "+@write"})) == "OK");
  CHECK(show(reader.call({"SET", "k", "w"})) == "OK");  // the rules apply at once
  CHECK(show(ops.call({"ACL", "DELUSER", "reader"})) == "1");
  CHECK(reader.wait_closed(proc::scaled(5000)));  // as Redis, closes the deleted user's connections
  CHECK(show(ops.call({"RAFT.ADD", "x", "127.0.0.1:26020"})) == "OK");  // the admin may (x never answers)
}

TEST_CASE("a read-only user cannot write through a follower: the leader checks the forwarded write against its "
          "own users",
          "[runtime][auth]") {
  in_process::Cluster c(232, 3, [](raft::Config& cfg) {
    cfg.requirepass = "pw";
    cfg.users = {"reader on >r ~* +@read"};
  });
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int f = c.other_than(leader);
  raft::Node& follower = c[f];

  proc::Client reader = connect(follower);
  REQUIRE(show(reader.call({"AUTH", "reader", "r"})) == "OK");
  CHECK(show(reader.call({"SET", "k", "v"})) == noperm_run("set"));  // the follower's own check

  // Only the follower lets the reader write (ACL SETUSER changes one node): the leader refuses.
  proc::Client admin = connect(follower);
  REQUIRE(show(admin.call({"AUTH", "pw"})) == "OK");
  REQUIRE(show(admin.call({"ACL", "SETUSER", "reader", "+@write"})) == "OK");
  REQUIRE(show(admin.call({"ACL", "SETUSER", "ghost", "on", ">g", "~*", "+@all"})) == "OK");
  CHECK(show(reader.call({"SET", "k", "v"})) == noperm_run("set"));
  proc::Client ghost = connect(follower);
  REQUIRE(show(ghost.call({"AUTH", "ghost", "g"})) == "OK");
  CHECK(show(ghost.call({"SET", "k", "v"})) == "-NOPERM the user 'ghost' does not exist on the leader (" +
                                                   c[leader].id() + "); give every node the same users");

  // The default user writes through the follower, and so does the embedding program.
  CHECK(show(admin.call({"SET", "k2", "v2"})) == "OK");
  CHECK(in_process::is_ok(follower.execute({"SET", "k3", "v3"})));
  CHECK(in_process::eventually(in_process::long_wait(), [&] {
    for (int i = 1; i <= 3; ++i)
      if (in_process::stored(c[i], "k2") != "v2" || in_process::stored(c[i], "k3") != "v3") return false;
    return true;
  }));
  for (int i = 1; i <= 3; ++i) CHECK(in_process::stored(c[i], "k") == "(none)");

  // Once the leader lets the reader write too, the forwarded write goes through.
  proc::Client leader_admin = connect(c[leader]);
  REQUIRE(show(leader_admin.call({"AUTH", "pw"})) == "OK");
  REQUIRE(show(leader_admin.call({"ACL", "SETUSER", "reader", "+@write"})) == "OK");
  CHECK(show(reader.call({"SET", "k", "v"})) == "OK");
  CHECK(in_process::stored(c[leader], "k") == "v");
}

TEST_CASE("without a password a node serves loopback clients as the default user; AUTH says no password is set",
          "[runtime][auth]") {
  TestNode n(founder(233));
  n->start();
  REQUIRE(leads(*n));
  proc::Client c = connect(*n);
  CHECK(show(c.call({"PING"})) == "PONG");
  CHECK(show(c.call({"SET", "k", "v"})) == "OK");
  CHECK(show(c.call({"ACL", "WHOAMI"})) == "default");
  CHECK(show(c.call({"AUTH", "x"})) ==
        "-ERR AUTH <password> called without any password configured for the default user. Are you sure your "
        "configuration is correct?");
  CHECK(show(c.call({"CONFIG", "SET", "protected-mode", "maybe"})).rfind("-ERR CONFIG SET failed", 0) == 0);
  CHECK(show(c.call({"CONFIG", "SET", "protected-mode", "no"})) == "OK");
  // Giving the default user a password closes the node to clients that have not authenticated.
  CHECK(show(c.call({"CONFIG", "SET", "requirepass", "now"})) == "OK");
  proc::Client late = connect(*n);
  CHECK(show(late.call({"GET", "k"})) == kNoAuth);
  CHECK(show(late.call({"AUTH", "now"})) == "OK");
  CHECK(show(late.call({"GET", "k"})) == "v");
  CHECK(show(late.call({"ACL", "SETUSER", "default", "resetpass", ">again"})) == "OK");
  proc::Client later = connect(*n);
  CHECK(show(later.call({"AUTH", "now"})) == kWrongPass);
  CHECK(show(later.call({"AUTH", "again"})) == "OK");
  CHECK(show(later.call({"CONFIG", "SET", "requirepass", ""})) == "OK");  // back to no password
  CHECK(show(connect(*n).call({"GET", "k"})) == "v");
}

// ---- beside a real redis-server ------------------------------------------------------------------

TEST_CASE("AUTH, HELLO AUTH, ACL SETUSER/LIST/USERS/DELUSER/WHOAMI, -NOAUTH, -NOPERM and -WRONGPASS reply as "
          "redis-server's do",
          "[runtime][auth][redis]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: the replies are not compared with Redis's");
    return;
  }
  proc::TempDir dir("auth-redis");
  proc::RedisServer redis(dir, {"--requirepass", "x"});
  const int port = redis.port();
  REQUIRE(port != 0);
  TestNode n(founder(234, [](raft::Config& c) { c.requirepass = "x"; }));
  n->start();
  REQUIRE(leads(*n));

  // Connections by name, one on each server; each step runs on both and the replies must match.
  std::map<std::string, std::pair<proc::Client, proc::Client>> conns;
  int steps = 0;
  auto step = [&](const std::string& conn, const std::vector<std::string>& words) {
    auto it = conns.find(conn);
    if (it == conns.end())
      it = conns.emplace(conn, std::make_pair(proc::Client("127.0.0.1", port), connect(*n))).first;
    const std::string theirs = show(it->second.first.call(words));
    const std::string ours = show(it->second.second.call(words));
    std::string text;
    for (const auto& w : words) text += w + " ";
    INFO("connection " << conn << ": " << text);
    CHECK(ours == theirs);
    ++steps;
  };
  for (auto words : std::vector<std::vector<std::string>>{
           {"PING"}, {"GET", "k"}, {"SET", "k", "v"}, {"ECHO", "a"}, {"HELLO", "3"}, {"HELLO"}, {"ACL", "WHOAMI"},
           {"CLIENT", "SETNAME", "n"}, {"SHUTDOWN"}, {"CONFIG", "SET", "x", "y"}, {"AUTH", "y"}, {"AUTH", "a", "b"},
           {"AUTH"}, {"AUTH", "a", "b", "c"}, {"HELLO", "2", "AUTH", "default", "y"}, {"HELLO", "2", "AUTH", "bob", "x"},
           {"QUIT"}})
    step("stranger", words);
  for (auto words : std::vector<std::vector<std::string>>{
           {"AUTH", "x"},
           {"ACL", "WHOAMI"},
           {"ACL", "SETUSER", "alice", "on", ">p", "~*", "+@read"},
           {"ACL", "SETUSER", "bob", "on", ">q", "+@all"},
           {"ACL", "SETUSER", "carol", "on", ">r", "~*", "+@all", "-@admin"},
           {"ACL", "SETUSER", "dave", "foo"},
           {"ACL", "SETUSER", "dave", "+@nosuch"},
           {"ACL", "SETUSER", "dave", "+nosuchcommand"},
           {"ACL", "SETUSER", "dave", "#abc"},
           {"ACL", "SETUSER", "dave", "!abc"},
           {"ACL", "SETUSER", "alice", "<nosuch"},
           {"ACL", "SETUSER", "alice", "+config|nosuch"},
           {"ACL", "WHOAMI", "x"},
           {"ACL", "SETUSER"},
           {"ACL", "DELUSER"},
           {"HELLO", "3", "AUTH", "a"},
           {"HELLO", "2", "SETNAME"},
           {"ACL", "SETUSER", "eve"},
           {"ACL", "USERS"},
           {"ACL", "LIST"},
           {"ACL", "DELUSER", "default"},
           {"ACL", "DELUSER", "nobody", "eve"},
           {"ACL", "FOO"},
           {"ACL"},
           {"SET", "k", "v"}})
    step("admin", words);
  for (auto words : std::vector<std::vector<std::string>>{{"AUTH", "alice", "p"},
                                                          {"ACL", "WHOAMI"},
                                                          {"GET", "k"},
                                                          {"SET", "k", "w"},
                                                          {"DEL", "k"},
                                                          {"CONFIG", "SET", "x", "y"},
                                                          {"CONFIG", "GET", "save"},
                                                          {"SHUTDOWN"},
                                                          {"ACL", "SETUSER", "alice", "+@all"},
                                                          {"ACL", "LIST"},
                                                          {"CLIENT", "KILL", "ID", "99"},
                                                          {"PING"},
                                                          {"AUTH", "alice", "wrong"},
                                                          {"HELLO", "2", "AUTH", "alice", "wrong"}})
    step("alice", words);
  for (auto words : std::vector<std::vector<std::string>>{{"AUTH", "bob", "q"}, {"GET", "k"}, {"SET", "k", "w"}})
    step("bob", words);
  for (auto words : std::vector<std::vector<std::string>>{
           {"HELLO", "2", "AUTH", "carol", "wrong"}, {"AUTH", "carol", "r"}, {"SET", "k", "w"}, {"GET", "k"},
           {"SHUTDOWN"}, {"CONFIG", "SET", "x", "y"}, {"ACL", "SETUSER", "carol", "+@admin"}, {"ACL", "WHOAMI"}})
    step("carol", words);
  step("admin", {"ACL", "SETUSER", "alice", "off"});
  step("alice2", {"AUTH", "alice", "p"});  // disabled
  step("admin", {"ACL", "DELUSER", "alice", "bob", "carol"});
  step("admin", {"ACL", "USERS"});
  CHECK(steps > 50);
}

// ---- real processes and clients ------------------------------------------------------------

namespace {

struct ProcNet {
  std::string ip;
  explicit ProcNet(int test) : ip(in_process::ip(test, 1)) {}
  std::string address() const { return ip + ":7000"; }
};

}  // namespace

TEST_CASE("run_raft --requirepass and --user: redis-cli (-a, --user --pass) and redis-py authenticate; strangers "
          "cannot add, remove or stop nodes",
          "[process][auth]") {
  const std::string redis_cli = proc::find_program("redis-cli");
  REQUIRE_FALSE(redis_cli.empty());
  proc::TempDir dir("auth-process");
  ProcNet net(235);
  proc::Process node("run_raft",
                     {proc::example("run_raft"), "-i", "1", "-a", net.address(), "-d", dir / "d1", "--time-scale",
                      std::to_string(proc::time_scale()), "--requirepass", "s3cr3t", "--user",
                      "reader on >r ~* +@read"},
                     dir);
  REQUIRE(node.wait_for_err("leading term", proc::scaled(10000)));
  auto cli = [&](std::vector<std::string> args) {
    std::vector<std::string> argv{redis_cli, "-h", net.ip, "-p", "7000"};
    argv.insert(argv.end(), args.begin(), args.end());
    proc::RunResult r = proc::run("redis-cli", argv, dir, proc::scaled(10000));
    std::string out = r.out + r.err;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  };
  // The attacks of issue 10, from a client with no password.
  CHECK(cli({"RAFT.ADD", "evil", "127.0.0.1:26020"}) == "NOAUTH Authentication required.");
  CHECK(cli({"RAFT.REMOVE", "1"}) == "NOAUTH Authentication required.");
  CHECK(cli({"CHECKPOINT"}) == "NOAUTH Authentication required.");
  CHECK(cli({"SHUTDOWN"}) == "NOAUTH Authentication required.");
  CHECK(cli({"RAFT.LEAVE"}) == "NOAUTH Authentication required.");
  // A read-only user.
  CHECK(cli({"--no-auth-warning", "--user", "reader", "--pass", "r", "SHUTDOWN"}) ==
        "NOPERM this user has no permissions to run the 'shutdown' command");
  CHECK(cli({"--no-auth-warning", "--user", "reader", "--pass", "r", "RAFT.ADD", "evil", "127.0.0.1:26020"}) ==
        "NOPERM this user has no permissions to run the 'raft.add' command");
  CHECK(cli({"--no-auth-warning", "--user", "reader", "--pass", "r", "SET", "k", "v"}) ==
        "NOPERM this user has no permissions to run the 'set' command");
  CHECK(cli({"--no-auth-warning", "--user", "reader", "--pass", "wrong", "GET", "k"}).find("WRONGPASS") !=
        std::string::npos);
  // The password.
  CHECK(cli({"--no-auth-warning", "-a", "s3cr3t", "SET", "k", "v"}) == "OK");
  CHECK(cli({"--no-auth-warning", "--user", "reader", "--pass", "r", "GET", "k"}) == "v");
  CHECK(cli({"--no-auth-warning", "-a", "s3cr3t", "--user", "default", "INFO", "raft"}).find("raft_members:1") !=
        std::string::npos);
  CHECK(node.running());

  // redis-py: password, username and password, a wrong one.
  const std::string script = R"PY(
import sys, redis
host = sys.argv[1]
r = redis.Redis(host=host, port=7000, password='s3cr3t')
assert r.set('py', 'v') is True
assert r.get('py') == b'v'
ro = redis.Redis(host=host, port=7000, username='reader', password='r')
assert ro.get('py') == b'v'
try:
    ro.set('py', 'w')
    raise AssertionError('the reader wrote')
except redis.exceptions.NoPermissionError as e:
    print('noperm', e)
try:
    redis.Redis(host=host, port=7000, password='wrong').ping()
    raise AssertionError('a wrong password was taken')
except redis.exceptions.ResponseError as e:  # as from redis-server: redis-py 4 raises it on connect
    assert str(e).startswith('WRONGPASS'), e
    print('wrongpass', e)
try:
    redis.Redis(host=host, port=7000).get('py')
    raise AssertionError('no password was needed')
except redis.exceptions.AuthenticationError as e:
    print('noauth', e)
print('redis-py ok')
)PY";
  std::ofstream(dir / "auth.py") << script;
  proc::RunResult r = proc::run("python", {"/usr/bin/python3", dir / "auth.py", net.ip}, dir, proc::scaled(30000));
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == 0);
  CHECK(r.out.find("redis-py ok") != std::string::npos);
  CHECK(cli({"--no-auth-warning", "-a", "s3cr3t", "GET", "py"}) == "v");
  CHECK(node.running());
  INFO(proc::output_tails(dir.path()));
  CHECK(node.err().find("s3cr3t") == std::string::npos);  // never in the log
}

namespace {

// A network namespace of the test's own with a veth pair whose ends have the non-loopback
// addresses `net`.1 and `net`.2: a client there connecting to `net`.1 comes from a
// non-loopback address (the kernel picks a local destination's own address as the source).
class Namespace {
 public:
  explicit Namespace(const std::string& name, const std::string& net) : name_(name) {
    run({"ip", "netns", "del", name_});  // left over by a killed run of the same slot
    ok_ = run({"ip", "netns", "add", name_}) && run({"ip", "-n", name_, "link", "set", "lo", "up"}) &&
          run({"ip", "-n", name_, "link", "add", "v0", "type", "veth", "peer", "name", "v1"}) &&
          run({"ip", "-n", name_, "addr", "add", net + ".1/24", "dev", "v0"}) &&
          run({"ip", "-n", name_, "addr", "add", net + ".2/24", "dev", "v1"}) &&
          run({"ip", "-n", name_, "link", "set", "v0", "up"}) && run({"ip", "-n", name_, "link", "set", "v1", "up"});
  }
  ~Namespace() { run({"ip", "netns", "del", name_}); }
  bool ok() const { return ok_; }
  std::vector<std::string> exec(std::vector<std::string> argv) const {
    std::vector<std::string> out{"ip", "netns", "exec", name_};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
  }

 private:
  bool run(const std::vector<std::string>& argv) {
    return proc::run("ip", argv, dir_, proc::scaled(10000)).code == 0;
  }
  proc::TempDir dir_{"auth-netns"};
  std::string name_;
  bool ok_ = false;
};

}  // namespace

TEST_CASE("protected mode: without a password a client from a non-loopback address gets -DENIED saying how to "
          "open the node up; a password or --protected-mode no opens it",
          "[process][auth]") {
  const int slot = test_support::address_slot();
  Namespace ns("raftauth" + std::to_string(slot), "10.213." + std::to_string(slot));
  if (!ns.ok()) {
    WARN("cannot create a network namespace (needs root and iproute2): protected mode is not tested with a "
         "non-loopback client here");
    return;
  }
  const std::string redis_cli = proc::find_program("redis-cli");
  REQUIRE_FALSE(redis_cli.empty());
  proc::TempDir dir("auth-protected");
  const std::string ip = "10.213." + std::to_string(slot) + ".1";
  auto start = [&](const std::string& name, std::vector<std::string> extra) {
    // A full path: `ip netns exec` runs it in the test directory.
    // No peers here: --insecure-peers lets a node on a non-loopback address run without a
    // peer secret.
    std::vector<std::string> argv{std::filesystem::absolute(proc::example("run_raft")).string(), "-i", "1", "-a",
                                  ip + ":7000", "-d", dir / name, "--insecure-peers",
                                  "--time-scale", std::to_string(proc::time_scale())};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto p = std::make_unique<proc::Process>(name, ns.exec(argv), dir);
    INFO(p->err());
    REQUIRE(p->wait_for_err("leading term", proc::scaled(10000)));
    return p;
  };
  auto cli = [&](std::vector<std::string> args) {
    std::vector<std::string> argv{redis_cli, "-h", ip, "-p", "7000"};
    argv.insert(argv.end(), args.begin(), args.end());
    proc::RunResult r = proc::run("redis-cli", ns.exec(argv), dir, proc::scaled(10000));
    return r.out + r.err;
  };
  {
    auto node = start("default", {});
    const std::string reply = cli({"PING"});
    CHECK(reply.find("DENIED") != std::string::npos);
    CHECK(reply.find("protected mode") != std::string::npos);
    CHECK(reply.find("--requirepass") != std::string::npos);
    CHECK(reply.find("--protected-mode no") != std::string::npos);
    CHECK(cli({"SET", "k", "v"}).find("DENIED") != std::string::npos);
    CHECK(node->err().find("protected mode") != std::string::npos);  // said at start
  }
  {
    auto node = start("password", {"--requirepass", "pw"});
    CHECK(cli({"PING"}).find("NOAUTH") != std::string::npos);
    CHECK(cli({"--no-auth-warning", "-a", "pw", "PING"}).find("PONG") != std::string::npos);
  }
  {
    auto node = start("open", {"--protected-mode", "no"});
    CHECK(cli({"PING"}).find("PONG") != std::string::npos);
  }
}
