#!/bin/sh
# Makes sure what the tests (or, with "bench", the benchmarks; with "tls", a TLS=1 build) need
# is installed. As root it installs the missing Debian packages with apt-get; otherwise it
# prints the exact command.
set -eu
need=""
missing() { need="$need $1"; }

[ -f /usr/include/catch2/catch.hpp ] || missing catch2
command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1 || missing redis-tools
/usr/bin/python3 -c 'import redis' >/dev/null 2>&1 || missing python3-redis
# The tests that send the same commands to a real redis-server and compare replies ([redis]).
command -v redis-server >/dev/null 2>&1 || missing redis-server
# The Jepsen-style tests: network namespaces and veth pairs (ip), partitions and loss (nft).
command -v ip >/dev/null 2>&1 || missing iproute2
command -v nft >/dev/null 2>&1 || missing nftables
# The consumer projects of [build] (tests/consumer/): CMake, pkg-config, git (FetchContent).
command -v cmake >/dev/null 2>&1 || missing cmake
command -v pkg-config >/dev/null 2>&1 || missing pkgconf
command -v git >/dev/null 2>&1 || missing git
if [ "${1:-}" = bench ]; then
  [ -f /usr/include/hiredis/hiredis.h ] || missing libhiredis-dev
fi
# TLS=1 (RAFT_OPENSSL_SUPPORT): OpenSSL's headers and libraries; the [tls] tests make their
# certificates with the openssl command.
if [ "${1:-}" = tls ]; then
  [ -f /usr/include/openssl/ssl.h ] || missing libssl-dev
  command -v openssl >/dev/null 2>&1 || missing openssl
fi

[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing:$need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q $need >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $need >/dev/null; }
  exit 0
fi
echo "missing:$need" >&2
echo "install them with: sudo apt-get install -y$need" >&2
exit 1
