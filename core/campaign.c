/* SPDX-License-Identifier: MIT */
/* Campaigns as data (see campaign.h): validation, the calendar test, the budget the host uses. */
#include "campaign.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "civil_date.h"
#include "pack.h"

static const char *const fields[] = {"name",       "from",     "to",    "weekdays",
                                     "multiplier", "bonus_bp", "budget"};

/* Year, month, day of a valid "YYYY-MM-DD"; false when it is not one (29 Feb only in leap years).
 */
static bool parse_date(const char *s, int64_t *y, unsigned *m, unsigned *d)
{
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned v[3] = {0, 0, 0};

    if (s == NULL || strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return false;
    for (size_t i = 0; i < 10; i++) {
        if (i == 4 || i == 7)
            continue;
        if (s[i] < '0' || s[i] > '9')
            return false;
        size_t k = i < 4 ? 0 : i < 7 ? 1 : 2;
        v[k] = v[k] * 10 + (unsigned)(s[i] - '0');
    }
    if (v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > mdays[v[1] - 1])
        return false;
    if (v[1] == 2 && v[2] == 29 && !((v[0] % 4 == 0 && v[0] % 100 != 0) || v[0] % 400 == 0))
        return false;
    *y = v[0];
    *m = v[1];
    *d = v[2];
    return true;
}

int loyd_iso_weekday(const char *date)
{
    int64_t y;
    unsigned m, d;

    if (!parse_date(date, &y, &m, &d))
        return 0;
    /* 1970-01-01 was a Thursday (ISO 4); days before it are negative, hence the double mod. */
    int64_t days = loyd_days_from_civil(y, m, d);
    return (int)(((days + 3) % 7 + 7) % 7) + 1;
}

/*
 * The line of the (@p skip + 1)th quoted @p name at or after line @p from of @p src (an entry
 * whose name an earlier entry shares is the later mention); @p from if none.
 */
static int entry_line(const char *src, int from, const char *name, size_t skip)
{
    size_t nl = strlen(name);
    int line = 1;

    if (nl == 0)
        return from;
    for (const char *p = src; *p != '\0'; p++) {
        if (*p == '\n') {
            line++;
            continue;
        }
        if (line >= from && (*p == '"' || *p == '\'') && strncmp(p + 1, name, nl) == 0 &&
            p[1 + nl] == *p && skip-- == 0)
            return line;
    }
    return from;
}

/* "file:line: label[N] (\"name\"): " (@p list: the whole list, for repeated names). */
static void entry_prefix(struct loyd_buf *err, const char *path,
                         const struct loyd_campaigns_where *w, const json_t *list, size_t i,
                         const char *name)
{
    if (w != NULL) {
        size_t skip = 0;
        for (size_t j = 0; name != NULL && j < i; j++) {
            const char *o = json_string_value(json_object_get(json_array_get(list, j), "name"));
            skip += o != NULL && strcmp(o, name) == 0;
        }
        loyd_buf_printf(err, "%s:%d: %s[%zu]", w->file,
                        name != NULL ? entry_line(w->src, w->line, name, skip) : w->line, w->label,
                        i + 1);
    } else
        loyd_buf_printf(err, "%s[%zu]", path, i + 1);
    if (name != NULL)
        loyd_buf_printf(err, " (\"%s\")", name);
    loyd_buf_puts(err, ": ");
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > LOYD_CAMPAIGN_MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' || s[i] == '.'))
            return false;
    return true;
}

static const char *kind_of(const json_t *v)
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

/* Checks one entry; every problem is one line.  @return the number of problems. */
static int check_entry(const json_t *list, const json_t *c, size_t i, const char *path,
                       const struct loyd_campaigns_where *w, struct loyd_buf *err)
{
    int bad = 0;
    const char *name = json_string_value(json_object_get(c, "name"));
#define PROBLEM(...)                                                                               \
    do {                                                                                           \
        entry_prefix(err, path, w, list, i, name);                                                 \
        loyd_buf_printf(err, __VA_ARGS__);                                                         \
        loyd_buf_puts(err, "\n");                                                                  \
        bad++;                                                                                     \
    } while (0)

    if (!json_is_object(c)) {
        name = NULL;
        PROBLEM("expected a campaign record { name = \"bf2026\", from = \"2026-11-20\", to = "
                "\"2026-11-30\", multiplier = 2 }, got %s",
                kind_of(c));
        return bad;
    }
    if (name != NULL && !valid_name(name)) {
        name = NULL;
        PROBLEM("'name' must be 1..%d letters, digits, '_', '-' or '.'", LOYD_CAMPAIGN_MAX_NAME);
    } else if (name == NULL) {
        PROBLEM("needs a 'name' (a string such as \"bf2026\": awards and budgets are counted "
                "under it)");
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)c, k, v)
    {
        bool known = false;
        for (size_t f = 0; f < LOYD_ARRAY_SIZE(fields); f++)
            known = known || strcmp(k, fields[f]) == 0;
        if (!known) {
            const char *s = loyd_suggest(k, fields, LOYD_ARRAY_SIZE(fields));
            if (s != NULL)
                PROBLEM("unknown field '%s' (did you mean '%s'?)", k, s);
            else
                PROBLEM("unknown field '%s' (fields: name, from, to, weekdays, multiplier, "
                        "bonus_bp, budget)",
                        k);
        }
    }
    const char *from = NULL, *to = NULL;
    static const char *const ends[] = {"from", "to"};
    for (size_t e = 0; e < 2; e++) {
        json_t *d = json_object_get(c, ends[e]);
        int64_t y;
        unsigned m, dd;
        if (d == NULL)
            continue;
        if (!json_is_string(d))
            PROBLEM("'%s' must be a date \"YYYY-MM-DD\", got %s", ends[e], kind_of(d));
        else if (!parse_date(json_string_value(d), &y, &m, &dd))
            PROBLEM("'%s' \"%s\" is not a valid date YYYY-MM-DD", ends[e], json_string_value(d));
        else if (e == 0)
            from = json_string_value(d);
        else
            to = json_string_value(d);
    }
    if (from != NULL && to != NULL && strcmp(from, to) > 0)
        PROBLEM("'from' %s is after 'to' %s: the campaign would never run", from, to);
    json_t *wd = json_object_get(c, "weekdays");
    if (wd != NULL) {
        bool ok = json_is_array(wd) && json_array_size(wd) > 0;
        unsigned seen = 0;
        size_t j;
        json_t *x;
        json_array_foreach(wd, j, x)
        {
            json_int_t n = json_integer_value(x);
            if (!json_is_integer(x) || n < 1 || n > 7) {
                ok = false;
                break;
            }
            if (seen & (1u << n)) {
                PROBLEM("'weekdays' lists %lld twice", (long long)n);
                break;
            }
            seen |= 1u << n;
        }
        if (!ok)
            PROBLEM("'weekdays' must be a list of ISO weekdays, 1 (Monday) .. 7 (Sunday), such "
                    "as { 6, 7 } for the weekend");
    }
    json_t *mul = json_object_get(c, "multiplier"), *bp = json_object_get(c, "bonus_bp");
    if (mul != NULL && bp != NULL) {
        PROBLEM("give 'multiplier' or 'bonus_bp', not both");
    } else if (mul == NULL && bp == NULL) {
        PROBLEM("needs 'multiplier' (2 = double points) or 'bonus_bp' (5000 = 50 %% more)");
    } else if (mul != NULL && (!json_is_integer(mul) || json_integer_value(mul) < 1 ||
                               json_integer_value(mul) > LOYD_CAMPAIGN_MAX_MULTIPLIER)) {
        if (json_is_real(mul))
            PROBLEM("'multiplier' must be a whole number 1..%d, got %g (for 1.5 x write "
                    "bonus_bp = 5000)",
                    LOYD_CAMPAIGN_MAX_MULTIPLIER, json_real_value(mul));
        else
            PROBLEM("'multiplier' must be a whole number 1..%d (2 = double points)",
                    LOYD_CAMPAIGN_MAX_MULTIPLIER);
    } else if (bp != NULL && (!json_is_integer(bp) || json_integer_value(bp) < 1 ||
                              json_integer_value(bp) > LOYD_CAMPAIGN_MAX_BONUS_BP)) {
        PROBLEM("'bonus_bp' must be 1..%d basis points of the base points (5000 = 50 %% more)",
                LOYD_CAMPAIGN_MAX_BONUS_BP);
    }
    json_t *b = json_object_get(c, "budget");
    if (b != NULL && (!json_is_integer(b) || json_integer_value(b) < 1))
        PROBLEM("'budget' must be a positive whole number of ledger units (leave it out for no "
                "limit)");
#undef PROBLEM
    return bad;
}

int loyd_campaigns_check(const json_t *v, const char *path,
                         const struct loyd_campaigns_where *where, struct loyd_buf *err)
{
    if (json_is_object(v) && json_object_size(v) == 0)
        return 0;
    if (!json_is_array(v)) {
        if (where != NULL)
            loyd_buf_printf(err, "%s:%d: %s", where->file, where->line, where->label);
        else
            loyd_buf_puts(err, path);
        loyd_buf_printf(err,
                        ": expected a list of campaigns { { name = \"bf2026\", from = ..., to = "
                        "..., multiplier = 2 } }, got %s\n",
                        kind_of(v));
        return -EINVAL;
    }
    int bad = 0;
    size_t i;
    json_t *c;
    json_array_foreach(v, i, c)
    {
        bad += check_entry(v, c, i, path, where, err);
        const char *name = json_string_value(json_object_get(c, "name"));
        for (size_t j = 0; name != NULL && j < i; j++) {
            if (json_equal(json_object_get(json_array_get(v, j), "name"),
                           json_object_get(c, "name"))) {
                entry_prefix(err, path, where, v, i, name);
                loyd_buf_printf(err,
                                "a campaign named \"%s\" is already declared (entry %zu): "
                                "awards and budgets are counted by name\n",
                                name, j + 1);
                bad++;
                break;
            }
        }
    }
    return bad > 0 ? -EINVAL : 0;
}

enum loyd_campaign_state loyd_campaign_state(const json_t *c, const char *date)
{
    const char *from = json_string_value(json_object_get(c, "from"));
    const char *to = json_string_value(json_object_get(c, "to"));
    json_t *wd = json_object_get(c, "weekdays");

    if (from != NULL && strcmp(date, from) < 0)
        return LOYD_CAMPAIGN_NOT_STARTED;
    if (to != NULL && strcmp(date, to) > 0)
        return LOYD_CAMPAIGN_ENDED;
    if (json_is_array(wd) && json_array_size(wd) > 0) {
        int today = loyd_iso_weekday(date);
        size_t i;
        json_t *x;
        json_array_foreach(wd, i, x)
        {
            if (json_integer_value(x) == today)
                return LOYD_CAMPAIGN_ACTIVE;
        }
        return LOYD_CAMPAIGN_OFF_DAY;
    }
    return LOYD_CAMPAIGN_ACTIVE;
}

json_t *loyd_campaigns_declared(const json_t *schema, const json_t *settings)
{
    json_t *out = json_array();
    /* Sorted keys: the same order in the host, the rules and `loyd campaigns`. */
    size_t n = json_object_size(schema), i = 0;
    const char **keys = loyd_xcalloc(n + 1, sizeof(*keys));
    const char *k;
    json_t *spec;

    json_object_foreach((json_t *)schema, k, spec)
    {
        const char *type = json_string_value(json_object_get(spec, "type"));
        if (type != NULL && strcmp(type, "campaigns") == 0)
            keys[i++] = k;
    }
    for (size_t a = 1; a < i; a++)
        for (size_t b = a; b > 0 && strcmp(keys[b - 1], keys[b]) > 0; b--) {
            const char *t = keys[b];
            keys[b] = keys[b - 1];
            keys[b - 1] = t;
        }
    for (size_t j = 0; j < i; j++) {
        json_t *list = json_object_get(settings, keys[j]);
        size_t x;
        json_t *c;
        json_array_foreach(list, x, c)
        {
            json_array_append(out, c);
        }
    }
    free(keys);
    return out;
}

bool loyd_campaign_budget(const json_t *schema, const json_t *settings, const char *name,
                          int64_t *budget)
{
    bool found = false;
    json_t *b = json_object_get(json_object_get(settings, "budgets"), name);

    if (json_is_integer(b)) {
        *budget = json_integer_value(b);
        found = true;
    }
    json_t *declared = loyd_campaigns_declared(schema, settings);
    size_t i;
    json_t *c;
    json_array_foreach(declared, i, c)
    {
        json_t *cb = json_object_get(c, "budget");
        const char *cn = json_string_value(json_object_get(c, "name"));
        if (cn == NULL || strcmp(cn, name) != 0 || !json_is_integer(cb))
            continue;
        if (!found || json_integer_value(cb) < *budget)
            *budget = json_integer_value(cb);
        found = true;
    }
    json_decref(declared);
    return found;
}
