// Shared by the examples: stop a node gracefully on SIGINT or SIGTERM. The library installs no
// signal handlers; a program decides. Here the signals are blocked in every thread and one
// thread waits for them with sigwait, so nothing runs in signal context.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <csignal>

#include <thread>

#include "raft.hpp"

namespace examples {

class StopOnSignal {
 public:
  // Construct before node.start(), so that the node's threads inherit the blocked mask.
  explicit StopOnSignal(raft::Node& node) {
    // A shell starts background jobs with SIGINT ignored. Linux still queues a blocked signal
    // for sigwait when it is ignored, but POSIX lets a system discard it: restore the default.
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread([&node, set] {
      int sig = 0;
      sigwait(&set, &sig);
      node.request_stop();  // node.join() in main then stops it
    }).detach();
  }
};

}  // namespace examples
