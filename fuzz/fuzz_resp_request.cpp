// libFuzzer target for resp::RequestParser. The first input byte picks the limits and the way
// the rest is cut into feeds; the rest is the byte stream a client sends. Checks:
//   - any split (one byte at a time, pseudo-random chunks) gives what one feed gives:
//     the same commands, the same final status and error text, the same buffered();
//   - every command re-encoded with write_command parses back to itself;
//   - no crash, leak or undefined behaviour (ASan, UBSan).
#include "resp.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Argv = std::vector<std::string>;

struct Run {
  std::vector<Argv> commands;
  resp::Status last = resp::Status::NeedMore;
  std::string error;
  std::size_t buffered = 0;
};

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "invariant broken: %s\n", what);
  std::abort();
}

// chunk(i) gives the size of the i-th feed (at least 1).
template <typename Chunk>
Run parse(std::string_view input, const resp::Limits& limits, Chunk chunk) {
  resp::RequestParser parser(limits);
  Run run;
  Argv argv;
  std::size_t at = 0;
  for (std::size_t i = 0; at < input.size(); ++i) {
    const std::size_t n = std::min(chunk(i), input.size() - at);
    parser.feed(input.data() + at, n);
    at += n;
    while ((run.last = parser.next(argv)) == resp::Status::Ok) run.commands.push_back(argv);
  }
  if (input.empty()) run.last = parser.next(argv);
  run.error = parser.error();
  run.buffered = parser.buffered();
  return run;
}

void require_same(const Run& a, const Run& b, const char* how) {
  require(a.commands == b.commands, how);
  require(a.last == b.last, how);
  require(a.error == b.error, how);
  if (a.last != resp::Status::Error) require(a.buffered == b.buffered, how);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned control = data[0];
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  resp::Limits limits;
  if (control & 1) {  // small limits, so that inputs of a few KiB reach them
    limits.max_bulk_length = 40;
    limits.max_multibulk_length = 6;
    limits.max_inline_length = 24;
  }

  const Run whole = parse(input, limits, [&](std::size_t) { return input.size(); });
  require_same(parse(input, limits, [](std::size_t) { return std::size_t{1}; }), whole,
               "byte-at-a-time feeding differs from one feed");
  std::uint32_t state = 2166136261u ^ control;
  for (char c : input.substr(0, 64)) state = (state ^ static_cast<unsigned char>(c)) * 16777619u;
  const std::size_t spread = 1 + (control >> 1) % 64;
  require_same(parse(input, limits,
                     [&](std::size_t) {
                       state ^= state << 13;
                       state ^= state >> 17;
                       state ^= state << 5;
                       return 1 + state % spread;
                     }),
               whole, "chunked feeding differs from one feed");

  for (const Argv& argv : whole.commands) {
    require(!argv.empty(), "an empty command was returned");
    std::string encoded;
    resp::write_command(encoded, argv);
    resp::RequestParser again;
    again.feed(encoded);
    Argv back;
    require(again.next(back) == resp::Status::Ok, "a re-encoded command does not parse");
    require(back == argv, "a re-encoded command parses to something else");
    require(again.buffered() == 0, "a re-encoded command leaves bytes behind");
  }
  return 0;
}
