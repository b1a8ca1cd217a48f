// resp.hpp's parsers against hiredis's redisReader on the same bytes, in the same run.
//
// Inputs: (1) a pipeline of SET/GET on small keys as redis-benchmark sends it, (2) SETs of
// 64 KiB and of 1 MiB values, (3) a server's replies (status, bulk, integer, array). Each is
// fed in 16 KiB reads, as a socket would deliver it. hiredis parses requests as what they are
// on the wire, arrays of bulks, so requests are measured with hiredis, our RequestParser and
// our ReplyParser. The parsers take turns, three rounds of 0.4 s each per case, and each
// keeps its best round, so that a busy machine penalises them alike.
//
// Output, one line per case and parser:
//   case=set_get_pipeline parser=request ours=... cmds/s ... MB/s hiredis=... ratio=1.23
// ratio is our throughput over hiredis's (above 1: faster).
#include "resp.hpp"

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kReadSize = 16 * 1024;
constexpr double kSecondsPerRound = 0.4;
constexpr int kRounds = 3;

struct Input {
  std::string name;
  std::string bytes;
  std::size_t items = 0;  // commands or replies in bytes
};

struct Rate {
  double items_per_second = 0;
  double mb_per_second = 0;
};

using Parse = std::size_t (*)(const std::string& bytes);  // returns the items parsed

// Runs passes of `parse` over the input until the round's time is up.
Rate measure(const Input& in, Parse parse) {
  using Clock = std::chrono::steady_clock;
  std::size_t passes = 0;
  const Clock::time_point start = Clock::now();
  double elapsed = 0;
  do {
    const std::size_t items = parse(in.bytes);
    if (items != in.items) {
      std::fprintf(stderr, "%s: parsed %zu items, expected %zu\n", in.name.c_str(), items,
                   in.items);
      std::exit(1);
    }
    ++passes;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < kSecondsPerRound);
  Rate r;
  r.items_per_second = static_cast<double>(passes * in.items) / elapsed;
  r.mb_per_second = static_cast<double>(passes * in.bytes.size()) / elapsed / 1e6;
  return r;
}

std::size_t parse_with_request_parser(const std::string& bytes) {
  resp::RequestParser parser;
  std::vector<std::string> argv;
  std::size_t items = 0;
  for (std::size_t at = 0; at < bytes.size(); at += kReadSize) {
    parser.feed(bytes.data() + at, std::min(kReadSize, bytes.size() - at));
    while (parser.next(argv) == resp::Status::Ok) ++items;
  }
  return parser.failed() ? 0 : items;
}

std::size_t parse_with_reply_parser(const std::string& bytes) {
  resp::ReplyParser parser;
  resp::Value v;
  std::size_t items = 0;
  for (std::size_t at = 0; at < bytes.size(); at += kReadSize) {
    parser.feed(bytes.data() + at, std::min(kReadSize, bytes.size() - at));
    while (parser.next(v) == resp::Status::Ok) ++items;
  }
  return parser.failed() ? 0 : items;
}

std::size_t parse_with_hiredis(const std::string& bytes) {
  redisReader* reader = redisReaderCreate();
  std::size_t items = 0;
  for (std::size_t at = 0; at < bytes.size(); at += kReadSize) {
    redisReaderFeed(reader, bytes.data() + at, std::min(kReadSize, bytes.size() - at));
    for (;;) {
      void* reply = nullptr;
      if (redisReaderGetReply(reader, &reply) != REDIS_OK) {
        redisReaderFree(reader);
        return 0;
      }
      if (reply == nullptr) break;
      freeReplyObject(reply);
      ++items;
    }
  }
  redisReaderFree(reader);
  return items;
}

std::string key(std::size_t i) {
  char b[32];
  std::snprintf(b, sizeof b, "key:%06zu", i % 1000000);
  return b;
}

// What redis-benchmark -P sends for SET and GET: alternating, small keys, 16-100 byte values.
Input set_get_pipeline() {
  Input in{"set_get_pipeline", {}, 0};
  std::uint32_t random = 12345;
  for (std::size_t i = 0; i < 20000; ++i) {
    random = random * 1103515245u + 12345u;
    if (i % 2 == 0) {
      const std::string value(16 + (random >> 8) % 85, static_cast<char>('a' + i % 26));
      resp::write_command(in.bytes, {"SET", key(i), value});
    } else {
      resp::write_command(in.bytes, {"GET", key(i - 1)});
    }
    ++in.items;
  }
  return in;
}

Input big_sets(const char* name, std::size_t value_size, std::size_t count) {
  Input in{name, {}, 0};
  std::string value(value_size, 'v');
  for (std::size_t i = 0; i < count; ++i) {
    value[i % value_size] = static_cast<char>('0' + i % 10);
    resp::write_command(in.bytes, {"SET", key(i), value});
    ++in.items;
  }
  return in;
}

// What a server answers a mixed workload with.
Input replies() {
  Input in{"replies", {}, 0};
  for (std::size_t i = 0; i < 20000; ++i) {
    switch (i % 5) {
      case 0: resp::write_simple(in.bytes, "OK"); break;
      case 1: resp::write_bulk(in.bytes, std::string(16 + i % 85, 'x')); break;
      case 2: resp::write_integer(in.bytes, static_cast<std::int64_t>(i * 7919)); break;
      case 3: resp::write_null_bulk(in.bytes); break;
      case 4:  // an LRANGE / HGETALL-like array of ten bulks
        resp::write_array_header(in.bytes, 10);
        for (int j = 0; j < 10; ++j) resp::write_bulk(in.bytes, key(i + j));
        break;
    }
    ++in.items;
  }
  return in;
}

struct Contender {
  const char* parser;
  Parse parse;
  Rate best;
};

void run_case(const Input& in, std::vector<Contender> ours) {
  Contender hiredis{"hiredis", parse_with_hiredis, {}};
  std::vector<Contender*> all{&hiredis};
  for (Contender& o : ours) all.push_back(&o);
  for (int round = 0; round < kRounds; ++round) {
    for (Contender* c : all) {
      const Rate r = measure(in, c->parse);
      if (r.items_per_second > c->best.items_per_second) c->best = r;
    }
  }
  for (const Contender& o : ours) {
    std::printf(
        "case=%-16s parser=%-7s ours=%10.0f cmds/s %7.1f MB/s  hiredis=%10.0f cmds/s %7.1f MB/s"
        "  ratio=%.2f\n",
        in.name.c_str(), o.parser, o.best.items_per_second, o.best.mb_per_second,
        hiredis.best.items_per_second, hiredis.best.mb_per_second,
        o.best.items_per_second / hiredis.best.items_per_second);
  }
  std::fflush(stdout);
}

}  // namespace

int main() {
  const Contender request{"request", parse_with_request_parser, {}};
  const Contender reply{"reply", parse_with_reply_parser, {}};
  run_case(set_get_pipeline(), {request, reply});
  run_case(big_sets("set_64k_values", 64 * 1024, 256), {request, reply});
  run_case(big_sets("set_1m_values", 1024 * 1024, 16), {request, reply});
  run_case(replies(), {reply});
  return 0;
}
