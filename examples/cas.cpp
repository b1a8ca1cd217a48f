// run_ex3: a custom replicated command. `cas key expected value` sets key to value when its
// current value is expected (a missing key counts as "none") and answers expected; otherwise
// it changes nothing and answers the current value (nil for a missing key).
//   cas -i 1 -a 127.0.0.1:5010
#include "raft.hpp"

#include "signals.hpp"

// Runs on every node when its entry is applied: deterministic, state only in the store.
raft::Reply do_cas(raft::Call& call) {
  const std::string& key = call.words[1];
  const std::string& expected = call.words[2];
  bool wrong = false;
  // The key's string; an expired key is deleted first (it is gone at this entry's time).
  const raft::Store::Object* obj = raft::write_lookup(call, key, raft::Store::Kind::String, wrong);
  if (wrong) return raft::wrongtype_error();
  std::string current;
  if (obj == nullptr) {
    std::string e = expected;
    for (char& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (e != "none") return raft::Reply::nil();
    current = expected;  // as pyraft: a missing key matches "none"
  } else {
    current = obj->str;
  }
  if (current != expected) return raft::Reply::bulk(current);
  call.data.put(key, raft::Store::Kind::String).str = call.words[3];  // put() clears the deadline
  return raft::Reply::bulk(expected);
}

int main(int argc, char** argv) {
  auto node = raft::make_default_node(argc, argv);
  node->handler("cas", do_cas, raft::Write, 3, 3);
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
