# Makefile -- builds wbrokerd, libwbroker, the wbroker CLI and the tests.
#
#   make run                 install missing packages, build, run the daemon
#   make test                install missing packages, build, run every test
#   make SANITIZER=address   build (and test) under ASan; also: undefined
#   make install             PREFIX=/usr/local, DESTDIR honoured (see below)
#   make wheel               build/wheel/dist/wbroker-*.whl, for pip install
#   make examples            build the C example in examples/
#   make bench               run the benchmarks in bench/

# Where `make install` puts things.  Every file that names a directory
# (wbroker.pc, the systemd units) is generated from the values given to
# the make that installs, so `make install PREFIX=/usr` after a plain
# `make` installs files for /usr.  PYDIR is a directory on the sys.path of
# $(PYTHON) where there is one: Debian's /usr/lib/python3/dist-packages
# for PREFIX=/usr, /usr/local/lib/python3.X/dist-packages for /usr/local,
# else $(PREFIX)/lib/python3.X/site-packages, which needs PYTHONPATH
# (packaging/pydir.py).
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
BINDIR ?= $(PREFIX)/bin
INCDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/wbroker
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
PYTHON ?= /usr/bin/python3
PYDIR ?= $(shell $(PYTHON) packaging/pydir.py $(PREFIX))

VERSION_MAJOR := $(shell sed -n 's/^\#define WB_VERSION_MAJOR \([0-9]*\)/\1/p' include/wbroker.h)
VERSION_MINOR := $(shell sed -n 's/^\#define WB_VERSION_MINOR \([0-9]*\)/\1/p' include/wbroker.h)
VERSION_PATCH := $(shell sed -n 's/^\#define WB_VERSION_PATCH \([0-9]*\)/\1/p' include/wbroker.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

# Debian packages the build and the tests need; `make deps` installs the
# missing ones (as root, or through sudo).
DEB_PACKAGES := build-essential pkg-config libuv1-dev libmsgpack-dev \
	libcmocka-dev libpcre2-dev libjansson-dev libsystemd-dev clang-format \
	python3 python3-venv python3-torch python3-torchvision python3-pytest \
	python3-pip python3-setuptools python3-wheel cmake dpkg-dev groff-base \
	libxxhash-dev debootstrap systemd-container

# The second PyTorch the Python suites run on: current torch 2.x from PyPI
# in one virtual environment, kept outside the clone with pip's download
# cache beside it, so that it is built once and reused (torch's wheel
# pulls about 3 GB of CUDA libraries).  It is rebuilt when the pinned
# requirements change.  VENV= (empty) skips it.
WB_CACHE ?= $(HOME)/.cache/wbroker
VENV ?= $(WB_CACHE)/venv-torch2
TORCH2_REQS := tests/python/requirements-torch2.txt

# msgpack-c 4 (Debian 12) calls itself "msgpack"; newer releases "msgpack-c".
MSGPACK_PC := $(shell pkg-config --exists msgpack-c 2>/dev/null && echo msgpack-c || echo msgpack)
# Each program links only what it uses: the client library (and so the CLI
# and Python) needs no event loop and no systemd.
CLIENT_PKGS := $(MSGPACK_PC) libpcre2-8 jansson
DAEMON_PKGS := libuv $(MSGPACK_PC) libpcre2-8 libsystemd
PKGS := libuv $(MSGPACK_PC) libpcre2-8 jansson libsystemd
# Restart and persistence: the daemon digests images (XXH3-128) and reads
# persisted files back with the library's safetensors parser (jansson).
DAEMON_PKGS += jansson libxxhash
PKGS += libxxhash

ifeq ($(SANITIZER),)
BUILD ?= build
SANFLAGS :=
else ifeq ($(SANITIZER),address)
BUILD ?= build-address
SANFLAGS := -fsanitize=address -fno-omit-frame-pointer
else ifeq ($(SANITIZER),undefined)
BUILD ?= build-undefined
SANFLAGS := -fsanitize=undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else ifeq ($(SANITIZER),thread)
BUILD ?= build-thread
SANFLAGS := -fsanitize=thread
else
$(error SANITIZER must be address, undefined or thread)
endif

CC ?= cc
OPT ?= -O2 -g
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wno-unused-parameter $(if $(WERROR),-Werror)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CLIENT_LIBS = $(shell pkg-config --libs $(CLIENT_PKGS) 2>/dev/null)
DAEMON_LIBS = $(shell pkg-config --libs $(DAEMON_PKGS) 2>/dev/null)
CFLAGS_ALL = -std=gnu11 $(OPT) $(WARN) $(SANFLAGS) -fPIC -fvisibility=hidden \
	-D_GNU_SOURCE -Iinclude -Iproto -Icommon $(PKG_CFLAGS) -MMD -MP $(CFLAGS)
LDFLAGS_ALL = $(SANFLAGS) $(LDFLAGS)

PROTO_SRC := $(wildcard proto/*.c) $(wildcard common/*.c)
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CLIENT_SRC := $(wildcard client/*.c)
CLI_SRC := $(wildcard client/cli/*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
INTEG_SRC := $(wildcard tests/integration/test_*.c)
TESTLIB_SRC := $(wildcard tests/lib/*.c)
BENCH_SRC := $(wildcard bench/*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
PROTO_OBJ := $(call obj,$(PROTO_SRC))
DAEMON_OBJ := $(call obj,$(DAEMON_SRC))
CLIENT_OBJ := $(call obj,$(CLIENT_SRC))
TESTLIB_OBJ := $(call obj,$(TESTLIB_SRC))

SONAME := libwbroker.so.$(VERSION_MAJOR)
LIB_SO := $(BUILD)/libwbroker.so.$(VERSION)
LIB_A := $(BUILD)/libwbroker.a
DAEMON_BIN := $(BUILD)/wbrokerd
CLI_BIN := $(BUILD)/wbroker
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
INTEG_BIN := $(patsubst tests/integration/%.c,$(BUILD)/tests/%,$(INTEG_SRC))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all deps run test test-unit test-integration test-python bench \
	install uninstall clean format format-check venv wheel wheel-lib \
	examples FORCE
.DEFAULT_GOAL := all

all: $(DAEMON_BIN) $(CLI_BIN) $(LIB_SO) $(LIB_A) $(BUILD)/wbroker.pc \
	$(UNIT_BIN) $(INTEG_BIN) $(BENCH_BIN)

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Header dependencies come from the compiler (-MMD -MP).
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

-include $(shell find $(BUILD) -name '*.d' -type f 2>/dev/null)

$(LIB_SO): $(PROTO_OBJ) $(CLIENT_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--as-needed -o $@ $^ $(LDFLAGS_ALL) $(CLIENT_LIBS)
	ln -sf libwbroker.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libwbroker.so

$(LIB_A): $(PROTO_OBJ) $(CLIENT_OBJ)
	rm -f $@
	ar rcs $@ $^

$(DAEMON_BIN): $(BUILD)/daemon/main.o $(DAEMON_OBJ) $(PROTO_OBJ) $(BUILD)/client/safetensors.o
	$(CC) -Wl,--as-needed -o $@ $^ $(LDFLAGS_ALL) $(DAEMON_LIBS) -lm

$(CLI_BIN): $(call obj,$(CLI_SRC)) $(LIB_A)
	$(CC) -Wl,--as-needed -o $@ $^ $(LDFLAGS_ALL) $(CLIENT_LIBS) -lm

# test_segment's mmap behaves as older kernels' does (see the test).
$(BUILD)/tests/test_segment: TEST_LDFLAGS := -Wl,--wrap=mmap

$(BUILD)/tests/%: tests/unit/%.c $(DAEMON_OBJ) $(TESTLIB_OBJ) $(LIB_A) | $(DAEMON_BIN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Itests/lib -o $@ $(filter %.c %.o %.a,$^) $(LDFLAGS_ALL) $(TEST_LDFLAGS) $(PKG_LIBS) -lcmocka -lm

$(BUILD)/tests/%: tests/integration/%.c $(DAEMON_OBJ) $(TESTLIB_OBJ) $(LIB_A) | $(DAEMON_BIN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Itests/lib -o $@ $(filter %.c %.o %.a,$^) $(LDFLAGS_ALL) $(PKG_LIBS) -lcmocka -lm

$(BUILD)/bench/%: bench/%.c $(DAEMON_OBJ) $(TESTLIB_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Itests/lib -o $@ $(filter %.c %.o %.a,$^) $(LDFLAGS_ALL) $(PKG_LIBS) -lm

# The directories the generated files name, rewritten only when one of them
# changes: what depends on it is regenerated then, and only then.
INSTALL_DIRS = PREFIX=$(PREFIX) LIBDIR=$(LIBDIR) INCDIR=$(INCDIR) \
	BINDIR=$(BINDIR) DOCDIR=$(DOCDIR)
$(BUILD)/install-dirs: FORCE
	@mkdir -p $(BUILD)
	@echo '$(INSTALL_DIRS)' | cmp -s - $@ || echo '$(INSTALL_DIRS)' > $@

# A directory under the prefix is written as ${prefix}/..., as pkg-config
# files usually do.
pc_dir = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))

$(BUILD)/wbroker.pc: wbroker.pc.in include/wbroker.h $(BUILD)/install-dirs
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(call pc_dir,$(LIBDIR))|' \
	    -e 's|@INCDIR@|$(call pc_dir,$(INCDIR))|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@REQUIRES@|$(CLIENT_PKGS)|' $< > $@

# The units in systemd/ are complete for the default PREFIX=/usr/local;
# the installed ones name the install's BINDIR and DOCDIR instead.
UNITS := $(BUILD)/systemd/wbrokerd.service $(BUILD)/systemd/wbrokerd.socket
$(BUILD)/systemd/%: systemd/% $(BUILD)/install-dirs
	@mkdir -p $(dir $@)
	sed -e '/^ExecStart=/s|/usr/local/bin/|$(BINDIR)/|' \
	    -e '/^Documentation=/s|file:///usr/local/share/doc/wbroker/|file://$(DOCDIR)/|' \
	    $< > $@

FORCE:

# Runs the daemon in the foreground on the default socket.
run: deps
	$(MAKE) --no-print-directory $(DAEMON_BIN)
	exec $(DAEMON_BIN) $(RUN_ARGS)

# Every test: C unit and integration tests, then the Python tests on
# Debian's torch and on the venv's.
test: deps
	$(MAKE) --no-print-directory all
	$(if $(SANITIZER),,$(if $(VENV),$(MAKE) --no-print-directory venv))
	WB_BUILD=$(BUILD) WB_VENV=$(VENV) ./tests/run-tests $(if $(SANITIZER),--no-python)

# Creates or refreshes the torch 2.x environment (see VENV above).
venv:
	@if [ -x "$(VENV)/bin/python" ] && cmp -s $(TORCH2_REQS) "$(VENV)/.requirements"; then \
	  echo "venv: $(VENV) is up to date"; \
	else \
	  echo "venv: installing $(TORCH2_REQS) into $(VENV)"; \
	  rm -rf "$(VENV)" && mkdir -p "$(WB_CACHE)" && \
	  /usr/bin/python3 -m venv "$(VENV)" && \
	  "$(VENV)/bin/pip" install -q --disable-pip-version-check \
	    --cache-dir "$(WB_CACHE)/pip" -r $(TORCH2_REQS) && \
	  cp $(TORCH2_REQS) "$(VENV)/.requirements"; \
	fi

bench: deps
	$(MAKE) --no-print-directory all
	WB_BUILD=$(BUILD) ./bench/run-bench

# Installs the daemon, the CLI, the library (real name, soname link, link
# for -lwbroker), the static library, the header, wbroker.pc, the Python
# package (which finds the library through its soname), the units, the
# sysusers.d file that creates the "wbroker" user and group, the manual
# pages and the README the units point to, and the host settings for
# 2 MiB pages (a sysctl.d and a tmpfiles.d snippet) under DOCDIR/host,
# which do nothing until an administrator copies them into /etc.  Installing into the live
# system as root (no DESTDIR) also runs ldconfig, so that the new soname
# is found, and systemd-sysusers for the user; a LIBDIR the loader does
# not search needs an /etc/ld.so.conf.d entry, which is said.
install: $(DAEMON_BIN) $(CLI_BIN) $(LIB_SO) $(LIB_A) $(BUILD)/wbroker.pc $(UNITS)
	@[ -n "$(PYDIR)" ] || { echo "install: PYDIR is empty (no $(PYTHON)?)" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) \
	  $(DESTDIR)$(INCDIR) $(DESTDIR)$(PYDIR)/wbroker $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(DOCDIR)
	install -m 755 $(DAEMON_BIN) $(CLI_BIN) $(DESTDIR)$(BINDIR)/
	install -m 644 include/wbroker.h $(DESTDIR)$(INCDIR)/
	install -m 755 $(LIB_SO) $(DESTDIR)$(LIBDIR)/
	ln -sf libwbroker.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libwbroker.so
	install -m 644 $(LIB_A) $(DESTDIR)$(LIBDIR)/
	install -m 644 $(BUILD)/wbroker.pc $(DESTDIR)$(PKGCONFIGDIR)/
	cd client/python && find wbroker -name '*.py' | while read -r f; do \
	  install -D -m 644 "$$f" "$(DESTDIR)$(PYDIR)/$$f" || exit 1; done
	install -m 644 $(UNITS) $(DESTDIR)$(UNITDIR)/
	install -m 644 systemd/wbroker.sysusers $(DESTDIR)$(SYSUSERSDIR)/wbroker.conf
	install -m 644 docs/man/wbroker.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 docs/man/wbrokerd.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 644 README.md $(DESTDIR)$(DOCDIR)/
	install -D -m 644 packaging/host/60-wbroker-hugepages.conf \
	  $(DESTDIR)$(DOCDIR)/host/sysctl.d/60-wbroker-hugepages.conf
	install -D -m 644 packaging/host/wbroker-thp.conf \
	  $(DESTDIR)$(DOCDIR)/host/tmpfiles.d/wbroker-thp.conf
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
	  echo ldconfig; ldconfig; \
	  ldconfig -p | grep -q '$(LIBDIR)/$(SONAME)' || \
	    echo "note: the loader does not search $(LIBDIR): add it to /etc/ld.so.conf.d/ and run ldconfig"; \
	  if command -v systemd-sysusers >/dev/null; then \
	    echo systemd-sysusers $(SYSUSERSDIR)/wbroker.conf; \
	    systemd-sysusers $(SYSUSERSDIR)/wbroker.conf; fi; \
	else \
	  echo "note: run ldconfig (as root) once the files are in place, and systemd-sysusers for the wbroker user"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/wbrokerd $(DESTDIR)$(BINDIR)/wbroker \
	  $(DESTDIR)$(INCDIR)/wbroker.h $(DESTDIR)$(LIBDIR)/libwbroker.* \
	  $(DESTDIR)$(PKGCONFIGDIR)/wbroker.pc \
	  $(DESTDIR)$(UNITDIR)/wbrokerd.service $(DESTDIR)$(UNITDIR)/wbrokerd.socket \
	  $(DESTDIR)$(SYSUSERSDIR)/wbroker.conf $(DESTDIR)$(MANDIR)/man1/wbroker.1 \
	  $(DESTDIR)$(MANDIR)/man8/wbrokerd.8 $(DESTDIR)$(DOCDIR)/README.md
	rm -rf $(DESTDIR)$(DOCDIR)/host
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null
	rm -rf $(DESTDIR)$(PYDIR)/wbroker
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then echo ldconfig; ldconfig; fi

# ---------------------------------------------------------------- wheel
#
# make wheel: $(WHEEL_DIR)/dist/wbroker-VERSION-py3-none-TAG.whl, the Python
# package with a libwbroker.so of its own, next to its modules, that needs
# nothing but glibc: msgpack-c, PCRE2 and jansson are linked into it
# statically and kept out of its symbol table (only wb_* is exported, see
# packaging/libwbroker.map).  ctypes needs no particular Python, hence
# py3-none; the platform tag is the manylinux_2_X that auditwheel would
# give it, from the glibc symbol versions the library uses
# (client/python/setup.py; manylinux_2_34 on Debian 12).  Debian's
# libmsgpackc.a and libpcre2-8.a can go into a shared object, its
# libjansson.a cannot (see packaging/jansson-pic): that one is rebuilt
# from Debian's source package with -fPIC, once per installed version,
# into $(PIC_CACHE).
WHEEL_DIR := $(BUILD)/wheel
WHEEL_LIB := $(WHEEL_DIR)/libwbroker.so
PIC_CACHE ?= $(WB_CACHE)/pic
JANSSON_DEB_VERSION = $(shell dpkg-query -W -f='$${source:Version}' libjansson-dev 2>/dev/null)
JANSSON_PIC = $(PIC_CACHE)/jansson-$(JANSSON_DEB_VERSION)/libjansson.a
WHEEL_STATIC = -Wl,-Bstatic $(shell pkg-config --libs $(MSGPACK_PC) libpcre2-8) \
	-Wl,-Bdynamic $(JANSSON_PIC)

ifeq ($(SANITIZER),)
$(JANSSON_PIC):
	packaging/jansson-pic $(dir $@)

$(WHEEL_LIB): $(PROTO_OBJ) $(CLIENT_OBJ) packaging/libwbroker.map $(JANSSON_PIC)
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=packaging/libwbroker.map \
	  -Wl,--exclude-libs,ALL -Wl,--no-undefined -Wl,-z,relro -Wl,-z,now \
	  -Wl,--as-needed -Wl,--strip-debug -o $@ $(PROTO_OBJ) $(CLIENT_OBJ) \
	  $(WHEEL_STATIC) $(LDFLAGS)

wheel-lib: $(WHEEL_LIB)

wheel: $(WHEEL_LIB)
	rm -rf $(WHEEL_DIR)/src $(WHEEL_DIR)/dist
	mkdir -p $(WHEEL_DIR)/src
	tar -C client/python --exclude=__pycache__ --exclude='*.egg-info' \
	  --exclude=./build --exclude=./dist -cf - . | tar -C $(WHEEL_DIR)/src -xf -
	cp $(WHEEL_LIB) $(WHEEL_DIR)/src/wbroker/libwbroker.so
	cd $(WHEEL_DIR)/src && $(PYTHON) -m pip wheel -q --no-deps \
	  --no-build-isolation --no-index -w ../dist .
	@echo "wheel: $$(ls $(WHEEL_DIR)/dist/*.whl)"
else
wheel wheel-lib:
	@echo "make $@: build the wheel without SANITIZER" >&2; exit 1
endif

# ---------------------------------------------------------------- examples

EXAMPLE_SRC := $(wildcard examples/*.c)
EXAMPLE_BIN := $(patsubst examples/%.c,$(BUILD)/examples/%,$(EXAMPLE_SRC))

examples: $(EXAMPLE_BIN)

# As a program of one's own would build: the public header only, and
# libwbroker.a with what it needs (pkg-config wbroker --static).
$(BUILD)/examples/%: examples/%.c include/wbroker.h $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(OPT) $(WARN) $(SANFLAGS) -Iinclude $(CFLAGS) -o $@ $< \
	  $(LDFLAGS_ALL) $(LIB_A) $(CLIENT_LIBS)

# Every C file is formatted by .clang-format; CI fails on any difference.
FORMAT_SRC = $(wildcard include/*.h common/*.[ch] proto/*.[ch] daemon/*.[ch] \
	client/*.[ch] client/cli/*.[ch] tests/lib/*.[ch] tests/unit/*.c \
	tests/integration/*.c bench/*.c examples/*.c)

format:
	clang-format -i $(FORMAT_SRC)

format-check:
	@clang-format --dry-run --Werror $(FORMAT_SRC) && echo "format: clean"

clean:
	rm -rf build build-address build-undefined build-thread

# ---------------------------------------------------------------- service
#
# make service-test: only the tests of the installed service under a real
# systemd (tests/python/test_service.py: a Debian 12 container booted with
# systemd-nspawn, its image cached in $(WB_CACHE)/container; needs root).
# make test runs them too, with the rest of the Python tests.
FORMAT_SRC += $(wildcard tests/service/*.c)

service-test: $(DAEMON_BIN) $(CLI_BIN) $(LIB_SO) $(LIB_A) $(BUILD)/wbroker.pc $(UNITS)
	WB_BUILD=$(BUILD) WB_CACHE=$(WB_CACHE) $(PYTHON) -m pytest -q -p no:cacheprovider \
	  tests/python/test_service.py

.PHONY: service-test

# ---------------------------------------------------------------- fuzzing
#
# make fuzz        builds the libFuzzer harnesses of fuzz/ in $(FUZZ_BUILD)
#                  and runs each for FUZZ_SECONDS (one job each, leak
#                  detection on, 10 s per input at most), printing the
#                  executions and coverage each reached; new inputs go to
#                  $(FUZZ_BUILD)/corpus/NAME, crashes to
#                  $(FUZZ_BUILD)/artifacts/NAME/.
# make fuzz-ci     replays fuzz/regress/NAME/* and runs each harness for
#                  FUZZ_CI_SECONDS; fails on any crash, leak or timeout.
# make fuzz-build  only builds them.  FUZZERS=NAME... picks some.
#
# The daemon's, the library's and the protocol's objects are built again
# with clang's coverage instrumentation and ASan + UBSan (every UBSan
# report aborts, so that it counts as a crash).
FUZZ_CC ?= clang-14
DEB_PACKAGES += clang-14 libclang-rt-14-dev
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_CI_SECONDS ?= 20
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
FUZZ_CFLAGS = -std=gnu11 -O1 -g $(WARN) $(FUZZ_SAN) -fsanitize=fuzzer-no-link \
	-D_GNU_SOURCE -Iinclude -Iproto -Icommon $(PKG_CFLAGS) -MMD -MP
FUZZERS ?= $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_LIB := $(FUZZ_BUILD)/libwbfuzz.a
# fuzz_session runs the whole daemon but main.c.  clang 14 knows no
# "f16c" for __builtin_cpu_supports: the fuzz build of convert.c takes its
# portable loops instead.
FUZZ_DAEMON_SRC := $(DAEMON_SRC)
$(FUZZ_BUILD)/daemon/convert.o: FUZZ_CFLAGS += '-D__builtin_cpu_supports(x)=0'
FUZZ_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(PROTO_SRC) $(FUZZ_DAEMON_SRC) \
	$(CLIENT_SRC))
FUZZ_BIN := $(patsubst %,$(FUZZ_BUILD)/%,$(FUZZERS))
FUZZ_RUN_FLAGS = -timeout=10 -detect_leaks=1 \
	-rss_limit_mb=2048 -print_final_stats=1
.PHONY: fuzz fuzz-ci fuzz-build clean-fuzz

FORMAT_SRC += $(wildcard fuzz/*.[ch])

$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_LIB): $(FUZZ_OBJ)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB) \
	  $(PKG_LIBS) -lpthread -lm

-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)

fuzz-build: $(FUZZ_BIN)

fuzz: $(FUZZ_BIN)
	@for f in $(FUZZERS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$f $(FUZZ_BUILD)/artifacts/$$f; \
	  echo "=== $$f: $(FUZZ_SECONDS) s"; \
	  $(FUZZ_BUILD)/$$f $(FUZZ_RUN_FLAGS) -max_total_time=$(FUZZ_SECONDS) \
	    -dict=$$(f=$$f; case $$f in fuzz_rules) echo fuzz/dict/rules.dict;; \
	      fuzz_safetensors) echo fuzz/dict/safetensors.dict;; \
	      *) echo fuzz/dict/msgpack.dict;; esac) \
	    -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$f/ \
	    $(FUZZ_BUILD)/corpus/$$f fuzz/corpus/$$f \
	    > $(FUZZ_BUILD)/$$f.log 2>&1; rc=$$?; \
	  grep -E '^#[0-9]+' $(FUZZ_BUILD)/$$f.log | tail -n 1; \
	  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' $(FUZZ_BUILD)/$$f.log; \
	  if [ $$rc -ne 0 ]; then tail -n 40 $(FUZZ_BUILD)/$$f.log; \
	    echo "$$f: FAILED (log $(FUZZ_BUILD)/$$f.log)"; exit 1; fi; \
	done

fuzz-ci: $(FUZZ_BIN)
	@for f in $(FUZZERS); do \
	  if [ -d fuzz/regress/$$f ] && [ -n "$$(ls fuzz/regress/$$f)" ]; then \
	    echo "=== $$f: regressions"; \
	    $(FUZZ_BUILD)/$$f -timeout=10 -detect_leaks=1 fuzz/regress/$$f/* \
	      > $(FUZZ_BUILD)/$$f.regress.log 2>&1 || \
	      { tail -n 40 $(FUZZ_BUILD)/$$f.regress.log; echo "$$f: regression FAILED"; exit 1; }; \
	  fi; \
	done
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_CI_SECONDS)

clean-fuzz:
	rm -rf $(FUZZ_BUILD)

clean: clean-fuzz

# ---------------------------------------------------------------- kill test
#
# make kill-test   tests/integration/test_kill.c with KILL_CLIENTS client
#                  processes (default 1,000; the suite runs 100), each
#                  SIGKILLed at some step of the protocol; WB_KILL_SEED=N
#                  replays a run.
KILL_CLIENTS ?= 1000
.PHONY: kill-test
kill-test: $(BUILD)/tests/test_kill
	WB_BUILD=$(BUILD) WB_KILL_CLIENTS=$(KILL_CLIENTS) $(BUILD)/tests/test_kill

# ---------------------------------------------------------------- faults
#
# make fault-test  test_failmalloc over every allocation of its session
#                  (the suite samples 40): libwbfailmalloc.so, preloaded
#                  into wbrokerd, fails the Nth malloc/calloc/realloc made
#                  for the clients.  Not under ASan or TSan, whose
#                  allocators come first.
ifeq ($(filter address thread,$(SANITIZER)),)
FAILMALLOC_SO := $(BUILD)/libwbfailmalloc.so
all: $(FAILMALLOC_SO)
$(FAILMALLOC_SO): tests/faults/failmalloc.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) $(WARN) $(SANFLAGS) -fPIC -shared -o $@ $<
endif
FORMAT_SRC += $(wildcard tests/faults/*.c)
.PHONY: fault-test
fault-test: $(BUILD)/tests/test_failmalloc $(FAILMALLOC_SO)
	WB_BUILD=$(BUILD) WB_FAILMALLOC_ALL=1 $(BUILD)/tests/test_failmalloc
