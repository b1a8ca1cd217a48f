// The clients of the Jepsen-style tests: several threads, one connection each, sending
// registers (GET, SET, and the cas example's `cas key expected new`), counters (INCR, GET) and
// lists (RPUSH of a unique element, LRANGE of the whole list) to any node - followers too, whose
// reads are linearizable - and writing every operation to the history (tests/jepsen/history.hpp)
// as it happens: invoked just before the request leaves, completed when the reply is in.
//
// What each reply means for the history (classify() below; the node's error replies are in the
// README's table):
//   a reply of the expected shape        ok (cas: `true` when it answers the expected value)
//   -CLUSTERDOWN, -TRYAGAIN, -MOVED      fail: the node promises the command was not run
//   -NOAUTH, -NOPERM, -OOM               fail: refused before anything is proposed (the
//                                        security and memory-limit work adds them)
//   -ERR ... was not run                 fail: the node is stopping
//   a request that did not leave whole   fail: a partial command is never run
//   -TIMEOUT                             info: the outcome is unknown (Raft may still commit it)
//   -MISCONF                             info for a write: the node's storage failed while the
//                                        write waited (another node may still commit it)
//   IOERR (the test client's own code:   info for a write: the connection broke or no reply
//   connection lost, no reply in time)   came in time; the command may have run
//   any error on a read                  fail: a read changes nothing, whatever happened
//   anything else                        unexpected: recorded as info, and the run fails
// After a fail the client tries another node; after an info its process id is spent (Jepsen's
// rule) and it goes on as a new process, on another node.
//
// Keys are used for a bounded number of operations each, then retired (as Jepsen's
// independent keys): the linearizability search is per key, and stays small.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../proc.hpp"
#include "cluster.hpp"
#include "history.hpp"
#include "network.hpp"

namespace jepsen {

enum class Reply { Ok, Fail, Info, Unexpected };

/// The class of an error reply (the code word first), for a read or a write.
inline Reply classify_error(const std::string& error, bool read) {
  auto is = [&](const char* code) { return proc::starts_with(error, code); };
  if (is("CLUSTERDOWN") || is("TRYAGAIN") || is("MOVED") || is("NOAUTH") || is("NOPERM") || is("OOM")) return Reply::Fail;
  if (is("ERR ") && (error.find("was not run") != std::string::npos)) return Reply::Fail;
  if (read) return Reply::Fail;
  if (is("TIMEOUT") || is("MISCONF") || is("IOERR")) return Reply::Info;
  return Reply::Unexpected;
}

struct WorkloadOptions {
  std::uint64_t seed = 1;
  int clients = 10;
  int think_ms = 4;             // a pause of 0..think_ms between a client's operations
  long ops_per_register = 300;  // operations on a key before it is retired
  long ops_per_counter = 400;
  long ops_per_list = 150;
  int active_keys = 3;          // keys of each kind in use at once
  proc::milliseconds reply_timeout = proc::scaled(5000);
};

class Workload {
 public:
  /// ok_per_second() counts from `origin`.
  Workload(HistoryWriter& history, std::vector<Node*> nodes, const net::Network& net, WorkloadOptions o,
           proc::Clock::time_point origin)
      : history_(history), nodes_(std::move(nodes)), net_(net), o_(o), started_(origin) {}
  ~Workload() { stop(); }
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  void start() {
    for (int i = 0; i < o_.clients; ++i) threads_.emplace_back([this, i] { client(i); });
  }
  /// Each client finishes the operation it is in (at most the reply timeout), then stops.
  void stop() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

  enum class KeyKind { Register, Counter, List };
  /// Every key an operation was invoked on.
  std::vector<std::string> keys(KeyKind kind) const {
    std::lock_guard<std::mutex> lock(mu_);
    const auto& s = kind == KeyKind::Register ? registers_ : kind == KeyKind::Counter ? counters_ : lists_;
    return {s.begin(), s.end()};
  }
  long unexpected() const { return unexpected_.load(); }
  std::vector<std::string> unexpected_replies() const {
    std::lock_guard<std::mutex> lock(mu_);
    return unexpected_text_;
  }
  /// Acknowledged operations completed in each second since the origin.
  std::vector<long> ok_per_second() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ok_per_second_;
  }

 private:
  struct KeySpace {
    char prefix;
    long per_key;
    std::atomic<long> ops{0};
  };

  std::string pick_key(KeySpace& space, std::mt19937_64& rng) {
    const long n = space.ops++;
    const long generation = n / (space.per_key * o_.active_keys);
    const long k = generation * o_.active_keys + static_cast<long>(rng() % static_cast<std::uint64_t>(o_.active_keys));
    const std::string key = std::string(1, space.prefix) + std::to_string(k);
    std::lock_guard<std::mutex> lock(mu_);
    (space.prefix == 'r' ? registers_ : space.prefix == 'c' ? counters_ : lists_).insert(key);
    return key;
  }

  void count_ok() {
    const auto second = std::chrono::duration_cast<std::chrono::seconds>(proc::Clock::now() - started_).count();
    std::lock_guard<std::mutex> lock(mu_);
    if (ok_per_second_.size() <= static_cast<std::size_t>(second)) ok_per_second_.resize(static_cast<std::size_t>(second) + 1);
    ++ok_per_second_[static_cast<std::size_t>(second)];
  }

  void note_unexpected(const std::string& what) {
    ++unexpected_;
    std::lock_guard<std::mutex> lock(mu_);
    if (unexpected_text_.size() < 10) unexpected_text_.push_back(what);
  }

  void client(int index) {
    std::mt19937_64 rng(o_.seed * 1000003 + static_cast<std::uint64_t>(index));
    std::uint64_t process = history_.new_process();
    std::size_t target = static_cast<std::size_t>(index) % nodes_.size();
    proc::Client conn;
    std::map<std::string, std::optional<std::string>> last_seen;  // per register: what we saw last
    long seq = 0;
    auto move_on = [&] {
      conn.close();
      if (nodes_.size() > 1) target = (target + 1 + rng() % (nodes_.size() - 1)) % nodes_.size();
    };
    while (!stop_) {
      if (o_.think_ms > 0) std::this_thread::sleep_for(proc::milliseconds(rng() % static_cast<unsigned>(o_.think_ms + 1)));
      if (!conn.connected()) {
        bool ok;
        {
          net::InNamespace in(net_.hub_fd());
          ok = conn.connect(nodes_[target]->ip(), kClientPort, proc::scaled(500));
        }
        if (!ok) {
          move_on();
          std::this_thread::sleep_for(proc::milliseconds(20));
          continue;
        }
      } else if (rng() % 40 == 0) {
        move_on();  // now and then another node, so that every node serves reads
        continue;
      }

      // The operation.
      const std::string tag = std::to_string(index) + "-" + std::to_string(seq++);
      const int dice = static_cast<int>(rng() % 100);
      Function fn;
      std::string key;
      std::vector<Value> args;
      std::vector<std::string> command;
      if (dice < 45) {
        key = pick_key(registers_space_, rng);
        const int r = static_cast<int>(rng() % 10);
        if (r < 4) {
          fn = Function::Read;
          command = {"GET", key};
        } else if (r < 7) {
          fn = Function::Write;
          args = {Value::of("w" + tag)};
          command = {"SET", key, "w" + tag};
        } else {
          fn = Function::Cas;
          const auto seen = last_seen.find(key);
          const std::optional<std::string> expected = seen == last_seen.end() ? std::nullopt : seen->second;
          args = {expected ? Value::of(*expected) : Value::nil(), Value::of("c" + tag)};
          command = {"cas", key, expected ? *expected : "none", "c" + tag};
        }
      } else if (dice < 65) {
        key = pick_key(counters_space_, rng);
        if (rng() % 10 < 7) {
          fn = Function::Incr;
          command = {"INCR", key};
        } else {
          fn = Function::Read;
          command = {"GET", key};
        }
      } else {
        key = pick_key(lists_space_, rng);
        if (rng() % 10 < 7) {
          fn = Function::Rpush;
          args = {Value::of("e" + tag)};
          command = {"RPUSH", key, "e" + tag};
        } else {
          fn = Function::Lrange;
          command = {"LRANGE", key, "0", "-1"};
        }
      }
      const bool read = fn == Function::Read || fn == Function::Lrange;

      history_.invoke(process, fn, key, args);
      resp::Value reply;
      if (!conn.send_command(command)) {
        history_.fail(process, "the request did not leave whole: " + conn.error());
        move_on();
        continue;
      }
      reply = conn.read(o_.reply_timeout);

      std::optional<Value> result;
      Reply outcome = Reply::Unexpected;
      if (!reply.is_error()) {
        outcome = interpret(fn, command, reply, result);
      } else {
        outcome = classify_error(reply.str, read);
      }
      const std::string note = reply.is_error() ? reply.str.substr(0, 120) : "";
      switch (outcome) {
        case Reply::Ok:
          history_.ok(process, result);
          count_ok();
          if (fn == Function::Read && key[0] == 'r') last_seen[key] = result->is_nil() ? std::nullopt : std::optional<std::string>(result->text);
          if (fn == Function::Write) last_seen[key] = args[0].text;
          if (fn == Function::Cas) {
            if (result->text == "true")
              last_seen[key] = args[1].text;
            else
              last_seen[key] = reply.type == resp::Type::NullBulk ? std::nullopt : std::optional<std::string>(reply.str);
          }
          break;
        case Reply::Fail:
          history_.fail(process, note);
          move_on();
          break;
        case Reply::Info:
        case Reply::Unexpected:
          if (outcome == Reply::Unexpected)
            note_unexpected(nodes_[target]->id() + " answered " + command[0] + " " + key + " with " + proc::show(reply));
          history_.info(process, outcome == Reply::Unexpected ? "UNEXPECTED " + proc::show(reply) : note);
          process = history_.new_process();
          move_on();
          break;
      }
      if (reply.is_error() && proc::starts_with(reply.str, "IOERR")) conn.close();
    }
  }

  // The result of a non-error reply, or Unexpected when its shape is wrong.
  static Reply interpret(Function fn, const std::vector<std::string>& command, const resp::Value& reply,
                         std::optional<Value>& result) {
    switch (fn) {
      case Function::Read:
        if (reply.type == resp::Type::NullBulk) return result = Value::nil(), Reply::Ok;
        if (reply.type == resp::Type::BulkString) return result = Value::of(reply.str), Reply::Ok;
        return Reply::Unexpected;
      case Function::Write:
        return reply.type == resp::Type::SimpleString && reply.str == "OK" ? Reply::Ok : Reply::Unexpected;
      case Function::Cas:
        // The example answers the expected value when it swapped, else the current value (nil
        // for a missing key); the values written are unique, never "none".
        if (reply.type == resp::Type::BulkString) return result = Value::of(reply.str == command[2] ? "true" : "false"), Reply::Ok;
        if (reply.type == resp::Type::NullBulk) return result = Value::of("false"), Reply::Ok;
        return Reply::Unexpected;
      case Function::Incr:
      case Function::Rpush:
        if (reply.type == resp::Type::Integer) return result = Value::of(reply.num), Reply::Ok;
        return Reply::Unexpected;
      case Function::Lrange: {
        if (reply.type != resp::Type::Array) return Reply::Unexpected;
        std::vector<std::string> items;
        for (const resp::Value& e : reply.elements) {
          if (e.type != resp::Type::BulkString) return Reply::Unexpected;
          items.push_back(e.str);
        }
        return result = Value::list_of(std::move(items)), Reply::Ok;
      }
    }
    return Reply::Unexpected;
  }

  HistoryWriter& history_;
  std::vector<Node*> nodes_;
  const net::Network& net_;
  WorkloadOptions o_;
  proc::Clock::time_point started_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  KeySpace registers_space_{'r', o_.ops_per_register};
  KeySpace counters_space_{'c', o_.ops_per_counter};
  KeySpace lists_space_{'l', o_.ops_per_list};
  mutable std::mutex mu_;
  std::set<std::string> registers_, counters_, lists_;
  std::atomic<long> unexpected_{0};
  std::vector<std::string> unexpected_text_;
  std::vector<long> ok_per_second_;
};

}  // namespace jepsen
