#!/usr/bin/env bash
# Builds the tests with each deliberately broken rule of tools/mutants.txt and checks that the
# suite named there fails. Prints one line per mutant, "caught" or "SURVIVED"; exits non-zero if
# any survived. Mutants run JOBS at a time (default: the number of cores); the lines come out
# in the file's order.
# usage: tools/mutants.sh CXX CXXFLAGS BUILD_DIR SEEDS [NAME...]   (no NAME: all of them)
set -eu
cxx=$1 flags=$2 build=$3 seeds=$4
shift 4
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# One mutant: build, run the spec that must fail, leave the verdict in build-mutant/NAME/result.
run_mutant() {
  local name=$1 files=$2 spec=$3 out=build-mutant/$1 objs="" f start why
  mkdir -p "$out"
  rm -f "$out/result"
  for f in ${files//,/ }; do
    if ! $cxx $flags -DRAFT_MUTANT_$name -c "tests/$f.cpp" -o "$out/$f.o" 2>"$out/build.log"; then
      echo "mutant $name: BUILD FAILED (log in $out/build.log)" >"$out/result"
      return
    fi
    objs="$objs $out/$f.o"
  done
  $cxx $flags "$build/tests/main.o" $objs -o "$out/tests" -pthread
  start=$(date +%s)
  if RAFT_SIM_SEEDS=$seeds RAFT_SIM_STOP_ON_FAIL=1 RAFT_BUILD_DIR=$build "$out/tests" "$spec" --abort >"$out/log" 2>&1; then
    echo "mutant $name: SURVIVED $spec ($seeds simulation seeds; log in $out/log)" >"$out/result"
  else
    why=$(grep -m1 -o 'sim seed [0-9]* FAILED: .*' "$out/log" ||
          grep -m1 -A5 'FAILED:' "$out/log" | tr -s ' \n' ' ' || true)
    echo "mutant $name: caught by $spec in $(( $(date +%s) - start )) s: $(echo "$why" | cut -c1-160)" >"$out/result"
  fi
}

names=()
running=0
while read -r name files spec; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ $# -gt 0 ]; then
    wanted=no
    for w in "$@"; do [ "$w" = "$name" ] && wanted=yes; done
    [ $wanted = yes ] || continue
  fi
  names+=("$name")
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_mutant "$name" "$files" "$spec" &
  running=$((running + 1))
done < tools/mutants.txt
wait

status=0
survivors=""
for name in "${names[@]}"; do
  line=$(cat "build-mutant/$name/result" 2>/dev/null || echo "mutant $name: no result")
  echo "$line"
  case "$line" in *": caught by "*) ;; *) survivors="$survivors $name"; status=1 ;; esac
done
[ -z "$survivors" ] || echo "not caught:$survivors"
exit $status
