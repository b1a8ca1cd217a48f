// libFuzzer target: the listener's side of the peer handshake (ListenerHandshake) and the
// authenticated stream after it. The first byte picks how the input is used:
//   even: the raw bytes a stranger sends to the peer port, in pieces. Without the secret no
//         input may open a session; a refusal is final.
//   odd:  the fuzzer plays a connector: a well-formed HELLO built from the input, the proof
//         computed with the right or a wrong secret (the input says), then the rest of the input
//         as what follows the proof. The session opens exactly when the secret was right; what
//         follows goes through the session's frame check.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "raft.hpp"

using raft::detail::ListenerHandshake;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const char* p = reinterpret_cast<const char*>(data);
  const bool connector = (data[0] & 1) != 0;
  const std::size_t piece = 1 + data[1] % 64;
  std::string in(p + 2, size - 2);
  ListenerHandshake h({"s3cr3t", "second"}, "1");
  std::string wire;
  if (!connector) {
    ListenerHandshake::State last = ListenerHandshake::State::Waiting;
    for (std::size_t at = 0; at < in.size(); at += piece) {
      const ListenerHandshake::State st = h.take(in.data() + at, std::min(piece, in.size() - at), wire);
      if (st == ListenerHandshake::State::Open) std::abort();  // no proof can be guessed
      if (last == ListenerHandshake::State::Refused && st != last) std::abort();
      last = st;
    }
    return 0;
  }
  // A HELLO whose fields come from the input (cut at NULs), then the proof.
  std::vector<std::string> hello{"HELLO", raft::detail::kPeerProtocolVersion, "", "", "", "", "",
                                 raft::detail::new_handshake_nonce()};
  std::size_t at = 0;
  for (std::size_t f = 2; f <= 6 && at < in.size(); ++f) {
    std::size_t end = in.find('\0', at);
    if (end == std::string::npos) end = in.size();
    hello[f] = in.substr(at, std::min<std::size_t>(end - at, 64));
    at = end + 1;
  }
  const bool right = (data[0] & 2) != 0;
  std::string bytes;
  resp::write_command(bytes, hello);
  const ListenerHandshake::State st = h.take(bytes.data(), bytes.size(), wire);
  if (st != ListenerHandshake::State::Waiting) return 0;  // refused (e.g. `to` is not "1")
  resp::ReplyParser parser;
  parser.feed(wire);
  resp::Value challenge;
  if (parser.next(challenge) != resp::Status::Ok || challenge.elements.size() != 4) std::abort();
  const std::string t = raft::detail::handshake_transcript(hello, challenge.elements[1].str);
  const std::string secret = right ? ((data[0] & 4) ? "second" : "s3cr3t") : "s3cr3";
  bytes.clear();
  resp::write_command(bytes, {"PROOF", raft::detail::handshake_proof(secret, raft::detail::PeerSide::Connector, t)});
  if (at < in.size()) bytes.append(in, at, std::string::npos);  // what follows the proof
  const ListenerHandshake::State end = h.take(bytes.data(), bytes.size(), wire);
  if ((end == ListenerHandshake::State::Open) != right) std::abort();
  if (end != ListenerHandshake::State::Open) return 0;
  // Raw bytes after the proof are not frames sealed with the session key: at most an
  // unfinished frame is held, nothing comes out.
  std::string plain, error;
  const std::string rest = h.rest();
  if (h.session().open(rest.data(), rest.size(), plain, error) && !plain.empty()) std::abort();
  return 0;
}
