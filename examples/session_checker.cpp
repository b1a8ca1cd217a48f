// run_ex2: only the leader watches the `session_*` keys, which applications renew with their
// current time in seconds (`set session_app1 1764102000`); a session not renewed within the
// timeout is reported EXPIRED.
//   session_checker -i 1 -a 127.0.0.1:5010 [--interval SECONDS] [--timeout SECONDS]  (5, 60)
#include "checker.hpp"
#include "raft.hpp"
#include "signals.hpp"

int main(int argc, char** argv) {
  double interval = examples::take_interval(argc, argv, 5.0);
  double timeout = 60;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--timeout") {
      timeout = std::atof(argv[i + 1]);
      for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
      argc -= 2;
      break;
    }
  auto node = raft::make_default_node(argc, argv);
  examples::LeaderTask checker(*node, interval, [timeout](raft::Node& n) {
    double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    for (const auto& [key, value] : examples::keys_with_prefix(n, "session_")) {
      char* end = nullptr;
      double ts = std::strtod(value.c_str(), &end);
      if (end == value.c_str()) {
        std::printf("session %s has no timestamp (%s)\n", key.c_str(), value.c_str());
        continue;
      }
      double diff = now - ts;
      std::printf("session %s is %s (diff: %d)\n", key.c_str(), diff < timeout ? "ok" : "EXPIRED",
                  static_cast<int>(diff));
    }
  });
  node->on_leader([&](raft::Node&, std::uint64_t term) { checker.on_leader(term); });
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
