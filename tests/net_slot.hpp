// Loopback addresses that no other test process on this machine uses at the same time.
//
// Each test binary (the plain, ASan and TSan builds, mutants, several checkouts) claims one
// slot for its lifetime by locking a file /tmp/raft-hpp-test-slot-<n> (an advisory lock the
// kernel drops when the process exits, even on SIGKILL). Tests put the slot into their
// 127.x.y.z addresses, so two runs at once never bind or reach each other's nodes, where a
// fixed address or the PID modulo a small number would collide now and then.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

namespace test_support {

constexpr int kAddressSlots = 100;

/// This process's slot, 0 .. kAddressSlots - 1; the same on every call.
inline int address_slot() {
  static const int slot = [] {
    for (int n = 0; n < kAddressSlots; ++n) {
      const std::string path = "/tmp/raft-hpp-test-slot-" + std::to_string(n);
      const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
      if (fd < 0) continue;
      if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return n;  // fd stays open: the lock is held
      ::close(fd);
    }
    throw std::runtime_error("all " + std::to_string(kAddressSlots) +
                             " test address slots (/tmp/raft-hpp-test-slot-*) are in use");
  }();
  return slot;
}

}  // namespace test_support
