// A consumer of raft.hpp, built by tests/test_build.cpp through each way in (add_subdirectory,
// FetchContent, find_package, pkg-config): founds a cluster of one on IP:PORT, writes a key
// through the log, reads it back and stops. Prints "consumer ok <version>" on success, with
// " tls" when built with RAFT_OPENSSL_SUPPORT (raft::raft_tls).
//   consumer IP:PORT DATA_DIR
#include "raft.hpp"

#include <chrono>
#include <cstdio>
#include <thread>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IP:PORT DATA_DIR\n", argv[0]);
    return 2;
  }
  raft::Config config;
  config.address = argv[1];
  config.data_dir = argv[2];
  config.log_level = raft::LogLevel::Warning;
  if (std::string bad = config.validate(); !bad.empty()) {
    std::fprintf(stderr, "invalid configuration: %s\n", bad.c_str());
    return 1;
  }
  raft::Node node(config);
  node.start();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (node.state() != 'l' && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const raft::Reply set = node.execute({"set", "consumer", "built"});
  const raft::Reply get = node.execute({"get", "consumer"});
  node.stop();
  if (set.is_error() || get.str != "built") {
    std::fprintf(stderr, "set: %s, get: %s\n", set.str.c_str(), get.str.c_str());
    return 1;
  }
#ifdef RAFT_OPENSSL_SUPPORT
  std::printf("consumer ok %s tls\n", RAFT_HPP_VERSION);
#else
  std::printf("consumer ok %s\n", RAFT_HPP_VERSION);
#endif
  return 0;
}
