#!/bin/sh
# Failover with default settings: SIGKILL the leader of a 3-node cluster, then time until a
# write is acknowledged (a client retrying every 10 ms on the surviving nodes). Prints each
# kill and the median of KILLS (10).
# usage: bench/failover_bench.sh RUN_RAFT_BINARY
set -eu
bin=${1:-build/examples/run_raft}
KILLS=${KILLS:-10}
work=$(mktemp -d "${TMPDIR:-/tmp}/raft-failover.XXXXXX")
pid1="" pid2="" pid3=""
cleanup() { kill $pid1 $pid2 $pid3 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
start() { # n
  port=$((7600 + 10 * $1))
  if [ "$1" = 1 ] && [ ! -d "$work/n1" ]; then join=""; else join="-e 127.0.0.1:7610,127.0.0.1:7620,127.0.0.1:7630"; fi
  "$bin" -i "$1" -a 127.0.0.1:$port -d "$work/n$1" $join --loglevel warning 2>>"$work/log$1" &
  eval pid$1=$!
}
start 1; sleep 0.3; start 2; start 3
for _ in $(seq 100); do redis-cli -p 7610 info raft | grep -q 'raft_voters:3' && break; sleep 0.1; done
now_ms() { date +%s%3N; }
times=""
for k in $(seq "$KILLS"); do
  leader=""
  for n in 1 2 3; do redis-cli -p $((7600 + 10 * n)) info raft 2>/dev/null | grep -q 'raft_role:leader' && leader=$n; done
  [ -n "$leader" ] || { echo "no leader"; exit 1; }
  eval kill -9 \$pid$leader
  t0=$(now_ms)
  done_ms=""
  while [ -z "$done_ms" ]; do
    for n in 1 2 3; do
      [ "$n" = "$leader" ] && continue
      if redis-cli -p $((7600 + 10 * n)) set failover "$k" 2>/dev/null | grep -q '^OK'; then done_ms=$(( $(now_ms) - t0 )); break; fi
    done
    [ -n "$done_ms" ] || sleep 0.01
  done
  echo "kill $k: leader $leader, first acknowledged write after $done_ms ms"
  times="$times $done_ms"
  start "$leader"
  for _ in $(seq 100); do redis-cli -p $((7600 + 10 * leader)) info raft 2>/dev/null | grep -q 'raft_role:follower' && break; sleep 0.1; done
  sleep 1
done
echo "$times" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "failover median of %d kills: %d ms (min %d, max %d)\n", NR, (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[1], a[NR]}'
