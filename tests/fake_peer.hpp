// Peers played by hand in tests: both sides of the peer handshake (section 5, "peer
// authentication") over plain sockets, with the library's own pieces, so that a test can speak
// the peer protocol to a node - as a node that connects to it, or as one its links connect to.
#pragma once

#include "raft.hpp"

#include <string>
#include <vector>

namespace test_support {

/// An outbound peer connection: HELLO as node `id` (to node `to`, "" for whoever is there),
/// the handshake with `secret`, and the node's first answer (WELCOME or a refusal) in
/// `answer`. True when the handshake completed; then `session` seals what follows.
inline bool peer_hello(int fd, const std::string& cluster_id, const std::string& id, const std::string& server_id,
                       const std::string& address, const std::string& to, raft::detail::PeerSession& session,
                       resp::Value& answer, int timeout_ms, const std::string& secret = "") {
  using namespace raft::detail;
  const std::vector<std::string> hello{"HELLO", kPeerProtocolVersion, cluster_id, id, server_id, address, to,
                                       new_handshake_nonce()};
  std::string error;
  bool refused = false;
  if (!connector_handshake(fd, hello, {secret}, timeout_ms, -1, session, error, refused)) {
    answer = resp::Value::error(error);
    return false;
  }
  resp::ReplyParser parser;
  if (!recv_sealed_value(fd, session, parser, answer, timeout_ms, -1, error)) answer = resp::Value::error(error);
  return true;
}

/// Sends `words` as one message in the session's frames.
inline bool peer_send(int fd, raft::detail::PeerSession& session, const std::vector<std::string>& words) {
  std::string plain, wire;
  resp::write_command(plain, words);
  session.seal(plain, wire);
  return raft::detail::send_all(fd, wire.data(), wire.size());
}

/// An inbound peer connection (a node's link connected to a port the test listens on): answers
/// the handshake with `secret`, then WELCOME (unless told to wait), then gives the plain bytes
/// of the messages that follow.
class PeerInbound {
 public:
  explicit PeerInbound(int fd, const std::string& secret = "", bool welcome = true)
      : fd_(fd), handshake_({secret}, ""), welcome_(welcome) {}
  int fd() const { return fd_; }
  bool open() const { return session_.is_open(); }
  /// Takes bytes received on the connection; the handshake's answers go out at once. False
  /// when the handshake failed or a frame did not check.
  bool take(const char* data, std::size_t n) {
    using raft::detail::ListenerHandshake;
    if (!session_.is_open()) {
      std::string wire;
      const ListenerHandshake::State st = handshake_.take(data, n, wire);
      if (!wire.empty() && !raft::detail::send_all(fd_, wire.data(), wire.size())) return false;
      if (st == ListenerHandshake::State::Refused) return false;
      if (st == ListenerHandshake::State::Waiting) return true;
      hello_ = handshake_.hello();
      session_ = std::move(handshake_.session());
      const std::string rest = handshake_.rest();
      if (welcome_ && !send_welcome()) return false;
      return rest.empty() || take(rest.data(), rest.size());
    }
    std::string error;
    return session_.open(data, n, plain_, error);
  }
  bool send_welcome() {
    std::string wire;
    session_.seal("+WELCOME\r\n", wire);
    return raft::detail::send_all(fd_, wire.data(), wire.size());
  }
  /// HELLO's words once the handshake completed.
  const std::vector<std::string>& hello() const { return hello_; }
  /// The messages' bytes received so far (the caller takes them).
  std::string& plain() { return plain_; }

 private:
  int fd_;
  raft::detail::ListenerHandshake handshake_;
  raft::detail::PeerSession session_;
  std::vector<std::string> hello_;
  std::string plain_;
  bool welcome_;
};

}  // namespace test_support
