/* SPDX-License-Identifier: MIT */
/*
 * The data-only Lua loader (see luadata.h): runs one file in an empty sandbox, converts the
 * resulting table to jansson, records which paths hold secrets and on which line each key was
 * written.  It owns a private lua_State for the duration of one call and nothing afterwards.
 */
#include "luadata.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

/* The instruction hook fires every HOOK_EVERY VM instructions. */
#define HOOK_EVERY 1000u
/* The chunk name Lua puts in front of its messages; replaced by the real file name. */
#define CHUNK_NAME "config"

/* Registry keys (their addresses are the keys). */
static const char secrets_key = 's';
static const char ctx_key = 'c';

struct load_ctx {
    /* Memory budget first: the allocator's ud is the context. */
    size_t mem_used, mem_limit;
    uint64_t ticks, max_ticks;
    bool killed;

    const char *name; /* file name for messages */
    const char *dir;  /* where file "PATH" resolves */
    struct loyd_buf *err;
    unsigned nerr;
    json_t *root;         /* conversion result (owned until handed out) */
    json_t *secrets;      /* path -> true */
    struct loyd_buf path; /* scratch for building paths */
    char *file_buf;       /* file helper's read buffer while Lua may still raise */
};

/* ---- memory and instruction budget ------------------------------------------------------ */

static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct load_ctx *c = ud;
    size_t old = ptr != NULL ? osize : 0; /* ptr == NULL: osize is a type tag */

    if (nsize == 0) {
        free(ptr);
        c->mem_used -= old;
        return NULL;
    }
    if (nsize > old && nsize - old > c->mem_limit - c->mem_used)
        return NULL; /* Lua raises LUA_ERRMEM */
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        c->mem_used = c->mem_used - old + nsize;
    return p;
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    void *ud;
    (void)ar;
    lua_getallocf(L, &ud);
    struct load_ctx *c = ud;
    if (!c->killed && ++c->ticks < c->max_ticks)
        return;
    /* Once killed, fire on every instruction so nothing gets further. */
    c->killed = true;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    /* Inside a hook, level 0 is the interrupted Lua function: name its line. */
    luaL_where(L, 0);
    lua_pushfstring(L, "the file exceeded its instruction budget (%d instructions; a loop?)",
                    (int)LOYD_LUADATA_INSTRUCTIONS);
    lua_concat(L, 2);
    lua_error(L);
}

static struct load_ctx *get_ctx(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ctx_key);
    struct load_ctx *c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return c;
}

/* ---- secrets ----------------------------------------------------------------------------- */

static void mark_secret(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &secrets_key);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/*
 * A string is secret if it is one of the env/file values or contains one (so
 * "Bearer " .. env "TOKEN" stays secret).  Over-marking is harmless: it only hides a value.
 */
static bool is_secret(lua_State *L, int idx)
{
    size_t len;
    const char *s;
    bool found = false;

    if (lua_type(L, idx) != LUA_TSTRING)
        return false;
    idx = lua_absindex(L, idx);
    s = lua_tolstring(L, idx, &len);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &secrets_key);
    lua_pushvalue(L, idx);
    found = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
    if (!found) {
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            size_t slen;
            const char *sec = lua_tolstring(L, -2, &slen);
            lua_pop(L, 1);
            if (slen >= LOYD_LUADATA_SCRUB_MIN && slen <= len && memmem(s, len, sec, slen)) {
                found = true;
                lua_pop(L, 1);
                break;
            }
        }
    }
    lua_pop(L, 1);
    return found;
}

void loyd_luadata_scrub_string(struct loyd_buf *b, size_t from, const char *secret, size_t len)
{
    static const char mask[] = "<secret>";
    struct loyd_buf out = {0};
    size_t i = from;

    if (len < LOYD_LUADATA_SCRUB_MIN || b->data == NULL || from >= b->len)
        return;
    if (memmem(b->data + from, b->len - from, secret, len) == NULL)
        return;
    loyd_buf_append(&out, b->data, from);
    while (i < b->len) {
        const char *hit = memmem(b->data + i, b->len - i, secret, len);
        if (hit == NULL) {
            loyd_buf_append(&out, b->data + i, b->len - i);
            break;
        }
        loyd_buf_append(&out, b->data + i, (size_t)(hit - (b->data + i)));
        loyd_buf_append(&out, mask, sizeof(mask) - 1);
        i = (size_t)(hit - b->data) + len;
    }
    loyd_buf_free(b);
    *b = out;
}

/* Scrubs every registered secret from the message at the top of the stack (replaced). */
static void scrub_top(lua_State *L, struct loyd_buf *msg)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &secrets_key);
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        size_t slen;
        const char *sec = lua_tolstring(L, -2, &slen);
        loyd_luadata_scrub_string(msg, 0, sec, slen);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* ---- reading files ----------------------------------------------------------------------- */

/*
 * Reads a regular file of at most @max bytes.  O_NONBLOCK keeps a FIFO from blocking the open;
 * the S_ISREG check then refuses it.  @return 0, -errno, or LOYD_ELIMIT when too big.
 */
static int read_capped(const char *path, size_t max, char **out, size_t *len)
{
    struct stat st;
    char *buf = NULL;
    size_t n = 0;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto done;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = -EISDIR;
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        goto done;
    }
    if ((uint64_t)st.st_size > max) {
        rc = LOYD_ELIMIT;
        goto done;
    }
    /* One byte more than allowed, to notice a file that grew since fstat. */
    buf = loyd_xmalloc(max + 2);
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto done;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            rc = LOYD_ELIMIT;
            goto done;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
done:
    free(buf);
    close(fd);
    return rc;
}

static char *join_dir(const char *dir, const char *path)
{
    if (path[0] == '/' || dir == NULL || dir[0] == '\0')
        return loyd_xstrdup(path);
    return loyd_xasprintf("%s/%s", dir, path);
}

/* ---- the two helpers --------------------------------------------------------------------- */

static const char *helper_arg(lua_State *L, const char *fn, size_t *len)
{
    if (lua_gettop(L) != 1 || lua_type(L, 1) != LUA_TSTRING)
        luaL_error(L, "%s expects one string, as in %s \"%s\"", fn, fn,
                   strcmp(fn, "env") == 0 ? "NAME" : "PATH");
    return lua_tolstring(L, 1, len);
}

static int l_env(lua_State *L)
{
    size_t len;
    const char *name = helper_arg(L, "env", &len);
    bool secret_name = is_secret(L, 1);

    if (len == 0 || memchr(name, '=', len) != NULL || strlen(name) != len)
        luaL_error(L, "env: invalid variable name");
    const char *v = getenv(name);
    if (v == NULL) {
        if (secret_name)
            luaL_error(L, "env: the environment variable named by a secret is not set");
        luaL_error(L, "env: environment variable '%s' is not set", name);
    }
    lua_pushstring(L, v);
    mark_secret(L, -1);
    return 1;
}

static int l_file(lua_State *L)
{
    size_t len, n = 0;
    const char *rel = helper_arg(L, "file", &len);
    bool secret_name = is_secret(L, 1);
    struct load_ctx *c = get_ctx(L);
    char *buf = NULL;
    char why[160];

    if (len == 0 || strlen(rel) != len)
        luaL_error(L, "file: invalid path");
    char *full = join_dir(c->dir, rel);
    int rc = read_capped(full, LOYD_LUADATA_FILE_MAX, &buf, &n);
    free(full);
    if (rc == 0 && memchr(buf, '\0', n) != NULL)
        rc = -EILSEQ;
    if (rc != 0) {
        free(buf);
        if (rc == LOYD_ELIMIT)
            snprintf(why, sizeof(why), "larger than %zu bytes", LOYD_LUADATA_FILE_MAX);
        else if (rc == -EILSEQ)
            snprintf(why, sizeof(why), "contains a NUL byte");
        else if (rc == -EINVAL)
            snprintf(why, sizeof(why), "not a regular file");
        else
            snprintf(why, sizeof(why), "%s", strerror(-rc));
        if (secret_name)
            luaL_error(L, "file: cannot read the file named by a secret: %s", why);
        luaL_error(L, "file: cannot read '%s': %s", rel, why);
    }
    /* Secret files usually end in one newline that is not part of the secret. */
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r')
            n--;
    }
    /* Pushing may raise a memory error (a longjmp): the context frees the buffer then. */
    c->file_buf = buf;
    lua_pushlstring(L, buf, n);
    c->file_buf = NULL;
    free(buf);
    mark_secret(L, -1);
    return 1;
}

/* ---- paths ------------------------------------------------------------------------------- */

static bool is_ident(const char *k, size_t n)
{
    if (n == 0 || !((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= 'A' && k[0] <= 'Z') || k[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++) {
        char ch = k[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return false;
    }
    return true;
}

void loyd_luadata_path_key(struct loyd_buf *b, const char *parent, const char *key, size_t klen)
{
    loyd_buf_puts(b, parent);
    if (is_ident(key, klen)) {
        if (parent[0] != '\0')
            loyd_buf_puts(b, ".");
        loyd_buf_append(b, key, klen);
        return;
    }
    /* Anything else is quoted with unprintable bytes escaped, so a path is always one safe
     * line of text, whatever the key holds. */
    loyd_buf_puts(b, "[\"");
    for (size_t i = 0; i < klen; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
            loyd_buf_printf(b, "\\x%02x", ch);
        else
            loyd_buf_append(b, &key[i], 1);
    }
    loyd_buf_puts(b, "\"]");
}

void loyd_luadata_path_index(struct loyd_buf *b, const char *parent, size_t index)
{
    loyd_buf_printf(b, "%s[%zu]", parent, index);
}

/* ---- messages ---------------------------------------------------------------------------- */

static void add_error(struct load_ctx *c, const char *path, const char *fmt, ...) LOYD_PRINTF(3, 4);

static void add_error(struct load_ctx *c, const char *path, const char *fmt, ...)
{
    va_list ap;
    char msg[512];

    c->nerr++;
    if (c->nerr > LOYD_LUADATA_MAX_ERRORS)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->nerr == LOYD_LUADATA_MAX_ERRORS) {
        loyd_buf_printf(c->err, "%s: too many errors, stopping\n", c->name);
        return;
    }
    if (path != NULL && path[0] != '\0') {
        /* Paths can be long (escaped keys); keep a line readable. */
        int plen = (int)strlen(path);
        loyd_buf_printf(c->err, "%s: key '%.*s%s': %s\n", c->name, plen > 200 ? 200 : plen, path,
                        plen > 200 ? "..." : "", msg);
    } else {
        loyd_buf_printf(c->err, "%s: %s\n", c->name, msg);
    }
}

/*
 * Turns Lua's "config:12: msg" into "FILE:12: msg" (and "msg" into "FILE: msg"), scrubbed of
 * secrets.
 */
static void add_lua_error(struct load_ctx *c, lua_State *L, int status)
{
    struct loyd_buf msg = {0};
    const char *m = lua_tostring(L, -1);
    const char *p = CHUNK_NAME ":";

    c->nerr++;
    if (status == LUA_ERRMEM) {
        loyd_buf_printf(c->err, "%s: the file needs more than %zu bytes of memory to evaluate\n",
                        c->name, c->mem_limit);
        return;
    }
    if (m == NULL)
        m = "(error object is not a string)";
    if (strncmp(m, p, strlen(p)) == 0 && m[strlen(p)] >= '0' && m[strlen(p)] <= '9') {
        loyd_buf_printf(&msg, "%s:%s\n", c->name, m + strlen(p));
    } else {
        loyd_buf_printf(&msg, "%s: %s\n", c->name, m);
    }
    scrub_top(L, &msg);
    loyd_buf_append(c->err, msg.data, msg.len);
    loyd_buf_free(&msg);
}

/* ---- conversion -------------------------------------------------------------------------- */

static const char *lua_kind(lua_State *L, int idx)
{
    return lua_typename(L, lua_type(L, idx));
}

/*
 * Converts the value at @idx.  @path is the value's path; @depth the nesting of the tables
 * holding it.  @return new json or NULL (an error has been recorded).
 */
static json_t *convert(lua_State *L, struct load_ctx *c, int idx, const char *path, int depth);

static bool utf8_valid(const char *s, size_t n)
{
    /* jansson validates strings it creates; borrow that check for keys. */
    json_t *j = json_stringn(s, n);
    json_decref(j);
    return j != NULL;
}

static json_t *convert_table(lua_State *L, struct load_ctx *c, int idx, const char *path, int depth)
{
    size_t count = 0;
    bool has_int = false, has_str = false, bad_key = false;
    lua_Integer max_int = 0;

    if (depth > LOYD_LUADATA_MAX_DEPTH) {
        add_error(c, path, "tables nested deeper than %d levels", LOYD_LUADATA_MAX_DEPTH);
        return NULL;
    }
    idx = lua_absindex(L, idx);

    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        count++;
        if (lua_type(L, -2) == LUA_TSTRING) {
            has_str = true;
        } else if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            has_int = true;
            if (lua_tointeger(L, -2) > max_int)
                max_int = lua_tointeger(L, -2);
        } else {
            bad_key = true;
        }
        lua_pop(L, 1);
    }
    if (bad_key) {
        add_error(c, path, "table keys must be names (strings) or array positions 1..n");
        return NULL;
    }
    if (has_int && has_str) {
        add_error(c, path, "table mixes array items and named keys");
        return NULL;
    }
    if (has_int) {
        if ((lua_Integer)count != max_int) {
            add_error(c, path, "array has holes (nil items)");
            return NULL;
        }
        json_t *arr = json_array();
        for (size_t i = 1; i <= count; i++) {
            loyd_buf_reset(&c->path);
            loyd_luadata_path_index(&c->path, path, i);
            char *ipath = loyd_xstrdup(c->path.data);
            lua_rawgeti(L, idx, (lua_Integer)i);
            json_t *v = convert(L, c, -1, ipath, depth);
            lua_pop(L, 1);
            free(ipath);
            if (v != NULL)
                json_array_append_new(arr, v);
        }
        return arr;
    }

    json_t *obj = json_object();
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen); /* a string: no conversion */
        if (is_secret(L, -2)) {
            add_error(c, path, "a table key comes from env/file; keys cannot be secret");
            lua_pop(L, 1);
            continue;
        }
        loyd_buf_reset(&c->path);
        loyd_luadata_path_key(&c->path, path, k, klen);
        char *kpath = loyd_xstrdup(c->path.data);
        if (strlen(k) != klen) {
            add_error(c, kpath, "key contains a NUL byte");
        } else if (!utf8_valid(k, klen)) {
            add_error(c, kpath, "key is not valid UTF-8");
        } else {
            json_t *v = convert(L, c, -1, kpath, depth);
            if (v != NULL)
                json_object_set_new(obj, k, v);
        }
        free(kpath);
        lua_pop(L, 1);
    }
    return obj;
}

static json_t *convert(lua_State *L, struct load_ctx *c, int idx, const char *path, int depth)
{
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return json_integer((json_int_t)lua_tointeger(L, idx));
        {
            /* Kept as a real so the schema can name it; every integer key rejects it. */
            json_t *r = json_real(lua_tonumber(L, idx));
            if (r == NULL)
                add_error(c, path, "number is not finite");
            return r;
        }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        bool secret = is_secret(L, idx);
        json_t *v;

        if (strlen(s) != len) {
            add_error(c, path, "string contains a NUL byte");
            return NULL;
        }
        if ((v = json_stringn(s, len)) == NULL) {
            add_error(c, path, "string is not valid UTF-8");
            return NULL;
        }
        if (secret)
            json_object_set_new(c->secrets, path, json_true());
        return v;
    }
    case LUA_TTABLE:
        return convert_table(L, c, idx, path, depth + 1);
    default:
        add_error(c, path,
                  "a %s cannot be a config value (only strings, numbers, booleans, "
                  "tables)",
                  lua_kind(L, idx));
        return NULL;
    }
}

/* Protected: lua_next and friends may raise on a broken table; args: ctx, table. */
static int l_convert(lua_State *L)
{
    struct load_ctx *c = lua_touserdata(L, 1);
    /* Reserve the whole stack up front: after this nothing in convert() raises, so nothing
     * it allocates can leak through a longjmp. */
    luaL_checkstack(L, 8 * (LOYD_LUADATA_MAX_DEPTH + 2), "config nesting");
    c->root = convert(L, c, 2, "", 0);
    return 0;
}

/* ---- the line scan ----------------------------------------------------------------------- */

/*
 * A small lexer over the (already valid) source that records the line of each `key =` and of
 * each table constructor, by path.  It follows table constructors and top-level assignments
 * (`a = {...}`, `a.b = 1`, `return {...}`); anything it cannot follow simply gets no line.
 */
enum tok {
    T_EOF,
    T_NAME,
    T_STRING,
    T_OTHER,
    T_ASSIGN,
    T_LBRACE,
    T_RBRACE,
    T_LBRACKET,
    T_RBRACKET,
    T_SEP,
    T_DOT
};

struct lexer {
    const char *s, *end;
    int line;
    /* current token */
    enum tok t;
    const char *tstart;
    size_t tlen;
    bool tescape; /* a string with escapes: its text is not its value */
    int tline;
};

static bool long_bracket(struct lexer *x, int *level)
{
    const char *p = x->s;
    int lvl = 0;
    if (p >= x->end || *p != '[')
        return false;
    p++;
    while (p < x->end && *p == '=') {
        lvl++;
        p++;
    }
    if (p >= x->end || *p != '[')
        return false;
    *level = lvl;
    x->s = p + 1;
    return true;
}

static void skip_long(struct lexer *x, int level)
{
    while (x->s < x->end) {
        if (*x->s == '\n')
            x->line++;
        if (*x->s == ']') {
            const char *p = x->s + 1;
            int l = 0;
            while (p < x->end && *p == '=') {
                l++;
                p++;
            }
            if (l == level && p < x->end && *p == ']') {
                x->s = p + 1;
                return;
            }
        }
        x->s++;
    }
}

static void lex_next(struct lexer *x)
{
    for (;;) {
        while (x->s < x->end && (*x->s == ' ' || *x->s == '\t' || *x->s == '\r' || *x->s == '\n' ||
                                 *x->s == '\f' || *x->s == '\v')) {
            if (*x->s == '\n')
                x->line++;
            x->s++;
        }
        if (x->s + 1 < x->end && x->s[0] == '-' && x->s[1] == '-') {
            int level;
            x->s += 2;
            if (long_bracket(x, &level)) {
                skip_long(x, level);
            } else {
                while (x->s < x->end && *x->s != '\n')
                    x->s++;
            }
            continue;
        }
        break;
    }
    x->tline = x->line;
    x->tstart = x->s;
    x->tescape = false;
    if (x->s >= x->end) {
        x->t = T_EOF;
        return;
    }
    char ch = *x->s;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_') {
        while (x->s < x->end && ((*x->s >= 'a' && *x->s <= 'z') || (*x->s >= 'A' && *x->s <= 'Z') ||
                                 (*x->s >= '0' && *x->s <= '9') || *x->s == '_'))
            x->s++;
        x->t = T_NAME;
        x->tlen = (size_t)(x->s - x->tstart);
        return;
    }
    if (ch == '"' || ch == '\'') {
        x->s++;
        x->tstart = x->s;
        while (x->s < x->end && *x->s != ch && *x->s != '\n') {
            if (*x->s == '\\') {
                x->tescape = true;
                x->s++;
                if (x->s < x->end && *x->s == '\n')
                    x->line++;
            }
            x->s++;
        }
        x->tlen = (size_t)(x->s - x->tstart);
        if (x->s < x->end)
            x->s++;
        x->t = T_STRING;
        return;
    }
    int level;
    if (ch == '[' && long_bracket(x, &level)) {
        skip_long(x, level);
        x->t = T_STRING;
        x->tescape = true; /* never used as a key */
        return;
    }
    x->s++;
    switch (ch) {
    case '=':
        if (x->s < x->end && *x->s == '=') {
            x->s++;
            x->t = T_OTHER;
        } else {
            x->t = T_ASSIGN;
        }
        return;
    case '<':
    case '>':
    case '~':
        if (x->s < x->end && *x->s == '=')
            x->s++;
        x->t = T_OTHER;
        return;
    case '{':
        x->t = T_LBRACE;
        return;
    case '}':
        x->t = T_RBRACE;
        return;
    case '[':
        x->t = T_LBRACKET;
        return;
    case ']':
        x->t = T_RBRACKET;
        return;
    case ',':
    case ';':
        x->t = T_SEP;
        return;
    case '.':
        if (x->s < x->end && *x->s == '.') {
            while (x->s < x->end && *x->s == '.')
                x->s++;
            x->t = T_OTHER;
        } else if (x->s < x->end && *x->s >= '0' && *x->s <= '9') {
            while (x->s < x->end &&
                   ((*x->s >= '0' && *x->s <= '9') || *x->s == 'e' || *x->s == 'E'))
                x->s++;
            x->t = T_OTHER;
        } else {
            x->t = T_DOT;
        }
        return;
    default:
        if (ch >= '0' && ch <= '9') {
            /* Numbers, including hex and exponents with signs. */
            while (x->s < x->end &&
                   ((*x->s >= '0' && *x->s <= '9') || (*x->s >= 'a' && *x->s <= 'z') ||
                    (*x->s >= 'A' && *x->s <= 'Z') || *x->s == '.' ||
                    ((*x->s == '+' || *x->s == '-') &&
                     (x->s[-1] == 'e' || x->s[-1] == 'E' || x->s[-1] == 'p' || x->s[-1] == 'P'))))
                x->s++;
        }
        x->t = T_OTHER;
        return;
    }
}

#define SCAN_MAX_FRAMES 40

struct frame {
    char *path;       /* NULL: a table we cannot name */
    size_t items;     /* positional items completed */
    bool field_start; /* at the start of a field */
    bool keyed;       /* the current field has a key */
    bool nonempty;    /* the current field has tokens */
    char *field_path; /* path of the current field's value, or NULL */
};

static void record_line(json_t *lines, const char *path, int line)
{
    if (path != NULL && json_object_get(lines, path) == NULL)
        json_object_set_new(lines, path, json_integer(line));
}

static void scan_lines(const char *src, size_t len, json_t *lines)
{
    struct lexer x = {.s = src, .end = src + len, .line = 1};
    struct frame fr[SCAN_MAX_FRAMES];
    int top = 0;         /* 0: the chunk (statements); >0: inside table constructors */
    char *target = NULL; /* chunk level: path a `{` would get */
    struct loyd_buf chain = {0};
    struct loyd_buf tmp = {0};

    /* Skip a leading "#!" line as Lua does. */
    if (len > 0 && src[0] == '#') {
        while (x.s < x.end && *x.s != '\n')
            x.s++;
    }
    lex_next(&x);
    while (x.t != T_EOF) {
        if (top == 0) {
            if (x.t == T_NAME && x.tlen == 6 && memcmp(x.tstart, "return", 6) == 0) {
                free(target);
                target = loyd_xstrdup("");
                lex_next(&x);
                continue;
            }
            if (x.t == T_NAME && x.tlen == 5 && memcmp(x.tstart, "local", 5) == 0) {
                free(target);
                target = NULL;
                lex_next(&x);
                /* Skip the local's names; its table is not part of the result. */
                while (x.t == T_NAME || x.t == T_SEP)
                    lex_next(&x);
                if (x.t == T_ASSIGN)
                    lex_next(&x);
                continue;
            }
            if (x.t == T_NAME) {
                /* A chain a.b.c; an assignment if `=` follows. */
                int line = x.tline;
                loyd_buf_reset(&chain);
                loyd_luadata_path_key(&chain, "", x.tstart, x.tlen);
                lex_next(&x);
                while (x.t == T_DOT) {
                    lex_next(&x);
                    if (x.t != T_NAME)
                        break;
                    loyd_buf_reset(&tmp);
                    loyd_luadata_path_key(&tmp, chain.data, x.tstart, x.tlen);
                    loyd_buf_reset(&chain);
                    loyd_buf_puts(&chain, tmp.data);
                    line = x.tline;
                    lex_next(&x);
                }
                if (x.t == T_ASSIGN) {
                    record_line(lines, chain.data, line);
                    free(target);
                    target = loyd_xstrdup(chain.data);
                    lex_next(&x);
                }
                continue;
            }
            if (x.t == T_LBRACE) {
                fr[0] = (struct frame){.path = target, .field_start = true};
                target = NULL;
                record_line(lines, fr[0].path, x.tline);
                top = 1;
                lex_next(&x);
                continue;
            }
            lex_next(&x);
            continue;
        }

        struct frame *f = &fr[top - 1];
        if (f->field_start) {
            f->field_start = false;
            f->keyed = false;
            f->nonempty = false;
            free(f->field_path);
            f->field_path = NULL;
            if (x.t == T_NAME) {
                const char *k = x.tstart;
                size_t kl = x.tlen;
                int line = x.tline;
                lex_next(&x);
                f->nonempty = true;
                if (x.t == T_ASSIGN) {
                    f->keyed = true;
                    if (f->path != NULL) {
                        loyd_buf_reset(&tmp);
                        loyd_luadata_path_key(&tmp, f->path, k, kl);
                        f->field_path = loyd_xstrdup(tmp.data);
                        record_line(lines, f->field_path, line);
                    }
                    lex_next(&x);
                }
                continue;
            }
            if (x.t == T_LBRACKET) {
                int line = x.tline;
                f->nonempty = true;
                lex_next(&x);
                if (x.t == T_STRING && !x.tescape) {
                    const char *k = x.tstart;
                    size_t kl = x.tlen;
                    lex_next(&x);
                    if (x.t == T_RBRACKET) {
                        lex_next(&x);
                        if (x.t == T_ASSIGN) {
                            f->keyed = true;
                            if (f->path != NULL) {
                                loyd_buf_reset(&tmp);
                                loyd_luadata_path_key(&tmp, f->path, k, kl);
                                f->field_path = loyd_xstrdup(tmp.data);
                                record_line(lines, f->field_path, line);
                            }
                            lex_next(&x);
                        }
                    }
                } else {
                    /* [expr] = value: a key we cannot name; skip to the `=`. */
                    int nest = 0;
                    while (x.t != T_EOF && !(x.t == T_RBRACKET && nest == 0)) {
                        nest += x.t == T_LBRACKET;
                        nest -= x.t == T_RBRACKET;
                        lex_next(&x);
                    }
                    lex_next(&x);
                    if (x.t == T_ASSIGN) {
                        f->keyed = true;
                        lex_next(&x);
                    }
                }
                continue;
            }
            if (x.t == T_RBRACE || x.t == T_SEP)
                goto structural;
            f->nonempty = true;
            if (f->path != NULL) {
                loyd_buf_reset(&tmp);
                loyd_luadata_path_index(&tmp, f->path, f->items + 1);
                f->field_path = loyd_xstrdup(tmp.data);
            }
            continue; /* re-examine this token as part of the value */
        }
    structural:
        switch (x.t) {
        case T_LBRACE:
            f->nonempty = true;
            if (top == SCAN_MAX_FRAMES)
                goto out; /* deeper than anything the loader accepts */
            fr[top] = (struct frame){.field_start = true};
            if (f->field_path == NULL && !f->keyed && f->path != NULL) {
                loyd_buf_reset(&tmp);
                loyd_luadata_path_index(&tmp, f->path, f->items + 1);
                f->field_path = loyd_xstrdup(tmp.data);
            }
            fr[top].path = f->field_path != NULL ? loyd_xstrdup(f->field_path) : NULL;
            record_line(lines, fr[top].path, x.tline);
            top++;
            break;
        case T_RBRACE:
        case T_SEP:
            if (f->nonempty && !f->keyed)
                f->items++;
            free(f->field_path);
            f->field_path = NULL;
            f->field_start = true;
            f->nonempty = false;
            f->keyed = false;
            if (x.t == T_RBRACE) {
                free(f->path);
                top--;
                if (top > 0)
                    fr[top - 1].nonempty = true;
            }
            break;
        default:
            f->nonempty = true;
            break;
        }
        lex_next(&x);
    }
out:
    while (top > 0) {
        top--;
        free(fr[top].path);
        free(fr[top].field_path);
    }
    free(target);
    loyd_buf_free(&chain);
    loyd_buf_free(&tmp);
}

/* ---- loading ----------------------------------------------------------------------------- */

static int run(struct load_ctx *c, const char *src, size_t len, struct loyd_luadata *out)
{
    lua_State *L = lua_newstate(budget_alloc, c);
    int rc = LOYD_ECONFIG, st;
    size_t nerr0 = c->nerr;

    if (L == NULL) {
        loyd_buf_printf(c->err, "%s: cannot create a Lua state\n", c->name);
        return -ENOMEM;
    }
    /* Everything that can raise runs under lua_pcall; a panic would only mean a bug here. */
    lua_pushlightuserdata(L, c);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ctx_key);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &secrets_key);

    st = luaL_loadbufferx(L, src, len, "=" CHUNK_NAME, "t");
    if (st != LUA_OK) {
        add_lua_error(c, L, st);
        goto done;
    }
    /*
     * The chunk's _ENV: an empty table whose metatable offers the two helpers.  Assignments
     * land in the table itself, so after the run it holds exactly the file's top-level keys.
     */
    lua_newtable(L); /* env */
    lua_newtable(L); /* its metatable */
    lua_newtable(L); /* helpers */
    lua_pushcfunction(L, l_env);
    lua_setfield(L, -2, "env");
    lua_pushcfunction(L, l_file);
    lua_setfield(L, -2, "file");
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_insert(L, -3); /* stack: env, chunk, env */
    if (lua_setupvalue(L, -2, 1) == NULL) {
        lua_pop(L, 1);
    }
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    st = lua_pcall(L, 0, 1, 0);
    lua_sethook(L, NULL, 0, 0);
    if (st != LUA_OK || c->killed) {
        add_lua_error(c, L, st);
        goto done;
    }
    /* stack: env, result */
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
    } else if (lua_istable(L, -1)) {
        lua_pushnil(L);
        if (lua_next(L, -3) != 0) {
            lua_pop(L, 2);
            add_error(c, NULL,
                      "the file both returns a table and assigns top-level keys; "
                      "use one form");
            goto done;
        }
    } else {
        add_error(c, NULL, "the file returns a %s; it must return a table or assign keys",
                  lua_kind(L, -1));
        goto done;
    }
    lua_pushcfunction(L, l_convert);
    lua_pushlightuserdata(L, c);
    lua_pushvalue(L, -3);
    st = lua_pcall(L, 2, 0, 0);
    if (st != LUA_OK) {
        add_lua_error(c, L, st);
        goto done;
    }
    if (c->nerr != nerr0 || c->root == NULL)
        goto done;
    out->value = c->root;
    c->root = NULL;
    out->secrets = c->secrets;
    c->secrets = NULL;
    out->lines = json_object();
    scan_lines(src, len, out->lines);
    rc = 0;
done:
    lua_close(L);
    return rc;
}

int loyd_luadata_load_buffer(const char *name, const char *dir, const char *src, size_t len,
                             struct loyd_luadata *out, struct loyd_buf *err)
{
    struct load_ctx c = {
        .mem_limit = LOYD_LUADATA_MEMORY,
        .max_ticks = LOYD_LUADATA_INSTRUCTIONS / HOOK_EVERY,
        .name = name,
        .dir = dir,
        .err = err,
        .secrets = json_object(),
    };
    int rc;

    *out = (struct loyd_luadata){0};
    rc = run(&c, src, len, out);
    free(c.file_buf);
    json_decref(c.root);
    json_decref(c.secrets);
    loyd_buf_free(&c.path);
    return rc;
}


int loyd_luadata_load_ex(const char *path, size_t max_bytes, struct loyd_luadata *out,
                         struct loyd_buf *err)
{
    char *src = NULL, *dir = NULL;
    size_t len = 0;
    int rc;

    *out = (struct loyd_luadata){0};
    if (max_bytes == 0)
        max_bytes = LOYD_LUADATA_MAX_BYTES;
    rc = read_capped(path, max_bytes, &src, &len);
    if (rc == LOYD_ELIMIT) {
        loyd_buf_printf(err, "%s: file is larger than %zu bytes\n", path, max_bytes);
        return LOYD_ECONFIG;
    }
    if (rc == -EINVAL) {
        loyd_buf_printf(err, "%s: not a regular file\n", path);
        return LOYD_ECONFIG;
    }
    if (rc != 0) {
        loyd_buf_printf(err, "%s: %s\n", path, strerror(-rc));
        return rc;
    }
    dir = loyd_dirname(path);
    rc = loyd_luadata_load_buffer(path, dir, src, len, out, err);
    free(src);
    free(dir);
    return rc;
}

void loyd_luadata_clear(struct loyd_luadata *d)
{
    json_decref(d->value);
    json_decref(d->secrets);
    json_decref(d->lines);
    *d = (struct loyd_luadata){0};
}

int loyd_luadata_load(const char *path, size_t max_bytes, json_t **out, json_t **secret_paths,
                      struct loyd_buf *err)
{
    struct loyd_luadata d;
    int rc = loyd_luadata_load_ex(path, max_bytes, &d, err);

    *out = NULL;
    if (secret_paths != NULL)
        *secret_paths = NULL;
    if (rc != 0)
        return rc;
    *out = d.value;
    d.value = NULL;
    if (secret_paths != NULL) {
        *secret_paths = d.secrets;
        d.secrets = NULL;
    }
    loyd_luadata_clear(&d);
    return 0;
}

/* ---- scrubbing by path ------------------------------------------------------------------- */

static void scrub_walk(struct loyd_buf *b, size_t from, const json_t *v, const char *path,
                       const json_t *secrets)
{
    struct loyd_buf p = {0};

    if (json_is_string(v)) {
        if (json_object_get(secrets, path) != NULL)
            loyd_luadata_scrub_string(b, from, json_string_value(v), json_string_length(v));
    } else if (json_is_object(v)) {
        const char *k;
        json_t *child;
        json_object_foreach((json_t *)v, k, child)
        {
            loyd_buf_reset(&p);
            loyd_luadata_path_key(&p, path, k, strlen(k));
            scrub_walk(b, from, child, p.data, secrets);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child)
        {
            loyd_buf_reset(&p);
            loyd_luadata_path_index(&p, path, i + 1);
            scrub_walk(b, from, child, p.data, secrets);
        }
    }
    loyd_buf_free(&p);
}

void loyd_luadata_scrub(struct loyd_buf *b, size_t from, const json_t *value, const json_t *secrets)
{
    if (secrets == NULL || json_object_size(secrets) == 0)
        return;
    scrub_walk(b, from, value, "", secrets);
}
