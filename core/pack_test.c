/* SPDX-License-Identifier: MIT */
/*
 * `loyd test` and `loyd check` (see rules.h).  A test file is Lua data evaluated in the pack's
 * own sandbox and returns a list of cases:
 *   { name = "...", now = "2026-03-01", tz_offset_min = 0, settings = { overrides },
 *     matrix = { acme = { overrides } | "path/to/tenant.conf", ... },
 *     member = { id, balance, tier, lots = {{points, expires, ref}}, birthday, referrer,
 *                attributes, last_birthday_offer_year, counters = {name = n},
 *                spend = {d30,d365,total},
 *                purchases = {d30,d365,total}, history = {{amount, date, deal_id}} },
 *     events = { {type = "deal.won", date = "2026-03-02", deal = {...}}, ... },
 *     expect = { effects = {...}, rejected = {...}, outbox = {...}, balance = n, tier = "...",
 *                attributes = {...}, error = "substring",
 *                members = { ["7"] = { balance = n, ledger = {...} } } } }
 * The list may also carry a `matrix` for every case of the file: { matrix = {...}, {case}, ... }.
 * Events of one case run in order through the real engine and ledger math; the state (ledger
 * rows, member row, purchase history, other members' rows) carries from one event to the next.
 *
 * Settings of a case, lowest first: the pack's defaults, the `--tenant` file's `settings`, the
 * matrix entry, the case's own `settings` (maps merge key by key at every step, as a tenant's
 * overrides merge over the defaults).  A case runs once per matrix entry ("name [acme]").
 *
 * Test data is validated before anything runs, by the same code for `loyd check` and `loyd
 * test`: unknown fields, event types and settings are reported as "file:line: message" with the
 * nearest valid name.  Lines are found in the source (the case's name, then the key after it):
 * best effort, since the cases reach C as JSON.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "ledger.h"
#include "luadata.h"
#include "pack.h"
#include "rules.h"

#define NOON_MS (12LL * 3600 * 1000)

static const char *const file_fields[] = {"matrix"};
static const char *const case_fields[] = {"name",   "now",    "tz_offset_min", "settings",
                                          "member", "events", "expect",        "matrix"};
static const char *const member_fields[] = {
    "id",       "balance",   "tier",       "lots",
    "birthday", "referrer",  "attributes", "last_birthday_offer_year",
    "spend",    "purchases", "history",    "counters"};
static const char *const expect_fields[] = {"effects", "rejected",   "outbox",  "balance", "tier",
                                            "error",   "attributes", "members", "counters"};
static const char *const other_member_fields[] = {"balance", "ledger"};
static const char *const event_fields[] = {"type", "key",     "at",     "date",
                                           "deal", "contact", "reason", "offer"};

/* ---- rendering and matching ---------------------------------------------------------------- */

static void render(struct loyd_buf *b, const json_t *v);

static int cmp_keys(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    /* kind first, then alphabetical: effects read like their constructor calls. */
    if (strcmp(x, "kind") == 0)
        return -1;
    if (strcmp(y, "kind") == 0)
        return 1;
    return strcmp(x, y);
}

static void render(struct loyd_buf *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        const char **keys = loyd_xcalloc(n + 1, sizeof(*keys));
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) keys[i++] = k;
        qsort(keys, n, sizeof(*keys), cmp_keys);
        loyd_buf_puts(b, "{");
        for (i = 0; i < n; i++) {
            loyd_buf_printf(b, "%s%s=", i ? ", " : "", keys[i]);
            render(b, json_object_get(v, keys[i]));
        }
        loyd_buf_puts(b, "}");
        free(keys);
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        loyd_buf_puts(b, "{");
        json_array_foreach(v, i, x)
        {
            if (i)
                loyd_buf_puts(b, ", ");
            render(b, x);
        }
        loyd_buf_puts(b, "}");
        break;
    }
    case JSON_STRING:
        loyd_buf_printf(b, "\"%s\"", json_string_value(v));
        break;
    case JSON_INTEGER:
        loyd_buf_printf(b, "%lld", (long long)json_integer_value(v));
        break;
    case JSON_REAL:
        loyd_buf_printf(b, "%g", json_real_value(v));
        break;
    case JSON_TRUE:
        loyd_buf_puts(b, "true");
        break;
    case JSON_FALSE:
        loyd_buf_puts(b, "false");
        break;
    default:
        loyd_buf_puts(b, "null");
    }
}

/* Every field of @p want equals the same field of @p got ("reason" may also be a substring
 * when want_substring_reason). */
static bool subset(const json_t *want, const json_t *got)
{
    const char *k;
    json_t *v;

    if (!json_is_object(want))
        return json_equal(want, got);
    if (!json_is_object(got))
        return false;
    json_object_foreach((json_t *)want, k, v)
    {
        json_t *g = json_object_get(got, k);
        if (g == NULL)
            return false;
        if (json_is_object(v) ? !subset(v, g) : !json_equal(v, g))
            return false;
    }
    return true;
}

/* Ordered list comparison with subset match; prints a -/+ diff when they differ. */
static bool match_list(const char *what, const json_t *want, const json_t *got,
                       struct loyd_buf *diff)
{
    size_t nw = json_array_size(want), ng = json_array_size(got);
    bool ok = nw == ng;

    for (size_t i = 0; ok && i < nw; i++)
        ok = subset(json_array_get(want, i), json_array_get(got, i));
    if (ok)
        return true;
    loyd_buf_printf(diff, "      %s (- expected, + actual):\n", what);
    for (size_t i = 0; i < (nw > ng ? nw : ng); i++) {
        const json_t *w = json_array_get(want, i), *g = json_array_get(got, i);
        struct loyd_buf a = {0}, b = {0};
        if (w != NULL && g != NULL && subset(w, g)) {
            render(&b, g);
            loyd_buf_printf(diff, "        %s\n", b.data);
        } else {
            if (w != NULL) {
                render(&a, w);
                loyd_buf_printf(diff, "      - %s\n", a.data);
            }
            if (g != NULL) {
                render(&b, g);
                loyd_buf_printf(diff, "      + %s\n", b.data);
            }
        }
        loyd_buf_free(&a);
        loyd_buf_free(&b);
    }
    return false;
}

/* Expected items must appear in @p got in the same order (other items may come between). */
static bool match_subsequence(const char *what, const json_t *want, const json_t *got,
                              struct loyd_buf *diff)
{
    size_t j = 0, i;
    json_t *w;

    json_array_foreach(want, i, w)
    {
        while (j < json_array_size(got) && !subset(w, json_array_get(got, j)))
            j++;
        if (j == json_array_size(got)) {
            struct loyd_buf a = {0};
            render(&a, w);
            loyd_buf_printf(diff, "      %s: expected (in order) but missing:\n      - %s\n", what,
                            a.data);
            loyd_buf_free(&a);
            json_array_foreach(got, j, w)
            {
                struct loyd_buf b = {0};
                render(&b, w);
                loyd_buf_printf(diff, "      + %s\n", b.data);
                loyd_buf_free(&b);
            }
            return false;
        }
        j++;
    }
    return true;
}

/* ---- building a case's state ------------------------------------------------------------- */

static bool unknown_fields(const json_t *obj, const char *const *known, size_t n, const char *where,
                           struct loyd_buf *err)
{
    const char *k;
    json_t *v;
    bool bad = false;

    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (size_t i = 0; i < n; i++)
            ok = ok || strcmp(k, known[i]) == 0;
        if (!ok) {
            const char *s = loyd_suggest(k, known, n);
            loyd_buf_printf(err, "%s: unknown field '%s'", where, k);
            if (s != NULL)
                loyd_buf_printf(err, " (did you mean '%s'?)", s);
            loyd_buf_puts(err, "\n");
            bad = true;
        }
    }
    return bad;
}

static int64_t jint(const json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* Ledger rows and purchase history for the case's member. */
static int build_state(const json_t *m, int64_t now, int tz, json_t **rows_out,
                       json_t **purchases_out, struct loyd_buf *err)
{
    json_t *rows = json_array(), *pur = json_array();
    json_t *lots = json_object_get(m, "lots");
    int64_t id = 0, sum = 0;
    size_t i;
    json_t *l;

    *rows_out = rows;
    *purchases_out = pur;
    json_array_foreach(lots, i, l)
    {
        int64_t p = jint(l, "points"), exp = 0;
        const char *e = json_string_value(json_object_get(l, "expires"));
        if (p <= 0) {
            loyd_buf_printf(err, "member.lots[%zu].points must be a positive integer\n", i + 1);
            return -EINVAL;
        }
        if (e != NULL) {
            if (loyd_date_parse(e, tz, &exp) != 0) {
                loyd_buf_printf(err, "member.lots[%zu].expires: \"%s\" is not a date\n", i + 1, e);
                return -EINVAL;
            }
            exp += LOYD_DAY_MS; /* points can be spent through that day */
        }
        json_t *row =
            json_pack("{s:I, s:s, s:I, s:I, s:I, s:s}", "id", (json_int_t)++id, "kind", "award",
                      "points", (json_int_t)p, "at", (json_int_t)(now - LOYD_DAY_MS), "expires_ms",
                      (json_int_t)exp, "reason", "test: opening lot");
        if (json_is_string(json_object_get(l, "ref")))
            json_object_set(row, "ref", json_object_get(l, "ref"));
        json_array_append_new(rows, row);
        sum += p;
    }
    json_t *bal = json_object_get(m, "balance");
    if (bal != NULL) {
        int64_t b = json_integer_value(bal);
        if (!json_is_integer(bal)) {
            loyd_buf_puts(err, "member.balance must be an integer\n");
            return -EINVAL;
        }
        if (b != sum && json_array_size(lots) > 0 && b > sum) {
            json_array_append_new(rows,
                                  json_pack("{s:I, s:s, s:I, s:I, s:s}", "id", (json_int_t)++id,
                                            "kind", "adjust", "points", (json_int_t)(b - sum), "at",
                                            (json_int_t)(now - LOYD_DAY_MS), "reason",
                                            "test: opening balance"));
        } else if (b != sum && json_array_size(lots) == 0 && b != 0) {
            json_array_append_new(rows,
                                  json_pack("{s:I, s:s, s:I, s:I, s:s}", "id", (json_int_t)++id,
                                            "kind", "adjust", "points", (json_int_t)b, "at",
                                            (json_int_t)(now - LOYD_DAY_MS), "reason",
                                            "test: opening balance"));
        } else if (b < sum) {
            loyd_buf_puts(err, "member.balance is below the sum of member.lots\n");
            return -EINVAL;
        }
    }
    json_t *hist = json_object_get(m, "history");
    json_array_foreach(hist, i, l)
    {
        int64_t at = now - LOYD_DAY_MS;
        const char *d = json_string_value(json_object_get(l, "date"));
        if (d != NULL && loyd_date_parse(d, tz, &at) != 0) {
            loyd_buf_printf(err, "member.history[%zu].date is not a date\n", i + 1);
            return -EINVAL;
        }
        if (d != NULL)
            at += NOON_MS;
        json_t *p =
            json_pack("{s:I, s:I}", "amount", (json_int_t)jint(l, "amount"), "at", (json_int_t)at);
        char did[32];
        snprintf(did, sizeof(did), "h%zu", i + 1);
        json_object_set_new(p, "deal_id",
                            json_is_string(json_object_get(l, "deal_id"))
                                ? json_incref(json_object_get(l, "deal_id"))
                                : json_string(did));
        json_array_append_new(pur, p);
    }
    /* A summary {d30, d365, total} becomes one synthetic purchase per window band. */
    json_t *spend = json_object_get(m, "spend"), *cnt = json_object_get(m, "purchases");
    if (spend != NULL || cnt != NULL) {
        int64_t s30 = jint(spend, "d30"), s365 = jint(spend, "d365"), st = jint(spend, "total");
        int64_t c30 = jint(cnt, "d30"), c365 = jint(cnt, "d365"), ct = jint(cnt, "total");
        if (s365 < s30)
            s365 = s30;
        if (st < s365)
            st = s365;
        if (c365 < c30)
            c365 = c30;
        if (ct < c365)
            ct = c365;
        int64_t band_amount[3] = {s30, s365 - s30, st - s365};
        int64_t band_count[3] = {c30, c365 - c30, ct - c365};
        int64_t band_age[3] = {1, 200, 400};
        for (int k = 0; k < 3; k++) {
            int64_t n = band_count[k];
            if (n == 0 && band_amount[k] > 0)
                n = 1;
            for (int64_t j = 0; j < n; j++) {
                int64_t amount = band_amount[k] / n + (j == 0 ? band_amount[k] % n : 0);
                char did[32];
                snprintf(did, sizeof(did), "s%d-%lld", k, (long long)j);
                json_array_append_new(
                    pur, json_pack("{s:s, s:I, s:I}", "deal_id", did, "amount", (json_int_t)amount,
                                   "at", (json_int_t)(now - band_age[k] * LOYD_DAY_MS)));
            }
        }
    }
    return 0;
}

/* ---- where things are in a test file ----------------------------------------------------- */

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

/* The line that assigns @p key at or after line @p from; @p from when none. */
static int line_of_key(const char *src, int from, const char *key)
{
    /* loyd_pack_line_of says 1 both for "on the first line" and "nowhere": either way, from. */
    return from + loyd_pack_line_of(line_start(src, from), key) - 1;
}

/* Appends "file:line: message\n". */
LOYD_PRINTF(4, 5)
static void problem(struct loyd_buf *out, const char *file, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    loyd_buf_printf(out, "%s:%d: %s\n", file, line, msg);
}

/* Unknown keys of @p obj, each at the line that writes it (searched from @p from).
 * @return the number of problems. */
static size_t unknown_keys(const json_t *obj, const char *const *known, size_t n, const char *what,
                           const struct loyd_pack_file *f, int from, struct loyd_buf *out)
{
    const char *k;
    json_t *v;
    size_t bad = 0;

    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (size_t i = 0; i < n; i++)
            ok = ok || strcmp(k, known[i]) == 0;
        if (ok)
            continue;
        const char *s = loyd_suggest(k, known, n);
        char hint[128] = "";
        if (s != NULL)
            snprintf(hint, sizeof(hint), " (did you mean '%s'?)", s);
        problem(out, f->path, line_of_key(f->src, from, k), "%s: unknown field '%s'%s", what, k,
                hint);
        bad++;
    }
    return bad;
}

/* Settings overrides checked against the pack; messages are "file:line: LABEL: ...".
 * @return the number of problems (each setting separately, so every one gets its line). */
static size_t check_overrides(const struct loyd_pack *pack, const json_t *ov, const char *label,
                              const char *file, const char *src, int from, const json_t *lines,
                              struct loyd_buf *out)
{
    const char *k;
    json_t *v;
    size_t bad = 0;

    if (!json_is_object(ov)) {
        problem(out, file, from, "%s must be a record { name = value, ... }", label);
        return 1;
    }
    json_object_foreach((json_t *)ov, k, v)
    {
        json_t *one = json_pack("{s:O}", k, v), *eff = NULL;
        char *path = loyd_xasprintf("settings.%s", k);
        int line = lines != NULL ? (int)json_integer_value(json_object_get(lines, path)) : 0;
        if (line <= 0)
            line = src != NULL ? line_of_key(src, from, k) : from;
        char *origin = loyd_xasprintf("%s:%d: %s", file, line, label);
        if (loyd_pack_settings(pack, one, origin, &eff, out) != 0)
            bad++;
        json_decref(eff);
        json_decref(one);
        free(origin);
        free(path);
    }
    return bad;
}

/*
 * The `settings` of a tenant file, for tests.  Only `pack` and `settings` are read: the
 * file's env "NAME" and file "PATH" helpers yield "" here, so no secret is needed (or read)
 * to test with a tenant's real settings.  The tenant must name the pack under test.
 * @return the number of problems; *out a new object (NULL on problems).
 */
static size_t tenant_overrides(const struct loyd_pack *pack, const char *path, json_t **out,
                               struct loyd_buf *err)
{
    static const char shadow[] = "local env, file = function() return '' end, "
                                 "function() return '' end ";
    struct loyd_luadata d = {0};
    struct loyd_buf src = {0};
    size_t bad = 0;
    char *dir = loyd_dirname(path);
    FILE *fp = fopen(path, "rb");

    *out = NULL;
    if (fp == NULL) {
        loyd_buf_printf(err, "%s: cannot read the tenant file: %s\n", path, strerror(errno));
        free(dir);
        return 1;
    }
    /* The shadowing locals go on the file's first line, so line numbers stay the file's. */
    loyd_buf_puts(&src, shadow);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0 && src.len <= LOYD_LUADATA_MAX_BYTES)
        loyd_buf_append(&src, chunk, n);
    fclose(fp);
    if (loyd_luadata_load_buffer(path, dir, src.data, src.len, &d, err) != 0) {
        bad = 1;
        goto out;
    }
    const json_t *v = d.value;
    const char *tp = json_string_value(json_object_get(v, "pack"));
    if (!json_is_object(v) || tp == NULL) {
        loyd_buf_printf(err, "%s: not a tenant file: it names no pack (pack = \"name\")\n", path);
        bad = 1;
        goto out;
    }
    bool same;
    if (strchr(tp, '/') != NULL) {
        char *want = loyd_xasprintf("%s/%s", dir, tp);
        char *a = realpath(want, NULL), *b = realpath(pack->dir, NULL);
        same = a != NULL && b != NULL && strcmp(a, b) == 0;
        free(a);
        free(b);
        free(want);
    } else {
        same = strcmp(tp, pack->name) == 0;
    }
    if (!same) {
        problem(err, path, line_of_key(src.data, 1, "pack"),
                "the tenant runs pack '%s', not the pack under test ('%s' in %s)", tp, pack->name,
                pack->dir);
        bad = 1;
        goto out;
    }
    json_t *ov = json_object_get(v, "settings");
    if (ov != NULL)
        bad = check_overrides(pack, ov, "settings", path, src.data,
                              line_of_key(src.data, 1, "settings"), d.lines, err);
    if (bad == 0)
        *out = ov != NULL ? json_deep_copy(ov) : json_object();
out:
    loyd_luadata_clear(&d);
    loyd_buf_free(&src);
    free(dir);
    return bad;
}

/* @p over applied on top of @p base (overrides both): maps merge key by key, the rest
 * replaces, as loyd_pack_settings applies overrides to the defaults.  @return new object. */
static json_t *layer(const struct loyd_pack *pack, const json_t *base, const json_t *over)
{
    json_t *out = json_is_object(base) ? json_deep_copy(base) : json_object();
    const char *k;
    json_t *v;

    json_object_foreach((json_t *)over, k, v)
    {
        const char *type =
            json_string_value(json_object_get(json_object_get(pack->schema, k), "type"));
        json_t *below = json_object_get(out, k);
        if (type != NULL && strcmp(type, "map") == 0 && json_is_object(below) &&
            json_is_object(v)) {
            json_t *m = json_deep_copy(below);
            json_object_update(m, v);
            json_object_set_new(out, k, m);
        } else {
            json_object_set(out, k, v);
        }
    }
    return out;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * A `matrix` table: { entry = { overrides } | "tenant.conf" (relative to the test file) }.
 * @return the number of problems; *out a new object {entry: overrides} in name order, or NULL
 * when @p m is NULL.
 */
static size_t resolve_matrix(const struct loyd_pack *pack, const struct loyd_pack_file *f, int from,
                             const json_t *m, json_t **out, struct loyd_buf *msgs)
{
    size_t bad = 0, n = json_object_size(m), i = 0;
    const char *k;
    json_t *v;

    *out = NULL;
    if (m == NULL)
        return 0;
    int line = line_of_key(f->src, from, "matrix");
    if (!json_is_object(m)) {
        problem(msgs, f->path, line,
                "matrix: expected a record { name = { settings } | \"tenant.conf\", ... }");
        return 1;
    }
    const char **names = loyd_xcalloc(n + 1, sizeof(*names));
    json_object_foreach((json_t *)m, k, v) names[i++] = k;
    qsort(names, n, sizeof(*names), cmp_str);
    json_t *res = json_object();
    char *fdir = loyd_dirname(f->path);
    for (i = 0; i < n; i++) {
        v = json_object_get(m, names[i]);
        int el = line_of_key(f->src, line, names[i]);
        char *label = loyd_xasprintf("matrix '%s'", names[i]);
        json_t *ov = NULL;
        if (json_is_string(v)) {
            char *p = json_string_value(v)[0] == '/'
                          ? loyd_xstrdup(json_string_value(v))
                          : loyd_xasprintf("%s/%s", fdir, json_string_value(v));
            struct loyd_buf e = {0};
            if (tenant_overrides(pack, p, &ov, &e) != 0) {
                problem(msgs, f->path, el, "%s: tenant file %s:", label, p);
                loyd_buf_printf(msgs, "%s", e.data);
                bad++;
            }
            loyd_buf_free(&e);
            free(p);
        } else if (json_is_object(v)) {
            size_t b = check_overrides(pack, v, label, f->path, f->src, el, NULL, msgs);
            if (b == 0)
                ov = json_incref(v);
            bad += b;
        } else {
            problem(msgs, f->path, el,
                    "%s: expected settings { name = value } or a tenant file name", label);
            bad++;
        }
        if (ov != NULL)
            json_object_set_new(res, names[i], ov);
        free(label);
    }
    free(fdir);
    free(names);
    if (bad > 0) {
        json_decref(res);
        return bad;
    }
    *out = res;
    return 0;
}

/*
 * Checks one case's data without running it.  @p from is where the previous case was found
 * (updated to this one's line).  @return the number of problems, each a "file:line: ..." line.
 */
static size_t validate_case(const struct loyd_pack *pack, const struct loyd_pack_file *f,
                            size_t idx, const json_t *tc, int *from, struct loyd_buf *out)
{
    const char *name = json_string_value(json_object_get(tc, "name"));
    size_t bad = 0, i;
    json_t *x;

    if (!json_is_object(tc) || name == NULL) {
        problem(out, f->path, *from, "test %zu: each test is a table with a name { name = ... }",
                idx + 1);
        return 1;
    }
    int line = line_of_string(f->src, *from, name);
    *from = line;
    bad += unknown_keys(tc, case_fields, LOYD_ARRAY_SIZE(case_fields), "test", f, line, out);
    const char *nowd = json_string_value(json_object_get(tc, "now"));
    int64_t ms;
    if (nowd == NULL || loyd_date_parse(nowd, 0, &ms) != 0) {
        problem(out, f->path, line_of_key(f->src, line, "now"),
                "now = \"YYYY-MM-DD\" is required (the frozen clock)");
        bad++;
    }
    x = json_object_get(tc, "tz_offset_min");
    if (x != NULL && (!json_is_integer(x) || llabs(json_integer_value(x)) > 18 * 60)) {
        problem(out, f->path, line_of_key(f->src, line, "tz_offset_min"),
                "tz_offset_min: expected minutes east of UTC (-1080..1080)");
        bad++;
    }
    if ((x = json_object_get(tc, "settings")) != NULL)
        bad += check_overrides(pack, x, "settings", f->path, f->src,
                               line_of_key(f->src, line, "settings"), NULL, out);
    if ((x = json_object_get(tc, "member")) != NULL) {
        if (!json_is_object(x)) {
            problem(out, f->path, line_of_key(f->src, line, "member"),
                    "member: expected a record { id = ..., ... }");
            bad++;
        } else {
            bad += unknown_keys(x, member_fields, LOYD_ARRAY_SIZE(member_fields), "member", f,
                                line_of_key(f->src, line, "member"), out);
        }
    }
    json_t *events = json_object_get(tc, "events");
    if (json_is_object(events) && json_object_size(events) == 0)
        events = NULL; /* {} is an empty list */
    if (events != NULL && !json_is_array(events)) {
        problem(out, f->path, line_of_key(f->src, line, "events"),
                "events: expected a list of events { { type = ... }, ... }");
        bad++;
        events = NULL;
    }
    size_t nev = 0;
    while (loyd_rules_events[nev] != NULL)
        nev++;
    int el = line_of_key(f->src, line, "events");
    json_array_foreach(events, i, x)
    {
        char what[48];
        snprintf(what, sizeof(what), "events[%zu]", i + 1);
        const char *type = json_string_value(json_object_get(x, "type"));
        if (!json_is_object(x) || type == NULL) {
            problem(out, f->path, el, "%s: each event needs a type (type = \"deal.won\")", what);
            bad++;
            continue;
        }
        int tl = line_of_string(f->src, el, type);
        if (!loyd_rules_event_known(type)) {
            const char *s = loyd_suggest(type, loyd_rules_events, nev);
            char hint[128] = "";
            if (s != NULL)
                snprintf(hint, sizeof(hint), " (did you mean '%s'?)", s);
            problem(out, f->path, tl, "event type '%s': unknown%s", type, hint);
            bad++;
        }
        bad += unknown_keys(x, event_fields, LOYD_ARRAY_SIZE(event_fields), what, f, tl, out);
        el = tl;
    }
    json_t *expect = json_object_get(tc, "expect");
    if (expect != NULL && !json_is_object(expect)) {
        problem(out, f->path, line_of_key(f->src, line, "expect"),
                "expect: expected a record { effects = ..., ... }");
        bad++;
    } else if (expect != NULL) {
        int xl = line_of_key(f->src, line, "expect");
        bad += unknown_keys(expect, expect_fields, LOYD_ARRAY_SIZE(expect_fields), "expect", f, xl,
                            out);
        json_t *mm = json_object_get(expect, "members");
        const char *mk;
        json_t *mv;
        if (mm != NULL && !json_is_object(mm)) {
            problem(out, f->path, line_of_key(f->src, xl, "members"),
                    "expect.members: expected a record { [\"7\"] = { balance = ... }, ... }");
            bad++;
            mm = NULL;
        }
        json_object_foreach(mm, mk, mv)
        {
            char what[160];
            snprintf(what, sizeof(what), "expect.members[\"%s\"]", mk);
            if (!json_is_object(mv)) {
                problem(out, f->path, line_of_key(f->src, xl, mk),
                        "%s: expected a record { balance = n, ledger = { ... } }", what);
                bad++;
                continue;
            }
            bad += unknown_keys(mv, other_member_fields, LOYD_ARRAY_SIZE(other_member_fields), what,
                                f, line_of_key(f->src, xl, mk), out);
        }
    }
    return bad;
}

/* ---- one case ------------------------------------------------------------------------------ */

struct runner {
    const struct loyd_pack *pack;
    struct loyd_rules *rules;
    const struct loyd_pack_test_opts *o;
    FILE *out;
    size_t passed, failed;
};

/*
 * reverse{ref} in a test reaches the other members' rows the case's earlier events wrote (a
 * referrer's bonus), as the daemon's does through the store: @p arg is {member_id: [rows]}.
 */
static int test_ref_ledgers(void *arg, const char *ref, json_t **out)
{
    const char *mid;
    json_t *rows, *r;
    size_t i;

    *out = json_object();
    json_object_foreach((json_t *)arg, mid, rows)
    {
        json_array_foreach(rows, i, r)
        {
            const char *rr = json_string_value(json_object_get(r, "ref"));
            if (rr != NULL && strcmp(rr, ref) == 0) {
                json_object_set_new(*out, mid, json_deep_copy(rows));
                break;
            }
        }
    }
    return 0;
}

/* Keeps a row another member got (numbered in that member's ledger, as the store would). */
static void keep_other_row(json_t *others, const char *mid, const json_t *row)
{
    json_t *rows = json_object_get(others, mid), *r, *copy = json_deep_copy(row);
    size_t i;
    int64_t max = 0;
    if (rows == NULL) {
        rows = json_array();
        json_object_set_new(others, mid, rows);
    }
    json_array_foreach(rows, i, r) if (jint(r, "id") > max) max = jint(r, "id");
    if (!json_is_integer(json_object_get(copy, "id")))
        json_object_set_new(copy, "id", json_integer(max + 1));
    json_array_append_new(rows, copy);
}

/* "award{points=3000, reason=\"x\"}": an effect as its constructor call reads. */
static void render_effect(struct loyd_buf *b, const json_t *e)
{
    json_t *c = json_deep_copy(e);
    const char *kind = json_string_value(json_object_get(e, "kind"));
    json_object_del(c, "kind");
    loyd_buf_puts(b, kind != NULL ? kind : "?");
    render(b, c);
    json_decref(c);
}

static void fmt_points(char *buf, size_t n, int64_t v, const struct loyd_pack *p)
{
    loyd_points_format(v, &p->points, LOYD_POINTS_GROUP | LOYD_POINTS_UNIT, buf, n);
}

/*
 * -v: one event's evaluation, a line per step: the event, the member view before it, each
 * handler with its log lines, the effects accepted and rejected (with the reason), the result.
 */
static void trace_event(struct loyd_buf *t, const struct loyd_pack *pack, size_t i,
                        const json_t *ev, const json_t *member, const json_t *rows,
                        const json_t *purchases, int tz, const json_t *res)
{
    int64_t at = jint(ev, "at");
    char d[11], pts[64];
    json_t *view = NULL, *x, *rest = json_deep_copy(ev);
    struct loyd_buf e = {0}, r = {0};
    size_t k, j;

    loyd_date_format(at, tz, d);
    json_object_del(rest, "type");
    json_object_del(rest, "at");
    json_object_del(rest, "key");
    render(&r, rest);
    loyd_buf_printf(t, "      event %zu: %s on %s %s\n", i + 1,
                    json_string_value(json_object_get(ev, "type")), d, r.data);
    if (loyd_rules_member_view(member, rows, purchases, at, tz, &view, &e) == 0) {
        fmt_points(pts, sizeof(pts), jint(view, "balance"), pack);
        const char *tier = json_string_value(json_object_get(view, "tier"));
        loyd_buf_printf(t, "        before: balance %s, tier %s, lots:", pts,
                        tier != NULL ? tier : "(none)");
        if (json_array_size(json_object_get(view, "lots")) == 0)
            loyd_buf_puts(t, " none");
        json_array_foreach(json_object_get(view, "lots"), k, x)
        {
            const char *until = json_string_value(json_object_get(x, "expires_on"));
            loyd_points_format(jint(x, "points"), &pack->points, LOYD_POINTS_GROUP, pts,
                               sizeof(pts));
            loyd_buf_printf(t, "%s %s (%s%s)", k ? "," : "", pts, until ? "until " : "no expiry",
                            until ? until : "");
        }
        loyd_buf_puts(t, "\n");
    }
    json_array_foreach(json_object_get(json_object_get(res, "trace"), "handlers"), k, x)
    {
        loyd_buf_printf(t, "        %s: ", json_string_value(json_object_get(x, "file")));
        if (json_object_get(x, "error") != NULL)
            loyd_buf_puts(t, "failed\n");
        else
            loyd_buf_printf(t, "%lld effect%s\n", (long long)jint(x, "effects"),
                            jint(x, "effects") == 1 ? "" : "s");
        json_t *l;
        json_array_foreach(json_object_get(x, "log"), j, l) loyd_buf_printf(
            t, "          log: %s\n", json_is_string(l) ? json_string_value(l) : "?");
    }
    json_array_foreach(json_object_get(res, "accepted"), k, x)
    {
        struct loyd_buf b = {0};
        render_effect(&b, x);
        loyd_buf_printf(t, "        accepted %s\n", b.data);
        loyd_buf_free(&b);
    }
    json_array_foreach(json_object_get(res, "rejected"), k, x)
    {
        struct loyd_buf b = {0};
        render_effect(&b, json_object_get(x, "effect"));
        loyd_buf_printf(t, "        rejected %s: %s\n", b.data,
                        json_string_value(json_object_get(x, "reason")));
        loyd_buf_free(&b);
    }
    json_array_foreach(json_object_get(json_object_get(res, "trace"), "notes"), k, x)
        loyd_buf_printf(t, "        note: %s\n", json_is_string(x) ? json_string_value(x) : "?");
    if (!json_is_true(json_object_get(res, "ok"))) {
        const char *msg = json_string_value(json_object_get(res, "error"));
        loyd_buf_puts(t, "        error: ");
        for (const char *c = msg != NULL ? msg : "?"; *c != '\0'; c++) {
            loyd_buf_append(t, c, 1);
            if (*c == '\n' && c[1] != '\0')
                loyd_buf_puts(t, "          ");
        }
        loyd_buf_puts(t, "\n");
    } else {
        fmt_points(pts, sizeof(pts), jint(res, "balance"), pack);
        const char *tier = json_string_value(json_object_get(res, "tier"));
        loyd_buf_printf(t, "        after: balance %s, tier %s\n", pts,
                        tier != NULL ? tier : "(none)");
    }
    json_decref(view);
    json_decref(rest);
    loyd_buf_free(&e);
    loyd_buf_free(&r);
}

/* Sum of a member's row points: the balance (ledger.h). */
static int64_t rows_balance(const json_t *rows)
{
    int64_t b = 0;
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) b += jint(r, "points");
    return b;
}

/*
 * Runs one case with @p base (overrides from --tenant and the matrix entry, may be NULL)
 * under the case's own settings.  The case has passed validate_case.  @p trace gets the -v
 * lines.  @return whether every expectation held; @p diff says what did not.
 */
static bool run_case(struct runner *rn, const char *file, size_t idx, const json_t *tc,
                     const json_t *base, struct loyd_buf *diff, struct loyd_buf *trace)
{
    char where[512];
    const char *name = json_string_value(json_object_get(tc, "name"));
    json_t *settings = NULL, *rows = NULL, *purchases = NULL, *member = NULL;
    json_t *effects = json_array(), *rejected = json_array(), *outbox = json_array();
    json_t *errors = json_array(), *traces = json_array(), *rejected_full = json_array();
    json_t *others = json_object(); /* rows of other members: {member_id: [rows]} */
    json_t *expect = json_object_get(tc, "expect");
    bool ok = false;
    int64_t now = 0, balance = 0;
    int tz = (int)jint(tc, "tz_offset_min");

    snprintf(where, sizeof(where), "%s: test %zu", file, idx + 1);
    if (!json_is_object(tc) || name == NULL) {
        loyd_buf_printf(diff, "      %s: each test needs a name\n", where);
        goto out;
    }
    if (unknown_fields(tc, case_fields, LOYD_ARRAY_SIZE(case_fields), where, diff))
        goto out;
    if (expect != NULL &&
        unknown_fields(expect, expect_fields, LOYD_ARRAY_SIZE(expect_fields), "expect", diff))
        goto out;
    const char *nowd = json_string_value(json_object_get(tc, "now"));
    if (nowd == NULL || loyd_date_parse(nowd, tz, &now) != 0) {
        loyd_buf_printf(diff, "      now = \"YYYY-MM-DD\" is required (the frozen clock)\n");
        goto out;
    }
    now += NOON_MS;
    struct loyd_buf e = {0};
    json_t *layered = layer(rn->pack, base, json_object_get(tc, "settings"));
    int src = loyd_pack_settings(rn->pack, layered, "settings", &settings, &e);
    json_decref(layered);
    if (src != 0) {
        loyd_buf_printf(diff, "      %s", e.data);
        loyd_buf_free(&e);
        goto out;
    }
    json_t *m = json_object_get(tc, "member");
    if (m == NULL)
        m = json_object();
    else
        json_incref(m);
    if (unknown_fields(m, member_fields, LOYD_ARRAY_SIZE(member_fields), "member", &e) ||
        build_state(m, now, tz, &rows, &purchases, &e) != 0) {
        loyd_buf_printf(diff, "      %s", e.data);
        loyd_buf_free(&e);
        json_decref(m);
        goto out;
    }
    member = json_pack("{s:s}", "id",
                       json_is_string(json_object_get(m, "id"))
                           ? json_string_value(json_object_get(m, "id"))
                           : "1");
    static const char *const copy[] = {
        "tier", "birthday", "referrer", "attributes", "last_birthday_offer_year", "counters"};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(copy); i++)
        if (json_object_get(m, copy[i]) != NULL)
            json_object_set(member, copy[i], json_object_get(m, copy[i]));
    json_decref(m);

    json_t *events = json_object_get(tc, "events");
    size_t i;
    json_t *evd;
    json_t *campaigns = json_object();
    json_array_foreach(events, i, evd)
    {
        char ew[64];
        snprintf(ew, sizeof(ew), "events[%zu]", i + 1);
        if (unknown_fields(evd, event_fields, LOYD_ARRAY_SIZE(event_fields), ew, diff)) {
            json_decref(campaigns);
            goto out;
        }
        json_t *ev = json_deep_copy(evd);
        int64_t at = now;
        const char *d = json_string_value(json_object_get(ev, "date"));
        if (d != NULL) {
            if (loyd_date_parse(d, tz, &at) != 0) {
                loyd_buf_printf(diff, "      %s.date: \"%s\" is not a date\n", ew, d);
                json_decref(ev);
                json_decref(campaigns);
                goto out;
            }
            at += NOON_MS;
            json_object_del(ev, "date");
        }
        if (!json_is_integer(json_object_get(ev, "at")))
            json_object_set_new(ev, "at", json_integer(at + (int64_t)i)); /* keep order */
        if (json_object_get(ev, "key") == NULL) {
            char key[64];
            snprintf(key, sizeof(key), "test:%zu:%zu", idx + 1, i + 1);
            json_object_set_new(ev, "key", json_string(key));
        }
        struct loyd_rules_input in = {
            .event = ev,
            .member = member,
            .ledger = rows,
            .purchases = purchases,
            .settings = settings,
            .campaign_totals = campaigns,
            .tz_offset_min = tz,
            .seed = 42,
            .dry_run = true,
            .ref_ledgers = test_ref_ledgers,
            .ref_arg = others,
        };
        json_t *res = NULL;
        int erc = loyd_rules_eval(rn->rules, &in, &res);
        (void)erc; /* the result says everything: ok, error, trace */
        if (trace != NULL)
            trace_event(trace, rn->pack, i, ev, member, rows, purchases, tz, res);
        json_decref(ev);
        json_array_append(traces, res);
        if (!json_is_true(json_object_get(res, "ok"))) {
            json_array_append(errors, json_object_get(res, "error"));
            json_decref(res);
            continue;
        }
        /* The daemon hands these rows to the store through the same check: a row the store
         * would refuse fails the case here instead of an event on a live tenant. */
        struct loyd_ledger_entry *ents = NULL;
        size_t nents = 0;
        struct loyd_buf why = {0};
        if (loyd_engine_ledger_entries(json_object_get(res, "ledger"),
                                       json_string_value(json_object_get(member, "id")), &ents,
                                       &nents, &why) != 0) {
            char *msg = loyd_xasprintf("%s: %s", ew, why.data);
            json_array_append_new(errors, json_string(msg));
            free(msg);
            loyd_buf_free(&why);
            json_decref(res);
            continue;
        }
        free(ents);
        size_t k;
        json_t *x;
        json_array_foreach(json_object_get(res, "accepted"), k, x) json_array_append(effects, x);
        json_array_foreach(json_object_get(res, "rejected"), k, x)
        {
            json_t *rj = json_deep_copy(json_object_get(x, "effect"));
            json_object_set(rj, "reason", json_object_get(x, "reason"));
            json_array_append_new(rejected, rj);
            json_array_append(rejected_full, x);
        }
        json_array_foreach(json_object_get(res, "outbox"), k, x) json_array_append(outbox, x);
        /* Carry the state: rows of this member, member updates, purchases, campaigns. */
        const char *mid = json_string_value(json_object_get(member, "id"));
        json_array_foreach(json_object_get(res, "ledger"), k, x)
        {
            const char *rm = json_string_value(json_object_get(x, "member_id"));
            if (rm == NULL || strcmp(rm, mid) == 0)
                json_array_append(rows, x);
            else
                keep_other_row(others, rm, x);
            if (json_is_string(json_object_get(x, "campaign"))) {
                const char *c = json_string_value(json_object_get(x, "campaign"));
                json_object_set_new(campaigns, c,
                                    json_integer(jint(campaigns, c) + jint(x, "points")));
            }
        }
        json_t *upd = json_object_get(res, "member");
        const char *uk;
        json_object_foreach(upd, uk, x)
        {
            if (strcmp(uk, "attributes") == 0) {
                json_t *a = json_object_get(member, "attributes");
                if (!json_is_object(a)) {
                    a = json_object();
                    json_object_set_new(member, "attributes", a);
                }
                json_object_update(a, x);
            } else {
                json_object_set(member, uk, x);
            }
        }
        json_t *pu = json_object_get(res, "purchase");
        if (pu != NULL) {
            const char *op = json_string_value(json_object_get(pu, "op"));
            if (strcmp(op, "add") == 0) {
                json_t *np = json_deep_copy(pu);
                json_object_del(np, "op");
                json_array_append_new(purchases, np);
            } else {
                for (size_t j = json_array_size(purchases); j-- > 0;)
                    if (json_equal(json_object_get(json_array_get(purchases, j), "deal_id"),
                                   json_object_get(pu, "deal_id")))
                        json_array_remove(purchases, j);
            }
        }
        balance = jint(res, "balance");
        json_decref(res);
    }
    json_decref(campaigns);

    ok = true;
    const char *want_err = json_string_value(json_object_get(expect, "error"));
    if (want_err != NULL) {
        bool found = false;
        json_array_foreach(errors, i, evd) found =
            found || strstr(json_string_value(evd), want_err) != NULL;
        if (!found) {
            loyd_buf_printf(diff, "      expected an error containing \"%s\", got %s\n", want_err,
                            json_array_size(errors) ? json_string_value(json_array_get(errors, 0))
                                                    : "none");
            ok = false;
        }
    } else if (json_array_size(errors) > 0) {
        json_array_foreach(errors, i, evd)
            loyd_buf_printf(diff, "      rule error: %s\n", json_string_value(evd));
        ok = false;
    }
    json_t *w;
    if ((w = json_object_get(expect, "effects")) != NULL &&
        !match_list("effects", w, effects, diff))
        ok = false;
    if ((w = json_object_get(expect, "rejected")) != NULL) {
        /* "reason" matches as a substring. */
        json_t *want = json_deep_copy(w), *got = json_deep_copy(rejected);
        json_t *wi;
        json_array_foreach(want, i, wi)
        {
            const char *wr = json_string_value(json_object_get(wi, "reason"));
            json_t *gi = json_array_get(got, i);
            const char *gr = json_string_value(json_object_get(gi, "reason"));
            if (wr != NULL && gr != NULL && strstr(gr, wr) != NULL)
                json_object_set(wi, "reason", json_object_get(gi, "reason"));
        }
        if (!match_list("rejected", want, got, diff))
            ok = false;
        json_decref(want);
        json_decref(got);
    }
    if ((w = json_object_get(expect, "outbox")) != NULL &&
        !match_subsequence("outbox", w, outbox, diff))
        ok = false;
    if ((w = json_object_get(expect, "balance")) != NULL && json_integer_value(w) != balance) {
        loyd_buf_printf(diff, "      balance: expected %lld, got %lld\n",
                        (long long)json_integer_value(w), (long long)balance);
        ok = false;
    }
    if ((w = json_object_get(expect, "tier")) != NULL &&
        !json_equal(w, json_object_get(member, "tier"))) {
        struct loyd_buf b = {0};
        render(&b, json_object_get(member, "tier") ? json_object_get(member, "tier") : json_null());
        loyd_buf_printf(diff, "      tier: expected \"%s\", got %s\n", json_string_value(w),
                        b.data);
        loyd_buf_free(&b);
        ok = false;
    }
    if ((w = json_object_get(expect, "attributes")) != NULL &&
        !subset(w, json_object_get(member, "attributes"))) {
        struct loyd_buf a = {0}, b = {0};
        render(&a, w);
        render(&b, json_object_get(member, "attributes") ? json_object_get(member, "attributes")
                                                         : json_object());
        loyd_buf_printf(diff, "      attributes:\n      - %s\n      + %s\n", a.data, b.data);
        loyd_buf_free(&a);
        loyd_buf_free(&b);
        ok = false;
    }
    /* expect.counters = { stamps = 0 }: a counter that never counted is 0, as rules see it. */
    const char *ck;
    json_t *cv;
    json_object_foreach(json_object_get(expect, "counters"), ck, cv)
    {
        int64_t got = jint(json_object_get(member, "counters"), ck);
        if (!json_is_integer(cv) || json_integer_value(cv) != got) {
            struct loyd_buf a = {0};
            render(&a, cv);
            loyd_buf_printf(diff, "      counters.%s: expected %s, got %lld\n", ck, a.data,
                            (long long)got);
            loyd_buf_free(&a);
            ok = false;
        }
    }
    /* expect.members = { ["7"] = { balance = 500, ledger = {...} } }: another member's rows. */
    const char *mk, *mid = json_string_value(json_object_get(member, "id"));
    json_t *mv;
    json_object_foreach(json_object_get(expect, "members"), mk, mv)
    {
        const json_t *mrows = strcmp(mk, mid) == 0 ? rows : json_object_get(others, mk);
        json_t *none = json_array();
        char what[160];
        if (mrows == NULL)
            mrows = none;
        if ((w = json_object_get(mv, "balance")) != NULL &&
            json_integer_value(w) != rows_balance(mrows)) {
            loyd_buf_printf(diff, "      members[\"%s\"].balance: expected %lld, got %lld\n", mk,
                            (long long)json_integer_value(w), (long long)rows_balance(mrows));
            ok = false;
        }
        snprintf(what, sizeof(what), "members[\"%s\"].ledger", mk);
        if ((w = json_object_get(mv, "ledger")) != NULL && !match_subsequence(what, w, mrows, diff))
            ok = false;
        json_decref(none);
    }
    /* A failure often comes from an effect the host refused: show them, with the reason. */
    if (!ok && json_array_size(rejected_full) > 0 && json_object_get(expect, "rejected") == NULL) {
        loyd_buf_puts(diff, "      rejected effects (effect: reason):\n");
        json_array_foreach(rejected_full, i, evd)
        {
            struct loyd_buf b = {0};
            render_effect(&b, json_object_get(evd, "effect"));
            loyd_buf_printf(diff, "      ! %s: %s\n", b.data,
                            json_string_value(json_object_get(evd, "reason")));
            loyd_buf_free(&b);
        }
    }
out:
    json_decref(rejected_full);
    json_decref(others);
    json_decref(settings);
    json_decref(rows);
    json_decref(purchases);
    json_decref(member);
    json_decref(effects);
    json_decref(rejected);
    json_decref(outbox);
    json_decref(errors);
    json_decref(traces);
    return ok;
}

/*
 * Loads a test file (Lua data) through the sandbox: @return new array of cases or NULL.
 * @p meta gets a new object of the file's named keys ({matrix = ...}) when the list has any,
 * else NULL.  Lua tables cannot mix keys on the way to JSON, so the wrapper splits them.
 */
static json_t *load_cases(struct loyd_rules *r, const struct loyd_pack_file *f, json_t **meta,
                          struct loyd_buf *err)
{
    static const char split[] =
        "\nend)(...) if type(t) ~= 'table' then return t end "
        "local m, l = nil, {} "
        "for k, v in pairs(t) do if type(k) == 'string' then m = m or {}; m[k] = v end end "
        "if m == nil then return t end "
        "for i, v in ipairs(t) do l[i] = v end "
        "return { [\"loyd:file\"] = m, [\"loyd:tests\"] = l } end }\n";
    struct loyd_sandbox *sb = loyd_rules_sandbox(r);
    struct loyd_buf src = {0}, e = {0};
    json_t *cases = NULL, *log = NULL;
    char *mod = loyd_xasprintf("test:%s", f->module);

    *meta = NULL;
    /* Wrapping keeps line numbers: nothing is added before the file's first line. */
    loyd_buf_puts(&src, "return { cases = function(...) local t = (function(...) ");
    loyd_buf_append(&src, f->src, f->len);
    loyd_buf_puts(&src, split);
    if (loyd_sandbox_load(sb, mod, src.data, src.len, &e) != 0) {
        loyd_buf_printf(err, "%s\n", e.data != NULL ? e.data : "cannot load");
        goto out;
    }
    struct loyd_sandbox_call c = {.module = mod, .handler = "cases", .now_ms = 0};
    if (loyd_sandbox_call(sb, &c, &cases, &log, &e) != 0) {
        loyd_buf_printf(err, "%s\n", e.data != NULL ? e.data : "cannot evaluate");
        json_decref(cases);
        cases = NULL;
        goto out;
    }
    if (json_is_object(cases) && json_object_get(cases, "loyd:file") != NULL) {
        json_t *list = json_incref(json_object_get(cases, "loyd:tests"));
        *meta = json_incref(json_object_get(cases, "loyd:file"));
        json_decref(cases);
        cases = list;
    }
    if (json_is_object(cases) && json_object_size(cases) == 0) {
        json_decref(cases);
        cases = json_array();
    }
    if (!json_is_array(cases)) {
        loyd_buf_printf(err, "%s:1: a test file must return a list of tests { {name=...}, ... }\n",
                        f->path);
        json_decref(cases);
        cases = NULL;
        json_decref(*meta);
        *meta = NULL;
    }
out:
    json_decref(log);
    free(mod);
    loyd_buf_free(&src);
    loyd_buf_free(&e);
    return cases;
}

/* The file's own keys (matrix): @return the number of problems; *matrix new or NULL. */
static size_t file_meta(const struct loyd_pack *pack, const struct loyd_pack_file *f,
                        const json_t *meta, json_t **matrix, struct loyd_buf *out)
{
    *matrix = NULL;
    if (meta == NULL)
        return 0;
    size_t bad =
        unknown_keys(meta, file_fields, LOYD_ARRAY_SIZE(file_fields), "test file", f, 1, out);
    return bad + resolve_matrix(pack, f, 1, json_object_get(meta, "matrix"), matrix, out);
}

static const char *search_path_or_env(const char *sp)
{
    return sp != NULL ? sp : getenv("LOYD_RULES_PATH");
}

/* Prints @p text with every line indented by @p pad. */
static void print_indented(FILE *out, const char *pad, const char *text)
{
    for (const char *l = text; l != NULL && *l != '\0';) {
        const char *nl = strchr(l, '\n');
        size_t n = nl != NULL ? (size_t)(nl - l) : strlen(l);
        fprintf(out, "%s%.*s\n", pad, (int)n, l);
        l = nl != NULL ? nl + 1 : l + n;
    }
}

/* One case: validated, then run once per matrix entry (once when there is none). */
static void run_file_case(struct runner *rn, const struct loyd_pack_file *f, size_t k,
                          const json_t *tc, const json_t *file_matrix, const json_t *tenant,
                          int *from, bool *header)
{
    const struct loyd_pack_test_opts *o = rn->o;
    const char *name = json_string_value(json_object_get(tc, "name"));
    struct loyd_buf vp = {0};
    json_t *own = NULL;
    const json_t *matrix = file_matrix;
    size_t bad = validate_case(rn->pack, f, k, tc, from, &vp);

    if (json_is_object(tc) && json_object_get(tc, "matrix") != NULL) {
        bad += resolve_matrix(rn->pack, f, *from, json_object_get(tc, "matrix"), &own, &vp);
        matrix = own;
    }
    size_t n = json_object_size(matrix), e = 0;
    const char **names = loyd_xcalloc(n + 1, sizeof(*names));
    const char *mk;
    json_t *mv;
    json_object_foreach((json_t *)matrix, mk, mv) names[e++] = mk;
    for (e = 0; e < (n > 0 ? n : 1); e++) {
        char *shown = n > 0 ? loyd_xasprintf("%s [%s]", name != NULL ? name : "(unnamed)", names[e])
                            : loyd_xstrdup(name != NULL ? name : "(unnamed)");
        if (o != NULL && o->filter != NULL && strstr(shown, o->filter) == NULL) {
            free(shown);
            continue;
        }
        if (!*header) {
            fprintf(rn->out, "%s\n", f->path);
            *header = true;
        }
        struct loyd_buf diff = {0}, trace = {0};
        bool ok = false;
        if (bad == 0) {
            json_t *base =
                layer(rn->pack, tenant, n > 0 ? json_object_get(matrix, names[e]) : NULL);
            ok = run_case(rn, f->path, k, tc, base, &diff, o != NULL && o->verbose ? &trace : NULL);
            json_decref(base);
        }
        fprintf(rn->out, "  %s %s\n", ok ? "ok  " : "FAIL", shown);
        if (bad > 0) /* test data, not rules: say where, before anything runs */
            print_indented(rn->out, "      ", vp.data);
        if (!ok && diff.data != NULL)
            fprintf(rn->out, "%s", diff.data);
        if (trace.data != NULL)
            fprintf(rn->out, "      trace:\n%s", trace.data);
        ok ? rn->passed++ : rn->failed++;
        loyd_buf_free(&diff);
        loyd_buf_free(&trace);
        free(shown);
    }
    free(names);
    json_decref(own);
    loyd_buf_free(&vp);
}

int loyd_pack_test_run(const char *dir, const struct loyd_pack_test_opts *o, FILE *out)
{
    struct loyd_pack *pack = NULL;
    struct runner rn = {.o = o, .out = out};
    struct loyd_buf err = {0};
    json_t *tenant = NULL;
    int rc;

    if (loyd_pack_load(dir, search_path_or_env(o ? o->search_path : NULL), &pack, &err) != 0 ||
        loyd_rules_create(pack, NULL, &rn.rules, &err) != 0) {
        fprintf(out, "%s", err.data != NULL ? err.data : "cannot load the pack\n");
        loyd_buf_free(&err);
        loyd_rules_destroy(rn.rules);
        loyd_pack_destroy(pack);
        return 2;
    }
    rn.pack = pack;
    if (o != NULL && o->tenant != NULL && tenant_overrides(pack, o->tenant, &tenant, &err) != 0) {
        fprintf(out, "%s", err.data != NULL ? err.data : "cannot use the tenant file\n");
        loyd_buf_free(&err);
        loyd_rules_destroy(rn.rules);
        loyd_pack_destroy(pack);
        return 2;
    }
    for (size_t i = 0; i < pack->ntests; i++) {
        const struct loyd_pack_file *f = &pack->tests[i];
        struct loyd_buf e = {0};
        json_t *meta = NULL, *matrix = NULL;
        json_t *cases = load_cases(rn.rules, f, &meta, &e);
        /* A file that cannot be read may hold selected tests: always shown. */
        if (cases == NULL || file_meta(pack, f, meta, &matrix, &e) > 0) {
            fprintf(out, "%s\n  ERROR ", f->path);
            print_indented(out, "", e.data != NULL ? e.data : "cannot load\n");
            rn.failed++;
        } else {
            size_t k;
            json_t *tc;
            int from = 1;
            bool header = false;
            json_array_foreach(cases, k, tc)
                run_file_case(&rn, f, k, tc, matrix, tenant, &from, &header);
        }
        json_decref(cases);
        json_decref(meta);
        json_decref(matrix);
        loyd_buf_free(&e);
    }
    if (pack->ntests == 0)
        fprintf(out, "%s: no tests (add tests/NAME.lua)\n", dir);
    else if (rn.passed + rn.failed == 0 && o != NULL && o->filter != NULL)
        fprintf(out, "no test name contains '%s'\n", o->filter);
    fprintf(out, "%zu passed, %zu failed\n", rn.passed, rn.failed);
    rc = rn.failed == 0 && rn.passed > 0 ? 0 : 1;
    json_decref(tenant);
    loyd_rules_destroy(rn.rules);
    loyd_pack_destroy(pack);
    loyd_buf_free(&err);
    return rc;
}

int loyd_pack_check_run(const char *dir, const char *search_path, FILE *out)
{
    struct loyd_pack *pack = NULL;
    struct loyd_rules *rules = NULL;
    struct loyd_buf err = {0};
    json_t *settings = NULL;
    size_t problems = 0;
    int rc;

    if ((rc = loyd_pack_load(dir, search_path_or_env(search_path), &pack, &err)) != 0) {
        fprintf(out, "%s", err.data != NULL ? err.data : "cannot load the pack\n");
        loyd_buf_free(&err);
        return rc == -ENOENT ? 2 : 1;
    }
    if (loyd_pack_settings(pack, NULL, pack->conf_path, &settings, &err) != 0) {
        fprintf(out, "%s", err.data);
        problems++;
    }
    loyd_buf_reset(&err);
    if (loyd_rules_create(pack, NULL, &rules, &err) != 0) {
        /* Every file that failed to compile is listed; nothing more can be linted. */
        fprintf(out, "%s", err.data != NULL ? err.data : "cannot load the rules\n");
        problems++;
        goto done;
    }
    if (pack->nrules == 0) {
        fprintf(out, "%s/rules: no rule files\n", dir);
        problems++;
    }
    struct loyd_buf lint = {0};
    problems += loyd_rules_lint(rules, settings != NULL ? settings : pack->defaults, &lint);
    if (lint.data != NULL)
        fprintf(out, "%s", lint.data);
    loyd_buf_free(&lint);
    size_t ncases = 0;
    for (size_t i = 0; i < pack->ntests; i++) {
        const struct loyd_pack_file *f = &pack->tests[i];
        struct loyd_buf e = {0};
        json_t *meta = NULL, *matrix = NULL;
        json_t *cases = load_cases(rules, f, &meta, &e);
        if (cases == NULL) {
            fprintf(out, "%s", e.data != NULL ? e.data : "cannot load a test file\n");
            problems++;
        }
        /* The test data, as `loyd test` would check it before running anything. */
        problems += file_meta(pack, f, meta, &matrix, &e);
        size_t k;
        json_t *tc;
        int from = 1;
        json_array_foreach(cases, k, tc)
        {
            json_t *own = NULL;
            problems += validate_case(pack, f, k, tc, &from, &e);
            if (json_is_object(tc))
                problems += resolve_matrix(pack, f, from, json_object_get(tc, "matrix"), &own, &e);
            json_decref(own);
        }
        if (cases != NULL && e.data != NULL)
            fprintf(out, "%s", e.data);
        ncases += json_array_size(cases);
        json_decref(cases);
        json_decref(meta);
        json_decref(matrix);
        loyd_buf_free(&e);
    }
    if (problems == 0)
        fprintf(out,
                "pack %s %s: %zu rule files, %zu handlers, %zu settings, %zu test files (%zu "
                "tests): OK\n",
                pack->name, pack->version, pack->nrules, loyd_rules_handler_count(rules),
                json_object_size(pack->schema), pack->ntests, ncases);
done:
    json_decref(settings);
    loyd_rules_destroy(rules);
    loyd_pack_destroy(pack);
    loyd_buf_free(&err);
    if (problems > 0)
        fprintf(out, "%zu problem%s found\n", problems, problems == 1 ? "" : "s");
    return problems == 0 ? 0 : 1;
}
