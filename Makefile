# arbor: a plain Makefile. Knobs: CC, OPT, PREFIX, DESTDIR, JOBS, BENCH_ARGS.
#   make            libarbor.a, libarbor.so (soname libarbor.so.0) and the examples (build/)
#   make test       the Criterion suite         make demo    the flagship example
#   make bench      the benchmarks              make asan    the suite under ASan+LSan+UBSan
#   make tsan       stress programs under TSan  make install PREFIX=/usr/local DESTDIR=
#   make test-portable  the suite with the portable switch and guards (other CPUs, kernels)
#   make fuzz       the wire decoder and the handshake under libFuzzer (FUZZ_SECONDS)
#   make bench-compare  arbor beside Erlang/OTP and CAF 0.17 (ROUNDS, WORKLOADS; bench/peers/)
.SUFFIXES:
SHELL := /bin/bash
.DELETE_ON_ERROR:

CC      ?= cc
OPT     ?= -O2 -g
PREFIX  ?= /usr/local
DESTDIR ?=
JOBS    ?= 2
BUILD   ?= build
SAN     ?=

# Debian packages arbor builds on (DEPENDENCIES.md).
DEB_PKGS := pkg-config libuv1-dev libmsgpack-dev libcriterion-dev libssl-dev liburcu-dev \
            libxxhash-dev libhiredis-dev redis-tools
PKGCONF  := $(shell command -v pkg-config 2>/dev/null)
# msgpack-c is `msgpack` in Debian 12 and `msgpack-c` in newer releases.
MSGPACK_PC := $(shell pkg-config --exists msgpack-c 2>/dev/null && echo msgpack-c || echo msgpack)

WARN    := -Wall -Wextra -Wstrict-prototypes -Wshadow -Wno-unused-parameter -Werror
CFLAGS  := -std=c11 $(OPT) $(WARN) -fPIC -fvisibility=hidden -fstack-clash-protection \
           -D_GNU_SOURCE -Iinclude -MMD -MP $(SAN) $(EXTRA_CFLAGS)
# Everything libarbor.a needs (pkg-config names), for every program linked with it.
DEP_PC     := libuv $(MSGPACK_PC) libcrypto liburcu-bp liburcu-cds libxxhash
ifneq ($(PKGCONF),)
DEP_CFLAGS := $(shell pkg-config --cflags $(DEP_PC) 2>/dev/null)
DEP_LIBS   := $(shell pkg-config --libs $(DEP_PC) 2>/dev/null) -lpthread -lm
CRIT_LIBS  := $(shell pkg-config --libs criterion 2>/dev/null)
HIREDIS_CFLAGS := $(shell pkg-config --cflags hiredis 2>/dev/null)
HIREDIS_LIBS   := $(shell pkg-config --libs hiredis 2>/dev/null)
endif
LDFLAGS := $(SAN) $(EXTRA_LDFLAGS)

# The version, from the header.
AR_VERSION := $(shell sed -n 's/^\#define AR_VERSION_MAJOR //p' include/arbor.h).$(shell sed -n 's/^\#define AR_VERSION_MINOR //p' include/arbor.h).$(shell sed -n 's/^\#define AR_VERSION_PATCH //p' include/arbor.h)
AR_SONAME  := libarbor.so.$(firstword $(subst ., ,$(AR_VERSION)))

LIB_SRC  := $(wildcard runtime/*.c runtime/*/*.c supervisors/*.c)
LIB_ASM  := $(wildcard runtime/ctx_*.S)
LIB_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC)) $(patsubst %.S,$(BUILD)/%.o,$(LIB_ASM))
EX_SRC   := $(wildcard examples/*.c)
EX_BIN   := $(patsubst examples/%.c,$(BUILD)/examples/%,$(EX_SRC))
# The flagship, kvcache, is several files (examples/kvcache/) linked with hiredis.
KV_SRC   := $(wildcard examples/kvcache/*.c)
KV_OBJ   := $(patsubst examples/kvcache/%.c,$(BUILD)/kvcache/%.o,$(KV_SRC))
KV_BIN   := $(BUILD)/examples/kvcache
TEST_SRC := $(wildcard test/test_*.c)
TEST_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(TEST_SRC))
TEST_BIN := $(BUILD)/test/arbor_tests
STRESS_SRC := $(wildcard test/stress/*.c)
STRESS_BIN := $(patsubst test/stress/%.c,$(BUILD)/stress/%,$(STRESS_SRC))
BENCH_SRC  := $(filter-out bench/bench_util.c,$(wildcard bench/*.c))
BENCH_BIN  := $(BUILD)/bench/arbor_bench

.PHONY: all build deps test demo bench asan tsan ubsan fuzz install uninstall clean stress-build
# `deps` runs first; the build runs in a sub-make so pkg-config sees freshly installed packages.
all: deps
	@$(MAKE) --no-print-directory build
build: $(BUILD)/libarbor.a $(BUILD)/libarbor.so $(EX_BIN) $(KV_BIN)

# Installs the Debian packages $(1) that are missing when run as root; otherwise prints
# the apt-get line and stops.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "arbor: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "arbor: missing packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef
deps:
	$(call install_missing,$(DEB_PKGS))

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEP_CFLAGS) -c $< -o $@
# liburcu's inlined read lock reaches its reader record through a pointer typed 128-byte
# aligned that it allocates with less alignment: harmless, and not ours to change.
$(BUILD)/runtime/rcu.o: CFLAGS += -fno-sanitize=alignment
$(BUILD)/%.o: %.S
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libarbor.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
# The shared library is versioned as libuv's is: its soname carries the major version
# (libarbor.so.0), its file the whole version, and libarbor.so (for -larbor) links to it.
$(BUILD)/libarbor.so.$(AR_VERSION): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(AR_SONAME) -o $@ $^ $(LDFLAGS) $(DEP_LIBS)
$(BUILD)/libarbor.so: $(BUILD)/libarbor.so.$(AR_VERSION)
	ln -sf libarbor.so.$(AR_VERSION) $(BUILD)/$(AR_SONAME)
	ln -sf $(AR_SONAME) $@

$(BUILD)/examples/%: $(BUILD)/examples/%.o $(BUILD)/libarbor.a
	$(CC) -o $@ $< $(BUILD)/libarbor.a $(LDFLAGS) $(DEP_LIBS)

$(BUILD)/kvcache/%.o: examples/kvcache/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEP_CFLAGS) $(HIREDIS_CFLAGS) -c $< -o $@
$(KV_BIN): $(KV_OBJ) $(BUILD)/libarbor.a
	@mkdir -p $(dir $@)
	$(CC) -o $@ $(KV_OBJ) $(BUILD)/libarbor.a $(LDFLAGS) $(HIREDIS_LIBS) $(DEP_LIBS)

# The examples come with the suite: test_examples runs them from beside it, and the
# kvcache demo script from the source tree.
$(BUILD)/test/test_examples.o: CFLAGS += -DAR_SOURCE_DIR='"$(CURDIR)"'
$(TEST_BIN): $(TEST_OBJ) $(BUILD)/libarbor.a | $(EX_BIN) $(KV_BIN)
	$(CC) -o $@ $(TEST_OBJ) $(BUILD)/libarbor.a $(LDFLAGS) $(CRIT_LIBS) $(DEP_LIBS)

$(BUILD)/stress/%: test/stress/%.c $(BUILD)/libarbor.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEP_CFLAGS) -o $@ $< $(BUILD)/libarbor.a $(LDFLAGS) $(DEP_LIBS)

$(BENCH_BIN): $(patsubst %.c,$(BUILD)/%.o,$(BENCH_SRC) bench/bench_util.c) $(BUILD)/libarbor.a
	$(CC) -o $@ $^ $(LDFLAGS) $(DEP_LIBS)

# The two commands. `deps` runs first in its own make so the flags see the packages.
test: deps
	@$(MAKE) --no-print-directory run-tests
# The flagship: kvcache driven by redis-cli through a scripted session (and its checks).
demo: deps
	@$(MAKE) --no-print-directory build
	examples/kvcache/demo.sh $(BUILD)/examples/kvcache

# The suite again with the portable ucontext switch and mprotect'ed guard pages, as CPUs
# without a hand-written switch (anything but x86-64 for now) and kernels older than 6.13
# (no guard regions) run it.
.PHONY: test-portable
test-portable: deps
	@$(MAKE) --no-print-directory BUILD=build/portable EXTRA_CFLAGS="-DAR_CTX_UCONTEXT -DAR_STACK_MPROTECT" run-tests

.PHONY: run-tests
run-tests: $(TEST_BIN)
	$(TEST_BIN) --jobs $(JOBS) $(TEST_ARGS)

bench: deps
	@$(MAKE) --no-print-directory $(BENCH_BIN)
	$(BENCH_BIN) $(BENCH_ARGS)

# arbor beside Erlang/OTP and CAF 0.17 on the same workloads (bench/peers/, bench/compare.sh):
#   make bench-compare [ROUNDS=3] [WORKLOADS="ping_pong ring ..."]
# builds arbor's bench, compiles the peers into $(PEER_DIR) (installing PEER_PKGS when run
# as root and missing, as `deps` does), runs the three round by round and prints a
# markdown table of medians and ratios. Not part of `make test` or CI.
ROUNDS     ?= 3
WORKLOADS  ?= spawn_exit spawn_exit_monitor spawn_idle_memory ping_pong ring fan_in \
              gen_server_call supervisor_restart registry_get_or_spawn registry_send \
              remote_ping_pong remote_oneway
PEER_PKGS  := erlang-base g++ libcaf-dev
PEER_DIR   := $(BUILD)/peers
PEER_BEAMS := $(patsubst bench/peers/erlang/%.erl,$(PEER_DIR)/ebin/%.beam,$(wildcard bench/peers/erlang/*.erl))

.PHONY: bench-compare peers-build
bench-compare: deps
	$(call install_missing,$(PEER_PKGS))
	@$(MAKE) --no-print-directory $(BENCH_BIN) peers-build
	bench/compare.sh -r $(ROUNDS) -w "$(WORKLOADS)" -a $(BENCH_BIN) -p $(PEER_DIR)
peers-build: $(PEER_BEAMS) $(PEER_DIR)/floor/tcp_floor
	@$(MAKE) --no-print-directory -C bench/peers/caf OUT=$(abspath $(PEER_DIR))/caf
$(PEER_DIR)/ebin/%.beam: bench/peers/erlang/%.erl
	@mkdir -p $(dir $@)
	erlc -o $(dir $@) $<
$(PEER_DIR)/floor/tcp_floor: bench/peers/floor/tcp_floor.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 $(WARN) -o $@ $<

# ASan + LSan + UBSan over the whole suite; any report fails (LSan reports do not fail a
# Criterion test by themselves, so the output is scanned).
asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" $(subst $(BUILD),build/asan,$(TEST_BIN))
	@set -o pipefail; ASAN_OPTIONS=detect_leaks=1:handle_segv=0:detect_stack_use_after_return=0 \
	  UBSAN_OPTIONS=print_stacktrace=1 build/asan/test/arbor_tests --jobs $(JOBS) 2>&1 | tee build/asan/test.log; \
	  rc=$$?; if grep -qE 'LeakSanitizer|AddressSanitizer|runtime error:' build/asan/test.log; then \
	  echo "asan: sanitizer reports found (build/asan/test.log)"; exit 1; fi; exit $$rc
ubsan: deps
	@$(MAKE) --no-print-directory BUILD=build/ubsan SAN="-fsanitize=undefined -fno-sanitize-recover=undefined" \
	  build/ubsan/test/arbor_tests
	build/ubsan/test/arbor_tests --jobs $(JOBS)

# ThreadSanitizer cannot run Criterion's runner: standalone stress programs instead.
tsan: deps
	@$(MAKE) --no-print-directory BUILD=build/tsan OPT="-O1 -g" SAN="-fsanitize=thread" stress-build
	@for t in $(patsubst test/stress/%.c,build/tsan/stress/%,$(STRESS_SRC)); do echo "tsan: $$t"; \
	  TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$(CURDIR)/test/stress/tsan.supp" $$t || exit 1; done; \
	  echo "tsan: all stress programs passed"
stress-build: $(STRESS_BIN)

# libFuzzer over the wire decoder with a receiver's framing and reassembly (fuzz_wire) and
# over both roles of the handshake (fuzz_handshake), built with clang under ASan+UBSan,
# seeded by fuzz/seeds.c. FUZZ_SECONDS (default 60) is the total, split evenly between
# the targets; any crash, leak, timeout or sanitizer report fails. Needs clang and its
# libFuzzer runtime: installed when run as root, like `deps`.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_PKGS    := clang libclang-rt-14-dev
FUZZ_TARGETS := wire handshake
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_CFLAGS  := -std=c11 -O1 -g -fno-omit-frame-pointer $(WARN) -D_GNU_SOURCE -Iinclude \
                -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                $(shell pkg-config --cflags $(MSGPACK_PC) libcrypto 2>/dev/null)
FUZZ_LIBS    := $(shell pkg-config --libs $(MSGPACK_PC) libcrypto 2>/dev/null)
FUZZ_LIB_SRC := runtime/dist/wire.c runtime/dist/handshake.c
# -max_len per target: a few envelopes with W_FRAG slices; a script of handshake frames.
FUZZ_MAXLEN_wire      := 16384
FUZZ_MAXLEN_handshake := 4096

fuzz: deps
	$(call install_missing,$(FUZZ_PKGS))
	@$(MAKE) --no-print-directory fuzz-run

.PHONY: fuzz-run
fuzz-run: $(patsubst %,$(FUZZ_DIR)/fuzz_%,$(FUZZ_TARGETS)) $(FUZZ_DIR)/seeds
	$(FUZZ_DIR)/seeds $(FUZZ_DIR)/corpus
	@secs=$$(( $(FUZZ_SECONDS) / $(words $(FUZZ_TARGETS)) )); [ $$secs -ge 1 ] || secs=1; \
	for t in $(FUZZ_TARGETS); do \
	  case $$t in wire) max=$(FUZZ_MAXLEN_wire);; *) max=$(FUZZ_MAXLEN_handshake);; esac; \
	  echo "fuzz: $$t for $${secs}s (-max_len=$$max)"; \
	  mkdir -p $(FUZZ_DIR)/artifacts; \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(FUZZ_DIR)/fuzz_$$t -max_total_time=$$secs -max_len=$$max -timeout=10 \
	    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- \
	    $(FUZZ_DIR)/corpus/$$t 2>&1 | tee $(FUZZ_DIR)/$$t.log | grep -E '^(Done |stat::(number_of|average)|==[0-9]+==|SUMMARY|fuzz_)|runtime error'; \
	  rc=$${PIPESTATUS[0]}; \
	  if [ $$rc -ne 0 ]; then echo "fuzz: $$t failed ($$rc; $(FUZZ_DIR)/$$t.log, inputs in $(FUZZ_DIR)/artifacts/)"; exit 1; fi; \
	done; echo "fuzz: all targets ran clean"

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_LIB_SRC) runtime/dist/wire.h include/arbor.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_SRC) $(FUZZ_LIBS)
$(FUZZ_DIR)/seeds: fuzz/seeds.c $(FUZZ_LIB_SRC) runtime/dist/wire.h include/arbor.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_LIB_SRC) $(FUZZ_LIBS)

install: build
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/arbor.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libarbor.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libarbor.so.$(AR_VERSION) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libarbor.so.$(AR_VERSION) $(DESTDIR)$(PREFIX)/lib/$(AR_SONAME)
	ln -sf $(AR_SONAME) $(DESTDIR)$(PREFIX)/lib/libarbor.so
	printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: arbor\nDescription: Erlang/OTP-style processes and supervision for C\nVersion: %s\nRequires.private: $(DEP_PC)\nLibs: -L$${libdir} -larbor\nLibs.private: -lpthread -lm\nCflags: -I$${includedir}\n' \
	  '$(PREFIX)' '$(AR_VERSION)' > $(DESTDIR)$(PREFIX)/lib/pkgconfig/arbor.pc
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/arbor.h $(DESTDIR)$(PREFIX)/lib/libarbor.a \
	  $(DESTDIR)$(PREFIX)/lib/libarbor.so $(DESTDIR)$(PREFIX)/lib/$(AR_SONAME) \
	  $(DESTDIR)$(PREFIX)/lib/libarbor.so.$(AR_VERSION) $(DESTDIR)$(PREFIX)/lib/pkgconfig/arbor.pc
clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
