// run_raft: the default node, as pyraft's run_raft.py.
//   run_raft -i 1 -a 127.0.0.1:5010                      founds a cluster and leads it
//   run_raft -i 2 -a 127.0.0.1:5020 -e 127.0.0.1:5010    joins it
// Stops gracefully (a leader hands over first) on SIGINT or SIGTERM.
#include "raft.hpp"

#include "signals.hpp"

int main(int argc, char** argv) {
  auto node = raft::make_default_node(argc, argv);
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
