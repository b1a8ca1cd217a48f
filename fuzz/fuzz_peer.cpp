// libFuzzer target: what a peer sends on port + 1. The bytes go through the RESP request
// parser and, for RAFT messages, the strict decoder; a decoded message encodes back to a
// message equal in every field.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "raft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  resp::RequestParser parser;
  parser.feed(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> words;
  while (parser.next(words) == resp::Status::Ok) {
    if (words.empty() || words[0] != "RAFT") continue;
    std::vector<std::string> copy = words;
    raft::Message m;
    std::string error;
    if (!raft::detail::decode_raft(copy, m, error)) {
      if (error.empty()) std::abort();
      continue;
    }
    std::string encoded;
    raft::detail::encode_raft(m, encoded);
    resp::RequestParser again;
    again.feed(encoded);
    std::vector<std::string> words2;
    if (again.next(words2) != resp::Status::Ok) std::abort();
    raft::Message m2;
    if (!raft::detail::decode_raft(words2, m2, error)) std::abort();
    // Every field survives the round trip (from, to and server_id come from the connection).
    if (m2 != m) std::abort();
  }
  return 0;
}
