// The article's first snippet: three nodes with a static peer map, in one process.
//   three_nodes [IP]      (default 127.0.0.1: ports 5010, 5020 and 5030; peers on +1)
// Connect with `redis-cli -p 5010`; stop with Ctrl-C.
#include "raft.hpp"

#include "signals.hpp"

int main(int argc, char** argv) {
  std::string ip = argc > 1 ? argv[1] : "127.0.0.1";
  auto at = [&](int port) { return ip + ":" + std::to_string(port); };
  raft::Node n1(1, at(5010), {{2, at(5020)}, {3, at(5030)}});
  raft::Node n2(2, at(5020), {{1, at(5010)}, {3, at(5030)}});
  raft::Node n3(3, at(5030), {{1, at(5010)}, {2, at(5020)}});
  examples::StopOnSignal stop_on_signal(n1);
  try {
    n1.start();
    n2.start();
    n3.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
  n1.join();  // until Ctrl-C; then the other two stop with the process
  n2.stop();
  n3.stop();
  return 0;
}
