// INFO as Redis tools read it, LATENCY, and CONFIG SET of Redis's encoding tunables: field
// names and replies beside a real redis-server, and values that must be true here.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "in_process.hpp"
#include "proc.hpp"

namespace {

using in_process::TestNode;
using proc::show;

// Test numbers (the third byte of the in-process addresses): 238 and 239 (264 and up are not IPv4 octets).

int client_port(const raft::Node& n) { return std::stoi(n.address().substr(n.address().find(':') + 1)); }
std::string client_ip(const raft::Node& n) { return n.address().substr(0, n.address().find(':')); }
proc::Client connect(const raft::Node& n) { return proc::Client(client_ip(n), client_port(n)); }

// INFO's text as (section, field) -> value.
using Fields = std::map<std::pair<std::string, std::string>, std::string>;
Fields parse_info(const std::string& text) {
  Fields f;
  std::string section;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t eol = text.find("\r\n", at);
    if (eol == std::string::npos) eol = text.size();
    const std::string line = text.substr(at, eol - at);
    at = eol + 2;
    if (line.rfind("# ", 0) == 0) {
      section = line.substr(2);
    } else if (!line.empty()) {
      const std::size_t colon = line.find(':');
      f[{section, line.substr(0, colon)}] = colon == std::string::npos ? "" : line.substr(colon + 1);
    }
  }
  return f;
}
std::string field(const Fields& f, const std::string& name) {
  for (const auto& [k, v] : f)
    if (k.second == name) return v;
  return "<absent>";
}
// -?[0-9]+(\.[0-9]+)? (without <regex>: g++ 12 warns falsely inside it under ASan).
bool is_decimal(const std::string& v) {
  const auto digits = [&](std::size_t from) {
    std::size_t to = from;
    while (to < v.size() && v[to] >= '0' && v[to] <= '9') ++to;
    return to;
  };
  const std::size_t start = !v.empty() && v[0] == '-' ? 1 : 0;
  std::size_t at = digits(start);
  if (at == start) return false;
  if (at < v.size() && v[at] == '.') {
    const std::size_t frac = digits(at + 1);
    if (frac == at + 1) return false;
    at = frac;
  }
  return at == v.size();
}
// A slave line's "k=v,..." pairs in order.
std::vector<std::pair<std::string, std::string>> pairs_of(const std::string& v) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t at = 0;
  while (at <= v.size()) {
    std::size_t comma = v.find(',', at);
    if (comma == std::string::npos) comma = v.size();
    const std::string item = v.substr(at, comma - at);
    const std::size_t eq = item.find('=');
    out.emplace_back(item.substr(0, eq), eq == std::string::npos ? "" : item.substr(eq + 1));
    at = comma + 1;
  }
  return out;
}
// What kind of value a field holds: a number, "k=v,..." pairs (by their keys), or text.
std::string shape(const std::string& v) {
  if (is_decimal(v)) return "number";
  if (v.find('=') != std::string::npos) {
    std::string keys;
    std::size_t at = 0;
    while (at < v.size()) {
      std::size_t comma = v.find(',', at);
      if (comma == std::string::npos) comma = v.size();
      keys += v.substr(at, v.find('=', at) - at) + ",";
      at = comma + 1;
    }
    return "pairs:" + keys;
  }
  return "text";
}
// Redis's keyspace line less avg_ttl (an estimate Redis samples; not kept here).
std::string without_avg_ttl(const std::string& v) { return v.substr(0, v.find(",avg_ttl=")); }
// A CONFIG GET reply as sorted pairs (Redis's order is its dictionary's).
std::map<std::string, std::string> config_pairs(const resp::Value& v) {
  std::map<std::string, std::string> m;
  for (std::size_t i = 0; i + 1 < v.elements.size(); i += 2) m[v.elements[i].str] = v.elements[i + 1].str;
  return m;
}
// Our fields that Redis 7.0 has no field for: this node's own.
bool ours_only(const std::string& section, const std::string& name) {
  return section == "Raft" || name == "raft_hpp_version" || name == "total_client_output_bytes";
}

// An HTTP GET of `path` on 127.0.0.1:port: the whole response ("" if it could not connect).
std::string http_get(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return out;
}
// A metric's line in the exporter's text ("name value" or "name{labels} value"), or "".
std::string metric(const std::string& text, const std::string& name) {
  std::istringstream lines(text);
  for (std::string l; std::getline(lines, l);)
    if (l.rfind(name + " ", 0) == 0 || l.rfind(name + "{", 0) == 0) return l;
  return "";
}

std::string start_node(TestNode& n) {
  n->start();
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return n->state() == 'l'; }));
  return n->address();
}

}  // namespace

TEST_CASE("INFO's sections and field names are Redis 7.0's, with values of the same shape, beside a real "
          "redis-server; LATENCY and CONFIG SET of the encoding tunables reply as Redis's",
          "[runtime][info][redis]") {
  if (!proc::RedisServer::installed()) {
    WARN("redis-server is not installed: INFO is not compared with Redis's");
    return;
  }
  proc::TempDir dir("info-redis");
  proc::RedisServer redis(dir);
  REQUIRE(redis.port() != 0);
  TestNode n(in_process::node_config("1", in_process::address(238, 1)));
  start_node(n);
  proc::Client theirs("127.0.0.1", redis.port());
  proc::Client ours = connect(*n);
  // The same commands on both: counts, an error of each kind, a key with a TTL.
  for (const std::vector<std::string>& w :
       std::vector<std::vector<std::string>>{{"SET", "a", "1"}, {"SET", "b", "x", "EX", "100"}, {"GET", "a"},
                                             {"INCR", "b"}, {"LPUSH", "a", "x"}, {"GET"}, {"PING"}})
    CHECK(show(ours.call(w)) == show(theirs.call(w)));

  const Fields mine = parse_info(std::string(ours.call({"INFO", "everything"}).text()));
  const Fields redis_fields = parse_info(std::string(theirs.call({"INFO", "everything"}).text()));
  std::set<std::string> sections;
  for (const auto& [k, v] : mine) {
    sections.insert(k.first);
    if (ours_only(k.first, k.second)) continue;
    INFO(k.first << " / " << k.second << ": ours " << v);
    auto it = redis_fields.find(k);
    REQUIRE(it != redis_fields.end());
    INFO("redis-server's " << it->second);
    CHECK(shape(v) == shape(k.second == "db0" ? without_avg_ttl(it->second) : it->second));
  }
  for (const char* s : {"Server", "Clients", "Memory", "Persistence", "Stats", "Replication", "CPU", "Commandstats",
                        "Errorstats", "Keyspace", "Raft"})
    CHECK(sections.count(s) == 1);
  // The fields the tools read, present on both.
  for (const char* f : {"redis_version", "process_id", "tcp_port", "uptime_in_seconds", "connected_clients",
                        "used_memory", "used_memory_rss", "maxmemory", "total_commands_processed",
                        "instantaneous_ops_per_sec", "rejected_connections", "total_connections_received", "role",
                        "connected_slaves", "master_repl_offset", "used_cpu_sys", "used_cpu_user", "cmdstat_set",
                        "cmdstat_get", "cmdstat_incr", "errorstat_ERR", "errorstat_WRONGTYPE", "db0",
                        "total_error_replies"}) {
    INFO(f);
    CHECK(field(mine, f) != "<absent>");
    CHECK(field(redis_fields, f) != "<absent>");
  }
  // The same counts where both count the same things.
  for (const char* f : {"errorstat_ERR", "errorstat_WRONGTYPE", "connected_clients", "role", "connected_slaves",
                        "total_error_replies"}) {
    INFO(f);
    CHECK(field(mine, f) == field(redis_fields, f));
  }
  CHECK(field(mine, "db0") == without_avg_ttl(field(redis_fields, "db0")));
  auto calls = [](const std::string& v) { return v.substr(0, v.find(',')); };
  for (const char* f : {"cmdstat_set", "cmdstat_get", "cmdstat_incr", "cmdstat_lpush"}) {
    INFO(f << ": ours " << field(mine, f) << ", redis-server's " << field(redis_fields, f));
    CHECK(calls(field(mine, f)) == calls(field(redis_fields, f)));
    CHECK(field(mine, f).substr(field(mine, f).find("rejected_calls")) ==
          field(redis_fields, f).substr(field(redis_fields, f).find("rejected_calls")));
  }

  // Sections as Redis picks them: by name (case-insensitive, several), default without
  // commandstats.
  for (const std::vector<std::string>& w : std::vector<std::vector<std::string>>{
           {"INFO"}, {"INFO", "default"}, {"INFO", "all"}, {"INFO", "CLIENTS"}, {"INFO", "stats", "keyspace"},
           {"INFO", "commandstats"}, {"INFO", "nosuchsection"}}) {
    std::set<std::string> a, b;
    for (const auto& [k, v] : parse_info(std::string(ours.call(w).text())))
      if (k.first != "Raft") a.insert(k.first);
    for (const auto& [k, v] : parse_info(std::string(theirs.call(w).text())))
      if (k.first != "Modules" && k.first != "Latencystats" && k.first != "Cluster") b.insert(k.first);
    INFO(w.back());
    CHECK(a == b);
  }

  // LATENCY: what a Redis with nothing recorded answers.
  for (const std::vector<std::string>& w : std::vector<std::vector<std::string>>{
           {"LATENCY", "LATEST"}, {"LATENCY", "HISTORY", "command"}, {"LATENCY", "RESET"}, {"LATENCY", "reset", "x"},
           {"LATENCY"}, {"LATENCY", "nosuch"}, {"LATENCY", "latest", "x"}, {"LATENCY", "HISTORY"},
           {"LATENCY", "doctor", "x"}, {"LATENCY", "help", "x"}}) {
    INFO(w.back());
    CHECK(show(ours.call(w)) == show(theirs.call(w)));
  }
  CHECK(ours.call({"LATENCY", "HISTOGRAM"}).type == resp::Type::Array);  // RESP2: an empty map
  CHECK(ours.call({"LATENCY", "HISTOGRAM"}).elements.empty());
  CHECK(ours.call({"LATENCY", "DOCTOR"}).type == resp::Type::BulkString);
  CHECK(ours.call({"LATENCY", "HELP"}).elements.size() > 2);

  // CONFIG SET/GET of the encoding tunables, names and aliases, good and bad values.
  for (const std::vector<std::string>& w : std::vector<std::vector<std::string>>{
           {"CONFIG", "GET", "hash-max-listpack-entries"},
           {"CONFIG", "SET", "hash-max-ziplist-entries", "512"},
           {"CONFIG", "GET", "hash-max-listpack-entries"},
           {"CONFIG", "GET", "hash-max-ziplist-entries"},
           {"CONFIG", "SET", "hash-max-listpack-value", "1024"},
           {"CONFIG", "GET", "hash-max-*"},
           {"CONFIG", "SET", "list-max-listpack-size", "-3"},
           {"CONFIG", "GET", "list-max-ziplist-size"},
           {"CONFIG", "SET", "list-max-ziplist-size", "x"},
           {"CONFIG", "SET", "set-max-intset-entries", "-1"},
           {"CONFIG", "SET", "set-max-intset-entries", "1000"},
           {"CONFIG", "GET", "set-max-intset-entries"},
           {"CONFIG", "SET", "zset-max-ziplist-entries", "256"},
           {"CONFIG", "SET", "zset-max-listpack-value", "128"},
           {"CONFIG", "GET", "zset-max-*"},
           {"CONFIG", "SET", "stream-node-max-bytes", "8kb"},
           {"CONFIG", "SET", "stream-node-max-bytes", "lots"},
           {"CONFIG", "GET", "stream-node-max-*"},
           {"CONFIG", "SET", "list-compress-depth", "2"},
           {"CONFIG", "SET", "hll-sparse-max-bytes", "4000"},
           {"CONFIG", "SET", "hll-sparse-max-bytes", "-1"},
           {"CONFIG", "SET", "hll-sparse-max-bytes", "99999999999999999999"},
           {"CONFIG", "SET", "zset-max-ziplist-value", "1k"},
           {"CONFIG", "SET", "set-max-intset-entries", "1k"},
           {"CONFIG", "SET", "list-compress-depth", "-1"},
           {"CONFIG", "SET", "stream-node-max-entries", "99999999999999999999"},
           {"CONFIG", "GET", "*-max-listpack-*"},
           {"CONFIG", "GET", "hll-sparse-max-bytes"},
           {"CONFIG", "GET", "list-compress-depth"}}) {
    std::string text;
    for (const auto& x : w) text += x + " ";
    INFO(text);
    const resp::Value a = ours.call(w), b = theirs.call(w);
    if (w[1] == "GET")
      CHECK(config_pairs(a) == config_pairs(b));
    else
      CHECK(show(a) == show(b));
  }
}

TEST_CASE("INFO's values are true: connected clients, commands and their calls, errors, keys, memory as maxmemory "
          "counts it",
          "[runtime][info]") {
  TestNode n(in_process::node_config("1", in_process::address(238, 2)));
  start_node(n);
  std::vector<proc::Client> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(connect(*n));
  proc::Client& c = clients[0];
  Fields f = parse_info(std::string(c.call({"INFO"}).text()));
  CHECK(field(f, "connected_clients") == "3");
  CHECK(field(f, "role") == "master");
  CHECK(field(f, "connected_slaves") == "0");
  CHECK(field(f, "cmdstat_info") == "<absent>");  // default: no commandstats
  for (int i = 0; i < 7; ++i) REQUIRE(c.call({"SET", "k" + std::to_string(i), "v"}).str == "OK");
  REQUIRE(c.call({"EXPIRE", "k0", "100"}).num == 1);
  CHECK(c.call({"SET"}).type == resp::Type::Error);            // refused before running
  CHECK(c.call({"INCR", "k1"}).type == resp::Type::Error);     // ran and failed
  CHECK(c.call({"NOSUCHCOMMAND"}).type == resp::Type::Error);  // unknown: no cmdstat
  clients.pop_back();
  in_process::eventually(in_process::long_wait(), [&] {
    return field(parse_info(std::string(c.call({"INFO", "clients"}).text())), "connected_clients") == "2";
  });
  f = parse_info(std::string(c.call({"INFO", "all"}).text()));
  CHECK(field(f, "connected_clients") == "2");
  CHECK(field(f, "total_connections_received") == "3");
  const std::string set = field(f, "cmdstat_set");
  CHECK(set.rfind("calls=7,", 0) == 0);
  CHECK(set.find(",rejected_calls=1,failed_calls=0") != std::string::npos);
  CHECK(field(f, "cmdstat_incr").find("calls=1,") == 0);
  CHECK(field(f, "cmdstat_incr").find(",rejected_calls=0,failed_calls=1") != std::string::npos);
  CHECK(field(f, "cmdstat_nosuchcommand") == "<absent>");
  CHECK(field(f, "errorstat_ERR") == "count=3");  // arity, not an integer, unknown command
  CHECK(field(f, "total_error_replies") == "3");
  // SET x7, EXPIRE, INCR, INFO x2 (the ones answered before this one), ...: as many as the calls.
  std::uint64_t calls = 0;
  for (const auto& [k, v] : f)
    if (k.second.rfind("cmdstat_", 0) == 0) calls += std::stoull(v.substr(6, v.find(',') - 6));
  CHECK(std::to_string(calls) == field(f, "total_commands_processed"));
  CHECK(field(f, "db0") == "keys=7,expires=1");
  std::uint64_t used = 0;
  n->read([&](const raft::Store& s) { used = s.used_memory(); });
  CHECK(field(f, "used_memory") == std::to_string(used));
  CHECK(std::stoull(field(f, "used_memory_rss")) > 0);
  CHECK(field(f, "tcp_port") == std::to_string(client_port(*n)));
  CHECK(field(f, "process_id") == std::to_string(::getpid()));
  // Node::info() is the same text.
  CHECK(parse_info(n->info()).count({"Server", "redis_version"}) == 1);
}

TEST_CASE("INFO replication maps Raft's roles: the leader is a master with its followers as slaves at their match "
          "index, a follower a slave of the leader's address with its link up",
          "[runtime][info]") {
  in_process::Cluster c(239, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  REQUIRE(c[leader].execute({"SET", "k", "v"}).str == "OK");
  const std::uint64_t last = c[leader].commit_index();
  // Every follower has the write and the leader knows it (match index, never past what the
  // leader has), and has heard from both.
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] {
    const Fields f = parse_info(c[leader].info());
    const auto offset = [&](const std::string& line) {
      const std::size_t at = line.find("offset=");
      return at == std::string::npos ? 0 : std::stoull(line.substr(at + 7));
    };
    return field(f, "connected_slaves") == "2" && offset(field(f, "slave0")) >= last &&
           offset(field(f, "slave1")) >= last && offset(field(f, "slave0")) <= c[leader].commit_index();
  }));
  const Fields lf = parse_info(c[leader].info());
  CHECK(field(lf, "role") == "master");
  std::set<std::string> ports;
  for (const char* s : {"slave0", "slave1"}) {
    const std::string v = field(lf, s);
    INFO(v);
    const auto p = pairs_of(v);  // ip=..,port=..,state=online,offset=N,lag=N
    REQUIRE(p.size() == 5);
    CHECK(p[0].first == "ip");
    CHECK((p[1].first == "port" && is_decimal(p[1].second)));
    CHECK((p[2].first == "state" && p[2].second == "online"));
    CHECK((p[3].first == "offset" && is_decimal(p[3].second)));
    CHECK((p[4].first == "lag" && is_decimal(p[4].second)));
    ports.insert(p[0].second + ":" + p[1].second);
  }
  std::set<std::string> followers;
  for (int i = 1; i <= 3; ++i)
    if (i != leader) followers.insert(c[i].address());
  CHECK(ports == followers);
  for (int i = 1; i <= 3; ++i) {
    if (i == leader) continue;
    REQUIRE(in_process::eventually(in_process::long_wait(), [&] { return c[i].applied_index() >= last; }));
    const Fields f = parse_info(c[i].info());
    INFO("node " << i << "\n" << c[i].info());
    CHECK(field(f, "role") == "slave");
    CHECK(field(f, "master_host") + ":" + field(f, "master_port") == c[leader].address());
    CHECK(field(f, "master_link_status") == "up");
    CHECK(std::stoi(field(f, "master_last_io_seconds_ago")) >= 0);
    CHECK(std::stoull(field(f, "slave_repl_offset")) >= last);
  }
}

TEST_CASE("prometheus-redis-exporter finds a node up, its clients, memory, commands and role, on the leader and a "
          "follower",
          "[runtime][info][exporter]") {
  if (proc::find_program("prometheus-redis-exporter").empty()) {
    WARN("prometheus-redis-exporter is not installed (Debian: prometheus-redis-exporter): not run");
    return;
  }
  in_process::Cluster c(239, 3);
  c.start();
  const int leader = c.wait_for_leader();
  REQUIRE(leader != 0);
  const int follower = c.other_than(leader);
  REQUIRE(c[leader].execute({"SET", "k", "v"}).str == "OK");
  proc::TempDir dir("info-exporter");
  const int port = proc::free_loopback_port();
  proc::Process exporter("exporter",
                         {"prometheus-redis-exporter", "-redis.addr", "redis://" + c[leader].address(),
                          "-web.listen-address", "127.0.0.1:" + std::to_string(port)},
                         dir);
  std::string text;
  REQUIRE(in_process::eventually(in_process::long_wait(), [&] {
    text = http_get(port, "/metrics");
    return text.find("redis_up") != std::string::npos;
  }));
  INFO(text);
  CHECK(metric(text, "redis_up") == "redis_up 1");
  CHECK(metric(text, "redis_connected_clients") != "");
  CHECK(metric(text, "redis_memory_used_bytes") != "");
  CHECK(metric(text, "redis_commands_processed_total") != "");
  CHECK(metric(text, "redis_db_keys").find("db=\"db0\"} 1") != std::string::npos);
  CHECK(metric(text, "redis_connected_slaves") == "redis_connected_slaves 2");
  CHECK(metric(text, "redis_instance_info").find("role=\"master\"") != std::string::npos);
  const std::string f = http_get(port, "/scrape?target=redis://" + c[follower].address());
  INFO(f);
  CHECK(metric(f, "redis_up") == "redis_up 1");
  CHECK(metric(f, "redis_instance_info").find("role=\"slave\"") != std::string::npos);
  const std::string host = c[leader].address().substr(0, c[leader].address().find(':'));
  const std::string port_of_leader = c[leader].address().substr(c[leader].address().find(':') + 1);
  CHECK(metric(f, "redis_master_link_up") ==
        "redis_master_link_up{master_host=\"" + host + "\",master_port=\"" + port_of_leader + "\"} 1");
  exporter.kill();
}
