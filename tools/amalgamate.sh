#!/bin/sh
# Writes raft.hpp to stdout: the parts under src/raft/, in the bytewise order of their names
# (LC_ALL=C: 1_api.hpp before 1b_crypto.hpp, 5a_... before 5b_..., in every locale).
# `make` regenerates raft.hpp when a part changes; CI fails when the committed raft.hpp differs
# from what this prints. Each part after the first begins with a line naming its file, so a
# compiler error at raft.hpp:NNNN leads to the part to edit.
set -eu
cd "$(dirname "$0")/.."
LC_ALL=C
export LC_ALL
first=yes
for part in $(printf '%s\n' src/raft/*.hpp | sort); do
  [ $first = yes ] || printf '// ---- %s ----\n' "$part"
  first=no
  cat "$part"
done
