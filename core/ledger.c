/* SPDX-License-Identifier: MIT */
/*
 * Ledger math (see ledger.h): replay of a member's rows into lots, debt and balance, and the
 * rows that award, redeem, reverse and expire write.  Everything is derived from the rows, so
 * the same functions serve the daemon, `loyd test`, replay and "why".
 */
#include "civil_date.h"
#include "ledger.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kinds[] = {"award", "redeem", "expire", "reverse", "adjust"};

/* ---- dates ---------------------------------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

void loyd_date_format(int64_t ms, int tz_offset_min, char out[11])
{
    int64_t y;
    unsigned m, d;

    loyd_civil_from_days(floor_div(ms + (int64_t)tz_offset_min * 60000, LOYD_DAY_MS), &y, &m, &d);
    if (y < 0 || y > 9999)
        y = y < 0 ? 0 : 9999;
    snprintf(out, 11, "%04d-%02u-%02u", (int)y, m % 100, d % 100);
}

int loyd_date_parse(const char *s, int tz_offset_min, int64_t *ms)
{
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned v[3] = {0, 0, 0};

    if (s == NULL || strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return -EINVAL;
    for (size_t i = 0; i < 10; i++) {
        if (i == 4 || i == 7)
            continue;
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        size_t k = i < 4 ? 0 : i < 7 ? 1 : 2;
        v[k] = v[k] * 10 + (unsigned)(s[i] - '0');
    }
    if (v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > mdays[v[1] - 1])
        return -EINVAL;
    if (v[1] == 2 && v[2] == 29 && !((v[0] % 4 == 0 && v[0] % 100 != 0) || v[0] % 400 == 0))
        return -EINVAL;
    *ms = loyd_days_from_civil(v[0], v[1], v[2]) * LOYD_DAY_MS - (int64_t)tz_offset_min * 60000;
    return 0;
}

void loyd_date_day_bounds(int64_t ms, int tz_offset_min, int64_t *from, int64_t *to)
{
    int64_t off = (int64_t)tz_offset_min * 60000;
    int64_t day = floor_div(ms + off, LOYD_DAY_MS);

    *from = day * LOYD_DAY_MS - off;
    *to = *from + LOYD_DAY_MS;
}

void loyd_date_month_bounds(int64_t ms, int tz_offset_min, int64_t *from, int64_t *to)
{
    int64_t off = (int64_t)tz_offset_min * 60000, y;
    unsigned m, d;

    loyd_civil_from_days(floor_div(ms + off, LOYD_DAY_MS), &y, &m, &d);
    *from = loyd_days_from_civil(y, m, 1) * LOYD_DAY_MS - off;
    *to = loyd_days_from_civil(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1) * LOYD_DAY_MS - off;
}

/* ---- rows ----------------------------------------------------------------------------------- */

static bool known_kind(const char *k)
{
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(kinds); i++)
        if (strcmp(k, kinds[i]) == 0)
            return true;
    return false;
}

static const char *row_str(const json_t *row, const char *field)
{
    return json_string_value(json_object_get(row, field));
}

static int64_t row_int(const json_t *row, const char *field)
{
    return json_integer_value(json_object_get(row, field));
}

static struct loyd_lot *find_lot(const struct loyd_ledger *lg, int64_t id)
{
    for (size_t i = 0; i < lg->nlots; i++)
        if (lg->lots[i].id == id)
            return &lg->lots[i];
    return NULL;
}

const struct loyd_lot *loyd_ledger_lot(const struct loyd_ledger *lg, int64_t id)
{
    return find_lot(lg, id);
}

const char *loyd_ledger_entry_check(const char *kind, int64_t points, int64_t lot_id)
{
    if (kind == NULL || !known_kind(kind))
        return "kind must be award, redeem, expire, reverse or adjust";
    if (points == 0)
        return "points must not be 0";
    if (points < -LOYD_LEDGER_MAX_POINTS || points > LOYD_LEDGER_MAX_POINTS)
        return "points must be within +-10^12";
    if (lot_id < 0)
        return "lot_id must not be negative";
    if (strcmp(kind, "award") == 0) {
        if (points < 0 || lot_id != 0)
            return "an award must be positive and open its own lot (lot_id 0)";
        return NULL;
    }
    if (strcmp(kind, "adjust") == 0)
        return NULL;
    /* redeem, expire, reverse */
    if (points > 0)
        return "redeem, expire and reverse rows must be negative (points given back to a lot "
               "are an adjust row)";
    if (lot_id == 0)
        return "redeem, expire and reverse rows must name the lot they draw from (lot_id)";
    return NULL;
}

/* Validates one row against the current state; @p idx labels messages (-1: a new row). */
static int check_row(const struct loyd_ledger *lg, const json_t *row, long idx, bool need_id,
                     struct loyd_buf *err)
{
    char where[48];
    const char *field = NULL, *why = NULL;
    json_t *v;

    if (idx >= 0)
        snprintf(where, sizeof(where), "ledger row %ld", idx);
    else
        snprintf(where, sizeof(where), "new ledger row");
    if (!json_is_object(row)) {
        loyd_buf_printf(err, "%s: not an object", where);
        return -EINVAL;
    }
    static const char *const strs[] = {"kind", "reason", "ref", "campaign", "member_id"};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(strs); i++) {
        v = json_object_get(row, strs[i]);
        if (v != NULL && !json_is_null(v) &&
            (!json_is_string(v) || json_string_length(v) > LOYD_LEDGER_MAX_STR)) {
            field = strs[i];
            why = "must be a string of at most 256 bytes";
            goto bad;
        }
    }
    static const char *const ints[] = {"id", "points", "at", "expires_ms", "lot_id"};
    for (size_t i = 0; i < LOYD_ARRAY_SIZE(ints); i++) {
        v = json_object_get(row, ints[i]);
        if (v != NULL && !json_is_null(v) && !json_is_integer(v)) {
            field = ints[i];
            why = "must be an integer";
            goto bad;
        }
    }
    const char *kind = row_str(row, "kind");
    int64_t id = row_int(row, "id"), points = row_int(row, "points");
    int64_t lot_id = row_int(row, "lot_id");
    if (kind == NULL || !known_kind(kind)) {
        field = "kind";
        why = "must be award, redeem, expire, reverse or adjust";
        goto bad;
    }
    if (json_object_get(row, "id") != NULL || need_id) {
        if (id <= 0) {
            field = "id";
            why = "must be a positive integer";
            goto bad;
        }
        if (id <= lg->max_id) {
            field = "id";
            why = "duplicates an earlier row";
            goto bad;
        }
    }
    if (!json_is_integer(json_object_get(row, "points")) || points < -LOYD_LEDGER_MAX_POINTS ||
        points > LOYD_LEDGER_MAX_POINTS || points == 0) {
        field = "points";
        why = "must be a non-zero integer within +-10^12";
        goto bad;
    }
    if (row_int(row, "at") < 0 || row_int(row, "expires_ms") < 0 || lot_id < 0) {
        field = row_int(row, "at") < 0           ? "at"
                : row_int(row, "expires_ms") < 0 ? "expires_ms"
                                                 : "lot_id";
        why = "must not be negative";
        goto bad;
    }
    /* Kind, sign and lot: the rules the store applies too. */
    const char *bad_entry = loyd_ledger_entry_check(kind, points, lot_id);
    if (bad_entry != NULL) {
        loyd_buf_printf(err, "%s (%s, %lld points, lot %lld): %s", where, kind, (long long)points,
                        (long long)lot_id, bad_entry);
        return -EINVAL;
    }
    if (lot_id != 0 && find_lot(lg, lot_id) == NULL) {
        field = "lot_id";
        why = "names no earlier lot";
        goto bad;
    }
    const char *mid = row_str(row, "member_id");
    if (mid != NULL && lg->member_id != NULL && strcmp(mid, lg->member_id) != 0) {
        field = "member_id";
        why = "belongs to another member";
        goto bad;
    }
    return 0;
bad:
    loyd_buf_printf(err, "%s: field '%s' %s", where, field, why);
    return -EINVAL;
}

static int lot_order(const struct loyd_lot *a, const struct loyd_lot *b)
{
    int64_t ea = a->expires_ms == 0 ? INT64_MAX : a->expires_ms;
    int64_t eb = b->expires_ms == 0 ? INT64_MAX : b->expires_ms;

    if (ea != eb)
        return ea < eb ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Indexes of the lots with remaining > 0 (and not past expiry at @p at_ms when at_ms >= 0),
 * in spending order.  @return new array (free()), *n its length. */
static size_t *spend_order(const struct loyd_ledger *lg, int64_t at_ms, size_t *n)
{
    size_t *ix = loyd_xcalloc(lg->nlots + 1, sizeof(*ix));

    *n = 0;
    for (size_t i = 0; i < lg->nlots; i++) {
        const struct loyd_lot *l = &lg->lots[i];
        if (l->remaining <= 0)
            continue;
        if (at_ms >= 0 && l->expires_ms != 0 && l->expires_ms <= at_ms)
            continue;
        size_t j = (*n)++;
        /* Insertion sort: a member has few open lots. */
        while (j > 0 && lot_order(&lg->lots[ix[j - 1]], l) > 0) {
            ix[j] = ix[j - 1];
            j--;
        }
        ix[j] = i;
    }
    return ix;
}

static void pay_debt(struct loyd_ledger *lg, struct loyd_lot *l)
{
    int64_t pay = lg->debt < l->remaining ? lg->debt : l->remaining;

    if (pay > 0) {
        l->remaining -= pay;
        lg->debt -= pay;
    }
}

/* Applies a validated row to the state (rows arrive in id order). */
static void replay(struct loyd_ledger *lg, const json_t *row)
{
    const char *kind = row_str(row, "kind");
    int64_t points = row_int(row, "points"), lot_id = row_int(row, "lot_id");

    lg->balance += points;
    if (row_int(row, "id") > lg->max_id)
        lg->max_id = row_int(row, "id");
    if (lot_id == 0 && points > 0) {
        if (lg->nlots == lg->cap) {
            lg->cap = lg->cap ? lg->cap * 2 : 8;
            lg->lots = loyd_xrealloc(lg->lots, lg->cap * sizeof(*lg->lots));
        }
        struct loyd_lot *l = &lg->lots[lg->nlots++];
        const char *ref = row_str(row, "ref"), *camp = row_str(row, "campaign");
        *l = (struct loyd_lot){
            .id = row_int(row, "id"),
            .points = points,
            .remaining = points,
            .expires_ms = row_int(row, "expires_ms"),
            .at_ms = row_int(row, "at"),
            .kind = loyd_xstrdup(kind),
            .ref = ref != NULL ? loyd_xstrdup(ref) : NULL,
            .campaign = camp != NULL ? loyd_xstrdup(camp) : NULL,
        };
        pay_debt(lg, l);
        return;
    }
    if (lot_id != 0) {
        struct loyd_lot *l = find_lot(lg, lot_id);
        LOYD_REQUIRE(l != NULL); /* check_row verified the lot exists */
        l->remaining += points;
        if (strcmp(kind, "reverse") == 0 && points <= 0)
            l->reversed = true;
        if (strcmp(kind, "expire") == 0)
            l->expired = true;
        if (l->remaining < 0) {
            lg->debt += -l->remaining;
            l->remaining = 0;
        } else if (points > 0) {
            pay_debt(lg, l);
        }
        return;
    }
    /* An unbacked debit: other lots cover it first, the rest is debt. */
    int64_t need = -points;
    size_t n;
    size_t *ix = spend_order(lg, -1, &n);
    for (size_t i = 0; i < n && need > 0; i++) {
        struct loyd_lot *l = &lg->lots[ix[i]];
        int64_t take = l->remaining < need ? l->remaining : need;
        l->remaining -= take;
        need -= take;
    }
    free(ix);
    lg->debt += need;
}

static int cmp_row_id(const void *a, const void *b)
{
    int64_t x = row_int(*(json_t *const *)a, "id"), y = row_int(*(json_t *const *)b, "id");
    return x < y ? -1 : x > y;
}

int loyd_ledger_init(struct loyd_ledger *lg, const char *member_id, const json_t *rows,
                     struct loyd_buf *err)
{
    size_t n = rows != NULL ? json_array_size(rows) : 0;
    json_t **v = NULL;

    memset(lg, 0, sizeof(*lg));
    lg->member_id = member_id != NULL ? loyd_xstrdup(member_id) : NULL;
    lg->rows = json_array();
    LOYD_REQUIRE(lg->rows != NULL);
    if (rows != NULL && !json_is_array(rows)) {
        loyd_buf_puts(err, "ledger: rows must be an array");
        return -EINVAL;
    }
    if (n > LOYD_LEDGER_MAX_ROWS) {
        loyd_buf_printf(err, "ledger: %zu rows, limit %u", n, LOYD_LEDGER_MAX_ROWS);
        return -EINVAL;
    }
    v = loyd_xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[i] = json_array_get(rows, i);
        if (!json_is_object(v[i]) || !json_is_integer(json_object_get(v[i], "id"))) {
            loyd_buf_printf(err, "ledger row %zu: field 'id' must be a positive integer", i);
            free(v);
            return -EINVAL;
        }
    }
    qsort(v, n, sizeof(*v), cmp_row_id);
    for (size_t i = 0; i < n; i++) {
        if (check_row(lg, v[i], (long)i, true, err) != 0) {
            free(v);
            return -EINVAL;
        }
        json_t *copy = json_deep_copy(v[i]);
        LOYD_REQUIRE(copy != NULL);
        json_array_append_new(lg->rows, copy);
        replay(lg, copy);
    }
    free(v);
    return 0;
}

void loyd_ledger_deinit(struct loyd_ledger *lg)
{
    for (size_t i = 0; i < lg->nlots; i++) {
        free(lg->lots[i].kind);
        free(lg->lots[i].ref);
        free(lg->lots[i].campaign);
    }
    free(lg->lots);
    free(lg->member_id);
    json_decref(lg->rows);
    memset(lg, 0, sizeof(*lg));
}

int loyd_ledger_append_take(struct loyd_ledger *lg, json_t *row, struct loyd_buf *err)
{
    if (check_row(lg, row, -1, false, err) != 0) {
        json_decref(row);
        return -EINVAL;
    }
    if (json_object_get(row, "id") == NULL)
        json_object_set_new(row, "id", json_integer(lg->max_id + 1));
    if (json_object_get(row, "member_id") == NULL && lg->member_id != NULL)
        json_object_set_new(row, "member_id", json_string(lg->member_id));
    json_array_append_new(lg->rows, row);
    replay(lg, row);
    return 0;
}

/* Builds, appends and copies out one row. */
static int write_row(struct loyd_ledger *lg, const char *kind, int64_t points, const char *reason,
                     const char *ref, const char *campaign, int64_t expires_ms, int64_t lot_id,
                     int64_t at_ms, json_t *out, struct loyd_buf *err)
{
    json_t *row = json_pack("{s:s, s:I, s:I}", "kind", kind, "points", (json_int_t)points, "at",
                            (json_int_t)at_ms);

    LOYD_REQUIRE(row != NULL);
    json_object_set_new(row, "reason", json_string(reason != NULL ? reason : kind));
    json_object_set_new(row, "expires_ms", json_integer(expires_ms));
    json_object_set_new(row, "lot_id", json_integer(lot_id));
    if (ref != NULL)
        json_object_set_new(row, "ref", json_string(ref));
    if (campaign != NULL)
        json_object_set_new(row, "campaign", json_string(campaign));
    json_incref(row);
    int rc = loyd_ledger_append_take(lg, row, err);
    if (rc == 0 && out != NULL)
        json_array_append(out, row);
    json_decref(row);
    return rc;
}

json_t *loyd_ledger_lots_json(const struct loyd_ledger *lg, int64_t now_ms, int tz_offset_min)
{
    size_t n;
    size_t *ix = spend_order(lg, now_ms, &n);
    json_t *arr = json_array();

    for (size_t i = 0; i < n; i++) {
        const struct loyd_lot *l = &lg->lots[ix[i]];
        json_t *o = json_pack("{s:I, s:I, s:I}", "id", (json_int_t)l->id, "points",
                              (json_int_t)l->remaining, "expires_at", (json_int_t)l->expires_ms);
        if (l->expires_ms != 0) {
            char d[11];
            loyd_date_format(l->expires_ms - 1, tz_offset_min, d); /* last valid day */
            json_object_set_new(o, "expires_on", json_string(d));
        }
        if (l->ref != NULL)
            json_object_set_new(o, "ref", json_string(l->ref));
        json_array_append_new(arr, o);
    }
    free(ix);
    return arr;
}

int64_t loyd_ledger_awarded_between(const struct loyd_ledger *lg, int64_t from_ms, int64_t to_ms)
{
    int64_t sum = 0;
    size_t i;
    json_t *row;

    json_array_foreach(lg->rows, i, row)
    {
        const char *kind = row_str(row, "kind");
        int64_t at = row_int(row, "at"), p = row_int(row, "points");
        if (strcmp(kind, "award") == 0 && p > 0 && at >= from_ms && at < to_ms)
            sum += p;
    }
    return sum;
}

json_t *loyd_ledger_campaign_totals(const json_t *rows)
{
    json_t *out = json_object();
    size_t i;
    json_t *row;

    json_array_foreach(rows, i, row)
    {
        const char *c = row_str(row, "campaign"), *kind = row_str(row, "kind");
        if (c == NULL || kind == NULL)
            continue;
        if (strcmp(kind, "award") != 0 && strcmp(kind, "reverse") != 0)
            continue;
        int64_t cur = json_integer_value(json_object_get(out, c));
        json_object_set_new(out, c, json_integer(cur + row_int(row, "points")));
    }
    return out;
}

int loyd_ledger_award(struct loyd_ledger *lg, int64_t points, const char *reason, const char *ref,
                      const char *campaign, int64_t expires_ms, int64_t at_ms, json_t *out,
                      struct loyd_buf *err)
{
    if (points <= 0) {
        loyd_buf_printf(err, "award: points must be positive (got %lld)", (long long)points);
        return -EINVAL;
    }
    return write_row(lg, "award", points, reason, ref, campaign, expires_ms, 0, at_ms, out, err);
}

int loyd_ledger_redeem(struct loyd_ledger *lg, int64_t points, const char *reason, const char *ref,
                       bool allow_negative, int64_t at_ms, json_t *out, struct loyd_buf *err)
{
    size_t n;
    int64_t avail = 0, need = points;
    int rc = 0;

    if (points <= 0) {
        loyd_buf_printf(err, "redeem: points must be positive (got %lld)", (long long)points);
        return -EINVAL;
    }
    size_t *ix = spend_order(lg, at_ms, &n);
    for (size_t i = 0; i < n; i++)
        avail += lg->lots[ix[i]].remaining;
    if (avail < points && !allow_negative) {
        loyd_buf_printf(err, "insufficient balance: %lld points requested, %lld available",
                        (long long)points, (long long)avail);
        free(ix);
        return -ENOSPC;
    }
    /* Lot ids are stable while rows are appended, indexes are not (lots may grow). */
    int64_t *ids = loyd_xcalloc(n + 1, sizeof(*ids));
    for (size_t i = 0; i < n; i++)
        ids[i] = lg->lots[ix[i]].id;
    free(ix);
    for (size_t i = 0; i < n && need > 0 && rc == 0; i++) {
        const struct loyd_lot *l = find_lot(lg, ids[i]);
        int64_t take = l->remaining < need ? l->remaining : need;
        rc = write_row(lg, "redeem", -take, reason, ref, NULL, 0, ids[i], at_ms, out, err);
        need -= take;
    }
    free(ids);
    /* What no lot covers is a debit of its own: an adjust row, since a redeem row names a lot. */
    if (rc == 0 && need > 0)
        rc = write_row(lg, "adjust", -need, reason, ref, NULL, 0, 0, at_ms, out, err);
    return rc;
}

int loyd_ledger_reverse(struct loyd_ledger *lg, const char *ref, const char *reason,
                        bool allow_negative, int64_t at_ms, json_t *out, struct loyd_reversal *rv,
                        struct loyd_buf *err)
{
    size_t nrows = json_array_size(lg->rows), i;
    json_t *row;
    int rc = 0;

    memset(rv, 0, sizeof(*rv));
    if (ref == NULL || *ref == '\0') {
        loyd_buf_puts(err, "reverse: ref is required");
        return -EINVAL;
    }
    /* Redemptions for this ref go back to their lots first: the purchase they paid for is
     * undone.  Net per lot = redeemed - already returned (by an earlier reversal).  Rules write
     * no adjust rows, so an adjust row with this ref is the ledger's own: a debit beyond the
     * balance (negative, no lot) or points a reversal gave back (positive). */
    int64_t *lot_ids = loyd_xcalloc(nrows + 1, sizeof(*lot_ids));
    int64_t *net = loyd_xcalloc(nrows + 1, sizeof(*net));
    size_t nl = 0;
    int64_t unbacked = 0;
    bool any = false;
    json_array_foreach(lg->rows, i, row)
    {
        const char *r = row_str(row, "ref"), *kind = row_str(row, "kind");
        if (r == NULL || strcmp(r, ref) != 0)
            continue;
        any = true;
        int64_t p = row_int(row, "points"), lot = row_int(row, "lot_id");
        bool adjust = strcmp(kind, "adjust") == 0;
        bool redeem = strcmp(kind, "redeem") == 0 || (adjust && p < 0 && lot == 0);
        bool give_back = p > 0 && (adjust || strcmp(kind, "reverse") == 0);
        if (!redeem && !give_back)
            continue;
        if (lot == 0) {
            unbacked += -p;
            continue;
        }
        size_t k = 0;
        while (k < nl && lot_ids[k] != lot)
            k++;
        if (k == nl)
            lot_ids[nl++] = lot;
        net[k] += -p;
    }
    for (size_t k = 0; k < nl && rc == 0; k++) {
        if (net[k] <= 0)
            continue;
        /* Into the lot it came from (which keeps its expiry): a positive row is an adjust. */
        rc = write_row(lg, "adjust", net[k], reason, ref, NULL, 0, lot_ids[k], at_ms, out, err);
        rv->returned += net[k];
    }
    free(lot_ids);
    free(net);
    if (rc == 0 && unbacked > 0) {
        /* A redemption that ran the balance negative is returned as a fresh lot without
         * expiry, which first pays the debt it created. */
        rc = write_row(lg, "adjust", unbacked, reason, ref, NULL, 0, 0, at_ms, out, err);
        rv->returned += unbacked;
    }
    /* Then the award lots for this ref that were not reversed yet. */
    for (size_t k = 0; k < lg->nlots && rc == 0; k++) {
        struct loyd_lot *l = &lg->lots[k];
        if (l->ref == NULL || strcmp(l->ref, ref) != 0 || l->reversed ||
            strcmp(l->kind, "award") != 0)
            continue;
        int64_t expired = 0;
        size_t j;
        json_array_foreach(lg->rows, j, row)
        {
            if (row_int(row, "lot_id") == l->id && strcmp(row_str(row, "kind"), "expire") == 0)
                expired += -row_int(row, "points");
        }
        int64_t remaining = l->remaining, id = l->id, points = l->points;
        int64_t spent = points - remaining - expired;
        int64_t take = remaining + (allow_negative && spent > 0 ? spent : 0);
        const char *camp = l->campaign;
        char *camp_copy = camp != NULL ? loyd_xstrdup(camp) : NULL;
        /* Nothing left to take (all spent, negative balance not allowed): no row, since a row
         * is never 0 points.  A later reversal of the ref then reports the shortfall again. */
        if (take > 0)
            rc = write_row(lg, "reverse", -take, reason, ref, camp_copy, 0, id, at_ms, out, err);
        free(camp_copy);
        rv->awarded += points;
        rv->reversed += take;
        if (!allow_negative && spent > 0)
            rv->shortfall += spent;
        rv->lots++;
        l = NULL; /* lots may have been reallocated by write_row */
    }
    if (rc == 0 && !any) {
        loyd_buf_printf(err, "reverse: nothing in the ledger carries ref '%s'", ref);
        return -ENOENT;
    }
    return rc;
}

int loyd_ledger_expire(struct loyd_ledger *lg, int64_t at_ms, json_t *out, int64_t *expired_points,
                       struct loyd_buf *err)
{
    int rc = 0;
    int64_t total = 0;

    for (size_t k = 0; k < lg->nlots && rc == 0; k++) {
        const struct loyd_lot *l = &lg->lots[k];
        if (l->remaining <= 0 || l->expires_ms == 0 || l->expires_ms > at_ms)
            continue;
        int64_t take = l->remaining, id = l->id;
        char reason[64];
        snprintf(reason, sizeof(reason), "points expired (lot %lld)", (long long)id);
        rc = write_row(lg, "expire", -take, reason, NULL, NULL, 0, id, at_ms, out, err);
        total += take;
    }
    if (expired_points != NULL)
        *expired_points = total;
    return rc;
}

/* The purchase list's shape; one entry's amount and time. */
static int purchases_check(const json_t *purchases, struct loyd_buf *err)
{
    if (!json_is_array(purchases)) {
        loyd_buf_puts(err, "purchases must be an array");
        return -EINVAL;
    }
    if (json_array_size(purchases) > LOYD_LEDGER_MAX_ROWS) {
        loyd_buf_printf(err, "purchases: more than %u entries", LOYD_LEDGER_MAX_ROWS);
        return -EINVAL;
    }
    return 0;
}

static int purchase_get(const json_t *p, size_t i, int64_t *a, int64_t *t, struct loyd_buf *err)
{
    json_t *amount = json_object_get(p, "amount"), *at = json_object_get(p, "at");
    if (!json_is_integer(amount) || json_integer_value(amount) < 0 ||
        json_integer_value(amount) > LOYD_LEDGER_MAX_POINTS * 100) {
        loyd_buf_printf(err, "purchase %zu: field 'amount' must be a non-negative integer", i);
        return -EINVAL;
    }
    if (!json_is_integer(at) || json_integer_value(at) < 0) {
        loyd_buf_printf(err, "purchase %zu: field 'at' must be a non-negative integer", i);
        return -EINVAL;
    }
    *a = json_integer_value(amount);
    *t = json_integer_value(at);
    return 0;
}

int loyd_ledger_window_parse(const char *name, struct loyd_window *w, struct loyd_buf *err)
{
    memset(w, 0, sizeof(*w));
    if (name != NULL && name[0] == 'd' && name[1] >= '1' && name[1] <= '9') {
        int64_t n = 0;
        const char *c = name + 1;
        while (*c >= '0' && *c <= '9' && n <= LOYD_WINDOW_MAX_DAYS)
            n = n * 10 + (*c++ - '0');
        if (*c == '\0' && n <= LOYD_WINDOW_MAX_DAYS) {
            w->days = n;
            return 0;
        }
    } else if (name != NULL && strncmp(name, "since:", 6) == 0) {
        int64_t ms;
        if (loyd_date_parse(name + 6, 0, &ms) == 0) {
            memcpy(w->since, name + 6, 10);
            return 0;
        }
        loyd_buf_printf(err, "window '%s': '%s' is not a valid date YYYY-MM-DD", name, name + 6);
        return -EINVAL;
    }
    loyd_buf_printf(err,
                    "window '%s' is not a window name: \"dN\" (the last N days, 1..%d, e.g. "
                    "\"d90\") or \"since:YYYY-MM-DD\"",
                    name != NULL ? name : "(none)", LOYD_WINDOW_MAX_DAYS);
    return -EINVAL;
}

int loyd_ledger_spend_window(const json_t *purchases, const struct loyd_window *w, int64_t now_ms,
                             int tz_offset_min, int64_t *amount, int64_t *count,
                             struct loyd_buf *err)
{
    int64_t after; /* purchases with at > after count */
    size_t i;
    json_t *p;

    *amount = *count = 0;
    if (w->days > 0) {
        after = now_ms - w->days * LOYD_DAY_MS;
    } else {
        int64_t from;
        if (loyd_date_parse(w->since, tz_offset_min, &from) != 0) {
            loyd_buf_printf(err, "window since:%s: not a valid date", w->since);
            return -EINVAL;
        }
        after = from - 1;
    }
    if (purchases == NULL)
        return 0;
    if (purchases_check(purchases, err) != 0)
        return -EINVAL;
    json_array_foreach(purchases, i, p)
    {
        int64_t a, t;
        if (purchase_get(p, i, &a, &t, err) != 0)
            return -EINVAL;
        if (t > now_ms || t <= after)
            continue;
        *amount += a;
        (*count)++;
    }
    return 0;
}

int loyd_ledger_spend(const json_t *purchases, int64_t now_ms, struct loyd_spend *out,
                      struct loyd_buf *err)
{
    size_t i;
    json_t *p;

    memset(out, 0, sizeof(*out));
    if (purchases == NULL)
        return 0;
    if (purchases_check(purchases, err) != 0)
        return -EINVAL;
    json_array_foreach(purchases, i, p)
    {
        int64_t a, t;
        if (purchase_get(p, i, &a, &t, err) != 0)
            return -EINVAL;
        if (t > now_ms)
            continue;
        out->total += a;
        out->ntotal++;
        if (t > now_ms - 365 * LOYD_DAY_MS) {
            out->d365 += a;
            out->n365++;
        }
        if (t > now_ms - 30 * LOYD_DAY_MS) {
            out->d30 += a;
            out->n30++;
        }
        if (out->first_ms == 0 || t < out->first_ms)
            out->first_ms = t;
        if (t > out->last_ms)
            out->last_ms = t;
    }
    return 0;
}
