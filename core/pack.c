/* SPDX-License-Identifier: MIT */
/*
 * Rule pack loading (see pack.h): the data-only pack.conf loader, `extends` resolution and
 * merging, the settings schema, and validation of a tenant's overrides against it.
 */
#include "pack.h"

#include "ledger.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "campaign.h"

#define DATA_MEM_LIMIT (4u * 1024 * 1024)
#define DATA_MAX_TICKS 1000u /* x 1000 instructions: data files need far fewer */
#define DATA_MAX_DEPTH 32
#define DATA_MAX_NODES 100000u

static const char *const types[] = {"int",  "string", "bool", "percent_bp", "days",
                                    "date", "list",   "map",  "table",      "campaigns"};
static const char *const spec_fields[] = {"type", "default", "help", "of", "min", "max"};
static const char *const conf_fields[] = {"name",     "version", "extends", "description",
                                          "settings", "points",  "windows", "counters"};
static const char *const counter_fields[] = {"crm", "help"};

#define MAX_COUNTERS 64

/* ---- suggestions ------------------------------------------------------------------------ */

/* Optimal string alignment distance: a swap of two neighbours ("hlep") counts as one edit. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d[65][65];

    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (unsigned char)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (unsigned char)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            unsigned cost = a[i - 1] != b[j - 1];
            unsigned v = d[i - 1][j] + 1u;
            if (d[i][j - 1] + 1u < v)
                v = d[i][j - 1] + 1u;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1u < v)
                v = d[i - 2][j - 2] + 1u;
            d[i][j] = (unsigned char)v;
        }
    }
    return d[la][lb];
}

const char *loyd_suggest(const char *word, const char *const *cands, size_t n)
{
    size_t best = SIZE_MAX, limit = strlen(word) / 3;
    const char *pick = NULL;

    if (limit < 1)
        limit = 1;
    if (limit > 3)
        limit = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(word, cands[i]);
        if (d < best) {
            best = d;
            pick = cands[i];
        }
    }
    return best <= limit ? pick : NULL;
}

/* Suggestion among the keys of a JSON object. */
static const char *suggest_key(const char *word, const json_t *obj)
{
    size_t n = json_object_size(obj), i = 0;
    const char **c = loyd_xcalloc(n + 1, sizeof(*c));
    const char *k;
    json_t *v;

    json_object_foreach((json_t *)obj, k, v) c[i++] = k;
    const char *s = loyd_suggest(word, c, n);
    free(c);
    return s;
}

static void put_hint(struct loyd_buf *err, const char *s)
{
    if (s != NULL)
        loyd_buf_printf(err, " (did you mean '%s'?)", s);
}

int loyd_pack_line_of(const char *src, const char *key)
{
    size_t kl = strlen(key);
    int line = 1;

    if (kl == 0)
        return 1;
    for (const char *p = src; *p != '\0'; p++) {
        if (*p == '\n') {
            line++;
            continue;
        }
        if (strncmp(p, key, kl) != 0)
            continue;
        char before = p == src ? ' ' : p[-1];
        const char *r = p + kl;
        if ((before == '"' || before == '\'') && *r == before && p - src >= 2 && p[-2] == '[') {
            return line; /* ["key"] = */
        }
        bool ident = (before >= 'a' && before <= 'z') || (before >= 'A' && before <= 'Z') ||
                     (before >= '0' && before <= '9') || before == '_' || before == '.' ||
                     before == '"' || before == '\'';
        if (ident)
            continue;
        while (*r == ' ' || *r == '\t')
            r++;
        if (*r == '=' && r[1] != '=')
            return line;
    }
    return 1;
}

/* ---- the data-only loader ----------------------------------------------------------------- */

struct data_budget {
    size_t used;
    unsigned ticks;
};

static void *data_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct data_budget *b = ud;
    size_t old = ptr != NULL ? osize : 0;

    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    if (nsize > old && nsize - old > DATA_MEM_LIMIT - b->used)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        b->used = b->used - old + nsize;
    return p;
}

static void data_hook(lua_State *L, lua_Debug *ar)
{
    void *ud;
    (void)ar;
    lua_getallocf(L, &ud);
    struct data_budget *b = ud;
    if (++b->ticks > DATA_MAX_TICKS) {
        lua_sethook(L, data_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "too much computation for a data file");
    }
}

struct conv {
    size_t nodes;
    struct loyd_buf *err;
    const char *chunk;
};

/* Converts the value at the top of the stack; path is a "$.a[1]" style label. */
static json_t *data_to_json(lua_State *L, struct conv *cv, const char *path, int depth)
{
    int t = lua_type(L, -1);

    if (++cv->nodes > DATA_MAX_NODES || depth > DATA_MAX_DEPTH) {
        loyd_buf_printf(cv->err, "%s: %s: data too large or nested too deep\n", cv->chunk, path);
        return NULL;
    }
    switch (t) {
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, -1));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        json_t *j = json_stringn(s, len);
        if (j == NULL)
            loyd_buf_printf(cv->err, "%s: %s: string is not valid UTF-8\n", cv->chunk, path);
        return j;
    }
    case LUA_TNUMBER:
        if (lua_isinteger(L, -1))
            return json_integer(lua_tointeger(L, -1));
        lua_Integer iv;
        if (lua_numbertointeger(lua_tonumber(L, -1), &iv) && (lua_Number)iv == lua_tonumber(L, -1))
            return json_integer(iv);
        loyd_buf_printf(cv->err,
                        "%s: %s: %g is not an integer (amounts are minor units, percents are "
                        "basis points)\n",
                        cv->chunk, path, lua_tonumber(L, -1));
        return NULL;
    case LUA_TTABLE:
        break;
    default:
        loyd_buf_printf(cv->err, "%s: %s: a %s is not data\n", cv->chunk, path, lua_typename(L, t));
        return NULL;
    }
    if (!lua_checkstack(L, 4)) {
        loyd_buf_printf(cv->err, "%s: %s: nested too deep\n", cv->chunk, path);
        return NULL;
    }
    /* Array iff the keys are exactly the integers 1..n. */
    size_t n = 0;
    lua_Integer maxk = 0;
    bool ints = true, strs = true;
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        n++;
        if (lua_type(L, -2) == LUA_TNUMBER && lua_isinteger(L, -2)) {
            strs = false;
            if (lua_tointeger(L, -2) > maxk)
                maxk = lua_tointeger(L, -2);
        } else if (lua_type(L, -2) == LUA_TSTRING) {
            ints = false;
        } else {
            ints = strs = false;
        }
        lua_pop(L, 1);
    }
    if (n > 0 && ints && (size_t)maxk == n) {
        json_t *arr = json_array();
        for (size_t i = 1; i <= n; i++) {
            char sub[256];
            snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
            lua_rawgeti(L, -1, (lua_Integer)i);
            json_t *v = data_to_json(L, cv, sub, depth + 1);
            lua_pop(L, 1);
            if (v == NULL) {
                json_decref(arr);
                return NULL;
            }
            json_array_append_new(arr, v);
        }
        return arr;
    }
    if (!strs && n > 0) {
        loyd_buf_printf(cv->err,
                        "%s: %s: a table must be a list (keys 1..n) or a record (string keys)\n",
                        cv->chunk, path);
        return NULL;
    }
    json_t *obj = json_object();
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        const char *k = lua_tostring(L, -2);
        char sub[256];
        snprintf(sub, sizeof(sub), "%s.%s", path, k);
        json_t *v = data_to_json(L, cv, sub, depth + 1);
        if (v == NULL || json_object_set_new(obj, k, v) != 0) {
            if (v != NULL)
                loyd_buf_printf(cv->err, "%s: %s: key is not valid UTF-8\n", cv->chunk, path);
            lua_pop(L, 2);
            json_decref(obj);
            return NULL;
        }
        lua_pop(L, 1);
    }
    return obj;
}

struct data_run {
    const char *chunkname, *src;
    size_t len;
    struct conv cv;
    json_t *out;
    bool syntax;
};

static int l_data_run(lua_State *L)
{
    struct data_run *r = lua_touserdata(L, 1);
    const char *cn = lua_pushfstring(L, "=%s", r->chunkname);

    if (luaL_loadbufferx(L, r->src, r->len, cn, "t") != LUA_OK) {
        r->syntax = true;
        return lua_error(L);
    }
    lua_newtable(L); /* the empty environment: no functions, no globals */
    lua_setupvalue(L, -2, 1);
    lua_call(L, 0, 1);
    r->out = data_to_json(L, &r->cv, "$", 0);
    return 0;
}

int loyd_pack_load_data(const char *chunkname, const char *src, size_t len, json_t **out,
                        struct loyd_buf *err)
{
    struct data_budget b = {0};
    struct data_run r = {.chunkname = chunkname, .src = src, .len = len};
    struct loyd_buf cerr = {0};
    lua_State *L;

    *out = NULL;
    r.cv.err = &cerr;
    r.cv.chunk = chunkname;
    if (len > LOYD_PACK_MAX_FILE) {
        loyd_buf_printf(err, "%s: file is %zu bytes, limit %u\n", chunkname, len,
                        LOYD_PACK_MAX_FILE);
        return LOYD_ECONFIG;
    }
    if ((L = lua_newstate(data_alloc, &b)) == NULL)
        return -ENOMEM;
    lua_sethook(L, data_hook, LUA_MASKCOUNT, 1000);
    lua_pushcfunction(L, l_data_run);
    lua_pushlightuserdata(L, &r);
    int st = lua_pcall(L, 1, 0, 0);
    if (st != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        if (st == LUA_ERRMEM)
            m = "data file needs too much memory";
        /* Syntax errors already read "name:line: ..."; runtime ones too (level 1 position). */
        if (m != NULL && strncmp(m, chunkname, strlen(chunkname)) == 0)
            loyd_buf_printf(err, "%s\n", m);
        else
            loyd_buf_printf(err, "%s: %s\n", chunkname, m != NULL ? m : "error");
        json_decref(r.out);
        r.out = NULL;
    } else if (r.out == NULL) {
        loyd_buf_puts(err, cerr.data != NULL ? cerr.data : "conversion failed\n");
    }
    lua_close(L);
    loyd_buf_free(&cerr);
    if (r.out == NULL)
        return LOYD_ECONFIG;
    *out = r.out;
    return 0;
}

/* ---- settings schema ---------------------------------------------------------------------- */

static bool known_type(const char *t)
{
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(types); i++)
        if (strcmp(t, types[i]) == 0)
            return true;
    return false;
}

static bool valid_date(const char *s)
{
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned y = 0, m = 0, d = 0;

    if (s == NULL || strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return false;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
            return false;
    sscanf(s, "%4u-%2u-%2u", &y, &m, &d);
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
        return false;
    return !(m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "a record";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a fractional number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int check_typed(const char *type, const json_t *spec, const json_t *v, const char *path,
                       struct loyd_buf *err)
{
    const char *of = json_string_value(json_object_get(spec, "of"));
    json_t *jmin = json_object_get(spec, "min"), *jmax = json_object_get(spec, "max");

    if (strcmp(type, "int") == 0 || strcmp(type, "percent_bp") == 0 || strcmp(type, "days") == 0) {
        if (!json_is_integer(v)) {
            loyd_buf_printf(err, "%s: expected %s, got %s\n", path,
                            strcmp(type, "int") == 0 ? "an integer" : type, json_kind(v));
            return -EINVAL;
        }
        int64_t x = json_integer_value(v);
        int64_t lo = strcmp(type, "int") == 0 ? INT64_MIN : 0;
        int64_t hi = strcmp(type, "percent_bp") == 0 ? 10000
                     : strcmp(type, "days") == 0     ? 36500
                                                     : INT64_MAX;
        if (json_is_integer(jmin))
            lo = json_integer_value(jmin);
        if (json_is_integer(jmax))
            hi = json_integer_value(jmax);
        if (x < lo || x > hi) {
            loyd_buf_printf(err, "%s: %lld is out of range %lld..%lld%s\n", path, (long long)x,
                            (long long)lo, (long long)hi,
                            strcmp(type, "percent_bp") == 0 ? " (basis points: 500 = 5%)" : "");
            return -EINVAL;
        }
        return 0;
    }
    if (strcmp(type, "string") == 0 || strcmp(type, "date") == 0) {
        if (!json_is_string(v)) {
            loyd_buf_printf(err, "%s: expected %s, got %s\n", path,
                            type[0] == 's' ? "a string" : "a date \"YYYY-MM-DD\"", json_kind(v));
            return -EINVAL;
        }
        if (type[0] == 'd' && !valid_date(json_string_value(v))) {
            loyd_buf_printf(err, "%s: \"%s\" is not a valid date YYYY-MM-DD\n", path,
                            json_string_value(v));
            return -EINVAL;
        }
        return 0;
    }
    if (strcmp(type, "bool") == 0) {
        if (!json_is_boolean(v)) {
            loyd_buf_printf(err, "%s: expected true or false, got %s\n", path, json_kind(v));
            return -EINVAL;
        }
        return 0;
    }
    bool empty = (json_is_object(v) && json_object_size(v) == 0) ||
                 (json_is_array(v) && json_array_size(v) == 0);
    if (strcmp(type, "list") == 0) {
        if (!json_is_array(v) && !empty) {
            loyd_buf_printf(err, "%s: expected a list { ... }, got %s\n", path, json_kind(v));
            return -EINVAL;
        }
        if (of != NULL) {
            json_t *sub = json_pack("{s:s}", "type", of);
            size_t i;
            json_t *x;
            int rc = 0;
            json_array_foreach(v, i, x)
            {
                char p[256];
                snprintf(p, sizeof(p), "%s[%zu]", path, i + 1);
                if (check_typed(of, sub, x, p, err) != 0)
                    rc = -EINVAL;
            }
            json_decref(sub);
            return rc;
        }
        return 0;
    }
    if (strcmp(type, "map") == 0) {
        if (!json_is_object(v) && !empty) {
            loyd_buf_printf(err, "%s: expected a record { key = value, ... }, got %s\n", path,
                            json_kind(v));
            return -EINVAL;
        }
        if (of != NULL && json_is_object(v)) {
            json_t *sub = json_pack("{s:s}", "type", of);
            const char *k;
            json_t *x;
            int rc = 0;
            json_object_foreach((json_t *)v, k, x)
            {
                char p[256];
                snprintf(p, sizeof(p), "%s.%s", path, k);
                if (check_typed(of, sub, x, p, err) != 0)
                    rc = -EINVAL;
            }
            json_decref(sub);
            return rc;
        }
        return 0;
    }
    if (strcmp(type, "campaigns") == 0)
        return loyd_campaigns_check(v, path, NULL, err);
    if (strcmp(type, "table") == 0) {
        if (!json_is_object(v) && !json_is_array(v)) {
            loyd_buf_printf(err, "%s: expected a table, got %s\n", path, json_kind(v));
            return -EINVAL;
        }
        return 0;
    }
    loyd_buf_printf(err, "%s: unknown type '%s'\n", path, type);
    return -EINVAL;
}

int loyd_pack_check_value(const json_t *spec, const json_t *value, const char *path,
                          struct loyd_buf *err)
{
    const char *type = json_string_value(json_object_get(spec, "type"));

    if (type == NULL) {
        loyd_buf_printf(err, "%s: the schema gives no type\n", path);
        return -EINVAL;
    }
    return check_typed(type, spec, value, path, err);
}

/* Normalises a value for its type: an empty {} for a list becomes []. */
static json_t *normalise(const json_t *spec, json_t *v)
{
    const char *type = json_string_value(json_object_get(spec, "type"));

    if (type != NULL && (strcmp(type, "list") == 0 || strcmp(type, "campaigns") == 0) &&
        json_is_object(v) && json_object_size(v) == 0)
        return json_array();
    if (type != NULL && strcmp(type, "map") == 0 && json_is_array(v) && json_array_size(v) == 0)
        return json_object();
    return json_incref(v);
}

/* Validates the settings table of one pack.conf and merges it into p->schema. */
static int merge_schema(struct loyd_pack *p, const json_t *settings, const char *src,
                        struct loyd_buf *err)
{
    const char *key;
    json_t *spec;
    int rc = 0;

    if (settings == NULL)
        return 0;
    if (!json_is_object(settings)) {
        loyd_buf_printf(err,
                        "%s:%d: settings must be a record { name = { type = ..., default = "
                        "... }, ... }\n",
                        p->conf_path, loyd_pack_line_of(src, "settings"));
        return LOYD_ECONFIG;
    }
    json_object_foreach((json_t *)settings, key, spec)
    {
        int line = loyd_pack_line_of(src, key);
        char path[200];
        snprintf(path, sizeof(path), "%s:%d: setting '%s'", p->conf_path, line, key);
        if (!json_is_object(spec)) {
            loyd_buf_printf(err,
                            "%s: must be a record { type = ..., default = ..., help = ... "
                            "}\n",
                            path);
            rc = LOYD_ECONFIG;
            continue;
        }
        const char *f;
        json_t *fv;
        bool bad = false;
        json_object_foreach(spec, f, fv)
        {
            bool known = false;
            for (size_t i = 0; i < LOYD_ARRAY_SIZE(spec_fields); i++)
                known = known || strcmp(f, spec_fields[i]) == 0;
            if (!known) {
                loyd_buf_printf(err, "%s: unknown field '%s'", path, f);
                put_hint(err, loyd_suggest(f, spec_fields, LOYD_ARRAY_SIZE(spec_fields)));
                loyd_buf_puts(err, "\n");
                bad = true;
            }
        }
        json_t *base = json_object_get(p->schema, key);
        json_t *merged = base != NULL ? json_deep_copy(base) : json_object();
        json_object_update(merged, spec);
        const char *type = json_string_value(json_object_get(merged, "type"));
        if (base != NULL && json_object_get(spec, "type") != NULL &&
            !json_equal(json_object_get(spec, "type"), json_object_get(base, "type"))) {
            loyd_buf_printf(err,
                            "%s: a child pack may not change the type of an inherited "
                            "setting\n",
                            path);
            bad = true;
        } else if (type == NULL) {
            loyd_buf_printf(err,
                            "%s: needs a type (one of int, string, bool, percent_bp, days, "
                            "date, list, map, table, campaigns)\n",
                            path);
            bad = true;
        } else if (!known_type(type)) {
            loyd_buf_printf(err, "%s: unknown type '%s'", path, type);
            put_hint(err, loyd_suggest(type, types, LOYD_ARRAY_SIZE(types)));
            loyd_buf_puts(err, "\n");
            bad = true;
        } else {
            const char *of = json_string_value(json_object_get(merged, "of"));
            json_t *help = json_object_get(merged, "help");
            if (json_object_get(merged, "of") != NULL && (of == NULL || !known_type(of))) {
                loyd_buf_printf(err, "%s: 'of' must name a type", path);
                if (of != NULL)
                    put_hint(err, loyd_suggest(of, types, LOYD_ARRAY_SIZE(types)));
                loyd_buf_puts(err, "\n");
                bad = true;
            }
            if (help != NULL && !json_is_string(help)) {
                loyd_buf_printf(err, "%s: 'help' must be a string\n", path);
                bad = true;
            }
            json_t *def = json_object_get(merged, "default");
            if (def == NULL) {
                loyd_buf_printf(err, "%s: needs a default\n", path);
                bad = true;
            } else if (!bad && strcmp(type, "campaigns") == 0) {
                /* Each campaign's problems on its own line of pack.conf, not the key's. */
                char label[256];
                snprintf(label, sizeof(label), "setting '%s': default", key);
                struct loyd_campaigns_where w = {
                    .file = p->conf_path, .src = src, .line = line, .label = label};
                if (loyd_campaigns_check(def, NULL, &w, err) != 0)
                    bad = true;
            } else if (!bad) {
                char dpath[256];
                snprintf(dpath, sizeof(dpath), "%s: default", path);
                if (loyd_pack_check_value(merged, def, dpath, err) != 0)
                    bad = true;
            }
        }
        if (bad) {
            json_decref(merged);
            rc = LOYD_ECONFIG;
            continue;
        }
        json_t *def = normalise(merged, json_object_get(merged, "default"));
        json_object_set_new(merged, "default", def);
        json_object_set(p->defaults, key, def);
        json_object_set_new(p->schema, key, merged);
    }
    return rc;
}

/* ---- files ------------------------------------------------------------------------------- */

static int read_file(const char *path, char **out, size_t *len, struct loyd_buf *err)
{
    FILE *f = fopen(path, "rb");
    struct stat st;

    *out = NULL;
    if (f == NULL) {
        int e = errno;
        loyd_buf_printf(err, "%s: %s\n", path, strerror(e));
        return e == ENOENT ? -ENOENT : -e;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        loyd_buf_printf(err, "%s: not a regular file\n", path);
        fclose(f);
        return LOYD_ECONFIG;
    }
    if ((size_t)st.st_size > LOYD_PACK_MAX_FILE) {
        loyd_buf_printf(err, "%s: %lld bytes, limit %u\n", path, (long long)st.st_size,
                        LOYD_PACK_MAX_FILE);
        fclose(f);
        return LOYD_ECONFIG;
    }
    char *buf = loyd_xmalloc((size_t)st.st_size + 1);
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void file_free(struct loyd_pack_file *f)
{
    free(f->path);
    free(f->name);
    free(f->module);
    free(f->pack);
    free(f->src);
}

/* Reads every *.lua of dir/sub in name order into *files (appending). */
static int read_lua_dir(const struct loyd_pack *p, const char *sub, struct loyd_pack_file **files,
                        size_t *nfiles, struct loyd_buf *err)
{
    char *dpath = loyd_xasprintf("%s/%s", p->dir, sub);
    DIR *d = opendir(dpath);
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    struct dirent *de;

    if (d == NULL) {
        free(dpath);
        return 0; /* no rules/ or tests/ directory: nothing to load */
    }
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 4, ".lua") != 0 || de->d_name[0] == '.')
            continue;
        if (n == LOYD_PACK_MAX_FILES) {
            loyd_buf_printf(err, "%s: more than %u .lua files\n", dpath, LOYD_PACK_MAX_FILES);
            rc = LOYD_ECONFIG;
            break;
        }
        names = loyd_xrealloc(names, (n + 1) * sizeof(*names));
        names[n++] = loyd_xstrdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_str);
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct loyd_pack_file f = {0};
        f.path = loyd_xasprintf("%s/%s", dpath, names[i]);
        f.name = loyd_xstrdup(names[i]);
        f.pack = loyd_xstrdup(p->name);
        bool printable = strlen(f.path) <= 200;
        for (const char *c = f.path; printable && *c != '\0'; c++)
            printable = (unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f;
        f.module =
            printable ? loyd_xstrdup(f.path) : loyd_xasprintf("%s/%s/%s", p->name, sub, names[i]);
        if ((rc = read_file(f.path, &f.src, &f.len, err)) != 0) {
            file_free(&f);
            break;
        }
        *files = loyd_xrealloc(*files, (*nfiles + 1) * sizeof(**files));
        (*files)[(*nfiles)++] = f;
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(dpath);
    return rc;
}

void loyd_pack_destroy(struct loyd_pack *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nrules; i++)
        file_free(&p->rules[i]);
    for (size_t i = 0; i < p->ntests; i++)
        file_free(&p->tests[i]);
    free(p->rules);
    free(p->tests);
    free(p->dir);
    free(p->conf_path);
    free(p->name);
    free(p->version);
    free(p->description);
    free(p->extends);
    json_decref(p->schema);
    json_decref(p->defaults);
    json_decref(p->windows);
    json_decref(p->counters);
    free(p);
}

/* Where line @p line of @p src starts (the end of the text when it has fewer lines). */
static const char *line_start(const char *src, int line)
{
    for (int l = 1; l < line && *src != '\0'; src++)
        if (*src == '\n')
            l++;
    return src;
}

/* The line of the first "text" or 'text' at or after line @p from; @p from when none. */
static int line_of_string(const char *src, int from, const char *text)
{
    size_t n = strlen(text);
    int line = from;

    for (const char *c = line_start(src, from); *c != '\0'; c++) {
        if (*c == '\n')
            line++;
        else if ((*c == '"' || *c == '\'') && strncmp(c + 1, text, n) == 0 && c[n + 1] == *c)
            return line;
    }
    return from;
}

/* The line that assigns @p key at or after line @p from (a counter inside `counters`). */
static int line_of_key_from(const char *src, int from, const char *key)
{
    const char *start = line_start(src, from);
    int l = loyd_pack_line_of(start, key);
    /* line_of says 1 both for "on the first line" and "nowhere": either way, @p from. */
    return from + l - 1;
}

/* pack.conf `windows`: the purchase windows the member view adds (the base's stay). */
static int parse_windows(struct loyd_pack *p, const json_t *v, const char *src,
                         struct loyd_buf *err)
{
    int line = loyd_pack_line_of(src, "windows"), rc = 0;
    size_t i;
    json_t *w;

    if (v == NULL || (json_is_object(v) && json_object_size(v) == 0))
        return 0;
    if (!json_is_array(v)) {
        loyd_buf_printf(err,
                        "%s:%d: 'windows' must be a list of window names, e.g. windows = { "
                        "\"d90\", \"since:2026-01-01\" }\n",
                        p->conf_path, line);
        return LOYD_ECONFIG;
    }
    json_array_foreach(v, i, w)
    {
        const char *name = json_string_value(w);
        struct loyd_window win;
        struct loyd_buf e = {0};
        if (name == NULL) {
            loyd_buf_printf(err, "%s:%d: windows[%zu] must be a string such as \"d90\"\n",
                            p->conf_path, line, i + 1);
            rc = LOYD_ECONFIG;
            continue;
        }
        if (loyd_ledger_window_parse(name, &win, &e) != 0) {
            loyd_buf_printf(err, "%s:%d: %s\n", p->conf_path, line_of_string(src, line, name),
                            e.data);
            loyd_buf_free(&e);
            rc = LOYD_ECONFIG;
            continue;
        }
        /* d30 and d365 are always there; a window listed twice (or by the base) once. */
        bool dup = strcmp(name, "d30") == 0 || strcmp(name, "d365") == 0;
        size_t j;
        json_t *x;
        json_array_foreach(p->windows, j, x) dup = dup || strcmp(json_string_value(x), name) == 0;
        if (dup)
            continue;
        if (json_array_size(p->windows) >= LOYD_LEDGER_MAX_WINDOWS) {
            loyd_buf_printf(err, "%s:%d: more than %u windows\n", p->conf_path, line,
                            LOYD_LEDGER_MAX_WINDOWS);
            return LOYD_ECONFIG;
        }
        json_array_append(p->windows, w);
    }
    return rc;
}

/* A counter name: it may become a CRM field name, so letters, digits and _ only. */
static bool counter_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 ||
        !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

/* pack.conf `counters`: { stamps = { crm = true, help = "..." } } merged over the base's. */
static int parse_counters(struct loyd_pack *p, const json_t *v, const char *src,
                          struct loyd_buf *err)
{
    int line = loyd_pack_line_of(src, "counters"), rc = 0;
    const char *k;
    json_t *c;

    if (v == NULL)
        return 0;
    if (!json_is_object(v)) {
        loyd_buf_printf(err,
                        "%s:%d: 'counters' must be a record, e.g. counters = { stamps = { crm "
                        "= true } }\n",
                        p->conf_path, line);
        return LOYD_ECONFIG;
    }
    if (p->counters == NULL)
        p->counters = json_object();
    json_object_foreach((json_t *)v, k, c)
    {
        int cl = line_of_key_from(src, line, k);
        if (!counter_name_ok(k) || strcmp(k, "balance") == 0 || strcmp(k, "tier") == 0) {
            loyd_buf_printf(err,
                            "%s:%d: counter '%s': a counter name is 1..64 letters, digits and _ "
                            "(not balance or tier)\n",
                            p->conf_path, cl, k);
            rc = LOYD_ECONFIG;
            continue;
        }
        if (!json_is_object(c)) {
            loyd_buf_printf(err,
                            "%s:%d: counter '%s' must be a record: %s = {} or %s = { crm = true "
                            "}\n",
                            p->conf_path, cl, k, k, k);
            rc = LOYD_ECONFIG;
            continue;
        }
        const char *fk;
        json_t *fv;
        bool bad = false;
        json_object_foreach(c, fk, fv)
        {
            if (strcmp(fk, "crm") == 0 && !json_is_boolean(fv)) {
                loyd_buf_printf(err, "%s:%d: counter '%s': 'crm' must be true or false\n",
                                p->conf_path, cl, k);
                bad = true;
            } else if (strcmp(fk, "help") == 0 && !json_is_string(fv)) {
                loyd_buf_printf(err, "%s:%d: counter '%s': 'help' must be a string\n", p->conf_path,
                                cl, k);
                bad = true;
            } else if (strcmp(fk, "crm") != 0 && strcmp(fk, "help") != 0) {
                loyd_buf_printf(err, "%s:%d: counter '%s': unknown field '%s'", p->conf_path, cl, k,
                                fk);
                put_hint(err, loyd_suggest(fk, counter_fields, LOYD_ARRAY_SIZE(counter_fields)));
                loyd_buf_puts(err, "\n");
                bad = true;
            }
        }
        if (bad) {
            rc = LOYD_ECONFIG;
            continue;
        }
        if (json_object_get(p->counters, k) == NULL &&
            json_object_size(p->counters) >= MAX_COUNTERS) {
            loyd_buf_printf(err, "%s:%d: more than %d counters\n", p->conf_path, cl, MAX_COUNTERS);
            return LOYD_ECONFIG;
        }
        json_object_set_new(p->counters, k,
                            json_pack("{s:b}", "crm", json_is_true(json_object_get(c, "crm"))));
    }
    return rc;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Finds the directory of the base pack; @return new string or NULL. */
static char *resolve_base(const char *dir, const char *extends, const char *search_path)
{
    if (strchr(extends, '/') != NULL || extends[0] == '.') {
        char *p = extends[0] == '/' ? loyd_xstrdup(extends) : loyd_xasprintf("%s/%s", dir, extends);
        if (is_dir(p))
            return p;
        free(p);
        return NULL;
    }
    if (search_path != NULL) {
        const char *s = search_path;
        while (*s != '\0') {
            const char *e = strchr(s, ':');
            size_t l = e != NULL ? (size_t)(e - s) : strlen(s);
            if (l > 0) {
                char *p = loyd_xasprintf("%.*s/%s", (int)l, s, extends);
                if (is_dir(p))
                    return p;
                free(p);
            }
            s += l + (e != NULL);
        }
    }
    char *p = loyd_xasprintf("%s/../%s", dir, extends);
    if (is_dir(p))
        return p;
    free(p);
    return NULL;
}

static bool valid_pack_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '-'))
            return false;
    return true;
}

static int load_rec(const char *dir, const char *search_path, char **chain, int depth,
                    struct loyd_pack **out, struct loyd_buf *err)
{
    struct loyd_pack *p = loyd_xcalloc(1, sizeof(*p));
    json_t *conf = NULL;
    char *src = NULL, *real = NULL;
    size_t len;
    int rc;

    *out = NULL;
    p->dir = loyd_xstrdup(dir);
    p->conf_path = loyd_xasprintf("%s/pack.conf", dir);
    p->schema = json_object();
    p->defaults = json_object();
    p->windows = json_array();
    if ((rc = read_file(p->conf_path, &src, &len, err)) != 0)
        goto fail;
    if ((real = realpath(dir, NULL)) == NULL) {
        loyd_buf_printf(err, "%s: %s\n", dir, strerror(errno));
        rc = -ENOENT;
        goto fail;
    }
    for (int i = 0; i < depth; i++) {
        if (strcmp(chain[i], real) == 0) {
            loyd_buf_printf(err, "%s: extends chain loops back to %s\n", p->conf_path, dir);
            rc = LOYD_ECONFIG;
            goto fail;
        }
    }
    chain[depth] = real;
    if ((rc = loyd_pack_load_data(p->conf_path, src, len, &conf, err)) != 0)
        goto fail;
    if (!json_is_object(conf)) {
        loyd_buf_printf(err, "%s: must return a record { name = ..., version = ..., ... }\n",
                        p->conf_path);
        rc = LOYD_ECONFIG;
        goto fail;
    }
    const char *k;
    json_t *v;
    bool conf_bad = false;
    rc = 0;
    json_object_foreach(conf, k, v)
    {
        bool known = false;
        for (size_t i = 0; i < LOYD_ARRAY_SIZE(conf_fields); i++)
            known = known || strcmp(k, conf_fields[i]) == 0;
        if (!known) {
            loyd_buf_printf(err, "%s:%d: unknown key '%s'", p->conf_path, loyd_pack_line_of(src, k),
                            k);
            put_hint(err, loyd_suggest(k, conf_fields, LOYD_ARRAY_SIZE(conf_fields)));
            loyd_buf_puts(err, "\n");
            conf_bad = true; /* keep going: report the settings' problems too */
        }
    }
    static const char *const strfields[] = {"name", "version", "extends", "description"};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(strfields); i++) {
        v = json_object_get(conf, strfields[i]);
        if (v != NULL && !json_is_string(v)) {
            loyd_buf_printf(err, "%s:%d: '%s' must be a string\n", p->conf_path,
                            loyd_pack_line_of(src, strfields[i]), strfields[i]);
            rc = LOYD_ECONFIG;
        }
    }
    const char *name = json_string_value(json_object_get(conf, "name"));
    const char *version = json_string_value(json_object_get(conf, "version"));
    const char *extends = json_string_value(json_object_get(conf, "extends"));
    const char *desc = json_string_value(json_object_get(conf, "description"));
    if (name == NULL || !valid_pack_name(name)) {
        loyd_buf_printf(err, "%s:%d: 'name' is required: 1..64 characters of a-z 0-9 _ -\n",
                        p->conf_path, loyd_pack_line_of(src, "name"));
        rc = LOYD_ECONFIG;
    }
    if (version == NULL || *version == '\0') {
        loyd_buf_printf(err, "%s:%d: 'version' is required (e.g. \"1.0.0\")\n", p->conf_path,
                        loyd_pack_line_of(src, "version"));
        rc = LOYD_ECONFIG;
    }
    if (rc != 0)
        goto fail;
    p->name = loyd_xstrdup(name);
    p->version = loyd_xstrdup(version);
    p->description = desc != NULL ? loyd_xstrdup(desc) : NULL;
    json_t *points = json_object_get(conf, "points");
    struct loyd_buf perr = {0};
    if (loyd_points_unit_parse(points, &p->points, &perr) != 0) {
        loyd_buf_printf(err, "%s:%d: %s\n", p->conf_path, loyd_pack_line_of(src, "points"),
                        perr.data);
        loyd_buf_free(&perr);
        rc = LOYD_ECONFIG;
        goto fail;
    }

    if (extends != NULL) {
        p->extends = loyd_xstrdup(extends);
        if (depth + 1 >= LOYD_PACK_MAX_DEPTH) {
            loyd_buf_printf(err, "%s:%d: extends chain deeper than %d packs\n", p->conf_path,
                            loyd_pack_line_of(src, "extends"), LOYD_PACK_MAX_DEPTH);
            rc = LOYD_ECONFIG;
            goto fail;
        }
        char *bdir = resolve_base(dir, extends, search_path);
        if (bdir == NULL) {
            loyd_buf_printf(err, "%s:%d: extends '%s': no such pack (looked %s)\n", p->conf_path,
                            loyd_pack_line_of(src, "extends"), extends,
                            strchr(extends, '/') != NULL || extends[0] == '.'
                                ? "relative to the pack directory"
                                : "in the search path and next to this pack");
            rc = LOYD_ECONFIG;
            goto fail;
        }
        struct loyd_pack *base = NULL;
        rc = load_rec(bdir, search_path, chain, depth + 1, &base, err);
        free(bdir);
        if (rc != 0) {
            loyd_buf_printf(err, "%s:%d: while loading base pack '%s'\n", p->conf_path,
                            loyd_pack_line_of(src, "extends"), extends);
            goto fail;
        }
        json_decref(p->schema);
        json_decref(p->defaults);
        p->schema = json_incref(base->schema);
        p->defaults = json_incref(base->defaults);
        /* Take the base's rule files; its tests stay with it. */
        p->rules = base->rules;
        p->nrules = base->nrules;
        if (points == NULL) /* a child that declares no unit counts as its base does */
            p->points = base->points;
        /* A child adds windows and counters to its base's. */
        json_array_extend(p->windows, base->windows);
        if (base->counters != NULL)
            p->counters = json_deep_copy(base->counters);
        base->rules = NULL;
        base->nrules = 0;
        loyd_pack_destroy(base);
        json_t *s = json_deep_copy(p->schema), *d = json_deep_copy(p->defaults);
        json_decref(p->schema);
        json_decref(p->defaults);
        p->schema = s;
        p->defaults = d;
    }
    /* Every part reports what it finds before the load fails. */
    rc = merge_schema(p, json_object_get(conf, "settings"), src, err);
    int wrc = parse_windows(p, json_object_get(conf, "windows"), src, err);
    int crc = parse_counters(p, json_object_get(conf, "counters"), src, err);
    if (rc != 0 || wrc != 0 || crc != 0 || conf_bad) {
        rc = LOYD_ECONFIG;
        goto fail;
    }

    struct loyd_pack_file *own = NULL;
    size_t nown = 0;
    if ((rc = read_lua_dir(p, "rules", &own, &nown, err)) != 0) {
        for (size_t i = 0; i < nown; i++)
            file_free(&own[i]);
        free(own);
        goto fail;
    }
    for (size_t i = 0; i < nown; i++) {
        size_t j = 0;
        while (j < p->nrules && strcmp(p->rules[j].name, own[i].name) != 0)
            j++;
        if (j < p->nrules) {
            file_free(&p->rules[j]); /* the child's file replaces the base's, in place */
            p->rules[j] = own[i];
        } else {
            p->rules = loyd_xrealloc(p->rules, (p->nrules + 1) * sizeof(*p->rules));
            p->rules[p->nrules++] = own[i];
        }
    }
    free(own);
    if ((rc = read_lua_dir(p, "tests", &p->tests, &p->ntests, err)) != 0)
        goto fail;
    json_decref(conf);
    free(src);
    free(real);
    chain[depth] = NULL;
    *out = p;
    return 0;
fail:
    if (depth < LOYD_PACK_MAX_DEPTH && chain[depth] == real)
        chain[depth] = NULL;
    json_decref(conf);
    free(src);
    free(real);
    loyd_pack_destroy(p);
    return rc;
}

int loyd_pack_load(const char *dir, const char *search_path, struct loyd_pack **out,
                   struct loyd_buf *err)
{
    char *chain[LOYD_PACK_MAX_DEPTH] = {0};

    *out = NULL;
    if (dir == NULL || !is_dir(dir)) {
        loyd_buf_printf(err, "%s: no such pack directory\n", dir != NULL ? dir : "(null)");
        return -ENOENT;
    }
    return load_rec(dir, search_path, chain, 0, out, err);
}

int loyd_pack_settings(const struct loyd_pack *p, const json_t *overrides, const char *origin,
                       json_t **out, struct loyd_buf *err)
{
    json_t *eff = json_deep_copy(p->defaults);
    const char *k;
    json_t *v;
    int rc = 0;

    *out = NULL;
    if (origin == NULL)
        origin = "settings";
    if (overrides != NULL && !json_is_object(overrides)) {
        loyd_buf_printf(err, "%s: settings overrides must be a record { name = value, ... }\n",
                        origin);
        json_decref(eff);
        return LOYD_ECONFIG;
    }
    json_object_foreach((json_t *)overrides, k, v)
    {
        json_t *spec = json_object_get(p->schema, k);
        if (spec == NULL) {
            loyd_buf_printf(err, "%s: unknown setting '%s' for pack '%s'", origin, k, p->name);
            put_hint(err, suggest_key(k, p->schema));
            loyd_buf_puts(err, "\n");
            rc = LOYD_ECONFIG;
            continue;
        }
        char path[256];
        snprintf(path, sizeof(path), "%s: setting '%s'", origin, k);
        const char *type = json_string_value(json_object_get(spec, "type"));
        json_t *val = json_incref(v);
        if (strcmp(type, "map") == 0 && json_is_object(v)) {
            /* Maps merge over the default, so a tenant can change one tier's percent. */
            json_decref(val);
            val = json_deep_copy(json_object_get(spec, "default"));
            if (!json_is_object(val)) {
                json_decref(val);
                val = json_object();
            }
            json_object_update(val, v);
        }
        if (loyd_pack_check_value(spec, val, path, err) != 0) {
            json_decref(val);
            rc = LOYD_ECONFIG;
            continue;
        }
        json_object_set_new(eff, k, normalise(spec, val));
        json_decref(val);
    }
    if (rc != 0) {
        json_decref(eff);
        return rc;
    }
    *out = eff;
    return 0;
}
