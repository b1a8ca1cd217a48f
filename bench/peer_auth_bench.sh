#!/bin/sh
# What the peer MACs cost: write throughput, and the nodes' CPU time per write, of a 3-node
# cluster on loopback, with a peer secret, without one (the same handshake and MACs with the
# empty key), and with BASELINE_BINARY if given (a build from before peer authentication),
# alternating in one run.
# usage: bench/peer_auth_bench.sh RUN_RAFT_BINARY [BASELINE_BINARY]   env: N C D RUNS
set -eu
bin=${1:-build/examples/run_raft}
base=${2:-}
N=${N:-100000} C=${C:-50} D=${D:-100} RUNS=${RUNS:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/raft-auth-bench.XXXXXX")
pids=""
cleanup() { [ -n "$pids" ] && kill $pids 2>/dev/null; for p in $pids; do wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM
stop_all() { kill $pids 2>/dev/null || true; for p in $pids; do wait "$p" 2>/dev/null || true; done; pids=""; }
printf 'bench-peer-secret-%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/secret"
chmod 600 "$work/secret"
cpu_ticks() {  # utime + stime of the running nodes, in clock ticks
  t=0
  for p in $pids; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
cluster() {  # label binary secret-args...
  label=$1 b=$2; shift 2
  d="$work/$label-$(date +%s%N)"
  "$b" -i 1 -a 127.0.0.1:7610 -d "$d/1" --loglevel warning "$@" & pids="$!"
  for _ in $(seq 100); do redis-cli -p 7610 ping >/dev/null 2>&1 && break; sleep 0.1; done
  "$b" -i 2 -a 127.0.0.1:7620 -d "$d/2" -e 127.0.0.1:7610 --loglevel warning "$@" & pids="$pids $!"
  "$b" -i 3 -a 127.0.0.1:7630 -d "$d/3" -e 127.0.0.1:7610 --loglevel warning "$@" & pids="$pids $!"
  for _ in $(seq 200); do redis-cli -p 7610 info raft | grep -q 'raft_voters:3' && break; sleep 0.1; done
  before=$(cpu_ticks)
  line=$(timeout 600 redis-benchmark -p 7610 -t set -c "$C" -n "$N" -d "$D" -r 100000 --csv 2>/dev/null |
    grep -v '^"test"' | tr -d '"' | awk -F, -v l="$label" '{printf "%-10s %-4s %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms", l, $1, $2, $5, $7}')
  after=$(cpu_ticks)
  # The nodes' CPU time (user + system, all three) per 1000 writes: steadier than req/s on a
  # machine shared with other work.
  echo "$line  cpu $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$N" 'BEGIN{printf "%.1f", t * 1000 / hz * 1000 / n}') ms/1000 writes"
  stop_all
  rm -rf "$d"
}
echo "redis-benchmark -t set -c $C -n $N -d $D -r 100000, 3 nodes on loopback, $(nproc) cores, $(date -u +%F)"
for r in $(seq "$RUNS"); do
  cluster secret "$bin" --secret-file "$work/secret"
  cluster empty "$bin"
  [ -n "$base" ] && cluster baseline "$base"
done
