# raft.hpp - build, test, benchmark, fuzz. See README.md.
#
#   make                 builds the examples and the tests (g++, -O2)
#   make test            installs what the tests need (as root) and runs every test
#   make test SAN=address    the same under ASan+UBSan; SAN=thread under TSan
#   make ... TLS=1       with TLS compiled in (RAFT_OPENSSL_SUPPORT, -lssl -lcrypto), in its own
#                        build directory; the [tls] tests run only there
#   make build-test      the consumer project of the [build] tests with raft::raft_tls (CMake,
#                        OpenSSL); `make test` builds it the four other ways
#   make sim SEEDS=N     the randomized cluster simulation and the storage simulation, N seeds each
#   make bench           benchmarks beside real peers (hiredis, the raw disk)
#   make fuzz            libFuzzer on the parsers (clang); FUZZ_TIME=seconds per target
#   make run             starts a local 3-node cluster in the foreground
#   make crash           SIGKILL of all three nodes under a write load, 20 times (~30 s)
#   make upgrade         a cluster of the previous release upgraded node by node (needs git)
#   make jepsen          Jepsen-style runs: 5 real nodes in network namespaces, every fault
#                        mixed, the history checked (TIME=s RUNS=n SEED=n FAULTS=a,b MUTANT=NAME)
#   CXX=clang++ works for every target.

CXX ?= g++
# Build in parallel on every core (the test run itself is one process).
MAKEFLAGS += --jobs=$(shell nproc 2>/dev/null || echo 2)
SAN ?=
TLS ?=
BUILD ?= build$(if $(SAN),-$(SAN))$(if $(TLS),-tls)

WARNINGS := -Wall -Wextra -Werror
CXXFLAGS_BASE := -std=c++17 $(WARNINGS) -pthread -I. -MMD -MP
# Per flavour: optimisation, how many simulation seeds `make test` runs, which tests, and how
# much slower the runtime tests' clocks run (RAFT_TIME_SCALE).
# ASan runs everything but the process tests (the runtime tests cover the same code in one
# process; CI builds it with TLS=1, so the [runtime][tls] tests run there too); TSan runs what
# has threads: the runtime, the processes and the storage writer.
# DEFAULT_TESTS: Catch2 test specs, run at once as separate processes (tools/run_tests.sh).
ifeq ($(SAN),address)
  OPTFLAGS ?= -O1 -g1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
  DEFAULT_SEEDS := 200
  DEFAULT_TESTS := [runtime] ~[process]~[runtime]~[.]
  TEST_FILTER := $(filter-out tests/test_process.cpp tests/test_clients.cpp tests/test_build.cpp,$(wildcard tests/test_*.cpp))
  TEST_NEEDS_EXAMPLES :=
  TIME_SCALE := 3
else ifeq ($(SAN),thread)
  OPTFLAGS ?= -O1 -g1 -fsanitize=thread
  DEFAULT_SEEDS := 20
  DEFAULT_TESTS := [process] [runtime],[writer]
  TEST_FILTER := $(wildcard tests/test_runtime.cpp tests/test_process.cpp tests/test_storage.cpp tests/test_founding.cpp \
                             tests/test_forward.cpp tests/test_auth.cpp tests/test_peer_auth.cpp tests/test_peer_input.cpp \
                             tests/test_peer_thread.cpp)
  TEST_NEEDS_EXAMPLES := yes
  TIME_SCALE := 5
else ifeq ($(SAN),)
  OPTFLAGS ?= -O2 -g1
  DEFAULT_SEEDS := 2000
  DEFAULT_TESTS := [process] [runtime] [build] ~[process]~[runtime]~[build]~[.]
  TEST_FILTER := $(wildcard tests/test_*.cpp)
  TEST_NEEDS_EXAMPLES := yes
  TIME_SCALE := 1
else
  $(error SAN must be empty, address or thread)
endif
TLS_FLAGS := $(if $(TLS),-DRAFT_OPENSSL_SUPPORT)
ALL_CXXFLAGS := $(CXXFLAGS_BASE) $(OPTFLAGS) $(TLS_FLAGS) $(CXXFLAGS)
LDLIBS_ALL := -pthread $(if $(TLS),-lssl -lcrypto) $(LDLIBS)

HEADERS := raft.hpp resp.hpp
RAFT_PARTS := $(sort $(wildcard src/raft/*.hpp))

TEST_SRCS := $(sort $(TEST_FILTER))
TEST_OBJS := $(TEST_SRCS:tests/%.cpp=$(BUILD)/tests/%.o)
EXAMPLE_SRCS := $(sort $(wildcard examples/*.cpp))
EXAMPLES := $(EXAMPLE_SRCS:examples/%.cpp=$(BUILD)/examples/%)
BENCH_SRCS := $(sort $(wildcard bench/*.cpp))
BENCHES := $(BENCH_SRCS:bench/%.cpp=$(BUILD)/bench/%)
FUZZ_SRCS := $(sort $(wildcard fuzz/fuzz_*.cpp))
FUZZERS := $(FUZZ_SRCS:fuzz/%.cpp=build-fuzz/%)

# Test selection (Catch2 tag expression) and simulation size, for `make test` and `make sim`.
TESTS ?= $(DEFAULT_TESTS)
SEEDS ?= $(DEFAULT_SEEDS)
FUZZ_TIME ?= 60
# make jepsen: seconds of faults per run, runs, and the node program (MUTANT=NAME: a mutant build).
TIME ?= 60
RUNS ?= 3
JEPSEN_SHIM := $(BUILD)/jepsen/fault_shim.so
JEPSEN_NODE := $(if $(MUTANT),build-mutant/jepsen-$(MUTANT)/cas,$(BUILD)/examples/cas)

.PHONY: all test deps build-test sim bench fuzz run mutants clean check-header standalone crash upgrade jepsen
.DELETE_ON_ERROR:

all: $(EXAMPLES) $(BUILD)/raft_tests $(BUILD)/tools/check_history

# raft.hpp is generated from its parts; the generated file is committed so users copy it.
raft.hpp: $(RAFT_PARTS) tools/amalgamate.sh
	tools/amalgamate.sh > $@.$$$$.tmp && mv $@.$$$$.tmp $@

check-header:
	@tools/amalgamate.sh | cmp -s - raft.hpp || { echo "raft.hpp is stale: run make and commit it" >&2; exit 1; }

deps:
	@tools/deps.sh $(if $(TLS),tls)

# One Catch2 main translation unit per build flavour; each test file compiles on its own.
# (g++ 12 under ASan warns falsely inside <regex>, which Catch2 includes.)
$(BUILD)/tests/main.o: tests/main.cpp
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $(if $(findstring clang,$(CXX)),,-Wno-maybe-uninitialized) -c $< -o $@

$(BUILD)/tests/%.o: tests/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) -c $< -o $@

$(BUILD)/raft_tests: $(BUILD)/tests/main.o $(TEST_OBJS)
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDLIBS_ALL)

$(BUILD)/examples/%: examples/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS_ALL)

# Benchmarks compare against real peers; hiredis is used by the benchmarks only.
$(BUILD)/bench/%: bench/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS_ALL) $(if $(findstring hiredis,$*),-lhiredis)

# Each header compiles on its own, -pedantic, with g++ and (when installed) clang++: users copy
# them one at a time into projects with their own flags.
STANDALONE_CXX := g++ $(shell command -v clang++ >/dev/null 2>&1 && echo clang++)
standalone:
	@for cxx in $(STANDALONE_CXX); do for h in $(HEADERS); do \
	  echo '#include "'$$h'"' | $$cxx -std=c++17 $(WARNINGS) $(TLS_FLAGS) -pedantic -I. -fsyntax-only -x c++ - || \
	    { echo "$$h does not compile on its own with $$cxx" >&2; exit 1; }; done; done

# The test binary finds the examples (process tests) through RAFT_BUILD_DIR.
test: deps $(if $(SAN),,standalone) $(BUILD)/raft_tests $(if $(TEST_NEEDS_EXAMPLES),$(EXAMPLES) $(JEPSEN_SHIM))
	RAFT_BUILD_DIR=$(BUILD) RAFT_SIM_SEEDS=$(SEEDS) RAFT_TIME_SCALE=$(TIME_SCALE) tools/run_tests.sh $(BUILD)/raft_tests $(TESTS)

build-test: $(BUILD)/raft_tests
	@tools/deps.sh tls
	$(BUILD)/raft_tests '[.build-tls]' --durations yes

sim: deps $(BUILD)/raft_tests
	RAFT_SIM_SEEDS=$(SEEDS) $(BUILD)/raft_tests '[sim]' --durations yes
	RAFT_STORAGE_SIM_SEEDS=$(SEEDS) $(BUILD)/raft_tests '[storage-sim]' --durations yes

# Each deliberately broken rule (RAFT_MUTANT_* in src/raft/, never defined in a real build) must
# make the suite tools/mutants.txt names fail (the simulation within $(SEEDS) seeds).
# MUTANT=NAME runs one.
mutants: deps $(HEADERS) $(BUILD)/tests/main.o
	@tools/mutants.sh "$(CXX)" "$(CXXFLAGS_BASE) -O1" $(BUILD) $(SEEDS) $(MUTANT)

bench: $(BENCHES) $(EXAMPLES)
	@tools/deps.sh bench
	@for b in $(BENCHES); do echo "== $$b"; $$b || exit 1; done
	@echo "== bench/cluster_bench.sh"; bench/cluster_bench.sh $(BUILD)/examples/run_raft
	@echo "== bench/failover_bench.sh"; bench/failover_bench.sh $(BUILD)/examples/run_raft

# Reads a history of the Jepsen-style tests and prints the checker's verdict (tests/jepsen/).
$(BUILD)/tools/check_history: tools/check_history.cpp tests/jepsen/history.hpp tests/jepsen/checker.hpp
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS_ALL)

build-fuzz/%: fuzz/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	clang++ -std=c++17 $(WARNINGS) -I. -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all $< -o $@

# Runs each fuzzer for FUZZ_TIME seconds from its checked-in seed corpus (fuzz/corpus/NAME);
# new inputs go to build-fuzz/corpus/NAME so the checked-in corpus stays small.
fuzz: $(FUZZERS)
	@for f in $(FUZZERS); do n=$$(basename $$f); mkdir -p build-fuzz/corpus/$$n; \
	  echo "== $$n for $(FUZZ_TIME) s"; \
	  $$f -max_total_time=$(FUZZ_TIME) -print_final_stats=1 -max_len=4096 \
	      build-fuzz/corpus/$$n fuzz/corpus/$$n || exit 1; done

run: $(BUILD)/examples/run_raft
	@tools/run_cluster.sh $(BUILD)/examples/run_raft

# Process tests too long for `make test` (Catch2 hidden tags). CRASH_CYCLES kill cycles.
CRASH_CYCLES ?= 20
crash: deps $(BUILD)/raft_tests $(BUILD)/examples/run_raft
	RAFT_BUILD_DIR=$(BUILD) RAFT_TIME_SCALE=$(TIME_SCALE) RAFT_CRASH_CYCLES=$(CRASH_CYCLES) \
	  $(BUILD)/raft_tests '[killall]' --durations yes

# The upgrade starts from UPGRADE_FROM (the last commit with peer protocol 1 and snapshot
# format 1), built from git history; without that history it says so and skips.
UPGRADE_FROM ?= c638699
upgrade: deps $(BUILD)/raft_tests $(BUILD)/examples/run_raft
	@old=$(BUILD)/upgrade-from-$(UPGRADE_FROM); rc=0; \
	tools/build_old_node.sh $(UPGRADE_FROM) $$old "$(CXX)" || rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "make upgrade: skipped"; exit 0; elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	RAFT_BUILD_DIR=$(BUILD) RAFT_TIME_SCALE=$(TIME_SCALE) RAFT_OLD_RUN_RAFT=$$old/run_raft \
	  $(BUILD)/raft_tests '[upgrade]' --durations yes

# The Jepsen-style suite (tests/test_jepsen.cpp, tests/jepsen/): RUNS runs of TIME seconds of
# faults each, one verdict line per run; a failing run keeps its files under $(BUILD)/jepsen/failed.
# SEED=N replays a run's seed (its faults and operations, not the interleaving of real processes).
# MUTANT=NAME runs a node built with -DRAFT_MUTANT_NAME and stops at the first run that catches it.
# The nodes load the fault shim (LD_PRELOAD: power cuts, failing disks, clocks); needs root.
$(JEPSEN_SHIM): tests/jepsen/fault_shim.cpp tests/jepsen/faults.hpp
	@mkdir -p $(@D)
	$(CXX) -std=c++17 $(WARNINGS) -O2 -fPIC -shared -I. $< -o $@ -ldl

$(BUILD)/jepsen_tests: $(BUILD)/tests/main.o $(BUILD)/tests/test_jepsen.o
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDLIBS_ALL)

build-mutant/jepsen-%/cas: examples/cas.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) -DRAFT_MUTANT_$* $< -o $@ $(LDLIBS_ALL)

jepsen: deps $(BUILD)/jepsen_tests $(JEPSEN_SHIM) $(JEPSEN_NODE)
	RAFT_BUILD_DIR=$(BUILD) RAFT_TIME_SCALE=$(TIME_SCALE) RAFT_JEPSEN_TIME=$(TIME) RAFT_JEPSEN_RUNS=$(RUNS) \
	  RAFT_JEPSEN_SEED=$(SEED) RAFT_JEPSEN_FAULTS=$(FAULTS) RAFT_JEPSEN_NODE=$(JEPSEN_NODE) \
	  RAFT_JEPSEN_MUTANT=$(MUTANT) $(BUILD)/jepsen_tests '[.jepsen-runs]'

clean:
	rm -rf build build-address build-thread build-fuzz build-mutant build-tls build-address-tls build-thread-tls

-include $(wildcard $(BUILD)/tests/*.d $(BUILD)/examples/*.d $(BUILD)/bench/*.d $(BUILD)/tools/*.d)
