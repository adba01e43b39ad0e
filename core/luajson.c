/* SPDX-License-Identifier: MIT */
/*
 * JSON <-> Lua conversion and read-only proxies (see luajson.h).  This file owns three
 * per-state registry entries keyed by static addresses: the weak-keyed array set, the null
 * sentinel's (light userdata) metatable, and nothing else: each proxy carries its own metatable
 * that holds the proxied table under &proxy_key, where sandboxed code cannot reach it
 * (__metatable is false, rawget and debug are gone).
 *
 * Fidelity is the point: Fluent Bit turned JSON null into nil (deleting keys, breaking arrays)
 * and empty arrays into maps; here null is a sentinel value and arrays are remembered.
 */
#include "luajson.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static char null_key;
static char array_set_key;
static char proxy_key;

/* One step of a path: an object key or an array index (Lua's, from 1). */
struct seg {
    const char *key; /* NULL for an index */
    size_t klen;
    lua_Integer idx;
};

static void path_format(char *out, size_t cap, const char *root, const struct seg *segs, int n)
{
    size_t len = 0;
    int w = snprintf(out, cap, "%s", root != NULL ? root : "$");

    len = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < n && len + 1 < cap; i++) {
        const struct seg *s = &segs[i];
        bool ident = s->key != NULL && s->klen > 0 && s->klen <= 40 &&
                     !(s->key[0] >= '0' && s->key[0] <= '9');
        for (size_t j = 0; ident && j < s->klen; j++) {
            unsigned char ch = (unsigned char)s->key[j];
            ident = ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9');
        }
        if (s->key == NULL) {
            w = snprintf(out + len, cap - len, "[%lld]", (long long)s->idx);
        } else if (ident) {
            w = snprintf(out + len, cap - len, ".%.*s", (int)s->klen, s->key);
        } else {
            /* Quote odd keys and show control bytes as \xNN so a message stays one line. */
            char q[48 * 4 + 8];
            size_t ql = 0, lim = s->klen < 40 ? s->klen : 40;
            for (size_t j = 0; j < lim; j++) {
                unsigned char ch = (unsigned char)s->key[j];
                if (ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\')
                    ql += (size_t)snprintf(q + ql, sizeof(q) - ql, "\\x%02x", ch);
                else
                    q[ql++] = (char)ch;
            }
            q[ql] = '\0';
            w = snprintf(out + len, cap - len, "[\"%s%s\"]", q, s->klen > lim ? "..." : "");
        }
        if (w < 0)
            break;
        len += (size_t)w;
    }
    if (len >= cap)
        len = cap - 1;
    out[len] = '\0';
}

/* ---- sentinel, array set, proxies ------------------------------------------------------- */

void loyd_luajson_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, &null_key);
}

bool loyd_luajson_is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &null_key;
}

static int l_null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

bool loyd_luajson_unproxy(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_checkstack(L, 2) || !lua_getmetatable(L, idx))
        return false;
    if (lua_rawgetp(L, -1, &proxy_key) != LUA_TTABLE) {
        lua_pop(L, 2);
        return false;
    }
    lua_remove(L, -2);
    return true;
}

/* Pushes the table itself, or the table behind a proxy. */
static void push_real(lua_State *L, int idx)
{
    if (!loyd_luajson_unproxy(L, idx))
        lua_pushvalue(L, idx);
}

void loyd_luajson_mark_array(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 3, "marking an array");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_set_key);
    push_real(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

bool loyd_luajson_is_array(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE || !lua_checkstack(L, 3))
        return false;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_set_key);
    push_real(L, idx);
    bool yes = lua_rawget(L, -2) == LUA_TBOOLEAN;
    lua_pop(L, 2);
    return yes;
}

/* Writes through a proxy: refused.  The message says what the rule author did wrong. */
static int l_proxy_newindex(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING)
        return luaL_error(L, "attempt to modify a read-only table (field '%s')",
                          lua_tostring(L, 2));
    return luaL_error(L, "attempt to modify a read-only table");
}

static int l_global_newindex(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING)
        return luaL_error(L, "attempt to write global '%s'", lua_tostring(L, 2));
    return luaL_error(L, "attempt to write a global");
}

static int l_proxy_len(lua_State *L)
{
    if (!loyd_luajson_unproxy(L, 1))
        return luaL_error(L, "not a read-only table");
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
    return 1;
}

int loyd_luajson_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (loyd_luajson_unproxy(L, 1))
        lua_replace(L, 1);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

/* __pairs must not hand out the table behind the proxy as the loop state, or
 * `local _, real = pairs(member)` would give write access. */
static int l_proxy_pairs(lua_State *L)
{
    lua_pushcfunction(L, loyd_luajson_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

void loyd_luajson_push_proxy(lua_State *L, int idx, bool global)
{
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 4, "making a read-only table");
    lua_createtable(L, 0, 0); /* the proxy: always empty */
    lua_createtable(L, 0, 6); /* its metatable */
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, global ? l_global_newindex : l_proxy_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, l_proxy_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, l_proxy_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, idx);
    lua_rawsetp(L, -2, &proxy_key);
    lua_setmetatable(L, -2);
}

void loyd_luajson_openlib(lua_State *L)
{
    luaL_checkstack(L, 4, "luajson");
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_set_key);

    /* Light userdata share one metatable per state; the sentinel is the only light userdata
     * rules ever see, so this gives it a stable tostring ("null", not an address). */
    loyd_luajson_push_null(L);
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, l_null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "loyd.null");
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
}

/* ---- JSON -> Lua (raises) ---------------------------------------------------------------- */

struct jl {
    lua_State *L;
    unsigned flags;
    const char *root;
    int depth;
    struct seg path[LOYD_LUAJSON_MAX_DEPTH + 1];
};

static int jl_fail(struct jl *c, int nseg, const char *what)
{
    char p[256];

    path_format(p, sizeof(p), c->root, c->path, nseg);
    return luaL_error(c->L, "%s at %s", what, p);
}

static void jl_finish_table(struct jl *c)
{
    if (c->flags & LOYD_LUAJSON_READONLY) {
        loyd_luajson_push_proxy(c->L, -1, false);
        lua_remove(c->L, -2);
    }
}

static void jl_value(struct jl *c, const json_t *v)
{
    lua_State *L = c->L;

    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (++c->depth > LOYD_LUAJSON_MAX_DEPTH)
            jl_fail(c, c->depth - 1, "nesting deeper than 32 levels");
        luaL_checkstack(L, 6, "JSON nesting");
        size_t n = json_object_size(v);
        lua_createtable(L, 0, n > 1024 ? 1024 : (int)n);
        for (void *it = json_object_iter((json_t *)v); it != NULL;
             it = json_object_iter_next((json_t *)v, it)) {
            struct seg *s = &c->path[c->depth - 1];
            s->key = json_object_iter_key(it);
            s->klen = json_object_iter_key_len(it);
            lua_pushlstring(L, s->key, s->klen);
            jl_value(c, json_object_iter_value(it));
            lua_rawset(L, -3);
        }
        jl_finish_table(c);
        c->depth--;
        break;
    }
    case JSON_ARRAY: {
        if (++c->depth > LOYD_LUAJSON_MAX_DEPTH)
            jl_fail(c, c->depth - 1, "nesting deeper than 32 levels");
        luaL_checkstack(L, 6, "JSON nesting");
        size_t n = json_array_size(v);
        lua_createtable(L, n > 1024 ? 1024 : (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            struct seg *s = &c->path[c->depth - 1];
            *s = (struct seg){.key = NULL, .idx = (lua_Integer)i + 1};
            jl_value(c, json_array_get(v, i));
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        loyd_luajson_mark_array(L, -1);
        jl_finish_table(c);
        c->depth--;
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL: {
        double d = json_real_value(v);
        if (c->flags & LOYD_LUAJSON_INTEGERS_ONLY) {
            lua_Integer i = 0;
            /* An integral real (3.0) is still a whole number of minor units. */
            if (!lua_numbertointeger(d, &i) || (double)i != d)
                jl_fail(c, c->depth, "non-integer number (integers only)");
            lua_pushinteger(L, i);
        } else {
            lua_pushnumber(L, d);
        }
        break;
    }
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    case JSON_NULL:
        loyd_luajson_push_null(L);
        break;
    }
}

void loyd_luajson_push(lua_State *L, const json_t *v, unsigned flags, const char *root)
{
    struct jl c = {.L = L, .flags = flags, .root = root};

    luaL_checkstack(L, 6, "JSON value");
    if (v == NULL)
        loyd_luajson_push_null(L);
    else
        jl_value(&c, v);
}

/* ---- Lua -> JSON (never raises) ---------------------------------------------------------- */

struct tj {
    lua_State *L;
    unsigned flags;
    const char *root;
    int depth;
    size_t nodes, bytes;
    struct loyd_buf *err;
    struct seg path[LOYD_LUAJSON_MAX_DEPTH + 1];
    const void *open[LOYD_LUAJSON_MAX_DEPTH + 1]; /* tables on the current path */
};

static int tj_fail(struct tj *c, int rc, int nseg, const char *fmt, ...) LOYD_PRINTF(4, 5);

static int tj_fail(struct tj *c, int rc, int nseg, const char *fmt, ...)
{
    char p[256], m[200];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    path_format(p, sizeof(p), c->root, c->path, nseg);
    if (c->err != NULL)
        loyd_buf_printf(c->err, "%s at %s", m, p);
    return rc;
}

static int tj_value(struct tj *c, int idx, json_t **out);

static int tj_table(struct tj *c, int idx, json_t **out)
{
    lua_State *L = c->L;
    int top = lua_gettop(L), rc = 0;
    json_t *j = NULL;

    if (c->depth + 1 > LOYD_LUAJSON_MAX_DEPTH)
        return tj_fail(c, LOYD_ELIMIT, c->depth, "nesting deeper than 32 levels");
    if (!lua_checkstack(L, 8))
        return tj_fail(c, LOYD_ELIMIT, c->depth, "Lua stack exhausted");
    bool marked = loyd_luajson_is_array(L, idx);
    push_real(L, idx);
    int t = lua_gettop(L);
    const void *self = lua_topointer(L, t);
    for (int i = 0; i < c->depth; i++) {
        if (c->open[i] == self) {
            rc = tj_fail(c, -EINVAL, c->depth, "table contains itself (cycle)");
            goto done;
        }
    }
    c->open[c->depth] = self;

    /* Classify first: an array has exactly the keys 1..n, an object only string keys. */
    lua_Integer n = 0, maxi = 0;
    bool all_index = true, all_string = true;
    int badkey = LUA_TNIL;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        lua_pop(L, 1);
        n++;
        if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0) {
            lua_Integer k = lua_tointeger(L, -1);
            if (k > maxi)
                maxi = k;
            all_string = false;
        } else {
            all_index = false;
            if (lua_type(L, -1) != LUA_TSTRING) {
                all_string = false;
                badkey = lua_type(L, -1);
            }
        }
    }
    bool is_array = (n == 0 && marked) || (n > 0 && all_index && maxi == n);
    if (marked && !is_array) {
        rc = tj_fail(c, -EINVAL, c->depth, "table marked as array has keys other than 1..n");
        goto done;
    }
    if (!is_array && !all_string && n > 0) {
        if (badkey == LUA_TNIL)
            rc = tj_fail(c, -EINVAL, c->depth,
                         "table mixes keys: an array needs exactly the keys 1..n (no holes), "
                         "an object only string keys");
        else
            rc = tj_fail(c, -EINVAL, c->depth, "table has a %s key; object keys must be strings",
                         lua_typename(L, badkey));
        goto done;
    }

    c->depth++;
    if (is_array) {
        j = json_array();
        if (j == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        for (lua_Integer i = 1; i <= n; i++) {
            json_t *v = NULL;
            c->path[c->depth - 1] = (struct seg){.key = NULL, .idx = i};
            lua_rawgeti(L, t, i);
            rc = tj_value(c, -1, &v);
            lua_pop(L, 1);
            if (rc != 0)
                goto out;
            if (json_array_append_new(j, v) != 0) {
                rc = -ENOMEM;
                goto out;
            }
        }
    } else {
        j = json_object();
        if (j == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        lua_pushnil(L);
        while (lua_next(L, t) != 0) {
            json_t *v = NULL;
            struct seg *s = &c->path[c->depth - 1];
            s->key = lua_tolstring(L, -2, &s->klen); /* a string: no conversion */
            c->bytes += s->klen;
            if (c->bytes > LOYD_LUAJSON_MAX_BYTES) {
                rc = tj_fail(c, LOYD_ELIMIT, c->depth, "output larger than %u bytes",
                             LOYD_LUAJSON_MAX_BYTES);
                goto out;
            }
            rc = tj_value(c, -1, &v);
            lua_pop(L, 1);
            if (rc != 0)
                goto out;
            if (json_object_setn_new(j, s->key, s->klen, v) != 0) {
                rc = tj_fail(c, -EINVAL, c->depth, "key is not valid UTF-8");
                goto out;
            }
        }
    }
out:
    c->depth--;
done:
    lua_settop(L, top);
    if (rc != 0) {
        json_decref(j);
        return rc;
    }
    *out = j;
    return 0;
}

static int tj_value(struct tj *c, int idx, json_t **out)
{
    lua_State *L = c->L;
    json_t *j = NULL;

    idx = lua_absindex(L, idx);
    if (++c->nodes > LOYD_LUAJSON_MAX_NODES)
        return tj_fail(c, LOYD_ELIMIT, c->depth, "output has more than %u values",
                       LOYD_LUAJSON_MAX_NODES);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        j = json_null();
        break;
    case LUA_TBOOLEAN:
        j = json_boolean(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            j = json_integer((json_int_t)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            lua_Integer i = 0;
            if (!isfinite(d))
                return tj_fail(c, -EINVAL, c->depth, "NaN or infinite number");
            if (c->flags & LOYD_LUAJSON_INTEGERS_ONLY) {
                if (!lua_numbertointeger(d, &i) || (double)i != d)
                    return tj_fail(c, -EINVAL, c->depth, "non-integer number %.17g (integers only)",
                                   d);
                j = json_integer((json_int_t)i);
            } else {
                j = json_real(d);
            }
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        c->bytes += len;
        if (c->bytes > LOYD_LUAJSON_MAX_BYTES)
            return tj_fail(c, LOYD_ELIMIT, c->depth, "output larger than %u bytes",
                           LOYD_LUAJSON_MAX_BYTES);
        j = json_stringn(s, len);
        if (j == NULL)
            return tj_fail(c, -EINVAL, c->depth, "string is not valid UTF-8");
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (!loyd_luajson_is_null(L, idx))
            return tj_fail(c, -EINVAL, c->depth, "cannot convert a userdata value");
        j = json_null();
        break;
    case LUA_TTABLE:
        return tj_table(c, idx, out);
    default:
        return tj_fail(c, -EINVAL, c->depth, "cannot convert a %s value",
                       lua_typename(L, lua_type(L, idx)));
    }
    if (j == NULL)
        return -ENOMEM;
    *out = j;
    return 0;
}

int loyd_luajson_to_json(lua_State *L, int idx, unsigned flags, const char *root, json_t **out,
                         struct loyd_buf *err)
{
    struct tj c = {.L = L, .flags = flags, .root = root, .err = err};

    *out = NULL;
    if (!lua_checkstack(L, 8)) {
        if (err != NULL)
            loyd_buf_puts(err, "Lua stack exhausted");
        return LOYD_ELIMIT;
    }
    int rc = tj_value(&c, idx, out);
    if (rc == -ENOMEM && err != NULL && err->len == 0)
        loyd_buf_puts(err, "out of memory building JSON");
    return rc;
}
