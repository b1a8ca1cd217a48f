// A write load whose every outcome is recorded, and the check that the data holds what was
// acknowledged: the crash and upgrade tests (tests/test_crash.cpp, tests/test_upgrade.cpp).
//
// Each Writer is one client on one connection, one command at a time, to the node it is
// connected to (leader or follower: a follower forwards). It cycles through three writes whose
// loss or doubling shows:
//   SET s:<client>:<n> v<client>:<n>     a key of its own per write
//   INCR ctr:<client>                     its counter
//   RPUSH list:<client> <client>:<n>      its list, one unique element per write
// and records each outcome:
//   acknowledged  +OK or an integer: it happened, exactly once, and must survive anything
//   not run       -CLUSTERDOWN, -TRYAGAIN, -MOVED, or a command that never left the client:
//                 the node promises it was never appended, so it must never appear
//   unknown       -TIMEOUT, -MISCONF, a connection that dropped before the answer: it may
//                 or may not have happened (Raft may commit it later), but at most once, since
//                 nobody retries it (a client that retried an unknown write could see it twice)
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "proc.hpp"
#include "resp.hpp"

namespace write_load {

using std::chrono::milliseconds;

enum class Outcome { Acked, NotRun, Unknown };

struct Write {
  char kind = 's';     // 's' SET, 'i' INCR, 'r' RPUSH
  long seq = 0;        // the client's write number
  std::string value;   // SET's value, RPUSH's element
  Outcome outcome = Outcome::Unknown;
  long long number = 0;  // acknowledged INCR: the new value; RPUSH: the new length
  std::string reply;     // an answer no node should give (a bug of the test or the node)
};

inline std::string set_key(int client, long seq) { return "s:" + std::to_string(client) + ":" + std::to_string(seq); }
inline std::string counter_key(int client) { return "ctr:" + std::to_string(client); }
inline std::string list_key(int client) { return "list:" + std::to_string(client); }

/// One client. run() on its own thread; the history is read once that thread is joined.
class Writer {
 public:
  explicit Writer(int id) : id_(id) {}
  int id() const { return id_; }
  const std::vector<Write>& history() const { return history_; }

  /// Writes until `stop`, to the nodes at `ips` (port `port`), starting with ips[id % n] and
  /// moving to the next one whenever a node cannot be reached or has no leader.
  void run(const std::vector<std::string>& ips, int port, const std::atomic<bool>& stop, std::atomic<long>& acked) {
    proc::Client c;
    std::size_t target = static_cast<std::size_t>(id_);
    while (!stop.load()) {
      if (!c.connected() && !c.connect(ips[target % ips.size()], port, proc::scaled(500))) {
        ++target;
        std::this_thread::sleep_for(milliseconds(20));
        continue;
      }
      Write w;
      w.seq = next_++;
      w.kind = "sir"[w.seq % 3];
      std::vector<std::string> cmd;
      if (w.kind == 's') {
        w.value = "v" + std::to_string(id_) + ":" + std::to_string(w.seq);
        cmd = {"SET", set_key(id_, w.seq), w.value};
      } else if (w.kind == 'i') {
        cmd = {"INCR", counter_key(id_)};
      } else {
        w.value = std::to_string(id_) + ":" + std::to_string(w.seq);
        cmd = {"RPUSH", list_key(id_), w.value};
      }
      if (!c.send_command(cmd)) {
        w.outcome = Outcome::NotRun;  // not all of it left: a partial command never runs
      } else {
        const resp::Value r = c.read(proc::scaled(10000));
        classify(r, w);
        if (r.is_error() && proc::starts_with(r.str, "IOERR")) c.close();
      }
      if (w.outcome == Outcome::Acked) ++acked;
      if (w.outcome != Outcome::Acked) {
        ++target;  // this node cannot serve writes now: another may
        c.close();
        std::this_thread::sleep_for(milliseconds(5));
      }
      history_.push_back(std::move(w));
    }
  }

 private:
  static void classify(const resp::Value& r, Write& w) {
    if (r.type == resp::Type::Integer && w.kind != 's') {
      w.outcome = Outcome::Acked;
      w.number = r.num;
    } else if (r.type == resp::Type::SimpleString && r.str == "OK" && w.kind == 's') {
      w.outcome = Outcome::Acked;
    } else if (r.is_error() && (proc::starts_with(r.str, "CLUSTERDOWN") || proc::starts_with(r.str, "TRYAGAIN") ||
                                proc::starts_with(r.str, "MOVED"))) {
      w.outcome = Outcome::NotRun;
    } else if (r.is_error() && (proc::starts_with(r.str, "TIMEOUT") || proc::starts_with(r.str, "MISCONF") ||
                                proc::starts_with(r.str, "IOERR"))) {
      w.outcome = Outcome::Unknown;
    } else {
      w.outcome = Outcome::Unknown;
      w.reply = proc::show(r);
    }
  }

  int id_;
  long next_ = 0;
  std::vector<Write> history_;
};

/// Writers on their threads, and a checkpointer that asks a node for a snapshot now and then
/// (so that snapshots are written, and interrupted, under the load too).
class Load {
 public:
  Load(std::vector<Writer>& writers, std::vector<std::string> ips, int port, milliseconds checkpoint_every)
      : ips_(std::move(ips)) {
    for (Writer& w : writers) threads_.emplace_back([this, &w, port] { w.run(ips_, port, stop_, acked_); });
    if (checkpoint_every.count() > 0)
      threads_.emplace_back([this, port, checkpoint_every] {
        std::size_t n = 0;
        while (!stop_.load()) {
          std::this_thread::sleep_for(checkpoint_every);  // a pace, not a synchronisation
          proc::Client c(ips_[n++ % ips_.size()], port, proc::scaled(500));
          if (!c.connected()) continue;
          // This pace is faster than the default checkpoint-interval (1 s) allows; a release
          // without the setting refuses the CONFIG SET, and paces nothing.
          c.call({"CONFIG", "SET", "checkpoint-interval", "0"}, proc::scaled(5000));
          if (proc::show(c.call({"CHECKPOINT"}, proc::scaled(5000))) == "OK") ++checkpoints_;
        }
      });
  }
  ~Load() { stop(); }
  Load(const Load&) = delete;
  Load& operator=(const Load&) = delete;

  long acked() const { return acked_.load(); }
  long checkpoints() const { return checkpoints_.load(); }
  void stop() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  std::vector<std::string> ips_;
  std::atomic<bool> stop_{false};
  std::atomic<long> acked_{0};
  std::atomic<long> checkpoints_{0};
  std::vector<std::thread> threads_;
};

struct Counts {
  long acked = 0, not_run = 0, unknown = 0;
};

inline Counts count(const std::vector<Writer>& writers) {
  Counts c;
  for (const Writer& w : writers)
    for (const Write& x : w.history())
      (x.outcome == Outcome::Acked ? c.acked : x.outcome == Outcome::NotRun ? c.not_run : c.unknown)++;
  return c;
}

/// Reads the state through `read` (one command, its reply; the caller decides which node and
/// retries what may be retried) and returns every way it contradicts the writers' histories,
/// one sentence each; empty when it holds exactly what it must.
inline std::vector<std::string> check(const std::vector<Writer>& writers,
                                      const std::function<resp::Value(const std::vector<std::string>&)>& read) {
  std::vector<std::string> problems;
  auto problem = [&](const std::string& p) {
    if (problems.size() < 20) problems.push_back(p);
  };
  for (const Writer& wr : writers) {
    const int id = wr.id();
    const std::vector<Write>& h = wr.history();
    for (const Write& w : h)
      if (!w.reply.empty()) problem("client " + std::to_string(id) + " write " + std::to_string(w.seq) + " got " + w.reply);

    // SET: an acknowledged key holds its value; a key of a write that did not run is absent.
    std::vector<const Write*> sets;
    for (const Write& w : h)
      if (w.kind == 's') sets.push_back(&w);
    for (std::size_t at = 0; at < sets.size(); at += 200) {
      std::vector<std::string> cmd{"MGET"};
      const std::size_t end = std::min(sets.size(), at + 200);
      for (std::size_t i = at; i < end; ++i) cmd.push_back(set_key(id, sets[i]->seq));
      const resp::Value r = read(cmd);
      if (r.elements.size() != end - at) {
        problem("MGET answered " + proc::show(r));
        continue;
      }
      for (std::size_t i = at; i < end; ++i) {
        const Write& w = *sets[i];
        const resp::Value& v = r.elements[i - at];
        const bool present = v.type == resp::Type::BulkString;
        if (present && std::string(v.text()) != w.value)
          problem(set_key(id, w.seq) + " holds " + proc::show(v) + ", not " + w.value);
        if (w.outcome == Outcome::Acked && !present) problem("acknowledged SET " + set_key(id, w.seq) + " is lost");
        if (w.outcome == Outcome::NotRun && present)
          problem("SET " + set_key(id, w.seq) + " was answered as not run, yet it is there");
      }
    }

    // INCR: each acknowledged increment is counted once; unknown ones at most once.
    long acked = 0, possible = 0;
    for (const Write& w : h) {
      if (w.kind != 'i' || w.outcome == Outcome::NotRun) continue;
      ++possible;
      if (w.outcome != Outcome::Acked) continue;
      ++acked;
      if (w.number < acked || w.number > possible)
        problem("INCR " + counter_key(id) + " write " + std::to_string(w.seq) + " answered " +
                std::to_string(w.number) + " after " + std::to_string(acked) + " acknowledged and " +
                std::to_string(possible) + " possible increments");
    }
    const resp::Value ctr = read({"GET", counter_key(id)});
    const long value = ctr.type == resp::Type::BulkString ? std::atol(std::string(ctr.text()).c_str()) : 0;
    if (ctr.is_error()) problem("GET " + counter_key(id) + " answered " + proc::show(ctr));
    if (value < acked || value > possible)
      problem(counter_key(id) + " is " + std::to_string(value) + " after " + std::to_string(acked) +
              " acknowledged and " + std::to_string(possible) + " possible increments");

    // RPUSH: every acknowledged element once, where its answer said; nothing that did not run;
    // nothing twice. (An unknown push may land after a later one: a forward still on its way
    // to the leader when the client was answered -TIMEOUT.)
    std::map<std::string, const Write*> pushed;
    for (const Write& w : h)
      if (w.kind == 'r') pushed[w.value] = &w;
    const resp::Value list = read({"LRANGE", list_key(id), "0", "-1"});
    if (list.is_error()) problem("LRANGE " + list_key(id) + " answered " + proc::show(list));
    std::map<std::string, long> position;
    for (std::size_t i = 0; i < list.elements.size(); ++i) {
      const std::string e(list.elements[i].text());
      auto it = pushed.find(e);
      if (it == pushed.end()) {
        problem(list_key(id) + " holds " + e + ", which was never pushed");
        continue;
      }
      if (position.count(e)) problem(list_key(id) + " holds " + e + " twice (it was pushed once)");
      position[e] = static_cast<long>(i);
      if (it->second->outcome == Outcome::NotRun)
        problem(list_key(id) + " holds " + e + ", answered as not run");
    }
    for (const auto& [e, w] : pushed) {
      if (w->outcome != Outcome::Acked) continue;
      auto p = position.find(e);
      if (p == position.end())
        problem("acknowledged RPUSH of " + e + " to " + list_key(id) + " is lost");
      else if (p->second != w->number - 1)
        problem(list_key(id) + " holds " + e + " at " + std::to_string(p->second) + ", but its RPUSH answered length " +
                std::to_string(w->number));
    }
  }
  return problems;
}

}  // namespace write_load
