// What atomic writes cost at apply: a write handler run as the apply loop runs it, before
// atomic writes (no undo record), now (a record unless the handler is a built-in: the built-ins
// run without one), and with the record always (what a program's write handler gets).
// Single thread, no I/O: the handler and the record only. Prints ns per write; bounded to about
// half a minute.
#include "raft.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

constexpr std::int64_t kNow = 1'700'000'000'000;

enum class Record { Never, UnlessBuiltin, Always };

/// Runs the writes `words_for(i)` makes through their handlers for about `ms`, bracketed like
/// the apply loop brackets them; returns ns per write.
template <class Words>
double run(raft::Store& store, const raft::CommandTable& table, Record mode, Words words_for, int ms = 400) {
  std::vector<std::string> words;
  std::uint64_t n = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto stop = start + std::chrono::milliseconds(ms);
  auto now = start;
  while (now < stop) {
    for (int k = 0; k < 256; ++k, ++n) {
      words_for(n, words);
      const raft::Command& cmd = table.find(words[0])->second;
      const bool record = mode == Record::Always || (mode == Record::UnlessBuiltin && !raft::detail::is_builtin(cmd));
      raft::Call call{store, words, kNow, nullptr};
      if (record) store.begin_undo();
      raft::Reply r = cmd.fn(call);
      if (record) store.commit_undo();
      if (r.is_error()) std::abort();
    }
    now = std::chrono::steady_clock::now();
  }
  return std::chrono::duration<double, std::nano>(now - start).count() / static_cast<double>(n);
}

}  // namespace

int main() {
  raft::CommandTable table;
  raft::add_builtin_commands(table);
  constexpr std::uint64_t kKeys = 100000;
  std::vector<std::string> keys;
  for (std::uint64_t i = 0; i < kKeys; ++i) keys.push_back("key:" + std::to_string(i));

  std::printf("%-42s %12s %12s %12s\n", "write (as applied)", "before", "now", "recorded");
  const auto row = [&](const std::string& name, const std::function<void(raft::Store&)>& fill,
                       const std::function<void(std::uint64_t, std::vector<std::string>&)>& words, int ms) {
    // Rounds alternating the modes, the best of each: the first store built in a process runs
    // faster than the next ones (memory layout), whichever mode it serves.
    double ns[3] = {1e300, 1e300, 1e300};
    const Record modes[3] = {Record::Never, Record::UnlessBuiltin, Record::Always};
    for (int round = 0; round < 3; ++round)
      for (int k = 0; k < 3; ++k) {
        const int m = (k + round) % 3;
        raft::Store s;
        fill(s);
        run(s, table, modes[m], words, ms / 4);  // warm up
        ns[m] = std::min(ns[m], run(s, table, modes[m], words, ms));
      }
    std::printf("%-42s %9.0f ns %9.0f ns %9.0f ns\n", name.c_str(), ns[0], ns[1], ns[2]);
  };
  const auto nothing = [](raft::Store&) {};
  row("SET key value (100000 keys, replacing)", nothing,
      [&](std::uint64_t n, std::vector<std::string>& w) { w = {"set", keys[n % kKeys], "value-0123456789"}; }, 200);
  row("SET key value (creating keys)", nothing,
      [&](std::uint64_t n, std::vector<std::string>& w) { w = {"set", "new:" + std::to_string(n), "value-0123456789"}; },
      300);
  row("INCR key (changed in place)", nothing,
      [&](std::uint64_t n, std::vector<std::string>& w) { w = {"incr", keys[n % kKeys]}; }, 200);
  for (const std::size_t length : {std::size_t{10}, std::size_t{1000}, std::size_t{100000}}) {
    const auto fill = [length](raft::Store& s) {
      auto& list = s.put("list", raft::Store::Kind::List).list;
      for (std::size_t i = 0; i < length; ++i) list.push_back("element-" + std::to_string(i));
    };
    // LPUSH then LPOP, so the list keeps its length.
    row("LPUSH/LPOP, a list of " + std::to_string(length), fill,
        [](std::uint64_t n, std::vector<std::string>& w) {
          if (n % 2 == 0)
            w = {"lpush", "list", "x"};
          else
            w = {"lpop", "list"};
        },
        length > 1000 ? 300 : 150);
  }
  std::printf("(before: no undo record; now: a record unless the handler is a built-in; recorded: always,\n"
              " as for a program's write handler, which pays a copy of each value it changes in place)\n");
  return 0;
}
