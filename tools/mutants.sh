#!/bin/sh
# Builds the tests with each deliberately broken rule of tools/mutants.txt and checks that the
# suite named there fails. Prints one line per mutant, "caught" or "SURVIVED"; exits non-zero if
# any survived.
# usage: tools/mutants.sh CXX CXXFLAGS BUILD_DIR SEEDS [NAME...]   (no NAME: all of them)
set -eu
cxx=$1 flags=$2 build=$3 seeds=$4
shift 4
cd "$(dirname "$0")/.."
status=0
survivors=""
while read -r name files spec; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ $# -gt 0 ]; then
    wanted=no
    for w in "$@"; do [ "$w" = "$name" ] && wanted=yes; done
    [ $wanted = yes ] || continue
  fi
  out=build-mutant/$name
  mkdir -p "$out"
  objs=""
  for f in $(echo "$files" | tr ',' ' '); do
    $cxx $flags -DRAFT_MUTANT_$name -c "tests/$f.cpp" -o "$out/$f.o"
    objs="$objs $out/$f.o"
  done
  $cxx $flags "$build/tests/main.o" $objs -o "$out/tests" -pthread
  start=$(date +%s)
  if RAFT_SIM_SEEDS=$seeds RAFT_SIM_STOP_ON_FAIL=1 RAFT_BUILD_DIR=$build "$out/tests" "$spec" --abort >"$out/log" 2>&1; then
    echo "mutant $name: SURVIVED $spec ($seeds simulation seeds; log in $out/log)"
    survivors="$survivors $name"
    status=1
  else
    why=$(grep -m1 -o 'sim seed [0-9]* FAILED: .*' "$out/log" ||
          grep -m1 -A5 'FAILED:' "$out/log" | tr -s ' \n' ' ' || true)
    echo "mutant $name: caught by $spec in $(( $(date +%s) - start )) s: $(echo "$why" | cut -c1-160)"
  fi
done < tools/mutants.txt
[ -z "$survivors" ] || echo "survived:$survivors"
exit $status
