#!/bin/sh
# Builds the simulation with each deliberately broken rule and checks that it fails.
# usage: tools/mutants.sh CXX CXXFLAGS BUILD_DIR SEEDS MUTANT...
set -eu
cxx=$1 flags=$2 build=$3 seeds=$4
shift 4
status=0
for m in "$@"; do
  out=build-mutant/$m
  mkdir -p "$out"
  $cxx $flags -DRAFT_MUTANT_$m -c tests/test_sim.cpp -o "$out/test_sim.o"
  $cxx $flags "$build/tests/main.o" "$out/test_sim.o" -o "$out/sim" -pthread
  if RAFT_SIM_SEEDS=$seeds RAFT_SIM_STOP_ON_FAIL=1 "$out/sim" '[sim]' >"$out/log" 2>&1; then
    echo "mutant $m: NOT caught in $seeds seeds"
    status=1
  else
    first=$(grep -m1 -o 'sim seed [0-9]* FAILED: .*' "$out/log" || echo "(see $out/log)")
    echo "mutant $m: caught, $first"
  fi
done
exit $status
