#!/bin/sh
# Durable writes and reads through redis-benchmark, ours beside Redis, in one run:
#   redis      Redis with appendonly yes, appendfsync always (one durable write per SET)
#   raft-1     one raft.hpp node (every acknowledged write fdatasync'ed)
#   raft-3     three raft.hpp nodes (every acknowledged write on two disks), to the leader
#   raft-3f    the same cluster, clients on a follower (writes forwarded, reads by ReadIndex)
# usage: bench/cluster_bench.sh RUN_RAFT_BINARY     env: N (100000) C (50) D (100) RUNS (1)
set -eu
bin=${1:-build/examples/run_raft}
N=${N:-100000} C=${C:-50} D=${D:-100} RUNS=${RUNS:-1}
work=$(mktemp -d "${TMPDIR:-/tmp}/raft-bench.XXXXXX")
pids=""
cleanup() { [ -n "$pids" ] && kill $pids 2>/dev/null; for p in $pids; do wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM
wait_port() { for _ in $(seq 100); do redis-cli -h "$1" -p "$2" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer on $1:$2" >&2; exit 1; }
bench() {  # label host port
  for r in $(seq "$RUNS"); do
    redis-cli -h "$2" -p "$3" del key:__rand_int__ >/dev/null 2>&1 || true
    timeout 600 redis-benchmark -h "$2" -p "$3" -t set,get -c "$C" -n "$N" -d "$D" -r 100000 --csv 2>/dev/null |
      grep -v '^"test"' | tr -d '"' | awk -F, -v l="$1" -v r="$r" '{printf "%-8s run=%s %-4s %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms\n", l, r, $1, $2, $5, $7}'
  done
}
stop_all() { kill $pids 2>/dev/null || true; for p in $pids; do wait "$p" 2>/dev/null || true; done; pids=""; }
echo "redis-benchmark -t set,get -c $C -n $N -d $D, $(nproc) cores, $(date -u +%F)"

if command -v redis-server >/dev/null 2>&1; then
  mkdir -p "$work/redis"
  redis-server --port 7379 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
    --dir "$work/redis" --daemonize no --logfile "$work/redis.log" & pids="$!"
  wait_port 127.0.0.1 7379
  bench redis 127.0.0.1 7379
  stop_all
else
  echo "redis-server not installed: apt-get install redis-server (skipping the Redis line)"
fi

"$bin" -i 1 -a 127.0.0.1:7410 -d "$work/single" --loglevel warning & pids="$!"
wait_port 127.0.0.1 7410
bench raft-1 127.0.0.1 7410
stop_all

"$bin" -i 1 -a 127.0.0.1:7510 -d "$work/n1" --loglevel warning & pids="$!"
wait_port 127.0.0.1 7510
"$bin" -i 2 -a 127.0.0.1:7520 -d "$work/n2" -e 127.0.0.1:7510 --loglevel warning & pids="$pids $!"
"$bin" -i 3 -a 127.0.0.1:7530 -d "$work/n3" -e 127.0.0.1:7510 --loglevel warning & pids="$pids $!"
for _ in $(seq 100); do redis-cli -p 7510 info raft | grep -q 'raft_voters:3' && break; sleep 0.1; done
bench raft-3 127.0.0.1 7510
bench raft-3f 127.0.0.1 7520
stop_all
