/* SPDX-License-Identifier: MIT */
/*
 * JSON <-> Lua conversion with full fidelity, and the read-only table proxies the sandbox uses
 * for inputs and frozen globals.
 *
 * JSON -> Lua: objects -> tables; arrays -> tables registered in a per-state weak "array set"
 * (so [] stays [] on the way back); null -> the light-userdata sentinel loyd.null (keys and
 * array positions survive); integers -> Lua integers (64-bit); reals -> floats.
 * Lua -> JSON: a table registered as array, or whose keys are exactly 1..n, -> array; other
 * tables -> objects (string keys only); the sentinel -> null; nil (top level only) -> null.
 * Errors name the path of the offending value: "$.a.b[2]" (indexes are Lua's, from 1).
 *
 * Limits: nesting depth LOYD_LUAJSON_MAX_DEPTH both ways; Lua -> JSON also caps the number of
 * values and string bytes (shared sub-tables are expanded, so a small DAG could be huge).
 */
#ifndef LOYD_LUAJSON_H
#define LOYD_LUAJSON_H

#include <jansson.h>
#include <lua.h>
#include <stdbool.h>

#include "util.h"

#define LOYD_LUAJSON_MAX_DEPTH 32
#define LOYD_LUAJSON_MAX_NODES 200000u
#define LOYD_LUAJSON_MAX_BYTES (8u * 1024 * 1024)

enum {
    /* Reals are refused (JSON -> Lua) and floats must have an integral value (Lua -> JSON),
     * which then becomes a JSON integer: money is integer minor units. */
    LOYD_LUAJSON_INTEGERS_ONLY = 1u << 0,
    /* JSON -> Lua: every table is wrapped in a read-only proxy. */
    LOYD_LUAJSON_READONLY = 1u << 1,
};

/**
 * Installs the registry entries (array set, null sentinel's metatable, proxy machinery).
 * Call once per state, inside a protected call: raises on out-of-memory.
 */
void loyd_luajson_openlib(lua_State *L);

/** Pushes the null sentinel (a light userdata; never allocates). */
void loyd_luajson_push_null(lua_State *L);
bool loyd_luajson_is_null(lua_State *L, int idx);

/**
 * Pushes @p v converted to Lua.  Raises a Lua error (message names the path under @p root,
 * NULL = "$") on a limit or an INTEGERS_ONLY violation, and on out-of-memory: call it inside a
 * protected call.
 */
void loyd_luajson_push(lua_State *L, const json_t *v, unsigned flags, const char *root);

/**
 * Converts the value at @p idx.  Never raises and never runs Lua code (raw access only; proxies
 * are seen through).  @p out gets a new reference.  @p err (may be NULL) gets the message.
 * @return 0, LOYD_ELIMIT (depth/size caps), -EINVAL (unconvertible value, cycle, NaN, float in
 *         INTEGERS_ONLY mode, non-string key, invalid UTF-8), -ENOMEM.
 */
LOYD_MUST_CHECK int loyd_luajson_to_json(lua_State *L, int idx, unsigned flags, const char *root,
                                         json_t **out, struct loyd_buf *err);

/** Marks the table at @p idx (or the table behind a proxy) as a JSON array. Raises on OOM. */
void loyd_luajson_mark_array(lua_State *L, int idx);
bool loyd_luajson_is_array(lua_State *L, int idx);

/**
 * Pushes a read-only proxy for the table at @p idx: reads go to the table, writes raise
 * @p what ("attempt to write global 'x'" style when @p global, else "attempt to modify a
 * read-only table (field 'x')"), # / pairs / next work, getmetatable returns false.
 * The proxied table itself must not be reachable from sandboxed code.  Raises on OOM.
 */
void loyd_luajson_push_proxy(lua_State *L, int idx, bool global);
/** If the value at @p idx is a proxy, pushes the table behind it and returns true. */
bool loyd_luajson_unproxy(lua_State *L, int idx);

/** lua_CFunction: `next` that sees through proxies (installed as the sandbox's global next). */
int loyd_luajson_next(lua_State *L);

#endif
