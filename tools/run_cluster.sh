#!/bin/sh
# `make run`: the article's cluster on this machine. Node 1 founds it at 127.0.0.1:5010;
# nodes 2 and 3 join with -e. Data lives under build/run/ (a second `make run` restarts the
# same cluster from its disks). Ctrl-C stops all three.
#   tools/run_cluster.sh BINARY [IP [NODE_OPTION...]]
# IP replaces 127.0.0.1, and the options go to every node (the process tests run the script on
# an address of their own, with --time-scale under sanitizers).
set -eu
bin=$1
ip=${2:-127.0.0.1}
[ $# -ge 2 ] && shift 2 || shift $#
dir=build/run
mkdir -p "$dir"
pids=""
stop() {
  trap - INT TERM EXIT
  [ -n "$pids" ] && kill $pids 2>/dev/null || true
  for p in $pids; do wait "$p" 2>/dev/null || true; done
  echo "stopped"
}
trap stop INT TERM EXIT
"$bin" -i 1 -a "$ip:5010" -d "$dir/raft-1-5010" "$@" & pids="$pids $!"
"$bin" -i 2 -a "$ip:5020" -d "$dir/raft-2-5020" -e "$ip:5010" "$@" & pids="$pids $!"
"$bin" -i 3 -a "$ip:5030" -d "$dir/raft-3-5030" -e "$ip:5010,$ip:5020" "$@" & pids="$pids $!"
cat <<MSG

  Three nodes: $ip:5010 (1), :5020 (2), :5030 (3); peers on port + 1.
  Try:   redis-cli -h $ip -p 5010 set key value
         redis-cli -h $ip -p 5020 get key
         redis-cli -h $ip -p 5030 info raft
         telnet $ip 5010        (type: set k v)
  Ctrl-C stops all three.

MSG
wait
