/* SPDX-License-Identifier: MIT */
/*
 * Configuration loading and validation (see config.h): the schema engine that checks a
 * loaded table against static field descriptions and collects every problem with the nearest
 * valid key, the plugin-schema variant of it, and the loaders that turn the daemon file and
 * the tenant files into structs.  Owns only what it returns.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "luadata.h"

/* Keys longer than this get no suggestion (the distance table lives on the stack). */
#define NEAREST_MAX_LEN 64
/* With no suggestion, list the valid keys when there are at most this many. */
#define LIST_KEYS_MAX 12

/* ---- nearest key ------------------------------------------------------------------------- */

/*
 * Optimal-string-alignment distance (Levenshtein plus adjacent transpositions) between @a and
 * @b; *prefix gets the distance between @a and the closest prefix of @b.
 */
static int osa_distance(const char *a, size_t n, const char *b, size_t m, int *prefix)
{
    int d[NEAREST_MAX_LEN + 1][NEAREST_MAX_LEN + 1];

    for (size_t i = 0; i <= n; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    *prefix = d[n][0];
    for (size_t j = 1; j <= m; j++)
        if (d[n][j] < *prefix)
            *prefix = d[n][j];
    return d[n][m];
}

const char *loyd_cfg_nearest(const char *key, const char *const *candidates)
{
    size_t n = strlen(key);
    const char *best = NULL;
    int best_score = 1 << 30;

    if (n == 0 || n > NEAREST_MAX_LEN)
        return NULL;
    for (const char *const *c = candidates; *c != NULL; c++) {
        size_t m = strlen(*c);
        int prefix, d, score;
        if (m > NEAREST_MAX_LEN)
            continue;
        d = osa_distance(key, n, *c, m, &prefix);
        /* A whole-key typo: close in absolute terms (<= 2) or relative ones (<= a third),
         * and never a rewrite of most of either word. */
        int limit = (int)(n > m ? n : m) / 3;
        if (limit < 2)
            limit = 2;
        if (d <= limit && d < (int)n && d < (int)m)
            score = 2 * d;
        /* A typo of a prefix (max_bdy for max_body_bytes, idle_timeout for idle_timeout_ms):
         * ranked just behind a whole-key typo of the same distance. */
        else if (n >= 4 && prefix <= (int)(n / 4 > 1 ? n / 4 : 1))
            score = 2 * prefix + 1;
        else
            continue;
        if (score < best_score) {
            best_score = score;
            best = *c;
        }
    }
    return best;
}

/* ---- messages ---------------------------------------------------------------------------- */

/* One message, kept until the run ends so messages can be put in file order. */
struct vmsg {
    int line;     /* 0: unknown */
    unsigned seq; /* order of discovery, for ties */
    char *text;
};

struct vctx {
    const struct loyd_cfg_source *src;
    struct loyd_buf *err;
    unsigned nerr;
    struct vmsg *msgs;
    size_t nmsgs, cap;
};

static int line_of(const struct vctx *v, const char *path)
{
    json_t *l = v->src->lines != NULL ? json_object_get(v->src->lines, path) : NULL;
    return l != NULL ? (int)json_integer_value(l) : 0;
}

static void verr(struct vctx *v, const char *path, int line, const char *fmt, ...)
    LOYD_PRINTF(4, 5);

/* Records `FILE[:LINE]: key 'PATH': MESSAGE`; @line 0 means unknown. */
static void verr(struct vctx *v, const char *path, int line, const char *fmt, ...)
{
    struct loyd_buf b = {0};
    va_list ap;
    int plen = (int)strlen(path);
    char msg[1024];

    v->nerr++;
    if (line > 0)
        loyd_buf_printf(&b, "%s:%d: ", v->src->file, line);
    else
        loyd_buf_printf(&b, "%s: ", v->src->file);
    if (plen > 0)
        loyd_buf_printf(&b, "key '%.*s%s': ", plen > 200 ? 200 : plen, path,
                        plen > 200 ? "..." : "");
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    loyd_buf_puts(&b, msg);
    loyd_buf_puts(&b, "\n");
    if (v->nmsgs == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 16;
        v->msgs = loyd_xrealloc(v->msgs, v->cap * sizeof(*v->msgs));
    }
    v->msgs[v->nmsgs] = (struct vmsg){.line = line, .seq = (unsigned)v->nmsgs, .text = b.data};
    v->nmsgs++;
}

/* Lines in file order; messages without a line (about the file as a whole) come last. */
static int cmp_vmsg(const void *a, const void *b)
{
    const struct vmsg *x = a, *y = b;
    int lx = x->line > 0 ? x->line : INT_MAX, ly = y->line > 0 ? y->line : INT_MAX;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Appends the recorded messages to the caller's buffer, sorted; @return the count. */
static unsigned vflush(struct vctx *v)
{
    if (v->nmsgs > 1)
        qsort(v->msgs, v->nmsgs, sizeof(*v->msgs), cmp_vmsg);
    for (size_t i = 0; i < v->nmsgs; i++) {
        loyd_buf_puts(v->err, v->msgs[i].text);
        free(v->msgs[i].text);
    }
    free(v->msgs);
    v->msgs = NULL;
    v->nmsgs = v->cap = 0;
    return v->nerr;
}

static bool path_secret(const struct vctx *v, const char *path)
{
    return v->src->secrets != NULL && json_object_get(v->src->secrets, path) != NULL;
}

static const char *kind_of(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "float";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_OBJECT:
        return "table";
    case JSON_ARRAY:
        return "list";
    case JSON_NULL:
        break;
    }
    return "nil";
}

static void child_path(struct loyd_buf *b, const char *parent, const char *key)
{
    loyd_buf_reset(b);
    loyd_luadata_path_key(b, parent, key, strlen(key));
}

/* Shows a key from the file safely (it may hold anything). */
static void quoted_key(struct loyd_buf *b, const char *k)
{
    loyd_buf_reset(b);
    loyd_luadata_path_key(b, "", k, strlen(k));
}

struct keyline {
    const char *key;
    int line;
};

static int cmp_keyline(const void *a, const void *b)
{
    const struct keyline *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return strcmp(x->key, y->key);
}

/*
 * Reports every key of @obj not in @names (NULL-terminated), in file order, with the nearest
 * valid key or, failing that, the list of valid ones.
 */
static void unknown_keys(struct vctx *v, const char *prefix, json_t *obj, const char *const *names)
{
    size_t n = json_object_size(obj), k = 0, nnames = 0;
    struct keyline *keys;
    struct loyd_buf p = {0}, list = {0};
    const char *key;
    json_t *val;

    if (n == 0)
        return;
    keys = loyd_xcalloc(n, sizeof(*keys));
    json_object_foreach(obj, key, val)
    {
        bool known = false;
        for (const char *const *nm = names; *nm != NULL; nm++)
            known |= strcmp(*nm, key) == 0;
        if (known)
            continue;
        child_path(&p, prefix, key);
        keys[k].key = key;
        keys[k].line = line_of(v, p.data);
        k++;
    }
    qsort(keys, k, sizeof(*keys), cmp_keyline);
    for (const char *const *nm = names; *nm != NULL; nm++)
        nnames++;
    for (size_t i = 0; i < nnames; i++)
        loyd_buf_printf(&list, "%s%s", i ? ", " : "", names[i]);
    for (size_t i = 0; i < k; i++) {
        const char *near = loyd_cfg_nearest(keys[i].key, names);
        child_path(&p, prefix, keys[i].key);
        if (near != NULL)
            verr(v, p.data, keys[i].line, "unknown key; did you mean '%s'?", near);
        else if (nnames == 0)
            verr(v, p.data, keys[i].line, "unknown key (this table takes no keys)");
        else if (nnames <= LIST_KEYS_MAX)
            verr(v, p.data, keys[i].line, "unknown key (valid keys here: %s)", list.data);
        else
            verr(v, p.data, keys[i].line, "unknown key");
    }
    free(keys);
    loyd_buf_free(&p);
    loyd_buf_free(&list);
}

/* ---- the schema engine ------------------------------------------------------------------- */

static const char *type_text(const struct loyd_cfg_field *f)
{
    switch (f->type) {
    case LOYD_CFG_STRING:
    case LOYD_CFG_ENUM:
        return "string";
    case LOYD_CFG_INT:
        return "integer";
    case LOYD_CFG_BOOL:
        return "boolean";
    case LOYD_CFG_MS:
        return "integer (milliseconds)";
    case LOYD_CFG_BYTES:
        return "integer (bytes)";
    case LOYD_CFG_TABLE:
    case LOYD_CFG_ANY:
    case LOYD_CFG_MAP:
        return "table";
    case LOYD_CFG_ARRAY:
        return "list";
    case LOYD_CFG_END:
        break;
    }
    return "?";
}

/* @return a new json value for the field's default, or NULL if it has none. */
static json_t *default_value(const struct loyd_cfg_field *f)
{
    switch (f->type) {
    case LOYD_CFG_TABLE:
    case LOYD_CFG_ANY:
    case LOYD_CFG_MAP:
        return f->def != NULL || f->type == LOYD_CFG_TABLE ? json_object() : NULL;
    case LOYD_CFG_ARRAY:
        return f->def != NULL ? json_array() : NULL;
    default:
        break;
    }
    if (f->def == NULL)
        return NULL;
    switch (f->type) {
    case LOYD_CFG_STRING:
    case LOYD_CFG_ENUM:
        return json_string(f->def);
    case LOYD_CFG_INT:
    case LOYD_CFG_MS:
    case LOYD_CFG_BYTES:
        return json_integer(strtoll(f->def, NULL, 10));
    case LOYD_CFG_BOOL:
        return json_boolean(strcmp(f->def, "true") == 0);
    default:
        return NULL;
    }
}

static void check_table(struct vctx *v, const char *prefix, const struct loyd_cfg_field *fields,
                        json_t *obj);

/*
 * Checks one value; @slot_parent/@slot_key or @slot_index say where it lives so an empty
 * table can be replaced by an empty list.
 */
static void check_value(struct vctx *v, const char *path, const struct loyd_cfg_field *f,
                        json_t *val, json_t **replace)
{
    int line = line_of(v, path);
    bool secret = f->secret || path_secret(v, path);

    switch (f->type) {
    case LOYD_CFG_STRING:
        if (!json_is_string(val)) {
            verr(v, path, line, "expected string, got %s", kind_of(val));
            return;
        }
        if (f->check != NULL) {
            const char *why = f->check(json_string_value(val));
            if (why != NULL) {
                if (secret)
                    verr(v, path, line, "invalid value: %s", why);
                else
                    verr(v, path, line, "invalid value \"%.100s\": %s", json_string_value(val),
                         why);
            }
        }
        return;
    case LOYD_CFG_ENUM: {
        struct loyd_buf list = {0};
        bool ok = false;
        for (const char *const *c = f->choices; *c != NULL; c++) {
            loyd_buf_printf(&list, "%s'%s'", c == f->choices ? "" : ", ", *c);
            ok |= json_is_string(val) && strcmp(*c, json_string_value(val)) == 0;
        }
        if (!json_is_string(val)) {
            verr(v, path, line, "expected one of %s, got %s", list.data, kind_of(val));
        } else if (!ok) {
            const char *near = secret ? NULL : loyd_cfg_nearest(json_string_value(val), f->choices);
            if (secret)
                verr(v, path, line, "expected one of %s", list.data);
            else if (near != NULL)
                verr(v, path, line, "expected one of %s, got \"%.100s\"; did you mean '%s'?",
                     list.data, json_string_value(val), near);
            else
                verr(v, path, line, "expected one of %s, got \"%.100s\"", list.data,
                     json_string_value(val));
        }
        loyd_buf_free(&list);
        return;
    }
    case LOYD_CFG_INT:
    case LOYD_CFG_MS:
    case LOYD_CFG_BYTES:
        if (!json_is_integer(val)) {
            if (json_is_real(val))
                verr(v, path, line, "expected %s, got float (write a whole number)", type_text(f));
            else
                verr(v, path, line, "expected %s, got %s", type_text(f), kind_of(val));
            return;
        }
        if (f->ranged && json_integer_value(val) < f->min)
            verr(v, path, line, "%lld is below the minimum %lld",
                 (long long)json_integer_value(val), (long long)f->min);
        else if (f->ranged && json_integer_value(val) > f->max)
            verr(v, path, line, "%lld is above the maximum %lld",
                 (long long)json_integer_value(val), (long long)f->max);
        return;
    case LOYD_CFG_BOOL:
        if (!json_is_boolean(val))
            verr(v, path, line, "expected boolean (true or false), got %s", kind_of(val));
        return;
    case LOYD_CFG_TABLE:
        if (json_is_object(val))
            check_table(v, path, f->fields, val);
        else
            verr(v, path, line, "expected table of named keys, got %s", kind_of(val));
        return;
    case LOYD_CFG_ANY:
        if (!json_is_object(val))
            verr(v, path, line, "expected table of named keys, got %s", kind_of(val));
        return;
    case LOYD_CFG_MAP:
        if (!json_is_object(val)) {
            verr(v, path, line, "expected table of named keys, got %s", kind_of(val));
        } else {
            struct loyd_buf p = {0};
            const char *k;
            json_t *item;
            void *tmp;
            json_object_foreach_safe(val, tmp, k, item)
            {
                json_t *rep = NULL;
                child_path(&p, path, k);
                check_value(v, p.data, f->elem, item, &rep);
                if (rep != NULL)
                    json_object_set_new(val, k, rep);
            }
            loyd_buf_free(&p);
        }
        return;
    case LOYD_CFG_ARRAY:
        /* {} is both an empty map and an empty list in Lua. */
        if (json_is_object(val) && json_object_size(val) == 0) {
            *replace = json_array();
            return;
        }
        if (!json_is_array(val)) {
            verr(v, path, line, "expected list, got %s", kind_of(val));
        } else {
            struct loyd_buf p = {0};
            for (size_t i = 0; i < json_array_size(val); i++) {
                json_t *rep = NULL;
                loyd_buf_reset(&p);
                loyd_luadata_path_index(&p, path, i + 1);
                check_value(v, p.data, f->elem, json_array_get(val, i), &rep);
                if (rep != NULL)
                    json_array_set_new(val, i, rep);
            }
            loyd_buf_free(&p);
        }
        return;
    case LOYD_CFG_END:
        return;
    }
}

static void check_table(struct vctx *v, const char *prefix, const struct loyd_cfg_field *fields,
                        json_t *obj)
{
    size_t n = 0;
    struct loyd_buf p = {0};

    for (const struct loyd_cfg_field *f = fields; f->name != NULL; f++)
        n++;
    const char **names = loyd_xcalloc(n + 1, sizeof(*names));
    for (size_t i = 0; i < n; i++)
        names[i] = fields[i].name;
    unknown_keys(v, prefix, obj, names);
    free(names);

    for (const struct loyd_cfg_field *f = fields; f->name != NULL; f++) {
        json_t *val = json_object_get(obj, f->name), *rep = NULL;
        child_path(&p, prefix, f->name);
        if (val == NULL) {
            if (f->required) {
                verr(v, p.data, line_of(v, prefix), "required key is missing");
                continue;
            }
            if ((val = default_value(f)) == NULL)
                continue;
            json_object_set_new(obj, f->name, val);
            /* Nested defaults: a missing table still gets its own keys' defaults. */
            if (f->type != LOYD_CFG_TABLE)
                continue;
        }
        check_value(v, p.data, f, val, &rep);
        if (rep != NULL)
            json_object_set_new(obj, f->name, rep);
    }
    loyd_buf_free(&p);
}

int loyd_cfg_validate(const struct loyd_cfg_source *src, const char *prefix,
                      const struct loyd_cfg_field *fields, json_t *obj, struct loyd_buf *err)
{
    struct vctx v = {.src = src, .err = err};

    if (!json_is_object(obj))
        verr(&v, prefix, line_of(&v, prefix), "expected table of named keys, got %s", kind_of(obj));
    else
        check_table(&v, prefix, fields, obj);
    return vflush(&v) ? LOYD_ECONFIG : 0;
}

/* ---- plugin schemas ---------------------------------------------------------------------- */

static const char *plugin_type_text(enum loyd_field_type t)
{
    switch (t) {
    case LOYD_FIELD_STRING:
    case LOYD_FIELD_SECRET:
        return "string";
    case LOYD_FIELD_INT:
        return "integer";
    case LOYD_FIELD_BOOL:
        return "boolean";
    case LOYD_FIELD_TABLE:
        return "table";
    case LOYD_FIELD_END:
        break;
    }
    return "?";
}

/* @return a new json for a plugin field's textual default, or NULL if it is malformed. */
static json_t *plugin_default(const struct loyd_config_field *f)
{
    const char *d = f->default_value;
    char *end;

    switch (f->type) {
    case LOYD_FIELD_STRING:
    case LOYD_FIELD_SECRET:
        return json_string(d);
    case LOYD_FIELD_INT: {
        errno = 0;
        long long x = strtoll(d, &end, 10);
        if (errno != 0 || end == d || *end != '\0')
            return NULL;
        return json_integer(x);
    }
    case LOYD_FIELD_BOOL:
        if (strcmp(d, "true") == 0)
            return json_true();
        if (strcmp(d, "false") == 0)
            return json_false();
        return NULL;
    case LOYD_FIELD_TABLE: {
        json_t *j = json_loads(d, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
        if (j != NULL && !json_is_object(j) && !json_is_array(j)) {
            json_decref(j);
            return NULL;
        }
        return j;
    }
    case LOYD_FIELD_END:
        break;
    }
    return NULL;
}

int loyd_config_validate_fields_src(const struct loyd_cfg_source *src, const char *prefix,
                                    const struct loyd_config_field *fields, json_t *obj,
                                    struct loyd_buf *err)
{
    struct vctx v = {.src = src, .err = err};
    struct loyd_buf p = {0};
    size_t n = 0;

    if (!json_is_object(obj)) {
        verr(&v, prefix, line_of(&v, prefix), "expected table of named keys, got %s", kind_of(obj));
        vflush(&v);
        return LOYD_ECONFIG;
    }
    for (const struct loyd_config_field *f = fields; f->type != LOYD_FIELD_END; f++)
        n++;
    const char **names = loyd_xcalloc(n + 1, sizeof(*names));
    for (size_t i = 0; i < n; i++)
        names[i] = fields[i].name;
    unknown_keys(&v, prefix, obj, names);
    free(names);

    for (const struct loyd_config_field *f = fields; f->type != LOYD_FIELD_END; f++) {
        json_t *val = json_object_get(obj, f->name);
        child_path(&p, prefix, f->name);
        int line = line_of(&v, p.data);
        if (val == NULL) {
            if (f->required) {
                verr(&v, p.data, line_of(&v, prefix), "required key is missing");
            } else if (f->default_value != NULL) {
                json_t *d = plugin_default(f);
                if (d == NULL)
                    verr(&v, p.data, 0,
                         "the plugin's schema has an invalid default for this "
                         "key (a plugin bug)");
                else
                    json_object_set_new(obj, f->name, d);
            }
            continue;
        }
        bool ok;
        switch (f->type) {
        case LOYD_FIELD_STRING:
        case LOYD_FIELD_SECRET:
            ok = json_is_string(val);
            break;
        case LOYD_FIELD_INT:
            ok = json_is_integer(val);
            break;
        case LOYD_FIELD_BOOL:
            ok = json_is_boolean(val);
            break;
        case LOYD_FIELD_TABLE:
            /* {} is an empty object from the loader; either shape is the plugin's call. */
            ok = json_is_object(val) || json_is_array(val);
            break;
        default:
            ok = false;
            break;
        }
        if (!ok) {
            if (f->type == LOYD_FIELD_INT && json_is_real(val))
                verr(&v, p.data, line, "expected integer, got float (write a whole number)");
            else
                verr(&v, p.data, line, "expected %s, got %s", plugin_type_text(f->type),
                     kind_of(val));
        }
    }
    loyd_buf_free(&p);
    return vflush(&v) ? LOYD_ECONFIG : 0;
}

int loyd_config_validate_fields(const char *file, const char *prefix,
                                const struct loyd_config_field *fields, json_t *obj,
                                struct loyd_buf *err)
{
    struct loyd_cfg_source src = {.file = file};
    return loyd_config_validate_fields_src(&src, prefix, fields, obj, err);
}

/* ---- helpers for the loaders ------------------------------------------------------------- */


static char *resolve(const char *dir, const char *p)
{
    if (p[0] == '/')
        return loyd_xstrdup(p);
    if (strcmp(dir, ".") == 0)
        return loyd_xstrdup(p);
    return loyd_xasprintf("%s/%s", dir, p);
}

static const char *get_str(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_int_t get_int(const json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* Splits a checked "HOST:PORT" / "[V6]:PORT". */
static void split_listen(const char *s, char **host, int *port)
{
    const char *colon;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        *host = loyd_xstrndup(s + 1, (size_t)(close - s - 1));
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        *host = loyd_xstrndup(s, (size_t)(colon - s));
    }
    *port = atoi(colon + 1);
}

/* Loads a file into @d and checks its root is a table of named keys. */
static int load_data(const char *path, struct loyd_luadata *d, struct loyd_buf *err)
{
    int rc = loyd_luadata_load_ex(path, 0, d, err);
    if (rc != 0)
        return rc;
    if (!json_is_object(d->value)) {
        loyd_buf_printf(err, "%s: the file must be a table of named keys, not a list\n", path);
        loyd_luadata_clear(d);
        return LOYD_ECONFIG;
    }
    return 0;
}

/* ---- the daemon file --------------------------------------------------------------------- */

void loyd_config_free(struct loyd_config *c)
{
    if (c == NULL)
        return;
    free(c->path);
    free(c->dir);
    free(c->listen_host);
    free(c->store);
    free(c->tenants_dir);
    free(c->packs_dir);
    json_decref(c->plugins);
    json_decref(c->raw);
    json_decref(c->secrets);
    json_decref(c->lines);
    free(c);
}

static void fill_daemon(struct loyd_config *c)
{
    const json_t *r = c->raw, *lim = json_object_get(r, "limits"),
                 *cli = json_object_get(r, "client"), *rul = json_object_get(r, "rules");

    split_listen(get_str(r, "listen"), &c->listen_host, &c->listen_port);
    c->store = resolve(c->dir, get_str(r, "store"));
    c->tenants_dir = resolve(c->dir, get_str(r, "tenants"));
    c->packs_dir = resolve(c->dir, get_str(r, "packs"));
    c->log_level = loyd_log_level_parse(get_str(r, "log_level"));
    /* The schema's ranges guarantee every value fits its C type. */
    c->limits.max_header_bytes = (size_t)get_int(lim, "max_header_bytes");
    c->limits.max_body_bytes = (size_t)get_int(lim, "max_body_bytes");
    c->limits.max_connections = (unsigned)get_int(lim, "max_connections");
    c->limits.idle_timeout_ms = (uint64_t)get_int(lim, "idle_timeout_ms");
    c->limits.read_timeout_ms = (uint64_t)get_int(lim, "read_timeout_ms");
    c->client.timeout_ms = (uint32_t)get_int(cli, "timeout_ms");
    c->client.connect_timeout_ms = (uint32_t)get_int(cli, "connect_timeout_ms");
    c->client.max_response_bytes = (size_t)get_int(cli, "max_response_bytes");
    c->rules.memory_bytes = (size_t)get_int(rul, "memory_bytes");
    c->rules.instructions = (uint64_t)get_int(rul, "instructions");
    c->rules.wall_ms = (uint64_t)get_int(rul, "wall_ms");
    const json_t *wrk = json_object_get(r, "worker");
    c->worker.batch = (uint32_t)get_int(wrk, "batch");
    c->worker.max_attempts = (uint32_t)get_int(wrk, "max_attempts");
    c->worker.retry_max_ms = (uint64_t)get_int(wrk, "retry_max_ms");
    c->worker.poll_ms = (uint64_t)get_int(wrk, "poll_ms");
    c->worker.sweep_interval_ms = (uint64_t)get_int(wrk, "sweep_interval_ms");
    c->worker.sync_on_start = json_is_true(json_object_get(wrk, "sync_on_start"));
    c->shutdown_timeout_ms = (uint64_t)get_int(r, "shutdown_timeout_ms");

    /* A copy with plugin paths resolved; raw keeps what the file said. */
    c->plugins = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(r, "plugins"), i, p)
    {
        json_t *q = json_object();
        json_object_set(q, "name", json_object_get(p, "name"));
        if (get_str(p, "path") != NULL) {
            char *rp = resolve(c->dir, get_str(p, "path"));
            json_object_set_new(q, "path", json_string(rp));
            free(rp);
        }
        json_object_set(q, "config", json_object_get(p, "config"));
        json_array_append_new(c->plugins, q);
    }
}

int loyd_config_load(const char *path, struct loyd_config **out, struct loyd_buf *err)
{
    struct loyd_luadata d;
    struct loyd_config *c = NULL;
    size_t from = err->len;
    int rc;

    *out = NULL;
    if ((rc = load_data(path, &d, err)) != 0)
        return rc;
    struct loyd_cfg_source src = {.file = path, .lines = d.lines, .secrets = d.secrets};
    struct vctx v = {.src = &src, .err = err};
    check_table(&v, "", loyd_config_daemon_schema, d.value);

    /* Two plugins of one name would fight over the same exported symbol and state. */
    json_t *plugins = json_object_get(d.value, "plugins");
    for (size_t i = 0; json_is_array(plugins) && i < json_array_size(plugins); i++) {
        const char *ni = get_str(json_array_get(plugins, i), "name");
        for (size_t j = 0; ni != NULL && j < i; j++) {
            const char *nj = get_str(json_array_get(plugins, j), "name");
            if (nj != NULL && strcmp(ni, nj) == 0) {
                struct loyd_buf p = {0};
                loyd_luadata_path_index(&p, "plugins", i + 1);
                verr(&v, p.data, line_of(&v, p.data),
                     "plugin '%s' is already listed as plugins[%zu]", ni, j + 1);
                loyd_buf_free(&p);
                break;
            }
        }
    }
    rc = vflush(&v) ? LOYD_ECONFIG : 0;
    if (rc != 0)
        goto fail;

    c = loyd_xcalloc(1, sizeof(*c));
    c->path = loyd_xstrdup(path);
    c->dir = loyd_dirname(path);
    c->raw = d.value;
    c->secrets = d.secrets;
    c->lines = d.lines;
    d = (struct loyd_luadata){0};
    fill_daemon(c);
    *out = c;
    return 0;
fail:
    /* Defence in depth: no message above prints a secret, but make sure. */
    loyd_luadata_scrub(err, from, d.value, d.secrets);
    loyd_luadata_clear(&d);
    return LOYD_ECONFIG;
}

int loyd_config_validate_plugin(const struct loyd_config *c, size_t index,
                                const struct loyd_config_field *fields, struct loyd_buf *err)
{
    struct loyd_cfg_source src = {.file = c->path, .lines = c->lines, .secrets = c->secrets};
    json_t *cfg = json_object_get(json_array_get(c->plugins, index), "config");
    struct loyd_buf p = {0};
    size_t from = err->len;
    int rc;

    if (cfg == NULL) {
        loyd_buf_printf(err, "%s: there is no plugins[%zu]\n", c->path, index + 1);
        return LOYD_ECONFIG;
    }
    loyd_buf_printf(&p, "plugins[%zu].config", index + 1);
    rc = loyd_config_validate_fields_src(&src, p.data, fields, cfg, err);
    loyd_buf_free(&p);
    loyd_luadata_scrub(err, from, c->raw, c->secrets);
    return rc;
}

/* ---- tenant files ------------------------------------------------------------------------ */

bool loyd_tenant_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 64)
        return false;
    for (; *name != '\0'; name++) {
        char ch = *name;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

void loyd_tenant_config_free(struct loyd_tenant_config *t)
{
    if (t == NULL)
        return;
    free(t->name);
    free(t->path);
    free(t->dir);
    free(t->connector);
    free(t->pack);
    free(t->timezone);
    free(t->path_secret);
    json_decref(t->crm);
    json_decref(t->settings);
    json_decref(t->raw);
    json_decref(t->secrets);
    json_decref(t->lines);
    free(t);
}

int loyd_tenant_config_load(const char *path, struct loyd_tenant_config **out, struct loyd_buf *err)
{
    struct loyd_luadata d = {0};
    struct loyd_tenant_config *t = NULL;
    const char *base = strrchr(path, '/');
    size_t from = err->len, blen;
    char *name;
    int rc = 0;

    *out = NULL;
    base = base != NULL ? base + 1 : path;
    blen = strlen(base);
    if (blen > 5 && strcmp(base + blen - 5, ".conf") == 0)
        blen -= 5;
    name = loyd_xstrndup(base, blen);
    if (!loyd_tenant_name_valid(name)) {
        struct loyd_buf q = {0};
        quoted_key(&q, name);
        loyd_buf_printf(err,
                        "%s: tenant name %s%s%s (the file name without .conf) must be "
                        "1-64 characters of a-z, 0-9, _ and -\n",
                        path, q.data[0] == '[' ? "" : "'", q.data, q.data[0] == '[' ? "" : "'");
        loyd_buf_free(&q);
        rc = LOYD_ECONFIG;
    }
    /* Validate the contents anyway, so one run shows every problem. */
    int lrc = load_data(path, &d, err);
    if (lrc != 0) {
        free(name);
        return rc != 0 ? rc : lrc;
    }
    struct loyd_cfg_source src = {.file = path, .lines = d.lines, .secrets = d.secrets};
    if (loyd_cfg_validate(&src, "", loyd_config_tenant_schema, d.value, err) != 0)
        rc = LOYD_ECONFIG;
    if (rc != 0)
        goto fail;

    t = loyd_xcalloc(1, sizeof(*t));
    t->name = name;
    t->path = loyd_xstrdup(path);
    t->dir = loyd_dirname(path);
    t->connector = loyd_xstrdup(get_str(d.value, "connector"));
    t->crm = json_incref(json_object_get(d.value, "crm"));
    t->pack = loyd_xstrdup(get_str(d.value, "pack"));
    t->settings = json_incref(json_object_get(d.value, "settings"));
    t->timezone = loyd_xstrdup(get_str(d.value, "timezone"));
    if (get_str(d.value, "path_secret") != NULL)
        t->path_secret = loyd_xstrdup(get_str(d.value, "path_secret"));
    t->enabled = json_is_true(json_object_get(d.value, "enabled"));
    t->raw = d.value;
    t->secrets = d.secrets;
    t->lines = d.lines;
    *out = t;
    return 0;
fail:
    free(name);
    loyd_luadata_scrub(err, from, d.value, d.secrets);
    /* path_secret is secret by schema even when written literally. */
    if (get_str(d.value, "path_secret") != NULL)
        loyd_luadata_scrub_string(err, from, get_str(d.value, "path_secret"),
                                  strlen(get_str(d.value, "path_secret")));
    loyd_luadata_clear(&d);
    return LOYD_ECONFIG;
}

int loyd_tenant_config_validate_crm(struct loyd_tenant_config *t,
                                    const struct loyd_config_field *fields, struct loyd_buf *err)
{
    struct loyd_cfg_source src = {.file = t->path, .lines = t->lines, .secrets = t->secrets};
    size_t from = err->len;
    int rc = loyd_config_validate_fields_src(&src, "crm", fields, t->crm, err);
    loyd_luadata_scrub(err, from, t->raw, t->secrets);
    return rc;
}

char *loyd_tenant_pack_dir(const struct loyd_config *c, const struct loyd_tenant_config *t)
{
    if (strchr(t->pack, '/') != NULL)
        return resolve(t->dir, t->pack);
    return loyd_xasprintf("%s/%s", c->packs_dir, t->pack);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void loyd_tenants_free(struct loyd_tenant_config **t, size_t n)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        loyd_tenant_config_free(t[i]);
    free(t);
}

int loyd_tenants_load_dir(const char *dir, struct loyd_tenant_config ***out, size_t *n,
                          struct loyd_buf *err)
{
    DIR *dh = opendir(dir);
    char **names = NULL;
    size_t nn = 0, cap = 0, ok = 0;
    struct loyd_tenant_config **ts = NULL;
    struct dirent *de;
    int rc = 0;

    *out = NULL;
    *n = 0;
    if (dh == NULL) {
        rc = -errno;
        if (rc == -ENOENT) {
            loyd_buf_printf(err, "%s: tenant directory does not exist\n", dir);
            return LOYD_ECONFIG;
        }
        loyd_buf_printf(err, "%s: cannot open the tenant directory: %s\n", dir, strerror(-rc));
        return rc;
    }
    while ((de = readdir(dh)) != NULL) {
        size_t len = strlen(de->d_name);
        /* Hidden files are editor and tool droppings (.x.conf.swp, .#x.conf). */
        if (de->d_name[0] == '.' || len <= 5 || strcmp(de->d_name + len - 5, ".conf") != 0)
            continue;
        if (nn == cap) {
            cap = cap ? cap * 2 : 16;
            names = loyd_xrealloc(names, cap * sizeof(*names));
        }
        names[nn++] = loyd_xstrdup(de->d_name);
    }
    closedir(dh);
    if (nn > 0)
        qsort(names, nn, sizeof(*names), cmp_str);

    ts = loyd_xcalloc(nn ? nn : 1, sizeof(*ts));
    for (size_t i = 0; i < nn; i++) {
        char *p = loyd_xasprintf("%s/%s", dir, names[i]);
        if (loyd_tenant_config_load(p, &ts[ok], err) == 0)
            ok++;
        else
            rc = LOYD_ECONFIG;
        free(p);
        free(names[i]);
    }
    free(names);
    if (rc != 0) {
        loyd_tenants_free(ts, ok);
        return rc;
    }
    *out = ts;
    *n = ok;
    return 0;
}
