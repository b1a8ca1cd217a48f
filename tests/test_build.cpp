// The ways into raft.hpp besides copying the two headers (README, "Using it from CMake or
// pkg-config"): a consumer project (tests/consumer/) is built from a clean directory through
// CMake's add_subdirectory, FetchContent (from a local git repository: no network),
// find_package after `cmake --install` into a temporary prefix, and pkg-config on that prefix;
// each program founds a node on loopback, writes, reads and stops.
// [build] runs in `make test` (about 15 s a way, most of it compiling raft.hpp at -O0);
// `make build-test` (CI) builds it with raft::raft_tls ([.build-tls], needs libssl-dev).
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "net_slot.hpp"
#include "proc.hpp"

namespace {

// Test `n` here uses 127.(220 + n).y.1, y from this process's address slot (tests/net_slot.hpp);
// tests/proc_cluster.hpp's clusters use 127.(200 + test) with tests up to 11.
std::string consumer_address(int test) {
  return "127." + std::to_string(220 + test) + "." + std::to_string(test_support::address_slot() + 1) + ".1:7000";
}

// Runs tests/consumer/build_each_way.sh for `way` in a temporary directory; checks that it
// built and ran the consumer and that the program said `expected`.
void build_and_run(const std::string& way, int test, const std::string& expected) {
  for (const char* tool : {"cmake", "pkg-config", "git"})
    if (proc::find_program(tool).empty())
      FAIL(tool << " is not installed: tools/deps.sh (run by make test as root) installs it");
  const std::string source = std::filesystem::current_path().string();
  REQUIRE(std::filesystem::exists(source + "/CMakeLists.txt"));  // make test runs at the top
  proc::TempDir dir("build-" + way);
  const proc::RunResult r = proc::run(
      "build", {source + "/tests/consumer/build_each_way.sh", way, source, dir / "work", consumer_address(test)}, dir,
      std::chrono::minutes(5));
  INFO(way << ": exit " << r.code << "\nstdout:\n" << r.out << "stderr:\n" << r.err);
  CHECK(r.code == 0);
  CHECK(r.out.find(expected + "\n") != std::string::npos);
}

// "consumer ok " and the version in raft.hpp's RAFT_HPP_VERSION line (read from the file: this
// test does not compile the header, its consumers do).
std::string consumer_ok() {
  const std::string text = proc::read_file("raft.hpp");
  const std::string marker = "#define RAFT_HPP_VERSION \"";
  const auto at = text.find(marker);
  REQUIRE(at != std::string::npos);
  const auto begin = at + marker.size();
  return "consumer ok " + text.substr(begin, text.find('"', begin) - begin);
}

}  // namespace

TEST_CASE("CMake add_subdirectory: a consumer links raft::raft and builds as C++17 from C++14; it runs a node", "[build]") {
  build_and_run("add_subdirectory", 1, consumer_ok());
}

TEST_CASE("CMake FetchContent from a git repository: raft::raft builds and runs", "[build]") {
  build_and_run("FetchContent", 2, consumer_ok());
}

TEST_CASE("cmake --install then find_package(raft_hpp 0.1) in a clean project: raft::raft builds and runs",
          "[build]") {
  build_and_run("find_package", 3, consumer_ok());
}

TEST_CASE("cmake --install then pkg-config raft_hpp with PKG_CONFIG_PATH: the program builds and runs", "[build]") {
  build_and_run("pkg-config", 4, consumer_ok());
}

TEST_CASE("find_package(raft_hpp COMPONENTS tls): raft::raft_tls compiles the TLS part in", "[.build-tls]") {
  if (!std::filesystem::exists("/usr/include/openssl/ssl.h")) {
    WARN("skipped: OpenSSL's headers are missing (tools/deps.sh tls installs libssl-dev)");
    return;
  }
  build_and_run("find_package_tls", 5, consumer_ok() + " tls");
}
