// run_ex1: only the leader checks the `url_*` keys every interval; when it dies, the new
// leader takes the checking over. Values are http://host[:port]/path (an HTTP GET; no TLS
// library here, so no https) or host:port (a TCP connect).
//   url_checker -i 1 -a 127.0.0.1:5010 [--interval SECONDS]     (default 5)
//   redis-cli -p 5010 set url_web http://127.0.0.1:8080/
#include <netdb.h>

#include "checker.hpp"
#include "raft.hpp"
#include "signals.hpp"

namespace {

// Connects within 2 s; returns the socket or -1 with `why`.
int connect_to(const std::string& host, const std::string& port, std::string& why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    why = gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      why = std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

// "" when the URL answers, else why not.
std::string check_url(const std::string& url) {
  std::string rest = url, why;
  bool http = false;
  if (rest.rfind("http://", 0) == 0) {
    http = true;
    rest = rest.substr(7);
  } else if (rest.rfind("https://", 0) == 0) {
    return "https needs TLS, which this example does not link; use http:// or host:port";
  }
  std::string hostport = rest.substr(0, rest.find('/'));
  std::string path = rest.size() > hostport.size() ? rest.substr(hostport.size()) : "/";
  std::string host = hostport, port = http ? "80" : "";
  if (auto colon = hostport.rfind(':'); colon != std::string::npos) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  if (port.empty()) return "no port (use http://host/... or host:port)";
  int fd = connect_to(host, port, why);
  if (fd < 0) return why;
  if (!http) {
    ::close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: " + hostport + "\r\nConnection: close\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  char buf[512];
  ssize_t n = ::recv(fd, buf, sizeof buf - 1, 0);
  ::close(fd);
  if (n <= 0) return "no answer";
  std::string status(buf, static_cast<std::size_t>(n));
  status = status.substr(0, status.find("\r\n"));
  // "HTTP/1.1 200 OK": 2xx and 3xx are fine
  auto sp = status.find(' ');
  if (status.rfind("HTTP/", 0) != 0 || sp == std::string::npos) return "not HTTP: " + status;
  char klass = sp + 1 < status.size() ? status[sp + 1] : '?';
  return klass == '2' || klass == '3' ? "" : status.substr(sp + 1);
}

}  // namespace

int main(int argc, char** argv) {
  double interval = examples::take_interval(argc, argv, 5.0);
  auto node = raft::make_default_node(argc, argv);
  examples::LeaderTask checker(*node, interval, [](raft::Node& n) {
    for (const auto& [key, url] : examples::keys_with_prefix(n, "url_")) {
      std::string why = check_url(url);
      if (why.empty())
        std::printf("url %s is ok\n", key.c_str());
      else
        std::printf("url %s is bad - %s\n", key.c_str(), why.c_str());
    }
  });
  node->on_leader([&](raft::Node&, std::uint64_t term) { checker.on_leader(term); });
  examples::StopOnSignal stop_on_signal(*node);
  try {
    node->start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
  node->join();
  return 0;
}
