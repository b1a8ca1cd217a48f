#!/bin/sh
# Writes raft.hpp to stdout: the parts under src/raft/, in the order of their numeric prefixes.
# `make` regenerates raft.hpp when a part changes; CI fails when the committed raft.hpp differs
# from what this prints. Each part after the first begins with a line naming its file, so a
# compiler error at raft.hpp:NNNN leads to the part to edit.
set -eu
cd "$(dirname "$0")/.."
first=yes
for part in src/raft/*.hpp; do
  [ $first = yes ] || printf '// ---- %s ----\n' "$part"
  first=no
  cat "$part"
done
