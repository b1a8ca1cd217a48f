// raft.hpp - an embeddable Raft node for C++17: three or five copies of a program keep one
// replicated, durable key-value state, elect a leader, run code only on the leader, and serve
// any Redis client. Copy raft.hpp and resp.hpp into your project; nothing else is needed at
// run time beyond the standard library, POSIX sockets and std::thread (TLS, optional, needs
// OpenSSL: define RAFT_OPENSSL_SUPPORT, see section 1c).
//
// GENERATED from src/raft/*.hpp by tools/amalgamate.sh - edit those parts, then run `make`.
// Each part begins with a "// ---- src/raft/NAME.hpp ----" line.
//
// Reading order (top-down):
//   1. public API: shared types, raft::Config, raft::Node, the handler table, callbacks
//   2. the store: replicated data, its repr-style snapshot text, built-in command handlers
//   3. the core: Raft as a deterministic state machine (no threads, sockets, files or clock)
//   4. storage: write-ahead log, term and vote, snapshots, recovery
//   5. runtime: POSIX sockets and a few std::threads that drive the core
// Sections 1-3 do no I/O. A reader who only wants to embed can stop after section 1.
#ifndef RAFT_HPP
#define RAFT_HPP

#include "resp.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <future>
#include <initializer_list>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

// POSIX
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <locale.h>  // uselocale: INCRBYFLOAT's text in the C locale
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/types.h>
#include <unistd.h>

#define RAFT_HPP_VERSION "0.1.0"
