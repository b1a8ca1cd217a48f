// Runs the core's transcripts (tests/core/*.txt, see tests/core_transcript.hpp): each file a
// scenario, each command's output compared with what the file says. With
// RAFT_REWRITE_TRANSCRIPTS=1 the files are rewritten with what the code prints instead.
#include "core_transcript.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void run_transcript(const std::string& name) {
  const fs::path path = fs::path(__FILE__).parent_path() / "core" / name;
  REQUIRE(fs::exists(path));
  const std::string text = slurp(path);
  const std::vector<transcript::Block> blocks = transcript::parse(text);
  REQUIRE_FALSE(blocks.empty());
  const bool rewrite = std::getenv("RAFT_REWRITE_TRANSCRIPTS") != nullptr;
  transcript::Driver driver;
  std::vector<std::string> outputs;
  for (const auto& b : blocks) {
    std::string out;
    try {
      out = driver.run(b.command);
    } catch (const std::exception& e) {
      FAIL(name << ":" << b.line << ": " << b.command << ": " << e.what());
    }
    outputs.push_back(out);
    if (rewrite) continue;
    INFO(name << ":" << b.line << ": " << b.command);
    CHECK(out == b.expected);
  }
  if (rewrite) {
    std::ofstream(path, std::ios::binary) << transcript::rewrite(text, outputs);
    WARN("rewrote " << path.string());
  }
}

}  // namespace

TEST_CASE("transcript: elections, pre-vote and the +10 campaign", "[core][transcript]") { run_transcript("elections.txt"); }
TEST_CASE("transcript: replication, commitment and the log's repair", "[core][transcript]") {
  run_transcript("replication.txt");
}
TEST_CASE("transcript: a joiner learns, catches up and is promoted", "[core][transcript]") { run_transcript("joins.txt"); }
TEST_CASE("transcript: a follower behind the compacted log gets a snapshot", "[core][transcript]") {
  run_transcript("snapshots.txt");
}
