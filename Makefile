# loyd: one non-recursive Makefile.  `make V=1` shows full commands.
#
#   make            build $(BUILD)/loyd and the example plugin shared objects
#   make check      build and run every test (unit, plugin, connector, end-to-end)
#   make asan       the whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make install    PREFIX=/usr/local DESTDIR=
#   make deps       install the Debian packages loyd needs (idempotent)

BUILD ?= build
PREFIX ?= /usr/local
LUA_PC ?= lua5.4
PKGS := libuv libcurl jansson sqlite3 $(LUA_PC)

ifeq ($(V),1)
Q :=
else
Q := @
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) check 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

OPT ?= -O2
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter \
        -Werror=implicit-function-declaration -Werror=format-security
CFLAGS ?= $(OPT) -g
# Sanitizers must be set before ALL_CFLAGS expands them (:=).
ifeq ($(SAN),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(SANFLAGS) -Icore -Icore/include -Itests/support \
              -I$(BUILD)/gen $(PKG_CFLAGS) -MMD -MP \
              -DLOYD_PACKS_DIR='"$(PREFIX)/share/loyd/rules"'
LDLIBS := $(PKG_LIBS) -lhttp_parser -ldl -lm -lpthread

CORE_SRC := $(filter-out core/main.c,$(wildcard core/*.c))
EXT_SRC := $(wildcard connectors/*/*.c) $(wildcard plugins/*/*.c)
EXT_NAMES := $(notdir $(wildcard connectors/*) $(wildcard plugins/*))
TEST_SUITES := $(wildcard tests/unit/check_*.c tests/plugins/check_*.c tests/e2e/check_*.c)
TEST_SRC := $(TEST_SUITES) $(wildcard tests/support/*.c) tests/unit/main.c

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
CORE_OBJ := $(call obj,$(CORE_SRC)) $(BUILD)/obj/gen/builtin.o $(BUILD)/obj/gen/schema.o
EXT_OBJ := $(call obj,$(EXT_SRC))
TEST_OBJ := $(call obj,$(TEST_SRC))
PLUGIN_SO := $(BUILD)/plugins/example.so $(BUILD)/plugins/example_bad_abi.so

.PHONY: all check asan install clean deps format format-check demo bench
all: $(BUILD)/loyd $(PLUGIN_SO)

$(BUILD)/loyd: $(call obj,core/main.c) $(CORE_OBJ) $(EXT_OBJ)
	@mkdir -p $(@D)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(SANFLAGS) -rdynamic -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

# Built-in plugins: every folder under connectors/ and plugins/ exports loyd_plugin_<folder>.
# The table is generated so that adding a CRM never edits core.
$(BUILD)/gen/builtin.c: Makefile $(wildcard connectors/*/) $(wildcard plugins/*/)
	@mkdir -p $(@D)
	$(Q){ echo '#include "loyd/plugin.h"'; \
	  for n in $(EXT_NAMES); do echo "extern const struct loyd_plugin loyd_plugin_$$n;"; done; \
	  echo 'const struct loyd_plugin *const loyd_builtin_plugins[] = {'; \
	  for n in $(EXT_NAMES); do echo "    &loyd_plugin_$$n,"; done; \
	  echo '    NULL,'; echo '};'; } > $@
$(BUILD)/obj/gen/builtin.o: $(BUILD)/gen/builtin.c
	@mkdir -p $(@D)
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The store schema is compiled in from core/db_schema.sql.
$(BUILD)/gen/schema.c: core/db_schema.sql
	@mkdir -p $(@D)
	$(Q){ echo 'const char loyd_db_schema_sql[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$$/\\n"/' $<; echo ';'; } > $@
$(BUILD)/obj/gen/schema.o: $(BUILD)/gen/schema.c
	@mkdir -p $(@D)
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The example plugin also builds as shared objects, one with a wrong ABI number, so the loader's
# dlopen path and its refusal of a mismatch are tested for real.
$(BUILD)/plugins/example.so: plugins/example/example.c core/include/loyd/plugin.h
	@mkdir -p $(@D)
	$(Q)$(CC) $(ALL_CFLAGS) -DLOYD_EXAMPLE_NAME=example_so -fPIC -shared -fvisibility=hidden -o $@ $< \
	    $(shell pkg-config --libs jansson)
$(BUILD)/plugins/example_bad_abi.so: plugins/example/example.c core/include/loyd/plugin.h
	@mkdir -p $(@D)
	$(Q)$(CC) $(ALL_CFLAGS) -DLOYD_EXAMPLE_ABI=999 -DLOYD_EXAMPLE_NAME=example_so -fPIC -shared -fvisibility=hidden -o $@ $< \
	    $(shell pkg-config --libs jansson)

# Test runner: one Check SRunner with every suite found in tests/*/check_<name>.c.
$(BUILD)/gen/suites.h: Makefile $(TEST_SUITES)
	@mkdir -p $(@D)
	$(Q)for f in $(notdir $(basename $(TEST_SUITES))); do \
	  echo "LOYD_SUITE($${f#check_})"; done > $@
$(call obj,tests/unit/main.c): $(BUILD)/gen/suites.h

$(BUILD)/tests/loyd_tests: $(TEST_OBJ) $(CORE_OBJ) $(EXT_OBJ)
	@mkdir -p $(@D)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(SANFLAGS) -rdynamic -o $@ $^ $(CHECK_LIBS) $(LDLIBS)

# Benchmarks (not part of check): results go to docs/BENCHMARKS.md.  bench/run.sh says what
# each phase does; BENCH_QUICK=1 runs shorter phases.
$(BUILD)/bench/ceiling: bench/ceiling.c
	@mkdir -p $(@D)
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/bench/rules_bench: $(call obj,bench/rules_bench.c) $(CORE_OBJ) $(EXT_OBJ)
	@mkdir -p $(@D)
	$(Q)$(CC) -rdynamic -o $@ $^ $(LDLIBS)

bench: $(BUILD)/loyd $(BUILD)/bench/ceiling $(BUILD)/bench/rules_bench
	packaging/deps.sh --bench
	BUILD=$(BUILD) bench/run.sh

# The guided tour: emulated Bitrix24 + daemon + retail pack (core/demo.c).
demo: $(BUILD)/loyd
	$(BUILD)/loyd demo

check: $(BUILD)/tests/loyd_tests $(BUILD)/loyd $(PLUGIN_SO)
	LOYD_BIN=$(abspath $(BUILD)/loyd) LOYD_PLUGIN_DIR=$(abspath $(BUILD)/plugins) \
	LOYD_SRC=$(CURDIR) $(BUILD)/tests/loyd_tests

asan:
	$(MAKE) BUILD=build/asan SAN=1 OPT=-O1 check

install: $(BUILD)/loyd
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/loyd/rules
	install -m 755 $(BUILD)/loyd $(DESTDIR)$(PREFIX)/bin/loyd
	cp -R rules/. $(DESTDIR)$(PREFIX)/share/loyd/rules/
	install -d $(DESTDIR)$(PREFIX)/share/doc/loyd
	install -m 644 README.md $(DESTDIR)$(PREFIX)/share/doc/loyd/
	install -m 644 packaging/loyd.conf $(DESTDIR)$(PREFIX)/share/doc/loyd/loyd.conf.example

deps:
	packaging/deps.sh

format:
	clang-format -i core/*.c core/*.h core/include/loyd/*.h $(EXT_SRC) tests/*/*.c
format-check:
	clang-format --dry-run --Werror core/*.c core/*.h core/include/loyd/*.h $(EXT_SRC)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
