/* SPDX-License-Identifier: MIT */
/*
 * `loyd test` and `loyd check` (see rules.h).  A test file is Lua data evaluated in the pack's
 * own sandbox and returns a list of cases:
 *   { name = "...", now = "2026-03-01", tz_offset_min = 0, settings = { overrides },
 *     member = { id, balance, tier, lots = {{points, expires, ref}}, birthday, referrer,
 *                attributes, last_birthday_offer_year, spend = {d30,d365,total},
 *                purchases = {d30,d365,total}, history = {{amount, date, deal_id}} },
 *     events = { {type = "deal.won", date = "2026-03-02", deal = {...}}, ... },
 *     expect = { effects = {...}, rejected = {...}, outbox = {...}, balance = n, tier = "...",
 *                attributes = {...}, error = "substring" } }
 * Events of one case run in order through the real engine and ledger math; the state (ledger
 * rows, member row, purchase history) carries from one event to the next.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "ledger.h"
#include "pack.h"
#include "rules.h"

#define NOON_MS (12LL * 3600 * 1000)

static const char *const case_fields[] = {"name",   "now",    "tz_offset_min", "settings",
                                          "member", "events", "expect"};
static const char *const member_fields[] = {
    "id",       "balance",   "tier",       "lots",
    "birthday", "referrer",  "attributes", "last_birthday_offer_year",
    "spend",    "purchases", "history"};
static const char *const expect_fields[] = {"effects", "rejected", "outbox",    "balance",
                                            "tier",    "error",    "attributes"};
static const char *const event_fields[] = {"type", "key", "at", "date", "deal", "contact", "reason"};

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

/* ---- one case ------------------------------------------------------------------------------ */

struct runner {
    const struct loyd_pack *pack;
    struct loyd_rules *rules;
    const struct loyd_pack_test_opts *o;
    FILE *out;
    size_t passed, failed;
};

static bool run_case(struct runner *rn, const char *file, size_t idx, const json_t *tc,
                     struct loyd_buf *diff)
{
    char where[512];
    const char *name = json_string_value(json_object_get(tc, "name"));
    json_t *settings = NULL, *rows = NULL, *purchases = NULL, *member = NULL;
    json_t *effects = json_array(), *rejected = json_array(), *outbox = json_array();
    json_t *errors = json_array(), *traces = json_array();
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
    if (loyd_pack_settings(rn->pack, json_object_get(tc, "settings"), "settings", &settings, &e) !=
        0) {
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
    static const char *const copy[] = {"tier", "birthday", "referrer", "attributes",
                                       "last_birthday_offer_year"};
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
        };
        json_t *res = NULL;
        int erc = loyd_rules_eval(rn->rules, &in, &res);
        (void)erc; /* the result says everything: ok, error, trace */
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
        }
        json_array_foreach(json_object_get(res, "outbox"), k, x) json_array_append(outbox, x);
        /* Carry the state: rows of this member, member updates, purchases, campaigns. */
        const char *mid = json_string_value(json_object_get(member, "id"));
        json_array_foreach(json_object_get(res, "ledger"), k, x)
        {
            const char *rm = json_string_value(json_object_get(x, "member_id"));
            if (rm == NULL || strcmp(rm, mid) == 0)
                json_array_append(rows, x);
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
    if (!ok && rn->o != NULL && rn->o->verbose) {
        json_array_foreach(traces, i, evd)
        {
            char *s = json_dumps(json_object_get(evd, "trace"), JSON_COMPACT | JSON_SORT_KEYS);
            loyd_buf_printf(diff, "      trace[%zu]: %s\n", i + 1, s != NULL ? s : "?");
            free(s);
        }
    }
out:
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

/* Loads a test file (Lua data) through the sandbox: @return new array of cases or NULL. */
static json_t *load_cases(struct loyd_rules *r, const struct loyd_pack_file *f,
                          struct loyd_buf *err)
{
    struct loyd_sandbox *sb = loyd_rules_sandbox(r);
    struct loyd_buf src = {0}, e = {0};
    json_t *cases = NULL, *log = NULL;
    char *mod = loyd_xasprintf("test:%s", f->module);

    /* Wrapping keeps line numbers: nothing is added before the file's first line. */
    loyd_buf_puts(&src, "return { cases = function() ");
    loyd_buf_append(&src, f->src, f->len);
    loyd_buf_puts(&src, "\nend }\n");
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
    if (json_is_object(cases) && json_object_size(cases) == 0) {
        json_decref(cases);
        cases = json_array();
    }
    if (!json_is_array(cases)) {
        loyd_buf_printf(err, "%s:1: a test file must return a list of tests { {name=...}, ... }\n",
                        f->path);
        json_decref(cases);
        cases = NULL;
    }
out:
    json_decref(log);
    free(mod);
    loyd_buf_free(&src);
    loyd_buf_free(&e);
    return cases;
}

static const char *search_path_or_env(const char *sp)
{
    return sp != NULL ? sp : getenv("LOYD_RULES_PATH");
}

int loyd_pack_test_run(const char *dir, const struct loyd_pack_test_opts *o, FILE *out)
{
    struct loyd_pack *pack = NULL;
    struct runner rn = {.o = o, .out = out};
    struct loyd_buf err = {0};
    int rc;

    if (loyd_pack_load(dir, search_path_or_env(o ? o->search_path : NULL), &pack, &err) != 0 ||
        loyd_rules_create(pack, NULL, &rn.rules, &err) != 0) {
        fprintf(out, "%s", err.data != NULL ? err.data : "cannot load the pack\n");
        loyd_buf_free(&err);
        loyd_pack_destroy(pack);
        return 2;
    }
    rn.pack = pack;
    size_t load_errors = 0;
    for (size_t i = 0; i < pack->ntests; i++) {
        const struct loyd_pack_file *f = &pack->tests[i];
        struct loyd_buf e = {0};
        json_t *cases = load_cases(rn.rules, f, &e);
        fprintf(out, "%s\n", f->path);
        if (cases == NULL) {
            fprintf(out, "  ERROR %s", e.data != NULL ? e.data : "cannot load\n");
            load_errors++;
            rn.failed++;
            loyd_buf_free(&e);
            continue;
        }
        size_t k;
        json_t *tc;
        json_array_foreach(cases, k, tc)
        {
            const char *name = json_string_value(json_object_get(tc, "name"));
            if (o != NULL && o->filter != NULL && (name == NULL || strstr(name, o->filter) == NULL))
                continue;
            struct loyd_buf diff = {0};
            bool ok = run_case(&rn, f->path, k, tc, &diff);
            fprintf(out, "  %s %s\n", ok ? "ok  " : "FAIL", name != NULL ? name : "(unnamed)");
            if (!ok)
                fprintf(out, "%s", diff.data != NULL ? diff.data : "");
            ok ? rn.passed++ : rn.failed++;
            loyd_buf_free(&diff);
        }
        json_decref(cases);
        loyd_buf_free(&e);
    }
    if (pack->ntests == 0)
        fprintf(out, "%s: no tests (add tests/NAME.lua)\n", dir);
    fprintf(out, "%zu passed, %zu failed\n", rn.passed, rn.failed);
    rc = rn.failed == 0 && rn.passed > 0 ? 0 : 1;
    (void)load_errors;
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
        struct loyd_buf e = {0};
        json_t *cases = load_cases(rules, &pack->tests[i], &e);
        if (cases == NULL) {
            fprintf(out, "%s", e.data != NULL ? e.data : "cannot load a test file\n");
            problems++;
        }
        ncases += json_array_size(cases);
        json_decref(cases);
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
