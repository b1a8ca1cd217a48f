// Shared by url_checker and session_checker: a thread that only the leader runs, started by
// on_leader (pyraft's run_ex1.py / run_ex2.py pattern). It survives leadership changes: when
// this node stops leading it idles, and when it leads again it resumes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "raft.hpp"

namespace examples {

/// Removes "--interval SECONDS" from argv (before make_default_node sees it).
inline double take_interval(int& argc, char** argv, double fallback) {
  double interval = fallback;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) != "--interval") continue;
    interval = std::atof(argv[i + 1]);
    for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
    argc -= 2;
    break;
  }
  return interval > 0 ? interval : fallback;
}

/// The string values of the keys starting with `prefix`, as this node has them now.
inline std::vector<std::pair<std::string, std::string>> keys_with_prefix(raft::Node& node, const std::string& prefix) {
  std::vector<std::pair<std::string, std::string>> out;
  std::int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
  node.read([&](const raft::Store& data) {
    data.for_each([&](const std::string& key, const raft::Store::Object& obj, std::optional<std::int64_t> deadline) {
      if (key.compare(0, prefix.size(), prefix) != 0 || obj.kind != raft::Store::Kind::String) return;
      if (deadline && *deadline <= now) return;  // expired, not deleted yet
      out.emplace_back(key, obj.str);
    });
  });
  return out;
}

class LeaderTask {
 public:
  LeaderTask(raft::Node& node, double interval_s, std::function<void(raft::Node&)> check)
      : node_(node), interval_(interval_s), check_(std::move(check)) {}
  ~LeaderTask() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  /// For on_leader: starts the thread the first time (pyraft: `if not hasattr(node, 'checker')`).
  void on_leader(std::uint64_t term) {
    std::printf("check start (leading term %llu)\n", static_cast<unsigned long long>(term));
    std::fflush(stdout);
    std::lock_guard<std::mutex> lock(mu_);
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_ && !node_.stopping()) {
      cv_.wait_for(lock, std::chrono::duration<double>(interval_), [&] { return done_; });
      if (done_ || node_.stopping() || node_.state() != 'l') continue;
      lock.unlock();
      check_(node_);
      std::fflush(stdout);
      lock.lock();
    }
  }
  raft::Node& node_;
  double interval_;
  std::function<void(raft::Node&)> check_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace examples
