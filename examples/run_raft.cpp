// run_raft: the default node, as pyraft's run_raft.py.
//   run_raft -i 1 -a 127.0.0.1:5010                      founds a cluster and leads it
//   run_raft -i 2 -a 127.0.0.1:5020 -e 127.0.0.1:5010    joins it
// Stops gracefully (a leader hands over first) on SIGINT or SIGTERM.
#include <sys/resource.h>

#include "raft.hpp"

#include "signals.hpp"

// As Redis does: the soft descriptor limit raised to the hard one, so that maxclients need not
// be lowered (the node lowers it to what the limit leaves, and says so). The library never
// changes this process-wide setting; a program may.
static void raise_descriptor_limit() {
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == nofile.rlim_max) return;
  const rlim_t wanted = nofile.rlim_max == RLIM_INFINITY ? rlim_t{1} << 20 : nofile.rlim_max;
  for (rlim_t want = wanted; want > nofile.rlim_cur; want = want / 2 > nofile.rlim_cur ? want / 2 : nofile.rlim_cur) {
    rlimit raised = nofile;
    raised.rlim_cur = want;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) return;  // the kernel's nr_open may be lower
  }
}

int main(int argc, char** argv) {
  raise_descriptor_limit();
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
