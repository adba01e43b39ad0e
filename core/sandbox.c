/* SPDX-License-Identifier: MIT */
/*
 * The rule sandbox (see sandbox.h).  A struct loyd_sandbox owns its lua_State, the counting
 * allocator's budget (the allocator's ud is the sandbox itself, so every C function reaches it
 * with lua_getallocf), the count hook's CPU budget, the module table (registry, &modules_key),
 * the frozen environment proxy (registry, &env_key) and the per-call context: frozen clock,
 * xoshiro256** state, trace log.
 *
 * Every use of the Lua API that may allocate runs inside lua_pcall (run_protected); outside it
 * only non-allocating calls are made, so the panic handler (log + abort) is never reached.
 */
#include "civil_date.h"
#include "sandbox.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "log.h"
#include "lua_pattern.h"
#include "luajson.h"

#define LOYD_LUA_HOOK_EVERY 1000
/* Extra bytes the message handler may use beyond the cap, so a traceback can be built for a
 * rule that filled its memory. */
#define MEM_HEADROOM (64u * 1024)
#define MAX_ARGS 16
#define MAX_MODULE_NAME 200

static char modules_key;
static char env_key;
static char shared_key; /* registry: json_t pointer -> its read-only Lua value */

enum kill_reason { KILL_NONE, KILL_INSTRUCTIONS, KILL_WALL };

struct budget {
    size_t used;  /* bytes held by the state */
    size_t limit; /* current ceiling: cap, or cap + MEM_HEADROOM while handling an error */
    size_t cap;
    uint64_t deadline_ns;
    uint64_t ticks, max_ticks; /* one tick = LOYD_LUA_HOOK_EVERY instructions */
    uint64_t pattern_steps;    /* pattern-matching steps not yet counted as a tick */
    enum kill_reason killed;
};

struct loyd_sandbox {
    struct budget b; /* first member: the allocator's ud is the sandbox */
    lua_State *L;
    char *name;
    struct loyd_sandbox_limits lim;
    bool frozen;
    void *userdata;
    /* Per-call context, valid while in_call. */
    bool in_call;
    uint64_t now_ms;
    int tz_offset_min;
    uint64_t rng[4];
    json_t *log; /* owned; handed to the caller after the call */
    bool log_truncated;
};

struct loyd_sandbox *loyd_sandbox_from_lua(lua_State *L)
{
    void *ud = NULL;

    lua_getallocf(L, &ud);
    LOYD_REQUIRE(ud != NULL); /* every state here is made by loyd_sandbox_create */
    return ud;
}

/* ---- memory and CPU budget --------------------------------------------------------------- */

static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct budget *b = ud;
    size_t old = ptr != NULL ? osize : 0; /* ptr == NULL: osize is a type tag */

    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    /* used can sit above limit after an error handler used the headroom: refuse growth. */
    if (nsize > old && (b->used > b->limit || nsize - old > b->limit - b->used))
        return NULL; /* Lua collects garbage, retries, then raises LUA_ERRMEM */
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        b->used = b->used - old + nsize;
    return p;
}

static void sandbox_hook(lua_State *L, lua_Debug *ar);

/* Adds @p ticks to the CPU budget; raises once it is spent, and on every use after that. */
static void budget_spend(lua_State *L, uint64_t ticks)
{
    struct loyd_sandbox *sb = loyd_sandbox_from_lua(L);
    struct budget *b = &sb->b;

    if (b->killed == KILL_NONE) {
        b->ticks += ticks;
        if (b->ticks < b->max_ticks && uv_hrtime() < b->deadline_ns)
            return;
        b->killed = b->ticks >= b->max_ticks ? KILL_INSTRUCTIONS : KILL_WALL;
        /* From now on every instruction raises, so a rule's pcall cannot swallow the kill
         * (Redis does the same). */
        lua_sethook(L, sandbox_hook, LUA_MASKCOUNT, 1);
    }
    luaL_error(L, "rule exceeded its CPU budget (%s)",
               b->killed == KILL_INSTRUCTIONS ? "instructions" : "wall clock");
}

static void sandbox_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    budget_spend(L, 1);
}

/*
 * The pattern matcher's meter (lua_pattern.c): a match runs in C where the hook never fires,
 * so it reports its steps here and they count as instructions.  Raising from inside the match
 * sets the same sticky kill as the hook, so the rule's pcall cannot swallow it either.
 */
static void pattern_charge(lua_State *L, uint64_t steps)
{
    struct budget *b = &loyd_sandbox_from_lua(L)->b;

    b->pattern_steps += steps;
    uint64_t ticks = b->pattern_steps / LOYD_LUA_HOOK_EVERY;
    b->pattern_steps %= LOYD_LUA_HOOK_EVERY;
    if (ticks != 0 || b->killed != KILL_NONE)
        budget_spend(L, ticks);
}

static const struct loyd_pattern_meter pattern_meter = {.charge = pattern_charge};

static void budget_start(struct loyd_sandbox *sb)
{
    struct budget *b = &sb->b;

    b->killed = KILL_NONE;
    b->ticks = 0;
    b->pattern_steps = 0;
    b->max_ticks = (sb->lim.instructions + LOYD_LUA_HOOK_EVERY - 1) / LOYD_LUA_HOOK_EVERY;
    b->deadline_ns = uv_hrtime() + sb->lim.wall_ms * 1000000u;
    b->limit = b->cap;
    lua_sethook(sb->L, sandbox_hook, LUA_MASKCOUNT, LOYD_LUA_HOOK_EVERY);
}

static void budget_stop(struct loyd_sandbox *sb)
{
    lua_sethook(sb->L, NULL, 0, 0);
    sb->b.limit = sb->b.cap;
}

static int l_panic(lua_State *L)
{
    const char *m = lua_tostring(L, -1);

    loyd_log_err(LUA, "unprotected Lua error: %s", m != NULL ? m : "(not a string)");
    abort();
}

/* Message handler: traceback, built with the headroom above the cap (modelled on lua.c). */
static int l_msgh(lua_State *L)
{
    struct loyd_sandbox *sb = loyd_sandbox_from_lua(L);
    const char *msg = lua_tostring(L, 1);

    sb->b.limit = sb->b.cap + MEM_HEADROOM;
    /* Never call __tostring here: that would run rule code inside the error handler. */
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/*
 * Runs fn(ud) in protected mode with the traceback handler, under a fresh budget.  On return
 * the nres results sit above *base; the caller must lua_settop(L, *base).
 * @return 0, LOYD_EBUDGET, LOYD_ERULEMEM or LOYD_ERULE (message appended to err).
 */
static int run_protected(struct loyd_sandbox *sb, lua_CFunction fn, void *ud, int nres, int *base,
                         struct loyd_buf *err)
{
    lua_State *L = sb->L;
    int rc = 0;

    *base = lua_gettop(L);
    LOYD_REQUIRE(lua_checkstack(L, 3)); /* the stack is kept near-empty between calls */
    lua_pushcfunction(L, l_msgh);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    budget_start(sb);
    int st = lua_pcall(L, 1, nres, *base + 1);
    budget_stop(sb);
    /* Whatever the status: a rule that pcall'ed the kill and returned still failed. */
    if (sb->b.killed != KILL_NONE)
        rc = LOYD_EBUDGET;
    else if (st == LUA_ERRMEM)
        rc = LOYD_ERULEMEM;
    else if (st != LUA_OK)
        rc = LOYD_ERULE;
    if (st != LUA_OK) {
        if (err != NULL) {
            const char *m = lua_tostring(L, -1);
            loyd_buf_puts(err, m != NULL ? m : "(error object is not a string)");
            if (rc == LOYD_EBUDGET && strstr(err->data, "CPU budget") == NULL)
                loyd_buf_printf(err, " (killed: CPU budget, %s)",
                                sb->b.killed == KILL_INSTRUCTIONS ? "instructions" : "wall clock");
        }
        lua_settop(L, *base);
    } else {
        lua_remove(L, *base + 1); /* the message handler */
        if (rc != 0 && err != NULL)
            loyd_buf_printf(err, "rule exceeded its CPU budget (%s)",
                            sb->b.killed == KILL_INSTRUCTIONS ? "instructions" : "wall clock");
    }
    if (rc != 0) {
        lua_settop(L, *base);
        /* Give the next call the memory a killed call left behind. */
        lua_gc(L, LUA_GCCOLLECT);
    }
    return rc;
}

/* ---- what rules get instead of the removed functions ------------------------------------- */

/* print and loyd.log: one line into the call's trace log (capped), debug log outside calls. */
static int log_line(lua_State *L, const char *sep)
{
    struct loyd_sandbox *sb = loyd_sandbox_from_lua(L);
    int n = lua_gettop(L);
    luaL_Buffer lb;

    luaL_buffinit(L, &lb);
    for (int i = 1; i <= n && luaL_bufflen(&lb) < LOYD_SANDBOX_LOG_LINE_MAX; i++) {
        size_t room = LOYD_SANDBOX_LOG_LINE_MAX - luaL_bufflen(&lb), len;
        if (i > 1) {
            size_t sl = strlen(sep) < room ? strlen(sep) : room;
            luaL_addlstring(&lb, sep, sl);
            room -= sl;
        }
        /* luaL_tolstring may run a __tostring metamethod: rule code, under the hook. */
        const char *s = luaL_tolstring(L, i, &len);
        if (len > room) {
            lua_pushlstring(L, s, room);
            lua_remove(L, -2);
        }
        luaL_addvalue(&lb);
    }
    luaL_pushresult(&lb);
    size_t len;
    const char *line = lua_tolstring(L, -1, &len);
    if (!sb->in_call) {
        loyd_log_debug(LUA, "sandbox %s: %.*s", sb->name, (int)(len > 200 ? 200 : len), line);
        return 0;
    }
    if (sb->log == NULL)
        return 0;
    if (json_array_size(sb->log) >= LOYD_SANDBOX_LOG_LINES) {
        if (!sb->log_truncated)
            json_array_append_new(sb->log, json_string("(log truncated)"));
        sb->log_truncated = true;
        return 0;
    }
    json_t *j = json_stringn(line, len);
    if (j == NULL) {
        /* Not UTF-8 (or cut inside a character): keep the line readable, mark the bytes. */
        char *copy = loyd_xstrndup(line, len);
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)copy[i] >= 0x80 || copy[i] == '\0')
                copy[i] = '?';
        j = json_stringn(copy, len);
        free(copy);
    }
    if (j != NULL)
        json_array_append_new(sb->log, j);
    return 0;
}

static int l_print(lua_State *L)
{
    return log_line(L, "\t");
}

static int l_log(lua_State *L)
{
    return log_line(L, " ");
}

/* setmetatable without __gc: a finalizer would run rule code at an arbitrary later point,
 * outside any call's budget.  Otherwise the same as the base library's. */
static int l_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);

    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods are not allowed in rules");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

/*
 * xpcall runs its message handler before unwinding; when the error came from the count hook,
 * Lua has hooks disabled at that point (allowhook is cleared while a hook runs and only
 * restored by the unwinding pcall), so a looping handler would run unbudgeted.  This xpcall
 * calls the handler after unwinding instead.  Without the debug library a handler cannot
 * inspect the failing stack, so rules see no other difference.
 */
static int l_xpcall(lua_State *L)
{
    int n = lua_gettop(L);

    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_checkstack(L, n + 2, "xpcall arguments");
    lua_pushvalue(L, 1);
    for (int i = 3; i <= n; i++)
        lua_pushvalue(L, i);
    int st = lua_pcall(L, n - 2, LUA_MULTRET, 0);
    if (st == LUA_OK) {
        lua_pushboolean(L, 1);
        lua_insert(L, n + 1);
        return lua_gettop(L) - n;
    }
    if (st != LUA_ERRMEM) { /* like Lua: no handler for memory errors */
        lua_pushvalue(L, 2);
        lua_insert(L, -2);
        lua_call(L, 1, 1);
    }
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

/* string.rep loops in C without hooks: refuse big results, and the empty-string case that
 * would spin n times producing nothing. */
static int l_string_rep(lua_State *L)
{
    size_t l, lsep = 0;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);

    if (n <= 0 || l + lsep == 0 || (n == 1 && l == 0)) {
        lua_pushliteral(L, "");
        return 1;
    }
    if ((lua_Unsigned)n > LOYD_SANDBOX_MAX_REP ||
        (size_t)n * l + (size_t)(n - 1) * lsep > LOYD_SANDBOX_MAX_REP)
        return luaL_error(L, "string.rep result larger than %d bytes", (int)LOYD_SANDBOX_MAX_REP);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* table.move loops in C without hooks; moving nils allocates nothing, so only a count cap
 * bounds it. */
static int l_table_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);

    if (e >= f && (lua_Unsigned)e - (lua_Unsigned)f >= LOYD_SANDBOX_MAX_MOVE)
        return luaL_error(L, "table.move of more than %d elements", (int)LOYD_SANDBOX_MAX_MOVE);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* xoshiro256** seeded through splitmix64: the same seed gives the same sequence. */
static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static void rng_seed(uint64_t s[4], uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        s[i] = z ^ (z >> 31);
    }
}

static struct loyd_sandbox *in_call_or_raise(lua_State *L, const char *what)
{
    struct loyd_sandbox *sb = loyd_sandbox_from_lua(L);

    if (!sb->in_call)
        luaL_error(L, "%s is only available inside a handler call", what);
    return sb;
}

/* Same contract as Lua 5.4's math.random, on the per-call generator. */
static int l_math_random(lua_State *L)
{
    struct loyd_sandbox *sb = in_call_or_raise(L, "math.random");
    uint64_t rv = rng_next(sb->rng);
    lua_Integer low, up;

    switch (lua_gettop(L)) {
    case 0:
        lua_pushnumber(L, (lua_Number)(rv >> 11) * 0x1.0p-53);
        return 1;
    case 1:
        low = 1;
        up = luaL_checkinteger(L, 1);
        if (up == 0) {
            lua_pushinteger(L, (lua_Integer)rv);
            return 1;
        }
        break;
    case 2:
        low = luaL_checkinteger(L, 1);
        up = luaL_checkinteger(L, 2);
        break;
    default:
        return luaL_error(L, "wrong number of arguments");
    }
    luaL_argcheck(L, low <= up, 1, "interval is empty");
    /* Project into [0, up - low] without bias: mask to the next power of two and retry. */
    uint64_t n = (uint64_t)up - (uint64_t)low, lim = n;
    lim |= lim >> 1;
    lim |= lim >> 2;
    lim |= lim >> 4;
    lim |= lim >> 8;
    lim |= lim >> 16;
    lim |= lim >> 32;
    while ((rv &= lim) > n)
        rv = rng_next(sb->rng);
    lua_pushinteger(L, (lua_Integer)(rv + (uint64_t)low));
    return 1;
}

/* ---- the loyd table: clock and dates --------------------------------------------------- */

static int64_t check_date(lua_State *L, int arg)
{
    size_t len;
    const char *s = luaL_checklstring(L, arg, &len);
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned v[3] = {0, 0, 0};
    bool ok = len == 10 && s[4] == '-' && s[7] == '-';

    for (size_t i = 0; ok && i < 10; i++) {
        if (i == 4 || i == 7)
            continue;
        ok = s[i] >= '0' && s[i] <= '9';
        v[i < 4 ? 0 : i < 7 ? 1 : 2] = v[i < 4 ? 0 : i < 7 ? 1 : 2] * 10 + (unsigned)(s[i] - '0');
    }
    ok = ok && v[1] >= 1 && v[1] <= 12 && v[2] >= 1 && v[2] <= mdays[v[1] - 1];
    if (ok && v[1] == 2 && v[2] == 29)
        ok = (v[0] % 4 == 0 && v[0] % 100 != 0) || v[0] % 400 == 0;
    if (!ok)
        luaL_argerror(L, arg, "date must be a valid YYYY-MM-DD");
    return loyd_days_from_civil(v[0], v[1], v[2]);
}

static int push_date(lua_State *L, int64_t days)
{
    int64_t y;
    unsigned m, d;

    /* 0000-01-01 .. 9999-12-31 keeps the format fixed-width. */
    if (days < -719528 || days > 2932896)
        return luaL_error(L, "date out of range (years 0000..9999)");
    loyd_civil_from_days(days, &y, &m, &d);
    char buf[32];
    snprintf(buf, sizeof(buf), "%04d-%02u-%02u", (int)y, m, d);
    lua_pushstring(L, buf);
    return 1;
}

static int l_now(lua_State *L)
{
    struct loyd_sandbox *sb = in_call_or_raise(L, "loyd.now()");
    lua_pushinteger(L, (lua_Integer)sb->now_ms);
    return 1;
}

static int l_today(lua_State *L)
{
    struct loyd_sandbox *sb = in_call_or_raise(L, "loyd.today()");
    lua_Integer tz = luaL_optinteger(L, 1, sb->tz_offset_min);

    luaL_argcheck(L, tz >= -1440 && tz <= 1440, 1, "tz offset must be -1440..1440 minutes");
    int64_t ms = (int64_t)sb->now_ms + tz * 60000;
    int64_t days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
    return push_date(L, days);
}

static int l_date_add_days(lua_State *L)
{
    int64_t d = check_date(L, 1);
    lua_Integer n = luaL_checkinteger(L, 2);

    luaL_argcheck(L, n >= -4000000 && n <= 4000000, 2, "day count out of range");
    return push_date(L, d + n);
}

static int l_days_between(lua_State *L)
{
    int64_t a = check_date(L, 1), b = check_date(L, 2);
    lua_pushinteger(L, (lua_Integer)(b - a));
    return 1;
}

/* ISO weekday, Monday 1 .. Sunday 7, of a date (default: today in the tenant's calendar). */
static int l_weekday(lua_State *L)
{
    int64_t days;

    if (lua_isnoneornil(L, 1)) {
        struct loyd_sandbox *sb = in_call_or_raise(L, "loyd.weekday()");
        int64_t ms = (int64_t)sb->now_ms + (int64_t)sb->tz_offset_min * 60000;
        days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
    } else {
        days = check_date(L, 1);
    }
    /* Day 0, 1970-01-01, was a Thursday (4). */
    int64_t r = (days + 3) % 7;
    lua_pushinteger(L, (lua_Integer)(r < 0 ? r + 7 : r) + 1);
    return 1;
}

static int l_array(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    loyd_luajson_mark_array(L, 1);
    lua_settop(L, 1);
    return 1;
}

static int l_is_array(lua_State *L)
{
    lua_pushboolean(L, loyd_luajson_is_array(L, 1));
    return 1;
}

static int l_push_string_tramp(lua_State *L)
{
    lua_pushstring(L, lua_touserdata(L, 1));
    return 1;
}

static int l_json_encode(lua_State *L)
{
    struct loyd_buf e = {0};
    json_t *j = NULL;

    luaL_checkany(L, 1);
    int rc = loyd_luajson_to_json(L, 1, 0, "$", &j, &e);
    if (rc != 0) {
        lua_pushfstring(L, "json_encode: %s", e.data != NULL ? e.data : loyd_strerror(rc));
        loyd_buf_free(&e);
        return lua_error(L);
    }
    loyd_buf_free(&e);
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    json_decref(j);
    if (s == NULL)
        return luaL_error(L, "json_encode: out of memory");
    /* Push in a nested protected call so an out-of-memory error cannot leak s. */
    lua_pushcfunction(L, l_push_string_tramp);
    lua_pushlightuserdata(L, s);
    int st = lua_pcall(L, 1, 1, 0);
    free(s);
    if (st != LUA_OK)
        return lua_error(L);
    return 1;
}

static int l_push_json_tramp(lua_State *L)
{
    loyd_luajson_push(L, lua_touserdata(L, 1), 0, "$");
    return 1;
}

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    json_error_t jerr;

    if (len > LOYD_SANDBOX_MAX_SOURCE)
        return luaL_error(L, "json_decode: input larger than %d bytes",
                          (int)LOYD_SANDBOX_MAX_SOURCE);
    json_t *j = json_loadb(s, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (j == NULL)
        return luaL_error(L, "json_decode: %s at line %d column %d", jerr.text, jerr.line,
                          jerr.column);
    lua_pushcfunction(L, l_push_json_tramp);
    lua_pushlightuserdata(L, j);
    int st = lua_pcall(L, 1, 1, 0);
    json_decref(j);
    if (st != LUA_OK)
        return lua_error(L);
    return 1;
}

/* ---- setup, freeze ------------------------------------------------------------------------ */

static void set_nil(lua_State *L, int t, const char *field)
{
    t = lua_absindex(L, t);
    lua_pushnil(L);
    lua_setfield(L, t, field);
}

static void wrap(lua_State *L, int t, const char *field, lua_CFunction fn)
{
    t = lua_absindex(L, t);
    lua_getfield(L, t, field);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, t, field);
}

/*
 * Built-in helpers written in Lua, run at setup with the restricted globals.  loyd.keys exists
 * because Lua 5.4 seeds its string hash per state: pairs() order differs between sandboxes
 * and runs, so a rule that builds output in pairs order would not reproduce.
 */
static const char builtin_lua[] =
    "local sort, type, pairs, array = table.sort, type, pairs, loyd.array\n"
    "local function before(a, b)\n"
    "  local ta, tb = type(a), type(b)\n"
    "  if ta ~= tb then return ta < tb end\n"
    "  if ta ~= 'string' and ta ~= 'number' then\n"
    "    error('loyd.keys: keys must be strings or numbers, got ' .. ta, 3)\n"
    "  end\n"
    "  return a < b\n"
    "end\n"
    "function loyd.keys(t)\n"
    "  local ks, n = {}, 0\n"
    "  for k in pairs(t) do n = n + 1; ks[n] = k end\n"
    "  sort(ks, before)\n"
    "  return array(ks)\n"
    "end\n";

static int l_setup(lua_State *L)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},        {LUA_TABLIBNAME, luaopen_table},
        {LUA_STRLIBNAME, luaopen_string}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},
    };
    static const luaL_Reg loyd_fns[] = {
        {"log", l_log},
        {"now", l_now},
        {"today", l_today},
        {"date_add_days", l_date_add_days},
        {"days_between", l_days_between},
        {"weekday", l_weekday},
        {"array", l_array},
        {"is_array", l_is_array},
        {"json_encode", l_json_encode},
        {"json_decode", l_json_decode},
        {NULL, NULL},
    };
    static const char *const removed[] = {"dofile",         "loadfile", "load",    "loadstring",
                                          "collectgarbage", "rawset",   "rawget",  "require",
                                          "warn",           "module",   "setfenv", "getfenv"};

    for (size_t i = 0; i < LOYD_ARRAY_SIZE(libs); i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);
        lua_pop(L, 1);
    }
    loyd_luajson_openlib(L);

    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(removed); i++)
        set_nil(L, g, removed[i]);
    lua_pushcfunction(L, l_print);
    lua_setfield(L, g, "print");
    lua_pushcfunction(L, loyd_luajson_next);
    lua_setfield(L, g, "next");
    lua_pushcfunction(L, l_setmetatable);
    lua_setfield(L, g, "setmetatable");
    lua_pushcfunction(L, l_xpcall);
    lua_setfield(L, g, "xpcall");

    /* Library tables are changed in place: the string metatable's __index is the real string
     * table, so ("").dump must be gone from it, not only from the proxy. */
    lua_getfield(L, g, LUA_STRLIBNAME);
    set_nil(L, -1, "dump");
    wrap(L, lua_gettop(L), "rep", l_string_rep);
    loyd_pattern_install(L, -1, &pattern_meter); /* find, match, gmatch, gsub */
    lua_pop(L, 1);
    lua_getfield(L, g, LUA_TABLIBNAME);
    wrap(L, lua_gettop(L), "move", l_table_move);
    lua_pop(L, 1);
    lua_getfield(L, g, LUA_MATHLIBNAME);
    set_nil(L, -1, "randomseed");
    lua_pushcfunction(L, l_math_random);
    lua_setfield(L, -2, "random");
    lua_pop(L, 1);

    /* getmetatable("") must not hand out the string metatable (and its __index). */
    lua_pushliteral(L, "");
    LOYD_REQUIRE(lua_getmetatable(L, -1)); /* the string library installed it */
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    luaL_newlib(L, loyd_fns);
    loyd_luajson_push_null(L);
    lua_setfield(L, -2, "null");
    loyd_luajson_push_null(L);
    lua_setfield(L, -2, "json_null");
    lua_setfield(L, g, "loyd");
    if (luaL_loadbufferx(L, builtin_lua, sizeof(builtin_lua) - 1, "=loyd/builtin", "t") != 0)
        return lua_error(L);
    lua_call(L, 0, 0);

    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &modules_key);
    lua_pop(L, 1);
    return 0;
}

/*
 * Pushes the frozen form of the value at idx: tables become read-only proxies over a copy
 * whose table values are frozen too (a proxy over the original would hand out the original's
 * writable sub-tables).  seen (absolute index) maps originals to proxies, for shared tables
 * and cycles such as _G._G.
 */
static void freeze_value(lua_State *L, int idx, int seen, int depth, bool global)
{
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 8, "freezing globals");
    if (lua_type(L, idx) != LUA_TTABLE || loyd_luajson_unproxy(L, idx)) {
        if (lua_type(L, idx) == LUA_TTABLE)
            lua_pop(L, 1); /* the table behind an existing proxy: keep the proxy */
        lua_pushvalue(L, idx);
        return;
    }
    lua_pushvalue(L, idx);
    if (lua_rawget(L, seen) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    if (depth > LOYD_LUAJSON_MAX_DEPTH)
        luaL_error(L, "global tables nested deeper than %d levels", LOYD_LUAJSON_MAX_DEPTH);
    lua_newtable(L);
    int copy = lua_gettop(L);
    loyd_luajson_push_proxy(L, copy, global);
    int proxy = lua_gettop(L);
    lua_pushvalue(L, idx);
    lua_pushvalue(L, proxy);
    lua_rawset(L, seen);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        freeze_value(L, -1, seen, depth + 1, false);
        lua_pushvalue(L, -3); /* key */
        lua_insert(L, -2);    /* key, frozen value */
        lua_rawset(L, copy);
        lua_pop(L, 1); /* the original value */
    }
    lua_remove(L, copy);
}

static int l_freeze(lua_State *L)
{
    lua_newtable(L);
    int seen = lua_gettop(L);
    lua_pushglobaltable(L);
    freeze_value(L, -1, seen, 0, true);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &env_key);
    return 0;
}

int loyd_sandbox_create(const char *name, const struct loyd_sandbox_limits *lim,
                        struct loyd_sandbox **out)
{
    struct loyd_sandbox *sb = loyd_xcalloc(1, sizeof(*sb));
    int rc, base;

    *out = NULL;
    sb->name = loyd_xstrdup(name != NULL ? name : "sandbox");
    if (lim != NULL)
        sb->lim = *lim;
    if (sb->lim.memory_bytes == 0)
        sb->lim.memory_bytes = LOYD_SANDBOX_DEFAULT_MEMORY;
    if (sb->lim.instructions == 0)
        sb->lim.instructions = LOYD_SANDBOX_DEFAULT_INSTRUCTIONS;
    if (sb->lim.wall_ms == 0)
        sb->lim.wall_ms = LOYD_SANDBOX_DEFAULT_WALL_MS;
    if (sb->lim.memory_bytes < LOYD_SANDBOX_MIN_MEMORY || sb->lim.wall_ms > 3600000u) {
        rc = -EINVAL;
        goto fail;
    }
    sb->b.cap = sb->b.limit = sb->lim.memory_bytes;
    sb->L = lua_newstate(sandbox_alloc, sb);
    if (sb->L == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    lua_atpanic(sb->L, l_panic);
    struct loyd_buf err = {0};
    rc = run_protected(sb, l_setup, sb, 0, &base, &err);
    lua_settop(sb->L, base);
    if (rc != 0) {
        loyd_log_err(LUA, "sandbox %s: setup failed: %s", sb->name, err.data);
        loyd_buf_free(&err);
        rc = -ENOMEM;
        goto fail;
    }
    loyd_buf_free(&err);
    *out = sb;
    return 0;
fail:
    loyd_sandbox_destroy(sb);
    return rc;
}

void loyd_sandbox_forget_shared(struct loyd_sandbox *sb, const json_t *v)
{
    lua_State *L = sb->L;
    if (v == NULL) {
        lua_pushnil(L);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &shared_key);
        return;
    }
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &shared_key) == LUA_TTABLE) {
        lua_pushnil(L);
        lua_rawsetp(L, -2, v);
    }
    lua_pop(L, 1);
}

void loyd_sandbox_destroy(struct loyd_sandbox *sb)
{
    if (sb == NULL)
        return;
    if (sb->L != NULL)
        lua_close(sb->L);
    json_decref(sb->log);
    free(sb->name);
    free(sb);
}

size_t loyd_sandbox_memory(const struct loyd_sandbox *sb)
{
    return sb->b.used;
}

const char *loyd_sandbox_name(const struct loyd_sandbox *sb)
{
    return sb->name;
}

void loyd_sandbox_set_userdata(struct loyd_sandbox *sb, void *ud)
{
    sb->userdata = ud;
}

void *loyd_sandbox_userdata(const struct loyd_sandbox *sb)
{
    return sb->userdata;
}

bool loyd_sandbox_clock(const struct loyd_sandbox *sb, uint64_t *now_ms, int *tz_offset_min)
{
    if (!sb->in_call)
        return false;
    if (now_ms != NULL)
        *now_ms = sb->now_ms;
    if (tz_offset_min != NULL)
        *tz_offset_min = sb->tz_offset_min;
    return true;
}

int loyd_sandbox_freeze(struct loyd_sandbox *sb, struct loyd_buf *err)
{
    int base;

    if (sb->frozen)
        return 0;
    int rc = run_protected(sb, l_freeze, sb, 0, &base, err);
    lua_settop(sb->L, base);
    if (rc == 0)
        sb->frozen = true;
    return rc;
}

/* ---- define, prelude, load --------------------------------------------------------------- */

struct define_args {
    const char *name;
    lua_CFunction fn;
};

static int l_define(lua_State *L)
{
    struct define_args *a = lua_touserdata(L, 1);

    lua_getglobal(L, "loyd");
    lua_pushcfunction(L, a->fn);
    lua_setfield(L, -2, a->name);
    return 0;
}

static bool valid_ident(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 64 || (*s >= '0' && *s <= '9'))
        return false;
    for (; *s != '\0'; s++)
        if (!(*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9')))
            return false;
    return true;
}

int loyd_sandbox_define(struct loyd_sandbox *sb, const char *name, lua_CFunction fn)
{
    struct define_args a = {.name = name, .fn = fn};
    int base;

    if (!valid_ident(name) || fn == NULL)
        return -EINVAL;
    if (sb->frozen)
        return -EBUSY;
    int rc = run_protected(sb, l_define, &a, 0, &base, NULL);
    lua_settop(sb->L, base);
    return rc;
}

struct load_args {
    struct loyd_sandbox *sb;
    const char *module; /* NULL for a prelude */
    const char *chunkname;
    const char *src;
    size_t len;
    bool parse_failed;
};

static int l_load_chunk(lua_State *L)
{
    struct load_args *a = lua_touserdata(L, 1);
    const char *chunkname = lua_pushfstring(L, "=%s", a->chunkname);

    if (luaL_loadbufferx(L, a->src, a->len, chunkname, "t") != LUA_OK) {
        /* A syntax error has no useful traceback: return the message instead of raising. */
        a->parse_failed = true;
        return 1;
    }
    if (a->module == NULL) {
        lua_call(L, 0, 0);
        return 0;
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, &env_key);
    LOYD_REQUIRE(lua_setupvalue(L, -2, 1) != NULL); /* a main chunk's only upvalue is _ENV */
    lua_call(L, 0, 1);
    if (lua_type(L, -1) != LUA_TTABLE)
        return luaL_error(L, "%s: must return a table of handlers (got %s)", a->chunkname,
                          luaL_typename(L, -1));
    lua_rawgetp(L, LUA_REGISTRYINDEX, &modules_key);
    lua_pushstring(L, a->module);
    lua_pushvalue(L, -3);
    lua_rawset(L, -3);
    lua_pop(L, 2);
    return 0;
}

static int load_common(struct loyd_sandbox *sb, struct load_args *a, struct loyd_buf *err)
{
    int base;

    if (a->len > LOYD_SANDBOX_MAX_SOURCE) {
        if (err != NULL)
            loyd_buf_printf(err, "%s: source is %zu bytes, limit %u", a->chunkname, a->len,
                            LOYD_SANDBOX_MAX_SOURCE);
        return LOYD_ELIMIT;
    }
    if (a->len > 0 && a->src[0] == LUA_SIGNATURE[0]) {
        if (err != NULL)
            loyd_buf_printf(err,
                            "%s: precompiled (binary) chunks are not allowed; load the "
                            "Lua source",
                            a->chunkname);
        return LOYD_EPARSE;
    }
    int rc = run_protected(sb, l_load_chunk, a, 1, &base, err);
    if (rc == 0 && a->parse_failed) {
        if (err != NULL)
            loyd_buf_puts(err, lua_tostring(sb->L, -1));
        rc = LOYD_EPARSE;
    }
    lua_settop(sb->L, base);
    return rc;
}

int loyd_sandbox_prelude(struct loyd_sandbox *sb, const char *chunkname, const char *lua_src,
                         size_t len, struct loyd_buf *err)
{
    struct load_args a = {.sb = sb, .chunkname = chunkname, .src = lua_src, .len = len};

    if (chunkname == NULL || lua_src == NULL)
        return -EINVAL;
    if (sb->frozen)
        return -EBUSY;
    return load_common(sb, &a, err);
}

static bool valid_module(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;

    if (n == 0 || n > MAX_MODULE_NAME)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

int loyd_sandbox_load(struct loyd_sandbox *sb, const char *module, const char *src, size_t len,
                      struct loyd_buf *err)
{
    struct load_args a = {.sb = sb, .module = module, .chunkname = module, .src = src, .len = len};
    int rc;

    if (!valid_module(module) || src == NULL) {
        if (err != NULL)
            loyd_buf_puts(err, "module name must be 1..200 printable ASCII characters");
        return -EINVAL;
    }
    if ((rc = loyd_sandbox_freeze(sb, err)) != 0)
        return rc;
    rc = load_common(sb, &a, err);
    if (rc != 0)
        loyd_log_info(LUA, "sandbox %s: load %s failed: %s", sb->name, module, loyd_strerror(rc));
    return rc;
}

/* ---- handlers, call ---------------------------------------------------------------------- */

struct handlers_args {
    const char *module;
    json_t *names; /* owned by the caller, so a Lua error cannot leak it */
    bool found;
};

static int cmp_json_str(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    return strcmp(json_string_value(x), json_string_value(y));
}

static int l_handlers(lua_State *L)
{
    struct handlers_args *a = lua_touserdata(L, 1);

    lua_rawgetp(L, LUA_REGISTRYINDEX, &modules_key);
    lua_pushstring(L, a->module);
    if (lua_rawget(L, -2) != LUA_TTABLE)
        return 0;
    a->found = true;
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TFUNCTION) {
            size_t len;
            const char *k = lua_tolstring(L, -2, &len);
            json_t *s = json_stringn(k, len);
            if (s != NULL) /* a name that is not UTF-8 cannot be called from JSON anyway */
                json_array_append_new(a->names, s);
        }
        lua_pop(L, 1);
    }
    return 0;
}

int loyd_sandbox_handlers(struct loyd_sandbox *sb, const char *module, json_t **names)
{
    struct handlers_args a = {.module = module, .names = json_array()};
    int base, rc;

    *names = NULL;
    if (a.names == NULL)
        return -ENOMEM;
    if (!valid_module(module)) {
        rc = -ENOENT;
        goto fail;
    }
    rc = run_protected(sb, l_handlers, &a, 0, &base, NULL);
    lua_settop(sb->L, base);
    if (rc != 0)
        goto fail;
    if (!a.found) {
        rc = -ENOENT;
        goto fail;
    }
    /* Sorted, so callers and logs see the same order whatever Lua's hash seed was. */
    size_t n = json_array_size(a.names);
    json_t **v = loyd_xcalloc(n ? n : 1, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(a.names, i));
    qsort(v, n, sizeof(*v), cmp_json_str);
    json_array_clear(a.names);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a.names, v[i]);
    free(v);
    *names = a.names;
    return 0;
fail:
    json_decref(a.names);
    return rc;
}

enum call_phase { PHASE_LOOKUP, PHASE_ARGS, PHASE_RUN };

struct call_args {
    const struct loyd_sandbox_call *c;
    enum call_phase phase;
    int missing; /* 1: no module, 2: no handler */
};

static int l_call(lua_State *L)
{
    struct call_args *a = lua_touserdata(L, 1);
    const struct loyd_sandbox_call *c = a->c;

    lua_rawgetp(L, LUA_REGISTRYINDEX, &modules_key);
    lua_pushstring(L, c->module);
    if (lua_rawget(L, -2) != LUA_TTABLE) {
        a->missing = 1;
        return 0;
    }
    lua_pushstring(L, c->handler);
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        a->missing = 2;
        return 0;
    }
    a->phase = PHASE_ARGS;
    luaL_checkstack(L, (int)c->nargs + 8, "handler arguments");
    for (size_t i = 0; i < c->nargs; i++) {
        char root[32];
        bool shared = (c->shared_args >> i) & 1u;
        if (shared) {
            /* Built by an earlier call on the same value: read-only, so it can be shared. */
            if (lua_rawgetp(L, LUA_REGISTRYINDEX, &shared_key) != LUA_TTABLE) {
                lua_pop(L, 1);
                lua_createtable(L, 0, 4);
                lua_pushvalue(L, -1);
                lua_rawsetp(L, LUA_REGISTRYINDEX, &shared_key);
            }
            if (lua_rawgetp(L, -1, c->args[i]) != LUA_TNIL) {
                lua_remove(L, -2);
                continue;
            }
            lua_pop(L, 1);
        }
        snprintf(root, sizeof(root), "arg%zu", i + 1);
        loyd_luajson_push(L, c->args[i], c->arg_flags | LOYD_LUAJSON_READONLY, root);
        if (shared) {
            lua_pushvalue(L, -1);
            lua_rawsetp(L, -3, c->args[i]);
            lua_remove(L, -2);
        }
    }
    a->phase = PHASE_RUN;
    lua_call(L, (int)c->nargs, 1);
    return 1;
}

int loyd_sandbox_call(struct loyd_sandbox *sb, const struct loyd_sandbox_call *c, json_t **result,
                      json_t **log, struct loyd_buf *err)
{
    struct call_args a = {.c = c, .phase = PHASE_LOOKUP};
    struct loyd_buf cerr = {0};
    lua_State *L = sb->L;
    int base, rc;

    *result = NULL;
    if (log != NULL)
        *log = NULL;
    if (c->module == NULL || c->handler == NULL || c->nargs > MAX_ARGS ||
        (c->nargs > 0 && c->args == NULL) || c->tz_offset_min < -1440 || c->tz_offset_min > 1440 ||
        c->now_ms > (uint64_t)INT64_MAX) {
        if (err != NULL)
            loyd_buf_puts(err, "invalid sandbox call");
        return -EINVAL;
    }
    LOYD_REQUIRE(!sb->in_call); /* C functions must not re-enter the sandbox */
    sb->in_call = true;
    sb->now_ms = c->now_ms;
    sb->tz_offset_min = c->tz_offset_min;
    rng_seed(sb->rng, c->seed);
    sb->log = json_array();
    sb->log_truncated = false;

    rc = run_protected(sb, l_call, &a, 1, &base, &cerr);
    sb->in_call = false;
    if (rc == 0 && a.missing != 0) {
        if (err != NULL)
            loyd_buf_printf(err, a.missing == 1 ? "no module '%s' loaded" : "%s: no handler '%s'",
                            c->module, c->handler);
        rc = -ENOENT;
    } else if (rc == 0) {
        json_t *j = NULL;
        rc = loyd_luajson_to_json(L, -1, c->result_flags, "result", &j, &cerr);
        if (rc == 0) {
            *result = j;
        } else {
            if (err != NULL)
                loyd_buf_printf(err, "%s: handler '%s' returned a value that is not JSON: %s",
                                c->module, c->handler, cerr.data != NULL ? cerr.data : "?");
            rc = rc == -ENOMEM ? -ENOMEM : LOYD_EEFFECT;
        }
    } else if (a.phase == PHASE_ARGS && rc == LOYD_ERULE) {
        /* The arguments did not convert: the caller's data is at fault, not the rule. */
        char *nl = cerr.data != NULL ? strchr(cerr.data, '\n') : NULL;
        if (nl != NULL)
            *nl = '\0';
        if (err != NULL)
            loyd_buf_printf(err, "%s: %s", c->handler, cerr.data != NULL ? cerr.data : "?");
        rc = -EINVAL;
    } else if (err != NULL) {
        loyd_buf_puts(err, cerr.data != NULL ? cerr.data : loyd_strerror(rc));
    }
    lua_settop(L, base);
    if (log != NULL)
        *log = sb->log;
    else
        json_decref(sb->log);
    sb->log = NULL;
    loyd_buf_free(&cerr);
    return rc;
}
