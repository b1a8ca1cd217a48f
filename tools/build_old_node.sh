#!/bin/sh
# `make upgrade`: builds run_raft as it was at COMMIT into OUT/run_raft, from this checkout's
# git history (raft.hpp, resp.hpp and the example's two files as they were then).
#   tools/build_old_node.sh COMMIT OUT [CXX]
# Exits 0 when OUT/run_raft is ready, 3 (after saying why) when there is no history to build
# it from (a copy without .git, or a shallow clone that lacks COMMIT), 1 on a build error.
set -eu
commit=$1
out=$2
cxx=${3:-g++}
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "no git history here: cannot build run_raft as of $commit (the upgrade test needs a git clone)" >&2
  exit 3
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "commit $commit is not in this clone's history (a shallow clone? git fetch --unshallow)" >&2
  exit 3
fi
[ -x "$out/run_raft" ] && [ "$(cat "$out/commit" 2>/dev/null)" = "$(git rev-parse "$commit")" ] && exit 0
mkdir -p "$out/src/examples"
for f in raft.hpp resp.hpp examples/run_raft.cpp examples/signals.hpp; do
  git show "$commit:$f" > "$out/src/$f"
done
echo "building run_raft as of $commit into $out" >&2
"$cxx" -std=c++17 -O2 -g1 -pthread -I"$out/src" "$out/src/examples/run_raft.cpp" -o "$out/run_raft.tmp" -pthread
mv "$out/run_raft.tmp" "$out/run_raft"
git rev-parse "$commit" > "$out/commit"
