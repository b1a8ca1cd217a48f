// check_history: is a Jepsen-style history linearizable? (format: tests/jepsen/history.hpp)
//
//   check_history FILE [--timeout-s N] [--max-steps N]
//
// Prints one verdict line on stdout:
//   ops=... ok=... failed=... unknown=... keys=... steps=... linearizable=yes|no|unknown [the first violation]
// and, when the history is not linearizable, each violation's operations on stderr (one per
// line, with their processes, times and line numbers in FILE).
// Exits 0 when linearizable, 1 when not, 2 when the search gave up (a failed run, never a
// pass), 3 when FILE cannot be read or the arguments are wrong.
#include "tests/jepsen/checker.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

constexpr const char* kUsage =
    "usage: check_history FILE [--timeout-s SECONDS] [--max-steps N]\n"
    "  exit 0: linearizable; 1: not; 2: unknown (the search gave up); 3: bad FILE or arguments\n";

bool parse_number(const char* text, double& out) {
  char* end = nullptr;
  out = std::strtod(text, &end);
  return end != text && *end == '\0' && out >= 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  jepsen::CheckOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    double n = 0;
    if ((arg == "--timeout-s" || arg == "--max-steps") && i + 1 < argc && parse_number(argv[i + 1], n)) {
      if (arg == "--timeout-s")
        options.timeout_s = n;
      else
        options.max_steps = static_cast<std::uint64_t>(n);
      ++i;
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (path.empty() && !arg.empty() && arg[0] != '-') {
      path = arg;
    } else {
      std::fprintf(stderr, "ERR unknown or incomplete argument '%s'\n%s", arg.c_str(), kUsage);
      return 3;
    }
  }
  if (path.empty()) {
    std::fputs(kUsage, stderr);
    return 3;
  }

  jepsen::History history;
  jepsen::CheckResult result;
  try {
    history = jepsen::read_history_file(path);
    result = jepsen::check(history, options);
  } catch (const jepsen::HistoryError& e) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), e.what());
    return 3;
  }
  std::printf("%s\n", result.summary().c_str());

  std::int64_t origin = 0;
  if (!history.operations.empty()) origin = history.operations.front().invoke_ns;
  for (const jepsen::Operation& op : history.operations) origin = std::min(origin, op.invoke_ns);
  for (const jepsen::Violation& v : result.violations) {
    std::fprintf(stderr, "key %s: %s: %s\n", jepsen::encode_value(jepsen::Value::of(v.key)).c_str(), v.kind.c_str(),
                 v.explanation.c_str());
    if (v.prefix_operations > 0)
      std::fprintf(stderr, "  the first %zu operations on the key are not linearizable\n", v.prefix_operations);
    for (const jepsen::Operation& op : v.operations) std::fprintf(stderr, "  %s\n", jepsen::describe(op, origin).c_str());
  }
  switch (result.verdict) {
    case jepsen::Verdict::Linearizable:
      return 0;
    case jepsen::Verdict::NotLinearizable:
      return 1;
    case jepsen::Verdict::Unknown:
      return 2;
  }
  return 2;
}
