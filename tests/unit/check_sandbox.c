/* SPDX-License-Identifier: MIT */
/*
 * Tests for core/sandbox.c and core/luajson.c: one test per sandbox restriction (each removed
 * global, memory cap, instruction cap, wall clock, pcall cannot swallow a kill, bytecode,
 * frozen globals and libraries, string metatable, tenant isolation, read-only inputs), JSON
 * fidelity (null, empty arrays, int64, integer-only, cycles, depth), determinism (seeded
 * random, frozen clock, dates), reuse after a kill, and pattern matching (backtracking and
 * quadratic patterns stopped by the budget; results identical to stock Lua).  Fixtures:
 * tests/data/sandbox/ (Lua files) and tests/data/packs/pattern_bomb.
 */
#include <check.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luajson.h"
#include "rules.h"
#include "sandbox.h"

#define MiB (1024u * 1024)
#define NOW_MS 1709210096789ull /* 2024-02-29T12:34:56.789Z */

static struct loyd_sandbox *sb;
static const struct loyd_sandbox_limits test_lim = {
    .memory_bytes = 4 * MiB,
    .instructions = 2000000,
    .wall_ms = 5000,
};

static void setup(void)
{
    ck_assert_int_eq(loyd_sandbox_create("test", &test_lim, &sb), 0);
}

static void teardown(void)
{
    loyd_sandbox_destroy(sb);
    sb = NULL;
}

static char *read_fixture(const char *name, size_t *len)
{
    const char *root = getenv("LOYD_SRC");
    char path[1024];

    snprintf(path, sizeof(path), "%s/tests/data/sandbox/%s", root != NULL ? root : ".", name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char *buf = malloc(1 * MiB + 1);
    ck_assert_ptr_nonnull(buf);
    *len = fread(buf, 1, 1 * MiB, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static void load_fixture(struct loyd_sandbox *s, const char *module, const char *file)
{
    struct loyd_buf err = {0};
    size_t len;
    char *src = read_fixture(file, &len);
    int rc = loyd_sandbox_load(s, module, src, len, &err);
    ck_assert_msg(rc == 0, "load %s: %d %s", file, rc, err.data ? err.data : "");
    free(src);
    loyd_buf_free(&err);
}

static bool has_module(struct loyd_sandbox *s, const char *module)
{
    json_t *names = NULL;
    int rc = loyd_sandbox_handlers(s, module, &names);
    json_decref(names);
    return rc == 0;
}

static int load_src(struct loyd_sandbox *s, const char *module, const char *src,
                    struct loyd_buf *err)
{
    return loyd_sandbox_load(s, module, src, strlen(src), err);
}

/* Calls module.handler with the elements of the JSON array args_json as arguments. */
static int call_full(struct loyd_sandbox *s, const char *module, const char *handler,
                     const char *args_json, unsigned aflags, unsigned rflags, uint64_t seed,
                     json_t **res, json_t **log, struct loyd_buf *err)
{
    json_t *args =
        json_loads(args_json != NULL ? args_json : "[]", JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    ck_assert_ptr_nonnull(args);
    json_t *argv[16];
    size_t n = json_array_size(args);
    for (size_t i = 0; i < n; i++)
        argv[i] = json_array_get(args, i);
    struct loyd_sandbox_call c = {
        .module = module,
        .handler = handler,
        .args = argv,
        .nargs = n,
        .now_ms = NOW_MS,
        .tz_offset_min = 0,
        .seed = seed,
        .arg_flags = aflags,
        .result_flags = rflags,
    };
    int rc = loyd_sandbox_call(s, &c, res, log, err);
    json_decref(args);
    return rc;
}

static int call(struct loyd_sandbox *s, const char *module, const char *handler,
                const char *args_json, json_t **res, struct loyd_buf *err)
{
    return call_full(s, module, handler, args_json, 0, 0, 42, res, NULL, err);
}

/* Runs `return (expr)` inside a handler and returns the result (new). */
static json_t *eval(const char *expr, int want_rc)
{
    static int counter;
    char module[64], src[4096];
    struct loyd_buf err = {0};
    json_t *res = NULL;

    snprintf(module, sizeof(module), "rules/eval%d.lua", counter++);
    snprintf(src, sizeof(src), "return { h = function(arg) return (%s) end }", expr);
    ck_assert_msg(load_src(sb, module, src, &err) == 0, "load: %s", err.data);
    int rc = call(sb, module, "h", "[{\"k\": 1, \"list\": [1, 2]}]", &res, &err);
    ck_assert_msg(rc == want_rc, "%s: rc %d (%s), want %d", expr, rc, err.data ? err.data : "",
                  want_rc);
    loyd_buf_free(&err);
    if (res == NULL)
        res = json_null();
    return res;
}

static void assert_true(const char *expr)
{
    json_t *r = eval(expr, 0);
    ck_assert_msg(json_is_true(r), "%s is not true", expr);
    json_decref(r);
}

/* Runs a statement in a handler; it must fail with LOYD_ERULE and a message containing want. */
static void assert_raises(const char *stmt, const char *want)
{
    static int counter;
    char module[64], src[4096];
    struct loyd_buf err = {0};
    json_t *res = NULL;

    snprintf(module, sizeof(module), "rules/raise%d.lua", counter++);
    snprintf(src, sizeof(src), "return { h = function(arg) %s\n return 'not raised' end }", stmt);
    ck_assert_msg(load_src(sb, module, src, &err) == 0, "load: %s", err.data);
    int rc = call(sb, module, "h", "[{\"k\": 1, \"list\": [1, 2]}]", &res, &err);
    ck_assert_msg(rc == LOYD_ERULE, "%s: rc %d, want LOYD_ERULE", stmt, rc);
    ck_assert_ptr_null(res);
    ck_assert_msg(err.data != NULL && strstr(err.data, want) != NULL, "%s: message '%s' lacks '%s'",
                  stmt, err.data ? err.data : "", want);
    loyd_buf_free(&err);
}

static void assert_json_eq(json_t *got, const char *want_json)
{
    json_t *want = json_loads(want_json, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    ck_assert_ptr_nonnull(want);
    char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    ck_assert_msg(json_equal(got, want), "got %s, want %s", g, want_json);
    free(g);
    json_decref(want);
}

/* ---- removed globals: one test each ------------------------------------------------------ */

#define REMOVED(tname, expr)                                                                       \
    START_TEST(tname)                                                                              \
    {                                                                                              \
        assert_true("(" expr ") == nil");                                                          \
    }                                                                                              \
    END_TEST

REMOVED(test_removed_io, "io")
REMOVED(test_removed_os, "os")
REMOVED(test_removed_package, "package")
REMOVED(test_removed_require, "require")
REMOVED(test_removed_debug, "debug")
REMOVED(test_removed_dofile, "dofile")
REMOVED(test_removed_loadfile, "loadfile")
REMOVED(test_removed_load, "load")
REMOVED(test_removed_loadstring, "loadstring")
REMOVED(test_removed_collectgarbage, "collectgarbage")
REMOVED(test_removed_rawset, "rawset")
REMOVED(test_removed_rawget, "rawget")
REMOVED(test_removed_coroutine, "coroutine")
REMOVED(test_removed_randomseed, "math.randomseed")

START_TEST(test_removed_string_dump)
{
    assert_true("string.dump == nil");
    /* The string metatable's __index is the real string table: it must be gone there too. */
    assert_true("(\"\").dump == nil");
    assert_raises("local f = string.dump(function() end)", "attempt to call a nil value");
}
END_TEST

START_TEST(test_print_goes_to_log)
{
    struct loyd_buf err = {0};
    json_t *res = NULL, *log = NULL;

    ck_assert_int_eq(load_src(sb, "rules/p.lua",
                              "return { h = function() print('a', 1, nil) loyd.log('b', true) "
                              "for i = 1, 500 do loyd.log(i) end end }",
                              &err),
                     0);
    ck_assert_int_eq(call_full(sb, "rules/p.lua", "h", NULL, 0, 0, 1, &res, &log, &err), 0);
    ck_assert_str_eq(json_string_value(json_array_get(log, 0)), "a\t1\tnil");
    ck_assert_str_eq(json_string_value(json_array_get(log, 1)), "b true");
    /* Capped: LOG_LINES lines and one truncation marker. */
    ck_assert_uint_eq(json_array_size(log), LOYD_SANDBOX_LOG_LINES + 1);
    ck_assert_str_eq(json_string_value(json_array_get(log, LOYD_SANDBOX_LOG_LINES)),
                     "(log truncated)");
    json_decref(res);
    json_decref(log);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_log_line_capped)
{
    struct loyd_buf err = {0};
    json_t *res = NULL, *log = NULL;

    ck_assert_int_eq(load_src(sb, "rules/p.lua",
                              "return { h = function() loyd.log(string.rep('x', 5000), 'y') "
                              "loyd.log('\\xff\\xfe') end }",
                              &err),
                     0);
    ck_assert_int_eq(call_full(sb, "rules/p.lua", "h", NULL, 0, 0, 1, &res, &log, &err), 0);
    ck_assert_uint_eq(json_string_length(json_array_get(log, 0)), LOYD_SANDBOX_LOG_LINE_MAX);
    ck_assert_str_eq(json_string_value(json_array_get(log, 1)), "??");
    json_decref(res);
    json_decref(log);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_gc_metamethod_refused)
{
    assert_raises("setmetatable({}, { __gc = function() while true do end end })",
                  "__gc metamethods are not allowed");
    /* Ordinary metatables still work for rule-owned tables. */
    assert_true("setmetatable({}, { __index = { x = 7 } }).x == 7");
}
END_TEST

/* ---- memory ------------------------------------------------------------------------------- */

START_TEST(test_memory_bomb)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    load_fixture(sb, "rules/bombs.lua", "bombs.lua");
    int rc = call(sb, "rules/bombs.lua", "memory_bomb", NULL, &res, &err);
    ck_assert_int_eq(rc, LOYD_ERULEMEM);
    ck_assert_ptr_null(res);
    ck_assert(strstr(err.data, "not enough memory") != NULL);
    /* The cap held, and a collection after the failure gave the memory back. */
    ck_assert_uint_le(loyd_sandbox_memory(sb), test_lim.memory_bytes);
    ck_assert_uint_lt(loyd_sandbox_memory(sb), test_lim.memory_bytes / 2);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_memory_bomb_at_load)
{
    struct loyd_buf err = {0};
    int rc =
        load_src(sb, "rules/m.lua", "local t = {} for i = 1, 1e9 do t[i] = i end return {}", &err);
    ck_assert_int_eq(rc, LOYD_ERULEMEM);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_string_rep_bomb)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    load_fixture(sb, "rules/bombs.lua", "bombs.lua");
    ck_assert_int_eq(call(sb, "rules/bombs.lua", "rep_bomb", NULL, &res, &err), LOYD_ERULE);
    ck_assert_msg(strstr(err.data, "string.rep result larger than") != NULL, "%s", err.data);
    ck_assert_uint_le(loyd_sandbox_memory(sb), test_lim.memory_bytes);
    loyd_buf_reset(&err);
    /* Doubling by concatenation is bounded by the memory cap instead. */
    ck_assert_int_eq(call(sb, "rules/bombs.lua", "rep_doubling", NULL, &res, &err), LOYD_ERULEMEM);
    ck_assert_uint_le(loyd_sandbox_memory(sb), test_lim.memory_bytes);
    loyd_buf_reset(&err);
    /* string.rep("", 2^50) would loop 2^50 times in C producing nothing. */
    ck_assert_int_eq(call(sb, "rules/bombs.lua", "rep_empty", NULL, &res, &err), 0);
    assert_json_eq(res, "0");
    json_decref(res);
    assert_true("string.rep('ab', 3, ',') == 'ab,ab,ab' and ('x'):rep(2) == 'xx'");
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_table_move_spin)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    load_fixture(sb, "rules/bombs.lua", "bombs.lua");
    ck_assert_int_eq(call(sb, "rules/bombs.lua", "move_spin", NULL, &res, &err), LOYD_ERULE);
    ck_assert(strstr(err.data, "table.move of more than") != NULL);
    assert_true("table.concat(table.move({1, 2, 3}, 1, 3, 2, {9}), ',') == '9,1,2,3'");
    loyd_buf_free(&err);
}
END_TEST

/* ---- CPU ---------------------------------------------------------------------------------- */

static void expect_budget(const char *handler, const char *reason)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    load_fixture(sb, "rules/bombs.lua", "bombs.lua");
    int rc = call(sb, "rules/bombs.lua", handler, NULL, &res, &err);
    ck_assert_msg(rc == LOYD_EBUDGET, "%s: rc %d %s", handler, rc, err.data ? err.data : "");
    ck_assert_ptr_null(res);
    ck_assert_msg(strstr(err.data, "CPU budget") != NULL && strstr(err.data, reason) != NULL,
                  "%s: %s", handler, err.data);
    loyd_buf_free(&err);
}

START_TEST(test_infinite_loop)
{
    expect_budget("infinite_loop", "instructions");
}
END_TEST

START_TEST(test_infinite_loop_in_pcall)
{
    expect_budget("loop_in_pcall", "instructions");
}
END_TEST

START_TEST(test_pcall_retry_loop)
{
    expect_budget("pcall_retry", "instructions");
}
END_TEST

START_TEST(test_tail_pcall_returns_after_kill)
{
    /* pcall hands back (false, msg) straight to the host: the status is OK, killed is set. */
    expect_budget("tail_pcall", "instructions");
}
END_TEST

START_TEST(test_xpcall_handler_loop)
{
    expect_budget("xpcall_loop", "instructions");
}
END_TEST

START_TEST(test_xpcall_still_works)
{
    assert_true(
        "(function() local ok, e = xpcall(function() error('x', 0) end,"
        " function(m) return 'handled: ' .. m end) return not ok and e == 'handled: x' end)()");
    assert_true(
        "(function() local ok, a, b = xpcall(function(x, y) return x + y, 'z' end, print, 2, 3)"
        " return ok and a == 5 and b == 'z' end)()");
    /* An error inside the handler is reported, not swallowed. */
    assert_raises("xpcall(error, function() error('in handler', 0) end)", "in handler");
}
END_TEST

START_TEST(test_infinite_loop_at_load)
{
    struct loyd_buf err = {0};
    ck_assert_int_eq(load_src(sb, "rules/l.lua", "while true do end return {}", &err),
                     LOYD_EBUDGET);
    ck_assert(!has_module(sb, "rules/l.lua"));
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_wall_clock_budget)
{
    /* A loop of expensive C calls: few VM instructions, so a huge instruction budget never
     * trips; only the deadline stops it. */
    struct loyd_sandbox_limits lim = {
        .memory_bytes = 4 * MiB, .instructions = UINT64_C(1) << 50, .wall_ms = 100};
    loyd_sandbox_destroy(sb);
    ck_assert_int_eq(loyd_sandbox_create("wall", &lim, &sb), 0);
    expect_budget("wall_clock", "wall clock");
}
END_TEST

/* ---- pattern matching: C code the count hook cannot reach (issue 11) -------------------- */

/* The call: string.find(("a"):rep(50000), ("a-"):rep(30) .. "b").  Stock Lua runs it
 * for minutes; the metered matcher stops it on the instruction budget (test_lim: 2 million,
 * with 5 s of wall clock to spare, so "instructions" means the steps were counted). */
START_TEST(test_pattern_find_bomb)
{
    expect_budget("pattern_find", "instructions");
}
END_TEST

START_TEST(test_pattern_method_bomb)
{
    expect_budget("pattern_method", "instructions");
}
END_TEST

START_TEST(test_pattern_gsub_gmatch_bombs)
{
    expect_budget("pattern_gsub", "instructions");
    expect_budget("pattern_gmatch", "instructions");
    expect_budget("pattern_gsub_function", "instructions");
}
END_TEST

START_TEST(test_pattern_bomb_in_pcall)
{
    expect_budget("pattern_in_pcall", "instructions");
    expect_budget("pattern_tail_pcall", "instructions");
    expect_budget("pattern_retry", "instructions");
}
END_TEST

/* Linear-looking calls that are quadratic in stock Lua: %b, a long plain needle, a long
 * replacement string applied at every empty match. */
START_TEST(test_pattern_quadratic_bombs)
{
    expect_budget("pattern_balance", "instructions");
    expect_budget("pattern_plain", "instructions");
    expect_budget("pattern_replacement", "instructions");
}
END_TEST

/* The message is the one a `while true do end` rule gets. */
START_TEST(test_pattern_bomb_same_error)
{
    struct loyd_buf e1 = {0}, e2 = {0};
    json_t *res = NULL;

    load_fixture(sb, "rules/bombs.lua", "bombs.lua");
    ck_assert_int_eq(call(sb, "rules/bombs.lua", "infinite_loop", NULL, &res, &e1), LOYD_EBUDGET);
    ck_assert_int_eq(call(sb, "rules/bombs.lua", "pattern_find", NULL, &res, &e2), LOYD_EBUDGET);
    const char *want = "rule exceeded its CPU budget (instructions)";
    ck_assert_msg(strstr(e1.data, want) != NULL, "%s", e1.data);
    ck_assert_msg(strstr(e2.data, want) != NULL, "%s", e2.data);
    loyd_buf_free(&e1);
    loyd_buf_free(&e2);
}
END_TEST

/* With an instruction budget that never runs out, the matcher's wall-clock check stops it. */
START_TEST(test_pattern_bomb_wall_clock)
{
    struct loyd_sandbox_limits lim = {
        .memory_bytes = 4 * MiB, .instructions = UINT64_C(1) << 50, .wall_ms = 100};
    loyd_sandbox_destroy(sb);
    ck_assert_int_eq(loyd_sandbox_create("wall", &lim, &sb), 0);
    expect_budget("pattern_find", "wall clock");
}
END_TEST

/* Runs patterns.lua's run() in a stock Lua state (lstrlib.c): the reference results. */
static json_t *stock_pattern_results(void)
{
    size_t len;
    char *src = read_fixture("patterns.lua", &len);
    lua_State *L = luaL_newstate();
    ck_assert_ptr_nonnull(L);
    luaL_openlibs(L);
    ck_assert_int_eq(luaL_loadbufferx(L, src, len, "=rules/patterns.lua", "t"), LUA_OK);
    ck_assert_int_eq(lua_pcall(L, 0, 1, 0), LUA_OK);
    lua_getfield(L, -1, "run");
    int st = lua_pcall(L, 0, 1, 0);
    ck_assert_msg(st == LUA_OK, "stock run: %s", lua_tostring(L, -1));
    json_t *out = json_array();
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t l;
        lua_geti(L, -1, i);
        const char *s = lua_tolstring(L, -1, &l);
        ck_assert_ptr_nonnull(s);
        json_t *j = json_stringn(s, l);
        ck_assert_msg(j != NULL, "stock result %d is not UTF-8", (int)i);
        json_array_append_new(out, j);
        lua_pop(L, 1);
    }
    lua_close(L);
    free(src);
    return out;
}

START_TEST(test_pattern_semantics_match_stock_lua)
{
    struct loyd_buf err = {0};
    json_t *res = NULL, *want = stock_pattern_results();

    load_fixture(sb, "rules/patterns.lua", "patterns.lua");
    int rc = call(sb, "rules/patterns.lua", "run", NULL, &res, &err);
    ck_assert_msg(rc == 0, "rc %d %s", rc, err.data ? err.data : "");
    ck_assert(json_is_array(res));
    ck_assert_uint_gt(json_array_size(want), 100);
    ck_assert_uint_eq(json_array_size(res), json_array_size(want));
    for (size_t i = 0; i < json_array_size(want); i++) {
        const char *g = json_string_value(json_array_get(res, i));
        const char *w = json_string_value(json_array_get(want, i));
        ck_assert_msg(g != NULL && strcmp(g, w) == 0, "case %zu: sandbox %s, stock Lua %s", i + 1,
                      g ? g : "(not a string)", w);
    }
    /* The harness itself: a few results spelled out. */
    ck_assert_str_eq(json_string_value(json_array_get(res, 0)), "2:5,7");
    ck_assert_str_eq(json_string_value(json_array_get(res, 14)), "2:3,5");
    json_decref(res);
    json_decref(want);
    loyd_buf_free(&err);
}
END_TEST

/* `loyd test` on a pack whose rule runs the pattern reports the budget failure as the
 * rule's error, and the pack's ordinary patterns still work. */
START_TEST(test_pattern_bomb_pack)
{
    const char *root = getenv("LOYD_SRC");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/tests/data/packs/pattern_bomb", root != NULL ? root : ".");
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    int rc = loyd_pack_test_run(dir, NULL, f);
    long n = ftell(f);
    rewind(f);
    char *out = calloc(1, (size_t)n + 1);
    ck_assert_ptr_nonnull(out);
    ck_assert_uint_eq(fread(out, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
    ck_assert_ptr_nonnull(strstr(out, "  ok   ordinary patterns work\n"));
    ck_assert_ptr_nonnull(strstr(out, "  ok   a backtracking pattern fails on the CPU budget\n"));
    ck_assert_ptr_nonnull(strstr(out, "  ok   pcall does not swallow the kill\n"));
    ck_assert_ptr_nonnull(strstr(out, "3 passed, 0 failed\n"));
    free(out);
}
END_TEST

START_TEST(test_deep_recursion)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    load_fixture(sb, "rules/bombs.lua", "bombs.lua");
    int rc = call(sb, "rules/bombs.lua", "recurse", NULL, &res, &err);
    /* Either the stack limit or the memory cap stops it; never a crash. */
    ck_assert_msg(rc == LOYD_ERULE || rc == LOYD_ERULEMEM, "rc %d", rc);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_usable_after_kill)
{
    static const char *const bombs[] = {"infinite_loop",  "memory_bomb",     "pcall_retry",
                                        "tail_pcall",     "rep_doubling",    "pattern_find",
                                        "pattern_gmatch", "pattern_in_pcall"};
    struct loyd_buf err = {0};
    json_t *res = NULL;

    load_fixture(sb, "rules/bombs.lua", "bombs.lua");
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(bombs); i++) {
        ck_assert_int_ne(call(sb, "rules/bombs.lua", bombs[i], NULL, &res, &err), 0);
        loyd_buf_reset(&err);
        /* The next call gets a fresh budget and a working state. */
        ck_assert_int_eq(call(sb, "rules/bombs.lua", "ok", "[5]", &res, &err), 0);
        assert_json_eq(res, "{\"fine\": true, \"x\": 5}");
        json_decref(res);
    }
    loyd_buf_free(&err);
}
END_TEST

/* ---- loading ------------------------------------------------------------------------------ */

static int bytecode_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
    (void)L;
    loyd_buf_append(ud, p, sz);
    return 0;
}

START_TEST(test_bytecode_rejected)
{
    /* Real bytecode, made with an ordinary Lua state. */
    struct loyd_buf bc = {0}, err = {0};
    lua_State *L = luaL_newstate();
    ck_assert_int_eq(luaL_loadstring(L, "return { h = function() return 1 end }"), LUA_OK);
    ck_assert_int_eq(lua_dump(L, bytecode_writer, &bc, 0), 0);
    lua_close(L);
    ck_assert(bc.len > 4 && memcmp(bc.data, LUA_SIGNATURE, 4) == 0);

    ck_assert_int_eq(loyd_sandbox_load(sb, "rules/bc.lua", bc.data, bc.len, &err), LOYD_EPARSE);
    ck_assert_msg(strstr(err.data, "rules/bc.lua") && strstr(err.data, "binary"), "%s", err.data);
    loyd_buf_reset(&err);
    ck_assert(!has_module(sb, "rules/bc.lua"));
    loyd_buf_free(&bc);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_load_errors)
{
    struct loyd_buf err = {0};

    ck_assert_int_eq(load_src(sb, "rules/syn.lua", "return {\n  h = function( end }", &err),
                     LOYD_EPARSE);
    ck_assert_msg(strncmp(err.data, "rules/syn.lua:2:", 16) == 0, "%s", err.data);
    loyd_buf_reset(&err);

    ck_assert_int_eq(load_src(sb, "rules/ret.lua", "return 42", &err), LOYD_ERULE);
    ck_assert_msg(strstr(err.data, "must return a table of handlers (got number)"), "%s", err.data);
    loyd_buf_reset(&err);

    ck_assert_int_eq(load_src(sb, "rules/err.lua", "local x = 1\n\nerror('boom')", &err),
                     LOYD_ERULE);
    ck_assert_msg(strncmp(err.data, "rules/err.lua:3: boom", 21) == 0, "%s", err.data);
    ck_assert(strstr(err.data, "stack traceback") != NULL);
    loyd_buf_reset(&err);

    size_t big = LOYD_SANDBOX_MAX_SOURCE + 1;
    char *src = malloc(big);
    memset(src, ' ', big);
    ck_assert_int_eq(loyd_sandbox_load(sb, "rules/big.lua", src, big, &err), LOYD_ELIMIT);
    free(src);
    loyd_buf_reset(&err);

    ck_assert_int_eq(load_src(sb, "", "return {}", &err), -EINVAL);
    ck_assert_int_eq(load_src(sb, "bad\nname", "return {}", &err), -EINVAL);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_handler_runtime_error)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    ck_assert_int_eq(load_src(sb, "rules/cashback.lua",
                              "return {\n  h = function(ev)\n    return ev.deal.amount\n  end\n}",
                              &err),
                     0);
    ck_assert_int_eq(call(sb, "rules/cashback.lua", "h", "[{}]", &res, &err), LOYD_ERULE);
    ck_assert_msg(strncmp(err.data, "rules/cashback.lua:3: attempt to index", 38) == 0, "%s",
                  err.data);
    ck_assert(strstr(err.data, "stack traceback") != NULL);
    loyd_buf_reset(&err);
    ck_assert_int_eq(call(sb, "rules/cashback.lua", "nope", NULL, &res, &err), -ENOENT);
    ck_assert_int_eq(call(sb, "rules/none.lua", "h", NULL, &res, &err), -ENOENT);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_handlers_listed)
{
    json_t *names = NULL;

    load_fixture(sb, "rules/cashback.lua", "cashback.lua");
    ck_assert_int_eq(loyd_sandbox_handlers(sb, "rules/cashback.lua", &names), 0);
    assert_json_eq(names, "[\"deal.won\", \"member.birthday\"]");
    json_decref(names);
    ck_assert_int_eq(loyd_sandbox_handlers(sb, "rules/other.lua", &names), -ENOENT);
}
END_TEST

START_TEST(test_cashback_rule)
{
    struct loyd_buf err = {0};
    json_t *res = NULL, *log = NULL;

    load_fixture(sb, "rules/cashback.lua", "cashback.lua");
    const char *args =
        "[{\"deal\": {\"id\": \"D-7\", \"amount\": 1234500}},"
        " {\"id\": 9, \"tier\": \"gold\"},"
        " {\"cashback\": {\"gold\": 300, \"default\": 100}, \"points_ttl_days\": 365}]";
    int rc = call_full(sb, "rules/cashback.lua", "deal.won", args, LOYD_LUAJSON_INTEGERS_ONLY,
                       LOYD_LUAJSON_INTEGERS_ONLY, 1, &res, &log, &err);
    ck_assert_msg(rc == 0, "%s", err.data);
    assert_json_eq(res, "[{\"type\": \"award\", \"points\": 37035, \"reason\": \"purchase D-7\","
                        " \"expires_on\": \"2025-02-28\", \"tags\": [], \"note\": null}]");
    assert_json_eq(log, "[\"deal D-7 tier gold points 37035\"]");
    json_decref(res);
    json_decref(log);
    /* No points: the marked empty array stays an array. */
    rc = call_full(sb, "rules/cashback.lua", "deal.won",
                   "[{\"deal\": {\"id\": \"D-8\", \"amount\": 0}}, {\"id\": 9, \"tier\": \"x\"},"
                   " {\"cashback\": {}, \"points_ttl_days\": 1}]",
                   0, 0, 1, &res, NULL, &err);
    ck_assert_msg(rc == 0, "%s", err.data);
    assert_json_eq(res, "[]");
    json_decref(res);
    loyd_buf_free(&err);
}
END_TEST

/* ---- frozen environment -------------------------------------------------------------------- */

START_TEST(test_global_write_refused)
{
    struct loyd_buf err = {0};

    assert_raises("x = 1", "attempt to write global 'x'");
    assert_raises("_G.y = 1", "attempt to write global 'y'");
    assert_raises("_ENV.z = 1", "attempt to write global 'z'");
    assert_raises("loyd = nil", "attempt to write global 'loyd'");
    /* At load time too. */
    ck_assert_int_eq(load_src(sb, "rules/g.lua", "counter = 0\nreturn {}", &err), LOYD_ERULE);
    ck_assert_msg(strstr(err.data, "rules/g.lua:1: attempt to write global 'counter'"), "%s",
                  err.data);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_library_tables_read_only)
{
    assert_raises("string.x = 1", "read-only table (field 'x')");
    assert_raises("string.rep = nil", "read-only table (field 'rep')");
    assert_raises("math.pi = 3", "read-only table (field 'pi')");
    assert_raises("table.insert = print", "read-only table (field 'insert')");
    assert_raises("utf8.char = nil", "read-only table");
    assert_raises("loyd.now = function() return 0 end", "read-only table (field 'now')");
    assert_raises("_G.string.upper = nil", "read-only table");
    assert_raises("setmetatable(string, {})", "cannot change a protected metatable");
    assert_raises("setmetatable(_G, {})", "cannot change a protected metatable");
    /* The proxies still read and iterate like the libraries. */
    assert_true("string.upper('a') == 'A' and math.max(1, 2) == 2 and #_G == 0");
    assert_true("(function() local n = 0 for k, v in pairs(math) do n = n + 1 end "
                "return n > 20 end)()");
    assert_true("getmetatable(string) == false and getmetatable(_G) == false");
}
END_TEST

START_TEST(test_string_metatable_hidden)
{
    assert_true("getmetatable('') == false");
    assert_raises("local mt = getmetatable('') mt.__index = {}", "attempt to index a boolean");
    assert_raises("getmetatable('').__index.upper = nil", "attempt to index a boolean");
    /* Methods on strings keep working. */
    assert_true("('abc'):upper() == 'ABC' and ('a,b'):find(',') == 2");
}
END_TEST

START_TEST(test_rawequal_rawlen_harmless)
{
    assert_true("rawequal(arg, arg) and rawlen(arg) == 0 and rawlen({1, 2}) == 2");
}
END_TEST

/* ---- isolation between tenants ----------------------------------------------------------- */

START_TEST(test_tenant_isolation)
{
    struct loyd_sandbox *other = NULL;
    struct loyd_buf err = {0};
    json_t *res = NULL, *names = NULL;

    ck_assert_int_eq(loyd_sandbox_create("other", &test_lim, &other), 0);
    load_fixture(sb, "rules/isolation.lua", "isolation.lua");
    load_fixture(sb, "rules/a_only.lua", "cashback.lua");
    ck_assert_int_eq(call(sb, "rules/isolation.lua", "set", "[\"tenant A secret\"]", &res, &err),
                     0);
    json_decref(res);
    ck_assert_int_eq(call(sb, "rules/isolation.lua", "get", NULL, &res, &err), 0);
    assert_json_eq(res, "{\"secret\": \"tenant A secret\", \"count\": 1}");
    json_decref(res);

    /* The same file in another sandbox has its own upvalues and tables. */
    load_fixture(other, "rules/isolation.lua", "isolation.lua");
    ck_assert_int_eq(call(other, "rules/isolation.lua", "get", NULL, &res, &err), 0);
    assert_json_eq(res, "{\"secret\": \"initial\", \"count\": 0}");
    json_decref(res);

    /* A module loaded in one sandbox does not exist in the other. */
    ck_assert_int_eq(loyd_sandbox_handlers(sb, "rules/a_only.lua", &names), 0);
    json_decref(names);
    ck_assert_int_eq(loyd_sandbox_handlers(other, "rules/a_only.lua", &names), -ENOENT);
    ck_assert_int_eq(call(other, "rules/a_only.lua", "deal.won", NULL, &res, &err), -ENOENT);
    loyd_buf_free(&err);
    loyd_sandbox_destroy(other);
}
END_TEST

/* ---- inputs are read-only ----------------------------------------------------------------- */

START_TEST(test_inputs_read_only)
{
    assert_raises("arg.k = 2", "read-only table (field 'k')");
    assert_raises("arg.new = 2", "read-only table (field 'new')");
    assert_raises("arg.list[1] = 9", "read-only table");
    assert_raises("table.insert(arg.list, 3)", "read-only table");
    assert_raises("table.sort(arg.list, function(a, b) return a > b end)", "read-only table");
    assert_raises("setmetatable(arg, nil)", "cannot change a protected metatable");
    /* pairs must not hand out the table behind the proxy as its state. */
    assert_raises("local f, s = pairs(arg) s.k = 5", "read-only table");
    assert_raises("local f, s = pairs(arg) rawset = nil", "attempt to write global");
    /* Reads, length, iteration all work. */
    assert_true("arg.k == 1 and #arg.list == 2 and arg.list[2] == 2");
    assert_true("(function() local s = 0 for _, v in ipairs(arg.list) do s = s + v end "
                "return s == 3 end)()");
    assert_true("(function() local n = 0 for k, v in pairs(arg) do n = n + 1 end "
                "return n == 2 end)()");
    assert_true("next(arg) ~= nil and next({}) == nil");
    assert_true("table.concat(arg.list, '+') == '1+2' and select(2, table.unpack(arg.list)) == 2");
    assert_true("getmetatable(arg) == false");
}
END_TEST

/* ---- JSON fidelity ------------------------------------------------------------------------ */

static void roundtrip(const char *doc, unsigned flags)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;
    char args[1024];

    snprintf(args, sizeof(args), "[%s]", doc);
    if (!has_module(sb, "rules/echo.lua"))
        ck_assert_int_eq(load_src(sb, "rules/echo.lua",
                                  "return { echo = function(x) return x end,"
                                  " wrap = function(x) return { v = x } end }",
                                  &err),
                         0);
    int rc = call_full(sb, "rules/echo.lua", "echo", args, flags, flags, 1, &res, NULL, &err);
    ck_assert_msg(rc == 0, "%s: %s", doc, err.data ? err.data : "");
    assert_json_eq(res, doc);
    json_decref(res);
    rc = call_full(sb, "rules/echo.lua", "wrap", args, flags, flags, 1, &res, NULL, &err);
    ck_assert_int_eq(rc, 0);
    json_t *want = json_loads(args, JSON_ALLOW_NUL, NULL);
    ck_assert(json_equal(json_object_get(res, "v"), json_array_get(want, 0)));
    json_decref(want);
    json_decref(res);
    loyd_buf_free(&err);
}

START_TEST(test_json_null_and_empty_arrays)
{
    roundtrip("{\"a\": null, \"b\": [], \"c\": {}, \"d\": [1, null, 3]}", 0);
    roundtrip("[[], [[]], {}, [{}], null, [null], [null, null]]", 0);
    roundtrip("{\"s\": \"h\\u00e9llo \\u0000 z\", \"t\": true, \"f\": false, \"r\": 1.5}", 0);
    /* Seen from Lua: null is a value (key survives), not nil; the array has length 3. */
    assert_true("loyd.null ~= nil and loyd.json_null == loyd.null and tostring(loyd.null) == "
                "'null'");
    struct loyd_buf err = {0};
    json_t *res = NULL;
    ck_assert_int_eq(load_src(sb, "rules/n.lua",
                              "return { h = function(x) return { has_a = x.a == loyd.null,"
                              " len_d = #x.d, d2 = x.d[2] == loyd.null, b_arr = loyd.is_array(x.b),"
                              " c_arr = loyd.is_array(x.c) } end }",
                              &err),
                     0);
    ck_assert_int_eq(call(sb, "rules/n.lua", "h",
                          "[{\"a\": null, \"b\": [], \"c\": {}, \"d\": [1, null, 3]}]", &res, &err),
                     0);
    assert_json_eq(res, "{\"has_a\": true, \"len_d\": 3, \"d2\": true, \"b_arr\": true,"
                        " \"c_arr\": false}");
    json_decref(res);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_json_int64_extremes)
{
    roundtrip("[9223372036854775807, -9223372036854775808, 0, -1]", 0);
    roundtrip("[9223372036854775807, -9223372036854775808]", LOYD_LUAJSON_INTEGERS_ONLY);
    json_t *r =
        eval("math.type(arg.k) == 'integer' and math.maxinteger - 1 == 9223372036854775806", 0);
    ck_assert(json_is_true(r));
    json_decref(r);
}
END_TEST

START_TEST(test_json_integers_only)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    ck_assert_int_eq(load_src(sb, "rules/f.lua",
                              "return { bad = function() return { effects = { { points = 10 },"
                              " { points = 1.5 } } } end,"
                              " whole = function() return { points = 2.0, n = 7 // 2 } end,"
                              " nan = function() return { x = 0/0 } end,"
                              " inf = function() return { 1, math.huge } end }",
                              &err),
                     0);
    int rc = call_full(sb, "rules/f.lua", "bad", NULL, 0, LOYD_LUAJSON_INTEGERS_ONLY, 1, &res, NULL,
                       &err);
    ck_assert_int_eq(rc, LOYD_EEFFECT);
    ck_assert_msg(strstr(err.data, "non-integer number 1.5") &&
                      strstr(err.data, "at result.effects[2].points"),
                  "%s", err.data);
    loyd_buf_reset(&err);
    /* Without the flag the float passes. */
    ck_assert_int_eq(call_full(sb, "rules/f.lua", "bad", NULL, 0, 0, 1, &res, NULL, &err), 0);
    json_decref(res);
    /* An integral float becomes an integer. */
    ck_assert_int_eq(call_full(sb, "rules/f.lua", "whole", NULL, 0, LOYD_LUAJSON_INTEGERS_ONLY, 1,
                               &res, NULL, &err),
                     0);
    ck_assert(json_is_integer(json_object_get(res, "points")));
    assert_json_eq(res, "{\"points\": 2, \"n\": 3}");
    json_decref(res);
    ck_assert_int_eq(call_full(sb, "rules/f.lua", "nan", NULL, 0, 0, 1, &res, NULL, &err),
                     LOYD_EEFFECT);
    ck_assert_msg(strstr(err.data, "NaN or infinite number at result.x"), "%s", err.data);
    loyd_buf_reset(&err);
    ck_assert_int_eq(call_full(sb, "rules/f.lua", "inf", NULL, 0, 0, 1, &res, NULL, &err),
                     LOYD_EEFFECT);
    ck_assert_msg(strstr(err.data, "at result[2]"), "%s", err.data);
    loyd_buf_reset(&err);
    /* Input side: a fractional amount in integers-only mode is the caller's error. */
    ck_assert_int_eq(load_src(sb, "rules/e.lua", "return { h = function(x) return x end }", &err),
                     0);
    rc = call_full(sb, "rules/e.lua", "h", "[{\"deal\": {\"amount\": 10.25}}]",
                   LOYD_LUAJSON_INTEGERS_ONLY, 0, 1, &res, NULL, &err);
    ck_assert_int_eq(rc, -EINVAL);
    ck_assert_msg(strstr(err.data, "at arg1.deal.amount") && !strstr(err.data, "traceback"), "%s",
                  err.data);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_json_unconvertible_values)
{
    static const struct {
        const char *expr, *want;
    } cases[] = {
        {"local t = {} t.self = t return t", "(cycle) at result.self"},
        {"local t = { a = { b = {} } } t.a.b.c = t.a return t", "(cycle) at result.a.b.c"},
        {"return { f = print }", "cannot convert a function value at result.f"},
        {"return { [true] = 1 }", "boolean key"},
        {"return { 1, 2, x = 3 }", "mixes keys"},
        {"return { [1] = 1, [3] = 3 }", "mixes keys"},
        {"return { ['odd key'] = { print } }", "function value at result[\"odd key\"][1]"},
        {"return loyd.array({ a = 1 })", "marked as array"},
        {"return { s = '\\xff' }", "not valid UTF-8 at result.s"},
    };
    struct loyd_buf err = {0};
    json_t *res = NULL;

    for (size_t i = 0; i < LOYD_ARRAY_SIZE(cases); i++) {
        char module[32], src[512];
        snprintf(module, sizeof(module), "rules/u%zu.lua", i);
        snprintf(src, sizeof(src), "return { h = function() %s end }", cases[i].expr);
        ck_assert_int_eq(load_src(sb, module, src, &err), 0);
        int rc = call(sb, module, "h", NULL, &res, &err);
        ck_assert_msg(rc == LOYD_EEFFECT, "%s: rc %d", cases[i].expr, rc);
        ck_assert_msg(strstr(err.data, cases[i].want), "%s: %s", cases[i].expr, err.data);
        loyd_buf_reset(&err);
    }
    /* A shared (non-cyclic) sub-table is fine. */
    json_t *r = eval("(function() local s = { 1 } return { a = s, b = s } end)()", 0);
    assert_json_eq(r, "{\"a\": [1], \"b\": [1]}");
    json_decref(r);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_json_depth_limits)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;
    char deep[256] = "", args[300];

    /* Output: 32 levels pass, 33 fail. */
    ck_assert_int_eq(load_src(sb, "rules/d.lua",
                              "return { h = function(n) local t = {} local r = t "
                              "for i = 2, n do t.x = {} t = t.x end return r end }",
                              &err),
                     0);
    ck_assert_int_eq(call(sb, "rules/d.lua", "h", "[32]", &res, &err), 0);
    json_decref(res);
    ck_assert_int_eq(call(sb, "rules/d.lua", "h", "[33]", &res, &err), LOYD_EEFFECT);
    ck_assert_msg(strstr(err.data, "nesting deeper than 32"), "%s", err.data);
    loyd_buf_reset(&err);
    /* Input: 33 nested arrays are refused before the rule runs. */
    for (int i = 0; i < 33; i++)
        strcat(deep, "[");
    for (int i = 0; i < 33; i++)
        strcat(deep, "]");
    snprintf(args, sizeof(args), "[%s]", deep);
    ck_assert_int_eq(call(sb, "rules/d.lua", "h", args, &res, &err), -EINVAL);
    ck_assert_msg(strstr(err.data, "nesting deeper than 32"), "%s", err.data);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_json_encode_decode)
{
    assert_true("loyd.json_encode({ b = loyd.array({}), a = loyd.null, c = { 1, 2 } }) == "
                "'{\"a\":null,\"b\":[],\"c\":[1,2]}'");
    assert_true("loyd.json_decode('{\"x\":[1,null]}').x[2] == loyd.null");
    assert_true("loyd.is_array(loyd.json_decode('[]'))");
    assert_raises("loyd.json_decode('{\"a\":1,\"a\":2}')", "json_decode");
    assert_raises("loyd.json_encode({ f = print })", "function value at $.f");
}
END_TEST

/* ---- determinism -------------------------------------------------------------------------- */

static json_t *random_seq(uint64_t seed)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    if (!has_module(sb, "rules/r.lua"))
        ck_assert_int_eq(load_src(sb, "rules/r.lua",
                                  "return { h = function() local t = {} for i = 1, 8 do "
                                  "t[i] = math.random(1, 1000000) end t[9] = math.random(0) "
                                  "t[10] = math.floor(math.random() * 1e9) "
                                  "t[11] = math.random(-3, -3) t[12] = math.random(6) "
                                  "return t end }",
                                  &err),
                         0);
    ck_assert_int_eq(call_full(sb, "rules/r.lua", "h", NULL, 0, 0, seed, &res, NULL, &err), 0);
    loyd_buf_free(&err);
    return res;
}

START_TEST(test_random_deterministic)
{
    json_t *a = random_seq(7), *b = random_seq(7), *c = random_seq(8);

    ck_assert(json_equal(a, b));
    ck_assert(!json_equal(a, c));
    ck_assert_int_eq(json_integer_value(json_array_get(a, 10)), -3);
    for (size_t i = 0; i < 8; i++) {
        json_int_t v = json_integer_value(json_array_get(a, i));
        ck_assert(v >= 1 && v <= 1000000);
    }
    json_decref(a);
    json_decref(b);
    json_decref(c);
    assert_raises("math.random(5, 1)", "interval is empty");
    /* Outside a call (module top level) there is no seed: refuse rather than be random. */
    struct loyd_buf err = {0};
    ck_assert_int_eq(load_src(sb, "rules/rt.lua", "local x = math.random() return {}", &err),
                     LOYD_ERULE);
    ck_assert_msg(strstr(err.data, "only available inside a handler call"), "%s", err.data);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_frozen_clock)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    json_t *r = eval("{ loyd.now(), loyd.today(), loyd.today(-780), loyd.today(720) }", 0);
    assert_json_eq(r, "[1709210096789, \"2024-02-29\", \"2024-02-28\", \"2024-03-01\"]");
    json_decref(r);
    /* The tz offset given by the caller. */
    ck_assert_int_eq(
        load_src(sb, "rules/tz.lua", "return { h = function() return loyd.today() end }", &err), 0);
    struct loyd_sandbox_call c = {
        .module = "rules/tz.lua", .handler = "h", .now_ms = NOW_MS, .tz_offset_min = 12 * 60};
    ck_assert_int_eq(loyd_sandbox_call(sb, &c, &res, NULL, &err), 0);
    assert_json_eq(res, "\"2024-03-01\"");
    json_decref(res);
    c.now_ms = 0;
    c.tz_offset_min = -60;
    ck_assert_int_eq(loyd_sandbox_call(sb, &c, &res, NULL, &err), 0);
    assert_json_eq(res, "\"1969-12-31\"");
    json_decref(res);
    c.tz_offset_min = 5000;
    ck_assert_int_eq(loyd_sandbox_call(sb, &c, &res, NULL, &err), -EINVAL);
    /* Not available while a module loads. */
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_src(sb, "rules/n.lua", "local t = loyd.now() return {}", &err),
                     LOYD_ERULE);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_sorted_keys)
{
    /* pairs() order depends on a per-state hash seed; loyd.keys gives a stable order. */
    json_t *r = eval("loyd.keys({ b = 1, a = 2, [2] = 0, [1] = 0, c = loyd.null })", 0);
    assert_json_eq(r, "[1, 2, \"a\", \"b\", \"c\"]");
    json_decref(r);
    r = eval("loyd.keys(arg)", 0);
    assert_json_eq(r, "[\"k\", \"list\"]");
    json_decref(r);
    r = eval("loyd.keys({})", 0);
    assert_json_eq(r, "[]");
    json_decref(r);
    assert_raises("loyd.keys({ [true] = 1, [false] = 2 })", "keys must be strings or numbers");
}
END_TEST

START_TEST(test_date_helpers)
{
    json_t *r =
        eval("{ loyd.date_add_days('2024-02-29', 365), loyd.date_add_days('2024-02-29', 366),"
             " loyd.date_add_days('2023-12-31', 1), loyd.date_add_days('2024-03-01', -1),"
             " loyd.days_between('2024-01-01', '2025-01-01'),"
             " loyd.days_between('2025-01-01', '2024-01-01'),"
             " loyd.days_between('1970-01-01', '2000-03-01') }",
             0);
    assert_json_eq(r, "[\"2025-02-28\", \"2025-03-01\", \"2024-01-01\", \"2024-02-29\", 366, -366,"
                      " 11017]");
    json_decref(r);
    assert_raises("loyd.date_add_days('2023-02-29', 1)", "YYYY-MM-DD");
    assert_raises("loyd.date_add_days('2023-2-01', 1)", "YYYY-MM-DD");
    assert_raises("loyd.days_between('2023-13-01', '2023-01-01')", "YYYY-MM-DD");
    assert_raises("loyd.date_add_days('9999-12-31', 1)", "out of range");
}
END_TEST

/* loyd.weekday: ISO numbering, Monday 1 .. Sunday 7; no argument = today (the frozen clock). */
START_TEST(test_weekday)
{
    json_t *r = eval("{ loyd.weekday('2026-12-04'), loyd.weekday('2026-03-01'),"
                     " loyd.weekday('2026-03-02'), loyd.weekday('2024-02-29'),"
                     " loyd.weekday('2000-02-29'), loyd.weekday('1969-12-31'),"
                     " loyd.weekday('1970-01-01'), loyd.weekday('0001-01-01'),"
                     " loyd.weekday() }",
                     0);
    /* Fri, Sun, Mon, Thu (a leap day), Tue (a leap day of a 400-year), Wed (before the epoch),
     * Thu, Mon; the clock is 2024-02-29. */
    assert_json_eq(r, "[5, 7, 1, 4, 2, 3, 4, 1, 4]");
    json_decref(r);
    assert_raises("loyd.weekday('2023-02-29')", "YYYY-MM-DD");
    assert_raises("loyd.weekday('2026-12-4')", "YYYY-MM-DD");
    assert_raises("loyd.weekday(20261204)", "YYYY-MM-DD");
}
END_TEST

/* ---- prelude, define, freeze --------------------------------------------------------------- */

static int l_test_double(lua_State *L)
{
    struct loyd_sandbox *s = loyd_sandbox_from_lua(L);
    uint64_t now = 0;
    lua_pushinteger(L, luaL_checkinteger(L, 1) * 2 + (loyd_sandbox_clock(s, &now, NULL) ? 0 : 1));
    return 1;
}

START_TEST(test_prelude_and_define)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;
    const char *prelude = "Effects = { kinds = { 'award' } }\n"
                          "function award(t) t.type = 'award' return t end\n"
                          "loyd.version = 'test'\n";

    ck_assert_int_eq(loyd_sandbox_define(sb, "double", l_test_double), 0);
    ck_assert_int_eq(loyd_sandbox_define(sb, "bad name", l_test_double), -EINVAL);
    ck_assert_int_eq(loyd_sandbox_prelude(sb, "prelude.lua", prelude, strlen(prelude), &err), 0);
    /* The prelude has no more power than rules. */
    const char *evil = "load('x = 1')()";
    ck_assert_int_eq(loyd_sandbox_prelude(sb, "evil.lua", evil, strlen(evil), &err), LOYD_ERULE);
    loyd_buf_reset(&err);
    ck_assert_int_eq(load_src(sb, "rules/x.lua",
                              "return { h = function() return { award{ points = loyd.double(21) },"
                              " loyd.version, Effects.kinds[1] } end,"
                              " evil = function() Effects.kinds[1] = 'x' end,"
                              " evil2 = function() award = nil end }",
                              &err),
                     0);
    ck_assert_int_eq(call(sb, "rules/x.lua", "h", NULL, &res, &err), 0);
    assert_json_eq(res, "[{\"type\": \"award\", \"points\": 42}, \"test\", \"award\"]");
    json_decref(res);
    /* Tables the prelude made are frozen too, deeply. */
    ck_assert_int_eq(call(sb, "rules/x.lua", "evil", NULL, &res, &err), LOYD_ERULE);
    ck_assert_msg(strstr(err.data, "read-only table"), "%s", err.data);
    loyd_buf_reset(&err);
    ck_assert_int_eq(call(sb, "rules/x.lua", "evil2", NULL, &res, &err), LOYD_ERULE);
    ck_assert_msg(strstr(err.data, "attempt to write global 'award'"), "%s", err.data);
    /* Frozen now. */
    ck_assert_int_eq(loyd_sandbox_define(sb, "late", l_test_double), -EBUSY);
    ck_assert_int_eq(loyd_sandbox_prelude(sb, "late.lua", prelude, strlen(prelude), &err), -EBUSY);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_reload_replaces_module)
{
    struct loyd_buf err = {0};
    json_t *res = NULL;

    ck_assert_int_eq(load_src(sb, "rules/v.lua", "return { h = function() return 1 end }", &err),
                     0);
    /* A failed reload keeps the old version. */
    ck_assert_int_eq(load_src(sb, "rules/v.lua", "error('broken')", &err), LOYD_ERULE);
    ck_assert_int_eq(call(sb, "rules/v.lua", "h", NULL, &res, &err), 0);
    assert_json_eq(res, "1");
    json_decref(res);
    ck_assert_int_eq(load_src(sb, "rules/v.lua", "return { h = function() return 2 end }", &err),
                     0);
    ck_assert_int_eq(call(sb, "rules/v.lua", "h", NULL, &res, &err), 0);
    assert_json_eq(res, "2");
    json_decref(res);
    loyd_buf_free(&err);
}
END_TEST

START_TEST(test_create_limits)
{
    struct loyd_sandbox *s = NULL;
    struct loyd_sandbox_limits tiny = {.memory_bytes = 1024};

    ck_assert_int_eq(loyd_sandbox_create("tiny", &tiny, &s), -EINVAL);
    ck_assert_ptr_null(s);
    ck_assert_int_eq(loyd_sandbox_create("defaults", NULL, &s), 0);
    ck_assert_uint_gt(loyd_sandbox_memory(s), 0);
    ck_assert_str_eq(loyd_sandbox_name(s), "defaults");
    int x;
    loyd_sandbox_set_userdata(s, &x);
    ck_assert_ptr_eq(loyd_sandbox_userdata(s), &x);
    loyd_sandbox_destroy(s);
    loyd_sandbox_destroy(NULL);
}
END_TEST

/* A shared argument is built once for every call until it is forgotten; others every time. */
START_TEST(test_shared_args)
{
    struct loyd_buf err = {0};
    ck_assert_int_eq(load_src(sb, "rules/share.lua",
                              "local last\n"
                              "return { same = function(a, b)\n"
                              "  local r = { shared = last ~= nil and a == last, value = a.x }\n"
                              "  last = a\n"
                              "  return r\n"
                              "end }\n",
                              &err),
                     0);
    json_t *v = json_pack("{s:i}", "x", 7), *res = NULL;
    json_t *argv[1] = {v};
    struct loyd_sandbox_call c = {.module = "rules/share.lua", .handler = "same", .args = argv,
                                  .nargs = 1, .now_ms = NOW_MS, .shared_args = 1u};
    bool want[] = {false, true, true, false, false};
    for (int i = 0; i < 5; i++) {
        if (i == 3)
            loyd_sandbox_forget_shared(sb, v); /* the next call builds it again */
        if (i == 4)
            c.shared_args = 0;
        ck_assert_int_eq(loyd_sandbox_call(sb, &c, &res, NULL, &err), 0);
        ck_assert_msg(json_is_true(json_object_get(res, "shared")) == want[i], "call %d", i);
        ck_assert_int_eq(json_integer_value(json_object_get(res, "value")), 7);
        json_decref(res);
    }
    json_decref(v);
    loyd_buf_free(&err);
}
END_TEST

Suite *sandbox_suite(void)
{
    Suite *s = suite_create("sandbox");
    TCase *tc;

    tc = tcase_create("removed");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_removed_io);
    tcase_add_test(tc, test_shared_args);
    tcase_add_test(tc, test_removed_os);
    tcase_add_test(tc, test_removed_package);
    tcase_add_test(tc, test_removed_require);
    tcase_add_test(tc, test_removed_debug);
    tcase_add_test(tc, test_removed_dofile);
    tcase_add_test(tc, test_removed_loadfile);
    tcase_add_test(tc, test_removed_load);
    tcase_add_test(tc, test_removed_loadstring);
    tcase_add_test(tc, test_removed_collectgarbage);
    tcase_add_test(tc, test_removed_rawset);
    tcase_add_test(tc, test_removed_rawget);
    tcase_add_test(tc, test_removed_coroutine);
    tcase_add_test(tc, test_removed_randomseed);
    tcase_add_test(tc, test_removed_string_dump);
    tcase_add_test(tc, test_print_goes_to_log);
    tcase_add_test(tc, test_log_line_capped);
    tcase_add_test(tc, test_gc_metamethod_refused);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_memory_bomb);
    tcase_add_test(tc, test_memory_bomb_at_load);
    tcase_add_test(tc, test_string_rep_bomb);
    tcase_add_test(tc, test_table_move_spin);
    tcase_add_test(tc, test_infinite_loop);
    tcase_add_test(tc, test_infinite_loop_in_pcall);
    tcase_add_test(tc, test_pcall_retry_loop);
    tcase_add_test(tc, test_tail_pcall_returns_after_kill);
    tcase_add_test(tc, test_xpcall_handler_loop);
    tcase_add_test(tc, test_xpcall_still_works);
    tcase_add_test(tc, test_infinite_loop_at_load);
    tcase_add_test(tc, test_wall_clock_budget);
    tcase_add_test(tc, test_deep_recursion);
    tcase_add_test(tc, test_usable_after_kill);
    suite_add_tcase(s, tc);

    tc = tcase_create("patterns");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_pattern_find_bomb);
    tcase_add_test(tc, test_pattern_method_bomb);
    tcase_add_test(tc, test_pattern_gsub_gmatch_bombs);
    tcase_add_test(tc, test_pattern_bomb_in_pcall);
    tcase_add_test(tc, test_pattern_quadratic_bombs);
    tcase_add_test(tc, test_pattern_bomb_same_error);
    tcase_add_test(tc, test_pattern_bomb_wall_clock);
    tcase_add_test(tc, test_pattern_semantics_match_stock_lua);
    tcase_add_test(tc, test_pattern_bomb_pack);
    suite_add_tcase(s, tc);

    tc = tcase_create("load");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_bytecode_rejected);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_handler_runtime_error);
    tcase_add_test(tc, test_handlers_listed);
    tcase_add_test(tc, test_cashback_rule);
    tcase_add_test(tc, test_prelude_and_define);
    tcase_add_test(tc, test_reload_replaces_module);
    tcase_add_test(tc, test_create_limits);
    suite_add_tcase(s, tc);

    tc = tcase_create("frozen");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_global_write_refused);
    tcase_add_test(tc, test_library_tables_read_only);
    tcase_add_test(tc, test_string_metatable_hidden);
    tcase_add_test(tc, test_rawequal_rawlen_harmless);
    tcase_add_test(tc, test_tenant_isolation);
    tcase_add_test(tc, test_inputs_read_only);
    suite_add_tcase(s, tc);

    tc = tcase_create("json");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_json_null_and_empty_arrays);
    tcase_add_test(tc, test_json_int64_extremes);
    tcase_add_test(tc, test_json_integers_only);
    tcase_add_test(tc, test_json_unconvertible_values);
    tcase_add_test(tc, test_json_depth_limits);
    tcase_add_test(tc, test_json_encode_decode);
    suite_add_tcase(s, tc);

    tc = tcase_create("determinism");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_random_deterministic);
    tcase_add_test(tc, test_frozen_clock);
    tcase_add_test(tc, test_date_helpers);
    tcase_add_test(tc, test_weekday);
    tcase_add_test(tc, test_sorted_keys);
    suite_add_tcase(s, tc);
    return s;
}
