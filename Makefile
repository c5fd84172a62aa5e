# boomerang: self-hosted SQLite replication.
#
#   make            build bin/boomerang-primary (and the other binaries)
#   make demo       run a primary on the embedded demo database
#   make test       install deps, build, run unit and integration tests
#   make asan       the same tests with AddressSanitizer (+LeakSanitizer)
#   make bench      benchmarks (figures go in BENCHMARKS.md)
#
# Variables a user may set:
#   SQLITE_SRC=DIR  build against your own amalgamation (DIR/sqlite3.c, DIR/sqlite3.h)
#   BUILD=DIR       object/binary directory (default build; variants use build-asan, ...)

CC       ?= gcc
BUILD    ?= build
BIN      ?= bin
SAN      ?=
OPT      ?= -O2 -g

ifdef SQLITE_SRC
SQLITE_DIR := $(SQLITE_SRC)
else
SQLITE_DIR := $(BUILD)/sqlite
endif

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla
PKGS     := libev libnghttp2 libprotobuf-c openssl libxxhash
CFLAGS    = -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SAN) -I. -I$(SQLITE_DIR) -MMD -MP
LDLIBS   := -lev -lnghttp2 -lprotobuf-c -lssl -lcrypto -lxxhash -ljansson -lhttp_parser -lpthread -lm -ldl

# SQLite compile options, each with its reason:
#  ENABLE_DBPAGE_VTAB       replicas apply pages, and snapshots read them (DESIGN.md)
#  THREADSAFE=2             every connection is confined to one thread; no per-call mutex
#  DEFAULT_MEMSTATUS=0      no global malloc statistics mutex on the hot path
#  OMIT_SHARED_CACHE        never used; the docs recommend omitting it
#  LIKE_DOESNT_MATCH_BLOBS  recommended by the docs; faster LIKE
#  ENABLE_UPDATE_DELETE_LIMIT  the pinned amalgamation's parser was generated with it
#  ENABLE_FTS5, ENABLE_RTREE, ENABLE_MATH_FUNCTIONS, ENABLE_GEOPOLY
#                           what apps expect from libSQL/Turso; primary and replica
#                           must parse the same schemas
SQLITE_DEFS := -DSQLITE_ENABLE_DBPAGE_VTAB -DSQLITE_THREADSAFE=2 -DSQLITE_DEFAULT_MEMSTATUS=0 \
	-DSQLITE_OMIT_SHARED_CACHE -DSQLITE_LIKE_DOESNT_MATCH_BLOBS \
	-DSQLITE_ENABLE_UPDATE_DELETE_LIMIT -DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_RTREE \
	-DSQLITE_ENABLE_MATH_FUNCTIONS -DSQLITE_ENABLE_GEOPOLY

PROTO_SRC := proto/boomerang.pb-c.c
COMMON    := $(wildcard common/*.c)
PRIMARY   := $(filter-out primary/main.c,$(wildcard primary/*.c))
REPLICA   := $(filter-out replica/main.c,$(wildcard replica/*.c))
PROXY     := $(filter-out proxy/main.c,$(wildcard proxy/*.c))
LIB_SRC   := $(PROTO_SRC) $(COMMON) $(PRIMARY) $(REPLICA) $(PROXY)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
SQLITE_OBJ := $(BUILD)/obj/sqlite3.o

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/unit/%)
TOOLS_SRC := $(wildcard tests/tools/*.c)
TOOLS_BIN := $(TOOLS_SRC:tests/tools/%.c=$(BIN)/%)
LOAD_SRC  := $(wildcard tests/load/*.c)
LOAD_OBJ  := $(LOAD_SRC:%.c=$(BUILD)/obj/%.o)
BINARIES  := $(BIN)/boomerang-primary $(if $(wildcard replica/main.c),$(BIN)/boomerang-replica) \
	$(if $(wildcard proxy/main.c),$(BIN)/boomerang-proxy) $(BIN)/boomerang-bench-primary \
	$(if $(LOAD_SRC),$(BIN)/boomerang-bench) $(TOOLS_BIN)

.PHONY: all demo deps test unit itest asan ubsan valgrind fuzz proto format format-check bench test-regions clean
.DEFAULT_GOAL := all
.DELETE_ON_ERROR:

all: $(BUILD)/.deps $(BINARIES)

$(BUILD)/.deps: scripts/deps.sh
	scripts/deps.sh build
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/sqlite/sqlite3.c: scripts/fetch-sqlite.sh | $(BUILD)/.deps
	scripts/fetch-sqlite.sh $(BUILD)/sqlite

$(SQLITE_OBJ): $(SQLITE_DIR)/sqlite3.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g $(SAN) -DNDEBUG $(SQLITE_DEFS) -c $< -o $@

# Every object needs sqlite3.h, so fetch before compiling anything.
$(BUILD)/obj/%.o: %.c | $(SQLITE_DIR)/sqlite3.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# protobuf-c output is generated code: relax the warnings it was not written for.
$(BUILD)/obj/proto/%.o: proto/%.c | $(SQLITE_DIR)/sqlite3.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(OPT) $(SAN) -I. -Wall -Werror -MMD -MP -c $< -o $@

$(BIN)/boomerang-primary: $(BUILD)/obj/primary/main.o $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BIN)/boomerang-replica: $(BUILD)/obj/replica/main.o $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BIN)/boomerang-proxy: $(BUILD)/obj/proxy/main.o $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BIN)/boomerang-bench-primary: $(BUILD)/obj/tests/bench/bench_primary.o $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BIN)/boomerang-bench: $(LOAD_OBJ) $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/tests/bench/%.o $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BIN)/%: $(BUILD)/obj/tests/tools/%.o $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/unit/%: $(BUILD)/obj/tests/unit/%.o $(LIB_OBJ) $(SQLITE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

demo: all
	scripts/demo.sh

# --- tests -----------------------------------------------------------------

deps:
	scripts/deps.sh dev

unit: all $(UNIT_BIN)
	@tests/run-unit.sh $(UNIT_BIN)

itest: all
	scripts/deps.sh test
	BOOMERANG_BIN=$(abspath $(BIN)) timeout 1800 node --test --test-concurrency=1 tests/integration/

test: all
	scripts/deps.sh test
	$(MAKE) unit
	$(MAKE) itest

asan:
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 $(MAKE) BUILD=build-asan BIN=build-asan/bin OPT="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
		test

ubsan:
	$(MAKE) BUILD=build-ubsan BIN=build-ubsan/bin OPT="-O1 -g" \
		SAN="-fsanitize=undefined -fno-sanitize-recover=undefined" test

valgrind: all $(UNIT_BIN)
	@tests/run-unit.sh --valgrind $(UNIT_BIN)

# Three regions (network namespaces, or loopback without root) with 40 and 80 ms
# relays, under load: write-ack, visibility lag, a partition, a sidecar restart.
test-regions: all
	BOOMERANG_BIN=$(abspath $(BIN)) timeout 900 tests/regions/run.sh

# --- fuzzing (clang + libFuzzer) ---------------------------------------------

FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN   := $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/%)
FUZZ_TIME  ?= 30

fuzz:
	scripts/deps.sh dev
	$(MAKE) CC=clang BUILD=build-fuzz BIN=build-fuzz/bin OPT="-O1 -g" \
		SAN="-fsanitize=address,undefined,fuzzer-no-link" WARN="-Wall -Werror" $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p tests/fuzz/corpus/$$n; \
		echo "fuzz: $$n for $(FUZZ_TIME)s"; \
		$$f -max_total_time=$(FUZZ_TIME) -close_fd_mask=2 -print_final_stats=1 -artifact_prefix=build-fuzz/ \
			build-fuzz/corpus-$$n tests/fuzz/corpus/$$n 2>&1 | tail -3 || exit 1; done

build-fuzz/corpus-%:
	mkdir -p $@

build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(LIB_OBJ) $(SQLITE_OBJ)
	mkdir -p build-fuzz/corpus-fuzz_$*
	$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

# --- generated code, formatting, benchmarks ------------------------------------

proto:
	cd proto && protoc-c --c_out=. boomerang.proto

FMT_SRC = $(filter-out %.pb-c.c %.pb-c.h,$(shell git ls-files '*.c' '*.h'))
format:
	clang-format -i $(FMT_SRC)

format-check:
	clang-format --dry-run -Werror $(FMT_SRC)

bench: all $(BUILD)/bench/bench_capture $(BUILD)/bench/bench_replica $(BUILD)/bench/bench_proxy
	scripts/deps.sh bench
	BOOMERANG_BIN=$(abspath $(BIN)) BENCH_BUILD=$(BUILD) tests/bench/run.sh

clean:
	rm -rf build build-asan build-ubsan build-fuzz bin

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
.SECONDARY:
