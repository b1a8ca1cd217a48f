#!/bin/sh
# Builds the consumer program (tests/consumer/main.cpp) against raft.hpp one way, from a clean
# WORK_DIR, and runs it: it founds a node on IP:PORT, writes, reads, stops, prints
# "consumer ok VERSION". Used by tests/test_build.cpp ([build]).
#   build_each_way.sh WAY SOURCE_DIR WORK_DIR IP:PORT
# WAY: add_subdirectory | FetchContent | find_package | find_package_tls | pkg-config
set -eu
way=$1
src=$(cd "$2" && pwd)
work=$3
address=$4
consumer="$src/tests/consumer"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
work=$(pwd)

# `cmake --install` of the library into $work/prefix, from a build directory of its own.
install_library() {
  cmake -S "$src" -B library-build -DCMAKE_INSTALL_PREFIX="$work/prefix"
  cmake --install library-build
}
configure_consumer() {
  cmake -S "$consumer" -B consumer-build "$@"
}

case $way in
  add_subdirectory)
    configure_consumer -DRAFT_WAY=add_subdirectory -DRAFT_SOURCE_DIR="$src"
    ;;
  FetchContent)
    # A git repository of the library's files as they are in SOURCE_DIR now (committed or
    # not), fetched over file://, as FetchContent would fetch a release from a forge.
    mkdir repo
    cp -R "$src/CMakeLists.txt" "$src/cmake" "$src/raft.hpp" "$src/resp.hpp" repo/
    git -C repo init -q
    git -C repo add .
    git -C repo -c user.name=test -c user.email=test@localhost commit -q -m release
    git -C repo tag v-test
    configure_consumer -DRAFT_WAY=FetchContent -DRAFT_GIT_REPOSITORY="file://$work/repo" -DRAFT_GIT_TAG=v-test
    ;;
  find_package)
    install_library
    configure_consumer -DRAFT_WAY=find_package -DCMAKE_PREFIX_PATH="$work/prefix"
    ;;
  find_package_tls)
    install_library
    configure_consumer -DRAFT_WAY=find_package -DRAFT_TLS=ON -DCMAKE_PREFIX_PATH="$work/prefix"
    ;;
  pkg-config)
    install_library
    pc=$(find "$work/prefix" -name raft_hpp.pc)
    [ -n "$pc" ] || { echo "cmake --install wrote no raft_hpp.pc" >&2; exit 1; }
    export PKG_CONFIG_PATH="${pc%/*}"
    echo "pkg-config raft_hpp $(pkg-config --modversion raft_hpp): $(pkg-config --cflags --libs raft_hpp)"
    # With OpenSSL found, raft_hpp_tls.pc too: raft_hpp's flags, the macro and OpenSSL's libraries.
    if [ -f "${pc%/*}/raft_hpp_tls.pc" ]; then
      tls_flags=$(pkg-config --cflags --libs raft_hpp_tls)
      echo "pkg-config raft_hpp_tls: $tls_flags"
      case " $tls_flags " in
        *" -DRAFT_OPENSSL_SUPPORT "*" -pthread "*"-lssl"*) ;;
        *) echo "raft_hpp_tls.pc lacks -DRAFT_OPENSSL_SUPPORT, raft_hpp's flags or -lssl" >&2; exit 1 ;;
      esac
    fi
    # shellcheck disable=SC2046  # pkg-config's output is a list of flags
    ${CXX:-c++} -std=c++17 "$consumer/main.cpp" $(pkg-config --cflags --libs raft_hpp) -o consumer
    ./consumer "$address" data
    exit 0
    ;;
  *)
    echo "unknown way: $way" >&2
    exit 2
    ;;
esac
cmake --build consumer-build
./consumer-build/consumer "$address" data
