#!/bin/sh
# Makes sure what the tests (or, with "bench", the benchmarks; with "tls", a TLS=1 build) need
# is installed. As root it installs the missing Debian packages with apt-get; otherwise it
# prints the exact command. Then the npm clients of the client matrix, into build/npm.
set -eu
cd "$(dirname "$0")/.."
need=""
missing() { need="$need $1"; }

[ -f /usr/include/catch2/catch.hpp ] || missing catch2
command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1 || missing redis-tools
/usr/bin/python3 -c 'import redis' >/dev/null 2>&1 || missing python3-redis
# The tests that send the same commands to a real redis-server and compare replies ([redis]).
command -v redis-server >/dev/null 2>&1 || missing redis-server
# INFO as Redis tools read it ([exporter], tests/test_info.cpp).
command -v prometheus-redis-exporter >/dev/null 2>&1 || missing prometheus-redis-exporter
# The Jepsen-style tests: network namespaces and veth pairs (ip), partitions and loss (nft).
command -v ip >/dev/null 2>&1 || missing iproute2
command -v nft >/dev/null 2>&1 || missing nftables
# The consumer projects of [build] (tests/consumer/): CMake, pkg-config, git (FetchContent).
command -v cmake >/dev/null 2>&1 || missing cmake
command -v pkg-config >/dev/null 2>&1 || missing pkgconf
command -v git >/dev/null 2>&1 || missing git
# The client matrix ([clients], tests/test_clients.cpp): a hiredis program built at test time
# (the benchmarks use hiredis too), and Node.js with npm for ioredis and node-redis.
[ -f /usr/include/hiredis/hiredis.h ] || missing libhiredis-dev
command -v cc >/dev/null 2>&1 || missing gcc
command -v node >/dev/null 2>&1 || missing nodejs
command -v npm >/dev/null 2>&1 || missing npm
# TLS=1 (RAFT_OPENSSL_SUPPORT): OpenSSL's headers and libraries; the [tls] tests make their
# certificates with the openssl command.
if [ "${1:-}" = tls ]; then
  [ -f /usr/include/openssl/ssl.h ] || missing libssl-dev
  command -v openssl >/dev/null 2>&1 || missing openssl
fi

if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $need >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $need >/dev/null; }
  else
    echo "missing:$need" >&2
    echo "install them with: sudo apt-get install -y$need" >&2
    exit 1
  fi
fi

# ioredis and node-redis at the versions of tests/clients/package-lock.json, into build/npm
# (no root needed; again only when the lock file changed). Without the npm registry the
# [clients] test skips those two and says so.
npm_dir=build/npm
if command -v npm >/dev/null 2>&1 && ! cmp -s tests/clients/package-lock.json "$npm_dir/package-lock.json"; then
  mkdir -p "$npm_dir"
  cp tests/clients/package.json tests/clients/package-lock.json "$npm_dir/"
  echo "installing the npm clients (tests/clients/package-lock.json) into $npm_dir"
  if ! npm ci --prefix "$npm_dir" --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null; then
    rm -f "$npm_dir/package-lock.json"
    echo "npm ci failed: the [clients] test will skip ioredis and node-redis" >&2
  fi
fi
exit 0
