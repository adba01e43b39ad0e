/* SPDX-License-Identifier: MIT */
/*
 * The Lua sandbox that runs business-editable loyalty rules.  One struct loyd_sandbox owns one
 * PUC Lua 5.4 lua_State (one per tenant / rule set, never shared), its memory cap (a counting
 * allocator), its per-call CPU budget (instruction count + wall-clock deadline through a count
 * hook that a rule's own pcall cannot swallow), the loaded rule modules, and the per-call
 * deterministic context (frozen clock, seeded PRNG, trace log).
 *
 * What rules see: base (minus dofile/loadfile/load/collectgarbage/rawset/rawget/warn; no __gc
 * in setmetatable; xpcall calls its handler after unwinding, so the handler stays under the
 * hook; next/pairs see through read-only proxies), table (move capped), string (minus dump,
 * rep capped, find/match/gmatch/gsub metered: lua_pattern.h), math (random seeded per call,
 * no randomseed), utf8, and a
 * `loyd` table: log, now, today, date_add_days, days_between, null/json_null, array, is_array,
 * keys (sorted: pairs order is not reproducible), json_encode, json_decode, plus whatever the
 * rule engine adds with loyd_sandbox_define() or loyd_sandbox_prelude().  print is routed to
 * loyd.log.  Every global and library table is a read-only proxy; a rule file must `return` a
 * table of handlers.
 *
 * Lifecycle: create -> (define | prelude)* -> [freeze] -> (load | handlers | call)* -> destroy.
 * The first load freezes implicitly.  All functions: loop thread only (one thread at a time per
 * sandbox; different sandboxes are independent).
 *
 * Pattern matching runs in C where the count hook never fires, so the matcher counts its own
 * steps as instructions and checks the wall clock with them (lua_pattern.c): a backtracking
 * pattern on a long subject fails with LOYD_EBUDGET like any runaway rule.  Module upvalues
 * persist between calls of one sandbox (per-tenant state).
 */
#ifndef LOYD_SANDBOX_H
#define LOYD_SANDBOX_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

#include "loyd/error.h"
#include "util.h"

/* Defaults used when a limit field is 0. */
#define LOYD_SANDBOX_DEFAULT_MEMORY (16u * 1024 * 1024)
#define LOYD_SANDBOX_DEFAULT_INSTRUCTIONS 10000000u
#define LOYD_SANDBOX_DEFAULT_WALL_MS 250u
/* Smallest memory cap accepted (a fresh frozen state holds about 21 KiB). */
#define LOYD_SANDBOX_MIN_MEMORY (128u * 1024)
/* Largest rule source accepted by loyd_sandbox_load / loyd_sandbox_prelude. */
#define LOYD_SANDBOX_MAX_SOURCE (1024u * 1024)
/* Largest string string.rep may build (C functions run without hooks). */
#define LOYD_SANDBOX_MAX_REP (1024u * 1024)
/* Largest number of elements one table.move call may touch (it loops in C without hooks). */
#define LOYD_SANDBOX_MAX_MOVE (1u << 20)
/* Trace log caps per call: lines, and bytes per line (longer lines are cut). */
#define LOYD_SANDBOX_LOG_LINES 100u
#define LOYD_SANDBOX_LOG_LINE_MAX 1024u

struct loyd_sandbox;

struct loyd_sandbox_limits {
    size_t memory_bytes;   /* cap on the whole state: libraries, modules, per-call data */
    uint64_t instructions; /* per call (and per load / prelude), rounded up to 1000s */
    uint64_t wall_ms;      /* per call (and per load / prelude) */
};

/**
 * Creates a sandbox.  @p name (borrowed, copied) only labels log lines and messages.
 * @p lim may be NULL (defaults); 0 fields take the defaults.
 * @return 0, -EINVAL (memory below LOYD_SANDBOX_MIN_MEMORY), -ENOMEM (state did not fit).
 */
LOYD_MUST_CHECK int loyd_sandbox_create(const char *name, const struct loyd_sandbox_limits *lim,
                                        struct loyd_sandbox **out);
/** Closes the state and frees everything.  Accepts NULL. */
void loyd_sandbox_destroy(struct loyd_sandbox *sb);

/**
 * Adds (or replaces) loyd.<name> = @p fn.  Only before the sandbox is frozen.  @p fn may use
 * loyd_sandbox_from_lua() to reach the sandbox and its per-call context.
 * @return 0, -EINVAL (bad name), -EBUSY (already frozen), LOYD_ERULEMEM.
 */
LOYD_MUST_CHECK int loyd_sandbox_define(struct loyd_sandbox *sb, const char *name,
                                        lua_CFunction fn);

/**
 * Runs trusted Lua before freezing: it may define globals (award, redeem, ...) and fields of the
 * `loyd` table.  It already sees the restricted library set (no load, io, os, ...).  Runs under
 * the sandbox budget.  @p err (may be NULL) gets "chunkname:line: message" + traceback.
 * @return 0, -EINVAL, -EBUSY (frozen), LOYD_ERULE, LOYD_EBUDGET, LOYD_ERULEMEM.
 */
LOYD_MUST_CHECK int loyd_sandbox_prelude(struct loyd_sandbox *sb, const char *chunkname,
                                         const char *lua_src, size_t len, struct loyd_buf *err);

/**
 * Freezes the environment: from now on globals and every table reachable from them are
 * read-only proxies.  Idempotent; loyd_sandbox_load calls it implicitly.
 * @return 0, LOYD_ERULEMEM.
 */
LOYD_MUST_CHECK int loyd_sandbox_freeze(struct loyd_sandbox *sb, struct loyd_buf *err);

/**
 * Compiles a rule file (text only, at most LOYD_SANDBOX_MAX_SOURCE bytes), runs it under the
 * budget, and keeps the table it returns under @p module (e.g. "rules/cashback.lua"),
 * replacing a previous module of that name only on success.  @p err (may be NULL) gets
 * "rules/cashback.lua:12: message".
 * @return 0, -EINVAL (bad module name), LOYD_ELIMIT (too big), LOYD_EPARSE (bytecode or syntax
 *         error), LOYD_ERULE (raised, or did not return a table), LOYD_EBUDGET, LOYD_ERULEMEM.
 */
LOYD_MUST_CHECK int loyd_sandbox_load(struct loyd_sandbox *sb, const char *module, const char *src,
                                      size_t len, struct loyd_buf *err);

/**
 * Lists the handler names of a loaded module: its string keys whose values are functions,
 * sorted.  @p names gets a new JSON array of strings.
 * @return 0, -ENOENT (no such module), LOYD_ERULEMEM.
 */
LOYD_MUST_CHECK int loyd_sandbox_handlers(struct loyd_sandbox *sb, const char *module,
                                          json_t **names);

struct loyd_sandbox_call {
    const char *module;    /* as given to loyd_sandbox_load */
    const char *handler;   /* key in the module's table */
    json_t *const *args;   /* borrowed; passed as read-only tables/values */
    size_t nargs;          /* at most 16 */
    uint64_t now_ms;       /* frozen clock: loyd.now() / loyd.today() */
    int tz_offset_min;     /* for loyd.today(); -1440..1440 */
    uint64_t seed;         /* math.random sequence for this call */
    unsigned arg_flags;    /* LOYD_LUAJSON_* for the arguments (READONLY is always added) */
    unsigned result_flags; /* LOYD_LUAJSON_* for the result, e.g. LOYD_LUAJSON_INTEGERS_ONLY */
    unsigned shared_args;  /* bit i: args[i] stays alive and unchanged until the next
                              loyd_sandbox_forget_shared, so its Lua table is built once and
                              reused by every call meanwhile */
};

/**
 * Drops the Lua table built for the shared argument @p v (loyd_sandbox_call.shared_args), or
 * for all of them when @p v is NULL.  Call it before such a JSON value is changed or freed.
 */
void loyd_sandbox_forget_shared(struct loyd_sandbox *sb, const json_t *v);

/**
 * Calls module[handler](args...) under a fresh budget.  Each call resets the budget, clock,
 * PRNG and log; a killed call leaves the sandbox usable.
 * @p result gets a new JSON value for the first returned value (JSON null for nil).
 * @p log (may be NULL) gets a new array of the loyd.log / print lines (also on failure).
 * @p err (may be NULL) gets the message and, for raised errors, the traceback.
 * @return 0; -ENOENT (no module / handler); -EINVAL (bad call, or an argument that does not
 *         convert: message names the path); LOYD_ERULE (raised); LOYD_EBUDGET (instructions or
 *         wall clock, even if the rule pcall'ed it); LOYD_ERULEMEM (memory cap);
 *         LOYD_EEFFECT (result does not convert to JSON: message names the path).
 */
LOYD_MUST_CHECK int loyd_sandbox_call(struct loyd_sandbox *sb, const struct loyd_sandbox_call *c,
                                      json_t **result, json_t **log, struct loyd_buf *err);

/** @return bytes currently allocated by the state. */
size_t loyd_sandbox_memory(const struct loyd_sandbox *sb);
/** @return borrowed: the sandbox name. */
const char *loyd_sandbox_name(const struct loyd_sandbox *sb);

/** For C functions registered with loyd_sandbox_define: @return borrowed, never NULL. */
struct loyd_sandbox *loyd_sandbox_from_lua(lua_State *L);
/** A pointer the embedder keeps with the sandbox (e.g. the rule engine's pack). */
void loyd_sandbox_set_userdata(struct loyd_sandbox *sb, void *ud);
void *loyd_sandbox_userdata(const struct loyd_sandbox *sb);
/**
 * The per-call context seen by C functions during loyd_sandbox_call.
 * @return false outside a call (e.g. while a module loads).
 */
bool loyd_sandbox_clock(const struct loyd_sandbox *sb, uint64_t *now_ms, int *tz_offset_min);

#endif
