// libFuzzer target: the snapshot text reader (a snapshot arrives from the leader or from a
// file given with -l). Any input is either refused with an error or read into a store whose
// own snapshot text reads back to the same store.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "raft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  raft::Store store;
  raft::SnapshotMeta meta;
  std::string error;
  if (raft::Store::read_snapshot(text, store, meta, error)) {
    std::string again;
    store.write_snapshot(again, meta);
    raft::Store back;
    raft::SnapshotMeta meta_back;
    if (!raft::Store::read_snapshot(again, back, meta_back, error) || back != store || !(meta_back == meta)) std::abort();
  } else if (error.empty()) {
    std::abort();  // a refusal always says why
  }
  raft::Store pyraft;
  error.clear();
  if (!raft::Store::read_pyraft_snapshot(text, pyraft, error) && error.empty()) std::abort();
  return 0;
}
