// Random histories from a real execution: concurrent clients invoke operations on registers,
// counters and lists; each operation takes effect at one instant between its invocation and
// its completion (in the order of those instants, on a real sequential model), so the history
// is linearizable by construction. Some operations fail (never take effect) and some end
// unknown (info): those take effect before the client gives up, later (even after the final
// reads), or never. For the checker's self-tests and measurements; the harness can use it to
// try its own tooling.
#pragma once

#include "history.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace jepsen::generate {

struct Options {
  std::uint64_t seed = 1;
  int processes = 5;            // concurrent clients
  std::size_t operations = 100;  // invocations in total (besides the final reads)
  int registers = 1, counters = 0, lists = 0;
  int value_domain = 0;  // register values drawn from 0..N-1; 0: every write a new value
  int max_delta = 1;     // increments by 1..max_delta
  double p_fail = 0.05;  // an operation is refused (never takes effect)
  double p_info = 0.05;  // an operation ends unknown
  double p_info_applied = 0.5;  // ... and takes effect anyway (at some time after its invocation)
  bool cas_mismatch_is_ok = true;  // a CAS whose value did not match is `ok -> false` (else `fail`)
  bool push_lengths = true;        // rpush records the new length
  bool final_reads = true;         // after everything, one read of every key by a new process
  int max_gap_ns = 5;              // time between two steps of the simulation: 1..max_gap_ns
};

/// The events, in time order.
std::vector<Event> history(const Options& options);

// =========================================================================================

namespace detail {

enum class KeyType { Register, Counter, List };

class Simulation {
 public:
  explicit Simulation(const Options& o) : o_(o), rng_(o.seed) {
    for (int i = 0; i < o.registers; ++i) keys_.push_back({"r" + std::to_string(i), KeyType::Register});
    for (int i = 0; i < o.counters; ++i) keys_.push_back({"c" + std::to_string(i), KeyType::Counter});
    for (int i = 0; i < o.lists; ++i) keys_.push_back({"l" + std::to_string(i), KeyType::List});
    slots_.resize(static_cast<std::size_t>(o.processes));
    for (std::size_t i = 0; i < slots_.size(); ++i) slots_[i].process = next_process_++;
  }

  std::vector<Event> run() {
    std::size_t issued = 0;
    auto busy = [&] {
      for (const Slot& s : slots_)
        if (s.op) return true;
      return false;
    };
    while (issued < o_.operations || busy()) {
      tick();
      if (!floating_.empty() && chance(0.1)) {  // an unknown operation takes effect late
        const std::size_t i = pick(floating_.size());
        apply(floating_[i]);
        floating_.erase(floating_.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      Slot& s = slots_[pick(slots_.size())];
      if (!s.op) {
        if (issued < o_.operations) invoke(s), ++issued;
      } else {
        advance(s);
      }
    }
    for (Pending& p : floating_)
      if (chance(0.5)) apply(p);  // late, or never
    floating_.clear();
    if (o_.final_reads)
      for (const auto& [key, type] : keys_) {
        Slot s;
        s.process = next_process_++;
        tick();
        start(s, key, type == KeyType::List ? Function::Lrange : Function::Read, {}, Fate::Normal);
        tick();
        advance(s);  // takes effect
        tick();
        advance(s);  // returns
      }
    return std::move(events_);
  }

 private:
  enum class Fate { Normal, Fail, InfoApplied, InfoNever };
  struct Pending {
    Event call;
    Fate fate = Fate::Normal;
    bool applied = false;
    bool refused = false;  // a CAS whose value did not match
    std::optional<Value> result;
  };
  struct Slot {
    std::uint64_t process = 0;
    std::optional<Pending> op;
  };

  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  std::size_t pick(std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_); }
  void tick() { now_ += 1 + static_cast<std::int64_t>(pick(static_cast<std::size_t>(std::max(1, o_.max_gap_ns)))); }

  std::string register_value() {
    if (o_.value_domain > 0) return std::to_string(pick(static_cast<std::size_t>(o_.value_domain)));
    return "v" + std::to_string(next_value_++);
  }

  void invoke(Slot& s) {
    const auto& [key, type] = keys_[pick(keys_.size())];
    const double r = std::uniform_real_distribution<double>(0, 1)(rng_);
    Fate fate = Fate::Normal;
    if (chance(o_.p_fail)) fate = Fate::Fail;
    else if (chance(o_.p_info)) fate = chance(o_.p_info_applied) ? Fate::InfoApplied : Fate::InfoNever;
    switch (type) {
      case KeyType::Register:
        if (r < 0.4) {
          start(s, key, Function::Read, {}, fate);
        } else if (r < 0.7) {
          start(s, key, Function::Write, {Value::of(register_value())}, fate);
        } else {
          // Mostly the value the key holds now, so that some CASes succeed.
          Value expected = chance(0.6) ? state_[key] : chance(0.2) ? Value::nil() : Value::of(register_value());
          start(s, key, Function::Cas, {expected, Value::of(register_value())}, fate);
        }
        break;
      case KeyType::Counter: {
        std::vector<Value> args;
        if (o_.max_delta > 1) args.push_back(Value::of(static_cast<std::int64_t>(1 + pick(static_cast<std::size_t>(o_.max_delta)))));
        start(s, key, r < 0.6 ? Function::Incr : Function::Read, r < 0.6 ? args : std::vector<Value>{}, fate);
        break;
      }
      case KeyType::List:
        if (r < 0.6)
          start(s, key, Function::Rpush, {Value::of("e" + std::to_string(next_value_++))}, fate);
        else
          start(s, key, Function::Lrange, {}, fate);
        break;
    }
  }

  void start(Slot& s, const std::string& key, Function f, std::vector<Value> args, Fate fate) {
    Pending p;
    p.call.time_ns = now_;
    p.call.process = s.process;
    p.call.kind = Kind::Invoke;
    p.call.function = f;
    p.call.key = key;
    p.call.args = std::move(args);
    p.fate = fate;
    events_.push_back(p.call);
    s.op = std::move(p);
  }

  void advance(Slot& s) {
    Pending& p = *s.op;
    const bool takes_effect = p.fate == Fate::Normal || p.fate == Fate::InfoApplied;
    if (takes_effect && !p.applied && (p.fate == Fate::Normal || chance(0.5))) {
      apply(p);
      return;
    }
    Event done = p.call;
    done.time_ns = now_;
    if (p.fate == Fate::Normal) {
      if (p.refused && !o_.cas_mismatch_is_ok) {
        done.kind = Kind::Fail;
      } else {
        done.kind = Kind::Ok;
        done.result = p.result;
      }
    } else if (p.fate == Fate::Fail) {
      done.kind = Kind::Fail;
    } else {
      done.kind = Kind::Info;
      if (p.fate == Fate::InfoApplied && !p.applied) floating_.push_back(p);
    }
    events_.push_back(done);
    const bool spent = done.kind == Kind::Info;
    s.op.reset();
    if (spent) s.process = next_process_++;
  }

  // The real model: the operation takes effect now.
  void apply(Pending& p) {
    p.applied = true;
    Value& v = state_[p.call.key];
    const auto& a = p.call.args;
    switch (p.call.function) {
      case Function::Read:
        p.result = v;
        break;
      case Function::Write:
        v = a[0];
        break;
      case Function::Cas:
        if (v == a[0]) {
          v = a[1];
          if (chance(0.5)) p.result = Value::of("true");
        } else {
          p.refused = true;
          p.result = Value::of("false");
        }
        break;
      case Function::Incr: {
        const std::int64_t n = (v.is_nil() ? 0 : *v.integer()) + (a.empty() ? 1 : *a[0].integer());
        v = Value::of(n);
        p.result = v;
        break;
      }
      case Function::Rpush:
        if (v.is_nil()) v = Value::list_of({});
        for (const Value& e : a) v.items.push_back(e.text);
        if (o_.push_lengths) p.result = Value::of(static_cast<std::int64_t>(v.items.size()));
        break;
      case Function::Lrange:
        p.result = v.is_nil() ? Value::list_of({}) : v;
        break;
    }
  }

  Options o_;
  std::mt19937_64 rng_;
  std::vector<std::pair<std::string, KeyType>> keys_;
  std::map<std::string, Value> state_;
  std::vector<Slot> slots_;
  std::vector<Pending> floating_;
  std::vector<Event> events_;
  std::int64_t now_ = 1'000'000'000;
  std::uint64_t next_process_ = 0;
  std::uint64_t next_value_ = 0;
};

}  // namespace detail

inline std::vector<Event> history(const Options& options) { return detail::Simulation(options).run(); }

}  // namespace jepsen::generate
