#!/bin/sh
# Runs the test binary once per Catch2 test spec, all at once (the process and runtime tests
# spend their time waiting on timeouts, not on the CPU), then prints each run's output in
# order. Fails if any run failed.
# usage: tools/run_tests.sh BINARY SPEC...
set -u
bin=$1
shift
logs=$(mktemp -d)
i=0
pids=""
for spec in "$@"; do
  i=$((i + 1))
  "$bin" "$spec" >"$logs/$i.log" 2>&1 &
  pids="$pids $!"
done
status=0
i=0
for pid in $pids; do
  i=$((i + 1))
  wait "$pid" || status=1
done
i=0
for spec in "$@"; do
  i=$((i + 1))
  echo "=== $bin '$spec'"
  cat "$logs/$i.log"
done
rm -rf "$logs"
exit $status
