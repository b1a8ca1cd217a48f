#!/bin/sh
# Writes raft.hpp to stdout: the parts under src/raft/, in the order of their numeric prefixes.
# `make` regenerates raft.hpp when a part changes; CI fails when the committed raft.hpp differs
# from what this prints.
set -eu
cd "$(dirname "$0")/.."
for part in src/raft/*.hpp; do
  cat "$part"
done
