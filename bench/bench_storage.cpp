// Durable appends per second through the storage writer (group commit) for 1, 10 and 50
// concurrent writers, beside the raw write+fdatasync rate of the same disk, all measured in
// one run. Each writer thread submits one 100-byte entry and waits until it is durable before
// the next; the raw loop appends 100 bytes to a file in the same directory and calls
// fdatasync.
//
//   BENCH_DIR=/path/on/the/disk bench_storage     (default: a temporary directory here)
//   BENCH_SECONDS=2                               (time per measurement)
#include "raft.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A shared virtual disk's fsync rate can change several-fold from one second to the next, so
// each storage measurement is cut into slices alternating with slices of the raw loop, and
// compared with the raw rate measured between its own slices.
constexpr int kSlices = 10;

struct Totals {
  std::uint64_t count = 0;   // appends
  std::uint64_t fsyncs = 0;
  double seconds = 0;
  double per_second() const { return count / seconds; }
  double fsyncs_per_second() const { return fsyncs / seconds; }
};

class RawFile {
 public:
  explicit RawFile(const std::string& dir) : path_(dir + "/raw.dat") {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      std::perror("open raw.dat");
      std::exit(1);
    }
  }
  ~RawFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  void run(double seconds, Totals& t) {
    const std::string record(100, 'r');
    const auto start = Clock::now();
    while (seconds_since(start) < seconds) {
      if (::write(fd_, record.data(), record.size()) != static_cast<ssize_t>(record.size()) ||
          ::fdatasync(fd_) != 0) {
        std::perror("raw write/fdatasync");
        std::exit(1);
      }
      ++t.count;
      ++t.fsyncs;
    }
    t.seconds += seconds_since(start);
  }

 private:
  std::string path_;
  int fd_ = -1;
};

/// `writers` threads, each submitting one 100-byte entry and waiting until it is durable.
struct Order {
  std::mutex mu;  // index and seq follow submission order
  std::uint64_t next = 0;
};

void run_writers(raft::Storage& storage, raft::StorageWriter& writer, Order& order,
                 int writers, double seconds, Totals& t) {
  const std::uint64_t fsyncs_before = storage.fsync_count();
  std::atomic<std::uint64_t> appends{0};
  std::atomic<bool> failed{false};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < writers; ++i) {
    threads.emplace_back([&] {
      const std::string payload(100, 'p');
      while (!failed && seconds_since(start) < seconds) {
        // Shared: the writer thread may still be inside set_value when get() returns.
        auto durable = std::make_shared<std::promise<bool>>();
        std::future<bool> done = durable->get_future();
        {
          std::lock_guard<std::mutex> lock(order.mu);
          raft::PersistBatch batch;
          batch.seq = ++order.next;
          raft::LogEntry e;
          e.index = batch.seq;
          e.term = 1;
          e.payload = payload;
          batch.entries.push_back(std::move(e));
          writer.submit(std::move(batch), [durable](bool ok) { durable->set_value(ok); });
        }
        if (!done.get()) failed = true;
        ++appends;
      }
    });
  }
  for (auto& th : threads) th.join();
  t.seconds += seconds_since(start);
  writer.flush();
  if (failed) {
    std::fprintf(stderr, "storage failed: %s\n", storage.failure().c_str());
    std::exit(1);
  }
  t.count += appends;
  t.fsyncs += storage.fsync_count() - fsyncs_before;
}

}  // namespace

int main() {
  const char* seconds_env = std::getenv("BENCH_SECONDS");
  const double seconds = seconds_env != nullptr ? std::atof(seconds_env) : 2.0;
  std::string dir = "bench-storage-XXXXXX";
  if (const char* env = std::getenv("BENCH_DIR"); env != nullptr && *env != '\0')
    dir = std::string(env) + "/" + dir;
  std::vector<char> pattern(dir.begin(), dir.end());
  pattern.push_back('\0');
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  dir = pattern.data();

  std::printf("storage benchmark in %s: 100-byte entries, %.1f s per measurement in %d slices\n"
              "alternating with slices of the raw loop (write 100 bytes + fdatasync)\n\n",
              dir.c_str(), seconds, kSlices);
  std::printf("%-12s %14s %12s %14s %16s %10s\n", "writers", "appends/s", "fsyncs/s",
              "appends/fsync", "raw fsyncs/s", "vs raw");
  RawFile raw(dir);
  Totals all_raw;
  double ratio_50 = 0;
  for (int writers : {1, 10, 50}) {
    raft::StorageOptions options;
    options.dir = dir + "/writers-" + std::to_string(writers);
    raft::Identity identity;
    identity.node_id = "bench";
    raft::Storage storage = raft::Storage::create(options, identity);
    Order order;
    Totals stored, beside;
    {
      raft::StorageWriter writer(storage);
      for (int slice = 0; slice < kSlices; ++slice) {
        raw.run(seconds / kSlices, beside);
        run_writers(storage, writer, order, writers, seconds / kSlices, stored);
      }
    }
    all_raw.count += beside.count;
    all_raw.fsyncs += beside.fsyncs;
    all_raw.seconds += beside.seconds;
    const double ratio = stored.per_second() / beside.fsyncs_per_second();
    if (writers == 50) ratio_50 = ratio;
    std::printf("%-12d %14.0f %12.0f %14.1f %16.0f %9.1fx\n", writers, stored.per_second(),
                stored.fsyncs_per_second(),
                stored.fsyncs > 0 ? static_cast<double>(stored.count) / stored.fsyncs : 0.0,
                beside.fsyncs_per_second(), ratio);
  }
  std::printf("\nraw write+fdatasync over the whole run: %.0f fsyncs/s\n",
              all_raw.fsyncs_per_second());
  std::printf("50-writer appends/s over the raw fdatasync rate beside it: %.1fx (goal: >= 20x)\n",
              ratio_50);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
